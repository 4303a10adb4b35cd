//! A simulated device manufacturer: its IDevID CA (IEEE 802.1AR) and devices that answer
//! device-attest-01 (SPEC §5.10) with an attestation object over their IDevID key.

use ca_server::va::attest::object::{COSE_ES256, COSE_ES384, FORMAT};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SignatureAlgorithm, SigningKey,
};

use super::{tlv, TestServer};

/// The assigner of most test manufacturers: the RFC 5612 documentation enterprise number.
pub const PEN: &str = "1.3.6.1.4.1.32473";
/// A second manufacturer's assigner, under the X.660 example arc.
pub const OTHER_PEN: &str = "2.999.2";
/// The hwType of `device_with_hardware_module_name`: 1.3.6.1.4.1.32473.1.
pub const HW_TYPE: &str = "1.3.6.1.4.1.32473.1";

/// A manufacturer's IDevID CA: a root, optionally with an issuing intermediate.
pub struct Manufacturer {
    pub root_der: Vec<u8>,
    pub root_pem: String,
    pub issuer: Issuer<'static, KeyPair>,
    /// The intermediate's DER, if devices are issued by one.
    pub intermediate: Option<Vec<u8>>,
}

pub fn ca_params(cn: &str, years: (i32, i32)) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Example Devices Test");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    p.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    p.use_authority_key_identifier_extension = true;
    p
}

impl Manufacturer {
    /// The P-256 "Example IDevID Root", trusted by `s` as "example" with the assigner [`PEN`].
    pub fn example(s: &TestServer) -> Self {
        let maker = Self::new("Example IDevID Root", &rcgen::PKCS_ECDSA_P256_SHA256);
        maker.add_to(s, "example", PEN);
        maker
    }

    /// A root issuing IDevIDs directly.
    pub fn new(cn: &str, alg: &'static SignatureAlgorithm) -> Self {
        let key = KeyPair::generate_for(alg).expect("key");
        let params = ca_params(cn, (2020, 9999));
        let root = params.self_signed(&key).expect("root");
        Self {
            root_der: root.der().to_vec(),
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
            intermediate: None,
        }
    }

    /// A root and an intermediate that issues the IDevIDs.
    pub fn with_intermediate(cn: &str, alg: &'static SignatureAlgorithm) -> Self {
        let root_key = KeyPair::generate_for(alg).expect("key");
        let root_params = ca_params(cn, (2020, 9999));
        let root = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, root_key);
        let key = KeyPair::generate_for(alg).expect("key");
        let params = ca_params(&format!("{cn} Issuing"), (2020, 9999));
        let intermediate = params.signed_by(&key, &root_issuer).expect("intermediate");
        Self {
            root_der: root.der().to_vec(),
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
            intermediate: Some(intermediate.der().to_vec()),
        }
    }

    /// An IDevID with the serial in the subject serialNumber attribute (IEEE 802.1AR,
    /// RFC 8995 §2.3.1), valid until 99991231235959Z.
    pub fn device(&self, serial: &str, alg: &'static SignatureAlgorithm) -> Device {
        self.device_with(alg, |p| {
            p.distinguished_name.push(
                DnType::CustomDnType(vec![2, 5, 4, 5]),
                DnValue::PrintableString(serial.try_into().expect("printable serial")),
            );
        })
    }

    /// An IDevID whose serial is only in a hardwareModuleName otherName (RFC 4108 §5) of
    /// hwType [`HW_TYPE`].
    pub fn device_with_hardware_module_name(
        &self,
        serial: &str,
        alg: &'static SignatureAlgorithm,
    ) -> Device {
        self.device_with(alg, |p| {
            p.custom_extensions = vec![hardware_module_name(1, serial)];
        })
    }

    pub fn device_with(
        &self,
        alg: &'static SignatureAlgorithm,
        f: impl FnOnce(&mut CertificateParams),
    ) -> Device {
        let key = KeyPair::generate_for(alg).expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Example Devices Test");
        p.distinguished_name.push(DnType::CommonName, "PLC IDevID");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        // 802.1AR: an IDevID that never expires carries 99991231235959Z.
        p.not_after = rcgen::date_time_ymd(9999, 12, 31)
            .replace_time(time::Time::from_hms(23, 59, 59).expect("time"));
        p.use_authority_key_identifier_extension = true;
        f(&mut p);
        let cert = p.signed_by(&key, &self.issuer).expect("IDevID");
        let mut chain = vec![cert.der().to_vec()];
        chain.extend(self.intermediate.clone());
        Device { key, chain }
    }

    /// Trusts the root under `name` with `assigner`, accepting no hardware types.
    pub fn add_to(&self, s: &TestServer, name: &str, assigner: &str) {
        self.add_with_hw_types(s, name, assigner, &[]);
    }

    /// Trusts the root under `name` with `assigner` and the hardware types `hw_types`; adding
    /// it again under the same name replaces them.
    pub fn add_with_hw_types(&self, s: &TestServer, name: &str, assigner: &str, hw_types: &[&str]) {
        s.app
            .anchors
            .add(self.root_pem.as_bytes(), Some(name), assigner, hw_types)
            .expect("trust anchor added");
    }
}

/// A subjectAltName extension holding one otherName hardwareModuleName (RFC 4108 §5) with
/// hwType 1.3.6.1.4.1.32473.`last_arc` and hwSerialNum `serial`.
pub fn hardware_module_name(last_arc: u8, serial: &str) -> CustomExtension {
    let hw_type = tlv(0x06, &[0x2b, 6, 1, 4, 1, 0x81, 0xfd, 0x59, last_arc]);
    let module = tlv(0x30, &[hw_type, tlv(0x04, serial.as_bytes())].concat());
    let other_name = tlv(
        0xa0,
        &[tlv(0x06, &[0x2b, 6, 1, 5, 5, 7, 8, 4]), tlv(0xa0, &module)].concat(),
    );
    CustomExtension::from_oid_content(&[2, 5, 29, 17], tlv(0x30, &other_name))
}

/// A device: its IDevID key and chain (IDevID first).
pub struct Device {
    pub key: KeyPair,
    pub chain: Vec<Vec<u8>>,
}

impl Device {
    /// The attestation object for `key_authorization` (SPEC §5.10.2).
    pub fn attest(&self, key_authorization: &str) -> Vec<u8> {
        self.attest_as(FORMAT, key_authorization)
    }

    pub fn attest_as(&self, fmt: &str, key_authorization: &str) -> Vec<u8> {
        let alg = if *self.key.algorithm() == rcgen::PKCS_ECDSA_P384_SHA384 {
            COSE_ES384
        } else {
            COSE_ES256
        };
        // rcgen signs ECDSA as an ASN.1 DER Ecdsa-Sig-Value, the WebAuthn form.
        let sig = self.key.sign(key_authorization.as_bytes()).expect("sign");
        let x5c: Vec<&[u8]> = self.chain.iter().map(Vec::as_slice).collect();
        protocol_spec::runner::attestation_object(fmt, alg, &sig, &x5c)
    }
}
