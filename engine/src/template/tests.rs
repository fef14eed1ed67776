use serde_json::json;

use super::*;

/// Found by the `template` fuzz target: minijinja's lexer panics on this expression.
#[test]
fn a_template_that_panics_the_compiler_is_an_error() {
    let context = serde_json::json!({});
    for text in ["}}@", "{{ }}@ }}"] {
        assert!(eval(text, &context).is_err(), "{text}");
        assert!(is_true(text, &context).is_err(), "{text}");
        let _ = referenced_names(text, TemplateKind::Expression);
        let _ = render(&serde_json::json!({ "command": text }), &context);
    }
}

#[test]
fn a_lone_expression_keeps_its_type() {
    let context = json!({"params": {"brokers": ["a", "b"], "n": 3}});
    assert_eq!(
        render(&json!("{{ params.brokers }}"), &context).unwrap(),
        json!(["a", "b"])
    );
    assert_eq!(
        render(&json!("n={{ params.n }}"), &context).unwrap(),
        json!("n=3")
    );
    assert_eq!(
        render(&json!({"x": ["{{ params.n + 1 }}"]}), &context).unwrap(),
        json!({"x": [4]})
    );
}

#[test]
fn an_undefined_variable_is_named() {
    let context = json!({"params": {"a": 1}, "steps": {"early": {"output": {"x": 1}}}});
    let error = render(&json!("echo {{ steps.later.output.x }}"), &context).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("undefined variable `steps.later`: template"),
        "{error}"
    );
    let error = render(&json!("{{ steps.early.output.y }}"), &context).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("undefined variable `steps.early.output.y`:"),
        "{error}"
    );
    let error = is_true("params.b == 1", &context).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("undefined variable `params.b`:"),
        "{error}"
    );
}

#[test]
fn undefined_is_an_error() {
    let context = json!({"params": {}});
    assert!(render(&json!("{{ params.broker }}"), &context).is_err());
    assert!(render(&json!("x {{ params.broker }} y"), &context).is_err());
    assert!(is_true("output.lag == 0", &context).is_err());
}

#[test]
fn values_in_a_command_are_quoted_and_raw_is_not() {
    let context = json!({"params": {"name": "x; touch pwned", "argv": ["a", "b"]}});
    let rendered = |text: &str| render(&json!({ "command": text }), &context);
    assert_eq!(
        rendered("echo {{ params.name }}").unwrap(),
        json!({"command": "echo 'x; touch pwned'"})
    );
    assert_eq!(
        rendered("echo '{{ params.name }}'").unwrap(),
        json!({"command": "echo 'x; touch pwned'"})
    );
    assert_eq!(
        rendered("{{ params.name }}").unwrap(),
        json!({"command": "'x; touch pwned'"})
    );
    assert_eq!(
        rendered("{{ params.name | raw }}").unwrap(),
        json!({"command": "x; touch pwned"})
    );
    assert_eq!(
        rendered("{{ params.argv }}").unwrap(),
        json!({"command": ["a", "b"]})
    );
    // Outside a command, and in an argv list, values are as they are.
    assert_eq!(
        render(
            &json!({"note": "{{ params.name }}!", "command": ["{{ params.name }}"]}),
            &context
        )
        .unwrap(),
        json!({"note": "x; touch pwned!", "command": ["x; touch pwned"]})
    );
}

#[test]
fn too_much_work_or_output_is_a_limit_not_a_hang() {
    let context = json!({});
    let work = render(
        &json!("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"),
        &context,
    );
    assert!(
        matches!(&work, Err(Error::Limit(message)) if message.contains("too much work")),
        "{work:?}"
    );
    for text in [
        "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
        "{{ 'x' * 2000000 }}",
    ] {
        for value in [json!(text), json!({ "command": text })] {
            let output = render(&value, &context);
            assert!(
                matches!(&output, Err(Error::Limit(message)) if message.contains("too long")),
                "{text}: {output:?}"
            );
        }
    }
    let condition = is_true("range(100000) | map('string') | join('') | length > 0 and range(100000) | map('string') | join('') | length > 0", &context);
    assert!(condition.is_ok() || condition.is_err_and(|error| error.is_limit()));
}

#[test]
fn unknown_filters_and_tests_are_found_before_rendering() {
    assert!(check_callables("{{ x | quote }}", TemplateKind::Text)
        .is_err_and(|message| message.contains("unknown filter `quote`")));
    assert!(check_callables("{{ x | safe }}", TemplateKind::Text).is_err());
    assert!(
        check_callables("x is frobnicated", TemplateKind::Expression)
            .is_err_and(|message| message.contains("unknown test `frobnicated`"))
    );
    assert!(check_callables(
        "{% if x %}{{ x | default('a') | length }}{% endif %}",
        TemplateKind::Text
    )
    .is_ok());
    assert!(opts_out_of_quoting("{{ x | raw }}"));
    assert!(!opts_out_of_quoting("{{ x | tojson }}"));
}

#[test]
fn names_are_found() {
    let names = referenced_names(
        "{{ params.broker }} {{ steps.list.output }}",
        TemplateKind::Text,
    )
    .unwrap();
    assert!(names.contains("params.broker"), "{names:?}");
    assert!(
        names.iter().any(|name| name.starts_with("steps.list")),
        "{names:?}"
    );
}
