//! Prepared records by id. Stored records never change, so an entry never goes stale.
//!
//! Memory stays flat as the store grows: entries live in two generations of at most half the
//! capacity each. When the young one fills, the old one is dropped and the young one takes its
//! place; a hit in the old generation moves the entry back to the young one. Records that keep
//! being candidates stay, the rest age out: an LRU's behaviour at a hash map's cost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::identity::PreparedRecord;

type Generation = HashMap<i64, Arc<PreparedRecord>>;

pub(super) struct PreparedCache {
    generation_size: usize,
    generations: Mutex<(Generation, Generation)>,
}

impl PreparedCache {
    pub(super) fn new(capacity: usize) -> Self {
        PreparedCache { generation_size: (capacity / 2).max(1), generations: Mutex::new(Default::default()) }
    }

    fn generations(&self) -> std::sync::MutexGuard<'_, (Generation, Generation)> {
        // a panic while holding the lock cannot leave the maps inconsistent
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, id: i64) -> Option<Arc<PreparedRecord>> {
        let mut generations = self.generations();
        if let Some(found) = generations.0.get(&id) {
            return Some(found.clone());
        }
        let found = generations.1.remove(&id)?;
        self.insert_young(&mut generations, id, found.clone());
        Some(found)
    }

    pub(super) fn insert(&self, id: i64, record: Arc<PreparedRecord>) {
        self.insert_young(&mut self.generations(), id, record);
    }

    fn insert_young(&self, generations: &mut (Generation, Generation), id: i64, record: Arc<PreparedRecord>) {
        if generations.0.len() >= self.generation_size {
            generations.1 = std::mem::take(&mut generations.0);
        }
        generations.0.insert(id, record);
    }

    pub(super) fn forget(&self, ids: impl Iterator<Item = i64>) {
        let mut generations = self.generations();
        for id in ids {
            generations.0.remove(&id);
            generations.1.remove(&id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = self.generations();
        generations.0.len() + generations.1.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Arc<PreparedRecord> {
        let engine = crate::identity::Engine::new(&crate::identity::default_model()).expect("default model compiles");
        Arc::new(engine.prepare(&crate::identity::CanonicalRecord::default(), ""))
    }

    #[test]
    fn stays_within_capacity_and_keeps_what_is_used() {
        let cache = PreparedCache::new(10);
        for id in 0..5 {
            cache.insert(id, record());
        }
        for id in 5..100 {
            cache.insert(id, record());
            // record 0 is a candidate again and again: it must survive the churn
            assert!(cache.get(0).is_some(), "record 0 aged out at {id}");
            assert!(cache.len() <= 10);
        }
        assert!(cache.get(1).is_none(), "an unused record stays forever");
        assert!(cache.get(99).is_some());
    }

    #[test]
    fn forgets_uncommitted_records() {
        let cache = PreparedCache::new(4);
        cache.insert(1, record());
        cache.insert(2, record());
        cache.insert(3, record());
        cache.forget([1, 3].into_iter());
        assert!(cache.get(1).is_none() && cache.get(3).is_none());
        assert!(cache.get(2).is_some());
    }
}
