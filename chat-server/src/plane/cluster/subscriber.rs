//! Follow this process's Redis channels — `edge:<node>` on edges (its share of every
//! fan-out, and the answers to its sends) and the cluster-wide `notice` channel (presence
//! changes, membership changes) — reconnecting with backoff when Redis goes away, and
//! subscribing again on the new primary after a Sentinel failover (this task also runs the
//! [`Primary::watch`](super::redis_primary::Primary::watch) that follows the primary).

use super::ClusterPlane;
use crate::hub::frame;
use crate::model::{Presence, PresenceStatus};
use crate::plane::wire::{self, EdgeBatch, EdgeItem, Notice};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Run until `stop`. `edge`: also follow this node's edge channel.
pub async fn run(
    plane: Arc<ClusterPlane>,
    edge: bool,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let redis = plane.deps.redis.clone();
    let mut channels = vec![redis.notice_channel()];
    if edge {
        channels.push(redis.edge_channel(&plane.deps.node));
    }
    tasks.spawn(redis.primary().clone().watch(stop.clone()));
    let mut moved = redis.primary().generation();
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        moved.mark_unchanged();
        let ps = tokio::select! {
            r = redis.subscribe(&channels) => r,
            _ = stop.cancelled() => return,
        };
        let mut ps = match ps {
            Ok(ps) => ps,
            Err(e) => {
                tracing::warn!(cause = %e, "Redis: cannot subscribe; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        plane.subscribed.store(true, Ordering::Release);
        if !first {
            tracing::info!("Redis: subscribed again; re-registering this node's connections");
            // Answers published while this edge was not subscribed are lost (to the old
            // primary, or to the new one before this subscription): tell the sends that may
            // be waiting for one to resend now rather than at the ack timeout.
            if let Some(p) = &plane.deps.producer {
                let failed = p.fail_accepted_before(std::time::Instant::now());
                if failed > 0 {
                    tracing::warn!(
                        failed,
                        "sends whose answer may have been lost told `unavailable` (resent safely)"
                    );
                }
            }
            // Notices sent while the subscription was down are gone: forget cached members
            // and partners rather than serve stale ones.
            plane.deps.directory.forget_all();
            plane.presence.refresh.notify_one();
        }
        first = false;
        let mut stream = ps.on_message();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = moved.changed() => {
                    tracing::warn!("Redis: the primary moved; subscribing there");
                    break;
                }
                _ = stop.cancelled() => return,
            };
            let Some(msg) = msg else {
                tracing::warn!("Redis: subscription lost; reconnecting");
                break;
            };
            handle(
                &plane,
                &tasks,
                msg.get_channel_name(),
                msg.get_payload_bytes(),
            );
        }
    }
}

fn handle(plane: &ClusterPlane, tasks: &TaskTracker, channel: &str, payload: &[u8]) {
    let d = &plane.deps;
    if channel == d.redis.notice_channel() {
        match wire::decode::<Notice>("notice", payload) {
            Ok(Notice::Presence {
                user_id,
                online,
                last_seen,
            }) => {
                let p = Presence {
                    user_id,
                    status: if online {
                        PresenceStatus::Online
                    } else {
                        PresenceStatus::Offline
                    },
                    last_seen,
                };
                let events = d.events.clone();
                tasks.spawn(async move { events.presence_changed(p).await });
            }
            Ok(Notice::Members { chat_id }) => d.directory.forget_members(chat_id),
            Ok(Notice::Partners { users }) => d.directory.forget_partners(&users),
            Err(e) => tracing::warn!(cause = %e, "ignored a notice"),
        }
        return;
    }
    let batch = match wire::decode::<EdgeBatch>("edge batch", payload) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(cause = %e, "ignored an edge batch");
            return;
        }
    };
    for item in batch.items {
        match item {
            EdgeItem::Deliver {
                users,
                except,
                frame: text,
            } => {
                let n = d.hub.deliver(&users, &frame(text), except);
                tracing::debug!(?users, ?except, n, "edge: deliver");
                d.metrics.deliveries.inc_by(n as u64);
            }
            EdgeItem::Ack { corr, outcome } => {
                if let Some(producer) = &d.producer {
                    producer.answer(corr, outcome.into_result());
                }
            }
        }
    }
}
