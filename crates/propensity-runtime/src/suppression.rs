//! The suppression list: profiles erased with `propensity forget`, honoured by every later
//! run of every job on this state directory (left out of training and scoring, so they are
//! never published again).
//!
//! The list stores a keyed hash of each profile id, not the id: HMAC-SHA256 under a random
//! key kept beside it (`<state>/suppression.key`, 32 bytes, owner-only), so neither the list
//! nor a copy of it gives the ids back, not even by hashing a dictionary of e-mail
//! addresses. `<state>/suppressed.jsonl`, one `{"hmac": …, "at": …}` per line. Lines written
//! before the key existed (`{"sha256": …}`, a plain hash) are still honoured.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::RunError;

fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("suppressed.jsonl")
}

fn key_file(state_dir: &Path) -> PathBuf {
    state_dir.join("suppression.key")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The profiles erased on a state directory.
#[derive(Debug, Default)]
pub struct Suppressed {
    key: Option<Vec<u8>>,
    keyed: HashSet<String>,
    /// Plain sha256 digests of lists written before keys.
    legacy: HashSet<String>,
}

impl Suppressed {
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.legacy.is_empty()
    }

    /// Whether `profile_id` was erased.
    pub fn contains(&self, profile_id: &str) -> bool {
        (!self.legacy.is_empty()
            && self
                .legacy
                .contains(&crate::sha256_hex(profile_id.as_bytes())))
            || self
                .key
                .as_deref()
                .is_some_and(|k| self.keyed.contains(&keyed(k, profile_id)))
    }

    pub fn len(&self) -> usize {
        self.keyed.len() + self.legacy.len()
    }
}

/// HMAC-SHA256 of a profile id under `key`, hex.
fn keyed(key: &[u8], profile_id: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(profile_id.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn read_key(state_dir: &Path) -> Result<Option<Vec<u8>>, RunError> {
    let path = key_file(state_dir);
    match std::fs::read(&path) {
        Ok(k) if k.len() == 32 => Ok(Some(k)),
        Ok(_) => Err(
            RunError::user(format!("{} is damaged (not 32 bytes)", path.display())).hint(
                "restore it from a backup: without it the erased profiles cannot be recognised",
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RunError::external(format!("{}: {e}", path.display()))),
    }
}

/// The key, made (32 random bytes from the OS) on first use.
fn key(state_dir: &Path) -> Result<Vec<u8>, RunError> {
    if let Some(k) = read_key(state_dir)? {
        return Ok(k);
    }
    let mut k = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut k))
        .map_err(|e| RunError::internal(format!("no random key for the suppression list: {e}")))?;
    crate::registry::write_atomic(&key_file(state_dir), &k)?;
    Ok(k)
}

/// The suppression list of a state directory.
pub fn load(state_dir: &Path) -> Result<Suppressed, RunError> {
    let path = file(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Suppressed::default()),
        Err(e) => {
            return Err(RunError::external(format!("{}: {e}", path.display())));
        }
    };
    let mut s = Suppressed {
        key: read_key(state_dir)?,
        ..Suppressed::default()
    };
    for (i, l) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let v = serde_json::from_str::<serde_json::Value>(l).ok();
        let field = |name: &str| {
            v.as_ref()
                .and_then(|v| v.get(name))
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        };
        if let Some(h) = field("hmac") {
            s.keyed.insert(h);
        } else if let Some(h) = field("sha256") {
            s.legacy.insert(h);
        } else {
            return Err(RunError::user(format!(
                "{} line {}: not a suppression entry",
                path.display(),
                i + 1
            ))
            .hint(
                "each line is {\"hmac\": \"<hex>\", \"at\": \"<time>\"}; fix or remove the line",
            ));
        }
    }
    if !s.keyed.is_empty() && s.key.is_none() {
        return Err(RunError::user(format!(
            "{} lists erased profiles, but its key {} is missing",
            path.display(),
            key_file(state_dir).display()
        ))
        .hint(
            "restore the key from a backup: without it the erased profiles cannot be recognised",
        ));
    }
    Ok(s)
}

/// Adds profiles to the list (atomically; ids already there are not repeated). Returns how
/// many were new.
pub fn add(state_dir: &Path, profile_ids: &[String]) -> Result<usize, RunError> {
    propensity_common::private::create_dir_all(state_dir)
        .map_err(|e| RunError::external(format!("{}: {e}", state_dir.display())))?;
    let key = key(state_dir)?;
    let mut known = load(state_dir)?;
    let path = file(state_dir);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut added = 0;
    for id in profile_ids {
        if known.contains(id) {
            continue;
        }
        let d = keyed(&key, id);
        known.keyed.insert(d.clone());
        known.key = Some(key.clone());
        text.push_str(&serde_json::json!({"hmac": d, "at": at}).to_string());
        text.push('\n');
        added += 1;
    }
    crate::registry::write_atomic(&path, text.as_bytes())?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_is_idempotent_and_stores_no_ids_nor_plain_hashes() {
        let dir = std::env::temp_dir().join(format!("propensity-supp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(add(&dir, &["alice".into(), "bob".into()]).expect("add"), 2);
        assert_eq!(add(&dir, &["alice".into()]).expect("add"), 0);
        let set = load(&dir).expect("load");
        assert!(set.contains("alice") && set.contains("bob") && !set.contains("carol"));
        let text = std::fs::read_to_string(file(&dir)).expect("read");
        assert!(!text.contains("alice"));
        // A dictionary of plain hashes finds nothing in the list.
        assert!(!text.contains(&crate::sha256_hex(b"alice")), "{text}");
        assert!(text.contains("\"hmac\""), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_list_written_before_keys_is_still_honoured() {
        let dir = std::env::temp_dir().join(format!("propensity-supp-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let old = format!(
            "{{\"sha256\": \"{}\", \"at\": \"2026-01-01T00:00:00Z\"}}\n",
            crate::sha256_hex(b"alice")
        );
        std::fs::write(file(&dir), old).expect("write");
        assert!(load(&dir).expect("load").contains("alice"));
        assert_eq!(add(&dir, &["alice".into(), "bob".into()]).expect("add"), 1);
        let set = load(&dir).expect("load");
        assert!(set.contains("alice") && set.contains("bob"));
        assert_eq!(set.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
