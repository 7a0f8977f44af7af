//! The repository stands on its own: a fresh clone has nothing beside it, so no file may read
//! or point to a path outside the repository, and every file a test includes must be inside it.

use std::path::{Component, Path, PathBuf};

fn repository_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap().canonicalize().unwrap()
}

/// Every file of the repository that a person or the compiler reads (build output, caches and
/// git's own folder excluded).
fn repository_files(root: &Path) -> Vec<PathBuf> {
    const SKIPPED: &[&str] = &["target", ".git", ".cache", "node_modules"];
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                if !SKIPPED.iter().any(|s| name == *s) {
                    folders.push(path);
                }
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `a/b/../c` → `a/c`, without touching the file system (the target may not exist).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The literal paths of `include_bytes!`/`include_str!` calls in Rust source.
fn included_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    // Spelled in pieces so this file's own source does not match.
    for macro_name in [concat!("include_bytes", "!("), concat!("include_str", "!(")] {
        let mut rest = source;
        while let Some(at) = rest.find(macro_name) {
            rest = &rest[at + macro_name.len()..];
            let trimmed = rest.trim_start();
            if let Some(literal) = trimmed.strip_prefix('"')
                && let Some(end) = literal.find('"')
            {
                paths.push(literal[..end].to_owned());
            }
        }
    }
    paths
}

#[test]
fn every_included_file_lies_inside_the_repository_and_exists() {
    let root = repository_root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in repository_files(&root) {
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        for included in included_paths(&source) {
            checked += 1;
            let target = normalise(&file.parent().unwrap().join(&included));
            let shown = file.strip_prefix(&root).unwrap().display();
            if !target.starts_with(&root) {
                problems.push(format!(
                    "{shown}: includes {included}, outside the repository"
                ));
            } else if !target.is_file() {
                problems.push(format!(
                    "{shown}: includes {included}, which does not exist"
                ));
            }
        }
    }
    assert!(
        checked > 10,
        "found only {checked} includes: is the walk broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_file_points_to_the_folder_beside_the_repository() {
    let root = repository_root();
    // Spelled in two pieces so this file does not match itself.
    let sibling = format!("../{}", "shared");
    let mut problems = Vec::new();
    for file in repository_files(&root) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // binary files name no path
        };
        for (number, line) in text.lines().enumerate() {
            if line.contains(&sibling) {
                let shown = file.strip_prefix(&root).unwrap().display();
                problems.push(format!("{shown}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_design_page_is_in_the_repository_and_what_names_it_can_find_it() {
    let root = repository_root();
    let design = std::fs::read_to_string(root.join("docs/DESIGN.md")).unwrap();
    assert!(design.contains("## The path of one event"));
    assert!(design.contains("## Invariants"));
    let architecture = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    assert!(
        architecture.contains("(DESIGN.md)"),
        "docs/ARCHITECTURE.md should link docs/DESIGN.md"
    );
}
