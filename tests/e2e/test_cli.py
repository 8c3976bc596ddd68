"""The `l402` command line as an operator meets it: the real binary, built from this checkout.

Help on every subcommand, one-line errors with the right exit status (2 usage, 1 refused), a
mint → verify round trip, a tampered credential refused with its reason, and completion scripts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SUBCOMMANDS = [[], ["token"], ["token", "mint"], ["token", "inspect"], ["token", "verify"], ["payment"],
               ["payment", "inspect"], ["payment", "verify"], ["config"], ["config", "check"], ["completions"]]


@pytest.fixture(scope="module")
def l402() -> Path:
    """The l402 binary of this checkout, built by cargo; its path comes from cargo itself, so a
    CARGO_TARGET_DIR elsewhere does not make the tests run another checkout's binary."""
    build = subprocess.run(["cargo", "build", "--quiet", "--bin", "l402", "--message-format=json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr
    for line in build.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "l402" and msg.get("executable"):
            return Path(msg["executable"])
    raise AssertionError(f"cargo built no l402 executable:\n{build.stdout}")


def run(l402: Path, *args: str, secret: str | None = None, stdin: str = "",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs the binary with a clean environment: L402_SECRETS only when `secret` is given."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if secret is not None:
        base["L402_SECRETS"] = secret
    return subprocess.run([str(l402), *args], input=stdin, capture_output=True, text=True, timeout=30,
                          env={**base, **(env or {})})


def new_secret() -> str:
    return secrets.token_hex(32)


# -- help -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c) or "l402")
def test_help_exits_0_and_describes_every_option(l402, command):
    r = run(l402, *command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")), r.stdout  # a description first
    assert "Usage: l402" in r.stdout
    # Every option and argument carries a description: on its line (`  --name <V>  text`), or
    # indented on the next one (the layout of --help when some entry has a long description).
    lines = r.stdout.splitlines()
    entries = [i for i, line in enumerate(lines) if re.match(r"\s+(-\w, )?--?[\w-]+|\s+[<\[]\w+[>\]]", line)]
    assert entries, r.stdout
    for i in entries:
        same_line = re.search(r"\S\s{2,}\S", lines[i].strip())
        next_line = i + 1 < len(lines) and re.match(r"\s{8,}\S", lines[i + 1])
        assert same_line or next_line, f"no description: {lines[i]!r}"


def test_mint_help_lists_every_option(l402):
    out = run(l402, "token", "mint", "--help").stdout
    for flag in ("--service", "--payment-hash", "--token-id", "--capability", "--lifetime-s", "--valid-until",
                 "--constraint", "--json", "--secret-file", "--secret-env"):
        assert flag in out, flag
    assert "L402_SECRETS" in out


# -- errors ---------------------------------------------------------------------------------------

def test_mint_without_a_secret_names_it_in_one_line(l402):
    r = run(l402, "token", "mint", "--service", "weather")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: no secret: set L402_SECRETS or pass --secret-file/--secret-env"]
    assert "usage" not in r.stderr.lower()


def test_a_named_variable_that_is_unset_is_named(l402):
    r = run(l402, "token", "verify", "--service", "weather", "--secret-env", "MY_SECRETS", stdin="x")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: no secret: environment variable MY_SECRETS is not set"


def test_a_secret_is_never_taken_from_the_command_line(l402):
    r = run(l402, "token", "mint", "--service", "weather", new_secret(), secret=new_secret())
    assert r.returncode == 2, r.stdout
    assert r.stdout == ""


@pytest.mark.parametrize("args", [
    ["token", "mint", "--service", "w", "--lifetime-s", "60", "--valid-until", "2000000000"],
    ["token", "mint", "--service", "w", "--secret-file", "/nonexistent", "--secret-env", "X"],
    ["token", "mint", "--service", "w", "--payment-hash", "abcd"],
    ["token", "mint", "--service", "w", "--constraint", "no-equals-sign"],
    ["token", "mint", "--service", "w", "--no-such-option"],
    ["token", "verify"],
    ["config", "check"],
    ["completions", "tcsh"],
], ids=["lifetime-and-valid-until", "file-and-env", "short-hash", "constraint", "unknown", "no-service",
        "no-file", "unknown-shell"])
def test_usage_errors_exit_2_without_the_whole_help(l402, args):
    r = run(l402, *args, secret=new_secret())
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith("error: ")
    assert "Options:" not in r.stderr and len(r.stderr.strip().splitlines()) <= 6, r.stderr


# -- the token round trip -------------------------------------------------------------------------

def test_mint_then_verify(l402):
    secret = new_secret()
    minted = run(l402, "token", "mint", "--service", "weather", "--capability", "read", "--lifetime-s", "600",
                 secret=secret)
    assert minted.returncode == 0, minted.stderr
    credential = minted.stdout.strip()
    assert re.fullmatch(r"L402 [A-Za-z0-9+/=_-]+:[0-9a-f]{64}", credential), credential

    ok = run(l402, "token", "verify", "--service", "weather", "--capability", "read", secret=secret,
             stdin=credential + "\n")
    assert (ok.returncode, ok.stdout.strip()) == (0, "valid"), ok.stderr
    as_json = json.loads(run(l402, "token", "verify", "--service", "weather", "--json", secret=secret,
                             stdin=credential).stdout)
    assert as_json["valid"] is True and "weather_capabilities=read" in as_json["caveats"]

    # inspect reads `-` as standard input and needs no secret.
    inspected = run(l402, "token", "inspect", "-", "--json", stdin=credential)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["identifier"]["token_id"] == as_json["token_id"]


def test_secrets_from_a_file_rotate(l402, tmp_path):
    old, new = new_secret(), new_secret()
    credential = run(l402, "token", "mint", "--service", "weather", secret=old).stdout.strip()
    ring = tmp_path / "secrets"
    ring.write_text(f"{new},\n{old}\n")
    r = run(l402, "token", "verify", "--service", "weather", "--secret-file", str(ring), stdin=credential)
    assert r.returncode == 0, (r.stdout, r.stderr)


def tamper_signature(credential: str) -> str:
    """Flips one bit of the macaroon's last byte (its signature)."""
    scheme, _, rest = credential.partition(" ")
    mac_b64, _, preimage = rest.rpartition(":")
    raw = bytearray(base64.b64decode(mac_b64 + "=" * (-len(mac_b64) % 4)))
    raw[-1] ^= 1
    return f"{scheme} {base64.b64encode(bytes(raw)).decode()}:{preimage}"


def test_a_tampered_credential_is_refused_with_the_reason(l402):
    secret = new_secret()
    credential = run(l402, "token", "mint", "--service", "weather", secret=secret).stdout.strip()

    forged = tamper_signature(credential)
    r = run(l402, "token", "verify", "--service", "weather", secret=secret, stdin=forged)
    assert r.returncode == 1
    assert r.stdout.startswith("refused: "), r.stdout
    out = json.loads(run(l402, "token", "verify", "--service", "weather", "--json", secret=secret,
                         stdin=forged).stdout)
    assert out["valid"] is False and out["reason"] == "bad_signature", out

    other_preimage = credential[:-64] + secrets.token_hex(32)
    out = json.loads(run(l402, "token", "verify", "--service", "weather", "--json", secret=secret,
                         stdin=other_preimage).stdout)
    assert out["reason"] == "preimage_mismatch", out


def test_an_invalid_configuration_exits_1_with_the_field(l402, tmp_path):
    config = tmp_path / "config.json"
    config.write_text("{}")
    r = run(l402, "config", "check", str(config), "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["valid"] is False and out["field"], out


# -- completions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "elvish", "powershell"])
def test_completions(l402, shell):
    r = run(l402, "completions", shell)
    assert r.returncode == 0, r.stderr
    assert "l402" in r.stdout and "mint" in r.stdout
    if shell == "bash":
        assert "complete -F" in r.stdout
