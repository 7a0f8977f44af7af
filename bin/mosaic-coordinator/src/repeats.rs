//! Rate limit for repeated warnings and errors: a full disk or a dead database makes every
//! request fail the same way, and hundreds of identical lines a second bury the first one (and
//! fill the disk further). The first few of each kind pass; the rest are counted and summed up
//! in one line per window.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter};

/// Identical warnings or errors let through per window.
const PASSED_PER_WINDOW: u32 = 5;
/// The window; also how often suppressed repeats are summed up.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Distinct kinds tracked at once; beyond that new kinds pass unlimited (memory stays bounded).
const MAX_KINDS: usize = 1_024;

#[derive(Debug)]
struct Kind {
    window_start: Instant,
    passed: u32,
    suppressed: u64,
    /// What the summary line quotes.
    text: String,
    target: String,
}

/// Shared between the filter (which counts) and the reporter (which sums up).
#[derive(Debug, Clone, Default)]
pub struct RepeatLimit {
    kinds: Arc<Mutex<HashMap<String, Kind>>>,
}

/// The message and the `error` field of an event: what makes two events "the same".
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if matches!(field.name(), "message" | "error" | "reason") {
            if !self.0.is_empty() {
                self.0.push_str("; ");
            }
            let _ = write!(self.0, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if matches!(field.name(), "message" | "error" | "reason") {
            if !self.0.is_empty() {
                self.0.push_str("; ");
            }
            self.0.push_str(value);
        }
    }
}

impl RepeatLimit {
    /// Whether this occurrence may be logged, counting it when not.
    fn admit(&self, target: &str, callsite: &str, text: String, now: Instant) -> bool {
        let key = format!("{target}:{callsite}:{text}");
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        if !kinds.contains_key(&key) && kinds.len() >= MAX_KINDS {
            return true;
        }
        let kind = kinds.entry(key).or_insert_with(|| Kind {
            window_start: now,
            passed: 0,
            suppressed: 0,
            text,
            target: target.to_owned(),
        });
        // A window with suppressed repeats ends only when the reporter has summed it up.
        if now.duration_since(kind.window_start) >= WINDOW && kind.suppressed == 0 {
            kind.window_start = now;
            kind.passed = 0;
        }
        if kind.passed < PASSED_PER_WINDOW {
            kind.passed += 1;
            true
        } else {
            kind.suppressed += 1;
            false
        }
    }

    /// Takes the counts of suppressed repeats whose window has ended: (target, text, count).
    pub fn drain_suppressed(&self, now: Instant) -> Vec<(String, String, u64)> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        let mut summary = Vec::new();
        kinds.retain(|_, kind| {
            if now.duration_since(kind.window_start) < WINDOW {
                return true;
            }
            if kind.suppressed == 0 {
                // Quiet for a whole window: forgotten, so the map holds only live kinds.
                return false;
            }
            summary.push((kind.target.clone(), kind.text.clone(), kind.suppressed));
            kind.suppressed = 0;
            kind.passed = 0;
            kind.window_start = now;
            true
        });
        summary.sort();
        summary
    }

    /// Logs the sums of suppressed repeats every window until the runtime ends.
    pub async fn report_loop(self) {
        let mut tick = tokio::time::interval(WINDOW);
        loop {
            tick.tick().await;
            self.report(Instant::now());
        }
    }

    fn report(&self, now: Instant) {
        for (target, text, count) in self.drain_suppressed(now) {
            tracing::warn!(
                repeated_target = %target,
                repeated = %text,
                count,
                "the same warning or error repeated {count} more times (not logged)"
            );
        }
    }
}

impl<S: Subscriber> Filter<S> for RepeatLimit {
    fn enabled(&self, _metadata: &Metadata<'_>, _context: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _context: &Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() > Level::WARN {
            return true;
        }
        let mut text = Text::default();
        event.record(&mut text);
        self.admit(metadata.target(), metadata.name(), text.0, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(captured: &Captured) -> Vec<String> {
        String::from_utf8(captured.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_flood_of_one_error_is_cut_to_a_few_lines_and_a_sum() {
        let captured = Captured::default();
        let limit = RepeatLimit::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_filter(limit.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..400 {
                tracing::error!(
                    error = "No space left on device",
                    "cannot record the delivery"
                );
            }
            tracing::error!(error = "database is locked", "cannot record the delivery");
            for n in 0..50 {
                // Information lines are never limited.
                tracing::info!(n, "delivery accepted");
            }
        });
        let logged = lines(&captured);
        let full_disk = logged
            .iter()
            .filter(|l| l.contains("No space left"))
            .count();
        assert_eq!(full_disk, PASSED_PER_WINDOW as usize, "{logged:#?}");
        assert_eq!(
            logged
                .iter()
                .filter(|l| l.contains("database is locked"))
                .count(),
            1,
            "another error is its own kind"
        );
        assert_eq!(logged.iter().filter(|l| l.contains("accepted")).count(), 50);

        // After the window, one line sums up what was held back.
        let later = Instant::now() + WINDOW;
        let summary = limit.drain_suppressed(later);
        assert_eq!(summary.len(), 1, "{summary:?}");
        assert_eq!(summary[0].2, 400 - u64::from(PASSED_PER_WINDOW));
        assert!(
            summary[0].1.contains("No space left on device"),
            "{summary:?}"
        );
        assert!(limit.drain_suppressed(later).is_empty(), "summed up once");
    }

    #[test]
    fn a_new_window_lets_the_error_through_again() {
        let limit = RepeatLimit::default();
        let start = Instant::now();
        for _ in 0..PASSED_PER_WINDOW {
            assert!(limit.admit("t", "e", "x".into(), start));
        }
        assert!(!limit.admit("t", "e", "x".into(), start));
        assert!(
            !limit.admit("t", "e", "x".into(), start + WINDOW),
            "held back until the sum is logged"
        );
        let later = start + WINDOW;
        assert_eq!(
            limit.drain_suppressed(later),
            vec![("t".to_owned(), "x".to_owned(), 2)]
        );
        assert!(limit.admit("t", "e", "x".into(), later));
        // A kind quiet for a window is forgotten.
        assert!(limit.drain_suppressed(later + WINDOW).is_empty());
        assert!(limit.kinds.lock().unwrap().is_empty());
    }
}
