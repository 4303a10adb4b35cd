//! `device-client` with its keys in a PKCS #11 token (SoftHSM2), against the real CA: the
//! certificate key is generated in the token and the CSR signed there, the certificate is for
//! the token's key, renewal replaces it with a new token key (the CA's default: no key reuse),
//! device-attest-01 signs with an IDevID key imported into the token, a wrong PIN stops the
//! client with a configuration error, and a missing token is tried again by `run`.
//!
//! All tests of this file share one SoftHSM token directory of their own (SOFTHSM2_CONF is
//! read per process), with one token per test.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use iiot_acme_tests::device_client::{verify_issued, Device, Pin};
use iiot_acme_tests::idevid::Manufacturer;
use iiot_acme_tests::openssl_text;
use iiot_acme_tests::process::{poll_until, RunOutput};
use iiot_acme_tests::softhsm::{object_count, public_point, SoftHsm};
use iiot_acme_tests::{CaServer, CaServerOpts};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

/// The test manufacturers' assigner: the RFC 5612 documentation enterprise number.
const PEN: &str = "1.3.6.1.4.1.32473";
/// A root fingerprint for runs that fail before they reach a CA.
const FINGERPRINT: &str = "41:62:35:04:B6:97:B5:F4:C1:E9:A3:87:4A:7E:68:68:BA:F6:9F:10:DF:89:F4:C2:E0:48:7F:7C:BD:45:97:9E";

fn hsm() -> &'static SoftHsm {
    static HSM: OnceLock<SoftHsm> = OnceLock::new();
    HSM.get_or_init(|| {
        let hsm = SoftHsm::new(&["device", "attest", "pin"]).expect("SoftHSM tokens");
        hsm.use_in_this_process();
        hsm
    })
}

fn expect_code(out: &RunOutput, want: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(want),
        "{what}: expected exit {want}\n{}",
        out.tails()
    );
    assert!(!out.stderr.contains("panicked"), "{what}\n{}", out.tails());
}

/// Serial and public key (uncompressed point) of the installed leaf.
fn installed(device: &Device) -> (String, Vec<u8>) {
    let pem = std::fs::read(device.cert()).expect("certificate");
    let der = CertificateDer::from_pem_slice(&pem).expect("PEM");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    (
        cert.raw_serial_as_string(),
        cert.public_key().subject_public_key.data.to_vec(),
    )
}

#[test]
fn enrolls_with_the_certificate_key_generated_in_the_token_and_renews_with_a_new_one() {
    let hsm = hsm();
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let mut device = Device::for_server(
        &server,
        Pin::RootFile(server.root_pem_path()),
        &["plc-11.plant.test"],
    );
    device.key_arg = Some(hsm.uri("device", "cert-key"));
    let run = |sub: &str, extra: &[&str]| device.run(sub, extra);

    let show = run("show", &[]);
    expect_code(&show, 10, "show before enrolling");

    let out = run("enroll", &[]);
    expect_code(&out, 0, "enroll with the key in the token");
    assert!(
        !out.stderr.contains("PIN file"),
        "a 0600 PIN file: {}",
        out.tails()
    );
    assert!(
        out.stderr
            .contains("generated a new certificate key in the token"),
        "{}",
        out.tails()
    );
    verify_issued(&server, &device);
    let (serial, public) = installed(&device);
    assert_current_token_key(&public);
    // No key file anywhere: the key is in the token only.
    assert!(!device.key().exists());
    let pem_keys = walk(device.dir.path())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(p)
                .is_ok_and(|t| t.contains("PRIVATE KEY") && !p.ends_with("account.key.pem"))
        })
        .collect::<Vec<_>>();
    assert!(pem_keys.is_empty(), "private keys in files: {pem_keys:?}");

    let show = run("show", &[]);
    expect_code(&show, 0, "show");
    assert!(
        show.stdout.contains("status       valid"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("key          pkcs11:token=device;object=cert-key?module-path="),
        "{}",
        show.stdout
    );
    let out = run("enroll", &[]);
    expect_code(&out, 0, "enroll again");
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);

    // With reuse_key the token key stays, which this CA refuses (a new key for every
    // certificate, its default); the client says what the CA must allow.
    let out = run("enroll", &["--force", "--reuse-key"]);
    expect_code(&out, 5, "renewal with the same key, refused");
    assert!(
        out.stderr.contains("allow_renewal_key_reuse = true"),
        "{}",
        out.tails()
    );
    assert_eq!(public_point("device", "cert-key").expect("key"), public);

    // A new key left by an order that did not complete (a stop between generating and
    // installing) is destroyed, not used: the next order gets a key of its own.
    let leftover = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    hsm.import_pkcs8("device", "cert-key.next", "77", &leftover.serialize_pem())
        .expect("leftover key imported");

    // Renewal against the CA's default settings: a new key in the token, the old one gone.
    let out = run("enroll", &["--force"]);
    expect_code(&out, 0, "renew with a new token key");
    assert!(
        out.stderr
            .contains("destroyed the new key labelled \"cert-key.next\""),
        "{}",
        out.tails()
    );
    verify_issued(&server, &device);
    let (renewed, renewed_public) = installed(&device);
    assert_ne!(renewed, serial);
    assert_ne!(
        renewed_public, public,
        "the renewed certificate has a new key"
    );
    assert_ne!(renewed_public, leftover.public_key_raw());
    assert_current_token_key(&renewed_public);
    let show = run("show", &[]);
    expect_code(&show, 0, "show after renewal");
    assert!(
        show.stdout.contains("status       valid"),
        "{}",
        show.stdout
    );
    drop(server);
}

#[test]
fn device_attest_01_signs_with_the_idevid_key_in_the_token() {
    let hsm = hsm();
    let server = CaServer::start(CaServerOpts::default()).expect("ca-server starts");
    let maker = Manufacturer::new("Example Devices Root");
    maker
        .trust(&server, "example-devices", PEN)
        .expect("trust anchor added");
    let serial = "SN-1107";
    let idevid_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let idevid = maker.issue(serial, &idevid_key);
    hsm.import_pkcs8("attest", "idevid", "01", &idevid_key.serialize_pem())
        .expect("IDevID key imported");
    let chain = hsm.path().join("idevid-chain.pem");
    std::fs::write(&chain, idevid.pem()).expect("chain");

    let mut device = Device::for_server(&server, Pin::RootFile(server.root_pem_path()), &[]);
    device.key_arg = Some(hsm.uri("attest", "cert-key"));
    let value = format!("{serial}/{PEN}");
    let idevid_uri = hsm.uri("attest", "idevid");
    let out = device.run(
        "enroll",
        &[
            "--challenge",
            "device-attest-01",
            "--idevid-chain",
            chain.to_str().expect("utf-8"),
            "--idevid-key",
            &idevid_uri,
            "--permanent-id",
            &value,
        ],
    );
    expect_code(
        &out,
        0,
        "enroll by device-attest-01 with the IDevID key in the token",
    );
    verify_issued(&server, &device);
    let text =
        openssl_text(&std::fs::read_to_string(device.cert()).expect("cert")).expect("openssl x509");
    assert!(text.contains(&format!("CN = {value}")), "{text}");
    let (_, public) = installed(&device);
    assert_eq!(
        public,
        public_point("attest", "cert-key").expect("cert key")
    );
    assert_ne!(
        public,
        public_point("attest", "idevid").expect("IDevID key")
    );
}

#[test]
fn a_wrong_pin_is_a_configuration_error_a_missing_token_is_tried_again() {
    let hsm = hsm();
    // Nothing reaches a CA: the token is checked first.
    let url = "https://127.0.0.1:9/directory";
    let mut device = Device::new(
        url.into(),
        Pin::Fingerprint(FINGERPRINT.into()),
        9,
        &["plc-12.plant.test"],
    );
    let wrong_pin = hsm.path().join("wrong.pin");
    std::fs::write(&wrong_pin, "0000\n").expect("PIN file");
    std::fs::set_permissions(
        &wrong_pin,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("PIN file mode");
    let wrong = hsm.uri_with_pin_file("pin", "cert-key", &wrong_pin);

    let absent = hsm.uri("absent", "cert-key");
    let pin_on_command_line = format!(
        "pkcs11:token=pin;object=cert-key?module-path={}&pin-value=s3cret",
        iiot_acme_tests::softhsm::MODULE
    );
    for (sub, key, what, want) in [
        (
            "enroll",
            wrong.as_str(),
            "wrong PIN",
            "wrong PIN for token \"pin\"",
        ),
        // The wrong PIN's file is 0644 here: other users could read it.
        (
            "enroll",
            wrong.as_str(),
            "a PIN file others can read",
            "has mode 0644: other users can read it",
        ),
        // `run` stops too instead of trying again: each try would count against the PIN.
        (
            "run",
            wrong.as_str(),
            "wrong PIN",
            "wrong PIN for token \"pin\"",
        ),
        (
            "enroll",
            "pkcs11:token=pin;object=k;x-a=1",
            "unknown path attribute",
            "matches no object",
        ),
        // A PIN on the command line is readable by every local user: refused, unquoted.
        (
            "enroll",
            pin_on_command_line.as_str(),
            "pin-value on the command line",
            "--key: a pin-value on the command line can be read by every local user",
        ),
        (
            "enroll",
            "pkcs11:token=pin;object=k?module-path=/m.so&pin-value=s3cret%zz",
            "pin-value on the command line",
            "pin-value on the command line",
        ),
    ] {
        device.key_arg = Some(key.to_owned());
        let out = device.run(sub, &[]);
        expect_code(&out, 2, &format!("{sub}: {what}"));
        assert!(out.stderr.contains(want), "{}", out.tails());
        assert!(
            !out.stderr.contains("s3cret") && !out.stdout.contains("s3cret"),
            "{}",
            out.tails()
        );
    }

    // A token that is not there (a TPM not ready at boot) is not a configuration error:
    // `enroll` fails with exit 7, and `run` keeps trying with its backoff.
    device.key_arg = Some(absent.clone());
    let out = device.run("enroll", &[]);
    expect_code(&out, 7, "enroll: missing token");
    assert!(
        out.stderr.contains("no token matches (tokens present: "),
        "{}",
        out.tails()
    );
    let mut run = device.spawn_run("run-no-token", &["--retry-min", "1s", "--retry-max", "1s"]);
    poll_until(
        "run tries again while the token is missing",
        Duration::from_secs(20),
        Duration::from_millis(200),
        |why| {
            run.check_running()?;
            let logs = run.logs();
            *why = logs.clone();
            Ok(
                (logs.matches("no token matches").count() >= 2 && logs.contains("trying again"))
                    .then_some(()),
            )
        },
    )
    .expect("run retries");
    run.check_running().expect("run is still running");
    run.kill().expect("stop run");
}

/// The token "device" holds one key pair labelled cert-key, whose public key is `public`, and
/// nothing labelled cert-key.next.
fn assert_current_token_key(public: &[u8]) {
    assert_eq!(
        public,
        public_point("device", "cert-key").expect("token key"),
        "the certificate is for the token's current key"
    );
    assert_eq!(object_count("device", "cert-key").expect("count"), 2);
    assert_eq!(object_count("device", "cert-key.next").expect("count"), 0);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
