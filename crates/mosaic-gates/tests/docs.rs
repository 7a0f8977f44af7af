#![allow(clippy::unwrap_used, clippy::expect_used)]
//! docs/GATES.md's examples are valid configuration, and their coverage regexes read the figure
//! from the output the tools really print.

use std::ffi::OsString;
use std::path::Path;

use mosaic_gates::{Gate, GateOutcome, GatesConfig, run_gates};
use mosaic_security::Redactor;

fn toml_blocks() -> Vec<String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/GATES.md"))
            .unwrap();
    let mut blocks = Vec::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let end = body.find("\n```").unwrap();
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    blocks
}

fn documented_gates() -> Vec<Gate> {
    toml_blocks()
        .iter()
        .flat_map(|block| {
            GatesConfig::from_toml(block)
                .unwrap_or_else(|err| panic!("{err}\n{block}"))
                .gates
        })
        .collect()
}

#[test]
fn every_example_is_valid() {
    let blocks = toml_blocks();
    assert!(blocks.len() >= 6, "{} blocks", blocks.len());
    assert!(documented_gates().len() >= 10);
}

/// Runs the documented gate's regex over `sample` (printed by `printf`) and returns the figure.
async fn figure_read(command_head: &str, sample: &str) -> f64 {
    let gates = documented_gates();
    let documented = gates
        .iter()
        .find(|gate| gate.is_coverage() && gate.command.join(" ").starts_with(command_head))
        .unwrap_or_else(|| panic!("no coverage gate running {command_head}"));
    let mut gate = Gate::new("sample", ["printf", "%s\n", sample]);
    gate.percent_regex = documented.percent_regex.clone();
    gate.min_percent = Some(0.0);
    let dir = tempfile::tempdir().unwrap();
    let env = vec![(
        OsString::from("PATH"),
        std::env::var_os("PATH").unwrap_or_default(),
    )];
    let results = run_gates(dir.path(), &[&gate], &Redactor::default(), &env, 4000).await;
    assert_eq!(results[0].outcome, GateOutcome::Passed, "{sample}");
    results[0].coverage_percent.unwrap()
}

#[tokio::test]
async fn the_documented_regexes_read_each_tools_summary() {
    let llvm_cov = "Filename   Regions    Missed Regions     Cover   Functions  Missed Functions  Executed       Lines      Missed Lines     Cover    Branches   Missed Branches     Cover\n\
                    src/lib.rs      100                 8    92.00%          10                 1    90.00%         200                20    90.00%           0                 0         -\n\
                    TOTAL          1234               100    91.90%         150                10    93.33%        2000               150    92.50%           0                 0         -";
    assert_eq!(figure_read("cargo llvm-cov", llvm_cov).await, 92.5);
    let tarpaulin = "|| src/lib.rs: 12/14\n85.71% coverage, 12/14 lines covered";
    assert_eq!(figure_read("cargo tarpaulin", tarpaulin).await, 85.71);
    let jest = "----------|---------|----------|---------|---------|\n\
                File      | % Stmts | % Branch | % Funcs | % Lines |\n\
                All files |    91.2 |     80.5 |    88.1 |    90.7 |\n\
                 index.js |    91.2 |     80.5 |    88.1 |    90.7 |";
    assert_eq!(figure_read("npm test", jest).await, 90.7);
    let pytest = "Name          Stmts   Miss  Cover\nsrc/app.py      100     20    80%\nTOTAL          1200    336    72%";
    assert_eq!(figure_read("python -m pytest", pytest).await, 72.0);
    let pytest_branches =
        "Name   Stmts   Miss Branch BrPart  Cover\nTOTAL   1200    336    400     20    70%";
    assert_eq!(figure_read("python -m pytest", pytest_branches).await, 70.0);
}
