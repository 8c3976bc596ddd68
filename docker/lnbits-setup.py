"""One-shot setup of the demo's LNbits (docker-compose.yml, service `lnbits-setup`).

Waits for LNbits, does its first install (admin user), creates the gateway wallet the filter
invoices on and a funded payer wallet for trying the paywall, and writes:

  /shared/gateway.env   LNBITS_INVOICE_KEY=<gateway invoice key>   (read by the envoy service)
  /shared/payer.env     PAYER_ADMIN_KEY=<payer admin key>          (to pay invoices by hand)

Idempotent: when /shared/gateway.env exists it does nothing. Standard library only.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

LNBITS = os.environ.get("LNBITS_URL", "http://lnbits:5000")
SHARED = os.environ.get("SHARED_DIR", "/shared")
ADMIN_USER = os.environ.get("LNBITS_ADMIN_USER", "admin")
ADMIN_PASSWORD = os.environ.get("LNBITS_ADMIN_PASSWORD", "l402-demo-admin")
PAYER_SATS = int(os.environ.get("PAYER_SATS", "100000"))


def call(method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(LNBITS + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def main():
    target = os.path.join(SHARED, "gateway.env")
    if os.path.exists(target):
        print("already set up:", target)
        return 0
    for _ in range(120):
        try:
            call("GET", "/api/v1/health")
            break
        except (OSError, urllib.error.URLError):
            time.sleep(1)
    else:
        print("LNbits did not come up at", LNBITS, file=sys.stderr)
        return 1
    token = call("PUT", "/api/v1/auth/first_install", {
        "username": ADMIN_USER, "password": ADMIN_PASSWORD, "password_repeat": ADMIN_PASSWORD,
    })["access_token"]
    gateway = call("POST", "/api/v1/account", {"name": "l402-gateway"})
    payer = call("POST", "/api/v1/account", {"name": "l402-payer"})
    call("PUT", "/users/api/v1/balance", {"id": payer["id"], "amount": PAYER_SATS},
         headers={"Authorization": "Bearer " + token})
    os.makedirs(SHARED, exist_ok=True)
    with open(os.path.join(SHARED, "payer.env"), "w") as f:
        f.write("PAYER_ADMIN_KEY=%s\n" % payer["adminkey"])
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        f.write("LNBITS_INVOICE_KEY=%s\n" % gateway["inkey"])
    os.replace(tmp, target)
    print("gateway wallet ready; payer funded with %d sat" % PAYER_SATS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
