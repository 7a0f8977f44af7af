use super::*;

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

fn conversation(text: &str) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "stream": true,
        "max_tokens": 32000,
        "tools": [{ "name": "Bash" }],
        "messages": [
            { "role": "user", "content": "first" },
            { "role": "assistant", "content": "answer" },
            { "role": "user", "content": [
                { "type": "text", "text": "<system-reminder>x</system-reminder>" },
                { "type": "text", "text": text },
            ] },
        ],
    })
}

async fn post(state: &SharedState, path: &str, body: &Value) -> Response {
    handle(
        State(Arc::clone(state)),
        Method::POST,
        path.parse().unwrap(),
        Bytes::from(body.to_string()),
    )
    .await
}

fn state_for(script: Script) -> SharedState {
    Arc::new(Mutex::new(Shared {
        script,
        next_step: 0,
        log: Vec::new(),
        message_counter: 0,
    }))
}

async fn body_text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn events(sse: &str) -> Vec<Value> {
    sse.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

#[test]
fn sse_body_streams_tool_input_as_json_delta_and_reports_usage() {
    let reply = Reply::tool_calls(
        vec![
            Block::text("writing"),
            Block::tool_use("Write", json!({ "file_path": "a.txt", "content": "x" })),
        ],
        Usage {
            input_tokens: 10,
            cache_creation_input_tokens: 20,
            cache_read_input_tokens: 30,
            output_tokens: 40,
        },
    );
    let events = events(&sse_body(&reply, "m", "msg_standin_0001"));
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(events[0]["message"]["usage"]["cache_read_input_tokens"], 30);
    assert_eq!(events[4]["content_block"]["name"], "Write");
    let partial = events[5]["delta"]["partial_json"].as_str().unwrap();
    let input: Value = serde_json::from_str(partial).unwrap();
    assert_eq!(input["file_path"], "a.txt");
    assert_eq!(events[7]["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[7]["usage"]["output_tokens"], 40);
}

#[tokio::test]
async fn steps_are_consumed_in_order_and_compaction_and_probes_are_not_steps() {
    let script = Script::new(vec![
        Step::Reply(Reply::text("one", usage(100, 5))),
        Step::outage(),
    ])
    .with_compaction(Reply::text("the summary", usage(7, 3)));
    let state = state_for(script);

    let first = post(&state, "/v1/messages?beta=true", &conversation("go")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(body_text(first).await.contains("\"one\""));

    let compaction = post(
        &state,
        "/v1/messages",
        &conversation("CRITICAL: Respond with TEXT ONLY. Summarise."),
    )
    .await;
    assert!(body_text(compaction).await.contains("the summary"));

    let mut probe = conversation("quota");
    probe["max_tokens"] = json!(1);
    let probe = post(&state, "/v1/messages", &probe).await;
    assert_eq!(probe.status(), StatusCode::OK);

    let outage = post(&state, "/v1/messages", &conversation("again")).await;
    assert_eq!(outage.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let error: Value = serde_json::from_str(&body_text(outage).await).unwrap();
    assert_eq!(error["error"]["type"], "api_error");

    let after = post(&state, "/v1/messages", &conversation("more")).await;
    assert!(
        body_text(after)
            .await
            .contains(&format!("\"{EXHAUSTED_TEXT}\""))
    );

    let count = post(&state, "/v1/messages/count_tokens", &conversation("n")).await;
    assert!(body_text(count).await.contains("input_tokens"));

    let log = lock(&state).log.clone();
    let kinds: Vec<RequestKind> = log.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RequestKind::Step(0),
            RequestKind::Compaction,
            RequestKind::Auxiliary,
            RequestKind::Step(1),
            RequestKind::Exhausted,
            RequestKind::CountTokens,
        ]
    );
    assert_eq!(
        log[0].last_user_text,
        "<system-reminder>x</system-reminder>\ngo"
    );
    assert_eq!(log[0].query.as_deref(), Some("beta=true"));
    assert!(log[1].is_compaction());
    assert_eq!(log[2].max_tokens, Some(1));
}

#[test]
fn last_user_text_falls_back_to_tool_result_text() {
    let body = json!({ "messages": [
        { "role": "user", "content": [
            { "type": "tool_result", "tool_use_id": "t", "content": "file written" },
            { "type": "tool_result", "tool_use_id": "u", "content": [{ "type": "text", "text": "ok" }] },
        ] },
    ] });
    assert_eq!(last_user_text(&body), "file written\nok");
    assert_eq!(last_user_text(&json!({})), "");
}

#[test]
fn non_streaming_answer_is_one_message() {
    let message = message_json(&Reply::text("hi", usage(1, 2)), "m", "msg_x");
    assert_eq!(message["content"][0]["text"], "hi");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn connectivity_probes_are_answered_and_other_routes_are_not_found() {
    let state = state_for(Script::new(vec![Step::Reply(Reply::text(
        "one",
        usage(1, 1),
    ))]));
    let probe = handle(
        State(Arc::clone(&state)),
        Method::HEAD,
        "/api/hello".parse().unwrap(),
        Bytes::new(),
    )
    .await;
    assert_eq!(probe.status(), StatusCode::OK);
    let unknown = post(&state, "/v1/complete", &conversation("x")).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let log = lock(&state).log.clone();
    assert_eq!(log[0].kind, RequestKind::Auxiliary);
    assert_eq!(log[1].kind, RequestKind::Unknown);
    assert_eq!(lock(&state).next_step, 0, "neither consumed a step");
}
