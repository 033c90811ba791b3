//! The invariants ARCHITECTURE.md states about the code's shape, checked on the sources:
//! no module import circle in any crate, no filter importing another filter, and an
//! engine crate that depends on nothing that does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module path (`filters::rate`) -> the crate modules its code names (`crate::x::y`).
/// Comments are skipped: a doc link is not an import.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let module_of = |path: &Path| {
        let relative = path.strip_prefix(src).unwrap().with_extension("");
        let name = relative.to_string_lossy().replace('/', "::");
        name.strip_suffix("::mod").map(str::to_owned).unwrap_or(name)
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let mut names = BTreeSet::new();
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let path: String = code[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
                // The longest prefix that is a module of this crate.
                if let Some(target) = (1..=parts.len())
                    .rev()
                    .map(|n| parts[..n].join("::"))
                    .find(|m| modules.contains(m))
                {
                    if target != module && !module.starts_with(&format!("{target}::")) {
                        names.insert(target);
                    }
                }
            }
        }
        graph.insert(module, names);
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_a_module_import_circle() {
    for krate in [
        "pinpoint-core",
        "pinpoint-store",
        "pinpoint-policy",
        "pinpoint-gateway",
        "pinpoint-cloudauth",
        "pinpoint-client",
        "pinpoint",
    ] {
        let graph = module_graph(&crates_dir().join(krate).join("src"));
        assert!(
            graph.len() > 1 || krate == "pinpoint-client",
            "{krate}: no modules found"
        );
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: import circle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn no_filter_imports_another_filter() {
    let graph = module_graph(&crates_dir().join("pinpoint-policy/src"));
    for (module, names) in &graph {
        if module.starts_with("filters::") {
            let others: Vec<_> = names.iter().filter(|n| n.starts_with("filters::")).collect();
            assert!(others.is_empty(), "{module} imports {others:?}");
        }
    }
}

#[test]
fn the_engine_depends_on_nothing_that_does_io() {
    let manifest = std::fs::read_to_string(crates_dir().join("pinpoint-policy/Cargo.toml")).unwrap();
    for io in [
        "hyper",
        "sqlx",
        "tokio",
        "reqwest",
        "axum",
        "pinpoint-store",
        "pinpoint-gateway",
    ] {
        assert!(
            !manifest.lines().any(|l| l.trim_start().starts_with(io)),
            "pinpoint-policy depends on {io}"
        );
    }
}
