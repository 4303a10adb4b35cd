//! Text from clients and from the store, made safe to print on an operator's terminal.
//!
//! The CLI prints what devices sent (identifiers, source addresses), what the store holds
//! (serials, account ids, reasons, problem details) and what certificates say (subjects). A
//! permanent identifier may hold any character but `/` and the C0 and C1 controls (SPEC
//! §4.5), and stored or file-based records may hold anything, so printed as they are, such
//! strings could move the cursor, rewrite the screen or retitle the window (escape sequences),
//! or reorder what the operator reads (Unicode bidirectional controls: "SN-\u{202e}4321"
//! shows as "SN-1234"). [`escape`] writes each such character as `\u{..}`, Rust's notation,
//! and leaves all other text, including every other non-ASCII character, as it is. JSON
//! output (`--json`) needs none of this: a JSON string escapes the C0 controls and a JSON
//! reader, not a terminal, is its audience.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every C0 control (U+0000–U+001F), DEL, C1 control (U+0080–U+009F) and Unicode
/// bidirectional control (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) written as
/// `\u{hex}`, e.g. U+202E as `\u{202e}`. Borrowed when there is nothing to escape.
///
/// A backslash is left as it is, so the output is for reading, not for parsing back: a
/// string that spells out `\u{202e}` prints the same as one that holds the character.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape`] for a message of several lines: each line is escaped and the line breaks stay,
/// for messages whose line breaks are the program's own (a configuration error quoting the
/// file).
pub fn escape_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

fn is_unsafe(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_other_unicode_are_left_alone() {
        for text in [
            "",
            "SN-0042/1.3.6.1.4.1.32473",
            "Prüfstand Süd – Linie 3",
            "序列号 Ω ✓ 🙂",
            "path\\with\\backslashes",
            "zero\u{200b}width joiner\u{200d} and nbsp\u{a0}",
        ] {
            assert!(matches!(escape(text), Cow::Borrowed(_)), "{text:?}");
            assert_eq!(escape(text), text);
        }
    }

    #[test]
    fn controls_and_bidi_controls_are_escaped() {
        let cases = [
            ("SN-\u{202e}4321", "SN-\\u{202e}4321"),
            (
                "\u{1b}[2J\u{1b}]0;title\u{7}",
                "\\u{1b}[2J\\u{1b}]0;title\\u{7}",
            ),
            ("a\nb\r\tc\0", "a\\u{a}b\\u{d}\\u{9}c\\u{0}"),
            (
                "del\u{7f} csi\u{9b} nel\u{85}",
                "del\\u{7f} csi\\u{9b} nel\\u{85}",
            ),
            ("\u{80}\u{9f}", "\\u{80}\\u{9f}"),
            ("\u{61c}\u{200e}\u{200f}", "\\u{61c}\\u{200e}\\u{200f}"),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}",
                "\\u{202a}\\u{202b}\\u{202c}\\u{202d}\\u{202e}",
            ),
            (
                "\u{2066}x\u{2067}y\u{2068}z\u{2069}",
                "\\u{2066}x\\u{2067}y\\u{2068}z\\u{2069}",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(escape(text), want, "{text:?}");
        }
        // The neighbours of each range stay.
        for c in [
            '\u{20}', '\u{7e}', '\u{a0}', '\u{61b}', '\u{61d}', '\u{200d}', '\u{2029}',
        ] {
            assert_eq!(escape(&c.to_string()), c.to_string(), "{c:?}");
        }
        for c in ['\u{2065}', '\u{206a}', '\u{2010}'] {
            assert_eq!(escape(&c.to_string()), c.to_string(), "{c:?}");
        }
    }

    #[test]
    fn escape_lines_keeps_line_breaks_and_escapes_the_rest() {
        assert_eq!(
            escape_lines("line 1\nline \u{202e}2\r\n\u{1b}[1m"),
            "line 1\nline \\u{202e}2\\u{d}\n\\u{1b}[1m"
        );
    }
}
