//! The admin socket, `<data_dir>/admin.sock`: the command line's channel to a running CA, and
//! the command line's client for it ([`call`]).
//!
//! Only the CA's user can open the socket (mode 0600 in a 0700 directory), so a request on it
//! acts with the admin role. The command line names the local user in an `X-Actor` header,
//! for the audit log.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::{fleet, Caller};
use crate::ra::audit::Actor;
use crate::ra::operator::Role;
use crate::ra::Ra;
use crate::{Error, Result};

/// The header the command line names its local user in.
pub const ACTOR_HEADER: &str = "x-actor";

/// The socket's path in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// The socket API's routes.
pub fn router(app: Ra) -> Router {
    Router::new()
        .route("/identity/show", post(fleet::identity_show))
        .route("/identity/release", post(fleet::identity_release))
        .route("/revoke", post(fleet::revoke))
        .route("/renew-early", post(fleet::renew_early))
        .route("/audit", get(fleet::report))
        .route("/backup", post(super::backup::backup))
        .route("/lab/clock-step", post(lab_clock_step))
        .layer(axum::middleware::from_fn(local_admin))
        .with_state(app)
}

/// A step of the lab clock (`lab_clock`), in seconds; negative steps back.
#[derive(serde::Deserialize)]
struct ClockStep {
    seconds: i64,
}

/// `POST /lab/clock-step {"seconds": N}`: steps the lab clock ([`crate::types::lab_clock_step`])
/// and answers the new offset from the system clock and the CA's time. Refused unless the
/// configuration turns `lab_clock` on; only here, on the owner-only socket, never on the
/// console or the ACME listener.
async fn lab_clock_step(
    axum::extract::State(app): axum::extract::State<Ra>,
    axum::Json(step): axum::Json<ClockStep>,
) -> Result<axum::Json<Value>> {
    if !app.cfg.lab_clock {
        return Err(Error::Forbidden(
            "the lab clock is off: set lab_clock = true in the configuration (tests only)".into(),
        ));
    }
    let offset = crate::types::lab_clock_step(step.seconds);
    let now = crate::types::now();
    tracing::warn!(
        step = step.seconds,
        offset,
        now = %crate::types::rfc3339(now),
        "LAB clock stepped"
    );
    Ok(axum::Json(serde_json::json!({
        "offset_seconds": offset,
        "now": crate::types::rfc3339(now),
    })))
}

/// Every request on the socket comes from the CA's owner: the admin role, named after the
/// local user the command line reports.
async fn local_admin(mut request: Request, next: Next) -> Response {
    let name = request
        .headers()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| "socket".to_owned(), str::to_owned);
    request.extensions_mut().insert(Caller {
        actor: Actor {
            name,
            from: "local".to_owned(),
        },
        role: Role::Admin,
    });
    next.run(request).await
}

/// Serves the admin API on `<data_dir>/admin.sock` until the process ends.
pub async fn serve(app: Ra) -> Result<()> {
    let path = socket_path(&app.cfg.data_dir);
    // A socket file left by a killed server would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = bind_private(&path)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .map_err(|e| Error::Internal(format!("cannot bind {}: {e}", path.display())))?;
    axum::serve(listener, router(app))
        .await
        .map_err(|e| Error::Internal(format!("admin socket failed: {e}")))
}

/// Binds a Unix socket at `path`, owner-only from the moment it exists and mode 0600 once this
/// returns.
///
/// bind(2) gives the socket file mode 0777 minus the umask, so binding under a loose umask and
/// tightening with chmod afterwards would leave a moment in which another local user could
/// connect. So the socket is created under [`BIND_UMASK`], which is put back at once, and then
/// loses the execute bit that umask leaves (meaningless on a socket: connecting needs write
/// permission). The umask belongs to the process: a file or directory another thread creates in
/// that window gets at most owner permissions, and a directory keeps its owner's search bit.
pub fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;

    let listener = under_umask(BIND_UMASK, || std::os::unix::net::UnixListener::bind(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The process umask while the admin socket is bound: no group or other permissions, the
/// owner's kept.
const BIND_UMASK: u32 = 0o077;

/// Runs `f` with the process umask set to `mask`, then puts the previous umask back.
fn under_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    use rustix::fs::Mode;
    let previous = rustix::process::umask(Mode::from_raw_mode(mask));
    let result = f();
    rustix::process::umask(previous);
    result
}

/// Why the CLI's admin request got no answer it can read: the socket cannot be reached or the
/// exchange failed. `Display` is the message printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallError(String);

/// Client side, for the CLI: one request over the socket, HTTP/1.1 with `Connection: close`.
/// Returns the status code and the JSON body.
pub fn call(
    data_dir: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::result::Result<(u16, Value), CallError> {
    let sock = socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).map_err(|e| {
        CallError(format!(
            "cannot reach the CA at {}: {e} (is ca-server running with --data-dir {}?)",
            sock.display(),
            data_dir.display()
        ))
    })?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let actor = Actor::local_user().name;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{ACTOR_HEADER}: {actor}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| CallError(format!("admin request failed: {e}")))?;
    let mut resp = Vec::new();
    stream
        .read_to_end(&mut resp)
        .map_err(|e| CallError(format!("admin response failed: {e}")))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| CallError("malformed admin response".to_owned()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CallError("malformed admin status line".to_owned()))?;
    // axum answers with a fixed Content-Length here, so the body is not chunked.
    let json = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    Ok((status, json))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The process umask, read without changing it: the mode a new 0777 directory gets.
    fn umask() -> u32 {
        let probe = tempfile::tempdir().expect("tempdir");
        let dir = probe.path().join("d");
        std::fs::DirBuilder::new().create(&dir).expect("mkdir");
        0o777 & !std::fs::metadata(&dir).expect("meta").permissions().mode()
    }

    /// The socket is 0600 once `bind_private` returns (nothing else touched it), whatever the
    /// process umask, and the umask is back as it was. While the socket is bound, a directory
    /// another thread creates gets no group or other permissions but keeps its owner's
    /// permissions, search included.
    #[test]
    fn the_socket_is_created_owner_only_and_the_umask_is_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin.sock");
        let before = umask();
        let _listener = bind_private(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        assert_eq!(umask(), before);

        let made = dir.path().join("made-meanwhile");
        under_umask(BIND_UMASK, || std::fs::DirBuilder::new().create(&made)).expect("mkdir");
        let mode = std::fs::metadata(&made).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "directory mode {mode:o}");
        assert_eq!(umask(), before);
    }
}
