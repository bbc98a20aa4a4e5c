//! Human durations as written in job files: `30d`, `12h`, `1w2d`, `90m`, `45s`.

use std::fmt;
use std::time::Duration;

/// A positive span of time written with units: `s`, `m`, `h`, `d`, `w`.
///
/// Units can be combined largest first (`1d12h`). Months and years are not
/// accepted because their length varies; write `30d` or `365d`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(Duration);

/// Why a duration string was rejected. The `Display` text is the message shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    #[error("empty duration")]
    Empty,
    #[error("negative duration `{0}`; durations must be positive, e.g. `30d`")]
    Negative(String),
    #[error("zero duration `{0}`; durations must be positive, e.g. `30d`")]
    Zero(String),
    #[error(
        "`{0}` is not a duration; write a number followed by a unit: s, m, h, d or w (e.g. `30d`, `12h`, `1d12h`)"
    )]
    Syntax(String),
    #[error(
        "unknown duration unit `{unit}` in `{text}`; use s, m, h, d or w (months and years vary in length: write `30d` or `365d`)"
    )]
    Unit { text: String, unit: String },
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

impl Span {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
    pub const fn from_days(days: u64) -> Self {
        Self(Duration::from_secs(days * 86_400))
    }
    pub const fn as_duration(self) -> Duration {
        self.0
    }
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// Parses `30d`, `12h`, `1w2d`, … Whitespace around the text is ignored.
    pub fn parse(text: &str) -> Result<Self, SpanError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(SpanError::Empty);
        }
        if t.starts_with('-') {
            return Err(SpanError::Negative(t.to_owned()));
        }
        let mut total: u64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(SpanError::Syntax(t.to_owned()));
            }
            let (num, tail) = rest.split_at(digits);
            let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
            if unit_len == 0 {
                return Err(SpanError::Syntax(t.to_owned()));
            }
            let (unit, tail) = tail.split_at(unit_len);
            let n: u64 = num.parse().map_err(|_| SpanError::Overflow(t.to_owned()))?;
            let factor = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3_600,
                "d" => 86_400,
                "w" => 7 * 86_400,
                other => {
                    return Err(SpanError::Unit {
                        text: t.to_owned(),
                        unit: other.to_owned(),
                    });
                }
            };
            total = n
                .checked_mul(factor)
                .and_then(|s| total.checked_add(s))
                .ok_or_else(|| SpanError::Overflow(t.to_owned()))?;
            rest = tail;
        }
        // Ten thousand years is far past any window or lookback a job can mean.
        if total > 10_000 * 365 * 86_400 {
            return Err(SpanError::Overflow(t.to_owned()));
        }
        if total == 0 {
            return Err(SpanError::Zero(t.to_owned()));
        }
        Ok(Self(Duration::from_secs(total)))
    }
}

impl fmt::Display for Span {
    /// The shortest canonical spelling: `30d`, `1d12h`, `90s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0.as_secs();
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            if s >= size {
                write!(f, "{}{unit}", s / size)?;
                s %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Span({self})")
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(Span::parse("30d").map(Span::as_secs), Ok(30 * 86_400));
        assert_eq!(Span::parse("12h").map(Span::as_secs), Ok(12 * 3_600));
        assert_eq!(Span::parse("1w2d").map(Span::as_secs), Ok(9 * 86_400));
        assert_eq!(Span::parse(" 90m ").map(Span::as_secs), Ok(5_400));
        assert_eq!(
            Span::parse("1d12h").map(|s| s.to_string()),
            Ok("1d12h".to_owned())
        );
        assert_eq!(
            Span::parse("2w").map(|s| s.to_string()),
            Ok("14d".to_owned())
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Span::parse(""), Err(SpanError::Empty));
        assert_eq!(Span::parse("0d"), Err(SpanError::Zero("0d".into())));
        assert_eq!(Span::parse("-7d"), Err(SpanError::Negative("-7d".into())));
        assert_eq!(Span::parse("30"), Err(SpanError::Syntax("30".into())));
        assert_eq!(Span::parse("d30"), Err(SpanError::Syntax("d30".into())));
        assert_eq!(
            Span::parse("3mo"),
            Err(SpanError::Unit {
                text: "3mo".into(),
                unit: "mo".into()
            })
        );
        assert!(matches!(
            Span::parse("99999999999999999999d"),
            Err(SpanError::Overflow(_))
        ));
        assert!(matches!(
            Span::parse("9999999w"),
            Err(SpanError::Overflow(_))
        ));
    }
}
