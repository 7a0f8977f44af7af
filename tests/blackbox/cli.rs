//! The command line as an operator meets it: configuration errors and check-config.

use crate::helpers::{SECRET, coordinator, run};

#[test]
fn bad_port_exits_78_naming_port() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        &["serve"],
        &[("PORT", "abc"), ("GITEA_WEBHOOK_SECRET", SECRET)],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PORT"), "{stderr}");
    assert!(stderr.contains("`abc` is not a TCP port"), "{stderr}");
}

#[test]
fn every_bad_configuration_exits_78_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.toml"), "[server]\nport = \n").unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            &["serve"],
            &[("PORT", "70000"), ("GITEA_WEBHOOK_SECRET", SECRET)],
            "server.port",
        ),
        (
            &["serve"],
            &[("LOG_LEVEL", "loud"), ("GITEA_WEBHOOK_SECRET", SECRET)],
            "log.level",
        ),
        (&["serve"], &[], "GITEA_WEBHOOK_SECRET"),
        (
            &["--config", "missing.toml", "serve"],
            &[("GITEA_WEBHOOK_SECRET", SECRET)],
            "cannot read configuration file",
        ),
        (
            &["--config", "broken.toml", "serve"],
            &[("GITEA_WEBHOOK_SECRET", SECRET)],
            "line 2",
        ),
    ];
    for (args, env, expect) in cases {
        let output = run(args, env, dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(expect),
            "{args:?} {env:?}: {stderr:?} lacks {expect:?}"
        );
    }
}

#[test]
fn check_config_never_shows_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        &["check-config"],
        &[
            ("GITEA_WEBHOOK_SECRET", "webhook-secret-value-123"),
            ("MOSAIC_API_TOKEN", "api-token-value-456"),
            ("PORT", "9123"),
        ],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for shown in [&stdout, &stderr] {
        assert!(!shown.contains("webhook-secret-value-123"), "{shown}");
        assert!(!shown.contains("api-token-value-456"), "{shown}");
    }
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(
        stdout.contains("port = 9123  # `PORT` environment variable"),
        "{stdout}"
    );
}

#[test]
fn check_config_fails_with_78_on_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["check-config"], &[("PORT", "abc")], dir.path());
    assert_eq!(output.status.code(), Some(78));
}

#[test]
fn credentials_in_the_gitea_url_are_refused_without_being_shown() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["serve", "check-config"] {
        let output = run(
            &[command],
            &[
                ("GITEA_WEBHOOK_SECRET", SECRET),
                ("GITEA_URL", "http://mosaic-bot:pass-word-789@127.0.0.1:9/"),
            ],
            dir.path(),
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{command}: {stderr}");
        assert!(stderr.contains("gitea.url"), "{command}: {stderr}");
        assert!(stderr.contains("GITEA_BOT_TOKEN"), "{command}: {stderr}");
        for shown in [&stdout, &stderr] {
            assert!(!shown.contains("pass-word-789"), "{command}: {shown}");
        }
    }
}

#[test]
fn the_demo_ends_in_pull_requests_with_one_issue_sent_back_by_its_gate() {
    let output = coordinator()
        .arg("demo")
        .env("LOG_LEVEL", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row = |issue: &str| {
        stdout
            .lines()
            .find(|line| {
                line.starts_with(issue) && line.trim_end().ends_with(|c: char| c.is_alphabetic())
            })
            .unwrap_or_else(|| panic!("no summary row for {issue}:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // issue, agent, estimate, tokens, compactions, rotations, sent back, outcome
    assert_eq!(row("demo/app#1")[7], "completed", "{stdout}");
    assert_eq!(row("demo/app#2")[7], "completed", "{stdout}");
    assert_eq!(row("demo/app#3")[7], "rejected", "{stdout}");
    let rotated = row("demo/app#4");
    assert_eq!(rotated[7], "completed", "{stdout}");
    assert_ne!(rotated[5], "0", "rotated: {stdout}");
    assert_eq!(rotated[6], "1", "sent back once by the gate: {stdout}");
    // A pull request per completed issue, each commit's gate status a success.
    let pulls: Vec<&str> = stdout
        .lines()
        .skip_while(|line| !line.starts_with("Pull requests in the mock Gitea:"))
        .skip(1)
        .take_while(|line| line.starts_with("  demo/app#"))
        .collect();
    assert_eq!(pulls.len(), 3, "{stdout}");
    for line in pulls {
        assert!(line.contains(" #"), "{line}");
        assert!(line.contains("[mosaic/test success]"), "{line}");
    }
    assert!(
        stdout.contains("pull request [#"),
        "the status links it:\n{stdout}"
    );
}
