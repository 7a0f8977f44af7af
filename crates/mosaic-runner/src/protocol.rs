//! What an agent's stdout lines mean: Claude Code's stream-json and the generic JSON-lines
//! protocol, told apart by their `type` field. Anything else is kept in the log, never fatal.

use serde_json::Value;

/// One fact read from an agent's stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// Tokens now in the context; `window` when the agent reports it.
    Usage {
        context_tokens: u64,
        window: Option<u64>,
    },
    /// Text the agent wrote; the latest one serves as handover summary.
    Text(String),
    /// The agent compacted its context.
    Compacted {
        before_tokens: Option<u64>,
        after_tokens: Option<u64>,
    },
    /// The agent reports the end of its work (the generic protocol's `done`).
    Finished {
        success: bool,
        summary: String,
        tokens: Option<u64>,
        cost_usd: Option<f64>,
    },
    /// Claude Code's `result`: the end of one turn. In stream-json input mode the session goes
    /// on; with a text prompt the process exits after it.
    TurnEnded {
        success: bool,
        summary: String,
        /// Why the turn ended (`completed`, `api_error`, `prompt_too_long`, `blocking_limit`, …).
        terminal_reason: Option<String>,
        /// The turn was a local command (`/compact`), not model work: its empty result says
        /// nothing about the task.
        local_command: bool,
    },
    /// What the session has spent so far (cumulative figures, replacing earlier ones). Costs
    /// the agent does not report stay `None`.
    Spend {
        input_tokens: u64,
        output_tokens: u64,
        cache_read_tokens: u64,
        cache_creation_tokens: u64,
        cost_usd: Option<f64>,
    },
    /// The model's context window, as the agent reports it (Claude Code's
    /// `modelUsage.<model>.contextWindow`).
    ContextWindow(u64),
    /// The agent is retrying a failed call to its model API.
    ApiRetry {
        attempt: u32,
        max_retries: Option<u32>,
        error_status: Option<u16>,
        error: Option<String>,
    },
}

/// A stdout line, read.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    pub events: Vec<AgentEvent>,
    /// The line belongs to a known protocol (even if it carried nothing the runner needs).
    pub known: bool,
}

impl ParsedLine {
    fn unknown() -> Self {
        Self {
            events: Vec::new(),
            known: false,
        }
    }

    fn known(events: Vec<AgentEvent>) -> Self {
        Self {
            events,
            known: true,
        }
    }
}

fn field_u64(value: &Value, key: &str) -> Option<u64> {
    value.get(key).and_then(Value::as_u64)
}

/// Context used according to an Anthropic `usage` object: everything that was input to the call.
fn context_tokens(usage: &Value) -> Option<u64> {
    let parts = [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ];
    if parts.iter().all(|key| usage.get(*key).is_none()) {
        return None;
    }
    Some(
        parts
            .iter()
            .filter_map(|key| field_u64(usage, key))
            .fold(0u64, u64::saturating_add),
    )
}

fn assistant_text(message: &Value) -> Option<String> {
    let blocks = message.get("content")?.as_array()?;
    let text: Vec<&str> = blocks
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .filter(|text| !text.trim().is_empty())
        .collect();
    (!text.is_empty()).then(|| text.join("\n"))
}

/// Claude Code's `result`: the session's spend (cumulative `modelUsage`, `total_cost_usd`), the
/// window, and the end of the turn. `is_error` decides success: an error result still says
/// `subtype: "success"` (measured with 2.1.328).
fn claude_result(value: &Value) -> Vec<AgentEvent> {
    let mut events = Vec::new();
    let models = value.get("modelUsage").and_then(Value::as_object);
    if let Some(models) = models {
        let sum = |key: &str| {
            models
                .values()
                .filter_map(|model| field_u64(model, key))
                .fold(0u64, u64::saturating_add)
        };
        let model_cost: Option<f64> = models
            .values()
            .map(|model| model.get("costUSD").and_then(Value::as_f64))
            .sum();
        events.push(AgentEvent::Spend {
            input_tokens: sum("inputTokens"),
            output_tokens: sum("outputTokens"),
            cache_read_tokens: sum("cacheReadInputTokens"),
            cache_creation_tokens: sum("cacheCreationInputTokens"),
            cost_usd: value
                .get("total_cost_usd")
                .and_then(Value::as_f64)
                .or(model_cost),
        });
        // The largest window of the models used; a session normally uses one.
        if let Some(window) = models
            .values()
            .filter_map(|model| field_u64(model, "contextWindow"))
            .max()
        {
            events.push(AgentEvent::ContextWindow(window));
        }
    } else if let Some(usage) = value.get("usage").filter(|usage| usage.is_object()) {
        // No per-model figures (agents imitating the format): the result's own usage, which
        // covers the whole session when it was a single turn.
        let count = |key: &str| field_u64(usage, key).unwrap_or(0);
        events.push(AgentEvent::Spend {
            input_tokens: count("input_tokens"),
            output_tokens: count("output_tokens"),
            cache_read_tokens: count("cache_read_input_tokens"),
            cache_creation_tokens: count("cache_creation_input_tokens"),
            cost_usd: value.get("total_cost_usd").and_then(Value::as_f64),
        });
    }
    let is_error = value
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let summary = value
        .get("result")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            value
                .get("subtype")
                .and_then(Value::as_str)
                .map(|subtype| format!("result: {subtype}"))
        })
        .unwrap_or_default();
    events.push(AgentEvent::TurnEnded {
        success: !is_error,
        summary,
        terminal_reason: value
            .get("terminal_reason")
            .and_then(Value::as_str)
            .map(str::to_owned),
        local_command: value.get("local_command").is_some_and(|v| !v.is_null()),
    });
    events
}

/// Codex's `turn.completed`: the turn's usage (summed over its model calls; input includes the
/// cached part) and the end of the work. It reports no cost and no context window.
fn codex_turn_completed(value: &Value) -> Vec<AgentEvent> {
    let mut events = Vec::new();
    if let Some(usage) = value.get("usage") {
        let input = field_u64(usage, "input_tokens").unwrap_or(0);
        let cached = field_u64(usage, "cached_input_tokens").unwrap_or(0);
        events.push(AgentEvent::Spend {
            input_tokens: input.saturating_sub(cached),
            output_tokens: field_u64(usage, "output_tokens").unwrap_or(0),
            cache_read_tokens: cached,
            cache_creation_tokens: field_u64(usage, "cache_write_input_tokens").unwrap_or(0),
            cost_usd: None,
        });
    }
    events.push(AgentEvent::Finished {
        success: true,
        // The latest agent message is the summary.
        summary: String::new(),
        tokens: None,
        cost_usd: None,
    });
    events
}

/// Codex's `error` line: "Reconnecting... N/M (…)" while it retries, else the final error (the
/// `turn.failed` that follows ends the session).
fn codex_error(value: &Value) -> Vec<AgentEvent> {
    let message = value.get("message").and_then(Value::as_str).unwrap_or("");
    let Some(rest) = message.strip_prefix("Reconnecting... ") else {
        return Vec::new();
    };
    let counts = rest.split_whitespace().next().unwrap_or("");
    let (attempt, max) = counts.split_once('/').unwrap_or((counts, ""));
    vec![AgentEvent::ApiRetry {
        attempt: attempt.parse().unwrap_or(0),
        max_retries: max.parse().ok(),
        error_status: None,
        error: Some(message.to_owned()),
    }]
}

/// Reads one stdout line.
pub fn parse_line(line: &str) -> ParsedLine {
    let Ok(value) = serde_json::from_str::<Value>(line.trim()) else {
        return ParsedLine::unknown();
    };
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return ParsedLine::unknown();
    };
    match kind {
        // Claude Code stream-json.
        "assistant" => {
            let Some(message) = value.get("message") else {
                return ParsedLine::unknown();
            };
            // The CLI's own stand-in for an answer it did not get (API error, prompt too long):
            // zero usage that is no reading, and an error text the `result` repeats.
            if message.get("model").and_then(Value::as_str) == Some("<synthetic>") {
                return ParsedLine::known(Vec::new());
            }
            let mut events = Vec::new();
            if let Some(tokens) = message.get("usage").and_then(context_tokens) {
                events.push(AgentEvent::Usage {
                    context_tokens: tokens,
                    window: None,
                });
            }
            if let Some(text) = assistant_text(message) {
                events.push(AgentEvent::Text(text));
            }
            ParsedLine::known(events)
        }
        "system" => match value.get("subtype").and_then(Value::as_str) {
            Some("compact_boundary") => {
                let meta = value.get("compact_metadata");
                ParsedLine::known(vec![AgentEvent::Compacted {
                    before_tokens: meta.and_then(|meta| field_u64(meta, "pre_tokens")),
                    // The CLI's count of what is left; the next model call's usage follows later.
                    after_tokens: meta.and_then(|meta| field_u64(meta, "post_tokens")),
                }])
            }
            Some("api_retry") => ParsedLine::known(vec![AgentEvent::ApiRetry {
                attempt: field_u64(&value, "attempt")
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                max_retries: field_u64(&value, "max_retries").and_then(|n| u32::try_from(n).ok()),
                error_status: field_u64(&value, "error_status").and_then(|n| u16::try_from(n).ok()),
                error: value
                    .get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }]),
            // init, status, hook and other notices: understood, nothing the runner needs.
            Some(_) => ParsedLine::known(Vec::new()),
            None => ParsedLine::unknown(),
        },
        // Tool results, partial-stream events, rate-limit notices, version-control notices.
        "user" | "stream_event" | "rate_limit_event" | "vcs_state_changed" | "tool_progress"
        | "auth_status" | "keep_alive" | "control_response" | "control_request" => {
            ParsedLine::known(Vec::new())
        }
        "result" => ParsedLine::known(claude_result(&value)),
        // Codex `exec --json` (0.169.0): one turn per process.
        "thread.started" | "turn.started" | "item.started" | "item.updated" => {
            ParsedLine::known(Vec::new())
        }
        "item.completed" => {
            let item = value.get("item");
            match item
                .and_then(|item| item.get("type"))
                .and_then(Value::as_str)
            {
                Some("agent_message") => ParsedLine::known(
                    item.and_then(|item| item.get("text"))
                        .and_then(Value::as_str)
                        .filter(|text| !text.trim().is_empty())
                        .map(|text| vec![AgentEvent::Text(text.to_owned())])
                        .unwrap_or_default(),
                ),
                // Commands, file changes, reasoning, warnings: understood, not needed.
                Some(_) => ParsedLine::known(Vec::new()),
                None => ParsedLine::unknown(),
            }
        }
        "turn.completed" => ParsedLine::known(codex_turn_completed(&value)),
        "turn.failed" => ParsedLine::known(vec![AgentEvent::Finished {
            success: false,
            summary: value
                .get("error")
                .and_then(|error| error.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("the turn failed")
                .to_owned(),
            tokens: None,
            cost_usd: None,
        }]),
        // "Reconnecting... 1/5 (…)": the CLI retries its model API.
        "error" => ParsedLine::known(codex_error(&value)),
        // Generic JSON-lines protocol.
        "usage" => match field_u64(&value, "context_tokens") {
            Some(tokens) => ParsedLine::known(vec![AgentEvent::Usage {
                context_tokens: tokens,
                window: field_u64(&value, "context_window"),
            }]),
            None => ParsedLine::unknown(),
        },
        "message" => match value.get("text").and_then(Value::as_str) {
            Some(text) => ParsedLine::known(vec![AgentEvent::Text(text.to_owned())]),
            None => ParsedLine::unknown(),
        },
        "compacted" => ParsedLine::known(vec![AgentEvent::Compacted {
            before_tokens: field_u64(&value, "before_tokens"),
            after_tokens: field_u64(&value, "after_tokens"),
        }]),
        "done" => {
            let status = value.get("status").and_then(Value::as_str).unwrap_or("");
            let mut events = Vec::new();
            let tokens = field_u64(&value, "tokens");
            let breakdown = [
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_creation_tokens",
            ]
            .map(|key| field_u64(&value, key));
            let cost_usd = value.get("cost_usd").and_then(Value::as_f64);
            if tokens.is_some() || cost_usd.is_some() || breakdown.iter().any(Option::is_some) {
                let [input, output, cache_read, cache_creation] = breakdown;
                events.push(AgentEvent::Spend {
                    // One total without a breakdown counts as input tokens.
                    input_tokens: input.or(tokens).unwrap_or(0),
                    output_tokens: output.unwrap_or(0),
                    cache_read_tokens: cache_read.unwrap_or(0),
                    cache_creation_tokens: cache_creation.unwrap_or(0),
                    cost_usd,
                });
            }
            events.push(AgentEvent::Finished {
                success: status == "success",
                summary: value
                    .get("summary")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("status: {status}"), str::to_owned),
                tokens,
                cost_usd,
            });
            ParsedLine::known(events)
        }
        _ => ParsedLine::unknown(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, known: bool, events: &[AgentEvent]) {
        let parsed = parse_line(line);
        assert_eq!(parsed.known, known, "{line}");
        assert_eq!(parsed.events, events, "{line}");
    }

    #[test]
    fn reads_claude_stream_json() {
        check(
            r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Done with step 1"},{"type":"tool_use","name":"Bash"}],"usage":{"input_tokens":2,"output_tokens":9,"cache_creation_input_tokens":7924,"cache_read_input_tokens":13368}},"session_id":"u"}"#,
            true,
            &[
                AgentEvent::Usage {
                    context_tokens: 21_294,
                    window: None,
                },
                AgentEvent::Text("Done with step 1".to_owned()),
            ],
        );
        check(
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Read"}]}}"#,
            true,
            &[],
        );
        check(
            r#"{"type":"system","subtype":"compact_boundary","compact_metadata":{"trigger":"manual","pre_tokens":150000}}"#,
            true,
            &[AgentEvent::Compacted {
                before_tokens: Some(150_000),
                after_tokens: None,
            }],
        );
        check(
            r#"{"type":"system","subtype":"init","model":"claude"}"#,
            true,
            &[],
        );
        check(
            r#"{"type":"result","subtype":"success","is_error":false,"result":"All done","total_cost_usd":0.1046,"usage":{"input_tokens":2,"output_tokens":9,"cache_creation_input_tokens":7924,"cache_read_input_tokens":13368}}"#,
            true,
            &[
                AgentEvent::Spend {
                    input_tokens: 2,
                    output_tokens: 9,
                    cache_read_tokens: 13_368,
                    cache_creation_tokens: 7_924,
                    cost_usd: Some(0.1046),
                },
                AgentEvent::TurnEnded {
                    success: true,
                    summary: "All done".to_owned(),
                    terminal_reason: None,
                    local_command: false,
                },
            ],
        );
        check(
            r#"{"type":"result","subtype":"error_max_turns","is_error":true}"#,
            true,
            &[AgentEvent::TurnEnded {
                success: false,
                summary: "result: error_max_turns".to_owned(),
                terminal_reason: None,
                local_command: false,
            }],
        );
    }

    #[test]
    fn reads_the_generic_protocol() {
        check(
            r#"{"type":"usage","context_tokens":1200,"context_window":8000}"#,
            true,
            &[AgentEvent::Usage {
                context_tokens: 1200,
                window: Some(8000),
            }],
        );
        check(
            r#"{"type":"done","status":"success","summary":"merged"}"#,
            true,
            &[AgentEvent::Finished {
                success: true,
                summary: "merged".to_owned(),
                tokens: None,
                cost_usd: None,
            }],
        );
        check(
            r#"{"type":"done","status":"error"}"#,
            true,
            &[AgentEvent::Finished {
                success: false,
                summary: "status: error".to_owned(),
                tokens: None,
                cost_usd: None,
            }],
        );
        check(
            r#"{"type":"compacted","before_tokens":900,"after_tokens":200}"#,
            true,
            &[AgentEvent::Compacted {
                before_tokens: Some(900),
                after_tokens: Some(200),
            }],
        );
    }

    /// The real CLI's transcripts (Claude Code 2.1.328, see the fixtures' README).
    fn fixture(name: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/claude-code")
            .join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn events_of(name: &str) -> Vec<AgentEvent> {
        fixture(name)
            .iter()
            .flat_map(|line| parse_line(line).events)
            .collect()
    }

    /// Codex `exec --json` transcripts (0.169.0, see `tests/fixtures/codex/README.md`).
    fn codex_events(name: &str) -> Vec<ParsedLine> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/codex")
            .join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
            .lines()
            .map(parse_line)
            .collect()
    }

    #[test]
    fn codex_transcripts_give_the_message_the_spend_and_the_end() {
        for name in [
            "text-turn.jsonl",
            "api-error.jsonl",
            "tool-call-no-sandbox.jsonl",
            "tool-call-workspace-write.jsonl",
        ] {
            assert!(
                codex_events(name).iter().all(|line| line.known),
                "{name}: every line is understood"
            );
        }
        let events: Vec<AgentEvent> = codex_events("text-turn.jsonl")
            .into_iter()
            .flat_map(|line| line.events)
            .collect();
        assert_eq!(
            events,
            [
                AgentEvent::Text("done".to_owned()),
                AgentEvent::Spend {
                    input_tokens: 8_000,
                    output_tokens: 300,
                    cache_read_tokens: 4_000,
                    cache_creation_tokens: 0,
                    cost_usd: None,
                },
                AgentEvent::Finished {
                    success: true,
                    summary: String::new(),
                    tokens: None,
                    cost_usd: None,
                },
            ]
        );
        let failed: Vec<AgentEvent> = codex_events("api-error.jsonl")
            .into_iter()
            .flat_map(|line| line.events)
            .collect();
        assert!(
            matches!(
                failed.first(),
                Some(AgentEvent::ApiRetry {
                    attempt: 1,
                    max_retries: Some(1),
                    ..
                })
            ),
            "{failed:?}"
        );
        assert!(
            matches!(failed.last(), Some(AgentEvent::Finished { success: false, summary, .. }) if !summary.is_empty()),
            "{failed:?}"
        );
    }

    #[test]
    fn every_line_of_every_real_transcript_is_known() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/claude-code");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue;
            }
            files += 1;
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let lines = fixture(&name);
            assert!(!lines.is_empty(), "{name}");
            for line in lines {
                assert!(parse_line(&line).known, "{name}: {line}");
            }
        }
        assert!(files >= 10, "only {files} transcripts in {}", dir.display());
    }

    #[test]
    fn reads_spend_window_and_turn_end_from_a_real_result() {
        let events = events_of("write-and-commit.jsonl");
        let spends: Vec<_> = events
            .iter()
            .filter(|event| matches!(event, AgentEvent::Spend { .. }))
            .collect();
        assert_eq!(spends.len(), 1, "{events:?}");
        let AgentEvent::Spend {
            input_tokens,
            output_tokens,
            cache_read_tokens,
            cache_creation_tokens,
            cost_usd,
        } = spends[0].clone()
        else {
            unreachable!()
        };
        // The script's figures, summed by the CLI into modelUsage; the cost is list price.
        let result: Value = serde_json::from_str(
            fixture("write-and-commit.jsonl")
                .iter()
                .find(|line| line.contains(r#""type":"result""#))
                .unwrap(),
        )
        .unwrap();
        let model = &result["modelUsage"]["claude-sonnet-4-5"];
        assert_eq!(input_tokens, model["inputTokens"].as_u64().unwrap());
        assert_eq!(output_tokens, model["outputTokens"].as_u64().unwrap());
        assert_eq!(
            cache_read_tokens,
            model["cacheReadInputTokens"].as_u64().unwrap()
        );
        assert_eq!(
            cache_creation_tokens,
            model["cacheCreationInputTokens"].as_u64().unwrap()
        );
        assert!((cost_usd.unwrap() - 0.049_575).abs() < 1e-9, "{cost_usd:?}");
        assert!(events.contains(&AgentEvent::ContextWindow(200_000)));
        assert!(matches!(
            events.last(),
            Some(AgentEvent::TurnEnded { success: true, local_command: false, terminal_reason: Some(reason), .. }) if reason == "completed"
        ));
        // Usage readings come from the assistant lines, before the result.
        assert!(events.iter().any(
            |event| matches!(event, AgentEvent::Usage { context_tokens, .. } if *context_tokens > 0)
        ));
    }

    #[test]
    fn reads_a_real_manual_compaction() {
        let events = events_of("compact-manual.jsonl");
        assert!(
            events.contains(&AgentEvent::Compacted {
                before_tokens: Some(60_300),
                after_tokens: Some(2_607),
            }),
            "{events:?}"
        );
        let turns: Vec<_> = events
            .iter()
            .filter_map(|event| match event {
                AgentEvent::TurnEnded { local_command, .. } => Some(*local_command),
                _ => None,
            })
            .collect();
        assert_eq!(turns, [false, true]);
        // The summary call is billed into the cumulative figures of the /compact result.
        let last_spend = events
            .iter()
            .rev()
            .find_map(|event| match event {
                AgentEvent::Spend { cost_usd, .. } => *cost_usd,
                _ => None,
            })
            .unwrap();
        assert!((last_spend - 0.249).abs() < 1e-9, "{last_spend}");
    }

    #[test]
    fn reads_real_api_retries_and_the_error_result() {
        let events = events_of("api-error-retries.jsonl");
        let retries: Vec<_> = events
            .iter()
            .filter(|event| matches!(event, AgentEvent::ApiRetry { .. }))
            .cloned()
            .collect();
        assert_eq!(
            retries,
            [1, 2].map(|attempt| AgentEvent::ApiRetry {
                attempt,
                max_retries: Some(2),
                error_status: Some(500),
                error: Some("server_error".to_owned()),
            })
        );
        // The synthetic answer carries zero usage, which must not read as an empty context.
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, AgentEvent::Usage { .. })),
            "{events:?}"
        );
        assert!(
            matches!(
                events.last(),
                Some(AgentEvent::TurnEnded { success: false, terminal_reason: Some(reason), summary, .. })
                    if reason == "api_error" && summary.starts_with("API Error: 500")
            ),
            "{events:?}"
        );
    }

    #[test]
    fn error_results_with_subtype_success_are_failures() {
        for (name, reason) in [
            ("blocking-limit.jsonl", "blocking_limit"),
            (
                "prompt-too-long-auto-compact-disabled.jsonl",
                "prompt_too_long",
            ),
        ] {
            let events = events_of(name);
            assert!(
                events.iter().any(|event| matches!(event,
                    AgentEvent::TurnEnded { success: false, terminal_reason: Some(r), .. } if r == reason)),
                "{name}: {events:?}"
            );
        }
    }

    #[test]
    fn a_generic_total_counts_as_input_tokens_unless_broken_down() {
        check(
            r#"{"type":"done","status":"success","summary":"ok","tokens":900,"cost_usd":0.5}"#,
            true,
            &[
                AgentEvent::Spend {
                    input_tokens: 900,
                    output_tokens: 0,
                    cache_read_tokens: 0,
                    cache_creation_tokens: 0,
                    cost_usd: Some(0.5),
                },
                AgentEvent::Finished {
                    success: true,
                    summary: "ok".to_owned(),
                    tokens: Some(900),
                    cost_usd: Some(0.5),
                },
            ],
        );
        let parsed = parse_line(
            r#"{"type":"done","status":"success","tokens":900,"input_tokens":500,"output_tokens":300,"cache_read_tokens":60,"cache_creation_tokens":40}"#,
        );
        assert_eq!(
            parsed.events[0],
            AgentEvent::Spend {
                input_tokens: 500,
                output_tokens: 300,
                cache_read_tokens: 60,
                cache_creation_tokens: 40,
                cost_usd: None,
            }
        );
    }

    #[test]
    fn keeps_unknown_lines_unknown() {
        for line in [
            "plain text",
            "",
            "{",
            "[1,2]",
            r#"{"no_type":1}"#,
            r#"{"type":"usage"}"#,
            r#"{"type":"usage","context_tokens":-5}"#,
            r#"{"type":"surprise"}"#,
            r#"{"type":"assistant"}"#,
        ] {
            check(line, false, &[]);
        }
    }
}
