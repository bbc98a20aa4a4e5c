//! The `load` and `features` stages: read the events and profiles, run the data checks, and
//! compute the point-in-time features of every training cutoff and of the scoring time, with
//! the profiles erased by `propensity forget` left out.

use propensity_engine::dataset::Dataset;
use propensity_engine::{Engine, EngineOptions, Loaded};

use crate::RunError;
use crate::context::RunContext;
use crate::suppression;

/// What training and scoring read: the loaded data and its features.
pub(crate) struct Inputs {
    pub loaded: Loaded,
    pub dataset: Dataset,
    /// Feature names, in column order.
    pub names: Vec<String>,
    /// Feature labels for people, in column order.
    pub labels: Vec<String>,
}

impl Inputs {
    /// The profile ids of the scoring rows, in row order.
    pub fn scoring_ids(&self) -> Vec<&str> {
        self.dataset
            .scoring
            .rows
            .iter()
            .map(|&p| self.loaded.store.profile_ids[p as usize].as_str())
            .collect()
    }
}

/// Loads the job's data as of the run's time; fails when the data checks fail.
pub(crate) fn load(cx: &mut RunContext<'_>) -> Result<Loaded, RunError> {
    let stage = cx.stage("load", None);
    let mut engine_opts = EngineOptions::from_job(cx.job, cx.job_dir)?;
    engine_opts.env = cx.opts.env.clone();
    engine_opts.plugin_dirs =
        propensity_engine::plugin::plugin_dirs(&cx.opts.env, Some(&cx.opts.state_dir));
    let loaded = cx.rt.block_on(async {
        let engine = Engine::new(engine_opts)?;
        engine.load(cx.job, cx.job_dir, cx.opts.as_of).await
    })?;
    let checks = &loaded.report;
    cx.done(
        stage,
        &format!(
            "{} events of {} profiles",
            checks.events.counts.events_kept, checks.events.counts.profiles
        ),
    );
    if !checks.passed {
        let lines: Vec<String> = checks
            .problems
            .iter()
            .map(|f| format!("{} (fix: {})", f.message, f.hint))
            .collect();
        return Err(RunError::user(format!(
            "the data checks failed:\n  - {}",
            lines.join("\n  - ")
        ))
        .hint("`propensity dry-run` prints the whole data-check report"));
    }
    let data_warnings: Vec<String> = checks
        .warnings
        .iter()
        .map(|f| format!("data: {}", f.message))
        .collect();
    for w in data_warnings {
        cx.warn(w);
    }
    Ok(loaded)
}

/// Computes the features of every cutoff and leaves erased profiles out.
pub(crate) fn features(cx: &mut RunContext<'_>, loaded: Loaded) -> Result<Inputs, RunError> {
    let stage = cx.stage("features", None);
    let mut dataset = loaded.dataset()?;
    let suppressed = suppression::load(&cx.opts.state_dir)?;
    let mut erased = 0usize;
    if !suppressed.is_empty() {
        let drop: Vec<bool> = loaded
            .store
            .profile_ids
            .iter()
            .map(|id| suppressed.contains(id))
            .collect();
        erased = drop.iter().filter(|d| **d).count();
        for snap in dataset
            .training
            .iter_mut()
            .chain(std::iter::once(&mut dataset.scoring))
        {
            snap.retain(|p| !drop[p as usize]);
        }
    }
    let catalogue = &loaded.features.catalogue.features;
    let names: Vec<String> = catalogue.iter().map(|f| f.name.clone()).collect();
    let labels: Vec<String> = catalogue.iter().map(|f| f.label.clone()).collect();
    cx.done(
        stage,
        &format!(
            "{} features, {} training cutoffs, {} profiles to score{}",
            names.len(),
            dataset.training.len(),
            dataset.scoring.rows.len(),
            if erased > 0 {
                format!(" ({erased} erased profiles left out)")
            } else {
                String::new()
            }
        ),
    );
    Ok(Inputs {
        loaded,
        dataset,
        names,
        labels,
    })
}
