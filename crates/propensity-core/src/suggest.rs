//! "Did you mean …?" for unknown keys, fields and names.

/// The closest candidate to `word`, if it is close enough to be what was meant.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let lower = word.to_ascii_lowercase();
    let candidates: Vec<&str> = candidates.into_iter().collect();
    // A shortened key (`top_events` for `top_event_types`) shares a long start with it.
    let common = |c: &str| {
        lower
            .chars()
            .zip(c.to_ascii_lowercase().chars())
            .take_while(|(a, b)| a == b)
            .count()
    };
    let need = 4.max(lower.chars().count() * 3 / 5);
    if let Some((n, c)) = candidates
        .iter()
        .map(|c| (common(c), *c))
        .max_by_key(|(n, _)| *n)
        && n >= need
    {
        return Some(c);
    }
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| {
            let budget = (c.chars().count().max(word.chars().count()) / 3).max(1);
            *d <= budget
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}
