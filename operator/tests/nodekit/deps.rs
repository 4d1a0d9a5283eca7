//! The managed dependencies as they run on the node: each pod runs as its image's non-root
//! user with that `fsGroup`, no privilege escalation and no capabilities, and can write its
//! data volume (what it wrote is its own); a PodDisruptionBudget exists exactly for the
//! dependencies with more than one pod; every pod prefers a node of its own.
//!
//! On the e2e node the PersistentVolumes are static `hostPath` directories of mode 0777: the
//! kubelet applies `fsGroup` only to volume types that support ownership management (not
//! `hostPath`), so there the mount point keeps its owner (root, or the user of a recycled PV's
//! last tenant) and mode 0777, and only what the engine wrote is checked for ownership. On a volume that supports it the mount point itself must
//! carry the `fsGroup`.

use super::{Cluster, kubectl};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::Api;

/// What the operator promises for one managed dependency's container.
struct Expect {
    /// Component label and StatefulSet suffix.
    component: &'static str,
    /// Name of the container the operator builds.
    container: &'static str,
    /// The image's user (and group, and `fsGroup`); `None`: starts as root (ScyllaDB).
    uid: Option<i64>,
}

/// Which user each container the operator may build runs as (Kafka's `appuser` 1000,
/// Cassandra's and Redis's 999; ScyllaDB's image must start as root).
fn expect(component: &'static str, container: &str) -> Expect {
    let (container, uid) = match container {
        "kafka" => ("kafka", Some(1000)),
        "cassandra" => ("cassandra", Some(999)),
        "redis" => ("redis", Some(999)),
        "scylla" => ("scylla", None),
        other => panic!("{component}: unexpected container {other}"),
    };
    Expect {
        component,
        container,
        uid,
    }
}

fn exec(k: &Cluster, pod: &str, container: &str, script: &str) -> String {
    kubectl(&[
        "exec", "-n", &k.ns, pod, "-c", container, "--", "sh", "-c", script,
    ])
    .trim()
    .to_string()
}

/// Every managed dependency of the cluster `k` is hardened as documented (see the module
/// doc). Panics with what differs; prints what it saw.
pub async fn assert_dependencies_hardened(k: &Cluster) {
    let statefulsets: Api<StatefulSet> = Api::namespaced(k.client.clone(), &k.ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(k.client.clone(), &k.ns);
    let mut seen = 0;
    for component in ["kafka", "scylla", "redis"] {
        let sts_name = format!("{}-{component}", k.name);
        let Some(sts) = statefulsets.get_opt(&sts_name).await.unwrap() else {
            eprintln!("   {component}: not managed");
            continue;
        };
        seen += 1;
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);

        // The PodDisruptionBudget: maxUnavailable 1 over the dependency's pods, none for one pod.
        let pdb = pdbs.get_opt(&sts_name).await.unwrap();
        if replicas > 1 {
            let pdb = pdb.unwrap_or_else(|| panic!("{sts_name}: no PDB for {replicas} pods"));
            let spec = pdb.spec.clone().unwrap();
            assert_eq!(
                spec.max_unavailable,
                Some(IntOrString::Int(1)),
                "{sts_name}"
            );
            assert_eq!(
                spec.unhealthy_pod_eviction_policy.as_deref(),
                Some("IfHealthyBudget"),
                "{sts_name}"
            );
            let sel = spec.selector.unwrap().match_labels.unwrap();
            assert_eq!(sel["app.kubernetes.io/component"], component);
            assert_eq!(sel["app.kubernetes.io/instance"], k.name);
            assert!(
                pdb.owner_references()
                    .iter()
                    .any(|o| o.kind == "ChatCluster" && o.controller == Some(true)),
                "{sts_name}: PDB not owned by the ChatCluster"
            );
            let allowed = pdb.status.map(|s| s.disruptions_allowed).unwrap_or(-1);
            eprintln!("   {sts_name}: PDB maxUnavailable 1, {allowed} disruption(s) allowed");
        } else {
            assert!(pdb.is_none(), "{sts_name}: a PDB for a single pod");
            eprintln!("   {sts_name}: 1 pod, no PDB (as intended)");
        }

        let pods = k.pods_of(component).await;
        assert_eq!(pods.len() as i32, replicas, "{component}: pods");
        for pod in &pods {
            check_pod(k, component, pod);
        }
    }
    assert!(seen > 0, "no managed dependency in {}", k.ns);
}

fn check_pod(k: &Cluster, component: &'static str, pod: &Pod) {
    let name = pod.name_any();
    let spec = pod.spec.as_ref().unwrap();
    let ctr = &spec.containers[0];
    let e = expect(component, &ctr.name);

    // Spread: preferred (never required) anti-affinity on the node name, same component only.
    let aa = spec
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .unwrap_or_else(|| panic!("{name}: no pod anti-affinity"));
    assert!(
        aa.required_during_scheduling_ignored_during_execution
            .is_none(),
        "{name}: required anti-affinity would leave pods Pending on one node"
    );
    let pref = aa
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap();
    let term = &pref[0].pod_affinity_term;
    assert_eq!(term.topology_key, "kubernetes.io/hostname", "{name}");
    let sel = term
        .label_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(sel["app.kubernetes.io/component"], component, "{name}");

    let Some(uid) = e.uid else {
        assert!(
            spec.security_context.is_none(),
            "{name}: ScyllaDB starts as root"
        );
        eprintln!("   {name}: ScyllaDB, root (documented)");
        return;
    };

    // The pod's and the container's security contexts.
    let sc = spec
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no securityContext"));
    assert_eq!(sc.run_as_non_root, Some(true), "{name}");
    assert_eq!(sc.run_as_user, Some(uid), "{name}");
    assert_eq!(sc.run_as_group, Some(uid), "{name}");
    assert_eq!(sc.fs_group, Some(uid), "{name}");
    assert_eq!(
        sc.fs_group_change_policy.as_deref(),
        Some("OnRootMismatch"),
        "{name}"
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{name}"
    );
    let csc = ctr
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: container has no securityContext"));
    assert_eq!(csc.allow_privilege_escalation, Some(false), "{name}");
    assert_eq!(
        csc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()]),
        "{name}"
    );

    // What the kernel says about the running server (PID 1 is exec'ed by each entrypoint).
    let status = exec(
        k,
        &name,
        e.container,
        "grep -E '^(Uid|Gid|Groups|NoNewPrivs|CapEff):' /proc/1/status | tr -s '\\t ' ' '",
    );
    let field = |f: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{f}: ")))
            .unwrap_or_else(|| panic!("{name}: no {f} in {status}"))
            .trim()
            .to_string()
    };
    let u = uid.to_string();
    assert_eq!(
        field("Uid"),
        [u.as_str(); 4].join(" "),
        "{name}: uid of PID 1"
    );
    assert_eq!(
        field("Gid"),
        [u.as_str(); 4].join(" "),
        "{name}: gid of PID 1"
    );
    assert!(
        field("Groups").split(' ').any(|g| g == u),
        "{name}: fsGroup {uid} not among the supplementary groups: {status}"
    );
    assert_eq!(field("NoNewPrivs"), "1", "{name}");
    assert_eq!(
        field("CapEff"),
        "0000000000000000",
        "{name}: effective capabilities"
    );

    // The data volume: writable by the server's user, and everything in it is the user's.
    let mount = ctr
        .volume_mounts
        .as_ref()
        .and_then(|m| m.iter().find(|m| m.name == "data"))
        .unwrap_or_else(|| panic!("{name}: no data volume"))
        .mount_path
        .clone();
    let root = exec(
        k,
        &name,
        e.container,
        &format!("stat -c '%u %g %a' {mount}"),
    );
    let probe = format!("{mount}/.tern-write-check");
    exec(
        k,
        &name,
        e.container,
        &format!("touch {probe} && rm {probe}"),
    );
    let foreign = exec(
        k,
        &name,
        e.container,
        &format!("find {mount} -mindepth 1 ! -user {uid} | head -n 5"),
    );
    assert!(
        foreign.is_empty(),
        "{name}: files in {mount} not owned by uid {uid}: {foreign}"
    );
    let files = exec(
        k,
        &name,
        e.container,
        &format!("find {mount} -mindepth 1 -user {uid} | wc -l"),
    );
    assert!(
        files.parse::<u64>().unwrap_or(0) > 0,
        "{name}: the server wrote nothing under {mount}"
    );
    let fields: Vec<&str> = root.split(' ').collect();
    let how = match fields.as_slice() {
        [o, _, _] if *o == u => "owned by the user",
        [_, g, _] if *g == u => "fsGroup applied",
        // hostPath: whoever had the directory before (root, or a former tenant of a
        // recycled PV) keeps it; mode 0777 lets the user in.
        [_, _, "777"] => "mode 0777, fsGroup not applied (hostPath volume)",
        _ => panic!("{name}: {mount} is {root}: neither the user's, nor its group's, nor 0777"),
    };
    eprintln!(
        "   {name}: uid/gid {uid}, fsGroup in groups, no caps, no_new_privs; {mount} {root} ({how}); {files} entries, all uid {uid}"
    );
}
