//! `l402`: the operator's command line. Mint tokens (free trials, tests), inspect and verify them,
//! check a filter configuration before deploying it, and read or credit metered balances. Secrets are read from a file or an
//! environment variable, never from the command line, where other users could see them.
//!
//! Exit statuses: 0 done or valid, 1 refused (a token or a configuration), 2 usage error (bad
//! arguments, no secret, an unreadable file). clap exits 2 itself on arguments it cannot parse.

// The same standard as the library: operator input must never make the tool panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unreachable,
        clippy::todo
    )
)]

mod balance;

use balance::BalanceCommand;
use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use l402::config::{parse_secret_list, Config, ConfigError};
use l402::l402::encoding::{base64_decode, base64_encode, hex_decode, hex_decode_array, hex_encode};
use l402::l402::header::{is_l402_authorization, parse_authorization, parse_macaroon_header};
use l402::l402::{mint, verify, Credential, Grant, Identifier, Macaroon, Requirement, SecretRing, VerifyError};
use l402::payment::wire::{base64url_decode, parse_rfc3339};
use l402::payment::{self, IdKeys};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::env::VarError;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// A refused token or an invalid configuration.
const REFUSED: u8 = 1;
/// Bad arguments, no secret, an unreadable input: the command could not reach a verdict.
const USAGE_ERROR: u8 = 2;
const DEFAULT_SECRET_ENV: &str = "L402_SECRETS";

/// `Err` when a command cannot reach a verdict (bad input, no secret): one line, exit status 2.
type CliResult<T> = Result<T, String>;

/// The operator's tool for the l402 paywall filter: mint, inspect and verify L402 tokens, and
/// check a filter configuration before deploying it.
#[derive(Parser)]
#[command(name = "l402", version)]
#[command(after_help = "Exit status: 0 done or valid, 1 refused (token or configuration), 2 usage error.")]
// The hand-written parser kept the last of a repeated option; so does this one.
#[command(args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    group: Group,
}

/// The subcommand groups: a new one is a variant here and an arm in `run`.
#[derive(Subcommand)]
enum Group {
    /// Mint, inspect and verify tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Inspect and verify credentials of the Payment scheme (Lightning charge).
    #[command(subcommand)]
    Payment(PaymentCommand),
    /// Check a filter configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read or credit a metered token's balance in the fleet's etcd.
    #[command(subcommand)]
    Balance(BalanceCommand),
    /// Print a shell completion script.
    Completions(Completions),
}

#[derive(Subcommand)]
enum TokenCommand {
    Mint(Mint),
    Inspect(Inspect),
    Verify(Verify),
}

#[derive(Subcommand)]
enum PaymentCommand {
    Inspect(PaymentInspect),
    Verify(PaymentVerify),
}

#[derive(Subcommand)]
enum ConfigCommand {
    Check(Check),
}

/// Mint a token (a free trial, a test).
///
/// Without --payment-hash, a random preimage is drawn and the whole credential
/// `L402 <macaroon>:<preimage>` printed; with it, only the macaroon for that invoice.
#[derive(Args)]
#[command(after_help = "Examples:
  l402 token mint --service weather --lifetime-s 86400
  l402 token mint --service weather --payment-hash <hex> --capability read --constraint tier=gold")]
struct Mint {
    /// The service the token is for.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// The payment hash of an invoice you created (32 bytes of hex).
    #[arg(long, value_name = "HEX", value_parser = hex32)]
    payment_hash: Option<[u8; 32]>,
    /// The token id (32 bytes of hex) [default: random].
    #[arg(long, value_name = "HEX", value_parser = hex32)]
    token_id: Option<[u8; 32]>,
    /// A capability the token grants; repeat for several.
    #[arg(long = "capability", value_name = "CAP")]
    capabilities: Vec<String>,
    /// The token expires this many seconds from now [default: never].
    #[arg(long, value_name = "SECONDS", conflicts_with = "valid_until")]
    lifetime_s: Option<u64>,
    /// The token expires at this Unix time [default: never].
    #[arg(long, value_name = "UNIX")]
    valid_until: Option<u64>,
    /// An extra `KEY=VALUE` caveat; repeat for several.
    #[arg(long = "constraint", value_name = "KEY=VALUE", value_parser = key_value)]
    constraints: Vec<(String, String)>,
    /// Print a JSON object: the token's fields, `macaroon`, and `preimage` and `authorization`
    /// when a preimage was drawn.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    secrets: SecretSource,
}

/// Show a token's identifier, caveats and signature.
///
/// Needs no secret and verifies nothing.
#[derive(Args)]
struct Inspect {
    /// A base64 or hex macaroon, or an `L402 <macaroon>:<preimage>` credential; `-` or none reads
    /// standard input.
    #[arg(value_name = "TOKEN")]
    token: Option<String>,
    /// Print the description on one line instead of indented.
    #[arg(long)]
    json: bool,
}

/// Verify a credential as the filter would.
///
/// Exit status 0 when valid, 1 when refused (with the reason).
#[derive(Args)]
#[command(after_help = "Example:
  echo 'L402 AgEE…:…' | l402 token verify --service weather --capability read")]
struct Verify {
    /// The credential; `-` or none reads standard input.
    ///
    /// `L402 <macaroon>:<preimage>` (an `Authorization:` header name may precede it), or a hex
    /// macaroon with a preimage caveat. Standard input is the usual way: it keeps the credential
    /// out of the process list.
    #[arg(value_name = "CREDENTIAL")]
    credential: Option<String>,
    /// The service the request is for.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// A capability the request needs; repeat for several.
    #[arg(long = "capability", value_name = "CAP")]
    capabilities: Vec<String>,
    #[command(flatten)]
    request: RequestArgs,
    /// Print a JSON object: `valid`, then `token_id`, `payment_hash` and `caveats`, or `reason` and
    /// `detail`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    secrets: SecretSource,
}

/// The request a credential is verified for, and when.
#[derive(Args)]
struct RequestArgs {
    /// Verify at this Unix time [default: now].
    #[arg(long, value_name = "UNIX")]
    now: Option<u64>,
    /// The request's method (a token's `<service>_methods` caveat, a quoted charge's method).
    #[arg(long, value_name = "METHOD", default_value = "GET")]
    method: String,
    /// The request's path, decoded (a token's `<service>_path` and `<service>_path_prefix` caveats,
    /// a quoted charge's path).
    #[arg(long, value_name = "PATH", default_value = "/")]
    path: String,
}

/// Show a Payment credential's echoed challenge, decoded: its request (invoice, amount, payment
/// hash), what it was issued for, its expiry.
///
/// Needs no secret and verifies nothing.
#[derive(Args)]
struct PaymentInspect {
    /// `Payment <base64url>` (an `Authorization:` header name may precede it); `-` or none reads
    /// standard input.
    #[arg(value_name = "CREDENTIAL")]
    credential: Option<String>,
    /// Print the description on one line instead of indented.
    #[arg(long)]
    json: bool,
}

/// Verify a Payment credential as the filter would, except for its single use, which only the
/// gateway's store (or the fleet's etcd) knows.
///
/// Exit status 0 when valid, 1 when refused (with the reason).
#[derive(Args)]
#[command(after_help = "Example:
  echo 'Payment eyJ…' | l402 payment verify --service weather --price-sat 10")]
struct PaymentVerify {
    /// `Payment <base64url>`; `-` or none reads standard input (which keeps it out of the process
    /// list).
    #[arg(value_name = "CREDENTIAL")]
    credential: Option<String>,
    /// The service the request is for.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// The route's static price: a charge issued for less is refused.
    #[arg(long, value_name = "SAT")]
    price_sat: Option<u64>,
    /// The route's price is quoted by the pricing endpoint: the charge must be for this method and path.
    #[arg(long)]
    quoted: bool,
    #[command(flatten)]
    request: RequestArgs,
    /// Print a JSON object: `valid`, then `challenge_id`, `payment_hash`, `token_id` and
    /// `amount_sat`, or `reason` and `detail`.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    secrets: SecretSource,
}

/// Validate a filter configuration.
///
/// Exit status 0 when valid, 1 with the field that is wrong.
#[derive(Args)]
#[command(after_help = "Example:
  l402 config check --kong-conf kong.conf config.json")]
struct Check {
    /// The filter's JSON configuration; its {"env": NAME} sources are read from this environment.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Kong's kong.conf: also check that it gives the filter what it needs (the default
    /// shared-memory zone when the configuration keeps state in shared data).
    #[arg(long, value_name = "KONG_CONF")]
    kong_conf: Option<PathBuf>,
    /// Print a JSON object: `valid`, then `routes`, or `field` and `message`.
    #[arg(long)]
    json: bool,
}

/// Print a completion script for a shell.
#[derive(Args)]
#[command(after_help = "Examples:
  l402 completions bash > ~/.local/share/bash-completion/completions/l402
  l402 completions zsh > ~/.zfunc/_l402     # with fpath+=(~/.zfunc) before compinit
  l402 completions fish > ~/.config/fish/completions/l402.fish")]
struct Completions {
    /// The shell to print the script for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Where the secrets are read from. On purpose no option takes a secret itself: the command line
/// is visible to other users.
#[derive(Args)]
#[command(next_help_heading = "Secrets (hex, separated by commas or whitespace; the first mints, all verify)")]
struct SecretSource {
    /// Read the secrets from this file.
    #[arg(long, value_name = "PATH", conflicts_with = "secret_env")]
    secret_file: Option<PathBuf>,
    /// Read the secrets from this environment variable (unless --secret-file is given).
    #[arg(long, value_name = "VAR", default_value = DEFAULT_SECRET_ENV)]
    secret_env: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.group) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(USAGE_ERROR)
        }
    }
}

fn run(group: Group) -> CliResult<ExitCode> {
    match group {
        Group::Token(TokenCommand::Mint(args)) => token_mint(&args),
        Group::Token(TokenCommand::Inspect(args)) => token_inspect(&args),
        Group::Token(TokenCommand::Verify(args)) => token_verify(&args),
        Group::Payment(PaymentCommand::Inspect(args)) => payment_inspect(&args),
        Group::Payment(PaymentCommand::Verify(args)) => payment_verify(&args),
        Group::Config(ConfigCommand::Check(args)) => config_check(&args),
        Group::Balance(command) => balance::run(&command),
        Group::Completions(args) => completions(args.shell),
    }
}

// -- arguments ------------------------------------------------------------------------------------

fn hex32(text: &str) -> CliResult<[u8; 32]> {
    hex_decode_array::<32>(text).ok_or_else(|| "must be 32 bytes of hex".to_owned())
}

fn key_value(text: &str) -> CliResult<(String, String)> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "expected KEY=VALUE".to_owned())
}

impl SecretSource {
    fn ring(&self) -> CliResult<SecretRing> {
        let (text, origin) = match &self.secret_file {
            Some(path) => (read_text(path)?, format!("file {}", path.display())),
            None => (env_secret(&self.secret_env)?, format!("environment variable {}", self.secret_env)),
        };
        let secrets = parse_secret_list(&text)
            .iter()
            .enumerate()
            .map(|(index, hex)| hex_decode(hex).ok_or_else(|| format!("secret #{index} in {origin} is not hex")))
            .collect::<CliResult<Vec<_>>>()?;
        if secrets.is_empty() {
            return Err(format!("no secret: {origin} is empty"));
        }
        SecretRing::new(secrets).map_err(|e| format!("{origin}: {e}"))
    }
}

fn env_secret(name: &str) -> CliResult<String> {
    match std::env::var(name) {
        Ok(text) => Ok(text),
        Err(VarError::NotUnicode(_)) => Err(format!("environment variable {name} is not valid UTF-8")),
        // The usual case is a fresh shell: say both ways of giving one.
        Err(VarError::NotPresent) if name == DEFAULT_SECRET_ENV => {
            Err(format!("no secret: set {name} or pass --secret-file/--secret-env"))
        }
        Err(VarError::NotPresent) => Err(format!("no secret: environment variable {name} is not set")),
    }
}

fn read_text(path: &Path) -> CliResult<String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The token or credential given as an argument, else standard input (also for `-`).
fn read_input(argument: Option<&str>) -> CliResult<String> {
    match argument {
        Some(text) if text != "-" => Ok(text.to_owned()),
        _ => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read standard input: {e}"))?;
            Ok(text.trim().to_owned())
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn random32() -> CliResult<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes)
}

// -- token ----------------------------------------------------------------------------------------

fn token_mint(args: &Mint) -> CliResult<ExitCode> {
    let ring = args.secrets.ring()?;
    // Without an invoice's hash, draw the preimage ourselves so the credential is complete.
    let (payment_hash, preimage) = match args.payment_hash {
        Some(hash) => (hash, None),
        None => {
            let preimage = random32()?;
            (Sha256::digest(preimage).into(), Some(preimage))
        }
    };
    let token_id = match args.token_id {
        Some(id) => id,
        None => random32()?,
    };
    let valid_until = args.lifetime_s.map(|life| now().saturating_add(life)).or(args.valid_until);
    let grant = Grant {
        payment_hash,
        token_id,
        service: &args.service,
        capabilities: &args.capabilities,
        valid_until,
        constraints: &args.constraints,
    };
    let macaroon = mint(&ring, &grant);
    print_minted(&macaroon, preimage, args.json);
    Ok(ExitCode::SUCCESS)
}

/// The credential when the preimage was drawn here, else the macaroon alone.
fn print_minted(macaroon: &Macaroon, preimage: Option<[u8; 32]>, as_json: bool) {
    let encoded = base64_encode(&macaroon.encode());
    let preimage = preimage.map(|p| hex_encode(&p));
    let authorization = preimage.as_ref().map(|p| format!("L402 {encoded}:{p}"));
    if !as_json {
        println!("{}", authorization.unwrap_or(encoded));
        return;
    }
    let mut out = describe(macaroon);
    if let Some(fields) = out.as_object_mut() {
        fields.insert("macaroon".into(), json!(encoded));
        if let (Some(preimage), Some(authorization)) = (preimage, authorization) {
            fields.insert("preimage".into(), json!(preimage));
            fields.insert("authorization".into(), json!(authorization));
        }
    }
    println!("{out}");
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

fn token_inspect(args: &Inspect) -> CliResult<ExitCode> {
    let text = read_input(args.token.as_deref())?;
    let macaroon = match parse_credential(&text) {
        Ok(credential) => credential.macaroon,
        // Not a credential: perhaps a bare macaroon in an encoding the header parsers refuse.
        Err(_) => {
            let bytes = base64_decode(&text).or_else(|| hex_decode(&text)).ok_or("not a macaroon in base64 or hex")?;
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

fn token_verify(args: &Verify) -> CliResult<ExitCode> {
    let ring = args.secrets.ring()?;
    let need = Requirement {
        service: &args.service,
        capabilities: &args.capabilities,
        now: args.request.now.unwrap_or_else(now),
        method: &args.request.method,
        path: &args.request.path,
    };
    let text = read_input(args.credential.as_deref())?;
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

// -- payment --------------------------------------------------------------------------------------

/// The `Payment …` value of an `Authorization` header given with or without its name.
fn payment_value(text: &str) -> &str {
    text.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("authorization")).map_or(text, |(_, v)| v).trim()
}

/// A base64url JSON parameter, decoded (`null` when absent or not JSON).
fn decoded_param(param: &str) -> serde_json::Value {
    base64url_decode(param).and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

fn payment_inspect(args: &PaymentInspect) -> CliResult<ExitCode> {
    let text = read_input(args.credential.as_deref())?;
    let presented = payment::decode(payment_value(&text)).map_err(|e| e.to_string())?;
    let challenge = &presented.challenge;
    let out = json!({
        "challenge": serde_json::from_str::<serde_json::Value>(&challenge.to_json().text()).unwrap_or_default(),
        "request": decoded_param(&challenge.request),
        "opaque": decoded_param(&challenge.opaque),
        "expires_unix": parse_rfc3339(&challenge.expires),
        "preimage": presented.preimage,
    });
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

fn payment_verify(args: &PaymentVerify) -> CliResult<ExitCode> {
    let keys = IdKeys::derive(&args.secrets.ring()?);
    let text = read_input(args.credential.as_deref())?;
    let route = payment::Route {
        service: &args.service,
        price_msat: args.price_sat.map(|sat| sat.saturating_mul(1000)),
        quoted: args.quoted,
        method: &args.request.method,
    };
    let outcome = payment::verify(&keys, payment_value(&text), args.request.now.unwrap_or_else(now))
        .and_then(|charge| charge.issued_for(&route, std::iter::once(args.request.path.as_str())).map(|()| charge));
    let (code, out) = match &outcome {
        Ok(charge) => (
            ExitCode::SUCCESS,
            json!({
                "valid": true,
                "challenge_id": charge.challenge_id,
                "payment_hash": hex_encode(&charge.payment_hash),
                "token_id": hex_encode(&charge.token_id),
                "amount_sat": charge.amount_sat,
            }),
        ),
        Err(e) => (ExitCode::from(REFUSED), json!({ "valid": false, "reason": e.code(), "detail": e.to_string() })),
    };
    if args.json {
        println!("{out}");
    } else {
        match &outcome {
            Ok(_) => println!("valid (its single use is the gateway's to count)"),
            Err(e) => println!("refused: {e}"),
        }
    }
    Ok(code)
}

// -- config ---------------------------------------------------------------------------------------

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

fn config_check(args: &Check) -> CliResult<ExitCode> {
    let path = args.file.display();
    let bytes = std::fs::read(&args.file).map_err(|e| format!("cannot read {path}: {e}"))?;
    let kong_conf = args.kong_conf.as_deref().map(read_text).transpose()?;
    let outcome = Config::parse(&bytes, &|name| std::env::var(name).ok()).and_then(|config| {
        kong_conf.map_or(Ok(()), |conf| kong_conf_check(&config, &conf))?;
        Ok(config)
    });
    let (code, out) = match &outcome {
        Ok(config) => (
            ExitCode::SUCCESS,
            json!({ "valid": true, "routes": config.routes.len(), "dry_run": config.dry_run_fields() }),
        ),
        Err(e) => (ExitCode::from(REFUSED), json!({ "valid": false, "field": e.field, "message": e.message })),
    };
    if args.json {
        println!("{out}");
    } else {
        match &outcome {
            Ok(config) => {
                println!("{path}: valid ({} routes)", config.routes.len());
                let dry_run = config.dry_run_fields();
                if !dry_run.is_empty() {
                    println!("warning: dry run ({}) lets unpaid requests through", dry_run.join(", "));
                }
            }
            Err(e) => println!("{path}: {e}"),
        }
    }
    Ok(code)
}

// -- completions ----------------------------------------------------------------------------------

fn completions(shell: Shell) -> CliResult<ExitCode> {
    // Generated into memory: clap_complete panics on a failed write, a closed pipe for instance.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "l402", &mut script);
    std::io::stdout().write_all(&script).map_err(|e| format!("cannot write the script: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn secrets_never_come_from_the_command_line() {
        let secret = "00".repeat(32);
        let parsed = Cli::try_parse_from(["l402", "token", "mint", "--service", "s", &secret]);
        assert!(parsed.is_err());
    }

    #[test]
    fn lifetime_and_expiry_exclude_each_other() {
        let parsed =
            Cli::try_parse_from(["l402", "token", "mint", "--service", "s", "--lifetime-s", "1", "--valid-until", "2"]);
        assert!(parsed.is_err());
    }

    #[test]
    fn a_repeated_option_keeps_the_last_and_repeated_lists_keep_all() {
        let Ok(Cli { group: Group::Token(TokenCommand::Verify(args)) }) = Cli::try_parse_from([
            "l402",
            "token",
            "verify",
            "--service",
            "a",
            "--service",
            "b",
            "--capability",
            "x",
            "--capability",
            "y",
        ]) else {
            panic!("token verify did not parse");
        };
        assert_eq!(args.service, "b");
        assert_eq!(args.capabilities, ["x", "y"]);
        assert_eq!(args.secrets.secret_env, DEFAULT_SECRET_ENV);
    }

    #[test]
    fn constraints_and_hashes_are_checked_while_parsing() {
        assert_eq!(key_value("tier=gold=1"), Ok(("tier".to_owned(), "gold=1".to_owned())));
        assert!(key_value("tier").is_err());
        assert!(hex32(&"ab".repeat(32)).is_ok());
        assert!(hex32("abcd").is_err());
    }
}
