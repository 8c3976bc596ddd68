// Debian's Chromium, driven by playwright-core, as a person's browser in the end-to-end tests.
//
// Usage: node browser.mjs   with one JSON request on stdin; prints one JSON answer.
//   {url, javascript?, cookies?, screenshot?, qr_screenshot?, wallet?: {lnbits_url, adminkey},
//    webln?, pay_with_webln?, paste?: {wrong_first?}}
// Opens `url` in a fresh profile (with `cookies` set first) and reports the answer and what the page
// shows. `wallet` pays through LNbits' REST API from the test's payer wallet. With `webln`, a wallet
// object is injected into every page (window.webln, as a browser wallet extension does) that pays
// with it; `pay_with_webln` presses the page's button. With `paste`, the wallet pays the invoice the
// page shows, as a phone wallet would, and its preimage is typed into the page's form (after a
// wrong one, with `wrong_first`). Either way the answer also reports where the browser lands, and
// the cookies it then holds.

import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const CLIENTS = fileURLToPath(new URL("../../clients/", import.meta.url));
const require = createRequire(path.join(CLIENTS, "package.json"));
const { chromium } = require("playwright-core");

const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function readStdin() {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  return JSON.parse(text);
}

async function payThroughLnbits({ lnbits_url, adminkey }, invoice) {
  const r = await fetch(`${lnbits_url}/api/v1/payments`, {
    method: "POST",
    headers: { "X-Api-Key": adminkey, "Content-Type": "application/json" },
    body: JSON.stringify({ out: true, bolt11: invoice }),
  });
  const paid = await r.json();
  if (!r.ok) throw new Error(`LNbits refused the payment: ${JSON.stringify(paid)}`);
  if (paid.preimage) return paid.preimage;
  const status = await fetch(`${lnbits_url}/api/v1/payments/${paid.payment_hash}`, {
    headers: { "X-Api-Key": adminkey },
  }).then((s) => s.json());
  return status.preimage;
}

// What the page shows a person, read from the DOM.
async function pageFacts(page) {
  return page.evaluate(() => {
    const $ = (id) => document.getElementById(id);
    const shown = (el) => !!el && !el.hidden && el.getClientRects().length > 0;
    const svg = document.querySelector("#qr svg");
    return {
      title: document.title,
      text: document.body ? document.body.innerText : "",
      qr_svg: svg ? svg.outerHTML : null,
      qr_href: $("qr")?.getAttribute("href") ?? null,
      open_href: $("open")?.getAttribute("href") ?? null,
      invoice: $("invoice")?.value ?? null,
      countdown: $("left")?.textContent ?? null,
      webln_shown: shown($("webln")),
      copy_shown: shown($("copy")),
      form_action: $("redeem")?.getAttribute("action") ?? null,
      refused: $("refused")?.textContent ?? null,
    };
  });
}

async function main() {
  const request = await readStdin();
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ARGS });
  try {
    // A new context is a fresh profile: no cookies, no cache.
    const context = await browser.newContext({
      javaScriptEnabled: request.javascript !== false,
      viewport: { width: 412, height: 915 },
    });
    if (request.cookies) await context.addCookies(request.cookies);
    const page = await context.newPage();
    const console_messages = [];
    page.on("console", (m) => console_messages.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => console_messages.push(`pageerror: ${e.message}`));
    const paid = [];
    const pay = async (invoice) => {
      const preimage = await payThroughLnbits(request.wallet, invoice);
      paid.push({ invoice, preimage });
      return preimage;
    };
    if (request.webln) {
      await page.exposeFunction("__testWalletPay", pay);
      await page.addInitScript(() => {
        window.webln = {
          enable: async () => {},
          sendPayment: async (invoice) => ({ preimage: await window.__testWalletPay(invoice) }),
        };
      });
    }

    const first = await page.goto(request.url);
    const answer = {
      status: first.status(),
      headers: await first.allHeaders(),
      page: await pageFacts(page),
    };
    if (request.screenshot) await page.screenshot({ path: request.screenshot, fullPage: true });
    if (request.qr_screenshot) await page.locator("#qr").screenshot({ path: request.qr_screenshot });

    let landed = null;
    const isResource = (r) => r.request().isNavigationRequest() && r.request().method() === "GET";
    if (request.pay_with_webln) {
      landed = page.waitForResponse(isResource, { timeout: 15000 });
      await page.click("#webln");
    } else if (request.paste) {
      const preimage = await pay(answer.page.invoice);
      if (request.paste.wrong_first) {
        await page.fill("#preimage", "00".repeat(32));
        await page.click("#redeem button[type=submit]");
        await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("Not accepted"));
        answer.wrong = await pageFacts(page);
        answer.wrong.status_text = await page.textContent("#status");
      }
      await page.fill("#preimage", preimage);
      landed = page.waitForResponse(isResource, { timeout: 15000 });
      await page.click("#redeem button[type=submit]");
    }
    if (landed) {
      const r = await landed.catch(async (e) => {
        throw new Error(`${e.message}; the page says ${JSON.stringify(await page.textContent("#status"))}; console: ${JSON.stringify(console_messages)}`);
      });
      await page.waitForLoadState();
      answer.landed = {
        url: page.url(),
        status: r.status(),
        chain: redirects(r.request()),
        body: await r.text(),
        page: await pageFacts(page),
      };
    }
    answer.paid = paid;
    answer.cookies = await context.cookies();
    answer.console = console_messages;
    process.stdout.write(JSON.stringify(answer));
  } finally {
    await browser.close();
  }
}

// The requests that led to this one: [{method, url, status}], the first first.
function redirects(request) {
  const chain = [];
  for (let r = request.redirectedFrom(); r; r = r.redirectedFrom()) chain.unshift({ method: r.method(), url: r.url() });
  return chain;
}

await main();
