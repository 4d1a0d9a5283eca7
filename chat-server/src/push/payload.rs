//! What a notification says and the request bodies of the three providers; how their answers
//! are read. Pure: no I/O.

use super::{Device, Pending, Platform};
use crate::model::{ChatId, ChatType, Seq, UserId, format_ts};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The notification of one (user, chat): the JSON the webhook and Web Push carry, and the
/// source of the gateway's fields. Fixed when it is scheduled (the badge is of that moment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Always `"message"` (room for other kinds later).
    #[serde(rename = "type")]
    pub kind: String,
    pub chat_id: ChatId,
    pub chat_type: ChatType,
    /// Display title: the group's title, else "New message".
    pub title: String,
    /// Display text: the latest message (with how many more), or only a count when content
    /// is hidden.
    pub body: String,
    /// Messages this notification covers.
    pub count: u32,
    /// The user's unread messages over all chats when it was scheduled.
    pub badge: u64,
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// Absent with `--push-hide-content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<UserId>,
    /// The latest message's text (at most 200 characters); absent with `--push-hide-content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

fn plural(n: u32) -> String {
    if n == 1 {
        "1 new message".into()
    } else {
        format!("{n} new messages")
    }
}

/// The notification for a pending row.
pub fn build(
    p: &Pending,
    chat_type: ChatType,
    chat_title: Option<&str>,
    badge: u64,
    hide_content: bool,
) -> Notification {
    let title = match (chat_type, chat_title) {
        (ChatType::Group, Some(t)) if !t.is_empty() => t.to_string(),
        _ => "New message".to_string(),
    };
    let body = if hide_content {
        plural(p.count)
    } else if p.count == 1 {
        p.preview.clone()
    } else {
        format!("{} (+{} more)", p.preview, p.count - 1)
    };
    Notification {
        kind: "message".into(),
        chat_id: p.chat_id,
        chat_type,
        title,
        body,
        count: p.count,
        badge,
        first_seq: p.first_seq,
        last_seq: p.last_seq,
        sender_id: (!hide_content).then_some(p.sender_id),
        preview: (!hide_content).then(|| p.preview.clone()),
    }
}

/// `data` of a gateway notification: string values only (FCM requires it).
fn gateway_data(n: &Notification) -> Value {
    let mut d = json!({
        "type": n.kind,
        "chat_id": n.chat_id.to_string(),
        "chat_type": n.chat_type.as_str(),
        "count": n.count.to_string(),
        "first_seq": n.first_seq.to_string(),
        "last_seq": n.last_seq.to_string(),
    });
    if let Some(s) = n.sender_id {
        d["sender_id"] = json!(s.to_string());
    }
    d
}

/// Gorush `platform` numbers.
pub const GORUSH_IOS: u8 = 1;
pub const GORUSH_ANDROID: u8 = 2;

/// The `POST /api/push` body of a Gorush-compatible gateway: one notification per platform.
pub fn gateway_body(n: &Notification, devices: &[Device], apns_topic: Option<&str>) -> Value {
    let thread = format!("chat-{}", n.chat_id);
    let mut notifications = Vec::new();
    for (platform, code) in [
        (Platform::Ios, GORUSH_IOS),
        (Platform::Android, GORUSH_ANDROID),
    ] {
        let tokens: Vec<&str> = devices
            .iter()
            .filter(|d| d.platform == platform)
            .map(|d| d.token.as_str())
            .collect();
        if tokens.is_empty() {
            continue;
        }
        let mut one = json!({
            "tokens": tokens,
            "platform": code,
            "title": n.title,
            "message": n.body,
            "badge": n.badge,
            "data": gateway_data(n),
        });
        if platform == Platform::Ios {
            one["thread_id"] = json!(thread);
            one["sound"] = json!("default");
            if let Some(t) = apns_topic {
                one["topic"] = json!(t);
            }
        } else {
            one["collapse_key"] = json!(thread);
            one["priority"] = json!("high");
        }
        notifications.push(one);
    }
    json!({ "notifications": notifications })
}

/// The webhook body: the notification, who it is for, and the devices to reach.
pub fn webhook_body(
    id: &str,
    user_id: UserId,
    n: &Notification,
    devices: &[Device],
    created_ms: i64,
    attempt: u32,
) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|d| json!({"platform": d.platform.as_str(), "token": d.token}))
        .collect();
    json!({
        "id": id,
        "user_id": user_id,
        "devices": devices,
        "notification": n,
        "created_at": format_ts(created_ms),
        "attempt": attempt,
    })
}

/// How a provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted. `unregistered` lists tokens the provider reported as no longer valid.
    Delivered { unregistered: Vec<String> },
    /// Every device of the request is gone (Web Push 404/410, webhook 410).
    Unregistered,
    /// Try again later (5xx, 408, 429, network errors).
    Retry(String),
    /// A permanent error (other 4xx): retrying will not help.
    Fail(String),
}

fn by_status(status: u16, body: &str) -> Option<Answer> {
    let short: String = body.chars().take(200).collect();
    match status {
        200..=299 => None,
        408 | 425 | 429 | 500..=599 => Some(Answer::Retry(format!("HTTP {status}: {short}"))),
        _ => Some(Answer::Fail(format!("HTTP {status}: {short}"))),
    }
}

/// Whether a provider's error string means the token is gone for good (APNs `Unregistered` /
/// `BadDeviceToken`, FCM `NotRegistered` / `UNREGISTERED` / `InvalidRegistration`).
pub fn is_unregistered_error(e: &str) -> bool {
    let e: String = e
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    [
        "unregistered",
        "notregistered",
        "invalidregistration",
        "baddevicetoken",
        "requestedentitywasnotfound",
    ]
    .iter()
    .any(|m| e.contains(m))
}

#[derive(Deserialize)]
struct GatewayAnswer {
    #[serde(default)]
    logs: Vec<GatewayLog>,
}

#[derive(Deserialize)]
struct GatewayLog {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    error: String,
}

/// A gateway's answer. With Gorush's `sync: true` the body lists failed tokens in `logs`;
/// the unregistered ones are reported so their devices are removed.
pub fn classify_gateway(status: u16, body: &str) -> Answer {
    if let Some(a) = by_status(status, body) {
        return a;
    }
    let unregistered = serde_json::from_str::<GatewayAnswer>(body)
        .map(|a| {
            a.logs
                .into_iter()
                .filter(|l| l.kind == "failed-push" && is_unregistered_error(&l.error))
                .map(|l| l.token)
                .collect()
        })
        .unwrap_or_default();
    Answer::Delivered { unregistered }
}

#[derive(Deserialize)]
struct WebhookAnswer {
    #[serde(default)]
    unregistered: Vec<String>,
}

/// A webhook's answer: 2xx (optionally `{"unregistered":["token",…]}`), 410 = all of the
/// request's devices are gone, other statuses as HTTP says.
pub fn classify_webhook(status: u16, body: &str) -> Answer {
    if status == 410 {
        return Answer::Unregistered;
    }
    if let Some(a) = by_status(status, body) {
        return a;
    }
    let unregistered = serde_json::from_str::<WebhookAnswer>(body)
        .map(|a| a.unregistered)
        .unwrap_or_default();
    Answer::Delivered { unregistered }
}

/// A push service's answer (RFC 8030): 201, or 404/410 for an expired subscription.
pub fn classify_webpush(status: u16, body: &str) -> Answer {
    if status == 404 || status == 410 {
        return Answer::Unregistered;
    }
    by_status(status, body).unwrap_or(Answer::Delivered {
        unregistered: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(count: u32) -> Pending {
        Pending {
            shard: 0,
            user_id: 2,
            chat_id: 7,
            count,
            first_seq: 3,
            last_seq: 2 + count as u64,
            sender_id: 1,
            preview: "hello".into(),
            first_at_ms: 0,
            due_at_ms: 0,
        }
    }

    fn dev(p: Platform, t: &str) -> Device {
        Device {
            user_id: 2,
            platform: p,
            token: t.into(),
            p256dh: None,
            auth: None,
        }
    }

    #[test]
    fn text_counts_and_hides_content_on_request() {
        let n = build(&pending(1), ChatType::Direct, None, 4, false);
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("New message", "hello")
        );
        assert_eq!(
            (n.badge, n.sender_id, n.preview.as_deref()),
            (4, Some(1), Some("hello"))
        );
        let n = build(&pending(3), ChatType::Group, Some("team"), 9, false);
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("team", "hello (+2 more)")
        );
        assert_eq!((n.first_seq, n.last_seq), (3, 5));
        let n = build(&pending(3), ChatType::Group, Some("team"), 9, true);
        assert_eq!(n.body, "3 new messages");
        assert_eq!((n.sender_id, n.preview.clone()), (None, None));
        let v = serde_json::to_value(&n).unwrap();
        assert!(v.get("preview").is_none() && v.get("sender_id").is_none());
        assert!(!v.to_string().contains("hello"));
    }

    #[test]
    fn gateway_body_splits_platforms() {
        let n = build(&pending(2), ChatType::Direct, None, 5, false);
        let b = gateway_body(
            &n,
            &[
                dev(Platform::Ios, "i1"),
                dev(Platform::Android, "a1"),
                dev(Platform::Ios, "i2"),
            ],
            Some("com.example.app"),
        );
        let ns = b["notifications"].as_array().unwrap();
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[0]["platform"], 1);
        assert_eq!(ns[0]["tokens"], json!(["i1", "i2"]));
        assert_eq!(ns[0]["topic"], "com.example.app");
        assert_eq!(ns[0]["badge"], 5);
        assert_eq!(ns[1]["platform"], 2);
        assert_eq!(ns[1]["tokens"], json!(["a1"]));
        assert_eq!(ns[1]["data"]["chat_id"], "7");
        assert_eq!(ns[1]["message"], "hello (+1 more)");
    }

    #[test]
    fn answers() {
        let ok = r#"{"counts":2,"logs":[{"type":"failed-push","platform":"android","token":"a1","message":"x","error":"NotRegistered"},{"type":"failed-push","token":"i1","error":"TooManyRequests"}],"success":"ok"}"#;
        assert_eq!(
            classify_gateway(200, ok),
            Answer::Delivered {
                unregistered: vec!["a1".into()]
            }
        );
        assert!(matches!(classify_gateway(503, ""), Answer::Retry(_)));
        assert!(matches!(classify_gateway(400, "bad"), Answer::Fail(_)));
        assert_eq!(classify_webhook(410, ""), Answer::Unregistered);
        assert_eq!(
            classify_webhook(200, r#"{"unregistered":["t"]}"#),
            Answer::Delivered {
                unregistered: vec!["t".into()]
            }
        );
        assert!(matches!(classify_webhook(429, ""), Answer::Retry(_)));
        assert_eq!(classify_webpush(410, ""), Answer::Unregistered);
        assert_eq!(classify_webpush(404, ""), Answer::Unregistered);
        assert_eq!(
            classify_webpush(201, ""),
            Answer::Delivered {
                unregistered: vec![]
            }
        );
        assert!(matches!(classify_webpush(413, ""), Answer::Fail(_)));
        assert!(is_unregistered_error("registration-token-not-registered"));
        assert!(is_unregistered_error("Unregistered"));
        assert!(is_unregistered_error("BadDeviceToken"));
        assert!(!is_unregistered_error("TooManyRequests"));
    }
}
