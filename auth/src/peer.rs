//! Reading the principal out of a certificate.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{anchor_from_trusted_cert, EndEntityCert, KeyUsage};

use crate::principal::Principal;

/// The principal a (verified) certificate names: its one DNS name must be
/// one of ours.
pub fn principal_of_cert(der: &CertificateDer<'_>) -> Option<Principal> {
    let cert = EndEntityCert::try_from(der).ok()?;
    let mut names = cert.valid_dns_names();
    let first = names.next()?;
    if names.next().is_some() {
        return None;
    }
    Principal::from_dns_name(first)
}

fn der_of(pem: &str, what: &str) -> Result<CertificateDer<'static>, String> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("{what} is not a PEM certificate: {e}"))
}

/// Verifies `leaf_pem` against `ca_pem` now (signature, validity period,
/// client use) and returns the principal it names.
pub fn verify_leaf(ca_pem: &str, leaf_pem: &str) -> Result<Principal, String> {
    let ca = der_of(ca_pem, "the CA")?;
    let leaf = der_of(leaf_pem, "the certificate")?;
    let anchor = anchor_from_trusted_cert(&ca).map_err(|e| format!("bad CA certificate: {e}"))?;
    let cert = EndEntityCert::try_from(&leaf).map_err(|e| format!("bad certificate: {e}"))?;
    cert.verify_for_usage(
        &[webpki::ring::ECDSA_P256_SHA256],
        &[anchor],
        &[],
        UnixTime::now(),
        KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| format!("the certificate does not verify against the cluster CA: {e:?}"))?;
    principal_of_cert(&leaf).ok_or_else(|| "the certificate names no basalt principal".to_owned())
}
