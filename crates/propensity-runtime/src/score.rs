//! The `score` stage: align the scoring features to the model's, then the calibrated
//! probability, score, percentile, bucket and top reasons of every eligible profile.

use propensity_model::Matrix;
use propensity_model::pipeline::{self, Scored, Scorer};

use crate::context::RunContext;
use crate::load::Inputs;
use crate::registry::StoredModel;

/// The scored rows, and the feature values they were scored on.
pub(crate) struct Scoring {
    pub scored: Vec<Scored>,
    /// The scoring features in the model's column order, when they differ from the data's.
    aligned: Option<Vec<f32>>,
    width: usize,
}

impl Scoring {
    /// The feature values each row was scored on (the score table's feature columns).
    pub fn matrix<'a>(&'a self, inp: &'a Inputs) -> Matrix<'a> {
        match &self.aligned {
            Some(v) => Matrix::new(v, self.width),
            None => Matrix::new(&inp.dataset.scoring.values, inp.dataset.scoring.width),
        }
    }
}

/// Scores every profile of the scoring snapshot with `model`.
pub(crate) fn score(cx: &mut RunContext<'_>, inp: &Inputs, model: &StoredModel) -> Scoring {
    let snap = &inp.dataset.scoring;
    let stage = cx.stage("score", Some(snap.rows.len() as u64));
    let names = &inp.names;
    // Features the model uses, by their column in the data (none: the data lost it).
    let map: Vec<Option<usize>> = model
        .features
        .iter()
        .map(|f| names.iter().position(|n| n == f))
        .collect();
    let missing: Vec<&str> = model
        .features
        .iter()
        .zip(&map)
        .filter(|(_, m)| m.is_none())
        .map(|(f, _)| f.as_str())
        .collect();
    if !missing.is_empty() {
        cx.warn(format!(
            "the data no longer has {} feature(s) model {} uses (scored as missing): {}",
            missing.len(),
            model.version,
            missing.join(", ")
        ));
    }
    let identity = map.iter().enumerate().all(|(j, m)| *m == Some(j)) && map.len() == names.len();
    let aligned = (!identity).then(|| {
        let n = snap.rows.len();
        let mut v = Vec::with_capacity(n * map.len());
        for i in 0..n {
            let row = &snap.values[i * snap.width..(i + 1) * snap.width];
            v.extend(map.iter().map(|m| m.map_or(f32::NAN, |j| row[j])));
        }
        v
    });
    let mut scoring = Scoring {
        scored: Vec::new(),
        aligned,
        width: map.len(),
    };
    let scorer = Scorer::new(model.model.clone(), model.calibrator.clone());
    // Equal scores are ordered by a hash of the profile id (see `pipeline::percentiles`).
    let seed = cx.settings.seed;
    let keys: Vec<u64> = snap
        .rows
        .iter()
        .map(|&p| id_key(&inp.loaded.store.profile_ids[p as usize], seed))
        .collect();
    let progress = cx.progress;
    let s = &cx.settings;
    let scored = pipeline::score(
        &scorer,
        scoring.matrix(inp),
        &keys,
        s.top_factors,
        s.high,
        s.medium,
        &|done, _| progress.advance(done as u64),
    );
    cx.done(
        stage,
        &format!("{} profiles scored with {}", scored.len(), model.version),
    );
    scoring.scored = scored;
    scoring
}

/// A stable 64-bit key of a profile id (FNV-1a, mixed with the seed).
fn id_key(id: &str, seed: u64) -> u64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    propensity_model::mix(h ^ seed)
}
