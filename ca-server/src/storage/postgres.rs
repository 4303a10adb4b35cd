//! The shared backend: PostgreSQL, for several CA instances on one database.
//!
//! Every table is a slice of one relation, `kv (tbl, k, v)`, keyed by the table's name and the
//! record's key, so the five [`Store`] operations map onto single statements:
//! compare-and-swap is an `INSERT … ON CONFLICT DO NOTHING`, an `UPDATE … WHERE v = $old` or a
//! `DELETE … WHERE v = $old`, each atomic in PostgreSQL whichever instance sends it, and a prefix
//! scan is a range over the primary key (`bytea` sorts bytewise, as sled's keys do).
//!
//! A committed statement is durable with PostgreSQL's default `synchronous_commit = on`, so
//! [`Store::flush`] has nothing left to wait for. `storage.durability = "process-crash"` sets
//! `synchronous_commit = off` for the CA's sessions: a killed CA loses nothing, a crash of the
//! database can lose its last commits.
//!
//! The [`Store`] calls are blocking, as sled's are. The pool and its connections live on a
//! small runtime of their own; a call hands its statement to it and waits, inside
//! `block_in_place` when it runs on a worker of the server's runtime, so the worker's other
//! tasks move on meanwhile. Each call is bounded by [`STATEMENT_DEADLINE`]: a database that is
//! down or unreachable is a storage error (503 with `Retry-After`), and the pool reconnects
//! once it is back.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Durability, FlushFuture, SnapshotSink, Store, Table};
use crate::{Error, Result};

/// How long one store call may take, waiting for a connection included, before it fails as a
/// storage error.
pub const STATEMENT_DEADLINE: Duration = Duration::from_secs(10);
/// How long opening a connection may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// Rows per round trip of a snapshot.
const SNAPSHOT_PAGE: i64 = 1000;
/// Default of `storage.pool_size`.
pub const POOL_SIZE: usize = 16;
/// The advisory lock two instances starting at once take around the migrations.
const MIGRATION_LOCK: i64 = 0x1107_acbe;

/// The schema, one migration per version, applied in order inside one transaction each. A
/// released migration is never edited: a change is a new entry.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE kv (
         tbl text NOT NULL,
         k bytea NOT NULL,
         v bytea NOT NULL,
         PRIMARY KEY (tbl, k)
     )",
)];

/// Where the shared store is: `storage.url`, `storage.password_file`, `storage.pool_size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/database`, without a password (libpq's URL form; the
    /// parameters tokio-postgres knows, such as `connect_timeout`, may follow `?`).
    pub url: String,
    /// A file holding the password (mode 0600 or stricter is advised). Without it the password
    /// comes from the environment variable `PGPASSWORD`, if set.
    pub password_file: Option<PathBuf>,
    /// Connections per CA instance.
    pub pool_size: usize,
    /// TLS to the database, required when it is set.
    pub tls: Option<PostgresTls>,
}

/// TLS to the database: `storage.tls_ca_file`, and for client-certificate authentication
/// `storage.tls_cert_file` and `storage.tls_key_file`. The server's certificate must chain to a
/// certificate in `ca_file` and name the URL's host (libpq's `sslmode=verify-full`); nothing
/// weaker is offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresTls {
    /// PEM: the certificates that may sign the database server's certificate.
    pub ca_file: PathBuf,
    /// PEM: the CA's certificate chain and its key, when the database authenticates clients by
    /// certificate (`hostssl … cert` in `pg_hba.conf`).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl PostgresTls {
    /// The rustls connector: roots from `ca_file`, the client certificate if configured.
    fn connector(&self) -> std::result::Result<MakeRustlsConnect, String> {
        let file_error = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
            format!("storage.{what} {}: {e}", path.display())
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&self.ca_file)
            .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
            .map_err(|e| file_error("tls_ca_file", &self.ca_file, &e))?;
        if certs.is_empty() {
            return Err(format!(
                "storage.tls_ca_file {} holds no CERTIFICATE block",
                self.ca_file.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| file_error("tls_ca_file", &self.ca_file, &e))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS to PostgreSQL: {e}"))?
        .with_root_certificates(roots);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let chain = CertificateDer::pem_file_iter(cert_file)
                    .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
                    .map_err(|e| file_error("tls_cert_file", cert_file, &e))?;
                if chain.is_empty() {
                    return Err(format!(
                        "storage.tls_cert_file {} holds no CERTIFICATE block",
                        cert_file.display()
                    ));
                }
                let key = PrivateKeyDer::from_pem_file(key_file)
                    .map_err(|e| file_error("tls_key_file", key_file, &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| file_error("tls_cert_file", cert_file, &e))?
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

impl PostgresConfig {
    /// The connection settings: the URL, then the password from the file or the environment.
    /// Refuses a password inside the URL (configuration files get copied and shown; the console
    /// renders this one) and a URL that does not parse. Without [`PostgresTls`] the host must
    /// be a Unix socket or a loopback address: nothing else may carry the CA's records and
    /// password in the clear. With it, TLS is required and the host must be reached over TCP.
    pub fn connect_config(&self) -> std::result::Result<tokio_postgres::Config, String> {
        let mut cfg = tokio_postgres::Config::from_str(&self.url).map_err(|e| {
            format!(
                "storage.url {:?} is not a PostgreSQL URL: {e}",
                redact(&self.url)
            )
        })?;
        if cfg.get_password().is_some() {
            return Err("storage.url must not contain a password: put it in \
                        storage.password_file or the PGPASSWORD environment variable"
                .to_owned());
        }
        if cfg.get_user().is_none() {
            return Err("storage.url names no user (postgres://USER@host/db)".to_owned());
        }
        if cfg.get_dbname().is_none() {
            return Err("storage.url names no database (postgres://user@host/DATABASE)".to_owned());
        }
        if self.tls.is_some() {
            Self::check_tls_hosts(&mut cfg)?;
        } else {
            Self::check_local_hosts(&cfg)?;
        }
        if let Some(file) = &self.password_file {
            let raw = std::fs::read_to_string(file).map_err(|e| {
                format!(
                    "storage.password_file {} cannot be read: {e}",
                    file.display()
                )
            })?;
            let password = raw.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(format!("storage.password_file {} is empty", file.display()));
            }
            cfg.password(password);
        } else if let Ok(password) = std::env::var("PGPASSWORD") {
            cfg.password(password);
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            return Err(format!(
                "storage.pool_size must be between 1 and 1024; it is {}",
                self.pool_size
            ));
        }
        cfg.connect_timeout(CONNECT_DEADLINE);
        // A connection whose peer vanished (a host that crashed, a partition) is noticed in
        // seconds, not after the kernel's retransmissions run out.
        cfg.keepalives(true);
        cfg.keepalives_idle(Duration::from_secs(10));
        cfg.tcp_user_timeout(STATEMENT_DEADLINE);
        cfg.application_name("iiot-acme ca-server");
        Ok(cfg)
    }

    /// Without TLS: only a Unix socket or a loopback address.
    fn check_local_hosts(cfg: &tokio_postgres::Config) -> std::result::Result<(), String> {
        if cfg.get_ssl_mode() == SslMode::Require {
            return Err(
                "storage.url asks for sslmode=require: set storage.tls_ca_file to the \
                        certificates that sign the database's certificate"
                    .to_owned(),
            );
        }
        for addr in cfg.get_hostaddrs() {
            if !addr.is_loopback() {
                return Err(format!(
                    "storage.url names the address {addr} (hostaddr): without TLS only a \
                     loopback address is accepted; set storage.tls_ca_file to reach a database \
                     on another host"
                ));
            }
        }
        for host in cfg.get_hosts() {
            if let tokio_postgres::config::Host::Tcp(name) = host {
                let loopback = name == "localhost"
                    || name
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(format!(
                        "storage.url names the host {name:?}: without TLS only a Unix socket \
                         directory or a loopback address is accepted; set storage.tls_ca_file \
                         to reach a database on another host"
                    ));
                }
            }
        }
        Ok(())
    }

    /// With TLS: every host is reached over TCP, and TLS is required, not preferred (a
    /// `prefer` connection falls back to plain text when the server declines).
    fn check_tls_hosts(cfg: &mut tokio_postgres::Config) -> std::result::Result<(), String> {
        if cfg.get_ssl_mode() == SslMode::Disable {
            return Err(
                "storage.url says sslmode=disable, but storage.tls_ca_file asks for TLS: \
                        remove one of them"
                    .to_owned(),
            );
        }
        if cfg
            .get_hosts()
            .iter()
            .any(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)))
        {
            return Err(
                "storage.url names a Unix socket, which does not carry TLS: with \
                        storage.tls_ca_file, name the database's host"
                    .to_owned(),
            );
        }
        cfg.ssl_mode(SslMode::Require);
        Ok(())
    }
}

/// The URL for messages: the query (which may hold `password=`) left out, and anything
/// after `:` in the user part hidden.
fn redact(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            match user.split_once(':') {
                Some((name, _)) => format!("{}{name}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    /// The runtime the pool's connections live on; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a worker of another runtime may not do.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PgStore {
    /// Connects, checks the database and brings its schema up to date. Two instances starting
    /// together take turns (an advisory lock); a schema newer than this binary's is refused.
    pub fn open(cfg: &PostgresConfig, durability: Durability) -> Result<Self> {
        Self::connect(cfg, durability, true)
    }

    /// As [`PgStore::open`] for the operator commands, which leave migrations to the CA: they
    /// create the schema in an empty database (setting up before the CA's first start), and
    /// refuse one whose schema is older or newer than this binary's, changing nothing, since
    /// CA instances may be running on it.
    pub fn open_migrated(cfg: &PostgresConfig, durability: Durability) -> Result<Self> {
        Self::connect(cfg, durability, false)
    }

    fn connect(cfg: &PostgresConfig, durability: Durability, migrating: bool) -> Result<Self> {
        let mut pg = cfg.connect_config().map_err(Error::Internal)?;
        let tls = cfg
            .tls
            .as_ref()
            .map(PostgresTls::connector)
            .transpose()
            .map_err(Error::Internal)?;
        // Set either way: a database or role default of `off` must not weaken `power-loss`.
        pg.options(match durability {
            Durability::PowerLoss => "-c synchronous_commit=on",
            Durability::ProcessCrash => "-c synchronous_commit=off",
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(pg, tls, manager_config),
            None => Manager::from_config(pg, NoTls, manager_config),
        };
        let pool = {
            let _entered = rt.enter();
            Pool::builder(manager)
                .max_size(cfg.pool_size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(STATEMENT_DEADLINE))
                .create_timeout(Some(CONNECT_DEADLINE))
                .recycle_timeout(Some(CONNECT_DEADLINE))
                .build()
                .map_err(|e| Error::Internal(format!("cannot build the PostgreSQL pool: {e}")))?
        };
        let store = Self { rt: Some(rt), pool };
        let schema = if migrating {
            store.run(migrate(store.pool.clone()))
        } else {
            match store.run(schema_version(store.pool.clone()))? {
                0 => store.run(migrate(store.pool.clone())),
                current => check_schema(current).map(|()| 0),
            }
        };
        let applied = schema.map_err(|e| match e {
            Error::Storage(why) => Error::Internal(format!(
                "cannot open the PostgreSQL store at {}: {why}",
                redact(&cfg.url)
            )),
            other => other,
        })?;
        if applied > 0 {
            tracing::info!(
                applied,
                version = latest_version(),
                "PostgreSQL schema migrated"
            );
        }
        Ok(store)
    }

    /// Runs `fut` on the store's runtime and waits for it, bounded by [`STATEMENT_DEADLINE`].
    fn run<T, F>(&self, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| Error::Storage("the PostgreSQL store is closed".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.pool.clone();
        rt.spawn(async move {
            let out = match tokio::time::timeout(STATEMENT_DEADLINE, fut).await {
                Ok(out) => out,
                Err(_) => {
                    // The connection the statement was on went back to the pool; it, and any
                    // other idle one, may be dead (a stalled database): new ones are made.
                    pool.retain(|_, _| false);
                    Err(Error::Storage(format!(
                        "PostgreSQL did not answer within {} s",
                        STATEMENT_DEADLINE.as_secs()
                    )))
                }
            };
            // The caller only goes away with its thread; nothing to tell then.
            let _ = tx.send(out);
        });
        let wait = || {
            rx.recv()
                .unwrap_or_else(|_| Err(Error::Storage("the PostgreSQL task ended".into())))
        };
        if super::sled::on_multi_thread_runtime() {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        }
    }

    /// One statement with a connection from the pool; `f` gets the client and owned inputs.
    fn with_client<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            f(client).await
        })
    }
}

/// The newest schema version this binary knows.
fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// The database's schema version; 0 before the first migration.
async fn schema_version(pool: Pool) -> Result<i32> {
    let client = pool.get().await.map_err(pool_error)?;
    let exists: bool = client
        .query_one("SELECT to_regclass('iiot_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one("SELECT coalesce(max(version), 0) FROM iiot_schema", &[])
        .await?
        .get(0))
}

/// Refuses a schema version other than the one this binary knows.
fn check_schema(current: i32) -> Result<()> {
    match current.cmp(&latest_version()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(Error::Storage(format!(
            "the database's schema is at version {current}, older than this ca-server's ({}): \
             start the CA with this ca-server first; it brings the schema up to date",
            latest_version()
        ))),
        std::cmp::Ordering::Greater => Err(Error::Storage(format!(
            "the database's schema is at version {current}, newer than this ca-server knows \
             ({}): use the ca-server that runs the CA",
            latest_version()
        ))),
    }
}

/// Applies the missing migrations; returns how many.
async fn migrate(pool: Pool) -> Result<usize> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS iiot_schema (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM iiot_schema", &[])
        .await?
        .get(0);
    if current > latest_version() {
        return Err(Error::Storage(format!(
            "the database's schema is at version {current}, newer than this ca-server knows \
             ({}): run the newer ca-server, or restore a backup made for this one",
            latest_version()
        )));
    }
    let mut applied = 0;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO iiot_schema (version) VALUES ($1)", &[version])
            .await?;
        applied += 1;
    }
    tx.commit().await?;
    Ok(applied)
}

fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    match e {
        // The server's own reason (`pg_hba.conf` refusing the CA, a TLS failure) rather than
        // tokio-postgres's bare "db error".
        deadpool_postgres::PoolError::Backend(e) => match Error::from(e) {
            Error::Storage(why) => Error::Storage(format!("no PostgreSQL connection: {why}")),
            other => other,
        },
        e => Error::Storage(format!("no PostgreSQL connection: {e}")),
    }
}

/// The smallest key greater than every key starting with `prefix`; `None` when there is none
/// (an empty prefix, or one of only 0xff bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn rows_to_pairs(rows: Vec<tokio_postgres::Row>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    rows.into_iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

impl Store for PgStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.with_client(move |c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached("SELECT v FROM kv WHERE tbl = $1 AND k = $2")
                        .await?,
                    &[&table.name(), &key],
                )
                .await?;
            row.map(|r| r.try_get(0)).transpose().map_err(Error::from)
        })
    }

    fn put(&self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        let (key, value) = (key.to_vec(), value.to_vec());
        self.with_client(move |c| async move {
            c.execute(
                &c.prepare_cached(
                    "INSERT INTO kv (tbl, k, v) VALUES ($1, $2, $3)
                 ON CONFLICT (tbl, k) DO UPDATE SET v = excluded.v",
                )
                .await?,
                &[&table.name(), &key, &value],
            )
            .await?;
            Ok(())
        })
    }

    fn compare_and_swap(
        &self,
        table: Table,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        let (key, old, new) = (
            key.to_vec(),
            old.map(<[u8]>::to_vec),
            new.map(<[u8]>::to_vec),
        );
        self.with_client(move |c| async move {
            let t = table.name();
            let changed = match (old, new) {
                (None, Some(new)) => {
                    c.execute(
                        &c.prepare_cached(
                            "INSERT INTO kv (tbl, k, v) VALUES ($1, $2, $3)
                         ON CONFLICT (tbl, k) DO NOTHING",
                        )
                        .await?,
                        &[&t, &key, &new],
                    )
                    .await?
                }
                (Some(old), Some(new)) => {
                    c.execute(
                        &c.prepare_cached(
                            "UPDATE kv SET v = $4 WHERE tbl = $1 AND k = $2 AND v = $3",
                        )
                        .await?,
                        &[&t, &key, &old, &new],
                    )
                    .await?
                }
                (Some(old), None) => {
                    c.execute(
                        &c.prepare_cached("DELETE FROM kv WHERE tbl = $1 AND k = $2 AND v = $3")
                            .await?,
                        &[&t, &key, &old],
                    )
                    .await?
                }
                (None, None) => {
                    let present = c
                        .query_opt(
                            &c.prepare_cached("SELECT 1 FROM kv WHERE tbl = $1 AND k = $2")
                                .await?,
                            &[&t, &key],
                        )
                        .await?;
                    u64::from(present.is_none())
                }
            };
            Ok(changed == 1)
        })
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (start, end) = (prefix.to_vec(), prefix_end(prefix));
        self.with_client(move |c| async move {
            let t = table.name();
            let rows = match end {
                Some(end) => {
                    c.query(
                        &c.prepare_cached(
                            "SELECT k, v FROM kv WHERE tbl = $1 AND k >= $2 AND k < $3 ORDER BY k",
                        )
                        .await?,
                        &[&t, &start, &end],
                    )
                    .await?
                }
                None => {
                    c.query(
                        &c.prepare_cached(
                            "SELECT k, v FROM kv WHERE tbl = $1 AND k >= $2 ORDER BY k",
                        )
                        .await?,
                        &[&t, &start],
                    )
                    .await?
                }
            };
            rows_to_pairs(rows)
        })
    }

    fn scan_after(
        &self,
        table: Table,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let after = after.to_vec();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_client(move |c| async move {
            // An empty `after` sorts before every key, the empty key included only through
            // `>=`; no record has an empty key.
            let rows = c
                .query(
                    &c.prepare_cached(
                        "SELECT k, v FROM kv WHERE tbl = $1 AND k > $2 ORDER BY k LIMIT $3",
                    )
                    .await?,
                    &[&table.name(), &after, &limit],
                )
                .await?;
            rows_to_pairs(rows)
        })
    }

    fn remove_before(&self, table: Table, end: &[u8]) -> Result<usize> {
        let end = end.to_vec();
        self.with_client(move |c| async move {
            let n = c
                .execute(
                    &c.prepare_cached("DELETE FROM kv WHERE tbl = $1 AND k < $2")
                        .await?,
                    &[&table.name(), &end],
                )
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn flush(&self) -> FlushFuture<'_> {
        // Every store call returned after its statement committed.
        Box::pin(async { Ok(()) })
    }

    /// Reads every table inside one `REPEATABLE READ` transaction, a page at a time, so the
    /// tables agree with each other as of one instant whatever other instances write meanwhile.
    fn snapshot(&self, each: &mut SnapshotSink<'_>) -> Result<()> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| Error::Storage("the PostgreSQL store is closed".into()))?;
        type Page = Result<Option<(Table, Vec<(Vec<u8>, Vec<u8>)>)>>;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Page>(2);
        let pool = self.pool.clone();
        let reader = rt.spawn(async move {
            let send = |page: Page| {
                let tx = tx.clone();
                // A full channel waits for the caller; not on this runtime's worker.
                tokio::task::spawn_blocking(move || tx.send(page).is_ok())
            };
            let result: Result<()> = async {
                let mut client = pool.get().await.map_err(pool_error)?;
                let txn = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                for table in Table::ALL {
                    let mut after: Vec<u8> = Vec::new();
                    loop {
                        let rows = txn
                            .query(
                                "SELECT k, v FROM kv WHERE tbl = $1 AND k > $2 \
                                 ORDER BY k LIMIT $3",
                                &[&table.name(), &after, &SNAPSHOT_PAGE],
                            )
                            .await?;
                        let page = rows_to_pairs(rows)?;
                        let full = page.len() as i64 == SNAPSHOT_PAGE;
                        if let Some((last, _)) = page.last() {
                            after = last.clone();
                        }
                        if !page.is_empty() && !send(Ok(Some((table, page)))).await.unwrap_or(false)
                        {
                            return Ok(());
                        }
                        if !full {
                            break;
                        }
                    }
                }
                txn.commit().await?;
                Ok(())
            }
            .await;
            let _ = send(result.map(|()| None)).await;
        });
        let mut drain = || -> Result<()> {
            loop {
                match rx.recv_timeout(STATEMENT_DEADLINE) {
                    Ok(Ok(Some((table, page)))) => {
                        for (k, v) in page {
                            each(table, &k, &v)?;
                        }
                    }
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(Error::Storage(
                            "PostgreSQL stopped answering during a snapshot".into(),
                        ))
                    }
                }
            }
        };
        let out = if super::sled::on_multi_thread_runtime() {
            tokio::task::block_in_place(&mut drain)
        } else {
            drain()
        };
        // On an early return the reader sees the channel closed and rolls back.
        drop(rx);
        drop(reader);
        out
    }
}

/// Rows a [`PgLoad`] sends in one statement at most.
const LOAD_ROWS: usize = 1000;
/// Bytes of keys and values after which a [`PgLoad`] sends the rows it holds.
const LOAD_BYTES: usize = 8 << 20;

/// Records written into the database in one transaction, [`LOAD_ROWS`] to a statement: the
/// restore of a backup (`ra::backup`). From [`PgStore::load`] until [`PgLoad::commit`] the
/// relation is locked against writers (readers go on), so no instance writes into it half
/// restored; dropped before the commit, or after a failed statement, the connection closes
/// and PostgreSQL takes back everything the load wrote.
pub struct PgLoad<'a> {
    store: &'a PgStore,
    /// The transaction's connection, out of the pool; `None` once a statement failed.
    client: Option<deadpool_postgres::ClientWrapper>,
    tables: Vec<&'static str>,
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    bytes: usize,
}

impl PgStore {
    /// Starts a [`PgLoad`]: a connection of its own, a transaction, and the lock on `kv`,
    /// which waits for the transactions of running instances to end.
    pub fn load(&self) -> Result<PgLoad<'_>> {
        let pool = self.pool.clone();
        let client = self.run(async move {
            let client = deadpool_postgres::Object::take(pool.get().await.map_err(pool_error)?);
            client
                .batch_execute("BEGIN; LOCK TABLE kv IN EXCLUSIVE MODE")
                .await?;
            Ok(client)
        })?;
        Ok(PgLoad {
            store: self,
            client: Some(client),
            tables: Vec::new(),
            keys: Vec::new(),
            values: Vec::new(),
            bytes: 0,
        })
    }
}

impl PgLoad<'_> {
    /// Runs `f` with the transaction's connection, which it hands back with its result. On a
    /// failure the connection is dropped, and the transaction with it.
    fn step<T, F, Fut>(&mut self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::ClientWrapper) -> Fut,
        Fut: Future<Output = Result<(deadpool_postgres::ClientWrapper, T)>> + Send + 'static,
    {
        let client = self.client.take().ok_or_else(|| {
            Error::Storage("the load's transaction ended with an earlier failure".into())
        })?;
        let (client, out) = self.store.run(f(client))?;
        self.client = Some(client);
        Ok(out)
    }

    /// The name of a table that holds a record, if any does: a load is meant for an empty
    /// database, and its caller refuses another.
    pub fn occupied(&mut self) -> Result<Option<String>> {
        self.step(|c| async move {
            let row = c.query_opt("SELECT tbl FROM kv LIMIT 1", &[]).await?;
            let table = row.map(|r| r.try_get(0)).transpose()?;
            Ok((c, table))
        })
    }

    /// Adds a record; sends the rows held once there are enough of them. A key already
    /// written fails the load.
    pub fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.tables.push(table.name());
        self.keys.push(key.to_vec());
        self.values.push(value.to_vec());
        self.bytes += key.len() + value.len();
        if self.tables.len() >= LOAD_ROWS || self.bytes >= LOAD_BYTES {
            self.send()?;
        }
        Ok(())
    }

    /// Sends the rows held in one statement.
    fn send(&mut self) -> Result<()> {
        if self.tables.is_empty() {
            return Ok(());
        }
        let rows = (
            std::mem::take(&mut self.tables),
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.values),
        );
        self.bytes = 0;
        self.step(|c| async move {
            c.execute(
                "INSERT INTO kv (tbl, k, v) \
                 SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])",
                &[&rows.0, &rows.1, &rows.2],
            )
            .await?;
            Ok((c, ()))
        })
    }

    /// Sends the rows still held and commits: the records are in the database for every
    /// instance from now on.
    pub fn commit(mut self) -> Result<()> {
        self.send()?;
        self.step(|c| async move {
            c.batch_execute("COMMIT").await?;
            Ok((c, ()))
        })
    }
}

#[cfg(any(test, feature = "test-cluster"))]
pub mod test_cluster;

#[cfg(test)]
pub(super) mod tests {
    use super::test_cluster::{TestCluster, SUPERUSER};
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    /// A store on a new, empty database of the test process's shared cluster.
    pub(in crate::storage) fn fresh_store() -> PgStore {
        let cluster = TestCluster::shared().unwrap_or_else(|e| panic!("{e}"));
        let db = cluster.fresh_database().unwrap_or_else(|e| panic!("{e}"));
        PgStore::open(&cfg(&cluster.url(&db)), Durability::PowerLoss)
            .unwrap_or_else(|e| panic!("open {db}: {e}"))
    }

    /// Two instances on one database: of two finalizes racing on one order, exactly one wins,
    /// however many times they race.
    #[test]
    fn two_instances_racing_compare_and_swap_never_both_win() {
        let cluster = TestCluster::shared().expect("cluster");
        let db = cluster.fresh_database().expect("database");
        let a = Arc::new(PgStore::open(&cfg(&cluster.url(&db)), Durability::PowerLoss).expect("a"));
        let b = Arc::new(PgStore::open(&cfg(&cluster.url(&db)), Durability::PowerLoss).expect("b"));
        for round in 0..50u32 {
            let key = format!("order-{round}");
            a.put(Table::Orders, key.as_bytes(), b"ready").expect("put");
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let racers: Vec<_> = [a.clone(), b.clone()]
                .into_iter()
                .enumerate()
                .map(|(i, store)| {
                    let (key, barrier) = (key.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let new = format!("valid by {i}");
                        store
                            .compare_and_swap(
                                Table::Orders,
                                key.as_bytes(),
                                Some(b"ready"),
                                Some(new.as_bytes()),
                            )
                            .expect("cas")
                    })
                })
                .collect();
            let wins: Vec<bool> = racers
                .into_iter()
                .map(|r| r.join().expect("join"))
                .collect();
            assert_eq!(
                wins.iter().filter(|w| **w).count(),
                1,
                "round {round}: {wins:?}"
            );
            let winner = wins.iter().position(|w| *w).expect("a winner");
            let stored = b.get(Table::Orders, key.as_bytes()).expect("get");
            assert_eq!(stored, Some(format!("valid by {winner}").into_bytes()));
        }
    }

    #[test]
    fn migrations_run_once_and_a_newer_schema_is_refused() {
        let cluster = TestCluster::shared().expect("cluster");
        let db = cluster.fresh_database().expect("database");
        let c = cfg(&cluster.url(&db));
        drop(PgStore::open(&c, Durability::PowerLoss).expect("first open migrates"));
        drop(PgStore::open(&c, Durability::PowerLoss).expect("second open has nothing to do"));
        let versions = cluster
            .psql(
                &db,
                "SELECT string_agg(version::text, ',' ORDER BY version) FROM iiot_schema",
            )
            .expect("psql");
        assert_eq!(versions, latest_version().to_string());
        cluster
            .psql(&db, "INSERT INTO iiot_schema (version) VALUES (999)")
            .expect("psql");
        let err = PgStore::open(&c, Durability::PowerLoss)
            .err()
            .expect("a newer schema");
        assert!(
            err.to_string().contains("newer than this ca-server"),
            "{err}"
        );
        let err = PgStore::open_migrated(&c, Durability::PowerLoss)
            .err()
            .expect("a newer schema, for the commands too");
        assert!(err.to_string().contains("newer than"), "{err}");
    }

    /// The operator commands set up an empty database, open one at this binary's schema, and
    /// refuse to migrate one that CA instances may be running on.
    #[test]
    fn the_commands_leave_migrations_to_the_ca() {
        let cluster = TestCluster::shared().expect("cluster");
        let db = cluster.fresh_database().expect("database");
        let c = cfg(&cluster.url(&db));
        let store = PgStore::open_migrated(&c, Durability::PowerLoss).expect("an empty database");
        store.put(Table::Meta, b"k", b"v").expect("put");
        drop(store);
        drop(PgStore::open_migrated(&c, Durability::PowerLoss).expect("at this schema"));
        // An older schema: the CA instances on it run an older binary.
        cluster
            .psql(&db, "UPDATE iiot_schema SET version = -1")
            .expect("psql");
        let err = PgStore::open_migrated(&c, Durability::PowerLoss)
            .err()
            .expect("older schema");
        assert!(err.to_string().contains("older than"), "{err}");
        let versions = cluster
            .psql(
                &db,
                "SELECT string_agg(version::text, ',') FROM iiot_schema",
            )
            .expect("psql");
        assert_eq!(versions, "-1", "nothing migrated");
    }

    /// A database that goes away fails store calls as storage errors (503), within the
    /// deadline, and the same store works again once the database is back.
    #[test]
    fn a_stopped_database_is_a_storage_error_until_it_returns() {
        let cluster = TestCluster::start(&["fsync=off"]).expect("cluster");
        let store =
            PgStore::open(&cfg(&cluster.url("postgres")), Durability::PowerLoss).expect("open");
        store.put(Table::Accounts, b"a", b"1").expect("put");
        cluster.stop();
        let started = std::time::Instant::now();
        let err = store.get(Table::Accounts, b"a").expect_err("database down");
        assert!(matches!(err, Error::Storage(_)), "{err:?}");
        assert!(started.elapsed() < STATEMENT_DEADLINE + Duration::from_secs(2));
        cluster.start_again().expect("restart");
        let back = (0..50).find_map(|_| match store.get(Table::Accounts, b"a") {
            Ok(v) => Some(v),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        });
        assert_eq!(back, Some(Some(b"1".to_vec())), "the store came back");
    }

    /// A snapshot is one instant: writes made by another instance while it runs are not in it,
    /// and it pages through tables larger than one page.
    #[test]
    fn a_snapshot_pages_through_large_tables_as_of_one_instant() {
        let cluster = TestCluster::shared().expect("cluster");
        let db = cluster.fresh_database().expect("database");
        let store = PgStore::open(&cfg(&cluster.url(&db)), Durability::PowerLoss).expect("open");
        let other = PgStore::open(&cfg(&cluster.url(&db)), Durability::PowerLoss).expect("open");
        let n = 2 * SNAPSHOT_PAGE as usize + 7;
        for i in 0..n {
            store
                .put(Table::Certificates, format!("c{i:05}").as_bytes(), b"x")
                .expect("put");
        }
        let mut seen = 0usize;
        store
            .snapshot(&mut |table, key, _| {
                assert_eq!(table, Table::Certificates);
                if seen == 0 {
                    // Written after the snapshot began: must not appear in it.
                    other
                        .put(Table::Certificates, b"c99999", b"late")
                        .expect("put");
                    other
                        .put(Table::Revocations, b"late", b"late")
                        .expect("put");
                }
                assert_ne!(key, b"c99999");
                seen += 1;
                Ok(())
            })
            .expect("snapshot");
        assert_eq!(seen, n);
    }

    /// A load writes its records in one transaction: nothing of it is seen before the commit,
    /// all of it after; one dropped unfinished, or failed, leaves the database as it was.
    #[test]
    fn a_load_is_one_transaction_whatever_its_size() {
        let store = fresh_store();
        let count = |t: Table| store.scan_prefix(t, b"").expect("scan").len();
        let mut load = store.load().expect("load");
        assert_eq!(load.occupied().expect("occupied"), None);
        let n = 2 * LOAD_ROWS + 7;
        for i in 0..n {
            load.put(Table::Certificates, format!("c{i:05}").as_bytes(), b"x")
                .expect("put");
        }
        load.put(Table::Meta, b"crl_number", b"5").expect("put");
        assert_eq!(count(Table::Certificates), 0, "not before the commit");
        load.commit().expect("commit");
        assert_eq!(count(Table::Certificates), n);
        assert_eq!(
            store
                .get(Table::Meta, b"crl_number")
                .expect("get")
                .as_deref(),
            Some(&b"5"[..])
        );
        let mut load = store.load().expect("load");
        assert_eq!(
            load.occupied().expect("occupied").as_deref(),
            Some("certificates")
        );
        drop(load);

        // Dropped after more than one batch was sent: nothing stays.
        let store = fresh_store();
        let mut load = store.load().expect("load");
        for i in 0..LOAD_ROWS + 1 {
            load.put(Table::Accounts, format!("a{i}").as_bytes(), b"x")
                .expect("put");
        }
        drop(load);
        assert_eq!(count(Table::Accounts), 0);
        // A key twice fails the load, and takes back what it wrote.
        let mut load = store.load().expect("load");
        load.put(Table::Accounts, b"a", b"1").expect("put");
        load.put(Table::Accounts, b"a", b"2").expect("put");
        assert!(load.commit().is_err());
        assert_eq!(count(Table::Accounts), 0);
        store
            .put(Table::Accounts, b"after", b"1")
            .expect("the store works on");
    }

    #[test]
    fn prefix_ends_are_the_next_key_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    fn cfg(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: url.to_owned(),
            password_file: None,
            pool_size: POOL_SIZE,
            tls: None,
        }
    }

    #[test]
    fn urls_with_a_password_or_a_remote_host_are_refused() {
        let err = cfg("postgres://ca:secret@127.0.0.1:5432/ca")
            .connect_config()
            .expect_err("password in the URL");
        assert!(err.contains("must not contain a password"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = cfg("postgres://ca@db.plant.example:5432/ca")
            .connect_config()
            .expect_err("remote host without TLS");
        assert!(err.contains("without TLS"), "{err}");
        let err = cfg("postgres://127.0.0.1/ca")
            .connect_config()
            .expect_err("no user");
        assert!(err.contains("no user"), "{err}");
        let err = cfg("postgres://ca@localhost/ca?hostaddr=10.0.0.5")
            .connect_config()
            .expect_err("a remote hostaddr behind a loopback name");
        assert!(err.contains("10.0.0.5"), "{err}");
        let err = cfg("postgres://ca@127.0.0.1/ca?password=s3cret&bogus=1")
            .connect_config()
            .expect_err("unknown parameter");
        assert!(!err.contains("s3cret"), "{err}");
        let err = cfg("mysql://ca@127.0.0.1/ca")
            .connect_config()
            .expect_err("scheme");
        assert!(err.contains("is not a PostgreSQL URL"), "{err}");
        for ok in [
            "postgres://ca@127.0.0.1:5432/ca",
            "postgres://ca@[::1]:5432/ca",
            "postgres://ca@localhost/ca",
            "postgresql://ca@%2Frun%2Fpostgresql/ca",
        ] {
            cfg(ok)
                .connect_config()
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn the_password_comes_from_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let mut c = cfg("postgres://ca@127.0.0.1/ca");
        c.password_file = Some(file.clone());
        let pg = c.connect_config().expect("config");
        assert_eq!(pg.get_password(), Some(&b"s3cret"[..]));
        std::fs::write(&file, "\n").expect("write");
        let err = c.connect_config().expect_err("empty file");
        assert!(err.contains("is empty"), "{err}");
    }

    /// A CA certificate (PEM) and its issuer, for the TLS tests.
    fn test_ca(cn: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let pem = p.self_signed(&key).expect("ca").pem();
        (pem, rcgen::Issuer::new(p, key))
    }

    /// A leaf certificate and key (PEM) for `names`, issued by `issuer`; `cn` is its common
    /// name (PostgreSQL's `cert` authentication maps it to the user).
    fn test_leaf(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        cn: &str,
        names: &[&str],
    ) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("names");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Whether the store's connection to the database is encrypted, as the server sees it.
    fn connection_is_tls(store: &PgStore) -> bool {
        store
            .with_client(|client| async move {
                let row = client
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await?;
                Ok(row.get::<_, bool>(0))
            })
            .expect("pg_stat_ssl")
    }

    /// `storage.tls_ca_file`: the CA reaches a database that accepts only TLS, verifies its
    /// certificate against the configured roots and the URL's host, and authenticates with a
    /// client certificate where the database asks for one.
    #[test]
    fn tls_to_the_database_is_verified_and_required() {
        let (ca_pem, ca) = test_ca("db test CA");
        let (other_ca_pem, _) = test_ca("someone else's CA");
        let (server_cert, server_key) = test_leaf(&ca, "db", &["localhost", "127.0.0.1"]);
        let (client_cert, client_key) = test_leaf(&ca, SUPERUSER, &[]);
        // Plain TCP is refused by the server; the `postgres` database takes a password-less TLS
        // client, the `certonly` one a client certificate whose name is the user's.
        let hba = "local all all trust\n\
                   hostssl certonly all 127.0.0.1/32 cert\n\
                   hostssl all all 127.0.0.1/32 trust\n";
        let cluster = TestCluster::start_with_files(
            &[
                "ssl=on",
                "ssl_cert_file=server.crt",
                "ssl_key_file=server.key",
                "ssl_ca_file=root.crt",
            ],
            &[
                ("server.crt", server_cert.as_bytes()),
                ("server.key", server_key.as_bytes()),
                ("root.crt", ca_pem.as_bytes()),
                ("pg_hba.conf", hba.as_bytes()),
            ],
        )
        .expect("cluster with TLS");
        cluster
            .psql("postgres", "CREATE DATABASE certonly")
            .expect("database");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, contents: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write");
            path
        };
        let roots = file("roots.pem", &ca_pem);
        let other_roots = file("other-roots.pem", &other_ca_pem);
        let client = (
            file("client.pem", &client_cert),
            file("client.key", &client_key),
        );
        let with_tls = |url: String, ca_file: &Path, client: Option<(PathBuf, PathBuf)>| {
            let mut c = cfg(&url);
            c.tls = Some(PostgresTls {
                ca_file: ca_file.to_owned(),
                client,
            });
            c
        };
        let port = cluster.port();

        // Without TLS the server turns the CA away.
        let err = PgStore::open(&cfg(&cluster.url("postgres")), Durability::PowerLoss)
            .err()
            .expect("plain TCP refused");
        assert!(err.to_string().contains("no encryption"), "{err}");

        // With it, by name and by address, the connection is encrypted and the store works.
        for url in [
            format!("postgres://{SUPERUSER}@localhost:{port}/postgres"),
            cluster.url("postgres"),
        ] {
            let store = PgStore::open(&with_tls(url.clone(), &roots, None), Durability::PowerLoss)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(connection_is_tls(&store), "{url}");
            store.put(Table::Meta, b"tls", b"yes").expect("put");
            assert_eq!(
                store.get(Table::Meta, b"tls").expect("get").as_deref(),
                Some(&b"yes"[..])
            );
        }

        // A server certificate from other roots, or for another name, is refused.
        let err = PgStore::open(
            &with_tls(cluster.url("postgres"), &other_roots, None),
            Durability::PowerLoss,
        )
        .err()
        .expect("unknown issuer refused");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        let err = PgStore::open(
            &with_tls(
                format!(
                    "postgres://{SUPERUSER}@db.plant.example:{port}/postgres\
                     ?hostaddr=127.0.0.1"
                ),
                &roots,
                None,
            ),
            Durability::PowerLoss,
        )
        .err()
        .expect("wrong name refused");
        assert!(err.to_string().contains("not valid for name"), "{err}");

        // A database that authenticates by client certificate: refused without one, open with.
        let certonly = format!("postgres://{SUPERUSER}@localhost:{port}/certonly");
        let err = PgStore::open(
            &with_tls(certonly.clone(), &roots, None),
            Durability::PowerLoss,
        )
        .err()
        .expect("no client certificate refused");
        assert!(err.to_string().contains("certificate"), "{err}");
        let store = PgStore::open(
            &with_tls(certonly, &roots, Some(client)),
            Durability::PowerLoss,
        )
        .expect("client certificate accepted");
        assert!(connection_is_tls(&store));
    }

    #[test]
    fn tls_settings_are_checked_before_connecting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = |ca_file: PathBuf| {
            Some(PostgresTls {
                ca_file,
                client: None,
            })
        };
        // A remote host is fine with TLS, and TLS is then required, not merely preferred.
        let mut c = cfg("postgres://ca@db.plant.example:5432/ca");
        c.tls = tls(dir.path().join("roots.pem"));
        let pg = c.connect_config().expect("remote host with TLS");
        assert_eq!(pg.get_ssl_mode(), SslMode::Require);
        let mut c = cfg("postgres://ca@db.plant.example:5432/ca?sslmode=disable");
        c.tls = tls(dir.path().join("roots.pem"));
        let err = c.connect_config().expect_err("sslmode=disable with TLS");
        assert!(err.contains("sslmode=disable"), "{err}");
        let mut c = cfg("postgresql://ca@%2Frun%2Fpostgresql/ca");
        c.tls = tls(dir.path().join("roots.pem"));
        let err = c.connect_config().expect_err("Unix socket with TLS");
        assert!(err.contains("Unix socket"), "{err}");
        let err = cfg("postgres://ca@127.0.0.1/ca?sslmode=require")
            .connect_config()
            .expect_err("sslmode=require without roots");
        assert!(err.contains("tls_ca_file"), "{err}");
        // Roots that are missing or hold no certificate are a start error, not a fallback.
        let mut c = cfg("postgres://ca@127.0.0.1/ca");
        c.tls = tls(dir.path().join("missing.pem"));
        let err = PgStore::open(&c, Durability::PowerLoss)
            .err()
            .expect("missing roots");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").expect("write");
        c.tls = tls(empty);
        let err = PgStore::open(&c, Durability::PowerLoss)
            .err()
            .expect("empty roots");
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn an_unreachable_database_is_a_clear_start_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        // Nothing listens there once the listener above is dropped.
        let c = cfg(&format!("postgres://ca@127.0.0.1:{port}/ca"));
        let err = PgStore::open(&c, Durability::PowerLoss)
            .err()
            .expect("nothing listens");
        let msg = err.to_string();
        assert!(msg.contains("cannot open the PostgreSQL store"), "{msg}");
    }
}
