//! Backup and restore of a running CA: `ca-server backup` while devices enroll, `ca-server
//! restore` into a new data directory, and the restored CA, started on other ports, knows every
//! certificate issued before the backup (renewal information answers, revocation works), no
//! issuance that completed during the backup is there by halves, and its CRL numbers go on
//! above the original's. A wrong passphrase, a truncated file and a used directory are refused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iiot_acme_tests::process::{run_with_timeout, RunOutput};
use iiot_acme_tests::{ca_server_bin, CaServer, CaServerOpts};
use instant_acme::{
    Account, AccountCredentials, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy, RevocationRequest,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

#[path = "common/acme.rs"]
mod acme;

use acme::{serve_http01, Tokens};

/// How far restore moves the CRL number on (ca-server's `ra::backup::CRL_NUMBER_GAP`).
const CRL_NUMBER_GAP: u64 = 1 << 20;

/// A certificate a device received, and when.
struct Enrolled {
    credentials: String,
    order_url: String,
    chain_pem: String,
    received: Instant,
}

async fn enroll(
    directory: &str,
    root: &Path,
    tokens: &Tokens,
    name: &str,
) -> anyhow::Result<Enrolled> {
    let (account, credentials) = Account::builder_with_root(root)?
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            None,
        )
        .await?;
    let mut order = account
        .new_order(&NewOrder::new(&[Identifier::Dns(name.to_owned())]))
        .await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a?;
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| anyhow::anyhow!("no http-01"))?;
        tokens
            .lock()
            .expect("lock")
            .insert(ch.token.clone(), ch.key_authorization().as_str().to_owned());
        ch.set_ready().await?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .timeout(Duration::from_secs(30));
    let status = order.poll_ready(&retry).await?;
    anyhow::ensure!(status == OrderStatus::Ready, "order {status:?}");
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    order
        .finalize_csr(params.serialize_request(&key)?.der())
        .await?;
    let chain_pem = order.poll_certificate(&retry).await?;
    Ok(Enrolled {
        credentials: serde_json::to_string(&credentials)?,
        order_url: order.url().to_owned(),
        chain_pem,
        received: Instant::now(),
    })
}

/// Runs `ca-server ARGS` (blocking), with its output in `log_dir`.
fn ca_server(args: &[&std::ffi::OsStr], log_dir: &Path, name: &str) -> RunOutput {
    let mut cmd = Command::new(ca_server_bin().expect("ca-server binary"));
    cmd.args(args);
    run_with_timeout(name, &mut cmd, log_dir, Duration::from_secs(120)).expect("ca-server runs")
}

/// The CRL number of the CRL the CA at `base` serves at `/crl`.
fn crl_number(base: &str, root: &Path) -> u64 {
    let der = iiot_acme_tests::https::client_trusting(root)
        .expect("client")
        .get(format!("{base}/crl"))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.bytes())
        .expect("GET /crl");
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("a CRL");
    let number = crl.crl_number().expect("a CRL number");
    u64::try_from(number).expect("a CRL number that fits u64")
}

/// The leaf certificate of a PEM chain.
fn leaf(chain_pem: &str) -> CertificateDer<'static> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
}

/// The HTTP status of the renewal information (RFC 9773) for `cert` at the CA at `base`.
fn renewal_info_status(base: &str, root: &Path, cert: &CertificateDer<'_>) -> u16 {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use x509_parser::extensions::ParsedExtension;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).expect("a certificate");
    let aki = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref(),
            _ => None,
        })
        .expect("an authority key identifier");
    // RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial DER content octets).
    let id = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(aki.0),
        URL_SAFE_NO_PAD.encode(parsed.raw_serial())
    );
    let url = format!("{base}/acme/renewal-info/{id}");
    iiot_acme_tests::https::get(&url, root)
        .expect("GET renewalInfo")
        .0
}

/// The same credentials, for the CA now at `new_base` (the restored CA listens elsewhere).
fn moved(credentials: &str, old_base: &str, new_base: &str) -> AccountCredentials {
    serde_json::from_str(&credentials.replace(old_base, new_base)).expect("credentials")
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_a_ca_that_knows_every_certificate() {
    let original = tokio::task::spawn_blocking(|| CaServer::start(CaServerOpts::default()))
        .await
        .expect("join")
        .expect("ca-server starts");
    let tokens: Tokens = Arc::default();
    serve_http01(original.http_port(), tokens.clone())
        .await
        .expect("http-01 responder");
    let directory = original.directory_url();
    let old_base = directory.trim_end_matches("/directory").to_owned();
    let root = original.root_pem_path();
    let work = iiot_acme_tests::temp_dir("iiot-backup-").expect("tempdir");
    let passfile = work.path().join("passphrase");
    std::fs::write(&passfile, "a long passphrase kept in the plant safe\n").expect("write");

    // Devices enroll throughout: before, during and after the backup.
    let enrolled: Arc<Mutex<Vec<Enrolled>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (directory, root, tokens, enrolled, stop) = (
            directory.clone(),
            root.clone(),
            tokens.clone(),
            enrolled.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("dev-{w}-{i}.plant.test");
                i += 1;
                match enroll(&directory, &root, &tokens, &name).await {
                    Ok(e) => enrolled.lock().expect("lock").push(e),
                    Err(e) => eprintln!("{name}: {e:#}"),
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while enrolled.lock().expect("lock").len() < 12 {
        assert!(
            Instant::now() < deadline,
            "load too slow:\n{}",
            original.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One revocation before the backup, so the original publishes a CRL for it.
    let revoked_before = {
        let list = enrolled.lock().expect("lock");
        (list[0].credentials.clone(), list[0].chain_pem.clone())
    };
    let account = Account::builder_with_root(&root)
        .expect("builder")
        .from_credentials(serde_json::from_str(&revoked_before.0).expect("creds"))
        .await
        .expect("account");
    account
        .revoke(&RevocationRequest {
            certificate: &leaf(&revoked_before.1),
            reason: None,
        })
        .await
        .expect("revoke before the backup");
    let last_crl_before = {
        let (base, root) = (old_base.clone(), root.clone());
        tokio::task::spawn_blocking(move || crl_number(&base, &root))
            .await
            .expect("join")
    };

    let out = work.path().join("ca.backup");
    let backup_started = Instant::now();
    let (o, p, d) = (
        out.clone(),
        passfile.clone(),
        original.data_dir().to_owned(),
    );
    let wd = work.path().to_owned();
    let backed_up = tokio::task::spawn_blocking(move || {
        ca_server(
            &[
                os("backup"),
                os("--data-dir"),
                d.as_os_str(),
                os("--out"),
                o.as_os_str(),
                os("--passphrase-file"),
                p.as_os_str(),
            ],
            &wd,
            "backup",
        )
    })
    .await
    .expect("join");
    let backup_ended = Instant::now();
    assert!(
        backed_up.status.success(),
        "backup failed:\n{}",
        backed_up.tails()
    );
    eprintln!(
        "backup under load took {:?}:\n{}",
        backup_ended - backup_started,
        backed_up.stdout
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out)
            .expect("backup file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "backup file mode {mode:o}");
    }
    // Some issuances after the backup, then the load stops.
    let count_at_backup = enrolled.lock().expect("lock").len();
    while enrolled.lock().expect("lock").len() < count_at_backup + 4 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "load stalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("worker ends")
            .expect("worker");
    }
    let enrolled = std::mem::take(&mut *enrolled.lock().expect("lock"));

    // Refusals: a wrong passphrase, a truncated file, a data directory in use.
    {
        let (out, work) = (out.clone(), work.path().to_owned());
        tokio::task::spawn_blocking(move || refusals(&out, &work))
            .await
            .expect("join");
    }

    let restored_dir = work.path().join("restored");
    let (o, p, r, wd) = (
        out.clone(),
        passfile.clone(),
        restored_dir.clone(),
        work.path().to_owned(),
    );
    let restored_run = tokio::task::spawn_blocking(move || {
        ca_server(
            &[
                os("restore"),
                o.as_os_str(),
                os("--data-dir"),
                r.as_os_str(),
                os("--passphrase-file"),
                p.as_os_str(),
            ],
            &wd,
            "restore",
        )
    })
    .await
    .expect("join");
    assert!(
        restored_run.status.success(),
        "restore failed:\n{}",
        restored_run.tails()
    );
    assert!(
        restored_run.stdout.contains("root SHA-256:"),
        "{}",
        restored_run.stdout
    );

    let restored = tokio::task::spawn_blocking(move || {
        CaServer::start(CaServerOpts {
            data_dir: Some(restored_dir),
            ..CaServerOpts::default()
        })
    })
    .await
    .expect("join")
    .expect("the restored CA starts");
    let new_base = restored
        .directory_url()
        .trim_end_matches("/directory")
        .to_owned();
    assert_ne!(new_base, old_base);
    let new_root = restored.root_pem_path();
    assert_eq!(
        std::fs::read(&new_root).expect("restored root"),
        std::fs::read(&root).expect("root"),
        "the same root"
    );

    // Its first CRL is numbered above the original's last one before the backup.
    let first_crl = {
        let (base, root) = (new_base.clone(), new_root.clone());
        tokio::task::spawn_blocking(move || crl_number(&base, &root))
            .await
            .expect("join")
    };
    assert!(
        first_crl > last_crl_before + CRL_NUMBER_GAP,
        "restored CRL number {first_crl}, last before the backup {last_crl_before}"
    );

    // Every certificate received before the backup started is known; those received while it
    // ran are there whole or not at all.
    let (mut known, mut during_known, mut during_absent) = (0, 0, 0);
    for e in &enrolled {
        let cert = leaf(&e.chain_pem);
        let status = {
            let (base, root, cert) = (
                new_base.clone(),
                new_root.clone(),
                cert.clone().into_owned(),
            );
            tokio::task::spawn_blocking(move || renewal_info_status(&base, &root, &cert))
                .await
                .expect("join")
        };
        let before = e.received < backup_started;
        let after = e.received > backup_ended;
        if before {
            assert_eq!(
                status, 200,
                "renewalInfo of a certificate issued before the backup"
            );
            known += 1;
        }
        if after {
            continue;
        }
        let account = Account::builder_with_root(&new_root)
            .expect("builder")
            .from_credentials(moved(&e.credentials, &old_base, &new_base))
            .await
            .expect("the account is restored");
        let order_url = e.order_url.replace(&old_base, &new_base);
        let mut order = account
            .order(order_url)
            .await
            .expect("the order is restored");
        match status {
            200 => {
                assert_eq!(order.state().status, OrderStatus::Valid, "{}", e.order_url);
                let chain = order
                    .certificate()
                    .await
                    .expect("download")
                    .expect("certificate");
                assert_eq!(chain, e.chain_pem);
                if !before {
                    during_known += 1;
                }
            }
            404 => {
                assert!(!before);
                assert_ne!(
                    order.state().status,
                    OrderStatus::Valid,
                    "an order valid in the backup whose certificate is not"
                );
                during_absent += 1;
            }
            other => panic!("renewalInfo answered {other}"),
        }
    }
    eprintln!(
        "{known} certificates from before the backup known to the restored CA; of those issued \
         during it, {during_known} in the backup and {during_absent} not"
    );
    assert!(known >= 12);

    // Revocation works on the restored CA for a certificate from before the backup.
    let victim = enrolled
        .iter()
        .skip(1)
        .find(|e| e.received < backup_started)
        .expect("a certificate from before the backup");
    let account = Account::builder_with_root(&new_root)
        .expect("builder")
        .from_credentials(moved(&victim.credentials, &old_base, &new_base))
        .await
        .expect("account");
    account
        .revoke(&RevocationRequest {
            certificate: &leaf(&victim.chain_pem),
            reason: None,
        })
        .await
        .expect("revocation on the restored CA");
    let after_revocation = {
        let (base, root) = (new_base.clone(), new_root.clone());
        tokio::task::spawn_blocking(move || crl_number(&base, &root))
            .await
            .expect("join")
    };
    assert!(after_revocation > first_crl);
    // The certificate revoked before the backup is still revoked.
    let account = Account::builder_with_root(&new_root)
        .expect("builder")
        .from_credentials(moved(&revoked_before.0, &old_base, &new_base))
        .await
        .expect("account");
    let err = account
        .revoke(&RevocationRequest {
            certificate: &leaf(&revoked_before.1),
            reason: None,
        })
        .await
        .expect_err("already revoked");
    assert!(err.to_string().contains("alreadyRevoked"), "{err}");

    tokio::task::spawn_blocking(move || {
        drop(restored);
        drop(original);
    })
    .await
    .expect("join");
}

/// A wrong passphrase, a truncated file and a used data directory are refused with a message,
/// not a panic, and leave no data directory behind.
fn refusals(out: &Path, work: &Path) {
    let wrong = work.join("wrong-passphrase");
    std::fs::write(&wrong, "not the passphrase\n").expect("write");
    let right = work.join("passphrase");
    let bytes = std::fs::read(out).expect("read backup");
    let truncated = work.join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let used = work.join("used");
    std::fs::create_dir_all(&used).expect("mkdir");
    std::fs::write(used.join("keep"), "x").expect("write");
    let cases: [(&Path, &Path, PathBuf, &str); 3] = [
        (out, &wrong, work.join("r-wrong"), "wrong passphrase"),
        (
            &truncated,
            &right,
            work.join("r-truncated"),
            "truncated or corrupted",
        ),
        (out, &right, used.clone(), "is not empty"),
    ];
    for (file, pass, dir, expected) in cases {
        let run = ca_server(
            &[
                os("restore"),
                file.as_os_str(),
                os("--data-dir"),
                dir.as_os_str(),
                os("--passphrase-file"),
                pass.as_os_str(),
            ],
            work,
            "refused-restore",
        );
        assert!(!run.status.success(), "{expected}: restore succeeded");
        assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        if dir != used {
            assert!(!dir.exists(), "{expected}: {} left behind", dir.display());
        }
    }
    assert!(used.join("keep").exists());
}
