//! The load generator of issue #6 (`tests/src/bin/loadgen.rs`) against the real CA: every
//! device enrolls, the JSON report counts them and the server's CPU, and failures are counted
//! by cause instead of aborting the run.

use std::process::Command;
use std::time::Duration;

use iiot_acme_tests::process::run_with_timeout;
use iiot_acme_tests::{temp_dir, CaServer, CaServerOpts};

fn start(lab_always_valid: bool) -> CaServer {
    CaServer::start(CaServerOpts {
        lab_always_valid,
        ..CaServerOpts::default()
    })
    .expect("ca-server starts")
}

/// Runs the loadgen with `--json` and returns its report.
fn loadgen(
    server: &CaServer,
    devices: usize,
    concurrency: usize,
    extra: &[&str],
) -> serde_json::Value {
    let logs = temp_dir("iiot-loadgen-").expect("log dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.arg("--directory")
        .arg(server.directory_url())
        .arg("--ca-file")
        .arg(server.root_pem_path())
        .args(["--devices", &devices.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--timeout-secs", "60", "--json"])
        .args(extra);
    if let Some(pid) = server.pid() {
        cmd.args(["--server-pid", &pid.to_string()]);
    }
    let out = run_with_timeout("loadgen", &mut cmd, logs.path(), Duration::from_secs(180))
        .expect("loadgen finishes");
    assert!(out.status.success(), "loadgen failed: {}", out.tails());
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("loadgen printed no JSON report ({e}): {}", out.tails()))
}

/// Lines of the server's logs (whole files, not tails) that contain `what`.
fn log_lines(server: &CaServer, what: &str) -> usize {
    ["ca-server.stdout.log", "ca-server.stderr.log"]
        .iter()
        .map(|f| std::fs::read_to_string(server.data_dir().join(f)).unwrap_or_default())
        .map(|text| text.lines().filter(|l| l.contains(what)).count())
        .sum()
}

#[test]
fn loadgen_enrolls_every_device_and_reports_the_server() {
    let server = start(true);
    let report = loadgen(&server, 12, 4, &[]);
    assert_eq!(report["ok"], 12, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    assert_eq!(
        log_lines(&server, "certificate issued"),
        12,
        "{}",
        server.logs()
    );
    for step in [
        "account",
        "order",
        "challenge",
        "ready",
        "finalize",
        "certificate",
    ] {
        assert_eq!(report["steps"][step]["n"], 12, "step {step}: {report:#}");
    }
    let e = &report["enrollment"];
    let (p50, max) = (e["p50_ms"].as_f64(), e["max_ms"].as_f64());
    assert!(
        matches!((p50, max), (Some(a), Some(b)) if a > 0.0 && a <= b),
        "{report:#}"
    );
    let positive = |k: &str| report[k].as_f64().is_some_and(|v| v > 0.0);
    for key in [
        "certs_per_s",
        "server_cpu_ms_per_cert",
        "server_peak_rss_mib",
        "loadgen_cpu_ms_per_cert",
    ] {
        assert!(positive(key), "{key}: {report:#}");
    }

    // instant-acme's own polling, which sleeps before each look, enrolls too.
    let report = loadgen(&server, 3, 3, &["--sleep-first", "--suffix", "sleepy.test"]);
    assert_eq!(report["ok"], 3, "{report:#}");
    assert_eq!(log_lines(&server, "certificate issued"), 15);
}

#[test]
fn loadgen_counts_failed_enrollments_by_cause() {
    // A CA that validates for real, and a loadgen that answers no challenge: every http-01
    // validation fails (nothing listens where the CA dials).
    let server = start(false);
    let report = loadgen(&server, 3, 3, &[]);
    assert_eq!(report["ok"], 0, "{report:#}");
    let errors = report["errors"].as_object().expect("errors by cause");
    let failed: u64 = errors.values().filter_map(|n| n.as_u64()).sum();
    assert_eq!(failed, 3, "{report:#}");
    // By the problem the CA reported (the order's error), not by a client-side message.
    assert!(
        errors
            .keys()
            .all(|k| k == "urn:ietf:params:acme:error:connection"),
        "{report:#}"
    );
    assert_eq!(log_lines(&server, "certificate issued"), 0);
}
