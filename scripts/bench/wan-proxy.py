#!/usr/bin/env python3
"""A loopback TCP proxy that makes a link look like a WAN (the WAN benchmark's link).

  wan-proxy.py --listen 8098 --target 8097 --rtt-ms 80 --mbit 20

Listens on 127.0.0.1:LISTEN only and forwards every connection to 127.0.0.1:TARGET, adding:
  - latency: each byte arrives rtt/2 after it was sent, in each direction; a new connection
    pays one more round trip (the TCP handshake): the server is connected to, and the
    client's bytes start on their way, one round trip after the client connected;
  - a bandwidth cap: each direction is one link of MBIT Mbit/s shared by all connections
    (bytes queue behind the bytes sent before them, as on a real access line).
Delivery keeps the order of each connection's bytes. The sender is never slowed by the
proxy's queue (no TCP window is emulated): a link of 80 ms and 20 Mbit/s holds 200 KB in
flight, more than any single request of the benchmark.
On SIGTERM or SIGINT it prints one JSON line on stdout and exits 0:
  {"connections": N, "bytes_up": N, "bytes_down": N}
Standard library only.
"""
import argparse
import asyncio
import json
import signal
import sys

CHUNK = 16384


class Link:
    """One direction of the emulated line: a serialising queue plus a fixed delay."""

    def __init__(self, bits_per_s, delay_s):
        self.rate = bits_per_s
        self.delay = delay_s
        self.free_at = 0.0
        self.bytes = 0

    def arrival(self, n, now):
        """When n bytes handed to the line now arrive at the far end."""
        start = max(now, self.free_at)
        self.free_at = start + (n * 8 / self.rate if self.rate > 0 else 0.0)
        self.bytes += n
        return self.free_at + self.delay


async def pump(reader, writer, link):
    """Copy reader to writer through link."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            at, data = await queue.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            now = loop.time()
            if not data:
                await queue.put((max(now, link.free_at) + link.delay, None))
                break
            await queue.put((link.arrival(len(data), now), data))
        await sender
    except (ConnectionError, OSError):
        sender.cancel()


async def main(a):
    half = a.rtt_ms / 2000.0
    up = Link(a.mbit * 1e6, half)
    down = Link(a.mbit * 1e6, half)
    stats = {"connections": 0}

    async def handle(c_reader, c_writer):
        stats["connections"] += 1
        # The handshake: the client's first bytes reach the server one round trip after
        # its connect (they travel with its last handshake packet), and the server sees
        # the connection only then, not while they are on the way.
        await asyncio.sleep(2 * half)
        try:
            s_reader, s_writer = await asyncio.open_connection("127.0.0.1", a.target)
        except OSError:
            c_writer.close()
            return
        try:
            await asyncio.gather(
                pump(c_reader, s_writer, up),
                pump(s_reader, c_writer, down),
            )
        finally:
            for w in (s_writer, c_writer):
                w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"wan-proxy: 127.0.0.1:{a.listen} -> 127.0.0.1:{a.target}, rtt {a.rtt_ms} ms, "
          f"{a.mbit} Mbit/s each way", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    print(json.dumps({"connections": stats["connections"], "bytes_up": up.bytes,
                      "bytes_down": down.bytes}), flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1 to listen on")
    p.add_argument("--target", type=int, required=True, help="port on 127.0.0.1 to forward to")
    p.add_argument("--rtt-ms", type=float, default=80.0, help="round-trip time added (ms)")
    p.add_argument("--mbit", type=float, default=20.0, help="bandwidth each way (Mbit/s; 0 = no cap)")
    a = p.parse_args(argv)
    if a.rtt_ms < 0 or a.mbit < 0:
        p.error("--rtt-ms and --mbit must be >= 0")
    return a


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
