//! Server configuration: one TOML file, overridden by a few CLI flags, checked once at start.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so a typo never silently falls back to a
//! default. Lab/test knobs are documented as such and default off.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ca::IssuanceConfig;
use crate::ca::RsaIntermediateKey;
use crate::ratelimit::RateLimitsConfig;
use crate::storage::StorageConfig;
use crate::va::policy::OwnNames;
use crate::va::ValidationConfig;
use serde::Deserialize;

/// The whole server configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store, the CA keys and certificates live.
    pub data_dir: PathBuf,
    /// Address the HTTPS listener binds.
    pub listen: SocketAddr,
    /// Base URL clients use to reach the server (scheme, host, port; no path). Every URL the
    /// server hands out starts with it, and every JWS `url` must too. Default: from `listen`.
    pub public_url: Option<String>,
    /// Extra DNS names or IP addresses for the server's own HTTPS certificate.
    pub tls_names: Vec<String>,
    /// Terms of service URL advertised in the directory `meta`.
    pub terms_of_service: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Certificate issuance policy.
    pub issuance: IssuanceConfig,
    /// Challenge validation.
    pub validation: ValidationConfig,
    /// External account binding.
    pub eab: EabConfig,
    /// Which enrollment paths (challenge types) are offered.
    pub enrollment: EnrollmentConfig,
    /// Key hygiene at issuance.
    pub keys: KeysConfig,
    /// The store.
    pub storage: StorageConfig,
    /// Certificate profiles (`[profiles]`, SPEC §8.3): `default = "<name>"` and one
    /// `[profiles.<name>]` table per profile to add or adjust.
    pub profiles: crate::ca::profiles::ProfilesConfig,
    /// Connection limits of the HTTPS listener (`[limits]`).
    pub limits: LimitsConfig,
    /// Request rate limits (`[rate_limits]`).
    pub rate_limits: RateLimitsConfig,
    /// The operator console (`[admin]`).
    pub admin: AdminConfig,
    /// The metrics, health and readiness listener (`[metrics]`).
    pub metrics: crate::metrics::MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("iiot-acme-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 14000)),
            public_url: None,
            tls_names: Vec::new(),
            terms_of_service: None,
            max_body_bytes: 64 * 1024,
            issuance: IssuanceConfig::default(),
            validation: ValidationConfig::default(),
            eab: EabConfig::default(),
            enrollment: EnrollmentConfig::default(),
            keys: KeysConfig::default(),
            storage: StorageConfig::default(),
            profiles: crate::ca::profiles::ProfilesConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            admin: AdminConfig::default(),
            metrics: crate::metrics::MetricsConfig::default(),
        }
    }
}

/// The operator console: the HTTPS admin API and web UI, for operators with client
/// certificates from the operator CA (`ca-server operator add`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Whether the console listens at all. The admin socket, for the command line on the CA
    /// host, is always there.
    pub enabled: bool,
    /// Address the console binds: loopback by default; an address on the plant network to
    /// reach it from the control room.
    pub listen: SocketAddr,
    /// Lifetime of operator certificates made by `operator add` or the console (at most
    /// 825 days).
    #[serde(deserialize_with = "crate::types::de_duration")]
    pub operator_validity: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9443)),
            operator_validity: Duration::from_secs(365 * 86_400),
        }
    }
}

/// External account binding (RFC 8555 §7.3.4).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EabConfig {
    /// Refuse new accounts without a valid binding (`meta.externalAccountRequired`).
    pub required: bool,
}

/// Enrollment paths the CA offers (SPEC §5).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentConfig {
    /// Offer http-01 and tls-alpn-01 for `dns` and `ip` identifiers.
    pub network_challenges: bool,
    /// Offer device-attest-01 for `permanent-identifier` identifiers.
    pub device_attestation: bool,
    /// Offer operator-approval-01 for every identifier type.
    pub operator_approval: bool,
    /// How long a triggered approval waits for the operator before it fails.
    #[serde(deserialize_with = "crate::types::de_duration")]
    pub approval_ttl: Duration,
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        Self {
            network_challenges: true,
            device_attestation: true,
            operator_approval: false,
            approval_ttl: Duration::from_secs(3600),
        }
    }
}

/// Key hygiene at issuance (`[keys]`; see `keycheck`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Compromised-key blocklist in the badkeys format (e.g. badkeys' `blocklist.dat`, or one
    /// built with `ca-server blocklist build`). Read while the configuration is parsed: a
    /// missing or malformed file stops the server at start.
    pub blocklist: Option<crate::key::blocklist::BlocklistFile>,
    /// Let a renewal (same account, same identifiers) certify the key of the previous
    /// certificate. Off by default: every certificate needs a new key, as device-client makes
    /// one on every renewal.
    pub allow_renewal_key_reuse: bool,
}

/// Connection limits of the HTTPS listener (`[limits]`): what a client that opens
/// connections and then stalls can hold.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Time a connection has for its TLS handshake and then for each request head (request
    /// line and headers).
    #[serde(deserialize_with = "crate::types::de_duration")]
    pub header_read_timeout: Duration,
    /// Time one request has from its first byte until its response is sent, body included.
    #[serde(deserialize_with = "crate::types::de_duration")]
    pub request_timeout: Duration,
    /// Time an idle keep-alive connection stays open between requests.
    #[serde(deserialize_with = "crate::types::de_duration")]
    pub idle_timeout: Duration,
    /// Most connections open at once; further connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// Most connections open at once from one source address (an IPv6 address counts by its
    /// /64); further ones from it are closed as soon as they are accepted. Unset: the smaller
    /// of [`DEFAULT_MAX_CONNECTIONS_PER_ADDRESS`] and `max_connections`.
    pub max_connections_per_address: Option<usize>,
}

/// `max_connections_per_address` when the configuration does not set it (and
/// `max_connections` is not lower).
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

impl LimitsConfig {
    /// The per-address connection cap the listener applies: at least 1, at most
    /// `max_connections`.
    pub fn per_address_cap(&self) -> usize {
        self.max_connections_per_address
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)
            .min(self.max_connections)
            .max(1)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: None,
        }
    }
}

/// Why a configuration cannot be used: a file that cannot be read or parsed, or a setting out of
/// range. `Display` is the message the operator reads, naming the file and the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The rate limits are part of the configuration; their message names the setting.
impl From<crate::ratelimit::RateLimitsError> for ConfigError {
    fn from(e: crate::ratelimit::RateLimitsError) -> Self {
        Self(e.to_string())
    }
}

/// A profile definition is part of the configuration; its message names the profile.
impl From<crate::ca::profiles::ProfileError> for ConfigError {
    fn from(e: crate::ca::profiles::ProfileError) -> Self {
        Self(e.to_string())
    }
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_toml(&text)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks cross-field constraints.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.issuance.cert_validity < Duration::from_secs(3600) {
            return Err(ConfigError(
                "issuance.cert_validity must be at least 1h".to_owned(),
            ));
        }
        if self.issuance.cert_validity > Duration::from_secs(398 * 86_400) {
            return Err(ConfigError(
                "issuance.cert_validity must be at most 398d".to_owned(),
            ));
        }
        let profiles = crate::ca::profiles::Profiles::from_config(
            &self.profiles,
            self.issuance.cert_validity,
        )?;
        if self.issuance.rsa_intermediate_key == RsaIntermediateKey::None {
            if let Some(name) = profiles.rsa_issuer_profiles().next() {
                return Err(ConfigError(format!(
                    "profiles.{name}.issuer is \"rsa\" but issuance.rsa_intermediate_key is \
                     \"none\": set profiles.{name}.issuer = \"ec\", or give the CA an RSA \
                     intermediate (rsa2048, rsa3072 or rsa4096)"
                )));
            }
        }
        if self.validation.timeout.is_zero() {
            return Err(ConfigError(
                "validation.timeout must be positive".to_owned(),
            ));
        }
        let v = &self.validation;
        if v.max_in_flight == 0
            || v.max_in_flight_per_account == 0
            || v.max_in_flight_per_address == 0
        {
            return Err(ConfigError(
                "validation.max_in_flight, max_in_flight_per_account and \
                 max_in_flight_per_address must be at least 1"
                    .to_owned(),
            ));
        }
        let l = &self.limits;
        for (name, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("request_timeout", l.request_timeout),
            ("idle_timeout", l.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("limits.{name} must be positive")));
            }
        }
        if l.max_connections == 0 {
            return Err(ConfigError(
                "limits.max_connections must be at least 1".to_owned(),
            ));
        }
        if let Some(per_address) = l.max_connections_per_address {
            if per_address == 0 || per_address > l.max_connections {
                return Err(ConfigError(format!(
                    "limits.max_connections_per_address must be between 1 and \
                     limits.max_connections ({}); it is {per_address}",
                    l.max_connections
                )));
            }
        }
        self.rate_limits.check()?;
        if self.metrics.scan_interval.is_zero() {
            return Err(ConfigError(
                "metrics.scan_interval must be positive".to_owned(),
            ));
        }
        if self.metrics.enabled && self.metrics.listen == self.listen {
            return Err(ConfigError(format!(
                "metrics.listen and listen are both {}: give the metrics listener its own \
                 port, or set metrics.enabled = false",
                self.listen
            )));
        }
        if self.admin.enabled
            && (self.admin.listen == self.listen
                || (self.metrics.enabled && self.admin.listen == self.metrics.listen))
        {
            return Err(ConfigError(format!(
                "admin.listen is {}, which another listener uses: give the console its own \
                 port, or set admin.enabled = false",
                self.admin.listen
            )));
        }
        if self.admin.operator_validity < Duration::from_secs(3600)
            || self.admin.operator_validity > crate::ca::operator::MAX_OPERATOR_VALIDITY
        {
            return Err(ConfigError(
                "admin.operator_validity must be between 1h and 825d".to_owned(),
            ));
        }
        if let Some(url) = &self.public_url {
            if !url.starts_with("https://") || url.trim_end_matches('/').matches('/').count() != 2 {
                return Err(ConfigError(format!(
                    "public_url {url:?} must be https://host[:port] with no path"
                )));
            }
        }
        Ok(())
    }

    /// The base URL every resource URL starts with, without a trailing slash.
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let host = match self.listen.ip() {
                    IpAddr::V4(v4) if v4.is_unspecified() => "localhost".to_owned(),
                    IpAddr::V6(v6) if v6.is_unspecified() => "localhost".to_owned(),
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                };
                format!("https://{host}:{}", self.listen.port())
            }
        }
    }
}

/// Names the server's own certificate must carry: loopback, the public URL's host and the
/// configured extras.
pub fn tls_names(cfg: &Config) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    // The console's address too, when it is a specific one: operators open it by address.
    let console = cfg.admin.enabled.then_some(cfg.admin.listen.ip());
    for ip in std::iter::once(cfg.listen.ip()).chain(console) {
        if !ip.is_unspecified() {
            names.push(ip.to_string());
        }
    }
    if let Some(host) = cfg
        .public_url
        .as_deref()
        .and_then(|u| u.strip_prefix("https://"))
        .map(|h| h.trim_end_matches('/'))
    {
        let host = if let Some(v6) = host.strip_prefix('[') {
            v6.split(']').next().unwrap_or(v6)
        } else {
            host.rsplit_once(':').map_or(host, |(h, _)| h)
        };
        names.push(
            host.parse::<IpAddr>()
                .map_or_else(|_| host.to_ascii_lowercase(), |a| a.to_string()),
        );
    }
    names.extend(cfg.tls_names.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// The CA's own names (`va::policy`) come from its configuration: the names of its HTTPS
/// certificate, and the addresses its host answers on.
impl OwnNames {
    /// The CA's own names under `cfg`.
    pub fn of(cfg: &Config) -> Self {
        Self::from_names(&tls_names(cfg), cfg.validation.allow_loopback)
    }

    /// The CA's own names under `cfg` (as [`Self::of`]) and every address the CA host
    /// answers on: the addresses its DNS names resolve to now, and, when it listens on an
    /// unspecified address, the addresses of the host's interfaces. Validation must not dial
    /// the CA's host, whatever the configuration names. A name that does not resolve within a
    /// few seconds adds nothing.
    pub fn of_host(cfg: &Config) -> Self {
        let mut names = tls_names(cfg);
        if cfg.listen.ip().is_unspecified() {
            match if_addrs::get_if_addrs() {
                Ok(interfaces) => names.extend(interfaces.iter().map(|i| i.ip().to_string())),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the host's interface addresses; validation may dial them")
                }
            }
        }
        let lookups: Vec<_> = names
            .iter()
            .filter(|n| n.parse::<IpAddr>().is_err())
            .map(|name| {
                let (tx, rx) = std::sync::mpsc::channel();
                let host = format!("{name}:0");
                std::thread::spawn(move || {
                    let found: Vec<IpAddr> = std::net::ToSocketAddrs::to_socket_addrs(&host)
                        .map(|a| a.map(|a| a.ip()).collect())
                        .unwrap_or_default();
                    let _ = tx.send(found);
                });
                rx
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        for rx in lookups {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if let Ok(found) = rx.recv_timeout(left) {
                names.extend(found.iter().map(ToString::to_string));
            }
        }
        Self::from_names(&names, cfg.validation.allow_loopback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageConfig;
    use crate::types::parse_duration;

    #[test]
    fn storage_checkpoint_policy_defaults_and_settings() {
        use std::time::Duration;
        let d = StorageConfig::default();
        let busy = Duration::from_millis(5);
        assert!(!d.checkpoint_due(49_999, Duration::MAX));
        assert!(!d.checkpoint_due(50_000, busy));
        assert!(!d.checkpoint_due(50_000, Duration::from_millis(9_999)));
        assert!(d.checkpoint_due(50_000, Duration::from_secs(10)));
        assert!(!d.checkpoint_due(499_999, busy));
        assert!(d.checkpoint_due(500_000, busy));
        let cfg: Config = toml::from_str(
            "[storage]\ncheckpoint_writes = 0\ncheckpoint_idle = \"2m\"\ncheckpoint_max_writes = 10\n",
        )
        .expect("parses");
        let s = &cfg.storage;
        assert_eq!(s.checkpoint_idle, Duration::from_secs(120));
        assert!(!s.checkpoint_due(9, Duration::MAX), "0: never when idle");
        assert!(s.checkpoint_due(10, busy));
        let off: Config =
            toml::from_str("[storage]\ncheckpoint_writes = 0\ncheckpoint_max_writes = 0\n")
                .expect("parses");
        assert!(!off.storage.checkpoint_due(u64::MAX, Duration::MAX));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = Config::from_toml("").expect("defaults");
        assert_eq!(cfg.validation.http_port, 80);
        assert_eq!(cfg.base_url(), "https://127.0.0.1:14000");
        assert!(cfg.validation.lab_resolve_all_to.is_none());
    }

    #[test]
    fn the_console_needs_a_port_of_its_own_and_a_sane_certificate_lifetime() {
        let cfg = Config::from_toml("").expect("defaults");
        assert!(cfg.admin.enabled);
        assert_eq!(cfg.admin.listen, SocketAddr::from(([127, 0, 0, 1], 9443)));
        for text in [
            "listen = \"127.0.0.1:9443\"",
            "[admin]\nlisten = \"127.0.0.1:9090\"",
            "[admin]\noperator_validity = \"900d\"",
        ] {
            assert!(Config::from_toml(text).is_err(), "{text}");
        }
        let off = Config::from_toml("listen = \"127.0.0.1:9443\"\n[admin]\nenabled = false")
            .expect("no console, no clash");
        assert!(!off.admin.enabled);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::from_toml("listne = \"0.0.0.0:1\"")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("listne"), "{err}");
        let err = Config::from_toml("[validation]\nhttp_prot = 5002")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("http_prot"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("").is_err());
        let cfg = Config::from_toml("[issuance]\ncert_validity = \"2d\"").expect("ok");
        assert_eq!(cfg.issuance.cert_validity, Duration::from_secs(172_800));
        assert!(Config::from_toml("[issuance]\ncert_validity = \"1m\"").is_err());
    }

    #[test]
    fn max_connections_per_address_is_checked_and_defaults_below_max_connections() {
        let cfg = Config::from_toml("").expect("defaults");
        assert_eq!(cfg.limits.per_address_cap(), 256);
        let cfg = Config::from_toml("[limits]\nmax_connections = 10").expect("ok");
        assert_eq!(
            cfg.limits.per_address_cap(),
            10,
            "unset: at most max_connections"
        );
        let cfg = Config::from_toml("[limits]\nmax_connections_per_address = 4").expect("ok");
        assert_eq!(cfg.limits.per_address_cap(), 4);
        for bad in [
            "[limits]\nmax_connections_per_address = 0",
            "[limits]\nmax_connections = 10\nmax_connections_per_address = 11",
        ] {
            let err = Config::from_toml(bad).expect_err(bad).to_string();
            assert!(err.contains("limits.max_connections_per_address"), "{err}");
        }
        assert!(Config::from_toml("[limits]\nmax_connections_per_address = -1").is_err());
    }

    #[test]
    fn rsa_intermediate_settings_are_checked() {
        let cfg = Config::from_toml("").expect("defaults");
        assert_eq!(cfg.issuance.rsa_intermediate_key.bits(), Some(3072));
        let cfg = Config::from_toml("[issuance]\nrsa_intermediate_key = \"rsa4096\"").expect("ok");
        assert_eq!(cfg.issuance.rsa_intermediate_key.bits(), Some(4096));

        let err = Config::from_toml("[issuance]\nrsa_intermediate_key = \"rsa1024\"")
            .expect_err("too small")
            .to_string();
        assert!(err.contains("rsa1024") && err.contains("rsa3072"), "{err}");
        let err = Config::from_toml("[profiles.opcua]\nissuer = \"dsa\"")
            .expect_err("bad issuer")
            .to_string();
        assert!(err.contains("dsa") && err.contains("rsa"), "{err}");

        // The built-in opcua profile signs RSA keys with the RSA intermediate, so turning the
        // intermediate off needs the profile changed too, and the error says how.
        let err = Config::from_toml("[issuance]\nrsa_intermediate_key = \"none\"")
            .expect_err("opcua needs it")
            .to_string();
        assert!(err.contains("profiles.opcua.issuer"), "{err}");
        Config::from_toml(
            "[issuance]\nrsa_intermediate_key = \"none\"\n[profiles.opcua]\nissuer = \"ec\"",
        )
        .expect("no RSA issuer in use");
        let err = Config::from_toml(
            "[issuance]\nrsa_intermediate_key = \"none\"\n[profiles.opcua]\nissuer = \"ec\"\n\
             [profiles.plc]\nissuer = \"rsa\"",
        )
        .expect_err("plc needs it")
        .to_string();
        assert!(err.contains("profiles.plc.issuer"), "{err}");
    }
}
