//! Key hygiene at finalize, request by request through the router (`keycheck` module docs):
//! ROCA and Fermat-factorable RSA keys, blocklisted keys, another account's account key,
//! fleet-wide key reuse and renewal reuse. The weak RSA keys are built here at test time from
//! primes of the vulnerable forms, and the blocklist with the `ca-server blocklist build` tool;
//! no key is committed.

mod common;

use std::path::Path;
use std::process::Command;

use axum::http::StatusCode;
use ca_server::key::blocklist::BlocklistFile;
use ca_server::ra::keycheck::{KeyReuseAttempt, KeyUse, ReuseKind, WeakKind};
use ca_server::storage::Table;
use common::{b64, csr, openssl, ready_order, tlv, Account, Reply, TestServer};
use num_bigint::BigUint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// ACME helpers (as in wfe.rs): ready orders and finalize.

/// Orders `names` and finalizes with `key`.
async fn order_and_finalize(
    s: &TestServer,
    acct: &Account,
    names: &[&str],
    key: &rcgen::KeyPair,
) -> (Value, Reply) {
    let o = ready_order(s, acct, names).await;
    let r = s.finalize(acct, &o, &csr(names, key)).await;
    (o, r)
}

fn assert_issued(r: &Reply) {
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["status"], "valid");
}

/// Asserts a refusal of `kind` whose detail contains `needle`, and that the order is still
/// ready (the client may send a CSR with another key).
async fn assert_refused(
    s: &TestServer,
    acct: &Account,
    order: &Value,
    r: &Reply,
    kind: &str,
    needle: &str,
) {
    r.assert_problem_detail(400, kind, needle);
    let now = s
        .post_as(acct, order["url"].as_str().expect("url"), None)
        .await
        .json();
    assert_eq!(now["status"], "ready", "{now}");
}

fn attempts(s: &TestServer) -> Vec<KeyReuseAttempt> {
    KeyReuseAttempt::list(&s.app).expect("list attempts")
}

// ---------------------------------------------------------------------------------------------
// RSA keys from chosen primes: Miller-Rabin, PKCS#8 assembly.

fn random_below(rng: &mut StdRng, bound: &BigUint) -> BigUint {
    let mut bytes = vec![0u8; bound.to_bytes_be().len() + 8];
    rng.fill(bytes.as_mut_slice());
    BigUint::from_bytes_be(&bytes) % bound
}

/// Miller-Rabin with 24 random bases (FIPS 186-5 Appendix B.3 asks for fewer at this size).
fn is_probable_prime(n: &BigUint, rng: &mut StdRng) -> bool {
    let one = BigUint::from(1u32);
    let two = BigUint::from(2u32);
    for p in [2u32, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
        if n % p == BigUint::from(0u32) {
            return *n == BigUint::from(p);
        }
    }
    let n1 = n - &one;
    let s = n1.trailing_zeros().unwrap_or(0);
    let d = &n1 >> s;
    'bases: for _ in 0..24 {
        let a = random_below(rng, &(n - 3u32)) + &two;
        let mut x = a.modpow(&d, n);
        if x == one || x == n1 {
            continue;
        }
        for _ in 1..s {
            x = &x * &x % n;
            if x == n1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

fn int(v: &BigUint) -> Vec<u8> {
    let mut b = v.to_bytes_be();
    if b[0] & 0x80 != 0 {
        b.insert(0, 0);
    }
    tlv(0x02, &b)
}

/// An RSA key pair (e = 65537) from two primes, as rcgen/ring take it: PKCS#8 around a PKCS#1
/// RSAPrivateKey (RFC 8017 §A.1.2, RFC 5208 §5).
fn rsa_key_pair(p: &BigUint, q: &BigUint) -> rcgen::KeyPair {
    let (p, q) = if p > q { (p, q) } else { (q, p) };
    let one = BigUint::from(1u32);
    let e = BigUint::from(65_537u32);
    let phi = (p - &one) * (q - &one);
    let d = e.modinv(&phi).expect("e invertible mod phi");
    let rsa = [
        int(&BigUint::from(0u32)),
        int(&(p * q)),
        int(&e),
        int(&d),
        int(p),
        int(q),
        int(&(&d % (p - &one))),
        int(&(&d % (q - &one))),
        int(&q.modinv(p).expect("q invertible mod p")),
    ]
    .concat();
    let alg = tlv(
        0x30,
        &[
            tlv(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            tlv(0x05, &[]),
        ]
        .concat(),
    );
    let pkcs8 = tlv(
        0x30,
        &[int(&BigUint::from(0u32)), alg, tlv(0x04, &tlv(0x30, &rsa))].concat(),
    );
    rcgen::KeyPair::try_from(pkcs8.as_slice()).expect("ring accepts the RSA key")
}

/// ⌈√(2^2047)⌉: both primes at least this big make a 2048-bit modulus.
fn half_2048_floor() -> BigUint {
    (BigUint::from(1u32) << 2047u32).sqrt() + 1u32
}

fn usable_prime(p: &BigUint, rng: &mut StdRng) -> bool {
    // gcd(p − 1, 65537) = 1, or e has no inverse; 65537 is prime.
    (p - 1u32) % 65_537u32 != BigUint::from(0u32) && is_probable_prime(p, rng)
}

/// A ROCA-vulnerable key: both primes of Infineon RSALib's form p = k·M + (65537^a mod M)
/// with M the primorial of the first 126 primes, the M RSALib uses for 2048-bit keys (Nemec
/// et al., "The Return of Coppersmith's Attack", ACM CCS 2017, §2). Deterministic (seeded).
fn roca_key_pair() -> rcgen::KeyPair {
    let mut rng = StdRng::seed_from_u64(2017_15361);
    let m = (2u32..)
        .filter(|&i| (2..i).take_while(|j| j * j <= i).all(|j| i % j != 0))
        .take(126)
        .fold(BigUint::from(1u32), |m, p| m * p);
    let g = BigUint::from(65_537u32);
    let lo = half_2048_floor() / &m + 1u32;
    let hi = (BigUint::from(1u32) << 1024u32) / &m;
    let mut prime = || loop {
        let k = &lo + random_below(&mut rng, &(&hi - &lo));
        let a = BigUint::from(rng.gen::<u64>());
        let p = k * &m + g.modpow(&a, &m);
        if usable_prime(&p, &mut rng) {
            return p;
        }
    };
    let (p, q) = (prime(), prime());
    rsa_key_pair(&p, &q)
}

/// A key whose primes are consecutive: Fermat's method factors it at once.
fn fermat_key_pair() -> rcgen::KeyPair {
    let mut rng = StdRng::seed_from_u64(1643);
    let lo = half_2048_floor();
    let span = (BigUint::from(1u32) << 1024u32) - &lo - 100_000u32;
    let mut p = (&lo + random_below(&mut rng, &span)) | BigUint::from(1u32);
    while !usable_prime(&p, &mut rng) {
        p += 2u32;
    }
    let mut q = &p + 2u32;
    while !usable_prime(&q, &mut rng) {
        q += 2u32;
    }
    rsa_key_pair(&p, &q)
}

/// An ordinary 2048-bit RSA key from openssl.
fn openssl_rsa_key_pair(dir: &Path, name: &str) -> rcgen::KeyPair {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            name,
        ],
    );
    let pem = std::fs::read_to_string(dir.join(name)).expect("key");
    rcgen::KeyPair::from_pem(&pem).expect("rcgen reads the openssl key")
}

// ---------------------------------------------------------------------------------------------
// Weak RSA keys.

#[tokio::test]
async fn roca_key_is_refused_with_bad_public_key() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let key = roca_key_pair();
    let (o, r) = order_and_finalize(&s, &acct, &["tpm-1.plant.example"], &key).await;
    assert_refused(&s, &acct, &o, &r, "badPublicKey", "ROCA").await;
}

#[tokio::test]
async fn fermat_key_is_refused_with_bad_public_key() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let key = fermat_key_pair();
    let (o, r) = order_and_finalize(&s, &acct, &["plc-9.plant.example"], &key).await;
    assert_refused(&s, &acct, &o, &r, "badPublicKey", "Fermat").await;
}

/// The negative case for every RSA test: an ordinary openssl key is certified.
#[tokio::test]
async fn ordinary_openssl_rsa_key_is_issued() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let dir = tempfile::tempdir().expect("tmp");
    let key = openssl_rsa_key_pair(dir.path(), "ok.pem");
    let (_, r) = order_and_finalize(&s, &acct, &["hmi-1.plant.example"], &key).await;
    assert_issued(&r);
}

/// `ca::csr` already refuses the algorithm-level problems; they reach the client unchanged.
#[tokio::test]
async fn algorithm_policy_from_csr_rs_reaches_the_client() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    for (args, kind, needle) in [
        (
            &["-newkey", "rsa:1024", "-sha256"][..],
            "badPublicKey",
            "RSA 1024-bit keys are not accepted",
        ),
        (
            &["-newkey", "rsa:2048", "-md5"],
            "badCSR",
            "md5WithRSAEncryption",
        ),
    ] {
        let mut all = vec![
            "req",
            "-new",
            "-nodes",
            "-keyout",
            "k.pem",
            "-subj",
            "/CN=old-1.plant.example",
            "-outform",
            "DER",
            "-out",
            "r.der",
        ];
        all.extend_from_slice(args);
        openssl(d, &all);
        let o = ready_order(&s, &acct, &["old-1.plant.example"]).await;
        let r = s
            .finalize(&acct, &o, &std::fs::read(d.join("r.der")).expect("csr"))
            .await;
        assert_refused(&s, &acct, &o, &r, kind, needle).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Blocklist.

fn ca_server_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ca-server"))
}

/// Runs `cmd` and asserts that it exits successfully, quoting its stderr if not.
fn assert_runs(cmd: &mut Command) {
    let out = cmd.output().expect("run ca-server");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn blocklisted_p256_and_rsa_keys_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    // Leaked keys as an operator finds them: a P-256 private key (PKCS#8), an RSA private key
    // from openssl, and a certificate whose key leaked.
    let leaked_p256 = rcgen::KeyPair::generate().expect("key");
    std::fs::write(d.join("p256.pem"), leaked_p256.serialize_pem()).expect("write");
    let leaked_rsa = openssl_rsa_key_pair(d, "rsa.pem");
    let leaked_cert_key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["fw.example".to_owned()])
        .expect("params")
        .self_signed(&leaked_cert_key)
        .expect("cert");
    std::fs::write(d.join("fw.crt"), cert.pem()).expect("write");

    assert_runs(
        ca_server_bin()
            .args(["blocklist", "build", "--out"])
            .arg(d.join("local.dat"))
            .args(["--list-id", "42"])
            .args([d.join("p256.pem"), d.join("rsa.pem"), d.join("fw.crt")]),
    );
    assert_eq!(
        std::fs::metadata(d.join("local.dat")).expect("file").len(),
        3 * 16
    );
    // Merging it into another list and building again keeps three unique records.
    assert_runs(
        ca_server_bin()
            .args(["blocklist", "build", "--out"])
            .arg(d.join("merged.dat"))
            .arg("--merge")
            .arg(d.join("local.dat"))
            .arg(d.join("p256.pem")),
    );
    assert_eq!(
        std::fs::metadata(d.join("merged.dat")).expect("file").len(),
        3 * 16
    );
    // `blocklist check` finds the key.
    let out = ca_server_bin()
        .args(["blocklist", "check", "--blocklist"])
        .arg(d.join("local.dat"))
        .arg(d.join("p256.pem"))
        .output()
        .expect("run ca-server");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("BLOCKED (list 42)"));

    let list = BlocklistFile::load(&d.join("local.dat")).expect("load");
    let s = TestServer::with(|cfg| cfg.keys.blocklist = Some(list));
    let acct = s.new_account().await;
    for (name, key) in [
        ("p256.plant.example", &leaked_p256),
        ("rsa.plant.example", &leaked_rsa),
        ("p384.plant.example", &leaked_cert_key),
    ] {
        let (o, r) = order_and_finalize(&s, &acct, &[name], key).await;
        assert_refused(&s, &acct, &o, &r, "badPublicKey", "blocklist (list 42)").await;
    }
    let fresh = rcgen::KeyPair::generate().expect("key");
    let (_, r) = order_and_finalize(&s, &acct, &["fresh.plant.example"], &fresh).await;
    assert_issued(&r);
}

#[test]
fn a_missing_or_malformed_blocklist_stops_the_server_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("no-such-blocklist.dat");
    let toml = format!("[keys]\nblocklist = {:?}\n", missing.display().to_string());
    let err = ca_server::config::Config::from_toml(&toml)
        .expect_err("missing file")
        .to_string();
    assert!(err.contains("no-such-blocklist.dat"), "{err}");

    let bad = dir.path().join("bad.dat");
    std::fs::write(&bad, [0u8; 20]).expect("write");
    let toml = format!("[keys]\nblocklist = {:?}\n", bad.display().to_string());
    let err = ca_server::config::Config::from_toml(&toml)
        .expect_err("bad file")
        .to_string();
    assert!(err.contains("16-byte records"), "{err}");

    // The binary exits with the error before it listens.
    let cfg = dir.path().join("ca.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[keys]\nblocklist = {:?}\n",
            dir.path().join("data").display().to_string(),
            missing.display().to_string()
        ),
    )
    .expect("write");
    let out = ca_server_bin()
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run ca-server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read blocklist") && stderr.contains("no-such-blocklist.dat"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Refused weak keys and weak CSR signatures are recorded for the audit.

/// The operator's audit report, over the admin API as `ca-server audit --json` gets it.
async fn admin_audit(s: &TestServer) -> Value {
    let req = http::Request::get("/audit")
        .body(axum::body::Body::empty())
        .expect("req");
    let r = Reply::read(
        tower::ServiceExt::oneshot(
            ca_server::admin::socket::router(ca_server::ra::Ra::clone(&s.app)),
            req,
        )
        .await
        .expect("infallible"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// The stored certificate record for `name`.
fn cert_for(s: &TestServer, name: &str) -> ca_server::ca::cert::Certificate {
    s.app
        .db
        .values_with_prefix::<ca_server::ca::cert::Certificate>(Table::Certificates, "")
        .expect("certificates")
        .into_iter()
        .find(|c| c.identifiers.iter().any(|i| i.value == name))
        .expect("certificate")
}

/// `keyTypes` and `profiles` count certificates in use (neither expired nor revoked), and a
/// device whose newest certificate expired is listed as stopped renewing.
#[tokio::test]
async fn audit_counts_what_is_in_use_and_lists_devices_that_stopped_renewing() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let p256 = || rcgen::KeyPair::generate().expect("key");
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let (_, r) = order_and_finalize(&s, &acct, &["live.plant.example"], &p256()).await;
    assert_issued(&r);
    let (_, r) = order_and_finalize(&s, &acct, &["gone.plant.example"], &p384).await;
    assert_issued(&r);
    let (_, r) = order_and_finalize(&s, &acct, &["revoked.plant.example"], &p256()).await;
    assert_issued(&r);
    let revoked = cert_for(&s, "revoked.plant.example");
    let r = s
        .post_as(
            &acct,
            &s.url("/acme/revoke-cert"),
            Some(&json!({"certificate": revoked.der})),
        )
        .await;
    r.assert_status(StatusCode::OK);
    // The P-384 device went offline: its only certificate has expired.
    let gone = cert_for(&s, "gone.plant.example");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    s.app
        .db
        .update(
            Table::Certificates,
            &gone.id,
            |mut c: ca_server::ca::cert::Certificate| {
                c.not_before = now - 7200;
                c.not_after = now - 60;
                Ok(c)
            },
        )
        .expect("age");

    let audit = admin_audit(&s).await;
    assert_eq!(
        audit["certificates"],
        json!({"total": 3, "valid": 1, "expired": 1, "revoked": 1}),
        "{audit}"
    );
    // Only the live certificate's key and profile are in use.
    assert_eq!(audit["keyTypes"], json!({"ECDSA P-256": 1}), "{audit}");
    assert_eq!(audit["profiles"], json!({"default": 1}), "{audit}");
    let stopped = audit["stoppedRenewing"].as_array().expect("list");
    assert_eq!(stopped.len(), 1, "{audit}");
    assert_eq!(
        stopped[0]["identifiers"], "dns:gone.plant.example",
        "{audit}"
    );
    assert_eq!(stopped[0]["lastCertificate"], gone.id, "{audit}");
    // 7-day certificates: none expires within 24 h.
    assert_eq!(audit["expiringWithin24h"], json!([]), "{audit}");
}

/// An openssl CSR for `cn` (DER) made with `args` (key and digest options).
fn openssl_req(dir: &Path, cn: &str, args: &[&str]) -> Vec<u8> {
    let subject = format!("/CN={cn}");
    let mut all = vec![
        "req", "-new", "-nodes", "-keyout", "k.pem", "-subj", &subject, "-outform", "DER", "-out",
        "r.der",
    ];
    all.extend_from_slice(args);
    openssl(dir, &all);
    std::fs::read(dir.join("r.der")).expect("csr")
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

#[tokio::test]
async fn weak_keys_and_signatures_are_refused_recorded_and_audited() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let leaked = rcgen::KeyPair::generate().expect("key");
    std::fs::write(d.join("leaked.pem"), leaked.serialize_pem()).expect("write");
    assert_runs(
        ca_server_bin()
            .args(["blocklist", "build", "--out"])
            .arg(d.join("list.dat"))
            .args(["--list-id", "7"])
            .arg(d.join("leaked.pem")),
    );
    let list = BlocklistFile::load(&d.join("list.dat")).expect("load");
    let s = TestServer::with(|cfg| cfg.keys.blocklist = Some(list));
    let acct = s.new_account().await;
    let other = s.new_account().await;

    // A blocklisted key and a Fermat-factorable key: badPublicKey from keycheck.
    let (o1, r) = order_and_finalize(&s, &acct, &["leak-1.plant.example"], &leaked).await;
    assert_refused(&s, &acct, &o1, &r, "badPublicKey", "blocklist (list 7)").await;
    let fermat = fermat_key_pair();
    let (o2, r) = order_and_finalize(&s, &acct, &["plc-9.plant.example"], &fermat).await;
    assert_refused(&s, &acct, &o2, &r, "badPublicKey", "Fermat").await;
    // A SHA-1 CSR (badCSR) and a 1024-bit RSA key (badPublicKey) from `ca::csr`, from another
    // account.
    let o3 = ready_order(&s, &other, &["old-1.plant.example"]).await;
    let sha1 = openssl_req(
        d,
        "old-1.plant.example",
        &[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-sha1",
        ],
    );
    let r = s.finalize(&other, &o3, &sha1).await;
    assert_refused(&s, &other, &o3, &r, "badCSR", "ecdsa-with-SHA1").await;
    let sha1_spki = {
        openssl(
            d,
            &[
                "pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "k.der",
            ],
        );
        sha256_hex(&std::fs::read(d.join("k.der")).expect("spki"))
    };
    let small = openssl_req(
        d,
        "old-1.plant.example",
        &["-newkey", "rsa:1024", "-sha256"],
    );
    let r = s.finalize(&other, &o3, &small).await;
    assert_refused(&s, &other, &o3, &r, "badPublicKey", "RSA 1024-bit").await;

    // Not key hygiene, not recorded: a malformed CSR, a CSR for other names; and a good key is
    // issued.
    let r = s.finalize(&other, &o3, b"not a CSR").await;
    r.assert_problem(400, "badCSR");
    let fresh = rcgen::KeyPair::generate().expect("key");
    let r = s
        .finalize(&other, &o3, &csr(&["elsewhere.example"], &fresh))
        .await;
    r.assert_problem(400, "badCSR");
    let r = s
        .finalize(&other, &o3, &csr(&["old-1.plant.example"], &fresh))
        .await;
    assert_issued(&r);

    let id = |v: &Value, what: &str| -> String {
        v[what]
            .as_str()
            .expect("url")
            .rsplit('/')
            .next()
            .expect("id")
            .to_owned()
    };
    let (acct_id, other_id) = (
        acct.kid.rsplit('/').next().expect("id"),
        other.kid.rsplit('/').next().expect("id"),
    );
    let recorded = ca_server::ra::keycheck::WeakKeyAttempt::list(&s.app).expect("list");
    let summary: Vec<_> = recorded
        .iter()
        .map(|a| {
            (
                a.kind,
                a.account_id.as_str(),
                a.order_id.clone(),
                a.key_type.as_deref().unwrap_or_default(),
                a.problem.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                WeakKind::Blocklisted,
                acct_id,
                id(&o1, "url"),
                "ECDSA P-256",
                "badPublicKey"
            ),
            (
                WeakKind::Fermat,
                acct_id,
                id(&o2, "url"),
                "RSA 2048",
                "badPublicKey"
            ),
            (
                WeakKind::WeakSignature,
                other_id,
                id(&o3, "url"),
                "ECDSA P-256",
                "badCSR"
            ),
            (
                WeakKind::KeyPolicy,
                other_id,
                id(&o3, "url"),
                "RSA 1024",
                "badPublicKey"
            ),
        ]
    );
    assert_eq!(
        recorded[0].spki_sha256.as_deref(),
        Some(sha256_hex(&rcgen::PublicKeyData::subject_public_key_info(&leaked)).as_str())
    );
    assert_eq!(recorded[2].spki_sha256.as_deref(), Some(sha1_spki.as_str()));
    assert!(recorded
        .iter()
        .all(|a| a.spki_sha256.as_ref().is_some_and(|h| h.len() == 64)));
    assert_eq!(
        recorded[0].identifiers,
        [ca_server::types::Identifier::dns("leak-1.plant.example")]
    );
    assert!(
        recorded[1].detail.contains("Fermat"),
        "{}",
        recorded[1].detail
    );
    assert!(recorded[3]
        .detail
        .contains("RSA 1024-bit keys are not accepted"));
    // None of these are key reuse.
    assert!(attempts(&s).is_empty());

    // The operator's audit lists them.
    let audit = admin_audit(&s).await;
    let listed = audit["weakKeyAttempts"]
        .as_array()
        .expect("weakKeyAttempts");
    let kinds: Vec<_> = listed.iter().map(|a| a["kind"].clone()).collect();
    assert_eq!(
        kinds,
        [
            json!("blocklisted"),
            json!("fermat"),
            json!("weak-signature"),
            json!("key-policy")
        ],
        "{audit}"
    );
    assert_eq!(listed[2]["accountId"], other_id);
    assert_eq!(listed[2]["orderId"], id(&o3, "url"));
    assert_eq!(listed[2]["identifiers"][0]["value"], "old-1.plant.example");
    assert_eq!(listed[2]["spkiSha256"], sha1_spki);
    assert_eq!(listed[2]["keyType"], "ECDSA P-256");
    assert_eq!(listed[2]["problem"], "badCSR");
    assert!(listed[2]["at"].as_i64().is_some_and(|t| t > 0));
}

/// A client that keeps sending a weak CSR fills only its own share of the table.
#[tokio::test]
async fn weak_key_attempts_are_bounded_per_account() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let dir = tempfile::tempdir().expect("tmp");
    let o = ready_order(&s, &acct, &["loop-1.plant.example"]).await;
    let sha1 = openssl_req(
        dir.path(),
        "loop-1.plant.example",
        &[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-sha1",
        ],
    );
    let max = ca_server::ra::keycheck::attempts::MAX_PER_ACCOUNT;
    for _ in 0..max + 5 {
        s.finalize(&acct, &o, &sha1)
            .await
            .assert_problem(400, "badCSR");
    }
    let recorded = ca_server::ra::keycheck::WeakKeyAttempt::list(&s.app).expect("list");
    assert_eq!(recorded.len(), max);
}

// ---------------------------------------------------------------------------------------------
// Account keys and fleet-wide reuse.

#[tokio::test]
async fn another_accounts_key_is_refused_and_recorded() {
    let s = TestServer::new();
    let owner = s.new_account().await;
    let acct = s.new_account().await;
    let owner_key = rcgen::KeyPair::try_from(owner.key.pkcs8.as_slice()).expect("rcgen key");
    let (o, r) = order_and_finalize(&s, &acct, &["gw-1.plant.example"], &owner_key).await;
    assert_refused(
        &s,
        &acct,
        &o,
        &r,
        "badCSR",
        "the certificate key is the account key of another account",
    )
    .await;
    let a = attempts(&s);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].kind, ReuseKind::AccountKey);
    assert!(acct.kid.ends_with(&a[0].attempted.account_id));
    assert!(owner.kid.ends_with(&a[0].holder.account_id));
}

/// A client that keeps trying another account's key fills only its own share of the
/// key-reuse table; an earlier attempt by another account stays listed.
#[tokio::test]
async fn key_reuse_attempts_are_bounded_per_account() {
    let s = TestServer::new();
    let owner = s.new_account().await;
    let quiet = s.new_account().await;
    let flood = s.new_account().await;
    let owner_key = rcgen::KeyPair::try_from(owner.key.pkcs8.as_slice()).expect("rcgen key");
    let (_, r) = order_and_finalize(&s, &quiet, &["quiet-1.plant.example"], &owner_key).await;
    r.assert_problem(400, "badCSR");
    let names = ["loop-1.plant.example"];
    let o = ready_order(&s, &flood, &names).await;
    let der = csr(&names, &owner_key);
    let max = ca_server::ra::keycheck::attempts::MAX_PER_ACCOUNT;
    for _ in 0..max + 5 {
        s.finalize(&flood, &o, &der)
            .await
            .assert_problem(400, "badCSR");
    }
    let a = attempts(&s);
    let of = |acct: &Account| {
        a.iter()
            .filter(|x| acct.kid.ends_with(&format!("/{}", x.attempted.account_id)))
            .count()
    };
    assert_eq!(of(&flood), max);
    assert_eq!(of(&quiet), 1);
    assert_eq!(a.len(), max + 1);
    assert_eq!(a[0].attempted.identifiers[0].value, "quiet-1.plant.example");
}

#[tokio::test]
async fn reuse_across_devices_and_accounts_is_refused_and_recorded() {
    let s = TestServer::new();
    let vendor = s.new_account().await;
    let other = s.new_account().await;
    // One key image flashed onto every unit of a product line.
    let shared = rcgen::KeyPair::generate().expect("key");
    let (_, r) = order_and_finalize(&s, &vendor, &["unit-1.plant.example"], &shared).await;
    assert_issued(&r);
    let serial = issued_serial(&r);
    let fingerprint = fingerprint_of(&shared);
    let used = key_use(&s, &fingerprint);
    assert_eq!(used.serial, serial);
    assert_eq!(used.key_type, "ECDSA P-256");

    refused_to_unit_2_and_to_other(&s, &vendor, &other, &shared).await;

    let a = attempts(&s);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].kind, ReuseKind::OtherDevice);
    assert_eq!(a[0].attempted.identifiers[0].value, "unit-2.plant.example");
    assert_eq!(a[0].holder.identifiers[0].value, "unit-1.plant.example");
    assert_eq!(a[0].holder.serial.as_deref(), Some(serial.as_str()));
    assert_eq!(a[1].kind, ReuseKind::OtherAccount);
    assert!(other.kid.ends_with(&a[1].attempted.account_id));
    assert!(vendor.kid.ends_with(&a[1].holder.account_id));
    assert!(a.iter().all(|x| x.spki_sha256 == fingerprint));
    // The KeyUse record still names the first holder.
    let used = key_use(&s, &fingerprint);
    assert_eq!(used.serial, serial);
}

/// `shared`, certified for `vendor`'s unit-1, is refused for `vendor`'s unit-2 (another
/// device) and for `other`, even for unit-1 (another account).
async fn refused_to_unit_2_and_to_other(
    s: &TestServer,
    vendor: &Account,
    other: &Account,
    shared: &rcgen::KeyPair,
) {
    let (o, r) = order_and_finalize(s, vendor, &["unit-2.plant.example"], shared).await;
    assert_refused(
        s,
        vendor,
        &o,
        &r,
        "badCSR",
        "already certified for [dns:unit-1.plant.example]",
    )
    .await;
    let (o, r) = order_and_finalize(s, other, &["unit-1.plant.example"], shared).await;
    assert_refused(
        s,
        other,
        &o,
        &r,
        "badCSR",
        "already certified for another account",
    )
    .await;
}

/// The key-use record of `fingerprint`, which must be there.
fn key_use(s: &TestServer, fingerprint: &str) -> KeyUse {
    s.app
        .db
        .get(Table::KeyUse, fingerprint)
        .expect("get")
        .expect("key-use record")
}

/// The key-use key of `key` ([`ca_server::key::spki_sha256`]).
fn fingerprint_of(key: &rcgen::KeyPair) -> String {
    ca_server::key::spki_sha256(
        &ca_server::key::policy::parse_spki(&rcgen::PublicKeyData::subject_public_key_info(key))
            .expect("spki"),
    )
}

/// Serial (hex) of an issued certificate, from its URL in the finalize answer.
fn issued_serial(r: &Reply) -> String {
    r.json()["certificate"]
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .expect("cert url")
        .to_owned()
}

#[tokio::test]
async fn a_key_stays_refused_after_retention_reduced_its_certificate() {
    let s = TestServer::new();
    let vendor = s.new_account().await;
    let other = s.new_account().await;
    let shared = rcgen::KeyPair::generate().expect("key");
    let leaked = rcgen::KeyPair::generate().expect("key");
    let (_, r) = order_and_finalize(&s, &vendor, &["unit-1.plant.example"], &shared).await;
    assert_issued(&r);
    let (_, r) = order_and_finalize(&s, &vendor, &["unit-9.plant.example"], &leaked).await;
    assert_issued(&r);
    ca_server::ra::revocation::record_revocation(
        &s.app,
        &issued_serial(&r),
        1,
        ca_server::ca::cert::RevokedBy::Operator,
    )
    .expect("revoke for keyCompromise");

    // Long after both certificates expired: reduced into the history, and their key-use
    // records retired there.
    let later = ca_server::types::now() + 400 * 86_400;
    let pruned = ca_server::ra::retention::prune(&s.app, later).expect("prune");
    assert_eq!(pruned.certificates, 2, "{pruned:?}");
    let fingerprint = fingerprint_of(&shared);
    let whole: Option<KeyUse> = s.app.db.get(Table::KeyUse, &fingerprint).expect("get");
    assert!(whole.is_none(), "{whole:?}");
    let used = ca_server::ra::history::retired_key(&s.app, &fingerprint)
        .expect("read")
        .expect("retired key-use record");
    assert!(used.is_retired(), "{used:?}");

    // Refused as before: the holder comes from the reduced certificate.
    refused_to_unit_2_and_to_other(&s, &vendor, &other, &shared).await;
    let (o, r) = order_and_finalize(&s, &other, &["unit-3.plant.example"], &leaked).await;
    assert_refused(&s, &other, &o, &r, "badPublicKey", "key was compromised").await;
    let a = attempts(&s);
    assert_eq!(a[0].kind, ReuseKind::OtherDevice);
    assert_eq!(a[0].holder.identifiers[0].value, "unit-1.plant.example");
    assert_eq!(a[1].kind, ReuseKind::OtherAccount);
    assert!(vendor.kid.ends_with(&a[1].holder.account_id));
}

#[tokio::test]
async fn renewal_with_the_same_key_is_refused_by_default() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let key = rcgen::KeyPair::generate().expect("key");
    let (_, r) = order_and_finalize(&s, &acct, &["plc-5.plant.example"], &key).await;
    assert_issued(&r);
    let (o, r) = order_and_finalize(&s, &acct, &["plc-5.plant.example"], &key).await;
    assert_refused(
        &s,
        &acct,
        &o,
        &r,
        "badCSR",
        "requires a new key for every certificate",
    )
    .await;
    assert_eq!(attempts(&s)[0].kind, ReuseKind::Renewal);
    // A new key renews.
    let fresh = rcgen::KeyPair::generate().expect("key");
    assert_issued(
        &s.finalize(&acct, &o, &csr(&["plc-5.plant.example"], &fresh))
            .await,
    );
}

#[tokio::test]
async fn renewal_with_the_same_key_is_allowed_by_config_but_not_across_devices() {
    let s = TestServer::with(|cfg| cfg.keys.allow_renewal_key_reuse = true);
    let acct = s.new_account().await;
    let key = rcgen::KeyPair::generate().expect("key");
    let (_, first) = order_and_finalize(&s, &acct, &["plc-6.plant.example"], &key).await;
    assert_issued(&first);
    let (_, second) = order_and_finalize(&s, &acct, &["plc-6.plant.example"], &key).await;
    assert_issued(&second);
    assert_ne!(first.json()["certificate"], second.json()["certificate"]);
    assert!(attempts(&s).is_empty());
    // The index follows the newest certificate.
    let fingerprint = fingerprint_of(&key);
    let used = key_use(&s, &fingerprint);
    assert!(second.json()["certificate"]
        .as_str()
        .unwrap_or_default()
        .ends_with(&used.serial));
    assert!(used.first_certified <= used.last_certified);
    // Still one key per device.
    let (o, r) = order_and_finalize(&s, &acct, &["plc-7.plant.example"], &key).await;
    assert_refused(
        &s,
        &acct,
        &o,
        &r,
        "badCSR",
        "every device needs a key of its own",
    )
    .await;

    // Once a certificate for the key is revoked for keyCompromise, not even a renewal may
    // reuse it.
    s.app
        .db
        .update(
            Table::Certificates,
            &used.serial,
            |mut c: ca_server::ca::cert::Certificate| {
                c.revoked = Some(ca_server::ca::cert::Revocation {
                    reason: 1,
                    at: 0,
                    issuer: c.issuer,
                    by: Some(ca_server::ca::cert::RevokedBy::CertificateKey),
                    not_after: Some(c.not_after),
                });
                Ok(c)
            },
        )
        .expect("revoke");
    let (o, r) = order_and_finalize(&s, &acct, &["plc-6.plant.example"], &key).await;
    assert_refused(
        &s,
        &acct,
        &o,
        &r,
        "badPublicKey",
        "revoked because the key was compromised",
    )
    .await;
    // Recorded as a weak-key attempt (not as reuse) for the audit.
    let weak = ca_server::ra::keycheck::WeakKeyAttempt::list(&s.app).expect("list");
    assert_eq!(weak.len(), 1);
    assert_eq!(weak[0].kind, WeakKind::Compromised);
    assert_eq!(weak[0].spki_sha256.as_deref(), Some(fingerprint.as_str()));
}

/// Orders for different devices finalized at the same moment with one key: exactly one
/// certificate is issued and every other attempt is refused and recorded. (Whether requests
/// overlap here depends on scheduling; `a_key_is_reserved_between_check_and_issuance` tests
/// the reservation itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_finalizes_of_one_key_for_different_devices_issue_once() {
    let s = TestServer::new();
    let acct = s.new_account().await;
    let shared = rcgen::KeyPair::generate().expect("key");
    let mut requests = Vec::new();
    for i in 0..8 {
        let name = format!("unit-{i}.line.example");
        let o = ready_order(&s, &acct, &[name.as_str()]).await;
        let fin = o["finalize"].as_str().expect("fin").to_owned();
        let body = json!({"csr": b64(csr(&[name.as_str()], &shared))});
        requests.push(s.signed_post(&acct, &fin, Some(&body)).await);
    }
    let mut issued = 0;
    for r in common::send_concurrently(&s, requests).await {
        if r.status == StatusCode::OK {
            issued += 1;
        } else {
            r.assert_problem(400, "badCSR");
        }
    }
    assert_eq!(issued, 1);
    let a = attempts(&s);
    assert_eq!(a.len(), 7);
    assert!(a
        .iter()
        .all(|x| matches!(x.kind, ReuseKind::OtherDevice | ReuseKind::Concurrent)));
}

/// The reservation `keycheck::check` returns keeps a second order from passing the checks
/// with the same key until the first has recorded its certificate or given up.
#[tokio::test]
async fn a_key_is_reserved_between_check_and_issuance() {
    use ca_server::ra::order::Order;
    let s = TestServer::new();
    let acct = s.new_account().await;
    let account: ca_server::ra::account::Account = s
        .app
        .db
        .get(Table::Accounts, acct.kid.rsplit('/').next().expect("id"))
        .expect("get")
        .expect("account");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut orders = Vec::new();
    for name in ["unit-a.line.example", "unit-b.line.example"] {
        let o = ready_order(&s, &acct, &[name]).await;
        let id = o["url"]
            .as_str()
            .and_then(|u| u.rsplit('/').next())
            .expect("id");
        let order: Order = s
            .app
            .db
            .get(Table::Orders, id)
            .expect("get")
            .expect("order");
        let info = ca_server::ca::csr::parse_and_verify(&csr(&[name], &key)).expect("csr");
        orders.push((order, info));
    }
    let check =
        |i: usize| ca_server::ra::keycheck::check(&s.app, &account, &orders[i].0, &orders[i].1);

    let first = check(0).expect("first order passes");
    let again = check(0).expect("the same order may be finalized twice at once");
    let err = check(1)
        .err()
        .expect("second order refused while the first holds the key");
    assert!(
        matches!(&err, ca_server::Error::BadCsr(d) if d.contains("right now")),
        "{err}"
    );
    let a = attempts(&s);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].kind, ReuseKind::Concurrent);
    assert_eq!(
        a[0].holder.order_id.as_deref(),
        Some(orders[0].0.id.as_str())
    );
    drop(first);
    assert!(
        check(1).is_err(),
        "still held by the second finalize of order 0"
    );
    drop(again);
    // Released without a certificate: the key is free again.
    assert!(check(1).is_ok());
}
