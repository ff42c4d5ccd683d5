#!/usr/bin/env python3
"""Helpers of scripts/bench-biggroup.sh (python3 standard library only).

  biggroup.py patch --base URL --token-file F --requests N [--chunk 100] [--id-len 32]
      The load generator: POSTs one group (no members) to BASE/Groups, then sends N PATCH
      requests to BASE/Groups/ID one after the other (concurrency 1) over one keep-alive
      connection (http.client), each adding CHUNK members {"value": <ID-LEN hex chars>},
      the body shape idrelay sends. Bodies are built before the clock starts. Prints JSON:
      {"requests", "seconds", "rps", "errors", "body_bytes"}.

  biggroup.py timeline --log ACCESS_LOG --start EPOCH --end EPOCH
      Reads the benchmark nginx's access log ("MSEC METHOD URI STATUS" per line) of one
      agent run and prints JSON: requests per "METHOD /v2/Kind[/ID] STATUS", the PATCH
      requests to /Groups/ID, and on the run's clock (seconds since START): the end of the
      last /Users request, the POST /Groups, the first and the last group PATCH.

  biggroup.py removals --count N --percent P --people DN --group DN
      LDIF (ldapmodify) deleting every (100/P)th member uid=userNNNNNN,PEOPLE (N users of
      gen-ldif.py) from GROUP; `--add` writes the LDIF that puts them back.
"""
import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


def cmd_patch(a):
    u = urllib.parse.urlsplit(a.base)
    if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("biggroup.py: --base must be an http:// URL on loopback")
    prefix = u.path.rstrip("/")
    with open(a.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/scim+json",
        "Accept": "application/scim+json",
    }
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)

    def send(method, path, body):
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        return r.status, data

    status, data = send("POST", f"{prefix}/Groups", json.dumps(
        {"schemas": [GROUP], "displayName": "loadgen-group", "externalId": "loadgen-group"}))
    if status != 201:
        sys.exit(f"biggroup.py: POST {prefix}/Groups answered {status}")
    gid = json.loads(data)["id"]
    path = f"{prefix}/Groups/{urllib.parse.quote(gid, safe='')}"
    bodies = []
    for _ in range(a.requests):
        values = [{"value": os.urandom(a.id_len // 2 + 1).hex()[: a.id_len]}
                  for _ in range(a.chunk)]
        bodies.append(json.dumps({"schemas": [PATCH_OP], "Operations": [
            {"op": "add", "path": "members", "value": values}]}).encode())
    errors = 0
    t0 = time.monotonic()
    for b in bodies:
        status, _ = send("PATCH", path, b)
        if status not in (200, 204):
            errors += 1
    secs = time.monotonic() - t0
    conn.close()
    print(json.dumps({"requests": a.requests, "seconds": round(secs, 4),
                      "rps": round(a.requests / secs, 1) if secs > 0 else 0,
                      "errors": errors, "body_bytes": sum(map(len, bodies))}))


def kind_of(uri):
    p = uri.split("?")[0].split("/")  # ["", "v2", "Users", "ID"]
    return "/" + "/".join(p[1:3]) + ("/ID" if len(p) > 3 and p[3] else "")


def cmd_timeline(a):
    counts = {}
    users_end = group_post = patch_first = patch_last = None
    patches = 0
    with open(a.log, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            t, method, uri, status = float(parts[0]) - a.start, parts[1], parts[2], parts[3]
            k = kind_of(uri)
            key = f"{method} {k} {status}"
            counts[key] = counts.get(key, 0) + 1
            if k.startswith("/v2/Users"):
                users_end = t
            elif method == "POST" and k == "/v2/Groups":
                group_post = t
            elif method == "PATCH" and k == "/v2/Groups/ID":
                patches += 1
                patch_first = t if patch_first is None else patch_first
                patch_last = t

    def r(x):
        return None if x is None else round(x, 3)

    print(json.dumps({"requests": sum(counts.values()), "by_kind": dict(sorted(counts.items())),
                      "group_patches": patches, "run_seconds": r(a.end - a.start),
                      "users_end": r(users_end), "group_post": r(group_post),
                      "patch_first": r(patch_first), "patch_last": r(patch_last)}))


def cmd_removals(a):
    step = max(1, round(100 / a.percent))
    change = "add" if a.add else "delete"
    out = [f"dn: {a.group}\nchangetype: modify\n{change}: member\n"]
    out += [f"member: uid=user{i:06d},{a.people}\n" for i in range(0, a.count, step)]
    sys.stdout.write("".join(out) + "\n")


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("patch")
    q.add_argument("--base", required=True)
    q.add_argument("--token-file", required=True)
    q.add_argument("--requests", type=int, required=True)
    q.add_argument("--chunk", type=int, default=100)
    q.add_argument("--id-len", type=int, default=32)
    q = sub.add_parser("timeline")
    q.add_argument("--log", required=True)
    q.add_argument("--start", type=float, required=True)
    q.add_argument("--end", type=float, required=True)
    q = sub.add_parser("removals")
    q.add_argument("--count", type=int, required=True)
    q.add_argument("--percent", type=float, default=1.0)
    q.add_argument("--people", required=True)
    q.add_argument("--group", required=True)
    q.add_argument("--add", action="store_true")
    a = p.parse_args(argv)
    {"patch": cmd_patch, "timeline": cmd_timeline, "removals": cmd_removals}[a.cmd](a)


if __name__ == "__main__":
    main(sys.argv[1:])
