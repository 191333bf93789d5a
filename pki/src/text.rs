//! Text a peer sent, made safe to print or store: one line, no terminal
//! control, no bidi tricks, and a bounded length.
//!
//! Invariants of what [`sanitize`] returns:
//! - No C0 control (U+0000–U+001F), DEL (U+007F), C1 control
//!   (U+0080–U+009F), bidi embedding/override/isolate/mark (U+202A–U+202E,
//!   U+2066–U+2069, U+200E, U+200F, U+061C) or line/paragraph separator
//!   (U+2028, U+2029): line breaks and tabs become one space each, every
//!   other such character is written as a visible `\u{…}` escape (so
//!   `ESC[2J` reads `\u{1b}[2J`). Nothing else is touched.
//! - At most `max_chars` characters of the sanitised text, then, when
//!   something was cut, ` …(N more bytes)` where N counts the bytes of the
//!   input left out. A character (or an escape) is never split.

use std::borrow::Cow;
use std::fmt::Write as _;

/// What becomes of one character.
enum Fate {
    Keep,
    Space,
    Escape,
}

fn fate(c: char) -> Fate {
    match c {
        '\n' | '\r' | '\t' | '\u{2028}' | '\u{2029}' => Fate::Space,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{61c}' => Fate::Escape,
        _ => Fate::Keep,
    }
}

/// `s` made safe to print on one line, at most `max_chars` characters
/// plus the cut marker (see the module invariants).
pub fn sanitize(s: &str, max_chars: usize) -> String {
    sanitize_cow(s, max_chars).into_owned()
}

/// [`sanitize`] without a copy when `s` is already safe and short enough.
pub fn sanitize_cow(s: &str, max_chars: usize) -> Cow<'_, str> {
    let mut chars = 0usize;
    let clean = s.chars().all(|c| {
        chars += 1;
        chars <= max_chars && matches!(fate(c), Fate::Keep)
    });
    if clean {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max_chars.saturating_mul(4)) + 32);
    let mut used = 0usize;
    for (i, c) in s.char_indices() {
        let mut piece = [0u8; 4];
        let escaped;
        let text: &str = match fate(c) {
            Fate::Keep => c.encode_utf8(&mut piece),
            Fate::Space => " ",
            Fate::Escape => {
                escaped = format!("\\u{{{:x}}}", u32::from(c));
                &escaped
            }
        };
        let width = text.chars().count();
        if used + width > max_chars {
            let _ = write!(out, " …({} more bytes)", s.len() - i);
            return Cow::Owned(out);
        }
        used += width;
        out.push_str(text);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1000;

    #[test]
    fn safe_short_text_is_borrowed() {
        for s in [
            "",
            "updated",
            "rolled back: probe failed (503)",
            "héllo wörld ✓ 日本",
        ] {
            assert!(
                matches!(sanitize_cow(s, BIG), Cow::Borrowed(t) if t == s),
                "{s}"
            );
        }
        assert!(matches!(sanitize_cow("abc", 3), Cow::Borrowed("abc")));
        assert!(matches!(sanitize_cow("abcd", 3), Cow::Owned(_)));
    }

    #[test]
    fn terminal_attacks_are_made_visible() {
        let cases = [
            ("\u{1b}[2J\u{1b}[H", "\\u{1b}[2J\\u{1b}[H"),
            ("\u{1b}[31mred\u{1b}[0m", "\\u{1b}[31mred\\u{1b}[0m"),
            // OSC 52: write the operator's clipboard, BEL- and ST-terminated.
            (
                "\u{1b}]52;c;cm0gLXJmIH4=\u{7}",
                "\\u{1b}]52;c;cm0gLXJmIH4=\\u{7}",
            ),
            ("\u{1b}]52;c;eA==\u{1b}\\", "\\u{1b}]52;c;eA==\\u{1b}\\"),
            // 8-bit CSI and OSC (C1), NUL, DEL, backspace over text.
            ("a\u{9b}2Jb\u{9d}0;t\u{9c}", "a\\u{9b}2Jb\\u{9d}0;t\\u{9c}"),
            ("nul\u{0}del\u{7f}", "nul\\u{0}del\\u{7f}"),
            ("ok\u{8}\u{8}NO", "ok\\u{8}\\u{8}NO"),
            // Bidi: "txt.exe" shown as "exe.txt", and isolates and marks.
            ("file\u{202e}txt.exe", "file\\u{202e}txt.exe"),
            (
                "\u{2066}a\u{2069}\u{2067}\u{2068}",
                "\\u{2066}a\\u{2069}\\u{2067}\\u{2068}",
            ),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}",
                "\\u{202a}\\u{202b}\\u{202c}\\u{202d}",
            ),
            ("\u{200e}\u{200f}\u{61c}", "\\u{200e}\\u{200f}\\u{61c}"),
            // Line breaks and tabs become spaces: one line per detail.
            ("two\nlines\r\nand\ttab", "two lines  and tab"),
            ("sep\u{2028}par\u{2029}", "sep par "),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input, BIG), want, "{input:?}");
        }
        // Every C0, DEL and C1 control, one by one.
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let out = sanitize(&format!("x{c}y"), BIG);
            assert!(out.chars().all(|o| !o.is_control()), "{c:?} -> {out:?}");
            assert!(out.starts_with('x') && out.ends_with('y'), "{out:?}");
        }
        // Neighbours of the ranges are left alone.
        assert_eq!(
            sanitize("\u{a0}\u{2065}\u{206a}\u{2010}", BIG),
            "\u{a0}\u{2065}\u{206a}\u{2010}"
        );
    }

    #[test]
    fn escape_sequences_inside_json_strings() {
        // What a hostile updater sends: JSON escapes that decode to CSI/OSC.
        let body = r#"{"status":"error","error":"\u001b[2J\u001b]52;c;ZWNobyBwd25lZA==\u0007\u009b1m done\u202e"}"#;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let error = v["error"].as_str().unwrap();
        assert!(error.contains('\u{1b}'), "serde decodes the escapes");
        let out = sanitize(error, BIG);
        assert_eq!(
            out,
            "\\u{1b}[2J\\u{1b}]52;c;ZWNobyBwd25lZA==\\u{7}\\u{9b}1m done\\u{202e}"
        );
        assert!(
            !out.chars()
                .any(|c| matches!(fate(c), Fate::Escape | Fate::Space))
        );
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_with_a_marker() {
        assert_eq!(sanitize("abcdef", 3), "abc …(3 more bytes)");
        assert_eq!(sanitize("abc", 0), " …(3 more bytes)");
        // Multi-byte characters are never split; N counts bytes.
        assert_eq!(sanitize("ééé", 2), "éé …(2 more bytes)");
        assert_eq!(sanitize("日本語テキスト", 3), "日本語 …(12 more bytes)");
        // An escape that does not fit whole is left out whole.
        assert_eq!(sanitize("ab\u{1b}[2J", 5), "ab …(4 more bytes)");
        assert_eq!(sanitize("ab\u{1b}[2J", 8), "ab\\u{1b} …(3 more bytes)");
        // A huge answer stays bounded.
        let huge = "\u{1b}".repeat(1 << 20);
        let out = sanitize(&huge, 200);
        assert!(out.chars().count() <= 200 + " …(1048576 more bytes)".len());
        assert!(out.ends_with("more bytes)"), "{out}");
        let exact = "x".repeat(200);
        assert_eq!(sanitize(&exact, 200), exact);
    }

    #[test]
    fn any_input_comes_out_safe_and_bounded() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let pool: Vec<char> = (0u32..0x300)
            .chain(0x2000..0x2080)
            .chain([0x61c, 0xfeff, 0x1f600])
            .filter_map(char::from_u32)
            .collect();
        for _ in 0..2000 {
            let len = rng.random_range(0..60);
            let s: String = (0..len)
                .map(|_| pool[rng.random_range(0..pool.len())])
                .collect();
            let max = rng.random_range(0..40);
            let out = sanitize(&s, max);
            let (kept, cut) = match out.rfind(" …(") {
                Some(i) if out.ends_with(" more bytes)") => (&out[..i], true),
                _ => (out.as_str(), false),
            };
            assert!(kept.chars().count() <= max, "{s:?} {max} -> {out:?}");
            assert!(
                kept.chars().all(|c| matches!(fate(c), Fate::Keep)),
                "{s:?} -> {out:?}"
            );
            assert_eq!(cut, out != sanitize(&s, usize::MAX), "{s:?} {max}");
        }
    }
}
