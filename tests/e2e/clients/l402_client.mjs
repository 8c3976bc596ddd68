// @getalby/lightning-tools as the paying client of the end-to-end tests (installed in tests/clients).
//
// Usage: node l402_client.mjs <command>   with one JSON request on stdin; prints one JSON answer.
//   parse  {header}                       parseL402 on a WWW-Authenticate value, and the invoice it
//                                         found decoded by lightning-tools and by npm bolt11
//   fetch  {url, lnbits_url, adminkey, reuse}
//                                         fetchWithL402(url, {}, {wallet}) with a wallet that pays
//                                         through LNbits; then `reuse` more requests with the
//                                         credentials it got ({credentials} option: never pays)

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const CLIENTS = fileURLToPath(new URL("../../clients/", import.meta.url));
const NODE_MODULES = path.join(CLIENTS, "node_modules");
const require = createRequire(path.join(CLIENTS, "package.json"));

async function importExport(name, subpath) {
  const pkg = JSON.parse(readFileSync(path.join(NODE_MODULES, name, "package.json"), "utf8"));
  const entry = pkg.exports[subpath];
  const file = typeof entry === "string" ? entry : entry.import;
  return import(pathToFileURL(path.join(NODE_MODULES, name, file)).href);
}

const { parseL402, fetchWithL402 } = await importExport("@getalby/lightning-tools", "./402/l402");
const { decodeInvoice } = await importExport("@getalby/lightning-tools", "./bolt11");
const bolt11 = require("bolt11");

async function responseSummary(r) {
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
  return { status: r.status, body: json ?? text, www_authenticate: r.headers.get("www-authenticate") };
}

const commands = {
  parse({ header }) {
    const parsed = parseL402(header);
    const ours = decodeInvoice(parsed.invoice);
    const theirs = bolt11.decode(parsed.invoice);
    const tag = (name) => theirs.tags.find((t) => t.tagName === name)?.data;
    return {
      parsed,
      lightning_tools: { payment_hash: ours.paymentHash, satoshi: ours.satoshi, expiry: ours.expiry ?? null },
      bolt11: {
        payment_hash: tag("payment_hash"),
        millisatoshis: theirs.millisatoshis,
        description: tag("description") ?? null,
        expire_time: tag("expire_time") ?? null,
      },
    };
  },

  async fetch({ url, lnbits_url, adminkey, reuse = 1 }) {
    const paid = [];
    const wallet = {
      async payInvoice({ invoice }) {
        const r = await fetch(`${lnbits_url}/api/v1/payments`, {
          method: "POST",
          headers: { "X-Api-Key": adminkey, "Content-Type": "application/json" },
          body: JSON.stringify({ out: true, bolt11: invoice }),
        });
        const body = await r.json();
        if (!r.ok) throw new Error(`LNbits pay: ${r.status} ${JSON.stringify(body)}`);
        let preimage = body.preimage;
        if (!preimage) {
          const s = await (await fetch(`${lnbits_url}/api/v1/payments/${body.payment_hash}`)).json();
          preimage = s.preimage;
        }
        paid.push({ invoice, payment_hash: body.payment_hash, preimage });
        return { preimage };
      },
    };
    const first = await fetchWithL402(url, {}, { wallet });
    const out = { first: await responseSummary(first), payment: first.payment ?? null, reused: [] };
    const credentials = first.payment?.credentials;
    for (let i = 0; credentials && i < reuse; i++) {
      const again = await fetchWithL402(url, {}, { wallet, credentials });
      out.reused.push({ ...(await responseSummary(again)), payment: again.payment ?? null });
    }
    out.paid = paid;
    return out;
  },
};

const command = process.argv[2];
if (!commands[command]) {
  console.error(`unknown command ${command}; one of ${Object.keys(commands)}`);
  process.exit(2);
}
const input = JSON.parse(readFileSync(0, "utf8") || "{}");
console.log(JSON.stringify(await commands[command](input)));
