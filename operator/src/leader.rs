//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one reconciles. The decision is pure ([`decide`]); [`LeaderElector`] does
//! the API calls with optimistic concurrency (`resourceVersion`), so two candidates racing for
//! an expired lease cannot both win.

use crate::error::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::watch;

/// What a candidate should do about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// Nobody holds it, or the holder let it expire: take it over.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// Decide from the current lease spec (if the Lease exists). Pure.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = spec else {
        return LeaseAction::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return LeaseAction::Acquire;
    }
    if holder == me {
        return LeaseAction::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(t) if t + duration > now => LeaseAction::Follow {
            holder: holder.to_string(),
        },
        _ => LeaseAction::Acquire,
    }
}

/// The lease spec after acquiring or renewing. Pure.
pub fn next_spec(
    prev: Option<&LeaseSpec>,
    me: &str,
    now: Timestamp,
    duration: Duration,
) -> LeaseSpec {
    let ours = prev.and_then(|p| p.holder_identity.as_deref()) == Some(me);
    let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(15)),
        acquire_time: if ours {
            prev.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..Default::default()
    }
}

/// Runs the election loop for one candidate.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    retry: Duration,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElector {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            retry: duration / 3,
        }
    }

    /// One attempt: returns whether we hold the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        match decide(spec, &self.identity, now) {
            LeaseAction::Follow { .. } => Ok(false),
            LeaseAction::Acquire | LeaseAction::Renew => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        resource_version: current
                            .as_ref()
                            .and_then(|l| l.metadata.resource_version.clone()),
                        ..Default::default()
                    },
                    spec: Some(next_spec(spec, &self.identity, now, self.duration)),
                };
                let pp = PostParams::default();
                let res = if current.is_some() {
                    self.api.replace(&self.name, &pp, &lease).await
                } else {
                    self.api.create(&pp, &lease).await
                };
                match res {
                    Ok(_) => Ok(true),
                    // Someone else wrote first (409 Conflict / AlreadyExists): not us this round.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(Error::from(e)),
                }
            }
        }
    }

    /// Loop until `stop` fires: publishes `true` on `tx` while we lead. Once leadership is
    /// lost (a renewal failed for longer than the lease duration, or another holder took
    /// over) it publishes `false` and returns: the caller must stop reconciling.
    pub async fn run(self, tx: watch::Sender<bool>, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut leading = false;
        let mut last_renew = tokio::time::Instant::now();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    if !leading {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                        leading = true;
                        let _ = tx.send(true);
                    }
                    last_renew = tokio::time::Instant::now();
                }
                Ok(false) if leading => {
                    let _ = tx.send(false);
                    return Err(Error::Lease("another candidate holds the lease".into()));
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(cause = %e, "lease update failed");
                    if leading && last_renew.elapsed() > self.duration {
                        let _ = tx.send(false);
                        return Err(Error::Lease(format!("could not renew: {e}")));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {}
                _ = stop.changed() => {
                    if leading {
                        self.release().await;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Give the lease up on clean shutdown so a successor need not wait for expiry.
    async fn release(&self) {
        if let Ok(Some(mut l)) = self.api.get_opt(&self.name).await
            && let Some(spec) = l.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &l)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, dur: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(dur),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_transitions: Some(2),
            ..Default::default()
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn free_or_expired_leases_are_taken() {
        assert_eq!(decide(None, "a", at(100)), LeaseAction::Acquire);
        let mut empty = spec("", 0, 15);
        empty.holder_identity = None;
        assert_eq!(decide(Some(&empty), "a", at(100)), LeaseAction::Acquire);
        assert_eq!(
            decide(Some(&spec("b", 80, 15)), "a", at(100)),
            LeaseAction::Acquire
        );
    }

    #[test]
    fn a_live_lease_of_another_is_followed() {
        assert_eq!(
            decide(Some(&spec("b", 90, 15)), "a", at(100)),
            LeaseAction::Follow { holder: "b".into() }
        );
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&spec("a", 10, 15)), "a", at(100)),
            LeaseAction::Renew
        );
    }

    #[test]
    fn next_spec_counts_transitions() {
        let prev = spec("b", 80, 15);
        let taken = next_spec(Some(&prev), "a", at(100), Duration::from_secs(15));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(100))));
        let renewed = next_spec(Some(&taken), "a", at(105), Duration::from_secs(15));
        assert_eq!(renewed.lease_transitions, Some(3));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(105))));
    }
}
