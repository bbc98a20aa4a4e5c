//! Scheduling tests. The "clock" is the explicit `after` instant passed to each call.

use std::collections::HashSet;
use std::time::Duration;

use super::*;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::{America::New_York, Europe::Berlin, Tz, UTC};
use cron::Schedule;

type Instant = DateTime<Utc>;

const HOURLY: &str = "0 0 * * * *";
const QUARTER: &str = "0 */15 * * * *";
const DAILY_0230: &str = "0 30 2 * * *";

fn sched(expr: &str) -> Schedule {
    expr.parse().unwrap()
}

fn utc(s: &str) -> Instant {
    s.parse().unwrap()
}

/// Whitespace-separated RFC 3339 instants.
fn ts(list: &str) -> Vec<Instant> {
    list.split_whitespace().map(utc).collect()
}

/// `n` instants from `start`, `step_min` minutes apart.
fn every(start: &str, step_min: i64, n: i64) -> Vec<Instant> {
    (0..n)
        .map(|i| utc(start) + TimeDelta::minutes(step_min * i))
        .collect()
}

/// Checks `next_fire` with the fake clock at each case's `after`: `"after -> want"`, where
/// `want` may be `none`.
fn check_next(expr: &str, tz: Tz, cases: &[&str]) {
    for case in cases {
        let (after, want) = case.split_once(" -> ").unwrap();
        let want = (want != "none").then(|| utc(want));
        let got = next_fire(&sched(expr), tz, utc(after));
        assert_eq!(got, want, "{expr} in {tz}: {case}");
    }
}

/// The runs in the window `"from .. to"` (from exclusive, to inclusive), after checking they
/// are strictly increasing (so none is duplicated) and that no local time fires twice.
fn runs(expr: &str, tz: Tz, window: &str) -> Vec<Instant> {
    let (from, to) = window.split_once(" .. ").unwrap();
    let got = occurrences(&sched(expr), tz, utc(from), utc(to), 10_000);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    let locals: HashSet<_> = got
        .iter()
        .map(|t| t.with_timezone(&tz).naive_local())
        .collect();
    assert_eq!(locals.len(), got.len(), "a local time fired twice");
    got
}

// ---- ordinary schedules -------------------------------------------------------------

#[test]
fn hourly_daily_and_seconds_in_utc() {
    check_next(
        HOURLY,
        UTC,
        &["2026-05-04T10:17:03Z -> 2026-05-04T11:00:00Z"],
    );
    check_next(
        DAILY_0230,
        UTC,
        &["2026-05-04T10:17:03Z -> 2026-05-05T02:30:00Z"],
    );
    let tens = runs(
        "*/10 * * * * *",
        UTC,
        "2026-05-04T10:17:03Z .. 2026-05-04T10:18:00Z",
    );
    let want = (1..=6).map(|i| utc("2026-05-04T10:17:00Z") + TimeDelta::seconds(10 * i));
    assert_eq!(tens, want.collect::<Vec<_>>());
}

#[test]
fn next_fire_is_strictly_after() {
    check_next(
        HOURLY,
        UTC,
        &[
            "2026-05-04T10:00:00Z -> 2026-05-04T11:00:00Z",
            "2026-05-04T09:59:59.999999999Z -> 2026-05-04T10:00:00Z",
            "2026-05-04T10:00:00.5Z -> 2026-05-04T11:00:00Z",
        ],
    );
    check_next(
        "*/10 * * * * *",
        UTC,
        &["2026-05-04T10:00:09.9Z -> 2026-05-04T10:00:10Z"],
    );
}

#[test]
fn ordinary_days_in_zones_use_the_local_clock() {
    // Summer: Berlin is UTC+2, New York UTC-4. Winter: UTC+1 and UTC-5.
    let berlin = [
        "2026-07-01T00:00:00Z -> 2026-07-01T00:30:00Z",
        "2026-01-15T00:00:00Z -> 2026-01-15T01:30:00Z",
    ];
    check_next(DAILY_0230, Berlin, &berlin);
    let new_york = [
        "2026-07-01T00:00:00Z -> 2026-07-01T06:30:00Z",
        "2026-01-15T00:00:00Z -> 2026-01-15T07:30:00Z",
    ];
    check_next(DAILY_0230, New_York, &new_york);
}

#[test]
fn agrees_with_cron_when_no_occurrence_is_in_a_gap_or_fold() {
    // The first crosses Berlin's fall-back, but never matches 02:xx.
    for (expr, tz) in [("0 17 */3 * * *", Berlin), ("0 */37 * * * *", New_York)] {
        let (s, start) = (sched(expr), utc("2026-04-01T00:00:00Z"));
        let ours: Vec<_> = fires(&s, tz, start).take(2000).collect();
        let cron_own = s.after(&start.with_timezone(&tz)).take(2000);
        let cron_own: Vec<_> = cron_own.map(|t| t.to_utc()).collect();
        assert_eq!(ours, cron_own, "{expr} in {tz}");
    }
}

#[test]
fn cron_own_iteration_differs_at_transitions() {
    // Why the policy is explicit: cron's zone-aware iterator skips the gap, repeats the fold.
    let s = sched(DAILY_0230);
    let cron_own = |after: &str, n| {
        let it = s.after(&utc(after).with_timezone(&Berlin)).take(n);
        it.map(|t| t.to_utc()).collect::<Vec<_>>()
    };
    let spring = ts("2026-03-30T00:30:00Z");
    assert_eq!(cron_own("2026-03-28T12:00:00Z", 1), spring);
    let fall = ts("2026-10-25T00:30:00Z 2026-10-25T01:30:00Z");
    assert_eq!(cron_own("2026-10-24T12:00:00Z", 2), fall);
}

#[test]
fn year_field() {
    let yearly = "0 0 12 1 1 * 2027";
    let cases = [
        "2026-06-01T00:00:00Z -> 2027-01-01T17:00:00Z",
        "2027-01-01T17:00:00Z -> none",
    ];
    check_next(yearly, New_York, &cases);
    let all = runs(yearly, UTC, "2020-01-01T00:00:00Z .. 2099-01-01T00:00:00Z");
    assert_eq!(all, ts("2027-01-01T12:00:00Z"));
}

// ---- Europe/Berlin: spring forward 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC) ------

/// Local day 2026-03-29: 2026-03-28T23:00Z to 2026-03-29T22:00Z, 23 hours.
const BER_SPRING: &str = "2026-03-28T22:59:59Z .. 2026-03-29T21:59:59Z";

#[test]
fn berlin_spring_daily_0230_runs_at_gap_end() {
    let got = runs(
        DAILY_0230,
        Berlin,
        "2026-03-27T12:00:00Z .. 2026-03-31T00:00:00Z",
    );
    let want = ts("2026-03-28T01:30:00Z 2026-03-29T01:00:00Z 2026-03-30T00:30:00Z");
    assert_eq!(got, want);
    let cases = [
        "2026-03-29T00:59:59Z -> 2026-03-29T01:00:00Z",
        "2026-03-29T01:00:00Z -> 2026-03-30T00:30:00Z",
    ];
    check_next(DAILY_0230, Berlin, &cases);
}

#[test]
fn berlin_spring_hourly() {
    // 00:00, 01:00 CET; 02:00 (gap) and 03:00 CEST share 01:00Z; 04:00-23:00 CEST: 23 runs.
    let want = every("2026-03-28T23:00:00Z", 60, 23);
    assert_eq!(runs(HOURLY, Berlin, BER_SPRING), want);
}

#[test]
fn berlin_spring_every_15_min() {
    // 02:00, 02:15, 02:30, 02:45 (gap) and 03:00 CEST all run once, at 01:00Z.
    let want = every("2026-03-28T23:00:00Z", 15, 92);
    assert_eq!(runs(QUARTER, Berlin, BER_SPRING), want);
    let cases = [
        "2026-03-29T00:45:00Z -> 2026-03-29T01:00:00Z",
        "2026-03-29T01:00:00Z -> 2026-03-29T01:15:00Z",
    ];
    check_next(QUARTER, Berlin, &cases);
}

// ---- Europe/Berlin: fall back 2026-10-25 03:00 CEST -> 02:00 CET (01:00 UTC) -----------

/// Local day 2026-10-25: 2026-10-24T22:00Z to 2026-10-25T23:00Z, 25 hours.
const BER_FALL: &str = "2026-10-24T21:59:59Z .. 2026-10-25T22:59:59Z";

#[test]
fn berlin_fall_daily_0230_runs_at_first_occurrence() {
    let got = runs(
        DAILY_0230,
        Berlin,
        "2026-10-23T12:00:00Z .. 2026-10-27T00:00:00Z",
    );
    let want = ts("2026-10-24T00:30:00Z 2026-10-25T00:30:00Z 2026-10-26T01:30:00Z");
    assert_eq!(got, want);
    // Fake clock in the repeated hour (02:10 CET): 02:30 already ran, at 02:30 CEST.
    check_next(
        DAILY_0230,
        Berlin,
        &["2026-10-25T01:10:00Z -> 2026-10-26T01:30:00Z"],
    );
}

#[test]
fn berlin_fall_hourly() {
    // 00:00-02:00 CEST; the repeated 02:00 (CET, 01:00Z) is silent; 03:00-23:00 CET: 24 runs.
    let want = [
        every("2026-10-24T22:00:00Z", 60, 3),
        every("2026-10-25T02:00:00Z", 60, 21),
    ];
    assert_eq!(runs(HOURLY, Berlin, BER_FALL), want.concat());
}

#[test]
fn berlin_fall_every_15_min() {
    // 00:00-02:45 CEST (12), nothing in the repeated hour, 03:00-23:45 CET (84).
    let want = [
        every("2026-10-24T22:00:00Z", 15, 12),
        every("2026-10-25T02:00:00Z", 15, 84),
    ];
    assert_eq!(runs(QUARTER, Berlin, BER_FALL), want.concat());
    let inside = [
        "2026-10-25T01:00:00Z -> 2026-10-25T02:00:00Z",
        "2026-10-25T01:10:00Z -> 2026-10-25T02:00:00Z",
        "2026-10-25T01:59:59Z -> 2026-10-25T02:00:00Z",
    ];
    check_next(QUARTER, Berlin, &inside);
}

#[test]
fn berlin_fall_every_20_seconds() {
    let got = runs(
        "*/20 * * * * *",
        Berlin,
        "2026-10-24T23:59:59Z .. 2026-10-25T02:00:00Z",
    );
    let want = [
        every("2026-10-25T00:00:00Z", 1, 60),
        every("2026-10-25T02:00:00Z", 1, 1),
    ];
    let got_minutes: Vec<_> = got.iter().step_by(3).copied().collect();
    assert_eq!((got.len(), got_minutes), (181, want.concat()));
    assert_eq!(got[179], utc("2026-10-25T00:59:40Z"));
}

// ---- America/New_York: spring forward 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC) ----

/// Local day 2026-03-08: 2026-03-08T05:00Z to 2026-03-09T04:00Z, 23 hours.
const NY_SPRING: &str = "2026-03-08T04:59:59Z .. 2026-03-09T03:59:59Z";

#[test]
fn new_york_spring() {
    let got = runs(
        DAILY_0230,
        New_York,
        "2026-03-07T00:00:00Z .. 2026-03-10T00:00:00Z",
    );
    let want = ts("2026-03-07T07:30:00Z 2026-03-08T07:00:00Z 2026-03-09T06:30:00Z");
    assert_eq!(got, want);
    let want = every("2026-03-08T05:00:00Z", 60, 23);
    assert_eq!(runs(HOURLY, New_York, NY_SPRING), want);
    let want = every("2026-03-08T05:00:00Z", 15, 92);
    assert_eq!(runs(QUARTER, New_York, NY_SPRING), want);
}

// ---- America/New_York: fall back 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC) ---------

/// Local day 2026-11-01: 2026-11-01T04:00Z to 2026-11-02T05:00Z, 25 hours.
const NY_FALL: &str = "2026-11-01T03:59:59Z .. 2026-11-02T04:59:59Z";

#[test]
fn new_york_fall_daily() {
    // 02:30 is not in New York's fold (01:00-01:59 repeats); 01:30 is.
    let window = "2026-10-31T00:00:00Z .. 2026-11-03T00:00:00Z";
    let want = ts("2026-10-31T06:30:00Z 2026-11-01T07:30:00Z 2026-11-02T07:30:00Z");
    assert_eq!(runs(DAILY_0230, New_York, window), want);
    let want = ts("2026-10-31T05:30:00Z 2026-11-01T05:30:00Z 2026-11-02T06:30:00Z");
    assert_eq!(runs("0 30 1 * * *", New_York, window), want);
}

#[test]
fn new_york_fall_hourly_and_every_15_min() {
    // 00:00, 01:00 EDT; the repeated 01:00 hour (EST, 06:00Z) is silent; 02:00-23:xx EST.
    let want = [
        every("2026-11-01T04:00:00Z", 60, 2),
        every("2026-11-01T07:00:00Z", 60, 22),
    ];
    assert_eq!(runs(HOURLY, New_York, NY_FALL), want.concat());
    let want = [
        every("2026-11-01T04:00:00Z", 15, 8),
        every("2026-11-01T07:00:00Z", 15, 88),
    ];
    assert_eq!(runs(QUARTER, New_York, NY_FALL), want.concat());
}

#[test]
fn half_hour_transition_zone() {
    // Australia/Lord_Howe on 2026-10-04: 02:00 (+10:30) -> 02:30 (+11:00) at 15:30Z.
    // 01:45 = 15:15Z; 02:00, 02:15 (gap) and 02:30 share 15:30Z; 02:45 = 15:45Z.
    let tz: Tz = "Australia/Lord_Howe".parse().unwrap();
    let got = runs(QUARTER, tz, "2026-10-03T15:00:00Z .. 2026-10-03T16:00:00Z");
    assert_eq!(got, every("2026-10-03T15:15:00Z", 15, 4));
}

// ---- occurrences --------------------------------------------------------------------

#[test]
fn occurrences_bounds_and_paging() {
    let s = sched("0 * * * * *");
    let (from, to) = (utc("2026-05-04T00:00:00Z"), utc("2026-05-04T01:00:00Z"));
    let all = occurrences(&s, UTC, from, to, usize::MAX);
    assert_eq!(all, every("2026-05-04T00:01:00Z", 1, 60)); // from exclusive, to inclusive
    assert_eq!(occurrences(&s, UTC, from, to, 10), all[..10]);
    assert!(occurrences(&s, UTC, from, to, 0).is_empty());
    assert!(occurrences(&s, UTC, to, from, 10).is_empty());
    // A full page may be truncated: resume from its last instant.
    let (mut paged, mut cursor) = (Vec::new(), from);
    loop {
        let page = occurrences(&s, UTC, cursor, to, 7);
        paged.extend_from_slice(&page);
        match page.last() {
            Some(&last) if page.len() == 7 => cursor = last,
            _ => break,
        }
    }
    assert_eq!(paged, all);
}

// ---- catch-up -----------------------------------------------------------------------

#[test]
fn catchup_policies() {
    let m = every("2026-05-04T00:00:00Z", 60, 5);
    let plan = |run: &[Instant], skipped: &[Instant]| CatchupPlan {
        run: run.to_vec(),
        skipped_missed: skipped.to_vec(),
    };
    assert_eq!(plan_catchup(&m, Catchup::None, 3), plan(&[], &m));
    assert_eq!(plan_catchup(&m, Catchup::Latest, 3), plan(&m[4..], &m[..4]));
    assert_eq!(plan_catchup(&m, Catchup::All, 3), plan(&m[2..], &m[..2]));
    assert_eq!(plan_catchup(&m, Catchup::All, 9), plan(&m, &[]));
    let shuffled = [m[3], m[0], m[4], m[2], m[1]];
    let sorted_plan = plan_catchup(&m, Catchup::All, 3);
    assert_eq!(plan_catchup(&shuffled, Catchup::All, 3), sorted_plan);
}

#[test]
fn catchup_partitions_every_missed_occurrence() {
    for n in 0..20 {
        let missed = every("2026-05-04T00:00:00Z", 15, n);
        for policy in [Catchup::None, Catchup::Latest, Catchup::All] {
            for limit in [0, 1, 2, 3, 5, 10, 19, 20, 1000, u32::MAX] {
                let p = plan_catchup(&missed, policy, limit);
                let ctx = format!("n={n} {policy:?} limit={limit}");
                // Skipped (older) then run (newer), both ascending: exactly the input.
                let merged = [&p.skipped_missed[..], &p.run[..]].concat();
                assert_eq!(merged, missed, "{ctx}");
                let want_run = match policy {
                    Catchup::None => 0,
                    Catchup::Latest => n.min(1),
                    Catchup::All => n.min(i64::from(limit)),
                };
                assert_eq!(p.run.len() as i64, want_run, "{ctx}");
            }
        }
    }
}

// ---- overlap ------------------------------------------------------------------------

#[test]
fn overlap_decisions() {
    use Overlap::*;
    use OverlapAction::*;
    for policy in [Skip, BufferOne, CancelPrevious] {
        assert_eq!(on_due(policy, false, false), Start);
        assert_eq!(on_due(policy, false, true), Start);
    }
    assert_eq!(on_due(Skip, true, false), SkipOverlap);
    assert_eq!(on_due(Skip, true, true), SkipOverlap);
    assert_eq!(on_due(BufferOne, true, false), Buffer);
    assert_eq!(on_due(BufferOne, true, true), SkipOverlap);
    assert_eq!(on_due(CancelPrevious, true, false), CancelPreviousThenStart);
    assert_eq!(on_due(CancelPrevious, true, true), CancelPreviousThenStart);
}

// ---- retries ------------------------------------------------------------------------

#[test]
fn retry_delay_doubles_and_caps() {
    let (b, cap) = (Duration::from_secs(30), Duration::from_secs(600));
    let got: Vec<u64> = (1..=8).map(|a| retry_delay(a, b, cap).as_secs()).collect();
    assert_eq!(got, [30, 60, 120, 240, 480, 600, 600, 600]);
    assert_eq!(retry_delay(0, b, cap), b);
    assert_eq!(retry_delay(u32::MAX, b, cap), cap);
    assert_eq!(retry_delay(3, Duration::from_secs(900), cap), cap);
    assert_eq!(retry_delay(u32::MAX, Duration::ZERO, cap), Duration::ZERO);
    // No overflow, even without a practical cap.
    let ns = Duration::from_nanos;
    assert_eq!(retry_delay(u32::MAX, ns(1), Duration::MAX), Duration::MAX);
    assert_eq!(retry_delay(64, ns(1), Duration::MAX), ns(1 << 63));
}
