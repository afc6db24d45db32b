//! The top-level modules of the crate form a layered graph: no module imports one that imports
//! it back, directly or through others (docs/architecture.md, "Module layering"). A cycle is how a
//! "small" convenience import turns two modules into one that can only be read together, so
//! it is refused here rather than found in review.
//!
//! The graph is read from the source: every `crate::<module>` path outside comments and unit
//! tests is an edge from the file's top-level module to `<module>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `crate::x` references per top-level module of `src/` (lib.rs and main.rs excluded: the
/// crate root assembles everything).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top).to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let edges = graph.entry(top.clone()).or_default();
        for target in crate_references(&text) {
            if target != top {
                edges.insert(target);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for edges in graph.values_mut() {
        edges.retain(|t| modules.contains(t));
    }
    graph
}

/// The first path segment after every `crate::` in code (comments and the unit-test module at
/// the end of a file removed), including each name of a `crate::{a, b::c}` group.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(end) => &text[..end],
        None => text,
    };
    let code: String = code
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = item.trim().split("::").next().unwrap_or("");
                if !name.is_empty() {
                    found.insert(name.to_owned());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// A cycle through `start`, if there is one: the path of modules back to it.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in &graph[&node] {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    assert!(
        graph.contains_key("pipeline") && graph.contains_key("store"),
        "{graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_reader_finds_paths_and_groups_but_not_comments() {
    let text = "use crate::store::Store;\nuse crate::{audit::Audit, body};\n\
                // crate::admin is mentioned here only\nfn f() { crate::metrics::global(); }\n\
                #[cfg(test)]\nmod tests { use crate::config; }\n";
    let found: Vec<String> = crate_references(text).into_iter().collect();
    assert_eq!(found, ["audit", "body", "metrics", "store"]);
}
