//! Kafka client settings shared by every Kafka client of a process (the send producer, the
//! sequencer's consumer, the push producer and consumer), and topic creation.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// How long librdkafka keeps trying to deliver a record before the send fails (a Kafka
/// outage longer than this turns into `unavailable` errors, never into silent loss).
pub const MESSAGE_TIMEOUT_MS: u64 = 5000;

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
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string())
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

/// The replication factor that survives one broker: 3, or every broker of a smaller cluster.
pub fn safe_replication(brokers: usize) -> i32 {
    brokers.clamp(1, 3) as i32
}

/// The replication factor `setup` uses for new topics: `asked` if given and sensible for a
/// cluster of `brokers`, else [`safe_replication`]. Refused: more replicas than brokers, and,
/// unless `allow_unsafe`, fewer than the safe factor (RF 1 on 3 brokers loses acked messages
/// with one broker; RF 2 with `min.insync.replicas` 1 acknowledges records one broker holds).
pub fn choose_replication(
    asked: Option<i32>,
    brokers: usize,
    allow_unsafe: bool,
) -> Result<i32, String> {
    let safe = safe_replication(brokers);
    let rf = asked.unwrap_or(safe);
    if rf < 1 {
        return Err(format!("replication factor {rf}: must be at least 1"));
    }
    if rf as usize > brokers {
        return Err(format!(
            "replication factor {rf} but the Kafka cluster has {brokers} broker(s)"
        ));
    }
    if rf < safe && !allow_unsafe {
        return Err(format!(
            "replication factor {rf} on {brokers} brokers does not survive the loss of one \
             broker (use {safe}; or pass --allow-unsafe-replication to insist)"
        ));
    }
    Ok(rf)
}

/// `min.insync.replicas` for a topic of `replication` replicas: 2 from 3 replicas on (with
/// `acks=all` a record is then on two brokers before it is acknowledged, and one broker may
/// be down), else 1.
pub fn min_insync(replication: i32) -> i32 {
    if replication >= 3 { 2 } else { 1 }
}

/// What the cluster looks like: the number of brokers, and the replication factor of `topics`
/// that exist (by name).
pub async fn describe(
    brokers: &str,
    topics: &[&str],
) -> anyhow::Result<(usize, Vec<(String, usize)>)> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| anyhow::anyhow!("Kafka admin client for {brokers}: {e}"))?;
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("reading the Kafka cluster's metadata: {e}"))?;
    let existing = md
        .topics()
        .iter()
        .filter(|t| topics.contains(&t.name()) && t.error().is_none())
        .filter_map(|t| {
            let rf = t.partitions().iter().map(|p| p.replicas().len()).min()?;
            Some((t.name().to_string(), rf))
        })
        .collect();
    Ok((md.brokers().len(), existing))
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
    let min_insync = min_insync(replication).to_string();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
        // Messages live in ScyllaDB; the log only needs to outlive an outage of the
        // delivery role.
        .set("retention.ms", "604800000")
        .set("min.insync.replicas", &min_insync);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_replication_is_chosen_from_the_brokers_and_unsafe_choices_are_refused() {
        assert_eq!(choose_replication(None, 1, false), Ok(1));
        assert_eq!(choose_replication(None, 3, false), Ok(3));
        assert_eq!(choose_replication(None, 5, false), Ok(3));
        assert!(choose_replication(Some(1), 3, false).is_err());
        assert!(choose_replication(Some(2), 3, false).is_err());
        assert_eq!(choose_replication(Some(1), 3, true), Ok(1));
        assert!(choose_replication(Some(3), 1, true).is_err());
        assert!(choose_replication(Some(0), 1, true).is_err());
        assert_eq!((min_insync(1), min_insync(2), min_insync(3)), (1, 1, 2));
    }
}
