//! Checks of a template's text made when a runbook is validated: every filter and test it applies
//! exists (minijinja would only notice when the template renders, maybe days into a run), and
//! whether it opts out of shell quoting (`| raw`, `{% autoescape %}`).

use minijinja::machinery::{get_compiled_template, Instruction, Instructions};
use minijinja::ErrorKind;

use super::{TemplateKind, ENVIRONMENT};

/// The filters and tests `text` applies, with the template's line of each.
fn callables(text: &str, kind: TemplateKind, visit: &mut dyn FnMut(&Instruction<'_>, usize)) {
    // An expression is checked as the template that outputs it.
    let source = match kind {
        TemplateKind::Text => text.to_owned(),
        TemplateKind::Expression => format!("{{{{ ({text}) }}}}"),
    };
    let Ok(template) = super::guarded(|| ENVIRONMENT.template_from_str(&source)) else {
        // Compile errors are reported by `referenced_names`.
        return;
    };
    let compiled = get_compiled_template(&template);
    let mut walk = |instructions: &Instructions<'_>| {
        for index in 0..instructions.len() as u32 {
            if let Some(instruction) = instructions.get(index) {
                visit(instruction, instructions.get_line(index).unwrap_or(1));
            }
        }
    };
    walk(&compiled.instructions);
    for block in compiled.blocks.values() {
        walk(block);
    }
}

/// `Err` naming the first filter or test that `text` applies and the engine does not have.
pub fn check_callables(text: &str, kind: TemplateKind) -> Result<(), String> {
    let mut unknown = None;
    callables(text, kind, &mut |instruction, line| {
        if unknown.is_some() {
            return;
        }
        let where_ = if line > 1 {
            format!(" (line {line} of the template)")
        } else {
            String::new()
        };
        match instruction {
            Instruction::ApplyFilter(name, ..)
                if !exists(
                    &format!("{{{{ none | {name} }}}}"),
                    ErrorKind::UnknownFilter,
                ) =>
            {
                unknown = Some(format!("unknown filter `{name}`{where_}"));
            }
            Instruction::PerformTest(name, ..)
                if !exists(&format!("{{{{ none is {name} }}}}"), ErrorKind::UnknownTest) =>
            {
                unknown = Some(format!("unknown test `{name}`{where_}"));
            }
            _ => {}
        }
    });
    unknown.map_or(Ok(()), Err)
}

/// Whether `probe` fails for another reason than the `missing` kind (a missing argument, a wrong
/// type: the filter or test exists).
fn exists(probe: &str, missing: ErrorKind) -> bool {
    match super::guarded(|| ENVIRONMENT.render_str(probe, ())) {
        Ok(_) => true,
        Err(error) => error.kind() != missing,
    }
}

/// Whether `text` puts a value into a command unquoted: `| raw` or an `{% autoescape %}` block.
pub fn opts_out_of_quoting(text: &str) -> bool {
    let mut found = false;
    callables(text, TemplateKind::Text, &mut |instruction, _| {
        found |= matches!(
            instruction,
            Instruction::ApplyFilter("raw", ..) | Instruction::PushAutoEscape
        );
    });
    found
}
