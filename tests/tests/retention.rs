//! Retention against the real CA: devices renew round after round with certificates valid for
//! seconds (`issuance.lab_cert_validity`) and a `storage.retention` of seconds. Orders and
//! authorizations stop piling up, every certificate stays findable (expired ones as entries
//! of their device's history), and the CRL drops a revoked certificate once a CRL published past its
//! notAfter listed it. Record counts come from the manifest `ca-server backup` prints.

#[path = "common/acme.rs"]
mod acme;

use std::collections::BTreeMap;
use std::time::Duration;

use iiot_acme_tests::cli::operator;
use iiot_acme_tests::{temp_dir, CaServer, CaServerOpts};
use instant_acme::Identifier;

const DEVICES: usize = 4;
const ROUNDS: usize = 12;

/// Store records per table, from the manifest of a backup of the running CA.
fn records(server: &CaServer, work: &std::path::Path, n: usize) -> BTreeMap<String, u64> {
    let pass = work.join("pass");
    std::fs::write(&pass, "retention test passphrase").expect("passphrase");
    let out = work.join(format!("b{n}.backup"));
    let printed = operator(
        server,
        &[
            "backup",
            "--out",
            out.to_str().expect("path"),
            "--passphrase-file",
            pass.to_str().expect("path"),
        ],
    );
    let line = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("store:"))
        .unwrap_or_else(|| panic!("no store line in {printed}"));
    let tables = line
        .split_once('(')
        .and_then(|(_, t)| t.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no tables in {line}"));
    tables
        .split(", ")
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (name, n) = t.rsplit_once(' ').expect("table count");
            (name.to_owned(), n.parse().expect("count"))
        })
        .collect()
}

fn total(r: &BTreeMap<String, u64>) -> u64 {
    r.values().sum()
}

fn count(r: &BTreeMap<String, u64>, table: &str) -> u64 {
    r.get(table).copied().unwrap_or(0)
}

/// The serial (hex) of the leaf of a PEM chain.
fn serial(chain: &str) -> String {
    let leaf = &acme::split_chain(chain)[0];
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(leaf.as_bytes())
        .map(|d: rustls_pki_types::CertificateDer<'static>| d.to_vec())
        .expect("leaf PEM");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("leaf");
    hex_lower(cert.raw_serial())
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serials listed by the CRL file of the EC intermediate.
fn crl_serials(server: &CaServer) -> Vec<String> {
    let pem = std::fs::read(server.data_dir().join("crl.pem")).expect("crl.pem");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("CRL PEM");
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).expect("CRL");
    crl.iter_revoked_certificates()
        .map(|r| hex_lower(r.raw_serial()))
        .collect()
}

#[test]
fn renewals_with_short_retention_keep_the_store_flat_and_certificates_findable() {
    // The harness and the operator commands block; only the ACME client runs on the runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = CaServer::start(CaServerOpts {
        lab_always_valid: true,
        rate_limits: false,
        issuance_extra: vec![
            ("lab_cert_validity".into(), "3s".into()),
            ("order_lifetime".into(), "3s".into()),
            ("authz_lifetime".into(), "3s".into()),
        ],
        extra_toml: "[storage]\nretention = \"2s\"\n".into(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let work = temp_dir("iiot-retention-").expect("work dir");
    let root = server.root_pem_path();
    let mut accounts = Vec::new();
    for _ in 0..DEVICES {
        let account = rt.block_on(acme::account(server.directory_url(), &root));
        accounts.push(account.expect("account"));
    }
    let tokens = acme::Tokens::default();
    let mut after_round = Vec::new();
    let mut revoked = Vec::new();
    for round in 1..=ROUNDS {
        let mut serials = Vec::new();
        for (d, account) in accounts.iter().enumerate() {
            let name = format!("dev-{d}.plant.example");
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(vec![name.clone()]).expect("params");
            params.distinguished_name = rcgen::DistinguishedName::new();
            let csr = params.serialize_request(&key).expect("CSR");
            let ids = [Identifier::Dns(name)];
            let chain = rt
                .block_on(acme::issue(account, &tokens, &ids, "default", csr.der()))
                .unwrap_or_else(|e| panic!("round {round}, device {d}: {e:#}"));
            serials.push(serial(&chain));
        }
        // Revocations in rounds 1, 7 and 10; each one publishes a CRL.
        if [1, 7, 10].contains(&round) {
            let s = serials[round % DEVICES].clone();
            operator(
                &server,
                &["revoke", "--serial", &s, "--reason", "superseded"],
            );
            revoked.push(s);
        }
        if round == 5 || round == ROUNDS {
            after_round.push(records(&server, work.path(), round));
        }
        std::thread::sleep(Duration::from_millis(1200));
    }
    let (fifth, last) = (&after_round[0], &after_round[1]);
    eprintln!(
        "records after round 5: {} {fifth:?}\nafter round {ROUNDS}: {} {last:?}",
        total(fifth),
        total(last)
    );

    // Orders, authorizations and the orders lists stop growing: only those that ended within
    // the last seconds are kept (how many depends on the machine's speed, never half of them).
    for table in ["orders", "authzs", "account_orders"] {
        assert!(
            count(last, table) < (ROUNDS * DEVICES) as u64 / 2,
            "{table} keeps {} of {} renewals ({} after round 5)",
            count(last, table),
            ROUNDS * DEVICES,
            count(fifth, table)
        );
    }
    // What each renewal keeps for good is an entry in its device's history record, its
    // serial's index entry and its retired key-use record, all in the history table: the
    // certificates and key-use tables keep only the certificates not yet reduced.
    for table in ["certificates", "key_use"] {
        assert!(
            count(last, table) < (ROUNDS * DEVICES) as u64 / 2,
            "{table} keeps {} of {} renewals",
            count(last, table),
            ROUNDS * DEVICES
        );
    }
    let reduced = (ROUNDS * DEVICES) as u64 - count(last, "certificates");
    assert!(
        count(last, "history") >= DEVICES as u64 + reduced
            && count(last, "history") <= DEVICES as u64 + 2 * (ROUNDS * DEVICES) as u64,
        "history keeps {} records for {reduced} reduced certificates",
        count(last, "history")
    );
    for table in ["accounts", "account_keys", "identities"] {
        assert_eq!(count(last, table), count(fifth, table), "{table}");
    }

    // Every certificate is still found, expired ones as reduced entries: the audit counts
    // them all and lists the one revoked in the first round, long since reduced.
    let audit: serde_json::Value =
        serde_json::from_str(&operator(&server, &["audit", "--json"])).expect("audit JSON");
    assert_eq!(
        audit["certificates"]["total"].as_u64(),
        Some((ROUNDS * DEVICES) as u64),
        "{audit}"
    );
    let listed: Vec<&str> = audit["revoked"]
        .as_array()
        .expect("revoked list")
        .iter()
        .filter_map(|r| r["serial"].as_str())
        .collect();
    assert!(listed.contains(&revoked[0].as_str()), "{listed:?}");

    // The CRL signed at the last revocation no longer lists the first one: the CRL of the
    // second revocation listed it past its notAfter. It lists the two later ones.
    let crl = crl_serials(&server);
    assert!(!crl.contains(&revoked[0]), "{crl:?}");
    assert!(
        crl.contains(&revoked[1]) && crl.contains(&revoked[2]),
        "{crl:?}"
    );
}
