//! Configuration: a TOML file and command-line flags with the same names, merged (flags win),
//! then checked once into typed [`Settings`].
//!
//! Unknown keys are refused (`deny_unknown_fields`), so a typo never silently falls back to a
//! default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::attest::Idevid;
use crate::enroll::{EabCredential, Enrollment};
use crate::error::Error;
use crate::key::KeyAlgorithm;
use crate::output::{der_paths, OpcuaPki, Outputs, Pkcs12Output};
use crate::pkcs11::{self, Pkcs11Uri};
use crate::schedule::{parse_duration, Backoff};
use crate::trust::TrustAnchor;
use crate::types::Identifier;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/iiot-device-client";
/// Default http-01 listen address: every address, IPv6 and IPv4, port 80 (RFC 8555 §8.3);
/// `0.0.0.0:80` on a host without IPv6 ([`crate::http01::listen`]).
pub const DEFAULT_HTTP01_LISTEN: &str = "[::]:80";
/// Default tls-alpn-01 listen address: every address, IPv6 and IPv4, port 443 (RFC 8737 §3);
/// `0.0.0.0:443` on a host without IPv6.
pub const DEFAULT_TLS_ALPN01_LISTEN: &str = "[::]:443";
/// Default renewal point: two thirds of the lifetime.
pub const DEFAULT_RENEW_AT: f64 = 2.0 / 3.0;

/// The configuration as written: every field optional, so a file and flags can be merged.
/// See `device-client --help` and device-client/README.md ("Usage") for what each means.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// ACME directory URL (`https://…/directory`).
    pub directory_url: Option<String>,
    /// Root certificate file (PEM or DER) to pin.
    pub root_cert: Option<PathBuf>,
    /// Root certificate SHA-256 fingerprint to pin.
    pub root_fingerprint: Option<String>,
    /// `dns` identifiers.
    pub dns: Option<Vec<String>>,
    /// `ip` identifiers.
    pub ip: Option<Vec<String>>,
    /// `permanent-identifier` identifiers (SPEC §4.5): `SERIAL` or `SERIAL/ASSIGNER-OID`.
    pub permanent_id: Option<Vec<String>>,
    /// Where the certificate key goes (PKCS #8 PEM, mode 0600), or a `pkcs11:` URI (RFC 7512)
    /// naming it in a token.
    pub key: Option<PathBuf>,
    /// Where the certificate goes (PEM, leaf only).
    pub cert: Option<PathBuf>,
    /// Where the issuer chain goes (PEM, intermediates).
    pub chain: Option<PathBuf>,
    /// Where leaf and chain go together (PEM).
    pub fullchain: Option<PathBuf>,
    /// Account key and state.
    pub state_dir: Option<PathBuf>,
    /// The challenge the device answers: `http-01` (default), `tls-alpn-01`,
    /// `operator-approval-01` or `device-attest-01`.
    pub challenge: Option<String>,
    /// device-attest-01: the IDevID certificate chain (PEM, IDevID first, then intermediates).
    pub idevid_chain: Option<PathBuf>,
    /// device-attest-01: the IDevID private key (PKCS #8 PEM, P-256 or P-384), or a `pkcs11:`
    /// URI naming it in a token.
    pub idevid_key: Option<PathBuf>,
    /// Address the http-01 responder listens on.
    pub http01_listen: Option<String>,
    /// How long to wait for an operator's approval.
    pub approval_timeout: Option<String>,
    /// EAB key identifier.
    pub eab_kid: Option<String>,
    /// EAB HMAC key, base64url.
    pub eab_hmac: Option<String>,
    /// File holding the EAB HMAC key (keeps it out of the config and the process list).
    pub eab_hmac_file: Option<PathBuf>,
    /// Shell command run after a new certificate is installed.
    pub post_install: Option<String>,
    /// How long the post-install command may run.
    pub post_install_timeout: Option<String>,
    /// Fraction of the lifetime after which to renew.
    pub renew_at: Option<f64>,
    /// Certificate key algorithm.
    pub key_algorithm: Option<KeyAlgorithm>,
    /// Account key algorithm.
    pub account_key_algorithm: Option<KeyAlgorithm>,
    /// Keep the certificate key across renewals instead of making a new one.
    pub reuse_key: Option<bool>,
    /// Accept the CA's terms of service, if it has any.
    pub agree_terms: Option<bool>,
    /// Limit for one HTTPS request.
    pub request_timeout: Option<String>,
    /// Limit for each wait (validation, issuance).
    pub poll_timeout: Option<String>,
    /// First wait after a failed attempt in `run`.
    pub retry_min: Option<String>,
    /// Longest wait after failed attempts in `run`.
    pub retry_max: Option<String>,
    // Outputs besides PEM (see `crate::output`).
    /// Write an OPC UA PKI directory here.
    pub opcua_pki: Option<PathBuf>,
    /// How often `run` refreshes the OPC UA PKI directory's CRLs.
    pub crl_refresh: Option<String>,
    /// Write key, certificate and chain as PKCS #12 here.
    pub pkcs12: Option<PathBuf>,
    /// The file holding the PKCS #12 passphrase.
    pub pkcs12_passphrase_file: Option<PathBuf>,
    /// Also write the certificate and the key as DER next to the PEM files.
    pub der: Option<bool>,
    // Certificate profile and identity (draft-ietf-acme-profiles, SPEC §8.3).
    /// Certificate profile to ask for, a name from the CA directory's `meta.profiles`.
    pub profile: Option<String>,
    /// OPC UA ApplicationUri: a URI subjectAltName in the CSR (the `opcua` profile).
    pub application_uri: Option<String>,
    /// Address the tls-alpn-01 responder listens on.
    pub tls_alpn01_listen: Option<String>,
}

macro_rules! merge_fields {
    ($base:ident, $over:ident, $($f:ident),*) => {
        Self { $($f: $over.$f.or($base.$f),)* }
    };
}

impl FileConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), strip(&e))))
    }

    /// `self` with every field that `over` sets replaced.
    pub fn merge(self, over: Self) -> Self {
        let base = self;
        merge_fields!(
            base,
            over,
            directory_url,
            root_cert,
            root_fingerprint,
            dns,
            ip,
            permanent_id,
            key,
            cert,
            chain,
            fullchain,
            state_dir,
            challenge,
            idevid_chain,
            idevid_key,
            http01_listen,
            approval_timeout,
            eab_kid,
            eab_hmac,
            eab_hmac_file,
            post_install,
            post_install_timeout,
            renew_at,
            key_algorithm,
            account_key_algorithm,
            reuse_key,
            agree_terms,
            request_timeout,
            poll_timeout,
            retry_min,
            retry_max,
            opcua_pki,
            crl_refresh,
            pkcs12,
            pkcs12_passphrase_file,
            der,
            profile,
            application_uri,
            tls_alpn01_listen
        )
    }

    /// The settings `show` needs: files, identifiers and the renewal point.
    pub fn local_settings(&self) -> Result<LocalSettings, Error> {
        let mut identifiers = Vec::new();
        for d in self.dns.iter().flatten() {
            identifiers.push(Identifier::dns(d)?);
        }
        for ip in self.ip.iter().flatten() {
            let addr: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| Error::Config(format!("ip {ip:?} is not an IP address")))?;
            identifiers.push(Identifier::ip(addr)?);
        }
        for p in self.permanent_id.iter().flatten() {
            identifiers.push(Identifier::permanent(p)?);
        }
        identifiers.sort();
        identifiers.dedup();
        if identifiers.is_empty() {
            return Err(Error::Config(
                "no identifiers: give at least one dns name, ip address or permanent identifier \
                 (--dns, --ip, --permanent-id)"
                    .into(),
            ));
        }
        if identifiers.len() > 100 {
            return Err(Error::Config("at most 100 identifiers (SPEC §4.4)".into()));
        }
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let renew_at = self.renew_at.unwrap_or(DEFAULT_RENEW_AT);
        if !(renew_at > 0.0 && renew_at < 1.0) {
            return Err(Error::Config(format!(
                "renew_at {renew_at} must be a fraction of the lifetime between 0 and 1"
            )));
        }
        let key_uri = match &self.key {
            Some(k) => pkcs11::key_location(k, "key")?,
            None => None,
        };
        // For a token key: the URI, `pin-value` redacted, for messages and the post-install
        // command's DEVICE_CLIENT_KEY.
        let key_path = match &key_uri {
            Some(uri) => PathBuf::from(uri.to_string()),
            None => self
                .key
                .clone()
                .unwrap_or_else(|| state_dir.join("cert.key.pem")),
        };
        let cert_path = self
            .cert
            .clone()
            .unwrap_or_else(|| state_dir.join("cert.pem"));
        let mut paths = vec![&key_path, &cert_path];
        paths.extend(self.chain.iter());
        paths.extend(self.fullchain.iter());
        for (i, a) in paths.iter().enumerate() {
            if paths[i + 1..].contains(a) {
                return Err(Error::Config(format!(
                    "{} is configured for two different files",
                    a.display()
                )));
            }
        }
        Ok(LocalSettings {
            identifiers,
            key_path,
            key_uri,
            cert_path,
            chain_path: self.chain.clone(),
            fullchain_path: self.fullchain.clone(),
            state_dir,
            renew_at,
            renew_at_configured: self.renew_at.is_some(),
        })
    }

    /// Everything, checked.
    pub fn into_settings(self) -> Result<Settings, Error> {
        let local = self.local_settings()?;
        let directory_url = self.directory_url.clone().ok_or_else(|| {
            Error::Config("no directory URL: give the CA's --directory https://…/directory".into())
        })?;
        if !directory_url.starts_with("https://") {
            return Err(Error::Config(format!(
                "directory URL {directory_url:?} must start with https:// (SPEC §2.1)"
            )));
        }
        let trust = match (&self.root_cert, &self.root_fingerprint) {
            (Some(path), None) => TrustAnchor::from_root_file(path).map_err(|e| match e {
                Error::Io { .. } | Error::BadFile { .. } => {
                    Error::Config(format!("root certificate: {e}"))
                }
                other => other,
            })?,
            (None, Some(fp)) => TrustAnchor::from_fingerprint(fp)?,
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give either root_cert or root_fingerprint, not both".into(),
                ))
            }
            (None, None) => {
                return Err(Error::Config(
                    "no trust anchor: give the CA root (--root FILE) or its SHA-256 \
                     fingerprint (--root-fingerprint AB:CD:…); system roots are never used"
                        .into(),
                ))
            }
        };
        let listen = self
            .http01_listen
            .as_deref()
            .unwrap_or(DEFAULT_HTTP01_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            Error::Config(format!(
                "http01_listen {listen:?} is not an address:port like 0.0.0.0:80"
            ))
        })?;
        let eab = match (&self.eab_kid, &self.eab_hmac, &self.eab_hmac_file) {
            (None, None, None) => None,
            (Some(kid), Some(hmac), None) => Some(EabCredential::new(kid, hmac)?),
            (Some(kid), None, Some(file)) => {
                let hmac = std::fs::read_to_string(file).map_err(|e| {
                    Error::Config(format!("cannot read EAB HMAC key {}: {e}", file.display()))
                })?;
                Some(EabCredential::new(kid, &hmac)?)
            }
            (Some(_), Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give either eab_hmac or eab_hmac_file, not both".into(),
                ))
            }
            _ => {
                return Err(Error::Config(
                    "EAB needs both the key identifier (eab_kid) and the HMAC key (eab_hmac)"
                        .into(),
                ))
            }
        };
        let dur = |name: &str, v: &Option<String>, default: u64| -> Result<Duration, Error> {
            match v {
                None => Ok(Duration::from_secs(default)),
                Some(t) => parse_duration(t).map_err(|e| Error::Config(format!("{name}: {e}"))),
            }
        };
        let request_timeout = dur("request_timeout", &self.request_timeout, 30)?;
        let poll_timeout = dur("poll_timeout", &self.poll_timeout, 300)?;
        let post_install_timeout = dur("post_install_timeout", &self.post_install_timeout, 120)?;
        let retry = Backoff {
            min: dur("retry_min", &self.retry_min, 30)?,
            max: dur("retry_max", &self.retry_max, 3600)?,
        };
        let enrollment = match self.challenge.as_deref().unwrap_or("http-01") {
            "http-01" => Enrollment::Http01 { listen },
            "tls-alpn-01" => {
                let listen = self
                    .tls_alpn01_listen
                    .as_deref()
                    .unwrap_or(DEFAULT_TLS_ALPN01_LISTEN);
                Enrollment::TlsAlpn01 {
                    listen: listen.parse().map_err(|_| {
                        Error::Config(format!(
                            "tls_alpn01_listen {listen:?} is not an address:port like 0.0.0.0:443"
                        ))
                    })?,
                }
            }
            "operator-approval-01" => Enrollment::OperatorApproval {
                wait: dur("approval_timeout", &self.approval_timeout, 3600)?,
            },
            "device-attest-01" => {
                let (Some(chain), Some(key)) = (&self.idevid_chain, &self.idevid_key) else {
                    return Err(Error::Config(
                        "device-attest-01 needs the IDevID chain and key (--idevid-chain FILE \
                         --idevid-key FILE)"
                            .into(),
                    ));
                };
                Enrollment::DeviceAttest {
                    idevid: Idevid::from_files(chain, key)?,
                    http01_listen: listen,
                }
            }
            other => {
                return Err(Error::Config(format!(
                    "challenge {other:?}: use http-01, tls-alpn-01, operator-approval-01 or \
                     device-attest-01"
                )))
            }
        };
        let has_permanent = local
            .identifiers
            .iter()
            .any(|id| id.kind == "permanent-identifier");
        match &enrollment {
            Enrollment::DeviceAttest { idevid, .. } => {
                if !has_permanent {
                    return Err(Error::Config(
                        "device-attest-01 proves a permanent identifier: give the device's \
                         serial with --permanent-id"
                            .into(),
                    ));
                }
                if let Some(serial) = idevid.serial() {
                    for id in local.identifiers.iter().filter_map(Identifier::serial) {
                        if id != serial {
                            tracing::warn!(
                                "the IDevID's subject serialNumber is {serial:?}, but the \
                                 permanent identifier to prove has serial {id:?}: the CA will \
                                 refuse the attestation"
                            );
                        }
                    }
                }
            }
            Enrollment::Http01 { .. } | Enrollment::TlsAlpn01 { .. } if has_permanent => {
                return Err(Error::Config(
                    "a permanent identifier is proven with device-attest-01: add \
                     --challenge device-attest-01 --idevid-chain FILE --idevid-key FILE"
                        .into(),
                ))
            }
            _ => {}
        }
        for (name, d) in [
            ("request_timeout", request_timeout),
            ("poll_timeout", poll_timeout),
            ("post_install_timeout", post_install_timeout),
            ("retry_min", retry.min),
            ("approval_timeout", enrollment.wait_limit(poll_timeout)),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        if retry.max < retry.min {
            return Err(Error::Config("retry_max must be at least retry_min".into()));
        }
        let post_install = self.post_install.clone().filter(|c| !c.trim().is_empty());
        let account_key_algorithm = self.account_key_algorithm.unwrap_or_default();
        if !account_key_algorithm.is_ecdsa() {
            return Err(Error::Config(format!(
                "account_key_algorithm {account_key_algorithm}: account keys are ECDSA, use p256 \
                 or p384 (RSA and Ed25519 are for the certificate key, key_algorithm)"
            )));
        }
        let profile = match self.profile.as_deref().map(str::trim) {
            None => None,
            Some(p) if !p.is_empty() && p.chars().all(|c| c.is_ascii_graphic()) => {
                Some(p.to_owned())
            }
            Some(p) => {
                return Err(Error::Config(format!(
                    "profile {p:?} is not a profile name (the CA lists its profiles in its \
                     directory's meta.profiles)"
                )))
            }
        };
        let key_algorithm = self.key_algorithm.unwrap_or_default();
        let reuse_key = self.reuse_key.unwrap_or(false);
        if let Some(uri) = &local.key_uri {
            crate::device::token_curve(key_algorithm)?;
            if uri.object.is_none() && !reuse_key {
                return Err(crate::device::rotation_needs_object());
            }
        }
        let application_uri = match &self.application_uri {
            None => None,
            Some(uri) => {
                crate::device::check_application_uri(uri)?;
                Some(uri.clone())
            }
        };
        let (outputs, crl_refresh) =
            self.outputs(&local, dur("crl_refresh", &self.crl_refresh, 3600)?)?;
        Ok(Settings {
            local,
            directory_url,
            trust,
            enrollment,
            eab,
            post_install,
            post_install_timeout,
            key_algorithm,
            account_key_algorithm,
            reuse_key,
            agree_terms: self.agree_terms.unwrap_or(false),
            request_timeout,
            poll_timeout,
            retry,
            outputs,
            crl_refresh,
            profile,
            application_uri,
        })
    }

    /// The outputs besides PEM, checked: a PKCS #12 file needs its passphrase, and no two
    /// outputs may share a file.
    fn outputs(
        &self,
        local: &LocalSettings,
        crl_refresh: Duration,
    ) -> Result<(Outputs, Duration), Error> {
        if crl_refresh.is_zero() {
            return Err(Error::Config("crl_refresh must be positive".into()));
        }
        let pkcs12 = match (&self.pkcs12, &self.pkcs12_passphrase_file) {
            (None, None) => None,
            (Some(path), Some(pass)) => {
                Some(Pkcs12Output::from_passphrase_file(path.clone(), pass)?)
            }
            (Some(_), None) => {
                return Err(Error::Config(
                    "pkcs12 needs a passphrase: give --pkcs12-passphrase-file FILE".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "pkcs12_passphrase_file is set but pkcs12 (the file to write) is not".into(),
                ))
            }
        };
        let outputs = Outputs {
            der: self.der.unwrap_or(false),
            pkcs12,
            opcua_pki: self.opcua_pki.clone().map(OpcuaPki::new),
        };
        // A key in a token never leaves it, and these outputs all hold the private key.
        if local.key_uri.is_some() && (outputs.der || outputs.pkcs12.is_some()) {
            return Err(Error::Config(
                "der and pkcs12 write the private key into a file, and a pkcs11: key never \
                 leaves its token; use a key file, or point the application at the token"
                    .into(),
            ));
        }
        if local.key_uri.is_some() && outputs.opcua_pki.is_some() {
            return Err(Error::Config(
                "opcua_pki writes the private key into own/private, and a pkcs11: key never \
                 leaves its token; use a key file for an OPC UA stack that reads its PKI \
                 directory"
                    .into(),
            ));
        }
        let mut paths = vec![local.key_path.clone(), local.cert_path.clone()];
        paths.extend(local.chain_path.iter().cloned());
        paths.extend(local.fullchain_path.iter().cloned());
        if outputs.der {
            let (c, k) = der_paths(&local.cert_path, &local.key_path);
            paths.extend([c, k]);
        }
        paths.extend(outputs.pkcs12.iter().map(|p| p.path.clone()));
        for (i, a) in paths.iter().enumerate() {
            if paths[i + 1..].contains(a) {
                return Err(Error::Config(format!(
                    "{} is configured for two different files (with der, the DER files are the \
                     PEM paths with the extension .der)",
                    a.display()
                )));
            }
        }
        if let Some(pki) = &outputs.opcua_pki {
            if let Some(p) = paths.iter().find(|p| p.starts_with(pki.dir())) {
                return Err(Error::Config(format!(
                    "{} is inside the OPC UA PKI directory {}, which device-client lays out by \
                     itself; put the other files elsewhere",
                    p.display(),
                    pki.dir().display()
                )));
            }
        }
        Ok((outputs, crl_refresh))
    }
}

/// Drops the `configuration: ` prefix of a nested config error.
fn strip(e: &Error) -> String {
    match e {
        Error::Config(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What the device's files are and when to renew: enough for `show`.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalSettings {
    /// The identifiers the certificate must name, sorted.
    pub identifiers: Vec<Identifier>,
    /// Certificate key file (for a token key, its URI with `pin-value` redacted).
    pub key_path: PathBuf,
    /// The certificate key's PKCS #11 URI, when it is in a token (`key` is a `pkcs11:` URI):
    /// no key file is written then, and the key stays the same across renewals.
    pub key_uri: Option<Pkcs11Uri>,
    /// Certificate file (leaf).
    pub cert_path: PathBuf,
    /// Issuer chain file.
    pub chain_path: Option<PathBuf>,
    /// Leaf plus chain file.
    pub fullchain_path: Option<PathBuf>,
    /// Account key and state.
    pub state_dir: PathBuf,
    /// Fraction of the lifetime after which to renew.
    pub renew_at: f64,
    /// Whether `renew_at` was configured (not the default): then it also bounds a later ACME
    /// Renewal Information window (RFC 9773), which otherwise replaces it.
    pub renew_at_configured: bool,
}

/// Everything the client needs, checked.
#[derive(Debug)]
pub struct Settings {
    /// Files and renewal point.
    pub local: LocalSettings,
    /// ACME directory URL.
    pub directory_url: String,
    /// The pinned root.
    pub trust: TrustAnchor,
    /// The challenge the device answers.
    pub enrollment: Enrollment,
    /// EAB credential for newAccount.
    pub eab: Option<EabCredential>,
    /// Shell command run after a new certificate is installed.
    pub post_install: Option<String>,
    /// How long it may run.
    pub post_install_timeout: Duration,
    /// Certificate key algorithm.
    pub key_algorithm: KeyAlgorithm,
    /// Account key algorithm.
    pub account_key_algorithm: KeyAlgorithm,
    /// Keep the certificate key across renewals.
    pub reuse_key: bool,
    /// Accept the CA's terms of service.
    pub agree_terms: bool,
    /// Limit per HTTPS request.
    pub request_timeout: Duration,
    /// Limit per wait.
    pub poll_timeout: Duration,
    /// Backoff in `run`.
    pub retry: Backoff,
    /// DER, PKCS #12 and OPC UA PKI outputs.
    pub outputs: Outputs,
    /// How often `run` refreshes the OPC UA PKI directory's CRLs.
    pub crl_refresh: Duration,
    /// Certificate profile sent in newOrder (checked against `meta.profiles` first).
    pub profile: Option<String>,
    /// OPC UA ApplicationUri put into the CSR as a URI subjectAltName.
    pub application_uri: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "41:62:35:04:B6:97:B5:F4:C1:E9:A3:87:4A:7E:68:68:BA:F6:9F:10:DF:89:F4:C2:E0:48:7F:7C:BD:45:97:9E";

    #[test]
    fn file_and_flags_merge() {
        let file = FileConfig::from_toml(&format!(
            r#"
            directory_url = "https://ca.plant:14000/directory"
            root_fingerprint = "{FP}"
            dns = ["PLC-7.plant"]
            ip = ["10.0.0.7"]
            state_dir = "/tmp/s"
            renew_at = 0.5
            poll_timeout = "2m"
            "#
        ))
        .expect("parses");
        let flags = FileConfig {
            ip: Some(vec!["2001:DB8::7".into()]),
            http01_listen: Some("127.0.0.1:5002".into()),
            ..FileConfig::default()
        };
        let s = file.merge(flags).into_settings().expect("valid");
        assert_eq!(
            s.local
                .identifiers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["dns:plc-7.plant", "ip:2001:db8::7"]
        );
        assert_eq!(s.local.key_path, Path::new("/tmp/s/cert.key.pem"));
        assert_eq!(s.local.renew_at, 0.5);
        assert_eq!(s.poll_timeout, Duration::from_secs(120));
        assert_eq!(
            s.enrollment,
            Enrollment::Http01 {
                listen: "127.0.0.1:5002".parse().expect("addr")
            }
        );
        assert_eq!(s.trust.fingerprint_text(), FP);
        assert!(s.eab.is_none());
    }

    #[test]
    fn profile_key_algorithm_and_application_uri() {
        let base = format!(
            r#"
            directory_url = "https://ca.plant:14000/directory"
            root_fingerprint = "{FP}"
            dns = ["plc-7.plant"]
            "#
        );
        let s = FileConfig::from_toml(&format!(
            "{base}profile = \"opcua\"\nkey_algorithm = \"rsa2048\"\n\
             application_uri = \"urn:plant.example:plc7\"\n"
        ))
        .expect("parses")
        .into_settings()
        .expect("valid");
        assert_eq!(s.profile.as_deref(), Some("opcua"));
        assert_eq!(s.key_algorithm, KeyAlgorithm::Rsa2048);
        assert_eq!(s.application_uri.as_deref(), Some("urn:plant.example:plc7"));
        for alg in ["p256", "p384", "ed25519", "rsa3072"] {
            let s = FileConfig::from_toml(&format!("{base}key_algorithm = \"{alg}\"\n"))
                .expect("parses")
                .into_settings()
                .expect("valid");
            assert_eq!(s.key_algorithm.to_string(), alg);
        }
        let refused = |extra: &str| {
            FileConfig::from_toml(&format!("{base}{extra}\n"))
                .and_then(FileConfig::into_settings)
                .expect_err(extra)
                .to_string()
        };
        assert!(refused("key_algorithm = \"rsa1024\"").contains("unknown variant"));
        assert!(refused("account_key_algorithm = \"rsa2048\"").contains("account keys are ECDSA"));
        assert!(refused("application_uri = \"plc 7\"").contains("whitespace"));
        assert!(refused("profile = \"\"").contains("not a profile name"));
        // A token key is ECDSA: the other certificate key algorithms are refused with it.
        let token = "key = \"pkcs11:token=t;object=k?module-path=/m.so\"";
        for alg in ["p256", "p384"] {
            let s = FileConfig::from_toml(&format!("{base}{token}\nkey_algorithm = \"{alg}\"\n"))
                .and_then(FileConfig::into_settings)
                .expect("a token key of p256 or p384");
            assert!(s.local.key_uri.is_some());
        }
        for alg in ["ed25519", "rsa2048", "rsa3072"] {
            let e = refused(&format!("{token}\nkey_algorithm = \"{alg}\""));
            assert!(e.contains("cannot be used with a pkcs11: key"), "{e}");
        }
        // The outputs that hold the private key cannot be made from a key in a token.
        for output in ["der = true", "opcua_pki = \"/d/pki\""] {
            let e = refused(&format!("{token}\n{output}"));
            assert!(e.contains("never leaves its token"), "{output}: {e}");
        }
        // A pin-value in the configuration file is used but never shown.
        let s = FileConfig::from_toml(&format!(
            "{base}key = \"pkcs11:token=t;object=k?module-path=/m.so&pin-value=s3cret\"\n"
        ))
        .and_then(FileConfig::into_settings)
        .expect("a pin-value in the file");
        let shown = s.local.key_path.display().to_string();
        assert!(shown.contains("pin-value=REDACTED"), "{shown}");
        assert!(!format!("{s:?}").contains("s3cret"));
        let e = refused("key = \"pkcs:object=k?pin-value=s3cret\"");
        assert!(!e.contains("s3cret"), "{e}");
        // A rotated token key needs a label; one kept with reuse_key may be named by id.
        let by_id = "key = \"pkcs11:token=t;id=%01?module-path=/m.so\"";
        assert!(refused(by_id).contains("name the key with object="));
        FileConfig::from_toml(&format!("{base}{by_id}\nreuse_key = true\n"))
            .and_then(FileConfig::into_settings)
            .expect("an id-only token key with reuse_key");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = FileConfig::from_toml("directry_url = \"x\"").expect_err("typo");
        assert!(
            e.to_string().contains("unknown field `directry_url`"),
            "{e}"
        );
        let base = FileConfig {
            directory_url: Some("https://ca/directory".into()),
            root_fingerprint: Some(FP.into()),
            dns: Some(vec!["plc-7".into()]),
            ..FileConfig::default()
        };
        let err = |over: FileConfig| {
            base.clone()
                .merge(over)
                .into_settings()
                .expect_err("refused")
                .to_string()
        };
        assert!(err(FileConfig {
            directory_url: Some("http://ca/directory".into()),
            ..FileConfig::default()
        })
        .contains("must start with https://"));
        assert!(err(FileConfig {
            root_cert: Some("/x".into()),
            ..FileConfig::default()
        })
        .contains("not both"));
        assert!(err(FileConfig {
            renew_at: Some(1.0),
            ..FileConfig::default()
        })
        .contains("between 0 and 1"));
        assert!(err(FileConfig {
            eab_kid: Some("k".into()),
            ..FileConfig::default()
        })
        .contains("needs both"));
        assert!(err(FileConfig {
            dns: Some(vec![]),
            ..FileConfig::default()
        })
        .contains("no identifiers"));
        assert!(err(FileConfig {
            cert: Some("/a".into()),
            chain: Some("/a".into()),
            ..FileConfig::default()
        })
        .contains("two different files"));
        assert!(err(FileConfig {
            retry_min: Some("1x".into()),
            ..FileConfig::default()
        })
        .contains("retry_min"));
        assert!(err(FileConfig {
            challenge: Some("dns-01".into()),
            ..FileConfig::default()
        })
        .contains("use http-01, tls-alpn-01, operator-approval-01 or"));
        let alpn = base
            .clone()
            .merge(FileConfig {
                challenge: Some("tls-alpn-01".into()),
                ..FileConfig::default()
            })
            .into_settings()
            .expect("tls-alpn-01");
        assert_eq!(
            alpn.enrollment,
            Enrollment::TlsAlpn01 {
                listen: "[::]:443".parse().expect("addr")
            }
        );
        assert!(err(FileConfig {
            challenge: Some("tls-alpn-01".into()),
            tls_alpn01_listen: Some("443".into()),
            ..FileConfig::default()
        })
        .contains("tls_alpn01_listen \"443\" is not an address:port"));
        let approval = base
            .clone()
            .merge(FileConfig {
                challenge: Some("operator-approval-01".into()),
                approval_timeout: Some("2h".into()),
                ..FileConfig::default()
            })
            .into_settings()
            .expect("approval");
        assert_eq!(
            approval.enrollment,
            Enrollment::OperatorApproval {
                wait: Duration::from_secs(7200)
            }
        );
        assert!(err(FileConfig {
            pkcs12: Some("/d/device.p12".into()),
            ..FileConfig::default()
        })
        .contains("--pkcs12-passphrase-file"));
        assert!(err(FileConfig {
            pkcs12: Some("/d/device.p12".into()),
            pkcs12_passphrase_file: Some("/nonexistent/pass".into()),
            ..FileConfig::default()
        })
        .contains("cannot read the PKCS #12 passphrase file /nonexistent/pass"));
        // cert.pem and cert.der are the DER files of --cert cert.pem --key cert.der.
        assert!(err(FileConfig {
            cert: Some("/d/cert.pem".into()),
            key: Some("/d/cert.key".into()),
            der: Some(true),
            ..FileConfig::default()
        })
        .contains("/d/cert.der is configured for two different files"));
        assert!(err(FileConfig {
            cert: Some("/d/pki/own/certs/cert.pem".into()),
            opcua_pki: Some("/d/pki".into()),
            ..FileConfig::default()
        })
        .contains("inside the OPC UA PKI directory"));
        assert!(err(FileConfig {
            crl_refresh: Some("0s".into()),
            ..FileConfig::default()
        })
        .contains("crl_refresh"));
        let outputs = base
            .clone()
            .merge(FileConfig {
                opcua_pki: Some("/d/pki".into()),
                crl_refresh: Some("10m".into()),
                der: Some(true),
                ..FileConfig::default()
            })
            .into_settings()
            .expect("outputs");
        assert_eq!(outputs.crl_refresh, Duration::from_secs(600));
        assert!(outputs.outputs.der);
        assert_eq!(
            outputs.outputs.opcua_pki.as_ref().map(|p| p.dir()),
            Some(Path::new("/d/pki"))
        );
        let mut none = base.clone();
        none.root_fingerprint = None;
        assert!(none
            .into_settings()
            .expect_err("no anchor")
            .to_string()
            .contains("system roots are never used"));
    }
}
