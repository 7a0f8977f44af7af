//! docs/ARCHITECTURE.md is the code map: every crate has a paragraph, and the `mosaic-*`
//! crates each one depends on are among those its "May depend on" sentence names, so
//! dependencies keep pointing inward (rust-analyzer keeps the same check).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `mosaic-*` names in `text` (`mosaic-store-postgres` is one name, not `mosaic-store`).
fn crate_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mosaic-") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
            .collect();
        names.insert(name.trim_end_matches('-').to_owned());
        rest = &rest[at + "mosaic-".len()..];
    }
    names
}

/// Each section's folder (`crates/mosaic-engine`) and what it may depend on (`None`: the binary
/// that sees everything).
fn allowed_by_the_map() -> Vec<(String, Option<BTreeSet<String>>)> {
    let map = std::fs::read_to_string(repository_root().join("docs/ARCHITECTURE.md")).unwrap();
    let mut sections = Vec::new();
    for section in map.split("\n## ").skip(1) {
        let (heading, body) = section.split_once('\n').unwrap_or((section, ""));
        let folder = heading
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        let body = body.replace('\n', " ");
        let allowed = if let Some(start) = body.find("May depend on:") {
            let sentence = &body[start..];
            let end = sentence.find("Invariants").unwrap_or(sentence.len());
            Some(crate_names(&sentence[..end]))
        } else if body.contains("Depends on nothing of ours") {
            Some(BTreeSet::new())
        } else {
            None
        };
        sections.push((folder, allowed));
    }
    sections
}

/// The `mosaic-*` packages in a manifest's `[dependencies]` (not dev- or build-dependencies).
fn normal_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_dependencies = false;
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && let Some((name, _)) = line.split_once('=') {
            // `mosaic-domain.workspace = true` and `mosaic-domain = { … }` alike.
            let name = name.trim().split('.').next().unwrap_or_default();
            if name.starts_with("mosaic-") {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

fn workspace_members(root: &Path) -> Vec<String> {
    let mut members = Vec::new();
    for folder in ["crates", "bin"] {
        for entry in std::fs::read_dir(root.join(folder)).unwrap() {
            let entry = entry.unwrap();
            if entry.path().join("Cargo.toml").is_file() {
                members.push(format!("{folder}/{}", entry.file_name().to_string_lossy()));
            }
        }
    }
    members.sort();
    members
}

#[test]
fn every_crate_has_a_paragraph_and_depends_only_on_what_it_names() {
    let root = repository_root();
    let sections = allowed_by_the_map();
    let mut problems = Vec::new();
    for member in workspace_members(&root) {
        let Some((_, allowed)) = sections.iter().find(|(folder, _)| *folder == member) else {
            problems.push(format!(
                "{member}: no `## {member}` paragraph in docs/ARCHITECTURE.md"
            ));
            continue;
        };
        let Some(allowed) = allowed else {
            if member != "bin/mosaic-coordinator" {
                problems.push(format!(
                    "{member}: its paragraph has no \"May depend on:\" sentence"
                ));
            }
            continue;
        };
        let own = member.rsplit('/').next().unwrap_or_default();
        for dependency in normal_dependencies(&root.join(&member).join("Cargo.toml")) {
            if dependency != own && !allowed.contains(&dependency) {
                problems.push(format!(
                    "{member} depends on {dependency}, which its \"May depend on\" does not name"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn crate_names_are_read_whole() {
    let names =
        crate_names("May depend on: mosaic-domain, mosaic-store-postgres (x) and mosaic-store.");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["mosaic-domain", "mosaic-store", "mosaic-store-postgres"]
    );
}
