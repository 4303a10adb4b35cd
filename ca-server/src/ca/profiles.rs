//! Certificate profiles (draft-ietf-acme-profiles; SPEC §8.3).
//!
//! A profile is a named certificate template. The directory lists the profiles in
//! `meta.profiles` (name → description), newOrder picks one with `profile`, and the order keeps
//! the name so finalize issues from the same template. An order without `profile` gets the
//! configured default profile, which out of the box is `default`: the SPEC §8.2 certificate
//! (serverAuth + clientAuth, CN = first identifier), so clients that know nothing of profiles
//! see no change.
//!
//! Profiles come from `[profiles.<name>]` tables in the config file. A table named after a
//! built-in profile changes only the fields it sets; any other name starts from `default`.
//! The built-ins are:
//!
//! - `default`: SPEC §8.2 as before.
//! - `tls-server`: EKU serverAuth only.
//! - `mqtt-client`: EKU clientAuth only, CN = the device identity (mosquitto's
//!   `use_identity_as_username` makes it the MQTT username, so it must be a validated
//!   identifier and nothing the device chose): the whole `serial/assigner` value of a
//!   permanent identifier, so two manufacturers' devices with the same serial are two clients.
//! - `opcua`: an OPC UA Application Instance Certificate (OPC 10000-6 §6.2.2): SAN URI = the
//!   ApplicationUri, taken from the CSR's URI SAN and checked against
//!   `application_uri_prefixes`; DNS/IP SANs from the order; keyUsage digitalSignature,
//!   nonRepudiation, keyEncipherment, dataEncipherment for RSA; EKU serverAuth + clientAuth.
//!   Subject O = `organization`, which the profile must set (see below).
//!   `issuer = "rsa"`: RSA keys are signed by the RSA intermediate with
//!   sha256WithRSAEncryption, as Basic256Sha256 wants for the certificate's signature; ECC
//!   keys by the EC intermediate. The chain is not RSA all the way up: the RSA intermediate
//!   itself is signed by the root, with the root's algorithm (ecdsa-with-SHA384 for the
//!   default P-384 root; SPEC §8.1).
//! - `modbus`: Modbus/TCP Security role extension (1.3.6.1.4.1.50316.802.1, UTF8String) with
//!   the role granted by the operator: the `role` of the account's EAB credential, else the
//!   profile's `role`. The CSR is never consulted for it.
//!
//! Why the ApplicationUri is the one name taken from the CSR: it names an application, not a
//! network endpoint, so no ACME challenge can prove it. The operator's prefix list is the proof
//! instead, and the built-in `opcua` profile has an empty list, so it refuses every URI until
//! the operator says which ones the plant uses.
//!
//! The subject organizationName of an `opcua` certificate: OPC 10000-6 §6.2.2 (paraphrased)
//! requires the O attribute, the organisation running the application. Only the operator
//! knows it, and the CA must start with no config file, so the built-in `opcua` profile has
//! none and, as with the prefixes, refuses to issue (`badCSR`, naming
//! `profiles.opcua.organization`) until the operator sets it. This holds for every profile
//! with `application_uri = true`.
//!
//! ECC keyUsage for `opcua`: OPC 10000-6 §6.2.2 lists digitalSignature, nonRepudiation,
//! keyEncipherment and dataEncipherment, which are RSA operations in part. The ECC security
//! policies (OPC 10000-7 ECC profiles) sign with the static key and agree keys with ephemeral
//! ECDH, so an ECC certificate gets digitalSignature + nonRepudiation. The ECC rows of the spec
//! table were not read here (STANDARDS.md §4 marks them not verified); an operator can override
//! `key_usage` for the profile if a stack wants more.

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::{CustomExtension, ExtendedKeyUsagePurpose, KeyUsagePurpose};
use serde::{Deserialize, Serialize};

use crate::ca::csr::CsrInfo;
use crate::ca::IssuerKind;
use crate::der;
use crate::key::PublicKey;
use crate::{Error, Result};

/// The Modbus/TCP Security role extension (MB-TCP-Security §8.3, R-21/R-22).
pub const OID_MODBUS_ROLE: &[u64] = &[1, 3, 6, 1, 4, 1, 50316, 802, 1];

/// The profile used when newOrder names none and the config does not choose another.
pub const DEFAULT_PROFILE: &str = "default";

/// `[profiles]`: `default = "<name>"` plus one table per profile.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ProfilesConfig {
    /// The profile used for orders without `profile`. Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// `[profiles.<name>]` tables.
    #[serde(flatten)]
    pub defined: BTreeMap<String, ProfileSpec>,
}

/// One `[profiles.<name>]` table. Unset fields come from the built-in profile of the same
/// name, or from `default`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Human-readable text for the directory's `meta.profiles`.
    pub description: Option<String>,
    /// Certificate lifetime ("12h", "30d"); default: `issuance.cert_validity`.
    pub validity: Option<String>,
    /// keyUsage for EC and Ed25519 keys.
    pub key_usage: Option<Vec<KeyUsage>>,
    /// keyUsage for RSA keys.
    pub rsa_key_usage: Option<Vec<KeyUsage>>,
    /// extendedKeyUsage.
    pub extended_key_usage: Option<Vec<Eku>>,
    /// Key types the profile certifies.
    pub key_types: Option<Vec<KeyType>>,
    /// Subject commonName: the device's permanent identifier or the first identifier, or none.
    pub common_name: Option<CommonName>,
    /// Subject organizationName (OPC 10000-6 §6.2.2: the organisation running the application).
    pub organization: Option<String>,
    /// Require exactly one URI SAN in the CSR (the OPC UA ApplicationUri) and copy it.
    pub application_uri: Option<bool>,
    /// Accepted ApplicationUri prefixes, e.g. `urn:plant.example:`. Empty refuses every URI.
    pub application_uri_prefixes: Option<Vec<String>>,
    /// Write the Modbus/TCP Security role extension.
    pub modbus_role: Option<bool>,
    /// The role for accounts whose EAB credential grants none.
    pub role: Option<String>,
    /// Extra extensions, copied as given.
    pub extensions: Option<Vec<ExtraExtension>>,
    /// Which intermediate signs RSA keys: `ec` (the EC intermediate signs everything) or `rsa`
    /// (the RSA intermediate signs RSA keys, sha256WithRSAEncryption; other keys stay on the
    /// EC intermediate).
    pub issuer: Option<IssuerKind>,
}

/// keyUsage bits (RFC 5280 §4.2.1.3), as written in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyUsage {
    /// digitalSignature
    DigitalSignature,
    /// nonRepudiation (contentCommitment)
    NonRepudiation,
    /// keyEncipherment
    KeyEncipherment,
    /// dataEncipherment
    DataEncipherment,
    /// keyAgreement
    KeyAgreement,
}

/// extendedKeyUsage purposes (RFC 5280 §4.2.1.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Eku {
    /// id-kp-serverAuth
    ServerAuth,
    /// id-kp-clientAuth
    ClientAuth,
}

/// Key types, matched against the CSR key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// RSA (size and exponent per SPEC §7.4).
    Rsa,
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// Ed25519.
    Ed25519,
}

/// Subject commonName rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommonName {
    /// SPEC §8.2: the value of the first permanent identifier (`serial["/"assigner]`), else
    /// the first identifier.
    FirstIdentifier,
    /// Empty subject (the SAN becomes critical).
    None,
}

/// An extension written into every certificate of a profile.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraExtension {
    /// Dotted OID.
    pub oid: String,
    /// Criticality.
    #[serde(default)]
    pub critical: bool,
    /// extnValue contents, hex DER.
    pub value_hex: String,
}

/// A checked profile, ready for issuance.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Name clients send in newOrder.
    pub name: String,
    /// Directory text.
    pub description: String,
    /// Certificate lifetime.
    pub validity: Duration,
    key_usage: Vec<KeyUsage>,
    rsa_key_usage: Vec<KeyUsage>,
    extended_key_usage: Vec<Eku>,
    key_types: Vec<KeyType>,
    common_name: CommonName,
    organization: Option<String>,
    application_uri: bool,
    application_uri_prefixes: Vec<String>,
    modbus_role: bool,
    role: Option<String>,
    extensions: Vec<(Vec<u64>, bool, Vec<u8>)>,
    issuer: IssuerKind,
}

/// What one certificate gets from its profile (and, for the ApplicationUri and the role, from
/// the CSR and the operator), in the form `CertificateAuthority::issue_leaf` takes.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// Lifetime.
    pub validity: Duration,
    /// Write a CN (SPEC §8.2 rule).
    pub common_name: bool,
    /// Subject O.
    pub organization: Option<String>,
    /// keyUsage.
    pub key_usages: Vec<KeyUsagePurpose>,
    /// extendedKeyUsage.
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    /// A URI SAN written after the order's names.
    pub uri: Option<String>,
    /// Further extensions.
    pub extensions: Vec<CustomExtension>,
    /// The intermediate that signs it.
    pub issuer: IssuerKind,
}

impl Leaf {
    /// SPEC §8.2 with no profile: what `CertificateAuthority::issue` has always done.
    pub fn spec_default(validity: Duration, rsa: bool) -> Self {
        let mut key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if rsa {
            key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        Self {
            validity,
            common_name: true,
            organization: None,
            key_usages,
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            uri: None,
            extensions: Vec::new(),
            issuer: IssuerKind::Ec,
        }
    }
}

/// All profiles of a running CA.
#[derive(Clone, Debug)]
pub struct Profiles {
    by_name: BTreeMap<String, Profile>,
    default: String,
}

fn builtin(name: &str) -> Option<ProfileSpec> {
    use Eku::{ClientAuth, ServerAuth};
    use KeyUsage::{DataEncipherment, DigitalSignature, KeyEncipherment, NonRepudiation};
    let all_keys = vec![KeyType::Rsa, KeyType::P256, KeyType::P384, KeyType::Ed25519];
    let base = ProfileSpec {
        description: None,
        validity: None,
        key_usage: Some(vec![DigitalSignature]),
        rsa_key_usage: Some(vec![DigitalSignature, KeyEncipherment]),
        extended_key_usage: Some(vec![ServerAuth, ClientAuth]),
        key_types: Some(all_keys),
        common_name: Some(CommonName::FirstIdentifier),
        organization: None,
        application_uri: Some(false),
        application_uri_prefixes: Some(Vec::new()),
        modbus_role: Some(false),
        role: None,
        extensions: Some(Vec::new()),
        issuer: Some(IssuerKind::Ec),
    };
    let spec = match name {
        DEFAULT_PROFILE => ProfileSpec {
            description: Some("TLS server and client (serverAuth + clientAuth), CN = first identifier".into()),
            ..base
        },
        "tls-server" => ProfileSpec {
            description: Some("TLS server (serverAuth), SANs = the order's names".into()),
            extended_key_usage: Some(vec![ServerAuth]),
            ..base
        },
        "mqtt-client" => ProfileSpec {
            description: Some(
                "MQTT device client (clientAuth), CN = the device identity (mosquitto use_identity_as_username)".into(),
            ),
            extended_key_usage: Some(vec![ClientAuth]),
            ..base
        },
        "opcua" => ProfileSpec {
            description: Some(
                "OPC UA application instance certificate (OPC 10000-6 §6.2.2): SAN URI = ApplicationUri from the CSR".into(),
            ),
            key_usage: Some(vec![DigitalSignature, NonRepudiation]),
            rsa_key_usage: Some(vec![
                DigitalSignature,
                NonRepudiation,
                KeyEncipherment,
                DataEncipherment,
            ]),
            key_types: Some(vec![KeyType::Rsa, KeyType::P256, KeyType::P384]),
            application_uri: Some(true),
            // Basic256Sha256 wants the certificate signed with sha256WithRSAEncryption, so RSA
            // keys go to the RSA intermediate. That intermediate is signed by the (P-384) root
            // with ecdsa-with-SHA384: the chain is RSA below the root only.
            issuer: Some(IssuerKind::Rsa),
            ..base
        },
        "modbus" => ProfileSpec {
            description: Some(
                "Modbus/TCP Security (clientAuth + serverAuth) with the operator-granted role extension".into(),
            ),
            modbus_role: Some(true),
            ..base
        },
        _ => return None,
    };
    Some(spec)
}

const BUILTIN_NAMES: [&str; 5] = [
    DEFAULT_PROFILE,
    "tls-server",
    "mqtt-client",
    "opcua",
    "modbus",
];

impl ProfileSpec {
    /// Fields set here win over `base`.
    fn over(self, base: Self) -> Self {
        Self {
            description: self.description.or(base.description),
            validity: self.validity.or(base.validity),
            key_usage: self.key_usage.or(base.key_usage),
            rsa_key_usage: self.rsa_key_usage.or(base.rsa_key_usage),
            extended_key_usage: self.extended_key_usage.or(base.extended_key_usage),
            key_types: self.key_types.or(base.key_types),
            common_name: self.common_name.or(base.common_name),
            organization: self.organization.or(base.organization),
            application_uri: self.application_uri.or(base.application_uri),
            application_uri_prefixes: self
                .application_uri_prefixes
                .or(base.application_uri_prefixes),
            modbus_role: self.modbus_role.or(base.modbus_role),
            role: self.role.or(base.role),
            extensions: self.extensions.or(base.extensions),
            issuer: self.issuer.or(base.issuer),
        }
    }

    fn check(self, name: &str, default_validity: Duration) -> Result<Profile, ProfileError> {
        let err = |what: String| ProfileError(format!("profiles.{name}: {what}"));
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(err("profile names use a-z, 0-9 and '-'".into()));
        }
        let validity = match &self.validity {
            Some(v) => crate::types::parse_duration(v).map_err(|e| err(e.to_string()))?,
            None => default_validity,
        };
        if validity < Duration::from_secs(3600) || validity > Duration::from_secs(398 * 86_400) {
            return Err(err("validity must be between 1h and 398d".into()));
        }
        let extended_key_usage = self.extended_key_usage.unwrap_or_default();
        if extended_key_usage.is_empty() {
            return Err(err(
                "extended_key_usage must name at least one purpose".into()
            ));
        }
        let key_types = self.key_types.unwrap_or_default();
        if key_types.is_empty() {
            return Err(err("key_types must name at least one key type".into()));
        }
        let mut extensions = Vec::new();
        for ext in self.extensions.unwrap_or_default() {
            let arcs = ext
                .oid
                .split('.')
                .map(str::parse::<u64>)
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|a| a.len() >= 2)
                .ok_or_else(|| err(format!("extension OID {:?} is not dotted decimal", ext.oid)))?;
            let value = hex::decode(&ext.value_hex)
                .ok()
                .filter(|v| der::read(v).is_some_and(|(_, rest)| rest.is_empty()))
                .ok_or_else(|| {
                    err(format!(
                        "extension {} value_hex is not one DER value",
                        ext.oid
                    ))
                })?;
            extensions.push((arcs, ext.critical, value));
        }
        let role = self.role.filter(|r| !r.is_empty());
        Ok(Profile {
            name: name.to_owned(),
            description: self.description.unwrap_or_else(|| name.to_owned()),
            validity,
            key_usage: self.key_usage.unwrap_or_default(),
            rsa_key_usage: self.rsa_key_usage.unwrap_or_default(),
            extended_key_usage,
            key_types,
            common_name: self.common_name.unwrap_or(CommonName::FirstIdentifier),
            organization: self.organization,
            application_uri: self.application_uri.unwrap_or(false),
            application_uri_prefixes: self.application_uri_prefixes.unwrap_or_default(),
            modbus_role: self.modbus_role.unwrap_or(false),
            role,
            extensions,
            issuer: self.issuer.unwrap_or_default(),
        })
    }
}

/// Why a profile definition (`[profiles]`) cannot be used; `Display` names the profile and the
/// field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProfileError(String);

impl Profiles {
    /// Every profile issues for `validity` (`issuance.lab_cert_validity`).
    pub fn lab_set_validity(&mut self, validity: Duration) {
        for profile in self.by_name.values_mut() {
            profile.validity = validity;
        }
    }

    /// The built-in profiles merged with the configured ones; errors name the bad field.
    pub fn from_config(
        cfg: &ProfilesConfig,
        default_validity: Duration,
    ) -> Result<Self, ProfileError> {
        let mut by_name = BTreeMap::new();
        for name in BUILTIN_NAMES {
            let base = builtin(name).unwrap_or_default();
            let spec = match cfg.defined.get(name) {
                Some(s) => s.clone().over(base),
                None => base,
            };
            by_name.insert(name.to_owned(), spec.check(name, default_validity)?);
        }
        for (name, spec) in &cfg.defined {
            if by_name.contains_key(name) {
                continue;
            }
            let base = builtin(DEFAULT_PROFILE).unwrap_or_default();
            // The description is the profile's own or its name, never `default`'s text.
            let spec = ProfileSpec {
                description: spec.description.clone(),
                ..spec.clone().over(base)
            };
            by_name.insert(name.clone(), spec.check(name, default_validity)?);
        }
        let default = cfg
            .default
            .clone()
            .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
        if !by_name.contains_key(&default) {
            return Err(ProfileError(format!(
                "profiles.default names unknown profile {default:?}"
            )));
        }
        Ok(Self { by_name, default })
    }

    /// The profiles whose RSA keys the RSA intermediate signs (`issuer = "rsa"`).
    pub fn rsa_issuer_profiles(&self) -> impl Iterator<Item = &str> {
        self.by_name
            .values()
            .filter(|p| p.issuer == IssuerKind::Rsa)
            .map(|p| p.name.as_str())
    }

    /// `meta.profiles`: name → description.
    pub fn directory_meta(&self) -> BTreeMap<&str, &str> {
        self.by_name
            .values()
            .map(|p| (p.name.as_str(), p.description.as_str()))
            .collect()
    }

    /// The profile newOrder asked for, or the default one.
    ///
    /// draft-ietf-acme-profiles (paraphrased, not quoted: the draft text was not at hand): a
    /// newOrder naming a profile the server does not advertise is rejected with
    /// `invalidProfile`.
    ///
    /// <https://datatracker.ietf.org/doc/draft-ietf-acme-profiles/>
    pub fn select(&self, requested: Option<&str>) -> Result<&Profile> {
        let name = requested.unwrap_or(&self.default);
        self.by_name.get(name).ok_or_else(|| {
            Error::InvalidProfile(format!(
                "profile {name:?} is not offered; the directory's meta.profiles lists {}",
                self.by_name.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The profile an order was created with (orders stored before profiles have none). If
    /// the operator has since removed it, the order cannot be finalized: `invalidProfile`.
    pub fn of_order(&self, name: Option<&str>) -> Result<&Profile> {
        self.select(name).map_err(|_| {
            Error::InvalidProfile(format!(
                "this order's profile {:?} is no longer offered; create a new order",
                name.unwrap_or_default()
            ))
        })
    }
}

impl Profile {
    /// newOrder-time checks that need no CSR: a `modbus` profile needs a granted role.
    pub fn check_order(&self, granted_role: Option<&str>) -> Result<()> {
        if self.modbus_role && self.role_for(granted_role).is_none() {
            return Err(Error::InvalidProfile(format!(
                "profile {:?} needs a Modbus role granted by the operator, and neither this \
                 account's enrollment credential nor the profile grants one",
                self.name
            )));
        }
        Ok(())
    }

    fn role_for<'a>(&'a self, granted_role: Option<&'a str>) -> Option<&'a str> {
        granted_role.or(self.role.as_deref())
    }

    /// The certificate template for one finalize: checks the key type, takes the
    /// ApplicationUri from the CSR when the profile wants one (refusing URIs otherwise), and
    /// adds the role extension.
    pub fn leaf(&self, csr: &CsrInfo, granted_role: Option<&str>) -> Result<Leaf> {
        let (kind, rsa) = match &csr.public_key {
            PublicKey::Rsa { .. } => (KeyType::Rsa, true),
            PublicKey::P256(_) => (KeyType::P256, false),
            PublicKey::P384(_) => (KeyType::P384, false),
            PublicKey::Ed25519(_) => (KeyType::Ed25519, false),
        };
        if !self.key_types.contains(&kind) {
            return Err(Error::BadPublicKey(format!(
                "profile {:?} certifies {:?} keys only, not {kind:?}",
                self.name, self.key_types
            )));
        }
        let uri = if self.application_uri {
            let [uri] = csr.uris.as_slice() else {
                return Err(Error::BadCsr(format!(
                    "profile {:?} needs exactly one URI subjectAltName (the OPC UA ApplicationUri) in the CSR; it has {}",
                    self.name,
                    csr.uris.len()
                )));
            };
            self.check_application_uri(uri)?;
            self.check_organization()?;
            Some(uri.clone())
        } else {
            if !csr.uris.is_empty() {
                return Err(Error::BadCsr(format!(
                    "CSR subjectAltName uniformResourceIdentifier (URI) is not accepted by profile {:?}; use the opcua profile for an ApplicationUri",
                    self.name
                )));
            }
            None
        };
        let mut extensions: Vec<CustomExtension> = self
            .extensions
            .iter()
            .map(|(oid, critical, value)| {
                let mut e = CustomExtension::from_oid_content(oid, value.clone());
                e.set_criticality(*critical);
                e
            })
            .collect();
        if self.modbus_role {
            self.check_order(granted_role)?;
            if let Some(role) = self.role_for(granted_role) {
                // the role is a UTF8String, not an OCTET STRING holding one.
                extensions.push(CustomExtension::from_oid_content(
                    OID_MODBUS_ROLE,
                    der::tlv(der::UTF8_STRING, role.as_bytes()),
                ));
            }
        }
        let usages = if rsa {
            &self.rsa_key_usage
        } else {
            &self.key_usage
        };
        Ok(Leaf {
            validity: self.validity,
            common_name: self.common_name == CommonName::FirstIdentifier,
            organization: self.organization.clone(),
            key_usages: usages.iter().map(|u| u.rcgen()).collect(),
            extended_key_usages: self.extended_key_usage.iter().map(|e| e.rcgen()).collect(),
            uri,
            extensions,
            issuer: if rsa { self.issuer } else { IssuerKind::Ec },
        })
    }

    /// OPC 10000-6 §6.2.2 (paraphrased): an Application Instance Certificate's subject has an
    /// O (organization) attribute. The operator's to set, like the ApplicationUri prefixes.
    fn check_organization(&self) -> Result<()> {
        if self.organization.as_deref().is_some_and(|o| !o.is_empty()) {
            return Ok(());
        }
        Err(Error::BadCsr(format!(
            "profile {:?} issues OPC UA application instance certificates, whose subject must \
             name the organization (O, OPC 10000-6 §6.2.2), and none is configured: the \
             operator sets profiles.{}.organization",
            self.name, self.name
        )))
    }

    /// OPC 10000-6 §6.2.2: "The URI shall be a valid URL (see RFC 3986) or a valid URN (see
    /// RFC 8141)"; plus the operator's prefixes.
    fn check_application_uri(&self, uri: &str) -> Result<()> {
        let scheme_ok = uri.split_once(':').is_some_and(|(scheme, rest)| {
            !rest.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        if !scheme_ok || !uri.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::BadCsr(format!(
                "ApplicationUri {uri:?} is not an absolute URI"
            )));
        }
        if !self
            .application_uri_prefixes
            .iter()
            .any(|p| !p.is_empty() && uri.starts_with(p.as_str()))
        {
            return Err(Error::BadCsr(format!(
                "ApplicationUri {uri:?} is not allowed by profile {:?} (allowed prefixes: {:?}; \
                 the operator sets profiles.{}.application_uri_prefixes)",
                self.name, self.application_uri_prefixes, self.name
            )));
        }
        Ok(())
    }
}

impl KeyUsage {
    fn rcgen(self) -> KeyUsagePurpose {
        match self {
            Self::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            Self::NonRepudiation => KeyUsagePurpose::ContentCommitment,
            Self::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            Self::DataEncipherment => KeyUsagePurpose::DataEncipherment,
            Self::KeyAgreement => KeyUsagePurpose::KeyAgreement,
        }
    }
}

impl Eku {
    fn rcgen(self) -> ExtendedKeyUsagePurpose {
        match self {
            Self::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            Self::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles(toml_text: &str) -> Result<Profiles, String> {
        let cfg: ProfilesConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Profiles::from_config(&cfg, Duration::from_secs(7 * 86_400)).map_err(|e| e.to_string())
    }

    #[test]
    fn builtins_are_listed_and_default_is_default() {
        let p = profiles("").expect("builtins");
        let meta = p.directory_meta();
        for name in BUILTIN_NAMES {
            assert!(meta.contains_key(name), "{name}");
        }
        assert_eq!(p.select(None).expect("default").name, DEFAULT_PROFILE);
        assert!(matches!(
            p.select(Some("nope")),
            Err(Error::InvalidProfile(_))
        ));
    }

    #[test]
    fn a_table_overrides_only_its_fields() {
        let p = profiles(
            "default = \"mqtt-client\"\n[opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]\n\
             [plc]\ndescription = \"PLC\"\nvalidity = \"30d\"\nextended_key_usage = [\"client-auth\"]\n",
        )
        .expect("ok");
        assert_eq!(p.select(None).expect("default").name, "mqtt-client");
        let opcua = p.select(Some("opcua")).expect("opcua");
        assert!(opcua.application_uri);
        assert_eq!(opcua.application_uri_prefixes, ["urn:plant.example:"]);
        assert_eq!(opcua.rsa_key_usage.len(), 4);
        let plc = p.select(Some("plc")).expect("plc");
        assert_eq!(plc.description, "PLC");
        assert_eq!(plc.validity, Duration::from_secs(30 * 86_400));
        assert_eq!(plc.extended_key_usage, [Eku::ClientAuth]);
    }

    #[test]
    fn bad_tables_are_refused_with_their_name() {
        for (text, needle) in [
            ("[x]\nvalidty = \"1d\"", "validty"),
            ("[x]\nvalidity = \"1m\"", "profiles.x"),
            ("[x]\nextended_key_usage = []", "profiles.x"),
            (
                "[x]\nextensions = [{ oid = \"1.2.3\", value_hex = \"zz\" }]",
                "profiles.x",
            ),
            ("default = \"nope\"", "nope"),
        ] {
            let err = profiles(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn application_uris_must_match_a_prefix() {
        let p =
            profiles("[opcua]\napplication_uri_prefixes = [\"urn:plant.example:\"]").expect("ok");
        let opcua = p.select(Some("opcua")).expect("opcua");
        assert!(opcua
            .check_application_uri("urn:plant.example:line1:plc7")
            .is_ok());
        assert!(opcua.check_application_uri("urn:other.example:x").is_err());
        assert!(opcua.check_application_uri("no-scheme").is_err());
        let builtin = profiles("").expect("ok");
        let opcua = builtin.select(Some("opcua")).expect("opcua");
        assert!(opcua.check_application_uri("urn:plant.example:x").is_err());
    }

    #[test]
    fn modbus_needs_a_granted_role() {
        let p = profiles("").expect("ok");
        let modbus = p.select(Some("modbus")).expect("modbus");
        assert!(modbus.check_order(None).is_err());
        assert!(modbus.check_order(Some("operator")).is_ok());
        let p = profiles("[modbus]\nrole = \"viewer\"").expect("ok");
        assert!(p
            .select(Some("modbus"))
            .expect("modbus")
            .check_order(None)
            .is_ok());
    }
}
