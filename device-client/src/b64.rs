//! Allocating wrappers around protocol-spec's strict base64url (SPEC §3.7), so the device
//! client decodes exactly as the server and the embedded client do.

use protocol_spec::base64url::{self, DecodeError};

/// Unpadded base64url of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = vec![0u8; base64url::encoded_len(bytes.len())];
    // The buffer has exactly the encoded length, so this cannot fail.
    base64url::encode(bytes, &mut out)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Strictly decodes unpadded base64url.
pub(crate) fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let len = base64url::decoded_len(text.len()).ok_or(DecodeError::Length)?;
    let mut out = vec![0u8; len];
    let n = base64url::decode(text, &mut out)?.len();
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode(&bytes)).expect("decodes"), bytes);
        }
        assert_eq!(decode("Zg="), Err(DecodeError::Padding { index: 2 }));
        assert_eq!(decode("A"), Err(DecodeError::Length));
    }
}
