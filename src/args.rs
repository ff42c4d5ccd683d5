//! The command-line lexer of both executables (`idrelay`, `idrelay-hub`): what is an
//! option, what is its value, what is a word. Each executable's parser decides what the
//! options mean; the lexing rules are the same for both:
//! * `--name=value` is an option with its value inline; `--name value` takes the next
//!   argument as the value when the parser asks for one ([`Lexer::value`]);
//! * `-x` and `--name` are options; a lone `-` is a word;
//! * after `--` every argument is a word.

/// One lexed argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// `-x`, `--name` or `--name=value`.
    Option {
        /// The option as typed, without any `=value`.
        name: &'a str,
        /// The value after `=`, if one was given that way.
        inline: Option<&'a str>,
    },
    /// Anything else (a command, a DN, ...).
    Word(&'a str),
}

/// Lexes arguments (without the program name), one [`Token`] at a time.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    args: std::slice::Iter<'a, String>,
    words_only: bool,
}

impl<'a> Lexer<'a> {
    /// A lexer over `args`.
    pub fn new(args: &'a [String]) -> Lexer<'a> {
        Lexer {
            args: args.iter(),
            words_only: false,
        }
    }

    /// The value of the option just read: its inline value, or else the next argument.
    /// `None` when neither exists.
    pub fn value(&mut self, inline: Option<&'a str>) -> Option<&'a str> {
        inline.or_else(|| self.args.next().map(String::as_str))
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let a = self.args.next()?.as_str();
        if self.words_only {
            return Some(Token::Word(a));
        }
        if a == "--" {
            self.words_only = true;
            return self.next();
        }
        if !a.starts_with('-') || a == "-" {
            return Some(Token::Word(a));
        }
        Some(match a.split_once('=') {
            Some((name, v)) if name.starts_with("--") => Token::Option {
                name,
                inline: Some(v),
            },
            _ => Token::Option {
                name: a,
                inline: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(a: &[&str]) -> Vec<Token<'static>> {
        let owned: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let leaked: &'static [String] = Box::leak(owned.into_boxed_slice());
        Lexer::new(leaked).collect()
    }

    #[test]
    fn options_words_and_inline_values() {
        use Token::*;
        assert_eq!(
            lex(&["-c", "f", "--log-level=debug", "run", "-", "--x=a=b"]),
            [
                Option {
                    name: "-c",
                    inline: None
                },
                Word("f"),
                Option {
                    name: "--log-level",
                    inline: Some("debug")
                },
                Word("run"),
                Word("-"),
                Option {
                    name: "--x",
                    inline: Some("a=b")
                },
            ]
        );
    }

    #[test]
    fn after_a_double_dash_everything_is_a_word() {
        assert_eq!(
            lex(&["preview", "--", "--not-an-option", "-q"]),
            [
                Token::Word("preview"),
                Token::Word("--not-an-option"),
                Token::Word("-q")
            ]
        );
    }

    #[test]
    fn a_value_is_inline_or_the_next_argument() {
        let args: Vec<String> = ["--config", "a.toml", "--config=b.toml", "--config"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut l = Lexer::new(&args);
        let mut got = Vec::new();
        while let Some(Token::Option { inline, .. }) = l.next() {
            got.push(l.value(inline));
        }
        assert_eq!(got, [Some("a.toml"), Some("b.toml"), None]);
    }
}
