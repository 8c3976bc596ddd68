// The npm package `mppx` (installed in tests/clients) run over known-answer cases of the Payment HTTP
// authentication scheme; used by tests/interop/test_mpp_vectors_mppx.py, which builds the cases from
// tests/interop/vectors/mpp_vectors.json and compares the answers with the vectors' values.
//
// Usage: node mpp_vectors.mjs   with {"cases": [{"op": ..., ...}, ...]} on stdin; prints
// {"versions": {...}, "results": [...]}, one result per case, in order: {"ok": true, ...} with what
// mppx produced, or {"error": "<Name>: <message>"} when mppx threw.
//
// Every op calls mppx's public API (import "mppx"), except the two base64url ops, which call ox's
// Base64 module: the codec that mppx's PaymentRequest, Credential and Receipt modules call
// (Base64.toString to decode, Base64.fromString(.., {pad: false, url: true}) to encode); mppx does
// not re-export it. The ox resolved here is checked to be the one mppx itself resolves.
//
// A challenge or credential is returned in its wire form: what mppx parsed, with the decoded
// `request` object turned back into the string mppx would send (PaymentRequest.serialize), so it
// can be compared with the vectors' strings.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const CLIENTS = fileURLToPath(new URL("../../clients/", import.meta.url));
const NODE_MODULES = path.join(CLIENTS, "node_modules");

function packageJson(dir) {
  return JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8"));
}

/** Imports a subpath of a package through its `exports` map ("import", else "default" condition). */
async function importExport(dir, subpath) {
  const entry = packageJson(dir).exports[subpath];
  const file = typeof entry === "string" ? entry : entry.import ?? entry.default;
  return import(pathToFileURL(path.join(dir, file)).href);
}

const MPPX = path.join(NODE_MODULES, "mppx");
// Where Node resolves mppx's own `import 'ox'`: a copy nested in mppx, else the hoisted one.
const OX = [path.join(MPPX, "node_modules", "ox"), path.join(NODE_MODULES, "ox")].find((d) => existsSync(d));

const { Challenge, Credential, PaymentRequest, Receipt } = await importExport(MPPX, ".");
const { Base64 } = await importExport(OX, ".");

const hex = (bytes) => Buffer.from(bytes).toString("hex");

/** A parsed challenge in wire form (request as the base64url string mppx would send). */
function wireChallenge(challenge) {
  const { meta: _meta, request, ...rest } = challenge;
  return { ...rest, request: PaymentRequest.serialize(request) };
}

/** A challenge object built the way mppx builds them (Challenge.from), from wire-form params. */
function challengeFromWire(params) {
  return Challenge.from({ ...params, request: PaymentRequest.deserialize(params.request) });
}

const ops = {
  /** JCS as mppx applies it to `request`: PaymentRequest.serialize(JSON.parse(input)). */
  canonicalize: ({ input }) => ({ encoded: PaymentRequest.serialize(JSON.parse(input)) }),

  b64decode: ({ encoded }) => ({ hex: hex(Base64.toBytes(encoded)) }),

  b64encode: ({ hex: h }) => ({ encoded: Base64.fromBytes(Buffer.from(h, "hex"), { pad: false, url: true }) }),

  challenge_parse: ({ header }) => ({ challenge: wireChallenge(Challenge.deserialize(header)) }),

  challenge_list: ({ header }) => ({ challenges: Challenge.deserializeList(header).map(wireChallenge) }),

  challenge_serialize: ({ params }) => ({ header: Challenge.serialize(challengeFromWire(params)) }),

  /** The HMAC-bound id mppx computes (Challenge.from with secretKey), and Challenge.verify of the given id. */
  challenge_id: ({ params, secret }) => {
    const { id, ...rest } = params;
    const computed = Challenge.from({ ...rest, request: PaymentRequest.deserialize(rest.request), secretKey: secret });
    return { id: computed.id, verifies: Challenge.verify(challengeFromWire(params), { secretKey: secret }) };
  },

  credential_parse: ({ header }) => {
    const c = Credential.deserialize(header);
    return {
      credential: {
        challenge: wireChallenge(c.challenge),
        payload: c.payload === undefined ? null : c.payload,
        ...(c.source !== undefined && { source: c.source }),
      },
    };
  },

  /** What mppx emits for a credential whose challenge it built itself (as its clients do). */
  credential_serialize: ({ credential }) => ({
    header: Credential.serialize({
      challenge: challengeFromWire(credential.challenge),
      payload: credential.payload,
      ...(credential.source !== undefined && { source: credential.source }),
    }),
  }),

  receipt_parse: ({ header }) => ({ receipt: Receipt.deserialize(header) }),

  /** Receipt.serialize of the receipt as a JavaScript object (JSON.parse of the vector's text). */
  receipt_serialize: ({ json }) => ({ header: Receipt.serialize(JSON.parse(json)) }),
};

function run(c) {
  const op = ops[c.op];
  if (!op) throw new Error(`unknown op ${c.op}`);
  try {
    return { ok: true, ...op(c) };
  } catch (e) {
    return { error: `${e?.name ?? "Error"}: ${e?.message ?? e}` };
  }
}

const { cases } = JSON.parse(readFileSync(0, "utf8"));
const versions = {
  mppx: packageJson(MPPX).version,
  ox: packageJson(OX).version,
  mppx_wants_ox: packageJson(MPPX).dependencies.ox,
};
console.log(JSON.stringify({ versions, results: cases.map(run) }));
