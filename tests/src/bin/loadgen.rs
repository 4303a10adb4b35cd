//! `loadgen`: N simulated devices, C at a time, each running a complete RFC 8555 enrollment
//! (new account, new order, authorization, http-01 challenge, finalize with a fresh P-256 CSR,
//! certificate download) against any ACME directory, trusting a given CA file.
//!
//! Reports certificates/s, latency percentiles per whole enrollment and per step, errors by
//! problem type, its own CPU time, and the server's CPU time and peak RSS when given its PID
//! (read from /proc). `--json` prints one JSON object for scripts.
//!
//! Polling: after the challenge and after finalize it looks at the order once right away and
//! backs off (5 ms, x1.5) only if it is not done, like the device-client; `--sleep-first`
//! sleeps before the first look instead (instant-acme's own polling).
//!
//! Challenges: with `--http-port` it answers http-01 on 127.0.0.1:PORT (the port the CA dials);
//! without it, it assumes the server validates nothing (iiot-acme's `lab_always_valid`, Pebble's
//! `PEBBLE_VA_ALWAYS_VALID`) and just triggers the challenge.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::routing::get;
use clap::Parser;
use instant_acme::{
    Account, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use serde_json::json;

#[derive(Parser, Clone)]
#[command(about = "ACME enrollment load generator")]
struct Opts {
    /// ACME directory URL. Given more than once (several CA instances), device i enrolls at
    /// the (i mod n)-th.
    #[arg(long, required = true)]
    directory: Vec<String>,
    /// PEM file with the CA certificate to trust for the server's HTTPS.
    #[arg(long)]
    ca_file: PathBuf,
    /// Number of devices (enrollments).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Answer http-01 on 127.0.0.1:PORT; omit for servers that validate nothing.
    #[arg(long)]
    http_port: Option<u16>,
    /// Server PID, to report its CPU time and peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Domain suffix for device names.
    #[arg(long, default_value = "plant.test")]
    suffix: String,
    /// Give up on one enrollment after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Sleep 5 ms before looking at the order after the challenge and after finalize
    /// (instant-acme's `poll_ready` / `poll_certificate`). By default the order is looked at
    /// once at once, as iiot-acme's device-client does, and the 5 ms (x1.5) back-off starts only
    /// if it is not done yet: a fixed sleep puts a floor under every enrollment's latency that
    /// hides how fast the server itself is.
    #[arg(long)]
    sleep_first: bool,
    /// Print a line every N finished enrollments (a soak's curve): the interval's
    /// certificates/s and p99, the server's current RSS (needs --server-pid) and the store's
    /// bytes on disk per enrollment so far (needs --server-data-dir); the final report adds
    /// each figure's least-squares slope per 100,000 enrollments. 0: no intervals.
    #[arg(long, default_value_t = 0)]
    report_every: usize,
    /// The server's data directory, to report the store's size on disk with --report-every.
    #[arg(long)]
    server_data_dir: Option<PathBuf>,
}

const STEPS: [&str; 6] = [
    "account",
    "order",
    "challenge",
    "ready",
    "finalize",
    "certificate",
];

type Tokens = Arc<Mutex<HashMap<String, String>>>;

#[derive(Default)]
struct Results {
    total: Vec<Duration>,
    steps: BTreeMap<&'static str, Vec<Duration>>,
    /// Signed requests (POSTs) per step, summed over the successful enrollments.
    posts: BTreeMap<&'static str, usize>,
    errors: BTreeMap<String, usize>,
    /// Enrollments finished, successfully or not.
    finished: usize,
    /// The current interval of `--report-every`: its latencies and errors, since when.
    interval: Vec<Duration>,
    interval_errors: usize,
    interval_start: Option<Instant>,
}

/// One step of an enrollment: its name, how long it took, and how many POSTs it sent.
type Step = (&'static str, Duration, usize);

/// Counts the POSTs (JWS-signed requests) an enrollment sends, so the report shows how many
/// looks at the order each server needed: a server that finishes in the background makes the
/// client look, and back off, more often.
struct CountPosts {
    inner: Box<dyn instant_acme::HttpClient>,
    posts: Arc<std::sync::atomic::AtomicUsize>,
}

impl instant_acme::HttpClient for CountPosts {
    fn request(
        &self,
        req: axum::http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> iiot_acme_tests::https::AcmeResponseFuture {
        if req.method() == axum::http::Method::POST {
            self.posts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.request(req)
    }
}

/// One enrollment; returns per-step durations or the error's problem type (or text).
async fn enroll(opts: &Opts, tokens: &Tokens, i: usize) -> Result<Vec<Step>, String> {
    let describe = |e: instant_acme::Error| match e {
        instant_acme::Error::Api(p) => p.r#type.unwrap_or_else(|| "problem without type".into()),
        other => format!("client error: {other}"),
    };
    let mut steps = Vec::with_capacity(STEPS.len());
    let mut t = Instant::now();
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut lap = |name: &'static str, steps: &mut Vec<_>| {
        let n = posts.swap(0, std::sync::atomic::Ordering::Relaxed);
        steps.push((name, t.elapsed(), n));
        t = Instant::now();
    };
    let http = Box::new(CountPosts {
        inner: iiot_acme_tests::https::acme_http_client(&opts.ca_file)
            .map_err(|e| format!("client setup: {e:#}"))?,
        posts: posts.clone(),
    });
    let (account, _) = Account::builder_with_http(http)
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            opts.directory[i % opts.directory.len()].clone(),
            None,
        )
        .await
        .map_err(describe)?;
    lap("account", &mut steps);
    let name = format!("dev-{i}.{}", opts.suffix);
    let mut order = account
        .new_order(&NewOrder::new(&[Identifier::Dns(name.clone())]))
        .await
        .map_err(describe)?;
    lap("order", &mut steps);
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(describe)?;
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .ok_or("no http-01 challenge offered")?;
        if opts.http_port.is_some() {
            let ka = ch.key_authorization().as_str().to_owned();
            tokens
                .lock()
                .map_err(|_| "token map poisoned")?
                .insert(ch.token.clone(), ka);
        }
        ch.set_ready().await.map_err(describe)?;
    }
    lap("challenge", &mut steps);
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(5))
        .backoff(1.5)
        .timeout(Duration::from_secs(opts.timeout_secs));
    let mut status = OrderStatus::Pending;
    if !opts.sleep_first {
        let state = order.refresh().await.map_err(describe)?;
        // As `poll_ready` does: a failed order reports its problem, counted by type.
        if let Some(problem) = &state.error {
            return Err(describe(instant_acme::Error::Api(problem.clone())));
        }
        status = state.status;
    }
    if !matches!(status, OrderStatus::Ready | OrderStatus::Invalid) {
        status = order.poll_ready(&retry).await.map_err(describe)?;
    }
    if status != OrderStatus::Ready {
        return Err(format!("order became {status:?}"));
    }
    lap("ready", &mut steps);
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![name]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    order.finalize_csr(csr.der()).await.map_err(describe)?;
    lap("finalize", &mut steps);
    // `certificate` uses the finalize response, refreshing once if it said processing.
    let ready = if !opts.sleep_first {
        order.certificate().await.map_err(describe)?
    } else {
        None
    };
    let chain = match ready {
        Some(chain) => chain,
        None => order.poll_certificate(&retry).await.map_err(describe)?,
    };
    // instant-acme takes any body as the certificate; an enrollment counts only with one.
    if !chain.contains("-----BEGIN CERTIFICATE-----") {
        return Err("the certificate download is not a PEM chain".to_owned());
    }
    lap("certificate", &mut steps);
    Ok(steps)
}

/// CPU seconds (user + system) of a process, from /proc (clock ticks of 1/100 s on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn current_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Bytes a directory tree occupies on disk (allocated blocks, not apparent sizes).
fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Least-squares slope of `y` over `x`, or `None` with fewer than two distinct `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// One `--report-every` line, as JSON: taken when an interval's last enrollment finishes.
fn interval_row(
    opts: &Opts,
    finished: usize,
    lat: &mut [Duration],
    errors: usize,
    secs: f64,
) -> serde_json::Value {
    lat.sort();
    let pid = opts.server_pid.map(|p| p.to_string());
    let store = opts.server_data_dir.as_deref().map(disk_bytes);
    json!({
        "finished": finished, "ok": lat.len(), "errors": errors,
        "certs_per_s": lat.len() as f64 / secs.max(1e-9),
        "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99),
        "server_rss_mib": pid.as_deref().and_then(current_rss_mib),
        "store_bytes": store,
        "store_bytes_per_enrollment": store.map(|b| b as f64 / finished.max(1) as f64),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn summary(v: &mut [Duration]) -> serde_json::Value {
    v.sort();
    json!({
        "p50_ms": percentile(v, 0.50), "p90_ms": percentile(v, 0.90),
        "p99_ms": percentile(v, 0.99), "max_ms": percentile(v, 1.0), "n": v.len(),
    })
}

async fn serve_http01(port: u16, tokens: Tokens) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            get(
                |State(t): State<Tokens>, Path(token): Path<String>| async move {
                    t.lock()
                        .map(|m| m.get(&token).cloned().unwrap_or_default())
                        .unwrap_or_default()
                },
            ),
        )
        .with_state(tokens);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen for http-01 on 127.0.0.1:{port}"))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    anyhow::ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
    let tokens: Tokens = Arc::default();
    if let Some(port) = opts.http_port {
        serve_http01(port, tokens.clone()).await?;
    }
    let server_pid = opts.server_pid.map(|p| p.to_string());
    let server_cpu_before = server_pid.as_deref().and_then(cpu_seconds);
    let own_cpu_before = cpu_seconds("self");

    let results = Arc::new(Mutex::new(Results::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let intervals: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let started = Instant::now();
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (opts, tokens, results, next, intervals) = (
                opts.clone(),
                tokens.clone(),
                results.clone(),
                next.clone(),
                intervals.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= opts.devices {
                        break;
                    }
                    let t0 = Instant::now();
                    let budget = Duration::from_secs(opts.timeout_secs);
                    let outcome = tokio::time::timeout(budget, enroll(&opts, &tokens, i))
                        .await
                        .unwrap_or_else(|_| Err("timeout (server stalled?)".to_owned()));
                    let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                    match outcome {
                        Ok(steps) => {
                            r.total.push(t0.elapsed());
                            r.interval.push(t0.elapsed());
                            for (name, d, posts) in steps {
                                r.steps.entry(name).or_default().push(d);
                                *r.posts.entry(name).or_default() += posts;
                            }
                        }
                        Err(e) => {
                            *r.errors.entry(e).or_default() += 1;
                            r.interval_errors += 1;
                        }
                    }
                    r.finished += 1;
                    if opts.report_every > 0 && r.finished % opts.report_every == 0 {
                        let finished = r.finished;
                        let mut lat = std::mem::take(&mut r.interval);
                        let errors = std::mem::take(&mut r.interval_errors);
                        let since = r.interval_start.replace(Instant::now());
                        drop(r);
                        let secs = since.unwrap_or(started).elapsed().as_secs_f64();
                        let row = interval_row(&opts, finished, &mut lat, errors, secs);
                        print_interval(&row, opts.json);
                        intervals
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(row);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.context("worker panicked")?;
    }
    let wall = started.elapsed().as_secs_f64();
    let mut r = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    let ok = r.total.len();
    let server_cpu = match (
        server_pid.as_deref().and_then(cpu_seconds),
        server_cpu_before,
    ) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    let own_cpu = match (cpu_seconds("self"), own_cpu_before) {
        (Some(a), Some(b)) => Some(a - b),
        _ => None,
    };
    let per_cert_ms = |cpu: Option<f64>| cpu.filter(|_| ok > 0).map(|c| c * 1000.0 / ok as f64);
    let mut steps = serde_json::Map::new();
    let per_enrollment = |n: usize| (ok > 0).then(|| n as f64 / ok as f64);
    for name in STEPS {
        if let Some(v) = r.steps.get_mut(name) {
            let mut s = summary(v);
            s["posts_per_enrollment"] =
                json!(per_enrollment(r.posts.get(name).copied().unwrap_or(0)));
            steps.insert(name.to_owned(), s);
        }
    }
    let mut report = json!({
        "devices": opts.devices, "concurrency": opts.concurrency, "ok": ok,
        "errors": r.errors, "wall_s": wall, "certs_per_s": ok as f64 / wall,
        "enrollment": summary(&mut r.total), "steps": steps,
        "posts_per_enrollment": per_enrollment(r.posts.values().sum()),
        "server_cpu_s": server_cpu, "server_cpu_ms_per_cert": per_cert_ms(server_cpu),
        "server_peak_rss_mib": server_pid.as_deref().and_then(peak_rss_mib),
        "loadgen_cpu_s": own_cpu, "loadgen_cpu_ms_per_cert": per_cert_ms(own_cpu),
    });
    let intervals = std::mem::take(&mut *intervals.lock().unwrap_or_else(|p| p.into_inner()));
    if !intervals.is_empty() {
        let slopes = interval_slopes(&intervals);
        report["slopes_per_100k"] = slopes;
        report["intervals"] = json!(intervals);
    }
    if opts.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "{ok}/{} enrollments in {wall:.2} s at concurrency {}: {:.1} certificates/s",
        opts.devices,
        opts.concurrency,
        ok as f64 / wall
    );
    let e = &report["enrollment"];
    println!(
        "enrollment latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        e["p50_ms"].as_f64().unwrap_or(0.0),
        e["p90_ms"].as_f64().unwrap_or(0.0),
        e["p99_ms"].as_f64().unwrap_or(0.0),
        e["max_ms"].as_f64().unwrap_or(0.0)
    );
    for (name, s) in &steps {
        println!(
            "  {name:<12} p50 {:>7.1}  p90 {:>7.1}  p99 {:>7.1}  max {:>7.1}",
            s["p50_ms"].as_f64().unwrap_or(0.0),
            s["p90_ms"].as_f64().unwrap_or(0.0),
            s["p99_ms"].as_f64().unwrap_or(0.0),
            s["max_ms"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(c) = per_cert_ms(server_cpu) {
        println!(
            "server CPU {:.2} s ({c:.2} ms/certificate), peak RSS {:.1} MiB",
            server_cpu.unwrap_or(0.0),
            report["server_peak_rss_mib"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(c) = per_cert_ms(own_cpu) {
        println!(
            "loadgen CPU {:.2} s ({c:.2} ms/certificate)",
            own_cpu.unwrap_or(0.0)
        );
    }
    for (kind, n) in &r.errors {
        println!("error x{n}: {kind}");
    }
    if let Some(slopes) = report.get("slopes_per_100k") {
        println!("slopes per 100,000 enrollments, least squares over the intervals:");
        for (name, unit) in [
            ("certs_per_s", "certificates/s"),
            ("p99_ms", "ms"),
            ("server_rss_mib", "MiB"),
            ("store_bytes_per_enrollment", "bytes"),
        ] {
            if let Some(v) = slopes[name].as_f64() {
                println!("  {name:<27} {v:>+10.2} {unit}");
            }
        }
    }
    Ok(())
}

fn print_interval(row: &serde_json::Value, as_json: bool) {
    // With --json, stdout carries only the final report; the curve goes to stderr as it runs.
    if as_json {
        eprintln!("{}", json!({ "interval": row }));
        return;
    }
    let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "{:>9} finished  {:>7.1} certs/s  p50 {:>6.1} ms  p99 {:>6.1} ms  errors {:>4}  RSS {:>7.1} MiB  store {:>7.0} B/enrollment",
        row["finished"].as_u64().unwrap_or(0),
        f("certs_per_s"),
        f("p50_ms"),
        f("p99_ms"),
        row["errors"].as_u64().unwrap_or(0),
        f("server_rss_mib"),
        f("store_bytes_per_enrollment"),
    );
}

/// Each interval figure's slope per 100,000 finished enrollments.
fn interval_slopes(rows: &[serde_json::Value]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for key in [
        "certs_per_s",
        "p99_ms",
        "server_rss_mib",
        "store_bytes_per_enrollment",
    ] {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r["finished"].as_f64()? / 100_000.0, r[key].as_f64()?)))
            .collect();
        out.insert(key.to_owned(), json!(slope(&points)));
    }
    serde_json::Value::Object(out)
}
