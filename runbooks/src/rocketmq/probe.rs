//! `rocketmq.probe`: prove that one broker takes writes and serves reads — send one message to a
//! queue of `topic` on `broker`, then pull it back from that queue at the offset the broker
//! acknowledged, as a consumer would.
//!
//! Input: `namesrv`, `broker` (the group's name: the message goes to its master), `topic` (must
//! exist on the broker; use a topic kept for probes: the message stays in it), `queue_id`
//! (default 0), `timeout` (for the send and for the read back, default 10s).
//!
//! Output: `broker`, `topic`, `queue_id`, `queue_offset`, `msg_id`, `key` (a unique key, the
//! run, step and attempt), `send_ms`, `read_ms`.
//!
//! # Contract
//!
//! The step fails when the broker refuses the send (its answer, e.g. no write permission, is the
//! error), or when the message it acknowledged cannot be pulled back from that queue within
//! `timeout` (what was found instead is named). Both failures are retryable: a broker that has
//! just started may still be loading its routes.

// The classic pull consumer reads one queue at an explicit offset, which is exactly the check;
// its replacement (the lite pull consumer) rebalances and seeks, more machinery for one read.
#![allow(deprecated)]

use std::time::{Duration, Instant};

use rocketmq_client_rust::{DefaultMQProducer, DefaultMQPullConsumer};
use rocketmq_model::common::message::message_single::Message;
use rocketmq_model::message::MessageQueue;
use runbook_engine::action::schema::{optional, Kind, Schema};
use runbook_engine::action::{ActionContext, ActionFailure};
use serde_json::{json, Value};

use super::input::Input;
use super::session::{client_runtime, explain};

/// The input of `rocketmq.probe` (mutates: it writes one message).
pub const SCHEMA: Schema = Schema {
    mutates: true,
    open: false,
    keys: &[
        super::input::NAMESRV,
        optional(
            "broker",
            Kind::Text,
            "the broker group whose master takes the message",
        )
        .required(),
        optional(
            "topic",
            Kind::Text,
            "a topic on the broker, kept for probes (the message stays in it)",
        )
        .required(),
        optional(
            "queue_id",
            Kind::Int,
            "the queue written and read (default 0)",
        ),
        optional(
            "timeout",
            Kind::Duration,
            "for the send and for the read back (default 10s)",
        ),
    ],
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(input: Value, context: ActionContext) -> Result<Value, ActionFailure> {
    let input = Input::new("rocketmq.probe", &input);
    let namesrv = input.namesrv()?.join(";");
    let broker = input.string("broker")?;
    let topic = input.string("topic")?;
    let queue_id = input.opt_u32("queue_id")?.unwrap_or(0);
    if queue_id > 1023 {
        return Err(input.bad("queue_id", format!("{queue_id} is above 1023")));
    }
    let timeout = input.opt_duration("timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(input.bad("timeout", "must be between 1ms and 5m"));
    }
    let key = format!(
        "runbook-probe-{}-{}-{}",
        context.run_id, context.step, context.attempt
    );
    let queue = MessageQueue::from_parts(topic.as_str(), broker.as_str(), queue_id as i32);
    tokio::select! {
        result = probe(&namesrv, queue, &key, timeout) => result,
        () = context.cancel.cancelled() => Err(ActionFailure::retryable("cancelled")),
    }
}

async fn probe(
    namesrv: &str,
    queue: MessageQueue,
    key: &str,
    timeout: Duration,
) -> Result<Value, ActionFailure> {
    let runtime = client_runtime().map_err(ActionFailure::permanent)?;
    let millis = timeout.as_millis() as u64;
    let broker = queue.broker_name().to_string();
    let topic = queue.topic().to_string();

    let mut producer = DefaultMQProducer::builder(runtime.clone())
        .producer_group("runbook_probe")
        .name_server_addr(namesrv.to_owned())
        .build();
    producer.start().await.map_err(|error| {
        ActionFailure::retryable(format!("starting a producer: {}", explain(&error)))
    })?;
    let message = Message::builder()
        .topic(topic.as_str())
        .tags("runbook-probe")
        .keys(vec![key.to_owned()])
        .body_slice(key.as_bytes())
        .build_unchecked();
    let started = Instant::now();
    let sent = producer
        .send_to_queue_with_timeout(message, queue.clone(), millis)
        .await;
    let send_ms = started.elapsed().as_millis() as u64;
    producer.shutdown().await;
    let sent = sent
        .map_err(|error| {
            ActionFailure::retryable(format!(
                "broker {broker} refused the probe message on {topic} queue {}: {}",
                queue.queue_id(),
                explain(&error)
            ))
        })?
        .ok_or_else(|| {
            ActionFailure::retryable(format!(
                "broker {broker}: the probe send to {topic} returned no result"
            ))
        })?;
    let offset = sent.queue_offset as i64;
    let msg_id = sent.msg_id.as_ref().map(|id| id.to_string());

    let consumer = DefaultMQPullConsumer::builder(runtime)
        .consumer_group("runbook_probe")
        .name_server_addr(namesrv.to_owned())
        .build()
        .map_err(|error| {
            ActionFailure::permanent(format!("building a pull consumer: {}", explain(&error)))
        })?;
    consumer.start().await.map_err(|error| {
        ActionFailure::retryable(format!("starting a pull consumer: {}", explain(&error)))
    })?;
    let started = Instant::now();
    let found = read_back(&consumer, &queue, offset, key, timeout).await;
    let read_ms = started.elapsed().as_millis() as u64;
    let _ = consumer.shutdown().await;
    found?;
    Ok(json!({
        "broker": broker,
        "topic": topic,
        "queue_id": queue.queue_id(),
        "queue_offset": offset,
        "msg_id": msg_id,
        "key": key,
        "send_ms": send_ms,
        "read_ms": read_ms,
    }))
}

/// Pulls `queue` at `offset` until the message keyed `key` is there or `timeout` passes.
async fn read_back(
    consumer: &DefaultMQPullConsumer,
    queue: &MessageQueue,
    offset: i64,
    key: &str,
    timeout: Duration,
) -> Result<(), ActionFailure> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match consumer.pull(queue, "*", offset, 1).await {
            Ok(result) => {
                let messages = result.msg_found_list().unwrap_or_default();
                if messages.iter().any(|message| {
                    message
                        .keys()
                        .is_some_and(|keys| keys.iter().any(|k| k == key))
                }) {
                    return Ok(());
                }
                format!(
                    "{:?}, {} message(s) without the probe's key, queue offsets {}..{}",
                    result.pull_status(),
                    messages.len(),
                    result.min_offset(),
                    result.max_offset()
                )
            }
            Err(error) => explain(&error),
        };
        if Instant::now() >= deadline {
            return Err(ActionFailure::retryable(format!(
                "broker {}: the probe message sent to {} queue {} at offset {offset} was not read \
                 back within {}: {last}",
                queue.broker_name(),
                queue.topic(),
                queue.queue_id(),
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
