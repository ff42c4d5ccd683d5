#!/usr/bin/env python3
"""Write test users and groups as LDIF on stdout (for ldapadd or slapadd).

  gen-ldif.py openldap --count 10000 [--start 0] [--ou ou=mytest] [--big-group all-staff]
  gen-ldif.py ad       --count 1000  [--ad-password Pass-1] [--ou OU=MyTest]

Users: user000000, user000001, ... (--prefix). Every 10th user (index divisible by 10) is
the `manager` of the next nine, and is written before them (Active Directory refuses a
manager DN that does not exist yet). Groups: --groups G (default count/50) groups
group00000, ... (--group-prefix) of --group-size (50) consecutive users each, written after
all users; --big-group NAME adds one group holding every user of this run (--member-of also
writes each user's memberOf for it, openldap only).

Where the entries go:
  openldap  users in ou=people,SUFFIX, groups in ou=groups,SUFFIX (SUFFIX dc=branch,dc=test);
            those containers exist in the testbed, they are written only with --base-entries
            (which also writes the suffix entry: that is how the testbed creates its database).
            Users are inetOrgPerson with userPassword "secret"; groups are groupOfNames.
  ad        users and groups in OU=Staff,SUFFIX (SUFFIX DC=branch,DC=test), the OU written
            unless --no-ou. Users are objectClass user without a password, which Samba creates
            disabled (userAccountControl 546); --ad-password PW sets unicodePwd and enables
            them (512). Groups are global security groups.
  --ou X    puts users AND groups directly under X (an RDN like ou=mytest, made relative to
            the suffix, or a full DN), writing X itself unless --no-ou. Use it (with --prefix
            in AD, where account names are domain-wide) to keep test data in your own subtree.
"""
import argparse
import base64
import sys


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("flavor", choices=["ad", "openldap"])
    p.add_argument("--count", type=int, default=1000, help="users to write (1000)")
    p.add_argument("--start", type=int, default=0, help="index of the first user (0)")
    p.add_argument("--prefix", default="user", help="user name prefix (user)")
    p.add_argument("--groups", type=int, default=None, help="groups to write (count/50)")
    p.add_argument("--group-size", type=int, default=50, help="members per group (50)")
    p.add_argument("--group-start", type=int, default=None,
                   help="index of the first group (start/group-size)")
    p.add_argument("--group-prefix", default=None,
                   help="group name prefix (group, or PREFIX-g with --prefix)")
    p.add_argument("--big-group", "--group", dest="big_group", default=None,
                   help="also write one group NAME with every user of this run")
    p.add_argument("--member-of", action="store_true",
                   help="openldap: give each user the memberOf of the --big-group (what the "
                        "memberof overlay keeps, which slapadd does not run)")
    p.add_argument("--no-managers", action="store_true", help="write no manager attribute")
    p.add_argument("--suffix", default=None, help="naming context (DC=branch,DC=test)")
    p.add_argument("--ou", default=None, help="container for users and groups (RDN or DN)")
    p.add_argument("--no-ou", action="store_true", help="do not write the container entry")
    p.add_argument("--base-entries", action="store_true",
                   help="openldap: write the suffix, ou=people and ou=groups entries")
    p.add_argument("--ad-password", default=None,
                   help="ad: set this password and enable the users")
    a = p.parse_args(argv)
    if a.count < 0 or a.start < 0 or a.group_size < 1:
        p.error("--count and --start must be >= 0, --group-size >= 1")
    if a.groups is None:
        a.groups = a.count // a.group_size
    if a.group_prefix is None:
        a.group_prefix = "group" if a.prefix == "user" else f"{a.prefix}-g"
    if a.group_start is None:
        a.group_start = a.start // a.group_size
    if a.flavor == "ad" and len(f"{a.prefix}{0:06d}") > 20:
        p.error("ad: sAMAccountName is limited to 20 characters; shorten --prefix")
    return a


def ou_entry(dn):
    attr, _, value = dn.split(",")[0].partition("=")
    return f"dn: {dn}\nobjectClass: organizationalUnit\n{attr.lower()}: {value}\n\n"


def container(ou, suffix):
    if ou.lower().endswith(suffix.lower()):
        return ou
    return f"{ou},{suffix}"


def manager_of(a, i):
    """Index of user i's manager, or None (managers are indices divisible by 10)."""
    if a.no_managers or i % 10 == 0:
        return None
    return i - i % 10


def group_members(a, k):
    """User indices of the k-th group of this run (consecutive blocks of group_size)."""
    first = a.start + k * a.group_size
    last = min(first + a.group_size, a.start + a.count) if a.count else first
    if first >= last:  # more groups than blocks: wrap round the users of this run
        first = a.start + (k * a.group_size) % max(a.count, 1)
        last = min(first + a.group_size, a.start + a.count)
    return range(first, last)


def write_openldap(a, out):
    suffix = a.suffix or "dc=branch,dc=test"
    dc = suffix.split(",")[0].split("=", 1)[1]
    people, groups = f"ou=people,{suffix}", f"ou=groups,{suffix}"
    if a.ou:
        people = groups = container(a.ou, suffix)
    if a.base_entries:
        out(f"dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\n"
            f"dc: {dc}\no: {dc}\n\n")
        out(ou_entry(f"ou=people,{suffix}") + ou_entry(f"ou=groups,{suffix}"))
    if a.ou and not a.no_ou:
        out(ou_entry(people))

    def dn(i):
        return f"uid={a.prefix}{i:06d},{people}"

    for i in range(a.start, a.start + a.count):
        u = f"{a.prefix}{i:06d}"
        m = manager_of(a, i)
        out(f"dn: {dn(i)}\nobjectClass: inetOrgPerson\nuid: {u}\ncn: Given{i} Sur{i}\n"
            f"givenName: Given{i}\nsn: Sur{i}\ndisplayName: Given{i} Sur{i}\n"
            f"mail: {u}@branch.test\nemployeeNumber: E{i:06d}\n"
            f"departmentNumber: Dept{i % 10}\n"
            f"title: {'Team Lead' if i % 10 == 0 else 'Specialist'}\n"
            f"telephoneNumber: +1 555 {i % 10000:04d}\n"
            + (f"manager: {dn(m)}\n" if m is not None else "")
            + (f"memberOf: cn={a.big_group},{groups}\n" if a.member_of and a.big_group else "")
            + "userPassword: secret\n\n")
    for k in range(a.groups):
        g = f"{a.group_prefix}{a.group_start + k:05d}"
        members = group_members(a, k)
        if not members:  # groupOfNames needs a member
            continue
        out(f"dn: cn={g},{groups}\nobjectClass: groupOfNames\ncn: {g}\n"
            f"description: test group {g}\n"
            + "".join(f"member: {dn(i)}\n" for i in members) + "\n")
    if a.big_group and a.count:
        out(f"dn: cn={a.big_group},{groups}\nobjectClass: groupOfNames\ncn: {a.big_group}\n"
            + "".join(f"member: {dn(i)}\n" for i in range(a.start, a.start + a.count)) + "\n")


def write_ad(a, out):
    suffix = a.suffix or "DC=branch,DC=test"
    realm = ".".join(part.split("=", 1)[1] for part in suffix.split(",")).lower()
    ou = container(a.ou or "OU=Staff", suffix)
    if not a.no_ou:
        out(ou_entry(ou))
    enable = ""
    if a.ad_password is not None:
        pw = base64.b64encode(f'"{a.ad_password}"'.encode("utf-16-le")).decode()
        enable = f"unicodePwd:: {pw}\nuserAccountControl: 512\n"

    def dn(i):
        return f"CN={a.prefix}{i:06d},{ou}"

    for i in range(a.start, a.start + a.count):
        u = f"{a.prefix}{i:06d}"
        m = manager_of(a, i)
        out(f"dn: {dn(i)}\nobjectClass: user\nsAMAccountName: {u}\n"
            f"userPrincipalName: {u}@{realm}\ngivenName: Given{i}\nsn: Sur{i}\n"
            f"displayName: Given{i} Sur{i}\nmail: {u}@{realm}\n"
            f"department: Dept{i % 10}\nemployeeID: E{i:06d}\ncompany: Branch Test\n"
            f"title: {'Team Lead' if i % 10 == 0 else 'Specialist'}\n"
            f"telephoneNumber: +1 555 {i % 10000:04d}\n"
            + (f"manager: {dn(m)}\n" if m is not None else "") + enable + "\n")

    def group(name, members):
        out(f"dn: CN={name},{ou}\nobjectClass: group\nsAMAccountName: {name}\n"
            f"description: test group {name}\n"
            + "".join(f"member: {dn(i)}\n" for i in members) + "\n")

    for k in range(a.groups):
        members = group_members(a, k)
        if members:
            group(f"{a.group_prefix}{a.group_start + k:05d}", members)
    if a.big_group and a.count:
        group(a.big_group, range(a.start, a.start + a.count))


def main(argv):
    a = parse_args(argv)
    buf = []
    flush_at = 4096

    def out(s):
        buf.append(s)
        if len(buf) >= flush_at:
            sys.stdout.write("".join(buf))
            buf.clear()

    (write_ad if a.flavor == "ad" else write_openldap)(a, out)
    sys.stdout.write("".join(buf))


if __name__ == "__main__":
    main(sys.argv[1:])
