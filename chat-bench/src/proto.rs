//! The systems the bench can drive, and the wire formats of the peers that speak over a
//! WebSocket (Centrifugo's JSON client protocol, Socket.IO over Engine.IO v4). Tern's own frames
//! are in `frame`; Matrix (HTTP) is in `matrix`. Pure: no I/O.
//!
//! What the bench needs from every system is the same: open an authenticated connection that
//! listens to some chats, send a message carrying a stamp, learn that it was accepted ("acked",
//! whatever the system promises at that point), and find the stamp in what other members
//! receive.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt::Write as _;

/// The system under test (`--system`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Tern's protocol (`PROTOCOL.md`): `/ws?token=`, `hello`, `message`/`ack` frames.
    Tern,
    /// Centrifugo v6, JSON client protocol over `/connection/websocket`; one channel per chat
    /// (`c<chat id>`), client-side subscribe and publish.
    Centrifugo,
    /// A Socket.IO 4 server (bench/peers/socketio): one room per chat, `message` events with
    /// acknowledgements.
    Socketio,
    /// Matrix client-server API (Synapse): `PUT …/send`, `/sync` long-polls.
    Matrix,
}

impl System {
    /// The WebSocket path (and query) for this system.
    pub fn ws_path(self) -> &'static str {
        match self {
            System::Tern => "/ws",
            System::Centrifugo => "/connection/websocket",
            System::Socketio => "/socket.io/?EIO=4&transport=websocket",
            System::Matrix => "/_matrix/client/v3/sync",
        }
    }

    /// `ws://host:port/ws` (as `Target` derives it) → this system's endpoint.
    pub fn ws_url(self, tern_ws_url: &str) -> String {
        let base = tern_ws_url.strip_suffix("/ws").unwrap_or(tern_ws_url);
        format!("{base}{}", self.ws_path())
    }

    /// Whether the client sends heartbeats (Tern: `ping` frames). The peers' servers ping and
    /// the bench answers (`Reply`).
    pub fn client_pings(self) -> bool {
        matches!(self, System::Tern)
    }
}

/// The channel (Centrifugo) or room (Socket.IO) of a chat.
pub fn channel(chat_id: u64) -> String {
    format!("c{chat_id}")
}

/// A peer frame, reduced to what the bench measures.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerEvent<'a> {
    /// An acknowledgement that carries the stamp (Socket.IO echoes `client_msg_id`).
    Ack {
        stamp: Cow<'a, str>,
    },
    /// A reply to command `id` (Centrifugo's publish reply carries no data).
    AckId {
        id: u32,
    },
    /// A message delivered to this connection. `pos` is where a client resumes from (the
    /// Centrifugo stream offset, the Socket.IO recovery offset).
    Message {
        chat_id: Option<u64>,
        seq: Option<u64>,
        stamp: Cow<'a, str>,
        pos: Option<Pos<'a>>,
    },
    /// An error; `id` if it answers a command.
    Error {
        code: String,
        id: Option<u32>,
    },
    /// The server pinged: send this back.
    Reply(&'static str),
    Other,
}

/// A resume position carried by a delivered message.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Pos<'a> {
    Offset(u64),
    Token(Cow<'a, str>),
}

// ---------------------------------------------------------------------------------------------
// Centrifugo (JSON protocol v2: one command per line, replies and pushes one per line)

/// Command ids below this are setup commands (connect, subscribe); publishes use
/// `PUBLISH_ID_BASE + n` (wrapping within u32).
pub const CF_PUBLISH_ID_BASE: u32 = 1000;

pub fn cf_connect(token: &str) -> String {
    format!(r#"{{"id":1,"connect":{{"token":"{token}","name":"chat-bench"}}}}"#)
}

/// Subscribe to a chat's channel; with `recover` = (epoch, offset), ask for what was missed.
pub fn cf_subscribe(id: u32, chat_id: u64, recover: Option<(&str, u64)>) -> String {
    let ch = channel(chat_id);
    match recover {
        None => format!(r#"{{"id":{id},"subscribe":{{"channel":"{ch}"}}}}"#),
        Some((epoch, offset)) => format!(
            r#"{{"id":{id},"subscribe":{{"channel":"{ch}","recover":true,"epoch":{},"offset":{offset}}}}}"#,
            serde_json::to_string(epoch).expect("a string serializes")
        ),
    }
}

#[derive(Serialize)]
struct CfPublish<'a> {
    id: u32,
    publish: CfPublishBody<'a>,
}
#[derive(Serialize)]
struct CfPublishBody<'a> {
    channel: &'a str,
    data: CfData<'a>,
}
#[derive(Serialize, Deserialize, Debug)]
struct CfData<'a> {
    /// The message content (its first word is the stamp).
    #[serde(borrow)]
    t: Cow<'a, str>,
}

#[derive(Deserialize)]
struct CfDataOwned {
    t: String,
}

pub fn cf_publish(id: u32, chat_id: u64, content: &str) -> String {
    serde_json::to_string(&CfPublish {
        id,
        publish: CfPublishBody {
            channel: &channel(chat_id),
            data: CfData {
                t: Cow::Borrowed(content),
            },
        },
    })
    .expect("serializes")
}

#[derive(Deserialize)]
struct CfFrame<'a> {
    #[serde(default)]
    id: Option<u32>,
    #[serde(borrow, default)]
    push: Option<CfPush<'a>>,
    #[serde(default)]
    error: Option<CfError>,
    #[serde(default)]
    publish: Option<serde::de::IgnoredAny>,
}
#[derive(Deserialize)]
struct CfPush<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "pub", default)]
    publication: Option<CfPub<'a>>,
}
#[derive(Deserialize)]
struct CfPub<'a> {
    #[serde(borrow)]
    data: CfData<'a>,
    #[serde(default)]
    offset: Option<u64>,
}
#[derive(Deserialize)]
pub struct CfError {
    pub code: u32,
    #[serde(default)]
    pub message: String,
}

fn chat_of_channel(ch: &str) -> Option<u64> {
    ch.strip_prefix('c')?.parse().ok()
}

/// One line of a Centrifugo frame.
pub fn cf_parse(line: &str) -> PeerEvent<'_> {
    let line = line.trim();
    if line == "{}" {
        return PeerEvent::Reply("{}");
    }
    let Ok(f) = serde_json::from_str::<CfFrame<'_>>(line) else {
        return PeerEvent::Error {
            code: "bench: unparseable frame".into(),
            id: None,
        };
    };
    if let Some(e) = f.error {
        return PeerEvent::Error {
            code: format!("centrifugo {} {}", e.code, e.message),
            id: f.id,
        };
    }
    if let Some(p) = f.push {
        if let Some(publication) = p.publication {
            return PeerEvent::Message {
                chat_id: p.channel.as_deref().and_then(chat_of_channel),
                seq: publication.offset,
                stamp: publication.data.t,
                pos: publication.offset.map(Pos::Offset),
            };
        }
        return PeerEvent::Other;
    }
    match (f.id, f.publish) {
        (Some(id), Some(_)) => PeerEvent::AckId { id },
        _ => PeerEvent::Other,
    }
}

/// The connect reply (`{"id":1,"connect":{…}}`), or an error.
pub fn cf_connect_reply(line: &str) -> Result<bool, String> {
    #[derive(Deserialize)]
    struct R {
        #[serde(default)]
        id: Option<u32>,
        #[serde(default)]
        connect: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        error: Option<CfError>,
    }
    let r: R = serde_json::from_str(line.trim()).map_err(|_| "unparseable".to_owned())?;
    if let Some(e) = r.error {
        return Err(format!("centrifugo {} {}", e.code, e.message));
    }
    Ok(r.id == Some(1) && r.connect.is_some())
}

/// A subscribe reply: its stream position and any recovered publications (stamps, offsets).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CfSubscribed {
    pub epoch: Option<String>,
    pub offset: u64,
    pub recovered: bool,
    pub publications: Vec<(String, u64)>,
}

pub fn cf_subscribe_reply(line: &str, id: u32) -> Option<Result<CfSubscribed, String>> {
    #[derive(Deserialize)]
    struct R {
        #[serde(default)]
        id: Option<u32>,
        #[serde(default)]
        subscribe: Option<S>,
        #[serde(default)]
        error: Option<CfError>,
    }
    #[derive(Deserialize)]
    struct S {
        #[serde(default)]
        epoch: Option<String>,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        recovered: bool,
        #[serde(default)]
        publications: Vec<P>,
    }
    #[derive(Deserialize)]
    struct P {
        data: CfDataOwned,
        #[serde(default)]
        offset: Option<u64>,
    }
    let r: R = serde_json::from_str(line.trim()).ok()?;
    if r.id != Some(id) {
        return None;
    }
    if let Some(e) = r.error {
        return Some(Err(format!("centrifugo {} {}", e.code, e.message)));
    }
    let s = r.subscribe?;
    Some(Ok(CfSubscribed {
        epoch: s.epoch,
        offset: s.offset.unwrap_or(0),
        recovered: s.recovered,
        publications: s
            .publications
            .into_iter()
            .map(|p| (p.data.t, p.offset.unwrap_or(0)))
            .collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Socket.IO (Engine.IO v4 packets over WebSocket: "0" open, "2"/"3" ping/pong, "4x" messages;
// Socket.IO packets "40" connect, "42" event, "43" ack, "44" connect error)

/// The CONNECT packet with the auth payload: the token and, to recover a session, its `pid`
/// and the offset of the last packet received.
pub fn sio_connect(token: &str, recover: Option<(&str, &str)>) -> String {
    match recover {
        None => format!(r#"40{{"token":"{token}"}}"#),
        Some((pid, offset)) => format!(
            r#"40{{"token":"{token}","pid":{},"offset":{}}}"#,
            serde_json::to_string(pid).expect("string"),
            serde_json::to_string(offset).expect("string")
        ),
    }
}

pub fn sio_join(ack_id: u64, chat_id: u64) -> String {
    format!(r#"42{ack_id}["join",{{"chat_id":{chat_id}}}]"#)
}

#[derive(Serialize)]
struct SioMessage<'a> {
    chat_id: u64,
    content: &'a str,
    client_msg_id: &'a str,
}

pub fn sio_message(ack_id: u64, chat_id: u64, content: &str, client_msg_id: &str) -> String {
    let mut s = String::with_capacity(content.len() + client_msg_id.len() + 64);
    let _ = write!(s, "42{ack_id}[\"message\",");
    s.push_str(
        &serde_json::to_string(&SioMessage {
            chat_id,
            content,
            client_msg_id,
        })
        .expect("serializes"),
    );
    s.push(']');
    s
}

#[derive(Deserialize)]
struct SioPayload<'a> {
    #[serde(default)]
    chat_id: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
}

/// The `sid`/`pid` of a CONNECT reply (`40{…}`), or the error of a `44{…}`.
pub fn sio_connected(text: &str) -> Option<Result<Option<String>, String>> {
    #[derive(Deserialize)]
    struct C {
        #[serde(default)]
        pid: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    if let Some(rest) = text.strip_prefix("40") {
        let c: C = serde_json::from_str(rest).ok()?;
        return Some(Ok(c.pid));
    }
    if let Some(rest) = text.strip_prefix("44") {
        let c: Option<C> = serde_json::from_str(rest).ok();
        return Some(Err(c
            .and_then(|c| c.message)
            .unwrap_or_else(|| "connect error".into())));
    }
    None
}

/// Split `<digits>[rest` into the ack id and the JSON array.
fn split_id(s: &str) -> (Option<u64>, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (s[..end].parse().ok(), &s[end..])
}

pub fn sio_parse(text: &str) -> PeerEvent<'_> {
    if text == "2" {
        return PeerEvent::Reply("3");
    }
    if let Some(rest) = text.strip_prefix("42") {
        // ["message", {payload}, "<offset>"?]
        let (_, arr) = split_id(rest);
        let Ok((name, payload, offset)) =
            serde_json::from_str::<(Cow<'_, str>, SioPayload<'_>, Option<Cow<'_, str>>)>(arr)
                .or_else(|_| {
                    serde_json::from_str::<(Cow<'_, str>, SioPayload<'_>)>(arr)
                        .map(|(n, p)| (n, p, None))
                })
        else {
            return PeerEvent::Other;
        };
        if name != "message" {
            return PeerEvent::Other;
        }
        let Some(stamp) = payload.client_msg_id.or(payload.content) else {
            return PeerEvent::Other;
        };
        return PeerEvent::Message {
            chat_id: payload.chat_id,
            seq: payload.seq,
            stamp,
            pos: offset.map(Pos::Token),
        };
    }
    if let Some(rest) = text.strip_prefix("43") {
        let (id, arr) = split_id(rest);
        let Ok((payload,)) = serde_json::from_str::<(SioPayload<'_>,)>(arr) else {
            return PeerEvent::Other;
        };
        if let Some(e) = payload.error {
            return PeerEvent::Error {
                code: format!("socketio {e}"),
                id: id.map(|i| i as u32),
            };
        }
        return match payload.client_msg_id {
            Some(stamp) => PeerEvent::Ack { stamp },
            None => PeerEvent::AckId {
                id: id.unwrap_or(0) as u32,
            },
        };
    }
    if text.starts_with("41") || text == "1" {
        return PeerEvent::Error {
            code: "socketio: disconnected".into(),
            id: None,
        };
    }
    PeerEvent::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            System::Centrifugo.ws_url("ws://127.0.0.1:8000/ws"),
            "ws://127.0.0.1:8000/connection/websocket"
        );
        assert_eq!(
            System::Socketio.ws_url("ws://127.0.0.1:3000/ws"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(System::Tern.ws_url("ws://h:1/ws"), "ws://h:1/ws");
    }

    #[test]
    fn centrifugo_frames() {
        let p = cf_publish(1005, 7, "b1.2.3.4.5.6 xx");
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["id"], 1005);
        assert_eq!(v["publish"]["channel"], "c7");
        assert_eq!(v["publish"]["data"]["t"], "b1.2.3.4.5.6 xx");
        assert_eq!(cf_parse("{}"), PeerEvent::Reply("{}"));
        assert_eq!(
            cf_parse(r#"{"id":1005,"publish":{}}"#),
            PeerEvent::AckId { id: 1005 }
        );
        assert_eq!(
            cf_parse(r#"{"push":{"channel":"c7","pub":{"data":{"t":"b1 x"},"offset":3}}}"#),
            PeerEvent::Message {
                chat_id: Some(7),
                seq: Some(3),
                stamp: "b1 x".into(),
                pos: Some(Pos::Offset(3))
            }
        );
        assert_eq!(
            cf_parse(r#"{"push":{"channel":"c7","pub":{"data":{"t":"b1 x"}}}}"#),
            PeerEvent::Message {
                chat_id: Some(7),
                seq: None,
                stamp: "b1 x".into(),
                pos: None
            }
        );
        assert!(matches!(
            cf_parse(r#"{"id":9,"error":{"code":103,"message":"permission denied"}}"#),
            PeerEvent::Error { id: Some(9), .. }
        ));
        assert_eq!(
            cf_connect_reply(
                r#"{"id":1,"connect":{"client":"x","version":"6","ping":25,"pong":true}}"#
            ),
            Ok(true)
        );
        let s = cf_subscribe_reply(
            r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"ab","offset":4,"recovered":true,"publications":[{"data":{"t":"b1"},"offset":4}]}}"#,
            2,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.epoch.as_deref(), Some("ab"));
        assert_eq!(s.offset, 4);
        assert!(s.recovered);
        assert_eq!(s.publications, vec![("b1".to_owned(), 4)]);
        assert!(cf_subscribe_reply(r#"{"id":3,"subscribe":{}}"#, 2).is_none());
        let r = cf_subscribe(2, 7, Some(("ab", 4)));
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(v["subscribe"]["recover"], true);
        assert_eq!(v["subscribe"]["epoch"], "ab");
    }

    #[test]
    fn socketio_frames() {
        assert_eq!(sio_parse("2"), PeerEvent::Reply("3"));
        let m = sio_message(12, 7, "b1 \"q\"", "b1");
        assert!(m.starts_with("4212[\"message\","));
        let v: serde_json::Value = serde_json::from_str(&m[4..]).unwrap();
        assert_eq!(v[1]["content"], "b1 \"q\"");
        assert_eq!(
            sio_parse(r#"4312[{"client_msg_id":"b1","seq":3}]"#),
            PeerEvent::Ack { stamp: "b1".into() }
        );
        assert_eq!(
            sio_parse(
                r#"42["message",{"chat_id":7,"seq":3,"content":"x","client_msg_id":"b1"},"Oabc"]"#
            ),
            PeerEvent::Message {
                chat_id: Some(7),
                seq: Some(3),
                stamp: "b1".into(),
                pos: Some(Pos::Token("Oabc".into()))
            }
        );
        assert_eq!(
            sio_parse(r#"42["message",{"chat_id":7,"seq":3,"content":"x","client_msg_id":"b1"}]"#),
            PeerEvent::Message {
                chat_id: Some(7),
                seq: Some(3),
                stamp: "b1".into(),
                pos: None
            }
        );
        assert_eq!(
            sio_connected(r#"40{"sid":"s","pid":"p"}"#),
            Some(Ok(Some("p".into())))
        );
        assert_eq!(
            sio_connected(r#"44{"message":"unauthorized"}"#),
            Some(Err("unauthorized".into()))
        );
        assert_eq!(sio_connect("t", None), r#"40{"token":"t"}"#);
        assert_eq!(
            sio_connect("t", Some(("p", "o"))),
            r#"40{"token":"t","pid":"p","offset":"o"}"#
        );
    }
}
