//! Sending one outbox item to its provider over HTTP, and reading the answer.

use super::config::PushArgs;
use super::payload::{self, Answer, Notification};
use super::webpush::{self, Vapid};
use super::{Device, OutboxItem, Provider, webhook};
use crate::model::now_ms;
use std::time::Duration;

pub struct Sender {
    http: reqwest::Client,
    cfg: PushArgs,
    vapid: Option<Vapid>,
}

impl Sender {
    pub fn new(cfg: &PushArgs, vapid: Option<Vapid>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.push_timeout_ms))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("tern-chat-server/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender {
            http,
            cfg: cfg.clone(),
            vapid,
        })
    }

    /// One attempt. Never panics on bad stored data: that is a permanent failure.
    pub async fn send(&self, item: &OutboxItem) -> Answer {
        let devices: Vec<Device> = match serde_json::from_str(&item.target) {
            Ok(d) => d,
            Err(e) => return Answer::Fail(format!("stored target unreadable: {e}")),
        };
        let n: Notification = match serde_json::from_str(&item.payload) {
            Ok(n) => n,
            Err(e) => return Answer::Fail(format!("stored payload unreadable: {e}")),
        };
        match item.provider {
            Provider::Gateway => self.gateway(&n, &devices).await,
            Provider::Webhook => self.webhook(item, &n, &devices).await,
            Provider::Webpush => self.webpush(&n, &devices).await,
        }
    }

    async fn post(&self, req: reqwest::RequestBuilder) -> Result<(u16, String), Answer> {
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                Ok((status, body))
            }
            Err(e) => Err(Answer::Retry(format!("request failed: {e}"))),
        }
    }

    async fn gateway(&self, n: &Notification, devices: &[Device]) -> Answer {
        let Some(url) = &self.cfg.push_gateway_url else {
            return Answer::Fail("no --push-gateway-url configured".into());
        };
        let body = payload::gateway_body(n, devices, self.cfg.push_gateway_topic.as_deref());
        match self.post(self.http.post(url).json(&body)).await {
            Ok((status, text)) => payload::classify_gateway(status, &text),
            Err(a) => a,
        }
    }

    async fn webhook(&self, item: &OutboxItem, n: &Notification, devices: &[Device]) -> Answer {
        let (Some(url), Some(secret)) = (&self.cfg.push_webhook_url, &self.cfg.push_webhook_secret)
        else {
            return Answer::Fail("no --push-webhook-url/--push-webhook-secret configured".into());
        };
        let body = payload::webhook_body(
            &item.id,
            item.user_id,
            n,
            devices,
            item.created_ms,
            item.attempts + 1,
        );
        let body = serde_json::to_vec(&body).expect("JSON serializes");
        let ts = now_ms() / 1000;
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhook::TIMESTAMP_HEADER, ts.to_string())
            .header(
                webhook::SIGNATURE_HEADER,
                webhook::sign(secret.as_bytes(), ts, &body),
            )
            .header(webhook::DELIVERY_HEADER, &item.id)
            .body(body);
        match self.post(req).await {
            Ok((status, text)) => payload::classify_webhook(status, &text),
            Err(a) => a,
        }
    }

    async fn webpush(&self, n: &Notification, devices: &[Device]) -> Answer {
        let Some(vapid) = &self.vapid else {
            return Answer::Fail("Web Push is off (no VAPID key)".into());
        };
        let Some(d) = devices.first() else {
            return Answer::Fail("no subscription".into());
        };
        let sub = match webpush::Subscription::parse(
            &d.token,
            d.p256dh.as_deref().unwrap_or(""),
            d.auth.as_deref().unwrap_or(""),
        ) {
            Ok(s) => s,
            Err(e) => return Answer::Fail(format!("bad subscription: {e}")),
        };
        let plaintext = serde_json::to_vec(n).expect("JSON serializes");
        let body = match webpush::encrypt(&sub, &plaintext) {
            Ok(b) => b,
            Err(e) => return Answer::Fail(e.to_string()),
        };
        let auth = match vapid.authorization(&sub.endpoint, now_ms() / 1000) {
            Ok(a) => a,
            Err(e) => return Answer::Fail(e.to_string()),
        };
        let req = self
            .http
            .post(&sub.endpoint)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header("ttl", self.cfg.push_webpush_ttl.to_string())
            .header("urgency", "high")
            // Replaces an undelivered earlier notification of the same chat at the service.
            .header("topic", format!("chat{}", n.chat_id))
            .body(body);
        match self.post(req).await {
            Ok((status, text)) => payload::classify_webpush(status, &text),
            Err(a) => a,
        }
    }
}
