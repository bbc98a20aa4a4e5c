//! Structural checks: the parsed TOML tree (with spans) against the job file's JSON Schema.
//!
//! The schema is generated from [`crate::raw`], so the types, the schema users load into
//! their editors and these checks cannot drift apart. Unlike serde, which stops at the first
//! problem, this walk reports every unknown key, wrong type, bad enum value and missing key.

use std::ops::Range;

use serde_json::{Map, Value};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Finding, KeyPath, did_you_mean, one_of};

pub(crate) struct Checker<'s> {
    root: &'s Value,
    pub findings: Vec<Finding>,
    /// Unknown keys found; they are removed before the typed parse so that the rest of
    /// their table still gets its semantic checks.
    pub unknown: Vec<KeyPath>,
    /// Values that are missing or invalid, with a stand-in of the right type. The stand-ins
    /// let the rest of the file be parsed and checked; findings about a stand-in's own path
    /// are suppressed, since the real problem was already reported.
    pub placeholders: Vec<(KeyPath, toml::Value)>,
}

fn kind_of(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn expected_name(t: &str) -> &'static str {
    match t {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean (`true` or `false`)",
        "array" => "an array",
        "object" => "a table",
        _ => "a value",
    }
}

fn matches_type(t: &str, v: &DeValue<'_>) -> bool {
    matches!(
        (t, v),
        ("string", DeValue::String(_))
            | ("integer", DeValue::Integer(_))
            | ("number", DeValue::Integer(_) | DeValue::Float(_))
            | ("boolean", DeValue::Boolean(_))
            | ("array", DeValue::Array(_))
            | ("object", DeValue::Table(_))
    )
}

/// The integer a TOML integer literal denotes, if it fits in i128.
pub(crate) fn int_value(v: &DeValue<'_>) -> Option<i128> {
    let DeValue::Integer(i) = v else { return None };
    let s: String = i.as_str().chars().filter(|c| *c != '_').collect();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest.to_owned()),
        None => (false, s.trim_start_matches('+').to_owned()),
    };
    let digits = match i.radix() {
        16 => digits.trim_start_matches("0x").to_owned(),
        8 => digits.trim_start_matches("0o").to_owned(),
        2 => digits.trim_start_matches("0b").to_owned(),
        _ => digits,
    };
    let n = i128::from_str_radix(&digits, i.radix()).ok()?;
    Some(if neg { -n } else { n })
}

fn num_value(v: &DeValue<'_>) -> Option<f64> {
    match v {
        DeValue::Float(f) => {
            let s: String = f.as_str().chars().filter(|c| *c != '_').collect();
            match s.as_str() {
                "inf" | "+inf" => Some(f64::INFINITY),
                "-inf" => Some(f64::NEG_INFINITY),
                "nan" | "+nan" | "-nan" => Some(f64::NAN),
                _ => s.parse().ok(),
            }
        }
        DeValue::Integer(_) => int_value(v).map(|n| n as f64),
        _ => None,
    }
}

fn format_range(format: Option<&str>) -> Option<(i128, i128)> {
    Some(match format? {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" => (0, u64::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

/// Branches of `oneOf`/`anyOf` other than `{"type": "null"}` (TOML has no null).
fn non_null_branches(s: &Value) -> Option<Vec<&Value>> {
    let list = s.get("oneOf").or_else(|| s.get("anyOf"))?.as_array()?;
    Some(
        list.iter()
            .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
            .collect(),
    )
}

fn types_of(s: &Value) -> Vec<&str> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    }
}

impl<'s> Checker<'s> {
    pub fn new(root: &'s Value) -> Self {
        Self {
            root,
            findings: Vec::new(),
            unknown: Vec::new(),
            placeholders: Vec::new(),
        }
    }

    fn resolve(&self, mut s: &'s Value) -> &'s Value {
        for _ in 0..32 {
            let Some(r) = s.get("$ref").and_then(Value::as_str) else {
                break;
            };
            let Some(name) = r.strip_prefix("#/$defs/") else {
                break;
            };
            match self.root.get("$defs").and_then(|d| d.get(name)) {
                Some(t) => s = t,
                None => break,
            }
        }
        s
    }

    /// A value of the type `schema` wants, used in place of a missing or invalid one.
    fn placeholder(&self, schema: &'s Value) -> toml::Value {
        let schema = self.resolve(schema);
        if let Some(first) = schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
        {
            return toml::Value::String(first.to_owned());
        }
        if let Some(c) = schema.get("const").and_then(Value::as_str) {
            return toml::Value::String(c.to_owned());
        }
        if let Some(b) = non_null_branches(schema)
            && let Some(first) = b.first()
        {
            return self.placeholder(first);
        }
        let min = schema.get("minimum").and_then(Value::as_f64).unwrap_or(0.0);
        match types_of(schema).first().copied() {
            Some("string") => toml::Value::String(String::new()),
            Some("integer") => toml::Value::Integer(min as i64),
            Some("number") => toml::Value::Float(min),
            Some("boolean") => toml::Value::Boolean(false),
            Some("array") => toml::Value::Array(Vec::new()),
            _ => toml::Value::Table(toml::Table::new()),
        }
    }

    fn stand_in(&mut self, path: &KeyPath, schema: &'s Value) {
        let v = self.placeholder(schema);
        self.placeholders.push((path.clone(), v));
    }

    fn push(
        &mut self,
        span: Range<usize>,
        path: &KeyPath,
        code: &'static str,
        message: String,
        hint: Option<String>,
    ) {
        self.findings.push(Finding {
            span,
            path: path.clone(),
            code,
            message,
            hint,
        });
    }

    /// Where a message about this table should say it is.
    fn place(path: &KeyPath, label: Option<&str>) -> String {
        let base = if path.is_root() {
            "at the top level".to_owned()
        } else {
            format!("in `{path}`")
        };
        match label {
            Some(l) => format!("{base} ({l})"),
            None => base,
        }
    }

    pub fn check_document(&mut self, doc: &Spanned<DeTable<'_>>) {
        let schema = self.root;
        self.check_table(doc.get_ref(), doc.span(), schema, &KeyPath::root(), None);
    }

    pub fn check(
        &mut self,
        node: &Spanned<DeValue<'_>>,
        schema: &'s Value,
        path: &KeyPath,
        label: Option<&str>,
    ) {
        let schema = self.resolve(schema);
        if schema.as_bool() == Some(true) || schema.as_object().is_some_and(Map::is_empty) {
            return;
        }
        let value = node.get_ref();
        let span = node.span();

        if let Some(branches) = non_null_branches(schema) {
            return self.check_branches(node, &branches, path, label);
        }

        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            if !self.check_enum(value, span, &allowed, path) {
                self.stand_in(path, schema);
            }
            return;
        }
        if let Some(c) = schema.get("const").and_then(Value::as_str) {
            self.check_enum(value, span, &[c], path);
            return;
        }

        let types = types_of(schema);
        if !types.is_empty() && !types.iter().any(|t| matches_type(t, value)) {
            let expected: Vec<&str> = types.iter().map(|t| expected_name(t)).collect();
            let hint = match (value, types.as_slice()) {
                (DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_), ["string"]) => {
                    Some("put the value in quotes".to_owned())
                }
                (DeValue::String(s), ["integer" | "number"]) if s.trim().parse::<f64>().is_ok() => {
                    Some(format!("remove the quotes: {}", s.trim()))
                }
                (DeValue::String(s), ["boolean"]) if matches!(s.as_ref(), "true" | "false") => {
                    Some(format!("remove the quotes: {s}"))
                }
                (DeValue::Datetime(_), ["string"]) => Some("put the value in quotes".to_owned()),
                (DeValue::Table(_), ["array"]) => match path.0.last() {
                    Some(crate::diag::Seg::Key(k)) => Some(format!(
                        "write each entry as a `[[{k}]]` table (double brackets), or `{k} = [ ... ]`"
                    )),
                    _ => None,
                },
                _ => None,
            };
            self.stand_in(path, schema);
            return self.push(
                span,
                path,
                "invalid-type",
                format!(
                    "expected {}, found {}",
                    expected.join(" or "),
                    kind_of(value)
                ),
                hint,
            );
        }

        match value {
            DeValue::Table(t) => self.check_table(t, span, schema, path, label),
            DeValue::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, item_schema, &path.index(i), None);
                    }
                }
            }
            DeValue::Integer(_) | DeValue::Float(_) => {
                let before = self.findings.len();
                self.check_range(value, span, schema, path);
                if self.findings.len() > before {
                    self.stand_in(path, schema);
                }
            }
            _ => {}
        }
    }

    fn check_range(
        &mut self,
        value: &DeValue<'_>,
        span: Range<usize>,
        schema: &Value,
        path: &KeyPath,
    ) {
        let Some(x) = num_value(value) else {
            return self.push(
                span,
                path,
                "invalid-value",
                "number out of range".to_owned(),
                None,
            );
        };
        if !x.is_finite() {
            return self.push(
                span,
                path,
                "invalid-value",
                "expected a finite number".to_owned(),
                None,
            );
        }
        let fmt_range = format_range(schema.get("format").and_then(Value::as_str));
        let min = schema.get("minimum").and_then(Value::as_f64);
        let max = schema.get("maximum").and_then(Value::as_f64);
        let shown = match value {
            DeValue::Integer(i) => i.as_str().to_owned(),
            DeValue::Float(f) => f.as_str().to_owned(),
            _ => x.to_string(),
        };
        if let Some(min) = min.or(fmt_range.map(|r| r.0 as f64))
            && x < min
        {
            return self.push(
                span,
                path,
                "out-of-range",
                format!("{shown} is below the minimum {min}"),
                None,
            );
        }
        if let Some(max) = max.or(fmt_range.map(|r| r.1 as f64))
            && x > max
        {
            return self.push(
                span,
                path,
                "out-of-range",
                format!("{shown} is above the maximum {max}"),
                None,
            );
        }
        if let (Some((lo, hi)), Some(n)) = (fmt_range, int_value(value))
            && (n < lo || n > hi)
        {
            self.push(
                span,
                path,
                "out-of-range",
                format!("{shown} is out of range"),
                None,
            );
        }
    }

    /// True when the value is one of `allowed`.
    fn check_enum(
        &mut self,
        value: &DeValue<'_>,
        span: Range<usize>,
        allowed: &[&str],
        path: &KeyPath,
    ) -> bool {
        let DeValue::String(s) = value else {
            self.push(
                span,
                path,
                "invalid-type",
                format!("expected a string, found {}", kind_of(value)),
                Some(format!("allowed values: {}", one_of(allowed))),
            );
            return false;
        };
        if !allowed.contains(&s.as_ref()) {
            let hint = match did_you_mean(s, allowed.iter().copied()) {
                Some(m) => format!("did you mean `{m}`? allowed values: {}", one_of(allowed)),
                None => format!("allowed values: {}", one_of(allowed)),
            };
            self.push(
                span,
                path,
                "invalid-value",
                format!("unknown value `{s}`"),
                Some(hint),
            );
            return false;
        }
        true
    }

    fn check_branches(
        &mut self,
        node: &Spanned<DeValue<'_>>,
        branches: &[&'s Value],
        path: &KeyPath,
        label: Option<&str>,
    ) {
        let branches: Vec<&'s Value> = branches.iter().map(|b| self.resolve(b)).collect();
        match branches.as_slice() {
            [] => return,
            [one] => return self.check(node, one, path, label),
            _ => {}
        }
        // A choice of constants: an enum whose variants carry descriptions.
        let consts: Option<Vec<&str>> = branches
            .iter()
            .map(|b| b.get("const").and_then(Value::as_str))
            .collect();
        if let Some(allowed) = consts {
            if !self.check_enum(node.get_ref(), node.span(), &allowed, path) {
                self.placeholders
                    .push((path.clone(), toml::Value::String(allowed[0].to_owned())));
            }
            return;
        }
        // An internally tagged enum: every branch is a table with a constant discriminator.
        if let Some(tag) = discriminator(&branches) {
            let values: Vec<&str> = branches.iter().filter_map(|b| tag_value(b, &tag)).collect();
            let DeValue::Table(t) = node.get_ref() else {
                return self.push(
                    node.span(),
                    path,
                    "invalid-type",
                    format!("expected a table, found {}", kind_of(node.get_ref())),
                    None,
                );
            };
            let Some((k, v)) = t.iter().find(|(k, _)| k.get_ref() == &tag) else {
                return self.push(
                    node.span(),
                    &path.key(&tag),
                    "missing-key",
                    format!("missing required key `{tag}` {}", Self::place(path, label)),
                    Some(format!("add `{tag} = ...` with one of {}", one_of(&values))),
                );
            };
            let tag_path = path.key(k.get_ref());
            let DeValue::String(chosen) = v.get_ref() else {
                self.check_enum(v.get_ref(), v.span(), &values, &tag_path);
                return;
            };
            match branches
                .iter()
                .find(|b| tag_value(b, &tag) == Some(chosen.as_ref()))
            {
                Some(b) => {
                    let kind = path.0.first().and_then(|s| match s {
                        crate::diag::Seg::Key(k) => Some(k.trim_end_matches('s').to_owned()),
                        crate::diag::Seg::Index(_) => None,
                    });
                    let label = format!("{} {}", chosen, kind.unwrap_or_default())
                        .trim()
                        .to_owned();
                    self.check(node, b, path, Some(&label));
                }
                None => {
                    self.check_enum(v.get_ref(), v.span(), &values, &tag_path);
                }
            }
            return;
        }
        // Anything else: accept the first branch that fits.
        let mut best: Option<Vec<Finding>> = None;
        for b in &branches {
            let mut sub = Checker::new(self.root);
            sub.check(node, b, path, label);
            if sub.findings.is_empty() {
                return;
            }
            if best.as_ref().is_none_or(|f| sub.findings.len() < f.len()) {
                best = Some(sub.findings);
            }
        }
        self.findings.extend(best.unwrap_or_default());
        self.stand_in(path, branches[0]);
    }

    fn check_table(
        &mut self,
        table: &DeTable<'_>,
        span: Range<usize>,
        schema: &'s Value,
        path: &KeyPath,
        label: Option<&str>,
    ) {
        let schema = self.resolve(schema);
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (k, v) in table {
            let key = k.get_ref().as_ref();
            let child = path.key(key);
            if let Some(p) = props.and_then(|p| p.get(key)) {
                self.check(v, p, &child, None);
                continue;
            }
            match additional {
                Some(Value::Bool(false)) => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let hint = match did_you_mean(key, known.iter().copied()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!("allowed keys here: {}", one_of(&known)),
                    };
                    self.push(
                        k.span(),
                        &child,
                        "unknown-key",
                        format!("unknown key `{key}` {}", Self::place(path, label)),
                        Some(hint),
                    );
                    self.unknown.push(child);
                }
                Some(extra) if extra.is_object() => self.check(v, extra, &child, None),
                _ => {}
            }
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if table.keys().any(|k| k.get_ref() == r) {
                    continue;
                }
                let desc = props
                    .and_then(|p| p.get(r))
                    .and_then(|p| p.get("description"))
                    .and_then(Value::as_str)
                    .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "));
                let hint = if path.is_root() && r == "version" {
                    Some("add `version = 1` as the first line of the file".to_owned())
                } else if path.is_root() && r == "sinks" {
                    Some("add at least one `[[sinks]]` table, e.g. `type = \"parquet\"` with a `uri`".to_owned())
                } else {
                    desc.map(|d| format!("`{r}`: {d}"))
                };
                if let Some(p) = props.and_then(|p| p.get(r)) {
                    self.stand_in(&path.key(r), p);
                }
                self.push(
                    span.clone(),
                    &path.key(r),
                    "missing-key",
                    format!("missing required key `{r}` {}", Self::place(path, label)),
                    hint,
                );
            }
        }
    }
}

fn tag_value<'a>(branch: &'a Value, tag: &str) -> Option<&'a str> {
    branch.get("properties")?.get(tag)?.get("const")?.as_str()
}

/// The property that holds a constant in every branch (`type` for sinks, goals, engines).
fn discriminator(branches: &[&Value]) -> Option<String> {
    let first = branches.first()?.get("properties")?.as_object()?;
    first
        .keys()
        .find(|k| branches.iter().all(|b| tag_value(b, k).is_some()))
        .cloned()
}
