//! A scripted stand-in for the Anthropic Messages API, for tests that run the real Claude Code CLI
//! (and, in [`responses`], one for the OpenAI Responses API that drives the real Codex CLI).
//!
//! The CLI is pointed at [`StandinHandle::base_url`] through `ANTHROPIC_BASE_URL`. Each main
//! conversation call (`POST /v1/messages`) is answered by the next [`Step`] of the [`Script`],
//! streamed as the documented server-sent events (or as one JSON message when the request does not
//! stream). Compaction summaries, auxiliary calls (a one-token probe, a title, token counting) and
//! calls after the script ran out are answered without consuming steps. Every request is logged.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The text the CLI puts at the start of its last user message when it asks for a compaction
/// summary (measured with Claude Code 2.1.328).
pub const COMPACTION_PROMPT_PREFIX: &str = "CRITICAL: Respond with TEXT ONLY";

/// The text answered once the script is exhausted.
pub const EXHAUSTED_TEXT: &str = "done";

/// Token figures one answer reports, as the Messages API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// The context the answer occupies: everything the model read.
    pub fn context_tokens(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
    }
}

/// One content block of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    /// A tool call: `name` is the CLI's tool (`Write`, `Bash`, …), `input` its JSON arguments.
    ToolUse {
        name: String,
        input: Value,
    },
}

impl Block {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    pub fn tool_use(name: impl Into<String>, input: Value) -> Self {
        Self::ToolUse {
            name: name.into(),
            input,
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
}

impl StopReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::EndTurn => "end_turn",
            Self::ToolUse => "tool_use",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub usage: Usage,
    pub blocks: Vec<Block>,
    pub stop_reason: StopReason,
}

impl Reply {
    /// A plain text answer that ends the turn.
    pub fn text(text: impl Into<String>, usage: Usage) -> Self {
        Self {
            usage,
            blocks: vec![Block::text(text)],
            stop_reason: StopReason::EndTurn,
        }
    }

    /// An answer that calls tools; the CLI runs them and calls again with the results.
    pub fn tool_calls(blocks: Vec<Block>, usage: Usage) -> Self {
        Self {
            usage,
            blocks,
            stop_reason: StopReason::ToolUse,
        }
    }
}

/// What one main-conversation Messages call gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Reply(Reply),
    /// An HTTP error with an Anthropic-shaped error body:
    /// `{"type":"error","error":{"type":error_type,"message":message}}`.
    HttpError {
        status: u16,
        error_type: String,
        message: String,
    },
}

impl Step {
    /// HTTP 500 `api_error`: an outage the CLI retries.
    pub fn outage() -> Self {
        Self::HttpError {
            status: 500,
            error_type: "api_error".to_owned(),
            message: "Internal server error (stand-in outage)".to_owned(),
        }
    }

    /// HTTP 400 `invalid_request_error` "prompt is too long", as the API words it.
    pub fn prompt_too_long(tokens: u64, window: u64) -> Self {
        Self::HttpError {
            status: 400,
            error_type: "invalid_request_error".to_owned(),
            message: format!("prompt is too long: {tokens} tokens > {window} maximum"),
        }
    }
}

/// The answers, in order, plus the one answer every compaction request gets. The CLI expects the
/// compaction answer to hold a `<summary>…</summary>` block; without one it asks a second time.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub steps: Vec<Step>,
    pub compaction: Reply,
}

impl Script {
    pub fn new(steps: Vec<Step>) -> Self {
        Self {
            steps,
            compaction: Reply::text(
                "<analysis>The stand-in's scripted analysis.</analysis>\n<summary>The work so far, as the stand-in's scripted compaction answer.</summary>",
                Usage {
                    input_tokens: 1_000,
                    output_tokens: 100,
                    ..Usage::default()
                },
            ),
        }
    }

    pub fn with_compaction(mut self, compaction: Reply) -> Self {
        self.compaction = compaction;
        self
    }
}

/// How a request was classified and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A main conversation call answered by script step `n` (0-based).
    Step(usize),
    /// A main conversation call after the script ran out (answered with [`EXHAUSTED_TEXT`]).
    Exhausted,
    /// A compaction summary request, answered with [`Script::compaction`].
    Compaction,
    /// A call outside the conversation: `HEAD`/`GET` probes, a one-token probe, or a call without
    /// tools (title, topic).
    Auxiliary,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Any other method or path (answered 404).
    Unknown,
}

/// One request the stand-in received.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub tool_count: usize,
    /// The text blocks of the last user message, joined by newlines (tool results' text when it
    /// holds no text block).
    pub last_user_text: String,
    pub kind: RequestKind,
    /// The whole request body as JSON (`Null` when it was not JSON).
    pub body: Value,
}

impl LoggedRequest {
    pub fn is_compaction(&self) -> bool {
        self.kind == RequestKind::Compaction
    }

    pub fn is_main(&self) -> bool {
        matches!(self.kind, RequestKind::Step(_) | RequestKind::Exhausted)
    }
}

/// The stand-in could not start.
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("cannot bind the stand-in to 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
}

struct Shared {
    script: Script,
    next_step: usize,
    log: Vec<LoggedRequest>,
    message_counter: u64,
}

type SharedState = Arc<Mutex<Shared>>;

fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler leaves the log readable; the data stays consistent per request.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How to install the pinned CLI, for the line a skipped test prints.
pub const CLAUDE_INSTALL_HINT: &str = "npm install --no-audit --no-fund --prefix .cache/agents @anthropic-ai/claude-code@2.1.328 (run in the repository root), or set MOSAIC_CLAUDE_BIN";

/// The real Claude Code CLI for tests: `$MOSAIC_CLAUDE_BIN`, else the pinned one `.ci/run`
/// installs at `<repository>/.cache/agents/node_modules/.bin/claude`. `None` after one line
/// saying how to install it; under `CI=true` a missing CLI panics, so CI cannot skip these tests.
pub fn claude_cli() -> Option<std::path::PathBuf> {
    pinned_cli(
        "Claude Code",
        "MOSAIC_CLAUDE_BIN",
        "claude",
        CLAUDE_INSTALL_HINT,
    )
}

/// The model the tests name (its `modelUsage` window is 200,000 tokens).
pub const CLAUDE_MODEL: &str = "claude-sonnet-4-5";

/// The CLI's stream-json arguments as docs/AGENTS.md wires it, for [`CLAUDE_MODEL`], followed
/// by `extra` (permission flags and allowed tools).
pub fn claude_stream_json_args(extra: &[&str]) -> Vec<String> {
    [
        "-p",
        "--input-format",
        "stream-json",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        CLAUDE_MODEL,
    ]
    .iter()
    .chain(extra)
    .map(|arg| (*arg).to_owned())
    .collect()
}

/// How to install the pinned Codex CLI, for the line a skipped test prints.
pub const CODEX_INSTALL_HINT: &str = "npm install --no-audit --no-fund --prefix .cache/agents @openai/codex@0.169.0 (run in the repository root), or set MOSAIC_CODEX_BIN";

/// The real Codex CLI for tests: `$MOSAIC_CODEX_BIN`, else the pinned one `.ci/run` installs at
/// `<repository>/.cache/agents/node_modules/.bin/codex`; as [`claude_cli`] when it is missing.
pub fn codex_cli() -> Option<std::path::PathBuf> {
    pinned_cli("Codex", "MOSAIC_CODEX_BIN", "codex", CODEX_INSTALL_HINT)
}

#[allow(clippy::print_stdout)] // the skip line is for the person running the tests
fn pinned_cli(what: &str, variable: &str, program: &str, hint: &str) -> Option<std::path::PathBuf> {
    let repo_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = std::env::var_os(variable)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            repo_root
                .join(".cache/agents/node_modules/.bin")
                .join(program)
        });
    if path.exists() {
        return Some(path);
    }
    let message = format!(
        "{what} CLI not found at {}; install it with: {hint}",
        path.display()
    );
    assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "{message}");
    println!("skipped: {message}");
    None
}

/// Serves `app` on 127.0.0.1 on a free port: its address, the sender that stops it, its task.
async fn serve(
    app: Router,
) -> Result<(SocketAddr, oneshot::Sender<()>, JoinHandle<()>), StandinError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(StandinError::Bind)?;
    let addr = listener.local_addr().map_err(StandinError::Bind)?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Ok((addr, stop_tx, server))
}

/// Starts stand-ins.
#[derive(Debug)]
pub struct MessagesStandin;

impl MessagesStandin {
    /// Serves `script` on 127.0.0.1 on a free port until the handle is dropped.
    pub async fn start(script: Script) -> Result<StandinHandle, StandinError> {
        let state: SharedState = Arc::new(Mutex::new(Shared {
            script,
            next_step: 0,
            log: Vec::new(),
            message_counter: 0,
        }));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let (addr, stop_tx, server) = serve(app).await?;
        Ok(StandinHandle {
            addr,
            state,
            stop: Some(stop_tx),
            server,
        })
    }
}

/// A running stand-in; dropping it stops the server.
pub struct StandinHandle {
    addr: SocketAddr,
    state: SharedState,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for StandinHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StandinHandle {
    /// The value for `ANTHROPIC_BASE_URL`, e.g. `http://127.0.0.1:40123`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state).log.clone()
    }

    /// How many script steps have been answered.
    pub fn steps_used(&self) -> usize {
        lock(&self.state).next_step
    }

    /// Answers the next calls from `script`, from its first step (for a test that learns what
    /// to script, such as a worktree's path, only after the CLI's configuration was written).
    pub fn replace_script(&self, script: Script) {
        let mut state = lock(&self.state);
        state.script = script;
        state.next_step = 0;
    }
}

impl Drop for StandinHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.abort();
    }
}

async fn handle(
    State(state): State<SharedState>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_owned();
    let last_user_text = last_user_text(&parsed);
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let stream = parsed
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens = parsed.get("max_tokens").and_then(Value::as_u64);
    let tool_count = parsed
        .get("tools")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);

    let mut shared = lock(&state);
    let (kind, answer) = if method == Method::HEAD || method == Method::GET {
        // Connectivity probes (`HEAD /api/hello` when non-essential traffic is allowed).
        (RequestKind::Auxiliary, Answer::Empty)
    } else if method != Method::POST {
        (RequestKind::Unknown, Answer::NotFound)
    } else if path.ends_with("/v1/messages/count_tokens") {
        let tokens = u64::try_from(body.len() / 4).unwrap_or(u64::MAX);
        (RequestKind::CountTokens, Answer::CountTokens(tokens))
    } else if path.ends_with("/v1/messages") {
        // The prompt is its own text block, so it starts a line of the joined text.
        if last_user_text
            .lines()
            .any(|line| line.starts_with(COMPACTION_PROMPT_PREFIX))
        {
            (
                RequestKind::Compaction,
                Answer::Reply(shared.script.compaction.clone()),
            )
        } else if max_tokens.is_some_and(|max| max <= 1) || tool_count == 0 {
            // Probes and side calls (titles, topics) carry no tools; the conversation always does.
            (
                RequestKind::Auxiliary,
                Answer::Reply(Reply::text("ok", Usage::default())),
            )
        } else if let Some(step) = shared.script.steps.get(shared.next_step).cloned() {
            let index = shared.next_step;
            shared.next_step += 1;
            let answer = match step {
                Step::Reply(reply) => Answer::Reply(reply),
                Step::HttpError {
                    status,
                    error_type,
                    message,
                } => Answer::HttpError {
                    status,
                    error_type,
                    message,
                },
            };
            (RequestKind::Step(index), answer)
        } else {
            (
                RequestKind::Exhausted,
                Answer::Reply(Reply::text(EXHAUSTED_TEXT, Usage::default())),
            )
        }
    } else {
        (RequestKind::Unknown, Answer::NotFound)
    };
    shared.message_counter += 1;
    let message_id = format!("msg_standin_{:04}", shared.message_counter);
    shared.log.push(LoggedRequest {
        method: method.to_string(),
        path,
        query: uri.query().map(str::to_owned),
        model: model.clone(),
        stream,
        max_tokens,
        tool_count,
        last_user_text,
        kind,
        body: parsed,
    });
    drop(shared);

    let model = model.unwrap_or_else(|| "claude-standin".to_owned());
    match answer {
        Answer::NotFound => {
            error_response(StatusCode::NOT_FOUND, "not_found_error", "no such route")
        }
        Answer::Empty => axum::Json(json!({})).into_response(),
        Answer::HttpError {
            status,
            error_type,
            message,
        } => error_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &error_type,
            &message,
        ),
        Answer::CountTokens(tokens) => {
            axum::Json(json!({ "input_tokens": tokens })).into_response()
        }
        Answer::Reply(reply) if stream => (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            sse_body(&reply, &model, &message_id),
        )
            .into_response(),
        Answer::Reply(reply) => {
            axum::Json(message_json(&reply, &model, &message_id)).into_response()
        }
    }
}

enum Answer {
    Reply(Reply),
    HttpError {
        status: u16,
        error_type: String,
        message: String,
    },
    CountTokens(u64),
    Empty,
    NotFound,
}

fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = json!({
        "type": "error",
        "error": { "type": error_type, "message": message },
    });
    (status, axum::Json(body)).into_response()
}

/// The text of the last user message: its text blocks, else the text inside its tool results.
fn last_user_text(body: &Value) -> String {
    let Some(message) = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
    else {
        return String::new();
    };
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => {
            let texts: Vec<&str> = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            if texts.is_empty() {
                blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                    .map(tool_result_text)
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                texts.join("\n")
            }
        }
        _ => String::new(),
    }
}

fn tool_result_text(block: &Value) -> String {
    match block.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn tool_use_id(message_id: &str, index: usize) -> String {
    format!("toolu_{}_{index}", message_id.trim_start_matches("msg_"))
}

fn content_json(reply: &Reply, message_id: &str) -> Vec<Value> {
    reply
        .blocks
        .iter()
        .enumerate()
        .map(|(index, block)| match block {
            Block::Text(text) => json!({ "type": "text", "text": text }),
            Block::ToolUse { name, input } => json!({
                "type": "tool_use",
                "id": tool_use_id(message_id, index),
                "name": name,
                "input": input,
            }),
        })
        .collect()
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "output_tokens": usage.output_tokens,
    })
}

fn message_json(reply: &Reply, model: &str, message_id: &str) -> Value {
    json!({
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content_json(reply, message_id),
        "stop_reason": reply.stop_reason.as_str(),
        "stop_sequence": null,
        "usage": usage_json(&reply.usage),
    })
}

fn push_event(out: &mut String, event: &Value) {
    let name = event.get("type").and_then(Value::as_str).unwrap_or("ping");
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&event.to_string());
    out.push_str("\n\n");
}

/// The whole answer as Messages streaming events. `message_start` carries the input figures and
/// `message_delta` the final output count, as the real API does.
fn sse_body(reply: &Reply, model: &str, message_id: &str) -> String {
    let mut out = String::new();
    let mut start_usage = usage_json(&reply.usage);
    start_usage["output_tokens"] = json!(1);
    push_event(
        &mut out,
        &json!({
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": start_usage,
            },
        }),
    );
    for (index, block) in reply.blocks.iter().enumerate() {
        let (start, delta) = match block {
            Block::Text(text) => (
                json!({ "type": "text", "text": "" }),
                json!({ "type": "text_delta", "text": text }),
            ),
            Block::ToolUse { name, input } => (
                json!({
                    "type": "tool_use",
                    "id": tool_use_id(message_id, index),
                    "name": name,
                    "input": {},
                }),
                json!({ "type": "input_json_delta", "partial_json": input.to_string() }),
            ),
        };
        push_event(
            &mut out,
            &json!({ "type": "content_block_start", "index": index, "content_block": start }),
        );
        push_event(
            &mut out,
            &json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        );
        push_event(
            &mut out,
            &json!({ "type": "content_block_stop", "index": index }),
        );
    }
    push_event(
        &mut out,
        &json!({
            "type": "message_delta",
            "delta": { "stop_reason": reply.stop_reason.as_str(), "stop_sequence": null },
            "usage": usage_json(&reply.usage),
        }),
    );
    push_event(&mut out, &json!({ "type": "message_stop" }));
    out
}

pub mod responses;

#[cfg(test)]
mod tests;
