//! An in-memory filter of every key a column family may hold, in front of
//! RocksDB point reads that mostly miss.
//!
//! Most lookups of the dedup, link and anonymous-buffer families are for
//! keys that do not exist (a new event id, a cookie never identified).
//! RocksDB answers those from its own bloom filters, but only after the
//! costs of a `Get` (memtable search, a filter per SST, block cache
//! lookups). This filter answers them first, from one cache line: a key it
//! has never seen is absent. It holds every key written since the store was
//! opened and every key on disk at open, so "absent here" implies "absent
//! in RocksDB"; deletions are not removed (a false positive only costs the
//! RocksDB read it would have cost anyway).
//!
//! A blocked bloom filter (all bits of a key in one 64-byte block) that
//! grows by adding a filter of twice the capacity when the last one is full.

/// Bits set per key, within its block.
const PROBES: u32 = 6;
/// Bits per key at capacity: ~1% false positives for a blocked filter.
const BITS_PER_KEY: usize = 12;
/// Keys the first filter holds.
const FIRST_CAPACITY: usize = 1 << 18;

/// One fixed-size blocked bloom filter.
struct Block {
    /// 512-bit blocks, as 8 words each.
    words: Vec<u64>,
    blocks: u64,
    capacity: usize,
    len: usize,
}

impl Block {
    fn with_capacity(capacity: usize) -> Block {
        let blocks = (capacity * BITS_PER_KEY).div_ceil(512).max(1);
        Block {
            words: vec![0; blocks * 8],
            blocks: blocks as u64,
            capacity,
            len: 0,
        }
    }

    /// The block's first word and the bit positions within its 512 bits.
    fn place(&self, hash: u128) -> (usize, [u32; PROBES as usize]) {
        let (lo, hi) = (hash as u64, (hash >> 64) as u64);
        let block = (lo % self.blocks) as usize * 8;
        let mut bits = [0u32; PROBES as usize];
        for (i, b) in bits.iter_mut().enumerate() {
            *b = ((hi >> (i as u32 * 9)) & 511) as u32;
        }
        (block, bits)
    }

    fn insert(&mut self, hash: u128) {
        let (block, bits) = self.place(hash);
        for b in bits {
            self.words[block + (b / 64) as usize] |= 1 << (b % 64);
        }
        self.len += 1;
    }

    fn may_contain(&self, hash: u128) -> bool {
        let (block, bits) = self.place(hash);
        bits.iter()
            .all(|&b| self.words[block + (b / 64) as usize] & (1 << (b % 64)) != 0)
    }
}

/// The keys a column family may hold (see the module doc).
pub struct KeyFilter {
    filters: Vec<Block>,
}

impl Default for KeyFilter {
    fn default() -> Self {
        KeyFilter {
            filters: vec![Block::with_capacity(FIRST_CAPACITY)],
        }
    }
}

impl KeyFilter {
    pub fn insert(&mut self, key: &[u8]) {
        let hash = hash(key);
        if self.may_contain_hash(hash) {
            return;
        }
        let last = self.filters.len() - 1;
        if self.filters[last].len >= self.filters[last].capacity {
            let capacity = self.filters[last].capacity * 2;
            self.filters.push(Block::with_capacity(capacity));
        }
        if let Some(f) = self.filters.last_mut() {
            f.insert(hash);
        }
    }

    /// False only for a key never inserted.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.may_contain_hash(hash(key))
    }

    fn may_contain_hash(&self, hash: u128) -> bool {
        self.filters.iter().any(|f| f.may_contain(hash))
    }

    /// Keys inserted (a key the filter already seemed to hold counts once).
    pub fn len(&self) -> usize {
        self.filters.iter().map(|f| f.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn hash(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inserted_key_is_found_and_most_others_are_not() {
        let mut f = KeyFilter::default();
        let n = FIRST_CAPACITY * 3; // forces two more filters
        for i in 0..n {
            f.insert(format!("key{i}").as_bytes());
        }
        assert!(f.filters.len() >= 2);
        assert!((0..n).all(|i| f.may_contain(format!("key{i}").as_bytes())));
        let false_hits = (0..100_000)
            .filter(|i| f.may_contain(format!("other{i}").as_bytes()))
            .count();
        // ~1% per filter, a few filters.
        assert!(false_hits < 5_000, "{false_hits} false positives");
    }
}
