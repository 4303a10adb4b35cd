//! External account binding (RFC 8555 §7.3.4): operator-issued credentials and their check.
//!
//! A credential is a file `<data_dir>/eab/<kid>.json` (mode 0600) written atomically by the
//! `ca-server eab` commands, so an operator can create or revoke credentials while the server
//! runs (sled locks its database to one process). Whether a single-use credential has been
//! spent is recorded in the store with compare-and-swap, so two racing newAccount requests
//! cannot both use it.

use std::fs;
use std::path::{Path, PathBuf};

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::now;
use crate::fsutil::{ensure_private_dir, write_atomic};
use crate::jwk;
use crate::jws::{Flattened, Parsed};
use crate::key::PublicKey;
use crate::storage::{Db, Table};
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
    /// Unix time after which the credential is refused.
    pub expires: Option<i64>,
    /// Whether one successful binding spends it.
    pub single_use: bool,
    /// Set by `ca-server eab revoke`.
    #[serde(default)]
    pub revoked: bool,
}

/// What the store remembers about a credential's use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Usage {
    /// The account it bound.
    pub account_id: String,
    /// When.
    pub at: i64,
}

/// The credential directory.
pub struct EabStore {
    dir: PathBuf,
}

impl EabStore {
    /// Credentials live in `<data_dir>/eab`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("eab"),
        }
    }

    fn path(&self, kid: &str) -> Option<PathBuf> {
        // Key ids are ours (base64url), so anything else cannot name a file of ours.
        let ok = !kid.is_empty()
            && kid.len() <= 64
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| self.dir.join(format!("{kid}.json")))
    }

    /// Creates and stores a new credential.
    pub fn create(
        &self,
        expires_in: Option<std::time::Duration>,
        single_use: bool,
    ) -> Result<Credential> {
        let mut kid = [0u8; 12];
        let mut key = [0u8; 32];
        let rng = ring::rand::SystemRandom::new();
        ring::rand::SecureRandom::fill(&rng, &mut kid)
            .and_then(|()| ring::rand::SecureRandom::fill(&rng, &mut key))
            .map_err(|_| Error::Internal("system RNG failed".into()))?;
        let created = now();
        let cred = Credential {
            kid: jwk::b64u(kid),
            hmac_key: jwk::b64u(key),
            created,
            expires: expires_in
                .map(|d| created.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
            single_use,
            revoked: false,
        };
        self.write(&cred)?;
        Ok(cred)
    }

    fn write(&self, cred: &Credential) -> Result<()> {
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
        let Some(path) = self.path(kid) else {
            return Ok(None);
        };
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::Internal(format!("corrupt EAB credential {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// All credentials, sorted by creation time.
    pub fn list(&self) -> Result<Vec<Credential>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot list {}: {e}",
                    self.dir.display()
                )))
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(kid) = name.strip_suffix(".json") {
                if let Some(c) = self.get(kid)? {
                    out.push(c);
                }
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
        let key = jwk::b64u_decode("EAB HMAC key", &cred.hmac_key)
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

    /// Records that `cred` bound `account_id`. For a single-use credential this fails if it was
    /// spent already, atomically.
    pub fn spend(&self, db: &Db, cred: &Credential, account_id: &str) -> Result<()> {
        let usage = Usage {
            account_id: account_id.to_owned(),
            at: now(),
        };
        if cred.single_use {
            if !db.insert_new(Table::EabUsage, &cred.kid, &usage)? {
                return Err(Error::Unauthorized(format!(
                    "EAB credential {} is single-use and was already used",
                    cred.kid
                )));
            }
        } else {
            db.put(Table::EabUsage, &cred.kid, &usage)?;
        }
        Ok(())
    }
}
