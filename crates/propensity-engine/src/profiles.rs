//! The optional profiles table: attributes joined on the profile id, and the eligibility
//! `include` / `exclude` predicates evaluated over them.

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, TimestampMicrosecondType};
use datafusion::logical_expr::cast;
use datafusion::prelude::{DataFrame, Expr, lit};
use futures::StreamExt;
use propensity_core::{FieldPath, Job};
use serde::Serialize;

use crate::EngineError;
use crate::compile::Compiler;
use crate::events::EventStore;
use crate::source::{ResolvedField, is_numeric, is_string, resolve_field, type_name};

/// One attribute's values per profile of the event store.
#[derive(Debug, Clone)]
pub enum AttrValues {
    /// Numbers and booleans (0/1); NaN where missing.
    Numeric(Vec<f32>),
    /// Category index into `values`; `u32::MAX` where missing.
    Categorical {
        codes: Vec<u32>,
        values: Vec<String>,
    },
    /// Dates and timestamps, microseconds UTC; `i64::MIN` where missing. Features use the
    /// days between this and the cutoff.
    Time(Vec<i64>),
}

#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub values: AttrValues,
}

/// Attributes and eligibility flags, indexed like [`EventStore::profile_ids`].
#[derive(Debug, Clone, Default)]
pub struct ProfileTable {
    pub attributes: Vec<Attribute>,
    /// `eligibility.include` holds (true everywhere when the job has none).
    pub include: Vec<bool>,
    /// `eligibility.exclude` holds.
    pub exclude: Vec<bool>,
    pub counts: ProfileCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfileCounts {
    pub source: Option<String>,
    pub rows_read: u64,
    pub null_profile_id: u64,
    pub duplicate_profile_id: u64,
    /// Profiles with events that have a row in the table.
    pub matched: u64,
    /// Profiles with events but no row in the table (their attributes are missing).
    pub without_row: u64,
    pub attributes: Vec<String>,
    pub included: u64,
    pub excluded: u64,
}

enum Kind {
    Numeric,
    Bool,
    Categorical,
    Time,
}

/// Without a profiles table: everyone is included, nobody excluded, no attributes.
pub fn empty(job: &Job, store: &EventStore) -> Result<ProfileTable, EngineError> {
    for (key, p) in [
        ("include", &job.eligibility.include),
        ("exclude", &job.eligibility.exclude),
    ] {
        if let Some(p) = p {
            return Err(EngineError::user(format!(
                "eligibility.{key} `{}` uses profile attributes, but the job has no [source.profiles]",
                p.text
            ))
            .hint("add a [source.profiles] table, or remove the predicate"));
        }
    }
    let n = store.profiles();
    Ok(ProfileTable {
        attributes: Vec::new(),
        include: vec![true; n],
        exclude: vec![false; n],
        counts: ProfileCounts {
            matched: 0,
            without_row: n as u64,
            included: n as u64,
            ..Default::default()
        },
    })
}

/// Reads the profiles table once and lines it up with the event store's profiles.
pub async fn load(
    job: &Job,
    frame: DataFrame,
    display: &str,
    store: &EventStore,
) -> Result<ProfileTable, EngineError> {
    let Some(src) = &job.profiles else {
        return empty(job, store);
    };
    let schema = frame.schema().as_arrow().clone();
    let mut errors = Vec::new();
    let id = match resolve_field(&schema, &src.profile_id) {
        Ok(f) if is_string(&f.data_type) || f.data_type.is_integer() => Some(f),
        Ok(f) => {
            errors.push(format!(
                "source.profiles.profile_id = \"{}\": the column is a {}, not a string or integer",
                src.profile_id,
                type_name(&f.data_type)
            ));
            None
        }
        Err(m) => {
            errors.push(format!(
                "source.profiles.profile_id = \"{}\": {m}",
                src.profile_id
            ));
            None
        }
    };
    let names: Vec<String> = if src.attributes.is_empty() {
        let id_top = &src.profile_id.0[0];
        schema
            .fields()
            .iter()
            .filter(|f| f.name() != id_top && src.profile_id.to_string() != *f.name())
            .filter(|f| {
                !matches!(
                    f.data_type(),
                    DataType::Struct(_) | DataType::List(_) | DataType::LargeList(_)
                )
            })
            .map(|f| f.name().clone())
            .collect()
    } else {
        src.attributes.clone()
    };
    let mut attrs: Vec<(String, ResolvedField, Kind)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = FieldPath::parse(name).unwrap_or_else(|| FieldPath(vec![name.clone()]));
        match resolve_field(&schema, &path) {
            Ok(f) => {
                let kind = match &f.data_type {
                    DataType::Boolean => Kind::Bool,
                    t if is_numeric(t) => Kind::Numeric,
                    t if is_string(t) => Kind::Categorical,
                    DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => Kind::Time,
                    t => {
                        errors.push(format!(
                            "source.profiles.attributes[{i}] = \"{name}\": a {} column cannot be a feature; use numbers, booleans, strings or dates",
                            type_name(t)
                        ));
                        continue;
                    }
                };
                attrs.push((name.clone(), f, kind));
            }
            Err(m) => errors.push(format!("source.profiles.attributes[{i}] = \"{name}\": {m}")),
        }
    }
    let fields = |p: &FieldPath| resolve_field(&schema, p);
    let mut compiler = Compiler::default();
    let mut rule = |key: &str, p: &Option<propensity_core::Predicate>, default: bool| match p {
        Some(p) => match compiler.predicate(&p.expr, &fields) {
            Ok(e) => e,
            Err(m) => {
                errors.push(format!("eligibility.{key} `{}`: {m}", p.text));
                lit(default)
            }
        },
        None => lit(default),
    };
    let include = rule("include", &job.eligibility.include, true);
    let exclude = rule("exclude", &job.eligibility.exclude, false);
    if !errors.is_empty() {
        let mut msg = format!("the profiles in `{display}` do not fit the job:");
        for e in &errors {
            msg.push_str("\n  - ");
            msg.push_str(e);
        }
        return Err(
            EngineError::user(msg).hint("fix [source.profiles] or the eligibility predicates")
        );
    }
    let Some(id) = id else {
        return Err(EngineError::internal("profile id error was not reported"));
    };
    let mut exprs: Vec<Expr> = vec![cast(id.expr, DataType::Utf8), include, exclude];
    for (_, f, kind) in &attrs {
        exprs.push(match kind {
            Kind::Numeric | Kind::Bool => cast(f.expr.clone(), DataType::Float64),
            Kind::Categorical => cast(f.expr.clone(), DataType::Utf8),
            Kind::Time => cast(
                f.expr.clone(),
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            ),
        });
    }
    let exprs: Vec<Expr> = exprs
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.alias(format!("c{i}")))
        .collect();
    let frame = frame.select(exprs).map_err(|e| {
        EngineError::internal(format!("profiles projection: {}", crate::df_message(&e)))
    })?;
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| crate::read_error(e, display))?;

    let n = store.profiles();
    let index: HashMap<&str, usize> = store
        .profile_ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut seen = vec![false; n];
    let mut table = ProfileTable {
        attributes: attrs
            .iter()
            .map(|(name, _, kind)| Attribute {
                name: name.clone(),
                values: match kind {
                    Kind::Numeric | Kind::Bool => AttrValues::Numeric(vec![f32::NAN; n]),
                    Kind::Categorical => AttrValues::Categorical {
                        codes: vec![u32::MAX; n],
                        values: Vec::new(),
                    },
                    Kind::Time => AttrValues::Time(vec![i64::MIN; n]),
                },
            })
            .collect(),
        // Profiles without a row: an include rule cannot hold, an exclude rule does not hold.
        include: vec![job.eligibility.include.is_none(); n],
        exclude: vec![false; n],
        counts: ProfileCounts {
            source: Some(display.to_owned()),
            attributes: attrs.iter().map(|a| a.0.clone()).collect(),
            ..Default::default()
        },
    };
    let mut cat_index: Vec<HashMap<String, u32>> = vec![HashMap::new(); attrs.len()];
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| crate::read_error(e, display))?;
        table.counts.rows_read += batch.num_rows() as u64;
        let ids = batch.column(0).as_string::<i32>();
        let inc = batch.column(1).as_boolean();
        let exc = batch.column(2).as_boolean();
        for r in 0..batch.num_rows() {
            if ids.is_null(r) {
                table.counts.null_profile_id += 1;
                continue;
            }
            let Some(&p) = index.get(ids.value(r)) else {
                continue;
            };
            if seen[p] {
                table.counts.duplicate_profile_id += 1;
                continue;
            }
            seen[p] = true;
            table.include[p] = !inc.is_null(r) && inc.value(r);
            table.exclude[p] = !exc.is_null(r) && exc.value(r);
            for (j, attr) in table.attributes.iter_mut().enumerate() {
                let col = batch.column(3 + j);
                if col.is_null(r) {
                    continue;
                }
                match &mut attr.values {
                    AttrValues::Numeric(v) => {
                        v[p] = col.as_primitive::<Float64Type>().value(r) as f32
                    }
                    AttrValues::Time(v) => {
                        v[p] = col.as_primitive::<TimestampMicrosecondType>().value(r)
                    }
                    AttrValues::Categorical { codes, values } => {
                        let s = col.as_string::<i32>().value(r);
                        let code = match cat_index[j].get(s) {
                            Some(c) => *c,
                            None => {
                                let c = values.len() as u32;
                                cat_index[j].insert(s.to_owned(), c);
                                values.push(s.to_owned());
                                c
                            }
                        };
                        codes[p] = code;
                    }
                }
            }
        }
    }
    table.counts.matched = seen.iter().filter(|s| **s).count() as u64;
    table.counts.without_row = n as u64 - table.counts.matched;
    table.counts.included = table.include.iter().filter(|b| **b).count() as u64;
    table.counts.excluded = table.exclude.iter().filter(|b| **b).count() as u64;
    Ok(table)
}
