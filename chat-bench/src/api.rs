//! The few HTTP calls a run needs: creating chats during setup and scraping `/metrics`.
//! Retries only what is worth retrying (429, 5xx, connection errors), a bounded number of times.

use crate::procfs::parse_gauge;
use crate::token::TokenMint;
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const ATTEMPTS: u32 = 6;

pub struct Api {
    http: reqwest::Client,
    base: String,
    mint: TokenMint,
}

#[derive(Deserialize)]
struct ChatCreated {
    chat_id: u64,
}

impl Api {
    pub fn new(http_base: &str, jwt_secret: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: http_base.trim_end_matches('/').to_owned(),
            mint: TokenMint::new(jwt_secret),
        })
    }

    /// `POST /v1/chats` as `as_user`; returns the chat id (201 new, 200 existing direct chat).
    async fn create_chat(&self, as_user: u64, body: serde_json::Value) -> anyhow::Result<u64> {
        let url = format!("{}/v1/chats", self.base);
        let token = self.mint.mint(as_user);
        let mut delay = Duration::from_millis(100);
        let mut last_err = String::new();
        for _ in 0..ATTEMPTS {
            match self
                .http
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
            {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let c: ChatCreated =
                            resp.json().await.context("chat object without chat_id")?;
                        return Ok(c.chat_id);
                    }
                    let text = resp.text().await.unwrap_or_default();
                    if status.as_u16() != 429 && !status.is_server_error() {
                        bail!(
                            "POST /v1/chats as user {as_user}: HTTP {status}: {}",
                            text.chars().take(300).collect::<String>()
                        );
                    }
                    last_err = format!(
                        "HTTP {status}: {}",
                        text.chars().take(200).collect::<String>()
                    );
                }
                Err(e) => last_err = e.to_string(),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
        bail!("POST /v1/chats as user {as_user} failed {ATTEMPTS} times; last: {last_err}")
    }

    /// Direct chats for `pairs` (a, b), created by `a`, at most `concurrency` at a time.
    /// Returns the chat ids in the same order. `done` counts completions for progress lines.
    pub async fn create_direct_chats(
        self: &Arc<Self>,
        pairs: &[(u64, u64)],
        concurrency: usize,
        done: &AtomicU64,
    ) -> anyhow::Result<Vec<u64>> {
        futures::stream::iter(pairs.iter().copied())
            .map(|(a, b)| async move {
                let id = self
                    .create_chat(a, json!({"type": "direct", "members": [b]}))
                    .await;
                done.fetch_add(1, Ordering::Relaxed);
                id
            })
            .buffered(concurrency.max(1))
            .try_collect()
            .await
    }

    /// A group created by `creator` with `others` as members.
    pub async fn create_group(
        &self,
        creator: u64,
        others: &[u64],
        title: &str,
    ) -> anyhow::Result<u64> {
        self.create_chat(
            creator,
            json!({"type": "group", "title": title, "members": others}),
        )
        .await
    }

    /// The gauge `name` from `/metrics` (summed over label sets); `None` if unavailable.
    pub async fn gauge(&self, name: &str) -> Option<f64> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        parse_gauge(&resp.text().await.ok()?, name)
    }
}
