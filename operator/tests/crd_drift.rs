//! The committed CRD (`crds/chatcluster.yaml`) must be exactly what the Rust types generate.
//! Fix a failure with: `cargo run -p tern-operator --bin crdgen -- crds/chatcluster.yaml`.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/chatcluster.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/chatcluster.yaml exists");
    let generated = tern_operator::crd_yaml();
    assert!(
        committed == generated,
        "crds/chatcluster.yaml is out of date with operator/src/crd.rs; regenerate it with \
         `cargo run -p tern-operator --bin crdgen -- crds/chatcluster.yaml`"
    );
}
