//! How delivery bodies are kept: compressed with LZ4, by every backend alike (the same
//! `body_codec` values and framing), so a body reads back byte for byte whichever stores it.
//!
//! Webhook bodies are JSON of a few kilobytes that compress three to four times. Stored as
//! received, a 5 KB body needs a page and an overflow page of its own; compressed, two or
//! three fit in one page. Every committed page is written to the WAL, synced, and later copied
//! into the database file, so the smaller row is most of what a durable delivery costs the
//! disk (docs/BENCHMARKS.md). Compression runs on the caller's task, not on the single writer.
//! A body that does not shrink is kept as received.

use crate::error::StoreError;

/// Largest body a stored LZ4 block may claim to decode to: far above any webhook limit, and
/// low enough that a corrupt length cannot make a read allocate gigabytes.
const MAX_DECODED_LEN: usize = 64 * 1024 * 1024;

/// The value of `inbox.body_codec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCodec {
    /// The bytes as received.
    Identity,
    /// An LZ4 block preceded by the decoded length (4 bytes, little-endian).
    Lz4,
}

impl BodyCodec {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Lz4 => "lz4",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "identity" => Ok(Self::Identity),
            "lz4" => Ok(Self::Lz4),
            other => Err(StoreError::corrupt(
                "inbox.body_codec",
                format!("unknown codec `{other}`"),
            )),
        }
    }
}

/// A body as it goes into the `body` column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBody {
    pub codec: BodyCodec,
    pub bytes: Vec<u8>,
}

/// Compresses `body` when that makes it smaller; otherwise keeps it as it is (no copy).
pub fn encode(body: Vec<u8>) -> StoredBody {
    if body.len() <= MAX_DECODED_LEN {
        let compressed = lz4_flex::compress_prepend_size(&body);
        if compressed.len() < body.len() {
            return StoredBody {
                codec: BodyCodec::Lz4,
                bytes: compressed,
            };
        }
    }
    StoredBody {
        codec: BodyCodec::Identity,
        bytes: body,
    }
}

/// The body as received, from the `body` and `body_codec` columns.
pub fn decode(codec: &str, stored: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    match BodyCodec::parse(codec)? {
        BodyCodec::Identity => Ok(stored),
        BodyCodec::Lz4 => {
            let claimed = stored
                .get(..4)
                .and_then(|prefix| <[u8; 4]>::try_from(prefix).ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| StoreError::corrupt("inbox.body", "lz4 body without its length"))?;
            if usize::try_from(claimed).map_or(true, |len| len > MAX_DECODED_LEN) {
                return Err(StoreError::corrupt(
                    "inbox.body",
                    format!("lz4 body claims {claimed} bytes"),
                ));
            }
            lz4_flex::decompress_size_prepended(&stored)
                .map_err(|err| StoreError::corrupt("inbox.body", format!("lz4: {err}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../../tests/fixtures/gitea/issue-assign-event.json");

    #[track_caller]
    fn check_round_trip(body: &[u8], codec: BodyCodec) {
        let stored = encode(body.to_vec());
        assert_eq!(stored.codec, codec);
        assert_eq!(decode(codec.as_str(), stored.bytes).unwrap(), body);
    }

    #[test]
    fn webhook_json_is_compressed_and_comes_back_exactly() {
        let stored = encode(FIXTURE.to_vec());
        assert!(
            stored.bytes.len() * 2 < FIXTURE.len(),
            "{} of {} bytes",
            stored.bytes.len(),
            FIXTURE.len()
        );
        check_round_trip(FIXTURE, BodyCodec::Lz4);
    }

    #[test]
    fn bodies_that_do_not_shrink_are_kept_as_received() {
        check_round_trip(b"", BodyCodec::Identity);
        check_round_trip(b"{}", BodyCodec::Identity);
        // High-entropy bytes (xorshift64*): compression would only add its framing.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let noise: Vec<u8> = (0..512)
            .flat_map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
            })
            .collect();
        check_round_trip(&noise, BodyCodec::Identity);
    }

    #[test]
    fn corrupt_stored_bodies_are_errors_not_panics() {
        let mut stored = encode(FIXTURE.to_vec()).bytes;
        let check = |codec: &str, bytes: Vec<u8>, expect: &str| {
            let err = decode(codec, bytes).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
        };
        check("zip", FIXTURE.to_vec(), "unknown codec `zip`");
        check("lz4", vec![1, 2], "without its length");
        check(
            "lz4",
            u32::MAX.to_le_bytes().to_vec(),
            "claims 4294967295 bytes",
        );
        let truncated = stored[..stored.len() / 2].to_vec();
        check("lz4", truncated, "lz4:");
        // A block whose matches point before its start.
        let len = stored.len();
        stored[len - 8..].fill(0xff);
        check("lz4", stored, "lz4:");
    }
}
