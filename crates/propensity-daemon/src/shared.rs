//! What the scheduler thread and the HTTP API share: the jobs as last loaded, the
//! schedule view (next fires, running attempts), leadership, and the in-process metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Utc};

use crate::jobs::JobSet;
use crate::ledger::RunKind;
use crate::runner::RunResult;

/// An attempt in progress, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunningView {
    pub kind: RunKind,
    pub scheduled_at: DateTime<Utc>,
    /// `running` or `waiting_for_retry`.
    pub state: &'static str,
}

#[derive(Debug, Default)]
pub struct ScheduleView {
    /// Next fire per job: `[score, train]`.
    pub next: BTreeMap<String, [Option<DateTime<Utc>>; 2]>,
    pub running: BTreeMap<String, RunningView>,
    /// Occurrences queued or buffered, waiting for their job.
    pub queued: usize,
}

/// Counters kept since the daemon started (run outcomes come from the ledger instead, so
/// they survive restarts).
#[derive(Debug, Default)]
pub struct MetricsInner {
    /// Per (job, stage): (sum of seconds, count).
    pub stage_seconds: BTreeMap<(String, String), (f64, u64)>,
    pub rows_scored: BTreeMap<String, u64>,
    /// Per (job, sink): failed publications.
    pub sink_failures: BTreeMap<(String, String), u64>,
    /// Per (job, outcome): attempts that ended so.
    pub attempts: BTreeMap<(String, String), u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub inner: Mutex<MetricsInner>,
}

impl Metrics {
    /// Counts what an ended attempt reported.
    pub fn record(&self, job: &str, r: &RunResult) {
        let Ok(mut m) = self.inner.lock() else { return };
        *m.attempts
            .entry((job.to_owned(), r.outcome.as_str().to_owned()))
            .or_default() += 1;
        if let Some(rep) = &r.report {
            *m.rows_scored.entry(job.to_owned()).or_default() += rep.scored as u64;
            for t in &rep.timings {
                let e = m
                    .stage_seconds
                    .entry((job.to_owned(), t.stage.clone()))
                    .or_default();
                e.0 += t.seconds;
                e.1 += 1;
            }
            for p in rep
                .publications
                .iter()
                .filter(|p| p.status == propensity_runtime::report::PublicationStatus::Failed)
            {
                *m.sink_failures
                    .entry((job.to_owned(), p.sink.clone()))
                    .or_default() += 1;
            }
        }
    }
}

/// Jobs loaded and broken, attempts running and occurrences queued, right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub jobs: usize,
    pub broken: usize,
    pub running: usize,
    pub queued: usize,
}

/// Shared between the scheduler thread and the API.
#[derive(Debug)]
pub struct Shared {
    pub state: PathBuf,
    pub jobs_dir: PathBuf,
    pub holder: String,
    pub started_at: DateTime<Utc>,
    pub jobs: RwLock<JobSet>,
    pub schedule: RwLock<ScheduleView>,
    pub metrics: Metrics,
    leader: AtomicBool,
    token: AtomicU64,
    /// Set when the daemon is shutting down.
    pub stopping: AtomicBool,
}

impl Shared {
    pub fn new(state: PathBuf, jobs_dir: PathBuf, holder: String) -> Self {
        Shared {
            state,
            jobs_dir,
            holder,
            started_at: Utc::now(),
            jobs: RwLock::new(JobSet::default()),
            schedule: RwLock::new(ScheduleView::default()),
            metrics: Metrics::default(),
            leader: AtomicBool::new(false),
            token: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn set_leader(&self, leader: bool, token: Option<u64>) {
        self.leader.store(leader, Ordering::SeqCst);
        self.token.store(token.unwrap_or(0), Ordering::SeqCst);
    }

    /// Whether this daemon holds the lease, and its fencing token.
    pub fn leader(&self) -> (bool, Option<u64>) {
        let l = self.leader.load(Ordering::SeqCst);
        let t = self.token.load(Ordering::SeqCst);
        (l, (t > 0).then_some(t))
    }

    pub fn counts(&self) -> Counts {
        let (jobs, broken) = self
            .jobs
            .read()
            .map(|j| (j.jobs.len(), j.broken.len()))
            .unwrap_or_default();
        let (running, queued) = self
            .schedule
            .read()
            .map(|v| (v.running.len(), v.queued))
            .unwrap_or_default();
        Counts {
            jobs,
            broken,
            running,
            queued,
        }
    }

    pub fn set_jobs(&self, set: JobSet) {
        if let Ok(mut j) = self.jobs.write() {
            *j = set;
        }
    }

    pub fn set_schedule(
        &self,
        next: BTreeMap<String, [Option<DateTime<Utc>>; 2]>,
        running: BTreeMap<String, RunningView>,
        queued: usize,
    ) {
        if let Ok(mut s) = self.schedule.write() {
            s.next = next;
            s.running = running;
            s.queued = queued;
        }
    }
}
