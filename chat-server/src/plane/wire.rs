//! What distributed processes say to each other: the Kafka record of an accepted send, the
//! batches delivery publishes to an edge's Redis channel, the recent-cache entries and the
//! broadcast notices. Pure (de)serialisation, unit-tested; JSON so that an operator can read a
//! record with `kafka-console-consumer` or `redis-cli SUBSCRIBE`.

use crate::error::Error;
use crate::model::{Ack, ChatId, MediaJson, Message, NewMessage, Presence, Seq, UserId};
use serde::{Deserialize, Serialize};

/// Current format of every payload below; readers refuse newer ones loudly.
pub const VERSION: u32 = 1;

/// One record of the message log (`<cluster>.messages`, keyed by `chat_id`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendRecord {
    pub v: u32,
    /// The edge that accepted the send (where the ack goes).
    pub node: String,
    /// The edge's correlation id of the waiting reply.
    pub corr: u64,
    /// The sending connection on that edge (it gets the ack, not the message).
    pub conn: Option<u64>,
    /// When the edge accepted it (ms since the epoch), for the latency histogram.
    pub accepted_ms: i64,
    pub message_id: String,
    pub chat_id: ChatId,
    pub sender_id: UserId,
    pub content: String,
    pub media_url: Option<String>,
    pub media: Option<MediaJson>,
    pub client_msg_id: Option<String>,
}

impl SendRecord {
    pub fn to_new_message(&self) -> NewMessage {
        NewMessage {
            chat_id: self.chat_id,
            sender_id: self.sender_id,
            content: self.content.clone(),
            media_url: self.media_url.clone(),
            media: self.media.clone(),
            client_msg_id: self.client_msg_id.clone(),
            message_id: Some(self.message_id.clone()),
        }
    }
}

/// An ack or error for a send, carried back to its edge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok {
        client_msg_id: Option<String>,
        message_id: String,
        chat_id: ChatId,
        seq: Seq,
        created_at: i64,
    },
    Err {
        code: String,
        message: String,
    },
}

impl Outcome {
    pub fn of(r: &crate::error::Result<Ack>) -> Self {
        match r {
            Ok(a) => Outcome::Ok {
                client_msg_id: a.client_msg_id.clone(),
                message_id: a.message_id.clone(),
                chat_id: a.chat_id,
                seq: a.seq,
                created_at: a.created_at,
            },
            Err(e) => Outcome::Err {
                code: e.code().to_string(),
                message: e.public_message(),
            },
        }
    }

    pub fn into_result(self) -> crate::error::Result<Ack> {
        match self {
            Outcome::Ok {
                client_msg_id,
                message_id,
                chat_id,
                seq,
                created_at,
            } => Ok(Ack {
                client_msg_id,
                message_id,
                chat_id,
                seq,
                created_at,
            }),
            Outcome::Err { code, message } => Err(error_from_code(&code, message)),
        }
    }
}

/// Rebuild an error from its protocol code (the inverse of [`Error::code`]).
pub fn error_from_code(code: &str, message: String) -> Error {
    match code {
        "invalid" => Error::Invalid(message),
        "unauthenticated" => Error::Unauthenticated(message),
        "forbidden" => Error::Forbidden(message),
        "not_found" => Error::NotFound(message),
        "conflict" | "group_full" => Error::Conflict(message),
        "too_large" => Error::TooLarge(message),
        "unsupported_media_type" => Error::UnsupportedMediaType(message),
        "rate_limited" => Error::RateLimited(message),
        "unavailable" => Error::Unavailable(message),
        _ => Error::Internal(message),
    }
}

/// One item of a batch for an edge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum EdgeItem {
    /// Queue `frame` on every local connection of `users`, except connection `except`.
    Deliver {
        users: Vec<UserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except: Option<u64>,
        frame: String,
    },
    /// The answer to the send with correlation id `corr`.
    Ack { corr: u64, outcome: Outcome },
}

/// What is published on `<cluster>:edge:<node>`: items in order (a message's fan-out before
/// its ack, messages of a chat in `seq` order).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeBatch {
    pub v: u32,
    pub items: Vec<EdgeItem>,
}

/// Broadcast on `<cluster>:notice` to every process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Notice {
    /// A user went online/offline: every edge tells its local watchers and partners.
    Presence {
        user_id: UserId,
        online: bool,
        last_seen: Option<i64>,
    },
    /// A chat's membership changed: drop cached members.
    Members { chat_id: ChatId },
    /// These users' direct partners changed: drop cached partners.
    Partners { users: Vec<UserId> },
}

impl Notice {
    pub fn presence(p: &Presence) -> Self {
        Notice::Presence {
            user_id: p.user_id,
            online: p.status == crate::model::PresenceStatus::Online,
            last_seen: p.last_seen,
        }
    }
}

/// A message in the recent cache (`<cluster>:recent:<chat>`, score = seq).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedMessage {
    pub message_id: String,
    pub chat_id: ChatId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub content: String,
    pub media_url: Option<String>,
    pub media: Option<MediaJson>,
    pub client_msg_id: Option<String>,
    pub created_at: i64,
}

impl From<&Message> for CachedMessage {
    fn from(m: &Message) -> Self {
        CachedMessage {
            message_id: m.message_id.clone(),
            chat_id: m.chat_id,
            seq: m.seq,
            sender_id: m.sender_id,
            content: m.content.clone(),
            media_url: m.media_url.clone(),
            media: m.media.clone(),
            client_msg_id: m.client_msg_id.clone(),
            created_at: m.created_at,
        }
    }
}

impl From<CachedMessage> for Message {
    fn from(m: CachedMessage) -> Self {
        Message {
            message_id: m.message_id,
            chat_id: m.chat_id,
            seq: m.seq,
            sender_id: m.sender_id,
            content: m.content,
            media_url: m.media_url,
            media: m.media,
            client_msg_id: m.client_msg_id,
            created_at: m.created_at,
        }
    }
}

/// Decode a payload, refusing a newer format with a message that says what to do.
pub fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, String> {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(default)]
        v: Option<u32>,
    }
    if let Ok(Versioned { v: Some(v) }) = serde_json::from_slice::<Versioned>(bytes)
        && v > VERSION
    {
        return Err(format!(
            "{what} has format version {v}, this build reads up to {VERSION}: upgrade this process"
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("undecodable {what}: {e}"))
}

/// A run of cached messages fit to answer "after `after_seq`": it must start right after it
/// and be contiguous (a gap means the cache missed a write; the store is asked instead).
pub fn contiguous_after(after_seq: Seq, messages: &[Message]) -> bool {
    messages
        .iter()
        .enumerate()
        .all(|(i, m)| m.seq == after_seq + 1 + i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: Seq) -> Message {
        Message {
            message_id: format!("m{seq}"),
            chat_id: 7,
            seq,
            sender_id: 1,
            content: "hi".into(),
            media_url: None,
            media: None,
            client_msg_id: None,
            created_at: 5,
        }
    }

    #[test]
    fn records_round_trip_and_newer_versions_are_refused() {
        let r = SendRecord {
            v: VERSION,
            node: "edge-1".into(),
            corr: 9,
            conn: Some(3),
            accepted_ms: 1,
            message_id: "id".into(),
            chat_id: 7,
            sender_id: 1,
            content: "héllo".into(),
            media_url: None,
            media: None,
            client_msg_id: Some("c1".into()),
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode::<SendRecord>("record", &bytes).unwrap(), r);
        assert_eq!(r.to_new_message().dedupe_key().as_deref(), Some("c1"));
        let mut newer = serde_json::to_value(&r).unwrap();
        newer["v"] = 99.into();
        let err = decode::<SendRecord>("record", newer.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("upgrade"), "{err}");
        assert!(decode::<SendRecord>("record", b"{").is_err());
    }

    #[test]
    fn outcomes_keep_their_error_code() {
        for e in [
            Error::Unavailable("x".into()),
            Error::Forbidden("y".into()),
            Error::NotFound("z".into()),
        ] {
            let code = e.code();
            let back = Outcome::of(&Err(e)).into_result().unwrap_err();
            assert_eq!(back.code(), code);
        }
        let batch = EdgeBatch {
            v: VERSION,
            items: vec![
                EdgeItem::Deliver {
                    users: vec![1, 2],
                    except: None,
                    frame: "{}".into(),
                },
                EdgeItem::Ack {
                    corr: 1,
                    outcome: Outcome::Err {
                        code: "invalid".into(),
                        message: "m".into(),
                    },
                },
            ],
        };
        let s = serde_json::to_string(&batch).unwrap();
        assert_eq!(decode::<EdgeBatch>("batch", s.as_bytes()).unwrap(), batch);
    }

    #[test]
    fn only_contiguous_runs_answer_from_the_cache() {
        assert!(contiguous_after(3, &[msg(4), msg(5)]));
        assert!(contiguous_after(3, &[]));
        assert!(!contiguous_after(3, &[msg(5)]));
        assert!(!contiguous_after(3, &[msg(4), msg(6)]));
    }
}
