//! Scale figures: the server with many devices in its store, and a large CRL.
//!
//! 1. One device enrolls through the server's router (account, order, finalize), which writes
//!    every record an enrollment leaves in the store (account, account key, order, the
//!    account's order list, authorization, certificate, key use).
//! 2. Those records are copied for `--devices N` devices through the server's own `Store`, each
//!    copy with every id replaced by a device-specific one of the same length (so keys and
//!    values keep their real sizes), with a durable flush every [`BATCH`] devices.
//! 3. `--revoked K` revocation records are written and a CRL is generated and signed from them
//!    with `crl::refresh` (scan, decode, sign, write `crl.pem`), as `GET /crl` does.
//! 4. The store takes the checkpoint a running server takes once it has been idle after such
//!    a load (`StorageConfig::checkpoint_due`), timed: without it the next start replays every
//!    record written since the store was opened. Then twice as many devices again as the
//!    server lets pass between checkpoints under load, with the checkpoint it takes between
//!    them timed: the second batch is left for the first restart to replay.
//! 5. The store is closed and the real `ca-server` binary is started on the data directory
//!    [`RESTARTS`] times: the time from spawning it until `GET /directory` answers over HTTPS,
//!    its RSS then, and the data directory's size on disk are printed. The first start is
//!    ended with SIGKILL, as a power cut would end it; the others with SIGINT.
//!
//! `cargo bench -p ca-server --bench scale -- --devices 1000000 --revoked 100000`; `--dir D`
//! puts the data directory under D (default: the system temporary directory); `--keep` keeps
//! it and skips the restarts (to profile a start: `perf record ca-server --data-dir ...`);
//! `--no-checkpoint` skips step 4, for the start of a store that was never checkpointed.
//! Without `--bench` (under `cargo test --benches`) it runs with a handful of records.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ca_server::ca::cert::Revocation;
use ca_server::ca::IssuerKind;
use ca_server::storage::{Store, Table};
use ca_server::types::now;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

#[path = "../tests/common/mod.rs"]
mod common;

/// Devices written between two durable flushes (sled holds dirty pages in memory until then).
const BATCH: usize = 10_000;

/// How many times the server is started on the full store.
const RESTARTS: usize = 3;

struct Args {
    devices: usize,
    revoked: usize,
    dir: Option<std::path::PathBuf>,
    keep: bool,
    checkpoint: bool,
}

fn args() -> Args {
    let cli = common::bench::BenchArgs::from_env();
    let bench = cli.bench();
    let number = |name: &str, default: usize| cli.number(name, default);
    let devices = number("--devices", if bench { 10_000 } else { 20 });
    assert!(devices >= 2, "--devices must be at least 2");
    Args {
        devices,
        revoked: number("--revoked", if bench { 100_000 } else { 20 }),
        dir: cli.value("--dir").map(Into::into),
        keep: cli.flag("--keep"),
        checkpoint: !cli.flag("--no-checkpoint"),
    }
}

/// One stored record with the template device's ids cut out, so a copy for another device is
/// one concatenation.
struct Template {
    table: Table,
    key: Vec<Piece>,
    value: Vec<Piece>,
}

enum Piece {
    Text(String),
    /// The template's id number `n`.
    Id(usize),
}

/// Every record of the store except `meta` (server-wide, not per device).
fn records(store: &dyn Store) -> Vec<(Table, String, String)> {
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 record");
    Table::ALL
        .iter()
        .filter(|t| **t != Table::Meta)
        .flat_map(|&t| {
            store
                .scan_prefix(t, b"")
                .expect("scan")
                .into_iter()
                .map(move |(k, v)| (t, text(k), text(v)))
        })
        .collect()
}

/// The device's ids are its name and the parts of its records' keys (`account_orders` keys
/// are `account id ‖ 0x00 ‖ order id`): account id, account key thumbprint, order id,
/// authorization id, serial, key fingerprint.
fn templates(name: &str, records: &[(Table, String, String)]) -> (Vec<String>, Vec<Template>) {
    let mut ids: Vec<String> = records
        .iter()
        .flat_map(|(_, k, _)| k.split('\0').map(str::to_owned))
        .chain([name.to_owned()])
        .collect();
    ids.sort();
    ids.dedup();
    // Longest first, so no id is cut out of a longer one.
    ids.sort_by_key(|id| std::cmp::Reverse(id.len()));
    let cut = |s: &str| {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        while let Some(c) = s[i..].chars().next() {
            match ids.iter().position(|id| s[i..].starts_with(id.as_str())) {
                Some(n) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Id(n));
                    i += ids[n].len();
                }
                None => {
                    text.push(c);
                    i += c.len_utf8();
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        pieces
    };
    let templates = records
        .iter()
        .map(|(table, k, v)| Template {
            table: *table,
            key: cut(k),
            value: cut(v),
        })
        .collect();
    (ids, templates)
}

/// `id` for device `device`: the same length and alphabet (every id is hex or base64url, and
/// both have the digits), its last 8 characters replaced by the device number.
fn device_id(id: &str, device: usize) -> String {
    let keep = id.len().saturating_sub(8);
    format!("{}{:0>8}", &id[..keep], device % 100_000_000)
}

/// Which id is the account id (the key of the `accounts` record).
fn account_id(templates: &[Template]) -> usize {
    templates
        .iter()
        .find(|t| t.table == Table::Accounts)
        .and_then(|t| match t.key.as_slice() {
            [Piece::Id(n)] => Some(*n),
            _ => None,
        })
        .expect("an accounts record keyed by the account id")
}

fn render(pieces: &[Piece], ids: &[String], out: &mut String) {
    out.clear();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Id(n) => out.push_str(&ids[*n]),
        }
    }
}

/// Size of everything under `dir`: (allocated on disk, apparent), bytes.
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + meta.blocks() * 512, total.1 + meta.len());
        }
    }
    total
}

/// `GET /directory` over HTTPS, trusting the CA's root; true on a 200.
fn directory_answers(port: u16, tls: &Arc<rustls::ClientConfig>) -> bool {
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let name = ServerName::try_from("localhost").expect("name");
    let Ok(mut conn) = rustls::ClientConnection::new(tls.clone(), name) else {
        return false;
    };
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    let req =
        format!("GET /directory HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Resident set size (and its peak) of a process, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("data directory");
    let data_dir = dir.path().to_path_buf();
    let s = common::TestServer::with(|cfg| cfg.data_dir = data_dir.clone());

    // 1. One real enrollment.
    let device = "dev-00000000";
    let name = format!("{device}.plant.example");
    let name = name.as_str();
    rt.block_on(async {
        let acct = s.new_account().await;
        let order = common::ready_order(&s, &acct, &[name]).await;
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = common::b64(common::csr(&[name], &key));
        let url = order["finalize"].as_str().expect("finalize url");
        let r = s.post_as(&acct, url, Some(&json!({ "csr": csr }))).await;
        let done: Value = r.json();
        assert_eq!(done["status"], "valid", "finalize: {done}");
    });
    let template_records = records(s.app.db.store());
    let (ids, templates) = templates(device, &template_records);
    let bytes: usize = template_records
        .iter()
        .map(|(_, k, v)| k.len() + v.len())
        .sum();
    println!(
        "one enrollment writes {} records ({} bytes of keys and values): {}",
        template_records.len(),
        bytes,
        template_records
            .iter()
            .map(|(t, _, _)| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 2. N devices.
    let store = s.app.db.store();
    let start = Instant::now();
    let write_devices = |devices: std::ops::Range<usize>| {
        let (mut key, mut value) = (String::new(), String::new());
        for device in devices {
            let ids: Vec<String> = ids.iter().map(|id| device_id(id, device)).collect();
            for t in &templates {
                render(&t.key, &ids, &mut key);
                render(&t.value, &ids, &mut value);
                store
                    .put(t.table, key.as_bytes(), value.as_bytes())
                    .expect("put");
            }
            if device % BATCH == 0 {
                rt.block_on(s.app.db.flush()).expect("flush");
                if device % (BATCH * 10) == 0 {
                    println!("  {device} devices, {:.0} s", start.elapsed().as_secs_f64());
                }
            }
        }
        rt.block_on(s.app.db.flush()).expect("flush");
    };
    write_devices(1..args.devices);
    let took = start.elapsed().as_secs_f64();
    // The last device's records are where they belong and decode as the server's types.
    let last: Vec<String> = ids
        .iter()
        .map(|id| device_id(id, args.devices - 1))
        .collect();
    let mut key = String::new();
    for t in &templates {
        render(&t.key, &last, &mut key);
        let stored = store
            .get(t.table, key.as_bytes())
            .expect("get")
            .unwrap_or_else(|| panic!("{} {key:?} missing", t.table.name()));
        serde_json::from_slice::<Value>(&stored).expect("JSON record");
    }
    let kid = s.url(&format!("/acme/acct/{}", last[account_id(&templates)]));
    let account = s.app.account_by_kid(&kid).expect("last device's account");
    assert_eq!(account.status, ca_server::types::AccountStatus::Valid);
    println!(
        "wrote {} devices ({} records) in {took:.1} s: {:.0} devices/s",
        args.devices,
        args.devices * templates.len(),
        args.devices as f64 / took
    );

    // 3. The CRL.
    let at = now();
    let rng = ring::rand::SystemRandom::new();
    for i in 0..args.revoked {
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut serial).expect("rng");
        let entry = Revocation {
            reason: [0, 1, 4, 5][i % 4],
            at,
            issuer: IssuerKind::Ec,
            by: Some(ca_server::ca::cert::RevokedBy::Operator),
            not_after: None,
        };
        s.app
            .db
            .put(Table::Revocations, &hex::encode(serial), &entry)
            .expect("put");
    }
    rt.block_on(s.app.db.flush()).expect("flush");
    for run in 1..=3 {
        let start = Instant::now();
        let der = rt
            .block_on(ca_server::ra::crl::refresh(&s.app, IssuerKind::Ec, now()))
            .expect("CRL");
        println!(
            "CRL with {} revoked certificates (run {run}): {:.0} ms, {} bytes DER",
            args.revoked,
            start.elapsed().as_secs_f64() * 1e3,
            der.len()
        );
    }

    // 4. The checkpoint the server takes when idle; then, after as many more writes as the
    //    server lets pass between checkpoints under load, the one it takes then (the pause a
    //    sustained load sees); then as many writes again, not checkpointed, so the first
    //    restart below replays the most a restart after a power cut can have to replay.
    let mut total = args.devices;
    if args.checkpoint {
        let checkpoint = |what: &str| {
            let start = Instant::now();
            let took = rt
                .block_on(s.app.db.checkpoint_if(|_, _| true))
                .expect("checkpoint");
            assert!(took, "the checkpoint did not run");
            println!("{what}: {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
        };
        checkpoint("checkpoint after the writes (the server takes it once idle)");
        let more = usize::try_from(ca_server::storage::CHECKPOINT_MAX_WRITES)
            .expect("usize")
            .div_ceil(templates.len())
            .min(args.devices);
        write_devices(args.devices..args.devices + more);
        total += more;
        checkpoint(&format!(
            "checkpoint after {more} more devices ({} records, the most the server lets pass \
             between two checkpoints under load)",
            more * templates.len()
        ));
        write_devices(total..total + more);
        total += more;
        println!(
            "then {more} more devices, not checkpointed: restart 1 replays {} records",
            more * templates.len()
        );
    }

    // 5. Restarts of the real server on the store.
    let root = data_dir.join("ca").join("root.pem");
    drop(s);
    let (on_disk, apparent) = disk_usage(&data_dir);
    println!(
        "data directory: {:.0} MiB on disk ({:.0} MiB apparent), {:.0} bytes/device",
        mib(on_disk),
        mib(apparent),
        on_disk as f64 / total as f64
    );
    if args.keep {
        // The first start after the writes is the slow one (docs/performance.md): keep it for a
        // profiler instead of using it up here.
        println!("kept {}; no restarts", dir.keep().display());
        return;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&root).expect("root PEM"))
        .expect("root");
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    for run in 1..=RESTARTS {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ca-server"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ca-server");
        let ready = loop {
            if directory_answers(port, &tls) {
                break Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(300)
                || child.try_wait().ok().flatten().is_some()
            {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let (rss, peak) = rss_mib(child.id());
        // The first run ends as a power cut would (a checkpoint made at a graceful stop would
        // not be there); the others with SIGINT, the server's graceful stop.
        let signal = if run == 1 { "-KILL" } else { "-INT" };
        let stopped = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            child.kill().expect("stop ca-server");
        }
        child.wait().expect("wait ca-server");
        match ready {
            Some(t) => println!(
                "restart {run} with {} devices: directory answered after {:.0} ms, RSS {rss:.0} MiB (peak {peak:.0} MiB)",
                total,
                t.as_secs_f64() * 1e3
            ),
            None => println!("restart {run}: the server did not answer"),
        }
    }
}
