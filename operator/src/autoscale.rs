//! The edge autoscaling decision, pure: the caller passes connection counts and the time.
//!
//! - recommendation = ceil(total connections / targetConnectionsPerPod), within [min, max];
//! - scale-up is immediate but adds at most `scaleUpMaxStep` pods per decision;
//! - scale-down goes only to the highest recommendation seen during the stabilization window
//!   (so a short dip does not remove pods), only once a full window has been observed (after
//!   an operator restart too), at most `scaleDownMaxStep` pods per `scaleDownPeriodSeconds`;
//! - a decision with missing samples (a pod that did not answer) never scales down.

use crate::crd::AutoscalingSpec;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The scaling policy of one cluster, from `spec.edge.autoscaling`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub min: i32,
    pub max: i32,
    pub target_per_pod: u64,
    pub up_step: i32,
    pub down_step: i32,
    pub stabilization: Duration,
    pub down_period: Duration,
}

impl Policy {
    pub fn from_spec(a: &AutoscalingSpec) -> Self {
        let secs = |s: i32| Duration::from_secs(u64::try_from(s).unwrap_or(0));
        Policy {
            min: a.min_replicas.max(1),
            max: a.max_replicas.max(a.min_replicas.max(1)),
            target_per_pod: u64::try_from(a.target_connections_per_pod)
                .unwrap_or(1)
                .max(1),
            up_step: a.scale_up_max_step.max(1),
            down_step: a.scale_down_max_step.max(1),
            stabilization: secs(a.scale_down_stabilization_seconds),
            down_period: secs(a.scale_down_period_seconds),
        }
    }

    /// ceil(total / target) within [min, max].
    pub fn recommend(&self, total_connections: u64) -> i32 {
        let pods = total_connections.div_ceil(self.target_per_pod);
        i32::try_from(pods)
            .unwrap_or(i32::MAX)
            .clamp(self.min, self.max)
    }
}

/// What the autoscaler remembers about one cluster between decisions.
#[derive(Debug, Clone)]
pub struct ScaleState {
    /// When observation started (operator start or first sight of the cluster).
    started: Instant,
    /// Recent recommendations, oldest first, covering the stabilization window.
    recommendations: VecDeque<(Instant, i32)>,
    last_scale_down: Option<Instant>,
}

impl ScaleState {
    pub fn new(now: Instant) -> Self {
        ScaleState {
            started: now,
            recommendations: VecDeque::new(),
            last_scale_down: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    Hold,
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub replicas: i32,
    pub direction: Direction,
    pub reason: String,
}

/// Decide the edge replicas from the current count and this scrape's total.
/// `complete` is false when some pod could not be scraped.
pub fn decide(
    policy: &Policy,
    state: &mut ScaleState,
    current: i32,
    total_connections: u64,
    complete: bool,
    now: Instant,
) -> Decision {
    let rec = policy.recommend(total_connections);
    if complete {
        state.recommendations.push_back((now, rec));
    }
    while let Some(&(t, _)) = state.recommendations.front() {
        if now.duration_since(t) > policy.stabilization && state.recommendations.len() > 1 {
            state.recommendations.pop_front();
        } else {
            break;
        }
    }
    let hold = |reason: String| Decision {
        replicas: current,
        direction: Direction::Hold,
        reason,
    };
    if current < policy.min || current > policy.max {
        let replicas = current.clamp(policy.min, policy.max);
        return Decision {
            replicas,
            direction: if replicas > current {
                Direction::Up
            } else {
                Direction::Down
            },
            reason: format!(
                "{current} replicas outside [{}, {}]",
                policy.min, policy.max
            ),
        };
    }
    let need = format!(
        "{total_connections} connections / {} per pod → {rec}",
        policy.target_per_pod
    );
    if rec > current {
        let replicas = rec.min(current.saturating_add(policy.up_step));
        return Decision {
            replicas,
            direction: Direction::Up,
            reason: format!("{need}; scale up {current} → {replicas}"),
        };
    }
    if rec == current {
        return hold(format!("{need}; steady"));
    }
    if !complete {
        return hold(format!(
            "{need}; not scaling down: some edge pods did not report"
        ));
    }
    if now.duration_since(state.started) < policy.stabilization {
        return hold(format!(
            "{need}; not scaling down before a full {}s stabilization window is observed",
            policy.stabilization.as_secs()
        ));
    }
    let stable = state
        .recommendations
        .iter()
        .map(|&(_, r)| r)
        .max()
        .unwrap_or(rec);
    if stable >= current {
        return hold(format!(
            "{need}; holding {current}: the window's highest recommendation is {stable}"
        ));
    }
    if let Some(t) = state.last_scale_down
        && now.duration_since(t) < policy.down_period
    {
        return hold(format!(
            "{need}; next scale-down allowed {}s after the last",
            policy.down_period.as_secs()
        ));
    }
    let replicas = stable.max(current - policy.down_step);
    state.last_scale_down = Some(now);
    Decision {
        replicas,
        direction: Direction::Down,
        reason: format!("{need}; scale down {current} → {replicas}"),
    }
}

/// `controller.kubernetes.io/pod-deletion-cost` for a pod holding `connections`: the
/// ReplicaSet controller removes the lowest cost first, so the emptiest pods go first.
pub fn deletion_cost(connections: u64) -> i32 {
    i32::try_from(connections).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 1,
            max: 10,
            target_per_pod: 100,
            up_step: 3,
            down_step: 2,
            stabilization: Duration::from_secs(60),
            down_period: Duration::from_secs(30),
        }
    }

    #[test]
    fn recommendation_is_ceil_within_bounds() {
        let p = policy();
        assert_eq!(p.recommend(0), 1);
        assert_eq!(p.recommend(100), 1);
        assert_eq!(p.recommend(101), 2);
        assert_eq!(p.recommend(950), 10);
        assert_eq!(p.recommend(100_000), 10);
        assert_eq!(p.recommend(u64::MAX), 10);
    }

    #[test]
    fn scale_up_is_immediate_but_bounded() {
        let p = policy();
        let t0 = Instant::now();
        let mut s = ScaleState::new(t0);
        let d = decide(&p, &mut s, 1, 850, true, t0);
        assert_eq!((d.replicas, d.direction), (4, Direction::Up));
        let d = decide(&p, &mut s, 4, 850, true, t0 + Duration::from_secs(1));
        assert_eq!(d.replicas, 7);
        let d = decide(&p, &mut s, 7, 850, true, t0 + Duration::from_secs(2));
        assert_eq!(d.replicas, 9);
        let d = decide(&p, &mut s, 9, 850, true, t0 + Duration::from_secs(3));
        assert_eq!(d.direction, Direction::Hold);
    }

    #[test]
    fn scale_up_even_with_missing_samples() {
        let p = policy();
        let t0 = Instant::now();
        let mut s = ScaleState::new(t0);
        let d = decide(&p, &mut s, 1, 250, false, t0);
        assert_eq!(d.replicas, 3);
    }

    #[test]
    fn no_scale_down_before_a_full_window() {
        let p = policy();
        let t0 = Instant::now();
        let mut s = ScaleState::new(t0);
        let d = decide(&p, &mut s, 5, 0, true, t0 + Duration::from_secs(30));
        assert_eq!(d.direction, Direction::Hold);
        assert!(d.reason.contains("stabilization"), "{}", d.reason);
    }

    #[test]
    fn scale_down_follows_the_window_maximum_at_bounded_rate() {
        let p = policy();
        let t0 = Instant::now();
        let mut s = ScaleState::new(t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        // 5 pods needed for a while, then the load leaves.
        for i in 0..=6 {
            let d = decide(&p, &mut s, 5, 500, true, at(i * 10));
            assert_eq!(d.direction, Direction::Hold);
        }
        // At 70 s the load is gone, but 500 was seen within the last 60 s.
        let d = decide(&p, &mut s, 5, 0, true, at(70));
        assert_eq!(d.direction, Direction::Hold);
        assert!(
            d.reason.contains("highest recommendation is 5"),
            "{}",
            d.reason
        );
        // At 121 s every sample in the window says 1: down by at most 2.
        let d = decide(&p, &mut s, 5, 0, true, at(121));
        assert_eq!((d.replicas, d.direction), (3, Direction::Down));
        // The next one has to wait for the down period (30 s).
        let d = decide(&p, &mut s, 3, 0, true, at(131));
        assert_eq!(d.direction, Direction::Hold);
        let d = decide(&p, &mut s, 3, 0, true, at(152));
        assert_eq!((d.replicas, d.direction), (1, Direction::Down));
    }

    #[test]
    fn a_short_dip_does_not_scale_down() {
        let p = policy();
        let t0 = Instant::now();
        let mut s = ScaleState::new(t0);
        let at = |secs| t0 + Duration::from_secs(secs);
        for i in 0..10 {
            decide(&p, &mut s, 4, 400, true, at(i * 10));
        }
        let d = decide(&p, &mut s, 4, 10, true, at(100));
        assert_eq!(d.direction, Direction::Hold);
        let d = decide(&p, &mut s, 4, 400, true, at(110));
        assert_eq!(d.direction, Direction::Hold);
    }

    #[test]
    fn incomplete_samples_never_scale_down() {
        let p = policy();
        let t0 = Instant::now();
        let mut s = ScaleState::new(t0);
        let d = decide(&p, &mut s, 5, 0, false, t0 + Duration::from_secs(500));
        assert_eq!(d.direction, Direction::Hold);
        assert!(d.reason.contains("did not report"));
    }

    #[test]
    fn out_of_bounds_current_is_corrected_at_once() {
        let p = policy();
        let t0 = Instant::now();
        let mut s = ScaleState::new(t0);
        assert_eq!(decide(&p, &mut s, 0, 0, true, t0).replicas, 1);
        assert_eq!(decide(&p, &mut s, 25, 0, true, t0).replicas, 10);
    }

    #[test]
    fn policy_from_spec_and_deletion_cost() {
        let spec: AutoscalingSpec = serde_json::from_value(serde_json::json!({
            "minReplicas": 2, "maxReplicas": 8, "targetConnectionsPerPod": 1000
        }))
        .unwrap();
        let p = Policy::from_spec(&spec);
        assert_eq!((p.min, p.max, p.target_per_pod), (2, 8, 1000));
        assert_eq!(p.stabilization, Duration::from_secs(300));
        assert_eq!(p.up_step, 4);
        assert_eq!(deletion_cost(12), 12);
        assert_eq!(deletion_cost(u64::MAX), i32::MAX);
    }
}
