#!/usr/bin/env python3
"""nested-ldif.py OU N: LDIF for bench-nested.sh under OU (which must exist): N users in
ou=people and 200 groups in ou=groups, 5 levels of 40; each group holds N/200 users of its
own and, above the last level, two groups of the next level (so a top group reaches 31)."""
import sys

ou, n = sys.argv[1], int(sys.argv[2])
levels, per = 5, 40
out = [
    f"dn: ou=people,{ou}\nobjectClass: organizationalUnit\nou: people\n",
    f"dn: ou=groups,{ou}\nobjectClass: organizationalUnit\nou: groups\n",
]
for i in range(n):
    out.append(f"dn: uid=b{i},ou=people,{ou}\nobjectClass: inetOrgPerson\nuid: b{i}\ncn: B {i}\nsn: S\n")
own = n // (levels * per)
k = 0
for level in range(levels):
    for i in range(per):
        m = [f"uid=b{u},ou=people,{ou}" for u in range(k * own, (k + 1) * own)]
        k += 1
        if level + 1 < levels:
            m += [f"cn=g{level+1}-{j % per},ou=groups,{ou}" for j in (2 * i, 2 * i + 1)]
        members = "".join(f"member: {x}\n" for x in m)
        out.append(f"dn: cn=g{level}-{i},ou=groups,{ou}\nobjectClass: groupOfNames\ncn: g{level}-{i}\n{members}")
print("\n".join(out))
