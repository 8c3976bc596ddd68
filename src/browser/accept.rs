//! Content negotiation on `Accept` (RFC 9110 §12.5.1), for the one question the 402 asks of it.

/// Media ranges read from one `Accept` header; the rest of a longer list is ignored.
const MAX_RANGES: usize = 64;

/// How a media type fares in an `Accept` list: the weight of the most specific range matching it.
#[derive(Clone, Copy)]
struct Weight {
    /// 0: no range matches; 1: `*/*`; 2: `type/*`; 3: `type/subtype`.
    specificity: u8,
    /// The q-value in thousandths.
    q: u16,
}

impl Weight {
    const UNMATCHED: Weight = Weight { specificity: 0, q: 0 };

    /// The first range of the highest specificity decides.
    fn consider(self, range: (&str, &str), wanted: (&str, &str), q: u16) -> Weight {
        let specificity = match range {
            ("*", "*") => 1,
            (kind, "*") if kind.eq_ignore_ascii_case(wanted.0) => 2,
            (kind, sub) if kind.eq_ignore_ascii_case(wanted.0) && sub.eq_ignore_ascii_case(wanted.1) => 3,
            _ => 0,
        };
        if specificity > self.specificity {
            Weight { specificity, q }
        } else {
            self
        }
    }
}

/// Whether the client ranks `text/html` above `application/json`: a browser's navigation does
/// (`text/html` at 1, JSON only under `*/*;q=0.8`); curl's and fetch()'s `*/*`, which rank them
/// equal, get JSON, as does anything that names JSON as high.
pub fn prefers_html(accept: &str) -> bool {
    let (mut html, mut json) = (Weight::UNMATCHED, Weight::UNMATCHED);
    for element in accept.split(',').take(MAX_RANGES) {
        let Some((range, q)) = media_range(element) else { continue };
        html = html.consider(range, ("text", "html"), q);
        json = json.consider(range, ("application", "json"), q);
    }
    html.q > json.q
}

/// `type/subtype` and the q-value (1 when absent) of one element; `None` when malformed.
fn media_range(element: &str) -> Option<((&str, &str), u16)> {
    let mut parts = element.split(';');
    let (kind, sub) = parts.next()?.trim().split_once('/')?;
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if !token(kind) || !token(sub) || (kind == "*" && sub != "*") {
        return None;
    }
    let mut q = 1000;
    for parameter in parts {
        let (name, value) = parameter.trim().split_once('=')?;
        if name.trim_end().eq_ignore_ascii_case("q") {
            q = qvalue(value.trim_start())?;
            break;
        }
    }
    Some(((kind, sub), q))
}

/// `0`, `0.5`, `1.000`...: at most three decimals, never above 1.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 {
        return None;
    }
    // The decimals as thousandths: `5` is 500, `125` is 125.
    let mut thousandths: u16 = 0;
    for place in 0..3 {
        let digit = match fraction.as_bytes().get(place) {
            Some(b) if b.is_ascii_digit() => u16::from(b.wrapping_sub(b'0')),
            Some(_) => return None,
            None => 0,
        };
        thousandths = thousandths.wrapping_mul(10).wrapping_add(digit);
    }
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_prefer_html_and_api_clients_do_not() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        let safari = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        for accept in [chromium, firefox, safari, "text/html", "TEXT/HTML", "text/*", "text/html;q=0.2, */*;q=0.1"] {
            assert!(prefers_html(accept), "{accept}");
        }
        for accept in [
            "*/*",
            "",
            "application/json",
            "application/json, text/html",
            "text/html, application/json",
            "text/html;q=0.5, application/json;q=0.5",
            "text/html;q=0.5, */*",
            "text/*, */*",
            "text/html;q=0, */*",
            "application/*, text/html",
            "image/png",
        ] {
            assert!(!prefers_html(accept), "{accept}");
        }
    }

    #[test]
    fn the_most_specific_range_decides() {
        // JSON explicitly refused, HTML under the wildcard.
        assert!(prefers_html("application/json;q=0, */*;q=0.1"));
        assert!(!prefers_html("text/*;q=0.3, text/html;q=0.1, application/*;q=0.2"));
        assert!(prefers_html("text/html;level=1;q=0.9, application/json;q=0.8"));
    }

    #[test]
    fn q_values_are_parsed_strictly() {
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("0.8"), Some(800));
        assert_eq!(qvalue("0.125"), Some(125));
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        for bad in ["1.5", "2", "0.1234", "-0.5", ".5", "0.x", "", "1e0", " 0.5"] {
            assert_eq!(qvalue(bad), None, "{bad}");
        }
        // A malformed element is skipped, never read as a weight of 1.
        assert!(!prefers_html("text/html;q=2, application/json;q=0.5"));
        assert!(!prefers_html("text/html;q, application/json;q=0.5"));
        assert!(!prefers_html("html, application/json;q=0.5"));
        assert!(prefers_html("text/html ; q=0.9 , application/json ; q=0.5"));
    }

    #[test]
    fn long_lists_are_read_only_so_far() {
        let long = format!("{}text/html", "image/png, ".repeat(MAX_RANGES));
        assert!(!prefers_html(&long));
    }
}
