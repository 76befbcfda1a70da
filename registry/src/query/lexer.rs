//! The tokens of the query language, each with the column (1-based, in characters) where it
//! starts, so that errors can point at the place.
use super::QueryError;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A bare word: a name, a keyword (AND, OR, IN, NOT, LIKE, ASC, DESC) or `current`.
    Word(String),
    /// A name in backticks or double quotes.
    Quoted(String),
    /// A string literal in single quotes (`''` is a quote inside it).
    Str(String),
    /// A number, with its text as written.
    Num(f64, String),
    Dot,
    Comma,
    LParen,
    RParen,
    /// `=`, `!=` (or `<>`), `<`, `<=`, `>`, `>=`.
    Op(&'static str),
    End,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Quoted(q) => format!("name \"{q}\""),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Num(_, text) => format!("number {text}"),
            Tok::Dot => "'.'".into(),
            Tok::Comma => "','".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Op(op) => format!("'{op}'"),
            Tok::End => "the end".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    /// 1-based character column.
    pub col: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '/' | '-')
}

pub fn lex(input: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |col: usize, message: String| QueryError::new(input, col, message);
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '.' if !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => Some(Tok::Dot),
            ',' => Some(Tok::Comma),
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            _ => None,
        };
        if let Some(tok) = single {
            out.push(Token { tok, col });
            i += 1;
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let op = match two.as_str() {
            "!=" | "<>" => Some(("!=", 2)),
            "<=" => Some(("<=", 2)),
            ">=" => Some((">=", 2)),
            "==" => Some(("=", 2)),
            _ => match c {
                '=' => Some(("=", 1)),
                '<' => Some(("<", 1)),
                '>' => Some((">", 1)),
                _ => None,
            },
        };
        if let Some((op, len)) = op {
            out.push(Token {
                tok: Tok::Op(op),
                col,
            });
            i += len;
            continue;
        }
        match c {
            '\'' | '`' | '"' => {
                let mut text = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => {
                            let what = if c == '\'' { "string" } else { "quoted name" };
                            return Err(err(col, format!("unterminated {what} starting")));
                        }
                        Some(&q) if q == c => {
                            if chars.get(j + 1) == Some(&c) {
                                text.push(c);
                                j += 2;
                            } else {
                                j += 1;
                                break;
                            }
                        }
                        Some(&other) => {
                            text.push(other);
                            j += 1;
                        }
                    }
                }
                let tok = if c == '\'' {
                    Tok::Str(text)
                } else {
                    if text.is_empty() {
                        return Err(err(col, "empty quoted name".into()));
                    }
                    Tok::Quoted(text)
                };
                out.push(Token { tok, col });
                i = j;
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+' || c == '.')
                    && chars
                        .get(i + 1)
                        .is_some_and(|d| d.is_ascii_digit() || *d == '.')) =>
            {
                let mut j = i + 1;
                while j < chars.len() {
                    let d = chars[j];
                    let exponent_sign = (d == '-' || d == '+') && matches!(chars[j - 1], 'e' | 'E');
                    if d.is_ascii_alphanumeric() || d == '.' || exponent_sign {
                        j += 1;
                    } else {
                        break;
                    }
                }
                let text: String = chars[i..j].iter().collect();
                let value: f64 = text
                    .parse()
                    .map_err(|_| err(col, format!("'{text}' is not a number")))?;
                out.push(Token {
                    tok: Tok::Num(value, text),
                    col,
                });
                i = j;
            }
            c if is_word_char(c) => {
                let mut j = i;
                while j < chars.len() && is_word_char(chars[j]) {
                    j += 1;
                }
                out.push(Token {
                    tok: Tok::Word(chars[i..j].iter().collect()),
                    col,
                });
                i = j;
            }
            other => return Err(err(col, format!("unexpected character '{other}'"))),
        }
    }
    out.push(Token {
        tok: Tok::End,
        col: chars.len() + 1,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn lexes_names_numbers_strings_and_operators() {
        assert_eq!(
            toks("min(metrics.loss) <= -1.5e-3 OR params.`my key` != 'it''s'"),
            vec![
                Tok::Word("min".into()),
                Tok::LParen,
                Tok::Word("metrics".into()),
                Tok::Dot,
                Tok::Word("loss".into()),
                Tok::RParen,
                Tok::Op("<="),
                Tok::Num(-1.5e-3, "-1.5e-3".into()),
                Tok::Word("OR".into()),
                Tok::Word("params".into()),
                Tok::Dot,
                Tok::Quoted("my key".into()),
                Tok::Op("!="),
                Tok::Str("it's".into()),
                Tok::End,
            ]
        );
    }

    #[test]
    fn columns_are_character_positions() {
        let t = lex("a = 'é' AND b").unwrap();
        assert_eq!(
            t.iter().map(|t| t.col).collect::<Vec<_>>(),
            vec![1, 3, 5, 9, 13, 14]
        );
    }

    #[test]
    fn unterminated_string_points_at_its_start() {
        let e = lex("params.lr = 'abc").unwrap_err();
        assert_eq!(e.column, 13);
        assert!(e.to_string().contains("unterminated string"), "{e}");
    }

    #[test]
    fn bad_number_and_character() {
        assert_eq!(lex("metrics.x < 1.2.3").unwrap_err().column, 13);
        assert_eq!(lex("metrics.x ~ 1").unwrap_err().column, 11);
    }
}
