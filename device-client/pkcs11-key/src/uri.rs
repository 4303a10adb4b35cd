//! PKCS #11 URIs (RFC 7512): which module, which token, which object, and where the PIN is.
//!
//! ```text
//! pkcs11:token=device;object=cert-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/iiot/pin
//! ```
//!
//! The parser is strict: every character outside the RFC's unreserved and allowed sets must be
//! percent-encoded, a path attribute appears at most once, and a value that should be text must
//! decode to UTF-8. Unknown path attributes make the URI match nothing (RFC 7512 §3.3), which
//! this crate reports as an error instead of searching; unknown query attributes are ignored
//! and listed in [`Pkcs11Uri::ignored`] for a warning.
//!
//! <https://www.rfc-editor.org/rfc/rfc7512>

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

/// The URI scheme, compared without regard to case (RFC 3986 §3.1).
pub const SCHEME: &str = "pkcs11:";

/// The `type` path attribute (RFC 7512 §2.3): the class of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectType {
    /// `public`: CKO_PUBLIC_KEY.
    Public,
    /// `private`: CKO_PRIVATE_KEY.
    Private,
    /// `cert`: CKO_CERTIFICATE.
    Cert,
    /// `secret-key`: CKO_SECRET_KEY.
    SecretKey,
    /// `data`: CKO_DATA.
    Data,
}

/// Where the PIN comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `pin-source=file:/path` (or an absolute path): the first line of the file.
    File(PathBuf),
    /// `pin-value=…`: the PIN in the URI itself. Discouraged: the URI ends up in configuration
    /// files and process lists.
    Value(Zeroizing<String>),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            // Never print the PIN.
            Self::Value(_) => f.write_str("Value(..)"),
        }
    }
}

/// A parsed PKCS #11 URI. [`fmt::Display`] gives it back with a `pin-value` replaced by
/// `REDACTED`, so it can go into logs and messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token`: the token label (CK_TOKEN_INFO.label).
    pub token: Option<String>,
    /// `manufacturer`: the token's manufacturerID.
    pub manufacturer: Option<String>,
    /// `serial`: the token's serialNumber.
    pub serial: Option<String>,
    /// `model`: the token's model.
    pub model: Option<String>,
    /// `library-manufacturer`: CK_INFO.manufacturerID of the module.
    pub library_manufacturer: Option<String>,
    /// `library-description`: CK_INFO.libraryDescription.
    pub library_description: Option<String>,
    /// `library-version`: CK_INFO.libraryVersion, `M` or `M.N`.
    pub library_version: Option<(u8, u8)>,
    /// `slot-id`: the slot number.
    pub slot_id: Option<u64>,
    /// `slot-description`: CK_SLOT_INFO.slotDescription.
    pub slot_description: Option<String>,
    /// `slot-manufacturer`: CK_SLOT_INFO.manufacturerID.
    pub slot_manufacturer: Option<String>,
    /// `object`: the object's CKA_LABEL.
    pub object: Option<String>,
    /// `id`: the object's CKA_ID (binary, percent-encoded in the URI).
    pub id: Option<Vec<u8>>,
    /// `type`: the object's class.
    pub object_type: Option<ObjectType>,
    /// `module-path`: the PKCS #11 module (shared library) to load.
    pub module_path: Option<PathBuf>,
    /// `module-name`: the module's name without directory or suffix.
    pub module_name: Option<String>,
    /// `pin-source` or `pin-value`.
    pub pin: Option<PinSource>,
    /// Query attributes this crate does not know, ignored as RFC 7512 §3.3 says.
    pub ignored: Vec<String>,
    /// The URI as given, `pin-value` redacted.
    text: String,
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Characters allowed unencoded in both components besides the unreserved ones
/// (`pk11-res-avail`, RFC 7512 §2.3).
const RES_AVAIL: &[u8] = b":[]@!$'()*+,=";

fn allowed(c: u8, query: bool) -> bool {
    c.is_ascii_alphanumeric()
        || b"-._~".contains(&c)
        || RES_AVAIL.contains(&c)
        || if query {
            b"/?|".contains(&c)
        } else {
            c == b'&'
        }
}

/// Percent-decodes one attribute value, refusing characters the component does not allow.
fn decode(name: &str, raw: &str, query: bool) -> Result<Vec<u8>, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{name}: '%' must be followed by two hexadecimal digits"))?;
            out.push(hex);
            i += 3;
        } else if allowed(c, query) {
            out.push(c);
            i += 1;
        } else {
            let component = if query { "query" } else { "path" };
            if names_a_pin(name) {
                // Not the character: it is part of a PIN.
                return Err(format!(
                    "{name}: a character of the value must be percent-encoded in the \
                     {component} component (not shown: the value is a PIN)"
                ));
            }
            let shown = raw[i..].chars().next().unwrap_or('?');
            return Err(format!(
                "{name}: {shown:?} must be percent-encoded in the {component} component"
            ));
        }
    }
    Ok(out)
}

/// Whether a query attribute's value may be a PIN (`pin-value`, or a misspelling of it such as
/// `PIN-VALUE` or `pin`): never shown in messages or in [`fmt::Display`].
fn names_a_pin(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("pin") && name != "pin-source"
}

fn text(name: &str, value: Vec<u8>) -> Result<String, String> {
    String::from_utf8(value).map_err(|_| format!("{name}: the value is not UTF-8"))
}

fn set<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!(
            "{name} appears twice (RFC 7512 §2.3: an attribute at most once)"
        ));
    }
    *slot = Some(value);
    Ok(())
}

impl Pkcs11Uri {
    /// Whether `s` is meant as a PKCS #11 URI (starts with the scheme, in any case).
    pub fn is_uri(s: &str) -> bool {
        s.get(..SCHEME.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
    }

    /// Parses a PKCS #11 URI.
    pub fn parse(s: &str) -> Result<Self, String> {
        if !Self::is_uri(s) {
            return Err("a PKCS #11 URI starts with pkcs11:".into());
        }
        let rest = &s[SCHEME.len()..];
        if rest.contains('#') {
            return Err("a PKCS #11 URI has no fragment ('#' must be written %23)".into());
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Self::default();
        let mut text_query = Vec::new();
        if !path.is_empty() {
            for attr in path.split(';') {
                uri.path_attribute(attr)?;
            }
        }
        if let Some(query) = query {
            if query.is_empty() {
                return Err("empty query after '?'".into());
            }
            let mut seen: Vec<&str> = Vec::new();
            // Malformed attributes are named by position only: their text may be a PIN.
            for (n, attr) in query.split('&').enumerate() {
                let (name, raw) = attr
                    .split_once('=')
                    .ok_or_else(|| format!("query attribute {} has no '=' (name=value)", n + 1))?;
                if name.is_empty() {
                    return Err(format!("query attribute {} has no name", n + 1));
                }
                let standard = matches!(
                    name,
                    "pin-source" | "pin-value" | "module-name" | "module-path"
                );
                if standard && seen.contains(&name) {
                    return Err(format!(
                        "{name} appears twice (RFC 7512 §2.3: an attribute at most once)"
                    ));
                }
                seen.push(name);
                let value = decode(name, raw, true)?;
                match name {
                    "pin-source" => {
                        let source = text(name, value)?;
                        let path = source
                            .strip_prefix("file://")
                            .or_else(|| source.strip_prefix("file:"))
                            .unwrap_or(&source);
                        if !path.starts_with('/') {
                            // Not the value: someone may have put the PIN itself there.
                            return Err("pin-source is not a file: URI with an absolute path; \
                                 give one like file:/etc/iiot-acme/token.pin (the value is not \
                                 shown, in case it is the PIN)"
                                .into());
                        }
                        set(&mut uri.pin, "pin", PinSource::File(PathBuf::from(path)))?;
                    }
                    "pin-value" => {
                        let pin = Zeroizing::new(value);
                        let pin = std::str::from_utf8(&pin)
                            .map_err(|_| format!("{name}: the value is not UTF-8"))?;
                        set(
                            &mut uri.pin,
                            "pin",
                            PinSource::Value(Zeroizing::new(pin.to_owned())),
                        )?;
                        text_query.push("pin-value=REDACTED".to_owned());
                        continue;
                    }
                    "module-path" => {
                        let p = text(name, value)?;
                        if !p.starts_with('/') {
                            return Err(format!(
                                "module-path {p:?} must be an absolute path to the module"
                            ));
                        }
                        uri.module_path = Some(PathBuf::from(p));
                    }
                    "module-name" => uri.module_name = Some(text(name, value)?),
                    other => {
                        uri.ignored.push(other.to_owned());
                        if names_a_pin(other) {
                            text_query.push(format!("{other}=REDACTED"));
                            continue;
                        }
                    }
                }
                text_query.push(attr.to_owned());
            }
            if seen.contains(&"pin-source") && seen.contains(&"pin-value") {
                return Err("give either pin-source or pin-value, not both".into());
            }
        }
        uri.text = format!("{}{path}", &s[..SCHEME.len()]);
        if query.is_some() {
            uri.text.push('?');
            uri.text.push_str(&text_query.join("&"));
        }
        Ok(uri)
    }

    fn path_attribute(&mut self, attr: &str) -> Result<(), String> {
        if attr.is_empty() {
            return Err("empty path attribute (two ';' in a row, or a trailing ';')".into());
        }
        let (name, raw) = attr
            .split_once('=')
            .ok_or_else(|| format!("path attribute {attr:?} has no '='"))?;
        let value = decode(name, raw, false)?;
        match name {
            "token" => set(&mut self.token, name, text(name, value)?),
            "manufacturer" => set(&mut self.manufacturer, name, text(name, value)?),
            "serial" => set(&mut self.serial, name, text(name, value)?),
            "model" => set(&mut self.model, name, text(name, value)?),
            "library-manufacturer" => set(&mut self.library_manufacturer, name, text(name, value)?),
            "library-description" => set(&mut self.library_description, name, text(name, value)?),
            "library-version" => {
                let v = text(name, value)?;
                let number = |s: &str| {
                    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| s.parse::<u8>().ok())
                        .flatten()
                };
                let version = match v.split_once('.') {
                    Some((major, minor)) => number(major).zip(number(minor)),
                    None => number(&v).map(|major| (major, 0)),
                }
                .ok_or_else(|| format!("library-version {v:?} is not M or M.N"))?;
                set(&mut self.library_version, name, version)
            }
            "slot-id" => {
                let v = text(name, value)?;
                let id = v
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| v.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| format!("slot-id {v:?} is not a decimal number"))?;
                set(&mut self.slot_id, name, id)
            }
            "slot-description" => set(&mut self.slot_description, name, text(name, value)?),
            "slot-manufacturer" => set(&mut self.slot_manufacturer, name, text(name, value)?),
            "object" => set(&mut self.object, name, text(name, value)?),
            "id" => set(&mut self.id, name, value),
            "type" => {
                let t = match text(name, value)?.as_str() {
                    "public" => ObjectType::Public,
                    "private" => ObjectType::Private,
                    "cert" => ObjectType::Cert,
                    "secret-key" => ObjectType::SecretKey,
                    "data" => ObjectType::Data,
                    other => {
                        return Err(format!(
                            "type {other:?}: use public, private, cert, secret-key or data"
                        ))
                    }
                };
                set(&mut self.object_type, name, t)
            }
            other => Err(format!(
                "unknown path attribute {other:?}: such a URI matches no object (RFC 7512 \
                 §3.3); the attributes are token, manufacturer, serial, model, object, id, \
                 type, slot-id, slot-description, slot-manufacturer, library-manufacturer, \
                 library-description and library-version"
            )),
        }
    }

    /// The module to load: `module-path`. (`module-name` alone would need a search path for
    /// modules, which differs between systems, so it is refused with that advice.)
    pub fn module(&self) -> Result<&std::path::Path, String> {
        match (&self.module_path, &self.module_name) {
            (Some(p), _) => Ok(p),
            (None, Some(name)) => Err(format!(
                "module-name={name} is not searched for: give the module's file with \
                 module-path=/…/{name}.so"
            )),
            (None, None) => Err("no module: add ?module-path=/path/to/module.so (e.g. \
                 /usr/lib/softhsm/libsofthsm2.so, or libtpm2_pkcs11.so for a TPM)"
                .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7512_examples_parse() {
        // RFC 7512 §3.3 examples (those with attributes this crate knows).
        let u = Pkcs11Uri::parse("pkcs11:").expect("empty");
        assert_eq!(
            u,
            Pkcs11Uri {
                text: "pkcs11:".into(),
                ..Pkcs11Uri::default()
            }
        );
        let u = Pkcs11Uri::parse("pkcs11:object=my-pubkey;type=public").expect("parses");
        assert_eq!(u.object.as_deref(), Some("my-pubkey"));
        assert_eq!(u.object_type, Some(ObjectType::Public));
        let u = Pkcs11Uri::parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.\
             ;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;\
             serial=?pin-source=file:/etc/token_pin",
        )
        .expect("parses");
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.serial.as_deref(), Some(""));
        assert_eq!(
            u.id.as_deref(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(u.pin, Some(PinSource::File("/etc/token_pin".into())));
        let u = Pkcs11Uri::parse(
            "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token\
             %20Library;library-version=1.23",
        )
        .expect("parses");
        assert_eq!(u.library_version, Some((1, 23)));
        let u =
            Pkcs11Uri::parse("pkcs11:slot-description=Sun%20Metaslot;slot-id=2").expect("parses");
        assert_eq!(u.slot_id, Some(2));
        let u = Pkcs11Uri::parse(
            "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.\
             ?pin-value=the-pin",
        )
        .expect("parses");
        assert_eq!(
            u.pin,
            Some(PinSource::Value(Zeroizing::new("the-pin".into())))
        );
        let u = Pkcs11Uri::parse("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11")
            .expect("parses");
        assert_eq!(u.module_name.as_deref(), Some("mypkcs11"));
        assert!(u.module().expect_err("no path").contains("module-path"));
        let u = Pkcs11Uri::parse(
            "pkcs11:object=my-sign-key;type=private\
             ?module-path=/mnt/libmypkcs11.so.1",
        )
        .expect("parses");
        assert_eq!(
            u.module().expect("path"),
            std::path::Path::new("/mnt/libmypkcs11.so.1")
        );
        // `&` is allowed unencoded in the path, `/`, `?` and `|` in the query.
        let u = Pkcs11Uri::parse("pkcs11:token=A&B;object=x?pin-source=file:///p/a?b|c")
            .expect("parses");
        assert_eq!(u.token.as_deref(), Some("A&B"));
        assert_eq!(u.pin, Some(PinSource::File("/p/a?b|c".into())));
        assert!(Pkcs11Uri::parse("PKCS11:token=x").is_ok());
    }

    #[test]
    fn unknown_attributes_per_rfc() {
        let e = Pkcs11Uri::parse("pkcs11:token=t;x-vendor=1").expect_err("path");
        assert!(e.contains("matches no object"), "{e}");
        let u = Pkcs11Uri::parse("pkcs11:token=t?x-vendor=1&x-vendor=2&other=3").expect("query");
        assert_eq!(u.ignored, ["x-vendor", "x-vendor", "other"]);
    }

    #[test]
    fn malformed_uris_are_refused_with_the_reason() {
        for (uri, why) in [
            ("pkcs12:token=a", "starts with pkcs11:"),
            ("pkcs11:token=a;token=b", "appears twice"),
            ("pkcs11:token=a;;object=b", "empty path attribute"),
            ("pkcs11:token=a;", "empty path attribute"),
            ("pkcs11:token", "has no '='"),
            ("pkcs11:token=a b", "must be percent-encoded"),
            ("pkcs11:token=a/b", "must be percent-encoded"),
            ("pkcs11:token=%4", "two hexadecimal digits"),
            ("pkcs11:token=%zz", "two hexadecimal digits"),
            ("pkcs11:token=%ff", "not UTF-8"),
            ("pkcs11:token=a#frag", "no fragment"),
            ("pkcs11:type=key", "use public, private"),
            ("pkcs11:slot-id=-1", "decimal"),
            ("pkcs11:library-version=1.x", "M or M.N"),
            ("pkcs11:token=a?", "empty query"),
            (
                "pkcs11:token=a?pin-source=/x&pin-source=/y",
                "appears twice",
            ),
            (
                "pkcs11:token=a?module-path=/x&module-path=/y",
                "appears twice",
            ),
            ("pkcs11:token=a?pin-source=file:/x&pin-value=1", "pin"),
            ("pkcs11:token=a?pin-source=relative", "absolute path"),
            ("pkcs11:token=a?module-path=lib.so", "absolute path"),
            ("pkcs11:token=a?module-path", "has no '='"),
            ("pkcs11:token=a?=x", "has no name"),
            ("pkcs11:token=a?pin-value=a b", "must be percent-encoded"),
        ] {
            let e = Pkcs11Uri::parse(uri).expect_err(uri);
            assert!(e.contains(why), "{uri}: {e}");
        }
    }

    #[test]
    fn no_error_and_no_display_shows_a_pin() {
        for uri in [
            "pkcs11:object=k?pin-value=s3cr\u{e9}t",
            "pkcs11:object=k?pin-value=s3cr\"t",
            "pkcs11:object=k?pin-value=s3cr%zzt",
            "pkcs11:object=k?pin-source=s3cret",
            "pkcs11:object=k?=s3cret",
            "pkcs11:object=k?s3cret",
            "pkcs11:object=k?module-path=/m.so&s3cret",
            "pkcs11:object=k?pin-value=s3cret&pin-value=s3cret",
            "pkcs11:object=k?pin-value=s3cret&pin-source=file:/p",
        ] {
            let e = Pkcs11Uri::parse(uri).expect_err(uri);
            assert!(!e.contains("s3cr") && !e.contains('\u{e9}'), "{uri}: {e}");
        }
        // Misspelt pin attributes are ignored, and redacted like pin-value.
        for uri in [
            "pkcs11:object=k?module-path=/m.so&PIN-VALUE=s3cret",
            "pkcs11:object=k?module-path=/m.so&pin=s3cret",
            "pkcs11:object=k?module-path=/m.so&pin_value=s3cret",
        ] {
            let u = Pkcs11Uri::parse(uri).expect(uri);
            assert!(!u.to_string().contains("s3cret"), "{u}");
            assert!(!format!("{u:?}").contains("s3cret"), "{u:?}");
        }
    }

    #[test]
    fn display_redacts_the_pin_value() {
        let u =
            Pkcs11Uri::parse("pkcs11:token=dev;object=k?module-path=/m.so&pin-value=12%2034&x-a=b")
                .expect("parses");
        assert_eq!(u.pin, Some(PinSource::Value(String::from("12 34").into())));
        let shown = u.to_string();
        assert_eq!(
            shown,
            "pkcs11:token=dev;object=k?module-path=/m.so&pin-value=REDACTED&x-a=b"
        );
        assert!(!format!("{u:?}").contains("12 34"));
        assert!(Pkcs11Uri::is_uri("Pkcs11:x") && !Pkcs11Uri::is_uri("/var/lib/key.pem"));
    }
}
