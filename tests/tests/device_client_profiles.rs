//! `device-client` with certificate profiles (draft-ietf-acme-profiles, SPEC §8.3), key
//! algorithms and the OPC UA ApplicationUri, against the real `ca-server` over http-01.
//!
//! - A profile the CA does not offer fails before any account or order, naming what it offers.
//! - `--profile mqtt-client`: clientAuth only.
//! - `--profile opcua --key-algorithm rsa2048 --application-uri urn:…`: an RSA-2048 key made on
//!   the device, the URI subjectAltName, sha256WithRSAEncryption by the RSA intermediate,
//!   serverAuth + clientAuth; its renewal keeps profile and algorithm, `--reuse-key` keeps the
//!   key, and a stored key of another algorithm than configured is replaced.
//! - P-384 and Ed25519 certificate keys under the default profile.
//! - `--profile modbus` with an EAB credential that grants a role (`ca-server eab create
//!   --role`): the Modbus/TCP Security role extension (1.3.6.1.4.1.50316.802.1, UTF8String)
//!   carries it; without a granted role the CA refuses the order.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use iiot_acme_tests::device_client::{expect_exit, verify_issued, Device, Pin};
use iiot_acme_tests::openssl::split_pem_certs;
use iiot_acme_tests::{CaServer, CaServerOpts};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

const APP_URI: &str = "urn:plant.example:line1:plc7";
const OPCUA_TOML: &str = "[profiles.opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]\n\
                          organization = \"Plant Example Ltd\"\n";

const OID_SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
const OID_MODBUS_ROLE: &str = "1.3.6.1.4.1.50316.802.1";

/// A CA whose `opcua` profile accepts `urn:plant.example:` ApplicationUris, and which lets a
/// renewal certify the previous key (`--reuse-key`; by default it wants a new key every time).
fn start_ca() -> CaServer {
    CaServer::start(CaServerOpts {
        extra_toml: format!("{OPCUA_TOML}[keys]\nallow_renewal_key_reuse = true\n"),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts")
}

fn device(server: &CaServer, dns: &str) -> Device {
    Device::for_server(server, Pin::RootFile(server.root_pem_path()), &[dns])
}

/// How many times the server's log says `what`.
fn server_log_count(server: &CaServer, what: &str) -> usize {
    fs::read_to_string(server.data_dir().join("ca-server.stderr.log"))
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// The DER certificates of a PEM file.
fn ders(path: &std::path::Path) -> Vec<Vec<u8>> {
    let text = fs::read_to_string(path).expect("PEM file");
    split_pem_certs(&text)
        .iter()
        .map(|pem| {
            let (_, p) = parse_x509_pem(pem.as_bytes()).expect("PEM");
            p.contents
        })
        .collect()
}

/// What the tests check in an issued leaf.
#[derive(Debug)]
struct Leaf {
    serial: String,
    key: String,
    signature: String,
    issuer: String,
    ekus: Vec<&'static str>,
    key_encipherment: bool,
    uris: Vec<String>,
    /// The extnValue of the Modbus role extension, if there is one.
    modbus_role: Option<Vec<u8>>,
}

fn leaf(device: &Device) -> Leaf {
    let der = ders(&device.cert()).remove(0);
    let (_, cert) = parse_x509_certificate(&der).expect("leaf");
    let key = match cert.public_key().parsed().expect("key") {
        PublicKey::RSA(r) => format!("rsa{}", r.key_size()),
        PublicKey::EC(p) => format!("ec{}", p.key_size()),
        PublicKey::Unknown(_)
            if cert.public_key().algorithm.algorithm.to_id_string() == "1.3.101.112" =>
        {
            "ed25519".to_owned()
        }
        other => format!("{other:?}"),
    };
    let mut ekus = Vec::new();
    let mut uris = Vec::new();
    let mut key_encipherment = false;
    let mut modbus_role = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == OID_MODBUS_ROLE {
            modbus_role = Some(ext.value.to_vec());
        }
        match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(e) => {
                if e.server_auth {
                    ekus.push("serverAuth");
                }
                if e.client_auth {
                    ekus.push("clientAuth");
                }
            }
            ParsedExtension::KeyUsage(k) => key_encipherment = k.key_encipherment(),
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n {
                        uris.push((*u).to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Leaf {
        serial: cert.raw_serial_as_string(),
        key,
        signature: cert.signature_algorithm.algorithm.to_id_string(),
        issuer: cert.issuer().to_string(),
        ekus,
        key_encipherment,
        uris,
        modbus_role,
    }
}

#[test]
fn an_unknown_profile_fails_before_any_order_naming_what_the_ca_offers() {
    let server = start_ca();
    let device = device(&server, "plc-0.plant.test");
    let out = device.run("enroll", &["--profile", "opc-ua"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.tails());
    for want in [
        "the CA does not offer profile \"opc-ua\"; it offers: ",
        "mqtt-client (",
        "opcua (",
        "tls-server (",
    ] {
        assert!(out.stderr.contains(want), "{want}\n{}", out.stderr);
    }
    assert_eq!(server_log_count(&server, "order created"), 0);
    assert_eq!(server_log_count(&server, "account created"), 0);
    assert!(!device.cert().exists());
    // Nothing on the device either: no account key was even made.
    let state: Vec<_> = fs::read_dir(device.state_dir())
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(state.is_empty(), "{state:?}");

    // The positive control: the same device and CA without the bad profile, so the counts
    // above cannot pass only because the server's log says nothing of the kind.
    let out = device.run("enroll", &[]);
    expect_exit(&out, 0, "enroll without --profile", &server);
    assert_eq!(server_log_count(&server, "order created"), 1);
    assert_eq!(server_log_count(&server, "account created"), 1);
}

#[test]
fn mqtt_client_and_opcua_rsa_profiles_with_renewal_and_key_reuse() {
    let server = start_ca();

    let mqtt = device(&server, "sensor-1.plant.test");
    let out = mqtt.run("enroll", &["--profile", "mqtt-client"]);
    expect_exit(&out, 0, "enroll --profile mqtt-client", &server);
    let l = leaf(&mqtt);
    assert_eq!(l.ekus, ["clientAuth"], "{l:?}");
    assert_eq!(l.key, "ec256", "{l:?}");
    assert!(l.uris.is_empty());

    let opcua = device(&server, "plc-7.plant.test");
    let flags = [
        "--profile",
        "opcua",
        "--key-algorithm",
        "rsa2048",
        "--application-uri",
        APP_URI,
    ];
    let out = opcua.run("enroll", &flags);
    expect_exit(&out, 0, "enroll --profile opcua", &server);
    verify_issued(&server, &opcua);
    let first = leaf(&opcua);
    assert_eq!(first.key, "rsa2048", "{first:?}");
    assert_eq!(first.uris, [APP_URI], "{first:?}");
    assert_eq!(first.ekus, ["serverAuth", "clientAuth"], "{first:?}");
    assert!(first.key_encipherment, "{first:?}");
    assert_eq!(first.signature, OID_SHA256_WITH_RSA, "{first:?}");
    // The issuer is the RSA intermediate: the chain's first certificate, with an RSA key.
    let chain = ders(&opcua.path("tls/chain.pem"));
    let (_, intermediate) = parse_x509_certificate(&chain[0]).expect("intermediate");
    assert_eq!(intermediate.subject().to_string(), first.issuer);
    assert!(
        matches!(intermediate.public_key().parsed(), Ok(PublicKey::RSA(_))),
        "issuer {} has no RSA key",
        first.issuer
    );
    let key_pem = fs::read_to_string(opcua.key()).expect("key");
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        fs::metadata(opcua.key()).expect("key").permissions().mode() & 0o777,
        0o600
    );

    // A renewal keeps profile and algorithm; --reuse-key keeps the key itself.
    let mut renew = flags.to_vec();
    renew.extend(["--force", "--reuse-key"]);
    let out = opcua.run("enroll", &renew);
    expect_exit(&out, 0, "renewal with --reuse-key", &server);
    let second = leaf(&opcua);
    assert_ne!(second.serial, first.serial);
    assert_eq!(second.key, "rsa2048", "{second:?}");
    assert_eq!(second.uris, [APP_URI], "{second:?}");
    assert_eq!(fs::read_to_string(opcua.key()).expect("key"), key_pem);

    // A stored key of another algorithm is not reused: the configured one wins.
    let out = opcua.run(
        "enroll",
        &[
            "--profile",
            "opcua",
            "--application-uri",
            APP_URI,
            "--key-algorithm",
            "p384",
            "--reuse-key",
            "--force",
        ],
    );
    expect_exit(&out, 0, "renewal with another key algorithm", &server);
    assert!(
        out.stderr
            .contains("the key file holds a rsa2048 key, but key_algorithm is p384"),
        "{}",
        out.stderr
    );
    let third = leaf(&opcua);
    assert_eq!(third.key, "ec384", "{third:?}");
    assert_eq!(third.uris, [APP_URI]);
    assert_ne!(
        third.signature, OID_SHA256_WITH_RSA,
        "EC keys stay on the EC intermediate"
    );
}

#[test]
fn p384_and_ed25519_certificate_keys() {
    let server = start_ca();
    for (alg, want) in [("p384", "ec384"), ("ed25519", "ed25519")] {
        let d = device(&server, &format!("{alg}.plant.test"));
        let out = d.run("enroll", &["--key-algorithm", alg]);
        expect_exit(&out, 0, alg, &server);
        verify_issued(&server, &d);
        let l = leaf(&d);
        assert_eq!(l.key, want, "{l:?}");
        assert_eq!(
            l.ekus,
            ["serverAuth", "clientAuth"],
            "default profile: {l:?}"
        );
        // The installed pair is recognised as such: a second enroll has nothing to do.
        let out = d.run("enroll", &["--key-algorithm", alg]);
        expect_exit(&out, 0, "second enroll", &server);
        assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);
    }
}

#[test]
fn modbus_profile_carries_the_role_of_the_eab_credential() {
    let server = start_ca();
    let eab = server
        .eab_create_with(&["--role", "operator"])
        .expect("eab create --role");
    let d = device(&server, "rtu-4.plant.test");
    let out = d.run(
        "enroll",
        &[
            "--profile",
            "modbus",
            "--eab-kid",
            &eab.kid,
            "--eab-hmac",
            &eab.hmac_b64url,
        ],
    );
    expect_exit(&out, 0, "enroll --profile modbus", &server);
    verify_issued(&server, &d);
    let l = leaf(&d);
    // a UTF8String (tag 12) holding the role, not an OCTET STRING.
    assert_eq!(
        l.modbus_role.as_deref(),
        Some(&b"\x0c\x08operator"[..]),
        "{l:?}"
    );
    assert_eq!(l.ekus, ["serverAuth", "clientAuth"], "{l:?}");

    // An account whose credential grants no role gets no modbus certificate.
    let plain = server.eab_create_with(&[]).expect("eab create");
    let other = device(&server, "rtu-5.plant.test");
    let out = other.run(
        "enroll",
        &[
            "--profile",
            "modbus",
            "--eab-kid",
            &plain.kid,
            "--eab-hmac",
            &plain.hmac_b64url,
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", out.tails());
    assert!(
        out.stderr.contains("invalidProfile") && out.stderr.contains("Modbus role"),
        "{}",
        out.stderr
    );
    assert!(!other.cert().exists());
}
