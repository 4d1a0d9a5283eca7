//! The CQL schema of the distributed store and its idempotent, versioned setup.
//!
//! [`setup`] creates the keyspace and every table with `IF NOT EXISTS`, then records the schema
//! version and the message bucket size in `schema_version` (an LWT insert, so the first setup
//! wins and later ones only check). Running it again is harmless; running it against a
//! keyspace written by a newer binary fails instead of guessing. `chat-server setup` calls it;
//! [`ScyllaStore::connect`](super::scylla::ScyllaStore::connect) refuses a keyspace that has
//! not been set up. The tables, their keys and the access path each serves are described in
//! `docs/schema.md`.

use crate::error::{Error, Result};
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::value::CqlTimestamp;
use std::fmt;
use std::str::FromStr;

/// The schema version this binary writes and understands.
/// 1: chats, members, messages, receipts, idempotency. 2: adds the media tables. 3: adds
/// `users` (display names) and `media_renditions` (video posters and renditions).
pub const SCHEMA_VERSION: i32 = 3;

/// Messages per partition of `messages` by default: partition key `(chat_id, seq / 10_000)`.
pub const DEFAULT_BUCKET_SIZE: u64 = 10_000;

/// How long an idempotency key (`chat_id, sender_id, client_msg_id → seq`) is kept: resends
/// within this window get the original `seq` back.
pub const IDEMPOTENCY_TTL_SECS: u32 = 48 * 3600;

/// Keyspace replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy`: one data centre; tests and single-DC development.
    Simple { factor: u32 },
    /// `NetworkTopologyStrategy`: replicas per data centre. Production (with `LOCAL_QUORUM`).
    NetworkTopology(Vec<(String, u32)>),
}

impl Replication {
    /// The CQL map of `CREATE KEYSPACE … WITH replication = <this>`.
    pub fn to_cql(&self) -> String {
        match self {
            Replication::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::NetworkTopology(dcs) => {
                let mut s = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, n) in dcs {
                    s.push_str(&format!(", '{}': {n}", dc.replace('\'', "''")));
                }
                s.push('}');
                s
            }
        }
    }
}

impl Default for Replication {
    fn default() -> Self {
        Replication::Simple { factor: 1 }
    }
}

/// `simple:3` or `dc1:3,dc2:3` (NetworkTopologyStrategy).
impl FromStr for Replication {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "replication {s:?}: expected `simple:N` or `dc1:N,dc2:M` (NetworkTopologyStrategy)"
            ))
        };
        let pairs: Vec<(String, u32)> = s
            .split(',')
            .map(|p| {
                let (name, n) = p.trim().split_once(':').ok_or_else(bad)?;
                let n: u32 = n.trim().parse().map_err(|_| bad())?;
                if n == 0 || name.trim().is_empty() {
                    return Err(bad());
                }
                Ok((name.trim().to_string(), n))
            })
            .collect::<Result<_>>()?;
        match &pairs[..] {
            [(name, n)] if name.eq_ignore_ascii_case("simple") => {
                Ok(Replication::Simple { factor: *n })
            }
            _ if pairs.iter().any(|(n, _)| n.eq_ignore_ascii_case("simple")) => Err(bad()),
            _ => Ok(Replication::NetworkTopology(pairs)),
        }
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replication::Simple { factor } => write!(f, "simple:{factor}"),
            Replication::NetworkTopology(dcs) => {
                let parts: Vec<String> = dcs.iter().map(|(d, n)| format!("{d}:{n}")).collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

/// The replication factor that survives one node: 3, or every node of a smaller cluster.
pub fn safe_factor(nodes: usize) -> u32 {
    nodes.clamp(1, 3) as u32
}

/// The replication `setup` uses: `asked` if given and sensible for `dcs` (nodes per data
/// centre, as the driver sees the cluster), else the safe default — `simple:min(3, nodes)` in
/// one data centre, `dc:min(3, nodes in dc)` for each of several (NetworkTopologyStrategy;
/// serve with `--scylla-consistency local_quorum` then).
///
/// Refused: more replicas than nodes in a data centre (QUORUM could never be reached), and,
/// unless `allow_unsafe`, fewer than [`safe_factor`] (RF 1 on a 3-node cluster loses acked
/// messages with one disk; RF 2 stops QUORUM writes when one node is down).
pub fn choose_replication(
    asked: Option<&Replication>,
    dcs: &std::collections::BTreeMap<String, usize>,
    allow_unsafe: bool,
) -> Result<Replication> {
    let total: usize = dcs.values().sum();
    let chosen = match asked {
        Some(r) => r.clone(),
        None if dcs.len() > 1 => Replication::NetworkTopology(
            dcs.iter()
                .map(|(dc, n)| (dc.clone(), safe_factor(*n)))
                .collect(),
        ),
        None => Replication::Simple {
            factor: safe_factor(total),
        },
    };
    check_replication(&chosen, dcs, allow_unsafe)?;
    Ok(chosen)
}

/// Whether `r` is sensible on a cluster of `dcs` (see [`choose_replication`]).
pub fn check_replication(
    r: &Replication,
    dcs: &std::collections::BTreeMap<String, usize>,
    allow_unsafe: bool,
) -> Result<()> {
    let total: usize = dcs.values().sum();
    let per_dc: Vec<(String, u32, usize)> = match r {
        Replication::Simple { factor } => vec![("the cluster".to_string(), *factor, total)],
        Replication::NetworkTopology(list) => list
            .iter()
            .map(|(dc, f)| {
                (
                    format!("data centre {dc}"),
                    *f,
                    dcs.get(dc).copied().unwrap_or(0),
                )
            })
            .collect(),
    };
    for (where_, factor, nodes) in per_dc {
        if factor as usize > nodes {
            return Err(Error::invalid(format!(
                "replication {r}: {factor} replicas but {where_} has {nodes} node(s); QUORUM \
                 reads and writes could never succeed"
            )));
        }
        if factor < safe_factor(nodes) && !allow_unsafe {
            return Err(Error::invalid(format!(
                "replication {r}: {factor} replica(s) on {where_} of {nodes} nodes does not \
                 survive the loss of one node (use {}; or pass --allow-unsafe-replication to \
                 insist)",
                safe_factor(nodes)
            )));
        }
    }
    Ok(())
}

/// Nodes per data centre, as the session sees the cluster.
pub fn cluster_dcs(session: &Session) -> std::collections::BTreeMap<String, usize> {
    let mut dcs = std::collections::BTreeMap::new();
    for node in session.get_cluster_state().get_nodes_info() {
        let dc = node
            .datacenter
            .clone()
            .unwrap_or_else(|| "datacenter1".into());
        *dcs.entry(dc).or_default() += 1;
    }
    dcs
}

/// The replication of an existing keyspace (`None`: no such keyspace, or a strategy Tern
/// does not write).
pub async fn keyspace_replication(
    session: &Session,
    keyspace: &str,
) -> Result<Option<Replication>> {
    use scylla::cluster::metadata::Strategy;
    session
        .refresh_metadata()
        .await
        .map_err(|e| Error::internal(format!("cql metadata: {e}")))?;
    let state = session.get_cluster_state();
    Ok(state
        .get_keyspace(keyspace)
        .and_then(|k| match &k.strategy {
            Strategy::SimpleStrategy { replication_factor } => Some(Replication::Simple {
                factor: *replication_factor as u32,
            }),
            Strategy::NetworkTopologyStrategy {
                datacenter_repfactors,
            } => {
                let mut dcs: Vec<(String, u32)> = datacenter_repfactors
                    .iter()
                    .map(|(d, n)| (d.clone(), *n as u32))
                    .collect();
                dcs.sort();
                Some(Replication::NetworkTopology(dcs))
            }
            _ => None,
        }))
}

/// Choices fixed when a keyspace is first set up.
#[derive(Debug, Clone, Copy)]
pub struct SetupOptions {
    /// Messages per `messages` partition. Recorded at the first setup and read back by every
    /// store; it can never change for a keyspace (the bucket of a `seq` must stay put).
    pub bucket_size: u64,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            bucket_size: DEFAULT_BUCKET_SIZE,
        }
    }
}

/// Keyspace names are used unquoted in CQL: allow only what CQL allows unquoted.
pub fn check_keyspace_name(keyspace: &str) -> Result<()> {
    let ok = !keyspace.is_empty()
        && keyspace.len() <= 48
        && keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
        && keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "keyspace name {keyspace:?}: use 1–48 letters, digits or '_', starting with a letter"
        )))
    }
}

/// The tables of the current schema version, in creation order (`{ks}` is the keyspace).
pub fn table_statements(keyspace: &str) -> Vec<String> {
    let ttl = IDEMPOTENCY_TTL_SECS;
    [
        "CREATE TABLE IF NOT EXISTS {ks}.schema_version (
            component   text PRIMARY KEY,
            version     int,
            bucket_size bigint,
            applied_at  timestamp)",
        // One row per chat. last_seq/updated_at are written only with USING TIMESTAMP = last_seq,
        // which makes them a max register: a late or repeated write can never move them back.
        "CREATE TABLE IF NOT EXISTS {ks}.chats (
            chat_id    bigint PRIMARY KEY,
            kind       text,
            title      text,
            created_at timestamp,
            last_seq   bigint,
            updated_at timestamp)",
        // Direct-pair uniqueness: pair = 'lo:hi', claimed with INSERT … IF NOT EXISTS.
        "CREATE TABLE IF NOT EXISTS {ks}.direct_chats (
            pair       text PRIMARY KEY,
            chat_id    bigint,
            created_at timestamp)",
        // Members by chat. Every change is a conditional batch on the static `version`, so
        // membership changes of one chat are linearizable (group limit, last-admin promotion).
        // `epoch` is fresh for every membership and keys the member's receipt marks.
        "CREATE TABLE IF NOT EXISTS {ks}.members (
            chat_id   bigint,
            user_id   bigint,
            role      text,
            joined_at timestamp,
            epoch     bigint,
            version   bigint STATIC,
            PRIMARY KEY (chat_id, user_id))",
        // Chats by user: the user's chat list, and direct partners (peer is set for direct chats).
        "CREATE TABLE IF NOT EXISTS {ks}.user_chats (
            user_id bigint,
            chat_id bigint,
            peer    bigint,
            epoch   bigint,
            PRIMARY KEY (user_id, chat_id))",
        // Receipt marks: each cell is written USING TIMESTAMP = its value (a max register).
        "CREATE TABLE IF NOT EXISTS {ks}.receipt_marks (
            chat_id       bigint,
            user_id       bigint,
            epoch         bigint,
            delivered_seq bigint,
            read_seq      bigint,
            PRIMARY KEY (chat_id, user_id, epoch))",
        // History: one partition per (chat, seq / bucket_size), clustered by seq.
        "CREATE TABLE IF NOT EXISTS {ks}.messages (
            chat_id       bigint,
            bucket        bigint,
            seq           bigint,
            message_id    text,
            sender_id     bigint,
            content       text,
            media_url     text,
            media         text,
            client_msg_id text,
            created_at    timestamp,
            PRIMARY KEY ((chat_id, bucket), seq))
          WITH CLUSTERING ORDER BY (seq ASC)",
        // Idempotency keys of accepted messages, kept for IDEMPOTENCY_TTL_SECS. One partition
        // per chat and sender, so a batch's keys are one IN query and one batch write. Rows
        // only expire (never deleted), so tombstones can be purged soon after expiry.
        "CREATE TABLE IF NOT EXISTS {ks}.idempotency (
            chat_id       bigint,
            sender_id     bigint,
            client_msg_id text,
            seq           bigint,
            message_id    text,
            PRIMARY KEY ((chat_id, sender_id), client_msg_id))
          WITH default_time_to_live = {ttl} AND gc_grace_seconds = 10800",
        // Version 2 — media. One row per upload; `info` is the JSON of `MediaRecord`.
        "CREATE TABLE IF NOT EXISTS {ks}.media (
            media_id   text PRIMARY KEY,
            uploader   bigint,
            created_at timestamp,
            info       text)",
        // The chats a media was sent to: members of those chats may read it.
        "CREATE TABLE IF NOT EXISTS {ks}.media_chats (
            media_id text,
            chat_id  bigint,
            PRIMARY KEY (media_id, chat_id))",
        // Uploads never sent, in 16 partitions by id, oldest first: the orphan collector reads
        // `created_at < cutoff` per shard. A row is deleted when its media is first sent.
        "CREATE TABLE IF NOT EXISTS {ks}.media_unsent (
            shard      int,
            created_at timestamp,
            media_id   text,
            PRIMARY KEY (shard, created_at, media_id))
          WITH gc_grace_seconds = 10800",
        // Version 3 — users: the latest display name per user (a plain overwrite; the last
        // write wins), read by `IN` on the ids of a chat's members.
        "CREATE TABLE IF NOT EXISTS {ks}.users (
            user_id    bigint PRIMARY KEY,
            name       text,
            updated_at timestamp)",
        // Version 3 — what the transcoder made of a video (`info`: JSON of `Renditions`),
        // apart from the upload's row, which never changes.
        "CREATE TABLE IF NOT EXISTS {ks}.media_renditions (
            media_id text PRIMARY KEY,
            info     text)",
    ]
    .iter()
    .map(|s| {
        s.replace("{ks}", keyspace)
            .replace("{ttl}", &ttl.to_string())
    })
    .collect()
}

/// Create (or check) the keyspace and its tables with the default options; see [`setup_with`].
pub async fn setup(session: &Session, keyspace: &str, replication: &Replication) -> Result<()> {
    setup_with(session, keyspace, replication, SetupOptions::default()).await
}

/// Create the keyspace and tables if missing and record [`SCHEMA_VERSION`] and the bucket size.
/// Idempotent. Fails if the keyspace holds a newer schema, or was set up with another bucket
/// size (that can never change). An existing keyspace keeps its replication: change that with
/// `ALTER KEYSPACE` and a repair, not here.
pub async fn setup_with(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
    options: SetupOptions,
) -> Result<()> {
    check_keyspace_name(keyspace)?;
    if options.bucket_size == 0 || options.bucket_size > i64::MAX as u64 {
        return Err(Error::invalid("bucket size must be at least 1"));
    }
    let ddl = |cql: String| async move {
        session
            .query_unpaged(cql.as_str(), ())
            .await
            .map_err(|e| Error::internal(format!("cql schema setup: {e}; statement: {cql}")))
    };
    ddl(format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {} AND durable_writes = true",
        replication.to_cql()
    ))
    .await?;
    for cql in table_statements(keyspace) {
        ddl(cql).await?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| Error::internal(format!("cql schema agreement: {e}")))?;

    let mut claim = scylla::statement::Statement::new(format!(
        "INSERT INTO {keyspace}.schema_version (component, version, bucket_size, applied_at) \
         VALUES ('store', ?, ?, ?) IF NOT EXISTS"
    ));
    claim.set_consistency(Consistency::Quorum);
    let now = CqlTimestamp(crate::model::now_ms());
    session
        .query_unpaged(claim, (SCHEMA_VERSION, options.bucket_size as i64, now))
        .await
        .map_err(|e| Error::internal(format!("cql schema setup: recording the version: {e}")))?;
    let recorded = read_version(session, keyspace).await?.ok_or_else(|| {
        Error::internal("cql schema setup: the version row is missing right after writing it")
    })?;
    if recorded.version > SCHEMA_VERSION {
        return Err(Error::internal(format!(
            "keyspace {keyspace} has schema version {}, newer than this binary's \
             {SCHEMA_VERSION}; run a newer chat-server",
            recorded.version
        )));
    }
    if recorded.bucket_size != options.bucket_size {
        return Err(Error::invalid(format!(
            "keyspace {keyspace} was set up with a message bucket size of {}, not {}; the \
             bucket size of a keyspace cannot change",
            recorded.bucket_size, options.bucket_size
        )));
    }
    // Older versions: every table above exists now (`IF NOT EXISTS`), and versions only add
    // tables, so moving the recorded version forward is the whole migration. The LWT makes
    // concurrent setups agree.
    if recorded.version < SCHEMA_VERSION {
        let mut bump = scylla::statement::Statement::new(format!(
            "UPDATE {keyspace}.schema_version SET version = ?, applied_at = ? \
             WHERE component = 'store' IF version = ?"
        ));
        bump.set_consistency(Consistency::Quorum);
        session
            .query_unpaged(bump, (SCHEMA_VERSION, now, recorded.version))
            .await
            .map_err(|e| {
                Error::internal(format!("cql schema setup: upgrading the version: {e}"))
            })?;
        let after = read_version(session, keyspace).await?.map(|i| i.version);
        if after != Some(SCHEMA_VERSION) {
            return Err(Error::internal(format!(
                "keyspace {keyspace}: schema version is {after:?} after upgrading to \
                 {SCHEMA_VERSION}"
            )));
        }
        tracing::info!(
            keyspace,
            from = recorded.version,
            to = SCHEMA_VERSION,
            "CQL schema upgraded"
        );
    }
    Ok(())
}

/// What `schema_version` records for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaInfo {
    pub version: i32,
    pub bucket_size: u64,
}

/// The recorded schema of `keyspace`, `None` when it was never set up.
pub async fn read_version(session: &Session, keyspace: &str) -> Result<Option<SchemaInfo>> {
    check_keyspace_name(keyspace)?;
    let mut q = scylla::statement::Statement::new(format!(
        "SELECT version, bucket_size FROM {keyspace}.schema_version WHERE component = 'store'"
    ));
    q.set_consistency(Consistency::Quorum);
    let result = match session.query_unpaged(q, ()).await {
        Ok(r) => r,
        // A missing keyspace or table means "never set up".
        Err(e) if is_invalid_request(&e) => return Ok(None),
        Err(e) => {
            return Err(Error::internal(format!(
                "cql reading the schema version: {e}"
            )));
        }
    };
    let row = result
        .into_rows_result()
        .map_err(|e| Error::internal(format!("cql reading the schema version: {e}")))?
        .maybe_first_row::<(Option<i32>, Option<i64>)>()
        .map_err(|e| Error::internal(format!("cql reading the schema version: {e}")))?;
    Ok(row.map(|(v, b)| SchemaInfo {
        version: v.unwrap_or(0),
        bucket_size: b.unwrap_or(DEFAULT_BUCKET_SIZE as i64) as u64,
    }))
}

fn is_invalid_request(e: &scylla::errors::ExecutionError) -> bool {
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, _))
    ) || matches!(e, ExecutionError::PrepareError(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_parses_and_prints() {
        let simple: Replication = "simple:1".parse().unwrap();
        assert_eq!(simple, Replication::Simple { factor: 1 });
        assert_eq!(
            simple.to_cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        let nts: Replication = "eu-west:3, us-east:2".parse().unwrap();
        assert_eq!(
            nts.to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us-east': 2}"
        );
        assert_eq!(nts.to_string(), "eu-west:3,us-east:2");
        for bad in ["", "simple", "simple:0", "dc1:x", "simple:1,dc1:3", ":3"] {
            assert!(
                bad.parse::<Replication>().is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn replication_is_chosen_from_the_cluster_and_unsafe_choices_are_refused() {
        use std::collections::BTreeMap;
        let one_dc = |n: usize| BTreeMap::from([("dc1".to_string(), n)]);
        let simple = |factor| Replication::Simple { factor };
        // The default: every node up to 3.
        assert_eq!(
            choose_replication(None, &one_dc(1), false).unwrap(),
            simple(1)
        );
        assert_eq!(
            choose_replication(None, &one_dc(3), false).unwrap(),
            simple(3)
        );
        assert_eq!(
            choose_replication(None, &one_dc(5), false).unwrap(),
            simple(3)
        );
        let two = BTreeMap::from([("eu".to_string(), 3), ("us".to_string(), 2)]);
        assert_eq!(
            choose_replication(None, &two, false).unwrap(),
            Replication::NetworkTopology(vec![("eu".into(), 3), ("us".into(), 2)])
        );
        // RF 1 (or 2) on 3 nodes: refused unless insisted on.
        assert!(choose_replication(Some(&simple(1)), &one_dc(3), false).is_err());
        assert!(choose_replication(Some(&simple(2)), &one_dc(3), false).is_err());
        assert_eq!(
            choose_replication(Some(&simple(1)), &one_dc(3), true).unwrap(),
            simple(1)
        );
        // More replicas than nodes: refused even when insisted on.
        assert!(choose_replication(Some(&simple(3)), &one_dc(1), true).is_err());
        let nts = Replication::NetworkTopology(vec![("eu".into(), 3), ("asia".into(), 1)]);
        assert!(choose_replication(Some(&nts), &two, true).is_err());
        let nts = Replication::NetworkTopology(vec![("eu".into(), 1)]);
        assert!(choose_replication(Some(&nts), &two, false).is_err());
        assert!(choose_replication(Some(&nts), &two, true).is_ok());
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        assert!(check_keyspace_name("tern").is_ok());
        assert!(check_keyspace_name("tern_test_01").is_ok());
        for bad in ["", "1tern", "tern-x", "tern;drop", "a\"b"] {
            assert!(check_keyspace_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_table_is_created_if_missing_in_the_keyspace() {
        let stmts = table_statements("ks1");
        for table in [
            "schema_version",
            "chats",
            "direct_chats",
            "members",
            "user_chats",
            "receipt_marks",
            "messages",
            "idempotency",
            "media",
            "media_chats",
            "media_unsent",
            "users",
        ] {
            let head = format!("CREATE TABLE IF NOT EXISTS ks1.{table} (");
            assert!(stmts.iter().any(|s| s.starts_with(&head)), "{table}");
        }
        for s in &stmts {
            assert!(s.starts_with("CREATE TABLE IF NOT EXISTS ks1."), "{s}");
            assert!(!s.contains("{ks}") && !s.contains("{ttl}"), "{s}");
        }
        assert!(
            stmts
                .iter()
                .any(|s| s.contains(".idempotency") && s.contains("default_time_to_live = 172800"))
        );
    }
}
