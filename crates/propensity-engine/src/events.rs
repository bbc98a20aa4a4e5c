//! Reading events: one streaming scan through DataFusion projects each event to what the job
//! needs (profile, time, type, goal match, custom-event matches, numeric fields), checks it and
//! either keeps it in a compact per-profile store or sets it aside with a reason.
//!
//! Checks on each row (counted, never silently dropped): null profile id, null or unparseable
//! timestamp, null event type, events in the future, events the job excludes, events
//! identical in every field the job reads (removed only with `source.events.dedupe = true`),
//! and string values that do not convert to the number a field needs.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, StringArray};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use chrono::{DateTime, NaiveDateTime};
use datafusion::logical_expr::{cast, try_cast};
use datafusion::prelude::{DataFrame, Expr, lit};
use futures::StreamExt;
use propensity_core::enums::TimestampFormat;
use propensity_core::{Goal, Job};
use serde::Serialize;

use crate::EngineError;
use crate::compile::{Coercion, Compiler};
use crate::source::{ResolvedField, is_numeric, is_string, resolve_field, type_name};

pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Bit 0 of [`EventStore::flags`]: the event meets the goal's conditions.
pub const GOAL_BIT: u32 = 1;
/// At most this many custom events (one flag bit each, after the goal bit).
pub const MAX_CUSTOM_EVENTS: usize = 31;

/// The events a run uses, grouped by profile and sorted by time within each profile.
#[derive(Debug, Default, Clone)]
pub struct EventStore {
    /// Profile index → id.
    pub profile_ids: Vec<String>,
    /// Events of profile `p` are `offsets[p]..offsets[p + 1]`.
    pub offsets: Vec<usize>,
    /// Microseconds since the Unix epoch, UTC.
    pub ts: Vec<i64>,
    /// Index into `type_names`.
    pub etype: Vec<u32>,
    /// [`GOAL_BIT`], then one bit per custom event.
    pub flags: Vec<u32>,
    /// `num_fields` values per event, NaN where missing.
    pub nums: Vec<f32>,
    pub num_fields: usize,
    /// The numeric fields, in `nums` order: the job's `numeric_fields`, or the columns found
    /// when it has none.
    pub num_names: Vec<String>,
    pub type_names: Vec<String>,
}

impl EventStore {
    pub fn profiles(&self) -> usize {
        self.profile_ids.len()
    }
    pub fn events(&self) -> usize {
        self.ts.len()
    }
    pub fn range(&self, p: usize) -> std::ops::Range<usize> {
        self.offsets[p]..self.offsets[p + 1]
    }
}

/// What the scan saw, before anything is trained. Part of the data-check report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScanCounts {
    pub rows_read: u64,
    pub null_profile_id: u64,
    /// Profile ids no sink can key a row by (see `propensity_core::id`), set aside.
    pub unusable_profile_id: u64,
    /// Up to five of them, shortened and escaped, for the report.
    pub unusable_profile_id_examples: Vec<String>,
    pub null_timestamp: u64,
    pub unparseable_timestamp: u64,
    /// Up to five unparseable timestamp values, as found.
    pub unparseable_timestamp_examples: Vec<String>,
    pub null_event_type: u64,
    /// Events later than the clock of the machine running the job.
    pub future_events: u64,
    /// Events matching `eligibility.exclude_events`.
    pub excluded_events: u64,
    /// Valid events older than anything the job looks at.
    pub before_horizon: u64,
    /// Valid events at or after the as-of time (used by nothing in this run).
    pub after_as_of: u64,
    /// Events identical in every field the job reads to an earlier one of the same profile,
    /// removed because `source.events.dedupe` is on.
    pub duplicate_events: u64,
    /// Such events kept because `dedupe` is off (the default): same-day orders in a log that
    /// stores only dates are not duplicates.
    pub identical_events: u64,
    pub events_kept: u64,
    pub profiles: u64,
    /// Earliest and latest valid event time (RFC 3339), over the whole source.
    pub first_event: Option<String>,
    pub last_event: Option<String>,
    /// Valid events per event type, over the whole source.
    pub event_types: Vec<(String, u64)>,
    /// Per converted field: values present but not convertible to a number.
    pub unconvertible_values: Vec<UnconvertibleField>,
    /// Numeric columns used as `numeric_fields` because the job names none.
    pub numeric_fields_found: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct UnconvertibleField {
    pub field: String,
    pub present: u64,
    pub unconvertible: u64,
}

impl ScanCounts {
    /// Rows set aside as invalid (not counting exclusions, duplicates or unused history).
    pub fn invalid(&self) -> u64 {
        self.null_profile_id
            + self.unusable_profile_id
            + self.null_timestamp
            + self.unparseable_timestamp
            + self.null_event_type
            + self.future_events
    }
}

/// The time range a scan keeps and the clock it checks against (microseconds, UTC).
#[derive(Debug, Clone, Copy)]
pub struct ScanRange {
    /// Events before this are counted but not kept.
    pub keep_from: i64,
    /// Events at or after this are counted but not kept (the as-of time).
    pub keep_until: i64,
    /// Events later than this are "in the future".
    pub now: i64,
}

/// The projection of the events table that the scan reads, column by column.
struct Projection {
    exprs: Vec<Expr>,
    ts_type: DataType,
    custom: usize,
    nums: usize,
    /// The numeric fields read, as written or found (see `Features::numeric_fields_auto`).
    num_names: Vec<String>,
    coercions: Vec<String>,
    /// Event fields a goal plugin reads, last in `exprs`.
    extras: usize,
}

/// An event field a goal plugin reads, and the type it is handed over in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraField {
    pub path: String,
    pub data_type: DataType,
}

impl ExtraField {
    /// The Arrow type the host sends for a plugin's field request.
    pub fn from_request(r: &propensity_plugin::FieldRequest) -> Self {
        let data_type = match r.kind {
            propensity_plugin::FieldKind::Number => DataType::Float64,
            propensity_plugin::FieldKind::Time => {
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()))
            }
            propensity_plugin::FieldKind::Text => DataType::Utf8,
        };
        Self {
            path: r.path.clone(),
            data_type,
        }
    }
}

/// Resolves the job's fields against the events schema and builds the projection. Every
/// problem (a missing column, a type that cannot work, a predicate over a missing field) is
/// collected, so one run reports them all.
fn project(
    job: &Job,
    frame: &DataFrame,
    display: &str,
    extra: &[ExtraField],
) -> Result<Projection, EngineError> {
    let schema = frame.schema().as_arrow().clone();
    let cols = &job.events.columns;
    let mut errors: Vec<String> = Vec::new();
    let mut column =
        |key: &str, path: &propensity_core::FieldPath| match resolve_field(&schema, path) {
            Ok(f) => Some(f),
            Err(m) => {
                errors.push(format!("source.events.columns.{key} = \"{path}\": {m}"));
                None
            }
        };
    let pid = column("profile_id", &cols.profile_id);
    let ts = column("timestamp", &cols.timestamp);
    let et = column("event_type", &cols.event_type);
    let mut check_type =
        |key: &str, f: &Option<ResolvedField>, ok: &dyn Fn(&DataType) -> bool, need: &str| {
            if let Some(f) = f
                && !ok(&f.data_type)
            {
                errors.push(format!(
                    "source.events.columns.{key}: column is a {}, but {need}",
                    type_name(&f.data_type)
                ));
            }
        };
    let id_like = |t: &DataType| is_string(t) || t.is_integer();
    check_type(
        "profile_id",
        &pid,
        &id_like,
        "a profile id must be a string or an integer",
    );
    check_type(
        "event_type",
        &et,
        &id_like,
        "an event type must be a string or an integer",
    );
    let fmt = job.events.timestamp_format;
    let ts_ok = |t: &DataType| match fmt {
        TimestampFormat::Auto => {
            is_string(t)
                || is_numeric(t)
                || matches!(
                    t,
                    DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
                )
        }
        TimestampFormat::Rfc3339 => is_string(t) || matches!(t, DataType::Timestamp(..)),
        TimestampFormat::EpochSeconds | TimestampFormat::EpochMillis => {
            is_string(t) || is_numeric(t)
        }
    };
    check_type(
        "timestamp",
        &ts,
        &ts_ok,
        &format!(
            "timestamp_format = \"{fmt}\" needs RFC 3339 strings, epoch numbers or an Arrow timestamp"
        ),
    );

    // Logical names in predicates and conditions: the three mapped columns, then any field.
    let fields = |p: &propensity_core::FieldPath| -> Result<ResolvedField, String> {
        let mapped = match p.to_string().as_str() {
            "profile_id" => Some(&cols.profile_id),
            "event_type" => Some(&cols.event_type),
            "timestamp" => Some(&cols.timestamp),
            _ => None,
        };
        resolve_field(&schema, mapped.unwrap_or(p))
    };
    let mut compiler = Compiler::default();
    let excluded = match &job.eligibility.exclude_events {
        Some(p) => match compiler.predicate(&p.expr, &fields) {
            Ok(e) => e,
            Err(m) => {
                errors.push(format!("eligibility.exclude_events `{}`: {m}", p.text));
                lit(false)
            }
        },
        None => lit(false),
    };
    let goal = match &job.goal {
        Goal::Conditions(g) => match compiler.conditions(&g.conditions, g.r#match, &fields) {
            Ok(e) => e,
            Err(ms) => {
                errors.extend(ms);
                lit(false)
            }
        },
        // `Engine::load` refuses plugin goals before any scan; they label outside the events.
        Goal::Plugin(_) => lit(false),
    };
    if job.features.custom_events.len() > MAX_CUSTOM_EVENTS {
        errors.push(format!(
            "features.custom_events: {} custom events; at most {MAX_CUSTOM_EVENTS} are supported",
            job.features.custom_events.len()
        ));
    }
    let mut custom = Vec::new();
    for (name, p) in job.features.custom_events.iter().take(MAX_CUSTOM_EVENTS) {
        match compiler.predicate(&p.expr, &fields) {
            Ok(e) => custom.push(e),
            Err(m) => {
                errors.push(format!("features.custom_events.{name} `{}`: {m}", p.text));
                custom.push(lit(false));
            }
        }
    }
    // Without `numeric_fields` in the job: the top-level numeric columns that no mapping or
    // exclusion names, in schema order.
    let auto: Vec<propensity_core::FieldPath> = if job.features.numeric_fields_auto {
        let mapped: Vec<String> = [&cols.profile_id, &cols.timestamp, &cols.event_type]
            .iter()
            .map(|c| c.to_string())
            .collect();
        schema
            .fields()
            .iter()
            .filter(|f| is_numeric(f.data_type()))
            .map(|f| f.name().clone())
            .filter(|n| !mapped.contains(n) && !job.features.exclude.contains(n))
            .filter_map(|n| propensity_core::FieldPath::parse(&n))
            .filter(|p| p.0.len() == 1)
            .take(propensity_core::Features::AUTO_NUMERIC_FIELDS)
            .collect()
    } else {
        Vec::new()
    };
    let numeric_fields = if job.features.numeric_fields_auto {
        &auto
    } else {
        &job.features.numeric_fields
    };
    let num_names: Vec<String> = numeric_fields.iter().map(|p| p.to_string()).collect();
    let mut nums = Vec::new();
    for (i, path) in numeric_fields.iter().enumerate() {
        match fields(path) {
            // A column with no values at all (CSV inference gives it the Null type) is missing.
            Ok(f) if is_numeric(&f.data_type) || f.data_type == DataType::Null => {
                nums.push(cast(f.expr, DataType::Float64))
            }
            Ok(f) if is_string(&f.data_type) => {
                let field = path.to_string();
                if !compiler.coercions.iter().any(|c| c.field == field) {
                    compiler.coercions.push(Coercion {
                        field,
                        raw: f.expr.clone(),
                    });
                }
                nums.push(try_cast(f.expr, DataType::Float64));
            }
            Ok(f) => {
                errors.push(format!(
                    "features.numeric_fields[{i}] = \"{path}\": the field is a {}, not a number",
                    type_name(&f.data_type)
                ));
                nums.push(lit(f64::NAN));
            }
            Err(m) => {
                errors.push(format!("features.numeric_fields[{i}] = \"{path}\": {m}"));
                nums.push(lit(f64::NAN));
            }
        }
    }
    let mut extras = Vec::new();
    for f in extra {
        let resolved = propensity_core::FieldPath::parse(&f.path)
            .ok_or_else(|| format!("`{}` is not a field path", f.path))
            .and_then(|p| fields(&p));
        // The casts the host makes: numbers from numbers or numeric text, times from
        // timestamps, dates or RFC 3339 text, text from anything. Nothing else is guessed (an
        // integer is not read as an epoch time).
        let fits = |t: &DataType| {
            *t == DataType::Null
                || match &f.data_type {
                    DataType::Float64 => is_numeric(t) || is_string(t),
                    DataType::Timestamp(..) => {
                        is_string(t)
                            || matches!(
                                t,
                                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
                            )
                    }
                    _ => !matches!(
                        t,
                        DataType::Struct(_) | DataType::List(_) | DataType::Map(..)
                    ),
                }
        };
        match resolved {
            Ok(r) if fits(&r.data_type) => extras.push(try_cast(r.expr, f.data_type.clone())),
            Ok(r) => {
                let want = match &f.data_type {
                    DataType::Float64 => "a number",
                    DataType::Timestamp(..) => "a time (a timestamp, a date or RFC 3339 text)",
                    _ => "text",
                };
                errors.push(format!(
                    "goal plugin field `{}`: the field is a {}, but the plugin reads it as {want}",
                    f.path,
                    type_name(&r.data_type)
                ));
                extras.push(try_cast(
                    lit(datafusion::scalar::ScalarValue::Null),
                    f.data_type.clone(),
                ));
            }
            Err(m) => {
                errors.push(format!("goal plugin field `{}`: {m}", f.path));
                extras.push(try_cast(
                    lit(datafusion::scalar::ScalarValue::Null),
                    f.data_type.clone(),
                ));
            }
        }
    }
    if !errors.is_empty() {
        let mut msg = format!("the events in `{display}` do not fit the job:");
        for e in &errors {
            msg.push_str("\n  - ");
            msg.push_str(e);
        }
        return Err(EngineError::user(msg).hint(
            "fix the column mapping in [source.events.columns] or the field names in the job; \
             nested fields are written with dots (`commerce.order.priceTotal`)",
        ));
    }
    let (Some(pid), Some(ts), Some(et)) = (pid, ts, et) else {
        return Err(EngineError::internal("column errors were not reported"));
    };
    let as_string = |f: ResolvedField| {
        if f.data_type == DataType::Utf8 {
            f.expr
        } else {
            cast(f.expr, DataType::Utf8)
        }
    };
    let ts_type = if is_string(&ts.data_type) {
        DataType::Utf8
    } else {
        ts.data_type.clone()
    };
    let ts_expr = if is_string(&ts.data_type) {
        as_string(ts.clone())
    } else {
        ts.expr.clone()
    };
    let mut exprs = vec![as_string(pid), ts_expr, as_string(et), excluded, goal];
    let n_custom = custom.len();
    let n_nums = nums.len();
    exprs.extend(custom);
    exprs.extend(nums);
    let coercions: Vec<String> = compiler.coercions.iter().map(|c| c.field.clone()).collect();
    // Two columns per converted field: the value is present; it is present but does not convert.
    for c in compiler.coercions {
        exprs.push(c.raw.clone().is_not_null());
        exprs.push(
            c.raw
                .clone()
                .is_not_null()
                .and(try_cast(c.raw, DataType::Float64).is_null()),
        );
    }
    let n_extras = extras.len();
    exprs.extend(extras);
    let exprs = exprs
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.alias(format!("c{i}")))
        .collect();
    Ok(Projection {
        exprs,
        ts_type,
        custom: n_custom,
        nums: n_nums,
        num_names,
        coercions,
        extras: n_extras,
    })
}

/// Strings to dense codes, in order of first appearance. A repeat of the previous string
/// (the events of one profile or one session in a row) and small sets (event types) skip
/// the hash lookup.
#[derive(Default)]
struct Interner {
    map: HashMap<String, u32>,
    names: Vec<String>,
    last: u32,
}

impl Interner {
    fn code(&mut self, s: &str) -> u32 {
        if let Some(n) = self.names.get(self.last as usize)
            && n == s
        {
            return self.last;
        }
        let found = if self.names.len() <= 16 {
            self.names.iter().position(|n| n == s).map(|i| i as u32)
        } else {
            self.map.get(s).copied()
        };
        let code = found.unwrap_or_else(|| {
            let c = self.names.len() as u32;
            self.map.insert(s.to_owned(), c);
            self.names.push(s.to_owned());
            c
        });
        self.last = code;
        code
    }
}

/// Raw events as scanned, before grouping by profile.
#[derive(Default)]
struct Raw {
    pid: Vec<u32>,
    ts: Vec<i64>,
    etype: Vec<u32>,
    flags: Vec<u32>,
    nums: Vec<f32>,
    /// Per extra field, the kept events' values (in raw order), batch by batch.
    extras: Vec<Vec<ArrayRef>>,
}

/// Scans the events once and returns the grouped store and what the scan saw.
pub async fn scan(
    job: &Job,
    frame: DataFrame,
    display: &str,
    range: ScanRange,
    extra: &[ExtraField],
) -> Result<(EventStore, ScanCounts, Vec<ArrayRef>), EngineError> {
    let proj = project(job, &frame, display, extra)?;
    let frame = frame.select(proj.exprs.clone()).map_err(|e| {
        EngineError::internal(format!("events projection: {}", crate::df_message(&e)))
    })?;
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| crate::read_error(e, display))?;

    let fmt = job.events.timestamp_format;
    let mut counts = ScanCounts::default();
    let mut profiles = Interner::default();
    let mut types = Interner::default();
    let mut type_counts: Vec<u64> = Vec::new();
    let mut coercion_counts = vec![(0u64, 0u64); proj.coercions.len()];
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let mut raw = Raw {
        extras: vec![Vec::new(); proj.extras],
        ..Raw::default()
    };
    let nn = proj.nums;
    let mut kept: Vec<u32> = Vec::new();
    let mut ts_buf: Vec<Option<i64>> = Vec::new();

    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| crate::read_error(e, display))?;
        let n = batch.num_rows();
        counts.rows_read += n as u64;
        let col = |i: usize| batch.column(i);
        let pid = col(0).as_string::<i32>();
        let et = col(2).as_string::<i32>();
        let excluded = col(3).as_boolean();
        let goal = col(4).as_boolean();
        let custom: Vec<&BooleanArray> =
            (0..proj.custom).map(|j| col(5 + j).as_boolean()).collect();
        let nums: Vec<&Float64Array> = (0..nn)
            .map(|j| col(5 + proj.custom + j).as_primitive::<Float64Type>())
            .collect();
        let bad_start = 5 + proj.custom + nn;
        let extra_start = bad_start + 2 * proj.coercions.len();
        kept.clear();
        timestamps(col(1), &proj.ts_type, fmt, &mut ts_buf)?;
        // Conversion checks count every row, valid or not, so the fraction is honest.
        for (j, c) in coercion_counts.iter_mut().enumerate() {
            c.0 += col(bad_start + 2 * j).as_boolean().true_count() as u64;
            c.1 += col(bad_start + 2 * j + 1).as_boolean().true_count() as u64;
        }
        let ts_col = col(1);
        let ts_text = (proj.ts_type == DataType::Utf8).then(|| ts_col.as_string::<i32>());
        for (i, &ts) in ts_buf.iter().enumerate() {
            if pid.is_null(i) {
                counts.null_profile_id += 1;
                continue;
            }
            if let Some(why) = propensity_core::id::profile_id_problem(pid.value(i)) {
                counts.unusable_profile_id += 1;
                let examples = &mut counts.unusable_profile_id_examples;
                if examples.len() < 5 {
                    let shown: String = pid.value(i).chars().take(40).collect();
                    examples.push(format!("{shown:?} ({why})"));
                }
                continue;
            }
            let Some(t) = ts else {
                if ts_col.is_null(i) {
                    counts.null_timestamp += 1;
                } else {
                    counts.unparseable_timestamp += 1;
                    let examples = &mut counts.unparseable_timestamp_examples;
                    let shown = match ts_text {
                        Some(a) => a.value(i).chars().take(64).collect(),
                        None => arrow::util::display::array_value_to_string(ts_col, i)
                            .unwrap_or_default(),
                    };
                    if examples.len() < 5 && !examples.contains(&shown) {
                        examples.push(shown);
                    }
                }
                continue;
            };
            if et.is_null(i) {
                counts.null_event_type += 1;
                continue;
            }
            if t > range.now {
                counts.future_events += 1;
                continue;
            }
            let code = types.code(et.value(i));
            if code as usize == type_counts.len() {
                type_counts.push(0);
            }
            type_counts[code as usize] += 1;
            if excluded.value(i) {
                counts.excluded_events += 1;
                continue;
            }
            // History covered: excluded traffic (synthetic pings) must not hide a stale export.
            first = first.min(t);
            last = last.max(t);
            if t < range.keep_from {
                counts.before_horizon += 1;
                continue;
            }
            if t >= range.keep_until {
                counts.after_as_of += 1;
                continue;
            }
            let p = profiles.code(pid.value(i));
            let mut flags = u32::from(goal.value(i));
            for (j, c) in custom.iter().enumerate() {
                flags |= u32::from(c.value(i)) << (j + 1);
            }
            if proj.extras > 0 {
                kept.push(i as u32);
            }
            raw.pid.push(p);
            raw.ts.push(t);
            raw.etype.push(code);
            raw.flags.push(flags);
            for a in &nums {
                raw.nums.push(if a.is_null(i) {
                    f32::NAN
                } else {
                    a.value(i) as f32
                });
            }
        }
        if !kept.is_empty() {
            let idx = arrow::array::UInt32Array::from(std::mem::take(&mut kept));
            for (j, parts) in raw.extras.iter_mut().enumerate() {
                parts.push(
                    arrow::compute::take(col(extra_start + j).as_ref(), &idx, None)
                        .map_err(|e| EngineError::internal(format!("plugin fields: {e}")))?,
                );
            }
        }
    }
    let extras = if proj.extras == 0 {
        Vec::new()
    } else {
        raw.extras
            .iter()
            .zip(extra)
            .map(|(parts, f)| {
                let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                if parts.is_empty() {
                    Ok(arrow::array::new_empty_array(&f.data_type))
                } else {
                    arrow::compute::concat(&parts)
                }
            })
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|e| EngineError::internal(format!("plugin fields: {e}")))?
    };
    if first <= last {
        counts.first_event = Some(crate::rfc3339(first));
        counts.last_event = Some(crate::rfc3339(last));
    }
    let (profile_ids, type_names) = (profiles.names, types.names);
    let mut by_type: Vec<(String, u64)> = type_names.iter().cloned().zip(type_counts).collect();
    by_type.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.event_types = by_type;
    counts.unconvertible_values = proj
        .coercions
        .iter()
        .zip(coercion_counts)
        .map(|(f, (present, bad))| UnconvertibleField {
            field: f.clone(),
            present,
            unconvertible: bad,
        })
        .collect();
    // Profiles in id order, whatever order DataFusion's partitions delivered them in: the
    // snapshots and every output are then the same from run to run.
    let mut order: Vec<u32> = (0..profile_ids.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| profile_ids[a as usize].cmp(&profile_ids[b as usize]));
    let mut remap = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate() {
        remap[old as usize] = new as u32;
    }
    for p in raw.pid.iter_mut() {
        *p = remap[*p as usize];
    }
    let mut profile_ids = profile_ids;
    let sorted: Vec<String> = order
        .iter()
        .map(|&o| std::mem::take(&mut profile_ids[o as usize]))
        .collect();
    let (mut store, order) = group(
        raw,
        sorted,
        type_names,
        nn,
        &extras,
        job.events.dedupe,
        &mut counts,
    )?;
    store.num_names = proj.num_names.clone();
    if job.features.numeric_fields_auto {
        counts.numeric_fields_found = proj.num_names.clone();
    }
    counts.events_kept = store.events() as u64;
    counts.profiles = store.profiles() as u64;
    // The plugin fields in the store's order.
    let extras = if extras.is_empty() {
        extras
    } else {
        let idx = arrow::array::UInt32Array::from(order);
        extras
            .iter()
            .map(|a| arrow::compute::take(a.as_ref(), &idx, None))
            .collect::<Result<Vec<ArrayRef>, _>>()
            .map_err(|e| EngineError::internal(format!("plugin fields: {e}")))?
    };
    Ok((store, counts, extras))
}

/// Converts the timestamp column to microseconds (UTC); `None` where null or unparseable
/// (the caller tells which and counts it).
fn timestamps(
    a: &ArrayRef,
    ty: &DataType,
    fmt: TimestampFormat,
    out: &mut Vec<Option<i64>>,
) -> Result<(), EngineError> {
    out.clear();
    let n = a.len();
    macro_rules! prim {
        ($t:ty, $f:expr) => {{
            let arr = a.as_primitive::<$t>();
            for i in 0..n {
                out.push(if arr.is_null(i) {
                    None
                } else {
                    $f(arr.value(i))
                });
            }
        }};
    }
    let epoch_i = |v: i64| -> Option<i64> {
        match fmt {
            TimestampFormat::EpochMillis => v.checked_mul(1000),
            TimestampFormat::EpochSeconds => v.checked_mul(1_000_000),
            _ if v.unsigned_abs() < 100_000_000_000 => v.checked_mul(1_000_000),
            _ => v.checked_mul(1000),
        }
    };
    let epoch_f = |v: f64| -> Option<i64> {
        if !v.is_finite() {
            return None;
        }
        let micros = match fmt {
            TimestampFormat::EpochMillis => v * 1e3,
            TimestampFormat::EpochSeconds => v * 1e6,
            _ if v.abs() < 1e11 => v * 1e6,
            _ => v * 1e3,
        };
        (micros.abs() < 9.0e18).then_some(micros.round() as i64)
    };
    match ty {
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => prim!(TimestampSecondType, |v: i64| v.checked_mul(1_000_000)),
            TimeUnit::Millisecond => prim!(TimestampMillisecondType, |v: i64| v.checked_mul(1000)),
            TimeUnit::Microsecond => prim!(TimestampMicrosecondType, Some),
            TimeUnit::Nanosecond => {
                prim!(TimestampNanosecondType, |v: i64| Some(v.div_euclid(1000)))
            }
        },
        DataType::Date32 => prim!(Date32Type, |v: i32| i64::from(v)
            .checked_mul(MICROS_PER_DAY)),
        DataType::Date64 => prim!(Date64Type, |v: i64| v.checked_mul(1000)),
        DataType::Int8 => prim!(Int8Type, |v: i8| epoch_i(v.into())),
        DataType::Int16 => prim!(Int16Type, |v: i16| epoch_i(v.into())),
        DataType::Int32 => prim!(Int32Type, |v: i32| epoch_i(v.into())),
        DataType::Int64 => prim!(Int64Type, epoch_i),
        DataType::UInt8 => prim!(UInt8Type, |v: u8| epoch_i(v.into())),
        DataType::UInt16 => prim!(UInt16Type, |v: u16| epoch_i(v.into())),
        DataType::UInt32 => prim!(UInt32Type, |v: u32| epoch_i(v.into())),
        DataType::UInt64 => prim!(UInt64Type, |v: u64| i64::try_from(v).ok().and_then(epoch_i)),
        DataType::Float32 => prim!(Float32Type, |v: f32| epoch_f(v.into())),
        DataType::Float64 => prim!(Float64Type, epoch_f),
        DataType::Utf8 => {
            let arr: &StringArray = a.as_string::<i32>();
            for i in 0..n {
                out.push(if arr.is_null(i) {
                    None
                } else {
                    parse_time(arr.value(i), fmt)
                });
            }
        }
        other => {
            return Err(EngineError::internal(format!(
                "timestamp column type {other} was not rejected"
            )));
        }
    }
    Ok(())
}

/// Parses one timestamp string. `auto` and `rfc3339` accept RFC 3339 (`2026-05-01T12:00:00Z`,
/// offsets normalised to UTC); `auto` also accepts a date-time without offset (read as UTC,
/// `T` or space separated), a bare date, and epoch numbers as text.
pub fn parse_time(s: &str, fmt: TimestampFormat) -> Option<i64> {
    let s = s.trim();
    match fmt {
        TimestampFormat::EpochSeconds | TimestampFormat::EpochMillis => {
            let v: f64 = s.parse().ok()?;
            let m = if fmt == TimestampFormat::EpochSeconds {
                1e6
            } else {
                1e3
            };
            let micros = v * m;
            (micros.is_finite() && micros.abs() < 9.0e18).then_some(micros.round() as i64)
        }
        TimestampFormat::Rfc3339 => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|d| d.timestamp_micros()),
        TimestampFormat::Auto => {
            if let Ok(d) = DateTime::parse_from_rfc3339(s) {
                return Some(d.timestamp_micros());
            }
            for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
                if let Ok(d) = NaiveDateTime::parse_from_str(s, f) {
                    return Some(d.and_utc().timestamp_micros());
                }
            }
            if let Ok(d) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
                return Some(d.timestamp_micros());
            }
            if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                return d
                    .and_hms_opt(0, 0, 0)
                    .map(|d| d.and_utc().timestamp_micros());
            }
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
            {
                let v: f64 = s.parse().ok()?;
                let micros = if v.abs() < 1e11 { v * 1e6 } else { v * 1e3 };
                return (micros.abs() < 9.0e18).then_some(micros.round() as i64);
            }
            None
        }
    }
}

/// Groups the raw events by profile (a counting sort), in time order; with `dedupe`, events
/// identical in every field read are kept once (else counted as identical and kept). Also
/// returns, when there are `extras` (plugin fields, in raw order), the raw index of each
/// stored event.
#[allow(clippy::too_many_arguments)]
fn group(
    raw: Raw,
    profile_ids: Vec<String>,
    type_names: Vec<String>,
    nn: usize,
    extras: &[ArrayRef],
    dedupe: bool,
    counts: &mut ScanCounts,
) -> Result<(EventStore, Vec<u32>), EngineError> {
    // The plugin fields as comparable rows: they order events that tie on everything else
    // (so the order does not depend on how partitions arrived) and tell duplicates apart.
    let extra_rows = if extras.is_empty() {
        None
    } else {
        let conv = arrow::row::RowConverter::new(
            extras
                .iter()
                .map(|a| arrow::row::SortField::new(a.data_type().clone()))
                .collect(),
        )
        .and_then(|c| c.convert_columns(extras))
        .map_err(|e| EngineError::internal(format!("plugin fields: {e}")))?;
        Some(conv)
    };
    let extra_cmp = |a: u32, b: u32| {
        extra_rows.as_ref().map_or(std::cmp::Ordering::Equal, |r| {
            r.row(a as usize).cmp(&r.row(b as usize))
        })
    };
    let same_extra = |a: u32, b: u32| extra_cmp(a, b) == std::cmp::Ordering::Equal;
    let mut src: Vec<u32> = Vec::new();
    let np = profile_ids.len();
    let mut offsets = vec![0usize; np + 1];
    for &p in &raw.pid {
        offsets[p as usize + 1] += 1;
    }
    for i in 0..np {
        offsets[i + 1] += offsets[i];
    }
    let mut next = offsets.clone();
    let mut order = vec![0u32; raw.pid.len()];
    for (i, &p) in raw.pid.iter().enumerate() {
        order[next[p as usize]] = i as u32;
        next[p as usize] += 1;
    }
    let key = |i: u32| {
        (
            raw.ts[i as usize],
            raw.etype[i as usize],
            raw.flags[i as usize],
        )
    };
    let nums_of = |i: u32| &raw.nums[i as usize * nn..(i as usize + 1) * nn];
    let same_nums = |a: u32, b: u32| {
        nums_of(a)
            .iter()
            .zip(nums_of(b))
            .all(|(x, y)| x.to_bits() == y.to_bits())
    };
    let mut store = EventStore {
        profile_ids,
        offsets: Vec::with_capacity(np + 1),
        ts: Vec::with_capacity(order.len()),
        etype: Vec::with_capacity(order.len()),
        flags: Vec::with_capacity(order.len()),
        nums: Vec::with_capacity(order.len() * nn),
        num_fields: nn,
        num_names: Vec::new(),
        type_names,
    };
    store.offsets.push(0);
    for p in 0..np {
        let slice = &mut order[offsets[p]..offsets[p + 1]];
        slice.sort_unstable_by(|&a, &b| {
            key(a).cmp(&key(b)).then_with(|| {
                let (x, y) = (nums_of(a), nums_of(b));
                x.iter()
                    .map(|v| v.to_bits())
                    .cmp(y.iter().map(|v| v.to_bits()))
                    .then_with(|| extra_cmp(a, b))
            })
        });
        let mut prev: Option<u32> = None;
        for &i in slice.iter() {
            if let Some(q) = prev
                && key(q) == key(i)
                && same_nums(q, i)
                && same_extra(q, i)
            {
                if dedupe {
                    counts.duplicate_events += 1;
                    continue;
                }
                counts.identical_events += 1;
            }
            prev = Some(i);
            if !extras.is_empty() {
                src.push(i);
            }
            let i = i as usize;
            store.ts.push(raw.ts[i]);
            store.etype.push(raw.etype[i]);
            store.flags.push(raw.flags[i]);
            store
                .nums
                .extend_from_slice(&raw.nums[i * nn..(i + 1) * nn]);
        }
        store.offsets.push(store.ts.len());
    }
    Ok((store, src))
}
