//! The client against the mock Gitea: every call, paging, error mapping, identity, webhooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mosaic_domain::{IssueRef, RepoName};
use mosaic_gitea::mock::{InjectedFailure, MockGitea, NewIssue};
use mosaic_gitea::webhook::{HookCheck, RepoAccess, TokenCheck};
use mosaic_gitea::{
    BotIdentity, CallObserver, CallOutcome, CommentDelivery, Dependencies, GiteaApi, GiteaClient,
    GiteaConfig, GiteaError, IdempotencyKey, IdentityError, IssueFilter, IssueState, LabelRemoval,
    Permission, StateFilter, WEBHOOK_EVENTS, WebhookInstall, check, install_webhook,
    post_comment_once,
};
use mosaic_security::Secret;
use url::Url;

const BOT: &str = MockGitea::BOT_LOGIN;

fn repo_named(name: &str) -> RepoName {
    name.parse().unwrap()
}

fn client(base: &Url, token: &str) -> GiteaClient {
    let mut config = GiteaConfig::new(base.clone(), Some(Secret::new(token)));
    config
        .label_colours
        .insert("mosaic:failed".into(), "#D93F0B".into());
    GiteaClient::new(&config).unwrap()
}

async fn setup() -> (MockGitea, GiteaClient, RepoName) {
    let (gitea, base) = MockGitea::start().await.unwrap();
    let client = client(&base, MockGitea::BOT_TOKEN);
    let repo = repo_named("mosaic/coordinator");
    gitea.create_repo(&repo);
    (gitea, client, repo)
}

#[tokio::test]
async fn current_user_and_issue_lookup() {
    let (gitea, client, repo) = setup().await;
    assert_eq!(client.current_user().await.unwrap().login, BOT);

    let issue = gitea.create_issue(&repo, NewIssue::titled("Add caching").body("Depends on #1"));
    let fetched = client.get_issue(&issue).await.unwrap();
    assert_eq!(fetched.title, "Add caching");
    assert_eq!(fetched.body, "Depends on #1");
    assert_eq!(fetched.user.login, "alice");
    assert_eq!(fetched.issue_ref(), Some(issue.clone()));

    let missing = IssueRef::new(repo.clone(), 99);
    let error = client.get_issue(&missing).await.unwrap_err();
    assert!(matches!(error, GiteaError::NotFound { .. }), "{error:?}");
    assert!(!error.is_retryable());

    let request = gitea.requests().into_iter().next().unwrap();
    assert_eq!(request.path, "/api/v1/user");
    assert!(request.authenticated);
}

#[tokio::test]
async fn lists_filter_and_walk_every_page() {
    let (gitea, client, repo) = setup().await;
    gitea.set_max_page_size(2);
    for n in 0..5 {
        gitea.create_issue(
            &repo,
            NewIssue::titled(&format!("mine {n}")).assigned_to(BOT),
        );
    }
    gitea.create_issue(&repo, NewIssue::titled("someone else's").assigned_to("bob"));
    let closed = gitea.create_issue(&repo, NewIssue::titled("done").assigned_to(BOT));
    gitea.set_issue_state(&closed, IssueState::Closed);
    gitea.create_issue(
        &repo,
        NewIssue::titled("labelled").labelled("mosaic:queued"),
    );
    gitea.clear_requests();

    let mine = client
        .list_issues(&repo, &IssueFilter::open_assigned_to(BOT))
        .await
        .unwrap();
    let mut titles: Vec<_> = mine.iter().map(|i| i.title.clone()).collect();
    titles.sort();
    assert_eq!(titles, ["mine 0", "mine 1", "mine 2", "mine 3", "mine 4"]);
    // Five items, pages of two: three requests, each asking for the next page number.
    let pages: Vec<_> = gitea
        .requests()
        .into_iter()
        .map(|r| r.query.unwrap())
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages[0].contains("assigned_by=mosaic-bot") && pages[0].contains("page=1"));
    assert!(pages[2].contains("page=3"));

    let all_states = client
        .list_issues(
            &repo,
            &IssueFilter {
                state: StateFilter::All,
                assignee: Some(BOT.into()),
                ..IssueFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all_states.len(), 6);

    let labelled = client
        .list_issues(
            &repo,
            &IssueFilter {
                labels: vec!["mosaic:queued".into()],
                ..IssueFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(labelled.len(), 1);
    assert_eq!(labelled[0].title, "labelled");

    let other = repo_named("mosaic/infra");
    gitea.create_issue(&other, NewIssue::titled("elsewhere").assigned_to(BOT));
    let searched = client
        .search_issues_assigned_to_me(StateFilter::Open)
        .await
        .unwrap();
    assert_eq!(searched.len(), 6);
    assert!(
        searched
            .iter()
            .any(|i| i.issue_ref().unwrap().repo == other)
    );
}

#[tokio::test]
async fn a_listing_longer_than_the_bound_is_an_error_not_a_partial_list() {
    let (gitea, client, repo) = setup().await;
    gitea.set_max_page_size(2);
    for n in 0..5 {
        gitea.create_issue(&repo, NewIssue::titled(&format!("{n}")));
    }
    let error = client
        .with_max_pages(2)
        .list_issues(&repo, &IssueFilter::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, GiteaError::TooManyPages { max_pages: 2, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn comments_are_created_edited_and_found_by_marker() {
    let (gitea, client, repo) = setup().await;
    let issue = gitea.create_issue(&repo, NewIssue::titled("x"));
    let key = IdempotencyKey::new("outbox:7").unwrap();
    assert_eq!(
        client
            .find_marked_comment(&issue, &key, MockGitea::BOT_LOGIN)
            .await
            .unwrap(),
        None
    );

    let first = post_comment_once(
        &client,
        &issue,
        &key,
        MockGitea::BOT_LOGIN,
        "Queued for glm",
    )
    .await
    .unwrap();
    assert!(matches!(first, CommentDelivery::Posted(_)));
    // A retry after an uncertain outcome finds the marker instead of posting again.
    let second = post_comment_once(
        &client,
        &issue,
        &key,
        MockGitea::BOT_LOGIN,
        "Queued for glm",
    )
    .await
    .unwrap();
    assert_eq!(
        second,
        CommentDelivery::AlreadyPresent(first.comment().clone())
    );
    let stored = gitea.comments(&issue);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, "Queued for glm\n\n<!-- mosaic:outbox:7 -->");
    assert_eq!(stored[0].user.login, BOT);

    let edited = client
        .edit_comment(&repo, stored[0].id, "Running on glm")
        .await
        .unwrap();
    assert_eq!(edited.body, "Running on glm");
    assert_eq!(
        client.list_comments(&issue).await.unwrap()[0].body,
        "Running on glm"
    );

    let error = client.edit_comment(&repo, 123_456, "x").await.unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
}

#[tokio::test]
async fn a_marker_in_someone_elses_comment_is_not_the_bots_comment() {
    let (gitea, client, repo) = setup().await;
    let issue = gitea.create_issue(&repo, NewIssue::titled("x"));
    let key = IdempotencyKey::new("outbox:8").unwrap();
    let mallory = GiteaClient::new(&GiteaConfig::new(
        gitea.base_url().clone(),
        Some(Secret::new(gitea.add_user("mallory"))),
    ))
    .unwrap();
    mallory
        .create_comment(&issue, &key.mark("ha"))
        .await
        .unwrap();
    assert_eq!(
        client.find_marked_comment(&issue, &key, BOT).await.unwrap(),
        None
    );
    let posted = post_comment_once(&client, &issue, &key, BOT, "Failed")
        .await
        .unwrap();
    assert!(matches!(posted, CommentDelivery::Posted(_)));
    assert_eq!(gitea.comments(&issue).len(), 2);
}

#[tokio::test]
async fn labels_are_created_when_missing_added_and_removed_by_name() {
    let (gitea, client, repo) = setup().await;
    let issue = gitea.create_issue(&repo, NewIssue::titled("x").labelled("bug"));

    let labels = client
        .add_labels(&issue, &["mosaic:failed".into(), "bug".into()])
        .await
        .unwrap();
    let names: Vec<_> = labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["bug", "mosaic:failed"]);
    let created = gitea
        .repo_labels(&repo)
        .into_iter()
        .find(|l| l.name == "mosaic:failed")
        .unwrap();
    assert_eq!(created.color, "d93f0b", "configured colour");

    // Adding again creates nothing new.
    client
        .add_labels(&issue, &["mosaic:failed".into()])
        .await
        .unwrap();
    assert_eq!(gitea.repo_labels(&repo).len(), 2);
    assert_eq!(
        gitea.count_requests("POST", "/labels"),
        2 + 1,
        "two adds, one creation"
    );

    // A default colour for labels not configured.
    client
        .add_labels(&issue, &["mosaic:queued".into()])
        .await
        .unwrap();
    let queued = gitea
        .repo_labels(&repo)
        .into_iter()
        .find(|l| l.name == "mosaic:queued")
        .unwrap();
    assert_eq!(queued.color, "1d76db");

    assert_eq!(
        client.remove_label(&issue, "mosaic:failed").await.unwrap(),
        LabelRemoval::Removed
    );
    assert_eq!(gitea.issue_labels(&issue), ["bug", "mosaic:queued"]);
    assert_eq!(
        client.remove_label(&issue, "never-existed").await.unwrap(),
        LabelRemoval::NotInRepository
    );
}

#[tokio::test]
async fn assignees_are_merged_because_the_patch_replaces_the_list() {
    let (gitea, client, repo) = setup().await;
    gitea.add_user("bob");
    let issue = gitea.create_issue(&repo, NewIssue::titled("x").assigned_to("alice"));

    let updated = client
        .update_assignees(&issue, &[BOT.into()], &[])
        .await
        .unwrap();
    assert_eq!(updated.assignee_logins(), ["alice", BOT]);
    assert_eq!(gitea.assignees(&issue), ["alice", BOT]);

    client
        .update_assignees(&issue, &["bob".into()], &["ALICE".into()])
        .await
        .unwrap();
    assert_eq!(gitea.assignees(&issue), [BOT, "bob"]);

    // Nothing to change: no PATCH is sent.
    gitea.clear_requests();
    client
        .update_assignees(&issue, &["Mosaic-Bot".into()], &["carol".into()])
        .await
        .unwrap();
    assert_eq!(gitea.count_requests("PATCH", "/issues/"), 0);

    let error = client
        .update_assignees(&issue, &["nobody-here".into()], &[])
        .await
        .unwrap_err();
    match error {
        GiteaError::Unprocessable {
            status: 422,
            message,
            ..
        } => assert!(message.contains("nobody-here"), "{message}"),
        other => panic!("expected 422, got {other:?}"),
    }
}

#[tokio::test]
async fn dependencies_blocks_and_the_disabled_feature() {
    let (gitea, client, repo) = setup().await;
    let blocker = gitea.create_issue(&repo, NewIssue::titled("schema"));
    let blocked = gitea.create_issue(&repo, NewIssue::titled("api"));
    let infra = repo_named("mosaic/infra");
    let cross = gitea.create_issue(&infra, NewIssue::titled("db server"));
    gitea.add_dependency(&blocked, &blocker);
    gitea.add_dependency(&blocked, &cross);

    match client.dependencies(&blocked).await.unwrap() {
        Dependencies::Listed(issues) => {
            let refs: Vec<_> = issues.iter().map(|i| i.issue_ref().unwrap()).collect();
            assert_eq!(refs, [blocker.clone(), cross.clone()]);
        }
        other => panic!("{other:?}"),
    }
    let blocks = client.blocks(&blocker).await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].issue_ref(), Some(blocked.clone()));
    assert!(client.blocks(&blocked).await.unwrap().is_empty());

    gitea.set_dependencies_enabled(&repo, false);
    assert_eq!(
        client.dependencies(&blocked).await.unwrap(),
        Dependencies::DependenciesDisabled
    );
    // A missing issue in such a repository is still "not found", not "disabled".
    let error = client
        .dependencies(&IssueRef::new(repo.clone(), 404))
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error:?}");
}

#[tokio::test]
async fn close_issue_sets_the_state() {
    let (gitea, client, repo) = setup().await;
    let issue = gitea.create_issue(&repo, NewIssue::titled("x"));
    let closed = client.close_issue(&issue).await.unwrap();
    assert_eq!(closed.state, IssueState::Closed);
    assert!(closed.closed_at.is_some());
    assert!(!gitea.issue(&issue).unwrap().is_open());
}

#[tokio::test]
async fn statuses_map_to_typed_errors() {
    let (gitea, client, repo) = setup().await;
    let issue = gitea.create_issue(&repo, NewIssue::titled("x"));

    gitea.fail_next("/issues/1", 500, 1);
    let error = client.get_issue(&issue).await.unwrap_err();
    assert!(
        matches!(error, GiteaError::Server { status: 500, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    // The failure was used up: the next call succeeds.
    client.get_issue(&issue).await.unwrap();

    gitea.inject_failure(InjectedFailure::new("/comments", 409, 1).for_method("POST"));
    let error = client.create_comment(&issue, "x").await.unwrap_err();
    assert!(
        matches!(error, GiteaError::Unprocessable { status: 409, .. }),
        "{error:?}"
    );

    let stranger = client_for_token(&gitea, "wrong-token");
    let error = stranger.get_issue(&issue).await.unwrap_err();
    assert!(
        matches!(error, GiteaError::Unauthorized { .. }),
        "{error:?}"
    );
    assert!(error.is_auth_failure());

    let reader = gitea.add_user("reader");
    gitea.set_permission(
        &repo,
        "reader",
        Permission {
            admin: false,
            push: false,
            pull: true,
        },
    );
    let reader = client_for_token(&gitea, &reader);
    reader.get_issue(&issue).await.unwrap();
    let error = reader.add_labels(&issue, &["a".into()]).await.unwrap_err();
    assert!(matches!(error, GiteaError::Forbidden { .. }), "{error:?}");
}

fn client_for_token(gitea: &MockGitea, token: &str) -> GiteaClient {
    client(gitea.base_url(), token)
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(&'static str, CallOutcome)>>);

impl CallObserver for Recorder {
    fn observe(&self, operation: &'static str, outcome: CallOutcome, _elapsed: Duration) {
        self.0.lock().unwrap().push((operation, outcome));
    }
}

#[tokio::test]
async fn the_observer_sees_every_call_with_its_status() {
    let (gitea, client, repo) = setup().await;
    let issue = gitea.create_issue(&repo, NewIssue::titled("x"));
    let recorder = Arc::new(Recorder::default());
    let client = client.with_observer(recorder.clone());
    client.get_issue(&issue).await.unwrap();
    client.get_issue(&IssueRef::new(repo, 9)).await.unwrap_err();
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            ("issue.get", CallOutcome::Status(200)),
            ("issue.get", CallOutcome::Status(404))
        ]
    );
}

#[tokio::test]
async fn bot_identity_against_the_mock() {
    let (gitea, client, _) = setup().await;
    let identity = BotIdentity::resolve(&client, Some(BOT)).await.unwrap();
    assert_eq!(identity.login(), BOT);

    let error = BotIdentity::resolve(&client, Some("other-bot"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, IdentityError::UsernameMismatch { .. }),
        "{error}"
    );
    assert!(error.is_fatal());

    let error = BotIdentity::resolve(&client_for_token(&gitea, "revoked"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, IdentityError::TokenRejected { status: 401, .. }),
        "{error}"
    );

    gitea.fail_next("/api/v1/user", 503, 1);
    let error = BotIdentity::resolve(&client, None).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test]
async fn install_webhook_creates_then_updates_one_hook() {
    let (gitea, client, repo) = setup().await;
    let url = Url::parse("https://mosaic.example/webhook/gitea").unwrap();

    let first = install_webhook(&client, &repo, &url, &Secret::new("s3cret"))
        .await
        .unwrap();
    assert!(matches!(first, WebhookInstall::Created(_)));
    let hooks = gitea.hooks(&repo);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].secret, "s3cret");
    assert_eq!(hooks[0].hook.kind, "gitea");
    assert_eq!(hooks[0].hook.content_type(), Some("json"));
    assert_eq!(hooks[0].hook.events, WEBHOOK_EVENTS);
    assert!(hooks[0].hook.active);
    assert!(
        !first.hook().config.contains_key("secret"),
        "Gitea never returns secrets"
    );

    let second = install_webhook(&client, &repo, &url, &Secret::new("rotated"))
        .await
        .unwrap();
    assert!(matches!(second, WebhookInstall::Updated(_)));
    assert_eq!(second.hook().id, first.hook().id);
    let hooks = gitea.hooks(&repo);
    assert_eq!(hooks.len(), 1, "idempotent: still one hook");
    assert_eq!(hooks[0].secret, "rotated");

    let error = install_webhook(&client, &repo, &url, &Secret::new(""))
        .await
        .unwrap_err();
    assert!(matches!(error, GiteaError::InvalidRequest(_)), "{error:?}");
}

#[tokio::test]
async fn check_reports_token_repositories_and_hooks() {
    let (gitea, client, repo) = setup().await;
    let infra = repo_named("mosaic/infra");
    gitea.create_repo(&infra);
    gitea.set_dependencies_enabled(&infra, false);
    gitea.set_permission(
        &infra,
        BOT,
        Permission {
            admin: false,
            push: true,
            pull: true,
        },
    );
    let missing = repo_named("mosaic/missing");
    let url = Url::parse("https://mosaic.example/webhook/gitea").unwrap();
    let repos = [repo.clone(), infra.clone(), missing.clone()];

    let before = check(&client, Some(BOT), &repos, Some(&url)).await;
    assert_eq!(
        before.token,
        TokenCheck::Works {
            login: BOT.into(),
            matches_expected: Some(true)
        }
    );
    assert_eq!(before.repositories[0].hook, HookCheck::Missing);
    assert_eq!(before.repositories[1].hook, HookCheck::NotPermitted);
    assert_eq!(before.repositories[1].dependencies_enabled, Some(false));
    assert_eq!(before.repositories[2].access, RepoAccess::NotFound);
    assert!(!before.is_ok());

    install_webhook(&client, &repo, &url, &Secret::new("s"))
        .await
        .unwrap();
    let after = check(&client, Some(BOT), std::slice::from_ref(&repo), Some(&url)).await;
    assert!(after.repositories[0].hook.is_ok(), "{after}");
    assert!(after.is_ok(), "{after}");

    let port = gitea.base_url().port().unwrap().to_string();
    insta::assert_snapshot!(
        "check_report_with_problems",
        before.to_string().replace(&port, "PORT")
    );
    insta::assert_snapshot!("check_report_ok", after.to_string().replace(&port, "PORT"));

    let anonymous = GiteaClient::new(&GiteaConfig::new(gitea.base_url().clone(), None)).unwrap();
    let report = check(&anonymous, None, &[], None).await;
    assert_eq!(report.token, TokenCheck::NotConfigured);
    assert!(!report.is_ok());
}

#[tokio::test]
async fn the_trait_object_serves_the_engine() {
    let (gitea, client, repo) = setup().await;
    let issue = gitea.create_issue(&repo, NewIssue::titled("x").assigned_to(BOT));
    let api: Arc<dyn GiteaApi> = Arc::new(client);
    assert!(api.get_issue(&issue).await.unwrap().is_assigned_to(BOT));
    let queued = api
        .create_managed_label(&repo, "mosaic:queued")
        .await
        .unwrap();
    let listed = api.list_labels(&repo).await.unwrap();
    assert!(listed.iter().any(|l| l.id == queued.id), "{listed:?}");
    let bug = api.create_managed_label(&repo, "bug").await.unwrap();
    let labels = api
        .add_label_ids(&issue, &[queued.id, bug.id])
        .await
        .unwrap();
    assert_eq!(labels.len(), 2, "{labels:?}");
    // PUT replaces the issue's labels in one call.
    let labels = api.replace_labels(&issue, &[bug.id]).await.unwrap();
    assert_eq!(
        labels.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["bug"]
    );
    // An id the repository does not have: 422, as Gitea answers.
    let error = api.add_label_ids(&issue, &[999_999]).await.unwrap_err();
    assert_eq!(error.status(), Some(422), "{error}");
    api.close_issue(&issue).await.unwrap();
    assert_eq!(gitea.issue_labels(&issue), ["bug"]);
}

#[tokio::test]
async fn repository_shows_its_clone_url_and_default_branch() {
    let (gitea, client, repo) = setup().await;
    let api: &dyn GiteaApi = &client;
    let shown = api.repository(&repo).await.unwrap();
    assert_eq!(
        shown.clone_url, "",
        "no git server behind the mock unless set"
    );
    assert_eq!(shown.default_branch, "main");
    gitea.set_clone_url(&repo, "http://127.0.0.1:1/git/r.git");
    gitea.set_default_branch(&repo, "trunk");
    let shown = api.repository(&repo).await.unwrap();
    assert_eq!(shown.clone_url, "http://127.0.0.1:1/git/r.git");
    assert_eq!(shown.default_branch, "trunk");
}

#[tokio::test]
async fn a_pull_request_is_opened_once_found_by_its_branches_and_edited() {
    let (gitea, client, repo) = setup().await;
    let issue = gitea.create_issue(&repo, NewIssue::titled("Add caching"));
    let api: &dyn GiteaApi = &client;
    let pull = mosaic_gitea::CreatePullRequestOption {
        head: "mosaic/1-add-caching".into(),
        base: "main".into(),
        title: "Add caching".into(),
        body: "Closes #1".into(),
    };
    let opened = api.create_pull_request(&repo, &pull).await.unwrap();
    // Pull requests share the issues' numbers.
    assert_eq!(opened.number, issue.number + 1);
    assert_eq!(opened.head.name, "mosaic/1-add-caching");
    assert_eq!(opened.base.name, "main");

    let again = api.create_pull_request(&repo, &pull).await.unwrap_err();
    assert_eq!(again.status(), Some(409), "{again:?}");
    assert!(!again.is_retryable());

    let found = api
        .pull_request_by_branches(&repo, "main", "mosaic/1-add-caching")
        .await
        .unwrap();
    assert_eq!(found.number, opened.number);
    let edited = api
        .edit_pull_request(
            &repo,
            found.number,
            &mosaic_gitea::EditPullRequestOption {
                title: None,
                body: Some("Closes #1\n\nupdated".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(edited.body, "Closes #1\n\nupdated");
    let stored = gitea.pull_requests(&repo);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, "Closes #1\n\nupdated");
    assert_eq!(stored[0].title, "Add caching");

    let missing = api
        .pull_request_by_branches(&repo, "main", "mosaic/2-other")
        .await
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
}
