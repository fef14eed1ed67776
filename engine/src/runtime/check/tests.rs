use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::action::{Action, ActionFailure, ActionFuture, Schema};

static READS: Schema = Schema {
    mutates: false,
    open: true,
    keys: &[],
};
static CHANGES: Schema = Schema {
    mutates: true,
    open: true,
    keys: &[],
};

/// A read-only action: its output echoes its input; sleeps `sleep_ms` first.
struct Read(Arc<AtomicUsize>);
impl Action for Read {
    fn schema(&self) -> &'static Schema {
        &READS
    }
    fn call(&self, input: Value, context: ActionContext) -> ActionFuture {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let sleep = input["sleep_ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(sleep)).await;
            if input["fail"] == true {
                return Err(ActionFailure::retryable("nobody answers"));
            }
            context.log.line("read it");
            Ok(json!({"echo": input}))
        })
    }
}

/// A mutating action; `with_preview` says whether it can preview. `call` counts.
struct Change(Arc<AtomicUsize>, bool);
impl Action for Change {
    fn schema(&self) -> &'static Schema {
        &CHANGES
    }
    fn call(&self, _input: Value, _context: ActionContext) -> ActionFuture {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(json!({"done": 1})) })
    }
    fn preview(&self, input: Value, _context: ActionContext) -> Option<ActionFuture> {
        self.1.then(|| -> ActionFuture {
            Box::pin(async move {
                Ok(json!({"changes": [{"what": "x", "before": 1, "after": input["to"]}], "note": "x moves"}))
            })
        })
    }
}

fn registry(reads: &Arc<AtomicUsize>, changes: &Arc<AtomicUsize>) -> Registry {
    let mut registry = Registry::new();
    registry.register("test.read", Read(Arc::clone(reads)));
    registry.register("test.change", Change(Arc::clone(changes), true));
    registry.register("test.blind", Change(Arc::clone(changes), false));
    registry
}

async fn checked(text: &str, limits: CheckLimits) -> (Plan, usize, usize) {
    let definition = crate::definition::parse("t.toml", text).expect("a valid runbook");
    let (reads, changes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let actions = registry(&reads, &changes);
    let plan = check(
        Arc::new(definition),
        Map::new(),
        actions,
        limits,
        CancellationToken::new(),
    )
    .await
    .expect("a check");
    (
        plan,
        reads.load(Ordering::SeqCst),
        changes.load(Ordering::SeqCst),
    )
}

fn step<'a>(plan: &'a Plan, key: &str) -> &'a StepCheck {
    plan.steps
        .iter()
        .find(|step| step.key == key)
        .and_then(|step| step.check.as_ref())
        .unwrap_or_else(|| panic!("no check of {key}"))
}

const RUNBOOK: &str = r#"
name = "t"
version = 1

[params.n]
type = "int"
default = 2

[[steps]]
id = "first"
action = "test.read"
with = { n = "{{ params.n }}" }

[[steps]]
id = "second"
action = "test.read"
when = "steps.first.output.echo.n == 2"
with = { n = "{{ steps.first.output.echo.n + 1 }}" }

[[steps]]
id = "change"
action = "test.change"
when = "steps.second.state == 'succeeded'"
with = { to = "{{ steps.second.output.echo.n }}" }

[[steps]]
id = "blind"
action = "test.blind"
with = { x = 1 }

[[steps]]
id = "after"
action = "test.read"
when = "steps.change.state == 'succeeded'"
with = { n = "{{ steps.change.output.done }}" }

[[steps]]
id = "never"
action = "test.read"
when = "params.n == 3"
with = { n = 0 }

[[steps]]
id = "gate"
action = "approval"
with = { prompt = "go?" }
"#;

#[tokio::test]
async fn reads_feed_later_steps_and_mutating_steps_are_only_previewed() {
    let (plan, reads, changes) = checked(RUNBOOK, CheckLimits::default()).await;
    assert_eq!(changes, 0, "a mutating action was called");
    // first, second: `never` is skipped by its `when`, `after` needs a mutating step.
    assert_eq!(reads, 2);
    let first = step(&plan, "first");
    assert_eq!(first.status, "read");
    assert_eq!(first.log, vec!["read it".to_owned()]);
    let second = step(&plan, "second");
    assert_eq!((second.status, second.when), ("read", Some(true)));
    assert_eq!(second.output.as_ref().unwrap()["echo"]["n"], 3);
    let planned = plan.steps.iter().find(|step| step.key == "change").unwrap();
    assert_eq!(
        planned.input,
        json!({"to": 3}),
        "rendered with the read output"
    );
    let change = step(&plan, "change");
    assert_eq!(change.status, "would_change");
    assert_eq!(change.preview.as_ref().unwrap()["changes"][0]["after"], 3);
    let blind = step(&plan, "blind");
    assert_eq!(blind.status, "no_preview");
    assert_eq!(
        blind.note.as_deref(),
        Some(r#"no preview: would call test.blind with {"x":1}"#)
    );
    let after = step(&plan, "after");
    assert_eq!(after.status, "pending");
    assert!(
        after
            .note
            .as_deref()
            .unwrap()
            .contains("`steps.change` (a mutating step, not run)")
            && after
                .note
                .as_deref()
                .unwrap()
                .contains("`when` is decided at run time"),
        "{:?}",
        after.note
    );
    assert_eq!(step(&plan, "never").status, "skipped");
    assert_eq!(step(&plan, "gate").status, "described");
    let summary = plan.check.unwrap();
    assert_eq!(
        (
            summary.read,
            summary.would_change,
            summary.skipped,
            summary.described,
            summary.not_checked
        ),
        (2, 1, 1, 1, 2)
    );
    assert!(summary.limit_reached.is_none());
}

#[tokio::test]
async fn a_loop_over_items_read_by_the_check_is_checked_item_by_item() {
    let runbook = r#"
name = "t"
version = 1

[[steps]]
id = "list"
action = "test.read"
with = { items = ["a", "b"] }

[[steps]]
id = "each"
for_each = "{{ steps.list.output.echo.items }}"
as = "item"

  [[steps.steps]]
  id = "look"
  action = "test.read"
  with = { name = "{{ item }}" }

  [[steps.steps]]
  id = "touch"
  action = "test.change"
  with = { to = "{{ steps.look.output.echo.name }}" }
"#;
    let (plan, reads, changes) = checked(runbook, CheckLimits::default()).await;
    assert_eq!((reads, changes), (3, 0));
    let keys: Vec<&str> = plan.steps.iter().map(|step| step.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "list",
            "each",
            "each[0].look",
            "each[0].touch",
            "each[1].look",
            "each[1].touch"
        ]
    );
    assert_eq!(step(&plan, "each").status, "described");
    assert_eq!(
        step(&plan, "each[1].look").output.as_ref().unwrap()["echo"]["name"],
        "b"
    );
    let touch = step(&plan, "each[1].touch");
    assert_eq!(touch.preview.as_ref().unwrap()["changes"][0]["after"], "b");

    // More items than a check takes: listed, their steps not checked.
    let limits = CheckLimits {
        iterations: 1,
        ..CheckLimits::default()
    };
    let (plan, reads, _) = checked(runbook, limits).await;
    assert_eq!(reads, 1);
    let each = plan.steps.iter().find(|step| step.key == "each").unwrap();
    assert_eq!(each.input, json!(["a", "b"]));
    assert_eq!(step(&plan, "each[*].look").status, "not_checked");
}

#[tokio::test]
async fn each_call_and_the_whole_check_are_bounded() {
    let runbook = r#"
name = "t"
version = 1

[[steps]]
id = "slow"
action = "test.read"
with = { sleep_ms = 5000 }

[[steps]]
id = "slower"
action = "test.read"
with = { sleep_ms = 5000 }

[[steps]]
id = "late"
action = "test.read"
with = { n = 1 }

[[steps]]
id = "broken"
action = "test.read"
with = { fail = true }
"#;
    let limits = CheckLimits {
        call: Duration::from_millis(300),
        total: Duration::from_millis(500),
        iterations: 8,
    };
    let started = Instant::now();
    let (plan, _, _) = checked(runbook, limits).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let slow = step(&plan, "slow");
    assert_eq!(slow.status, "failed");
    assert!(
        slow.error
            .as_deref()
            .unwrap()
            .contains("the limit of one call"),
        "{:?}",
        slow.error
    );
    let slower = step(&plan, "slower");
    assert_eq!(slower.status, "failed");
    assert!(
        slower
            .error
            .as_deref()
            .unwrap()
            .contains("the rest of the check's time limit"),
        "{:?}",
        slower.error
    );
    for key in ["late", "broken"] {
        assert_eq!(step(&plan, key).status, "not_checked", "{key}");
    }
    let summary = plan.check.unwrap();
    assert_eq!((summary.failed, summary.not_checked), (2, 2));
    assert_eq!(summary.first_failure.as_deref(), Some("slow"));
    assert!(summary.limit_reached.is_some());
}

#[tokio::test]
async fn a_daemon_shutting_down_calls_nothing_more() {
    let definition = crate::definition::parse("t.toml", RUNBOOK).expect("a valid runbook");
    let (reads, changes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let draining = CancellationToken::new();
    draining.cancel();
    let plan = check(
        Arc::new(definition),
        Map::new(),
        registry(&reads, &changes),
        CheckLimits::default(),
        draining,
    )
    .await
    .expect("a check");
    assert_eq!(reads.load(Ordering::SeqCst), 0);
    let first = step(&plan, "first");
    assert_eq!(first.status, "not_checked");
    assert_eq!(
        first.note.as_deref(),
        Some("not checked: the daemon is shutting down")
    );
}

#[tokio::test]
async fn a_failed_read_is_shown_and_its_dependents_say_why_they_wait() {
    let runbook = r#"
name = "t"
version = 1

[[steps]]
id = "broken"
action = "test.read"
with = { fail = true }

[[steps]]
id = "uses"
action = "test.read"
with = { n = "{{ steps.broken.output.echo }}" }
"#;
    let (plan, reads, _) = checked(runbook, CheckLimits::default()).await;
    assert_eq!(reads, 1);
    let broken = step(&plan, "broken");
    assert_eq!(
        (broken.status, broken.error.as_deref()),
        ("failed", Some("nobody answers"))
    );
    let uses = step(&plan, "uses");
    assert_eq!(uses.status, "pending");
    assert!(uses
        .note
        .as_deref()
        .unwrap()
        .contains("failed in the check"));
}

#[test]
fn a_name_is_used_only_as_a_whole_name() {
    assert!(uses("{{ steps.before.output.x }}", "steps.before"));
    assert!(!uses("{{ steps.before_all.output }}", "steps.before"));
    assert!(!uses("{{ params.steps.before }}", "steps.before"));
    assert!(uses("{{ route.max }}", "route"));
    assert!(!uses("{{ reroute.max }}", "route"));
}
