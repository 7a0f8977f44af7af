//! Token counts as people write them: `46,800`, `46_800`, `40k`, `1.5M`, `~40k tokens`.

use std::sync::LazyLock;

use regex::Regex;

#[allow(clippy::unwrap_used)] // a constant pattern, covered by the tests below
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d[\d,_]*(?:\.\d+)?)(?:\s*([kKmM])\b)?").unwrap());

/// The first number in `text`, with thousands separators and a `k`/`M` suffix understood.
/// Saturates at `u64::MAX` instead of overflowing: callers clamp to their bounds anyway.
pub(crate) fn first_token_count(text: &str) -> Option<u64> {
    let captures = NUMBER.captures(text)?;
    let digits: String = captures
        .get(1)?
        .as_str()
        .chars()
        .filter(|c| *c != ',' && *c != '_')
        .collect();
    let multiplier: u64 = match captures.get(2).map(|m| m.as_str()) {
        Some("k" | "K") => 1_000,
        Some("m" | "M") => 1_000_000,
        _ => 1,
    };
    match digits.split_once('.') {
        None => {
            // More digits than fit a u64 still mean "absurdly large", not "absent".
            let value = digits.parse::<u64>().unwrap_or(u64::MAX);
            Some(value.saturating_mul(multiplier))
        }
        Some(_) => {
            let value: f64 = digits.parse().ok()?;
            let scaled = (value * multiplier as f64).round();
            // `as` saturates for floats beyond the u64 range; never NaN here (finite input).
            Some(scaled as u64)
        }
    }
}

/// The first whole number in `text` (no suffixes), for counts such as files to modify.
pub(crate) fn first_integer(text: &str) -> Option<u64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    Some(digits.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_token_counts() {
        let check = |text: &str, expect: Option<u64>| {
            assert_eq!(first_token_count(text), expect, "{text:?}");
        };
        check("46,800 tokens", Some(46_800));
        check("**46,800 tokens**", Some(46_800));
        check("46800", Some(46_800));
        check("46_800", Some(46_800));
        check("40k", Some(40_000));
        check("40K tokens", Some(40_000));
        check("~40 k", Some(40_000));
        check("1.5M", Some(1_500_000));
        check("2.25k", Some(2_250));
        check("10 mins", Some(10));
        check("about 12 monkeys", Some(12));
        check("99999999999999999999999999", Some(u64::MAX));
        check("99999999999999999999k", Some(u64::MAX));
        check("9999999999999999999999.5M", Some(u64::MAX));
        check("none", None);
        check("", None);
    }

    #[test]
    fn reads_integers() {
        assert_eq!(first_integer("3 (context_monitor, models)"), Some(3));
        assert_eq!(first_integer("about 1,200 files"), Some(1_200));
        assert_eq!(first_integer("many"), None);
        assert_eq!(first_integer("99999999999999999999999"), Some(u64::MAX));
    }
}
