//! Where the real services of `e2e/env` are: `eval "$(e2e/env/env.sh)"` sets the variables, and
//! the defaults are e2e/env's ports.

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// `TERN_KAFKA_BROKERS`.
pub fn kafka_brokers() -> String {
    env_or("TERN_KAFKA_BROKERS", "127.0.0.1:19092")
}

/// `TERN_CQL_NODES`: comma-separated `host:port`.
pub fn cql_nodes() -> Vec<String> {
    env_or("TERN_CQL_NODES", "127.0.0.1:19042")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `TERN_REDIS_URL`.
pub fn redis_url() -> String {
    env_or("TERN_REDIS_URL", "redis://127.0.0.1:16379")
}
