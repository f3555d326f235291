//! The cluster certificate authority and the certificates it issues.
//!
//! One CA per cluster (ECDSA P-256, ten years), held by the control service.
//! It issues short-lived leaf certificates naming one [`Principal`] as their
//! only DNS name, usable both as a TLS server and as a TLS client.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::principal::Principal;

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clock skew tolerated between hosts: certificates start this early.
const SKEW: Duration = Duration::from_secs(300);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot {what}: {source}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("the certificate signing request is not valid: {0}; send a PEM CSR made by `basalt` (ECDSA P-256)")]
    BadCsr(String),
    #[error("the CA key does not match the CA certificate; restore both from the same backup")]
    KeyMismatch,
    #[error(
        "the CA key is not an ECDSA P-256 key; create the CA with `basalt-control --bootstrap`"
    )]
    NotP256,
    #[error("cannot sign this attachment grant: {0}")]
    BadGrant(String),
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// The cluster's certificate authority.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The same key, for signing attachment grants (see `grant.rs`).
    pub(crate) grant_key: ring::signature::EcdsaKeyPair,
}

fn grant_key(key: &KeyPair) -> Result<ring::signature::EcdsaKeyPair, PkiError> {
    ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.serialize_der(),
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|_| PkiError::NotP256)
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn leaf_params(principal: &Principal, validity: Duration) -> Result<CertificateParams, PkiError> {
    let name = principal.dns_name();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(
        name.clone().try_into().map_err(rc("name a certificate"))?,
    )];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - SKEW;
    params.not_after = now + validity;
    params.serial_number = Some(random_serial());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl Ca {
    /// A new CA named after `cluster`; returns it and its private key (PEM,
    /// to be stored owner-only).
    pub fn create(cluster: &str) -> Result<(Ca, String), PkiError> {
        let key = KeyPair::generate().map_err(rc("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Basalt cluster CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - SKEW;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(rc("sign the CA certificate"))?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        let ca = Ca {
            cert_pem,
            grant_key: grant_key(&key)?,
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// The CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("read the CA key"))?;
        let grant_key = grant_key(&key)?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(rc("read the CA certificate"))?;
        let ca = Ca {
            cert_pem: cert_pem.to_owned(),
            issuer,
            grant_key,
        };
        // Check the pair by issuing and verifying one certificate.
        let probe = ca.issue_new(&Principal::control(), Duration::from_secs(60))?;
        crate::peer::verify_leaf(&ca.cert_pem, &probe.cert_pem)
            .map_err(|_| PkiError::KeyMismatch)?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `principal` with a new key (for the control
    /// service itself and for tests).
    pub fn issue_new(&self, principal: &Principal, validity: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(rc("generate a key"))?;
        let cert = leaf_params(principal, validity)?
            .signed_by(&key, &self.issuer)
            .map_err(rc("sign a certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the public key of `csr_pem` (its signature proves the caller
    /// holds the key) for `principal`. The names the CSR asks for are
    /// ignored: the certificate names only `principal`, which the caller's
    /// join token decided.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        principal: &Principal,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let params = leaf_params(principal, validity)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(rc("sign a certificate"))?;
        Ok(cert.pem())
    }
}

/// A new key and a certificate signing request for it (PEM: CSR, key).
pub fn new_csr(principal: &Principal) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(rc("generate a key"))?;
    let params = CertificateParams::new(vec![principal.dns_name()])
        .map_err(rc("name a certificate request"))?;
    let csr = params
        .serialize_request(&key)
        .map_err(rc("make a certificate request"))?
        .pem()
        .map_err(rc("encode a certificate request"))?;
    Ok((csr, key.serialize_pem()))
}
