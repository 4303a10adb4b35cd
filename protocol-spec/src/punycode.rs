//! Just enough Punycode (RFC 3492) to tell whether an `xn--` label is a well-formed A-label
//! (SPEC §4.2): decode it, then encode the result and compare. Labels are at most 63 octets, so
//! fixed arrays replace the allocations a general implementation would make.

const BASE: u32 = 36;
const TMIN: u32 = 1;
const TMAX: u32 = 26;
const SKEW: u32 = 38;
const DAMP: u32 = 700;
const INITIAL_BIAS: u32 = 72;
const INITIAL_N: u32 = 0x80;

/// Most code points a 59-octet encoded part can decode to.
pub(crate) const MAX_POINTS: usize = 63;

fn adapt(delta: u32, points: u32, first: bool) -> u32 {
    let mut delta = if first { delta / DAMP } else { delta / 2 };
    delta += delta / points;
    let mut k = 0;
    while delta > ((BASE - TMIN) * TMAX) / 2 {
        delta /= BASE - TMIN;
        k += BASE;
    }
    k + (BASE - TMIN + 1) * delta / (delta + SKEW)
}

// Out of line: 28 octets smaller in the embedded firmware (scripts/embedded-footprint.sh).
#[inline(never)]
fn threshold(k: u32, bias: u32) -> u32 {
    if k <= bias {
        TMIN
    } else if k >= bias + TMAX {
        TMAX
    } else {
        k - bias
    }
}

fn digit_value(c: u8) -> Option<u32> {
    match c {
        b'a'..=b'z' => Some(u32::from(c - b'a')),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 26),
        _ => None,
    }
}

fn digit_char(d: u32) -> u8 {
    // d < 36 by construction.
    if d < 26 {
        b'a' + d as u8
    } else {
        b'0' + (d - 26) as u8
    }
}

/// True if `encoded` (the part of a lower-case label after `xn--`) decodes to a string with at
/// least one non-ASCII scalar value and no control or white-space character, and encodes back
/// to exactly `encoded`.
pub(crate) fn is_canonical(encoded: &[u8]) -> bool {
    let mut points = [0u32; MAX_POINTS];
    let Some(len) = decode(encoded, &mut points) else {
        return false;
    };
    let points = &points[..len];
    if points.iter().all(|&c| c < INITIAL_N) {
        return false;
    }
    if points.iter().any(|&c| control_or_space(c)) {
        return false;
    }
    let mut again = [0u8; MAX_POINTS];
    encode(points, &mut again) == Some(encoded)
}

/// Whether a decoded code point is a control character (Cc) or Unicode White_Space, which no
/// resolver or TLS stack treats alike. Decoding only inserts code points from U+0080 up, so
/// the ASCII ones cannot occur; the rest are listed rather than taken from `char`'s tables,
/// which would cost the embedded firmware about 400 octets.
fn control_or_space(c: u32) -> bool {
    matches!(
        c,
        0x80..=0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000
    )
}

/// RFC 3492 §6.2, failing on overflow, bad digits, truncated input and non-scalar results.
pub(crate) fn decode(input: &[u8], out: &mut [u32; MAX_POINTS]) -> Option<usize> {
    let (basic, rest) = match input.iter().rposition(|&c| c == b'-') {
        Some(d) => (&input[..d], &input[d + 1..]),
        None => (&input[..0], input),
    };
    if basic.len() > MAX_POINTS || !basic.is_ascii() {
        return None;
    }
    for (o, &c) in out.iter_mut().zip(basic) {
        *o = u32::from(c);
    }
    let mut len = basic.len();
    let (mut n, mut i, mut bias) = (INITIAL_N, 0u32, INITIAL_BIAS);
    let mut pos = 0;
    while pos < rest.len() {
        let old_i = i;
        let mut w: u32 = 1;
        let mut k = BASE;
        loop {
            let digit = digit_value(*rest.get(pos)?)?;
            pos += 1;
            i = i.checked_add(digit.checked_mul(w)?)?;
            let t = threshold(k, bias);
            if digit < t {
                break;
            }
            w = w.checked_mul(BASE - t)?;
            k += BASE;
        }
        let count = u32::try_from(len + 1).ok()?;
        bias = adapt(i - old_i, count, old_i == 0);
        n = n.checked_add(i / count)?;
        i %= count;
        if n < INITIAL_N || char::from_u32(n).is_none() || len == MAX_POINTS {
            return None;
        }
        let at = i as usize;
        // Back to front, one at a time: `copy_within` would bring `memmove` (1.5 KiB of
        // compiler_builtins) into microcontroller images for at most 63 code points.
        for j in (at..len).rev() {
            out[j + 1] = out[j];
        }
        out[at] = n;
        len += 1;
        i += 1;
    }
    Some(len)
}

/// RFC 3492 §6.3 into `out`; `None` if it does not fit or overflows.
pub(crate) fn encode<'o>(input: &[u32], out: &'o mut [u8; MAX_POINTS]) -> Option<&'o [u8]> {
    let mut w = 0;
    let mut push = |c: u8, w: &mut usize| -> Option<()> {
        *out.get_mut(*w)? = c;
        *w += 1;
        Some(())
    };
    let mut basic = 0u32;
    for &c in input.iter().filter(|&&c| c < INITIAL_N) {
        push(c as u8, &mut w)?;
        basic += 1;
    }
    let mut handled = basic;
    if basic > 0 {
        push(b'-', &mut w)?;
    }
    let total = u32::try_from(input.len()).ok()?;
    let (mut n, mut delta, mut bias) = (INITIAL_N, 0u32, INITIAL_BIAS);
    while handled < total {
        let m = input.iter().copied().filter(|&c| c >= n).min()?;
        delta = delta.checked_add((m - n).checked_mul(handled + 1)?)?;
        n = m;
        for &c in input {
            if c < n {
                delta = delta.checked_add(1)?;
            }
            if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = threshold(k, bias);
                    if q < t {
                        break;
                    }
                    push(digit_char(t + (q - t) % (BASE - t)), &mut w)?;
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                push(digit_char(q), &mut w)?;
                bias = adapt(delta, handled + 1, handled == basic);
                delta = 0;
                handled += 1;
            }
        }
        delta = delta.checked_add(1)?;
        n = n.checked_add(1)?;
    }
    Some(&out[..w])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listed_code_points_are_cores_controls_and_white_space() {
        for c in INITIAL_N..=0x10FFFF {
            let by_table = char::from_u32(c).is_some_and(|c| c.is_control() || c.is_whitespace());
            assert_eq!(control_or_space(c), by_table, "U+{c:04X}");
        }
    }

    #[test]
    fn known_labels() {
        // RFC 3492 §7.1 style samples, cross-checked with Python's punycode codec.
        assert!(is_canonical(b"bcher-kva")); // bücher
        assert!(is_canonical(b"mnchen-3ya")); // münchen
        assert!(is_canonical(b"ls8h")); // U+1F4A9
        assert!(!is_canonical(b"zz")); // truncated
        assert!(!is_canonical(b"abc-9")); // truncated after the delimiter
        assert!(!is_canonical(b"-abc")); // empty basic part before a delimiter
        assert!(!is_canonical(b"abc-")); // decodes to ASCII only
        assert!(!is_canonical(b"")); // nothing at all
        assert!(!is_canonical(b"99999999999")); // overflows
    }
}
