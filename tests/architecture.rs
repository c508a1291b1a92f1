//! The crate's parts depend on each other one way only (see `src/lib.rs`): the overlay core
//! knows nothing of FUSE or images, the image side nothing of mounts. This parses every source
//! file (syn), expands its `use` trees and makes every `crate::`, `super::` and `self::` path
//! absolute, and fails naming the file and the path that crosses a boundary.

use std::path::{Path, PathBuf};

/// Part -> the parts it may reference through `crate::`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("confined", &[]),
    ("exposition", &[]),
    ("stack", &["stack", "confined"]),
    ("overlay", &["overlay", "stack", "confined"]),
    (
        "mount",
        &["mount", "overlay", "stack", "confined", "exposition"],
    ),
    ("image", &["image", "stack", "confined"]),
    (
        "snapshotter",
        &["snapshotter", "image", "stack", "confined", "exposition"],
    ),
    (
        "cli",
        &[
            "cli",
            "mount",
            "overlay",
            "stack",
            "confined",
            "image",
            "snapshotter",
            "exposition",
        ],
    ),
];

/// Items of `lib.rs` every part may use: test-only helpers (`#[cfg(test)]`), not a part.
const TEST_ITEMS: &[&str] = &["test_cases", "all_under"];

/// External crates a part must not use.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("confined", &["fuser", "ureq", "tar", "flate2", "zstd"]),
    ("stack", &["fuser", "ureq", "tar", "flate2", "zstd"]),
    ("overlay", &["fuser", "ureq", "tar", "flate2", "zstd"]),
    ("image", &["fuser"]),
    ("snapshotter", &["fuser"]),
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn part_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// The module a source file is: `src/mount/session/mod.rs` is `mount::session`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// Every path a file names, as the parser reads it (`use` trees expanded, grouped ones too,
/// and paths in code and types), made absolute where it starts with `crate`, `super` or
/// `self`: `(absolute, segments)`; a path that starts elsewhere (an external crate, a local
/// name) is kept as written with `absolute` false.
struct Refs {
    module: Vec<String>,
    found: Vec<(bool, Vec<String>)>,
}

impl Refs {
    fn resolve(&mut self, segs: Vec<String>) {
        let mut base = self.module.clone();
        let mut rest = segs.as_slice();
        let absolute = match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
                true
            }
            Some("self") => {
                rest = &rest[1..];
                true
            }
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
                true
            }
            _ => false,
        };
        if absolute {
            base.extend(rest.iter().cloned());
            self.found.push((true, base));
        } else {
            self.found.push((false, segs));
        }
    }

    /// `crate::a::b`, `super::a` … inside a token stream (a macro's arguments).
    fn tokens(&mut self, ts: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree as T;
        let toks: Vec<T> = ts.into_iter().collect();
        let sep = |i: usize| {
            matches!((toks.get(i), toks.get(i + 1)), (Some(T::Punct(a)), Some(T::Punct(b)))
                if a.as_char() == ':' && b.as_char() == ':')
        };
        let mut i = 0;
        while i < toks.len() {
            match &toks[i] {
                T::Group(g) => self.tokens(g.stream()),
                T::Ident(id) if ["crate", "super", "self"].contains(&id.to_string().as_str()) => {
                    let mut segs = vec![id.to_string()];
                    while sep(i + 1) {
                        match toks.get(i + 3) {
                            Some(T::Ident(next)) => {
                                segs.push(next.to_string());
                                i += 3;
                            }
                            _ => break,
                        }
                    }
                    if segs.len() > 1 {
                        self.resolve(segs);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn expand(&mut self, tree: &syn::UseTree, mut prefix: Vec<String>) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.expand(&p.tree, prefix);
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.resolve(prefix);
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.resolve(prefix);
            }
            syn::UseTree::Glob(_) => self.resolve(prefix),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.expand(t, prefix.clone());
                }
            }
        }
    }
}

impl<'ast> syn::visit::Visit<'ast> for Refs {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.expand(&u.tree, Vec::new());
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.segments.len() > 1 {
            self.resolve(p.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // A macro's arguments are tokens, not parsed code: read paths out of them too.
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        // An inline module (`mod tests { … }`) is a module below the file's.
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }
}

/// The paths the code of `file` (module `module`) names.
fn refs_of(code: &str, module: Vec<String>) -> Vec<(bool, Vec<String>)> {
    let ast = syn::parse_file(code).expect("the source parses");
    let mut r = Refs {
        module,
        found: Vec::new(),
    };
    syn::visit::Visit::visit_file(&mut r, &ast);
    r.found
}

#[test]
fn grouped_imports_and_relative_paths_are_read() {
    let parts = |c: &str, m: &[&str]| -> Vec<String> {
        refs_of(c, m.iter().map(|s| s.to_string()).collect())
            .into_iter()
            .filter(|(abs, _)| *abs)
            .map(|(_, p)| p.join("::"))
            .collect()
    };
    assert_eq!(
        parts("use crate::overlay::Overlay;", &["x"]),
        vec!["overlay::Overlay"]
    );
    assert_eq!(
        parts("use crate::{mount::wire, overlay::{a, b}, image};", &["x"]),
        vec!["mount::wire", "overlay::a", "overlay::b", "image"]
    );
    assert_eq!(
        parts(
            "use super::{devfuse, session::Session};",
            &["mount", "uring"]
        ),
        vec!["mount::devfuse", "mount::session::Session"]
    );
    assert_eq!(
        parts(
            "fn f() { crate::mount::run(); let x: super::super::image::Repo; }",
            &["a", "b"]
        ),
        vec!["mount::run", "image::Repo"]
    );
    assert_eq!(
        parts(
            "fn f() { tracing::info!(\"{}\", crate::mount::X); }",
            &["a"]
        ),
        vec!["mount::X"]
    );
    assert_eq!(
        parts(
            "mod tests { use super::*; fn t() { super::f(); } }",
            &["stack", "layer"]
        ),
        vec!["stack::layer", "stack::layer::f"]
    );
}

#[test]
fn parts_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    assert!(
        all.len() > 30,
        "expected the source tree under {}",
        src.display()
    );
    let parts: Vec<&str> = ALLOWED.iter().map(|(p, _)| *p).collect();
    let mut bad = Vec::new();
    for f in &all {
        let Some(part) = part_of(&src, f) else {
            continue;
        };
        let Some((_, allowed)) = ALLOWED.iter().find(|(p, _)| *p == part) else {
            continue; // lib.rs, main.rs
        };
        let forbidden = FORBIDDEN_CRATES
            .iter()
            .find(|(p, _)| *p == part)
            .map_or(&[][..], |(_, c)| *c);
        let code = std::fs::read_to_string(f).unwrap();
        for (absolute, path) in refs_of(&code, module_of(&src, f)) {
            let first = path.first().map(String::as_str).unwrap_or_default();
            if absolute {
                if parts.contains(&first)
                    && first != part
                    && !allowed.contains(&first)
                    && !TEST_ITEMS.contains(&first)
                {
                    bad.push(format!(
                        "{}: {part} uses crate::{}",
                        f.display(),
                        path.join("::")
                    ));
                }
            } else if forbidden.contains(&first) {
                bad.push(format!(
                    "{}: {part} uses the crate {}",
                    f.display(),
                    path.join("::")
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    assert!(bad.is_empty(), "boundary crossed:\n{}", bad.join("\n"));
}

/// Inside `mount/`: the two transports only move bytes into one session, so neither names the
/// other, and the session names neither (only `run.rs`, which starts them, and the test that
/// frames every opcode both ways know both). Any mention in code counts, grouped `use` lists
/// and `super::` paths included.
#[test]
fn transports_and_session_stay_apart() {
    let mount = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/mount");
    let rules: &[(&str, &[&str])] = &[
        ("uring", &["devfuse"]),
        ("devfuse.rs", &["uring"]),
        ("session", &["devfuse", "uring"]),
        ("wire", &["devfuse", "uring", "session"]),
    ];
    let mut bad = Vec::new();
    let mut seen = 0;
    for (part, banned) in rules {
        let p = mount.join(part);
        let mut all = Vec::new();
        if p.is_dir() {
            files(&p, &mut all);
        } else {
            all.push(p.clone());
        }
        assert!(
            !all.is_empty() && all[0].exists(),
            "{} missing",
            p.display()
        );
        for f in all {
            seen += 1;
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for b in *banned {
                    let word = code
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|w| w == *b);
                    if word {
                        bad.push(format!("{}:{}: names {b}", f.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(seen >= 8, "only {seen} files under {}", mount.display());
    assert!(bad.is_empty(), "transports crossed:\n{}", bad.join("\n"));
}
