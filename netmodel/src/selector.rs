//! Calico selectors: a small parser, a canonical printer, and Kubernetes label selector
//! translation.
//!
//! Every selector that enters the model goes through [`Selector`], so it is valid and
//! printed one canonical way (`app == 'web' && has(tier)`): equal meaning from the same
//! input gives equal bytes, which keeps no-op updates no-ops. Label keys and values are
//! checked when built, so printing cannot fail: a value holding both quote characters
//! cannot be written and is rejected up front.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Label key prefix of labels inherited from a namespace profile.
pub const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
/// Label key prefix of labels inherited from a service-account profile.
pub const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";
/// The name label a profile carries (after its prefix).
pub const NAME_LABEL: &str = "projectcalico.org/name";
/// The namespace label every workload endpoint carries.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// The orchestrator label every workload endpoint carries.
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";
/// The service-account label of workload endpoints that have one.
pub const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";

/// A selector could not be parsed or expressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector text (or a description of the Kubernetes selector).
    pub selector: String,
    /// What is wrong.
    pub reason: String,
}

fn err(selector: &str, reason: impl Into<String>) -> SelectorError {
    SelectorError {
        selector: selector.to_string(),
        reason: reason.into(),
    }
}

/// A parsed, valid Calico selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `all()`.
    All,
    /// `global()`: objects outside any namespace.
    Global,
    /// `has(key)`.
    Has(String),
    /// `key == 'value'`.
    Eq(String, String),
    /// `key != 'value'`.
    Ne(String, String),
    /// `key in { 'a', 'b' }`.
    In(String, Vec<String>),
    /// `key not in { 'a', 'b' }`.
    NotIn(String, Vec<String>),
    /// `key contains 'v'`.
    Contains(String, String),
    /// `key starts with 'v'`.
    StartsWith(String, String),
    /// `key ends with 'v'`.
    EndsWith(String, String),
    /// `!x`.
    Not(Box<Selector>),
    /// `a && b && ...` (two or more).
    And(Vec<Selector>),
    /// `a || b || ...` (two or more).
    Or(Vec<Selector>),
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

fn check_key(key: &str, context: &str) -> Result<(), SelectorError> {
    if key.is_empty() || !key.chars().all(is_key_char) {
        return Err(err(context, format!("invalid label key {key:?}")));
    }
    Ok(())
}

fn check_value(value: &str, context: &str) -> Result<(), SelectorError> {
    if value.contains('\'') && value.contains('"') {
        return Err(err(context, format!("value {value:?} holds both quotes")));
    }
    Ok(())
}

impl Selector {
    /// `key == 'value'`, validated.
    pub fn eq(key: &str, value: &str) -> Result<Selector, SelectorError> {
        check_key(key, key)?;
        check_value(value, key)?;
        Ok(Selector::Eq(key.into(), value.into()))
    }

    /// Parses Calico selector syntax. Empty (or blank) text gives `None`: no constraint.
    pub fn parse(text: &str) -> Result<Option<Selector>, SelectorError> {
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Ok(None);
        }
        let mut parser = Parser {
            text,
            tokens,
            pos: 0,
            depth: 0,
        };
        let sel = parser.or()?;
        if parser.pos != parser.tokens.len() {
            return Err(err(text, "unexpected trailing input"));
        }
        Ok(Some(sel))
    }

    /// The conjunction of `parts` (flattened); `None` when there are none.
    pub fn and_all(parts: impl IntoIterator<Item = Selector>) -> Option<Selector> {
        let mut flat = Vec::new();
        for part in parts {
            match part {
                Selector::And(inner) => flat.extend(inner),
                Selector::All => {}
                other => flat.push(other),
            }
        }
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(Selector::And(flat)),
        }
    }

    /// Rewrites a selector over namespace labels into one over the labels endpoints inherit
    /// from their namespace profile (`pcns.` keys); `all()` becomes "in some namespace" and
    /// `global()` "in no namespace".
    pub fn into_profile_scope(self, prefix: &str) -> Selector {
        let k = |key: String| format!("{prefix}{key}");
        let in_scope = || Selector::Has(format!("{prefix}{NAME_LABEL}"));
        match self {
            Selector::All => in_scope(),
            Selector::Global => Selector::Not(Box::new(in_scope())),
            Selector::Has(key) => Selector::Has(k(key)),
            Selector::Eq(key, v) => Selector::Eq(k(key), v),
            Selector::Ne(key, v) => Selector::Ne(k(key), v),
            Selector::In(key, v) => Selector::In(k(key), v),
            Selector::NotIn(key, v) => Selector::NotIn(k(key), v),
            Selector::Contains(key, v) => Selector::Contains(k(key), v),
            Selector::StartsWith(key, v) => Selector::StartsWith(k(key), v),
            Selector::EndsWith(key, v) => Selector::EndsWith(k(key), v),
            Selector::Not(inner) => Selector::Not(Box::new(inner.into_profile_scope(prefix))),
            Selector::And(parts) => Selector::And(
                parts
                    .into_iter()
                    .map(|p| p.into_profile_scope(prefix))
                    .collect(),
            ),
            Selector::Or(parts) => Selector::Or(
                parts
                    .into_iter()
                    .map(|p| p.into_profile_scope(prefix))
                    .collect(),
            ),
        }
    }

    /// Translates a Kubernetes label selector. An empty selector gives `None` (matches all).
    pub fn from_label_selector(ls: &LabelSelector) -> Result<Option<Selector>, SelectorError> {
        let mut parts = Vec::new();
        for (key, value) in ls.match_labels.iter().flatten() {
            parts.push(Selector::eq(key, value)?);
        }
        for req in ls.match_expressions.iter().flatten() {
            let key = &req.key;
            check_key(key, key)?;
            let values = req.values.clone().unwrap_or_default();
            for v in &values {
                check_value(v, key)?;
            }
            let needs_values = |op: &str| {
                if values.is_empty() {
                    Err(err(key, format!("operator {op} without values")))
                } else {
                    Ok(())
                }
            };
            parts.push(match req.operator.as_str() {
                "In" => {
                    needs_values("In")?;
                    Selector::In(key.clone(), values)
                }
                "NotIn" => {
                    needs_values("NotIn")?;
                    Selector::NotIn(key.clone(), values)
                }
                "Exists" => Selector::Has(key.clone()),
                "DoesNotExist" => Selector::Not(Box::new(Selector::Has(key.clone()))),
                other => return Err(err(key, format!("unknown operator {other:?}"))),
            });
        }
        Ok(Selector::and_all(parts))
    }

    /// Evaluates the selector over labels given by `get` (label key -> value), with
    /// Calico's semantics: `!=` and `not in` also match when the label is absent, the
    /// other comparisons need it present, and `global()` matches everything (scoping to
    /// non-namespaced objects is expressed over labels by the converters).
    pub fn matches<'l, F>(&self, get: &F) -> bool
    where
        F: Fn(&str) -> Option<&'l str>,
    {
        match self {
            Selector::All | Selector::Global => true,
            Selector::Has(k) => get(k).is_some(),
            Selector::Eq(k, v) => get(k) == Some(v.as_str()),
            Selector::Ne(k, v) => get(k) != Some(v.as_str()),
            Selector::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Selector::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Selector::Contains(k, v) => get(k).is_some_and(|x| x.contains(v.as_str())),
            Selector::StartsWith(k, v) => get(k).is_some_and(|x| x.starts_with(v.as_str())),
            Selector::EndsWith(k, v) => get(k).is_some_and(|x| x.ends_with(v.as_str())),
            Selector::Not(inner) => !inner.matches(get),
            Selector::And(parts) => parts.iter().all(|p| p.matches(get)),
            Selector::Or(parts) => parts.iter().any(|p| p.matches(get)),
        }
    }

    /// The namespace every match must be in, when the selector requires
    /// `projectcalico.org/namespace == '<ns>'` at its top level (alone or in a
    /// conjunction): lets an index consider only that namespace's objects.
    pub fn required_namespace(&self) -> Option<&str> {
        match self {
            Selector::Eq(k, v) if k == NAMESPACE_LABEL => Some(v),
            Selector::And(parts) => parts.iter().find_map(Selector::required_namespace),
            _ => None,
        }
    }

    fn precedence(&self) -> u8 {
        match self {
            Selector::Or(_) => 0,
            Selector::And(_) => 1,
            _ => 2,
        }
    }
}

fn quote(value: &str) -> String {
    if value.contains('\'') {
        format!("\"{value}\"")
    } else {
        format!("'{value}'")
    }
}

fn fmt_set(values: &[String]) -> String {
    if values.is_empty() {
        return "{}".to_string();
    }
    let quoted: Vec<String> = values.iter().map(|v| quote(v)).collect();
    format!("{{ {} }}", quoted.join(", "))
}

fn fmt_child(f: &mut fmt::Formatter<'_>, child: &Selector, min: u8) -> fmt::Result {
    if child.precedence() < min {
        write!(f, "({child})")
    } else {
        write!(f, "{child}")
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Global => f.write_str("global()"),
            Selector::Has(k) => write!(f, "has({k})"),
            Selector::Eq(k, v) => write!(f, "{k} == {}", quote(v)),
            Selector::Ne(k, v) => write!(f, "{k} != {}", quote(v)),
            Selector::In(k, v) => write!(f, "{k} in {}", fmt_set(v)),
            Selector::NotIn(k, v) => write!(f, "{k} not in {}", fmt_set(v)),
            Selector::Contains(k, v) => write!(f, "{k} contains {}", quote(v)),
            Selector::StartsWith(k, v) => write!(f, "{k} starts with {}", quote(v)),
            Selector::EndsWith(k, v) => write!(f, "{k} ends with {}", quote(v)),
            Selector::Not(inner) => {
                f.write_str("!")?;
                fmt_child(f, inner, 2)
            }
            Selector::And(parts) | Selector::Or(parts) => {
                let (sep, min) = match self {
                    Selector::And(_) => (" && ", 2),
                    _ => (" || ", 1),
                };
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    fmt_child(f, part, min)?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Bang,
    AndAnd,
    OrOr,
    EqEq,
    NotEq,
    Str(String),
    Ident(String),
}

fn lex(text: &str) -> Result<Vec<Token>, SelectorError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (token, len) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('(', _) => (Token::LParen, 1),
            (')', _) => (Token::RParen, 1),
            ('{', _) => (Token::LBrace, 1),
            ('}', _) => (Token::RBrace, 1),
            (',', _) => (Token::Comma, 1),
            ('&', Some('&')) => (Token::AndAnd, 2),
            ('|', Some('|')) => (Token::OrOr, 2),
            ('=', Some('=')) => (Token::EqEq, 2),
            ('!', Some('=')) => (Token::NotEq, 2),
            ('!', _) => (Token::Bang, 1),
            ('\'' | '"', _) => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&d| d == c)
                    .ok_or_else(|| err(text, "unterminated string"))?;
                let s: String = chars[i + 1..i + 1 + end].iter().collect();
                (Token::Str(s), end + 2)
            }
            (c, _) if is_key_char(c) => {
                let len = chars[i..].iter().take_while(|&&d| is_key_char(d)).count();
                (Token::Ident(chars[i..i + len].iter().collect()), len)
            }
            (c, _) => return Err(err(text, format!("unexpected character {c:?}"))),
        };
        tokens.push(token);
        i += len;
    }
    Ok(tokens)
}

/// How deeply `!` and parentheses may nest. The parser, the printer and evaluation all
/// recurse per level: without a bound, a hostile selector of a few kilobytes (anyone who
/// may create a Calico NetworkPolicy can write one) overflows the stack and aborts typha.
pub const MAX_NESTING: usize = 64;

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    /// Nesting of `unary` calls on the stack (bounded by [`MAX_NESTING`]).
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn bump(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, want: &Token) -> Result<(), SelectorError> {
        match self.bump() {
            Some(t) if &t == want => Ok(()),
            other => Err(err(
                self.text,
                format!("expected {want:?}, found {other:?}"),
            )),
        }
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        self.joined(&Token::OrOr, Self::and, Selector::Or)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        self.joined(&Token::AndAnd, Self::unary, Selector::And)
    }

    /// `operand (op operand)*`: one operand as itself, several joined by `join`.
    fn joined(
        &mut self,
        op: &Token,
        operand: fn(&mut Self) -> Result<Selector, SelectorError>,
        join: fn(Vec<Selector>) -> Selector,
    ) -> Result<Selector, SelectorError> {
        let mut parts = vec![operand(self)?];
        while self.peek() == Some(op) {
            self.pos += 1;
            parts.push(operand(self)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            join(parts)
        })
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        if self.depth >= MAX_NESTING {
            return Err(err(
                self.text,
                format!("nested deeper than {MAX_NESTING} levels"),
            ));
        }
        self.depth += 1;
        let operand = self.operand();
        self.depth -= 1;
        operand
    }

    fn operand(&mut self) -> Result<Selector, SelectorError> {
        match self.bump() {
            Some(Token::Bang) => Ok(Selector::Not(Box::new(self.unary()?))),
            Some(Token::LParen) => {
                let inner = self.or()?;
                self.expect(&Token::RParen)?;
                Ok(inner)
            }
            Some(Token::Ident(word)) if self.peek() == Some(&Token::LParen) => {
                self.pos += 1;
                let sel = match word.as_str() {
                    "all" => Selector::All,
                    "global" => Selector::Global,
                    "has" => Selector::Has(self.ident()?),
                    other => return Err(err(self.text, format!("unknown function {other}()"))),
                };
                self.expect(&Token::RParen)?;
                Ok(sel)
            }
            Some(Token::Ident(key)) => self.comparison(key),
            other => Err(err(self.text, format!("unexpected {other:?}"))),
        }
    }

    fn ident(&mut self) -> Result<String, SelectorError> {
        match self.bump() {
            Some(Token::Ident(s)) => Ok(s),
            other => Err(err(
                self.text,
                format!("expected a label key, found {other:?}"),
            )),
        }
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        match self.bump() {
            Some(Token::Str(s)) => Ok(s),
            other => Err(err(
                self.text,
                format!("expected a string, found {other:?}"),
            )),
        }
    }

    fn keyword(&mut self, word: &str) -> Result<(), SelectorError> {
        match self.bump() {
            Some(Token::Ident(w)) if w == word => Ok(()),
            other => Err(err(
                self.text,
                format!("expected {word:?}, found {other:?}"),
            )),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect(&Token::LBrace)?;
        let mut values = Vec::new();
        if self.peek() == Some(&Token::RBrace) {
            self.pos += 1;
            return Ok(values);
        }
        loop {
            values.push(self.string()?);
            match self.bump() {
                Some(Token::Comma) => {}
                Some(Token::RBrace) => return Ok(values),
                other => return Err(err(self.text, format!("bad set, found {other:?}"))),
            }
        }
    }

    fn comparison(&mut self, key: String) -> Result<Selector, SelectorError> {
        let op = self.bump();
        Ok(match op {
            Some(Token::EqEq) => Selector::Eq(key, self.string()?),
            Some(Token::NotEq) => Selector::Ne(key, self.string()?),
            Some(Token::Ident(word)) => match word.as_str() {
                "in" => Selector::In(key, self.set()?),
                "not" => {
                    self.keyword("in")?;
                    Selector::NotIn(key, self.set()?)
                }
                "contains" => Selector::Contains(key, self.string()?),
                "starts" => {
                    self.keyword("with")?;
                    Selector::StartsWith(key, self.string()?)
                }
                "ends" => {
                    self.keyword("with")?;
                    Selector::EndsWith(key, self.string()?)
                }
                other => return Err(err(self.text, format!("unknown operator {other:?}"))),
            },
            other => {
                return Err(err(
                    self.text,
                    format!("expected an operator, found {other:?}"),
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests;
