//! mosquitto (Debian package) as an MQTT broker with mutual TLS on a free loopback port:
//! `require_certificate true`, `use_identity_as_username true` (the client certificate's CN is
//! the MQTT username), no anonymous clients.

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::free_port;
use crate::process::Daemon;

/// A running broker; stopped when dropped.
pub struct Broker {
    /// The mosquitto process; its stderr is the broker log (`log_type all`).
    pub daemon: Daemon,
    /// The TLS listener's port on 127.0.0.1.
    pub port: u16,
}

/// Starts mosquitto with config and logs in `dir`: clients must present a certificate that
/// chains to `cafile`; the broker presents `certfile` (leaf and intermediates) and `keyfile`;
/// with `crl`, certificates it lists are refused.
pub fn start_broker(
    dir: &Path,
    cafile: &Path,
    certfile: &Path,
    keyfile: &Path,
    crl: Option<&Path>,
) -> Result<Broker> {
    let port = free_port()?;
    let mut conf = format!(
        "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
         require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n\
         log_type all\nuser root\n",
        cafile.display(),
        certfile.display(),
        keyfile.display()
    );
    if let Some(crl) = crl {
        conf += &format!("crlfile {}\n", crl.display());
    }
    let conf_path = dir.join("mosquitto.conf");
    fs::write(&conf_path, conf)?;
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let mut daemon = Daemon::spawn(
        "mosquitto",
        Command::new(bin).arg("-c").arg(&conf_path),
        dir,
    )?;
    daemon.wait_ready(Duration::from_secs(10), |why| {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) => Ok(Some(())),
            Err(e) => {
                *why = e.to_string();
                Ok(None)
            }
        }
    })?;
    Ok(Broker { daemon, port })
}
