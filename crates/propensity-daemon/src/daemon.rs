//! `propensity daemon` and `propensity backfill`: the wiring of the jobs directory, the
//! scheduler thread, the child-process launcher, the ledger and the HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};

use crate::api::{Api, router};
use crate::jobs::{JobDir, JobSet};
use crate::ledger::{Ledger, OccurrenceRecord, RunKind, RunOutcome};
use crate::runner::ChildLauncher;
use crate::schedule::occurrences;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::shared::Shared;

/// An error that stops the daemon or a backfill before it starts, for people.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DaemonError {
    pub message: String,
    /// `true` for bad input (exit 2), `false` for an environment failure (exit 3).
    pub user: bool,
}

fn user(m: impl Into<String>) -> DaemonError {
    DaemonError {
        message: m.into(),
        user: true,
    }
}

fn external(m: impl Into<String>) -> DaemonError {
    DaemonError {
        message: m.into(),
        user: false,
    }
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub jobs: PathBuf,
    pub state: PathBuf,
    pub listen: SocketAddr,
    /// Bearer token of the API (required unless `listen` is a loopback address).
    pub token: Option<String>,
    /// How long running attempts may take to finish after SIGTERM before they are stopped.
    pub shutdown_grace: Duration,
    pub lease_ttl: Duration,
    /// How often the jobs directory is read again.
    pub reload_every: Duration,
    /// The scheduler's step.
    pub tick: Duration,
    /// The executable runs are started from (the daemon's own).
    pub exe: PathBuf,
}

fn holder(kind: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "{kind}:{host}:{}:{}",
        std::process::id(),
        Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    )
}

fn open_ledger(state: &Path) -> Result<Ledger, DaemonError> {
    propensity_common::private::create_dir_all(state).map_err(|e| {
        external(format!(
            "cannot create the state directory {}: {e}",
            state.display()
        ))
    })?;
    Ledger::open(state.join("ledger.sqlite")).map_err(|e| external(e.to_string()))
}

/// Runs the daemon until SIGTERM or SIGINT. Returns after a clean shutdown.
pub fn serve(opts: DaemonOptions) -> Result<(), DaemonError> {
    if !opts.jobs.is_dir() {
        return Err(user(format!(
            "--jobs {}: not a directory (the daemon runs every `*.toml` job file in it)",
            opts.jobs.display()
        )));
    }
    if opts.token.as_deref().is_some_and(|t| t.trim().len() < 16) {
        return Err(user(
            "PROPENSITY_API_TOKEN is shorter than 16 characters: use a long random token (e.g. `openssl rand -hex 32`)",
        ));
    }
    if !opts.listen.ip().is_loopback() && opts.token.is_none() {
        return Err(user(format!(
            "--listen {}: the API is not on a loopback address, so it needs a token: set PROPENSITY_API_TOKEN (clients send `Authorization: Bearer <token>`), or listen on 127.0.0.1",
            opts.listen
        )));
    }
    let scheduler_ledger = open_ledger(&opts.state)?;
    let api_ledger = open_ledger(&opts.state)?;
    let holder = holder("daemon");
    let shared = Arc::new(Shared::new(
        opts.state.clone(),
        opts.jobs.clone(),
        holder.clone(),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| external(format!("cannot start the runtime: {e}")))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(opts.listen))
        .map_err(|e| external(format!("cannot listen on {}: {e}", opts.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| external(format!("cannot listen on {}: {e}", opts.listen)))?;
    tracing::info!(listen = %local, jobs = %opts.jobs.display(), state = %opts.state.display(), holder = %holder, "daemon started");
    eprintln!(
        "propensity daemon: API on http://{local} · jobs {} · state {} · ledger {}",
        opts.jobs.display(),
        opts.state.display(),
        opts.state.join("ledger.sqlite").display()
    );

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let sched_thread = {
        let shared = shared.clone();
        let opts = opts.clone();
        std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                scheduler_loop(&opts, holder, scheduler_ledger, &shared);
                let _ = done_tx.send(());
            })
            .map_err(|e| external(format!("cannot start the scheduler thread: {e}")))?
    };

    let api = Arc::new(Api {
        shared: shared.clone(),
        ledger: Mutex::new(api_ledger),
        token: opts.token.clone(),
    });
    let app = router(api);
    let stop_shared = shared.clone();
    let served = rt.block_on(async move {
        crate::serve::serve(listener, app, async move {
            tokio::select! {
                () = signal() => {
                    tracing::info!("stopping: no new runs; running ones get the shutdown grace period");
                    stop_shared.stopping.store(true, Ordering::SeqCst);
                    let _ = (&mut done_rx).await;
                }
                // The scheduler ended by itself: it only does when it panicked. Stop
                // serving, so a supervisor restarts the daemon.
                _ = &mut done_rx => {
                    stop_shared.set_leader(false, None);
                }
            }
        })
        .await
    });
    let joined = sched_thread.join();
    served.map_err(|e| external(format!("the API server failed: {e}")))?;
    if joined.is_err() {
        return Err(external("the scheduler thread panicked; see the log"));
    }
    tracing::info!("daemon stopped");
    Ok(())
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn scheduler_loop(opts: &DaemonOptions, holder: String, ledger: Ledger, shared: &Arc<Shared>) {
    let cfg = SchedulerConfig {
        state: opts.state.clone(),
        holder,
        lease_ttl: opts.lease_ttl,
        fire: true,
    };
    let launcher = ChildLauncher {
        exe: opts.exe.clone(),
    };
    let mut sched = Scheduler::new(cfg, ledger, launcher, shared.clone());
    let mut dir = JobDir::new(&opts.jobs);
    let mut last_scan: Option<Instant> = None;
    let mut stop_deadline: Option<Instant> = None;
    loop {
        let now = Utc::now();
        if shared.stopping.load(Ordering::SeqCst) {
            let deadline = *stop_deadline.get_or_insert_with(|| {
                sched.stop_all(false);
                Instant::now() + opts.shutdown_grace
            });
            if Instant::now() >= deadline {
                sched.stop_all(true);
            }
            sched.tick(now);
            if !sched.busy() {
                sched.release();
                return;
            }
        } else {
            if last_scan.is_none_or(|t| t.elapsed() >= opts.reload_every) {
                last_scan = Some(Instant::now());
                match dir.scan() {
                    Ok(Some(set)) => {
                        sched.set_jobs(&set, now);
                        shared.set_jobs(set);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(
                        "cannot read the jobs directory {}: {e}; keeping the jobs loaded before",
                        opts.jobs.display()
                    ),
                }
            }
            sched.tick(now);
        }
        std::thread::sleep(opts.tick);
    }
}

/// What `propensity backfill` found or did for one occurrence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackfillItem {
    pub kind: RunKind,
    pub scheduled_at: DateTime<Utc>,
    /// `missing` (dry run), `queued` (handed to the running daemon), or the final outcome.
    pub status: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackfillReport {
    pub job: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Occurrences in the range already in the ledger (left alone).
    pub recorded: usize,
    pub items: Vec<BackfillItem>,
    /// The daemon that holds the lease and runs the queued occurrences, if one does.
    pub daemon: Option<String>,
}

impl BackfillReport {
    /// Whether every occurrence that ran ended well.
    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| {
            matches!(
                i.status.as_str(),
                "missing" | "queued" | "succeeded" | "insufficient_data"
            )
        })
    }
}

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub job_file: PathBuf,
    pub state: PathBuf,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub kinds: Vec<RunKind>,
    pub dry_run: bool,
    pub exe: PathBuf,
}

/// The job's scheduled occurrences in `[from, to]` that the ledger does not have, run with
/// their scheduled times as as-of times, oldest first. With a daemon holding the lease they
/// are queued for it (it picks them up within a second); without one, they run here, one
/// at a time in child processes, under the lease.
pub fn backfill(opts: &BackfillOptions) -> Result<BackfillReport, DaemonError> {
    let text = std::fs::read_to_string(&opts.job_file)
        .map_err(|e| user(format!("cannot read `{}`: {e}", opts.job_file.display())))?;
    let shown = opts.job_file.display().to_string();
    // Loaded as the daemon loads a file of its jobs directory.
    let entry = crate::jobs::load(&opts.job_file, &text).map_err(|problems| {
        user(format!(
            "`{shown}` is not a valid job:\n{}",
            problems.join("\n")
        ))
    })?;
    let job = entry.job.clone();
    let Some(sched) = job.schedule.clone() else {
        return Err(user(format!(
            "`{shown}` has no [schedule]: backfill runs a job's scheduled occurrences (use `propensity run --as-of` for one run)"
        )));
    };
    if opts.from > opts.to {
        return Err(user(format!(
            "--from {} is after --to {}",
            opts.from, opts.to
        )));
    }
    let mut ledger = open_ledger(&opts.state)?;
    let mut wanted = Vec::new();
    let mut recorded = 0;
    for &kind in &opts.kinds {
        let cron = match kind {
            RunKind::Score => Some(&sched.score.schedule),
            RunKind::Train => sched.train.as_ref().map(|t| &t.schedule),
        };
        let Some(cron) = cron else {
            return Err(user(format!(
                "`{shown}` has no `schedule.train`: there are no train occurrences to backfill (drop `--kind train`)"
            )));
        };
        let from = opts.from - TimeDelta::microseconds(1);
        let cands = occurrences(cron, sched.timezone, from, opts.to, 10_001);
        if cands.len() > 10_000 {
            return Err(user(format!(
                "more than 10 000 {kind} occurrences between {} and {}: backfill a shorter range",
                opts.from, opts.to
            )));
        }
        let missing = ledger
            .missed_since(&job.name, kind, &cands)
            .map_err(|e| external(e.to_string()))?;
        recorded += cands.len() - missing.len();
        wanted.extend(missing.into_iter().map(|t| (kind, t)));
    }
    wanted.sort_by_key(|&(k, t)| (t, k));
    let daemon = ledger
        .lease_holder()
        .map_err(|e| external(e.to_string()))?
        .filter(|(_, _, until)| *until > Utc::now())
        .map(|(h, _, _)| h);
    let mut report = BackfillReport {
        job: job.name.clone(),
        from: opts.from,
        to: opts.to,
        recorded,
        items: Vec::new(),
        daemon: daemon.clone(),
    };
    if opts.dry_run || wanted.is_empty() {
        report.items = wanted
            .into_iter()
            .map(|(kind, at)| BackfillItem {
                kind,
                scheduled_at: at,
                status: "missing".into(),
                message: None,
            })
            .collect();
        return Ok(report);
    }
    for &(kind, at) in &wanted {
        ledger
            .record_due_as(&job.name, kind, at, "backfill")
            .map_err(|e| external(e.to_string()))?;
    }
    if daemon.is_some() {
        report.items = wanted
            .into_iter()
            .map(|(kind, at)| BackfillItem {
                kind,
                scheduled_at: at,
                status: "queued".into(),
                message: None,
            })
            .collect();
        return Ok(report);
    }
    // No daemon: run them here, under the lease, with the scheduler in drain mode (no cron
    // fires, no catch-up), so retries and the ledger behave exactly as in the daemon.
    let holder = holder("backfill");
    let shared = Arc::new(Shared::new(
        opts.state.clone(),
        entry.dir.clone(),
        holder.clone(),
    ));
    let cfg = SchedulerConfig {
        state: opts.state.clone(),
        holder,
        lease_ttl: Duration::from_secs(30),
        fire: false,
    };
    let launcher = ChildLauncher {
        exe: opts.exe.clone(),
    };
    let mut sched = Scheduler::new(cfg, ledger, launcher, shared);
    let mut set = JobSet::default();
    set.jobs.insert(job.name.clone(), entry);
    sched.set_jobs(&set, Utc::now());
    sched.tick(Utc::now());
    if sched.token().is_none() {
        return Err(external(
            "another process took the ledger's lease: run the backfill again (with a daemon running, it queues the occurrences for it)",
        ));
    }
    while !sched.idle() {
        std::thread::sleep(Duration::from_millis(200));
        sched.tick(Utc::now());
    }
    sched.release();
    let ledger = open_ledger(&opts.state)?;
    for (kind, at) in wanted {
        let occ: Option<OccurrenceRecord> = ledger
            .occurrence(&job.name, kind, at)
            .map_err(|e| external(e.to_string()))?;
        let (status, message) = match occ {
            Some(o) => (
                o.final_outcome
                    .map_or("pending".to_owned(), |x: RunOutcome| x.as_str().to_owned()),
                o.attempts.last().and_then(|a| a.message.clone()),
            ),
            None => ("pending".to_owned(), None),
        };
        report.items.push(BackfillItem {
            kind,
            scheduled_at: at,
            status,
            message,
        });
    }
    Ok(report)
}
