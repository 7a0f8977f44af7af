//! The mock's HTTP surface: Gitea's routes, status codes and JSON shapes for the calls the
//! coordinator makes. Every route requires a token (`Authorization: token …`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use mosaic_domain::{IssueRef, RepoName};
use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

use super::state::{MockHook, RecordedRequest, State, now};
use crate::types::{
    Comment, CommitStatus, CommitStatusState, Hook, IssueState, Label, Permission, PullRequest,
    PullRequestBranch, User,
};

pub(crate) type Shared = Arc<Mutex<State>>;

pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A handler that panicked mid-update cannot exist (no panics in this code); if one did,
    // the data is still the best view of the mock there is.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn router(shared: Shared) -> Router {
    let api = Router::new()
        .route("/user", get(current_user))
        .route("/repos/issues/search", get(search_issues))
        .route("/repos/{owner}/{repo}", get(get_repo))
        .route("/repos/{owner}/{repo}/issues", get(list_issues))
        .route(
            "/repos/{owner}/{repo}/issues/{index}",
            get(get_issue).patch(edit_issue),
        )
        .route(
            "/repos/{owner}/{repo}/issues/{index}/comments",
            get(list_comments).post(create_comment),
        )
        .route(
            "/repos/{owner}/{repo}/issues/comments/{id}",
            patch(edit_comment),
        )
        .route(
            "/repos/{owner}/{repo}/labels",
            get(list_labels).post(create_label),
        )
        .route(
            "/repos/{owner}/{repo}/issues/{index}/labels",
            get(list_issue_labels)
                .post(add_issue_labels)
                .put(replace_issue_labels),
        )
        .route(
            "/repos/{owner}/{repo}/issues/{index}/labels/{id}",
            delete(remove_issue_label),
        )
        .route(
            "/repos/{owner}/{repo}/issues/{index}/dependencies",
            get(list_dependencies),
        )
        .route(
            "/repos/{owner}/{repo}/issues/{index}/blocks",
            get(list_blocks),
        )
        .route(
            "/repos/{owner}/{repo}/hooks",
            get(list_hooks).post(create_hook),
        )
        .route("/repos/{owner}/{repo}/hooks/{id}", patch(edit_hook))
        .route("/repos/{owner}/{repo}/statuses/{sha}", post(create_status))
        .route("/repos/{owner}/{repo}/pulls", post(create_pull))
        .route("/repos/{owner}/{repo}/pulls/{index}", patch(edit_pull))
        .route(
            "/repos/{owner}/{repo}/pulls/{base}/{head}",
            get(pull_by_branches),
        );
    Router::new()
        .nest("/api/v1", api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            record_and_inject,
        ))
        .with_state(shared)
}

/// Records every request and answers injected failures before the route runs.
async fn record_and_inject(
    AxumState(shared): AxumState<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let authenticated = request.headers().contains_key(header::AUTHORIZATION);
    let latency = lock(&shared).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let injected = {
        let mut state = lock(&shared);
        let position = state.failures.iter().position(|f| {
            f.times > 0
                && f.method.as_ref().is_none_or(|m| *m == method)
                && path.contains(&f.path_contains)
        });
        position.map(|i| {
            let failure = &mut state.failures[i];
            failure.times -= 1;
            let answer = failure.clone();
            if failure.times == 0 {
                state.failures.remove(i);
            }
            answer
        })
    };
    let response = match injected {
        Some(failure) => {
            if let Some(delay) = failure.delay {
                tokio::time::sleep(delay).await;
            }
            let status =
                StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = error(status, "injected failure").into_response();
            if let Some(value) = failure
                .retry_after
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        None => next.run(request).await,
    };
    lock(&shared).requests.push(RecordedRequest {
        method,
        path,
        query,
        authenticated,
        status: response.status().as_u16(),
    });
    response
}

/// A failed call, answered like Gitea: `{"message": …, "url": …}` with the status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"message": self.message, "url": "https://docs.gitea.com/api/"})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, message: &str) -> ApiError {
    ApiError {
        status,
        message: message.to_owned(),
    }
}

fn json_status<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

fn authenticate(state: &State, headers: &HeaderMap) -> Result<User, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "token is required"))?;
    let token = value
        .strip_prefix("token ")
        .or_else(|| value.strip_prefix("Bearer "))
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unsupported authorization scheme"))?;
    state
        .tokens
        .get(token.trim())
        .and_then(|login| state.users.get(login))
        .cloned()
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "user does not exist [uid: 0, name: ]",
            )
        })
}

/// The repository, when it exists and the user may read it (Gitea answers 404 otherwise).
fn readable_repo(
    state: &State,
    user: &User,
    owner: &str,
    name: &str,
) -> Result<(RepoName, Permission), ApiError> {
    let repo = RepoName::new(owner, name)
        .map_err(|_| error(StatusCode::NOT_FOUND, "repository not found"))?;
    if !state.repos.contains_key(&repo) {
        return Err(error(StatusCode::NOT_FOUND, "repository not found"));
    }
    let permission = state.permission(&repo, &user.login);
    if !permission.pull {
        return Err(error(StatusCode::NOT_FOUND, "repository not found"));
    }
    Ok((repo, permission))
}

fn writable_repo(
    state: &State,
    user: &User,
    owner: &str,
    name: &str,
) -> Result<RepoName, ApiError> {
    let (repo, permission) = readable_repo(state, user, owner, name)?;
    if permission.push || permission.admin {
        Ok(repo)
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            "user should have write permission on issues",
        ))
    }
}

fn admin_repo(state: &State, user: &User, owner: &str, name: &str) -> Result<RepoName, ApiError> {
    let (repo, permission) = readable_repo(state, user, owner, name)?;
    if permission.admin {
        Ok(repo)
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            "user should be an owner or a collaborator with admin write of a repository",
        ))
    }
}

fn existing_issue(state: &State, repo: &RepoName, index: &str) -> Result<IssueRef, ApiError> {
    let number: u64 = index
        .parse()
        .map_err(|_| error(StatusCode::NOT_FOUND, "issue does not exist"))?;
    let exists = state
        .repos
        .get(repo)
        .is_some_and(|r| r.issues.contains_key(&number));
    if exists {
        Ok(IssueRef::new(repo.clone(), number))
    } else {
        Err(error(StatusCode::NOT_FOUND, "issue does not exist"))
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("invalid JSON body: {e}"),
        )
    })
}

/// Gitea's paging: `page` (1-based), `limit` capped at `MAX_RESPONSE_ITEMS`, `Link` with
/// next/last/first/prev and `X-Total-Count`.
fn paginate<T: Serialize>(
    state: &State,
    path: &str,
    query: &HashMap<String, String>,
    items: &[T],
) -> Response {
    let page = query
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let limit = match query.get("limit").and_then(|l| l.parse::<usize>().ok()) {
        None | Some(0) => state.default_page_size,
        Some(limit) => limit.min(state.max_page_size),
    }
    .max(1);
    let total = items.len();
    let start = (page - 1).saturating_mul(limit).min(total);
    let end = start.saturating_add(limit).min(total);
    let last_page = total.div_ceil(limit).max(1);

    let link_to = |target: usize, rel: &str| -> Option<String> {
        let mut url = Url::parse(&format!("{}{path}", state.base_url)).ok()?;
        {
            let mut pairs = url.query_pairs_mut();
            let mut sorted: Vec<(&String, &String)> = query
                .iter()
                .filter(|(k, _)| k.as_str() != "page" && k.as_str() != "limit")
                .collect();
            sorted.sort();
            for (key, value) in sorted {
                pairs.append_pair(key, value);
            }
            pairs.append_pair("limit", &limit.to_string());
            pairs.append_pair("page", &target.to_string());
        }
        Some(format!("<{url}>; rel=\"{rel}\""))
    };
    let mut links = Vec::new();
    if page < last_page {
        links.extend(link_to(page + 1, "next"));
        links.extend(link_to(last_page, "last"));
    }
    if page > 1 {
        links.extend(link_to(1, "first"));
        links.extend(link_to(page - 1, "prev"));
    }
    let mut response = json_status(StatusCode::OK, &&items[start..end]);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&total.to_string()) {
        headers.insert("x-total-count", value);
    }
    if !links.is_empty()
        && let Ok(value) = HeaderValue::from_str(&links.join(","))
    {
        headers.insert(header::LINK, value);
    }
    response
}

fn matches_labels(issue_labels: &[Label], wanted: Option<&String>) -> bool {
    match wanted {
        None => true,
        Some(list) if list.trim().is_empty() => true,
        Some(list) => list
            .split(',')
            .map(str::trim)
            .any(|name| issue_labels.iter().any(|l| l.name == name)),
    }
}

fn matches_state(state: IssueState, wanted: Option<&String>) -> bool {
    match wanted.map(String::as_str) {
        Some("all") => true,
        Some("closed") => state == IssueState::Closed,
        _ => state == IssueState::Open,
    }
}

// ---- handlers ----

async fn current_user(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    Ok(json_status(StatusCode::OK, &user))
}

async fn get_repo(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    state
        .repository(&repo, &user.login)
        .map(|r| json_status(StatusCode::OK, &r))
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "repository not found"))
}

async fn list_issues(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    let assignee = match query.get("assigned_by").filter(|a| !a.is_empty()) {
        Some(login) => Some(
            state
                .user(login)
                .map(|u| u.login.clone())
                .ok_or_else(|| error(StatusCode::NOT_FOUND, "user does not exist"))?,
        ),
        None => None,
    };
    if query.get("type").is_some_and(|t| t == "pulls") {
        // The mock holds no pull requests.
        return Ok(paginate::<crate::types::Issue>(
            &state,
            &format!("/api/v1/repos/{repo}/issues"),
            &query,
            &[],
        ));
    }
    let numbers: Vec<u64> = state
        .repos
        .get(&repo)
        .map(|r| r.issues.keys().copied().collect())
        .unwrap_or_default();
    // Gitea lists newest first.
    let issues: Vec<_> = numbers
        .into_iter()
        .rev()
        .filter_map(|n| state.render_issue(&repo, n))
        .filter(|i| matches_state(i.state, query.get("state")))
        .filter(|i| matches_labels(&i.labels, query.get("labels")))
        .filter(|i| assignee.as_ref().is_none_or(|a| i.is_assigned_to(a)))
        .collect();
    Ok(paginate(
        &state,
        &format!("/api/v1/repos/{repo}/issues"),
        &query,
        &issues,
    ))
}

async fn search_issues(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let assigned_only = query.get("assigned").is_some_and(|a| a == "true");
    let mut issues = Vec::new();
    for (repo, stored) in &state.repos {
        if !state.permission(repo, &user.login).pull {
            continue;
        }
        for number in stored.issues.keys().rev() {
            if let Some(issue) = state.render_issue(repo, *number)
                && matches_state(issue.state, query.get("state"))
                && matches_labels(&issue.labels, query.get("labels"))
                && (!assigned_only || issue.is_assigned_to(&user.login))
            {
                issues.push(issue);
            }
        }
    }
    Ok(paginate(
        &state,
        "/api/v1/repos/issues/search",
        &query,
        &issues,
    ))
}

async fn get_issue(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    let issue = existing_issue(&state, &repo, &index)?;
    state
        .render_issue(&issue.repo, issue.number)
        .map(|i| json_status(StatusCode::OK, &i))
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "issue does not exist"))
}

async fn edit_issue(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = writable_repo(&state, &user, &owner, &name)?;
    let issue = existing_issue(&state, &repo, &index)?;
    let edit = parse_body(&body)?;
    let assignees = match edit.get("assignees") {
        Some(Value::Array(list)) => {
            let mut logins = Vec::new();
            for login in list {
                let login = login.as_str().unwrap_or_default();
                let user = state.user(login).ok_or_else(|| {
                    error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &format!("user does not exist [name: {login}]"),
                    )
                })?;
                logins.push(user.login.clone());
            }
            Some(logins)
        }
        Some(Value::Null) | None => None,
        Some(_) => {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "assignees must be a list",
            ));
        }
    };
    let new_state = match edit.get("state").and_then(Value::as_str) {
        Some("open") => Some(IssueState::Open),
        Some("closed") => Some(IssueState::Closed),
        Some(other) => {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("unknown state `{other}`"),
            ));
        }
        None => None,
    };
    let stored = state
        .issue_mut(&issue)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "issue does not exist"))?;
    if let Some(title) = edit.get("title").and_then(Value::as_str) {
        title.clone_into(&mut stored.title);
    }
    if let Some(body) = edit.get("body").and_then(Value::as_str) {
        body.clone_into(&mut stored.body);
    }
    if let Some(assignees) = assignees {
        stored.assignees = assignees;
    }
    if let Some(new_state) = new_state {
        if new_state != stored.state {
            stored.closed_at = (new_state == IssueState::Closed).then(now);
        }
        stored.state = new_state;
    }
    stored.updated_at = now();
    state
        .render_issue(&issue.repo, issue.number)
        .map(|i| json_status(StatusCode::CREATED, &i))
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "issue does not exist"))
}

async fn list_comments(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    let issue = existing_issue(&state, &repo, &index)?;
    let comments = state
        .issue_mut(&issue)
        .map(|i| i.comments.clone())
        .unwrap_or_default();
    // Gitea sends every comment at once, with the count in X-Total-Count.
    let mut response = json_status(StatusCode::OK, &comments);
    if let Ok(value) = HeaderValue::from_str(&comments.len().to_string()) {
        response.headers_mut().insert("x-total-count", value);
    }
    Ok(response)
}

async fn create_comment(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    let issue = existing_issue(&state, &repo, &index)?;
    let text = parse_body(&body)?
        .get("body")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| error(StatusCode::UNPROCESSABLE_ENTITY, "Body: Required"))?;
    let id = state.next_id();
    let created = now();
    let base = state.base_url.clone();
    let comment = Comment {
        id,
        html_url: format!("{base}/{repo}/issues/{}#issuecomment-{id}", issue.number),
        issue_url: format!("{base}/{repo}/issues/{}", issue.number),
        user,
        body: text,
        created_at: created,
        updated_at: created,
    };
    let stored = state
        .issue_mut(&issue)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "issue does not exist"))?;
    stored.comments.push(comment.clone());
    stored.updated_at = created;
    Ok(json_status(StatusCode::CREATED, &comment))
}

async fn edit_comment(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, permission) = readable_repo(&state, &user, &owner, &name)?;
    let id: i64 = id
        .parse()
        .map_err(|_| error(StatusCode::NOT_FOUND, "comment does not exist"))?;
    let text = parse_body(&body)?
        .get("body")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| error(StatusCode::UNPROCESSABLE_ENTITY, "Body: Required"))?;
    let stored_repo = state
        .repos
        .get_mut(&repo)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "repository not found"))?;
    let comment = stored_repo
        .issues
        .values_mut()
        .flat_map(|i| i.comments.iter_mut())
        .find(|c| c.id == id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "comment does not exist"))?;
    if !comment.user.is(&user.login) && !permission.push {
        return Err(error(
            StatusCode::FORBIDDEN,
            "only the poster or a writer may edit a comment",
        ));
    }
    comment.body = text;
    comment.updated_at = now();
    Ok(json_status(StatusCode::OK, &comment.clone()))
}

async fn list_labels(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    let labels = state
        .repos
        .get(&repo)
        .map(|r| r.labels.clone())
        .unwrap_or_default();
    Ok(paginate(
        &state,
        &format!("/api/v1/repos/{repo}/labels"),
        &query,
        &labels,
    ))
}

async fn create_label(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = writable_repo(&state, &user, &owner, &name)?;
    let option = parse_body(&body)?;
    let label_name = option
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| error(StatusCode::UNPROCESSABLE_ENTITY, "Name: Required"))?
        .to_owned();
    let colour = option
        .get("color")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let colour = crate::config::normalise_colour(colour)
        .ok_or_else(|| error(StatusCode::UNPROCESSABLE_ENTITY, "Color: invalid color"))?;
    let id = state.next_id();
    let label = Label {
        id,
        name: label_name,
        color: colour.trim_start_matches('#').to_owned(),
        description: option
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        exclusive: false,
        is_archived: false,
        url: format!("{}/api/v1/repos/{repo}/labels/{id}", state.base_url),
    };
    // Like Gitea, nothing stops two labels with one name; the client avoids creating them.
    state.ensure_repo(&repo).labels.push(label.clone());
    Ok(json_status(StatusCode::CREATED, &label))
}

async fn list_issue_labels(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    let issue = existing_issue(&state, &repo, &index)?;
    let labels = state
        .render_issue(&issue.repo, issue.number)
        .map(|i| i.labels)
        .unwrap_or_default();
    Ok(json_status(StatusCode::OK, &labels))
}

async fn add_issue_labels(
    shared: AxumState<Shared>,
    headers: HeaderMap,
    path: Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    set_issue_labels(shared, headers, path, body, false)
}

/// `PUT …/labels`: the issue's labels become exactly the given ones.
async fn replace_issue_labels(
    shared: AxumState<Shared>,
    headers: HeaderMap,
    path: Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    set_issue_labels(shared, headers, path, body, true)
}

fn set_issue_labels(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
    body: Bytes,
    replace: bool,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = writable_repo(&state, &user, &owner, &name)?;
    let issue = existing_issue(&state, &repo, &index)?;
    let option = parse_body(&body)?;
    let wanted = option
        .get("labels")
        .and_then(Value::as_array)
        .ok_or_else(|| error(StatusCode::UNPROCESSABLE_ENTITY, "Labels: Required"))?;
    let repo_labels = state
        .repos
        .get(&repo)
        .map(|r| r.labels.clone())
        .unwrap_or_default();
    // Ids, or names (Gitea 1.19+).
    let mut ids = Vec::new();
    for item in wanted {
        let found = repo_labels.iter().find(|l| match item {
            Value::Number(n) => n.as_i64() == Some(l.id),
            Value::String(s) => *s == l.name,
            _ => false,
        });
        match found {
            Some(label) => ids.push(label.id),
            None => {
                return Err(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("label does not exist [{item}]"),
                ));
            }
        }
    }
    let stored = state
        .issue_mut(&issue)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "issue does not exist"))?;
    if replace {
        stored.label_ids.clear();
    }
    for id in ids {
        if !stored.label_ids.contains(&id) {
            stored.label_ids.push(id);
        }
    }
    stored.updated_at = now();
    let labels = state
        .render_issue(&issue.repo, issue.number)
        .map(|i| i.labels)
        .unwrap_or_default();
    Ok(json_status(StatusCode::OK, &labels))
}

async fn remove_issue_label(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index, id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = writable_repo(&state, &user, &owner, &name)?;
    let issue = existing_issue(&state, &repo, &index)?;
    let id: i64 = id
        .parse()
        .map_err(|_| error(StatusCode::UNPROCESSABLE_ENTITY, "label does not exist"))?;
    let known = state
        .repos
        .get(&repo)
        .is_some_and(|r| r.labels.iter().any(|l| l.id == id));
    if !known {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("label does not exist [label_id: {id}]"),
        ));
    }
    if let Some(stored) = state.issue_mut(&issue) {
        stored.label_ids.retain(|l| *l != id);
        stored.updated_at = now();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_dependencies(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    // Like Gitea: a disabled feature answers 404 before the issue is even looked up.
    if !state
        .repos
        .get(&repo)
        .is_some_and(|r| r.dependencies_enabled)
    {
        return Err(error(StatusCode::NOT_FOUND, "not found"));
    }
    let issue = existing_issue(&state, &repo, &index)?;
    let blockers = state
        .issue_mut(&issue)
        .map(|i| i.blocked_by.clone())
        .unwrap_or_default();
    let issues: Vec<_> = blockers
        .iter()
        .filter_map(|b| state.render_issue(&b.repo, b.number))
        .collect();
    Ok(paginate(
        &state,
        &format!("/api/v1/repos/{repo}/issues/{}/dependencies", issue.number),
        &query,
        &issues,
    ))
}

async fn list_blocks(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    let issue = existing_issue(&state, &repo, &index)?;
    let mut blocked = Vec::new();
    for (other_repo, stored) in &state.repos {
        for (number, other) in &stored.issues {
            if other.blocked_by.contains(&issue)
                && let Some(rendered) = state.render_issue(other_repo, *number)
            {
                blocked.push(rendered);
            }
        }
    }
    Ok(paginate(
        &state,
        &format!("/api/v1/repos/{repo}/issues/{}/blocks", issue.number),
        &query,
        &blocked,
    ))
}

async fn list_hooks(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = admin_repo(&state, &user, &owner, &name)?;
    let hooks: Vec<Hook> = state
        .repos
        .get(&repo)
        .map(|r| r.hooks.iter().map(|h| h.hook.clone()).collect())
        .unwrap_or_default();
    Ok(paginate(
        &state,
        &format!("/api/v1/repos/{repo}/hooks"),
        &query,
        &hooks,
    ))
}

const HOOK_TYPES: [&str; 4] = ["gitea", "forgejo", "gogs", "slack"];

fn hook_config(value: Option<&Value>) -> Result<HashMap<String, String>, ApiError> {
    let Some(Value::Object(map)) = value else {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "Config: Required"));
    };
    Ok(map
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
        .collect())
}

fn string_list(value: Option<&Value>) -> Option<Vec<String>> {
    value.and_then(Value::as_array).map(|items| {
        items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    })
}

async fn create_hook(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = admin_repo(&state, &user, &owner, &name)?;
    let option = parse_body(&body)?;
    let kind = option
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !HOOK_TYPES.contains(&kind.as_str()) {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid hook type"));
    }
    let mut config = hook_config(option.get("config"))?;
    let url = config
        .get("url")
        .filter(|u| Url::parse(u).is_ok())
        .cloned()
        .ok_or_else(|| {
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Missing config option: url",
            )
        })?;
    let content_type = config
        .get("content_type")
        .filter(|c| matches!(c.as_str(), "json" | "form"))
        .cloned()
        .ok_or_else(|| error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid content type"))?;
    let secret = config.remove("secret").unwrap_or_default();
    let id = state.next_id();
    let created = now();
    let hook = Hook {
        id,
        kind,
        config: [
            ("url".to_owned(), url),
            ("content_type".to_owned(), content_type),
        ]
        .into_iter()
        .collect(),
        events: string_list(option.get("events")).unwrap_or_else(|| vec!["push".to_owned()]),
        active: option
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        branch_filter: option
            .get("branch_filter")
            .and_then(Value::as_str)
            .unwrap_or("*")
            .to_owned(),
        created_at: Some(created),
        updated_at: Some(created),
    };
    state.ensure_repo(&repo).hooks.push(MockHook {
        hook: hook.clone(),
        secret,
    });
    Ok(json_status(StatusCode::CREATED, &hook))
}

async fn edit_hook(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = admin_repo(&state, &user, &owner, &name)?;
    let id: i64 = id
        .parse()
        .map_err(|_| error(StatusCode::NOT_FOUND, "hook does not exist"))?;
    let option = parse_body(&body)?;
    let config = match option.get("config") {
        None | Some(Value::Null) => None,
        other => Some(hook_config(other)?),
    };
    let stored = state
        .repos
        .get_mut(&repo)
        .and_then(|r| r.hooks.iter_mut().find(|h| h.hook.id == id))
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "hook does not exist"))?;
    if let Some(mut config) = config {
        if let Some(secret) = config.remove("secret") {
            stored.secret = secret;
        }
        for key in ["url", "content_type"] {
            if let Some(value) = config.remove(key) {
                stored.hook.config.insert(key.to_owned(), value);
            }
        }
    }
    if let Some(events) = string_list(option.get("events")) {
        stored.hook.events = events;
    }
    if let Some(active) = option.get("active").and_then(Value::as_bool) {
        stored.hook.active = active;
    }
    stored.hook.updated_at = Some(now());
    Ok(json_status(StatusCode::OK, &stored.hook.clone()))
}

fn required_text(body: &Value, key: &str) -> Result<String, ApiError> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .filter(|text| !text.trim().is_empty())
        .ok_or_else(|| {
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("{key}: Required"),
            )
        })
}

/// `POST /repos/{owner}/{repo}/statuses/{sha}`: `state` one of Gitea's five, `context` given
/// (Gitea would default it; the coordinator always names one).
async fn create_status(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, sha)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = writable_repo(&state, &user, &owner, &name)?;
    let body = parse_body(&body)?;
    let status_state: CommitStatusState = body
        .get("state")
        .cloned()
        .and_then(|value| serde_json::from_value(value).ok())
        .ok_or_else(|| error(StatusCode::UNPROCESSABLE_ENTITY, "state: invalid"))?;
    let context = required_text(&body, "context")?;
    if sha.len() < 7 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(error(StatusCode::NOT_FOUND, "commit does not exist"));
    }
    let id = state.next_id();
    let status = CommitStatus {
        id,
        state: status_state,
        context,
        description: body
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    };
    state
        .ensure_repo(&repo)
        .statuses
        .entry(sha)
        .or_default()
        .push(status.clone());
    Ok(json_status(StatusCode::CREATED, &status))
}

/// `POST /repos/{owner}/{repo}/pulls`: 409 when an open pull request from `head` into `base`
/// exists, as Gitea answers.
async fn create_pull(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = writable_repo(&state, &user, &owner, &name)?;
    let body = parse_body(&body)?;
    let head = required_text(&body, "head")?;
    let base = required_text(&body, "base")?;
    let title = required_text(&body, "title")?;
    let text = body
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let exists = state.repos.get(&repo).is_some_and(|r| {
        r.pulls.iter().any(|pull| {
            pull.state == IssueState::Open && pull.head.name == head && pull.base.name == base
        })
    });
    if exists {
        return Err(error(
            StatusCode::CONFLICT,
            "pull request already exists for these targets",
        ));
    }
    let id = state.next_id();
    let base_url = state.base_url.clone();
    let stored = state.ensure_repo(&repo);
    let number = stored.next_number;
    stored.next_number += 1;
    let pull = PullRequest {
        id,
        number,
        title,
        body: text,
        html_url: format!("{base_url}/{repo}/pulls/{number}"),
        state: IssueState::Open,
        head: PullRequestBranch {
            name: head,
            sha: String::new(),
        },
        base: PullRequestBranch {
            name: base,
            sha: String::new(),
        },
    };
    stored.pulls.push(pull.clone());
    Ok(json_status(StatusCode::CREATED, &pull))
}

/// `GET /repos/{owner}/{repo}/pulls/{base}/{head}` (the newest such pull request).
async fn pull_by_branches(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, base, head)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let (repo, _) = readable_repo(&state, &user, &owner, &name)?;
    state
        .repos
        .get(&repo)
        .and_then(|r| {
            r.pulls
                .iter()
                .rev()
                .find(|pull| pull.head.name == head && pull.base.name == base)
        })
        .map(|pull| json_status(StatusCode::OK, pull))
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "pull request does not exist"))
}

/// `PATCH /repos/{owner}/{repo}/pulls/{index}`: title and body.
async fn edit_pull(
    AxumState(shared): AxumState<Shared>,
    headers: HeaderMap,
    Path((owner, name, index)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut state = lock(&shared);
    let user = authenticate(&state, &headers)?;
    let repo = writable_repo(&state, &user, &owner, &name)?;
    let body = parse_body(&body)?;
    let number: u64 = index
        .parse()
        .map_err(|_| error(StatusCode::NOT_FOUND, "pull request does not exist"))?;
    let pull = state
        .repos
        .get_mut(&repo)
        .and_then(|r| r.pulls.iter_mut().find(|pull| pull.number == number))
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "pull request does not exist"))?;
    if let Some(title) = body.get("title").and_then(Value::as_str) {
        title.clone_into(&mut pull.title);
    }
    if let Some(text) = body.get("body").and_then(Value::as_str) {
        text.clone_into(&mut pull.body);
    }
    Ok(json_status(StatusCode::OK, &pull.clone()))
}
