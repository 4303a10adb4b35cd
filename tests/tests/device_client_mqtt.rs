//! An MQTT device kept connected through a certificate renewal, through `device-client` only:
//! mosquitto (Debian package) with mutual TLS, `require_certificate` and
//! `use_identity_as_username`, against the real `ca-server` issuing one-hour certificates.
//!
//! - The broker's own certificate comes from `device-client enroll --profile tls-server`.
//! - A monitoring client (`mqtt-client` profile) subscribes to the device's topic.
//! - The device runs `device-client run --profile mqtt-client --renew-at 0.02`: renewal is due
//!   about 12 s after each issuance (the CA backdates notBefore by a minute). Its post-install
//!   hook publishes the installed serial with the installed certificate and key, as a device
//!   reconnecting with its new certificate does.
//! - The monitor receives the first certificate's serial and then the renewed one's, each
//!   published with that certificate: the broker accepted the renewed certificate.

use std::fs;
use std::process::Command;
use std::time::Duration;

use iiot_acme_tests::device_client::{expect_exit, Device, Pin, RUN_TIMEOUT};
use iiot_acme_tests::mosquitto::start_broker;
use iiot_acme_tests::process::{poll_until, Daemon};
use iiot_acme_tests::{temp_dir, CaServer, CaServerOpts};

const TOPIC: &str = "plant/line1/sensor-9";

/// The payloads the monitor has received so far.
fn received(monitor: &Daemon) -> Vec<String> {
    fs::read_to_string(monitor.stdout_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{TOPIC} ")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn run_keeps_an_mqtt_client_certificate_renewed_and_reconnects_with_it() {
    let server = CaServer::start(CaServerOpts {
        cert_validity: "1h".to_owned(),
        ..CaServerOpts::default()
    })
    .expect("ca-server starts");
    let root = server.root_pem_path();
    let work = temp_dir("iiot-mqtt-").expect("work dir");
    let pin = || Pin::RootFile(root.clone());

    let mut broker_dev = Device::for_server(&server, pin(), &["localhost"]);
    broker_dev.ip.push("127.0.0.1".to_owned());
    expect_exit(
        &broker_dev.run("enroll", &["--profile", "tls-server"]),
        0,
        "broker enroll",
        &server,
    );
    let monitor_dev = Device::for_server(&server, pin(), &["monitor.plant.test"]);
    expect_exit(
        &monitor_dev.run("enroll", &["--profile", "mqtt-client"]),
        0,
        "monitor enroll",
        &server,
    );
    let broker = start_broker(
        work.path(),
        &root,
        &broker_dev.fullchain(),
        &broker_dev.key(),
        None,
    )
    .expect("mosquitto starts");
    let (mosquitto, port) = (&broker.daemon, broker.port);

    let mut monitor = Daemon::spawn(
        "mosquitto_sub",
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                TOPIC,
                "-v",
            ])
            .arg("--cafile")
            .arg(&root)
            .arg("--cert")
            .arg(monitor_dev.fullchain())
            .arg("--key")
            .arg(monitor_dev.key()),
        work.path(),
    )
    .expect("mosquitto_sub starts");
    poll_until(
        "the monitor's subscription",
        Duration::from_secs(10),
        Duration::from_millis(100),
        |why| {
            let log = fs::read_to_string(mosquitto.stderr_path()).unwrap_or_default();
            *why = log.clone();
            Ok(log.contains("monitor.plant.test").then_some(()))
        },
    )
    .expect("the monitor is connected as monitor.plant.test");

    // The hook logs the serial, then publishes it with the installed certificate and key.
    let mut sensor = Device::for_server(&server, pin(), &["sensor-9.plant.test"]);
    sensor.post_install = Some(format!(
        "printf '%s\\n' \"$DEVICE_CLIENT_SERIAL\" >> '{log}' && \
         mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t {TOPIC} -m \"$DEVICE_CLIENT_SERIAL\" \
         --cafile '{root}' --cert \"$DEVICE_CLIENT_FULLCHAIN\" --key \"$DEVICE_CLIENT_KEY\"",
        log = sensor.post_install_log().display(),
        root = root.display(),
    ));
    let mut run = sensor.spawn_run(
        "device-client-run",
        &["--profile", "mqtt-client", "--renew-at", "0.02"],
    );
    let serials = poll_until(
        "a renewal published with the renewed certificate",
        RUN_TIMEOUT,
        Duration::from_millis(200),
        |why| {
            run.check_running()?;
            let installed = sensor.post_install_runs();
            let got = received(&monitor);
            *why = format!("installed {installed:?}, received {got:?}");
            Ok((installed.len() >= 2 && got.len() >= 2).then_some((installed, got)))
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}\n{}\n{}",
            run.logs(),
            mosquitto.logs(),
            monitor.logs()
        )
    });
    let (installed, got) = serials;
    assert_ne!(
        installed[0], installed[1],
        "the renewal is a new certificate"
    );
    assert_eq!(got[..2], installed[..2], "each serial reached the broker");
    // The broker knew the device by its certificate's CN, the validated identifier, each time.
    let log = fs::read_to_string(mosquitto.stderr_path()).unwrap_or_default();
    assert!(log.matches("u'sensor-9.plant.test'").count() >= 2, "{log}");
    let renewed = fs::read_to_string(run.stderr_path()).unwrap_or_default();
    assert!(renewed.contains("); renewing"), "{renewed}");
    assert!(
        !renewed.contains("certificate installed, but"),
        "the hook failed: {renewed}"
    );
    monitor.kill().expect("stop mosquitto_sub");
}
