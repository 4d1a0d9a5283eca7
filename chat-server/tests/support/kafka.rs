//! Kafka clean-up: topics a test created are deleted when it ends.

use super::services;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Delete `topics` (missing ones are fine), blocking; errors are ignored (clean-up only).
pub fn delete_topics_now(topics: &[String]) {
    let topics = topics.to_vec();
    super::block_on_aside(async move {
        let admin: Result<AdminClient<DefaultClientContext>, _> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", services::kafka_brokers())
            .create();
        if let Ok(admin) = admin {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
        }
    });
}
