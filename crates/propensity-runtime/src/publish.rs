//! The `write` and `publish` stages: the run's score table as Parquet in the run directory,
//! then the same rows to every sink of the job, concurrently; one failing sink does not stop
//! the others.

use std::path::PathBuf;

use arrow::array::RecordBatch;
use propensity_core::Job;
use propensity_engine::rfc3339;

use crate::context::RunContext;
use crate::load::Inputs;
use crate::registry::write_atomic;
use crate::report::{Output, PublicationRecord};
use crate::score::Scoring;
use crate::segments::Segmented;
use crate::train::Chosen;
use crate::{Progress, RunError, scores};

/// The run's score table, written.
pub(crate) struct Table {
    pub batch: RecordBatch,
    /// The Parquet bytes of `scores.parquet` (the publication id is derived from them).
    pub bytes: Vec<u8>,
    pub run_dir: PathBuf,
    pub scores_path: PathBuf,
    pub rows: usize,
}

/// What the sinks did.
pub(crate) struct Published {
    pub id: String,
    pub records: Vec<PublicationRecord>,
    /// `name: why` of each sink that failed.
    pub failed: Vec<String>,
    /// A run with a later as-of time has published: this one was not sent anywhere.
    pub stale: bool,
    /// Held until the run's latest-run record is written.
    pub lock: crate::registry::PublishLock,
}

/// The as-of time of the job's latest published run when it is later than this run's.
fn newer_run(cx: &RunContext<'_>) -> Result<Option<String>, RunError> {
    let Some(latest) = cx.registry.latest_run()? else {
        return Ok(None);
    };
    let later = chrono::DateTime::parse_from_rfc3339(&latest.as_of)
        .is_ok_and(|t| t.timestamp_micros() > cx.as_of_us);
    Ok(later.then_some(latest.as_of))
}

/// The `write` stage: the score table with segment memberships, in the run directory.
pub(crate) fn write(
    cx: &mut RunContext<'_>,
    inp: &Inputs,
    chosen: &Chosen,
    scoring: &Scoring,
    segs: &Segmented,
) -> Result<Table, RunError> {
    let stage = cx.stage("write", None);
    let goal = crate::goal_text(cx.job);
    let cols = scores::RunColumns {
        job: &cx.job.name,
        goal: &goal,
        as_of_us: cx.as_of_us,
        model_version: &chosen.model.version,
        config_hash: &cx.config_hash,
        confidence: chosen.confidence().as_str(),
        names: &chosen.model.features,
        labels: &chosen.model.labels,
    };
    let x = scoring.matrix(inp);
    let batch = scores::batch(
        &cols,
        &inp.scoring_ids(),
        &scoring.scored,
        &segs.membership,
        &|i, j| x.get(i, j),
    )?;
    let bytes = scores::parquet_bytes(&batch)?;
    let run_dir = cx.registry.run_dir(&cx.run_id);
    let scores_path = run_dir.join("scores.parquet");
    write_atomic(&scores_path, &bytes)?;
    cx.done(stage, &scores_path.display().to_string());
    Ok(Table {
        batch,
        bytes,
        run_dir,
        scores_path,
        rows: scoring.scored.len(),
    })
}

/// The `publish` stage: the score table to every sink, unless a run with a later as-of time
/// has published (then every sink is `stale`: sinks never roll back).
pub(crate) fn publish(
    cx: &mut RunContext<'_>,
    table: &Table,
    segs: &Segmented,
) -> Result<Published, RunError> {
    let job = cx.job;
    let stage = cx.stage("publish", Some(job.sinks.len() as u64));
    // One publisher per job at a time; the stale check below sees what the other published.
    let progress = cx.progress;
    let lock = cx.registry.publish_lock(&|m| progress.warn(m))?;
    if !cx.opts.publish_stale
        && let Some(newer) = newer_run(cx)?
    {
        let message = format!(
            "not sent: the run as of {newer} has published, and this older one must not replace its scores (its scores are in the run directory; --publish-stale sends them)"
        );
        cx.warn(format!(
            "a run as of {newer} has already published: this run as of {} publishes to no sink",
            rfc3339(cx.as_of_us)
        ));
        // Nothing is sent, so no sink client is built (no connection, no `${VAR}` lookup).
        let records: Vec<PublicationRecord> = job
            .sinks
            .iter()
            .map(|spec| PublicationRecord {
                sink: spec.name.clone(),
                kind: spec.kind.type_name().to_owned(),
                status: propensity_sinks::Status::Stale,
                rows: 0,
                location: String::new(),
                message: message.clone(),
                seconds: 0.0,
            })
            .collect();
        cx.done(stage, &format!("{} sinks skipped as stale", records.len()));
        return Ok(Published {
            id: propensity_sinks::publication_id(
                &cx.opts.as_of.format("%Y%m%dT%H%M%SZ").to_string(),
                &table.bytes,
            ),
            records,
            failed: Vec::new(),
            stale: true,
            lock,
        });
    }
    let publication = propensity_sinks::Publication {
        job: job.name.clone(),
        id: propensity_sinks::publication_id(
            &cx.opts.as_of.format("%Y%m%dT%H%M%SZ").to_string(),
            &table.bytes,
        ),
        run_id: cx.run_id.clone(),
        as_of: rfc3339(cx.as_of_us),
        batch: table.batch.clone(),
        segments: segs.segments.iter().map(|s| s.name.clone()).collect(),
        state_dir: cx.registry.root().to_path_buf(),
        // Fault injection exists in debug builds (the crash tests) only: a release build
        // ignores the variable, so no environment can make production runs abort.
        failpoint: if cfg!(debug_assertions) {
            (cx.opts.env)("PROPENSITY_FAILPOINT")
        } else {
            None
        },
        fence: cx.opts.fence.clone(),
    };
    let ctx = sink_context(cx);
    let records = cx
        .rt
        .block_on(publish_all(job, &ctx, &publication, cx.progress));
    let mut failed = Vec::new();
    for p in &records {
        if p.status == propensity_sinks::Status::Failed {
            failed.push(format!("{}: {}", p.sink, p.message));
            cx.warn(format!(
                "sink `{}` ({}) failed: {}",
                p.sink, p.kind, p.message
            ));
        }
    }
    cx.done(
        stage,
        &format!(
            "{} of {} sinks published ({})",
            records
                .iter()
                .filter(|p| p.status != propensity_sinks::Status::Failed)
                .count(),
            records.len(),
            publication.id
        ),
    );
    Ok(Published {
        id: publication.id,
        records,
        failed,
        stale: false,
        lock,
    })
}

fn sink_context(cx: &RunContext<'_>) -> propensity_sinks::Context {
    propensity_sinks::Context {
        job_dir: cx.job_dir.to_path_buf(),
        env: cx.opts.env.clone(),
        state_dir: Some(cx.registry.root().to_path_buf()),
    }
}

/// The outputs of the table and of every sink that published.
pub(crate) fn outputs(table: &Table, published: &Published) -> Vec<Output> {
    let mut outputs = vec![Output {
        kind: "scores".into(),
        location: table.scores_path.display().to_string(),
        rows: Some(table.rows),
    }];
    outputs.extend(
        published
            .records
            .iter()
            .filter(|p| {
                !matches!(
                    p.status,
                    propensity_sinks::Status::Failed | propensity_sinks::Status::Stale
                )
            })
            .map(|p| Output {
                kind: format!("sink:{}", p.sink),
                location: p.location.clone(),
                rows: Some(p.rows),
            }),
    );
    outputs
}

/// Publishes to every sink of the job concurrently; each sink's outcome is recorded, a
/// failure included (it never stops the other sinks).
pub async fn publish_all(
    job: &Job,
    ctx: &propensity_sinks::Context,
    publication: &propensity_sinks::Publication,
    progress: &dyn Progress,
) -> Vec<PublicationRecord> {
    let futures = propensity_sinks::build_all(job, ctx)
        .into_iter()
        .zip(&job.sinks)
        .map(|((name, sink), spec)| async move {
            let started = std::time::Instant::now();
            let kind = spec.kind.type_name().to_owned();
            let result = match sink {
                Ok(sink) => sink.publish(publication).await,
                Err(e) => Err(e),
            };
            let seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(p) => PublicationRecord {
                    sink: name,
                    kind,
                    status: p.status,
                    rows: p.rows,
                    location: p.location,
                    message: p.detail.unwrap_or_default(),
                    seconds,
                },
                Err(e) => PublicationRecord {
                    sink: name,
                    kind,
                    status: propensity_sinks::Status::Failed,
                    rows: 0,
                    location: String::new(),
                    message: e.message,
                    seconds,
                },
            }
        });
    let out = futures::future::join_all(futures).await;
    progress.advance(out.len() as u64);
    out
}
