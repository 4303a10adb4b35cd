//! Reading JSON without allocating: a validating scanner that hands out slices of the input.
//!
//! [`parse`] checks that a whole document is well-formed JSON (RFC 8259), with a nesting limit so
//! a hostile body cannot exhaust the stack, and returns its top value. Objects and arrays stay
//! unparsed slices; [`Value::get`] and [`Value::items`] scan them on demand. ACME bodies are
//! small, so scanning again is cheaper than storing an index.

/// Deepest nesting accepted. ACME objects nest 4 levels at most (problem → subproblems →
/// identifier); the margin is for members the client ignores.
pub const MAX_DEPTH: usize = 16;

/// Why a document was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Not RFC 8259 JSON at octet `at`.
    Syntax { at: usize },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// A JSON value borrowed from the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// The whole object text, braces included.
    Object(&'a [u8]),
    /// The whole array text, brackets included.
    Array(&'a [u8]),
    Str(Str<'a>),
    /// The number's text, as it appears.
    Number(&'a [u8]),
    Bool(bool),
    Null,
}

/// The content of a JSON string between its quotes, escapes still in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Str<'a>(&'a [u8]);

impl<'a> Str<'a> {
    /// The string itself when it has no escapes, which is how servers write URLs, tokens and
    /// status values. `None` when it has escapes: use [`Str::unescape`].
    pub fn plain(&self) -> Option<&'a str> {
        // Not `contains`, which clippy prefers: that is core's memchr, about 200 octets of an
        // MCU image, and nothing else in the client needs it.
        #[allow(clippy::manual_contains)]
        let escaped = self.0.iter().any(|&b| b == b'\\');
        if escaped {
            return None;
        }
        core::str::from_utf8(self.0).ok()
    }

    /// The decoded string, written into `out`.
    pub fn unescape<'o>(&self, out: &'o mut [u8]) -> Result<&'o str, crate::Error> {
        let mut w = crate::text::Writer::new(out);
        let s = self.0;
        let mut i = 0;
        while let Some(&b) = s.get(i) {
            // The previous write is each iteration's last step, so checking here reports an
            // overflow before anything later in the string can fail.
            w.finish()?;
            if b != b'\\' {
                w.byte(b);
                i += 1;
                continue;
            }
            let esc = s.get(i + 1).copied().unwrap_or(0);
            i += 2;
            let c = match esc {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let hi = hex4(s, i).ok_or(crate::Error::BadJson("string escape"))?;
                    i += 4;
                    let code = if (0xd800..0xdc00).contains(&hi) {
                        // A high surrogate must be followed by `\u` and a low one.
                        let lo = match (s.get(i), s.get(i + 1)) {
                            (Some(b'\\'), Some(b'u')) => hex4(s, i + 2),
                            _ => None,
                        }
                        .filter(|lo| (0xdc00..0xe000).contains(lo))
                        .ok_or(crate::Error::BadJson("string escape"))?;
                        i += 6;
                        0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                    } else {
                        hi
                    };
                    char::from_u32(code).ok_or(crate::Error::BadJson("string escape"))?
                }
                _ => return Err(crate::Error::BadJson("string escape")),
            };
            let mut utf8 = [0u8; 4];
            w.str(c.encode_utf8(&mut utf8));
        }
        let out = w.into_written()?;
        core::str::from_utf8(out).map_err(|_| crate::Error::BadJson("string encoding"))
    }
}

fn hex4(s: &[u8], at: usize) -> Option<u32> {
    let digits = s.get(at..at + 4)?;
    let mut v = 0u32;
    for &d in digits {
        v = (v << 4) | char::from(d).to_digit(16)?;
    }
    Some(v)
}

/// Checks that `doc` is exactly one JSON value (with optional whitespace around it) and
/// returns it.
pub fn parse(doc: &[u8]) -> Result<Value<'_>, JsonError> {
    let mut s = Scanner { s: doc, i: 0 };
    s.ws();
    let v = s.value(0)?;
    s.ws();
    if s.i != doc.len() {
        return Err(JsonError::Syntax { at: s.i });
    }
    Ok(v)
}

impl<'a> Value<'a> {
    /// The member `key` of an object (the first, if the object repeats it). `None` for a
    /// missing member or a value that is not an object.
    pub fn get(&self, key: &str) -> Option<Self> {
        let Self::Object(text) = *self else {
            return None;
        };
        let mut s = Scanner { s: text, i: 1 };
        loop {
            s.ws();
            if s.eat(b'}') {
                return None;
            }
            let Ok(Value::Str(k)) = s.value(0) else {
                return None;
            };
            s.ws();
            if !s.eat(b':') {
                return None;
            }
            s.ws();
            let v = s.value(0).ok()?;
            if k.0 == key.as_bytes() {
                return Some(v);
            }
            s.ws();
            s.eat(b',');
        }
    }

    /// The member `key` as a string without escapes.
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::Str(s) => s.plain(),
            _ => None,
        }
    }

    /// The elements of an array (nothing for any other value).
    // Not inlined: 30 octets smaller in the firmware (footprint script).
    #[inline(never)]
    pub fn items(&self) -> Items<'a> {
        match *self {
            Self::Array(text) => Items {
                s: Scanner { s: text, i: 1 },
                done: false,
            },
            _ => Items {
                s: Scanner { s: &[], i: 0 },
                done: true,
            },
        }
    }
}

/// Iterator over an array's elements.
pub struct Items<'a> {
    s: Scanner<'a>,
    done: bool,
}

impl<'a> Iterator for Items<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.done {
            return None;
        }
        self.s.ws();
        if self.s.eat(b']') {
            self.done = true;
            return None;
        }
        let Ok(v) = self.s.value(0) else {
            self.done = true;
            return None;
        };
        self.s.ws();
        self.s.eat(b',');
        Some(v)
    }
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn err(&self) -> JsonError {
        JsonError::Syntax { at: self.i }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let start = self.i;
        match self.peek().ok_or_else(|| self.err())? {
            // Objects and arrays share one loop: an object's members just have a key first.
            open @ (b'{' | b'[') => {
                let object = open == b'{';
                let close = if object { b'}' } else { b']' };
                self.i += 1;
                self.ws();
                if !self.eat(close) {
                    loop {
                        self.ws();
                        if object {
                            if self.peek() != Some(b'"') {
                                return Err(self.err());
                            }
                            self.string()?;
                            self.ws();
                            if !self.eat(b':') {
                                return Err(self.err());
                            }
                            self.ws();
                        }
                        self.value(depth + 1)?;
                        self.ws();
                        if self.eat(close) {
                            break;
                        }
                        if !self.eat(b',') {
                            return Err(self.err());
                        }
                    }
                }
                let text = self.s.get(start..self.i).unwrap_or_default();
                Ok(if object {
                    Value::Object(text)
                } else {
                    Value::Array(text)
                })
            }
            b'"' => self.string().map(Value::Str),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(self.err()),
        }
    }

    fn literal(&mut self, word: &[u8], v: Value<'a>) -> Result<Value<'a>, JsonError> {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err())
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value<'a>, JsonError> {
        let start = self.i;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err()),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.err());
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.err());
            }
        }
        Ok(Value::Number(self.s.get(start..self.i).unwrap_or_default()))
    }

    /// A string starting at the opening quote; checks escapes, control characters and UTF-8.
    fn string(&mut self) -> Result<Str<'a>, JsonError> {
        self.i += 1;
        let start = self.i;
        loop {
            match self.peek().ok_or_else(|| self.err())? {
                b'"' => break,
                b'\\' => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') if hex4(self.s, self.i + 1).is_some() => self.i += 5,
                        _ => return Err(self.err()),
                    }
                }
                0..=0x1f => return Err(self.err()),
                _ => self.i += 1,
            }
        }
        let content = self.s.get(start..self.i).unwrap_or_default();
        if core::str::from_utf8(content).is_err() {
            return Err(JsonError::Syntax { at: start });
        }
        self.i += 1;
        Ok(Str(content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_members_arrays_and_escapes() {
        let doc = br#" {"status":"pending","n":-1.5e3,"ok":true,"x":null,
            "authorizations":["https://a/1", "https://a/2"],
            "identifier":{"type":"dns","value":"a\"b\u00e9\ud83d\ude00"}} "#;
        let v = parse(doc).expect("valid");
        assert_eq!(v.get_str("status"), Some("pending"));
        assert_eq!(v.get("n"), Some(Value::Number(b"-1.5e3")));
        assert_eq!(v.get("ok"), Some(Value::Bool(true)));
        assert_eq!(v.get("x"), Some(Value::Null));
        assert_eq!(v.get("missing"), None);
        let urls: [Option<&str>; 2] = {
            let mut it = v.get("authorizations").expect("array").items();
            let a = it.next().and_then(|v| {
                if let Value::Str(s) = v {
                    s.plain()
                } else {
                    None
                }
            });
            let b = it.next().and_then(|v| {
                if let Value::Str(s) = v {
                    s.plain()
                } else {
                    None
                }
            });
            assert_eq!(it.next(), None);
            [a, b]
        };
        assert_eq!(urls, [Some("https://a/1"), Some("https://a/2")]);
        let ident = v.get("identifier").expect("object");
        let Some(Value::Str(value)) = ident.get("value") else {
            panic!("value")
        };
        assert_eq!(value.plain(), None);
        let mut out = [0u8; 32];
        assert_eq!(value.unescape(&mut out).expect("unescape"), "a\"bé😀");
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\":1,}",
            b"[1,]",
            b"{\"a\" 1}",
            b"01",
            b"1.",
            b"-",
            b"\"\x01\"",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"\"\xff\"",
            b"tru",
            b"{} {}",
            b"{'a':1}",
        ] {
            assert!(parse(bad).is_err(), "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut deep = [b'['; 64];
        deep[63] = b']';
        assert_eq!(parse(&deep), Err(JsonError::TooDeep));
        let ok = b"[[[[[[[[[[]]]]]]]]]]";
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn lone_surrogates_are_refused_on_unescape() {
        let v = parse(br#""\ud83d""#).expect("valid syntax");
        let Value::Str(s) = v else { panic!("string") };
        let mut out = [0u8; 8];
        assert!(s.unescape(&mut out).is_err());
    }
}
