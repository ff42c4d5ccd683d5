#!/usr/bin/env python3
"""Drives one running idrelay-hub as an operator and as agent a1 (no real agent): the
stored path of the hub, for scripts/bench-hub-store.sh.

  hub-store.py --port P --operator-token-file F --agent-token-file F --n N [--clients C]

1. queue: N commands (`provision`) over C connections, each request timed (the hub
   answers 202 once the command is stored);
2. drain: as agent a1, poll (batches of up to 100) and answer each batch in one
   `responses` post until nothing is left; time per round trip (poll + answers);
3. heartbeats: N/10 heartbeats, sequential, each timed.
Prints one JSON object: per phase n, p50/p99/max ms, per second; and ids delivered twice.
"""

import argparse
import http.client
import json
import sys
import threading
import time


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(lat, elapsed):
    return {
        "n": len(lat),
        "p50_ms": round(pct(lat, 50) * 1000, 2) if lat else None,
        "p99_ms": round(pct(lat, 99) * 1000, 2) if lat else None,
        "max_ms": round(max(lat) * 1000, 2) if lat else None,
        "per_s": round(len(lat) / elapsed, 1) if elapsed > 0 else None,
    }


class Client:
    def __init__(self, port, token, agent=None):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.h = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        if agent:
            self.h.update({"Idrelay-Protocol": "1", "Idrelay-Agent": agent, "Idrelay-Instance": "bench-1"})

    def post(self, path, body):
        self.c.request("POST", path, body=json.dumps(body), headers=self.h)
        r = self.c.getresponse()
        data = r.read()
        return r.status, data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--operator-token-file", required=True)
    ap.add_argument("--agent-token-file", required=True)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=4)
    a = ap.parse_args()
    op = open(a.operator_token_file).read().strip()
    ag = open(a.agent_token_file).read().strip()

    # 1. queue
    lat, lock, errors = [], threading.Lock(), []
    per = a.n // a.clients

    def queue(k):
        c = Client(a.port, op)
        mine = []
        for i in range(per):
            t = time.perf_counter()
            s, body = c.post("/v1/agents/a1/commands", {"command": "provision", "target": "bench-%d-%d" % (k, i)})
            mine.append(time.perf_counter() - t)
            if s != 202:
                errors.append((s, body[:200]))
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=queue, args=(k,)) for k in range(a.clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    queued = summary(lat, time.perf_counter() - t0)
    if errors:
        print(json.dumps({"error": "queue", "first": str(errors[0]), "count": len(errors)}))
        sys.exit(1)

    # 2. drain
    agent = Client(a.port, ag, "a1")
    seen, twice, rt = set(), 0, []
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        s, body = agent.post("/v1/agents/a1/poll", {"wait_secs": 1})
        if s == 204:
            break
        reqs = json.loads(body)["requests"]
        for e in reqs:
            if e["id"] in seen:
                twice += 1
            seen.add(e["id"])
        s, _ = agent.post("/v1/agents/a1/responses", {"responses": [{"id": e["id"], "status": 202, "body": {"accepted": "provision"}} for e in reqs]})
        if s != 204:
            print(json.dumps({"error": "responses %d" % s}))
            sys.exit(1)
        rt.append(time.perf_counter() - t)
    drain_s = time.perf_counter() - t0 - 1.0  # the last, empty poll waits 1 s
    drained = summary(rt, drain_s)
    drained["delivered"] = len(seen)
    drained["delivered_twice"] = twice
    drained["commands_per_s"] = round(len(seen) / drain_s, 1) if drain_s > 0 else None

    # 3. heartbeats
    hb = []
    t0 = time.perf_counter()
    for _ in range(max(1, a.n // 10)):
        t = time.perf_counter()
        s, _ = agent.post("/v1/agents/a1/heartbeat", {"version": "bench", "group": "g", "uptime_secs": 1})
        hb.append(time.perf_counter() - t)
        if s != 200:
            print(json.dumps({"error": "heartbeat %d" % s}))
            sys.exit(1)
    beats = summary(hb, time.perf_counter() - t0)
    print(json.dumps({"queue": queued, "drain": drained, "heartbeat": beats}))


if __name__ == "__main__":
    main()
