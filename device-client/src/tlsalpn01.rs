//! The built-in tls-alpn-01 responder (RFC 8737; RFC 8738 §6 for `ip` identifiers), for devices
//! whose port 80 is taken but which can answer TLS on 443.
//!
//! It accepts TLS connections only for the ALPN protocol `acme-tls/1` and only for the SNI
//! names of identifiers it was given, and presents for each a self-signed certificate that
//! names exactly that identifier and carries the critical acmeIdentifier extension with the
//! SHA-256 of the key authorization. Any other handshake fails: no certificate is presented
//! for another ALPN, no SNI, or an unknown name. Like the http-01 responder, it only runs while
//! an order has pending authorizations, and shares its connection cap and timeout
//! ([`crate::http01::MAX_CONNECTIONS`]).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::error::Error;
use crate::types::Identifier;

/// The ALPN protocol of tls-alpn-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = protocol_spec::challenge::ACME_TLS_ALPN_PROTOCOL;

type Certs = Arc<Mutex<HashMap<String, Arc<CertifiedKey>>>>;

/// A running responder; stops when dropped.
pub struct TlsAlpn01Responder {
    addr: SocketAddr,
    certs: Certs,
    task: JoinHandle<()>,
}

impl fmt::Debug for TlsAlpn01Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAlpn01Responder")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TlsAlpn01Responder {
    /// Binds `addr` and starts answering.
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let listener = crate::http01::listen(addr)
            .await
            .map_err(|source| Error::TlsAlpn01Listen { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::TlsAlpn01Listen { addr, source })?;
        let certs: Certs = Arc::default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Crypto(format!("tls-alpn-01 TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver {
                certs: certs.clone(),
            }));
        // RFC 8737 §4: the response "MUST" negotiate acme-tls/1; rustls refuses a ClientHello
        // whose ALPN list does not contain it (no_application_protocol).
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        // Each validation is one handshake: nothing to resume, so no tickets and no cache.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let task = tokio::spawn(serve(listener, TlsAcceptor::from(Arc::new(config))));
        tracing::debug!(%local, "tls-alpn-01 responder listening");
        Ok(Self {
            addr: local,
            certs,
            task,
        })
    }

    /// The bound address (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Presents the validation certificate for `identifier` (a `dns` or `ip` identifier) and
    /// `key_authorization` from now on.
    pub fn add(&self, identifier: &Identifier, key_authorization: &str) -> Result<(), Error> {
        let (sni, cert) = validation_certificate(identifier, key_authorization)?;
        self.certs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sni, Arc::new(cert));
        Ok(())
    }
}

impl Drop for TlsAlpn01Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SNI name the CA sends for `identifier`: the name itself, or for an address its reverse
/// mapping name (RFC 8738 §6), lowercase.
pub fn sni_name(identifier: &Identifier) -> Result<String, Error> {
    match identifier.kind.as_str() {
        "dns" => Ok(identifier.value.to_ascii_lowercase()),
        "ip" => {
            let ip: IpAddr = identifier
                .value
                .parse()
                .map_err(|_| challenge_error(format!("{identifier}: not an IP address")))?;
            let mut buf = [0u8; protocol_spec::challenge::REVERSE_DNS_NAME_MAX];
            Ok(protocol_spec::challenge::reverse_dns_name(ip, &mut buf).to_owned())
        }
        other => Err(challenge_error(format!(
            "tls-alpn-01 proves dns and ip identifiers, not {other}"
        ))),
    }
}

/// An identifier in the CA's authorization that tls-alpn-01 cannot answer for: the CA's
/// answer is at fault (the device's own identifiers were checked when it was configured), so
/// it is a protocol error, which `run` retries.
fn challenge_error(detail: String) -> Error {
    Error::protocol("tls-alpn-01 challenge", crate::error::printable(&detail))
}

/// The self-signed validation certificate of RFC 8737 §3 for `identifier`, with a new P-256
/// key: a single subjectAltName naming the identifier (a dNSName, or an iPAddress by RFC 8738
/// §6), and the critical id-pe-acmeIdentifier extension (1.3.6.1.5.5.7.1.31) whose value is
/// the DER OCTET STRING of SHA-256(key authorization). Returns it with its SNI name.
fn validation_certificate(
    identifier: &Identifier,
    key_authorization: &str,
) -> Result<(String, CertifiedKey), Error> {
    let sni = sni_name(identifier)?;
    let san = match identifier.kind.as_str() {
        "ip" => rcgen::SanType::IpAddress(
            identifier
                .value
                .parse()
                .map_err(|_| challenge_error(format!("{identifier}: not an IP address")))?,
        ),
        _ => rcgen::SanType::DnsName(
            identifier
                .value
                .clone()
                .try_into()
                .map_err(|e| challenge_error(format!("{identifier}: {e}")))?,
        ),
    };
    let crypto = |what: &str, e: &dyn fmt::Display| {
        Error::Crypto(format!(
            "tls-alpn-01 certificate for {identifier}: {what}: {e}"
        ))
    };
    let key = rcgen::KeyPair::generate().map_err(|e| crypto("key", &e))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![san];
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    // > The extension MUST be critical (RFC 8737 §3); new_acme_identifier marks it so and
    // > wraps the 32-octet digest in an OCTET STRING.
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest.as_ref()));
    let cert = params
        .self_signed(&key)
        .map_err(|e| crypto("signing", &e))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| crypto("key", &e))?;
    Ok((sni, CertifiedKey::new(vec![cert.der().clone()], signer)))
}

/// Picks the validation certificate by SNI, and only for a ClientHello that offers
/// `acme-tls/1`; `None` (a failed handshake) otherwise.
#[derive(Debug)]
struct Resolver {
    certs: Certs,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        let Some(sni) = hello.server_name().filter(|_| acme) else {
            tracing::debug!("tls-alpn-01: refused a handshake without acme-tls/1 or SNI");
            return None;
        };
        let found = self
            .certs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&sni.to_ascii_lowercase())
            .cloned();
        if found.is_none() {
            tracing::debug!(sni, "tls-alpn-01: refused a handshake for an unknown name");
        }
        found
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    crate::http01::serve_capped(listener, "tls-alpn-01", move |stream, peer| {
        let acceptor = acceptor.clone();
        async move { answer(stream, peer, &acceptor).await }
    })
    .await;
}

/// One validation: the handshake is the whole answer (RFC 8737 §3), then the connection is
/// closed.
async fn answer(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
) -> std::io::Result<()> {
    let mut tls = acceptor.accept(stream).await?;
    tracing::info!(%peer, "answered a tls-alpn-01 handshake");
    tls.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::time::Duration;
    use x509_parser::extensions::GeneralName;

    /// Accepts any certificate and keeps the one the server presented.
    #[derive(Debug, Default)]
    struct Capture(Mutex<Option<Vec<u8>>>);

    impl rustls::client::danger::ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            *self.0.lock().expect("lock") = Some(end_entity.to_vec());
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// A handshake as the CA's validator makes it; the presented certificate, or the error.
    async fn handshake(addr: SocketAddr, sni: &str, alpn: &[u8]) -> Result<Vec<u8>, String> {
        handshake_with(addr, sni, Some(alpn), true).await
    }

    /// A handshake offering `alpn` (none at all with `None`), and sending `sni` only with
    /// `send_sni`.
    async fn handshake_with(
        addr: SocketAddr,
        sni: &str,
        alpn: Option<&[u8]>,
        send_sni: bool,
    ) -> Result<Vec<u8>, String> {
        let capture = Arc::new(Capture::default());
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
        config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
        config.enable_sni = send_sni;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(sni.to_owned()).expect("name");
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ACME_TLS_ALPN));
        let der = capture.0.lock().expect("lock").clone();
        der.ok_or_else(|| "no certificate".to_owned())
    }

    #[tokio::test]
    async fn presents_the_rfc8737_certificate_for_known_names_only() {
        let r = TlsAlpn01Responder::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let dns = Identifier::dns("PLC-7.plant").expect("dns");
        let ip = Identifier::ip("192.0.2.7".parse().expect("ip")).expect("ip");
        r.add(&dns, "tok.thumb").expect("add dns");
        r.add(&ip, "tok2.thumb").expect("add ip");
        let addr = r.local_addr();

        let der = handshake(addr, "plc-7.plant", ACME_TLS_ALPN)
            .await
            .expect("handshake");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
        let san = cert.subject_alternative_name().expect("san").expect("san");
        assert_eq!(
            san.value.general_names,
            [GeneralName::DNSName("plc-7.plant")]
        );
        assert_eq!(acme_identifier(&cert), digest_octets("tok.thumb"));

        // RFC 8738 §6: an address is asked for by its reverse name, and named by iPAddress.
        let der = handshake(addr, "7.2.0.192.in-addr.arpa", ACME_TLS_ALPN)
            .await
            .expect("ip handshake");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
        let san = cert.subject_alternative_name().expect("san").expect("san");
        assert_eq!(
            san.value.general_names,
            [GeneralName::IPAddress(&[192, 0, 2, 7])]
        );
        assert_eq!(acme_identifier(&cert), digest_octets("tok2.thumb"));

        // No certificate for another ALPN, no ALPN, no SNI or an unknown name.
        assert!(handshake(addr, "plc-7.plant", b"http/1.1").await.is_err());
        assert!(handshake_with(addr, "plc-7.plant", None, true)
            .await
            .is_err());
        assert!(
            handshake_with(addr, "plc-7.plant", Some(ACME_TLS_ALPN), false)
                .await
                .is_err()
        );
        assert!(handshake(addr, "other.plant", ACME_TLS_ALPN).await.is_err());
        // An identifier tls-alpn-01 cannot prove is the CA's mistake: retried, not fatal.
        let e = sni_name(&Identifier::permanent("SN-1").expect("permanent")).expect_err("perm");
        assert_eq!(e.kind(), crate::error::ErrorKind::Refused, "{e}");

        // Stopped when dropped: nothing listens any more.
        drop(r);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "stopped on drop");
    }

    /// The critical acmeIdentifier extension's value.
    fn acme_identifier(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<u8> {
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        ext.value.to_vec()
    }

    /// The DER OCTET STRING of SHA-256(`key_authorization`) (RFC 8737 §3).
    fn digest_octets(key_authorization: &str) -> Vec<u8> {
        let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
        let mut want = vec![0x04, 0x20];
        want.extend_from_slice(digest.as_ref());
        want
    }

    /// Connections beyond the cap are closed at once; the idle ones that hold the slots are
    /// closed after the answer timeout, and then a validation gets through again.
    #[tokio::test]
    async fn idle_connections_are_capped_and_timed_out() {
        let r = TlsAlpn01Responder::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let dns = Identifier::dns("plc-7.plant").expect("dns");
        r.add(&dns, "tok.thumb").expect("add");
        let addr = r.local_addr();
        crate::http01::tests::assert_idle_connections_capped(
            addr,
            crate::http01::MAX_CONNECTIONS,
            crate::http01::ANSWER_TIMEOUT,
        )
        .await;
        let der = handshake(addr, "plc-7.plant", ACME_TLS_ALPN)
            .await
            .expect("a validation after the idle connections");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
        assert_eq!(acme_identifier(&cert), digest_octets("tok.thumb"));
    }
}
