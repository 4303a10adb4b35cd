//! The CA restarts while `device-client` devices wait: for an operator's approval
//! (operator-approval-01), and for a validation the CA was running (http-01). The CA is stopped
//! with SIGTERM and, in another round, with `kill -9`; the devices keep waiting through the
//! downtime and finish with a certificate once the CA is back.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iiot_acme_tests::cli::{operator, pending_request};
use iiot_acme_tests::device_client::{printed_pairing_code, verify_issued, Device, Pin, Waiting};
use iiot_acme_tests::process::poll_until;
use iiot_acme_tests::{free_port, CaServer, CaServerOpts};

/// How the CA goes down.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

fn stop(server: &mut CaServer, how: Stop) {
    match how {
        Stop::Term => server.stop().expect("ca-server stops on SIGTERM"),
        Stop::Kill => server.kill_9().expect("kill -9"),
    }
}

/// Waits for a device's exit and checks it enrolled.
fn finished(server: &CaServer, device: &Device, waiting: &mut Waiting, what: &str) {
    let (status, stdout, stderr) = waiting.finish();
    assert_eq!(
        status,
        0,
        "{what}: device-client exited {status}\n{stdout}\n{stderr}\n{}",
        server.logs()
    );
    verify_issued(server, device);
}

#[test]
fn devices_waiting_for_approval_enroll_after_the_ca_restarts() {
    let mut server = CaServer::start(CaServerOpts {
        extra_toml: "[enrollment]\noperator_approval = true\n".to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let mut devices = Vec::new();
    for (i, how) in [Stop::Term, Stop::Kill].into_iter().enumerate() {
        let device = Device::for_server(
            &server,
            Pin::RootFile(server.root_pem_path()),
            &[&format!("approval-{i}.plant.test")],
        );
        let mut waiting = device.spawn_oneshot(
            &format!("approval-{i}"),
            "enroll",
            &["--challenge", "operator-approval-01"],
        );
        let code = printed_pairing_code(&waiting);
        let request = pending_request(&server, &code, Duration::from_secs(60));
        let id = request["id"].as_str().expect("request id").to_owned();

        stop(&mut server, how);
        // The device polls a CA that is down for a while.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(waiting.exited(), None, "{how:?}: {}", waiting.stderr());
        server.restart().expect("ca-server restarts");
        // The request survived the restart, with the same pairing code.
        let again = pending_request(&server, &code, Duration::from_secs(30));
        assert_eq!(again["id"], request["id"]);
        operator(&server, &["approval", "approve", &id]);
        let t0 = Instant::now();
        finished(&server, &device, &mut waiting, &format!("{how:?}"));
        let stderr = waiting.stderr();
        assert!(
            stderr.contains("cannot reach the CA"),
            "{how:?}: the device saw the CA down: {stderr}"
        );
        eprintln!(
            "faults/waiting: approval across a {how:?} restart: enrolled {:?} after the approval",
            t0.elapsed()
        );
        devices.push(device);
    }
    for d in &devices {
        verify_issued(&server, d);
    }
}

/// A TCP relay in front of the device's http-01 responder that, while `hold` is set, accepts
/// the CA's connections and answers nothing: the CA's validation stays `processing`.
/// The relay's thread lives as long as the test process.
struct Relay {
    hold: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    to: Arc<AtomicU16>,
}

impl Relay {
    fn start(listen: u16) -> Self {
        let hold = Arc::new(AtomicBool::new(true));
        let held = Arc::new(AtomicUsize::new(0));
        let to = Arc::new(AtomicU16::new(0));
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", listen)).expect("bind the relay port");
        let (h, n, port) = (hold.clone(), held.clone(), to.clone());
        std::thread::spawn(move || {
            let mut parked = Vec::new();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if h.load(Ordering::SeqCst) {
                    n.fetch_add(1, Ordering::SeqCst);
                    parked.push(conn);
                    continue;
                }
                parked.clear();
                let to = port.load(Ordering::SeqCst);
                std::thread::spawn(move || {
                    let Ok(upstream) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                        return;
                    };
                    let (mut a, mut b) = (
                        conn.try_clone().expect("clone"),
                        upstream.try_clone().expect("clone"),
                    );
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut conn, mut upstream) = (conn, upstream);
                    let _ = std::io::copy(&mut upstream, &mut conn);
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Self { hold, held, to }
    }

    /// Holds the CA's next connections, then relays to `to` once released.
    fn hold_for(&self, to: u16) {
        self.to.store(to, Ordering::SeqCst);
        self.held.store(0, Ordering::SeqCst);
        self.hold.store(true, Ordering::SeqCst);
    }
}

#[test]
fn devices_waiting_for_validation_enroll_after_the_ca_restarts() {
    let relay_port = free_port().expect("port");
    let mut server = CaServer::start(CaServerOpts {
        http_port: Some(relay_port),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let relay = Relay::start(relay_port);
    for (i, how) in [Stop::Term, Stop::Kill].into_iter().enumerate() {
        let device_port = free_port().expect("port");
        relay.hold_for(device_port);
        let device = Device::new(
            server.directory_url(),
            Pin::RootFile(server.root_pem_path()),
            device_port,
            &[&format!("validation-{i}.plant.test")],
        );
        let mut waiting = device.spawn_oneshot(&format!("validation-{i}"), "enroll", &[]);
        // The CA has dialed the device and waits for its answer: the challenge is processing.
        poll_until(
            "the CA's validation connection",
            Duration::from_secs(60),
            Duration::from_millis(50),
            |why| {
                *why = waiting.stderr();
                Ok((relay.held.load(Ordering::SeqCst) > 0).then_some(()))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", server.logs()));

        stop(&mut server, how);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(waiting.exited(), None, "{how:?}: {}", waiting.stderr());
        relay.hold.store(false, Ordering::SeqCst);
        let t0 = Instant::now();
        server.restart().expect("ca-server restarts");
        finished(&server, &device, &mut waiting, &format!("{how:?}"));
        let took = t0.elapsed();
        eprintln!("faults/waiting: validation across a {how:?} restart: enrolled {took:?} after the restart");
        // The validation cut off by the stop is taken up again at the first poll after the
        // restart, not after the stuck-validation timeout (2 × validation.timeout + 5 s).
        assert!(
            took < Duration::from_secs(20),
            "{how:?}: the device waited {took:?} after the restart"
        );
    }
}
