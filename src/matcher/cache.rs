//! Prepared records by id. Stored records never change, so an entry never goes stale; the
//! cache is bounded by clearing it when full, which keeps memory flat as the store grows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::identity::PreparedRecord;

pub(super) struct PreparedCache {
    capacity: usize,
    map: Mutex<HashMap<i64, Arc<PreparedRecord>>>,
}

impl PreparedCache {
    pub(super) fn new(capacity: usize) -> Self {
        PreparedCache { capacity, map: Mutex::new(HashMap::new()) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<PreparedRecord>>> {
        // a panic while holding the lock cannot leave the map inconsistent
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, id: i64) -> Option<Arc<PreparedRecord>> {
        self.map().get(&id).cloned()
    }

    pub(super) fn insert(&self, id: i64, record: Arc<PreparedRecord>) {
        let mut map = self.map();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(id, record);
    }

    pub(super) fn forget(&self, ids: impl Iterator<Item = i64>) {
        let mut map = self.map();
        for id in ids {
            map.remove(&id);
        }
    }
}
