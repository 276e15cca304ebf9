//! The server's layers only call downward, and its files import each other in no cycle.
//!
//! (A unit test rather than an integration test: it reads the sources and needs none of the
//! library, so it should not cost a binary that links RocksDB. The checker skips files named
//! `tests.rs`, this one included: its negative control's sample sources would read as imports.)
//!
//! `ARCHITECTURE.md` declares the order below; this test reads every source file of the crate,
//! collects the `crate::…` paths it names outside its `#[cfg(test)]` part, and fails when a module
//! names one of a higher layer, or when files name each other in a circle (a cycle inside one
//! layer is as much a knot as one across layers). A grep-level check on purpose: it needs no
//! compiler internals, and a path hidden from it (a macro building `crate::` paths) would be hidden
//! from readers too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom-up: a module may name modules of its own layer or of the layers before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundation", &["config", "certs", "metrics_export", "telemetry", "tls"]),
    ("storage", &["storage"]),
    ("layout", &["layout", "states"]),
    ("policy", &["residency", "auth"]),
    ("store", &["store"]),
    ("request errors", &["error"]),
    ("replica", &["replica"]),
    ("peer transport and protocol", &["peer"]),
    ("region", &["region"]),
    ("api", &["api"]),
    ("serve", &["serve"]),
];

/// `src/a/b.rs` → `a::b` (`mod.rs` and `lib.rs` name their folder / the crate root).
fn module_of(relative: &Path) -> String {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs").to_string();
    if stem != "mod" && stem != "lib" {
        parts.push(stem);
    }
    parts.join("::")
}

/// The part of a file the crate is built from: up to its `#[cfg(test)]`, comments dropped.
fn non_test_code(source: &str) -> String {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every path named after `crate::`, with `use crate::{a, b::{c, d}}` groups expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let (found, used) = parse_tree(rest);
        paths.extend(found);
        rest = &rest[used..];
    }
    paths
}

/// Parses one use-tree (`a::b`, `a::{b, c::d}`, `{a, b}`) at the start of `text`: its paths and
/// how many bytes it took.
fn parse_tree(text: &str) -> (Vec<String>, usize) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut prefix = String::new();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'{' {
            i += 1;
            let mut paths = Vec::new();
            loop {
                let (inner, used) = parse_tree(&text[i..]);
                i += used;
                paths.extend(inner.into_iter().map(|p| join(&prefix, &p)));
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                match bytes.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => return (paths, i + 1),
                    _ => return (paths, i),
                }
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'}') {
                    return (paths, i + 1);
                }
            }
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let segment = &text[start..i];
        if segment.is_empty() {
            return (if prefix.is_empty() { vec![] } else { vec![prefix] }, i);
        }
        prefix = join(&prefix, segment);
        if text[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}::{path}"),
    }
}

/// The file-level import graph of `files` (module → source): an edge to the longest module
/// prefix of each path named (its own ancestors excluded: `mod.rs` re-exports are not imports).
fn import_graph(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (module, source) in files {
        let mut targets = BTreeSet::new();
        for path in crate_paths(&non_test_code(source)) {
            let segments: Vec<&str> = path.split("::").collect();
            let target = (1..=segments.len()).rev().map(|k| segments[..k].join("::")).find(|c| files.contains_key(c));
            if let Some(target) = target {
                let is_ancestor = module.starts_with(&format!("{target}::"));
                if target != *module && !is_ancestor && !target.is_empty() {
                    targets.insert(target);
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or_default();
    LAYERS.iter().position(|(_, modules)| modules.contains(&top))
}

/// Every import of a higher layer, and every module that belongs to no layer.
fn upward_imports(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (module, targets) in graph {
        if module.is_empty() {
            continue; // lib.rs declares the modules
        }
        let Some(from) = layer_of(module) else {
            problems.push(format!("{module} belongs to no layer (add it to LAYERS and ARCHITECTURE.md)"));
            continue;
        };
        for target in targets {
            match layer_of(target) {
                Some(to) if to > from => problems.push(format!(
                    "{module} ({}) imports {target} ({}), a layer above it",
                    LAYERS[from].0, LAYERS[to].0
                )),
                _ => {}
            }
        }
    }
    problems
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for module in graph.keys() {
        if !walk.index.contains_key(module.as_str()) {
            walk.visit(module);
        }
    }
    walk.found
}

fn read_sources(dir: &Path, root: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            read_sources(&path, root, files);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name() != Some("tests.rs".as_ref()) {
            let relative = path.strip_prefix(root).expect("under src");
            files.insert(module_of(relative), std::fs::read_to_string(&path).expect("read source"));
        }
    }
}

#[test]
fn layers_only_call_downward_and_files_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_sources(&root, &root, &mut files);
    assert!(files.len() > 20, "found only {} source files under {}", files.len(), root.display());
    let graph = import_graph(&files);
    let upward = upward_imports(&graph);
    assert!(upward.is_empty(), "imports against the layer order:\n{}", upward.join("\n"));
    let cycles = cycles(&graph);
    assert!(cycles.is_empty(), "files that import each other in a circle: {cycles:?}");
}

/// Negative control: the checker sees an upward import, a grouped one, and a cycle in one layer.
#[test]
fn the_checker_flags_upward_imports_and_cycles() {
    let files: BTreeMap<String, String> = [
        ("storage", "use crate::{layout::{self, data_key}, api::node::Node};"),
        ("layout", "fn f() { crate::storage::open(); }"),
        ("api::node", "use crate::replica::Replica;\n#[cfg(test)]\nuse crate::serve::start;"),
        ("replica", "use crate::layout; // crate::serve::start in a comment"),
        ("serve", ""),
    ]
    .into_iter()
    .map(|(m, s)| (m.to_string(), s.to_string()))
    .collect();
    let graph = import_graph(&files);
    assert_eq!(graph["storage"], ["api::node", "layout"].into_iter().map(String::from).collect());
    assert!(graph["api::node"].contains("replica") && !graph["api::node"].contains("serve"));
    assert!(!graph["replica"].contains("serve"), "comments are not imports");
    let upward = upward_imports(&graph);
    assert_eq!(upward.len(), 2, "{upward:?}");
    assert!(upward.iter().any(|p| p.starts_with("storage (storage) imports api::node")));
    assert!(upward.iter().any(|p| p.starts_with("storage (storage) imports layout")));
    // storage → api::node → replica → layout → storage.
    let cycle: Vec<String> = ["api::node", "layout", "replica", "storage"].into_iter().map(String::from).collect();
    assert_eq!(cycles(&graph), vec![cycle]);
}
