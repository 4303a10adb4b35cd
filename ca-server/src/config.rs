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
use serde::{Deserialize, Serialize};

/// The whole server configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// LAB/TEST ONLY: a clock of the CA's own that `ca-server lab clock-step` (over the admin
    /// socket, never the network) steps forward or back, for testing what clock steps do to
    /// expiry, CRLs and renewal windows. Off by default; the server logs a warning at start
    /// when it is on.
    pub lab_clock: bool,
    /// The file this configuration was read from, if any (a backup includes it); not a key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
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
            lab_clock: false,
            source: None,
        }
    }
}

/// The operator console: the HTTPS admin API and web UI, for operators with client
/// certificates from the operator CA (`ca-server operator add`).
#[derive(Clone, Debug, Deserialize, Serialize)]
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
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
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
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EabConfig {
    /// Refuse new accounts without a valid binding (`meta.externalAccountRequired`).
    pub required: bool,
}

/// Enrollment paths the CA offers (SPEC §5).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentConfig {
    /// Offer http-01 and tls-alpn-01 for `dns` and `ip` identifiers.
    pub network_challenges: bool,
    /// Offer device-attest-01 for `permanent-identifier` identifiers.
    pub device_attestation: bool,
    /// Offer operator-approval-01 for every identifier type.
    pub operator_approval: bool,
    /// How long a triggered approval waits for the operator before it fails.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
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
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Time a connection has for its TLS handshake and then for each request head (request
    /// line and headers).
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub header_read_timeout: Duration,
    /// Time one request has from its first byte until its response is sent, body included.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub request_timeout: Duration,
    /// Time an idle keep-alive connection stays open between requests.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
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
        let mut cfg = Self::from_toml(&text)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
        cfg.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(cfg)
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
        crate::ca::check_key_uris(&self.issuance).map_err(ConfigError)?;
        if self.storage.cache_mib < crate::storage::CACHE_MIB_MIN {
            return Err(ConfigError(format!(
                "storage.cache_mib must be at least {}",
                crate::storage::CACHE_MIB_MIN
            )));
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
        self.storage.check_retention().map_err(ConfigError)?;
        self.storage.check_takeover().map_err(ConfigError)?;
        if let Some(pg) = self.storage.postgres().map_err(ConfigError)? {
            pg.connect_config().map_err(ConfigError)?;
        }
        if self
            .issuance
            .lab_cert_validity
            .is_some_and(|v| v < Duration::from_secs(1) || v > Duration::from_secs(398 * 86_400))
        {
            return Err(ConfigError(
                "issuance.lab_cert_validity must be between 1s and 398d".to_owned(),
            ));
        }
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

/// What the console shows in place of a secret setting.
pub const REDACTED: &str = "[redacted]";

/// Settings whose names end in `_key` but that choose a key algorithm (`root_key = "p384"`),
/// not a key: shown.
const KEY_ALGORITHM_SETTINGS: [&str; 3] = ["root_key", "intermediate_key", "rsa_intermediate_key"];

/// Whether a setting named `name` may hold a secret, which the console never shows.
///
/// The rule goes by the name, so a secret setting added later is hidden without anyone having
/// to remember it: a name that contains `password`, `secret`, `token` or `hmac`, or ends in
/// `_key`, is secret, except
///
/// - a name ending in `_file`, `_path` or `_dir`: it says where a secret lies, not what it is,
///   and the operator needs to see which file is in use (its permissions protect it);
/// - [`KEY_ALGORITHM_SETTINGS`], which name an algorithm.
///
/// No setting holds a secret today: the CA's keys live in the data directory or in a PKCS #11
/// token (whose PIN is in a file: a `pin-value` in a key URI is refused), the EAB HMAC keys in
/// the data directory, never in the configuration.
pub fn is_secret_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if ["_file", "_path", "_dir"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
        || KEY_ALGORITHM_SETTINGS.contains(&name.as_str())
    {
        return false;
    }
    ["password", "secret", "token", "hmac"]
        .iter()
        .any(|word| name.contains(word))
        || name.ends_with("_key")
}

impl Config {
    /// The configuration as the console shows it: every setting, in the file's syntax (TOML
    /// values; durations as `"7d"`), with the value of each secret setting
    /// ([`is_secret_setting`]) replaced by [`REDACTED`]. Unset optional settings are left out.
    /// Fails only for a duration with a fraction of a second, which no file can set.
    pub fn redacted(&self) -> Result<toml::Table, ConfigError> {
        let mut table = match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => t,
            Ok(other) => {
                return Err(ConfigError(format!(
                    "the configuration rendered as a {}, not a table",
                    other.type_str()
                )))
            }
            Err(e) => return Err(ConfigError(format!("cannot render the configuration: {e}"))),
        };
        redact(&mut table, true);
        Ok(table)
    }
}

/// Replaces the values of secret settings in `table` (the whole configuration when `top`) and
/// in the tables within it.
fn redact(table: &mut toml::Table, top: bool) {
    for (name, value) in table.iter_mut() {
        if is_secret_setting(name) {
            *value = toml::Value::String(REDACTED.to_owned());
        } else if top && name == "profiles" {
            // `[profiles.<name>]`: the names are the operator's, not settings; their tables are.
            if let toml::Value::Table(profiles) = value {
                profiles
                    .iter_mut()
                    .for_each(|(_, spec)| redact_within(spec));
            }
        } else {
            redact_within(value);
        }
    }
}

fn redact_within(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => redact(t, false),
        toml::Value::Array(items) => items.iter_mut().for_each(redact_within),
        _ => {}
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
    use std::collections::BTreeMap;

    use super::*;
    use crate::storage::StorageConfig;
    use crate::types::parse_duration;

    /// A configuration that sets every section to something other than its default.
    fn every_section(blocklist: &Path) -> String {
        format!(
            r#"
data_dir = "/var/lib/iiot-acme"
listen = "0.0.0.0:14443"
public_url = "https://ca.plant.example:14443"
tls_names = ["ca.plant.example", "10.0.0.5"]
terms_of_service = "https://plant.example/tos"
max_body_bytes = 32768
lab_clock = true

[issuance]
cert_validity = "36h"
root_key = "p256"
intermediate_key = "p384"
rsa_intermediate_key = "rsa4096"
order_lifetime = "90m"
authz_lifetime = "2d"

[validation]
http_port = 5002
tls_alpn_port = 5001
timeout = "15s"
redirects = "any"
allow_loopback = true
max_in_flight = 10
max_in_flight_per_account = 2
max_in_flight_per_address = 3
lab_resolve_all_to = "127.0.0.1"
lab_always_valid = true

[eab]
required = true

[enrollment]
network_challenges = false
device_attestation = false
operator_approval = true
approval_ttl = "45m"

[keys]
blocklist = {blocklist:?}
allow_renewal_key_reuse = true

[storage]
backend = "sled"
pool_size = 16
durability = "process-crash"
cache_mib = 128
checkpoint_writes = 10
checkpoint_idle = "2m"
checkpoint_max_writes = 100
retention = "7d"
takeover_after = "45s"

[profiles]
default = "plc"

[profiles.plc]
description = "PLCs"
validity = "30d"
key_usage = ["digital-signature", "key-agreement"]
rsa_key_usage = ["digital-signature", "key-encipherment"]
extended_key_usage = ["server-auth", "client-auth"]
key_types = ["rsa", "p256", "p384", "ed25519"]
common_name = "none"
organization = "Plant"
application_uri = true
application_uri_prefixes = ["urn:plant.example:"]
modbus_role = true
role = "operator"
issuer = "rsa"
extensions = [{{ oid = "1.2.3.4", critical = true, value_hex = "0500" }}]

[profiles.opcua]
issuer = "ec"

[limits]
header_read_timeout = "5s"
request_timeout = "1m"
idle_timeout = "2m"
max_connections = 100
max_connections_per_address = 10

[rate_limits]
enabled = false
new_account_per_address = {{ count = 5, period = "1d" }}
new_order_per_account = {{ count = 6, period = "12h" }}
failed_validations_per_identifier = {{ count = 7, period = "10s" }}
pending_approvals_per_account = 1
pending_approvals_per_address = 2
pending_approvals_total = 3

[[rate_limits.overrides]]
limit = "new_account_per_address"
key = "10.20.0.0/16"
count = 50
period = "1h"

[[rate_limits.overrides]]
limit = "pending_approvals_per_account"
key = "acct-1"
count = 9

[admin]
enabled = true
listen = "127.0.0.1:9444"
operator_validity = "30d"

[metrics]
enabled = false
listen = "127.0.0.1:9091"
scan_interval = "1m"
"#
        )
    }

    /// A blocklist file with no keys, in a directory that lives as long as the first value.
    fn empty_blocklist() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let blocklist = dir.path().join("blocklist.dat");
        std::fs::write(&blocklist, []).expect("empty blocklist");
        (dir, blocklist)
    }

    /// The rendering of `cfg`, read back, renders the same: what the console shows is what
    /// the server runs with.
    fn assert_round_trip(cfg: &Config) -> String {
        let text = toml::to_string(&cfg.redacted().expect("renders")).expect("TOML");
        let again = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let text_again = toml::to_string(&again.redacted().expect("renders")).expect("TOML");
        assert_eq!(text, text_again);
        text
    }

    #[test]
    fn the_rendered_configuration_reads_back_the_same() {
        let text = assert_round_trip(&Config::default());
        assert!(text.contains("cert_validity = \"7d\""), "{text}");
        assert!(text.contains("[admin]"), "{text}");
        assert!(!text.contains("public_url"), "unset: left out: {text}");

        let (_dir, blocklist) = empty_blocklist();
        let cfg = Config::from_toml(&every_section(&blocklist)).expect("every section");
        let text = assert_round_trip(&cfg);
        for line in [
            "cert_validity = \"36h\"",
            "order_lifetime = \"90m\"",
            "authz_lifetime = \"2d\"",
            "rsa_intermediate_key = \"rsa4096\"",
            "redirects = \"any\"",
            "durability = \"process-crash\"",
            "lab_resolve_all_to = \"127.0.0.1\"",
            "lab_always_valid = true",
            "lab_clock = true",
            "[profiles.plc]",
            "key_usage = [\"digital-signature\", \"key-agreement\"]",
            "limit = \"pending_approvals_per_account\"",
            "period = \"10s\"",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            text.contains(&format!(
                "blocklist = {:?}",
                blocklist.display().to_string()
            )),
            "{text}"
        );
        // Every setting is there: the rendering holds every key of the file.
        let file: toml::Table = toml::from_str(&every_section(&blocklist)).expect("file");
        let rendered: toml::Table = toml::from_str(&text).expect("rendered");
        assert_eq!(toml::Value::Table(file), toml::Value::Table(rendered));
    }

    #[test]
    fn durations_render_in_the_largest_exact_unit_and_fractions_are_refused() {
        use crate::types::format_duration;
        for (secs, text) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (90, "90s"),
            (5400, "90m"),
            (36 * 3600, "36h"),
            (7 * 86_400, "7d"),
            (86_401, "86401s"),
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(format_duration(d).as_deref(), Some(text));
            assert_eq!(parse_duration(text), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_millis(250)), None);
        let mut cfg = Config::default();
        cfg.limits.request_timeout = Duration::from_millis(1500);
        let err = cfg.redacted().expect_err("1.5s").to_string();
        assert!(err.contains("fraction of a second"), "{err}");
    }

    #[test]
    fn secret_settings_are_named_by_the_rule() {
        for name in [
            "hmac_key",
            "eab_hmac",
            "admin_password",
            "client_secret",
            "api_token",
            "signing_key",
            "Bootstrap_Token",
        ] {
            assert!(is_secret_setting(name), "{name}");
        }
        for name in [
            "root_key",
            "intermediate_key",
            "rsa_intermediate_key",
            "key_usage",
            "rsa_key_usage",
            "key_types",
            "key",
            "keys",
            "hmac_key_file",
            "tls_key_path",
            "secret_dir",
            "blocklist",
            "listen",
        ] {
            assert!(!is_secret_setting(name), "{name}");
        }
    }

    #[test]
    fn secret_values_are_redacted_wherever_they_are() {
        #[derive(Serialize)]
        struct WithSecrets {
            listen: &'static str,
            root_key: &'static str,
            hmac_key: &'static str,
            hmac_key_file: &'static str,
            upstream: Upstream,
            accounts: Vec<Upstream>,
            profiles: BTreeMap<&'static str, Upstream>,
        }
        #[derive(Serialize)]
        struct Upstream {
            url: &'static str,
            password: &'static str,
        }
        let up = || Upstream {
            url: "https://up.example",
            password: "hunter2",
        };
        let mut table = match toml::Value::try_from(WithSecrets {
            listen: "127.0.0.1:1",
            root_key: "p384",
            hmac_key: "c2VjcmV0",
            hmac_key_file: "/etc/iiot-acme/hmac",
            upstream: up(),
            accounts: vec![up(), up()],
            profiles: BTreeMap::from([("token", up())]),
        }) {
            Ok(toml::Value::Table(t)) => t,
            other => panic!("{other:?}"),
        };
        redact(&mut table, true);
        let text = toml::to_string(&table).expect("TOML");
        assert!(
            !text.contains("hunter2") && !text.contains("c2VjcmV0"),
            "{text}"
        );
        assert_eq!(text.matches(REDACTED).count(), 5, "{text}");
        for shown in [
            "root_key = \"p384\"",
            "hmac_key_file = \"/etc/iiot-acme/hmac\"",
            "[profiles.token]",
            "url = \"https://up.example\"",
        ] {
            assert!(text.contains(shown), "{shown} in {text}");
        }
    }

    #[test]
    fn no_setting_of_the_configuration_is_secret_today() {
        fn names(value: &toml::Value, out: &mut Vec<String>) {
            match value {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        out.push(k.clone());
                        names(v, out);
                    }
                }
                toml::Value::Array(items) => items.iter().for_each(|v| names(v, out)),
                _ => {}
            }
        }
        let (_dir, blocklist) = empty_blocklist();
        let cfg = Config::from_toml(&every_section(&blocklist)).expect("every section");
        let rendered = cfg.redacted().expect("renders");
        assert_eq!(
            rendered,
            match toml::Value::try_from(&cfg) {
                Ok(toml::Value::Table(t)) => t,
                other => panic!("{other:?}"),
            },
            "nothing redacted"
        );
        let mut all = Vec::new();
        names(&toml::Value::Table(rendered), &mut all);
        assert!(all.iter().all(|n| !is_secret_setting(n)), "{all:?}");
        assert!(
            all.iter().any(|n| n == "root_key"),
            "looked at the key algorithms"
        );
    }

    #[test]
    fn the_postgres_backend_needs_a_url_without_a_password() {
        let d = Config::default();
        assert_eq!(d.storage.backend, crate::storage::Backend::Sled);
        let ok = Config::from_toml(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://ca@127.0.0.1:5432/iiot\"\npool_size = 4\n",
        )
        .expect("a loopback URL is accepted");
        let pg = ok.storage.postgres().expect("postgres").expect("some");
        assert_eq!(pg.pool_size, 4);
        let remote = Config::from_toml(
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://ca@db.plant.example/iiot\"\n\
             tls_ca_file = \"/etc/iiot-acme/db-ca.pem\"\n",
        )
        .expect("a remote host with TLS is accepted");
        let tls = remote
            .storage
            .postgres()
            .expect("postgres")
            .expect("some")
            .tls;
        assert_eq!(
            tls.map(|t| t.ca_file),
            Some("/etc/iiot-acme/db-ca.pem".into())
        );
        for (toml, want) in [
            ("backend = \"postgres\"\n", "needs storage.url"),
            (
                "url = \"postgres://ca@127.0.0.1/iiot\"\n",
                "the backend is \"sled\"",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgres://ca:pw@127.0.0.1/iiot\"\n",
                "must not contain a password",
            ),
            ("backend = \"mysql\"\n", "unknown variant"),
            (
                "backend = \"postgres\"\nurl = \"postgres://ca@db.plant.example/iiot\"\n",
                "set storage.tls_ca_file",
            ),
            (
                "tls_ca_file = \"/etc/iiot-acme/db-ca.pem\"\n",
                "the backend is \"sled\"",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgres://ca@db.plant.example/iiot\"\n\
                 tls_ca_file = \"/ca.pem\"\ntls_cert_file = \"/c.pem\"\n",
                "go together",
            ),
            (
                "backend = \"postgres\"\nurl = \"postgres://ca@127.0.0.1/iiot\"\n\
                 tls_cert_file = \"/c.pem\"\ntls_key_file = \"/c.key\"\n",
                "needs storage.tls_ca_file",
            ),
        ] {
            let err = Config::from_toml(&format!("[storage]\n{toml}"))
                .expect_err(toml)
                .to_string();
            assert!(err.contains(want), "{toml}: {err}");
            assert!(!err.contains(":pw@"), "{err}");
        }
    }

    #[test]
    fn storage_cache_defaults_and_floor() {
        assert_eq!(Config::default().storage.cache_mib, 256);
        let cfg = Config::from_toml("[storage]\ncache_mib = 64\n").expect("64 MiB is accepted");
        assert_eq!(cfg.storage.cache_mib, 64);
        let err = Config::from_toml("[storage]\ncache_mib = 8\n").expect_err("below the floor");
        assert!(
            err.to_string()
                .contains("storage.cache_mib must be at least 16"),
            "{err}"
        );
    }

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
    fn storage_retention_defaults_to_30_days_and_refuses_zero_and_absurd_values() {
        use std::time::Duration;
        let d = Config::from_toml("").expect("defaults");
        assert_eq!(d.storage.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(d.storage.prune_interval(), Duration::from_secs(300));
        let short = Config::from_toml("[storage]\nretention = \"5s\"\n").expect("parses");
        assert_eq!(short.storage.retention, Duration::from_secs(5));
        assert_eq!(short.storage.prune_interval(), Duration::from_secs(1));
        for bad in ["0s", "0d", "36501d"] {
            let err = Config::from_toml(&format!("[storage]\nretention = \"{bad}\"\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("storage.retention"), "{bad}: {err}");
        }
        let lab = Config::from_toml("[issuance]\nlab_cert_validity = \"3s\"\n").expect("parses");
        assert_eq!(lab.issuance.lab_cert_validity, Some(Duration::from_secs(3)));
        let err = Config::from_toml("[issuance]\nlab_cert_validity = \"0s\"\n")
            .expect_err("zero")
            .to_string();
        assert!(err.contains("lab_cert_validity"), "{err}");
    }

    #[test]
    fn storage_takeover_after_defaults_to_10_seconds_and_refuses_values_out_of_range() {
        use std::time::Duration;
        let d = Config::from_toml("").expect("defaults");
        assert_eq!(d.storage.takeover_after, Duration::from_secs(30));
        let quick = Config::from_toml("[storage]\ntakeover_after = \"1s\"\n").expect("parses");
        assert_eq!(quick.storage.takeover_after, Duration::from_secs(1));
        for bad in ["0s", "11m"] {
            let err = Config::from_toml(&format!("[storage]\ntakeover_after = \"{bad}\"\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("storage.takeover_after"), "{bad}: {err}");
        }
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
