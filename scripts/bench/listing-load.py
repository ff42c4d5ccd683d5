#!/usr/bin/env python3
"""The operator listing at fleet scale, for scripts/bench-listing.sh (python3 stdlib only).

  listing-load.py setup --url HUB --agents agents.jsonl [--concurrency 400]
  listing-load.py time --url HUB --operator-token-file F --reps R PATH [PATH ...]

`setup`: every agent of agents.jsonl ({"id", "group", "token", "state"} per line) sends
one heartbeat (the example of docs/protocol.md, in its group, with its `state`), then one
long-poll of `wait_secs` 1, so the hub knows it as alive and polling. Prints one JSON
object: agents, heartbeats and polls answered, errors, seconds.

`time`: for each PATH, GET it --reps times on one keep-alive connection with the operator
token, one after another, after one untimed warm-up; prints one JSON line per PATH:
status, body bytes, p50/p90/max ms (the whole answer read).
"""
import argparse
import asyncio
import http.client
import json
import sys
import time
import urllib.parse


def beat(agent):
    return json.dumps({
        "version": "0.1.0 (commit abc123, x86_64-unknown-linux-gnu)",
        "group": agent["group"], "instance": agent["id"] + "-i1", "uptime_secs": 3600,
        "state": agent["state"],
        "queue": {"depth": 0, "bytes": 4210, "oldest_age_secs": None, "resync_owed": None},
        "watermark_age_secs": 2,
        "feed": {"kind": "syncrepl", "connected": True, "last_event_age_secs": 2},
        "last_full_pass_age_secs": 7200,
        "counts": {"provisioned": 1200, "failed": 0, "held_deletes": 0, "parked": 0},
        "last_error": None,
        "endpoint": {"state": "ok", "last_error": None, "outage": None, "outages": 0},
        "role": "active",
    }, separators=(",", ":"))


async def post(host, port, agent, call, body):
    """One request on its own connection; the status (0 on a transport error)."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        data = body.encode()
        w.write((f"POST /v1/agents/{agent['id']}/{call} HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {agent['token']}\r\nIdrelay-Protocol: 1\r\n"
                 f"Idrelay-Instance: {agent['id']}-i1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
        await w.drain()
        head = await asyncio.wait_for(r.read(), 30)
        w.close()
        return int(head.split(b" ", 2)[1])
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return 0


async def setup(args):
    u = urllib.parse.urlsplit(args.url)
    agents = [json.loads(line) for line in open(args.agents)]
    sem = asyncio.Semaphore(args.concurrency)
    counts = {"agents": len(agents), "heartbeats": 0, "polls": 0, "errors": 0}

    async def one(a):
        async with sem:
            if await post(u.hostname, u.port, a, "heartbeat", beat(a)) == 200:
                counts["heartbeats"] += 1
            else:
                counts["errors"] += 1
            if await post(u.hostname, u.port, a, "poll", '{"wait_secs":1}') in (200, 204):
                counts["polls"] += 1
            else:
                counts["errors"] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(a) for a in agents))
    counts["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(counts))


def timing(args):
    u = urllib.parse.urlsplit(args.url)
    token = open(args.operator_token_file).read().strip()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    for path in args.paths:
        def get():
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        get()
        ms = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            status, body = get()
            ms.append((time.perf_counter() - t0) * 1000)
        ms.sort()
        print(json.dumps({"path": path, "status": status, "bytes": len(body),
                          "p50_ms": round(ms[len(ms) // 2], 2),
                          "p90_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.9))], 2),
                          "max_ms": round(ms[-1], 2)}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--url", required=True)
    s.add_argument("--agents", required=True)
    s.add_argument("--concurrency", type=int, default=400)
    t = sub.add_parser("time")
    t.add_argument("--url", required=True)
    t.add_argument("--operator-token-file", required=True)
    t.add_argument("--reps", type=int, default=20)
    t.add_argument("paths", nargs="+")
    args = p.parse_args()
    if args.mode == "setup":
        asyncio.run(setup(args))
    else:
        timing(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
