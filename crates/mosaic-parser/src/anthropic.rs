//! Anthropic Messages API: the answer is requested as a forced tool call.

use std::time::Duration;

use async_trait::async_trait;
use mosaic_security::Secret;
use serde_json::{Value, json};
use url::Url;

use crate::config::{ModelPrice, ParserConfigError};
use crate::error::LlmError;
use crate::http::{connection, post_json};
use crate::llm::{ExtractionRequest, LlmAnswer, LlmClient, LlmUsage};

const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `POST {base_url}/v1/messages` with `x-api-key`.
#[derive(Debug, Clone)]
pub struct AnthropicClient {
    http: reqwest::Client,
    endpoint: Url,
    model: String,
    api_key: Secret,
    timeout: Duration,
    price: Option<ModelPrice>,
}

impl AnthropicClient {
    pub fn new(
        base_url: &Url,
        model: impl Into<String>,
        api_key: Secret,
        timeout: Duration,
        price: Option<ModelPrice>,
    ) -> Result<Self, ParserConfigError> {
        let (endpoint, http) = connection(base_url, "v1/messages", timeout)?;
        Ok(Self {
            http,
            endpoint,
            model: model.into(),
            api_key,
            timeout,
            price,
        })
    }

    fn body(&self, request: &ExtractionRequest) -> Value {
        json!({
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "messages": [ { "role": "user", "content": request.user } ],
            "tools": [ {
                "name": request.schema_name,
                "description": request.schema_description,
                "input_schema": request.schema,
            } ],
            "tool_choice": { "type": "tool", "name": request.schema_name },
        })
    }
}

#[async_trait]
impl LlmClient for AnthropicClient {
    fn provider(&self) -> String {
        "anthropic".to_owned()
    }

    fn model(&self) -> String {
        self.model.clone()
    }

    async fn extract(&self, request: &ExtractionRequest) -> Result<LlmAnswer, LlmError> {
        let http_request = self
            .http
            .post(self.endpoint.clone())
            .header("x-api-key", self.api_key.expose_secret())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .header("content-type", "application/json")
            .body(self.body(request).to_string());
        let success = post_json(http_request, self.timeout).await?;
        read_answer(&success.body, &request.schema_name, self.price)
    }
}

/// The `input` of the `tool_use` block naming our tool, and the usage.
fn read_answer(
    body: &[u8],
    tool_name: &str,
    price: Option<ModelPrice>,
) -> Result<LlmAnswer, LlmError> {
    let response: Value = serde_json::from_slice(body)
        .map_err(|error| LlmError::invalid(format!("response is not JSON: {error}"), None))?;
    let usage = read_usage(&response["usage"], price);
    if response["stop_reason"] == "max_tokens" {
        return Err(LlmError::invalid(
            "the answer was cut off at max_tokens",
            usage,
        ));
    }
    let content = response["content"]
        .as_array()
        .ok_or_else(|| LlmError::invalid("response has no content array", usage))?;
    let input = content
        .iter()
        .find(|block| block["type"] == "tool_use" && block["name"] == tool_name)
        .map(|block| block["input"].clone())
        .ok_or_else(|| {
            LlmError::invalid(
                format!("the model answered without calling {tool_name}"),
                usage,
            )
        })?;
    Ok(LlmAnswer {
        value: input,
        usage: usage.unwrap_or_default(),
    })
}

fn read_usage(usage: &Value, price: Option<ModelPrice>) -> Option<LlmUsage> {
    let input_tokens = usage["input_tokens"].as_u64()?;
    let output_tokens = usage["output_tokens"].as_u64().unwrap_or(0);
    Some(LlmUsage {
        input_tokens,
        output_tokens,
        cost_usd: price.map_or(0.0, |price| price.cost(input_tokens, output_tokens)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tool_use_block_and_usage() {
        let body = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [
                { "type": "text", "text": "Recording." },
                { "type": "tool_use", "id": "toolu_01", "name": "record_issue_metadata",
                  "input": { "difficulty": "low" } }
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": { "input_tokens": 1000, "output_tokens": 100 }
        });
        let price = ModelPrice {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
        };
        let answer = read_answer(
            body.to_string().as_bytes(),
            "record_issue_metadata",
            Some(price),
        )
        .unwrap();
        assert_eq!(answer.value, json!({ "difficulty": "low" }));
        assert_eq!(answer.usage.input_tokens, 1000);
        assert_eq!(answer.usage.output_tokens, 100);
        assert!((answer.usage.cost_usd - 0.0045).abs() < 1e-12);
    }

    #[test]
    fn text_only_and_truncated_answers_are_invalid_but_keep_usage() {
        let text_only = json!({
            "type": "message", "role": "assistant",
            "content": [ { "type": "text", "text": "I refuse." } ],
            "stop_reason": "end_turn",
            "usage": { "input_tokens": 10, "output_tokens": 5 }
        });
        let error = read_answer(
            text_only.to_string().as_bytes(),
            "record_issue_metadata",
            None,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the model's answer is unusable: the model answered without calling record_issue_metadata"
        );
        assert_eq!(error.usage().map(|u| u.output_tokens), Some(5));
        let cut = json!({
            "content": [ { "type": "tool_use", "name": "record_issue_metadata", "input": {} } ],
            "stop_reason": "max_tokens",
            "usage": { "input_tokens": 10, "output_tokens": 512 }
        });
        assert!(matches!(
            read_answer(cut.to_string().as_bytes(), "record_issue_metadata", None),
            Err(LlmError::InvalidAnswer { .. })
        ));
        assert!(matches!(
            read_answer(b"{\"content\": [", "record_issue_metadata", None),
            Err(LlmError::InvalidAnswer { usage: None, .. })
        ));
    }
}
