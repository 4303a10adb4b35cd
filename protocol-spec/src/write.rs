//! A cursor over a caller's buffer, shared by the helpers that build text.

use crate::BufferTooSmall;

/// Appends to `buf` from the front; fails instead of truncating.
pub(crate) struct Cursor<'o> {
    buf: &'o mut [u8],
    len: usize,
}

impl<'o> Cursor<'o> {
    pub(crate) fn new(buf: &'o mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), BufferTooSmall> {
        let end = self.len + bytes.len();
        let Some(dst) = self.buf.get_mut(self.len..end) else {
            return Err(BufferTooSmall { needed: end });
        };
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    pub(crate) fn written(self) -> &'o [u8] {
        &self.buf[..self.len]
    }

    /// The written part as text. Every caller writes ASCII only, so the conversion cannot fail;
    /// the empty fallback only exists to avoid a panic path.
    pub(crate) fn written_str(self) -> &'o str {
        ascii(self.written())
    }
}

impl core::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.push(s.as_bytes()).map_err(|_| core::fmt::Error)
    }
}

/// `bytes` as `&str`; the helpers only ever produce ASCII.
pub(crate) fn ascii(bytes: &[u8]) -> &str {
    core::str::from_utf8(bytes).unwrap_or_default()
}
