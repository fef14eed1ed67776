//! Any template text, rendered as a plain string, as a shell command and as an expression,
//! against a small context: the result is a value or an error; rendering never panics, and the
//! fuel and output limits keep every call short and small.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runbook_engine::template;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    // minijinja's compiler panics on some malformed text; `template` catches that and returns
    // an error (`template::guarded`), as the daemon needs. libFuzzer's panic hook would abort on
    // the caught panic too, so it is replaced by a silent one: a panic that is *not* caught still
    // unwinds out of this function, which aborts the process and is reported as a crash.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(text) = std::str::from_utf8(data) else { return };
    let context = json!({
        "params": {"name": "x; touch pwned", "n": 3, "list": ["a", "b'c"], "map": {"k": "$(v)"}},
        "steps": {},
        "item": "i",
        "index": 0,
    });
    let started = std::time::Instant::now();
    for value in [json!(text), json!({ "command": text })] {
        if let Ok(rendered) = template::render(&value, &context) {
            assert!(rendered.to_string().len() <= 4 * template::MAX_OUTPUT);
        }
    }
    let _ = template::is_true(text, &context);
    let _ = template::eval(text, &context);
    let _ = template::check_callables(text, template::TemplateKind::Text);
    let _ = template::opts_out_of_quoting(text);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
});
