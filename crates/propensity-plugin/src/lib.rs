//! The SDK of Propensity goal plugins: the one dependency of a plugin author.
//!
//! A goal plugin is a `cdylib` that labels profiles for a goal type the built-in `conditions`
//! goal cannot express. The host gives it, for each training cutoff, the profiles to label and
//! their events inside the outcome window (Arrow arrays through the Arrow C Data Interface,
//! sorted by profile and time), the window bounds and the job's `params`; the plugin answers
//! with one label per profile.
//!
//! An author implements the safe [`Goal`] trait and exports it with [`export_goal!`]. The
//! macro generates the `extern "C"` entry points, checks the parameters against the declared
//! [`ParamSpec`]s, catches panics and turns every error into a message for the host. No
//! `unsafe` is written by the author.
//!
//! ```
//! use propensity_plugin::{Goal, Metadata, ParamKind, ParamSpec, Params, ProfileEvents, Window};
//!
//! /// At least `min_orders` purchases in the window.
//! pub struct RepeatPurchase {
//!     min_orders: u64,
//! }
//!
//! impl Goal for RepeatPurchase {
//!     fn metadata() -> Metadata {
//!         Metadata::new("repeat_purchase", env!("CARGO_PKG_VERSION"), "At least N purchases")
//!             .param(ParamSpec::new("min_orders", ParamKind::Integer, "purchases needed").default_value(2))
//!     }
//!
//!     fn new(params: &Params) -> Result<Self, String> {
//!         let min_orders = params.integer("min_orders")?.unwrap_or(2);
//!         if min_orders < 1 {
//!             return Err("min_orders must be at least 1".into());
//!         }
//!         Ok(Self { min_orders: min_orders as u64 })
//!     }
//!
//!     fn label(&self, profile: &ProfileEvents<'_>, _window: Window) -> Result<bool, String> {
//!         let orders = (0..profile.len())
//!             .filter(|&i| profile.event_type(i) == "commerce.purchases")
//!             .count();
//!         Ok(orders as u64 >= self.min_orders)
//!     }
//! }
//!
//! propensity_plugin::export_goal!(RepeatPurchase);
//! # fn main() {
//! #     let m = RepeatPurchase::metadata();
//! #     assert_eq!(m.name, "repeat_purchase");
//! # }
//! ```
//!
//! # Stability
//!
//! [`ABI_VERSION`] names the layout of the C structures in [`abi`] and the meaning of the
//! entry points. The host reads it before calling anything else and refuses a library built
//! for another version, naming the file and both versions. The Arrow version of a plugin does
//! not have to match the host's: only the C Data Interface crosses the boundary.

#![warn(missing_docs)]

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, BooleanArray, StringArray, StructArray};
use arrow_schema::{DataType, Field};
use serde::{Deserialize, Serialize};

pub mod abi;
#[cfg(feature = "host")]
pub mod host;
pub mod testing;

/// The version of the plugin ABI this SDK implements. Bumped on any change to the C layout of
/// [`abi`] or to the meaning of an entry point.
pub const ABI_VERSION: u32 = 1;

/// Re-exported so that plugins use the SDK's Arrow without naming it in their manifest.
pub use arrow_array;
pub use arrow_schema;
pub use serde_json;

/// What a plugin tells about itself: shown by `propensity plugins list`, checked by the host
/// (the name must be the one the job asked for).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The goal type: lower-case letters, digits and `_` (what a job writes in `plugin = "…"`).
    pub name: String,
    /// The plugin's own version, e.g. its crate version.
    pub version: String,
    /// One line for people.
    pub description: String,
    /// The parameters a job may give in `[goal] params`.
    pub params: Vec<ParamSpec>,
    /// The SDK version the plugin was built with (informational; the ABI version decides).
    pub sdk_version: String,
}

impl Metadata {
    /// Metadata with no parameters yet; add them with [`Metadata::param`].
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            params: Vec::new(),
            sdk_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Declares a parameter.
    pub fn param(mut self, p: ParamSpec) -> Self {
        self.params.push(p);
        self
    }
}

/// The type of a parameter value in the job file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// Text.
    String,
    /// `true` or `false`.
    Boolean,
    /// A duration such as `"30d"`, `"12h"`, `"90m"` (units s, m, h, d, w).
    Duration,
    /// A list of strings.
    StringList,
}

impl ParamKind {
    fn describe(self) -> &'static str {
        match self {
            ParamKind::Integer => "a whole number",
            ParamKind::Number => "a number",
            ParamKind::String => "a string",
            ParamKind::Boolean => "true or false",
            ParamKind::Duration => "a duration such as \"30d\"",
            ParamKind::StringList => "a list of strings",
        }
    }
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// The key in `[goal] params`.
    pub name: String,
    /// Its type.
    pub kind: ParamKind,
    /// A job must give it.
    pub required: bool,
    /// The value used when it is left out, as the job would write it.
    pub default: Option<serde_json::Value>,
    /// One line for people.
    pub description: String,
}

impl ParamSpec {
    /// An optional parameter without a default.
    pub fn new(name: &str, kind: ParamKind, description: &str) -> Self {
        Self {
            name: name.into(),
            kind,
            required: false,
            default: None,
            description: description.into(),
        }
    }

    /// The job must give this parameter.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// The value the plugin uses when the job leaves the parameter out (documentation; the
    /// plugin applies it itself).
    pub fn default_value(mut self, v: impl Into<serde_json::Value>) -> Self {
        self.default = Some(v.into());
        self
    }
}

/// What kind of value the host should hand over for an event field the plugin reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// Cast to a 64-bit float (numbers, numeric strings).
    Number,
    /// Cast to a UTC timestamp in microseconds (Arrow timestamps, dates, RFC 3339 strings).
    Time,
    /// As text.
    Text,
}

/// An event field a plugin reads besides `profile_id`, `timestamp` and `event_type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldRequest {
    /// The field's path in the events, with dots for nested fields
    /// (`commerce.order.priceTotal`).
    pub path: String,
    /// The type the plugin wants.
    pub kind: FieldKind,
}

impl FieldRequest {
    /// A field read as a number.
    pub fn number(path: &str) -> Self {
        Self {
            path: path.into(),
            kind: FieldKind::Number,
        }
    }
    /// A field read as a timestamp.
    pub fn time(path: &str) -> Self {
        Self {
            path: path.into(),
            kind: FieldKind::Time,
        }
    }
    /// A field read as text.
    pub fn text(path: &str) -> Self {
        Self {
            path: path.into(),
            kind: FieldKind::Text,
        }
    }
}

/// The job's `[goal] params`, already checked against the declared [`ParamSpec`]s (unknown
/// keys, missing required keys and wrong types are refused before [`Goal::new`] runs).
#[derive(Debug, Clone, Default)]
pub struct Params {
    values: serde_json::Map<String, serde_json::Value>,
}

impl Params {
    /// Parameters from a JSON object (what the host sends).
    pub fn from_json(values: serde_json::Map<String, serde_json::Value>) -> Self {
        Self { values }
    }

    /// The raw JSON value of a parameter.
    pub fn raw(&self, name: &str) -> Option<&serde_json::Value> {
        self.values.get(name)
    }

    fn typed<T>(
        &self,
        name: &str,
        what: &str,
        f: impl FnOnce(&serde_json::Value) -> Option<T>,
    ) -> Result<Option<T>, String> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) => f(v)
                .map(Some)
                .ok_or_else(|| format!("params.{name}: expected {what}, got {v}")),
        }
    }

    /// A whole number.
    pub fn integer(&self, name: &str) -> Result<Option<i64>, String> {
        self.typed(name, "a whole number", |v| v.as_i64())
    }
    /// A number.
    pub fn number(&self, name: &str) -> Result<Option<f64>, String> {
        self.typed(name, "a number", |v| v.as_f64())
    }
    /// A string.
    pub fn string(&self, name: &str) -> Result<Option<String>, String> {
        self.typed(name, "a string", |v| v.as_str().map(str::to_owned))
    }
    /// A boolean.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, String> {
        self.typed(name, "true or false", |v| v.as_bool())
    }
    /// A list of strings.
    pub fn string_list(&self, name: &str) -> Result<Option<Vec<String>>, String> {
        self.typed(name, "a list of strings", |v| {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
    }
    /// A list of event types (or other names): `default` when left out; an empty list or an
    /// empty name is refused.
    pub fn names(&self, name: &str, default: &[&str]) -> Result<Vec<String>, String> {
        let list = self
            .string_list(name)?
            .unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect());
        if list.is_empty() {
            return Err(format!("params.{name}: must name at least one event type"));
        }
        if list.iter().any(|s| s.trim().is_empty()) {
            return Err(format!("params.{name}: an event type is empty"));
        }
        Ok(list)
    }

    /// A duration (`"30d"`, `"12h"`, …) in microseconds.
    pub fn duration_micros(&self, name: &str) -> Result<Option<i64>, String> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .and_then(parse_duration_micros)
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "params.{name}: expected a duration such as \"30d\", \"12h\" or \"90m\", got {v}"
                    )
                }),
        }
    }
}

/// `"30d"` → microseconds. Units: s, m, h, d, w; a positive whole number before the unit.
pub fn parse_duration_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    (n > 0)
        .then_some(n)?
        .checked_mul(secs)?
        .checked_mul(1_000_000)
}

/// Checks `values` against the declared parameters: unknown keys, missing required keys and
/// values of the wrong type. Every problem is reported, one per line.
pub fn check_params(
    specs: &[ParamSpec],
    values: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for key in values.keys() {
        if !specs.iter().any(|s| &s.name == key) {
            let known: Vec<String> = specs.iter().map(|s| format!("`{}`", s.name)).collect();
            problems.push(if known.is_empty() {
                format!("params.{key}: this plugin takes no parameters")
            } else {
                format!(
                    "params.{key}: unknown parameter; this plugin takes {}",
                    known.join(", ")
                )
            });
        }
    }
    for s in specs {
        match values.get(&s.name) {
            None if s.required => problems.push(format!(
                "params.{}: missing; it is required ({}: {})",
                s.name,
                s.kind.describe(),
                s.description
            )),
            None => {}
            Some(v) => {
                let ok = match s.kind {
                    ParamKind::Integer => v.as_i64().is_some(),
                    ParamKind::Number => v.is_number(),
                    ParamKind::String => v.is_string(),
                    ParamKind::Boolean => v.is_boolean(),
                    ParamKind::Duration => v.as_str().and_then(parse_duration_micros).is_some(),
                    ParamKind::StringList => v
                        .as_array()
                        .is_some_and(|a| a.iter().all(serde_json::Value::is_string)),
                };
                if !ok {
                    problems.push(format!(
                        "params.{}: expected {}, got {v}",
                        s.name,
                        s.kind.describe()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// The outcome window of one cutoff: events with `start <= timestamp < end` (microseconds
/// since the Unix epoch, UTC). `start` is the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Window {
    /// The cutoff; the first instant of the window.
    pub start: i64,
    /// The end of the window (exclusive).
    pub end: i64,
}

/// The names of the columns of the events the host sends, before the requested fields.
pub mod columns {
    /// Utf8: the profile id.
    pub const PROFILE_ID: &str = "profile_id";
    /// Timestamp(µs, UTC).
    pub const TIMESTAMP: &str = "timestamp";
    /// Utf8.
    pub const EVENT_TYPE: &str = "event_type";
    /// The labels a plugin returns: a struct of `profile_id` (Utf8) and `label` (Boolean).
    pub const LABEL: &str = "label";

    /// The three fields every events struct starts with, in this order; the requested
    /// fields follow them.
    pub fn base_fields() -> [arrow_schema::Field; 3] {
        use arrow_schema::{DataType, Field, TimeUnit};
        [
            Field::new(PROFILE_ID, DataType::Utf8, false),
            Field::new(
                TIMESTAMP,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new(EVENT_TYPE, DataType::Utf8, false),
        ]
    }
}

/// One call's input: the profiles to label, and their events in the window (and in the
/// lookback before it, when the goal asks for one: see [`ProfileEvents::in_window`]).
#[derive(Debug)]
pub struct Batch {
    profiles: StringArray,
    events: StructArray,
    window: Window,
    /// Per profile, the range of its events.
    ranges: Vec<std::ops::Range<usize>>,
}

impl Batch {
    /// Builds a batch and checks the host's promises: the event columns have the documented
    /// types, and the events are grouped by profile in the order of `profiles`, then by time.
    pub fn new(profiles: StringArray, events: StructArray, window: Window) -> Result<Self, String> {
        let fields = events.fields();
        let want = columns::base_fields().map(|f| (f.name().clone(), f.data_type().clone()));
        for (i, (name, ty)) in want.iter().enumerate() {
            match fields.get(i) {
                Some(f) if f.name() == name && f.data_type() == ty => {}
                other => {
                    return Err(format!(
                        "events column {i}: expected `{name}` ({ty}), got {:?}",
                        other.map(|f| (f.name().clone(), f.data_type().clone()))
                    ));
                }
            }
        }
        let ids = events.column(0).as_string::<i32>();
        let ts = events.column(1).as_primitive::<TimestampMicrosecondType>();
        let mut ranges = Vec::with_capacity(profiles.len());
        let mut at = 0usize;
        for p in 0..profiles.len() {
            let id = profiles.value(p);
            let start = at;
            while at < ids.len() && ids.value(at) == id {
                if at > start && ts.value(at) < ts.value(at - 1) {
                    return Err(format!("events of profile `{id}` are not in time order"));
                }
                at += 1;
            }
            ranges.push(start..at);
        }
        if at != ids.len() {
            return Err(format!(
                "event {at} (profile `{}`) is not grouped under a listed profile",
                ids.value(at)
            ));
        }
        Ok(Self {
            profiles,
            events,
            window,
            ranges,
        })
    }

    /// The number of profiles to label.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// True when there is no profile to label.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// The outcome window.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Profile `i`: its id and its events in the window.
    pub fn profile(&self, i: usize) -> ProfileEvents<'_> {
        ProfileEvents {
            batch: self,
            index: i,
            range: self.ranges[i].clone(),
        }
    }

    /// Every profile, in order.
    pub fn profiles(&self) -> impl Iterator<Item = ProfileEvents<'_>> {
        (0..self.len()).map(|i| self.profile(i))
    }

    /// All events as Arrow columns (`profile_id`, `timestamp`, `event_type`, then the
    /// requested fields), for plugins that prefer to work on arrays.
    pub fn events(&self) -> &StructArray {
        &self.events
    }

    fn column(&self, path: &str) -> Option<&ArrayRef> {
        self.events.column_by_name(path)
    }
}

/// One profile's events in the window, in time order.
#[derive(Debug)]
pub struct ProfileEvents<'a> {
    batch: &'a Batch,
    index: usize,
    range: std::ops::Range<usize>,
}

impl<'a> ProfileEvents<'a> {
    /// The profile id.
    pub fn id(&self) -> &'a str {
        self.batch.profiles.value(self.index)
    }

    /// The number of events sent for this profile: those in the window, after those of the
    /// lookback when the goal declared one (see [`ProfileEvents::in_window`]).
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// True when no event was sent for this profile.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// True when event `i` is inside the window (not in the lookback before it).
    pub fn in_window(&self, i: usize) -> bool {
        let t = self.timestamp(i);
        t >= self.batch.window.start && t < self.batch.window.end
    }

    /// Event `i`'s time, microseconds since the epoch (UTC).
    pub fn timestamp(&self, i: usize) -> i64 {
        self.batch
            .events
            .column(1)
            .as_primitive::<TimestampMicrosecondType>()
            .value(self.range.start + i)
    }

    /// Event `i`'s type.
    pub fn event_type(&self, i: usize) -> &'a str {
        self.batch
            .events
            .column(2)
            .as_string::<i32>()
            .value(self.range.start + i)
    }

    /// Event `i`'s value of a field requested with [`FieldKind::Number`]; `None` when null
    /// or when the field was not requested.
    pub fn number(&self, field: &str, i: usize) -> Option<f64> {
        let a = self
            .batch
            .column(field)?
            .as_primitive_opt::<Float64Type>()?;
        let j = self.range.start + i;
        a.is_valid(j).then(|| a.value(j))
    }

    /// Event `i`'s value of a field requested with [`FieldKind::Time`] (microseconds, UTC).
    pub fn time(&self, field: &str, i: usize) -> Option<i64> {
        let a = self
            .batch
            .column(field)?
            .as_primitive_opt::<TimestampMicrosecondType>()?;
        let j = self.range.start + i;
        a.is_valid(j).then(|| a.value(j))
    }

    /// Event `i`'s value of a field requested with [`FieldKind::Text`].
    pub fn text(&self, field: &str, i: usize) -> Option<&'a str> {
        let a = self.batch.column(field)?.as_string_opt::<i32>()?;
        let j = self.range.start + i;
        a.is_valid(j).then(|| a.value(j))
    }
}

/// The labels of one call: a profile id and its label, per profile.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Labels {
    ids: Vec<String>,
    labels: Vec<bool>,
}

impl Labels {
    /// Room for `n` labels.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            labels: Vec::with_capacity(n),
        }
    }

    /// Adds a profile's label (`true`: the goal is reached).
    pub fn push(&mut self, profile_id: &str, label: bool) {
        self.ids.push(profile_id.to_owned());
        self.labels.push(label);
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there is no label.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// As the Arrow struct the host reads.
    pub fn into_struct(self) -> StructArray {
        StructArray::from(vec![
            (
                std::sync::Arc::new(Field::new(columns::PROFILE_ID, DataType::Utf8, false)),
                std::sync::Arc::new(StringArray::from(self.ids)) as ArrayRef,
            ),
            (
                std::sync::Arc::new(Field::new(columns::LABEL, DataType::Boolean, false)),
                std::sync::Arc::new(BooleanArray::from(self.labels)) as ArrayRef,
            ),
        ])
    }

    /// Reads the struct a plugin returned: (profile id, label) pairs.
    pub fn from_struct(s: &StructArray) -> Result<Vec<(String, bool)>, String> {
        let ids = s
            .column_by_name(columns::PROFILE_ID)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or("the labels have no Utf8 `profile_id` column")?;
        let labels = s
            .column_by_name(columns::LABEL)
            .and_then(|c| c.as_boolean_opt())
            .ok_or("the labels have no Boolean `label` column")?;
        (0..s.len())
            .map(|i| {
                if ids.is_null(i) || labels.is_null(i) {
                    Err(format!("label {i} is null"))
                } else {
                    Ok((ids.value(i).to_owned(), labels.value(i)))
                }
            })
            .collect()
    }
}

/// A goal type. Implement it and export it with [`export_goal!`].
pub trait Goal: Sized {
    /// Name, version, description and parameters.
    fn metadata() -> Metadata;

    /// Reads the job's parameters (already checked against [`Metadata::params`]) and checks
    /// what the declarations cannot say (ranges, combinations). Runs at `propensity validate`
    /// and before each labelling call; an error is shown to the user as written.
    fn new(params: &Params) -> Result<Self, String>;

    /// Event fields this goal reads besides `profile_id`, `timestamp` and `event_type`.
    fn fields(&self) -> Vec<FieldRequest> {
        Vec::new()
    }

    /// History before the window this goal needs, in microseconds (default: none). The host
    /// then also sends each profile's events in `[window.start - lookback, window.start)`,
    /// e.g. the renewal that set the expiry a subscription-lapse goal checks. Labels may
    /// depend on them; features never see the window.
    fn lookback_micros(&self) -> i64 {
        0
    }

    /// The label of one profile from its events in the window (in time order): `true` when
    /// the goal is reached.
    fn label(&self, profile: &ProfileEvents<'_>, window: Window) -> Result<bool, String>;

    /// The labels of a batch; by default [`Goal::label`] for each profile. Override it for
    /// logic across profiles.
    fn label_batch(&self, batch: &Batch) -> Result<Labels, String> {
        let mut out = Labels::with_capacity(batch.len());
        for p in batch.profiles() {
            let label = self
                .label(&p, batch.window())
                .map_err(|e| format!("profile `{}`: {e}", p.id()))?;
            out.push(p.id(), label);
        }
        Ok(out)
    }
}

/// What [`Goal::new`] and [`Goal::fields`] give for a job's parameters: the answer of the
/// `validate` entry point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validated {
    /// The event fields the plugin reads with these parameters.
    pub fields: Vec<FieldRequest>,
    /// History before the window the plugin needs, microseconds.
    #[serde(default)]
    pub lookback_micros: i64,
}

/// Parameters as the host sends them: a JSON object.
pub fn parse_params(json: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if json.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("params must be a table, got {other}")),
        Err(e) => Err(format!("params are not valid JSON: {e}")),
    }
}

/// Runs a goal's parameter checks: the declarations, then [`Goal::new`].
pub fn build<G: Goal>(params_json: &[u8]) -> Result<G, String> {
    let values = parse_params(params_json)?;
    check_params(&G::metadata().params, &values)?;
    G::new(&Params::from_json(values))
}

/// Counts of labels by value, for tests and messages.
pub fn label_counts(labels: &[(String, bool)]) -> BTreeMap<bool, usize> {
    let mut m = BTreeMap::new();
    for (_, l) in labels {
        *m.entry(*l).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::TimestampMicrosecondArray;
    use std::sync::Arc;

    pub(crate) fn events(rows: &[(&str, i64, &str)]) -> StructArray {
        let arrays: [ArrayRef; 3] = [
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
        ];
        StructArray::from(
            columns::base_fields()
                .into_iter()
                .map(Arc::new)
                .zip(arrays)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn batches_group_events_by_listed_profile() {
        let b = Batch::new(
            StringArray::from(vec!["a", "b", "c"]),
            events(&[("a", 1, "x"), ("a", 2, "y"), ("c", 5, "z")]),
            Window { start: 0, end: 10 },
        )
        .expect("valid");
        let lens: Vec<usize> = b.profiles().map(|p| p.len()).collect();
        assert_eq!(lens, [2, 0, 1]);
        assert_eq!(b.profile(0).event_type(1), "y");
        assert_eq!(b.profile(2).timestamp(0), 5);
        let e = Batch::new(
            StringArray::from(vec!["a"]),
            events(&[("a", 2, "x"), ("a", 1, "y")]),
            Window { start: 0, end: 10 },
        )
        .expect_err("out of order");
        assert!(e.contains("time order"), "{e}");
        let e = Batch::new(
            StringArray::from(vec!["a"]),
            events(&[("b", 1, "x")]),
            Window { start: 0, end: 10 },
        )
        .expect_err("unlisted");
        assert!(e.contains("not grouped"), "{e}");
    }

    #[test]
    fn params_are_checked_against_their_declarations() {
        let specs = vec![
            ParamSpec::new("min_orders", ParamKind::Integer, "orders").required(),
            ParamSpec::new("within", ParamKind::Duration, "time limit"),
        ];
        let p = |j: &str| parse_params(j.as_bytes()).expect("json");
        assert!(check_params(&specs, &p(r#"{"min_orders": 2, "within": "7d"}"#)).is_ok());
        let e =
            check_params(&specs, &p(r#"{"min_ordres": 2, "within": "soon"}"#)).expect_err("bad");
        assert!(e.contains("params.min_ordres: unknown parameter"), "{e}");
        assert!(e.contains("params.min_orders: missing"), "{e}");
        assert!(e.contains("params.within: expected a duration"), "{e}");
        assert_eq!(parse_duration_micros("2d"), Some(2 * 86_400_000_000));
        assert_eq!(parse_duration_micros("0d"), None);
        assert_eq!(parse_duration_micros("3y"), None);
    }

    #[test]
    fn labels_round_trip_through_their_struct() {
        let mut l = Labels::default();
        l.push("a", true);
        l.push("b", false);
        let back = Labels::from_struct(&l.into_struct()).expect("valid");
        assert_eq!(back, [("a".to_owned(), true), ("b".to_owned(), false)]);
    }
}
