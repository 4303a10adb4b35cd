//! `POST /backup`: the running CA writes a backup (`ra::backup`), since sled admits one process
//! per store and a consistent snapshot needs the store's own locks.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ra::backup::{self, BackupError, Summary};
use crate::ra::Ra;

#[derive(Deserialize)]
pub(super) struct BackupRequest {
    /// Where to write the backup: an absolute path (the CA's working directory is its own).
    out: PathBuf,
    /// What to encrypt it to. The socket is the CA user's only, so it travels no further.
    passphrase: String,
}

/// Writes a backup of the CA to `out` and answers with its manifest and counts; a failure
/// answers with its cause in `detail` (the operator's own socket: nothing to hide).
pub(super) async fn backup(
    State(app): State<Ra>,
    Json(r): Json<BackupRequest>,
) -> Result<Json<Summary>, (StatusCode, Json<Value>)> {
    let refused = |status: StatusCode, e: &dyn std::fmt::Display| {
        (status, Json(json!({ "detail": e.to_string() })))
    };
    if !r.out.is_absolute() {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            &format_args!("the backup path {} is not absolute", r.out.display()),
        ));
    }
    let passphrase =
        backup::passphrase(r.passphrase).map_err(|e| refused(StatusCode::BAD_REQUEST, &e))?;
    let started = std::time::Instant::now();
    let writer = app.clone();
    let written = tokio::task::spawn_blocking(move || {
        backup::create(
            &writer.db,
            &writer.cfg.data_dir,
            writer.cfg.source.as_deref(),
            &r.out,
            passphrase,
        )
    })
    .await
    .unwrap_or_else(|e| Err(BackupError::Store(format!("the backup task failed: {e}"))));
    let summary = written.map_err(|e| {
        tracing::error!(error = %e, "backup failed");
        refused(StatusCode::INTERNAL_SERVER_ERROR, &e)
    })?;
    tracing::info!(
        bytes = summary.bytes,
        files = summary.counts.files,
        records = summary.counts.records.values().sum::<u64>(),
        took_ms = started.elapsed().as_millis(),
        "backup written"
    );
    Ok(Json(summary))
}
