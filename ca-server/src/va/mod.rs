//! Validation authority: proves that an ACME client controls an identifier by running one
//! http-01 (RFC 8555 §8.3) or tls-alpn-01 (RFC 8737) check against it, for `dns` identifiers
//! and for `ip` identifiers (RFC 8738).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8.3>,
//! <https://www.rfc-editor.org/rfc/rfc8737#section-3>,
//! <https://www.rfc-editor.org/rfc/rfc8738#section-4>
//!
//! # Where we dial
//!
//! An `ip` identifier is dialed as is. A `dns` identifier is resolved with the system resolver
//! and its addresses are tried in order until one accepts the TCP connection; the first one that
//! does is the only one whose answer counts. The LAB/TEST knob
//! [`ValidationConfig::lab_resolve_all_to`] replaces that resolution with one fixed address.
//! The ports come from the config (`http_port`, `tls_alpn_port`) rather than the RFCs' 80 and
//! 443, so a lab can run clients on unprivileged ports.
//!
//! # Decisions
//!
//! - **Host header.** The RFC's URL is `http://{domain}/.well-known/acme-challenge/{token}`, so
//!   the Host header is the bare identifier (an IPv6 address in brackets, RFC 8738 §5), with no
//!   port even when the lab dials another port. A client sees the same Host from us as from a
//!   production CA.
//! - **Body.** At most 8 KiB is read. Whitespace is trimmed at both ends. RFC 8555 only asks for
//!   trailing whitespace to be ignored, but a key authorization contains no whitespace, so
//!   trimming the front too cannot make a wrong answer pass. It only forgives sloppy servers,
//!   as Pebble does.
//! - **Where we never dial.** Every address is checked just before it is dialed, after
//!   resolution and after each redirect: loopback, link-local, unspecified, multicast and
//!   broadcast addresses and the CA's own addresses are refused (`policy`), so an account
//!   cannot point the CA at itself, at its host, or at link-local services. Private plant
//!   ranges are dialed: that is where devices live. `[validation] allow_loopback` (tests,
//!   labs) lets loopback through, and nothing else.
//! - **Redirects.** We follow at most 10 (RFC 8555 §8.3: the server SHOULD follow them), and
//!   only to `http://` URLs on `http_port`, because that is the only port this validator is
//!   configured to dial. By default (`redirects = "same-host"`) only to the identifier's own
//!   host: a redirect elsewhere would make the CA a tool for sending GETs, with whatever side
//!   effects they have, to any host of the plant network. `"any"` follows to other hosts (still
//!   only to addresses we may dial), `"none"` follows none. A target URL seen before in the
//!   chain is reported as a loop. Host names in redirect targets resolve like `dns`
//!   identifiers, including the lab override.
//! - **What details say.** A detail never quotes a response body: the CA would otherwise show
//!   the requester what some host served. It gives the status, the size, and that the body
//!   was not the key authorization. A refused redirect quotes its `Location` only when the
//!   identifier's own host sent it.
//!   **`https://` redirects are refused.** Following them would mean a second TLS client
//!   with no trust anchors (devices on a plant network have no publicly trusted certificates),
//!   so it would add attack surface and no assurance. A client that redirects to HTTPS gets an
//!   `incorrectResponse` that says so.
//! - **tls-alpn-01 certificate checks.** The server certificate is not checked against any roots
//!   (RFC 8737 §4). Its handshake signature still is, so the peer must hold the certificate's
//!   key. We cannot use `rustls::crypto::verify_tls1x_signature` for this: webpki refuses to parse
//!   a certificate with an unknown critical extension, and the acmeIdentifier extension is
//!   exactly that. So the SPKI is taken out with x509-parser and the signature is checked
//!   with the ring provider's algorithms: through rustls's raw-key helper for TLS 1.3, and
//!   directly for TLS 1.2, which has no such helper. Session resumption is off, so every
//!   attempt sees a fresh certificate.
//!
//! # Error types (RFC 8555 §6.7)
//!
//! - `connection`: nothing accepted the connection, the peer went silent (any timeout but a
//!   DNS one), the connection broke, or the peer did not speak HTTP.
//! - `dns`: a name did not resolve, or its lookup timed out.
//! - `tls`: the TLS handshake failed, including a peer that refuses ALPN `acme-tls/1` with an
//!   alert.
//! - `incorrectResponse`: an answer arrived but does not satisfy the challenge. This covers
//!   status, body, redirect target, negotiated ALPN, SAN and acmeIdentifier. RFC 8737 names no
//!   problem type for these, and §6.7 defines `incorrectResponse` as "Response received didn't
//!   match the challenge's requirements".
//! - `serverInternal`: an input that should never reach the validator, such as a malformed
//!   stored identifier or token.
//!
//! Every detail names the address dialed. Peer-supplied text (certificate names, an own-host
//! `Location`) is quoted, escaped and cut short; bodies are never quoted.

pub mod attest;
pub mod policy;

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::header::{HeaderValue, HOST, LOCATION};
use reqwest::{StatusCode, Url};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, PeerMisbehaved, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, DnsName, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;
use tracing::{debug, instrument};
use x509_parser::asn1_rs::{Any, FromDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::storage::limits::{SharedSlots, SlotKey};
use crate::types::{ChallengeType, Identifier, IdentifierType};
use crate::va::policy::{refused_address, OwnNames};
use crate::{Error, Result};
use std::time::Duration;

/// The ALPN protocol id of tls-alpn-01 (RFC 8737 §6.2).
const ACME_TLS_ALPN: &[u8] = protocol_spec::challenge::ACME_TLS_ALPN_PROTOCOL;

/// DER contents of id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31 (RFC 8737 §6.1).
const ID_PE_ACME_IDENTIFIER: &[u8] = &protocol_spec::challenge::ACME_IDENTIFIER_OID;

/// Largest http-01 body we read. A key authorization is under 100 bytes. The cap stops a
/// client from making us buffer without limit.
const MAX_BODY_BYTES: usize = 8 * 1024;

/// Most redirects followed for one http-01 attempt.
const MAX_REDIRECTS: usize = 10;

/// Most characters of peer-supplied text quoted in an error detail: enough for a whole key
/// authorization (87 characters for a SHA-256 thumbprint), so a wrong one shows in full.
const EXCERPT_CHARS: usize = 100;

/// Most characters of an error chain (which may quote the peer) kept in an error detail.
const CHAIN_CHARS: usize = 300;

/// Runs challenge validations. Cloning is cheap: the HTTP client, the TLS config and the
/// count of validations in flight are shared, so one `Validator` serves every validation task.
#[derive(Clone)]
pub struct Validator {
    cfg: ValidationConfig,
    own: OwnNames,
    http: reqwest::Client,
    tls: TlsConnector,
    in_flight: Arc<std::sync::Mutex<InFlight>>,
    /// The per-account and per-address slots in the store, when several instances share it.
    shared: Option<SharedSlots>,
    /// Tests: answers name lookups in place of DNS, so that a name can change its address
    /// between two lookups.
    #[cfg(test)]
    lookup: Option<Lookup>,
}

/// A stand-in for DNS in tests.
#[cfg(test)]
type Lookup = Arc<dyn Fn(&str) -> IpAddr + Send + Sync>;

/// Validations running now: in all, per account, and per source address of the request that
/// started them (keyed as rate limits key addresses).
#[derive(Debug, Default)]
struct InFlight {
    total: usize,
    per_account: std::collections::HashMap<String, usize>,
    per_address: std::collections::HashMap<IpAddr, usize>,
}

/// One admitted validation ([`Validator::admit`]); its slots are freed when it is dropped.
#[derive(Debug)]
pub struct Admission {
    in_flight: Arc<std::sync::Mutex<InFlight>>,
    account: String,
    address: Option<IpAddr>,
    /// The slots it holds in the store, when several instances share it.
    shared: Vec<(SharedSlots, SlotKey, u64)>,
}

/// `rateLimited` for a validation that finds no slot: the challenge stays pending.
fn busy(detail: String) -> Error {
    Error::RateLimited {
        detail: format!("{detail}; answer the challenge again after Retry-After"),
        retry_after: Duration::from_secs(1),
    }
}

/// [`busy`] for a shared slot of `key` that `held` validations fill.
fn full(key: &SlotKey, held: usize) -> Error {
    busy(match key {
        SlotKey::Account(_) => format!(
            "{held} validations of this account are running at the CA's instances, the most \
             one account may have at once (validation.max_in_flight_per_account)"
        ),
        SlotKey::Address(_) => format!(
            "{held} validations asked for from this address are running at the CA's \
             instances, the most one address may have at once \
             (validation.max_in_flight_per_address)"
        ),
    })
}

fn release<K: std::hash::Hash + Eq>(map: &mut std::collections::HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        {
            let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            f.total = f.total.saturating_sub(1);
            release(&mut f.per_account, &self.account);
            if let Some(address) = &self.address {
                release(&mut f.per_address, address);
            }
        }
        for (slots, key, id) in self.shared.drain(..) {
            slots.give_back(&key, id);
        }
    }
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// Builds the HTTP client and the tls-alpn-01 TLS configuration once.
    pub fn new(cfg: ValidationConfig) -> Result<Self> {
        if cfg.timeout.is_zero() {
            return Err(Error::Internal(
                "validation timeout must be positive".into(),
            ));
        }
        if cfg.http_port == 0 || cfg.tls_alpn_port == 0 {
            return Err(Error::Internal(format!(
                "validation ports must be non-zero (http_port {}, tls_alpn_port {})",
                cfg.http_port, cfg.tls_alpn_port
            )));
        }

        let http = reqwest::Client::builder()
            // Redirects are checked and followed by hand, one hop at a time: see the module docs.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would dial for us, and its address is not the one we must prove.
            .no_proxy()
            // A fresh connection per request, so every hop is dialed where we say.
            .pool_max_idle_per_host(0)
            .http1_only()
            // Half the budget per address, so a dead first address leaves time for the next.
            .connect_timeout(cfg.timeout / 2)
            .user_agent(concat!("iiot-acme-va/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AcmeTlsVerifier {
            algorithms: provider.signature_verification_algorithms,
        });
        // > ACME servers that implement "acme-tls/1" MUST only negotiate TLS 1.2 [RFC5246] or
        // > higher when connecting to clients for validation.
        // <https://www.rfc-editor.org/rfc/rfc8737#section-4>
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Internal(format!("cannot build the TLS client config: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // > The ACME server MUST provide an ALPN extension with the single protocol name
        // > "acme-tls/1" […]
        // <https://www.rfc-editor.org/rfc/rfc8737#section-3>
        tls.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        // A resumed session shows no certificate, and the certificate is what we check.
        tls.resumption = Resumption::disabled();

        Ok(Self {
            cfg,
            own: OwnNames::default(),
            http,
            tls: TlsConnector::from(Arc::new(tls)),
            in_flight: Arc::default(),
            shared: None,
            #[cfg(test)]
            lookup: None,
        })
    }

    /// Counts the per-account and per-address limits in `db`, which other CA instances
    /// share, so that together they admit each limit once. `max_in_flight` stays this
    /// instance's own: it bounds the connections and tasks of this process.
    pub fn with_shared_slots(mut self, db: crate::storage::Db) -> Self {
        self.shared = Some(SharedSlots::new(db, self.longest_run()));
        self
    }

    /// The longest a validation can take from its start to its recorded outcome: after that a
    /// challenge still `processing` lost its validation (its instance died), and a slot held
    /// in the store for it has ended.
    pub fn longest_run(&self) -> Duration {
        self.cfg.timeout.saturating_mul(2) + Duration::from_secs(5)
    }

    /// The CA's own names and addresses, which validation never dials.
    pub fn with_own_names(mut self, own: OwnNames) -> Self {
        self.own = own;
        self
    }

    /// A slot for one validation of `account`, asked for from `source`, or `rateLimited` when
    /// `max_in_flight` validations run already, or `max_in_flight_per_account` of this
    /// account's, or `max_in_flight_per_address` started from this address (so many accounts
    /// from one host cannot take every slot). The challenge stays pending and the client may
    /// answer it again after `Retry-After`. With shared slots the account's and the address's
    /// validations are counted at every instance together.
    pub fn admit(&self, account: &str, source: Option<IpAddr>) -> Result<Admission> {
        let mut admission = self.admit_here(account, source)?;
        let Some(slots) = &self.shared else {
            return Ok(admission);
        };
        let mut wanted = vec![(
            SlotKey::Account(account.to_owned()),
            self.cfg.max_in_flight_per_account,
        )];
        if let Some(address) = admission.address {
            wanted.push((
                SlotKey::Address(address),
                self.cfg.max_in_flight_per_address,
            ));
        }
        for (key, cap) in wanted {
            // On refusal, dropping `admission` gives back what it took so far.
            match slots.take(&key, cap)? {
                Ok(id) => admission.shared.push((slots.clone(), key, id)),
                Err(held) => return Err(full(&key, held)),
            }
        }
        Ok(admission)
    }

    /// [`Self::admit`] by this instance's own counts.
    fn admit_here(&self, account: &str, source: Option<IpAddr>) -> Result<Admission> {
        let address = source.map(crate::ratelimit::address_key);
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mine = f.per_account.get(account).copied().unwrap_or(0);
        let from_here = address
            .and_then(|a| f.per_address.get(&a).copied())
            .unwrap_or(0);
        let full = if f.total >= self.cfg.max_in_flight {
            Some(format!(
                "{} validations are running, the most this CA runs at once \
                 (validation.max_in_flight)",
                f.total
            ))
        } else if mine >= self.cfg.max_in_flight_per_account {
            Some(format!(
                "{mine} validations of this account are running, the most one account may \
                 have at once (validation.max_in_flight_per_account)"
            ))
        } else if from_here >= self.cfg.max_in_flight_per_address {
            Some(format!(
                "{from_here} validations asked for from this address are running, the most \
                 one address may have at once (validation.max_in_flight_per_address)"
            ))
        } else {
            None
        };
        if let Some(detail) = full {
            return Err(busy(detail));
        }
        f.total += 1;
        *f.per_account.entry(account.to_owned()).or_default() += 1;
        if let Some(a) = address {
            *f.per_address.entry(a).or_default() += 1;
        }
        Ok(Admission {
            in_flight: Arc::clone(&self.in_flight),
            account: account.to_owned(),
            address,
            shared: Vec::new(),
        })
    }

    /// Why `ip` must not be dialed, if it must not.
    fn refused(&self, ip: IpAddr) -> Option<String> {
        if let Some(why) = refused_address(ip, self.cfg.allow_loopback) {
            return Some(format!("{ip} is {why}"));
        }
        self.own
            .has_address(ip)
            .then(|| format!("{ip} is an address of this CA"))
    }

    /// Runs one validation attempt for `identifier` by challenge `kind`, bounded by
    /// `cfg.timeout` overall. `Ok(())` means the challenge is satisfied.
    #[instrument(skip_all, fields(identifier = %identifier, challenge = %kind))]
    pub async fn validate(
        &self,
        identifier: &Identifier,
        kind: ChallengeType,
        token: &str,
        key_authorization: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + self.cfg.timeout;
        let attempt = async {
            match kind {
                ChallengeType::Http01 => {
                    self.http01(identifier, token, key_authorization, deadline)
                        .await
                }
                ChallengeType::TlsAlpn01 => {
                    self.tls_alpn01(identifier, key_authorization, deadline)
                        .await
                }
                // Answered by the client's payload or by an operator, not by dialing out.
                ChallengeType::DeviceAttest01 | ChallengeType::OperatorApproval01 => Err(
                    Error::Internal(format!("{kind} is not a network validation")),
                ),
            }
        };
        // Each network step has its own deadline with a precise message. This outer one is the
        // backstop that makes the overall bound hold whatever the steps do.
        let result = match timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::Connection(format!(
                "{kind} validation of {identifier} did not finish within {:?}",
                self.cfg.timeout
            ))),
        };
        match &result {
            Ok(()) => debug!("validation succeeded"),
            Err(e) => debug!(error = %e, "validation failed"),
        }
        result
    }

    // ---------------------------------------------------------------------------------------
    // http-01
    // ---------------------------------------------------------------------------------------

    async fn http01(
        &self,
        identifier: &Identifier,
        token: &str,
        key_authorization: &str,
        deadline: Instant,
    ) -> Result<()> {
        // The token goes into a URL path. Tokens are ours, so a bad one is our bug.
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Internal(format!(
                "http-01 token {} is not base64url",
                excerpt(token.as_bytes())
            )));
        }
        let origin = Target::of(identifier)?;
        let host = origin.url_host();
        // > 1. Construct a URL by populating the URL template [RFC6570]
        // >    "http://{domain}/.well-known/acme-challenge/{token}" […]
        // <https://www.rfc-editor.org/rfc/rfc8555#section-8.3>
        let mut url = Url::parse(&format!(
            "http://{host}:{}/.well-known/acme-challenge/{token}",
            self.cfg.http_port
        ))
        .map_err(|e| Error::Internal(format!("cannot build the http-01 URL for {host}: {e}")))?;

        let mut seen = HashSet::from([url.clone()]);
        let mut redirects = 0;
        // Under `same-host`, every hop after the first dials the address that answered the
        // first: a name that resolves elsewhere between two hops (a TTL of 0) cannot steer a
        // redirect to another machine.
        let mut pinned = None;
        // Whether the identifier's own host (or the identifier itself) gave the current URL;
        // a URL another host gave is not shown in details, only its host.
        let mut url_from_origin = true;
        loop {
            let (addr, response) = self.get(&url, deadline, pinned).await?;
            if self.cfg.redirects == Redirects::SameHost {
                pinned = Some(addr.ip());
            }
            let status = response.status();
            let at = if url_from_origin {
                format!("{url} (dialed {addr})")
            } else {
                format!(
                    "a URL on {} that another host redirected to (dialed {addr})",
                    url.host_str().unwrap_or("?")
                )
            };
            let own_host = url.host_str().map(Target::of_url_host).as_ref() == Some(&origin)
                || pinned == Some(addr.ip());

            if is_redirect(status) {
                let next = self.redirect_target(&url, &at, status, &response, own_host)?;
                self.check_redirect_host(&origin, pinned, &at, status, &next)?;
                let shown = if own_host {
                    next.to_string()
                } else {
                    format!("a URL on {}", next.host_str().unwrap_or("?"))
                };
                // > The server SHOULD follow redirects when dereferencing the URL.
                // <https://www.rfc-editor.org/rfc/rfc8555#section-8.3>
                if redirects == MAX_REDIRECTS {
                    return Err(Error::IncorrectResponse(format!(
                        "too many redirects: {at} redirected to {shown} after {MAX_REDIRECTS} \
                         redirects already followed"
                    )));
                }
                if !seen.insert(next.clone()) {
                    return Err(Error::IncorrectResponse(format!(
                        "redirect loop: {at} redirected to {shown}, which was already requested"
                    )));
                }
                debug!(from = %url, to = %next, "following redirect");
                redirects += 1;
                url_from_origin = own_host;
                url = next;
                continue;
            }

            if status != StatusCode::OK {
                return Err(Error::IncorrectResponse(format!(
                    "{at} answered HTTP {status}, expected 200"
                )));
            }
            let body = read_body(response, &at, deadline).await?;
            // > 4. Verify that the body of the response is a well-formed key authorization.
            // >    The server SHOULD ignore whitespace characters at the end of the body.
            // > 5. Verify that key authorization provided by the HTTP server matches the key
            // >    authorization stored by the server.
            // <https://www.rfc-editor.org/rfc/rfc8555#section-8.3>
            // Leading whitespace is forgiven too: see the module docs.
            // The body is never quoted: see the module docs.
            if body.trim_ascii() != key_authorization.as_bytes() {
                return Err(Error::IncorrectResponse(format!(
                    "{at} answered HTTP 200 with a body of {} bytes that is not the key \
                     authorization of this challenge (expected {key_authorization:?})",
                    body.len(),
                )));
            }
            return Ok(());
        }
    }

    /// Sends one GET for `url` to the first address of its host that accepts a connection.
    /// The Host header is the URL's host, whichever address is dialed.
    /// With `pinned`, dials that address instead of resolving the URL's host.
    async fn get(
        &self,
        url: &Url,
        deadline: Instant,
        pinned: Option<IpAddr>,
    ) -> Result<(SocketAddr, reqwest::Response)> {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(Error::Internal(format!("{url} has no host or port")));
        };
        let host_header = HeaderValue::from_str(host)
            .map_err(|e| Error::Internal(format!("host {host:?} is not a header value: {e}")))?;
        let target = match pinned {
            Some(ip) => Target::Ip(ip),
            None => Target::of_url_host(host),
        };
        let addrs = self.resolve(&target, port, deadline).await?;

        let mut refused = Vec::new();
        for addr in addrs {
            let mut dial = url.clone();
            if dial.set_ip_host(addr.ip()).is_err() {
                return Err(Error::Internal(format!("cannot dial {addr} for {url}")));
            }
            let request = self.http.get(dial).header(HOST, host_header.clone());
            match timeout_at(deadline, request.send()).await {
                Ok(Ok(response)) => {
                    debug!(%url, %addr, status = %response.status(), "http-01 response");
                    return Ok((addr, response));
                }
                // Only a failed connect moves on to the next address: once a server has
                // accepted the connection, its answer is the one that counts.
                Ok(Err(e)) if e.is_connect() => refused.push(format!("{addr} ({})", cause(&e))),
                Ok(Err(e)) => {
                    return Err(Error::Connection(format!(
                        "GET {url} (dialed {addr}) failed: {}",
                        cause(&e)
                    )))
                }
                Err(_) => {
                    return Err(Error::Connection(format!(
                        "GET {url} (dialed {addr}) got no response within the {:?} \
                         validation timeout",
                        self.cfg.timeout
                    )))
                }
            }
        }
        Err(Error::Connection(format!(
            "cannot connect to {} for GET {url}",
            refused.join(", ")
        )))
    }

    /// The URL a redirect response points to, if it is one we follow (see the module docs).
    /// `own_host`: whether the identifier's own host sent it, which decides whether a refusal
    /// may quote the `Location`.
    fn redirect_target(
        &self,
        from: &Url,
        at: &str,
        status: StatusCode,
        response: &reqwest::Response,
        own_host: bool,
    ) -> Result<Url> {
        let location = response.headers().get(LOCATION).ok_or_else(|| {
            Error::IncorrectResponse(format!("{at} answered HTTP {status} without a Location"))
        })?;
        let shown = if own_host {
            excerpt(location.as_bytes())
        } else {
            "(not shown: another host sent it)".to_owned()
        };
        let refuse = |why: String| {
            Error::IncorrectResponse(format!(
                "{at} answered HTTP {status} with Location {shown}: {why}"
            ))
        };
        if self.cfg.redirects == Redirects::None {
            return Err(refuse(
                "redirects are not followed (validation.redirects = \"none\")".into(),
            ));
        }
        let location = location
            .to_str()
            .map_err(|_| refuse("not a valid header value".into()))?;
        let mut next = from
            .join(location)
            .map_err(|e| refuse(format!("not a valid URL ({e})")))?;
        next.set_fragment(None);
        // Credentials in a redirect target mean nothing to us; never send them on.
        if next.set_username("").is_err() || next.set_password(None).is_err() {
            return Err(refuse("the URL has no host".into()));
        }
        match next.scheme() {
            "http" => {}
            "https" => {
                return Err(refuse(
                    "redirects to https:// are not followed; serve the key authorization over \
                     plain http"
                        .into(),
                ))
            }
            other => return Err(refuse(format!("scheme {other:?} is not followed"))),
        }
        if next.port_or_known_default() != Some(self.cfg.http_port) {
            return Err(refuse(format!(
                "only redirects to port {} are followed",
                self.cfg.http_port
            )));
        }
        if next.host_str().is_none_or(str::is_empty) {
            return Err(refuse("the URL has no host".into()));
        }
        Ok(next)
    }

    /// Under `redirects = "same-host"`, refuses a redirect to any host but the identifier's:
    /// its name (in any case, with or without a trailing dot) or the address that answered
    /// the first request (`pinned`), which devices' web servers often redirect to.
    fn check_redirect_host(
        &self,
        origin: &Target,
        pinned: Option<IpAddr>,
        at: &str,
        status: StatusCode,
        next: &Url,
    ) -> Result<()> {
        if self.cfg.redirects != Redirects::SameHost {
            return Ok(());
        }
        let bare = |name: &str| name.trim_end_matches('.').to_ascii_lowercase();
        let target = next.host_str().map(Target::of_url_host);
        let same = match (&target, origin) {
            (Some(Target::Name(a)), Target::Name(b)) => bare(a) == bare(b),
            (Some(Target::Ip(a)), _) if pinned == Some(*a) => true,
            (Some(a), b) => a == b,
            (None, _) => false,
        };
        if same {
            return Ok(());
        }
        Err(Error::IncorrectResponse(format!(
            "{at} answered HTTP {status} with a redirect to another host; redirects are \
             followed only to the identifier's own host {} (validation.redirects = \
             \"same-host\")",
            origin.url_host()
        )))
    }

    // ---------------------------------------------------------------------------------------
    // tls-alpn-01
    // ---------------------------------------------------------------------------------------

    async fn tls_alpn01(
        &self,
        identifier: &Identifier,
        key_authorization: &str,
        deadline: Instant,
    ) -> Result<()> {
        let target = Target::of(identifier)?;
        let sni = target.sni()?;
        let addrs = self
            .resolve(&target, self.cfg.tls_alpn_port, deadline)
            .await?;
        let (addr, tcp) = self.connect(&addrs, deadline).await?;
        let at = format!("{addr} (SNI {})", sni.as_ref());

        let handshake = self.tls.connect(ServerName::DnsName(sni.clone()), tcp);
        let tls = match timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(Error::Tls(format!(
                    "TLS handshake with {at} offering ALPN acme-tls/1 failed: {}",
                    chain(&e)
                )))
            }
            Err(_) => {
                return Err(Error::Connection(format!(
                    "TLS handshake with {at} did not finish within the {:?} validation timeout",
                    self.cfg.timeout
                )))
            }
        };
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let leaf = conn
            .peer_certificates()
            .and_then(<[CertificateDer<'static>]>::first)
            .cloned();
        // > Once the handshake is completed, the client MUST NOT exchange any further data
        // > with the server and MUST immediately close the connection.
        // <https://www.rfc-editor.org/rfc/rfc8737#section-4>
        drop(tls);
        debug!(%addr, sni = sni.as_ref(), "tls-alpn-01 handshake completed");

        // > The ACME server verifies that during the TLS handshake the application-layer
        // > protocol "acme-tls/1" was successfully negotiated […]
        // <https://www.rfc-editor.org/rfc/rfc8737#section-3>
        if alpn.as_deref() != Some(ACME_TLS_ALPN) {
            return Err(Error::IncorrectResponse(format!(
                "{at} negotiated ALPN {}, expected \"acme-tls/1\"",
                alpn.as_deref().map_or_else(|| "none".to_owned(), excerpt)
            )));
        }
        let Some(leaf) = leaf else {
            return Err(Error::IncorrectResponse(format!(
                "{at} presented no certificate"
            )));
        };
        check_challenge_certificate(&leaf, &target, key_authorization, &at)
    }

    /// Opens a TCP connection to the first of `addrs` that accepts one.
    async fn connect(
        &self,
        addrs: &[SocketAddr],
        deadline: Instant,
    ) -> Result<(SocketAddr, TcpStream)> {
        let mut refused = Vec::new();
        for &addr in addrs {
            // Same per-address share of the budget as the HTTP client's connect timeout.
            let attempt = deadline.min(Instant::now() + self.cfg.timeout / 2);
            match timeout_at(attempt, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    // Nagle only delays a handshake made of small flights.
                    let _ = tcp.set_nodelay(true);
                    return Ok((addr, tcp));
                }
                Ok(Err(e)) => refused.push(format!("{addr} ({e})")),
                Err(_) => refused.push(format!("{addr} (no answer to the TCP connect)")),
            }
        }
        Err(Error::Connection(format!(
            "cannot connect to {}",
            refused.join(", ")
        )))
    }

    // ---------------------------------------------------------------------------------------
    // Shared
    // ---------------------------------------------------------------------------------------

    /// The socket addresses to try for `target`, in order.
    async fn resolve(
        &self,
        target: &Target,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>> {
        let name = match target {
            // > To use IP identifiers with these challenges, their initial DNS resolution step
            // > MUST be skipped, and the IP address used for validation MUST be the value of
            // > the identifier.
            // <https://www.rfc-editor.org/rfc/rfc8738#section-4>
            Target::Ip(ip) => {
                if let Some(why) = self.refused(*ip) {
                    return Err(Error::Connection(format!("not dialing {why}")));
                }
                return Ok(vec![SocketAddr::new(*ip, port)]);
            }
            Target::Name(name) => name,
        };
        #[cfg(test)]
        if let Some(lookup) = &self.lookup {
            let ip = lookup(name);
            if let Some(why) = self.refused(ip) {
                return Err(Error::Dns(format!("{name}: {why}")));
            }
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(ip) = self.cfg.lab_resolve_all_to {
            debug!(%name, %ip, "lab_resolve_all_to set: dialing the lab address instead of resolving");
            if let Some(why) = self.refused(ip) {
                return Err(Error::Dns(format!(
                    "{name} resolves (validation.lab_resolve_all_to) to an address this CA \
                     does not dial: {why}"
                )));
            }
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let found = timeout_at(deadline, tokio::net::lookup_host((name.as_str(), port)))
            .await
            .map_err(|_| {
                Error::Dns(format!(
                    "no answer resolving {name} within the {:?} validation timeout",
                    self.cfg.timeout
                ))
            })?
            .map_err(|e| Error::Dns(format!("cannot resolve {name}: {e}")))?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut refused = Vec::new();
        for addr in found {
            if let Some(why) = self.refused(addr.ip()) {
                if !refused.contains(&why) {
                    refused.push(why);
                }
            } else if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() && !refused.is_empty() {
            return Err(Error::Dns(format!(
                "{name} resolves only to addresses this CA does not dial: {}",
                refused.join("; ")
            )));
        }
        if addrs.is_empty() {
            return Err(Error::Dns(format!("{name} has no addresses")));
        }
        debug!(%name, ?addrs, "resolved");
        Ok(addrs)
    }
}

/// What a validation dials: a name to resolve or an address to use as is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A DNS name, resolved before dialing.
    Name(String),
    /// An address, dialed directly.
    Ip(IpAddr),
}

impl Target {
    /// The target of an identifier. Identifiers are normalized when the order is created, so
    /// a value that does not parse here is our bug, not the client's.
    fn of(identifier: &Identifier) -> Result<Self> {
        let value = identifier.value.as_str();
        match identifier.kind {
            IdentifierType::Ip => value.parse().map(Self::Ip).map_err(|_| {
                Error::Internal(format!("ip identifier {value:?} is not an IP address"))
            }),
            IdentifierType::PermanentIdentifier => Err(Error::Internal(format!(
                "permanent-identifier {value:?} cannot be validated over the network"
            ))),
            IdentifierType::Dns => {
                // http-01 and tls-alpn-01 cannot validate a wildcard. An authorization for one
                // carries the base name, so "*" here means the caller skipped normalization.
                if value.contains('*')
                    || value.parse::<IpAddr>().is_ok()
                    || DnsName::try_from(value).is_err()
                {
                    return Err(Error::Internal(format!(
                        "dns identifier {value:?} is not a host name"
                    )));
                }
                Ok(Self::Name(value.to_owned()))
            }
        }
    }

    /// The target of a host taken from a parsed URL (`Url::host_str`, IPv6 in brackets).
    fn of_url_host(host: &str) -> Self {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse() {
            Ok(ip) => Self::Ip(ip),
            Err(_) => Self::Name(host.to_owned()),
        }
    }

    /// The host as it appears in a URL and a Host header.
    fn url_host(&self) -> String {
        // > For the "http-01" challenge, the Host header field MUST be set to the IP address
        // > being used for validation per [RFC7230].
        // <https://www.rfc-editor.org/rfc/rfc8738#section-5>
        // RFC 7230 §5.4 writes an IPv6 host in brackets, as in a URL.
        match self {
            Self::Name(name) => name.clone(),
            Self::Ip(IpAddr::V4(v4)) => v4.to_string(),
            Self::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
        }
    }

    /// The SNI name for tls-alpn-01.
    fn sni(&self) -> Result<DnsName<'static>> {
        let name = match self {
            Self::Name(name) => name.clone(),
            // > As [RFC6066] does not permit IP addresses to be used in the SNI extension
            // > HostName field, the server MUST instead use the IN-ADDR.ARPA [RFC1034] or
            // > IP6.ARPA [RFC3596] reverse mapping of the IP address as the HostName field
            // > value instead of the IP address string representation itself.
            // <https://www.rfc-editor.org/rfc/rfc8738#section-6>
            Self::Ip(ip) => crate::wire::reverse_dns_name(*ip),
        };
        DnsName::try_from(name)
            .map_err(|e| Error::Internal(format!("cannot use {self:?} as a TLS SNI name: {e}")))
    }
}

/// The refusal of the tls-alpn-01 certificate `at` (the address and SNI) presented: `why`
/// ends the sentence "certificate from {at} ".
fn bad_certificate(at: &str, why: impl fmt::Display) -> Error {
    Error::IncorrectResponse(format!("certificate from {at} {why}"))
}

/// Checks the tls-alpn-01 certificate presented `at` (the address and SNI) against the target
/// and the key authorization.
fn check_challenge_certificate(
    der: &CertificateDer<'_>,
    target: &Target,
    key_authorization: &str,
    at: &str,
) -> Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad_certificate(at, format!("cannot be parsed: {e}")))?;

    // > The subjectAlternativeName extension MUST contain a single dNSName entry where the
    // > value is the domain name being validated.
    // <https://www.rfc-editor.org/rfc/rfc8737#section-3>
    // > For the "tls-alpn-01" challenge, the subjectAltName extension in the validation
    // > certificate MUST contain a single iPAddress that matches the address being validated.
    // <https://www.rfc-editor.org/rfc/rfc8738#section-6>
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad_certificate(at, format!("has an unusable subjectAltName extension: {e}")))?
        .ok_or_else(|| bad_certificate(at, "has no subjectAltName extension"))?;
    let names = &san.value.general_names;
    let shown = || {
        names
            .iter()
            .map(describe_general_name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let [only] = names.as_slice() else {
        return Err(bad_certificate(
            at,
            format!(
                "has {} subjectAltName entries ({}), expected exactly one for {}",
                names.len(),
                shown(),
                target.url_host()
            ),
        ));
    };
    let matches = match (target, only) {
        // > The comparison of dNSNames MUST be case insensitive [RFC4343].
        // <https://www.rfc-editor.org/rfc/rfc8737#section-3>
        (Target::Name(name), GeneralName::DNSName(dns)) => dns.eq_ignore_ascii_case(name),
        (Target::Ip(IpAddr::V4(v4)), GeneralName::IPAddress(bytes)) => *bytes == v4.octets(),
        (Target::Ip(IpAddr::V6(v6)), GeneralName::IPAddress(bytes)) => *bytes == v6.octets(),
        _ => false,
    };
    if !matches {
        let expected = match target {
            Target::Name(name) => format!("dNSName {name:?}"),
            Target::Ip(ip) => format!("iPAddress {ip}"),
        };
        return Err(bad_certificate(
            at,
            format!("names {}, expected {expected}", shown()),
        ));
    }

    check_acme_identifier(&cert, key_authorization, at)
}

/// Checks the acmeIdentifier extension of the certificate presented `at`.
fn check_acme_identifier(
    cert: &X509Certificate<'_>,
    key_authorization: &str,
    at: &str,
) -> Result<()> {
    let mut found = cert
        .extensions()
        .iter()
        .filter(|ext| ext.oid.as_bytes() == ID_PE_ACME_IDENTIFIER);
    let ext = found.next().ok_or_else(|| {
        bad_certificate(at, "has no acmeIdentifier extension (1.3.6.1.5.5.7.1.31)")
    })?;
    if found.next().is_some() {
        return Err(bad_certificate(
            at,
            "has more than one acmeIdentifier extension",
        ));
    }
    // > The acmeIdentifier extension MUST be critical so that the certificate isn't
    // > inadvertently used by non-ACME software.
    // <https://www.rfc-editor.org/rfc/rfc8737#section-3>
    if !ext.critical {
        return Err(bad_certificate(
            at,
            "has an acmeIdentifier extension that is not marked critical",
        ));
    }
    // > The extnValue of the id-pe-acmeIdentifier extension is the ASN.1 DER encoding
    // > [X.690] of the Authorization structure, which contains the SHA-256 digest of the
    // > key authorization for the challenge.
    // <https://www.rfc-editor.org/rfc/rfc8737#section-3>
    // Authorization ::= OCTET STRING (SIZE (32)), so the DER is 04 20 followed by the digest.
    let expected = crate::wire::acme_identifier_value(key_authorization);
    let received = match ext.value {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        other => {
            return Err(bad_certificate(
                at,
                format!(
                    "has a malformed acmeIdentifier extension: expected a DER OCTET STRING of 32 \
                 bytes, got {} bytes starting {}",
                    other.len(),
                    hex::encode(other.get(..4).unwrap_or(other))
                ),
            ))
        }
    };
    if ext.value != expected {
        return Err(bad_certificate(
            at,
            format!(
                "has acmeIdentifier {}, expected SHA-256 of the key authorization {}",
                hex::encode(received),
                hex::encode(&expected[2..])
            ),
        ));
    }
    Ok(())
}

/// A SAN entry as an operator would want to read it.
fn describe_general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => format!("dNSName {}", excerpt(dns.as_bytes())),
        GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
            Ok(v4) => format!("iPAddress {}", IpAddr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(*bytes) {
                Ok(v6) => format!("iPAddress {}", IpAddr::from(v6)),
                Err(_) => format!("iPAddress of {} bytes", bytes.len()),
            },
        },
        other => excerpt(other.to_string().as_bytes()),
    }
}

/// Accepts any server certificate but checks the handshake signature against it.
///
/// A tls-alpn-01 certificate is self-signed by design, and its content is checked after the
/// handshake (`check_challenge_certificate`). The handshake signature proves the peer holds
/// the private key of the certificate it shows.
#[derive(Debug)]
struct AcmeTlsVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcmeTlsVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // > While this protocol uses X.509 certificates, it does not use the authentication
        // > method described in [RFC5280] and, as such, does not require a valid signature on
        // > the provided certificate […]
        // <https://www.rfc-editor.org/rfc/rfc8737#section-4>
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(message, cert, dss, &self.algorithms, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(message, cert, dss, &self.algorithms, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies a TLS handshake signature with the public key of `cert`. It does the same as
/// `rustls::crypto::verify_tls1{2,3}_signature`, but reads the key with x509-parser, because
/// webpki refuses certificates with the critical acmeIdentifier extension.
fn verify_handshake_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
    tls13: bool,
) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    let bad_encoding = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|_| bad_encoding())?;
    let spki = &parsed.tbs_certificate.subject_pki;
    if tls13 {
        let spki = SubjectPublicKeyInfoDer::from(spki.raw);
        return rustls::crypto::verify_tls13_signature_with_raw_key(
            message, &spki, dss, algorithms,
        );
    }

    // TLS 1.2 has no raw-key helper in rustls. Its ECDSA schemes leave the curve open, so as
    // rustls does, try each algorithm of the scheme whose key type is the certificate's.
    let candidates = algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, algs)| *algs)
        .ok_or(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
    // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT
    // STRING }. The provider's algorithms name their key type by the DER contents of the
    // AlgorithmIdentifier SEQUENCE, so take those bytes as they are.
    let (_, outer) = Any::from_der(spki.raw).map_err(|_| bad_encoding())?;
    let (_, key_type) = Any::from_der(outer.data).map_err(|_| bad_encoding())?;
    if spki.subject_public_key.unused_bits != 0 {
        return Err(bad_encoding());
    }
    let public_key: &[u8] = &spki.subject_public_key.data;
    let alg = candidates
        .iter()
        .find(|alg| alg.public_key_alg_id().as_ref() == key_type.data)
        .ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ))?;
    alg.verify_signature(public_key, message, dss.signature())
        .map(|()| HandshakeSignatureValid::assertion())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))
}

/// Statuses followed as redirects (RFC 9110 §15.4).
fn is_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

/// Reads at most [`MAX_BODY_BYTES`] of a response body.
async fn read_body(
    mut response: reqwest::Response,
    at: &str,
    deadline: Instant,
) -> Result<Vec<u8>> {
    let too_big = |size: String| {
        Error::IncorrectResponse(format!(
            "{at} sent a body of {size} bytes; at most {MAX_BODY_BYTES} are accepted"
        ))
    };
    if let Some(len) = response.content_length() {
        if len > MAX_BODY_BYTES as u64 {
            return Err(too_big(len.to_string()));
        }
    }
    let mut body = Vec::new();
    loop {
        let chunk = timeout_at(deadline, response.chunk())
            .await
            .map_err(|_| {
                Error::Connection(format!(
                    "{at} did not finish its body within the validation timeout"
                ))
            })?
            .map_err(|e| {
                Error::Connection(format!("reading the body from {at} failed: {}", cause(&e)))
            })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_big(format!("more than {MAX_BODY_BYTES}")));
        }
        body.extend_from_slice(&chunk);
    }
}

/// Peer-supplied bytes for an error detail: lossily decoded, quoted and escaped, and cut
/// after [`EXCERPT_CHARS`] characters.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

/// What went wrong in a reqwest error. Its own message only repeats the URL we dialed, so
/// start from its cause.
fn cause(error: &reqwest::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => chain(source),
        None => chain(error),
    }
}

/// An error and its causes on one line ("a: b: c"), skipping a cause already quoted by the
/// message before it, and cut to a few hundred characters.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    match out.char_indices().nth(CHAIN_CHARS) {
        Some((cut, _)) => format!("{}…", &out[..cut]),
        None => out,
    }
}

/// Challenge validation settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Port dialed for http-01 (RFC 8555 §8.3 says 80; a lab may use e.g. 5002).
    pub http_port: u16,
    /// Port dialed for tls-alpn-01 (RFC 8737 says 443; a lab may use e.g. 5001).
    pub tls_alpn_port: u16,
    /// Overall timeout of one validation attempt.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub timeout: Duration,
    /// Which http-01 redirects are followed (`va` module docs).
    pub redirects: Redirects,
    /// LAB/TEST ONLY: let validation dial loopback addresses (127.0.0.0/8, ::1), and accept
    /// `ip` identifiers and CA names that are loopback. Off by default; the server logs a
    /// warning at start when it is on.
    pub allow_loopback: bool,
    /// Most validations (http-01, tls-alpn-01) running at once; a challenge answered beyond
    /// it gets `rateLimited` and stays pending.
    pub max_in_flight: usize,
    /// Most validations running at once for one account.
    pub max_in_flight_per_account: usize,
    /// Most validations running at once that were asked for from one source address (an
    /// IPv6 /64 counts as one).
    pub max_in_flight_per_address: usize,
    /// LAB/TEST ONLY: resolve every `dns` identifier to this address instead of asking DNS.
    /// Off by default; the server logs a warning at start when it is set.
    pub lab_resolve_all_to: Option<IpAddr>,
    /// LAB/BENCHMARK ONLY: every http-01 and tls-alpn-01 challenge passes without dialing out
    /// (as Pebble's PEBBLE_VA_ALWAYS_VALID), so a benchmark measures the CA, not the network.
    /// Off by default; the server logs a warning at start when it is on.
    pub lab_always_valid: bool,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            http_port: 80,
            tls_alpn_port: 443,
            timeout: Duration::from_secs(10),
            redirects: Redirects::default(),
            allow_loopback: false,
            max_in_flight: 256,
            max_in_flight_per_account: 8,
            max_in_flight_per_address: 32,
            lab_resolve_all_to: None,
            lab_always_valid: false,
        }
    }
}

/// Which redirects http-01 validation follows (`[validation] redirects`). The scheme and port
/// rules apply in every mode: only `http://` on `http_port`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Redirects {
    /// Only to the identifier's own host (the default).
    #[default]
    SameHost,
    /// To any host the validator may dial.
    Any,
    /// None: a redirect fails the challenge.
    None,
}

#[cfg(test)]
mod tests;
