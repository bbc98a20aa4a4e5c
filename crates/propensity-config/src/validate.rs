//! Semantic checks: from the typed [`RawJob`](crate::raw::RawJob) sections to a [`Job`],
//! collecting every problem instead of stopping at the first. No IO: environment variables
//! are referenced, never read.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::str::FromStr;

use propensity_core::enums::*;
use propensity_core::*;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Finding, KeyPath, LineIndex, Seg, did_you_mean, one_of};
use crate::raw::*;

/// Finds the span of a key path in the parsed document, falling back to the deepest parent
/// that exists (a missing key is reported where its table is).
pub(crate) struct Locator<'d, 'i> {
    doc: &'d Spanned<DeTable<'i>>,
}

impl<'d, 'i> Locator<'d, 'i> {
    pub fn new(doc: &'d Spanned<DeTable<'i>>) -> Self {
        Self { doc }
    }

    pub fn span(&self, path: &KeyPath) -> Range<usize> {
        let mut span = self.doc.span();
        let mut table: Option<&'d DeTable<'i>> = Some(self.doc.get_ref());
        let mut array: Option<&'d [Spanned<DeValue<'i>>]> = None;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(k) => {
                    table.and_then(|t| t.iter().find(|(tk, _)| tk.get_ref() == k).map(|(_, v)| v))
                }
                Seg::Index(i) => array.and_then(|a| a.get(*i)),
            };
            let Some(next) = next else {
                return span;
            };
            span = next.span();
            table = next.get_ref().as_table();
            array = next.get_ref().as_array().map(|a| &a[..]);
        }
        span
    }
}

pub(crate) struct Sem<'l, 'd, 'i> {
    loc: &'l Locator<'d, 'i>,
    lines: &'l LineIndex<'l>,
    poisoned: &'l [KeyPath],
    pub findings: Vec<Finding>,
}

const SECRET_HEADER_WORDS: &[&str] = &[
    "authorization",
    "token",
    "key",
    "secret",
    "password",
    "signature",
    "cookie",
    "auth",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" | "K" => 1024.0,
        "MiB" | "M" => 1024.0 * 1024.0,
        "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
        "TiB" | "T" => 1024.0f64.powi(4),
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    let bytes = n * mult;
    (bytes.is_finite() && (1.0..1.0e18).contains(&bytes)).then_some(bytes as u64)
}

/// The cron crate's message, reworded: its text repeats the expression with a caret, and
/// "must be less than 23" means "at most 23".
fn cron_reason(full: &str) -> String {
    let last = full
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && *l != "^")
        .unwrap_or("");
    let last = last
        .strip_prefix("Invalid expression:")
        .unwrap_or(last)
        .trim();
    if last.is_empty() || last.starts_with('^') || !last.contains(' ') {
        return "a field is not a number, range (`1-5`), list (`1,3`), step (`*/15`) or name"
            .to_owned();
    }
    let specified = |rest: &str| rest.split('\'').nth(1).unwrap_or("?").to_owned();
    if let Some((name, rest)) = last.split_once(" must be less than ") {
        let max = rest.split('.').next().unwrap_or("?");
        return format!(
            "{} must be at most {max}, found {}",
            name.to_lowercase(),
            specified(rest)
        );
    }
    if let Some((name, rest)) = last.split_once(" must be greater than or equal to ") {
        let min = rest.split('.').next().unwrap_or("?");
        return format!(
            "{} must be at least {min}, found {}",
            name.to_lowercase(),
            specified(rest)
        );
    }
    let mut out = last
        .trim_end_matches('.')
        .replace(". '", ": '")
        .replace(" specified", "");
    if let Some(first) = out.get(..1) {
        out = first.to_lowercase() + &out[1..];
    }
    out
}

/// Cron text as the `cron` crate reads it: classic 5-field crontab gets `0` seconds.
fn normalise_cron(expr: &str) -> String {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() == 5 {
        format!("0 {}", fields.join(" "))
    } else {
        fields.join(" ")
    }
}

impl<'l, 'd, 'i> Sem<'l, 'd, 'i> {
    pub fn new(
        loc: &'l Locator<'d, 'i>,
        lines: &'l LineIndex<'l>,
        poisoned: &'l [KeyPath],
    ) -> Self {
        Self {
            loc,
            lines,
            poisoned,
            findings: Vec::new(),
        }
    }

    /// True when `path` holds (or lies inside) a stand-in for a value already reported.
    pub fn is_poisoned(&self, path: &KeyPath) -> bool {
        self.poisoned
            .iter()
            .any(|q| path.starts_with(q) || q.starts_with(path))
    }

    pub fn err(
        &mut self,
        path: &KeyPath,
        code: &'static str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        if self.is_poisoned(path) {
            return;
        }
        let span = self.loc.span(path);
        self.findings.push(Finding {
            span,
            path: path.clone(),
            code,
            message: message.into(),
            hint,
        });
    }

    pub fn span_dur(&mut self, text: Option<&str>, default: Span, path: &KeyPath) -> Span {
        let Some(text) = text else { return default };
        match Span::parse(text) {
            Ok(s) => s,
            Err(e) => {
                let hint = match e {
                    SpanError::Unit { .. } | SpanError::Syntax(_) => {
                        Some("examples: `30d`, `12h`, `90m`, `2w`, `1d12h`".to_owned())
                    }
                    _ => None,
                };
                self.err(path, "bad-duration", format!("invalid duration: {e}"), hint);
                default
            }
        }
    }

    fn template(&mut self, text: &str, path: &KeyPath) -> Option<Template> {
        match Template::parse(text) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(path, "bad-env-reference", e.to_string(), None);
                None
            }
        }
    }

    /// A credential: only `${NAME}` references, never a literal value.
    fn secret(&mut self, text: &str, path: &KeyPath) -> Option<Template> {
        let t = self.template(text, path)?;
        if !t.is_single_var() {
            let field = path.0.last().map(|s| match s {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => i.to_string(),
            });
            self.err(
                path,
                "literal-secret",
                "a secret must not be written in the job file",
                Some(format!(
                    "set it in an environment variable and write `{} = \"${{{}}}\"`",
                    field.clone().unwrap_or_default(),
                    field
                        .unwrap_or_default()
                        .to_ascii_uppercase()
                        .replace('-', "_")
                )),
            );
            return None;
        }
        Some(t)
    }

    fn field_path(&mut self, text: &str, path: &KeyPath) -> FieldPath {
        FieldPath::parse(text).unwrap_or_else(|| {
            self.err(
                path,
                "bad-field",
                format!("`{text}` is not a field path"),
                Some("write a field name, or a dotted path into nested records like `commerce.order.priceTotal`".to_owned()),
            );
            FieldPath(vec![text.to_owned()])
        })
    }

    /// The file offset of byte `offset` of the string at `path` when the TOML string holds
    /// `text` verbatim (no escapes); else the string's start.
    fn offset_in_string(&self, path: &KeyPath, text: &str, offset: Option<usize>) -> usize {
        let span = self.loc.span(path);
        let raw = self.lines.source().get(span.clone()).unwrap_or_default();
        let verbatim = raw.len() == text.len() + 2
            && (raw.starts_with('"') || raw.starts_with('\''))
            && raw.get(1..raw.len() - 1) == Some(text);
        match offset {
            Some(o) if verbatim => span.start + 1 + o,
            _ => span.start,
        }
    }

    /// Parses a rule; a syntax error points at the offending character in the file when the
    /// TOML string holds the rule verbatim (no escapes), else at the string.
    fn predicate(&mut self, text: &str, path: &KeyPath) -> Option<Predicate> {
        match propensity_core::expr::parse(text) {
            Ok(expr) => Some(Predicate {
                text: text.trim().to_owned(),
                expr,
            }),
            Err(e) => {
                if self.is_poisoned(path) {
                    return None;
                }
                let at = self.offset_in_string(path, text, Some(e.offset));
                self.findings.push(Finding {
                    span: at..at,
                    path: path.clone(),
                    code: "bad-rule",
                    message: format!("invalid rule: {}", e.message),
                    hint: Some("rules look like `percentile >= 80 AND loyalty_tier IN ('gold', 'silver') AND has_factor('days_since_last_purchase')`".to_owned()),
                });
                None
            }
        }
    }

    /// A URL with a scheme from `allowed`, or a local path when `allow_path`. `${NAME}`
    /// references are allowed; a password written in the URL is refused.
    /// A source glob matches file names in one folder (the engine lists a folder and matches
    /// each file name): `date=*/*.parquet` would match nothing, so it is refused here.
    fn glob_in_one_folder(&mut self, text: &str, path: &KeyPath) {
        let Some(i) = text.find(['*', '[']) else {
            return;
        };
        if !text[i..].contains('/') {
            return;
        }
        let folder = text[..i].rfind('/').map_or("", |j| &text[..=j]);
        self.err(
            path,
            "bad-glob",
            format!("the glob in `{text}` spans folders; a glob matches the file names of one folder"),
            Some(format!(
                "point at the folder instead, `{folder}`: every file of the format under it is read, including hive-style `key=value` partition folders; or glob file names only, e.g. `{folder}*.parquet`"
            )),
        );
    }

    fn location(
        &mut self,
        text: &str,
        path: &KeyPath,
        allowed: &[&str],
        allow_path: bool,
    ) -> Option<(Scheme, Template)> {
        let t = self.template(text, path)?;
        if text.trim().is_empty() {
            self.err(path, "bad-url", "empty location", None);
            return None;
        }
        if t.is_single_var() {
            return Some((Scheme::FromEnv, t));
        }
        // Each reference becomes a marker no hand-written text contains, so that the URL's
        // shape can be checked and a password can be told apart from a reference.
        const MARK: &str = "propensityenvref7f3a";
        let probe = t.render_with(|_| MARK.to_owned());
        let scheme_end = probe.find("://");
        let Some(end) = scheme_end else {
            if allow_path {
                return Some((Scheme::Path, t));
            }
            self.err(
                path,
                "bad-url",
                format!("`{text}` is not a URL"),
                Some(format!(
                    "write a URL with one of the schemes {}",
                    one_of(allowed)
                )),
            );
            return None;
        };
        let scheme = probe[..end].to_ascii_lowercase();
        if !allowed.contains(&scheme.as_str()) {
            let hint = match did_you_mean(&scheme, allowed.iter().copied()) {
                Some(m) => format!(
                    "did you mean `{m}://`? supported schemes: {}",
                    one_of(allowed)
                ),
                None => format!("supported schemes: {}", one_of(allowed)),
            };
            self.err(
                path,
                "bad-url",
                format!("unsupported URL scheme `{scheme}`"),
                Some(hint),
            );
            return None;
        }
        let parsed = match url::Url::parse(&probe) {
            Ok(u) => u,
            Err(e) => {
                self.err(
                    path,
                    "bad-url",
                    format!("`{text}` is not a valid URL: {e}"),
                    None,
                );
                return None;
            }
        };
        if let Some(pw) = parsed.password()
            && (pw.is_empty() || !pw.replace(MARK, "").is_empty())
        {
            let host = match scheme.as_str() {
                "postgres" | "postgresql" => "db:5432/scores",
                "redis" | "rediss" => "cache:6379/0",
                _ => "host/path",
            };
            let var = if scheme.starts_with("postgres") {
                "PG"
            } else {
                &scheme.to_ascii_uppercase()
            };
            self.err(
                path,
                "literal-secret",
                "the URL contains a password written in the job file",
                Some(format!(
                    "reference an environment variable instead, e.g. `{scheme}://user:${{{var}_PASSWORD}}@{host}`, or give the whole URL as `${{{var}_URL}}`"
                )),
            );
            return None;
        }
        if matches!(
            scheme.as_str(),
            "s3" | "gs" | "az" | "abfs" | "abfss" | "http" | "https" | "redis" | "rediss"
        ) && parsed.host_str().is_none_or(str::is_empty)
        {
            self.err(
                path,
                "bad-url",
                format!("`{text}` has no host or bucket"),
                None,
            );
            return None;
        }
        let s = match scheme.as_str() {
            "file" => Scheme::File,
            "s3" => Scheme::S3,
            "gs" => Scheme::Gs,
            "az" | "abfs" | "abfss" => Scheme::Az,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => Scheme::FromEnv,
        };
        Some((s, t))
    }

    fn storage(&mut self, raw: Option<&RawStorage>, path: &KeyPath) -> StorageOptions {
        let mut out = StorageOptions::default();
        let Some(r) = raw else { return out };
        let plain = [
            ("endpoint", &r.endpoint),
            ("region", &r.region),
            ("account_name", &r.account_name),
        ];
        for (k, v) in plain {
            if let Some(v) = v
                && let Some(t) = self.template(v, &path.key(k))
            {
                out.options.insert(k.to_owned(), t);
            }
        }
        let secret = [
            ("access_key_id", &r.access_key_id),
            ("secret_access_key", &r.secret_access_key),
            ("session_token", &r.session_token),
            ("service_account_key", &r.service_account_key),
            ("account_key", &r.account_key),
            ("sas_token", &r.sas_token),
            ("bearer_token", &r.bearer_token),
        ];
        for (k, v) in secret {
            if let Some(v) = v
                && let Some(t) = self.secret(v, &path.key(k))
            {
                out.options.insert(k.to_owned(), t);
            }
        }
        for (k, v) in [
            ("allow_http", r.allow_http),
            ("virtual_hosted_style", r.virtual_hosted_style),
        ] {
            if let Some(v) = v
                && let Ok(t) = Template::parse(&v.to_string())
            {
                out.options.insert(k.to_owned(), t);
            }
        }
        out
    }

    pub fn name(&mut self, name: &str, path: &KeyPath, what: &str) {
        if !is_identifier(name) {
            self.err(
                path,
                "bad-name",
                format!("`{name}` is not a valid {what} name"),
                Some("use 1 to 63 lower-case letters, digits, `-` and `_`, starting with a letter or digit".to_owned()),
            );
        }
    }

    pub fn sources(
        &mut self,
        raw: &RawSources,
        p: &KeyPath,
    ) -> (Option<EventSource>, Option<ProfileSource>) {
        const SOURCE_SCHEMES: &[&str] =
            &["file", "s3", "gs", "az", "abfs", "abfss", "http", "https"];
        let ep = p.key("events");
        let e = &raw.events;
        let location = self.location(&e.uri, &ep.key("uri"), SOURCE_SCHEMES, true);
        self.glob_in_one_folder(&e.uri, &ep.key("uri"));
        let cols = e.columns.as_ref();
        let cp = ep.key("columns");
        let mut col = |name: &str, v: Option<&String>| {
            self.field_path(v.map_or(name, String::as_str), &cp.key(name))
        };
        let columns = EventColumns {
            profile_id: col("profile_id", cols.and_then(|c| c.profile_id.as_ref())),
            timestamp: col("timestamp", cols.and_then(|c| c.timestamp.as_ref())),
            event_type: col("event_type", cols.and_then(|c| c.event_type.as_ref())),
        };
        let storage = self.storage(e.storage.as_ref(), &ep.key("storage"));
        let events = location.map(|(scheme, uri)| EventSource {
            location: Location { scheme, uri },
            format: e.format,
            columns,
            timestamp_format: e.timestamp_format.unwrap_or(TimestampFormat::Auto),
            storage,
            max_invalid_fraction: e.max_invalid_fraction.unwrap_or(0.05),
            dedupe: e.dedupe.unwrap_or(false),
        });
        let profiles = raw.profiles.as_ref().and_then(|pr| {
            let pp = p.key("profiles");
            let location = self.location(&pr.uri, &pp.key("uri"), SOURCE_SCHEMES, true);
            self.glob_in_one_folder(&pr.uri, &pp.key("uri"));
            let profile_id = self.field_path(
                pr.profile_id.as_deref().unwrap_or("profile_id"),
                &pp.key("profile_id"),
            );
            let mut attributes = Vec::new();
            for (i, a) in pr.attributes.iter().flatten().enumerate() {
                if a.trim().is_empty() {
                    self.err(
                        &pp.key("attributes").index(i),
                        "bad-field",
                        "empty attribute name",
                        None,
                    );
                } else if attributes.contains(a) {
                    self.err(
                        &pp.key("attributes").index(i),
                        "duplicate",
                        format!("attribute `{a}` is listed twice"),
                        None,
                    );
                } else {
                    attributes.push(a.clone());
                }
            }
            let storage = self.storage(pr.storage.as_ref(), &pp.key("storage"));
            location.map(|(scheme, uri)| ProfileSource {
                location: Location { scheme, uri },
                format: pr.format,
                profile_id,
                attributes,
                storage,
            })
        });
        (events, profiles)
    }

    fn scalar(&mut self, v: &serde_json::Value, path: &KeyPath) -> Option<Scalar> {
        Some(match v {
            serde_json::Value::String(s) => Scalar::String(s.clone()),
            serde_json::Value::Bool(b) => Scalar::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            _ => {
                self.err(
                    path,
                    "invalid-type",
                    "expected a string, number or boolean",
                    None,
                );
                return None;
            }
        })
    }

    fn condition(&mut self, c: &RawCondition, path: &KeyPath) -> Option<Condition> {
        let field = self.field_path(&c.field, &path.key("field"));
        if self.is_poisoned(&path.key("op")) {
            return None;
        }
        let vp = path.key("value");
        let value = match (c.op, &c.value) {
            (Op::Exists, None) => ConditionValue::Present,
            (Op::Exists, Some(serde_json::Value::Bool(b))) => {
                if *b {
                    ConditionValue::Present
                } else {
                    ConditionValue::Absent
                }
            }
            (Op::Exists, Some(_)) => {
                self.err(
                    &vp,
                    "invalid-value",
                    "`exists` takes `value = true` (the default) or `value = false`",
                    None,
                );
                return None;
            }
            (op, None) => {
                self.err(
                    path,
                    "missing-key",
                    format!("missing required key `value` for `op = \"{op}\"`"),
                    Some(if matches!(op, Op::In | Op::NotIn) {
                        "add `value = [\"a\", \"b\"]`".to_owned()
                    } else {
                        "add `value = ...`".to_owned()
                    }),
                );
                return None;
            }
            (Op::In | Op::NotIn, Some(serde_json::Value::Array(items))) => {
                if items.is_empty() {
                    self.err(
                        &vp,
                        "invalid-value",
                        format!("`{}` needs at least one value", c.op),
                        None,
                    );
                    return None;
                }
                let mut list = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    list.push(self.scalar(it, &vp.index(i))?);
                }
                ConditionValue::List(list)
            }
            (Op::In | Op::NotIn, Some(_)) => {
                self.err(
                    &vp,
                    "invalid-type",
                    format!("`{}` takes an array of values", c.op),
                    Some("write `value = [\"a\", \"b\"]`".to_owned()),
                );
                return None;
            }
            (op, Some(serde_json::Value::Array(_))) => {
                self.err(
                    &vp,
                    "invalid-type",
                    format!("`{op}` takes a single value, not an array"),
                    Some("use `op = \"in\"` to match any of several values".to_owned()),
                );
                return None;
            }
            (Op::Contains, Some(v)) if !v.is_string() => {
                self.err(&vp, "invalid-type", "`contains` takes a string", None);
                return None;
            }
            (Op::Gt | Op::Ge | Op::Lt | Op::Le, Some(serde_json::Value::Bool(_))) => {
                self.err(
                    &vp,
                    "invalid-type",
                    format!("`{}` compares numbers or strings, not booleans", c.op),
                    None,
                );
                return None;
            }
            (_, Some(v)) => ConditionValue::One(self.scalar(v, &vp)?),
        };
        Some(Condition {
            field,
            op: c.op,
            value,
        })
    }

    pub fn goal(&mut self, raw: &RawGoal, p: &KeyPath) -> Option<Goal> {
        match raw {
            RawGoal::Conditions(g) => {
                let window = self.span_dur(Some(&g.window), Span::from_days(30), &p.key("window"));
                if g.conditions.is_empty() {
                    self.err(&p.key("conditions"), "empty", "a `conditions` goal needs at least one condition", Some("e.g. `conditions = [{ field = \"event_type\", op = \"eq\", value = \"purchase\" }]`".to_owned()));
                }
                let mut conditions = Vec::new();
                let mut ok = true;
                for (i, c) in g.conditions.iter().enumerate() {
                    match self.condition(c, &p.key("conditions").index(i)) {
                        Some(c) => conditions.push(c),
                        None => ok = false,
                    }
                }
                ok.then(|| {
                    Goal::Conditions(ConditionsGoal {
                        outcome: g.outcome,
                        window,
                        r#match: g.match_.unwrap_or(Match::Any),
                        min_count: g.min_count.unwrap_or(1),
                        conditions,
                    })
                })
            }
            RawGoal::Plugin(g) => {
                let window = self.span_dur(Some(&g.window), Span::from_days(30), &p.key("window"));
                if g.plugin.trim().is_empty() {
                    self.err(&p.key("plugin"), "invalid-value", "empty plugin name", Some("name the plugin, e.g. `plugin = \"repeat_purchase\"`, or give a path to its library".to_owned()));
                }
                if let Some(h) = &g.sha256
                    && (h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
                {
                    self.err(&p.key("sha256"), "invalid-value", "`sha256` must be 64 hexadecimal digits", Some("print it with `sha256sum <library>` or `propensity plugins check <library>`".to_owned()));
                }
                Some(Goal::Plugin(PluginGoal {
                    plugin: g.plugin.clone(),
                    sha256: g.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
                    window,
                    params: g.params.clone().unwrap_or_default().into_iter().collect(),
                }))
            }
        }
    }

    pub fn eligibility(&mut self, raw: Option<&RawEligibility>, p: &KeyPath) -> Eligibility {
        let active_within = self.span_dur(
            raw.and_then(|r| r.active_within.as_deref()),
            Span::from_days(90),
            &p.key("active_within"),
        );
        let mut pred = |v: Option<&String>, k: &str| v.and_then(|t| self.predicate(t, &p.key(k)));
        Eligibility {
            active_within,
            include: pred(raw.and_then(|r| r.include.as_ref()), "include"),
            exclude: pred(raw.and_then(|r| r.exclude.as_ref()), "exclude"),
            exclude_events: pred(
                raw.and_then(|r| r.exclude_events.as_ref()),
                "exclude_events",
            ),
        }
    }

    pub fn features(&mut self, raw: Option<&RawFeatures>, p: &KeyPath) -> Features {
        let lookback = match raw.and_then(|r| r.lookback.as_deref()) {
            None | Some("all") => Lookback::All,
            Some(text) => {
                Lookback::Span(self.span_dur(Some(text), Span::from_days(365), &p.key("lookback")))
            }
        };
        let mut windows = Vec::new();
        match raw.and_then(|r| r.windows.as_ref()) {
            None => windows.extend([7, 30, 90].map(Span::from_days)),
            Some(ws) => {
                if ws.is_empty() {
                    self.err(&p.key("windows"), "empty", "`windows` is empty", Some("list at least one window, e.g. `windows = [\"7d\", \"30d\"]`, or remove the key for the default".to_owned()));
                }
                for (i, w) in ws.iter().enumerate() {
                    let wp = p.key("windows").index(i);
                    let Ok(s) = Span::parse(w) else {
                        self.span_dur(Some(w), Span::from_days(1), &wp);
                        continue;
                    };
                    if windows.contains(&s) {
                        self.err(
                            &wp,
                            "duplicate",
                            format!("window `{w}` is listed twice"),
                            None,
                        );
                    } else if matches!(lookback, Lookback::Span(l) if s > l) {
                        self.err(
                            &wp,
                            "invalid-value",
                            format!("window `{w}` is longer than the lookback `{lookback}`"),
                            Some("shorten the window or lengthen `features.lookback`".to_owned()),
                        );
                    } else {
                        windows.push(s);
                    }
                }
            }
        }
        windows.sort();
        let mut numeric_fields = Vec::new();
        for (i, f) in raw
            .and_then(|r| r.numeric_fields.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            numeric_fields.push(self.field_path(f, &p.key("numeric_fields").index(i)));
        }
        let mut custom_events = BTreeMap::new();
        for (name, expr) in raw
            .and_then(|r| r.custom_events.as_ref())
            .into_iter()
            .flatten()
        {
            let cp = p.key("custom_events").key(name);
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                self.err(&cp, "bad-name", format!("`{name}` is not a valid custom event name"), Some("use lower-case letters, digits and `_`, starting with a letter; it becomes part of feature names".to_owned()));
            }
            if let Some(pr) = self.predicate(expr, &cp) {
                custom_events.insert(name.clone(), pr);
            }
        }
        Features {
            lookback,
            windows,
            top_event_types: raw.and_then(|r| r.top_event_types).unwrap_or(10),
            numeric_fields_auto: raw.and_then(|r| r.numeric_fields.as_ref()).is_none(),
            numeric_fields,
            custom_events,
            exclude: raw.and_then(|r| r.exclude.clone()).unwrap_or_default(),
        }
    }

    pub fn model(&mut self, raw: Option<&RawModel>, p: &KeyPath) -> ModelSpec {
        let stride = raw
            .and_then(|r| r.snapshot_stride.as_deref())
            .map(|t| self.span_dur(Some(t), Span::from_days(7), &p.key("snapshot_stride")));
        let g = raw.and_then(|r| r.gbdt.as_ref());
        let gp = p.key("gbdt");
        let learning_rate = g.and_then(|g| g.learning_rate);
        if let Some(lr) = learning_rate
            && !(lr > 0.0 && lr <= 1.0)
        {
            self.err(
                &gp.key("learning_rate"),
                "out-of-range",
                format!("learning rate {lr} is outside (0, 1]"),
                Some("typical values are 0.02 to 0.2".to_owned()),
            );
        }
        let budget = match raw
            .and_then(|r| r.search.as_ref())
            .and_then(|s| s.budget.as_deref())
        {
            Some("off") => None,
            text => Some(self.span_dur(text, Span::from_secs(600), &p.key("search").key("budget"))),
        };
        ModelSpec {
            algorithm: raw.and_then(|r| r.algorithm).unwrap_or(Algorithm::Gbdt),
            snapshots: raw.and_then(|r| r.snapshots).unwrap_or(4),
            snapshot_stride: stride,
            min_positives: raw.and_then(|r| r.min_positives).unwrap_or(200),
            min_negatives: raw.and_then(|r| r.min_negatives).unwrap_or(200),
            seed: raw.and_then(|r| r.seed).unwrap_or(42),
            calibration: raw.and_then(|r| r.calibration).unwrap_or(Calibration::Auto),
            min_auc: raw
                .and_then(|r| r.quality_gate.as_ref())
                .and_then(|q| q.min_auc)
                .unwrap_or(0.65),
            gbdt: GbdtParams {
                num_trees: g.and_then(|g| g.num_trees),
                learning_rate,
                max_depth: g.and_then(|g| g.max_depth),
                num_leaves: g.and_then(|g| g.num_leaves),
                min_data_in_leaf: g.and_then(|g| g.min_data_in_leaf),
                early_stopping_rounds: g.and_then(|g| g.early_stopping_rounds),
            },
            search: SearchSpec { budget },
        }
    }

    pub fn output(&mut self, raw: Option<&RawOutput>, p: &KeyPath) -> OutputSpec {
        let (high, medium) = raw
            .and_then(|r| r.buckets.as_ref())
            .map_or((75, 25), |b| (b.high, b.medium));
        if medium >= high {
            self.err(
                &p.key("buckets"),
                "invalid-value",
                format!("bucket thresholds must have `medium` ({medium}) below `high` ({high})"),
                Some("e.g. `buckets = { high = 75, medium = 25 }`".to_owned()),
            );
        }
        OutputSpec {
            top_factors: raw.and_then(|r| r.top_factors).unwrap_or(5),
            high,
            medium,
        }
    }

    fn cron(&mut self, text: &str, path: &KeyPath) -> Option<CronSpec> {
        let hint = || {
            Some("fields are `sec min hour day-of-month month day-of-week [year]`, or 5-field crontab `min hour day-of-month month day-of-week`; e.g. `0 0 3 * * *` is daily at 03:00".to_owned())
        };
        let fields = text.split_whitespace().count();
        if !(5..=7).contains(&fields) {
            self.err(
                path,
                "bad-cron",
                format!(
                    "invalid cron expression `{text}`: expected 5, 6 or 7 fields, found {fields}"
                ),
                hint(),
            );
            return None;
        }
        let expression = normalise_cron(text);
        match cron::Schedule::from_str(&expression) {
            Ok(schedule) => Some(CronSpec {
                expression,
                schedule,
            }),
            Err(e) => {
                self.err(
                    path,
                    "bad-cron",
                    format!(
                        "invalid cron expression `{text}`: {}",
                        cron_reason(&e.to_string())
                    ),
                    hint(),
                );
                None
            }
        }
    }

    pub fn schedule(&mut self, raw: &RawSchedule, p: &KeyPath) -> Option<ScheduleSpec> {
        let score = self.cron(&raw.score, &p.key("score"));
        let train = raw.train.as_ref().map(|t| self.cron(t, &p.key("train")));
        let tz_text = raw.timezone.as_deref().unwrap_or("UTC");
        let timezone = match chrono_tz::Tz::from_str(tz_text) {
            Ok(tz) => Some(tz),
            Err(_) => {
                let names = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name());
                let hint = match did_you_mean(tz_text, names) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => "use an IANA time-zone name such as `Europe/Berlin`, `America/New_York` or `UTC`".to_owned(),
                };
                self.err(
                    &p.key("timezone"),
                    "bad-timezone",
                    format!("unknown time zone `{tz_text}`"),
                    Some(hint),
                );
                None
            }
        };
        let r = raw.retries.as_ref();
        let rp = p.key("retries");
        let backoff = self.span_dur(
            r.and_then(|r| r.backoff.as_deref()),
            Span::from_secs(60),
            &rp.key("backoff"),
        );
        let max_backoff = self.span_dur(
            r.and_then(|r| r.max_backoff.as_deref()),
            Span::from_secs(1800),
            &rp.key("max_backoff"),
        );
        if max_backoff < backoff {
            self.err(
                &rp.key("max_backoff"),
                "invalid-value",
                format!("`max_backoff` ({max_backoff}) is shorter than `backoff` ({backoff})"),
                None,
            );
        }
        let timeout = raw
            .timeout
            .as_deref()
            .map(|t| self.span_dur(Some(t), Span::from_secs(3600), &p.key("timeout")));
        let max_memory = raw.max_memory.as_deref().and_then(|t| {
            let v = parse_size(t).filter(|&v| v > 0);
            if v.is_none() {
                self.err(
                    &p.key("max_memory"),
                    "invalid-value",
                    format!("`{t}` is not a memory size"),
                    Some("write a number with a unit, e.g. `2GiB` or `8GiB`".to_owned()),
                );
            }
            v
        });
        let catchup = raw.catchup.unwrap_or(Catchup::Latest);
        if raw.catchup_limit.is_some() && catchup != Catchup::All {
            self.err(
                &p.key("catchup_limit"),
                "invalid-value",
                "`catchup_limit` only applies with `catchup = \"all\"`",
                Some("remove it, or set `catchup = \"all\"`".to_owned()),
            );
        }
        let train = match train {
            Some(t) => Some(t?),
            None => None,
        };
        Some(ScheduleSpec {
            score: score?,
            train,
            timezone: timezone?,
            overlap: raw.overlap.unwrap_or(Overlap::Skip),
            catchup,
            catchup_limit: raw.catchup_limit.unwrap_or(10),
            retries: RetryPolicy {
                max_attempts: r.and_then(|r| r.max_attempts).unwrap_or(3),
                backoff,
                max_backoff,
            },
            timeout,
            max_memory,
        })
    }

    pub fn segments(
        &mut self,
        raw: &[(usize, RawSegment)],
        p: &KeyPath,
        attrs: propensity_core::rule::Attributes<'_>,
    ) -> Vec<SegmentSpec> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, s) in raw {
            let sp = p.index(*i);
            self.name(&s.name, &sp.key("name"), "segment");
            if let Some(first) = seen.get(&s.name) {
                let line = self.line_of(&p.index(*first).key("name"));
                self.err(
                    &sp.key("name"),
                    "duplicate",
                    format!("duplicate segment name `{}`", s.name),
                    Some(format!(
                        "the first `{}` is on line {line}; segment names must be unique",
                        s.name
                    )),
                );
            } else {
                seen.insert(s.name.clone(), *i);
            }
            let holdout = s.holdout.unwrap_or(0.0);
            if !(0.0..1.0).contains(&holdout) {
                self.err(
                    &sp.key("holdout"),
                    "out-of-range",
                    format!("holdout {holdout} is outside [0, 1)"),
                    Some("a fraction such as 0.1 holds out 10 % of the segment".to_owned()),
                );
            }
            if let Some(rule) = self.predicate(&s.rule, &sp.key("where")) {
                if let Err(e) = propensity_core::rule::check(&rule.expr, attrs) {
                    let wp = sp.key("where");
                    let within = e
                        .anchor
                        .as_deref()
                        .and_then(|a| propensity_core::rule::locate(&s.rule, a));
                    let at = self.offset_in_string(&wp, &s.rule, within);
                    self.findings.push(Finding {
                        span: at..at,
                        path: wp,
                        code: "bad-rule",
                        message: format!("segment `{}`: {}", s.name, e.message),
                        hint: e.hint,
                    });
                    continue;
                }
                out.push(SegmentSpec {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    rule,
                    holdout,
                });
            }
        }
        out
    }

    pub fn line_of(&self, path: &KeyPath) -> usize {
        self.lines.line_of(self.loc.span(path).start)
    }

    pub fn sink(
        &mut self,
        raw: &RawSink,
        p: &KeyPath,
        job: &str,
    ) -> Option<(Option<String>, bool, SinkKind)> {
        const FILE_SCHEMES: &[&str] = &["file", "s3", "gs", "az", "abfs", "abfss"];
        let holdout = |h: Option<bool>| h.unwrap_or(false);
        match raw {
            RawSink::Parquet(s) => {
                let storage = self.storage(s.storage.as_ref(), &p.key("storage"));
                let (scheme, uri) = self.location(&s.uri, &p.key("uri"), FILE_SCHEMES, true)?;
                Some((
                    s.name.clone(),
                    holdout(s.include_holdout),
                    SinkKind::Parquet {
                        location: Location { scheme, uri },
                        storage,
                        compression: s.compression.unwrap_or(ParquetCompression::Zstd),
                    },
                ))
            }
            RawSink::Csv(s) | RawSink::Jsonl(s) => {
                let storage = self.storage(s.storage.as_ref(), &p.key("storage"));
                let (scheme, uri) = self.location(&s.uri, &p.key("uri"), FILE_SCHEMES, true)?;
                let location = Location { scheme, uri };
                let kind = if matches!(raw, RawSink::Csv(_)) {
                    SinkKind::Csv { location, storage }
                } else {
                    SinkKind::Jsonl { location, storage }
                };
                Some((s.name.clone(), holdout(s.include_holdout), kind))
            }
            RawSink::Postgres(s) => {
                let url = self.location(&s.url, &p.key("url"), &["postgres", "postgresql"], false);
                // Defaults are valid by construction; only what the file says is checked.
                let ident = |v: &Option<String>, default: String, key: &str, this: &mut Self| {
                    let Some(v) = v.clone() else { return default };
                    let ok = v
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && v.len() <= 63
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !ok {
                        this.err(&p.key(key), "bad-name", format!("`{v}` is not a valid PostgreSQL identifier here"), Some("use letters, digits and `_`, starting with a letter, at most 63 characters".to_owned()));
                    }
                    v
                };
                let schema = ident(&s.schema, "public".to_owned(), "schema", self);
                let table = ident(&s.table, "profile_scores".to_owned(), "table", self);
                let segments_table = ident(
                    &s.segments_table,
                    format!("{table}_segments"),
                    "segments_table",
                    self,
                );
                // The default is derived from `table`: it can be too long even when `table`
                // is not (PostgreSQL would cut it to 63 bytes, silently naming another table).
                if s.segments_table.is_none()
                    && segments_table.len() > 63
                    && !self.is_poisoned(&p.key("table"))
                {
                    self.err(
                        &p.key("table"),
                        "bad-name",
                        format!(
                            "the default segments table `{segments_table}` ({} characters) is longer than PostgreSQL's 63",
                            segments_table.len()
                        ),
                        Some("set `segments_table` to a name of at most 63 characters, or shorten `table` to at most 54".to_owned()),
                    );
                }
                let (tls, ca_file) = s
                    .tls
                    .as_ref()
                    .map_or((TlsMode::Prefer, None), |t| (t.mode, t.ca_file.clone()));
                if ca_file.is_some()
                    && matches!(tls, TlsMode::Disable)
                    && !self.is_poisoned(&p.key("tls").key("mode"))
                {
                    self.err(
                        &p.key("tls").key("ca_file"),
                        "invalid-value",
                        "`ca_file` is set but TLS is disabled",
                        Some("set `mode = \"verify_full\"` or remove `ca_file`".to_owned()),
                    );
                }
                let (_, url) = url?;
                Some((
                    s.name.clone(),
                    holdout(s.include_holdout),
                    SinkKind::Postgres(PostgresSink {
                        url,
                        schema,
                        table,
                        segments_table,
                        mode: s.mode.unwrap_or(PostgresMode::Swap),
                        tls,
                        ca_file,
                    }),
                ))
            }
            RawSink::Redis(s) => {
                let url = self.location(&s.url, &p.key("url"), &["redis", "rediss"], false);
                let expire_after = self.span_dur(
                    s.expire_after.as_deref(),
                    Span::from_days(1),
                    &p.key("expire_after"),
                );
                let key_prefix = s
                    .key_prefix
                    .clone()
                    .unwrap_or_else(|| format!("propensity:{job}"));
                if s.key_prefix.is_some()
                    && (key_prefix.is_empty() || key_prefix.contains(char::is_whitespace))
                {
                    self.err(
                        &p.key("key_prefix"),
                        "invalid-value",
                        "`key_prefix` must be non-empty and without spaces",
                        None,
                    );
                }
                let (_, url) = url?;
                Some((
                    s.name.clone(),
                    holdout(s.include_holdout),
                    SinkKind::Redis(RedisSink {
                        url,
                        key_prefix,
                        expire_after,
                    }),
                ))
            }
            RawSink::Webhook(s) => {
                let url = self.location(&s.url, &p.key("url"), &["https", "http"], false);
                let mut headers = BTreeMap::new();
                for (name, value) in s.headers.iter().flatten() {
                    let hp = p.key("headers").key(name);
                    let lname = name.to_ascii_lowercase();
                    let valid_name = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
                    if !valid_name {
                        self.err(
                            &hp,
                            "invalid-value",
                            format!("`{name}` is not a valid HTTP header name"),
                            None,
                        );
                        continue;
                    }
                    let Some(t) = self.template(value, &hp) else {
                        continue;
                    };
                    if SECRET_HEADER_WORDS.iter().any(|w| lname.contains(w)) && !t.has_vars() {
                        self.err(&hp, "literal-secret", format!("header `{name}` carries a credential written in the job file"), Some(if lname == "authorization" { format!("set it in an environment variable and write e.g. `{name} = \"Bearer ${{CRM_TOKEN}}\"`") } else { format!("set it in an environment variable and write e.g. `{name} = \"${{{}}}\"`", name.to_ascii_uppercase().replace('-', "_")) }));
                        continue;
                    }
                    headers.insert(name.clone(), t);
                }
                let signing_secret = s
                    .signing_secret
                    .as_deref()
                    .and_then(|v| self.secret(v, &p.key("signing_secret")));
                let timeout =
                    self.span_dur(s.timeout.as_deref(), Span::from_secs(30), &p.key("timeout"));
                let initial_backoff = self.span_dur(
                    s.initial_backoff.as_deref(),
                    Span::from_secs(1),
                    &p.key("initial_backoff"),
                );
                let max_backoff = self.span_dur(
                    s.max_backoff.as_deref(),
                    Span::from_secs(60),
                    &p.key("max_backoff"),
                );
                let retry_budget = self.span_dur(
                    s.retry_budget.as_deref(),
                    Span::from_secs(600),
                    &p.key("retry_budget"),
                );
                if max_backoff < initial_backoff {
                    self.err(&p.key("max_backoff"), "invalid-value", format!("`max_backoff` ({max_backoff}) is shorter than `initial_backoff` ({initial_backoff})"), None);
                }
                let (_, url) = url?;
                Some((
                    s.name.clone(),
                    holdout(s.include_holdout),
                    SinkKind::Webhook(WebhookSink {
                        url,
                        headers,
                        batch_size: s.batch_size.unwrap_or(500),
                        timeout,
                        max_attempts: s.max_attempts.unwrap_or(5),
                        initial_backoff,
                        max_backoff,
                        retry_budget,
                        signing_secret,
                    }),
                ))
            }
        }
    }

    pub fn engine(&mut self, raw: Option<&RawEngine>, p: &KeyPath) -> Option<EngineSpec> {
        match raw {
            None => Some(EngineSpec::Embedded {
                memory_limit: 4 << 30,
                spill_dir: None,
                target_partitions: 0,
            }),
            Some(RawEngine::Embedded(e)) => {
                let memory_limit = match e.memory_limit.as_deref() {
                    None => 4 << 30,
                    Some(t) => parse_size(t).unwrap_or_else(|| {
                        self.err(
                            &p.key("memory_limit"),
                            "invalid-value",
                            format!("`{t}` is not a memory size"),
                            Some("write a number with a unit, e.g. `512MiB` or `4GiB`".to_owned()),
                        );
                        4 << 30
                    }),
                };
                Some(EngineSpec::Embedded {
                    memory_limit,
                    spill_dir: e.spill_dir.clone(),
                    target_partitions: e.target_partitions.unwrap_or(0),
                })
            }
            Some(RawEngine::Ballista(b)) => {
                let (_, scheduler) = self.location(
                    &b.scheduler,
                    &p.key("scheduler"),
                    &["df", "http", "https"],
                    false,
                )?;
                Some(EngineSpec::Ballista { scheduler })
            }
        }
    }
}
