//! Input checks that do not need the store: owners, keys, display names.
//!
//! Nothing a user sends ever becomes a path on disk — packs are named by number — but names are
//! shown to people and put into headers, so they are sanitised here once.

use crate::error::{Error, Result};

/// Longest display name kept, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest owner or category, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

fn is_unsafe_char(c: char) -> bool {
    c.is_control() || is_invisible(c)
}

/// Characters that render as nothing, or reorder what is around them: Unicode's
/// Default_Ignorable_Code_Point set and every format character (general category Cf; the Bidi
/// controls are among them). Bidi overrides, isolates and marks can disguise an extension
/// ("txt.exe" shown as "exe.txt"); zero-width and filler characters make two names that look
/// the same differ. The ranges are stable across Unicode versions (new ones would land in the
/// reserved blocks listed, E0000..E0FFF included).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'                       // soft hyphen
            | '\u{034f}'                 // combining grapheme joiner
            | '\u{0600}'..='\u{0605}'   // Arabic number signs
            | '\u{061c}'                 // Arabic letter mark (Bidi_Control)
            | '\u{06dd}'
            | '\u{070f}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08e2}'
            | '\u{115f}'..='\u{1160}'   // Hangul fillers
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'   // Mongolian selectors and vowel separator
            | '\u{200b}'..='\u{200f}'   // zero-width space, joiners, LRM, RLM
            | '\u{202a}'..='\u{202e}'   // embeddings and overrides
            | '\u{2060}'..='\u{206f}'   // word joiner, invisible operators, isolates
            | '\u{2800}'                 // braille blank
            | '\u{3164}'                 // Hangul filler
            | '\u{fe00}'..='\u{fe0f}'   // variation selectors
            | '\u{feff}'                 // zero-width no-break space (BOM)
            | '\u{ffa0}'                 // halfwidth Hangul filler
            | '\u{fff0}'..='\u{fffb}'   // unassigned specials, interlinear annotation
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}' // Egyptian hieroglyph format controls
            | '\u{1bca0}'..='\u{1bca3}' // shorthand format controls
            | '\u{1d173}'..='\u{1d17a}' // musical symbol format controls
            | '\u{e0000}'..='\u{e0fff}' // tags, variation selectors supplement
    )
}

/// Checks an owner or category label: non-empty, short, no control characters.
pub fn check_label(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_LABEL_BYTES || value.chars().any(is_unsafe_char) {
        return Err(Error::InvalidInput(format!(
            "{what} must be 1 to {MAX_LABEL_BYTES} bytes without control characters, got {value:?}"
        )));
    }
    Ok(())
}

/// Checks a user key: a path-like name, unique per owner. It is only ever a lookup key.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(is_unsafe_char) {
        return Err(Error::InvalidInput(format!(
            "key must be 1 to {MAX_KEY_BYTES} bytes without control characters, got {key:?}"
        )));
    }
    Ok(())
}

/// Longest extension kept, in bytes; a longer one is cut.
pub const MAX_EXT_BYTES: usize = 32;

/// Turns whatever a client called a file into a safe display name: the last path component,
/// without control or bidi characters, without `..`, at most [`MAX_NAME_BYTES`], extension in
/// lower case and at most [`MAX_EXT_BYTES`]. Never empty, and a fixed point: sanitising a
/// sanitised name changes nothing.
pub fn sanitize_display_name(original: &str) -> String {
    let last = original
        .rsplit(['/', '\\'])
        .find(|s| !s.trim().is_empty())
        .unwrap_or("");
    let mut name = String::with_capacity(last.len());
    for c in last.chars() {
        if is_unsafe_char(c) || c == ':' {
            continue;
        }
        // Collapse runs of dots so ".." can never appear.
        if c == '.' && name.ends_with('.') {
            continue;
        }
        name.push(c);
    }
    let name = name.trim_matches(is_edge_junk);
    if name.is_empty() {
        return "file".to_string();
    }

    let (stem, ext) = match name.rfind('.') {
        // Lower-casing can lengthen a character, so the cut comes after it.
        Some(i) => (&name[..i], name[i + 1..].to_lowercase()),
        None => (name, String::new()),
    };
    let ext = cut_at_char_boundary(&ext, MAX_EXT_BYTES).trim_end_matches(is_edge_junk);
    let ext_part = if ext.is_empty() {
        String::new()
    } else {
        format!(".{ext}")
    };
    let reserved = [
        "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "lpt1", "lpt2", "lpt3",
    ];
    let stem = if reserved.contains(&stem.to_lowercase().as_str()) {
        format!("_{stem}")
    } else {
        stem.to_string()
    };
    // The stem starts with a visible character (the edges were trimmed and the extension is
    // short), so the cut keeps at least that one; trimming the cut's end keeps "x." + ".ext"
    // from forming "..".
    let stem =
        cut_at_char_boundary(&stem, MAX_NAME_BYTES - ext_part.len()).trim_end_matches(is_edge_junk);
    format!("{stem}{ext_part}")
}

/// Dots and white space are trimmed from the ends of names and their parts.
fn is_edge_junk(c: char) -> bool {
    c == '.' || c.is_whitespace()
}

fn cut_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_bidi_control_and_invisible_character_is_stripped() {
        // Bidi_Control (UAX #9) in full, then a sample of other invisible characters.
        let bidi = [
            '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}',
            '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ];
        let invisible = [
            '\u{00ad}',
            '\u{200b}',
            '\u{200d}',
            '\u{2060}',
            '\u{2064}',
            '\u{feff}',
            '\u{3164}',
            '\u{ffa0}',
            '\u{fe0f}',
            '\u{e0041}',
            '\u{1d173}',
            '\u{0600}',
        ];
        for c in bidi.into_iter().chain(invisible) {
            let name = format!("inv{c}oice{c}.pdf{c}");
            assert_eq!(
                sanitize_display_name(&name),
                "invoice.pdf",
                "U+{:04X}",
                c as u32
            );
            assert!(
                check_key(&format!("docs/{c}a.txt")).is_err(),
                "U+{:04X}",
                c as u32
            );
        }
        // Visible non-ASCII stays.
        assert_eq!(
            sanitize_display_name("Größe é 東京.PDF"),
            "Größe é 東京.pdf"
        );
    }

    #[test]
    fn hostile_names_are_defused() {
        assert_eq!(sanitize_display_name("../../etc/passwd"), "passwd");
        assert_eq!(
            sanitize_display_name("C:\\Users\\x\\Report.PDF"),
            "Report.pdf"
        );
        assert_eq!(sanitize_display_name(".."), "file");
        assert_eq!(sanitize_display_name(""), "file");
        assert_eq!(sanitize_display_name("a..b.TXT"), "a.b.txt");
        assert_eq!(sanitize_display_name("evil\u{202e}gpj.exe"), "evilgpj.exe");
        assert_eq!(sanitize_display_name("new\nline\0.txt"), "newline.txt");
        assert_eq!(sanitize_display_name(".bashrc"), "bashrc");
        assert_eq!(sanitize_display_name("CON.txt"), "_CON.txt");
        let long = format!("{}.JPEG", "é".repeat(300));
        let s = sanitize_display_name(&long);
        assert!(s.len() <= MAX_NAME_BYTES && s.ends_with(".jpeg"), "{s}");
        // The cut of a long stem lands just after a dot: no ".." may form with the extension.
        let cut_at_dot = format!("{}.{}.TXT", "x".repeat(250), "y".repeat(10));
        assert_eq!(
            sanitize_display_name(&cut_at_dot),
            format!("{}.txt", "x".repeat(250))
        );
        // Extensions are cut too, after lower-casing (which can lengthen a character).
        let long_ext = format!("a.{}", "\u{23a}".repeat(40));
        let s = sanitize_display_name(&long_ext);
        assert_eq!(s, format!("a.{}", "\u{2c65}".repeat(MAX_EXT_BYTES / 3)));
        assert_eq!(sanitize_display_name(" . a \u{2003}. "), "a");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn sanitised_names_are_always_safe(name in ".{0,400}") {
            let s = sanitize_display_name(&name);
            prop_assert!(!s.is_empty());
            prop_assert!(s.len() <= MAX_NAME_BYTES);
            prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains(".."));
            prop_assert!(!s.chars().any(is_unsafe_char));
            prop_assert_eq!(sanitize_display_name(&s), s.clone());
        }
    }

    #[test]
    fn labels_and_keys_are_checked() {
        assert!(check_label("owner", "alice").is_ok());
        assert!(check_label("owner", "").is_err());
        assert!(check_label("owner", "a\tb").is_err());
        assert!(check_key("photos/2026/a.jpg").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }
}
