//! How much of something is kept or was removed: a count and the bytes it takes. One type for
//! retention's figures (delivery bodies, session logs, work directories), wherever they are
//! measured.

use serde::Serialize;

/// A number of items and the bytes they take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Volume {
    pub count: u64,
    pub bytes: u64,
}

impl Volume {
    /// The two together (saturating: a figure, never a wrap-around).
    pub fn plus(self, other: Self) -> Self {
        Self {
            count: self.count.saturating_add(other.count),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Volume;

    #[test]
    fn volumes_add_up_without_wrapping() {
        let a = Volume {
            count: 2,
            bytes: 10,
        };
        let b = Volume { count: 1, bytes: 5 };
        assert_eq!(
            a.plus(b),
            Volume {
                count: 3,
                bytes: 15
            }
        );
        let full = Volume {
            count: u64::MAX,
            bytes: u64::MAX,
        };
        assert_eq!(full.plus(b), full);
    }
}
