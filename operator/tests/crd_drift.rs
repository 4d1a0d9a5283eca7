//! The committed CRD YAML (`crds/` and the Helm chart's copy) must be exactly what the Rust
//! types generate. Fix a failure with:
//! `cargo run -p tern-operator --bin crdgen -- crds/chatcluster.yaml charts/tern-operator/files/chatcluster.yaml`

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = tern_operator::crd_yaml();
    for rel in [
        "crds/chatcluster.yaml",
        "charts/tern-operator/files/chatcluster.yaml",
    ] {
        let path = format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(
            committed == generated,
            "{rel} is out of date with operator/src/crd.rs; regenerate with \
             `cargo run -p tern-operator --bin crdgen -- crds/chatcluster.yaml charts/tern-operator/files/chatcluster.yaml`"
        );
    }
}
