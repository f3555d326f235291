//! Who a caller is: a role and an id, written into certificates as one DNS
//! name (`<id>.<role>.basalt`, or `control.basalt` for the control service).

use std::fmt;

/// The suffix of every identity name.
pub const DOMAIN: &str = "basalt";

/// What a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The control service (one identity, no id).
    Control,
    /// A storage server, by its server id.
    Storage,
    /// A node manager (and the backends it spawns), by its node id.
    Node,
    /// An operator, by token.
    Admin,
    /// A tenant's user, by token; the id is the tenant.
    Tenant,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Control => "control",
            Role::Storage => "storage",
            Role::Node => "node",
            Role::Admin => "admin",
            Role::Tenant => "tenant",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::Control,
            Role::Storage,
            Role::Node,
            Role::Admin,
            Role::Tenant,
        ]
        .into_iter()
        .find(|r| r.name() == s)
    }

    /// Whether this role gets a certificate (machines) rather than a token
    /// (people and their programs).
    pub fn has_certificate(self) -> bool {
        matches!(self, Role::Control | Role::Storage | Role::Node)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub role: Role,
    /// Server id, node id, tenant name or admin name; empty for the control
    /// service.
    pub id: String,
}

/// Why an id cannot name a principal.
#[derive(Debug, thiserror::Error)]
#[error("{id:?} cannot be a {role} id: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'")]
pub struct BadId {
    pub role: &'static str,
    pub id: String,
}

/// Ids are DNS labels, so they fit a certificate's DNS name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Principal {
    pub fn control() -> Principal {
        Principal {
            role: Role::Control,
            id: String::new(),
        }
    }

    /// A principal of `role` named `id` (checked: a DNS label).
    pub fn new(role: Role, id: &str) -> Result<Principal, BadId> {
        if role == Role::Control {
            return Ok(Principal::control());
        }
        if !valid_id(id) {
            return Err(BadId {
                role: role.name(),
                id: id.to_owned(),
            });
        }
        Ok(Principal {
            role,
            id: id.to_owned(),
        })
    }

    pub fn is(&self, role: Role, id: &str) -> bool {
        self.role == role && self.id == id
    }

    /// The DNS name in this principal's certificate, and the name a client
    /// expects from a server it connects to.
    pub fn dns_name(&self) -> String {
        if self.id.is_empty() {
            format!("{}.{DOMAIN}", self.role.name())
        } else {
            format!("{}.{}.{DOMAIN}", self.id, self.role.name())
        }
    }

    /// The principal a certificate's DNS name names, if it is one of ours.
    pub fn from_dns_name(name: &str) -> Option<Principal> {
        let rest = name.strip_suffix(DOMAIN)?.strip_suffix('.')?;
        match rest.split_once('.') {
            None => (Role::parse(rest)? == Role::Control).then(Principal::control),
            Some((id, role)) => {
                let role = Role::parse(role)?;
                if role == Role::Control {
                    return None;
                }
                Principal::new(role, id).ok()
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.id.is_empty() {
            write!(f, "{}", self.role)
        } else {
            write!(f, "{} {}", self.role, self.id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_names_are_refused() {
        for p in [
            Principal::control(),
            Principal::new(Role::Storage, "s1").unwrap(),
            Principal::new(Role::Node, "node-7").unwrap(),
        ] {
            assert_eq!(Principal::from_dns_name(&p.dns_name()), Some(p.clone()));
        }
        assert_eq!(
            Principal::new(Role::Storage, "s1").unwrap().dns_name(),
            "s1.storage.basalt"
        );
        assert_eq!(Principal::control().dns_name(), "control.basalt");
        for bad in [
            "example.com",
            "s1.storage.basalt.evil",
            "x.control.basalt",
            "storage.basalt",
            "a.b.storage.basalt",
            "S1.storage.basalt",
            "s1.king.basalt",
            ".storage.basalt",
        ] {
            assert_eq!(Principal::from_dns_name(bad), None, "{bad}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"x".repeat(64)] {
            assert!(Principal::new(Role::Node, bad).is_err(), "{bad:?}");
        }
    }
}
