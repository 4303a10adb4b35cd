//! The operator's side of a test: `ca-server` subcommands run against a running server's data
//! directory, as an operator at the plant runs them.

use std::process::Command;
use std::time::Duration;

use crate::process::poll_until;
use crate::{ca_server_bin, CaServer};

/// Runs `ca-server ARGS --data-dir <the server's>` and returns stdout; panics with stderr if
/// the command fails, since every caller is a test that cannot go on.
pub fn operator(server: &CaServer, args: &[&str]) -> String {
    let out = Command::new(ca_server_bin().expect("ca-server binary"))
        .args(args)
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .expect("ca-server runs");
    assert!(
        out.status.success(),
        "ca-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The pending approval request whose pairing code is `code`, as `approval list --json` shows
/// it, once it is listed.
pub fn pending_request(server: &CaServer, code: &str, timeout: Duration) -> serde_json::Value {
    poll_until(
        "pending approval request",
        timeout,
        Duration::from_millis(100),
        |why| {
            let list: Vec<serde_json::Value> =
                serde_json::from_str(&operator(server, &["approval", "list", "--json"]))?;
            *why = format!("{list:?}");
            Ok(list.into_iter().find(|p| p["pairing_code"] == code))
        },
    )
    .expect("the request is listed with the device's pairing code")
}
