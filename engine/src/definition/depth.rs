//! How deep a runbook file nests, measured before the TOML parser sees it.
//!
//! The TOML deserializer recurses once per level of nesting, with a frame large enough that
//! some fifty levels overflow the stack of a daemon thread (and abort the daemon). So the text is
//! scanned first — comments and strings skipped, the dotted segments of headers and keys and
//! the open `[`/`{` counted — and a file deeper than [`MAX_TOML_DEPTH`] is refused with its line.
//! The count may overestimate (a dotted key inside an inline table), never underestimate.

/// The deepest nesting of tables and lists a runbook file may have. Loops may nest
/// `MAX_NESTING` (8) deep and take three levels each (`steps`, the step, its `steps`).
pub const MAX_TOML_DEPTH: usize = 32;

/// The line where the text first nests deeper than [`MAX_TOML_DEPTH`], and how deep.
pub(crate) fn too_deep(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut line = 1;
    let mut at_line_start = true;
    // Segments of the current `[table]` header, open brackets/braces in values, and the dots
    // of the key being read.
    let (mut header, mut open, mut key_dots) = (0usize, 0usize, 0usize);
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'\n' => {
                line += 1;
                at_line_start = true;
                key_dots = 0;
                index += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                index += 1;
                continue;
            }
            b'#' => {
                while index < bytes.len() && bytes[index] != b'\n' {
                    index += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                let (end, lines) = skip_string(bytes, index);
                line += lines;
                index = end;
                at_line_start = false;
                continue;
            }
            b'[' if at_line_start && open == 0 => {
                // A table header: count its dotted segments.
                let mut dots = 0;
                index += 1;
                while index < bytes.len() && bytes[index] != b']' && bytes[index] != b'\n' {
                    match bytes[index] {
                        b'.' => dots += 1,
                        b'"' | b'\'' => {
                            index = skip_string(bytes, index).0;
                            continue;
                        }
                        _ => {}
                    }
                    index += 1;
                }
                header = dots + 1;
                if header > MAX_TOML_DEPTH {
                    return Some((line, header));
                }
                while index < bytes.len() && bytes[index] == b']' {
                    index += 1;
                }
                at_line_start = false;
                continue;
            }
            b'[' | b'{' => {
                open += 1;
                key_dots = 0;
            }
            b']' | b'}' => {
                open = open.saturating_sub(1);
                key_dots = 0;
            }
            b',' => key_dots = 0,
            b'.' => key_dots += 1,
            b'=' => key_dots = 0,
            _ => {}
        }
        let level = header + open + key_dots + 1;
        if level > MAX_TOML_DEPTH {
            return Some((line, level));
        }
        at_line_start = false;
        index += 1;
    }
    None
}

/// Skips the string starting at `start` (basic or literal, single- or multi-line); where it
/// ends and how many line breaks it held. An unterminated string runs to the end (the parser
/// reports it).
fn skip_string(bytes: &[u8], start: usize) -> (usize, usize) {
    let quote = bytes[start];
    let triple = bytes.get(start..start + 3) == Some(&[quote, quote, quote][..]);
    let mut index = start + if triple { 3 } else { 1 };
    let mut lines = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'\\' && quote == b'"' {
            index += 2;
            continue;
        }
        if byte == b'\n' {
            if !triple {
                return (index, lines);
            }
            lines += 1;
        }
        if byte == quote {
            if !triple {
                return (index + 1, lines);
            }
            if bytes.get(index..index + 3) == Some(&[quote, quote, quote][..]) {
                // Up to two more quotes may belong to the string (`""""` ends with one).
                let mut end = index + 3;
                while end < bytes.len() && bytes[end] == quote && end < index + 5 {
                    end += 1;
                }
                return (end, lines);
            }
        }
        index += 1;
    }
    (index, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_headers_inline_values_and_dotted_keys_but_not_strings_or_comments() {
        assert_eq!(too_deep("name = \"x\"\n[[steps]]\nid = \"a\"\n"), None);
        let headers = format!("[{}]\n", vec!["a"; 40].join("."));
        assert_eq!(too_deep(&headers), Some((1, 40)));
        let inline = format!("x = {}1{}\n", "[".repeat(40), "]".repeat(40));
        assert_eq!(too_deep(&inline).map(|(line, _)| line), Some(1));
        let dotted = format!("\n{} = 1\n", vec!["k"; 40].join("."));
        assert_eq!(too_deep(&dotted).map(|(line, _)| line), Some(2));
        let quoted = format!(
            "x = \"{}\" # {}\ny = '''\n{}'''\n",
            "[".repeat(99),
            "{".repeat(99),
            "[".repeat(99)
        );
        assert_eq!(too_deep(&quoted), None);
        let floats = format!("x = [{}]\n", vec!["1.5"; 100].join(", "));
        assert_eq!(too_deep(&floats), None);
    }
}
