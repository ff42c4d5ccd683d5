#!/usr/bin/env python3
"""Load and latency probes for scripts/bench-relay.sh (python3 standard library only).

  relay-load.py ids      --url HUB --token-file F --agent A [--limit N]      > ids.jsonl
  relay-load.py seq      --url HUB --token-file F --agent A --ids ids.jsonl --mode get|filter [--n 300]
  relay-load.py load     --url HUB --token-file F --agent A --ids ids.jsonl --mode get|filter|hub
                         --concurrency C [--seconds 15]     (hub: GET /v1/agents, the hub alone)
  relay-load.py hub      --url HUB --token-file F [--n 300]                   GET /v1/agents
  relay-load.py ldap     --ids ids.jsonl --mode get|filter --ldap-url U --bind-dn D --pw-file F
                         --base B [--n 300]                                   one ldapsearch per query
  relay-load.py wait-agent --url HUB --token-file F --agent A [--state following] [--timeout 120]
  relay-load.py wait-ok  --url HUB --token-file F --agent A --ids ids.jsonl --killed-file K [--timeout 60]
                         (start it before killing the hub; write the kill's epoch time to K:
                          it waits for a 200 to a request sent after that)

HUB is the hub's base URL (http://127.0.0.1:PORT); F holds the operator token. Every probe
prints one JSON object on stdout (times in milliseconds); `ids` prints one {"id", "userName"}
per line. `seq` and `load` keep one HTTP/1.1 connection per client (reopened after an
error), so TCP connects are not measured. A request counts as an error unless it answers 200
(with totalResults 1 for `filter`). Everything has a timeout: nothing waits forever.
"""
import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
import time
import urllib.parse

TIMEOUT = 15.0  # seconds per HTTP request (the hub's forward timeout is shorter)


def percentile(sorted_ms, p):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_ms:
        return None
    k = max(0, min(len(sorted_ms) - 1, int(round(p / 100.0 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


def summary(lat_ms, errors, extra=None):
    s = sorted(lat_ms)
    out = {
        "n": len(s),
        "errors": errors,
        "p50": percentile(s, 50),
        "p95": percentile(s, 95),
        "p99": percentile(s, 99),
        "max": s[-1] if s else None,
        "mean": (sum(s) / len(s)) if s else None,
    }
    if extra:
        out.update(extra)
    return out


class Client:
    """One persistent HTTP/1.1 connection to the hub, with the operator token."""

    def __init__(self, url, token, timeout=TIMEOUT):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http":
            raise SystemExit("relay-load.py: only http:// hub URLs are supported")
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.conn = None

    def get(self, path):
        """(status, body bytes); status 0 and the error text on a transport failure."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", self.prefix + path,
                                  headers={"Authorization": "Bearer " + self.token,
                                           "Accept": "application/scim+json"})
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, body
            except (OSError, http.client.HTTPException) as e:
                self.close()
                # A kept-alive connection the server closed in between: retry once, fresh.
                if attempt == 2 or not isinstance(e, (http.client.RemoteDisconnected,
                                                      BrokenPipeError, ConnectionResetError)):
                    return 0, str(e).encode()
        return 0, b""

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None


def read_token(path):
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def read_ids(path):
    with open(path, encoding="utf-8") as f:
        ids = [json.loads(line) for line in f if line.strip()]
    if not ids:
        raise SystemExit(f"relay-load.py: no ids in {path}")
    return ids


def scim_path(agent, mode, user):
    if mode == "hub":  # the hub alone: no agent involved
        return "/v1/agents"
    base = "/agents/" + urllib.parse.quote(agent, safe="") + "/scim/v2/Users"
    if mode == "get":
        return base + "/" + urllib.parse.quote(user["id"], safe="")
    flt = 'userName eq "%s"' % user["userName"].replace("\\", "\\\\").replace('"', '\\"')
    return base + "?filter=" + urllib.parse.quote(flt, safe="")


def ok(mode, status, body):
    if status != 200:
        return False
    if mode == "filter":
        try:
            return json.loads(body).get("totalResults") == 1
        except ValueError:
            return False
    return True


def first_error(mode, status, body):
    return {"status": status, "body": body[:300].decode("utf-8", "replace"), "mode": mode}


def cmd_ids(a):
    """Pages through /Users (the agent caps a page) until `limit` users or the end."""
    c = Client(a.url, read_token(a.token_file))
    got, start, total = 0, 1, None
    while got < a.limit:
        path = "/agents/%s/scim/v2/Users?startIndex=%d&count=%d&attributes=userName" % (
            urllib.parse.quote(a.agent, safe=""), start, a.limit - got)
        status, body = c.get(path)
        if status != 200:
            raise SystemExit(f"relay-load.py ids: HTTP {status}: {body[:300]!r}")
        page = json.loads(body)
        total = page.get("totalResults")
        res = page.get("Resources") or []
        if not res:
            break
        for r in res:
            if r.get("id") and r.get("userName"):
                print(json.dumps({"id": r["id"], "userName": r["userName"]}))
                got += 1
        start += len(res)
        if total is not None and start > total:
            break
    print(f"relay-load.py ids: {got} users listed (totalResults {total})", file=sys.stderr)


def cmd_seq(a):
    c = Client(a.url, read_token(a.token_file))
    ids = read_ids(a.ids)
    rnd = random.Random(a.seed)
    lat, errors, err1 = [], 0, None
    c.get(scim_path(a.agent, a.mode, ids[0]))  # open the connection (not measured)
    for _ in range(a.n):
        u = rnd.choice(ids)
        t0 = time.perf_counter()
        status, body = c.get(scim_path(a.agent, a.mode, u))
        dt = (time.perf_counter() - t0) * 1000.0
        if ok(a.mode, status, body):
            lat.append(dt)
        else:
            errors += 1
            err1 = err1 or first_error(a.mode, status, body)
    print(json.dumps(summary(lat, errors, {"first_error": err1} if err1 else None)))


def cmd_load(a):
    token = read_token(a.token_file)
    ids = read_ids(a.ids)
    lock = threading.Lock()
    lat, counts = [], {"errors": 0}
    err1 = []
    start = threading.Barrier(a.concurrency + 1)
    deadline = [0.0]

    def worker(k):
        c = Client(a.url, token)
        rnd = random.Random(a.seed + k)
        mine, errs = [], 0
        c.get(scim_path(a.agent, a.mode, ids[0]))  # connect before the clock starts
        start.wait()
        while time.perf_counter() < deadline[0]:
            u = rnd.choice(ids)
            t0 = time.perf_counter()
            status, body = c.get(scim_path(a.agent, a.mode, u))
            dt = (time.perf_counter() - t0) * 1000.0
            if ok(a.mode, status, body):
                mine.append(dt)
            else:
                errs += 1
                if not err1:
                    err1.append(first_error(a.mode, status, body))
        c.close()
        with lock:
            lat.extend(mine)
            counts["errors"] += errs

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(a.concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + a.seconds
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(a.seconds + TIMEOUT + 5)
    secs = time.perf_counter() - t0
    extra = {"concurrency": a.concurrency, "seconds": secs,
             "rps": len(lat) / secs if secs > 0 else 0.0}
    if err1:
        extra["first_error"] = err1[0]
    print(json.dumps(summary(lat, counts["errors"], extra)))


def cmd_hub(a):
    c = Client(a.url, read_token(a.token_file))
    c.get("/v1/agents")
    lat, errors = [], 0
    for _ in range(a.n):
        t0 = time.perf_counter()
        status, _ = c.get("/v1/agents")
        dt = (time.perf_counter() - t0) * 1000.0
        if status == 200:
            lat.append(dt)
        else:
            errors += 1
    print(json.dumps(summary(lat, errors)))


def ldap_filter(mode, user):
    def esc(v):
        return "".join("\\%02x" % ord(ch) if ch in "*()\\\0" else ch for ch in v)
    if mode == "get":
        return "(&(objectClass=inetOrgPerson)(entryUUID=%s))" % esc(user["id"])
    return "(&(objectClass=inetOrgPerson)(uid=%s))" % esc(user["userName"])


def cmd_ldap(a):
    ids = read_ids(a.ids)
    rnd = random.Random(a.seed)
    lat, errors, err1 = [], 0, None
    for _ in range(a.n):
        u = rnd.choice(ids)
        argv = ["ldapsearch", "-x", "-H", a.ldap_url, "-D", a.bind_dn, "-y", a.pw_file,
                "-b", a.base, "-LLL", "-o", "ldif-wrap=no", ldap_filter(a.mode, u), "*", "entryUUID"]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(argv, capture_output=True, timeout=10)
            good = p.returncode == 0 and p.stdout.count(b"\ndn: ") + p.stdout.startswith(b"dn: ") == 1
            why = p.stderr[:300].decode("utf-8", "replace") or "%d entries" % p.stdout.count(b"dn: ")
        except subprocess.TimeoutExpired:
            good, why = False, "timeout"
        dt = (time.perf_counter() - t0) * 1000.0
        if good:
            lat.append(dt)
        else:
            errors += 1
            err1 = err1 or {"filter": ldap_filter(a.mode, u), "why": why}
    print(json.dumps(summary(lat, errors, {"first_error": err1} if err1 else None)))


def agents(c):
    status, body = c.get("/v1/agents")
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def cmd_wait_agent(a):
    c = Client(a.url, read_token(a.token_file), timeout=5)
    end = time.monotonic() + a.timeout
    seen = None
    while time.monotonic() < end:
        for ag in agents(c) or []:
            if ag.get("agent") == a.agent:
                hb = ag.get("heartbeat") or {}
                seen = {"role": ag.get("role"), "state": hb.get("state"),
                        "connected": ag.get("connected")}
                if ag.get("role") == "active" and (not a.state or hb.get("state") == a.state):
                    print(json.dumps(seen))
                    return
        time.sleep(0.5)
    print(json.dumps({"timeout": a.timeout, "last_seen": seen}))
    sys.exit(1)


def cmd_wait_ok(a):
    """Probes GET /Users/{id} through the hub every 20 ms (a fresh connection each time)
    until one that was sent after the hub was killed answers 200. The kill time is read
    from --killed-file, which the caller writes right after the kill (epoch seconds): a
    restart faster than one probe interval is then measured too, instead of never being
    seen failing. Prints the wall-clock time (epoch seconds) of that 200."""
    token = read_token(a.token_file)
    user = read_ids(a.ids)[0]
    end = time.monotonic() + a.timeout
    killed_at = None
    while killed_at is None and time.monotonic() < end:
        try:
            with open(a.killed_file) as f:
                killed_at = float(f.read().strip())
        except (OSError, ValueError):
            time.sleep(0.005)
    attempts, statuses = 0, {}
    while killed_at is not None and time.monotonic() < end:
        c = Client(a.url, token, timeout=max(0.5, min(10.0, end - time.monotonic())))
        attempts += 1
        sent = time.time()
        status, _ = c.get(scim_path(a.agent, "get", user))
        c.close()
        now = time.time()
        if sent >= killed_at:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                print(json.dumps({"killed_at": killed_at, "at": now, "attempts": attempts,
                                  "statuses": statuses}))
                return
        time.sleep(0.02)
    print(json.dumps({"timeout": a.timeout, "killed_at": killed_at, "attempts": attempts,
                      "statuses": statuses}))
    sys.exit(1)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def hub_args(sp, agent=True):
        sp.add_argument("--url", required=True)
        sp.add_argument("--token-file", required=True)
        if agent:
            sp.add_argument("--agent", required=True)

    sp = sub.add_parser("ids")
    hub_args(sp)
    sp.add_argument("--limit", type=int, default=1000)
    sp.set_defaults(fn=cmd_ids)

    for name, fn in (("seq", cmd_seq), ("load", cmd_load)):
        sp = sub.add_parser(name)
        hub_args(sp)
        sp.add_argument("--ids", required=True)
        sp.add_argument("--mode", choices=["get", "filter", "hub"], default="get")
        sp.add_argument("--n", type=int, default=300)
        sp.add_argument("--concurrency", type=int, default=1)
        sp.add_argument("--seconds", type=float, default=15.0)
        sp.add_argument("--seed", type=int, default=7)
        sp.set_defaults(fn=fn)

    sp = sub.add_parser("hub")
    hub_args(sp, agent=False)
    sp.add_argument("--n", type=int, default=300)
    sp.set_defaults(fn=cmd_hub)

    sp = sub.add_parser("ldap")
    sp.add_argument("--ids", required=True)
    sp.add_argument("--mode", choices=["get", "filter"], default="get")
    sp.add_argument("--ldap-url", required=True)
    sp.add_argument("--bind-dn", required=True)
    sp.add_argument("--pw-file", required=True)
    sp.add_argument("--base", required=True)
    sp.add_argument("--n", type=int, default=300)
    sp.add_argument("--seed", type=int, default=7)
    sp.set_defaults(fn=cmd_ldap)

    sp = sub.add_parser("wait-agent")
    hub_args(sp)
    sp.add_argument("--state", default="")
    sp.add_argument("--timeout", type=float, default=120.0)
    sp.set_defaults(fn=cmd_wait_agent)

    sp = sub.add_parser("wait-ok")
    hub_args(sp)
    sp.add_argument("--ids", required=True)
    sp.add_argument("--killed-file", required=True)
    sp.add_argument("--timeout", type=float, default=60.0)
    sp.set_defaults(fn=cmd_wait_ok)

    a = p.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main(sys.argv[1:])
