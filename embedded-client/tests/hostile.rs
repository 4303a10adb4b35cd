//! The client against a scripted server that lies: truncated, oversized, mistyped, malformed and
//! out-of-order responses. Every one must end in a clean `Error`, never a panic (a panic fails
//! the test), and the well-formed scripts must complete, so the scripts are known to be right.
//!
//! The mutation test is a small property test: a seeded xorshift generator mutates the
//! responses of a complete flow thousands of times; any panic fails it with the seed and the
//! mutation.

use embedded_client::driver::{self, Platform};
use embedded_client::http::{framing, Framing};
use embedded_client::{
    AccountKey, Config, DeviceKey, Eab, Enrollment, Error, Event, Identifier, ProblemKind,
};

const BASE: &str = "https://ca.plant.test:8443";

fn response(status: u16, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nReplay-Nonce: Nonce{status}{:04}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len(),
        body.len()
    )
    .into_bytes()
}

fn json(status: u16, extra: &str, body: &str) -> Vec<u8> {
    response(status, "application/json", extra, body)
}

fn problem(status: u16, kind: &str) -> Vec<u8> {
    response(
        status,
        "application/problem+json",
        "",
        &format!(
            r#"{{"type":"urn:ietf:params:acme:error:{kind}","detail":"scripted","status":{status}}}"#
        ),
    )
}

/// The directory, without a Replay-Nonce (RFC 8555 does not require one there), so the client
/// must fetch its first nonce from newNonce.
fn directory(eab_required: bool) -> Vec<u8> {
    let with_nonce = json(
        200,
        "",
        &format!(
            r#"{{"newNonce":"{BASE}/acme/new-nonce","newAccount":"{BASE}/acme/new-account","newOrder":"{BASE}/acme/new-order","revokeCert":"{BASE}/acme/revoke-cert","keyChange":"{BASE}/acme/key-change","renewalInfo":"{BASE}/acme/renewal-info","meta":{{"externalAccountRequired":{eab_required},"profiles":{{"default":"d"}}}}}}"#
        ),
    );
    String::from_utf8(with_nonce)
        .expect("ascii")
        .replace("Replay-Nonce: Nonce200", "X-Not-A-Nonce: ")
        .into_bytes()
}

fn nonce() -> Vec<u8> {
    response(204, "text/plain", "Cache-Control: no-store\r\n", "")
}

fn account() -> Vec<u8> {
    json(
        201,
        &format!("Location: {BASE}/acme/acct/A1\r\n"),
        r#"{"status":"valid","orders":"x"}"#,
    )
}

fn order(status: &str, extra_members: &str) -> Vec<u8> {
    json(
        201,
        &format!("Location: {BASE}/acme/order/O1\r\n"),
        &format!(
            r#"{{"status":"{status}","expires":"2026-11-26T00:00:00Z","identifiers":[{{"type":"dns","value":"plc-1.plant.test"}}],"authorizations":["{BASE}/acme/authz/Z1"],"finalize":"{BASE}/acme/order/O1/finalize"{extra_members}}}"#
        ),
    )
}

fn order_poll(status: &str, extra_members: &str) -> Vec<u8> {
    let mut r = order(status, extra_members);
    // Same body, 200 instead of 201.
    r[9..12].copy_from_slice(b"200");
    r
}

fn authz(status: &str, challenge_status: &str) -> Vec<u8> {
    json(
        200,
        "",
        &format!(
            r#"{{"status":"{status}","identifier":{{"type":"dns","value":"plc-1.plant.test"}},"challenges":[{{"type":"http-01","url":"{BASE}/acme/chall/C0","status":"pending","token":"tok0tok0tok0tok0tok0tA"}},{{"type":"operator-approval-01","url":"{BASE}/acme/chall/C1","status":"{challenge_status}","token":"tok1tok1tok1tok1tok1tA"}}]}}"#
        ),
    )
}

fn challenge(status: &str) -> Vec<u8> {
    json(
        200,
        &format!("Retry-After: 3\r\nLink: <{BASE}/acme/authz/Z1>;rel=\"up\"\r\n"),
        &format!(
            r#"{{"type":"operator-approval-01","url":"{BASE}/acme/chall/C1","status":"{status}","token":"tok1tok1tok1tok1tok1tA"}}"#
        ),
    )
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIQ\n-----END CERTIFICATE-----\n";

fn certificate() -> Vec<u8> {
    response(200, "application/pem-certificate-chain", "", PEM)
}

/// A full operator-approval flow, response by response.
fn approval_script() -> Vec<Vec<u8>> {
    vec![
        directory(false),
        nonce(),
        account(),
        order("pending", ""),
        authz("pending", "pending"),
        challenge("processing"),
        authz("pending", "processing"),
        authz("valid", "valid"),
        order_poll("processing", ""),
        order_poll("processing", ""),
        order_poll("valid", &format!(r#","certificate":"{BASE}/acme/cert/Q1""#)),
        certificate(),
    ]
}

/// A pre-authorized flow: the order is ready at once.
fn ready_script() -> Vec<Vec<u8>> {
    vec![
        directory(true),
        nonce(),
        account(),
        order("ready", ""),
        order_poll("valid", &format!(r#","certificate":"{BASE}/acme/cert/Q1""#)),
        certificate(),
    ]
}

struct Keys {
    account: AccountKey,
    cert: DeviceKey,
}

fn keys() -> Keys {
    Keys {
        account: AccountKey::new(DeviceKey::from_bytes(&[0x11; 32]).expect("key")),
        cert: DeviceKey::from_bytes(&[0x22; 32]).expect("key"),
    }
}

const IDS: [Identifier<'static>; 1] = [Identifier::Dns("plc-1.plant.test")];

fn config(eab: bool, replaces: Option<&'static str>) -> Config<'static> {
    Config {
        base_url: BASE,
        identifiers: &IDS,
        eab: eab.then_some(Eab {
            kid: "kid-1",
            hmac_key: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
        }),
        profile: None,
        replaces,
        terms_of_service_agreed: true,
    }
}

/// What a scripted run did.
#[derive(Debug, Default)]
struct Run {
    requests: Vec<String>,
    events: Vec<Event>,
    result: Option<Result<Vec<u8>, Error>>,
}

/// Feeds `script` to a fresh enrollment, one response per request.
fn run(script: &[Vec<u8>], eab: bool, replaces: Option<&'static str>) -> Run {
    let k = keys();
    let mut e = Enrollment::new(config(eab, replaces), &k.account, &k.cert, None).expect("config");
    let mut out = Run::default();
    let mut tx = [0u8; 4096];
    let mut rx = [0u8; 4096];
    for resp in script {
        let n = match e.next_request(&mut tx, &mut rx) {
            Ok(n) => n,
            Err(err) => {
                out.result = Some(Err(err));
                return out;
            }
        };
        out.requests
            .push(String::from_utf8_lossy(&tx[..n]).into_owned());
        let len = resp.len().min(rx.len());
        rx[..len].copy_from_slice(&resp[..len]);
        match e.handle_response(&mut rx[..len]) {
            Ok(Event::Issued { pem }) => {
                out.result = Some(Ok(rx[pem].to_vec()));
                return out;
            }
            Ok(ev) => out.events.push(ev),
            Err(err) => {
                out.result = Some(Err(err));
                return out;
            }
        }
    }
    out
}

/// The decoded JWS payload of a POST request.
fn payload(request: &str) -> serde_json::Value {
    let body = &request[request.find("\r\n\r\n").expect("head") + 4..];
    let jws: serde_json::Value = serde_json::from_str(body).expect("JWS JSON");
    let p = jws["payload"].as_str().expect("payload");
    let mut out = vec![0u8; p.len()];
    let bytes = protocol_spec::base64url::decode(p, &mut out).expect("base64url");
    if bytes.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(bytes).expect("payload JSON")
}

#[test]
fn the_scripted_flows_complete() {
    let r = run(&approval_script(), false, None);
    assert_eq!(r.result, Some(Ok(PEM.as_bytes().to_vec())), "{r:?}");
    // The code of this request: from the account key and the challenge's token (SPEC §5.9).
    let code = keys()
        .account
        .pairing_code("tok1tok1tok1tok1tok1tA")
        .expect("code");
    assert_eq!(
        r.events,
        [
            Event::Continue, // directory
            Event::Continue, // nonce
            Event::Continue, // account
            Event::Continue, // order
            Event::Continue, // authz: choose operator-approval-01
            Event::AwaitingApproval { code, seconds: 3 },
            Event::AwaitingApproval { code, seconds: 2 },
            Event::Continue, // authz valid
            Event::Wait { seconds: 2 },
            Event::Wait { seconds: 2 },
            Event::Continue, // order valid
        ]
    );
    assert!(r.requests[0].starts_with("GET /directory HTTP/1.1\r\nHost: ca.plant.test:8443\r\n"));
    assert!(r.requests[1].starts_with("GET /acme/new-nonce HTTP/1.1\r\n"));
    assert_eq!(payload(&r.requests[2])["termsOfServiceAgreed"], true);
    assert_eq!(
        payload(&r.requests[3])["identifiers"][0]["value"],
        "plc-1.plant.test"
    );
    assert!(r.requests[5].starts_with("POST /acme/chall/C1 "));
    assert_eq!(payload(&r.requests[5]), serde_json::json!({}));
    assert!(r.requests[8].starts_with("POST /acme/order/O1/finalize "));
    assert!(payload(&r.requests[8])["csr"].is_string());
    assert_eq!(payload(&r.requests[9]), serde_json::Value::Null);

    let r = run(&ready_script(), true, None);
    assert_eq!(r.result, Some(Ok(PEM.as_bytes().to_vec())), "{r:?}");
    let eab = &payload(&r.requests[2])["externalAccountBinding"];
    assert!(eab["protected"].is_string() && eab["signature"].is_string());
}

/// SPEC §5.9: the enrollment has a pairing code only once it has chosen the
/// operator-approval-01 challenge, and it is the one the event carries.
#[test]
fn the_pairing_code_exists_once_the_request_has_a_token() {
    let k = keys();
    let mut e = Enrollment::new(config(false, None), &k.account, &k.cert, None).expect("config");
    let want = k
        .account
        .pairing_code("tok1tok1tok1tok1tok1tA")
        .expect("code");
    let mut tx = [0u8; 4096];
    let mut rx = [0u8; 4096];
    let mut seen = Vec::new();
    for resp in &approval_script()[..7] {
        seen.push(e.pairing_code());
        e.next_request(&mut tx, &mut rx).expect("request");
        rx[..resp.len()].copy_from_slice(resp);
        if let Event::AwaitingApproval { code, .. } =
            e.handle_response(&mut rx[..resp.len()]).expect("response")
        {
            assert_eq!(code, want);
        }
    }
    seen.push(e.pairing_code());
    // Directory, nonce, account, order, authorization: no request yet. Then the challenge is
    // chosen (answer, polls): the request's code.
    assert_eq!(
        seen,
        [
            None,
            None,
            None,
            None,
            None,
            Some(want),
            Some(want),
            Some(want)
        ]
    );
}

/// SPEC §5.9: a token that fails the §5.2 check gets no pairing code; the enrollment stops
/// instead of showing one.
#[test]
fn a_challenge_token_that_is_not_base64url_stops_the_enrollment() {
    let mut script = approval_script();
    let bad = String::from_utf8(script[4].clone())
        .expect("utf-8")
        .replace("tok1tok1tok1tok1tok1tA", "tok1/../tok1tok1tok1tA");
    script[4] = bad.into_bytes();
    let r = run(&script, false, None);
    assert_eq!(
        r.result,
        Some(Err(Error::BadJson("challenge token"))),
        "{r:?}"
    );
    assert!(
        !r.events
            .iter()
            .any(|e| matches!(e, Event::AwaitingApproval { .. })),
        "{r:?}"
    );
}

#[test]
fn bad_nonce_is_retried_a_bounded_number_of_times() {
    let mut script = ready_script();
    script.insert(3, problem(400, "badNonce"));
    let r = run(&script, true, None);
    assert!(matches!(r.result, Some(Ok(_))), "{r:?}");
    // The order was sent twice, each time with the nonce of the response before it.
    assert!(r.requests[3].starts_with("POST /acme/new-order "));
    assert!(r.requests[4].starts_with("POST /acme/new-order "));

    let mut script = ready_script();
    for _ in 0..4 {
        script.insert(3, problem(400, "badNonce"));
    }
    assert_eq!(
        run(&script, true, None).result,
        Some(Err(Error::NonceRetriesExhausted))
    );
}

#[test]
fn already_replaced_drops_replaces_once() {
    let mut script = ready_script();
    script.insert(3, problem(409, "alreadyReplaced"));
    let r = run(&script, true, Some("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"));
    assert!(matches!(r.result, Some(Ok(_))), "{r:?}");
    assert_eq!(
        payload(&r.requests[3])["replaces"],
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    );
    assert!(payload(&r.requests[4]).get("replaces").is_none());

    // Without `replaces` the same answer is a plain error.
    let mut script = ready_script();
    script.insert(3, problem(409, "alreadyReplaced"));
    assert_eq!(
        run(&script, true, None).result,
        Some(Err(Error::Problem {
            kind: ProblemKind::AlreadyReplaced,
            status: 409
        }))
    );
}

/// Replaces response `at` of the ready script and returns the outcome.
fn with(at: usize, resp: Vec<u8>) -> Option<Result<Vec<u8>, Error>> {
    let mut script = ready_script();
    script[at] = resp;
    run(&script, true, None).result
}

#[test]
fn hostile_responses_get_the_error_that_names_them() {
    let cases: Vec<(usize, Vec<u8>, Error)> = vec![
        (
            0,
            response(200, "text/html", "", "<html>"),
            Error::WrongContentType,
        ),
        (
            0,
            json(200, "", "{\"newNonce\":"),
            Error::BadJson("body is not a JSON object"),
        ),
        (
            0,
            json(200, "", "[]"),
            Error::BadJson("body is not a JSON object"),
        ),
        (
            0,
            json(200, "", &"[".repeat(100)),
            Error::BadJson("body is not a JSON object"),
        ),
        (
            0,
            json(
                200,
                "",
                r#"{"newNonce":"https://evil.test/n","newAccount":"x","newOrder":"y"}"#,
            ),
            Error::BadUrl,
        ),
        (
            0,
            json(200, "", r#"{"newAccount":"x"}"#),
            Error::BadJson("newNonce"),
        ),
        (
            0,
            response(302, "text/plain", "Location: https://evil.test/\r\n", ""),
            Error::UnexpectedStatus(302),
        ),
        (
            0,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab".to_vec(),
            Error::Truncated,
        ),
        (
            0,
            b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
            Error::Http("status line"),
        ),
        (
            0,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            Error::Http("conflicting Content-Length"),
        ),
        (
            1,
            response(500, "text/plain", "", ""),
            Error::UnexpectedStatus(500),
        ),
        (
            1,
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            Error::Http("newNonce without Replay-Nonce"),
        ),
        (
            2,
            problem(500, "serverInternal"),
            Error::Problem {
                kind: ProblemKind::ServerInternal,
                status: 500,
            },
        ),
        (
            2,
            problem(403, "unauthorized"),
            Error::Problem {
                kind: ProblemKind::Unauthorized,
                status: 403,
            },
        ),
        (
            2,
            json(201, "", r#"{"status":"valid"}"#),
            Error::Http("no Location"),
        ),
        (
            2,
            json(
                201,
                "Location: https://evil.test/acct/1\r\n",
                r#"{"status":"valid"}"#,
            ),
            Error::BadUrl,
        ),
        (
            2,
            json(
                201,
                &format!("Location: {BASE}/acme/acct/1\r\n"),
                r#"{"status":"deactivated"}"#,
            ),
            Error::Problem {
                kind: ProblemKind::Unauthorized,
                status: 201,
            },
        ),
        (3, order("deactivated", ""), Error::BadJson("order status")),
        (
            3,
            order(
                "invalid",
                r#","error":{"type":"urn:ietf:params:acme:error:rejectedIdentifier"}"#,
            ),
            Error::OrderFailed(ProblemKind::RejectedIdentifier),
        ),
        (
            3,
            json(
                201,
                &format!("Location: {BASE}/acme/order/{}\r\n", "a".repeat(200)),
                "{}",
            ),
            Error::BadUrl,
        ),
        (4, order_poll("valid", ""), Error::BadJson("certificate")),
        (
            4,
            order_poll(
                "invalid",
                r#","error":{"type":"urn:ietf:params:acme:error:serverInternal"}"#,
            ),
            Error::OrderFailed(ProblemKind::ServerInternal),
        ),
        (
            4,
            problem(400, "badCSR"),
            Error::Problem {
                kind: ProblemKind::BadCsr,
                status: 400,
            },
        ),
        (
            5,
            response(200, "application/json", "", PEM),
            Error::WrongContentType,
        ),
        (
            5,
            response(200, "application/pem-certificate-chain", "", "not a pem"),
            Error::BadJson("certificate chain is not PEM"),
        ),
    ];
    for (at, resp, want) in cases {
        let got = with(at, resp.clone());
        assert_eq!(
            got,
            Some(Err(want)),
            "step {at}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
}

#[test]
fn more_authorizations_than_the_client_holds_are_refused() {
    let urls: Vec<String> = (0..5)
        .map(|i| format!("\"{BASE}/acme/authz/Z{i}\""))
        .collect();
    let resp = json(
        201,
        &format!("Location: {BASE}/acme/order/O1\r\n"),
        &format!(
            r#"{{"status":"pending","authorizations":[{}],"finalize":"{BASE}/f"}}"#,
            urls.join(",")
        ),
    );
    assert_eq!(with(3, resp), Some(Err(Error::TooManyAuthorizations)));
}

#[test]
fn an_authorization_without_a_usable_challenge_is_refused() {
    let mut script = approval_script();
    script[4] = json(
        200,
        "",
        &format!(
            r#"{{"status":"pending","identifier":{{"type":"dns","value":"plc-1.plant.test"}},"challenges":[{{"type":"http-01","url":"{BASE}/c","status":"pending","token":"t"}}]}}"#
        ),
    );
    assert_eq!(
        run(&script, false, None).result,
        Some(Err(Error::NoUsableChallenge))
    );
    let mut script = approval_script();
    script[6] = json(
        200,
        "",
        r#"{"status":"invalid","challenges":[{"type":"operator-approval-01","status":"invalid","error":{"type":"urn:ietf:params:acme:error:unauthorized"}}]}"#,
    );
    assert_eq!(
        run(&script, false, None).result,
        Some(Err(Error::AuthorizationFailed(ProblemKind::Unauthorized)))
    );
}

/// Every prefix of every response is framed as partial (or refused); and a prefix fed to the
/// state machine fails cleanly: every cut inside the head, every third one in the body and the
/// last octets (each run signs its requests, so not every body cut is replayed).
#[test]
fn every_truncation_is_a_clean_error() {
    for (script, eab) in [(approval_script(), false), (ready_script(), true)] {
        for at in 0..script.len() {
            let full = &script[at];
            let head = full
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("head")
                + 4;
            for cut in 0..full.len() {
                match framing(&full[..cut], false) {
                    Ok(Framing::Partial) | Err(_) => {}
                    Ok(Framing::Complete(n)) => panic!("step {at} cut {cut}: complete at {n}"),
                }
                if cut > head && cut % 3 != 0 && cut + 3 < full.len() {
                    continue;
                }
                let mut s = script.clone();
                s[at] = full[..cut].to_vec();
                let r = run(&s, eab, None);
                assert!(
                    matches!(r.result, Some(Err(_))),
                    "step {at} cut {cut}: {:?}",
                    r.result
                );
            }
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, resp: &mut Vec<u8>) -> &'static str {
    if resp.is_empty() {
        resp.push(rng.next() as u8);
        return "byte into empty";
    }
    let len = resp.len();
    match rng.below(8) {
        0 => {
            let i = rng.below(len);
            resp[i] ^= 1 << rng.below(8);
            "bit flip"
        }
        1 => {
            let i = rng.below(len);
            resp[i] = rng.next() as u8;
            "byte"
        }
        2 => {
            let i = rng.below(len);
            let n = rng.below(len - i).min(16);
            resp.drain(i..i + n);
            "delete"
        }
        3 => {
            let i = rng.below(len);
            let n = rng.below(len - i).min(32);
            let piece = resp[i..i + n].to_vec();
            let j = rng.below(len);
            resp.splice(j..j, piece);
            "duplicate"
        }
        4 => {
            let i = rng.below(len);
            let junk = [
                "\"", "{", "[", "\\", "\\u", "\r\n", ":", ",", "\u{fffd}", "\0",
            ];
            resp.splice(i..i, junk[rng.below(junk.len())].bytes());
            "insert token"
        }
        5 => {
            let i = rng.below(len);
            resp.splice(i..i, std::iter::repeat_n(b'[', 40 + rng.below(100)));
            "deep nesting"
        }
        6 => {
            let i = rng.below(len);
            resp.splice(i..i, std::iter::repeat_n(b'a', 100 + rng.below(5000)));
            "long run"
        }
        _ => {
            resp.truncate(rng.below(len));
            "truncate"
        }
    }
}

#[test]
fn mutated_responses_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = [0usize; 2];
    for round in 0..3000 {
        let (mut script, eab) = if round % 2 == 0 {
            (approval_script(), false)
        } else {
            (ready_script(), true)
        };
        let at = rng.below(script.len());
        let mut what = Vec::new();
        for _ in 0..1 + rng.below(3) {
            what.push(mutate(&mut rng, &mut script[at]));
        }
        // A panic here fails the test with this round's description.
        let r = std::panic::catch_unwind(|| run(&script, eab, None));
        let r = r.unwrap_or_else(|_| panic!("round {round}: step {at} {what:?} panicked"));
        match r.result {
            Some(Ok(_)) => outcomes[0] += 1,
            Some(Err(_)) => outcomes[1] += 1,
            None => {}
        }
    }
    // Most mutations must be caught, and some (e.g. in a header the client ignores) are
    // harmless: both outcomes occur, so the generator exercises both paths.
    assert!(outcomes[0] > 0 && outcomes[1] > 1000, "{outcomes:?}");
}

/// The blocking driver over a connection that returns the scripted bytes in small pieces.
struct Scripted {
    responses: Vec<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl embedded_io::ErrorType for Scripted {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = (self.current.len() - self.pos)
            .min(buf.len())
            .min(self.chunk);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl embedded_io::Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        // A request: the next response becomes readable.
        if self.pos >= self.current.len() && !self.responses.is_empty() {
            self.current = self.responses.remove(0);
            self.pos = 0;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

struct OneConnection(Option<Scripted>, Vec<u32>);

impl Platform for OneConnection {
    type Connection = Scripted;

    fn connect(&mut self) -> Result<Scripted, Error> {
        self.0.take().ok_or(Error::Transport)
    }

    fn sleep(&mut self, seconds: u32) -> Result<(), Error> {
        self.1.push(seconds);
        Ok(())
    }
}

fn drive(script: Vec<Vec<u8>>, chunk: usize, rx_len: usize) -> Result<Vec<u8>, Error> {
    let k = keys();
    let mut e = Enrollment::new(config(false, None), &k.account, &k.cert, None).expect("config");
    let mut platform = OneConnection(
        Some(Scripted {
            responses: script,
            current: Vec::new(),
            pos: 0,
            chunk,
        }),
        Vec::new(),
    );
    let mut tx = [0u8; 4096];
    let mut rx = vec![0u8; rx_len];
    let pem = driver::enroll(&mut platform, &mut e, &mut tx, &mut rx)?;
    Ok(rx[pem].to_vec())
}

#[test]
fn the_driver_reassembles_pieces_and_refuses_oversized_responses() {
    for chunk in [1, 7, 64, 4096] {
        assert_eq!(
            drive(approval_script(), chunk, 4096),
            Ok(PEM.as_bytes().to_vec())
        );
    }
    // Chunked transfer coding, decoded in place.
    let mut script = approval_script();
    let last = script.len() - 1;
    script[last] = format!(
        "HTTP/1.1 200 OK\r\nReplay-Nonce: abc\r\nContent-Type: application/pem-certificate-chain\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        &PEM[..16],
        PEM.len() - 16,
        &PEM[16..]
    )
    .into_bytes();
    assert_eq!(drive(script, 5, 4096), Ok(PEM.as_bytes().to_vec()));
    // A response that does not fit the receive buffer.
    let mut script = approval_script();
    script[0] = json(200, "", &format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)));
    assert_eq!(drive(script, 512, 4096), Err(Error::ResponseTooLarge));
    // The server closes mid-response.
    let mut script = approval_script();
    script[2].truncate(40);
    assert_eq!(drive(script, 64, 4096), Err(Error::Truncated));
}
