//! Microbenchmarks of the server's hot paths, each calling the server's own code:
//!
//! - `jws/*`: an ES256 request as the extractors in `wfe::jws` verify it (`AccountRequest` for a
//!   `kid` POST-as-GET order poll, `KeyRequest` for newAccount), and the signature check alone;
//! - `csr/*`: a P-256 CSR through `csr::parse_and_verify` and then the key checks finalize runs
//!   (`keycheck::check`), and the CSR signature check alone;
//! - `ca/*`: a P-256 leaf issued by the P-256 intermediate (`issue_leaf`, as finalize calls it),
//!   and the ECDSA signature alone;
//! - `storage/*`: a certificate record written to sled, without and with the durable flush
//!   (group commit) every response waits for.
//!
//! After criterion's report it prints the crypto-bound limit: enrollments per second per core
//! if the server did nothing but one enrollment's signatures (see [`summary`]).
//!
//! `cargo bench -p ca-server --bench hotpaths` (all) or `... -- jws` (one group). Under
//! `cargo test --benches` every routine runs once.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::{header, Request};
use ca_server::ca::cert::Certificate;
use ca_server::ca::profiles::Leaf;
use ca_server::jose::Parsed;
use ca_server::ra::account::Account;
use ca_server::ra::order::Order;
use ca_server::storage::Table;
use ca_server::wfe::jws::{AccountRequest, KeyRequest};
use ca_server::{ca::csr, jwk, ra::keycheck};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use ring::signature::{self as ring_sig, EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::json;
use x509_parser::prelude::{FromDer, X509Certificate};

#[path = "../tests/common/mod.rs"]
mod common;

use common::TestServer;

/// JWS-signed POSTs in one loadgen enrollment (`tests/src/bin/loadgen.rs` with instant-acme
/// 0.8): newAccount, newOrder, the authorization, the challenge, one look at the order (ready),
/// finalize (which answers valid: the CA issues before it responds), the certificate download.
/// newNonce is a HEAD (no JWS). Each further poll (when validation has not finished yet) adds
/// one; `--sleep-first` always polls the order after finalize too (8).
const JWS_PER_ENROLLMENT: u32 = 7;

/// Server CPU per certificate measured by `scripts/bench-vs-pebble.sh` (a run at a47d3e7 of the
/// same build as the table in docs/performance.md), ms. Update with the table.
const SERVER_CPU_MS: [(u32, f64); 3] = [(8, 1.90), (32, 1.57), (128, 1.73)];

/// Per-iteration times (seconds) of every `iter_custom` call, by benchmark id, with the
/// group's sample count, so the summary is computed from the samples criterion measured.
static SAMPLES: Mutex<BTreeMap<String, (usize, Vec<f64>)>> = Mutex::new(BTreeMap::new());

/// Criterion's default sample count.
const SAMPLE_SIZE: usize = 100;

/// A server with one account and one ready order, plus a CSR for that order.
struct Fixture {
    rt: tokio::runtime::Runtime,
    s: TestServer,
    acct: common::Account,
    order_url: String,
    account: Account,
    order: Order,
    csr_der: Vec<u8>,
    leaf: Leaf,
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let s = TestServer::new();
        let name = "dev-1.plant.example";
        let (acct, order_json) = rt.block_on(async {
            let acct = s.new_account().await;
            let order = common::ready_order(&s, &acct, &[name]).await;
            (acct, order)
        });
        let order_url = order_json["url"].as_str().expect("order url").to_owned();
        let order_id = order_url.rsplit('/').next().expect("order id");
        let account = s.app.account_by_kid(&acct.kid).expect("account");
        let order: Order = s
            .app
            .db
            .get(Table::Orders, order_id)
            .expect("get order")
            .expect("order");
        let key = rcgen::KeyPair::generate().expect("P-256 key");
        let csr_der = common::csr(&[name], &key);
        let info = csr::parse_and_verify(&csr_der).expect("CSR");
        let leaf = s
            .app
            .profiles
            .of_order(order.profile.as_deref())
            .and_then(|p| p.leaf(&info, None))
            .expect("leaf profile");
        Self {
            rt,
            s,
            acct,
            order_url,
            account,
            order,
            csr_der,
            leaf,
        }
    }

    /// A signed `kid` POST-as-GET of the order (what a client's poll sends), with a fresh nonce.
    fn order_poll(&self) -> Request<Body> {
        let protected = json!({
            "alg": "ES256",
            "nonce": self.s.app.nonces().issue(),
            "url": self.order_url,
            "kid": self.acct.kid,
        });
        jose_post(&self.order_url, &self.acct.key.jws(&protected, None))
    }

    /// A signed newAccount request (`jwk`) with a fresh nonce.
    fn new_account(&self) -> Request<Body> {
        let url = self.s.url("/acme/new-account");
        let protected = json!({
            "alg": "ES256",
            "nonce": self.s.app.nonces().issue(),
            "url": url,
            "jwk": self.acct.key.jwk(),
        });
        let payload = json!({"termsOfServiceAgreed": true});
        jose_post(&url, &self.acct.key.jws(&protected, Some(&payload)))
    }
}

fn jose_post(url: &str, jws: &serde_json::Value) -> Request<Body> {
    Request::post(url)
        .header(header::CONTENT_TYPE, "application/jose+json")
        .body(Body::from(jws.to_string()))
        .expect("request")
}

/// A criterion group that keeps its samples for [`summary`].
struct Group<'a> {
    name: &'static str,
    samples: usize,
    g: BenchmarkGroup<'a, WallTime>,
}

impl<'a> Group<'a> {
    fn new(c: &'a mut Criterion, name: &'static str, samples: usize) -> Self {
        let mut g = c.benchmark_group(name);
        g.sample_size(samples);
        Self { name, samples, g }
    }

    /// Registers `routine` as benchmark `id`; `setup` makes one input per iteration outside
    /// the timed loop. The per-iteration time of each call is kept: the last `samples` calls
    /// are the measured samples (the ones before are warm-up).
    fn bench<I, O>(
        &mut self,
        id: &str,
        mut setup: impl FnMut() -> I,
        mut routine: impl FnMut(I) -> O,
    ) {
        let key = format!("{}/{id}", self.name);
        let samples = self.samples;
        self.g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let inputs: Vec<I> = (0..iters).map(|_| setup()).collect();
                let start = Instant::now();
                for input in inputs {
                    black_box(routine(input));
                }
                let elapsed = start.elapsed();
                let mut all = SAMPLES.lock().expect("samples");
                let entry = all
                    .entry(key.clone())
                    .or_insert_with(|| (samples, Vec::new()));
                entry.1.push(elapsed.as_secs_f64() / iters as f64);
                elapsed
            });
        });
    }
}

fn jws(c: &mut Criterion, fx: &Fixture) {
    let mut g = Group::new(c, "jws", SAMPLE_SIZE);
    // The whole extractor: body read, JSON + base64url decoding, account lookup in sled (and
    // its key parsed from the stored JWK), signature, url and nonce checks.
    g.bench(
        "es256_kid_request",
        || fx.order_poll(),
        |req| {
            fx.rt
                .block_on(AccountRequest::from_request(req, &fx.s.app))
                .map(|_| ())
                .expect("verified")
        },
    );
    g.bench(
        "es256_jwk_request",
        || fx.new_account(),
        |req| {
            fx.rt
                .block_on(KeyRequest::from_request(req, &fx.s.app))
                .map(|_| ())
                .expect("verified")
        },
    );
    // The signature check alone (`jwk::verify`, what the extractor calls).
    let body = fx.acct.key.jws(
        &json!({"alg": "ES256", "nonce": "n", "url": fx.order_url, "kid": fx.acct.kid}),
        None,
    );
    let parsed = Parsed::from_json(body.to_string().as_bytes()).expect("JWS");
    let key = fx.account.public_key().expect("account key");
    g.bench(
        "es256_signature",
        || (),
        |()| jwk::verify("ES256", &key, &parsed.signing_input, &parsed.signature).expect("sig"),
    );
}

fn csr(c: &mut Criterion, fx: &Fixture) {
    let mut g = Group::new(c, "csr", SAMPLE_SIZE);
    // DER parse, algorithm and key policy, on-curve check, signature, identifiers.
    g.bench(
        "p256_parse_and_verify",
        || (),
        |()| csr::parse_and_verify(&fx.csr_der).expect("CSR"),
    );
    // ... then the key checks finalize runs before issuing: weak keys, another account's key,
    // key already certified (sled lookups), reservation.
    g.bench(
        "p256_finalize_checks",
        || (),
        |()| {
            let info = csr::parse_and_verify(&fx.csr_der).expect("CSR");
            let reservation =
                keycheck::check(&fx.s.app, &fx.account, &fx.order, &info).expect("key checks");
            (
                csr::matches_order(&info.identifiers, &fx.order.identifiers),
                reservation,
            )
        },
    );
    // The signature alone, as `parse_and_verify` checks it.
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&fx.csr_der)
            .expect("CSR DER");
    let info = &req.certification_request_info;
    let spki = info.subject_pki.subject_public_key.data.to_vec();
    let signed = info.raw.to_vec();
    let sig = req.signature_value.data.to_vec();
    g.bench(
        "p256_signature",
        || (),
        |()| {
            ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_ASN1, &spki)
                .verify(&signed, &sig)
                .expect("CSR signature")
        },
    );
}

fn ca(c: &mut Criterion, fx: &Fixture) {
    let mut g = Group::new(c, "ca", SAMPLE_SIZE);
    let info = csr::parse_and_verify(&fx.csr_der).expect("CSR");
    // Policy re-check of the key, rcgen building the TBSCertificate, ECDSA P-256 signature by
    // the intermediate, chain PEM.
    g.bench(
        "issue_leaf_p256",
        || (),
        |()| {
            fx.s.app
                .ca
                .issue_leaf(&info.spki_der, &fx.order.identifiers, &fx.leaf)
                .expect("issued")
        },
    );
    // The signature alone: ring's ECDSA P-256 over a real leaf's TBSCertificate, with a P-256
    // key like the intermediate's (the issuing key itself never leaves `CertificateAuthority`).
    let issued =
        fx.s.app
            .ca
            .issue_leaf(&info.spki_der, &fx.order.identifiers, &fx.leaf)
            .expect("issued");
    let (_, cert) = X509Certificate::from_der(&issued.der).expect("leaf DER");
    let tbs = cert.tbs_certificate.as_ref().to_vec();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    g.bench(
        "p256_signature",
        || (),
        |()| signer.sign(&rng, &tbs).expect("signature"),
    );
}

fn storage(c: &mut Criterion, fx: &Fixture) {
    // A fsync per iteration takes milliseconds: fewer samples keep the run short.
    let mut g = Group::new(c, "storage", 30);
    let info = csr::parse_and_verify(&fx.csr_der).expect("CSR");
    let issued =
        fx.s.app
            .ca
            .issue_leaf(&info.spki_der, &fx.order.identifiers, &fx.leaf)
            .expect("issued");
    let record = Certificate::new(&fx.account.id, &fx.order, &issued, None);
    let mut n = 0u64;
    let mut next = move || {
        n += 1;
        let mut r = record.clone();
        r.id = format!("{n:032x}");
        r
    };
    let db = &fx.s.app.db;
    // One certificate record (the largest the server writes, ~2 KiB of JSON) under a new key.
    g.bench("put_certificate", &mut next, |r| {
        db.put(Table::Certificates, &r.id, &r).expect("put")
    });
    // The same, made durable the way every handler does before answering (`Db::flush`: group
    // commit, sled flush on the blocking pool, fsync). One writer, so no grouping here.
    g.bench("put_certificate_flush", &mut next, |r| {
        db.put(Table::Certificates, &r.id, &r).expect("put");
        fx.rt.block_on(db.flush()).expect("flush")
    });
}

/// Median of the measured samples of `id`, seconds.
fn median(id: &str) -> Option<f64> {
    let samples = SAMPLES.lock().expect("samples");
    let (measured, all) = samples.get(id)?;
    let mut v = all[all.len().saturating_sub(*measured)..].to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// The crypto-bound limit: `1 / (JWS_PER_ENROLLMENT × ES256 verification + CSR signature
/// verification + certificate signature)` on one core, from the medians above; and the same
/// with the hot paths as the server runs them (parsing, lookups and checks included).
fn summary() {
    let us = |s: f64| s * 1e6;
    let n = f64::from(JWS_PER_ENROLLMENT);
    let (Some(jws), Some(csr), Some(sign)) = (
        median("jws/es256_signature"),
        median("csr/p256_signature"),
        median("ca/p256_signature"),
    ) else {
        println!("crypto-bound limit: not computed (run the jws, csr and ca groups)");
        return;
    };
    let crypto = n * jws + csr + sign;
    println!();
    println!(
        "signatures per enrollment: {JWS_PER_ENROLLMENT} ES256 verifications x {:.1} us + CSR \
         verification {:.1} us + certificate signature {:.1} us = {:.1} us",
        us(jws),
        us(csr),
        us(sign),
        us(crypto)
    );
    println!(
        "crypto-bound limit: {:.0} enrollments/s per core",
        1.0 / crypto
    );
    for (c, ms) in SERVER_CPU_MS {
        println!(
            "  server CPU per certificate at C={c}: {ms:.2} ms (docs/performance.md): \
             signatures are {:.0} % of it",
            100.0 * crypto * 1e3 / ms
        );
    }
    if let (Some(req), Some(new_acct), Some(csr_all), Some(issue)) = (
        median("jws/es256_kid_request"),
        median("jws/es256_jwk_request"),
        median("csr/p256_finalize_checks"),
        median("ca/issue_leaf_p256"),
    ) {
        let paths = new_acct + (n - 1.0) * req + csr_all + issue;
        println!(
            "hot paths per enrollment (1 jwk + {} kid requests verified, CSR with key checks, \
             leaf issued): {:.1} us = {:.0} enrollments/s per core",
            JWS_PER_ENROLLMENT - 1,
            us(paths),
            1.0 / paths
        );
    }
    if let Some(flush) = median("storage/put_certificate_flush") {
        println!(
            "one durable write (put + flush, no other writer): {:.2} ms",
            flush * 1e3
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .configure_from_args();
    let fx = Fixture::new();
    jws(&mut c, &fx);
    csr(&mut c, &fx);
    ca(&mut c, &fx);
    storage(&mut c, &fx);
    c.final_summary();
    summary();
}
