#!/usr/bin/env python3
"""scim2-tester (PyPI) against a read-only SCIM endpoint: idrelay's facade, reached through
idrelay-hub's per-agent endpoint /agents/{agent}/scim/v2. Used by tests/scim_tester_live.rs.

Usage: $SCIM_VENV/bin/python scripts/scim-tester-relay.py BASE_URL
       (bearer token in $SCIM_TESTER_TOKEN; the venv needs scim2-tester[httpx2])

Three phases, one JSON object per check on stdout (phase, check, resource_type, status,
http_status, reason, tags), a readable table on stderr:

* full  -- scim2-tester's check_server() as it is, every check. Each CRUD check of
           scim2-tester begins by POSTing a resource of its own, so on a read-only endpoint
           the read checks fail too, with the 403 of that POST.
* read  -- the read-side checks (discovery, misc, crud:read, crud:read:attributes) run on
           objects that already exist in the directory: the tester's "create" step is
           replaced by picking a resource from the list, and nothing is deleted afterwards.
           The client describes the server with scim2-models' standard User (+ enterprise
           extension) and Group, so the attribute checks have attributes to ask for (the
           facade's own /Schemas marks every attribute readOnly, and scim2-tester only picks
           writable ones).
* extra -- what scim2-tester 0.5.2 does not check: filter (eq, no match, invalid), paging
           (startIndex/count walk the whole list once), unknown id. Responses are still
           parsed and validated by scim2-client / scim2-models.

Exit status: 0 when it ran (the caller judges the results), 2 on a usage or set-up error.
"""
import json
import os
import sys
import uuid

try:
    from httpx2 import Client
    from scim2_client import SCIMClientException
    from scim2_client.engines.httpx2 import SyncSCIMClient
    from scim2_models import (
        EnterpriseUser,
        Error,
        Group,
        ListResponse,
        ResourceType,
        ScimProvider,
        SCIMException,
        SearchRequest,
        User,
    )
    from scim2_tester import Status, check_server
    from scim2_tester.utils import ResourceManager
except ImportError as e:  # the caller skips on this exit code
    print(f"scim2-tester is not installed in this Python ({e})", file=sys.stderr)
    sys.exit(3)

READ_TAGS = {"discovery", "misc", "crud:read", "crud:read:attributes"}


def client_for(base, token, standard_models):
    http = Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    if not standard_models:
        return SyncSCIMClient(http)
    user = User[EnterpriseUser]
    provider = ScimProvider(
        models=[User, EnterpriseUser, Group],
        resource_types=[ResourceType.from_resource(user), ResourceType.from_resource(Group)],
    )
    return SyncSCIMClient(http, provider=provider)


def http_status(data, reason):
    """The HTTP status behind a result: the SCIM error body's, else one named in the text."""
    if isinstance(data, Error) and data.status:
        return int(data.status)
    if isinstance(data, dict) and str(data.get("status", "")).isdigit():
        return int(data["status"])
    for word in (reason or "").replace(":", " ").replace(",", " ").split():
        if word.isdigit() and 100 <= int(word) <= 599:
            return int(word)
    return None


def record(phase, check, status, reason, data=None, resource_type=None, tags=()):
    return {
        "phase": phase,
        "check": check,
        "resource_type": resource_type,
        "status": status,
        "http_status": http_status(data, reason),
        "reason": " ".join((reason or "").split())[:300],
        "tags": sorted(tags),
    }


def from_tester(phase, results):
    return [
        record(phase, r.title, r.status.name, r.reason, r.data, r.resource_type, r.tags)
        for r in results
    ]


def existing_resource(self, model, fill_all=False):
    """Stands in for ResourceManager.create_and_register on a read-only endpoint: an
    object the directory already holds (the fullest one when the check wants every
    attribute filled). It is not registered, so the check's clean-up deletes nothing."""
    listing = self.context.client.query(model, query_parameters=SearchRequest(count=100))
    found = list(listing.resources or [])
    if not found:
        raise ValueError(f"the endpoint lists no {model.__name__} to read")
    if fill_all:
        return max(found, key=lambda r: len(json.dumps(r.model_dump(exclude_none=True))))
    return found[0]


def extra_checks(client):
    out = []

    def check(name, resource_type, fn):
        try:
            ok, reason, data = fn()
            out.append(record("extra", name, "SUCCESS" if ok else "ERROR", reason, data, resource_type))
        except (SCIMClientException, SCIMException, ValueError) as e:
            data = getattr(getattr(e, "source", None), "json", None)
            try:
                data = data() if callable(data) else data
            except ValueError:
                data = None
            out.append(record("extra", name, "ERROR", f"{type(e).__name__}: {e}", data, resource_type))

    for model, attr in ((User[EnterpriseUser], "userName"), (Group, "displayName")):
        name = "User" if attr == "userName" else "Group"
        try:
            everything = client.query(model, query_parameters=SearchRequest(count=100))
        except (SCIMClientException, SCIMException) as e:
            out.append(record("extra", "list", "ERROR", f"{type(e).__name__}: {e}", None, name))
            continue
        items = list(everything.resources or [])
        total = everything.total_results or 0

        def filter_eq():
            if not items:
                return False, f"no {name} listed", None
            target = items[0]
            value = target.user_name if attr == "userName" else target.display_name
            r = client.query(model, query_parameters=SearchRequest(filter=f'{attr} eq "{value}"'))
            ids = [x.id for x in r.resources or []]
            ok = target.id in ids and r.total_results == len(ids) >= 1
            return ok, f'{attr} eq "{value}": totalResults {r.total_results}, ids {len(ids)}, target found: {target.id in ids}', r

        def filter_none():
            r = client.query(model, query_parameters=SearchRequest(filter=f'{attr} eq "none-{uuid.uuid4()}"'))
            ok = r.total_results == 0 and not r.resources
            return ok, f"no match: totalResults {r.total_results}", r

        def filter_invalid():
            # scim2-client refuses to send a malformed filter: send it with the raw client.
            raw = client.client.get(f"/{name}s", params={"filter": f"{attr} eq"})
            r = Error.model_validate(raw.json())
            ok = raw.status_code == 400 and r.status == 400 and r.scim_type == "invalidFilter"
            got = f"HTTP {raw.status_code}, Error {r.status} {r.scim_type}"
            return ok, f"malformed filter: {got} (want 400 invalidFilter)", r

        def paging():
            seen = []
            for start in range(1, total + 1):
                page = client.query(model, query_parameters=SearchRequest(start_index=start, count=1))
                if page.start_index != start or page.items_per_page != 1 or page.total_results != total:
                    return False, f"page {start}: startIndex {page.start_index}, itemsPerPage {page.items_per_page}, totalResults {page.total_results} (want {start}, 1, {total})", page
                seen.extend(x.id for x in page.resources or [])
            past = client.query(model, query_parameters=SearchRequest(start_index=total + 1, count=5))
            ok = sorted(seen) == sorted(x.id for x in items) and len(set(seen)) == total and not past.resources
            return ok, f"{total} pages of 1: every id once: {ok}; past the end empty: {not past.resources}", past

        def unknown_id():
            r = client.query(model, f"no-such-{uuid.uuid4()}", expected_status_codes=None, raise_scim_errors=False)
            ok = isinstance(r, Error) and r.status == 404
            got = r.status if isinstance(r, Error) else type(r).__name__
            return ok, f"unknown id: {got} (want 404 Error)", r

        check("filter_eq", name, filter_eq)
        check("filter_no_match", name, filter_none)
        check("filter_invalid", name, filter_invalid)
        check("pagination", name, paging)
        check("unknown_id", name, unknown_id)
    return out


def main():
    if len(sys.argv) != 2 or "SCIM_TESTER_TOKEN" not in os.environ:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    base, token = sys.argv[1], os.environ["SCIM_TESTER_TOKEN"]

    rows = from_tester("full", check_server(client_for(base, token, False)))

    create = ResourceManager.create_and_register
    ResourceManager.create_and_register = existing_resource
    try:
        rows += from_tester("read", check_server(client_for(base, token, True), include_tags=READ_TAGS))
    finally:
        ResourceManager.create_and_register = create

    rows += extra_checks(client_for(base, token, True))

    for row in rows:
        print(json.dumps(row), flush=True)
    w = max(len(r["check"] or "") for r in rows)
    for r in rows:
        print(
            f"{r['phase']:5} {(r['resource_type'] or '-'):5} {r['check'] or '?':{w}} {r['status']:8} "
            f"{r['http_status'] or '':3} {r['reason']}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
