//! The audit log: every write through the API, allowed or not, with who, what, when and
//! from where. Entries are appended under increasing keys and never changed.

use std::net::SocketAddr;

use continuum_shared::unix_now;

use crate::error::StoreError;
use crate::model::{AuditEntry, Outcome, Role};
use crate::plane::rfc3339;
use crate::store::{Store, StoreExt, Tree, decode};

/// Who did something, and from where.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Operator name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The request's source address.
    pub from: SocketAddr,
}

/// Appends an entry and makes it durable before returning.
pub fn record(
    store: &dyn Store,
    actor: &Actor,
    action: &str,
    target: &str,
    outcome: Outcome,
    detail: Option<String>,
) -> Result<AuditEntry, StoreError> {
    let seq = store.next_id()?;
    let entry = AuditEntry {
        seq,
        at: rfc3339(unix_now()),
        actor: actor.name.clone(),
        role: actor.role,
        action: action.to_owned(),
        target: target.to_owned(),
        from: actor.from.ip().to_string(),
        outcome,
        detail,
    };
    store.put_json(Tree::Audit, &seq.to_be_bytes(), &entry)?;
    store.flush()?;
    Ok(entry)
}

/// The newest `limit` entries, oldest first.
pub fn recent(store: &dyn Store, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let mut entries = store
        .scan_last(Tree::Audit, limit)?
        .into_iter()
        .map(|(k, v)| decode(Tree::Audit, &k, &v))
        .collect::<Result<Vec<AuditEntry>, _>>()?;
    entries.reverse();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn entries_come_back_in_order_and_limited() {
        let store = MemoryStore::new();
        let actor = Actor {
            name: "bob".into(),
            role: Role::Viewer,
            from: "192.0.2.7:5000".parse().unwrap(),
        };
        for i in 0..5 {
            record(
                &store,
                &actor,
                "site.revoke",
                &format!("s{i}"),
                Outcome::Denied,
                None,
            )
            .unwrap();
        }
        let last = recent(&store, 3).unwrap();
        let targets: Vec<_> = last.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["s2", "s3", "s4"]);
        assert_eq!(last[0].from, "192.0.2.7");
        assert_eq!(last[0].outcome, Outcome::Denied);
    }
}
