//! The control plane's certificate authority: it issues the server certificate that
//! agents and operators verify, and the client certificates that identify sites.
//!
//! Site certificates are issued for a public key taken from the site's certificate
//! request; everything else in the request (subject, extensions) is ignored, so a site
//! can only ever get a client certificate in its own enrolled name.

use continuum_shared::tls::sha256;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::{Duration, OffsetDateTime};

use crate::error::PkiError;

/// How long the CA certificate is valid.
const CA_VALIDITY: Duration = Duration::days(20 * 365);
/// Certificates start this far in the past, so a site whose clock runs a little behind
/// can still use a fresh one.
const BACKDATE: Duration = Duration::minutes(5);

/// The signing half of the CA, with its certificate.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (DER).
    pub der: CertificateDer<'static>,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
}

impl Issued {
    /// SHA-256 of the certificate, the key of the certificate index.
    pub fn sha256(&self) -> [u8; 32] {
        sha256(&self.der)
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    fastrand_fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn fastrand_fill(bytes: &mut [u8]) {
    use ring::rand::SecureRandom;
    let _ = ring::rand::SystemRandom::new().fill(bytes);
}

impl CertificateAuthority {
    /// A new CA with a fresh P-256 key. Returns the CA and its key in PEM, for storing.
    pub fn create() -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let mut id = [0u8; 4];
        fastrand_fill(&mut id);
        dn.push(
            DnType::CommonName,
            format!("Continuum CA {}", continuum_shared::tls::hex(&id)),
        );
        dn.push(DnType::OrganizationName, "Continuum");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = CertificateAuthority {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// Loads a CA from its certificate and key in PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        use rustls::pki_types::pem::PemObject;
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| PkiError::Invalid {
                path: "ca.crt".into(),
                reason: e.to_string(),
            })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(CertificateAuthority {
            cert_der,
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate (DER), which agents and the CLI trust.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate: the pin carried by join tokens.
    pub fn fingerprint(&self) -> [u8; 32] {
        sha256(&self.cert_der)
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(
        &self,
        names: &[String],
        key: &KeyPair,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "continuum control plane");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, key, validity)
    }

    /// A client certificate naming `site`, for the key in a verified certificate request.
    pub fn issue_site(
        &self,
        site: &str,
        public_key: &impl PublicKeyData,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, site);
        dn.push(DnType::OrganizationName, "Continuum site");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, public_key, validity)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        key: &impl PublicKeyData,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(Issued {
            der: cert.der().clone(),
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
        })
    }
}

/// The public key of a site, taken from a certificate request whose self-signature
/// checks out. Only ECDSA P-256 keys are accepted.
#[derive(Debug)]
pub struct SiteKey(rcgen::SubjectPublicKeyInfo);

impl SiteKey {
    /// Parses a certificate request and checks its signature.
    pub fn from_csr(csr_der: &[u8]) -> Result<Self, String> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| format!("the certificate request is not valid: {e}"))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("the site key must be an ECDSA P-256 key".into());
        }
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&csr.public_key.subject_public_key_info())
            .map_err(|e| format!("the certificate request's key is not usable: {e}"))?;
        Ok(SiteKey(spki))
    }

    /// The raw public key (uncompressed P-256 point).
    pub fn raw(&self) -> &[u8] {
        self.0.der_bytes()
    }

    /// The key as rcgen wants it for issuing.
    pub fn public_key(&self) -> &impl PublicKeyData {
        &self.0
    }
}

/// Checks a renewal proof: `signature` (ASN.1 ECDSA P-256 SHA-256) over `message` by the
/// key whose raw point is `raw_key`.
pub fn verify_site_signature(raw_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, raw_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::SigningKey;

    #[test]
    fn issues_site_certificates_only_for_the_requested_key_and_name() {
        let (ca, key_pem) = CertificateAuthority::create().unwrap();
        let reloaded = CertificateAuthority::load(ca.cert_pem(), &key_pem).unwrap();
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());

        let site_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut asked = CertificateParams::new(vec!["evil.example".into()]).unwrap();
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&site_key).unwrap();
        let key = SiteKey::from_csr(csr.der()).unwrap();
        assert_eq!(key.raw(), site_key.public_key_raw());
        let issued = reloaded
            .issue_site("site-1", key.public_key(), Duration::hours(1))
            .unwrap();
        assert!(issued.not_after - issued.not_before >= 3600);

        // The issued certificate verifies as a client certificate under the CA.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            continuum_shared::tls::provider(),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&issued.der, &[], rustls::pki_types::UnixTime::now())
            .unwrap();

        let message = b"proof";
        let signature = site_key.sign(message).unwrap();
        assert!(verify_site_signature(key.raw(), message, &signature));
        assert!(!verify_site_signature(key.raw(), b"other", &signature));
    }

    #[test]
    fn rejects_bad_requests() {
        assert!(SiteKey::from_csr(b"garbage").is_err());
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let csr = CertificateParams::default().serialize_request(&ed).unwrap();
        assert!(SiteKey::from_csr(csr.der()).unwrap_err().contains("P-256"));
    }
}
