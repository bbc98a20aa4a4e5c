//! `propensity daemon` and `propensity backfill`: thin wrappers over `propensity-daemon`.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use propensity_core::Domain;
use propensity_daemon::ledger::RunKind;
use propensity_daemon::{BackfillOptions, DaemonError, DaemonOptions};

use crate::{BackfillKind, CliError, OutputFormat, io_error};

fn daemon_error(e: DaemonError) -> CliError {
    CliError {
        domain: if e.user {
            Domain::User
        } else {
            Domain::External
        },
        error: anyhow::anyhow!("{}", e.message),
    }
}

/// The executable runs are started from: this one.
pub fn exe() -> Result<PathBuf, CliError> {
    std::env::current_exe().map_err(|e| CliError {
        domain: Domain::Internal,
        error: anyhow::anyhow!("cannot find the propensity executable to start runs from: {e}"),
    })
}

pub fn serve(opts: DaemonOptions) -> Result<i32, CliError> {
    propensity_daemon::serve(opts).map_err(daemon_error)?;
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
pub fn backfill(
    job: &Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    kind: BackfillKind,
    dry_run: bool,
    state: &Path,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let kinds = match kind {
        BackfillKind::Score => vec![RunKind::Score],
        BackfillKind::Train => vec![RunKind::Train],
        BackfillKind::All => vec![RunKind::Score, RunKind::Train],
    };
    let r = propensity_daemon::backfill(&BackfillOptions {
        job_file: job.to_path_buf(),
        state: state.to_path_buf(),
        from,
        to,
        kinds,
        dry_run,
        exe: exe()?,
    })
    .map_err(daemon_error)?;
    let w = match format {
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&r).unwrap_or_default()
        ),
        OutputFormat::Text => (|| {
            let what = if dry_run {
                "missing"
            } else if r.daemon.is_some() {
                "queued"
            } else {
                "run"
            };
            writeln!(
                out,
                "job {}: {} occurrence(s) from {} to {} {what}; {} already in the ledger",
                r.job,
                r.items.len(),
                r.from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                r.to.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                r.recorded
            )?;
            for i in &r.items {
                writeln!(
                    out,
                    "  {:<5} {}  {}{}",
                    i.kind.as_str(),
                    i.scheduled_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                    i.status,
                    i.message
                        .as_ref()
                        .map(|m| format!(": {}", m.lines().next().unwrap_or_default()))
                        .unwrap_or_default()
                )?;
            }
            if let Some(d) = &r.daemon
                && !dry_run
                && !r.items.is_empty()
            {
                writeln!(
                    out,
                    "the daemon {d} holds the lease and runs them; follow them with GET /api/v1/jobs/{}/runs",
                    r.job
                )?;
            }
            Ok(())
        })(),
    };
    w.map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))?;
    Ok(if r.ok() {
        0
    } else {
        Domain::External.exit_code()
    })
}
