//! Kafka client settings shared by every Kafka client of a process (the send producer, the
//! sequencer's consumer, the push producer and consumer), and topic creation.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// How long librdkafka keeps trying to deliver a record before the send fails (a Kafka
/// outage longer than this turns into `unavailable` errors, never into silent loss).
const MESSAGE_TIMEOUT_MS: &str = "5000";

static SECURITY: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();

/// Set the security settings (SASL) every Kafka client of this process uses; once, at start.
pub fn configure_security(settings: Vec<(&'static str, String)>) {
    let _ = SECURITY.set(settings);
}

/// A client configuration for `brokers` with the process's security settings.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in SECURITY.get().map(Vec::as_slice).unwrap_or_default() {
        c.set(*k, v);
    }
    c
}

/// An idempotent `acks=all` producer: a record is acknowledged only once every in-sync
/// replica has it, and a retry never writes it twice.
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = client_config(brokers);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        // Nagle's algorithm holds small produce requests back (tens of ms on loopback).
        .set("socket.nagle.disable", "true")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
        .set("socket.keepalive.enable", "true");
    c
}

/// A consumer in `group` that stores its offsets by hand (after the work a record asks for
/// is done; committed by librdkafka every second and on revoke) and starts from the earliest
/// record of a partition it never committed. A killed member's partitions move after 6 s.
/// `fetch_wait_ms` bounds how long the broker holds a fetch for more data.
pub fn consumer_config(brokers: &str, group: &str, fetch_wait_ms: u32) -> ClientConfig {
    let mut c = client_config(brokers);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string());
    c
}

/// Create the message topic, or grow its partition count to `partitions`. Idempotent.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| anyhow::anyhow!("Kafka admin client for {brokers}: {e}"))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        // Messages live in ScyllaDB; the log only needs to outlive an outage of the
        // delivery role.
        .set("retention.ms", "604800000")
        .set(
            "min.insync.replicas",
            if replication >= 3 { "2" } else { "1" },
        );
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| anyhow::anyhow!("creating topic {topic}: {e}"))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, replication, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let md = admin
                    .inner()
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .map_err(|e| anyhow::anyhow!("reading metadata of {topic}: {e}"))?;
                let have = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map_or(0, |t| t.partitions().len()) as i32;
                if have < partitions {
                    let grow = NewPartitions::new(topic, partitions as usize);
                    for r in admin
                        .create_partitions([&grow], &opts)
                        .await
                        .map_err(|e| anyhow::anyhow!("adding partitions to {topic}: {e}"))?
                    {
                        r.map_err(|(_, e)| anyhow::anyhow!("adding partitions to {topic}: {e}"))?;
                    }
                    tracing::warn!(
                        topic,
                        from = have,
                        to = partitions,
                        "grew the topic; chats move to other partitions, so run this only \
                         while no messages are in flight (delivery re-reads chat state after a \
                         rebalance)"
                    );
                } else {
                    tracing::info!(topic, partitions = have, "Kafka topic exists");
                }
            }
            Err((_, e)) => anyhow::bail!("creating topic {topic}: {e}"),
        }
    }
    Ok(())
}
