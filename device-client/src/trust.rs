//! Trust bootstrap (SPEC §2.3): the device trusts exactly one root for its HTTPS connections to
//! the CA, given either as the root certificate or as its SHA-256 fingerprint.
//!
//! With a fingerprint, the device has no root to start from. The server presents leaf,
//! intermediate and, last, the root (SPEC §2.2), so [`PinnedVerifier`] takes the last
//! certificate of the presented chain, checks that its SHA-256 equals the pin, and only then
//! validates the chain up to it with webpki (rustls's `WebPkiServerVerifier`), including the
//! host name (RFC 9525). All of this happens inside the TLS handshake, so no ACME request, not
//! even the directory GET, is sent to a server that fails the pin.
//!
//! There is no system or webpki-roots store anywhere in this crate (reqwest is built with
//! `rustls-tls-manual-roots` and handed this verifier), so nothing can fall back to public
//! roots (SPEC §10.3).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;

use crate::error::Error;

/// The one root the device trusts for the CA's HTTPS (SPEC §2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustAnchor {
    /// The root certificate itself (DER).
    Root(CertificateDer<'static>),
    /// SHA-256 over the root certificate's DER.
    Fingerprint([u8; 32]),
}

impl TrustAnchor {
    /// Reads a root certificate file, PEM or DER. A PEM file must hold exactly one certificate:
    /// a bundle would widen what the device trusts.
    pub fn from_root_file(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        Self::from_root_bytes(&bytes).map_err(|e| Error::bad_file(path, e))
    }

    /// Parses a root certificate, PEM or DER.
    pub fn from_root_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("not a PEM certificate: {e}"))?;
            match <[_; 1]>::try_from(certs) {
                Ok([cert]) => Ok(Self::Root(cert)),
                Err(certs) => Err(format!(
                    "holds {} certificates; the root file must hold exactly the CA root",
                    certs.len()
                )),
            }
        } else {
            x509_parser::parse_x509_certificate(bytes)
                .map_err(|e| format!("not a DER or PEM certificate: {e}"))?;
            Ok(Self::Root(CertificateDer::from(bytes.to_vec())))
        }
    }

    /// Parses a fingerprint as `openssl x509 -fingerprint -sha256` prints it; lowercase digits
    /// and missing separators are accepted, but all 32 octets must be there (SPEC §2.3).
    pub fn from_fingerprint(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        // openssl prints "sha256 Fingerprint=AB:CD:…"; accept a pasted line.
        let text = text.rsplit_once('=').map_or(text, |(_, fp)| fp);
        protocol_spec::fingerprint::parse(text)
            .map(Self::Fingerprint)
            .map_err(|e| Error::Config(format!("root fingerprint {text:?}: {e}")))
    }

    /// The fingerprint this anchor pins, in canonical text form.
    pub fn fingerprint_text(&self) -> String {
        match self {
            Self::Root(der) => fingerprint_text(&sha256(der)),
            Self::Fingerprint(fp) => fingerprint_text(fp),
        }
    }
}

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The canonical text form of a fingerprint (SPEC §2.3): uppercase hex pairs joined by `:`.
pub fn fingerprint_text(digest: &[u8; 32]) -> String {
    let mut out = [0u8; protocol_spec::fingerprint::FINGERPRINT_TEXT_LEN];
    protocol_spec::fingerprint::format(digest, &mut out).to_owned()
}

/// A rustls server certificate verifier that trusts exactly one pinned root.
pub struct PinnedVerifier {
    anchor: TrustAnchor,
    provider: Arc<CryptoProvider>,
    /// The webpki verifier for the root: built at once for a root file, and on the first chain
    /// whose root matches for a fingerprint.
    inner: Mutex<Option<Arc<WebPkiServerVerifier>>>,
    /// Why the last handshake was refused, for an error message better than rustls's alert.
    last_failure: Mutex<Option<String>>,
    /// The root a handshake was validated to: the pinned root itself, or with a fingerprint the
    /// root the server presented that matched it.
    root: Mutex<Option<CertificateDer<'static>>>,
}

impl fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedVerifier")
            .field("pin", &self.anchor.fingerprint_text())
            .finish()
    }
}

impl PinnedVerifier {
    /// A verifier for `anchor`, using ring.
    pub fn new(anchor: TrustAnchor) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (inner, root) = match &anchor {
            TrustAnchor::Root(der) => {
                (Some(webpki_for(der.clone(), &provider)?), Some(der.clone()))
            }
            TrustAnchor::Fingerprint(_) => (None, None),
        };
        Ok(Self {
            anchor,
            provider,
            inner: Mutex::new(inner),
            last_failure: Mutex::new(None),
            root: Mutex::new(root),
        })
    }

    /// The pinned root certificate: the configured one, or with a fingerprint the one the CA
    /// presented at the end of its chain and whose hash matched (known after the first
    /// handshake). Relying parties on the device get their trust anchor from here.
    pub fn root(&self) -> Option<CertificateDer<'static>> {
        self.root
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the reason the last handshake was refused, if one was.
    pub fn take_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn fail(&self, why: String) -> rustls::Error {
        *self
            .last_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why);
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }

    /// The webpki verifier to use for this chain, after the fingerprint check if there is one.
    fn inner_for(
        &self,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let pin = match &self.anchor {
            TrustAnchor::Fingerprint(pin) => pin,
            TrustAnchor::Root(_) => {
                return guard
                    .clone()
                    .ok_or_else(|| self.fail("no verifier for the pinned root".into()))
            }
        };
        // > A device that is given only a fingerprint takes the root certificate from the last
        // > position of the chain the server presents … A device given a fingerprint MUST
        // > accept a root certificate only if the SHA-256 of its DER encoding equals the
        // > fingerprint.  (SPEC §2.3)
        let Some(root) = intermediates.last() else {
            return Err(self.fail(
                "the server presented only its own certificate, but with a fingerprint pin the \
                 chain must end with the CA root (SPEC §2.2)"
                    .into(),
            ));
        };
        let presented = sha256(root);
        if presented != *pin {
            return Err(self.fail(format!(
                "the root at the end of the server's chain has fingerprint {}, not the pinned {}",
                fingerprint_text(&presented),
                fingerprint_text(pin)
            )));
        }
        if let Some(v) = guard.as_ref() {
            return Ok(v.clone());
        }
        let v = webpki_for(root.clone().into_owned(), &self.provider)
            .map_err(|e| self.fail(e.to_string()))?;
        *guard = Some(v.clone());
        *self.root.lock().unwrap_or_else(PoisonError::into_inner) = Some(root.clone().into_owned());
        Ok(v)
    }
}

fn webpki_for(
    root: CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(root)
        .map_err(|e| Error::Trust(format!("the pinned root is not a usable trust anchor: {e}")))?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Trust(format!("cannot build a verifier for the pinned root: {e}")))
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let inner = self.inner_for(intermediates)?;
        inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| {
                self.fail(format!(
                    "the server's certificate does not validate to the pinned root {} for {}: {e}",
                    self.anchor.fingerprint_text(),
                    server_name.to_str()
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client config that trusts only `verifier`.
pub(crate) fn client_config(verifier: Arc<PinnedVerifier>) -> Result<rustls::ClientConfig, Error> {
    let provider = verifier.provider.clone();
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Crypto(format!("cannot configure TLS: {e}")))?
        // A custom verifier is how rustls spells "trust this one root, found this way"; it
        // validates fully (see `PinnedVerifier`), it does not skip anything.
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let canonical = "41:62:35:04:B6:97:B5:F4:C1:E9:A3:87:4A:7E:68:68:BA:F6:9F:10:DF:89:F4:C2:E0:48:7F:7C:BD:45:97:9E";
        let a = TrustAnchor::from_fingerprint(canonical).expect("canonical");
        let b = TrustAnchor::from_fingerprint(&canonical.to_lowercase().replace(':', ""))
            .expect("lowercase without separators");
        let c = TrustAnchor::from_fingerprint(&format!("sha256 Fingerprint={canonical}\n"))
            .expect("openssl line");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.fingerprint_text(), canonical);
        assert!(TrustAnchor::from_fingerprint(&canonical[..92]).is_err());
    }

    #[test]
    fn root_file_must_hold_one_certificate() {
        let ca = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&ca).expect("self-signed");
        let pem = cert.pem();
        let anchor = TrustAnchor::from_root_bytes(pem.as_bytes()).expect("one PEM");
        assert_eq!(
            anchor,
            TrustAnchor::from_root_bytes(cert.der()).expect("DER")
        );
        assert_eq!(
            anchor.fingerprint_text(),
            fingerprint_text(&sha256(cert.der()))
        );
        let two = format!("{pem}{pem}");
        let err = TrustAnchor::from_root_bytes(two.as_bytes()).expect_err("bundle refused");
        assert!(err.contains("holds 2 certificates"), "{err}");
        assert!(TrustAnchor::from_root_bytes(b"garbage").is_err());
    }
}
