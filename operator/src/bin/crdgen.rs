//! Prints the ChatCluster CRD as YAML, or writes it to the path given as the only argument:
//! `cargo run -p tern-operator --bin crdgen -- crds/chatcluster.yaml`.

fn main() -> anyhow::Result<()> {
    let yaml = tern_operator::crd_yaml();
    match std::env::args().nth(1) {
        Some(path) => std::fs::write(&path, yaml)?,
        None => print!("{yaml}"),
    }
    Ok(())
}
