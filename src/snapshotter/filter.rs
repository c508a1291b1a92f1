//! containerd's filter syntax for `List`, as its metadata store and `ctr snapshots ls` send it:
//! `labels."containerd.io/snapshot.ref"==sha256:…,parent=="default/3/x"`. Selectors joined by
//! `,` must all hold; the filters of one request (and `|` inside one) are alternatives.
//! Operators: `==`, `!=`, `~=` (regular expression), or a bare field path (present and
//! non-empty).

use super::Error;

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed filter list: any alternative whose selectors all hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any_of: Vec<Vec<Selector>>,
}

/// What a selector may ask of a snapshot.
pub trait Fields {
    /// The value at a field path (`["name"]`, `["labels", "k"]`), if any.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl Filter {
    pub fn parse(filters: &[String]) -> Result<Filter, Error> {
        let mut any_of = Vec::new();
        for f in filters {
            for alt in split_unquoted(f, '|') {
                let mut all = Vec::new();
                for sel in split_unquoted(&alt, ',') {
                    if !sel.trim().is_empty() {
                        all.push(selector(sel.trim()).map_err(|reason| {
                            Error::InvalidArgument(format!("filter {f:?}: {reason}"))
                        })?);
                    }
                }
                any_of.push(all);
            }
        }
        Ok(Filter { any_of })
    }

    pub fn matches(&self, item: &impl Fields) -> bool {
        self.any_of.is_empty()
            || self.any_of.iter().any(|all| {
                all.iter().all(|s| {
                    let v = item.field(&s.path);
                    match &s.op {
                        Op::Present => v.is_some_and(|v| !v.is_empty()),
                        Op::Equal(want) => v.as_deref() == Some(want.as_str()),
                        Op::NotEqual(want) => v.as_deref() != Some(want.as_str()),
                        Op::Matches(re) => v.is_some_and(|v| re.is_match(&v)),
                    }
                })
            })
    }
}

/// Split at `sep` outside double quotes and `/…/` regex quotes after `~=`.
fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    let mut prev = '\0';
    while let Some(c) = chars.next() {
        let cur = out.last_mut().expect("never empty");
        match quote {
            Some(q) => {
                cur.push(c);
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c == sep => out.push(String::new()),
            None => {
                if c == '"' || (c == '/' && prev == '=') {
                    quote = Some(c);
                }
                cur.push(c);
            }
        }
        prev = c;
    }
    out
}

/// What is wrong with a selector; [`Filter::parse`] names the filter.
#[derive(Debug, thiserror::Error)]
enum SyntaxError {
    #[error("missing value")]
    MissingValue,
    #[error("unterminated {0}")]
    Unterminated(char),
    #[error("expected a field name at {0:?}")]
    FieldName(String),
    #[error("expected ==, != or ~= at {0:?}")]
    Operator(String),
    #[error("unexpected {0:?} after the value")]
    Trailing(String),
    #[error("{0}")]
    Regex(#[from] regex::Error),
}

/// Read a quoted string (`"…"` with backslash escapes, or `/…/`) from the start of `s`;
/// returns it and the rest.
fn quoted(s: &str) -> Result<(String, &str), SyntaxError> {
    let q = s.chars().next().ok_or(SyntaxError::MissingValue)?;
    let mut out = String::new();
    let mut it = s[1..].char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '\\' => match it.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, n)) if q == '/' && n != '/' => {
                    out.push('\\');
                    out.push(n);
                }
                Some((_, n)) => out.push(n),
                None => break,
            },
            c if c == q => return Ok((out, &s[1 + i + 1..])),
            c => out.push(c),
        }
    }
    Err(SyntaxError::Unterminated(q))
}

fn selector(s: &str) -> Result<Selector, SyntaxError> {
    let mut path = Vec::new();
    let mut rest = s;
    loop {
        if rest.starts_with('"') {
            let (field, r) = quoted(rest)?;
            path.push(field);
            rest = r;
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            if end == 0 {
                return Err(SyntaxError::FieldName(rest.to_string()));
            }
            path.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    if rest.is_empty() {
        return Ok(Selector {
            path,
            op: Op::Present,
        });
    }
    let (op, value) = if let Some(v) = rest.strip_prefix("==") {
        ("==", v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        ("!=", v)
    } else if let Some(v) = rest.strip_prefix("~=") {
        ("~=", v)
    } else {
        return Err(SyntaxError::Operator(rest.to_string()));
    };
    let value = if value.starts_with('"') || (op == "~=" && value.starts_with('/')) {
        let (v, r) = quoted(value)?;
        if !r.is_empty() {
            return Err(SyntaxError::Trailing(r.to_string()));
        }
        v
    } else {
        value.to_string()
    };
    let op = match op {
        "==" => Op::Equal(value),
        "!=" => Op::NotEqual(value),
        _ => Op::Matches(regex::Regex::new(&value)?),
    };
    Ok(Selector { path, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct S(HashMap<&'static str, &'static str>);
    impl Fields for S {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join(".").as_str()).map(|v| v.to_string())
        }
    }

    fn f(s: &[&str]) -> Filter {
        Filter::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn containerds_remote_snapshot_lookup() {
        let snap = S(HashMap::from([
            ("labels.containerd.io/snapshot.ref", "sha256:abc"),
            ("parent", "default/3/x,y"),
            ("kind", "committed"),
            ("name", "n"),
        ]));
        assert!(
            f(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/3/x,y""#])
                .matches(&snap)
        );
        assert!(
            !f(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="other""#])
                .matches(&snap)
        );
        assert!(f(&[]).matches(&snap));
        assert!(f(&["name==zz", "kind==committed"]).matches(&snap));
        assert!(f(&["name==zz|kind==committed"]).matches(&snap));
        assert!(f(&["name!=zz,labels.\"containerd.io/snapshot.ref\""]).matches(&snap));
        assert!(!f(&["labels.absent"]).matches(&snap));
        assert!(f(&["parent~=/^default\\/3/"]).matches(&snap));
        assert!(Filter::parse(&["name=x".into()]).is_err());
        assert!(Filter::parse(&["name==\"x".into()]).is_err());
    }
}
