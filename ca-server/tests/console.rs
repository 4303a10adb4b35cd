//! The operator console's API over real HTTPS with client certificates: who gets in (401),
//! what each role may do (403), the audit log, the OpenAPI document against the routes, and a
//! device approved, then revoked, through the console.

mod common;

use std::sync::Arc;

use ca_server::ra::operator::{self, Role};
use common::TestServer;
use serde_json::{json, Value};

/// A CA with its console on a loopback port of its own.
struct Console {
    s: TestServer,
    base: String,
    root_der: Vec<u8>,
}

impl Console {
    async fn start(f: impl FnOnce(&mut ca_server::config::Config)) -> Self {
        Self::on(TestServer::with(f)).await
    }

    /// The console of `s`.
    async fn on(s: TestServer) -> Self {
        let acme = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let console = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("https://{}", console.local_addr().expect("addr"));
        let app = s.app.clone();
        tokio::spawn(async move {
            ca_server::server::serve_with_console(app, acme, Some(console)).await
        });
        let root_der =
            common::leaf_der(&std::fs::read_to_string(s.app.ca.root_path()).expect("root"));
        let c = Self { s, base, root_der };
        // The listener is up once a request gets an answer.
        for _ in 0..100 {
            if c.client(None)
                .get(c.url("/api/whoami"))
                .send()
                .await
                .is_ok()
            {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the console did not come up");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An operator of `role`, made as `ca-server operator add` makes one.
    fn operator(&self, name: &str, role: Role) -> Identity {
        let (_, cred) = operator::create(
            &self.s.app.operators,
            self.s.dir.path(),
            name,
            role,
            std::time::Duration::from_secs(3600),
            "test",
        )
        .expect("operator");
        Identity {
            cert: cred.cert_der,
            key: cred.key_der,
        }
    }

    /// A CA whose devices wait for operator approval.
    async fn with_approval() -> Self {
        Self::start(|cfg| {
            cfg.enrollment.operator_approval = true;
            cfg.enrollment.network_challenges = false;
        })
        .await
    }

    /// A device that orders `name` and waits for an operator: its account, order, challenge
    /// URL and the pairing code it shows.
    async fn waiting_device(&self, name: &str) -> (common::Account, Value, String, String) {
        waiting_device(&self.s, name).await
    }

    /// Lists the waiting devices as `approver`, checks that the first is the one showing
    /// `code`, and approves it; returns its entry in the list.
    async fn approve_first(&self, approver: &Identity, code: &str) -> Value {
        let (status, pending) = self
            .call(Some(approver), reqwest::Method::GET, "/api/approvals", None)
            .await;
        assert_eq!(status, 200, "{pending}");
        let p = pending["pending"][0].clone();
        assert_eq!(p["pairingCode"].as_str(), Some(code), "{pending}");
        let id = p["id"].as_str().expect("id");
        let (status, body) = self
            .call(
                Some(approver),
                reqwest::Method::POST,
                &format!("/api/approvals/{id}/approve"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        p
    }

    /// An HTTPS client trusting the CA's root, presenting `identity` if given.
    fn client(&self, identity: Option<&Identity>) -> reqwest::Client {
        self.client_with(identity, reqwest::redirect::Policy::default())
    }

    /// `client`, following redirects as `redirects` says.
    fn client_with(
        &self,
        identity: Option<&Identity>,
        redirects: reqwest::redirect::Policy,
    ) -> reqwest::Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.root_der.clone(),
            ))
            .expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let tls = match identity {
            Some(id) => builder
                .with_client_auth_cert(
                    vec![id.cert.clone().into()],
                    rustls::pki_types::PrivatePkcs8KeyDer::from(id.key.clone()).into(),
                )
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(redirects)
            .build()
            .expect("client")
    }

    async fn call(
        &self,
        who: Option<&Identity>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client(who).request(method, self.url(path));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// A device that orders `name` at `s` and waits for an operator: its account, order,
/// challenge URL and the pairing code it shows.
async fn waiting_device(s: &TestServer, name: &str) -> (common::Account, Value, String, String) {
    let acct = s.new_account().await;
    let (_, order) = s
        .create_order(
            &acct,
            &json!({"identifiers": [{"type": "dns", "value": name}]}),
        )
        .await;
    let authz = s
        .post_as(
            &acct,
            order["authorizations"][0].as_str().expect("authz"),
            None,
        )
        .await
        .json();
    let chall = authz["challenges"][0]["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let token = authz["challenges"][0]["token"].as_str().expect("token");
    s.post_as(&acct, &chall, Some(&json!({}))).await;
    let code = ca_server::wire::pairing_code(token, &acct.key.thumbprint()).expect("code");
    (acct, order, chall, code)
}

struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

#[tokio::test]
async fn only_active_operators_get_in_and_roles_limit_what_they_do() {
    let c = Console::start(|_| {}).await;
    let viewer = c.operator("vera", Role::Viewer);
    let approver = c.operator("arno", Role::Approver);
    let admin = c.operator("ada", Role::Admin);
    use reqwest::Method;

    // No certificate: 401 with a problem document.
    let (status, body) = c.call(None, Method::GET, "/api/whoami", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "urn:ietf:params:acme:error:unauthorized");

    let (status, me) = c
        .call(Some(&viewer), Method::GET, "/api/whoami", None)
        .await;
    assert_eq!(
        (status, me["name"].as_str(), me["role"].as_str()),
        (200, Some("vera"), Some("viewer"))
    );
    assert!(
        me["from"]
            .as_str()
            .is_some_and(|f| f.starts_with("127.0.0.1:")),
        "{me}"
    );

    // A viewer reads but may not approve, revoke or create credentials: 403.
    for (method, path, body) in [
        (Method::POST, "/api/approvals/some-id/approve", None),
        (
            Method::POST,
            "/api/revoke",
            Some(json!({"serial": "01", "reason": 0})),
        ),
        (Method::POST, "/api/credentials", Some(json!({}))),
        (
            Method::POST,
            "/api/operators",
            Some(json!({"name": "eve", "role": "admin"})),
        ),
    ] {
        let (status, body) = c.call(Some(&viewer), method, path, body).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    // An approver may approve (404 here: no such request) but not revoke or add operators.
    let (status, body) = c
        .call(
            Some(&approver),
            Method::POST,
            "/api/approvals/some-id/approve",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = c
        .call(
            Some(&approver),
            Method::POST,
            "/api/revoke",
            Some(json!({"serial": "01", "reason": 0})),
        )
        .await;
    assert_eq!(status, 403);

    // Reasons are the RFC 5280 ones an operator may give (not certificateHold, not 255).
    for reason in [6, 8, 255] {
        let (status, body) = c
            .call(
                Some(&admin),
                Method::POST,
                "/api/revoke",
                Some(json!({"serial": "01", "reason": reason})),
            )
            .await;
        assert_eq!(status, 400, "{reason}: {body}");
    }

    // An admin creates a credential; the HMAC key is in that answer only.
    let (status, cred) = c
        .call(
            Some(&admin),
            Method::POST,
            "/api/credentials",
            Some(json!({"allow": ["dns:line-1.plant.example"], "maxUses": 5, "expires": "30d"})),
        )
        .await;
    assert_eq!(status, 200, "{cred}");
    let kid = cred["kid"].as_str().expect("kid").to_owned();
    assert!(
        cred["hmac"].as_str().is_some_and(|h| h.len() >= 40),
        "{cred}"
    );
    let (_, list) = c
        .call(Some(&viewer), Method::GET, "/api/credentials", None)
        .await;
    let listed = list["credentials"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["kid"] == kid.as_str()))
        .expect("listed");
    assert!(
        listed.get("hmac").is_none()
            && !listed
                .to_string()
                .contains(cred["hmac"].as_str().unwrap_or("-"))
    );

    // A bad request is a problem document, not a 500.
    let (status, body) = c
        .call(
            Some(&admin),
            Method::POST,
            "/api/credentials",
            Some(json!({"allow": ["mac:00"]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = c
        .call(
            Some(&admin),
            Method::POST,
            "/api/credentials",
            Some(json!({"bogus": 1})),
        )
        .await;
    assert!(
        (400..500).contains(&status),
        "unknown fields are refused: {status}"
    );

    // An admin adds an operator; the new one gets in with the certificate it was handed.
    let (status, added) = c
        .call(
            Some(&admin),
            Method::POST,
            "/api/operators",
            Some(json!({"name": "olga", "role": "approver"})),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    let olga = Identity {
        cert: common::leaf_der(added["certificatePem"].as_str().expect("pem")),
        key: pem_body(added["keyPem"].as_str().expect("key")),
    };
    let (status, me) = c.call(Some(&olga), Method::GET, "/api/whoami", None).await;
    assert_eq!((status, me["role"].as_str()), (200, Some("approver")));
    let p12 =
        ca_server::wire::b64u_decode("p12", added["pkcs12"].as_str().expect("p12")).expect("b64");
    let pass = added["pkcs12Passphrase"].as_str().expect("pass");
    p12_keystore::KeyStore::from_pkcs12(&p12, pass, p12_keystore::Pkcs12ImportPolicy::default())
        .expect("the PKCS#12 file opens with the passphrase handed over");

    // Revoked: the same certificate is refused at once.
    let (status, _) = c
        .call(
            Some(&admin),
            Method::POST,
            "/api/operators/olga/revoke",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = c.call(Some(&olga), Method::GET, "/api/whoami", None).await;
    assert_eq!(status, 401, "{body}");

    // Every change is in the audit log with who, from where; the chain is intact.
    let (status, log) = c.call(Some(&viewer), Method::GET, "/api/audit", None).await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["chain"], "intact");
    let entries = log["entries"]["items"].as_array().expect("entries");
    let actions: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["actor"].as_str().unwrap_or(""),
                e["target"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // Newest first.
    assert_eq!(
        actions,
        vec![
            ("operator.revoke", "ada", "olga"),
            ("operator.add", "ada", "olga"),
            ("credential.create", "ada", kid.as_str()),
        ]
    );
    assert!(entries.iter().all(|e| e["from"]
        .as_str()
        .is_some_and(|f| f.starts_with("127.0.0.1:"))));
    assert!(!std::fs::read_to_string(c.s.dir.path().join("audit.log"))
        .expect("log")
        .contains(cred["hmac"].as_str().expect("hmac")));
}

/// A page of another site in the operator's browser cannot make the console change anything,
/// although the browser attaches the operator's certificate.
#[tokio::test]
async fn requests_a_browser_marks_cross_site_change_nothing() {
    let c = Console::start(|_| {}).await;
    let admin = c.operator("ada", Role::Admin);
    let client = c.client(Some(&admin));
    let post = |headers: &[(&str, &str)]| {
        let mut req = client
            .post(c.url("/api/operators"))
            .header("content-type", "application/json")
            .body(json!({"name": "mallory", "role": "admin"}).to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "https://evil.example")],
    ] {
        let r = post(headers).await.expect("answer");
        assert_eq!(r.status().as_u16(), 403, "{headers:?}");
        let h = r.headers();
        assert_eq!(
            h.get("x-frame-options").map(|v| v.as_bytes()),
            Some(&b"DENY"[..])
        );
    }
    // A form a page of another site posts, from a browser too old to say where it comes from.
    let r = client
        .post(c.url("/operators"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=mallory&role=admin")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 403);
    let (status, ops) = c
        .call(Some(&admin), reqwest::Method::GET, "/api/operators", None)
        .await;
    assert_eq!(status, 200);
    assert!(!ops.to_string().contains("mallory"), "{ops}");
    // The console's own pages, and clients that are not browsers, may.
    let origin = c.base.clone();
    let r = post(&[("origin", origin.as_str())]).await.expect("answer");
    assert_eq!(r.status().as_u16(), 200);
}

/// The console speaks TLS 1.3 only, so the client certificate naming the operator is never
/// sent in the clear.
#[tokio::test]
async fn the_console_refuses_tls_1_2() {
    let c = Console::start(|_| {}).await;
    let admin = c.operator("ada", Role::Admin);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(c.root_der.clone()))
        .expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![admin.cert.clone().into()],
        rustls::pki_types::PrivatePkcs8KeyDer::from(admin.key.clone()).into(),
    )
    .expect("cert");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("client");
    assert!(client.get(c.url("/api/whoami")).send().await.is_err());
    let (status, _) = c
        .call(Some(&admin), reqwest::Method::GET, "/api/whoami", None)
        .await;
    assert_eq!(status, 200, "TLS 1.3 works");
}

#[tokio::test]
async fn certificates_of_other_hierarchies_cannot_open_a_session() {
    let c = Console::start(|_| {}).await;
    // A client certificate from the CA's own device intermediate, as a device could get.
    let dir = c.s.dir.path().join("ca");
    let issuer_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(dir.join("intermediate.key")).expect("key"),
    )
    .expect("key");
    let issuer = rcgen::Issuer::from_ca_cert_der(
        &common::leaf_der(&std::fs::read_to_string(dir.join("intermediate.pem")).expect("pem"))
            .into(),
        issuer_key,
    )
    .expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["plc-1".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ada");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let device = Identity {
        cert: cert.der().to_vec(),
        key: key.serialize_der(),
    };
    // Even with a name an operator has.
    c.operator("ada", Role::Admin);
    let refused = c
        .client(Some(&device))
        .get(c.url("/api/whoami"))
        .send()
        .await;
    assert!(refused.is_err(), "the handshake fails: {refused:?}");
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes() {
    let c = Console::start(|_| {}).await;
    let admin = c.operator("ada", Role::Admin);
    let (status, doc) = c
        .call(
            Some(&admin),
            reqwest::Method::GET,
            "/api/openapi.json",
            None,
        )
        .await;
    assert_eq!(status, 200, "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15, "{}", paths.len());
    for (path, item) in paths {
        for method in ["get", "post"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = path.replace("{serial}", "00").replace(['{', '}'], "");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (status, body) = c.call(Some(&admin), m, &concrete, Some(json!({}))).await;
            // Routed: anything but the fallback's 404 and a 405.
            assert_ne!(status, 405, "{method} {path}");
            assert!(
                !(status == 404 && body.to_string().contains("console resource")),
                "{method} {path} is documented but not routed: {body}"
            );
        }
    }
    // And what is not documented is not routed.
    let (status, body) = c
        .call(
            Some(&admin),
            reqwest::Method::GET,
            "/api/secret-backdoor",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn an_operator_approves_a_waiting_device_and_revokes_it_and_the_crl_lists_it() {
    let c = Console::with_approval().await;
    let approver = c.operator("arno", Role::Approver);
    let admin = c.operator("ada", Role::Admin);
    let s = &c.s;
    let (acct, order, chall, code) = c.waiting_device("plc-7").await;

    // The console shows the code the device shows.
    let p = c.approve_first(&approver, &code).await;
    assert_eq!(p["identifier"], "dns:plc-7");
    let id = p["id"].as_str().expect("id");
    // A decision is final and applied at once: the request is no longer listed, and a
    // rejection after the approval finds nothing to reject.
    let (_, pending) = c
        .call(
            Some(&approver),
            reqwest::Method::GET,
            "/api/approvals",
            None,
        )
        .await;
    assert_eq!(
        pending["pending"].as_array().map(Vec::len),
        Some(0),
        "{pending}"
    );
    let (status, _) = c
        .call(
            Some(&approver),
            reqwest::Method::POST,
            &format!("/api/approvals/{id}/reject"),
            Some(json!({"reason": "changed my mind"})),
        )
        .await;
    assert_eq!(status, 404);

    // The device finishes: valid challenge, certificate issued.
    let mut valid = false;
    for _ in 0..50 {
        if s.post_as(&acct, &chall, None).await.json()["status"] == "valid" {
            valid = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(valid, "approved through the console");
    let key = rcgen::KeyPair::generate().expect("key");
    // Finalized from a plant address, as the listener reports it.
    let mut finalize = s
        .signed_post(
            &acct,
            order["finalize"].as_str().expect("finalize"),
            Some(&json!({"csr": common::b64(common::csr(&["plc-7"], &key))})),
        )
        .await;
    finalize
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [10, 20, 0, 7],
            5555,
        ))));
    let done = s.send(finalize).await.json();
    let mut order_now = done;
    for _ in 0..50 {
        if order_now["status"] == "valid" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        order_now = s
            .post_as(
                &acct,
                order["finalize"]
                    .as_str()
                    .expect("f")
                    .trim_end_matches("/finalize"),
                None,
            )
            .await
            .json();
    }
    let chain = s.certificate_chain(&acct, &order_now).await;
    let der = common::leaf_der(&chain);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert");
    let serial = cert.raw_serial_as_string().replace(':', "");

    // The console lists it, by identifier.
    let (_, page) = c
        .call(
            Some(&approver),
            reqwest::Method::GET,
            "/api/certificates?identifier=dns:plc-7",
            None,
        )
        .await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["items"][0]["serial"].as_str(), Some(serial.as_str()));
    assert_eq!(page["items"][0]["status"], "valid");

    // An approver may not revoke; an admin may, and the CRL lists the certificate.
    let body = json!({"serial": serial, "reason": 5});
    let (status, _) = c
        .call(
            Some(&approver),
            reqwest::Method::POST,
            "/api/revoke",
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 403);
    let (status, revoked) = c
        .call(
            Some(&admin),
            reqwest::Method::POST,
            "/api/revoke",
            Some(body),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    let crl = s
        .get(&s.url(ca_server::ca::crl::path(ca_server::ca::IssuerKind::Ec)))
        .await;
    let (_, crl) = x509_parser::parse_x509_crl(&crl.body).expect("CRL");
    assert!(
        crl.iter_revoked_certificates()
            .any(|r| r.raw_serial_as_string().replace(':', "") == serial),
        "the CRL lists {serial}"
    );
    let (_, page) = c
        .call(
            Some(&admin),
            reqwest::Method::GET,
            &format!("/api/certificates/{serial}"),
            None,
        )
        .await;
    assert_eq!(page["certificate"]["status"], "revoked", "{page}");
    assert_eq!(page["source"], "10.20.0.7", "{page}");

    // The audit log says who approved (with the pairing code) and who revoked.
    let (_, log) = c
        .call(Some(&admin), reqwest::Method::GET, "/api/audit", None)
        .await;
    let items = log["entries"]["items"].as_array().expect("items");
    assert_eq!(items[0]["action"], "certificate.revoke");
    assert_eq!(items[0]["actor"], "ada");
    assert_eq!(items[1]["action"], "approval.approve");
    assert_eq!(items[1]["actor"], "arno");
    assert_eq!(
        items[1]["detail"]["pairingCode"].as_str(),
        Some(code.as_str())
    );
}

/// The PKCS#8 DER of a PEM private key.
fn pem_body(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .expect("PKCS#8 PEM")
        .secret_pkcs8_der()
        .to_vec()
}

/// The web pages: who sees what, forms that act through the API's checks, and device-chosen
/// text (a rejection reason in the audit log) shown as text, never as markup.
#[tokio::test]
async fn the_pages_show_what_the_api_says_and_escape_what_others_wrote() {
    let c = Console::with_approval().await;
    let viewer = c.operator("vera", Role::Viewer);
    let approver = c.operator("arno", Role::Approver);
    let s = &c.s;
    let (_, _, _, code) = c.waiting_device("plc-3").await;

    let page = |who: Option<&Identity>, path: &str| {
        let client = c.client(who);
        let url = c.url(path);
        async move {
            let r = client.get(url).send().await.expect("page");
            (r.status().as_u16(), r.text().await.expect("html"))
        }
    };
    let (status, html) = page(None, "/").await;
    assert_eq!(status, 401);
    assert!(html.contains("id=\"error\""), "{html}");

    let (status, html) = page(Some(&viewer), "/approvals").await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&code),
        "the viewer sees the pairing code: {html}"
    );
    assert!(html.contains("vera (viewer)"));
    assert!(!html.contains("class=\"approve\""), "but no approve button");
    let (status, html) = page(Some(&viewer), "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"count-pending\">1<"), "{html}");

    let id = ca_server::ra::approval::ApprovalQueue::new(s.dir.path())
        .list_pending()
        .expect("pending")[0]
        .id
        .clone();
    let form = "decision=reject&reason=%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let post = |who: &Identity| {
        c.client_with(Some(who), reqwest::redirect::Policy::none())
            .post(c.url(&format!("/approvals/{id}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(form)
            .send()
    };
    let r = post(&viewer).await.expect("answer");
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.expect("html").contains("id=\"error\""));
    assert_eq!(
        ca_server::ra::approval::ApprovalQueue::new(s.dir.path())
            .list_pending()
            .expect("pending")
            .len(),
        1,
        "the viewer's rejection changed nothing"
    );
    let r = post(&approver).await.expect("answer");
    assert_eq!(r.status().as_u16(), 303);
    let to = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert_eq!(to, format!("/approvals?done=rejected&target={id}"));
    let (_, html) = page(Some(&approver), &to).await;
    assert!(html.contains("id=\"flash\""), "{html}");

    let (_, html) = page(Some(&viewer), "/audit").await;
    assert!(html.contains("approval.reject"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");

    // A made-up flash says nothing, nor does a real one with words of a link's own.
    for path in [
        "/approvals?done=pwned&target=x",
        "/approvals?done=approved&target=SN-1.+URGENT:+read+the+code+to+the+caller",
    ] {
        let (_, html) = page(Some(&viewer), path).await;
        assert!(!html.contains("id=\"flash\""), "{path}");
    }
    // Page numbers out of range are an empty page, not an error.
    for path in [
        "/devices?page=18446744073709551615",
        "/audit?page=18446744073709551615",
    ] {
        let (status, _) = page(Some(&viewer), path).await;
        assert_eq!(status, 200, "{path}");
    }
}

/// Every operator sees the configuration the server runs with, in the file's syntax, on the API
/// and on its page; without an operator certificate, nothing.
#[tokio::test]
async fn operators_see_the_running_configuration() {
    let c = Console::start(|cfg| {
        cfg.issuance.cert_validity = std::time::Duration::from_secs(36 * 3600);
    })
    .await;
    let viewer = c.operator("vera", Role::Viewer);
    use reqwest::Method;

    let (status, body) = c.call(None, Method::GET, "/api/config", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["type"], "urn:ietf:params:acme:error:unauthorized");

    let (status, cfg) = c
        .call(Some(&viewer), Method::GET, "/api/config", None)
        .await;
    assert_eq!(status, 200, "{cfg}");
    assert_eq!(cfg["issuance"]["cert_validity"], "36h", "{cfg}");
    assert_eq!(
        cfg["issuance"]["root_key"], "p384",
        "a key algorithm is shown"
    );
    assert_eq!(
        cfg["admin"]["listen"].as_str(),
        Some(c.s.app.cfg.admin.listen.to_string().as_str()),
        "{cfg}"
    );
    assert_eq!(cfg["validation"]["allow_loopback"], true, "{cfg}");
    assert_eq!(
        cfg["data_dir"].as_str(),
        c.s.dir.path().to_str(),
        "what the server runs with, not the file's default"
    );
    assert!(cfg.get("public_url").is_none(), "unset: left out: {cfg}");

    let page = |who: Option<&Identity>| {
        let request = c.client(who).get(c.url("/config")).send();
        async move {
            let r = request.await.expect("page");
            (r.status().as_u16(), r.text().await.expect("html"))
        }
    };
    let (status, html) = page(None).await;
    assert_eq!(status, 401, "{html}");
    assert!(!html.contains("cert_validity"), "{html}");
    let (status, html) = page(Some(&viewer)).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains(r#"<a id="nav-config" href="/config" aria-current="page">"#),
        "{html}"
    );
    let pre = html
        .split_once(r#"<pre id="config">"#)
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(pre, _)| pre)
        .expect("pre#config");
    assert!(
        pre.contains("[issuance]\ncert_validity = &quot;36h&quot;"),
        "{pre}"
    );
    assert!(pre.contains("[admin]"), "{pre}");
    assert!(
        html.contains("[redacted]"),
        "the page says how secrets look"
    );
}

/// The command line refuses to write the operator's files as another user than the data
/// directory's owner: the CA could not read them (they are private to their owner).
#[test]
fn operator_files_are_written_only_as_the_data_directorys_owner() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let me = std::fs::metadata(&data).expect("meta").uid();
    let run = |data: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ca-server"))
            .args(["operator", "add", "ada", "--role", "admin", "--data-dir"])
            .arg(data)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .expect("run ca-server")
    };
    let out = run(&data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if me != 0 {
        // Giving the directory to another user needs root.
        return;
    }
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::os::unix::fs::chown(&other, Some(65534), Some(65534)).expect("chown");
    let out = run(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("run it as the CA's user"),
        "{stderr}"
    );
    assert!(!other.join("operators").exists());
}

/// With PostgreSQL, the console of one instance lists a device that asked at another, and
/// approves it there; the device polling the instance it asked gets `valid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_decides_a_request_made_at_another_instance() {
    use ca_server::storage::postgres::test_cluster::{copy_dir, TestCluster};
    let cluster = TestCluster::shared().unwrap_or_else(|e| panic!("{e}"));
    let db = cluster.fresh_database().unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.url(&db);
    let on_postgres = |cfg: &mut ca_server::config::Config| {
        cfg.enrollment.operator_approval = true;
        cfg.enrollment.network_challenges = false;
        cfg.storage.backend = ca_server::storage::Backend::Postgres;
        cfg.storage.url = Some(url.clone());
    };
    let device_side = TestServer::with(on_postgres);
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&device_side.dir.path().join("ca"), &dir.path().join("ca")).expect("copy the CA");
    let c = Console::on(TestServer::with_dir(dir, on_postgres)).await;
    let approver = c.operator("arno", Role::Approver);
    let (acct, _, chall, code) = waiting_device(&device_side, "plc-7").await;

    c.approve_first(&approver, &code).await;
    let polled = device_side.post_as(&acct, &chall, None).await.json();
    assert_eq!(polled["status"], "valid", "{polled}");
}
