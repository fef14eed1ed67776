//! The sled store behind its write-ahead log. What `kill -9` leaves behind is the data dir as it
//! is at that instant (the page cache survives a process crash): a copy of the dir taken right
//! after a `sync` must open, replaying the log, to exactly the runs that were acknowledged —
//! snapshots stored only now and then, the events after them replayed.

use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use serde_json::Map;
use uuid::Uuid;

use runbook_engine::definition;
use runbook_engine::machine::{self, Actor, Effect, Input, RunState, TimerId};
use runbook_engine::store::{Commit, SledStore, Store, SNAPSHOT_EVERY};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `noops` noop steps, then an approval (where the run parks).
fn definition(noops: usize) -> Arc<definition::Definition> {
    let mut text = String::from("name = \"long\"\n");
    for index in 0..noops {
        text.push_str(&format!(
            "[[steps]]\nid = \"s{index}\"\naction = \"noop\"\n"
        ));
    }
    text.push_str("[[steps]]\nid = \"gate\"\naction = \"approval\"\n");
    Arc::new(definition::parse("long.toml", &text).unwrap())
}

/// Starts a run and feeds it `Continue` up to `limit` times (or until it settles), committing
/// and syncing every decision as the daemon does.
fn drive(store: &SledStore, noops: usize, limit: usize) -> RunState {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let (mut state, mut decision) = machine::create(
        Uuid::from_u64_pair(1, RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
        definition(noops),
        Map::new(),
        Vec::new(),
        Actor::uid(1000),
        None,
        now,
    );
    store
        .stage(&Commit::new(0, &decision.events, &mut state, decision.settled()).unwrap())
        .unwrap();
    store.sync().unwrap();
    for _ in 0..limit {
        if !decision.effects.contains(&Effect::Continue) {
            break;
        }
        let expected = state.last_seq;
        let (mut next, next_decision) = machine::decide(&state, Input::Continue, now).unwrap();
        let commit = Commit::new(
            expected,
            &next_decision.events,
            &mut next,
            next_decision.settled(),
        )
        .unwrap();
        store.stage(&commit).unwrap();
        store.sync().unwrap();
        state = next;
        decision = next_decision;
    }
    state
}

#[test]
fn what_a_crash_leaves_opens_to_the_acknowledged_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("store")).unwrap();
    // Parked at its approval, many snapshots in; and one stopped between two steps.
    let parked = drive(&store, 3 * SNAPSHOT_EVERY as usize, usize::MAX);
    assert!(parked.is_parked());
    assert!(parked.last_seq > 2 * SNAPSHOT_EVERY);
    // (noop steps leave the run `waiting` between them, with a step to continue with.)
    let between = drive(&store, 100, 45);

    let crashed = dir.path().join("crashed");
    copy_dir(&dir.path().join("store"), &crashed);
    // A record torn by the crash after the last acknowledged one: the log ends before it.
    let wal = std::fs::read_dir(crashed.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|extension| extension == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    let end = bytes.iter().rposition(|byte| *byte != 0).unwrap() + 1;
    bytes[end..end + 24].copy_from_slice(&[0x5a; 24]);
    std::fs::write(&wal, bytes).unwrap();

    let reopened = SledStore::open(&crashed).unwrap();
    assert_eq!(
        reopened.load_run(parked.id).unwrap().as_ref(),
        Some(&parked)
    );
    assert_eq!(
        reopened.load_run(between.id).unwrap().as_ref(),
        Some(&between)
    );
    // Only the run that has work left is loaded at start-up.
    let active: Vec<Uuid> = reopened.active_run_ids().unwrap();
    assert_eq!(active, vec![between.id]);
    assert_eq!(
        reopened.events(parked.id).unwrap().len() as u64,
        parked.last_seq
    );
    assert!(reopened.verify().unwrap().is_empty());
    // And it goes on from there.
    drop(reopened);
    let store = SledStore::open(&crashed).unwrap();
    let again = drive(&store, 2, usize::MAX);
    assert_eq!(store.load_run(again.id).unwrap(), Some(again));
}

#[test]
fn a_clean_close_leaves_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = SledStore::open(&path).unwrap();
    let run = drive(&store, 40, usize::MAX);
    store.checkpoint().unwrap();
    drop(store);
    // The log holds no record: the only segment is empty past its header.
    let segments: Vec<_> = std::fs::read_dir(path.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let bytes = std::fs::read(&segments[0]).unwrap();
    assert!(bytes[8..].iter().all(|byte| *byte == 0));
    let store = SledStore::open(&path).unwrap();
    assert_eq!(store.load_run(run.id).unwrap(), Some(run));
}

/// A commit applied but not yet synced must leave no trace in what a crash leaves, even when
/// sled writes its buffers to its files meanwhile (large values fill them fast): the copy
/// holds exactly the acknowledged runs, every lock's holder exists, and nothing needs repair.
#[test]
fn an_unsynced_commit_leaves_no_part_of_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = SledStore::open(&path).unwrap();
    let acknowledged = drive(&store, 2, usize::MAX);
    let db_before = std::fs::metadata(path.join("db")).unwrap().len();
    // Many big runs, each taking a lock, applied and never synced.
    let big = "x".repeat(200 * 1024);
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut unacknowledged = Vec::new();
    for index in 0..40u64 {
        let mut params = Map::new();
        params.insert("blob".to_owned(), serde_json::Value::String(big.clone()));
        let (mut state, decision) = machine::create(
            Uuid::from_u64_pair(2, index),
            definition(1),
            params,
            vec![format!("big:{index}")],
            Actor::uid(1000),
            None,
            now,
        );
        store
            .stage(&Commit::new(0, &decision.events, &mut state, decision.settled()).unwrap())
            .unwrap();
        unacknowledged.push(state.id);
    }
    let db_between = std::fs::metadata(path.join("db")).unwrap().len();
    println!("sled's file: {db_before} bytes after the last sync, {db_between} before the next");

    let crashed = dir.path().join("crashed");
    copy_dir(&path, &crashed);
    let reopened = SledStore::open_unrepaired(&crashed).unwrap();
    assert_eq!(
        reopened.check().unwrap(),
        Vec::<String>::new(),
        "no derived index may need repair"
    );
    for (index, run_id) in unacknowledged.iter().enumerate() {
        assert_eq!(reopened.load_run(*run_id).unwrap(), None);
        assert_eq!(
            reopened.lock_holder(&format!("big:{index}")).unwrap(),
            None,
            "a lock of an unacknowledged commit survived"
        );
    }
    assert_eq!(
        reopened.load_run(acknowledged.id).unwrap(),
        Some(acknowledged.clone())
    );
    assert!(reopened.verify().unwrap().is_empty());
    // And the original store acknowledges them all at its next sync.
    store.sync().unwrap();
    assert!(store.load_run(unacknowledged[0]).unwrap().is_some());
    assert_eq!(store.lock_holder("big:0").unwrap(), Some(unacknowledged[0]));
}

/// The derived indexes are checked against the runs at open and repaired from them: an orphan
/// lock, a timer of no run, a run's timer missing from the index, wrong counters.
#[test]
fn derived_indexes_are_checked_and_repaired() {
    use runbook_engine::store::tables::{Op, Tables, Tree};
    use runbook_engine::store::{envelope, Journal, MemoryTables, TimerKey};

    let tables = MemoryTables::default();
    let store = Journal::over(tables);
    let run = drive_memory(&store);
    let tables = store.into_tables();
    let ghost = Uuid::from_u64_pair(9, 9);
    let ghost_timer = TimerKey::new(
        Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
        ghost,
        TimerId(3),
    );
    tables
        .write(&[
            Op {
                tree: Tree::Locks,
                key: b"orphan".to_vec(),
                value: Some(envelope::encode(&ghost).unwrap()),
            },
            Op {
                tree: Tree::Timers,
                key: ghost_timer.encode().to_vec(),
                value: Some(Vec::new()),
            },
        ])
        .unwrap();
    let checked = Journal::open_over(tables, None, false).unwrap();
    let problems = checked.check().unwrap();
    let text = problems.join("\n");
    assert!(
        text.contains(
            "lock \"orphan\" is held by run 00000000-0000-0009-0000-000000000009, which is no run"
        ),
        "{text}"
    );
    assert!(text.contains("timer 3 belongs to no run"), "{text}");
    assert!(text.contains("counters"), "{text}");
    let repaired = Journal::open_over(checked.into_tables(), None, true).unwrap();
    assert_eq!(repaired.check().unwrap(), Vec::<String>::new());
    assert_eq!(repaired.lock_holder("orphan").unwrap(), None);
    assert_eq!(repaired.next_timer().unwrap().map(|key| key.run_id), None);
    assert_eq!(
        repaired.load_run(run).unwrap().map(|state| state.id),
        Some(run)
    );
}

#[test]
fn verify_reads_users_tokens_and_notifications() {
    use runbook_engine::store::tables::{Op, Tables, Tree};
    use runbook_engine::store::{AccessCommit, Journal, MemoryTables, OutboxCommit};

    let store = Journal::over(MemoryTables::default());
    let user = runbook_engine::access::User {
        name: "alice".into(),
        role: runbook_engine::access::Role::Approver,
        runbooks: None,
        created_at: Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap(),
        created_by: "uid 0".into(),
    };
    store
        .stage_access(&AccessCommit {
            changes: vec![(
                "user/alice".into(),
                Some(runbook_engine::store::envelope::encode(&user).unwrap()),
            )],
        })
        .unwrap();
    store.sync().unwrap();
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    store
        .stage_outbox(&OutboxCommit {
            changes: vec![(
                [Uuid::from_u64_pair(1, 2).as_bytes().as_slice(), b"x-hook"].concat(),
                Some(b"not an envelope".to_vec()),
            )],
        })
        .unwrap();
    store.sync().unwrap();
    let tables = store.into_tables();
    tables
        .write(&[Op {
            tree: Tree::Access,
            key: b"token/00".to_vec(),
            value: Some(b"garbage".to_vec()),
        }])
        .unwrap();
    let store = Journal::open_over(tables, None, false).unwrap();
    let problems = store.verify().unwrap().join("\n");
    assert!(problems.contains("access/token/00"), "{problems}");
    assert!(
        problems.contains("outbox/00000000-0000-0001-0000-000000000002/x-hook"),
        "{problems}"
    );
    assert!(!problems.contains("user/alice"), "{problems}");
}

/// A parked run in a store over any tables.
fn drive_memory<T: runbook_engine::store::tables::Tables>(
    store: &runbook_engine::store::Journal<T>,
) -> Uuid {
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let (mut state, decision) = machine::create(
        Uuid::from_u64_pair(3, 1),
        definition(0),
        Map::new(),
        vec!["held".to_owned()],
        Actor::uid(1000),
        None,
        now,
    );
    store
        .stage(&Commit::new(0, &decision.events, &mut state, decision.settled()).unwrap())
        .unwrap();
    store.sync().unwrap();
    state.id
}

/// A finished run's journal is folded: its last event keeps its key, the others go into one
/// compressed record (with the final snapshot, compressed too). What a crash leaves right after
/// the finishing commit reads back whole, refuses a new run of the same id, takes damage to the
/// record as a corrupt run named in `verify`, and a collection removes the record with the run.
/// A 10-step `noop` run `id`, committed to its end as the daemon does (not synced): its
/// definition, final state and events.
fn finish(
    store: &impl Store,
    id: Uuid,
) -> (Arc<definition::Definition>, RunState, Vec<machine::Event>) {
    let mut text = String::from("name = \"short\"\n");
    for index in 0..10 {
        text.push_str(&format!(
            "[[steps]]\nid = \"s{index}\"\naction = \"noop\"\n"
        ));
    }
    let definition = Arc::new(definition::parse("short.toml", &text).unwrap());
    let (mut state, decision) = machine::create(
        id,
        definition.clone(),
        Map::new(),
        Vec::new(),
        Actor::uid(1000),
        None,
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    );
    store
        .stage(&Commit::new(0, &decision.events, &mut state, decision.settled()).unwrap())
        .unwrap();
    let mut events = decision.events.clone();
    if decision.effects.contains(&Effect::Continue) {
        let (end, more) = go_on(store, state, Input::Continue);
        state = end;
        events.extend(more);
    }
    assert!(state.status.is_terminal(), "{:?}", state.status);
    (definition, state, events)
}

/// Feeds `input` to a run, then `Continue` while it asks for it, committing each decision
/// (not synced): its state then, and the new events.
fn go_on(store: &impl Store, mut state: RunState, input: Input) -> (RunState, Vec<machine::Event>) {
    let now = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
    let mut input = Some(input);
    let mut events = Vec::new();
    while let Some(next_input) = input.take() {
        let (mut next, decision) = machine::decide(&state, next_input, now).unwrap();
        store
            .stage(
                &Commit::new(
                    state.last_seq,
                    &decision.events,
                    &mut next,
                    decision.settled(),
                )
                .unwrap(),
            )
            .unwrap();
        events.extend(decision.events.iter().cloned());
        state = next;
        if decision.effects.contains(&Effect::Continue) {
            input = Some(Input::Continue);
        }
    }
    (state, events)
}

#[test]
fn a_finished_runs_journal_is_folded_and_reads_back_whole() {
    use runbook_engine::store::tables::{scan_prefix, Tables, Tree};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = SledStore::open(&path).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let id = Uuid::from_u64_pair(7, 7);
    let (definition, state, events) = finish(&store, id);
    assert!(state.status.is_terminal(), "{:?}", state.status);
    store.sync().unwrap();
    let crashed = dir.path().join("crashed");
    copy_dir(&path, &crashed);
    drop(store);

    let store = SledStore::open(&crashed).unwrap();
    let as_json = |events: &[machine::Event]| serde_json::to_value(events).unwrap();
    assert_eq!(as_json(&store.events(id).unwrap()), as_json(&events));
    assert_eq!(store.load_run(id).unwrap(), Some(state.clone()));
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    // A new run may not take the id of a folded one.
    let (mut again, created) = machine::create(
        id,
        definition,
        Map::new(),
        Vec::new(),
        Actor::uid(1000),
        None,
        now,
    );
    let refused = store.stage(&Commit::new(0, &created.events, &mut again, false).unwrap());
    assert!(
        matches!(refused, Err(runbook_engine::store::Error::Conflict { .. })),
        "{refused:?}"
    );
    let tables = store.into_tables();
    let keyed: Vec<u64> = scan_prefix(&tables, Tree::Events, id.as_bytes(), false)
        .map(|entry| u64::from_be_bytes(entry.unwrap().0[16..24].try_into().unwrap()))
        .collect();
    assert_eq!(
        keyed,
        vec![state.last_seq],
        "only the last event keeps its key"
    );
    let record = tables.get(Tree::Folded, id.as_bytes()).unwrap().unwrap();
    let snapshot = tables.get(Tree::Runs, id.as_bytes()).unwrap().unwrap();
    let plain: usize = events
        .iter()
        .map(|event| serde_json::to_vec(event).unwrap().len())
        .sum();
    assert!(
        record.len() + snapshot.len() < plain / 2,
        "folded {} + snapshot {} bytes for {plain} bytes of events",
        record.len(),
        snapshot.len()
    );

    // Damage to the record: the run is corrupt, named.
    let mut damaged = record.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    tables
        .write(&[runbook_engine::store::tables::Op {
            tree: Tree::Folded,
            key: id.as_bytes().to_vec(),
            value: Some(damaged),
        }])
        .unwrap();
    let store = runbook_engine::store::Journal::over(tables);
    let problems = store.verify().unwrap().join("\n");
    assert!(problems.contains(&format!("folded/{id}")), "{problems}");
    assert!(store.load_run(id).is_err());

    // Collected: nothing of it is left.
    assert_eq!(store.collect(&[id]).unwrap(), vec![id]);
    store.sync().unwrap();
    let tables = store.into_tables();
    assert_eq!(tables.get(Tree::Folded, id.as_bytes()).unwrap(), None);
    assert_eq!(
        scan_prefix(&tables, Tree::Events, id.as_bytes(), false).count(),
        0
    );
}

/// Moves every finished run to the archive, `batch` at a time, as the archiver does.
fn archive_all(store: &SledStore, batch: usize) {
    let mut after = None;
    loop {
        let (prepared, cursor) = store.archive_prepare(after, batch).unwrap();
        let Some(cursor) = cursor else { break };
        after = Some(cursor);
        store.archive_commit(&prepared).unwrap();
        store.sync().unwrap();
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir.join("archive"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".seg"))
        .collect();
    found.sort();
    found
}

#[test]
fn finished_runs_move_to_the_archive_whole_and_come_back_for_a_rollback() {
    use runbook_engine::store::tables::{Tables, Tree};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = SledStore::open(&path).unwrap();
    let ids: Vec<Uuid> = (1..=3).map(|n| Uuid::from_u64_pair(9, n)).collect();
    let runs: Vec<_> = ids.iter().map(|id| finish(&store, *id)).collect();
    store.sync().unwrap();
    let as_json = |events: &[machine::Event]| serde_json::to_value(events).unwrap();
    let reads_back = |store: &SledStore, index: usize| {
        let (_, state, events) = &runs[index];
        assert_eq!(store.load_run(ids[index]).unwrap().as_ref(), Some(state));
        assert_eq!(as_json(&store.events(ids[index]).unwrap()), as_json(events));
    };

    // Written to the archive and synced, not yet moved: a crash here loses nothing, and the
    // entries nobody points at go with their segment.
    let (prepared, cursor) = store.archive_prepare(None, 2).unwrap();
    assert_eq!(
        prepared.iter().map(|run| run.run_id).collect::<Vec<_>>(),
        ids[..2]
    );
    assert_eq!(cursor, Some(ids[1]));
    let crashed = dir.path().join("crashed");
    copy_dir(&path, &crashed);
    {
        let store = SledStore::open(&crashed).unwrap();
        assert!(segments(&crashed).is_empty(), "{:?}", segments(&crashed));
        for index in 0..3 {
            reads_back(&store, index);
        }
        assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    }

    assert_eq!(store.archive_commit(&prepared).unwrap(), ids[..2]);
    store.sync().unwrap();
    let (rest, _) = store.archive_prepare(Some(ids[1]), 10).unwrap();
    assert_eq!(store.archive_commit(&rest).unwrap(), ids[2..]);
    store.sync().unwrap();
    // Moved twice is moved once: the second commit finds the run gone from the tables.
    assert!(store.archive_commit(&rest).unwrap().is_empty());
    store.sync().unwrap();
    assert_eq!(store.archive_prepare(None, 10).unwrap().0.len(), 0);
    for index in 0..3 {
        reads_back(&store, index);
    }
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    assert_eq!(store.find_runs(&ids[0].as_bytes()[..8], 10).unwrap(), ids);
    drop(store);

    // Reopened: read from the archive, and the tables hold none of their records.
    let store = SledStore::open(&path).unwrap();
    for index in 0..3 {
        reads_back(&store, index);
    }
    let tables = store.into_tables();
    for id in &ids {
        for tree in [Tree::Runs, Tree::Folded] {
            assert_eq!(tables.get(tree, id.as_bytes()).unwrap(), None, "{tree:?}");
        }
        let line = tables.get(Tree::Listings, id.as_bytes()).unwrap().unwrap();
        assert!(
            String::from_utf8_lossy(&line).contains("\"archived\""),
            "{line:?}"
        );
    }
    drop(tables);

    // A rollback reopens a finished run: its records come back, the commit goes on from
    // its last event, and it is archived again when it ends.
    let store = SledStore::open(&path).unwrap();
    let (definition, state, mut events) = runs[0].clone();
    let (rolled_back, more) = go_on(
        &store,
        state,
        Input::Rollback {
            by: Actor::uid(1000),
            comment: None,
        },
    );
    assert_eq!(rolled_back.status.name(), "rolled_back");
    events.extend(more);
    store.sync().unwrap();
    assert_eq!(store.load_run(ids[0]).unwrap(), Some(rolled_back.clone()));
    assert_eq!(as_json(&store.events(ids[0]).unwrap()), as_json(&events));
    let (again, _) = store.archive_prepare(None, 10).unwrap();
    assert_eq!(store.archive_commit(&again).unwrap(), ids[..1]);
    store.sync().unwrap();
    assert_eq!(store.load_run(ids[0]).unwrap(), Some(rolled_back));
    assert_eq!(as_json(&store.events(ids[0]).unwrap()), as_json(&events));
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());

    // A new run may not take an archived run's id.
    let (mut reused, created) = machine::create(
        ids[1],
        definition,
        Map::new(),
        Vec::new(),
        Actor::uid(1000),
        None,
        Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap(),
    );
    let refused = store.stage(&Commit::new(0, &created.events, &mut reused, false).unwrap());
    assert!(
        matches!(refused, Err(runbook_engine::store::Error::Conflict { .. })),
        "{refused:?}"
    );
    drop(store);

    // Damage to an entry: the run is corrupt, named with where it is.
    let first = path.join("archive").join(&segments(&path)[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    // (In the last entry of the first segment, the third run's: the first entry is the first
    // run's before its rollback, which nothing points at any more.)
    let last = bytes.len() - 100;
    bytes[last] ^= 0x20;
    std::fs::write(&first, &bytes).unwrap();
    let store = SledStore::open(&path).unwrap();
    let problems = store.verify().unwrap().join("\n");
    assert!(problems.contains("checksum"), "{problems}");
    assert!(problems.contains(&segments(&path)[0]), "{problems}");
    assert!(problems.contains(&ids[2].to_string()), "{problems}");
    assert!(store.load_run(ids[2]).is_err());

    // Collected: the pointers go, then the segments, and their bytes come back.
    assert_eq!(store.collect(&ids).unwrap(), ids);
    store.sync().unwrap();
    assert!(!segments(&path).is_empty());
    assert!(store.archive_tidy(false).unwrap() > 0);
    assert!(segments(&path).is_empty(), "{:?}", segments(&path));
    // The segment appends go to is left to the archiver's own call (an entry in it may
    // still wait for its commit).
    let late = Uuid::from_u64_pair(9, 4);
    finish(&store, late);
    store.sync().unwrap();
    let (prepared, _) = store.archive_prepare(None, 10).unwrap();
    assert_eq!(store.archive_commit(&prepared).unwrap(), vec![late]);
    store.sync().unwrap();
    assert_eq!(store.collect(&[late]).unwrap(), vec![late]);
    store.sync().unwrap();
    assert_eq!(store.archive_tidy(false).unwrap(), 0);
    assert_eq!(segments(&path).len(), 1);
    assert!(store.archive_tidy(true).unwrap() > 0);
    assert!(segments(&path).is_empty(), "{:?}", segments(&path));
    for id in ids.iter().chain([&late]) {
        assert_eq!(store.load_run(*id).unwrap(), None);
    }
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn a_run_read_while_the_archiver_moves_it_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let runs: Vec<(Uuid, RunState, serde_json::Value)> = (1..=120)
        .map(|n| {
            let id = Uuid::from_u64_pair(11, n);
            let (_, state, events) = finish(store.as_ref(), id);
            (id, state, serde_json::to_value(events).unwrap())
        })
        .collect();
    store.sync().unwrap();
    let runs = Arc::new(runs);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let (store, runs, done) = (store.clone(), runs.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    for (id, state, events) in runs.iter().skip(reader).step_by(2) {
                        let loaded = store.load_run(*id).unwrap();
                        assert!(
                            loaded.as_ref() == Some(state),
                            "run {id} read as {loaded:?}"
                        );
                        let read = serde_json::to_value(store.events(*id).unwrap()).unwrap();
                        assert!(
                            &read == events,
                            "run {id}: {} events read, {} stored",
                            read.as_array().map_or(0, Vec::len),
                            events.as_array().map_or(0, Vec::len)
                        );
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    archive_all(store.as_ref(), 4);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(store.archive_prepare(None, 10).unwrap().0.len(), 0);
}

#[test]
fn verify_while_the_archiver_moves_runs_finds_no_problem_that_is_not_one() {
    // `store verify` reads a daemon's store while runs finish and move to the archive: a run
    // archived between the scan of the pointers and the read of the counts, or between its
    // snapshot and its events, must not be reported as a broken store.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    for n in 1..=300 {
        finish(store.as_ref(), Uuid::from_u64_pair(12, n));
    }
    store.sync().unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let verifier = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut passes = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || passes == 0 {
                let problems = store.verify().unwrap();
                assert!(problems.is_empty(), "verify pass {passes}: {problems:?}");
                passes += 1;
            }
            passes
        })
    };
    archive_all(store.as_ref(), 1);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(verifier.join().unwrap() > 0);
    assert!(store.verify().unwrap().is_empty());
}

/// A store as format 5 left it (pointers into the archive in a tree of their own, runs indexed
/// by state, by runbook and by finish time) opens upgraded: every run reads back, lists and
/// expires as before, `verify` finds nothing, and the old trees are empty.
#[test]
fn a_format_5_store_is_upgraded_when_it_opens() {
    use runbook_engine::machine::RunStatus;
    use runbook_engine::store::envelope;
    use runbook_engine::store::listing::{ListQuery, Listing};
    use runbook_engine::store::tables::{Op, Tables, Tree};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = SledStore::open(&path).unwrap();
    let ids: Vec<Uuid> = (1..=4).map(|n| Uuid::from_u64_pair(9, n)).collect();
    let runs: Vec<_> = ids.iter().map(|id| finish(&store, *id)).collect();
    store.sync().unwrap();
    // Two archived, two still in the tables, and one that waits.
    let (prepared, _) = store.archive_prepare(None, 2).unwrap();
    assert_eq!(store.archive_commit(&prepared).unwrap(), ids[..2]);
    store.sync().unwrap();
    let waiting = drive(&store, 3, 0);
    let queries = [
        ListQuery {
            all: true,
            limit: 10,
            ..ListQuery::default()
        },
        ListQuery {
            limit: 10,
            ..ListQuery::default()
        },
        ListQuery {
            state: Some(RunStatus::Succeeded),
            limit: 3,
            ..ListQuery::default()
        },
        ListQuery {
            runbook: Some("short".to_owned()),
            all: true,
            limit: 10,
            ..ListQuery::default()
        },
    ];
    let listed = |store: &SledStore| -> Vec<Vec<(Uuid, String)>> {
        queries
            .iter()
            .map(|query| {
                let page = store.list(query).unwrap();
                page.runs
                    .into_iter()
                    .map(|(id, line)| (id, line.unwrap().state))
                    .collect()
            })
            .collect()
    };
    let before = listed(&store);
    assert_eq!(before[0].len(), 5);
    assert_eq!(
        before[1],
        vec![(waiting.id, waiting.status.name().to_owned())]
    );
    assert_eq!(before[2].len(), 3);
    assert_eq!(before[3].len(), 4);
    let counts = store.counts().unwrap();
    drop(store);

    // Written back as format 5 kept it.
    let tables = SledStore::open(&path).unwrap().into_tables();
    let mut ops = Vec::new();
    for entry in tables.scan(
        Tree::Listings,
        std::ops::Bound::Unbounded,
        std::ops::Bound::Unbounded,
        false,
    ) {
        let (key, bytes) = entry.unwrap();
        let id = Uuid::from_slice(&key).unwrap();
        let mut line: Listing = envelope::decode(&|| "line".to_owned(), &bytes).unwrap();
        let index = [
            line.state.as_bytes(),
            &[0],
            line.runbook.as_bytes(),
            &[0],
            id.as_bytes(),
        ]
        .concat();
        ops.push(Op {
            tree: Tree::ByStateRunbook,
            key: index,
            value: None,
        });
        let by = |name: &str| [name.as_bytes(), &[0], id.as_bytes()].concat();
        ops.push(Op {
            tree: Tree::ByState,
            key: by(&line.state),
            value: Some(Vec::new()),
        });
        ops.push(Op {
            tree: Tree::ByRunbook,
            key: by(&line.runbook),
            value: Some(Vec::new()),
        });
        if let Some(finished_at) = line.finished_at {
            let ms = u64::try_from(finished_at.timestamp_millis()).unwrap();
            ops.push(Op {
                tree: Tree::Finished,
                key: [&ms.to_be_bytes()[..], id.as_bytes()].concat(),
                value: Some(Vec::new()),
            });
        }
        if let Some(pointer) = line.archived.take() {
            ops.push(Op {
                tree: Tree::Archived,
                key: key.clone(),
                value: Some(pointer.encode()),
            });
            ops.push(Op {
                tree: Tree::Listings,
                key,
                value: Some(envelope::encode(&line).unwrap()),
            });
        }
    }
    ops.push(Op {
        tree: Tree::Meta,
        key: b"format".to_vec(),
        value: Some(envelope::encode(&5u32).unwrap()),
    });
    tables.write(&ops).unwrap();
    assert_eq!(
        tables
            .scan(
                Tree::ByStateRunbook,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                false
            )
            .count(),
        0
    );
    assert_eq!(
        tables
            .scan(
                Tree::Archived,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                false
            )
            .count(),
        2
    );
    drop(tables);

    let store = SledStore::open(&path).unwrap();
    assert_eq!(listed(&store), before);
    assert_eq!(store.counts().unwrap(), counts);
    for (index, (_, state, _)) in runs.iter().enumerate() {
        assert_eq!(store.load_run(ids[index]).unwrap().as_ref(), Some(state));
    }
    assert_eq!(store.load_run(waiting.id).unwrap().as_ref(), Some(&waiting));
    let expired: Vec<Uuid> = store
        .expired_runs(u64::MAX, None, 10)
        .unwrap()
        .into_iter()
        .map(|expired| expired.run_id)
        .collect();
    assert_eq!(expired, ids);
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    // The archived runs go with their lines, the segment with its last run.
    assert_eq!(store.collect(&ids).unwrap(), ids);
    store.sync().unwrap();
    assert_eq!(store.verify().unwrap(), Vec::<String>::new());
    let tables = store.into_tables();
    for tree in [
        Tree::ByState,
        Tree::ByRunbook,
        Tree::Finished,
        Tree::Archived,
    ] {
        let left = tables
            .scan(
                tree,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                false,
            )
            .count();
        assert_eq!(left, 0, "{tree:?}");
    }
}
