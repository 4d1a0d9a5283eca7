//! Leader election on a real Lease: one holder at a time, hand-over on release and expiry.

use crate::support::{TestEnv, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use std::time::Duration;
use tern_operator::leader::LeaderElector;
use tokio::sync::watch;

#[tokio::test]
async fn only_one_candidate_leads_and_leadership_moves_on() {
    let Some(env) = TestEnv::new("e2e-lease").await else {
        return;
    };
    let api = env.api::<Lease>();
    let dur = Duration::from_secs(3);
    let deadline = Duration::from_secs(2);
    let retry = Duration::from_millis(500);
    let a = LeaderElector::new(api.clone(), "op", "a", dur, deadline, retry).unwrap();
    let b = LeaderElector::new(api.clone(), "op", "b", dur, deadline, retry).unwrap();
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a takes the free lease"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b must follow a live lease"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    let lease = api.get("op").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("a"));

    // a stops renewing: after the lease duration b takes over.
    tokio::time::sleep(dur + Duration::from_millis(500)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "b takes the expired lease"
    );
    assert!(!a.try_acquire_or_renew().await.unwrap(), "a lost it");
    let lease = api.get("op").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("b"));
    assert_eq!(lease.lease_transitions, Some(2));

    // The run loop: b leads, gives the lease up on stop, then c gets it at once.
    let (tx, mut rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(
        LeaderElector::new(api.clone(), "op", "b", dur, deadline, retry)
            .unwrap()
            .run(tx, stop_rx),
    );
    wait_for("b leading", Duration::from_secs(10), || {
        let v = *rx.borrow_and_update();
        async move { v.then_some(()) }
    })
    .await;
    stop_tx.send(true).unwrap();
    run.await.unwrap().unwrap();
    let c = LeaderElector::new(api.clone(), "op", "c", dur, deadline, retry).unwrap();
    assert!(
        c.try_acquire_or_renew().await.unwrap(),
        "a released lease is free at once"
    );
}
