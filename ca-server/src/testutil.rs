//! Helpers the unit tests of several modules share: CSRs built with rcgen or openssl, and RSA
//! keys from openssl (neither ring nor rcgen makes RSA keys).

use std::path::Path;
use std::process::Command;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType, SignatureAlgorithm};

/// A CSR built with rcgen: a fresh key of `alg`, an optional CN and the given SANs.
pub(crate) fn rcgen_csr(
    alg: &'static SignatureAlgorithm,
    cn: Option<&str>,
    sans: Vec<SanType>,
) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(alg).expect("key generation");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.subject_alt_names = sans;
    let csr = params.serialize_request(&key).expect("CSR");
    (key, csr.der().to_vec())
}

/// A dNSName SAN.
pub(crate) fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().expect("IA5 name"))
}

/// Runs `openssl` in `dir` and returns its stdout; panics with stderr if it fails. The
/// RSA, SHA-1 and MD5 fixtures come from here because neither ring nor rcgen creates them.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command must be installed for these tests");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl req` with a new or given key (`key_args`), subject CN=device.example and a SAN
/// for the same name, plus `extra` arguments; returns the DER CSR.
pub(crate) fn openssl_csr(dir: &Path, key_args: &[&str], extra: &[&str]) -> Vec<u8> {
    let mut args = vec![
        "req",
        "-new",
        "-nodes",
        "-subj",
        "/CN=device.example",
        "-addext",
        "subjectAltName=DNS:device.example",
        "-outform",
        "DER",
        "-out",
        "csr.der",
    ];
    args.extend_from_slice(key_args);
    args.extend_from_slice(extra);
    openssl(dir, &args);
    std::fs::read(dir.join("csr.der")).expect("csr.der")
}

/// An RSA key of `bits` bits in `dir/name`.
pub(crate) fn openssl_rsa_key(dir: &Path, name: &str, bits: u32) {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &format!("rsa_keygen_bits:{bits}"),
            "-out",
            name,
        ],
    );
}

/// Runs `f(0)` to `f(n - 1)` on `n` threads that start at the same moment, for races between
/// instances sharing a store; their results in that order.
pub(crate) fn race<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let start = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let racers: Vec<_> = (0..n)
            .map(|i| {
                let (f, start) = (&f, &start);
                s.spawn(move || {
                    start.wait();
                    f(i)
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|r| r.join().expect("join"))
            .collect()
    })
}
