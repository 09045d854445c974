//! Form and path parsing with Go's `net/http` semantics, which etcd's behaviour rests on.
//!
//! - `parse_query` is Go's `url.ParseQuery`: pairs split on `&`, a `;` is an error, `+` is a
//!   space, a bad `%` escape is an error naming the escape; parsing goes on after an error and
//!   the first error is reported (so the form is still usable, as in Go).
//! - `Form` keeps every value of a key in order; `value` is Go's `FormValue` (first value, or
//!   ""), `has` is Go's `_, ok := r.Form[key]`.
//! - `clean_path` is the cleaning Go's `ServeMux` applies before routing: an unclean path is
//!   answered with a 301 redirect to the clean one.
//!
//! Values are bytes in Go; here they are UTF-8 strings with invalid sequences replaced by
//! U+FFFD, which is exactly what Go's JSON encoder prints for such values.

use oxcd_v2store::is_clean_path;

/// Parsed form values: (key, value) pairs in order of appearance. A request has a handful
/// of them, so a list scanned in order is cheaper than a map (no hashing, one allocation).
#[derive(Debug, Default, Clone)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// First value of `key`, or "" (Go's `FormValue`).
    pub fn value(&self, key: &str) -> &str {
        self.first(key).unwrap_or("")
    }

    /// First value of `key`, or "", moved out of the form (which keeps "" in its place).
    pub fn take_value(&mut self, key: &str) -> String {
        self.pairs
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    }

    /// First value of `key` if the key is present.
    pub fn first(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present (even with an empty value).
    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// Appends all pairs of `other` after this form's values (Go puts body values before
    /// query values in `r.Form`).
    pub fn extend(&mut self, other: Form) {
        self.pairs.extend(other.pairs);
    }
}

/// Go's `url.ParseQuery`: returns the form and the first error, if any.
pub fn parse_query(query: &[u8]) -> (Form, Option<String>) {
    let mut form = Form::default();
    let mut first_err: Option<String> = None;
    for pair in query.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        if pair.contains(&b';') {
            first_err.get_or_insert_with(|| "invalid semicolon separator in query".to_string());
            continue;
        }
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let key = match query_unescape(k) {
            Ok(k) => k,
            Err(e) => {
                first_err.get_or_insert(e);
                continue;
            }
        };
        let value = match query_unescape(v) {
            Ok(v) => v,
            Err(e) => {
                first_err.get_or_insert(e);
                continue;
            }
        };
        form.pairs.push((key, value));
    }
    (form, first_err)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Go's `url.QueryUnescape`.
pub fn query_unescape(s: &[u8]) -> Result<String, String> {
    unescape(s, true)
}

/// Go's `url.PathUnescape` (no `+` → space).
pub fn path_unescape(s: &[u8]) -> Result<String, String> {
    unescape(s, false)
}

fn unescape(s: &[u8], plus_is_space: bool) -> Result<String, String> {
    if !s.iter().any(|&b| b == b'%' || (plus_is_space && b == b'+')) {
        // Nothing to decode (the usual case): one copy, no scan-and-push.
        return Ok(String::from_utf8_lossy(s).into_owned());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hi = s.get(i + 1).copied().and_then(hex_val);
                let lo = s.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                    }
                    _ => {
                        let end = (i + 3).min(s.len());
                        let bad = String::from_utf8_lossy(&s[i..end]);
                        return Err(format!("invalid URL escape {bad:?}"));
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Go's `path.Clean`.
pub fn path_clean(p: &str) -> String {
    if is_clean_path(p) {
        return p.to_string();
    }
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// The path Go's `ServeMux` routes: cleaned, keeping a trailing slash.
pub fn clean_path(p: &str) -> String {
    if is_clean_path(p) {
        // Nearly every request: one copy.
        return p.to_string();
    }
    if p.is_empty() {
        return "/".to_string();
    }
    let p = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    let mut np = path_clean(&p);
    if p.ends_with('/') && np != "/" {
        if p.len() == np.len() + 1 && p.starts_with(&np) {
            np = p;
        } else {
            np.push('/');
        }
    }
    np
}

/// Go's `path.Join(a, b)` for a rooted `a`.
pub fn path_join(a: &str, b: &str) -> String {
    if b.is_empty() {
        return path_clean(a);
    }
    let mut joined = String::with_capacity(a.len() + 1 + b.len());
    joined.push_str(a);
    if !b.starts_with('/') {
        joined.push('/');
    }
    joined.push_str(b);
    if is_clean_path(&joined) {
        // The common case (`/v2/keys/a/b`): nothing to clean, no second string.
        return joined;
    }
    path_clean(&joined)
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseUint(s, 10, 64)`.
pub fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_matches_go() {
        let (f, err) = parse_query(b"value=Hello+world&ttl=&a=1&a=2&x");
        assert!(err.is_none());
        assert_eq!(f.value("value"), "Hello world");
        assert!(f.has("ttl"));
        assert_eq!(f.value("ttl"), "");
        assert_eq!(f.first("a"), Some("1"));
        assert!(f.has("x"));
        assert!(!f.has("y"));
    }

    #[test]
    fn query_errors() {
        let (f, err) = parse_query(b"a=%zz&b=1");
        assert_eq!(err.as_deref(), Some("invalid URL escape \"%zz\""));
        assert_eq!(f.value("b"), "1");
        let (_, err) = parse_query(b"a=1;b=2");
        assert_eq!(err.as_deref(), Some("invalid semicolon separator in query"));
        let (_, err) = parse_query(b"a=%4");
        assert_eq!(err.as_deref(), Some("invalid URL escape \"%4\""));
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (f, err) = parse_query(b"value=%ff%fe");
        assert!(err.is_none());
        assert_eq!(f.value("value"), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn path_cleaning_matches_go() {
        assert_eq!(path_clean("/a//b/./c/.."), "/a/b");
        assert_eq!(path_clean("/../a"), "/a");
        assert_eq!(path_clean("/"), "/");
        assert_eq!(clean_path("/v2/keys//foo"), "/v2/keys/foo");
        assert_eq!(clean_path("/v2/keys/foo/"), "/v2/keys/foo/");
        assert_eq!(clean_path("/v2/keys/a/../b/"), "/v2/keys/b/");
        assert_eq!(path_join("/1", "/foo/"), "/1/foo");
        assert_eq!(path_join("/1", "foo/bar"), "/1/foo/bar");
        assert_eq!(path_join("/1", "foo//bar/./x/../"), "/1/foo/bar");
        assert_eq!(path_join("/1", "/.."), "/");
        assert_eq!(path_join("/1", "a/.b"), "/1/a/.b");
        assert!(
            is_clean_path("/")
                && is_clean_path("/a/b")
                && is_clean_path("/a/...")
                && is_clean_path("/a/.b")
        );
        assert!(
            !is_clean_path("a")
                && !is_clean_path("/a/")
                && !is_clean_path("//a")
                && !is_clean_path("/a/.")
        );
        assert!(!is_clean_path("/a/../b") && !is_clean_path(""));
        assert_eq!(path_join("/1", ""), "/1");
        assert_eq!(path_join("/1", "/"), "/1");
    }

    #[test]
    fn bools_and_numbers() {
        assert_eq!(parse_bool("T"), Some(true));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("+1"), None);
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64("42"), Some(42));
    }
}
