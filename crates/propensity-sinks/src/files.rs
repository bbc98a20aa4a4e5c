//! Files on any object store (`parquet`, `csv`, `jsonl`): local paths, `file://`, `s3://`,
//! `gs://`, `az://`.
//!
//! Layout under the sink's `uri`:
//!
//! ```text
//! runs/<publication>/scores.parquet     the rows (or scores.csv, scores.jsonl)
//! runs/<publication>/manifest.json      job, run, as-of, rows, files with size and sha256, segments
//! current.json                          the pointer: which publication is current
//! ```
//!
//! A publication writes its run-scoped objects, then the manifest, then swaps `current.json`
//! last. Each object store `put` replaces an object whole (a rename on local disks), so a
//! reader that starts from `current.json` always finds a complete publication: the previous
//! one until the swap, the new one after it. A run that dies before the swap leaves
//! unreferenced objects under `runs/` and the previous publication current; running it again
//! rewrites the same objects (publication ids are content-derived) and swaps. Superseded
//! publications are kept for [`RETAIN`] publications, so readers that started on one can
//! finish, then deleted.
//!
//! CSV has one column per score-row field; `factors`, `segments` and `holdout` are JSON text.
//! JSONL has one JSON object per row with the same fields, nested.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use propensity_core::enums::ParquetCompression;
use propensity_core::{Location, SinkSpec, StorageOptions};
use serde::{Deserialize, Serialize};

use crate::{Context, Publication, Published, ScoreRows, Sink, SinkError, Status};

/// How many publications are kept (the current one included).
pub const RETAIN: usize = 3;

/// The file format of a file sink.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    Parquet(ParquetCompression),
    Csv,
    Jsonl,
}

impl Format {
    fn kind(self) -> &'static str {
        match self {
            Format::Parquet(_) => "parquet",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }
}

/// The pointer object, `current.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pointer {
    /// Empty in a pointer written before publications had ids (an older build).
    #[serde(default)]
    pub publication: String,
    #[serde(default)]
    pub manifest: String,
    pub run_id: String,
    pub as_of: String,
    pub rows: usize,
    pub files: Vec<String>,
    /// Recent publications, newest first (the current one included); older ones are deleted.
    #[serde(default)]
    pub history: Vec<String>,
}

/// `runs/<publication>/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub job: String,
    pub publication: String,
    pub run_id: String,
    pub as_of: String,
    pub format: String,
    pub rows: usize,
    pub include_holdout: bool,
    pub files: Vec<FileEntry>,
    pub segments: Vec<SegmentCount>,
    pub written_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub rows: usize,
    pub bytes: usize,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentCount {
    pub name: String,
    pub profiles: usize,
    pub holdout: usize,
}

/// A file sink.
pub struct FileSink {
    name: String,
    include_holdout: bool,
    format: Format,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    display: String,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("location", &self.display)
            .finish_non_exhaustive()
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

impl FileSink {
    pub fn new(
        spec: &SinkSpec,
        format: Format,
        location: &Location,
        storage: &StorageOptions,
        ctx: &Context,
    ) -> Result<Self, String> {
        let dir = propensity_common::output_dir(location, storage, &ctx.job_dir, &ctx.env)?;
        Ok(Self {
            name: spec.name.clone(),
            include_holdout: spec.include_holdout,
            format,
            store: dir.store,
            prefix: dir.prefix,
            display: dir.display.trim_end_matches('/').to_owned(),
        })
    }

    fn key(&self, rest: &str) -> ObjectPath {
        if self.prefix.as_ref().is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn ext(&self) -> &'static str {
        self.format.kind()
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> SinkError {
        SinkError::external(format!("{} ({what}): {e}", self.display))
    }

    /// The current pointer, if any.
    pub async fn current(&self) -> Result<Option<Pointer>, SinkError> {
        match self.store.get(&self.key("current.json")).await {
            Ok(r) => {
                let b = r
                    .bytes()
                    .await
                    .map_err(|e| self.err("reading current.json", e))?;
                serde_json::from_slice(&b)
                    .map(Some)
                    .map_err(|e| self.err("current.json is damaged", e))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("reading current.json", e)),
        }
    }

    /// Encodes rows in this sink's format.
    fn encode(&self, batch: &RecordBatch) -> Result<Vec<u8>, SinkError> {
        let bug = |e: &dyn std::fmt::Display| SinkError::internal(format!("encoding rows: {e}"));
        match self.format {
            Format::Parquet(c) => {
                let compression = match c {
                    ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
                    ParquetCompression::Snappy => Compression::SNAPPY,
                    ParquetCompression::Gzip => Compression::GZIP(GzipLevel::default()),
                    ParquetCompression::None => Compression::UNCOMPRESSED,
                };
                let props = WriterProperties::builder()
                    .set_compression(compression)
                    .set_max_row_group_row_count(Some(128 * 1024))
                    .build();
                let mut out = Vec::new();
                let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
                    .map_err(|e| bug(&e))?;
                w.write(batch).map_err(|e| bug(&e))?;
                w.close().map_err(|e| bug(&e))?;
                Ok(out)
            }
            Format::Jsonl => {
                let r = ScoreRows::new(batch)?;
                let mut out = Vec::with_capacity(r.len() * 600);
                for i in 0..r.len() {
                    serde_json::to_writer(&mut out, &r.json(i)).map_err(|e| bug(&e))?;
                    out.push(b'\n');
                }
                Ok(out)
            }
            Format::Csv => {
                let r = ScoreRows::new(batch)?;
                let mut w = csv::Writer::from_writer(Vec::with_capacity(r.len() * 600));
                // One column per score-row field, in schema order (the record below follows it).
                let header = crate::rows::schema();
                w.write_record(header.fields().iter().map(|f| f.name().as_str()))
                    .map_err(|e| bug(&e))?;
                for i in 0..r.len() {
                    let json = |v: serde_json::Value| v.to_string();
                    w.write_record([
                        spreadsheet_safe(r.profile_id.value(i)),
                        r.job.value(i).to_owned(),
                        spreadsheet_safe(r.goal.value(i)),
                        r.as_of(i),
                        r.score_date(i),
                        r.model_version.value(i).to_owned(),
                        r.config_hash.value(i).to_owned(),
                        format!("{}", r.probability.value(i)),
                        r.score.value(i).to_string(),
                        r.percentile.value(i).to_string(),
                        r.bucket.value(i).to_owned(),
                        json(r.factors(i)),
                        json(serde_json::json!(r.segments(i))),
                        json(serde_json::json!(r.holdout(i))),
                        r.confidence.value(i).to_owned(),
                    ])
                    .map_err(|e| bug(&e))?;
                }
                w.into_inner().map_err(|e| bug(&e))
            }
        }
    }

    /// Removes `ids` from encoded rows; returns the new bytes and how many rows were removed.
    fn without(
        &self,
        bytes: &[u8],
        ids: &std::collections::HashSet<&str>,
    ) -> Result<(Vec<u8>, usize, usize), SinkError> {
        let bad = |e: &dyn std::fmt::Display| {
            SinkError::external(format!(
                "{}: a published file cannot be read back: {e}",
                self.display
            ))
        };
        match self.format {
            Format::Parquet(_) => {
                let reader =
                    ParquetRecordBatchReaderBuilder::try_new(Bytes::copy_from_slice(bytes))
                        .map_err(|e| bad(&e))?
                        .build()
                        .map_err(|e| bad(&e))?;
                let mut kept = Vec::new();
                let mut removed = 0;
                let mut schema = None;
                for b in reader {
                    let b = b.map_err(|e| bad(&e))?;
                    schema = Some(b.schema());
                    let ids_col = b
                        .column_by_name("profile_id")
                        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                        .ok_or_else(|| bad(&"no profile_id column"))?;
                    let keep: BooleanArray = ids_col
                        .iter()
                        .map(|v| Some(!v.is_some_and(|v| ids.contains(v))))
                        .collect();
                    removed += b.num_rows() - keep.true_count();
                    kept.push(arrow::compute::filter_record_batch(&b, &keep).map_err(|e| bad(&e))?);
                }
                let Some(schema) = schema else {
                    return Ok((bytes.to_vec(), 0, 0));
                };
                let all = arrow::compute::concat_batches(&schema, &kept).map_err(|e| bad(&e))?;
                Ok((self.encode(&all)?, removed, all.num_rows()))
            }
            Format::Jsonl => {
                let mut out = Vec::with_capacity(bytes.len());
                let (mut removed, mut rows) = (0, 0);
                for line in bytes.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| bad(&e))?;
                    if v.get("profile_id")
                        .and_then(|p| p.as_str())
                        .is_some_and(|p| ids.contains(p))
                    {
                        removed += 1;
                    } else {
                        out.extend_from_slice(line);
                        out.push(b'\n');
                        rows += 1;
                    }
                }
                Ok((out, removed, rows))
            }
            Format::Csv => {
                let mut r = csv::Reader::from_reader(bytes);
                let mut w = csv::Writer::from_writer(Vec::with_capacity(bytes.len()));
                w.write_record(r.headers().map_err(|e| bad(&e))?)
                    .map_err(|e| bad(&e))?;
                let (mut removed, mut rows) = (0, 0);
                // Ids are written spreadsheet-safe: compare in that form.
                let written: std::collections::HashSet<String> =
                    ids.iter().map(|id| spreadsheet_safe(id)).collect();
                for rec in r.records() {
                    let rec = rec.map_err(|e| bad(&e))?;
                    if rec.get(0).is_some_and(|p| written.contains(p)) {
                        removed += 1;
                    } else {
                        w.write_record(&rec).map_err(|e| bad(&e))?;
                        rows += 1;
                    }
                }
                Ok((w.into_inner().map_err(|e| bad(&e))?, removed, rows))
            }
        }
    }

    /// Writes a publication's objects, then its manifest, then swaps the pointer; deletes
    /// publications beyond [`RETAIN`] (or every other one, after an erasure).
    async fn commit(
        &self,
        manifest: Manifest,
        data: Vec<u8>,
        previous: Option<Pointer>,
        keep_history: bool,
        p: Option<&Publication>,
    ) -> Result<(), SinkError> {
        let id = manifest.publication.clone();
        let file = format!("runs/{id}/scores.{}", self.ext());
        let mut manifest = manifest;
        manifest.files = vec![FileEntry {
            path: file.clone(),
            rows: manifest.rows,
            bytes: data.len(),
            sha256: sha256_hex(&data),
        }];
        self.store
            .put(&self.key(&file), PutPayload::from(data))
            .await
            .map_err(|e| self.err("writing the rows", e))?;
        if let Some(p) = p {
            p.failpoint(self.ext(), "before_manifest")?;
        }
        let manifest_key = format!("runs/{id}/manifest.json");
        self.store
            .put(&self.key(&manifest_key), json_payload(&manifest))
            .await
            .map_err(|e| self.err("writing the manifest", e))?;
        if let Some(p) = p {
            p.commit_point(self.ext(), "before_swap")?;
        }
        let mut history = vec![id.clone()];
        if keep_history && let Some(prev) = &previous {
            let older = if prev.history.is_empty() {
                vec![prev.publication.clone()]
            } else {
                prev.history.clone()
            };
            // An older build's pointer has no publication id: nothing to track.
            history.extend(older.into_iter().filter(|h| *h != id && !h.is_empty()));
        }
        let dropped: Vec<String> = if keep_history {
            history.split_off(RETAIN.min(history.len()))
        } else {
            previous
                .iter()
                .flat_map(|prev| {
                    let mut h = prev.history.clone();
                    h.push(prev.publication.clone());
                    h
                })
                .filter(|h| *h != id && !h.is_empty())
                .collect()
        };
        let pointer = Pointer {
            publication: id.clone(),
            manifest: manifest_key,
            run_id: manifest.run_id.clone(),
            as_of: manifest.as_of.clone(),
            rows: manifest.rows,
            files: vec![file],
            history,
        };
        self.store
            .put(&self.key("current.json"), json_payload(&pointer))
            .await
            .map_err(|e| self.err("swapping current.json", e))?;
        for old in dropped {
            self.delete_publication(&old).await?;
        }
        Ok(())
    }

    async fn delete_publication(&self, id: &str) -> Result<(), SinkError> {
        let prefix = self.key(&format!("runs/{id}"));
        let keys: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.err("listing an old publication", e))?;
        for k in keys {
            match self.store.delete(&k).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err("deleting an old publication", e)),
            }
        }
        Ok(())
    }

    async fn read(&self, path: &str) -> Result<Bytes, SinkError> {
        self.store
            .get(&self.key(path))
            .await
            .map_err(|e| self.err(path, e))?
            .bytes()
            .await
            .map_err(|e| self.err(path, e))
    }
}

fn json_payload<T: Serialize>(v: &T) -> PutPayload {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    PutPayload::from(b)
}

fn segment_counts(batch: &RecordBatch, names: &[String]) -> Result<Vec<SegmentCount>, SinkError> {
    let r = ScoreRows::new(batch)?;
    let mut counts: Vec<SegmentCount> = names
        .iter()
        .map(|n| SegmentCount {
            name: n.clone(),
            profiles: 0,
            holdout: 0,
        })
        .collect();
    for i in 0..r.len() {
        let held = r.holdout(i);
        for s in r.segments(i) {
            if let Some(c) = counts.iter_mut().find(|c| c.name == s) {
                if held.contains(&s) {
                    c.holdout += 1;
                } else {
                    c.profiles += 1;
                }
            }
        }
    }
    Ok(counts)
}

#[async_trait::async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        self.format.kind()
    }

    fn include_holdout(&self) -> bool {
        self.include_holdout
    }

    async fn publish(&self, p: &Publication) -> Result<Published, SinkError> {
        let location = format!("{}/current.json", self.display);
        let previous = self.current().await?;
        if previous.as_ref().is_some_and(|c| c.publication == p.id) {
            return Ok(Published {
                status: Status::Unchanged,
                rows: previous.map_or(0, |c| c.rows),
                location,
                detail: Some(format!("publication {} is already current", p.id)),
            });
        }
        let rows = p.rows(self.include_holdout)?;
        let data = self.encode(&rows)?;
        let manifest = Manifest {
            format_version: 1,
            job: p.job.clone(),
            publication: p.id.clone(),
            run_id: p.run_id.clone(),
            as_of: p.as_of.clone(),
            format: self.ext().into(),
            rows: rows.num_rows(),
            include_holdout: self.include_holdout,
            files: vec![],
            segments: segment_counts(&rows, &p.segments)?,
            written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        self.commit(manifest, data, previous, true, Some(p)).await?;
        Ok(Published {
            status: Status::Published,
            rows: rows.num_rows(),
            location,
            detail: Some(format!(
                "{}/runs/{}/scores.{}",
                self.display,
                p.id,
                self.ext()
            )),
        })
    }

    async fn forget(&self, _job: &str, profile_ids: &[String]) -> Result<u64, SinkError> {
        let Some(current) = self.current().await? else {
            return Ok(0);
        };
        if current.manifest.is_empty() {
            return Err(self.err(
                "forget",
                "current.json was written by an older build (no manifest); run the job once, then forget again",
            ));
        }
        let manifest: Manifest = serde_json::from_slice(&self.read(&current.manifest).await?)
            .map_err(|e| self.err("the current manifest is damaged", e))?;
        let ids: std::collections::HashSet<&str> = profile_ids.iter().map(String::as_str).collect();
        let mut data = Vec::new();
        let mut removed = 0;
        let mut rows = 0;
        for f in &manifest.files {
            let (d, r, n) = self.without(&self.read(&f.path).await?, &ids)?;
            data = d;
            removed += r;
            rows += n;
        }
        // Older publications still hold the profiles: a new publication without them
        // becomes current and every other one is deleted, even when this one had none.
        let mut sorted: Vec<&str> = ids.iter().copied().collect();
        sorted.sort_unstable();
        let tag = &sha256_hex(sorted.join("\n").as_bytes())[..8];
        let base = current
            .publication
            .split("-forget-")
            .next()
            .unwrap_or(&current.publication)
            .to_owned();
        let id = format!("{base}-forget-{tag}");
        if id == current.publication && removed == 0 {
            return Ok(0);
        }
        let segments = manifest
            .segments
            .iter()
            .map(|s| SegmentCount {
                name: s.name.clone(),
                profiles: s.profiles,
                holdout: s.holdout,
            })
            .collect();
        let new = Manifest {
            publication: id,
            rows,
            segments,
            written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ..manifest
        };
        let keep = format!("runs/{}/", new.publication);
        self.commit(new, data, Some(current), false, None).await?;
        // Objects of attempts that never became current (a failed or killed run) hold the
        // profiles too.
        let runs = self.key("runs");
        let leftovers: Vec<ObjectPath> = self
            .store
            .list(Some(&runs))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.err("listing publications", e))?;
        let keep = self.key(&keep).to_string();
        for k in leftovers
            .into_iter()
            .filter(|k| !k.as_ref().starts_with(&keep))
        {
            match self.store.delete(&k).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.err("deleting an old publication", e)),
            }
        }
        Ok(removed as u64)
    }
}

/// A CSV cell a spreadsheet would not run as a formula: text starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return gets a leading `'` (OWASP's advice against CSV
/// injection). Profile ids come from event data, so `=HYPERLINK(…)` must not open as a
/// formula in the file a marketer downloads.
pub fn spreadsheet_safe(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_defused_and_still_found_for_erasure() {
        assert_eq!(spreadsheet_safe("p-17"), "p-17");
        for f in [
            "=HYPERLINK(\"http://x\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\rx",
        ] {
            assert_eq!(spreadsheet_safe(f), format!("'{f}"));
        }
        let sink = FileSink {
            name: "csv".into(),
            include_holdout: false,
            format: Format::Csv,
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: ObjectPath::from("out"),
            display: "out/".into(),
        };
        let csv = b"profile_id,job\n'=cmd,j\nplain,j\n";
        let ids: std::collections::HashSet<&str> = ["=cmd"].into_iter().collect();
        let (out, removed, rows) = sink.without(csv, &ids).unwrap();
        assert_eq!((removed, rows), (1, 1));
        assert_eq!(out, b"profile_id,job\nplain,j\n");
    }
}
