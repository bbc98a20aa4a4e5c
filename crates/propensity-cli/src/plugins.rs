//! `propensity plugins list | check`, and the plugin part of `propensity validate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use propensity_config::Diagnostic;
use propensity_core::{Goal, Job};
use propensity_engine::plugin::{GoalPlugin, plugin_dirs};
use propensity_plugin::host::{self, Plugin};
use propensity_plugin::{Metadata, Window};
use serde_json::json;

use crate::{CliError, OutputFormat, io_error, user};

/// The plugin directories, as `run` searches them: `<state>/plugins` with the state
/// directory given, else the one `run` defaults to (`PROPENSITY_STATE`, else `.propensity`).
pub fn dirs(state: Option<&Path>) -> Vec<PathBuf> {
    let env = propensity_common::process_env();
    let state = state.map(Path::to_path_buf).unwrap_or_else(|| {
        std::env::var_os("PROPENSITY_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".propensity"))
    });
    plugin_dirs(&env, Some(&state))
}

fn params_line(m: &Metadata) -> String {
    if m.params.is_empty() {
        return "(none)".into();
    }
    m.params
        .iter()
        .map(|p| {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match (&p.default, p.required) {
                (_, true) => format!("{} ({kind}, required)", p.name),
                (Some(d), false) => format!("{} ({kind}, default {d})", p.name),
                (None, false) => format!("{} ({kind}, optional)", p.name),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(p: &Plugin) -> serde_json::Value {
    let m = p.metadata();
    json!({
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "path": p.path().display().to_string(),
        "sha256": p.sha256(),
        "abi_version": p.abi_version(),
        "sdk_version": m.sdk_version,
        "params": m.params,
    })
}

fn write(out: &mut dyn Write, text: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    out.write_fmt(text)
        .map_err(|e| io_error(anyhow::anyhow!("cannot write output: {e}")))
}

/// `propensity plugins list`: every plugin found in the plugin directories.
pub fn list(
    state: Option<&Path>,
    format: OutputFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, CliError> {
    let dirs = dirs(state);
    let found = host::discover(&dirs);
    match format {
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = found
                .iter()
                .map(|f| match &f.plugin {
                    Ok(p) => describe(p),
                    Err(e) => json!({"path": f.path.display().to_string(), "error": e.message}),
                })
                .collect();
            let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            write(
                out,
                format_args!(
                    "{}\n",
                    serde_json::to_string_pretty(&json!({"directories": dirs, "plugins": items}))
                        .unwrap_or_default()
                ),
            )?;
        }
        OutputFormat::Text => {
            let mut n = 0;
            for f in &found {
                match &f.plugin {
                    Ok(p) => {
                        n += 1;
                        let m = p.metadata();
                        write(
                            out,
                            format_args!(
                                "{} {}  {}\n  path    {}\n  sha256  {}\n  params  {}\n",
                                m.name,
                                m.version,
                                m.description,
                                p.path().display(),
                                p.sha256(),
                                params_line(m)
                            ),
                        )?;
                    }
                    Err(e) => write(
                        err,
                        format_args!("skipped {}: {}\n", f.path.display(), e.message),
                    )?,
                }
            }
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            write(
                out,
                format_args!(
                    "{n} plugin(s) in {}\n",
                    if searched.is_empty() {
                        "no plugin directory".to_owned()
                    } else {
                        searched.join(", ")
                    }
                ),
            )?;
        }
    }
    Ok(0)
}

/// `propensity plugins check PATH`: loads one library the way a run would, validates
/// `params` with it, and labels one synthetic profile.
pub fn check(
    path: &Path,
    params: Option<&str>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<i32, CliError> {
    let fail = |e: host::PluginError| {
        let mut msg = e.message;
        if let Some(h) = e.hint {
            msg.push_str(&format!("\n  hint: {h}"));
        }
        user(anyhow::anyhow!(msg))
    };
    let plugin = Plugin::load(path, None).map_err(fail)?;
    let params: serde_json::Map<String, serde_json::Value> = match params {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                return Err(user(anyhow::anyhow!(
                    "--params must be a JSON object, e.g. '{{\"min_orders\": 2}}'"
                )));
            }
        },
    };
    let checked = plugin.validate(&params);
    // A labelling call on a synthetic profile exercises the entry point end to end.
    let empty_call = match &checked {
        Ok(v) => {
            let fields = v
                .fields
                .iter()
                .map(propensity_engine::events::ExtraField::from_request)
                .collect::<Vec<_>>();
            label_one_profile(&plugin, &params, &fields).map_err(|e| e.message)
        }
        Err(_) => Ok(()),
    };
    let ok = checked.is_ok() && empty_call.is_ok();
    match format {
        OutputFormat::Json => {
            let mut doc = describe(&plugin);
            doc["params_checked"] = json!(params);
            doc["valid"] = json!(ok);
            match (&checked, &empty_call) {
                (Err(e), _) => doc["error"] = json!(e.message),
                (Ok(_), Err(e)) => doc["error"] = json!(e),
                (Ok(v), Ok(())) => doc["fields"] = json!(v.fields),
            }
            write(
                out,
                format_args!(
                    "{}\n",
                    serde_json::to_string_pretty(&doc).unwrap_or_default()
                ),
            )?;
        }
        OutputFormat::Text => {
            let m = plugin.metadata();
            write(
                out,
                format_args!(
                    "plugin  {} {} — {}\npath    {}\nsha256  {}\nabi     version {} (this propensity: {})\nparams  {}\n",
                    m.name,
                    m.version,
                    m.description,
                    plugin.path().display(),
                    plugin.sha256(),
                    plugin.abi_version(),
                    propensity_plugin::ABI_VERSION,
                    params_line(m)
                ),
            )?;
            match (&checked, &empty_call) {
                (Err(e), _) => write(out, format_args!("invalid params: {}\n", e.message))?,
                (Ok(_), Err(e)) => write(out, format_args!("labelling failed: {e}\n"))?,
                (Ok(v), Ok(())) => {
                    let fields: Vec<&str> = v.fields.iter().map(|f| f.path.as_str()).collect();
                    write(
                        out,
                        format_args!(
                            "ok: params {} are valid; reads fields: {}\npin it in a job with: sha256 = \"{}\"\n",
                            serde_json::Value::Object(params.clone()),
                            if fields.is_empty() {
                                "(none)".to_owned()
                            } else {
                                fields.join(", ")
                            },
                            plugin.sha256()
                        ),
                    )?;
                }
            }
        }
    }
    Ok(if ok {
        0
    } else {
        propensity_core::Domain::User.exit_code()
    })
}

fn label_one_profile(
    plugin: &Plugin,
    params: &serde_json::Map<String, serde_json::Value>,
    fields: &[propensity_engine::events::ExtraField],
) -> Result<(), host::PluginError> {
    use arrow::array::{ArrayRef, StringArray, StructArray, TimestampMicrosecondArray};
    use arrow::datatypes::Field;
    use std::sync::Arc;
    // One profile with one event in the window, every requested field null: the plugin's
    // labelling code runs and its answer goes through the host's checks.
    const DAY: i64 = 86_400_000_000;
    let window = Window {
        start: 20_000 * DAY,
        end: 20_030 * DAY,
    };
    let base: [ArrayRef; 3] = [
        Arc::new(StringArray::from(vec!["check-profile"])),
        Arc::new(TimestampMicrosecondArray::from(vec![window.start + DAY]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec!["check.event"])),
    ];
    let mut cols: Vec<(Arc<Field>, ArrayRef)> = propensity_plugin::columns::base_fields()
        .into_iter()
        .map(Arc::new)
        .zip(base)
        .collect();
    for f in fields {
        cols.push((
            Arc::new(Field::new(&f.path, f.data_type.clone(), true)),
            arrow::array::new_null_array(&f.data_type, 1),
        ));
    }
    let labels = plugin.label(
        params,
        &StringArray::from(vec!["check-profile"]),
        &StructArray::from(cols),
        window,
    )?;
    debug_assert_eq!(labels.len(), 1);
    Ok(())
}

/// The plugin check of `propensity validate`: a valid job with a plugin goal is checked by
/// its plugin (found, pinned, ABI version, params).
pub fn validate_goal(job: &Job, text: &str, file: &Path, load: bool) -> Option<Diagnostic> {
    let Goal::Plugin(g) = &job.goal else {
        return None;
    };
    let job_dir = file.parent().unwrap_or(Path::new("."));
    let e = if load {
        GoalPlugin::resolve(g, job_dir, &dirs(None)).err()?
    } else {
        // Found and, when pinned, hashed: but never loaded (`validate --no-load-plugins`).
        let found = host::locate(&g.plugin, job_dir, &dirs(None))
            .map_err(|e| e.message)
            .and_then(|path| {
                let Some(pin) = &g.sha256 else {
                    return Ok(());
                };
                let hash = host::sha256_file(&path).map_err(|e| e.message)?;
                if hash.eq_ignore_ascii_case(pin) {
                    Ok(())
                } else {
                    Err(format!(
                        "plugin library `{}` has sha256 {hash}, but the job pins {pin}",
                        path.display()
                    ))
                }
            });
        let e = found.err()?;
        propensity_engine::EngineError::user(format!("goal.plugin: {e}"))
    };
    let key = if e.message.starts_with("goal.params") {
        "params"
    } else {
        "plugin"
    };
    let (line, column) = goal_key_location(text, key);
    Some(Diagnostic {
        file: file.display().to_string(),
        line,
        column,
        key: format!("goal.{key}"),
        code: "plugin",
        message: e.message,
        hint: e.hint,
    })
}

/// Line and column (1-based) of `key = …` in the `[goal]` table, or of the table header.
fn goal_key_location(text: &str, key: &str) -> (usize, usize) {
    let mut in_goal = false;
    let mut header = (1, 1);
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('[') {
            in_goal = t.starts_with("[goal]");
            if in_goal {
                header = (i + 1, line.len() - t.len() + 1);
            }
            continue;
        }
        if in_goal
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return (i + 1, line.len() - t.len() + 1);
        }
    }
    header
}
