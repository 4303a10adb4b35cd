//! External account binding (RFC 8555 §7.3.4): operator-issued enrollment credentials.
//!
//! A credential may carry an allow-list of identifiers (SPEC §6.6): an account bound with it then
//! gets already-valid authorizations for those identifiers (pre-authorization, no challenge)
//! and is refused everything else. It may also limit how many accounts it binds.
//!
//! With the embedded store a credential is a file `<data_dir>/eab/<kid>.json` (mode 0600)
//! written atomically by the `ca-server eab` commands, so an operator can create or revoke
//! credentials while the server runs (sled locks its database to one process). With a store
//! that several CA instances share (PostgreSQL), credentials are records of that store
//! ([`Table::Credentials`]), which the commands reach through the CA's configuration, so every
//! instance honours every credential. Whether a single-use credential has been spent is
//! recorded in the store with compare-and-swap, so two racing newAccount requests cannot both
//! use it.

use std::path::{Path, PathBuf};

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fsutil::{ensure_private_dir, json_file_stems, read_json, write_atomic};
use crate::jose::Flattened;
use crate::jose::Parsed;
use crate::jwk;
use crate::types::now;
use std::net::IpAddr;

use crate::key::PublicKey;
use crate::storage::{Db, Table};
use crate::types::{Identifier, IdentifierType};
use crate::{Error, Result};

/// An operator-issued credential.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credential {
    /// Key identifier the client puts in the EAB `kid`.
    pub kid: String,
    /// The MAC key, base64url.
    pub hmac_key: String,
    /// Unix time of creation.
    pub created: i64,
    /// Unix time after which the credential binds no new accounts.
    pub expires: Option<i64>,
    /// How many accounts it may bind; `None` is unlimited.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// Identifiers pre-authorized for accounts bound with it; empty means none (the account
    /// proves its identifiers by challenges as usual).
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// Set by `ca-server eab revoke`.
    #[serde(default)]
    pub revoked: bool,
    /// The Modbus/TCP Security role granted to accounts bound with it (`modbus` profile,
    /// SPEC §8.3): operator policy, never the device's request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Why an enrollment credential no longer vouches for an account ([`Credential::standing`]), or
/// why an allow rule cannot be read ([`AllowRule::parse`]); `Display` is the reason, which
/// refusals quote and the command line prints.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EabError(String);

impl Credential {
    /// Whether the credential still vouches for the account `account_id` it bound: it is not
    /// revoked, not expired, and its uses include that account. What it grants (pre-authorized
    /// identifiers, a Modbus role) holds only while it stands. `Err` says why it does not.
    pub fn standing(&self, db: &Db, account_id: &str) -> std::result::Result<(), EabError> {
        if self.revoked {
            return Err(EabError(format!(
                "enrollment credential {} was revoked",
                self.kid
            )));
        }
        if let Some(at) = self.expires.filter(|e| now() > *e) {
            return Err(EabError(format!(
                "enrollment credential {} expired at {}",
                self.kid,
                crate::types::rfc3339(at)
            )));
        }
        let usage = db
            .get::<Usage>(Table::EabUsage, &self.kid)
            .map_err(|e| {
                EabError(format!(
                    "cannot read the uses of credential {}: {e}",
                    self.kid
                ))
            })?
            .unwrap_or_default();
        let position = usage.accounts.iter().position(|a| a == account_id);
        match (position, self.max_uses) {
            (Some(i), Some(max)) if i >= max as usize => Err(EabError(format!(
                "enrollment credential {} is used up: this account is beyond its {max} \
                 allowed account(s)",
                self.kid
            ))),
            (Some(_), _) => Ok(()),
            (None, _) => Err(EabError(format!(
                "enrollment credential {} has no use recorded for this account",
                self.kid
            ))),
        }
    }
}

/// What the store remembers about a credential's use.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    /// The accounts it bound, in order.
    pub accounts: Vec<String>,
    /// When it was last used.
    pub last_used: i64,
}

/// One entry of a credential's allow-list, written `serial:VALUE`, `dns:NAME` or `ip:CIDR`.
///
/// - `serial:SN-0042` matches the `permanent-identifier` `SN-0042` exactly, octet for octet;
/// - `dns:plant.example` matches `plant.example` and every name below it;
/// - `ip:10.20.0.0/16` matches addresses in the prefix; a bare address matches itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowRule {
    /// An exact `permanent-identifier` value.
    Serial(String),
    /// A DNS name and its subdomains (stored lower-case, without trailing dot).
    DnsSuffix(String),
    /// An IP prefix.
    IpPrefix(IpAddr, u8),
}

impl AllowRule {
    /// Parses the textual form.
    pub fn parse(text: &str) -> std::result::Result<Self, EabError> {
        let usage = || {
            EabError(format!(
                "allow rule {text:?} must be serial:VALUE, dns:NAME or ip:CIDR"
            ))
        };
        let (kind, value) = text.split_once(':').ok_or_else(usage)?;
        match kind {
            "serial" if !value.is_empty() => Ok(Self::Serial(value.to_owned())),
            "dns" => {
                let name = value.trim_start_matches('.').to_ascii_lowercase();
                let id = crate::wire::normalize_identifier(&Identifier::dns(name))
                    .map_err(|e| EabError(format!("allow rule {text:?}: {e}")))?;
                Ok(Self::DnsSuffix(id.value))
            }
            "ip" => {
                let (addr, len) = match value.split_once('/') {
                    Some((a, l)) => (a, Some(l)),
                    None => (value, None),
                };
                let addr: IpAddr = addr.parse().map_err(|_| {
                    EabError(format!(
                        "allow rule {text:?}: {addr:?} is not an IP address"
                    ))
                })?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let len = match len {
                    Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                        EabError(format!(
                            "allow rule {text:?}: prefix length must be 0-{max}"
                        ))
                    })?,
                    None => max,
                };
                Ok(Self::IpPrefix(addr, len))
            }
            _ => Err(usage()),
        }
    }

    /// Whether the rule covers `id` (already normalised by `order::normalize_identifier`).
    pub fn matches(&self, id: &Identifier) -> bool {
        match (self, id.kind) {
            (Self::Serial(s), IdentifierType::PermanentIdentifier) => *s == id.value,
            (Self::DnsSuffix(suffix), IdentifierType::Dns) => {
                id.value == *suffix
                    || id
                        .value
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            (Self::IpPrefix(net, len), IdentifierType::Ip) => id
                .value
                .parse::<IpAddr>()
                .is_ok_and(|addr| crate::ratelimit::in_prefix(addr, *net, *len)),
            _ => false,
        }
    }
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Serial(s) => write!(f, "serial:{s}"),
            Self::DnsSuffix(d) => write!(f, "dns:{d}"),
            Self::IpPrefix(a, l) => write!(f, "ip:{a}/{l}"),
        }
    }
}

impl Serialize for AllowRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AllowRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Refuses allow rules that cover one of the CA's own names (`policy`): a credential must
/// never pre-authorize a certificate that would impersonate the CA to its devices. newOrder
/// refuses those names anyway; this catches the operator's mistake when it is made.
pub fn check_rules(rules: &[AllowRule], own: &crate::va::policy::OwnNames) -> Result<()> {
    for rule in rules {
        let covered: Vec<String> = own
            .covered_by(|id| rule.matches(id))
            .map(ToString::to_string)
            .collect();
        if !covered.is_empty() {
            return Err(Error::Malformed(format!(
                "allow rule {rule} covers {}, which this CA serves as: a certificate for it \
                 would let its holder impersonate the CA to every device; use narrower rules",
                covered.join(", ")
            )));
        }
    }
    Ok(())
}

/// What `ca-server eab create` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewCredential {
    /// Lifetime for binding new accounts.
    pub expires_in: Option<std::time::Duration>,
    /// Accounts it may bind.
    pub max_uses: Option<u32>,
    /// Pre-authorized identifiers.
    pub allow: Vec<AllowRule>,
    /// Modbus role for certificates of the `modbus` profile.
    pub role: Option<String>,
}

/// Where credentials are kept: the credential directory, or the shared store.
pub struct EabStore {
    dir: PathBuf,
    /// The store shared by several CA instances; `None`: files in `dir`.
    shared: Option<Db>,
}

/// Key ids are ours (base64url), so anything else cannot name a credential of ours.
fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl EabStore {
    /// Credentials live in `<data_dir>/eab`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("eab"),
            shared: None,
        }
    }

    /// Credentials live in `db`, which several CA instances share. Credential files found in
    /// `<data_dir>/eab` (made before the CA moved to the shared store) are copied into it once;
    /// a credential already in the store is kept as it is there.
    pub fn in_store(data_dir: &Path, db: Db) -> Result<Self> {
        let files = Self::new(data_dir);
        let imported = files
            .list()?
            .into_iter()
            .map(|c| db.insert_new(Table::Credentials, &c.kid, &c))
            .collect::<Result<Vec<bool>>>()?
            .into_iter()
            .filter(|new| *new)
            .count();
        if imported > 0 {
            tracing::info!(imported, dir = %files.dir.display(), "enrollment credential files copied into the shared store; the store's copy is the one in force from now on");
        }
        Ok(Self {
            shared: Some(db),
            ..files
        })
    }

    fn path(&self, kid: &str) -> Option<PathBuf> {
        valid_kid(kid).then(|| self.dir.join(format!("{kid}.json")))
    }

    /// Creates and stores a new credential.
    pub fn create(&self, new: &NewCredential) -> Result<Credential> {
        let mut kid = [0u8; 12];
        let mut key = [0u8; 32];
        let rng = ring::rand::SystemRandom::new();
        ring::rand::SecureRandom::fill(&rng, &mut kid)
            .and_then(|()| ring::rand::SecureRandom::fill(&rng, &mut key))
            .map_err(|_| Error::Internal("system RNG failed".into()))?;
        let created = now();
        let cred = Credential {
            kid: crate::wire::b64u(kid),
            hmac_key: crate::wire::b64u(key),
            created,
            expires: new
                .expires_in
                .map(|d| created.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
            max_uses: new.max_uses,
            allow: new.allow.clone(),
            revoked: false,
            role: new.role.clone(),
        };
        self.write(&cred)?;
        Ok(cred)
    }

    fn write(&self, cred: &Credential) -> Result<()> {
        if let Some(db) = &self.shared {
            if !valid_kid(&cred.kid) {
                return Err(Error::Internal("invalid key id".into()));
            }
            return db.put(Table::Credentials, &cred.kid, cred);
        }
        let path = self
            .path(&cred.kid)
            .ok_or_else(|| Error::Internal("invalid key id".into()))?;
        let data = serde_json::to_vec_pretty(cred)
            .map_err(|e| Error::Internal(format!("cannot encode credential: {e}")))?;
        ensure_private_dir(&self.dir)?;
        write_atomic(&path, &data, 0o600)
    }

    /// Loads one credential.
    pub fn get(&self, kid: &str) -> Result<Option<Credential>> {
        if let Some(db) = &self.shared {
            return if valid_kid(kid) {
                db.get(Table::Credentials, kid)
            } else {
                Ok(None)
            };
        }
        match self.path(kid) {
            Some(path) => read_json(&path, "EAB credential"),
            None => Ok(None),
        }
    }

    /// All credentials, sorted by creation time.
    pub fn list(&self) -> Result<Vec<Credential>> {
        if let Some(db) = &self.shared {
            let mut out: Vec<Credential> = db.values_with_prefix(Table::Credentials, "")?;
            out.sort_by_key(|c| c.created);
            return Ok(out);
        }
        let mut out = Vec::new();
        for kid in json_file_stems(&self.dir)? {
            if let Some(c) = self.get(&kid)? {
                out.push(c);
            }
        }
        out.sort_by_key(|c| c.created);
        Ok(out)
    }

    /// Marks a credential revoked; `Ok(false)` if there is no such credential.
    pub fn revoke(&self, kid: &str) -> Result<bool> {
        let Some(mut cred) = self.get(kid)? else {
            return Ok(false);
        };
        if let Some(db) = &self.shared {
            db.update(Table::Credentials, kid, |mut c: Credential| {
                c.revoked = true;
                Ok(c)
            })?;
            return Ok(true);
        }
        cred.revoked = true;
        self.write(&cred)?;
        Ok(true)
    }

    /// Checks the `externalAccountBinding` of a newAccount request and returns its key id.
    ///
    /// > The "externalAccountBinding" field … MUST be a JWS … with "alg" a MAC-based algorithm,
    /// > "kid" the key identifier provided by the CA, and "url" the same as the outer JWS; the
    /// > "nonce" field MUST NOT be present; the payload MUST be the account key (jwk).
    ///
    /// <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4>
    pub fn verify(
        &self,
        binding: &Value,
        outer_url: &str,
        account_key: &PublicKey,
    ) -> Result<Credential> {
        let flat: Flattened = serde_json::from_value(binding.clone()).map_err(|e| {
            Error::Malformed(format!(
                "externalAccountBinding is not a flattened JWS: {e}"
            ))
        })?;
        let jws = Parsed::from_flattened(&flat)?;
        let alg = match jws.header_str("alg")? {
            Some("HS256") => hmac::HMAC_SHA256,
            Some("HS384") => hmac::HMAC_SHA384,
            Some("HS512") => hmac::HMAC_SHA512,
            Some(other) => {
                return Err(Error::Malformed(format!(
                    "externalAccountBinding alg {other:?} is not HS256, HS384 or HS512"
                )))
            }
            None => return Err(Error::Malformed("externalAccountBinding has no alg".into())),
        };
        if jws.header.contains_key("nonce") {
            return Err(Error::Malformed(
                "externalAccountBinding must not contain a nonce".into(),
            ));
        }
        if jws.header_str("url")? != Some(outer_url) {
            return Err(Error::Unauthorized(
                "externalAccountBinding url does not match the request URL".into(),
            ));
        }
        let kid = jws
            .header_str("kid")?
            .ok_or_else(|| Error::Malformed("externalAccountBinding has no kid".into()))?;
        let cred = self
            .get(kid)?
            .ok_or_else(|| Error::Unauthorized(format!("unknown EAB key id {kid:?}")))?;
        let key = crate::wire::b64u_decode("EAB HMAC key", &cred.hmac_key)
            .map_err(|_| Error::Internal(format!("EAB credential {kid} has a bad key")))?;
        hmac::verify(
            &hmac::Key::new(alg, &key),
            &jws.signing_input,
            &jws.signature,
        )
        .map_err(|_| {
            Error::Unauthorized("externalAccountBinding signature does not verify".into())
        })?;
        let bound: Value = jws.json()?;
        if jwk::parse(&bound)? != *account_key {
            return Err(Error::Unauthorized(
                "externalAccountBinding payload is not the account key".into(),
            ));
        }
        if cred.revoked {
            return Err(Error::Unauthorized(format!(
                "EAB credential {kid} was revoked"
            )));
        }
        if cred.expires.is_some_and(|e| now() > e) {
            return Err(Error::Unauthorized(format!(
                "EAB credential {kid} has expired"
            )));
        }
        Ok(cred)
    }

    /// Records that `cred` bound `account_id`, atomically refusing a credential whose use
    /// count is spent (two racing newAccount requests cannot both take the last use).
    pub fn spend(&self, db: &Db, cred: &Credential, account_id: &str) -> Result<()> {
        let at = now();
        let first = Usage {
            accounts: vec![account_id.to_owned()],
            last_used: at,
        };
        if cred.max_uses != Some(0) && db.insert_new(Table::EabUsage, &cred.kid, &first)? {
            return Ok(());
        }
        db.update(Table::EabUsage, &cred.kid, |mut u: Usage| {
            if let Some(max) = cred.max_uses {
                if u.accounts.len() >= max as usize {
                    return Err(Error::Unauthorized(format!(
                        "EAB credential {} was already used by its {max} allowed account(s)",
                        cred.kid
                    )));
                }
            }
            u.accounts.push(account_id.to_owned());
            u.last_used = at;
            Ok(u)
        })
        .map(|_| ())
    }

    /// Gives back the use of `kid` that `account_id` took, for an account that was never
    /// created after all (another instance registered the same key first).
    pub fn give_back(&self, db: &Db, kid: &str, account_id: &str) -> Result<()> {
        match db.update(Table::EabUsage, kid, |mut u: Usage| {
            u.accounts.retain(|a| a != account_id);
            Ok(u)
        }) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// How many accounts a credential has bound so far.
    pub fn uses(&self, db: &Db, kid: &str) -> Result<usize> {
        Ok(db
            .get::<Usage>(Table::EabUsage, kid)?
            .map_or(0, |u| u.accounts.len()))
    }
}
