//! `ca-server backup` and `ca-server restore` (`ra::backup` has the format).
//!
//! A running CA writes the backup itself, asked over its admin socket: sled admits one process
//! per store, and the running CA's locks are what make the snapshot consistent. With no CA
//! running (no socket answers), the command opens the store itself: the embedded one (a store
//! another process still holds is refused by sled's lock), or the PostgreSQL database that
//! `--config` names, read in one transaction.
//!
//! `restore --config FILE` with `storage.backend = "postgres"` writes the records into that
//! database, which must hold none; without it they go into a new embedded store.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::Config;
use crate::ra::backup::{self, Destination, Summary};
use crate::storage::{Db, PgStore, PostgresConfig, SledStore, Store, Table};
use crate::text::escape;

/// The environment variable a passphrase may come from instead of `--passphrase-file`.
pub(super) const PASSPHRASE_ENV: &str = "IIOT_ACME_BACKUP_PASSPHRASE";

/// `ca-server backup`.
#[derive(Args)]
pub(super) struct BackupArgs {
    /// Data directory of the CA.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The backup file to write (mode 0600); outside the data directory.
    #[arg(long)]
    out: PathBuf,
    /// File whose contents (less one trailing newline) are the passphrase; otherwise
    /// $IIOT_ACME_BACKUP_PASSPHRASE. Never on the command line.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// The CA's configuration file. With no CA running it is included (a running CA includes
    /// the one it was started with), and with storage.backend = "postgres" the records are
    /// read from that database. Its data_dir is the default of --data-dir.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// `ca-server restore`.
#[derive(Args)]
pub(super) struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The new data directory: must not exist yet, or be empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// File whose contents (less one trailing newline) are the passphrase; otherwise
    /// $IIOT_ACME_BACKUP_PASSPHRASE.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// The configuration the restored CA will run with. With storage.backend = "postgres" the
    /// records go into that database, which must hold none (its tables are created if it has
    /// none); otherwise, and without it, into a new embedded store in the data directory.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// The PostgreSQL store `cfg` names, if its backend is `postgres`, opened as the operator
/// commands open it (tables created in an empty database, an older or newer schema refused).
fn shared_store(cfg: Option<&Config>) -> Result<Option<PgStore>, String> {
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let pg: Option<PostgresConfig> = cfg.storage.postgres()?;
    pg.map(|pg| PgStore::open_migrated(&pg, cfg.storage.durability))
        .transpose()
        .map_err(|e| e.to_string())
}

/// The passphrase from `file`, else from [`PASSPHRASE_ENV`]; never empty.
fn passphrase(file: Option<&Path>) -> Result<String, String> {
    let text = match file {
        Some(f) => {
            let mut text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read the passphrase file {}: {e}", f.display()))?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            text
        }
        None => std::env::var(PASSPHRASE_ENV).map_err(|_| {
            format!("give the passphrase with --passphrase-file FILE or ${PASSPHRASE_ENV}")
        })?,
    };
    if text.is_empty() {
        return Err(backup::BackupError::EmptyPassphrase.to_string());
    }
    Ok(text)
}

pub(super) async fn backup(a: BackupArgs) -> Result<(), String> {
    let cfg = super::read_config(a.config.as_deref())?;
    let data_dir = super::data_dir(
        a.data_dir
            .or_else(|| cfg.as_ref().map(|c| c.data_dir.clone())),
    );
    let pass = passphrase(a.passphrase_file.as_deref())?;
    let out = std::path::absolute(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let summary =
        if std::os::unix::net::UnixStream::connect(crate::admin::socket::socket_path(&data_dir))
            .is_ok()
        {
            let body = serde_json::json!({ "out": out, "passphrase": pass });
            let v = super::admin_call(Some(data_dir), "POST", "/backup", Some(&body))?;
            serde_json::from_value::<Summary>(v)
                .map_err(|e| format!("the CA's answer is not a backup summary: {e}"))?
        } else {
            offline(&data_dir, cfg, &out, pass).await?
        };
    println!("backup written: {}", escape(&out.display().to_string()));
    print_summary(&summary);
    Ok(())
}

/// A backup with no CA running: the command opens the store itself.
async fn offline(
    data_dir: &Path,
    cfg: Option<Config>,
    out: &Path,
    pass: String,
) -> Result<Summary, String> {
    let store: std::sync::Arc<dyn Store> = match shared_store(cfg.as_ref())? {
        Some(pg) => std::sync::Arc::new(pg),
        None => {
            let store = data_dir.join("db");
            if !store.is_dir() {
                return Err(format!(
                    "no CA store in {} (and no CA answers on its admin socket)",
                    data_dir.display()
                ));
            }
            std::sync::Arc::new(SledStore::open(&store).map_err(|e| {
                format!("{e} (a CA may be running without its admin socket: back up through it)")
            })?)
        }
    };
    let db = Db::new(store);
    let (data_dir, out) = (data_dir.to_path_buf(), out.to_path_buf());
    let config = cfg.and_then(|c| c.source);
    tokio::task::spawn_blocking(move || {
        let pass = backup::passphrase(pass)?;
        backup::create(&db, &data_dir, config.as_deref(), &out, pass)
    })
    .await
    .map_err(|e| format!("the backup task failed: {e}"))?
    .map_err(|e| e.to_string())
}

pub(super) async fn restore(a: RestoreArgs) -> Result<(), String> {
    let pass = passphrase(a.passphrase_file.as_deref())?;
    let cfg = super::read_config(a.config.as_deref())?;
    let (file, dir) = (a.file.clone(), a.data_dir.clone());
    let (summary, shared) = tokio::task::spawn_blocking(move || {
        let pg = shared_store(cfg.as_ref())?;
        let to = pg.as_ref().map_or(Destination::Sled, Destination::Postgres);
        let pass = backup::passphrase(pass).map_err(|e| e.to_string())?;
        let summary = backup::restore_to(&file, &dir, to, pass).map_err(|e| e.to_string())?;
        Ok::<_, String>((summary, pg.is_some()))
    })
    .await
    .map_err(|e| format!("the restore task failed: {e}"))??;
    println!(
        "restored {} into {}",
        escape(&a.file.display().to_string()),
        escape(&a.data_dir.display().to_string())
    );
    print_summary(&summary);
    if let (true, Some(config)) = (shared, &a.config) {
        println!(
            "  the records are in the PostgreSQL database of {}",
            escape(&config.display().to_string())
        );
        println!(
            "  start one instance with --config {} --data-dir {} first: it copies the data \
             directory's enrollment credentials, approvals, trust anchors, operators and audit \
             log into the database; then the others, each with a copy of its ca directory",
            escape(&config.display().to_string()),
            escape(&a.data_dir.display().to_string())
        );
        return Ok(());
    }
    // Records a CA on the embedded store keeps as files instead, and so would not see.
    let unread: Vec<&str> = [
        Table::Credentials,
        Table::Approvals,
        Table::TrustAnchors,
        Table::Operators,
        Table::AuditLog,
    ]
    .iter()
    .map(|t| t.name())
    .filter(|name| summary.counts.records.get(*name).is_some_and(|n| *n > 0))
    .collect();
    if !unread.is_empty() {
        eprintln!(
            "warning: the backup is of a CA on PostgreSQL, whose store holds records ({}) that a \
             CA on the embedded store keeps as files and does not read: restore with --config \
             naming a PostgreSQL database to keep them in force",
            unread.join(", ")
        );
    }
    if let Some(config) = &summary.manifest.config_file {
        let restored = a.data_dir.join(backup::RESTORED_CONFIG);
        let shown = if restored.is_file() {
            restored.display().to_string()
        } else {
            format!("{} (it was in the data directory)", config)
        };
        println!(
            "  the CA was started with {}; its copy: {}",
            escape(config),
            escape(&shown)
        );
        println!(
            "  start the restored CA with --config <that file> --data-dir {}",
            escape(&a.data_dir.display().to_string())
        );
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let m = &s.manifest;
    let c = &s.counts;
    println!(
        "  format:       {} (written by ca-server {})",
        m.format,
        escape(&m.software)
    );
    println!("  created:      {}", escape(&m.created));
    println!("  root SHA-256: {}", escape(&m.root_sha256));
    println!("  from:         {}", escape(&m.data_dir));
    println!("  size:         {} bytes", s.bytes);
    println!("  files:        {} ({} bytes)", c.files, c.file_bytes);
    let records: u64 = c.records.values().sum();
    let tables: Vec<String> = c.records.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "  store:        {records} records ({})",
        escape(&tables.join(", "))
    );
    match c.crl_number {
        Some(n) => println!("  CRL number:   {n} (the last CRL published before the backup)"),
        None => println!("  CRL number:   none published yet"),
    }
    if let Some(next) = s.next_crl_above {
        println!("  next CRL:     numbered above {next}");
    }
}
