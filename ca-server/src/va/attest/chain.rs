//! Certification path checks for an IDevID chain (SPEC §5.10.3 checks 6–8): from `x5c[0]` up to
//! a configured manufacturer trust anchor, in the spirit of RFC 5280 §6.1 but only as far as
//! device attestation needs: signatures, validity, CA flags, key usage, path length and
//! unknown critical extensions. No name constraints, policies or revocation: IDevID PKIs do
//! not use the first two, and have no revocation service a plant CA could reach.

use ring::signature::UnparsedPublicKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Version};

use super::anchors::TrustAnchor;
use crate::types::rfc3339;
use crate::{Error, Result};

/// A path that checked out: the IDevID (as `x5c[0]`) and the anchor it leads to.
pub(crate) struct Path<'c, 'a> {
    pub(crate) idevid: X509Certificate<'c>,
    pub(crate) anchor: &'a TrustAnchor,
}

/// Parses `x5c` and builds and checks the path from `x5c[0]` to one of `anchors`, at `now`
/// (Unix seconds).
///
/// At each step a trust anchor that issued the current certificate ends the path; otherwise
/// the next `x5c` element must be its issuer. So `x5c` is the IDevID followed by its issuers in
/// order; whether it ends with the anchor itself does not matter.
pub(crate) fn build<'c, 'a>(
    x5c: &[&'c [u8]],
    anchors: &'a [TrustAnchor],
    now: i64,
) -> Result<Path<'c, 'a>> {
    let certs = x5c
        .iter()
        .enumerate()
        .map(|(i, der)| match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(cert),
            Ok(_) => Err(Error::BadAttestationStatement(format!(
                "x5c[{i}] has trailing bytes after the certificate"
            ))),
            Err(e) => Err(Error::BadAttestationStatement(format!(
                "x5c[{i}] is not a DER X.509 certificate: {e}"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if anchors.is_empty() {
        return Err(Error::BadAttestationStatement(
            "no usable manufacturer trust anchors are configured on this CA (the operator adds \
             them with `ca-server trust-anchor add`; `ca-server trust-anchor list` names the \
             anchors it cannot use)"
                .to_owned(),
        ));
    }
    let parsed_anchors: Vec<(&TrustAnchor, X509Certificate<'_>)> = anchors
        .iter()
        .filter_map(|a| match X509Certificate::from_der(&a.der) {
            Ok((_, cert)) => Some((a, cert)),
            Err(_) => None,
        })
        .collect();

    let mut depth = 0;
    let anchor = loop {
        let cert = &certs[depth];
        let issued_by = |issuer: &X509Certificate<'_>| {
            issuer.subject().as_raw() == cert.issuer().as_raw()
                && check_signature(cert, issuer.public_key()).is_ok()
        };
        if let Some((anchor, cert_of_anchor)) = parsed_anchors.iter().find(|(_, a)| issued_by(a)) {
            break (*anchor, cert_of_anchor);
        }
        let Some(next) = certs.get(depth + 1) else {
            let same_name = parsed_anchors
                .iter()
                .find(|(_, a)| a.subject().as_raw() == cert.issuer().as_raw());
            return Err(Error::BadAttestationStatement(match same_name {
                Some((a, _)) => format!(
                    "IDevID chain does not lead to a configured manufacturer trust anchor: \
                     trust anchor {:?} has the name {} but did not sign {}",
                    a.name,
                    cert.issuer(),
                    describe(depth, cert)
                ),
                None => format!(
                    "IDevID chain does not lead to a configured manufacturer trust anchor \
                     (issuer {} of {})",
                    cert.issuer(),
                    describe(depth, cert)
                ),
            }));
        };
        if next.subject().as_raw() != cert.issuer().as_raw() {
            return Err(Error::BadAttestationStatement(format!(
                "x5c[{}] ({}) is not the issuer of {} (issuer {}): send the IDevID first, then \
                 each issuer in order",
                depth + 1,
                next.subject(),
                describe(depth, cert),
                cert.issuer()
            )));
        }
        check_signature(cert, next.public_key()).map_err(|why| {
            Error::BadAttestationStatement(format!(
                "the signature of x5c[{}] on {} does not verify: {}",
                depth + 1,
                describe(depth, cert),
                why.to_problem().detail
            ))
        })?;
        depth += 1;
    };
    let (anchor, anchor_cert) = anchor;

    // The path: certs[0..=depth], then the anchor, each with its name for details. Validity
    // first (SPEC §5.10.3 check 7), then the rest (check 8), from the IDevID upwards.
    let anchor_name = format!("trust anchor {:?} ({})", anchor.name, anchor_cert.subject());
    let path: Vec<(String, &X509Certificate<'_>)> = certs
        .iter()
        .take(depth + 1)
        .enumerate()
        .map(|(i, cert)| (describe(i, cert), cert))
        .chain([(anchor_name, anchor_cert)])
        .collect();
    for (name, cert) in &path {
        check_validity(name, cert, now)?;
    }
    for (i, (name, cert)) in path.iter().enumerate() {
        check_critical_extensions(name, cert)?;
        if i == 0 {
            check_end_entity(cert)?;
        } else {
            // i - 1 intermediate CA certificates lie between this one and the IDevID.
            check_issuer(name, cert, i - 1)?;
        }
    }
    drop(path);

    let idevid = certs
        .into_iter()
        .next()
        .ok_or_else(|| Error::BadAttestationStatement("x5c is empty".to_owned()))?;
    Ok(Path { idevid, anchor })
}

/// How a certificate is named in details: the IDevID by its role, others by position.
fn describe(i: usize, cert: &X509Certificate<'_>) -> String {
    if i == 0 {
        format!("the IDevID ({})", cert.subject())
    } else {
        format!("x5c[{i}] ({})", cert.subject())
    }
}

/// Verifies `cert`'s signature with `issuer_key`, through the CSR module's algorithm table.
fn check_signature(
    cert: &X509Certificate<'_>,
    issuer_key: &SubjectPublicKeyInfo<'_>,
) -> Result<()> {
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    // RFC 5280 §4.1.1.2: the outer algorithm MUST equal the one inside the signed part.
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err(Error::BadAttestationStatement(
            "its signature algorithm differs from the one in its signed part".to_owned(),
        ));
    }
    let alg = crate::key::policy::signature_algorithm_by_oid(&oid)
        .filter(|_| {
            crate::key::policy::absent_or_null(cert.signature_algorithm.parameters.as_ref())
        })
        .ok_or_else(|| {
            Error::BadAttestationStatement(format!("signature algorithm {oid} is not accepted"))
        })?;
    let key = crate::key::policy::public_key_from_spki(issuer_key).map_err(|e| {
        Error::BadAttestationStatement(format!("issuer key: {}", e.to_problem().detail))
    })?;
    let verifier = crate::key::policy::ring_verifier(alg, &key).ok_or_else(|| {
        Error::BadAttestationStatement(format!(
            "it is signed with {} but the issuer key is {}",
            alg.name(),
            key.describe()
        ))
    })?;
    if cert.signature_value.unused_bits != 0 {
        return Err(Error::BadAttestationStatement(
            "the signature BIT STRING has unused bits".to_owned(),
        ));
    }
    UnparsedPublicKey::new(verifier, &issuer_key.subject_public_key.data)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| Error::BadAttestationStatement("bad signature".to_owned()))
}

/// notBefore <= now <= notAfter. 802.1AR IDevIDs that never expire carry notAfter
/// 99991231235959Z (RFC 5280 §4.1.2.5), which is simply a time far ahead.
fn check_validity(name: &str, cert: &X509Certificate<'_>, now: i64) -> Result<()> {
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now < not_before {
        return Err(Error::BadAttestationStatement(format!(
            "{name} is not valid before {} (check the CA's clock)",
            rfc3339(not_before)
        )));
    }
    if now > not_after {
        let name = name.strip_prefix("the ").unwrap_or(name);
        return Err(Error::BadAttestationStatement(format!(
            "{name} expired at {}",
            rfc3339(not_after)
        )));
    }
    Ok(())
}

/// RFC 5280 §4.2: a certificate with a critical extension the verifier does not know must be
/// refused.
fn check_critical_extensions(name: &str, cert: &X509Certificate<'_>) -> Result<()> {
    for ext in cert.extensions() {
        if !ext.critical {
            continue;
        }
        match ext.parsed_extension() {
            ParsedExtension::UnsupportedExtension { .. } => {
                return Err(Error::BadAttestationStatement(format!(
                    "{name} has the unknown critical extension {}",
                    ext.oid.to_id_string()
                )))
            }
            ParsedExtension::ParseError { error } => {
                return Err(Error::BadAttestationStatement(format!(
                    "{name} has the critical extension {} that does not parse: {error}",
                    ext.oid.to_id_string()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// An issuer in the path: a v3 CA certificate allowed to sign certificates, whose
/// pathLenConstraint admits the `below` intermediate CA certificates under it.
fn check_issuer(name: &str, cert: &X509Certificate<'_>, below: usize) -> Result<()> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| Error::BadAttestationStatement(format!("{name}: basicConstraints: {e}")))?
        .map(|bc| bc.value);
    if cert.version() != X509Version::V3 || !bc.is_some_and(|bc| bc.ca) {
        return Err(Error::BadAttestationStatement(format!(
            "{name} issued a certificate of the chain but is not a CA certificate \
             (basicConstraints cA TRUE)"
        )));
    }
    if let Some(limit) = bc.and_then(|bc| bc.path_len_constraint) {
        if usize::try_from(limit).is_ok_and(|limit| limit < below) {
            return Err(Error::BadAttestationStatement(format!(
                "{name} allows {limit} intermediate CA certificates below it \
                 (pathLenConstraint), the chain has {below}"
            )));
        }
    }
    let key_usage = cert
        .key_usage()
        .map_err(|e| Error::BadAttestationStatement(format!("{name}: keyUsage: {e}")))?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(Error::BadAttestationStatement(format!(
            "{name} has a keyUsage without keyCertSign"
        )));
    }
    Ok(())
}

/// The IDevID signs the key authorization: an end-entity certificate whose keyUsage, if
/// present, allows digitalSignature.
fn check_end_entity(cert: &X509Certificate<'_>) -> Result<()> {
    let name = describe(0, cert);
    let bc = cert
        .basic_constraints()
        .map_err(|e| Error::BadAttestationStatement(format!("{name}: basicConstraints: {e}")))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(Error::BadAttestationStatement(format!(
            "{name} is a CA certificate, not a device identity (IDevID)"
        )));
    }
    let key_usage = cert
        .key_usage()
        .map_err(|e| Error::BadAttestationStatement(format!("{name}: keyUsage: {e}")))?;
    if key_usage.is_some_and(|ku| !ku.value.digital_signature()) {
        return Err(Error::BadAttestationStatement(format!(
            "{name} has a keyUsage without digitalSignature, so it cannot sign attestations"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    use super::*;

    const NOW: i64 = 1_780_000_000; // 2026-05-28

    fn params(cn: &str, ca: IsCa) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = ca;
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(9999, 12, 31);
        p
    }

    fn ca() -> IsCa {
        IsCa::Ca(BasicConstraints::Unconstrained)
    }

    /// Root -> intermediate -> leaf, with hooks on the intermediate's and the leaf's parameters.
    fn chain(
        root: IsCa,
        int: impl FnOnce(&mut CertificateParams),
        leaf: impl FnOnce(&mut CertificateParams),
    ) -> (TrustAnchor, Vec<Vec<u8>>) {
        let root_key = KeyPair::generate().expect("key");
        let root_params = params("Root", root);
        let root_cert = root_params.self_signed(&root_key).expect("root");
        let root_issuer = Issuer::new(root_params, root_key);
        let int_key = KeyPair::generate().expect("key");
        let mut int_params = params("Intermediate", ca());
        int(&mut int_params);
        let int_cert = int_params.signed_by(&int_key, &root_issuer).expect("int");
        let int_issuer = Issuer::new(int_params, int_key);
        let leaf_key = KeyPair::generate().expect("key");
        let mut leaf_params = params("Device", IsCa::ExplicitNoCa);
        leaf(&mut leaf_params);
        let leaf_cert = leaf_params.signed_by(&leaf_key, &int_issuer).expect("leaf");
        let anchor = TrustAnchor {
            name: "root".into(),
            der: root_cert.der().to_vec(),
            assigner: "1.3.6.1.4.1.32473".into(),
            hw_types: Vec::new(),
        };
        (
            anchor,
            vec![leaf_cert.der().to_vec(), int_cert.der().to_vec()],
        )
    }

    fn build_err(anchor: &TrustAnchor, x5c: &[Vec<u8>]) -> String {
        let x5c: Vec<&[u8]> = x5c.iter().map(Vec::as_slice).collect();
        match build(&x5c, std::slice::from_ref(anchor), NOW) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_problem().detail,
        }
    }

    #[test]
    fn a_good_chain_builds_with_or_without_the_root_at_the_end() {
        let (anchor, mut x5c) = chain(ca(), |_| {}, |_| {});
        let refs: Vec<&[u8]> = x5c.iter().map(Vec::as_slice).collect();
        let path = build(&refs, std::slice::from_ref(&anchor), NOW).expect("path");
        assert_eq!(path.anchor.name, "root");
        x5c.push(anchor.der.clone());
        let refs: Vec<&[u8]> = x5c.iter().map(Vec::as_slice).collect();
        assert!(build(&refs, std::slice::from_ref(&anchor), NOW).is_ok());
    }

    #[test]
    fn each_path_rule_is_enforced_with_a_specific_detail() {
        let (anchor, x5c) = chain(ca(), |p| p.is_ca = IsCa::ExplicitNoCa, |_| {});
        let e = build_err(&anchor, &x5c);
        assert!(
            e.contains("x5c[1] (CN=Intermediate)") && e.contains("not a CA"),
            "{e}"
        );

        let (anchor, x5c) = chain(IsCa::Ca(BasicConstraints::Constrained(0)), |_| {}, |_| {});
        let e = build_err(&anchor, &x5c);
        assert!(e.contains("allows 0 intermediate CA certificates"), "{e}");

        let (anchor, x5c) = chain(
            ca(),
            |p| p.key_usages = vec![KeyUsagePurpose::DigitalSignature],
            |_| {},
        );
        assert!(build_err(&anchor, &x5c).contains("without keyCertSign"));

        let (anchor, x5c) = chain(ca(), |_| {}, |p| p.is_ca = ca());
        assert!(build_err(&anchor, &x5c).contains("is a CA certificate, not a device identity"));

        let (anchor, x5c) = chain(
            ca(),
            |_| {},
            |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
        );
        assert!(build_err(&anchor, &x5c).contains("without digitalSignature"));

        let (anchor, x5c) = chain(
            ca(),
            |_| {},
            |p| {
                let mut ext =
                    CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 32473, 9], vec![5, 0]);
                ext.set_criticality(true);
                p.custom_extensions = vec![ext];
            },
        );
        let e = build_err(&anchor, &x5c);
        assert!(
            e.contains("unknown critical extension 1.3.6.1.4.1.32473.9"),
            "{e}"
        );

        let (anchor, x5c) = chain(
            ca(),
            |_| {},
            |p| p.not_before = rcgen::date_time_ymd(2030, 1, 1),
        );
        let e = build_err(&anchor, &x5c);
        assert!(
            e.contains("is not valid before 2030-01-01T00:00:00Z"),
            "{e}"
        );

        let (anchor, x5c) = chain(
            ca(),
            |p| p.not_after = rcgen::date_time_ymd(2021, 1, 1),
            |_| {},
        );
        let e = build_err(&anchor, &x5c);
        assert!(
            e.contains("x5c[1] (CN=Intermediate) expired at 2021-01-01"),
            "{e}"
        );
    }

    #[test]
    fn the_chain_must_be_in_order_and_end_at_an_anchor() {
        let (anchor, x5c) = chain(ca(), |_| {}, |_| {});
        let reversed = vec![x5c[0].clone(), anchor.der.clone(), x5c[1].clone()];
        let e = build_err(&anchor, &reversed);
        assert!(e.contains("is not the issuer of the IDevID"), "{e}");
        let e = build_err(&anchor, &x5c[..1]);
        assert!(
            e.contains(
                "does not lead to a configured manufacturer trust anchor (issuer CN=Intermediate"
            ),
            "{e}"
        );
        let x5c: Vec<&[u8]> = vec![b"\x30\x03\x02\x01\x00"];
        let e = build(&x5c, std::slice::from_ref(&anchor), NOW)
            .err()
            .map(|e| e.to_problem().detail)
            .unwrap_or_default();
        assert!(
            e.starts_with("x5c[0] is not a DER X.509 certificate"),
            "{e}"
        );
    }
}
