//! The outbox worker against the in-memory Gitea (real HTTP client) and the real SQLite store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_engine::effects::GiteaWrite;
use mosaic_engine::outbox::{OutboxConfig, OutboxWorker};
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_gitea::{
    Comment, CommitStatus, CommitStatusState, CreatePullRequestOption, CreateStatusOption,
    Dependencies, EditPullRequestOption, GiteaApi, GiteaClient, GiteaConfig, GiteaError,
    IdempotencyKey, Issue, IssueFilter, IssueState as TrackerState, Label, PullRequest, Repository,
    StateFilter, User,
};
use mosaic_store::{
    IssueRecord, NewOutboxItem, OutboxStatus, PullRequestLink, Store, StoreConfig, TransitionBatch,
    WorkspaceRecord,
};
use mosaic_store_sqlite::SqliteStore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    gitea: MockGitea,
    client: Arc<GiteaClient>,
    repo: RepoName,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&StoreConfig::sqlite(dir.path().join("s.db"))).unwrap());
    let (gitea, url) = MockGitea::start().await.unwrap();
    let client =
        Arc::new(GiteaClient::new(&GiteaConfig::new(url, Some(gitea.bot_token()))).unwrap());
    Harness {
        _dir: dir,
        store,
        gitea,
        client,
        repo: "acme/widgets".parse().unwrap(),
    }
}

fn fast() -> OutboxConfig {
    OutboxConfig {
        base_backoff_ms: 1,
        max_backoff_ms: 2,
        idle_poll_ms: 10,
        // Most tests deliver right after enqueueing; coalescing has its own tests.
        coalesce_ms: 0,
        ..OutboxConfig::default()
    }
}

impl Harness {
    fn worker(&self, config: OutboxConfig) -> OutboxWorker {
        self.worker_with(self.client.clone(), config)
    }

    fn worker_with(&self, api: Arc<dyn GiteaApi>, config: OutboxConfig) -> OutboxWorker {
        OutboxWorker::new(
            Arc::clone(&self.store),
            api,
            Arc::new(Notify::new()),
            config,
        )
        .with_bot_login(MockGitea::BOT_LOGIN)
    }

    fn issue(&self, labels: &[&str]) -> IssueRef {
        let mut new = NewIssue::titled("Add caching").assigned_to(MockGitea::BOT_LOGIN);
        for label in labels {
            new = new.labelled(label);
        }
        self.gitea.create_issue(&self.repo, new)
    }

    /// Stores a state change with its writes, as the engine does (one transaction).
    async fn enqueue(&self, issue: &IssueRef, writes: &[(&str, GiteaWrite)]) {
        let items = writes
            .iter()
            .map(|(key, write)| write.to_outbox(issue, (*key).to_owned(), Utc::now()))
            .collect();
        self.enqueue_items(issue, items).await;
    }

    async fn enqueue_items(&self, issue: &IssueRef, items: Vec<NewOutboxItem>) {
        let mut batch = TransitionBatch::update(IssueRecord::new(
            issue.clone(),
            IssueState::Pending,
            Utc::now(),
        ));
        batch.outbox = items;
        self.store.commit_transitions(vec![batch]).await.unwrap();
    }

    /// Stores the issue's snapshot as a handled webhook would, saying it has `comments`.
    async fn seen_with_comments(&self, issue: &IssueRef, comments: u64) {
        let id = format!("seen-{issue}-{comments}");
        let recorded = self
            .store
            .record_delivery(mosaic_store::NewDelivery {
                delivery_id: Some(id.clone()),
                event: "issues".into(),
                event_type: Some("issue_assign".into()),
                action: Some("assigned".into()),
                repository: Some(issue.repo.to_string()),
                issue_number: Some(issue.number),
                body_sha256: <sha2::Sha256 as sha2::Digest>::digest(id.as_bytes()).into(),
                body: b"{}".to_vec(),
                status: mosaic_store::IntakeStatus::Pending,
                received_at: Utc::now(),
            })
            .await
            .unwrap();
        let mosaic_store::RecordOutcome::Recorded { id } = recorded else {
            panic!("not recorded: {recorded:?}");
        };
        let snapshot = mosaic_store::IssueSnapshot {
            issue: issue.clone(),
            title: "Add caching".into(),
            body: String::new(),
            labels: Vec::new(),
            assignees: vec![MockGitea::BOT_LOGIN.into()],
            state: mosaic_domain::events::TrackerState::Open,
            updated_at: Utc::now(),
            html_url: None,
            comments: Some(comments),
        };
        self.store
            .process_delivery_with_snapshot(id, snapshot)
            .await
            .unwrap();
    }

    async fn statuses(&self, issue: &IssueRef) -> Vec<OutboxStatus> {
        self.store
            .outbox_for_issue(issue)
            .await
            .unwrap()
            .into_iter()
            .map(|item| item.status)
            .collect()
    }
}

/// Waits past the (millisecond) backoff so a retried item is due again.
async fn after_backoff() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

// ----- a Gitea that fails the way a crash or a lost answer does -----

#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterPost {
    /// The comment is created, then the answer is lost (a timeout).
    LoseAnswer,
    /// The comment is created, then the process "dies": the call never returns.
    Hang,
    /// The comment is created and Gitea answers 2xx with a body that cannot be read.
    Unreadable,
}

struct Flaky {
    inner: Arc<GiteaClient>,
    after_post: AfterPost,
    posts: AtomicU32,
    posted: Notify,
    /// Label writes (creating a label, adding one to an issue) still to fail after Gitea did
    /// them, as `after_post` says; comments and pull requests always do.
    label_writes_to_fail: AtomicU32,
}

impl Flaky {
    /// Whether this label write is one to fail after it was done.
    fn fails_label_write(&self) -> bool {
        self.label_writes_to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl Flaky {
    /// Counts a write Gitea did, then fails the way `after_post` says (or never returns).
    async fn after_write(&self, operation: &'static str) -> GiteaError {
        self.posts.fetch_add(1, Ordering::SeqCst);
        self.posted.notify_one();
        match self.after_post {
            AfterPost::LoseAnswer => GiteaError::Timeout { operation },
            AfterPost::Hang => std::future::pending().await,
            AfterPost::Unreadable => GiteaError::WrittenUnreadable {
                operation,
                message: "its answer lacks a field".to_owned(),
            },
        }
    }
}

#[async_trait]
impl GiteaApi for Flaky {
    async fn current_user(&self) -> Result<User, GiteaError> {
        self.inner.current_user().await
    }
    async fn get_issue(&self, issue: &IssueRef) -> Result<Issue, GiteaError> {
        self.inner.get_issue(issue).await
    }
    async fn list_issues(
        &self,
        repo: &RepoName,
        filter: &IssueFilter,
    ) -> Result<Vec<Issue>, GiteaError> {
        GiteaApi::list_issues(self.inner.as_ref(), repo, filter).await
    }
    async fn search_issues_assigned_to_me(
        &self,
        state: StateFilter,
    ) -> Result<Vec<Issue>, GiteaError> {
        self.inner.search_issues_assigned_to_me(state).await
    }
    async fn list_comments(&self, issue: &IssueRef) -> Result<Vec<Comment>, GiteaError> {
        self.inner.list_comments(issue).await
    }
    async fn find_marked_comment(
        &self,
        issue: &IssueRef,
        key: &IdempotencyKey,
        author: &str,
    ) -> Result<Option<Comment>, GiteaError> {
        self.inner.find_marked_comment(issue, key, author).await
    }
    async fn create_comment(&self, issue: &IssueRef, body: &str) -> Result<Comment, GiteaError> {
        self.inner.create_comment(issue, body).await?;
        Err(self.after_write("issue.comments.create").await)
    }
    async fn edit_comment(
        &self,
        repo: &RepoName,
        id: i64,
        body: &str,
    ) -> Result<Comment, GiteaError> {
        self.inner.edit_comment(repo, id, body).await
    }
    async fn list_labels(&self, repo: &RepoName) -> Result<Vec<Label>, GiteaError> {
        self.inner.list_labels(repo).await
    }
    async fn create_managed_label(&self, repo: &RepoName, name: &str) -> Result<Label, GiteaError> {
        let label = self.inner.create_managed_label(repo, name).await?;
        if self.fails_label_write() {
            return Err(self.after_write("repo.labels.create").await);
        }
        Ok(label)
    }
    async fn add_label_ids(&self, issue: &IssueRef, ids: &[i64]) -> Result<Vec<Label>, GiteaError> {
        let labels = self.inner.add_label_ids(issue, ids).await?;
        if self.fails_label_write() {
            return Err(self.after_write("issue.labels.add").await);
        }
        Ok(labels)
    }
    async fn replace_labels(
        &self,
        issue: &IssueRef,
        ids: &[i64],
    ) -> Result<Vec<Label>, GiteaError> {
        self.inner.replace_labels(issue, ids).await
    }
    async fn update_assignees(
        &self,
        issue: &IssueRef,
        add: &[String],
        remove: &[String],
    ) -> Result<Issue, GiteaError> {
        self.inner.update_assignees(issue, add, remove).await
    }
    async fn dependencies(&self, issue: &IssueRef) -> Result<Dependencies, GiteaError> {
        self.inner.dependencies(issue).await
    }
    async fn blocks(&self, issue: &IssueRef) -> Result<Vec<Issue>, GiteaError> {
        self.inner.blocks(issue).await
    }
    async fn close_issue(&self, issue: &IssueRef) -> Result<Issue, GiteaError> {
        self.inner.close_issue(issue).await
    }
    async fn repository(&self, repo: &RepoName) -> Result<Repository, GiteaError> {
        GiteaApi::repository(self.inner.as_ref(), repo).await
    }
    /// Opens the pull request, then fails like a lost answer (a 409 from Gitea passes).
    async fn create_pull_request(
        &self,
        repo: &RepoName,
        pull: &CreatePullRequestOption,
    ) -> Result<PullRequest, GiteaError> {
        self.inner.create_pull_request(repo, pull).await?;
        Err(self.after_write("repo.pulls.create").await)
    }
    async fn pull_request_by_branches(
        &self,
        repo: &RepoName,
        base: &str,
        head: &str,
    ) -> Result<PullRequest, GiteaError> {
        self.inner.pull_request_by_branches(repo, base, head).await
    }
    async fn edit_pull_request(
        &self,
        repo: &RepoName,
        number: u64,
        edit: &EditPullRequestOption,
    ) -> Result<PullRequest, GiteaError> {
        self.inner.edit_pull_request(repo, number, edit).await
    }
    async fn create_commit_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CreateStatusOption,
    ) -> Result<CommitStatus, GiteaError> {
        self.inner.create_commit_status(repo, sha, status).await
    }
}

fn flaky(h: &Harness, after_post: AfterPost) -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: h.client.clone(),
        after_post,
        posts: AtomicU32::new(0),
        posted: Notify::new(),
        label_writes_to_fail: AtomicU32::new(0),
    })
}

fn comment(body: &str) -> GiteaWrite {
    GiteaWrite::comment(body.into())
}

/// A comment write as enqueued before markers were stored with it.
fn legacy_comment(body: &str) -> GiteaWrite {
    GiteaWrite::Comment {
        body: body.into(),
        marker: None,
    }
}

/// The marker stored with the issue's first outbox row.
async fn stored_marker(h: &Harness, issue: &IssueRef) -> IdempotencyKey {
    let stored = h.store.outbox_for_issue(issue).await.unwrap();
    match GiteaWrite::from_outbox(&stored[0]).unwrap() {
        GiteaWrite::Comment {
            marker: Some(marker),
            ..
        } => IdempotencyKey::new(&marker).unwrap(),
        other => panic!("no marker stored: {other:?}"),
    }
}

fn status(body: &str) -> GiteaWrite {
    GiteaWrite::StatusComment {
        body: body.into(),
        pull_request: None,
    }
}

// ----- crash safety (issue 6: exactly one comment per state change) -----

#[tokio::test]
async fn a_crash_after_posting_leaves_exactly_one_comment_after_restart() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(
        &issue,
        &[("d7-acme/widgets#1-done", comment("Done: merged."))],
    )
    .await;

    // The process dies after Gitea created the comment, before the store heard of it.
    let api = flaky(&h, AfterPost::Hang);
    let worker = h.worker_with(api.clone(), fast());
    let task = tokio::spawn(async move { worker.run_once().await });
    tokio::time::timeout(Duration::from_secs(5), api.posted.notified())
        .await
        .expect("the first attempt reaches Gitea");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(h.gitea.comments(&issue).len(), 1);
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Pending]);
    let stored = h.store.outbox_for_issue(&issue).await.unwrap();
    assert_eq!(
        stored[0].attempts, 0,
        "nothing was recorded before the crash"
    );

    // After the restart a new worker delivers the row again.
    let restarted = h.worker(fast());
    assert_eq!(restarted.run_once().await.unwrap(), 1);
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(comments[0].body.starts_with("Done: merged."));
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Done]);
    assert_eq!(restarted.stats().counts().delivered, 1);
    assert_eq!(restarted.run_once().await.unwrap(), 0, "nothing left");
}

#[tokio::test]
async fn an_uncertain_outcome_is_checked_before_posting_again() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(&issue, &[("k1", comment("Started"))]).await;

    let api = flaky(&h, AfterPost::LoseAnswer);
    let worker = h.worker_with(api.clone(), fast());
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(api.posts.load(Ordering::SeqCst), 1);
    let stored = h.store.outbox_for_issue(&issue).await.unwrap();
    assert_eq!(stored[0].status, OutboxStatus::Pending);
    assert!(stored[0].last_error.as_deref().unwrap().contains("in time"));
    assert_eq!(worker.stats().counts().retried, 1);

    // The retry (same flaky Gitea) finds the marked comment and posts nothing.
    after_backoff().await;
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(api.posts.load(Ordering::SeqCst), 1, "not posted twice");
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 1);
    assert!(stored_marker(&h, &issue).await.is_in(&comments[0].body));
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Done]);
}

#[tokio::test]
async fn a_write_gitea_accepted_with_an_unreadable_answer_is_delivered_not_given_up() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(&issue, &[("k1", comment("Finished"))]).await;
    let api = flaky(&h, AfterPost::Unreadable);
    let worker = h.worker_with(api.clone(), fast());
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Done]);
    let counts = worker.stats().counts();
    assert_eq!((counts.delivered, counts.given_up), (1, 0));
    assert_eq!(h.gitea.comments(&issue).len(), 1, "written once");
}

#[tokio::test]
async fn rows_without_a_stored_marker_keep_the_row_id_marker() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(
        &issue,
        &[("d3-acme/widgets#1-failed-comment", legacy_comment("Failed"))],
    )
    .await;
    let worker = h.worker(fast());
    worker.run_once().await.unwrap();
    let id = h.store.outbox_for_issue(&issue).await.unwrap()[0].id;
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0]
            .body
            .ends_with(&format!("<!-- mosaic:outbox:{id} -->"))
    );
}

// ----- nobody else can suppress the bot's comments (issue 7) -----

impl Harness {
    /// A client posting as `login`, a person on the same Gitea.
    fn person(&self, login: &str) -> GiteaClient {
        let token = self.gitea.add_user(login);
        GiteaClient::new(&GiteaConfig::new(
            self.gitea.base_url().clone(),
            Some(mosaic_security::Secret::new(token)),
        ))
        .unwrap()
    }
}

#[tokio::test]
async fn each_comment_write_carries_its_own_unguessable_marker() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(
        &issue,
        &[
            ("d1-acme/widgets#1-done", comment("Done.")),
            ("d2-acme/widgets#1-done", comment("Done again.")),
        ],
    )
    .await;
    let worker = h.worker(fast());
    while worker.run_once().await.unwrap() > 0 {}
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 2);
    let markers: Vec<IdempotencyKey> = comments
        .iter()
        .flat_map(|c| mosaic_gitea::markers_in(&c.body))
        .collect();
    assert_eq!(markers.len(), 2);
    assert_ne!(markers[0], markers[1]);
    let rows = h.store.outbox_for_issue(&issue).await.unwrap();
    assert_eq!(rows.len(), 2);
    for marker in &markers {
        assert!(marker.as_str().starts_with("c-"), "{marker}");
        assert!(marker.as_str().len() >= 32, "{marker}");
        assert!(!marker.as_str().contains("outbox"), "{marker}");
    }
}

#[tokio::test]
async fn a_marker_in_a_persons_comment_does_not_suppress_the_bots_comment() {
    let h = harness().await;
    let issue = h.issue(&[]);
    // A row whose marker is predictable (enqueued before markers were stored): its row id.
    h.enqueue(
        &issue,
        &[("d3-acme/widgets#1-failed-comment", legacy_comment("Failed"))],
    )
    .await;
    let id = h.store.outbox_for_issue(&issue).await.unwrap()[0].id;
    h.person("mallory")
        .create_comment(
            &issue,
            &format!("nothing to see <!-- mosaic:outbox:{id} -->"),
        )
        .await
        .unwrap();
    // A worker that was not told the bot's login asks Gitea for it.
    let worker = OutboxWorker::new(
        Arc::clone(&h.store),
        h.client.clone(),
        Arc::new(Notify::new()),
        fast(),
    );
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let mine: Vec<Comment> = h
        .gitea
        .comments(&issue)
        .into_iter()
        .filter(|c| c.user.is(MockGitea::BOT_LOGIN))
        .collect();
    assert_eq!(mine.len(), 1, "the bot posted its comment: {mine:?}");
    assert!(mine[0].body.starts_with("Failed"));
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Done]);
}

// ----- the writes -----

#[tokio::test]
async fn the_status_comment_is_edited_in_place_across_states() {
    let h = harness().await;
    let issue = h.issue(&[]);
    // A person quoting the marker does not own the status comment.
    let alice = h.gitea.add_user("alice");
    let alice_client = GiteaClient::new(&GiteaConfig::new(
        h.gitea.base_url().clone(),
        Some(mosaic_security::Secret::new(alice)),
    ))
    .unwrap();
    alice_client
        .create_comment(&issue, "why is this <!-- mosaic:status --> here?")
        .await
        .unwrap();

    let worker = h.worker(fast());
    let states = ["Queued for glm.", "Blocked by #2.", "Running (glm)."];
    for (n, body) in states.iter().enumerate() {
        h.enqueue(&issue, &[(&format!("s{n}"), status(body))]).await;
        assert_eq!(worker.run_once().await.unwrap(), 1);
        let mine: Vec<Comment> = h
            .gitea
            .comments(&issue)
            .into_iter()
            .filter(|c| c.user.is(MockGitea::BOT_LOGIN))
            .collect();
        assert_eq!(mine.len(), 1, "one status comment, ever: {mine:?}");
        assert_eq!(mine[0].body, format!("{body}\n\n<!-- mosaic:status -->"));
    }
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 2);
    assert_eq!(comments[0].body, "why is this <!-- mosaic:status --> here?");
    assert_eq!(
        h.gitea.count_requests("POST", "/comments"),
        2,
        "alice's and one status"
    );
    assert_eq!(h.gitea.count_requests("PATCH", "/comments/"), 2);

    // The same status again is not even edited.
    h.enqueue(&issue, &[("s-again", status("Running (glm)."))])
        .await;
    worker.run_once().await.unwrap();
    assert_eq!(h.gitea.count_requests("PATCH", "/comments/"), 2);
    assert_eq!(worker.stats().counts().delivered, 4);
}

#[tokio::test]
async fn state_labels_are_swapped_and_issues_closed() {
    let h = harness().await;
    let issue = h.issue(&["mosaic:queued", "bug"]);
    h.enqueue(
        &issue,
        &[
            (
                "l1",
                GiteaWrite::StateLabel {
                    add: Some("mosaic:running".into()),
                    remove: vec![
                        "mosaic:queued".into(),
                        "mosaic:blocked".into(),
                        "mosaic:running".into(),
                    ],
                },
            ),
            (
                "l2",
                GiteaWrite::StateLabel {
                    add: None,
                    remove: vec!["mosaic:running".into()],
                },
            ),
            ("c", GiteaWrite::CloseIssue),
        ],
    )
    .await;
    let worker = h.worker(fast());
    assert_eq!(
        worker.run_once().await.unwrap(),
        1,
        "one item per issue per round"
    );
    let mut labels = h.gitea.issue_labels(&issue);
    labels.sort();
    assert_eq!(labels, vec!["bug", "mosaic:running"]);
    assert!(
        h.gitea
            .repo_labels(&h.repo)
            .iter()
            .any(|l| l.name == "mosaic:running"),
        "the missing label was created"
    );
    assert!(
        !h.gitea
            .repo_labels(&h.repo)
            .iter()
            .any(|l| l.name == "mosaic:blocked"),
        "labels to remove are never created"
    );
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(h.gitea.issue_labels(&issue), vec!["bug"]);
    assert_eq!(
        h.gitea.issue(&issue).unwrap().state,
        TrackerState::Open,
        "closing waits for the earlier writes"
    );
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(h.gitea.issue(&issue).unwrap().state, TrackerState::Closed);
    assert_eq!(
        h.statuses(&issue).await,
        vec![OutboxStatus::Done, OutboxStatus::Done, OutboxStatus::Done]
    );
    let backlog = h.store.outbox_backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.failed), (0, 0));
}

#[tokio::test]
async fn writes_to_one_issue_keep_their_order() {
    let h = harness().await;
    let first = h.issue(&[]);
    let second = h.issue(&[]);
    let bodies = ["one", "two", "three"];
    let writes: Vec<(String, GiteaWrite)> = bodies
        .iter()
        .map(|b| (format!("order-{b}"), comment(b)))
        .collect();
    let refs: Vec<(&str, GiteaWrite)> = writes
        .iter()
        .map(|(k, w)| (k.as_str(), w.clone()))
        .collect();
    h.enqueue(&first, &refs).await;
    h.enqueue(&second, &[("other", comment("elsewhere"))]).await;
    // The first item of `first` fails twice; nothing later on that issue may overtake it.
    h.gitea
        .fail_next(&format!("/issues/{}/comments", first.number), 503, 2);
    let worker = h.worker(fast());
    worker.run_once().await.unwrap();
    assert_eq!(
        h.gitea.comments(&second).len(),
        1,
        "other issues are not held up"
    );
    assert!(h.gitea.comments(&first).is_empty());
    for _ in 0..10 {
        after_backoff().await;
        worker.run_once().await.unwrap();
    }
    let posted: Vec<String> = h
        .gitea
        .comments(&first)
        .into_iter()
        .map(|c| c.body.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(posted, bodies);
    let counts = worker.stats().counts();
    assert_eq!(
        (counts.delivered, counts.retried, counts.given_up),
        (4, 2, 0)
    );
}

// ----- failures -----

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_delivered() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(&issue, &[("s", status("Queued"))]).await;
    h.gitea.fail_next("/comments", 500, 2);
    let worker = h.worker(OutboxConfig {
        base_backoff_ms: 200,
        max_backoff_ms: 200,
        ..fast()
    });
    worker.run_once().await.unwrap();
    let item = &h.store.outbox_for_issue(&issue).await.unwrap()[0];
    assert_eq!((item.status, item.attempts), (OutboxStatus::Pending, 1));
    assert!(item.last_error.as_deref().unwrap().contains("500"));
    assert!(item.next_attempt_at > Utc::now(), "backed off");
    assert_eq!(worker.run_once().await.unwrap(), 0, "not due yet");
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.run_once().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.run_once().await.unwrap();
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Done]);
    assert_eq!(h.gitea.comments(&issue).len(), 1);
    let counts = worker.stats().counts();
    assert_eq!(
        (counts.delivered, counts.retried, counts.given_up),
        (1, 2, 0)
    );
}

#[tokio::test]
async fn refusals_unknown_kinds_and_exhausted_attempts_are_given_up() {
    let h = harness().await;
    // 404: the issue does not exist.
    let missing = IssueRef::new(h.repo.clone(), 99);
    h.gitea.create_repo(&h.repo);
    h.enqueue(
        &missing,
        &[("m1", status("Queued")), ("m2", GiteaWrite::CloseIssue)],
    )
    .await;
    // An item this version does not understand.
    let odd = h.issue(&[]);
    h.enqueue_items(
        &odd,
        vec![NewOutboxItem {
            issue: odd.clone(),
            idempotency_key: "odd".into(),
            kind: "launch_rockets".into(),
            payload: serde_json::Value::Null,
            created_at: Utc::now(),
        }],
    )
    .await;
    // Always failing: given up after max_attempts.
    let down = h.issue(&[]);
    h.enqueue(&down, &[("d", GiteaWrite::CloseIssue)]).await;
    h.gitea
        .fail_next(&format!("/issues/{}", down.number), 502, 100);

    let worker = h.worker(OutboxConfig {
        max_attempts: 3,
        ..fast()
    });
    for _ in 0..6 {
        worker.run_once().await.unwrap();
        after_backoff().await;
    }
    assert_eq!(
        h.statuses(&missing).await,
        vec![OutboxStatus::Failed, OutboxStatus::Failed],
        "a given-up write does not block the next one"
    );
    let missing_item = &h.store.outbox_for_issue(&missing).await.unwrap()[0];
    assert!(missing_item.last_error.as_deref().unwrap().contains("404"));
    assert_eq!(missing_item.attempts, 1, "a 404 is not retried");
    let odd_item = &h.store.outbox_for_issue(&odd).await.unwrap()[0];
    assert_eq!(odd_item.status, OutboxStatus::Failed);
    assert!(
        odd_item
            .last_error
            .as_deref()
            .unwrap()
            .contains("launch_rockets")
    );
    let down_item = &h.store.outbox_for_issue(&down).await.unwrap()[0];
    assert_eq!(
        (down_item.status, down_item.attempts),
        (OutboxStatus::Failed, 3)
    );
    assert!(down_item.last_error.as_deref().unwrap().contains("502"));
    let counts = worker.stats().counts();
    assert_eq!(
        (counts.delivered, counts.retried, counts.given_up),
        (0, 2, 4)
    );
    let backlog = worker.backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.failed), (0, 4));
}

#[tokio::test]
async fn run_delivers_until_cancelled() {
    let h = harness().await;
    let issue = h.issue(&[]);
    let notify = Arc::new(Notify::new());
    let worker = OutboxWorker::new(
        Arc::clone(&h.store),
        h.client.clone(),
        Arc::clone(&notify),
        OutboxConfig {
            idle_poll_ms: 60_000,
            ..fast()
        },
    );
    let stats = worker.stats();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(worker.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.enqueue(&issue, &[("a", status("Queued")), ("b", status("Running"))])
        .await;
    notify.notify_one();
    // The first status edit is superseded by the second (not sent), which is delivered.
    let handled = || {
        let counts = stats.counts();
        counts.delivered + counts.superseded
    };
    for _ in 0..200 {
        if handled() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handled(), 2, "woken, and the next item follows at once");
    assert_eq!(stats.counts().superseded, 1);
    assert_eq!(h.gitea.comments(&issue).len(), 1);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops when cancelled")
        .unwrap();
}

#[test]
fn the_outbox_section_has_defaults_and_refuses_unknown_keys() {
    let config: OutboxConfig = serde_json::from_str(r#"{"batch": 5}"#).unwrap();
    assert_eq!(config.batch, 5);
    assert_eq!(config.max_attempts, OutboxConfig::default().max_attempts);
    assert!(serde_json::from_str::<OutboxConfig>(r#"{"batchh": 5}"#).is_err());
    let config = OutboxConfig::default();
    for attempt in 1..30 {
        let delay = config.backoff(attempt).as_millis() as u64;
        assert!(
            delay <= config.max_backoff_ms * 12 / 10,
            "{attempt}: {delay}"
        );
    }
}

#[tokio::test]
async fn retry_after_is_honoured_only_up_to_the_largest_backoff() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(&issue, &[("s", status("Queued"))]).await;
    // Eleven days, as a hostile or broken proxy may say.
    h.gitea.inject_failure(
        mosaic_gitea::mock::InjectedFailure::new("/comments", 429, 1).with_retry_after("999999"),
    );
    let worker = h.worker(OutboxConfig {
        base_backoff_ms: 100,
        max_backoff_ms: 3_000,
        ..fast()
    });
    let before = Utc::now();
    worker.run_once().await.unwrap();
    let item = &h.store.outbox_for_issue(&issue).await.unwrap()[0];
    assert_eq!((item.status, item.attempts), (OutboxStatus::Pending, 1));
    let waits = item.next_attempt_at - before;
    assert!(
        waits <= chrono::Duration::milliseconds(3_500),
        "parked for {waits} despite max_backoff_ms = 3000"
    );
    assert!(
        waits >= chrono::Duration::milliseconds(2_500),
        "Retry-After (capped) should still be honoured, waited {waits}"
    );
}

// ----- pull requests (exactly one per branch) -----

fn pull_request(body: &str) -> GiteaWrite {
    GiteaWrite::PullRequest {
        head: "mosaic/1-add-caching".into(),
        base: "main".into(),
        title: "Add caching".into(),
        body: body.into(),
    }
}

#[tokio::test]
async fn a_lost_answer_to_opening_a_pull_request_leaves_one_pull_request() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(&issue, &[("p1", pull_request("Closes #1\n\nfirst"))])
        .await;
    let api = flaky(&h, AfterPost::LoseAnswer);
    let worker = h.worker_with(api.clone(), fast());
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Pending]);
    assert_eq!(h.gitea.pull_requests(&h.repo).len(), 1);

    // The retry meets Gitea's 409, finds the pull request by its branches and is done.
    after_backoff().await;
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Done]);
    let pulls = h.gitea.pull_requests(&h.repo);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0].body, "Closes #1\n\nfirst");
    assert_eq!(
        h.gitea.count_requests("PATCH", "/pulls/"),
        0,
        "same body: not edited"
    );
}

#[tokio::test]
async fn a_later_pull_request_write_for_the_same_branch_updates_its_body() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(&issue, &[("p1", pull_request("Closes #1\n\nfirst"))])
        .await;
    let worker = h.worker(fast());
    worker.run_once().await.unwrap();
    h.enqueue(&issue, &[("p2", pull_request("Closes #1\n\nsecond"))])
        .await;
    worker.run_once().await.unwrap();
    assert_eq!(
        h.statuses(&issue).await,
        vec![OutboxStatus::Done, OutboxStatus::Done]
    );
    let pulls = h.gitea.pull_requests(&h.repo);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0].body, "Closes #1\n\nsecond");
    assert_eq!(pulls[0].head.name, "mosaic/1-add-caching");
    assert_eq!(pulls[0].base.name, "main");
}

#[tokio::test]
async fn the_status_comment_links_the_pull_request_opened_before_it() {
    let h = harness().await;
    let issue = h.issue(&[]);
    let branch = "mosaic/1-add-caching";
    h.store
        .put_workspace(WorkspaceRecord {
            issue: issue.clone(),
            path: "/work/acme/widgets/issue-1".into(),
            branch: branch.into(),
            base_branch: "main".into(),
            head_commit: Some("abc".into()),
            prepared_at: Utc::now(),
            removed_at: None,
        })
        .await
        .unwrap();
    let done = format!("**Mosaic** · Done by glm · pull request `{branch}` → `main`\n\nsummary");
    h.enqueue(
        &issue,
        &[
            ("p1", pull_request("Closes #1")),
            (
                "done-status",
                GiteaWrite::StatusComment {
                    body: done,
                    pull_request: Some(branch.into()),
                },
            ),
        ],
    )
    .await;
    drain(&h.worker(fast())).await;

    let pulls = h.gitea.pull_requests(&h.repo);
    assert_eq!(pulls.len(), 1);
    let link = PullRequestLink {
        number: pulls[0].number,
        url: pulls[0].html_url.clone(),
    };
    assert!(!link.url.is_empty());
    let stored = h.store.get_workspace(&issue).await.unwrap().unwrap();
    assert_eq!(stored.pull_request, Some(link.clone()));
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 1);
    assert_eq!(
        comments[0].body,
        format!(
            "**Mosaic** · Done by glm · pull request [#{}]({}) `{branch}` → `main`\n\nsummary\n\n<!-- mosaic:status -->",
            link.number, link.url
        )
    );
}

#[tokio::test]
async fn gate_results_become_commit_statuses_on_the_pushed_commit() {
    let h = harness().await;
    let issue = h.issue(&[]);
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let status = |context: &str, state| GiteaWrite::CommitStatus {
        sha: sha.into(),
        context: context.into(),
        state,
        description: "why".into(),
    };
    h.enqueue(
        &issue,
        &[
            (
                "s-build",
                status("mosaic/build", CommitStatusState::Success),
            ),
            ("s-test", status("mosaic/test", CommitStatusState::Failure)),
        ],
    )
    .await;
    drain(&h.worker(fast())).await;
    let statuses = h.gitea.commit_statuses(&h.repo, sha);
    let seen: Vec<(&str, CommitStatusState, &str)> = statuses
        .iter()
        .map(|s| (s.context.as_str(), s.state, s.description.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("mosaic/build", CommitStatusState::Success, "why"),
            ("mosaic/test", CommitStatusState::Failure, "why")
        ]
    );
    assert_eq!(
        h.statuses(&issue).await,
        vec![OutboxStatus::Done, OutboxStatus::Done]
    );
}

#[tokio::test]
async fn without_a_known_pull_request_the_status_comment_names_the_branch() {
    let h = harness().await;
    let issue = h.issue(&[]);
    // No workspace record (an older database, or the pull request write failed).
    let done = "**Mosaic** · Done by glm · pull request `mosaic/1-add-caching` → `main`";
    h.enqueue(
        &issue,
        &[(
            "done-status",
            GiteaWrite::StatusComment {
                body: done.into(),
                pull_request: Some("mosaic/1-add-caching".into()),
            },
        )],
    )
    .await;
    drain(&h.worker(fast())).await;
    let comments = h.gitea.comments(&issue);
    assert_eq!(
        comments[0].body,
        format!("{done}\n\n<!-- mosaic:status -->")
    );
}

// ----- throughput: fewer calls, several issues at once -----

/// Delivers until nothing is due.
async fn drain(worker: &OutboxWorker) {
    while worker.run_once().await.unwrap() > 0 {}
}

#[tokio::test]
async fn a_status_edit_superseded_by_a_newer_one_is_not_sent() {
    let h = harness().await;
    let issue = h.issue(&[]);
    let worker = h.worker(fast());
    h.enqueue(&issue, &[("s1", status("Queued"))]).await;
    drain(&worker).await;
    h.gitea.clear_requests();

    h.enqueue(
        &issue,
        &[
            ("s2", status("Running")),
            ("s3", status("Still running")),
            ("s4", status("Done")),
        ],
    )
    .await;
    drain(&worker).await;
    assert_eq!(
        h.gitea.count_requests("PATCH", "/issues/comments/"),
        1,
        "only the newest edit is sent: {:?}",
        h.gitea.requests()
    );
    assert_eq!(
        h.gitea.count_requests("GET", "/comments"),
        0,
        "the id is known"
    );
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 1);
    assert!(comments[0].body.starts_with("Done"), "{comments:?}");
    assert_eq!(worker.stats().counts().superseded, 2);
    assert!(
        h.statuses(&issue)
            .await
            .iter()
            .all(|s| *s == OutboxStatus::Done)
    );
}

fn state_label(add: &str) -> GiteaWrite {
    let all = ["mosaic:queued", "mosaic:in-progress", "mosaic:done"];
    GiteaWrite::StateLabel {
        add: Some(add.into()),
        remove: all
            .iter()
            .filter(|l| **l != add)
            .map(|l| (*l).to_owned())
            .collect(),
    }
}

#[tokio::test]
async fn label_ids_are_listed_once_per_repository_and_again_after_a_404_or_422() {
    let h = harness().await;
    let worker = h.worker(fast());
    let issues: Vec<IssueRef> = (0..5).map(|_| h.issue(&["bug"])).collect();
    for issue in &issues {
        let key = format!("{}-queued-label", issue.number);
        h.enqueue(issue, &[(&key, state_label("mosaic:queued"))])
            .await;
    }
    drain(&worker).await;
    assert_eq!(h.gitea.count_requests("GET", "/widgets/labels"), 1);
    for issue in &issues {
        let key = format!("{}-running-label", issue.number);
        h.enqueue(issue, &[(&key, state_label("mosaic:in-progress"))])
            .await;
    }
    drain(&worker).await;
    // The label the listing did not have is created once, without listing again.
    assert_eq!(h.gitea.count_requests("GET", "/widgets/labels"), 1);
    assert_eq!(h.gitea.count_requests("POST", "/widgets/labels"), 2);
    for issue in &issues {
        let mut labels = h.gitea.issue_labels(issue);
        labels.sort();
        assert_eq!(labels, vec!["bug", "mosaic:in-progress"], "{issue}");
    }

    // Someone deletes the label: the remembered id is refused (422), the labels are listed
    // again and the label is recreated.
    assert!(h.gitea.delete_repo_label(&h.repo, "mosaic:in-progress"));
    let late = h.issue(&[]);
    h.enqueue(&late, &[("r", state_label("mosaic:in-progress"))])
        .await;
    drain(&worker).await;
    assert_eq!(h.gitea.count_requests("GET", "/widgets/labels"), 2);
    assert_eq!(h.gitea.issue_labels(&late), vec!["mosaic:in-progress"]);
    assert_eq!(h.store.outbox_backlog().await.unwrap().failed, 0);
}

#[tokio::test]
async fn writes_of_different_issues_overlap_while_each_issues_stay_ordered() {
    let h = harness().await;
    let issues: Vec<IssueRef> = (0..8).map(|_| h.issue(&[])).collect();
    let worker = h.worker(OutboxConfig {
        max_concurrent_issues: 4,
        ..fast()
    });
    for issue in &issues {
        let key = |which: &str| format!("{}-{which}", issue.number);
        h.enqueue(
            issue,
            &[
                (&key("first"), comment("first")),
                (&key("second"), comment("second")),
                (&key("third"), comment("third")),
            ],
        )
        .await;
    }
    let latency = Duration::from_millis(100);
    h.gitea.set_latency(latency);
    let started = std::time::Instant::now();
    drain(&worker).await;
    let took = started.elapsed();
    let requests = u32::try_from(h.gitea.requests().len()).unwrap();
    assert!(requests >= 24, "{requests}");
    // One at a time this takes at least `requests × latency` (2.4 s or more).
    assert!(
        took < latency * requests / 2,
        "{took:?} for {requests} requests of {latency:?}: not concurrent"
    );
    for issue in &issues {
        let bodies: Vec<String> = h
            .gitea
            .comments(issue)
            .into_iter()
            .map(|c| c.body.lines().next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(bodies, vec!["first", "second", "third"], "{issue}");
    }
}

#[tokio::test]
async fn a_state_replaced_within_the_coalescing_window_is_never_sent() {
    let h = harness().await;
    let issue = h.issue(&[]);
    // The webhook showed the issue without a comment.
    h.seen_with_comments(&issue, 0).await;
    let worker = h.worker(OutboxConfig {
        coalesce_ms: 400,
        ..fast()
    });
    h.enqueue(
        &issue,
        &[
            ("s1", status("Queued")),
            ("l1", state_label("mosaic:queued")),
        ],
    )
    .await;
    // Young: left to coalesce, nothing sent yet.
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert!(h.gitea.requests().is_empty(), "{:?}", h.gitea.requests());
    // Dispatched a moment later.
    h.enqueue(
        &issue,
        &[
            ("s2", status("Running")),
            ("l2", state_label("mosaic:in-progress")),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    drain(&worker).await;
    // The first two are superseded; the later two wait out their own window.
    tokio::time::sleep(Duration::from_millis(450)).await;
    drain(&worker).await;
    assert_eq!(worker.stats().counts().superseded, 2);
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(comments[0].body.contains("Running"));
    assert_eq!(h.gitea.issue_labels(&issue), vec!["mosaic:in-progress"]);
    assert_eq!(
        h.gitea.count_requests("POST", "/issues/1/comments")
            + h.gitea.count_requests("PATCH", "/comments/"),
        1,
        "the queued text was never sent: {:?}",
        h.gitea.requests()
    );
    assert_eq!(
        h.gitea.count_requests("GET", "/comments"),
        0,
        "nothing was ever sent for this issue: no search: {:?}",
        h.gitea.requests()
    );
}

#[tokio::test]
async fn the_running_worker_comes_back_when_a_coalescing_write_falls_due() {
    let h = harness().await;
    let issue = h.issue(&[]);
    let worker = h.worker(OutboxConfig {
        coalesce_ms: 300,
        // Far longer than the window: the worker must not wait for its poll.
        idle_poll_ms: 60_000,
        ..fast()
    });
    h.enqueue(&issue, &[("s1", status("Queued"))]).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(worker.run(cancel.clone()));
    let started = std::time::Instant::now();
    while h.gitea.comments(&issue).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the write was not sent after its window"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn one_call_sets_the_state_label_once_the_issues_labels_are_known() {
    let h = harness().await;
    let issue = h.issue(&["bug"]);
    let worker = h.worker(fast());
    h.enqueue(&issue, &[("l1", state_label("mosaic:queued"))])
        .await;
    drain(&worker).await;
    h.gitea.clear_requests();
    h.enqueue(&issue, &[("l2", state_label("mosaic:in-progress"))])
        .await;
    drain(&worker).await;
    let mut labels = h.gitea.issue_labels(&issue);
    labels.sort();
    assert_eq!(labels, vec!["bug", "mosaic:in-progress"]);
    let calls: Vec<String> = h
        .gitea
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        calls,
        vec![
            "POST /api/v1/repos/acme/widgets/labels".to_owned(),
            format!(
                "PUT /api/v1/repos/acme/widgets/issues/{}/labels",
                issue.number
            ),
        ],
        "the new label created once, then one call for the issue"
    );
    // The same state again: nothing to send.
    h.gitea.clear_requests();
    h.enqueue(&issue, &[("l3", state_label("mosaic:in-progress"))])
        .await;
    drain(&worker).await;
    assert!(h.gitea.requests().is_empty(), "{:?}", h.gitea.requests());
}

#[tokio::test]
async fn a_label_created_with_a_lost_answer_is_not_created_twice() {
    let h = harness().await;
    let first = h.issue(&[]);
    let second = h.issue(&[]);
    let gitea = flaky(&h, AfterPost::LoseAnswer);
    let worker = h.worker_with(gitea.clone(), fast());
    // The repository's labels are listed once, with the first state label.
    h.enqueue(&first, &[("l1", state_label("mosaic:queued"))])
        .await;
    drain(&worker).await;
    // A new state label: created, but the answer is lost.
    gitea.label_writes_to_fail.store(1, Ordering::SeqCst);
    h.enqueue(&second, &[("l2", state_label("mosaic:in-progress"))])
        .await;
    drain(&worker).await;
    after_backoff().await;
    drain(&worker).await;
    let named = h
        .gitea
        .repo_labels(&h.repo)
        .iter()
        .filter(|label| label.name == "mosaic:in-progress")
        .count();
    assert_eq!(named, 1, "{:#?}", h.gitea.repo_labels(&h.repo));
    assert_eq!(h.gitea.issue_labels(&second), vec!["mosaic:in-progress"]);
}

#[tokio::test]
async fn a_state_label_whose_first_call_answered_unreadably_still_ends_alone() {
    let h = harness().await;
    let issue = h.issue(&[]);
    h.enqueue(&issue, &[("l1", state_label("mosaic:queued"))])
        .await;
    drain(&h.worker(fast())).await;
    // A worker that does not know the issue's labels: it adds the new label (Gitea does it, but
    // its answer, the issue's labels, is unreadable), then must still take the old one off.
    let gitea = flaky(&h, AfterPost::Unreadable);
    gitea.label_writes_to_fail.store(1, Ordering::SeqCst);
    let worker = h.worker_with(gitea, fast());
    h.enqueue(&issue, &[("l2", state_label("mosaic:in-progress"))])
        .await;
    drain(&worker).await;
    after_backoff().await;
    drain(&worker).await;
    assert_eq!(h.gitea.issue_labels(&issue), vec!["mosaic:in-progress"]);
    assert_eq!(h.store.outbox_backlog().await.unwrap().failed, 0);
}

#[tokio::test]
async fn nothing_is_sent_while_the_write_gate_is_closed() {
    let h = harness().await;
    let issue = h.issue(&[]);
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = h.worker(fast()).with_write_gate({
        let open = Arc::clone(&open);
        Arc::new(move || open.load(Ordering::SeqCst))
    });
    h.enqueue(&issue, &[("c1", comment("Finished."))]).await;
    // A leader that cannot confirm it still leads: nothing reaches Gitea, the row waits.
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert!(h.gitea.requests().is_empty(), "{:?}", h.gitea.requests());
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Pending]);
    open.store(true, Ordering::SeqCst);
    drain(&worker).await;
    assert_eq!(h.gitea.comments(&issue).len(), 1);
    assert_eq!(h.statuses(&issue).await, vec![OutboxStatus::Done]);
}

#[tokio::test]
async fn a_row_a_crashed_leader_wrote_with_a_clock_ahead_is_searched_for_before_posting() {
    let h = harness().await;
    let issue = h.issue(&[]);
    // The next leader's worker, made while the old leader still worked: by the rows' times
    // (the old leader's clock, ahead of this one's) everything after this looks new to it.
    let next = h.worker(fast());
    h.enqueue(&issue, &[("skewed-done", comment("Done: merged."))])
        .await;
    // The old leader posted the comment and died before the store heard of it.
    let api = flaky(&h, AfterPost::Hang);
    let dying = h.worker_with(api.clone(), fast());
    let task = tokio::spawn(async move { dying.run_once().await });
    tokio::time::timeout(Duration::from_secs(5), api.posted.notified())
        .await
        .expect("the first attempt reaches Gitea");
    task.abort();
    assert_eq!(h.gitea.comments(&issue).len(), 1);

    // The next leader's worker starts: the row is older than its start, whatever its time says.
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(next.run(cancel.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.statuses(&issue).await != vec![OutboxStatus::Done] {
        assert!(std::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    running.await.unwrap();
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 1, "posted twice: {comments:#?}");
}

#[tokio::test]
async fn a_status_comment_an_earlier_store_had_posted_is_edited_not_posted_again() {
    let h = harness().await;
    let issue = h.issue(&[]);
    // A store that was replaced had the bot post the issue's status comment; this store knows
    // nothing of it, but the webhook says the issue has a comment.
    let key = IdempotencyKey::new(mosaic_engine::outbox::STATUS_KEY).unwrap();
    h.client
        .create_comment(&issue, &key.mark("Queued (by the old store)"))
        .await
        .unwrap();
    h.seen_with_comments(&issue, 1).await;
    let worker = h.worker(OutboxConfig {
        coalesce_ms: 300,
        ..fast()
    });
    h.enqueue(&issue, &[("s1", status("Queued"))]).await;
    h.enqueue(&issue, &[("s2", status("Running"))]).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    drain(&worker).await;
    let comments = h.gitea.comments(&issue);
    assert_eq!(comments.len(), 1, "a second status comment: {comments:#?}");
    assert!(comments[0].body.contains("Running"), "{comments:#?}");
}
