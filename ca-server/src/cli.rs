//! The `ca-server` command line: run the CA (the default), or manage it from the CA host.
//! Commands that need the running CA's store go through its admin socket (`admin`); the
//! operator's records (EAB credentials, trust anchors, approval decisions, the audit log) are
//! edited directly: files in the data directory, or, for a CA on PostgreSQL, the records of the
//! store its configuration (`--config`) names.

mod backup;
mod offline_root;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Config;
use crate::ra::approval::{mark_duplicates, ApprovalQueue, Decision};
use crate::ra::audit::{Actor, AuditLog};
use crate::ra::eab::{AllowRule, EabStore, NewCredential};
use crate::ra::operator::OperatorStore;
use crate::server;
use crate::text::{escape, escape_lines};
use crate::types::parse_duration;
use crate::va::attest::anchors::TrustAnchorStore;
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
    /// Approve or reject devices waiting for operator approval.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// Revoke certificates by serial, device identifier or account (asks the running CA).
    Revoke {
        #[command(flatten)]
        target: AdminTarget,
        /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged, superseded,
        /// cessationOfOperation, privilegeWithdrawn, cACompromise, aACompromise.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Make devices renew now (RFC 9773 renewal window starts immediately), e.g. after a key
    /// incident; asks the running CA.
    RenewEarly {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Fleet report: expiring, stopped renewing, revoked, key-reuse attempts, key types; or,
    /// with --log, the audit log of operator changes.
    Audit {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Print the audit log (who changed what, when, from where) and check its hash chain,
        /// instead of the fleet report; works whether or not the CA runs.
        #[arg(long)]
        log: bool,
        /// With --log: the CA's configuration file; needed when the CA keeps its records in
        /// PostgreSQL.
        #[arg(long, short, requires = "log")]
        config: Option<PathBuf>,
    },
    /// Show or release which account holds an identity (asks the running CA).
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Manage the manufacturer trust anchors device attestations are verified against.
    #[command(subcommand)]
    TrustAnchor(TrustAnchorCommand),
    /// Build or query compromised-key blocklists (badkeys format).
    #[command(subcommand)]
    Blocklist(crate::key::blocklist::BlocklistCommand),
    /// Manage the operators of the console and their client certificates.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Write an encrypted backup of the CA (store, keys, configuration, every file of the data
    /// directory), consistent while it runs.
    Backup(backup::BackupArgs),
    /// Restore a backup into a new data directory.
    Restore(backup::RestoreArgs),
    /// Create a new CA whose root and issuing keys are generated in a PKCS #11 token
    /// (`--hsm`, with `issuance.root_key_uri` and `issuance.intermediate_key_uri`, and
    /// `issuance.rsa_intermediate_key_uri` for an RSA intermediate, in the configuration); only
    /// the certificates are written to the data directory.
    Init {
        /// Generate the keys in the token the configuration names. (Without a token the CA
        /// creates its key files itself on first start.)
        #[arg(long)]
        hsm: bool,
        /// The CA's configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Data directory of the CA (default: the configuration's `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// An offline root: create it and sign intermediates with it, on a machine that is not the
    /// CA host.
    #[command(subcommand)]
    Root(offline_root::RootCommand),
    /// Request and install an issuing intermediate signed by an offline root.
    #[command(subcommand)]
    Intermediate(offline_root::IntermediateCommand),
    /// Lab and test tools; each needs a `lab_*` setting in the running CA's configuration.
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Subcommand)]
enum LabCommand {
    /// Step the running CA's clock (needs `lab_clock = true`): +1h, -30m, 2d (forward without
    /// a sign).
    ClockStep {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The step: [+|-]DURATION, e.g. +1h, -90s, 2d.
        #[arg(allow_hyphen_values = true)]
        step: String,
    },
}

/// `+1h` → 3600, `-30m` → -1800, `2d` → 172800.
fn clock_step_seconds(step: &str) -> Result<i64, String> {
    let (sign, rest) = match step.trim().strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, step.trim().strip_prefix('+').unwrap_or(step.trim())),
    };
    let d = parse_duration(rest).map_err(|e| e.to_string())?;
    i64::try_from(d.as_secs())
        .map(|s| sign * s)
        .map_err(|_| format!("clock step {step:?} is too large"))
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Add an operator: issues a client certificate from the operator CA and writes
    /// DIR/NAME.key, DIR/NAME.pem and DIR/NAME.p12 (for browsers; its passphrase is printed).
    Add {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file (for `[admin] operator_validity`); needed when the CA
        /// keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// viewer (reads), approver (also approves and renews early) or admin (also revokes
        /// and manages credentials, trust anchors, identities and operators).
        #[arg(long)]
        role: String,
        /// Where to write the key, certificate and PKCS#12 file (created 0700 if missing).
        #[arg(long)]
        out: PathBuf,
        /// The PKCS#12 passphrase, from this file (default: a new one, printed).
        #[arg(long)]
        p12_passphrase_file: Option<PathBuf>,
        /// The operator's name: 1 to 64 of a-z, 0-9, '.', '_', '-'.
        name: String,
    },
    /// List operators.
    List {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke an operator: its certificate stops working with the next request.
    Revoke {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The operator's name.
        name: String,
    },
}

/// Which certificates an operator command acts on.
#[derive(Args)]
struct AdminTarget {
    /// Data directory of the CA.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// One certificate, by serial number (hex).
    #[arg(long)]
    serial: Option<String>,
    /// Every certificate for a device identifier: dns:NAME, ip:ADDR or permanent-identifier:SERIAL.
    #[arg(long)]
    identifier: Option<String>,
    /// Every certificate of an account (its id, the last part of its URL).
    // Ids are random base64url, so one in 64 starts with '-'.
    #[arg(long, allow_hyphen_values = true)]
    account: Option<String>,
}

impl AdminTarget {
    fn selector(&self) -> Result<serde_json::Value, String> {
        if self.serial.is_none() && self.identifier.is_none() && self.account.is_none() {
            return Err("say which certificates: --serial, --identifier or --account".into());
        }
        Ok(
            serde_json::json!({"serial": self.serial, "identifier": self.identifier,
            "account": self.account}),
        )
    }
}

/// Sends one request to the running CA and turns a problem document into an error message.
fn admin_call(
    data_dir: Option<PathBuf>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let (status, v) = crate::admin::socket::call(&self::data_dir(data_dir), method, path, body)
        .map_err(|e| e.to_string())?;
    if status >= 400 {
        return Err(v["detail"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_owned));
    }
    Ok(v)
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Which account holds an identity: dns:NAME, ip:ADDR, permanent-identifier:SERIAL or
    /// uri:APPLICATION-URI.
    Show {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The identity.
        identity: String,
    },
    /// Release an identity from the account holding it, so another account may be certified
    /// for it (an ApplicationUri, or an identifier a shared enrollment credential
    /// pre-authorizes). The holder's certificates stay valid: revoke them if they must go.
    Release {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The identity.
        identity: String,
    },
}

#[derive(Subcommand)]
enum ApprovalCommand {
    /// List devices waiting for approval, with their pairing codes; requests that name the
    /// same identifier as another are marked ALSO REQUESTED (`also_requested` in JSON).
    List {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request: check first that the pairing code matches the device's display.
    Approve {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The request id from `approval list`.
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Reject a request.
    Reject {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The request id from `approval list`.
        #[arg(allow_hyphen_values = true)]
        id: String,
        /// Why; shown to the device.
        #[arg(long)]
        reason: Option<String>,
    },
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
    /// Offer operator-approval-01: devices wait until `ca-server approval approve`.
    #[arg(long)]
    operator_approval: bool,
    /// Log format on stderr: text, or json (one JSON object a line, for log collectors).
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

/// How the server writes its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line (tracing-subscriber's json formatter), event fields at the top.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

#[derive(Subcommand)]
enum EabCommand {
    /// Create a credential and print its key id and HMAC key.
    Create {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file: allow rules are checked against the names it serves
        /// as (without it, against those of the HTTPS certificate it last served).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How long the credential stays usable, e.g. 30d (default: no expiry). Expiry ends
        /// both the binding of new accounts and the pre-authorization of `--allow` rules.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<std::time::Duration>,
        /// The credential binds one account only (same as --max-uses 1).
        #[arg(long, conflicts_with = "max_uses")]
        single_use: bool,
        /// How many device accounts the credential may bind (default: unlimited).
        #[arg(long)]
        max_uses: Option<u32>,
        /// Pre-authorize identifiers for accounts bound with this credential; repeatable:
        /// serial:SN-0042 (exact permanent-identifier), dns:plant.example (name and subdomains),
        /// ip:10.20.0.0/16 (prefix). Other identifiers are then refused.
        #[arg(long = "allow", value_parser = AllowRule::parse)]
        allow: Vec<AllowRule>,
        /// Modbus/TCP Security role (e.g. "operator") written into certificates of the
        /// `modbus` profile for accounts bound with this credential.
        #[arg(long)]
        role: Option<String>,
        /// Print JSON {"kid", "hmac", "expires"} for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List credentials.
    List {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke a credential so it can no longer bind accounts.
    Revoke {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The key id.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

#[derive(Subcommand)]
enum TrustAnchorCommand {
    /// Trust a manufacturer's IDevID CA certificate (PEM or DER) for device-attest-01.
    Add {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Name of the anchor (default: from its SHA-256 fingerprint).
        #[arg(long)]
        name: Option<String>,
        /// Required. The OID the manufacturer qualifies its serial numbers with (e.g. an arc
        /// under its IANA Private Enterprise Number): its devices order `SERIAL/OID`.
        #[arg(long, value_name = "OID")]
        assigner: Option<String>,
        /// An RFC 4108 hardware type (hwType OID) whose IDevIDs this anchor accepts
        /// (repeatable). IDevIDs whose hardwareModuleName names another type are refused.
        #[arg(long = "hw-type", value_name = "OID")]
        hw_types: Vec<String>,
        /// The certificate's SHA-256 fingerprint as the manufacturer published it, out of band
        /// (`AB:CD:…`, 32 hex pairs): the file is refused unless it matches.
        #[arg(long, value_name = "FINGERPRINT")]
        sha256: Option<String>,
        /// The CA certificate file (PEM or DER). Adding an anchor's certificate again under its
        /// name replaces its assigner and hardware types.
        file: PathBuf,
    },
    /// List the trust anchors.
    List {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Stop trusting a manufacturer's CA: its devices no longer enroll by attestation.
    /// Certificates already issued stay valid; revoke them separately.
    Remove {
        /// Data directory of the CA.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The CA's configuration file; needed when the CA keeps its records in PostgreSQL.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Name of the anchor, as `trust-anchor list` shows it.
        #[arg(long)]
        name: String,
    },
}

fn load_config(a: &ServeArgs) -> Result<Config, String> {
    let mut cfg = match &a.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
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
    if a.operator_approval {
        cfg.enrollment.operator_approval = true;
    }
    cfg.check().map_err(|e| e.to_string())?;
    Ok(cfg)
}

/// A command's message as the library's error, for a callback of the library.
fn ca_server_error(message: String) -> crate::Error {
    crate::Error::Internal(message)
}

fn approval(cmd: ApprovalCommand) -> Result<(), String> {
    match cmd {
        ApprovalCommand::List {
            data_dir: d,
            config,
            json,
        } => {
            let queue = Records::for_reading(d, config.as_deref())?.approvals();
            let pending = queue.list_pending().map_err(|e| e.to_string())?;
            let listed = mark_duplicates(pending);
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&listed).map_err(|e| e.to_string())?
                );
                return Ok(());
            }
            if listed.is_empty() {
                println!("no devices waiting for approval");
            }
            for l in listed {
                let p = &l.request;
                println!(
                    "{}  {}  pairing code {}  from {}  account {}  account key {}  expires {}",
                    escape(&p.id),
                    escape(&p.identifier.to_string()),
                    escape(&p.pairing_code),
                    escape(p.source.as_deref().unwrap_or("unknown")),
                    escape(&p.account_id),
                    escape(&p.thumbprint),
                    crate::types::rfc3339(p.expires)
                );
                // At most one request for an identifier comes from the device the operator
                // sees; say so next to each of them.
                for o in &l.also_requested {
                    println!(
                        "    ALSO REQUESTED by request {} from {}, account {}: approve at most \
                         one, the one whose code the device shows",
                        escape(&o.id),
                        escape(o.source.as_deref().unwrap_or("unknown")),
                        escape(&o.account_id)
                    );
                }
            }
            Ok(())
        }
        ApprovalCommand::Approve {
            data_dir: d,
            config,
            id,
        } => {
            let records = Records::for_writing(d, config.as_deref())?;
            // In the audit log before it is made: a decision that cannot be recorded is not.
            let p = records
                .approvals()
                .decide_recorded(&id, &Decision::Approve, |p| {
                    records
                        .record(
                            "approval.approve",
                            &p.id,
                            serde_json::json!({"identifier": p.identifier.to_string(),
                                "pairingCode": p.pairing_code, "source": p.source}),
                        )
                        .map_err(ca_server_error)
                })
                .map_err(|e| e.to_string())?;
            println!(
                "approved {} ({}, pairing code {})",
                escape(&p.id),
                escape(&p.identifier.to_string()),
                escape(&p.pairing_code)
            );
            Ok(())
        }
        ApprovalCommand::Reject {
            data_dir: d,
            config,
            id,
            reason,
        } => {
            let records = Records::for_writing(d, config.as_deref())?;
            let p = records
                .approvals()
                .decide_recorded(
                    &id,
                    &Decision::Reject {
                        reason: reason.clone(),
                    },
                    |p| {
                        records
                            .record(
                                "approval.reject",
                                &p.id,
                                serde_json::json!({"identifier": p.identifier.to_string(),
                                    "pairingCode": p.pairing_code, "source": p.source,
                                    "reason": reason}),
                            )
                            .map_err(ca_server_error)
                    },
                )
                .map_err(|e| e.to_string())?;
            println!(
                "rejected {} ({})",
                escape(&p.id),
                escape(&p.identifier.to_string())
            );
            Ok(())
        }
    }
}

fn print_audit(v: &serde_json::Value) {
    let c = &v["certificates"];
    println!(
        "certificates: {} total, {} valid, {} expired, {} revoked",
        c["total"], c["valid"], c["expired"], c["revoked"]
    );
    let list = |title: &str, key: &str, fmt: &dyn Fn(&serde_json::Value) -> String| {
        let items = v[key].as_array().cloned().unwrap_or_default();
        println!("{title}: {}", items.len());
        for i in items {
            println!("  {}", escape(&fmt(&i)));
        }
    };
    list("expiring within 24 h", "expiringWithin24h", &|i| {
        format!(
            "{}  {}  until {}",
            i["serial"].as_str().unwrap_or_default(),
            i["identifiers"],
            i["notAfter"].as_str().unwrap_or_default()
        )
    });
    list("devices that stopped renewing", "stoppedRenewing", &|i| {
        format!(
            "{}  expired {}",
            i["identifiers"].as_str().unwrap_or_default(),
            i["expired"].as_str().unwrap_or_default()
        )
    });
    list("revoked", "revoked", &|i| {
        format!(
            "{}  {}  reason {}",
            i["serial"].as_str().unwrap_or_default(),
            i["identifiers"],
            i["reason"]
        )
    });
    // Both identities: who asked for the key, and who holds it.
    list("refused key reuse", "keyReuseAttempts", &|i| {
        format!(
            "{}  {}  {}  key {}  held by {}",
            crate::types::rfc3339(i["at"].as_i64().unwrap_or_default()),
            i["kind"].as_str().unwrap_or_default(),
            describe_holder(&i["attempted"]),
            i["spkiSha256"].as_str().unwrap_or_default(),
            describe_holder(&i["holder"])
        )
    });
    list(
        "refused weak keys and CSR signatures",
        "weakKeyAttempts",
        &|i| {
            format!(
                "{}  {}  account {} order {}  {}  key {} {}  {}: {}",
                crate::types::rfc3339(i["at"].as_i64().unwrap_or_default()),
                i["kind"].as_str().unwrap_or_default(),
                i["accountId"].as_str().unwrap_or_default(),
                i["orderId"].as_str().unwrap_or_default(),
                i["identifiers"],
                i["keyType"].as_str().unwrap_or("?"),
                i["spkiSha256"].as_str().unwrap_or("-"),
                i["problem"].as_str().unwrap_or_default(),
                i["detail"].as_str().unwrap_or_default()
            )
        },
    );
    println!(
        "key types in use (valid certificates): {}",
        escape(&v["keyTypes"].to_string())
    );
    println!(
        "profiles in use (valid certificates): {}",
        escape(&v["profiles"].to_string())
    );
}

/// One side of a key-reuse attempt: `account A order O ["dns:x"] certificate S`, leaving out
/// what is unknown (an account key has no identifiers, order or certificate).
fn describe_holder(h: &serde_json::Value) -> String {
    let mut text = format!("account {}", h["accountId"].as_str().unwrap_or("?"));
    if let Some(order) = h["orderId"].as_str() {
        text.push_str(&format!(" order {order}"));
    }
    match h["identifiers"].as_array() {
        Some(ids) if !ids.is_empty() => {
            let ids: Vec<String> = ids
                .iter()
                .map(|i| {
                    format!(
                        "{}:{}",
                        i["type"].as_str().unwrap_or_default(),
                        i["value"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            text.push_str(&format!(" {}", ids.join(",")));
        }
        _ => text.push_str(" (account key)"),
    }
    if let Some(serial) = h["serial"].as_str() {
        text.push_str(&format!(" certificate {serial}"));
    }
    text
}

fn describe_uses(max: Option<u32>) -> String {
    max.map_or_else(|| "unlimited".to_owned(), |m| m.to_string())
}

fn describe_allow(rules: &[String]) -> String {
    if rules.is_empty() {
        "(none: identifiers are proven by challenges)".to_owned()
    } else {
        rules.join(", ")
    }
}

/// Refuses to change the operator's files of `dir` as any user but the one owning it (the CA's
/// user): files another user makes there (root, through sudo) are private to that user, so
/// the CA could not read them and the console would fail on every request.
fn as_data_owner(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(dir) else {
        // Not there yet: whoever makes it owns it.
        return Ok(());
    };
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, and this command runs as uid {me}: run it as the CA's user \
             (e.g. sudo -u <that user> ca-server …), so the CA can read what it writes",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

fn data_dir(d: Option<PathBuf>) -> PathBuf {
    d.unwrap_or_else(|| Config::default().data_dir)
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(a)) => serve(a).await,
        Some(Command::Eab(cmd)) => eab(cmd),
        Some(Command::Approval(cmd)) => approval(cmd),
        Some(Command::Revoke { target, reason }) => {
            let mut body = target.selector()?;
            body["reason"] = serde_json::json!(
                crate::admin::fleet::reason_code(&reason).map_err(|e| e.to_string())?
            );
            let v = admin_call(target.data_dir, "POST", "/revoke", Some(&body))?;
            let serials = v["revoked"].as_array().cloned().unwrap_or_default();
            println!("revoked {} certificate(s)", serials.len());
            for s in serials {
                println!("  {}", escape(s.as_str().unwrap_or_default()));
            }
            Ok(())
        }
        Some(Command::RenewEarly { target }) => {
            let body = target.selector()?;
            let v = admin_call(target.data_dir, "POST", "/renew-early", Some(&body))?;
            let serials = v["renewNow"].as_array().cloned().unwrap_or_default();
            println!(
                "{} certificate(s) are due for renewal now (devices see it in renewalInfo)",
                serials.len()
            );
            Ok(())
        }
        Some(Command::Audit {
            data_dir,
            json,
            log: true,
            config,
        }) => audit_log(
            &Records::for_reading(data_dir, config.as_deref())?.audit,
            json,
        ),
        Some(Command::Audit { data_dir, json, .. }) => {
            let v = admin_call(data_dir, "GET", "/audit", None)?;
            if json {
                println!("{v}");
            } else {
                print_audit(&v);
            }
            Ok(())
        }
        Some(Command::Identity(cmd)) => identity(cmd),
        Some(Command::TrustAnchor(cmd)) => trust_anchor(cmd),
        Some(Command::Blocklist(cmd)) => cmd.run().map_err(|e| e.to_string()),
        Some(Command::Operator(cmd)) => operator(cmd),
        Some(Command::Backup(a)) => backup::backup(a).await,
        Some(Command::Restore(a)) => backup::restore(a).await,
        Some(Command::Init {
            hsm,
            config,
            data_dir,
        }) => init(hsm, &config, data_dir),
        Some(Command::Root(cmd)) => offline_root::root(cmd),
        Some(Command::Intermediate(cmd)) => offline_root::intermediate(cmd),
        Some(Command::Lab(LabCommand::ClockStep { data_dir, step })) => {
            let body = serde_json::json!({ "seconds": clock_step_seconds(&step)? });
            let v = admin_call(data_dir, "POST", "/lab/clock-step", Some(&body))?;
            println!(
                "lab clock: {} (offset {} s from the system clock)",
                escape(v["now"].as_str().unwrap_or_default()),
                v["offset_seconds"]
            );
            Ok(())
        }
    }
}

/// `ca-server init --hsm`: a new CA with its keys in a token.
fn init(hsm: bool, config: &Path, data_dir: Option<PathBuf>) -> Result<(), String> {
    if !hsm {
        return Err(
            "init only creates a CA with its keys in a PKCS #11 token (--hsm); a CA \
                    with key files creates them itself on first start"
                .to_owned(),
        );
    }
    let cfg = Config::from_file(config).map_err(|e| e.to_string())?;
    let dir = data_dir.unwrap_or_else(|| cfg.data_dir.clone());
    as_data_owner(&dir)?;
    let records = Records::open(&dir, Some(&cfg))?;
    let ca_dir = dir.join("ca");
    let fingerprint = crate::ca::CertificateAuthority::init_in_token(&ca_dir, &cfg.issuance)
        .map_err(|e| match e {
            crate::Error::Internal(m) => m,
            other => other.to_string(),
        })?;
    records.record(
        "ca.init",
        "hsm",
        serde_json::json!({"rootSha256": fingerprint}),
    )?;
    println!("CA created; its root and issuing keys are in the token");
    println!(
        "  root:         {}",
        escape(&ca_dir.join("root.pem").display().to_string())
    );
    println!("  root SHA-256: {fingerprint}");
    Ok(())
}

fn audit_log(log: &AuditLog, json: bool) -> Result<(), String> {
    let (entries, chain) = log.read_checked().map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::json!({"chain": chain.as_ref().err(), "entries": entries})
        );
    } else {
        if entries.is_empty() {
            println!("the audit log is empty");
        }
        for e in &entries {
            let detail = if e.detail.is_null() {
                String::new()
            } else {
                format!("  {}", e.detail)
            };
            println!(
                "{:>6}  {}  {}  from {}  {}  {}{}",
                e.seq,
                e.at,
                escape(&e.actor),
                escape(&e.from),
                escape(&e.action),
                escape(&e.target),
                escape(&detail)
            );
        }
    }
    match chain {
        Ok(()) => {
            if !json {
                println!("hash chain intact ({} entries)", entries.len());
            }
            Ok(())
        }
        Err(why) => Err(format!(
            "the audit log has been altered: {why} (crate::ra::audit explains the chain)"
        )),
    }
}

fn operator(cmd: OperatorCommand) -> Result<(), String> {
    use crate::ra::operator::Role;
    match cmd {
        OperatorCommand::Add {
            data_dir: d,
            config,
            role,
            out,
            p12_passphrase_file,
            name,
        } => {
            let cfg = config
                .as_deref()
                .map(Config::from_file)
                .transpose()
                .map_err(|e| e.to_string())?;
            let validity = cfg.as_ref().map_or_else(
                || crate::config::AdminConfig::default().operator_validity,
                |c| c.admin.operator_validity,
            );
            let dir = d.unwrap_or_else(|| cfg.clone().unwrap_or_default().data_dir);
            as_data_owner(&dir)?;
            let records = Records::open(&dir, cfg.as_ref())?;
            let role = Role::parse(&role).map_err(|e| e.to_string())?;
            let passphrase = match &p12_passphrase_file {
                Some(f) => {
                    let text = std::fs::read_to_string(f)
                        .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                    let p = text.trim_end_matches(['\r', '\n']).to_owned();
                    if p.is_empty() {
                        return Err(format!("{}: the passphrase is empty", f.display()));
                    }
                    Some(p)
                }
                None => None,
            };
            crate::ra::operator::check_name(&name).map_err(|e| e.to_string())?;
            crate::fsutil::ensure_private_dir(&out).map_err(|e| e.to_string())?;
            let by = Actor::local_user().name;
            let (op, credential) = crate::ra::operator::create(
                &records.operators()?,
                &dir,
                &name,
                role,
                validity,
                &by,
            )
            .map_err(|e| e.to_string())?;
            let generated = passphrase.is_none();
            let passphrase = match passphrase {
                Some(p) => p,
                None => crate::ra::operator::new_passphrase().map_err(|e| e.to_string())?,
            };
            let ca = crate::ca::operator::OperatorCa::load(&dir.join("ca"))
                .map_err(|e| e.to_string())?;
            let p12 = credential
                .pkcs12(&ca, &name, &passphrase)
                .map_err(|e| e.to_string())?;
            let write = |file: String, data: &[u8], mode: u32| {
                crate::fsutil::write_atomic(&out.join(file), data, mode).map_err(|e| e.to_string())
            };
            write(
                format!("{name}.key"),
                credential.key_pem().as_bytes(),
                0o600,
            )?;
            write(
                format!("{name}.pem"),
                credential.cert_pem().as_bytes(),
                0o644,
            )?;
            write(format!("{name}.p12"), &p12, 0o600)?;
            records.record(
                "operator.add",
                &op.name,
                serde_json::json!({"role": op.role, "serial": op.serial, "sha256": op.sha256}),
            )?;
            println!("operator {} added with role {}", op.name, op.role);
            println!(
                "  certificate: {}",
                out.join(format!("{name}.pem")).display()
            );
            println!(
                "  key:         {}",
                out.join(format!("{name}.key")).display()
            );
            println!(
                "  PKCS#12:     {}",
                out.join(format!("{name}.p12")).display()
            );
            if generated {
                println!("  PKCS#12 passphrase: {passphrase}");
            }
            println!("  valid until: {}", crate::types::rfc3339(op.not_after));
            println!("  SHA-256:     {}", op.sha256);
            println!("  (import the .p12 into the operator's browser, then open the console)");
            Ok(())
        }
        OperatorCommand::List {
            data_dir: d,
            config,
        } => {
            let list = Records::for_reading(d, config.as_deref())?
                .operators()?
                .list()
                .map_err(|e| e.to_string())?;
            if list.is_empty() {
                println!("no operators: add one with `ca-server operator add NAME --role admin --out DIR`");
            }
            let at = crate::types::now();
            for op in list {
                let state = match &op.revoked {
                    Some(r) => format!(
                        "REVOKED {} by {}",
                        crate::types::rfc3339(r.at),
                        escape(&r.by)
                    ),
                    None if !op.active(at) => "EXPIRED".to_owned(),
                    None => "active".to_owned(),
                };
                println!(
                    "{}  {}  {}  until {}  added by {}",
                    op.name,
                    op.role,
                    state,
                    crate::types::rfc3339(op.not_after),
                    escape(&op.created_by)
                );
            }
            Ok(())
        }
        OperatorCommand::Revoke {
            data_dir: d,
            config,
            name,
        } => {
            let records = Records::for_writing(d, config.as_deref())?;
            let by = Actor::local_user().name;
            match records
                .operators()?
                .revoke(&name, &by)
                .map_err(|e| e.to_string())?
            {
                Some(op) => {
                    records.record("operator.revoke", &op.name, serde_json::Value::Null)?;
                    println!("operator {} revoked", op.name);
                    Ok(())
                }
                None => Err(format!("no operator named {name:?}")),
            }
        }
    }
}

async fn serve(a: ServeArgs) -> Result<(), String> {
    let cfg = load_config(&a)?;
    let listen = cfg.listen;
    // Bind before printing, so "listening" is never printed by a server that cannot listen.
    let listener = server::bind(listen, "the ACME server").map_err(|e| e.to_string())?;
    let console = server::bind_console(&cfg).map_err(|e| e.to_string())?;
    let metrics = server::metrics::bind(&cfg.metrics).map_err(|e| e.to_string())?;
    let app = server::init(cfg).map_err(|e| e.to_string())?;
    if app.cfg.enrollment.device_attestation {
        // Logs each trust anchor the verifier will skip, with the reason and the fix, so
        // an operator sees it at start and not only when a device is refused.
        if let Err(e) = app.anchors.load() {
            tracing::warn!(error = %e, "trust anchors cannot be read");
        }
    }
    let info = server::start_info(&app);
    println!("iiot-acme CA listening on https://{listen}");
    println!("  directory:        {}", info.directory_url);
    println!("  root certificate: {}", info.root_path.display());
    println!("  root SHA-256:     {}", info.root_fingerprint);
    println!("  (give devices the root certificate or its SHA-256 fingerprint to pin)");
    if let Some(addr) = console.as_ref().and_then(|c| c.local_addr().ok()) {
        println!("  operator console: https://{addr}/ (client certificate from `ca-server operator add`)");
    }
    if let Some(listener) = metrics {
        if let Ok(addr) = listener.local_addr() {
            println!("  metrics:          http://{addr}/metrics (/health, /ready)");
        }
        server::metrics::spawn(&app, listener);
    }
    server::serve_with_console(app, listener, console)
        .await
        .map_err(|e| e.to_string())
}

fn identity(cmd: IdentityCommand) -> Result<(), String> {
    // The admin call, the field naming the holding in its answer, and what to print with it.
    let (data_dir, identity, path, field, held, free) = match cmd {
        IdentityCommand::Show { data_dir, identity } => (
            data_dir,
            identity,
            "/identity/show",
            "holder",
            "held by",
            "held by no account",
        ),
        IdentityCommand::Release { data_dir, identity } => (
            data_dir,
            identity,
            "/identity/release",
            "released",
            "released from",
            "held by no account; nothing to release",
        ),
    };
    let v = admin_call(
        data_dir,
        "POST",
        path,
        Some(&serde_json::json!({ "identity": identity })),
    )?;
    let key = escape(v["identity"].as_str().unwrap_or_default());
    let h = &v[field];
    if h.is_null() {
        println!("{key}: {free}");
    } else {
        let newest = h["serial"]
            .as_str()
            .map(|s| format!(", newest certificate {s}"))
            .unwrap_or_default();
        println!(
            "{key}: {held} account {}{newest}",
            escape(h["accountId"].as_str().unwrap_or("?"))
        );
    }
    Ok(())
}

/// What the commands edit for the CA in a data directory: its enrollment credentials, operator
/// approvals, trust anchors and audit log, which are files there, or records of the PostgreSQL store its
/// configuration names.
struct Records {
    dir: PathBuf,
    /// The shared store; `None`: the files in `dir`.
    shared: Option<crate::storage::Db>,
    /// The audit log the command records what it did in.
    audit: AuditLog,
}

impl Records {
    /// The records of the CA in `dir` with the configuration `cfg`. Refuses to go on with files
    /// beside a CA that keeps its records in PostgreSQL (`storage::SHARED_MARKER`) when its
    /// configuration is not given: they would be ignored. Opened before the command changes
    /// anything, so a refusal leaves nothing half done.
    fn open(dir: &Path, cfg: Option<&Config>) -> Result<Self, String> {
        match cfg {
            Some(cfg) if cfg.storage.backend == crate::storage::Backend::Postgres => {
                // The schema is the CA's to migrate: a command refuses a database it has not.
                let pg = cfg
                    .storage
                    .postgres()?
                    .ok_or("storage.backend = \"postgres\" needs storage.url")?;
                let store = crate::storage::PgStore::open_migrated(&pg, cfg.storage.durability)
                    .map_err(|e| e.to_string())?;
                let db = crate::storage::Db::new(std::sync::Arc::new(store));
                Ok(Self {
                    dir: dir.to_path_buf(),
                    audit: AuditLog::in_store(dir, db.clone()).map_err(|e| e.to_string())?,
                    shared: Some(db),
                })
            }
            _ if dir.join(crate::storage::SHARED_MARKER).exists() => Err(format!(
                "the CA in {} keeps its records (enrollment credentials, operator approvals, \
                 trust anchors, console operators, the audit log) in PostgreSQL \
                 (storage.backend = \"postgres\"): pass its configuration file with --config",
                dir.display()
            )),
            _ => Ok(Self {
                dir: dir.to_path_buf(),
                shared: None,
                audit: AuditLog::file(dir),
            }),
        }
    }

    /// The records of the CA that `--data-dir` names (default: the one `--config` names, or
    /// the default data directory), for a command that only reads them.
    fn for_reading(data_dir: Option<PathBuf>, config: Option<&Path>) -> Result<Self, String> {
        let cfg = read_config(config)?;
        let dir = data_dir.unwrap_or_else(|| cfg.clone().unwrap_or_default().data_dir);
        Self::open(&dir, cfg.as_ref())
    }

    /// As [`Records::for_reading`], for a command that changes them, run as the owner of the
    /// data directory.
    fn for_writing(data_dir: Option<PathBuf>, config: Option<&Path>) -> Result<Self, String> {
        let cfg = read_config(config)?;
        let dir = data_dir.unwrap_or_else(|| cfg.clone().unwrap_or_default().data_dir);
        as_data_owner(&dir)?;
        Self::open(&dir, cfg.as_ref())
    }

    fn eab(&self) -> Result<EabStore, String> {
        match &self.shared {
            Some(db) => EabStore::in_store(&self.dir, db.clone()).map_err(|e| e.to_string()),
            None => Ok(EabStore::new(&self.dir)),
        }
    }

    fn approvals(&self) -> ApprovalQueue {
        match &self.shared {
            Some(db) => ApprovalQueue::in_store(&self.dir, db.clone()),
            None => ApprovalQueue::new(&self.dir),
        }
    }

    fn anchors(&self) -> Result<TrustAnchorStore, String> {
        match &self.shared {
            Some(db) => {
                TrustAnchorStore::in_store(&self.dir, db.clone()).map_err(|e| e.to_string())
            }
            None => Ok(TrustAnchorStore::new(&self.dir)),
        }
    }

    fn operators(&self) -> Result<OperatorStore, String> {
        match &self.shared {
            Some(db) => OperatorStore::in_store(&self.dir, db.clone()).map_err(|e| e.to_string()),
            None => Ok(OperatorStore::new(&self.dir)),
        }
    }

    /// Appends what the command line did to the audit log.
    fn record(&self, action: &str, target: &str, detail: serde_json::Value) -> Result<(), String> {
        self.audit
            .append(&Actor::local_user(), action, target, detail)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn read_config(path: Option<&Path>) -> Result<Option<Config>, String> {
    path.map(Config::from_file)
        .transpose()
        .map_err(|e| e.to_string())
}

fn eab(cmd: EabCommand) -> Result<(), String> {
    match cmd {
        EabCommand::Create {
            data_dir: d,
            config,
            expires,
            single_use,
            max_uses,
            allow,
            role,
            json,
        } => {
            let cfg = config
                .as_deref()
                .map(Config::from_file)
                .transpose()
                .map_err(|e| e.to_string())?;
            let dir = d.unwrap_or_else(|| cfg.clone().unwrap_or_default().data_dir);
            as_data_owner(&dir)?;
            // An allow rule must not cover a name the CA serves as (SPEC §6.6).
            let own = match &cfg {
                Some(cfg) => Some(crate::va::policy::OwnNames::of(cfg)),
                None => crate::va::policy::OwnNames::of_server_certificate(&dir)
                    .map_err(|e| e.to_string())?,
            };
            if let Some(own) = &own {
                crate::ra::eab::check_rules(&allow, own).map_err(|e| match e {
                    crate::Error::Malformed(m) => m,
                    other => other.to_string(),
                })?;
            }
            let records = Records::open(&dir, cfg.as_ref())?;
            let c = records
                .eab()?
                .create(&NewCredential {
                    expires_in: expires,
                    max_uses: if single_use { Some(1) } else { max_uses },
                    allow,
                    role,
                })
                .map_err(|e| e.to_string())?;
            let exp = c.expires.map(crate::types::rfc3339);
            let allow: Vec<String> = c.allow.iter().map(ToString::to_string).collect();
            records.record(
                "credential.create",
                &c.kid,
                serde_json::json!({"expires": exp, "maxUses": c.max_uses, "allow": allow,
                    "role": c.role}),
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"kid": c.kid, "hmac": c.hmac_key, "expires": exp,
                        "maxUses": c.max_uses, "allow": allow, "role": c.role})
                );
            } else {
                println!("EAB credential created");
                println!("  key id:     {}", escape(&c.kid));
                println!("  hmac key:   {}", c.hmac_key);
                println!("  expires:    {}", exp.as_deref().unwrap_or("never"));
                println!("  max uses:   {}", describe_uses(c.max_uses));
                println!("  allow:      {}", escape(&describe_allow(&allow)));
                if let Some(role) = &c.role {
                    println!("  role:       {}", escape(role));
                }
            }
            Ok(())
        }
        EabCommand::List {
            data_dir: d,
            config,
        } => {
            let list = Records::for_reading(d, config.as_deref())?
                .eab()?
                .list()
                .map_err(|e| e.to_string())?;
            if list.is_empty() {
                println!("no EAB credentials");
            }
            for c in list {
                let allow: Vec<String> = c.allow.iter().map(ToString::to_string).collect();
                println!(
                    "{}  created {}  expires {}  max uses {}  allow {}{}",
                    escape(&c.kid),
                    crate::types::rfc3339(c.created),
                    c.expires
                        .map_or_else(|| "never".to_owned(), crate::types::rfc3339),
                    describe_uses(c.max_uses),
                    escape(&describe_allow(&allow)),
                    if c.revoked { "  REVOKED" } else { "" }
                );
            }
            Ok(())
        }
        EabCommand::Revoke {
            data_dir: d,
            config,
            kid,
        } => {
            let records = Records::for_writing(d, config.as_deref())?;
            if records.eab()?.revoke(&kid).map_err(|e| e.to_string())? {
                records.record("credential.revoke", &kid, serde_json::Value::Null)?;
                println!("EAB credential {} revoked", escape(&kid));
                Ok(())
            } else {
                Err(format!("no EAB credential with key id {kid:?}"))
            }
        }
    }
}

fn trust_anchor(cmd: TrustAnchorCommand) -> Result<(), String> {
    match cmd {
        TrustAnchorCommand::Add {
            data_dir: d,
            config,
            name,
            assigner,
            hw_types,
            sha256,
            file,
        } => {
            let assigner = assigner.ok_or(
                "--assigner OID is required: a serial number is unique only per manufacturer, \
                 so each trust anchor names the OID its manufacturer qualifies serials with \
                 (e.g. an arc under its IANA Private Enterprise Number, 1.3.6.1.4.1.N), and its \
                 devices order SERIAL/OID",
            )?;
            let input =
                std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            if let Some(published) = sha256 {
                crate::va::attest::anchors::check_published_fingerprint(
                    &input,
                    &published,
                    "with --sha256",
                )
                .map_err(|e| format!("{}: {e}", file.display()))?;
            }
            let hw_types: Vec<&str> = hw_types.iter().map(String::as_str).collect();
            let records = Records::for_writing(d, config.as_deref())?;
            let added = records
                .anchors()?
                .add(&input, name.as_deref(), &assigner, &hw_types)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            let anchor = &added.anchor;
            records.record(
                "trust-anchor.add",
                &anchor.name,
                serde_json::json!({"sha256": anchor.fingerprint(), "subject": anchor.subject(),
                    "assigner": anchor.assigner, "replaced": added.replaced}),
            )?;
            let path = added.path.as_ref().map_or_else(
                || "in the shared store".to_owned(),
                |p| p.display().to_string(),
            );
            let shown = escape(&path);
            if added.replaced {
                println!("trust anchor replaced: {shown}");
            } else {
                println!("trust anchor added: {shown}");
            }
            println!("  name:     {}", escape(&anchor.name));
            println!("  subject:  {}", escape(&anchor.subject()));
            println!("  SHA-256:  {}", anchor.fingerprint());
            println!("  expires:  {}", crate::types::rfc3339(anchor.not_after()));
            println!(
                "  assigner: {} (devices order SERIAL/{})",
                anchor.assigner, anchor.assigner
            );
            println!(
                "  hw types: {}{}",
                anchor.describe_hw_types(),
                if anchor.hw_types.is_empty() {
                    " (IDevIDs that name a hardware type are refused)"
                } else {
                    ""
                }
            );
            println!("  (compare the SHA-256 with the one the manufacturer publishes)");
            Ok(())
        }
        TrustAnchorCommand::Remove {
            data_dir: d,
            config,
            name,
        } => {
            let records = Records::for_writing(d, config.as_deref())?;
            if !records
                .anchors()?
                .remove(&name)
                .map_err(|e| e.to_string())?
            {
                return Err(format!("no trust anchor named {name:?}"));
            }
            records.record("trust-anchor.remove", &name, serde_json::Value::Null)?;
            println!("trust anchor removed: {}", escape(&name));
            Ok(())
        }
        TrustAnchorCommand::List {
            data_dir: d,
            config,
        } => {
            let list = Records::for_reading(d, config.as_deref())?
                .anchors()?
                .list()
                .map_err(|e| e.to_string())?;
            if list.is_empty() {
                println!("no trust anchors: device attestations cannot succeed");
            }
            for (name, loaded) in list {
                match loaded {
                    Ok(a) => println!(
                        "{}  {}  SHA-256 {}  expires {}  assigner {}  hw types {}",
                        escape(&name),
                        escape(&a.subject()),
                        a.fingerprint(),
                        crate::types::rfc3339(a.not_after()),
                        a.assigner,
                        a.describe_hw_types()
                    ),
                    Err(why) => {
                        println!("{}  UNUSABLE: {}", escape(&name), escape(&why.to_string()))
                    }
                }
            }
            Ok(())
        }
    }
}

/// Parses the command line, runs the command and turns its error into a message on stderr and
/// a failure exit status.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Some(Command::Serve(a)) => a.log_format,
        _ => cli.serve.log_format,
    };
    init_logging(log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", escape_lines(&e));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default: the server's info).
fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // pkcs11_key: the CA's keys in a token (a PIN file others can read).
                .unwrap_or_else(|_| "ca_server=info,pkcs11_key=info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        // When stderr cannot be written (its disk is full), tracing-subscriber would report
        // that with `eprintln!` to the same stderr, which panics, and the panic ends whatever
        // request task was logging: the client sees its connection closed instead of an
        // answer. A log line that cannot be written is dropped instead.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // Event fields at the top level (`"message"`, `"serial"`, …), no colour codes.
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn lab_clock_steps_take_a_sign_and_a_duration() {
        assert_eq!(clock_step_seconds("+1h"), Ok(3600));
        assert_eq!(clock_step_seconds("-30m"), Ok(-1800));
        assert_eq!(clock_step_seconds("2d"), Ok(172_800));
        assert!(clock_step_seconds("-").is_err());
        assert!(clock_step_seconds("+1y").is_err());
        let cli = Cli::try_parse_from(["ca-server", "lab", "clock-step", "-1h"]).expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Lab(LabCommand::ClockStep { step, .. })) if step == "-1h"
        ));
    }

    /// Request, account and credential ids are random base64url: one in 64 starts with '-',
    /// and an operator must still be able to type it.
    #[test]
    fn ids_starting_with_a_hyphen_are_values_not_flags() {
        for args in [
            &["ca-server", "approval", "approve", "-x9Yz"][..],
            &[
                "ca-server",
                "approval",
                "reject",
                "-x9Yz",
                "--reason",
                "not ours",
            ],
            &["ca-server", "revoke", "--account", "-x9Yz"],
            &["ca-server", "eab", "revoke", "-x9Yz"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let id = match cli.command {
                Some(Command::Approval(
                    ApprovalCommand::Approve { id, .. } | ApprovalCommand::Reject { id, .. },
                )) => Some(id),
                Some(Command::Revoke { target, .. }) => target.account,
                Some(Command::Eab(EabCommand::Revoke { kid, .. })) => Some(kid),
                _ => None,
            };
            assert_eq!(id.as_deref(), Some("-x9Yz"), "{args:?}");
        }
    }
}
