//! `ca-server root create|sign` (on the offline root's machine) and `ca-server intermediate
//! request|install` (on the CA host): a CA whose root key never touches the CA host
//! (`ca::offline` has the checks; docs/operating.md "An offline root" the procedure).

use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};

use crate::ca::offline;
use crate::ca::{CaKeyType, IssuerKind};
use crate::config::Config;
use crate::text::escape;
use crate::types::rfc3339;

#[derive(Subcommand)]
pub(super) enum RootCommand {
    /// On the offline machine: create a root key and certificate (DIR/root.key, DIR/root.pem)
    /// with the profile of a root the CA makes on first start.
    Create {
        /// Directory for root.key and root.pem (created 0700 if missing); existing files are
        /// never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// The root's key type.
        #[arg(long, value_enum, default_value_t = KeyType::P384)]
        key_type: KeyType,
    },
    /// On the offline machine: certify an issuing intermediate's key from its request
    /// (`ca-server intermediate request`).
    Sign {
        /// Directory with root.key and root.pem.
        #[arg(long)]
        root: PathBuf,
        /// The PKCS#10 request (PEM or DER).
        #[arg(long)]
        csr: PathBuf,
        /// Where to write the intermediate certificate (PEM); an existing file is not
        /// overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days (default 1826, five years); never past the root's notAfter.
        #[arg(long)]
        days: Option<u32>,
    },
}

#[derive(Subcommand)]
pub(super) enum IntermediateCommand {
    /// On the CA host: generate an issuing key (kept in the CA directory, or in the token
    /// `issuance.intermediate_key_uri` or, for `--kind rsa`, `issuance.rsa_intermediate_key_uri`
    /// names; unused until it is installed) and print a request for it, to be signed with
    /// `ca-server root sign`.
    Request {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file (issuance.intermediate_key, rsa_intermediate_key,
        /// intermediate_key_uri, rsa_intermediate_key_uri).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Which intermediate: ec (for every profile) or rsa (profiles with issuer = "rsa").
        #[arg(long, value_enum, default_value_t = Kind::Ec)]
        kind: Kind,
        /// Write the request here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// On the CA host: install the certificate `ca-server root sign` issued, with the root
    /// certificate; restart the CA to use it.
    Install {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the issuing key is in a token
        /// (issuance.intermediate_key_uri, rsa_intermediate_key_uri) or the CA keeps its
        /// records (the audit log) in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The intermediate certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// The root certificate (root.pem from the offline machine).
        #[arg(long)]
        root: PathBuf,
    },
}

/// A root key type on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum KeyType {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
}

/// An intermediate on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Kind {
    /// The EC issuing intermediate.
    Ec,
    /// The RSA issuing intermediate.
    Rsa,
}

/// The message of a CA error: these are the operator's mistakes, not internal errors.
fn message(e: crate::Error) -> String {
    match e {
        crate::Error::Internal(m) => m,
        other => other.to_string(),
    }
}

fn shown(path: &Path) -> String {
    escape(&path.display().to_string()).into_owned()
}

pub(super) fn root(cmd: RootCommand) -> Result<(), String> {
    match cmd {
        RootCommand::Create { out, key_type } => {
            let key_type = match key_type {
                KeyType::P256 => CaKeyType::P256,
                KeyType::P384 => CaKeyType::P384,
            };
            let root = offline::create_root(&out, key_type).map_err(message)?;
            println!("root created");
            println!("  certificate: {}", shown(&root.cert_path));
            println!("  key:         {} (keep it offline)", shown(&root.key_path));
            println!("  subject:     {}", escape(&root.subject));
            println!("  valid until: {}", rfc3339(root.not_after));
            println!("  SHA-256:     {}", root.fingerprint);
            Ok(())
        }
        RootCommand::Sign {
            root,
            csr,
            out,
            days,
        } => {
            if out.try_exists().unwrap_or(true) {
                return Err(format!(
                    "{} exists or cannot be checked; refusing to overwrite it",
                    out.display()
                ));
            }
            let request =
                std::fs::read(&csr).map_err(|e| format!("cannot read {}: {e}", csr.display()))?;
            let cert = offline::sign_intermediate(&root, &request, days)
                .map_err(|e| format!("{}: {}", csr.display(), message(e)))?;
            crate::fsutil::write_atomic(&out, cert.pem.as_bytes(), 0o644).map_err(message)?;
            println!("intermediate certificate written: {}", shown(&out));
            println!("  subject:     {}", escape(&cert.subject));
            println!("  key:         {}", cert.key);
            println!("  valid from:  {}", rfc3339(cert.not_before));
            println!("  valid until: {}", rfc3339(cert.not_after));
            println!("  SHA-256:     {}", cert.fingerprint);
            Ok(())
        }
    }
}

pub(super) fn intermediate(cmd: IntermediateCommand) -> Result<(), String> {
    match cmd {
        IntermediateCommand::Request {
            data_dir,
            config,
            kind,
            out,
        } => {
            let cfg = match &config {
                Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
                None => Config::default(),
            };
            let dir = data_dir.unwrap_or_else(|| cfg.data_dir.clone());
            super::as_data_owner(&dir)?;
            let kind = match kind {
                Kind::Ec => IssuerKind::Ec,
                Kind::Rsa => IssuerKind::Rsa,
            };
            let request = offline::request_intermediate(&dir.join("ca"), kind, &cfg.issuance)
                .map_err(message)?;
            let verb = if request.reused {
                "reused"
            } else {
                "generated"
            };
            // The request goes to stdout unless --out; what happened goes to stderr, so
            // `ca-server intermediate request > ec.csr` writes the request alone.
            eprintln!(
                "{kind} issuing key {verb}: {} (unused until `ca-server intermediate install`)",
                escape(&request.key.to_string())
            );
            match out {
                Some(out) => {
                    crate::fsutil::write_atomic(&out, request.csr_pem.as_bytes(), 0o644)
                        .map_err(message)?;
                    eprintln!("request written: {}", shown(&out));
                }
                None => print!("{}", request.csr_pem),
            }
            eprintln!("sign it on the root's machine: ca-server root sign --root DIR --csr FILE --out FILE");
            Ok(())
        }
        IntermediateCommand::Install {
            data_dir,
            config,
            cert,
            root,
        } => {
            let issuance = match &config {
                Some(p) => Config::from_file(p).map_err(|e| e.to_string())?.issuance,
                None => Config::default().issuance,
            };
            let records = super::Records::for_writing(data_dir, config.as_deref())?;
            let dir = records.dir.clone();
            let installed = offline::install_intermediate(&dir.join("ca"), &cert, &root, &issuance)
                .map_err(message)?;
            records.record(
                "ca.intermediate.install",
                &installed.kind.to_string(),
                serde_json::json!({"sha256": installed.fingerprint,
                    "rootSha256": installed.root_fingerprint,
                    "rootInstalled": installed.root_installed}),
            )?;
            println!(
                "{} intermediate installed: {}",
                installed.kind,
                shown(&installed.cert_path)
            );
            println!("  SHA-256:      {}", installed.fingerprint);
            println!("  valid until:  {}", rfc3339(installed.not_after));
            println!(
                "  root SHA-256: {}{}",
                installed.root_fingerprint,
                if installed.root_installed {
                    " (root.pem installed)"
                } else {
                    ""
                }
            );
            println!("  (restart the CA to use it)");
            Ok(())
        }
    }
}
