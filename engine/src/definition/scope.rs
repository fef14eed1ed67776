//! What a template may name at one place in a runbook file.
//!
//! # Contract
//!
//! A name is accepted only if it has a value whenever that place runs: a declared param, `run`'s
//! fields, a loop variable of an enclosing loop, and the steps (and captures) that have ended on
//! every path to it — earlier in the same sequence or in an enclosing one. A step that may be
//! skipped (`when`) or passed over after failing (`on_failure = "continue"`) has an output only
//! where a `when` around the reader tests it. Anything else is refused with the reason, so the
//! mistake is found when the file is read, not days into a run.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use crate::template;

/// What a template may name at one place in the file.
#[derive(Clone, Default)]
pub(super) struct Scope {
    pub params: BTreeSet<String>,
    /// The steps that have ended on every path to this place (earlier in this sequence or in an
    /// enclosing one): only their outputs can be read here.
    pub steps: BTreeSet<String>,
    pub captures: BTreeSet<String>,
    pub loop_vars: Vec<String>,
    /// Every step id of the file, in file order (depth first): to say why a step that exists
    /// cannot be read here.
    pub order: Rc<BTreeMap<String, usize>>,
    /// capture name → the step that captures it.
    pub capture_steps: Rc<BTreeMap<String, String>>,
    /// The step being checked (none for `locks`).
    pub current: Option<String>,
    /// The visible steps that may have no output when this place runs, and why: they may be
    /// skipped (`when`) or may fail and be passed (`on_failure = "continue"`).
    pub maybe_missing: BTreeMap<String, &'static str>,
    /// The names read by the `when` conditions of this step and the loops around it: a step
    /// that tests `steps.x` there has guarded its reads of `x`'s output.
    pub guarded: BTreeSet<String>,
}

impl Scope {
    /// `Err` saying why `name` (a variable a template reads, with its attributes:
    /// `steps.check.output.lag`) has no value here.
    pub fn check(&self, name: &str) -> Result<(), String> {
        let mut parts = name.split('.');
        let root = parts.next().unwrap_or_default();
        let second = parts.next();
        let reads_into_output = parts.next() == Some("output") && parts.next().is_some();
        let known = match root {
            "params" => match second {
                None => true,
                Some(param) => self.params.contains(param),
            },
            "steps" => match second {
                None => true,
                Some(step)
                    if self.steps.contains(step)
                        && reads_into_output
                        && self.maybe_missing.contains_key(step)
                        && !self.guards(step, None) =>
                {
                    return Err(format!(
                        "`{name}` reads step {step:?}, which {}: it has no output then; test it \
                         first, e.g. `when = \"steps.{step}.state == 'succeeded'\"`",
                        self.maybe_missing[step]
                    ));
                }
                Some(step) if self.steps.contains(step) => true,
                Some(step) if self.order.contains_key(step) => {
                    return Err(format!(
                        "`{name}` reads step {step:?}, which {}",
                        self.not_yet(step)
                    ));
                }
                Some(_) => false,
            },
            "run" => matches!(
                second,
                None | Some("id") | Some("runbook") | Some("started_by")
            ),
            _ => match self.capture_steps.get(root) {
                Some(step) if !self.captures.contains(root) => {
                    return Err(format!(
                        "`{name}` is captured by step {step:?}, which {}",
                        self.not_yet(step)
                    ));
                }
                Some(step)
                    if self.maybe_missing.contains_key(step) && !self.guards(step, Some(root)) =>
                {
                    return Err(format!(
                        "`{name}` is captured by step {step:?}, which {}: it is undefined then; \
                         test it first, e.g. `when = \"steps.{step}.state == 'succeeded'\"`",
                        self.maybe_missing[step]
                    ));
                }
                Some(_) => true,
                None => {
                    self.loop_vars.iter().any(|var| var == root)
                        || (root == "index" && !self.loop_vars.is_empty())
                        || template::GLOBAL_FUNCTIONS.contains(&root)
                }
            },
        };
        if known {
            return Ok(());
        }
        let hint = match root {
            "params" => format!(" (params: {})", join(&self.params)),
            "steps" => format!(" (steps: {})", join(&self.steps)),
            _ => String::new(),
        };
        Err(format!("unknown template variable `{name}`{hint}"))
    }

    /// Whether a `when` around this place tests step `step` (or its capture).
    fn guards(&self, step: &str, capture: Option<&str>) -> bool {
        let prefix = format!("steps.{step}");
        self.guarded.iter().any(|name| {
            name == &prefix
                || name.starts_with(&format!("{prefix}."))
                || capture.is_some_and(|capture| {
                    name == capture || name.starts_with(&format!("{capture}."))
                })
        })
    }

    /// Why step `step` (which exists) has no output here.
    fn not_yet(&self, step: &str) -> String {
        let Some(current) = &self.current else {
            return "has not run when the run starts (locks are taken first)".to_owned();
        };
        if current == step {
            return "is this step itself: its output is `output`, in `until` and `undo`".to_owned();
        }
        match (self.order.get(step), self.order.get(current)) {
            (Some(later), Some(here)) if later > here => {
                format!("comes later in the file: it has not run when step {current:?} runs")
            }
            _ => format!(
                "runs inside a for_each loop that does not enclose step {current:?}: its outputs \
                 exist only within an iteration"
            ),
        }
    }
}

fn join(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}
