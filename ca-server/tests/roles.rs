//! The server's modules depend on each other in one direction only (see `src/lib.rs`):
//!
//! ```text
//! cli ─▶ server ─▶ wfe, admin ─▶ ra ─▶ config ─▶ ca, va ─▶ storage ─▶ (shared modules)
//! ```
//!
//! `fuzzing` (the cargo-fuzz entry points) stands beside `cli`: it drives the whole server.
//!
//! A role may use the roles below it and the shared modules, never a role beside or above it;
//! the shared modules use no role. Only `wfe` and `admin` speak HTTP (axum). Reads the sources,
//! leaving out comments and unit-test code, which may build whatever they test with.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each role and the roles it may use.
const ROLES: &[(&str, &[&str])] = &[
    ("storage", &[]),
    ("ca", &["storage"]),
    ("va", &["storage"]),
    ("config", &["storage", "ca", "va"]),
    ("ra", &["storage", "ca", "va", "config"]),
    ("wfe", &["storage", "ca", "va", "config", "ra"]),
    ("admin", &["storage", "ca", "va", "config", "ra"]),
    (
        "server",
        &["storage", "ca", "va", "config", "ra", "wfe", "admin"],
    ),
    (
        "cli",
        &[
            "storage", "ca", "va", "config", "ra", "wfe", "admin", "server",
        ],
    ),
    (
        "fuzzing",
        &[
            "storage", "ca", "va", "config", "ra", "wfe", "admin", "server",
        ],
    ),
];

/// The roles that may use axum.
const HTTP_ROLES: &[&str] = &["wfe", "admin", "server", "cli", "fuzzing"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without comments and without `#[cfg(test)]` items (a `mod tests { … }` block or
/// a `mod tests;` declaration), brace-matched.
fn shipped_code(text: &str) -> String {
    let without_comments: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = without_comments.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find(['{', ';']) else {
            break;
        };
        if after.as_bytes()[open] == b';' {
            rest = &after[open + 1..];
            continue;
        }
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The crate's top-level modules that `code` names through `crate::`.
fn used_modules(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let after = &code[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a, b::c, …}`: every top-level path in the group.
            let body = &group[..group.find("};").unwrap_or(group.len())];
            let mut depth = 0;
            let mut start = true;
            for (j, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        used.insert(ident(&body[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            used.insert(ident(after));
        }
    }
    used
}

#[test]
fn roles_depend_only_on_the_roles_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let roles: BTreeMap<&str, &[&str]> = ROLES.iter().copied().collect();
    let mut breaches = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let module = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|m| m.trim_end_matches(".rs"))
            .expect("module name");
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if matches!(module, "lib" | "main" | "testutil") || name == "tests.rs" {
            continue;
        }
        let code = shipped_code(&std::fs::read_to_string(file).expect("read"));
        checked += 1;
        for used in used_modules(&code) {
            if used == module || !roles.contains_key(used.as_str()) {
                continue;
            }
            let allowed = roles
                .get(module)
                .is_some_and(|may| may.contains(&used.as_str()));
            if !allowed {
                breaches.push(format!("{} uses {used}", rel.display()));
            }
        }
        if code.contains("axum") && !HTTP_ROLES.contains(&module) {
            breaches.push(format!("{} uses axum", rel.display()));
        }
    }
    assert!(
        checked > 40,
        "only {checked} source files found under {}",
        src.display()
    );
    assert!(
        breaches.is_empty(),
        "dependencies against the role order:\n  {}",
        breaches.join("\n  ")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_paths_and_skips_tests_and_comments() {
    let code = shipped_code(
        "use crate::{ra::account, va, Error};\n\
         // crate::wfe in a comment\n\
         fn f() { crate::ca::issue(); }\n\
         #[cfg(test)]\nmod tests { use crate::server; fn g() { if x { y } } }\n\
         #[cfg(test)]\nmod more;\n\
         fn h() { crate::storage::x(); }",
    );
    let used = used_modules(&code);
    let want: BTreeSet<String> = ["ra", "va", "Error", "ca", "storage"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(used, want);
}
