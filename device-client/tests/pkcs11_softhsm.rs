//! Keys in a PKCS #11 token, against SoftHSM2 (Debian `softhsm2`, installed by
//! scripts/install-test-deps.sh): the certificate key is generated in the token and cannot
//! leave it, the CSR is signed there, the IDevID key imported into the token signs
//! device-attest-01, keys that may have left the token or do not pair are refused, a wrong
//! PIN is a configuration error and a missing token a temporary one, and a lost session is
//! opened again.
//!
//! The tokens live in a temporary directory of this test process (its own SOFTHSM2_CONF),
//! never in the system's. They are all made before the module is loaded, since SoftHSM reads
//! its token list when it is initialised.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use device_client::attest::{Idevid, Signer as _};
use device_client::device::CertificateKey;
use device_client::pkcs11::{Curve, KeyKind, Pkcs11Uri, TokenKey};
use device_client::{ErrorKind, Identifier};
use x509_parser::prelude::FromDer as _;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "1234";
/// One token per test, so that the tests can run at the same time.
const TOKENS: &[&str] = &[
    "csr-p256", "csr-p384", "idevid", "pin", "status", "checks", "rsa",
];

struct Hsm {
    _dir: tempfile::TempDir,
    pin_file: PathBuf,
    wrong_pin_file: PathBuf,
    idevid_chain: PathBuf,
    /// The public key of the key imported into token "checks" as "imported".
    imported_public: Vec<u8>,
}

fn softhsm2_util(conf: &Path, args: &[&str]) {
    let out = Command::new("softhsm2-util")
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "softhsm2-util cannot run ({e}): these tests need SoftHSM2; run \
                 scripts/install-test-deps.sh"
            )
        });
    assert!(
        out.status.success(),
        "softhsm2-util {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| {
        assert!(
            Path::new(MODULE).exists(),
            "{MODULE} is missing: these tests need SoftHSM2; run scripts/install-test-deps.sh"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .expect("conf");
        for label in TOKENS {
            softhsm2_util(
                &conf,
                &[
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--so-pin",
                    "5678",
                    "--pin",
                    PIN,
                ],
            );
        }
        // The IDevID: a manufacturer's key, imported into the token as a PKCS #8 file.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test IDevID");
        p.distinguished_name.push(
            rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]),
            rcgen::DnValue::PrintableString("SN-11".try_into().expect("printable")),
        );
        let cert = p.self_signed(&key).expect("cert");
        let key_file = dir.path().join("idevid-key.pem");
        std::fs::write(&key_file, key.serialize_pem()).expect("key file");
        let key_file = key_file.to_str().expect("utf-8 path");
        softhsm2_util(
            &conf,
            &[
                "--import", key_file, "--token", "idevid", "--label", "idevid", "--id", "01",
                "--pin", PIN,
            ],
        );
        std::fs::remove_file(key_file).expect("the key file goes; the token keeps the key");
        // Another imported key, for the checks of how a key came into the token.
        let imported = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let file = dir.path().join("imported.pem");
        std::fs::write(&file, imported.serialize_pem()).expect("key file");
        softhsm2_util(
            &conf,
            &[
                "--import",
                file.to_str().expect("utf-8"),
                "--token",
                "checks",
                "--label",
                "imported",
                "--id",
                "02",
                "--pin",
                PIN,
            ],
        );
        std::fs::remove_file(&file).expect("the key file goes");
        let idevid_chain = dir.path().join("idevid.pem");
        std::fs::write(&idevid_chain, cert.pem()).expect("chain");
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).expect("pin");
        let wrong_pin_file = dir.path().join("wrong-pin");
        std::fs::write(&wrong_pin_file, "0000\n").expect("pin");
        // Before the module is loaded by anyone in this process.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        module_here();
        Hsm {
            _dir: dir,
            pin_file,
            wrong_pin_file,
            idevid_chain,
            imported_public: imported.public_key_raw().to_vec(),
        }
    })
}

fn uri_text(token: &str, object: &str, pin_file: &Path) -> String {
    format!(
        "pkcs11:token={token};object={object}?module-path={MODULE}&pin-source=file:{}",
        pin_file.display()
    )
}

fn uri(token: &str, object: &str) -> Pkcs11Uri {
    Pkcs11Uri::parse(&uri_text(token, object, &hsm().pin_file)).expect("uri")
}

/// The module, loaded and initialised once by [`hsm`] before any test uses the token (two
/// threads in C_Initialize at once can reset SoftHSM under the other's sessions), and never
/// dropped, which could finalise it.
fn module_here() -> &'static Pkcs11 {
    static MODULE_HERE: OnceLock<Pkcs11> = OnceLock::new();
    MODULE_HERE.get_or_init(|| {
        let m = Pkcs11::new(MODULE).expect("module");
        m.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        m
    })
}

/// A logged-in session on `token`, as another application of the token would open it.
fn session(token: &str) -> cryptoki::session::Session {
    let m = module_here();
    let slot = m
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| m.get_token_info(*s).expect("info").label().trim_end() == token)
        .expect("token");
    let session = m.open_rw_session(slot).expect("session");
    match session.login(UserType::User, Some(&AuthPin::from(PIN.to_owned()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    session
}

/// Generates a P-256 pair in `token` with the private half labelled `private_label` and the
/// public half `public_label`, CKA_SENSITIVE and CKA_EXTRACTABLE as given.
fn make_pair(token: &str, private_label: &str, public_label: &str, exportable: bool) {
    let session = session(token);
    session
        .generate_key_pair(
            &cryptoki::mechanism::Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(vec![
                    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                ]),
                Attribute::Label(public_label.as_bytes().to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::Sensitive(!exportable),
                Attribute::Extractable(exportable),
                Attribute::Label(private_label.as_bytes().to_vec()),
            ],
        )
        .expect("generate");
}

/// Reads a private key's attributes the way another application of the token would.
fn private_key_flags(token: &str, label: &str) -> Vec<Attribute> {
    let session = session(token);
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("find");
    assert_eq!(keys.len(), 1, "one private key labelled {label}");
    session
        .get_attributes(
            keys[0],
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::Sign,
                AttributeType::Id,
            ],
        )
        .expect("attributes")
}

/// Asserts that the private key `label` in `token` is a token object that signs and never
/// leaves the token (sensitive, not extractable, never extractable); returns its attributes.
fn generated_in_the_token(token: &str, label: &str) -> Vec<Attribute> {
    let flags = private_key_flags(token, label);
    for want in [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::NeverExtractable(true),
        Attribute::Sign(true),
    ] {
        assert!(flags.contains(&want), "{token}: {want:?} not in {flags:?}");
    }
    flags
}

#[test]
fn the_certificate_key_is_generated_in_the_token_and_signs_the_csr_there() {
    for (token, curve, alg_oid) in [
        ("csr-p256", Curve::P256, "1.2.840.10045.4.3.2"),
        ("csr-p384", Curve::P384, "1.2.840.10045.4.3.3"),
    ] {
        let uri = uri(token, "cert-key");
        let (key, created) =
            TokenKey::open_or_generate(&uri, uri.object.as_deref(), curve).expect("generated");
        assert!(created);
        assert_eq!(key.curve(), Some(curve));
        let public = key.public_key_sec1().expect("public key").to_vec();
        assert_eq!(public.len(), if curve == Curve::P256 { 65 } else { 97 });

        let flags = generated_in_the_token(token, "cert-key");
        // Without id= in the URI, both halves get one random 20-octet CKA_ID, set when they
        // are generated.
        let id = flags
            .iter()
            .find_map(|a| match a {
                Attribute::Id(id) => Some(id.clone()),
                _ => None,
            })
            .expect("CKA_ID");
        assert_eq!(id.len(), 20);
        let session = session(token);
        let publics = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(b"cert-key".to_vec()),
            ])
            .expect("find");
        assert_eq!(
            session
                .get_attributes(publics[0], &[AttributeType::Id])
                .expect("id"),
            [Attribute::Id(id)]
        );

        let ids = [
            Identifier::parse("plc-7.plant").expect("dns"),
            Identifier::parse("10.0.0.7").expect("ip"),
        ];
        let cert_key = CertificateKey::Token(Box::new(key));
        let der = cert_key
            .csr_der(&ids, None)
            .expect("csr signed in the token");
        let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("parses");
        csr.verify_signature()
            .expect("the signature verifies with the CSR's public key");
        assert_eq!(csr.signature_algorithm.algorithm.to_id_string(), alg_oid);
        assert_eq!(
            csr.certification_request_info
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            public.as_slice()
        );
        drop(cert_key);

        // The next run finds the same key instead of making another.
        let (again, created) =
            TokenKey::open_or_generate(&uri, uri.object.as_deref(), Curve::P256).expect("found");
        assert!(!created);
        assert_eq!(again.public_key_sec1(), Some(public.as_slice()));
    }
}

#[test]
fn an_rsa_key_is_generated_in_the_token_signs_sha256_with_rsa_and_is_found_again() {
    let uri = uri("rsa", "rsa-issuing");
    let key = TokenKey::generate(&uri, uri.object.as_deref(), KeyKind::Rsa(2048)).expect("gen");
    assert_eq!(key.kind(), KeyKind::Rsa(2048));
    assert_eq!(key.curve(), None);
    assert_eq!(key.public_key_sec1(), None, "not an EC point");

    // The public key is an RSA SubjectPublicKeyInfo of 2048 bits, exponent 65537, whose
    // subjectPublicKey is the RSAPublicKey rcgen signs with.
    let spki = key.subject_public_key_info().expect("public key");
    let (rest, info) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).expect("SPKI parses");
    assert!(rest.is_empty());
    assert_eq!(
        info.algorithm.algorithm.to_id_string(),
        "1.2.840.113549.1.1.1"
    );
    match info.parsed().expect("RSA key parses") {
        x509_parser::public_key::PublicKey::RSA(rsa) => {
            assert_eq!(rsa.key_size(), 2048);
            assert_eq!(rsa.try_exponent().expect("exponent"), 65537);
        }
        other => panic!("not an RSA key: {other:?}"),
    }
    let public = key.public_key_der().expect("RSAPublicKey").to_vec();
    assert_eq!(info.subject_public_key.data.as_ref(), public.as_slice());

    // PKCS #1 v1.5 over SHA-256, as long as the modulus, verified by ring.
    let sig = key
        .sign_der(b"an RSA CA's CRL")
        .expect("signed in the token");
    assert_eq!(sig.len(), 256);
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &public)
        .verify(b"an RSA CA's CRL", &sig)
        .expect("the signature verifies");

    generated_in_the_token("rsa", "rsa-issuing");
    drop(key);

    // Found again by its URI: the same key, checked and paired by a test signature.
    let again = TokenKey::find_labelled(&uri, uri.object.as_deref())
        .expect("search")
        .expect("found");
    assert_eq!(again.kind(), KeyKind::Rsa(2048));
    assert_eq!(again.public_key_der(), Some(public.as_slice()));

    // The device client's keys are EC only: the RSA key is refused where it would be one.
    for e in [
        TokenKey::open(&uri).expect_err("not an IDevID key"),
        TokenKey::open_or_generate(&uri, uri.object.as_deref(), Curve::P256)
            .expect_err("not a certificate key"),
    ] {
        assert!(e.to_string().contains("not an EC key"), "{e}");
    }
    // Smaller than 2048 bits is not generated.
    let small = self::uri("rsa", "small");
    let e = TokenKey::generate(&small, small.object.as_deref(), KeyKind::Rsa(1024))
        .expect_err("too small");
    assert!(e.to_string().contains("at least 2048"), "{e}");
}

#[test]
fn the_idevid_key_in_the_token_signs_device_attest_01() {
    let hsm = hsm();
    let key_uri = uri_text("idevid", "idevid", &hsm.pin_file);
    // Idevid::new signs a probe and verifies it with the certificate's key: it only accepts
    // the token key if the token signs with the IDevID's key.
    let idevid = Idevid::from_files(&hsm.idevid_chain, Path::new(&key_uri)).expect("idevid");
    assert_eq!(idevid.serial(), Some("SN-11"));
    let obj = idevid
        .attestation_object("tok.thumb")
        .expect("attestation object");
    assert_eq!(&obj[..17], b"\xa2\x63fmt\x6biiot-idevid");

    // The signature is a DER Ecdsa-Sig-Value over the message itself, as FileSigner's.
    let signer = TokenKey::open(&uri("idevid", "idevid")).expect("open");
    let sig = signer.sign(b"key.authorization").expect("sign");
    assert_eq!(sig[0], 0x30);
    let pem = std::fs::read(&hsm.idevid_chain).expect("chain");
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
        .expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &cert.public_key().subject_public_key.data,
    )
    .verify(b"key.authorization", &sig)
    .expect("verifies with the IDevID certificate's key");

    // The id= attribute selects the same key; another id finds none.
    let by_id = Pkcs11Uri::parse(&format!(
        "pkcs11:token=idevid;id=%01?module-path={MODULE}&pin-source=file:{}",
        hsm.pin_file.display()
    ))
    .expect("uri");
    assert!(TokenKey::open(&by_id).is_ok());
    let other = Pkcs11Uri::parse(&format!(
        "pkcs11:token=idevid;object=idevid;id=%02?module-path={MODULE}&pin-source=file:{}",
        hsm.pin_file.display()
    ))
    .expect("uri");
    let e = TokenKey::open(&other).expect_err("no such key");
    assert!(e.to_string().contains("no private key"), "{e}");
}

#[test]
fn wrong_pin_and_missing_module_are_configuration_errors_a_missing_token_is_temporary() {
    let hsm = hsm();
    // A wrong PIN first, on a token no other test has logged in to.
    let wrong = Pkcs11Uri::parse(&uri_text("pin", "k", &hsm.wrong_pin_file)).expect("uri");
    let e = TokenKey::open_or_generate(&wrong, wrong.object.as_deref(), Curve::P256)
        .expect_err("wrong PIN");
    // The token code is the pkcs11-key crate's; the client classifies its errors.
    let e = device_client::Error::from(e);
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("wrong PIN for token \"pin\""), "{e}");
    assert!(!e.to_string().contains("0000"), "{e}");

    // A token that is not there (yet: a TPM at boot) is tried again by `run`.
    let e = TokenKey::open(&uri("no-such-token", "k")).expect_err("no token");
    // The token code is the pkcs11-key crate's; the client classifies its errors.
    let e = device_client::Error::from(e);
    assert_eq!(e.kind(), ErrorKind::Local, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("no token matches (tokens present: ")
            && text.contains("\"csr-p256\"")
            && !text.contains("\"\""),
        "{text}"
    );

    let no_pin =
        Pkcs11Uri::parse(&format!("pkcs11:token=pin;object=k?module-path={MODULE}")).expect("uri");
    let e = TokenKey::open(&no_pin).expect_err("no PIN");
    assert!(e.to_string().contains("needs its user PIN"), "{e}");

    let no_module =
        Pkcs11Uri::parse("pkcs11:token=pin;object=k?module-path=/nonexistent/libnone.so")
            .expect("uri");
    let e = TokenKey::open(&no_module).expect_err("no module");
    // The token code is the pkcs11-key crate's; the client classifies its errors.
    let e = device_client::Error::from(e);
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.to_string()
            .contains("/nonexistent/libnone.so does not exist"),
        "{e}"
    );

    let missing_pin_file = Pkcs11Uri::parse(&format!(
        "pkcs11:token=pin;object=k?module-path={MODULE}&pin-source=file:/nonexistent/pin"
    ))
    .expect("uri");
    let e = TokenKey::open(&missing_pin_file).expect_err("no PIN file");
    assert!(
        e.to_string()
            .contains("cannot read the PIN file /nonexistent/pin"),
        "{e}"
    );

    // With the right PIN, the key simply is not there yet.
    let e = TokenKey::open(&uri("pin", "k")).expect_err("no key");
    assert!(e.to_string().contains("no private key"), "{e}");
}

#[test]
fn status_reads_the_public_key_from_the_token() {
    use device_client::cert::{local_status, CertStatus};
    use device_client::config::FileConfig;
    let hsm = hsm();
    let dir = tempfile::tempdir().expect("dir");
    let key_uri = uri_text("status", "cert-key", &hsm.pin_file);
    let local = FileConfig {
        dns: Some(vec!["plc-7.plant".into()]),
        key: Some(PathBuf::from(&key_uri)),
        state_dir: Some(dir.path().to_owned()),
        ..FileConfig::default()
    }
    .local_settings()
    .expect("settings");
    assert!(local.key_uri.is_some());
    assert_eq!(local.key_path, Path::new(&key_uri));
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(
        local_status(&local, now).expect("status"),
        CertStatus::Missing
    );

    // A certificate for another key than the token's is unusable.
    let uri = local.key_uri.as_ref().expect("uri");
    let (key, _) =
        TokenKey::open_or_generate(uri, uri.object.as_deref(), Curve::P256).expect("key");
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["plc-7.plant".to_owned()]).expect("params");
    let cert = params.self_signed(&other).expect("cert");
    std::fs::write(&local.cert_path, cert.pem()).expect("cert");
    let status = local_status(&local, now).expect("status");
    assert!(
        status.to_string().contains("does not belong to the key"),
        "{status}"
    );

    // A certificate for the token's key (self-signed in the token here) is valid.
    let signer = key.csr_signer().expect("signer");
    let cert = params.self_signed(&signer).expect("signed in the token");
    std::fs::write(&local.cert_path, cert.pem()).expect("cert");
    let status = local_status(&local, now).expect("status");
    assert!(matches!(status, CertStatus::Valid { .. }), "{status}");
}

#[test]
fn keys_that_may_have_left_the_token_or_do_not_pair_are_refused() {
    let hsm = hsm();
    let refused = |label: &str| {
        let uri = uri("checks", label);
        let e = TokenKey::open_or_generate(&uri, Some(label), Curve::P256)
            .expect_err("refused as the certificate key");
        // The token code is the pkcs11-key crate's; the client classifies its errors.
        let e = device_client::Error::from(e);
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        e.to_string()
    };
    // Made extractable and not sensitive: refused for either use.
    make_pair("checks", "exportable", "exportable", true);
    let e = refused("exportable");
    assert!(e.contains("not sensitive"), "{e}");
    let e = TokenKey::open(&uri("checks", "exportable")).expect_err("nor as the IDevID key");
    assert!(e.to_string().contains("not sensitive"), "{e}");

    // Imported: not a certificate key, but an IDevID key may be (with a warning).
    let e = refused("imported");
    assert!(e.contains("has been outside the token"), "{e}");
    let idevid = TokenKey::open(&uri("checks", "imported")).expect("an imported IDevID key");
    assert_eq!(
        idevid.public_key_sec1(),
        Some(hsm.imported_public.as_slice())
    );

    // Two public keys under one label: which one is the certificate's is unknown.
    make_pair("checks", "two-publics", "two-publics", false);
    make_pair("checks", "two-publics-other", "two-publics", false);
    let e = refused("two-publics");
    assert!(e.contains("2 public keys match"), "{e}");

    // A public key of another pair under the private key's label: the probe signature fails.
    make_pair("checks", "mismatch", "mismatch-own-public", false);
    make_pair("checks", "mismatch-other", "mismatch", false);
    let e = refused("mismatch");
    assert!(e.contains("not its pair"), "{e}");

    // A generated key passes every check.
    let (good, created) =
        TokenKey::open_or_generate(&uri("checks", "good"), Some("good"), Curve::P256).expect("ok");
    assert!(created);
    // A logout (by any application: logins are the token's) takes the key's session with it;
    // the key logs in on a new session and signs.
    session("checks").logout().expect("logout");
    good.sign_der(b"after a logout")
        .expect("signs on a new session");
    let (_, created) =
        TokenKey::open_or_generate(&uri("checks", "good"), Some("good"), Curve::P256).expect("ok");
    assert!(!created);
}
