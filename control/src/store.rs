//! Metadata store: a small key-value trait so the embedded store (redb, the
//! default) and a replicated one (etcd, for several control replicas) are
//! interchangeable. Records are JSON; every `apply` is one atomic transaction.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Backend(String),
    #[error("corrupt metadata record {key}: {why}")]
    Corrupt { key: String, why: String },
}

/// A table of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Volumes,
    Servers,
    Nodes,
    Counters,
    Snapshots,
    /// Destinations owed a sweep (a delete finished, the sweep did not).
    Sweeps,
    /// Named snapshot destinations.
    Destinations,
    /// Blocks put into OPEN direct snapshots: `<snapshot:020>/<block:020>`
    /// to the block's chunk id (32 bytes).
    SnapshotBlocks,
    /// API and join tokens by the SHA-256 of the token.
    Tokens,
    /// Revoked storage-server and node identities, `<role>/<id>`.
    Revoked,
    /// Tenants (name, quota), by name.
    Tenants,
    /// The audit log of mutating calls, by `<seq:020>` (newest last).
    Audit,
}

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Volumes => "volumes",
            Table::Servers => "servers",
            Table::Nodes => "nodes",
            Table::Counters => "counters",
            Table::Snapshots => "snapshots",
            Table::Sweeps => "sweeps",
            Table::Destinations => "destinations",
            Table::SnapshotBlocks => "snapshot_blocks",
            Table::Tokens => "tokens",
            Table::Revoked => "revoked",
            Table::Tenants => "tenants",
            Table::Audit => "audit",
        })
    }
}

/// One change inside a transaction.
pub enum Op {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

pub trait MetaStore: Send + Sync + 'static {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies all ops atomically and durably.
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Returns the next value of a persistent counter (starting at 1).
    fn next_id(&self, counter: &str) -> Result<u64, StoreError>;
}

fn be<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The embedded default: one redb file.
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = redb::Database::create(path).map_err(be)?;
        // It holds destination credentials: owner-only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(be)?;
        }
        let tx = db.begin_write().map_err(be)?;
        for t in [
            Table::Volumes,
            Table::Servers,
            Table::Nodes,
            Table::Counters,
            Table::Snapshots,
            Table::Sweeps,
            Table::Destinations,
            Table::SnapshotBlocks,
            Table::Tokens,
            Table::Revoked,
            Table::Tenants,
            Table::Audit,
        ] {
            tx.open_table(t.def()).map_err(be)?;
        }
        tx.commit().map_err(be)?;
        Ok(RedbStore { db })
    }
}

impl MetaStore for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(table.def()).map_err(be)?;
        Ok(t.get(key).map_err(be)?.map(|v| v.value().to_vec()))
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(table.def()).map_err(be)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(be)? {
            let (k, v) = entry.map_err(be)?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        for op in ops {
            match op {
                Op::Put(table, k, v) => {
                    tx.open_table(table.def())
                        .map_err(be)?
                        .insert(k.as_str(), v.as_slice())
                        .map_err(be)?;
                }
                Op::Delete(table, k) => {
                    tx.open_table(table.def())
                        .map_err(be)?
                        .remove(k.as_str())
                        .map_err(be)?;
                }
            }
        }
        tx.commit().map_err(be)
    }

    fn next_id(&self, counter: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        let next = {
            let mut t = tx.open_table(Table::Counters.def()).map_err(be)?;
            let cur = match t.get(counter).map_err(be)? {
                Some(v) => {
                    let b: [u8; 8] = v.value().try_into().map_err(|_| StoreError::Corrupt {
                        key: counter.to_owned(),
                        why: "counter is not 8 bytes".into(),
                    })?;
                    u64::from_le_bytes(b)
                }
                None => 0,
            };
            let next = cur + 1;
            t.insert(counter, next.to_le_bytes().as_slice())
                .map_err(be)?;
            next
        };
        tx.commit().map_err(be)?;
        Ok(next)
    }
}

/// Typed helpers over a [`MetaStore`].
pub fn get_json<T: serde::de::DeserializeOwned>(
    s: &dyn MetaStore,
    t: Table,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match s.get(t, key)? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.to_owned(),
                why: e.to_string(),
            }),
    }
}

pub fn list_json<T: serde::de::DeserializeOwned>(
    s: &dyn MetaStore,
    t: Table,
) -> Result<Vec<T>, StoreError> {
    s.list(t)?
        .into_iter()
        .map(|(k, b)| {
            serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                key: k,
                why: e.to_string(),
            })
        })
        .collect()
}

pub fn put_json<T: serde::Serialize>(t: Table, key: impl Into<String>, v: &T) -> Op {
    // Serialising our own plain structs cannot fail.
    Op::Put(t, key.into(), serde_json::to_vec(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.redb");
        {
            let s = RedbStore::open(&p).unwrap();
            assert_eq!(s.next_id("volume").unwrap(), 1);
            assert_eq!(s.next_id("volume").unwrap(), 2);
            s.apply(vec![
                Op::Put(Table::Volumes, "a".into(), b"1".to_vec()),
                Op::Put(Table::Nodes, "n".into(), b"2".to_vec()),
            ])
            .unwrap();
        }
        let s = RedbStore::open(&p).unwrap();
        assert_eq!(s.next_id("volume").unwrap(), 3);
        assert_eq!(s.get(Table::Volumes, "a").unwrap().unwrap(), b"1");
        s.apply(vec![Op::Delete(Table::Volumes, "a".into())])
            .unwrap();
        assert!(s.get(Table::Volumes, "a").unwrap().is_none());
        assert_eq!(s.list(Table::Nodes).unwrap().len(), 1);
    }
}
