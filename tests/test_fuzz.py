"""Structure-aware fuzzing (hypothesis) of the frame parser, the engine, the capture readers and the
text parsers.  The short, reproducible run for CI; benchmarks/fuzz_long.py is the long one.

Frames are built layer by layer with struct (Ethernet with 802.1Q/802.1ad/QinQ tags, SLL, SLL2, raw
IP 101/228/229, NULL/LOOP, NFLOG; IPv4 with options, IPv6 with extension headers; fragments; TCP
conversations with coherent sequence numbers, options and every flag byte; UDP, UDP-Lite, ICMP and
ICMPv6 echo and errors quoting packets of live flows, SCTP associations, DCCP, GRE v0/v1, other
protocols), then mutated (bit flips, bytes set, length fields set to wrong values, cut at any
offset, caplen below wirelen, garbage appended) and fed to the engine in random batch splits, under
random configurations (tiny tables with and without early drop, zone limits, per-zone timeouts,
nf_conntrack_checksum=1, the DCCP tracker, commit=False, zones from VLAN ids).

Properties (after every batch): no exception or crash; every ct_state one of the legal
combinations; per-packet outputs add up to the statistics counters; Engine.check_invariants() == []
(every entry indexed once and found from both directions, no slot pointing past the entries); entry
fields sane; the table never over max_conns or a zone over its limit.  Differential properties: the
bytes after a packet's captured length never change anything, and the split of the packets into
batches does not change any verdict or the final table (README: results do not depend on batch
boundaries).  The readers: mutated pcap/pcapng files give batches inside the file or a CaptureError,
never another exception, and the packets before the damage are yielded unchanged.  The text
parsers raise only ValueError; the command line exits 2 with a usage or error message, never a
traceback.

The settings are derandomized (a fixed sequence of examples, no example database) so CI runs are
reproducible; FASTCT_FUZZ_SCALE=10 runs ten times as many examples, FASTCT_FUZZ_RANDOM=1 new ones
(pytest --hypothesis-seed=N to repeat them), FASTCT_FUZZ_SHRINK=1 shrinks a failure and
FASTCT_FUZZ_DUMP=DIR pickles a failing engine scenario there.  The bugs the fuzzers found have
minimal regression tests at the end.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from conftest import run_cli
from dpkt import crc32c as crc32c_mod
from fastct.rules_compile import compile_ruleset
from fastct import CT_STATE_BITS as B, Batch, Tracker
from fastct import cli, nat, sysctl
from fastct.capture.reader import CaptureError, CaptureReader
from fastct.tracker import DCCP_STATES, SCTP_STATES, STAT_NAMES, STATUS_BITS, TCP_STATES, TIMEOUT_DEFAULTS, full_counters

SCALE = float(os.environ.get("FASTCT_FUZZ_SCALE", "1"))


SHRINK = os.environ.get("FASTCT_FUZZ_SHRINK", "") not in ("", "0")
# FASTCT_FUZZ_RANDOM=1: new examples each run (or fixed by pytest's --hypothesis-seed=N)
DERANDOMIZE = os.environ.get("FASTCT_FUZZ_RANDOM", "") in ("", "0")


def fuzz(n: int):
    """Reproducible settings for CI: a fixed example sequence (derandomized), no database, and no
    shrinking unless FASTCT_FUZZ_SHRINK=1 (a failure prints its reproduction blob either way)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    return settings(max_examples=max(1, int(n * SCALE)), derandomize=DERANDOMIZE, database=None,
                    deadline=None, suppress_health_check=list(HealthCheck), print_blob=True,
                    phases=phases)


TRK, NEW, EST, REL, RPL, INV = B["trk"], B["new"], B["est"], B["rel"], B["rpl"], B["inv"]
# The ct_state values fastct can give (README "Semantics" and _engine.pyx stage 3), which are the
# OVS-legal ones: untracked (0: not IP, link type skipped, untracked ICMPv6, fragment held);
# inv always with trk and nothing else; new and est exclusive; rpl only with est or rel; rel only
# for ICMP errors (with rpl when they travel in the reply direction); no NAT bits (NAT not applied).
LEGAL = {0, TRK | INV, TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | REL, TRK | REL | RPL}

LT_NULL, LT_ETH, LT_RAW, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_NFLOG, LT_SLL2 = 0, 1, 101, 108, 113, 228, 229, 239, 276
HANDLED = [LT_NULL, LT_ETH, LT_RAW, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_NFLOG, LT_SLL2]
UNHANDLED = [9, 104, 147, 284, 65535]

P_ICMP, P_TCP, P_UDP, P_DCCP, P_GRE, P_ICMP6, P_SCTP, P_UDPLITE = 1, 6, 17, 33, 47, 58, 132, 136
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
M32 = 0xFFFFFFFF
SEC = 1_000_000_000
AF_INET, AF_INET6 = 2, 10
IPS_CONFIRMED = STATUS_BITS["CONFIRMED"]
IPS_SEEN_REPLY = STATUS_BITS["SEEN_REPLY"]
IPS_ASSURED = STATUS_BITS["ASSURED"]
NAT_STATUS = STATUS_BITS["SRC_NAT"] | STATUS_BITS["DST_NAT"] | STATUS_BITS["SRC_NAT_DONE"] | \
    STATUS_BITS["DST_NAT_DONE"]
# Entry keys: ICMP entries are made by the types that have a reply type (request side first).
ICMP_NEW_TYPES = {P_ICMP: {8, 13, 15, 17}, P_ICMP6: {128, 139}}


def a4(s):
    return socket.inet_pton(socket.AF_INET, s)


def a6(s):
    return socket.inet_pton(socket.AF_INET6, s)


HOSTS = {4: [a4(f"10.0.0.{i}") for i in (1, 2, 3)] + [a4("192.0.2.9")],
         6: [a6(f"2001:db8::{i}") for i in (1, 2, 3)] + [a6("fe80::9")]}
ROUTER = {4: a4("192.0.2.254"), 6: a6("fe80::1")}


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


def pseudo(fam, src, dst, proto, length):
    if fam == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length & 0xFFFF)
    return src + dst + struct.pack("!IxxxB", length, proto)


def put_csum(seg: bytes, pos: int, mode: str, prefix: bytes = b"", cover: int | None = None) -> bytes:
    """Write the Internet checksum of prefix + seg[:cover] at seg[pos:pos+2]: 'good', 'bad' or 'zero'."""
    if mode == "zero" or len(seg) < pos + 2:
        return seg
    c = inet_csum(prefix + seg[:len(seg) if cover is None else cover])
    if mode == "bad":
        c ^= 0x5A5A
    return seg[:pos] + struct.pack("!H", c) + seg[pos + 2:]


def crc32c(data: bytes) -> int:
    return ~crc32c_mod.add(0xFFFFFFFF, data) & M32


# ---------------------------------------------------------------------------------------------
# layers (bytes)

def ipv4(src, dst, proto, payload, opts=b"", ident=0x1234, frag=0, ttl=64, csum="good"):
    opts = opts + b"\0" * (-len(opts) % 4)
    ihl = (20 + len(opts)) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(opts) + len(payload), ident, frag, ttl,
                      proto, 0, src, dst) + opts
    return put_csum(hdr, 10, csum) + payload


def ipv6(src, dst, nh, payload, hlim=64):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, hlim, src, dst) + payload


def ext6(kind, nh, units=0, fill=b""):
    """An IPv6 extension header of type `kind` whose next header is `nh`."""
    if kind == 44:                        # Fragment: atomic (offset 0, M clear)
        return struct.pack("!BBHI", nh, 0, 0, 0x01020304)
    if kind == 51:                        # AH: (units + 2) * 4 bytes
        body = bytes([nh, units, 0, 0]) + struct.pack("!II", 0x100, 1)
        return (body + fill + bytes((units + 2) * 4))[:(units + 2) * 4]
    if kind == 43:                        # routing type 0/2, segments left 0
        body = bytes([nh, units, 2, 0]) + bytes(4)
        return (body + fill + bytes((units + 1) * 8))[:(units + 1) * 8]
    n = (units + 1) * 8                   # hop-by-hop / destination options: one PadN
    return (bytes([nh, units, 1, n - 4]) + bytes(n - 4))[:n]


def tcp_seg(fam, src, dst, sport, dport, seq, ack, flags, win=65535, opts=b"", data=b"", doff=None,
            csum="good", urp=0):
    opts = opts + b"\x01" * (-len(opts) % 4)
    if doff is None:
        doff = 5 + len(opts) // 4
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & M32, ack & M32, (doff & 15) << 4, flags & 0xFF,
                      win & 0xFFFF, 0, urp) + opts + data
    return put_csum(seg, 16, csum, pseudo(fam, src, dst, P_TCP, len(seg)))


def udp_seg(fam, src, dst, sport, dport, data=b"", ulen=None, csum="good", proto=P_UDP, cov=None):
    n = 8 + len(data)
    length = (n if proto == P_UDP else 0) if ulen is None else ulen
    if proto == P_UDPLITE and cov is not None:
        length = cov
    seg = struct.pack("!HHHH", sport, dport, length & 0xFFFF, 0) + data
    cover = None
    if proto == P_UDPLITE and length:
        cover = min(length, len(seg))
    return put_csum(seg, 6, csum, pseudo(fam, src, dst, proto, len(seg)), cover)


def icmp_msg(fam, src, dst, type_, code, rest4, body, csum="good"):
    msg = struct.pack("!BBH", type_, code, 0) + rest4 + body
    prefix = b"" if fam == 4 else pseudo(6, src, dst, P_ICMP6, len(msg))
    return put_csum(msg, 2, csum, prefix)


def sctp_chunk(ctype, flags, value=b"", length=None):
    n = 4 + len(value) if length is None else length
    out = struct.pack("!BBH", ctype, flags, n & 0xFFFF) + value
    return out + b"\0" * (-len(out) % 4)


def sctp_init(ctype, tag, tsn=1):
    return sctp_chunk(ctype, 0, struct.pack("!IIHHI", tag, 65535, 10, 10, tsn))


def sctp_pkt(sport, dport, vtag, chunks, crc="good"):
    body = struct.pack("!HHII", sport, dport, vtag & M32, 0) + b"".join(chunks)
    c = crc32c(body)
    if crc == "bad":
        c ^= 1
    elif crc == "zero":
        c = 0
    return body[:8] + struct.pack("<I", c) + body[12:]


DCCP_REQUEST, DCCP_RESPONSE, DCCP_DATA, DCCP_ACK, DCCP_DATAACK, DCCP_CLOSEREQ, DCCP_CLOSE, \
    DCCP_RESET, DCCP_SYNC, DCCP_SYNCACK = range(10)


def dccp_pkt(fam, src, dst, sport, dport, ptype, seq, ack=0, x=1, service=42, cscov=0, data=b"",
             csum="good", doff=None):
    hdr = struct.pack("!HHBBH", sport, dport, 0, cscov & 15, 0)
    b8 = ((ptype & 15) << 1) | (x & 1)
    if x:
        hdr += struct.pack("!BBHI", b8, 0, (seq >> 32) & 0xFFFF, seq & M32)
    else:
        hdr += struct.pack("!BBH", b8, (seq >> 16) & 0xFF, seq & 0xFFFF)
    if ptype not in (DCCP_REQUEST, DCCP_DATA):
        hdr += struct.pack("!HHI", 0, (ack >> 32) & 0xFFFF, ack & M32)
    if ptype in (DCCP_REQUEST, DCCP_RESPONSE):
        hdr += struct.pack("!I", service)
    elif ptype == DCCP_RESET:
        hdr += struct.pack("!BBBB", 2, 0, 0, 0)
    hdr = hdr + b"\0" * (-len(hdr) % 4)
    d = len(hdr) // 4 if doff is None else doff
    seg = hdr[:4] + bytes([d & 0xFF]) + hdr[5:] + data
    cover = ((cscov & 15) - 1) * 4 if cscov & 15 else None
    if cover is not None and cover > len(seg):
        cover = len(seg)
    return put_csum(seg, 6, csum, pseudo(fam, src, dst, P_DCCP, len(seg)), cover)


def gre_pkt(version, call_id=0, proto=None, key=None, seq=None, payload=b"\x00" * 8):
    if version == 1:
        flags = 0x2001 | (0x1000 if seq is not None else 0)
        out = struct.pack("!HHHH", flags, 0x880B if proto is None else proto, len(payload), call_id)
        if seq is not None:
            out += struct.pack("!I", seq)
        return out + payload
    flags = (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    out = struct.pack("!HH", flags, 0x0800 if proto is None else proto)
    if key is not None:
        out += struct.pack("!I", key)
    if seq is not None:
        out += struct.pack("!I", seq)
    return out + payload


# ---- link layers ------------------------------------------------------------------------------

def nflog_tlv(ttype, value):
    out = struct.pack("<HH", 4 + len(value), ttype) + value
    return out + b"\0" * (-len(out) % 4)


@dataclass
class L2:
    """How one interface wraps IP packets."""
    lt: int
    fcs: int = 0
    tags: tuple = ()              # Ethernet/SLL VLAN tags (tpid, tci), outermost first
    null_be: bool = False
    af6: int = 10                 # NULL/LOOP address family value for IPv6
    nflog_extra: bytes = b""      # TLVs before the payload
    etype: int | None = None      # ethertype override (non-IP, mismatches)

    def wrap(self, fam: int, ip: bytes) -> tuple[bytes, int]:
        """(frame, offset of the IP header)."""
        et = self.etype if self.etype is not None else (0x0800 if fam == 4 else 0x86DD)
        tags = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in self.tags)
        if self.lt == LT_ETH:
            hdr = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + tags + struct.pack("!H", et)
            frame = hdr + ip
            if self.fcs:
                frame += struct.pack("<I", zlib.crc32(frame))[:self.fcs] + b"\0" * max(0, self.fcs - 4)
            return frame, len(hdr)
        if self.lt == LT_SLL:
            if tags:
                hdr = struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", self.tags[0][0]) + \
                    tags[2:] + struct.pack("!H", et)
            else:
                hdr = struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", et)
            return hdr + ip, len(hdr)
        if self.lt == LT_SLL2:
            hdr = struct.pack("!HHIHBB8s", et, 0, 3, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0")
            return hdr + ip, len(hdr)
        if self.lt in (LT_RAW, LT_IPV4, LT_IPV6):
            return ip, 0
        if self.lt in (LT_NULL, LT_LOOP):
            af = 2 if fam == 4 else self.af6
            if self.etype is not None:
                af = self.etype
            order = ">" if (self.lt == LT_LOOP or self.null_be) else "<"
            return struct.pack(order + "I", af & M32) + ip, 4
        if self.lt == LT_NFLOG:
            family = 2 if fam == 4 else 10
            if self.etype is not None:
                family = self.etype & 0xFF
            hdr = struct.pack("!BBH", family, 0, 7) + nflog_tlv(1, struct.pack("!HBB", 0x0800, 3, 0)) + \
                self.nflog_extra
            return hdr + nflog_tlv(9, ip)[:4] + ip + b"\0" * (-len(ip) % 4), len(hdr) + 4
        # a link type fastct does not handle: any bytes
        return b"\xaa" * 4 + ip, 4


# ---------------------------------------------------------------------------------------------
# strategies: datagrams

@dataclass
class Dgram:
    fam: int
    ip: bytes                   # the whole IP datagram
    src: bytes
    dst: bytes
    proto: int


def ip_dgram(fam, src, dst, proto, l4, opts=b"", ident=0x1234, ipcsum="good", exts=()):
    if fam == 4:
        return Dgram(4, ipv4(src, dst, proto, l4, opts=opts, ident=ident, csum=ipcsum), src, dst, proto)
    nh, chain = proto, b""
    for kind, units in reversed(exts):
        chain = ext6(kind, nh, units) + chain
        nh = kind
    return Dgram(6, ipv6(src, dst, nh, chain + l4), src, dst, proto)


ports = st.sampled_from([0, 1, 53, 80, 443, 1024, 5000, 40000, 65535]) | st.integers(0, 65535)
u32 = st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, M32 - 1, M32]) | st.integers(0, M32)
csum_mode = st.sampled_from(["good"] * 6 + ["bad", "zero"])


@st.composite
def endpoints(draw, fam):
    pool = HOSTS[fam]
    rand = st.binary(min_size=4 if fam == 4 else 16, max_size=4 if fam == 4 else 16)
    src = draw(st.sampled_from(pool) | rand)
    dst = draw(st.sampled_from(pool) | rand)
    return src, dst, draw(ports), draw(ports)


ipv4_opts = st.sampled_from([b"", b"", b"", b"\x01\x01\x01\x00", b"\x07\x07\x04\0\0\0\0\0",
                             b"\x94\x04\0\0", b"\x44\x0c\x05\x00" + b"\0" * 8]) | st.binary(max_size=40)
ext_chain = st.lists(st.tuples(st.sampled_from([0, 43, 44, 60, 51]), st.integers(0, 3)), max_size=3) | \
    st.sampled_from([[(60, 0)] * 64, [(60, 0)] * 65, [(0, 0)] * 70])     # the parser stops after 64


@st.composite
def l3_extras(draw, fam):
    """IPv4 options / IPv6 extension headers, IPv4 header checksum mode, IPv4 id."""
    if fam == 4:
        return {"opts": draw(ipv4_opts), "ipcsum": draw(st.sampled_from(["good"] * 8 + ["bad"])),
                "ident": draw(st.integers(0, 0xFFFF))}
    return {"exts": draw(ext_chain)}


def tcp_options(draw, syn):
    opts = b""
    if syn and draw(st.booleans()):
        opts += struct.pack("!BBH", 2, 4, draw(st.sampled_from([536, 1460, 0, 65535])))
        if draw(st.booleans()):
            opts += bytes([1, 3, 3, draw(st.sampled_from([0, 7, 14, 15, 255]))])
        if draw(st.booleans()):
            opts += bytes([4, 2, 1, 1])
        if draw(st.booleans()):
            opts += bytes([8, 10]) + struct.pack("!II", draw(u32), 0) + b"\x01\x01"
    elif draw(st.integers(0, 9)) == 0:
        opts += draw(st.binary(max_size=40))          # anything, SACK blocks, broken lengths
    return opts[:40]


@st.composite
def tcp_conv(draw, fam):
    """A TCP conversation with coherent sequence numbers, then noise: every state path."""
    c, s, cp, sp = draw(endpoints(fam))
    ex = draw(l3_extras(fam))
    seq = {0: draw(u32), 1: draw(u32)}
    wins = {0: draw(st.sampled_from([0, 1, 512, 65535])), 1: draw(st.sampled_from([0, 1024, 65535]))}
    out = []

    def send(d, flags, n=0, opts=b"", seq_off=0, ack_off=0, doff=None):
        a, b = (c, s) if d == 0 else (s, c)
        pa, pb = (cp, sp) if d == 0 else (sp, cp)
        data = b"D" * n
        l4 = tcp_seg(fam, a, b, pa, pb, seq[d] + seq_off, seq[1 - d] + ack_off, flags, wins[d], opts, data,
                     doff=doff, csum=draw(csum_mode))
        out.append(ip_dgram(fam, a, b, P_TCP, l4, **ex))
        seq[d] = (seq[d] + n + (1 if flags & (SYN | FIN) else 0)) & M32

    start = draw(st.sampled_from(["handshake", "handshake", "midstream", "synack", "simultaneous"]))
    if start in ("handshake", "simultaneous"):
        send(0, SYN, opts=tcp_options(draw, True))
        if start == "simultaneous":
            send(1, SYN, opts=tcp_options(draw, True))
        for _ in range(draw(st.integers(0, 2))):      # retransmitted SYNs
            seq[0] = (seq[0] - 1) & M32
            send(0, SYN, opts=tcp_options(draw, True))
        if draw(st.integers(0, 5)):
            send(1, SYN | ACK, opts=tcp_options(draw, True))
            send(0, ACK)
    elif start == "synack":
        send(1, SYN | ACK, opts=tcp_options(draw, True))
    for _ in range(draw(st.integers(0, 6))):
        d = draw(st.integers(0, 1))
        kind = draw(st.integers(0, 9))
        if kind < 6:
            send(d, draw(st.sampled_from([ACK, ACK | PSH, ACK | URG, ACK | ECE | CWR])),
                 n=draw(st.sampled_from([0, 1, 100, 1400, 3000])))
        elif kind == 6:                               # retransmission / old data
            send(d, ACK, n=10, seq_off=-draw(st.sampled_from([10, 1000, 2**31])))
        elif kind == 7:                               # ACK beyond what was sent
            send(d, ACK, ack_off=draw(st.sampled_from([1, 70000, 2**31])))
        elif kind == 8:                               # any flag byte, maybe any options
            send(d, draw(st.integers(0, 255)), opts=tcp_options(draw, False))
        else:                                         # window change
            wins[d] = draw(st.integers(0, 65535))
            send(d, ACK)
    end = draw(st.sampled_from(["fin", "fin", "rst", "rst_bad", "none", "half", "reopen"]))
    if end == "fin":
        send(0, FIN | ACK)
        send(1, FIN | ACK)
        send(0, ACK)
    elif end == "half":
        send(draw(st.integers(0, 1)), FIN | ACK)
    elif end == "rst":
        send(draw(st.integers(0, 1)), RST | draw(st.sampled_from([0, ACK])))
    elif end == "rst_bad":
        send(draw(st.integers(0, 1)), RST, seq_off=draw(st.sampled_from([-5, 100000, 2**31])))
    elif end == "reopen":
        send(0, FIN | ACK)
        send(1, FIN | ACK)
        send(0, ACK)
        seq[0] = (seq[0] + 200000) & M32
        send(0, SYN, opts=tcp_options(draw, True))
    return out


@st.composite
def udp_conv(draw, fam):
    c, s, cp, sp = draw(endpoints(fam))
    ex = draw(l3_extras(fam))
    lite = draw(st.integers(0, 3)) == 0
    proto = P_UDPLITE if lite else P_UDP
    out = []
    for d in draw(st.lists(st.integers(0, 1), min_size=1, max_size=5)):
        a, b, pa, pb = (c, s, cp, sp) if d == 0 else (s, c, sp, cp)
        data = draw(st.binary(max_size=24))
        ulen = draw(st.sampled_from([None] * 8 + [0, 7, 9, 0xFFFF]))
        cov = draw(st.sampled_from([None, 0, 8, 9, 12, 4])) if lite else None
        l4 = udp_seg(fam, a, b, pa, pb, data, ulen=ulen, csum=draw(csum_mode), proto=proto, cov=cov)
        out.append(ip_dgram(fam, a, b, proto, l4, **ex))
    return out


ICMP_PAIRS = {4: [(8, 0), (13, 14), (15, 16), (17, 18)], 6: [(128, 129), (139, 140)]}


@st.composite
def icmp_conv(draw, fam):
    c, s, _, _ = draw(endpoints(fam))
    ex = draw(l3_extras(fam))
    req, rep = draw(st.sampled_from(ICMP_PAIRS[fam]))
    ident = draw(st.integers(0, 0xFFFF))
    proto = P_ICMP if fam == 4 else P_ICMP6
    out = []
    for step in draw(st.lists(st.sampled_from(["req", "rep", "any", "wrongfam"]), min_size=1, max_size=4)):
        a, b = (c, s) if step != "rep" else (s, c)
        t = {"req": req, "rep": rep}.get(step, None)
        if t is None:
            t = draw(st.integers(0, 255))
        code = draw(st.sampled_from([0, 0, 0, 1, 255]))
        body = draw(st.binary(max_size=16))
        msg = icmp_msg(fam, a, b, t, code, struct.pack("!HH", ident, draw(st.integers(0, 3))), body,
                       csum=draw(csum_mode))
        p = proto if step != "wrongfam" else (P_ICMP6 if fam == 4 else P_ICMP)
        out.append(ip_dgram(fam, a, b, p, msg, **ex))
    return out


@st.composite
def sctp_conv(draw, fam):
    c, s, cp, sp = draw(endpoints(fam))
    ex = draw(l3_extras(fam))
    tag = {0: draw(u32), 1: draw(u32)}
    out = []
    crc = draw(st.sampled_from(["good", "good", "good", "bad", "zero"]))

    def send(d, vtag, *chunks):
        a, b, pa, pb = (c, s, cp, sp) if d == 0 else (s, c, sp, cp)
        out.append(ip_dgram(fam, a, b, P_SCTP, sctp_pkt(pa, pb, vtag, chunks, crc), **ex))

    data = sctp_chunk(0, 3, struct.pack("!IHHI", 1, 0, 0, 0) + b"hello")
    style = draw(st.sampled_from(["full", "full", "init_only", "heartbeat", "ootb", "random"]))
    if style in ("full", "init_only"):
        send(0, 0, sctp_init(1, tag[0]))
        if style == "full":
            send(1, tag[0], sctp_init(2, tag[1]))
            send(0, tag[1], sctp_chunk(10, 0, b"cookie!!"))
            send(1, tag[0], sctp_chunk(11, 0))
            for _ in range(draw(st.integers(0, 3))):
                d = draw(st.integers(0, 1))
                send(d, tag[1 - d], draw(st.sampled_from([data, sctp_chunk(3, 0, bytes(12)),
                                                         sctp_chunk(4, 0, bytes(8)),
                                                         sctp_chunk(5, 0, bytes(8))])))
            end = draw(st.sampled_from(["shutdown", "abort", "abort_t", "none"]))
            if end == "shutdown":
                send(0, tag[1], sctp_chunk(7, 0, b"\0\0\0\1"))
                send(1, tag[0], sctp_chunk(8, 0))
                send(0, tag[1], sctp_chunk(14, 0))
            elif end == "abort":
                send(draw(st.integers(0, 1)), tag[1], sctp_chunk(6, 0))
            elif end == "abort_t":
                send(0, tag[0], sctp_chunk(6, 1))
    elif style == "heartbeat":
        send(0, tag[0], sctp_chunk(4, 0, bytes(8)))
        send(1, tag[1], sctp_chunk(5, 0, bytes(8)))
        send(0, tag[0], data)
    elif style == "ootb":
        send(0, tag[0], draw(st.sampled_from([sctp_chunk(8, 0), sctp_chunk(6, 0), sctp_chunk(11, 0),
                                              sctp_chunk(14, 1)])))
    else:
        for _ in range(draw(st.integers(1, 3))):
            chunks = [sctp_chunk(draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(st.binary(max_size=20)),
                                 length=draw(st.sampled_from([None, None, 0, 1, 3, 4, 2000])))
                      for _ in range(draw(st.integers(0, 3)))]
            send(draw(st.integers(0, 1)), draw(st.sampled_from([0, tag[0], tag[1]])), *chunks)
    return out


@st.composite
def dccp_conv(draw, fam):
    c, s, cp, sp = draw(endpoints(fam))
    ex = draw(l3_extras(fam))
    seq = {0: draw(st.integers(0, 2**48 - 1)), 1: draw(st.integers(0, 2**48 - 1))}
    out = []
    csum = draw(csum_mode)

    def send(d, ptype, **kw):
        a, b, pa, pb = (c, s, cp, sp) if d == 0 else (s, c, sp, cp)
        l4 = dccp_pkt(fam, a, b, pa, pb, ptype, seq[d], seq[1 - d], csum=csum, **kw)
        out.append(ip_dgram(fam, a, b, P_DCCP, l4, **ex))
        seq[d] = (seq[d] + 1) % 2**48

    if draw(st.integers(0, 3)):
        send(0, DCCP_REQUEST)
        send(1, DCCP_RESPONSE)
        send(0, DCCP_ACK)
    for _ in range(draw(st.integers(0, 4))):
        d = draw(st.integers(0, 1))
        send(d, draw(st.integers(0, 15)), x=draw(st.sampled_from([1, 1, 1, 0])),
             cscov=draw(st.sampled_from([0, 0, 1, 2, 15])), data=draw(st.binary(max_size=8)),
             doff=draw(st.sampled_from([None] * 6 + [0, 3, 255])))
    end = draw(st.sampled_from(["close", "closereq", "reset", "none"]))
    if end == "close":
        send(0, DCCP_CLOSE)
        send(1, DCCP_RESET)
    elif end == "closereq":
        send(1, DCCP_CLOSEREQ)
        send(0, DCCP_CLOSE)
        send(1, DCCP_RESET)
    elif end == "reset":
        send(draw(st.integers(0, 1)), DCCP_RESET)
    return out


@st.composite
def gre_conv(draw, fam):
    c, s, _, _ = draw(endpoints(fam))
    ex = draw(l3_extras(fam))
    out = []
    version = draw(st.sampled_from([0, 1, 1]))
    ids = {0: draw(st.integers(0, 0xFFFF)), 1: draw(st.integers(0, 0xFFFF))}
    for d in draw(st.lists(st.integers(0, 1), min_size=1, max_size=4)):
        a, b = (c, s) if d == 0 else (s, c)
        if version == 1:
            l4 = gre_pkt(1, ids[1 - d], proto=draw(st.sampled_from([None] * 5 + [0x0800])),
                         seq=draw(st.none() | u32))
        else:
            l4 = gre_pkt(0, key=draw(st.none() | u32), seq=draw(st.none() | u32))
        l4 = l4[:draw(st.sampled_from([64, 64, 64, 3, 7]))]
        out.append(ip_dgram(fam, a, b, P_GRE, l4, **ex))
    return out


@st.composite
def other_conv(draw, fam):
    """Generic protocols (ESP, AH as a transport, unknown numbers, IPv6 no-next-header), random
    transport bytes for the known ones, and plain random IP payloads."""
    c, s, _, _ = draw(endpoints(fam))
    ex = draw(l3_extras(fam))
    proto = draw(st.sampled_from([50, 51, 253, 254, 0, 59, 4, 41, 255]) | st.integers(0, 255))
    out = []
    for d in draw(st.lists(st.integers(0, 1), min_size=1, max_size=3)):
        a, b = (c, s) if d == 0 else (s, c)
        out.append(ip_dgram(fam, a, b, proto, draw(st.binary(max_size=48)), **ex))
    return out


@st.composite
def icmp_error_for(draw, d: Dgram):
    """An ICMP/ICMPv6 error quoting datagram `d` (sent back to its source, usually)."""
    fam = d.fam
    n = draw(st.sampled_from([len(d.ip), 28, 48, 68, 1000, 20, 40, 8]))
    inner = d.ip[:n]
    to = d.src if draw(st.integers(0, 5)) else draw(st.sampled_from(HOSTS[fam]))
    frm = draw(st.sampled_from([d.dst, ROUTER[fam]]))
    if fam == 4:
        t = draw(st.sampled_from([3, 3, 11, 12, 4, 5]))
        code = draw(st.sampled_from([0, 1, 3, 4, 13]))
        msg = icmp_msg(4, frm, to, t, code, b"\0\0\x05\xdc" if t == 3 else b"\0\0\0\0", inner,
                       csum=draw(csum_mode))
        return ip_dgram(4, frm, to, P_ICMP, msg)
    t = draw(st.sampled_from([1, 1, 2, 3, 4, 137]))
    if t == 137:                            # redirect: link-local router, hop limit 255, option 4
        frm = ROUTER[6]
        inner = inner[:(len(inner) // 8) * 8]
        opt = bytes([4, 1 + len(inner) // 8]) + bytes(6) + inner
        msg = icmp_msg(6, frm, to, 137, 0, bytes(4), a6("2001:db8::99") + d.dst + opt, csum=draw(csum_mode))
        return Dgram(6, ipv6(frm, to, P_ICMP6, msg, hlim=draw(st.sampled_from([255, 255, 64]))), frm, to,
                     P_ICMP6)
    msg = icmp_msg(6, frm, to, t, draw(st.sampled_from([0, 1, 4])), b"\0\0\x05\x00", inner[:1232],
                   csum=draw(csum_mode))
    return ip_dgram(6, frm, to, P_ICMP6, msg)


CONVS = [tcp_conv, tcp_conv, tcp_conv, udp_conv, udp_conv, icmp_conv, sctp_conv, dccp_conv, gre_conv,
         other_conv]


# ---- fragments --------------------------------------------------------------------------------

def fragment(d: Dgram, sizes: list[int], ident: int) -> list[bytes]:
    """Fragments of datagram `d` (IP packets), with payload pieces of `sizes` (multiples of 8 but the
    last; whatever is left goes into the last)."""
    if d.fam == 4:
        ihl = (d.ip[0] & 15) * 4
        hdr, data = d.ip[:ihl], d.ip[ihl:]
        out, off = [], 0
        for k, n in enumerate(sizes + [len(data)]):
            piece = data[off:off + n] if k < len(sizes) else data[off:]
            more = off + len(piece) < len(data)
            h = bytearray(hdr)
            struct.pack_into("!HHH", h, 2, ihl + len(piece), ident, (0x2000 if more else 0) | (off // 8))
            h[10:12] = b"\0\0"
            h[10:12] = struct.pack("!H", inet_csum(bytes(h)))
            out.append(bytes(h) + piece)
            off += len(piece)
            if not more:
                break
        return out
    nh, data = d.ip[6], d.ip[40:]
    out, off = [], 0
    for k, n in enumerate(sizes + [len(data)]):
        piece = data[off:off + n] if k < len(sizes) else data[off:]
        more = off + len(piece) < len(data)
        fh = struct.pack("!BBHI", nh, 0, (off & 0xFFF8) | (1 if more else 0), ident)
        out.append(ipv6(d.src, d.dst, 44, fh + piece, hlim=d.ip[7]))
        off += len(piece)
        if not more:
            break
    return out


@st.composite
def fragmented(draw, d: Dgram):
    sizes = draw(st.lists(st.sampled_from([8, 8, 16, 24, 48, 7, 0, 1480]), min_size=1, max_size=4))
    frags = fragment(d, sizes, draw(st.integers(0, 0xFFFF) if d.fam == 4 else u32))
    op = draw(st.sampled_from(["none", "none", "reverse", "dup", "drop", "overlap", "swap"]))
    if op == "reverse":
        frags = frags[::-1]
    elif op == "dup" and frags:
        k = draw(st.integers(0, len(frags) - 1))
        frags.insert(k, frags[k])
    elif op == "drop" and len(frags) > 1:
        del frags[draw(st.integers(0, len(frags) - 1))]
    elif op == "overlap" and len(frags) > 1 and len(frags[-1]) >= 44:
        f = bytearray(frags[-1])
        pos = 6 if d.fam == 4 else 42
        word = struct.unpack_from("!H", f, pos)[0]
        struct.pack_into("!H", f, pos, (word & 0xE007 if d.fam == 4 else word & 0x0007) |
                         ((max(0, (word & 0x1FFF) - 1)) if d.fam == 4 else max(0, (word & 0xFFF8) - 8)))
        frags[-1] = bytes(f)
    elif op == "swap" and len(frags) > 1:
        frags[0], frags[1] = frags[1], frags[0]
    return frags


# ---- a whole capture-like scenario ---------------------------------------------------------------

@dataclass
class Pkt:
    frame: bytes
    iface: int
    caplen: int
    wirelen: int
    ts: int


@dataclass
class Scenario:
    pkts: list
    ifaces: list                  # L2 per interface
    cuts: list                    # batch boundaries
    notes: list = field(default_factory=list)

    def batch(self, lo=0, hi=None, pad=b"") -> Batch:
        """Packets lo..hi-1 as one Batch; `pad` (cycled) follows each packet's captured bytes."""
        pk = self.pkts[lo:hi]
        parts, offsets, pos = [], [], 0
        for k, p in enumerate(pk):
            data = p.frame[:p.caplen]
            offsets.append(pos)
            parts.append(data)
            pos += len(data)
            if pad:
                extra = (pad * (1 + 64 // max(1, len(pad))))[k % len(pad):][:64]
                parts.append(extra)
                pos += len(extra)
        buf = np.frombuffer(b"".join(parts) or b"\0", dtype=np.uint8)
        return Batch(buf, np.array(offsets, dtype=np.int64), np.array([p.caplen for p in pk], dtype=np.uint32),
                     np.array([p.wirelen for p in pk], dtype=np.uint32), np.array([p.ts for p in pk], dtype=np.int64),
                     np.array([p.iface for p in pk], dtype=np.uint16),
                     np.array([i.lt for i in self.ifaces], dtype=np.uint32),
                     np.array([i.fcs for i in self.ifaces], dtype=np.uint32))

    def batches(self, pad=b""):
        bounds = [0] + sorted(set(c for c in self.cuts if 0 < c < len(self.pkts))) + [len(self.pkts)]
        return [self.batch(a, b, pad) for a, b in zip(bounds, bounds[1:]) if b > a]


@st.composite
def l2_for(draw):
    lt = draw(st.sampled_from(HANDLED * 3 + [LT_ETH] * 4 + UNHANDLED))
    tags = ()
    if lt in (LT_ETH, LT_SLL):
        tags = tuple(draw(st.lists(st.tuples(st.sampled_from([0x8100, 0x88A8, 0x9100]), st.integers(0, 0xFFFF)),
                                   max_size=3)))
    return L2(lt, fcs=draw(st.sampled_from([0, 0, 0, 4])) if lt == LT_ETH else 0, tags=tags,
              null_be=draw(st.booleans()), af6=draw(st.sampled_from([10, 24, 28, 30])),
              nflog_extra=draw(st.sampled_from([b"", nflog_tlv(10, b"fastct\0"), nflog_tlv(0x8003, b"x" * 5)])),
              etype=draw(st.sampled_from([None] * 12 + [0x0806, 0x88CC, 0x0800, 0x86DD, 0x8100, 3])))


MUTATION_FIELDS = [0, 2, 3, 4, 5, 6, 9, 20, 24, 26, 32, 33, 40, 44, 46, 52, 53]


@st.composite
def mutate(draw, frame: bytes, l3off: int):
    """(mutated frame, caplen, wirelen)."""
    f = bytearray(frame)
    wire = len(f)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "flip", "set", "field", "field", "cut", "snap", "extend",
                                   "insert", "delete", "wire"]))
        if op in ("flip", "set") and f:
            pos = draw(st.integers(0, len(f) - 1))
            f[pos] = f[pos] ^ (1 << draw(st.integers(0, 7))) if op == "flip" else draw(st.integers(0, 255))
        elif op == "field" and len(f) > l3off + 2:
            # a length or header field set to a wrong value (IP version/IHL, total length, payload
            # length, fragment word, protocol, the transport's length / data offset...)
            pos = min(l3off + draw(st.sampled_from(MUTATION_FIELDS)), len(f) - 2)
            val = draw(st.sampled_from([0, 1, 4, 8, 20, 40, 0x45, 0x60, 0x3FFF, 0x2000, 0x7FFF, 0xFFFF]) |
                       st.integers(0, 0xFFFF))
            f[pos:pos + 2] = struct.pack("!H", val)
        elif op == "cut":
            n = draw(st.integers(0, len(f)))
            del f[n:]
            wire = len(f)
        elif op == "snap":
            n = draw(st.integers(0, len(f)))
            del f[n:]                 # captured bytes only: wirelen stays (a snaplen capture)
        elif op == "extend":
            f += draw(st.binary(min_size=1, max_size=16))
            wire = max(wire, len(f))
        elif op == "insert":
            pos = draw(st.integers(0, len(f)))
            f[pos:pos] = draw(st.binary(min_size=1, max_size=8))
            wire = max(wire, len(f))
        elif op == "delete" and f:
            pos = draw(st.integers(0, len(f) - 1))
            del f[pos:pos + draw(st.integers(1, 8))]
        elif op == "wire":
            wire = draw(st.sampled_from([0, len(f), len(f) + 1, len(f) + 1000, M32]) | st.integers(0, 70000))
    return bytes(f), len(f), wire


@st.composite
def scenarios(draw, max_convs=6, frag_rate=(0, 0, 1, 3), mutate_rates=(0, 0, 1, 3, 10)):
    """A list of frames with interfaces, timestamps and batch boundaries."""
    ifaces = draw(st.lists(l2_for(), min_size=1, max_size=3))
    dgrams: list[list[Dgram | bytes]] = []
    for _ in range(draw(st.integers(1, max_convs))):
        fam = draw(st.sampled_from([4, 4, 6]))
        conv = draw(st.sampled_from(CONVS))
        dgrams.append(list(draw(conv(fam))))
    rnd = draw(st.randoms(use_true_random=False))
    # interleave the conversations, keeping each one's order
    order = [k for k, conv in enumerate(dgrams) for _ in conv]
    rnd.shuffle(order)
    pos = [0] * len(dgrams)
    stream: list[Dgram] = []
    for k in order:
        stream.append(dgrams[k][pos[k]])
        pos[k] += 1
    # ICMP errors quoting packets already sent (rel when the flow is live)
    for _ in range(draw(st.integers(0, 3))):
        if not stream:
            break
        k = draw(st.integers(0, len(stream) - 1))
        stream.insert(k + 1, draw(icmp_error_for(stream[k])))
    # fragments
    frate = draw(st.sampled_from(frag_rate))
    ips: list[tuple[int, bytes]] = []
    for d in stream:
        if frate and rnd.randrange(10) < frate and len(d.ip) > (28 if d.fam == 4 else 48):
            ips.extend((d.fam, f) for f in draw(fragmented(d)))
        else:
            ips.append((d.fam, d.ip))
    # a few frames of random bytes
    for _ in range(draw(st.integers(0, 2))):
        ips.insert(rnd.randrange(len(ips) + 1), (rnd.choice([4, 6]), draw(st.binary(max_size=80))))
    # link layers, mutations, lengths, times
    mrate = draw(st.sampled_from(mutate_rates))
    t = draw(st.sampled_from([0, 1_700_000_000 * SEC, 5 * SEC]))
    pkts = []
    for fam, ip in ips:
        iface = rnd.randrange(len(ifaces))
        # prefer an interface whose raw link type matches the family
        if ifaces[iface].lt == (LT_IPV6 if fam == 4 else LT_IPV4) and rnd.randrange(4):
            iface = rnd.randrange(len(ifaces))
        frame, l3off = ifaces[iface].wrap(fam, ip)
        caplen = wire = len(frame)
        if mrate and rnd.randrange(10) < mrate:
            frame, caplen, wire = draw(mutate(frame, l3off))
        step = draw(st.sampled_from([0, 1_000, SEC // 1000, SEC // 2, SEC // 2, 3 * SEC, 40 * SEC, 200 * SEC,
                                     -2 * SEC]))
        t += step
        pkts.append(Pkt(frame, iface, caplen, wire, t))
    cuts = draw(st.lists(st.integers(0, len(pkts)), max_size=4))
    return Scenario(pkts, ifaces, cuts)


# ---- tracker configurations ---------------------------------------------------------------------

@dataclass
class Config:
    kw: dict
    zone: int = 0
    zone_from_vlan: bool = False
    commit_every: int = 0         # every k-th batch with commit=False (0: never)

    def tracker(self) -> Tracker:
        return Tracker(seed=7, **self.kw)


@st.composite
def configs(draw, small_tables=True, limits=True):
    kw = {"max_conns": draw(st.sampled_from([1, 2, 5, 16, 4096] if small_tables else [4096, 65536])),
          "early_drop": draw(st.booleans()), "dccp_tracker": draw(st.booleans())}
    sc = {}
    if draw(st.booleans()):
        sc["nf_conntrack_checksum"] = 1
    if draw(st.integers(0, 3)) == 0:
        sc["nf_conntrack_tcp_loose"] = 0
    if draw(st.integers(0, 3)) == 0:
        sc["nf_conntrack_tcp_be_liberal"] = 1
    if draw(st.integers(0, 3)) == 0:
        sc["nf_conntrack_tcp_ignore_invalid_rst"] = 1
    if draw(st.integers(0, 3)) == 0:
        sc["nf_conntrack_tcp_max_retrans"] = draw(st.sampled_from([0, 1, 255]))
    if draw(st.integers(0, 3)) == 0:
        sc[draw(st.sampled_from(sorted(TIMEOUT_DEFAULTS)))] = draw(st.sampled_from([0, 1, 5, 86400]))
    kw["sysctl"] = sc
    if limits and draw(st.integers(0, 2)) == 0:
        kw["zone_limits"] = draw(st.dictionaries(st.sampled_from([0, 1, 5, "default"]), st.integers(0, 4),
                                                 max_size=3))
    if draw(st.integers(0, 3)) == 0:
        kw["timeout_policies"] = {draw(st.sampled_from([0, 1, 5])): {
            draw(st.sampled_from(["udp_timeout", "tcp_timeout_established", "icmp_timeout",
                                  "generic_timeout", "tcp_timeout_syn_sent"])): draw(st.sampled_from([0, 1, 2, 100]))}}
    return Config(kw, zone=draw(st.sampled_from([0, 0, 1, 5, 65535])), zone_from_vlan=draw(st.integers(0, 3)) == 0,
                  commit_every=draw(st.sampled_from([0, 0, 0, 2, 3])))


# ---------------------------------------------------------------------------------------------
# the checks

def _stats(t):
    e = t._engine
    s = dict(zip(STAT_NAMES, (int(v) for v in e.stats_array())))
    s["_linktypes"] = int(t.linktype_skipped.sum())
    return s, e.reasons_array().astype(np.int64)


def check_batch(t: Tracker, res, n: int, before, after, commit: bool, count_before: int):
    """Per-packet outputs against each other and against the counters' change over the batch."""
    (s0, r0), (s1, r1) = before, after
    d = {k: s1[k] - s0[k] for k in s1}
    st_ = res.ct_state[:n].astype(np.int64)
    bad = sorted(set(st_.tolist()) - LEGAL)
    assert not bad, f"illegal ct_state values {bad}"
    held = res.held[:n]
    entry = res.entry[:n]
    direction = res.direction[:n]
    assert d["packets"] == n
    assert np.all(st_[held] == 0), "a held fragment has a ct_state"
    assert int(held.sum()) == d["frag_held"]
    zero = int((st_ == 0).sum())
    assert zero == d["non_ip"] + d["untracked"] + d["linktype_skipped"] + d["frag_held"], (zero, d)
    inv = int(((st_ & INV) != 0).sum())
    assert inv == d["invalid"] + d["error"] + d["frag_dropped"] + d["drop"], (inv, d)
    assert inv == int((r1 - r0)[1:].sum()), "invalid packets and per-reason counts disagree"
    assert int(r1[0] - r0[0]) == 0
    assert d["linktype_skipped"] == d["_linktypes"], "skipped frames and per-link-type counts disagree"
    tracked = (st_ & TRK != 0) & (st_ & INV == 0)
    count = t._engine.count
    assert np.all(entry[~tracked] == -1), "an untracked or invalid packet names an entry"
    assert np.all(entry < count), "a packet names an entry past the table"
    if commit:
        if not (d["early_drop"] or d["insert_failed"] or d["expired"]):
            # (a packet's connection that a later packet evicted to make room has entry -1)
            assert np.all(entry[tracked] >= 0), "a tracked packet names no entry"
    else:
        # commit=False: a packet of no stored connection is new without an entry
        assert np.all(st_[tracked & (entry < 0)] == TRK | NEW)
        assert d["insert"] == 0 and count <= count_before
    assert np.all(direction <= 1)
    assert np.all((direction[tracked] == 1) == ((st_[tracked] & RPL) != 0)), "direction and rpl disagree"
    assert d["insert"] <= int((st_ == TRK | NEW).sum())
    for k in ("drop", "early_drop", "insert_failed", "chaintoolong", "found", "insert"):
        assert d[k] >= 0


def check_table(t: Tracker, cfg: Config, zones_seen: set):
    """The index and the entries (all of them, dead ones not yet swept included)."""
    eng = t._engine
    problems = eng.check_invariants()
    assert problems == [], problems[:10]
    max_conns = t._engine.max_conns
    assert eng.count <= max_conns
    view = eng.entries_view()
    cold = eng.cold_view()
    assert len(view) == eng.count == len(cold)
    if not len(view):
        return
    l3 = view["l3"]
    assert np.all((l3 == AF_INET) | (l3 == AF_INET6)), "l3 not 2 or 10"
    v4 = l3 == AF_INET
    assert not np.any(view["src"][v4, 4:]) and not np.any(view["dst"][v4, 4:]), "IPv4 address with junk bytes"
    proto = view["proto"]
    assert np.all(~((proto == P_ICMP) & ~v4)) and np.all(~((proto == P_ICMP6) & v4)), "ICMP in the wrong family"
    for p, types in ICMP_NEW_TYPES.items():
        sel = proto == p
        assert set((view["dport"][sel] >> 8).tolist()) <= types, "an ICMP entry keyed by a non-request type"
    port_protos = [P_TCP, P_UDP, P_SCTP, P_UDPLITE, P_ICMP, P_ICMP6, P_GRE] + ([P_DCCP] if t._dccp_tracker else [])
    generic = ~np.isin(proto, port_protos)
    assert not np.any(view["sport"][generic]) and not np.any(view["dport"][generic]), "ports on a generic entry"
    assert not np.any(view["sport"][proto == P_GRE]), "GRE source key set"
    zone = view["zone"]
    assert set(zone.tolist()) <= zones_seen, (set(zone.tolist()), zones_seen)
    state = view["state"]
    assert np.all(state[proto == P_TCP] < len(TCP_STATES))
    assert np.all(state[proto == P_SCTP] < len(SCTP_STATES))
    if t._dccp_tracker:
        assert np.all(state[proto == P_DCCP] < len(DCCP_STATES))
    status = view["status"].astype(np.int64)
    assert np.all(status & IPS_CONFIRMED), "an entry not CONFIRMED"
    assert not np.any(status & NAT_STATUS), "NAT status bits without NAT"
    # live entries: times and counters
    now = t.now
    live = view["expires"] > now
    counts = full_counters(view, eng.cold_view())
    pk = counts["packets"].astype(np.int64)
    by = counts["bytes"].astype(np.int64)
    assert np.all(pk[live].sum(axis=1) >= 1), "a live entry that counted no packet"
    minlen = np.where(v4, 20, 40)[:, None]
    assert np.all(by >= pk * minlen), "fewer bytes than the smallest IP header per packet"
    assert np.all(by <= pk * 131072), "more bytes than the largest IP datagram per packet"
    assert np.all(view["last_seen"][live] <= now)
    assert np.all(cold["start"][live] <= view["last_seen"][live]), "start after last_seen"
    assert np.all(view["expires"][live] >= view["last_seen"][live]), "expires before last_seen"
    assured = (status & IPS_ASSURED) != 0
    assert np.all(status[assured] & IPS_SEEN_REPLY), "ASSURED without SEEN_REPLY"
    # zone limits: the per-zone counts are the entries' (dead ones included) and within limits
    counts = eng.zone_counts()
    if counts is not None:
        assert np.array_equal(counts, np.bincount(zone, minlength=65536).astype(counts.dtype)), "zone counts"
        limits = t.zone_limits
        for z in set(zone.tolist()):
            lim = limits.get(z, limits.get("default", 0))
            if lim:
                assert counts[z] <= lim, f"zone {z} holds {counts[z]} entries, limit {lim}"


def check_final(t: Tracker):
    ents = t.entries()          # expires the dead ones
    assert len(t) == len(ents) == t.stats()["entries"]
    assert np.all(ents["expires"] > t.now)
    assert t._engine.check_invariants() == []
    keys = {(bytes(e["src"]), bytes(e["dst"]), int(e["sport"]), int(e["dport"]), int(e["zone"]),
             int(e["l3"]), int(e["proto"])) for e in ents}
    assert len(keys) == len(ents), "two entries with the same tuple"


DUMP = os.environ.get("FASTCT_FUZZ_DUMP")     # a folder: failing scenarios are pickled there
HANG_SECONDS = 120


@contextlib.contextmanager
def watchdog():
    """A hang (the engine or a reader looping inside C code) ends the run with every thread's
    traceback after HANG_SECONDS instead of blocking CI forever."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def run_scenario(sc: Scenario, cfg: Config, check=True, pad=b""):
    """Process the scenario's batches; returns (per-packet outputs, final table, counters)."""
    try:
        with watchdog():
            return _run_scenario(sc, cfg, check, pad)
    except BaseException:
        if DUMP:
            import pickle
            os.makedirs(DUMP, exist_ok=True)
            with open(os.path.join(DUMP, f"scenario-{os.getpid()}-{id(sc)}.pkl"), "wb") as fh:
                pickle.dump((sc, cfg, pad), fh)
        raise


def _run_scenario(sc: Scenario, cfg: Config, check, pad):
    t = cfg.tracker()
    states, dirs, helds = [], [], []
    zones_seen = {cfg.zone} if not cfg.zone_from_vlan else set(range(4096))
    for k, b in enumerate(sc.batches(pad)):
        commit = not (cfg.commit_every and k % cfg.commit_every == cfg.commit_every - 1)
        before = _stats(t)
        count_before = t._engine.count
        res = t.process(b, zone=cfg.zone, zone_from_vlan=cfg.zone_from_vlan, commit=commit)
        if check:
            check_batch(t, res, len(b), before, _stats(t), commit, count_before)
            check_table(t, cfg, zones_seen)
        states += res.ct_state.tolist()
        dirs += res.direction.tolist()
        helds += res.held.tolist()
    if check:
        check_final(t)
    table = sorted(repr(e) for e in t.entries().tolist())
    s, r = _stats(t)
    return (states, dirs, helds), table, s, r.tolist()


# ---------------------------------------------------------------------------------------------
# engine properties

@fuzz(250)
@given(sc=scenarios(), cfg=configs())
def test_engine_never_breaks(sc, cfg):
    """Any frames, any configuration: no crash, legal ct_state, counters that add up, a sound
    index and sane entries after every batch."""
    note(f"{len(sc.pkts)} packets, ifaces {[i.lt for i in sc.ifaces]}, cfg {cfg}")
    run_scenario(sc, cfg)


@fuzz(120)
@given(sc=scenarios(max_convs=8, frag_rate=(2, 5), mutate_rates=(0, 1)), cfg=configs())
def test_engine_fragments(sc, cfg):
    """Mostly fragmented traffic (reordered, duplicated, overlapping, missing pieces)."""
    run_scenario(sc, cfg)


@fuzz(120)
@given(sc=scenarios(mutate_rates=(0, 2, 10)), cfg=configs(small_tables=False, limits=False))
def test_bytes_after_caplen_change_nothing(sc, cfg):
    """The parser reads only captured bytes: what follows a packet in the buffer never matters."""
    a = run_scenario(sc, cfg, check=False, pad=b"\x00")
    b = run_scenario(sc, cfg, check=False, pad=bytes(range(255, -1, -1)) + b"\x45\x60\x06\x11\xff")
    assert a == b


def _cmp_view(result):
    """Verdicts, the final table and the counters that must not depend on batch boundaries."""
    (states, dirs, helds), table, s, r = result
    keep = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error", "packets",
            "untracked", "non_ip", "linktype_skipped", "time_backwards", "frag_held", "frag_reassembled",
            "frag_dropped")
    return states, dirs, helds, table, {k: s[k] for k in keep}, r


@fuzz(150)
@given(sc=scenarios(frag_rate=(0, 1, 3)), cfg=configs(small_tables=False, limits=False))
def test_batch_split_changes_nothing(sc, cfg):
    """README: results do not depend on batch boundaries (tables large enough never to fill)."""
    cfg.commit_every = 0
    whole = Scenario(sc.pkts, sc.ifaces, [])
    one = Scenario(sc.pkts, sc.ifaces, list(range(len(sc.pkts))))
    ref = _cmp_view(run_scenario(whole, cfg, check=False))
    assert _cmp_view(run_scenario(sc, cfg, check=False)) == ref
    assert _cmp_view(run_scenario(one, cfg, check=False)) == ref


@fuzz(60)
@given(frames=st.lists(st.tuples(st.sampled_from(HANDLED + UNHANDLED), st.binary(max_size=120),
                          st.integers(0, 200)), min_size=1, max_size=60),
       cfg=configs())
def test_random_bytes_every_link_type(frames, cfg):
    ifaces = sorted({lt for lt, _, _ in frames})
    pkts = [Pkt(f, ifaces.index(lt), len(f), len(f) + extra, k * SEC // 10) for k, (lt, f, extra) in enumerate(frames)]
    sc = Scenario(pkts, [L2(lt) for lt in ifaces], [len(pkts) // 2])
    run_scenario(sc, cfg)


# ---------------------------------------------------------------------------------------------
# capture readers

def pcap_bytes(pkts, e="<", nsec=False, linkfield=1, snaplen=65535):
    out = struct.pack(e + "IHHiIII", 0xA1B23C4D if nsec else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linkfield)
    starts = []
    for ts, frame, wire in pkts:
        starts.append(len(out))
        frac = ts % SEC if nsec else (ts % SEC) // 1000
        out += struct.pack(e + "IIII", ts // SEC, frac, len(frame), wire) + frame
    return out, starts + [len(out)]


def ng_block(e, btype, body):
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def ng_opts(e, opts):
    out = b""
    for code, val in opts:
        out += struct.pack(e + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)
    return out + (struct.pack(e + "HH", 0, 0) if opts else b"")


def pcapng_bytes(pkts, ifaces, e="<", blocks="epb"):
    """SHB, the IDBs (link type, if_tsresol, if_fcslen), then one packet block per packet."""
    out = ng_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + ng_opts(e, [(4, b"fuzz")]))
    for lt, tsresol, fcs in ifaces:
        opts = []
        if tsresol is not None:
            opts.append((9, bytes([tsresol])))
        if fcs is not None:
            opts.append((13, bytes([fcs])))
        out += ng_block(e, 1, struct.pack(e + "HHI", lt, 0, 0) + ng_opts(e, opts))
    starts = []
    for k, (ts, frame, wire, iface) in enumerate(pkts):
        starts.append(len(out))
        kind = blocks if blocks != "mixed" else ("epb", "spb", "opb", "epb")[k % 4]
        if kind == "spb" and iface == 0:
            out += ng_block(e, 3, struct.pack(e + "I", wire) + frame)
        elif kind == "opb":
            ticks = ts // 1000
            out += ng_block(e, 2, struct.pack(e + "HHIIII", iface, 0, ticks >> 32, ticks & M32, len(frame), wire) + frame)
        else:
            ticks = ts // 1000
            out += ng_block(e, 6, struct.pack(e + "IIIII", iface, ticks >> 32, ticks & M32, len(frame), wire) + frame)
        if k % 5 == 4:
            out += ng_block(e, 5, struct.pack(e + "III", 0, 0, 0))        # an ISB: skipped
    return out, starts + [len(out)]


@st.composite
def capture_files(draw):
    """(bytes, record start offsets + end) of a valid pcap or pcapng file, and its packets."""
    n = draw(st.integers(0, 12))
    frames = [draw(st.binary(max_size=90)) for _ in range(n)]
    base = draw(st.sampled_from([0, 1_700_000_000 * SEC]))
    ts = [base + k * draw(st.sampled_from([1, 1000, SEC])) for k in range(n)]
    if draw(st.booleans()):
        e, nsec = draw(st.sampled_from(["<", ">"])), draw(st.booleans())
        link = draw(st.sampled_from([1, 101, 113, 147, 0x04000001 | (2 << 28)]))
        data, starts = pcap_bytes([(t, f, len(f) + draw(st.sampled_from([0, 0, 4]))) for t, f in zip(ts, frames)],
                                  e, nsec, link, draw(st.sampled_from([65535, 0, 64, 1 << 30])))
        return data, starts, [(t if nsec else t // 1000 * 1000, f) for t, f in zip(ts, frames)]
    e = draw(st.sampled_from(["<", ">"]))
    nif = draw(st.integers(1, 3))
    ifaces = [(draw(st.sampled_from([1, 101, 113, 276])), draw(st.sampled_from([None, 6, 9])),
               draw(st.sampled_from([None, 0, 4]))) for _ in range(nif)]
    pk = [(t, f, len(f), draw(st.integers(0, nif - 1))) for t, f in zip(ts, frames)]
    blocks = draw(st.sampled_from(["epb", "mixed"]))
    data, starts = pcapng_bytes(pk, ifaces, e, blocks)
    return data, starts, None


@st.composite
def damaged(draw, data: bytes):
    """A damaged copy and the offset of its first changed byte (len(data) when unchanged)."""
    f = bytearray(data)
    first = len(f)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cut", "flip", "set32", "set32", "insert", "delete", "append"]))
        if op == "cut":
            n = draw(st.integers(0, len(f)))
            del f[n:]
            first = min(first, n)
        elif op == "flip" and f:
            p = draw(st.integers(0, len(f) - 1))
            f[p] ^= 1 << draw(st.integers(0, 7))
            first = min(first, p)
        elif op == "set32" and len(f) >= 4:
            p = draw(st.integers(0, len(f) - 4))
            val = draw(st.sampled_from([0, 1, 4, 8, 12, 16, 20, 28, 32, 0x7FFFFFFF, M32, 1 << 24, 262145,
                                        0x0A0D0D0A, 1, 6]) | st.integers(0, M32))
            f[p:p + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), val)
            first = min(first, p)
        elif op == "insert":
            p = draw(st.integers(0, len(f)))
            f[p:p] = draw(st.binary(min_size=1, max_size=12))
            first = min(first, p)
        elif op == "delete" and f:
            p = draw(st.integers(0, len(f) - 1))
            del f[p:p + draw(st.integers(1, 12))]
            first = min(first, p)
        elif op == "append":
            f += draw(st.binary(min_size=1, max_size=40))
            first = min(first, len(data))
    return bytes(f), first


def _read_everything(path: Path, batch_size: int, data: bytes):
    """All packets (bytes, ts, iface) of a capture, and the error (None, or CaptureError)."""
    with watchdog():
        return _read_everything_(path, batch_size, data)


def _read_everything_(path: Path, batch_size: int, data: bytes):
    try:
        reader = CaptureReader(path, batch_size=batch_size)
    except CaptureError as exc:
        assert str(path) in str(exc) and exc.offset >= 0
        return [], exc
    out = []
    t = Tracker(max_conns=64, seed=1)
    with reader:
        for b in reader:
            assert 1 <= len(b) <= batch_size
            assert len(b.if_linktype) == len(b.if_fcslen) >= 1
            assert np.all(b.iface < len(b.if_linktype))
            ends = b.offsets + b.caplen.astype(np.int64)
            assert np.all(b.offsets >= 0) and np.all(ends <= len(data)), "a packet outside the file"
            t.process(b)
            for o, c, ts, i in zip(b.offsets, b.caplen, b.ts, b.iface):
                out.append((data[o:o + c], int(ts), int(i)))
        err = reader.error
    assert err is None or isinstance(err, CaptureError)
    if err is not None:
        assert 0 <= err.offset <= len(data) and str(path) in str(err)
    return out, err


@fuzz(250)
@given(f=capture_files(), data=st.data(), batch_size=st.sampled_from([1, 2, 3, 4096]))
def test_damaged_captures(f, data, batch_size):
    """Damaged pcap / pcapng files: packets inside the file or a CaptureError, nothing else, and
    every packet whose record lies wholly before the first damaged byte read unchanged."""
    raw, starts, _ = f
    bad, first = data.draw(damaged(raw))
    with tempfile.TemporaryDirectory() as d:
        good_path, bad_path = Path(d) / "good.cap", Path(d) / "bad.cap"
        good_path.write_bytes(raw)
        bad_path.write_bytes(bad)
        ref, ref_err = _read_everything(good_path, 4096, raw)
        assert ref_err is None
        assert len(ref) == len(starts) - 1
        got, err = _read_everything(bad_path, batch_size, bad)
    # records wholly before the first changed byte (for pcapng a record ends where the next packet
    # block starts, after any statistics block: conservative)
    whole = sum(1 for s, e in zip(starts, starts[1:]) if e <= first)
    assert len(got) >= whole and got[:whole] == ref[:whole], f"the packets before the damage at {first} changed"
    if err is not None and first >= starts[0]:
        # the damage cannot be reported before the record holding the first changed byte
        assert err.offset >= max(s for s in starts if s <= first), (err, first, starts)


@fuzz(120)
@given(st.binary(max_size=300), st.sampled_from([b"", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                                                 b"\x0a\x0d\x0d\x0a", b"\x0a\x0d\x0d\x0a\x1c\0\0\0\x4d\x3c\x2b\x1a"]))
def test_random_capture_bytes(body, magic):
    data = magic + body
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "random.cap"
        p.write_bytes(data)
        if not data:
            with pytest.raises(CaptureError):
                CaptureReader(p)
            return
        _read_everything(p, 3, data)


# ---------------------------------------------------------------------------------------------
# text parsers and the command line

addr_texts = st.sampled_from(["10.0.0.1", "10.0.0.9", "192.0.2.1", "0.0.0.0", "255.255.255.255", "2001:db8::1",
                              "2001:db8::ff", "::", "::1", "fe80::1%eth0", "::ffff:10.0.0.1", "1.2.3", "1.2.3.4.5",
                              "[2001:db8::1]", "01.2.3.4", "", "abc", "2001:db8::1::2", "10.0.0.256"]) | \
    st.text(alphabet="0123456789abcdef.:[]%-", max_size=12)
port_texts = st.sampled_from(["", "0", "1", "80", "65535", "65536", "080", "0x50", "1-2", "2-1", "5-", "-5",
                              "1-65535", "99999999999999999999", "٣", "80/90", "http"]) | \
    st.text(alphabet="0123456789-/", max_size=8)
flag_texts = st.lists(st.sampled_from(["random", "fully-random", "persistent", "random-fully", "--random-fully",
                                       "", "RANDOM", "x"]), max_size=3)


@st.composite
def nat_texts(draw):
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=40))
    a = draw(addr_texts)
    bracket = draw(st.sampled_from(["none", "none", "one", "both", "open"]))
    rng = draw(st.none() | addr_texts)
    if bracket == "one":
        text = f"[{a}" + (f"-{rng}" if rng is not None else "") + "]"
    elif bracket == "both":
        text = f"[{a}]" + (f"-[{rng}]" if rng is not None else "")
    elif bracket == "open":
        text = f"[{a}"
    else:
        text = a + (f"-{rng}" if rng is not None else "")
    if draw(st.booleans()):
        text += ":" + draw(port_texts)
    flags = draw(flag_texts)
    if flags:
        text += "," + ",".join(flags)
    if draw(st.integers(0, 9)) == 0:
        text = text.replace(draw(st.sampled_from(["-", ":", ",", "."])), draw(st.sampled_from([" ", "", "\0", "::"])))
    return text


def _check_rule(rule):
    assert isinstance(rule, nat.NatRule)
    assert rule.to_min is not None and rule.to_min.version == rule.to_max.version
    assert int(rule.to_min) <= int(rule.to_max)
    if rule.to_ports is not None:
        lo, hi = rule.to_ports
        assert 1 <= lo <= hi <= 65535
    assert rule.flags <= set(nat.NAT_FLAGS)
    prog = compile_ruleset(nat.NatRules([rule]).to_ruleset())
    assert len(prog.rules) == 1 and len(prog.targets) == 1


@fuzz(400)
@given(nat_texts(), st.sampled_from(["snat", "dnat", "masquerade"]))
def test_nat_target_parsers(text, kind):
    try:
        rule = nat.parse_masquerade(text) if kind == "masquerade" else nat.parse_spec(text, kind)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    _check_rule(rule)
    if kind == "masquerade":
        assert rule.to_min == rule.to_max and "persistent" not in rule.flags


@fuzz(100)
@given(st.lists(nat_texts(), max_size=3), st.lists(nat_texts(), max_size=3), st.lists(nat_texts(), max_size=2))
def test_nat_rules_from_cli(snat, dnat, masq):
    try:
        rules = nat.NatRules.from_cli(snat=snat, dnat=dnat, masquerade=masq)
    except ValueError:
        return
    for r in rules:
        _check_rule(r)
    assert len(compile_ruleset(rules.to_ruleset()).rules) == len(rules)


sysctl_names = st.sampled_from(sysctl.known_names() + ["net.netfilter.nf_conntrack_tcp_loose", "nf_conntrack_helper",
                                                        "bogus", "", "net.ipv4.ipfrag_time", "nf_conntrack_",
                                                        "net/netfilter/nf_conntrack_udp_timeout", " max "]) | \
    st.text(max_size=30)
value_texts = st.sampled_from(["0", "1", "2", "-1", "255", "256", "2147483647", "2147483648", "1e3", "0x10", " 5 ",
                               "", "99999999999999999999999", "5" * 5000, "٣", "1_0"]) | st.text(max_size=12)


@st.composite
def option_texts(draw, option):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.text(max_size=40))
    if option == "--sysctl":
        return f"{draw(sysctl_names)}{draw(st.sampled_from(['=', '=', '', '==', ':']))}{draw(value_texts)}"
    if option == "--timeout-policy":
        zone = draw(st.sampled_from(["0", "5", "65535", "65536", "-1", "", "x", "5" * 5000]) | st.text(max_size=5))
        name = draw(st.sampled_from(sorted(TIMEOUT_DEFAULTS) + ["nf_conntrack_udp_timeout", "max", "tcp_loose", ""]))
        return f"{zone}{draw(st.sampled_from([':', ':', '', '=']))}{name}={draw(value_texts)}"
    zone = draw(st.sampled_from(["0", "5", "default", "65535", "65536", "-1", "", "Default", "5" * 5000]))
    return f"{zone}{draw(st.sampled_from(['=', '=', '', ':']))}{draw(value_texts)}"


@fuzz(300)
@given(st.sampled_from(["--sysctl", "--timeout-policy", "--zone-limit"]), st.data())
def test_text_option_parsers(option, data):
    text = data.draw(option_texts(option))
    # the library functions behind the options raise ValueError only
    try:
        if option == "--sysctl":
            name, value = sysctl.parse_assignment(text)
            sysctl.normalise({name: value})
        elif option == "--timeout-policy":
            sysctl.parse_timeout_policy(text)
        else:
            cli._zone_limit(text)
    except ValueError as exc:
        assert str(exc)


@pytest.fixture(scope="module")
def tiny_pcap(tmp_path_factory):
    p = tmp_path_factory.mktemp("fuzz") / "tiny.pcap"
    frame = L2(LT_ETH).wrap(4, ipv4(HOSTS[4][0], HOSTS[4][1], P_UDP,
                                    udp_seg(4, HOSTS[4][0], HOSTS[4][1], 1000, 53, b"q")))[0]
    p.write_bytes(pcap_bytes([(SEC, frame, len(frame))])[0])
    return p


@fuzz(250)
@given(st.lists(st.tuples(st.sampled_from(["--sysctl", "--timeout-policy", "--zone-limit", "--max-conns", "--zone",
                                           "--seed", "--batch-size"]), st.data()), min_size=1, max_size=3))
def test_cli_option_text(tiny_pcap, opts):
    argv = ["track"]
    for option, data in opts:
        if option in ("--sysctl", "--timeout-policy", "--zone-limit"):
            text = data.draw(option_texts(option))
        else:
            text = data.draw(value_texts)
        argv.append(f"{option}={text}")
    argv.append(str(tiny_pcap))
    rc, out, err = run_cli(argv)
    assert "Traceback" not in err and "Traceback" not in out
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert out == ""
        lines = err.strip().split("\n")          # (the message may quote control characters)
        assert lines[0].startswith(("usage: fastct track", "fastct: error:")) and "error:" in err, err
    else:
        assert out.count("\n") <= 1          # (a zero timeout leaves the flow dead at the end)


# ---------------------------------------------------------------------------------------------
# known bugs: minimal reproducers


def _ng(e, btype, body):
    return ng_block(e, btype, body)


def test_bug_pcapng_spb_shorter_than_16_bytes(tmp_path):
    e = "<"
    data = _ng(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)) + \
        _ng(e, 1, struct.pack(e + "HHI", 1, 0, 0)) + struct.pack(e + "III", 3, 12, 12)
    p = tmp_path / "spb12.pcapng"
    p.write_bytes(data)
    rc, out, err = run_cli(["track", str(p)])
    assert "Traceback" not in err
    assert rc == 1 and "fastct: error:" in err and "byte offset" in err


def test_bug_pcapng_spb_shorter_than_16_bytes_mid_file(tmp_path):
    e = "<"
    frame = L2(LT_ETH).wrap(4, ipv4(HOSTS[4][0], HOSTS[4][1], 253, b"x" * 20))[0]
    data = _ng(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)) + \
        _ng(e, 1, struct.pack(e + "HHI", 1, 0, 0)) + struct.pack(e + "III", 3, 12, 12) + \
        _ng(e, 6, struct.pack(e + "IIIII", 0, 0, 1000, len(frame), len(frame)) + frame)
    p = tmp_path / "spb12mid.pcapng"
    p.write_bytes(data)
    with CaptureReader(p) as r:
        n = sum(len(b) for b in r)
        err = r.error
    assert n == 0 and isinstance(err, CaptureError)


def _frag6(nh, off, more, ident):
    return struct.pack("!BBHI", nh, 0, off << 3 | more, ident)


SRC6, DST6 = a6("2001:db8::1"), a6("2001:db8::2")
# An IPv6 first fragment whose Destination Options header follows its Fragment header: the parser
# records the transport header's offset in the fragmentable part (8) in its per-slot metadata.
FIRST_WITH_DSTOPTS = ipv6(SRC6, DST6, 44, _frag6(60, 0, 1, 1) + bytes([17, 0, 1, 4, 0, 0, 0, 0]) +
                          struct.pack("!HHHH", 1, 2, 16, 0))
OTHER = ipv6(SRC6, DST6, P_UDP, struct.pack("!HHHH", 5, 6, 8, 0))
# An SCTP INIT in two fragments: ports and tag, then the checksum and the INIT chunk at offset 8.
SCTP_F1 = ipv6(SRC6, DST6, 44, _frag6(P_SCTP, 0, 1, 7) + struct.pack("!HHI", 5000, 5001, 0))
SCTP_F2 = ipv6(SRC6, DST6, 44, _frag6(P_SCTP, 1, 0, 7) + b"\0\0\0\0" +
               struct.pack("!BBHIIHHI", 1, 0, 20, 0x11223344, 65535, 1, 1, 99))


def test_bug_ipv6_later_fragment_uses_stale_offset():
    def run(batches):
        t = Tracker(max_conns=64, seed=1)
        return [t.process(Batch.from_frames(b, linktype=LT_IPV6)).ct_state.tolist() for b in batches]
    assert run([[SCTP_F1, SCTP_F2]]) == [[0, TRK | NEW]]
    # the same two fragments after an unrelated batch whose packet 1 was such a first fragment
    assert run([[OTHER, FIRST_WITH_DSTOPTS], [SCTP_F1, SCTP_F2]])[1] == [0, TRK | NEW]


def test_bug_ipv6_later_fragment_batch_size_changes_the_table(tmp_path):
    p = tmp_path / "frag6.pcap"
    frames = [OTHER, FIRST_WITH_DSTOPTS, SCTP_F1, SCTP_F2]
    p.write_bytes(pcap_bytes([(SEC * (k + 1), f, len(f)) for k, f in enumerate(frames)], linkfield=LT_IPV6)[0])
    runs = [run_cli(["track", "--seed", "1", "--batch-size", bs, str(p)]) for bs in ("4096", "2")]
    assert runs[0][0] == runs[1][0] == 0
    assert "sctp" in runs[0][1]
    assert runs[0][1] == runs[1][1]


SEGV_DRIVER = textwrap.dedent(r"""
    import ctypes, mmap, struct, sys
    import numpy as np
    from fastct import Batch, Tracker
    first, later = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
    t = Tracker(max_conns=64, seed=1)
    t.process(Batch.from_frames([first], linktype=229))
    # the later fragment alone in a batch whose buffer follows 64 KiB of inaccessible memory
    GUARD = 65536
    m = mmap.mmap(-1, GUARD + 4096)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    m[GUARD:GUARD + len(later)] = later
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(addr, GUARD, 0) == 0
    buf = np.frombuffer(m, dtype=np.uint8)[GUARD:GUARD + len(later)]
    n = len(later)
    b = Batch(buf, np.array([0]), np.array([n]), np.array([n]), np.array([2_000_000_000]), np.array([0]),
              np.array([229]), np.array([0]))
    print(t.process(b).ct_state.tolist())
""")


def test_bug_ipv6_later_fragment_reads_before_the_buffer():
    dst = b"".join(bytes([60 if i < 29 else 17, 255, 1, 0xFC]) + bytes(2044) for i in range(30))
    first = ipv6(SRC6, DST6, 44, _frag6(60, 0, 1, 1) + dst + struct.pack("!HHHH", 1, 2, 8, 0))
    later = ipv6(SRC6, DST6, 44, _frag6(P_UDP, 1, 0, 9) + bytes(16))
    r = subprocess.run([sys.executable, "-c", SEGV_DRIVER, first.hex(), later.hex()], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])


def _raw4(src, dst, proto, l4):
    return ipv4(a4(src), a4(dst), proto, l4)


def test_bug_result_entry_of_an_evicted_connection():
    udp = _raw4("10.0.0.1", "10.0.0.2", P_UDP, udp_seg(4, a4("10.0.0.1"), a4("10.0.0.2"), 1, 2))
    for sport in range(1, 5000):
        # a TCP packet with SYN and FIN (refused) whose hash lands near the UDP entry's slot
        bad = _raw4("10.0.0.3", "10.0.0.4", P_TCP, tcp_seg(4, a4("10.0.0.3"), a4("10.0.0.4"), sport, 4, 1, 0, SYN | FIN))
        t = Tracker(max_conns=1, seed=1)
        res = t.process(Batch.from_frames([udp, bad], linktype=LT_RAW))
        if t.stats()["early_drop"]:
            break
    else:
        pytest.fail("no early drop happened (precondition)")
    assert res.ct_state.tolist() == [TRK | NEW, TRK | INV]
    assert t.stats()["reasons"] == {"TCP flag combination invalid": 1}
    # The UDP connection was evicted to make room for the refused packet: its packet's entry
    # says so (-1) rather than naming a slot past the now empty table.
    assert len(t.entries()) == 0 and res.entry.tolist() == [-1, -1]
