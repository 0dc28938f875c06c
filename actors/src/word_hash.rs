//! A hash for keys made of a few machine words that clients do not choose (the addresses of
//! configuration names, a minute, a status): a multiply-rotate per word, where SipHash's
//! protection against chosen keys buys nothing and costs a few hundred instructions a request.
//! Used by the telemetry aggregate and the gateway's per-worker metric handles.

use std::hash::{BuildHasherDefault, Hasher};

/// Build a map with it: `HashMap<K, V, WordHashing>`.
pub type WordHashing = BuildHasherDefault<WordHasher>;

#[derive(Default)]
pub struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.add(u64::from(*b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn different_words_hash_apart_and_equal_ones_alike() {
        let h = WordHashing::default();
        assert_eq!(h.hash_one((1usize, 2u16)), h.hash_one((1usize, 2u16)));
        assert_ne!(h.hash_one((1usize, 2u16)), h.hash_one((2usize, 1u16)));
        assert_ne!(h.hash_one(0x7f00_1000usize), h.hash_one(0x7f00_1008usize));
    }
}
