//! Certificate and IDevID keys in a PKCS #11 token, named by RFC 7512 URIs: the
//! [`pkcs11_key`] crate, which the CA shares, plus what ties it to this client (the
//! device-attest-01 [`crate::attest::Signer`], the crate's [`Error`]).

pub use pkcs11_key::*;

use crate::attest::AttestAlgorithm;

impl crate::attest::Signer for TokenKey {
    fn algorithm(&self) -> AttestAlgorithm {
        // The IDevID key comes from `TokenKey::open`, which refuses keys other than EC.
        match self.kind() {
            KeyKind::Ec(Curve::P384) => AttestAlgorithm::Es384,
            KeyKind::Ec(Curve::P256) | KeyKind::Rsa(_) => AttestAlgorithm::Es256,
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, crate::error::Error> {
        Ok(self.sign_der(msg)?)
    }
}
