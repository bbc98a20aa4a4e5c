//! Sample data: realistic e-commerce experience events and profiles, driven by a hidden
//! propensity per profile, so that model quality can be measured against the truth.
//!
//! Each profile has a latent propensity that sets how often it shops and how likely a
//! session ends in a purchase; the propensity drifts over time, and some profiles churn
//! (their activity nearly stops, after a rise in support tickets). Events follow the nested
//! shape of Adobe XDM exports: `identityMap.ECID`, `timestamp`, `eventType`, `channel`,
//! `commerce.order.priceTotal`. A share of the profiles subscribes (monthly or annual):
//! each renewal is an event carrying the new expiry in `subscription.expiresAt`, and a
//! subscription lapses when a churned profile stops renewing. Opted-in profiles sign up to the
//! newsletter once (`newsletter.signup`). The output is deterministic for a seed and an end
//! time.
//!
//! ```text
//! <out>/events/part-00000.parquet …   (or .ndjson) row groups of `row_group_size` events
//! <out>/profiles/profiles.parquet     profile_id, country, loyalty_tier, signup_channel, email_opt_in,
//!                                     signup_date, plan, customer_status
//! <out>/truth/truth.parquet           profile_id, latent, purchase_propensity_30d, churn_date
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, StringArray, StructArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::events::MICROS_PER_DAY;

pub mod purchases;

/// What kind of history is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// Experience events of a web shop (pages, carts, orders, emails, subscriptions) with
    /// profiles: the demo data.
    #[default]
    Experience,
    /// Orders only, of one acquisition cohort that ages (see [`purchases`]).
    Purchases,
}

/// Output format of the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    Parquet,
    Ndjson,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub out: PathBuf,
    pub profiles: usize,
    /// Days of history before `end`.
    pub days: u32,
    /// Events are strictly before this time.
    pub end: DateTime<Utc>,
    pub seed: u64,
    /// Scale activity so that about this many events are written.
    pub target_events: Option<u64>,
    pub format: EventFormat,
    pub rows_per_file: usize,
    pub row_group_size: usize,
    pub shape: Shape,
}

impl GenerateOptions {
    pub fn new(out: impl Into<PathBuf>, profiles: usize, end: DateTime<Utc>) -> Self {
        Self {
            out: out.into(),
            profiles,
            days: 450,
            end,
            seed: 42,
            target_events: None,
            format: EventFormat::Parquet,
            rows_per_file: 1_000_000,
            row_group_size: 128 * 1024,
            shape: Shape::Experience,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateSummary {
    pub profiles: usize,
    pub events: u64,
    pub files: usize,
    pub first_event: String,
    pub end: String,
    pub out: PathBuf,
}

const TYPES: &[&str] = &[
    "web.webpagedetails.pageViews",
    "commerce.productViews",
    "commerce.productListAdds",
    "commerce.checkouts",
    "commerce.purchases",
    "directMarketing.emailOpened",
    "directMarketing.emailClicked",
    "support.ticketOpened",
    "test.ping",
    "subscription.renewed",
    "subscription.autoRenewed",
    "newsletter.signup",
];
const PAGE: u8 = 0;
const PRODUCT: u8 = 1;
const CART: u8 = 2;
const CHECKOUT: u8 = 3;
const PURCHASE: u8 = 4;
const OPEN: u8 = 5;
const CLICK: u8 = 6;
const TICKET: u8 = 7;
const PING: u8 = 8;
const RENEWED: u8 = 9;
const AUTO_RENEWED: u8 = 10;
const NEWSLETTER: u8 = 11;
const CHANNELS: &[&str] = &["web", "mobile", "email"];

const COUNTRIES: &[(&str, f64)] = &[
    ("US", 0.34),
    ("DE", 0.15),
    ("GB", 0.12),
    ("FR", 0.10),
    ("NL", 0.06),
    ("ES", 0.06),
    ("IT", 0.06),
    ("CA", 0.06),
    ("AT", 0.03),
    ("CH", 0.02),
];
const SIGNUP: &[(&str, f64, f64)] = &[
    ("organic", 0.35, 0.1),
    ("paid_search", 0.25, 0.0),
    ("social", 0.2, -0.3),
    ("email", 0.1, 0.2),
    ("referral", 0.1, 0.35),
];
const TIERS: &[&str] = &["none", "bronze", "silver", "gold"];

#[derive(Debug, Clone)]
struct Event {
    ts: i64,
    kind: u8,
    channel: u8,
    price: Option<f64>,
    /// `subscription.expiresAt` of a renewal.
    expires: Option<i64>,
}

#[derive(Debug, Clone)]
struct Profile {
    id: String,
    country: &'static str,
    tier: &'static str,
    signup_channel: &'static str,
    opt_in: bool,
    signup_day: i32,
    latent: f64,
    p30: f64,
    churn_day: Option<i32>,
    /// `none`, `monthly` or `annual` (`none` again after a lapse).
    plan: &'static str,
    /// `cancelled` when the profile churned more than 90 days before the end, else `active`.
    status: &'static str,
    events: Vec<Event>,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; `1 - u` keeps the logarithm finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], weight: impl Fn(&T) -> f64) -> &'a T {
    let total: f64 = items.iter().map(&weight).sum();
    let mut x = rng.random::<f64>() * total;
    for it in items {
        x -= weight(it);
        if x <= 0.0 {
            return it;
        }
    }
    &items[items.len() - 1]
}

fn profile_rng(seed: u64, i: usize) -> ChaCha8Rng {
    let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

/// Simulates one profile. `scale` multiplies the activity rate.
fn simulate(seed: u64, i: usize, days: u32, start: i64, scale: f64) -> Profile {
    let mut rng = profile_rng(seed, i);
    let latent = normal(&mut rng);
    let id = format!("{:016x}", rng.random::<u64>());
    let country = pick(&mut rng, COUNTRIES, |c| c.1).0;
    let (signup_channel, _, ch_effect) = *pick(&mut rng, SIGNUP, |s| s.1);
    let tier_score = latent + 0.8 * normal(&mut rng);
    let tier_idx = if tier_score > 1.3 {
        3
    } else if tier_score > 0.6 {
        2
    } else if tier_score > -0.1 {
        1
    } else {
        0
    };
    let tier = TIERS[tier_idx];
    let opt_in = rng.random::<f64>() < (0.55 + 0.1 * latent).clamp(0.1, 0.95);
    let days_i = days as i32;
    let signup_day = if rng.random::<f64>() < 0.35 {
        -rng.random_range(1..720)
    } else {
        rng.random_range(0..days_i.max(1))
    };
    // Sessions per day while active, and the drift of the propensity per year.
    let rate = scale * (-2.4 + 0.45 * latent + 0.6 * normal(&mut rng)).exp();
    let slope = 0.9 * normal(&mut rng);
    let base = -2.0 + 0.9 * latent + 0.25 * tier_idx as f64 + ch_effect;
    let churn_day = (rng.random::<f64>() < 0.45)
        .then(|| signup_day.max(0) + rng.random_range(0..(days_i + 240)));
    let q_at = |day: f64| sigmoid(base + slope * (day - f64::from(days_i) / 2.0) / 365.0);
    let rate_at = |day: f64| match churn_day {
        Some(c) if day >= f64::from(c) => rate * 0.03,
        _ => rate,
    };
    let synthetic = i % 400 == 7;
    let mut events = Vec::new();
    let day_us = MICROS_PER_DAY as f64;
    let begin = f64::from(signup_day.max(0));
    if synthetic {
        // Monitoring traffic: a ping a day from a synthetic profile.
        for d in signup_day.max(0)..days_i {
            let ts = start + i64::from(d) * MICROS_PER_DAY + rng.random_range(0..MICROS_PER_DAY);
            events.push(Event {
                ts,
                kind: PING,
                channel: 0,
                price: None,
                expires: None,
            });
        }
    } else {
        // Sessions: a Poisson process thinned by the current rate.
        let mut day = begin;
        let end = f64::from(days_i);
        while rate > 0.0 && day < end {
            day += -(1.0 - rng.random::<f64>()).ln() / rate;
            if day >= end {
                break;
            }
            if rng.random::<f64>() > rate_at(day) / rate {
                continue;
            }
            let q = q_at(day);
            let mobile = rng.random::<f64>() < 0.4;
            let channel = u8::from(mobile);
            let mut ts = start + (day * day_us) as i64;
            let mut emit =
                |events: &mut Vec<Event>, kind: u8, price: Option<f64>, rng: &mut ChaCha8Rng| {
                    events.push(Event {
                        ts,
                        kind,
                        channel,
                        price,
                        expires: None,
                    });
                    ts += rng.random_range(5_000_000..240_000_000);
                };
            let pages = 1 + (rng.random::<f64>() * 4.0) as u32;
            for _ in 0..pages {
                emit(&mut events, PAGE, None, &mut rng);
            }
            if rng.random::<f64>() < 0.6 {
                for _ in 0..1 + (rng.random::<f64>() * 3.0) as u32 {
                    emit(&mut events, PRODUCT, None, &mut rng);
                }
                if rng.random::<f64>() < 0.12 + 0.5 * q {
                    emit(&mut events, CART, None, &mut rng);
                    if rng.random::<f64>() < 0.5 + 0.3 * q {
                        emit(&mut events, CHECKOUT, None, &mut rng);
                        if rng.random::<f64>() < 0.35 + 0.6 * q {
                            let price = if rng.random::<f64>() < 0.03 {
                                0.0
                            } else {
                                ((3.7 + 0.2 * tier_idx as f64 + 0.6 * normal(&mut rng)).exp()
                                    * 100.0)
                                    .round()
                                    / 100.0
                            };
                            emit(&mut events, PURCHASE, Some(price), &mut rng);
                        }
                    }
                }
            }
            let near_churn =
                churn_day.is_some_and(|c| day < f64::from(c) && f64::from(c) - day < 30.0);
            if rng.random::<f64>() < if near_churn { 0.12 } else { 0.01 } {
                emit(&mut events, TICKET, None, &mut rng);
            }
        }
        // Weekly email campaigns to opted-in profiles.
        if opt_in {
            let mut d = begin.ceil() as i32;
            d += (7 - d.rem_euclid(7)) % 7 + 2;
            while d < days_i {
                let df = f64::from(d);
                let churned = churn_day.is_some_and(|c| d >= c);
                let q = q_at(df);
                let p_open = if churned { 0.04 } else { 0.12 + 0.35 * q };
                if rng.random::<f64>() < p_open {
                    let ts = start
                        + (df * day_us) as i64
                        + rng.random_range(8 * 3_600_000_000i64..20 * 3_600_000_000);
                    events.push(Event {
                        ts,
                        kind: OPEN,
                        channel: 2,
                        price: None,
                        expires: None,
                    });
                    if rng.random::<f64>() < 0.3 {
                        events.push(Event {
                            ts: ts + rng.random_range(10_000_000..600_000_000),
                            kind: CLICK,
                            channel: 2,
                            price: None,
                            expires: None,
                        });
                    }
                }
                d += 7;
            }
        }
    }
    let plan = if synthetic {
        "none"
    } else {
        subscribe_and_sign_up(
            seed,
            i,
            latent,
            signup_day,
            churn_day,
            opt_in,
            days_i,
            start,
            &mut events,
        )
    };
    let status = match churn_day {
        Some(c) if c < days_i - 90 => "cancelled",
        _ => "active",
    };
    events.sort_by_key(|e| e.ts);
    // The truth: the chance of at least one purchase in the 30 days after `end`.
    let end_day = f64::from(days_i);
    let purchases_per_session = 0.6
        * (0.12 + 0.5 * q_at(end_day))
        * (0.5 + 0.3 * q_at(end_day))
        * (0.35 + 0.6 * q_at(end_day));
    let p30 = 1.0 - (-30.0 * rate_at(end_day) * purchases_per_session).exp();
    Profile {
        id,
        country,
        tier,
        signup_channel,
        opt_in,
        signup_day,
        latent,
        p30,
        churn_day,
        plan,
        status,
        events,
    }
}

/// Subscriptions and newsletter sign-ups, drawn from a random stream of their own so that
/// the other events of a profile do not depend on them. Returns the plan at the end.
#[allow(clippy::too_many_arguments)]
fn subscribe_and_sign_up(
    seed: u64,
    i: usize,
    latent: f64,
    signup_day: i32,
    churn_day: Option<i32>,
    opt_in: bool,
    days: i32,
    start: i64,
    events: &mut Vec<Event>,
) -> &'static str {
    let mut rng = profile_rng(seed ^ 0x5ab5_c41b_e000_0001, i);
    let end = f64::from(days);
    let at = |day: f64, rng: &mut ChaCha8Rng| {
        start + (day * MICROS_PER_DAY as f64) as i64 + rng.random_range(0..3_600_000_000i64)
    };
    if opt_in {
        // The newsletter sign-up, a few days after the first visit.
        let day = f64::from(signup_day.max(0)) - 12.0 * (1.0 - rng.random::<f64>()).ln();
        if day < end {
            let ts = at(day, &mut rng);
            events.push(Event {
                ts,
                kind: NEWSLETTER,
                channel: 0,
                price: None,
                expires: None,
            });
        }
    }
    if rng.random::<f64>() >= sigmoid(-0.9 + 0.6 * latent) {
        return "none";
    }
    let annual = rng.random::<f64>() < 0.3;
    let period = if annual { 365.0 } else { 30.0 };
    let auto = rng.random::<f64>() < 0.7;
    // The start of the current term: at the first visit, or earlier for older customers.
    let mut day = if signup_day >= 0 {
        f64::from(signup_day) + rng.random_range(0.0..20.0)
    } else {
        -rng.random_range(0.0..period)
    };
    while day < end {
        // Churned profiles stop renewing; others lapse now and then.
        if churn_day.is_some_and(|c| day >= f64::from(c)) || rng.random::<f64>() < 0.03 {
            return "none";
        }
        if day >= 0.0 {
            let ts = at(day, &mut rng);
            let expires = ts + (period * MICROS_PER_DAY as f64) as i64;
            let kind = if auto { AUTO_RENEWED } else { RENEWED };
            events.push(Event {
                ts,
                kind,
                channel: 0,
                price: None,
                expires: Some(expires),
            });
        }
        // Renewed a few days before the term ends.
        day += period - rng.random_range(0.0..3.0);
    }
    if annual { "annual" } else { "monthly" }
}

/// Writes sample data under `opts.out` (replacing the `events`, `profiles` and `truth`
/// folders there). Each folder is written next to its final place, then moved in.
pub fn generate(opts: &GenerateOptions) -> Result<GenerateSummary, String> {
    if opts.shape == Shape::Purchases {
        return purchases::generate(opts);
    }
    let end = opts.end.timestamp_micros();
    let start = end - i64::from(opts.days) * MICROS_PER_DAY;
    let scale = match opts.target_events {
        Some(target) if opts.profiles > 0 => {
            // A deterministic pilot on the first profiles measures events per profile. Email
            // events do not scale with the activity rate, so the scale is corrected a few
            // times rather than set once.
            let pilot = opts.profiles.min(20_000);
            let want = target as f64 / opts.profiles as f64;
            let mut scale = 1.0f64;
            for _ in 0..4 {
                let n: usize = (0..pilot)
                    .map(|i| simulate(opts.seed, i, opts.days, start, scale).events.len())
                    .sum();
                let per = n.max(1) as f64 / pilot as f64;
                scale = (scale * want / per).clamp(1e-3, 1e3);
            }
            scale
        }
        _ => 1.0,
    };
    fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let events_dir = opts.out.join("events");
    let tmp_events = opts.out.join(".events.tmp");
    let _ = fs::remove_dir_all(&tmp_events);
    fs::create_dir_all(&tmp_events).map_err(|e| format!("{}: {e}", tmp_events.display()))?;

    let schema = event_schema();
    let mut writer = EventWriter::new(&tmp_events, schema, opts)?;
    let mut profiles: Vec<Profile> = Vec::with_capacity(opts.profiles);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = 4096;
    let mut first = i64::MAX;
    let mut total = 0u64;
    for base in (0..opts.profiles).step_by(chunk * threads) {
        let batch: Vec<Vec<Profile>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let lo = (base + t * chunk).min(opts.profiles);
                    let hi = (lo + chunk).min(opts.profiles);
                    s.spawn(move || {
                        (lo..hi)
                            .map(|i| simulate(opts.seed, i, opts.days, start, scale))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for mut p in batch.into_iter().flatten() {
            for e in &p.events {
                first = first.min(e.ts);
            }
            total += p.events.len() as u64;
            writer.push(&p.id, &p.events)?;
            p.events = Vec::new();
            profiles.push(p);
        }
    }
    let files = writer.finish()?;
    replace_dir(&tmp_events, &events_dir)?;
    write_profiles(&opts.out, &profiles, start)?;
    Ok(GenerateSummary {
        profiles: profiles.len(),
        events: total,
        files,
        first_event: crate::rfc3339(if first == i64::MAX { start } else { first }),
        end: crate::rfc3339(end),
        out: opts.out.clone(),
    })
}

fn replace_dir(tmp: &Path, dst: &Path) -> Result<(), String> {
    if dst.exists() {
        fs::remove_dir_all(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    }
    fs::rename(tmp, dst).map_err(|e| format!("{}: {e}", dst.display()))
}

pub fn event_schema() -> SchemaRef {
    let order = Fields::from(vec![Field::new("priceTotal", DataType::Float64, true)]);
    let commerce = Fields::from(vec![Field::new("order", DataType::Struct(order), false)]);
    let identity = Fields::from(vec![Field::new("ECID", DataType::Utf8, false)]);
    Arc::new(Schema::new(vec![
        Field::new("identityMap", DataType::Struct(identity), false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("eventType", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("commerce", DataType::Struct(commerce), false),
        Field::new(
            "subscription",
            DataType::Struct(subscription_fields()),
            false,
        ),
    ]))
}

fn subscription_fields() -> Fields {
    Fields::from(vec![Field::new(
        "expiresAt",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    )])
}

struct EventWriter<'a> {
    dir: &'a Path,
    schema: SchemaRef,
    opts: &'a GenerateOptions,
    ids: Vec<String>,
    ts: Vec<i64>,
    kinds: Vec<&'static str>,
    channels: Vec<&'static str>,
    prices: Vec<Option<f64>>,
    expires: Vec<Option<i64>>,
    file_rows: usize,
    files: usize,
    parquet: Option<ArrowWriter<fs::File>>,
    json: Option<arrow::json::LineDelimitedWriter<std::io::BufWriter<fs::File>>>,
}

impl<'a> EventWriter<'a> {
    fn new(dir: &'a Path, schema: SchemaRef, opts: &'a GenerateOptions) -> Result<Self, String> {
        Ok(Self {
            dir,
            schema,
            opts,
            ids: Vec::new(),
            ts: Vec::new(),
            kinds: Vec::new(),
            channels: Vec::new(),
            prices: Vec::new(),
            expires: Vec::new(),
            file_rows: 0,
            files: 0,
            parquet: None,
            json: None,
        })
    }

    fn push(&mut self, id: &str, events: &[Event]) -> Result<(), String> {
        for e in events {
            self.ids.push(id.to_owned());
            self.ts.push(e.ts);
            self.kinds.push(TYPES[e.kind as usize]);
            self.channels.push(CHANNELS[e.channel as usize]);
            self.prices.push(e.price);
            self.expires.push(e.expires);
            if self.ids.len()
                >= self
                    .opts
                    .row_group_size
                    .min(self.opts.rows_per_file - self.file_rows)
            {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn batch(&mut self) -> Result<RecordBatch, String> {
        let n = self.ids.len();
        let identity = StructArray::from(vec![(
            Arc::new(Field::new("ECID", DataType::Utf8, false)),
            Arc::new(StringArray::from(std::mem::take(&mut self.ids))) as ArrayRef,
        )]);
        let price = StructArray::from(vec![(
            Arc::new(Field::new("priceTotal", DataType::Float64, true)),
            Arc::new(Float64Array::from(std::mem::take(&mut self.prices))) as ArrayRef,
        )]);
        let order_fields = Fields::from(vec![Field::new("priceTotal", DataType::Float64, true)]);
        let commerce = StructArray::from(vec![(
            Arc::new(Field::new("order", DataType::Struct(order_fields), false)),
            Arc::new(price) as ArrayRef,
        )]);
        let subscription = StructArray::new(
            subscription_fields(),
            vec![Arc::new(
                TimestampMicrosecondArray::from(std::mem::take(&mut self.expires))
                    .with_timezone("UTC"),
            ) as ArrayRef],
            None,
        );
        let cols: Vec<ArrayRef> = vec![
            Arc::new(identity),
            Arc::new(
                TimestampMicrosecondArray::from(std::mem::take(&mut self.ts)).with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(std::mem::take(&mut self.kinds))),
            Arc::new(StringArray::from(std::mem::take(&mut self.channels))),
            Arc::new(commerce),
            Arc::new(subscription),
        ];
        debug_assert!(cols.iter().all(|c| c.len() == n));
        RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| e.to_string())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let batch = self.batch()?;
        if self.parquet.is_none() && self.json.is_none() {
            let ext = match self.opts.format {
                EventFormat::Parquet => "parquet",
                EventFormat::Ndjson => "ndjson",
            };
            let path = self.dir.join(format!("part-{:05}.{ext}", self.files));
            let file = fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            match self.opts.format {
                EventFormat::Parquet => {
                    let props = WriterProperties::builder()
                        .set_compression(Compression::SNAPPY)
                        .set_max_row_group_row_count(Some(self.opts.row_group_size))
                        .build();
                    self.parquet = Some(
                        ArrowWriter::try_new(file, self.schema.clone(), Some(props))
                            .map_err(|e| e.to_string())?,
                    );
                }
                EventFormat::Ndjson => {
                    self.json = Some(arrow::json::LineDelimitedWriter::new(
                        std::io::BufWriter::new(file),
                    ));
                }
            }
            self.files += 1;
        }
        if let Some(w) = &mut self.parquet {
            w.write(&batch).map_err(|e| e.to_string())?;
        }
        if let Some(w) = &mut self.json {
            w.write(&batch).map_err(|e| e.to_string())?;
        }
        self.file_rows += batch.num_rows();
        if self.file_rows >= self.opts.rows_per_file {
            self.close_file()?;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), String> {
        if let Some(w) = self.parquet.take() {
            w.close().map_err(|e| e.to_string())?;
        }
        if let Some(mut w) = self.json.take() {
            w.finish().map_err(|e| e.to_string())?;
        }
        self.file_rows = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<usize, String> {
        self.flush()?;
        self.close_file()?;
        Ok(self.files)
    }
}

fn write_profiles(out: &Path, profiles: &[Profile], start: i64) -> Result<(), String> {
    let day0 = (start.div_euclid(MICROS_PER_DAY)) as i32;
    let schema = Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("loyalty_tier", DataType::Utf8, false),
        Field::new("signup_channel", DataType::Utf8, false),
        Field::new("email_opt_in", DataType::Boolean, false),
        Field::new("signup_date", DataType::Date32, false),
        Field::new("plan", DataType::Utf8, false),
        Field::new("customer_status", DataType::Utf8, false),
    ]));
    let ids = || StringArray::from_iter_values(profiles.iter().map(|p| p.id.as_str()));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(ids()),
            Arc::new(StringArray::from_iter_values(
                profiles.iter().map(|p| p.country),
            )),
            Arc::new(StringArray::from_iter_values(
                profiles.iter().map(|p| p.tier),
            )),
            Arc::new(StringArray::from_iter_values(
                profiles.iter().map(|p| p.signup_channel),
            )),
            Arc::new(BooleanArray::from(
                profiles.iter().map(|p| p.opt_in).collect::<Vec<_>>(),
            )),
            Arc::new(Date32Array::from(
                profiles
                    .iter()
                    .map(|p| day0 + p.signup_day)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from_iter_values(
                profiles.iter().map(|p| p.plan),
            )),
            Arc::new(StringArray::from_iter_values(
                profiles.iter().map(|p| p.status),
            )),
        ],
    )
    .map_err(|e| e.to_string())?;
    write_one(out, "profiles", &batch)?;
    let truth_schema = Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("latent", DataType::Float64, false),
        Field::new("purchase_propensity_30d", DataType::Float64, false),
        Field::new("churn_date", DataType::Date32, true),
    ]));
    let truth = RecordBatch::try_new(
        truth_schema,
        vec![
            Arc::new(ids()),
            Arc::new(Float64Array::from(
                profiles.iter().map(|p| p.latent).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                profiles.iter().map(|p| p.p30).collect::<Vec<_>>(),
            )),
            Arc::new(Date32Array::from(
                profiles
                    .iter()
                    .map(|p| p.churn_day.map(|d| day0 + d))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .map_err(|e| e.to_string())?;
    write_one(out, "truth", &truth)
}

fn write_one(out: &Path, name: &str, batch: &RecordBatch) -> Result<(), String> {
    let tmp = out.join(format!(".{name}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let path = tmp.join(format!("{name}.parquet"));
    let file = fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w =
        ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    replace_dir(&tmp, &out.join(name))
}
