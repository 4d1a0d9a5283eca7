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

/// The renew deadline and retry period for a lease duration, where not given: two thirds of
/// the lease (client-go's 10 s for 15 s) and 2 s, at most half the deadline (whole
/// milliseconds, so short test leases work too). Pure.
pub fn timing(
    lease: Duration,
    renew_deadline: Option<Duration>,
    retry: Option<Duration>,
) -> (Duration, Duration) {
    let deadline = renew_deadline.unwrap_or(lease * 2 / 3);
    let retry = retry.unwrap_or_else(|| Duration::from_secs(2).min(deadline / 2));
    (deadline, retry)
}

/// Runs the election loop for one candidate.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew_deadline: Duration,
    retry: Duration,
    /// Start the loop as the leader that just renewed (tests of the step-down path).
    start_leading: bool,
}

impl LeaderElector {
    /// A candidate with client-go's timing shape: `duration` is how long a lease stays valid
    /// after its last renewal (others wait that long), `renew_deadline` how long the leader
    /// keeps acting without a successful renewal (it must be shorter, so the leader has
    /// stopped before anyone may take over), `retry` the pause between attempts.
    pub fn new(
        api: Api<Lease>,
        name: &str,
        identity: &str,
        duration: Duration,
        renew_deadline: Duration,
        retry: Duration,
    ) -> Result<Self> {
        if renew_deadline >= duration {
            return Err(Error::Lease(format!(
                "the renew deadline ({}s) must be shorter than the lease duration ({}s): a leader \
                 must stop acting before another replica may take the lease over",
                renew_deadline.as_secs(),
                duration.as_secs()
            )));
        }
        if retry.is_zero() || retry >= renew_deadline {
            return Err(Error::Lease(format!(
                "the retry period ({}s) must be above zero and shorter than the renew deadline ({}s)",
                retry.as_secs(),
                renew_deadline.as_secs()
            )));
        }
        Ok(LeaderElector {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            renew_deadline,
            retry,
            start_leading: false,
        })
    }

    #[cfg(test)]
    fn assume_leading(&mut self) {
        self.start_leading = true;
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

    /// Loop until `stop` fires: publishes `true` on `tx` while we lead. Leadership is lost
    /// when another holder took over or when no renewal succeeded within the renew deadline
    /// (each attempt is cut off at the deadline too, so a hanging API call cannot stretch
    /// it); then it publishes `false` and returns an error: the caller must stop acting at
    /// once (the binary exits and is restarted as a fresh candidate).
    pub async fn run(self, tx: watch::Sender<bool>, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut leading = self.start_leading;
        let mut last_renew = tokio::time::Instant::now();
        loop {
            let attempt = if leading {
                let left = self.renew_deadline.saturating_sub(last_renew.elapsed());
                match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Lease("lease update timed out".into())),
                }
            } else {
                match tokio::time::timeout(self.renew_deadline, self.try_acquire_or_renew()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Lease("lease update timed out".into())),
                }
            };
            match attempt {
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
                    if leading && last_renew.elapsed() >= self.renew_deadline {
                        let _ = tx.send(false);
                        return Err(Error::Lease(format!(
                            "no renewal for {}s (renew deadline): {e}",
                            self.renew_deadline.as_secs()
                        )));
                    }
                }
            }
            let pause = if leading {
                // Never sleep past the deadline: the next attempt decides in time.
                self.retry
                    .min(self.renew_deadline.saturating_sub(last_renew.elapsed()))
            } else {
                self.retry
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
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
    fn default_timing_follows_the_lease() {
        let s = Duration::from_secs;
        assert_eq!(timing(s(15), None, None), (s(10), s(2)));
        assert_eq!(timing(s(3), None, None), (s(2), s(1)));
        assert_eq!(timing(s(15), Some(s(12)), Some(s(3))), (s(12), s(3)));
    }

    #[tokio::test]
    async fn the_renew_deadline_must_be_shorter_than_the_lease() {
        // No API calls are made by `new`; a client that points nowhere is enough.
        // The workspace build enables both rustls providers: pick one, as main does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let api: Api<Lease> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "x");
        let s = Duration::from_secs;
        let err = LeaderElector::new(api.clone(), "l", "a", s(15), s(15), s(2))
            .err()
            .expect("deadline == lease is refused");
        assert!(
            err.to_string()
                .contains("must be shorter than the lease duration")
        );
        assert!(LeaderElector::new(api.clone(), "l", "a", s(15), s(10), s(10)).is_err());
        assert!(LeaderElector::new(api, "l", "a", s(15), s(10), s(2)).is_ok());
    }

    #[tokio::test]
    async fn a_leader_that_cannot_renew_steps_down_within_the_deadline() {
        // An API server that accepts connections and never answers: every renewal hangs.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let api: Api<Lease> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "x");
        let e = LeaderElector::new(
            api,
            "l",
            "a",
            Duration::from_secs(3),
            Duration::from_millis(1500),
            Duration::from_millis(300),
        )
        .unwrap();
        let (tx, rx) = watch::channel(true);
        let (_stop_tx, stop_rx) = watch::channel(false);
        // Start as if we had just renewed: `run` must give up 1.5 s after that at the latest.
        let t0 = tokio::time::Instant::now();
        let mut e = e;
        e.assume_leading();
        let r = e.run(tx, stop_rx).await;
        let took = t0.elapsed();
        assert!(r.is_err(), "a leader that cannot renew returns an error");
        assert!(!*rx.borrow(), "and publishes that it no longer leads");
        assert!(
            took < Duration::from_millis(2500),
            "stepped down after {took:?}, renew deadline 1.5 s"
        );
        hold.abort();
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
