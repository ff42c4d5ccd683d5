#!/usr/bin/env python3
"""Replay SCIM writes at a fixed concurrency and report requests/second (the benchmark's
load generator: the raw-HTTP baseline the agent is compared with).

  bench-load.py --base http://127.0.0.1:8090/v2 --token TOKEN --concurrency 8 writes.jsonl
  idrelay --config c.toml sync --once --dry-run --json | bench-load.py --base ... --token ... -

Input: one JSON object per line, as `idrelay sync --once --dry-run --json` prints them:
  {"method": "POST", "path": "/Users", "externalId": "...", "body": {...}}
(path relative to the SCIM base URL). Other lines are ignored; lines that start with "{"
but are not such objects are counted as "skipped".
With --lookups, each write that carries an externalId is preceded by the lookup the agent
makes on a first pass: GET <collection>?filter=externalId eq "<externalId>".
With --bulk N, consecutive POSTs go as SCIM Bulk requests (POST /Bulk, RFC 7644 §3.7) of up
to N operations each (the Bulk load generator); an operation the answer reports with a
non-2xx status counts as an error.

Workers take the requests in input order from one shared cursor. Each worker keeps its
connection open (HTTP/1.1 keep-alive) for as long as the server allows, and reconnects
when the server closes it (scim2-server speaks HTTP/1.0 and closes after each response).
Standard library only. Prints a human summary on stderr and one JSON object on stdout:
  {"requests": N, "writes": N, "lookups": N, "skipped": N, "seconds": S, "rps": R, "errors": N,
   "status": {"201": N, ...}, "p50_ms": ..., "p99_ms": ..., "connections": N}
Exits 1 when any request failed (non-2xx or a transport error), 2 on bad input.
"""
import argparse
import http.client
import json
import ssl
import sys
import threading
import time
import urllib.parse


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("file", help="JSON lines file, or - for stdin")
    p.add_argument("--base", required=True, help="SCIM base URL, e.g. http://127.0.0.1:8090/v2")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--token-file", default=None, help="file holding the bearer token")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--lookups", action="store_true",
                   help="GET ?filter=externalId eq ... before each write (the agent's first-pass mix)")
    p.add_argument("--bulk", type=int, default=0, metavar="N",
                   help="send POSTs as /Bulk requests of up to N operations")
    p.add_argument("--cacert", default=None, help="CA file for https")
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)
    if a.token_file:
        with open(a.token_file, encoding="utf-8") as f:
            a.token = f.read().strip()
    if a.concurrency < 1:
        p.error("--concurrency must be >= 1")
    return a


def load_requests(path, lookups):
    """(method, relative path, body bytes or None) in send order."""
    f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    out, writes, looks, skipped = [], 0, 0, 0
    with f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                w = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(w, dict) or "method" not in w or "path" not in w:
                skipped += 1
                continue
            method, rel = str(w["method"]).upper(), str(w["path"])
            ext = w.get("externalId")
            if lookups and method == "POST" and ext:
                filt = urllib.parse.quote(f'externalId eq "{ext}"', safe="")
                out.append(("GET", f"{rel.rstrip('/')}?filter={filt}", None))
                looks += 1
            body = w.get("body")
            out.append((method, rel, None if body is None else
                        json.dumps(body, separators=(",", ":")).encode()))
            writes += 1
    return out, writes, looks, skipped


def pack_bulk(requests, n):
    """Consecutive POSTs as BulkRequests of up to n operations; other requests as they are."""
    out, ops = [], []

    def flush():
        if ops:
            body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                    "Operations": list(ops)}
            out.append(("POST", "/Bulk", json.dumps(body, separators=(",", ":")).encode()))
            ops.clear()

    for method, rel, body in requests:
        if method == "POST" and body is not None:
            ops.append({"method": "POST", "path": rel, "bulkId": f"b{len(out)}-{len(ops)}",
                        "data": json.loads(body)})
            if len(ops) >= n:
                flush()
        else:
            flush()
            out.append((method, rel, body))
    flush()
    return out


class Runner:
    def __init__(self, a, requests):
        u = urllib.parse.urlsplit(a.base)
        if u.scheme not in ("http", "https"):
            raise SystemExit(f"--base must be an http or https URL, not {a.base!r}")
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname, u.port or (443 if self.https else 80)
        self.prefix = u.path.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=a.cacert) if self.https else None
        self.timeout = a.timeout
        self.headers = {"Content-Type": "application/scim+json", "Accept": "application/scim+json"}
        if a.token:
            self.headers["Authorization"] = f"Bearer {a.token}"
        self.requests = requests
        self.lock = threading.Lock()
        self.cursor = 0
        self.latencies = []
        self.status = {}
        self.errors = []
        self.connections = 0

    def connect(self):
        with self.lock:
            self.connections += 1
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def worker(self):
        conn, lat, status, errors = None, [], {}, []
        while True:
            with self.lock:
                i = self.cursor
                self.cursor += 1
            if i >= len(self.requests):
                break
            method, rel, body = self.requests[i]
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = self.connect()
                conn.request(method, self.prefix + rel, body, self.headers)
                r = conn.getresponse()
                data = r.read()
                status[r.status] = status.get(r.status, 0) + 1
                if not 200 <= r.status < 300:
                    errors.append(f"{method} {rel} -> {r.status} {data[:200]!r}")
                elif rel == "/Bulk":
                    for op in json.loads(data).get("Operations", []):
                        st = str(op.get("status", ""))
                        if not st.startswith("2"):
                            errors.append(f"Bulk {op.get('method')} {op.get('bulkId')} -> {st}")
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{method} {rel} -> {e!r}")
                status["error"] = status.get("error", 0) + 1
                if conn is not None:
                    conn.close()
                conn = None
            lat.append(time.perf_counter() - t0)
        if conn is not None:
            conn.close()
        with self.lock:
            self.latencies.extend(lat)
            for k, v in status.items():
                self.status[k] = self.status.get(k, 0) + v
            self.errors.extend(errors)

    def run(self, concurrency):
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0


def main(argv):
    a = parse_args(argv)
    try:
        requests, writes, looks, skipped = load_requests(a.file, a.lookups)
    except OSError as e:
        print(f"bench-load: cannot read {a.file}: {e}", file=sys.stderr)
        return 2
    if not requests:
        print(f"bench-load: no requests in {a.file}", file=sys.stderr)
        return 2
    if a.bulk > 0:
        requests = pack_bulk(requests, a.bulk)
    runner = Runner(a, requests)
    seconds = runner.run(a.concurrency)
    lat = sorted(runner.latencies)

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else 0.0

    n = len(requests)
    result = {
        "requests": n, "writes": writes, "lookups": looks, "skipped": skipped,
        "concurrency": a.concurrency,
        "seconds": round(seconds, 3), "rps": round(n / seconds, 1) if seconds else 0.0,
        "errors": len(runner.errors), "status": {str(k): v for k, v in runner.status.items()},
        "p50_ms": pct(0.5), "p99_ms": pct(0.99), "connections": runner.connections,
    }
    print(f"bench-load: {n} requests ({writes} writes, {looks} lookups) at concurrency "
          f"{a.concurrency} in {seconds:.2f} s = {result['rps']} req/s, p50 {result['p50_ms']} ms, "
          f"p99 {result['p99_ms']} ms, {runner.connections} connections, "
          f"{len(runner.errors)} errors", file=sys.stderr)
    if skipped:
        print(f"bench-load: WARNING: skipped {skipped} lines starting with '{{' that are not "
              "write objects", file=sys.stderr)
    for e in runner.errors[:5]:
        print(f"bench-load: error: {e}", file=sys.stderr)
    print(json.dumps(result))
    return 1 if runner.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
