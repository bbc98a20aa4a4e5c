//! `propensity dry-run` and `propensity generate`: the commands over the data half of a run.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use propensity_core::{Domain, Job};
use propensity_engine::checks::DataCheckReport;
use propensity_engine::generate::{EventFormat, GenerateOptions};
use propensity_engine::{Engine, EngineError, EngineOptions};
use serde_json::json;

use crate::{CliError, OutputFormat, io_error, user};

/// Parses `--as-of` / `--end`: RFC 3339, or a date (midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(d.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(format!(
        "`{s}` is not a time: write 2026-11-29 or 2026-11-29T03:00:00Z"
    ))
}

/// Reads and validates a job file; problems are printed as `validate` prints them.
pub fn load_job(path: &Path, err: &mut dyn Write) -> Result<(Job, PathBuf), CliError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| user(anyhow::anyhow!("cannot read `{shown}`: {e}")))?;
    match propensity_config::load_str(&text, &shown) {
        Ok(job) => {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            Ok((job, dir))
        }
        Err(diags) => {
            for d in &diags {
                let _ = writeln!(err, "{d}");
            }
            Err(user(anyhow::anyhow!(
                "`{shown}` is not a valid job ({} problem(s)); see `propensity validate`",
                diags.len()
            )))
        }
    }
}

pub fn engine_error(e: EngineError) -> CliError {
    let mut msg = e.message.clone();
    if let Some(h) = &e.hint {
        msg.push_str("\n  hint: ");
        msg.push_str(h);
    }
    CliError {
        domain: e.domain,
        error: anyhow::anyhow!(msg),
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError {
            domain: Domain::Internal,
            error: anyhow::anyhow!("cannot start the runtime: {e}"),
        })
}

pub fn dry_run(
    job_path: &Path,
    as_of: Option<DateTime<Utc>>,
    format: OutputFormat,
    report_path: Option<&Path>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let (job, dir) = load_job(job_path, err)?;
    let as_of = as_of.unwrap_or_else(Utc::now);
    let mut opts = EngineOptions::from_job(&job, &dir).map_err(engine_error)?;
    opts.plugin_dirs = crate::plugins::dirs(None);
    let rt = runtime()?;
    let loaded = rt.block_on(async {
        let engine = Engine::new(opts)?;
        engine.load(&job, &dir, as_of).await
    });
    let loaded = loaded.map_err(engine_error)?;
    let spec = &loaded.features;
    let report = &loaded.report;
    if let Some(p) = report_path {
        let text = serde_json::to_string_pretty(report).unwrap_or_default() + "\n";
        propensity_runtime::registry::write_file_atomic(p, text.as_bytes())
            .map_err(|e| io_error(anyhow::anyhow!("cannot write `{}`: {e}", p.display())))?;
    }
    let w = |r: std::io::Result<()>| {
        r.map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))
    };
    match format {
        OutputFormat::Json => {
            let doc = json!({ "data_checks": report, "features": spec.catalogue.features });
            w(writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            ))?;
        }
        OutputFormat::Text => w(write_text(report, &spec.catalogue, out))?,
    }
    Ok(if report.passed {
        0
    } else {
        Domain::User.exit_code()
    })
}

pub fn features(
    job_path: &Path,
    as_of: Option<DateTime<Utc>>,
    snapshots: Option<u32>,
    file: &Path,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let (mut job, dir) = load_job(job_path, err)?;
    if let Some(k) = snapshots {
        job.model.snapshots = k.min(52);
    }
    let as_of = as_of.unwrap_or_else(Utc::now);
    let mut opts = EngineOptions::from_job(&job, &dir).map_err(engine_error)?;
    opts.plugin_dirs = crate::plugins::dirs(None);
    let rt = runtime()?;
    let loaded = rt
        .block_on(async { Engine::new(opts)?.load(&job, &dir, as_of).await })
        .map_err(engine_error)?;
    if !loaded.report.passed {
        let msgs: Vec<String> = loaded
            .report
            .problems
            .iter()
            .map(|f| format!("{}\n  hint: {}", f.message, f.hint))
            .collect();
        return Err(user(anyhow::anyhow!(
            "the data checks failed:\n{}",
            msgs.join("\n")
        )));
    }
    let t = std::time::Instant::now();
    let spec = &loaded.features;
    let dataset = loaded.dataset().map_err(engine_error)?;
    let compute = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let rows = dataset
        .write_parquet(&spec.catalogue, &loaded.store, file)
        .map_err(|e| io_error(anyhow::anyhow!("cannot write `{}`: {e}", file.display())))?;
    let write = t.elapsed().as_secs_f64();
    let mut timings: Vec<(&str, f64)> = loaded.timings.clone();
    timings.push(("features", compute));
    timings.push(("write", write));
    let doc = json!({
        "rows": rows,
        "cutoffs": dataset.training.len() + 1,
        "features": spec.len(),
        "events_kept": loaded.report.events.counts.events_kept,
        "profiles": loaded.store.profiles(),
        "seconds": timings.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "out": file.display().to_string(),
    });
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )
    .map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))?;
    Ok(0)
}

/// `1234567` → `1,234,567`.
pub(crate) fn n(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn write_text(
    r: &DataCheckReport,
    catalogue: &propensity_engine::Catalogue,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let e = &r.events;
    let c = &e.counts;
    writeln!(out, "dry-run: {} as of {}", r.job, r.as_of)?;
    writeln!(out)?;
    writeln!(
        out,
        "events      {} ({}, {} file{})",
        e.source,
        e.format,
        e.files,
        if e.files == 1 { "" } else { "s" }
    )?;
    writeln!(out, "  rows read              {}", n(c.rows_read))?;
    writeln!(
        out,
        "  kept                   {} events of {} profiles",
        n(c.events_kept),
        n(c.profiles)
    )?;
    writeln!(
        out,
        "  invalid, set aside     {} ({:.2} %, limit {:.2} %): {} without profile id, {} without timestamp, {} unparseable timestamp, {} without event type, {} in the future",
        n(c.invalid()),
        e.invalid_fraction * 100.0,
        e.max_invalid_fraction * 100.0,
        n(c.null_profile_id),
        n(c.null_timestamp),
        n(c.unparseable_timestamp),
        n(c.null_event_type),
        n(c.future_events)
    )?;
    if c.unusable_profile_id > 0 {
        writeln!(
            out,
            "  unusable profile ids   {} (over 1024 bytes or with control characters, e.g. {})",
            n(c.unusable_profile_id),
            c.unusable_profile_id_examples.join(", ")
        )?;
    }
    writeln!(out, "  excluded by the job    {}", n(c.excluded_events))?;
    if c.duplicate_events > 0 {
        writeln!(
            out,
            "  duplicates removed     {} (identical in every field read; source.events.dedupe = true)",
            n(c.duplicate_events)
        )?;
    } else {
        writeln!(
            out,
            "  identical events       {} (kept: each row is an event unless source.events.dedupe = true)",
            n(c.identical_events)
        )?;
    }
    if !c.numeric_fields_found.is_empty() {
        writeln!(
            out,
            "  numeric fields         {} (found in the events; features.numeric_fields chooses them, `[]` for none)",
            c.numeric_fields_found.join(", ")
        )?;
    }
    writeln!(
        out,
        "  outside the run        {} older than needed, {} at or after the as-of time",
        n(c.before_horizon),
        n(c.after_as_of)
    )?;
    for u in &c.unconvertible_values {
        writeln!(
            out,
            "  not a number           {} of {} values of `{}`",
            n(u.unconvertible),
            n(u.present),
            u.field
        )?;
    }
    let h = &r.history;
    writeln!(
        out,
        "  history                {} .. {}; needed from {} ({:.0} of {:.0} days covered)",
        h.first_event.as_deref().unwrap_or("-"),
        h.last_event.as_deref().unwrap_or("-"),
        h.needed_from,
        h.covered_days,
        h.needed_days
    )?;
    let types: Vec<String> = c
        .event_types
        .iter()
        .take(12)
        .map(|(t, k)| format!("{t} {}", n(*k)))
        .collect();
    writeln!(
        out,
        "  event types            {}{}",
        types.join(", "),
        if c.event_types.len() > 12 {
            ", …"
        } else {
            ""
        }
    )?;
    if let Some(p) = &r.profiles {
        writeln!(
            out,
            "profiles    {}: {} rows, {} profiles matched, {} without a row, attributes: {}",
            p.source.as_deref().unwrap_or("-"),
            n(p.rows_read),
            n(p.matched),
            n(p.without_row),
            p.attributes.join(", ")
        )?;
    }
    if !r.cutoffs.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<22} {:>10} {:>10} {:>10} {:>8}",
            "training cutoff", "eligible", "positives", "negatives", "rate"
        )?;
        for row in &r.cutoffs {
            let k = row.counts;
            let rate = if k.eligible > 0 {
                k.positives as f64 / k.eligible as f64 * 100.0
            } else {
                0.0
            };
            writeln!(
                out,
                "{:<22} {:>10} {:>10} {:>10} {:>7.1}%",
                row.cutoff,
                n(k.eligible),
                n(k.positives),
                n(k.negatives),
                rate
            )?;
        }
        writeln!(
            out,
            "{:<22} {:>10}",
            format!("{} (scoring)", &r.as_of[..10]),
            n(r.scoring_eligible)
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "features    {} (point-in-time, from events before each cutoff)",
        catalogue.len()
    )?;
    if let Some(s) = &r.sufficiency {
        writeln!(out, "verdict     {}", s.verdict)?;
        if !s.suggestions.is_empty() {
            writeln!(
                out,
                "suggestions (counts over the training cutoffs with the change applied):"
            )?;
            for g in &s.suggestions {
                writeln!(
                    out,
                    "  {:<48} {} positives, {} negatives{}  ({})",
                    g.change,
                    n(g.positives),
                    n(g.negatives),
                    if g.sufficient {
                        ", enough"
                    } else {
                        ", still short"
                    },
                    g.note
                )?;
            }
        }
    }
    for f in &r.problems {
        writeln!(out, "error[{}]: {}\n  hint: {}", f.code, f.message, f.hint)?;
    }
    for f in &r.warnings {
        writeln!(
            out,
            "warning[{}]: {}\n  hint: {}",
            f.code, f.message, f.hint
        )?;
    }
    writeln!(
        out,
        "data checks {}",
        if r.passed { "passed" } else { "FAILED" }
    )?;
    Ok(())
}

pub fn generate(a: &crate::GenerateArgs, out: &mut dyn Write) -> Result<i32, CliError> {
    let end = a.end.unwrap_or_else(|| {
        let now = Utc::now();
        now.date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(now, |t| t.and_utc())
    });
    let mut opts = GenerateOptions::new(&a.out, a.profiles, end);
    opts.days = a.days.unwrap_or(match a.shape {
        crate::Shape::Experience => 450,
        crate::Shape::Purchases => 548,
    });
    opts.seed = a.seed;
    opts.target_events = a.events;
    opts.format = if a.ndjson {
        EventFormat::Ndjson
    } else {
        EventFormat::Parquet
    };
    opts.rows_per_file = a.rows_per_file.max(1);
    opts.row_group_size = a.row_group_size.max(1);
    opts.shape = match a.shape {
        crate::Shape::Experience => propensity_engine::generate::Shape::Experience,
        crate::Shape::Purchases => propensity_engine::generate::Shape::Purchases,
    };
    let s = propensity_engine::generate::generate(&opts)
        .map_err(|e| io_error(anyhow::anyhow!("cannot write sample data: {e}")))?;
    writeln!(
        out,
        "wrote {} events of {} profiles ({} .. {}) in {} file(s) under {}",
        n(s.events),
        n(s.profiles as u64),
        s.first_event,
        s.end,
        s.files,
        s.out.display()
    )
    .map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))?;
    Ok(0)
}
