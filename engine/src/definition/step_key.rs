//! Step keys: where a step instance sits in a run. A top-level step's key is its id; a step in
//! the body of a `for_each` is `<loop key>[<index>].<id>` (`deploy[2].restart`); in a plan,
//! `<loop key>[*]` stands for every iteration. Keys are journaled as text; this module is the
//! one place that builds them or takes them apart (step ids hold no `.` or `[`: the parser
//! refuses them).

/// The key of step `id` in the sequence at `prefix` (`""` at the top).
pub fn child(prefix: &str, id: &str) -> String {
    if prefix.is_empty() {
        id.to_owned()
    } else {
        format!("{prefix}.{id}")
    }
}

/// The prefix of iteration `index` of the loop `key`.
pub fn iteration(key: &str, index: usize) -> String {
    format!("{key}[{index}]")
}

/// The prefix that stands for every iteration of the loop `key` (plans).
pub fn every_iteration(key: &str) -> String {
    format!("{key}[*]")
}

/// Whether `key` is a step inside an iteration of the loop `ancestor`.
pub fn is_nested_in(key: &str, ancestor: &str) -> bool {
    key.strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('['))
}

/// Whether `key` is `ancestor` itself or a step inside its iterations.
pub fn is_within(key: &str, ancestor: &str) -> bool {
    key == ancestor || is_nested_in(key, ancestor)
}

/// The step id a key ends with: `deploy[2].restart` → `restart`.
pub fn id(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// The step ids along a key: `deploy[2].restart` → `deploy`, `restart`.
pub fn ids(key: &str) -> impl Iterator<Item = &str> {
    key.split('.')
        .map(|segment| segment.split('[').next().unwrap_or(segment))
}

/// An iteration prefix taken apart: `loop[2]` → (`loop`, 2); `a[0].loop[2]` → (`a[0].loop`, 2).
pub fn split_iteration(prefix: &str) -> Option<(&str, usize)> {
    let open = prefix.rfind('[')?;
    let index = prefix[open + 1..].strip_suffix(']')?.parse().ok()?;
    Some((&prefix[..open], index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_built_and_taken_apart_by_one_grammar() {
        let body = iteration(&child("", "deploy"), 2);
        assert_eq!(body, "deploy[2]");
        let key = child(&body, "restart");
        assert_eq!(key, "deploy[2].restart");
        assert_eq!(id(&key), "restart");
        assert_eq!(id("top"), "top");
        assert!(is_nested_in(&key, "deploy") && is_within(&key, "deploy"));
        assert!(is_within("deploy", "deploy") && !is_nested_in("deploy", "deploy"));
        // A step whose id merely starts like the loop's is not inside it.
        assert!(!is_within("deploy_all", "deploy") && !is_within("deploy.x", "deploy"));
        assert_eq!(split_iteration(&body), Some(("deploy", 2)));
        assert_eq!(split_iteration("a[0].loop[12]"), Some(("a[0].loop", 12)));
        assert_eq!(split_iteration("deploy"), None);
        assert_eq!(every_iteration("deploy"), "deploy[*]");
        assert_eq!(ids(&key).collect::<Vec<_>>(), ["deploy", "restart"]);
    }
}
