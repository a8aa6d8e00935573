"""Long-run fuzzer for the fastct engine: millions of generated and mutated packets a minute.

    python benchmarks/fuzz_long.py [--packets 10000000] [--seed N] [--max-conns N] [--check-every 4]

A corpus of valid frames is built once with dpkt (TCP conversations with coherent sequence numbers
and options, UDP, UDP-Lite, ICMP/ICMPv6 echo and errors quoting their flows, ICMPv6 neighbour
discovery and redirects, SCTP associations, DCCP, GRE v0/v1, other protocols, IPv4 options, IPv6
extension headers, IPv4/IPv6 fragments cut, reordered, duplicated and overlapping), each
conversation wrapped in one of the link types the parser handles (Ethernet plain / 802.1Q / QinQ /
with FCS, SLL, SLL2, raw IP 101/228/229, NULL, LOOP, NFLOG) or one it does not.  Every batch is then
made with numpy alone: conversations are instantiated on flows (addresses, ports and TCP sequence
numbers rewritten with incremental checksum updates, so nf_conntrack_checksum=1 still sees good
sums), interleaved, and a share of the frames is mutated (bit flips, bytes set, length and header
fields set to boundary values, cuts at any offset, caplen below wirelen, wrong wire lengths, tails of
other frames spliced in, frames relabelled to another link type) or replaced by random bytes.  Each
generated batch is fed --replays times, mutated anew each time, right after the previous call
(retransmissions) or an hour later (the same tuples over dead entries, rebuilt in place).

The engine is re-created every --epoch-batches batches with a new random configuration (table size
unless --max-conns, early drop, zone limits, per-zone timeouts, nf_conntrack_checksum, TCP options,
the DCCP tracker, zones from VLAN ids; commit=False and the zone vary per batch).  After every batch
the per-packet outputs are checked against each other and against the counters (legal ct_state
combinations, counts that add up, entry indices and directions); every --check-every engine calls
and at the end of
each epoch Engine.check_invariants() must return [] and the entries must be sane.  Every
--guard-every batches one batch places each packet at the end of its own page between two
inaccessible pages, so a read outside a packet is a crash rather than a silent error.

The engine runs in a child process watched by this one: a crash (signal) or a hang (no batch done
for --hang-timeout seconds) is reported like a failed check, with the seed, the epoch and batch, and
the reproducer: a pcapng of the epoch's packets up to the failing batch and one of the failing
batch alone (one interface per link-layer variant, nanosecond timestamps, caplen and wirelen kept),
plus the command that replays exactly that run.  Exit status 0: no problem; 1: a problem (details
above the exit); 2: usage.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import numpy as np
from dpkt import crc32c as dpkt_crc32c

from fastct import CT_STATE_BITS as CSB, Batch, Tracker
from fastct.tracker import REASONS, SCTP_STATES, STAT_NAMES, STATUS_BITS, TCP_STATES, DCCP_STATES, \
    full_counters

TRK, NEW, EST, REL, RPL, INV = CSB["trk"], CSB["new"], CSB["est"], CSB["rel"], CSB["rpl"], CSB["inv"]
LEGAL = np.zeros(256, dtype=bool)
LEGAL[[0, TRK | INV, TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | REL, TRK | REL | RPL]] = True
NAT_BITS = 0xC0                                                          # snat | dnat
for _tracked in (TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | REL, TRK | REL | RPL):
    LEGAL[[_tracked | 0x40, _tracked | 0x80, _tracked | 0xC0]] = True       # snat, dnat (NAT on)
M32 = 0xFFFFFFFF
SEC = 1_000_000_000
L = 384                          # bytes per packet row (longer templates are captured short)
PAGE = mmap.PAGESIZE

# ---------------------------------------------------------------------------------------------
# checksums


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def inet_csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return ~fold(sum(struct.unpack(f"!{len(data) // 2}H", data))) & 0xFFFF


def crc32c(data: bytes) -> int:
    return ~dpkt_crc32c.add(0xFFFFFFFF, data) & M32


# ---------------------------------------------------------------------------------------------
# the corpus: IP packets with the offsets of their rewritable fields

# Field roles: 16-bit values from the flow (address low words, ports) or 32-bit sequence offsets.
CA, SA, CP, SP, CSEQ, SSEQ = range(6)
P_ICMP, P_TCP, P_UDP, P_DCCP, P_GRE, P_ICMP6, P_SCTP, P_UDPLITE = 1, 6, 17, 33, 47, 58, 132, 136


@dataclass
class IPPkt:
    fam: int
    ip: bytes
    fields: list = field(default_factory=list)     # (offset, role, (checksum offsets...))
    hot: list = field(default_factory=list)        # offsets of length / header fields worth breaking


HOST = {4: (bytes([10, 1, 0, 0]), bytes([172, 16, 0, 0])),
        6: (socket.inet_pton(socket.AF_INET6, "2001:db8:c::"), socket.inet_pton(socket.AF_INET6, "2001:db8:5::"))}
ROUTER = {4: socket.inet_aton("192.0.2.1"), 6: socket.inet_pton(socket.AF_INET6, "fe80::1")}


def pseudo(fam, src, dst, proto, length):
    if fam == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length & 0xFFFF)
    return src + dst + struct.pack("!IxxxB", length, proto)


def mk_ip(fam, src_role, dst_role, proto, l4: bytes, l4_fields=(), csum_at=None, pseudo_sum=True,
          opts=b"", exts=(), src=None, dst=None, cover=None, ident=0x4242, hlim=64, hot=()):
    """An IPv4/IPv6 packet around transport bytes `l4` (its checksum field zero), with the L4
    checksum at l4[csum_at] computed (pseudo-header if pseudo_sum) and the IPv4 header checksum.
    src_role/dst_role: CA or SA (address from the flow) or None (src/dst given)."""
    if src is None:
        src = HOST[fam][0 if src_role == CA else 1]
    if dst is None:
        dst = HOST[fam][0 if dst_role == CA else 1]
    if csum_at is not None:
        data = l4[:cover] if cover is not None else l4
        c = inet_csum((pseudo(fam, src, dst, proto, len(l4)) if pseudo_sum else b"") + data)
        if proto == P_UDP and c == 0:
            c = 0xFFFF
        l4 = l4[:csum_at] + struct.pack("!H", c) + l4[csum_at + 2:]
    if fam == 4:
        opts = opts + b"\0" * (-len(opts) % 4)
        ihl = 20 + len(opts)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, 0, ihl + len(l4), ident, 0, hlim, proto, 0, src,
                          dst) + opts
        hdr = hdr[:10] + struct.pack("!H", inet_csum(hdr)) + hdr[12:]
        l4off, addr = ihl, (14, 18)
        ip_cs = (10,)
        hot_ip = [0, 2, 6, 9]
    else:
        nh, chain = proto, b""
        for kind, body in reversed(list(exts)):
            chain = bytes([nh]) + body + chain
            nh = kind
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(chain) + len(l4), nh, hlim, src, dst) + chain
        l4off, addr = len(hdr), (22, 38)
        ip_cs = ()
        hot_ip = [4, 6] + [40 + k for k in range(0, len(chain), 8)][:3]
    l4cs = (l4off + csum_at,) if csum_at is not None else ()
    fields = []
    for off, role in zip(addr, (src_role, dst_role)):
        if role is not None:
            fields.append((off, role, ip_cs + (l4cs if pseudo_sum else ())))
    for off, role in l4_fields:
        fields.append((l4off + off, role, l4cs))
    return IPPkt(fam, hdr + l4, fields, hot_ip + [l4off + h for h in hot])


# ---- transports ----

def tcp(sport, dport, seq, ack, flags, win=65535, opts=b"", data=b""):
    opts = opts + b"\x01" * (-len(opts) % 4)
    t = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq & M32, ack=ack & M32, flags=flags, win=win, opts=opts,
                     data=data)
    t.off = 5 + len(opts) // 4
    return bytes(t)


def syn_opts(r):
    o = struct.pack("!BBH", 2, 4, r.choice([536, 1460, 65535]))
    if r.random() < 0.7:
        o += bytes([1, 3, 3, r.choice([0, 2, 7, 14, 15])])
    if r.random() < 0.6:
        o += bytes([4, 2])
    if r.random() < 0.5:
        o += bytes([8, 10]) + struct.pack("!II", r.getrandbits(32), 0)
    return o


def tcp_conv(r, fam, pk):
    """A TCP conversation; pk(src_role, dst_role, l4, fields, csum_at) makes the IP packet."""
    seq = {CA: r.getrandbits(32), SA: r.getrandbits(32)}
    win = {CA: r.choice([0, 512, 65535]), SA: r.choice([1024, 65535])}
    out = []

    def send(frm, flags, n=0, opts=b"", dseq=0, dack=0):
        to = SA if frm == CA else CA
        l4 = tcp(1 if frm == CA else 2, 2 if frm == CA else 1, seq[frm] + dseq, seq[to] + dack, flags, win[frm],
                 opts, b"d" * n)
        fields = [(0, CP if frm == CA else SP), (2, SP if frm == CA else CP),
                  (4, CSEQ if frm == CA else SSEQ), (8, SSEQ if frm == CA else CSEQ)]
        out.append(pk(frm, to, P_TCP, l4, fields, 16, hot=[12, 13, 14]))
        seq[frm] = (seq[frm] + n + (1 if flags & 0x03 else 0)) & M32

    start = r.choice(["hs", "hs", "hs", "mid", "synack", "simul", "syn_retrans"])
    if start in ("hs", "simul", "syn_retrans"):
        send(CA, 0x02, opts=syn_opts(r))
        if start == "syn_retrans":
            seq[CA] = (seq[CA] - 1) & M32
            send(CA, 0x02, opts=syn_opts(r))
        if start == "simul":
            send(SA, 0x02, opts=syn_opts(r))
        send(SA, 0x12, opts=syn_opts(r))
        send(CA, 0x10)
    elif start == "synack":
        send(SA, 0x12, opts=syn_opts(r))
    for _ in range(r.randrange(0, 8)):
        frm = r.choice([CA, SA])
        k = r.randrange(12)
        if k < 7:
            send(frm, r.choice([0x10, 0x18, 0x18, 0x30, 0xD0]), n=r.choice([0, 1, 100, 1000, 1460]))
        elif k == 7:
            send(frm, 0x10, n=50, dseq=-r.choice([50, 1000, 200000, 2**31]))
        elif k == 8:
            send(frm, 0x10, dack=r.choice([1, 70000, 2**31, -200000, -70000]))
        elif k == 9:
            send(frm, r.randrange(256), opts=bytes(r.getrandbits(8) for _ in range(r.choice([0, 4, 12]))))
        elif k == 10:
            win[frm] = r.randrange(65536)
            send(frm, 0x10)
        else:
            send(frm, 0x10, n=0, dseq=-1)               # keep-alive
    end = r.choice(["fin", "fin", "rst", "rst_bad", "half", "none", "reopen", "fin_rst"])
    if end in ("fin", "reopen", "fin_rst"):
        send(CA, 0x11)
        send(SA, 0x11)
        send(CA, 0x10)
        if end == "reopen":
            seq[CA] = (seq[CA] + 100000) & M32
            send(CA, 0x02, opts=syn_opts(r))
            send(SA, 0x12, opts=syn_opts(r))
        if end == "fin_rst":
            send(SA, 0x04)
    elif end == "rst":
        send(r.choice([CA, SA]), r.choice([0x04, 0x14]))
    elif end == "rst_bad":
        send(r.choice([CA, SA]), 0x04, dseq=r.choice([-5, 100000, 2**31]))
    elif end == "half":
        send(r.choice([CA, SA]), 0x11)
    return out


def udp_conv(r, fam, pk):
    lite = r.random() < 0.25
    proto = P_UDPLITE if lite else P_UDP
    out = []
    for _ in range(r.randrange(1, 6)):
        frm = r.choice([CA, CA, SA])
        data = bytes(r.getrandbits(8) for _ in range(r.choice([0, 1, 8, 30])))
        if lite:
            cov = r.choice([0, 0, 8, 12])
            l4 = struct.pack("!HHHH", 1 if frm == CA else 2, 2 if frm == CA else 1, cov, 0) + data
            cover = cov or None
        else:
            l4 = bytes(dpkt.udp.UDP(sport=1 if frm == CA else 2, dport=2 if frm == CA else 1, ulen=8 + len(data),
                                    data=data))
            cover = None
        nocsum = not lite and fam == 4 and r.random() < 0.3
        fields = [(0, CP if frm == CA else SP), (2, SP if frm == CA else CP)]
        out.append(pk(frm, SA if frm == CA else CA, proto, l4, fields, None if nocsum else 6, cover=cover, hot=[4]))
        r.random() < 0.1 and out.append(out[-1])          # a duplicate
    return out


ICMP_PAIRS = {4: [(8, 0), (8, 0), (13, 14), (15, 16), (17, 18)], 6: [(128, 129), (128, 129), (139, 140)]}


def icmp_conv(r, fam, pk):
    req, rep = r.choice(ICMP_PAIRS[fam])
    ident = r.randrange(65536)
    proto = P_ICMP if fam == 4 else P_ICMP6
    out = []
    for step in [r.choice(["req", "req", "rep", "other"]) for _ in range(r.randrange(1, 5))]:
        frm = SA if step == "rep" else CA
        t = {"req": req, "rep": rep}.get(step, r.randrange(256))
        l4 = struct.pack("!BBHHH", t, r.choice([0, 0, 1]), 0, ident, r.randrange(4)) + b"p" * r.choice([0, 8, 56])
        out.append(pk(frm, SA if frm == CA else CA, proto, l4, [(4, CP)], 2, pseudo_sum=fam == 6, hot=[0, 1]))
    return out


def nd_conv(r, fam, pk):
    """ICMPv6 neighbour discovery and MLD: untracked."""
    out = []
    for _ in range(r.randrange(1, 3)):
        t = r.choice([133, 134, 135, 136, 130, 131, 132, 143])
        l4 = struct.pack("!BBHI", t, 0, 0, 0) + bytes(16)
        out.append(pk(CA, SA, P_ICMP6, l4, [], 2, hlim=255))
    return out


def sctp_conv(r, fam, pk):
    tag = {CA: r.getrandbits(32), SA: r.getrandbits(32)}
    out = []
    good_crc = r.random() < 0.9

    def chunk(t, flags=0, value=b""):
        c = struct.pack("!BBH", t, flags, 4 + len(value)) + value
        return c + b"\0" * (-len(c) % 4)

    def send(frm, vtag, *chunks):
        body = struct.pack("!HHII", 1 if frm == CA else 2, 2 if frm == CA else 1, vtag, 0) + b"".join(chunks)
        c = crc32c(body) if good_crc else r.getrandbits(32)
        l4 = body[:8] + struct.pack("<I", c) + body[12:]
        # (the CRC covers the ports: they stay as built, so it stays right)
        out.append(pk(frm, SA if frm == CA else CA, P_SCTP, l4, [], None, hot=[14]))

    init = lambda t, tg: chunk(t, 0, struct.pack("!IIHHI", tg, 65535, 10, 10, 1))  # noqa: E731
    data = chunk(0, 3, struct.pack("!IHHI", 1, 0, 0, 0) + b"hello")
    style = r.choice(["full", "full", "init", "hb", "ootb"])
    if style in ("full", "init"):
        send(CA, 0, init(1, tag[CA]))
        if style == "full":
            send(SA, tag[CA], init(2, tag[SA]))
            send(CA, tag[SA], chunk(10, 0, b"cookie!!"))
            send(SA, tag[CA], chunk(11))
            for _ in range(r.randrange(0, 4)):
                frm = r.choice([CA, SA])
                send(frm, tag[SA if frm == CA else CA], r.choice([data, chunk(3, 0, bytes(12)), chunk(4, 0, bytes(8)),
                                                                chunk(5, 0, bytes(8))]))
            end = r.choice(["shutdown", "abort", "abort_t", "none"])
            if end == "shutdown":
                send(CA, tag[SA], chunk(7, 0, b"\0\0\0\1"))
                send(SA, tag[CA], chunk(8))
                send(CA, tag[SA], chunk(14))
            elif end == "abort":
                send(CA, tag[SA], chunk(6))
            elif end == "abort_t":
                send(CA, tag[CA], chunk(6, 1))
    elif style == "hb":
        send(CA, tag[CA], chunk(4, 0, bytes(8)))
        send(SA, tag[SA], chunk(5, 0, bytes(8)))
        send(CA, tag[CA], data)
    else:
        send(CA, tag[CA], r.choice([chunk(8), chunk(6), chunk(11), chunk(14, 1), chunk(r.randrange(256))]))
    return out


def dccp_conv(r, fam, pk):
    seq = {CA: r.getrandbits(40), SA: r.getrandbits(40)}
    out = []

    def send(frm, ptype, x=1, cscov=0, data=b""):
        to = SA if frm == CA else CA
        hdr = struct.pack("!HHBBH", 1 if frm == CA else 2, 2 if frm == CA else 1, 0, cscov, 0)
        b8 = (ptype << 1) | x
        hdr += struct.pack("!BBHI", b8, 0, seq[frm] >> 32, seq[frm] & M32) if x else \
            struct.pack("!BBH", b8, (seq[frm] >> 16) & 0xFF, seq[frm] & 0xFFFF)
        if ptype not in (0, 2):
            hdr += struct.pack("!HHI", 0, seq[to] >> 32, seq[to] & M32)
        if ptype in (0, 1):
            hdr += struct.pack("!I", 42)
        elif ptype == 7:
            hdr += bytes([2, 0, 0, 0])
        hdr += b"\0" * (-len(hdr) % 4)
        l4 = hdr[:4] + bytes([len(hdr) // 4]) + hdr[5:] + data
        cover = (cscov - 1) * 4 if cscov else None
        out.append(pk(frm, to, P_DCCP, l4, [(0, CP if frm == CA else SP), (2, SP if frm == CA else CP)], 6,
                      cover=cover, hot=[4, 5, 8]))
        seq[frm] = (seq[frm] + 1) % 2**48

    if r.random() < 0.8:
        send(CA, 0)
        send(SA, 1)
        send(CA, 3)
    for _ in range(r.randrange(0, 4)):
        send(r.choice([CA, SA]), r.randrange(10), x=r.choice([1, 1, 0]), cscov=r.choice([0, 0, 1, 3]),
             data=b"x" * r.choice([0, 4, 9]))
    end = r.choice(["close", "closereq", "reset", "none"])
    if end == "close":
        send(CA, 6)
        send(SA, 7)
    elif end == "closereq":
        send(SA, 5)
        send(CA, 6)
        send(SA, 7)
    elif end == "reset":
        send(r.choice([CA, SA]), 7)
    return out


def gre_conv(r, fam, pk):
    out = []
    v1 = r.random() < 0.6
    call = {CA: r.randrange(65536), SA: r.randrange(65536)}
    for _ in range(r.randrange(1, 5)):
        frm = r.choice([CA, SA])
        if v1:
            l4 = struct.pack("!HHHH", 0x3001 if r.random() < 0.5 else 0x2001, 0x880B if r.random() < 0.95 else 0x0800,
                             8, call[SA if frm == CA else CA]) + (struct.pack("!I", r.getrandbits(32))
                                                                  if r.random() < 0.5 else b"") + bytes(8)
        else:
            l4 = bytes(dpkt.gre.GRE(flags=0, p=0x0800)) + bytes(20)
        out.append(pk(frm, SA if frm == CA else CA, P_GRE, l4, [], None, hot=[0, 2]))
    return out


def other_conv(r, fam, pk):
    proto = r.choice([50, 51, 253, 254, 0, 4, 41, 255, 59, r.randrange(256)])
    return [pk(r.choice([CA, SA]), r.choice([CA, SA]), proto, bytes(r.getrandbits(8) for _ in range(r.randrange(0, 40))),
               [], None) for _ in range(r.randrange(1, 4))]


def error_conv(r, fam, pk):
    """A packet of a flow, then ICMP errors quoting it (from the server or a router)."""
    base = r.choice([tcp_conv, udp_conv, icmp_conv, sctp_conv, gre_conv, dccp_conv])(r, fam, pk)
    if not base:
        return []
    out = list(base)
    for _ in range(r.randrange(1, 3)):
        q = r.choice(base)
        if not any(role == CA and off == (14 if fam == 4 else 22) for off, role, cs in q.fields):
            continue        # quote packets the client sent (the error goes back to the client)
        n = r.choice([len(q.ip), 28, 48, 68, 8, 40])
        inner = q.ip[:n]
        router = r.random() < 0.5
        if fam == 4:
            t = r.choice([3, 3, 11, 12, 4, 5])
            l4 = struct.pack("!BBHI", t, r.choice([0, 1, 3, 4]), 0, 1500 if t == 3 else 0) + inner
        else:
            t = r.choice([1, 1, 2, 3, 4])
            l4 = struct.pack("!BBHI", t, r.choice([0, 1, 4]), 0, 1280 if t == 2 else 0) + inner
        inner_fields = [(8 + off, role) for off, role, cs in q.fields if 8 + off + 2 <= len(l4) and role in (CA, SA, CP, SP)]
        p = pk(SA, CA, P_ICMP if fam == 4 else P_ICMP6, l4, inner_fields, 2, pseudo_sum=fam == 6,
               src=ROUTER[fam] if router else None, hot=[0, 8, 10])
        if router:
            p.fields = [f for f in p.fields if not (f[1] == SA and f[0] in (14, 22))]
        out.append(p)
    if fam == 6 and r.random() < 0.3:                 # a redirect from the link-local router
        q = base[0]
        inner = q.ip[:(min(len(q.ip), 200) // 8) * 8]
        opt = bytes([4, 1 + len(inner) // 8]) + bytes(6) + inner
        l4 = struct.pack("!BBHI", 137, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, "2001:db8::99") + HOST[6][1] + opt
        out.append(pk(None, CA, P_ICMP6, l4, [], 2, src=ROUTER[6], hlim=r.choice([255, 255, 64])))
    return out


def odd_conv(r, fam, pk):
    """A datagram in 130 fragments sent so that they form more than 128 runs (marked with a tag
    for build_corpus, which cuts it)."""
    p = pk(CA, SA, P_UDP, struct.pack("!HHHH", 1, 2, 8 + 130 * 8, 0) + bytes(130 * 8), [], None, exts=())
    p.hot.append(-130)                     # (many runs: see build_corpus)
    return [p]


def many_runs(r, p: IPPkt) -> list[IPPkt]:
    """Fragments of 8 bytes, the even ones first: every one a run of its own."""
    frags = fragments(random.Random(0), p, size=8, op="none")
    return frags[0::2] + frags[1::2]


CONVS = [(odd_conv, 1), (tcp_conv, 30), (udp_conv, 14), (icmp_conv, 8), (error_conv, 10), (sctp_conv, 8), (dccp_conv, 6),
         (gre_conv, 5), (other_conv, 5), (nd_conv, 2)]


def fragments(r, p: IPPkt, size=None, op=None) -> list[IPPkt]:
    """The packet cut into fragments (addresses stay rewritable; ports, in the datagram, do not)."""
    if p.fam == 4:
        ihl = (p.ip[0] & 15) * 4
        hdr, data = bytearray(p.ip[:ihl]), p.ip[ihl:]
        ident = r.randrange(65536)
    else:
        hdr, data = bytearray(p.ip[:40]), p.ip[40:]
        ident = r.getrandbits(32)
    sizes = []
    left = len(data)
    while left > 0:
        n = min(left, size or r.choice([8, 8, 16, 24, 48, 64, 1480]))
        sizes.append(n)
        left -= n
    out, off = [], 0
    for k, n in enumerate(sizes):
        piece = data[off:off + n]
        more = off + n < len(data)
        if p.fam == 4:
            h = bytearray(hdr)
            struct.pack_into("!HHH", h, 2, ihl + n, ident, (0x2000 if more else 0) | (off // 8))
            h[10:12] = b"\0\0"
            h[10:12] = struct.pack("!H", inet_csum(bytes(h)))
            ip = bytes(h) + piece
            fields = [(o, role, (10,)) for o, role, cs in p.fields if o < 20]
        else:
            h = bytearray(hdr)
            fh = struct.pack("!BBHI", hdr[6], 0, (off & 0xFFF8) | more, ident)
            h[6] = 44
            struct.pack_into("!H", h, 4, 8 + n)
            ip = bytes(h) + fh + piece
            fields = [(o, role, ()) for o, role, cs in p.fields if o < 40]
        out.append(IPPkt(p.fam, ip, fields, [2, 4, 6] if p.fam == 4 else [4, 42, 44]))
        off += n
    op = op or r.choice(["none", "none", "reverse", "dup", "drop", "overlap", "shuffle"])
    if op == "reverse":
        out.reverse()
    elif op == "dup":
        k = r.randrange(len(out))
        out.insert(k, out[k])
    elif op == "drop" and len(out) > 1:
        del out[r.randrange(len(out))]
    elif op == "overlap" and len(out) > 1:
        q = out[-1]
        b = bytearray(q.ip)
        pos = 6 if q.fam == 4 else 42
        w = struct.unpack_from("!H", b, pos)[0]
        struct.pack_into("!H", b, pos, (w & 0xE000) | max(0, (w & 0x1FFF) - 1) if q.fam == 4 else
                         (w & 7) | max(0, (w & 0xFFF8) - 8))
        if q.fam == 4:
            b[10:12] = b"\0\0"
            b[10:12] = struct.pack("!H", inet_csum(bytes(b[:(b[0] & 15) * 4])))
        out[-1] = IPPkt(q.fam, bytes(b), q.fields, q.hot)
    elif op == "shuffle":
        r.shuffle(out)
    return out


# ---- link layers: one interface per variant ----

def _tlv(t, v):
    o = struct.pack("<HH", 4 + len(v), t) + v
    return o + b"\0" * (-len(o) % 4)


def _eth(tags=(), fcs=False):
    def wrap(fam, ip):
        eth = bytes(dpkt.ethernet.Ethernet(dst=b"\x02\0\0\0\0\x01", src=b"\x02\0\0\0\0\x02",
                                           type=0x0800 if fam == 4 else 0x86DD))[:12]
        hdr = eth + b"".join(struct.pack("!HH", tp, vid) for tp, vid in tags) + \
            struct.pack("!H", 0x0800 if fam == 4 else 0x86DD)
        frame = hdr + ip
        if fcs:
            frame += struct.pack("<I", zlib.crc32(frame))
        return frame, len(hdr)
    return wrap


def _sll(fam, ip):
    hdr = bytes(dpkt.sll.SLL(type=0, hrd=1, hlen=6, hdr=b"\x02\0\0\0\0\x01\0\0",
                             ethtype=0x0800 if fam == 4 else 0x86DD))
    return hdr + ip, len(hdr)


def _sll2(fam, ip):
    hdr = struct.pack("!HHIHBB8s", 0x0800 if fam == 4 else 0x86DD, 0, 3, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0")
    return hdr + ip, len(hdr)


def _raw(fam, ip):
    return ip, 0


def _null(order, af6):
    def wrap(fam, ip):
        return struct.pack(order + "I", 2 if fam == 4 else af6) + ip, 4
    return wrap


def _nflog(fam, ip):
    hdr = struct.pack("!BBH", 2 if fam == 4 else 10, 0, 7) + _tlv(1, struct.pack("!HBB", 0x0800, 3, 0)) + \
        _tlv(10, b"fuzz\0")
    return hdr + struct.pack("<HH", 4 + len(ip), 9) + ip + b"\0" * (-len(ip) % 4), len(hdr) + 4


# (link type, FCS bytes, wrapper, weight, families)
IFACES = [
    (1, 0, _eth(), 20, (4, 6)), (1, 0, _eth(((0x8100, 10),)), 6, (4, 6)),
    (1, 0, _eth(((0x88A8, 100), (0x8100, 20))), 4, (4, 6)), (1, 0, _eth(((0x9100, 7), (0x8100, 8), (0x8100, 9))), 2, (4, 6)),
    (1, 4, _eth(fcs=True), 3, (4, 6)), (113, 0, _sll, 4, (4, 6)), (276, 0, _sll2, 4, (4, 6)), (101, 0, _raw, 4, (4, 6)),
    (228, 0, _raw, 3, (4,)), (229, 0, _raw, 3, (6,)), (0, 0, _null("<", 10), 2, (4, 6)), (0, 0, _null(">", 28), 1, (4, 6)),
    (108, 0, _null(">", 30), 2, (4, 6)), (239, 0, _nflog, 3, (4, 6)), (147, 0, _raw, 1, (4, 6)),
]
IF_LT = np.array([i[0] for i in IFACES], dtype=np.uint32)
IF_FCS = np.array([i[1] for i in IFACES], dtype=np.uint32)


@dataclass
class Corpus:
    mat: np.ndarray          # uint8 [T, L]
    length: np.ndarray       # captured bytes of each template
    wire: np.ndarray
    iface: np.ndarray
    f_off: np.ndarray        # int32 [T, NF]: field offsets in the frame (-1 none)
    f_role: np.ndarray       # int8 [T, NF]
    f_cov: np.ndarray        # uint8 [T, NF]: bit k set when field j is covered by checksum k
    cs_off: np.ndarray       # int32 [T, 3]: the template's checksum offsets (-1 none)
    hot: np.ndarray          # int32 [T, NH]: offsets of header fields to break (-1 none)
    conv_first: np.ndarray   # first template of each conversation
    conv_len: np.ndarray


NF, NH = 16, 8


def build_corpus(seed: int, n_convs: int = 1500) -> Corpus:
    r = random.Random(seed)
    frames = []                  # (frame, wire, iface, fields, hot)
    conv_first, conv_len = [], []
    weights = [w for _, w in CONVS]
    if_weights = [i[3] for i in IFACES]
    for _ in range(n_convs):
        fam = 4 if r.random() < 0.65 else 6
        gen = r.choices([g for g, _ in CONVS], weights)[0]
        if gen is nd_conv:
            fam = 6
        opts = b""
        exts = ()
        if fam == 4 and r.random() < 0.15:
            opts = r.choice([b"\x01\x01\x01\x00", b"\x07\x07\x04" + bytes(5), b"\x94\x04\0\0",
                             b"\x44\x0c\x05\x00" + bytes(8), bytes(r.getrandbits(8) for _ in range(r.choice([4, 8, 40])))])
        if fam == 6 and r.random() < 0.25:
            exts = []
            for _ in range(r.randrange(1, 4)):
                kind = r.choice([0, 60, 43, 51, 44])
                if kind == 44:
                    exts.append((44, b"\0\0\0" + struct.pack("!I", r.getrandbits(32))))   # atomic fragment
                elif kind == 51:
                    units = r.choice([1, 4])
                    exts.append((51, bytes([units]) + bytes((units + 2) * 4 - 2)))
                else:
                    units = r.choice([0, 0, 1, 3])
                    exts.append((kind, bytes([units, 1, (units + 1) * 8 - 4]) + bytes((units + 1) * 8 - 4)))

        def pk(src_role, dst_role, proto, l4, l4_fields, csum_at, **kw):
            kw.setdefault("opts", opts)
            kw.setdefault("exts", exts)
            if r.random() < 0.01 and fam == 4:
                kw["ident"] = r.randrange(65536)
            return mk_ip(fam, src_role, dst_role, proto, l4, l4_fields, csum_at, **kw)

        pkts = gen(r, fam, pk)
        if gen is odd_conv and -130 in pkts[0].hot:
            pkts[0].hot.remove(-130)
            pkts = many_runs(r, pkts[0])
        elif r.random() < 0.08:
            fr = []
            for p in pkts:
                fr.extend(fragments(r, p) if r.random() < 0.7 and len(p.ip) > 28 else [p])
            pkts = fr
        choices = [k for k, i in enumerate(IFACES) if fam in i[4]]
        k = r.choices(choices, [if_weights[c] for c in choices])[0]
        wrap = IFACES[k][2]
        if not pkts:
            continue
        conv_first.append(len(frames))
        conv_len.append(len(pkts))
        for p in pkts:
            frame, l3off = wrap(p.fam, p.ip)
            fields = [(l3off + o, role, tuple(l3off + c for c in cs)) for o, role, cs in p.fields]
            hot = [l3off + h for h in p.hot] + ([12, 14] if IFACES[k][0] == 1 else [0, 4])
            frames.append((frame, len(frame), k, fields, hot))
    t = len(frames)
    mat = np.zeros((t, L), dtype=np.uint8)
    length = np.zeros(t, dtype=np.uint32)
    wire = np.zeros(t, dtype=np.uint32)
    iface = np.zeros(t, dtype=np.uint16)
    f_off = np.full((t, NF), -1, dtype=np.int32)
    f_role = np.zeros((t, NF), dtype=np.int8)
    f_cov = np.zeros((t, NF), dtype=np.uint8)
    cs_off = np.full((t, 3), -1, dtype=np.int32)
    hot = np.full((t, NH), -1, dtype=np.int32)
    for i, (frame, w, k, fields, h) in enumerate(frames):
        n = min(len(frame), L)
        mat[i, :n] = np.frombuffer(frame[:n], dtype=np.uint8)
        length[i], wire[i], iface[i] = n, w, k
        fields = [f for f in fields if f[0] + 4 <= n and all(c + 2 <= n for c in f[2])][:NF]
        sums = sorted({c for f in fields for c in f[2]})[:3]
        cs_off[i, :len(sums)] = sums
        for j, (o, role, cs) in enumerate(fields):
            f_off[i, j], f_role[i, j] = o, role
            for c in cs:
                if c in sums:
                    f_cov[i, j] |= 1 << sums.index(c)
        h = [x for x in h if x + 2 <= n][:NH]
        hot[i, :len(h)] = h
    return Corpus(mat, length, wire, iface, f_off, f_role, f_cov, cs_off, hot, np.array(conv_first, dtype=np.int64),
                  np.array(conv_len, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# batches (numpy only)

def _rd16(flat, pos):
    return (flat[pos].astype(np.int64) << 8) | flat[pos + 1]


def _wr16(flat, pos, val):
    flat[pos] = (val >> 8) & 0xFF
    flat[pos + 1] = val & 0xFF


@dataclass
class EpochConfig:
    kw: dict
    flows: int
    mut_rate: float
    rand_rate: float
    zone_from_vlan: bool
    dt_ns: int


def epoch_config(seed, epoch, max_conns):
    rng = np.random.default_rng([seed, epoch, 0xC0F])
    mc = int(max_conns) if max_conns else int(rng.choice([1, 2, 16, 256, 4096, 65536, 262144, 1 << 20]))
    sc = {}
    if rng.random() < 0.4:
        sc["nf_conntrack_checksum"] = 1
    if rng.random() < 0.2:
        sc["nf_conntrack_tcp_loose"] = 0
    if rng.random() < 0.2:
        sc["nf_conntrack_tcp_be_liberal"] = 1
    if rng.random() < 0.2:
        sc["nf_conntrack_tcp_ignore_invalid_rst"] = 1
    if rng.random() < 0.2:
        sc["nf_conntrack_tcp_max_retrans"] = int(rng.choice([0, 1, 255]))
    if rng.random() < 0.2:
        sc[str(rng.choice(["nf_conntrack_udp_timeout", "nf_conntrack_tcp_timeout_established",
                           "nf_conntrack_icmp_timeout", "nf_conntrack_generic_timeout",
                           "nf_conntrack_tcp_timeout_syn_sent", "nf_conntrack_frag6_timeout"]))] = \
            int(rng.choice([0, 1, 5, 86400]))
    kw = {"max_conns": mc, "seed": int(rng.integers(0, 2**32)), "early_drop": bool(rng.random() < 0.7),
          "dccp_tracker": bool(rng.random() < 0.4), "sysctl": sc}
    if rng.random() < 0.2:
        kw["zone_limits"] = {int(z): int(rng.integers(1, 50)) for z in rng.choice([0, 1, 2, 7], size=2)}
        if rng.random() < 0.5:
            kw["zone_limits"]["default"] = int(rng.integers(1, 1000))
    if rng.random() < 0.2:
        kw["timeout_policies"] = {int(rng.integers(0, 3)): {"udp_timeout": int(rng.choice([0, 1, 3])),
                                                            "tcp_timeout_established": int(rng.choice([1, 10]))}}
    if rng.random() < 0.35:
        kw["nat"], kw["interfaces"] = random_nat(rng)
    flows = int(rng.choice([4, 64, 4096, 100_000, 1_000_000]))
    if mc >= 65536 and rng.random() < 0.6:
        flows = int(rng.choice([100_000, 1_000_000, 4_000_000]))      # (a large table fills and grows)
    return EpochConfig(kw, flows, float(rng.choice([0.05, 0.2, 0.5, 1.0, 1.0])), float(rng.choice([0.01, 0.05, 0.1])),
                       bool(rng.random() < 0.25), int(rng.choice([1_000, 100_000, 10_000_000, 300_000_000])))


def random_nat(rng):
    """NAT rules for an epoch (every action, small port ranges so that they run out), and the
    interface addresses redirect needs (sometimes none: those packets are dropped)."""
    from fastct.nat import NatRule
    rules = []
    lo = int(rng.integers(1024, 60000))
    if rng.random() < 0.6:
        rules.append(NatRule(action="dnat", proto=str(rng.choice(["tcp", "udp"])), dport=(0, 40000),
                             to_min="10.0.0.9", to_max=str(rng.choice(["10.0.0.9", "10.0.0.12"])),
                             to_ports=(lo, lo + int(rng.choice([0, 3, 500])))))
    if rng.random() < 0.3:
        rules.append(NatRule(action="redirect", proto="tcp", to_ports=8080))
    if rng.random() < 0.7:
        flags = [str(f) for f in rng.choice(["persistent", "random", "fully-random"], size=int(rng.integers(0, 2)))]
        rules.append(NatRule(action="snat", to_min="203.0.113.1",
                             to_max=str(rng.choice(["203.0.113.1", "203.0.113.4"])),
                             to_ports=None if rng.random() < 0.4 else (lo, lo + int(rng.choice([0, 7, 1000]))),
                             flags=frozenset(flags)))
    if rng.random() < 0.5:
        rules.append(NatRule(action="masquerade", l3=6, to_min="2001:db8::1"))
    if rng.random() < 0.3:
        rules.append(NatRule(action="notrack", proto="udp", dport=53))
    if rng.random() < 0.2:
        rules.append(NatRule(action="accept", stage="postrouting", dst="192.168.0.0/16"))
    interfaces = {0: ["192.168.1.1", "fd00::1"]} if rng.random() < 0.7 else {}
    return rules, interfaces


def batch_params(seed, epoch, b, r):
    rng = np.random.default_rng([seed, epoch, b, r, 0xBA7])
    return {"zone": int(rng.choice([0, 0, 0, 1, 2, 7])), "commit": bool(rng.random() < 0.93)}


def instantiate(cp: Corpus, cfg: EpochConfig, seed, epoch, b, n):
    """Clean traffic for batch b of an epoch: (matrix [n, L], caplen, wirelen, iface, templates)."""
    rng = np.random.default_rng([seed, epoch, b])
    # conversations instantiated on flows, interleaved
    m = int(n / max(1.0, float(cp.conv_len.mean())) * 1.3) + 8
    conv = rng.integers(0, len(cp.conv_first), m)
    while cp.conv_len[conv].sum() < n:
        conv = np.concatenate([conv, rng.integers(0, len(cp.conv_first), m)])
    lens = cp.conv_len[conv]
    ends = np.cumsum(lens)
    m = int(np.searchsorted(ends, n)) + 1
    conv, lens = conv[:m], lens[:m]
    inst = np.repeat(np.arange(m), lens)[:n]
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    k = np.arange(len(inst)) - starts[inst]
    tmpl = cp.conv_first[conv[inst]] + k
    key = rng.random(m)[inst] * n + k * rng.choice([0.0, 1.0, 5.0, 50.0], m)[inst] + rng.random(len(inst)) * 0.5
    order = np.argsort(key, kind="stable")
    tmpl, inst = tmpl[order], inst[order]
    mat = cp.mat[tmpl]                                   # a copy
    caplen = cp.length[tmpl].astype(np.int64)
    wire = cp.wire[tmpl].astype(np.int64)
    iface = cp.iface[tmpl].astype(np.int64)
    # flows: addresses (low 16 bits), ports, sequence offsets
    flow = (rng.zipf(1.3, m) % cfg.flows if rng.random() < 0.5 else rng.integers(0, cfg.flows, m))[inst]
    vals = [(flow % 251) + 1, ((flow // 251) % 4093) + 1, 1024 + (flow * 7919) % 64000,
            np.array([80, 443, 53, 5000, 1, 65535])[flow % 6]]
    seqoff = [rng.integers(0, 2**32, m)[inst], rng.integers(0, 2**32, m)[inst]]
    # Every field of every row at once ([n, NF] arrays), then each row's (at most 3) checksums updated
    # by the sum of its fields' changes (RFC 1624 eq. 3; one's complement sums are associative).
    flat = mat.reshape(-1)
    off = cp.f_off[tmpl]
    role = cp.f_role[tmpl].astype(np.int64)
    valid = off >= 0
    rv, jv = np.nonzero(valid)
    rl = role[rv, jv]
    pos = rv * L + off[rv, jv]
    table = np.stack([vals[0], vals[1], vals[2], vals[3]]).astype(np.int64)
    seq = np.stack(seqoff).astype(np.int64)
    is32 = rl >= 4
    delta = np.zeros(len(rv), dtype=np.int64)
    p16, r16 = pos[~is32], rv[~is32]
    new16 = table[rl[~is32], r16]
    old16 = _rd16(flat, p16)
    _wr16(flat, p16, new16)
    delta[~is32] = ((~old16) & 0xFFFF) + new16
    p32, r32 = pos[is32], rv[is32]
    hi, lo = _rd16(flat, p32), _rd16(flat, p32 + 2)
    new32 = (((hi << 16) | lo) + seq[rl[is32] - 4, r32]) & M32
    _wr16(flat, p32, new32 >> 16)
    _wr16(flat, p32 + 2, new32 & 0xFFFF)
    delta[is32] = ((~hi) & 0xFFFF) + (new32 >> 16) + ((~lo) & 0xFFFF) + (new32 & 0xFFFF)
    dense = np.zeros((n, NF), dtype=np.int64)
    dense[rv, jv] = delta
    cov = cp.f_cov[tmpl]
    sums = np.stack([np.where(cov & (1 << k), dense, 0).sum(axis=1) for k in range(3)], axis=1)
    cso = cp.cs_off[tmpl]
    cr, ck = np.nonzero((cso >= 0) & (sums > 0))
    cpos = cr * L + cso[cr, ck]
    x = ((~_rd16(flat, cpos)) & 0xFFFF) + sums[cr, ck]
    while (x >> 16).any():
        x = (x & 0xFFFF) + (x >> 16)
    _wr16(flat, cpos, (~x) & 0xFFFF)
    return mat, caplen, wire, iface, tmpl


def make_batch(cp: Corpus, cfg: EpochConfig, seed, epoch, b, r, clean, t0):
    """Replay r of batch b's clean traffic, mutated: (matrix [n, L], caplen, wirelen, ts, iface).
    A replay after the first comes either right after it (retransmissions, packets of connections
    that exist) or an hour later (the same tuples over dead entries, which are rebuilt in place)."""
    rng = np.random.default_rng([seed, epoch, b, r])
    mat, caplen, wire, iface = clean[0].copy(), clean[1].copy(), clean[2].copy(), clean[3].copy()
    tmpl = clean[4]
    n = len(caplen)
    rows = np.arange(n)
    flat = mat.reshape(-1)
    if r and rng.random() < 0.5:
        t0 += 3600 * SEC
    # mutations
    mut = rng.random(n) < cfg.mut_rate
    nm = int(mut.sum())
    if nm:
        mr = rows[mut]
        kind = rng.integers(0, 10, nm)
        # bit flips (1-4) and bytes set anywhere in the frame
        for rep in range(4):
            s = mr[(kind <= 3) & (rng.random(nm) < 1.0 / (rep + 1))]
            if len(s):
                pos = s * L + (rng.random(len(s)) * np.maximum(caplen[s], 1)).astype(np.int64)
                flat[pos] ^= (1 << rng.integers(0, 8, len(s))).astype(np.uint8)
        s = mr[kind == 4]
        if len(s):
            pos = s * L + (rng.random(len(s)) * np.maximum(caplen[s], 1)).astype(np.int64)
            flat[pos] = rng.integers(0, 256, len(s), dtype=np.uint8)
        # header / length fields set to boundary values
        s = mr[(kind == 5) | (kind == 6)]
        if len(s):
            h = cp.hot[tmpl[s], rng.integers(0, NH, len(s))]
            ok = h >= 0
            s, h = s[ok], h[ok]
            v = np.where(rng.random(len(s)) < 0.6,
                         np.array([0, 1, 4, 8, 20, 40, 0x45, 0x60, 0x2000, 0x3FFF, 0x7FFF, 0xFFFF])[
                             rng.integers(0, 12, len(s))],
                         rng.integers(0, 65536, len(s)))
            _wr16(flat, s * L + h, v)
        # cut (wire = what is left, or the whole frame: a snaplen capture)
        s = mr[kind == 7]
        if len(s):
            cut = (rng.random(len(s)) * (caplen[s] + 1)).astype(np.int64)
            snap = rng.random(len(s)) < 0.5
            wire[s] = np.where(snap, wire[s], cut)
            caplen[s] = cut
        # wrong wire length
        s = mr[kind == 8]
        if len(s):
            wire[s] = np.array([0, 1, 60, 65535, 70000, M32])[rng.integers(0, 6, len(s))]
        # another frame's tail spliced in, or another link type
        s = mr[kind == 9]
        if len(s):
            donor = rng.integers(0, n, len(s))
            at = (rng.random(len(s)) * np.maximum(caplen[s], 1)).astype(np.int64)
            for r_, d_, a_ in zip(s[:512].tolist(), donor[:512].tolist(), at[:512].tolist()):
                mat[r_, a_:] = mat[d_, a_:]
            caplen[s] = np.maximum(caplen[s], caplen[donor])
            relabel = s[rng.random(len(s)) < 0.5]
            iface[relabel] = rng.integers(0, len(IFACES), len(relabel))
    # random frames
    rr = rows[rng.random(n) < cfg.rand_rate]
    if len(rr):
        mat[rr] = rng.integers(0, 256, (len(rr), L), dtype=np.uint8)
        caplen[rr] = rng.integers(0, L + 1, len(rr))
        wire[rr] = caplen[rr] + rng.integers(0, 3, len(rr)) * rng.integers(0, 100, len(rr))
        iface[rr] = rng.integers(0, len(IFACES), len(rr))
    # times: steps from the epoch's scale, some jumps, a few going back
    dt = rng.integers(0, cfg.dt_ns + 1, n)
    jump = rng.random(n) < 0.0005
    dt[jump] = rng.choice([40 * SEC, 400 * SEC, 5000 * SEC], int(jump.sum()))
    ts = t0 + np.cumsum(dt)
    back = rng.random(n) < 0.001
    ts[back] -= rng.integers(0, 10 * SEC, int(back.sum()))
    changed = mut.copy()
    changed[rr] = True
    make_batch.changed = int(changed.sum())          # (mutated or random frames, for the summary)
    return mat, caplen.astype(np.uint32), np.minimum(wire, M32).astype(np.uint32), ts.astype(np.int64), \
        iface.astype(np.uint16)


class GuardedBuffer:
    """Each packet at the end of its own page, with an inaccessible page before and after it."""

    def __init__(self, n):
        self.n = n
        self.map = mmap.mmap(-1, (2 * n + 1) * PAGE)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for i in range(n + 1):
            if self.libc.mprotect(self.addr + 2 * i * PAGE, PAGE, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect failed")
        self.arr = np.frombuffer(self.map, dtype=np.uint8)

    def batch(self, mat, caplen, wirelen, ts, iface):
        offsets = np.empty(self.n, dtype=np.int64)
        for i in range(self.n):
            c = int(caplen[i])
            end = (2 * i + 2) * PAGE
            offsets[i] = end - c
            if c:
                self.arr[end - c:end] = mat[i, :c]
        return Batch(self.arr, offsets, caplen, wirelen, ts, iface, IF_LT, IF_FCS)


# ---------------------------------------------------------------------------------------------
# checks

STATUS_CONFIRMED, STATUS_SEEN_REPLY, STATUS_ASSURED = STATUS_BITS["CONFIRMED"], STATUS_BITS["SEEN_REPLY"], \
    STATUS_BITS["ASSURED"]
NAT_STATUS = STATUS_BITS["SRC_NAT"] | STATUS_BITS["DST_NAT"] | STATUS_BITS["SRC_NAT_DONE"] | STATUS_BITS["DST_NAT_DONE"]


class Problem(Exception):
    pass


def need(cond, what):
    if not cond:
        raise Problem(what)


def snapshot(t):
    e = t._engine
    s = dict(zip(STAT_NAMES, (int(v) for v in e.stats_array())))
    s["_lt"] = int(t.linktype_skipped.sum())
    return s, e.reasons_array().astype(np.int64)


def check_batch(t, res, n, before, commit, count_before):
    (s0, r0), (s1, r1) = before, snapshot(t)
    d = {k: s1[k] - s0[k] for k in s1}
    st = res.ct_state[:n]
    need(LEGAL[st].all(), f"illegal ct_state values {sorted(set(st[~LEGAL[st]].tolist()))}")
    need(d["packets"] == n, f"packets counter +{d['packets']} for {n} packets")
    held = res.held[:n]
    need(not st[held].any(), "a held fragment has a ct_state")
    need(int(held.sum()) == d["frag_held"], "held fragments and frag_held disagree")
    zero = int((st == 0).sum())
    need(zero == d["non_ip"] + d["untracked"] + d["linktype_skipped"] + d["frag_held"],
         f"{zero} packets with ct_state 0, counters {d}")
    inv = int(((st & INV) != 0).sum())
    need(inv == d["invalid"] + d["error"] + d["frag_dropped"] + d["drop"], f"{inv} inv packets, counters {d}")
    need(inv == int((r1 - r0)[1:].sum()), "inv packets and per-reason counts disagree")
    need(d["linktype_skipped"] == d["_lt"], "skipped frames and per-link-type counts disagree")
    tracked = ((st & TRK) != 0) & ((st & INV) == 0)
    entry, direction = res.entry[:n], res.direction[:n]
    count = t._engine.count
    need((entry[~tracked] == -1).all(), "an untracked or invalid packet names an entry")
    if commit:
        if not (d["early_drop"] or d["insert_failed"] or d["expired"]):
            # (a packet's connection that a later packet evicted to make room has entry -1)
            need((entry[tracked] >= 0).all(), "a tracked packet names no entry")
    else:
        need(((st[tracked & (entry < 0)] & (0xFF ^ NAT_BITS)) == TRK | NEW).all() and d["insert"] == 0
             and count <= count_before,
             "commit=False stored something")
    need((entry < count).all(), "a packet names an entry past the table")
    need((direction <= 1).all(), "direction > 1")
    need(((direction[tracked] == 1) == ((st[tracked] & RPL) != 0)).all(), "direction and rpl disagree")
    need(d["insert"] <= int(((st & (0xFF ^ NAT_BITS)) == TRK | NEW).sum()), "more inserts than new packets")
    return st


def check_table(t, zone_from_vlan, zones):
    eng = t._engine
    probs = eng.check_invariants()
    need(probs == [], f"check_invariants: {probs[:5]} ({len(probs)} problems)")
    need(eng.count <= eng.max_conns, "more entries than max_conns")
    v, c = eng.entries_view(), eng.cold_view()
    if not len(v):
        return
    l3, proto = v["l3"], v["proto"]
    need(np.isin(l3, [2, 10]).all(), "l3 not 2 or 10")
    v4 = l3 == 2
    need(not v["src"][v4, 4:].any() and not v["dst"][v4, 4:].any(), "IPv4 entry with address junk")
    need(not ((proto == P_ICMP) & ~v4).any() and not ((proto == P_ICMP6) & v4).any(), "ICMP in the wrong family")
    need(np.isin(v["dport"][proto == P_ICMP] >> 8, [8, 13, 15, 17]).all(), "ICMP entry of a non-request type")
    need(np.isin(v["dport"][proto == P_ICMP6] >> 8, [128, 139]).all(), "ICMPv6 entry of a non-request type")
    ported = [P_TCP, P_UDP, P_SCTP, P_UDPLITE, P_ICMP, P_ICMP6, P_GRE] + ([P_DCCP] if t._dccp_tracker else [])
    gen = ~np.isin(proto, ported)
    need(not v["sport"][gen].any() and not v["dport"][gen].any(), "ports on a generic entry")
    need(not v["sport"][proto == P_GRE].any(), "GRE source key set")
    zs = v["zone"]
    need((zs < 4096).all() if zone_from_vlan else np.isin(zs, list(zones)).all(), "entry in an unexpected zone")
    need((v["state"][proto == P_TCP] < len(TCP_STATES)).all(), "TCP state out of range")
    need((v["state"][proto == P_SCTP] < len(SCTP_STATES)).all(), "SCTP state out of range")
    if t._dccp_tracker:
        need((v["state"][proto == P_DCCP] < len(DCCP_STATES)).all(), "DCCP state out of range")
    status = v["status"].astype(np.int64)
    need((status & STATUS_CONFIRMED).all(), "entry not CONFIRMED")
    if t.nat is None:
        need(not (status & NAT_STATUS).any(), "NAT status bits without NAT rules")
    assured = (status & STATUS_ASSURED) != 0
    need((status[assured] & STATUS_SEEN_REPLY).all(), "ASSURED without SEEN_REPLY")
    now = t.now
    live = v["expires"] > now
    counts = full_counters(v, c)
    pk, by = counts["packets"].astype(np.int64), counts["bytes"].astype(np.int64)
    need((pk[live].sum(axis=1) >= 1).all(), "a live entry that counted no packet")
    need((by >= pk * np.where(v4, 20, 40)[:, None]).all(), "fewer bytes than IP headers")
    need((by <= pk * 131072).all(), "more bytes than the largest datagram")
    need((v["last_seen"][live] <= now).all(), "last_seen in the future")
    need((c["start"][live] <= v["last_seen"][live]).all(), "start after last_seen")
    need((v["expires"][live] >= v["last_seen"][live]).all(), "expires before last_seen")
    zc = eng.zone_counts()
    if zc is not None:
        need(np.array_equal(zc, np.bincount(zs, minlength=65536).astype(zc.dtype)), "zone counts wrong")
        lim = t.zone_limits
        for z in np.unique(zs).tolist():
            lz = lim.get(z, lim.get("default", 0))
            need(not lz or zc[z] <= lz, f"zone {z} over its limit")


# ---------------------------------------------------------------------------------------------
# reproducers

def write_pcapng(path, batches):
    """batches: list of (mat, caplen, wirelen, ts, iface); one IDB per IFACES entry (ns timestamps)."""
    e = "<"

    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        return struct.pack(e + "II", btype, 12 + len(body)) + body + struct.pack(e + "I", 12 + len(body))

    with open(path, "wb") as fh:
        fh.write(block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for lt, fcs in zip(IF_LT.tolist(), IF_FCS.tolist()):
            opts = struct.pack(e + "HHB3x", 9, 1, 9) + struct.pack(e + "HHB3x", 13, 1, fcs) + struct.pack(e + "HH", 0, 0)
            fh.write(block(1, struct.pack(e + "HHI", lt, 0, 0) + opts))
        for mat, caplen, wirelen, ts, iface in batches:
            for i in range(len(caplen)):
                c = int(caplen[i])
                tk = int(ts[i]) & 0xFFFFFFFFFFFFFFFF
                fh.write(block(6, struct.pack(e + "IIIII", int(iface[i]), tk >> 32, tk & M32, c, int(wirelen[i])) +
                               mat[i, :c].tobytes()))


# ---------------------------------------------------------------------------------------------
# the run

def plan(args):
    """(epoch, batch, replay, packets, guarded) for every engine call of the run."""
    out, done, epoch, b = [], 0, 0, 0
    while done < args.packets:
        guarded = bool(args.guard_every) and b % args.guard_every == args.guard_every - 1
        n = args.guard_batch if guarded else args.batch
        for r in range(1 if guarded else args.replays):
            k = min(n, args.packets - done)
            if k <= 0:
                break
            out.append((epoch, b, r, k, guarded))
            done += k
        b += 1
        if b == args.epoch_batches:
            epoch, b = epoch + 1, 0
    return out


def emit(args, kind, text):
    """A line for the watching process (--worker) or for the user."""
    if args.worker:
        print(f"{kind} {text}", flush=True)
    elif kind == "P":
        print(f"problem in epoch/batch {text}", file=sys.stderr, flush=True)
    elif kind == "I":
        print(text, flush=True)


def worker(args):
    """Run the batches; 0, or 1 after emitting the problem ("P epoch batch why")."""
    cp = build_corpus(args.seed)
    steps = plan(args)
    if args.only_epoch is not None:
        steps = [s for s in steps if s[0] == args.only_epoch and (args.until_batch is None or s[1] <= args.until_batch)]
    guard = GuardedBuffer(args.guard_batch) if any(s[3] for s in steps) else None
    tot = {"packets": 0, "states": np.zeros(256, dtype=np.int64), "reasons": np.zeros(len(REASONS), dtype=np.int64),
           "checks": 0, "max_entries": 0, "epochs": 0, "changed": 0}
    t = cfg = None
    cur_epoch = -1
    zones = set()
    t_start = time.perf_counter()
    last_report = 0
    clean = None
    for idx, (epoch, b, r, n, guarded) in enumerate(steps):
        if epoch != cur_epoch:
            if t is not None:
                check_table(t, cfg.zone_from_vlan, zones)
                tot["reasons"] += t._engine.reasons_array().astype(np.int64)
            cfg = epoch_config(args.seed, epoch, args.max_conns)
            t = Tracker(**cfg.kw)
            cur_epoch, zones, t0 = epoch, set(), 1_700_000_000 * SEC + epoch * 10**6 * SEC
            tot["epochs"] += 1
        bp = batch_params(args.seed, epoch, b, r)
        zones.add(bp["zone"])
        if r == 0 or clean is None or len(clean[1]) != n:
            clean = instantiate(cp, cfg, args.seed, epoch, b, n)
        mat, caplen, wirelen, ts, iface = make_batch(cp, cfg, args.seed, epoch, b, r, clean, t0)
        tot["changed"] += make_batch.changed
        t0 = int(ts.max())
        batch = guard.batch(mat, caplen, wirelen, ts, iface) if guarded else \
            Batch(mat.reshape(-1), np.arange(n, dtype=np.int64) * L, caplen, wirelen, ts, iface, IF_LT, IF_FCS)
        if args.worker:
            print(f"B {epoch} {b} {r}", flush=True)   # (the watcher's progress line)
        before, count_before = snapshot(t), t._engine.count
        if args.selftest and idx == len(steps) // 2:
            # (checks this script's own failure reporting)
            if args.selftest == "crash":
                os.kill(os.getpid(), 11)
            elif args.selftest == "hang":
                time.sleep(10**6)
        try:
            if args.selftest == "check" and idx == len(steps) // 2:
                raise Problem("self-test: a failed check")
            res = t.process(batch, zone=bp["zone"], zone_from_vlan=cfg.zone_from_vlan, commit=bp["commit"])
            st = check_batch(t, res, n, before, bp["commit"], count_before)
            if (idx + 1) % args.check_every == 0 or idx + 1 == len(steps) or steps[idx + 1][0] != epoch:
                check_table(t, cfg.zone_from_vlan, zones)
                tot["checks"] += 1
        except Exception as exc:      # a failed check, or the engine raising
            kind = "check failed" if isinstance(exc, Problem) else f"exception {type(exc).__name__}"
            emit(args, "P", f"{epoch} {b} {r} {kind}: {exc}")
            args.problem = (epoch, b, r, f"{kind}: {exc}")
            return 1
        tot["packets"] += n
        tot["states"] += np.bincount(st, minlength=256)
        tot["max_entries"] = max(tot["max_entries"], t._engine.count)
        if tot["packets"] - last_report >= args.report_every:
            last_report = tot["packets"]
            el = time.perf_counter() - t_start
            emit(args, "I", f"{tot['packets']:,} packets, {el:.1f} s, {tot['packets'] / el / 1e6:.2f} Mpps, epoch {epoch} "
                  f"(max_conns {cfg.kw['max_conns']}, {t._engine.count} entries)")
    if t is not None:
        check_table(t, cfg.zone_from_vlan, zones)
        tot["reasons"] += t._engine.reasons_array().astype(np.int64)
    el = time.perf_counter() - t_start
    states = {"+".join(n for n, bit in CSB.items() if s & bit) or "0": int(c) for s, c in enumerate(tot["states"]) if c}
    hit = sum(1 for v in tot["reasons"][1:] if v)
    emit(args, "I", f"done: {tot['packets']:,} packets in {el:.1f} s ({tot['packets'] / el / 1e6:.2f} Mpps), "
                    f"{tot['epochs']} epochs, {tot['checks']} full table checks, largest table "
                    f"{tot['max_entries']:,} entries; {tot['changed']:,} frames mutated or random, the others "
                    f"valid conversations")
    emit(args, "I", f"ct_state counts: {states}")
    emit(args, "I", f"invalid reasons hit: {hit} of {len(REASONS) - 1}; not hit: "
                    f"{[REASONS[i] for i, v in enumerate(tot['reasons']) if i and not v]}")
    return 0


def reproduce(args, epoch, bad_b, bad_r, why):
    """Write the reproducer pcapngs and print how to replay the failure."""
    cp = build_corpus(args.seed)
    cfg = epoch_config(args.seed, epoch, args.max_conns)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [s for s in plan(args) if s[0] == epoch and (s[1], s[2]) <= (bad_b, bad_r)]
    batches, t0, clean = [], 1_700_000_000 * SEC + epoch * 10**6 * SEC, None
    for _, b, r, n, _ in steps:
        if r == 0 or clean is None or len(clean[1]) != n:
            clean = instantiate(cp, cfg, args.seed, epoch, b, n)
        mb = make_batch(cp, cfg, args.seed, epoch, b, r, clean, t0)
        t0 = int(mb[3].max())
        batches.append(mb)
    stem = f"fuzz-seed{args.seed}-epoch{epoch}-batch{bad_b}.{bad_r}"
    whole, last = out / f"{stem}-epoch.pcapng", out / f"{stem}-batch.pcapng"
    write_pcapng(whole, batches)
    write_pcapng(last, batches[-1:])
    opts = [f"--max-conns {cfg.kw['max_conns']}", f"--seed {cfg.kw['seed']}"] + \
        [f"--sysctl {k}={v}" for k, v in cfg.kw["sysctl"].items()] + (["--dccp-tracker"] if cfg.kw["dccp_tracker"] else [])
    print(f"FAIL: {why}", file=sys.stderr)
    print(f"  seed {args.seed}, epoch {epoch}, batch {bad_b} replay {bad_r} ({sum(len(b[1]) for b in batches):,} "
          f"packets in the epoch up to it); tracker {cfg.kw}", file=sys.stderr)
    print(f"  reproducer: {whole} (the epoch up to the failing batch), {last} (the failing batch alone)",
          file=sys.stderr)
    print(f"  replay exactly: {sys.executable} {Path(__file__).resolve()} --seed {args.seed} --packets {args.packets} "
          f"--batch {args.batch} --replays {args.replays} --epoch-batches {args.epoch_batches} "
          f"--guard-every {args.guard_every} --guard-batch {args.guard_batch}"
          f"{' --max-conns ' + str(args.max_conns) if args.max_conns else ''} "
          f"--only-epoch {epoch} --until-batch {bad_b} --no-fork", file=sys.stderr)
    print(f"  or through the command line (other batch boundaries): fastct track {whole} {' '.join(opts)}"
          f"{' --zone-from vlan' if cfg.zone_from_vlan else ''}", file=sys.stderr)


def watch(args):
    """Run the worker in a child; report crashes, hangs and failed checks with a reproducer."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"] + args.argv
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    last = None
    problem = None
    buf = ""
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + args.hang_timeout + 120      # (the corpus is built first)
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536).decode()
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                if line.startswith("B "):
                    _, e, b, r = line.split()
                    last = (int(e), int(b), int(r))
                    deadline = time.monotonic() + args.hang_timeout
                elif line.startswith("P "):
                    _, e, b, r, why = line.split(" ", 4)
                    problem = (int(e), int(b), int(r), why)
                elif line.startswith("I "):
                    print(line[2:], flush=True)
        elif time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            where = last or (0, 0, 0)
            print(f"fuzz_long: hang: no batch finished for {args.hang_timeout} s", file=sys.stderr)
            reproduce(args, *where, f"hang in batch {where}")
            return 1
        if proc.poll() is not None and not ready:
            break
    rc = proc.wait()
    el = time.perf_counter() - t_start
    if problem is not None:
        reproduce(args, *problem)
        return 1
    if rc < 0 or rc not in (0, 1):
        where = last or (0, 0, 0)
        reproduce(args, *where, f"worker died (status {rc}{', signal ' + str(-rc) if rc < 0 else ''}) "
                                            f"in batch {where}")
        return 1
    if rc != 0:
        print(f"fuzz_long: worker exited with {rc}", file=sys.stderr)
        return 1
    print(f"OK: seed {args.seed}, {args.packets:,} packets, no crash, hang or invariant violation "
          f"({el:.1f} s wall clock)", flush=True)
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=10_000_000, help="packets in all (default 10M)")
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    ap.add_argument("--max-conns", type=int, default=None, help="table size for every epoch (default: varies)")
    ap.add_argument("--check-every", type=int, default=4, help="engine calls between full table checks")
    ap.add_argument("--batch", type=int, default=65536, help="packets per batch")
    ap.add_argument("--replays", type=int, default=2, help="engine calls per generated batch, each mutated anew")
    ap.add_argument("--epoch-batches", type=int, default=16, help="batches per tracker (then a new configuration)")
    ap.add_argument("--guard-every", type=int, default=8, help="every N-th batch is a guarded one (0: none)")
    ap.add_argument("--guard-batch", type=int, default=512, help="packets in a guarded batch")
    ap.add_argument("--hang-timeout", type=float, default=120.0, help="seconds without a finished batch")
    ap.add_argument("--report-every", type=int, default=2_000_000, help="packets between progress lines")
    ap.add_argument("--out", default="fuzz-repro", help="folder for reproducers")
    ap.add_argument("--no-fork", action="store_true", help="run the engine in this process")
    ap.add_argument("--only-epoch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--until-batch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--selftest", choices=["crash", "hang", "check"], default=None,
                    help="fail on purpose halfway (to see the failure report and the reproducer)")
    args = ap.parse_args(argv)
    if min(args.packets, args.batch, args.check_every, args.epoch_batches, args.guard_batch, args.replays) < 1:
        ap.error("--packets, --batch, --check-every, --epoch-batches, --guard-batch and --replays must be positive")
    if args.max_conns is not None and not 1 <= args.max_conns <= 2**31 - 1:
        ap.error("--max-conns must be between 1 and 2147483647")
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
        argv += ["--seed", str(args.seed)]
    args.argv = [a for a in argv if a != "--no-fork"]
    if args.worker:
        args.problem = None
        return worker(args)
    print(f"fuzz_long: seed {args.seed}, {args.packets:,} packets", flush=True)
    if args.no_fork:
        args.problem = None
        rc = worker(args)
        if args.problem is not None:
            reproduce(args, *args.problem)
        return rc
    return watch(args)


if __name__ == "__main__":
    sys.exit(main())
