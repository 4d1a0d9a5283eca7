//! The few protocol frames the bench sends and the fields it reads from what it receives
//! (see `PROTOCOL.md`). Pure: no I/O.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Client `message` frame.
#[derive(Debug, Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    chat_id: u64,
    content: &'a str,
    client_msg_id: &'a str,
}

pub fn encode_message(chat_id: u64, content: &str, client_msg_id: &str) -> String {
    serde_json::to_string(&MessageFrame {
        kind: "message",
        chat_id,
        content,
        client_msg_id,
    })
    .expect("a struct of strings and integers always serializes")
}

pub const PING: &str = r#"{"type":"ping"}"#;

/// What the bench needs from a server frame; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    chat_id: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    user_id: Option<u64>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    after_ms: Option<u64>,
}

/// A server frame, reduced to what the bench measures.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    Hello {
        user_id: Option<u64>,
    },
    /// The sender's confirmation that a message is durable.
    Ack {
        client_msg_id: Option<Cow<'a, str>>,
        seq: Option<u64>,
    },
    /// A message delivered to a member. `stamp_text` is the `client_msg_id` if the server
    /// echoed it, else the content.
    Message {
        chat_id: Option<u64>,
        seq: Option<u64>,
        stamp_text: Option<Cow<'a, str>>,
    },
    Error {
        code: Cow<'a, str>,
        client_msg_id: Option<Cow<'a, str>>,
    },
    Pong,
    Reconnect {
        after_ms: Option<u64>,
    },
    /// presence, receipt, typing, sync…: counted, not measured.
    Other,
}

/// Parse a text frame; `None` if it is not JSON with a `type`.
pub fn parse(text: &str) -> Option<Inbound<'_>> {
    let f: RawFrame<'_> = serde_json::from_str(text).ok()?;
    Some(match f.kind.as_ref() {
        "hello" => Inbound::Hello { user_id: f.user_id },
        "ack" => Inbound::Ack {
            client_msg_id: f.client_msg_id,
            seq: f.seq,
        },
        "message" => Inbound::Message {
            chat_id: f.chat_id,
            seq: f.seq,
            stamp_text: f.client_msg_id.or(f.content),
        },
        "error" => Inbound::Error {
            code: f.code.unwrap_or(Cow::Borrowed("unknown")),
            client_msg_id: f.client_msg_id,
        },
        "pong" => Inbound::Pong,
        "reconnect" => Inbound::Reconnect {
            after_ms: f.after_ms,
        },
        _ => Inbound::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_is_protocol_json() {
        let s = encode_message(7, "hi \"there\"", "b1.0.0.0.1.2");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["chat_id"], 7);
        assert_eq!(v["content"], "hi \"there\"");
        assert_eq!(v["client_msg_id"], "b1.0.0.0.1.2");
    }

    #[test]
    fn reads_the_frames_it_measures() {
        assert_eq!(
            parse(r#"{"type":"hello","user_id":5,"session_id":"s","heartbeat_interval":30}"#),
            Some(Inbound::Hello { user_id: Some(5) })
        );
        assert_eq!(
            parse(
                r#"{"type":"ack","client_msg_id":"c1","message_id":"m","chat_id":1,"seq":9,"created_at":"t"}"#
            ),
            Some(Inbound::Ack {
                client_msg_id: Some("c1".into()),
                seq: Some(9)
            })
        );
        let m = r#"{"type":"message","message_id":"m","chat_id":3,"seq":4,"sender_id":1,"content":"body","media_url":null,"media":null,"created_at":"t"}"#;
        assert_eq!(
            parse(m),
            Some(Inbound::Message {
                chat_id: Some(3),
                seq: Some(4),
                stamp_text: Some("body".into())
            })
        );
        let m = r#"{"type":"message","chat_id":3,"seq":4,"content":"body","client_msg_id":"id"}"#;
        assert_eq!(
            parse(m),
            Some(Inbound::Message {
                chat_id: Some(3),
                seq: Some(4),
                stamp_text: Some("id".into())
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"error","code":"rate_limited","message":"slow down","client_msg_id":"c2"}"#
            ),
            Some(Inbound::Error {
                code: "rate_limited".into(),
                client_msg_id: Some("c2".into())
            })
        );
        assert_eq!(parse(r#"{"type":"pong"}"#), Some(Inbound::Pong));
        assert_eq!(
            parse(r#"{"type":"reconnect","after_ms":500}"#),
            Some(Inbound::Reconnect {
                after_ms: Some(500)
            })
        );
        assert_eq!(
            parse(r#"{"type":"presence","user_id":2,"status":"online"}"#),
            Some(Inbound::Other)
        );
    }

    #[test]
    fn garbage_is_not_a_frame() {
        assert_eq!(parse("not json"), None);
        assert_eq!(parse(r#"{"no_type":1}"#), None);
    }
}
