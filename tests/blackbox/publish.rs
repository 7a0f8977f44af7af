//! From an assigned issue to a pull request, with real git: a bare repository served over
//! smart HTTP by `git http-backend` (requiring the bot token), the mock Gitea whose repository
//! names it as `clone_url`, the built coordinator, and the sample agent working in the issue's
//! worktree. What the tests check is what a person would see: the branch on the remote with the
//! agent's commit, one pull request saying `Closes #n`, the status comment naming both.

use std::time::Duration;

use mosaic_domain::IssueState;
use mosaic_gitea::mock::MockGitea;
use mosaic_testkit::repo::git;

use crate::git_scenario::{Scenario, Setup, poll, subjects};

/// The sample agent runs a few quick steps, then `flags`.
fn setup<'a>(flags: &[&'a str], git_delay: Duration, min_free_bytes: u64) -> Setup<'a> {
    let mut agent_args = vec![
        "--steps",
        "3",
        "--tokens-per-step",
        "1000",
        "--start-tokens",
        "5000",
        "--step-delay-ms",
        "30",
    ];
    agent_args.extend_from_slice(flags);
    Setup {
        name: "app",
        agent_args,
        engine: "",
        extra: "",
        git_delay,
        min_free_bytes,
        agents: None,
    }
}

impl Scenario {
    async fn start_publishing(flags: &[&str]) -> Self {
        Self::start(setup(flags, Duration::ZERO, 1)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_issue_ends_in_one_pull_request_with_the_agents_commit() {
    let s = Scenario::start_publishing(&["--write-file", "NOTES.md", "--commit"]).await;
    let issue = s.issue("Add release notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;

    // The remote has the issue's branch with the agent's commit on top of main.
    let branches = s.remote_branches();
    let branch = format!("mosaic/{}-add-release-notes", issue.number);
    assert_eq!(
        branches.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(),
        [branch.as_str()]
    );
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Sample agent: work on the issue", "Initial commit"]
    );
    let notes = git(&s.remote, &["show", &format!("{branch}:NOTES.md")]).unwrap();
    assert!(notes.contains("Written by mosaic-sample-agent"), "{notes}");

    // Exactly one pull request, from the branch into main, closing the issue.
    s.wait_outbox_delivered(&issue).await;
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].head.name, branch);
    assert_eq!(pulls[0].base.name, "main");
    assert_eq!(pulls[0].title, "Add release notes");
    assert!(
        pulls[0]
            .body
            .starts_with(&format!("Closes #{}\n", issue.number)),
        "{}",
        pulls[0].body
    );
    assert!(
        pulls[0].body.contains("Completed 3 steps"),
        "{}",
        pulls[0].body
    );
    assert!(pulls[0].body.contains("1 session"), "{}", pulls[0].body);
    assert!(!pulls[0].body.contains(MockGitea::BOT_TOKEN));

    // The status comment links the pull request; the API shows it and the workspace.
    let status = s.status_comment(&issue);
    assert!(
        status.contains(&format!(
            "pull request [#{}]({}) `{branch}` → `main`",
            pulls[0].number, pulls[0].html_url
        )),
        "{status}"
    );
    assert!(!pulls[0].html_url.is_empty());
    assert_eq!(s.gitea.issue_labels(&issue), ["mosaic:done"]);
    let detail = s.api_issue(&issue).await;
    assert_eq!(detail["workspace"]["branch"], branch.as_str());
    assert_eq!(detail["workspace"]["base_branch"], "main");
    assert_eq!(
        detail["workspace"]["head_commit"],
        s.remote_branches()[0].1.as_str()
    );
    assert_eq!(detail["pull_request"]["head"], branch.as_str());
    assert_eq!(detail["pull_request"]["status"], "done");
    assert_eq!(detail["pull_request"]["number"], pulls[0].number);
    assert_eq!(detail["pull_request"]["url"], pulls[0].html_url.as_str());
    assert!(detail["workspace"]["removed_at"].is_null());

    // What the worktree holds shows in the API and, summed, in /metrics.
    assert!(
        detail["workspace_bytes"].as_u64().unwrap_or(0) > 0,
        "{detail}"
    );
    let mut metrics = String::new();
    let seen = poll(async || {
        metrics = s.metrics().await;
        let held = metrics.lines().any(|line| line == "mosaic_workspaces 1");
        let bytes = metrics.lines().any(|line| {
            line.strip_prefix("mosaic_workspace_bytes ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        });
        (held && bytes).then_some(())
    })
    .await;
    assert!(seen.is_some(), "{metrics}");

    // The session ran in the worktree, which goes when the issue is closed (the branch stays).
    let worktree = s.worktree(&issue);
    assert!(
        worktree.join("NOTES.md").is_file(),
        "{}",
        worktree.display()
    );
    s.gitea
        .set_issue_state(&issue, mosaic_gitea::IssueState::Closed);
    s.deliver(&issue, "closed").await;
    let gone = poll(async || (!worktree.exists()).then_some(())).await;
    if gone.is_none() {
        s.fail(&format!("{} still exists after close", worktree.display()));
    }
    assert_eq!(s.remote_branches().len(), 1, "the remote branch stays");
    // The record stays, saying when the worktree went.
    let detail = s.api_issue(&issue).await;
    assert_eq!(detail["workspace"]["branch"], branch.as_str());
    assert!(detail["workspace"]["removed_at"].is_string(), "{detail}");
    assert_eq!(detail["pull_request"]["number"], pulls[0].number);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_summary_reaches_the_pull_request_and_the_status_comment_only_redacted() {
    // The agent's summary quotes the bot token and the webhook secret and tries to colour the
    // text with escape sequences (`\u001b` in JSON: the ESC character once parsed).
    let summary = format!(
        "Wrote the notes with {} and {}. \\u001b[31mALERT\\u001b[0m \\u001b]0;title\\u0007done",
        MockGitea::BOT_TOKEN,
        crate::helpers::SECRET
    );
    let done =
        format!(r#"{{"type":"done","status":"success","summary":"{summary}","tokens":100}}"#);
    let script = format!("cat >/dev/null; printf 'notes\\n' > NOTES.md; printf '%s\\n' '{done}'");
    let s = Scenario::start(Setup {
        agents: Some(format!(
            "\n[runner.agents.glm]\nprogram = \"/bin/sh\"\nargs = [\"-c\", {}]\n",
            crate::helpers::toml_string(&script)
        )),
        ..setup(&[], Duration::ZERO, 1)
    })
    .await;
    let issue = s.issue("Write the notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;

    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let status = s.status_comment(&issue);
    let comments: Vec<String> = s
        .gitea
        .comments(&issue)
        .into_iter()
        .map(|c| c.body)
        .collect();
    for (what, text) in std::iter::once(("pull request", &pulls[0].body))
        .chain(std::iter::once(("status comment", &status)))
        .chain(comments.iter().map(|body| ("comment", body)))
    {
        assert!(!text.contains(MockGitea::BOT_TOKEN), "{what}: {text}");
        assert!(!text.contains(crate::helpers::SECRET), "{what}: {text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{what} carries a control character: {text:?}"
        );
    }
    // The summary did arrive, cleaned.
    for (what, text) in [
        ("pull request", &pulls[0].body),
        ("status comment", &status),
    ] {
        assert!(
            text.contains("Wrote the notes with [redacted] and [redacted]."),
            "{what}: {text}"
        );
        assert!(text.contains("ALERT"), "{what}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_changes_nothing_ends_in_no_changes_without_a_pull_request() {
    let s = Scenario::start_publishing(&[]).await;
    let issue = s.issue("Look at the logs");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::NoChanges).await;
    s.wait_outbox_delivered(&issue).await;
    assert!(s.pull_requests().is_empty());
    assert!(s.remote_branches().is_empty(), "nothing pushed");
    assert_eq!(s.gitea.issue_labels(&issue), ["mosaic:no-changes"]);
    let status = s.status_comment(&issue);
    assert!(status.contains("No changes"), "{status}");
    assert!(
        s.gitea
            .comments(&issue)
            .iter()
            .any(|c| c.body.contains("no pull request was opened")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_with_no_changes_stays_so_until_an_explicit_trigger() {
    let s = Scenario::start_publishing(&[]).await;
    let issue = s.issue("Look at the logs");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::NoChanges).await;
    s.wait_outbox_delivered(&issue).await;
    let comments = s.gitea.comments(&issue).len();

    // A person joins as co-assignee, edits the text, labels the issue, and Gitea repeats
    // "opened": none of it is an explicit trigger.
    s.gitea
        .set_assignees(&issue, &[MockGitea::BOT_LOGIN, "alice"]);
    s.deliver(&issue, "assigned").await;
    s.gitea.set_body(
        &issue,
        &format!("{}\nThe logs are in /var/log.\n", crate::git_scenario::BODY),
    );
    s.deliver(&issue, "edited").await;
    s.gitea.add_issue_label(&issue, "bug");
    s.deliver(&issue, "label_updated").await;
    s.deliver(&issue, "opened").await;
    let handled = poll(async || {
        let rows = s.store.recent_deliveries(None, 100).await.unwrap();
        rows.iter()
            .all(|row| row.status != mosaic_store::DeliveryStatus::Pending)
            .then_some(())
    })
    .await;
    if handled.is_none() {
        s.fail("the deliveries were not handled");
    }
    // Long enough for the dispatcher (every 100 ms) to start a session if it were to.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(s.state(&issue).await, Some(IssueState::NoChanges));
    assert_eq!(
        s.store.sessions_for_issue(&issue).await.unwrap().len(),
        1,
        "no second session"
    );
    s.wait_outbox_delivered(&issue).await;
    assert_eq!(
        s.gitea.comments(&issue).len(),
        comments,
        "no second comment"
    );

    // Closed and reopened: an explicit trigger, so the issue runs again.
    s.gitea
        .set_issue_state(&issue, mosaic_gitea::IssueState::Closed);
    s.deliver(&issue, "closed").await;
    s.gitea
        .set_issue_state(&issue, mosaic_gitea::IssueState::Open);
    s.deliver(&issue, "reopened").await;
    let again = poll(async || {
        let sessions = s.store.sessions_for_issue(&issue).await.unwrap().len();
        (sessions == 2 && s.state(&issue).await == Some(IssueState::NoChanges)).then_some(())
    })
    .await;
    if again.is_none() {
        s.fail("the reopened issue did not run again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_the_agent_left_uncommitted_are_committed_by_the_bot_and_published() {
    let s = Scenario::start_publishing(&["--write-file", "docs/left.md"]).await;
    let issue = s.issue("Write the docs");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    let branch = format!("mosaic/{}-write-the-docs", issue.number);
    assert_eq!(
        subjects(&s.remote, &branch),
        [
            "Commit changes the agent left uncommitted",
            "Initial commit"
        ]
    );
    let author = git(&s.remote, &["log", "-1", "--format=%an <%ae>", &branch]).unwrap();
    assert_eq!(author, "Mosaic Coordinator <mosaic-coordinator@localhost>");
    assert!(
        git(&s.remote, &["show", &format!("{branch}:docs/left.md")])
            .unwrap()
            .contains("Written by")
    );
    s.wait_outbox_delivered(&issue).await;
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0].head.name, branch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_assignment_continues_the_branch_and_updates_the_same_pull_request() {
    let s = Scenario::start_publishing(&["--write-file", "NOTES.md", "--commit"]).await;
    let issue = s.issue("Add release notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;
    let first = s.remote_branches();

    // Unassigned and assigned again: the issue runs again on the same branch.
    s.gitea.set_assignees(&issue, &[]);
    s.deliver(&issue, "unassigned").await;
    s.gitea.set_assignees(&issue, &[MockGitea::BOT_LOGIN]);
    s.deliver(&issue, "assigned").await;
    let again = poll(async || {
        let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
        (sessions.len() == 2 && s.state(&issue).await == Some(IssueState::Completed)).then_some(())
    })
    .await;
    if again.is_none() {
        s.fail("the second assignment did not complete");
    }
    s.wait_outbox_delivered(&issue).await;
    let second = s.remote_branches();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].0, first[0].0, "same branch");
    assert_ne!(second[0].1, first[0].1, "a new commit on it");
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert!(pulls[0].body.contains("2 sessions"), "{}", pulls[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_publishing_ends_in_one_pull_request_without_running_the_agent_again() {
    // Every git request takes 400 ms, so publishing (leftovers, push) is long enough to be
    // caught: the agent's success is stored while the issue is still in progress.
    let s = Scenario::start(setup(
        &["--write-file", "NOTES.md", "--commit"],
        Duration::from_millis(400),
        1,
    ))
    .await;
    let issue = s.issue("Add release notes");
    s.deliver(&issue, "assigned").await;
    let publishing = poll(async || {
        let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
        let succeeded = sessions
            .iter()
            .any(|session| session.outcome == Some(mosaic_store::SessionOutcome::Succeeded));
        (succeeded && s.state(&issue).await == Some(IssueState::InProgress)).then_some(())
    })
    .await;
    if publishing.is_none() {
        s.fail("the publishing stage was never seen");
    }
    assert!(
        s.pull_requests().is_empty(),
        "killed before the pull request"
    );
    let s = s.crash_and_restart().await;

    s.wait_for_state(&issue, IssueState::Completed).await;
    s.wait_outbox_delivered(&issue).await;
    let sessions = s.store.sessions_for_issue(&issue).await.unwrap();
    assert_eq!(
        sessions.len(),
        1,
        "the agent did not run again: {sessions:#?}"
    );
    let pulls = s.pull_requests();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let branch = format!("mosaic/{}-add-release-notes", issue.number);
    assert_eq!(pulls[0].head.name, branch);
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Sample agent: work on the issue", "Initial commit"]
    );
    assert!(s.app.log().contains("publishing now"));
    // The restarted process knows the workspace from the store and links the pull request.
    let detail = s.api_issue(&issue).await;
    assert_eq!(detail["workspace"]["branch"], branch.as_str());
    assert_eq!(detail["pull_request"]["number"], pulls[0].number);
    let status = s.status_comment(&issue);
    assert!(
        status.contains(&format!("pull request [#{}](", pulls[0].number)),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_issue_is_dispatched_while_the_workspace_root_lacks_free_space() {
    // More free bytes than any disk has: the issue is queued and waits.
    let s = Scenario::start(setup(&["--commit"], Duration::ZERO, u64::MAX / 2)).await;
    let issue = s.issue("Add release notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Ready).await;
    let logged = poll(async || s.app.log().contains("too little free space").then_some(())).await;
    if logged.is_none() {
        s.fail("the lack of space was not logged");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.state(&issue).await, Some(IssueState::Ready));
    assert!(s.store.sessions_for_issue(&issue).await.unwrap().is_empty());
    assert!(s.remote_branches().is_empty());
    // /health says why (degraded, intake goes on); /metrics shows the free space.
    let health: serde_json::Value = s
        .app
        .client
        .get(s.app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    let workspaces = &health["components"]["workspaces"];
    assert_eq!(workspaces["status"], "down", "{health}");
    assert!(
        workspaces
            .to_string()
            .contains("below workspace.min_free_bytes"),
        "{health}"
    );
    let mut metrics = String::new();
    let seen = poll(async || {
        metrics = s.metrics().await;
        metrics
            .lines()
            .any(|line| {
                line.starts_with("mosaic_workspace_free_bytes ")
                    && !line.ends_with(" 0")
                    && !line.ends_with(" -1")
            })
            .then_some(())
    })
    .await;
    assert!(seen.is_some(), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_session_hands_over_the_workspace_state_and_the_next_one_publishes() {
    let prompts = tempfile::tempdir().unwrap();
    let log = prompts.path().join("prompts.txt");
    let log_arg = log.display().to_string();
    // A burst at step 2 takes the context past 80% of the window; these agents cannot compact,
    // so the session is rotated and the next one resumes after the burst.
    let s = Scenario::start_publishing(&[
        "--burst-at-step",
        "2",
        "--burst-tokens",
        "160000",
        "--write-file",
        "NOTES.md",
        "--commit",
        "--prompt-log",
        &log_arg,
    ])
    .await;
    let issue = s.issue("Write the notes");
    s.deliver(&issue, "assigned").await;
    s.wait_for_state(&issue, IssueState::Completed).await;

    let told = std::fs::read_to_string(&log).unwrap();
    let sessions: Vec<&str> = told
        .split("\n----\n")
        .filter(|p| !p.trim().is_empty())
        .collect();
    assert_eq!(sessions.len(), 2, "one rotation: {told}");
    let branch = format!("mosaic/{}-write-the-notes", issue.number);
    assert!(
        !sessions[0].contains("Workspace: branch"),
        "the first session has no hand-over: {}",
        sessions[0]
    );
    assert!(
        sessions[1].contains(&format!("Workspace: branch `{branch}`")),
        "the second session is told the workspace's state: {}",
        sessions[1]
    );
    // The second session worked in the same worktree and its work was published.
    s.wait_outbox_delivered(&issue).await;
    assert_eq!(
        subjects(&s.remote, &branch),
        ["Sample agent: work on the issue", "Initial commit"]
    );
    assert_eq!(s.pull_requests().len(), 1);
}

/// Every process's command line and, for sample agents, environment, as text.
fn processes_now() -> Vec<(u32, String, Option<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let environ = cmdline
                .contains("sample-agent")
                .then(|| std::fs::read(format!("/proc/{pid}/environ")).ok())
                .flatten()
                .map(|env| String::from_utf8_lossy(&env).replace('\0', "\n"));
            Some((pid, cmdline, environ))
        })
        .collect()
}

/// Files under `root` whose bytes contain `needle`.
fn files_containing(root: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => {
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    if bytes
                        .windows(needle.len())
                        .any(|window| window == needle.as_bytes())
                    {
                        found.push(path);
                    }
                }
                _ => {}
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issues_of_one_repository_publish_at_once_and_the_token_shows_nowhere() {
    // Each git request takes 150 ms, so clones, fetches and pushes are alive long enough for
    // their command lines to be read while they run.
    let s = Scenario::start(setup(
        &["--write-file", "NOTES.md", "--commit"],
        Duration::from_millis(150),
        1,
    ))
    .await;
    let first = s.issue("Add release notes");
    let second = s.issue("Fix the changelog");
    s.deliver(&first, "assigned").await;
    s.deliver(&second, "assigned").await;

    // Watch every process while both attempts run: no command line carries the token, and no
    // agent's environment does.
    let token = MockGitea::BOT_TOKEN;
    let mut agents_seen = std::collections::BTreeSet::new();
    let mut git_seen = 0usize;
    let mut both_running = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for (pid, cmdline, environ) in processes_now() {
            assert!(
                !cmdline.contains(token),
                "process {pid} has the token in its argv: {cmdline}"
            );
            if cmdline.starts_with("git ") || cmdline.contains("/git ") {
                git_seen += 1;
            }
            if let Some(environ) = environ {
                agents_seen.insert(pid);
                assert!(
                    !environ.contains(token),
                    "agent {pid} has the token in its environment"
                );
                assert!(
                    !environ.contains("GIT_CONFIG_VALUE"),
                    "agent {pid} got git's credential configuration"
                );
            }
        }
        let states = (s.state(&first).await, s.state(&second).await);
        both_running |= states == (Some(IssueState::InProgress), Some(IssueState::InProgress));
        if states == (Some(IssueState::Completed), Some(IssueState::Completed)) {
            break;
        }
        if std::time::Instant::now() > deadline {
            s.fail(&format!("both issues did not complete: {states:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(both_running, "the two attempts overlapped");
    assert!(!agents_seen.is_empty(), "agent processes were watched");
    assert!(git_seen > 0, "git processes were watched");

    // Two worktrees on two branches, two pull requests, no lock trouble.
    s.wait_outbox_delivered(&first).await;
    s.wait_outbox_delivered(&second).await;
    let (one, two) = (s.worktree(&first), s.worktree(&second));
    assert!(one.join("NOTES.md").is_file() && two.join("NOTES.md").is_file());
    assert_eq!(s.pull_requests().len(), 2, "{:#?}", s.pull_requests());
    assert_eq!(s.remote_branches().len(), 2);
    let log = s.app.log();
    assert!(!log.contains(".lock"), "no git lock errors:\n{log}");

    // Nothing on disk or in the log holds the token: no .git/config, no mirror config.
    let workspaces = s.app.data.path().join("workspaces");
    assert_eq!(
        files_containing(&workspaces, token),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(!log.contains(token), "the log shows the token");

    // Closing both removes both worktrees; git's own list is clean again.
    for issue in [&first, &second] {
        s.gitea
            .set_issue_state(issue, mosaic_gitea::IssueState::Closed);
        s.deliver(issue, "closed").await;
    }
    let gone = poll(async || (!one.exists() && !two.exists()).then_some(())).await;
    if gone.is_none() {
        s.fail("the worktrees still exist after close");
    }
    let mirrors = s.app.data.path().join("workspaces/mirrors");
    let mirror = std::fs::read_dir(mirrors.join("e2e"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .next()
        .unwrap();
    let listed = git(&mirror, &["worktree", "list", "--porcelain"]).unwrap();
    assert_eq!(
        listed.matches("worktree ").count(),
        1,
        "only the mirror: {listed}"
    );
    assert_eq!(s.remote_branches().len(), 2, "the remote branches stay");
}
