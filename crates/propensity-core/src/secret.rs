//! Values that may reference environment variables (`${NAME}`), and secrets that never print.
//!
//! A job file never holds a secret in clear: secret fields are written as `${ENV_VAR}`
//! (alone or inside a URL, e.g. `postgres://app:${PG_PASSWORD}@db/scores`). Validation keeps
//! the *template*; the value is read from the environment only when a run needs it, into a
//! [`Secret`] whose `Debug` and `Display` print `***`.

use std::collections::BTreeSet;
use std::fmt;

/// A string with `${NAME}` references, as written in the job file. Printing it shows the
/// variable names, never their values.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Part {
    Literal(String),
    Var(String),
}

/// Why a `${…}` template could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `${{` in `{0}`; write `${{NAME}}`")]
    Unclosed(String),
    #[error(
        "`${{{0}}}` is not a valid environment variable name; use letters, digits and `_`, not starting with a digit"
    )]
    BadName(String),
}

/// A template whose variables were not all set when it was resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable `{0}` is not set")]
pub struct MissingVar(pub String);

impl Template {
    /// Reads `text`, finding its `${NAME}` references. `$$` is not special; a lone `$` is kept.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
            let name = &after[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(TemplateError::BadName(name.to_owned()));
            }
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// The text as written, with `${NAME}` references (no values).
    pub fn as_written(&self) -> &str {
        &self.text
    }

    /// The names of the variables referenced, sorted.
    pub fn vars(&self) -> BTreeSet<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(v) => Some(v.as_str()),
                Part::Literal(_) => None,
            })
            .collect()
    }

    pub fn has_vars(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(_)))
    }

    /// True when the whole value is one `${NAME}` reference.
    pub fn is_single_var(&self) -> bool {
        matches!(self.parts.as_slice(), [Part::Var(_)])
    }

    /// The text with each reference replaced by `f(name)`; used to check the shape of a URL
    /// without knowing the values.
    pub fn render_with(&self, mut f: impl FnMut(&str) -> String) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.clone(),
                Part::Var(v) => f(v),
            })
            .collect()
    }

    /// Substitutes the variables using `lookup` (e.g. `|k| std::env::var(k).ok()`).
    pub fn resolve(
        &self,
        mut lookup: impl FnMut(&str) -> Option<String>,
    ) -> Result<Secret, MissingVar> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Var(v) => out.push_str(&lookup(v).ok_or_else(|| MissingVar(v.clone()))?),
            }
        }
        Ok(Secret(out))
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.text)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A resolved value that may contain a secret. It prints as `***` everywhere; call
/// [`Secret::expose`] only where the value is handed to a client library.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let t = Template::parse("postgres://app:${PG_PASSWORD}@db/${DB}").expect("valid");
        assert_eq!(
            t.vars().into_iter().collect::<Vec<_>>(),
            ["DB", "PG_PASSWORD"]
        );
        assert!(!t.is_single_var());
        assert!(Template::parse("${X}").expect("valid").is_single_var());
        assert!(!Template::parse("plain $ text").expect("valid").has_vars());
        assert_eq!(
            Template::parse("${A"),
            Err(TemplateError::Unclosed("${A".into()))
        );
        assert_eq!(
            Template::parse("${1A}"),
            Err(TemplateError::BadName("1A".into()))
        );
        assert_eq!(
            Template::parse("${}"),
            Err(TemplateError::BadName(String::new()))
        );
    }

    #[test]
    fn resolved_secret_never_prints() {
        let t = Template::parse("postgres://app:${PG_PASSWORD}@db/x").expect("valid");
        let s = t
            .resolve(|k| (k == "PG_PASSWORD").then(|| "canary-4711".to_owned()))
            .expect("set");
        assert_eq!(s.expose(), "postgres://app:canary-4711@db/x");
        for shown in [
            format!("{s}"),
            format!("{s:?}"),
            format!("{s:#?}"),
            format!("{t:?}"),
        ] {
            assert!(!shown.contains("canary"), "{shown}");
        }
        assert_eq!(serde_json::to_string(&s).expect("json"), "\"***\"");
        assert_eq!(t.resolve(|_| None), Err(MissingVar("PG_PASSWORD".into())));
    }
}
