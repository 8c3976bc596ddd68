// The npm package `mppx` (wevm's Machine Payments Protocol client, installed in tests/clients) as the
// paying client of the "Payment" HTTP authentication scheme, with a Lightning charge method plugged
// into its own client flow.
//
// Usage: node mpp_client.mjs <url> <lnbits_base_url> <payer_admin_key> [--header K:V]...
//
// mppx ships Tempo/Stripe/EVM methods only. The method lightning/charge (draft-lightning-charge-00)
// is defined here with mppx's Method.from + Method.toClient, and the whole exchange is mppx's:
// Mppx.create({methods}).fetch sends the request, parses every Payment challenge of a 402
// (Challenge.fromResponseList, which decodes `request`), picks the lightning/charge one, calls our
// createCredential (pays methodDetails.invoice through LNbits, then Credential.serialize with
// payload {preimage}) and retries once with the credential. maxPaymentRetries is 1 so a refused
// credential is never paid for twice.
//
// Prints one JSON line:
//   {status, challenge, receipt, body, authorization,            (the contract the tests rely on)
//    challenges, receipt_header, receipt_error, paid}             (extra detail for diagnostics)
// status is the final HTTP status; challenge is the lightning/charge challenge as mppx parsed it
// (request decoded to an object), or null when no payment was asked for; receipt is
// Receipt.deserialize of the Payment-Receipt header, or null. An error of the flow itself (no
// lightning challenge, LNbits refused to pay, ...) prints {"error": ..., ...what was known} and
// exits 1.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const CLIENTS = fileURLToPath(new URL("../../clients/", import.meta.url));
const NODE_MODULES = path.join(CLIENTS, "node_modules");

/** Imports a subpath of a package through its `exports` map (mppx names its entries "default"). */
async function importExport(name, subpath) {
  const pkg = JSON.parse(readFileSync(path.join(NODE_MODULES, name, "package.json"), "utf8"));
  const entry = pkg.exports[subpath];
  const file = typeof entry === "string" ? entry : entry.import ?? entry.default;
  return import(pathToFileURL(path.join(NODE_MODULES, name, file)).href);
}

const { Credential, Method, Receipt, z } = await importExport("mppx", ".");
const { Mppx } = await importExport("mppx", "./client");

// -- arguments -------------------------------------------------------------------------------------

function usage(message) {
  console.error(`${message}\nusage: node mpp_client.mjs <url> <lnbits_base_url> <payer_admin_key> [--header K:V]...`);
  process.exit(2);
}

const positional = [];
const headers = {};
for (let i = 2; i < process.argv.length; i++) {
  const arg = process.argv[i];
  if (arg === "--header") {
    const kv = process.argv[++i];
    const colon = kv?.indexOf(":") ?? -1;
    if (colon <= 0) usage(`--header wants K:V, got ${kv}`);
    headers[kv.slice(0, colon).trim()] = kv.slice(colon + 1).trim();
  } else {
    positional.push(arg);
  }
}
if (positional.length !== 3) usage("expected 3 positional arguments");
const [url, lnbitsArg, adminKey] = positional;
const lnbits = lnbitsArg.replace(/\/+$/, "");

// -- the Lightning charge method (draft-lightning-charge-00), client side -------------------------

const lightningCharge = Method.from({
  name: "lightning",
  intent: "charge",
  schema: {
    credential: {
      payload: z.object({ preimage: z.string().check(z.regex(/^[0-9a-f]{64}$/, "Invalid preimage")) }),
    },
    request: z.object({
      amount: z.string().check(z.regex(/^\d+$/, "Invalid amount")),
      currency: z.string(),
      description: z.optional(z.string()),
      methodDetails: z.object({
        invoice: z.string(),
        paymentHash: z.string().check(z.regex(/^[0-9a-f]{64}$/, "Invalid paymentHash")),
        network: z.optional(z.string()),
      }),
    }),
  },
});

const paid = [];

async function lnbitsJson(response, what) {
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = text; }
  if (!response.ok) throw new Error(`LNbits ${what}: ${response.status} ${text}`);
  return body;
}

/** Pays a BOLT11 invoice from the payer wallet; returns its preimage (hex). */
async function payInvoice(invoice) {
  const key = { "X-Api-Key": adminKey };
  const sent = await lnbitsJson(await fetch(`${lnbits}/api/v1/payments`, {
    method: "POST",
    headers: { ...key, "Content-Type": "application/json" },
    body: JSON.stringify({ out: true, bolt11: invoice }),
  }), "pay");
  const paymentHash = sent.payment_hash;
  let preimage = sent.preimage ?? sent.details?.preimage;
  // LNbits 1.6 may answer without the preimage (or before the payment settled): ask for it.
  for (let i = 0; !preimage && i < 40; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, 250));
    const status = await lnbitsJson(await fetch(`${lnbits}/api/v1/payments/${paymentHash}`, { headers: key }),
      "payment status");
    preimage = status.preimage ?? status.details?.preimage;
  }
  if (!preimage) throw new Error(`LNbits gave no preimage for payment ${paymentHash}`);
  paid.push({ invoice, payment_hash: paymentHash, preimage });
  return preimage.toLowerCase();
}

const lightningChargeClient = Method.toClient(lightningCharge, {
  async createCredential({ challenge }) {
    const request = lightningCharge.schema.request.parse(challenge.request);
    const preimage = await payInvoice(request.methodDetails.invoice);
    const hash = createHash("sha256").update(Buffer.from(preimage, "hex")).digest("hex");
    paid[paid.length - 1].preimage_matches_payment_hash = hash === request.methodDetails.paymentHash;
    return Credential.serialize({ challenge, payload: { preimage } });
  },
});

// -- the exchange ----------------------------------------------------------------------------------

const mppx = Mppx.create({
  methods: [lightningChargeClient],
  polyfill: false, // leave globalThis.fetch alone: LNbits is called with it
  maxPaymentRetries: 1,
});

const out = { status: null, challenge: null, receipt: null, body: null, authorization: null, challenges: null,
  receipt_header: null, receipt_error: null, paid };
mppx.onChallengeReceived(({ challenge, challenges }) => {
  out.challenge = challenge;
  out.challenges = challenges;
});
mppx.onCredentialCreated(({ credential }) => {
  out.authorization = credential;
});

try {
  const response = await mppx.fetch(url, { headers });
  out.status = response.status;
  out.body = await response.text();
  out.receipt_header = response.headers.get("payment-receipt");
  if (out.receipt_header !== null) {
    try {
      out.receipt = Receipt.fromResponse(response);
    } catch (e) {
      out.receipt_error = String(e?.message ?? e);
    }
  }
  console.log(JSON.stringify(out));
} catch (e) {
  console.log(JSON.stringify({ error: String(e?.message ?? e), ...out }));
  process.exit(1);
}
