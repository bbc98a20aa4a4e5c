//! The scheduler under a fake clock (explicit instants) with a fake launcher whose runs end
//! when the test says, over a real ledger in a temporary directory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::TimeZone;

use super::*;
use crate::jobs::JobSet;
use crate::ledger::OccurrenceRecord;

#[derive(Debug, Default)]
struct Fake {
    /// Starts to refuse (as if no process could be made) before starting again.
    refuse: u32,
    next: u64,
    started: Vec<RunRequest>,
    /// Results to hand out at the next poll, by handle.
    ends: BTreeMap<u64, RunResult>,
    stopped: Vec<(u64, Stop)>,
}

#[derive(Debug, Clone, Default)]
struct FakeLauncher(Arc<Mutex<Fake>>);

impl Launcher for FakeLauncher {
    type Handle = u64;
    fn start(&mut self, req: &RunRequest) -> Result<u64, String> {
        let mut f = self.0.lock().unwrap();
        if f.refuse > 0 {
            f.refuse -= 1;
            return Err("cannot start the run: Too many open files (os error 24)".into());
        }
        f.next += 1;
        f.started.push(req.clone());
        Ok(f.next)
    }
    fn poll(&mut self, h: &mut u64) -> Option<RunResult> {
        self.0.lock().unwrap().ends.remove(h)
    }
    fn stop(&mut self, h: &mut u64, why: Stop) {
        let mut f = self.0.lock().unwrap();
        f.stopped.push((*h, why));
        f.ends.insert(*h, result(RunOutcome::Cancelled, false));
    }
}

impl FakeLauncher {
    /// Ends the latest started run with `outcome`.
    fn end_latest(&self, outcome: RunOutcome, retryable: bool) {
        let mut f = self.0.lock().unwrap();
        let h = f.next;
        f.ends.insert(h, result(outcome, retryable));
    }
    fn started(&self) -> Vec<DateTime<Utc>> {
        self.0
            .lock()
            .unwrap()
            .started
            .iter()
            .map(|r| r.as_of)
            .collect()
    }
}

fn result(outcome: RunOutcome, retryable: bool) -> RunResult {
    RunResult {
        outcome,
        retryable,
        message: (outcome != RunOutcome::Succeeded).then(|| format!("{outcome} (fake)")),
        report: None,
        log: None,
    }
}

fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, h, m, s).unwrap()
}

fn entry(schedule: &str) -> JobSet {
    let text = format!(
        r#"version = 1
name = "job"
[source.events]
uri = "file:///tmp/events/"
columns = {{ profile_id = "p", timestamp = "t", event_type = "e" }}
[goal]
type = "conditions"
outcome = "will_occur"
window = "30d"
conditions = [ {{ field = "event_type", op = "eq", value = "purchase" }} ]
[[sinks]]
type = "parquet"
uri = "/tmp/out/"
[schedule]
{schedule}
"#
    );
    let job = propensity_config::load_str(&text, "job.toml").unwrap();
    let mut set = JobSet::default();
    set.jobs.insert(
        "job".into(),
        JobEntry {
            file: "job.toml".into(),
            dir: ".".into(),
            job: Arc::new(job),
            text: text.into(),
        },
    );
    set
}

struct Rig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sched: Scheduler<FakeLauncher>,
    fake: FakeLauncher,
}

fn rig_in(dir: tempfile::TempDir, schedule: &str, now: DateTime<Utc>, holder: &str) -> Rig {
    rig_ttl(dir, schedule, now, holder, Duration::from_secs(3600))
}

/// The fake clock jumps minutes between ticks: the lease lives an hour unless a test says.
fn rig_ttl(
    dir: tempfile::TempDir,
    schedule: &str,
    now: DateTime<Utc>,
    holder: &str,
    lease_ttl: Duration,
) -> Rig {
    let path = dir.path().join("ledger.sqlite");
    let fake = FakeLauncher::default();
    let shared = Arc::new(Shared::new(
        dir.path().into(),
        dir.path().into(),
        holder.into(),
    ));
    let cfg = SchedulerConfig {
        state: dir.path().into(),
        holder: holder.into(),
        lease_ttl,
        fire: true,
    };
    let mut sched = Scheduler::new(cfg, Ledger::open(&path).unwrap(), fake.clone(), shared);
    sched.set_jobs(&entry(schedule), now);
    Rig {
        _dir: dir,
        path,
        sched,
        fake,
    }
}

fn rig(schedule: &str, now: DateTime<Utc>) -> Rig {
    rig_in(tempfile::tempdir().unwrap(), schedule, now, "test")
}

impl Rig {
    fn runs(&self) -> Vec<OccurrenceRecord> {
        let mut r = Ledger::open(&self.path).unwrap().runs("job", 1000).unwrap();
        r.sort_by_key(|o| o.scheduled_at);
        r
    }
    fn outcomes(&self) -> Vec<(DateTime<Utc>, Option<RunOutcome>)> {
        self.runs()
            .iter()
            .map(|o| (o.scheduled_at, o.final_outcome))
            .collect()
    }
}

#[test]
fn each_occurrence_runs_at_its_time_and_ends_with_one_outcome() {
    let mut r = rig(r#"score = "0 * * * * *""#, t(10, 0, 30));
    r.sched.tick(t(10, 0, 30));
    assert!(r.fake.started().is_empty(), "nothing is due before 10:01");
    r.sched.tick(t(10, 1, 0));
    assert_eq!(r.fake.started(), [t(10, 1, 0)]);
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 1, 5));
    r.sched.tick(t(10, 2, 0));
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 2, 1));
    assert_eq!(
        r.outcomes(),
        [
            (t(10, 1, 0), Some(RunOutcome::Succeeded)),
            (t(10, 2, 0), Some(RunOutcome::Succeeded))
        ]
    );
    assert!(r.sched.idle());
}

/// A run that cannot even start (out of descriptors) is not lost: the occurrence waits and
/// starts again, without using up its one attempt (it was lost before).
#[test]
fn an_occurrence_whose_run_cannot_start_is_started_again() {
    let mut r = rig(r#"score = "0 0 * * * *""#, t(9, 59, 0));
    r.fake.0.lock().unwrap().refuse = 3;
    r.sched.tick(t(10, 0, 0));
    assert!(r.fake.started().is_empty());
    assert_eq!(r.outcomes(), [(t(10, 0, 0), None)], "not final");
    r.sched.tick(t(10, 0, 6));
    r.sched.tick(t(10, 0, 12));
    r.sched.tick(t(10, 0, 18));
    assert_eq!(r.fake.started(), [t(10, 0, 0)]);
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 0, 20));
    assert_eq!(r.outcomes(), [(t(10, 0, 0), Some(RunOutcome::Succeeded))]);
    let attempts = &r.runs()[0].attempts;
    assert_eq!(attempts.len(), 4);
    assert!(
        attempts[0]
            .message
            .as_deref()
            .is_some_and(|m| m
                .starts_with("the run could not start: cannot start the run: Too many open files")),
        "{attempts:?}"
    );
    // Past the limit it fails for good.
    let mut r = rig(r#"score = "0 0 10 * * *""#, t(9, 59, 0));
    r.fake.0.lock().unwrap().refuse = 100;
    // (then the job's own retries apply, with their backoff).
    for k in 0..40 {
        r.sched.tick(t(10, 0, 0) + TimeDelta::minutes(10 * k));
    }
    assert_eq!(r.outcomes(), [(t(10, 0, 0), Some(RunOutcome::Failed))]);
    assert!(r.runs()[0].attempts.len() as u32 > MAX_LAUNCH_FAILURES);
}

#[test]
fn skip_records_the_overlapping_occurrence_and_buffer_one_runs_one_later() {
    // skip (the default)
    let mut r = rig(r#"score = "0 * * * * *""#, t(10, 0, 30));
    r.sched.tick(t(10, 1, 0));
    r.sched.tick(t(10, 2, 0));
    r.sched.tick(t(10, 3, 0));
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 3, 30));
    assert_eq!(
        r.outcomes(),
        [
            (t(10, 1, 0), Some(RunOutcome::Succeeded)),
            (t(10, 2, 0), Some(RunOutcome::SkippedOverlap)),
            (t(10, 3, 0), Some(RunOutcome::SkippedOverlap))
        ]
    );
    // buffer_one: the first overlapping one waits, the second is skipped.
    let mut r = rig(
        "score = \"0 * * * * *\"\noverlap = \"buffer_one\"",
        t(10, 0, 30),
    );
    r.sched.tick(t(10, 1, 0));
    r.sched.tick(t(10, 2, 0));
    r.sched.tick(t(10, 3, 0));
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 3, 30));
    assert_eq!(
        r.fake.started(),
        [t(10, 1, 0), t(10, 2, 0)],
        "the buffered one starts"
    );
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 3, 40));
    assert_eq!(
        r.outcomes(),
        [
            (t(10, 1, 0), Some(RunOutcome::Succeeded)),
            (t(10, 2, 0), Some(RunOutcome::Succeeded)),
            (t(10, 3, 0), Some(RunOutcome::SkippedOverlap))
        ]
    );
}

#[test]
fn cancel_previous_stops_the_running_attempt_and_starts_the_new_one() {
    let mut r = rig(
        "score = \"0 * * * * *\"\noverlap = \"cancel_previous\"",
        t(10, 0, 30),
    );
    r.sched.tick(t(10, 1, 0));
    r.sched.tick(t(10, 2, 0));
    assert_eq!(r.fake.0.lock().unwrap().stopped, [(1, Stop::Cancel)]);
    r.sched.tick(t(10, 2, 1));
    assert_eq!(r.fake.started(), [t(10, 1, 0), t(10, 2, 0)]);
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 2, 2));
    assert_eq!(
        r.outcomes(),
        [
            (t(10, 1, 0), Some(RunOutcome::Cancelled)),
            (t(10, 2, 0), Some(RunOutcome::Succeeded))
        ]
    );
}

#[test]
fn a_retryable_failure_is_retried_after_the_backoff_and_a_final_one_is_not() {
    let sched = "score = \"0 0 * * * *\"\n[schedule.retries]\nmax_attempts = 3\nbackoff = \"1m\"\nmax_backoff = \"10m\"";
    let mut r = rig(sched, t(9, 59, 0));
    r.sched.tick(t(10, 0, 0));
    r.fake.end_latest(RunOutcome::Failed, true);
    r.sched.tick(t(10, 0, 10));
    r.sched.tick(t(10, 0, 50));
    assert_eq!(r.fake.started().len(), 1, "waits for the backoff");
    r.sched.tick(t(10, 1, 11));
    assert_eq!(
        r.fake.started(),
        [t(10, 0, 0), t(10, 0, 0)],
        "retry 1 after 1 min"
    );
    r.fake.end_latest(RunOutcome::Crashed, true);
    r.sched.tick(t(10, 1, 20));
    r.sched.tick(t(10, 3, 0));
    r.sched.tick(t(10, 3, 21));
    assert_eq!(r.fake.started().len(), 3, "retry 2 after 2 min");
    r.fake.end_latest(RunOutcome::Failed, true);
    r.sched.tick(t(10, 3, 30));
    r.sched.tick(t(10, 30, 0));
    assert_eq!(r.fake.started().len(), 3, "max_attempts = 3");
    let occ = &r.runs()[0];
    assert_eq!(occ.final_outcome, Some(RunOutcome::Failed));
    let outs: Vec<_> = occ.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outs,
        [
            Some(RunOutcome::Failed),
            Some(RunOutcome::Crashed),
            Some(RunOutcome::Failed)
        ]
    );
    // A non-retryable failure (a bad job) is final at once.
    r.sched.tick(t(11, 0, 0));
    r.fake.end_latest(RunOutcome::Failed, false);
    r.sched.tick(t(11, 0, 1));
    r.sched.tick(t(11, 10, 0));
    assert_eq!(r.fake.started().len(), 4);
    assert_eq!(r.runs()[1].final_outcome, Some(RunOutcome::Failed));
}

#[test]
fn after_downtime_latest_runs_the_last_missed_occurrence_and_records_the_others() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut r = rig_in(dir, r#"score = "0 0 * * * *""#, t(9, 59, 0), "first");
        r.sched.tick(t(10, 0, 0));
        r.fake.end_latest(RunOutcome::Succeeded, false);
        r.sched.tick(t(10, 0, 1));
        r.sched.release();
        // "down" from 10:00:01 to 14:30
        let dir2 = r._dir;
        let mut r = rig_in(dir2, r#"score = "0 0 * * * *""#, t(14, 30, 0), "second");
        r.sched.tick(t(14, 30, 0));
        assert_eq!(
            r.fake.started(),
            [t(14, 0, 0)],
            "only the latest missed one runs"
        );
        r.fake.end_latest(RunOutcome::Succeeded, false);
        r.sched.tick(t(14, 30, 1));
        let runs = r.runs();
        let got: Vec<_> = runs
            .iter()
            .map(|o| (o.scheduled_at, o.final_outcome, o.origin.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (t(10, 0, 0), Some(RunOutcome::Succeeded), "schedule"),
                (t(11, 0, 0), Some(RunOutcome::SkippedMissed), "catchup"),
                (t(12, 0, 0), Some(RunOutcome::SkippedMissed), "catchup"),
                (t(13, 0, 0), Some(RunOutcome::SkippedMissed), "catchup"),
                (t(14, 0, 0), Some(RunOutcome::Succeeded), "catchup"),
            ]
        );
        // And the schedule goes on.
        r.sched.tick(t(15, 0, 0));
        assert_eq!(r.fake.started(), [t(14, 0, 0), t(15, 0, 0)]);
    }
}

#[test]
fn a_new_holder_records_the_interrupted_attempt_and_runs_the_occurrence_again() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(30);
    let mut first = rig_ttl(dir, r#"score = "0 0 * * * *""#, t(9, 59, 0), "first", ttl);
    first.sched.tick(t(10, 0, 0));
    assert_eq!(first.fake.started().len(), 1);
    // The first holder dies (no release); its lease expires after 30 s.
    let Rig {
        _dir: dir, sched, ..
    } = first;
    drop(sched);
    let mut second = rig_ttl(dir, r#"score = "0 0 * * * *""#, t(10, 0, 10), "second", ttl);
    second.sched.tick(t(10, 0, 10));
    assert!(
        second.fake.started().is_empty(),
        "the first lease is still live"
    );
    assert!(second.sched.token().is_none());
    second.sched.tick(t(10, 0, 41));
    assert_eq!(
        second.fake.started(),
        [t(10, 0, 0)],
        "run again under the new lease"
    );
    second.fake.end_latest(RunOutcome::Succeeded, false);
    second.sched.tick(t(10, 0, 42));
    let occ = &second.runs()[0];
    assert_eq!(occ.final_outcome, Some(RunOutcome::Succeeded));
    assert_eq!(occ.attempts.len(), 2);
    assert_eq!(occ.attempts[0].outcome, Some(RunOutcome::Crashed));
    assert!(
        occ.attempts[0]
            .message
            .as_deref()
            .unwrap()
            .starts_with("interrupted")
    );
    assert!(occ.attempts[1].fencing_token > occ.attempts[0].fencing_token);
}

#[test]
fn shutdown_stops_runs_without_a_final_outcome_so_they_run_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig_in(dir, r#"score = "0 0 * * * *""#, t(9, 59, 0), "first");
    r.sched.tick(t(10, 0, 0));
    r.sched.stop_all(false);
    r.sched.tick(t(10, 0, 1));
    assert!(r.sched.busy(), "a graceful stop lets it run");
    r.sched.stop_all(true);
    r.sched.tick(t(10, 0, 2));
    assert!(!r.sched.busy());
    r.sched.release();
    assert_eq!(r.runs()[0].final_outcome, None);
    assert_eq!(r.runs()[0].attempts[0].outcome, Some(RunOutcome::Cancelled));
    let Rig { _dir: dir, .. } = r;
    let mut next = rig_in(dir, r#"score = "0 0 * * * *""#, t(10, 5, 0), "second");
    next.sched.tick(t(10, 5, 0));
    assert_eq!(next.fake.started(), [t(10, 0, 0)]);
}

#[test]
fn a_train_and_a_score_occurrence_at_the_same_instant_run_the_train_first() {
    let mut r = rig(
        "score = \"0 * * * * *\"\ntrain = \"0 */2 * * * *\"",
        t(10, 1, 30),
    );
    r.sched.tick(t(10, 2, 0));
    let f = r.fake.0.lock().unwrap().started.clone();
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].kind, f[0].as_of), (RunKind::Train, t(10, 2, 0)));
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 2, 1));
    let got: Vec<_> = r.runs().iter().map(|o| (o.kind, o.final_outcome)).collect();
    assert!(
        got.contains(&(RunKind::Train, Some(RunOutcome::Succeeded))),
        "{got:?}"
    );
    assert!(
        got.contains(&(RunKind::Score, Some(RunOutcome::SkippedOverlap))),
        "{got:?}"
    );
}

#[test]
fn a_resumed_occurrence_keeps_the_attempts_it_used_but_gets_at_least_one_more() {
    let sched = "score = \"0 0 * * * *\"\n[schedule.retries]\nmax_attempts = 3\nbackoff = \"1m\"";
    let dir = tempfile::tempdir().unwrap();
    let mut r = rig_in(dir, sched, t(9, 59, 0), "first");
    r.sched.tick(t(10, 0, 0));
    r.fake.end_latest(RunOutcome::Failed, true);
    r.sched.tick(t(10, 0, 1));
    r.sched.tick(t(10, 1, 2));
    r.fake.end_latest(RunOutcome::Failed, true);
    r.sched.tick(t(10, 1, 3));
    // Two failed attempts; stopped while waiting for the third.
    r.sched.stop_all(true);
    r.sched.tick(t(10, 1, 4));
    r.sched.release();
    let Rig { _dir: dir, .. } = r;
    let mut next = rig_in(dir, sched, t(10, 5, 0), "second");
    next.sched.tick(t(10, 5, 0));
    assert_eq!(next.fake.started(), [t(10, 0, 0)], "resumed");
    next.fake.end_latest(RunOutcome::Failed, true);
    next.sched.tick(t(10, 5, 1));
    next.sched.tick(t(10, 30, 0));
    assert_eq!(next.fake.started().len(), 1, "no fourth attempt: 3 in all");
    let occ = &next.runs()[0];
    assert_eq!(occ.final_outcome, Some(RunOutcome::Failed));
    assert_eq!(occ.attempts.len(), 3);
}

#[test]
fn a_lease_not_renewed_in_time_stops_the_runs_and_a_regained_one_closes_them() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_secs(30);
    let mut r = rig_ttl(dir, r#"score = "0 0 * * * *""#, t(9, 59, 0), "only", ttl);
    r.sched.tick(t(10, 0, 0));
    assert_eq!(r.fake.started().len(), 1);
    // The daemon is paused for 40 s: past its lease.
    r.sched.tick(t(10, 0, 40));
    let stopped = r.fake.0.lock().unwrap().stopped.clone();
    assert_eq!(stopped, [(1, Stop::Cancel)], "its run is stopped");
    // It got the lease back (no one else wanted it): the stopped attempt is closed as
    // interrupted and the occurrence runs again, once.
    assert_eq!(r.fake.started(), [t(10, 0, 0), t(10, 0, 0)]);
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 0, 41));
    let occ = &r.runs()[0];
    assert_eq!(occ.final_outcome, Some(RunOutcome::Succeeded));
    let outs: Vec<_> = occ.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outs,
        [Some(RunOutcome::Crashed), Some(RunOutcome::Succeeded)]
    );
}

#[test]
fn a_score_at_the_instant_of_a_train_is_covered_even_with_cancel_previous() {
    let mut r = rig(
        "score = \"0 * * * * *\"\ntrain = \"0 */2 * * * *\"\noverlap = \"cancel_previous\"",
        t(10, 1, 30),
    );
    r.sched.tick(t(10, 2, 0));
    assert!(
        r.fake.0.lock().unwrap().stopped.is_empty(),
        "the train run is not cancelled"
    );
    r.fake.end_latest(RunOutcome::Succeeded, false);
    r.sched.tick(t(10, 2, 1));
    let got: Vec<_> = r.runs().iter().map(|o| (o.kind, o.final_outcome)).collect();
    assert!(
        got.contains(&(RunKind::Train, Some(RunOutcome::Succeeded))),
        "{got:?}"
    );
    assert!(
        got.contains(&(RunKind::Score, Some(RunOutcome::SkippedOverlap))),
        "{got:?}"
    );
}

#[test]
fn a_reload_right_after_a_fire_time_keeps_that_occurrence() {
    let mut r = rig(r#"score = "0 * * * * *""#, t(10, 0, 30));
    r.sched.tick(t(10, 0, 30));
    // The file changes (a new timeout) and is read just after 10:01, before the tick.
    let set = entry("score = \"0 * * * * *\"\ntimeout = \"1h\"");
    r.sched
        .set_jobs(&set, t(10, 1, 0) + TimeDelta::milliseconds(100));
    r.sched.tick(t(10, 1, 0) + TimeDelta::milliseconds(150));
    assert_eq!(r.fake.started(), [t(10, 1, 0)]);
}
