//! Backup and restore with PostgreSQL: a CA on the embedded store moves onto a database with
//! `ca-server backup` and `ca-server restore --config`, a CA on PostgreSQL is backed up (by the
//! running instance over its admin socket, or by the command from the database) and restored
//! into another database, and a restore that fails or meets a database with records leaves the
//! database as it was. The instances run in process; the commands are the real binary.

mod common;

use std::path::Path;

use axum::http::StatusCode;
use ca_server::ra::audit::Actor;
use ca_server::ra::backup::{self, CRL_NUMBER_GAP};
use ca_server::storage::postgres::test_cluster::TestCluster;
use ca_server::storage::{Backend, Table};
use common::idevid::{Manufacturer, PEN};
use common::*;
use serde_json::{json, Value};

const PASSPHRASE: &str = "correct horse battery staple";

/// A fresh database of the shared test cluster: its URL and name.
fn fresh_database() -> (String, String) {
    let cluster = TestCluster::shared().unwrap_or_else(|e| panic!("{e}"));
    let db = cluster.fresh_database().unwrap_or_else(|e| panic!("{e}"));
    (cluster.url(&db), db)
}

/// How many records the database `db` of the shared test cluster holds.
fn records_in(db: &str) -> String {
    let cluster = TestCluster::shared().unwrap_or_else(|e| panic!("{e}"));
    cluster
        .psql(db, "SELECT count(*) FROM kv")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `ca-server ARGS` with `passphrase` in the environment: whether it succeeded, its
/// standard output and its standard error.
fn ca_server(args: &[&std::ffi::OsStr], passphrase: &str) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ca-server"))
        .args(args)
        .env("IIOT_ACME_BACKUP_PASSPHRASE", passphrase)
        .output()
        .expect("ca-server runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ca-server restore FILE --data-dir DIR --config CONFIG`.
fn restore(file: &Path, dir: &Path, config: &Path, passphrase: &str) -> (bool, String, String) {
    ca_server(
        &[
            "restore".as_ref(),
            file.as_os_str(),
            "--data-dir".as_ref(),
            dir.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        passphrase,
    )
}

/// An instance on the database at `url`, with the restored data directory `dir`.
fn instance_on(
    dir: tempfile::TempDir,
    url: &str,
    f: impl FnOnce(&mut ca_server::config::Config),
) -> TestServer {
    TestServer::with_dir(dir, |cfg| {
        cfg.storage.backend = Backend::Postgres;
        cfg.storage.url = Some(url.to_owned());
        f(cfg);
    })
}

/// The number of the CRL `s` serves, and whether it lists `serial`.
async fn crl(s: &TestServer, serial: &[u8]) -> (u64, bool) {
    let der = s.get(&s.url("/crl")).await.body;
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("CRL");
    let number = crl.crl_number().expect("number");
    let listed = crl
        .iter_revoked_certificates()
        .any(|r| r.raw_serial() == serial);
    (u64::try_from(number).expect("u64"), listed)
}

/// A certificate for `name` issued by `s` to `acct`: its DER and serial.
async fn enrolled(s: &TestServer, acct: &Account, name: &str) -> (Vec<u8>, Vec<u8>) {
    let order = ready_order(s, acct, &[name]).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let done = s.finalize(acct, &order, &csr(&[name], &key)).await.json();
    let der = leaf_der(&s.certificate_chain(acct, &done).await);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    let serial = cert.raw_serial().to_vec();
    (der, serial)
}

/// What a restored CA must do with a certificate issued before the backup: renewal
/// information answers for it, its account works, and it is revoked and put on a CRL numbered
/// above `crl_before` and the gap restore leaves.
async fn knows_and_revokes(
    s: &TestServer,
    acct: &Account,
    der: &[u8],
    serial: &[u8],
    crl_before: u64,
) {
    let id = ca_server::ra::renewal::cert_id_of(der).expect("ARI id");
    let ari = s.get(&s.url(&format!("/acme/renewal-info/{id}"))).await;
    ari.assert_status(StatusCode::OK);
    let account = s.post_as(acct, &acct.kid, None).await;
    account.assert_status(StatusCode::OK);
    assert_eq!(account.json()["status"], "valid");
    let (first, listed) = crl(s, serial).await;
    assert!(!listed);
    assert!(
        first > crl_before + CRL_NUMBER_GAP,
        "{first} after {crl_before}"
    );
    s.post_as(
        acct,
        &s.url("/acme/revoke-cert"),
        Some(&json!({"certificate": b64(der), "reason": 4})),
    )
    .await
    .assert_status(StatusCode::OK);
    let (number, listed) = crl(s, serial).await;
    assert!(listed, "the revocation is on the CRL");
    assert!(number > first);
}

/// A CA on the embedded store, with a device enrolled through an enrollment credential, a
/// trust anchor, an audit log and a device waiting for an operator, is backed up and restored
/// into PostgreSQL with the command; the instance started on it knows the device's certificate
/// and account, numbers its CRLs above the old CA's, takes the old credential, and has copied
/// the credential, anchor, log and waiting request into the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_on_the_embedded_store_moves_onto_postgres_with_backup_and_restore() {
    let approvals = |cfg: &mut ca_server::config::Config| {
        cfg.enrollment.operator_approval = true;
        cfg.enrollment.network_challenges = false;
    };
    let old = TestServer::with(approvals);
    let cred = credential(&old, &[], None);
    let acct = bound_account(&old, &cred).await;
    let (der, serial) = enrolled(&old, &acct, "plc-1.plant.example").await;
    let (crl_before, _) = crl(&old, &serial).await;
    let root_pem =
        Manufacturer::new("Example IDevID Root", &rcgen::PKCS_ECDSA_P256_SHA256).root_pem;
    old.app
        .anchors
        .add(root_pem.as_bytes(), Some("example"), PEN, &[])
        .expect("anchor");
    old.app
        .audit
        .append(
            &Actor::local_user(),
            "credential.create",
            &cred.kid,
            Value::Null,
        )
        .expect("audit");
    let (entries, _) = old.app.audit.read_checked().expect("log");
    // A second device asks for an operator's approval.
    let waiting = old.new_account().await;
    let (_, order) = old
        .create_order(
            &waiting,
            &json!({"identifiers": [{"type": "dns", "value": "plc-2.plant.example"}]}),
        )
        .await;
    let asked = old
        .answer(&waiting, &order, "operator-approval-01")
        .await
        .json();
    assert_eq!(asked["status"], "processing", "{asked}");
    assert_eq!(old.app.approvals.list_pending().expect("pending").len(), 1);

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("ca.backup");
    let data = old.dir.path().to_path_buf();
    let db = old.app.db.clone();
    let out = file.clone();
    tokio::task::spawn_blocking(move || {
        let pass = backup::passphrase(PASSPHRASE.to_owned()).expect("passphrase");
        backup::create(&db, &data, None, &out, pass)
    })
    .await
    .expect("join")
    .expect("backup");

    let (url, name) = fresh_database();
    let new_dir = tempfile::tempdir().expect("tempdir");
    let config = postgres_config_file(tmp.path(), new_dir.path(), &url);
    let (ok, stdout, stderr) = restore(&file, new_dir.path(), &config, PASSPHRASE);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("PostgreSQL"), "{stdout}");
    assert!(new_dir
        .path()
        .join(ca_server::storage::SHARED_MARKER)
        .is_file());
    assert!(!new_dir.path().join("db").exists(), "no embedded store");
    assert_ne!(records_in(&name), "0");

    let new = instance_on(new_dir, &url, approvals);
    knows_and_revokes(&new, &acct, &der, &serial, crl_before).await;
    bound_account(&new, &cred).await;
    let store = &new.app.db;
    assert!(store
        .get::<Value>(Table::Credentials, &cred.kid)
        .expect("get")
        .is_some());
    assert!(store
        .store()
        .get(Table::TrustAnchors, b"example")
        .expect("get")
        .is_some());
    assert_eq!(new.app.anchors.load().expect("anchors")[0].name, "example");
    let (log, chain) = new.app.audit.read_checked().expect("log");
    assert_eq!(chain, Ok(()));
    assert_eq!(
        log[..entries.len()],
        entries[..],
        "the old log, then what came since"
    );
    assert!(!store
        .keys_with_prefix(Table::AuditLog, "")
        .expect("scan")
        .is_empty());
    let pending = new.app.approvals.list_pending().expect("pending");
    assert_eq!(pending.len(), 1, "the waiting device waits on");
    assert!(!store
        .keys_with_prefix(Table::Approvals, "request/")
        .expect("scan")
        .is_empty());
}

/// A CA on PostgreSQL is backed up by the command from the database while no instance
/// answers, and by the running instance over its admin socket; the backup restores into
/// another database, where an instance knows the certificate and serves no CRL of the old
/// database's numbering. The restore is refused by a database with records, and one with the
/// wrong passphrase leaves its database without records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_on_postgres_is_backed_up_and_restored_into_another_database() {
    let (url, _) = fresh_database();
    let old = instance_on(tempfile::tempdir().expect("tempdir"), &url, |_| {});
    let cred = credential(&old, &[], None);
    let acct = bound_account(&old, &cred).await;
    let (der, serial) = enrolled(&old, &acct, "plc-1.plant.example").await;
    // Signed and kept in the database, where every instance serves it while it is fresh.
    let (crl_before, _) = crl(&old, &serial).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = postgres_config_file(tmp.path(), old.dir.path(), &url);
    let store_line = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with("store:"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{stdout}"))
    };

    // No instance answers on the socket: the command reads the database.
    let offline = tmp.path().join("offline.backup");
    let (ok, stdout, stderr) = ca_server(
        &[
            "backup".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--out".as_ref(),
            offline.as_os_str(),
        ],
        PASSPHRASE,
    );
    assert!(ok, "{stdout}{stderr}");
    let from_database = store_line(&stdout);
    assert!(from_database.contains("certificates 1"), "{from_database}");

    // The running instance writes it, asked over its socket.
    let socket = tokio::spawn(ca_server::admin::socket::serve(ca_server::ra::Ra::clone(
        &old.app,
    )));
    let path = ca_server::admin::socket::socket_path(old.dir.path());
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let online = tmp.path().join("online.backup");
    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let (dir, online) = (old.dir.path().to_owned(), online.clone());
        move || {
            ca_server(
                &[
                    "backup".as_ref(),
                    "--data-dir".as_ref(),
                    dir.as_os_str(),
                    "--out".as_ref(),
                    online.as_os_str(),
                ],
                PASSPHRASE,
            )
        }
    })
    .await
    .expect("join");
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(store_line(&stdout), from_database, "the same records");
    socket.abort();

    let (url2, name2) = fresh_database();
    let new_dir = tempfile::tempdir().expect("tempdir");
    let config2 = postgres_config_file(tmp.path(), new_dir.path(), &url2);
    // A wrong passphrase: refused, nothing written.
    let (ok, _, stderr) = restore(&online, new_dir.path(), &config2, "not it");
    assert!(!ok && stderr.contains("wrong passphrase"), "{stderr}");
    assert_eq!(records_in(&name2), "0");
    assert_eq!(std::fs::read_dir(new_dir.path()).expect("ls").count(), 0);

    let (ok, stdout, stderr) = restore(&online, new_dir.path(), &config2, PASSPHRASE);
    assert!(ok, "{stdout}{stderr}");
    // Once more into the same database: refused, and it keeps what it holds.
    let held = records_in(&name2);
    let elsewhere = tmp.path().join("elsewhere");
    let (ok, _, stderr) = restore(&offline, &elsewhere, &config2, PASSPHRASE);
    assert!(!ok && stderr.contains("already holds records"), "{stderr}");
    assert!(!elsewhere.exists());
    assert_eq!(records_in(&name2), held);

    // Into the embedded store, the records only the database holds would not be read.
    let sled = tmp.path().join("sled");
    let (ok, _, stderr) = ca_server(
        &[
            "restore".as_ref(),
            offline.as_os_str(),
            "--data-dir".as_ref(),
            sled.as_os_str(),
        ],
        PASSPHRASE,
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("credentials"),
        "{stderr}"
    );
    assert!(sled.join("db").is_dir());

    let new = instance_on(new_dir, &url2, |_| {});
    knows_and_revokes(&new, &acct, &der, &serial, crl_before).await;
    bound_account(&new, &cred).await;
    // The old database is the old CA's still: its CRL did not move.
    let (old_number, listed) = crl(&old, &serial).await;
    assert_eq!((old_number, listed), (crl_before, false));
}

/// A restore into PostgreSQL of a store of some thousands of records of a certificate's size
/// writes them all, in batches of one transaction.
#[test]
fn thousands_of_records_restore_into_postgres() {
    use ca_server::storage::{Db, Durability, MemoryStore, PgStore, PostgresConfig};
    const RECORDS: usize = 5000;
    let ca = TestServer::new();
    let db = Db::new(std::sync::Arc::new(MemoryStore::default()));
    let value = "x".repeat(1500);
    for i in 0..RECORDS {
        db.put(Table::Certificates, &format!("{i:08x}"), &value)
            .expect("put");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("big.backup");
    let pass = || backup::passphrase(PASSPHRASE.to_owned()).expect("passphrase");
    backup::create(&db, ca.dir.path(), None, &file, pass()).expect("backup");
    let (url, name) = fresh_database();
    let pg = PgStore::open_migrated(
        &PostgresConfig {
            url,
            password_file: None,
            pool_size: 2,
            tls: None,
        },
        Durability::PowerLoss,
    )
    .expect("open");
    let started = std::time::Instant::now();
    let restored = backup::restore_to(
        &file,
        &tmp.path().join("restored"),
        backup::Destination::Postgres(&pg),
        pass(),
    )
    .expect("restore");
    eprintln!(
        "restored {RECORDS} records of {} bytes into PostgreSQL in {:?}",
        value.len(),
        started.elapsed()
    );
    assert_eq!(restored.counts.records["certificates"], RECORDS as u64);
    // The records, and the CRL counter.
    assert_eq!(records_in(&name), (RECORDS + 1).to_string());
}
