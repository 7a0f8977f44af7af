//! The model's answer is untrusted input: checked against the schema before it steers anything.

use mosaic_domain::{Difficulty, IssueMetadata, IssueRef, MetadataSource, RepoName};
use serde_json::{Map, Value};

use crate::agents::KnownAgents;
use crate::config::EstimateBounds;
use crate::template::{MAX_REFERENCES, push_reference};

/// Why an answer does not follow the metadata schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is not a JSON object")]
    NotAnObject,
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{0}` is not part of the schema")]
    Unexpected(String),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{field}` has a value outside the schema: {value}")]
    BadValue { field: &'static str, value: String },
    #[error(
        "field `{field}` holds `{value}`, which is not an issue reference (#N or owner/repo#N)"
    )]
    BadReference { field: &'static str, value: String },
    #[error("field `{field}` lists more than {MAX_REFERENCES} references")]
    TooManyReferences { field: &'static str },
}

const FIELDS: [&str; 6] = [
    "estimated_context",
    "difficulty",
    "recommended_agent",
    "blocked_by",
    "blocks",
    "confidence",
];

/// Checks an answer against the schema and turns it into metadata (source `Llm`).
///
/// Type and enum violations reject the answer; positive estimates outside `bounds` are clamped,
/// confidence is clamped to 0..=1, and an agent that is not configured is dropped (the model
/// may suggest, configuration decides).
pub fn validate_answer(
    answer: &Value,
    repository: &RepoName,
    number: u64,
    agents: &KnownAgents,
    bounds: EstimateBounds,
) -> Result<IssueMetadata, AnswerError> {
    let object = answer.as_object().ok_or(AnswerError::NotAnObject)?;
    if let Some(unexpected) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(AnswerError::Unexpected(unexpected.clone()));
    }
    let own = IssueRef::new(repository.clone(), number);
    Ok(IssueMetadata {
        estimated_context: bounds.clamp(estimate(object)?),
        difficulty: difficulty(object)?,
        recommended_agent: recommended_agent(object, agents)?,
        blocked_by: references(object, "blocked_by", repository, &own)?,
        blocks: references(object, "blocks", repository, &own)?,
        source: MetadataSource::Llm,
        confidence: confidence(object)?,
    })
}

fn field<'a>(object: &'a Map<String, Value>, name: &'static str) -> Result<&'a Value, AnswerError> {
    object.get(name).ok_or(AnswerError::Missing(name))
}

fn estimate(object: &Map<String, Value>) -> Result<u64, AnswerError> {
    const FIELD: &str = "estimated_context";
    let value = field(object, FIELD)?;
    let wrong = || AnswerError::WrongType {
        field: FIELD,
        expected: "a positive integer",
    };
    let tokens = match value.as_u64() {
        Some(tokens) => tokens,
        // `46800.0` is the same integer; beyond u64 it saturates and is clamped below.
        None => match value.as_f64() {
            Some(float) if float.is_finite() && float > 0.0 && float.fract() == 0.0 => float as u64,
            _ => return Err(wrong()),
        },
    };
    if tokens == 0 {
        return Err(wrong());
    }
    Ok(tokens)
}

fn difficulty(object: &Map<String, Value>) -> Result<Difficulty, AnswerError> {
    const FIELD: &str = "difficulty";
    let text = field(object, FIELD)?
        .as_str()
        .ok_or(AnswerError::WrongType {
            field: FIELD,
            expected: "a string",
        })?;
    text.parse().map_err(|_| AnswerError::BadValue {
        field: FIELD,
        value: shorten(text),
    })
}

fn recommended_agent(
    object: &Map<String, Value>,
    agents: &KnownAgents,
) -> Result<Option<String>, AnswerError> {
    const FIELD: &str = "recommended_agent";
    match field(object, FIELD)? {
        Value::Null => Ok(None),
        Value::String(name) => {
            let resolved = agents.resolve(name);
            if resolved.is_none() && !name.trim().is_empty() {
                tracing::warn!(agent = %shorten(name), "dropping an agent the model named that is not configured");
            }
            Ok(resolved)
        }
        _ => Err(AnswerError::WrongType {
            field: FIELD,
            expected: "a string or null",
        }),
    }
}

fn references(
    object: &Map<String, Value>,
    name: &'static str,
    repository: &RepoName,
    own: &IssueRef,
) -> Result<Vec<IssueRef>, AnswerError> {
    let items = field(object, name)?
        .as_array()
        .ok_or(AnswerError::WrongType {
            field: name,
            expected: "an array of strings",
        })?;
    if items.len() > MAX_REFERENCES {
        return Err(AnswerError::TooManyReferences { field: name });
    }
    let mut references = Vec::with_capacity(items.len());
    for item in items {
        let text = item.as_str().ok_or(AnswerError::WrongType {
            field: name,
            expected: "an array of strings",
        })?;
        let reference =
            IssueRef::parse_relative(text, repository).map_err(|_| AnswerError::BadReference {
                field: name,
                value: shorten(text),
            })?;
        push_reference(&mut references, reference, own);
    }
    Ok(references)
}

fn confidence(object: &Map<String, Value>) -> Result<f32, AnswerError> {
    const FIELD: &str = "confidence";
    let value = field(object, FIELD)?
        .as_f64()
        .ok_or(AnswerError::WrongType {
            field: FIELD,
            expected: "a number",
        })?;
    Ok(value.clamp(0.0, 1.0) as f32)
}

/// Untrusted text quoted in an error or log: bounded so an answer cannot flood the logs.
fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 80;
    if text.chars().count() <= MAX_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_CHARS).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn valid() -> Value {
        json!({
            "estimated_context": 46800,
            "difficulty": "medium",
            "recommended_agent": "glm",
            "blocked_by": ["#151"],
            "blocks": ["#153", "mosaic/infra#7"],
            "confidence": 0.8
        })
    }

    /// Applies `edit` to a valid answer and shows the result (or the error) as one line.
    fn check(edit: impl FnOnce(&mut Map<String, Value>), expect: &str) {
        let mut answer = valid();
        if let Some(object) = answer.as_object_mut() {
            edit(object);
        }
        let repository: RepoName = "mosaic/coordinator".parse().unwrap();
        let got = match validate_answer(
            &answer,
            &repository,
            150,
            &KnownAgents::new(["glm", "opus"]),
            EstimateBounds::default(),
        ) {
            Ok(metadata) => format!(
                "{} {} agent={} by={:?} blocks={:?} conf={}",
                metadata.estimated_context,
                metadata.difficulty,
                metadata.recommended_agent.as_deref().unwrap_or("-"),
                metadata
                    .blocked_by
                    .iter()
                    .map(|r| r.display_from(&repository))
                    .collect::<Vec<_>>(),
                metadata
                    .blocks
                    .iter()
                    .map(|r| r.display_from(&repository))
                    .collect::<Vec<_>>(),
                metadata.confidence
            ),
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(got, expect);
    }

    fn set(name: &'static str, value: Value) -> impl FnOnce(&mut Map<String, Value>) {
        move |object| {
            object.insert(name.to_owned(), value);
        }
    }

    fn remove(name: &'static str) -> impl FnOnce(&mut Map<String, Value>) {
        move |object| {
            object.remove(name);
        }
    }

    #[test]
    fn valid_answers_become_metadata() {
        check(
            |_| {},
            r##"46800 medium agent=glm by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
        check(
            set("estimated_context", json!(46800.0)),
            r##"46800 medium agent=glm by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
        check(
            set("recommended_agent", Value::Null),
            r##"46800 medium agent=- by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
        check(
            set("recommended_agent", json!("OPUS")),
            r##"46800 medium agent=opus by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
        check(
            set("difficulty", json!("hard")),
            r##"46800 high agent=glm by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
    }

    #[test]
    fn out_of_range_numbers_are_clamped() {
        check(
            set("estimated_context", json!(5)),
            r##"1000 medium agent=glm by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
        check(
            set("estimated_context", json!(1e300)),
            r##"2000000 medium agent=glm by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
        check(
            set("confidence", json!(7)),
            r##"46800 medium agent=glm by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=1"##,
        );
        check(
            set("confidence", json!(-1)),
            r##"46800 medium agent=glm by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0"##,
        );
    }

    #[test]
    fn unknown_agents_are_dropped_and_references_cleaned() {
        check(
            set("recommended_agent", json!("root-shell")),
            r##"46800 medium agent=- by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
        check(
            set("blocked_by", json!(["#151", "#151", "#150"])),
            r##"46800 medium agent=glm by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
    }

    #[test]
    fn schema_violations_are_rejected() {
        check(
            set("estimated_context", json!("46800")),
            "error: field `estimated_context` must be a positive integer",
        );
        check(
            set("estimated_context", json!(0)),
            "error: field `estimated_context` must be a positive integer",
        );
        check(
            set("estimated_context", json!(-5)),
            "error: field `estimated_context` must be a positive integer",
        );
        check(
            set("estimated_context", json!(1.5)),
            "error: field `estimated_context` must be a positive integer",
        );
        check(
            set("difficulty", json!("impossible")),
            "error: field `difficulty` has a value outside the schema: impossible",
        );
        check(
            set("difficulty", json!(3)),
            "error: field `difficulty` must be a string",
        );
        check(
            set("recommended_agent", json!(["glm"])),
            "error: field `recommended_agent` must be a string or null",
        );
        check(
            set("blocked_by", json!("#151")),
            "error: field `blocked_by` must be an array of strings",
        );
        check(
            set("blocks", json!([153])),
            "error: field `blocks` must be an array of strings",
        );
        check(
            set("blocks", json!(["../../etc#1"])),
            "error: field `blocks` holds `../../etc#1`, which is not an issue reference (#N or owner/repo#N)",
        );
        check(
            set(
                "blocks",
                json!((1..=101).map(|n| format!("#{n}")).collect::<Vec<_>>()),
            ),
            "error: field `blocks` lists more than 100 references",
        );
        check(
            set("confidence", json!("high")),
            "error: field `confidence` must be a number",
        );
        check(
            set("command", json!("rm -rf /")),
            "error: field `command` is not part of the schema",
        );
        check(remove("difficulty"), "error: field `difficulty` is missing");
        check(
            remove("recommended_agent"),
            "error: field `recommended_agent` is missing",
        );
    }

    #[test]
    fn non_objects_are_rejected() {
        let repository: RepoName = "o/r".parse().unwrap();
        for answer in [json!(null), json!([1]), json!("text")] {
            assert_eq!(
                validate_answer(
                    &answer,
                    &repository,
                    1,
                    &KnownAgents::default(),
                    EstimateBounds::default()
                ),
                Err(AnswerError::NotAnObject)
            );
        }
    }
}
