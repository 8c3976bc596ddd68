"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const invoice = $("invoice").value;
  const status = $("status");

  const left = $("left");
  const end = Date.now() + Number(left.dataset.seconds) * 1000;
  const tick = () => {
    const s = Math.max(0, Math.ceil((end - Date.now()) / 1000));
    left.textContent = s > 0 ? `in ${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}` : "now: reload for a new invoice";
    if (s > 0) setTimeout(tick, 1000);
  };
  tick();

  const copy = $("copy");
  if (navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(invoice);
        status.textContent = "Invoice copied.";
      } catch {
        status.textContent = "Copying failed: select the invoice instead.";
      }
    });
  }

  // Where the route redeems payments: the credential is posted in a header, the gateway answers
  // with the cookie (a redirect, opaque to the script), and the page reloads as the resource.
  const form = $("redeem");
  if (!form) return;
  form.hidden = false;
  const redeem = async (preimage) => {
    status.textContent = "Checking the payment...";
    const r = await fetch(form.action, {
      method: "POST",
      headers: { Authorization: `L402 ${form.dataset.macaroon}:${preimage}` },
      redirect: "manual",
      cache: "no-store",
    });
    if (r.type !== "opaqueredirect") {
      const refused = await r.json().catch(() => ({}));
      throw new Error(refused.detail || `HTTP ${r.status}`);
    }
    status.textContent = "Paid. Opening...";
    location.reload();
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await redeem(form.elements.preimage.value.trim());
    } catch (e) {
      status.textContent = `Not accepted: ${e.message}`;
    }
  });

  // WebLN wallets (browser extensions such as Alby) pay and reveal the preimage.
  const pay = $("webln");
  const offer = () => {
    if (!window.webln || !pay.hidden) return;
    pay.hidden = false;
    pay.addEventListener("click", async () => {
      pay.disabled = true;
      status.textContent = "Waiting for your wallet...";
      let paid;
      try {
        await window.webln.enable();
        paid = await window.webln.sendPayment(invoice);
      } catch (e) {
        status.textContent = `Not paid: ${(e && e.message) || e}`;
        pay.disabled = false;
        return;
      }
      try {
        await redeem(paid.preimage);
      } catch (e) {
        status.textContent = `Paid, but not accepted: ${e.message}`;
      }
    });
  };
  offer();
  window.addEventListener("webln:ready", offer);
})();
