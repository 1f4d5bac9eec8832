//! Operators: named credentials with a role. A credential is shown once; only its
//! SHA-256 is stored, indexed so that authenticating a request is one lookup.

use continuum_shared::names::check_name;
use continuum_shared::tls::{hex, sha256};
use continuum_shared::unix_now;

use crate::error::StoreError;
use crate::model::{OperatorRecord, Role};
use crate::plane::{ControlPlane, random_secret};
use crate::store::{Store, StoreExt, Tree};

/// Prefix of operator credentials, so a leaked one is easy to recognise and scan for.
pub const CREDENTIAL_PREFIX: &str = "ctn_";

/// Why an operator could not be created.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The name is not valid.
    #[error("{0}")]
    InvalidName(String),
    /// The name is taken.
    #[error("an operator named {0:?} already exists")]
    Exists(String),
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates an operator and returns its record and its credential (shown once).
pub fn create(
    store: &dyn Store,
    name: &str,
    role: Role,
    created_by: &str,
) -> Result<(OperatorRecord, String), OperatorError> {
    check_name("operator", name).map_err(|e| OperatorError::InvalidName(e.to_string()))?;
    let credential = random_secret(CREDENTIAL_PREFIX);
    let record = OperatorRecord {
        name: name.to_owned(),
        role,
        credential_sha256: hex(&sha256(credential.as_bytes())),
        created_at: unix_now(),
        created_by: created_by.to_owned(),
    };
    let value = crate::store::encode(&record)?;
    let mut existed = false;
    store.update(Tree::Operators, name.as_bytes(), &mut |old| {
        existed = old.is_some();
        Some(old.map(<[u8]>::to_vec).unwrap_or_else(|| value.clone()))
    })?;
    if existed {
        return Err(OperatorError::Exists(name.to_owned()));
    }
    store.insert(
        Tree::Credentials,
        &sha256(credential.as_bytes()),
        name.as_bytes(),
    )?;
    store.flush()?;
    Ok((record, credential))
}

/// The operator a credential belongs to, if any.
pub fn authenticate(
    cp: &ControlPlane,
    credential: &str,
) -> Result<Option<OperatorRecord>, StoreError> {
    let Some(name) = cp
        .store
        .get(Tree::Credentials, &sha256(credential.as_bytes()))?
    else {
        return Ok(None);
    };
    let record: Option<OperatorRecord> = cp.store.get_json(Tree::Operators, &name)?;
    // A credential counts only while it is the operator's current one.
    Ok(record.filter(|r| r.credential_sha256 == hex(&sha256(credential.as_bytes()))))
}

/// Every operator.
pub fn list(store: &dyn Store) -> Result<Vec<OperatorRecord>, StoreError> {
    store.list_json(Tree::Operators)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn names_are_unique_and_credentials_are_stored_hashed() {
        let store = MemoryStore::new();
        let (record, credential) = create(&store, "alice", Role::Viewer, "admin").unwrap();
        assert!(credential.starts_with(CREDENTIAL_PREFIX));
        assert!(
            !serde_json::to_string(&record)
                .unwrap()
                .contains(&credential)
        );
        assert!(matches!(
            create(&store, "alice", Role::Admin, "admin"),
            Err(OperatorError::Exists(_))
        ));
        assert!(matches!(
            create(&store, "Alice!", Role::Admin, "admin"),
            Err(OperatorError::InvalidName(_))
        ));
        assert_eq!(list(&store).unwrap().len(), 1);
        assert_eq!(list(&store).unwrap()[0].role, Role::Viewer);
    }
}
