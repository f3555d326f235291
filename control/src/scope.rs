//! Tenancy of the user API: which tenants a caller acts for, and the checks
//! that every object a request names is one of theirs. An admin acts for
//! every tenant; a tenant's token only for its own. A tenant naming another
//! tenant is refused (PERMISSION_DENIED); an object of another tenant named
//! by id is "not found", with the very message of an id that does not
//! exist, so ids do not leak (docs/security.md).

use basalt_auth::{Principal, Role};
use basalt_proto::control as pb;
use tonic::{Request, Status};

use crate::audit::Note;
use crate::error::{ControlError, Result};
use crate::model::{key, snapshot_key, DestinationRecord, SnapshotRecord, VolumeRecord};
use crate::store::{get_json, Table};
use crate::volumes::DEFAULT_TENANT;
use crate::Control;

/// The tenants a caller acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// An admin: every tenant.
    All,
    /// A tenant's token: that tenant only.
    Tenant(String),
}

impl Scope {
    pub fn of(p: &Principal) -> Result<Scope> {
        match p.role {
            Role::Admin => Ok(Scope::All),
            Role::Tenant => Ok(Scope::Tenant(p.id.clone())),
            _ => Err(ControlError::Denied(format!(
                "{p} may not call the user API: use an admin or tenant API token"
            ))),
        }
    }

    /// The tenant of a tenant caller.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Tenant(t) => Some(t),
        }
    }

    /// Applies the scope to a request's `tenant` field: a tenant caller's
    /// own tenant when empty; another tenant is refused.
    pub fn field(&self, t: &mut String) -> Result<()> {
        if let Scope::Tenant(mine) = self {
            if t.is_empty() {
                t.clone_from(mine);
            } else if t != mine {
                return Err(ControlError::Denied(format!(
                    "tenant {mine:?} may not act in tenant {t:?}: a tenant's token acts only for \
                     its own tenant (leave --tenant unset)"
                )));
            }
        }
        Ok(())
    }

    /// Whether the caller may see an object of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == tenant,
        }
    }
}

/// The caller's scope, the call's audit note and the request's message.
pub(crate) fn open<T>(r: Request<T>) -> std::result::Result<(Scope, Note, T), Status> {
    let scope = Scope::of(basalt_auth::caller(&r)?)?;
    let note = Note::of(&r);
    Ok((scope, note, r.into_inner()))
}

fn or_default(t: &str) -> &str {
    if t.is_empty() {
        DEFAULT_TENANT
    } else {
        t
    }
}

/// The tenant a request's `tenant` field names for this caller, before it
/// is checked (for the audit note of a refused call too).
fn named<'a>(s: &'a Scope, t: &'a str) -> &'a str {
    match (t.is_empty(), s) {
        (false, _) => t,
        (true, Scope::Tenant(mine)) => mine,
        (true, Scope::All) => DEFAULT_TENANT,
    }
}

impl Control {
    /// Scopes a volume reference (see the module's documentation).
    pub(crate) fn scope_volume(
        &self,
        s: &Scope,
        note: &Note,
        r: Option<pb::VolumeRef>,
    ) -> Result<pb::VolumeRef> {
        let mut r = r.unwrap_or_default();
        if r.id != 0 {
            note.target(format!("volume {}", r.id));
        } else {
            note.target(format!("volume {}/{}", named(s, &r.tenant), r.name));
        }
        s.field(&mut r.tenant)?;
        if r.id != 0 {
            let v: Option<VolumeRecord> = get_json(&*self.store, Table::Volumes, &key(r.id))?;
            match v {
                Some(v) if s.sees(&v.tenant) => note.tenant(&v.tenant),
                // The handler answers for an id that does not exist.
                None if *s == Scope::All => {}
                _ => {
                    return Err(ControlError::NotFound(format!(
                        "volume {} does not exist",
                        r.id
                    )))
                }
            }
        } else {
            note.tenant(or_default(&r.tenant));
        }
        Ok(r)
    }

    /// Scopes a snapshot reference (see the module's documentation).
    pub(crate) fn scope_snapshot(
        &self,
        s: &Scope,
        note: &Note,
        r: Option<pb::SnapshotRef>,
    ) -> Result<pb::SnapshotRef> {
        let mut r = r.unwrap_or_default();
        if r.id != 0 {
            note.target(format!("snapshot {}", r.id));
        } else {
            note.target(format!("snapshot {}/{}", named(s, &r.tenant), r.name));
        }
        s.field(&mut r.tenant)?;
        if r.id != 0 {
            self.scope_snapshot_id(s, note, r.id)?;
        } else {
            note.tenant(or_default(&r.tenant));
        }
        Ok(r)
    }

    /// Refuses a snapshot id of another tenant as not found.
    pub(crate) fn scope_snapshot_id(&self, s: &Scope, note: &Note, id: u64) -> Result<()> {
        let snap: Option<SnapshotRecord> =
            get_json(&*self.store, Table::Snapshots, &snapshot_key(id))?;
        match snap {
            Some(x) if s.sees(&x.tenant) => {
                note.tenant(&x.tenant);
                Ok(())
            }
            None if *s == Scope::All => Ok(()),
            _ => Err(ControlError::NotFound(format!(
                "snapshot {id} does not exist"
            ))),
        }
    }

    /// Scopes a destination reference. Destinations of the control
    /// service's `--destination` flags are shared: every tenant uses them,
    /// only an admin changes them (`write`).
    pub(crate) fn scope_destination(
        &self,
        s: &Scope,
        note: &Note,
        mut r: pb::DestinationRef,
        write: bool,
    ) -> Result<pb::DestinationRef> {
        note.target(format!("destination {}", r.name));
        s.field(&mut r.tenant)?;
        let d: Option<DestinationRecord> = get_json(&*self.store, Table::Destinations, &r.name)?;
        if let Some(d) = &d {
            note.tenant(&d.tenant);
        }
        let Scope::Tenant(mine) = s else {
            return Ok(r);
        };
        match d {
            Some(d) if d.tenant == *mine => Ok(r),
            Some(d) if d.tenant.is_empty() && write => Err(ControlError::Denied(format!(
                "destination {:?} is shared by every tenant (a --destination of the control \
                 service): only an admin may change it",
                d.name
            ))),
            Some(d) if d.tenant.is_empty() => Ok(r),
            _ => Err(ControlError::NotFound(format!(
                "destination {:?} does not exist",
                r.name
            ))),
        }
    }
}

/// Requests that create objects or name several: their `tenant` fields and
/// every reference in them scoped.
impl Control {
    pub(crate) fn scope_create_volume(
        &self,
        s: &Scope,
        note: &Note,
        mut m: pb::CreateVolumeRequest,
    ) -> Result<pb::CreateVolumeRequest> {
        note.target(format!("volume {}/{}", named(s, &m.tenant), m.name));
        s.field(&mut m.tenant)?;
        note.tenant(or_default(&m.tenant));
        m.from_snapshot = self.scope_optional_snapshot(s, m.from_snapshot.take())?;
        Ok(m)
    }

    pub(crate) fn scope_start_snapshot(
        &self,
        s: &Scope,
        note: &Note,
        mut m: pb::StartSnapshotRequest,
    ) -> Result<pb::StartSnapshotRequest> {
        note.target(format!("snapshot {}/{}", named(s, &m.tenant), m.name));
        s.field(&mut m.tenant)?;
        note.tenant(or_default(&m.tenant));
        m.parent = self.scope_optional_snapshot(s, m.parent.take())?;
        Ok(m)
    }

    pub(crate) fn scope_list_snapshots(
        &self,
        s: &Scope,
        mut m: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsRequest> {
        s.field(&mut m.tenant)?;
        if let Some(v) = m.volume.take() {
            m.volume = Some(if v.id != 0 || !v.name.is_empty() {
                self.scope_volume(s, &Note::default(), Some(v))?
            } else {
                v
            });
        }
        Ok(m)
    }

    /// An optional snapshot reference: scoped when it names one, passed on
    /// as it is when absent or empty.
    fn scope_optional_snapshot(
        &self,
        s: &Scope,
        r: Option<pb::SnapshotRef>,
    ) -> Result<Option<pb::SnapshotRef>> {
        match r {
            Some(r) if r.id != 0 || !r.name.is_empty() => {
                Ok(Some(self.scope_snapshot(s, &Note::default(), Some(r))?))
            }
            other => Ok(other),
        }
    }

    pub(crate) fn scope_changed_blocks(
        &self,
        s: &Scope,
        mut m: pb::ListChangedBlocksRequest,
    ) -> Result<pb::ListChangedBlocksRequest> {
        m.first = self.scope_optional_snapshot(s, m.first.take())?;
        m.second = Some(self.scope_snapshot(s, &Note::default(), m.second)?);
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_acts_only_in_its_own_tenant() {
        let a = Scope::of(&Principal::new(Role::Tenant, "a").unwrap()).unwrap();
        let admin = Scope::of(&Principal::new(Role::Admin, "admin").unwrap()).unwrap();
        assert_eq!(a.tenant(), Some("a"));
        assert_eq!(admin, Scope::All);
        let mut t = String::new();
        a.field(&mut t).unwrap();
        assert_eq!(t, "a");
        let mut t = "a".to_owned();
        a.field(&mut t).unwrap();
        assert_eq!(t, "a");
        let mut t = "b".to_owned();
        assert!(matches!(a.field(&mut t), Err(ControlError::Denied(_))));
        assert_eq!(t, "b");
        let mut t = String::new();
        admin.field(&mut t).unwrap();
        assert_eq!(t, "", "an admin's empty tenant stays empty (every tenant)");
        assert!(a.sees("a") && !a.sees("b") && !a.sees(""));
        assert!(admin.sees("b"));
        for machine in [
            Principal::new(Role::Storage, "s1").unwrap(),
            Principal::new(Role::Node, "n1").unwrap(),
            Principal::control(),
        ] {
            assert!(matches!(Scope::of(&machine), Err(ControlError::Denied(_))));
        }
    }
}
