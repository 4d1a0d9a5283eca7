//! The Matrix adapter (Synapse): users registered with the server's registration shared
//! secret, rooms created with `createRoom` and joined with `/join`, messages sent with
//! `PUT /rooms/{room}/send/m.room.message/{txn}` (the 200 answer is the "ack": Synapse sends it
//! once the event is persisted in its database), and received by one `/sync` long-poll loop per
//! user (`since` = the last `next_batch`) — what a Matrix client holds instead of a socket.
//!
//! Registration and room joins are slow in Synapse, so the setup can be cached in a JSON file
//! (`--matrix-state`): repeats against the same database reuse the users and rooms.

use crate::session::{LoadPhase, SessionSpec, Shared, record_ack, record_delivery, record_error};
use crate::stamp::{Stamp, elapsed_us, unix_now_ns};
use anyhow::{Context, bail};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

/// Tokens and rooms every session needs.
pub struct Directory {
    pub base: String,
    pub http: reqwest::Client,
    pub tokens: HashMap<u64, String>,
    pub user_ids: HashMap<u64, String>,
    /// Bench chat id → Matrix room id.
    pub rooms: HashMap<u64, String>,
}

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// bench user id → (matrix user id, access token)
    users: HashMap<String, (String, String)>,
    /// setup key → room id
    rooms: HashMap<String, String>,
}

/// Setup calls against Synapse.
pub struct Admin {
    http: reqwest::Client,
    base: String,
    secret: String,
    state: Mutex<State>,
    path: Option<PathBuf>,
}

pub fn http_client(pool: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")
}

/// Percent-encode a path segment (room ids contain `!` and `:`).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The registration MAC Synapse expects: HMAC-SHA1 over nonce, user, password, admin flag.
pub fn registration_mac(secret: &str, nonce: &str, user: &str, password: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    for (i, part) in [nonce, user, password, "notadmin"].iter().enumerate() {
        if i > 0 {
            mac.update(b"\x00");
        }
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

fn localpart(user: u64) -> String {
    format!("b{user}")
}

impl Admin {
    pub fn new(base: &str, secret: &str, path: Option<PathBuf>) -> anyhow::Result<Admin> {
        let state = match &path {
            Some(p) if p.exists() => serde_json::from_slice(&std::fs::read(p)?)
                .with_context(|| format!("reading {}", p.display()))?,
            _ => State::default(),
        };
        Ok(Admin {
            http: http_client(64)?,
            base: base.trim_end_matches('/').to_owned(),
            secret: secret.to_owned(),
            state: Mutex::new(state),
            path,
        })
    }

    fn save(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.path {
            let bytes = serde_json::to_vec(&*self.state.lock().unwrap_or_else(|e| e.into_inner()))?;
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(tmp, p)?;
        }
        Ok(())
    }

    /// POST/PUT/GET with retries on 429, 5xx and connection errors.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for _ in 0..8 {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .timeout(Duration::from_secs(120));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    if status != 429 && status < 500 {
                        return Ok((status, v));
                    }
                    last = format!("HTTP {status}: {v}");
                }
                Err(e) => last = e.to_string(),
            }
            sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        bail!("{method} {path}: {last}")
    }

    async fn register(&self, user: u64) -> anyhow::Result<(String, String)> {
        let name = localpart(user);
        let password = format!("pw-{name}");
        let path = "/_synapse/admin/v1/register";
        let (_, n) = self.call(reqwest::Method::GET, path, None, None).await?;
        let nonce = n["nonce"].as_str().context("no nonce")?.to_owned();
        let mac = registration_mac(&self.secret, &nonce, &name, &password);
        let body = json!({"nonce": nonce, "username": name, "password": password, "admin": false, "mac": mac});
        let (status, v) = self
            .call(reqwest::Method::POST, path, None, Some(&body))
            .await?;
        if status == 200 {
            return Ok((
                v["user_id"].as_str().context("user_id")?.to_owned(),
                v["access_token"]
                    .as_str()
                    .context("access_token")?
                    .to_owned(),
            ));
        }
        if v["errcode"] == "M_USER_IN_USE" {
            // Registered by an earlier run whose state file is gone: log in.
            let body = json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name}, "password": password});
            let (status, v) = self
                .call(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/login",
                    None,
                    Some(&body),
                )
                .await?;
            if status == 200 {
                return Ok((
                    v["user_id"].as_str().context("user_id")?.to_owned(),
                    v["access_token"]
                        .as_str()
                        .context("access_token")?
                        .to_owned(),
                ));
            }
            bail!("login {name}: HTTP {status}: {v}");
        }
        bail!("register {name}: HTTP {status}: {v}")
    }

    /// Register every user in `ids` that the state does not know yet.
    pub async fn ensure_users(
        &self,
        ids: &[u64],
        concurrency: usize,
        done: &AtomicU64,
    ) -> anyhow::Result<()> {
        let missing: Vec<u64> = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            ids.iter()
                .copied()
                .filter(|u| !st.users.contains_key(&u.to_string()))
                .collect()
        };
        done.fetch_add((ids.len() - missing.len()) as u64, Ordering::Relaxed);
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(missing)
            .map(|u| async move {
                let r = self.register(u).await?;
                self.state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .users
                    .insert(u.to_string(), r);
                done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        self.save()?;
        results.into_iter().collect()
    }

    fn user(&self, u: u64) -> anyhow::Result<(String, String)> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .users
            .get(&u.to_string())
            .cloned()
            .with_context(|| format!("user {u} not registered"))
    }

    fn cached_room(&self, key: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rooms
            .get(key)
            .cloned()
    }

    async fn create_room(&self, creator: u64, body: Value) -> anyhow::Result<String> {
        let (_, token) = self.user(creator)?;
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&token),
                Some(&body),
            )
            .await?;
        if status != 200 {
            bail!("createRoom: HTTP {status}: {v}");
        }
        Ok(v["room_id"].as_str().context("room_id")?.to_owned())
    }

    async fn join(&self, user: u64, room: &str) -> anyhow::Result<()> {
        let (_, token) = self.user(user)?;
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/join/{}", enc(room)),
                Some(&token),
                Some(&json!({})),
            )
            .await?;
        if status != 200 {
            bail!("join {room} as {user}: HTTP {status}: {v}");
        }
        Ok(())
    }

    /// One private room per pair (a creates it, invites b; b joins).
    pub async fn direct_rooms(
        &self,
        pairs: &[(u64, u64)],
        concurrency: usize,
        done: &AtomicU64,
    ) -> anyhow::Result<Vec<String>> {
        let rooms: Vec<anyhow::Result<String>> = futures::stream::iter(pairs.iter().copied())
            .map(|(a, b)| async move {
                let key = format!("d:{a}:{b}");
                if let Some(r) = self.cached_room(&key) {
                    done.fetch_add(1, Ordering::Relaxed);
                    return Ok(r);
                }
                let (b_id, _) = self.user(b)?;
                let room = self
                    .create_room(
                        a,
                        json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [b_id]}),
                    )
                    .await?;
                self.join(b, &room).await?;
                self.state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rooms
                    .insert(key, room.clone());
                done.fetch_add(1, Ordering::Relaxed);
                Ok(room)
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        self.save()?;
        rooms.into_iter().collect()
    }

    /// A public room created by `creator` that `others` join.
    pub async fn group_room(
        &self,
        creator: u64,
        others: &[u64],
        concurrency: usize,
        done: &AtomicU64,
    ) -> anyhow::Result<String> {
        let key = format!("g:{creator}:{}", others.len() + 1);
        if let Some(r) = self.cached_room(&key) {
            return Ok(r);
        }
        let room = self
            .create_room(
                creator,
                json!({"preset": "public_chat", "name": format!("chat-bench {key}")}),
            )
            .await?;
        let joins: Vec<anyhow::Result<()>> = futures::stream::iter(others.iter().copied())
            .map(|u| {
                let room = room.clone();
                async move {
                    self.join(u, &room).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        joins.into_iter().collect::<anyhow::Result<()>>()?;
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rooms
            .insert(key, room.clone());
        self.save()?;
        Ok(room)
    }

    /// The directory for sessions: the users in `users`, rooms by bench chat id.
    pub fn directory(
        &self,
        users: &[u64],
        rooms: HashMap<u64, String>,
        pool: usize,
    ) -> anyhow::Result<Directory> {
        let mut tokens = HashMap::with_capacity(users.len());
        let mut user_ids = HashMap::with_capacity(users.len());
        for &u in users {
            let (id, t) = self.user(u)?;
            tokens.insert(u, t);
            user_ids.insert(u, id);
        }
        Ok(Directory {
            base: self.base.clone(),
            http: http_client(pool)?,
            tokens,
            user_ids,
            rooms,
        })
    }
}

/// The sync filter: only message events of other senders in the timeline, nothing else.
pub fn filter(user_id: &str) -> String {
    json!({
        "presence": {"types": []},
        "account_data": {"types": []},
        "room": {
            "state": {"types": [], "lazy_load_members": true},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
            "timeline": {"types": ["m.room.message"], "limit": 1000, "not_senders": [user_id]}
        }
    })
    .to_string()
}

/// The filter of the first `/sync`: no rooms at all. It only fetches a position (`next_batch`)
/// cheaply; Synapse's full initial sync of a 1000-member room is a separate cost (minutes for a
/// thousand clients on one core) that this bench does not measure.
pub fn position_filter() -> &'static str {
    r#"{"presence":{"types":[]},"account_data":{"types":[]},"room":{"rooms":[]}}"#
}

/// What a `/sync` answer holds for the bench.
#[derive(Debug, Default, PartialEq)]
pub struct SyncBatch {
    pub next_batch: String,
    /// (room id, body) of every message event.
    pub bodies: Vec<(String, String)>,
    /// Rooms whose timeline was cut (`limited`): events were skipped.
    pub limited: u32,
}

pub fn parse_sync(v: &Value) -> Option<SyncBatch> {
    let mut out = SyncBatch {
        next_batch: v["next_batch"].as_str()?.to_owned(),
        ..SyncBatch::default()
    };
    if let Some(rooms) = v["rooms"]["join"].as_object() {
        for (room, r) in rooms {
            if r["timeline"]["limited"].as_bool() == Some(true) {
                out.limited += 1;
            }
            for e in r["timeline"]["events"].as_array().into_iter().flatten() {
                if e["type"] == "m.room.message"
                    && let Some(b) = e["content"]["body"].as_str()
                {
                    out.bodies.push((room.clone(), b.to_owned()));
                }
            }
        }
    }
    Some(out)
}

/// One `/sync` call. `timeout_ms` 0 returns at once.
pub async fn sync(
    dir: &Directory,
    token: &str,
    filter: &str,
    since: Option<&str>,
    timeout_ms: u64,
) -> Result<SyncBatch, String> {
    let mut q: Vec<(&str, String)> = vec![
        ("timeout", timeout_ms.to_string()),
        ("filter", filter.to_owned()),
    ];
    if let Some(s) = since {
        q.push(("since", s.to_owned()));
    }
    let resp = dir
        .http
        .get(format!("{}/_matrix/client/v3/sync", dir.base))
        .bearer_auth(token)
        .query(&q)
        .timeout(Duration::from_millis(timeout_ms + 60_000))
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "sync: timeout".to_owned()
            } else if e.is_connect() {
                "sync: connect".to_owned()
            } else {
                "sync: request".to_owned()
            }
        })?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("sync: http {status}"));
    }
    let v: Value = resp.json().await.map_err(|_| "sync: bad json".to_owned())?;
    parse_sync(&v).ok_or_else(|| "sync: no next_batch".to_owned())
}

/// A held Matrix "connection": the user's token, filter and sync position.
pub struct MatrixConn {
    pub token: String,
    pub filter: String,
    pub since: String,
}

/// The equivalent of a dial: the initial `/sync` (no timeout), which gives the position.
pub async fn dial(shared: &Shared, user: u64) -> Result<(MatrixConn, Duration), String> {
    let dir = shared.matrix.get().ok_or("matrix: no directory")?;
    let token = dir.tokens.get(&user).ok_or("matrix: unknown user")?.clone();
    let uid = dir.user_ids.get(&user).ok_or("matrix: unknown user")?;
    let filter = filter(uid);
    let start = std::time::Instant::now();
    let b = sync(dir, &token, position_filter(), None, 0).await?;
    Ok((
        MatrixConn {
            token,
            filter,
            since: b.next_batch,
        },
        start.elapsed(),
    ))
}

/// Hold a Matrix session: a `/sync` long-poll loop (deliveries) and the scheduled sends.
pub async fn run(conn: MatrixConn, spec: SessionSpec, shared: Arc<Shared>) {
    shared.fleet.open.inc();
    let ended = CancellationToken::new();
    let conn = Arc::new(conn);
    futures::join!(
        sync_loop(&conn, &spec, &shared, &ended),
        send_loop(&conn, &spec, &shared, &ended),
    );
    shared.fleet.open.dec();
}

async fn sync_loop(
    conn: &MatrixConn,
    spec: &SessionSpec,
    shared: &Arc<Shared>,
    ended: &CancellationToken,
) {
    let Some(dir) = shared.matrix.get() else {
        return;
    };
    let phase_rx = shared.phase.subscribe();
    let mut since = conn.since.clone();
    let shard = spec.index as usize;
    let mut failures = 0u32;
    loop {
        let r = tokio::select! {
            r = sync(dir, &conn.token, &conn.filter, Some(&since), 30_000) => r,
            () = shared.close.cancelled() => break,
            () = ended.cancelled() => break,
        };
        match r {
            Ok(b) => {
                failures = 0;
                let now = unix_now_ns();
                since = b.next_batch;
                for _ in 0..b.limited {
                    record_error("matrix: timeline limited (gap)", false, shared, &phase_rx);
                }
                for (_, body) in &b.bodies {
                    if let Some(st) = Stamp::decode(body) {
                        record_delivery(&st, now, shard, false, shared, &phase_rx);
                    }
                }
            }
            Err(e) => {
                record_error(&e, false, shared, &phase_rx);
                failures += 1;
                if failures > 5 {
                    shared.fleet.dropped.inc();
                    shared.fleet.dropped_reasons.add(&e);
                    break;
                }
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    ended.cancel();
}

async fn send_loop(
    conn: &Arc<MatrixConn>,
    spec: &SessionSpec,
    shared: &Arc<Shared>,
    ended: &CancellationToken,
) {
    let mut phase_rx = shared.phase.subscribe();
    let far = Duration::from_secs(365 * 86_400);
    let mut active = Plan::new(phase_rx.borrow_and_update().clone(), spec);
    let mut txn: u64 = 0;
    loop {
        let next_at = active
            .as_ref()
            .map_or_else(|| Instant::now() + far, Plan::next_instant);
        tokio::select! {
            biased;
            () = shared.close.cancelled() => break,
            () = ended.cancelled() => break,
            changed = phase_rx.changed() => {
                active = match changed {
                    Ok(()) => Plan::new(phase_rx.borrow_and_update().clone(), spec),
                    Err(_) => None,
                };
            }
            () = sleep_until(next_at), if active.is_some() => {
                let Some(a) = active.as_mut() else { continue };
                if a.phase.stop.is_cancelled() {
                    active = None;
                    continue;
                }
                txn += 1;
                send_one(a, spec, shared, conn, txn);
                a.next += 1;
                if a.next >= a.plan.count {
                    active = None;
                }
            }
        }
    }
}

struct Plan {
    phase: Arc<LoadPhase>,
    chat: u64,
    plan: crate::schedule::SendPlan,
    next: u64,
}

impl Plan {
    fn new(phase: Option<Arc<LoadPhase>>, spec: &SessionSpec) -> Option<Plan> {
        let phase = phase?;
        let chat = spec.chat_id?;
        let plan = crate::schedule::plan_for(
            phase.rate,
            phase.senders,
            spec.sender_index?,
            phase.duration,
        )?;
        Some(Plan {
            phase,
            chat,
            plan,
            next: 0,
        })
    }

    fn next_instant(&self) -> Instant {
        self.phase.start + self.plan.offset(self.next)
    }
}

/// Open-loop: the send runs on its own task so a slow answer never delays the schedule.
fn send_one(a: &Plan, spec: &SessionSpec, shared: &Arc<Shared>, conn: &Arc<MatrixConn>, txn: u64) {
    let Some(dir) = shared.matrix.get() else {
        return;
    };
    let Some(room) = dir.rooms.get(&a.chat) else {
        return;
    };
    let offset = a.plan.offset(a.next);
    let scheduled_ns = a.phase.start_unix_ns + offset.as_nanos() as u64;
    let sent_ns = unix_now_ns();
    let stamp = Stamp {
        run: shared.run_id,
        phase: a.phase.id,
        conn: spec.index,
        n: a.next,
        scheduled_ns,
        sent_ns,
    };
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        dir.base,
        enc(room),
        stamp.encode()
    );
    let body = json!({"msgtype": "m.text", "body": stamp.content(a.phase.message_size)});
    let _ = txn;
    let stats = a.phase.stats.clone();
    stats.sent.inc();
    if scheduled_ns >= stats.measure_from_ns {
        stats
            .send_lag
            .record(spec.index as usize, elapsed_us(scheduled_ns, sent_ns));
    }
    let (shared, conn, shard) = (shared.clone(), conn.clone(), spec.index as usize);
    tokio::spawn(async move {
        let Some(dir) = shared.matrix.get() else {
            return;
        };
        let r = dir
            .http
            .put(url)
            .bearer_auth(&conn.token)
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let phase_rx: watch::Receiver<_> = shared.phase.subscribe();
        match r {
            Ok(resp) if resp.status().is_success() => {
                record_ack(&stamp, unix_now_ns(), shard, &shared, &phase_rx);
            }
            Ok(resp) => {
                record_error(
                    &format!("matrix send: http {}", resp.status().as_u16()),
                    true,
                    &shared,
                    &phase_rx,
                );
            }
            Err(_) => {
                stats.sent.dec();
                stats.send_failures.inc();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_matches_synapse_reference() {
        // From Synapse's docs: the MAC is hex HMAC-SHA1 of nonce\0user\0password\0notadmin.
        let m = registration_mac("secret", "n", "u", "p");
        assert_eq!(m.len(), 40);
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(b"n\x00u\x00p\x00notadmin");
        assert_eq!(m, hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn encodes_room_ids() {
        assert_eq!(enc("!abc:localhost"), "%21abc%3Alocalhost");
    }

    #[test]
    fn parses_sync() {
        let v: Value = serde_json::from_str(
            r#"{"next_batch":"s9","rooms":{"join":{"!r:h":{"timeline":{"limited":false,"events":[
              {"type":"m.room.message","sender":"@a:h","content":{"msgtype":"m.text","body":"b1.2 x"}},
              {"type":"m.room.member","content":{}}]}}}}}"#,
        )
        .unwrap();
        let b = parse_sync(&v).unwrap();
        assert_eq!(b.next_batch, "s9");
        assert_eq!(b.bodies, vec![("!r:h".to_owned(), "b1.2 x".to_owned())]);
        assert_eq!(b.limited, 0);
        assert!(parse_sync(&serde_json::json!({})).is_none());
    }
}
