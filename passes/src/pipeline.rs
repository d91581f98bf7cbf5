//! Pipeline text, MLIR style: `insert-lora{rank=8 alpha=16 targets=query,value},dce`.
//!
//! Grammar (whitespace is allowed around `,` between passes, between a name and its `{`, and
//! between options; not around `=`):
//!
//! ```text
//! pipeline := (pass ("," pass)*)?
//! pass     := name ("{" option* "}")?
//! option   := key "=" value              options separated by whitespace
//! value    := item ("," item)*            two or more items make a list
//! item     := bare | '"' (char | '\"' | '\\')* '"'
//! name,key := [A-Za-z0-9_.-]+
//! bare     := any characters but whitespace , { } " =
//! ```
//!
//! Inside braces a comma separates list items; outside it separates passes. Quote a value to
//! put spaces, commas, braces or `=` in it (`prompt="a, b"`); `""` is the empty value. Errors
//! give the 1-based byte column and say what was expected. [`Pipeline`]'s `Display` prints the
//! canonical text, and parsing it gives the same pipeline back.

use std::fmt;
use std::str::FromStr;

use crate::pass::PassError;

/// The value of one option: a single item or a list of two or more.
///
/// Invariant (kept by the parser, needed for print/parse round trips): a `List` has at least
/// two items. A `List` built by hand with fewer prints as a scalar (`""` when empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionValue {
    Scalar(String),
    List(Vec<String>),
}

impl OptionValue {
    /// The items of the value: a scalar is a one-item list, and the empty scalar `""` is the
    /// empty list.
    pub fn items(&self) -> Vec<&str> {
        match self {
            OptionValue::Scalar(s) if s.is_empty() => Vec::new(),
            OptionValue::Scalar(s) => vec![s.as_str()],
            OptionValue::List(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// The value when it is a single item.
    pub fn as_scalar(&self) -> Option<&str> {
        match self {
            OptionValue::Scalar(s) => Some(s),
            OptionValue::List(v) if v.len() == 1 => Some(&v[0]),
            OptionValue::List(_) => None,
        }
    }
}

impl From<&str> for OptionValue {
    fn from(s: &str) -> OptionValue {
        OptionValue::Scalar(s.to_string())
    }
}

impl fmt::Display for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionValue::Scalar(s) => write_item(f, s),
            OptionValue::List(v) if v.is_empty() => f.write_str("\"\""),
            OptionValue::List(v) => {
                for (i, item) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_item(f, item)?;
                }
                Ok(())
            }
        }
    }
}

fn write_item(f: &mut fmt::Formatter<'_>, item: &str) -> fmt::Result {
    if !item.is_empty() && item.chars().all(is_bare_char) {
        return f.write_str(item);
    }
    f.write_str("\"")?;
    for c in item.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn is_bare_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, ',' | '{' | '}' | '"' | '=')
}

/// One pass of a pipeline with its options, in the order written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassSpec {
    pub name: String,
    pub options: Vec<(String, OptionValue)>,
}

impl PassSpec {
    pub fn new(name: impl Into<String>) -> PassSpec {
        PassSpec { name: name.into(), options: Vec::new() }
    }

    /// Builder: adds an option (replacing one of the same name).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<OptionValue>) -> PassSpec {
        let key = key.into();
        let value = value.into();
        match self.options.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.options.push((key, value)),
        }
        self
    }

    /// The value given for `key`.
    pub fn option(&self, key: &str) -> Option<&OptionValue> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl fmt::Display for PassSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.options.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (k, v)) in self.options.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        f.write_str("}")
    }
}

/// A parsed pipeline: passes in the order they run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pipeline {
    pub passes: Vec<PassSpec>,
}

impl Pipeline {
    /// Parses pipeline text (see the module docs for the grammar). Empty text is the empty
    /// pipeline.
    pub fn parse(text: &str) -> Result<Pipeline, PassError> {
        Parser { text, pos: 0 }.pipeline()
    }
}

impl FromStr for Pipeline {
    type Err = PassError;

    fn from_str(s: &str) -> Result<Pipeline, PassError> {
        Pipeline::parse(s)
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.passes.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next character.
    pos: usize,
}

/// A character for messages: `'x'`, or `the end of the pipeline`.
fn found(c: Option<char>) -> String {
    match c {
        Some(c) => format!("found '{}'", c.escape_default()),
        None => "found the end of the pipeline".to_string(),
    }
}

impl Parser<'_> {
    fn err(&self, at: usize, message: impl Into<String>) -> PassError {
        PassError::Parse { column: at + 1, message: message.into() }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.text[start..self.pos]
    }

    fn pipeline(mut self) -> Result<Pipeline, PassError> {
        let mut passes = Vec::new();
        self.skip_ws();
        if self.peek().is_none() {
            return Ok(Pipeline { passes });
        }
        loop {
            let spec = self.pass()?;
            self.skip_ws();
            match self.peek() {
                None => {
                    passes.push(spec);
                    break;
                }
                Some(',') => {
                    self.bump();
                    self.skip_ws();
                    if matches!(self.peek(), None | Some(',')) {
                        return Err(
                            self.err(self.pos, format!("expected a pass name after ',', {}", found(self.peek())))
                        );
                    }
                    passes.push(spec);
                }
                Some(c) => {
                    let what = if c == '}' {
                        format!("unbalanced '}}' after pass '{}'", spec.name)
                    } else {
                        format!(
                            "expected ',' or the end of the pipeline after pass '{}', {}",
                            spec.name,
                            found(Some(c))
                        )
                    };
                    return Err(self.err(self.pos, what));
                }
            }
        }
        Ok(Pipeline { passes })
    }

    fn pass(&mut self) -> Result<PassSpec, PassError> {
        let start = self.pos;
        let name = self.take_while(is_name_char).to_string();
        if name.is_empty() {
            let what = match self.peek() {
                Some('{') => "expected a pass name before '{'".to_string(),
                other => format!("expected a pass name, {}", found(other)),
            };
            return Err(self.err(start, what));
        }
        let mut spec = PassSpec::new(name);
        let after_name = self.pos;
        self.skip_ws();
        if self.peek() == Some('{') {
            self.bump();
            self.options(&mut spec)?;
        } else {
            self.pos = after_name;
        }
        Ok(spec)
    }

    fn options(&mut self, spec: &mut PassSpec) -> Result<(), PassError> {
        loop {
            self.skip_ws();
            match self.peek() {
                None => {
                    return Err(self.err(self.pos, format!("expected '}}' to close options of '{}'", spec.name)));
                }
                Some('}') => {
                    self.bump();
                    return Ok(());
                }
                Some('=') => {
                    return Err(
                        self.err(self.pos, format!("expected an option name before '=' in options of '{}'", spec.name))
                    );
                }
                Some(c) if is_name_char(c) => {
                    let key_pos = self.pos;
                    let key = self.take_while(is_name_char).to_string();
                    if self.peek() != Some('=') {
                        return Err(self.err(
                            self.pos,
                            format!("expected '=' after option '{key}' of '{}', {}", spec.name, found(self.peek())),
                        ));
                    }
                    self.bump();
                    let value = self.value(&spec.name, &key)?;
                    if spec.option(&key).is_some() {
                        return Err(self.err(key_pos, format!("option '{key}' of '{}' is given twice", spec.name)));
                    }
                    spec.options.push((key, value));
                    match self.peek() {
                        None | Some('}') => {}
                        Some(c) if c.is_whitespace() => {}
                        other => {
                            return Err(self.err(
                                self.pos,
                                format!(
                                    "expected whitespace or '}}' after the value of option '{}' of '{}', {}",
                                    spec.options.last().map_or("", |(k, _)| k.as_str()),
                                    spec.name,
                                    found(other)
                                ),
                            ));
                        }
                    }
                }
                Some(c) => {
                    return Err(self.err(
                        self.pos,
                        format!("expected an option name or '}}' in options of '{}', {}", spec.name, found(Some(c))),
                    ));
                }
            }
        }
    }

    fn value(&mut self, pass: &str, key: &str) -> Result<OptionValue, PassError> {
        let mut items = vec![self.item(pass, key)?];
        while self.peek() == Some(',') {
            self.bump();
            if !self.peek().is_some_and(|c| c == '"' || is_bare_char(c)) {
                return Err(self.err(
                    self.pos,
                    format!("expected a value after ',' in option '{key}' of '{pass}', {}", found(self.peek())),
                ));
            }
            items.push(self.item(pass, key)?);
        }
        Ok(if items.len() == 1 { OptionValue::Scalar(items.remove(0)) } else { OptionValue::List(items) })
    }

    fn item(&mut self, pass: &str, key: &str) -> Result<String, PassError> {
        if self.peek() == Some('"') {
            let open = self.pos;
            self.bump();
            let mut out = String::new();
            loop {
                match self.bump() {
                    None => {
                        return Err(self.err(
                            open,
                            format!(
                                "unterminated quoted value of option '{key}' of '{pass}' (expected a closing '\"')"
                            ),
                        ));
                    }
                    Some('"') => return Ok(out),
                    Some('\\') => {
                        let esc = self.pos;
                        match self.bump() {
                            Some(c @ ('"' | '\\')) => out.push(c),
                            other => {
                                return Err(self.err(
                                    esc,
                                    format!(
                                        "expected '\"' or '\\' after '\\' in the value of option '{key}', {}",
                                        found(other)
                                    ),
                                ));
                            }
                        }
                    }
                    Some(c) => out.push(c),
                }
            }
        }
        let start = self.pos;
        let item = self.take_while(is_bare_char).to_string();
        if item.is_empty() {
            return Err(self.err(
                start,
                format!("expected a value for option '{key}' of '{pass}' (quote it to use spaces, commas, braces or '='), {}", found(self.peek())),
            ));
        }
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Pipeline {
        match Pipeline::parse(text) {
            Ok(p) => p,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn error(text: &str) -> String {
        match Pipeline::parse(text) {
            Ok(p) => panic!("`{text}` parsed as {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn s(v: &str) -> OptionValue {
        OptionValue::Scalar(v.to_string())
    }

    fn l(v: &[&str]) -> OptionValue {
        OptionValue::List(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn parses_names_options_and_lists() {
        let p = parse("insert-lora{rank=8 alpha=16 targets=query,value},dce");
        assert_eq!(
            p.passes,
            vec![
                PassSpec::new("insert-lora")
                    .with("rank", s("8"))
                    .with("alpha", s("16"))
                    .with("targets", l(&["query", "value"])),
                PassSpec::new("dce"),
            ]
        );
        assert_eq!(p.to_string(), "insert-lora{rank=8 alpha=16 targets=query,value},dce");
    }

    #[test]
    fn whitespace_and_empty_braces_are_tolerated() {
        let p = parse("  dce ,\tcse {  }\n, fold-constants{ max-bytes=10 }  ");
        assert_eq!(p.to_string(), "dce,cse,fold-constants{max-bytes=10}");
        assert_eq!(parse("").passes, vec![]);
        assert_eq!(parse("   ").passes, vec![]);
    }

    #[test]
    fn quoted_values_hold_anything() {
        let p = parse(r#"p{a="x, y" b="{}=" c="" d="q\"\\" e="1",2}"#);
        let spec = &p.passes[0];
        assert_eq!(spec.option("a"), Some(&s("x, y")));
        assert_eq!(spec.option("b"), Some(&s("{}=")));
        assert_eq!(spec.option("c"), Some(&s("")));
        assert_eq!(spec.option("d"), Some(&s("q\"\\")));
        assert_eq!(spec.option("e"), Some(&l(&["1", "2"])));
        assert_eq!(p.to_string(), r#"p{a="x, y" b="{}=" c="" d="q\"\\" e=1,2}"#);
        assert_eq!(parse(&p.to_string()), p);
    }

    #[test]
    fn option_value_items() {
        assert_eq!(s("").items(), Vec::<&str>::new());
        assert_eq!(s("a").items(), vec!["a"]);
        assert_eq!(l(&["a", "b"]).items(), vec!["a", "b"]);
        assert_eq!(l(&["a", "b"]).as_scalar(), None);
    }

    #[test]
    fn bad_inputs_say_what_was_expected_and_where() {
        assert_eq!(
            error("insert-lora{rank=8 a=1"),
            "pipeline: expected '}' to close options of 'insert-lora' at column 23"
        );
        assert_eq!(error("dce}"), "pipeline: unbalanced '}' after pass 'dce' at column 4");
        assert_eq!(error(",dce"), "pipeline: expected a pass name, found ',' at column 1");
        assert_eq!(error("{rank=1}"), "pipeline: expected a pass name before '{' at column 1");
        assert_eq!(error("dce,,cse"), "pipeline: expected a pass name after ',', found ',' at column 5");
        assert_eq!(
            error("dce,"),
            "pipeline: expected a pass name after ',', found the end of the pipeline at column 5"
        );
        assert_eq!(error("p{=3}"), "pipeline: expected an option name before '=' in options of 'p' at column 3");
        assert_eq!(error("p{rank=1 rank=2}"), "pipeline: option 'rank' of 'p' is given twice at column 10");
        assert_eq!(
            error("p{t=a,}"),
            "pipeline: expected a value after ',' in option 't' of 'p', found '}' at column 7"
        );
        assert_eq!(
            error("p{t=a,,b}"),
            "pipeline: expected a value after ',' in option 't' of 'p', found ',' at column 7"
        );
        assert_eq!(error("p{rank}"), "pipeline: expected '=' after option 'rank' of 'p', found '}' at column 7");
        assert_eq!(error("p{rank =1}"), "pipeline: expected '=' after option 'rank' of 'p', found ' ' at column 7");
        assert!(error("p{rank=}").starts_with("pipeline: expected a value for option 'rank' of 'p'"));
        assert!(error("p{a=\"x}").contains("unterminated quoted value of option 'a' of 'p'"));
        assert!(error("p{a=\"x}").ends_with("at column 5"));
        assert!(error(r#"p{a="\n"}"#).contains("after '\\'"));
        assert_eq!(
            error("p{a=1{}"),
            "pipeline: expected whitespace or '}' after the value of option 'a' of 'p', found '{' at column 6"
        );
        assert_eq!(
            error("p{a=1}{"),
            "pipeline: expected ',' or the end of the pipeline after pass 'p', found '{' at column 7"
        );
        assert_eq!(
            error("p q"),
            "pipeline: expected ',' or the end of the pipeline after pass 'p', found 'q' at column 3"
        );
        assert_eq!(error("p{{}}"), "pipeline: expected an option name or '}' in options of 'p', found '{' at column 3");
        assert_eq!(error("é"), "pipeline: expected a pass name, found '\\u{e9}' at column 1");
        // Columns are byte columns: the error after a two-byte character is at byte 3 + 1.
        assert_eq!(error("p{a=é b}"), "pipeline: expected '=' after option 'b' of 'p', found '}' at column 9");
    }

    /// A tiny deterministic generator (xorshift), so that the round-trip property is checked
    /// on many pipelines without a property-testing dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    #[test]
    fn print_then_parse_is_the_identity() {
        let names = ["dce", "cse", "fold-constants", "insert-lora", "a.b_c-1", "X"];
        let keys = ["rank", "alpha", "targets", "k", "max-bytes", "a_b.c"];
        let items =
            ["8", "1.5e-3", "query", "", " ", "a,b", "{", "}", "=", "\"", "\\", "x y", "é", "-1", "a\"b\\c", "\t"];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let mut p = Pipeline::default();
            for _ in 0..rng.below(4) {
                let mut spec = PassSpec::new(rng.pick(&names));
                for _ in 0..rng.below(4) {
                    let key = rng.pick(&keys);
                    let value = if rng.below(3) == 0 {
                        let n = 2 + rng.below(3);
                        OptionValue::List((0..n).map(|_| rng.pick(&items).to_string()).collect())
                    } else {
                        OptionValue::Scalar(rng.pick(&items).to_string())
                    };
                    if spec.option(key).is_none() {
                        spec.options.push((key.to_string(), value));
                    }
                }
                p.passes.push(spec);
            }
            let text = p.to_string();
            assert_eq!(Pipeline::parse(&text).map_err(|e| format!("{text}: {e}")), Ok(p.clone()), "{text}");
        }
    }
}
