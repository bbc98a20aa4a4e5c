//! Building [`Batch`]es by hand, for the unit tests of a goal (the host builds them from the
//! job's events in a run).
//!
//! ```
//! use propensity_plugin::testing::BatchBuilder;
//! use propensity_plugin::Window;
//!
//! let day = 86_400_000_000i64;
//! let batch = BatchBuilder::new(Window { start: 0, end: 30 * day })
//!     .profile("a")
//!     .event(day, "commerce.purchases")
//!     .number("commerce.order.priceTotal", 25.0)
//!     .profile("b") // no events in the window
//!     .build();
//! assert_eq!(batch.len(), 2);
//! assert_eq!(batch.profile(0).number("commerce.order.priceTotal", 0), Some(25.0));
//! assert!(batch.profile(1).is_empty());
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, StringArray, StructArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, TimeUnit};

use crate::{Batch, Goal, Labels, Window, columns};

/// The ids `goal` labels `true` in `batch`, in order, after checking that it labels every
/// profile once (what the host checks). Panics on an error: a test helper.
pub fn positives<G: Goal>(goal: &G, batch: &Batch) -> Vec<String> {
    let labels = match goal.label_batch(batch) {
        Ok(l) => l,
        Err(e) => panic!("labelling failed: {e}"),
    };
    let pairs = match Labels::from_struct(&labels.into_struct()) {
        Ok(p) => p,
        Err(e) => panic!("unreadable labels: {e}"),
    };
    let ids: Vec<&str> = batch.profiles().map(|p| p.id()).collect();
    let got: Vec<&str> = pairs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got, ids, "one label per profile, in order");
    pairs
        .into_iter()
        .filter(|(_, l)| *l)
        .map(|(id, _)| id)
        .collect()
}

#[derive(Debug, Clone)]
enum Values {
    Number(Vec<Option<f64>>),
    Time(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

/// Profiles and their events, in order; fields are set on the last event added.
#[derive(Debug)]
pub struct BatchBuilder {
    window: Window,
    profiles: Vec<String>,
    ids: Vec<String>,
    ts: Vec<i64>,
    types: Vec<String>,
    fields: BTreeMap<String, Values>,
}

impl BatchBuilder {
    /// An empty batch for `window`.
    pub fn new(window: Window) -> Self {
        Self {
            window,
            profiles: Vec::new(),
            ids: Vec::new(),
            ts: Vec::new(),
            types: Vec::new(),
            fields: BTreeMap::new(),
        }
    }

    /// Starts the next profile.
    pub fn profile(mut self, id: &str) -> Self {
        self.profiles.push(id.into());
        self
    }

    /// An event of the current profile (add them in time order).
    pub fn event(mut self, ts: i64, event_type: &str) -> Self {
        let id = self.profiles.last().cloned().unwrap_or_default();
        self.ids.push(id);
        self.ts.push(ts);
        self.types.push(event_type.into());
        let n = self.ids.len();
        for v in self.fields.values_mut() {
            match v {
                Values::Number(x) => x.resize(n, None),
                Values::Time(x) => x.resize(n, None),
                Values::Text(x) => x.resize(n, None),
            }
        }
        self
    }

    fn set(mut self, field: &str, empty: Values, put: impl FnOnce(&mut Values, usize)) -> Self {
        let n = self.ids.len();
        let v = self.fields.entry(field.into()).or_insert(empty);
        match v {
            Values::Number(x) => x.resize(n, None),
            Values::Time(x) => x.resize(n, None),
            Values::Text(x) => x.resize(n, None),
        }
        if n > 0 {
            put(v, n - 1);
        }
        self
    }

    /// A number field of the last event.
    pub fn number(self, field: &str, value: f64) -> Self {
        self.set(field, Values::Number(Vec::new()), |v, i| {
            if let Values::Number(x) = v {
                x[i] = Some(value);
            }
        })
    }

    /// A time field of the last event (microseconds, UTC).
    pub fn time(self, field: &str, value: i64) -> Self {
        self.set(field, Values::Time(Vec::new()), |v, i| {
            if let Values::Time(x) = v {
                x[i] = Some(value);
            }
        })
    }

    /// A text field of the last event.
    pub fn text(self, field: &str, value: &str) -> Self {
        self.set(field, Values::Text(Vec::new()), |v, i| {
            if let Values::Text(x) = v {
                x[i] = Some(value.to_owned());
            }
        })
    }

    /// The batch, as the host would send it. Panics if the events break the host's promises
    /// (a test bug).
    pub fn build(self) -> Batch {
        let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let base: [ArrayRef; 3] = [
            Arc::new(StringArray::from(self.ids)),
            Arc::new(TimestampMicrosecondArray::from(self.ts).with_timezone("UTC")),
            Arc::new(StringArray::from(self.types)),
        ];
        let mut cols: Vec<(Arc<Field>, ArrayRef)> = columns::base_fields()
            .into_iter()
            .map(Arc::new)
            .zip(base)
            .collect();
        for (name, v) in self.fields {
            let (ty, array): (DataType, ArrayRef) = match v {
                Values::Number(x) => (DataType::Float64, Arc::new(Float64Array::from(x))),
                Values::Time(x) => (
                    time.clone(),
                    Arc::new(TimestampMicrosecondArray::from(x).with_timezone("UTC")),
                ),
                Values::Text(x) => (DataType::Utf8, Arc::new(StringArray::from(x))),
            };
            cols.push((Arc::new(Field::new(name, ty, true)), array));
        }
        match Batch::new(
            StringArray::from(self.profiles),
            StructArray::from(cols),
            self.window,
        ) {
            Ok(b) => b,
            Err(e) => panic!("BatchBuilder: {e}"),
        }
    }
}
