//! Segments: which scored profiles each `[[segments]]` rule selects, and which of them are
//! held out of activation.
//!
//! With no `[[segments]]`, a job gets `high`, `medium` and `low`, one per bucket.
//!
//! Holdout is deterministic: a member of segment `s` is held out when
//! `u(profile_id, s, seed) < holdout`, where `u` is a uniform number in [0, 1) from a hash of
//! the three. The same profile stays in (or out of) the holdout group of a segment from run to
//! run as long as the seed is unchanged, which is what lift measurement needs.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use propensity_core::Job;
use propensity_core::expr::{CmpOp, Expr, Literal};
use propensity_engine::Loaded;
use propensity_model::pipeline::Scored;

use crate::RunError;
use crate::scores::Membership;

/// A segment as the run applies it.
#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub rule: Expr,
    pub holdout: f64,
}

/// The job's segments, or the three bucket segments when it defines none.
pub fn effective(job: &Job) -> Vec<Segment> {
    if job.segments.is_empty() {
        return ["high", "medium", "low"]
            .iter()
            .map(|b| Segment {
                name: (*b).to_owned(),
                rule: Expr::Compare {
                    op: CmpOp::Eq,
                    left: Box::new(Expr::Field {
                        path: vec!["bucket".into()],
                    }),
                    right: Box::new(Expr::Literal {
                        value: Literal::String((*b).to_owned()),
                    }),
                },
                holdout: 0.0,
            })
            .collect();
    }
    job.segments
        .iter()
        .map(|s| Segment {
            name: s.name.clone(),
            rule: s.rule.expr.clone(),
            holdout: s.holdout,
        })
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A uniform number in [0, 1) from the profile, the segment and the seed.
pub fn holdout_draw(profile_id: &str, segment: &str, seed: u64) -> f64 {
    let h = propensity_model::mix(
        fnv1a(profile_id.as_bytes()) ^ propensity_model::mix(fnv1a(segment.as_bytes()) ^ seed),
    );
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Inputs of [`membership`].
#[derive(Debug)]
pub struct Rows<'a> {
    /// Profile indices of the scored rows.
    pub rows: &'a [u32],
    pub ids: &'a [&'a str],
    pub scored: &'a [Scored],
    /// The model's feature names, indexed by `Factor::feature`.
    pub features: &'a [String],
    pub model_version: &'a str,
    pub confidence: &'a str,
}

/// Evaluates every segment over the scored rows. Returns the memberships and warnings
/// (e.g. a `has_factor` feature the model does not have).
pub fn membership(
    rt: &tokio::runtime::Runtime,
    segments: &[Segment],
    loaded: &Loaded,
    r: &Rows<'_>,
    seed: u64,
) -> Result<(Membership, Vec<String>), RunError> {
    let n = r.scored.len();
    let mut warnings = Vec::new();
    let mut asked = Vec::new();
    for s in segments {
        propensity_engine::segments::factors_used(&s.rule, &mut asked);
    }
    let score_fields = [
        "profile_id",
        "probability",
        "score",
        "percentile",
        "bucket",
        "confidence",
        "model_version",
        "top_factor",
    ];
    let mut fields = vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("probability", DataType::Float64, false),
        Field::new("score", DataType::Float64, false),
        Field::new("percentile", DataType::Float64, false),
        Field::new("bucket", DataType::Utf8, false),
        Field::new("confidence", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("top_factor", DataType::Utf8, true),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(r.ids.to_vec())),
        Arc::new(Float64Array::from_iter_values(
            r.scored.iter().map(|s| s.probability),
        )),
        Arc::new(Float64Array::from_iter_values(
            r.scored.iter().map(|s| f64::from(s.score)),
        )),
        Arc::new(Float64Array::from_iter_values(
            r.scored.iter().map(|s| f64::from(s.percentile)),
        )),
        Arc::new(StringArray::from_iter_values(
            r.scored.iter().map(|s| s.bucket.as_str()),
        )),
        Arc::new(StringArray::from(vec![r.confidence; n])),
        Arc::new(StringArray::from(vec![r.model_version; n])),
        Arc::new(
            r.scored
                .iter()
                .map(|s| {
                    s.factors
                        .first()
                        .map(|f| r.features[f.feature as usize].as_str())
                })
                .collect::<StringArray>(),
        ),
    ];
    for feature in &asked {
        match r.features.iter().position(|f| f == feature) {
            Some(j) => {
                let j = j as u32;
                fields.push(Field::new(
                    propensity_engine::segments::has_factor_column(feature),
                    DataType::Boolean,
                    false,
                ));
                cols.push(Arc::new(
                    r.scored
                        .iter()
                        .map(|s| Some(s.factors.iter().any(|f| f.feature == j)))
                        .collect::<arrow::array::BooleanArray>(),
                ));
            }
            None => {
                warnings.push(format!(
                    "segment rules ask has_factor('{feature}'), but model {} has no such feature, so it is false for every profile (`propensity dry-run` lists the feature names)",
                    r.model_version
                ));
                fields.push(Field::new(
                    propensity_engine::segments::has_factor_column(feature),
                    DataType::Boolean,
                    false,
                ));
                cols.push(Arc::new(arrow::array::BooleanArray::from(vec![false; n])));
            }
        }
    }
    for (f, c) in
        propensity_engine::segments::attribute_columns(&loaded.profiles, r.rows, &score_fields)
    {
        fields.push(f);
        cols.push(c);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| RunError::internal(format!("segment table: {e}")))?;
    let rules: Vec<(&str, &Expr)> = segments
        .iter()
        .map(|s| (s.name.as_str(), &s.rule))
        .collect();
    let masks = rt.block_on(propensity_engine::segments::evaluate(&rules, &batch))?;
    let mut m = Membership {
        names: segments.iter().map(|s| s.name.clone()).collect(),
        member: vec![Vec::new(); n],
        held: vec![Vec::new(); n],
    };
    for (k, (s, mask)) in segments.iter().zip(&masks).enumerate() {
        for i in 0..n {
            if mask.value(i) {
                m.member[i].push(k as u16);
                if s.holdout > 0.0 && holdout_draw(r.ids[i], &s.name, seed) < s.holdout {
                    m.held[i].push(k as u16);
                }
            }
        }
    }
    Ok((m, warnings))
}

/// The segments of a run and who is in each.
pub(crate) struct Segmented {
    pub segments: Vec<Segment>,
    pub membership: Membership,
    pub sizes: Vec<crate::report::SegmentSize>,
}

/// The `segment` stage: evaluates every segment over the scored rows.
pub(crate) fn stage(
    cx: &mut crate::context::RunContext<'_>,
    inp: &crate::load::Inputs,
    chosen: &crate::train::Chosen,
    scoring: &crate::score::Scoring,
) -> Result<Segmented, RunError> {
    let segments = effective(cx.job);
    let stage = cx.stage("segment", None);
    let ids = inp.scoring_ids();
    let (membership, warnings) = membership(
        &cx.rt,
        &segments,
        &inp.loaded,
        &Rows {
            rows: &inp.dataset.scoring.rows,
            ids: &ids,
            scored: &scoring.scored,
            features: &chosen.model.features,
            model_version: &chosen.model.version,
            confidence: chosen.confidence().as_str(),
        },
        cx.settings.seed,
    )?;
    for w in warnings {
        cx.warn(w);
    }
    let sizes: Vec<crate::report::SegmentSize> = segments
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let k = k as u16;
            let members = membership.member.iter().filter(|m| m.contains(&k)).count();
            let held = membership.held.iter().filter(|m| m.contains(&k)).count();
            crate::report::SegmentSize {
                name: s.name.clone(),
                profiles: members - held,
                holdout: held,
                holdout_fraction: s.holdout,
            }
        })
        .collect();
    cx.done(
        stage,
        &sizes
            .iter()
            .map(|s| format!("{} {}", s.name, s.profiles + s.holdout))
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(Segmented {
        segments,
        membership,
        sizes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_draws_are_uniform_and_stable() {
        let n = 100_000;
        let held = (0..n)
            .filter(|i| holdout_draw(&format!("p{i}"), "seg", 42) < 0.1)
            .count();
        let share = held as f64 / n as f64;
        assert!((share - 0.1).abs() < 0.005, "{share}");
        assert_eq!(holdout_draw("p1", "seg", 42), holdout_draw("p1", "seg", 42));
        assert_ne!(
            holdout_draw("p1", "seg", 42),
            holdout_draw("p1", "other", 42)
        );
        assert_ne!(holdout_draw("p1", "seg", 42), holdout_draw("p1", "seg", 43));
    }
}
