//! `demo`: a whole scenario with nothing else installed — the coordinator on a free port with a
//! temporary store, a built-in mock Gitea, a real git repository it serves over smart HTTP, and
//! the built-in sample agent as agent processes that edit and commit in their worktrees.
//!
//! Signed deliveries are replayed for four issues: one blocked by another, one too large for any
//! agent, and one whose agent runs out of context and is rotated. Progress is printed as it
//! happens; at the end a summary table and the pull request each completed issue got (branch,
//! pushed commit).

// The demo talks to the person running it: printing is its purpose.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_gitea::mock::{GitHttpServer, MockGitea, NewIssue};
use mosaic_runner::{AgentCommand, InputMode, RunnerConfig};
use mosaic_security::{Secret, sign_hex};
use mosaic_store::Store;
use mosaic_store_sqlite::SqliteStore;
use tokio::net::TcpListener;

use crate::Failure;
use crate::config::Config;

const SECRET: &str = "demo-webhook-secret";
/// The whole scenario takes well under a minute; past this something is wrong.
const DEADLINE: Duration = Duration::from_secs(180);

/// One issue of the scenario.
struct Scenario {
    title: &'static str,
    body: &'static str,
}

const ISSUES: [Scenario; 4] = [
    Scenario {
        title: "Context monitor for agent sessions",
        body: "## Context Estimate\n- Files to modify: 3\n- Implementation complexity: medium (20,000 tokens)\n- Test requirements: medium (10,000 tokens)\n- Documentation: medium (3,000 tokens)\n- **Total estimated: 46,800 tokens**\n- Recommended agent: glm\n\n## Difficulty\nmedium\n\n## Dependencies\nNone\n",
    },
    Scenario {
        title: "Dashboard for the monitor",
        body: "## Context Estimate\n- Total estimated: 20,000 tokens\n\n## Difficulty\neasy\n\n## Dependencies\n- Blocked by: #1\n",
    },
    Scenario {
        title: "Rewrite the whole tracker",
        body: "## Context Estimate\n- Total estimated: 450,000 tokens\n\n## Difficulty\nhard\n\n## Dependencies\nNone\n",
    },
    Scenario {
        title: "Large refactor of the session runner",
        body: "## Context Estimate\n- Total estimated: 90,000 tokens\n- Recommended agent: sonnet\n\n## Difficulty\nmedium\n\n## Dependencies\nNone\n",
    },
];

/// The sample agent as every agent profile's command: the coordinator's own binary.
/// Each agent leaves `files` in its worktree (sample-agent flags) and commits them; the
/// coordinator pushes.
fn agent_command(args: &[&str], files: &[&str], can_compact: bool) -> anyhow::Result<AgentCommand> {
    let exe = std::env::current_exe().context("cannot find the coordinator's own executable")?;
    let mut all = vec![crate::SAMPLE_AGENT_COMMAND.to_owned()];
    all.extend(args.iter().chain(files).map(|a| (*a).to_owned()));
    all.push("--commit".to_owned());
    Ok(AgentCommand {
        program: exe.display().to_string(),
        args: all,
        env: BTreeMap::new(),
        pass_env: Vec::new(),
        input: InputMode::JsonLines,
        can_compact,
        protocol: mosaic_runner::AgentProtocol::JsonLines,
        finish_on_result: true,
        stall_timeout_secs: Some(Duration::from_secs(30)),
        time_limit_secs: Some(Duration::from_secs(120)),
    })
}

fn demo_config(dir: &std::path::Path, gitea_url: &url::Url) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.webhook.secrets = vec![Secret::new(SECRET)];
    config.store = mosaic_store::StoreConfig::sqlite(dir.join("mosaic.db"));
    // Mirrors and worktrees of the demo repository.
    config.workspace.root = dir.join("workspaces");
    config.inbox.idle_poll_ms = 200;
    let mut gitea =
        mosaic_gitea::GiteaConfig::new(gitea_url.clone(), Some(Secret::new(MockGitea::BOT_TOKEN)));
    gitea.reconcile_interval_secs = 3600;
    config.gitea = Some(gitea);
    let mut runner = RunnerConfig::new(dir.join("work"));
    // Small steps: a steady climb that a human can follow.
    let steady = [
        "--steps",
        "8",
        "--tokens-per-step",
        "4000",
        "--start-tokens",
        "8000",
        "--step-delay-ms",
        "250",
    ];
    // glm compacts at 80% of its 128k window and finishes.
    let compacting = [
        "--steps",
        "10",
        "--tokens-per-step",
        "12000",
        "--start-tokens",
        "20000",
        "--step-delay-ms",
        "250",
    ];
    // sonnet's agent cannot compact, so at 80% it is rotated to a fresh session that resumes.
    let rotating = [
        "--steps",
        "10",
        "--tokens-per-step",
        "25000",
        "--start-tokens",
        "30000",
        "--step-delay-ms",
        "250",
    ];
    let notes = ["--write-file", "NOTES.md"];
    // sonnet's first result breaks the demo's test gate (BROKEN.md without FIXED.md); sent
    // back with the gate's output, it fixes it.
    let breaks_then_fixes = [
        "--write-file",
        "BROKEN.md",
        "--fix-on-continuation",
        "FIXED.md",
    ];
    for (agent, args, files, can_compact) in [
        ("opus", &steady[..], &notes[..], true),
        ("haiku", &steady[..], &notes[..], true),
        ("minimax", &steady[..], &notes[..], true),
        ("glm", &compacting[..], &notes[..], true),
        ("sonnet", &rotating[..], &breaks_then_fixes[..], false),
    ] {
        runner
            .agents
            .insert(agent.to_owned(), agent_command(args, files, can_compact)?);
    }
    config.runner = Some(runner);
    config.gates.gates = vec![mosaic_gates::Gate {
        name: "test".to_owned(),
        command: [
            "sh",
            "-c",
            "if [ -e BROKEN.md ] && [ ! -e FIXED.md ]; then echo 'test widget ... FAILED: BROKEN.md is not fixed'; exit 1; fi; echo 'test widget ... ok'",
        ]
        .map(str::to_owned)
        .to_vec(),
        repos: vec!["*/*".to_owned()],
        timeout_secs: 60,
        required: true,
        env: BTreeMap::new(),
        min_percent: None,
        percent_regex: None,
    }];
    Ok(config)
}

/// A webhook body as Gitea sends it, built from the mock's view of the issue.
fn delivery_body(gitea: &MockGitea, issue: &IssueRef, action: &str) -> anyhow::Result<Vec<u8>> {
    let event = gitea
        .issue_event(issue, action, "alice")
        .with_context(|| format!("the mock has no issue {issue}"))?;
    Ok(serde_json::to_vec_pretty(&event)?)
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    gitea: &MockGitea,
    issue: &IssueRef,
    action: &str,
    event_type: &str,
    n: u32,
) -> anyhow::Result<()> {
    let body = delivery_body(gitea, issue, action)?;
    let signature = sign_hex(&Secret::new(SECRET), &body);
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-event-type", event_type)
        .header("x-gitea-delivery", format!("demo-{n}"))
        .header("x-gitea-signature", signature)
        .body(body)
        .send()
        .await
        .context("webhook delivery failed")?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    println!("  → {action:<10} {issue}: {status} {answer}");
    anyhow::ensure!(status.is_success(), "the coordinator refused the delivery");
    Ok(())
}

pub fn run() -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(scenario())
}

async fn scenario() -> Result<(), Failure> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let (gitea, gitea_url) = MockGitea::start()
        .await
        .context("cannot start the mock Gitea")?;
    let repo: RepoName = "demo/app".parse().context("demo repository name")?;
    gitea.create_repo(&repo);
    // A real repository, served as Gitea would (the bot's token required), that the
    // coordinator clones, and pushes each issue's branch to.
    let git_root = dir.path().join("git");
    mosaic_gitea::mock::repo::create_bare_repository(&git_root, "demo", "app", "main")
        .map_err(|err| anyhow::anyhow!("cannot create the demo repository: {err}"))?;
    let git_server = GitHttpServer::start(&git_root, MockGitea::BOT_TOKEN)
        .await
        .context("cannot serve the demo repository over HTTP")?;
    let clone_url = git_server.clone_url("demo", "app");
    gitea.set_clone_url(&repo, &clone_url);
    let issues: Vec<IssueRef> = ISSUES
        .iter()
        .map(|s| {
            gitea.create_issue(
                &repo,
                NewIssue::titled(s.title)
                    .body(s.body)
                    .assigned_to(MockGitea::BOT_LOGIN),
            )
        })
        .collect();
    gitea.add_dependency(&issues[1], &issues[0]);

    let config = demo_config(dir.path(), &gitea_url)?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a port")?;
    let address = listener.local_addr().context("bound address")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve::run_on(config, listener, async {
        let _ = stop_rx.await;
    }));
    println!("Mosaic Coordinator demo");
    println!(
        "  coordinator  http://{address}  (store in {})",
        dir.path().display()
    );
    println!(
        "  mock Gitea   {gitea_url}  (repository {repo}, bot {})",
        MockGitea::BOT_LOGIN
    );
    println!("  git          {clone_url}");
    println!();

    let client = reqwest::Client::new();
    let health = format!("http://{address}/health");
    wait_until(Duration::from_secs(20), || async {
        client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
    .context("the coordinator did not become healthy")?;

    let webhook = format!("http://{address}/webhook/gitea");
    println!("Replaying signed deliveries: every issue assigned to the bot");
    for (n, issue) in issues.iter().enumerate() {
        deliver(
            &client,
            &webhook,
            &gitea,
            issue,
            "assigned",
            "issue_assign",
            n as u32 + 1,
        )
        .await?;
    }
    println!();

    // The store is read through its own connection; the coordinator owns the writes.
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&mosaic_store::StoreConfig::sqlite(
            dir.path().join("mosaic.db"),
        ))
        .context("cannot open the demo store")?,
    );
    let started = Instant::now();
    let mut shown: BTreeMap<IssueRef, String> = BTreeMap::new();
    let mut closed_first = false;
    loop {
        let records = store.list_issues(&[]).await.context("reading the queue")?;
        for record in &records {
            let line = format!(
                "{:<12} {}",
                record.state.as_str(),
                record.assigned_agent.as_deref().unwrap_or("-")
            );
            if shown.get(&record.issue) != Some(&line) {
                println!(
                    "  [{:>5.1}s] {:<14} {line}",
                    started.elapsed().as_secs_f64(),
                    record.issue.to_string()
                );
                shown.insert(record.issue.clone(), line);
            }
        }
        // When the blocker is done, close it in Gitea: the dependent becomes ready.
        if !closed_first
            && records
                .iter()
                .any(|r| r.issue == issues[0] && r.state == IssueState::Completed)
        {
            gitea.set_issue_state(&issues[0], mosaic_gitea::IssueState::Closed);
            println!("  closing {} in Gitea", issues[0]);
            deliver(
                &client, &webhook, &gitea, &issues[0], "closed", "issues", 10,
            )
            .await?;
            closed_first = true;
        }
        let settled =
            records.len() == issues.len() && records.iter().all(|r| r.state.is_terminal());
        if settled && closed_first {
            break;
        }
        if started.elapsed() > DEADLINE {
            println!("  the scenario did not finish within {DEADLINE:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!();
    // Let the outbox deliver the last writes before showing what Gitea holds.
    let _ = wait_until(Duration::from_secs(10), || async {
        store
            .outbox_backlog()
            .await
            .is_ok_and(|backlog| backlog.pending == 0)
    })
    .await;
    println!("{}", summary(store.as_ref(), &issues).await?);
    println!(
        "{}",
        pull_requests(store.as_ref(), &gitea, &repo, &issues).await?
    );
    println!("What the bot wrote on each issue in Gitea:");
    for issue in &issues {
        let comments = gitea.comments(issue);
        let labels = gitea.issue_labels(issue);
        println!(
            "  {:<14} {} comment(s), labels [{}]",
            issue.to_string(),
            comments.len(),
            labels.join(", ")
        );
        if let Some(status) = comments.iter().find(|c| c.body.contains("mosaic:status")) {
            let first = status.body.lines().next().unwrap_or_default();
            println!("  {:<14} status: {first}", "");
        }
    }

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
    Ok(())
}

/// The pull request each completed issue got in the mock Gitea: number, branch, pushed commit.
async fn pull_requests(
    store: &dyn Store,
    gitea: &MockGitea,
    repo: &RepoName,
    issues: &[IssueRef],
) -> anyhow::Result<String> {
    let pulls = gitea.pull_requests(repo);
    let mut out = String::from("Pull requests in the mock Gitea:\n");
    for issue in issues {
        let Some(stored) = store.get_workspace(issue).await? else {
            continue;
        };
        let workspace = stored.workspace;
        let commit = workspace.head_commit.as_deref().unwrap_or("-");
        let pull = pulls.iter().find(|pull| pull.head.name == workspace.branch);
        let number = pull.map_or_else(|| "-".to_owned(), |pull| format!("#{}", pull.number));
        let gates: Vec<String> = gitea
            .commit_statuses(repo, commit)
            .iter()
            .map(|status| format!("{} {:?}", status.context, status.state).to_lowercase())
            .collect();
        writeln!(
            out,
            "  {:<14} {:<4} {} → {}  commit {}  [{}]",
            issue.to_string(),
            number,
            workspace.branch,
            workspace.base_branch,
            commit.get(..10).unwrap_or(commit),
            gates.join(", "),
        )?;
    }
    if pulls.is_empty() {
        out.push_str("  (none)\n");
    }
    Ok(out)
}

async fn wait_until<F, Fut>(limit: Duration, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("timed out after {limit:?}")
}

/// issue, agent, estimate, tokens used, compactions, rotations, outcome.
async fn summary(store: &dyn Store, issues: &[IssueRef]) -> anyhow::Result<String> {
    let rotations = store.recent_rotations(None, 1000).await?;
    let mut out = String::new();
    writeln!(
        out,
        "{:<14} {:<8} {:>10} {:>12} {:>11} {:>9} {:>9}  outcome",
        "issue", "agent", "estimate", "tokens used", "compactions", "rotations", "sent back"
    )?;
    for issue in issues {
        let Some(record) = store.get_issue(issue).await? else {
            writeln!(out, "{:<14} (never coordinated)", issue.to_string())?;
            continue;
        };
        let mut compactions = 0;
        let sessions = store.sessions_for_issue(issue).await?;
        for session in &sessions {
            compactions += store.compactions_for_session(&session.id).await?.len();
        }
        // Every success but the last was sent back by the quality gates.
        let succeeded = sessions
            .iter()
            .filter(|session| session.outcome == Some(mosaic_store::SessionOutcome::Succeeded))
            .count();
        let sent_back = succeeded.saturating_sub(1);
        let rotated = rotations
            .iter()
            .filter(|r| &r.rotation.issue == issue)
            .count();
        writeln!(
            out,
            "{:<14} {:<8} {:>10} {:>12} {:>11} {:>9} {:>9}  {}",
            issue.to_string(),
            record.assigned_agent.as_deref().unwrap_or("-"),
            record
                .estimate
                .map_or_else(|| "-".to_owned(), crate_thousands),
            crate_thousands(record.input_tokens + record.output_tokens),
            compactions,
            rotated,
            sent_back,
            record.state.as_str(),
        )?;
    }
    Ok(out)
}

fn crate_thousands(n: u64) -> String {
    mosaic_engine::report::thousands(n)
}
