//! The module layout stays readable: no import circle of more than three files in
//! `chat-server/src`, and `AppState` is named only by the app assembly, the transports and the
//! HTTP handlers (issue #12). Reads the source with `use crate::…`/`super::…` paths, as a
//! reader would; `#[cfg(test)] mod tests` blocks are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`plane::cluster::sequencer`) → file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts.join("::"), p);
        }
    }
    out
}

/// The source without its unit-test module.
fn code(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap();
    match s.find("#[cfg(test)]\nmod tests") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Paths following `prefix` (`crate::` or `super::`), as `a::b::c` (stopping at `{`, a
/// type or a function).
fn paths_after<'a>(src: &'a str, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
    src.match_indices(prefix).filter_map(move |(i, _)| {
        let before = src[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            return None;
        }
        let rest = &src[i + prefix.len()..];
        let mut segs = Vec::new();
        for seg in rest.split("::") {
            let name: String = seg
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.is_empty() || name.len() != seg.len() && !seg[name.len()..].is_empty() {
                if !name.is_empty() {
                    segs.push(name);
                }
                break;
            }
            segs.push(name);
        }
        (!segs.is_empty()).then(|| segs.join("::"))
    })
}

/// The longest module prefix of `path` that is a file.
fn resolve(mods: &BTreeMap<String, PathBuf>, path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find(|m| mods.contains_key(m))
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut edges = BTreeMap::new();
    for (m, file) in &mods {
        let text = code(file);
        let is_mod_file = file.file_name().is_some_and(|f| f == "mod.rs");
        // `super::` from a/b.rs is `a`; from a/b/mod.rs (module a::b) it is also `a`.
        let parent: Vec<&str> = {
            let mut p: Vec<&str> = m.split("::").collect();
            p.pop();
            let _ = is_mod_file;
            p
        };
        let mut deps = BTreeSet::new();
        for p in paths_after(&text, "crate::") {
            deps.extend(resolve(&mods, &p));
        }
        for p in paths_after(&text, "super::") {
            let full = parent
                .iter()
                .map(|s| s.to_string())
                .chain(std::iter::once(p))
                .collect::<Vec<_>>()
                .join("::");
            deps.extend(resolve(&mods, &full));
        }
        deps.remove(m);
        deps.remove("");
        edges.insert(m.clone(), deps);
    }
    edges
}

/// Strongly connected components (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut c = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                c.push(w.to_string());
                if w == v {
                    break;
                }
            }
            c.sort();
            t.out.push(c);
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_import_circle_has_more_than_three_files() {
    let g = graph(&src());
    assert!(g.len() > 30, "found only {} modules", g.len());
    assert!(
        g["plane::cluster::sequencer"].contains("plane::pipeline"),
        "the import reader lost track: {:?}",
        g["plane::cluster::sequencer"]
    );
    let big: Vec<Vec<String>> = cycles(&g).into_iter().filter(|c| c.len() > 3).collect();
    assert!(
        big.is_empty(),
        "import circles of more than three files: {big:#?}\n(edges: {:#?})",
        big.iter()
            .flatten()
            .map(|m| (m, &g[m]))
            .collect::<BTreeMap<_, _>>()
    );
}

#[test]
fn app_state_is_named_only_by_the_assembly_transports_and_handlers() {
    const ALLOWED: &[&str] = &[
        "state",   // where it is defined
        "server",  // the assembly
        "session", // the transports
        "ws", "longpoll", "api", // HTTP handlers
        "web",
    ];
    let named: Vec<String> = modules(&src())
        .into_iter()
        .filter(|(_, f)| code(f).contains("AppState"))
        .map(|(m, _)| m)
        .filter(|m| !ALLOWED.contains(&m.as_str()))
        .collect();
    assert!(
        named.is_empty(),
        "AppState is named below the handlers, in: {named:?} (pass what the module uses instead)"
    );
}

#[test]
fn the_reader_sees_a_known_circle() {
    let dir = std::env::temp_dir().join(format!("layout-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("p")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a; pub mod b; pub mod p;").unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::b::B;").unwrap();
    std::fs::write(dir.join("b.rs"), "use crate::p::q::{self, Q};").unwrap();
    std::fs::write(dir.join("p/mod.rs"), "pub mod q;").unwrap();
    std::fs::write(
        dir.join("p/q.rs"),
        "use super::super::a; fn f() { crate::a::g() }",
    )
    .unwrap();
    let g = graph(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let c: Vec<Vec<String>> = cycles(&g).into_iter().filter(|c| c.len() > 1).collect();
    assert_eq!(c, vec![vec!["a".to_string(), "b".into(), "p::q".into()]]);
}
