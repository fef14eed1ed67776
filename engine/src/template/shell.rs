//! Quoting template values into a shell command (`sh -c`), for the place each value stands.
//!
//! A command is literal text (written by the runbook's author, trusted) with values (params,
//! outputs: data, never code) in it. [`assemble`] reads the literal text the way a POSIX shell
//! does and quotes each value for its context, so that the shell sees exactly the value as one
//! piece of text:
//!
//! - outside quotes: `'value'` (POSIX single quotes; a `'` in it becomes `'\''`);
//! - inside the author's single quotes (`'{{ x }}'`): the value, each `'` as `'\''`;
//! - inside the author's double quotes (`"{{ x }}"`): the value with `\`, `"`, `$` and `` ` ``
//!   escaped by a backslash;
//! - in `$( ... )`: as outside quotes, at any depth.
//!
//! Where the shell's reading cannot be followed safely, the command is refused rather than
//! guessed: a value inside backquotes, in a comment, right after a backslash, or anywhere after
//! a here-document (`<<`). Such a command should pass its values through `env` or an argv list.

/// A piece of a command: literal text or a value to quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Literal(&'a str),
    Value(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Outside quotes; `depth` counts open parentheses of a `$(` (0 at top level).
    Unquoted {
        nested: bool,
        depth: u32,
    },
    Single,
    Double,
    Backquote,
    Comment {
        nested: bool,
        depth: u32,
    },
}

/// POSIX single quoting: the result is one word whose text is exactly `value`.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The command of `pieces`, each value quoted for where it stands (see the module doc).
pub fn assemble(pieces: &[Piece<'_>]) -> Result<String, String> {
    let mut out = String::new();
    let mut stack = vec![Context::Unquoted {
        nested: false,
        depth: 0,
    }];
    let mut escaped = false;
    let mut here_document = false;
    // The last character written, to know where words start (`#` only starts a comment there).
    let mut previous: Option<char> = None;
    for piece in pieces {
        match piece {
            Piece::Value(value) => {
                let context = *stack.last().unwrap_or(&Context::Single);
                if escaped {
                    return Err("a template value right after a backslash cannot be quoted; remove the backslash".to_owned());
                }
                if here_document {
                    return Err("a template value after a here-document (`<<`) cannot be quoted; pass it through `env` instead".to_owned());
                }
                match context {
                    Context::Unquoted { .. } => out.push_str(&quote(value)),
                    Context::Single => out.push_str(&value.replace('\'', r"'\''")),
                    Context::Double => {
                        for ch in value.chars() {
                            if matches!(ch, '\\' | '"' | '$' | '`') {
                                out.push('\\');
                            }
                            out.push(ch);
                        }
                    }
                    Context::Backquote => {
                        return Err("a template value inside backquotes cannot be quoted; use $( ... ) instead".to_owned())
                    }
                    Context::Comment { .. } => {
                        return Err("a template value in a shell comment cannot be quoted; remove it from the comment".to_owned())
                    }
                }
                previous = Some('a');
            }
            Piece::Literal(text) => {
                let mut chars = text.chars().peekable();
                while let Some(ch) = chars.next() {
                    out.push(ch);
                    if escaped {
                        escaped = false;
                        previous = Some(ch);
                        continue;
                    }
                    let top = stack.len() - 1;
                    match stack[top] {
                        Context::Unquoted { nested, depth } => match ch {
                            '\\' => escaped = true,
                            '\'' => stack.push(Context::Single),
                            '"' => stack.push(Context::Double),
                            '`' => stack.push(Context::Backquote),
                            '#' if previous.is_none_or(|before| {
                                before.is_whitespace() || ";&|()".contains(before)
                            }) =>
                            {
                                stack[top] = Context::Comment { nested, depth }
                            }
                            '$' if chars.peek() == Some(&'(') => {
                                if let Some(open) = chars.next() {
                                    out.push(open);
                                }
                                stack.push(Context::Unquoted {
                                    nested: true,
                                    depth: 0,
                                });
                            }
                            '(' => {
                                stack[top] = Context::Unquoted {
                                    nested,
                                    depth: depth + 1,
                                }
                            }
                            ')' if depth > 0 => {
                                stack[top] = Context::Unquoted {
                                    nested,
                                    depth: depth - 1,
                                }
                            }
                            ')' if nested => {
                                stack.pop();
                            }
                            '<' if chars.peek() == Some(&'<') => here_document = true,
                            _ => {}
                        },
                        Context::Single => {
                            if ch == '\'' {
                                stack.pop();
                            }
                        }
                        Context::Double => match ch {
                            '\\' => escaped = true,
                            '"' => {
                                stack.pop();
                            }
                            '`' => stack.push(Context::Backquote),
                            '$' if chars.peek() == Some(&'(') => {
                                if let Some(open) = chars.next() {
                                    out.push(open);
                                }
                                stack.push(Context::Unquoted {
                                    nested: true,
                                    depth: 0,
                                });
                            }
                            _ => {}
                        },
                        Context::Backquote => match ch {
                            '\\' => escaped = true,
                            '`' => {
                                stack.pop();
                            }
                            _ => {}
                        },
                        Context::Comment { nested, depth } => {
                            if ch == '\n' {
                                stack[top] = Context::Unquoted { nested, depth };
                            }
                        }
                    }
                    previous = Some(ch);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const HOSTILE: &[&str] = &[
        "plain",
        "",
        "x; touch pwned",
        "$(touch pwned)",
        "`touch pwned`",
        "x\ntouch pwned",
        "'; touch pwned; '",
        "\"; touch pwned; \"",
        "a'b\"c\\d$HOME ${HOME} !x * ? [a] ~ # &",
        "\\",
        "'",
        "\"",
    ];

    /// What `sh -c` prints for `printf '%s|' <command words>`.
    fn shell(command: &str) -> String {
        let output = Command::new("sh")
            .args(["-c", &format!("printf '%s|' {command}")])
            .output()
            .expect("sh");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn check(before: &str, after: &str, value: &str, expect: &str) {
        let command = assemble(&[
            Piece::Literal(before),
            Piece::Value(value),
            Piece::Literal(after),
        ])
        .unwrap_or_else(|error| panic!("{before}{{{{ x }}}}{after}: {error}"));
        assert_eq!(shell(&command), expect, "{command}");
    }

    #[test]
    fn a_value_arrives_literally_wherever_it_stands() {
        for value in HOSTILE {
            check("", "", value, &format!("{value}|"));
            check("'", "'", value, &format!("{value}|"));
            check("\"", "\"", value, &format!("{value}|"));
            check("a", "b", value, &format!("a{value}b|"));
            check("'<", ">'", value, &format!("<{value}>|"));
            check("\"$(printf '%s' ", ")\"", value, &format!("{value}|"));
            check("\"$(printf '%s' \"", "\")\"", value, &format!("{value}|"));
            check("'x' \"y\" ", " z", value, &format!("x|y|{value}|z|"));
        }
    }

    #[test]
    fn contexts_that_cannot_be_followed_are_refused() {
        for (before, after) in [
            ("`echo ", "`"),
            ("\\", ""),
            ("cat <<EOF\n", "\nEOF"),
            ("true # ", ""),
            ("\"`echo ", "`\""),
        ] {
            let result = assemble(&[
                Piece::Literal(before),
                Piece::Value("x"),
                Piece::Literal(after),
            ]);
            assert!(result.is_err(), "{before:?} {after:?}: {result:?}");
        }
        // A `#` inside a word is not a comment.
        check("a#", "", "b c", "a#b c|");
    }
}
