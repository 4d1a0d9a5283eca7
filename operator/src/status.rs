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
    /// Pods of every revision that are not terminating (`status.replicas`): above `want`
    /// while a rollout still has pods of the previous template.
    pub total: i32,
    /// The workload controller has seen the latest spec.
    pub current: bool,
}

impl Workload {
    /// The rollout is finished, as `kubectl rollout status` judges it: the controller saw the
    /// latest spec, every wanted pod runs the new template and is ready, and no pod of an
    /// older template is left.
    pub fn rolled_out(&self) -> bool {
        self.current
            && self.updated >= self.want
            && self.ready >= self.want
            && self.total <= self.want
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

/// An object the API server refused to create or update (HTTP 400 or 422: an invalid value,
/// or a change to an immutable field such as a StatefulSet's volume claim templates). The
/// reconciler records it and carries on with everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Kind and name, e.g. `StatefulSet chat-redis`.
    pub object: String,
    /// The spec field behind the object, e.g. `spec.redis.managed.storage`.
    pub field: String,
    /// What the API server said.
    pub api_message: String,
    /// What the user can do.
    pub hint: String,
}

impl Rejection {
    /// A refusal of `kind`/`name`, built from `field` (the spec field the object comes from)
    /// and the API server's message, with a hint for the cases we know.
    pub fn new(kind: &str, name: &str, field: &str, api_message: &str) -> Self {
        let hint = if kind == "StatefulSet" && api_message.contains("updates to statefulset spec") {
            format!(
                "a StatefulSet's volume claim templates cannot change, so {field} (size, storageClassName) must stay as the StatefulSet was created: set it back, or run `kubectl delete statefulset {name} --cascade=orphan` and the operator recreates it with the new template (pods and volumes are kept; existing volumes keep their size unless you expand each PVC)"
            )
        } else {
            format!(
                "correct {field} and apply the ChatCluster again; the live {kind} is left as it was"
            )
        };
        Rejection {
            object: format!("{kind} {name}"),
            field: field.to_string(),
            api_message: api_message.to_string(),
            hint,
        }
    }

    /// The sentence a user sees in the `Degraded` condition and the event.
    pub fn message(&self) -> String {
        format!(
            "{}: the API server refused {}: {}. To fix: {}",
            self.field, self.object, self.api_message, self.hint
        )
    }
}

/// Everything the conditions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub generation: i64,
    /// Missing Secrets or keys: nothing can run until they exist.
    pub secret_problems: Vec<String>,
    /// Secret values chat-server cannot use (see `config::secret_value_problems`): nothing
    /// runs until they are fixed either.
    pub invalid_secrets: Vec<String>,
    /// Objects the API server refused in this reconcile; the rest was reconciled.
    pub rejections: Vec<Rejection>,
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

/// Why nothing may be deployed, if so: missing Secrets first, then unusable Secret values.
fn blocked(obs: &Observed) -> Option<(&'static str, String)> {
    if !obs.secret_problems.is_empty() {
        let all: Vec<&String> = obs
            .secret_problems
            .iter()
            .chain(&obs.invalid_secrets)
            .collect();
        let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        Some(("MissingSecret", all.join("; ")))
    } else if !obs.invalid_secrets.is_empty() {
        Some(("InvalidSecret", obs.invalid_secrets.join("; ")))
    } else {
        None
    }
}

/// The five conditions, keeping `lastTransitionTime` from `previous` when the status is the
/// same and using `now` otherwise.
pub fn conditions(obs: &Observed, previous: &[Condition], now: Time) -> Vec<Condition> {
    let g = obs.generation;
    let blocked = blocked(obs);
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
                "{} {}/{} ready, {} updated{}",
                w.name,
                w.ready,
                w.want,
                w.updated,
                if w.total > w.want {
                    format!(", {} pods in all (old ones not yet gone)", w.total)
                } else {
                    String::new()
                }
            )
        })
        .collect();

    let deps = if let Some((reason, msg)) = &blocked {
        cond(DEPENDENCIES_READY, false, reason, msg.clone(), g)
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

    let degraded = if let Some((reason, msg)) = &blocked {
        cond(DEGRADED, true, reason, msg.clone(), g)
    } else if !obs.rejections.is_empty() {
        let msgs: Vec<String> = obs.rejections.iter().map(Rejection::message).collect();
        cond(DEGRADED, true, "SpecRejected", msgs.join("; "), g)
    } else if let Setup::Failed(msg) = &obs.setup {
        cond(DEGRADED, true, "SetupFailed", msg.clone(), g)
    } else if !not_ready_deps.is_empty() && !obs.workloads.is_empty() {
        // The roles run, but something they need is down: sends get `unavailable` until it
        // is back (before the roles exist this is an install in progress, not degradation).
        cond(
            DEGRADED,
            true,
            "DependencyNotReady",
            format!(
                "clients get `unavailable` for what needs it: {}",
                not_ready_deps.join("; ")
            ),
            g,
        )
    } else {
        cond(DEGRADED, false, "AsExpected", String::new(), g)
    };

    let progressing = if blocked.is_some() {
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

    let ready = if let Some((reason, msg)) = &blocked {
        cond(READY, false, reason, msg.clone(), g)
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

    let setup = if let Some((reason, _)) = &blocked {
        cond(
            SETUP_COMPLETE,
            false,
            reason,
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
            total: want,
            current: true,
        }
    }

    #[test]
    fn a_rollout_with_old_pods_left_is_not_done() {
        // New pod ready, the old ReplicaSet's pod not yet scaled down.
        let mut w = wl("tern-delivery", 1, 1);
        w.total = 2;
        assert!(!w.rolled_out());
        w.total = 1;
        assert!(w.rolled_out());
        w.current = false;
        assert!(!w.rolled_out());
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
            invalid_secrets: vec![],
            rejections: vec![],
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
    fn unusable_secret_value_blocks_like_a_missing_one() {
        let mut o = base();
        o.invalid_secrets = vec!["Secret redis key url holds a rediss:// URL".into()];
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, DEGRADED), ("True", "InvalidSecret"));
        assert_eq!(get(&c, READY), ("False", "InvalidSecret"));
        assert_eq!(get(&c, PROGRESSING), ("False", "Blocked"));
        assert!(find(&c, DEGRADED).unwrap().message.contains("rediss://"));
        // A missing Secret is named first, the unusable value still reported.
        o.secret_problems = vec!["Secret jwt not found".into()];
        let c = conditions(&o, &[], t(10));
        let d = find(&c, DEGRADED).unwrap();
        assert_eq!(d.reason, "MissingSecret");
        assert!(d.message.contains("jwt") && d.message.contains("rediss://"));
    }

    #[test]
    fn rejected_object_degrades_and_says_what_to_do() {
        let mut o = base();
        o.rejections = vec![Rejection::new(
            "StatefulSet",
            "chat-redis",
            "spec.redis.managed.storage",
            "StatefulSet.apps \"chat-redis\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        )];
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, DEGRADED), ("True", "SpecRejected"));
        let m = &find(&c, DEGRADED).unwrap().message;
        assert!(
            m.starts_with(
                "spec.redis.managed.storage: the API server refused StatefulSet chat-redis"
            ),
            "{m}"
        );
        assert!(
            m.contains("--cascade=orphan") && m.contains("set it back"),
            "{m}"
        );
        // The rest is still judged on its own: the running roles are ready.
        assert_eq!(get(&c, READY), ("True", "AllReady"));
        // Any other refusal gets the generic hint naming the field.
        let r = Rejection::new("Deployment", "chat-edge", "spec.edge", "Invalid value");
        assert!(r.message().contains("correct spec.edge"), "{}", r.message());
        // A missing Secret still wins: nothing was applied at all.
        o.secret_problems = vec!["Secret jwt not found".into()];
        assert_eq!(
            get(&conditions(&o, &[], t(10)), DEGRADED),
            ("True", "MissingSecret")
        );
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
    fn a_dependency_down_under_running_roles_degrades_until_it_is_back() {
        let mut o = base();
        o.dependencies[0].ready = false;
        o.dependencies[0].message = "0/1 pods ready".into();
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, DEGRADED), ("True", "DependencyNotReady"));
        assert!(
            find(&c, DEGRADED)
                .unwrap()
                .message
                .contains("kafka (managed)")
        );
        assert_eq!(get(&c, READY), ("False", "DependenciesNotReady"));
        // Back: Degraded clears.
        let back = conditions(&base(), &c, t(20));
        assert_eq!(get(&back, DEGRADED), ("False", "AsExpected"));
        // During an install (no roles yet) a dependency still starting is not degradation.
        o.workloads.clear();
        let c = conditions(&o, &[], t(10));
        assert_eq!(get(&c, DEGRADED), ("False", "AsExpected"));
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
