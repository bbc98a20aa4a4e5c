//! Compiles job predicates (`exclude_events`, `custom_events`, eligibility rules) and goal
//! conditions into DataFusion expressions, type-checked against the table's schema. User text
//! is never spliced into SQL: the parsed tree becomes an expression tree.
//!
//! A string column compared with a number is converted with `try_cast`; the values that do
//! not convert are counted (see [`Coercion`]) so the data-check report can say how many and
//! the run can fail above the job's threshold.

use arrow::datatypes::DataType;
use datafusion::functions::string::expr_fn as string_fn;
use datafusion::logical_expr::try_cast;
use datafusion::prelude::{Expr, lit};
use datafusion::scalar::ScalarValue;
use propensity_core::enums::{Match, Op};
use propensity_core::expr::{CmpOp, Expr as P, Literal};
use propensity_core::{Condition, ConditionValue, FieldPath, Scalar};

use crate::source::{ResolvedField, is_numeric, is_string, type_name};

/// A string field used as a number: `raw` is the field, counted where it is not null but
/// does not convert.
#[derive(Debug, Clone)]
pub struct Coercion {
    pub field: String,
    pub raw: Expr,
}

/// What the compiler needs from its caller: how a field name resolves.
pub trait Fields {
    fn field(&self, path: &FieldPath) -> Result<ResolvedField, String>;
}

impl<F: Fn(&FieldPath) -> Result<ResolvedField, String>> Fields for F {
    fn field(&self, path: &FieldPath) -> Result<ResolvedField, String> {
        self(path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Str,
    Num,
    Other,
}

fn kind(t: &DataType) -> Kind {
    if is_string(t) || matches!(t, DataType::Dictionary(_, v) if is_string(v)) {
        Kind::Str
    } else if is_numeric(t) {
        Kind::Num
    } else if *t == DataType::Boolean {
        Kind::Bool
    } else {
        Kind::Other
    }
}

/// Compiles predicates and conditions, collecting the coercions they need.
#[derive(Debug, Default)]
pub struct Compiler {
    pub coercions: Vec<Coercion>,
}

struct Value {
    expr: Expr,
    kind: Kind,
    /// The field name when the value is a field (for messages and coercions).
    field: Option<String>,
    data_type: Option<DataType>,
}

impl Compiler {
    /// A boolean predicate; null counts as false.
    pub fn predicate(&mut self, p: &P, fields: &dyn Fields) -> Result<Expr, String> {
        let e = self.boolean(p, fields)?;
        Ok(coalesce_false(e))
    }

    fn booleans(&mut self, ps: &[P], fields: &dyn Fields) -> Result<Vec<Expr>, String> {
        ps.iter().map(|p| self.boolean(p, fields)).collect()
    }

    fn boolean(&mut self, p: &P, fields: &dyn Fields) -> Result<Expr, String> {
        Ok(match p {
            P::And { args } => balanced(self.booleans(args, fields)?, Expr::and),
            P::Or { args } => balanced(self.booleans(args, fields)?, Expr::or),
            P::Not { expr } => Expr::Not(Box::new(coalesce_false(self.boolean(expr, fields)?))),
            P::IsNull { expr, negated } => {
                let v = self.value(expr, fields)?;
                if *negated {
                    v.expr.is_not_null()
                } else {
                    v.expr.is_null()
                }
            }
            P::Compare { op, left, right } => {
                let l = self.value(left, fields)?;
                let r = self.value(right, fields)?;
                let (l, r) = self.unify(l, r)?;
                let op = match op {
                    CmpOp::Eq => Op::Eq,
                    CmpOp::Ne => Op::Ne,
                    CmpOp::Lt => Op::Lt,
                    CmpOp::Le => Op::Le,
                    CmpOp::Gt => Op::Gt,
                    CmpOp::Ge => Op::Ge,
                };
                compare(op, l, r)
            }
            P::InList {
                expr,
                list,
                negated,
            } => {
                let v = self.value(expr, fields)?;
                let items: Vec<Scalar> = list
                    .iter()
                    .map(|l| match l {
                        Literal::String(s) => Ok(Scalar::String(s.clone())),
                        Literal::Int(i) => Ok(Scalar::Int(*i)),
                        Literal::Float(f) => Ok(Scalar::Float(*f)),
                        Literal::Bool(b) => Ok(Scalar::Bool(*b)),
                        Literal::Null => {
                            Err("NULL in an IN list never matches; use IS NULL".to_owned())
                        }
                    })
                    .collect::<Result<_, _>>()?;
                let name = v.field.clone().unwrap_or_else(|| "value".into());
                self.in_list(v, &items, *negated, &name)?
            }
            P::Call { name, args } => match (name.as_str(), args.as_slice()) {
                ("contains", [a, b]) | ("starts_with", [a, b]) => {
                    let a = self.value(a, fields)?;
                    let b = self.value(b, fields)?;
                    for v in [&a, &b] {
                        if v.kind != Kind::Str {
                            return Err(format!(
                                "{name}() takes strings, but {} is a {}",
                                v.field
                                    .as_deref()
                                    .map(|f| format!("`{f}`"))
                                    .unwrap_or("an argument".into()),
                                v.data_type
                                    .as_ref()
                                    .map(type_name)
                                    .unwrap_or_else(|| "non-string".into())
                            ));
                        }
                    }
                    if name == "contains" {
                        string_fn::contains(a.expr, b.expr)
                    } else {
                        string_fn::starts_with(a.expr, b.expr)
                    }
                }
                ("has_factor", _) => {
                    return Err("has_factor() is only available in segment rules".into());
                }
                _ => return Err(format!("{name}() does not return true or false")),
            },
            P::Field { path } => {
                let v = self.value(p, fields)?;
                if v.kind != Kind::Bool {
                    return Err(format!(
                        "`{}` is a {}, not true/false; compare it with a value",
                        path.join("."),
                        v.data_type.as_ref().map(type_name).unwrap_or_default()
                    ));
                }
                v.expr
            }
            P::Literal {
                value: Literal::Bool(b),
            } => lit(*b),
            P::Literal { .. } => return Err("a literal alone is not a condition".into()),
        })
    }

    fn value(&mut self, p: &P, fields: &dyn Fields) -> Result<Value, String> {
        Ok(match p {
            P::Field { path } => {
                let fp = FieldPath(path.clone());
                let f = fields.field(&fp)?;
                Value {
                    kind: kind(&f.data_type),
                    expr: f.expr,
                    field: Some(fp.to_string()),
                    data_type: Some(f.data_type),
                }
            }
            P::Literal { value } => match value {
                Literal::String(s) => literal(lit(s.clone()), Kind::Str),
                Literal::Int(i) => literal(lit(*i as f64), Kind::Num),
                Literal::Float(f) => literal(lit(*f), Kind::Num),
                Literal::Bool(b) => literal(lit(*b), Kind::Bool),
                Literal::Null => {
                    return Err(
                        "comparing with NULL is never true; use IS NULL or IS NOT NULL".into(),
                    );
                }
            },
            P::Call { name, args } if matches!(name.as_str(), "lower" | "upper") => {
                let [a] = args.as_slice() else {
                    return Err(format!("{name}() takes one argument"));
                };
                let a = self.value(a, fields)?;
                if a.kind != Kind::Str {
                    return Err(format!("{name}() takes a string"));
                }
                let expr = if name == "lower" {
                    string_fn::lower(a.expr)
                } else {
                    string_fn::upper(a.expr)
                };
                Value {
                    expr,
                    kind: Kind::Str,
                    field: a.field,
                    data_type: a.data_type,
                }
            }
            other => {
                let e = self.boolean(other, fields)?;
                literal(e, Kind::Bool)
            }
        })
    }

    /// Makes both sides comparable: a string field against a number is converted (counted).
    fn unify(&mut self, l: Value, r: Value) -> Result<(Value, Value), String> {
        match (l.kind, r.kind) {
            (a, b) if a == b && a != Kind::Other => Ok((l, r)),
            (Kind::Str, Kind::Num) => Ok((self.converted(l), r)),
            (Kind::Num, Kind::Str) => Ok((l, self.converted(r))),
            (Kind::Other, _) | (_, Kind::Other) => {
                // Timestamps, dates, decimals: DataFusion's own coercion decides.
                Ok((l, r))
            }
            _ => {
                let side = |v: &Value| {
                    v.field
                        .as_ref()
                        .map(|f| {
                            format!(
                                "`{f}` ({})",
                                v.data_type.as_ref().map(type_name).unwrap_or_default()
                            )
                        })
                        .unwrap_or_else(|| format!("a {} value", kind_name(v.kind)))
                };
                Err(format!("cannot compare {} with {}", side(&l), side(&r)))
            }
        }
    }

    fn converted(&mut self, v: Value) -> Value {
        if let Some(f) = &v.field
            && !self.coercions.iter().any(|c| &c.field == f)
        {
            self.coercions.push(Coercion {
                field: f.clone(),
                raw: v.expr.clone(),
            });
        }
        Value {
            expr: try_cast(v.expr, DataType::Float64),
            kind: Kind::Num,
            field: v.field,
            data_type: Some(DataType::Float64),
        }
    }

    fn in_list(
        &mut self,
        v: Value,
        items: &[Scalar],
        negated: bool,
        name: &str,
    ) -> Result<Expr, String> {
        let mut list = Vec::with_capacity(items.len());
        let mut v = v;
        for s in items {
            let (e, k) = scalar(s);
            if k == Kind::Num && v.kind == Kind::Str {
                v = self.converted(v);
            } else if k != v.kind && v.kind != Kind::Other {
                return Err(format!(
                    "`{name}` is a {}, but the list holds a {}",
                    v.data_type
                        .as_ref()
                        .map(type_name)
                        .unwrap_or_else(|| kind_name(v.kind).into()),
                    kind_name(k)
                ));
            }
            list.push(e);
        }
        Ok(v.expr.in_list(list, negated))
    }

    /// The expression for one goal condition over an event.
    pub fn condition(&mut self, c: &Condition, fields: &dyn Fields) -> Result<Expr, String> {
        let f = fields.field(&c.field)?;
        let name = c.field.to_string();
        let v = Value {
            kind: kind(&f.data_type),
            expr: f.expr,
            field: Some(name.clone()),
            data_type: Some(f.data_type),
        };
        let e = match (&c.op, &c.value) {
            (Op::Exists, ConditionValue::Absent) => v.expr.is_null(),
            (Op::Exists, _) => v.expr.is_not_null(),
            (Op::In | Op::NotIn, ConditionValue::List(items)) => {
                self.in_list(v, items, c.op == Op::NotIn, &name)?
            }
            (Op::In | Op::NotIn, ConditionValue::One(s)) => {
                self.in_list(v, std::slice::from_ref(s), c.op == Op::NotIn, &name)?
            }
            (Op::Contains, ConditionValue::One(Scalar::String(s))) => {
                if v.kind != Kind::Str {
                    return Err(format!(
                        "`{name}` is a {}; `contains` needs a string field",
                        v.data_type.as_ref().map(type_name).unwrap_or_default()
                    ));
                }
                string_fn::contains(v.expr, lit(s.clone()))
            }
            (op, ConditionValue::One(s)) => {
                let (e, k) = scalar(s);
                let r = Value {
                    expr: e,
                    kind: k,
                    field: None,
                    data_type: None,
                };
                let (l, r) = self.unify(v, r)?;
                compare(*op, l, r)
            }
            (op, value) => return Err(format!("operator `{op}` cannot take {value:?}")),
        };
        Ok(coalesce_false(e))
    }

    /// All conditions of a goal for one event, combined with `all` or `any`.
    pub fn conditions(
        &mut self,
        cs: &[Condition],
        m: Match,
        fields: &dyn Fields,
    ) -> Result<Expr, Vec<String>> {
        let mut errors = Vec::new();
        let mut out: Option<Expr> = None;
        for (i, c) in cs.iter().enumerate() {
            match self.condition(c, fields) {
                Ok(e) => {
                    out = Some(match (out, m) {
                        (None, _) => e,
                        (Some(a), Match::All) => a.and(e),
                        (Some(a), Match::Any) => a.or(e),
                    })
                }
                Err(m) => errors.push(format!("goal.conditions[{i}] (field `{}`): {m}", c.field)),
            }
        }
        match out {
            Some(e) if errors.is_empty() => Ok(e),
            _ => Err(errors),
        }
    }
}

fn literal(expr: Expr, kind: Kind) -> Value {
    Value {
        expr,
        kind,
        field: None,
        data_type: None,
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Bool => "boolean",
        Kind::Str => "string",
        Kind::Num => "number",
        Kind::Other => "value",
    }
}

fn scalar(s: &Scalar) -> (Expr, Kind) {
    match s {
        Scalar::String(v) => (lit(v.clone()), Kind::Str),
        Scalar::Int(v) => (lit(*v as f64), Kind::Num),
        Scalar::Float(v) => (lit(*v), Kind::Num),
        Scalar::Bool(v) => (lit(*v), Kind::Bool),
    }
}

fn compare(op: Op, l: Value, r: Value) -> Expr {
    // Numbers compare as f64 whatever their Arrow width, so `gt 0` works on Int32 and Float32.
    let (a, b) = if l.kind == Kind::Num && r.kind == Kind::Num {
        (num(l.expr), num(r.expr))
    } else {
        (l.expr, r.expr)
    };
    match op {
        Op::Eq => a.eq(b),
        Op::Ne => a.not_eq(b),
        Op::Gt => a.gt(b),
        Op::Ge => a.gt_eq(b),
        Op::Lt => a.lt(b),
        Op::Le => a.lt_eq(b),
        // Not reachable: callers route these elsewhere; a false predicate is the safe reading.
        Op::In | Op::NotIn | Op::Contains | Op::Exists => lit(false),
    }
}

fn num(e: Expr) -> Expr {
    match e {
        Expr::Literal(ScalarValue::Float64(_), _) => e,
        e => datafusion::logical_expr::cast(e, DataType::Float64),
    }
}

/// `a op b op c …` as a balanced tree: DataFusion walks expressions by recursion, so a long
/// AND / OR list must not become a chain as deep as it is long.
fn balanced(mut items: Vec<Expr>, op: fn(Expr, Expr) -> Expr) -> Expr {
    while items.len() > 1 {
        let mut next = Vec::with_capacity(items.len().div_ceil(2));
        let mut it = items.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => op(a, b),
                None => a,
            });
        }
        items = next;
    }
    items
        .pop()
        .unwrap_or_else(|| datafusion::prelude::lit(true))
}

/// `coalesce(e, false)`: SQL's unknown is "does not match" here.
pub fn coalesce_false(e: Expr) -> Expr {
    datafusion::functions::core::expr_fn::coalesce(vec![e, lit(false)])
}
