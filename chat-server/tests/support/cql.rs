//! The CQL server of the store tests (`TERN_CQL_NODES`, Cassandra from `e2e/env/up.sh
//! cassandra`): a session, and a fresh keyspace per test with the store schema.

use super::services;
use chat_server::store::scylla::{ScyllaOptions, ScyllaStore};
use chat_server::store::scylla_schema::{self, Replication, SetupOptions};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use std::sync::Arc;
use std::time::Duration;

/// A session on the test CQL server; panics with a hint when there is none.
pub async fn session() -> Arc<Session> {
    let nodes = services::cql_nodes();
    match SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(Duration::from_secs(5))
        .build()
        .await
    {
        Ok(s) => Arc::new(s),
        Err(e) => panic!(
            "cannot reach the CQL server at {} ({e}). These tests need a real one: start it \
             with `e2e/env/up.sh cassandra`, or point TERN_CQL_NODES at one (host:port,…)",
            nodes.join(",")
        ),
    }
}

/// A fresh keyspace, set up with the store schema and dropped by [`drop_keyspace`] (or, if a
/// test panics first, by `Drop`).
///
/// [`drop_keyspace`]: TestKeyspace::drop_keyspace
pub struct TestKeyspace {
    pub session: Arc<Session>,
    pub name: String,
    dropped: bool,
}

impl TestKeyspace {
    /// A keyspace with `bucket_size` messages per `messages` partition.
    pub async fn create(bucket_size: u64) -> Self {
        let session = session().await;
        let name = format!("tern_t_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        scylla_schema::setup_with(
            &session,
            &name,
            &Replication::Simple { factor: 1 },
            SetupOptions { bucket_size },
        )
        .await
        .expect("schema setup");
        TestKeyspace {
            session,
            name,
            dropped: false,
        }
    }

    /// A new store object on this keyspace.
    pub async fn store(&self) -> ScyllaStore {
        ScyllaStore::with_session(self.session.clone(), &self.name, ScyllaOptions::default())
            .await
            .expect("open the scylla store")
    }

    pub async fn drop_keyspace(mut self) {
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.name), ())
            .await
            .expect("drop keyspace");
        self.dropped = true;
    }
}

impl Drop for TestKeyspace {
    fn drop(&mut self) {
        if !self.dropped {
            drop_keyspace_now(&self.name);
        }
    }
}

/// Drop a keyspace, blocking, on a session of its own; errors are ignored (clean-up only).
pub fn drop_keyspace_now(name: &str) {
    let query = format!("DROP KEYSPACE IF EXISTS {name}");
    super::block_on_aside(async move {
        if let Ok(s) = SessionBuilder::new()
            .known_nodes(services::cql_nodes())
            .build()
            .await
        {
            let _ = s.query_unpaged(query, ()).await;
        }
    });
}
