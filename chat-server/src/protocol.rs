//! Client frames: parsing and validation, pure (no I/O). Server frames: encoding helpers.
//!
//! Parsing never panics and turns every malformed input into [`Error::Invalid`] (or
//! [`Error::TooLarge`]) with a message that says what is wrong; the fuzz target and property
//! tests in this module check that.

use crate::error::{Error, Result};
use crate::model::{Ack, ChatId, MAX_ID, Message, MessageView, Presence, ReceiptKind, Seq, UserId};
use serde::Deserialize;
use serde_json::json;

/// Largest `content`, in bytes of UTF-8.
pub const MAX_CONTENT_BYTES: usize = 16 * 1024;
/// Largest `client_msg_id`.
pub const MAX_CLIENT_MSG_ID: usize = 128;
pub const MAX_MEDIA_URL: usize = 2048;
/// Largest `user_ids` list in one `presence_subscribe`.
pub const MAX_PRESENCE_IDS: usize = 1000;
/// Largest `limit` of `sync` and history pages.
pub const MAX_PAGE: usize = 200;
pub const DEFAULT_PAGE: usize = 50;
/// A `sync` frame carries at most about this many bytes of message content; past it the page is
/// cut short (at least one message) with `has_more: true`, so one frame stays small.
pub const MAX_SYNC_BYTES: usize = 1024 * 1024;

/// Cut a page so its content fits in [`MAX_SYNC_BYTES`]. Returns whether it was cut.
pub fn fit_sync_page(messages: &mut Vec<std::sync::Arc<Message>>) -> bool {
    let mut total = 0;
    for (i, m) in messages.iter().enumerate() {
        total += m.content.len() + 256;
        if total > MAX_SYNC_BYTES && i > 0 {
            messages.truncate(i);
            return true;
        }
    }
    false
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Message(SendFrame),
    Delivered(MarkFrame),
    Read(MarkFrame),
    Sync(SyncFrame),
    PresenceSubscribe(PresenceSubscribeFrame),
    Typing(TypingFrame),
    Ping {},
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SendFrame {
    pub chat_id: u64,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub media_url: Option<String>,
    #[serde(default)]
    pub media_id: Option<String>,
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MarkFrame {
    pub chat_id: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SyncFrame {
    pub chat_id: u64,
    #[serde(default)]
    pub after_seq: u64,
    #[serde(default)]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PresenceSubscribeFrame {
    pub user_ids: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TypingFrame {
    pub chat_id: u64,
}

const KNOWN_TYPES: &[&str] = &[
    "message",
    "delivered",
    "read",
    "sync",
    "presence_subscribe",
    "typing",
    "ping",
];

/// Parse and validate one client frame (the text of one WebSocket message or one
/// `POST /v1/frames` body).
pub fn parse_client_frame(text: &str) -> Result<ClientFrame> {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => return Err(explain_parse_error(text, e)),
    };
    validate(&frame)?;
    Ok(frame)
}

fn explain_parse_error(text: &str, e: serde_json::Error) -> Error {
    if e.is_syntax() || e.is_eof() {
        return Error::invalid(format!("malformed JSON: {e}"));
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return Error::invalid(format!("malformed JSON: {e}")),
    };
    let Some(obj) = value.as_object() else {
        return Error::invalid("a frame must be a JSON object with a \"type\"");
    };
    match obj.get("type") {
        None => Error::invalid("the frame has no \"type\" field"),
        Some(serde_json::Value::String(t)) if !KNOWN_TYPES.contains(&t.as_str()) => {
            Error::invalid(format!("unknown frame type \"{}\"", truncate(t, 64)))
        }
        Some(serde_json::Value::String(t)) => Error::invalid(format!("bad \"{t}\" frame: {e}")),
        Some(_) => Error::invalid("\"type\" must be a string"),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Longest display name, in characters (Unicode scalar values).
pub const MAX_NAME_CHARS: usize = 64;
/// Longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// Characters a name or title may not contain: control characters (C0, DEL, C1: newlines and
/// tabs included) and the bidirectional overrides and isolates that let text pose as other text.
fn forbidden_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Check free text shown to other users (`what` names the field in the error): at most `max`
/// characters, not blank, no [`forbidden_char`]. It is stored as given: escaping for display
/// is the client's job.
fn check_display_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if text.chars().count() > max {
        return Err(Error::invalid(format!(
            "{what} is limited to {max} characters"
        )));
    }
    if let Some(c) = text.chars().find(|c| forbidden_char(*c)) {
        return Err(Error::invalid(format!(
            "{what} must not contain control characters (found U+{:04X})",
            c as u32
        )));
    }
    Ok(())
}

/// A user's display name (`PATCH /v1/me`, the token's `name` claim).
pub fn check_name(name: &str) -> Result<()> {
    check_display_text("name", name, MAX_NAME_CHARS)
}

/// A group title (`POST /v1/chats`, `PATCH /v1/chats/{id}`).
pub fn check_title(title: &str) -> Result<()> {
    check_display_text("title", title, MAX_TITLE_CHARS)
}

pub fn check_id(what: &str, id: u64) -> Result<u64> {
    if id == 0 || id > MAX_ID {
        return Err(Error::invalid(format!(
            "{what} must be a positive integer below 2^53"
        )));
    }
    Ok(id)
}

pub fn check_client_msg_id(id: &Option<String>) -> Result<()> {
    if let Some(id) = id
        && (id.is_empty() || id.len() > MAX_CLIENT_MSG_ID)
    {
        return Err(Error::invalid(format!(
            "client_msg_id must be 1..={MAX_CLIENT_MSG_ID} bytes"
        )));
    }
    Ok(())
}

/// Validate the fields of a send (frame or HTTP body).
pub fn check_send(f: &SendFrame) -> Result<()> {
    check_id("chat_id", f.chat_id)?;
    check_client_msg_id(&f.client_msg_id)?;
    let content_len = f.content.as_deref().map_or(0, str::len);
    if content_len > MAX_CONTENT_BYTES {
        return Err(Error::TooLarge(format!(
            "content is {content_len} bytes; the limit is {MAX_CONTENT_BYTES} bytes of UTF-8"
        )));
    }
    if let Some(url) = &f.media_url
        && url.len() > MAX_MEDIA_URL
    {
        return Err(Error::invalid(format!(
            "media_url longer than {MAX_MEDIA_URL} bytes"
        )));
    }
    if let Some(id) = &f.media_id
        && (id.is_empty() || id.len() > 128)
    {
        return Err(Error::invalid("media_id must be 1..=128 bytes"));
    }
    let has_media = f.media_url.as_deref().is_some_and(|u| !u.is_empty()) || f.media_id.is_some();
    if content_len == 0 && !has_media {
        return Err(Error::invalid("a message needs non-empty content or media"));
    }
    Ok(())
}

fn validate(frame: &ClientFrame) -> Result<()> {
    match frame {
        ClientFrame::Message(f) => check_send(f),
        ClientFrame::Delivered(m) | ClientFrame::Read(m) => {
            check_id("chat_id", m.chat_id)?;
            if m.seq > MAX_ID {
                return Err(Error::invalid("seq out of range"));
            }
            Ok(())
        }
        ClientFrame::Sync(s) => {
            check_id("chat_id", s.chat_id)?;
            if s.after_seq > MAX_ID {
                return Err(Error::invalid("after_seq out of range"));
            }
            match s.limit {
                Some(0) => Err(Error::invalid("limit must be at least 1")),
                _ => Ok(()),
            }
        }
        ClientFrame::PresenceSubscribe(p) => {
            if p.user_ids.len() > MAX_PRESENCE_IDS {
                return Err(Error::invalid(format!(
                    "at most {MAX_PRESENCE_IDS} user_ids per presence_subscribe"
                )));
            }
            for id in &p.user_ids {
                check_id("user_id", *id)?;
            }
            Ok(())
        }
        ClientFrame::Typing(t) => check_id("chat_id", t.chat_id).map(drop),
        ClientFrame::Ping {} => Ok(()),
    }
}

/// Clamp a requested page size to `1..=MAX_PAGE`, defaulting to [`DEFAULT_PAGE`].
pub fn page_limit(limit: Option<u64>) -> usize {
    limit.map_or(DEFAULT_PAGE, |l| (l as usize).clamp(1, MAX_PAGE))
}

// ---- server frames ------------------------------------------------------------------------

pub fn hello(
    user_id: UserId,
    session_id: &str,
    heartbeat_interval_s: u64,
    name: Option<&str>,
) -> String {
    let mut v = json!({"type": "hello", "user_id": user_id, "session_id": session_id,
           "heartbeat_interval": heartbeat_interval_s});
    if let Some(name) = name {
        v["name"] = json!(name);
    }
    v.to_string()
}

/// What a `chat` frame announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatEvent {
    Created,
    MemberAdded,
    MemberRemoved,
    Updated,
}

impl ChatEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatEvent::Created => "created",
            ChatEvent::MemberAdded => "member_added",
            ChatEvent::MemberRemoved => "member_removed",
            ChatEvent::Updated => "updated",
        }
    }
}

/// `{"type":"chat","event":…,"chat":{…},"user_ids":[…]}`: `chat` is the chat object of
/// `GET /v1/chats/{id}` (with members); `user_ids` (the members added or removed) only for
/// those events.
pub fn chat_frame(event: ChatEvent, chat: &serde_json::Value, user_ids: &[UserId]) -> String {
    let mut v = json!({"type": "chat", "event": event.as_str(), "chat": chat});
    if matches!(event, ChatEvent::MemberAdded | ChatEvent::MemberRemoved) {
        v["user_ids"] = json!(user_ids);
    }
    v.to_string()
}

pub fn message_frame(m: &Message) -> String {
    serde_json::to_string(&MessageView {
        frame_type: Some("message"),
        message: m,
        status: None,
    })
    .expect("message serializes")
}

pub fn ack_frame(a: &Ack) -> String {
    let mut v = serde_json::to_value(a).expect("ack serializes");
    v["type"] = json!("ack");
    if a.client_msg_id.is_none() {
        v.as_object_mut().map(|o| o.remove("client_msg_id"));
    }
    v.to_string()
}

pub fn error_frame(e: &Error, client_msg_id: Option<&str>) -> String {
    error_frame_in(e, client_msg_id, None)
}

/// An `error` frame that also names the chat the failed frame was about (an optional field:
/// a compatible extension of the contract).
pub fn error_frame_in(e: &Error, client_msg_id: Option<&str>, chat_id: Option<ChatId>) -> String {
    let mut v = json!({"type": "error", "code": e.code(), "message": e.public_message()});
    if let Some(id) = client_msg_id {
        v["client_msg_id"] = json!(id);
    }
    if let Some(c) = chat_id {
        v["chat_id"] = json!(c);
    }
    v.to_string()
}

pub fn receipt_frame(chat_id: ChatId, user_id: UserId, status: ReceiptKind, seq: Seq) -> String {
    json!({"type": "receipt", "chat_id": chat_id, "user_id": user_id, "status": status, "seq": seq})
        .to_string()
}

pub fn sync_frame(chat_id: ChatId, messages: &[std::sync::Arc<Message>], has_more: bool) -> String {
    let views: Vec<_> = messages
        .iter()
        .map(|m| MessageView {
            frame_type: None,
            message: m,
            status: None,
        })
        .collect();
    json!({"type": "sync", "chat_id": chat_id, "messages": views, "has_more": has_more}).to_string()
}

pub fn presence_frame(p: &Presence) -> String {
    let mut v = serde_json::to_value(p).expect("presence serializes");
    v["type"] = json!("presence");
    v.to_string()
}

pub fn typing_frame(chat_id: ChatId, user_id: UserId) -> String {
    json!({"type": "typing", "chat_id": chat_id, "user_id": user_id}).to_string()
}

pub fn pong_frame() -> String {
    r#"{"type":"pong"}"#.to_string()
}

pub fn reconnect_frame(after_ms: u64) -> String {
    json!({"type": "reconnect", "after_ms": after_ms}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_frame_type() {
        let f = parse_client_frame(
            r#"{"type":"message","chat_id":7,"content":"hi","client_msg_id":"c1","extra":1}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Message(SendFrame { chat_id: 7, .. })
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"read","chat_id":7,"seq":3}"#).unwrap(),
            ClientFrame::Read(MarkFrame { chat_id: 7, seq: 3 })
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"sync","chat_id":7,"after_seq":2}"#).unwrap(),
            ClientFrame::Sync(_)
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping {}
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"presence_subscribe","user_ids":[1,2]}"#).unwrap(),
            ClientFrame::PresenceSubscribe(_)
        ));
    }

    fn err(text: &str) -> Error {
        parse_client_frame(text).unwrap_err()
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        assert!(err("{not json").to_string().contains("malformed JSON"));
        assert!(err("[1,2]").to_string().contains("JSON object"));
        assert!(err(r#"{"chat_id":1}"#).to_string().contains("no \"type\""));
        assert!(
            err(r#"{"type":"nope"}"#)
                .to_string()
                .contains("unknown frame type \"nope\"")
        );
        assert!(
            err(r#"{"type":7}"#)
                .to_string()
                .contains("must be a string")
        );
        let e = err(r#"{"type":"message","content":"x"}"#);
        assert!(e.to_string().contains("chat_id"), "{e}");
        let e = err(r#"{"type":"message","chat_id":"7","content":"x"}"#);
        assert_eq!(e.code(), "invalid");
        assert_eq!(
            err(r#"{"type":"message","chat_id":0,"content":"x"}"#).code(),
            "invalid"
        );
        assert_eq!(err(r#"{"type":"message","chat_id":1}"#).code(), "invalid");
        assert_eq!(
            err(r#"{"type":"message","chat_id":1,"content":""}"#).code(),
            "invalid"
        );
        let big = "x".repeat(MAX_CONTENT_BYTES + 1);
        let e = err(&format!(
            r#"{{"type":"message","chat_id":1,"content":"{big}"}}"#
        ));
        assert_eq!(e.code(), "too_large");
        // Exactly at the limit is fine, counted in bytes not chars.
        let at = "é".repeat(MAX_CONTENT_BYTES / 2);
        assert!(
            parse_client_frame(&format!(
                r#"{{"type":"message","chat_id":1,"content":"{at}"}}"#
            ))
            .is_ok()
        );
        assert_eq!(
            err(r#"{"type":"sync","chat_id":1,"limit":0}"#).code(),
            "invalid"
        );
        assert_eq!(
            err(r#"{"type":"read","chat_id":1,"seq":-1}"#).code(),
            "invalid"
        );
    }

    #[test]
    fn names_and_titles_are_checked() {
        assert!(check_name("Ada Lovelace").is_ok());
        assert!(
            check_name("<img src=x onerror=alert(1)>").is_ok(),
            "stored as given"
        );
        assert!(check_name(&"é".repeat(64)).is_ok(), "characters, not bytes");
        let code = |r: Result<()>| r.unwrap_err().code();
        assert_eq!(code(check_name(&"x".repeat(65))), "invalid");
        assert_eq!(code(check_name("   ")), "invalid");
        assert_eq!(code(check_name("a\nb")), "invalid");
        assert_eq!(code(check_name("a\u{7f}")), "invalid");
        assert_eq!(code(check_name("evil\u{202E}gnp.exe")), "invalid");
        assert!(
            check_name("a\tb")
                .unwrap_err()
                .to_string()
                .contains("U+0009")
        );
        assert!(check_title(&"t".repeat(200)).is_ok());
        assert_eq!(code(check_title(&"t".repeat(201))), "invalid");
    }

    #[test]
    fn chat_frames_carry_user_ids_only_for_membership_events() {
        let chat = json!({"chat_id": 5});
        let v: serde_json::Value =
            serde_json::from_str(&chat_frame(ChatEvent::MemberAdded, &chat, &[7, 8])).unwrap();
        assert_eq!(v["type"], "chat");
        assert_eq!(v["event"], "member_added");
        assert_eq!(v["user_ids"], json!([7, 8]));
        assert_eq!(v["chat"]["chat_id"], 5);
        let v: serde_json::Value =
            serde_json::from_str(&chat_frame(ChatEvent::Updated, &chat, &[])).unwrap();
        assert!(v.get("user_ids").is_none());
    }

    #[test]
    fn page_limits_clamp() {
        assert_eq!(page_limit(None), 50);
        assert_eq!(page_limit(Some(1000)), 200);
        assert_eq!(page_limit(Some(0)), 1);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,300}") {
            let _ = parse_client_frame(&s);
        }

        #[test]
        fn never_panics_on_json_like_input(
            t in prop::sample::select(vec!["message","read","delivered","sync","typing","ping","presence_subscribe","x"]),
            chat in any::<i64>(), seq in any::<i64>(), content in ".{0,40}"
        ) {
            let text = format!(r#"{{"type":"{t}","chat_id":{chat},"seq":{seq},"after_seq":{seq},"content":{},"user_ids":[{chat}]}}"#,
                serde_json::to_string(&content).unwrap());
            if let Ok(ClientFrame::Message(m)) = parse_client_frame(&text) { prop_assert!(m.chat_id > 0 && m.chat_id <= MAX_ID) }
        }
    }
}
