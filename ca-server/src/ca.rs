//! Certificate authority hierarchy and issuance. (placeholder until the pki branch lands)
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::IssuanceConfig;
use crate::types::Identifier;
use crate::{Error, Result};

/// CA.
pub struct CertificateAuthority {
    root_path: PathBuf,
}
/// Issued.
pub struct IssuedCert {
    /// serial
    pub serial_hex: String,
    /// der
    pub der: Vec<u8>,
    /// chain
    pub chain_pem: String,
    /// nb
    pub not_before: i64,
    /// na
    pub not_after: i64,
}
impl CertificateAuthority {
    /// load
    pub fn load_or_init(dir: &Path, _cfg: &IssuanceConfig) -> Result<Self> {
        Ok(Self {
            root_path: dir.join("root.pem"),
        })
    }
    /// root
    pub fn root_pem(&self) -> &str {
        ""
    }
    /// root path
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }
    /// fp
    pub fn root_fingerprint(&self) -> String {
        String::new()
    }
    /// int
    pub fn intermediate_pem(&self) -> &str {
        ""
    }
    /// tls
    pub fn server_tls_identity(&self, _dir: &Path, _names: &[String]) -> Result<(String, String)> {
        Err(Error::Internal("placeholder".into()))
    }
    /// issue
    pub fn issue(&self, _spki: &[u8], _ids: &[Identifier], _v: Duration) -> Result<IssuedCert> {
        Err(Error::Internal("placeholder".into()))
    }
}
