//! Which Redis server a process talks to: one fixed server (`redis://host:port`), or the
//! primary that Redis Sentinels name (`redis+sentinel://s1:26379,s2:26379,s3:26379/<master>`),
//! followed across failovers.
//!
//! With Sentinels, [`Primary::watch`] asks them every [`WATCH_PERIOD`] (and at once after a
//! command failed) which server is the primary; when it changed, it connects there, swaps the
//! shared connection and bumps [`Primary::generation`], which the subscriber follows to
//! subscribe again on the new primary. The old connection is dropped: its manager would only
//! ever reconnect to the old address (dead, or a replica since Sentinel demoted it).
//!
//! Redis replication is asynchronous: the last writes acknowledged by a primary that dies may
//! be missing on the replica that replaces it. What Tern keeps in Redis can be rebuilt: edges
//! re-write their connection counts and liveness keys on every refresh (and at once after
//! subscribing again), and the delivery role drops the recent-message cache on a failover
//! (see `sequencer.rs`); pub/sub frames in flight are lost either way (clients `sync`; sends
//! whose ack was lost get `unavailable` and are resent safely).

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{IntoConnectionInfo, RedisError, RedisResult};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How often the Sentinels are asked for the primary when nothing failed.
pub const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// Least time between two questions to the Sentinels (errors come in bursts).
const MIN_RECHECK: Duration = Duration::from_millis(200);

/// Longest wait for the Sentinels' answer plus the check of the primary's role.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is, as `--redis-url` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://[user:pass@]host:port[/db]`.
    Fixed(String),
    /// The primary of `master` as the Sentinels see it:
    /// `redis+sentinel://[user:pass@]s1:port,s2:port,…/<master>[/db]`. The credentials and
    /// database are those of the data servers (Sentinels without authentication).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        username: Option<String>,
        password: Option<String>,
        db: i64,
    },
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("redis+sentinel://") else {
            return Ok(RedisTarget::Fixed(url.to_string()));
        };
        let bad = |why: &str| {
            format!(
                "{url:?}: {why}; expected redis+sentinel://[user:pass@]host:port,host:port,…/<master>[/db]"
            )
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains(':') {
                    h.to_string()
                } else {
                    format!("{h}:26379")
                }
            })
            .collect();
        if sentinels.is_empty() {
            return Err(bad("no Sentinel addresses"));
        }
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or_default().to_string();
        if master.is_empty() {
            return Err(bad("no master name"));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d.parse().map_err(|_| bad("the database is not a number"))?,
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| u.to_string()),
                    (!p.is_empty()).then(|| p.to_string()),
                ),
                None => (None, (!a.is_empty()).then(|| a.to_string())),
            },
        };
        Ok(RedisTarget::Sentinel {
            sentinels,
            master,
            username,
            password,
            db,
        })
    }

    /// For logs: no credentials.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Fixed(url) => match url.rsplit_once('@') {
                Some((scheme_auth, host)) => {
                    let scheme = scheme_auth.split("://").next().unwrap_or("redis");
                    format!("{scheme}://…@{host}")
                }
                None => url.clone(),
            },
            RedisTarget::Sentinel {
                sentinels, master, ..
            } => format!("primary {master:?} via Sentinels {}", sentinels.join(",")),
        }
    }
}

/// The current connection.
struct Current {
    client: redis::Client,
    conn: ConnectionManager,
    /// `host:port` of the server.
    addr: String,
}

enum Source {
    Fixed,
    Sentinel {
        sentinel: Box<tokio::sync::Mutex<Sentinel>>,
        master: String,
        node: SentinelNodeConnectionInfo,
    },
}

/// The Redis server of this process, followed across Sentinel failovers.
pub struct Primary {
    source: Source,
    current: parking_lot::RwLock<Arc<Current>>,
    config: ConnectionManagerConfig,
    generation: watch::Sender<u64>,
    /// A command failed: ask the Sentinels now rather than at the next period.
    kick: Notify,
}

fn addr_of(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

fn io_error(what: String) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

impl Primary {
    /// Connect (retrying for up to `wait`). The manager has short timeouts so a dead server
    /// fails calls fast instead of stalling the caller; it reconnects by itself to the same
    /// address, and [`watch`](Self::watch) moves it when Sentinel names another primary.
    pub async fn connect(target: &RedisTarget, wait: Duration) -> anyhow::Result<Arc<Self>> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        let source = match target {
            RedisTarget::Fixed(url) => {
                redis::Client::open(url.as_str())
                    .map_err(|e| anyhow::anyhow!("bad --redis-url {}: {e}", target.describe()))?;
                Source::Fixed
            }
            RedisTarget::Sentinel {
                sentinels,
                master,
                username,
                password,
                db,
            } => {
                let infos = sentinels
                    .iter()
                    .map(|s| format!("redis://{s}").into_connection_info())
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(|e| anyhow::anyhow!("bad Sentinel address in --redis-url: {e}"))?;
                let sentinel = Sentinel::build(infos)
                    .map_err(|e| anyhow::anyhow!("Sentinels in --redis-url: {e}"))?;
                let mut redis_info = redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(u) = username {
                    redis_info = redis_info.set_username(u);
                }
                if let Some(p) = password {
                    redis_info = redis_info.set_password(p);
                }
                Source::Sentinel {
                    sentinel: Box::new(tokio::sync::Mutex::new(sentinel)),
                    master: master.clone(),
                    node: SentinelNodeConnectionInfo::default()
                        .set_redis_connection_info(redis_info),
                }
            }
        };
        let what = format!(
            "Redis ({}; is it running? check --redis-url)",
            target.describe()
        );
        let first = crate::retry::until(wait, Duration::from_secs(1), &what, || async {
            let client = match (&source, target) {
                (Source::Fixed, RedisTarget::Fixed(url)) => redis::Client::open(url.as_str())?,
                _ => Self::discover_in(&source).await?,
            };
            let conn = client
                .get_connection_manager_with_config(config.clone())
                .await?;
            Ok::<_, RedisError>(Current {
                addr: addr_of(&client),
                client,
                conn,
            })
        })
        .await?;
        tracing::info!(redis = %first.addr, via = %target.describe(), "Redis: connected");
        Ok(Arc::new(Primary {
            source,
            current: parking_lot::RwLock::new(Arc::new(first)),
            config,
            generation: watch::channel(0).0,
            kick: Notify::new(),
        }))
    }

    /// The shared connection to the current server (cheap: a handle).
    pub fn conn(&self) -> ConnectionManager {
        self.current.read().conn.clone()
    }

    /// A client of the current server, for connections of their own (pub/sub).
    pub fn client(&self) -> redis::Client {
        self.current.read().client.clone()
    }

    /// `host:port` of the current server.
    pub fn addr(&self) -> String {
        self.current.read().addr.clone()
    }

    /// Bumped whenever the connection moved to another server (a failover).
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether a failover is possible at all (Sentinel mode).
    pub fn follows_sentinels(&self) -> bool {
        matches!(self.source, Source::Sentinel { .. })
    }

    /// Note the outcome of a command: after an error, ask the Sentinels again soon (the
    /// primary may have moved: the old one refuses connections, times out, or answers
    /// `READONLY` once it has been turned into a replica).
    pub fn saw<T>(&self, r: &RedisResult<T>) {
        if r.is_err() && self.follows_sentinels() {
            self.kick.notify_one();
        }
    }

    /// The primary the Sentinels name now, verified to call itself primary.
    async fn discover_in(source: &Source) -> RedisResult<redis::Client> {
        let Source::Sentinel {
            sentinel,
            master,
            node,
        } = source
        else {
            unreachable!("only asked in Sentinel mode")
        };
        let ask = async {
            let mut s = sentinel.lock().await;
            s.async_master_for(master, Some(node)).await
        };
        match tokio::time::timeout(DISCOVER_TIMEOUT, ask).await {
            Ok(r) => r,
            Err(_) => Err(io_error(format!(
                "the Sentinels did not name a primary for {master:?} within {DISCOVER_TIMEOUT:?}"
            ))),
        }
    }

    /// Ask the Sentinels; if they name another server than the current one, connect to it
    /// and make it current. Returns whether the connection moved.
    pub async fn recheck(&self) -> RedisResult<bool> {
        let client = Self::discover_in(&self.source).await?;
        let addr = addr_of(&client);
        if addr == self.addr() {
            return Ok(false);
        }
        let conn = tokio::time::timeout(
            DISCOVER_TIMEOUT,
            client.get_connection_manager_with_config(self.config.clone()),
        )
        .await
        .map_err(|_| io_error(format!("connecting to the new primary {addr} timed out")))??;
        let old = std::mem::replace(
            &mut *self.current.write(),
            Arc::new(Current {
                client,
                conn,
                addr: addr.clone(),
            }),
        );
        self.generation.send_modify(|g| *g += 1);
        tracing::warn!(from = %old.addr, to = %addr, "Redis: the primary moved (Sentinel failover); following it");
        Ok(true)
    }

    /// Sentinel mode: follow the primary until `stop` (returns at once for a fixed server).
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        if !self.follows_sentinels() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_PERIOD) => {},
                _ = self.kick.notified() => {},
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.recheck().await {
                tracing::debug!(cause = %e, "Redis: no primary named by the Sentinels yet");
            }
            tokio::select! {
                _ = tokio::time::sleep(MIN_RECHECK) => {},
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_or_sentinels() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379").unwrap(),
            RedisTarget::Fixed("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            RedisTarget::parse("redis+sentinel://a:26380,b:26381, c /tern").unwrap(),
            RedisTarget::Sentinel {
                sentinels: vec!["a:26380".into(), "b:26381".into(), "c:26379".into()],
                master: "tern".into(),
                username: None,
                password: None,
                db: 0,
            }
        );
        assert_eq!(
            RedisTarget::parse("redis+sentinel://u:p@s:1/m/3").unwrap(),
            RedisTarget::Sentinel {
                sentinels: vec!["s:1".into()],
                master: "m".into(),
                username: Some("u".into()),
                password: Some("p".into()),
                db: 3,
            }
        );
        assert_eq!(
            RedisTarget::parse("redis+sentinel://:secret@s:1/m").unwrap(),
            RedisTarget::Sentinel {
                sentinels: vec!["s:1".into()],
                master: "m".into(),
                username: None,
                password: Some("secret".into()),
                db: 0,
            }
        );
        for bad in [
            "redis+sentinel://s:1",
            "redis+sentinel://s:1/",
            "redis+sentinel:///m",
            "redis+sentinel://s:1/m/x",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn descriptions_hide_credentials() {
        let d = RedisTarget::parse("redis://:hunter2@r:6379/0")
            .unwrap()
            .describe();
        assert!(!d.contains("hunter2") && d.contains("r:6379"), "{d}");
        let d = RedisTarget::parse("redis+sentinel://u:hunter2@s:1,t:2/m")
            .unwrap()
            .describe();
        assert!(!d.contains("hunter2") && d.contains("s:1,t:2"), "{d}");
    }
}
