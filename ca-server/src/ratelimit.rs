//! Rate limits (`[rate_limits]`): token buckets per source address, per account, and per
//! account and identifier, with per-key overrides, as Boulder does it.
//!
//! A bucket holds `count` tokens and refills continuously at `count` per `period`; a request
//! takes one token, and a request that finds none gets `rateLimited` (429) with a
//! `Retry-After` of the time until the next token (RFC 8555 §6.6). Buckets live in memory: the
//! CA is one process, and a restart refilling every bucket costs an attacker a restart of the
//! CA, which it cannot cause.
//!
//! | limit                               | key                  | checked at                 |
//! |-------------------------------------|----------------------|----------------------------|
//! | `new_account_per_address`           | source address       | newAccount that creates one |
//! | `new_order_per_account`             | account              | newOrder                   |
//! | `failed_validations_per_identifier` | account + identifier | newOrder (a token is taken by each failed validation) |
//! | `pending_approvals_per_account`     | account              | operator-approval-01 (a cap on requests waiting at once) |
//! | `pending_approvals_per_address`     | source address       | operator-approval-01 (likewise) |
//!
//! Requests without a known source address (in-process tests) are not limited by address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{in_prefix, parse_prefix, LimitName, Rate, RateLimitsConfig};
use crate::types::Identifier;
use crate::{Error, Result};

/// Buckets kept before idle (full) ones are swept out.
const SWEEP_AT: usize = 100_000;

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
    fn describe(&self) -> String {
        match self {
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

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The rate limiter of a running CA.
#[derive(Debug)]
pub struct RateLimiter {
    cfg: RateLimitsConfig,
    buckets: Mutex<HashMap<(LimitName, Key), Bucket>>,
}

impl RateLimiter {
    /// A limiter with every bucket full.
    pub fn new(cfg: RateLimitsConfig) -> Self {
        Self {
            cfg,
            buckets: Mutex::new(HashMap::new()),
        }
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
    /// `pending_approvals_*`); `u32::MAX` when limits are off.
    pub fn cap(&self, limit: LimitName, key: &Key) -> u32 {
        if !self.cfg.enabled {
            return u32::MAX;
        }
        let default = match limit {
            LimitName::PendingApprovalsPerAccount => self.cfg.pending_approvals_per_account,
            LimitName::PendingApprovalsPerAddress => self.cfg.pending_approvals_per_address,
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
            LimitName::PendingApprovalsPerAccount | LimitName::PendingApprovalsPerAddress => {
                Rate::new(u32::MAX, Duration::from_secs(1))
            }
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
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_AT {
            // A bucket that has refilled is the same as no bucket.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() / per_token < capacity
            });
        }
        let bucket = buckets.entry((limit, key.clone())).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() / per_token;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            return Ok(());
        }
        if !refuse {
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) * per_token);
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
}

fn describe_period(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        _ if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        _ => format!("{}s", d.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateOverride;

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
    fn disabled_limits_never_refuse() {
        let l = limiter(
            "[rate_limits]\nenabled = false\nnew_order_per_account = { count = 1, period = \"1h\" }",
        );
        let a = Key::Account("a".into());
        for _ in 0..10 {
            l.take(LimitName::NewOrderPerAccount, &a).expect("off");
        }
        assert_eq!(l.cap(LimitName::PendingApprovalsPerAccount, &a), u32::MAX);
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
            let err = crate::config::Config::from_toml(toml).expect_err(toml);
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }
}
