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

/// An answer read field by field: each field's value, or why it cannot be used. Optional
/// fields (`recommended_agent`, `blocked_by`, `blocks`, `confidence`) may be missing or null.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerFields {
    pub estimated_context: Result<u64, AnswerError>,
    pub difficulty: Result<Difficulty, AnswerError>,
    pub recommended_agent: Result<Option<String>, AnswerError>,
    pub blocked_by: Result<Vec<IssueRef>, AnswerError>,
    pub blocks: Result<Vec<IssueRef>, AnswerError>,
    pub confidence: Result<Option<f32>, AnswerError>,
    /// Keys outside the schema (ignored, reported).
    pub unexpected: Vec<String>,
}

impl AnswerFields {
    /// Whether the answer carries what only a reading of the issue can give: a valid estimate
    /// and difficulty. Otherwise the model is asked again (and then the template decides).
    pub fn usable(&self) -> bool {
        self.estimated_context.is_ok() && self.difficulty.is_ok()
    }

    /// Every problem, in schema order (for logs and the retry decision).
    pub fn problems(&self) -> Vec<AnswerError> {
        let mut problems: Vec<AnswerError> = [
            self.estimated_context.as_ref().err(),
            self.difficulty.as_ref().err(),
            self.recommended_agent.as_ref().err(),
            self.blocked_by.as_ref().err(),
            self.blocks.as_ref().err(),
            self.confidence.as_ref().err(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        problems.extend(self.unexpected.iter().cloned().map(AnswerError::Unexpected));
        problems
    }

    /// The answer's valid fields over `template` (the template parser's reading of the same
    /// issue), field by field; dependencies are the union of both, since a reference the body
    /// states (`Blocked by: #N`) must never be lost to a model that overlooked it. The source
    /// is `Llm` when the answer is usable, else the template's own.
    pub fn merge_over(self, template: IssueMetadata, own: &IssueRef) -> IssueMetadata {
        let usable = self.usable();
        // The answer's references first, then those only the body states.
        let union = |answer: Result<Vec<IssueRef>, AnswerError>, body: Vec<IssueRef>| {
            let mut all = answer.unwrap_or_default();
            for reference in body {
                push_reference(&mut all, reference, own);
            }
            all
        };
        IssueMetadata {
            estimated_context: self.estimated_context.unwrap_or(template.estimated_context),
            difficulty: self.difficulty.unwrap_or(template.difficulty),
            recommended_agent: self
                .recommended_agent
                .ok()
                .flatten()
                .or(template.recommended_agent),
            blocked_by: union(self.blocked_by, template.blocked_by),
            blocks: union(self.blocks, template.blocks),
            source: if usable {
                MetadataSource::Llm
            } else {
                template.source
            },
            confidence: match self.confidence {
                Ok(Some(confidence)) if usable => confidence,
                _ => template.confidence,
            },
        }
    }
}

/// Reads an answer field by field. Only a non-object is rejected whole.
///
/// Positive estimates outside `bounds` are clamped, confidence is clamped to 0..=1, and an agent
/// that is not configured is dropped (the model may suggest, configuration decides).
pub fn read_answer(
    answer: &Value,
    repository: &RepoName,
    number: u64,
    agents: &KnownAgents,
    bounds: EstimateBounds,
) -> Result<AnswerFields, AnswerError> {
    let object = answer.as_object().ok_or(AnswerError::NotAnObject)?;
    let own = IssueRef::new(repository.clone(), number);
    Ok(AnswerFields {
        estimated_context: estimate(object).map(|tokens| bounds.clamp(tokens)),
        difficulty: difficulty(object),
        recommended_agent: recommended_agent(object, agents),
        blocked_by: references(object, "blocked_by", repository, &own),
        blocks: references(object, "blocks", repository, &own),
        confidence: confidence(object),
        unexpected: object
            .keys()
            .filter(|key| !FIELDS.contains(&key.as_str()))
            .map(|key| shorten(key))
            .collect(),
    })
}

/// Checks an answer strictly against the schema: the first problem rejects it. (The parser
/// itself reads answers leniently with [`read_answer`]; this is the schema as a predicate.)
pub fn validate_answer(
    answer: &Value,
    repository: &RepoName,
    number: u64,
    agents: &KnownAgents,
    bounds: EstimateBounds,
) -> Result<IssueMetadata, AnswerError> {
    let fields = read_answer(answer, repository, number, agents, bounds)?;
    if let Some(problem) = fields.problems().into_iter().next() {
        return Err(problem);
    }
    Ok(IssueMetadata {
        estimated_context: fields.estimated_context?,
        difficulty: fields.difficulty?,
        recommended_agent: fields.recommended_agent?,
        blocked_by: fields.blocked_by?,
        blocks: fields.blocks?,
        source: MetadataSource::Llm,
        confidence: fields.confidence?.unwrap_or(DEFAULT_CONFIDENCE),
    })
}

/// Confidence of an answer that does not state one.
const DEFAULT_CONFIDENCE: f32 = 0.5;

/// An optional field: missing and `null` both mean "not stated".
fn optional<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|value| !value.is_null())
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
    match optional(object, FIELD) {
        None => Ok(None),
        Some(Value::String(name)) => {
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
    let Some(value) = optional(object, name) else {
        return Ok(Vec::new());
    };
    let items = value.as_array().ok_or(AnswerError::WrongType {
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

fn confidence(object: &Map<String, Value>) -> Result<Option<f32>, AnswerError> {
    const FIELD: &str = "confidence";
    let Some(value) = optional(object, FIELD) else {
        return Ok(None);
    };
    let value = value.as_f64().ok_or(AnswerError::WrongType {
        field: FIELD,
        expected: "a number",
    })?;
    Ok(Some(value.clamp(0.0, 1.0) as f32))
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
    }

    #[test]
    fn optional_fields_may_be_missing_or_null() {
        check(
            remove("recommended_agent"),
            r##"46800 medium agent=- by=["#151"] blocks=["#153", "mosaic/infra#7"] conf=0.8"##,
        );
        check(
            |object| {
                object.remove("blocked_by");
                object.insert("blocks".into(), Value::Null);
                object.remove("confidence");
            },
            "46800 medium agent=glm by=[] blocks=[] conf=0.5",
        );
    }

    fn own() -> IssueRef {
        IssueRef::new("mosaic/coordinator".parse().unwrap(), 150)
    }

    fn read(edit: impl FnOnce(&mut Map<String, Value>)) -> AnswerFields {
        let mut answer = valid();
        if let Some(object) = answer.as_object_mut() {
            edit(object);
        }
        read_answer(
            &answer,
            &"mosaic/coordinator".parse().unwrap(),
            150,
            &KnownAgents::new(["glm", "opus"]),
            EstimateBounds::default(),
        )
        .unwrap()
    }

    fn template_reading() -> IssueMetadata {
        let repo: RepoName = "mosaic/coordinator".parse().unwrap();
        IssueMetadata {
            estimated_context: 20_000,
            difficulty: Difficulty::Low,
            recommended_agent: Some("opus".to_owned()),
            blocks: vec![],
            blocked_by: vec![IssueRef::new(repo.clone(), 99), IssueRef::new(repo, 151)],
            source: MetadataSource::Template,
            confidence: 0.9,
        }
    }

    #[test]
    fn a_bad_field_falls_back_alone_and_the_body_s_references_are_always_kept() {
        // One broken optional field: the rest of the answer is used.
        let fields = read(set("recommended_agent", json!(["glm"])));
        assert!(fields.usable());
        assert_eq!(fields.problems().len(), 1);
        let merged = fields.merge_over(template_reading(), &own());
        assert_eq!(merged.source, MetadataSource::Llm);
        assert_eq!(merged.estimated_context, 46_800);
        assert_eq!(merged.difficulty, Difficulty::Medium);
        assert_eq!(
            merged.recommended_agent.as_deref(),
            Some("opus"),
            "the template's"
        );
        // #99 is only in the body: it is kept. #151 is in both: once.
        let blockers: Vec<u64> = merged.blocked_by.iter().map(|r| r.number).collect();
        assert_eq!(blockers, [151, 99]);
        assert_eq!(merged.blocks.len(), 2);

        // No usable estimate: the template's, and the source says so; valid fields still count.
        let fields = read(set("estimated_context", json!("lots")));
        assert!(!fields.usable());
        let merged = fields.merge_over(template_reading(), &own());
        assert_eq!(merged.source, MetadataSource::Template);
        assert_eq!(merged.estimated_context, 20_000);
        assert_eq!(
            merged.difficulty,
            Difficulty::Medium,
            "the answer's valid field"
        );
        assert_eq!(merged.confidence, 0.9, "the template's confidence");

        // Unknown keys are reported, not fatal to the reading.
        let fields = read(set("command", json!("rm -rf /")));
        assert!(fields.usable());
        assert_eq!(fields.unexpected, ["command"]);
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
