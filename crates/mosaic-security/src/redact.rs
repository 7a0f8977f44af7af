//! Redaction of text that came from an agent (or any other untrusted process) before it leaves
//! the coordinator: a Gitea comment, a pull request body, a log line (docs/DESIGN.md, invariant 9).
//!
//! Three things happen, in this order: every configured secret value is replaced; anything
//! shaped like a credential (`Authorization:` headers, `token=…`, well-known key prefixes) is
//! replaced; control and escape sequences are removed. [`Redactor::for_comment`] also bounds the
//! length, on a character boundary.

use std::fmt;

use crate::Secret;

/// What a redacted value is replaced with.
pub const REDACTION: &str = "[redacted]";

/// Secret values shorter than this are not searched for: replacing every `1` or `ab` in a text
/// would destroy it and protect nothing (such a value is guessable anyway).
const MIN_SECRET_CHARS: usize = 6;

/// Prefixes of well-known API keys and tokens; what follows them up to a delimiter is replaced.
const KEY_PREFIXES: &[&str] = &[
    "sk-ant-",     // Anthropic
    "sk-proj-",    // OpenAI project keys
    "sk-",         // OpenAI and compatible
    "ghp_",        // GitHub personal token
    "gho_",        // GitHub OAuth
    "ghs_",        // GitHub app
    "github_pat_", // GitHub fine-grained
    "glpat-",      // GitLab
    "xoxb-",       // Slack bot
    "xoxp-",       // Slack user
    "AKIA",        // AWS access key id
];

/// Names whose value (after `=`, `:` or `: `) is replaced: `token=…`, `password: …`.
const SECRET_NAMES: &[&str] = &[
    "authorization",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "api-key",
    "secret",
    "password",
    "passwd",
    "private_key",
    "client_secret",
];

/// Replaces configured secret values and credential-shaped text, strips control sequences.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for the given secrets (empty and very short values are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut values: Vec<String> = secrets
            .into_iter()
            .map(|secret| secret.expose_secret().trim().to_owned())
            .filter(|value| value.chars().count() >= MIN_SECRET_CHARS)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Self { secrets: values }
    }

    /// How many secret values it searches for.
    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// The text with secrets and credential-shaped values replaced and control sequences removed.
    /// Line breaks and tabs are kept.
    pub fn redact(&self, text: &str) -> String {
        let mut text = strip_control(text);
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTION);
            }
        }
        redact_shapes(&text)
    }

    /// [`Redactor::redact`], then clipped to `max_chars` characters (an ellipsis marks the cut).
    pub fn for_comment(&self, text: &str, max_chars: usize) -> String {
        clip(&self.redact(text), max_chars)
    }

    /// One log line: redacted, with line breaks and tabs escaped too, so the text cannot forge
    /// another line of the log.
    pub fn for_log_line(&self, text: &str) -> String {
        escape_line(&self.redact(text))
    }
}

/// Cuts `text` to at most `max_chars` characters, marking the cut with `…`.
pub fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Escapes line breaks, tabs and backslashes (`\n`, `\t`, `\\`).
fn escape_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            other => out.push(other),
        }
    }
    out
}

/// Removes ANSI escape sequences (CSI, OSC, and two-character escapes) and every other control
/// character except line feed and tab; a carriage return becomes a line feed unless one follows.
fn strip_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    for next in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&next) {
                            break;
                        }
                    }
                }
                // OSC (and DCS, PM, APC, SOS): up to BEL or ESC \.
                Some(']' | 'P' | '^' | '_' | 'X') => {
                    while let Some(next) = chars.next() {
                        if next == '\u{7}' {
                            break;
                        }
                        if next == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // A two-character escape: drop both.
                _ => {}
            },
            // The 8-bit CSI.
            '\u{9b}' => {
                for next in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&next) {
                        break;
                    }
                }
            }
            '\n' | '\t' => out.push(c),
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            c if c.is_control() => {}
            // Bidirectional overrides can make text read differently than it is.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {}
            c => out.push(c),
        }
    }
    out
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=' | '%')
}

/// Replaces credential-shaped values: `Authorization: <scheme> <value>`, `name=value`,
/// `name: value` for the names above, and well-known key prefixes.
fn redact_shapes(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    // (start, end) byte ranges to replace, in order, not overlapping.
    let mut ranges: Vec<(usize, usize)> = Vec::new();

    for name in SECRET_NAMES {
        let mut from = 0;
        while let Some(found) = lower[from..].find(name) {
            let start = from + found;
            from = start + name.len();
            // A whole word: not the middle of `tokens` or `mytoken_count`.
            let before_ok = start == 0
                || !lower.as_bytes()[start - 1].is_ascii_alphanumeric()
                    && lower.as_bytes()[start - 1] != b'_';
            if !before_ok {
                continue;
            }
            let mut at = start + name.len();
            // Optional closing quote of a JSON key: "token": "…".
            if bytes.get(at) == Some(&b'"') || bytes.get(at) == Some(&b'\'') {
                at += 1;
            }
            while bytes.get(at) == Some(&b' ') {
                at += 1;
            }
            if !matches!(bytes.get(at), Some(b'=' | b':')) {
                continue;
            }
            at += 1;
            while matches!(bytes.get(at), Some(b' ' | b'"' | b'\'')) {
                at += 1;
            }
            // `Authorization: Bearer xyz` / `token abc`: the scheme stays, the value goes.
            let word_end = value_end(text, at);
            let scheme = &lower[at..word_end];
            if *name == "authorization"
                && matches!(scheme, "bearer" | "basic" | "token" | "digest")
                && bytes.get(word_end) == Some(&b' ')
            {
                at = word_end + 1;
            }
            let end = value_end(text, at);
            if end > at {
                ranges.push((at, end));
            }
        }
    }

    for prefix in KEY_PREFIXES {
        let mut from = 0;
        while let Some(found) = text[from..].find(prefix) {
            let start = from + found;
            let end = value_end(text, start);
            from = end.max(start + prefix.len());
            let starts_word = start == 0 || !is_value_char(char::from(bytes[start - 1]));
            // A real key is long; `sk-learn` or `AKIA` in prose is not.
            if starts_word && end - start >= prefix.len() + 12 {
                ranges.push((start, end));
            }
        }
    }

    if ranges.is_empty() {
        return text.to_owned();
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in ranges {
        if start < copied {
            // Overlaps a range already replaced: extend it.
            copied = copied.max(end);
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(REDACTION);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// The end (byte index) of the value starting at `at`.
fn value_end(text: &str, at: usize) -> usize {
    text[at..]
        .char_indices()
        .find(|(_, c)| !is_value_char(*c))
        .map_or(text.len(), |(offset, _)| at + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(secrets: &[&str]) -> Redactor {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        Redactor::new(&secrets)
    }

    #[test]
    fn replaces_configured_secret_values_anywhere() {
        let r = redactor(&["gitea-bot-token-123", "whsec-abcdef", "abc"]);
        assert_eq!(r.secret_count(), 2, "too short a value is not searched for");
        let text =
            "exited with status 1; stderr: curl -H x:gitea-bot-token-123 | echo whsec-abcdef|abc";
        let out = r.redact(text);
        assert!(!out.contains("gitea-bot-token-123"), "{out}");
        assert!(!out.contains("whsec-abcdef"), "{out}");
        assert!(out.ends_with("|abc"), "short value kept: {out}");
    }

    #[test]
    fn a_secret_inside_another_is_replaced_whole() {
        let r = redactor(&["secret-value", "my-secret-value-long"]);
        assert_eq!(r.redact("x my-secret-value-long y"), "x [redacted] y");
    }

    #[test]
    fn replaces_credential_shaped_text() {
        let r = Redactor::default();
        let cases = [
            (
                "Authorization: Bearer eyJhbGciOi.x.y end",
                "Authorization: Bearer [redacted] end",
            ),
            (
                "authorization: token 0123456789abcdef",
                "authorization: token [redacted]",
            ),
            (
                "https://h/api?token=abc123&x=1",
                "https://h/api?token=[redacted]&x=1",
            ),
            ("PASSWORD = hunter22", "PASSWORD = [redacted]"),
            (
                r#"{"api_key": "k-1234567"}"#,
                r#"{"api_key": "[redacted]"}"#,
            ),
            (
                "key sk-ant-api03-abcdefghijklmnopqrstuv here",
                "key [redacted] here",
            ),
            ("ghp_0123456789abcdefghij0123456789abcd", "[redacted]"),
        ];
        for (input, expect) in cases {
            assert_eq!(r.redact(input), expect, "{input}");
        }
    }

    #[test]
    fn leaves_ordinary_prose_alone() {
        let r = Redactor::default();
        for text in [
            "used 120,000 tokens of 200000",
            "the token bucket refills",
            "sk-learn is a library",
            "tokens: 42",
            "my_token=3 is a variable",
        ] {
            assert_eq!(r.redact(text), text);
        }
    }

    #[test]
    fn strips_escape_and_control_sequences() {
        let r = Redactor::default();
        let text =
            "\u{1b}[31mred\u{1b}[0m \u{1b}]0;title\u{7}ok\u{7}\u{0} line\r\nnext\rover\u{202e}txt";
        assert_eq!(r.redact(text), "red ok line\nnext\novertxt");
        assert_eq!(r.redact("a\u{1b}]8;;http://x\u{1b}\\link"), "alink");
    }

    #[test]
    fn a_secret_split_by_an_escape_sequence_is_still_found() {
        let r = redactor(&["hunter2hunter2"]);
        assert_eq!(r.redact("pw hunter2\u{1b}[0mhunter2"), "pw [redacted]");
    }

    #[test]
    fn log_lines_cannot_forge_lines() {
        let r = redactor(&["topsecret"]);
        assert_eq!(
            r.for_log_line("a\nlevel=INFO topsecret\t\\"),
            "a\\nlevel=INFO [redacted]\\t\\\\"
        );
    }

    #[test]
    fn comments_are_bounded_on_a_character_boundary() {
        let r = Redactor::default();
        let clipped = r.for_comment(&"é".repeat(100), 10);
        assert_eq!(clipped.chars().count(), 10);
        assert!(clipped.ends_with('…'));
        assert_eq!(r.for_comment("short", 10), "short");
    }

    #[test]
    fn debug_never_shows_the_secrets() {
        let r = redactor(&["hunter2hunter2"]);
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
