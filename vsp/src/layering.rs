//! Tests of the crate's shape: no cycle among the top-level modules of `vsp/src`, and no
//! source file over 600 lines.
//!
//! Why a test and not a convention: a plug-in trait that starts to import its host (a balancer
//! reaching into the mesh) compiles fine, and every later capability then has to work around the
//! knot. This reads the sources, collects every `crate::<module>` a module names (code, doc links
//! and all), and fails naming the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules and the files each owns (`x.rs`, or everything under `x/`).
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "bin" {
            continue;
        }
        let files = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path.clone()]
        };
        modules.insert(name, files);
    }
    modules
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The modules that `text` names as `crate::<module>`, including `crate::{a, b::C}` groups.
fn named_modules(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let leading_ident = |part: &str| -> String {
        part.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let idents: Vec<String> = match rest.strip_prefix('{') {
            Some(group) => {
                let end = group.find(';').unwrap_or(group.len());
                group[..end].split([',', '{']).map(leading_ident).collect()
            }
            None => vec![leading_ident(rest)],
        };
        named.extend(idents.into_iter().filter(|ident| known.contains(ident)));
    }
    named
}

/// A cycle in `graph`, as the path of modules that closes it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
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
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(name, files)| {
            let mut uses = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(file).unwrap();
                uses.extend(named_modules(&text, &known));
            }
            uses.remove(name);
            (name.clone(), uses)
        })
        .collect();
    assert!(
        graph.contains_key("mesh") && graph["mesh"].contains("balancer"),
        "the scan found the modules: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "module cycle: {}\nall edges: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_scan_sees_groups_and_paths() {
    let known: BTreeSet<String> = ["mesh", "balancer", "error"]
        .into_iter()
        .map(String::from)
        .collect();
    let text =
        "use crate::mesh::Instance;\nuse crate::{balancer, error::VspError};\nx(crate::Other)";
    let named = named_modules(text, &known);
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["balancer", "error", "mesh"]
    );
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "a"]);
}

/// The longest a source file of the library or its macros may grow: past it, a file holds more
/// than one job and is split by job (as `server/`, `client/connection/` and `trace/` are).
const MAX_FILE_LINES: usize = 600;

#[test]
fn no_source_file_is_over_600_lines() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut too_long = Vec::new();
    // The macros' sources are beside the library in the repository (not in its package).
    for dir in [crate_dir.join("src"), crate_dir.join("../vsp-macros/src")] {
        if !dir.exists() {
            continue;
        }
        for file in rust_files(&dir) {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > MAX_FILE_LINES {
                too_long.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(
        too_long.is_empty(),
        "split by job, each file at most {MAX_FILE_LINES} lines: {too_long:?}"
    );
}
