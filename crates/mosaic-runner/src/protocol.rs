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
    /// The agent reports the end of its work.
    Finished {
        success: bool,
        summary: String,
        tokens: Option<u64>,
        cost_usd: Option<f64>,
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

fn total_tokens(usage: &Value) -> Option<u64> {
    let context = context_tokens(usage)?;
    Some(context.saturating_add(field_u64(usage, "output_tokens").unwrap_or(0)))
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
            Some("compact_boundary") => ParsedLine::known(vec![AgentEvent::Compacted {
                before_tokens: value
                    .get("compact_metadata")
                    .and_then(|meta| field_u64(meta, "pre_tokens")),
                after_tokens: None,
            }]),
            Some(_) => ParsedLine::known(Vec::new()),
            None => ParsedLine::unknown(),
        },
        "user" | "stream_event" => ParsedLine::known(Vec::new()),
        "result" => {
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
            ParsedLine::known(vec![AgentEvent::Finished {
                success: !is_error,
                summary,
                tokens: value.get("usage").and_then(total_tokens),
                cost_usd: value.get("total_cost_usd").and_then(Value::as_f64),
            }])
        }
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
            ParsedLine::known(vec![AgentEvent::Finished {
                success: status == "success",
                summary: value
                    .get("summary")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("status: {status}"), str::to_owned),
                tokens: field_u64(&value, "tokens"),
                cost_usd: value.get("cost_usd").and_then(Value::as_f64),
            }])
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
            &[AgentEvent::Finished {
                success: true,
                summary: "All done".to_owned(),
                tokens: Some(21_303),
                cost_usd: Some(0.1046),
            }],
        );
        check(
            r#"{"type":"result","subtype":"error_max_turns","is_error":true}"#,
            true,
            &[AgentEvent::Finished {
                success: false,
                summary: "result: error_max_turns".to_owned(),
                tokens: None,
                cost_usd: None,
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
