"""The connection tracker a Python user writes by hand: dpkt to read and parse, one dict for the table.

    python benchmarks/peer_dict_tracker.py CAPTURE [--quiet]

This is the baseline of benchmarks/compare_peers.py, written as a competent user would, without
tricks that would make it unlike ordinary code: dpkt's pcap/pcapng reader and its Ethernet
decoder (which parses IP/IPv6 and TCP/UDP/ICMP on the way), a dict keyed by the direction-normalised
(proto, addr, port, addr, port) tuple with raw address bytes, a small list per flow updated in
place, names bound to locals in the loop.

Per flow it keeps: first/last seen, packets and IP bytes (IPv4 total length, IPv6 40 + payload
length, as conntrack counts) in the original direction (the first packet's) and the reply
direction, and a TCP state from the flags alone (SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT,
LAST_ACK, TIME_WAIT, CLOSE; a connection first seen mid-stream is ESTABLISHED). ICMP/ICMPv6 echo
request and reply are one flow per echo id; other ICMP messages are flows of their own (ports 0).
No timeouts, sequence-number checks, fragment reassembly, or tunnels: that is the difference to
conntrack (fastct) this baseline stands for.
"""
from __future__ import annotations

import argparse
import socket
import sys

import dpkt
from dpkt.ethernet import Ethernet
from dpkt.icmp import ICMP
from dpkt.icmp6 import ICMP6
from dpkt.ip import IP
from dpkt.ip6 import IP6
from dpkt.tcp import TCP
from dpkt.udp import UDP

# flow record: a list, updated in place
FIRST, LAST, PKTS_O, PKTS_R, BYTES_O, BYTES_R, STATE, ORIG_DIR, FIN_DIR = range(9)
NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, LAST_ACK, TIME_WAIT, CLOSE = range(8)
STATE_NAMES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE"]
_FIN, _SYN, _RST, _ACK = dpkt.tcp.TH_FIN, dpkt.tcp.TH_SYN, dpkt.tcp.TH_RST, dpkt.tcp.TH_ACK
_ECHO = {(1, 8): 0, (1, 0): 1, (58, 128): 0, (58, 129): 1}     # (proto, type): 0 request, 1 reply


def _decoder(linktype):
    """Frame bytes -> dpkt IP/IP6 object (or something else, skipped) for a link type."""
    if linktype == dpkt.pcap.DLT_EN10MB:
        return lambda buf: Ethernet(buf).data
    if linktype in (dpkt.pcap.DLT_RAW, 12, 14, 228, 229):
        return lambda buf: IP6(buf) if buf[0] >> 4 == 6 else IP(buf)
    if linktype == dpkt.pcap.DLT_LINUX_SLL:
        return lambda buf: dpkt.sll.SLL(buf).data
    raise ValueError(f"link type {linktype} is not handled")


def _tcp_state(state, flags, is_orig, rec):
    """The next state from this packet's flags (no sequence numbers, no timeouts)."""
    if flags & _RST:
        return CLOSE
    if flags & _SYN:
        if flags & _ACK:
            return SYN_RECV if state in (NONE, SYN_SENT) and not is_orig else state
        return SYN_SENT if state in (NONE, SYN_SENT, TIME_WAIT, CLOSE) else state
    if flags & _FIN:
        if state < FIN_WAIT:
            rec[FIN_DIR] = is_orig
            return FIN_WAIT
        if state == FIN_WAIT and rec[FIN_DIR] != is_orig:
            return LAST_ACK
        return state
    if state == SYN_RECV and is_orig:
        return ESTABLISHED
    if state == LAST_ACK:
        return TIME_WAIT
    if state == NONE:
        return ESTABLISHED
    return state


def track(path):
    """Read a pcap/pcapng capture; returns (flows, stats).  flows maps the normalised key
    (proto, addr_lo, port_lo, addr_hi, port_hi) to its record list (see FIRST..FIN_DIR)."""
    flows = {}
    packets = skipped = 0
    get = flows.get
    with open(path, "rb") as fh:
        reader = dpkt.pcap.UniversalReader(fh)
        decode = _decoder(reader.datalink())
        for ts, buf in reader:
            packets += 1
            try:
                ip = decode(buf)
            except (dpkt.UnpackError, IndexError):
                skipped += 1
                continue
            t = type(ip)
            if t is IP:
                length = ip.len
                p = ip.p
            elif t is IP6:
                length = 40 + ip.plen
                p = ip.p              # after extension headers
            else:
                skipped += 1          # not IP (ARP, LLDP, ...)
                continue
            l4 = ip.data
            t4 = type(l4)
            flags = -1
            if t4 is TCP:
                sp, dp, flags = l4.sport, l4.dport, l4.flags
            elif t4 is UDP:
                sp, dp = l4.sport, l4.dport
            elif t4 is ICMP or t4 is ICMP6:
                echo = _ECHO.get((p, l4.type))
                if echo is None:
                    sp = dp = 0
                elif echo:                     # reply: the echo id is the client's "port"
                    sp, dp = 0, l4.data.id
                else:
                    sp, dp = l4.data.id, 0
            else:
                sp = dp = 0
            src, dst = ip.src, ip.dst
            if src < dst or (src == dst and sp <= dp):
                key = (p, src, sp, dst, dp)
                d = 0
            else:
                key = (p, dst, dp, src, sp)
                d = 1
            rec = get(key)
            if rec is None:
                rec = [ts, ts, 0, 0, 0, 0, NONE, d, 0]
                flows[key] = rec
            rec[LAST] = ts
            if d == rec[ORIG_DIR]:
                rec[PKTS_O] += 1
                rec[BYTES_O] += length
                is_orig = True
            else:
                rec[PKTS_R] += 1
                rec[BYTES_R] += length
                is_orig = False
            if flags >= 0:
                rec[STATE] = _tcp_state(rec[STATE], flags, is_orig, rec)
    return flows, {"packets": packets, "skipped": skipped, "flows": len(flows)}


def rows(flows):
    """Each flow in its original direction: (proto, src, sport, dst, dport, packets orig, packets
    reply, bytes orig, bytes reply, TCP state name or None, first seen, last seen)."""
    for (p, a, ap, b, bp), rec in flows.items():
        if rec[ORIG_DIR]:
            a, ap, b, bp = b, bp, a, ap
        fam = socket.AF_INET if len(a) == 4 else socket.AF_INET6
        yield (p, socket.inet_ntop(fam, a), ap, socket.inet_ntop(fam, b), bp, rec[PKTS_O], rec[PKTS_R],
               rec[BYTES_O], rec[BYTES_R], STATE_NAMES[rec[STATE]] if p == 6 else None, rec[FIRST], rec[LAST])


def main(argv=None):
    ap = argparse.ArgumentParser(description="hand-written dpkt + dict connection tracker")
    ap.add_argument("capture")
    ap.add_argument("--quiet", action="store_true", help="only the summary line")
    args = ap.parse_args(argv)
    flows, stats = track(args.capture)
    if not args.quiet:
        out = sys.stdout
        for r in rows(flows):
            out.write(f"{r[0]:<3} {r[1]} {r[2]} -> {r[3]} {r[4]} packets={r[5]}/{r[6]} bytes={r[7]}/{r[8]}"
                      f"{' ' + r[9] if r[9] else ''} first={r[10]:.6f} last={r[11]:.6f}\n")
    print(f"{stats['flows']} flows, {stats['packets']} packets, {stats['skipped']} skipped",
          file=sys.stderr)


if __name__ == "__main__":
    main()
