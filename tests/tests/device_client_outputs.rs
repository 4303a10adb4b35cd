//! device-client's outputs besides PEM against the real `ca-server` (default P-256 keys, real
//! http-01 on loopback): `--der`, `--pkcs12` (read back by `openssl pkcs12`), and
//! `--opcua-pki` (the layout, the CA root taken from the TLS chain with a fingerprint pin, and
//! the issuing intermediate's CRL, which `openssl crl` verifies and `openssl verify -crl_check`
//! uses). `run --crl-refresh 1s`, and `enroll` with a valid certificate, pick up the
//! revocation of other devices (running the hook with `DEVICE_CLIENT_EVENT=crl` when a CRL changed,
//! not when it did not); while the CA is down the installed CRL stays. The post-install hook sees
//! every output in place; outputs left missing or stale are rebuilt without a new order; a failed
//! output write means an error and no hook.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use iiot_acme_tests::cli::operator;
use iiot_acme_tests::device_client::{device_client_bin, CLIENT_TIMEOUT, RUN_TIMEOUT};
use iiot_acme_tests::openssl::split_pem_certs;
use iiot_acme_tests::process::{poll_until, run_with_timeout, Daemon, RunOutput};
use iiot_acme_tests::{openssl_verify_crl, temp_dir, CaServer, CaServerOpts};

/// The hook: checks that every output is in place, then logs its event and the serial.
const HOOK: &str = r#"for f in "$DEVICE_CLIENT_CERT" "$DEVICE_CLIENT_PKCS12" \
  "$DEVICE_CLIENT_OPCUA_PKI/own/certs/device.der" "$DEVICE_CLIENT_OPCUA_PKI/own/private/device.pem"; do
  test -s "$f" || { echo "missing $f" >&2; exit 1; }; done
ls "$DEVICE_CLIENT_OPCUA_PKI"/issuer/crl/ca-*.crl "$DEVICE_CLIENT_OPCUA_PKI"/trusted/certs/root-*.der >/dev/null || exit 1
test -s "${DEVICE_CLIENT_CERT%.pem}.der" || exit 1
printf '%s %s\n' "$DEVICE_CLIENT_EVENT" "$DEVICE_CLIENT_SERIAL" >> hook.log"#;

/// `openssl x509 -fingerprint -sha256` of the CA root.
fn root_fingerprint(server: &CaServer) -> String {
    let out = openssl(
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            path_str(&server.root_pem_path()),
        ],
        None,
    );
    out.trim()
        .rsplit_once('=')
        .expect("fingerprint line")
        .1
        .to_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs openssl, which must succeed; its stdout.
fn openssl(args: &[&str], stdin_file: Option<&Path>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    if let Some(f) = stdin_file {
        cmd.stdin(fs::File::open(f).expect("stdin file"));
    }
    let out = cmd.output().expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The one file in `dir` whose name starts with `prefix` and ends with `suffix`.
fn one_file(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{prefix}*{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().expect("one")
}

/// A device with its own directory; `flags` come after the common ones.
struct Dev {
    dir: tempfile::TempDir,
    server_dir: String,
    fingerprint: String,
    http01: String,
    name: String,
}

impl Dev {
    fn new(server: &CaServer, name: &str) -> Self {
        Self {
            dir: temp_dir("iiot-dc-out-").expect("device directory"),
            server_dir: server.directory_url(),
            fingerprint: root_fingerprint(server),
            http01: format!("127.0.0.1:{}", server.http_port()),
            name: name.to_owned(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, sub: &str, flags: &[&str]) -> Command {
        let mut cmd = Command::new(device_client_bin().expect("device-client binary"));
        cmd.current_dir(self.dir.path())
            .arg(sub)
            .args(["--directory", &self.server_dir])
            .args(["--root-fingerprint", &self.fingerprint])
            .args(["--dns", &self.name])
            .args(["--http01-listen", &self.http01])
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--cert")
            .arg(self.path("tls/cert.pem"))
            .arg("--key")
            .arg(self.path("tls/cert.key.pem"))
            .arg("--fullchain")
            .arg(self.path("tls/fullchain.pem"))
            .args(flags)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self, label: &str, sub: &str, flags: &[&str]) -> RunOutput {
        run_with_timeout(
            label,
            &mut self.command(sub, flags),
            self.dir.path(),
            CLIENT_TIMEOUT,
        )
        .expect("device-client runs")
    }

    /// The serials the hook logged for new certificates (`DEVICE_CLIENT_EVENT=certificate`),
    /// uppercase like openssl prints them.
    fn hook_runs(&self) -> Vec<String> {
        self.hook_log()
            .lines()
            .filter_map(|l| l.strip_prefix("certificate "))
            .map(str::to_ascii_uppercase)
            .collect()
    }

    /// How often the hook ran for a changed CRL (`DEVICE_CLIENT_EVENT=crl`).
    fn crl_hook_runs(&self) -> usize {
        self.hook_log()
            .lines()
            .filter(|l| l.starts_with("crl "))
            .count()
    }

    fn hook_log(&self) -> String {
        fs::read_to_string(self.path("hook.log")).unwrap_or_default()
    }

    /// The serial of the installed certificate, as openssl prints it (uppercase hex).
    fn serial(&self) -> String {
        let out = openssl(
            &[
                "x509",
                "-noout",
                "-serial",
                "-in",
                path_str(&self.path("tls/cert.pem")),
            ],
            None,
        );
        out.trim()
            .strip_prefix("serial=")
            .expect("serial line")
            .to_owned()
    }
}

fn expect_code(out: &RunOutput, want: i32, what: &str, server: &CaServer) {
    assert_eq!(
        out.status.code(),
        Some(want),
        "{what}: expected exit {want}\n{}{}",
        out.tails(),
        server.logs()
    );
}

/// `openssl crl -text` of a DER CRL.
fn crl_text(crl: &Path) -> String {
    openssl(
        &[
            "crl",
            "-inform",
            "DER",
            "-noout",
            "-text",
            "-in",
            path_str(crl),
        ],
        None,
    )
}

#[test]
fn der_pkcs12_and_opcua_pki_outputs_from_the_real_ca() {
    let mut server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let dev = Dev::new(&server, "plc-7.plant.test");
    let pass = dev.path("p12.pass");
    fs::write(&pass, "correct horse battery\n").expect("passphrase");
    let p12 = dev.path("tls/device.p12");
    let pki = dev.path("opcua");
    let every_output = [
        "--der",
        "--pkcs12",
        path_str(&p12),
        "--pkcs12-passphrase-file",
        path_str(&pass),
        "--opcua-pki",
        path_str(&pki),
        "--post-install",
        HOOK,
    ];
    let out = dev.run("enroll", "enroll", &every_output);
    expect_code(&out, 0, "enroll with every output", &server);
    let serial = dev.serial();
    assert_eq!(dev.hook_runs().len(), 1, "{}", out.tails());

    let cert_pem = dev.path("tls/cert.pem");
    let cert_pubkey = openssl(
        &["x509", "-noout", "-pubkey", "-in", path_str(&cert_pem)],
        None,
    );
    let fullchain = fs::read_to_string(dev.path("tls/fullchain.pem")).expect("fullchain");
    let blocks = split_pem_certs(&fullchain);
    assert_eq!(blocks.len(), 2, "leaf + issuing intermediate: {fullchain}");
    let intermediate_pem = dev.path("intermediate.pem");
    fs::write(&intermediate_pem, &blocks[1]).expect("intermediate");

    // --der: the same certificate and key, as DER.
    let der_as_pem = openssl(
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            path_str(&dev.path("tls/cert.der")),
        ],
        None,
    );
    assert_eq!(der_as_pem, fs::read_to_string(&cert_pem).expect("cert.pem"));
    let key_der = dev.path("tls/cert.key.der");
    assert_eq!(mode(&key_der), 0o600);
    let key_pubkey = openssl(
        &[
            "pkey",
            "-inform",
            "DER",
            "-pubout",
            "-in",
            path_str(&key_der),
        ],
        None,
    );
    assert_eq!(
        key_pubkey, cert_pubkey,
        "cert.key.der is the certificate's key"
    );

    // --pkcs12: openssl reads it with the passphrase; its key is the certificate's, and it
    // holds leaf and intermediate.
    assert_eq!(mode(&p12), 0o600);
    let pass_arg = format!("file:{}", path_str(&pass));
    let dump = openssl(
        &[
            "pkcs12",
            "-in",
            path_str(&p12),
            "-passin",
            &pass_arg,
            "-nodes",
        ],
        None,
    );
    assert!(dump.contains("-----BEGIN PRIVATE KEY-----"), "{dump}");
    let dumped = split_pem_certs(&dump);
    assert_eq!(dumped.len(), 2, "{dump}");
    assert!(
        dumped.contains(&blocks[0]) && dumped.contains(&blocks[1]),
        "{dump}"
    );
    let key_only = dev.path("p12-key.pem");
    fs::write(
        &key_only,
        openssl(
            &[
                "pkcs12",
                "-in",
                path_str(&p12),
                "-passin",
                &pass_arg,
                "-nodes",
                "-nocerts",
            ],
            None,
        ),
    )
    .expect("key");
    assert_eq!(
        openssl(&["pkey", "-pubout", "-in", path_str(&key_only)], None),
        cert_pubkey,
        "the PKCS #12 key is the certificate's key"
    );
    let info = Command::new("openssl")
        .args([
            "pkcs12",
            "-info",
            "-noout",
            "-in",
            path_str(&p12),
            "-passin",
            &pass_arg,
        ])
        .output()
        .expect("openssl pkcs12 -info");
    let info =
        String::from_utf8_lossy(&info.stderr).into_owned() + &String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("PBES2") && info.contains("AES-256-CBC") && info.contains("sha256"),
        "{info}"
    );
    // 600,000 iterations for the key, the certificates and the MAC.
    assert_eq!(info.matches("Iteration 600000").count(), 3, "{info}");

    // --opcua-pki: the layout, modes, and the CA root although only its fingerprint was given.
    let own_cert = pki.join("own/certs/device.der");
    assert_eq!(
        fs::read(&own_cert).expect("own cert"),
        fs::read(dev.path("tls/cert.der")).expect("cert.der")
    );
    assert_eq!(mode(&pki.join("own/private")), 0o700);
    assert_eq!(mode(&pki.join("own/private/device.pem")), 0o600);
    assert_eq!(
        openssl(
            &[
                "pkey",
                "-pubout",
                "-in",
                path_str(&pki.join("own/private/device.pem"))
            ],
            None
        ),
        cert_pubkey
    );
    let root = one_file(&pki.join("trusted/certs"), "root-", ".der");
    assert_eq!(
        openssl(&["x509", "-inform", "DER", "-in", path_str(&root)], None),
        fs::read_to_string(server.root_pem_path()).expect("root")
    );
    let ca = one_file(&pki.join("issuer/certs"), "ca-", ".der");
    assert_eq!(
        openssl(&["x509", "-inform", "DER", "-in", path_str(&ca)], None),
        blocks[1]
    );
    assert!(pki.join("rejected/certs").is_dir());
    let crl = one_file(&pki.join("issuer/crl"), "ca-", ".crl");
    assert_eq!(
        fs::read(&crl).expect("crl"),
        fs::read(crl.with_extension("crl.der")).expect("crl.der copy")
    );
    // openssl checks the CRL's signature with the intermediate, then uses it for the leaf.
    let check = Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-in", path_str(&crl)])
        .args(["-CAfile", path_str(&intermediate_pem)])
        .output()
        .expect("openssl crl");
    assert!(
        check.status.success() && String::from_utf8_lossy(&check.stderr).contains("verify OK"),
        "{check:?}"
    );
    let crl_pem = dev.path("crl.pem");
    fs::write(
        &crl_pem,
        openssl(&["crl", "-inform", "DER", "-in", path_str(&crl)], None),
    )
    .expect("crl.pem");
    assert!(
        openssl_verify_crl(
            &server.root_pem_path(),
            &dev.path("tls/fullchain.pem"),
            &crl_pem
        )
        .expect("openssl verify -crl_check"),
        "the certificate is not revoked"
    );
    assert!(!crl_text(&crl).contains(&serial));

    // run keeps the CRL current: another device of the same CA is revoked, and within a few
    // refreshes the installed CRL lists it.
    let other = Dev::new(&server, "plc-8.plant.test");
    let out = other.run("enroll", "enroll", &[]);
    expect_code(&out, 0, "enroll the other device", &server);
    let revoked = other.serial();
    let mut run = Daemon::spawn(
        "run-crl",
        &mut dev.command(
            "run",
            &[&every_output[..], &["--crl-refresh", "1s"]].concat(),
        ),
        dev.dir.path(),
    )
    .expect("run starts");
    let text = operator(&server, &["revoke", "--identifier", "dns:plc-8.plant.test"]);
    assert!(text.contains("revoked 1 certificate"), "{text}");
    poll_until(
        "the refreshed CRL lists the revoked certificate",
        RUN_TIMEOUT,
        Duration::from_millis(300),
        |why| {
            let text = crl_text(&crl);
            *why = text.clone();
            Ok(text.contains(&revoked).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));

    // The changed CRL ran the hook with DEVICE_CLIENT_EVENT=crl; refreshes that fetch the same
    // CRL again do not.
    let stderr = run.stderr_path().to_owned();
    let log = || fs::read_to_string(&stderr).unwrap_or_default();
    let installed = |log: &str| log.matches("installed the CRL").count();
    let crl_hooks = poll_until(
        "the hook runs for the changed CRL",
        RUN_TIMEOUT,
        Duration::from_millis(300),
        |why| {
            *why = dev.hook_log();
            Ok((dev.crl_hook_runs() > 0).then(|| dev.crl_hook_runs()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));
    let seen = installed(&log());
    poll_until(
        "two more refreshes of the unchanged CRL",
        RUN_TIMEOUT,
        Duration::from_millis(300),
        |why| {
            *why = log().lines().last().unwrap_or("").to_owned();
            Ok((installed(&log()) >= seen + 2).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));
    assert_eq!(dev.crl_hook_runs(), crl_hooks, "{}", dev.hook_log());
    assert_eq!(dev.hook_runs(), std::slice::from_ref(&serial));

    // The CA goes away: the refreshes fail and are logged, and the installed CRL stays; once
    // the CA is back, a refresh installs its CRL again.
    let before = fs::read(&crl).expect("crl");
    server.kill_9().expect("stop the CA");
    let after_failure = poll_until(
        "a failed CRL refresh is logged",
        RUN_TIMEOUT,
        Duration::from_millis(300),
        |why| {
            let log = log();
            *why = log.lines().last().unwrap_or("").to_owned();
            Ok(log
                .contains("cannot refresh the CRLs")
                .then(|| installed(&log)))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));
    assert_eq!(fs::read(&crl).expect("crl"), before);
    assert_eq!(
        fs::read(crl.with_extension("crl.der")).expect("copy"),
        before
    );
    server.restart().expect("the CA restarts");
    poll_until(
        "the CRL is installed again after the CA is back",
        RUN_TIMEOUT,
        Duration::from_millis(300),
        |why| {
            let log = log();
            *why = log.lines().last().unwrap_or("").to_owned();
            Ok((installed(&log) > after_failure).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", run.logs()));
    run.check_running().expect("run keeps running");
    run.kill().expect("stop run");
    // A one-shot enroll with a still valid certificate refreshes the CRLs too (a timer can
    // keep them current without `run`).
    let third = Dev::new(&server, "plc-10.plant.test");
    let out = third.run("enroll", "enroll", &[]);
    expect_code(&out, 0, "enroll the third device", &server);
    let text = operator(
        &server,
        &["revoke", "--identifier", "dns:plc-10.plant.test"],
    );
    assert!(text.contains("revoked 1 certificate"), "{text}");
    let crl_hooks = dev.crl_hook_runs();
    let out = dev.run("enroll-again", "enroll", &every_output);
    expect_code(&out, 0, "enroll with a valid certificate", &server);
    assert!(out.stdout.contains("still valid"), "{}", out.tails());
    assert!(crl_text(&crl).contains(&third.serial()), "{}", out.tails());
    assert_eq!(dev.crl_hook_runs(), crl_hooks + 1, "{}", dev.hook_log());
    // Once more, with nothing new: the CRL is the same, and the hook does not run.
    let out = dev.run("enroll-same", "enroll", &every_output);
    expect_code(&out, 0, "enroll with a valid certificate", &server);
    assert_eq!(dev.crl_hook_runs(), crl_hooks + 1, "{}", dev.hook_log());

    // Still the same certificate: refreshing CRLs is no enrollment, and the hook ran only for CRLs.
    assert_eq!(dev.serial(), serial);
    assert_eq!(dev.hook_runs(), std::slice::from_ref(&serial));
}

#[test]
fn a_failed_output_means_an_error_and_no_hook() {
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let dev = Dev::new(&server, "plc-9.plant.test");
    let pass = dev.path("p12.pass");

    // A missing or empty passphrase file is a configuration error, before anything is sent.
    let p12 = dev.path("out/device.p12");
    let flags = |p12: &Path| -> Vec<String> {
        [
            "--pkcs12",
            path_str(p12),
            "--pkcs12-passphrase-file",
            path_str(&pass),
            "--post-install",
            HOOK,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = flags(&p12);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dev.run("no-pass", "enroll", &args);
    expect_code(&out, 2, "missing passphrase file", &server);
    assert!(
        out.stderr
            .contains("cannot read the PKCS #12 passphrase file"),
        "{}",
        out.tails()
    );
    fs::write(&pass, "").expect("empty passphrase");
    let out = dev.run("empty-pass", "enroll", &args);
    expect_code(&out, 2, "empty passphrase file", &server);
    assert!(out.stderr.contains("is empty"), "{}", out.tails());
    assert!(!dev.path("tls/cert.pem").exists(), "nothing was enrolled");

    // The PKCS #12 file cannot be written (its directory is a file): the client exits 7 and
    // the hook does not run, although the PEM files are there.
    fs::write(&pass, "s3cret\n").expect("passphrase");
    fs::write(dev.path("out"), "a file, not a directory").expect("blocker");
    let out = dev.run("blocked", "enroll", &args);
    expect_code(&out, 7, "unwritable PKCS #12 file", &server);
    assert!(
        dev.hook_runs().is_empty(),
        "the hook ran after a failed output"
    );
    assert!(dev.path("tls/cert.pem").exists());

    // Once the output can be written, the next enroll sees it missing and rebuilds it from
    // the installed PEM files, without a new certificate; the hook runs with everything in
    // place. (HOOK checks the OPC UA directory too.)
    fs::remove_file(dev.path("out")).expect("remove blocker");
    let pki = dev.path("opcua");
    let mut args = args.clone();
    args.extend(["--der", "--opcua-pki", path_str(&pki)]);
    let first = dev.serial();
    let out = dev.run("repaired", "enroll", &args);
    expect_code(&out, 0, "enroll with the output writable", &server);
    assert!(
        out.stderr.contains("is missing; rebuilding the outputs"),
        "the missing output is rebuilt\n{}",
        out.tails()
    );
    assert_eq!(dev.serial(), first, "no new certificate\n{}", out.tails());
    assert_eq!(dev.hook_runs(), std::slice::from_ref(&first));
    assert!(p12.is_file());

    // Outputs left at an older certificate (a power cut between renames, a failed write) are
    // rebuilt from the installed one at the next start; the CA issues nothing.
    let own = pki.join("own/certs/device.der");
    let old_der = fs::read(&own).expect("own cert");
    let out = dev.run("force", "enroll", &[&args[..], &["--force"]].concat());
    expect_code(&out, 0, "enroll --force", &server);
    let second = dev.serial();
    assert_ne!(second, first);
    fs::write(&own, &old_der).expect("tamper");
    fs::write(dev.path("tls/cert.der"), &old_der).expect("tamper");
    let out = dev.run("stale", "enroll", &args);
    expect_code(&out, 0, "enroll with stale outputs", &server);
    assert!(
        out.stderr.contains("holds another certificate; rebuilding"),
        "{}",
        out.tails()
    );
    assert_eq!(dev.serial(), second, "no new certificate\n{}", out.tails());
    let own_serial = openssl(
        &[
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-serial",
            "-in",
            path_str(&own),
        ],
        None,
    );
    assert_eq!(own_serial.trim(), format!("serial={second}"));
    assert_eq!(
        fs::read(&own).expect("own cert"),
        fs::read(dev.path("tls/cert.der")).expect("cert.der")
    );
    assert_eq!(dev.hook_runs(), [first, second.clone(), second]);
}
