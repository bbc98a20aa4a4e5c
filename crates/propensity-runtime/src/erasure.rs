//! `propensity forget` (erasure) and `propensity replay` (webhook outboxes).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BooleanArray, StringArray};
use propensity_core::{Job, SinkKind};
use propensity_engine::EnvLookup;
use serde::Serialize;

use crate::registry::{Registry, write_atomic};
use crate::{RunError, suppression};

/// What `forget` did for one sink.
#[derive(Debug, Clone, Serialize)]
pub struct SinkErasure {
    pub sink: String,
    pub kind: String,
    pub status: ErasureStatus,
    pub removed: u64,
    pub message: String,
}

/// What one sink did with an erasure request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureStatus {
    /// The sink removed the profiles it held (possibly none).
    Erased,
    /// The sink could not be reached or refused (see the message).
    Failed,
}

/// What `forget` did for one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobErasure {
    pub job: String,
    pub job_file: String,
    /// Score files in the state directory that held the profiles and were rewritten.
    pub state_files_rewritten: usize,
    pub sinks: Vec<SinkErasure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Erasure {
    pub profiles: usize,
    /// Profiles newly added to the suppression list (the others were already on it).
    pub newly_suppressed: usize,
    pub jobs: Vec<JobErasure>,
    /// Jobs in the state directory whose job file could not be read (their sinks were not
    /// reached; run `forget` again with `--job FILE`).
    pub skipped: Vec<String>,
}

impl Erasure {
    pub fn failed(&self) -> bool {
        !self.skipped.is_empty()
            || self
                .jobs
                .iter()
                .any(|j| j.sinks.iter().any(|s| s.status == ErasureStatus::Failed))
    }
}

fn load_job(path: &Path) -> Result<(Job, PathBuf), String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let job = propensity_config::load_str(&text, &shown).map_err(|d| {
        format!(
            "{shown} is not a valid job ({} problem(s)); see `propensity validate`",
            d.len()
        )
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Ok((job, dir))
}

/// Rewrites every score file of the job's runs in the state directory without `ids`.
fn scrub_runs(registry: &Registry, ids: &HashSet<&str>) -> Result<usize, RunError> {
    let runs = registry.root().join("runs");
    let Ok(entries) = std::fs::read_dir(&runs) else {
        return Ok(0);
    };
    let mut rewritten = 0;
    for e in entries.flatten() {
        let path = e.path().join("scores.parquet");
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let bad = |m: String| RunError::external(format!("{}: {m}", path.display()));
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .and_then(|b| b.build())
        .map_err(|e| bad(e.to_string()))?;
        let mut kept = Vec::new();
        let mut removed = 0;
        for b in reader {
            let b = b.map_err(|e| bad(e.to_string()))?;
            let col = b
                .column_by_name("profile_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| bad("no profile_id column".into()))?;
            let keep: BooleanArray = col
                .iter()
                .map(|v| Some(!v.is_some_and(|v| ids.contains(v))))
                .collect();
            removed += b.num_rows() - keep.true_count();
            kept.push(
                arrow::compute::filter_record_batch(&b, &keep).map_err(|e| bad(e.to_string()))?,
            );
        }
        if removed == 0 {
            continue;
        }
        let schema = crate::scores::schema();
        let all = arrow::compute::concat_batches(&schema, &kept).map_err(|e| bad(e.to_string()))?;
        write_atomic(&path, &crate::scores::parquet_bytes(&all)?)?;
        rewritten += 1;
    }
    Ok(rewritten)
}

/// Erases profiles: adds them to the suppression list (every later run leaves them out),
/// removes them from the current publication of every sink of every job that has run on
/// this state directory (and of `extra_jobs`), and from the run files kept in the state.
pub fn forget(
    state_dir: &Path,
    extra_jobs: &[PathBuf],
    profile_ids: &[String],
    env: &EnvLookup,
) -> Result<Erasure, RunError> {
    let newly_suppressed = suppression::add(state_dir, profile_ids)?;
    let mut files: Vec<PathBuf> = extra_jobs.to_vec();
    let mut skipped = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state_dir.join("jobs")) {
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let registry = Registry::open(state_dir, &name)?;
            match registry
                .latest_run()
                .ok()
                .flatten()
                .and_then(|l| l.job_file)
            {
                Some(f) => files.push(PathBuf::from(f)),
                None => skipped.push(format!("{name}: no job file recorded for its latest run")),
            }
        }
    }
    let ids: HashSet<&str> = profile_ids.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::internal(format!("cannot start the runtime: {e}")))?;
    let mut seen = HashSet::new();
    let mut jobs = Vec::new();
    for file in files {
        let (job, dir) = match load_job(&file) {
            Ok(j) => j,
            Err(e) => {
                skipped.push(e);
                continue;
            }
        };
        if !seen.insert(job.name.clone()) {
            continue;
        }
        // A job listed only here (never run) still gets its run files checked: none.
        let registry = Registry::open(state_dir, &job.name)?;
        // Not while a run of the job publishes (it would put the profiles back).
        let _lock = registry.publish_lock(&|m| eprintln!("{m}"))?;
        let state_files_rewritten = scrub_runs(&registry, &ids)?;
        let ctx = propensity_sinks::Context {
            job_dir: dir,
            env: env.clone(),
            state_dir: Some(registry.root().to_path_buf()),
        };
        let sinks = propensity_sinks::build_all(&job, &ctx);
        let results = rt.block_on(futures::future::join_all(
            sinks
                .into_iter()
                .zip(&job.sinks)
                .map(|((name, sink), spec)| {
                    let job_name = job.name.clone();
                    async move {
                        let kind = spec.kind.type_name().to_owned();
                        let r = match sink {
                            Ok(s) => s.forget(&job_name, profile_ids).await,
                            Err(e) => Err(e),
                        };
                        match r {
                            Ok(n) => SinkErasure {
                                sink: name,
                                kind,
                                status: ErasureStatus::Erased,
                                removed: n,
                                message: String::new(),
                            },
                            Err(e) => SinkErasure {
                                sink: name,
                                kind,
                                status: ErasureStatus::Failed,
                                removed: 0,
                                message: e.message,
                            },
                        }
                    }
                }),
        ));
        jobs.push(JobErasure {
            job: job.name.clone(),
            job_file: file.display().to_string(),
            state_files_rewritten,
            sinks: results,
        });
    }
    Ok(Erasure {
        profiles: ids.len(),
        newly_suppressed,
        jobs,
        skipped,
    })
}

/// What `replay` did for one webhook sink.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReplay {
    pub sink: String,
    pub delivered: usize,
    pub kept: usize,
    pub message: String,
}

/// Sends the batches a job's webhook sinks kept in the state directory's outbox again.
pub fn replay(
    job: &Job,
    job_dir: &Path,
    state_dir: &Path,
    env: &EnvLookup,
) -> Result<Vec<SinkReplay>, RunError> {
    let registry = Registry::open(state_dir, &job.name)?;
    let ctx = propensity_sinks::Context {
        job_dir: job_dir.to_path_buf(),
        env: env.clone(),
        state_dir: Some(registry.root().to_path_buf()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::internal(format!("cannot start the runtime: {e}")))?;
    let mut out = Vec::new();
    for spec in &job.sinks {
        let SinkKind::Webhook(cfg) = &spec.kind else {
            continue;
        };
        let sink = propensity_sinks::webhook::WebhookSink::new(spec, cfg, &ctx)
            .map_err(|e| RunError::user(format!("sink `{}`: {e}", spec.name)))?;
        let r = rt
            .block_on(sink.replay(registry.root()))
            .map_err(|e| RunError {
                domain: e.domain,
                message: format!("sink `{}`: {}", spec.name, e.message),
                hint: None,
            })?;
        out.push(SinkReplay {
            sink: spec.name.clone(),
            delivered: r.delivered,
            kept: r.kept,
            message: r.message,
        });
    }
    if out.is_empty() {
        return Err(RunError::user(format!(
            "job `{}` has no webhook sink: only webhook sinks keep batches for replay",
            job.name
        )));
    }
    Ok(out)
}
