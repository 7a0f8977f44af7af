//! OpenAI-compatible Chat Completions (OpenAI, vLLM, Ollama, llama.cpp): the answer is requested
//! through a strict JSON-schema response format.

use std::time::Duration;

use async_trait::async_trait;
use mosaic_security::Secret;
use serde_json::{Value, json};
use url::Url;

use crate::config::{ModelPrice, ParserConfigError};
use crate::error::LlmError;
use crate::http::{connection, post_json};
use crate::llm::{ExtractionRequest, LlmAnswer, LlmClient, LlmUsage};

/// `POST {base_url}/v1/chat/completions`, with `Authorization: Bearer` when a key is configured
/// (self-hosted servers usually need none).
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    endpoint: Url,
    model: String,
    api_key: Option<Secret>,
    timeout: Duration,
    price: Option<ModelPrice>,
}

impl OpenAiClient {
    pub fn new(
        base_url: &Url,
        model: impl Into<String>,
        api_key: Option<Secret>,
        timeout: Duration,
        price: Option<ModelPrice>,
    ) -> Result<Self, ParserConfigError> {
        let (endpoint, http) = connection(base_url, "v1/chat/completions", timeout)?;
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
            "messages": [
                { "role": "system", "content": request.system },
                { "role": "user", "content": request.user },
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": request.schema_name,
                    "description": request.schema_description,
                    "schema": request.schema,
                    "strict": true,
                },
            },
        })
    }
}

#[async_trait]
impl LlmClient for OpenAiClient {
    fn provider(&self) -> String {
        "openai".to_owned()
    }

    fn model(&self) -> String {
        self.model.clone()
    }

    async fn extract(&self, request: &ExtractionRequest) -> Result<LlmAnswer, LlmError> {
        let mut http_request = self
            .http
            .post(self.endpoint.clone())
            .header("content-type", "application/json")
            .body(self.body(request).to_string());
        if let Some(key) = &self.api_key {
            http_request = http_request.bearer_auth(key.expose_secret());
        }
        let success = post_json(http_request, self.timeout).await?;
        read_answer(&success.body, self.price)
    }
}

/// `choices[0].message.content` parsed as JSON, and the usage.
fn read_answer(body: &[u8], price: Option<ModelPrice>) -> Result<LlmAnswer, LlmError> {
    let response: Value = serde_json::from_slice(body)
        .map_err(|error| LlmError::invalid(format!("response is not JSON: {error}"), None))?;
    let usage = read_usage(&response["usage"], price);
    let choice = &response["choices"][0];
    if choice["finish_reason"] == "length" {
        return Err(LlmError::invalid(
            "the answer was cut off at max_tokens",
            usage,
        ));
    }
    let message = &choice["message"];
    if let Some(refusal) = message["refusal"].as_str() {
        return Err(LlmError::invalid(
            format!("the model refused: {}", crate::http::bounded(refusal)),
            usage,
        ));
    }
    let content = message["content"]
        .as_str()
        .ok_or_else(|| LlmError::invalid("response has no choices[0].message.content", usage))?;
    let value = serde_json::from_str(content).map_err(|error| {
        LlmError::invalid(format!("the answer is not valid JSON: {error}"), usage)
    })?;
    Ok(LlmAnswer {
        value,
        usage: usage.unwrap_or_default(),
    })
}

fn read_usage(usage: &Value, price: Option<ModelPrice>) -> Option<LlmUsage> {
    let input_tokens = usage["prompt_tokens"].as_u64()?;
    let output_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    Some(LlmUsage {
        input_tokens,
        output_tokens,
        cost_usd: price.map_or(0.0, |price| price.cost(input_tokens, output_tokens)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: Value, finish_reason: &str) -> Vec<u8> {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [ {
                "index": 0,
                "message": { "role": "assistant", "content": content, "refusal": null },
                "finish_reason": finish_reason
            } ],
            "usage": { "prompt_tokens": 2000, "completion_tokens": 50, "total_tokens": 2050 }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn reads_the_json_content_and_usage() {
        let price = ModelPrice {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
        };
        let answer = read_answer(
            &completion(json!("{\"difficulty\":\"high\"}"), "stop"),
            Some(price),
        )
        .unwrap();
        assert_eq!(answer.value, json!({ "difficulty": "high" }));
        assert_eq!(answer.usage.input_tokens, 2000);
        assert!((answer.usage.cost_usd - 0.0055).abs() < 1e-12);
    }

    #[test]
    fn truncated_refused_and_missing_answers_are_invalid() {
        let check = |body: Vec<u8>, expect: &str| {
            let error = read_answer(&body, None).unwrap_err();
            assert!(error.to_string().contains(expect), "{error}");
            assert!(!error.is_retryable());
        };
        check(
            completion(json!("{\"difficulty\":\"hi"), "stop"),
            "not valid JSON",
        );
        check(completion(json!("{\"difficulty\":"), "length"), "cut off");
        check(
            completion(Value::Null, "stop"),
            "no choices[0].message.content",
        );
        let refused = json!({
            "choices": [ { "message": { "content": null, "refusal": "no" }, "finish_reason": "stop" } ]
        });
        check(refused.to_string().into_bytes(), "refused");
        check(b"<html>".to_vec(), "not JSON");
    }
}
