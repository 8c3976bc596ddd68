//! The cookie that carries a redeemed credential: found in and removed from `Cookie` headers, and
//! set with `Set-Cookie`.

use crate::config::Cookie;

/// The value of the first cookie named `name` in a `Cookie` header (RFC 6265 §5.4: `a=1; b=2`); the
/// browser sends the one with the longest path first. Quotes around a value are not part of it.
pub fn find<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    pairs(header).find(|(n, _)| *n == name).map(|(_, value)| unquote(value))
}

/// The header without the cookies named `name`: what the upstream receives. Empty when nothing else
/// was in it.
pub fn without(header: &str, name: &str) -> String {
    let kept: Vec<&str> =
        header.split(';').map(str::trim).filter(|pair| !pair.is_empty() && pair_name(pair) != name).collect();
    kept.join("; ")
}

fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| pair.trim().split_once('=')).map(|(n, v)| (n.trim_end(), v.trim_start()))
}

fn pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name.trim_end())
}

fn unquote(value: &str) -> &str {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
}

/// Whether `value` may stand as a cookie value unquoted (RFC 6265 `cookie-octet`s): a credential is
/// base64 and hex with a colon, which always is.
pub fn is_cookie_value(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e))
}

/// `Set-Cookie` for the credential: never readable by scripts, never sent cross-site, and gone when
/// the token expires (a token without expiry: when the browser session ends).
pub fn set_cookie(cookie: &Cookie, value: &str, max_age_s: Option<u64>) -> String {
    let mut header = format!("{}={value}; Path={}", cookie.name, cookie.path);
    if let Some(age) = max_age_s {
        header.push_str(&format!("; Max-Age={age}"));
    }
    header.push_str("; HttpOnly; SameSite=Strict");
    if cookie.secure {
        header.push_str("; Secure");
    }
    header
}

/// Whether a browser keeps and sends a `Secure` cookie for this request: it came over HTTPS (the
/// request's `:scheme`, or the `x-forwarded-proto` of a proxy that terminated TLS), or its host is a
/// loopback name or address, which browsers treat as a secure origin.
pub fn secure_origin(scheme: Option<&str>, forwarded_proto: Option<&str>, authority: &str) -> bool {
    let https = |value: Option<&str>| value.is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    https(scheme) || https(forwarded_proto) || is_loopback(authority)
}

fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(host, _)| host),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_by_exact_name() {
        let header = "theme=dark; l402-weather=TUFD:ab12;l402-weather.eu=x; other=\"q\"";
        assert_eq!(find(header, "l402-weather"), Some("TUFD:ab12"));
        assert_eq!(find(header, "l402-weather.eu"), Some("x"));
        assert_eq!(find(header, "other"), Some("q"));
        assert_eq!(find(header, "l402-weath"), None);
        assert_eq!(find(header, "L402-weather"), None, "names are case-sensitive");
        assert_eq!(find("", "a"), None);
        assert_eq!(find("a", "a"), None, "a pair without = has no value");
        assert_eq!(find("a=1; a=2", "a"), Some("1"), "the first (longest path) wins");
        assert_eq!(find(" a = 1 ", "a"), Some("1"));
    }

    #[test]
    fn strips_only_the_named_cookie() {
        assert_eq!(without("theme=dark; l402-weather=TUFD:ab; lang=en", "l402-weather"), "theme=dark; lang=en");
        assert_eq!(without("l402-weather=a; l402-weather=b", "l402-weather"), "");
        assert_eq!(without("l402-weather.eu=a;l402-weather=b", "l402-weather"), "l402-weather.eu=a");
        assert_eq!(without("flag; a=1", "a"), "flag");
    }

    #[test]
    fn set_cookie_carries_every_attribute() {
        let cookie = Cookie { name: "l402-weather".into(), path: "/v1/".into(), secure: true };
        assert_eq!(
            set_cookie(&cookie, "TUFD:ab", Some(600)),
            "l402-weather=TUFD:ab; Path=/v1/; Max-Age=600; HttpOnly; SameSite=Strict; Secure"
        );
        let plain = Cookie { secure: false, ..cookie };
        assert_eq!(set_cookie(&plain, "x", None), "l402-weather=x; Path=/v1/; HttpOnly; SameSite=Strict");
    }

    #[test]
    fn credentials_are_cookie_values() {
        assert!(is_cookie_value("AgEEbHNhdA+/=:0123abcdef"));
        assert!(is_cookie_value("AgEE-_:00"));
        for bad in ["", "a b", "a;b", "a,b", "a\"b", "a\\b", "é", "a\nb"] {
            assert!(!is_cookie_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn secure_origins_are_https_or_loopback() {
        assert!(secure_origin(Some("https"), None, "api.example.com"));
        assert!(secure_origin(Some("http"), Some("HTTPS"), "api.example.com"));
        for loopback in ["127.0.0.1:8000", "127.1.2.3", "[::1]:443", "localhost", "LOCALHOST.:80", "app.localhost"] {
            assert!(secure_origin(Some("http"), None, loopback), "{loopback}");
        }
        for plain in [
            "api.example.com",
            "10.0.0.1:80",
            "[2001:db8::1]",
            "localhost.example.com",
            "127.0.0.1.example",
            "127.0.0.256",
        ] {
            assert!(!secure_origin(Some("http"), None, plain), "{plain}");
            assert!(!secure_origin(None, Some("http"), plain), "{plain}");
        }
    }
}
