//! `l402`: the operator's command line. Mint tokens (free trials, tests), inspect and verify them,
//! and check a filter configuration before deploying it. Secrets are read from a file or an
//! environment variable, never from the command line, where other users could see them.

use l402::config::{parse_secret_list, Config, ConfigError};
use l402::l402::encoding::{base64_encode, hex_decode, hex_decode_array, hex_encode};
use l402::l402::header::{is_l402_authorization, parse_authorization, parse_macaroon_header};
use l402::l402::{mint, verify, Credential, Grant, Identifier, Macaroon, Requirement, SecretRing, VerifyError};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage:
  l402 token mint --service NAME [--payment-hash HEX] [--token-id HEX] [--capability CAP]...
                  [--lifetime-s N | --valid-until UNIX] [--constraint KEY=VALUE]... [SECRET] [--json]
      Without --payment-hash a random preimage is drawn and the full credential printed.
  l402 token inspect [TOKEN|-] [--json]
      TOKEN: a base64 or hex macaroon, or an `L402 <macaroon>:<preimage>` credential.
  l402 token verify --service NAME [--capability CAP]... [--now UNIX] [--method M] [--path P] [SECRET] [--json]
      Reads the credential (`L402 <macaroon>:<preimage>`, or a hex macaroon with a preimage
      caveat) from standard input. Exit status 0 when valid, 1 when refused.
  l402 config check FILE [--kong-conf KONG_CONF] [--json]
      Validates a filter configuration; {\"env\": NAME} sources are read from this environment.
      With --kong-conf, also checks that Kong's configuration gives the filter what it needs.

SECRET: --secret-file PATH | --secret-env VAR (default: --secret-env L402_SECRETS); the value is one
or more hex secrets separated by commas or whitespace, the first mints and all verify.";

/// Exit statuses: refused token or invalid config, and bad usage.
const REFUSED: u8 = 1;
const USAGE_ERROR: u8 = 2;

struct Args {
    positional: Vec<String>,
    options: Vec<(String, String)>,
    json: bool,
}

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut args = Args { positional: Vec::new(), options: Vec::new(), json: false };
        let mut raw = raw.peekable();
        while let Some(arg) = raw.next() {
            if arg == "--json" {
                args.json = true;
            } else if let Some(name) = arg.strip_prefix("--") {
                let value = raw.next().ok_or_else(|| format!("--{name} needs a value"))?;
                args.options.push((name.to_owned(), value));
            } else {
                args.positional.push(arg);
            }
        }
        Ok(args)
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.options.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.one(name).map(|v| v.parse().map_err(|_| format!("--{name} must be a whole number"))).transpose()
    }

    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.options.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(format!("unknown option --{k}")),
            None => Ok(()),
        }
    }

    fn secrets(&self) -> Result<SecretRing, String> {
        let text = match (self.one("secret-file"), self.one("secret-env")) {
            (Some(_), Some(_)) => return Err("give --secret-file or --secret-env, not both".into()),
            (Some(path), None) => std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?,
            (None, env) => {
                let name = env.unwrap_or("L402_SECRETS");
                std::env::var(name).map_err(|_| format!("environment variable {name} holds no secret"))?
            }
        };
        let mut secrets = Vec::new();
        for (index, hex) in parse_secret_list(&text).iter().enumerate() {
            secrets.push(hex_decode(hex).ok_or_else(|| format!("secret #{index} is not hex"))?);
        }
        SecretRing::new(secrets).map_err(|e| e.to_string())
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn random32() -> Result<[u8; 32], String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes)
}

fn hex32(args: &Args, name: &str) -> Result<Option<[u8; 32]>, String> {
    args.one(name)
        .map(|v| hex_decode_array::<32>(v).ok_or_else(|| format!("--{name} must be 32 bytes of hex")))
        .transpose()
}

fn token_mint(args: &Args) -> Result<ExitCode, String> {
    args.only(&[
        "service",
        "payment-hash",
        "token-id",
        "capability",
        "lifetime-s",
        "valid-until",
        "constraint",
        "secret-file",
        "secret-env",
    ])?;
    let ring = args.secrets()?;
    let service = args.one("service").ok_or("--service is required")?;
    let (payment_hash, preimage) = match hex32(args, "payment-hash")? {
        Some(hash) => (hash, None),
        None => {
            let preimage = random32()?;
            (Sha256::digest(preimage).into(), Some(preimage))
        }
    };
    let token_id = match hex32(args, "token-id")? {
        Some(id) => id,
        None => random32()?,
    };
    let valid_until = match (args.number("lifetime-s")?, args.number("valid-until")?) {
        (Some(_), Some(_)) => return Err("give --lifetime-s or --valid-until, not both".into()),
        (Some(life), None) => Some(now().saturating_add(life)),
        (None, until) => until,
    };
    let constraints = args
        .all("constraint")
        .into_iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or(format!("--constraint {c}: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let capabilities = args.all("capability");
    let grant =
        Grant { payment_hash, token_id, service, capabilities: &capabilities, valid_until, constraints: &constraints };
    let macaroon = mint(&ring, &grant);
    let encoded = base64_encode(&macaroon.encode());
    let credential = preimage.map(|p| format!("L402 {encoded}:{}", hex_encode(&p)));
    if args.json {
        let mut out = describe(&macaroon);
        out["macaroon"] = json!(encoded);
        if let (Some(p), Some(c)) = (preimage, &credential) {
            out["preimage"] = json!(hex_encode(&p));
            out["authorization"] = json!(c);
        }
        println!("{out}");
    } else {
        println!("{}", credential.unwrap_or(encoded));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(macaroon: &Macaroon) -> serde_json::Value {
    let identifier = match Identifier::decode(macaroon.identifier()) {
        Ok(id) => {
            json!({ "version": 0, "payment_hash": hex_encode(&id.payment_hash), "token_id": hex_encode(&id.token_id) })
        }
        Err(e) => json!({ "error": VerifyError::from(e).to_string() }),
    };
    json!({
        "location": macaroon.location().map(String::from_utf8_lossy),
        "identifier": identifier,
        "identifier_hex": hex_encode(macaroon.identifier()),
        "caveats": macaroon.caveats(),
        "signature": hex_encode(macaroon.signature()),
    })
}

fn read_input(args: &Args) -> Result<String, String> {
    match args.positional.first().map(String::as_str) {
        Some(text) if text != "-" => Ok(text.to_owned()),
        _ => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read standard input: {e}"))?;
            Ok(text.trim().to_owned())
        }
    }
}

/// Reads a credential in any form a client may send, with a header name in front or not.
fn parse_credential(text: &str) -> Result<Credential, VerifyError> {
    let value = text
        .split_once(':')
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map_or(text, |(_, v)| v)
        .trim();
    if is_l402_authorization(value) {
        parse_authorization(value)
    } else if value.contains(':') {
        parse_authorization(&format!("L402 {value}"))
    } else {
        parse_macaroon_header(value)
    }
}

fn token_inspect(args: &Args) -> Result<ExitCode, String> {
    args.only(&[])?;
    let text = read_input(args)?;
    let macaroon = match parse_credential(&text) {
        Ok(credential) => credential.macaroon,
        Err(_) => {
            let bytes = l402::l402::encoding::base64_decode(&text)
                .or_else(|| hex_decode(&text))
                .ok_or("not a macaroon in base64 or hex")?;
            Macaroon::decode(&bytes).map_err(|e| VerifyError::from(e).to_string())?
        }
    };
    let out = describe(&macaroon);
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

fn token_verify(args: &Args) -> Result<ExitCode, String> {
    args.only(&["service", "capability", "now", "method", "path", "secret-file", "secret-env"])?;
    let ring = args.secrets()?;
    let service = args.one("service").ok_or("--service is required")?;
    let capabilities = args.all("capability");
    let need = Requirement {
        service,
        capabilities: &capabilities,
        now: args.number("now")?.unwrap_or_else(now),
        method: args.one("method").unwrap_or("GET"),
        path: args.one("path").unwrap_or("/"),
    };
    let text = read_input(args)?;
    let outcome = parse_credential(&text).and_then(|c| verify(&ring, c, &need));
    let (code, out) = match &outcome {
        Ok(token) => (
            ExitCode::SUCCESS,
            json!({ "valid": true, "token_id": hex_encode(&token.identifier.token_id), "payment_hash": hex_encode(&token.identifier.payment_hash), "caveats": token.caveats() }),
        ),
        Err(e) => (ExitCode::from(REFUSED), json!({ "valid": false, "reason": e.code(), "detail": e.to_string() })),
    };
    if args.json {
        println!("{out}");
    } else {
        match &outcome {
            Ok(_) => println!("valid"),
            Err(e) => println!("refused: {e}"),
        }
    }
    Ok(code)
}

/// The default shared-memory zone, as Kong 3.7+ makes it from kong.conf.
const KONG_SHM_PROPERTY: &str = "nginx_wasm_shm_kv";

/// Kong's engine traps the module on every shared-data call when it has no default zone, which the
/// module cannot detect without trapping: the operator's check finds it in kong.conf instead.
fn kong_conf_check(config: &Config, kong_conf: &str) -> Result<(), ConfigError> {
    let fields = config.shared_data_fields();
    let has_zone = kong_conf.lines().any(|line| {
        let line = line.trim();
        line.strip_prefix(KONG_SHM_PROPERTY)
            .is_some_and(|rest| rest.trim_start().strip_prefix('=').is_some_and(|size| !size.trim().is_empty()))
    });
    match fields.first() {
        Some(field) if !has_zone => Err(ConfigError {
            field: field.clone(),
            message: format!(
                "{} keep state in proxy-wasm shared data, which needs Kong's default zone: set {KONG_SHM_PROPERTY} = 16m in kong.conf (Kong 3.7+)",
                fields.join(", ")
            ),
        }),
        _ => Ok(()),
    }
}

fn config_check(args: &Args) -> Result<ExitCode, String> {
    args.only(&["kong-conf"])?;
    let path = args.positional.first().ok_or("config check needs a FILE")?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let kong_conf = match args.one("kong-conf") {
        Some(conf) => Some(std::fs::read_to_string(conf).map_err(|e| format!("cannot read {conf}: {e}"))?),
        None => None,
    };
    let outcome = Config::parse(&bytes, &|name| std::env::var(name).ok()).and_then(|config| {
        kong_conf.map_or(Ok(()), |conf| kong_conf_check(&config, &conf))?;
        Ok(config)
    });
    let (code, out) = match &outcome {
        Ok(config) => (ExitCode::SUCCESS, json!({ "valid": true, "routes": config.routes.len() })),
        Err(e) => (ExitCode::from(REFUSED), json!({ "valid": false, "field": e.field, "message": e.message })),
    };
    if args.json {
        println!("{out}");
    } else {
        match &outcome {
            Ok(config) => println!("{path}: valid ({} routes)", config.routes.len()),
            Err(e) => println!("{path}: {e}"),
        }
    }
    Ok(code)
}

fn main() -> ExitCode {
    let mut raw = std::env::args().skip(1);
    let (group, command) = (raw.next().unwrap_or_default(), raw.next().unwrap_or_default());
    let result = Args::parse(raw).and_then(|args| match (group.as_str(), command.as_str()) {
        ("token", "mint") => token_mint(&args),
        ("token", "inspect") => token_inspect(&args),
        ("token", "verify") => token_verify(&args),
        ("config", "check") => config_check(&args),
        _ => Err(String::new()),
    });
    match result {
        Ok(code) => code,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("l402: {message}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(USAGE_ERROR)
        }
    }
}
