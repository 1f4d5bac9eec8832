//! Durable state of the control plane behind a small trait, so that the embedded sled
//! store can be swapped for a replicated one without touching the code above it.
//!
//! Values are JSON: records gain fields as the product grows, and JSON with serde
//! defaults reads old records without a migration step.

mod memory;
mod sled_store;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use memory::MemoryStore;
pub use sled_store::SledStore;

use crate::error::StoreError;

/// The named key spaces of the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Enrolled sites by name.
    Sites,
    /// Site name by SHA-256 of each certificate currently valid for it.
    CertIndex,
    /// Join tokens by id.
    Tokens,
    /// Operators by name.
    Operators,
    /// Operator name by SHA-256 of its credential.
    Credentials,
    /// The audit log, by big-endian sequence number.
    Audit,
    /// Facts about the installation itself (schema version, CA fingerprint).
    Meta,
    /// Published releases by `service/version`.
    Releases,
    /// Each site's desired state by site name.
    Desired,
    /// Rollouts by id (sortable: the newest last).
    Rollouts,
    /// Secrets by name, their values sealed to the control plane's key.
    Secrets,
}

impl Tree {
    /// Every tree, for backup and restore.
    pub const ALL: [Tree; 11] = [
        Tree::Sites,
        Tree::CertIndex,
        Tree::Tokens,
        Tree::Operators,
        Tree::Credentials,
        Tree::Audit,
        Tree::Meta,
        Tree::Releases,
        Tree::Desired,
        Tree::Rollouts,
        Tree::Secrets,
    ];

    /// The tree's name on disk and in backups.
    pub const fn name(self) -> &'static str {
        match self {
            Tree::Sites => "sites",
            Tree::CertIndex => "cert-index",
            Tree::Tokens => "tokens",
            Tree::Operators => "operators",
            Tree::Credentials => "credentials",
            Tree::Audit => "audit",
            Tree::Meta => "meta",
            Tree::Releases => "releases",
            Tree::Desired => "desired",
            Tree::Rollouts => "rollouts",
            Tree::Secrets => "secrets",
        }
    }

    /// The tree with this name.
    pub fn from_name(name: &str) -> Option<Tree> {
        Tree::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A key-value pair as stored.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The change function of [`Store::update`]: old value in, new value (or `None` to
/// remove) out.
pub type Update<'a> = &'a mut dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>>;

/// Ordered key-value storage with atomic single-key updates.
pub trait Store: Send + Sync + 'static {
    /// The value under `key`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value`.
    fn insert(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key` if present.
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError>;
    /// Every entry of a tree, in key order.
    fn scan(&self, tree: Tree) -> Result<Vec<Entry>, StoreError>;
    /// The last `limit` entries of a tree, newest (highest key) first.
    fn scan_last(&self, tree: Tree, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Atomically replaces the value under `key` with `f(old)` (`None` removes it) and
    /// returns the old value. `f` may run more than once under contention.
    fn update(&self, tree: Tree, key: &[u8], f: Update<'_>) -> Result<Option<Vec<u8>>, StoreError>;
    /// A number never returned before by this store.
    fn next_id(&self) -> Result<u64, StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Typed access over [`Store`], with JSON values.
pub trait StoreExt {
    /// The record under `key`.
    fn get_json<T: DeserializeOwned>(
        &self,
        tree: Tree,
        key: &[u8],
    ) -> Result<Option<T>, StoreError>;
    /// Stores a record.
    fn put_json<T: Serialize>(&self, tree: Tree, key: &[u8], value: &T) -> Result<(), StoreError>;
    /// Every record of a tree in key order; records that fail to decode are an error.
    fn list_json<T: DeserializeOwned>(&self, tree: Tree) -> Result<Vec<T>, StoreError>;
}

impl<S: Store + ?Sized> StoreExt for S {
    fn get_json<T: DeserializeOwned>(
        &self,
        tree: Tree,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(tree, key)?
            .map(|bytes| decode(tree, key, &bytes))
            .transpose()
    }

    fn put_json<T: Serialize>(&self, tree: Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
        self.insert(tree, key, &encode(value)?)
    }

    fn list_json<T: DeserializeOwned>(&self, tree: Tree) -> Result<Vec<T>, StoreError> {
        self.scan(tree)?
            .into_iter()
            .map(|(key, value)| decode(tree, &key, &value))
            .collect()
    }
}

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a record: {e}")))
}

/// Decodes a record, naming where it came from if it is damaged.
pub fn decode<T: DeserializeOwned>(tree: Tree, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "record {:?} in {} is damaged: {e}",
            String::from_utf8_lossy(key),
            tree.name()
        ))
    })
}

#[cfg(test)]
mod model_test;
