"""`conntrack -L -o extended` and `conntrack -S` text, from the entry array.

Python formats entries (never packets).  Field order, names and padding follow conntrack-tools'
output with accounting and timestamps on (libnetfilter_conntrack's default formatter).
"""
from __future__ import annotations

import numpy as np

from fastct.tracker import STATUS_BITS, format_addr, state_name

L3_NAMES = {2: "ipv4", 10: "ipv6"}
# conntrack's protocol names; any other number prints as "unknown".
L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6", 132: "sctp",
            136: "udplite"}
PORT_PROTOCOLS = {6, 17, 132, 136}
ICMP_INVERSE = {1: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17},
                58: {128: 129, 129: 128, 139: 140, 140: 139}}
SEEN_REPLY = STATUS_BITS["SEEN_REPLY"]
ASSURED = STATUS_BITS["ASSURED"]
NS = 1_000_000_000


def order_oldest_first(entries: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Indices of entries sorted by start time, ties by the original tuple."""
    if len(entries) == 0:
        return np.zeros(0, dtype=np.int64)
    src = entries["src"].view(">u8").reshape(len(entries), 2)   # big-endian words: byte order
    dst = entries["dst"].view(">u8").reshape(len(entries), 2)
    keys = (entries["dport"], entries["sport"], dst[:, 1], dst[:, 0], src[:, 1], src[:, 0],
            entries["proto"], entries["l3"], entries["zone"], start)
    return np.lexsort(keys)


def _l4_fields(proto: int, sport: int, dport: int, state: int) -> str:
    # DCCP has ports only when the dccp option's tracker keyed it (state > 0); as generic, none.
    if proto in PORT_PROTOCOLS or (proto == 33 and state):
        return f"sport={sport} dport={dport} "
    if proto in ICMP_INVERSE:
        return f"type={dport >> 8} code={dport & 0xFF} id={sport} "
    if proto == 47:
        return f"srckey={sport:#x} dstkey={dport:#x} "
    return ""


def format_entry(e, start_ns: int, now_ns: int) -> str:
    l3 = int(e["l3"])
    proto = int(e["proto"])
    sport, dport = int(e["sport"]), int(e["dport"])
    status = int(e["status"])
    src = format_addr(e["src"], l3)
    dst = format_addr(e["dst"], l3)
    timeout = (int(e["expires"]) - now_ns) // NS
    parts = [f"{L3_NAMES.get(l3, 'unknown'):<8} {l3} {L4_NAMES.get(proto, 'unknown'):<8} {proto} {timeout} "]
    state = int(e["state"])
    name = state_name(proto, state)
    if name is not None:
        parts.append(name + " ")
    parts.append(f"src={src} dst={dst} {_l4_fields(proto, sport, dport, state)}")
    parts.append(f"packets={int(e['packets'][0])} bytes={int(e['bytes'][0])} ")
    if not status & SEEN_REPLY:
        parts.append("[UNREPLIED] ")
    if proto in ICMP_INVERSE:
        rtype = ICMP_INVERSE[proto].get(dport >> 8, dport >> 8)
        rsport, rdport = sport, (rtype << 8) | (dport & 0xFF)
    else:
        rsport, rdport = dport, sport
    parts.append(f"src={dst} dst={src} {_l4_fields(proto, rsport, rdport, state)}")
    parts.append(f"packets={int(e['packets'][1])} bytes={int(e['bytes'][1])} ")
    if status & ASSURED:
        parts.append("[ASSURED] ")
    parts.append(f"mark={int(e['mark'])} ")
    if int(e["zone"]):
        parts.append(f"zone={int(e['zone'])} ")
    parts.append(f"delta-time={now_ns // NS - start_ns // NS} use=1")
    return "".join(parts)


def format_table(entries: np.ndarray, start: np.ndarray, now_ns: int) -> list[str]:
    """conntrack -L -o extended lines for the entries alive at now_ns, oldest first."""
    alive = entries["expires"] > now_ns
    entries, start = entries[alive], start[alive]
    return [format_entry(entries[i], int(start[i]), now_ns) for i in order_oldest_first(entries, start)]


def format_stats(stats: dict) -> str:
    """conntrack -S's line for one CPU, with fastct's counters."""
    names = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error",
             "search_restart", "clash_resolve", "chaintoolong")
    return "cpu=0   \t" + "".join(f"{n}={stats[n]} " for n in names)


def format_fastct_stats(stats: dict) -> str:
    names = ("packets", "untracked", "non_ip", "linktype_skipped", "time_backwards", "expired",
             "probes", "probe_max", "grows", "frag_held", "frag_reassembled", "frag_timeout",
             "frag_dropped", "entries")
    line = "fastct: " + " ".join(f"{n}={stats[n]}" for n in names)
    if stats["reasons"]:
        line += " invalid: " + ", ".join(f"{k}={v}" for k, v in stats["reasons"].items())
    return line
