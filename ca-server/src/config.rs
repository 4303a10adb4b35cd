//! Server configuration: one TOML file, overridden by a few CLI flags, checked once at start.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so a typo never silently falls back to a
//! default. Lab/test knobs are documented as such and default off.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
        }
    }
}

/// Key algorithm for a CA key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKeyType {
    /// ECDSA P-256 with SHA-256.
    P256,
    /// ECDSA P-384 with SHA-384.
    P384,
}

/// Key of the RSA issuing intermediate (SPEC §8.1), or `none` for no RSA intermediate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RsaIntermediateKey {
    /// RSA 2048 bits.
    Rsa2048,
    /// RSA 3072 bits (the default).
    Rsa3072,
    /// RSA 4096 bits.
    Rsa4096,
    /// No RSA intermediate: every certificate is signed by the EC intermediate.
    None,
}

impl RsaIntermediateKey {
    /// The modulus size, or `None` for no RSA intermediate.
    pub fn bits(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            Self::None => None,
        }
    }
}

/// Issuance policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuanceConfig {
    /// Lifetime of issued end-entity certificates. Short by default: devices renew.
    #[serde(deserialize_with = "de_duration")]
    pub cert_validity: Duration,
    /// Root CA key type (generated on first start only).
    pub root_key: CaKeyType,
    /// Issuing intermediate key type (generated on first start only).
    pub intermediate_key: CaKeyType,
    /// RSA issuing intermediate (for profiles with `issuer = "rsa"`): created when the CA
    /// starts without one, unless `none`; the size only matters then.
    pub rsa_intermediate_key: RsaIntermediateKey,
    /// How long a new order stays usable.
    #[serde(deserialize_with = "de_duration")]
    pub order_lifetime: Duration,
    /// How long a pending authorization stays usable.
    #[serde(deserialize_with = "de_duration")]
    pub authz_lifetime: Duration,
}

impl Default for IssuanceConfig {
    fn default() -> Self {
        Self {
            cert_validity: Duration::from_secs(7 * 86_400),
            root_key: CaKeyType::P384,
            intermediate_key: CaKeyType::P256,
            rsa_intermediate_key: RsaIntermediateKey::Rsa3072,
            order_lifetime: Duration::from_secs(86_400),
            authz_lifetime: Duration::from_secs(86_400),
        }
    }
}

/// Challenge validation settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Port dialed for http-01 (RFC 8555 §8.3 says 80; a lab may use e.g. 5002).
    pub http_port: u16,
    /// Port dialed for tls-alpn-01 (RFC 8737 says 443; a lab may use e.g. 5001).
    pub tls_alpn_port: u16,
    /// Overall timeout of one validation attempt.
    #[serde(deserialize_with = "de_duration")]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
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
    #[serde(deserialize_with = "de_duration")]
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

/// The store (`[storage]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// What a response waits for before it reports new state.
    pub durability: Durability,
    /// Checkpoint the store (bound what the next start replays) once this many writes are in
    /// and it has been idle for `checkpoint_idle`. 0: never when idle.
    pub checkpoint_writes: u64,
    /// How long without a write counts as idle for a checkpoint.
    #[serde(deserialize_with = "de_duration")]
    pub checkpoint_idle: Duration,
    /// Checkpoint after this many writes even under load, so a restart after a power cut
    /// replays at most this many records (about 1.5 s for 500,000 with a million devices in
    /// the store). 0: never under load.
    pub checkpoint_max_writes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            checkpoint_writes: crate::storage::CHECKPOINT_MIN_WRITES,
            checkpoint_idle: crate::storage::CHECKPOINT_IDLE,
            checkpoint_max_writes: crate::storage::CHECKPOINT_MAX_WRITES,
        }
    }
}

impl StorageConfig {
    /// Whether the server should checkpoint the store now, given [`crate::storage::Store::write_activity`]:
    /// when enough was written and the store has been idle for a while (a line finished
    /// enrolling), or, under sustained load, when the replay would otherwise grow past the
    /// restart budget.
    pub fn checkpoint_due(&self, writes: u64, idle: Duration) -> bool {
        let idle_due = self.checkpoint_writes > 0
            && writes >= self.checkpoint_writes
            && idle >= self.checkpoint_idle;
        let load_due = self.checkpoint_max_writes > 0 && writes >= self.checkpoint_max_writes;
        idle_due || load_due
    }
}

/// How far a write has gone before the response that reports it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// On stable storage: sled's flush, then `fdatasync` of its data file, which also empties
    /// the disk's volatile write cache. Survives a power cut, a kernel crash and a killed process.
    #[default]
    PowerLoss,
    /// Handed to the disk: sled's flush alone (Linux `sync_file_range`, which waits for the
    /// write but neither flushes the disk's write cache nor syncs file metadata). Survives a
    /// killed or crashed server process, not necessarily a power cut. For storage with a
    /// battery- or capacitor-backed cache, or benchmarks.
    ProcessCrash,
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
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// Time one request has from its first byte until its response is sent, body included.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Time an idle keep-alive connection stays open between requests.
    #[serde(deserialize_with = "de_duration")]
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

/// A token bucket: `count` requests per `period`, refilled continuously.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Bucket size: requests allowed in one burst, and per period.
    pub count: u32,
    /// The period over which `count` requests are refilled.
    #[serde(deserialize_with = "de_duration")]
    pub period: Duration,
}

impl Rate {
    /// `count` per `period`.
    pub const fn new(count: u32, period: Duration) -> Self {
        Self { count, period }
    }
}

/// The rate limits (`[rate_limits]`), as token buckets keyed by source address, account or
/// account and identifier, with per-key overrides (Boulder's model). See `ratelimit`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// BENCHMARK ONLY when off: every limit below is switched off. On by default; the server
    /// logs a warning at start when it is off.
    pub enabled: bool,
    /// newAccount requests per source address.
    pub new_account_per_address: Rate,
    /// newOrder requests per account.
    pub new_order_per_account: Rate,
    /// Failed validations per account and identifier; newOrder for an identifier whose
    /// bucket is empty is refused.
    pub failed_validations_per_identifier: Rate,
    /// Operator-approval requests waiting at once per account.
    pub pending_approvals_per_account: u32,
    /// Operator-approval requests waiting at once per source address.
    pub pending_approvals_per_address: u32,
    /// Operator-approval requests waiting at once in all.
    pub pending_approvals_total: u32,
    /// Per-key exceptions: `[[rate_limits.overrides]]` with `limit`, `key` and the new `count`
    /// (and `period` for buckets).
    pub overrides: Vec<RateOverride>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            new_account_per_address: Rate::new(100, Duration::from_secs(60)),
            new_order_per_account: Rate::new(300, Duration::from_secs(3600)),
            failed_validations_per_identifier: Rate::new(5, Duration::from_secs(3600)),
            pending_approvals_per_account: 5,
            pending_approvals_per_address: 50,
            pending_approvals_total: 1000,
            overrides: Vec::new(),
        }
    }
}

/// The limits a `[[rate_limits.overrides]]` entry can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitName {
    /// `new_account_per_address`; the key is an address or a CIDR prefix.
    NewAccountPerAddress,
    /// `new_order_per_account`; the key is an account id.
    NewOrderPerAccount,
    /// `failed_validations_per_identifier`; the key is an account id (all its identifiers).
    FailedValidationsPerIdentifier,
    /// `pending_approvals_per_account`; the key is an account id.
    PendingApprovalsPerAccount,
    /// `pending_approvals_per_address`; the key is an address or a CIDR prefix.
    PendingApprovalsPerAddress,
    /// `pending_approvals_total`; set it there, it takes no override.
    PendingApprovalsTotal,
}

impl LimitName {
    /// The config name, which problem details quote.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewAccountPerAddress => "new_account_per_address",
            Self::NewOrderPerAccount => "new_order_per_account",
            Self::FailedValidationsPerIdentifier => "failed_validations_per_identifier",
            Self::PendingApprovalsPerAccount => "pending_approvals_per_account",
            Self::PendingApprovalsPerAddress => "pending_approvals_per_address",
            Self::PendingApprovalsTotal => "pending_approvals_total",
        }
    }

    /// Whether the limit is keyed by source address (else by account).
    pub fn by_address(self) -> bool {
        matches!(
            self,
            Self::NewAccountPerAddress | Self::PendingApprovalsPerAddress
        )
    }

    /// Whether the limit is a token bucket (else a cap on requests waiting at once).
    pub fn is_bucket(self) -> bool {
        !matches!(
            self,
            Self::PendingApprovalsPerAccount
                | Self::PendingApprovalsPerAddress
                | Self::PendingApprovalsTotal
        )
    }
}

/// One `[[rate_limits.overrides]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    /// Which limit.
    pub limit: LimitName,
    /// Whose: an account id, or for per-address limits an address or a CIDR prefix.
    pub key: String,
    /// The new bucket size or cap.
    pub count: u32,
    /// The new period (buckets only; default: the limit's own).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub period: Option<Duration>,
}

impl RateLimitsConfig {
    /// Checks the buckets and the overrides' keys.
    pub fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("new_account_per_address", self.new_account_per_address),
            ("new_order_per_account", self.new_order_per_account),
            (
                "failed_validations_per_identifier",
                self.failed_validations_per_identifier,
            ),
        ] {
            if rate.count == 0 || rate.period.is_zero() {
                return Err(format!(
                    "rate_limits.{name} needs a count and a period above zero (to switch the \
                     limits off, set rate_limits.enabled = false)"
                ));
            }
        }
        for o in &self.overrides {
            let name = o.limit.as_str();
            if o.limit == LimitName::PendingApprovalsTotal {
                return Err(
                    "rate_limits.overrides: pending_approvals_total has no key; set \
                     rate_limits.pending_approvals_total itself"
                        .into(),
                );
            }
            if o.limit.by_address() && parse_prefix(&o.key).is_none() {
                return Err(format!(
                    "rate_limits.overrides: {name} key {:?} must be an IP address or a CIDR \
                     prefix such as 10.20.0.0/16",
                    o.key
                ));
            }
            if !o.limit.by_address() && o.key.is_empty() {
                return Err(format!(
                    "rate_limits.overrides: {name} needs an account id as its key"
                ));
            }
            if o.limit.is_bucket() && o.count == 0 {
                return Err(format!(
                    "rate_limits.overrides: {name} for {:?} needs a count above zero",
                    o.key
                ));
            }
            if !o.limit.is_bucket() && o.period.is_some() {
                return Err(format!(
                    "rate_limits.overrides: {name} is a cap on waiting requests and takes no \
                     period"
                ));
            }
            if o.period.is_some_and(|p| p.is_zero()) {
                return Err(format!(
                    "rate_limits.overrides: {name} for {:?} needs a period above zero",
                    o.key
                ));
            }
        }
        Ok(())
    }
}

/// `ADDR` or `ADDR/LEN` as an address and a prefix length.
pub fn parse_prefix(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((addr, len))
}

/// Whether `addr` lies in the prefix `net`/`len` (addresses of the other family never do).
pub fn in_prefix(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    let (a, n, bits) = match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let len = u32::from(len).min(bits);
    if len == 0 {
        return true;
    }
    let shift = bits - len;
    (a >> shift) == (n >> shift)
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks cross-field constraints.
    pub fn check(&self) -> Result<(), String> {
        if self.issuance.cert_validity < Duration::from_secs(3600) {
            return Err("issuance.cert_validity must be at least 1h".into());
        }
        if self.issuance.cert_validity > Duration::from_secs(398 * 86_400) {
            return Err("issuance.cert_validity must be at most 398d".into());
        }
        let profiles = crate::ca::profiles::Profiles::from_config(
            &self.profiles,
            self.issuance.cert_validity,
        )?;
        if self.issuance.rsa_intermediate_key == RsaIntermediateKey::None {
            if let Some(name) = profiles.rsa_issuer_profiles().next() {
                return Err(format!(
                    "profiles.{name}.issuer is \"rsa\" but issuance.rsa_intermediate_key is \
                     \"none\": set profiles.{name}.issuer = \"ec\", or give the CA an RSA \
                     intermediate (rsa2048, rsa3072 or rsa4096)"
                ));
            }
        }
        if self.validation.timeout.is_zero() {
            return Err("validation.timeout must be positive".into());
        }
        let v = &self.validation;
        if v.max_in_flight == 0
            || v.max_in_flight_per_account == 0
            || v.max_in_flight_per_address == 0
        {
            return Err("validation.max_in_flight, max_in_flight_per_account and \
                 max_in_flight_per_address must be at least 1"
                .into());
        }
        let l = &self.limits;
        for (name, d) in [
            ("header_read_timeout", l.header_read_timeout),
            ("request_timeout", l.request_timeout),
            ("idle_timeout", l.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("limits.{name} must be positive"));
            }
        }
        if l.max_connections == 0 {
            return Err("limits.max_connections must be at least 1".into());
        }
        if let Some(per_address) = l.max_connections_per_address {
            if per_address == 0 || per_address > l.max_connections {
                return Err(format!(
                    "limits.max_connections_per_address must be between 1 and \
                     limits.max_connections ({}); it is {per_address}",
                    l.max_connections
                ));
            }
        }
        self.rate_limits.check()?;
        if let Some(url) = &self.public_url {
            if !url.starts_with("https://") || url.trim_end_matches('/').matches('/').count() != 2 {
                return Err(format!(
                    "public_url {url:?} must be https://host[:port] with no path"
                ));
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

/// Parses `"90s"`, `"30m"`, `"12h"`, `"7d"` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 12h, 7d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Names the server's own certificate must carry: loopback, the public URL's host and the
/// configured extras.
pub fn tls_names(cfg: &Config) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = cfg.listen.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Config::from_toml("listne = \"0.0.0.0:1\"").expect_err("typo");
        assert!(err.contains("listne"), "{err}");
        let err = Config::from_toml("[validation]\nhttp_prot = 5002").expect_err("typo");
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
            let err = Config::from_toml(bad).expect_err(bad);
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
            .expect_err("too small");
        assert!(err.contains("rsa1024") && err.contains("rsa3072"), "{err}");
        let err = Config::from_toml("[profiles.opcua]\nissuer = \"dsa\"").expect_err("bad issuer");
        assert!(err.contains("dsa") && err.contains("rsa"), "{err}");

        // The built-in opcua profile signs RSA keys with the RSA intermediate, so turning the
        // intermediate off needs the profile changed too, and the error says how.
        let err = Config::from_toml("[issuance]\nrsa_intermediate_key = \"none\"")
            .expect_err("opcua needs it");
        assert!(err.contains("profiles.opcua.issuer"), "{err}");
        Config::from_toml(
            "[issuance]\nrsa_intermediate_key = \"none\"\n[profiles.opcua]\nissuer = \"ec\"",
        )
        .expect("no RSA issuer in use");
        let err = Config::from_toml(
            "[issuance]\nrsa_intermediate_key = \"none\"\n[profiles.opcua]\nissuer = \"ec\"\n\
             [profiles.plc]\nissuer = \"rsa\"",
        )
        .expect_err("plc needs it");
        assert!(err.contains("profiles.plc.issuer"), "{err}");
    }
}
