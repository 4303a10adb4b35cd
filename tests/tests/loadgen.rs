//! The load generator (`tests/src/bin/loadgen.rs`) against the real CA: every
//! device enrolls, the JSON report counts them and the server's CPU, and failures are counted
//! by cause instead of aborting the run.

use std::process::Command;
use std::time::Duration;

use iiot_acme_tests::cli::operator;
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

/// Valid certificates in the CA's store, from the operator's `ca-server audit --json`.
fn issued(server: &CaServer) -> u64 {
    let report: serde_json::Value =
        serde_json::from_str(&operator(server, &["audit", "--json"])).expect("audit JSON");
    report["certificates"]["valid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no valid count: {report}"))
}

/// Signed requests per enrollment the loadgen counted in `step`.
fn posts(report: &serde_json::Value, step: &str) -> f64 {
    report["steps"][step]["posts_per_enrollment"]
        .as_f64()
        .unwrap_or_else(|| panic!("no POST count for {step}: {report:#}"))
}

#[test]
fn loadgen_enrolls_every_device_and_reports_the_server() {
    let server = start(true);
    let report = loadgen(&server, 12, 4, &[]);
    assert_eq!(report["ok"], 12, "{report:#}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report:#}");
    assert_eq!(issued(&server), 12, "{}", server.logs());
    // newAccount; newOrder; the authorization and the challenge; at least one look at the
    // order; finalize. The CA issues before it answers finalize, so the loadgen downloads at
    // once: exactly one POST, no look at the order and no sleep first.
    let expected = [
        ("account", 1.0),
        ("order", 1.0),
        ("challenge", 2.0),
        ("ready", 1.0),
        ("finalize", 1.0),
        ("certificate", 1.0),
    ];
    for (step, n) in expected {
        assert_eq!(report["steps"][step]["n"], 12, "step {step}: {report:#}");
        if step == "ready" {
            assert!(posts(&report, step) >= n, "step {step}: {report:#}");
        } else {
            assert_eq!(posts(&report, step), n, "step {step}: {report:#}");
        }
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
    assert_eq!(issued(&server), 15);
    // It polls the order after finalize before downloading.
    assert!(posts(&report, "certificate") >= 2.0, "{report:#}");
}

#[test]
fn loadgen_reports_a_soak_curve_with_slopes() {
    let server = start(true);
    let dir = server
        .data_dir()
        .to_str()
        .expect("UTF-8 data dir")
        .to_owned();
    let report = loadgen(
        &server,
        12,
        3,
        &["--report-every", "4", "--server-data-dir", &dir],
    );
    assert_eq!(report["ok"], 12, "{report:#}");
    let rows = report["intervals"].as_array().expect("intervals");
    let finished: Vec<u64> = rows.iter().filter_map(|r| r["finished"].as_u64()).collect();
    assert_eq!(finished, [4, 8, 12], "{report:#}");
    let ok: u64 = rows.iter().filter_map(|r| r["ok"].as_u64()).sum();
    assert_eq!(ok, 12, "{report:#}");
    for row in rows {
        for key in ["certs_per_s", "p99_ms", "server_rss_mib"] {
            assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {row}");
        }
        // The store's blocks on disk, spread over the enrollments so far.
        let bytes = row["store_bytes"].as_u64().expect("store size");
        let per = row["store_bytes_per_enrollment"]
            .as_f64()
            .expect("per enrollment");
        let n = row["finished"].as_f64().expect("finished");
        assert!(bytes > 0 && (per * n - bytes as f64).abs() < 1.0, "{row}");
    }
    for key in [
        "certs_per_s",
        "p99_ms",
        "server_rss_mib",
        "store_bytes_per_enrollment",
    ] {
        assert!(report["slopes_per_100k"][key].is_f64(), "{key}: {report:#}");
    }
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
    assert_eq!(issued(&server), 0);
}
