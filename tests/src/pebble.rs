//! Pebble, Let's Encrypt's test ACME server (Debian `pebble`), started the way [`CaServer`] is,
//! so the client drivers are proven against a server nobody here wrote.
//!
//! Each instance runs its own `pebble-challtestsrv` as DNS server (every name resolves to
//! 127.0.0.1), on its own ports, so validation is real: Pebble dials the client's http-01 port.
//!
//! [`CaServer`]: crate::CaServer

use std::fs::{self, File};
use std::io::Read as _;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tempfile::TempDir;

use crate::clients::Eab;
use crate::https;
use crate::ports::{free_port, free_tcp_udp_port};
use crate::process::{run_ok, Daemon};

/// How to start Pebble.
#[derive(Clone, Debug)]
pub struct PebbleOpts {
    /// Require external account binding, with one generated MAC key ([`Pebble::eab`]).
    pub eab: bool,
    /// Port Pebble dials for http-01; a free one when `None`.
    pub http_port: Option<u16>,
    /// Give up waiting for the directory after this long.
    pub startup_timeout: Duration,
}

impl Default for PebbleOpts {
    fn default() -> Self {
        Self {
            eab: false,
            http_port: None,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// A running Pebble plus its DNS server; both are killed, and the directory removed, on drop.
#[derive(Debug)]
pub struct Pebble {
    // Fields drop in order: the processes go before their directory.
    pebble: Daemon,
    challtestsrv: Daemon,
    listen_port: u16,
    management_port: u16,
    http_port: u16,
    tls_port: u16,
    tls_ca: PathBuf,
    eab: Option<Eab>,
    dir: TempDir,
}

const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

impl Pebble {
    /// Generates a TLS certificate for 127.0.0.1/::1/localhost, starts `pebble-challtestsrv`
    /// and `pebble` on free ports, and waits until the directory answers 200.
    pub fn start(opts: PebbleOpts) -> Result<Self> {
        let dir = crate::temp_dir("iiot-pebble-")?;
        let tls = make_tls_cert(dir.path())?;

        let listen_port = free_port()?;
        let management_port = free_port()?;
        let http_port = match opts.http_port {
            Some(p) => p,
            None => free_port()?,
        };
        let tls_port = free_port()?;
        let dns_port = free_tcp_udp_port()?;
        let dns_management_port = free_port()?;

        // Only the DNS server: its default http-01/tls-alpn-01 responders would take the ports
        // the ACME client under test must listen on. No AAAA answers, so Pebble dials
        // 127.0.0.1, where the clients listen, and never ::1.
        let mut challtestsrv = Daemon::spawn(
            "pebble-challtestsrv",
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{dns_management_port}")]),
            dir.path(),
        )?;
        challtestsrv.wait_ready(opts.startup_timeout, |why| {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, dns_management_port)) {
                Ok(_) => Ok(Some(())),
                Err(e) => {
                    *why = format!("connect to management port {dns_management_port}: {e}");
                    Ok(None)
                }
            }
        })?;

        let eab = opts.eab.then(|| -> Result<Eab> {
            Ok(Eab {
                kid: "pebble-kid-1".to_owned(),
                hmac_b64url: URL_SAFE_NO_PAD.encode(random_bytes::<32>()?),
            })
        });
        let eab = eab.transpose()?;
        let mac_keys: serde_json::Map<String, serde_json::Value> = eab
            .iter()
            .map(|e| (e.kid.clone(), e.hmac_b64url.clone().into()))
            .collect();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": tls.cert,
                "privateKey": tls.key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": opts.eab,
                "externalAccountMACKeys": mac_keys,
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;

        let mut pebble = Daemon::spawn(
            "pebble",
            Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                // Real validation, no random sleeps, and no deliberately rejected nonces: these
                // tests check the harness, not the clients' retry logic.
                .env_remove("PEBBLE_VA_ALWAYS_VALID")
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            dir.path(),
        )?;
        let directory_url = format!("https://127.0.0.1:{listen_port}/dir");
        pebble.wait_ready(opts.startup_timeout, |why| {
            challtestsrv.check_running()?;
            match https::get(&directory_url, &tls.ca) {
                Ok((200, _)) => Ok(Some(())),
                Ok((status, body)) => {
                    *why = format!("GET {directory_url}: {status} {body}");
                    Ok(None)
                }
                Err(e) => {
                    *why = format!("{e:#}");
                    Ok(None)
                }
            }
        })?;

        Ok(Self {
            pebble,
            challtestsrv,
            listen_port,
            management_port,
            http_port,
            tls_port,
            tls_ca: tls.ca,
            eab,
            dir,
        })
    }

    /// `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.listen_port)
    }

    /// CA certificate (PEM) for Pebble's own HTTPS, ACME and management: give it to clients.
    pub fn tls_ca_pem(&self) -> &Path {
        &self.tls_ca
    }

    /// Port Pebble dials for http-01: the client under test must listen there.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Port Pebble dials for tls-alpn-01.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The generated EAB credentials, when started with [`PebbleOpts::eab`].
    pub fn eab(&self) -> Option<Eab> {
        self.eab.clone()
    }

    /// Pebble's temporary directory (config, TLS files, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The root issuing certificates, PEM, from the management API (`/roots/0`). Pebble makes a
    /// new one on every start.
    pub fn root_pem(&self) -> Result<String> {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let (status, body) = https::get(&url, &self.tls_ca)?;
        ensure!(status == 200, "GET {url}: status {status}: {body}");
        ensure!(
            body.contains("-----BEGIN CERTIFICATE-----"),
            "GET {url}: not a PEM certificate: {body}"
        );
        Ok(body)
    }

    /// Writes [`Self::root_pem`] to `<dir>/issuing-root.pem` and returns that path.
    pub fn write_root_pem(&self) -> Result<PathBuf> {
        let path = self.dir().join("issuing-root.pem");
        fs::write(&path, self.root_pem()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Tails of Pebble's and the DNS server's output.
    pub fn logs(&self) -> String {
        format!("{}{}", self.pebble.logs(), self.challtestsrv.logs())
    }
}

struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A throwaway CA and a server certificate for 127.0.0.1, ::1 and localhost, with openssl.
fn make_tls_cert(dir: &Path) -> Result<TlsFiles> {
    let tls_dir = dir.join("tls");
    fs::create_dir_all(&tls_dir).context("cannot create the TLS directory")?;
    let p = |name: &str| tls_dir.join(name);
    let files = TlsFiles {
        ca: p("ca.pem"),
        cert: p("cert.pem"),
        key: p("key.pem"),
    };
    run_ok(
        "openssl-ca",
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-days",
                "7",
                "-subj",
                "/CN=iiot-acme test Pebble TLS CA",
            ])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(&files.ca),
        &tls_dir,
        OPENSSL_TIMEOUT,
    )?;
    run_ok(
        "openssl-csr",
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&files.key)
            .arg("-out")
            .arg(p("cert.csr")),
        &tls_dir,
        OPENSSL_TIMEOUT,
    )?;
    fs::write(
        p("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid\n\
         subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n",
    )
    .context("cannot write ext.cnf")?;
    run_ok(
        "openssl-sign",
        Command::new("openssl")
            .args(["x509", "-req", "-days", "7", "-CAcreateserial"])
            .arg("-in")
            .arg(p("cert.csr"))
            .arg("-CA")
            .arg(&files.ca)
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(&files.cert),
        &tls_dir,
        OPENSSL_TIMEOUT,
    )?;
    Ok(files)
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(buf)
}
