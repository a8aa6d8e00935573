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
ICMP_PROTOCOLS = {1, 58}
SEEN_REPLY = STATUS_BITS["SEEN_REPLY"]
SRC_NAT_DONE = STATUS_BITS["SRC_NAT_DONE"]
DST_NAT_DONE = STATUS_BITS["DST_NAT_DONE"]
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
    if proto in ICMP_PROTOCOLS:
        return f"type={dport >> 8} code={dport & 0xFF} id={sport} "
    if proto == 47:
        return f"srckey={sport:#x} dstkey={dport:#x} "
    return ""


def format_entry(e, reply, c, now_ns: int, helpers=()) -> str:
    """One line; `reply` is the entry's reply tuple (Tracker.replies), translated where NAT
    changed it; `c` its cold record (start, counters' high words, mark, helper); `helpers` maps a
    helper number to the helper's name."""
    start_ns = int(c["start"])
    packets = [(int(c["packets_hi"][d]) << 32) | int(e["packets_lo"][d]) for d in (0, 1)]
    nbytes = [(int(c["bytes_hi"][d]) << 32) | int(e["bytes_lo"][d]) for d in (0, 1)]
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
    parts.append(f"packets={packets[0]} bytes={nbytes[0]} ")
    if not status & SEEN_REPLY:
        parts.append("[UNREPLIED] ")
    rsrc, rdst = format_addr(reply["src"], l3), format_addr(reply["dst"], l3)
    parts.append(f"src={rsrc} dst={rdst} {_l4_fields(proto, int(reply['sport']), int(reply['dport']), state)}")
    parts.append(f"packets={packets[1]} bytes={nbytes[1]} ")
    if status & ASSURED:
        parts.append("[ASSURED] ")
    parts.append(f"mark={int(c['mark'])} ")
    if int(e["zone"]):
        parts.append(f"zone={int(e['zone'])} ")
    parts.append(f"delta-time={now_ns // NS - start_ns // NS} ")
    aux = int(c["aux"])
    if aux < len(helpers):
        parts.append(f"helper={helpers[aux]} ")
    parts.append("use=1")
    return "".join(parts)


def format_table(entries: np.ndarray, replies: np.ndarray, cold: np.ndarray, now_ns: int,
                 helpers=()) -> list[str]:
    """conntrack -L -o extended lines for the entries alive at now_ns, oldest first; `replies`
    and `cold` are parallel to `entries` (Tracker.replies, Tracker.cold()); `helpers` as
    Tracker.helper_names()."""
    alive = entries["expires"] > now_ns
    entries, replies, cold = entries[alive], replies[alive], cold[alive]
    return [format_entry(entries[i], replies[i], cold[i], now_ns, helpers)
            for i in order_oldest_first(entries, cold["start"])]


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


def nat_filter(entries: np.ndarray, replies: np.ndarray, kind: str, addr: str | None = None) -> np.ndarray:
    """conntrack's --src-nat / --dst-nat [ADDR] (kind "src" or "dst"): a mask of the entries
    whose source (destination) NAT changed the address or the port, as conntrack-tools decides it
    (the _DONE status bit set and the reply tuple differing from the original).  With ADDR, the
    translated address must be ADDR.  conntrack-tools compares only IPv4 addresses and, for
    ICMP, mixes up the id and type fields; fastct compares IPv6 too and ICMP ids with ids."""
    import ipaddress
    if kind == "src":
        done, orig_addr, orig_port, new_addr, new_port = SRC_NAT_DONE, "src", "sport", "dst", "dport"
    else:
        done, orig_addr, orig_port, new_addr, new_port = DST_NAT_DONE, "dst", "dport", "src", "sport"
    mask = (entries["status"] & done) != 0
    addr_changed = np.any(entries[orig_addr] != replies[new_addr], axis=1)
    icmp = np.isin(entries["proto"], list(ICMP_PROTOCOLS))
    # ICMP: the id is the translated "port", in sport of both tuples.
    port_changed = np.where(icmp, entries["sport"] != replies["sport"],
                            entries[orig_port] != replies[new_port])
    if addr is None:
        return mask & (addr_changed | port_changed)
    ip = ipaddress.ip_address(addr)
    raw = np.frombuffer(ip.packed + bytes(16 - len(ip.packed)), dtype=np.uint8)
    fam = 2 if ip.version == 4 else 10
    return mask & addr_changed & (entries["l3"] == fam) & np.all(replies[new_addr] == raw, axis=1)
