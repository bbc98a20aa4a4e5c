//! Goal plugins in a run: finding and checking the job's plugin, then labelling each training
//! cutoff through it.
//!
//! For each training cutoff `c`, the profiles eligible at `c` are sent in chunks, each with
//! its events in `[c - lookback, c + window)` (the plugin's declared lookback, usually none)
//! as Arrow columns — `profile_id`, `timestamp`, `event_type`, then the fields the plugin
//! asked for — grouped by profile in time order. The answer is checked by the loader (one
//! label per profile given, each once) before it is used.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, StructArray, TimestampMicrosecondArray, UInt32Array};
use arrow::datatypes::Field;
use propensity_core::PluginGoal;
use propensity_plugin::host::{self, Plugin, PluginError};
use propensity_plugin::{Validated, Window, columns};

use crate::EngineError;
use crate::dataset::{CutoffPlan, PluginLabels, eligible};
use crate::events::{EventStore, ExtraField};
use crate::profiles::ProfileTable;

/// Profiles per plugin call: bounds the memory of one call's arrays.
const CHUNK_PROFILES: usize = 20_000;

/// The plugin directories for a run: `PROPENSITY_PLUGIN_PATH` as `env` resolves it, then
/// `<state>/plugins`, then next to the executable (see [`host::search_path`]).
pub fn plugin_dirs(env: &crate::EnvLookup, state_dir: Option<&Path>) -> Vec<PathBuf> {
    host::search_path(env("PROPENSITY_PLUGIN_PATH").as_deref(), state_dir)
}

/// The job's plugin, loaded, with its parameters checked.
#[derive(Debug, Clone)]
pub struct GoalPlugin {
    pub plugin: Plugin,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub validated: Validated,
}

/// A plugin error as a user error, its message after `prefix` (the job key or the stage).
fn user(prefix: &str, e: PluginError) -> EngineError {
    let mut out = EngineError::user(format!("{prefix}: {}", e.message));
    if let Some(h) = e.hint {
        out = out.hint(h);
    }
    out
}

impl GoalPlugin {
    /// Finds the library (`job_dir` for relative paths, `dirs` for names), checks its pin and
    /// ABI version, loads it, checks it is the goal type asked for, and has it validate the
    /// job's `params`.
    pub fn resolve(
        goal: &PluginGoal,
        job_dir: &Path,
        dirs: &[PathBuf],
    ) -> Result<Self, EngineError> {
        let path = host::locate(&goal.plugin, job_dir, dirs).map_err(|e| user("goal.plugin", e))?;
        let plugin =
            Plugin::load(&path, goal.sha256.as_deref()).map_err(|e| user("goal.plugin", e))?;
        if !host::is_path(&goal.plugin) && plugin.metadata().name != goal.plugin {
            return Err(EngineError::user(format!(
                "goal.plugin: `{}` is the plugin `{}`, not `{}`",
                path.display(),
                plugin.metadata().name,
                goal.plugin
            ))
            .hint("rename the library after the goal type it exports, or give its path"));
        }
        let validated = plugin
            .validate(&goal.params)
            .map_err(|e| user("goal.params", e))?;
        // Each requested field becomes a column next to the three the host always sends.
        let mut seen = vec![columns::PROFILE_ID, columns::TIMESTAMP, columns::EVENT_TYPE];
        for f in &validated.fields {
            if seen.contains(&f.path.as_str()) {
                return Err(EngineError::user(format!(
                    "goal.plugin: plugin `{}` asks for the event field `{}` twice, or under the name of a column it always gets",
                    plugin.metadata().name,
                    f.path
                ))
                .hint("this is a bug in the plugin's `fields()`"));
            }
            seen.push(&f.path);
        }
        Ok(Self {
            plugin,
            params: goal.params.clone(),
            validated,
        })
    }

    /// The event fields to read for the plugin.
    pub fn fields(&self) -> Vec<ExtraField> {
        self.validated
            .fields
            .iter()
            .map(ExtraField::from_request)
            .collect()
    }

    /// History before each cutoff the plugin reads, microseconds.
    pub fn lookback(&self) -> i64 {
        self.validated.lookback_micros.max(0)
    }

    /// Labels of every training cutoff of `plan`.
    pub fn label(
        &self,
        store: &EventStore,
        extras: &[ArrayRef],
        profiles: &ProfileTable,
        plan: &CutoffPlan,
    ) -> Result<PluginLabels, EngineError> {
        let fields = self.fields();
        let mut schema = columns::base_fields().to_vec();
        schema.extend(
            fields
                .iter()
                .map(|f| Field::new(&f.path, f.data_type.clone(), true)),
        );
        let schema: Vec<Arc<Field>> = schema.into_iter().map(Arc::new).collect();
        let mut out = PluginLabels {
            window: plan.window,
            by_cutoff: Default::default(),
        };
        for &c in &plan.training {
            let window = Window {
                start: c,
                end: c.saturating_add(plan.window),
            };
            let from = c.saturating_sub(self.lookback());
            let chosen: Vec<usize> = (0..store.profiles())
                .filter(|&p| eligible(store, profiles, p, c, plan.active_within))
                .collect();
            let mut labels = vec![false; store.profiles()];
            for chunk in chosen.chunks(CHUNK_PROFILES) {
                let mut idx: Vec<u32> = Vec::new();
                let mut owner: Vec<usize> = Vec::new();
                for &p in chunk {
                    let r = store.range(p);
                    let ts = &store.ts[r.clone()];
                    let lo = ts.partition_point(|&t| t < from);
                    let hi = ts.partition_point(|&t| t < window.end);
                    idx.extend((r.start + lo..r.start + hi).map(|i| i as u32));
                    owner.extend(std::iter::repeat_n(p, hi - lo));
                }
                let ids = StringArray::from_iter_values(
                    chunk.iter().map(|&p| store.profile_ids[p].as_str()),
                );
                let event_ids = StringArray::from_iter_values(
                    owner.iter().map(|&p| store.profile_ids[p].as_str()),
                );
                let mut cols: Vec<ArrayRef> = vec![
                    Arc::new(event_ids),
                    Arc::new(
                        TimestampMicrosecondArray::from(
                            idx.iter()
                                .map(|&i| store.ts[i as usize])
                                .collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(idx.iter().map(|&i| {
                        store.type_names[store.etype[i as usize] as usize].as_str()
                    }))),
                ];
                let take = UInt32Array::from(idx);
                for a in extras {
                    cols.push(
                        arrow::compute::take(a.as_ref(), &take, None)
                            .map_err(|e| EngineError::internal(format!("plugin fields: {e}")))?,
                    );
                }
                let events = StructArray::try_new(schema.clone().into(), cols, None)
                    .map_err(|e| EngineError::internal(format!("plugin events: {e}")))?;
                let got = self
                    .plugin
                    .label(&self.params, &ids, &events, window)
                    .map_err(|e| {
                        EngineError::user(format!(
                            "goal: labelling the cutoff {}: {}",
                            crate::rfc3339(c),
                            e.message
                        ))
                        .hint(e.hint.unwrap_or_else(|| {
                            "the run stopped before anything was published; fix the plugin or its params".into()
                        }))
                    })?;
                for (&p, l) in chunk.iter().zip(got) {
                    labels[p] = l;
                }
            }
            out.by_cutoff.insert(c, labels);
        }
        Ok(out)
    }
}
