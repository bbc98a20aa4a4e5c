//! A purchase-only log of one acquisition cohort that ages: the shape of a retailer's order
//! export (CDNOW, Online Retail), where the experience-event generator's defaults failed.
//!
//! Every customer makes a first purchase in the first `ACQUISITION_DAYS` of the history, then
//! repeats at a personal rate until an unobserved dropout; nothing but orders is recorded.
//! The process is deliberately richer than the buy-till-you-die models that describe it best
//! on paper, as real logs are: rates are gamma-heterogeneous, a customer may drop out after any
//! purchase (BG) or at a random time (Pareto), a share of customers replenish on a regular
//! cycle rather than at random, engagement drifts, December sells more, and some lapsed
//! customers come back. Order dates are days (midnight UTC), and a customer sometimes places two
//! orders on one day with different values, as in CDNOW.
//!
//! ```text
//! <out>/events/part-00000.parquet …   profile_id, timestamp, event_type ("purchase"), quantity, value
//! <out>/truth/truth.parquet           profile_id, alive_at_end, purchase_probability_90d
//! ```

use std::fs;
use std::sync::Arc;

use arrow::array::TimestampMicrosecondArray;
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{GenerateOptions, GenerateSummary, normal, profile_rng, replace_dir, write_one};
use crate::events::MICROS_PER_DAY;

/// First purchases fall in the first this many days of the history.
const ACQUISITION_DAYS: f64 = 84.0;

/// One order.
#[derive(Debug, Clone, Copy)]
struct Order {
    day: i32,
    quantity: i64,
    value: f64,
}

#[derive(Debug, Clone)]
struct Customer {
    id: String,
    orders: Vec<Order>,
    alive_at_end: bool,
    /// The chance of at least one order in the 90 days after the end, from the process.
    p90: f64,
}

/// A Gamma(shape, 1) draw (Marsaglia–Tsang; shape < 1 by the boost `U^(1/shape)`).
fn gamma(rng: &mut ChaCha8Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = 1.0 - rng.random::<f64>();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = 1.0 - rng.random::<f64>();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

fn beta(rng: &mut ChaCha8Rng, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    x / (x + y)
}

fn exponential(rng: &mut ChaCha8Rng, rate: f64) -> f64 {
    -(1.0 - rng.random::<f64>()).ln() / rate
}

/// Seasonal multiplier of the purchase rate on day-of-year `doy`: December sells about a
/// fifth more. Mild on purpose: with a year and a half of history no model (nor any of the
/// baselines) can learn a strong season from the data, and this cohort is about ageing.
fn season(doy: f64) -> f64 {
    let dec = (-((doy - 350.0) / 18.0).powi(2)).exp();
    0.97 + 0.25 * dec
}

/// Simulates one customer over `days` days starting on day 0 (`start_doy` is day 0's day of
/// the year). Orders after `days` are simulated too, for 90 days, to give the truth.
fn simulate(seed: u64, i: usize, days: u32, start_doy: f64) -> Customer {
    let mut rng = profile_rng(seed ^ 0x7075_7263_6861_7365, i);
    let id = format!("C{:07}", i + 1);
    let horizon = f64::from(days) + 90.0;
    let first = rng.random::<f64>() * ACQUISITION_DAYS;
    // Repeat-purchase rate per day (gamma heterogeneity, mean about one order every 100 days),
    // spend level and its link to the rate, BG and Pareto dropout, engagement drift.
    let lambda = gamma(&mut rng, 0.5) / 60.0;
    let spend = (3.2 + 0.5 * normal(&mut rng) + 0.15 * (lambda * 60.0).ln_1p()).exp();
    let p_drop = beta(&mut rng, 1.0, 2.5);
    let mu = gamma(&mut rng, 0.7) / 900.0;
    let death = first + exponential(&mut rng, mu.max(1e-9));
    let drift = 0.5 * normal(&mut rng);
    // A quarter of the frequent buyers (a cycle of four months or less) replenish on that
    // cycle, with some jitter, rather than at random.
    let cycle = 1.0 / lambda.max(1e-6);
    let cyclic = cycle <= 120.0 && rng.random::<f64>() < 0.25;
    let cycle = cycle.max(14.0);
    // Lapsed customers come back now and then (a win-back campaign, a new need).
    let comeback = rng.random::<f64>() < 0.08;
    let mut orders = Vec::new();
    let mut day = first;
    let mut alive_until = death;
    let order = |day: f64, rng: &mut ChaCha8Rng, orders: &mut Vec<Order>| {
        let quantity = 1 + (gamma(rng, 1.2) * 1.3) as i64;
        let value = (spend * quantity as f64 * (0.25 * normal(rng)).exp() * 100.0).round() / 100.0;
        orders.push(Order {
            day: day as i32,
            quantity,
            value: value.max(0.99),
        });
        // A second order the same day (a forgotten item), with its own value.
        if rng.random::<f64>() < 0.04 {
            let v = (spend * (0.3 * normal(rng)).exp() * 100.0).round() / 100.0;
            orders.push(Order {
                day: day as i32,
                quantity: 1,
                value: v.max(0.99),
            });
        }
    };
    order(day, &mut rng, &mut orders);
    loop {
        let rate_at = |d: f64| {
            let years = (d - first) / 365.0;
            lambda * season((start_doy + d) % 365.0) * (drift * years).exp()
        };
        let next = if cyclic {
            day + cycle * (0.15 * normal(&mut rng)).exp()
        } else {
            // Thinning against the largest seasonal rate.
            let bound = lambda * 1.25 * (drift.abs() * 2.0).exp();
            let mut t = day;
            loop {
                t += exponential(&mut rng, bound.max(1e-9));
                if t > horizon || rng.random::<f64>() < rate_at(t) / bound {
                    break t;
                }
            }
        };
        if next > horizon {
            break;
        }
        if next > alive_until {
            if comeback && alive_until == death {
                // One return after a pause, then the customer drops out for good.
                let back = alive_until + 120.0 + exponential(&mut rng, 1.0 / 200.0);
                if back < horizon {
                    order(back, &mut rng, &mut orders);
                    day = back;
                    alive_until = back + exponential(&mut rng, 1.0 / 60.0);
                    continue;
                }
            }
            break;
        }
        order(next, &mut rng, &mut orders);
        day = next;
        if rng.random::<f64>() < p_drop {
            alive_until = alive_until.min(day);
        }
    }
    let end = f64::from(days);
    let alive_at_end = alive_until > end;
    let p90 = if alive_at_end {
        let mean: f64 = (0..9)
            .map(|k| {
                let d = end + 5.0 + 10.0 * f64::from(k);
                let years = (d - first) / 365.0;
                lambda * season((start_doy + d) % 365.0) * (drift * years).exp()
            })
            .sum::<f64>()
            * 10.0;
        let survive = ((alive_until - end).min(90.0) / 90.0).clamp(0.0, 1.0);
        survive * (1.0 - (-mean).exp())
    } else {
        0.0
    };
    Customer {
        id,
        orders,
        alive_at_end,
        p90,
    }
}

pub fn event_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

/// Writes the cohort's orders under `opts.out` (replacing `events/` and `truth/` there).
/// `opts.target_events` and `opts.format` are ignored: the cohort has the size its
/// customers give it, in Parquet.
pub fn generate(opts: &GenerateOptions) -> Result<GenerateSummary, String> {
    let end = opts.end.timestamp_micros();
    let start_day = end.div_euclid(MICROS_PER_DAY) - i64::from(opts.days);
    let start = start_day * MICROS_PER_DAY;
    let start_doy = chrono::DateTime::from_timestamp_micros(start).map_or(0.0, |d| {
        f64::from(chrono::Datelike::ordinal0(&d.date_naive()))
    });
    let customers: Vec<Customer> = (0..opts.profiles)
        .map(|i| simulate(opts.seed, i, opts.days, start_doy))
        .collect();
    fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let tmp = opts.out.join(".events.tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let schema = event_schema();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(opts.row_group_size))
        .build();
    let path = tmp.join("part-00000.parquet");
    let file = fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
    let (mut ids, mut ts, mut qty, mut val) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut total = 0u64;
    let mut first = i64::MAX;
    let mut flush = |ids: &mut Vec<String>,
                     ts: &mut Vec<i64>,
                     qty: &mut Vec<i64>,
                     val: &mut Vec<f64>|
     -> Result<(), String> {
        let n = ids.len();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(std::mem::take(ids))),
            Arc::new(TimestampMicrosecondArray::from(std::mem::take(ts)).with_timezone("UTC")),
            Arc::new(StringArray::from(vec!["purchase"; n])),
            Arc::new(Int64Array::from(std::mem::take(qty))),
            Arc::new(Float64Array::from(std::mem::take(val))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())?;
        w.write(&batch).map_err(|e| e.to_string())
    };
    for c in &customers {
        for o in c.orders.iter().filter(|o| o.day < opts.days as i32) {
            let t = start + i64::from(o.day) * MICROS_PER_DAY;
            first = first.min(t);
            ids.push(c.id.clone());
            ts.push(t);
            qty.push(o.quantity);
            val.push(o.value);
            total += 1;
            if ids.len() >= opts.row_group_size {
                flush(&mut ids, &mut ts, &mut qty, &mut val)?;
            }
        }
    }
    if !ids.is_empty() {
        flush(&mut ids, &mut ts, &mut qty, &mut val)?;
    }
    w.close().map_err(|e| e.to_string())?;
    replace_dir(&tmp, &opts.out.join("events"))?;
    let _ = fs::remove_dir_all(opts.out.join("profiles"));
    let truth = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("alive_at_end", DataType::Boolean, false),
            Field::new("purchase_probability_90d", DataType::Float64, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                customers.iter().map(|c| c.id.as_str()),
            )),
            Arc::new(BooleanArray::from(
                customers.iter().map(|c| c.alive_at_end).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                customers.iter().map(|c| c.p90).collect::<Vec<_>>(),
            )),
        ],
    )
    .map_err(|e| e.to_string())?;
    write_one(&opts.out, "truth", &truth)?;
    Ok(GenerateSummary {
        profiles: customers.len(),
        events: total,
        files: 1,
        first_event: crate::rfc3339(if first == i64::MAX { start } else { first }),
        end: crate::rfc3339(end),
        out: opts.out.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohort_ages_and_keeps_same_day_orders() {
        let c: Vec<Customer> = (0..3000).map(|i| simulate(7, i, 540, 0.0)).collect();
        // Everyone buys once in the acquisition period.
        assert!(
            c.iter()
                .all(|c| f64::from(c.orders[0].day) < ACQUISITION_DAYS)
        );
        let per_quarter = |q: i32| {
            c.iter()
                .filter(|c| c.orders.iter().any(|o| o.day / 90 == q && o.day >= 90))
                .count()
        };
        // The share of buyers per quarter falls as the cohort ages.
        assert!(
            per_quarter(1) > per_quarter(5),
            "{} {}",
            per_quarter(1),
            per_quarter(5)
        );
        assert!(per_quarter(5) > 0);
        let same_day = c
            .iter()
            .flat_map(|c| c.orders.windows(2))
            .filter(|w| w[0].day == w[1].day && w[0].value != w[1].value)
            .count();
        assert!(same_day > 20, "{same_day}");
        // Deterministic for a seed.
        let again = simulate(7, 11, 540, 0.0);
        assert_eq!(again.orders.len(), c[11].orders.len());
    }
}
