//! The embedded store: sled in the data directory.

use std::path::Path;

use super::{Entry, Store, Tree, Update};
use crate::error::StoreError;

/// sled, one sled tree per [`Tree`].
pub struct SledStore {
    db: sled::Db,
    trees: Vec<(Tree, sled::Tree)>,
}

impl SledStore {
    /// Opens (or creates) the store at `path` with a page cache of `cache_bytes`
    /// (sled's own default is 1 GiB, far more than a control plane needs).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let trees = Tree::ALL
            .into_iter()
            .map(|t| Ok((t, db.open_tree(t.name())?)))
            .collect::<Result<Vec<_>, sled::Error>>()
            .map_err(backend)?;
        Ok(SledStore { db, trees })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        // Every Tree variant is opened in `open`, in order.
        &self.trees[Tree::ALL.iter().position(|t| *t == tree).unwrap_or(0)].1
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree).insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.tree(tree).remove(key).map_err(backend)?;
        Ok(())
    }

    fn scan(&self, tree: Tree) -> Result<Vec<Entry>, StoreError> {
        self.tree(tree)
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.tree(tree)
            .iter()
            .rev()
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn update(&self, tree: Tree, key: &[u8], f: Update<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .fetch_and_update(key, f)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn next_id(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(backend)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }
}
