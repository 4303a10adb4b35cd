//! The server's metrics and their Prometheus text exposition (format 0.0.4), without HTTP:
//! every role records here through `Ra::metrics`, and `server::metrics` serves the text on its
//! own listener.
//!
//! Hand-written on atomics rather than a client crate: a dozen metrics of three kinds need
//! little code, and the label sets are small and mostly fixed. A recording is one or two atomic
//! additions; a labelled series is found under a read lock by comparing its label values (a
//! new series takes the write lock once).
//!
//! | metric | type | labels |
//! |--------|------|--------|
//! | `iiot_acme_certificates_issued_total` | counter | `profile`, `enrollment` |
//! | `iiot_acme_problems_total` | counter | `type` (problem type short name) |
//! | `iiot_acme_validations_total` | counter | `challenge`, `result` |
//! | `iiot_acme_weak_keys_refused_total` | counter | |
//! | `iiot_acme_key_reuse_refused_total` | counter | |
//! | `iiot_acme_request_duration_seconds` | histogram | `endpoint` (route template) |
//! | `iiot_acme_checkpoint_duration_seconds` | histogram | |
//! | `iiot_acme_records_pruned_total` | counter | `record` |
//! | `iiot_acme_pending_approvals` | gauge | |
//! | `iiot_acme_certificates_expiring_24h` | gauge | |
//! | `iiot_acme_store_size_bytes` | gauge | |
//! | `iiot_acme_crl_age_seconds` | gauge | `issuer` |
//!
//! Label values are bounded: profiles come from the configuration, endpoints from the route
//! table (the template, never the request path), the rest from enums.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::ChallengeType;
use crate::ProblemType;

/// The metrics listener (`[metrics]`): plain HTTP, no authentication, as Boulder's and
/// step-ca's debug addresses. It tells anyone who reaches it the size of the fleet, hence
/// loopback by default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics`, `/health` and `/ready` at all.
    pub enabled: bool,
    /// Address the listener binds.
    pub listen: SocketAddr,
    /// How often the gauges that need a scan of the store (certificates expiring within
    /// 24 h) are computed.
    #[serde(
        serialize_with = "crate::types::ser_duration",
        deserialize_with = "crate::types::de_duration"
    )]
    pub scan_interval: Duration,
}

/// The `record` labels of `iiot_acme_records_pruned_total`.
pub const PRUNED_RECORDS: [&str; 4] = ["order", "authorization", "certificate", "revocation"];

/// Default of `metrics.listen`.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_LISTEN,
            scan_interval: Duration::from_secs(300),
        }
    }
}

/// How the identifiers of an issued certificate were authorized (SPEC §5.1, §6.6), the
/// `enrollment` label of `iiot_acme_certificates_issued_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrollment {
    /// http-01 or tls-alpn-01.
    NetworkChallenge,
    /// device-attest-01.
    DeviceAttestation,
    /// operator-approval-01.
    OperatorApproval,
    /// An allow-listed enrollment credential (EAB), without a challenge.
    PreAuthorized,
    /// Identifiers of one certificate authorized in different ways.
    Mixed,
}

impl Enrollment {
    /// Every value, for series that start at zero.
    pub const ALL: [Self; 5] = [
        Self::NetworkChallenge,
        Self::DeviceAttestation,
        Self::OperatorApproval,
        Self::PreAuthorized,
        Self::Mixed,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::NetworkChallenge => "network_challenge",
            Self::DeviceAttestation => "device_attestation",
            Self::OperatorApproval => "operator_approval",
            Self::PreAuthorized => "eab_preauthorized",
            Self::Mixed => "mixed",
        }
    }

    /// The path of a challenge that made an authorization valid.
    pub fn of_challenge(kind: ChallengeType) -> Self {
        match kind {
            ChallengeType::Http01 | ChallengeType::TlsAlpn01 => Self::NetworkChallenge,
            ChallengeType::DeviceAttest01 => Self::DeviceAttestation,
            ChallengeType::OperatorApproval01 => Self::OperatorApproval,
        }
    }

    /// The path of a certificate whose authorizations took `paths`: the one path they share,
    /// or [`Enrollment::Mixed`].
    pub fn combine(paths: impl IntoIterator<Item = Self>) -> Option<Self> {
        paths
            .into_iter()
            .try_fold(None, |acc, p| match acc {
                None => Ok(Some(p)),
                Some(a) if a == p => Ok(Some(a)),
                Some(_) => Err(()),
            })
            .unwrap_or(Some(Self::Mixed))
    }
}

const CHALLENGES: [ChallengeType; 4] = [
    ChallengeType::Http01,
    ChallengeType::TlsAlpn01,
    ChallengeType::DeviceAttest01,
    ChallengeType::OperatorApproval01,
];

/// Upper bounds of the request latency buckets, in seconds: a directory fetch takes well
/// under 5 ms, a finalize with an RSA-4096 CSR up to a second, a request held by a flush on a
/// slow disk longer.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the checkpoint buckets, in seconds (a checkpoint after 700,000 writes took
/// 1.6 s in `benches/scale.rs`).
const CHECKPOINT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A monotonic count.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
struct Gauge(AtomicI64);

impl Gauge {
    fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Durations in buckets. Each slot counts the observations of its bucket alone (the last
/// slot: above every bound); the exposition sums them, so the cumulative counts, `+Inf` and
/// `_count` agree in every scrape even while observations come in.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    slots: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            slots: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.slots[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The series of one labelled metric, by label values.
#[derive(Debug)]
struct Family<T> {
    series: RwLock<Vec<(Vec<String>, T)>>,
    make: fn() -> T,
}

impl<T> Family<T> {
    fn new(make: fn() -> T) -> Self {
        Self {
            series: RwLock::new(Vec::new()),
            make,
        }
    }

    /// Runs `f` on the series with label values `values`, made if it is new.
    fn with<R>(&self, values: &[&str], f: impl FnOnce(&T) -> R) -> R {
        let same = |labels: &[String]| labels.iter().map(String::as_str).eq(values.iter().copied());
        {
            // A panic while the lock is held leaves whole series behind: use them.
            let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, t)) = series.iter().find(|(l, _)| same(l)) {
                return f(t);
            }
        }
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let at = match series.iter().position(|(l, _)| same(l)) {
            Some(at) => at,
            None => {
                let labels = values.iter().map(|v| (*v).to_owned()).collect();
                series.push((labels, (self.make)()));
                series.len() - 1
            }
        };
        f(&series[at].1)
    }

    /// The series, sorted by label values.
    fn each(&self, mut f: impl FnMut(&[String], &T)) {
        let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut sorted: Vec<_> = series.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (labels, t) in sorted {
            f(labels, t);
        }
    }
}

/// Everything the server measures. One per server (`Ra::metrics`), so CAs in one process
/// (tests) count apart.
#[derive(Debug)]
pub struct Metrics {
    issued: Family<Counter>,
    problems: Vec<Counter>,
    validations: Family<Counter>,
    weak_keys: Counter,
    key_reuse: Counter,
    requests: Family<Histogram>,
    checkpoints: Histogram,
    pruned: Family<Counter>,
    pending_approvals: Gauge,
    expiring: Gauge,
    store_bytes: Gauge,
    crl_age: Family<Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            issued: Family::new(Counter::default),
            problems: ProblemType::ALL
                .iter()
                .map(|_| Counter::default())
                .collect(),
            validations: Family::new(Counter::default),
            weak_keys: Counter::default(),
            key_reuse: Counter::default(),
            requests: Family::new(|| Histogram::new(REQUEST_BUCKETS)),
            checkpoints: Histogram::new(CHECKPOINT_BUCKETS),
            pruned: Family::new(Counter::default),
            pending_approvals: Gauge::default(),
            expiring: Gauge::default(),
            store_bytes: Gauge::default(),
            crl_age: Family::new(Gauge::default),
        };
        // Every validation series exists from the start, so `rate()` sees the first one.
        for kind in CHALLENGES {
            for result in ["valid", "invalid"] {
                m.validations.with(&[kind.as_str(), result], |_| ());
            }
        }
        for record in PRUNED_RECORDS {
            m.pruned.with(&[record], |_| ());
        }
        m
    }
}

impl Metrics {
    /// Starts the issued series of `profiles` at zero, one per enrollment path.
    pub fn register_profiles<'a>(&self, profiles: impl IntoIterator<Item = &'a str>) {
        for profile in profiles {
            for path in Enrollment::ALL {
                self.issued.with(&[profile, path.label()], |_| ());
            }
        }
    }

    /// A certificate of `profile` was issued and stored.
    pub fn certificate_issued(&self, profile: &str, enrollment: Enrollment) {
        self.issued
            .with(&[profile, enrollment.label()], Counter::inc);
    }

    /// A problem document of type `kind` was sent.
    pub fn problem_sent(&self, kind: ProblemType) {
        if let Some(i) = ProblemType::ALL.iter().position(|t| *t == kind) {
            self.problems[i].inc();
        }
    }

    /// A challenge of `kind` was decided: valid or not.
    pub fn validation_decided(&self, kind: ChallengeType, valid: bool) {
        let result = if valid { "valid" } else { "invalid" };
        self.validations
            .with(&[kind.as_str(), result], Counter::inc);
    }

    /// A CSR was refused for a weak, compromised or blocklisted key or a weak signature.
    pub fn weak_key_refused(&self) {
        self.weak_keys.inc();
    }

    /// A CSR was refused because its key belongs to another account or certificate.
    pub fn key_reuse_refused(&self) {
        self.key_reuse.inc();
    }

    /// A request to the route `endpoint` (its template, e.g. `/acme/order/{id}/finalize`) was
    /// answered after `took`.
    pub fn request_answered(&self, endpoint: &str, took: Duration) {
        self.requests.with(&[endpoint], |h| h.observe(took));
    }

    /// Retention removed (or, for `certificate`, reduced) `n` records of kind `record`, one of
    /// [`PRUNED_RECORDS`].
    pub fn records_pruned(&self, record: &str, n: u64) {
        if n > 0 {
            self.pruned.with(&[record], |c| c.add(n));
        }
    }

    /// A store checkpoint took `took`.
    pub fn checkpoint_taken(&self, took: Duration) {
        self.checkpoints.observe(took);
    }

    /// Operator approval requests waiting now.
    pub fn set_pending_approvals(&self, n: usize) {
        self.pending_approvals.set(saturating_i64(n));
    }

    /// Valid certificates whose notAfter is within 24 h, as of the last scan.
    pub fn set_expiring_within_24h(&self, n: usize) {
        self.expiring.set(saturating_i64(n));
    }

    /// The store's files on disk.
    pub fn set_store_size(&self, bytes: u64) {
        self.store_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Seconds since the CRL of `issuer` was published.
    pub fn set_crl_age(&self, issuer: &str, secs: i64) {
        self.crl_age.with(&[issuer], |g| g.set(secs));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        out.head(
            "iiot_acme_certificates_issued_total",
            "Certificates issued, by profile and by how their identifiers were authorized.",
            "counter",
        );
        self.issued.each(|l, c| {
            out.sample(
                "iiot_acme_certificates_issued_total",
                &[("profile", &l[0]), ("enrollment", &l[1])],
                c.get(),
            );
        });
        out.head(
            "iiot_acme_problems_total",
            "Problem documents sent by the ACME front end, by problem type.",
            "counter",
        );
        for (kind, c) in ProblemType::ALL.iter().zip(&self.problems) {
            out.sample(
                "iiot_acme_problems_total",
                &[("type", kind.name())],
                c.get(),
            );
        }
        out.head(
            "iiot_acme_validations_total",
            "Challenges decided, by challenge type and result.",
            "counter",
        );
        self.validations.each(|l, c| {
            out.sample(
                "iiot_acme_validations_total",
                &[("challenge", &l[0]), ("result", &l[1])],
                c.get(),
            );
        });
        for (name, help, c) in [
            (
                "iiot_acme_weak_keys_refused_total",
                "CSRs refused for a weak, compromised or blocklisted key or a weak signature.",
                &self.weak_keys,
            ),
            (
                "iiot_acme_key_reuse_refused_total",
                "CSRs refused because their key is another account's or already certified.",
                &self.key_reuse,
            ),
        ] {
            out.head(name, help, "counter");
            out.sample(name, &[], c.get());
        }
        out.head(
            "iiot_acme_request_duration_seconds",
            "Time from the request's routing to its response, by route template.",
            "histogram",
        );
        self.requests.each(|l, h| {
            out.histogram(
                "iiot_acme_request_duration_seconds",
                &[("endpoint", &l[0])],
                h,
            );
        });
        out.head(
            "iiot_acme_checkpoint_duration_seconds",
            "Time a store checkpoint took.",
            "histogram",
        );
        out.histogram(
            "iiot_acme_checkpoint_duration_seconds",
            &[],
            &self.checkpoints,
        );
        out.head(
            "iiot_acme_records_pruned_total",
            "Records removed by retention, by kind (certificate: reduced to an index entry).",
            "counter",
        );
        self.pruned.each(|l, c| {
            out.sample(
                "iiot_acme_records_pruned_total",
                &[("record", &l[0])],
                c.get(),
            );
        });
        for (name, help, g) in [
            (
                "iiot_acme_pending_approvals",
                "Operator approval requests waiting for a decision.",
                &self.pending_approvals,
            ),
            (
                "iiot_acme_certificates_expiring_24h",
                "Valid certificates whose notAfter is within 24 h, as of the last store scan.",
                &self.expiring,
            ),
            (
                "iiot_acme_store_size_bytes",
                "Size of the store's files on disk.",
                &self.store_bytes,
            ),
        ] {
            out.head(name, help, "gauge");
            out.sample(name, &[], g.get());
        }
        out.head(
            "iiot_acme_crl_age_seconds",
            "Seconds since the CRL of each issuing intermediate was published.",
            "gauge",
        );
        self.crl_age.each(|l, g| {
            out.sample("iiot_acme_crl_age_seconds", &[("issuer", &l[0])], g.get());
        });
        out.text
    }
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The text being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, slot) in h.slots.iter().enumerate() {
            cumulative += slot.load(Ordering::Relaxed);
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative);
        }
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

/// A label value as the exposition format writes it: backslash, double quote and line feed
/// escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests;
