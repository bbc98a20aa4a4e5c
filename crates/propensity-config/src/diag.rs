//! Findings about a job file and how they are shown: `file:line:col`, the key path, a hint.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where a value sits in the job file, e.g. `sinks[1].table`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    pub fn starts_with(&self, other: &KeyPath) -> bool {
        self.0.starts_with(&other.0)
    }
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A problem found before positions are known: a byte span in the file.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub span: Range<usize>,
    pub path: KeyPath,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

/// One problem in a job file, located and explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The key path, e.g. `sinks[1].table`; `(top level)` for the document itself.
    pub key: String,
    /// A stable, machine-readable kind, e.g. `unknown-key`, `invalid-type`, `bad-duration`.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    /// ```text
    /// jobs/x.toml:12:1: error[unknown-key]: unknown key `tabel` in `sinks[1]` (postgres sink)
    ///   key:  sinks[1].tabel
    ///   hint: did you mean `table`?
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error[{}]: {}\n  key:  {}",
            self.file, self.line, self.column, self.code, self.message, self.key
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets to 1-based line and column (in characters).
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let start = self.starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    pub fn source(&self) -> &'a str {
        self.text
    }

    pub fn line_of(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }
}

pub(crate) fn locate(
    file: &str,
    index: &LineIndex<'_>,
    mut findings: Vec<Finding>,
) -> Vec<Diagnostic> {
    findings.sort_by(|a, b| {
        a.span
            .start
            .cmp(&b.span.start)
            .then_with(|| a.message.cmp(&b.message))
    });
    findings.dedup_by(|a, b| a.span == b.span && a.message == b.message);
    findings
        .into_iter()
        .map(|f| {
            let (line, column) = index.line_col(f.span.start);
            Diagnostic {
                file: file.to_owned(),
                line,
                column,
                key: f.path.to_string(),
                code: f.code,
                message: f.message,
                hint: f.hint,
            }
        })
        .collect()
}

pub use propensity_core::suggest::did_you_mean;

/// `a`, `b` or `c` — for hints listing allowed values.
pub fn one_of(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        n => format!("{} or {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("tabel", ["url", "table", "schema"]),
            Some("table")
        );
        assert_eq!(did_you_mean("windw", ["window", "outcome"]), Some("window"));
        assert_eq!(did_you_mean("zzzzzz", ["window", "outcome"]), None);
        assert_eq!(
            did_you_mean("top_events", ["custom_events", "top_event_types"]),
            Some("top_event_types")
        );
        assert_eq!(
            did_you_mean("lookbak", ["lookback", "windows"]),
            Some("lookback")
        );
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }

    #[test]
    fn line_columns_count_characters() {
        let idx = LineIndex::new("a = 1\nbé = 2\n");
        assert_eq!(idx.line_col(0), (1, 1));
        assert_eq!(idx.line_col(6), (2, 1));
        assert_eq!(idx.line_col(9), (2, 3));
    }

    #[test]
    fn key_paths_read_like_toml() {
        let p = KeyPath::root()
            .key("sinks")
            .index(1)
            .key("headers")
            .key("X Api");
        assert_eq!(p.to_string(), "sinks[1].headers.\"X Api\"");
    }
}
