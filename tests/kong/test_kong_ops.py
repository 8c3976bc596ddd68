"""The operator features on Kong's engine: `access_log_fields` writes the nginx variable
`$l402_decision` (declared with `map`, as Kong's `nginx_http_include` can), which nginx's access log
prints, and costs nothing where it is not declared; a dry-run route's header reaches the API; the
discovery manifest is answered by the filter."""

from __future__ import annotations

from pathlib import Path

import pytest

from attacks import token_id
from engine import ENGINES, engine_params, wait_for
from kong_common import config, lnd_node, token

# What an operator adds to Kong's http{} (e.g. with nginx_http_include): the variable, a log format
# that prints it, and an access log in that format.
HTTP_EXTRA = ("map $host $l402_decision { default \"\"; } "
              "log_format l402 '$status $request_uri $l402_decision'; access_log logs/l402.log l402;")
ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
    {"match": {"path_prefix": "/shadow/"}, "service": "shadow", "price_sat": 7, "dry_run": True},
]
CONFIG = {"access_log_fields": True, "discovery": {"enabled": True}}


@pytest.mark.parametrize("nginx", engine_params(ENGINES))
def test_decisions_in_the_access_log_dry_run_and_discovery(gateway, api, lnd, nginx):
    engine = gateway(config(lnd_node(lnd), ROUTES, **CONFIG), nginx, http_extra=HTTP_EXTRA, workers=1)
    weather = token("weather")
    assert engine.get("/health").status == 200
    assert engine.get("/v1/forecast").status == 402
    assert engine.get("/v1/forecast", {"Authorization": weather}).status == 200
    assert engine.get("/nowhere").status == 403
    assert engine.get("/shadow/x").status == 200
    manifest = engine.get("/.well-known/l402-services")
    assert manifest.status == 200 and [r["service"] for r in manifest.json()["routes"]] == ["weather", "shadow"]
    shadow = [e for e in api.requests() if e["path"] == "/shadow/x"]
    assert shadow[0]["headers"]["x-l402-dry-run"] == "challenge; reason=no_credential; service=shadow; price_msat=7000"
    log = Path(engine.dir) / "logs" / "l402.log"
    assert wait_for(lambda: len(log.read_text().splitlines()) >= 6, 5)
    lines = log.read_text().splitlines()
    assert lines[0] == "200 /health outcome=free"
    assert lines[1].startswith("402 /v1/forecast outcome=challenge reason=no_credential service=weather "
                               "price_msat=10000 token_id=")
    assert lines[2:] == [
        f"200 /v1/forecast outcome=paid service=weather price_msat=10000 token_id={token_id(weather)}",
        "403 /nowhere outcome=no_route",
        "200 /shadow/x outcome=challenge reason=no_credential service=shadow price_msat=7000 dry_run=true",
        "200 /.well-known/l402-services outcome=discovery",
    ]


@pytest.mark.parametrize("nginx", engine_params(ENGINES))
def test_an_undeclared_variable_costs_nothing(gateway, lnd, nginx):
    """nginx answers NotFound for a variable its configuration does not declare: the filter goes on."""
    engine = gateway(config(lnd_node(lnd), ROUTES, **CONFIG), nginx, workers=1)
    assert engine.get("/health").status == 200
    assert engine.get("/v1/forecast", {"Authorization": token("weather")}).status == 200
    assert engine.get("/v1/forecast").status == 402
    assert not engine.log_lines(r"panicked|trap|\[emerg\]|\[alert\]")
