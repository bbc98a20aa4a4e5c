//! The suppression list: profiles erased with `propensity forget`, honoured by every later
//! run of every job on this state directory (left out of training and scoring, so they are
//! never published again).
//!
//! The list stores the sha256 of each profile id, not the id: the state directory then does
//! not keep the identifiers of the people who asked to be forgotten in clear text.
//! `<state>/suppressed.jsonl`, one `{"sha256": …, "at": …}` per line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::RunError;

fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("suppressed.jsonl")
}

/// The sha256 of a profile id, hex.
pub fn digest(profile_id: &str) -> String {
    crate::sha256_hex(profile_id.as_bytes())
}

/// The suppressed digests.
pub fn load(state_dir: &Path) -> Result<HashSet<String>, RunError> {
    let path = file(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => {
            return Err(RunError::external(format!("{}: {e}", path.display())));
        }
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("sha256").and_then(|s| s.as_str()).map(str::to_owned))
                .ok_or_else(|| {
                    RunError::user(format!(
                        "{} line {}: not a suppression entry",
                        path.display(),
                        i + 1
                    ))
                    .hint("each line is {\"sha256\": \"<hex of the profile id>\", \"at\": \"<time>\"}; fix or remove the line")
                })
        })
        .collect()
}

/// Adds profiles to the list (atomically; ids already there are not repeated). Returns how
/// many were new.
pub fn add(state_dir: &Path, profile_ids: &[String]) -> Result<usize, RunError> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| RunError::external(format!("{}: {e}", state_dir.display())))?;
    let mut known = load(state_dir)?;
    let path = file(state_dir);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut added = 0;
    for id in profile_ids {
        let d = digest(id);
        if known.insert(d.clone()) {
            text.push_str(&serde_json::json!({"sha256": d, "at": at}).to_string());
            text.push('\n');
            added += 1;
        }
    }
    crate::registry::write_atomic(&path, text.as_bytes())?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_is_idempotent_and_stores_no_ids() {
        let dir = std::env::temp_dir().join(format!("propensity-supp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(add(&dir, &["alice".into(), "bob".into()]).expect("add"), 2);
        assert_eq!(add(&dir, &["alice".into()]).expect("add"), 0);
        let set = load(&dir).expect("load");
        assert!(set.contains(&digest("alice")) && set.contains(&digest("bob")));
        let text = std::fs::read_to_string(file(&dir)).expect("read");
        assert!(!text.contains("alice"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
