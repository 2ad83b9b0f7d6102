//! The source layout's one rule: a module never imports one that sits above
//! it in the chain (server and stack at the top; the request context,
//! telemetry, config, error and body types at the bottom), so there are no
//! import cycles.
//!
//! This reads `src/**/*.rs`, collects every `crate::…` path in code
//! (comments and string literals are skipped; test modules count too), and
//! checks the edges between modules at two levels: top-level modules (a
//! file under `src/`, or a folder) against [`ORDER`], and the files inside
//! each folder (`cache::service`, `layers::auth`, …) for cycles. A new
//! top-level module must be placed in [`ORDER`], which is where its place
//! in the chain is decided.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The library's top-level modules, top of the chain first: each may import
/// only modules listed after it. lib.rs's module docs give the same order
/// and say why each folder sits where it does.
const ORDER: &[&str] = &[
    // Entry points the binary calls.
    "demo",
    "cli",
    // Accepting connections, workers, shutdown.
    "server",
    // The one builder chain.
    "stack",
    // Everything under /_gateway/ (answered above authentication).
    "admin",
    // Rate limits and the upstream quota guard.
    "limits",
    // The request layers: observe, body limit, guard, auth, namespace.
    "layers",
    // The cache and coalescing.
    "cache",
    // The one place that builds and sends upstream requests.
    "upstream",
    // What replicas share through Redis.
    "redis",
    // What the layers learn about a request.
    "context",
    // Logging and the metrics registry.
    "telemetry",
    // Configuration, error and body types, small helpers.
    "config",
    "error",
    "body",
    "clock",
    "striped",
    // The simulated Mixpeek API (for demo, tests, benchmarks): standalone.
    "sim",
];

/// One module: `a` for `src/a.rs` and `src/a/mod.rs`, `a::b` for
/// `src/a/b.rs` (deeper files count as their second-level module).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Module(Vec<String>);

impl Module {
    fn top(&self) -> &str {
        &self.0[0]
    }

    fn name(&self) -> String {
        self.0.join("::")
    }
}

struct Source {
    root: PathBuf,
    /// Per folder module, the items its `mod.rs` re-exports, by the child
    /// they come from (`pub use store::{Entry, Store}`).
    reexports: BTreeMap<String, BTreeMap<String, String>>,
}

impl Source {
    fn new(root: &Path) -> Self {
        let mut reexports = BTreeMap::new();
        for entry in fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            let mod_rs = path.join("mod.rs");
            if mod_rs.is_file() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                reexports.insert(
                    name,
                    reexported(&code_of(&fs::read_to_string(mod_rs).unwrap())),
                );
            }
        }
        Self {
            root: root.to_path_buf(),
            reexports,
        }
    }

    fn is_folder(&self, name: &str) -> bool {
        self.root.join(name).join("mod.rs").is_file()
    }

    fn has_child(&self, folder: &str, child: &str) -> bool {
        let dir = self.root.join(folder);
        dir.join(format!("{child}.rs")).is_file() || dir.join(child).join("mod.rs").is_file()
    }

    fn is_module(&self, name: &str) -> bool {
        self.root.join(format!("{name}.rs")).is_file() || self.is_folder(name)
    }

    /// The child of `folder` that its `mod.rs` re-exports `item` from
    /// (by name, else through its one glob re-export if `item` looks like
    /// an item rather than a module).
    fn reexport(&self, folder: &str, item: &str) -> Option<String> {
        let names = self.reexports.get(folder)?;
        names.get(item).cloned().or_else(|| {
            item.starts_with(|c: char| c.is_ascii_uppercase())
                .then(|| names.get("*").cloned())
                .flatten()
        })
    }

    /// The module a path `first::second::…` (from the crate root) lands in.
    fn resolve(&self, first: &str, second: Option<&str>) -> Option<Module> {
        if !self.is_module(first) {
            return None;
        }
        let mut module = vec![first.to_string()];
        if let (true, Some(second)) = (self.is_folder(first), second) {
            if self.has_child(first, second) {
                module.push(second.to_string());
            } else if let Some(child) = self.reexport(first, second) {
                module.push(child);
            }
        }
        Some(Module(module))
    }

    /// The module of a file under the root; `None` for the crate roots.
    fn module_of(&self, file: &Path) -> Option<Module> {
        let relative = file.strip_prefix(&self.root).unwrap();
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        match parts.as_slice() {
            [root] if root == "lib" || root == "main" => None,
            [single] => Some(Module(vec![single.clone()])),
            [folder, child] if child == "mod" => Some(Module(vec![folder.clone()])),
            [folder, child, ..] => Some(Module(vec![folder.clone(), child.clone()])),
            [] => None,
        }
    }

    /// Every module `file` names through `crate::` (and, inside a folder,
    /// through `super::`).
    fn imports(&self, file: &Path, from: &Module) -> BTreeSet<Module> {
        let code = code_of(&fs::read_to_string(file).unwrap());
        let mut out = BTreeSet::new();
        for path in paths_after(&code, "crate::") {
            if let Some(module) = self.resolve(&path[0], path.get(1).map(String::as_str)) {
                out.insert(module);
            }
        }
        // `super::x` in `a/b.rs` is `crate::a::x` (and `super::super::x`
        // is `crate::x`); in `a/mod.rs` or a top-level file, `super::x` is
        // `crate::x`. In a child file, a `super::` name that is neither a
        // sibling file nor one of the folder's re-exports is the file's
        // own item, named from an inline module (`mod tests`).
        let is_child_file = from.0.len() == 2 && !file.ends_with("mod.rs");
        for path in paths_after(&code, "super::") {
            let (first, second) = (path[0].as_str(), path.get(1).map(String::as_str));
            if first == "*" || first == "self" {
                continue;
            }
            let module = if !is_child_file {
                if first == "super" {
                    continue;
                }
                self.resolve(first, second)
            } else if first == "super" {
                second.and_then(|top| self.resolve(top, None))
            } else if self.has_child(from.top(), first)
                || self.reexport(from.top(), first).is_some()
            {
                self.resolve(from.top(), Some(first))
            } else {
                None
            };
            out.extend(module);
        }
        out.remove(from);
        out
    }
}

/// The names a `mod.rs` re-exports, by the child module they come from
/// (`pub use store::{Entry, Store}`, `pub(crate) use a::b::{C, D}`); a
/// glob (`pub use types::*`) is kept under `*`.
fn reexported(code: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut globs = Vec::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let Some(at) = statement.find("use ") else {
            continue;
        };
        if !statement[..at].contains("pub") {
            continue;
        }
        let mut paths = Vec::new();
        use_tree(&statement[at + 4..], Vec::new(), &mut paths);
        for path in paths {
            match path.as_slice() {
                [child, .., item] if item == "*" => globs.push(child.clone()),
                [child, .., item] => {
                    out.insert(item.clone(), child.clone());
                }
                _ => {}
            }
        }
    }
    if let [only] = globs.as_slice() {
        out.insert("*".to_string(), only.clone());
    }
    out
}

/// `text` without comments, string literals and char literals (each
/// replaced by a space), so that only code is searched.
fn code_of(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < bytes.len() {
                if bytes[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if bytes[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(skip) = raw_string_len(rest) {
            i += skip;
            out.push(' ');
        } else if rest[0] == b'"' || (rest.starts_with(b"b\"") && !ident_before(bytes, i)) {
            i += if rest[0] == b'b' { 2 } else { 1 };
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{1F600}'), or a lifetime.
            if rest.get(1) == Some(&b'\\') {
                // Past the quote, the backslash and the escaped character
                // (itself possibly a quote), then to the closing quote.
                i += 3;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += 1;
                }
                i += 1;
                out.push(' ');
            } else if let Some(len) = text[i + 1..].chars().next().map(char::len_utf8) {
                if bytes.get(i + 1 + len) == Some(&b'\'') {
                    i += len + 2;
                    out.push(' ');
                } else {
                    out.push('\'');
                    i += 1;
                }
            } else {
                i += 1;
            }
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn ident_before(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')
}

/// The length of a raw string literal (`r"…"`, `br#"…"#`) at the start of
/// `rest`, if one starts there.
fn raw_string_len(rest: &[u8]) -> Option<usize> {
    let start = if rest.starts_with(b"br") {
        2
    } else if rest.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = rest[start..].iter().take_while(|&&b| b == b'#').count();
    if rest.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let mut closing = vec![b'"'];
    closing.extend(std::iter::repeat_n(b'#', hashes));
    let body = start + hashes + 1;
    rest[body..]
        .windows(closing.len())
        .position(|w| w == closing.as_slice())
        .map(|end| body + end + closing.len())
}

/// Every path that follows `prefix` in `code`, cut to its first two
/// segments (a `{…}` group gives one path per member, nested groups too).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(prefix) {
        let start = from + at;
        from = start + prefix.len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        use_tree(&code[from..], Vec::new(), &mut out);
    }
    out.retain(|path| !path.is_empty());
    for path in &mut out {
        path.truncate(2);
    }
    out
}

/// Parses one use tree (`a::b`, `a::{b, c::d}`, `{a, b}`) at the start of
/// `text`, pushing every path it names (after `prefix`) to `out`; returns
/// the length it read.
fn use_tree(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut at = text.len() - text.trim_start().len();
    loop {
        let rest = &text[at..];
        if let Some(group) = rest.strip_prefix('{') {
            at += 1;
            let mut read = 1 + group.len() - group.trim_start().len();
            at += read - 1;
            loop {
                read = use_tree(&text[at..], path.clone(), out);
                at += read;
                let rest = text[at..].trim_start();
                at = text.len() - rest.len();
                if let Some(next) = rest.strip_prefix(',') {
                    at += 1;
                    if next.trim_start().starts_with('}') {
                        at += next.len() - next.trim_start().len() + 1;
                        return at;
                    }
                } else {
                    if rest.starts_with('}') {
                        at += 1;
                    }
                    return at;
                }
            }
        }
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '*')
            .collect();
        if ident.is_empty() {
            out.push(path);
            return at;
        }
        at += ident.len();
        path.push(ident);
        let rest = &text[at..];
        match rest.trim_start().strip_prefix("::") {
            Some(next) => at = text.len() - next.trim_start().len(),
            None => {
                // `a::B as C`: the alias names nothing to follow.
                if let Some(alias) = rest.trim_start().strip_prefix("as ") {
                    let alias = alias.trim_start();
                    let name = alias
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .count();
                    at = text.len() - alias.len() + name;
                }
                out.push(path);
                return at;
            }
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate's module graph, with the file and path that made each edge.
fn graph() -> BTreeMap<Module, BTreeMap<Module, PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let source = Source::new(&root);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut graph: BTreeMap<Module, BTreeMap<Module, PathBuf>> = BTreeMap::new();
    for file in files {
        let Some(from) = source.module_of(&file) else {
            continue;
        };
        let edges = graph.entry(from.clone()).or_default();
        for to in source.imports(&file, &from) {
            edges.entry(to).or_insert_with(|| file.clone());
        }
    }
    graph
}

/// A cycle in `edges`, as the nodes along it, if there is one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, edges, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn every_top_level_module_imports_only_those_below_it() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (from, edges) in &graph {
        let Some(rank) = ORDER.iter().position(|m| *m == from.top()) else {
            wrong.push(format!(
                "{}: not in ORDER (tests/layout.rs): place it in the chain",
                from.name()
            ));
            continue;
        };
        for (to, file) in edges {
            if to.top() == from.top() {
                continue;
            }
            let Some(target) = ORDER.iter().position(|m| *m == to.top()) else {
                continue;
            };
            if target <= rank {
                wrong.push(format!(
                    "{} imports {}, which sits above it ({})",
                    from.name(),
                    to.name(),
                    file.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_crate_path_names_a_module_file() {
    // A re-export in lib.rs (`pub use a::b;`) would let `crate::b` hide an
    // edge from the checks above.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let source = Source::new(&root);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let code = code_of(&fs::read_to_string(&file).unwrap());
        for path in paths_after(&code, "crate::") {
            if source.resolve(&path[0], None).is_none() {
                wrong.push(format!("{}: crate::{}", file.display(), path.join("::")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not a module of src/:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in graph() {
        let set = edges.entry(from.top().to_string()).or_default();
        set.extend(
            to.keys()
                .filter(|m| m.top() != from.top())
                .map(|m| m.top().to_string()),
        );
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn no_import_cycle_between_the_files_of_a_folder() {
    let edges: BTreeMap<String, BTreeSet<String>> = graph()
        .into_iter()
        .map(|(from, to)| (from.name(), to.keys().map(Module::name).collect()))
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_scanner_sees_code_not_comments_or_strings() {
    let code = code_of(
        "use crate::a::B; // crate::c\n/* crate::d /* nested */ crate::e */\n\
         let s = \"crate::f\"; let r = r#\"crate::g\"#; let c = '\"'; fn f<'a>() {}\n\
         use crate::{h::I, j, k::{l, m}};\n",
    );
    let firsts: Vec<String> = paths_after(&code, "crate::")
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(firsts, ["a::B", "h::I", "j", "k::l", "k::m"]);
    let reexports = reexported(
        "pub mod a;\npub use store::{Entry, Store};\npub use key::CacheKey;\n\
         #[doc(inline)]\npub use types::*;\npub(crate) use a::b::{C, D as E};",
    );
    assert_eq!(reexports["Entry"], "store");
    assert_eq!(reexports["CacheKey"], "key");
    assert_eq!(reexports["*"], "types");
    assert_eq!(reexports["C"], "a");
    assert_eq!(reexports["D"], "a");
    // An escaped quote in a char literal does not open a string, and an
    // alias does not end a group.
    let code = code_of("let q = ['\\'','\"']; use crate::x::Y;\nuse crate::{a::B as C, d::E};");
    let paths: Vec<String> = paths_after(&code, "crate::")
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(paths, ["x::Y", "a::B", "d::E"]);
}

#[test]
fn a_cycle_is_found_and_a_chain_is_not() {
    let graph = |pairs: &[(&str, &str)]| {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            edges
                .entry(from.to_string())
                .or_default()
                .insert(to.to_string());
        }
        edges
    };
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        find_cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])),
        None
    );
}
