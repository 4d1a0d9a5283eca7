//! Conditions from what the reconciler observed, pure. `lastTransitionTime` only moves when a
//! condition's status changes.

use crate::crd::DependencyStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const DEPENDENCIES_READY: &str = "DependenciesReady";
pub const SETUP_COMPLETE: &str = "SetupComplete";

/// A workload (Deployment or StatefulSet) as seen in its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub want: i32,
    pub ready: i32,
    pub updated: i32,
    /// The workload controller has seen the latest spec.
    pub current: bool,
}

impl Workload {
    pub fn rolled_out(&self) -> bool {
        self.current && self.updated >= self.want && self.ready >= self.want
    }
}

/// State of the schema/topic setup Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setup {
    Running,
    Succeeded,
    Failed(String),
}

/// Whether the role Deployments may be applied (created, or updated to a new template) in
/// this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Held: existing role Deployments keep their template (only the edge replica count still
    /// follows the spec or the autoscaler) and missing ones are not created. `reason` is
    /// `WaitingForSetup`, `SetupFailed` or `WaitingForRedis`.
    Held {
        reason: &'static str,
        message: String,
    },
}

/// The gating decision, pure. Roles start only after the setup Job of the configuration in
/// force succeeded (the keyspace, tables and topic exist, so Kafka and CQL answered), and,
/// with a managed Redis, once its pod is ready: chat-server exits when Redis stays
/// unreachable for 60 s at start. `managed_redis_ready`: ready Redis pods, `None` when Redis
/// is external (its reachability is only reported, see `DependenciesReady`).
pub fn roles_gate(setup: &Setup, managed_redis_ready: Option<i32>) -> Gate {
    match setup {
        Setup::Running => Gate::Held {
            reason: "WaitingForSetup",
            message: "role Deployments wait for the schema and topic setup Job of the current configuration".into(),
        },
        Setup::Failed(m) => Gate::Held {
            reason: "SetupFailed",
            message: format!("role Deployments are held: {m}"),
        },
        Setup::Succeeded if managed_redis_ready.is_some_and(|n| n < 1) => Gate::Held {
            reason: "WaitingForRedis",
            message: "role Deployments wait for the managed Redis pod to be ready".into(),
        },
        Setup::Succeeded => Gate::Open,
    }
}

/// Everything the conditions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub generation: i64,
    /// Missing Secrets or keys: nothing can run until they exist.
    pub secret_problems: Vec<String>,
    pub dependencies: Vec<DependencyStatus>,
    pub workloads: Vec<Workload>,
    pub setup: Setup,
    pub gate: Gate,
}

fn cond(type_: &str, ok: bool, reason: &str, message: String, generation: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: Time(Default::default()),
    }
}

/// The five conditions, keeping `lastTransitionTime` from `previous` when the status is the
/// same and using `now` otherwise.
pub fn conditions(obs: &Observed, previous: &[Condition], now: Time) -> Vec<Condition> {
    let g = obs.generation;
    let not_ready_deps: Vec<String> = obs
        .dependencies
        .iter()
        .filter(|d| !d.ready)
        .map(|d| format!("{} ({}): {}", d.name, d.mode, d.message))
        .collect();
    let unreachable = obs
        .dependencies
        .iter()
        .any(|d| !d.ready && d.mode == "external");
    let pending: Vec<String> = obs
        .workloads
        .iter()
        .filter(|w| !w.rolled_out())
        .map(|w| {
            format!(
                "{} {}/{} ready, {} updated",
                w.name, w.ready, w.want, w.updated
            )
        })
        .collect();

    let deps = if !obs.secret_problems.is_empty() {
        cond(
            DEPENDENCIES_READY,
            false,
            "MissingSecret",
            obs.secret_problems.join("; "),
            g,
        )
    } else if !not_ready_deps.is_empty() {
        let reason = if unreachable {
            "DependencyUnreachable"
        } else {
            "DependencyNotReady"
        };
        cond(
            DEPENDENCIES_READY,
            false,
            reason,
            not_ready_deps.join("; "),
            g,
        )
    } else {
        cond(
            DEPENDENCIES_READY,
            true,
            "DependenciesReady",
            "Kafka, ScyllaDB and Redis are ready".into(),
            g,
        )
    };

    let degraded = if !obs.secret_problems.is_empty() {
        cond(
            DEGRADED,
            true,
            "MissingSecret",
            obs.secret_problems.join("; "),
            g,
        )
    } else if let Setup::Failed(msg) = &obs.setup {
        cond(DEGRADED, true, "SetupFailed", msg.clone(), g)
    } else {
        cond(DEGRADED, false, "AsExpected", String::new(), g)
    };

    let progressing = if !obs.secret_problems.is_empty() {
        cond(
            PROGRESSING,
            false,
            "Blocked",
            "waiting for Secrets".into(),
            g,
        )
    } else if let Gate::Held { reason, message } = &obs.gate {
        // Waiting is progress; a failed setup is not (it needs a look, and is retried).
        let waiting = *reason != "SetupFailed";
        cond(PROGRESSING, waiting, reason, message.clone(), g)
    } else if !pending.is_empty() {
        cond(PROGRESSING, true, "RollingOut", pending.join("; "), g)
    } else {
        cond(
            PROGRESSING,
            false,
            "Complete",
            "all workloads are rolled out".into(),
            g,
        )
    };

    let ready = if !obs.secret_problems.is_empty() {
        cond(
            READY,
            false,
            "MissingSecret",
            obs.secret_problems.join("; "),
            g,
        )
    } else if !not_ready_deps.is_empty() {
        cond(
            READY,
            false,
            "DependenciesNotReady",
            not_ready_deps.join("; "),
            g,
        )
    } else if let Setup::Failed(msg) = &obs.setup {
        cond(READY, false, "SetupFailed", msg.clone(), g)
    } else if obs.setup == Setup::Running {
        cond(
            READY,
            false,
            "SetupNotComplete",
            "schema and topic setup Job has not completed".into(),
            g,
        )
    } else if !pending.is_empty() {
        cond(READY, false, "PodsNotReady", pending.join("; "), g)
    } else {
        cond(READY, true, "AllReady", "all roles are ready".into(), g)
    };

    let setup = if !obs.secret_problems.is_empty() {
        cond(
            SETUP_COMPLETE,
            false,
            "MissingSecret",
            "waiting for Secrets".into(),
            g,
        )
    } else {
        match &obs.setup {
            Setup::Succeeded => cond(
                SETUP_COMPLETE,
                true,
                "SetupSucceeded",
                "keyspace, tables and topic are set up for the current configuration".into(),
                g,
            ),
            Setup::Running => cond(
                SETUP_COMPLETE,
                false,
                "SetupRunning",
                "the setup Job of the current configuration has not completed".into(),
                g,
            ),
            Setup::Failed(m) => cond(SETUP_COMPLETE, false, "SetupFailed", m.clone(), g),
        }
    };

    [ready, progressing, degraded, deps, setup]
        .into_iter()
        .map(|mut c| {
            c.last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            c
        })
        .collect()
}

/// The condition of `type_`, if present.
pub fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn wl(name: &str, want: i32, ready: i32) -> Workload {
        Workload {
            name: name.into(),
            want,
            ready,
            updated: want,
            current: true,
        }
    }

    fn dep(name: &str, mode: &str, ready: bool) -> DependencyStatus {
        DependencyStatus {
            name: name.into(),
            mode: mode.into(),
            ready,
            message: if ready {
                String::new()
            } else {
                "connection refused".into()
            },
        }
    }

    fn base() -> Observed {
        Observed {
            generation: 4,
            secret_problems: vec![],
            dependencies: vec![
                dep("kafka", "managed", true),
                dep("redis", "external", true),
            ],
            workloads: vec![wl("chat-edge", 2, 2), wl("chat-delivery", 1, 1)],
            setup: Setup::Succeeded,
            gate: Gate::Open,
        }
    }

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn get<'a>(c: &'a [Condition], ty: &str) -> (&'a str, &'a str) {
        let c = find(c, ty).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn all_ready() {
        let c = conditions(&base(), &[], t(10));
        assert_eq!(get(&c, READY), ("True", "AllReady"));
        assert_eq!(get(&c, PROGRESSING), ("False", "Complete"));
        assert_eq!(get(&c, DEGRADED), ("False", "AsExpected"));
        assert_eq!(get(&c, DEPENDENCIES_READY), ("True", "DependenciesReady"));
        assert!(c.iter().all(|c| c.observed_generation == Some(4)));
    }

    #[test]
    fn missing_secret_degrades() {
        let mut o = base();
        o.secret_problems = vec!["Secret jwt not found".into()];
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, READY), ("False", "MissingSecret"));
        assert_eq!(get(&c, DEGRADED), ("True", "MissingSecret"));
        assert_eq!(get(&c, DEPENDENCIES_READY), ("False", "MissingSecret"));
        assert!(find(&c, DEGRADED).unwrap().message.contains("jwt"));
    }

    #[test]
    fn unreachable_external_dependency() {
        let mut o = base();
        o.dependencies[1].ready = false;
        o.dependencies[1].message = "127.0.0.1:1: connection refused".into();
        let c = conditions(&o, &[], t(10));
        assert_eq!(
            get(&c, DEPENDENCIES_READY),
            ("False", "DependencyUnreachable")
        );
        assert_eq!(get(&c, READY), ("False", "DependenciesNotReady"));
        assert!(
            find(&c, READY)
                .unwrap()
                .message
                .contains("redis (external)")
        );
    }

    #[test]
    fn rolling_and_setup() {
        let mut o = base();
        o.workloads[0].ready = 1;
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, PROGRESSING), ("True", "RollingOut"));
        assert_eq!(get(&c, READY), ("False", "PodsNotReady"));
        assert_eq!(get(&c, SETUP_COMPLETE), ("True", "SetupSucceeded"));
        let mut o = base();
        o.setup = Setup::Running;
        o.gate = roles_gate(&o.setup, None);
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, READY), ("False", "SetupNotComplete"));
        assert_eq!(get(&c, PROGRESSING), ("True", "WaitingForSetup"));
        assert_eq!(get(&c, SETUP_COMPLETE), ("False", "SetupRunning"));
        o.setup = Setup::Failed("setup Job chat-setup-1 failed: BackoffLimitExceeded".into());
        o.gate = roles_gate(&o.setup, None);
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, DEGRADED), ("True", "SetupFailed"));
        assert_eq!(get(&c, READY), ("False", "SetupFailed"));
        assert_eq!(get(&c, PROGRESSING), ("False", "SetupFailed"));
        let m = &find(&c, SETUP_COMPLETE).unwrap().message;
        assert!(m.contains("BackoffLimitExceeded"), "{m}");
    }

    #[test]
    fn roles_wait_for_setup_and_managed_redis() {
        let held = |setup: &Setup, redis: Option<i32>| match roles_gate(setup, redis) {
            Gate::Open => None,
            Gate::Held { reason, .. } => Some(reason),
        };
        // Only a succeeded setup opens the gate…
        assert_eq!(held(&Setup::Succeeded, None), None);
        assert_eq!(held(&Setup::Running, None), Some("WaitingForSetup"));
        assert_eq!(
            held(&Setup::Failed("boom".into()), None),
            Some("SetupFailed")
        );
        // …and with a managed Redis, its ready pod.
        assert_eq!(held(&Setup::Succeeded, Some(0)), Some("WaitingForRedis"));
        assert_eq!(held(&Setup::Succeeded, Some(1)), None);
        assert_eq!(held(&Setup::Running, Some(1)), Some("WaitingForSetup"));
        // A held gate wins over an unfinished rollout in Progressing.
        let mut o = base();
        o.workloads[0].ready = 0;
        o.gate = roles_gate(&Setup::Succeeded, Some(0));
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, PROGRESSING), ("True", "WaitingForRedis"));
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let first = conditions(&base(), &[], t(10));
        let same = conditions(&base(), &first, t(20));
        assert_eq!(find(&same, READY).unwrap().last_transition_time, t(10));
        let mut o = base();
        o.workloads[0].ready = 0;
        let changed = conditions(&o, &same, t(30));
        assert_eq!(find(&changed, READY).unwrap().last_transition_time, t(30));
        assert_eq!(
            find(&changed, DEGRADED).unwrap().last_transition_time,
            t(10)
        );
    }
}
