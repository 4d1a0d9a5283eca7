//! Push settings (flattened into `ServeConfig`; every flag has a `CHAT_PUSH_*` variable).

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Push: URL of a Gorush-compatible gateway's push endpoint (e.g.
    /// `http://gorush:8088/api/push`). iOS and Android devices are notified through it.
    #[arg(long, env = "CHAT_PUSH_GATEWAY_URL")]
    pub push_gateway_url: Option<String>,

    /// Push: APNs topic (the app's bundle id) sent with iOS notifications to the gateway.
    #[arg(long, env = "CHAT_PUSH_GATEWAY_TOPIC")]
    pub push_gateway_topic: Option<String>,

    /// Push: URL that receives a signed JSON POST per notification. iOS and Android devices
    /// are notified through it when no gateway is configured.
    #[arg(long, env = "CHAT_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,

    /// Push: HMAC-SHA256 key of the webhook's `X-Tern-Signature` header (required with
    /// --push-webhook-url; at least 16 characters).
    #[arg(long, env = "CHAT_PUSH_WEBHOOK_SECRET", hide_env_values = true)]
    pub push_webhook_secret: Option<String>,

    /// Push: Web Push (VAPID) private key, base64url of the 32-byte P-256 scalar. Embedded:
    /// generated into <data-dir>/vapid-private-key when unset. Distributed: Web Push is off
    /// unless set (all processes must share it).
    #[arg(long, env = "CHAT_PUSH_VAPID_PRIVATE_KEY", hide_env_values = true)]
    pub push_vapid_private_key: Option<String>,

    /// Push: VAPID contact (`mailto:` or `https:` URL) that push services may use.
    #[arg(
        long,
        env = "CHAT_PUSH_VAPID_SUBJECT",
        default_value = "mailto:admin@localhost"
    )]
    pub push_vapid_subject: String,

    /// Push: turn Web Push off (browsers' subscriptions are then not notified).
    #[arg(long, env = "CHAT_PUSH_NO_WEBPUSH", default_value_t = false)]
    pub push_no_webpush: bool,

    /// Push: coalescing window (ms). Messages of one chat for one offline user within it
    /// become one notification with a count.
    #[arg(long, env = "CHAT_PUSH_COALESCE_MS", default_value_t = 3000)]
    pub push_coalesce_ms: u64,

    /// Push: send no message content or sender (privacy): notifications only say how many
    /// new messages a chat has.
    #[arg(long, env = "CHAT_PUSH_HIDE_CONTENT", default_value_t = false)]
    pub push_hide_content: bool,

    /// Push: first retry delay (ms); doubles per attempt, with jitter.
    #[arg(long, env = "CHAT_PUSH_RETRY_BASE_MS", default_value_t = 1000)]
    pub push_retry_base_ms: u64,

    /// Push: longest retry delay (ms).
    #[arg(long, env = "CHAT_PUSH_RETRY_MAX_MS", default_value_t = 300_000)]
    pub push_retry_max_ms: u64,

    /// Push: attempts before a notification becomes a dead letter.
    #[arg(long, env = "CHAT_PUSH_MAX_ATTEMPTS", default_value_t = 12)]
    pub push_max_attempts: u32,

    /// Push: notification requests in flight at once (per process).
    #[arg(long, env = "CHAT_PUSH_CONCURRENCY", default_value_t = 32)]
    pub push_concurrency: usize,

    /// Push: time limit of one provider request (ms).
    #[arg(long, env = "CHAT_PUSH_TIMEOUT_MS", default_value_t = 10_000)]
    pub push_timeout_ms: u64,

    /// Push: how long push services keep an undelivered Web Push message (seconds; `TTL`).
    #[arg(long, env = "CHAT_PUSH_WEBPUSH_TTL", default_value_t = 86_400)]
    pub push_webpush_ttl: u64,
}

impl PushArgs {
    /// Which provider notifies iOS/Android devices: the gateway, else the webhook.
    pub fn mobile_provider(&self) -> Option<super::Provider> {
        if self.push_gateway_url.is_some() {
            Some(super::Provider::Gateway)
        } else if self.push_webhook_url.is_some() {
            Some(super::Provider::Webhook)
        } else {
            None
        }
    }

    /// Checks that need no I/O.
    pub fn validate(&self) -> Result<(), String> {
        if self.push_webhook_url.is_some()
            && self
                .push_webhook_secret
                .as_deref()
                .is_none_or(|s| s.len() < 16)
        {
            return Err(
                "--push-webhook-url needs --push-webhook-secret (at least 16 characters)".into(),
            );
        }
        for (flag, url) in [
            ("--push-gateway-url", &self.push_gateway_url),
            ("--push-webhook-url", &self.push_webhook_url),
        ] {
            if let Some(u) = url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(format!("{flag} must be an http(s) URL, got {u:?}"));
            }
        }
        if self.push_max_attempts == 0 {
            return Err("--push-max-attempts must be at least 1".into());
        }
        if self.push_concurrency == 0 {
            return Err("--push-concurrency must be at least 1".into());
        }
        Ok(())
    }
}
