//! Test helpers (not a stable API): a throwaway cluster CA that issues
//! certificates to any principal, for tests that run servers without a
//! control service to join.

use std::path::Path;
use std::time::Duration;

use crate::files::Credentials;
use crate::pki::Ca;
use crate::principal::{Principal, Role};

/// A test CA.
pub struct TestPki {
    pub ca: Ca,
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

impl TestPki {
    pub fn new() -> TestPki {
        let (ca, _key) = Ca::create("test").expect("create a test CA");
        TestPki { ca }
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Credentials for `role` `id` (id ignored for the control service).
    pub fn issue(&self, role: Role, id: &str) -> Credentials {
        let p = Principal::new(role, id).expect("a valid test principal");
        let i = self
            .ca
            .issue_new(&p, Duration::from_secs(86400))
            .expect("issue a test certificate");
        Credentials::new(self.ca.cert_pem().to_owned(), i.cert_pem, i.key_pem)
            .expect("a valid test certificate")
    }

    /// Issues credentials for `role` `id` and stores them in `dir`.
    pub fn install(&self, dir: &Path, role: Role, id: &str) -> Credentials {
        let c = self.issue(role, id);
        c.save(dir).expect("store test credentials");
        c
    }

    /// The control service's credentials.
    pub fn control(&self) -> Credentials {
        self.issue(Role::Control, "")
    }
}
