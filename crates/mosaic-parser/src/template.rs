//! The embedded default parser: reads the issue template (and its common variants) without a
//! network. Also the fallback whenever a model fails.

use std::sync::LazyLock;

use async_trait::async_trait;
use mosaic_domain::{
    Difficulty, DocLevel, EstimateComponents, IssueMetadata, IssueRef, Level, MetadataSource,
    RepoName,
};
use regex::Regex;

use crate::agents::KnownAgents;
use crate::config::EstimateBounds;
use crate::numbers::{first_integer, first_token_count};
use crate::parser::{IssueParser, ParseInput, ParseOutcome, ParserHealth};

/// Most references one list may hold; more is noise or an attack, not a plan.
pub(crate) const MAX_REFERENCES: usize = 100;
/// Labels considered per issue; trackers allow far fewer in practice.
const MAX_LABELS: usize = 100;
/// A file count beyond this is nonsense; the estimate is clamped afterwards anyway.
const MAX_FILES: u64 = 10_000;

/// Confidence when the issue states a total.
const CONFIDENCE_TOTAL: f32 = 0.9;
/// Confidence when the estimate comes from all four components.
const CONFIDENCE_COMPONENTS: f32 = 0.7;
/// Confidence when the documentation component is missing and taken as none.
const CONFIDENCE_PARTIAL_COMPONENTS: f32 = 0.6;
/// Confidence of a configured default (estimate or difficulty).
const CONFIDENCE_DEFAULT: f32 = 0.3;

/// What the template parser falls back to and how much of a body it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateSettings {
    pub bounds: EstimateBounds,
    /// Used, with low confidence, when the issue gives neither a total nor components.
    pub default_estimate: u64,
    pub default_difficulty: Difficulty,
    /// Bytes of a body that are scanned; the rest is ignored (hostile bodies can be huge).
    pub max_body_bytes: usize,
}

impl Default for TemplateSettings {
    fn default() -> Self {
        Self {
            bounds: EstimateBounds::default(),
            default_estimate: 50_000,
            default_difficulty: Difficulty::Medium,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Reads `## Context Estimate`, `## Difficulty`, `## Dependencies` and their inline variants.
#[derive(Debug, Clone)]
pub struct TemplateParser {
    settings: TemplateSettings,
    agents: KnownAgents,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Estimate,
    Difficulty,
    Dependencies,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DependencyKind {
    BlockedBy,
    Blocks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Total,
    Files,
    Complexity,
    Tests,
    Docs,
    Agent,
    Difficulty,
    Dependency(DependencyKind),
}

#[allow(clippy::unwrap_used)] // constant patterns, exercised by every test in this module
static KEYS: LazyLock<Vec<(Regex, Field)>> = LazyLock::new(|| {
    let key = |pattern: &str, field| {
        // A key starts the (cleaned) line and is followed by `:`/`=` or, for dependencies,
        // directly by the references (`Blocked by #12`).
        let regex = Regex::new(&format!(r"(?i)^(?:{pattern})\b\s*[:=]?\s*(.*)$")).unwrap();
        (regex, field)
    };
    vec![
        key(
            r"total(?:\s+estimated?)?(?:\s+context)?(?:\s+tokens)?|estimated(?:\s+context|\s+total|\s+tokens)?|context\s+estimate|estimate",
            Field::Total,
        ),
        key(r"files(?:\s+to\s+(?:modify|change|touch))?", Field::Files),
        key(r"(?:implementation\s+)?complexity", Field::Complexity),
        key(r"tests?(?:\s+requirements?)?|testing", Field::Tests),
        key(r"docs|documentation(?:\s+requirements?)?", Field::Docs),
        key(r"(?:recommended|suggested|assigned)?\s*agent", Field::Agent),
        key(r"difficulty", Field::Difficulty),
        key(
            r"blocked\s+by|depends\s+on|dependencies",
            Field::Dependency(DependencyKind::BlockedBy),
        ),
        key(r"blocks", Field::Dependency(DependencyKind::Blocks)),
    ]
});

#[allow(clippy::unwrap_used)] // a constant pattern
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^A-Za-z0-9_./#-])((?:[A-Za-z0-9._-]+/[A-Za-z0-9._-]+)?#\d+)\b").unwrap()
});

#[allow(clippy::unwrap_used)] // a constant pattern
static STARTS_WITH_REFERENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[A-Za-z0-9._-]+/[A-Za-z0-9._-]+)?#\d").unwrap());

#[allow(clippy::unwrap_used)] // a constant pattern
static LIST_MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[-*+]|\d{1,3}[.)])\s+(?:\[[ xX]\]\s+)?").unwrap());

/// Everything the body and labels said, before defaults and bounds are applied.
#[derive(Debug, Default)]
struct Findings {
    total: Option<u64>,
    files: Option<u64>,
    complexity: Option<Level>,
    tests: Option<Level>,
    docs: Option<DocLevel>,
    agent: Option<String>,
    difficulty: Option<Difficulty>,
    blocked_by: Vec<IssueRef>,
    blocks: Vec<IssueRef>,
}

impl Findings {
    fn found_anything(&self) -> bool {
        self.total.is_some()
            || self.files.is_some()
            || self.complexity.is_some()
            || self.tests.is_some()
            || self.docs.is_some()
            || self.agent.is_some()
            || self.difficulty.is_some()
            || !self.blocked_by.is_empty()
            || !self.blocks.is_empty()
    }
}

/// The longest prefix of `text` of at most `max_bytes` that ends on a character boundary.
pub(crate) fn capped(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A line without list markers, checkboxes and emphasis, so `- **Total estimated: 1k**` reads
/// as `Total estimated: 1k`.
fn clean(line: &str) -> String {
    let line = line.trim().trim_start_matches('>').trim();
    let line = LIST_MARKER.replace(line, "");
    line.replace("**", "")
        .replace("__", "")
        .replace('`', "")
        .trim()
        .to_owned()
}

fn heading(line: &str) -> Option<&str> {
    let hashes = line.bytes().take_while(|b| *b == b'#').count();
    if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
        Some(line[hashes..].trim())
    } else {
        None
    }
}

fn classify_heading(text: &str) -> Section {
    let text = text.to_lowercase();
    if text.contains("difficulty") {
        Section::Difficulty
    } else if text.contains("dependenc") {
        Section::Dependencies
    } else if text.contains("estimate") {
        Section::Estimate
    } else {
        Section::Other
    }
}

fn first_word(text: &str) -> &str {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
        .find(|word| !word.is_empty())
        .unwrap_or("")
}

fn is_none_word(text: &str) -> bool {
    matches!(
        first_word(text).to_ascii_lowercase().as_str(),
        "none" | "n/a" | "na" | "nothing" | "no"
    )
}

/// Issue references in `text`, relative to `base`; malformed ones (`#0`, absurd numbers) skipped.
pub(crate) fn references_in(text: &str, base: &RepoName) -> impl Iterator<Item = IssueRef> {
    REFERENCE
        .captures_iter(text)
        .filter_map(|captures| captures.get(1))
        .filter_map(|found| IssueRef::parse_relative(found.as_str(), base).ok())
        .collect::<Vec<_>>()
        .into_iter()
}

/// Adds `reference` unless it is a duplicate, the issue itself, or the list is full.
pub(crate) fn push_reference(list: &mut Vec<IssueRef>, reference: IssueRef, own: &IssueRef) {
    if list.len() < MAX_REFERENCES && &reference != own && !list.contains(&reference) {
        list.push(reference);
    }
}

impl TemplateParser {
    pub fn new(settings: TemplateSettings, agents: KnownAgents) -> Self {
        Self { settings, agents }
    }

    pub fn settings(&self) -> &TemplateSettings {
        &self.settings
    }

    pub fn agents(&self) -> &KnownAgents {
        &self.agents
    }

    /// Reads the issue; never fails: what is missing comes from the configured defaults.
    pub fn parse_metadata(&self, input: &ParseInput) -> IssueMetadata {
        let own = IssueRef::new(input.repository.clone(), input.number);
        let mut findings = Findings::default();
        self.read_body(input, &own, &mut findings);
        self.apply_labels(&input.labels, &mut findings);
        self.assemble(findings)
    }

    fn read_body(&self, input: &ParseInput, own: &IssueRef, findings: &mut Findings) {
        let body = capped(&input.body, self.settings.max_body_bytes);
        let mut section = Section::Other;
        // The dependency list that a following nested list (`- #12` lines) belongs to.
        let mut open_list: Option<DependencyKind> = None;
        for raw in body.lines() {
            let trimmed = raw.trim();
            if let Some(text) = heading(trimmed) {
                section = classify_heading(text);
                open_list = (section == Section::Dependencies).then_some(DependencyKind::BlockedBy);
                continue;
            }
            let line = clean(trimmed);
            if line.is_empty() {
                continue;
            }
            if let Some((field, value)) = KEYS.iter().find_map(|(regex, field)| {
                let captures = regex.captures(&line)?;
                Some((*field, captures.get(1).map_or("", |m| m.as_str()).trim()))
            }) {
                open_list = None;
                self.read_field(
                    field,
                    value,
                    input,
                    own,
                    findings,
                    &mut section,
                    &mut open_list,
                );
                continue;
            }
            match section {
                Section::Difficulty if findings.difficulty.is_none() => {
                    findings.difficulty = first_word(&line).parse().ok();
                }
                Section::Dependencies | Section::Other | Section::Estimate => {
                    if let Some(kind) = open_list {
                        // A list of references continues only with lines that start with one.
                        if !STARTS_WITH_REFERENCE.is_match(&line) {
                            open_list = None;
                            continue;
                        }
                        let list = match kind {
                            DependencyKind::BlockedBy => &mut findings.blocked_by,
                            DependencyKind::Blocks => &mut findings.blocks,
                        };
                        for reference in references_in(&line, &input.repository) {
                            push_reference(list, reference, own);
                        }
                    }
                }
                Section::Difficulty => {}
            }
        }
    }

    fn read_field(
        &self,
        field: Field,
        value: &str,
        input: &ParseInput,
        own: &IssueRef,
        findings: &mut Findings,
        section: &mut Section,
        open_list: &mut Option<DependencyKind>,
    ) {
        // The first statement of a field wins: the template section comes before any prose.
        match field {
            Field::Total => {
                if findings.total.is_none() {
                    findings.total = first_token_count(value).filter(|total| *total > 0);
                }
            }
            Field::Files => {
                if findings.files.is_none() {
                    findings.files = first_integer(value);
                }
            }
            Field::Complexity => {
                if findings.complexity.is_none() {
                    findings.complexity = first_word(value).parse().ok();
                }
            }
            Field::Tests => {
                if findings.tests.is_none() {
                    findings.tests = first_word(value).parse().ok();
                }
            }
            Field::Docs => {
                if findings.docs.is_none() {
                    findings.docs = first_word(value).parse().ok();
                }
            }
            Field::Agent => {
                if findings.agent.is_none() {
                    findings.agent = self.agents.resolve(first_word(value));
                }
            }
            Field::Difficulty => {
                if value.is_empty() {
                    // `**Difficulty**` on its own line works like a heading.
                    *section = Section::Difficulty;
                } else if findings.difficulty.is_none() {
                    findings.difficulty = first_word(value).parse().ok();
                }
            }
            Field::Dependency(kind) => {
                if is_none_word(value) {
                    return;
                }
                let list = match kind {
                    DependencyKind::BlockedBy => &mut findings.blocked_by,
                    DependencyKind::Blocks => &mut findings.blocks,
                };
                let before = list.len();
                for reference in references_in(value, &input.repository) {
                    push_reference(list, reference, own);
                }
                if value.is_empty() || list.len() > before {
                    // References may continue on the following list lines.
                    *open_list = Some(kind);
                }
            }
        }
    }

    /// `difficulty:hard`, `agent:opus`, `estimate:40k` (also with `/` or `=`): labels are set
    /// deliberately by people, so they win over the body.
    fn apply_labels(&self, labels: &[String], findings: &mut Findings) {
        for label in labels.iter().take(MAX_LABELS) {
            let Some((key, value)) = label.split_once([':', '/', '=']) else {
                continue;
            };
            let value = value.trim();
            match key.trim().to_ascii_lowercase().as_str() {
                "difficulty" => {
                    if let Ok(difficulty) = value.parse() {
                        findings.difficulty = Some(difficulty);
                    }
                }
                "agent" => {
                    if let Some(agent) = self.agents.resolve(value) {
                        findings.agent = Some(agent);
                    }
                }
                "estimate" | "estimated" => {
                    if let Some(total) = first_token_count(value).filter(|total| *total > 0) {
                        findings.total = Some(total);
                    }
                }
                _ => {}
            }
        }
    }

    fn assemble(&self, findings: Findings) -> IssueMetadata {
        let bounds = self.settings.bounds;
        let (estimate, estimate_confidence) = if let Some(total) = findings.total {
            (bounds.clamp(total), CONFIDENCE_TOTAL)
        } else if let (Some(files), Some(complexity), Some(tests)) =
            (findings.files, findings.complexity, findings.tests)
        {
            let components = EstimateComponents {
                // Bounded above, so the conversion cannot fail; the fallback keeps clippy happy.
                files: u32::try_from(files.min(MAX_FILES)).unwrap_or(u32::MAX),
                complexity,
                tests,
                docs: findings.docs.unwrap_or(DocLevel::None),
            };
            let confidence = if findings.docs.is_some() {
                CONFIDENCE_COMPONENTS
            } else {
                CONFIDENCE_PARTIAL_COMPONENTS
            };
            (bounds.clamp(components.total_tokens()), confidence)
        } else {
            (
                bounds.clamp(self.settings.default_estimate),
                CONFIDENCE_DEFAULT,
            )
        };
        let (difficulty, difficulty_confidence) = match findings.difficulty {
            Some(difficulty) => (difficulty, 1.0),
            None => (self.settings.default_difficulty, CONFIDENCE_DEFAULT),
        };
        let source = if findings.found_anything() {
            MetadataSource::Template
        } else {
            MetadataSource::Default
        };
        IssueMetadata {
            estimated_context: estimate,
            difficulty,
            recommended_agent: findings.agent,
            blocks: findings.blocks,
            blocked_by: findings.blocked_by,
            source,
            confidence: estimate_confidence.min(difficulty_confidence),
        }
    }
}

#[async_trait]
impl IssueParser for TemplateParser {
    async fn parse(&self, input: &ParseInput) -> ParseOutcome {
        ParseOutcome {
            metadata: self.parse_metadata(input),
            usage: None,
            from_cache: false,
            llm_error: None,
        }
    }

    fn health(&self) -> ParserHealth {
        ParserHealth {
            provider: "template".to_owned(),
            model: None,
            last_error: None,
            auth_failed: false,
        }
    }
}

#[cfg(test)]
mod tests;
