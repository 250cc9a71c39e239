#!/usr/bin/env python3
"""Black-box check of a running stack through its front door (nginx), standard library only, so it
runs on a host without the project's virtualenv:

    python3 scripts/blackbox_check.py --url http://127.0.0.1:18080 --admin-token "$TOKEN"

What it checks, each as a client would see it: readiness; /v1/models names an active version;
/v1/score answers one CTR in (0, 1) per candidate from that version; explain gives per-head
weights; /v1/events stores a new user's behaviors (the next score, on whichever replica, is no
longer `unknown_user` and its explain selects exactly those items), and a replay is deduplicated;
a bad request is a 422 naming the field; an admin call without a token is a 401, with a wrong one
a 403, with the right one a 200; /metrics is Prometheus text. Exit 0 when all pass, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid


def call(base: str, method: str, path: str, body: object = None, headers: dict | None = None,
         timeout: float = 30.0) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, code, ctype = r.read(), r.status, r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        raw, code, ctype = e.read(), e.code, e.headers.get("content-type", "")
    return code, (json.loads(raw) if "json" in ctype else raw.decode())


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, name: str, ok: bool, detail: object = "") -> bool:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {str(detail)[:400]}"))
        self.failed += not ok
        return ok


def run(base: str, token: str, user: int, items: list[int]) -> int:
    c = Checks()
    code, _ = call(base, "GET", "/health/ready")
    c.check("GET /health/ready -> 200", code == 200, code)

    code, models = call(base, "GET", "/v1/models")
    active = models.get("active") if isinstance(models, dict) else None
    c.check("GET /v1/models -> 200 with an active version", code == 200 and bool(active), models)
    c.check("the active version is listed", any(v["version"] == active for v in models.get("versions", [])), models)

    body = {"user_id": user, "candidates": [{"item_id": i} for i in items]}
    code, r = call(base, "POST", "/v1/score", body)
    ok = code == 200 and isinstance(r, dict)
    c.check("POST /v1/score -> 200", ok, r)
    if ok:
        c.check("one score per candidate, each in (0, 1)", len(r["scores"]) == len(items)
                and all(0.0 < s < 1.0 for s in r["scores"]), r["scores"])
        c.check("answered by the active version", r["model_version"] == active, r["model_version"])
        c.check("timings_ms has queue/fetch/gsu/esu/total", {"queue", "fetch", "gsu", "esu", "total"}
                <= set(r["timings_ms"]), r["timings_ms"])

    code, r = call(base, "POST", "/v1/score", {**body, "explain": True})
    ok = code == 200 and isinstance(r, dict) and len(r.get("explain") or []) == len(items)
    c.check("explain=true -> one explanation per candidate", ok, r)
    if ok:
        sel = r["explain"][0]["selected"]
        c.check("explain selects behaviors with per-head weights", bool(sel) and all(
            len(s["weight"]) == len(s["alpha_proj"]) == len(s["alpha_bias"]) >= 1 for s in sel), sel[:2])

    # a user nobody has seen: its events must reach Redis and every replica's next answer
    fresh = 9_000_000_000 + uuid.uuid4().int % 1_000_000_000
    now = int(time.time() * 1000)
    events = [{"event_id": f"smoke-{fresh}-{k}", "user_id": fresh, "item_id": i, "ts": now - 1000 * (len(items) - k),
               "cross": {}} for k, i in enumerate(items)]
    code, r = call(base, "POST", "/v1/score", {"user_id": fresh, "candidates": [{"item_id": items[0]}]})
    c.check("a new user scores degraded, reason unknown_user", code == 200 and "unknown_user" in r["degraded_reasons"], r)
    code, r = call(base, "POST", "/v1/events", {"events": events})
    c.check("POST /v1/events -> 200, every event new", code == 200 and r.get("accepted") == len(events)
            and r.get("new", len(events)) == len(events), r)
    code, r = call(base, "POST", "/v1/events", {"events": events})
    c.check("the replay is accepted and deduplicated (new = 0)", code == 200 and r.get("accepted") == len(events)
            and r.get("new") == 0, r)
    for attempt in range(4):  # several answers: nginx spreads them over the replicas
        code, r = call(base, "POST", "/v1/score", {"user_id": fresh, "candidates": [{"item_id": items[0]}],
                                                   "explain": True})
        picked = sorted(s["item_id"] for s in r["explain"][0]["selected"]) if code == 200 else None
        c.check(f"after the events (answer {attempt + 1}): known user, explain selects exactly them",
                code == 200 and "unknown_user" not in r["degraded_reasons"] and picked == sorted(items), r)

    code, r = call(base, "POST", "/v1/score", {"user_id": "one", "candidates": []})
    locs = [e.get("loc") for e in r.get("detail", [])] if isinstance(r, dict) else []
    c.check("a bad request -> 422 naming the field", code == 422 and any("user_id" in (l or []) for l in locs), r)

    path = f"/v1/models/{active}/activate"
    code, r = call(base, "POST", path)
    c.check("admin call without a token -> 401", code == 401, (code, r))
    code, r = call(base, "POST", path, headers={"authorization": "Bearer not-the-token"})
    c.check("admin call with a wrong token -> 403", code == 403, (code, r))
    if token:
        code, r = call(base, "POST", path, headers={"authorization": f"Bearer {token}"})
        c.check("admin call with the token -> 200 (re-activating the active version)",
                code == 200 and r.get("active") == active, (code, r))

    code, text = call(base, "GET", "/metrics")
    c.check("GET /metrics -> Prometheus text", code == 200 and "twin_requests_total" in str(text), str(text)[:200])
    print(f"blackbox: {c.failed} check(s) failed" if c.failed else "blackbox: all checks passed")
    return 1 if c.failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the stack's front door")
    ap.add_argument("--admin-token", default="", help="the stack's TWIN_ADMIN_TOKEN (the 200 check needs it)")
    ap.add_argument("--user", type=int, default=1, help="a seeded demo user")
    ap.add_argument("--items", default="42,7,1001", help="comma-separated catalog item ids")
    args = ap.parse_args(argv)
    return run(args.url.rstrip("/"), args.admin_token, args.user, [int(x) for x in args.items.split(",")])


if __name__ == "__main__":
    sys.exit(main())
