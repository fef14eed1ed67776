//! Canonical runs written as scripts, snapshotted as transcripts (see `check`).

use super::*;

#[test]
fn happy_path_exec_wait_exec() {
    check(
        "happy_path_exec_wait_exec",
        r#"
name = "happy"

[[steps]]
id = "first"
action = "exec"
with = { command = "echo first" }

[[steps]]
id = "settle"
action = "wait"
with = { duration = "3s" }

[[steps]]
id = "last"
action = "exec"
with = { command = "echo late by {{ steps.settle.output.late_by_ms }} ms" }
"#,
        "
ok first
expect waiting
advance 2s
expect waiting
advance 1s
expect running
ok last
expect succeeded
",
    );
}

#[test]
fn retry_with_backoff_then_success() {
    check(
        "retry_with_backoff_then_success",
        r#"
name = "flaky"

[[steps]]
id = "flaky"
action = "exec"
with = { command = "flaky-thing" }
retry = { max_attempts = 3, backoff = "1s" }
"#,
        "
fail flaky
# attempt 2 after 1s
advance 999ms
advance 1ms
fail flaky
# attempt 3 after 2s: the backoff doubles
advance 1s
advance 1s
ok flaky
expect succeeded
",
    );
}

#[test]
fn retries_exhausted_need_attention() {
    check(
        "retries_exhausted_need_attention",
        r#"
name = "flaky"

[[steps]]
id = "flaky"
action = "exec"
with = { command = "flaky-thing" }
retry = { max_attempts = 2, backoff = "1s" }
"#,
        "
fail flaky
advance 1s
fail flaky
expect needs_attention
retry flaky
ok flaky
expect succeeded
",
    );
}

#[test]
fn until_every_polls_three_times() {
    check(
        "until_every_polls_three_times",
        r#"
name = "poll"

[[steps]]
id = "lag"
action = "exec"
with = { command = "lag", parse = "json" }
until = "output.lag == 0"
every = "2s"
idempotent = true

[[steps]]
id = "after"
action = "noop"
with = { last_lag = "{{ steps.lag.output.lag }}" }
"#,
        r#"
ok lag {"lag": 7}
advance 1s
advance 1s
ok lag {"lag": 3}
advance 2s
ok lag {"lag": 0}
expect succeeded
"#,
    );
}

#[test]
fn serial_for_each_three_items_two_nested_steps() {
    check(
        "serial_for_each_three_items_two_nested_steps",
        r#"
name = "rolling"

[[steps]]
id = "rolling"
for_each = ["a", "b", "c"]
as = "host"
serial = 1

  [[steps.steps]]
  id = "drain"
  action = "exec"
  with = { command = "drain {{ host }} ({{ index }})" }

  [[steps.steps]]
  id = "check"
  action = "exec"
  with = { command = "check {{ host }} after {{ steps.drain.output.exit_code }}" }

[[steps]]
id = "done"
action = "noop"
"#,
        "
ok rolling[0].drain
ok rolling[0].check
ok rolling[1].drain
ok rolling[1].check
ok rolling[2].drain
ok rolling[2].check
expect succeeded
",
    );
}

#[test]
fn parallel_for_each_window_of_two() {
    check(
        "parallel_for_each_window_of_two",
        r#"
name = "parallel"

[[steps]]
id = "fan"
for_each = ["a", "b", "c"]
parallel = 2

  [[steps.steps]]
  id = "work"
  action = "exec"
  with = { command = "work {{ item }}" }
"#,
        "
ok fan[1].work
ok fan[0].work
ok fan[2].work
expect succeeded
",
    );
}

pub(crate) const ROLLBACK: &str = r#"
name = "rollback"

[[steps]]
id = "one"
action = "exec"
with = { command = "create one" }
undo = { action = "exec", with = { command = "delete one (exit {{ output.exit_code }})" } }

[[steps]]
id = "two"
action = "exec"
with = { command = "create two" }
undo = { action = "exec", with = { command = "delete two" } }

[[steps]]
id = "gate"
action = "approval"
with = { prompt = "go on?" }

[[steps]]
id = "three"
action = "exec"
with = { command = "create three" }
undo = { action = "exec", with = { command = "delete three" } }
"#;

#[test]
fn approval_then_failure_then_rollback_in_reverse_order() {
    check(
        "approval_then_failure_then_rollback_in_reverse_order",
        ROLLBACK,
        "
ok one
ok two
expect waiting
approve
fail! three
expect needs_attention
# three failed, so only two and one are undone
rollback
undo-ok two
undo-ok one
expect rolled_back
",
    );
}

#[test]
fn rollback_of_a_succeeded_run() {
    check(
        "rollback_of_a_succeeded_run",
        ROLLBACK,
        "
ok one
ok two
approve
ok three
expect succeeded
rollback
undo-ok three
undo-fail two
expect needs_attention
retry two
undo-ok two
undo-ok one
expect rolled_back
",
    );
}

#[test]
fn pause_during_wait_and_resume_rearms_remaining_time() {
    check(
        "pause_during_wait_and_resume_rearms_remaining_time",
        r#"
name = "pause"

[[steps]]
id = "soak"
action = "wait"
with = { duration = "10s" }

[[steps]]
id = "after"
action = "exec"
with = { command = "after" }
"#,
        "
advance 4s
pause
expect paused
advance 1m
expect paused
resume
# 6s were left
advance 5s
expect waiting
advance 1s
expect running
ok after
expect succeeded
",
    );
}

#[test]
fn crash_during_non_idempotent_exec_needs_attention_then_retry() {
    check(
        "crash_during_non_idempotent_exec_needs_attention_then_retry",
        r#"
name = "crash"

[[steps]]
id = "migrate"
action = "exec"
with = { command = "migrate --once" }

[[steps]]
id = "report"
action = "exec"
with = { command = "report" }
idempotent = true
"#,
        "
restart
expect needs_attention
retry migrate
ok migrate
restart
# report is idempotent: it is re-run at once
expect running
ok report
expect succeeded
",
    );
}

#[test]
fn crash_during_exec_reattached_by_its_note() {
    check(
        "crash_during_exec_reattached_by_its_note",
        r#"
name = "reattach"

[[steps]]
id = "migrate"
action = "exec"
with = { command = "migrate --once" }

[[steps]]
id = "report"
action = "noop"
"#,
        r#"
note migrate {"pid": 4242, "boot": "b1"}
# the action follows the command that still runs: no interruption, no second run
restart reattach
expect running
ok migrate
expect succeeded
"#,
    );
}

#[test]
fn crash_after_a_yield_loses_no_step() {
    check(
        "crash_after_a_yield_loses_no_step",
        r#"
name = "yield"

[[steps]]
id = "first"
action = "exec"
with = { command = "first" }

[[steps]]
id = "mark"
action = "noop"

[[steps]]
id = "last"
action = "exec"
with = { command = "last" }
"#,
        "
crash-at-yield
# mark ends inside this decision, which yields; the daemon dies before it continues
ok first
expect running
ok last
expect succeeded
",
    );
}

#[test]
fn crash_during_rollback_interrupts_the_undo() {
    check(
        "crash_during_rollback_interrupts_the_undo",
        ROLLBACK,
        "
ok one
ok two
rollback
restart
expect needs_attention
retry two
undo-ok two
undo-ok one
expect rolled_back
",
    );
}

#[test]
fn durable_timers_survive_a_crash_and_fire_late() {
    check(
        "durable_timers_survive_a_crash_and_fire_late",
        r#"
name = "crash-wait"

[[steps]]
id = "soak"
action = "wait"
with = { duration = "1h" }

[[steps]]
id = "after"
action = "noop"
with = { late_by_ms = "{{ steps.soak.output.late_by_ms }}" }
"#,
        "
advance 10m
restart
expect waiting
advance 40m
# the daemon is down when the timer falls due; it fires on restart, 10 minutes late
down 20m
expect succeeded
",
    );
}

#[test]
fn cancel_aborts_the_call_and_disarms_timers() {
    check(
        "cancel_aborts_the_call_and_disarms_timers",
        r#"
name = "cancel"

[[steps]]
id = "slow"
action = "exec"
with = { command = "sleep 100" }
timeout = "1m"
"#,
        "
advance 10s
cancel
expect canceled
# the aborted call reports: only that it ended is recorded
late slow
",
    );
}

#[test]
fn timeout_aborts_the_call() {
    check(
        "timeout_aborts_the_call",
        r#"
name = "timeout"

[[steps]]
id = "slow"
action = "exec"
with = { command = "sleep 100" }
timeout = "1m"
on_failure = "continue"

[[steps]]
id = "after"
action = "noop"
"#,
        "
advance 1m
expect succeeded
late slow
",
    );
}

#[test]
fn rollback_while_a_step_runs_undoes_its_late_success() {
    // The step's command ignores the stop and runs to its end: its change is made, so its result
    // is journaled and its undo runs before the rollback goes on.
    check(
        "rollback_while_a_step_runs_undoes_its_late_success",
        r#"
name = "stubborn"

[[steps]]
id = "prepare"
action = "exec"
with = { command = "prepare" }
undo = { action = "exec", with = { command = "unprepare" } }

[[steps]]
id = "change"
action = "exec"
with = { command = "trap '' TERM; sleep 1; echo did >> F" }
undo = { action = "exec", with = { command = "echo undone >> F" } }
"#,
        "
ok prepare
rollback
# the rollback waits for the aborted call
expect waiting
late-ok change
expect running
undo-ok change
undo-ok prepare
expect rolled_back
",
    );
}

#[test]
fn calls_that_never_started_are_started_again_after_a_restart() {
    // Neither the step's nor the undo's supervisor was released when the daemon stopped: both
    // are journaled as never started and started again, although neither is idempotent.
    check(
        "calls_that_never_started_are_started_again_after_a_restart",
        r#"
name = "unreleased"

[[steps]]
id = "first"
action = "exec"
with = { command = "echo first >> F" }
undo = { action = "exec", with = { command = "echo unfirst >> F" } }

[[steps]]
id = "second"
action = "exec"
with = { command = "echo second >> F" }
"#,
        "
restart never-started
expect running
ok first
restart never-started
ok second
expect succeeded
rollback
restart never-started
undo-ok first
expect rolled_back
",
    );
}
