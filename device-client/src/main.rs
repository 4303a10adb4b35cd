//! `device-client`: enroll a device with an iiot-acme CA and keep its certificate renewed.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use device_client::cert::{self, rfc3339, CertStatus};
use device_client::config::{FileConfig, LocalSettings};
use device_client::device::{Device, EnrollOutcome};
use device_client::files::State;
use device_client::key::KeyAlgorithm;
use device_client::{Error, ErrorKind, ProblemType};

const EXIT_CODES: &str = "\
Exit codes:
  0   success: enroll installed a certificate or the installed one is still valid;
      show found a valid certificate; run was stopped by SIGTERM/SIGINT
  1   unexpected internal error
  2   usage or configuration error (including: the CA requires EAB or agreement to
      its terms, and none is configured; the CA does not offer --profile)
  3   trust failure: the CA's TLS certificate does not match the pinned root or
      fingerprint; nothing was sent to it
  4   the CA could not be reached or did not answer in time (try again later)
  5   the CA refused a request or answered with something that is not ACME; the
      message names the ACME problem type
  6   the CA could not validate the device (the challenge failed: check that the
      CA can reach the http-01 or tls-alpn-01 address and port; device-attest-01:
      the CA's detail says what it refused in the attestation), or the operator
      rejected it or did not decide in time
  7   local error: a file or directory cannot be read or written, the http-01
      or tls-alpn-01 port cannot be bound, or a PKCS #11 token is not there or
      fails for now (run tries again)
  8   a certificate was installed, but the post-install command failed
  10  show: no usable certificate (missing, expired, not matching the key or the
      configured identifiers)
  11  show: the certificate is valid but due for renewal

Configuration: flags override the TOML file given with --config; the file takes the
same names in snake_case (directory_url, root_cert, root_fingerprint, dns, ip,
permanent_id, key, cert, chain, fullchain, state_dir, challenge, idevid_chain,
idevid_key, http01_listen, approval_timeout, eab_kid,
eab_hmac, eab_hmac_file, post_install, post_install_timeout, renew_at, key_algorithm,
account_key_algorithm, reuse_key, agree_terms, request_timeout, poll_timeout, retry_min,
retry_max, opcua_pki, crl_refresh, pkcs12, pkcs12_passphrase_file, der). Unknown keys are
refused.";

/// Enroll this device with an iiot-acme CA (RFC 8555 ACME) and keep its certificate renewed.
///
/// The CA is trusted through exactly one pinned root (a file or its SHA-256 fingerprint);
/// system roots are never used. Keys are made on the device and never leave it.
#[derive(Parser, Debug)]
#[command(name = "device-client", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Get a certificate now unless the installed one is still valid and not due for renewal.
    #[command(after_long_help = EXIT_CODES)]
    Enroll {
        /// Get a new certificate even if the installed one is still good.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        opts: Opts,
    },
    /// Run forever: enroll if needed, then renew at the configured point of the lifetime,
    /// retrying failures with exponential backoff and jitter.
    #[command(after_long_help = EXIT_CODES)]
    Run {
        #[command(flatten)]
        opts: Opts,
    },
    /// Show the installed certificate and when it will be renewed.
    #[command(after_long_help = EXIT_CODES)]
    Show {
        #[command(flatten)]
        opts: Opts,
    },
}

#[derive(Args, Debug, Default)]
struct Opts {
    /// TOML configuration file; flags override its values.
    #[arg(long, short = 'c', env = "DEVICE_CLIENT_CONFIG")]
    config: Option<PathBuf>,
    /// ACME directory URL of the CA, https://host:port/directory.
    #[arg(long = "directory", value_name = "URL")]
    directory_url: Option<String>,
    /// Pin the CA by its root certificate file (PEM or DER).
    #[arg(long = "root", value_name = "FILE")]
    root_cert: Option<PathBuf>,
    /// Pin the CA by its root's SHA-256 fingerprint (AB:CD:…, as the CA prints it).
    #[arg(long, value_name = "FINGERPRINT")]
    root_fingerprint: Option<String>,
    /// DNS name to certify (repeatable).
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
    /// IP address to certify (repeatable).
    #[arg(long, value_name = "ADDR")]
    ip: Vec<String>,
    /// Permanent identifier to certify, the device's manufacturer serial number with an
    /// optional assigner OID, proven with device-attest-01 (repeatable).
    #[arg(long = "permanent-id", value_name = "SERIAL[/OID]")]
    permanent_id: Vec<String>,
    /// Certificate key file (PKCS #8 PEM, mode 0600) [default: STATE_DIR/cert.key.pem], or a
    /// PKCS #11 URI (pkcs11:token=…;object=…?module-path=…&pin-source=file:…): a new key is
    /// generated in the token for every certificate (as OBJECT.next, relabelled OBJECT once
    /// installed; the old one is destroyed), or kept with --reuse-key.
    #[arg(long, value_name = "PATH|URI")]
    key: Option<PathBuf>,
    /// Certificate file (PEM, leaf only) [default: STATE_DIR/cert.pem].
    #[arg(long, value_name = "PATH")]
    cert: Option<PathBuf>,
    /// Issuer chain file (PEM, intermediates).
    #[arg(long, value_name = "PATH")]
    chain: Option<PathBuf>,
    /// Leaf followed by the chain (PEM).
    #[arg(long, value_name = "PATH")]
    fullchain: Option<PathBuf>,
    /// Where the account key and state live [default: /var/lib/iiot-device-client].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Challenge to answer: http-01, tls-alpn-01 (TLS on port 443), operator-approval-01 (show a pairing code and wait for
    /// an operator), or device-attest-01 (prove --permanent-id with the IDevID; --dns/--ip of
    /// the same order answer http-01) [default: http-01].
    #[arg(long, value_name = "TYPE")]
    challenge: Option<String>,
    /// device-attest-01: the IDevID certificate chain (PEM: IDevID first, then intermediates).
    #[arg(long = "idevid-chain", value_name = "FILE")]
    idevid_chain: Option<PathBuf>,
    /// device-attest-01: the IDevID private key (PKCS #8 PEM, P-256 or P-384), or a PKCS #11
    /// URI naming it in a token; it only signs the challenge, the certificate key is another.
    #[arg(long = "idevid-key", value_name = "FILE|URI")]
    idevid_key: Option<PathBuf>,
    /// Address:port the http-01 responder listens on [default: [::]:80, IPv6 and IPv4; 0.0.0.0:80 without IPv6].
    #[arg(long = "http01-listen", value_name = "ADDR")]
    http01_listen: Option<String>,
    /// How long to wait for an operator's approval [default: 1h].
    #[arg(long, value_name = "DURATION")]
    approval_timeout: Option<String>,
    /// EAB key identifier from the operator.
    // Key ids and base64url keys start with '-' one time in 64: values, not flags.
    #[arg(
        long,
        env = "DEVICE_CLIENT_EAB_KID",
        value_name = "KID",
        allow_hyphen_values = true
    )]
    eab_kid: Option<String>,
    /// EAB HMAC key (base64url) from the operator; prefer the environment or --eab-hmac-file.
    #[arg(
        long,
        env = "DEVICE_CLIENT_EAB_HMAC",
        hide_env_values = true,
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    eab_hmac: Option<String>,
    /// File holding the EAB HMAC key.
    #[arg(long, value_name = "FILE")]
    eab_hmac_file: Option<PathBuf>,
    /// Shell command run after a new certificate is installed (e.g. "systemctl reload opcua").
    #[arg(long, value_name = "CMD")]
    post_install: Option<String>,
    /// How long the post-install command may run [default: 2m].
    #[arg(long, value_name = "DURATION")]
    post_install_timeout: Option<String>,
    /// Renew after this fraction of the certificate's lifetime [default: 0.6667].
    #[arg(long, value_name = "FRACTION")]
    renew_at: Option<f64>,
    /// Certificate key algorithm: p256, p384, ed25519, rsa2048 or rsa3072 (RSA for OPC UA's
    /// Basic256Sha256) [default: p256].
    #[arg(long, value_name = "ALG")]
    key_algorithm: Option<KeyAlgorithm>,
    /// Account key algorithm: p256 or p384 (account keys are ECDSA) [default: p256].
    #[arg(long, value_name = "ALG")]
    account_key_algorithm: Option<KeyAlgorithm>,
    /// Keep the certificate key across renewals (default: a new key per certificate).
    #[arg(long)]
    reuse_key: bool,
    /// Accept the CA's terms of service, if it publishes any.
    #[arg(long)]
    agree_terms: bool,
    /// Limit for one HTTPS request [default: 30s].
    #[arg(long, value_name = "DURATION")]
    request_timeout: Option<String>,
    /// Limit for each wait on the CA (validation, issuance) [default: 5m].
    #[arg(long, value_name = "DURATION")]
    poll_timeout: Option<String>,
    /// run: first wait after a failure [default: 30s].
    #[arg(long, value_name = "DURATION")]
    retry_min: Option<String>,
    /// run: longest wait after failures [default: 1h].
    #[arg(long, value_name = "DURATION")]
    retry_max: Option<String>,
    /// Also write an OPC UA PKI directory: own/certs (DER) and own/private, the CA root in
    /// trusted/certs, the intermediates in issuer/certs, their CRLs in the crl folders.
    #[arg(long, value_name = "DIR")]
    opcua_pki: Option<PathBuf>,
    /// run: how often the OPC UA PKI directory's CRLs are fetched again [default: 1h].
    #[arg(long, value_name = "DURATION")]
    crl_refresh: Option<String>,
    /// Also write key, certificate and chain as PKCS #12 (PBES2, AES-256, PBKDF2-SHA256).
    #[arg(long, value_name = "FILE", requires = "pkcs12_passphrase_file")]
    pkcs12: Option<PathBuf>,
    /// File whose first line is the PKCS #12 passphrase.
    #[arg(long, value_name = "FILE")]
    pkcs12_passphrase_file: Option<PathBuf>,
    /// Also write the certificate and the key (PKCS #8) as DER, next to the PEM files
    /// (same names with the extension .der).
    #[arg(long)]
    der: bool,
    /// Certificate profile to ask the CA for (e.g. tls-server, mqtt-client, opcua, modbus);
    /// checked against the profiles the CA's directory lists [default: the CA's default].
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// OPC UA ApplicationUri for the certificate (a URI subjectAltName; the opcua profile).
    #[arg(long, value_name = "URI")]
    application_uri: Option<String>,
    /// Address:port the tls-alpn-01 responder listens on [default: [::]:443, IPv6 and IPv4; 0.0.0.0:443 without IPv6].
    #[arg(long = "tls-alpn01-listen", value_name = "ADDR")]
    tls_alpn01_listen: Option<String>,
    /// More log output (debug).
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Less log output (warnings and errors only).
    #[arg(long, short = 'q', conflicts_with = "verbose")]
    quiet: bool,
}

impl Opts {
    /// The flags as a config layer, over the file if there is one.
    fn config(&self) -> Result<FileConfig, Error> {
        let file = match &self.config {
            Some(path) => FileConfig::from_file(path)?,
            None => FileConfig::default(),
        };
        // Every local user can read a process's arguments (/proc/PID/cmdline, ps).
        for (flag, key) in [("--key", &self.key), ("--idevid-key", &self.idevid_key)] {
            if key
                .as_deref()
                .is_some_and(|k| device_client::pkcs11::holds_pin_value(&k.to_string_lossy()))
            {
                return Err(Error::Config(format!(
                    "{flag}: a pin-value on the command line can be read by every local user \
                     (/proc/PID/cmdline, ps); use pin-source=file:/path/to/pin (mode 0600), or \
                     put the URI in the configuration file"
                )));
            }
        }
        let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let flags = FileConfig {
            directory_url: self.directory_url.clone(),
            root_cert: self.root_cert.clone(),
            root_fingerprint: self.root_fingerprint.clone(),
            dns: some_vec(&self.dns),
            ip: some_vec(&self.ip),
            permanent_id: some_vec(&self.permanent_id),
            key: self.key.clone(),
            cert: self.cert.clone(),
            chain: self.chain.clone(),
            fullchain: self.fullchain.clone(),
            state_dir: self.state_dir.clone(),
            challenge: self.challenge.clone(),
            idevid_chain: self.idevid_chain.clone(),
            idevid_key: self.idevid_key.clone(),
            http01_listen: self.http01_listen.clone(),
            approval_timeout: self.approval_timeout.clone(),
            eab_kid: self.eab_kid.clone(),
            eab_hmac: self.eab_hmac.clone(),
            eab_hmac_file: self.eab_hmac_file.clone(),
            post_install: self.post_install.clone(),
            post_install_timeout: self.post_install_timeout.clone(),
            renew_at: self.renew_at,
            key_algorithm: self.key_algorithm,
            account_key_algorithm: self.account_key_algorithm,
            reuse_key: self.reuse_key.then_some(true),
            agree_terms: self.agree_terms.then_some(true),
            request_timeout: self.request_timeout.clone(),
            poll_timeout: self.poll_timeout.clone(),
            retry_min: self.retry_min.clone(),
            retry_max: self.retry_max.clone(),
            opcua_pki: self.opcua_pki.clone(),
            crl_refresh: self.crl_refresh.clone(),
            pkcs12: self.pkcs12.clone(),
            pkcs12_passphrase_file: self.pkcs12_passphrase_file.clone(),
            der: self.der.then_some(true),
            profile: self.profile.clone(),
            application_uri: self.application_uri.clone(),
            tls_alpn01_listen: self.tls_alpn01_listen.clone(),
        };
        Ok(file.merge(flags))
    }
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config => 2,
        ErrorKind::Trust => 3,
        ErrorKind::Unreachable => 4,
        ErrorKind::Refused => 5,
        ErrorKind::Validation => 6,
        ErrorKind::Local => 7,
        ErrorKind::PostInstall => 8,
        _ => 1,
    }
}

fn init_logging(opts: &Opts) {
    // pkcs11_key: the token code (a PIN file others can read, a key imported into the token).
    let default = if opts.verbose {
        "device_client=debug,pkcs11_key=debug"
    } else if opts.quiet {
        "device_client=warn,pkcs11_key=warn"
    } else {
        "device_client=info,pkcs11_key=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn fail(e: &Error) -> ExitCode {
    eprintln!(
        "device-client: error: {}",
        device_client::error::printable(&e.to_string())
    );
    match e.kind() {
        ErrorKind::Validation
            if matches!(
                e.problem().and_then(|p| p.kind()),
                Some(ProblemType::Connection | ProblemType::IncorrectResponse | ProblemType::Dns)
            ) =>
        {
            eprintln!(
                "device-client: hint: the CA must reach this device on the challenge port it is \
             configured to dial (http-01: port 80, tls-alpn-01: port 443, unless the operator \
             changed it, SPEC §5.5); check --http01-listen or --tls-alpn01-listen, firewalls \
             and the identifiers' addresses"
            )
        }
        ErrorKind::Validation
            if e.problem().and_then(|p| p.kind()) == Some(ProblemType::BadAttestationStatement) =>
        {
            eprintln!(
                "device-client: hint: the CA refused the IDevID attestation (SPEC §5.10.3): \
                 check that the manufacturer's root is a trust anchor on the CA \
                 (`ca-server trust-anchor list`) and that --permanent-id is the IDevID's serial \
                 followed by /ASSIGNER, the assigner OID of that trust anchor"
            )
        }
        ErrorKind::Refused
            if e.problem().and_then(|p| p.kind()) == Some(ProblemType::BadCsr)
                && e.problem()
                    .and_then(|p| p.detail.as_deref())
                    .is_some_and(|d| d.contains("already certified")) =>
        {
            eprintln!(
                "device-client: hint: a certificate key kept across renewals (--reuse-key) needs \
                 a CA that allows it: [keys] allow_renewal_key_reuse = true on the CA, or leave \
                 out --reuse-key for a new key per certificate"
            )
        }
        ErrorKind::Trust => eprintln!(
            "device-client: hint: check the pinned root or fingerprint against what the CA \
             prints at start (SPEC §2.3); nothing was sent to this server"
        ),
        _ => {}
    }
    ExitCode::from(exit_code(e.kind()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Enroll { opts, .. } | Command::Run { opts } | Command::Show { opts }) =
        &cli.command;
    init_logging(opts);
    let config = match opts.config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match cli.command {
        Command::Show { .. } => match config.local_settings() {
            Ok(local) => {
                // With the CA's settings complete, also ask for the renewal window (RFC 9773);
                // without them, show stays a purely local look at the files.
                let device = config.into_settings().ok().map(Device::new);
                show(&local, device.as_ref()).await
            }
            Err(e) => fail(&e),
        },
        Command::Enroll { force, .. } => {
            let device = match config.into_settings() {
                Ok(s) => Device::new(s),
                Err(e) => return fail(&e),
            };
            enroll(&device, force).await
        }
        Command::Run { .. } => {
            let device = match config.into_settings() {
                Ok(s) => Device::new(s),
                Err(e) => return fail(&e),
            };
            run(&device).await
        }
    }
}

async fn enroll(device: &Device, force: bool) -> ExitCode {
    match device.enroll(force).await {
        Ok(EnrollOutcome::StillValid { info, renew_at }) => {
            println!(
                "certificate {} is still valid until {}; renewal due at {}; nothing to do",
                info.serial,
                rfc3339(info.not_after),
                rfc3339(renew_at)
            );
            ExitCode::SUCCESS
        }
        Ok(EnrollOutcome::Installed(inst)) => {
            println!(
                "installed certificate {} for {} in {}, valid until {}; renewal due at {}",
                inst.info.serial,
                names(&inst.info.identifiers),
                device.settings().local.cert_path.display(),
                rfc3339(inst.info.not_after),
                rfc3339(inst.renew_at)
            );
            match inst.post_install_error {
                Some(e) => fail(&e),
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => fail(&e),
    }
}

async fn run(device: &Device) -> ExitCode {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            return fail(&Error::Io {
                action: "install a handler for",
                path: "SIGTERM".into(),
                source: e,
            })
        }
    };
    tokio::select! {
        r = device.run() => match r {
            Err(e) => fail(&e),
            Ok(never) => match never {},
        },
        _ = term.recv() => {
            tracing::info!("SIGTERM: stopping");
            ExitCode::SUCCESS
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted: stopping");
            ExitCode::SUCCESS
        }
    }
}

fn names(ids: &[device_client::Identifier]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn show(local: &LocalSettings, device: Option<&Device>) -> ExitCode {
    let status = match cert::local_status(local, time::OffsetDateTime::now_utc()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    println!("certificate  {}", local.cert_path.display());
    println!("key          {}", local.key_path.display());
    println!("status       {status}");
    if let Some(info) = status.info() {
        println!("serial       {}", info.serial);
        println!("identifiers  {}", names(&info.identifiers));
        println!("subject      {}", info.subject);
        println!("issuer       {}", info.issuer);
        println!("not before   {}", rfc3339(info.not_before));
        println!("not after    {}", rfc3339(info.not_after));
        println!(
            "renewal at   {} ({:.0}% of the lifetime)",
            rfc3339(info.renewal_time(local.renew_at)),
            local.renew_at * 100.0
        );
        if let (Some(device), false) = (device, matches!(status, CertStatus::Expired { .. })) {
            match device.renewal_window(info).await {
                Ok(Some(w)) => println!(
                    "ari window   {} to {} (the CA's renewal information)",
                    rfc3339(w.start),
                    rfc3339(w.end)
                ),
                Ok(None) => println!("ari window   none (the CA offers no renewal information)"),
                Err(e) => println!("ari window   unavailable: {e}"),
            }
        }
    }
    match State::load(&local.state_dir) {
        Ok(state) => {
            if let Some(acct) = state.account_url {
                println!("account      {acct}");
            }
            if let Some(dir) = state.directory_url {
                println!("ca           {dir}");
            }
        }
        Err(e) => println!("state        {e}"),
    }
    match status {
        CertStatus::Valid { .. } => ExitCode::SUCCESS,
        CertStatus::RenewalDue { .. } => ExitCode::from(11),
        _ => ExitCode::from(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eab_values_may_start_with_a_hyphen() {
        let cli = Cli::try_parse_from([
            "device-client",
            "enroll",
            "--eab-kid",
            "-kid",
            "--eab-hmac",
            "-KEYbase64url",
        ])
        .expect("parses");
        let Command::Enroll { opts, .. } = cli.command else {
            panic!("not enroll: {:?}", cli.command);
        };
        assert_eq!(opts.eab_kid.as_deref(), Some("-kid"));
        assert_eq!(opts.eab_hmac.as_deref(), Some("-KEYbase64url"));
    }
}
