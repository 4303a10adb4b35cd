//! Rate limits (`[rate_limits]`): token buckets per source address, per account, and per
//! account and identifier, with per-key overrides, as Boulder does it.
//!
//! A bucket holds `count` tokens and refills continuously at `count` per `period`; a request
//! takes one token, and a request that finds none gets `rateLimited` (429) with a
//! `Retry-After` of the time until the next token (RFC 8555 §6.6). With the embedded store
//! buckets live in memory: the CA is one process, and a restart refilling every bucket costs an
//! attacker a restart of the CA, which it cannot cause. With several instances on one database
//! they are records of the store ([`SharedBuckets`], `storage::limits`), so the instances count
//! each limit together.
//!
//! | limit                               | key                  | checked at                 |
//! |-------------------------------------|----------------------|----------------------------|
//! | `new_account_per_address`           | source address       | newAccount that creates one |
//! | `new_order_per_account`             | account              | newOrder                   |
//! | `failed_validations_per_identifier` | account + identifier | newOrder (a token is taken by each failed validation) |
//! | `pending_approvals_per_account`     | account              | operator-approval-01 (a cap on requests waiting at once) |
//! | `pending_approvals_per_address`     | source address       | operator-approval-01 (likewise) |
//!
//! Requests without a known source address (in-process tests) are not limited by address. An
//! address is keyed as the client's network sees it: an IPv4 address mapped into IPv6 as the
//! IPv4 address, and an IPv6 address by its /64, since one host usually has a whole /64 to
//! pick addresses from.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::types::Identifier;
use crate::{Error, Result};

/// Token buckets kept where several CA instances share them (`storage::limits`).
pub trait SharedBuckets: Send + Sync + std::fmt::Debug {
    /// The tokens `limit`'s bucket for `key` held, taking one if `take` and there was one.
    /// `capacity` tokens at most, one more every `per_token` seconds.
    fn draw(
        &self,
        limit: LimitName,
        key: &Key,
        capacity: f64,
        per_token: f64,
        take: bool,
    ) -> Result<f64>;
    /// Removes the buckets that are full again; returns how many.
    fn sweep(&self) -> Result<usize>;
}

/// The most operator-approval requests that wait at once, whatever `[rate_limits]` says, off
/// included: every one is an entry of the record the instances share (or a file the server
/// reads at start), which must stay small enough to rewrite on each request.
pub const PENDING_APPROVALS_CEILING: u32 = 10_000;

/// Buckets kept before refilled ones are swept out.
const SWEEP_AT: usize = 100_000;
/// Least time between two sweeps, so a map that stays large costs one scan per interval, not
/// one per request.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Whose bucket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A source address.
    Address(IpAddr),
    /// An account id.
    Account(String),
    /// An account id and an identifier.
    AccountIdentifier(String, Identifier),
}

impl Key {
    /// The key of a source address: IPv4-mapped IPv6 as IPv4, IPv6 by its /64.
    pub fn address(ip: IpAddr) -> Self {
        Self::Address(address_key(ip))
    }

    fn describe(&self) -> String {
        match self {
            Self::Address(IpAddr::V6(v6)) => format!("addresses {v6}/64"),
            Self::Address(ip) => format!("address {ip}"),
            Self::Account(id) => format!("account {id}"),
            Self::AccountIdentifier(id, identifier) => {
                format!("account {id} and identifier {identifier}")
            }
        }
    }

    fn account(&self) -> Option<&str> {
        match self {
            Self::Account(id) | Self::AccountIdentifier(id, _) => Some(id),
            Self::Address(_) => None,
        }
    }
}

/// `ip` as rate limits key it: IPv4-mapped IPv6 as IPv4, IPv6 by its /64 (host bits zero).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// One token bucket, with its own rate so that a sweep judges it by it.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    capacity: f64,
    per_token: f64,
}

impl Bucket {
    /// The tokens it holds at `now`.
    fn level(&self, now: Instant) -> f64 {
        let refill = now.duration_since(self.updated).as_secs_f64() / self.per_token;
        (self.tokens + refill).min(self.capacity)
    }
}

#[derive(Debug)]
struct Buckets {
    map: HashMap<(LimitName, Key), Bucket>,
    swept: Option<Instant>,
}

/// The rate limiter of a running CA.
#[derive(Debug)]
pub struct RateLimiter {
    cfg: RateLimitsConfig,
    buckets: Mutex<Buckets>,
    /// The store's buckets, when several instances share it; `buckets` is unused then.
    shared: Option<Box<dyn SharedBuckets>>,
}

impl RateLimiter {
    /// A limiter with every bucket full.
    pub fn new(cfg: RateLimitsConfig) -> Self {
        Self {
            cfg,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: None,
            }),
            shared: None,
        }
    }

    /// A limiter whose buckets are `buckets`, which other CA instances share.
    pub fn shared(cfg: RateLimitsConfig, buckets: Box<dyn SharedBuckets>) -> Self {
        Self {
            shared: Some(buckets),
            ..Self::new(cfg)
        }
    }

    /// Removes the shared buckets that are full again (a full bucket is the same as none),
    /// and, for the store's, the validation slots whose holds all ended; returns how many.
    /// Nothing to do with
    /// buckets in memory, which sweep themselves.
    pub fn sweep(&self) -> Result<usize> {
        self.shared.as_ref().map_or(Ok(0), |b| b.sweep())
    }

    /// Whether limits apply at all (`[rate_limits] enabled`).
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// Takes a token from `key`'s bucket of `limit`, or refuses with `rateLimited`.
    pub fn take(&self, limit: LimitName, key: &Key) -> Result<()> {
        self.draw(limit, key, true, true)
    }

    /// Refuses with `rateLimited` when `key`'s bucket of `limit` is empty; takes nothing.
    pub fn check(&self, limit: LimitName, key: &Key) -> Result<()> {
        self.draw(limit, key, false, true)
    }

    /// Takes a token if there is one, never refusing: for events that already happened (a
    /// failed validation) and are counted against later requests.
    pub fn spend(&self, limit: LimitName, key: &Key) {
        let _ = self.draw(limit, key, true, false);
    }

    /// How many requests `key` may have waiting at once under the cap `limit` (for
    /// `pending_approvals_*`); when limits are off, `u32::MAX` but for the total, which is
    /// never above [`PENDING_APPROVALS_CEILING`].
    pub fn cap(&self, limit: LimitName, key: &Key) -> u32 {
        if !self.cfg.enabled {
            return match limit {
                LimitName::PendingApprovalsTotal => PENDING_APPROVALS_CEILING,
                _ => u32::MAX,
            };
        }
        let default = match limit {
            LimitName::PendingApprovalsPerAccount => self.cfg.pending_approvals_per_account,
            LimitName::PendingApprovalsPerAddress => self.cfg.pending_approvals_per_address,
            LimitName::PendingApprovalsTotal => return self.cfg.pending_approvals_total,
            _ => u32::MAX,
        };
        self.overridden(limit, key)
            .map_or(default, |(count, _)| count)
    }

    /// The error for a cap that is reached: `rateLimited`, naming the limit.
    pub fn cap_reached(limit: LimitName, key: &Key, cap: u32, retry_after: Duration) -> Error {
        Error::RateLimited {
            detail: format!(
                "rate limit {} reached: {} already has {cap} request(s) waiting, the most \
                 allowed at once",
                limit.as_str(),
                key.describe()
            ),
            retry_after,
        }
    }

    fn rate(&self, limit: LimitName, key: &Key) -> Rate {
        let default = match limit {
            LimitName::NewAccountPerAddress => self.cfg.new_account_per_address,
            LimitName::NewOrderPerAccount => self.cfg.new_order_per_account,
            LimitName::FailedValidationsPerIdentifier => self.cfg.failed_validations_per_identifier,
            // Caps, not buckets: see `cap`.
            LimitName::PendingApprovalsPerAccount
            | LimitName::PendingApprovalsPerAddress
            | LimitName::PendingApprovalsTotal => Rate::new(u32::MAX, Duration::from_secs(1)),
        };
        match self.overridden(limit, key) {
            Some((count, period)) => Rate::new(count, period.unwrap_or(default.period)),
            None => default,
        }
    }

    /// The override for `key`: for addresses the longest matching prefix, for accounts the
    /// account id.
    fn overridden(&self, limit: LimitName, key: &Key) -> Option<(u32, Option<Duration>)> {
        let mut best: Option<(u8, u32, Option<Duration>)> = None;
        for o in self.cfg.overrides.iter().filter(|o| o.limit == limit) {
            let len = match key {
                Key::Address(ip) => match parse_prefix(&o.key) {
                    Some((net, len)) if in_prefix(*ip, net, len) => len,
                    _ => continue,
                },
                other if other.account() == Some(o.key.as_str()) => u8::MAX,
                _ => continue,
            };
            if best.is_none_or(|(l, _, _)| len > l) {
                best = Some((len, o.count, o.period));
            }
        }
        best.map(|(_, count, period)| (count, period))
    }

    fn draw(&self, limit: LimitName, key: &Key, take: bool, refuse: bool) -> Result<()> {
        if !self.cfg.enabled {
            return Ok(());
        }
        let rate = self.rate(limit, key);
        let capacity = f64::from(rate.count);
        let per_token = rate.period.as_secs_f64() / capacity.max(1.0);
        let level = match &self.shared {
            Some(buckets) => buckets.draw(limit, key, capacity, per_token, take)?,
            None => self.draw_here(limit, key, capacity, per_token, take),
        };
        if level >= 1.0 || !refuse {
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - level.max(0.0)) * per_token);
        Err(Error::RateLimited {
            detail: format!(
                "rate limit {} reached for {}: {} per {}; retry after {} s",
                limit.as_str(),
                key.describe(),
                rate.count,
                describe_period(rate.period),
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            ),
            retry_after: wait,
        })
    }

    /// The tokens `key`'s bucket of `limit` in memory holds, taking one if `take` and there
    /// is one.
    fn draw_here(
        &self,
        limit: LimitName,
        key: &Key,
        capacity: f64,
        per_token: f64,
        take: bool,
    ) -> f64 {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let due = buckets
            .swept
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY);
        if buckets.map.len() >= SWEEP_AT && due {
            // A bucket that has refilled is the same as no bucket.
            buckets.map.retain(|_, b| b.level(now) < b.capacity);
            buckets.swept = Some(now);
        }
        let slot = (limit, key.clone());
        let level = match buckets.map.get(&slot) {
            Some(b) => b.level(now),
            None => capacity,
        };
        if level >= 1.0 && take {
            buckets.map.insert(
                slot,
                Bucket {
                    tokens: level - 1.0,
                    updated: now,
                    capacity,
                    per_token,
                },
            );
        }
        level
    }
}

fn describe_period(d: Duration) -> String {
    crate::types::format_duration(d).unwrap_or_else(|| format!("{}s", d.as_secs_f64()))
}

/// A token bucket: `count` requests per `period`, refilled continuously.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Bucket size: requests allowed in one burst, and per period.
    pub count: u32,
    /// The period over which `count` requests are refilled.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
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
#[derive(Clone, Debug, Deserialize, Serialize)]
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

/// A `[rate_limits]` setting that cannot be used; `Display` names the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RateLimitsError(String);

impl RateLimitsConfig {
    /// Checks the buckets, the caps and the overrides' keys.
    pub fn check(&self) -> Result<(), RateLimitsError> {
        if self.pending_approvals_total > PENDING_APPROVALS_CEILING {
            return Err(RateLimitsError(format!(
                "rate_limits.pending_approvals_total is {}; at most \
                 {PENDING_APPROVALS_CEILING} requests can wait at once",
                self.pending_approvals_total
            )));
        }
        for (name, rate) in [
            ("new_account_per_address", self.new_account_per_address),
            ("new_order_per_account", self.new_order_per_account),
            (
                "failed_validations_per_identifier",
                self.failed_validations_per_identifier,
            ),
        ] {
            if rate.count == 0 || rate.period.is_zero() {
                return Err(RateLimitsError(format!(
                    "rate_limits.{name} needs a count and a period above zero (to switch the \
                     limits off, set rate_limits.enabled = false)"
                )));
            }
        }
        for o in &self.overrides {
            let name = o.limit.as_str();
            if o.limit == LimitName::PendingApprovalsTotal {
                return Err(RateLimitsError(
                    "rate_limits.overrides: pending_approvals_total has no key; set \
                     rate_limits.pending_approvals_total itself"
                        .to_owned(),
                ));
            }
            if o.limit.by_address() && parse_prefix(&o.key).is_none() {
                return Err(RateLimitsError(format!(
                    "rate_limits.overrides: {name} key {:?} must be an IP address or a CIDR \
                     prefix such as 10.20.0.0/16",
                    o.key
                )));
            }
            if !o.limit.by_address() && o.key.is_empty() {
                return Err(RateLimitsError(format!(
                    "rate_limits.overrides: {name} needs an account id as its key"
                )));
            }
            if o.limit.is_bucket() && o.count == 0 {
                return Err(RateLimitsError(format!(
                    "rate_limits.overrides: {name} for {:?} needs a count above zero",
                    o.key
                )));
            }
            if !o.limit.is_bucket() && o.period.is_some() {
                return Err(RateLimitsError(format!(
                    "rate_limits.overrides: {name} is a cap on waiting requests and takes no \
                     period"
                )));
            }
            if o.period.is_some_and(|p| p.is_zero()) {
                return Err(RateLimitsError(format!(
                    "rate_limits.overrides: {name} for {:?} needs a period above zero",
                    o.key
                )));
            }
        }
        Ok(())
    }
}

/// The limits a `[[rate_limits.overrides]]` entry can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    /// Which limit.
    pub limit: LimitName,
    /// Whose: an account id, or for per-address limits an address or a CIDR prefix.
    pub key: String,
    /// The new bucket size or cap.
    pub count: u32,
    /// The new period (buckets only; default: the limit's own).
    #[serde(
        default,
        serialize_with = "crate::types::ser_opt_duration",
        deserialize_with = "crate::types::de_opt_duration"
    )]
    pub period: Option<Duration>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::RateOverride;

    fn limiter(toml: &str) -> RateLimiter {
        let cfg: crate::config::Config = toml::from_str(toml).expect("config");
        cfg.rate_limits.check().expect("valid");
        RateLimiter::new(cfg.rate_limits)
    }

    #[test]
    fn buckets_refuse_when_empty_and_name_the_limit() {
        let l = limiter("[rate_limits]\nnew_order_per_account = { count = 2, period = \"1h\" }");
        let a = Key::Account("acct-a".into());
        l.take(LimitName::NewOrderPerAccount, &a).expect("1");
        l.take(LimitName::NewOrderPerAccount, &a).expect("2");
        let e = l
            .take(LimitName::NewOrderPerAccount, &a)
            .expect_err("3rd refused");
        let Error::RateLimited {
            detail,
            retry_after,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(detail.contains("new_order_per_account"), "{detail}");
        assert!(detail.contains("2 per 1h"), "{detail}");
        // One token of 2 per hour comes back after 30 minutes.
        assert!(
            retry_after.as_secs() > 1790 && retry_after.as_secs() <= 1800,
            "{retry_after:?}"
        );
        assert_eq!(e.to_problem().status, 429);
        // Another account has its own bucket.
        l.take(LimitName::NewOrderPerAccount, &Key::Account("b".into()))
            .expect("other account");
    }

    #[test]
    fn check_and_spend_count_failures_against_later_requests() {
        let l = limiter(
            "[rate_limits]\nfailed_validations_per_identifier = { count = 2, period = \"1h\" }",
        );
        let k = Key::AccountIdentifier("a".into(), Identifier::dns("plc-1"));
        let limit = LimitName::FailedValidationsPerIdentifier;
        l.check(limit, &k).expect("no failures yet");
        l.spend(limit, &k);
        l.check(limit, &k).expect("one failure");
        l.spend(limit, &k);
        l.spend(limit, &k);
        assert!(matches!(l.check(limit, &k), Err(Error::RateLimited { .. })));
    }

    #[test]
    fn overrides_pick_the_longest_prefix_or_the_account() {
        let mut cfg = RateLimitsConfig {
            new_account_per_address: Rate::new(1, Duration::from_secs(60)),
            ..RateLimitsConfig::default()
        };
        cfg.overrides = vec![
            RateOverride {
                limit: LimitName::NewAccountPerAddress,
                key: "10.0.0.0/8".into(),
                count: 3,
                period: None,
            },
            RateOverride {
                limit: LimitName::NewAccountPerAddress,
                key: "10.20.0.0/16".into(),
                count: 5,
                period: None,
            },
            RateOverride {
                limit: LimitName::PendingApprovalsPerAccount,
                key: "gateway".into(),
                count: 40,
                period: None,
            },
        ];
        cfg.check().expect("valid");
        let l = RateLimiter::new(cfg);
        let count = |ip: &str| {
            let k = Key::Address(ip.parse().expect("ip"));
            (0..10)
                .take_while(|_| l.take(LimitName::NewAccountPerAddress, &k).is_ok())
                .count()
        };
        assert_eq!(count("192.0.2.1"), 1);
        assert_eq!(count("10.1.0.1"), 3);
        assert_eq!(count("10.20.3.4"), 5);
        let cap = |a: &str| {
            l.cap(
                LimitName::PendingApprovalsPerAccount,
                &Key::Account(a.into()),
            )
        };
        assert_eq!(cap("gateway"), 40);
        assert_eq!(cap("other"), 5);
    }

    #[test]
    fn checks_store_nothing_and_sweeps_judge_each_bucket_by_its_own_rate() {
        let l = limiter(
            "[rate_limits]\nnew_order_per_account = { count = 300, period = \"1h\" }\n\
             failed_validations_per_identifier = { count = 1, period = \"1s\" }",
        );
        let orders = Key::Account("a".into());
        for _ in 0..290 {
            l.take(LimitName::NewOrderPerAccount, &orders)
                .expect("within 300");
        }
        // Checking 200,000 identifiers stores no bucket.
        for i in 0..200_000 {
            let k = Key::AccountIdentifier("a".into(), Identifier::dns(format!("d{i}")));
            l.check(LimitName::FailedValidationsPerIdentifier, &k)
                .expect("none failed");
        }
        assert_eq!(lock(&l).map.len(), 1);
        // Fill past the sweep threshold with failure buckets of a fast rate, which refill in a
        // second, then sweep: the half-used order bucket, of its slow rate, is kept.
        for i in 0..SWEEP_AT - 1 {
            let k = Key::AccountIdentifier("a".into(), Identifier::dns(format!("d{i}")));
            l.spend(LimitName::FailedValidationsPerIdentifier, &k);
        }
        assert_eq!(lock(&l).map.len(), SWEEP_AT, "no sweep yet");
        std::thread::sleep(Duration::from_millis(1100));
        l.spend(
            LimitName::FailedValidationsPerIdentifier,
            &Key::AccountIdentifier("a".into(), Identifier::dns("last")),
        );
        assert!(lock(&l).map.len() <= 2, "{}", lock(&l).map.len());
        let left = (0..20)
            .take_while(|_| l.take(LimitName::NewOrderPerAccount, &orders).is_ok())
            .count();
        assert_eq!(left, 10, "the sweep refilled a bucket it should have kept");
    }

    fn lock(l: &RateLimiter) -> std::sync::MutexGuard<'_, Buckets> {
        l.buckets.lock().expect("lock")
    }

    #[test]
    fn addresses_are_keyed_as_their_network_sees_them() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            address_key(ip("2001:db8:1:2:a:b:c:d")),
            ip("2001:db8:1:2::")
        );
        let l = limiter("[rate_limits]\nnew_account_per_address = { count = 2, period = \"1h\" }");
        let limit = LimitName::NewAccountPerAddress;
        l.take(limit, &Key::address(ip("2001:db8:1:2::1")))
            .expect("1");
        l.take(limit, &Key::address(ip("2001:db8:1:2::2")))
            .expect("2");
        let e = l
            .take(limit, &Key::address(ip("2001:db8:1:2:ffff::3")))
            .expect_err("the same /64");
        assert!(
            matches!(&e, Error::RateLimited { detail, .. } if detail.contains("2001:db8:1:2::/64")),
            "{e:?}"
        );
        l.take(limit, &Key::address(ip("2001:db8:1:3::1")))
            .expect("another /64");
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let l = limiter(
            "[rate_limits]\nenabled = false\nnew_order_per_account = { count = 1, period = \"1h\" }",
        );
        let a = Key::Account("a".into());
        for _ in 0..10 {
            l.take(LimitName::NewOrderPerAccount, &a).expect("off");
        }
        assert_eq!(l.cap(LimitName::PendingApprovalsPerAccount, &a), u32::MAX);
        // But the requests waiting at once are bounded, whatever the settings.
        let total = l.cap(LimitName::PendingApprovalsTotal, &a);
        assert_eq!(total, PENDING_APPROVALS_CEILING);
        let cfg: crate::config::Config =
            toml::from_str("[rate_limits]\npending_approvals_total = 10001").expect("config");
        let e = cfg.rate_limits.check().expect_err("above the ceiling");
        assert!(e.to_string().contains("pending_approvals_total"), "{e}");
    }

    #[test]
    fn bad_overrides_are_refused_at_start() {
        for (toml, needle) in [
            (
                "[[rate_limits.overrides]]\nlimit = \"new_account_per_address\"\nkey = \"acct\"\ncount = 5",
                "CIDR",
            ),
            (
                "[[rate_limits.overrides]]\nlimit = \"pending_approvals_per_account\"\nkey = \"a\"\ncount = 5\nperiod = \"1h\"",
                "no period",
            ),
            (
                "[rate_limits]\nnew_order_per_account = { count = 0, period = \"1h\" }",
                "enabled = false",
            ),
            (
                "[[rate_limits.overrides]]\nlimit = \"new_orders\"\nkey = \"a\"\ncount = 5",
                "new_orders",
            ),
        ] {
            let err = crate::config::Config::from_toml(toml)
                .expect_err(toml)
                .to_string();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }
}
