//! Branch names: `<prefix><number>-<slug>`, with the slug made from the issue title.

/// Longest slug, in characters (all ASCII, so also bytes).
pub const MAX_SLUG_CHARS: usize = 60;

/// The slug used when a title has no letter or digit left (only symbols, or a script
/// without an ASCII spelling).
pub const EMPTY_TITLE_SLUG: &str = "issue";

/// A title as a branch-name fragment: lower-case ASCII letters and digits, runs of anything
/// else as one `-`, no `-` at either end, at most [`MAX_SLUG_CHARS`] characters (cut at a word
/// boundary when one is near). Common accented Latin letters lose their accent.
///
/// Only `[a-z0-9-]` survive, so the result can never hold what `git check-ref-format`
/// refuses (`..`, `.lock`, `@{`, control characters, a leading `-` or `.`).
pub fn slug(title: &str) -> String {
    let mut out = String::new();
    let mut pending_dash = false;
    for c in title.chars() {
        let Some(folded) = fold(c) else {
            pending_dash = true;
            continue;
        };
        for c in folded.chars() {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        }
        if out.len() > MAX_SLUG_CHARS {
            break;
        }
    }
    if out.len() > MAX_SLUG_CHARS {
        let cut = &out[..MAX_SLUG_CHARS];
        // Prefer ending on a whole word unless that loses more than a third.
        let kept = match cut.rfind('-') {
            Some(at) if out.as_bytes()[MAX_SLUG_CHARS] != b'-' && at >= MAX_SLUG_CHARS * 2 / 3 => {
                &cut[..at]
            }
            _ => cut,
        };
        out = kept.trim_end_matches('-').to_owned();
    }
    if out.is_empty() {
        EMPTY_TITLE_SLUG.to_owned()
    } else {
        out
    }
}

/// A character as lower-case ASCII letters or digits, or `None` for a separator.
fn fold(c: char) -> Option<&'static str> {
    const ALNUM: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
    let lower = c.to_ascii_lowercase();
    if lower.is_ascii_alphanumeric() {
        let at = ALNUM.find(lower)?;
        return ALNUM.get(at..at + 1);
    }
    let lower = c.to_lowercase().next().unwrap_or(c);
    Some(match lower {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'ç' | 'ć' | 'č' => "c",
        'ď' | 'đ' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'ğ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => "i",
        'ł' | 'ľ' => "l",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
        'ř' => "r",
        'ś' | 'š' | 'ş' => "s",
        'ť' | 'ţ' => "t",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' | 'ų' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        'ß' => "ss",
        'æ' => "ae",
        'œ' => "oe",
        'þ' => "th",
        _ => return None,
    })
}

/// The branch of issue `number`: `<prefix><number>-<slug of title>`.
pub fn branch_name(prefix: &str, number: u64, title: &str) -> String {
    format!("{prefix}{number}-{}", slug(title))
}

/// Whether `branch` is one the coordinator made for issue `number` under `prefix`
/// (whatever the title was when it was made).
pub fn is_issue_branch(prefix: &str, number: u64, branch: &str) -> bool {
    branch
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(&number.to_string()))
        .is_some_and(|rest| rest.starts_with('-'))
        && is_valid_ref_name(&format!("refs/heads/{branch}"))
}

/// `git check-ref-format <name>` (without `--allow-onelevel`), in Rust: the rules of
/// git-check-ref-format(1).
pub fn is_valid_ref_name(name: &str) -> bool {
    if name.is_empty()
        || name == "@"
        || !name.contains('/')
        || name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with('.')
        || name.contains("..")
        || name.contains("//")
        || name.contains("@{")
    {
        return false;
    }
    let bad_char = |c: char| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    };
    if name.chars().any(bad_char) {
        return false;
    }
    name.split('/')
        .all(|part| !part.is_empty() && !part.starts_with('.') && !part.ends_with(".lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lower_case_words_joined_by_dashes() {
        assert_eq!(slug("Fix the login page"), "fix-the-login-page");
        assert_eq!(slug("  --Add  `--force` flag!! "), "add-force-flag");
        assert_eq!(
            slug("v1.2: parse foo.lock files"),
            "v1-2-parse-foo-lock-files"
        );
        assert_eq!(slug("../../etc/passwd"), "etc-passwd");
        assert_eq!(slug("refs/heads/main@{1}"), "refs-heads-main-1");
        assert_eq!(slug("x.lock"), "x-lock");
        assert_eq!(slug("-rf /"), "rf");
        assert_eq!(slug("tab\tnewline\ncontrol\u{7}"), "tab-newline-control");
    }

    #[test]
    fn unicode_titles_keep_what_has_an_ascii_spelling() {
        assert_eq!(
            slug("Naïve café crème für Straße"),
            "naive-cafe-creme-fur-strasse"
        );
        assert_eq!(slug("修复登录"), EMPTY_TITLE_SLUG);
        assert_eq!(slug("修复 login 🚀 page"), "login-page");
        assert_eq!(slug("ÉCOLE"), "ecole");
        assert_eq!(slug("!!!"), EMPTY_TITLE_SLUG);
        assert_eq!(slug(""), EMPTY_TITLE_SLUG);
    }

    #[test]
    fn slugs_are_at_most_sixty_characters() {
        let long = "word ".repeat(40);
        let s = slug(&long);
        assert!(s.len() <= MAX_SLUG_CHARS, "{s}");
        assert!(!s.ends_with('-'));
        assert_eq!(s, "word-".repeat(12).trim_end_matches('-'));
        // One long word is cut, not dropped.
        let s = slug(&"a".repeat(100));
        assert_eq!(s.len(), MAX_SLUG_CHARS);
        // Exactly sixty stays whole.
        let exact = "b".repeat(60);
        assert_eq!(slug(&exact), exact);
        // A cut right before a separator keeps the whole last word.
        let title = format!("{} tail", "c".repeat(60));
        assert_eq!(slug(&title), "c".repeat(60));
        // Many separators cost no length.
        let s = slug(&format!("{}x", "- ".repeat(500)));
        assert_eq!(s, "x");
        for title in ["Ünïcödé ".repeat(20), "ß".repeat(50), "a-".repeat(100)] {
            let s = slug(&title);
            assert!(s.len() <= MAX_SLUG_CHARS && !s.ends_with('-'), "{s}");
        }
    }

    #[test]
    fn branch_names_pass_check_ref_format() {
        for title in [
            "Fix ..",
            ".lock",
            "-leading dash",
            "@",
            "a@{b}",
            "x//y",
            "ends with dot.",
            "trailing.lock",
            "ünïcödé",
            "",
        ] {
            let branch = branch_name("mosaic/", 12, title);
            assert!(branch.starts_with("mosaic/12-"), "{branch}");
            assert!(
                is_valid_ref_name(&format!("refs/heads/{branch}")),
                "{branch}"
            );
        }
    }

    #[test]
    fn recognises_the_branches_of_an_issue() {
        assert!(is_issue_branch("mosaic/", 12, "mosaic/12-fix"));
        assert!(is_issue_branch("mosaic/", 12, "mosaic/12-old-title"));
        assert!(!is_issue_branch("mosaic/", 12, "mosaic/123-fix"));
        assert!(!is_issue_branch("mosaic/", 12, "main"));
        assert!(!is_issue_branch("mosaic/", 12, "other/12-fix"));
        assert!(!is_issue_branch("mosaic/", 12, "mosaic/12-a..b"));
    }

    #[test]
    fn ref_name_rules() {
        for good in ["refs/heads/main", "refs/heads/mosaic/1-x", "a/b.c", "a/ü"] {
            assert!(is_valid_ref_name(good), "{good}");
        }
        for bad in [
            "main",
            "refs/heads/",
            "/refs/x",
            "a//b",
            "a/.b",
            "a/b.lock",
            "a/b.",
            "a/b..c",
            "a/b c",
            "a/b~1",
            "a/b^",
            "a/b:c",
            "a/b?",
            "a/b*",
            "a/b[",
            "a/b\\c",
            "a/@{x",
            "a/\u{7f}",
            "@",
        ] {
            assert!(!is_valid_ref_name(bad), "{bad}");
        }
    }
}
