//! The server's own HTTPS certificate, issued by the EC intermediate for the names in the
//! configuration, kept in the CA directory and reused until the names change or it ages.

use super::*;

impl CertificateAuthority {
    /// The CA server's own HTTPS certificate, issued by the EC intermediate for `names` (an IP
    /// literal, optionally in brackets, becomes an iPAddress SAN, anything else a dNSName),
    /// with EKU serverAuth, stored as `server.pem` (leaf + intermediate) and `server.key` in
    /// `dir`. The stored one is reused while its names equal `names` and more than a third of
    /// its lifetime remains; otherwise a new key and certificate (90 days) replace it.
    ///
    /// Returns (chain PEM, PKCS#8 key PEM).
    pub fn server_tls_identity(&self, dir: &Path, names: &[String]) -> Result<(String, String)> {
        self.server_tls_identity_with(dir, names, SERVER_CERT_VALIDITY)
    }

    /// `server_tls_identity` with the lifetime of a new certificate as a parameter (tests use
    /// a short one to exercise renewal).
    pub(super) fn server_tls_identity_with(
        &self,
        dir: &Path,
        names: &[String],
        validity: Duration,
    ) -> Result<TlsIdentity> {
        let parsed = names
            .iter()
            .map(|n| SanName::parse(n))
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = parsed.first() else {
            return Err(Error::Internal(
                "the server's HTTPS certificate needs at least one name".to_owned(),
            ));
        };
        let common_name = common_name(&first.text()).map(str::to_owned);
        let wanted: BTreeSet<SanName> = parsed.iter().cloned().collect();

        let cert_path = dir.join(SERVER_CERT);
        let key_path = dir.join(SERVER_KEY);
        match self.stored_server_identity(&cert_path, &key_path, &wanted) {
            Ok(identity) => return Ok(identity),
            Err(reason) => {
                tracing::info!(%reason, "issuing a new HTTPS certificate for the CA server");
            }
        }

        ensure_private_dir(dir)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Internal(format!("cannot generate the server key: {e}")))?;
        let issued = self.sign_leaf(
            &key,
            LeafProfile {
                common_name: common_name.as_deref(),
                organization: None,
                extensions: Vec::new(),
                subject_alt_names: wanted.iter().map(SanName::to_san).collect::<Result<_>>()?,
                san_der: None,
                key_usages: vec![KeyUsagePurpose::DigitalSignature],
                extended_key_usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
            },
            validity,
            // Clients of the CA's own API verify it with the EC chain, as they always have.
            IssuerKind::Ec,
        )?;
        let key_pem = key.serialize_pem();
        // Key first: a crash between the two writes leaves a key that does not match the old
        // certificate, which the next start detects and repairs.
        write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert_path, issued.chain_pem.as_bytes(), 0o644)?;
        Ok((issued.chain_pem, key_pem))
    }

    /// The stored server identity if it can be reused, else why not.
    pub(super) fn stored_server_identity(
        &self,
        cert_path: &Path,
        key_path: &Path,
        wanted: &BTreeSet<SanName>,
    ) -> std::result::Result<TlsIdentity, NotReusable> {
        let der = read_pem_cert(cert_path).map_err(|e| NotReusable(e.to_string()))?;
        let key = read_key(key_path).map_err(|e| NotReusable(e.to_string()))?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| NotReusable(format!("{} does not parse: {e}", cert_path.display())))?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(NotReusable(format!(
                "{} does not match the certificate",
                key_path.display()
            )));
        }
        let (_, intermediate) = X509Certificate::from_der(&self.ec.der)
            .map_err(|e| NotReusable(format!("the intermediate does not parse: {e}")))?;
        if cert.issuer().as_raw() != intermediate.subject().as_raw()
            || cert
                .verify_signature(Some(intermediate.public_key()))
                .is_err()
        {
            return Err(NotReusable(
                "it was issued by another intermediate".to_owned(),
            ));
        }
        let mut have = BTreeSet::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => {
                        have.insert(SanName::Dns(dns.to_ascii_lowercase()));
                    }
                    GeneralName::IPAddress(octets) => {
                        have.insert(SanName::Ip(
                            ip_from_octets(octets)
                                .ok_or_else(|| NotReusable("bad iPAddress".to_owned()))?,
                        ));
                    }
                    other => {
                        return Err(NotReusable(format!("it has an unexpected SAN {other:?}")))
                    }
                }
            }
        }
        if have != *wanted {
            return Err(NotReusable(
                "its names differ from the configured ones".to_owned(),
            ));
        }
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let now = crate::types::now();
        if now < not_before {
            return Err(NotReusable("it is not valid yet".to_owned()));
        }
        // Renew with a third of the lifetime left, as ACME clients commonly do, so a server
        // that restarts rarely still never serves an expired certificate.
        if (not_after - now).saturating_mul(3) <= not_after - not_before {
            return Err(NotReusable(
                "less than a third of its lifetime remains".to_owned(),
            ));
        }
        Ok((
            pem_encode("CERTIFICATE", &der) + &self.ec.pem,
            key.serialize_pem(),
        ))
    }
}

/// Why the stored HTTPS certificate of the CA server is not reused, and a new one is issued;
/// `Display` is the reason logged.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct NotReusable(String);

/// One name in the server certificate, in the form used to compare name sets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum SanName {
    Dns(String),
    Ip(IpAddr),
}

impl SanName {
    /// `"10.0.0.1"`, `"::1"` and `"[::1]"` are addresses, anything else a DNS name.
    fn parse(name: &str) -> Result<Self> {
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Internal(format!(
                "{name:?} is not a DNS name or IP address for the server certificate"
            )));
        }
        Ok(Self::Dns(name.to_ascii_lowercase()))
    }

    fn text(&self) -> String {
        match self {
            Self::Dns(name) => name.clone(),
            Self::Ip(ip) => ip.to_string(),
        }
    }

    fn to_san(&self) -> Result<SanType> {
        match self {
            Self::Dns(name) => Ia5String::try_from(name.as_str())
                .map(SanType::DnsName)
                .map_err(|e| Error::Internal(format!("server name {name:?}: {e}"))),
            Self::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        }
    }
}
