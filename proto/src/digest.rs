//! The state digest: an order-independent hash over every (key, value) in a state.
//!
//! Each entry contributes `xxh3_128(encoded KeyValue)`; the digest is the wrapping sum of
//! the contributions. Adding, replacing or removing one entry is O(1) (subtract the old
//! contribution, add the new one), and two states with the same entries have the same
//! digest whatever order they were built in. The server hashes the bytes it sends and the
//! client hashes the bytes it receives, so equal digests mean byte-identical mirrors.
//! It detects accidental divergence; it is not a defence against a malicious server.

use std::fmt;

/// The digest of a whole state (see the module docs).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Digest(u128);

/// One entry's contribution to a [`Digest`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct EntryHash(u128);

impl EntryHash {
    /// Hashes the encoded `KeyValue` of a present entry.
    pub fn of(encoded_key_value: &[u8]) -> Self {
        Self(xxhash_rust::xxh3::xxh3_128(encoded_key_value))
    }
}

impl Digest {
    /// The digest of the empty state.
    pub const EMPTY: Digest = Digest(0);

    /// Accounts for an entry that appeared.
    pub fn add(&mut self, entry: EntryHash) {
        self.0 = self.0.wrapping_add(entry.0);
    }

    /// Accounts for an entry that disappeared.
    pub fn remove(&mut self, entry: EntryHash) {
        self.0 = self.0.wrapping_sub(entry.0);
    }

    /// Accounts for an entry whose value changed from `old` to `new`.
    pub fn replace(&mut self, old: EntryHash, new: EntryHash) {
        self.remove(old);
        self.add(new);
    }

    /// The 16-byte big-endian wire form.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Parses the wire form; `None` unless exactly 16 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 16] = bytes.try_into().ok()?;
        Some(Self(u128::from_be_bytes(array)))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({:032x})", self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_reversible() {
        let (a, b, c) = (
            EntryHash::of(b"a"),
            EntryHash::of(b"b"),
            EntryHash::of(b"c"),
        );
        let mut x = Digest::EMPTY;
        x.add(a);
        x.add(b);
        let mut y = Digest::EMPTY;
        y.add(b);
        y.add(c);
        y.replace(c, a);
        assert_eq!(x, y);
        x.remove(a);
        x.remove(b);
        assert_eq!(x, Digest::EMPTY);
        assert_ne!(y, Digest::EMPTY);
    }

    #[test]
    fn wire_round_trip() {
        let mut d = Digest::EMPTY;
        d.add(EntryHash::of(b"x"));
        assert_eq!(Digest::from_bytes(&d.to_bytes()), Some(d));
        assert_eq!(Digest::from_bytes(&[1, 2, 3]), None);
    }
}
