//! The scheduler: one loop that, on every tick, keeps the lease, starts the occurrences
//! that fell due, watches the running attempts and records every outcome in the ledger.
//!
//! It reads no clock: [`Scheduler::tick`] takes the instant. The daemon calls it a few
//! times a second with the wall clock; tests call it with a fake one.
//!
//! Per job there is at most one attempt at a time (a score run and a train run of the same
//! job would write the same registry). What happens to an occurrence that falls due while
//! the job is busy is the job's `overlap` policy ([`crate::schedule::on_due`]); "busy"
//! includes waiting for a retry and catch-up runs still queued.
//!
//! Only the lease holder writes outcomes. A daemon that cannot get the lease serves the API
//! and tries again every third of the lease's time-to-live; when it gets it, it *takes
//! over*: attempts the previous holder left unfinished are recorded as `crashed`
//! (interrupted), their occurrences and every other occurrence without a final outcome are
//! run again, and occurrences missed while no daemon ran are caught up with each job's
//! `catchup` policy.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use propensity_core::ScheduleSpec;

use crate::jobs::{JobEntry, JobSet};
use crate::ledger::{Ledger, LedgerError, RunKind, RunOutcome};
use crate::runner::{Launcher, RunRequest, RunResult, Stop};
use crate::schedule::{OverlapAction, next_fire, occurrences, on_due, plan_catchup, retry_delay};
use crate::shared::{RunningView, Shared};

/// Missed occurrences are enumerated this many at a time after a downtime (a
/// once-a-second schedule down for a day has 86 400).
const MISSED_CHUNK: usize = 10_000;

/// The newest missed occurrences the catch-up policy chooses from (`catchup_limit` is at
/// most 1 000); older ones are `skipped_missed` whatever the policy.
const PLAN_WINDOW: usize = 1_000;

/// How often occurrences recorded by others (a trigger through the API of any daemon on
/// this state directory) are picked up.
const PENDING_POLL: TimeDelta = TimeDelta::seconds(1);

/// How the message of an attempt a stopped daemon left unfinished starts.
const INTERRUPTED: &str = "interrupted:";

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub state: PathBuf,
    /// Who this daemon is in the lease (`host:pid:start`).
    pub holder: String,
    pub lease_ttl: Duration,
    /// Fire cron occurrences and catch up after downtime (the daemon). Off, the scheduler
    /// only runs the occurrences already in the ledger without an outcome (a backfill).
    pub fire: bool,
}

#[derive(Debug, Clone)]
struct Due {
    kind: RunKind,
    at: DateTime<Utc>,
    origin: String,
    /// Attempts this daemon started for it.
    tries: u32,
    /// Attempts that could not even start (no process: out of descriptors, memory, PIDs).
    /// They use up no retry: the occurrence is tried again, up to [`MAX_LAUNCH_FAILURES`].
    launch_failures: u32,
}

/// Launch failures (the run never started) an occurrence survives before it fails for good.
const MAX_LAUNCH_FAILURES: u32 = 10;

/// How the ledger message of an attempt that could not start begins.
const NOT_STARTED: &str = "the run could not start";

/// The wait before starting again after a launch failure.
const LAUNCH_RETRY: TimeDelta = TimeDelta::seconds(5);

#[derive(Debug)]
enum Active<H> {
    Running {
        due: Due,
        attempt: i64,
        handle: H,
        stopping: Option<Stop>,
    },
    Retrying {
        due: Due,
        at: DateTime<Utc>,
    },
}

impl<H> Active<H> {
    fn due(&self) -> &Due {
        match self {
            Active::Running { due, .. } | Active::Retrying { due, .. } => due,
        }
    }
}

#[derive(Debug)]
struct JobState<H> {
    entry: JobEntry,
    /// Next fire per kind: `[score, train]`.
    next: [Option<DateTime<Utc>>; 2],
    active: Option<Active<H>>,
    buffered: Option<Due>,
    queue: VecDeque<Due>,
    /// The file is gone: no new occurrences; kept until its attempt ends.
    removed: bool,
}

fn idx(k: RunKind) -> usize {
    match k {
        RunKind::Score => 0,
        RunKind::Train => 1,
    }
}

fn cron_of(s: &ScheduleSpec, k: RunKind) -> Option<&cron::Schedule> {
    match k {
        RunKind::Score => Some(&s.score.schedule),
        RunKind::Train => s.train.as_ref().map(|t| &t.schedule),
    }
}

fn to_std(s: propensity_core::Span) -> Duration {
    s.as_duration()
}

/// The scheduler. See the [module docs](self).
#[derive(Debug)]
pub struct Scheduler<L: Launcher> {
    cfg: SchedulerConfig,
    ledger: Ledger,
    launcher: L,
    shared: Arc<Shared>,
    token: Option<u64>,
    last_lease: Option<DateTime<Utc>>,
    /// Until when this daemon's lease is known to hold (its last acquire or renewal + TTL).
    lease_until: Option<DateTime<Utc>>,
    last_pending: Option<DateTime<Utc>>,
    jobs: BTreeMap<String, JobState<L::Handle>>,
    stopping: bool,
}

impl<L: Launcher> Scheduler<L>
where
    L::Handle: std::fmt::Debug,
{
    pub fn new(cfg: SchedulerConfig, ledger: Ledger, launcher: L, shared: Arc<Shared>) -> Self {
        Scheduler {
            cfg,
            ledger,
            launcher,
            shared,
            token: None,
            last_lease: None,
            lease_until: None,
            last_pending: None,
            jobs: BTreeMap::new(),
            stopping: false,
        }
    }

    /// The fencing token, while this daemon holds the lease.
    pub fn token(&self) -> Option<u64> {
        self.token
    }

    /// Whether nothing is running, waiting for a retry or queued.
    pub fn idle(&self) -> bool {
        self.jobs
            .values()
            .all(|j| j.active.is_none() && j.queue.is_empty() && j.buffered.is_none())
    }

    /// Whether any attempt is running.
    pub fn busy(&self) -> bool {
        self.jobs
            .values()
            .any(|j| matches!(j.active, Some(Active::Running { .. })))
    }

    /// Replaces the job set after a scan of the jobs directory.
    pub fn set_jobs(&mut self, set: &JobSet, now: DateTime<Utc>) {
        for (name, st) in self.jobs.iter_mut() {
            if !set.jobs.contains_key(name) && !st.removed {
                tracing::warn!(job = %name, file = %st.entry.file.display(), "job removed: no new runs; a running attempt finishes; queued occurrences stay pending");
                st.removed = true;
                st.queue.clear();
                st.buffered = None;
                st.next = [None, None];
            }
        }
        for (name, entry) in &set.jobs {
            let changed = match self.jobs.get(name) {
                Some(st) => st.removed || st.entry.text != entry.text,
                None => true,
            };
            if !changed {
                continue;
            }
            let next = next_fires(entry, now);
            match self.jobs.get_mut(name) {
                Some(st) => {
                    tracing::info!(job = %name, file = %entry.file.display(), "job reloaded");
                    st.entry = entry.clone();
                    // An occurrence that fell due before the change was seen still runs.
                    let removed = st.removed;
                    for (cur, new) in st.next.iter_mut().zip(next) {
                        *cur = match (*cur, new) {
                            (Some(old), Some(_)) if old <= now && !removed => Some(old),
                            (_, new) => new,
                        };
                    }
                    st.removed = false;
                }
                None => {
                    tracing::info!(job = %name, file = %entry.file.display(), "job loaded");
                    self.jobs.insert(
                        name.clone(),
                        JobState {
                            entry: entry.clone(),
                            next,
                            active: None,
                            buffered: None,
                            queue: VecDeque::new(),
                            removed: false,
                        },
                    );
                    if self.token.is_some() {
                        self.catch_up(name, now);
                    }
                }
            }
        }
        for b in &set.broken {
            for p in &b.problems {
                tracing::error!(file = %b.file.display(), "broken job file, skipped: {p}");
            }
        }
        self.publish_view();
    }

    /// One step: keep the lease, start what is due, watch running attempts.
    pub fn tick(&mut self, now: DateTime<Utc>) {
        self.keep_lease(now);
        if self.token.is_some() {
            if !self.stopping && self.cfg.fire {
                self.poll_pending(now);
                let names: Vec<String> = self.jobs.keys().cloned().collect();
                for name in &names {
                    self.fire_due(name, now);
                }
            }
            let names: Vec<String> = self.jobs.keys().cloned().collect();
            for name in &names {
                self.poll_active(name, now);
                if !self.stopping {
                    self.start_next(name, now);
                }
            }
            self.jobs.retain(|_, j| !(j.removed && j.active.is_none()));
        }
        self.publish_view();
    }

    /// Shutting down: start nothing new; stop running attempts (recorded `cancelled`, not
    /// final, so they run again at the next start) once `force` is set.
    pub fn stop_all(&mut self, force: bool) {
        self.stopping = true;
        if !force {
            return;
        }
        for j in self.jobs.values_mut() {
            if let Some(Active::Running {
                handle, stopping, ..
            }) = &mut j.active
                && stopping.is_none()
            {
                self.launcher.stop(handle, Stop::Shutdown);
                *stopping = Some(Stop::Shutdown);
            }
        }
    }

    /// Releases the lease (at the end of a clean shutdown).
    pub fn release(&mut self) {
        if let Some(tok) = self.token.take() {
            match self.ledger.release_lease(&self.cfg.holder, tok) {
                Ok(_) => tracing::info!(token = tok, "lease released"),
                Err(e) => tracing::error!("cannot release the lease: {e}"),
            }
        }
        self.shared.set_leader(false, None);
    }

    fn keep_lease(&mut self, now: DateTime<Utc>) {
        let ttl = TimeDelta::from_std(self.cfg.lease_ttl).unwrap_or(TimeDelta::seconds(15));
        // A lease that could not be renewed in time may be another daemon's by now: stop
        // before that daemon runs the same occurrences.
        if self.token.is_some() && self.lease_until.is_some_and(|u| now >= u) {
            tracing::error!(
                "the lease could not be renewed before it expired: stopping this daemon's runs and scheduling"
            );
            self.lose_lease();
        }
        let every = TimeDelta::from_std(self.cfg.lease_ttl / 3).unwrap_or(TimeDelta::seconds(1));
        if self.last_lease.is_some_and(|t| now - t < every) {
            return;
        }
        self.last_lease = Some(now);
        match self.token {
            Some(tok) => {
                match self
                    .ledger
                    .renew_lease(&self.cfg.holder, tok, self.cfg.lease_ttl, now)
                {
                    Ok(true) => self.lease_until = Some(now + ttl),
                    Ok(false) => {
                        tracing::error!(
                            token = tok,
                            "lost the lease to another daemon: stopping this daemon's runs and scheduling"
                        );
                        self.lose_lease();
                    }
                    Err(e) => tracing::error!("cannot renew the lease: {e}"),
                }
            }
            None => {
                if self.stopping {
                    return;
                }
                match self
                    .ledger
                    .acquire_lease(&self.cfg.holder, self.cfg.lease_ttl, now)
                {
                    Ok(Some(tok)) => {
                        tracing::info!(token = tok, holder = %self.cfg.holder, "lease acquired: this daemon schedules");
                        self.token = Some(tok);
                        self.lease_until = Some(now + ttl);
                        self.shared.set_leader(true, Some(tok));
                        self.take_over(now);
                    }
                    Ok(None) => {
                        if let Ok(Some((h, _, until))) = self.ledger.lease_holder() {
                            tracing::debug!(holder = %h, until = %until, "another daemon holds the lease; standing by");
                        }
                    }
                    Err(e) => tracing::error!("cannot acquire the lease: {e}"),
                }
            }
        }
    }

    fn lose_lease(&mut self) {
        self.token = None;
        self.lease_until = None;
        self.shared.set_leader(false, None);
        for j in self.jobs.values_mut() {
            if let Some(Active::Running { handle, .. }) = &mut j.active {
                self.launcher.stop(handle, Stop::Cancel);
            }
            j.active = None;
            j.queue.clear();
            j.buffered = None;
        }
    }

    fn fenced(&mut self, e: &LedgerError) {
        if matches!(e, LedgerError::Fenced { .. }) {
            tracing::error!("{e}: another daemon holds the lease now");
            self.lose_lease();
        } else {
            tracing::error!("{e}");
        }
    }

    /// Resume what a previous holder left without an outcome, then catch up.
    fn take_over(&mut self, now: DateTime<Utc>) {
        if self.token.is_none() {
            return;
        }
        // A standby fired nothing: its fire times start now (what it missed is the
        // catch-up's, and a time already in the ledger is not fired again).
        let from = now - TimeDelta::microseconds(1);
        for st in self.jobs.values_mut() {
            st.next = next_fires(&st.entry, from);
        }
        let pending = match self.ledger.pending() {
            Ok(p) => p,
            Err(e) => return self.fenced(&e),
        };
        for occ in pending {
            // Nothing runs under this lease yet: every unfinished attempt is interrupted
            // (also one of this daemon's own, if it lost the lease and got it back).
            if !self.close_interrupted(&occ, true, now) {
                return;
            }
            let Some(st) = self.jobs.get_mut(&occ.job) else {
                tracing::warn!(job = %occ.job, kind = %occ.kind, at = %occ.scheduled_at, "an occurrence without an outcome belongs to a job that is not loaded; it stays pending");
                continue;
            };
            if known(st, occ.kind, occ.scheduled_at) {
                continue;
            }
            let due = resumed(&occ, &st.entry);
            st.queue.push_back(due);
        }
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for n in names {
            self.catch_up(&n, now);
        }
        self.last_pending = Some(now);
    }

    /// Records the attempts of `occ` that an earlier lease holder left unfinished as
    /// `crashed` ("interrupted"): those with an older token, or with `all` every unfinished
    /// one. Returns `false` when the lease is gone.
    fn close_interrupted(
        &mut self,
        occ: &crate::ledger::OccurrenceRecord,
        all: bool,
        now: DateTime<Utc>,
    ) -> bool {
        let Some(tok) = self.token else { return false };
        for a in occ
            .attempts
            .iter()
            .filter(|a| a.outcome.is_none() && (all || a.fencing_token < tok))
        {
            let msg = format!(
                "{INTERRUPTED} the daemon running this attempt (fencing token {}) stopped before it ended; the occurrence runs again",
                a.fencing_token
            );
            if let Err(e) = self.ledger.finish(
                &occ.job,
                occ.kind,
                occ.scheduled_at,
                a.attempt_no,
                tok,
                RunOutcome::Crashed,
                Some(&msg),
                false,
                now,
            ) {
                self.fenced(&e);
                return self.token.is_some();
            }
            tracing::warn!(job = %occ.job, kind = %occ.kind, at = %occ.scheduled_at, attempt = a.attempt_no, "{msg}");
        }
        true
    }

    /// Records or queues the occurrences of `name` missed since its latest one in the
    /// ledger, by its `catchup` policy.
    fn catch_up(&mut self, name: &str, now: DateTime<Utc>) {
        let Some(tok) = self.token else { return };
        if !self.cfg.fire {
            return;
        }
        let Some(st) = self.jobs.get(name) else {
            return;
        };
        let Some(sched) = st.entry.job.schedule.clone() else {
            return;
        };
        for kind in [RunKind::Score, RunKind::Train] {
            let Some(cron) = cron_of(&sched, kind) else {
                continue;
            };
            let last = match self.ledger.latest_scheduled(name, kind) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => return self.fenced(&e),
            };
            // Enumerated in chunks, so a long downtime of a frequent schedule is recorded
            // whole; only the newest `PLAN_WINDOW` are planned (catchup_limit <= 1000), the
            // older ones are `skipped_missed` as they are found.
            let mut from = last;
            let mut missed: Vec<DateTime<Utc>> = Vec::new();
            let mut skipped_early = 0usize;
            loop {
                let chunk = occurrences(cron, sched.timezone, from, now, MISSED_CHUNK);
                let full = chunk.len() == MISSED_CHUNK;
                if let Some(&l) = chunk.last() {
                    from = l;
                }
                match self.ledger.missed_since(name, kind, &chunk) {
                    Ok(m) => missed.extend(m),
                    Err(e) => return self.fenced(&e),
                }
                if missed.len() > PLAN_WINDOW {
                    let old: Vec<_> = missed.drain(..missed.len() - PLAN_WINDOW).collect();
                    skipped_early += old.len();
                    if let Err(e) = self.ledger.record_skips(
                        name,
                        kind,
                        &old,
                        RunOutcome::SkippedMissed,
                        "catchup",
                        tok,
                    ) {
                        return self.fenced(&e);
                    }
                }
                if !full {
                    break;
                }
            }
            if skipped_early > 0 {
                tracing::warn!(job = %name, kind = %kind, skipped_early, "a long downtime: the oldest missed occurrences were recorded as skipped_missed");
            }
            if missed.is_empty() {
                continue;
            }
            let plan = plan_catchup(&missed, sched.catchup, sched.catchup_limit);
            if let Err(e) = self.ledger.record_skips(
                name,
                kind,
                &plan.skipped_missed,
                RunOutcome::SkippedMissed,
                "catchup",
                tok,
            ) {
                return self.fenced(&e);
            }
            tracing::info!(job = %name, kind = %kind, missed = missed.len(), run = plan.run.len(), skipped = plan.skipped_missed.len(), policy = ?sched.catchup, "caught up after downtime");
            for at in plan.run {
                if let Err(e) = self.ledger.record_due_as(name, kind, at, "catchup") {
                    return self.fenced(&e);
                }
                if let Some(st) = self.jobs.get_mut(name) {
                    st.queue.push_back(Due {
                        kind,
                        at,
                        origin: "catchup".into(),
                        tries: 0,
                        launch_failures: 0,
                    });
                }
            }
        }
        // Oldest first; at the same instant the train run first (it scores too).
        if let Some(st) = self.jobs.get_mut(name) {
            st.queue
                .make_contiguous()
                .sort_by_key(|d| (d.at, d.kind != RunKind::Train));
        }
    }

    /// Occurrences recorded by someone else (a trigger through the API) join their job's
    /// queue.
    fn poll_pending(&mut self, now: DateTime<Utc>) {
        if self.last_pending.is_some_and(|t| now - t < PENDING_POLL) {
            return;
        }
        self.last_pending = Some(now);
        self.apply_cancels(now);
        let pending = match self.ledger.pending() {
            Ok(p) => p,
            Err(e) => return self.fenced(&e),
        };
        let tok = self.token.unwrap_or(0);
        for occ in pending {
            let Some(st) = self.jobs.get(&occ.job) else {
                continue;
            };
            if st.removed
                || known(st, occ.kind, occ.scheduled_at)
                || occ
                    .attempts
                    .iter()
                    .any(|a| a.outcome.is_none() && a.fencing_token >= tok)
            {
                continue;
            }
            if !self.close_interrupted(&occ, false, now) {
                return;
            }
            let Some(st) = self.jobs.get_mut(&occ.job) else {
                continue;
            };
            tracing::info!(job = %occ.job, kind = %occ.kind, at = %occ.scheduled_at, origin = %occ.origin, "queued");
            let due = resumed(&occ, &st.entry);
            st.queue.push_back(due);
        }
    }

    fn fire_due(&mut self, name: &str, now: DateTime<Utc>) {
        loop {
            let Some(st) = self.jobs.get_mut(name) else {
                return;
            };
            let Some(sched) = st.entry.job.schedule.clone() else {
                return;
            };
            let Some((kind, at)) = [RunKind::Score, RunKind::Train]
                .into_iter()
                .filter_map(|k| st.next[idx(k)].map(|t| (k, t)))
                .filter(|&(_, t)| t <= now)
                // At the same instant the train run goes first: it scores too.
                .min_by_key(|&(k, t)| (t, k != RunKind::Train))
            else {
                return;
            };
            st.next[idx(kind)] =
                cron_of(&sched, kind).and_then(|c| next_fire(c, sched.timezone, at));
            let new = match self.ledger.record_due_as(name, kind, at, "schedule") {
                Ok(new) => new,
                Err(e) => {
                    // Not recorded: it falls due again at the next tick.
                    if let Some(st) = self.jobs.get_mut(name) {
                        st.next[idx(kind)] = Some(at);
                    }
                    return self.fenced(&e);
                }
            };
            if !new {
                // Already in the ledger (resumed, caught up or triggered): handled there.
                continue;
            }
            let Some(st) = self.jobs.get_mut(name) else {
                return;
            };
            let due = Due {
                kind,
                at,
                origin: "schedule".into(),
                tries: 0,
                launch_failures: 0,
            };
            let busy = st.active.is_some() || !st.queue.is_empty();
            // A score occurrence at the instant of a train occurrence of the same job is
            // covered by the train run, whatever the overlap policy.
            let covered = kind == RunKind::Score && known(st, RunKind::Train, at);
            let action = if covered {
                OverlapAction::SkipOverlap
            } else {
                on_due(sched.overlap, busy, st.buffered.is_some())
            };
            match action {
                OverlapAction::Start => st.queue.push_back(due),
                OverlapAction::SkipOverlap => {
                    let Some(tok) = self.token else { return };
                    tracing::info!(job = %name, kind = %kind, at = %at, "skipped: the previous run of the job is still going (overlap = {:?})", sched.overlap);
                    if let Err(e) =
                        self.ledger
                            .record_skip(name, kind, at, RunOutcome::SkippedOverlap, tok)
                    {
                        return self.fenced(&e);
                    }
                }
                OverlapAction::Buffer => st.buffered = Some(due),
                OverlapAction::CancelPreviousThenStart => {
                    match &mut st.active {
                        Some(Active::Running {
                            handle, stopping, ..
                        }) => {
                            self.launcher.stop(handle, Stop::Cancel);
                            *stopping = Some(Stop::Cancel);
                        }
                        Some(Active::Retrying { .. }) => {
                            // A failed attempt waiting for its retry: that failure is final.
                            if let Some(Active::Retrying { due: old, .. }) = st.active.take() {
                                self.cancel_waiting(name, &old, now);
                            }
                        }
                        None => {}
                    }
                    let Some(st) = self.jobs.get_mut(name) else {
                        return;
                    };
                    // Queued catch-up runs are older: the new occurrence replaces them too.
                    let dropped: Vec<Due> = st.queue.drain(..).collect();
                    st.buffered = Some(due);
                    for d in dropped {
                        self.cancel_waiting(name, &d, now);
                    }
                }
            }
        }
    }

    /// Cancels what the API asked to cancel: a running attempt is stopped (and ends
    /// `cancelled`, not retried); a queued, buffered or retry-waiting occurrence, or one not
    /// yet picked up, ends `cancelled` without running.
    fn apply_cancels(&mut self, now: DateTime<Utc>) {
        let requests = match self.ledger.cancel_requests() {
            Ok(r) => r,
            Err(e) => return self.fenced(&e),
        };
        const WHY: &str = "not run: cancelled through the API";
        for (name, kind, at) in requests {
            let same = |d: &Due| d.kind == kind && d.at == at;
            let Some(st) = self.jobs.get_mut(&name) else {
                continue;
            };
            match &mut st.active {
                Some(Active::Running {
                    due,
                    handle,
                    stopping,
                    ..
                }) if same(due) => {
                    if stopping.is_none() {
                        tracing::info!(job = %name, kind = %kind, at = %at, "cancelling the running attempt (API)");
                        self.launcher.stop(handle, Stop::Cancel);
                        *stopping = Some(Stop::Cancel);
                    }
                    continue;
                }
                Some(Active::Retrying { due, .. }) if same(due) => {
                    if let Some(Active::Retrying { due, .. }) = st.active.take() {
                        self.cancel_with(&name, &due, now, WHY);
                    }
                    continue;
                }
                _ => {}
            }
            let due = if let Some(i) = st.queue.iter().position(same) {
                st.queue.remove(i)
            } else if st.buffered.as_ref().is_some_and(same) {
                st.buffered.take()
            } else {
                None
            };
            let due = due.unwrap_or(Due {
                kind,
                at,
                origin: "manual".into(),
                tries: 0,
                launch_failures: 0,
            });
            tracing::info!(job = %name, kind = %kind, at = %at, "cancelled before it ran (API)");
            self.cancel_with(&name, &due, now, WHY);
        }
    }

    /// An occurrence that was waiting for a retry, or queued and never started, is
    /// replaced by a newer one (`overlap = "cancel_previous"`): it ends `cancelled`, with
    /// an attempt that records why.
    fn cancel_waiting(&mut self, name: &str, due: &Due, now: DateTime<Utc>) {
        self.cancel_with(
            name,
            due,
            now,
            "not run: a newer occurrence replaced it (`overlap = \"cancel_previous\"`)",
        );
    }

    fn cancel_with(&mut self, name: &str, due: &Due, now: DateTime<Utc>, why: &str) {
        let Some(tok) = self.token else { return };
        match self.ledger.start_attempt(name, due.kind, due.at, tok, now) {
            Ok(Some(no)) => {
                if let Err(e) = self.ledger.finish(
                    name,
                    due.kind,
                    due.at,
                    no,
                    tok,
                    RunOutcome::Cancelled,
                    Some(why),
                    true,
                    now,
                ) {
                    self.fenced(&e);
                }
            }
            Ok(None) => {}
            Err(e) => self.fenced(&e),
        }
    }

    fn poll_active(&mut self, name: &str, now: DateTime<Utc>) {
        let Some(st) = self.jobs.get_mut(name) else {
            return;
        };
        let Some(Active::Running { handle, .. }) = &mut st.active else {
            return;
        };
        let Some(result) = self.launcher.poll(handle) else {
            return;
        };
        let Some(Active::Running {
            due,
            attempt,
            stopping,
            ..
        }) = st.active.take()
        else {
            return;
        };
        let sched = st.entry.job.schedule.clone();
        self.record_result(name, due, attempt, stopping, result, sched.as_ref(), now);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_result(
        &mut self,
        name: &str,
        due: Due,
        attempt: i64,
        stopping: Option<Stop>,
        r: RunResult,
        sched: Option<&ScheduleSpec>,
        now: DateTime<Utc>,
    ) {
        let Some(tok) = self.token else { return };
        if let Some(rep) = &r.report {
            if let Err(e) = self
                .ledger
                .set_run_id(name, due.kind, due.at, attempt, &rep.run_id)
            {
                tracing::error!("{e}");
            }
            for p in &rep.publications {
                if let Err(e) = self.ledger.record_publication(
                    name,
                    due.kind,
                    due.at,
                    attempt,
                    &p.sink,
                    p.status.as_str(),
                    Some(p.rows as u64),
                    Some(&p.location),
                ) {
                    tracing::error!("{e}");
                }
            }
        }
        self.shared.metrics.record(name, &r);
        let max_attempts = sched.map_or(1, |s| s.retries.max_attempts);
        let retry = r.retryable && due.tries < max_attempts && stopping.is_none();
        // A run stopped by a shutdown runs again at the next start.
        let final_ = !retry && stopping != Some(Stop::Shutdown);
        let msg = r.message.as_deref();
        if let Err(e) = self.ledger.finish(
            name, due.kind, due.at, attempt, tok, r.outcome, msg, final_, now,
        ) {
            return self.fenced(&e);
        }
        let level_ok = matches!(
            r.outcome,
            RunOutcome::Succeeded | RunOutcome::InsufficientData
        );
        if level_ok {
            tracing::info!(job = %name, kind = %due.kind, at = %due.at, attempt, outcome = %r.outcome, "run ended");
        } else {
            tracing::warn!(job = %name, kind = %due.kind, at = %due.at, attempt, outcome = %r.outcome, retry, log = ?r.log, "run ended: {}", msg.unwrap_or(""));
        }
        if retry
            && let Some(s) = sched
            && let Some(st) = self.jobs.get_mut(name)
        {
            let delay = retry_delay(
                due.tries,
                to_std(s.retries.backoff),
                to_std(s.retries.max_backoff),
            );
            let at = now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX);
            tracing::info!(job = %name, kind = %due.kind, at = %due.at, retry_at = %at, "retrying");
            st.active = Some(Active::Retrying { due, at });
        }
    }

    fn start_next(&mut self, name: &str, now: DateTime<Utc>) {
        let Some(st) = self.jobs.get_mut(name) else {
            return;
        };
        let due = match &st.active {
            Some(Active::Running { .. }) => return,
            Some(Active::Retrying { at, .. }) if *at > now => return,
            Some(Active::Retrying { .. }) => match st.active.take() {
                Some(Active::Retrying { due, .. }) => due,
                _ => return,
            },
            None => match st.queue.pop_front().or_else(|| st.buffered.take()) {
                Some(d) => d,
                None => return,
            },
        };
        if st.removed {
            return;
        }
        let Some(tok) = self.token else { return };
        let attempt = match self.ledger.start_attempt(name, due.kind, due.at, tok, now) {
            Ok(Some(a)) => a,
            Ok(None) => {
                tracing::debug!(job = %name, kind = %due.kind, at = %due.at, "already has an outcome");
                return;
            }
            Err(e) => return self.fenced(&e),
        };
        let Some(st) = self.jobs.get_mut(name) else {
            return;
        };
        let sched = st.entry.job.schedule.clone();
        let req = RunRequest {
            job: name.to_owned(),
            file: st.entry.file.clone(),
            kind: due.kind,
            as_of: due.at,
            attempt_no: attempt,
            state: self.cfg.state.clone(),
            timeout: sched.as_ref().and_then(|s| s.timeout).map(to_std),
            max_memory: sched.as_ref().and_then(|s| s.max_memory),
            fencing_token: self.token,
        };
        let mut due = due;
        due.tries += 1;
        tracing::debug!(job = %name, kind = %due.kind, at = %due.at, origin = %due.origin, attempt, "starting");
        match self.launcher.start(&req) {
            Ok(handle) => {
                if let Some(st) = self.jobs.get_mut(name) {
                    st.active = Some(Active::Running {
                        due,
                        attempt,
                        handle,
                        stopping: None,
                    });
                }
            }
            Err(msg) if due.launch_failures < MAX_LAUNCH_FAILURES => {
                // The run never started (a resource error): not a failure of the job, so it
                // uses up no retry; the occurrence waits and is started again.
                due.tries -= 1;
                due.launch_failures += 1;
                let Some(tok) = self.token else { return };
                tracing::warn!(job = %name, kind = %due.kind, at = %due.at, attempt, "the run could not start ({msg}); starting it again in {}s", LAUNCH_RETRY.num_seconds());
                let why = format!("{NOT_STARTED}: {msg}");
                if let Err(e) = self.ledger.finish(
                    name,
                    due.kind,
                    due.at,
                    attempt,
                    tok,
                    RunOutcome::Failed,
                    Some(&why),
                    false,
                    now,
                ) {
                    return self.fenced(&e);
                }
                if let Some(st) = self.jobs.get_mut(name) {
                    st.active = Some(Active::Retrying {
                        due,
                        at: now + LAUNCH_RETRY,
                    });
                }
            }
            Err(msg) => {
                let r = RunResult {
                    outcome: RunOutcome::Failed,
                    retryable: true,
                    message: Some(msg),
                    report: None,
                    log: None,
                };
                self.record_result(name, due, attempt, None, r, sched.as_ref(), now);
            }
        }
    }

    fn publish_view(&self) {
        let mut running = BTreeMap::new();
        let mut next = BTreeMap::new();
        let mut queued = 0usize;
        for (name, j) in &self.jobs {
            next.insert(name.clone(), j.next);
            queued += j.queue.len() + usize::from(j.buffered.is_some());
            if let Some(a) = &j.active {
                let d = a.due();
                running.insert(
                    name.clone(),
                    RunningView {
                        kind: d.kind,
                        scheduled_at: d.at,
                        state: match a {
                            Active::Running { .. } => "running",
                            Active::Retrying { .. } => "waiting_for_retry",
                        },
                    },
                );
            }
        }
        self.shared.set_schedule(next, running, queued);
    }
}

fn next_fires(entry: &JobEntry, now: DateTime<Utc>) -> [Option<DateTime<Utc>>; 2] {
    match &entry.job.schedule {
        None => [None, None],
        Some(s) => [RunKind::Score, RunKind::Train]
            .map(|k| cron_of(s, k).and_then(|c| next_fire(c, s.timezone, now))),
    }
}

/// An occurrence without a final outcome, to run again. Attempts that ended by themselves
/// (failed, crashed, timed out) count against `max_attempts`; attempts a stopping daemon cut
/// short (interrupted, cancelled at shutdown) do not. It always gets at least one attempt.
fn resumed(occ: &crate::ledger::OccurrenceRecord, entry: &JobEntry) -> Due {
    let max = entry
        .job
        .schedule
        .as_ref()
        .map_or(1, |s| s.retries.max_attempts);
    let counted = occ
        .attempts
        .iter()
        .filter(|a| match a.outcome {
            None | Some(RunOutcome::Cancelled) => false,
            Some(RunOutcome::Crashed) => !a
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with(INTERRUPTED)),
            Some(RunOutcome::Failed) => !a
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with(NOT_STARTED)),
            Some(_) => true,
        })
        .count();
    Due {
        kind: occ.kind,
        at: occ.scheduled_at,
        origin: occ.origin.clone(),
        tries: u32::try_from(counted)
            .unwrap_or(u32::MAX)
            .min(max.saturating_sub(1)),
        launch_failures: 0,
    }
}

fn known<H>(st: &JobState<H>, kind: RunKind, at: DateTime<Utc>) -> bool {
    let is = |d: &Due| d.kind == kind && d.at == at;
    st.active.as_ref().is_some_and(|a| is(a.due()))
        || st.buffered.as_ref().is_some_and(is)
        || st.queue.iter().any(is)
}

#[cfg(test)]
mod tests;
