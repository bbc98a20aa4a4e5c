//! A typed view of the score table (SPEC §4) for sinks that write row by row.

use arrow::array::{
    Array, Date32Array, Float64Array, Int32Array, ListArray, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray,
};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Value, json};

use crate::SinkError;

/// The fields of one factor (a struct in the `factors` list).
pub fn factor_fields() -> Fields {
    Fields::from(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new("contribution", DataType::Float64, false),
        Field::new("direction", DataType::Utf8, false),
        Field::new("importance", DataType::Utf8, false),
    ])
}

/// The score-row schema (SPEC §4): the same in every output.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("job", DataType::Utf8, false),
        Field::new("goal", DataType::Utf8, false),
        Field::new(
            "as_of",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("score_date", DataType::Date32, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("config_hash", DataType::Utf8, false),
        Field::new("probability", DataType::Float64, false),
        Field::new("score", DataType::Int32, false),
        Field::new("percentile", DataType::Int32, false),
        Field::new("bucket", DataType::Utf8, false),
        Field::new(
            "factors",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(factor_fields()),
                true,
            ))),
            false,
        ),
        Field::new(
            "segments",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        // The segments this row is held out of (a subset of `segments`): activation sinks
        // leave such rows out unless they set `include_holdout`.
        Field::new(
            "holdout",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("confidence", DataType::Utf8, false),
    ]))
}

/// The columns of a score batch, typed.
#[derive(Debug)]
pub struct ScoreRows<'a> {
    pub profile_id: &'a StringArray,
    pub job: &'a StringArray,
    pub goal: &'a StringArray,
    pub as_of: &'a TimestampMicrosecondArray,
    pub score_date: &'a Date32Array,
    pub model_version: &'a StringArray,
    pub config_hash: &'a StringArray,
    pub probability: &'a Float64Array,
    pub score: &'a Int32Array,
    pub percentile: &'a Int32Array,
    pub bucket: &'a StringArray,
    pub factors: &'a ListArray,
    pub segments: &'a ListArray,
    pub holdout: &'a ListArray,
    pub confidence: &'a StringArray,
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, SinkError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            SinkError::internal(format!("score table: column `{name}` missing or mistyped"))
        })
}

impl<'a> ScoreRows<'a> {
    pub fn new(b: &'a RecordBatch) -> Result<Self, SinkError> {
        Ok(Self {
            profile_id: col(b, "profile_id")?,
            job: col(b, "job")?,
            goal: col(b, "goal")?,
            as_of: col(b, "as_of")?,
            score_date: col(b, "score_date")?,
            model_version: col(b, "model_version")?,
            config_hash: col(b, "config_hash")?,
            probability: col(b, "probability")?,
            score: col(b, "score")?,
            percentile: col(b, "percentile")?,
            bucket: col(b, "bucket")?,
            factors: col(b, "factors")?,
            segments: col(b, "segments")?,
            holdout: col(b, "holdout")?,
            confidence: col(b, "confidence")?,
        })
    }

    pub fn len(&self) -> usize {
        self.profile_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn strings(list: &ListArray, i: usize) -> Vec<String> {
        let v = list.value(i);
        v.as_any()
            .downcast_ref::<StringArray>()
            .map(|s| s.iter().flatten().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The segments row `i` belongs to (held-out memberships included).
    pub fn segments(&self, i: usize) -> Vec<String> {
        Self::strings(self.segments, i)
    }

    /// The segments row `i` is held out of.
    pub fn holdout(&self, i: usize) -> Vec<String> {
        Self::strings(self.holdout, i)
    }

    /// Whether row `i` is held out of any segment.
    pub fn is_holdout(&self, i: usize) -> bool {
        !self.holdout.is_null(i) && self.holdout.value_length(i) > 0
    }

    /// `YYYY-MM-DD`.
    pub fn score_date(&self, i: usize) -> String {
        self.score_date
            .value_as_date(i)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    }

    /// RFC 3339, UTC.
    pub fn as_of(&self, i: usize) -> String {
        propensity_common::rfc3339(self.as_of.value(i))
    }

    /// Row `i`'s factors as a JSON array of `{feature, label, value, contribution, direction,
    /// importance}`.
    pub fn factors(&self, i: usize) -> Value {
        let v = self.factors.value(i);
        let Some(s) = v.as_any().downcast_ref::<StructArray>() else {
            return Value::Array(vec![]);
        };
        let text = |name: &str| {
            s.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
        };
        let num = |name: &str| {
            s.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
        };
        let (
            Some(feature),
            Some(label),
            Some(value),
            Some(contribution),
            Some(direction),
            Some(importance),
        ) = (
            text("feature"),
            text("label"),
            num("value"),
            num("contribution"),
            text("direction"),
            text("importance"),
        )
        else {
            return Value::Array(vec![]);
        };
        Value::Array(
            (0..s.len())
                .map(|k| {
                    json!({
                        "feature": feature.value(k),
                        "label": label.value(k),
                        "value": (!value.is_null(k)).then(|| value.value(k)),
                        "contribution": contribution.value(k),
                        "direction": direction.value(k),
                        "importance": importance.value(k),
                    })
                })
                .collect(),
        )
    }

    /// Row `i` as one JSON object with the score-row fields (SPEC §4) plus `holdout`.
    pub fn json(&self, i: usize) -> Value {
        let mut m = Map::new();
        m.insert("profile_id".into(), self.profile_id.value(i).into());
        m.insert("job".into(), self.job.value(i).into());
        m.insert("goal".into(), self.goal.value(i).into());
        m.insert("as_of".into(), self.as_of(i).into());
        m.insert("score_date".into(), self.score_date(i).into());
        m.insert("model_version".into(), self.model_version.value(i).into());
        m.insert("config_hash".into(), self.config_hash.value(i).into());
        m.insert("probability".into(), json!(self.probability.value(i)));
        m.insert("score".into(), self.score.value(i).into());
        m.insert("percentile".into(), self.percentile.value(i).into());
        m.insert("bucket".into(), self.bucket.value(i).into());
        m.insert("factors".into(), self.factors(i));
        m.insert("segments".into(), json!(self.segments(i)));
        m.insert("holdout".into(), json!(self.holdout(i)));
        m.insert("confidence".into(), self.confidence.value(i).into());
        Value::Object(m)
    }
}
