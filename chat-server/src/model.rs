//! Domain types shared by every role and both backends, and their JSON shapes (PROTOCOL.md).

use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub type UserId = u64;
pub type ChatId = u64;
pub type Seq = u64;

/// Largest id accepted from clients: ids travel as JSON numbers and must survive a JS double.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Milliseconds since the Unix epoch (UTC).
pub fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// RFC 3339, UTC, millisecond precision: `2026-01-01T12:00:00.123Z`.
pub fn format_ts(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

mod ts {
    use serde::Serializer;
    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ts(*ms))
    }
    pub mod opt {
        use serde::Serializer;
        pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_str(&super::super::format_ts(*ms)),
                None => s.serialize_none(),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    Direct,
    Group,
}

impl ChatType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatType::Direct => "direct",
            ChatType::Group => "group",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(ChatType::Direct),
            "group" => Some(ChatType::Group),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Self {
        if s == "admin" {
            Role::Admin
        } else {
            Role::Member
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub user_id: UserId,
    pub role: Role,
    #[serde(with = "ts")]
    pub joined_at: i64,
    /// The member's display name, if they have one (filled from the users table by the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The chat object of the HTTP API.
#[derive(Debug, Clone, Serialize)]
pub struct Chat {
    pub chat_id: ChatId,
    #[serde(rename = "type")]
    pub kind: ChatType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(with = "ts")]
    pub created_at: i64,
    pub last_seq: Seq,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
    /// Caller-specific fields of `GET /v1/chats`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

/// Metadata of an attached media object (filled by the media issue; carried opaquely here).
pub type MediaJson = serde_json::Value;

/// A stored message. Shared (`Arc`) between the cache, fan-out and readers.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub message_id: String,
    pub chat_id: ChatId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub content: String,
    pub media_url: Option<String>,
    pub media: Option<MediaJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    #[serde(with = "ts")]
    pub created_at: i64,
}

pub type SharedMessage = Arc<Message>;

/// A message as the `message` server frame / history entry, with the sender's status when the
/// reader is the sender.
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub frame_type: Option<&'static str>,
    #[serde(flatten)]
    pub message: &'a Message,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
}

/// What a client asks to send.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub chat_id: ChatId,
    pub sender_id: UserId,
    pub content: String,
    pub media_url: Option<String>,
    pub media: Option<MediaJson>,
    pub client_msg_id: Option<String>,
    /// Assigned by the edge in the distributed mode (so a replay of the Kafka record is
    /// recognised as the same message); the store generates one when `None`.
    pub message_id: Option<String>,
}

impl NewMessage {
    /// The key a replay or resend of this message is recognised by: the client's
    /// `client_msg_id`, else the edge-assigned `message_id`.
    pub fn dedupe_key(&self) -> Option<String> {
        match (&self.client_msg_id, &self.message_id) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(id)) => Some(mid_key(id)),
            (None, None) => None,
        }
    }
}

/// The idempotency key of a message sent without `client_msg_id` (never a valid client key
/// of another message: it names this message's own id).
pub fn mid_key(message_id: &str) -> String {
    format!("~mid:{message_id}")
}

/// The durable-acceptance answer: the `ack` frame / HTTP 201 body.
#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    pub client_msg_id: Option<String>,
    pub message_id: String,
    pub chat_id: ChatId,
    pub seq: Seq,
    #[serde(with = "ts")]
    pub created_at: i64,
}

impl Ack {
    pub fn of(m: &Message) -> Self {
        Ack {
            client_msg_id: m.client_msg_id.clone(),
            message_id: m.message_id.clone(),
            chat_id: m.chat_id,
            seq: m.seq,
            created_at: m.created_at,
        }
    }
}

/// Receipt marks of one member of a chat. Both only grow; `read_seq <= delivered_seq` is not
/// required by clients but the server keeps `delivered_seq >= read_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Marks {
    pub user_id: UserId,
    pub delivered_seq: Seq,
    pub read_seq: Seq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Presence {
    pub user_id: UserId,
    pub status: PresenceStatus,
    #[serde(with = "ts::opt")]
    pub last_seen: Option<i64>,
}

/// The sender's view of one message from the members' marks (everyone but the sender).
pub fn message_status(seq: Seq, sender: UserId, marks: &[Marks]) -> &'static str {
    let others = marks.iter().filter(|m| m.user_id != sender);
    let (mut all_read, mut all_delivered, mut any) = (true, true, false);
    for m in others {
        any = true;
        all_read &= m.read_seq >= seq;
        all_delivered &= m.delivered_seq.max(m.read_seq) >= seq;
    }
    if any && all_read {
        "read"
    } else if any && all_delivered {
        "delivered"
    } else {
        "sent"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_millis_utc() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ts(1_767_268_800_123), "2026-01-01T12:00:00.123Z");
    }

    #[test]
    fn status_needs_every_other_member() {
        let marks = [
            Marks {
                user_id: 1,
                delivered_seq: 0,
                read_seq: 0,
            },
            Marks {
                user_id: 2,
                delivered_seq: 5,
                read_seq: 3,
            },
            Marks {
                user_id: 3,
                delivered_seq: 4,
                read_seq: 4,
            },
        ];
        assert_eq!(message_status(3, 1, &marks), "read");
        assert_eq!(message_status(4, 1, &marks), "delivered");
        assert_eq!(message_status(5, 1, &marks), "sent");
        // A chat with nobody else: stays "sent".
        assert_eq!(message_status(1, 1, &marks[..1]), "sent");
    }
}
