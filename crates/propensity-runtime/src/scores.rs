//! The score table: one row per eligible profile and run, the same Arrow schema in every
//! output (SPEC §4).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, ListArray, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use propensity_model::pipeline::Scored;

use crate::RunError;

// The score-row schema is the contract between runs and sinks: it lives with the sinks.
pub use propensity_sinks::rows::{factor_fields, schema};

/// What every row of one run shares.
#[derive(Debug, Clone)]
pub struct RunColumns<'a> {
    pub job: &'a str,
    pub goal: &'a str,
    pub as_of_us: i64,
    pub model_version: &'a str,
    pub config_hash: &'a str,
    pub confidence: &'a str,
    /// Model feature names and labels, indexed by `Factor::feature`.
    pub names: &'a [String],
    pub labels: &'a [String],
}

/// Segment memberships of a run's rows: indices into `names`, per row.
#[derive(Debug, Clone, Default)]
pub struct Membership {
    pub names: Vec<String>,
    /// The segments each row belongs to (held-out memberships included).
    pub member: Vec<Vec<u16>>,
    /// The segments each row is held out of.
    pub held: Vec<Vec<u16>>,
}

/// Builds the score table. `values(i, j)` is row `i`'s value of model feature `j` (NaN when
/// missing).
pub fn batch(
    run: &RunColumns<'_>,
    profile_ids: &[&str],
    scored: &[Scored],
    membership: &Membership,
    values: &dyn Fn(usize, usize) -> f32,
) -> Result<RecordBatch, RunError> {
    let n = scored.len();
    let day = run.as_of_us.div_euclid(86_400_000_000) as i32;
    let mut f_feature = Vec::new();
    let mut f_label = Vec::new();
    let mut f_value = Vec::new();
    let mut f_contrib = Vec::new();
    let mut f_dir = Vec::new();
    let mut f_imp = Vec::new();
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0i32);
    for (i, s) in scored.iter().enumerate() {
        for f in &s.factors {
            let j = f.feature as usize;
            f_feature.push(run.names[j].as_str());
            f_label.push(run.labels[j].as_str());
            let v = values(i, j);
            f_value.push((!v.is_nan()).then_some(f64::from(v)));
            f_contrib.push(f.contribution);
            f_dir.push(if f.contribution > 0.0 {
                "increases"
            } else {
                "decreases"
            });
            f_imp.push(f.importance);
        }
        offsets.push(f_feature.len() as i32);
    }
    let factors = StructArray::new(
        factor_fields(),
        vec![
            Arc::new(StringArray::from(f_feature)) as ArrayRef,
            Arc::new(StringArray::from(f_label)),
            Arc::new(Float64Array::from(f_value)),
            Arc::new(Float64Array::from(f_contrib)),
            Arc::new(StringArray::from(f_dir)),
            Arc::new(StringArray::from(f_imp)),
        ],
        None,
    );
    let factors = ListArray::new(
        Arc::new(Field::new("item", DataType::Struct(factor_fields()), true)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(factors),
        None,
    );
    let names_list = |sets: &[Vec<u16>]| {
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0i32);
        let mut values: Vec<&str> = Vec::new();
        for i in 0..n {
            if let Some(set) = sets.get(i) {
                values.extend(set.iter().map(|&k| membership.names[k as usize].as_str()));
            }
            offsets.push(values.len() as i32);
        }
        ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(StringArray::from(values)),
            None,
        )
    };
    let segments = names_list(&membership.member);
    let holdout = names_list(&membership.held);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(profile_ids.to_vec())),
        Arc::new(StringArray::from(vec![run.job; n])),
        Arc::new(StringArray::from(vec![run.goal; n])),
        Arc::new(TimestampMicrosecondArray::from(vec![run.as_of_us; n]).with_timezone("UTC")),
        Arc::new(Date32Array::from(vec![day; n])),
        Arc::new(StringArray::from(vec![run.model_version; n])),
        Arc::new(StringArray::from(vec![run.config_hash; n])),
        Arc::new(Float64Array::from_iter_values(
            scored.iter().map(|s| s.probability),
        )),
        Arc::new(Int32Array::from_iter_values(
            scored.iter().map(|s| i32::from(s.score)),
        )),
        Arc::new(Int32Array::from_iter_values(
            scored.iter().map(|s| i32::from(s.percentile)),
        )),
        Arc::new(StringArray::from_iter_values(
            scored.iter().map(|s| s.bucket.as_str()),
        )),
        Arc::new(factors),
        Arc::new(segments),
        Arc::new(holdout),
        Arc::new(StringArray::from(vec![run.confidence; n])),
    ];
    RecordBatch::try_new(schema(), cols)
        .map_err(|e| RunError::internal(format!("score table: {e}")))
}

/// The batch as Parquet bytes: zstd, row groups of 128k rows, no timestamps or paths inside,
/// so the same rows give the same bytes.
pub fn parquet_bytes(batch: &RecordBatch) -> Result<Vec<u8>, RunError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
        .map_err(|e| RunError::internal(format!("parquet: {e}")))?;
    w.write(batch)
        .map_err(|e| RunError::internal(format!("parquet: {e}")))?;
    w.close()
        .map_err(|e| RunError::internal(format!("parquet: {e}")))?;
    Ok(buf)
}

/// One profile's row, read back from a score file (for `propensity explain`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProfileScore {
    pub profile_id: String,
    pub job: String,
    pub as_of: String,
    pub model_version: String,
    pub probability: f64,
    pub score: i32,
    pub percentile: i32,
    pub bucket: String,
    pub confidence: String,
    pub factors: Vec<FactorRow>,
    /// Segments the profile is in, and those it is held out of.
    pub segments: Vec<String>,
    pub holdout: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FactorRow {
    pub feature: String,
    pub label: String,
    pub value: Option<f64>,
    pub contribution: f64,
    pub direction: String,
    pub importance: String,
}

/// Finds a profile in a score file.
pub fn find(path: &std::path::Path, profile_id: &str) -> Result<Option<ProfileScore>, RunError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, TimestampMicrosecondType};
    let file = std::fs::File::open(path)
        .map_err(|e| RunError::user(format!("{}: {e}", path.display())))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| RunError::user(format!("{}: not a score file: {e}", path.display())))?;
    let bad = |what: &str| {
        RunError::user(format!(
            "{}: column `{what}` is missing or of the wrong type",
            path.display()
        ))
    };
    for b in reader {
        let b = b.map_err(|e| RunError::user(format!("{}: {e}", path.display())))?;
        let col = |name: &str| b.column_by_name(name).ok_or_else(|| bad(name));
        let ids = col("profile_id")?
            .as_string_opt::<i32>()
            .ok_or_else(|| bad("profile_id"))?;
        let Some(i) = (0..ids.len()).find(|&i| ids.value(i) == profile_id) else {
            continue;
        };
        let s = |name: &str| -> Result<String, RunError> {
            Ok(col(name)?
                .as_string_opt::<i32>()
                .ok_or_else(|| bad(name))?
                .value(i)
                .to_owned())
        };
        // A list of names at row `i` (empty when the column is not a list of strings).
        let names = |c: &arrow::array::ArrayRef| -> Vec<String> {
            c.as_list_opt::<i32>()
                .map(|l| {
                    let v = l.value(i);
                    v.as_string_opt::<i32>()
                        .map(|s| s.iter().flatten().map(str::to_owned).collect())
                        .unwrap_or_default()
                })
                .unwrap_or_default()
        };
        let as_of = col("as_of")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| bad("as_of"))?
            .value(i);
        let factors_list = col("factors")?
            .as_list_opt::<i32>()
            .ok_or_else(|| bad("factors"))?;
        let item = factors_list.value(i);
        let st = item.as_struct_opt().ok_or_else(|| bad("factors"))?;
        let fs = |k: usize| st.column(k).as_string::<i32>().clone();
        let ff = |k: usize| st.column(k).as_primitive::<Float64Type>().clone();
        let (feat, lab, val, con, dir, imp) = (fs(0), fs(1), ff(2), ff(3), fs(4), fs(5));
        let factors = (0..st.len())
            .map(|k| FactorRow {
                feature: feat.value(k).to_owned(),
                label: lab.value(k).to_owned(),
                value: val.is_valid(k).then(|| val.value(k)),
                contribution: con.value(k),
                direction: dir.value(k).to_owned(),
                importance: imp.value(k).to_owned(),
            })
            .collect();
        return Ok(Some(ProfileScore {
            profile_id: profile_id.to_owned(),
            job: s("job")?,
            as_of: propensity_engine::rfc3339(as_of),
            model_version: s("model_version")?,
            probability: col("probability")?
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| bad("probability"))?
                .value(i),
            score: col("score")?
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| bad("score"))?
                .value(i),
            percentile: col("percentile")?
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| bad("percentile"))?
                .value(i),
            bucket: s("bucket")?,
            confidence: s("confidence")?,
            factors,
            segments: names(col("segments")?),
            holdout: names(col("holdout")?),
        }));
    }
    Ok(None)
}

/// A synthetic score table for tests and benchmarks (the sink conformance suite and
/// `make bench-sinks`): `n` profiles `{tag}-{i}` of `job`; every row is in segment `all`, every
/// third in `vip`; every tenth is held out of `all`. Ids include characters that need
/// quoting in CSV, SQL COPY and JSON.
pub fn synthetic(job: &str, tag: &str, n: usize) -> Result<RecordBatch, RunError> {
    let schema = schema();
    let ids: Vec<String> = (0..n)
        .map(|i| {
            if i % 97 == 5 {
                format!("{tag}-{i},\"q\"\t\\ü")
            } else {
                format!("{tag}-{i}")
            }
        })
        .collect();
    let factor_fields = factor_fields();
    let factors = StructArray::new(
        factor_fields.clone(),
        vec![
            Arc::new(StringArray::from(vec!["days_since_last_purchase"; n])) as ArrayRef,
            Arc::new(StringArray::from(vec!["Days since last purchase"; n])),
            Arc::new(Float64Array::from(
                (0..n).map(|i| Some(i as f64)).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(vec![0.25; n])),
            Arc::new(StringArray::from(vec!["increases"; n])),
            Arc::new(StringArray::from(vec!["high"; n])),
        ],
        None,
    );
    let list = |values: Vec<Vec<&str>>| {
        let mut offsets = vec![0i32];
        let mut flat = Vec::new();
        for v in values {
            flat.extend(v);
            offsets.push(flat.len() as i32);
        }
        ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            OffsetBuffer::new(offsets.into()),
            Arc::new(StringArray::from(flat)),
            None,
        )
    };
    let segments = list(
        (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    vec!["all", "vip"]
                } else {
                    vec!["all"]
                }
            })
            .collect(),
    );
    let holdout = list(
        (0..n)
            .map(|i| if i % 10 == 0 { vec!["all"] } else { vec![] })
            .collect(),
    );
    let model = format!("model-{tag}");
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(vec![job; n])),
        Arc::new(StringArray::from(vec!["purchase within 30d"; n])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![1_780_272_000_000_000; n]).with_timezone("UTC"),
        ),
        Arc::new(Date32Array::from(vec![20_605; n])),
        Arc::new(StringArray::from(vec![model.as_str(); n])),
        Arc::new(StringArray::from(vec!["cfg"; n])),
        Arc::new(Float64Array::from(
            (0..n)
                .map(|i| (i % 1000) as f64 / 1000.0)
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int32Array::from(
            (0..n).map(|i| (i % 101) as i32).collect::<Vec<_>>(),
        )),
        Arc::new(Int32Array::from(
            (0..n).map(|i| (i % 100) as i32 + 1).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            (0..n)
                .map(|i| ["high", "medium", "low"][i % 3])
                .collect::<Vec<_>>(),
        )),
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Struct(factor_fields), true)),
            OffsetBuffer::new((0..=n as i32).collect::<Vec<_>>().into()),
            Arc::new(factors),
            None,
        )),
        Arc::new(segments),
        Arc::new(holdout),
        Arc::new(StringArray::from(vec!["normal"; n])),
    ];
    RecordBatch::try_new(schema, cols)
        .map_err(|e| RunError::internal(format!("synthetic score table: {e}")))
}
