//! Shared by the fuzz targets and the seed generator (`fuzz/seedgen`): the fixed secrets and gate
//! config, the gate target's text input format, and an independent model of what a paid request
//! must satisfy. Included with `#[path]`, so not every user needs every item.
#![allow(dead_code)]

use l402::config::Config;
use l402::l402::encoding::{base64_encode, hex_encode};
use l402::l402::{mint, Grant, Macaroon, SecretRing};
use l402::payment::wire::{base64url_encode, rfc3339};
use l402::payment::{charge_request, Binding, Charge, IdKeys, Params};
use sha2::{Digest, Sha256};

/// The secret every target verifies with (hex of 32 bytes 0x11).
pub const SECRET_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";
/// A second secret: tokens minted with it must be refused by the gate.
pub const OTHER_SECRET_HEX: &str = "2222222222222222222222222222222222222222222222222222222222222222";
/// The preimage of every minted test token.
pub const PREIMAGE: [u8; 32] = [9; 32];

pub fn ring() -> SecretRing {
    SecretRing::new(vec![vec![0x11; 32]]).expect("a 32-byte secret")
}

pub fn other_ring() -> SecretRing {
    SecretRing::new(vec![vec![0x22; 32]]).expect("a 32-byte secret")
}

/// The gate target's config: a free prefix, an exact GET route, a glob on a wildcard host with
/// restricted tokens, a free glob with wildcards inside a segment, a prefix route, and a service
/// needing capabilities on one host; unmatched requests are denied. [`model_route`] is its
/// independent model.
pub const GATE_CONFIG: &str = r#"{
  "secrets": ["1111111111111111111111111111111111111111111111111111111111111111"],
  "node": { "kind": "lnbits", "upstream": "lnbits", "authority": "lnbits:5000", "credential": "key" },
  "routes": [
    { "match": { "path_prefix": "/health" }, "free": true },
    { "match": { "path": "/v1/exact", "methods": ["GET"] }, "service": "weather", "price_sat": 10, "lifetime_s": 100 },
    { "match": { "path_glob": "/v2/*/forecast/**", "host": "*.example.com" }, "service": "geo", "price_sat": 5,
      "restrict": { "path_prefix": "/v2/", "methods": ["GET", "head"] } },
    { "match": { "path_glob": "/v3/a*b*c/x" }, "free": true },
    { "match": { "path_prefix": "/v1/" }, "service": "weather", "price_sat": 10, "lifetime_s": 100 },
    { "match": { "path_prefix": "/admin/", "host": "admin.local" }, "service": "admin", "price_sat": 50, "capabilities": ["admin", "read"] }
  ]
}"#;

/// Which route of [`GATE_CONFIG`] a request falls under, written from the config's documentation
/// rather than from `config::routes`. `path` is the raw request path (query and fragment included).
pub fn model_route(method: &str, path: &str, authority: &str) -> Option<usize> {
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        match authority.rfind(':') {
            Some(colon) if authority[colon + 1..].chars().all(|c| c.is_ascii_digit()) => &authority[..colon],
            _ => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let lower_host = host.to_ascii_lowercase();
    let segments: Vec<&str> = path.split('/').collect();
    let routes = [
        path.starts_with("/health"),
        path == "/v1/exact" && method.eq_ignore_ascii_case("get"),
        lower_host.len() > ".example.com".len()
            && lower_host.ends_with(".example.com")
            && segments.len() >= 4
            && segments[0].is_empty()
            && segments[1] == "v2"
            && segments[3] == "forecast",
        segments.len() == 4
            && segments[0].is_empty()
            && segments[1] == "v3"
            && wildcard(b"a*b*c", segments[2].as_bytes())
            && segments[3] == "x",
        path.starts_with("/v1/"),
        path.starts_with("/admin/") && lower_host == "admin.local",
    ];
    routes.iter().position(|&m| m)
}

/// Readings an upstream may make of a request path (without query), written independently of
/// `policy::path`: the path as sent and decoded one to three times, each of them also with `\`
/// as `/`, with empty segments merged, and with `;params` dropped from every segment.
pub fn model_readings(path: &str) -> Vec<String> {
    let mut rounds = vec![path.to_owned()];
    for _ in 0..3 {
        let last = rounds.last().expect("the path itself").clone();
        rounds.push(percent_decode(&last));
    }
    let mut out = Vec::new();
    for round in rounds {
        let backslashed = round.replace('\\', "/");
        let mut merged = backslashed.clone();
        while merged.contains("//") {
            merged = merged.replace("//", "/");
        }
        let stripped: Vec<String> = [&round, &merged]
            .iter()
            .map(|p| p.split('/').map(|s| s.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("/"))
            .collect();
        out.extend([round, backslashed, merged]);
        out.extend(stripped);
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            // A decoded `?` or `#` would read as the query or fragment: it stays encoded, as data.
            (b'%', Some(hex)) if hex.iter().all(u8::is_ascii_hexdigit) && !matches!(hex, b"3F" | b"3f" | b"23") => {
                let hex = std::str::from_utf8(hex).expect("hex digits are ASCII");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `.` or `..` segment.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// `%2F` or `%5C` in any case, or a backslash.
pub fn has_encoded_slash(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c") || path.contains('\\')
}

/// `*` matches any run of bytes (the textbook recursive matcher).
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| wildcard(rest, &text[skip..])),
        Some((p, rest)) => text.split_first().is_some_and(|(t, text)| t == p && wildcard(rest, text)),
    }
}

pub fn gate_config() -> Config {
    Config::parse(GATE_CONFIG.as_bytes(), &|_| None).expect("the gate fuzz config parses")
}

/// The environment the config target resolves `{"env": NAME}` with.
pub fn fuzz_env(name: &str) -> Option<String> {
    match name {
        "L402_SECRETS" => Some(format!("{SECRET_HEX}, {OTHER_SECRET_HEX}")),
        "SHORT_SECRET" => Some("abcd".to_owned()),
        "NODE_CREDENTIAL" => Some("0201036c6e64".to_owned()),
        "BLANK" => Some("  ".to_owned()),
        "CONTROL" => Some("a\u{7}b".to_owned()),
        _ => None,
    }
}

/// A token to mint, written in one line as `!service|caps|valid_until|holder caveats|flags`:
/// `caps` comma-separated, `valid_until` empty for none, holder caveats `;`-separated and appended
/// after minting (as any holder can), flags: `w` wrong preimage, `x` minted with another secret,
/// `l` LSAT scheme, `u` URL-safe base64 without padding, `s` lower-case scheme.
/// Used for `Authorization` it becomes `L402 <b64>:<hex>`; for the macaroon header the hex macaroon
/// with a `preimage=<hex>` caveat.
pub struct MintSpec<'a> {
    pub service: &'a str,
    pub capabilities: Vec<String>,
    pub valid_until: Option<u64>,
    pub holder_caveats: Vec<&'a str>,
    pub flags: &'a str,
}

impl<'a> MintSpec<'a> {
    pub fn parse(line: &'a str) -> Option<MintSpec<'a>> {
        let mut fields = line.strip_prefix('!')?.split('|');
        let service = fields.next().unwrap_or("");
        let capabilities =
            fields.next().unwrap_or("").split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        let valid_until = fields.next().and_then(|v| v.parse().ok());
        let holder_caveats = fields.next().unwrap_or("").split(';').filter(|c| !c.is_empty()).collect();
        let flags = fields.next().unwrap_or("");
        Some(MintSpec { service, capabilities, valid_until, holder_caveats, flags })
    }

    pub fn macaroon(&self) -> Macaroon {
        let payment_hash = Sha256::digest(PREIMAGE).into();
        let grant = Grant {
            payment_hash,
            token_id: Sha256::digest(self.service.as_bytes()).into(),
            service: self.service,
            capabilities: &self.capabilities,
            valid_until: self.valid_until,
            constraints: &[],
        };
        let ring = if self.flags.contains('x') { other_ring() } else { ring() };
        let mut mac = mint(&ring, &grant);
        for caveat in &self.holder_caveats {
            mac.add_caveat(caveat);
        }
        mac
    }

    fn preimage_hex(&self) -> String {
        let mut preimage = PREIMAGE;
        if self.flags.contains('w') {
            preimage[0] ^= 1;
        }
        hex_encode(&preimage)
    }

    pub fn authorization(&self) -> String {
        let mut b64 = base64_encode(&self.macaroon().encode());
        if self.flags.contains('u') {
            b64 = b64.replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned();
        }
        let scheme = match (self.flags.contains('l'), self.flags.contains('s')) {
            (true, true) => "lsat",
            (true, false) => "LSAT",
            (false, true) => "l402",
            (false, false) => "L402",
        };
        format!("{scheme} {b64}:{}", self.preimage_hex())
    }

    pub fn macaroon_header(&self) -> String {
        let mut mac = self.macaroon();
        mac.add_caveat(&format!("preimage={}", self.preimage_hex()));
        hex_encode(&mac.encode())
    }
}

/// One request of the gate target. The input is requests separated by a blank line, each up to six
/// lines: method, path, authority, now (decimal), authorization, macaroon header; `-` or a missing
/// line is no header; a header line starting with `!` is a [`MintSpec`].
pub struct GateRequest {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub now: u64,
    pub authorization: Option<String>,
    pub macaroon: Option<String>,
}

pub const MAX_GATE_REQUESTS: usize = 8;

pub fn parse_gate_input(text: &str) -> Vec<GateRequest> {
    text.split("\n\n")
        .take(MAX_GATE_REQUESTS)
        .map(|record| {
            let mut lines = record.split('\n');
            let method = lines.next().unwrap_or("").to_owned();
            let path = lines.next().unwrap_or("").to_owned();
            let authority = lines.next().unwrap_or("").to_owned();
            let now = lines.next().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
            let header = |line: Option<&str>, grpc: bool| match line {
                None | Some("-") => None,
                Some(l) => Some(match MintSpec::parse(l) {
                    Some(spec) if grpc => spec.macaroon_header(),
                    Some(spec) => spec.authorization(),
                    None => l.to_owned(),
                }),
            };
            let authorization = header(lines.next(), false);
            let macaroon = header(lines.next(), true);
            GateRequest { method, path, authority, now, authorization, macaroon }
        })
        .collect()
}

/// Necessary conditions, written independently of `l402::l402::caveats`, for a token's caveats to
/// let a request for `service` needing `capabilities` through at `now`: every caveat is
/// `key=value`; there is a `services` caveat and every one lists `service:<tier>`; when capabilities
/// are required there is a `<service>_capabilities` caveat and every one lists them all; every
/// `<service>_valid_until` is a number not before `now`; every `<service>_path_prefix` is a prefix
/// of the path (without query) and every `<service>_methods` lists the method, in any case.
pub fn model_admits(
    caveats: &[String],
    service: &str,
    capabilities: &[String],
    now: u64,
    method: &str,
    path: &str,
) -> Result<(), String> {
    let caps_key = format!("{service}_capabilities");
    let until_key = format!("{service}_valid_until");
    let prefix_key = format!("{service}_path_prefix");
    let methods_key = format!("{service}_methods");
    let (mut saw_services, mut saw_caps) = (false, false);
    for caveat in caveats {
        let Some((key, value)) = caveat.split_once('=') else {
            return Err(format!("caveat {caveat:?} is not key=value"));
        };
        if key == "services" {
            saw_services = true;
            let lists = value.split(',').any(|entry| {
                entry.split_once(':').is_some_and(|(name, tier)| {
                    name == service && !tier.is_empty() && tier.bytes().all(|b| b.is_ascii_digit())
                })
            });
            if !lists {
                return Err(format!("services caveat {value:?} does not grant {service}"));
            }
        } else if key == caps_key {
            saw_caps = true;
            for need in capabilities {
                if !value.split(',').any(|c| c.trim() == need) {
                    return Err(format!("capabilities caveat {value:?} lacks {need}"));
                }
            }
        } else if key == until_key {
            match value.parse::<u64>() {
                Ok(until) if value.bytes().all(|b| b.is_ascii_digit()) && until >= now => {}
                _ => return Err(format!("valid_until {value:?} is not a time at or after {now}")),
            }
        } else if key == prefix_key {
            if !path.starts_with(value) {
                return Err(format!("path {path:?} is outside the token's prefix {value:?}"));
            }
        } else if key == methods_key && !value.split(',').any(|m| m.trim().eq_ignore_ascii_case(method)) {
            return Err(format!("method {method:?} is not in the token's methods {value:?}"));
        }
    }
    if !saw_services {
        return Err("no services caveat".to_owned());
    }
    if !capabilities.is_empty() && !saw_caps {
        return Err("no capabilities caveat".to_owned());
    }
    Ok(())
}

/// The time (Unix seconds) the Payment credentials of the fuzz targets are verified at.
pub const PAYMENT_NOW: u64 = 1_800_000_000;

/// The challenge-id keys of [`ring`], as the gate derives them from its secrets.
pub fn payment_keys() -> IdKeys {
    IdKeys::derive(&ring())
}

pub fn other_payment_keys() -> IdKeys {
    IdKeys::derive(&other_ring())
}

/// `Authorization: Payment` for `challenge` and a preimage as it is written in the payload.
pub fn payment_header(challenge: &Params, preimage: &str) -> String {
    let credential = l402::json::Object::new()
        .with("challenge", challenge.to_json())
        .with("payload", l402::json::Object::new().with("preimage", preimage));
    format!("Payment {}", base64url_encode(l402::json::Json::from(credential).text().as_bytes()))
}

/// A Lightning charge to issue and pay, written as `!` and then one field a line: realm,
/// description, amount in satoshis (1 unless a positive number), invoice, service, `METHOD path`
/// of a quoted price (empty for none), token id seed, lifetime in seconds, preimage seed, and
/// single-character changes `position:byte` separated by spaces (positions are taken modulo the
/// length of the credential's token). Seeds are hashed into 32 bytes. A missing line is empty.
pub struct ChargeSpec<'a> {
    pub realm: &'a str,
    pub description: &'a str,
    pub amount_sat: u64,
    pub invoice: &'a str,
    pub service: &'a str,
    pub quoted: Option<(&'a str, &'a str)>,
    pub token_id: [u8; 32],
    pub lifetime_s: u64,
    pub preimage: [u8; 32],
    pub changes: Vec<(usize, u8)>,
}

pub const MAX_CHARGE_CHANGES: usize = 16;

impl<'a> ChargeSpec<'a> {
    pub fn parse(text: &'a str) -> Option<ChargeSpec<'a>> {
        let mut lines = text.strip_prefix('!')?.split('\n');
        let mut line = || lines.next().unwrap_or("");
        let (realm, description) = (line(), line());
        let amount_sat = line().trim().parse::<u64>().ok().filter(|a| *a > 0).unwrap_or(1);
        let (invoice, service) = (line(), line());
        let quoted = line().split_once(' ');
        let token_id = Sha256::digest(line().as_bytes()).into();
        let lifetime_s = line().trim().parse().unwrap_or(60);
        let preimage = Sha256::digest(line().as_bytes()).into();
        let changes = line()
            .split(' ')
            .filter_map(|c| c.split_once(':'))
            .filter_map(|(at, byte)| Some((at.parse().ok()?, byte.parse().ok()?)))
            .take(MAX_CHARGE_CHANGES)
            .collect();
        Some(ChargeSpec {
            realm,
            description,
            amount_sat,
            invoice,
            service,
            quoted,
            token_id,
            lifetime_s,
            preimage,
            changes,
        })
    }

    pub fn payment_hash(&self) -> [u8; 32] {
        Sha256::digest(self.preimage).into()
    }

    /// Always after [`PAYMENT_NOW`], and within four-digit years.
    pub fn expires(&self) -> u64 {
        PAYMENT_NOW + 1 + self.lifetime_s % 1_000_000_000
    }

    pub fn binding(&self) -> Binding {
        Binding {
            service: self.service.to_owned(),
            token_id: hex_encode(&self.token_id),
            method: self.quoted.map(|(method, _)| method.to_owned()),
            path: self.quoted.map(|(_, path)| path.to_owned()),
        }
    }

    /// The challenge as the gate issues it, its id set by `keys`.
    pub fn challenge(&self, keys: &IdKeys) -> Params {
        let request = charge_request(self.amount_sat, self.description, self.invoice, &self.payment_hash());
        let mut params = Params::charge(self.realm.to_owned(), request, rfc3339(self.expires()), &self.binding());
        params.description = self.description.to_owned();
        keys.sign(&mut params);
        params
    }

    /// What `payment::verify` must find in the paid credential.
    pub fn charge(&self, challenge: &Params) -> Charge {
        Charge {
            challenge_id: challenge.id.clone(),
            payment_hash: self.payment_hash(),
            token_id: self.token_id,
            amount_sat: self.amount_sat,
            binding: self.binding(),
        }
    }
}
