//! The `propensity` command line. Thin: it parses arguments, reads files and prints what
//! the library crates return. [`run`] is the whole program minus logging set-up, so tests
//! drive it in process.

mod daemon;
mod data;
mod model;
mod plugins;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use propensity_config::Diagnostic;
use propensity_core::{Domain, Goal, Job};
use serde_json::json;

/// Customer AI you run yourself: calibrated conversion and churn propensities with reasons,
/// described as TOML jobs.
#[derive(Debug, Parser)]
#[command(name = "propensity", version, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, e.g. `RUST_LOG=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people: one block per problem, `file:line:col`, key and hint.
    Text,
    /// For machines: one JSON document with every finding.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check job files: every problem in each file, with file:line:col, key and hint.
    ///
    /// Exit status: 0 when every file is valid, 2 when any is not.
    Validate {
        /// Job files, or directories whose `*.toml` files are checked (not recursively).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Check that each goal plugin is found and matches its sha256 pin, but do not load
        /// it (no plugin code runs: for CI on untrusted branches). Its parameters are then
        /// checked by the first run.
        #[arg(long)]
        no_load_plugins: bool,
    },
    /// Print the JSON Schema of job files (version 1), for editors and other tools.
    ///
    /// With Taplo / Even Better TOML, start a job file with
    /// `#:schema ./job.schema.json` to get completion and checks while typing.
    Schema {
        /// Write the schema to this file instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Read and check a job's data without training: the data-check report, eligible
    /// profiles, positives and negatives per training cutoff, and whether there is enough
    /// to train on (with concrete changes to the job when there is not).
    ///
    /// Exit status: 0 when the data checks pass (even if the data is insufficient: a run
    /// then falls back to a simple model), 2 for a bad job or data that fails the checks,
    /// 3 when a store or service fails.
    #[command(name = "dry-run")]
    DryRun {
        /// The job file.
        #[arg(value_name = "JOB")]
        job: PathBuf,
        /// The as-of time: RFC 3339 (`2026-11-29T03:00:00Z`) or a date (midnight UTC).
        /// Default: now.
        #[arg(long, value_name = "TIME", value_parser = data::parse_time)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Also write the data-check report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Compute a job's point-in-time features and labels at every cutoff and write them to
    /// a Parquet file (one row per eligible profile and cutoff), with the timings per stage.
    ///
    /// For inspecting what a model learns from, or training elsewhere.
    Features {
        /// The job file.
        #[arg(value_name = "JOB")]
        job: PathBuf,
        /// The as-of time: RFC 3339 or a date (midnight UTC). Default: now.
        #[arg(long, value_name = "TIME", value_parser = data::parse_time)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// Training cutoffs (default: the job's `model.snapshots`); 0 computes only the
        /// scoring cutoff.
        #[arg(long, value_name = "N")]
        snapshots: Option<u32>,
        /// The Parquet file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// One run of a job: read and check the data, compute features, train when due (no
    /// model yet, the job's training settings changed, or --train), score every eligible
    /// profile with its reasons, and write the score table, the model card and an HTML
    /// report. Progress goes to stderr, the summary to stdout.
    ///
    /// Exit status: 0 on success (also when a fallback model or the previous champion
    /// scored: the summary says so), 2 for a bad job or data, 3 when a store or any sink
    /// fails (the other sinks still publish; the summary names the failed ones).
    Run {
        /// The job file.
        #[arg(value_name = "JOB")]
        job: PathBuf,
        /// The as-of time: RFC 3339 or a date (midnight UTC). Default: now.
        #[arg(long, value_name = "TIME", value_parser = data::parse_time)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// Train a new model even if the champion was trained on this configuration.
        #[arg(long)]
        train: bool,
        /// Publish even when a run with a later as-of time already has. Without it an older
        /// run (a backfill) writes its scores to its run directory and sends them to no sink
        /// (`stale`), so sinks never roll back.
        #[arg(long)]
        publish_stale: bool,
        #[command(flatten)]
        state: StateDir,
        /// Output format of the summary.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Erase profiles: remove them from the current publication of every sink of every job
    /// that has run on this state directory (and of `--job` files), from the run files kept
    /// in the state directory, and add them to the suppression list every later run honours.
    ///
    /// Exit status: 0 when every sink was reached, 3 when a sink failed (the profiles are
    /// suppressed either way; run `forget` again to retry the sinks).
    Forget {
        /// Profile ids, as in the events' profile id column.
        #[arg(required = true, value_name = "PROFILE_ID")]
        profile_ids: Vec<String>,
        /// Also erase from this job's sinks (repeatable); jobs that ran on the state
        /// directory are found without it.
        #[arg(long = "job", value_name = "JOB")]
        jobs: Vec<PathBuf>,
        #[command(flatten)]
        state: StateDir,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Send the batches a job's webhook sinks could not deliver (kept in the state
    /// directory's outbox) again, with the same idempotency keys.
    ///
    /// Exit status: 0 when the outbox is empty afterwards, 3 when batches remain.
    Replay {
        /// The job file.
        #[arg(value_name = "JOB")]
        job: PathBuf,
        #[command(flatten)]
        state: StateDir,
    },
    /// Goal plugins: list the ones found, or check one library.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// One profile's score and reasons from the job's latest run.
    Explain {
        /// The job file.
        #[arg(value_name = "JOB")]
        job: PathBuf,
        /// The profile id, as in the events' profile id column.
        #[arg(value_name = "PROFILE_ID")]
        profile_id: String,
        #[command(flatten)]
        state: StateDir,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Run every job in a directory on its schedule, with an HTTP API and Prometheus metrics.
    ///
    /// Each run is a child process (`propensity run`), so a crash ends that run as `crashed`
    /// and the daemon goes on. Every scheduled occurrence ends with exactly one outcome in the
    /// ledger (`<state>/ledger.sqlite`). Job files are read again when they change; a broken
    /// file is reported and skipped. SIGTERM stops scheduling, lets running runs finish for
    /// --shutdown-grace, stops the rest (they run again at the next start) and exits 0.
    Daemon {
        /// Directory of job files (`*.toml`, not recursive).
        #[arg(long, value_name = "DIR")]
        jobs: PathBuf,
        #[command(flatten)]
        state: StateDir,
        /// Address of the HTTP API. Off loopback, PROPENSITY_API_TOKEN is required.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Bearer token the API requires (`Authorization: Bearer <token>`), at least 16
        /// characters.
        #[arg(
            long = "api-token",
            value_name = "TOKEN",
            env = "PROPENSITY_API_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        /// How long running runs may go on after SIGTERM before they are stopped.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_span)]
        shutdown_grace: std::time::Duration,
        /// Time-to-live of the ledger lease; a daemon that stops renewing it is replaced by a
        /// standby daemon on the same state directory after this long.
        #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_span)]
        lease_ttl: std::time::Duration,
        /// How often the jobs directory is read again.
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_span)]
        reload_every: std::time::Duration,
    },
    /// Run a job's scheduled occurrences between two times that the ledger does not have,
    /// each with its scheduled time as as-of time, oldest first. With a daemon running on the
    /// state directory they are queued for it; otherwise they run here, one at a time.
    ///
    /// Exit status: 0 when every occurrence succeeded (or was queued, or listed with
    /// --dry-run), 2 for a bad job or range, 3 when any run failed.
    Backfill {
        /// The job file (it needs a [schedule]).
        #[arg(value_name = "JOB")]
        job: PathBuf,
        /// First time (inclusive): RFC 3339 or a date (midnight UTC).
        #[arg(long, value_name = "TIME", value_parser = data::parse_time)]
        from: chrono::DateTime<chrono::Utc>,
        /// Last time (inclusive): RFC 3339 or a date (midnight UTC).
        #[arg(long, value_name = "TIME", value_parser = data::parse_time)]
        to: chrono::DateTime<chrono::Utc>,
        /// Which occurrences: the score schedule, the train schedule, or both.
        #[arg(long, value_enum, default_value_t = BackfillKind::Score)]
        kind: BackfillKind,
        /// Only list the missing occurrences.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        state: StateDir,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Generate sample data, write the example job next to it, train, score and print the
    /// summary with the path of the HTML report.
    Demo {
        /// Directory for the sample data, the job file and (by default) the state.
        #[arg(long, value_name = "DIR", default_value = "data/demo")]
        dir: PathBuf,
        /// Number of sample profiles.
        #[arg(long, default_value_t = 20_000)]
        profiles: usize,
        /// State directory (default: DIR/state).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Write sample data: e-commerce events and profiles with a hidden propensity that drives
    /// future behaviour, deterministic for a seed (for the demo, tests and benchmarks).
    Generate(GenerateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackfillKind {
    Score,
    Train,
    All,
}

fn parse_span(s: &str) -> Result<std::time::Duration, String> {
    propensity_core::Span::parse(s)
        .map(propensity_core::Span::as_duration)
        .map_err(|e| format!("{e} (write e.g. `30s`, `2m`)"))
}

/// `propensity plugins …`
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Every goal plugin in the plugin directories (PROPENSITY_PLUGIN_PATH, then
    /// `<state>/plugins`, then next to the executable): name, version, path, sha256 and
    /// parameters.
    List {
        /// Also search `<DIR>/plugins`.
        #[arg(long = "state", value_name = "DIR", env = "PROPENSITY_STATE")]
        state: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Load one plugin library as a run would (ABI version, metadata), validate parameters
    /// with it and label one synthetic profile; prints its sha256 to pin in a job.
    ///
    /// Exit status: 0 when the plugin loads and accepts the parameters, 2 otherwise.
    Check {
        /// The library (`libmy_goal.so`, `my_goal.dll`, `libmy_goal.dylib`).
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Parameters as a JSON object, as the job's `[goal] params` would give them.
        #[arg(long, value_name = "JSON")]
        params: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// `--state DIR`: where the model registry and run records live.
#[derive(Debug, clap::Args)]
pub struct StateDir {
    /// State directory: model registry and run records.
    #[arg(
        long = "state",
        value_name = "DIR",
        env = "PROPENSITY_STATE",
        default_value = ".propensity"
    )]
    pub path: PathBuf,
}

/// Arguments of `propensity generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Output directory: `events/`, `profiles/` and `truth/` are replaced there.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of profiles.
    #[arg(long, default_value_t = 10_000)]
    pub profiles: usize,
    /// Scale activity so that about this many events are written.
    #[arg(long, value_name = "M")]
    pub events: Option<u64>,
    /// Days of history before the end (default 450; 548 — a year and a half — for
    /// `--shape purchases`).
    #[arg(long)]
    pub days: Option<u32>,
    /// Random seed; the same seed and end give the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Events end before this time (RFC 3339 or a date). Default: today, midnight UTC.
    #[arg(long, value_name = "TIME", value_parser = data::parse_time)]
    pub end: Option<chrono::DateTime<chrono::Utc>>,
    /// Write NDJSON (nested objects) instead of Parquet.
    #[arg(long)]
    pub ndjson: bool,
    /// Events per file.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows_per_file: usize,
    /// Events per Parquet row group.
    #[arg(long, default_value_t = 131_072)]
    pub row_group_size: usize,
    /// `experience`: web-shop experience events and profiles (the demo data); `purchases`:
    /// orders only (`purchase` events with `quantity` and `value`) of one customer cohort
    /// that ages, like a retailer's order export.
    #[arg(long, value_enum, default_value_t = Shape::Experience)]
    pub shape: Shape,
}

/// What `propensity generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    Experience,
    Purchases,
}

/// Parses `args` (the first item is the program name) and runs the command.
/// Returns the process exit code.
pub fn run(
    args: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    match Cli::try_parse_from(args) {
        Ok(cli) => execute(cli, out, err),
        Err(e) => {
            let text = e.render().to_string();
            if e.use_stderr() {
                let _ = write!(err, "{text}");
                Domain::User.exit_code()
            } else {
                let _ = write!(out, "{text}");
                0
            }
        }
    }
}

/// Runs an already parsed command line.
pub fn execute(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = match cli.command {
        Command::Validate {
            paths,
            format,
            no_load_plugins,
        } => validate(&paths, format, !no_load_plugins, out, err),
        Command::Schema { output } => schema(output.as_deref(), out),
        Command::DryRun {
            job,
            as_of,
            format,
            report,
        } => data::dry_run(&job, as_of, format, report.as_deref(), out, err),
        Command::Features {
            job,
            as_of,
            snapshots,
            out: file,
        } => data::features(&job, as_of, snapshots, &file, out, err),
        Command::Generate(args) => data::generate(&args, out),
        Command::Run {
            job,
            as_of,
            train,
            publish_stale,
            state,
            format,
        } => model::run(
            &job,
            as_of,
            model::RunFlags {
                train,
                publish_stale,
            },
            &state.path,
            format,
            out,
            err,
        ),
        Command::Explain {
            job,
            profile_id,
            state,
            format,
        } => model::explain(&job, &profile_id, &state.path, format, out, err),
        Command::Forget {
            profile_ids,
            jobs,
            state,
            format,
        } => model::forget(&profile_ids, &jobs, &state.path, format, out),
        Command::Replay { job, state } => model::replay(&job, &state.path, out, err),
        Command::Plugins(PluginsCommand::List { state, format }) => {
            plugins::list(state.as_deref(), format, out, err)
        }
        Command::Plugins(PluginsCommand::Check {
            path,
            params,
            format,
        }) => plugins::check(&path, params.as_deref(), format, out),
        Command::Demo {
            dir,
            profiles,
            state,
        } => model::demo(&dir, profiles, state.as_deref(), out, err),
        Command::Daemon {
            jobs,
            state,
            listen,
            token,
            shutdown_grace,
            lease_ttl,
            reload_every,
        } => daemon::exe().and_then(|exe| {
            daemon::serve(propensity_daemon::DaemonOptions {
                jobs,
                state: state.path,
                listen,
                token,
                shutdown_grace,
                lease_ttl,
                reload_every,
                tick: std::time::Duration::from_millis(200),
                exe,
            })
        }),
        Command::Backfill {
            job,
            from,
            to,
            kind,
            dry_run,
            state,
            format,
        } => daemon::backfill(&job, from, to, kind, dry_run, &state.path, format, out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "error: {:#}", e.error);
            e.domain.exit_code()
        }
    }
}

#[derive(Debug)]
struct CliError {
    domain: Domain,
    error: anyhow::Error,
}

fn user(error: anyhow::Error) -> CliError {
    CliError {
        domain: Domain::User,
        error,
    }
}

fn io_error(error: anyhow::Error) -> CliError {
    CliError {
        domain: Domain::External,
        error,
    }
}

/// The files named by `paths`: files as given, directories' `*.toml` files sorted by name.
fn job_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CliError> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p)
            .map_err(|e| user(anyhow::anyhow!("cannot read `{}`: {e}", p.display())))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| user(anyhow::anyhow!("cannot list `{}`: {e}", p.display())))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "toml"))
                .collect();
            if found.is_empty() {
                return Err(user(anyhow::anyhow!(
                    "no `*.toml` job files in directory `{}`",
                    p.display()
                )));
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn summary(job: &Job) -> String {
    let goal = match &job.goal {
        Goal::Conditions(g) => format!("{} within {}", g.outcome, g.window),
        Goal::Plugin(g) => format!("plugin `{}` within {}", g.plugin, g.window),
    };
    let sinks: Vec<String> = job
        .sinks
        .iter()
        .map(|s| format!("{} ({})", s.name, s.kind.type_name()))
        .collect();
    format!(
        "job `{}`: {goal}; {} segment(s); sinks: {}",
        job.name,
        job.segments.len(),
        sinks.join(", ")
    )
}

fn validate(
    paths: &[PathBuf],
    format: OutputFormat,
    load_plugins: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let files = job_files(paths)?;
    let mut reports = Vec::new();
    let mut invalid = 0usize;
    for file in &files {
        let shown = file.display().to_string();
        let _span = tracing::info_span!("validate", file = %shown).entered();
        let text = std::fs::read_to_string(file);
        let result = match &text {
            Ok(text) => propensity_config::load_str(text, &shown),
            Err(e) => Err(vec![Diagnostic {
                file: shown.clone(),
                line: 1,
                column: 1,
                key: "(top level)".into(),
                code: "unreadable",
                message: format!("cannot read the file: {e}"),
                hint: (e.kind() == std::io::ErrorKind::InvalidData)
                    .then(|| "job files must be UTF-8 text".to_owned()),
            }]),
        };
        // A plugin goal is checked by its plugin: found, pinned, ABI, parameters.
        let result = match result {
            Ok(job) => {
                let text = text.as_deref().unwrap_or_default();
                match plugins::validate_goal(&job, text, file, load_plugins) {
                    Some(d) => Err(vec![d]),
                    None => Ok(job),
                }
            }
            Err(d) => Err(d),
        };
        match &result {
            Ok(job) => tracing::debug!(job = %job.name, "valid"),
            Err(d) => {
                invalid += 1;
                tracing::debug!(problems = d.len(), "invalid");
            }
        }
        reports.push((file, result));
    }
    let w = |r: std::io::Result<()>| {
        r.map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))
    };
    match format {
        OutputFormat::Text => {
            for (file, result) in &reports {
                match result {
                    Ok(job) => {
                        w(writeln!(out, "ok: {} ({})", file.display(), summary(job)))?;
                        if let Goal::Plugin(g) = &job.goal
                            && g.sha256.is_none()
                        {
                            w(writeln!(
                                err,
                                "warning: {}: goal plugin `{}` is not pinned: any library of that name in the plugin directories runs in every run; pin it with `sha256 = \"…\"` in [goal] (`propensity plugins check <library>` prints the hash)",
                                file.display(),
                                g.plugin
                            ))?;
                        }
                    }
                    Err(diags) => {
                        for d in diags {
                            w(writeln!(err, "{d}"))?;
                        }
                        w(writeln!(
                            err,
                            "invalid: {} ({} problem{})",
                            file.display(),
                            diags.len(),
                            if diags.len() == 1 { "" } else { "s" }
                        ))?;
                    }
                }
            }
            let line = format!(
                "{} job file(s) checked: {} valid, {invalid} invalid",
                files.len(),
                files.len() - invalid
            );
            if invalid > 0 {
                w(writeln!(err, "{line}"))?
            } else {
                w(writeln!(out, "{line}"))?
            }
        }
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = reports
                .iter()
                .map(|(file, result)| match result {
                    Ok(job) => json!({"file": file.display().to_string(), "valid": true, "job": job.name, "diagnostics": []}),
                    Err(d) => json!({"file": file.display().to_string(), "valid": false, "diagnostics": d}),
                })
                .collect();
            let doc = json!({"files": items, "valid": files.len() - invalid, "invalid": invalid});
            w(writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&doc).unwrap_or_default()
            ))?;
        }
    }
    Ok(if invalid > 0 {
        Domain::User.exit_code()
    } else {
        0
    })
}

fn schema(output: Option<&Path>, out: &mut dyn Write) -> Result<i32, CliError> {
    let text =
        serde_json::to_string_pretty(&propensity_config::schema()).map_err(|e| CliError {
            domain: Domain::Internal,
            error: e.into(),
        })? + "\n";
    match output {
        Some(path) => {
            // Write next to the target, then rename: a reader never sees half a schema.
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, &text)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| io_error(anyhow::anyhow!("cannot write `{}`: {e}", path.display())))?;
        }
        None => out
            .write_all(text.as_bytes())
            .map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))?,
    }
    Ok(0)
}
