//! The audit log: every mutating call of the control API that passed
//! authentication (who, what, when, outcome), persisted in the store and
//! bounded to the newest `--audit-keep` entries. Recorded in one place, a
//! tower layer inside the authorisation layer; handlers add the resource
//! a call named to the call's [`Note`].

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use basalt_auth::{Caller, Principal, Role};
use basalt_proto::control as pb;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::now_unix;
use crate::scope::Scope;
use crate::store::{list_json, put_json, MetaStore, Op, Table};
use crate::Control;

const PREFIX: &str = "/basalt.control.v1.Control/";
/// The longest error message kept in an entry.
const MAX_MESSAGE: usize = 300;
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

/// Whether a method is recorded: every method but reads, heartbeats and
/// the block data calls (like the data plane's I/O, they are not the
/// audit's subject; the calls that open and complete a direct snapshot
/// are recorded).
pub fn audited(method: &str) -> bool {
    !matches!(
        method,
        "DescribeVolume"
            | "ListVolumes"
            | "DescribeSnapshot"
            | "ListSnapshots"
            | "ListDestinations"
            | "DescribeDestination"
            | "ListSnapshotBlocks"
            | "ListChangedBlocks"
            | "GetSnapshotBlock"
            | "ReadVolumeBlock"
            | "PutSnapshotBlock"
            | "WriteVolumeBlock"
            | "ListStorageServers"
            | "ListNodes"
            | "StorageServerHeartbeat"
            | "NodeHeartbeat"
            | "ListTenants"
            | "ListApiTokens"
            | "ListAudit"
    )
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: i64,
    pub role: String,
    pub principal: String,
    pub tenant: String,
    pub method: String,
    pub target: String,
    /// `OK` or the gRPC code's name.
    pub outcome: String,
    pub message: String,
}

#[derive(Default)]
struct NoteData {
    principal: Option<Principal>,
    tenant: String,
    target: String,
}

/// What a handler knows of an audited call: the resource it named and its
/// tenant (a no-op for calls that are not audited).
#[derive(Clone, Default)]
pub struct Note(Option<Arc<Mutex<NoteData>>>);

impl Note {
    pub fn of<T>(r: &tonic::Request<T>) -> Note {
        r.extensions().get::<Note>().cloned().unwrap_or_default()
    }

    fn with(&self, f: impl FnOnce(&mut NoteData)) {
        if let Some(d) = &self.0 {
            if let Ok(mut d) = d.lock() {
                f(&mut d);
            }
        }
    }

    pub fn target(&self, t: impl Into<String>) {
        let t = t.into();
        self.with(|d| d.target = t);
    }

    pub fn tenant(&self, t: &str) {
        self.with(|d| d.tenant = t.to_owned());
    }

    /// The caller, for a call without credentials that proved one (Join).
    pub fn principal(&self, p: Principal) {
        self.with(|d| d.principal = Some(p));
    }
}

/// The outcome of a response: gRPC puts an error's status in the headers
/// (trailers-only); a success carries its status in the trailers.
fn outcome(headers: &http::HeaderMap) -> (String, String) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    if code == 0 {
        return ("OK".into(), String::new());
    }
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    (code_name(tonic::Code::from_i32(code)), shorten(&message))
}

/// `PERMISSION_DENIED` for `Code::PermissionDenied`.
fn code_name(c: tonic::Code) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{c:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// grpc-message is percent-encoded.
fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn shorten(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The persisted log.
pub struct AuditLog {
    store: Arc<dyn MetaStore>,
    keep: u64,
}

fn audit_key(seq: u64) -> String {
    format!("{seq:020}")
}

impl AuditLog {
    /// Opens the log, dropping entries beyond the newest `keep` (the flag
    /// may have been lowered).
    pub fn open(store: Arc<dyn MetaStore>, keep: u64) -> AuditLog {
        let log = AuditLog {
            store,
            keep: keep.max(1),
        };
        if let Err(e) = log.trim() {
            tracing::warn!("audit log: cannot trim old entries: {e}");
        }
        log
    }

    fn trim(&self) -> Result<()> {
        let mut keys: Vec<String> = self
            .store
            .list(Table::Audit)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        let extra = keys.len().saturating_sub(self.keep as usize);
        if extra > 0 {
            self.store.apply(
                keys.into_iter()
                    .take(extra)
                    .map(|k| Op::Delete(Table::Audit, k))
                    .collect(),
            )?;
        }
        Ok(())
    }

    /// Appends an entry, dropping the one `keep` entries older.
    fn append(&self, mut e: AuditRecord) -> Result<()> {
        e.seq = self.store.next_id("audit")?;
        let mut ops = vec![put_json(Table::Audit, audit_key(e.seq), &e)];
        if e.seq > self.keep {
            ops.push(Op::Delete(Table::Audit, audit_key(e.seq - self.keep)));
        }
        self.store.apply(ops)?;
        Ok(())
    }

    fn record(&self, method: &str, note: &Note, outcome: (String, String)) {
        let Some(d) = &note.0 else { return };
        let Ok(d) = d.lock() else { return };
        // Calls of no known principal (a refused Join) are not recorded:
        // anyone could fill the log with them.
        let Some(p) = &d.principal else { return };
        let tenant = if p.role == Role::Tenant {
            p.id.clone()
        } else {
            d.tenant.clone()
        };
        let e = AuditRecord {
            seq: 0,
            at: now_unix(),
            role: p.role.name().into(),
            principal: p.id.clone(),
            tenant,
            method: method.to_owned(),
            target: d.target.clone(),
            outcome: outcome.0,
            message: outcome.1,
        };
        if let Err(err) = self.append(e) {
            tracing::error!(method, principal = %p, "audit log: cannot record the call: {err}");
        }
    }
}

/// Newest-last entries of `all` the filter admits, at most `limit` (the
/// newest).
fn select(mut all: Vec<AuditRecord>, tenant: &str, since: i64, limit: u32) -> Vec<AuditRecord> {
    all.retain(|e| (tenant.is_empty() || e.tenant == tenant) && e.at >= since);
    all.sort_by_key(|e| e.seq);
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    } as usize;
    let skip = all.len().saturating_sub(limit);
    all.split_off(skip)
}

fn entry_pb(e: AuditRecord) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: e.seq,
        at: e.at,
        role: e.role,
        principal: e.principal,
        tenant: e.tenant,
        method: e.method,
        target: e.target,
        outcome: e.outcome,
        message: e.message,
    }
}

impl Control {
    pub fn list_audit(
        &self,
        s: &Scope,
        mut r: pb::ListAuditRequest,
    ) -> Result<pb::ListAuditResponse> {
        s.field(&mut r.tenant)?;
        let all: Vec<AuditRecord> = list_json(&*self.store, Table::Audit)?;
        Ok(pb::ListAuditResponse {
            entries: select(all, &r.tenant, r.since, r.limit)
                .into_iter()
                .map(entry_pb)
                .collect(),
        })
    }
}

/// The tower layer that records audited calls.
#[derive(Clone)]
pub struct AuditLayer(Arc<AuditLog>);

impl AuditLayer {
    pub fn new(log: AuditLog) -> AuditLayer {
        AuditLayer(Arc::new(log))
    }
}

impl<S> tower_layer::Layer<S> for AuditLayer {
    type Service = AuditService<S>;
    fn layer(&self, inner: S) -> AuditService<S> {
        AuditService {
            inner,
            log: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuditService<S> {
    inner: S,
    log: Arc<AuditLog>,
}

type BoxFuture<T, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<T, E>> + Send>>;

impl<S, B, R> tower_service::Service<http::Request<B>> for AuditService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix(PREFIX)
            .filter(|m| audited(m))
            .map(str::to_owned);
        let Some(method) = method else {
            return Box::pin(self.inner.call(req));
        };
        let note = Note(Some(Arc::new(Mutex::new(NoteData {
            principal: req.extensions().get::<Caller>().map(|c| c.0.clone()),
            ..Default::default()
        }))));
        req.extensions_mut().insert(note.clone());
        let log = self.log.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let r = call.await;
            let o = match &r {
                Ok(resp) => outcome(resp.headers()),
                Err(_) => ("INTERNAL".into(), "the call failed in transport".into()),
            };
            log.record(&method, &note, o);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, at: i64, tenant: &str) -> AuditRecord {
        AuditRecord {
            seq,
            at,
            role: "tenant".into(),
            principal: tenant.into(),
            tenant: tenant.into(),
            method: "CreateVolume".into(),
            target: String::new(),
            outcome: "OK".into(),
            message: String::new(),
        }
    }

    #[test]
    fn outcomes_and_selection() {
        let mut h = http::HeaderMap::new();
        assert_eq!(outcome(&h), ("OK".into(), String::new()));
        h.insert("grpc-status", "7".parse().unwrap());
        h.insert(
            "grpc-message",
            "tenant%20%22a%22 may not act in%20tenant %22b%22"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            outcome(&h),
            (
                "PERMISSION_DENIED".into(),
                "tenant \"a\" may not act in tenant \"b\"".into()
            )
        );
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(percent_decode(b"100%"), "100%");
        assert!(shorten(&"é".repeat(400)).ends_with("..."));

        let all = vec![
            rec(3, 30, "a"),
            rec(1, 10, "a"),
            rec(2, 20, "b"),
            rec(4, 40, "a"),
        ];
        let seqs = |v: Vec<AuditRecord>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(select(all.clone(), "", 0, 0)), [1, 2, 3, 4]);
        assert_eq!(seqs(select(all.clone(), "a", 0, 0)), [1, 3, 4]);
        assert_eq!(seqs(select(all.clone(), "a", 0, 2)), [3, 4]);
        assert_eq!(seqs(select(all.clone(), "", 20, 0)), [2, 3, 4]);
        assert!(select(all, "c", 0, 0).is_empty());

        assert!(audited("CreateVolume") && audited("RevokeApiToken") && audited("Join"));
        assert!(!audited("ListVolumes") && !audited("PutSnapshotBlock"));
    }

    #[test]
    fn the_log_keeps_the_newest_entries() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn MetaStore> =
            Arc::new(crate::store::RedbStore::open(&d.path().join("m.redb")).unwrap());
        let log = AuditLog::open(store.clone(), 3);
        for i in 0..5 {
            log.append(rec(0, i, "a")).unwrap();
        }
        let kept: Vec<AuditRecord> = list_json(&*store, Table::Audit).unwrap();
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        // A lower --audit-keep applies at the next start.
        drop(log);
        let _log = AuditLog::open(store.clone(), 1);
        let kept: Vec<AuditRecord> = list_json(&*store, Table::Audit).unwrap();
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    }
}
