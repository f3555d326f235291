//! Storage servers and node managers: registration (persisted) and liveness
//! from heartbeats (in memory; after a control restart a peer is DOWN until
//! its next heartbeat, at most one interval later).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use basalt_proto::control as pb;

use crate::error::{ControlError, Result};
use crate::model::{NodeRecord, ServerRecord};
use crate::store::{get_json, list_json, put_json, MetaStore, Table};

#[derive(Default)]
struct Live {
    seen: HashMap<String, Instant>,
    free: HashMap<String, (u64, u64)>,
    node_status: HashMap<String, Vec<pb::AttachmentStatus>>,
}

pub struct Registry {
    live: Mutex<Live>,
    pub down_after: Duration,
    started: Instant,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn valid_addr(a: &str) -> bool {
    a.parse::<std::net::SocketAddr>()
        .is_ok_and(|s| s.port() != 0)
}

impl Registry {
    pub fn new(down_after: Duration) -> Registry {
        Registry {
            live: Mutex::default(),
            down_after,
            started: Instant::now(),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_up(&self, id: &str) -> bool {
        self.live()
            .seen
            .get(id)
            .is_some_and(|t| t.elapsed() < self.down_after)
    }

    /// Failed: no heartbeat for `down_after`, counted from this control
    /// process's start too (so a control restart is not mistaken for every
    /// peer failing at once).
    pub fn is_failed(&self, id: &str) -> bool {
        self.started.elapsed() > self.down_after && !self.is_up(id)
    }

    fn last_seen_unix(&self, id: &str) -> i64 {
        match self.live().seen.get(id) {
            Some(t) => crate::model::now_unix() - t.elapsed().as_secs() as i64,
            None => 0,
        }
    }

    pub fn register_server(&self, store: &dyn MetaStore, s: pb::StorageServer) -> Result<()> {
        if !valid_id(&s.server_id) {
            return Err(ControlError::Invalid(format!(
                "invalid server_id {:?}: use 1-64 of [A-Za-z0-9._-]",
                s.server_id
            )));
        }
        if !valid_addr(&s.data_address) || !valid_addr(&s.admin_address) {
            return Err(ControlError::Invalid(
                "data_address and admin_address must be IP:PORT".into(),
            ));
        }
        let old: Option<ServerRecord> = get_json(store, Table::Servers, &s.server_id)?;
        let rec = ServerRecord {
            server_id: s.server_id.clone(),
            data_address: s.data_address,
            admin_address: s.admin_address,
            zone: s.zone,
            capacity_bytes: s.capacity_bytes,
            free_bytes: s.free_bytes,
            draining: old.as_ref().is_some_and(|o| o.draining),
        };
        if old.as_ref() != Some(&rec) {
            store.apply(vec![put_json(Table::Servers, rec.server_id.clone(), &rec)])?;
        }
        let mut l = self.live();
        l.seen.insert(s.server_id.clone(), Instant::now());
        l.free.insert(s.server_id, (s.capacity_bytes, s.free_bytes));
        Ok(())
    }

    pub fn server_heartbeat(
        &self,
        store: &dyn MetaStore,
        h: pb::StorageServerHeartbeatRequest,
    ) -> Result<()> {
        if get_json::<ServerRecord>(store, Table::Servers, &h.server_id)?.is_none() {
            return Err(ControlError::NotFound(format!(
                "storage server {:?} is not registered; register first",
                h.server_id
            )));
        }
        let mut l = self.live();
        l.seen.insert(h.server_id.clone(), Instant::now());
        l.free.insert(h.server_id, (h.capacity_bytes, h.free_bytes));
        Ok(())
    }

    pub fn servers(&self, store: &dyn MetaStore) -> Result<Vec<ServerRecord>> {
        let mut v: Vec<ServerRecord> = list_json(store, Table::Servers)?;
        let l = self.live();
        for s in &mut v {
            if let Some((cap, free)) = l.free.get(&s.server_id) {
                s.capacity_bytes = *cap;
                s.free_bytes = *free;
            }
        }
        Ok(v)
    }

    pub fn server(&self, store: &dyn MetaStore, id: &str) -> Result<ServerRecord> {
        self.servers(store)?
            .into_iter()
            .find(|s| s.server_id == id)
            .ok_or_else(|| {
                ControlError::NotFound(format!("storage server {id:?} is not registered"))
            })
    }

    pub fn server_pb(&self, s: &ServerRecord, allocated: u64, copies: u32) -> pb::StorageServer {
        let state = match (self.is_up(&s.server_id), s.draining) {
            (_, true) if copies == 0 => "DRAINED",
            (_, true) => "DRAINING",
            (true, false) => "UP",
            (false, false) => "DOWN",
        };
        pb::StorageServer {
            server_id: s.server_id.clone(),
            data_address: s.data_address.clone(),
            admin_address: s.admin_address.clone(),
            zone: s.zone.clone(),
            capacity_bytes: s.capacity_bytes,
            free_bytes: s.free_bytes,
            allocated_bytes: allocated,
            copies,
            state: state.into(),
            last_heartbeat: self.last_seen_unix(&s.server_id),
        }
    }

    pub fn register_node(&self, store: &dyn MetaStore, n: pb::Node) -> Result<()> {
        if !valid_id(&n.node_id) {
            return Err(ControlError::Invalid(format!(
                "invalid node_id {:?}: use 1-64 of [A-Za-z0-9._-]",
                n.node_id
            )));
        }
        if !valid_addr(&n.address) {
            return Err(ControlError::Invalid("node address must be IP:PORT".into()));
        }
        let rec = NodeRecord {
            node_id: n.node_id.clone(),
            address: n.address,
        };
        if get_json::<NodeRecord>(store, Table::Nodes, &rec.node_id)?.as_ref() != Some(&rec) {
            store.apply(vec![put_json(Table::Nodes, rec.node_id.clone(), &rec)])?;
        }
        let mut l = self.live();
        l.seen.insert(n.node_id.clone(), Instant::now());
        l.node_status.insert(n.node_id, n.attachments);
        Ok(())
    }

    pub fn node_heartbeat(&self, store: &dyn MetaStore, h: pb::NodeHeartbeatRequest) -> Result<()> {
        if get_json::<NodeRecord>(store, Table::Nodes, &h.node_id)?.is_none() {
            return Err(ControlError::NotFound(format!(
                "node {:?} is not registered; register first",
                h.node_id
            )));
        }
        let mut l = self.live();
        l.seen.insert(h.node_id.clone(), Instant::now());
        l.node_status.insert(h.node_id, h.attachments);
        Ok(())
    }

    pub fn node(&self, store: &dyn MetaStore, id: &str) -> Result<NodeRecord> {
        get_json(store, Table::Nodes, id)?
            .ok_or_else(|| ControlError::NotFound(format!("node {id:?} is not registered")))
    }

    pub fn nodes_pb(&self, store: &dyn MetaStore) -> Result<Vec<pb::Node>> {
        let nodes: Vec<NodeRecord> = list_json(store, Table::Nodes)?;
        Ok(nodes
            .into_iter()
            .map(|n| pb::Node {
                state: if self.is_up(&n.node_id) { "UP" } else { "DOWN" }.into(),
                last_heartbeat: self.last_seen_unix(&n.node_id),
                attachments: self
                    .live()
                    .node_status
                    .get(&n.node_id)
                    .cloned()
                    .unwrap_or_default(),
                node_id: n.node_id,
                address: n.address,
            })
            .collect())
    }
}
