//! Which profile ids Propensity accepts. Every sink keys its rows by the profile id (a
//! PostgreSQL primary key, a Redis key, a JSON field, a file cell), so an id that one of them
//! cannot store would stop that sink for good. Such ids are set aside when the events are
//! read, counted in the data-check report, and never reach training, scoring or a sink.

/// The longest profile id, in bytes (UTF-8). PostgreSQL refuses index rows over ~2.7 KB, and
/// real ids (UUIDs, ECIDs, e-mail hashes) are far shorter.
pub const MAX_PROFILE_ID_BYTES: usize = 1024;

/// Why `id` is not a usable profile id, or `None` when it is: longer than
/// [`MAX_PROFILE_ID_BYTES`], or holding a control character (NUL, a line break, …).
pub fn profile_id_problem(id: &str) -> Option<&'static str> {
    if id.len() > MAX_PROFILE_ID_BYTES {
        return Some("longer than 1024 bytes");
    }
    let control = id.bytes().any(|b| b < 0x20 || b == 0x7f)
        || (!id.is_ascii() && id.chars().any(char::is_control));
    control.then_some("holds a control character")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_and_control_characters_are_refused() {
        assert_eq!(profile_id_problem("a1b2-c3"), None);
        assert_eq!(profile_id_problem("jürgen@example.com"), None);
        assert_eq!(profile_id_problem(&"x".repeat(1024)), None);
        assert!(profile_id_problem(&"x".repeat(1025)).is_some());
        for bad in ["a\0b", "line\nbreak", "tab\there", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(
                profile_id_problem(bad),
                Some("holds a control character"),
                "{bad:?}"
            );
        }
    }
}
