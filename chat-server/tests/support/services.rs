//! Where the real services of `e2e/env` are: `eval "$(e2e/env/env.sh)"` sets the variables, and
//! the defaults are e2e/env's ports.
//!
//! `TERN_TEST_HA=redis,kafka,cql` (any of them) switches those services to their multi-node
//! set (`e2e/env/up.sh redis-ha kafka-ha cassandra-ha`, the `TERN_HA_*` variables): Redis
//! through its Sentinels, 3 Kafka brokers, 3 CQL nodes. `e2e/test-ha.sh` sets it.

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Whether `service` (`redis`, `kafka`, `cql`) is the multi-node set (`TERN_TEST_HA`).
pub fn ha(service: &str) -> bool {
    std::env::var("TERN_TEST_HA").is_ok_and(|v| v.split(',').any(|s| s.trim() == service))
}

/// `TERN_KAFKA_BROKERS` (`TERN_HA_KAFKA_BROKERS` with `TERN_TEST_HA=kafka`).
pub fn kafka_brokers() -> String {
    if ha("kafka") {
        return env_or(
            "TERN_HA_KAFKA_BROKERS",
            "127.0.0.1:19101,127.0.0.1:19102,127.0.0.1:19103",
        );
    }
    env_or("TERN_KAFKA_BROKERS", "127.0.0.1:19092")
}

/// `TERN_CQL_NODES`: comma-separated `host:port` (`TERN_HA_CQL_NODES` with
/// `TERN_TEST_HA=cql`).
pub fn cql_nodes() -> Vec<String> {
    let nodes = if ha("cql") {
        env_or(
            "TERN_HA_CQL_NODES",
            "127.0.0.2:19142,127.0.0.3:19142,127.0.0.4:19142",
        )
    } else {
        env_or("TERN_CQL_NODES", "127.0.0.1:19042")
    };
    nodes
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `TERN_REDIS_URL` (with `TERN_TEST_HA=redis`: `redis+sentinel://<TERN_HA_REDIS_SENTINELS>/
/// <TERN_HA_REDIS_MASTER>`).
pub fn redis_url() -> String {
    if ha("redis") {
        return format!(
            "redis+sentinel://{}/{}",
            env_or(
                "TERN_HA_REDIS_SENTINELS",
                "127.0.0.1:26380,127.0.0.1:26381,127.0.0.1:26382"
            ),
            env_or("TERN_HA_REDIS_MASTER", "tern")
        );
    }
    env_or("TERN_REDIS_URL", "redis://127.0.0.1:16379")
}
