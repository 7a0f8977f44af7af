//! A scripted stand-in for the OpenAI Responses API, for tests that run the real Codex CLI.
//!
//! Codex 0.169.0 is pointed at it with a model provider whose `base_url` is
//! [`ResponsesHandle::base_url`] and `wire_api = "responses"`; it calls only
//! `POST /v1/responses` with `stream: true`. Each call is answered by the next [`ResponsesStep`]
//! as server-sent events (`response.created`, `response.output_item.done`, `response.completed`
//! with usage); calls after the script ran out get the text [`crate::EXHAUSTED_TEXT`]. Every
//! request is logged.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{EXHAUSTED_TEXT, StandinError, lock};

/// Token figures one answer reports, as the Responses API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponsesUsage {
    /// Everything read, the cached part included.
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
}

/// One scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponsesStep {
    /// An assistant message with this text.
    Text(String, ResponsesUsage),
    /// A call of Codex's `exec_command` tool with this shell command line.
    Exec(String, ResponsesUsage),
    /// An HTTP error with an OpenAI-shaped body.
    HttpError(u16),
}

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    pub path: String,
    /// The answering step's index; `None` after the script ran out or for other paths.
    pub step: Option<usize>,
    /// Every text of the request's `input` items, joined by newlines (prompts and tool outputs).
    pub input_text: String,
}

#[derive(Debug)]
struct Shared {
    steps: Vec<ResponsesStep>,
    next_step: usize,
    log: Vec<ResponsesRequest>,
    counter: u64,
}

/// The arguments of `codex exec --json` that point it at the stand-in at `base_url` (its key is
/// read from `STANDIN_API_KEY`), in the `workspace-write` sandbox, model `gpt-5`.
pub fn codex_exec_args(base_url: &str) -> Vec<String> {
    let provider = format!("model_providers.standin.base_url=\"{base_url}\"");
    [
        "exec",
        "--json",
        "-s",
        "workspace-write",
        "-c",
        "model_provider=standin",
        "-c",
        "model_providers.standin.name=\"standin\"",
        "-c",
        provider.as_str(),
        "-c",
        "model_providers.standin.wire_api=\"responses\"",
        "-c",
        "model_providers.standin.env_key=\"STANDIN_API_KEY\"",
        "-m",
        "gpt-5",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A running Responses stand-in; dropping it stops the server.
pub struct ResponsesHandle {
    addr: SocketAddr,
    state: Arc<Mutex<Shared>>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for ResponsesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponsesHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ResponsesHandle {
    /// Serves `steps` on 127.0.0.1 on a free port until the handle is dropped.
    pub async fn start(steps: Vec<ResponsesStep>) -> Result<Self, StandinError> {
        let state = Arc::new(Mutex::new(Shared {
            steps,
            next_step: 0,
            log: Vec::new(),
            counter: 0,
        }));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let (addr, stop_tx, server) = crate::serve(app).await?;
        Ok(Self {
            addr,
            state,
            stop: Some(stop_tx),
            server,
        })
    }

    /// The provider's `base_url`, e.g. `http://127.0.0.1:40123/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ResponsesRequest> {
        lock(&self.state).log.clone()
    }

    /// Answers the next calls from `steps`, from the first.
    pub fn replace_steps(&self, steps: Vec<ResponsesStep>) {
        let mut state = lock(&self.state);
        state.steps = steps;
        state.next_step = 0;
    }
}

impl Drop for ResponsesHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.abort();
    }
}

async fn handle(State(state): State<Arc<Mutex<Shared>>>, uri: Uri, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_owned();
    let mut shared = lock(&state);
    shared.counter += 1;
    let id = shared.counter;
    let (step, answer) = if !path.ends_with("/responses") {
        (None, None)
    } else if let Some(step) = shared.steps.get(shared.next_step).cloned() {
        let index = shared.next_step;
        shared.next_step += 1;
        (Some(index), Some(step))
    } else {
        (
            None,
            Some(ResponsesStep::Text(
                EXHAUSTED_TEXT.to_owned(),
                ResponsesUsage::default(),
            )),
        )
    };
    shared.log.push(ResponsesRequest {
        path,
        step,
        input_text: input_text(&parsed),
    });
    drop(shared);
    match answer {
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
        Some(ResponsesStep::HttpError(status)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(json!({"error": {"type": "server_error", "message": "stand-in outage"}})),
        )
            .into_response(),
        Some(ResponsesStep::Text(text, usage)) => stream(
            id,
            json!({
                "type": "message", "id": format!("msg_{id}"), "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }),
            usage,
        ),
        Some(ResponsesStep::Exec(command, usage)) => stream(
            id,
            json!({
                "type": "function_call", "id": format!("fc_{id}"),
                "call_id": format!("call_{id}"), "name": "exec_command",
                "arguments": json!({"cmd": command}).to_string(), "status": "completed",
            }),
            usage,
        ),
    }
}

/// The answer as the Responses API streams it.
fn stream(id: u64, item: Value, usage: ResponsesUsage) -> Response {
    let response_id = format!("resp_{id}");
    let events = [
        json!({"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": item}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({
            "type": "response.completed",
            "response": {
                "id": response_id, "status": "completed",
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "input_tokens_details": {"cached_tokens": usage.cached_tokens},
                    "output_tokens": usage.output_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": usage.input_tokens + usage.output_tokens,
                },
            },
        }),
    ];
    let body: String = events
        .iter()
        .map(|event| {
            let kind = event["type"].as_str().unwrap_or_default();
            format!("event: {kind}\ndata: {event}\n\n")
        })
        .collect();
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// The texts of the request's input items: message contents and tool outputs.
fn input_text(body: &Value) -> String {
    let mut texts = Vec::new();
    for item in body
        .get("input")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(output) = item.get("output").and_then(Value::as_str) {
            texts.push(output.to_owned());
        }
        match item.get("content") {
            Some(Value::String(text)) => texts.push(text.clone()),
            Some(Value::Array(parts)) => texts.extend(
                parts
                    .iter()
                    .filter_map(|part| part.get("text").and_then(Value::as_str))
                    .map(str::to_owned),
            ),
            _ => {}
        }
    }
    texts.join("\n")
}
