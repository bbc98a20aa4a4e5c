//! Segment rules evaluated over a run's score rows and the profiles' attributes.
//!
//! A rule (already parsed and type-checked by `propensity validate`) is compiled into a
//! DataFusion expression by the same compiler as every other predicate, so user text never
//! becomes SQL. `has_factor('x')` becomes a boolean column computed from each row's top
//! factors; the caller provides it (see [`has_factor_column`]).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::prelude::SessionContext;
use propensity_core::FieldPath;
use propensity_core::expr::{Expr as P, Literal};

use crate::EngineError;
use crate::compile::Compiler;
use crate::profiles::{AttrValues, ProfileTable};
use crate::source::resolve_field;

/// The column name that stands for `has_factor('feature')`.
pub fn has_factor_column(feature: &str) -> String {
    format!("has_factor('{feature}')")
}

/// The features a rule asks about with `has_factor`.
pub fn factors_used(e: &P, out: &mut Vec<String>) {
    match e {
        P::Call { name, args } if name == "has_factor" => {
            if let [
                P::Literal {
                    value: Literal::String(s),
                },
            ] = args.as_slice()
                && !out.contains(s)
            {
                out.push(s.clone());
            }
        }
        P::Call { args, .. } => args.iter().for_each(|a| factors_used(a, out)),
        P::Compare { left, right, .. } => {
            factors_used(left, out);
            factors_used(right, out);
        }
        P::And { args } | P::Or { args } => args.iter().for_each(|a| factors_used(a, out)),
        P::Not { expr } | P::IsNull { expr, .. } | P::InList { expr, .. } => {
            factors_used(expr, out)
        }
        P::Field { .. } | P::Literal { .. } => {}
    }
}

/// `has_factor('x')` → the field `has_factor('x')`, a boolean column of the batch.
fn rewrite(e: &P) -> P {
    let b = |x: &P| Box::new(rewrite(x));
    match e {
        P::Call { name, args } if name == "has_factor" => match args.as_slice() {
            [
                P::Literal {
                    value: Literal::String(s),
                },
            ] => P::Field {
                path: vec![has_factor_column(s)],
            },
            _ => e.clone(),
        },
        P::Call { name, args } => P::Call {
            name: name.clone(),
            args: args.iter().map(rewrite).collect(),
        },
        P::Compare { op, left, right } => P::Compare {
            op: *op,
            left: b(left),
            right: b(right),
        },
        P::And { args } => P::And {
            args: args.iter().map(rewrite).collect(),
        },
        P::Or { args } => P::Or {
            args: args.iter().map(rewrite).collect(),
        },
        P::Not { expr } => P::Not { expr: b(expr) },
        P::IsNull { expr, negated } => P::IsNull {
            expr: b(expr),
            negated: *negated,
        },
        P::InList {
            expr,
            list,
            negated,
        } => P::InList {
            expr: b(expr),
            list: list.clone(),
            negated: *negated,
        },
        P::Field { .. } | P::Literal { .. } => e.clone(),
    }
}

/// The profile attributes of `rows` (profile indices) as Arrow columns: numbers (and
/// booleans, as 0/1) as Float64, categories as text, dates as UTC timestamps. Attributes
/// named like a column in `taken` are left out (score fields win).
pub fn attribute_columns(
    profiles: &ProfileTable,
    rows: &[u32],
    taken: &[&str],
) -> Vec<(Field, ArrayRef)> {
    profiles
        .attributes
        .iter()
        .filter(|a| !taken.contains(&a.name.as_str()))
        .map(|a| {
            let at = |r: &u32| *r as usize;
            match &a.values {
                AttrValues::Numeric(v) => (
                    Field::new(&a.name, DataType::Float64, true),
                    Arc::new(
                        rows.iter()
                            .map(|r| v.get(at(r)).filter(|x| !x.is_nan()).map(|x| f64::from(*x)))
                            .collect::<Float64Array>(),
                    ) as ArrayRef,
                ),
                AttrValues::Categorical { codes, values } => (
                    Field::new(&a.name, DataType::Utf8, true),
                    Arc::new(
                        rows.iter()
                            .map(|r| {
                                codes
                                    .get(at(r))
                                    .and_then(|c| values.get(*c as usize))
                                    .map(String::as_str)
                            })
                            .collect::<StringArray>(),
                    ) as ArrayRef,
                ),
                AttrValues::Time(v) => (
                    Field::new(
                        &a.name,
                        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                        true,
                    ),
                    Arc::new(
                        rows.iter()
                            .map(|r| v.get(at(r)).copied().filter(|x| *x != i64::MIN))
                            .collect::<TimestampMicrosecondArray>()
                            .with_timezone("UTC"),
                    ) as ArrayRef,
                ),
            }
        })
        .collect()
}

/// Evaluates each `(segment name, rule)` over `batch`: one membership mask per rule (null
/// counts as not a member). Errors name the segment.
pub async fn evaluate(
    rules: &[(&str, &P)],
    batch: &RecordBatch,
) -> Result<Vec<BooleanArray>, EngineError> {
    let schema: Arc<Schema> = batch.schema();
    let mut exprs = Vec::with_capacity(rules.len());
    for (i, (name, rule)) in rules.iter().enumerate() {
        let mut c = Compiler::default();
        let fields = |p: &FieldPath| resolve_field(&schema, p);
        let e = c.predicate(&rewrite(rule), &fields).map_err(|m| {
            EngineError::user(format!("segment `{name}`: {m}")).hint(
                "segment rules see probability, score, percentile, bucket, confidence, top_factor, has_factor('…') and the profile attributes",
            )
        })?;
        exprs.push(e.alias(format!("segment_{i}")));
    }
    if exprs.is_empty() {
        return Ok(vec![]);
    }
    // One partition: a round-robin repartition would reorder the rows.
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(1),
    );
    let bad = |e: datafusion::error::DataFusionError| {
        EngineError::user(format!("evaluating segment rules: {e}"))
    };
    let out = ctx
        .read_batch(batch.clone())
        .map_err(bad)?
        .select(exprs)
        .map_err(bad)?
        .collect()
        .await
        .map_err(bad)?;
    let mut masks: Vec<Vec<bool>> = vec![Vec::with_capacity(batch.num_rows()); rules.len()];
    for b in &out {
        for (j, m) in masks.iter_mut().enumerate() {
            let col = b
                .column(j)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| EngineError::internal("a segment rule did not give booleans"))?;
            m.extend((0..col.len()).map(|k| col.is_valid(k) && col.value(k)));
        }
    }
    Ok(masks.into_iter().map(BooleanArray::from).collect())
}
