//! A size-bounded log file per session: stderr and stdout lines the runner did not understand.
//!
//! Every line is agent text, so it is written through the [`Redactor`]: configured secrets and
//! credential-shaped values replaced, escape sequences removed, line breaks escaped (a line
//! cannot forge another).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mosaic_security::Redactor;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

#[derive(Debug)]
struct LogState {
    file: Option<tokio::fs::File>,
    written: u64,
    truncated: bool,
}

/// Appends lines until `max_bytes`, then one truncation notice, then nothing.
#[derive(Debug)]
pub struct SessionLog {
    path: PathBuf,
    max_bytes: u64,
    redactor: Arc<Redactor>,
    state: Mutex<LogState>,
}

impl SessionLog {
    pub async fn create(
        path: PathBuf,
        max_bytes: u64,
        redactor: Arc<Redactor>,
    ) -> std::io::Result<Self> {
        let file = tokio::fs::File::create(&path).await?;
        Ok(Self {
            path,
            max_bytes,
            redactor,
            state: Mutex::new(LogState {
                file: Some(file),
                written: 0,
                truncated: false,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `[stream] line`, redacted and escaped. A failing disk must not end the session,
    /// so errors close the log.
    pub async fn line(&self, stream: &str, line: &str) {
        let entry = format!("[{stream}] {}\n", self.redactor.for_log_line(line));
        let mut state = self.state.lock().await;
        let entry_len = u64::try_from(entry.len()).unwrap_or(u64::MAX);
        let bytes = if state.written.saturating_add(entry_len) <= self.max_bytes {
            entry
        } else if state.truncated {
            return;
        } else {
            state.truncated = true;
            format!("[log truncated at {} bytes]\n", self.max_bytes)
        };
        let Some(file) = state.file.as_mut() else {
            return;
        };
        let written = file.write_all(bytes.as_bytes()).await;
        match written {
            Ok(()) => {
                state.written = state
                    .written
                    .saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
            }
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "session log write failed; closing the log");
                state.file = None;
            }
        }
    }

    pub async fn flush(&self) {
        if let Some(file) = self.state.lock().await.file.as_mut() {
            let _ = file.flush().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_at_the_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = SessionLog::create(dir.path().join("s.log"), 64, Arc::default())
            .await
            .unwrap();
        for n in 0..20 {
            log.line("stderr", &format!("line {n}")).await;
        }
        log.flush().await;
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.starts_with("[stderr] line 0\n"));
        assert!(text.ends_with("[log truncated at 64 bytes]\n"), "{text}");
        assert!(text.len() <= 64 + "[log truncated at 64 bytes]\n".len());
        assert_eq!(text.matches("truncated").count(), 1);
    }

    #[tokio::test]
    async fn lines_are_redacted_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = [mosaic_security::Secret::new("gitea-bot-token-0123")];
        let log = SessionLog::create(
            dir.path().join("s.log"),
            4096,
            Arc::new(Redactor::new(&secrets)),
        )
        .await
        .unwrap();
        log.line(
            "stderr",
            "\u{1b}[31mcurl -H 'Authorization: token gitea-bot-token-0123'\u{1b}[0m\rforged line",
        )
        .await;
        log.flush().await;
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(!text.contains("gitea-bot-token-0123"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(!text.contains('\r'), "{text:?}");
        assert_eq!(text.lines().count(), 1, "one entry, one line: {text:?}");
        assert!(
            text.starts_with("[stderr] curl -H 'Authorization: token [redacted]'"),
            "{text}"
        );
        assert!(text.contains("\\nforged line"), "{text}");
    }
}
