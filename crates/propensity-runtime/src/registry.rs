//! The model registry and run records in the state directory (the embedded default):
//!
//! ```text
//! <state>/jobs/<job>/models/<version>/model.json   model, calibrator, features, card
//! <state>/jobs/<job>/models/<version>/card.json    the model card alone, for people
//! <state>/jobs/<job>/champion.json                 {"version": …}: the model that scores
//! <state>/jobs/<job>/runs/<run_id>/…               scores.parquet, report.json/html, card.json
//! <state>/jobs/<job>/latest_run.json               {"run_id": …}: what `explain` reads
//! ```
//!
//! Every file is written to a temporary name and renamed into place, so a crash leaves the
//! previous file whole. A version is derived from what the model was trained on (the job's
//! training configuration, the data fingerprint and the seed), so the same inputs give the
//! same version and the same bytes.

use std::path::{Path, PathBuf};

use propensity_model::calibrate::Calibrator;
use propensity_model::card::ModelCard;
use propensity_model::pipeline::Model;
use serde::{Deserialize, Serialize};

use crate::RunError;

/// Version of the `model.json` layout.
pub const MODEL_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredModel {
    pub format: u32,
    pub version: String,
    /// Hash of the job's training-relevant configuration (a change makes training due).
    pub training_hash: String,
    pub features: Vec<String>,
    pub labels: Vec<String>,
    pub model: Model,
    pub calibrator: Calibrator,
    pub card: ModelCard,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pointer {
    version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatestRun {
    pub run_id: String,
    pub as_of: String,
    pub model_version: String,
    /// The job file the run read (absolute), for `propensity forget` and `replay`.
    #[serde(default)]
    pub job_file: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> RunError {
    RunError::external(format!("state directory: {}: {e}", path.display()))
}

/// A held publish lock (see [`Registry::publish_lock`]).
#[derive(Debug)]
pub struct PublishLock {
    _file: std::fs::File,
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename: a
/// reader sees the old file or the new one, never half of one (default modes; the state
/// directory uses [`write_atomic`]).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    propensity_common::private::write_atomic_shared(path, bytes)
}

/// [`write_file_atomic`] for the state directory, owner-only (folders `0700`, files `0600`),
/// with its error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    propensity_common::private::write_atomic(path, bytes).map_err(|e| io(path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, RunError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            RunError::user(format!(
                "state directory: {} is damaged: {e}",
                path.display()
            ))
            .hint("move the file away; the next run trains and writes a new one")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    b
}

impl Registry {
    pub fn open(state: &Path, job: &str) -> Result<Self, RunError> {
        let root = state.join("jobs").join(job);
        propensity_common::private::create_dir_all(&root).map_err(|e| io(&root, e))?;
        Ok(Registry { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn model_dir(&self, version: &str) -> PathBuf {
        self.root.join("models").join(version)
    }

    /// Stores a model and its card (replacing a stored model of the same version, which
    /// holds the same model).
    pub fn save(&self, m: &StoredModel) -> Result<(), RunError> {
        let dir = self.model_dir(&m.version);
        write_atomic(&dir.join("model.json"), &to_json(m))?;
        write_atomic(&dir.join("card.json"), &to_json(&m.card))
    }

    pub fn load(&self, version: &str) -> Result<StoredModel, RunError> {
        let path = self.model_dir(version).join("model.json");
        let m: StoredModel = read_json(&path)?.ok_or_else(|| {
            RunError::user(format!(
                "model {version} is not in the registry ({})",
                path.display()
            ))
        })?;
        if m.format != MODEL_FORMAT {
            return Err(RunError::user(format!(
                "{} has model format {}, this build reads {MODEL_FORMAT}",
                path.display(),
                m.format
            ))
            .hint("retrain with `propensity run --train`"));
        }
        Ok(m)
    }

    /// The version the champion pointer names, if any.
    pub fn champion_version(&self) -> Result<Option<String>, RunError> {
        Ok(read_json::<Pointer>(&self.root.join("champion.json"))?.map(|p| p.version))
    }

    pub fn champion(&self) -> Result<Option<StoredModel>, RunError> {
        match self.champion_version()? {
            Some(v) => self.load(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Points the champion at a stored version.
    pub fn promote(&self, version: &str) -> Result<(), RunError> {
        write_atomic(
            &self.root.join("champion.json"),
            &to_json(&Pointer {
                version: version.to_owned(),
            }),
        )
    }

    /// Stored versions, oldest name first.
    pub fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("models"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("model.json").exists())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(run_id)
    }

    pub fn set_latest_run(&self, latest: &LatestRun) -> Result<(), RunError> {
        write_atomic(&self.root.join("latest_run.json"), &to_json(latest))
    }

    /// Takes the job's publish lock (`<state>/jobs/<job>/publish.lock`, an OS file lock),
    /// waiting while another process holds it: runs, erasures and replays of one job publish
    /// one at a time, whoever started them (the daemon, a person, a script). Released when
    /// the returned guard is dropped, or when the process dies.
    pub fn publish_lock(&self, progress: &dyn Fn(&str)) -> Result<PublishLock, RunError> {
        let path = self.root.join("publish.lock");
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let file = o.open(&path).map_err(|e| io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                progress(&format!(
                    "another process is publishing this job ({}); waiting for it to finish",
                    path.display()
                ));
                file.lock().map_err(|e| io(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path, e)),
        }
        Ok(PublishLock { _file: file })
    }

    pub fn latest_run(&self) -> Result<Option<LatestRun>, RunError> {
        read_json(&self.root.join("latest_run.json"))
    }
}
