//! Ledger tests. Each test uses its own temporary directory; instants are explicit.

use std::sync::{Arc, Barrier};
use std::thread;

use super::*;
use chrono::TimeZone;

const TTL: Duration = Duration::from_secs(60);

fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 29, h, m, 0).unwrap()
}

fn open() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path().join("ledger.sqlite")).unwrap();
    (dir, ledger)
}

#[test]
fn record_due_is_unique() {
    let (_dir, mut l) = open();
    assert!(l.record_due("churn", RunKind::Score, t(1, 0)).unwrap());
    assert!(!l.record_due("churn", RunKind::Score, t(1, 0)).unwrap());
    // A different kind or instant is a different occurrence.
    assert!(l.record_due("churn", RunKind::Train, t(1, 0)).unwrap());
    assert!(l.record_due("churn", RunKind::Score, t(2, 0)).unwrap());
    let n: i64 = l
        .conn
        .query_row("SELECT COUNT(*) FROM occurrences", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3);
    let occ = l
        .occurrence("churn", RunKind::Score, t(1, 0))
        .unwrap()
        .unwrap();
    assert_eq!(occ.final_outcome, None);
    assert!(occ.attempts.is_empty());
}

#[test]
fn exactly_one_final_outcome() {
    let (_dir, mut l) = open();
    let tok = l.acquire_lease("a", TTL, t(0, 0)).unwrap().unwrap();
    let at = t(1, 0);
    // Attempt 1 fails and will be retried: not final.
    let a1 = l
        .start_attempt("churn", RunKind::Score, at, tok, t(1, 0))
        .unwrap()
        .unwrap();
    assert_eq!(a1, 1);
    l.finish(
        "churn",
        RunKind::Score,
        at,
        a1,
        tok,
        RunOutcome::Failed,
        Some("boom"),
        false,
        t(1, 1),
    )
    .unwrap();
    // Finishing the same attempt twice is refused.
    let err = l
        .finish(
            "churn",
            RunKind::Score,
            at,
            a1,
            tok,
            RunOutcome::Failed,
            None,
            false,
            t(1, 1),
        )
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::AttemptFinished { attempt_no: 1, .. }),
        "{err}"
    );
    // Attempt 2 succeeds: final.
    let a2 = l
        .start_attempt("churn", RunKind::Score, at, tok, t(1, 2))
        .unwrap()
        .unwrap();
    assert_eq!(a2, 2);
    l.finish(
        "churn",
        RunKind::Score,
        at,
        a2,
        tok,
        RunOutcome::Succeeded,
        None,
        true,
        t(1, 3),
    )
    .unwrap();
    // A second final outcome is refused, and changes nothing.
    let err = l
        .finish(
            "churn",
            RunKind::Score,
            at,
            a2,
            tok,
            RunOutcome::Crashed,
            None,
            true,
            t(1, 4),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::AlreadyFinal {
                outcome: RunOutcome::Succeeded,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ledger.sqlite"), "{err}");
    let err = l
        .record_skip("churn", RunKind::Score, at, RunOutcome::SkippedMissed, tok)
        .unwrap_err();
    assert!(matches!(err, LedgerError::AlreadyFinal { .. }), "{err}");
    // No new attempt once final.
    assert_eq!(
        l.start_attempt("churn", RunKind::Score, at, tok, t(1, 5))
            .unwrap(),
        None
    );

    let occ = l.occurrence("churn", RunKind::Score, at).unwrap().unwrap();
    assert_eq!(occ.final_outcome, Some(RunOutcome::Succeeded));
    assert_eq!(occ.attempts.len(), 2);
    assert_eq!(occ.attempts[0].outcome, Some(RunOutcome::Failed));
    assert_eq!(occ.attempts[0].message.as_deref(), Some("boom"));
    assert_eq!(occ.attempts[0].finished_at, Some(t(1, 1)));
    assert_eq!(occ.attempts[1].started_at, t(1, 2));
    assert_eq!(occ.attempts[1].outcome, Some(RunOutcome::Succeeded));
}

#[test]
fn skips_are_final_without_attempts() {
    let (_dir, mut l) = open();
    let tok = l.acquire_lease("a", TTL, t(0, 0)).unwrap().unwrap();
    l.record_skip(
        "churn",
        RunKind::Score,
        t(1, 0),
        RunOutcome::SkippedOverlap,
        tok,
    )
    .unwrap();
    let err = l
        .record_skip("churn", RunKind::Score, t(2, 0), RunOutcome::Failed, tok)
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotASkip { .. }), "{err}");
    let occ = l
        .occurrence("churn", RunKind::Score, t(1, 0))
        .unwrap()
        .unwrap();
    assert_eq!(occ.final_outcome, Some(RunOutcome::SkippedOverlap));
    assert!(occ.attempts.is_empty());
    assert_eq!(
        l.occurrence("churn", RunKind::Score, t(2, 0)).unwrap(),
        None
    );
}

#[test]
fn fencing() {
    let (_dir, mut l) = open();
    let at = t(1, 0);
    assert_eq!(l.acquire_lease("a", TTL, t(1, 0)).unwrap(), Some(1));
    let a1 = l
        .start_attempt("churn", RunKind::Score, at, 1, t(1, 0))
        .unwrap()
        .unwrap();
    // B cannot take a live lease; A renewing keeps its token.
    assert_eq!(l.acquire_lease("b", TTL, t(1, 0)).unwrap(), None);
    assert_eq!(l.acquire_lease("a", TTL, t(1, 0)).unwrap(), Some(1));
    // The lease expires; B takes it over with token 2.
    let later = t(1, 5);
    assert_eq!(l.acquire_lease("b", TTL, later).unwrap(), Some(2));
    assert!(!l.renew_lease("a", 1, TTL, later).unwrap());
    let err = l
        .finish(
            "churn",
            RunKind::Score,
            at,
            a1,
            1,
            RunOutcome::Succeeded,
            None,
            true,
            later,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::Fenced {
                token: 1,
                current: Some(2),
                held: true,
                ..
            }
        ),
        "{err}"
    );
    let err = l
        .start_attempt("churn", RunKind::Score, at, 1, later)
        .unwrap_err();
    assert!(matches!(err, LedgerError::Fenced { .. }), "{err}");
    // B's finish works (B records A's orphaned attempt as crashed).
    l.finish(
        "churn",
        RunKind::Score,
        at,
        a1,
        2,
        RunOutcome::Crashed,
        Some("lease lost"),
        true,
        later,
    )
    .unwrap();
    assert!(l.renew_lease("b", 2, TTL, later).unwrap());
    // Released: A gets a new, higher token at once.
    assert!(!l.release_lease("a", 1).unwrap());
    assert!(l.release_lease("b", 2).unwrap());
    let err = l
        .record_skip(
            "churn",
            RunKind::Score,
            t(2, 0),
            RunOutcome::SkippedMissed,
            2,
        )
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Fenced { held: false, .. }),
        "{err}"
    );
    assert_eq!(l.acquire_lease("a", TTL, later).unwrap(), Some(3));
}

#[test]
fn unfenced_without_any_lease() {
    let (_dir, mut l) = open();
    let err = l
        .start_attempt("churn", RunKind::Train, t(1, 0), 1, t(1, 0))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Fenced { current: None, .. }),
        "{err}"
    );
}

#[test]
fn two_handles_race_for_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    Ledger::open(&path).unwrap();
    const ROUNDS: u32 = 50;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|holder| {
            let (path, barrier) = (path.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                let mut l = Ledger::open(&path).unwrap();
                (0..ROUNDS)
                    .map(|round| {
                        // Each round starts after the previous round's lease has expired.
                        let now = t(0, 0) + TimeDelta::hours(i64::from(round));
                        barrier.wait();
                        let got = l.acquire_lease(holder, TTL, now).unwrap();
                        barrier.wait();
                        got
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<Option<u64>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for round in 0..ROUNDS as usize {
        let winners: Vec<u64> = results.iter().filter_map(|r| r[round]).collect();
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        // A round's winner is a new holder (token + 1) unless it won the previous round
        // too, in which case it renewed its token.
        assert!(winners[0] <= round as u64 + 1, "round {round}: {winners:?}");
    }
    let tokens: Vec<u64> = (0..ROUNDS as usize)
        .map(|i| results[0][i].or(results[1][i]).unwrap())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] <= w[1]), "{tokens:?}");
}

#[test]
fn persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    {
        let mut l = Ledger::open(&path).unwrap();
        let tok = l.acquire_lease("a", TTL, t(0, 0)).unwrap().unwrap();
        let n = l
            .start_attempt("churn", RunKind::Score, t(1, 0), tok, t(1, 0))
            .unwrap()
            .unwrap();
        l.record_publication(
            "churn",
            RunKind::Score,
            t(1, 0),
            n,
            "pg",
            "published",
            Some(42),
            Some("public.scores"),
        )
        .unwrap();
        l.finish(
            "churn",
            RunKind::Score,
            t(1, 0),
            n,
            tok,
            RunOutcome::Succeeded,
            None,
            true,
            t(1, 1),
        )
        .unwrap();
    }
    let mut l = Ledger::open(&path).unwrap();
    let occ = l
        .occurrence("churn", RunKind::Score, t(1, 0))
        .unwrap()
        .unwrap();
    assert_eq!(occ.final_outcome, Some(RunOutcome::Succeeded));
    assert_eq!(
        occ.publications,
        vec![PublicationRecord {
            attempt_no: 1,
            sink: "pg".into(),
            status: "published".into(),
            rows: Some(42),
            location: Some("public.scores".into()),
        }]
    );
    // The lease survives too: another holder is refused while it is live, and the token
    // keeps counting up.
    assert_eq!(l.acquire_lease("b", TTL, t(0, 0)).unwrap(), None);
    assert_eq!(l.acquire_lease("b", TTL, t(2, 0)).unwrap(), Some(2));
    let err = l
        .record_publication(
            "churn",
            RunKind::Score,
            t(1, 0),
            9,
            "pg",
            "published",
            None,
            None,
        )
        .unwrap_err();
    assert!(matches!(err, LedgerError::NotFound { .. }), "{err}");
}

#[test]
fn queries() {
    let (_dir, mut l) = open();
    let tok = l.acquire_lease("a", TTL, t(0, 0)).unwrap().unwrap();
    for (h, outcome) in [
        (1, RunOutcome::Succeeded),
        (2, RunOutcome::Succeeded),
        (3, RunOutcome::TimedOut),
    ] {
        let n = l
            .start_attempt("churn", RunKind::Score, t(h, 0), tok, t(h, 0))
            .unwrap()
            .unwrap();
        l.finish(
            "churn",
            RunKind::Score,
            t(h, 0),
            n,
            tok,
            outcome,
            None,
            true,
            t(h, 1),
        )
        .unwrap();
    }
    l.record_skip(
        "churn",
        RunKind::Train,
        t(4, 0),
        RunOutcome::SkippedMissed,
        tok,
    )
    .unwrap();
    l.record_due("churn", RunKind::Score, t(5, 0)).unwrap();
    l.record_due("other", RunKind::Score, t(6, 0)).unwrap();

    let counts = l.outcome_counts().unwrap();
    let expected: BTreeMap<String, u64> =
        [("skipped_missed", 1), ("succeeded", 2), ("timed_out", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    assert_eq!(counts, expected);

    let runs = l.runs("churn", 3).unwrap();
    let got: Vec<_> = runs
        .iter()
        .map(|r| (r.scheduled_at, r.kind, r.final_outcome))
        .collect();
    assert_eq!(
        got,
        vec![
            (t(5, 0), RunKind::Score, None),
            (t(4, 0), RunKind::Train, Some(RunOutcome::SkippedMissed)),
            (t(3, 0), RunKind::Score, Some(RunOutcome::TimedOut)),
        ]
    );
    assert_eq!(runs[2].attempts.len(), 1);

    let candidates = [t(0, 0), t(1, 0), t(4, 0), t(5, 0), t(7, 0)];
    assert_eq!(
        l.missed_since("churn", RunKind::Score, &candidates)
            .unwrap(),
        vec![t(0, 0), t(4, 0), t(7, 0)]
    );
    assert_eq!(
        l.missed_since("churn", RunKind::Train, &candidates)
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn outcome_text_round_trips() {
    for o in RunOutcome::ALL {
        assert_eq!(o.as_str().parse::<RunOutcome>(), Ok(o));
    }
    assert_eq!(
        RunOutcome::InsufficientData.to_string(),
        "insufficient_data"
    );
    assert_eq!("score".parse::<RunKind>(), Ok(RunKind::Score));
}

#[test]
fn pending_origin_run_id_skips_in_bulk_and_counts_by_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(dir.path().join("ledger.sqlite")).unwrap();
    let tok = l
        .acquire_lease("a", Duration::from_secs(10), t(1, 0))
        .unwrap()
        .unwrap();
    // A manual run does not move the catch-up point.
    assert!(
        l.record_due_as("churn", RunKind::Score, t(1, 0), "schedule")
            .unwrap()
    );
    assert!(
        l.record_due_as("churn", RunKind::Score, t(5, 0), "manual")
            .unwrap()
    );
    assert_eq!(
        l.latest_scheduled("churn", RunKind::Score).unwrap(),
        Some(t(1, 0))
    );
    assert_eq!(l.latest_scheduled("churn", RunKind::Train).unwrap(), None);
    let no = l
        .start_attempt("churn", RunKind::Score, t(1, 0), tok, t(1, 1))
        .unwrap()
        .unwrap();
    l.set_run_id("churn", RunKind::Score, t(1, 0), no, "run-1")
        .unwrap();
    // Both are pending; the started one carries its run id.
    let p = l.pending().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].attempts[0].run_id.as_deref(), Some("run-1"));
    assert_eq!(p[1].origin, "manual");
    // Bulk skips: the already-final one is left alone, the count says what was written.
    l.finish(
        "churn",
        RunKind::Score,
        t(1, 0),
        no,
        tok,
        RunOutcome::Succeeded,
        None,
        true,
        t(1, 2),
    )
    .unwrap();
    let n = l
        .record_skips(
            "churn",
            RunKind::Score,
            &[t(1, 0), t(2, 0), t(3, 0)],
            RunOutcome::SkippedMissed,
            "catchup",
            tok,
        )
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        l.occurrence("churn", RunKind::Score, t(2, 0))
            .unwrap()
            .unwrap()
            .origin,
        "catchup"
    );
    assert!(matches!(
        l.record_skips(
            "churn",
            RunKind::Score,
            &[t(4, 0)],
            RunOutcome::Failed,
            "x",
            tok
        ),
        Err(LedgerError::NotASkip { .. })
    ));
    assert!(matches!(
        l.record_skips(
            "churn",
            RunKind::Score,
            &[t(4, 0)],
            RunOutcome::SkippedMissed,
            "x",
            tok + 1
        ),
        Err(LedgerError::Fenced { .. })
    ));
    let by = l.outcome_counts_by_job().unwrap();
    assert_eq!(
        by,
        vec![
            (
                "churn".to_owned(),
                RunKind::Score,
                RunOutcome::SkippedMissed,
                2
            ),
            ("churn".to_owned(), RunKind::Score, RunOutcome::Succeeded, 1),
        ]
    );
    assert_eq!(l.pending().unwrap().len(), 1);
    assert_eq!(l.lease_holder().unwrap().map(|h| h.1), Some(tok));
}
