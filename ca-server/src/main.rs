//! `ca-server`: run the CA, or manage it from the CA host.

use std::path::PathBuf;
use std::process::ExitCode;

use ca_server::config::{parse_duration, Config};
use ca_server::eab::EabStore;
use ca_server::server;
use clap::{Args, Parser, Subcommand};

/// iiot-acme: an on-site ACME certificate authority for industrial IoT devices.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the CA (the default when no command is given).
    Serve(ServeArgs),
    /// Manage external account binding (enrollment) credentials.
    #[command(subcommand)]
    Eab(EabCommand),
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:443.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory (store, CA keys, certificates).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Base URL clients use, e.g. https://ca.plant.example:8443.
    #[arg(long)]
    public_url: Option<String>,
    /// Lifetime of issued certificates, e.g. 7d or 36h.
    #[arg(long, value_parser = parse_duration)]
    cert_validity: Option<std::time::Duration>,
    /// Port dialed for http-01 validation (default 80).
    #[arg(long)]
    http_port: Option<u16>,
    /// Port dialed for tls-alpn-01 validation (default 443).
    #[arg(long)]
    tls_alpn_port: Option<u16>,
    /// Refuse new accounts without an external account binding.
    #[arg(long)]
    eab_required: bool,
}

#[derive(Subcommand)]
enum EabCommand {
    /// Create a credential and print its key id and HMAC key.
    Create {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How long the credential stays usable, e.g. 30d (default: no expiry).
        #[arg(long, value_parser = parse_duration)]
        expires: Option<std::time::Duration>,
        /// The credential binds one account only.
        #[arg(long)]
        single_use: bool,
        /// Print JSON {"kid", "hmac", "expires"} for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List credentials.
    List {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Revoke a credential so it can no longer bind accounts.
    Revoke {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The key id.
        kid: String,
    },
}

fn load_config(a: &ServeArgs) -> Result<Config, String> {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if let Some(v) = &a.data_dir {
        cfg.data_dir.clone_from(v);
    }
    if let Some(v) = &a.public_url {
        cfg.public_url = Some(v.clone());
    }
    if let Some(v) = a.cert_validity {
        cfg.issuance.cert_validity = v;
    }
    if let Some(v) = a.http_port {
        cfg.validation.http_port = v;
    }
    if let Some(v) = a.tls_alpn_port {
        cfg.validation.tls_alpn_port = v;
    }
    if a.eab_required {
        cfg.eab.required = true;
    }
    cfg.check()?;
    Ok(cfg)
}

fn data_dir(d: Option<PathBuf>) -> PathBuf {
    d.unwrap_or_else(|| Config::default().data_dir)
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(a)) => serve(a).await,
        Some(Command::Eab(cmd)) => eab(cmd),
    }
}

async fn serve(a: ServeArgs) -> Result<(), String> {
    let cfg = load_config(&a)?;
    let listen = cfg.listen;
    // Bind before printing, so "listening" is never printed by a server that cannot listen.
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let app = server::init(cfg).map_err(|e| e.to_string())?;
    let info = server::start_info(&app);
    println!("iiot-acme CA listening on https://{listen}");
    println!("  directory:        {}", info.directory_url);
    println!("  root certificate: {}", info.root_path.display());
    println!("  root SHA-256:     {}", info.root_fingerprint);
    println!("  (give devices the root certificate or its SHA-256 fingerprint to pin)");
    server::serve_on(app, listener)
        .await
        .map_err(|e| e.to_string())
}

fn eab(cmd: EabCommand) -> Result<(), String> {
    match cmd {
        EabCommand::Create {
            data_dir: d,
            expires,
            single_use,
            json,
        } => {
            let store = EabStore::new(&data_dir(d));
            let c = store
                .create(expires, single_use)
                .map_err(|e| e.to_string())?;
            let exp = c.expires.map(ca_server::app::rfc3339);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"kid": c.kid, "hmac": c.hmac_key, "expires": exp, "singleUse": single_use})
                );
            } else {
                println!("EAB credential created");
                println!("  key id:     {}", c.kid);
                println!("  hmac key:   {}", c.hmac_key);
                println!("  expires:    {}", exp.as_deref().unwrap_or("never"));
                println!("  single use: {}", if single_use { "yes" } else { "no" });
            }
            Ok(())
        }
        EabCommand::List { data_dir: d } => {
            let store = EabStore::new(&data_dir(d));
            let list = store.list().map_err(|e| e.to_string())?;
            if list.is_empty() {
                println!("no EAB credentials");
            }
            for c in list {
                println!(
                    "{}  created {}  expires {}  {}{}",
                    c.kid,
                    ca_server::app::rfc3339(c.created),
                    c.expires
                        .map_or_else(|| "never".to_owned(), ca_server::app::rfc3339),
                    if c.single_use {
                        "single-use"
                    } else {
                        "multi-use"
                    },
                    if c.revoked { "  REVOKED" } else { "" }
                );
            }
            Ok(())
        }
        EabCommand::Revoke { data_dir: d, kid } => {
            let store = EabStore::new(&data_dir(d));
            if store.revoke(&kid).map_err(|e| e.to_string())? {
                println!("EAB credential {kid} revoked");
                Ok(())
            } else {
                Err(format!("no EAB credential with key id {kid:?}"))
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ca_server=info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
