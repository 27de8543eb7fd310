//! The one query-string parser (`application/x-www-form-urlencoded`), and the checks every
//! query gets before routing.

use std::borrow::Cow;

use crate::error::Error;

/// The decoded `key=value` pairs of a query string, in order. `+` is a space; invalid UTF-8
/// is replaced (a value that must be an identifier then fails to parse as one).
pub fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    raw_pairs(query).map(|(key, value)| (decode(key).into_owned(), decode(value).into_owned()))
}

/// The `key=value` pairs of a query string as they are, in order.
fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The first value of `name`, decoded (only that value is).
pub fn value(query: &str, name: &str) -> Option<String> {
    raw_pairs(query)
        .find(|(key, _)| decode(key) == name)
        .map(|(_, value)| decode(value).into_owned())
}

/// Decodes one key or value; borrowed when it has nothing to decode.
fn decode(s: &str) -> Cow<'_, str> {
    if s.contains('+') {
        let spaced = s.replace('+', " ");
        Cow::Owned(
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8_lossy()
                .into_owned(),
        )
    } else {
        percent_encoding::percent_decode_str(s).decode_utf8_lossy()
    }
}

const BOOL: &[&str] = &["true", "false"];
const MEMBERSHIP: &[&str] = &["join", "invite", "knock", "leave", "ban"];
const DIRECTION: &[&str] = &["b", "f"];

/// Query parameters whose values the spec fixes, by name: each name means the same thing on
/// every client endpoint that takes it. Some request types accept any string here (ruma keeps
/// unknown values of open enums, raw routes parse their own query), which would silently read
/// a typo as "no filter" or `false`; checking by name refuses them for all endpoints alike.
const ENUMS: &[(&str, &[&str])] = &[
    ("membership", MEMBERSHIP),
    ("not_membership", MEMBERSHIP),
    ("format", &["content", "event"]),
    ("dir", DIRECTION),
    ("set_presence", &["online", "offline", "unavailable"]),
    ("include", &["all", "participated"]),
    ("full_state", BOOL),
    ("suggested_only", BOOL),
    ("recurse", BOOL),
    ("allow_remote", BOOL),
    ("allow_redirect", BOOL),
    ("animated", BOOL),
];

/// Refuses a parameter of [`ENUMS`] outside its values with `M_INVALID_PARAM`.
pub fn check_enums(query: &str) -> Result<(), Error> {
    for (key, value) in raw_pairs(query) {
        let key = decode(key);
        if let Some((name, allowed)) = ENUMS.iter().find(|(name, _)| *name == key) {
            let value = decode(value);
            if !allowed.contains(&value.as_ref()) {
                return Err(Error::invalid_param(format!(
                    "Query parameter {name} must be one of {}, not {value:?}",
                    allowed.join(", ")
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs() {
        let got: Vec<_> = pairs("a=1&b=x+y%21&&c&d=%E2%82%AC").collect();
        let want = [("a", "1"), ("b", "x y!"), ("c", ""), ("d", "€")];
        assert_eq!(got.len(), want.len());
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        assert_eq!(value("x=1&y=2&x=3", "x").as_deref(), Some("1"));
        assert_eq!(value("x=1", "y"), None);
        // Keys are compared decoded; only the value found is decoded.
        assert_eq!(value("a%62=x+%2By&ab=2", "ab").as_deref(), Some("x +y"));
        assert_eq!(value("k+=1&k%20=2", "k ").as_deref(), Some("1"));
        assert!(check_enums("dir=b&full%5Fstate=true&other=%FF").is_ok());
        assert!(check_enums("full%5Fstate=yes").is_err());
    }
}
