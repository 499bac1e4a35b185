//! The trainer's modules import one way (configuration → setup → the epoch loop → summary and
//! export → plots, report, sweep, with the log format and checkpoints below the loop): no
//! module may reach, through its `crate::` (or `super::`) paths, a module that reaches back to it.
//! A folder of modules (`methods/`) counts as one module, every file in it read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, with its module path below `src/` (`methods/role.rs` →
/// `["methods", "role"]`, `methods/mod.rs` → `["methods"]`).
fn files(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            files(&path, &[prefix, &[stem]].concat(), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let module = if stem == "mod" { prefix.to_vec() } else { [prefix, &[stem]].concat() };
            out.push((module, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The top-level modules that one path names, from a file at `module`: `crate::a::b` names `a`;
/// `super::` climbs from the file's own module (`super::super::x` from `methods/role.rs` names
/// `x`), a path that stays inside the file's own top-level module names nothing. A group
/// (`crate::{a, b}`) names each of its members.
fn named(module: &[String], path: &str) -> Vec<String> {
    let mut rest = path;
    let mut at: Vec<String> = if let Some(r) = rest.strip_prefix("crate::") {
        rest = r;
        vec![]
    } else {
        module.to_vec()
    };
    while let Some(r) = rest.strip_prefix("super::") {
        at.pop();
        rest = r;
    }
    let heads: Vec<&str> = match rest.strip_prefix('{') {
        Some(group) => group.split('}').next().unwrap_or("").split(',').collect(),
        None => vec![rest],
    };
    heads
        .iter()
        .filter_map(|h| {
            let first: String = h.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let top = at.first().cloned().unwrap_or(first);
            (!top.is_empty() && Some(&top) != module.first()).then_some(top)
        })
        .collect()
}

/// Top-level module (a file of `src/`, or a folder such as `methods/` taken whole) → the other
/// top-level modules its code (comments left out, every file of a folder included) names
/// through `crate::` or `super::` paths.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &[], &mut all);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &all {
        let Some(top) = module.first() else { continue };
        let deps = graph.entry(top.clone()).or_default();
        for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
            for (i, _) in line.match_indices("crate::").chain(line.match_indices("super::")) {
                // The start of a path only (not the `super::` inside `super::super::`).
                if line[..i].ends_with("::") {
                    continue;
                }
                deps.extend(named(module, &line[i..]));
            }
        }
    }
    graph
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(node).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if g.contains_key(next) && seen.insert(next.clone()) {
                path.push(next.clone());
                if visit(g, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    visit(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn trainer_modules_import_one_way() {
    let graph = imports();
    assert!(graph.len() > 10, "found only {:?}", graph.keys());
    // The loop is below the summary, which is below the launcher: the direction the flow takes.
    assert!(graph["summary"].contains("train") && !graph["train"].contains("summary"));
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("the trainer's modules import each other in a circle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn paths_name_the_top_level_modules_they_reach() {
    let role = ["methods".to_string(), "role".to_string()];
    assert_eq!(named(&role, "crate::optim::Adam;"), ["optim"]);
    assert_eq!(named(&role, "crate::{config::Schedule, optim::Adam};"), ["config", "optim"]);
    assert!(named(&role, "super::losses::bce;").is_empty(), "inside the folder");
    assert_eq!(named(&role, "super::super::optim::Adam"), ["optim"]);
    assert!(named(&["config".to_string()], "super::*;").is_empty(), "a file's own tests");
    // A circle through a folder's file is seen (issue 26: config -> methods -> methods/role.rs ->
    // optim -> config went unseen while only the files of src/ were read).
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("config".into(), named(&["config".into()], "crate::methods::{MethodConfig}").into_iter().collect());
    g.insert("methods".into(), named(&role, "crate::optim::Adam").into_iter().collect());
    g.insert("optim".into(), named(&["optim".into()], "crate::config::{Schedule, TrainConfig}").into_iter().collect());
    assert_eq!(cycle_from(&g, "config").unwrap(), ["config", "methods", "optim", "config"]);
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "c", "a"]);
    g.insert("c".into(), BTreeSet::new());
    assert!(cycle_from(&g, "a").is_none());
}
