//! Runs in child processes. Each attempt is `propensity run JOB --as-of T --state S
//! --format json [--train]`, started from the daemon's own executable, with its stdout (the
//! run report as JSON) and stderr (progress and errors) in files under
//! `<state>/daemon/logs/<job>/`. A crash in the child (a segfaulting plugin, an abort, a
//! kill by the kernel's out-of-memory killer) ends that attempt as `crashed`; the daemon
//! goes on.
//!
//! Limits: the job's `schedule.timeout` (the child is killed and the attempt is
//! `timed_out`) and `schedule.max_memory` (the child's resident memory is read from
//! `/proc/<pid>/status` on every poll; above the limit it is killed and the attempt is
//! `crashed`). A child also stops by itself within a second when the daemon that started it
//! is gone (`PROPENSITY_DAEMON_PID`), so a `kill -9` of the daemon leaves no orphan run that
//! a restarted daemon would race.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use propensity_runtime::report::{RunReport, TrainingStatus};

use crate::ledger::{RunKind, RunOutcome};

/// The environment variable that tells a `propensity run` it is a daemon's child, and
/// which process to watch.
pub use propensity_common::process::PARENT_ENV;

/// One attempt to start.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub job: String,
    pub file: PathBuf,
    pub kind: RunKind,
    /// The occurrence's scheduled time: the run's as-of time.
    pub as_of: DateTime<Utc>,
    pub attempt_no: i64,
    pub state: PathBuf,
    pub timeout: Option<Duration>,
    pub max_memory: Option<u64>,
    /// The lease's fencing token the attempt runs under: the child checks, at each sink's
    /// commit point, that the lease still has it ([`FENCE_TOKEN_ENV`]).
    pub fencing_token: Option<u64>,
}

/// The child's environment: the ledger file and the fencing token its run was started
/// under. At each sink's commit point the child refuses to commit unless the ledger's lease
/// still has that token and has not expired.
pub const FENCE_LEDGER_ENV: &str = "PROPENSITY_FENCE_LEDGER";
/// See [`FENCE_LEDGER_ENV`].
pub const FENCE_TOKEN_ENV: &str = "PROPENSITY_FENCE_TOKEN";

/// The API token's variable: the daemon reads it, its children never see it.
pub const TOKEN_ENV: &str = "PROPENSITY_API_TOKEN";

/// Why the daemon stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `overlap = "cancel_previous"`, or the job was removed.
    Cancel,
    /// The daemon is shutting down.
    Shutdown,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub outcome: RunOutcome,
    /// Whether another attempt may help (a store or sink failure, a crash).
    pub retryable: bool,
    pub message: Option<String>,
    /// The run report the child printed, when it got that far.
    pub report: Option<RunReport>,
    /// The child's stderr file.
    pub log: Option<PathBuf>,
}

/// Starts and watches attempts. The daemon uses [`ChildLauncher`]; tests of the scheduler
/// can use a fake.
pub trait Launcher {
    type Handle;
    /// Starts the attempt, or says why it could not start.
    fn start(&mut self, req: &RunRequest) -> Result<Self::Handle, String>;
    /// `Some` once the attempt has ended.
    fn poll(&mut self, handle: &mut Self::Handle) -> Option<RunResult>;
    /// Stops the attempt; a later [`Launcher::poll`] reports it ended as `Cancelled`.
    fn stop(&mut self, handle: &mut Self::Handle, why: Stop);
}

/// Runs attempts as child processes of `exe` (the daemon's own executable).
#[derive(Debug)]
pub struct ChildLauncher {
    pub exe: PathBuf,
}

/// A running child.
#[derive(Debug)]
pub struct ChildRun {
    child: Child,
    deadline: Option<Instant>,
    max_memory: Option<u64>,
    out: PathBuf,
    err: PathBuf,
    /// Set when the daemon killed it, with the outcome and message to record.
    killed: Option<(RunOutcome, String)>,
}

fn compact(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%S%.3fZ").to_string().replace('.', "")
}

/// Where an attempt's output goes: `<state>/daemon/logs/<job>/<as-of>-<kind>-<attempt>`.
pub fn log_base(
    state: &Path,
    job: &str,
    kind: RunKind,
    at: DateTime<Utc>,
    attempt: i64,
) -> PathBuf {
    state
        .join("daemon")
        .join("logs")
        .join(job)
        .join(format!("{}-{kind}-{attempt}", compact(at)))
}

impl Launcher for ChildLauncher {
    type Handle = ChildRun;

    fn start(&mut self, req: &RunRequest) -> Result<ChildRun, String> {
        let base = log_base(&req.state, &req.job, req.kind, req.as_of, req.attempt_no);
        if let Some(dir) = base.parent() {
            propensity_common::private::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let out = base.with_extension("json");
        let err = base.with_extension("log");
        // Owner-only, like the rest of the state directory.
        let open = |p: &Path| {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o.open(p)
                .map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        let mut cmd = Command::new(&self.exe);
        cmd.arg("run")
            .arg(&req.file)
            .arg("--as-of")
            .arg(req.as_of.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .arg("--state")
            .arg(&req.state)
            .args(["--format", "json"]);
        if req.kind == RunKind::Train {
            cmd.arg("--train");
        }
        if let Some(token) = req.fencing_token {
            cmd.env(FENCE_LEDGER_ENV, req.state.join("ledger.sqlite"))
                .env(FENCE_TOKEN_ENV, token.to_string());
        }
        // A run (and the plugins it loads) has no business with the API's token.
        cmd.env_remove(TOKEN_ENV)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(open(&out)?)
            .stderr(open(&err)?);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        tracing::info!(job = %req.job, kind = %req.kind, as_of = %req.as_of, attempt = req.attempt_no, pid = child.id(), "run started");
        Ok(ChildRun {
            child,
            deadline: req.timeout.map(|t| Instant::now() + t),
            max_memory: req.max_memory,
            out,
            err,
            killed: None,
        })
    }

    fn poll(&mut self, h: &mut ChildRun) -> Option<RunResult> {
        match h.child.try_wait() {
            Ok(Some(status)) => return Some(result(h, status)),
            Ok(None) => {}
            Err(e) => {
                return Some(RunResult {
                    outcome: RunOutcome::Crashed,
                    retryable: true,
                    message: Some(format!("cannot wait for the run's process: {e}")),
                    report: None,
                    log: Some(h.err.clone()),
                });
            }
        }
        if h.killed.is_some() {
            return None;
        }
        if let Some(d) = h.deadline
            && Instant::now() >= d
        {
            let _ = h.child.kill();
            h.killed = Some((
                RunOutcome::TimedOut,
                "the run took longer than the job's `schedule.timeout` and was stopped".into(),
            ));
            return None;
        }
        if let Some(max) = h.max_memory
            && let Some(rss) = resident_bytes(h.child.id())
            && rss > max
        {
            let _ = h.child.kill();
            h.killed = Some((
                RunOutcome::Crashed,
                format!(
                    "the run used {} MiB of memory, over the job's `schedule.max_memory` ({} MiB), and was stopped",
                    rss >> 20,
                    max >> 20
                ),
            ));
        }
        None
    }

    fn stop(&mut self, h: &mut ChildRun, why: Stop) {
        if h.killed.is_none() {
            let _ = h.child.kill();
            h.killed = Some((
                RunOutcome::Cancelled,
                match why {
                    Stop::Cancel => "cancelled: a newer occurrence replaced it (`overlap = \"cancel_previous\"`), the job was removed, or the API cancelled it".into(),
                    Stop::Shutdown => "cancelled: the daemon was stopping; the occurrence runs again when the daemon starts".into(),
                },
            ));
        }
    }
}

/// The child's resident set size, from `/proc` (Linux); `None` elsewhere.
fn resident_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The error lines at the end of the child's stderr (from the last `error:` line on),
/// at most 4 000 characters.
fn error_tail(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| {
            l.starts_with("error") || l.starts_with("failpoint") || l.contains("panicked")
        })
        .unwrap_or(lines.len().saturating_sub(5));
    let tail = lines[from..].join("\n");
    let tail = tail.trim();
    if tail.is_empty() {
        return None;
    }
    let mut t: String = tail.chars().take(4000).collect();
    if t.len() < tail.len() {
        t.push('…');
    }
    Some(t)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

fn result(h: &mut ChildRun, status: ExitStatus) -> RunResult {
    use std::os::unix::process::ExitStatusExt;
    let report: Option<RunReport> = std::fs::read(&h.out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let log = Some(h.err.clone());
    if let Some((outcome, message)) = h.killed.take() {
        return RunResult {
            outcome,
            retryable: false,
            message: Some(message),
            report,
            log,
        };
    }
    let tail = error_tail(&h.err);
    let (outcome, retryable, message) = match (status.code(), status.signal()) {
        (Some(0), _) => match &report {
            Some(r) if r.training.status == TrainingStatus::Fallback => (
                RunOutcome::InsufficientData,
                false,
                Some(format!("too little data to train: {}", r.training.message)),
            ),
            _ => (RunOutcome::Succeeded, false, None),
        },
        // A bad job or bad data: another attempt gives the same answer.
        (Some(2), _) => (RunOutcome::Failed, false, tail),
        // A store or sink failed: worth another attempt.
        (Some(3), _) => (RunOutcome::Failed, true, tail),
        (Some(101), _) => (
            RunOutcome::Crashed,
            true,
            Some(format!(
                "the run panicked (exit status 101): {}",
                tail.unwrap_or_default()
            )),
        ),
        // Another status (70: a bug) gives the same answer again.
        (Some(c), _) => (
            RunOutcome::Failed,
            false,
            Some(format!("exit status {c}: {}", tail.unwrap_or_default())),
        ),
        (None, Some(sig)) => (
            RunOutcome::Crashed,
            true,
            Some(format!(
                "the run's process was killed by {} ({sig}){}",
                signal_name(sig),
                tail.map(|t| format!(": {t}")).unwrap_or_default()
            )),
        ),
        (None, None) => (RunOutcome::Crashed, true, tail),
    };
    RunResult {
        outcome,
        retryable,
        message,
        report,
        log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `propensity`: a shell script that ignores its arguments.
    fn launcher(dir: &Path, body: &str) -> ChildLauncher {
        let exe = dir.join("fake-propensity");
        std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        ChildLauncher { exe }
    }

    fn request(dir: &Path, timeout: Option<Duration>, max_memory: Option<u64>) -> RunRequest {
        RunRequest {
            job: "job".into(),
            file: dir.join("job.toml"),
            kind: RunKind::Score,
            as_of: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            attempt_no: 1,
            state: dir.to_path_buf(),
            timeout,
            max_memory,
            fencing_token: None,
        }
    }

    /// Polls until the attempt ends (at most 30 s).
    fn wait(l: &mut ChildLauncher, h: &mut ChildRun) -> RunResult {
        let start = Instant::now();
        loop {
            if let Some(r) = l.poll(h) {
                return r;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the attempt did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_run_over_its_timeout_is_stopped_as_timed_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = launcher(dir.path(), "exec sleep 30");
        let start = Instant::now();
        let mut h = l
            .start(&request(dir.path(), Some(Duration::from_millis(500)), None))
            .unwrap();
        let r = wait(&mut l, &mut h);
        assert_eq!(r.outcome, RunOutcome::TimedOut, "{r:?}");
        assert!(!r.retryable);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_run_over_its_memory_limit_is_stopped_as_crashed_with_the_figures() {
        let dir = tempfile::tempdir().unwrap();
        // `tail` keeps an endless line in memory: it grows until stopped.
        let mut l = launcher(dir.path(), "exec tail /dev/zero");
        let mut h = l.start(&request(dir.path(), None, Some(64 << 20))).unwrap();
        let r = wait(&mut l, &mut h);
        assert_eq!(r.outcome, RunOutcome::Crashed, "{r:?}");
        let m = r.message.unwrap_or_default();
        assert!(m.contains("max_memory") && m.contains("64 MiB"), "{m}");
        assert!(!r.retryable);
    }

    #[test]
    fn exit_statuses_and_signals_map_to_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("exit 0", RunOutcome::Succeeded, false),
            (
                "echo 'error: a bad job' >&2; exit 2",
                RunOutcome::Failed,
                false,
            ),
            (
                "echo 'error: the sink is down' >&2; exit 3",
                RunOutcome::Failed,
                true,
            ),
            ("exit 70", RunOutcome::Failed, false),
            ("exit 101", RunOutcome::Crashed, true),
            ("kill -SEGV $$", RunOutcome::Crashed, true),
        ];
        for (body, outcome, retryable) in cases {
            let mut l = launcher(dir.path(), body);
            let mut h = l.start(&request(dir.path(), None, None)).unwrap();
            let r = wait(&mut l, &mut h);
            assert_eq!(
                (r.outcome, r.retryable),
                (outcome, retryable),
                "{body}: {r:?}"
            );
            if body.contains("error:") {
                assert!(
                    r.message.as_deref().unwrap_or("").starts_with("error:"),
                    "{r:?}"
                );
            }
            if body.contains("SEGV") {
                assert!(
                    r.message.as_deref().unwrap_or("").contains("SIGSEGV"),
                    "{r:?}"
                );
            }
        }
    }

    #[test]
    fn a_stopped_run_is_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = launcher(dir.path(), "exec sleep 30");
        let mut h = l.start(&request(dir.path(), None, None)).unwrap();
        l.stop(&mut h, Stop::Shutdown);
        let r = wait(&mut l, &mut h);
        assert_eq!(r.outcome, RunOutcome::Cancelled, "{r:?}");
    }
}
