//! Retention figures: the store's size while a fleet renews round after round with short-lived
//! certificates and a short `storage.retention`.
//!
//! 1. One device enrolls through the server's router (account, order, finalize): the records
//!    of a first enrollment, of which an order, its authorization, its entry in the account's
//!    orders list, the certificate and its key-use record are what each renewal adds.
//! 2. Round `r` (of `--rounds R`) happens at simulated time `T0 + r days`. In round 1 every
//!    device (`--devices N`) gets all the records of an enrollment; in each later round a
//!    renewal's records, each id replaced by one of the same length that is unique to the
//!    device and round (as `benches/scale.rs` copies records), with the order's and the
//!    authorization's `expires` and the certificate's validity moved to the round's time:
//!    certificates valid for `--validity-days` (default 2), orders and authorizations for a
//!    day. Every `--revoke-every K`th certificate of a round is revoked
//!    (`revocation::record_revocation`) and both CRLs are signed at the round's time.
//! 3. After each round the pruner (`ra::retention::prune`) runs at the round's time with
//!    `--retention-days` (default 2), the store is flushed, checkpointed and compacted if its
//!    files have grown enough (as the server's storage tick does), and the round's records, the
//!    store's size on disk and its record count are printed.
//!
//! `cargo bench -p ca-server --bench retention -- --devices 10000 --rounds 50`; `--dir D` puts
//! the data directory under D; `--no-checkpoint` leaves out the checkpoints, `--no-compaction`
//! the compactions. Without `--bench` (under `cargo test --benches`) it runs a handful of
//! devices and rounds.

use std::path::Path;
use std::time::{Duration, Instant};

use ca_server::ca::cert::RevokedBy;
use ca_server::ca::IssuerKind;
use ca_server::storage::{Store, Table};
use ca_server::types::now;
use serde_json::{json, Value};

#[path = "../tests/common/mod.rs"]
mod common;

const DAY: i64 = 86_400;

struct Args {
    devices: usize,
    rounds: usize,
    retention_days: u64,
    validity_days: i64,
    revoke_every: usize,
    dir: Option<std::path::PathBuf>,
    checkpoint: bool,
    compaction: bool,
}

fn args() -> Args {
    let cli = common::bench::BenchArgs::from_env();
    let bench = cli.bench();
    let number = |name: &str, default: usize| cli.number(name, default);
    let devices = number("--devices", if bench { 10_000 } else { 20 });
    let rounds = number("--rounds", if bench { 50 } else { 8 });
    assert!(
        devices * (rounds + 1) < 100_000_000,
        "ids hold 8 digits: fewer devices or rounds"
    );
    Args {
        devices,
        rounds,
        retention_days: number("--retention-days", 2) as u64,
        validity_days: number("--validity-days", 2) as i64,
        revoke_every: number("--revoke-every", 100).max(1),
        dir: cli.value("--dir").map(Into::into),
        checkpoint: !cli.flag("--no-checkpoint"),
        compaction: !cli.flag("--no-compaction"),
    }
}

/// Which part of an enrollment a record is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Written once per device (account, its key, the identities it holds).
    Device,
    /// Written by every renewal.
    Renewal,
}

struct Template {
    table: Table,
    kind: Kind,
    key: String,
    value: String,
}

/// The records of the one real enrollment, except `meta`, and the ids in them: those written
/// once per device and those each renewal makes anew.
fn templates(store: &dyn Store, name: &str) -> (Vec<Template>, Vec<String>, Vec<String>) {
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 record");
    let mut records = Vec::new();
    let (mut device_ids, mut renewal_ids) = (vec![name.to_owned()], Vec::new());
    for table in Table::ALL {
        if table == Table::Meta {
            continue;
        }
        for (k, v) in store.scan_prefix(table, b"").expect("scan") {
            let (key, value) = (text(k), text(v));
            let kind = match table {
                Table::Orders
                | Table::Authzs
                | Table::Certificates
                | Table::KeyUse
                | Table::AccountOrders => Kind::Renewal,
                _ => Kind::Device,
            };
            match table {
                Table::Accounts | Table::AccountKeys => device_ids.push(key.clone()),
                Table::Orders | Table::Authzs | Table::Certificates | Table::KeyUse => {
                    renewal_ids.push(key.clone());
                }
                _ => {}
            }
            records.push(Template {
                table,
                kind,
                key,
                value,
            });
        }
    }
    (records, device_ids, renewal_ids)
}

/// `id` with its last 8 characters replaced by `n` (same length and alphabet: every id is hex
/// or base64url, and both have the digits).
fn numbered(id: &str, n: usize) -> String {
    let keep = id.len().saturating_sub(8);
    format!("{}{n:0>8}", &id[..keep])
}

/// Replaces every id in `s` by its numbered form.
fn render(s: &str, ids: &[(String, String)]) -> String {
    let mut out = s.to_owned();
    for (from, to) in ids {
        out = out.replace(from.as_str(), to);
    }
    out
}

/// Moves the times of an order, authorization or certificate record to `at`.
fn retime(table: Table, value: &str, at: i64, validity: i64) -> String {
    let mut v: Value = serde_json::from_str(value).expect("JSON record");
    match table {
        Table::Orders | Table::Authzs => v["expires"] = json!(at + DAY),
        Table::Certificates => {
            v["not_before"] = json!(at - 60);
            v["not_after"] = json!(at + validity);
        }
        _ => return value.to_owned(),
    }
    v.to_string()
}

/// The enrollment's certificate with its key replaced by a new one, for each renewal: the
/// pruner finds a certificate's key-use record by the key in its DER. The signature no longer
/// verifies, which nothing here checks.
struct KeySwap {
    der: Vec<u8>,
    /// Where the SubjectPublicKeyInfo is in `der`.
    spki: std::ops::Range<usize>,
    /// The key-use key of the enrollment's certificate.
    fingerprint: String,
}

impl KeySwap {
    fn new(templates: &[Template]) -> Self {
        let cert = templates
            .iter()
            .find(|t| t.table == Table::Certificates)
            .expect("certificate");
        let v: Value = serde_json::from_str(&cert.value).expect("JSON record");
        let der = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(v["der"].as_str().expect("der"))
                .expect("base64url")
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("certificate");
        let raw = parsed.public_key().raw;
        let start = raw.as_ptr() as usize - der.as_ptr() as usize;
        let spki = start..start + raw.len();
        let fingerprint = sha256_hex(raw);
        let key_use = templates.iter().find(|t| t.table == Table::KeyUse);
        assert_eq!(key_use.map(|t| t.key.as_str()), Some(fingerprint.as_str()));
        Self {
            der,
            spki,
            fingerprint,
        }
    }

    /// A certificate DER (base64url) with a new P-256 key, and that key's fingerprint.
    fn fresh(&self) -> (String, String) {
        use rcgen::PublicKeyData;
        let key = rcgen::KeyPair::generate().expect("key");
        let spki = key.subject_public_key_info();
        assert_eq!(spki.len(), self.spki.len(), "P-256 keys only");
        let mut der = self.der.clone();
        der[self.spki.clone()].copy_from_slice(&spki);
        (common::b64(&der), sha256_hex(&spki))
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

/// Size of everything under `dir` on disk, bytes.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            disk_usage(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

/// Records in the store, and their keys' and values' bytes.
fn count(store: &dyn Store) -> (usize, usize) {
    let (mut records, mut bytes) = (0, 0);
    for table in Table::ALL {
        let mut after = Vec::new();
        loop {
            let page = store.scan_after(table, &after, 10_000).expect("scan");
            records += page.len();
            bytes += page.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            match page.last() {
                Some((k, _)) if page.len() == 10_000 => after.clone_from(k),
                _ => break,
            }
        }
    }
    (records, bytes)
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = match &args.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("data directory");
    let data_dir = dir.path().to_path_buf();
    let retention = Duration::from_secs(args.retention_days * DAY as u64);
    let s = common::TestServer::with(|cfg| {
        cfg.data_dir = data_dir.clone();
        cfg.storage.retention = retention;
    });

    // 1. One real enrollment.
    let device = "dev-00000000";
    let name = format!("{device}.plant.example");
    rt.block_on(async {
        let acct = s.new_account().await;
        let order = common::ready_order(&s, &acct, &[&name]).await;
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = common::b64(common::csr(&[&name], &key));
        let url = order["finalize"].as_str().expect("finalize url");
        let r = s.post_as(&acct, url, Some(&json!({ "csr": csr }))).await;
        let done: Value = r.json();
        assert_eq!(done["status"], "valid", "finalize: {done}");
    });
    let store = s.app.db.store();
    let (templates, device_ids, renewal_ids) = templates(store, device);
    let per_renewal: usize = templates
        .iter()
        .filter(|t| t.kind == Kind::Renewal)
        .map(|t| t.key.len() + t.value.len())
        .sum();
    println!(
        "devices {}, rounds {} (one simulated day apart), certificates valid {} days, \
         retention {} days, every {}th certificate revoked; a renewal writes {} bytes of keys \
         and values",
        args.devices,
        args.rounds,
        args.validity_days,
        args.retention_days,
        args.revoke_every,
        per_renewal
    );
    println!("round,records_written,store_records,store_kv_bytes,disk_bytes,pruned_orders,pruned_authzs,reduced_certificates,pruned_revocations,round_s,prune_s,compaction_s,compaction_pause_ms");

    let t0 = now() - (args.rounds as i64 + 1) * DAY;
    let validity = args.validity_days * DAY;
    let key_swap = KeySwap::new(&templates);
    let mut sizes = Vec::new();
    let started = Instant::now();
    for round in 1..=args.rounds {
        let at = t0 + round as i64 * DAY;
        let round_start = Instant::now();
        let mut written = 0;
        for d in 0..args.devices {
            let n = round * args.devices + d;
            // Every certificate gets a key of its own, and its key-use record that key's
            // fingerprint, as finalize records them.
            let (der, fingerprint) = key_swap.fresh();
            let ids: Vec<(String, String)> = device_ids
                .iter()
                .map(|id| (id.clone(), numbered(id, d)))
                .chain(renewal_ids.iter().map(|id| {
                    if *id == key_swap.fingerprint {
                        (id.clone(), fingerprint.clone())
                    } else {
                        (id.clone(), numbered(id, n))
                    }
                }))
                .collect();
            for t in &templates {
                if t.kind == Kind::Device && round > 1 {
                    continue;
                }
                let key = render(&t.key, &ids);
                let mut value = retime(t.table, &render(&t.value, &ids), at, validity);
                if t.table == Table::Certificates {
                    let mut v: Value = serde_json::from_str(&value).expect("JSON record");
                    v["der"] = json!(der);
                    value = v.to_string();
                }
                store
                    .put(t.table, key.as_bytes(), value.as_bytes())
                    .expect("put");
                written += 1;
            }
            if d % args.revoke_every == 0 {
                let serial = numbered(
                    templates
                        .iter()
                        .find(|t| t.table == Table::Certificates)
                        .map(|t| t.key.as_str())
                        .expect("certificate"),
                    n,
                );
                ca_server::ra::revocation::record_revocation(
                    &s.app,
                    &serial,
                    4,
                    RevokedBy::Operator,
                )
                .expect("revoke");
            }
        }
        for kind in IssuerKind::ALL {
            if s.app.ca.has(kind) {
                rt.block_on(ca_server::ra::crl::refresh(&s.app, kind, at))
                    .expect("CRL");
            }
        }
        let round_s = round_start.elapsed().as_secs_f64();
        let prune_start = Instant::now();
        let pruned = ca_server::ra::retention::prune(&s.app, at).expect("prune");
        let prune_s = prune_start.elapsed().as_secs_f64();
        rt.block_on(s.app.db.flush_all()).expect("flush");
        if args.checkpoint {
            rt.block_on(s.app.db.checkpoint_if(|_, _| true))
                .expect("checkpoint");
        }
        let compacted = if args.compaction {
            rt.block_on(s.app.db.compact_if_grown())
                .expect("compaction")
        } else {
            None
        };
        let (compaction_s, pause_ms) =
            compacted.map_or((0.0, 0), |c| (c.took.as_secs_f64(), c.paused.as_millis()));
        let (records, kv) = count(store);
        let disk = disk_usage(&data_dir.join("db"));
        sizes.push((records, disk));
        println!(
            "{round},{written},{records},{kv},{disk},{},{},{},{},{round_s:.1},{prune_s:.1},{compaction_s:.1},{pause_ms}",
            pruned.orders, pruned.authzs, pruned.certificates, pruned.revocations
        );
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    // What each renewal leaves for good, in the history table (`ra::history`): an entry in its
    // device's record, its serial's index entry and its retired key-use record (the first
    // record of each kind: every key of a kind sorts after the kind's byte alone).
    for (kind, what) in [
        (b'h', "a device's history record"),
        (b's', "a serial's index entry"),
        (b'k', "a retired key-use record"),
    ] {
        let first = store.scan_after(Table::History, &[kind], 1).expect("scan");
        if let Some((key, value)) = first.iter().find(|(k, _)| k.first() == Some(&kind)) {
            let entries = ca_server::ra::history::History::decode(value)
                .map(|h| format!(", {} certificates", h.entries.len()))
                .unwrap_or_default();
            println!(
                "{what}: {} bytes of key and value{entries}",
                key.len() + value.len()
            );
        }
    }
    if let (Some(fifth), Some(last)) = (sizes.get(4), sizes.last()) {
        println!(
            "after round {} / after round 5: disk {:.2}x, records {:.2}x",
            args.rounds,
            last.1 as f64 / fifth.1 as f64,
            last.0 as f64 / fifth.0 as f64
        );
    }
}
