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

/// The `publish` stage: the score table to every sink.
pub(crate) fn publish(cx: &mut RunContext<'_>, table: &Table, segs: &Segmented) -> Published {
    let job = cx.job;
    let stage = cx.stage("publish", Some(job.sinks.len() as u64));
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
        failpoint: (cx.opts.env)("PROPENSITY_FAILPOINT"),
    };
    let ctx = propensity_sinks::Context {
        job_dir: cx.job_dir.to_path_buf(),
        env: cx.opts.env.clone(),
        state_dir: Some(cx.registry.root().to_path_buf()),
    };
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
    Published {
        id: publication.id,
        records,
        failed,
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
            .filter(|p| p.status != propensity_sinks::Status::Failed)
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
