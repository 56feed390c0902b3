//! The answer to an unknown endpoint: Velithon's wording, then the closest registered name and
//! the endpoints there are. Its cost is bounded by constants, not by the request's size.

use crate::protocol::short_text;

/// The longest unknown name a `not_found` message echoes, and the longest one compared with the
/// registered names: the work and the text a bad request costs are bounded by constants, not by
/// its size.
pub(super) const ECHOED_NAME: usize = 64;

/// The `not_found` message: Velithon's wording first (its clients may match on it), then the
/// closest registered name and the endpoints there are.
pub(super) fn not_found(name: &str, registry: &super::Registry) -> String {
    let mut names: Vec<&str> = registry.keys().map(|name| &**name).collect();
    names.sort_unstable();
    let mut message = format!("Endpoint {} not found", short_text(name, ECHOED_NAME));
    if let Some(closest) = closest_name(name, &names) {
        message.push_str(&format!("; did you mean `{closest}`?"));
    }
    const LISTED: usize = 20;
    let listed = names
        .iter()
        .take(LISTED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let more = names.len().saturating_sub(LISTED);
    message.push_str(&format!(" (endpoints: {listed}"));
    if more > 0 {
        message.push_str(&format!(" and {more} more"));
    }
    message.push(')');
    message
}

/// The registered name closest to `name` within a third of its length (at least 2 edits), if
/// any. Names whose lengths differ by more than that cannot be that close and are skipped
/// unmeasured; a name longer than any suggestion could match is not measured at all.
fn closest_name<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    if name.len() > 4 * ECHOED_NAME {
        return None;
    }
    names
        .iter()
        .filter_map(|candidate| {
            let allowed = (candidate.len() / 3).max(2);
            if name.len().abs_diff(candidate.len()) > allowed || candidate.len() > 4 * ECHOED_NAME {
                return None;
            }
            let distance = edit_distance(name, candidate);
            (distance <= allowed).then_some((distance, *candidate))
        })
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over chars, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_misspelling_is_suggested_and_a_far_one_is_not() {
        let names = ["create_user", "get_user", "health"];
        assert_eq!(closest_name("get_usr", &names), Some("get_user"));
        assert_eq!(closest_name("delete_everything", &names), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
