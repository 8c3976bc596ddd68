// Third-party JavaScript libraries as interop peers: the `macaroon` npm package (go-macaroon's JS
// port), lsat-js and @getalby/lightning-tools, all installed in tests/clients (npm ci).
//
// Usage: node peer.mjs <command>   with one JSON request on stdin; prints one JSON answer.
// A library error is reported as {"error": "..."} with exit status 0, so tests can assert on it;
// anything else (bad command, crash) exits non-zero.

import { createRequire } from "node:module";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const CLIENTS = fileURLToPath(new URL("../../clients/", import.meta.url));
const NODE_MODULES = path.join(CLIENTS, "node_modules");
// Resolve packages as tests/clients itself would (this file lives outside that package).
const require = createRequire(path.join(CLIENTS, "package.json"));

function packageJson(name) {
  return JSON.parse(readFileSync(path.join(NODE_MODULES, name, "package.json"), "utf8"));
}

/** Imports a subpath of an ESM-capable package through its `exports` map ("import" condition). */
async function importExport(name, subpath) {
  const entry = packageJson(name).exports[subpath];
  const file = typeof entry === "string" ? entry : entry.import;
  return import(pathToFileURL(path.join(NODE_MODULES, name, file)).href);
}

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const fromHex = (text) => new Uint8Array(Buffer.from(text, "hex"));
const utf8 = (bytes) => new TextDecoder("utf-8", { fatal: true }).decode(bytes);

/** The project's published key derivation: root_key = HMAC-SHA256(key = secret, msg = identifier). */
function rootKey(secretHex, identifier) {
  return new Uint8Array(createHmac("sha256", Buffer.from(secretHex, "hex")).update(identifier).digest());
}

/**
 * A first-party caveat checker in Aperture's terms, written independently of the project's code:
 * services must name `service`, capabilities must include every required one, valid_until must be
 * in the future, and any other key must equal the value the test expects. Returns an error string
 * or null, as macaroon.verify wants.
 */
function apertureChecker({ service, capabilities = [], now, constraints = {} }) {
  const seen = [];
  const check = (cond) => {
    seen.push(cond);
    const i = cond.indexOf("=");
    if (i < 0) return "not key=value";
    const key = cond.slice(0, i);
    const value = cond.slice(i + 1);
    if (key === "services") {
      const names = value.split(",").map((e) => e.split(":")[0]);
      return names.includes(service) ? null : `service ${service} not granted`;
    }
    if (key === `${service}_capabilities`) {
      const granted = value.split(",");
      const missing = capabilities.filter((c) => !granted.includes(c));
      return missing.length ? `missing capabilities ${missing}` : null;
    }
    if (key === `${service}_valid_until`) {
      return now <= Number(value) ? null : "expired";
    }
    if (Object.prototype.hasOwnProperty.call(constraints, key)) {
      return constraints[key] === value ? null : `constraint ${key} is ${value}`;
    }
    return `unknown caveat ${cond}`;
  };
  return { check, seen };
}

function describeMacaroon(m) {
  return {
    location: m.location,
    identifier_hex: hex(m.identifier),
    caveats: m.caveats.map((c) => {
      if (c.vid) throw new Error("unexpected third-party caveat");
      return utf8(c.identifier);
    }),
    signature_hex: hex(m.signature),
  };
}

function exportForms(m) {
  const bytes = m.exportBinary();
  return {
    hex: hex(bytes),
    base64: Buffer.from(bytes).toString("base64"),
    base64url: macaroon.bytesToBase64(bytes),
    signature_hex: hex(m.signature),
  };
}

const macaroon = require("macaroon");

const commands = {
  versions() {
    const out = {};
    for (const name of ["macaroon", "lsat-js", "@getalby/lightning-tools", "bolt11"]) {
      out[name] = packageJson(name).version;
    }
    // lsat-js must use the same (overridden) macaroon package, not a nested copy.
    out["lsat-js/macaroon"] = createRequire(require.resolve("lsat-js"))("macaroon/package.json").version;
    return out;
  },

  // Decode a serialized macaroon (base64 in any alphabet, via importMacaroon; or hex bytes).
  "macaroon.inspect"({ macaroon: text, hex: hexText }) {
    const m = macaroon.importMacaroon(hexText ? fromHex(hexText) : text);
    return describeMacaroon(m);
  },

  // Verify with the root key derived here from the operator secret.
  "macaroon.verify"({ macaroon: text, secret_hex, service, capabilities, now, constraints }) {
    const m = macaroon.importMacaroon(text);
    const key = rootKey(secret_hex, m.identifier);
    const { check, seen } = apertureChecker({ service, capabilities, now, constraints });
    try {
      m.verify(key, check, []);
      return { ok: true, checked: seen, root_key_hex: hex(key), ...describeMacaroon(m) };
    } catch (e) {
      return { ok: false, error: String(e.message || e), checked: seen };
    }
  },

  // Mint an Aperture-format macaroon: location, 66-byte identifier, root key from the secret.
  // With serialize: false only the signature chain is computed (no exportBinary, see below).
  "macaroon.mint"({ secret_hex, identifier_hex, location, caveats, serialize = true }) {
    const identifier = fromHex(identifier_hex);
    const m = macaroon.newMacaroon({ identifier, location, rootKey: rootKey(secret_hex, identifier), version: 2 });
    for (const c of caveats) m.addFirstPartyCaveat(c);
    if (!serialize) {
      return { root_key_hex: hex(rootKey(secret_hex, identifier)), signature_hex: hex(m.signature) };
    }
    try {
      return { root_key_hex: hex(rootKey(secret_hex, identifier)), ...exportForms(m) };
    } catch (e) {
      // macaroon 3.0.4's exportBinary doubles its buffer on every append (js-macaroon PR #40,
      // fixed upstream after the last npm release): 3 caveats need a 3.3 GB buffer, 4 fail.
      return { error: String(e.message || e) };
    }
  },

  // Append first-party caveats as a token holder would (no key needed).
  "macaroon.attenuate"({ macaroon: text, caveats }) {
    const m = macaroon.importMacaroon(text);
    for (const c of caveats) m.addFirstPartyCaveat(c);
    try {
      return exportForms(m);
    } catch (e) {
      return { error: String(e.message || e) };
    }
  },

  // lsat-js reading a WWW-Authenticate challenge, then (optionally) building the paid token.
  "lsat.challenge"({ header, preimage }) {
    const { Lsat, Identifier } = require("lsat-js");
    let lsat;
    try {
      lsat = Lsat.fromHeader(header);
    } catch (e) {
      return { error: String(e.message || e) };
    }
    // fromMacaroon reads the payment hash from the identifier and checks it against the invoice.
    let fromMacaroon;
    try {
      const m = Lsat.fromMacaroon(lsat.baseMacaroon, lsat.invoice);
      fromMacaroon = { paymentHash: m.paymentHash, invoiceAmount: m.invoiceAmount };
    } catch (e) {
      fromMacaroon = { error: String(e.message || e) };
    }
    const id = Identifier.fromString(lsat.id);
    const out = {
      paymentHash: lsat.paymentHash,
      invoiceAmount: lsat.invoiceAmount,
      invoice: lsat.invoice,
      baseMacaroon: lsat.baseMacaroon,
      identifier: { version: id.version, paymentHash: hex(id.paymentHash), tokenId: hex(id.tokenId) },
      caveats: lsat.getCaveats().map((c) => ({ condition: c.condition, comp: c.comp, value: c.value })),
      validUntil: lsat.validUntil,
      isPending: lsat.isPending(),
      fromMacaroon,
    };
    if (preimage !== undefined) {
      try {
        lsat.setPreimage(preimage);
        out.isSatisfied = lsat.isSatisfied();
        out.token = lsat.toToken();
      } catch (e) {
        out.preimageError = String(e.message || e);
      }
    }
    return out;
  },

  // @getalby/lightning-tools: its challenge parser, and its invoice decoder on the invoice it found.
  async "alby.parse"({ header }) {
    const { parseL402 } = await importExport("@getalby/lightning-tools", "./402/l402");
    const { decodeInvoice } = await importExport("@getalby/lightning-tools", "./bolt11");
    let parsed;
    try {
      parsed = { ...parseL402(header) };
    } catch (e) {
      return { error: String(e.message || e) };
    }
    const inv = decodeInvoice(parsed.invoice);
    return { parsed, invoice: inv && { paymentHash: inv.paymentHash, millisatoshi: inv.millisatoshi, satoshi: inv.satoshi } };
  },

  // @getalby/lightning-tools' client end to end: fetchWithL402 against a local server, paying with a
  // wallet stub that hands back the preimage the test obtained by paying the invoice.
  async "alby.fetch"({ url, preimage }) {
    const { fetchWithL402 } = await importExport("@getalby/lightning-tools", "./402/l402");
    const invoices = [];
    const wallet = {
      async payInvoice({ invoice }) {
        invoices.push(invoice);
        return { preimage };
      },
    };
    const resp = await fetchWithL402(url, {}, { wallet });
    return {
      status: resp.status,
      body: await resp.text(),
      invoices,
      payment: resp.payment ? { ...resp.payment } : null,
    };
  },
};

async function main() {
  const name = process.argv[2];
  const command = commands[name];
  if (!command) {
    process.stderr.write(`unknown command ${name}; one of ${Object.keys(commands).join(", ")}\n`);
    process.exit(2);
  }
  const input = readFileSync(0, "utf8");
  const request = input.trim() ? JSON.parse(input) : {};
  const answer = await command(request);
  process.stdout.write(JSON.stringify(answer) + "\n");
}

main().catch((e) => {
  process.stderr.write(String((e && e.stack) || e) + "\n");
  process.exit(1);
});
