"""Path confusion: no spelling of a path reaches paid content it has not paid for.

A real Debian nginx serves files whose contents name them (``PAID …`` for paid ones) behind a real
Envoy with l402.wasm, once with the connection manager's path settings of the shipped configs
(``normalize_path``, ``merge_slashes``, ``path_with_escaped_slashes_action: REJECT_REQUEST``) and once
with Envoy's defaults (none of them). nginx decodes ``%2F`` and ``%2e``, merges ``//`` and resolves
``..`` before it looks for a file: exactly the upstream a filter deciding on the raw path is fooled by.
Every traversal and encoding variant is aimed from a free rule, from ``unmatched: free``, from a cheap
rule and with a restricted token at paid or dearer content; the ground truth is nginx's answer body and
its access log (which file it served), not only the status. Legitimate paths keep working.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from attacks import Gateway, raw_request, wait_until
from harness import _kill_group, _tmpdir, free_port, http, wait_tcp

# path under the nginx root -> contents. Paid content says PAID.
FILES = {
    "health": "free health",
    "v1/forecast": "PAID weather forecast",
    "v1/basic/x": "cheap basic x",
    "v1/premium/x": "PAID premium x",
    "files/public/a": "public file a",
    "files/private/x": "PAID private x",
    "projects/group/project": "project group/project",
    "secret": "PAID secret",
}
PAID_URIS = {"/" + name for name, text in FILES.items() if text.startswith("PAID")}

ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/basic/"}, "service": "basic", "price_sat": 1, "lifetime_s": 3600},
    {"match": {"path_prefix": "/v1/premium/"}, "service": "premium", "price_sat": 50, "lifetime_s": 3600},
    {"match": {"path_prefix": "/files/"}, "service": "files", "price_sat": 5, "lifetime_s": 3600,
     "restrict": {"path_prefix": "/files/public/"}},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
    {"match": {"path": "/secret"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
]
# unmatched: free, with one rule bound to a host name.
FREE_ROUTES = [
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
    {"match": {"path": "/secret"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
    {"match": {"host": "api.example.com"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
]
PATH_SETTINGS = ("normalize_path: true", "merge_slashes: true", "path_with_escaped_slashes_action: REJECT_REQUEST")


class Nginx:
    """Debian's nginx on a free 127.0.0.1 port with its default URI handling, serving FILES."""

    def __init__(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            pytest.fail("nginx not installed: run ./build.sh setup (Debian package nginx)")
        self.dir = _tmpdir("nginx-")
        root = self.dir / "root"
        for name, text in FILES.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        self.port = free_port()
        self.markers = 0
        self.access_log = self.dir / "access.log"
        temp = "".join(f"{kind}_temp_path {self.dir}/{kind};\n" for kind in
                       ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format served '$status "$request_uri" "$uri"';
    access_log {self.access_log} served;
    {temp}
    default_type text/plain;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        location / {{ try_files $uri =404; }}
    }}
}}
""")
        self.proc = subprocess.Popen([binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                      "-e", str(self.dir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        wait_tcp(self.port)

    def served(self) -> list[tuple[int, str, str]]:
        """(status, request_uri, uri) of every request nginx answered, in order, once the answers
        already sent are logged (a marker request asked directly comes after them in the log)."""
        self.markers += 1
        marker = f"/health?marker={self.markers}"
        assert http("GET", f"http://127.0.0.1:{self.port}{marker}").status == 200
        assert wait_until(lambda: f'"{marker}"' in self.access_log.read_text(), timeout=5, step=0.01)
        text = self.access_log.read_text() if self.access_log.exists() else ""
        return [(int(m[1]), m[2], m[3]) for m in re.finditer(r'^(\d+) "([^"]*)" "([^"]*)"$', text, re.M)]

    def stop(self) -> None:
        _kill_group(self.proc)


def without_path_settings(template: str) -> str:
    for line in PATH_SETTINGS:
        assert line in template, line
        template = template.replace(line, "")
    return template


def keeping_escaped_slashes(template: str) -> str:
    return template.replace("path_with_escaped_slashes_action: REJECT_REQUEST",
                            "path_with_escaped_slashes_action: KEEP_UNCHANGED")


@pytest.fixture(scope="module")
def nginx() -> Iterator[Nginx]:
    n = Nginx()
    try:
        yield n
    finally:
        n.stop()


def _gateway(nginx: Nginx, **kwargs) -> Iterator[Gateway]:
    gw = Gateway(nginx.port, **kwargs)
    try:
        yield gw
    finally:
        gw.stop()


ENVOYS: dict[str, Callable[[str], str] | None] = {"normalizing": None, "envoy-defaults": without_path_settings}


@pytest.fixture(scope="module", params=list(ENVOYS))
def rules(request, nginx, wasm) -> Iterator[Gateway]:
    yield from _gateway(nginx, routes=ROUTES, template_edit=ENVOYS[request.param])


@pytest.fixture(scope="module", params=list(ENVOYS))
def unmatched_free(request, nginx, wasm) -> Iterator[Gateway]:
    yield from _gateway(nginx, routes=FREE_ROUTES, plugin={"unmatched": "free"}, template_edit=ENVOYS[request.param])


@pytest.fixture(scope="module")
def slashes_allowed(nginx, wasm) -> Iterator[Gateway]:
    routes = [{"match": {"path_prefix": "/health"}, "free": True},
              {"match": {"path_prefix": "/projects/"}, "service": "projects", "price_sat": 3, "lifetime_s": 3600}]
    yield from _gateway(nginx, routes=routes, plugin={"paths": {"encoded_slashes": "allow"}},
                        template_edit=keeping_escaped_slashes)


def traversals(start: str, target: str) -> list[str]:
    """Spellings of `start` + "/../" + `target` (target relative, e.g. "v1/forecast"): plain, encoded
    in either case, with encoded or back slashes, double encoded, with `//`, `;` parameters and
    trailing dots."""
    enc = target.replace("/", "%2F")
    return [
        f"{start}/../{target}", f"{start}/./../{target}", f"{start}/%2e%2e/{target}", f"{start}/%2E%2E/{target}",
        f"{start}/.%2e/{target}", f"{start}/%2e./{target}", f"{start}/..%2f{target}", f"{start}/..%2F{target}",
        f"{start}%2f..%2f{target}", f"{start}%2F..%2F{enc}", f"{start}/%2e%2e%2f{target}", f"{start}/%2E%2e%2F{target}",
        f"{start}/..%5c{target}", f"{start}/..%5C{target}", f"{start}\\..\\{target}", f"{start}/..\\{target}",
        f"{start}/..%252f{target}", f"{start}/%252e%252e/{target}", f"{start}/%252e%252e%252f{target}",
        f"{start}//../{target}", f"{start}/..//{target}", f"{start}/..;/{target}", f"{start};x/../{target}",
        f"{start}/..;x=1/{target}", f"{start}/%2e%2e;/{target}", f"{start}/.../../{target}",
        f"{start}/../{target}.", f"{start}/../{target}/.", f"{start}/x/../../{target}",
    ]


def get(gw: Gateway, path: str, cred: str | None = None, host: str = "127.0.0.1") -> tuple[int, bytes]:
    headers = [("Authorization", cred)] if cred else []
    status, _, body = raw_request(gw.listen_port, "GET", path, headers, host=host)
    return status, body


def assert_not_served(nginx: Nginx, gw: Gateway, path: str, cred: str | None = None) -> int:
    before = len(nginx.served())
    status, body = get(gw, path, cred)
    assert b"PAID" not in body, (path, status, body[:200])
    leaked = [entry for entry in nginx.served()[before:] if entry[0] == 200 and entry[2] in PAID_URIS]
    assert not leaked, f"{path} reached paid content: {leaked}"
    return status


def assert_served(nginx: Nginx, gw: Gateway, path: str, uri: str, cred: str | None = None) -> None:
    before = len(nginx.served())
    status, body = get(gw, path, cred)
    assert status == 200, (path, status, body[:300])
    assert body.decode() == FILES[uri.lstrip("/")], body
    assert nginx.served()[before:][0][2] == uri


@pytest.fixture(scope="module")
def tokens(rules) -> dict[str, str]:
    return {"basic": rules.buy("/v1/basic/x"), "files": rules.buy("/files/public/a"),
            "weather": rules.buy("/v1/forecast")}


CASES = [("free", "/health", "v1/forecast", None), ("free", "/health", "secret", None),
         ("cheap", "/v1/basic", "premium/x", "basic"), ("restricted", "/files/public", "private/x", "files"),
         ("restricted-out", "/files/public", "../secret", "files")]


@pytest.mark.parametrize("kind,start,target,token", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_no_spelling_reaches_paid_content(rules, nginx, tokens, kind, start, target, token):
    creates = rules.sim.stats()["invoice_create"]
    statuses = {path: assert_not_served(nginx, rules, path, tokens.get(token)) for path in traversals(start, target)}
    assert all(s in (400, 402, 403, 404) for s in statuses.values()), statuses
    if "normalize_path" not in rules.envoy.config_text:
        # Envoy passed every path on as sent: the filter refused each one itself, with no invoice.
        assert set(statuses.values()) == {400}, statuses
        assert rules.sim.stats()["invoice_create"] == creates
        assert wait_until(lambda: rules.counters().get("l402_refused_ambiguous_path", 0) > 0)


UNMATCHED = ["//v1/forecast", "/%76%31/forecast", "/v1%2fforecast", "/%2fv1/forecast", "/x/..%2fv1/forecast",
             "/x/../v1/forecast", "/./v1/forecast", "/x%2F..%2Fsecret", "//secret", "/%73ecret", "/secret;x",
             "/secret/.", "/secret%2f", "/x\\..\\secret", "/x/%252e%252e/secret", "/V1/forecast", "/SECRET",
             "/secret.", "/v1;x/forecast", "/x/..;/secret"]


@pytest.mark.parametrize("path", UNMATCHED)
def test_unmatched_free_is_no_way_around_a_rule(unmatched_free, nginx, path):
    assert_not_served(nginx, unmatched_free, path)


@pytest.mark.parametrize("host", ["api.example.com", "API.Example.COM", "api.example.com.", "api.example.com.:80",
                                  "Api.Example.Com.:8443"])
def test_a_host_rule_holds_for_every_spelling_of_the_host(unmatched_free, host):
    status, body = get(unmatched_free, "/health", host=host)
    assert status == 402, (host, status, body[:200])
    assert get(unmatched_free, "/health")[0] == 200


def test_legitimate_paths_keep_working(rules, nginx, tokens):
    assert_served(nginx, rules, "/health", "/health")
    assert_served(nginx, rules, "/v1/forecast", "/v1/forecast", tokens["weather"])
    assert_served(nginx, rules, "/v1/basic/x", "/v1/basic/x", tokens["basic"])
    assert_served(nginx, rules, "/files/public/a", "/files/public/a", tokens["files"])
    assert_served(nginx, rules, "/v1/forecast?when=today", "/v1/forecast", tokens["weather"])
    # Encoded unreserved characters decode to the same rule and the same file.
    assert_served(nginx, rules, "/v1/fore%63ast", "/v1/forecast", tokens["weather"])
    assert get(rules, "/v1/forecast")[0] == 402
    assert get(rules, "/v1/premium/x", tokens["basic"])[0] == 402


def test_encoded_slash_apis_work_when_allowed(slashes_allowed, nginx):
    gw = slashes_allowed
    cred = gw.buy("/projects/group%2Fproject")
    assert_served(nginx, gw, "/projects/group%2Fproject", "/projects/group/project", cred)
    assert get(gw, "/projects/group%2Fproject")[0] == 402
    for path in ["/health%2F..%2Fprojects/group/project", "/health/..%2Fsecret", "/health%2F..%2Fsecret",
                 "/projects/x%2F..%2F..%2Fsecret"]:
        assert assert_not_served(nginx, gw, path, cred) in (400, 402, 404), path
    assert get(gw, "/health/..%2Fsecret")[0] == 400
