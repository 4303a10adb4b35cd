//! The enrollment state machine: one RFC 8555 flow from the directory to the certificate, by
//! whichever path the server's authorizations allow (SPEC §5.1): pre-authorized by an
//! allow-listed credential (§6.6), device-attest-01 (§5.10) or operator-approval-01 (§5.8).
//!
//! The caller alternates [`Enrollment::next_request`] (writes a request into its transmit
//! buffer) and [`Enrollment::handle_response`] (reads the response from its receive buffer)
//! until [`Event::Issued`], waiting where an [`Event`] says so.

use core::ops::Range;

use crate::attest::{self, IdevidSigner};
use crate::http::{self, Response};
use crate::json::{self, Value};
use crate::jws::{self, KeyRef, Url};
use crate::key::{AccountKey, CertificateKey, PairingCode};
use crate::text::{Text, Texts, Writer};
use crate::{csr, Error, ProblemKind};

/// Most identifiers (and so authorizations) one enrollment handles.
pub const MAX_AUTHORIZATIONS: usize = 4;

/// Longest server path the client stores. ACME paths of this server are under 60 octets.
const PATH_MAX: usize = 128;

/// The server paths the client keeps, in one store (ca-server's come to under 400 octets with
/// four authorizations); indexes below.
type Paths = Texts<512, { AUTHZ + MAX_AUTHORIZATIONS }, PATH_MAX>;
const NEW_NONCE: usize = 0;
const NEW_ACCOUNT: usize = 1;
const NEW_ORDER: usize = 2;
const KID: usize = 3;
const ORDER: usize = 4;
const FINALIZE: usize = 5;
const CERTIFICATE: usize = 6;
const CHALLENGE: usize = 7;
/// The first of the authorizations.
const AUTHZ: usize = 8;

/// Longest `https://host:port` origin.
const ORIGIN_MAX: usize = 96;

/// Nonces of this server are 22-43 characters; RFC 8555 sets no limit, so leave room.
const NONCE_MAX: usize = 96;

/// A key authorization: a token of up to 64 characters (`token`), a dot and a 43-character
/// thumbprint.
const KEY_AUTHORIZATION_MAX: usize = 128;

/// Retries of one request after `badNonce` (SPEC §3.5 asks for one; a busy server may need
/// more).
const NONCE_RETRIES: u8 = 3;
/// Rate-limited answers (SPEC §7.6) waited out in a row before the client gives up.
const RATE_LIMIT_RETRIES: u8 = 8;

/// Polling interval when the server gives no `Retry-After`, and the ceiling on the ones it does.
const DEFAULT_WAIT: u32 = 2;
const MAX_WAIT: u32 = 3600;

/// An identifier to enroll (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identifier<'a> {
    Dns(&'a str),
    Ip(&'a str),
    /// `serial[/assignerOID]` (SPEC §4.5).
    Permanent(&'a str),
}

impl Identifier<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Self::Dns(_) => "dns",
            Self::Ip(_) => "ip",
            Self::Permanent(_) => "permanent-identifier",
        }
    }

    fn value(&self) -> &str {
        match self {
            Self::Dns(v) | Self::Ip(v) | Self::Permanent(v) => v,
        }
    }

    /// Checks the identifier as the server will (SPEC §4). The client never rewrites it, so a
    /// value must already be in the form the server stores: a DNS name in lowercase A-labels,
    /// an IP address in its canonical text.
    // Out of line (as next_request below): 22 octets smaller in the firmware.
    #[inline(never)]
    pub fn validate(&self) -> Result<(), Error> {
        use protocol_spec::identifier as id;
        match *self {
            Self::Dns(v) => {
                let mut out = [0u8; id::DNS_NAME_MAX];
                match id::normalize_dns(v, &mut out) {
                    // The server compares normalised names, so send the name as it will be
                    // compared: a differently written name would fail finalize (SPEC §7.4).
                    Ok(n) if n == v => Ok(()),
                    _ => Err(Error::Config("dns identifier not in normal form")),
                }
            }
            Self::Ip(v) => id::check_ip(v)
                .map(|_| ())
                .map_err(|_| Error::Config("ip identifier")),
            Self::Permanent(v) => id::check_permanent_identifier(v)
                .map(|_| ())
                .map_err(|_| Error::Config("permanent-identifier")),
        }
    }
}

/// An operator-issued external account binding credential (SPEC §6.2).
#[derive(Clone, Copy, Debug)]
pub struct Eab<'a> {
    /// The key identifier.
    pub kid: &'a str,
    /// The HMAC key, base64url as `ca-server eab create` prints it.
    pub hmac_key: &'a str,
}

/// What to enroll, and how.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    /// `https://host[:port]`, no path (SPEC §2.1).
    pub base_url: &'a str,
    /// 1 to [`MAX_AUTHORIZATIONS`] identifiers; all of them go into the CSR.
    pub identifiers: &'a [Identifier<'a>],
    pub eab: Option<Eab<'a>>,
    /// A certificate profile from the directory's `meta.profiles` (SPEC §8.3).
    pub profile: Option<&'a str>,
    /// Renewal: the ARI certificate ID (RFC 9773 §4.1, see [`crate::renewal::cert_id`]) of the
    /// certificate this one replaces. Dropped and retried without if the server answers
    /// `alreadyReplaced`.
    pub replaces: Option<&'a str>,
    /// Sent as `termsOfServiceAgreed` when the operator configured terms (SPEC §6.1).
    pub terms_of_service_agreed: bool,
}

/// What the caller does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Call [`Enrollment::next_request`] now.
    Continue,
    /// Wait this many seconds (the server's `Retry-After`), then call
    /// [`Enrollment::next_request`].
    Wait { seconds: u32 },
    /// An operator must approve this device (SPEC §5.8): show `code` (display, log, serial
    /// console), wait `seconds`, then call [`Enrollment::next_request`] to poll. The code
    /// belongs to this request (SPEC §5.9): each authorization, and each enrollment, has its own.
    AwaitingApproval { code: PairingCode, seconds: u32 },
    /// Done. The PEM certificate chain (end entity first) is `rx[pem]` of the buffer just passed
    /// to [`Enrollment::handle_response`]; persist it before reusing the buffer.
    Issued { pem: Range<usize> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Directory,
    Account,
    Order,
    /// Read authorization `authz_index` and choose its challenge.
    Authorization,
    /// Respond to the chosen challenge.
    Answer,
    /// Poll the authorization until its challenge is decided.
    PollAuthorization,
    Finalize,
    PollOrder,
    Download,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Challenge {
    DeviceAttest,
    OperatorApproval,
}

/// One enrollment, from the directory to the certificate.
pub struct Enrollment<'a> {
    cfg: Config<'a>,
    account: &'a AccountKey,
    cert_key: &'a CertificateKey,
    signer: Option<&'a mut dyn IdevidSigner>,
    state: State,
    /// A `newNonce` request is out instead of the state's own.
    fetching_nonce: bool,
    nonce_retries: u8,
    rate_limited: u8,
    replaces: Option<&'a str>,
    /// EAB is required and none is configured: newAccount may only find an existing account.
    only_existing: bool,
    nonce: Text<NONCE_MAX>,
    paths: Paths,
    authz_count: usize,
    authz_index: usize,
    challenge_type: Challenge,
    token: Text<64>,
}

impl<'a> Enrollment<'a> {
    /// Checks `cfg` and prepares the flow. `account` and `cert_key` are the device's keys (the
    /// certificate key must differ from the account key, SPEC §7.4). `signer` gives access to
    /// the IDevID for device-attest-01; without it only the other paths work.
    pub fn new(
        cfg: Config<'a>,
        account: &'a AccountKey,
        cert_key: &'a CertificateKey,
        signer: Option<&'a mut dyn IdevidSigner>,
    ) -> Result<Self, Error> {
        let rest = cfg
            .base_url
            .strip_prefix("https://")
            .ok_or(Error::Config("base URL must be https://host[:port]"))?;
        if rest.is_empty()
            || rest
                .bytes()
                .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b' '))
        {
            return Err(Error::Config("base URL must be https://host[:port]"));
        }
        if cfg.identifiers.is_empty() || cfg.identifiers.len() > MAX_AUTHORIZATIONS {
            return Err(Error::Config("1 to 4 identifiers"));
        }
        for id in cfg.identifiers {
            id.validate()?;
        }
        if account.key().to_bytes() == cert_key.to_bytes() {
            return Err(Error::Config("certificate key equals the account key"));
        }
        // The key must decode into account_payload's 64-octet buffer.
        if let Some(eab) = cfg.eab {
            match protocol_spec::base64url::validate(eab.hmac_key) {
                Ok(len) if len <= 64 => {}
                _ => return Err(Error::Config("EAB HMAC key is not base64url")),
            }
        }
        // The origin goes into the request head (http::HEADROOM).
        if cfg.base_url.len() > ORIGIN_MAX {
            return Err(Error::Config("base URL too long"));
        }
        Ok(Self {
            cfg,
            account,
            cert_key,
            signer,
            state: State::Directory,
            fetching_nonce: false,
            nonce_retries: 0,
            rate_limited: 0,
            replaces: cfg.replaces,
            only_existing: false,
            nonce: Text::new(),
            paths: Texts::new(),
            authz_count: 0,
            authz_index: 0,
            challenge_type: Challenge::OperatorApproval,
            token: Text::new(),
        })
    }

    /// The pairing code of the approval this enrollment is waiting for (SPEC §5.9), from the
    /// account key and the operator-approval-01 challenge's token. `None` before an
    /// operator-approval-01 challenge has been chosen, and between authorizations: the code
    /// exists only once the server has created the request's token.
    pub fn pairing_code(&self) -> Option<PairingCode> {
        if self.challenge_type != Challenge::OperatorApproval
            || !matches!(self.state, State::Answer | State::PollAuthorization)
        {
            return None;
        }
        self.account.pairing_code(self.token.as_str()).ok()
    }

    /// Whether the certificate has been delivered.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn host(&self) -> &str {
        self.cfg
            .base_url
            .get("https://".len()..)
            .unwrap_or_default()
    }

    /// Writes the next request into `tx` and returns its length. `scratch` is working space
    /// while the request is built (the receive buffer can serve: it is free at this point).
    // Not inlined (nor `handle_response`, `on_directory`, `account_payload`): each has one
    // caller, so LLVM inlines it at opt-level "z", and the merged function spills so much that
    // the firmware grows by about 1.7 KiB in all (scripts/embedded-footprint.sh).
    #[inline(never)]
    pub fn next_request(&mut self, tx: &mut [u8], scratch: &mut [u8]) -> Result<usize, Error> {
        if self.state == State::Done {
            return Err(Error::UnexpectedCall);
        }
        if self.state == State::Directory {
            return http::get(tx, self.host(), "/directory");
        }
        if self.nonce.is_empty() {
            self.fetching_nonce = true;
            return http::get(tx, self.host(), self.paths.get(NEW_NONCE));
        }
        self.fetching_nonce = false;
        let (path, payload_len) = match self.state {
            State::Account => (NEW_ACCOUNT, self.account_payload(scratch)?),
            State::Order => (NEW_ORDER, self.order_payload(scratch)?),
            State::Authorization | State::PollAuthorization => (AUTHZ + self.authz_index, 0),
            State::Answer => (CHALLENGE, self.answer_payload(scratch)?),
            State::Finalize => (FINALIZE, self.finalize_payload(scratch)?),
            State::PollOrder => (ORDER, 0),
            State::Download => (CERTIFICATE, 0),
            State::Directory | State::Done => return Err(Error::UnexpectedCall),
        };
        let (payload, header) = split(scratch, payload_len)?;
        let key_ref = if self.state == State::Account {
            KeyRef::Jwk
        } else {
            KeyRef::Kid(Url {
                origin: self.cfg.base_url,
                path: self.paths.get(KID),
            })
        };
        let path = self.paths.get(path);
        let url = Url {
            origin: self.cfg.base_url,
            path,
        };
        let body_len = jws::write(
            tx,
            header,
            self.account,
            key_ref,
            self.nonce.as_str(),
            url,
            payload,
        )?;
        // Each nonce is single-use (SPEC §3.5): the response brings the next one.
        self.nonce.clear();
        http::post_jose(tx, self.host(), path, body_len)
    }

    #[inline(never)]
    fn account_payload(&self, scratch: &mut [u8]) -> Result<usize, Error> {
        // What the EAB signs (key, header, JWK) goes into `scratch` after the payload's room
        // rather than into arrays on the stack. The payload is under 900 octets: the header is
        // at most 384 (jws::eab), so its base64url 512, and the JWK's 171.
        const PAYLOAD_ROOM: usize = 1024;
        let room = if self.cfg.eab.is_some() {
            64 + jws::EAB_SCRATCH
        } else {
            0
        };
        let split = scratch.len().saturating_sub(room).min(PAYLOAD_ROOM);
        let (out, eab_scratch) = scratch
            .split_at_mut_checked(split)
            .ok_or(Error::BufferTooSmall { needed: room })?;
        let mut w = Writer::new(out);
        w.byte(b'{');
        let mut first = true;
        if self.only_existing {
            w.str("\"onlyReturnExisting\":true");
            first = false;
        }
        if self.cfg.terms_of_service_agreed {
            if !first {
                w.byte(b',');
            }
            w.str("\"termsOfServiceAgreed\":true");
            first = false;
        }
        if let Some(eab) = self.cfg.eab {
            if !first {
                w.byte(b',');
            }
            let (key, eab_scratch) = eab_scratch
                .split_at_mut_checked(64)
                .ok_or(Error::BufferTooSmall { needed: room })?;
            let key = protocol_spec::base64url::decode(eab.hmac_key, key)
                .map_err(|_| Error::Config("EAB HMAC key is not base64url"))?;
            w.str("\"externalAccountBinding\":");
            let url = Url {
                origin: self.cfg.base_url,
                path: self.paths.get(NEW_ACCOUNT),
            };
            jws::eab(&mut w, self.account, eab.kid, key, url, eab_scratch)?;
        }
        w.byte(b'}');
        w.finish()
    }

    // Out of line: 38 octets smaller in the firmware.
    #[inline(never)]
    fn order_payload(&self, scratch: &mut [u8]) -> Result<usize, Error> {
        let mut w = Writer::new(scratch);
        w.str("{\"identifiers\":[");
        for (i, id) in self.cfg.identifiers.iter().enumerate() {
            if i > 0 {
                w.byte(b',');
            }
            w.str("{\"type\":\"");
            w.str(id.type_name());
            w.str("\",\"value\":\"");
            w.json_str(id.value());
            w.str("\"}");
        }
        w.byte(b']');
        for (name, value) in [("profile", self.cfg.profile), ("replaces", self.replaces)] {
            if let Some(v) = value {
                w.str(",\"");
                w.str(name);
                w.str("\":\"");
                w.json_str(v);
                w.byte(b'"');
            }
        }
        w.byte(b'}');
        w.finish()
    }

    /// The challenge response. It is written after whatever the payload needs first (the
    /// attestation object), so the payload is moved to the front of `scratch` at the end.
    // Kept out of next_request: 48 octets smaller in the firmware (footprint script).
    #[inline(never)]
    fn answer_payload(&mut self, scratch: &mut [u8]) -> Result<usize, Error> {
        match self.challenge_type {
            Challenge::OperatorApproval => {
                let mut w = Writer::new(scratch);
                w.str("{}");
                w.finish()
            }
            Challenge::DeviceAttest => {
                let signer = self.signer.as_deref_mut().ok_or(Error::NoUsableChallenge)?;
                // The key authorization goes at the end of `scratch`, out of the way of the
                // attestation object, rather than in an array on the stack.
                let (out, ka) = scratch
                    .split_at_mut_checked(scratch.len().saturating_sub(KEY_AUTHORIZATION_MAX))
                    .ok_or(Error::BufferTooSmall {
                        needed: KEY_AUTHORIZATION_MAX,
                    })?;
                let ka = protocol_spec::challenge::key_authorization(
                    self.token.as_str(),
                    self.account.thumbprint(),
                    ka,
                )
                .map_err(|_| Error::BadJson("challenge token"))?;
                let cbor_len = attest::attestation_object(signer, ka, out)?;
                base64url_member(scratch, cbor_len, "{\"attObj\":\"")
            }
        }
    }

    // Out of line: 8 octets smaller in the firmware.
    #[inline(never)]
    fn finalize_payload(&self, scratch: &mut [u8]) -> Result<usize, Error> {
        let der_len = csr::build(self.cert_key, self.cfg.identifiers, scratch)?;
        base64url_member(scratch, der_len, "{\"csr\":\"")
    }

    /// Reads the complete response (see [`http::framing`]) to the last request. `rx` is `mut`
    /// because a chunked body is decoded in place.
    #[inline(never)]
    pub fn handle_response(&mut self, rx: &mut [u8]) -> Result<Event, Error> {
        if self.state == State::Done {
            return Err(Error::UnexpectedCall);
        }
        let resp = http::parse(rx)?;
        // Every response carries the next nonce (SPEC §3.1), errors included.
        if let Some(n) = resp.header("replay-nonce") {
            // One too long to keep is dropped (the next request then asks for a fresh one).
            if !n.is_empty()
                && protocol_spec::base64url::validate(n).is_ok()
                && self.nonce.set(n).is_err()
            {
                self.nonce.clear();
            }
        }
        if self.fetching_nonce {
            self.fetching_nonce = false;
            if !matches!(resp.status, 200 | 204) {
                return Err(Error::UnexpectedStatus(resp.status));
            }
            if self.nonce.is_empty() {
                return Err(Error::Http("newNonce without Replay-Nonce"));
            }
            return Ok(Event::Continue);
        }
        if resp.status >= 400 {
            return self.on_problem(&resp);
        }
        self.nonce_retries = 0;
        self.rate_limited = 0;
        match self.state {
            State::Account => return self.on_account(&resp),
            State::Order => return self.on_new_order(&resp),
            State::Download => return self.on_certificate(&resp),
            State::Done => return Err(Error::UnexpectedCall),
            _ => {}
        }
        // Every other step answers 200 with a JSON object.
        expect_status(&resp, 200)?;
        let body = json_body(&resp)?;
        match self.state {
            State::Directory => self.on_directory(body),
            State::Authorization => self.on_authorization(&resp, body),
            // The challenge (Answer) or its authorization (PollAuthorization).
            State::Answer | State::PollAuthorization => {
                let answer = self.state == State::Answer;
                match (Status::of(body), answer) {
                    (Status::Valid, _) => Ok(self.next_authorization()),
                    (Status::Invalid, true) => Err(Error::AuthorizationFailed(error_kind(body))),
                    (
                        Status::Invalid | Status::Deactivated | Status::Expired | Status::Revoked,
                        false,
                    ) => Err(Error::AuthorizationFailed(authz_error_kind(body))),
                    (Status::Pending | Status::Processing, true) | (Status::Pending, false) => {
                        self.state = State::PollAuthorization;
                        Ok(self.wait(&resp))
                    }
                    (_, true) => Err(Error::BadJson("challenge status")),
                    (_, false) => Err(Error::BadJson("authorization status")),
                }
            }
            _ => self.on_order(&resp, body), // Finalize, PollOrder
        }
    }

    fn on_new_order(&mut self, resp: &Response<'_>) -> Result<Event, Error> {
        expect_status(resp, 201)?;
        set_path(
            &mut self.paths,
            ORDER,
            self.cfg.base_url,
            resp.header("location").ok_or(Error::Http("no Location"))?,
        )?;
        let body = json_body(resp)?;
        let finalize = body.get_str("finalize").ok_or(Error::BadJson("finalize"))?;
        set_path(&mut self.paths, FINALIZE, self.cfg.base_url, finalize)?;
        self.authz_count = 0;
        for item in body
            .get("authorizations")
            .ok_or(Error::BadJson("authorizations"))?
            .items()
        {
            let Value::Str(s) = item else {
                return Err(Error::BadJson("authorizations"));
            };
            let url = s.plain().ok_or(Error::BadJson("authorizations"))?;
            if self.authz_count >= MAX_AUTHORIZATIONS {
                return Err(Error::TooManyAuthorizations);
            }
            set_path(
                &mut self.paths,
                AUTHZ + self.authz_count,
                self.cfg.base_url,
                url,
            )?;
            self.authz_count += 1;
        }
        self.authz_index = 0;
        self.on_order(resp, body)
    }

    fn on_certificate(&mut self, resp: &Response<'_>) -> Result<Event, Error> {
        expect_status(resp, 200)?;
        if resp.content_type() != Some("application/pem-certificate-chain") {
            return Err(Error::WrongContentType);
        }
        if !resp.body.starts_with(b"-----BEGIN CERTIFICATE-----") {
            return Err(Error::BadJson("certificate chain is not PEM"));
        }
        self.state = State::Done;
        let start = resp.body_offset;
        Ok(Event::Issued {
            pem: start..start + resp.body.len(),
        })
    }

    fn on_problem(&mut self, resp: &Response<'_>) -> Result<Event, Error> {
        let kind = if resp.content_type() == Some("application/problem+json") {
            json::parse(resp.body)
                .ok()
                .and_then(|v| v.get_str("type"))
                .map_or(ProblemKind::Other, ProblemKind::from_type)
        } else {
            return Err(Error::UnexpectedStatus(resp.status));
        };
        match kind {
            // SPEC §3.5: retry with the nonce this response carried.
            ProblemKind::BadNonce if !self.nonce.is_empty() => {
                self.nonce_retries += 1;
                if self.nonce_retries > NONCE_RETRIES {
                    return Err(Error::NonceRetriesExhausted);
                }
                Ok(Event::Continue)
            }
            ProblemKind::AccountDoesNotExist if self.only_existing => Err(Error::EabRequired),
            // SPEC §7.6: wait at least Retry-After, then send the same request again (the state
            // is unchanged, and this response carried the next nonce).
            ProblemKind::RateLimited if self.rate_limited < RATE_LIMIT_RETRIES => {
                self.rate_limited += 1;
                let seconds = resp
                    .retry_after()
                    .unwrap_or(DEFAULT_WAIT)
                    .clamp(1, MAX_WAIT);
                Ok(Event::Wait { seconds })
            }
            // RFC 9773 §5: the old certificate was already replaced; a plain order still works.
            ProblemKind::AlreadyReplaced
                if self.state == State::Order && self.replaces.is_some() =>
            {
                self.replaces = None;
                Ok(Event::Continue)
            }
            _ => Err(Error::Problem {
                kind,
                status: resp.status,
            }),
        }
    }

    #[inline(never)]
    fn on_directory(&mut self, dir: Value<'_>) -> Result<Event, Error> {
        let url = |name: &'static str| dir.get_str(name).ok_or(Error::BadJson(name));
        let base = self.cfg.base_url;
        set_path(&mut self.paths, NEW_NONCE, base, url("newNonce")?)?;
        set_path(&mut self.paths, NEW_ACCOUNT, base, url("newAccount")?)?;
        set_path(&mut self.paths, NEW_ORDER, base, url("newOrder")?)?;
        let eab_required = matches!(
            dir.get("meta")
                .and_then(|m| m.get("externalAccountRequired")),
            Some(Value::Bool(true))
        );
        // Without a credential, only an existing account (a renewing device) can go on: ask
        // for it with onlyReturnExisting instead of trying to create one that must fail.
        self.only_existing = eab_required && self.cfg.eab.is_none();
        self.state = State::Account;
        Ok(Event::Continue)
    }

    fn on_account(&mut self, resp: &Response<'_>) -> Result<Event, Error> {
        if !matches!(resp.status, 200 | 201) {
            return Err(Error::UnexpectedStatus(resp.status));
        }
        set_path(
            &mut self.paths,
            KID,
            self.cfg.base_url,
            resp.header("location").ok_or(Error::Http("no Location"))?,
        )?;
        let body = json_body(resp)?;
        if Status::of(body) != Status::Valid {
            return Err(Error::Problem {
                kind: ProblemKind::Unauthorized,
                status: resp.status,
            });
        }
        self.state = State::Order;
        Ok(Event::Continue)
    }

    fn on_order(&mut self, resp: &Response<'_>, body: Value<'_>) -> Result<Event, Error> {
        match Status::of(body) {
            Status::Pending if self.state == State::Order => {
                self.state = State::Authorization;
                Ok(Event::Continue)
            }
            Status::Ready if matches!(self.state, State::Order | State::PollOrder) => {
                self.state = State::Finalize;
                Ok(Event::Continue)
            }
            Status::Processing => {
                self.state = State::PollOrder;
                Ok(self.wait(resp))
            }
            Status::Valid => {
                let url = body
                    .get_str("certificate")
                    .ok_or(Error::BadJson("certificate"))?;
                set_path(&mut self.paths, CERTIFICATE, self.cfg.base_url, url)?;
                self.state = State::Download;
                Ok(Event::Continue)
            }
            Status::Invalid => Err(Error::OrderFailed(error_kind(body))),
            _ => Err(Error::BadJson("order status")),
        }
    }

    fn on_authorization(&mut self, resp: &Response<'_>, body: Value<'_>) -> Result<Event, Error> {
        match Status::of(body) {
            Status::Valid => return Ok(self.next_authorization()),
            Status::Pending => {}
            Status::Invalid | Status::Deactivated | Status::Expired | Status::Revoked => {
                return Err(Error::AuthorizationFailed(authz_error_kind(body)))
            }
            _ => return Err(Error::BadJson("authorization status")),
        }
        let permanent =
            body.get("identifier").and_then(|i| i.get_str("type")) == Some("permanent-identifier");
        let mut chosen = None;
        for c in body
            .get("challenges")
            .ok_or(Error::BadJson("challenges"))?
            .items()
        {
            let kind = match c.get_str("type") {
                Some("device-attest-01") if permanent && self.signer.is_some() => {
                    Challenge::DeviceAttest
                }
                Some("operator-approval-01") => Challenge::OperatorApproval,
                _ => continue,
            };
            // Attestation proves more than an operator's word: prefer it when both are offered.
            if chosen.is_none() || kind == Challenge::DeviceAttest {
                chosen = Some((kind, c));
            }
        }
        let (kind, c) = chosen.ok_or(Error::NoUsableChallenge)?;
        self.challenge_type = kind;
        set_path(
            &mut self.paths,
            CHALLENGE,
            self.cfg.base_url,
            c.get_str("url").ok_or(Error::BadJson("challenge url"))?,
        )?;
        let token = c
            .get_str("token")
            .filter(|t| protocol_spec::challenge::check_token(t).is_ok())
            .ok_or(Error::BadJson("challenge token"))?;
        self.token
            .set(token)
            .map_err(|_| Error::BadJson("challenge token"))?;
        match Status::of(c) {
            Status::Pending => {
                self.state = State::Answer;
                Ok(Event::Continue)
            }
            // Triggered before (e.g. by this device before a reboot): keep polling.
            Status::Processing => {
                self.state = State::PollAuthorization;
                Ok(self.wait(resp))
            }
            _ => Err(Error::BadJson("challenge status")),
        }
    }

    fn next_authorization(&mut self) -> Event {
        self.authz_index += 1;
        self.state = if self.authz_index < self.authz_count {
            State::Authorization
        } else {
            State::Finalize
        };
        Event::Continue
    }

    fn wait(&self, resp: &Response<'_>) -> Event {
        let seconds = resp
            .retry_after()
            .unwrap_or(DEFAULT_WAIT)
            .clamp(1, MAX_WAIT);
        match self.pairing_code() {
            // The token was checked when the challenge was chosen, so the code exists.
            Some(code) if self.state == State::PollAuthorization => {
                Event::AwaitingApproval { code, seconds }
            }
            _ => Event::Wait { seconds },
        }
    }
}

/// Stores the path of `url` as path `i` when it is on `origin` (SPEC §2.1: every URL comes
/// from the server, and a device talks to no other host); on error the paths are left as they
/// were.
fn set_path(paths: &mut Paths, i: usize, origin: &str, url: &str) -> Result<(), Error> {
    let path = url.strip_prefix(origin).ok_or(Error::BadUrl)?;
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Error::BadUrl);
    }
    paths.set(i, path).map_err(|_| Error::BadUrl)
}

fn split(scratch: &mut [u8], at: usize) -> Result<(&[u8], &mut [u8]), Error> {
    let (a, b) = scratch
        .split_at_mut_checked(at)
        .ok_or(Error::BufferTooSmall { needed: at })?;
    Ok((a, b))
}

/// The payload `{"<member>":"<base64url of scratch[..len]>"}`, for binary content built at the
/// front of `scratch`. `open` is `{"<member>":"`. Encoded in place, from the last group of
/// three octets to the first: the text of group g starts at `open.len() + 4g`, past the end of
/// the octets of groups up to g as long as `open` is 3 or more characters, so no octet is
/// overwritten before it is read, and the binary needs no room beside its text (the
/// attestation object is over a kilobyte).
fn base64url_member(scratch: &mut [u8], len: usize, open: &str) -> Result<usize, Error> {
    let at = open.len();
    let text = protocol_spec::base64url::encoded_len(len);
    let end = at + text + 2;
    if end > scratch.len() || at < 3 || len > scratch.len() {
        return Err(Error::BufferTooSmall { needed: end });
    }
    for g in (0..len.div_ceil(3)).rev() {
        let octets = scratch.get(3 * g..len.min(3 * g + 3)).unwrap_or_default();
        let mut group = [0u8; 3];
        let group = group.get_mut(..octets.len()).unwrap_or_default();
        group.copy_from_slice(octets);
        let dst = scratch.get_mut(at + 4 * g..).unwrap_or_default();
        let _ = protocol_spec::base64url::encode(group, dst);
    }
    if let Some(dst) = scratch.get_mut(..at) {
        dst.copy_from_slice(open.as_bytes());
    }
    if let Some(dst) = scratch.get_mut(at + text..end) {
        dst.copy_from_slice(b"\"}");
    }
    Ok(end)
}

fn expect_status(resp: &Response<'_>, want: u16) -> Result<(), Error> {
    if resp.status == want {
        Ok(())
    } else {
        Err(Error::UnexpectedStatus(resp.status))
    }
}

fn json_body<'r>(resp: &Response<'r>) -> Result<Value<'r>, Error> {
    if resp.content_type() != Some("application/json") {
        return Err(Error::WrongContentType);
    }
    match json::parse(resp.body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(Error::BadJson("body is not a JSON object")),
    }
}

/// An object's `status` member (RFC 8555 §7.1.6), as far as the client tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
    Deactivated,
    Expired,
    Revoked,
    /// Missing, or not a status of RFC 8555.
    Other,
}

impl Status {
    /// One table walk rather than a string comparison per `match` arm in every handler.
    fn of(obj: Value<'_>) -> Self {
        const NAMES: &str = "pending;ready;processing;valid;invalid;deactivated;expired;revoked";
        const STATUSES: [Status; 8] = [
            Status::Pending,
            Status::Ready,
            Status::Processing,
            Status::Valid,
            Status::Invalid,
            Status::Deactivated,
            Status::Expired,
            Status::Revoked,
        ];
        obj.get_str("status")
            .and_then(|s| crate::error::position_in(NAMES, s))
            .and_then(|i| STATUSES.get(i).copied())
            .unwrap_or(Self::Other)
    }
}

/// The problem type of an object's `error` member.
fn error_kind(obj: Value<'_>) -> ProblemKind {
    obj.get("error")
        .and_then(|e| e.get_str("type"))
        .map_or(ProblemKind::Other, ProblemKind::from_type)
}

/// The error of an invalid authorization: that of its failed challenge.
fn authz_error_kind(authz: Value<'_>) -> ProblemKind {
    let Some(challenges) = authz.get("challenges") else {
        return ProblemKind::Other;
    };
    challenges
        .items()
        .find(|c| c.get("error").is_some())
        .map_or(ProblemKind::Other, error_kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_member_encodes_in_place() {
        let mut scratch = [0u8; 64];
        let mut binary = [0u8; 20];
        for (i, b) in binary.iter_mut().enumerate() {
            *b = (i * 37 + 5) as u8;
        }
        for len in 0..=binary.len() {
            for open in ["{\"csr\":\"", "{\"attObj\":\""] {
                scratch.fill(0xee);
                scratch[..len].copy_from_slice(&binary[..len]);
                let n = base64url_member(&mut scratch, len, open).expect("fits");
                let mut expected = [0u8; 64];
                let mut w = Writer::new(&mut expected);
                w.str(open);
                w.base64url(&binary[..len]);
                w.str("\"}");
                let m = w.finish().expect("fits");
                assert_eq!(&scratch[..n], &expected[..m], "{len} octets, {open}");
            }
        }
        assert!(base64url_member(&mut scratch, 48, "{\"csr\":\"").is_err());
    }

    #[test]
    fn statuses_are_read_by_name() {
        let expect = [
            ("pending", Status::Pending),
            ("ready", Status::Ready),
            ("processing", Status::Processing),
            ("valid", Status::Valid),
            ("invalid", Status::Invalid),
            ("deactivated", Status::Deactivated),
            ("expired", Status::Expired),
            ("revoked", Status::Revoked),
            ("Valid", Status::Other),
            ("", Status::Other),
            ("valid;", Status::Other),
        ];
        let mut doc = [0u8; 64];
        for (name, status) in expect {
            let mut w = Writer::new(&mut doc);
            w.str("{\"status\":\"");
            w.str(name);
            w.str("\"}");
            let n = w.finish().expect("fits");
            let body = json::parse(&doc[..n]).expect("json");
            assert_eq!(Status::of(body), status, "{name:?}");
        }
        let body = json::parse(b"{\"status\":1}").expect("json");
        assert_eq!(Status::of(body), Status::Other);
    }
}
