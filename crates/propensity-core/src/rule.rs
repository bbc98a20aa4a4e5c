//! Type checking of segment rules (`[[segments]] where`), before any data is read.
//!
//! A segment rule sees one score row and the profile's attributes:
//!
//! | name | type |
//! |---|---|
//! | `probability` | number, 0–1 |
//! | `score` | number, 0–100 |
//! | `percentile` | number, 1–100 |
//! | `bucket` | `'high'`, `'medium'` or `'low'` |
//! | `confidence` | `'normal'` or `'low'` |
//! | `top_factor` | text: the feature name of the strongest factor |
//! | `profile_id`, `model_version` | text |
//! | `has_factor('feature')` | true when the feature is among the profile's top factors |
//! | profile attributes | as in the profile source (types are checked when a run reads it) |

use crate::expr::{CmpOp, Expr, Literal};

/// The type of a score-row field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldType {
    /// A number with its inclusive range.
    Number(f64, f64),
    /// Text restricted to these values.
    Choice(&'static [&'static str]),
    Text,
    /// A profile attribute: its type is known only from the data.
    Attribute,
}

/// The score-row fields a segment rule can use.
pub const SCORE_FIELDS: &[(&str, FieldType)] = &[
    ("probability", FieldType::Number(0.0, 1.0)),
    ("score", FieldType::Number(0.0, 100.0)),
    ("percentile", FieldType::Number(1.0, 100.0)),
    ("bucket", FieldType::Choice(&["high", "medium", "low"])),
    ("confidence", FieldType::Choice(&["normal", "low"])),
    ("top_factor", FieldType::Text),
    ("profile_id", FieldType::Text),
    ("model_version", FieldType::Text),
];

/// Which profile attributes exist, as far as the job file says.
#[derive(Debug, Clone, Copy)]
pub enum Attributes<'a> {
    /// The job has no profile source: only score-row fields exist.
    None,
    /// Every column of the profile source (not known before the data is read).
    Any,
    /// Exactly these.
    Listed(&'a [String]),
}

/// A type error, with the token of the rule it is about (for the error's column).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub message: String,
    pub hint: Option<String>,
    /// The field name or quoted value the error is about; its first occurrence in the rule
    /// text is where the error points.
    pub anchor: Option<String>,
}

fn err(message: String, hint: Option<String>, anchor: Option<String>) -> RuleError {
    RuleError {
        message,
        hint,
        anchor,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Num(f64, f64),
    Choice(&'static [&'static str]),
    Text,
    Bool,
    Any,
}

fn field_type(path: &[String], attrs: Attributes<'_>) -> Result<Ty, RuleError> {
    let name = path.join(".");
    if let Some((_, t)) = SCORE_FIELDS.iter().find(|(n, _)| *n == name) {
        return Ok(match *t {
            FieldType::Number(lo, hi) => Ty::Num(lo, hi),
            FieldType::Choice(c) => Ty::Choice(c),
            FieldType::Text => Ty::Text,
            FieldType::Attribute => Ty::Any,
        });
    }
    let score_names: Vec<&str> = SCORE_FIELDS.iter().map(|(n, _)| *n).collect();
    let closest = |candidates: &[&str]| -> Option<String> {
        candidates
            .iter()
            .map(|c| (strsim::levenshtein(&name, c), *c))
            .filter(|(d, c)| *d <= 2.max(c.len() / 4))
            .min()
            .map(|(_, c)| format!("did you mean `{c}`?"))
    };
    match attrs {
        Attributes::Any => Ok(Ty::Any),
        Attributes::Listed(list) if list.contains(&name) => Ok(Ty::Any),
        Attributes::Listed(list) => {
            let mut all: Vec<&str> = score_names.clone();
            all.extend(list.iter().map(String::as_str));
            Err(err(
                format!("unknown field `{name}`: it is neither a score field nor one of the profile attributes listed in [source.profiles] attributes"),
                Some(closest(&all).unwrap_or_else(|| format!("score fields: {}; attributes: {}; add `{name}` to [source.profiles] attributes if the profile source has it", score_names.join(", "), list.join(", ")))),
                Some(path[0].clone()),
            ))
        }
        Attributes::None => Err(err(
            format!(
                "unknown field `{name}`: this job has no [source.profiles], so rules see only the score fields"
            ),
            Some(closest(&score_names).unwrap_or_else(|| {
                format!(
                    "score fields: {}; declare a [source.profiles] for profile attributes",
                    score_names.join(", ")
                )
            })),
            Some(path[0].clone()),
        )),
    }
}

fn describe(t: Ty) -> &'static str {
    match t {
        Ty::Num(..) => "a number",
        Ty::Choice(_) | Ty::Text => "text",
        Ty::Bool => "true/false",
        Ty::Any => "a value",
    }
}

fn literal_type(l: &Literal) -> Ty {
    match l {
        Literal::String(_) => Ty::Text,
        Literal::Int(_) | Literal::Float(_) => Ty::Num(f64::MIN, f64::MAX),
        Literal::Bool(_) => Ty::Bool,
        Literal::Null => Ty::Any,
    }
}

fn literal_anchor(l: &Literal) -> Option<String> {
    match l {
        Literal::String(s) => Some(format!("'{s}'")),
        Literal::Int(i) => Some(i.to_string()),
        Literal::Float(f) => Some(f.to_string()),
        Literal::Bool(b) => Some(b.to_string()),
        Literal::Null => None,
    }
}

/// Checks a literal against a field's type: kind and, for numbers and choices, the values.
fn check_literal(field: &str, t: Ty, l: &Literal) -> Result<(), RuleError> {
    let anchor = literal_anchor(l);
    match (t, l) {
        (Ty::Any, _) | (_, Literal::Null) => Ok(()),
        (Ty::Num(lo, hi), Literal::Int(_) | Literal::Float(_)) => {
            let v = match l {
                Literal::Int(i) => *i as f64,
                Literal::Float(f) => *f,
                _ => 0.0,
            };
            if v < lo || v > hi {
                let hint = if field == "probability" && v > 1.0 && v <= 100.0 {
                    format!(
                        "probability is 0–1: write {}, or compare `score` (0–100)",
                        v / 100.0
                    )
                } else {
                    format!("`{field}` is between {lo} and {hi}")
                };
                Err(err(
                    format!("`{field}` is never {v}: it is between {lo} and {hi}"),
                    Some(hint),
                    anchor,
                ))
            } else {
                Ok(())
            }
        }
        (Ty::Choice(c), Literal::String(s)) => {
            if c.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(err(
                    format!("`{field}` is never '{s}'"),
                    Some(format!(
                        "`{field}` is one of {}",
                        c.iter()
                            .map(|v| format!("'{v}'"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    anchor,
                ))
            }
        }
        (Ty::Text, Literal::String(_)) => Ok(()),
        (t, l) => Err(err(
            format!(
                "`{field}` is {}, but it is compared with {}",
                describe(t),
                describe(literal_type(l))
            ),
            Some(match t {
                Ty::Num(..) => format!("compare `{field}` with a number, e.g. `{field} >= 80`"),
                _ => format!("quote text values, e.g. `{field} = 'high'`"),
            }),
            // The field, not the value: the same value may appear earlier in the rule.
            field.split('.').next().map(str::to_owned),
        )),
    }
}

/// Checks a segment rule against the score-row fields and the attributes the job declares.
pub fn check(expr: &Expr, attrs: Attributes<'_>) -> Result<(), RuleError> {
    boolean(expr, attrs)
}

fn boolean(e: &Expr, attrs: Attributes<'_>) -> Result<(), RuleError> {
    match e {
        Expr::And { args } | Expr::Or { args } => args.iter().try_for_each(|a| boolean(a, attrs)),
        Expr::Not { expr } => boolean(expr, attrs),
        Expr::IsNull { expr, .. } => value(expr, attrs).map(|_| ()),
        Expr::Literal {
            value: Literal::Bool(_),
        } => Ok(()),
        Expr::Literal { value } => Err(err(
            "a value alone is not a condition".into(),
            Some("compare it with a field, e.g. `bucket = 'high'`".into()),
            literal_anchor(value),
        )),
        Expr::Field { path } => match field_type(path, attrs)? {
            Ty::Any | Ty::Bool => Ok(()),
            t => Err(err(
                format!("`{}` is {}, not true/false", path.join("."), describe(t)),
                Some(format!(
                    "compare it with a value, e.g. `{} = …`",
                    path.join(".")
                )),
                Some(path[0].clone()),
            )),
        },
        Expr::Compare { op, left, right } => compare(*op, left, right, attrs),
        Expr::InList { expr, list, .. } => {
            let t = value(expr, attrs)?;
            if let Expr::Field { path } = &**expr {
                for l in list {
                    check_literal(&path.join("."), t, l)?;
                }
            }
            Ok(())
        }
        Expr::Call { name, args } => match (name.as_str(), args.as_slice()) {
            (
                "has_factor",
                [
                    Expr::Literal {
                        value: Literal::String(s),
                    },
                ],
            ) => {
                if s.trim().is_empty() {
                    Err(err("has_factor() needs a feature name".into(), Some("e.g. has_factor('days_since_last_purchase'); `propensity dry-run` lists the feature names".into()), Some("has_factor".into())))
                } else {
                    Ok(())
                }
            }
            ("contains" | "starts_with", [a, b]) => {
                for x in [a, b] {
                    let t = value(x, attrs)?;
                    if matches!(t, Ty::Num(..) | Ty::Bool) {
                        return Err(err(
                            format!("{name}() takes text, not {}", describe(t)),
                            None,
                            anchor_of(x),
                        ));
                    }
                }
                Ok(())
            }
            _ => Err(err(
                format!("{name}() does not return true or false"),
                None,
                Some(name.clone()),
            )),
        },
    }
}

fn anchor_of(e: &Expr) -> Option<String> {
    match e {
        Expr::Field { path } => Some(path[0].clone()),
        Expr::Literal { value } => literal_anchor(value),
        Expr::Call { name, .. } => Some(name.clone()),
        _ => None,
    }
}

fn value(e: &Expr, attrs: Attributes<'_>) -> Result<Ty, RuleError> {
    match e {
        Expr::Field { path } => field_type(path, attrs),
        Expr::Literal { value } => Ok(literal_type(value)),
        Expr::Call { name, args } if matches!(name.as_str(), "lower" | "upper") => {
            let t = value(&args[0], attrs)?;
            if matches!(t, Ty::Num(..) | Ty::Bool) {
                return Err(err(
                    format!("{name}() takes text, not {}", describe(t)),
                    None,
                    anchor_of(&args[0]),
                ));
            }
            Ok(Ty::Text)
        }
        _ => boolean(e, attrs).map(|()| Ty::Bool),
    }
}

fn compare(op: CmpOp, left: &Expr, right: &Expr, attrs: Attributes<'_>) -> Result<(), RuleError> {
    let lt = value(left, attrs)?;
    let rt = value(right, attrs)?;
    let ordered = !matches!(op, CmpOp::Eq | CmpOp::Ne);
    for (f, ft, other) in [(left, lt, right), (right, rt, left)] {
        if let (Expr::Field { path }, Expr::Literal { value: l }) = (f, other) {
            check_literal(&path.join("."), ft, l)?;
            if ordered && matches!(ft, Ty::Choice(_)) {
                return Err(err(
                    format!("`{}` has no order; use = or IN", path.join(".")),
                    Some(format!("e.g. `{} IN ('high', 'medium')`", path.join("."))),
                    Some(path[0].clone()),
                ));
            }
        }
    }
    let kind = |t: Ty| match t {
        Ty::Num(..) => Some(0),
        Ty::Choice(_) | Ty::Text => Some(1),
        Ty::Bool => Some(2),
        Ty::Any => None,
    };
    match (kind(lt), kind(rt)) {
        (Some(a), Some(b)) if a != b => Err(err(
            format!("cannot compare {} with {}", describe(lt), describe(rt)),
            None,
            anchor_of(left),
        )),
        _ => Ok(()),
    }
}

/// The byte offset in `text` of the first token spelling `anchor` (a field name, a number,
/// or a quoted string), for pointing an error at it.
pub fn locate(text: &str, anchor: &str) -> Option<usize> {
    let quoted = anchor.starts_with('\'');
    let b = text.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        if b[i] == b'\'' {
            if quoted && !in_str && text[i..].starts_with(anchor) {
                return Some(i);
            }
            in_str = !in_str;
            i += 1;
            continue;
        }
        if !in_str && !quoted && text[i..].starts_with(anchor) {
            let before = i.checked_sub(1).map(|j| b[j]);
            let after = b.get(i + anchor.len()).copied();
            let word = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
            if !word(before) && !word(after) {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse;

    fn check_text(t: &str, attrs: Attributes<'_>) -> Result<(), RuleError> {
        check(&parse(t).expect("parses"), attrs)
    }

    #[test]
    fn good_rules_pass() {
        let listed = vec!["loyalty_tier".to_owned()];
        for t in [
            "bucket = 'high'",
            "percentile >= 80 AND has_factor('days_since_last_purchase') AND loyalty_tier = 'gold'",
            "probability > 0.5 OR NOT (confidence = 'low')",
            "top_factor = 'days_since_last_purchase' AND bucket IN ('high', 'medium')",
        ] {
            check_text(t, Attributes::Listed(&listed)).unwrap_or_else(|e| panic!("{t}: {e:?}"));
        }
        check_text("anything = 'x'", Attributes::Any).expect("attributes unknown before the data");
    }

    #[test]
    fn type_errors_name_the_token() {
        let cases: &[(&str, &str, &str)] = &[
            ("percentile >= 'high'", "compared with text", "percentile"),
            ("bucket = 'hgih'", "never 'hgih'", "'hgih'"),
            ("bucket > 'high'", "no order", "bucket"),
            ("probability > 80", "between 0 and 1", "80"),
            ("score AND bucket = 'high'", "not true/false", "score"),
            (
                "loyalty_teir = 'gold'",
                "unknown field `loyalty_teir`",
                "loyalty_teir",
            ),
        ];
        let listed = vec!["loyalty_tier".to_owned()];
        for (text, message, anchor) in cases {
            let e = check_text(text, Attributes::Listed(&listed)).expect_err(text);
            assert!(e.message.contains(message), "{text}: {}", e.message);
            assert_eq!(e.anchor.as_deref(), Some(*anchor), "{text}");
            assert!(locate(text, anchor).is_some(), "{text}");
        }
        let e = check_text("loyalty_teir = 'gold'", Attributes::Listed(&listed)).expect_err("typo");
        assert_eq!(e.hint.as_deref(), Some("did you mean `loyalty_tier`?"));
        let e = check_text("tier = 'gold'", Attributes::None).expect_err("no profiles");
        assert!(e.message.contains("no [source.profiles]"), "{}", e.message);
    }

    #[test]
    fn locate_skips_quoted_text_and_partial_words() {
        let t = "x_bucket = 'bucket' AND bucket = 'hgih'";
        assert_eq!(locate(t, "bucket"), Some(24));
        assert_eq!(locate(t, "'hgih'"), Some(33));
        assert_eq!(locate("score > 80", "80"), Some(8));
    }
}
