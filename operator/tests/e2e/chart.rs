//! The Helm chart: `helm lint --strict`, and its rendered manifests (CRDs included) accepted
//! by the real API server in a server-side dry run.

use crate::support::{client, repo_root};
use std::process::Command;

fn tool(name: &str) -> Option<()> {
    Command::new(name)
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| ())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[tokio::test]
async fn chart_lints_and_applies_with_server_side_dry_run() {
    if client().await.is_none() {
        return;
    }
    if tool("helm").is_none() || tool("kubectl").is_none() {
        if std::env::var("TERN_REQUIRE_KUBE").is_ok_and(|v| v == "1") {
            panic!("helm and kubectl must be on PATH (eval \"$(e2e/env/env.sh)\")");
        }
        eprintln!("SKIPPED: helm/kubectl not on PATH");
        return;
    }
    let chart = repo_root().join("charts/tern-operator");
    run(Command::new("helm").args(["lint", "--strict"]).arg(&chart));
    run(Command::new("helm")
        .args([
            "lint",
            "--strict",
            "--set",
            "crds.install=false,replicaCount=2,watchNamespace=chat",
        ])
        .arg(&chart));
    // values.schema.json rejects nonsense.
    let bad = Command::new("helm")
        .args(["template", "t", "--set", "replicaCount=zero"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "the values schema must reject replicaCount=zero"
    );

    let ns = format!("e2e-chart-{:08x}", rand::random::<u32>());
    run(Command::new("kubectl").args(["create", "namespace", &ns]));
    let namespaced = format!("crds.install=false,watchNamespace={ns},replicaCount=2");
    for set in ["crds.install=true", namespaced.as_str()] {
        let rendered = run(Command::new("helm")
            .args([
                "template",
                "tern",
                "--kube-version",
                "1.34.0",
                "--namespace",
                &ns,
                "--include-crds",
                "--set",
                set,
            ])
            .arg(&chart));
        let path = std::env::temp_dir().join(format!("{ns}.yaml"));
        std::fs::write(&path, &rendered).unwrap();
        let out = run(Command::new("kubectl")
            .args([
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=tern-e2e",
                "-n",
                &ns,
                "-f",
            ])
            .arg(&path));
        for kind in ["serviceaccount", "deployment.apps", "service/", "role"] {
            assert!(
                out.contains(kind),
                "{set}: nothing of kind {kind} applied:\n{out}"
            );
        }
        if set.starts_with("crds.install=true") {
            assert!(out.contains("customresourcedefinition"), "{out}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
