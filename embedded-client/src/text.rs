//! Fixed-capacity text, for the URLs and nonces the client keeps between requests.

use crate::Error;

/// Up to `N` octets of UTF-8 text stored inline.
#[derive(Clone, Copy)]
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }

    /// Copies `s`; too long is an error, never a truncation.
    pub fn copy_from(s: &str) -> Result<Self, Error> {
        let mut t = Self::new();
        t.push(s)?;
        Ok(t)
    }

    pub fn push(&mut self, s: &str) -> Result<(), Error> {
        let end = self.len + s.len();
        let dst = self
            .buf
            .get_mut(self.len..end)
            .ok_or(Error::BufferTooSmall { needed: end })?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }

    /// Replaces the text with `s`; too long is an error, and leaves the text as it was.
    pub fn set(&mut self, s: &str) -> Result<(), Error> {
        if s.len() > N {
            return Err(Error::BufferTooSmall { needed: s.len() });
        }
        self.clear();
        self.push(s)
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever pushed, so this is always valid UTF-8.
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> PartialEq<str> for Text<N> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// `S` texts sharing one `N`-octet store, each at most `MAX` octets: the enrollment keeps a dozen
/// server paths of a few dozen octets each, and a fixed-size buffer per path cost over a
/// kilobyte of RAM for room no server uses. Text `i` lies right after text `i - 1`; setting
/// one moves those that follow it.
#[derive(Clone, Copy)]
pub(crate) struct Texts<const N: usize, const S: usize, const MAX: usize> {
    buf: [u8; N],
    /// Where each text ends (`u16`: the store is far smaller than 64 KiB).
    ends: [u16; S],
}

impl<const N: usize, const S: usize, const MAX: usize> Texts<N, S, MAX> {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; N],
            ends: [0; S],
        }
    }

    fn range(&self, i: usize) -> core::ops::Range<usize> {
        let start = match i.checked_sub(1) {
            Some(p) => self.ends.get(p).copied().unwrap_or(0),
            None => 0,
        };
        usize::from(start)..usize::from(self.ends.get(i).copied().unwrap_or(0))
    }

    pub(crate) fn get(&self, i: usize) -> &str {
        // Only whole `&str`s are ever stored, so this is always valid UTF-8.
        core::str::from_utf8(self.buf.get(self.range(i)).unwrap_or_default()).unwrap_or_default()
    }

    /// Replaces text `i` with `s`; longer than `MAX`, or no room left, is an error and leaves
    /// every text as it was.
    pub(crate) fn set(&mut self, i: usize, s: &str) -> Result<(), Error> {
        let old = self.range(i);
        let used = usize::from(self.ends.last().copied().unwrap_or(0));
        let total = used - old.len() + s.len();
        if i >= S || s.len() > MAX || total > N {
            return Err(Error::BufferTooSmall { needed: total });
        }
        let new_end = old.start + s.len();
        if new_end <= old.end {
            move_down(&mut self.buf, old.end..used, new_end);
        } else {
            // Moving up, so from the top down, not to overwrite what is still to be moved.
            let shift = new_end - old.end;
            for from in (old.end..used).rev() {
                if let Some(&b) = self.buf.get(from) {
                    if let Some(to) = self.buf.get_mut(from + shift) {
                        *to = b;
                    }
                }
            }
        }
        if let Some(dst) = self.buf.get_mut(old.start..new_end) {
            dst.copy_from_slice(s.as_bytes());
        }
        for end in self.ends.iter_mut().skip(i) {
            // Both fit in u16: they are at most N, checked above.
            *end = (usize::from(*end) + new_end - old.end) as u16;
        }
        Ok(())
    }
}

/// Moves `buf[src]` down to start at `dst` (`dst <= src.start`); out-of-range parts are left
/// alone. An octet loop instead of `copy_within`: that one is `memmove`, which is 1.5 KiB of
/// compiler_builtins on a Cortex-M, to move a few kilobytes once per request.
pub(crate) fn move_down(buf: &mut [u8], src: core::ops::Range<usize>, dst: usize) {
    for (i, from) in src.enumerate() {
        if let Some(&b) = buf.get(from) {
            if let Some(to) = buf.get_mut(dst + i) {
                *to = b;
            }
        }
    }
}

/// Appends to a caller buffer; fails instead of truncating.
///
/// A write that does not fit is not made and leaves the writer failed: later writes do
/// nothing, and [`Writer::finish`] reports the first failure (what the first failed write
/// needed, or what [`Writer::fail`] recorded). One check at the end instead of one per write:
/// requests and the CSR are written in dozens of pieces, and each `?` on a
/// `Result<(), Error>` costs code on a Cortex-M.
pub(crate) struct Writer<'o> {
    buf: &'o mut [u8],
    len: usize,
    error: Option<Error>,
}

impl<'o> Writer<'o> {
    // A call is smaller than the three field stores at each of the ~15 call sites: 54 octets
    // in the firmware (footprint script).
    #[inline(never)]
    pub(crate) fn new(buf: &'o mut [u8]) -> Self {
        Self {
            buf,
            len: 0,
            error: None,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let end = self.len + bytes.len();
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len = end;
            }
            None => self.fail(Error::BufferTooSmall { needed: end }),
        }
    }

    /// Records a failure of what is being written; the first one is what [`Writer::finish`]
    /// reports.
    pub(crate) fn fail(&mut self, e: Error) {
        self.error.get_or_insert(e);
    }

    /// Replaces `range` of what was written with `bytes`, which are no longer, and moves what
    /// follows down to close the gap.
    pub(crate) fn replace(&mut self, range: core::ops::Range<usize>, bytes: &[u8]) {
        let Some(gap) = range.len().checked_sub(bytes.len()) else {
            return self.fail(Error::BufferTooSmall { needed: 0 });
        };
        if self.error.is_some() || range.end > self.len {
            return;
        }
        let to = range.start + bytes.len();
        move_down(self.buf, range.end..self.len, to);
        if let Some(dst) = self.buf.get_mut(range.start..to) {
            dst.copy_from_slice(bytes);
        }
        self.len -= gap;
    }

    pub(crate) fn str(&mut self, s: &str) {
        self.push(s.as_bytes());
    }

    pub(crate) fn byte(&mut self, b: u8) {
        self.push(&[b]);
    }

    /// A decimal number, without `core::fmt` (which costs flash on small targets). `usize`, not
    /// `u64`: on a 32-bit MCU a 64-bit division pulls about 900 octets of compiler_builtins.
    pub(crate) fn decimal(&mut self, mut n: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    /// base64url of `bytes` (RFC 4648 §5, no padding).
    pub(crate) fn base64url(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let rest = self.buf.get_mut(self.len..).unwrap_or_default();
        match protocol_spec::base64url::encode(bytes, rest) {
            Ok(written) => self.len += written.len(),
            Err(e) => self.fail(Error::BufferTooSmall {
                needed: self.len + e.needed,
            }),
        }
    }

    /// `s` as the content of a JSON string (RFC 8259 §7): quotes, backslashes and control
    /// characters escaped.
    pub(crate) fn json_str(&mut self, s: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in s.as_bytes() {
            match b {
                b'"' => self.push(b"\\\""),
                b'\\' => self.push(b"\\\\"),
                0..=0x1f => self.push(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]),
                _ => self.byte(b),
            }
        }
    }

    /// Where the next write goes: for marking parts of the output. Not a result, as it ignores
    /// a failed write: that is [`Writer::finish`].
    pub(crate) fn offset(&self) -> usize {
        self.len
    }

    pub(crate) fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// The length written, or the first failure.
    pub(crate) fn finish(&self) -> Result<usize, Error> {
        match self.error {
            None => Ok(self.len),
            Some(e) => Err(e),
        }
    }

    pub(crate) fn into_written(self) -> Result<&'o mut [u8], Error> {
        let n = self.finish()?;
        Ok(&mut self.buf[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_move_their_neighbours_and_refuse_what_does_not_fit() {
        let mut t = Texts::<16, 3, 8>::new();
        t.set(1, "bbb").expect("fits");
        t.set(0, "a").expect("fits");
        t.set(2, "cc").expect("fits");
        t.set(1, "bbbbbbb").expect("grows");
        assert_eq!([t.get(0), t.get(1), t.get(2)], ["a", "bbbbbbb", "cc"]);
        t.set(0, "").expect("shrinks");
        t.set(1, "b").expect("shrinks");
        assert_eq!([t.get(0), t.get(1), t.get(2)], ["", "b", "cc"]);
        // Too long for one text, for the store, or no such text: nothing changes.
        assert!(t.set(0, "aaaaaaaaa").is_err());
        t.set(0, "aaaaaaaa").expect("fits");
        t.set(2, "cccccc").expect("fits: 8 + 1 + 6");
        assert!(t.set(1, "bbb").is_err());
        assert!(t.set(3, "").is_err());
        assert_eq!([t.get(0), t.get(1), t.get(2)], ["aaaaaaaa", "b", "cccccc"]);
        assert_eq!(t.get(3), "");
    }

    #[test]
    fn text_refuses_instead_of_truncating() {
        let mut t = Text::<4>::copy_from("abc").expect("test");
        assert_eq!(t.push("de"), Err(Error::BufferTooSmall { needed: 5 }));
        assert_eq!(t.as_str(), "abc");
    }

    #[test]
    fn move_down_moves_overlapping_ranges_and_ignores_what_is_outside() {
        let mut buf = *b"..abcdef";
        move_down(&mut buf, 2..8, 0);
        assert_eq!(&buf, b"abcdefef");
        move_down(&mut buf, 6..12, 5);
        assert_eq!(&buf, b"abcdeeff");
    }

    #[test]
    fn writer_reports_the_first_write_that_did_not_fit_and_writes_nothing_after() {
        let mut buf = [0u8; 4];
        let mut w = Writer::new(&mut buf);
        w.str("abc");
        w.str("de");
        w.byte(b'f');
        w.base64url(b"x");
        assert_eq!(w.offset(), 3);
        assert_eq!(w.finish(), Err(Error::BufferTooSmall { needed: 5 }));
        assert_eq!(w.into_written(), Err(Error::BufferTooSmall { needed: 5 }));
        let mut w = Writer::new(&mut buf);
        w.str("ab");
        w.base64url(b"xyz");
        assert_eq!(w.finish(), Err(Error::BufferTooSmall { needed: 6 }));
    }

    #[test]
    fn writer_escapes_json_and_writes_numbers() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        w.json_str("a\"b\\c\n");
        w.byte(b' ');
        w.decimal(0);
        w.byte(b' ');
        w.decimal(usize::MAX);
        w.finish().expect("test");
        let max = if usize::BITS == 64 {
            "18446744073709551615"
        } else {
            "4294967295"
        };
        let written = core::str::from_utf8(w.written()).expect("test");
        assert_eq!(written.strip_suffix(max), Some("a\\\"b\\\\c\\u000a 0 "));
    }
}
