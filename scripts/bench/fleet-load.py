#!/usr/bin/env python3
"""Simulated agents for scripts/bench-fleet.sh (python3 standard library only, asyncio).

  fleet-load.py --url HUB[,HUB2...] --agents agents.jsonl --operator-token-file F
                [--count N] [--seconds S] [--ramp-secs R] [--rate C]
                [--heartbeat-secs 60] [--wait-secs 30]
                [--kill-pid PID --kill-after-secs K]

Each simulated agent is a light client, not a real agent: one keep-alive HTTP/1.1
connection to the hub on which it heartbeats (at once, then every --heartbeat-secs, with
jitter) and long-polls (`wait_secs` --wait-secs) in turn, as `idrelay run` with [relay]
does; a request it receives is answered at once (`202 {"accepted": ...}`) on the same
connection. Its retries are paced exactly as the agent's (see `agent` and `Backoff`;
--first-retry-ms is the agent's RECONNECT_FIRST, 250 ms; 0 gives the rule before it). The first --count agents of agents.jsonl ({"id", "token"} per line) connect,
spread over --ramp-secs. Once all are polling, an operator sends --rate commands a second
(`resync`, to agents drawn at random) for --seconds, over 4 keep-alive connections; then
the run waits up to 2 x --wait-secs for the last deliveries.

With several hub URLs (replicas on one database) agent i connects to URL i mod n and the
operator's connections take the URLs in turn; a client whose hub stops answering
(connection refused or reset) moves to the next URL, as a load balancer would send it.
--kill-pid sends SIGKILL to that process (a replica) --kill-after-secs into the command
phase, its RSS read just before.

Delivery latency is measured on one clock: from the moment the operator starts sending
the command to the moment the agent's poll answer carrying it is read. Prints one JSON
object: agents up, polls, heartbeats, commands queued/delivered/lost/duplicated (a
request handed out again after the hub acknowledged the agent's answer (`204`) is a
duplicate; one handed out again whose answer was never acknowledged, because the replica
that took it died, is a redelivery, at-least-once as designed, counted apart), latency
p50/p95/p99/max in ms, and errors by kind. Every wait has a timeout; nothing runs longer
than ramp + seconds + 2 x wait + 60 s.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
import urllib.parse

PROTO_HEADERS = "Idrelay-Protocol: 1\r\n"


def percentile(sorted_ms, p):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_ms:
        return None
    k = max(0, min(len(sorted_ms) - 1, int(round(p / 100.0 * len(sorted_ms) + 0.5)) - 1))
    return round(sorted_ms[k], 2)


class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length bodies only, as the hub sends)."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self, method, path, headers, body, timeout):
        if self.writer is None:
            await asyncio.wait_for(self.open(), 10)
        data = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        try:
            return await asyncio.wait_for(self._response(), timeout)
        except BaseException:
            self.close()
            raise

    async def _response(self):
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed by the hub")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body


class Backoff:
    """The agent's poll-loop backoff (src/net/backoff.rs, `Backoff` as src/relay/link.rs's
    dispatch loop makes it), mirrored: full jitter, the n-th retry drawn from
    [0, min(cap, base * 2^n)]; with `first` > 0 the first retry after a working link is
    drawn from [0, first] and the ones after it as before (base * 2^(n-1)). Reset after a
    poll that returned work or stayed up half a wait; a server's Retry-After is honoured."""

    def __init__(self, base, cap, first):
        self.base, self.cap, self.first, self.failures = base, cap, first, 0

    def next_delay(self):
        n = self.failures
        self.failures += 1
        if self.first > 0:
            if n == 0:
                return random.uniform(0.0, self.first)
            n -= 1
        return random.uniform(0.0, min(self.cap, self.base * 2 ** min(n, 31)))

    def reset(self):
        self.failures = 0


class Stats:
    def __init__(self):
        self.up = set()
        self.polls = 0
        self.heartbeats = 0
        self.sent = {}  # request id -> send start (monotonic)
        self.pending_sends = 0
        self.received = {}  # request id -> first receive time
        self.acked = set()  # request ids whose answer the hub acknowledged (204)
        self.duplicates = 0
        self.redelivered = 0
        self.moved = 0  # clients that moved to another hub URL
        self.killed_rss_kib = None
        self.killed_at = None  # monotonic time of the SIGKILL
        self.errors = {}
        self.target = {}  # request id -> agent id
        self.down_since = {}  # agent id -> when its link broke (while it is down)
        self.was_down = set()  # request ids queued while their agent's link was down
        self.reconnects = []  # (broke at, a poll went out again at) per broken link

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def agent(a, hubs, first, args, stats, start_at, stop):
    """One simulated agent; it paces its retries as `idrelay run` with [relay] does
    (src/relay/link.rs): a failed poll waits its `Backoff` (1 s to 60 s, the first retry
    after a working link within --first-retry-ms), a failed heartbeat waits 1 s doubling to
    3 s, jittered, and the first poll that gets through after a failure sends a heartbeat
    at once ("the link is back"). Unlike the agent it sends its heartbeat and poll in turn
    on one connection (the agent's run concurrently): a heartbeat due while a poll is held
    waits for the poll's end (at most --wait-secs)."""
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    at = first
    conn = Conn(*hubs[at])
    quoted = urllib.parse.quote(a["id"], safe="")
    headers = (
        f"Authorization: Bearer {a['token']}\r\n{PROTO_HEADERS}"
        f"Idrelay-Agent: {a['id']}\r\nIdrelay-Instance: sim-{a['id']}\r\n"
    )
    backoff = Backoff(1.0, 60.0, args.first_retry_ms / 1000.0)
    beat_retry = Backoff(1.0, 3.0, 0.0)
    down = False
    beat_due = 0.0
    while not stop.is_set():
        try:
            now = time.monotonic()
            if now >= beat_due:
                body = {
                    "version": "fleet-load",
                    "group": a["id"],
                    "instance": f"sim-{a['id']}",
                    "uptime_secs": 1,
                    "state": "following",
                    "queue": {"depth": 0, "bytes": 0, "oldest_age_secs": None, "resync_owed": None},
                    "watermark_age_secs": 1,
                    "last_full_pass_age_secs": 1,
                    "counts": {"provisioned": 0, "failed": 0, "held_deletes": 0},
                    "last_error": None,
                    "role": "active",
                }
                st, _ = await conn.request(
                    "POST", f"/v1/agents/{quoted}/heartbeat", headers, body, 30
                )
                if st != 200:
                    stats.error(f"heartbeat {st}")
                    beat_due = now + beat_retry.next_delay()
                else:
                    stats.heartbeats += 1
                    beat_retry.reset()
                    beat_due = now + args.heartbeat_secs * random.uniform(0.9, 1.0)
            stats.up.add(a["id"])
            if conn.writer is None:
                await asyncio.wait_for(conn.open(), 10)
            broke = stats.down_since.pop(a["id"], None)
            if broke is not None:
                stats.reconnects.append((broke, time.monotonic()))
            started = time.monotonic()
            st, raw = await conn.request(
                "POST",
                f"/v1/agents/{quoted}/poll",
                headers,
                {"wait_secs": args.wait_secs},
                args.wait_secs + 15,
            )
            stats.polls += 1
            if st not in (200, 204):
                stats.error(f"poll {st}")
                down = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if down:
                down = False
                beat_due = 0.0  # the link is back: a heartbeat at once
            if st == 204:
                if time.monotonic() - started >= args.wait_secs / 2:
                    backoff.reset()
                continue
            backoff.reset()
            got = time.monotonic()
            answers = []
            for env in json.loads(raw).get("requests", []):
                rid = env.get("id")
                if rid in stats.acked:
                    stats.duplicates += 1
                elif rid in stats.received:
                    stats.redelivered += 1
                else:
                    stats.received[rid] = got
                answers.append({"id": rid, "status": 202, "body": {"accepted": env.get("command")}})
            if answers:
                st, _ = await conn.request(
                    "POST", f"/v1/agents/{quoted}/responses", headers, {"responses": answers}, 30
                )
                if st != 204:
                    stats.error(f"responses {st}")
                else:
                    stats.acked.update(x["id"] for x in answers)
        except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            stats.error(type(e).__name__)
            conn.close()
            stats.down_since.setdefault(a["id"], time.monotonic())
            down = True
            if len(hubs) > 1 and isinstance(e, (OSError, ConnectionError, asyncio.IncompleteReadError)):
                # The hub went away: the next replica, as a load balancer would.
                at = (at + 1) % len(hubs)
                conn = Conn(*hubs[at])
                stats.moved += 1
            await asyncio.sleep(backoff.next_delay())
    conn.close()


async def operator(hubs, token, ids, args, stats, deadline, worker, workers):
    at = worker % len(hubs)
    conn = Conn(*hubs[at])
    headers = f"Authorization: Bearer {token}\r\n"
    interval = workers / max(args.rate, 0.001)
    next_at = time.monotonic() + worker * interval / workers
    while time.monotonic() < deadline:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at += interval
        target = random.choice(ids)
        quoted = urllib.parse.quote(target, safe="")
        t0 = time.monotonic()
        stats.pending_sends += 1
        try:
            st, raw = await conn.request(
                "POST", f"/v1/agents/{quoted}/commands", headers, {"command": "resync"}, 30
            )
            if st == 202:
                rid = json.loads(raw)["id"]
                stats.sent[rid] = t0
                stats.target[rid] = target
                if target in stats.down_since:
                    stats.was_down.add(rid)
            else:
                stats.error(f"command {st}")
        except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            stats.error(f"command {type(e).__name__}")
            if len(hubs) > 1:
                at = (at + 1) % len(hubs)
                conn = Conn(*hubs[at])
        finally:
            stats.pending_sends -= 1
    conn.close()


async def kill_later(pid, after, stats):
    """SIGKILL to `pid` `after` seconds from now; its RSS (KiB) read just before."""
    await asyncio.sleep(after)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    stats.killed_rss_kib = int(line.split()[1])
        os.kill(pid, signal.SIGKILL)
        stats.killed_at = time.monotonic()
    except OSError as e:
        stats.error(f"kill {type(e).__name__}")


def failover(stats, lat):
    """What the run says about links that broke: how long until the poll went out again
    (ms, p50/p99/max), and the delivery of commands queued while their agent's link was down
    against the others'. Empty when no link broke."""
    if not stats.reconnects:
        return {}
    back = sorted((b - a) * 1000.0 for a, b in stats.reconnects)
    down = sorted(
        (stats.received[r] - stats.sent[r]) * 1000.0
        for r in stats.was_down
        if r in stats.received
    )
    return {
        "links_broken": len(back),
        "reconnect_p50_ms": percentile(back, 50),
        "reconnect_p99_ms": percentile(back, 99),
        "reconnect_max_ms": round(back[-1], 2),
        "queued_while_down": len(stats.was_down),
        "queued_while_down_p50_ms": percentile(down, 50),
        "queued_while_down_max_ms": round(down[-1], 2) if down else None,
        "over_1s": sum(1 for x in lat if x > 1000.0),
    }


async def main_async(args):
    hubs = []
    for u in args.url.split(","):
        url = urllib.parse.urlsplit(u)
        hubs.append((url.hostname, url.port))
    with open(args.agents) as f:
        agents = [json.loads(line) for line in f if line.strip()][: args.count]
    with open(args.operator_token_file) as f:
        op_token = f.read().strip()
    stats = Stats()
    stop = asyncio.Event()
    t0 = time.monotonic()
    step = args.ramp_secs / max(len(agents), 1)
    tasks = [
        asyncio.create_task(agent(a, hubs, i % len(hubs), args, stats, t0 + i * step, stop))
        for i, a in enumerate(agents)
    ]
    # Wait until every agent is polling (or the ramp plus 60 s passed).
    ramp_deadline = t0 + args.ramp_secs + 60
    while len(stats.up) < len(agents) and time.monotonic() < ramp_deadline:
        await asyncio.sleep(0.5)
    ramp_took = time.monotonic() - t0
    ids = [a["id"] for a in agents]
    deadline = time.monotonic() + args.seconds
    workers = 4
    ops = [
        asyncio.create_task(operator(hubs, op_token, ids, args, stats, deadline, w, workers))
        for w in range(workers)
    ]
    if args.kill_pid:
        ops.append(asyncio.create_task(kill_later(args.kill_pid, args.kill_after_secs, stats)))
    await asyncio.gather(*ops)
    # The last deliveries: every queued request should reach its agent within a poll.
    settle = time.monotonic() + 2 * args.wait_secs
    while time.monotonic() < settle and any(r not in stats.received for r in stats.sent):
        await asyncio.sleep(0.2)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(
        (stats.received[r] - t) * 1000.0 for r, t in stats.sent.items() if r in stats.received
    )
    lost = sum(1 for r in stats.sent if r not in stats.received)
    out = {
        "agents": len(agents),
        "agents_up": len(stats.up),
        "ramp_secs": round(ramp_took, 1),
        "polls": stats.polls,
        "heartbeats": stats.heartbeats,
        "commands_queued": len(stats.sent),
        "delivered": len(lat),
        "lost": lost,
        "duplicates": stats.duplicates,
        "redelivered": stats.redelivered,
        "moved": stats.moved,
        "killed_rss_kib": stats.killed_rss_kib,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": round(lat[-1], 2) if lat else None,
        "errors": stats.errors,
    }
    out.update(failover(stats, lat))
    if args.trace:
        kill = stats.killed_at
        with open(args.trace, "w") as f:
            for r, t in sorted(stats.sent.items(), key=lambda x: x[1]):
                got = stats.received.get(r)
                f.write(json.dumps({
                    "id": r,
                    "agent": stats.target.get(r),
                    "sent_s": round(t - (kill if kill is not None else t0), 3),
                    "ms": round((got - t) * 1000.0, 1) if got is not None else None,
                    "queued_while_down": r in stats.was_down,
                }) + "\n")
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--agents", required=True)
    p.add_argument("--operator-token-file", required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--ramp-secs", type=float, default=30)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--heartbeat-secs", type=float, default=60)
    p.add_argument("--wait-secs", type=int, default=30)
    p.add_argument("--kill-pid", type=int, default=0)
    p.add_argument("--kill-after-secs", type=float, default=0)
    p.add_argument(
        "--first-retry-ms",
        type=float,
        default=250,
        help="the first poll retry after a working link is drawn from [0, this] (0: the old rule)",
    )
    p.add_argument("--trace", help="write one JSON line per command (sent relative to the kill, ms)")
    args = p.parse_args()
    limit = args.ramp_secs + args.seconds + 2 * args.wait_secs + 60 + 60
    try:
        asyncio.run(asyncio.wait_for(main_async(args), limit))
    except asyncio.TimeoutError:
        print(json.dumps({"error": f"timed out after {limit:.0f} s"}))
        sys.exit(1)


if __name__ == "__main__":
    main()
