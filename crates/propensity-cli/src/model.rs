//! `propensity run`, `propensity explain` and `propensity demo`: the model half of a run.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use propensity_core::Domain;
use propensity_runtime::report::{PublicationStatus, RunReport};
use propensity_runtime::{Progress, RunError, RunOptions};

use crate::data::load_job;
use crate::{CliError, OutputFormat, io_error};

/// Stage progress on stderr: a bar per stage on a terminal, one line per stage otherwise.
struct StageProgress {
    bars: bool,
    current: Mutex<Option<ProgressBar>>,
}

impl StageProgress {
    fn new() -> Self {
        StageProgress {
            bars: std::io::stderr().is_terminal(),
            current: Mutex::new(None),
        }
    }
}

impl Progress for StageProgress {
    fn begin(&self, stage: &str, total: Option<u64>) {
        if !self.bars {
            eprintln!("stage={stage} status=started");
            return;
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix:>9} {spinner} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_prefix(stage.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        if let Ok(mut c) = self.current.lock() {
            *c = Some(bar);
        }
    }

    fn advance(&self, done: u64) {
        if let Ok(c) = self.current.lock()
            && let Some(b) = c.as_ref()
        {
            b.set_position(done);
        }
    }

    fn end(&self, stage: &str, seconds: f64, summary: &str) {
        if let Ok(mut c) = self.current.lock()
            && let Some(b) = c.take()
        {
            b.finish_and_clear();
        }
        if self.bars {
            eprintln!("{stage:>9} {seconds:>6.1} s  {summary}");
        } else {
            eprintln!("stage={stage} status=done seconds={seconds:.2} summary={summary:?}");
        }
    }

    fn warn(&self, message: &str) {
        let pause = self.current.lock().ok().and_then(|c| c.clone());
        match pause {
            Some(b) => b.suspend(|| eprintln!("warning: {message}")),
            None => eprintln!("warning: {message}"),
        }
    }
}

fn run_error(e: RunError) -> CliError {
    CliError {
        domain: e.domain,
        error: anyhow::anyhow!("{e}"),
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} %", x * 100.0)
    } else {
        "n/a".into()
    }
}

fn thousands(n: usize) -> String {
    crate::data::n(n as u64)
}

/// The run summary for people.
pub fn write_summary(
    r: &RunReport,
    report_path: &Path,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    writeln!(out, "run {} of {} (as of {})", r.run_id, r.job, r.as_of)?;
    writeln!(
        out,
        "model       {} {} — {}",
        r.algorithm, r.model_version, r.training.message
    )?;
    let f3 = |v: Option<f64>| v.map_or("n/a".into(), |a| format!("{a:.3}"));
    if let Some(e) = &r.expected {
        writeln!(
            out,
            "expected    on the next {}: AUC {} · lift@10% {} · base rate {} (from the calibrated probabilities)",
            r.card.window,
            f3(e.auc),
            e.lift_at_10.map_or("n/a".into(), |l| format!("{l:.2}")),
            pct(e.base_rate)
        )?;
    }
    if let Some(m) = &r.card.metrics {
        if m.measurable {
            writeln!(
                out,
                "validated   AUC {} · PR-AUC {} · lift@10% {} · calibration error {:.3} · grade {} ({} cutoff)",
                f3(m.auc),
                f3(m.pr_auc),
                m.lift_at_10.map_or("n/a".into(), |l| format!("{l:.2}")),
                m.expected_calibration_error,
                r.card.quality.grade,
                r.card.protocol.as_ref().map_or(
                    "validation",
                    |p| if p.kind.starts_with("purged") {
                        "out-of-time validation"
                    } else {
                        "in-time validation"
                    }
                )
            )?;
        } else {
            writeln!(
                out,
                "validated   too few positives to measure: {} positives and {} negatives on the validation cutoff (at least {} of each are needed)",
                thousands(m.positives),
                thousands(m.negatives),
                propensity_model::pipeline::MIN_MEASURABLE
            )?;
        }
        writeln!(
            out,
            "base rate   {} on the validation cutoff ({} profiles); mean probability now {}",
            pct(m.base_rate),
            thousands(r.card.validation.rows),
            pct(r.mean_probability)
        )?;
    }
    writeln!(
        out,
        "scored      {} profiles · confidence {}",
        thousands(r.scored),
        r.confidence
    )?;
    let b: Vec<String> = r
        .buckets
        .iter()
        .map(|b| {
            format!(
                "{} {} (mean {})",
                b.bucket,
                thousands(b.profiles),
                pct(b.mean_probability)
            )
        })
        .collect();
    writeln!(out, "buckets     {}", b.join(" · "))?;
    if !r.card.importance.is_empty() {
        writeln!(out, "top factors (share of all reasons, validation cutoff)")?;
        for (i, f) in r.card.importance.iter().take(5).enumerate() {
            writeln!(out, "  {}. {} ({})", i + 1, f.label, pct(f.share))?;
        }
    }
    for w in &r.warnings {
        writeln!(out, "warning     {w}")?;
    }
    if let Some(o) = r.outputs.iter().find(|o| o.kind == "scores") {
        writeln!(out, "scores      {}", o.location)?;
    }
    if !r.segments.is_empty() {
        let s: Vec<String> = r
            .segments
            .iter()
            .map(|s| {
                if s.holdout > 0 {
                    format!(
                        "{} {} (+{} held out)",
                        s.name,
                        thousands(s.profiles),
                        thousands(s.holdout)
                    )
                } else {
                    format!("{} {}", s.name, thousands(s.profiles))
                }
            })
            .collect();
        writeln!(out, "segments    {}", s.join(" · "))?;
    }
    for p in &r.publications {
        match p.status {
            PublicationStatus::Failed => {
                writeln!(out, "FAILED      {} ({}): {}", p.sink, p.kind, p.message)?
            }
            PublicationStatus::Unchanged => writeln!(
                out,
                "unchanged   {} → {} (already current)",
                p.sink, p.location
            )?,
            PublicationStatus::Stale => writeln!(out, "stale       {}: {}", p.sink, p.message)?,
            _ => writeln!(
                out,
                "published   {} → {} ({} rows)",
                p.sink,
                p.location,
                thousands(p.rows)
            )?,
        }
    }
    writeln!(out, "report      {}", report_path.display())
}

/// Started by a daemon under a lease: the check that the lease is still the one the run was
/// started under, at each sink's commit point (a daemon paused past its lease must not
/// publish over the run of the daemon that took over).
fn lease_fence() -> Option<propensity_runtime::Fence> {
    use propensity_daemon::runner::{FENCE_LEDGER_ENV, FENCE_TOKEN_ENV};
    let ledger = std::path::PathBuf::from(std::env::var_os(FENCE_LEDGER_ENV)?);
    let token: u64 = std::env::var(FENCE_TOKEN_ENV).ok()?.parse().ok()?;
    Some(propensity_runtime::Fence(std::sync::Arc::new(move || {
        let l = propensity_daemon::ledger::Ledger::open(&ledger)
            .map_err(|e| format!("cannot check the daemon's lease: {e}"))?;
        match l.lease_holder().map_err(|e| e.to_string())? {
            Some((_, t, expires)) if t == token && expires > Utc::now() => Ok(()),
            Some((holder, t, _)) if t != token => Err(format!(
                "the daemon's lease passed from fencing token {token} to {t} ({holder}) while this run was going; the new holder runs the occurrence"
            )),
            _ => Err(format!(
                "the daemon's lease (fencing token {token}) expired while this run was going"
            )),
        }
    })))
}

/// `propensity run`'s switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFlags {
    /// `--train`.
    pub train: bool,
    /// `--publish-stale`.
    pub publish_stale: bool,
}

pub fn run(
    job_path: &Path,
    as_of: Option<DateTime<Utc>>,
    flags: RunFlags,
    state: &Path,
    format: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    // Started by a daemon: stop when it is gone.
    propensity_common::process::watch_parent();
    let (job, dir) = load_job(job_path, err)?;
    let mut opts = RunOptions::new(
        as_of.unwrap_or_else(Utc::now),
        flags.train,
        state.to_path_buf(),
    );
    opts.job_file = Some(job_path.to_path_buf());
    opts.publish_stale = flags.publish_stale;
    opts.fence = lease_fence();
    let progress = StageProgress::new();
    let s = propensity_runtime::run(&job, &dir, &opts, &progress).map_err(run_error)?;
    let w = match format {
        OutputFormat::Text => write_summary(&s.report, &s.report_path, out),
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&s.report).unwrap_or_default()
        ),
    };
    w.map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))?;
    if s.failed_sinks.is_empty() {
        Ok(0)
    } else {
        let _ = writeln!(
            err,
            "error: {} of {} sinks failed (the scores and the report are written; the other sinks published):\n  - {}",
            s.failed_sinks.len(),
            s.report.publications.len(),
            s.failed_sinks.join("\n  - ")
        );
        Ok(Domain::External.exit_code())
    }
}

pub fn forget(
    profile_ids: &[String],
    jobs: &[PathBuf],
    state: &Path,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let env = propensity_common::process_env();
    let r =
        propensity_runtime::erasure::forget(state, jobs, profile_ids, &env).map_err(run_error)?;
    let w = match format {
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&r).unwrap_or_default()
        ),
        OutputFormat::Text => (|| {
            writeln!(
                out,
                "{} profile(s) suppressed for every later run ({} new) · {}",
                r.profiles,
                r.newly_suppressed,
                state.join("suppressed.jsonl").display()
            )?;
            for j in &r.jobs {
                writeln!(
                    out,
                    "job {} ({}): {} run file(s) rewritten",
                    j.job, j.job_file, j.state_files_rewritten
                )?;
                for s in &j.sinks {
                    if s.status == propensity_runtime::erasure::ErasureStatus::Failed {
                        writeln!(out, "  {:<16} {:<8} FAILED: {}", s.sink, s.kind, s.message)?;
                    } else {
                        writeln!(
                            out,
                            "  {:<16} {:<8} {} row(s) removed",
                            s.sink, s.kind, s.removed
                        )?;
                    }
                }
            }
            for s in &r.skipped {
                writeln!(out, "skipped     {s}")?;
            }
            Ok(())
        })(),
    };
    w.map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))?;
    Ok(if r.failed() {
        Domain::External.exit_code()
    } else {
        0
    })
}

pub fn replay(
    job_path: &Path,
    state: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let (job, dir) = load_job(job_path, err)?;
    let env = propensity_common::process_env();
    let r = propensity_runtime::erasure::replay(&job, &dir, state, &env).map_err(run_error)?;
    let mut left = 0;
    for s in &r {
        left += s.kept;
        writeln!(
            out,
            "{}: {} batch(es) delivered, {} still kept{}",
            s.sink,
            s.delivered,
            s.kept,
            if s.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.message)
            }
        )
        .map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))?;
    }
    Ok(if left == 0 {
        0
    } else {
        Domain::External.exit_code()
    })
}

pub fn explain(
    job_path: &Path,
    profile_id: &str,
    state: &Path,
    format: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let (job, _) = load_job(job_path, err)?;
    let (latest, p) = propensity_runtime::explain(state, &job, profile_id).map_err(run_error)?;
    let w = match format {
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"run_id": latest.run_id, "score": p}))
                .unwrap_or_default()
        ),
        OutputFormat::Text => (|| {
            writeln!(
                out,
                "profile {} · {} · as of {} · model {} (run {})",
                p.profile_id, p.job, p.as_of, p.model_version, latest.run_id
            )?;
            writeln!(
                out,
                "probability {} · score {} · percentile {} · bucket {} · confidence {}",
                pct(p.probability),
                p.score,
                p.percentile,
                p.bucket,
                p.confidence
            )?;
            if !p.segments.is_empty() {
                let held: Vec<String> = p
                    .segments
                    .iter()
                    .map(|s| {
                        if p.holdout.contains(s) {
                            format!("{s} (held out)")
                        } else {
                            s.clone()
                        }
                    })
                    .collect();
                writeln!(out, "segments {}", held.join(", "))?;
            }
            if p.factors.is_empty() {
                writeln!(out, "no factor moved this profile's score")?;
            } else {
                writeln!(
                    out,
                    "reasons (contribution in log-odds; + raises the score):"
                )?;
            }
            for f in &p.factors {
                let value = f.value.map_or("missing".into(), |v| {
                    if v.fract() == 0.0 && v.abs() < 1e15 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    }
                });
                writeln!(
                    out,
                    "  {} {:<48} = {:<10} {:+.3}  {}",
                    if f.contribution > 0.0 { "↑" } else { "↓" },
                    f.label,
                    value,
                    f.contribution,
                    f.importance
                )?;
            }
            Ok(())
        })(),
    };
    w.map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))?;
    Ok(0)
}

/// The example job, embedded so `propensity demo` runs anywhere.
const DEMO_JOB: &str = include_str!("../../../jobs/conversion-purchase-30d.toml");

/// Generates sample data under `dir`, writes the example job next to it, trains, scores and
/// prints the summary.
pub fn demo(
    dir: &Path,
    profiles: usize,
    state: Option<&Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc());
    let end = today.ok_or_else(|| io_error(anyhow::anyhow!("no clock")))?;
    let args = crate::GenerateArgs {
        out: dir.to_path_buf(),
        profiles,
        events: None,
        days: Some(450),
        seed: 42,
        end: Some(end),
        ndjson: false,
        rows_per_file: 1_000_000,
        row_group_size: 131_072,
        shape: crate::Shape::Experience,
    };
    crate::data::generate(&args, out)?;
    // The job reads `../data/demo/…` from `jobs/`; next to the data it reads `./…`.
    let job_text = DEMO_JOB.replace("../data/demo/", "./");
    let job_path = dir.join("conversion-purchase-30d.toml");
    propensity_runtime::registry::write_file_atomic(&job_path, job_text.as_bytes()).map_err(
        |e| {
            io_error(anyhow::anyhow!(
                "cannot write `{}`: {e}",
                job_path.display()
            ))
        },
    )?;
    let state: PathBuf = state.map_or_else(|| dir.join("state"), Path::to_path_buf);
    let _ = writeln!(
        out,
        "job: {} (as of {})",
        job_path.display(),
        end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    run(
        &job_path,
        Some(end),
        RunFlags {
            train: true,
            publish_stale: false,
        },
        &state,
        OutputFormat::Text,
        out,
        err,
    )
}
