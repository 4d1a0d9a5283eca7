//! Prints the ChatCluster CRD as YAML, or writes it to every path given:
//! `cargo run -p tern-operator --bin crdgen -- crds/chatcluster.yaml charts/tern-operator/files/chatcluster.yaml`.

fn main() -> anyhow::Result<()> {
    let yaml = tern_operator::crd_yaml();
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        print!("{yaml}");
    }
    for path in paths {
        std::fs::write(&path, &yaml)?;
    }
    Ok(())
}
