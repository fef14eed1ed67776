//! Runbooks nesting `for_each` loops (as table headers or inline tables, chosen by the input)
//! to any depth: the parser refuses what is too deep with a line, on a daemon-sized stack, and
//! what it accepts reads back from JSON (the journal's format) with serde_json's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runbook_engine::definition::{self, Definition};

fuzz_target!(|data: &[u8]| {
    let Some((&depth, shape)) = data.split_first() else {
        return;
    };
    let depth = usize::from(depth);
    let mut text = String::from("name = \"nested\"\n");
    let mut inline = String::from("{ id = \"leaf\", action = \"noop\" }");
    let mut table = String::from("steps");
    // Levels whose bit is set are inline (innermost first); the rest are headers.
    let inline_levels = (0..depth)
        .take_while(|level| {
            shape
                .get(level / 8)
                .is_some_and(|byte| byte >> (level % 8) & 1 == 1)
        })
        .count();
    for level in 0..depth - inline_levels {
        text.push_str(&format!(
            "[[{table}]]\nid = \"h{level}\"\nfor_each = [1]\nas = \"h{level}\"\n"
        ));
        table.push_str(".steps");
    }
    for level in 0..inline_levels {
        inline = format!(
            "{{ id = \"i{level}\", for_each = [1], as = \"i{level}\", steps = [{inline}] }}"
        );
    }
    text.push_str(&format!("{table} = [{inline}]\n"));
    let parsed = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || definition::parse("nested.toml", &text).map_err(|error| error.line))
        .expect("a thread")
        .join()
        .expect("no panic, no stack overflow");
    if let Ok(definition) = parsed {
        if definition::validate(&definition, &|_| false).is_ok() {
            let json = serde_json::to_vec(&definition).expect("encodes");
            let back: Definition =
                serde_json::from_slice(&json).expect("a valid definition reads back");
            assert_eq!(back, definition);
        }
    }
});
