//! Bounded capture of one output stream.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Which end of an over-long stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The first bytes (output that is parsed, such as `git status`).
    Head,
    /// The last bytes (a test run's summary and failures come last).
    Tail,
}

/// How much of a stream is kept, and which end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    pub max_bytes: usize,
    pub keep: Keep,
}

impl OutputLimit {
    pub const fn head(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            keep: Keep::Head,
        }
    }

    pub const fn tail(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            keep: Keep::Tail,
        }
    }
}

/// What was kept of a stream, and how much the child wrote in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    limit: OutputLimit,
    bytes: Vec<u8>,
    total_bytes: u64,
}

/// Read size; also the slack a tail capture may grow past its limit before it is compacted.
const CHUNK: usize = 8192;

impl Captured {
    pub(crate) fn new(limit: OutputLimit) -> Self {
        Self {
            limit,
            bytes: Vec::new(),
            total_bytes: 0,
        }
    }

    /// The kept bytes (at most the limit).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The kept bytes as text (invalid UTF-8, such as a character split by the cut, replaced).
    pub fn text_lossy(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Everything the child wrote to the stream, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes written but not kept.
    pub fn omitted_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.bytes.len() as u64)
    }

    /// Whether the stream was longer than the limit.
    pub fn truncated(&self) -> bool {
        self.omitted_bytes() > 0
    }

    pub fn limit(&self) -> OutputLimit {
        self.limit
    }

    fn push(&mut self, data: &[u8]) {
        self.total_bytes = self.total_bytes.saturating_add(data.len() as u64);
        match self.limit.keep {
            Keep::Head => {
                let room = self.limit.max_bytes.saturating_sub(self.bytes.len());
                self.bytes.extend_from_slice(&data[..data.len().min(room)]);
            }
            Keep::Tail => {
                self.bytes.extend_from_slice(data);
                // Compacted only once it has grown well past the limit: each compaction moves
                // `max_bytes`, so a long stream costs linear time, not quadratic.
                if self.bytes.len() > self.limit.max_bytes.saturating_mul(2).saturating_add(CHUNK) {
                    self.compact();
                }
            }
        }
    }

    /// Cuts a tail capture down to its limit.
    pub(crate) fn compact(&mut self) {
        if self.bytes.len() > self.limit.max_bytes {
            let excess = self.bytes.len() - self.limit.max_bytes;
            self.bytes.drain(..excess);
        }
    }

    /// Reads to the end of `reader`. Everything is read, kept or not, so the child never blocks
    /// on a full pipe; a read error ends the stream like an end of file.
    pub(crate) async fn fill<R: AsyncRead + Unpin>(&mut self, reader: Option<R>) {
        let Some(mut reader) = reader else {
            return;
        };
        let mut buffer = vec![0_u8; CHUNK];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => self.push(&buffer[..read]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_capture_keeps_the_first_bytes() {
        let mut captured = Captured::new(OutputLimit::head(5));
        captured.push(b"abc");
        captured.push(b"defgh");
        captured.compact();
        assert_eq!(captured.bytes(), b"abcde");
        assert_eq!(captured.total_bytes(), 8);
        assert_eq!(captured.omitted_bytes(), 3);
        assert!(captured.truncated());
    }

    #[test]
    fn a_tail_capture_keeps_the_last_bytes_across_compactions() {
        let mut captured = Captured::new(OutputLimit::tail(4));
        let mut all = Vec::new();
        for round in 0..5000_u32 {
            let piece = format!("{round},");
            all.extend_from_slice(piece.as_bytes());
            captured.push(piece.as_bytes());
            assert!(captured.bytes().len() <= 4 * 2 + CHUNK + piece.len());
        }
        captured.compact();
        assert_eq!(captured.bytes(), &all[all.len() - 4..]);
        assert_eq!(captured.total_bytes(), all.len() as u64);
    }

    #[test]
    fn output_within_the_limit_is_not_truncated() {
        let mut captured = Captured::new(OutputLimit::tail(10));
        captured.push(b"short");
        captured.compact();
        assert_eq!(captured.text_lossy(), "short");
        assert!(!captured.truncated());
    }
}
