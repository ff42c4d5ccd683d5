#!/usr/bin/env python3
"""Change-latency benchmark of `idrelay run` (python3 stdlib only; driven by bench-latency.sh).

For each directory given with --target, in turn, in one process and on one clock
(time.monotonic):
  1. an OU of its own with K users (title "t0") is added with ldapadd;
  2. `idrelay run` starts with scim.url pointing at a timestamping reverse proxy (this
     process, 127.0.0.1 only) in front of scim2-server; the benchmark waits for the
     agent's first full pass (log line "... objects in step ...");
  3. the driver sets `title` of user n to the marker "lat-<tag><n>" with one ldapmodify per
     change, at a steady rate, and notes the time right after ldapmodify returns (t_w);
  4. the proxy notes the time the first 2xx answer to a PUT/PATCH/POST whose body holds
     that marker came back from scim2-server (t_s); latency = t_s - t_w;
  5. baseline, in the same run: right after each ldapmodify the driver itself PUTs the
     same change (title "base-<tag><n>") to a SCIM user of its own through the same proxy:
     t_s(base) - t_w is the floor of any pipeline on this machine (the write is in the
     directory; one SCIM write to the same server, through the same proxy, on the same clock);
  6. the agent is stopped (SIGTERM, by PID) and the OU is deleted.
Prints one table: directory | feed | K | rate | p50 | p95 | p99 | max | baseline p50/p99.
A target whose agent does not start the expected feed (or exits) is skipped with a message.
Exit status: 0 when every target ran, 1 when one failed or lost changes, 3 when one was skipped.
"""

import argparse
import http.client
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

MARK = re.compile(rb"\b(lat|base)-([a-z]+)(\d+)\b")
WRITE_METHODS = ("PUT", "PATCH", "POST")
ID_PATH = re.compile(r"/(Users|Groups)/[^/?]+")


def log(msg):
    print(f"[latency] {msg}", file=sys.stderr, flush=True)


class Marks:
    """Marker -> monotonic time of the first 2xx answer to a write carrying it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = {}
        self.requests = {}

    def note(self, method, path, status, body, t):
        key = " ".join((method, ID_PATH.sub(r"/\g<1>/ID", path), str(status)))
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            if 200 <= status < 300 and method in WRITE_METHODS:
                for m in MARK.finditer(body):
                    self.seen.setdefault(m.group(0).decode(), t)

    def get(self, marker):
        with self.lock:
            return self.seen.get(marker)

    def take_requests(self):
        with self.lock:
            r, self.requests = self.requests, {}
            return r


def make_proxy(listen_port, upstream_port, marks):
    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive towards the agent

        def log_message(self, *args):
            pass

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def forward(self):
            body = self.read_body()
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("host", "connection", "transfer-encoding", "content-length", "keep-alive")
            }
            if body or self.command in WRITE_METHODS:
                headers["Content-Length"] = str(len(body))
            try:
                up = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                up.request(self.command, self.path, body=body or None, headers=headers)
                resp = up.getresponse()
                data = resp.read()
                t = time.monotonic()
                status = resp.status
                rheaders = resp.getheaders()
                up.close()
            except OSError as e:
                msg = f"latency proxy: upstream failed: {e}".encode()
                self.send_response(502)
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            marks.note(self.command, self.path.split("?")[0], status, body, t)
            self.send_response_only(status)
            for k, v in rheaders:
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = forward

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", listen_port), Proxy)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="proxy", daemon=True).start()
    return srv


class Scim:
    """Tiny SCIM client (the benchmark's own user for the baseline)."""

    def __init__(self, port, token):
        self.port, self.token = port, token

    def call(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = json.dumps(body).encode() if body is not None else None
        h = {"Authorization": f"Bearer {self.token}", "Accept": "application/scim+json"}
        if data is not None:
            h["Content-Type"] = "application/scim+json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        text = r.read()
        c.close()
        if r.status >= 300:
            raise RuntimeError(f"SCIM {method} {path}: HTTP {r.status}: {text[:200]!r}")
        return json.loads(text) if text else None


def ldap_tool(tool, t, ldif, extra=(), timeout=120):
    """Runs ldapadd/ldapmodify/ldapdelete as the directory's admin; returns the process."""
    cmd = [tool, "-x", "-H", t["url"], "-D", t["admin_dn"], "-y", t["admin_pw_file"], *extra]
    return subprocess.run(cmd, input=ldif.encode(), capture_output=True, timeout=timeout)


def users_ldif(t, tag, k):
    out = [f"dn: {t['ou']}\nobjectClass: organizationalUnit\n"]
    for n in range(k):
        if t["kind"] == "ad":
            sam = f"lb{tag}{n:03d}"
            out.append(
                f"dn: CN={sam},{t['ou']}\nobjectClass: user\nsAMAccountName: {sam}\n"
                f"userPrincipalName: {sam}@{t['upn_suffix']}\ndisplayName: {sam}\ntitle: t0\n"
            )
        else:
            uid = f"lb{tag}{n:03d}"
            out.append(
                f"dn: uid={uid},{t['ou']}\nobjectClass: inetOrgPerson\nuid: {uid}\n"
                f"cn: {uid}\nsn: {uid}\ntitle: t0\n"
            )
    return "\n".join(out)


def user_dn(t, tag, n):
    rdn = "CN" if t["kind"] == "ad" else "uid"
    return f"{rdn}=lb{tag}{n:03d},{t['ou']}"


def write_config(t, args, state, path):
    include = json.dumps(t["ou"])
    feed = t.get("config_feed", t["feed"])
    text = f"""# written by scripts/bench-latency.py
[agent]
id = "latency-{t['name']}"
state_dir = {json.dumps(state)}
[directory]
url = {json.dumps(t['url'])}
bind_dn = {json.dumps(t['bind_dn'])}
password_file = {json.dumps(t['bind_pw_file'])}
base_dn = {json.dumps(t['base'])}
[scope]
include = [{include}]
[scim]
url = "http://127.0.0.1:{args.proxy_port}/v2"
token_file = {json.dumps(args.token_file)}
timeout_secs = 30
[sync]
feed = "{feed}"
poll_interval_secs = {args.poll_interval}
"""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)


def pct(xs, p):
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, int(-(-p * len(xs) // 100)) - 1))
    return xs[k]


class Skip(Exception):
    pass


class Agent:
    def __init__(self, args, cfg, logpath, pidfile):
        self.logpath = logpath
        self.pidfile = pidfile
        cmd = [args.bin]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        cmd += ["--config", cfg, "--quiet", "run"]
        self.logf = open(logpath, "ab")
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf, env=env)
        with open(pidfile, "w") as f:
            f.write(f"{self.proc.pid}\n")

    def text(self):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tail(self, n=15):
        return "\n".join(self.text().splitlines()[-n:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.logf.close()
        try:
            os.unlink(self.pidfile)
        except OSError:
            pass


def wait_first_pass(agent, t, k, timeout):
    """Waits for the 'objects in step' line; returns the feed the agent logged."""
    deadline = time.monotonic() + timeout
    feed = None
    while time.monotonic() < deadline:
        text = agent.text()
        m = re.search(r"change feed: (\S+)", text)
        if m:
            feed = m.group(1)
            if feed != t["feed"]:
                raise Skip(f"the agent follows '{feed}', not '{t['feed']}'")
        m = re.search(r"(\d+) objects in step", text)
        if m:
            if int(m.group(1)) < k:
                raise Skip(f"first full pass brought only {m.group(1)} of {k} users in step")
            return feed or t["feed"]
        if agent.proc.poll() is not None:
            raise Skip(f"the agent exited with status {agent.proc.returncode} before its first full pass")
        time.sleep(0.2)
    raise Skip(f"no first full pass within {timeout} s")


def run_target(t, args, marks, scim, work):
    k, rate = args.changes, args.rate
    tag = t["tag"]
    row = {"name": t["label"], "feed": t["feed"], "k": k}
    log(f"[{t['name']}] adding {t['ou']} with {k} users")
    t0 = time.monotonic()
    r = ldap_tool("ldapadd", t, users_ldif(t, tag, k), timeout=300)
    if r.returncode != 0:
        raise Skip(f"ldapadd of the users failed (exit {r.returncode}): {r.stderr.decode(errors='replace')[-300:]}")
    log(f"[{t['name']}] added in {time.monotonic() - t0:.1f} s")
    agent = None
    base_id = None
    try:
        cfg = os.path.join(work, f"{t['name']}.toml")
        state = os.path.join(work, f"state-{t['name']}")
        os.makedirs(state, mode=0o700, exist_ok=True)
        write_config(t, args, state, cfg)
        log(f"[{t['name']}] starting idrelay run (feed {t['feed']}); waiting for its first full pass")
        t0 = time.monotonic()
        agent = Agent(args, cfg, os.path.join(work, f"agent-{t['name']}.log"), os.path.join(work, f"agent-{t['name']}.pid"))
        try:
            row["feed"] = wait_first_pass(agent, t, k, args.pass_timeout)
        except Skip as e:
            log(f"[{t['name']}] agent log tail:\n{agent.tail()}")
            last = [ln for ln in agent.text().splitlines() if ln.strip()]
            why = next((ln for ln in reversed(last) if re.search(r"error|not available|unsupported|refused", ln, re.I)), None)
            raise Skip(f"{e}" + (f" ({why.strip()[:160]})" if why else "")) from None
        log(f"[{t['name']}] first full pass done after {time.monotonic() - t0:.1f} s")
        base_id = scim.call("POST", "/v2/Users", {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": f"latency-baseline-{tag}", "title": "t0",
        })["id"]
        marks.take_requests()
        time.sleep(1.0)  # let the feed settle after the pass

        log(f"[{t['name']}] {k} changes at {rate}/s")
        writes, write_secs, failures = {}, [], 0
        start = time.monotonic()
        for n in range(k):
            slot = start + n / rate
            d = slot - time.monotonic()
            if d > 0:
                time.sleep(d)
            ldif = f"dn: {user_dn(t, tag, n)}\nchangetype: modify\nreplace: title\ntitle: lat-{tag}{n}\n"
            a = time.monotonic()
            r = ldap_tool("ldapmodify", t, ldif, timeout=30)
            tw = time.monotonic()
            if r.returncode != 0:
                failures += 1
                log(f"[{t['name']}] ldapmodify {n} failed: {r.stderr.decode(errors='replace').strip()[:200]}")
                continue
            writes[n] = tw
            write_secs.append(tw - a)
            try:
                scim.call("PUT", f"/v2/Users/{base_id}", {
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": f"latency-baseline-{tag}", "title": f"base-{tag}{n}",
                })
            except (OSError, RuntimeError) as e:
                log(f"[{t['name']}] baseline PUT {n} failed: {e}")
        end = time.monotonic()
        grace = args.poll_interval + 10 if t["feed"] != "syncrepl" else 10
        deadline = end + grace
        while time.monotonic() < deadline and any(marks.get(f"lat-{tag}{n}") is None for n in writes):
            time.sleep(0.1)
        with open(os.path.join(work, f"latencies-{t['name']}.csv"), "w") as f:
            f.write("n,write_s,ldapmodify_s,latency_s,baseline_s\n")
            for i, (n, tw) in enumerate(writes.items()):
                a, b = marks.get(f"lat-{tag}{n}"), marks.get(f"base-{tag}{n}")
                f.write(f"{n},{tw - start:.4f},{write_secs[i]:.4f},"
                        f"{'' if a is None else f'{a - tw:.4f}'},{'' if b is None else f'{b - tw:.4f}'}\n")
        lat = sorted(marks.get(f"lat-{tag}{n}") - tw for n, tw in writes.items() if marks.get(f"lat-{tag}{n}") is not None)
        base = sorted(marks.get(f"base-{tag}{n}") - tw for n, tw in writes.items() if marks.get(f"base-{tag}{n}") is not None)
        row.update(
            rate=(k - 1) / (end - start) if k > 1 and end > start else float(rate),
            lat=lat, base=base, lost=len(writes) - len(lat), failed=failures,
            write=sorted(write_secs), requests=marks.take_requests(),
        )
        if row["lost"]:
            log(f"[{t['name']}] {row['lost']} changes did not reach the endpoint within {grace} s; agent log tail:\n{agent.tail()}")
        return row
    finally:
        if agent is not None:
            agent.stop()
        if base_id is not None:
            try:
                scim.call("DELETE", f"/v2/Users/{base_id}")
            except (OSError, RuntimeError):
                pass
        r = ldap_tool("ldapdelete", t, "", extra=["-r", t["ou"]], timeout=300)
        if r.returncode != 0:
            log(f"[{t['name']}] WARNING: could not delete {t['ou']}: {r.stderr.decode(errors='replace').strip()[:200]}")
        else:
            log(f"[{t['name']}] deleted {t['ou']}")


def fmt_s(x):
    return f"{x:.3f}" if x == x else "-"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", required=True, help="the idrelay executable")
    p.add_argument("--work", required=True, help="directory for configs, state and logs")
    p.add_argument("--scim-port", type=int, required=True, help="scim2-server port (127.0.0.1)")
    p.add_argument("--proxy-port", type=int, required=True, help="the proxy's port (127.0.0.1)")
    p.add_argument("--token-file", required=True)
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--poll-interval", type=int, default=5)
    p.add_argument("--pass-timeout", type=int, default=120)
    p.add_argument("--target", action="append", default=[], help="JSON object describing one directory")
    args = p.parse_args()
    if args.changes < 1 or args.rate <= 0:
        p.error("--changes must be >= 1 and --rate > 0")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    with open(args.token_file) as f:
        token = f.read().strip()
    marks = Marks()
    proxy = make_proxy(args.proxy_port, args.scim_port, marks)
    scim = Scim(args.proxy_port, token)
    rows, skipped, rc = [], [], 0
    try:
        for spec in args.target:
            t = json.loads(spec)
            try:
                rows.append(run_target(t, args, marks, scim, args.work))
            except Skip as e:
                log(f"[{t['name']}] SKIPPED: {e}")
                skipped.append((t, str(e).splitlines()[0]))
    finally:
        proxy.shutdown()

    print()
    print(f"== idrelay run: directory write -> SCIM endpoint applied latency, seconds "
          f"({time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {os.cpu_count()} cores)")
    print("   latency  = time the proxy got scim2-server's 2xx for the agent's write carrying the marker"
          " - time ldapmodify returned")
    print("   baseline = the same, for a SCIM PUT of the same change sent by the benchmark itself right after"
          " ldapmodify returned (floor: one SCIM write, same server, same proxy, same clock)")
    print()
    hdr = f"{'directory':<10} | {'feed':<22} | {'K':>4} | {'rate':>6} | {'p50':>6} | {'p95':>6} | {'p99':>6} | {'max':>6} | baseline p50/p99"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        feed = r["feed"] + (f" (poll {args.poll_interval} s)" if r["feed"] != "syncrepl" else "")
        lat, base = r["lat"], r["base"]
        print(f"{r['name']:<10} | {feed:<22} | {r['k']:>4} | {r['rate']:>4.1f}/s | {fmt_s(pct(lat, 50)):>6} | "
              f"{fmt_s(pct(lat, 95)):>6} | {fmt_s(pct(lat, 99)):>6} | {fmt_s(lat[-1] if lat else float('nan')):>6} | "
              f"{fmt_s(pct(base, 50))} / {fmt_s(pct(base, 99))}")
    for t, why in skipped:
        print(f"{t['label']:<10} | {t['feed']:<22} | SKIPPED: {why}")
    print()
    for r in rows:
        w = r["write"]
        target = 3.0 if r["feed"] == "syncrepl" else args.poll_interval + 1.0
        p99 = pct(r["lat"], 99)
        verdict = "met" if p99 == p99 and p99 <= target and not r["lost"] else "NOT met"
        print(f"{r['name']}: {r['k']} changes, {r['lost']} not seen at the endpoint, {r['failed']} ldapmodify failures; "
              f"ldapmodify itself took p50 {fmt_s(pct(w, 50))} / p99 {fmt_s(pct(w, 99))} s; "
              f"target p99 <= {target:.0f} s: {verdict}")
        reqs = ", ".join(f"{k}: {v}" for k, v in sorted(r["requests"].items()))
        print(f"  requests through the proxy during the changes (agent + baseline): {reqs}")
        if r["lost"] or r["failed"]:
            rc = max(rc, 1)
    if skipped:
        rc = max(rc, 3) if rc == 0 else rc
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        sys.exit(130)
