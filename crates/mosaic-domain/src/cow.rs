//! Copy-on-write storage for the graph and the queue.
//!
//! An embedder such as the engine computes each change on a copy of graph and queue, commits
//! it, and only then installs the copy. With 100,000s of issues a plain copy costs tens of
//! milliseconds per change; these containers share their storage in pieces (chunks of a
//! vector, shards of a map), so a copy costs a few hundred reference counts and a change
//! copies only the pieces it writes to.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};
use std::ops::{Index, IndexMut};
use std::sync::Arc;

/// Elements per chunk of a [`CowVec`].
const CHUNK: usize = 256;
/// Shards of a [`CowMap`].
const SHARDS: usize = 64;

type FastState = foldhash::fast::RandomState;

/// A vector whose copies share chunks until one is written to.
#[derive(Debug, Clone)]
pub(crate) struct CowVec<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Default for CowVec<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> CowVec<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, value: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        if let Some(last) = self.chunks.last_mut() {
            Arc::make_mut(last).push(value);
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// Every element, writable (copies every shared chunk: for whole-graph recomputations).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks
            .iter_mut()
            .flat_map(|chunk| Arc::make_mut(chunk).iter_mut())
    }
}

impl<T> Index<usize> for CowVec<T> {
    type Output = T;
    fn index(&self, index: usize) -> &T {
        &self.chunks[index / CHUNK][index % CHUNK]
    }
}

impl<T: Clone> IndexMut<usize> for CowVec<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        &mut Arc::make_mut(&mut self.chunks[index / CHUNK])[index % CHUNK]
    }
}

/// A hash map whose copies share shards until one is written to.
#[derive(Debug, Clone)]
pub(crate) struct CowMap<K, V> {
    shards: Vec<Arc<HashMap<K, V, FastState>>>,
    /// Picks the shard of a key; copies keep the same seed.
    picker: FastState,
    len: usize,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::default())).collect(),
            picker: FastState::default(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // The high bits: the shards' own tables use the low ones.
        (self.picker.hash_one(key) >> 58) as usize % SHARDS
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The shard holding `key`, writable (copied when shared); `None` when the key is absent,
    /// so looking for a missing key never copies anything.
    fn shard_holding<Q>(&mut self, key: &Q) -> Option<&mut HashMap<K, V, FastState>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard_of(key);
        if self.shards[shard].contains_key(key) {
            Some(Arc::make_mut(&mut self.shards[shard]))
        } else {
            None
        }
    }

    /// The value, writable (copies its shard when shared).
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard_holding(key)?.get_mut(key)
    }

    /// Puts `value` under `key` (replacing any value there) and returns it, writable.
    pub fn insert(&mut self, key: K, value: V) -> &mut V {
        let shard = self.shard_of(&key);
        match Arc::make_mut(&mut self.shards[shard]).entry(key) {
            Entry::Occupied(mut occupied) => {
                occupied.insert(value);
                occupied.into_mut()
            }
            Entry::Vacant(vacant) => {
                self.len += 1;
                vacant.insert(value)
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let old = self.shard_holding(key)?.remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Room for `additional` more entries, spread over the shards.
    pub fn reserve(&mut self, additional: usize) {
        let each = additional.div_ceil(SHARDS);
        for shard in &mut self.shards {
            Arc::make_mut(shard).reserve(each);
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|shard| shard.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_independent_of_the_original() {
        let mut vec: CowVec<i64> = CowVec::default();
        for i in 0..1_000 {
            vec.push(i);
        }
        let copy = vec.clone();
        vec[3] = -1;
        vec[999] = -2;
        vec.push(1_000);
        assert_eq!((copy[3], copy[999], copy.len()), (3, 999, 1_000));
        assert_eq!(
            (vec[3], vec[999], vec[1_000], vec.len()),
            (-1, -2, 1_000, 1_001)
        );
        assert_eq!(
            copy.iter().copied().sum::<i64>(),
            (0..1_000_i64).sum::<i64>()
        );
        for value in vec.iter_mut() {
            *value = 0;
        }
        assert!(vec.iter().all(|v| *v == 0));
        assert_eq!(copy.iter().filter(|v| **v == 0).count(), 1);

        let mut map = CowMap::default();
        for i in 0..1_000_u32 {
            assert_eq!(*map.insert(i, i * 2), i * 2);
        }
        let copy = map.clone();
        *map.get_mut(&7).unwrap() = 0;
        assert_eq!(map.remove(&8), Some(16));
        assert_eq!(map.remove(&8), None);
        *map.insert(9, 1) += 1;
        assert_eq!(*map.insert(5_000, 1), 1);
        assert_eq!((map.len(), copy.len()), (1_000, 1_000));
        assert_eq!((map.get(&7), copy.get(&7)), (Some(&0), Some(&14)));
        assert_eq!((map.get(&8), copy.get(&8)), (None, Some(&16)));
        assert_eq!((map.get(&9), copy.get(&9)), (Some(&2), Some(&18)));
        assert!(map.contains_key(&5_000) && !copy.contains_key(&5_000));
        assert_eq!(copy.values().count(), 1_000);
        assert!(map.get_mut(&12_345).is_none());
        assert!(!map.is_empty());
    }
}
