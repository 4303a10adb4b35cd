//! Identifier policy: what the CA refuses to certify or to dial, whoever asks.
//!
//! Two rules, applied at newOrder (`rejectedIdentifier`), to allow-list rules of enrollment
//! credentials, and by validation to every address it is about to dial:
//!
//! - **Address classes.** Loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16,
//!   fe80::/10), unspecified ("this network" 0.0.0.0/8, ::), multicast and the limited
//!   broadcast address are no device's address on a plant network. Dialing them would let an
//!   account reach the CA host itself or link-local services (cloud metadata, printers,
//!   router admin pages); certifying them would certify nothing. An IPv6 address that carries
//!   an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d, NAT64
//!   64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16) is refused when that IPv4 address is.
//!   `[validation] allow_loopback` lets tests and labs use loopback, and only loopback.
//! - **The CA's own names.** A certificate for a name or address the CA serves as would pass
//!   every device's pin check of the CA (SPEC §2.3): a man in the middle for all enrollments.
//!   Those are the names of the CA's own HTTPS certificate (`server::tls_names`: `tls_names`,
//!   the `public_url` host, the listen address when it is not unspecified, and localhost).
//!   With `allow_loopback` the loopback ones are exempt, so tests can enroll on 127.0.0.1.

use std::net::IpAddr;

use crate::types::{Identifier, IdentifierType};

/// The IPv4 address an IPv6 address carries, by the translation and tunnelling schemes that
/// reach it: IPv4-compatible (::a.b.c.d, but for :: and ::1), NAT64 (64:ff9b::/96, RFC 6052;
/// 64:ff9b:1::/48, RFC 8215) and 6to4 (2002::/16, RFC 3056). IPv4-mapped addresses are
/// handled by `to_canonical`.
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let low = u32::from(s[6]) << 16 | u32::from(s[7]);
    if s[..6] == [0; 6] && low > 1 {
        return Some(low.into());
    }
    if (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        return Some(low.into());
    }
    if s[0] == 0x2002 {
        return Some((u32::from(s[1]) << 16 | u32::from(s[2])).into());
    }
    None
}

/// Why an address is never dialed or certified; `None` for an address that may be.
pub fn refused_address(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = embedded_v4(v6) {
            return refused_address(IpAddr::V4(v4), allow_loopback).map(|_| {
                "an IPv6 address that carries an IPv4 address this CA does not dial or certify"
            });
        }
    }
    if ip.is_loopback() {
        return (!allow_loopback)
            .then_some("a loopback address (validation.allow_loopback is off)");
    }
    match ip {
        IpAddr::V4(v4) => {
            if v4.octets()[0] == 0 {
                Some("an unspecified (\"this network\", 0.0.0.0/8) address")
            } else if v4.is_link_local() {
                Some("a link-local address (169.254.0.0/16)")
            } else if v4.is_multicast() {
                Some("a multicast address")
            } else if v4.is_broadcast() {
                Some("the broadcast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.segments()[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address (fe80::/10)")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

/// The names and addresses the CA serves as, as identifiers: what no account may order.
#[derive(Clone, Debug, Default)]
pub struct OwnNames {
    names: Vec<Identifier>,
    allow_loopback: bool,
}

impl OwnNames {
    /// From the names of the CA's HTTPS certificate (DNS names or IP addresses).
    pub fn from_names(names: &[String], allow_loopback: bool) -> Self {
        let mut ids: Vec<Identifier> = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Identifier::ip(ip.to_canonical()),
                Err(_) => Identifier::dns(n.trim_end_matches('.').to_ascii_lowercase()),
            })
            .collect();
        ids.sort();
        ids.dedup();
        Self {
            names: ids,
            allow_loopback,
        }
    }

    /// The names of the HTTPS certificate a CA with data directory `data_dir` last served
    /// (`<data_dir>/ca/server.pem`), for tools that run without the CA's configuration;
    /// `None` when the CA never started.
    pub fn of_server_certificate(data_dir: &std::path::Path) -> crate::Result<Option<Self>> {
        let path = data_dir.join("ca").join("server.pem");
        let pem = match std::fs::read(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(crate::Error::Internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let bad = |why: String| crate::Error::Internal(format!("{}: {why}", path.display()));
        let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
        let cert = block.parse_x509().map_err(|e| bad(e.to_string()))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            names.push(IpAddr::from(v4).to_string());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            names.push(IpAddr::from(v6).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Some(Self::from_names(&names, false)))
    }

    /// The CA's addresses among its names.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.names.iter().filter_map(|id| match id.kind {
            IdentifierType::Ip => id.value.parse().ok(),
            _ => None,
        })
    }

    fn exempt(&self, id: &Identifier) -> bool {
        self.allow_loopback
            && match id.kind {
                IdentifierType::Ip => id
                    .value
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback()),
                IdentifierType::Dns => id.value == "localhost",
                IdentifierType::PermanentIdentifier => false,
            }
    }

    /// Whether `id` (normalised) is one of the CA's own names.
    pub fn contains(&self, id: &Identifier) -> bool {
        let id = match id.kind {
            IdentifierType::Ip => match id.value.parse::<IpAddr>() {
                Ok(ip) => Identifier::ip(ip.to_canonical()),
                Err(_) => return false,
            },
            _ => id.clone(),
        };
        !self.exempt(&id) && self.names.binary_search(&id).is_ok()
    }

    /// Whether `ip` is one of the CA's own addresses.
    pub fn has_address(&self, ip: IpAddr) -> bool {
        self.contains(&Identifier::ip(ip))
    }

    /// The CA's own names `covered` says it covers (for allow-list rules).
    pub fn covered_by<'a>(
        &'a self,
        covered: impl Fn(&Identifier) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Identifier> + 'a {
        self.names
            .iter()
            .filter(move |id| !self.exempt(id) && covered(id))
    }
}

/// Why `id` (normalised) may not be ordered by anyone: an address class above, or one of the
/// CA's own names. `None` when policy allows it.
pub fn refused_identifier(id: &Identifier, own: &OwnNames, allow_loopback: bool) -> Option<String> {
    if own.contains(id) {
        return Some(format!(
            "{id} is a name this CA serves as: a certificate for it would let its holder \
             impersonate the CA to every device"
        ));
    }
    if id.kind == IdentifierType::Ip {
        // An IPv4 address written as IPv4-mapped IPv6 would be certified as a 16-octet
        // iPAddress, which clients match against the IPv4 address, and bound apart from it.
        if let Ok(IpAddr::V6(v6)) = id.value.parse::<IpAddr>() {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Some(format!(
                    "{} is an IPv4-mapped IPv6 address: order the IPv4 address {v4}",
                    id.value
                ));
            }
        }
        if let Some(why) = id
            .value
            .parse::<IpAddr>()
            .ok()
            .and_then(|ip| refused_address(ip, allow_loopback))
        {
            return Some(format!(
                "{} is {why}, which this CA does not certify",
                id.value
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn refused(ip: &str) -> bool {
        refused_address(ip.parse().expect("ip"), false).is_some()
    }

    #[test]
    fn address_classes() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "fe80::1",
            "febf::1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "::ffff:169.254.1.1",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
        ] {
            assert!(refused(ip), "{ip} must be refused");
        }
        for ip in [
            "10.20.0.5",
            "192.168.1.7",
            "172.16.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "fd00::7",
            "fec0::1",
            "::ffff:10.20.0.5",
            "64:ff9b::a14:5",
            "2002:a14:5::1",
        ] {
            assert!(!refused(ip), "{ip} must be allowed");
        }
        let lo: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(refused_address(lo, true).is_none());
        let ll: IpAddr = "169.254.0.1".parse().expect("ip");
        assert!(
            refused_address(ll, true).is_some(),
            "allow_loopback allows only loopback"
        );
    }

    #[test]
    fn own_names_are_reserved_except_loopback_in_labs() {
        let names = [
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            "CA.Plant.Example".to_owned(),
            "10.20.0.5".to_owned(),
        ];
        let strict = OwnNames::from_names(&names, false);
        let lab = OwnNames::from_names(&names, true);
        let ca = Identifier::dns("ca.plant.example");
        let addr = Identifier::ip("10.20.0.5".parse().expect("ip"));
        let lo = Identifier::ip("127.0.0.1".parse().expect("ip"));
        for own in [&strict, &lab] {
            assert!(own.contains(&ca) && own.contains(&addr));
            assert!(refused_identifier(&ca, own, true).is_some());
            assert!(!own.contains(&Identifier::dns("plc.plant.example")));
        }
        assert!(strict.contains(&lo) && strict.contains(&Identifier::dns("localhost")));
        assert!(!lab.contains(&lo) && !lab.contains(&Identifier::dns("localhost")));
        assert!(strict.has_address("::ffff:10.20.0.5".parse().expect("ip")));
        let covered: Vec<_> = strict
            .covered_by(|id| id.value.ends_with("plant.example"))
            .collect();
        assert_eq!(covered, [&ca]);
    }

    #[test]
    fn the_hosts_addresses_are_its_own_when_it_listens_on_all_of_them() {
        let cfg = Config {
            listen: "0.0.0.0:14000".parse().expect("addr"),
            ..Config::default()
        };
        let own = OwnNames::of_host(&cfg);
        let interfaces = if_addrs::get_if_addrs().expect("interfaces");
        assert!(!interfaces.is_empty());
        for i in interfaces {
            assert!(
                own.has_address(i.ip()),
                "{} ({}) is not own",
                i.ip(),
                i.name
            );
        }
        // `localhost` resolves to a loopback address, which is the CA's as well.
        let lo = OwnNames::of_host(&Config::default());
        assert!(lo.has_address("127.0.0.1".parse().expect("ip")));
    }
}
