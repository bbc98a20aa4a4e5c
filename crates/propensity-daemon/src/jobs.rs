//! The jobs directory: every `*.toml` file in it (not recursively) is a job. The directory
//! is read again on every [`JobDir::scan`]; a file whose contents changed is parsed again.
//! A file that does not parse, or names a job another file already names, is *broken*: it
//! is reported (with every problem, as `propensity validate` prints them) and skipped, and
//! the other jobs keep running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use propensity_core::Job;
use serde::Serialize;

/// A job that loaded.
#[derive(Debug, Clone)]
pub struct JobEntry {
    /// The job file.
    pub file: PathBuf,
    /// The directory relative paths in the job are read from (the file's directory).
    pub dir: PathBuf,
    pub job: Arc<Job>,
    /// The file's text, to tell a change from a rescan.
    pub text: Arc<str>,
}

/// A job file that did not load.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Broken {
    pub file: PathBuf,
    /// Each problem, as `propensity validate` prints it (`file:line:col: error[...]: ...`).
    pub problems: Vec<String>,
}

/// The jobs of one scan: loaded jobs by name, and broken files.
#[derive(Debug, Clone, Default)]
pub struct JobSet {
    pub jobs: BTreeMap<String, JobEntry>,
    pub broken: Vec<Broken>,
}

/// What one file gave: a job, or its problems.
type Loaded = Result<JobEntry, Vec<String>>;

/// Reads the jobs directory and remembers what it read, so unchanged files are not parsed
/// again.
#[derive(Debug)]
pub struct JobDir {
    dir: PathBuf,
    /// Per file: its text and what it gave.
    cache: BTreeMap<PathBuf, (Arc<str>, Loaded)>,
    last: Option<JobSet>,
}

impl JobDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JobDir {
            dir: dir.into(),
            cache: BTreeMap::new(),
            last: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory. Returns the new job set when anything changed since the last
    /// scan (always on the first), `None` when nothing did. Fails only when the directory
    /// itself cannot be listed.
    pub fn scan(&mut self) -> std::io::Result<Option<JobSet>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        let mut set = JobSet::default();
        let mut cache = BTreeMap::new();
        for file in files {
            let shown = file.display().to_string();
            let text: Arc<str> = match std::fs::read_to_string(&file) {
                Ok(t) => t.into(),
                Err(e) => {
                    set.broken.push(Broken {
                        file: file.clone(),
                        problems: vec![format!("{shown}: cannot read the file: {e}")],
                    });
                    continue;
                }
            };
            let loaded = match self.cache.remove(&file) {
                Some((old, result)) if old == text => result,
                _ => load(&file, &text),
            };
            match &loaded {
                Ok(entry) => {
                    let name = entry.job.name.clone();
                    if let Some(first) = set.jobs.get(&name) {
                        set.broken.push(Broken {
                            file: file.clone(),
                            problems: vec![format!(
                                "{shown}: job name `{name}` is already used by {}; each job needs its own name (it keys the ledger, the registry and the sinks)",
                                first.file.display()
                            )],
                        });
                    } else {
                        set.jobs.insert(name, entry.clone());
                    }
                }
                Err(problems) => set.broken.push(Broken {
                    file: file.clone(),
                    problems: problems.clone(),
                }),
            }
            cache.insert(file, (text, loaded));
        }
        self.cache = cache;
        let changed =
            match &self.last {
                None => true,
                Some(last) => {
                    last.broken != set.broken
                        || last.jobs.len() != set.jobs.len()
                        || last.jobs.iter().zip(&set.jobs).any(|((an, a), (bn, b))| {
                            an != bn || a.file != b.file || a.text != b.text
                        })
                }
            };
        if changed {
            self.last = Some(set.clone());
            Ok(Some(set))
        } else {
            Ok(None)
        }
    }
}

/// Loads one job file's text: the job, or every problem as `validate` prints it.
pub(crate) fn load(file: &Path, text: &str) -> Loaded {
    let shown = file.display().to_string();
    match propensity_config::load_str(text, &shown) {
        Ok(job) => {
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            Ok(JobEntry {
                file: file.to_path_buf(),
                dir,
                job: Arc::new(job),
                text: text.into(),
            })
        }
        Err(diags) => Err(diags.iter().map(ToString::to_string).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = r#"
version = 1
name = "NAME"
[source.events]
uri = "file:///tmp/events/"
columns = { profile_id = "p", timestamp = "t", event_type = "e" }
[goal]
type = "conditions"
outcome = "will_occur"
window = "30d"
conditions = [ { field = "event_type", op = "eq", value = "purchase" } ]
[[sinks]]
type = "parquet"
uri = "/tmp/out/"
[schedule]
score = "*/2 * * * * *"
"#;

    #[test]
    fn a_broken_file_is_reported_and_the_others_load_and_changes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), JOB.replace("NAME", "a")).unwrap();
        std::fs::write(dir.path().join("b.toml"), "version = 1\nname = \n").unwrap();
        std::fs::write(dir.path().join("c.toml"), JOB.replace("NAME", "a")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a job").unwrap();
        let mut jd = JobDir::new(dir.path());
        let set = jd.scan().unwrap().unwrap();
        assert_eq!(set.jobs.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(set.broken.len(), 2, "{:?}", set.broken);
        assert!(set.broken[0].file.ends_with("b.toml"));
        assert!(
            set.broken[0].problems[0].contains("b.toml:2"),
            "{:?}",
            set.broken[0]
        );
        assert!(set.broken[1].problems[0].contains("already used by"));
        // Nothing changed: no new set.
        assert!(jd.scan().unwrap().is_none());
        // Fix b, change a's schedule: a new set with both.
        std::fs::write(dir.path().join("b.toml"), JOB.replace("NAME", "b")).unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            JOB.replace("NAME", "a").replace("*/2", "*/3"),
        )
        .unwrap();
        let set = jd.scan().unwrap().unwrap();
        assert_eq!(set.jobs.keys().collect::<Vec<_>>(), ["a", "b"]);
        let sched = set.jobs["a"].job.schedule.as_ref().unwrap();
        assert_eq!(sched.score.expression, "*/3 * * * * *");
        // Removing a file removes its job.
        std::fs::remove_file(dir.path().join("b.toml")).unwrap();
        let set = jd.scan().unwrap().unwrap();
        assert_eq!(set.jobs.keys().collect::<Vec<_>>(), ["a"]);
    }
}
