//! The 402 page: what is sold, the invoice as a QR code, as text and as a `lightning:` link (all
//! without JavaScript), and where the route redeems into a cookie, WebLN and a form for the
//! preimage. One static script and one static style, allowed by hash: nothing else runs or loads.

use crate::l402::encoding::base64_encode;
use sha2::{Digest, Sha256};

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// What the page shows.
pub struct Page<'a> {
    pub service: &'a str,
    pub memo: &'a str,
    pub price_msat: u64,
    pub invoice: &'a str,
    pub expiry_s: u32,
    /// Why the credential presented was refused, in words.
    pub refusal: Option<String>,
    pub redeem: Option<Redeem<'a>>,
}

/// The redemption form: where the script posts, and the challenge's macaroon it sends with the
/// preimage.
pub struct Redeem<'a> {
    pub action: &'a str,
    pub macaroon: &'a str,
}

/// Text made safe for HTML content and double- or single-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's `Content-Security-Policy`: its own style and script by hash, the script's redemption
/// sent only to this origin, no other resource of any kind.
pub fn content_security_policy() -> String {
    let hash = |text: &str| base64_encode(&Sha256::digest(text.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        hash(STYLE),
        hash(SCRIPT)
    )
}

/// A price in satoshis, with the millisatoshis as decimals where there are any.
fn sats(msat: u64) -> String {
    let (whole, rest) = (msat.checked_div(1000).unwrap_or(0), msat.checked_rem(1000).unwrap_or(0));
    if rest == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{rest:03}").trim_end_matches('0'))
    }
}

/// The invoice's expiry as the page says it before a script counts it down.
fn expiry_text(seconds: u32) -> String {
    match seconds {
        0..=59 => format!("in {seconds} seconds"),
        60..=119 => "in a minute".to_owned(),
        _ => format!("in {} minutes", seconds.checked_div(60).unwrap_or(0)),
    }
}

pub fn render(page: &Page<'_>) -> String {
    let service = escape(page.service);
    let invoice = escape(page.invoice);
    let mut html = String::with_capacity(16 * 1024);
    html.push_str(&format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n<meta name=\"referrer\" content=\"no-referrer\">\n<title>Payment required: {service}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n<h1>Payment required</h1>\n<p class=\"memo\">{memo}</p>\n<dl>\n<dt>Service</dt><dd>{service}</dd>\n<dt>Price</dt><dd>{price} sat</dd>\n<dt>Invoice expires</dt><dd><span id=\"left\" data-seconds=\"{seconds}\">{left}</span></dd>\n</dl>\n",
        memo = escape(page.memo),
        price = sats(page.price_msat),
        seconds = page.expiry_s,
        left = expiry_text(page.expiry_s),
    ));
    if let Some(refusal) = &page.refusal {
        html.push_str(&format!(
            "<p class=\"note\" id=\"refused\">Your access was refused: {}. Pay this new invoice to continue.</p>\n",
            escape(refusal)
        ));
    }
    if let Some(svg) = super::qr::svg(page.invoice) {
        html.push_str(&format!("<a class=\"qr\" id=\"qr\" href=\"lightning:{invoice}\">{svg}</a>\n"));
    }
    html.push_str(&format!(
        "<div class=\"actions\">\n<a class=\"button\" id=\"open\" href=\"lightning:{invoice}\">Open in wallet</a>\n<button type=\"button\" id=\"webln\" hidden>Pay with WebLN</button>\n</div>\n<label for=\"invoice\">Lightning invoice</label>\n<textarea id=\"invoice\" readonly rows=\"7\" spellcheck=\"false\">{invoice}</textarea>\n<button type=\"button\" id=\"copy\" class=\"secondary\" hidden>Copy invoice</button>\n"
    ));
    match &page.redeem {
        // The script shows the form: it posts the credential in a header, which a form cannot.
        Some(redeem) => html.push_str(&format!(
            "<form id=\"redeem\" method=\"post\" action=\"{action}\" data-macaroon=\"{macaroon}\" hidden>\n<label for=\"preimage\">Paid? If your wallet shows the payment's preimage, paste it here:</label>\n<input id=\"preimage\" name=\"preimage\" required pattern=\"[0-9a-fA-F]{{64}}\" autocomplete=\"off\" spellcheck=\"false\" placeholder=\"64 hexadecimal characters\">\n<button type=\"submit\">Continue</button>\n</form>\n<noscript><p class=\"hint\">Paid? Coming back in after paying needs JavaScript on this page.</p></noscript>\n",
            action = escape(redeem.action),
            macaroon = escape(redeem.macaroon),
        )),
        None => html.push_str(
            "<p class=\"hint\">Paid with an HTTP client? Send <code>Authorization: L402 &lt;macaroon&gt;:&lt;preimage&gt;</code> with the macaroon of this answer's <code>WWW-Authenticate</code> header.</p>\n",
        ),
    }
    html.push_str(&format!(
        "<p id=\"status\" role=\"status\"></p>\n</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    ));
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page<'a>(redeem: Option<Redeem<'a>>, refusal: Option<String>) -> Page<'a> {
        Page {
            service: "weather",
            memo: "weather <b>access</b> & \"more\"",
            price_msat: 10_500,
            invoice: "lnbcrt105n1ptest",
            expiry_s: 600,
            refusal,
            redeem,
        }
    }

    #[test]
    fn escapes_every_markup_character() {
        assert_eq!(
            escape("<a href=\"x\" title='y'>&amp;</a>"),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
        );
        assert_eq!(escape("café ⚡"), "café ⚡");
    }

    #[test]
    fn the_page_shows_what_is_sold_and_the_invoice_three_ways() {
        let html = render(&page(None, None));
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<title>Payment required: weather</title>"));
        assert!(html.contains("<p class=\"memo\">weather &lt;b&gt;access&lt;/b&gt; &amp; &quot;more&quot;</p>"));
        assert!(!html.contains("<b>access"));
        assert!(html.contains("<dd>10.5 sat</dd>"));
        assert!(html.contains("<span id=\"left\" data-seconds=\"600\">in 10 minutes</span>"));
        assert!(html.contains("<a class=\"qr\" id=\"qr\" href=\"lightning:lnbcrt105n1ptest\"><svg "));
        assert!(html.contains("<a class=\"button\" id=\"open\" href=\"lightning:lnbcrt105n1ptest\">Open in wallet</a>"));
        assert!(html.contains(">lnbcrt105n1ptest</textarea>"));
        assert!(html.contains("<button type=\"button\" id=\"webln\" hidden>"));
        // Without redemption there is no form, hence nothing for WebLN to complete.
        assert!(!html.contains("<form"));
        assert!(html.contains("Authorization: L402 &lt;macaroon&gt;:&lt;preimage&gt;"));
        assert!(!html.contains("id=\"refused\""));
    }

    #[test]
    fn the_redemption_form_posts_the_macaroon_with_the_preimage() {
        let redeem = Redeem { action: "/v1/x?a=1&l402-redeem", macaroon: "AgE+/w==" };
        let html = render(&page(Some(redeem), Some("token has expired".into())));
        assert!(html.contains(
            "<form id=\"redeem\" method=\"post\" action=\"/v1/x?a=1&amp;l402-redeem\" data-macaroon=\"AgE+/w==\" hidden>"
        ));
        assert!(html.contains("name=\"preimage\" required pattern=\"[0-9a-fA-F]{64}\""));
        assert!(html.contains("<p class=\"note\" id=\"refused\">Your access was refused: token has expired."));
    }

    #[test]
    fn nothing_interpolated_escapes_its_context() {
        let hostile = "\"><script>alert(1)</script><x y='";
        let redeem = Redeem { action: hostile, macaroon: hostile };
        let html = render(&Page {
            service: hostile,
            memo: hostile,
            invoice: hostile,
            ..page(Some(redeem), Some(hostile.into()))
        });
        assert_eq!(html.matches("<script").count(), 1, "only the page's own script");
        assert!(!html.contains("alert(1)</script>"));
        assert!(!html.contains("<svg"), "no QR code for what is not an invoice");
    }

    #[test]
    fn the_policy_allows_exactly_the_page_s_style_and_script() {
        let csp = content_security_policy();
        assert!(csp.starts_with("default-src 'none'; "));
        let hash = |text: &str| format!("'sha256-{}'", base64_encode(&Sha256::digest(text.as_bytes())));
        let html = render(&page(None, None));
        let between =
            |open: &str, close: &str| html.split(open).nth(1).unwrap().split(close).next().unwrap().to_owned();
        assert!(csp.contains(&format!("style-src {};", hash(&between("<style>", "</style>")))));
        assert!(csp.contains(&format!("script-src {};", hash(&between("<script>", "</script>")))));
        assert!(csp.contains("connect-src 'self'; form-action 'self'") && !csp.contains("unsafe"));
        // Markup in the style or the script would end their element early.
        assert!(!STYLE.contains('<') && !SCRIPT.contains("</"));
    }

    #[test]
    fn prices_and_expiries_read_naturally() {
        assert_eq!(sats(10_000), "10");
        assert_eq!(sats(10_500), "10.5");
        assert_eq!(sats(1), "0.001");
        assert_eq!(expiry_text(45), "in 45 seconds");
        assert_eq!(expiry_text(90), "in a minute");
        assert_eq!(expiry_text(86_400), "in 1440 minutes");
    }
}
