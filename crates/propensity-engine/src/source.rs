//! Opening a job's sources: a location (path, glob or URL) becomes an object store registered
//! with DataFusion and a listing table in the right format; field paths (`identityMap.ECID`)
//! become DataFusion expressions over that table's schema.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{DataFrame, Expr, SessionContext, ident};
use propensity_core::enums::DataFormat;
use propensity_core::{Domain, FieldPath, Location, Scheme, StorageOptions};
use url::Url;

use crate::EngineError;

pub use propensity_common::storage::{EnvLookup, OutputDir, output_dir};
use propensity_common::storage::{build_store, scheme_of};

/// A source opened as a DataFusion table.
#[derive(Debug)]
pub struct OpenedSource {
    /// The location as the user wrote it (no secrets: templates are never resolved here).
    pub display: String,
    pub format: DataFormat,
    pub frame: DataFrame,
    /// Number of files read (the listing's, less the empty ones).
    pub files: usize,
    /// Zero-byte files the listing found and left out (an export still being written, a
    /// failed upload): shown as a data-check warning.
    pub empty_files: Vec<String>,
}

/// Registers the store for `location` and opens it as a table. `what` names the job field
/// (`source.events`) for error messages.
pub async fn open(
    ctx: &SessionContext,
    location: &Location,
    format: Option<DataFormat>,
    storage: &StorageOptions,
    job_dir: &Path,
    env: &EnvLookup,
    what: &str,
) -> Result<OpenedSource, EngineError> {
    let display = location.uri.as_written().to_owned();
    let resolved = location
        .uri
        .resolve(|k| env(k))
        .map_err(|e| EngineError::user(format!("{what}.uri: {e}")))?;
    let text = resolved.expose().to_owned();
    let (table_url, scheme) = listing_url(&text, location.scheme, job_dir)
        .map_err(|m| EngineError::user(format!("{what}.uri `{display}`: {m}")))?;
    let format = match format {
        Some(f) => f,
        None => infer_format(&text).ok_or_else(|| {
            EngineError::user(format!(
                "{what}.format: cannot infer the format of `{display}` from its extension"
            ))
            .hint("set `format = \"parquet\"`, `\"csv\"` or `\"ndjson\"`")
        })?,
    };
    if !matches!(scheme, Scheme::Path | Scheme::File) {
        let store = build_store(scheme, table_url.get_url(), storage, env)
            .map_err(|m| EngineError::user(format!("{what}.storage: {m}")))?;
        let base = Url::parse(&table_url.get_url()[..url::Position::BeforePath])
            .map_err(|e| EngineError::internal(format!("store url: {e}")))?;
        ctx.register_object_store(&base, store);
    }
    let (file_format, ext): (Arc<dyn FileFormat>, &str) = match format {
        DataFormat::Parquet => (Arc::new(ParquetFormat::default()), ".parquet"),
        DataFormat::Csv => (Arc::new(CsvFormat::default().with_has_header(true)), ".csv"),
        DataFormat::Ndjson => (Arc::new(JsonFormat::default()), ""),
    };
    // A directory lists only files of the format's extension (skips `_SUCCESS` markers and
    // the like); an explicit file or glob is taken as written.
    let ext = if table_url.is_collection() && table_url.get_glob().is_none() {
        ext
    } else {
        ""
    };
    let options = ListingOptions::new(file_format).with_file_extension(ext);
    let state = ctx.state();
    let listed = {
        use futures::TryStreamExt;
        let store = ctx
            .runtime_env()
            .object_store(table_url.object_store())
            .map_err(|e| EngineError::internal(format!("{what}: {e}")))?;
        let listed: Vec<_> = table_url
            .list_all_files(&state, store.as_ref(), ext)
            .await
            .map_err(|e| list_error(e, what, &display))?
            .try_collect()
            .await
            .map_err(|e| list_error(e, what, &display))?;
        listed
    };
    let (empty, nonempty): (Vec<_>, Vec<_>) = listed.into_iter().partition(|m| m.size == 0);
    let empty_files: Vec<String> = empty.iter().map(|m| m.location.to_string()).collect();
    let files = nonempty.len();
    if files == 0 && !empty_files.is_empty() {
        return Err(EngineError::user(format!(
            "{what}.uri `{display}`: every file there is empty ({} zero-byte files, e.g. {})",
            empty_files.len(),
            empty_files[0]
        ))
        .hint(
            "wait for the export to finish, or point the job at the folder that holds the data",
        ));
    }
    if files == 0 {
        return Err(EngineError::user(format!(
            "{what}.uri `{display}`: no {} files found there",
            format_name(format)
        ))
        .hint("check the path (relative paths start at the job file's directory) and the format"));
    }
    // With empty files among them, the table is the non-empty files by name (a zero-byte
    // Parquet or CSV file cannot be read); otherwise the listing URL as written.
    let store_url = table_url.object_store();
    let config = if empty_files.is_empty() {
        ListingTableConfig::new(table_url)
    } else {
        let base = table_url.object_store();
        let urls = nonempty
            .iter()
            .map(|m| {
                ListingTableUrl::parse(format!("{}{}", base.as_str(), m.location))
                    .map_err(|e| EngineError::internal(format!("{what}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        ListingTableConfig::new_with_multi_paths(urls)
    };
    let config = match config
        .with_listing_options(options.clone())
        .infer_schema(&state)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            // Name the file (and for NDJSON the line) that cannot be read.
            let store = ctx
                .runtime_env()
                .object_store(&store_url)
                .map_err(|e| EngineError::internal(format!("{what}: {e}")))?;
            let culprit = bad_file(store.as_ref(), &nonempty, format).await;
            return Err(EngineError::user(format!(
                "{what}.uri `{display}`: cannot read the {} schema: {}",
                format_name(format),
                culprit.unwrap_or_else(|| crate::df_message(&e))
            )));
        }
    };
    let table = ListingTable::try_new(config)
        .map_err(|e| EngineError::internal(format!("{what}: {}", crate::df_message(&e))))?;
    let frame = ctx
        .read_table(Arc::new(table))
        .map_err(|e| EngineError::internal(format!("{what}: {}", crate::df_message(&e))))?;
    Ok(OpenedSource {
        display,
        format,
        frame,
        files,
        empty_files,
    })
}

fn list_error(e: datafusion::error::DataFusionError, what: &str, display: &str) -> EngineError {
    let msg = crate::df_message(&e);
    let domain = if msg.contains("NotFound") || msg.contains("not found") {
        Domain::User
    } else {
        Domain::External
    };
    EngineError::new(
        domain,
        format!("{what}.uri `{display}`: cannot list files: {msg}"),
    )
}

pub fn format_name(f: DataFormat) -> &'static str {
    match f {
        DataFormat::Parquet => "Parquet",
        DataFormat::Csv => "CSV",
        DataFormat::Ndjson => "NDJSON",
    }
}

/// The first listed file that does not read as `format`, and why: for NDJSON its first line
/// that is not a JSON object (1-based), for the others the reader's message.
async fn bad_file(
    store: &dyn datafusion::object_store::ObjectStore,
    files: &[datafusion::object_store::ObjectMeta],
    format: DataFormat,
) -> Option<String> {
    use datafusion::object_store::ObjectStoreExt;
    for m in files {
        let fail = |e: &dyn std::fmt::Display| Some(format!("`{}`: {e}", m.location));
        let problem = match format {
            // DataFusion's CSV messages name the line; which file is found by elimination
            // only for the formats below.
            DataFormat::Csv => return None,
            DataFormat::Ndjson => {
                let bytes = match store.get(&m.location).await {
                    Ok(r) => match r.bytes().await {
                        Ok(b) => b,
                        Err(e) => return fail(&e),
                    },
                    Err(e) => return fail(&e),
                };
                bytes
                    .split(|b| *b == b'\n')
                    .enumerate()
                    .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
                    .find_map(|(i, l)| {
                        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(l)
                            .err()
                            .map(|e| format!("line {}: not a JSON object: {e}", i + 1))
                    })
            }
            // Only the footer and the metadata are read, not the whole file.
            DataFormat::Parquet => parquet_footer(store, m).await.err(),
        };
        if let Some(p) = problem {
            return Some(format!("`{}` {p}", m.location));
        }
    }
    None
}

/// Reads and decodes a Parquet file's footer and metadata; `Err` says what is wrong.
async fn parquet_footer(
    store: &dyn datafusion::object_store::ObjectStore,
    m: &datafusion::object_store::ObjectMeta,
) -> Result<(), String> {
    use datafusion::object_store::ObjectStoreExt;
    use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};
    if m.size < 12 {
        return Err(format!("is {} bytes, too short for a Parquet file", m.size));
    }
    let tail = store
        .get_range(&m.location, m.size - 8..m.size)
        .await
        .map_err(|e| e.to_string())?;
    let tail: [u8; 8] = tail[..].try_into().map_err(|_| "short read".to_owned())?;
    let footer = FooterTail::try_new(&tail).map_err(|e| e.to_string())?;
    let len = footer.metadata_length() as u64;
    if len + 8 > m.size {
        return Err(format!(
            "its footer claims {len} bytes of metadata in a {}-byte file",
            m.size
        ));
    }
    let meta = store
        .get_range(&m.location, m.size - 8 - len..m.size - 8)
        .await
        .map_err(|e| e.to_string())?;
    ParquetMetaDataReader::decode_metadata(&meta)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The format from the extension of the last path segment (`events/*.parquet` too).
pub fn infer_format(uri: &str) -> Option<DataFormat> {
    let last = uri.trim_end_matches('/').rsplit('/').next()?;
    let ext = last.rsplit_once('.')?.1.to_ascii_lowercase();
    match ext.as_str() {
        "parquet" | "pq" => Some(DataFormat::Parquet),
        "csv" => Some(DataFormat::Csv),
        "json" | "ndjson" | "jsonl" => Some(DataFormat::Ndjson),
        _ => None,
    }
}

/// Splits a location into DataFusion's listing URL (base + glob) and the actual scheme.
fn listing_url(
    text: &str,
    written: Scheme,
    job_dir: &Path,
) -> Result<(ListingTableUrl, Scheme), String> {
    let scheme = match written {
        Scheme::FromEnv => scheme_of(text)?,
        s => s,
    };
    if scheme == Scheme::Path {
        let p = Path::new(text);
        let abs: PathBuf = if p.is_absolute() {
            p.to_owned()
        } else {
            job_dir.join(p)
        };
        let mut s = abs.to_string_lossy().into_owned();
        if text.ends_with('/') && !s.ends_with('/') {
            s.push('/');
        }
        let url = ListingTableUrl::parse(&s).map_err(|e| crate::df_message(&e))?;
        return Ok((url, scheme));
    }
    // URLs: DataFusion expands globs only in paths, so split `base/` and `glob` here.
    // `?` starts a query in a URL (presigned and SAS URLs): only `*` and `[` are globs here.
    let (base, glob) = match text.find(['*', '[']) {
        Some(i) => {
            let cut = text[..i]
                .rfind('/')
                .map(|j| j + 1)
                .ok_or("a glob needs a directory before it")?;
            (&text[..cut], Some(&text[cut..]))
        }
        None => (text, None),
    };
    let url = Url::parse(base).map_err(|e| format!("not a valid URL: {e}"))?;
    let glob = glob
        .map(|g| glob::Pattern::new(g).map_err(|e| format!("bad glob `{g}`: {e}")))
        .transpose()?;
    let url = ListingTableUrl::try_new(url, glob).map_err(|e| crate::df_message(&e))?;
    Ok((url, scheme))
}

/// A field of a table: a DataFusion expression and the Arrow type it has.
#[derive(Debug, Clone)]
pub struct ResolvedField {
    pub expr: Expr,
    pub data_type: DataType,
}

/// Resolves a dotted path: a top-level column literally named `a.b` (CSV headers, flattened
/// exports) wins; otherwise the path walks into structs.
pub fn resolve_field(schema: &Schema, path: &FieldPath) -> Result<ResolvedField, String> {
    let full = path.to_string();
    if let Ok(f) = schema.field_with_name(&full) {
        return Ok(ResolvedField {
            expr: ident(full),
            data_type: f.data_type().clone(),
        });
    }
    let parts = &path.0;
    let first = schema.field_with_name(&parts[0]).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        not_found(&parts[0], &names, "column")
    })?;
    let mut expr = ident(parts[0].clone());
    let mut ty = first.data_type().clone();
    for (i, part) in parts.iter().enumerate().skip(1) {
        let DataType::Struct(children) = &ty else {
            return Err(format!(
                "`{}` is a {} column, not a struct, so it has no field `{part}`",
                parts[..i].join("."),
                type_name(&ty)
            ));
        };
        let child: &Field = children.iter().find(|f| f.name() == part).ok_or_else(|| {
            let names: Vec<&str> = children.iter().map(|f| f.name().as_str()).collect();
            not_found(
                part,
                &names,
                &format!("field of `{}`", parts[..i].join(".")),
            )
        })?;
        expr = datafusion::functions::core::expr_fn::get_field(expr, part.as_str());
        ty = child.data_type().clone();
    }
    Ok(ResolvedField {
        expr,
        data_type: ty,
    })
}

fn not_found(name: &str, names: &[&str], what: &str) -> String {
    let mut m = format!("no {what} `{name}`");
    // The same suggestion rule as job-file keys.
    if let Some(c) = propensity_core::suggest::did_you_mean(name, names.iter().copied()) {
        m.push_str(&format!("; did you mean `{c}`?"));
    }
    let shown: Vec<&str> = names.iter().take(20).copied().collect();
    m.push_str(&format!(
        " (found: {}{})",
        shown.join(", "),
        if names.len() > 20 { ", …" } else { "" }
    ));
    m
}

/// A short, user-facing name for an Arrow type.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Struct(_) => "struct".into(),
        DataType::List(_) | DataType::LargeList(_) | DataType::ListView(_) => "list".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        t if t.is_integer() => "integer".into(),
        t if t.is_floating()
            || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
        {
            "number".into()
        }
        t => t.to_string(),
    }
}

pub fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

pub fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}
