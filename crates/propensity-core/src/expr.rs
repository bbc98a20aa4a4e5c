//! The predicate language of job files: segment rules (`where`), eligibility `include` /
//! `exclude`, `exclude_events` and `custom_events`. A small SQL-like boolean language:
//!
//! ```text
//! percentile >= 80 AND has_factor('days_since_last_purchase') AND loyalty_tier = 'gold'
//! event_type IN ('purchase', 'refund') OR NOT (channel = 'email' OR commerce.order.priceTotal > 100)
//! coupon IS NOT NULL
//! ```
//!
//! Parsed into an [`Expr`] tree at validation time; engines compile the tree to their own
//! expressions (user text is never spliced into SQL).

use std::fmt;

use serde::Serialize;

/// A literal value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Literal {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed predicate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Expr {
    /// A (possibly nested) field: `loyalty_tier`, `commerce.order.priceTotal`.
    Field {
        path: Vec<String>,
    },
    Literal {
        value: Literal,
    },
    Compare {
        op: CmpOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Literal>,
        negated: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Not {
        expr: Box<Expr>,
    },
    /// Every operand is true (two or more: `a AND b AND c` is one `And`).
    And {
        args: Vec<Expr>,
    },
    /// Some operand is true (two or more).
    Or {
        args: Vec<Expr>,
    },
    /// One of [`FUNCTIONS`].
    Call {
        name: String,
        args: Vec<Expr>,
    },
}

/// Functions a predicate may call, with their argument counts.
pub const FUNCTIONS: &[(&str, usize)] = &[
    ("has_factor", 1),
    ("contains", 2),
    ("starts_with", 2),
    ("lower", 1),
    ("upper", 1),
];

/// The deepest nesting a rule may have: parentheses, `NOT` and function calls each add a
/// level. Rules are checked and compiled by recursion, so the limit keeps a hostile or
/// generated rule from exhausting a thread's stack.
pub const MAX_DEPTH: usize = 64;

/// The most conditions (AND / OR operands, counted over the whole rule) a rule may have. A
/// long list of alternatives of one field is `field IN (…)`, which has no such limit.
pub const MAX_TERMS: usize = 1_000;

/// A syntax error at a byte offset of the predicate text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    Dot,
    End,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Num(n) => format!("`{n}`"),
        Tok::Op(o) => format!("`{o}`"),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Dot => "`.`".into(),
        Tok::End => "the end of the rule".into(),
    }
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let err = |offset: usize, message: String| Err(ExprError { offset, message });
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((start, Tok::LParen));
                i += 1
            }
            b')' => {
                out.push((start, Tok::RParen));
                i += 1
            }
            b',' => {
                out.push((start, Tok::Comma));
                i += 1
            }
            b'.' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                out.push((start, Tok::Dot));
                i += 1
            }
            b'\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match text[i..].find('\'') {
                        None => return err(start, "unclosed string: add the closing `'`".into()),
                        Some(j) => {
                            s.push_str(&text[i..i + j]);
                            i += j + 1;
                            if b.get(i) == Some(&b'\'') {
                                s.push('\'');
                                i += 1;
                            } else {
                                break;
                            }
                        }
                    }
                }
                out.push((start, Tok::Str(s)));
            }
            b'"' => return err(start, "strings are written in single quotes: 'gold'".into()),
            b'=' => {
                out.push((start, Tok::Op("=")));
                i += if b.get(i + 1) == Some(&b'=') { 2 } else { 1 }
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push((start, Tok::Op("!=")));
                i += 2
            }
            b'<' => match b.get(i + 1) {
                Some(b'=') => {
                    out.push((start, Tok::Op("<=")));
                    i += 2
                }
                Some(b'>') => {
                    out.push((start, Tok::Op("!=")));
                    i += 2
                }
                _ => {
                    out.push((start, Tok::Op("<")));
                    i += 1
                }
            },
            b'>' => {
                if b.get(i + 1) == Some(&b'=') {
                    out.push((start, Tok::Op(">=")));
                    i += 2
                } else {
                    out.push((start, Tok::Op(">")));
                    i += 1
                }
            }
            b'&' | b'|' => {
                let word = if c == b'&' { "AND" } else { "OR" };
                return err(
                    start,
                    format!(
                        "write `{word}` instead of `{}`",
                        if c == b'&' { "&&" } else { "||" }
                    ),
                );
            }
            b'-' | b'.' | b'0'..=b'9' => {
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_digit()
                        || b[i] == b'.'
                        || b[i] == b'_'
                        || b[i] == b'e'
                        || b[i] == b'E')
                {
                    i += 1;
                }
                out.push((start, Tok::Num(text[start..i].replace('_', ""))));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((start, Tok::Ident(text[start..i].to_owned())));
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return err(start, format!("unexpected character `{ch}`"));
            }
        }
    }
    out.push((text.len(), Tok::End));
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    /// Current nesting (see [`MAX_DEPTH`]).
    depth: usize,
    /// AND / OR operands so far (see [`MAX_TERMS`]).
    terms: usize,
}

fn is_kw(t: &Tok, kw: &str) -> bool {
    matches!(t, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
}

const KEYWORDS: &[&str] = &["and", "or", "not", "in", "is", "null", "true", "false"];

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].1
    }
    fn offset(&self) -> usize {
        self.toks[self.pos.min(self.toks.len() - 1)].0
    }
    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }
    fn fail<T>(&self, message: String) -> Result<T, ExprError> {
        Err(ExprError {
            offset: self.offset(),
            message,
        })
    }
    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), ExprError> {
        if self.peek() == want {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("expected {what}, found {}", describe(self.peek())))
        }
    }

    /// `operand (KEYWORD operand)*`: one n-ary node when the keyword appears.
    fn chain(
        &mut self,
        keyword: &str,
        operand: fn(&mut Self) -> Result<Expr, ExprError>,
        join: fn(Vec<Expr>) -> Expr,
    ) -> Result<Expr, ExprError> {
        let first = operand(self)?;
        if !is_kw(self.peek(), keyword) {
            return Ok(first);
        }
        let mut args = vec![first];
        while is_kw(self.peek(), keyword) {
            self.terms += 1;
            if self.terms >= MAX_TERMS {
                return self.fail(format!(
                    "the rule has more than {MAX_TERMS} conditions joined by AND / OR; for many alternatives of one field write `field IN ('a', 'b', …)`"
                ));
            }
            self.pos += 1;
            args.push(operand(self)?);
        }
        Ok(join(args))
    }
    /// Enters one nesting level (parenthesis, NOT, function call).
    fn nest(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(format!(
                "the rule is nested more than {MAX_DEPTH} levels deep (parentheses, NOT and function calls); simplify it"
            ));
        }
        Ok(())
    }
    fn or(&mut self) -> Result<Expr, ExprError> {
        self.chain("or", Self::and, |args| Expr::Or { args })
    }
    fn and(&mut self) -> Result<Expr, ExprError> {
        self.chain("and", Self::not, |args| Expr::And { args })
    }
    fn not(&mut self) -> Result<Expr, ExprError> {
        if is_kw(self.peek(), "not") {
            self.nest()?;
            self.pos += 1;
            let expr = Box::new(self.not()?);
            self.depth -= 1;
            return Ok(Expr::Not { expr });
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let left = self.operand()?;
        let op = match self.peek() {
            Tok::Op(o) => Some(*o),
            _ => None,
        };
        if let Some(o) = op {
            self.pos += 1;
            let right = self.operand()?;
            let op = match o {
                "=" => CmpOp::Eq,
                "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                _ => CmpOp::Ge,
            };
            return Ok(Expr::Compare {
                op,
                left: Box::new(left),
                right: Box::new(right),
            });
        }
        let negated = is_kw(self.peek(), "not")
            && self
                .toks
                .get(self.pos + 1)
                .is_some_and(|t| is_kw(&t.1, "in"));
        if negated {
            self.pos += 1;
        }
        if is_kw(self.peek(), "in") {
            self.pos += 1;
            self.expect(&Tok::LParen, "`(` after IN")?;
            let mut list = vec![self.literal()?];
            while self.peek() == &Tok::Comma {
                self.pos += 1;
                list.push(self.literal()?);
            }
            self.expect(&Tok::RParen, "`)` closing the IN list")?;
            return Ok(Expr::InList {
                expr: Box::new(left),
                list,
                negated,
            });
        }
        if is_kw(self.peek(), "is") {
            self.pos += 1;
            let negated = is_kw(self.peek(), "not");
            if negated {
                self.pos += 1;
            }
            if !is_kw(self.peek(), "null") {
                return self.fail(format!(
                    "expected NULL after IS{}, found {}",
                    if negated { " NOT" } else { "" },
                    describe(self.peek())
                ));
            }
            self.pos += 1;
            return Ok(Expr::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        Ok(left)
    }
    fn literal(&mut self) -> Result<Literal, ExprError> {
        let at = self.offset();
        match self.bump() {
            Tok::Str(s) => Ok(Literal::String(s)),
            Tok::Num(n) => number(&n).ok_or(ExprError {
                offset: at,
                message: format!("`{n}` is not a number"),
            }),
            Tok::Ident(k) if k.eq_ignore_ascii_case("true") => Ok(Literal::Bool(true)),
            Tok::Ident(k) if k.eq_ignore_ascii_case("false") => Ok(Literal::Bool(false)),
            Tok::Ident(k) if k.eq_ignore_ascii_case("null") => Ok(Literal::Null),
            t => Err(ExprError {
                offset: at,
                message: format!(
                    "expected a value ('text', a number, TRUE, FALSE or NULL), found {}",
                    describe(&t)
                ),
            }),
        }
    }
    fn operand(&mut self) -> Result<Expr, ExprError> {
        let at = self.offset();
        match self.peek().clone() {
            Tok::LParen => {
                self.nest()?;
                self.pos += 1;
                let e = self.or()?;
                self.expect(&Tok::RParen, "`)`")?;
                self.depth -= 1;
                Ok(e)
            }
            Tok::Str(_) | Tok::Num(_) => Ok(Expr::Literal {
                value: self.literal()?,
            }),
            Tok::Ident(name)
                if ["true", "false", "null"]
                    .iter()
                    .any(|k| name.eq_ignore_ascii_case(k)) =>
            {
                Ok(Expr::Literal {
                    value: self.literal()?,
                })
            }
            Tok::Ident(name) if KEYWORDS.iter().any(|k| name.eq_ignore_ascii_case(k)) => {
                self.fail(format!(
                    "expected a field or a value, found the keyword `{}`",
                    name.to_uppercase()
                ))
            }
            Tok::Ident(name) => {
                self.pos += 1;
                if self.peek() == &Tok::LParen {
                    self.pos += 1;
                    let Some(&(_, arity)) = FUNCTIONS
                        .iter()
                        .find(|(f, _)| f.eq_ignore_ascii_case(&name))
                    else {
                        let known: Vec<&str> = FUNCTIONS.iter().map(|(f, _)| *f).collect();
                        return Err(ExprError {
                            offset: at,
                            message: format!(
                                "unknown function `{name}`; functions: {}",
                                known.join(", ")
                            ),
                        });
                    };
                    self.nest()?;
                    let mut args = Vec::new();
                    if self.peek() != &Tok::RParen {
                        args.push(self.or()?);
                        while self.peek() == &Tok::Comma {
                            self.pos += 1;
                            args.push(self.or()?);
                        }
                    }
                    self.expect(&Tok::RParen, "`)` closing the function call")?;
                    self.depth -= 1;
                    if args.len() != arity {
                        return Err(ExprError {
                            offset: at,
                            message: format!(
                                "`{name}` takes {arity} argument{}, found {}",
                                if arity == 1 { "" } else { "s" },
                                args.len()
                            ),
                        });
                    }
                    if name.eq_ignore_ascii_case("has_factor")
                        && !matches!(
                            args[0],
                            Expr::Literal {
                                value: Literal::String(_)
                            }
                        )
                    {
                        return Err(ExprError { offset: at, message: "`has_factor` takes a feature name in quotes, e.g. has_factor('days_since_last_purchase')".into() });
                    }
                    return Ok(Expr::Call {
                        name: name.to_ascii_lowercase(),
                        args,
                    });
                }
                let mut path = vec![name];
                while self.peek() == &Tok::Dot {
                    self.pos += 1;
                    match self.bump() {
                        Tok::Ident(n) => path.push(n),
                        t => {
                            return self.fail(format!(
                                "expected a field name after `.`, found {}",
                                describe(&t)
                            ));
                        }
                    }
                }
                Ok(Expr::Field { path })
            }
            t => self.fail(format!(
                "expected a field or a value, found {}",
                describe(&t)
            )),
        }
    }
}

fn number(n: &str) -> Option<Literal> {
    if let Ok(i) = n.parse::<i64>() {
        return Some(Literal::Int(i));
    }
    n.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Literal::Float)
}

/// Parses a predicate. The error's offset points into `text`.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let toks = lex(text)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        terms: 0,
    };
    if p.peek() == &Tok::End {
        return p.fail("the rule is empty".into());
    }
    let e = p.or()?;
    if p.peek() != &Tok::End {
        let hint = if matches!(p.peek(), Tok::Ident(_) | Tok::Str(_) | Tok::Num(_)) {
            "; join conditions with AND or OR"
        } else {
            ""
        };
        return p.fail(format!("unexpected {}{hint}", describe(p.peek())));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(p: &str) -> Box<Expr> {
        Box::new(Expr::Field {
            path: p.split('.').map(str::to_owned).collect(),
        })
    }

    #[test]
    fn parses_the_spec_examples() {
        let e = parse(
            "percentile >= 80 AND has_factor('days_since_last_purchase') AND loyalty_tier = 'gold'",
        )
        .expect("valid");
        let Expr::And { args } = e else { panic!("and") };
        assert_eq!(args.len(), 3, "one n-ary AND: {args:?}");
        assert!(matches!(args[1], Expr::Call { .. }));
        assert_eq!(
            args[2],
            Expr::Compare {
                op: CmpOp::Eq,
                left: field("loyalty_tier"),
                right: Box::new(Expr::Literal {
                    value: Literal::String("gold".into())
                })
            }
        );
        assert!(parse("event_type = 'form_submit' AND form = 'newsletter'").is_ok());
        assert!(parse("bucket = 'high'").is_ok());
        let e = parse("x NOT IN ('a', 'it''s') OR y IS NOT NULL").expect("valid");
        let Expr::Or { args } = e else { panic!("or") };
        let [left, right] = &args[..] else {
            panic!("two operands: {args:?}")
        };
        assert_eq!(
            *left,
            Expr::InList {
                expr: field("x"),
                list: vec![Literal::String("a".into()), Literal::String("it's".into())],
                negated: true
            }
        );
        assert_eq!(
            *right,
            Expr::IsNull {
                expr: field("y"),
                negated: true
            }
        );
        assert!(parse("NOT (commerce.order.priceTotal > -1.5e3 or channel <> 'email')").is_ok());
    }

    #[test]
    fn or_binds_looser_than_and() {
        let Expr::Or { args } = parse("a = 1 OR b = 2 AND c = 3").expect("valid") else {
            panic!("or at the top")
        };
        assert!(matches!(args[..], [Expr::Compare { .. }, Expr::And { .. }]));
    }

    #[test]
    fn nesting_and_length_are_bounded_with_a_located_error() {
        // Within the limits: parsed, n-ary, shallow.
        let deep = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&deep).is_ok());
        let long = vec!["a = 1"; MAX_TERMS].join(" OR ");
        let Ok(Expr::Or { args }) = parse(&long) else {
            panic!("one OR")
        };
        assert_eq!(args.len(), MAX_TERMS);
        // Beyond them (far beyond: what overflowed the stack before), an error at the place
        // the limit was crossed.
        let deep = format!("{}a = 1{}", "(".repeat(100_000), ")".repeat(100_000));
        let e = parse(&deep).expect_err("too deep");
        assert_eq!(e.offset, MAX_DEPTH, "{e}");
        assert!(e.message.contains("nested more than 64"), "{e}");
        let nots = format!("{}a = 1", "NOT ".repeat(10_000));
        let e = parse(&nots).expect_err("too many NOT");
        assert!(e.message.contains("nested"), "{e}");
        let calls = format!("{}'x'{}", "lower(".repeat(10_000), ")".repeat(10_000));
        assert!(parse(&calls).is_err());
        let long = vec!["a = 1"; 100_000].join(" OR ");
        let e = parse(&long).expect_err("too long");
        assert!(e.message.contains("IN ("), "{e}");
        // At the OR that crossed it.
        assert_eq!(
            e.offset,
            (MAX_TERMS - 1) * "a = 1 OR ".len() + "a = 1 ".len()
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            ("", 0, "empty"),
            ("bucket = \"high\"", 9, "single quotes"),
            ("bucket = 'high", 9, "unclosed"),
            ("score > 50 score < 90", 11, "AND or OR"),
            ("has_factr('x')", 0, "unknown function"),
            ("has_factor(x)", 0, "in quotes"),
            ("x IN 'a'", 5, "`(` after IN"),
            ("x IS 5", 5, "NULL"),
            ("a = 1 && b = 2", 6, "AND"),
            ("(a = 1", 6, "`)`"),
            ("a = AND", 4, "keyword"),
        ];
        for (text, offset, needle) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.offset, offset, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }
}
