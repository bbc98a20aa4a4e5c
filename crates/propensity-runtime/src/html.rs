//! The run report as one static HTML page (`report.html`): inline CSS and inline SVG charts, no
//! scripts, nothing fetched over the network. Rendering is deterministic (the same
//! [`RunReport`] always gives the same bytes) and every piece of text that comes from the report
//! (job names, labels, paths, warnings, …) is escaped.

use std::fmt::Write as _;

use propensity_model::card::{
    BucketFactors, ClassCounts, Confidence, Importance, Metrics, ModelCard,
};
use propensity_model::metrics::{CalibrationBin, Decile};

use crate::report::{BucketSize, RunReport, TrainingStatus};

/// Printed wherever a number is missing or not finite.
const NA: &str = "n/a";
const ACCENT: &str = "#2563eb";
const AXIS: &str = "#9ca3af";
const GRID: &str = "#e5e7eb";
const MUTED: &str = "#6b7280";
const INK: &str = "#111827";
/// Intervals on a value axis (so `TICKS + 1` tick labels).
const TICKS: usize = 5;
/// Features shown in the global importance chart.
const TOP_IMPORTANCE: usize = 15;

const CSS: &str = r#":root{--accent:#2563eb;--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f8fafc}
*{box-sizing:border-box}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 16px 48px}
h1{font-size:1.6rem;margin:0 0 4px;overflow-wrap:anywhere}
h1 .run{color:var(--muted);font-weight:400}
h2{font-size:1.2rem;margin:32px 0 12px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:1rem;margin:16px 0 8px}
.card h3{margin-top:0}
.desc{color:var(--muted);margin:0 0 12px}
.meta{display:flex;flex-wrap:wrap;gap:4px 24px;margin:0;font-size:.9rem}
.meta div{display:flex;gap:6px}
.meta dt{color:var(--muted)}
.meta dd{margin:0;font-weight:600;overflow-wrap:anywhere}
.training{margin:12px 0 0}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;background:#dbeafe;color:#1e40af;font-size:.8rem;font-weight:600}
.badge.warn{background:#fef3c7;color:#92400e}
.banner{border:1px solid;border-radius:8px;padding:12px 16px;margin:16px 0}
.banner.low{background:#fef2f2;border-color:#fca5a5;color:#7f1d1d}
.banner.warn{background:#fffbeb;border-color:#fcd34d;color:#78350f}
.banner ul{margin:6px 0 0;padding-left:20px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin:20px 0}
.tile,.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px;margin:0;min-width:0}
.tile .label{color:var(--muted);font-size:.78rem;text-transform:uppercase;letter-spacing:.04em}
.tile .value{font-size:1.6rem;font-weight:700;margin-top:2px}
.tile .sub{color:var(--muted);font-size:.85rem}
.tile.good .value{color:#15803d}
.tile.bad .value{color:#b91c1c}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,480px),1fr));gap:16px}
.card svg{display:block;width:100%;height:auto}
.note{color:var(--muted);font-style:italic}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9rem;background:#fff}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
th{color:var(--muted);font-weight:600}
th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{width:38%}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
details summary{cursor:pointer}
footer{margin-top:40px;color:var(--muted);font-size:.8rem}
"#;

/// The report as a self-contained HTML5 page.
pub fn render(report: &RunReport) -> String {
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n",
    );
    let _ = writeln!(
        out,
        "<title>{} — run {}</title>",
        escape(&report.job),
        escape(&report.run_id)
    );
    out.push_str("<style>\n");
    out.push_str(CSS);
    out.push_str("</style>\n</head>\n<body>\n<main>\n");

    header(&mut out, report);
    summary_tiles(&mut out, report);
    charts(&mut out, report);
    model_card_section(&mut out, &report.card);
    if let Some(rejected) = &report.rejected_card {
        rejected_section(&mut out, rejected);
    }
    data_section(&mut out, report);
    segments_section(&mut out, report);
    timings_section(&mut out, report);
    outputs_section(&mut out, report);

    let _ = writeln!(
        out,
        "<footer>Propensity run report · job {} · run {} · as of {}</footer>",
        escape(&report.job),
        escape(&report.run_id),
        escape(&report.as_of)
    );
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Page sections
// ---------------------------------------------------------------------------------------------

fn header(out: &mut String, r: &RunReport) {
    out.push_str("<header>\n");
    let _ = writeln!(
        out,
        "<h1>{} <span class=\"run\">— run {}</span></h1>",
        escape(&r.job),
        escape(&r.run_id)
    );
    if let Some(description) = r.description.as_deref().filter(|d| !d.trim().is_empty()) {
        let _ = writeln!(out, "<p class=\"desc\">{}</p>", escape(description));
    }
    out.push_str("<dl class=\"meta\">\n");
    for (key, value) in [
        ("As of", r.as_of.as_str()),
        ("Model version", r.model_version.as_str()),
        ("Algorithm", r.algorithm.as_str()),
        ("Confidence", r.confidence.as_str()),
        ("Started", r.started_at.as_str()),
        ("Finished", r.finished_at.as_str()),
    ] {
        let _ = writeln!(out, "<div><dt>{key}</dt><dd>{}</dd></div>", escape(value));
    }
    out.push_str("</dl>\n");
    let badge = match r.training.status {
        TrainingStatus::TrainedPromoted | TrainingStatus::NotDue => "badge",
        _ => "badge warn",
    };
    let _ = writeln!(
        out,
        "<p class=\"training\">Training: <span class=\"{badge}\">{}</span> {}</p>",
        escape(r.training.status.as_str()),
        escape(&r.training.message)
    );
    out.push_str("</header>\n");

    if r.confidence == Confidence::Low {
        let reason = r
            .card
            .fallback_reason
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or("no reason was recorded");
        let _ = writeln!(
            out,
            "<div class=\"banner low\" role=\"alert\"><strong>Low confidence.</strong> These scores \
             come from the simple fallback model, not a validated trained model. Reason: {}</div>",
            escape(reason)
        );
    }
    if !r.warnings.is_empty() {
        out.push_str(
            "<div class=\"banner warn\" role=\"status\"><strong>Warnings</strong>\n<ul>\n",
        );
        for warning in &r.warnings {
            let _ = writeln!(out, "<li>{}</li>", escape(warning));
        }
        out.push_str("</ul>\n</div>\n");
    }
}

fn summary_tiles(out: &mut String, r: &RunReport) {
    let metrics = r.card.metrics.as_ref();
    let measurable = metrics.is_some_and(|m| m.measurable);
    let auc = metrics.and_then(|m| m.auc);
    let ece = metrics.map(|m| m.expected_calibration_error);
    let quality = &r.card.quality;
    let (gate, tone) = if quality.passed {
        ("quality gate passed", " good")
    } else {
        ("quality gate failed", " bad")
    };
    out.push_str("<section class=\"tiles\" aria-label=\"Summary\">\n");
    tile(out, "Profiles scored", &fmt_count(r.scored as u64), "", "");
    tile(
        out,
        "Mean probability",
        &fmt_pct(r.mean_probability, 1),
        "calibrated, over scored profiles",
        "",
    );
    match metrics {
        Some(m) if !measurable => tile(
            out,
            "Validation AUC",
            "too few positives to measure",
            &format!(
                "{} positives · {} negatives (at least {} of each needed)",
                fmt_count(m.positives as u64),
                fmt_count(m.negatives as u64),
                propensity_model::pipeline::MIN_MEASURABLE
            ),
            "",
        ),
        _ => {
            tile(
                out,
                "Validation AUC",
                &fmt_opt(auc, 3),
                &format!("gate: AUC ≥ {}", fmt_num(quality.min_auc, 2)),
                "",
            );
            tile(
                out,
                "Calibration error",
                &fmt_opt(ece, 3),
                "expected calibration error (ECE)",
                "",
            );
        }
    }
    if let Some(e) = r.expected.as_ref().filter(|_| measurable) {
        tile(
            out,
            "Expected next window",
            &format!("AUC {}", fmt_opt(e.auc, 3)),
            &format!(
                "lift at 10 % {} · base rate {}",
                fmt_opt(e.lift_at_10, 2),
                fmt_pct(e.base_rate, 1)
            ),
            "",
        );
    }
    tile(out, "Quality", &quality.grade, gate, tone);
    out.push_str("</section>\n");
}

/// One summary tile; `tone` is `""`, `" good"` or `" bad"`.
fn tile(out: &mut String, label: &str, value: &str, sub: &str, tone: &str) {
    let _ = write!(
        out,
        "<div class=\"tile{tone}\"><div class=\"label\">{}</div><div class=\"value\">{}</div>",
        escape(label),
        escape(value)
    );
    if !sub.is_empty() {
        let _ = write!(out, "<div class=\"sub\">{}</div>", escape(sub));
    }
    out.push_str("</div>\n");
}

fn charts(out: &mut String, r: &RunReport) {
    let metrics = r.card.metrics.as_ref();
    let deciles: &[Decile] = metrics.map(|m| m.deciles.as_slice()).unwrap_or_default();
    let curve: &[CalibrationBin] = metrics
        .map(|m| m.calibration_curve.as_slice())
        .unwrap_or_default();
    let no_validation = "No validation data: the model has no metrics on a held-out cutoff.";

    out.push_str("<section>\n<h2>Charts</h2>\n<div class=\"grid\">\n");
    figure(
        out,
        "Score distribution",
        score_chart(&r.score_histogram),
        "No scores in this run.",
    );
    figure(
        out,
        "Bucket sizes",
        bucket_chart(&r.buckets),
        "No buckets in this run.",
    );
    figure(out, "Lift by decile", lift_chart(deciles), no_validation);
    figure(out, "Cumulative gains", gains_chart(deciles), no_validation);
    figure(out, "Calibration", calibration_chart(curve), no_validation);
    let importance_title = if r.card.importance.len() > TOP_IMPORTANCE {
        format!(
            "Global importance (top {TOP_IMPORTANCE} of {})",
            r.card.importance.len()
        )
    } else {
        "Global importance".to_string()
    };
    figure(
        out,
        &importance_title,
        importance_chart(&r.card.importance, &importance_title),
        "No feature importance recorded.",
    );
    out.push_str("</div>\n<h3>Top factors per bucket</h3>\n");
    if r.top_factors_by_bucket.is_empty() {
        note(out, "No factor summary for this run.");
    } else {
        out.push_str("<div class=\"grid\">\n");
        for bucket in &r.top_factors_by_bucket {
            let title = format!(
                "{} bucket · {} profiles",
                bucket.bucket,
                fmt_count(bucket.profiles as u64)
            );
            figure(
                out,
                &title,
                factor_chart(bucket, &title),
                "No leading factors for this bucket.",
            );
        }
        out.push_str("</div>\n");
    }
    out.push_str("</section>\n");
}

/// A chart card: the chart, or a titled note when there is nothing to draw.
fn figure(out: &mut String, title: &str, chart: Option<String>, empty_note: &str) {
    out.push_str("<figure class=\"card\">\n");
    match chart {
        Some(svg) => out.push_str(&svg),
        None => {
            let _ = writeln!(
                out,
                "<h3>{}</h3>\n<p class=\"note\">{}</p>",
                escape(title),
                escape(empty_note)
            );
        }
    }
    out.push_str("</figure>\n");
}

fn model_card_section(out: &mut String, card: &ModelCard) {
    out.push_str("<section>\n<h2>Model card</h2>\n<div class=\"grid\">\n");
    out.push_str("<div class=\"card\">\n<h3>Model</h3>\n");
    kv_open(out);
    kv(out, "Version", &card.model_version);
    kv(out, "Job", &card.job);
    kv(out, "Algorithm", card.algorithm.as_str());
    kv(out, "Confidence", card.confidence.as_str());
    if let Some(reason) = &card.fallback_reason {
        kv(out, "Fallback reason", reason);
    }
    kv(out, "Trained at", &card.trained_at);
    kv(out, "As of", &card.as_of);
    kv(
        out,
        "Data window",
        &format!("{} – {}", card.data_from, card.data_to),
    );
    kv(out, "Outcome window", &card.window);
    kv(out, "Train", &class_counts(card.train));
    kv(out, "Validation", &class_counts(card.validation));
    if card.features.is_empty() {
        kv(out, "Features", "none");
    } else {
        let names = card
            .features
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">Features</th><td><details><summary>{} features</summary>{}</details></td></tr>",
            card.features.len(),
            escape(&names)
        );
    }
    kv(out, "Seed", &card.seed.to_string());
    kv_code(out, "Config hash", &card.config_hash);
    kv_code(out, "Data fingerprint", &card.data_fingerprint);
    kv(out, "Calibration", card.calibration.as_str());
    kv_code(out, "Parameters", &card.params.to_string());
    kv_close(out);
    out.push_str("</div>\n");

    out.push_str("<div class=\"card\">\n<h3>Quality and validation metrics</h3>\n");
    kv_open(out);
    quality_rows(out, card);
    match &card.metrics {
        Some(m) => metric_rows(out, m),
        None => kv(out, "Metrics", "No validation data"),
    }
    expected_rows(out, card);
    kv_close(out);
    out.push_str("</div>\n</div>\n");
    protocol_rows(out, card);

    out.push_str("<h3>Cutoffs</h3>\n");
    if card.cutoffs.is_empty() {
        note(out, "No cutoffs recorded.");
    } else {
        let rows: Vec<Vec<String>> = card
            .cutoffs
            .iter()
            .map(|c| {
                vec![
                    c.cutoff.clone(),
                    c.role.clone(),
                    fmt_count(c.rows as u64),
                    fmt_count(c.positives as u64),
                    fmt_count(c.negatives as u64),
                ]
            })
            .collect();
        table(
            out,
            &[
                ("Cutoff", false),
                ("Role", false),
                ("Rows", true),
                ("Positives", true),
                ("Negatives", true),
            ],
            &rows,
        );
    }

    if let Some(m) = card.metrics.as_ref().filter(|m| !m.deciles.is_empty()) {
        out.push_str("<h3>Deciles (validation cutoff)</h3>\n");
        let rows: Vec<Vec<String>> = m
            .deciles
            .iter()
            .map(|d| {
                vec![
                    d.decile.to_string(),
                    fmt_count(d.count as u64),
                    fmt_count(d.positives as u64),
                    fmt_pct(d.rate, 1),
                    fmt_lift(d.lift),
                    fmt_pct(d.cumulative_gain, 1),
                ]
            })
            .collect();
        table(
            out,
            &[
                ("Decile", true),
                ("Profiles", true),
                ("Positives", true),
                ("Rate", true),
                ("Lift", true),
                ("Cumulative gain", true),
            ],
            &rows,
        );
    }
    out.push_str("</section>\n");
}

fn quality_rows(out: &mut String, card: &ModelCard) {
    let q = &card.quality;
    kv(out, "Grade", &q.grade);
    kv(
        out,
        "Quality gate",
        &format!(
            "{} (minimum AUC {})",
            if q.passed { "passed" } else { "failed" },
            fmt_num(q.min_auc, 3)
        ),
    );
    kv(out, "Reason", &q.reason);
}

fn metric_rows(out: &mut String, m: &Metrics) {
    let counts = format!(
        "{} positives · {} negatives",
        fmt_count(m.positives as u64),
        fmt_count(m.negatives as u64)
    );
    if !m.measurable {
        kv(
            out,
            "Metrics",
            &format!(
                "too few positives to measure ({counts}; at least {} of each are needed)",
                propensity_model::pipeline::MIN_MEASURABLE
            ),
        );
        kv(out, "Base rate", &fmt_pct(m.base_rate, 2));
        return;
    }
    kv(out, "Measured on", &counts);
    kv(out, "AUC", &fmt_opt(m.auc, 3));
    kv(out, "PR-AUC", &fmt_opt(m.pr_auc, 3));
    kv(out, "Lift at 10 %", &fmt_opt(m.lift_at_10, 2));
    kv(out, "Log loss", &fmt_num(m.log_loss, 4));
    kv(out, "Brier score", &fmt_num(m.brier, 4));
    kv(
        out,
        "Expected calibration error",
        &fmt_num(m.expected_calibration_error, 3),
    );
    kv(out, "Base rate", &fmt_pct(m.base_rate, 2));
    kv(out, "Mean probability", &fmt_pct(m.mean_probability, 2));
    if let Some(e) = &m.expected {
        kv(
            out,
            "Self-assessed",
            &format!(
                "AUC {} · lift at 10 % {} · base rate {} (what its probabilities expected)",
                fmt_opt(e.auc, 3),
                fmt_opt(e.lift_at_10, 2),
                fmt_pct(e.base_rate, 2)
            ),
        );
    }
}

fn expected_rows(out: &mut String, card: &ModelCard) {
    let Some(e) = &card.expected else {
        return;
    };
    kv(
        out,
        "Next window (expected)",
        &format!(
            "AUC {} · PR-AUC {} · lift at 10 % {} over {} profiles",
            fmt_opt(e.auc, 3),
            fmt_opt(e.pr_auc, 3),
            fmt_opt(e.lift_at_10, 2),
            fmt_count(e.profiles as u64)
        ),
    );
    let previous = card
        .metrics
        .as_ref()
        .map(|m| format!(" (validation cutoff: {})", fmt_pct(m.base_rate, 2)))
        .unwrap_or_default();
    kv(
        out,
        "Base rate (expected)",
        &format!("{}{previous}", fmt_pct(e.base_rate, 2)),
    );
}

fn protocol_rows(out: &mut String, card: &ModelCard) {
    if let Some(p) = &card.protocol {
        out.push_str("<h3>Training protocol</h3>\n");
        note(out, &p.description);
        kv_open(out);
        kv(out, "Protocol", &p.kind);
        kv(out, "Validation cutoff", &p.validation_cutoff);
        kv(out, "Search cutoffs", &p.search_cutoffs.join(", "));
        kv(out, "Fit cutoffs", &p.fit_cutoffs.join(", "));
        kv(out, "Embargo", &p.embargo);
        kv(out, "Stride", &p.stride);
        kv(out, "Search rows", &class_counts(p.search_rows));
        kv_close(out);
    }
    if let Some(s) = &card.search {
        out.push_str("<h3>Capacity search</h3>\n");
        let fixed = if s.fixed.is_empty() {
            String::new()
        } else {
            format!(" Fixed by the job: {}.", s.fixed.join(", "))
        };
        note(
            out,
            &format!(
                "{} candidates in {:.1} s of a {:.0} s budget{}.{fixed}",
                s.trials.len(),
                s.seconds,
                s.budget_seconds,
                if s.stopped_by_budget {
                    " (stopped by the budget)"
                } else {
                    ""
                }
            ),
        );
        let rows: Vec<Vec<String>> = s
            .trials
            .iter()
            .enumerate()
            .map(|(i, t)| {
                vec![
                    format!("{}{}", t.rung, if i == s.chosen { " (chosen)" } else { "" }),
                    t.num_leaves.to_string(),
                    t.min_data_in_leaf.to_string(),
                    trim_float(t.learning_rate, 3),
                    fmt_count(t.rows as u64),
                    t.trees.to_string(),
                    fmt_opt(t.valid_auc, 4),
                    fmt_num(t.valid_log_loss, 4),
                    fmt_num(t.seconds, 1),
                ]
            })
            .collect();
        table(
            out,
            &[
                ("Rung", false),
                ("Leaves", true),
                ("Min leaf", true),
                ("Learning rate", true),
                ("Rows", true),
                ("Trees", true),
                ("Validation AUC", true),
                ("Log loss", true),
                ("Seconds", true),
            ],
            &rows,
        );
    }
    let fitted: Vec<Vec<String>> = card
        .btyd
        .iter()
        .map(|b| match &b.fit {
            Some(f) => vec![
                b.cutoff.clone(),
                if f.params.modified {
                    "MBG/NBD"
                } else {
                    "BG/NBD"
                }
                .to_string(),
                fmt_num(f.params.r, 3),
                fmt_num(f.params.alpha, 3),
                fmt_num(f.params.a, 3),
                fmt_num(f.params.b, 3),
                fmt_count(f.customers as u64),
            ],
            None => vec![
                b.cutoff.clone(),
                "too little to fit".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        })
        .collect();
    if !fitted.is_empty() {
        out.push_str("<h3>Buy-till-you-die models</h3>\n");
        table(
            out,
            &[
                ("Cutoff", false),
                ("Model", false),
                ("r", true),
                ("α", true),
                ("a", true),
                ("b", true),
                ("Customers", true),
            ],
            &fitted,
        );
    }
}

fn rejected_section(out: &mut String, card: &ModelCard) {
    out.push_str("<section>\n<h2>Rejected model</h2>\n");
    note(
        out,
        "Trained in this run but not promoted: it did not pass the quality gate.",
    );
    kv_open(out);
    kv(out, "Version", &card.model_version);
    kv(out, "Algorithm", card.algorithm.as_str());
    kv(out, "Trained at", &card.trained_at);
    kv(
        out,
        "AUC",
        &fmt_opt(card.metrics.as_ref().and_then(|m| m.auc), 3),
    );
    quality_rows(out, card);
    kv_close(out);
    out.push_str("</section>\n");
}

fn data_section(out: &mut String, r: &RunReport) {
    let d = &r.data;
    out.push_str("<section>\n<h2>Data</h2>\n");
    kv_open(out);
    kv(out, "Events read", &fmt_count(d.events_read));
    kv(out, "Events used", &fmt_count(d.events_used));
    let rejected = if d.events_read > 0 {
        format!(
            "{} ({} of read)",
            fmt_count(d.events_rejected),
            fmt_pct(d.events_rejected as f64 / d.events_read as f64, 1)
        )
    } else {
        fmt_count(d.events_rejected)
    };
    kv(out, "Events rejected", &rejected);
    kv(out, "Profiles", &fmt_count(d.profiles as u64));
    kv(out, "Eligible profiles", &fmt_count(d.eligible as u64));
    kv(out, "Profiles scored", &fmt_count(r.scored as u64));
    kv_close(out);
    out.push_str("<h3>Data-check findings</h3>\n");
    if d.findings.is_empty() {
        note(out, "No findings.");
    } else {
        out.push_str("<ul>\n");
        for finding in &d.findings {
            let _ = writeln!(out, "<li>{}</li>", escape(finding));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</section>\n");
}

fn timings_section(out: &mut String, r: &RunReport) {
    out.push_str("<section>\n<h2>Stage timings</h2>\n");
    if r.timings.is_empty() {
        note(out, "No stage timings recorded.");
    } else {
        let mut rows: Vec<Vec<String>> = r
            .timings
            .iter()
            .map(|t| vec![t.stage.clone(), fmt_num(t.seconds, 2)])
            .collect();
        let total: f64 = r
            .timings
            .iter()
            .map(|t| t.seconds)
            .filter(|s| s.is_finite())
            .sum();
        rows.push(vec!["Total".to_string(), fmt_num(total, 2)]);
        table(out, &[("Stage", false), ("Seconds", true)], &rows);
    }
    if !r.card.timings.is_empty() {
        out.push_str("<h3>Training stages (model card)</h3>\n");
        let rows: Vec<Vec<String>> = r
            .card
            .timings
            .iter()
            .map(|(stage, seconds)| vec![stage.clone(), fmt_num(*seconds, 2)])
            .collect();
        table(out, &[("Stage", false), ("Seconds", true)], &rows);
    }
    out.push_str("</section>\n");
}

fn segments_section(out: &mut String, r: &RunReport) {
    out.push_str("<section>\n<h2>Segments and publications</h2>\n");
    if r.segments.is_empty() {
        note(out, "No segments.");
    } else {
        let rows: Vec<Vec<String>> = r
            .segments
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    fmt_count(s.profiles as u64),
                    fmt_count(s.holdout as u64),
                    fmt_num(s.holdout_fraction * 100.0, 1),
                ]
            })
            .collect();
        table(
            out,
            &[
                ("Segment", false),
                ("Activated profiles", true),
                ("Held out", true),
                ("Holdout %", true),
            ],
            &rows,
        );
    }
    if !r.publications.is_empty() {
        let rows: Vec<Vec<String>> = r
            .publications
            .iter()
            .map(|p| {
                vec![
                    format!("{} ({})", p.sink, p.kind),
                    p.status.as_str().to_owned(),
                    fmt_count(p.rows as u64),
                    fmt_num(p.seconds, 2),
                    if p.message.is_empty() {
                        p.location.clone()
                    } else {
                        format!("{} — {}", p.location, p.message)
                    },
                ]
            })
            .collect();
        table(
            out,
            &[
                ("Sink", false),
                ("Status", false),
                ("Rows", true),
                ("Seconds", true),
                ("Where / why", false),
            ],
            &rows,
        );
    }
    out.push_str("</section>\n");
}

fn outputs_section(out: &mut String, r: &RunReport) {
    out.push_str("<section>\n<h2>Outputs</h2>\n");
    if r.outputs.is_empty() {
        note(out, "No outputs recorded.");
    } else {
        let rows: Vec<Vec<String>> = r
            .outputs
            .iter()
            .map(|o| {
                vec![
                    o.kind.clone(),
                    o.location.clone(),
                    o.rows
                        .map_or_else(|| "—".to_string(), |rows| fmt_count(rows as u64)),
                ]
            })
            .collect();
        table(
            out,
            &[("Kind", false), ("Location", false), ("Rows", true)],
            &rows,
        );
    }
    out.push_str("</section>\n");
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

fn kv_open(out: &mut String) {
    out.push_str("<div class=\"table-wrap\"><table class=\"kv\">\n<tbody>\n");
}

fn kv_close(out: &mut String) {
    out.push_str("</tbody>\n</table></div>\n");
}

/// A key/value row; both are escaped.
fn kv(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(
        out,
        "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
        escape(key),
        escape(value)
    );
}

/// A key/value row with the value in monospace (hashes, JSON).
fn kv_code(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(
        out,
        "<tr><th scope=\"row\">{}</th><td><code>{}</code></td></tr>",
        escape(key),
        escape(value)
    );
}

/// A table of plain-text cells (escaped here); `headers` pairs a title with whether the column
/// is numeric (right-aligned).
fn table(out: &mut String, headers: &[(&str, bool)], rows: &[Vec<String>]) {
    out.push_str("<div class=\"table-wrap\"><table>\n<thead><tr>");
    for (title, numeric) in headers {
        let _ = write!(
            out,
            "<th scope=\"col\"{}>{}</th>",
            num_class(*numeric),
            escape(title)
        );
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let numeric = headers.get(i).is_some_and(|h| h.1);
            let _ = write!(out, "<td{}>{}</td>", num_class(numeric), escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n");
}

fn num_class(numeric: bool) -> &'static str {
    if numeric { " class=\"num\"" } else { "" }
}

fn note(out: &mut String, text: &str) {
    let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(text));
}

fn class_counts(c: ClassCounts) -> String {
    format!(
        "{} rows · {} positives · {} negatives",
        fmt_count(c.rows as u64),
        fmt_count(c.positives as u64),
        fmt_count(c.negatives as u64)
    )
}

// ---------------------------------------------------------------------------------------------
// Charts built from the report
// ---------------------------------------------------------------------------------------------

fn score_chart(histogram: &[u64]) -> Option<String> {
    if histogram.is_empty() {
        return None;
    }
    let bands = histogram.len();
    let total = histogram.iter().fold(0u64, |a, &b| a.saturating_add(b));
    let max = histogram.iter().copied().max().unwrap_or(0) as f64;
    let bars = histogram
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let lo = 100.0 * i as f64 / bands as f64;
            let hi = 100.0 * (i + 1) as f64 / bands as f64;
            Bar {
                value: count as f64,
                tooltip: format!("Scores {lo:.0}–{hi:.0}: {} profiles", fmt_count(count)),
            }
        })
        .collect();
    let x_ticks = (0..=10u32)
        .map(|k| (f64::from(k) / 10.0, (k * 10).to_string()))
        .collect();
    let desc = format!(
        "Bar chart of scored profiles per score band ({bands} bands from 0 to 100); {} profiles in total.",
        fmt_count(total)
    );
    Some(bar_chart(&BarChart {
        title: "Score distribution",
        desc: &desc,
        x_label: "Score",
        y_label: "Profiles",
        bars,
        x_ticks,
        y_max: nice_max(max.max(5.0)),
        y_fmt: count_tick,
        reference: None,
    }))
}

fn bucket_chart(buckets: &[BucketSize]) -> Option<String> {
    if buckets.is_empty() {
        return None;
    }
    let rows = buckets
        .iter()
        .map(|b| HBar {
            label: b.bucket.to_string(),
            value: b.share,
            text: format!(
                "{} profiles · {} · mean {}",
                fmt_count(b.profiles as u64),
                fmt_pct(b.share, 1),
                fmt_pct(b.mean_probability, 1)
            ),
            tooltip: format!(
                "{}: {} profiles ({} of scored), mean probability {}, percentiles {}–{}",
                b.bucket,
                fmt_count(b.profiles as u64),
                fmt_pct(b.share, 1),
                fmt_pct(b.mean_probability, 1),
                b.min_percentile,
                b.max_percentile
            ),
            color: bucket_color(b.bucket.as_str()),
        })
        .collect();
    Some(hbar_chart(&HBarChart {
        title: "Bucket sizes",
        desc: "Horizontal bars: share of scored profiles per bucket, with profile counts and mean probability.",
        x_label: "Share of scored profiles",
        rows,
        x_fmt: pct_tick,
    }))
}

fn lift_chart(deciles: &[Decile]) -> Option<String> {
    if deciles.is_empty() {
        return None;
    }
    let count = deciles.len() as f64;
    let max_lift = deciles.iter().map(|d| d.lift).fold(0.0_f64, f64::max);
    let bars = deciles
        .iter()
        .map(|d| Bar {
            value: d.lift,
            tooltip: format!(
                "Decile {}: lift {}, {} of {} positive ({})",
                d.decile,
                fmt_lift(d.lift),
                fmt_count(d.positives as u64),
                fmt_count(d.count as u64),
                fmt_pct(d.rate, 1)
            ),
        })
        .collect();
    let x_ticks = deciles
        .iter()
        .enumerate()
        .map(|(i, d)| ((i as f64 + 0.5) / count, d.decile.to_string()))
        .collect();
    Some(bar_chart(&BarChart {
        title: "Lift by decile",
        desc: "Bar chart: positive rate in each score decile over the overall rate (validation cutoff); the dashed line is a lift of 1.",
        x_label: "Decile (1 = highest scores)",
        y_label: "Lift",
        bars,
        x_ticks,
        y_max: nice_max(max_lift.max(1.5)),
        y_fmt: lift_tick,
        reference: Some((1.0, "baseline")),
    }))
}

fn gains_chart(deciles: &[Decile]) -> Option<String> {
    if deciles.is_empty() {
        return None;
    }
    let total = deciles
        .iter()
        .map(|d| d.count)
        .fold(0usize, usize::saturating_add);
    let groups = deciles.len() as f64;
    let mut points = vec![Point {
        x: 0.0,
        y: 0.0,
        r: 0.0,
        tooltip: String::new(),
    }];
    let mut seen = 0usize;
    for (i, d) in deciles.iter().enumerate() {
        seen = seen.saturating_add(d.count);
        let x = if total > 0 {
            seen as f64 / total as f64
        } else {
            (i + 1) as f64 / groups
        };
        points.push(Point {
            x,
            y: d.cumulative_gain,
            r: 3.5,
            tooltip: format!(
                "Top {} of profiles (through decile {}): {} of positives",
                fmt_pct(x, 0),
                d.decile,
                fmt_pct(d.cumulative_gain, 1)
            ),
        });
    }
    Some(line_chart(&XyChart {
        title: "Cumulative gains",
        desc: "Line chart: share of all positives found when contacting the highest-scored profiles first (validation cutoff); the dashed diagonal is random targeting.",
        x_label: "Share of profiles, highest scores first",
        y_label: "Share of positives found",
        x_max: 1.0,
        y_max: 1.0,
        fmt: pct_tick,
        points,
        diagonal: "random",
    }))
}

fn calibration_chart(bins: &[CalibrationBin]) -> Option<String> {
    if bins.is_empty() {
        return None;
    }
    let data_max = bins
        .iter()
        .flat_map(|b| [b.mean_predicted, b.observed_rate])
        .fold(0.0_f64, f64::max);
    // Zoom in on low base rates; never beyond [0, 1].
    let axis = nice_max(data_max.max(0.1)).min(1.0);
    let max_count = bins.iter().map(|b| b.count).max().unwrap_or(0);
    let points = bins
        .iter()
        .map(|b| {
            let r = if max_count > 0 {
                3.0 + 5.0 * (b.count as f64 / max_count as f64).sqrt()
            } else {
                4.0
            };
            Point {
                x: b.mean_predicted,
                y: b.observed_rate,
                r,
                tooltip: format!(
                    "Bin {}–{}: {} profiles, predicted {}, observed {}",
                    fmt_num(b.lower, 2),
                    fmt_num(b.upper, 2),
                    fmt_count(b.count as u64),
                    fmt_pct(b.mean_predicted, 1),
                    fmt_pct(b.observed_rate, 1)
                ),
            }
        })
        .collect();
    let desc = format!(
        "Calibration curve: mean predicted probability against observed positive rate per bin \
         (validation cutoff), axes 0 to {}; point size reflects the bin's profiles; the dashed \
         diagonal is perfect calibration.",
        pct_tick(axis)
    );
    Some(line_chart(&XyChart {
        title: "Calibration",
        desc: &desc,
        x_label: "Mean predicted probability",
        y_label: "Observed rate",
        x_max: axis,
        y_max: axis,
        fmt: pct_tick,
        points,
        diagonal: "perfect calibration",
    }))
}

fn importance_chart(importance: &[Importance], title: &str) -> Option<String> {
    if importance.is_empty() {
        return None;
    }
    let rows = importance
        .iter()
        .take(TOP_IMPORTANCE)
        .map(|i| HBar {
            label: display_label(&i.label, &i.feature).to_string(),
            value: i.share,
            text: fmt_pct(i.share, 1),
            tooltip: format!(
                "{} ({}): {} of total importance, mean |contribution| {}",
                display_label(&i.label, &i.feature),
                i.feature,
                fmt_pct(i.share, 1),
                fmt_num(i.mean_abs_contribution, 3)
            ),
            color: ACCENT,
        })
        .collect();
    Some(hbar_chart(&HBarChart {
        title,
        desc: "Horizontal bars: each feature's share of the summed mean absolute contributions on the validation cutoff, largest first.",
        x_label: "Share of total importance",
        rows,
        x_fmt: pct_tick,
    }))
}

fn factor_chart(bucket: &BucketFactors, title: &str) -> Option<String> {
    if bucket.factors.is_empty() {
        return None;
    }
    let color = bucket_color(bucket.bucket.as_str());
    let rows = bucket
        .factors
        .iter()
        .map(|f| HBar {
            label: display_label(&f.label, &f.feature).to_string(),
            value: f.share_of_profiles,
            text: format!(
                "{} · {}{} ({})",
                fmt_pct(f.share_of_profiles, 0),
                direction_arrow(f.mean_contribution),
                direction(f.mean_contribution),
                fmt_signed(f.mean_contribution, 2)
            ),
            tooltip: format!(
                "{} ({}): a top factor for {} of the bucket's profiles; mean contribution {} log-odds ({} the score)",
                display_label(&f.label, &f.feature),
                f.feature,
                fmt_pct(f.share_of_profiles, 1),
                fmt_signed(f.mean_contribution, 3),
                direction(f.mean_contribution)
            ),
            color,
        })
        .collect();
    let desc = format!(
        "Horizontal bars: share of the {} bucket's profiles with each factor among their top \
         reasons, with the mean contribution and whether it raises or lowers the score.",
        bucket.bucket
    );
    Some(hbar_chart(&HBarChart {
        title,
        desc: &desc,
        x_label: "Share of the bucket's profiles",
        rows,
        x_fmt: pct_tick,
    }))
}

fn bucket_color(bucket: &str) -> &'static str {
    match bucket.to_ascii_lowercase().as_str() {
        "high" => "#1e40af",
        "medium" => ACCENT,
        "low" => "#93c5fd",
        _ => AXIS,
    }
}

/// Contribution > 0 raises the score, < 0 lowers it.
fn direction(contribution: f64) -> &'static str {
    if contribution.is_nan() {
        NA
    } else if contribution > 0.0 {
        "raises"
    } else if contribution < 0.0 {
        "lowers"
    } else {
        "no effect"
    }
}

fn direction_arrow(contribution: f64) -> &'static str {
    match direction(contribution) {
        "raises" => "▲ ",
        "lowers" => "▼ ",
        _ => "",
    }
}

fn display_label<'a>(label: &'a str, feature: &'a str) -> &'a str {
    if label.trim().is_empty() {
        feature
    } else {
        label
    }
}

// ---------------------------------------------------------------------------------------------
// SVG primitives
// ---------------------------------------------------------------------------------------------

/// The drawing area of a chart inside its viewBox.
#[derive(Debug, Clone, Copy)]
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl Frame {
    fn right_x(&self) -> f64 {
        self.width - self.right
    }

    fn bottom_y(&self) -> f64 {
        self.height - self.bottom
    }

    fn plot_w(&self) -> f64 {
        (self.right_x() - self.left).max(1.0)
    }

    fn plot_h(&self) -> f64 {
        (self.bottom_y() - self.top).max(1.0)
    }
}

#[derive(Debug)]
struct Bar {
    value: f64,
    tooltip: String,
}

#[derive(Debug)]
struct BarChart<'a> {
    title: &'a str,
    desc: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    bars: Vec<Bar>,
    /// (fraction of the plot width, label).
    x_ticks: Vec<(f64, String)>,
    y_max: f64,
    y_fmt: fn(f64) -> String,
    /// A dashed horizontal line at this value, with a label.
    reference: Option<(f64, &'a str)>,
}

#[derive(Debug)]
struct HBar {
    label: String,
    value: f64,
    text: String,
    tooltip: String,
    color: &'static str,
}

#[derive(Debug)]
struct HBarChart<'a> {
    title: &'a str,
    desc: &'a str,
    x_label: &'a str,
    rows: Vec<HBar>,
    x_fmt: fn(f64) -> String,
}

#[derive(Debug)]
struct Point {
    x: f64,
    y: f64,
    /// Marker radius; 0 draws no marker.
    r: f64,
    tooltip: String,
}

#[derive(Debug)]
struct XyChart<'a> {
    title: &'a str,
    desc: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    x_max: f64,
    y_max: f64,
    fmt: fn(f64) -> String,
    points: Vec<Point>,
    /// Label of the dashed y = x reference line.
    diagonal: &'a str,
}

/// Vertical bars over categories.
fn bar_chart(c: &BarChart<'_>) -> String {
    let f = Frame {
        width: 560.0,
        height: 300.0,
        left: 60.0,
        right: 16.0,
        top: 40.0,
        bottom: 46.0,
    };
    let y_max = positive_or_one(c.y_max);
    let mut out = String::new();
    svg_open(&mut out, &f, c.title, c.desc);
    y_axis(&mut out, &f, &value_ticks(y_max, c.y_fmt), c.y_label);
    x_axis(&mut out, &f, &c.x_ticks, c.x_label, false);

    let slot = f.plot_w() / c.bars.len().max(1) as f64;
    let gap = (slot * 0.12).min(6.0);
    let width = (slot - 2.0 * gap).max(1.0);
    for (i, bar) in c.bars.iter().enumerate() {
        let height = f.plot_h() * bounded(bar.value, y_max) / y_max;
        let _ = writeln!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{ACCENT}\" rx=\"1\"><title>{}</title></rect>",
            n(f.left + slot * i as f64 + gap),
            n(f.bottom_y() - height),
            n(width),
            n(height),
            escape(&bar.tooltip)
        );
    }
    if let Some((value, label)) = c
        .reference
        .filter(|(v, _)| v.is_finite() && (0.0..=y_max).contains(v))
    {
        let y = n(f.bottom_y() - f.plot_h() * value / y_max);
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{MUTED}\" stroke-dasharray=\"5 4\"/>",
            n(f.left),
            n(f.right_x())
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{y}\" dy=\"-4\" text-anchor=\"end\" font-size=\"10\" fill=\"{MUTED}\">{}</text>",
            n(f.right_x() - 2.0),
            escape(label)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Horizontal bars, one row each: label on the left, bar, value text on the right.
fn hbar_chart(c: &HBarChart<'_>) -> String {
    const ROW: f64 = 24.0;
    let f = Frame {
        width: 680.0,
        height: 40.0 + ROW * c.rows.len().max(1) as f64 + 44.0,
        left: 170.0,
        right: 230.0,
        top: 40.0,
        bottom: 44.0,
    };
    let max = nice_max(c.rows.iter().map(|r| r.value).fold(0.0_f64, f64::max));
    let mut out = String::new();
    svg_open(&mut out, &f, c.title, c.desc);
    x_axis(&mut out, &f, &value_ticks(max, c.x_fmt), c.x_label, true);
    for (i, row) in c.rows.iter().enumerate() {
        let top = f.top + ROW * i as f64;
        let mid = n(top + ROW / 2.0);
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{mid}\" dy=\"0.32em\" text-anchor=\"end\" font-size=\"12\" fill=\"{INK}\">{}</text>",
            n(f.left - 8.0),
            escape(&truncate(&row.label, 24))
        );
        let _ = writeln!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" rx=\"2\"><title>{}</title></rect>",
            n(f.left),
            n(top + 4.0),
            n(f.plot_w() * bounded(row.value, max) / max),
            n(ROW - 8.0),
            row.color,
            escape(&row.tooltip)
        );
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{mid}\" dy=\"0.32em\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
            n(f.right_x() + 8.0),
            escape(&truncate(&row.text, 40))
        );
    }
    let x = n(f.left);
    let _ = writeln!(
        out,
        "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"{AXIS}\"/>",
        n(f.top),
        n(f.bottom_y())
    );
    out.push_str("</svg>\n");
    out
}

/// Points joined by a line over two value axes, with a dashed y = x reference line.
/// Points with a non-finite coordinate are left out.
fn line_chart(c: &XyChart<'_>) -> String {
    let f = Frame {
        width: 560.0,
        height: 340.0,
        left: 60.0,
        right: 20.0,
        top: 40.0,
        bottom: 46.0,
    };
    let x_max = positive_or_one(c.x_max);
    let y_max = positive_or_one(c.y_max);
    let px = |x: f64| f.left + f.plot_w() * bounded(x, x_max) / x_max;
    let py = |y: f64| f.bottom_y() - f.plot_h() * bounded(y, y_max) / y_max;

    let mut out = String::new();
    svg_open(&mut out, &f, c.title, c.desc);
    y_axis(&mut out, &f, &value_ticks(y_max, c.fmt), c.y_label);
    x_axis(&mut out, &f, &value_ticks(x_max, c.fmt), c.x_label, true);

    let end = x_max.min(y_max);
    let (end_x, end_y) = (px(end), py(end));
    let _ = writeln!(
        out,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{MUTED}\" stroke-dasharray=\"5 4\"/>",
        n(px(0.0)),
        n(py(0.0)),
        n(end_x),
        n(end_y)
    );
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\" fill=\"{MUTED}\">{}</text>",
        n(end_x - 6.0),
        n(end_y + 14.0),
        escape(c.diagonal)
    );

    let points: Vec<(f64, f64, &Point)> = c
        .points
        .iter()
        .filter(|p| p.x.is_finite() && p.y.is_finite())
        .map(|p| (px(p.x), py(p.y), p))
        .collect();
    if points.len() >= 2 {
        let path = points
            .iter()
            .map(|(x, y, _)| format!("{},{}", n(*x), n(*y)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "<polyline points=\"{path}\" fill=\"none\" stroke=\"{ACCENT}\" stroke-width=\"2\" stroke-linejoin=\"round\"/>"
        );
    }
    for (x, y, p) in &points {
        if p.r.is_finite() && p.r > 0.0 {
            let _ = writeln!(
                out,
                "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{ACCENT}\" fill-opacity=\"0.85\" stroke=\"#fff\"><title>{}</title></circle>",
                n(*x),
                n(*y),
                n(p.r),
                escape(&p.tooltip)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Opens an `<svg>` with its viewBox, accessible `<title>`/`<desc>` and a visible title.
fn svg_open(out: &mut String, f: &Frame, title: &str, desc: &str) {
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" role=\"img\" font-family=\"system-ui, sans-serif\">",
        n(f.width),
        n(f.height)
    );
    let _ = writeln!(
        out,
        "<title>{}</title>\n<desc>{}</desc>",
        escape(title),
        escape(desc)
    );
    let _ = writeln!(
        out,
        "<text x=\"8\" y=\"22\" font-size=\"14\" font-weight=\"600\" fill=\"{INK}\">{}</text>",
        escape(&truncate(title, 70))
    );
}

/// Evenly spaced ticks from 0 to `max`, as (fraction of the axis, label).
fn value_ticks(max: f64, fmt: fn(f64) -> String) -> Vec<(f64, String)> {
    (0..=TICKS)
        .map(|i| {
            let fraction = i as f64 / TICKS as f64;
            (fraction, fmt(max * fraction))
        })
        .collect()
}

/// Horizontal axis at the bottom of the plot; `grid` adds vertical grid lines.
fn x_axis(out: &mut String, f: &Frame, ticks: &[(f64, String)], label: &str, grid: bool) {
    let base = f.bottom_y();
    for (fraction, text) in ticks {
        let fraction = *fraction;
        if !fraction.is_finite() {
            continue;
        }
        let x = n(f.left + f.plot_w() * fraction);
        if grid && fraction > 0.0 {
            let _ = writeln!(
                out,
                "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"{GRID}\"/>",
                n(f.top),
                n(base)
            );
        }
        let _ = writeln!(
            out,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"{AXIS}\"/>",
            n(base),
            n(base + 4.0)
        );
        let _ = writeln!(
            out,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
            n(base + 16.0),
            escape(text)
        );
    }
    let y = n(base);
    let _ = writeln!(
        out,
        "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{AXIS}\"/>",
        n(f.left),
        n(f.right_x())
    );
    if !label.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
            n(f.left + f.plot_w() / 2.0),
            n(f.height - 8.0),
            escape(label)
        );
    }
}

/// Vertical axis on the left of the plot, with horizontal grid lines.
fn y_axis(out: &mut String, f: &Frame, ticks: &[(f64, String)], label: &str) {
    for (fraction, text) in ticks {
        let fraction = *fraction;
        if !fraction.is_finite() {
            continue;
        }
        let y = n(f.bottom_y() - f.plot_h() * fraction);
        if fraction > 0.0 {
            let _ = writeln!(
                out,
                "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{GRID}\"/>",
                n(f.left),
                n(f.right_x())
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{y}\" dy=\"0.32em\" text-anchor=\"end\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
            n(f.left - 6.0),
            escape(text)
        );
    }
    let x = n(f.left);
    let _ = writeln!(
        out,
        "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"{AXIS}\"/>",
        n(f.top),
        n(f.bottom_y())
    );
    if !label.is_empty() {
        let center = n(f.top + f.plot_h() / 2.0);
        let _ = writeln!(
            out,
            "<text transform=\"translate(14 {center}) rotate(-90)\" text-anchor=\"middle\" font-size=\"11\" fill=\"{MUTED}\">{}</text>",
            escape(label)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers and text
// ---------------------------------------------------------------------------------------------

/// Escapes text for HTML element content and quoted attributes; drops control characters
/// other than tab and newlines.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `v` with `decimals` decimals, or `n/a` when not finite.
fn fmt_num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        NA.to_string()
    }
}

/// A 0–1 fraction as a percentage with `decimals` decimals, or `n/a` when not finite.
fn fmt_pct(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        let pct = v * 100.0;
        format!("{pct:.decimals$}%")
    } else {
        NA.to_string()
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => fmt_num(v, decimals),
        None => NA.to_string(),
    }
}

/// With an explicit sign (`+0.42`, `-0.10`).
fn fmt_signed(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:+.decimals$}")
    } else {
        NA.to_string()
    }
}

fn fmt_lift(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}×")
    } else {
        NA.to_string()
    }
}

/// An integer with thousands separators (`1,234,567`).
fn fmt_count(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Tick label for counts: `0`, `250`, `1.5k`, `2M`.
fn count_tick(v: f64) -> String {
    if !v.is_finite() {
        return NA.to_string();
    }
    let magnitude = v.abs();
    if magnitude >= 1e6 {
        format!("{}M", trim_float(v / 1e6, 1))
    } else if magnitude >= 1e3 {
        format!("{}k", trim_float(v / 1e3, 1))
    } else {
        trim_float(v, 0)
    }
}

/// Tick label for a 0–1 fraction as a percentage, with as few decimals as the value needs.
fn pct_tick(v: f64) -> String {
    if !v.is_finite() {
        return NA.to_string();
    }
    let pct = v * 100.0;
    let decimals = [(0usize, 1.0_f64), (1, 10.0), (2, 100.0)]
        .into_iter()
        .find(|&(_, scale)| ((pct * scale).round() - pct * scale).abs() < 1e-6)
        .map_or(2, |(d, _)| d);
    format!("{}%", trim_float(pct, decimals))
}

fn lift_tick(v: f64) -> String {
    if v.is_finite() {
        format!("{}×", trim_float(v, 1))
    } else {
        NA.to_string()
    }
}

/// `v` with at most `decimals` decimals, trailing zeros removed, never `-0`.
fn trim_float(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".to_string() } else { s }
}

/// An SVG coordinate: one decimal at most, `0` for anything not finite.
fn n(v: f64) -> String {
    if v.is_finite() {
        trim_float(v, 1)
    } else {
        "0".to_string()
    }
}

/// The smallest of 1, 2, 2.5, 5 or 10 × a power of ten that is ≥ `v`; 1 when `v` is not a
/// positive finite number.
fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    let scaled = v / magnitude;
    let step = [1.0, 2.0, 2.5, 5.0]
        .into_iter()
        .find(|&s| scaled <= s + 1e-9)
        .unwrap_or(10.0);
    let nice = step * magnitude;
    if nice.is_finite() && nice > 0.0 {
        nice
    } else {
        v
    }
}

fn positive_or_one(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 1.0 }
}

/// `v` clamped to `[0, max]`; 0 when not finite. `max` must be positive and finite.
fn bounded(v: f64, max: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v.min(max)
    } else {
        0.0
    }
}

/// At most `max` characters, with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::{escape, fmt_count, nice_max, pct_tick, render};
    use crate::report::{
        BucketSize, DataSummary, Output, RunReport, StageTiming, TrainingOutcome, TrainingStatus,
    };
    use propensity_model::card::{
        BucketFactors, ClassCounts, Confidence, CutoffSummary, FactorSummary, Importance, Metrics,
        ModelCard, Quality,
    };
    use propensity_model::metrics::{CalibrationBin, Decile};

    fn sample_report() -> RunReport {
        let positives = [8usize, 4, 3, 2, 1, 1, 1, 0, 0, 0];
        let mut found = 0usize;
        let deciles: Vec<Decile> = positives
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                found += p;
                let rate = p as f64 / 20.0;
                Decile {
                    decile: i + 1,
                    count: 20,
                    positives: p,
                    rate,
                    lift: rate / 0.1,
                    cumulative_gain: found as f64 / 20.0,
                }
            })
            .collect();
        let card = ModelCard {
            job: "churn".to_string(),
            model_version: "v3".to_string(),
            algorithm: propensity_model::pipeline::ModelAlgorithm::Gbdt,
            confidence: Confidence::Normal,
            fallback_reason: None,
            trained_at: "2024-05-01T00:05:00Z".to_string(),
            as_of: "2024-05-01T00:00:00Z".to_string(),
            data_from: "2023-11-01T00:00:00Z".to_string(),
            data_to: "2024-05-01T00:00:00Z".to_string(),
            window: "30d".to_string(),
            cutoffs: vec![
                CutoffSummary {
                    cutoff: "2024-03-01T00:00:00Z".to_string(),
                    role: "train".to_string(),
                    rows: 800,
                    positives: 80,
                    negatives: 720,
                },
                CutoffSummary {
                    cutoff: "2024-04-01T00:00:00Z".to_string(),
                    role: "validation".to_string(),
                    rows: 200,
                    positives: 20,
                    negatives: 180,
                },
            ],
            train: ClassCounts {
                rows: 800,
                positives: 80,
                negatives: 720,
            },
            validation: ClassCounts {
                rows: 200,
                positives: 20,
                negatives: 180,
            },
            features: vec!["recency_days".to_string(), "orders_90d".to_string()],
            seed: 42,
            config_hash: "cfg-abc123".to_string(),
            data_fingerprint: "data-def456".to_string(),
            params: serde_json::json!({}),
            calibration: propensity_model::pipeline::CalibrationMethod::Isotonic,
            metrics: Some(Metrics {
                auc: Some(0.812),
                pr_auc: Some(0.41),
                log_loss: 0.251,
                brier: 0.079,
                expected_calibration_error: 0.012,
                base_rate: 0.1,
                mean_probability: 0.102,
                calibration_curve: vec![
                    CalibrationBin {
                        lower: 0.0,
                        upper: 0.1,
                        count: 150,
                        mean_predicted: 0.04,
                        observed_rate: 0.05,
                    },
                    CalibrationBin {
                        lower: 0.1,
                        upper: 0.2,
                        count: 40,
                        mean_predicted: 0.14,
                        observed_rate: 0.15,
                    },
                    CalibrationBin {
                        lower: 0.3,
                        upper: 0.4,
                        count: 10,
                        mean_predicted: 0.35,
                        observed_rate: f64::NAN,
                    },
                ],
                deciles,
                lift_at_10: Some(2.5),
                positives: 20,
                negatives: 180,
                measurable: true,
                expected: None,
            }),
            importance: vec![
                Importance {
                    feature: "recency_days".to_string(),
                    label: "Days since last order <recent>".to_string(),
                    mean_abs_contribution: 0.4,
                    share: 0.6,
                },
                Importance {
                    feature: "orders_90d".to_string(),
                    label: String::new(),
                    mean_abs_contribution: 0.27,
                    share: 0.4,
                },
            ],
            top_factors_by_bucket: Vec::new(),
            quality: Quality {
                min_auc: 0.65,
                passed: true,
                grade: "excellent".to_string(),
                reason: "AUC 0.812 is at least the gate 0.65.".to_string(),
            },
            timings: vec![("fit".to_string(), 1.5), ("calibrate".to_string(), 0.1)],
            protocol: None,
            search: None,
            btyd: Vec::new(),
            expected: None,
        };
        let mut rejected = card.clone();
        rejected.model_version = "v4".to_string();
        rejected.quality.passed = false;
        rejected.quality.grade = "poor".to_string();
        rejected.quality.reason = "AUC 0.61 is below the gate 0.65.".to_string();

        RunReport {
            expected: None,
            job: "churn \"weekly\" & co".to_string(),
            description: Some("<script>alert('x')</script> customers likely to churn".to_string()),
            run_id: "20240501T000000Z".to_string(),
            as_of: "2024-05-01T00:00:00Z".to_string(),
            started_at: "2024-05-01T00:01:00Z".to_string(),
            finished_at: "2024-05-01T00:06:00Z".to_string(),
            model_version: "v3".to_string(),
            algorithm: propensity_model::pipeline::ModelAlgorithm::Gbdt,
            confidence: Confidence::Normal,
            training: TrainingOutcome {
                status: TrainingStatus::TrainedRejected,
                message: "A new model was trained but did not pass the gate.".to_string(),
            },
            card,
            rejected_card: Some(rejected),
            scored: 1000,
            mean_probability: 0.1,
            buckets: vec![
                BucketSize {
                    bucket: propensity_model::card::Bucket::High,
                    profiles: 100,
                    share: 0.1,
                    mean_probability: 0.45,
                    min_percentile: 90,
                    max_percentile: 100,
                },
                BucketSize {
                    bucket: propensity_model::card::Bucket::Medium,
                    profiles: 300,
                    share: 0.3,
                    mean_probability: f64::NAN,
                    min_percentile: 60,
                    max_percentile: 89,
                },
                BucketSize {
                    bucket: propensity_model::card::Bucket::Low,
                    profiles: 600,
                    share: 0.6,
                    mean_probability: 0.03,
                    min_percentile: 0,
                    max_percentile: 59,
                },
            ],
            score_histogram: (0..20u64).map(|i| (20 - i) * 5).collect(),
            top_factors_by_bucket: vec![
                BucketFactors {
                    bucket: propensity_model::card::Bucket::High,
                    profiles: 100,
                    factors: vec![
                        FactorSummary {
                            feature: "recency_days".to_string(),
                            label: "Ordered recently".to_string(),
                            share_of_profiles: 0.7,
                            mean_contribution: 0.42,
                        },
                        FactorSummary {
                            feature: "orders_90d".to_string(),
                            label: "Few orders".to_string(),
                            share_of_profiles: 0.2,
                            mean_contribution: -0.1,
                        },
                    ],
                },
                BucketFactors {
                    bucket: propensity_model::card::Bucket::Low,
                    profiles: 600,
                    factors: Vec::new(),
                },
            ],
            data: DataSummary {
                events_read: 12_000,
                events_used: 11_900,
                events_rejected: 100,
                profiles: 1100,
                eligible: 1000,
                findings: vec!["warning: 100 events without a customer id".to_string()],
            },
            segments: vec![crate::report::SegmentSize {
                name: "<b>vip</b>".to_string(),
                profiles: 90,
                holdout: 10,
                holdout_fraction: 0.1,
            }],
            publication: "20240501T000000Z-0123456789abcdef".to_string(),
            publications: vec![crate::report::PublicationRecord {
                sink: "crm".to_string(),
                kind: "webhook".to_string(),
                status: propensity_sinks::Status::Failed,
                rows: 0,
                location: String::new(),
                message: "HTTP 500 <oops>".to_string(),
                seconds: 0.5,
            }],
            timings: vec![
                StageTiming {
                    stage: "read".to_string(),
                    seconds: 1.234,
                },
                StageTiming {
                    stage: "score".to_string(),
                    seconds: f64::NAN,
                },
            ],
            outputs: vec![
                Output {
                    kind: "scores".to_string(),
                    location: "/tmp/out/scores.parquet".to_string(),
                    rows: Some(1000),
                },
                Output {
                    kind: "report_html".to_string(),
                    location: "s3://bucket/report.html?a=1&b=2".to_string(),
                    rows: None,
                },
            ],
            warnings: vec!["Feature <orders_90d> missing for 3% of profiles".to_string()],
        }
    }

    #[test]
    fn renders_charts_and_escapes_user_text() {
        let html = render(&sample_report());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert!(html.matches("<svg").count() >= 5);
        assert!(!html.contains("NaN"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("churn &quot;weekly&quot; &amp; co"));
        assert!(html.contains("Feature &lt;orders_90d&gt; missing"));
        assert!(html.contains("s3://bucket/report.html?a=1&amp;b=2"));
        assert!(html.contains("Rejected model"));
        assert!(html.contains("Segments and publications"));
        assert!(html.contains("&lt;b&gt;vip&lt;/b&gt;") && html.contains("HTTP 500 &lt;oops&gt;"));
        assert!(!html.contains("Low confidence"));
        assert!(!html.contains("<link") && !html.contains("<img") && !html.contains("<script"));
    }

    #[test]
    fn renders_without_validation_data_or_vectors() {
        let mut r = sample_report();
        r.card.metrics = None;
        r.card.importance.clear();
        r.card.cutoffs.clear();
        r.card.features.clear();
        r.card.top_factors_by_bucket.clear();
        r.card.timings.clear();
        r.rejected_card = None;
        r.description = None;
        r.scored = 0;
        r.mean_probability = f64::NAN;
        r.buckets.clear();
        r.score_histogram.clear();
        r.top_factors_by_bucket.clear();
        r.data = DataSummary {
            events_read: 0,
            events_used: 0,
            events_rejected: 0,
            profiles: 0,
            eligible: 0,
            findings: Vec::new(),
        };
        r.timings.clear();
        r.outputs.clear();
        r.warnings.clear();
        let html = render(&r);
        assert!(html.contains("No validation data"));
        assert!(!html.contains("NaN"));
        assert!(html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn single_bucket_zero_counts_and_non_finite_values() {
        let mut r = sample_report();
        r.buckets.truncate(1);
        r.score_histogram = vec![0; 20];
        r.top_factors_by_bucket.truncate(1);
        if let Some(m) = r.card.metrics.as_mut() {
            for d in &mut m.deciles {
                d.count = 0;
                d.lift = f64::INFINITY;
                d.cumulative_gain = f64::NAN;
            }
            for b in &mut m.calibration_curve {
                b.count = 0;
                b.mean_predicted = f64::NEG_INFINITY;
            }
            m.auc = None;
            m.log_loss = f64::INFINITY;
        }
        r.card.importance[0].share = f64::NAN;
        r.card.importance.truncate(1);
        let html = render(&r);
        assert!(!html.contains("NaN"));
        assert!(!html.contains("=\"inf"));
        assert!(!html.contains("=\"-inf"));
        assert!(html.matches("<svg").count() >= 5);
    }

    #[test]
    fn low_confidence_shows_banner_with_reason() {
        let mut r = sample_report();
        r.confidence = Confidence::Low;
        r.card.confidence = Confidence::Low;
        r.card.fallback_reason = Some("only 3 positives <30".to_string());
        let html = render(&r);
        assert!(html.contains("Low confidence"));
        assert!(html.contains("only 3 positives &lt;30"));
    }

    #[test]
    fn too_few_positives_are_not_headlined_as_an_auc() {
        let mut r = sample_report();
        r.confidence = Confidence::Low;
        let m = r.card.metrics.as_mut().expect("metrics");
        (m.auc, m.positives, m.negatives, m.measurable) = (Some(0.964), 5, 1_995, false);
        let html = render(&r);
        assert!(html.contains("too few positives to measure"), "{html}");
        assert!(html.contains("5 positives · 1,995 negatives"), "{html}");
        assert!(
            !html.contains("0.964"),
            "a meaningless AUC is shown: {html}"
        );
    }

    #[test]
    fn shows_the_protocol_and_the_expected_next_window() {
        let mut r = sample_report();
        r.card.protocol = Some(propensity_model::card::Protocol {
            kind: "purged out-of-time".into(),
            description: "no training label window overlaps the validation window".into(),
            validation_cutoff: "2024-04-01T00:00:00Z".into(),
            search_cutoffs: vec!["2024-03-02T00:00:00Z".into()],
            fit_cutoffs: vec!["2024-04-01T00:00:00Z".into()],
            embargo: "30d".into(),
            stride: "10d".into(),
            search_rows: ClassCounts {
                rows: 100,
                positives: 10,
                negatives: 90,
            },
        });
        r.card.expected = Some(propensity_model::metrics::Expected {
            auc: Some(0.777),
            pr_auc: Some(0.333),
            lift_at_10: Some(3.21),
            base_rate: 0.125,
            profiles: 1_000,
        });
        let html = render(&r);
        assert!(html.contains("Training protocol") && html.contains("purged out-of-time"));
        assert!(
            html.contains("AUC 0.777") && html.contains("lift at 10 % 3.21"),
            "{html}"
        );
        assert!(
            html.contains("12.50% (validation cutoff: 10.00%)"),
            "{html}"
        );
    }

    #[test]
    fn output_is_deterministic() {
        let r = sample_report();
        assert_eq!(render(&r), render(&r));
    }

    #[test]
    fn helpers() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_count(123), "123");
        assert!((nice_max(7.0) - 10.0).abs() < 1e-12);
        assert!((nice_max(0.05) - 0.05).abs() < 1e-12);
        assert!((nice_max(0.3) - 0.5).abs() < 1e-12);
        assert!((nice_max(f64::NAN) - 1.0).abs() < 1e-12);
        assert!((nice_max(0.0) - 1.0).abs() < 1e-12);
        assert_eq!(pct_tick(0.02), "2%");
        assert_eq!(pct_tick(0.005), "0.5%");
    }
}
