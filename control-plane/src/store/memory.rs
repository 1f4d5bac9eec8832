//! An in-memory [`Store`], the twin of the sled store for unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Entry, Store, Tree, Update};
use crate::error::StoreError;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// Everything in maps; nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    trees: Mutex<HashMap<Tree, Map>>,
    ids: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, tree: Tree, f: impl FnOnce(&mut Map) -> R) -> R {
        let mut trees = self
            .trees
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(trees.entry(tree).or_default())
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(tree, |t| t.get(key).cloned()))
    }

    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.with(tree, |t| t.insert(key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.with(tree, |t| t.remove(key));
        Ok(())
    }

    fn scan(&self, tree: Tree) -> Result<Vec<Entry>, StoreError> {
        Ok(self.with(tree, |t| {
            t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }))
    }

    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(self.with(tree, |t| {
            t.iter()
                .rev()
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn update(&self, tree: Tree, key: &[u8], f: Update<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(tree, |t| {
            let old = t.get(key).cloned();
            match f(old.as_deref()) {
                Some(new) => t.insert(key.to_vec(), new),
                None => t.remove(key),
            };
            old
        }))
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.ids.fetch_add(1, Ordering::Relaxed))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
