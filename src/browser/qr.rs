//! The invoice as a QR code, drawn as SVG from the encoder's module matrix.
//!
//! Wallets expect `LIGHTNING:<INVOICE>` in upper case: bech32 is case-insensitive, and upper case
//! fits QR's alphanumeric mode (5.5 bits a character instead of 8), so the code is smaller and
//! easier to scan.

use qrcode::bits::Bits;
use qrcode::types::{Color, EcLevel, Version};
use qrcode::QrCode;

/// Light modules around the code, as the standard asks, so scanners find its edges.
const QUIET_ZONE: usize = 4;
/// Survives a smudged or glaring screen (15% of the code).
const EC_LEVEL: EcLevel = EcLevel::M;

/// What the code says: the invoice as a `LIGHTNING:` URI in QR's alphanumeric alphabet.
pub fn payload(invoice: &str) -> Option<String> {
    let payload = format!("LIGHTNING:{}", invoice.to_ascii_uppercase());
    // The encoder reads any other byte as `0`: refuse it rather than draw another invoice.
    payload
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b" $%*+-./:".contains(&b))
        .then_some(payload)
}

/// The module matrix of the smallest code that holds `payload` in alphanumeric mode: its width and
/// its modules row by row (`true` is dark).
fn modules(payload: &str) -> Option<(usize, Vec<bool>)> {
    let code = (1..=40).find_map(|version| {
        let mut bits = Bits::new(Version::Normal(version));
        bits.push_alphanumeric_data(payload.as_bytes()).ok()?;
        bits.push_terminator(EC_LEVEL).ok()?;
        QrCode::with_bits(bits, EC_LEVEL).ok()
    })?;
    Some((code.width(), code.into_colors().into_iter().map(|c| c == Color::Dark).collect()))
}

/// The invoice's QR code as an SVG element (scaled by CSS), or `None` when it cannot be encoded.
/// Each run of dark modules in a row is one rectangle of a single path.
pub fn svg(invoice: &str) -> Option<String> {
    let (width, dark) = modules(&payload(invoice)?)?;
    let size = width.saturating_add(QUIET_ZONE.saturating_mul(2));
    let mut path = String::with_capacity(dark.len().saturating_mul(4));
    for (y, row) in dark.chunks(width.max(1)).enumerate() {
        let mut x = 0;
        while x < row.len() {
            let run = row.iter().skip(x).take_while(|d| **d).count();
            if run > 0 {
                let (left, top) = (x.saturating_add(QUIET_ZONE), y.saturating_add(QUIET_ZONE));
                path.push_str(&format!("M{left} {top}h{run}v1h-{run}z"));
            }
            x = x.saturating_add(run.max(1));
        }
    }
    Some(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\" shape-rendering=\"crispEdges\" role=\"img\" aria-label=\"QR code of the invoice\"><rect width=\"{size}\" height=\"{size}\" fill=\"#fff\"/><path fill=\"#000\" d=\"{path}\"/></svg>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVOICE: &str = "lnbcrt100n1p5abcdepp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5vdhkven9v5sxyetpdeessp5zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zygs9qrsgq7ea976txv";

    #[test]
    fn the_payload_is_an_upper_case_lightning_uri() {
        assert_eq!(payload("lnbc1abc").as_deref(), Some("LIGHTNING:LNBC1ABC"));
        assert_eq!(payload("lnbc1<script>"), None);
        assert_eq!(payload("lnbc1é"), None);
    }

    #[test]
    fn alphanumeric_mode_keeps_the_code_small() {
        let payload = payload(INVOICE).unwrap();
        let (width, dark) = modules(&payload).unwrap();
        assert_eq!(dark.len(), width * width);
        // The byte mode of the same text needs a larger version.
        let bytes = QrCode::with_error_correction_level(INVOICE, EC_LEVEL).unwrap();
        assert!(width < bytes.width(), "{width} vs {}", bytes.width());
        // Version 10 (57 modules) holds 311 alphanumeric characters at level M.
        assert!(payload.len() <= 311 && width <= 57, "{} characters, width {width}", payload.len());
    }

    #[test]
    fn the_svg_draws_every_dark_module_once() {
        let (width, dark) = modules(&payload(INVOICE).unwrap()).unwrap();
        let svg = svg(INVOICE).unwrap();
        let size = width + 2 * QUIET_ZONE;
        assert!(svg.starts_with(&format!("<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {size} {size}\"")));
        let d = svg.split(" d=\"").nth(1).unwrap().split('"').next().unwrap();
        let mut drawn = vec![false; width * width];
        for rect in d.split('z').filter(|r| !r.is_empty()) {
            let (origin, rest) = rect.strip_prefix('M').unwrap().split_once('h').unwrap();
            let (x, y) = origin.split_once(' ').unwrap();
            let (x, y): (usize, usize) = (x.parse().unwrap(), y.parse().unwrap());
            let run: usize = rest.split_once('v').unwrap().0.parse().unwrap();
            for i in 0..run {
                let at = (y - QUIET_ZONE) * width + x - QUIET_ZONE + i;
                assert!(!drawn[at], "module drawn twice");
                drawn[at] = true;
            }
        }
        assert_eq!(drawn, dark);
        assert_eq!(super::svg("lnbc1\""), None);
    }
}
