//! `l402 balance`: a metered token's balance in the fleet's etcd, read or credited through etcd's v3
//! JSON gateway over plain HTTP. The shared data of a single gateway cannot be read from outside it.

use crate::{CliResult, REFUSED};
use clap::{Args, Subcommand};
use l402::callout::Callout;
use l402::fleet::{balance_key, parse_ledger, put_ledger, read_ledger, SeenLedger, Swapped};
use l402::l402::encoding::hex_encode;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum BalanceCommand {
    Show(Show),
    Credit(Credit),
}

/// Where the balances are: the fleet's etcd and key prefix, as in the filter's `fleet` settings.
#[derive(Args)]
pub struct Store {
    /// etcd's client URL (plain HTTP, e.g. a local member or `etcdctl`'s gateway).
    #[arg(long, value_name = "URL")]
    etcd: String,
    /// The key prefix of the filter's `fleet.prefix`.
    #[arg(long, value_name = "PREFIX", default_value = "/l402/")]
    prefix: String,
}

/// Print a metered token's balance as JSON: total_msat (bundle and credits), spent_msat (charged
/// and held), balance_msat.
#[derive(Args)]
#[command(after_help = "Example:\n  l402 balance show <token id> --etcd http://127.0.0.1:2379")]
pub struct Show {
    /// The token id (32 bytes of hex, as `l402 token inspect` prints it).
    #[arg(value_name = "TOKEN_ID", value_parser = crate::hex32)]
    token_id: [u8; 32],
    #[command(flatten)]
    store: Store,
}

/// Add to a metered token's balance (a refund, a goodwill credit); prints the balance after it.
#[derive(Args)]
#[command(after_help = "Example:\n  l402 balance credit <token id> 5000 --etcd http://127.0.0.1:2379")]
pub struct Credit {
    #[arg(value_name = "TOKEN_ID", value_parser = crate::hex32)]
    token_id: [u8; 32],
    /// The amount to add, in msat.
    #[arg(value_name = "MSAT")]
    msat: u64,
    #[command(flatten)]
    store: Store,
}

/// Compare-and-swap rounds before a credit gives up on a balance that keeps changing.
const CREDIT_ATTEMPTS: usize = 16;

pub fn run(command: &BalanceCommand) -> CliResult<ExitCode> {
    match command {
        BalanceCommand::Show(args) => {
            let Some(seen) = read(&args.store, &args.token_id)? else { return Ok(absent(&args.token_id)) };
            print(&args.token_id, &seen);
            Ok(ExitCode::SUCCESS)
        }
        BalanceCommand::Credit(args) => credit(args),
    }
}

fn credit(args: &Credit) -> CliResult<ExitCode> {
    let key = balance_key(&args.store.prefix, &args.token_id);
    let Some(mut seen) = read(&args.store, &args.token_id)? else { return Ok(absent(&args.token_id)) };
    for _ in 0..CREDIT_ATTEMPTS {
        let credited = seen.ledger.credit(args.msat);
        let answer = send(&args.store.etcd, &put_ledger(&key, Some(&seen), &credited))?;
        match parse_ledger(Some(answer.0), &answer.1).map_err(|e| format!("etcd: {e}"))? {
            Swapped::Written { revision } => {
                print(&args.token_id, &SeenLedger { ledger: credited, mod_revision: revision });
                return Ok(ExitCode::SUCCESS);
            }
            Swapped::Changed(Some(now)) => seen = now,
            Swapped::Changed(None) => return Ok(absent(&args.token_id)),
        }
    }
    Err("the balance kept changing: try again".to_owned())
}

fn read(store: &Store, token_id: &[u8; 32]) -> CliResult<Option<SeenLedger>> {
    let (status, body) = send(&store.etcd, &read_ledger(&balance_key(&store.prefix, token_id)))?;
    match parse_ledger(Some(status), &body).map_err(|e| format!("etcd: {e}"))? {
        Swapped::Changed(seen) => Ok(seen),
        Swapped::Written { .. } => Err("etcd: a read answered as a write".to_owned()),
    }
}

/// A token never used (or used under another prefix) has no balance yet.
fn absent(token_id: &[u8; 32]) -> ExitCode {
    eprintln!("no balance for token {} in the fleet store (not used yet, or another --prefix)", hex_encode(token_id));
    ExitCode::from(REFUSED)
}

fn print(token_id: &[u8; 32], seen: &SeenLedger) {
    let ledger = seen.ledger;
    let out = json!({
        "token_id": hex_encode(token_id),
        "total_msat": ledger.total_msat,
        "spent_msat": ledger.spent_msat,
        "balance_msat": ledger.balance_msat(),
        "mod_revision": seen.mod_revision,
    });
    println!("{out}");
}

/// One HTTP/1.1 exchange with etcd: the status and the body.
fn send(url: &str, call: &Callout) -> CliResult<(u32, Vec<u8>)> {
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--etcd {url}: give an http:// URL (for TLS, use etcdctl)"))?
        .trim_end_matches('/');
    let address = authority
        .to_socket_addrs()
        .map_err(|e| format!("--etcd {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("--etcd {url}: no address"))?;
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("etcd at {url}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut request = format!("{} {} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n", call.method, call.path);
    for (name, value) in &call.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n", call.body.len()));
    stream.write_all(request.as_bytes()).and_then(|()| stream.write_all(&call.body)).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| format!("etcd at {url}: {e}"))?;
    parse_http(&answer).ok_or_else(|| format!("etcd at {url}: not an HTTP answer"))
}

/// The status and body of an HTTP/1.1 answer read to its end (plain or chunked).
fn parse_http(answer: &[u8]) -> Option<(u32, Vec<u8>)> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(answer.get(..split)?).ok()?;
    let body = answer.get(split.checked_add(4)?..)?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    Some((status, if chunked { dechunk(body)? } else { body.to_vec() }))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(body.get(..line_end)?).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        let start = line_end.checked_add(2)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(start..start.checked_add(size)?)?);
        body = body.get(start.checked_add(size)?.checked_add(2)?..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_http(plain), Some((200, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_http(chunked), Some((200, b"{\"a\":1}".to_vec())));
        assert_eq!(parse_http(b"garbage"), None);
    }
}
