"""Parse `conntrack -L -o extended` lines into comparable records (used by the tests only)."""
import re

_KV = re.compile(r"(\S+?)=(\S+)")


def parse_line(line):
    """-> dict: l3, proto, timeout, state, orig (tuple of k=v), reply, counters, flags, extras."""
    tok = line.split()
    rec = {"l3": tok[0], "proto": int(tok[3]), "timeout": int(tok[4])}
    i = 5
    rec["state"] = None
    if "=" not in tok[i]:
        rec["state"] = tok[i]
        i += 1
    orig, reply, cur = [], [], None
    cur = orig
    counters = []
    flags = []
    extras = {}
    seen_src = 0
    for t in tok[i:]:
        if t.startswith("["):
            flags.append(t)
            continue
        k, _, v = t.partition("=")
        if k == "src":
            seen_src += 1
            cur = orig if seen_src == 1 else reply
        if k in ("packets", "bytes"):
            counters.append(int(v))
        elif k in ("mark", "zone", "delta-time", "use", "helper"):
            extras[k] = v
        else:
            cur.append(t)
    rec["orig"] = tuple(orig)
    rec["reply"] = tuple(reply)
    rec["counters"] = tuple(counters)
    rec["flags"] = tuple(flags)
    rec["extras"] = extras
    return rec


def parse_table(text):
    return [parse_line(l) for l in text.splitlines() if l.strip()]
