//! Compromised-key blocklists in the badkeys format, and the `ca-server blocklist` tool.
//!
//! # The format, as checked against badkeys' own description
//!
//! badkeys' `docs/BLOCKLISTFORMAT.md` (badkeys/badkeys on GitHub) defines *BKHASH*: take one
//! number from the public key, encode it big-endian "without leading zeros", hash it with
//! SHA-256 and keep the first 120 bits (15 bytes). The number is
//!
//! - RSA: the modulus N (so keys that differ only in e share an entry, on purpose);
//! - ECDSA: the x coordinate of the public point (so compressed and uncompressed encodings of
//!   one point share an entry);
//! - Ed25519 (and X25519, Ed448, X448): the raw public key bytes read as a big-endian
//!   integer, which again means the bytes with leading zero octets removed.
//!
//! `blocklist.dat` is a sequence of 16-byte records, each the 15-byte BKHASH followed by a
//! one-byte list id (which collection the key came from), sorted so it can be binary-searched.
//! badkeys' `blocklistmaker/createlists` produces it by a bytewise sort (`LC_ALL=C sort -u` of
//! the hex records) and keeps only the first record of a hash that appears twice; `build`
//! here does the same. The list ids are badkeys' (debianssl, keypair, firmware, …; see its
//! `badkeysdata.json`); [`LOCAL_LIST_ID`] marks keys an operator adds.
//!
//! What was verified: the hashing input for each key type and the record layout, against the
//! document above and badkeys' `checks.py` (which feeds N, x, or the raw Ed25519 bytes as an
//! integer to the same function). Not verified: the lookup against badkeys' published
//! `blocklist.dat` itself, which this workplace cannot download.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::der;
use crate::key::PublicKey;

/// Bytes per record.
pub const RECORD_LEN: usize = 16;
/// Bytes of truncated SHA-256 per record (BKHASH120).
pub const HASH_LEN: usize = 15;
/// The list id `ca-server blocklist build` gives keys by default. badkeys numbers its own
/// collections from 1 upwards; 255 stays clear of them.
pub const LOCAL_LIST_ID: u8 = 255;

/// SHA-256 truncated to 120 bits over a number given as big-endian bytes, after stripping
/// leading zero octets (badkeys' BKHASH120).
pub fn bkhash(number: &[u8]) -> [u8; HASH_LEN] {
    let start = number.iter().position(|&b| b != 0).unwrap_or(number.len());
    let digest = ring::digest::digest(&ring::digest::SHA256, &number[start..]);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&digest.as_ref()[..HASH_LEN]);
    out
}

/// The number badkeys hashes for a key this CA certifies (see the module docs).
pub fn key_number(key: &PublicKey) -> &[u8] {
    match key {
        PublicKey::Rsa { n, .. } => n,
        // Uncompressed SEC1: 0x04 ‖ x ‖ y with x and y of equal length.
        PublicKey::P256(point) | PublicKey::P384(point) => {
            let half = point.len().saturating_sub(1) / 2;
            point.get(1..1 + half).unwrap_or_default()
        }
        PublicKey::Ed25519(raw) => raw,
    }
}

/// Why a blocklist file, or a key file given to the `blocklist` tool, cannot be used;
/// `Display` is the message the operator reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BlocklistError(String);

/// Key containers are read with the DER toolkit; its messages name what was being read.
impl From<der::DerError> for BlocklistError {
    fn from(e: der::DerError) -> Self {
        Self(e.0)
    }
}

/// A loaded blocklist: sorted 16-byte records.
#[derive(Clone, Default)]
pub struct Blocklist {
    records: Vec<u8>,
}

impl Blocklist {
    /// Checks and wraps the contents of a blocklist file: whole records, sorted by hash.
    pub fn from_bytes(records: Vec<u8>) -> Result<Self, BlocklistError> {
        if records.len() % RECORD_LEN != 0 {
            return Err(BlocklistError(format!(
                "{} bytes is not a whole number of {RECORD_LEN}-byte records: not a badkeys \
                 blocklist.dat (an .xz download must be unpacked first)",
                records.len()
            )));
        }
        let list = Self { records };
        if let Some(i) = (1..list.len()).find(|&i| list.hash(i - 1) > list.hash(i)) {
            return Err(BlocklistError(format!(
                "records {} and {} are out of order: a blocklist must be sorted for binary \
                 search (rebuild it with `ca-server blocklist build`)",
                i - 1,
                i
            )));
        }
        Ok(list)
    }

    /// Reads and checks a blocklist file.
    pub fn load(path: &Path) -> Result<Self, BlocklistError> {
        let data = std::fs::read(path).map_err(|e| {
            BlocklistError(format!("cannot read blocklist {}: {e}", path.display()))
        })?;
        Self::from_bytes(data)
            .map_err(|e| BlocklistError(format!("blocklist {}: {e}", path.display())))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len() / RECORD_LEN
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn record(&self, i: usize) -> &[u8] {
        &self.records[i * RECORD_LEN..(i + 1) * RECORD_LEN]
    }

    fn hash(&self, i: usize) -> &[u8] {
        &self.record(i)[..HASH_LEN]
    }

    /// The list id of the record for `hash`, if present (binary search).
    pub fn lookup_hash(&self, hash: &[u8; HASH_LEN]) -> Option<u8> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.hash(mid).cmp(hash.as_slice()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.record(mid)[HASH_LEN]),
            }
        }
        None
    }

    /// The list id if `key` is on the list.
    pub fn lookup(&self, key: &PublicKey) -> Option<u8> {
        self.lookup_hash(&bkhash(key_number(key)))
    }
}

/// Sorts records bytewise and keeps one record per hash (the one with the lowest list id), as
/// badkeys' list maker does; returns the file contents.
pub fn build(mut records: Vec<[u8; RECORD_LEN]>) -> Vec<u8> {
    records.sort_unstable();
    records.dedup_by(|later, earlier| later[..HASH_LEN] == earlier[..HASH_LEN]);
    records.concat()
}

/// The `[keys] blocklist` setting: the path as configured and the list read from it. The file
/// is read while the configuration is parsed, so a missing or malformed file stops the server
/// at start with an error that names it, never at the first finalize.
#[derive(Clone)]
pub struct BlocklistFile {
    /// The configured path.
    pub path: PathBuf,
    /// Its contents.
    pub list: Arc<Blocklist>,
}

impl BlocklistFile {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, BlocklistError> {
        Ok(Self {
            path: path.to_path_buf(),
            list: Arc::new(Blocklist::load(path)?),
        })
    }
}

impl std::fmt::Debug for BlocklistFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} keys)", self.path.display(), self.list.len())
    }
}

/// Written as the configured path, which is what the configuration reads back.
impl Serialize for BlocklistFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.path.serialize(s)
    }
}

impl<'de> Deserialize<'de> for BlocklistFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = PathBuf::deserialize(d)?;
        Self::load(&path).map_err(serde::de::Error::custom)
    }
}

/// Object identifiers of the key algorithms the tool reads.
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
/// X25519, X448, Ed25519, Ed448 (RFC 8410): raw public key bytes.
const OIDS_RFC8410: [&str; 4] = ["1.3.101.110", "1.3.101.111", "1.3.101.112", "1.3.101.113"];
/// The same OIDs in DER (contents only), for PKCS#8, which is parsed by hand.
const DER_OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const DER_OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const DER_OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const DER_OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// The x coordinate of a SEC1 point, compressed (0x02/0x03 ‖ x) or uncompressed (0x04 ‖ x ‖ y).
fn ec_point_x(point: &[u8]) -> Result<&[u8], BlocklistError> {
    match point.split_first() {
        Some((0x02 | 0x03, x)) if !x.is_empty() => Ok(x),
        Some((0x04, xy)) if !xy.is_empty() && xy.len() % 2 == 0 => Ok(&xy[..xy.len() / 2]),
        _ => Err(BlocklistError(
            "EC public key is not a SEC1 point".to_owned(),
        )),
    }
}

/// N from a PKCS#1 RSAPublicKey or RSAPrivateKey (RFC 8017 §A.1.1, §A.1.2).
fn pkcs1_modulus(der_bytes: &[u8], private: bool) -> Result<Vec<u8>, BlocklistError> {
    let mut body = der::sequence(der_bytes, "PKCS#1 RSA key")?;
    if private {
        der::expect(&mut body, der::INTEGER, "RSAPrivateKey version")?;
    }
    Ok(der::expect(&mut body, der::INTEGER, "RSA modulus")?.to_vec())
}

/// The x coordinate from a SEC 1 ECPrivateKey (SEC 1 v2 §C.4), which must carry its public key.
fn sec1_x(der_bytes: &[u8]) -> Result<Vec<u8>, BlocklistError> {
    let mut body = der::sequence(der_bytes, "EC private key")?;
    der::expect(&mut body, der::INTEGER, "ECPrivateKey version")?;
    der::expect(&mut body, der::OCTET_STRING, "EC private key")?;
    while !body.is_empty() {
        let field = der::next(&mut body, "EC private key")?;
        if field.tag == 0xa1 {
            let mut inner = field.content;
            let bits = der::expect(&mut inner, der::BIT_STRING, "EC public key")?;
            let point = bits
                .get(1..)
                .ok_or_else(|| BlocklistError("empty EC public key".to_owned()))?;
            return Ok(ec_point_x(point)?.to_vec());
        }
    }
    Err(BlocklistError(
        "the EC private key does not include its public key; export the public key \
         (`openssl ec -in KEY -pubout`) and add that instead"
            .to_owned(),
    ))
}

/// The Ed25519 public key for a PKCS#8 private key (RFC 8410 §7): the optional public key
/// field if present, otherwise derived from the seed.
fn ed25519_public(
    private_key: &[u8],
    public_field: Option<&[u8]>,
) -> Result<Vec<u8>, BlocklistError> {
    if let Some(bits) = public_field {
        return Ok(bits.get(1..).unwrap_or_default().to_vec());
    }
    let mut inner = private_key;
    let seed = der::expect(&mut inner, der::OCTET_STRING, "Ed25519 private key")?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|e| BlocklistError(format!("Ed25519 private key: {e}")))?;
    Ok(ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec())
}

/// The number to hash from a PKCS#8 PrivateKeyInfo / OneAsymmetricKey (RFC 5958 §2).
fn pkcs8_number(der_bytes: &[u8]) -> Result<Vec<u8>, BlocklistError> {
    let mut body = der::sequence(der_bytes, "PKCS#8 private key")?;
    der::expect(&mut body, der::INTEGER, "PKCS#8 version")?;
    let mut alg = der::expect(&mut body, der::SEQUENCE, "PKCS#8 algorithm")?;
    let oid = der::expect(&mut alg, der::OID, "PKCS#8 algorithm")?;
    let private_key = der::expect(&mut body, der::OCTET_STRING, "PKCS#8 private key")?;
    let mut public_field = None;
    while !body.is_empty() {
        let field = der::next(&mut body, "PKCS#8 private key")?;
        // [1] IMPLICIT BIT STRING, primitive (0x81) as RFC 5958 encodes it.
        if field.tag == 0x81 {
            public_field = Some(field.content);
        }
    }
    match oid {
        DER_OID_RSA_ENCRYPTION | DER_OID_RSASSA_PSS => pkcs1_modulus(private_key, true),
        DER_OID_EC_PUBLIC_KEY => sec1_x(private_key),
        DER_OID_ED25519 => ed25519_public(private_key, public_field),
        _ => Err(BlocklistError(
            "PKCS#8 key of an unsupported algorithm (RSA, EC and Ed25519 are read)".to_owned(),
        )),
    }
}

/// The number to hash from a SubjectPublicKeyInfo.
fn spki_number(spki: &SubjectPublicKeyInfo<'_>) -> Result<Vec<u8>, BlocklistError> {
    let key: &[u8] = &spki.subject_public_key.data;
    let oid = spki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        OID_RSA_ENCRYPTION | OID_RSASSA_PSS => pkcs1_modulus(key, false),
        OID_EC_PUBLIC_KEY => Ok(ec_point_x(key)?.to_vec()),
        o if OIDS_RFC8410.contains(&o) => Ok(key.to_vec()),
        other => Err(BlocklistError(format!(
            "public key algorithm {other} is not supported"
        ))),
    }
}

/// The BKHASH of every key in a PEM text (public keys, private keys, certificates and CSRs),
/// with each block's label.
pub fn hashes_from_pem(text: &[u8]) -> Result<Vec<(String, [u8; HASH_LEN])>, BlocklistError> {
    let mut out = Vec::new();
    for (i, pem) in Pem::iter_from_buffer(text).enumerate() {
        let pem = pem.map_err(|e| BlocklistError(format!("PEM block {}: {e}", i + 1)))?;
        let der_bytes = pem.contents.as_slice();
        let number = match pem.label.as_str() {
            "CERTIFICATE" => {
                let (_, cert) = x509_parser::parse_x509_certificate(der_bytes)
                    .map_err(|e| BlocklistError(format!("certificate: {e}")))?;
                spki_number(cert.public_key())
            }
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {
                let (_, csr) = X509CertificationRequest::from_der(der_bytes)
                    .map_err(|e| BlocklistError(format!("CSR: {e}")))?;
                spki_number(&csr.certification_request_info.subject_pki)
            }
            "PUBLIC KEY" => {
                let (_, spki) = SubjectPublicKeyInfo::from_der(der_bytes)
                    .map_err(|e| BlocklistError(format!("public key: {e}")))?;
                spki_number(&spki)
            }
            "RSA PUBLIC KEY" => pkcs1_modulus(der_bytes, false),
            "RSA PRIVATE KEY" => pkcs1_modulus(der_bytes, true),
            "EC PRIVATE KEY" => sec1_x(der_bytes),
            "PRIVATE KEY" => pkcs8_number(der_bytes),
            "EC PARAMETERS" => continue,
            "ENCRYPTED PRIVATE KEY" => Err(BlocklistError(
                "the key is encrypted: decrypt it first".to_owned(),
            )),
            other => Err(BlocklistError(format!("unsupported PEM block {other:?}"))),
        }
        .map_err(|e| BlocklistError(format!("PEM block {} ({}): {e}", i + 1, pem.label)))?;
        out.push((pem.label.clone(), bkhash(&number)));
    }
    if out.is_empty() {
        return Err(BlocklistError(
            "no PEM key, certificate or CSR found".to_owned(),
        ));
    }
    Ok(out)
}

/// `ca-server blocklist …`: build and query badkeys-format blocklists.
#[derive(Debug, clap::Subcommand)]
pub enum BlocklistCommand {
    /// Write a blocklist (badkeys format) of the keys in PEM files: public or private keys
    /// (PKCS#1, PKCS#8, SEC 1), certificates or CSRs. Use it for keys found in firmware images
    /// or configuration backups; configure the result as `[keys] blocklist`.
    Build {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The list id stored with these keys (shown in refusals).
        #[arg(long, default_value_t = LOCAL_LIST_ID)]
        list_id: u8,
        /// Existing blocklist files to merge in, e.g. badkeys' blocklist.dat; repeatable.
        #[arg(long)]
        merge: Vec<PathBuf>,
        /// PEM files with the keys to block.
        #[arg(required = true)]
        keys: Vec<PathBuf>,
    },
    /// Report which keys in PEM files are on a blocklist; exits with an error if any is.
    Check {
        /// The blocklist file.
        #[arg(long)]
        blocklist: PathBuf,
        /// PEM files to check.
        #[arg(required = true)]
        keys: Vec<PathBuf>,
    },
}

impl BlocklistCommand {
    /// Runs the command, printing a summary.
    pub fn run(self) -> Result<(), BlocklistError> {
        match self {
            Self::Build {
                out,
                list_id,
                merge,
                keys,
            } => {
                let mut records = Vec::new();
                for path in &merge {
                    let list = Blocklist::load(path)?;
                    records.extend((0..list.len()).map(|i| {
                        let mut r = [0u8; RECORD_LEN];
                        r.copy_from_slice(list.record(i));
                        r
                    }));
                }
                let merged = records.len();
                for path in &keys {
                    for (_, hash) in read_pem_hashes(path)? {
                        let mut r = [0u8; RECORD_LEN];
                        r[..HASH_LEN].copy_from_slice(&hash);
                        r[HASH_LEN] = list_id;
                        records.push(r);
                    }
                }
                let added = records.len() - merged;
                let data = build(records);
                crate::fsutil::write_atomic(&out, &data, 0o644)
                    .map_err(|e| BlocklistError(e.to_string()))?;
                println!(
                    "wrote {} ({} keys: {added} from {} PEM files, {merged} merged, duplicates \
                     removed)",
                    out.display(),
                    data.len() / RECORD_LEN,
                    keys.len()
                );
                Ok(())
            }
            Self::Check { blocklist, keys } => {
                let list = Blocklist::load(&blocklist)?;
                let mut listed = 0;
                for path in &keys {
                    for (label, hash) in read_pem_hashes(path)? {
                        let verdict = match list.lookup_hash(&hash) {
                            Some(id) => {
                                listed += 1;
                                format!("BLOCKED (list {id})")
                            }
                            None => "not listed".to_owned(),
                        };
                        // Paths and PEM labels come from files that may be anyone's.
                        let line = format!("{}: {label}: {verdict}", path.display());
                        println!("{}", crate::text::escape(&line));
                    }
                }
                if listed > 0 {
                    return Err(BlocklistError(format!(
                        "{listed} key(s) are on the blocklist"
                    )));
                }
                Ok(())
            }
        }
    }
}

fn read_pem_hashes(path: &Path) -> Result<Vec<(String, [u8; HASH_LEN])>, BlocklistError> {
    let text = std::fs::read(path)
        .map_err(|e| BlocklistError(format!("cannot read {}: {e}", path.display())))?;
    hashes_from_pem(&text).map_err(|e| BlocklistError(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{openssl, openssl_rsa_key};

    fn record(hash: [u8; HASH_LEN], id: u8) -> [u8; RECORD_LEN] {
        let mut r = [0u8; RECORD_LEN];
        r[..HASH_LEN].copy_from_slice(&hash);
        r[HASH_LEN] = id;
        r
    }

    #[test]
    fn bkhash_ignores_leading_zero_octets() {
        assert_eq!(bkhash(&[0, 0, 1, 2]), bkhash(&[1, 2]));
        // SHA-256("abc") starts ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        // (FIPS 180-2 Appendix B.1).
        assert_eq!(
            hex::encode(bkhash(b"abc")),
            "ba7816bf8f01cfea414140de5dae22"
        );
    }

    #[test]
    fn build_sorts_dedups_and_lookup_finds() {
        let hashes: Vec<_> = (0u8..50).map(|i| bkhash(&[i + 1])).collect();
        let mut records: Vec<_> = hashes.iter().map(|h| record(*h, 7)).collect();
        records.push(record(hashes[3], 2)); // same key, another list: one record stays
        records.reverse();
        let data = build(records);
        assert_eq!(data.len(), 50 * RECORD_LEN);
        let list = Blocklist::from_bytes(data).expect("sorted");
        for (i, h) in hashes.iter().enumerate() {
            let want = if i == 3 { 2 } else { 7 };
            assert_eq!(list.lookup_hash(h), Some(want), "{i}");
        }
        assert_eq!(list.lookup_hash(&bkhash(b"other")), None);
        assert_eq!(Blocklist::default().lookup_hash(&hashes[0]), None);
    }

    #[test]
    fn malformed_files_are_refused_with_a_reason() {
        let err = Blocklist::from_bytes(vec![0; 17])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("16-byte records"), "{err}");
        let mut unsorted = record([9; HASH_LEN], 1).to_vec();
        unsorted.extend(record([1; HASH_LEN], 1));
        let err = Blocklist::from_bytes(unsorted)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("out of order"), "{err}");
        let err = Blocklist::load(Path::new("/nonexistent/bl.dat"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/bl.dat"), "{err}");
    }

    /// Every PEM form of one key gives the hash finalize computes from the CSR's key.
    #[test]
    fn pem_forms_agree_with_csr_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        openssl_rsa_key(d, "rsa.pem", 2048);
        openssl(
            d,
            &["rsa", "-in", "rsa.pem", "-traditional", "-out", "rsa1.pem"],
        );
        openssl(
            d,
            &["rsa", "-in", "rsa.pem", "-pubout", "-out", "rsapub.pem"],
        );
        openssl(
            d,
            &[
                "rsa",
                "-in",
                "rsa.pem",
                "-RSAPublicKey_out",
                "-out",
                "rsapub1.pem",
            ],
        );
        openssl(
            d,
            &[
                "req", "-new", "-x509", "-key", "rsa.pem", "-subj", "/CN=x", "-out", "rsa.crt",
            ],
        );
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-out",
                "ec.pem",
            ],
        );
        openssl(
            d,
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-out", "ec8.pem",
            ],
        );
        openssl(
            d,
            &[
                "ec",
                "-in",
                "ec.pem",
                "-pubout",
                "-conv_form",
                "compressed",
                "-out",
                "ecc.pem",
            ],
        );
        openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
        openssl(
            d,
            &["pkey", "-in", "ed.pem", "-pubout", "-out", "edpub.pem"],
        );
        for (key, forms) in [
            (
                "rsa.pem",
                &["rsa1.pem", "rsapub.pem", "rsapub1.pem", "rsa.crt"][..],
            ),
            ("ec8.pem", &["ec.pem", "ecc.pem"]),
            ("ed.pem", &["edpub.pem"]),
        ] {
            let csr = crate::testutil::openssl_csr(d, &["-key", key], &[]);
            let info = crate::ca::csr::parse_and_verify(&csr).expect("CSR");
            let want = bkhash(key_number(&info.public_key));
            for file in std::iter::once(&key).chain(forms) {
                let got = hashes_from_pem(&std::fs::read(d.join(file)).expect("read")).expect(file);
                assert_eq!(got.iter().map(|(_, h)| *h).collect::<Vec<_>>(), vec![want]);
            }
        }
    }

    #[test]
    fn ec_x_with_a_leading_zero_octet_is_hashed_without_it() {
        let mut point = vec![0x04, 0x00];
        point.extend([0xab; 31]);
        point.extend([0xcd; 32]);
        assert_eq!(
            bkhash(key_number(&PublicKey::P256(point))),
            bkhash(&[0xab; 31])
        );
    }

    #[test]
    fn unsupported_pem_is_an_error() {
        assert!(hashes_from_pem(b"nothing here").is_err());
        let enc =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = hashes_from_pem(enc)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("encrypted"), "{err}");
    }
}
