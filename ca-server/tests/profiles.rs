//! Certificate profiles (draft-ietf-acme-profiles; SPEC §8.3): the directory's
//! `meta.profiles`, `profile` in newOrder and the order object, `invalidProfile`, and the
//! contents of each built-in profile's certificates, parsed with x509-parser.
//!
//! Orders are made ready by pre-authorization (an allow-listed EAB credential, SPEC §6.6), so
//! the tests need no network validation.

mod common;

use axum::http::StatusCode;
use ca_server::ca::profiles::ProfilesConfig;
use common::{b64, TestServer};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, SanType};
use serde_json::{json, Value};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const MODBUS_ROLE_OID: &str = "1.3.6.1.4.1.50316.802.1";
/// ecdsa-with-SHA256: the P-256 (EC) intermediate's signature.
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";
/// sha256WithRSAEncryption: the RSA intermediate's signature.
const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";

fn server(profiles_toml: &str) -> TestServer {
    let profiles: ProfilesConfig = toml::from_str(profiles_toml).expect("profiles TOML");
    TestServer::with(|c| {
        c.eab.required = true;
        c.profiles = profiles;
    })
}

/// An account bound with a credential that pre-authorizes `*.plant.example` and 10.20/16.
async fn account(s: &TestServer, role: Option<&str>) -> common::Account {
    let allow = ["dns:plant.example", "ip:10.20.0.0/16", "serial:SN-0042"];
    let cred = common::credential(s, &allow, role);
    common::bound_account(s, &cred).await
}

fn new_order(names: &[&str], profile: Option<&str>) -> Value {
    let ids: Vec<Value> = names
        .iter()
        .map(|n| {
            let kind = if n.starts_with("SN-") {
                "permanent-identifier"
            } else if n.parse::<std::net::IpAddr>().is_ok() {
                "ip"
            } else {
                "dns"
            };
            json!({"type": kind, "value": n})
        })
        .collect();
    let mut p = json!({ "identifiers": ids });
    if let Some(profile) = profile {
        p["profile"] = json!(profile);
    }
    p
}

/// A DER CSR for `names` (CN = the first) plus URI SANs and extra requested extensions.
fn csr(key: &KeyPair, names: &[&str], uris: &[&str], extensions: Vec<CustomExtension>) -> Vec<u8> {
    let mut p = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("params");
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    for uri in uris {
        p.subject_alt_names
            .push(SanType::URI((*uri).try_into().expect("ia5")));
    }
    p.custom_extensions = extensions;
    p.serialize_request(key).expect("csr").der().to_vec()
}

/// Creates an order and checks it is ready and names its profile.
async fn ready_order(
    s: &TestServer,
    acct: &common::Account,
    names: &[&str],
    profile: Option<&str>,
) -> Value {
    let (_, o) = s.create_order(acct, &new_order(names, profile)).await;
    assert_eq!(o["status"], "ready", "{o}");
    assert_eq!(o["profile"], profile.unwrap_or("default"), "{o}");
    o
}

/// Finalizes and downloads; returns the leaf DER or the problem reply.
async fn finalize(
    s: &TestServer,
    acct: &common::Account,
    order: &Value,
    csr: Vec<u8>,
) -> Result<Vec<u8>, common::Reply> {
    let chain = finalize_chain(s, acct, order, csr).await?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&chain).expect("PEM");
    Ok(pem.contents)
}

/// Finalizes and downloads; returns the leaf DER, or panics with the problem.
async fn issued(s: &TestServer, acct: &common::Account, order: &Value, csr: Vec<u8>) -> Vec<u8> {
    finalize(s, acct, order, csr)
        .await
        .unwrap_or_else(|r| panic!("finalize: {}", String::from_utf8_lossy(&r.body)))
}

/// Finalizes and downloads; returns the PEM chain or the problem reply.
async fn finalize_chain(
    s: &TestServer,
    acct: &common::Account,
    order: &Value,
    csr: Vec<u8>,
) -> Result<Vec<u8>, common::Reply> {
    let fin = s.finalize(acct, order, &csr).await;
    if fin.status != StatusCode::OK {
        return Err(fin);
    }
    let o = fin.json();
    assert_eq!(o["status"], "valid", "{o}");
    Ok(s.certificate_chain(acct, &o).await.into_bytes())
}

async fn issue(
    s: &TestServer,
    acct: &common::Account,
    names: &[&str],
    profile: Option<&str>,
    key: &KeyPair,
    uris: &[&str],
) -> Vec<u8> {
    let order = ready_order(s, acct, names, profile).await;
    issued(s, acct, &order, csr(key, names, uris, Vec::new())).await
}

/// What a test looks at in a certificate.
#[derive(Debug, Default)]
struct Contents {
    cn: Option<String>,
    o: Option<String>,
    dns: Vec<String>,
    ips: Vec<Vec<u8>>,
    uris: Vec<String>,
    other_names: usize,
    key_usage: Vec<&'static str>,
    eku: Vec<&'static str>,
    role: Option<Vec<u8>>,
    lifetime: i64,
    /// The signature algorithm OID.
    signature: String,
}

fn contents(der: &[u8]) -> Contents {
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    let mut c = Contents {
        cn: cert
            .subject()
            .iter_common_name()
            .next()
            .map(|a| a.as_str().expect("cn").to_owned()),
        o: cert
            .subject()
            .iter_organization()
            .next()
            .map(|a| a.as_str().expect("o").to_owned()),
        lifetime: cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp(),
        signature: cert.signature_algorithm.algorithm.to_id_string(),
        ..Contents::default()
    };
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == MODBUS_ROLE_OID {
            assert!(!ext.critical);
            c.role = Some(ext.value.to_vec());
        }
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => c.dns.push((*d).to_owned()),
                        GeneralName::IPAddress(ip) => c.ips.push(ip.to_vec()),
                        GeneralName::URI(u) => c.uris.push((*u).to_owned()),
                        GeneralName::OtherName(..) => c.other_names += 1,
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                for (on, name) in [
                    (ku.digital_signature(), "digitalSignature"),
                    (ku.non_repudiation(), "nonRepudiation"),
                    (ku.key_encipherment(), "keyEncipherment"),
                    (ku.data_encipherment(), "dataEncipherment"),
                    (ku.key_agreement(), "keyAgreement"),
                    (ku.key_cert_sign(), "keyCertSign"),
                ] {
                    if on {
                        c.key_usage.push(name);
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.other.is_empty(), "{eku:?}");
                if eku.server_auth {
                    c.eku.push("serverAuth");
                }
                if eku.client_auth {
                    c.eku.push("clientAuth");
                }
            }
            _ => {}
        }
    }
    c
}

/// An RSA-2048 key from openssl (ring cannot generate RSA keys).
fn rsa_key() -> KeyPair {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl genpkey");
    assert!(out.status.success());
    let pem = String::from_utf8(out.stdout).expect("pem");
    KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("rsa key")
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

#[tokio::test]
async fn directory_lists_the_profiles_with_descriptions() {
    let s =
        server("[plc-line]\ndescription = \"Line PLCs\"\nextended_key_usage = [\"client-auth\"]");
    let meta = &s.directory().await["meta"]["profiles"];
    for name in ["default", "tls-server", "mqtt-client", "opcua", "modbus"] {
        assert!(
            meta[name].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: {meta}"
        );
    }
    assert_eq!(meta["plc-line"], "Line PLCs");
}

#[tokio::test]
async fn an_unknown_profile_is_invalid_profile() {
    let s = server("");
    let acct = account(&s, None).await;
    let r = s
        .post_new_order(
            &acct,
            &new_order(&["plc-1.plant.example"], Some("shortlived")),
        )
        .await;
    r.assert_problem_detail(400, "invalidProfile", "shortlived");
}

#[tokio::test]
async fn no_profile_gets_the_default_certificate() {
    let s = server("");
    let acct = account(&s, None).await;
    let c = contents(&issue(&s, &acct, &["plc-1.plant.example"], None, &p256(), &[]).await);
    assert_eq!(c.signature, ECDSA_WITH_SHA256, "the EC intermediate signs");
    assert_eq!(c.cn.as_deref(), Some("plc-1.plant.example"));
    assert_eq!(c.eku, ["serverAuth", "clientAuth"]);
    assert_eq!(c.key_usage, ["digitalSignature"]);
    assert_eq!(c.lifetime, 7 * 86_400 + 60);
}

#[tokio::test]
async fn the_configured_default_applies_to_orders_without_profile() {
    let s = server("default = \"mqtt-client\"");
    let acct = account(&s, None).await;
    let r = s
        .post_new_order(&acct, &new_order(&["plc-1.plant.example"], None))
        .await;
    assert_eq!(r.json()["profile"], "mqtt-client");
}

#[tokio::test]
async fn tls_server_is_server_auth_only() {
    let s = server("");
    let acct = account(&s, None).await;
    let der = issue(
        &s,
        &acct,
        &["10.20.0.5", "broker.plant.example"],
        Some("tls-server"),
        &p256(),
        &[],
    )
    .await;
    let c = contents(&der);
    assert_eq!(c.eku, ["serverAuth"]);
    assert_eq!(c.dns, ["broker.plant.example"]);
    assert_eq!(c.ips, [vec![10, 20, 0, 5]]);
}

#[tokio::test]
async fn mqtt_client_has_the_device_identity_as_cn_and_client_auth_only() {
    let s = server("[mqtt-client]\nvalidity = \"30d\"");
    let acct = account(&s, None).await;
    let der = issue(
        &s,
        &acct,
        &["sensor-17.plant.example"],
        Some("mqtt-client"),
        &p256(),
        &[],
    )
    .await;
    let c = contents(&der);
    assert_eq!(c.cn.as_deref(), Some("sensor-17.plant.example"));
    assert_eq!(c.eku, ["clientAuth"]);
    assert_eq!(c.lifetime, 30 * 86_400 + 60);
    assert!(c.uris.is_empty() && c.role.is_none());

    // A URI SAN is only for the opcua profile: badCSR, and the order stays ready.
    let order = ready_order(&s, &acct, &["sensor-18.plant.example"], Some("mqtt-client")).await;
    let key = p256();
    let r = finalize(
        &s,
        &acct,
        &order,
        csr(
            &key,
            &["sensor-18.plant.example"],
            &["urn:plant.example:x"],
            Vec::new(),
        ),
    )
    .await
    .expect_err("URI refused");
    r.assert_problem(400, "badCSR");
    let der = issued(
        &s,
        &acct,
        &order,
        csr(&key, &["sensor-18.plant.example"], &[], Vec::new()),
    )
    .await;
    assert_eq!(
        contents(&der).cn.as_deref(),
        Some("sensor-18.plant.example")
    );
}

const OPCUA: &str = "[opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]\norganization = \"Plant Example Ltd\"";

#[tokio::test]
async fn opcua_rsa_certificate_carries_the_application_uri_and_the_four_key_usages() {
    let s = server(OPCUA);
    let acct = account(&s, None).await;
    let der = issue(
        &s,
        &acct,
        &["plc-7.plant.example", "10.20.0.7"],
        Some("opcua"),
        &rsa_key(),
        &["urn:plant.example:line1:plc7"],
    )
    .await;
    let c = contents(&der);
    assert_eq!(c.uris, ["urn:plant.example:line1:plc7"]);
    assert_eq!(c.dns, ["plc-7.plant.example"]);
    assert_eq!(c.ips, [vec![10, 20, 0, 7]]);
    // CN = the first identifier of the order (SPEC §4.4 order: dns before ip).
    assert_eq!(c.cn.as_deref(), Some("plc-7.plant.example"));
    assert_eq!(c.o.as_deref(), Some("Plant Example Ltd"));
    assert_eq!(
        c.key_usage,
        [
            "digitalSignature",
            "nonRepudiation",
            "keyEncipherment",
            "dataEncipherment"
        ]
    );
    assert_eq!(c.eku, ["serverAuth", "clientAuth"]);
    assert_eq!(c.signature, SHA256_WITH_RSA, "the RSA intermediate signs");
}

#[tokio::test]
async fn opcua_ecc_certificate_signs_only() {
    let s = server(OPCUA);
    let acct = account(&s, None).await;
    let der = issue(
        &s,
        &acct,
        &["hmi-2.plant.example"],
        Some("opcua"),
        &p256(),
        &["urn:plant.example:hmi2"],
    )
    .await;
    let c = contents(&der);
    assert_eq!(c.key_usage, ["digitalSignature", "nonRepudiation"]);
    assert_eq!(c.uris, ["urn:plant.example:hmi2"]);
    assert_eq!(
        c.signature, ECDSA_WITH_SHA256,
        "ECC keys stay on the EC intermediate"
    );
}

#[tokio::test]
async fn opcua_refuses_uris_outside_policy_missing_uris_and_other_key_types() {
    let s = server(OPCUA);
    let acct = account(&s, None).await;
    let names = ["plc-8.plant.example"];
    let order = ready_order(&s, &acct, &names, Some("opcua")).await;
    let key = p256();
    for uris in [
        &["urn:evil.example:plc8"][..],
        &[],
        &["urn:plant.example:a", "urn:plant.example:b"],
    ] {
        let r = finalize(&s, &acct, &order, csr(&key, &names, uris, Vec::new()))
            .await
            .expect_err("refused");
        r.assert_problem_detail(400, "badCSR", "ApplicationUri");
    }
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    let r = finalize(
        &s,
        &acct,
        &order,
        csr(&ed, &names, &["urn:plant.example:plc8"], Vec::new()),
    )
    .await
    .expect_err("ed25519 refused");
    r.assert_problem(400, "badPublicKey");
    // The order is still ready after all of that.
    issued(
        &s,
        &acct,
        &order,
        csr(&key, &names, &["urn:plant.example:plc8"], Vec::new()),
    )
    .await;

    // The built-in opcua profile allows no URI until the operator configures prefixes.
    let s = server("");
    let acct = account(&s, None).await;
    let order = ready_order(&s, &acct, &names, Some("opcua")).await;
    let r = finalize(
        &s,
        &acct,
        &order,
        csr(&key, &names, &["urn:plant.example:plc8"], Vec::new()),
    )
    .await
    .expect_err("no policy");
    r.assert_problem(400, "badCSR");
}

#[tokio::test]
async fn opcua_without_an_organization_refuses_issuance_and_says_what_to_set() {
    // The CA starts on the built-in opcua profile, which has no organization ...
    let s = server("[opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]");
    let acct = account(&s, None).await;
    let names = ["plc-8.plant.example"];
    let order = ready_order(&s, &acct, &names, Some("opcua")).await;
    // ... but issues nothing under it: OPC 10000-6 §6.2.2 wants the subject O.
    let r = finalize(
        &s,
        &acct,
        &order,
        csr(&p256(), &names, &["urn:plant.example:plc8"], Vec::new()),
    )
    .await
    .expect_err("no organization");
    r.assert_problem_detail(400, "badCSR", "profiles.opcua.organization");
    // Other profiles need no organization.
    let order = ready_order(&s, &acct, &names, Some("tls-server")).await;
    issued(&s, &acct, &order, csr(&p256(), &names, &[], Vec::new())).await;
}

#[tokio::test]
async fn modbus_role_comes_from_the_credential_never_from_the_csr() {
    let s = server("");
    // No role granted anywhere: the profile cannot be used.
    let acct = account(&s, None).await;
    let r = s
        .post_new_order(&acct, &new_order(&["plc-9.plant.example"], Some("modbus")))
        .await;
    r.assert_problem(400, "invalidProfile");

    let acct = account(&s, Some("operator")).await;
    let order = ready_order(&s, &acct, &["plc-9.plant.example"], Some("modbus")).await;
    // The CSR asks for an engineer role; it is ignored.
    let wanted = CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 50316, 802, 1],
        [&[0x0c, 8][..], b"engineer"].concat(),
    );
    let key = p256();
    let der = issued(
        &s,
        &acct,
        &order,
        csr(&key, &["plc-9.plant.example"], &[], vec![wanted]),
    )
    .await;
    let c = contents(&der);
    // a UTF8String (tag 0x0c), not an OCTET STRING.
    assert_eq!(
        c.role.as_deref(),
        Some(&[&[0x0c, 8][..], b"operator"].concat()[..])
    );
    assert_eq!(c.eku, ["serverAuth", "clientAuth"]);
}

#[tokio::test]
async fn modbus_falls_back_to_the_profile_role() {
    let s = server("[modbus]\nrole = \"viewer\"");
    let acct = account(&s, None).await;
    let der = issue(
        &s,
        &acct,
        &["hmi-3.plant.example"],
        Some("modbus"),
        &p256(),
        &[],
    )
    .await;
    assert_eq!(
        contents(&der).role.as_deref(),
        Some(&[&[0x0c, 6][..], b"viewer"].concat()[..])
    );
    // Other profiles never carry a role.
    let der = issue(
        &s,
        &acct,
        &["hmi-4.plant.example"],
        Some("tls-server"),
        &p256(),
        &[],
    )
    .await;
    assert!(contents(&der).role.is_none());
}

#[tokio::test]
async fn custom_profiles_add_extensions() {
    // A non-critical extension with a private OID holding UTF8String "line-1".
    let s = server(
        "[line]\ndescription = \"Line 1\"\nextensions = [{ oid = \"1.3.6.1.4.1.32473.1\", value_hex = \"0c066c696e652d31\" }]",
    );
    let acct = account(&s, None).await;
    let der = issue(
        &s,
        &acct,
        &["plc-1.plant.example"],
        Some("line"),
        &p256(),
        &[],
    )
    .await;
    let (_, cert) = X509Certificate::from_der(&der).expect("cert");
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.32473.1")
        .expect("extension");
    assert_eq!(ext.value, b"\x0c\x06line-1");
    assert_eq!(contents(&der).eku, ["serverAuth", "clientAuth"]);
}

#[tokio::test]
async fn opcua_uri_follows_a_permanent_identifier_in_the_san() {
    // With a PermanentIdentifier the server writes the SAN extension itself (SPEC §8.2); the
    // ApplicationUri must survive that path too.
    let s = server(OPCUA);
    let acct = account(&s, None).await;
    let order = ready_order(
        &s,
        &acct,
        &["SN-0042", "plc-42.plant.example"],
        Some("opcua"),
    )
    .await;
    let key = p256();
    let der = issued(
        &s,
        &acct,
        &order,
        csr(
            &key,
            &["plc-42.plant.example"],
            &["urn:plant.example:plc42"],
            Vec::new(),
        ),
    )
    .await;
    let c = contents(&der);
    assert_eq!(c.other_names, 1);
    assert_eq!(c.dns, ["plc-42.plant.example"]);
    assert_eq!(c.uris, ["urn:plant.example:plc42"]);
    assert_eq!(c.cn.as_deref(), Some("SN-0042"));
}

/// The AKI keyIdentifier of a certificate, or the SKI of a CA certificate.
fn key_id(der: &[u8], aki: bool) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) if aki => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            ParsedExtension::SubjectKeyIdentifier(k) if !aki => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("key identifier")
}

fn pem_blocks(pem: &[u8]) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map(|p| p.expect("PEM").contents)
        .collect()
}

async fn get(s: &TestServer, path: &str) -> common::Reply {
    s.get(&s.url(path)).await
}

fn crl_serials(der: &[u8]) -> Vec<Vec<u8>> {
    let (_, crl) = x509_parser::parse_x509_crl(der).expect("CRL parses");
    crl.iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect()
}

#[tokio::test]
async fn opcua_rsa_certificates_have_the_rsa_chain_crl_and_ari() {
    let s = server(OPCUA);
    let acct = account(&s, None).await;
    let names = ["plc-9.plant.example"];
    let order = ready_order(&s, &acct, &names, Some("opcua")).await;
    let csr = csr(&rsa_key(), &names, &["urn:plant.example:plc9"], Vec::new());
    let chain = finalize_chain(&s, &acct, &order, csr)
        .await
        .unwrap_or_else(|r| panic!("finalize: {}", String::from_utf8_lossy(&r.body)));

    // The chain is the leaf and the RSA intermediate (SPEC §7.5), the AKI names it.
    let blocks = pem_blocks(&chain);
    assert_eq!(blocks.len(), 2);
    let rsa_pem = s.app.ca.rsa_intermediate_pem().expect("RSA intermediate");
    assert_eq!(blocks[1], pem_blocks(rsa_pem.as_bytes())[0]);
    let leaf = &blocks[0];
    assert_eq!(contents(leaf).signature, SHA256_WITH_RSA);
    assert_eq!(key_id(leaf, true), key_id(&blocks[1], false));
    let (_, cert) = X509Certificate::from_der(leaf).expect("certificate");
    let cdp = common::crl_distribution_points(leaf);
    assert!(cdp.contains(&s.url("/crl/rsa")), "{cdp}");

    // ARI finds it by the RSA intermediate's key identifier.
    let cert_id = format!("{}.{}", b64(key_id(leaf, true)), b64(cert.raw_serial()));
    let r = get(&s, &format!("/acme/renewal-info/{cert_id}")).await;
    r.assert_status(StatusCode::OK);
    let wrong_aki = format!(
        "{}.{}",
        b64(key_id(
            &pem_blocks(s.app.ca.intermediate_pem().as_bytes())[0],
            false
        )),
        b64(cert.raw_serial())
    );
    let r = get(&s, &format!("/acme/renewal-info/{wrong_aki}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Revoked: on the RSA intermediate's CRL, signed by it, and not on the EC one.
    let r = s
        .post_as(
            &acct,
            &s.url("/acme/revoke-cert"),
            Some(&json!({"certificate": b64(leaf), "reason": 1})),
        )
        .await;
    r.assert_status(StatusCode::OK);
    let rsa_crl = get(&s, "/crl/rsa").await;
    assert_eq!(rsa_crl.status, StatusCode::OK);
    assert_eq!(
        rsa_crl.header("content-type").as_deref(),
        Some("application/pkix-crl")
    );
    assert_eq!(crl_serials(&rsa_crl.body), [cert.raw_serial().to_vec()]);
    let (_, crl) = x509_parser::parse_x509_crl(&rsa_crl.body).expect("CRL");
    let (_, int) = X509Certificate::from_der(&blocks[1]).expect("intermediate");
    assert_eq!(crl.issuer().as_raw(), int.subject().as_raw());
    assert!(crl.verify_signature(int.public_key()).is_ok());
    assert!(s.dir.path().join("crl-rsa.pem").is_file());
    let ec_crl = get(&s, "/crl").await;
    assert_eq!(ec_crl.status, StatusCode::OK);
    assert!(crl_serials(&ec_crl.body).is_empty());
}

#[tokio::test]
async fn rsa_keys_of_other_profiles_or_issuer_ec_stay_on_the_ec_intermediate() {
    let s = server(&format!("{OPCUA}\nissuer = \"ec\""));
    let acct = account(&s, None).await;
    let der = issue(
        &s,
        &acct,
        &["plc-10.plant.example"],
        Some("opcua"),
        &rsa_key(),
        &["urn:plant.example:plc10"],
    )
    .await;
    assert_eq!(contents(&der).signature, ECDSA_WITH_SHA256);
    let der = issue(&s, &acct, &["plc-11.plant.example"], None, &rsa_key(), &[]).await;
    assert_eq!(contents(&der).signature, ECDSA_WITH_SHA256);
    assert_eq!(
        key_id(&der, true),
        key_id(
            &pem_blocks(s.app.ca.intermediate_pem().as_bytes())[0],
            false
        )
    );
}

#[tokio::test]
async fn without_an_rsa_intermediate_its_crl_is_not_found() {
    let s = TestServer::with(|c| {
        c.issuance.rsa_intermediate_key = ca_server::ca::RsaIntermediateKey::None;
        c.profiles = toml::from_str("[opcua]\nissuer = \"ec\"").expect("profiles TOML");
    });
    assert!(s.app.ca.rsa_intermediate_pem().is_none());
    assert_eq!(get(&s, "/crl/rsa").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&s, "/crl").await.status, StatusCode::OK);
}
