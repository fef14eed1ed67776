use super::{check as check_all, parse};
use crate::action::Registry;

/// Every error `check` reports for `text` (with the core actions), one per line.
fn errors(text: &str) -> String {
    match check_all("t.toml", text, &Registry::new()) {
        Ok(_) => String::new(),
        Err(errors) => errors.to_string(),
    }
}

const HEAD: &str = "name = \"x\"\n";

#[test]
fn keys_in_with_are_checked_against_the_action_schema() {
    let text = format!(
        "{HEAD}[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = {{ command = \"true\", timeot = \"5s\", pasre = \"json\" }}\n\
         [[steps]]\nid = \"b\"\naction = \"wait\"\nwith = {{ duration = \"1s\", extra = 1 }}\n\
         [[steps]]\nid = \"c\"\naction = \"exec\"\nwith = {{ comand = \"true\" }}\n\
         [[steps]]\nid = \"d\"\naction = \"approval\"\nwith = {{ distinct_approver = \"yes\" }}\n"
    );
    let errors = errors(&text);
    for expected in [
        "t.toml:5: step \"a\": with.pasre: unknown key (did you mean `parse`?)",
        "t.toml:5: step \"a\": with.timeot: unknown key (did you mean the step's `timeout`, outside `with`?)",
        "t.toml:9: step \"b\": with.extra: unknown key (known keys: duration, until)",
        "t.toml:13: step \"c\": with.comand: unknown key (did you mean `command`?)",
        "t.toml:13: step \"c\": with.command: missing required key: a shell string, or an argv list",
        "t.toml:17: step \"d\": with.distinct_approver: expected true or false, got \"yes\"",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
    }
}

#[test]
fn every_mistake_is_reported_in_file_order() {
    let text = format!(
        "{HEAD}[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = {{ command = \"true\" }}\ntimeout = 30\n\
         [[steps]]\nid = \"b\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ params.nope }}}}\" }}\non_failure = \"explode\"\n\
         [[steps]]\nid = \"c\"\naction = \"nosuch\"\n"
    );
    let errors = errors(&text);
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 4, "{errors}");
    assert!(
        lines[0].starts_with(
            "t.toml:6: step \"a\": timeout: expected a duration string such as \"30s\""
        ),
        "{errors}"
    );
    assert!(
        lines[1].starts_with(
            "t.toml:10: step \"b\": with.command: unknown template variable `params.nope`"
        ),
        "{errors}"
    );
    assert!(
        lines[2].starts_with("t.toml:11: step \"b\": on_failure: unknown value \"explode\""),
        "{errors}"
    );
    assert!(
        lines[3].starts_with("t.toml:12: step \"c\": action: unknown action \"nosuch\""),
        "{errors}"
    );
}

#[test]
fn a_step_cannot_read_a_step_that_has_not_run() {
    let forward = format!(
        "{HEAD}[[steps]]\nid = \"early\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.later.output.stdout }}}}\" }}\n\
         [[steps]]\nid = \"later\"\naction = \"exec\"\nwith = {{ command = \"true\" }}\n"
    );
    assert_eq!(
        errors(&forward),
        "t.toml:5: step \"early\": with.command: `steps.later.output.stdout` reads step \"later\", which comes later in the file: it has not run when step \"early\" runs"
    );
    let inside_loop = format!(
        "{HEAD}[[steps]]\nid = \"each\"\nfor_each = [\"a\"]\n  [[steps.steps]]\n  id = \"inner\"\n  action = \"noop\"\n  capture = \"got\"\n\
         [[steps]]\nid = \"after\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.inner.output }}}}\", env = {{ GOT = \"{{{{ got }}}}\" }} }}\n"
    );
    let errors_inside = errors(&inside_loop);
    assert!(errors_inside.contains("`steps.inner.output` reads step \"inner\", which runs inside a for_each loop that does not enclose step \"after\""), "{errors_inside}");
    assert!(
        errors_inside.contains(
            "with.env.GOT: `got` is captured by step \"inner\", which runs inside a for_each loop"
        ),
        "{errors_inside}"
    );
    let capture_later = format!(
        "{HEAD}[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ got }}}}\" }}\n\
         [[steps]]\nid = \"b\"\naction = \"noop\"\ncapture = \"got\"\n"
    );
    assert!(errors(&capture_later)
        .contains("`got` is captured by step \"b\", which comes later in the file"));
    let own = format!(
        "{HEAD}[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.a.output }}}}\" }}\n"
    );
    assert!(errors(&own).contains("is this step itself"));
    // A step that may be skipped or passed over has an output only where a `when` tests it.
    let conditional = format!(
        "{HEAD}[[steps]]\nid = \"maybe\"\naction = \"noop\"\nwhen = \"false\"\ncapture = \"got\"\n\
         [[steps]]\nid = \"failing\"\naction = \"exec\"\nwith = {{ command = \"false\", parse = \"json\" }}\non_failure = \"continue\"\n\
         [[steps]]\nid = \"reader\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.maybe.output.x }}}}\", cwd = \"{{{{ got.x }}}}\", env = {{ A = \"{{{{ steps.failing.output.json.a }}}}\" }} }}\n\
         [[steps]]\nid = \"guarded\"\naction = \"exec\"\nwhen = \"steps.maybe.state == 'succeeded' and steps.failing.state == 'succeeded'\"\nwith = {{ command = \"echo {{{{ steps.maybe.output.x }}}} {{{{ got.x }}}} {{{{ steps.failing.output.json.a }}}}\" }}\n"
    );
    let errors_conditional = errors(&conditional);
    assert_eq!(
        errors_conditional.lines().count(),
        3,
        "{errors_conditional}"
    );
    for expected in [
        "with.command: `steps.maybe.output.x` reads step \"maybe\", which may be skipped (it has a `when`): it has no output then",
        "with.cwd: `got.x` is captured by step \"maybe\", which may be skipped",
        "with.env.A: `steps.failing.output.json.a` reads step \"failing\", which may fail and be passed (on_failure = \"continue\")",
    ] {
        assert!(errors_conditional.contains(expected), "{expected:?} not in:\n{errors_conditional}");
    }
    // Earlier steps, enclosing loops' earlier steps and siblings in an iteration are fine.
    let fine = format!(
        "{HEAD}[[steps]]\nid = \"first\"\naction = \"noop\"\ncapture = \"one\"\n\
         [[steps]]\nid = \"each\"\nfor_each = \"{{{{ [steps.first.output] }}}}\"\n  [[steps.steps]]\n  id = \"x\"\n  action = \"noop\"\n  [[steps.steps]]\n  id = \"y\"\n  action = \"exec\"\n  with = {{ command = \"echo {{{{ steps.x.output }}}} {{{{ one }}}} {{{{ steps.first.output }}}}\" }}\n\
         [[steps]]\nid = \"last\"\naction = \"exec\"\nwith = {{ command = \"echo {{{{ steps.each.state }}}}\" }}\n"
    );
    assert_eq!(errors(&fine), "");
}

fn check(text: &str, expect: Result<(), &str>) {
    match (parse("t.toml", text), expect) {
        (Ok(_), Ok(())) => {}
        (Err(error), Err(needle)) => assert!(error.to_string().contains(needle), "{error}"),
        (result, expect) => panic!("{result:?}, expected {expect:?}"),
    }
}

#[test]
fn durations_may_be_templates_checked_like_any_other() {
    let head = "name = \"x\"\n[params.drain]\ntype = \"duration\"\ndefault = \"72h\"\n[[steps]]\nid = \"a\"\naction = \"exec\"\nwith = { command = \"true\" }\n";
    check(
        &format!("{head}timeout = \"{{{{ params.drain }}}}\"\n"),
        Ok(()),
    );
    check(
        &format!("{head}until = \"output.exit_code == 0\"\nevery = \"{{{{ params.drain }}}}\"\n"),
        Ok(()),
    );
    check(
        &format!("{head}timeout = \"{{{{ params.drian }}}}\"\n"),
        Err("t.toml:9: step \"a\": timeout: unknown template variable `params.drian`"),
    );
    check(
        &format!("{head}timeout = \"72 hours-ish\"\n"),
        Err("t.toml:9"),
    );
    check(
        &format!("{head}retry = {{ max_attempts = 3, backoff = 5 }}\n"),
        Err("t.toml:9: step \"a\": retry.backoff: expected a duration string such as \"5s\" or \"1m\", got 5"),
    );
    let wait_until = "name = \"x\"\n[params.t]\ndefault = \"1m\"\n[[steps]]\nid = \"a\"\naction = \"wait_until\"\nwith = { action = \"exec\", with = { command = \"true\" }, condition = \"output.exit_code == 0\", timeout = \"{{ params.t }}\" }\n";
    check(wait_until, Ok(()));
}

#[test]
fn a_step_is_journaled_in_the_form_journals_have_always_had() {
    // A run pins its definition in its first event: the typed step (StepKind, DurationSpec)
    // must write and read the fields every journal so far holds.
    let text = format!(
        "{HEAD}[params.retention]\ndefault = \"1h\"\n\
         [[steps]]\nid = \"poll\"\naction = \"exec\"\nwith = {{ command = \"true\" }}\n\
         until = \"output.exit_code == 0\"\nevery = \"{{{{ params.retention }}}}\"\ntimeout = \"2h\"\n\
         [[steps]]\nid = \"each\"\nfor_each = [\"a\", \"b\"]\ntimeout = \"{{{{ params.retention }}}}\"\n\
         [[steps.steps]]\nid = \"one\"\naction = \"noop\"\n"
    );
    let definition = parse("t.toml", &text).unwrap();
    let json = serde_json::to_value(&definition.steps).unwrap();
    assert_eq!(json[0]["action"], "exec");
    assert_eq!(json[0]["timeout"], 7_200_000);
    assert_eq!(json[0]["every_template"], "{{ params.retention }}");
    assert!(json[0]["every"].is_null() && json[0]["for_each"].is_null());
    assert_eq!(json[1]["action"], "for_each");
    assert_eq!(json[1]["timeout_template"], "{{ params.retention }}");
    assert_eq!(json[1]["for_each"]["steps"][0]["action"], "noop");
    assert!(json[1].get("every_template").is_none());
    let back: Vec<super::Step> = serde_json::from_value(json).unwrap();
    assert_eq!(back, definition.steps);
}
