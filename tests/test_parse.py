"""The frame parser (fastct/_parse.pxd), tested through the public API only.

Every frame here is built byte by byte with struct from the protocol layouts (Ethernet / 802.1Q /
802.1ad, Linux cooked SLL and SLL2, BSD loopback, NFLOG TLVs, IPv4 / IPv6 and their extension
headers, TCP / UDP / UDP-Lite / ICMP / SCTP / GRE / DCCP), and every expected value is worked out
from those layouts: which header a capture of a given length still holds, what the IP total length
is (the kernel's byte counters add it, not the frame length), which reason applies.  fastct's own
output is never used as the expectation.
"""
import socket
import struct

import numpy as np
import pytest

from fastct import CT_STATE_BITS as B, Batch, Tracker

TRK, NEW, EST, RPL, INV = B["trk"], B["new"], B["est"], B["rpl"], B["inv"]
REL = B["rel"]
TRACKED = {TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | REL, TRK | REL | RPL}
ALLOWED = {0, INV | TRK} | TRACKED

# Reason names (fastct/include/ct_defs.h).
R_L2 = "link header truncated"
R_VLAN = "VLAN tag truncated"
R_IPTRUNC = "IP header truncated"
R_VERSION = "IP version does not match the link type"
R_HLEN = "IPv4 header length < 20"
R_IPLEN = "IP total length shorter than its header or longer than the frame"
R_EXT = "IPv6 extension header truncated"
R_L4 = "transport header truncated"
R_UDPLEN = "UDP length field shorter than its header or past the packet"
R_DOFF = "TCP data offset < 5 or past the packet"
R_ICMPERR = "ICMP error quoting no known connection"
R_FRAG_BAD = "fragment inconsistent (empty, past the end, or datagram over 65535 bytes): dropped"

# Link types (pcap LINKTYPE_* values).
LT_NULL, LT_ETH, LT_RAW, LT_LOOP, LT_SLL = 0, 1, 101, 108, 113
LT_IPV4, LT_IPV6, LT_NFLOG, LT_SLL2 = 228, 229, 239, 276
HANDLED = [LT_NULL, LT_ETH, LT_RAW, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_NFLOG, LT_SLL2]

# IP protocol numbers.
P_ICMP, P_TCP, P_UDP, P_DCCP, P_GRE, P_ICMP6, P_SCTP, P_UDPLITE = 1, 6, 17, 33, 47, 58, 132, 136
SYN, ACK = 0x02, 0x10

A4, B4 = "10.1.1.1", "10.2.2.2"
A6, B6 = "2001:db8::1", "2001:db8::2"


# ---- building packets ------------------------------------------------------------------------
def ip4(a):
    return socket.inet_pton(socket.AF_INET, a)


def ip6(a):
    return socket.inet_pton(socket.AF_INET6, a)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(payload, proto=P_UDP, src=A4, dst=B4, opts=b"", ihl=None, tot=None, frag=0, version=4):
    """IPv4 header + payload.  `frag` is the 16-bit flags/fragment-offset word."""
    assert len(opts) % 4 == 0
    if ihl is None:
        ihl = (20 + len(opts)) // 4
    if tot is None:
        tot = 20 + len(opts) + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, tot, 0x1234, frag, 64, proto, 0,
                      ip4(src), ip4(dst)) + opts
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(payload, nh=P_UDP, src=A6, dst=B6, plen=None):
    if plen is None:
        plen = len(payload)
    return struct.pack("!IHBB16s16s", 6 << 28, plen, nh, 64, ip6(src), ip6(dst)) + payload


def udp(sport=5000, dport=53, data=b"q" * 8, ulen=None, csum=0):
    return struct.pack("!HHHH", sport, dport, 8 + len(data) if ulen is None else ulen, csum) + data


def tcp(sport=40000, dport=80, flags=SYN, seq=1000, ack=0, opts=b"", doff=None, data=b"", win=65535):
    assert len(opts) % 4 == 0
    if doff is None:
        doff = 5 + len(opts) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, win, 0, 0) + opts + data


# SYN options: MSS 1460, window scale 7, NOP, SACK permitted, NOP, NOP (12 bytes: data offset 8).
SYN_OPTS = bytes([2, 4, 0x05, 0xB4, 3, 3, 7, 1, 4, 2, 1, 1])


def icmp(type_, code=0, ident=0x4242, seq=1, data=b"p" * 16):
    return struct.pack("!BBHHH", type_, code, 0, ident, seq) + data


def eth(ip, etype=0x0800, tags=()):
    """Ethernet II; `tags` are (TPID, VLAN id) pairs, outermost first."""
    out = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02"
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", etype) + ip


def sll(ip, proto=0x0800):
    # packet type (0 = to us), ARPHRD_ETHER, address length 6, address padded to 8, protocol.
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\0\0\0\0\x01\0\0", proto) + ip


def sll2(ip, proto=0x0800):
    # protocol, reserved, interface index, ARPHRD_ETHER, packet type, address length, address.
    return struct.pack("!HHIHBB8s", proto, 0, 3, 1, 0, 6, b"\x02\0\0\0\0\x01\0\0") + ip


def null(ip, af=2, order="<"):
    return struct.pack(order + "I", af) + ip


def loop(ip, af=2):
    return struct.pack(">I", af) + ip


def tlv(ttype, value):
    """NFLOG TLV: length (header included, padding excluded) and type in host (little-endian) order,
    value padded to a multiple of 4."""
    out = struct.pack("<HH", 4 + len(value), ttype) + value
    return out + b"\0" * (-len(out) % 4)


def nflog(ip, family=2, payload_type=9):
    hdr = struct.pack("!BBH", family, 0, 7)                  # family, version 0, resource id 7 (BE)
    hw = 0x0800 if family == 2 else 0x86DD
    return (hdr + tlv(1, struct.pack("!HBB", hw, 3, 0))    # NFULA_PACKET_HDR
            + tlv(10, b"fastct\0")                          # NFULA_PREFIX (7 bytes: padded to 8)
            + tlv(payload_type, ip))                        # NFULA_PAYLOAD


# IPv6 extension headers (next header first).
def hbh(nh, units=0, proto_len=None):
    """Hop-by-hop or destination options: (units + 1) * 8 bytes, filled with one PadN option."""
    body = 8 * (units + 1) - 2
    return bytes([nh, units if proto_len is None else proto_len, 1, body - 2]) + b"\0" * (body - 2)


def routing(nh):
    # Type 2 routing header: header ext length 2 (24 bytes), segments left 1, reserved, home address.
    return bytes([nh, 2, 2, 1]) + b"\0" * 4 + ip6("2001:db8::99")


def ah(nh):
    # AH with a 12-byte ICV: 24 bytes, so its payload length field is 24 / 4 - 2 = 4.
    return bytes([nh, 4, 0, 0]) + struct.pack("!II", 0x100, 1) + b"\xaa" * 12


def frag6(nh, offset=0, more=0, res=0):
    return struct.pack("!BBHI", nh, 0, offset << 3 | res << 1 | more, 0xBEEF)


# ---- running them ------------------------------------------------------------------------------
def run(frames, linktype=LT_ETH, wirelen=None, **kw):
    t = Tracker(max_conns=4096, seed=3)
    b = Batch.from_frames(frames, ts=[0.001 * i for i in range(len(frames))], linktype=linktype,
                          wirelen=wirelen, **kw)
    res = t.process(b)
    return t, [int(s) for s in res.ct_state]


def one(frame, linktype=LT_ETH, wirelen=None):
    t, st = run([frame], linktype, None if wirelen is None else [wirelen])
    return t, st[0]


def assert_invalid(frame, reason, linktype=LT_ETH, wirelen=None, stat="invalid"):
    """inv+trk, one `reason`, counted in `stat` (the kernel counts what its ICMP error handler
    refuses in `error`, everything else in `invalid`)."""
    t, st = one(frame, linktype, wirelen)
    assert st == INV | TRK
    s = t.stats()
    assert s[stat] == 1
    assert s["invalid" if stat == "error" else "error"] == 0
    assert s["reasons"] == {reason: 1}
    assert len(t) == 0
    return t


def assert_tracked_udp4(frame, linktype=LT_ETH, iplen=36, sport=5000, dport=53, wirelen=None):
    t, st = one(frame, linktype, wirelen)
    assert st == TRK | NEW
    rec = t.lookup(A4, B4, "udp", sport, dport)
    assert rec is not None
    assert rec["packets"] == [1, 0] and rec["bytes"] == [iplen, 0]
    assert t.stats()["reasons"] == {}
    return t


def assert_tracked_udp6(frame, linktype=LT_ETH, iplen=56, sport=5000, dport=53, wirelen=None):
    t, st = one(frame, linktype, wirelen)
    assert st == TRK | NEW
    rec = t.lookup(A6, B6, "udp", sport, dport)
    assert rec is not None
    assert rec["packets"] == [1, 0] and rec["bytes"] == [iplen, 0]
    assert t.stats()["reasons"] == {}
    return t


U4 = ipv4(udp())                    # 20 + 8 + 8 = 36 bytes
U4R = ipv4(udp(53, 5000), src=B4, dst=A4)
U6 = ipv6(udp())                    # 40 + 16 = 56 bytes
U6R = ipv6(udp(53, 5000), src=B6, dst=A6)
assert len(U4) == 36 and len(U6) == 56

# (name, link type, wrapped IPv4 UDP frame, wrapped IPv6 UDP frame or None)
ENCAPS4 = [
    ("ethernet", LT_ETH, eth(U4)),
    ("802.1q", LT_ETH, eth(U4, tags=[(0x8100, 10)])),
    ("802.1ad+802.1q", LT_ETH, eth(U4, tags=[(0x88A8, 100), (0x8100, 200)])),
    ("3 tags", LT_ETH, eth(U4, tags=[(0x88A8, 100), (0x8100, 200), (0x8100, 300)])),
    ("0x9100", LT_ETH, eth(U4, tags=[(0x9100, 5)])),
    ("0x9100+802.1q", LT_ETH, eth(U4, tags=[(0x9100, 5), (0x8100, 6)])),
    ("sll", LT_SLL, sll(U4)),
    ("sll2", LT_SLL2, sll2(U4)),
    ("raw", LT_RAW, U4),
    ("ipv4", LT_IPV4, U4),
    ("null-le", LT_NULL, null(U4, 2, "<")),
    ("null-be", LT_NULL, null(U4, 2, ">")),
    ("loop", LT_LOOP, loop(U4, 2)),
    ("nflog", LT_NFLOG, nflog(U4, 2)),
]
ENCAPS6 = [
    ("ethernet", LT_ETH, eth(U6, 0x86DD)),
    ("802.1q", LT_ETH, eth(U6, 0x86DD, tags=[(0x8100, 10)])),
    ("802.1ad+802.1q", LT_ETH, eth(U6, 0x86DD, tags=[(0x88A8, 100), (0x8100, 200)])),
    ("sll", LT_SLL, sll(U6, 0x86DD)),
    ("sll2", LT_SLL2, sll2(U6, 0x86DD)),
    ("raw", LT_RAW, U6),
    ("ipv6", LT_IPV6, U6),
    ("null-24-le", LT_NULL, null(U6, 24, "<")),
    ("null-28-le", LT_NULL, null(U6, 28, "<")),
    ("null-30-le", LT_NULL, null(U6, 30, "<")),
    ("null-24-be", LT_NULL, null(U6, 24, ">")),
    ("null-28-be", LT_NULL, null(U6, 28, ">")),
    ("null-30-be", LT_NULL, null(U6, 30, ">")),
    ("loop-24", LT_LOOP, loop(U6, 24)),
    ("loop-28", LT_LOOP, loop(U6, 28)),
    ("loop-30", LT_LOOP, loop(U6, 30)),
    ("nflog", LT_NFLOG, nflog(U6, 10)),
]


# ---- link types ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,lt,frame", ENCAPS4, ids=[e[0] for e in ENCAPS4])
def test_link_types_ipv4(name, lt, frame):
    t = assert_tracked_udp4(frame, lt)
    e = t.entries()
    assert len(e) == 1
    assert e["l3"][0] == 2 and e["proto"][0] == P_UDP
    assert e["sport"][0] == 5000 and e["dport"][0] == 53
    assert bytes(e["src"][0][:4]) == ip4(A4) and bytes(e["dst"][0][:4]) == ip4(B4)


@pytest.mark.parametrize("name,lt,frame", ENCAPS6, ids=[e[0] for e in ENCAPS6])
def test_link_types_ipv6(name, lt, frame):
    t = assert_tracked_udp6(frame, lt)
    e = t.entries()
    assert len(e) == 1
    assert e["l3"][0] == 10 and e["proto"][0] == P_UDP
    assert bytes(e["src"][0]) == ip6(A6) and bytes(e["dst"][0]) == ip6(B6)


def _rewrap(frame4, ip4_old, ip4_new):
    assert frame4.endswith(ip4_old)
    return frame4[:-len(ip4_old)] + ip4_new


@pytest.mark.parametrize("family", [4, 6])
def test_same_flow_under_every_link_type_is_one_connection(family):
    encaps = ENCAPS4 if family == 4 else ENCAPS6
    fwd, rev = (U4, U4R) if family == 4 else (U6, U6R)
    lts = sorted({lt for _, lt, _ in encaps})
    frames, iface = [], []
    # Every encapsulation in the original direction, then every one in the reply direction.
    for payload in (fwd, rev):
        for _, lt, f in encaps:
            if lt == LT_NFLOG:
                f = nflog(payload, 2 if family == 4 else 10)
            else:
                f = _rewrap(f, fwd, payload)
            frames.append(f)
            iface.append(lts.index(lt))
    t, st = run(frames, if_linktypes=lts, iface=iface)
    n = len(encaps)
    assert st == [TRK | NEW] * n + [TRK | EST | RPL] * n
    assert len(t) == 1
    src, dst = (A4, B4) if family == 4 else (A6, B6)
    rec = t.lookup(src, dst, "udp", 5000, 53)
    iplen = len(fwd)
    assert rec["packets"] == [n, n]
    assert rec["bytes"] == [n * iplen, n * iplen]
    assert rec["direction"] == "original"
    s = t.stats()
    assert s["insert"] == 1 and s["invalid"] == 0 and s["non_ip"] == 0


def test_zone_from_vlan_uses_outermost_tag():
    frames = [eth(U4, tags=[(0x88A8, 100), (0x8100, 200), (0x8100, 300)]),
              eth(U4, tags=[(0x8100, 200)]),
              eth(U4)]
    t = Tracker(max_conns=64, seed=3)
    res = t.process(Batch.from_frames(frames, ts=[0, 0.001, 0.002]), zone_from_vlan=True)
    assert list(res.ct_state) == [TRK | NEW] * 3
    assert len(t) == 3
    for zone in (100, 200, 0):
        assert t.lookup(A4, B4, "udp", 5000, 53, zone=zone)["packets"] == [1, 0]
    assert t.lookup(A4, B4, "udp", 5000, 53, zone=300) is None


def test_vlan_id_keeps_only_12_bits():
    # The TCI's PCP (3 bits) and DEI (1 bit) are not part of the VLAN id.
    t = Tracker(max_conns=64, seed=3)
    t.process(Batch.from_frames([eth(U4, tags=[(0x8100, 0xB000 | 42)])], ts=[0]), zone_from_vlan=True)
    assert t.lookup(A4, B4, "udp", 5000, 53, zone=42)["packets"] == [1, 0]


U4L = ipv4(udp(data=b"q" * 40))     # 68 bytes: long enough for an IPv6 header's 40 bytes


@pytest.mark.parametrize("lt,frame", [
    (LT_IPV4, U6), (LT_IPV6, U4L), (LT_RAW, b"\x50" + U4[1:]),
    (LT_ETH, eth(U6, 0x0800)), (LT_ETH, eth(U4L, 0x86DD)),
    (LT_NFLOG, nflog(U6, 2)), (LT_NFLOG, nflog(U4L, 10)),
    (LT_NULL, null(U6, 2)), (LT_LOOP, loop(U4L, 30)), (LT_SLL, sll(U4L, 0x86DD)),
], ids=["v6-under-228", "v4-under-229", "v5-under-101", "v6-in-0x0800", "v4-in-0x86dd",
        "nflog-v6-as-family-2", "nflog-v4-as-family-10", "null-af2-v6", "loop-af30-v4", "sll-v4-0x86dd"])
def test_ip_version_must_match_link_type(lt, frame):
    assert_invalid(frame, R_VERSION, lt)


@pytest.mark.parametrize("lt", [147, 284, 65535])
def test_unhandled_link_type_is_skipped(lt):
    t, st = run([eth(U4), U4, b""], linktype=lt)
    assert st == [0, 0, 0]
    s = t.stats()
    assert s["linktype_skipped"] == 3
    assert s["linktypes_skipped"] == {lt: 3}
    assert s["invalid"] == 0 and s["non_ip"] == 0 and len(t) == 0


def test_unhandled_link_type_counted_per_interface():
    t, st = run([U4, eth(U4), U4, U4], if_linktypes=[284, LT_ETH, 147], iface=[0, 1, 2, 0])
    assert st == [0, TRK | NEW, 0, 0]
    assert t.stats()["linktypes_skipped"] == {284: 2, 147: 1}
    assert t.stats()["linktype_skipped"] == 3


ARP = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02" * 6, ip4(A4), b"\0" * 6, ip4(B4))
LLDP = bytes([0x02, 0x07, 0x04]) + b"\x02" * 6 + bytes([0x04, 0x02, 0x07, 0x31, 0, 0])


@pytest.mark.parametrize("lt,frame", [
    (LT_ETH, eth(ARP, 0x0806)),
    (LT_ETH, eth(LLDP, 0x88CC)),
    (LT_ETH, eth(ARP, 0x0806, tags=[(0x8100, 7)])),
    (LT_ETH, eth(ARP, 0x0806, tags=[(0x88A8, 7), (0x8100, 8)])),
    (LT_ETH, eth(LLDP, 0x88CC, tags=[(0x88A8, 7), (0x8100, 8), (0x8100, 9)])),
    (LT_ETH, eth(U4, 0x0027)),                      # an 802.3 length field, not an ethertype
    (LT_SLL, sll(ARP, 0x0806)),
    (LT_SLL2, sll2(ARP, 0x0806)),
    (LT_NULL, null(U4, 7)),                         # not an IP address family
    (LT_LOOP, loop(U4, 23)),
    (LT_LOOP, struct.pack("<I", 2) + U4),           # LOOP is network order: 0x02000000 is not AF 2
    (LT_NFLOG, nflog(U4, 7)),                       # NFLOG family neither AF_INET nor AF_INET6
    (LT_NFLOG, struct.pack("!BBH", 2, 0, 7) + tlv(10, b"no payload\0")),
], ids=["arp", "lldp", "vlan-arp", "qinq-arp", "3tags-lldp", "8023-length", "sll-arp", "sll2-arp",
        "null-af7", "loop-af23", "loop-le", "nflog-family7", "nflog-no-payload"])
def test_non_ip_frames(lt, frame):
    t, st = one(frame, lt)
    assert st == 0
    s = t.stats()
    assert s["non_ip"] == 1
    assert s["invalid"] == 0 and s["untracked"] == 0 and s["linktype_skipped"] == 0
    assert len(t) == 0


@pytest.mark.parametrize("lt,frame,reason", [
    (LT_ETH, eth(U4)[:13], R_L2),
    (LT_ETH, b"", R_L2),
    (LT_SLL, sll(U4)[:15], R_L2),
    (LT_SLL2, sll2(U4)[:19], R_L2),
    (LT_NULL, b"\x02\0\0", R_L2),
    (LT_LOOP, b"\0\0", R_L2),
    (LT_NFLOG, b"\x02\0\0", R_L2),
    (LT_ETH, eth(U4, tags=[(0x8100, 1)])[:17], R_VLAN),
    (LT_ETH, eth(U4, tags=[(0x88A8, 1), (0x8100, 2)])[:21], R_VLAN),
    (LT_RAW, b"", R_IPTRUNC),
    (LT_RAW, U4[:19], R_IPTRUNC),
    (LT_IPV4, U4[:19], R_IPTRUNC),
    (LT_IPV6, U6[:39], R_IPTRUNC),
    (LT_ETH, eth(U4)[:14 + 10], R_IPTRUNC),
    (LT_ETH, eth(U6, 0x86DD)[:14 + 39], R_IPTRUNC),
], ids=["eth13", "eth0", "sll15", "sll2-19", "null3", "loop2", "nflog3", "vlan-tag", "inner-tag",
        "raw0", "raw19", "ipv4-19", "ipv6-39", "eth+10", "eth+ipv6-39"])
def test_truncated_headers(lt, frame, reason):
    assert_invalid(frame, reason, lt)


def test_nflog_tlv_shorter_than_its_header_or_past_the_frame():
    hdr = struct.pack("!BBH", 2, 0, 7)
    # A TLV whose length (3) is below the 4-byte TLV header.
    assert_invalid(hdr + struct.pack("<HH", 3, 10) + b"\0" * 8, R_L2, LT_NFLOG)
    # A payload TLV claiming more bytes than the frame holds.
    assert_invalid(hdr + struct.pack("<HH", 4 + len(U4) + 8, 9) + U4, R_L2, LT_NFLOG)


def test_nflog_payload_found_after_several_tlvs_and_nested_flag_ignored():
    hdr = struct.pack("!BBH", 2, 0, 7)
    frame = (hdr + tlv(1, struct.pack("!HBB", 0x0800, 3, 0)) + tlv(2, struct.pack("!I", 5))
             + tlv(10, b"x\0") + tlv(4, struct.pack("!I", 2)) + tlv(0x8000 | 9, U4))
    assert_tracked_udp4(frame, LT_NFLOG)


# ---- IPv4 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ihl", range(6, 16))
def test_ipv4_options(ihl):
    n = 4 * (ihl - 5)
    opts = bytes([0x94, 0x04, 0, 0]) + b"\x01" * (n - 5) + b"\x00"    # router alert, NOPs, EOL
    frame = eth(ipv4(udp(1111, 2222), opts=opts[:n]))
    assert_tracked_udp4(frame, iplen=20 + n + 16, sport=1111, dport=2222)


def test_ipv4_options_tcp_ports():
    opts = bytes([0x94, 0x04, 0, 0]) + b"\x01" * 7 + b"\x00"          # IHL 8
    t, st = one(eth(ipv4(tcp(40000, 443, SYN, opts=SYN_OPTS), P_TCP, opts=opts)))
    assert st == TRK | NEW
    rec = t.lookup(A4, B4, "tcp", 40000, 443)
    assert rec["state_name"] == "SYN_SENT"
    assert rec["bytes"] == [32 + 32, 0]
    assert rec["td_scale"][0] == 7


@pytest.mark.parametrize("ihl", range(0, 5))
def test_ipv4_header_length_below_20(ihl):
    assert_invalid(eth(ipv4(udp(), ihl=ihl)), R_HLEN)


@pytest.mark.parametrize("tot,opts", [(0, b""), (19, b""), (20 + 3, b"\x01" * 4), (37, b""),
                                      (36 + 100, b"")],
                         ids=["zero", "19", "below-ihl24", "one-past-frame", "far-past-frame"])
def test_ipv4_total_length_bad(tot, opts):
    # The packet is 36 bytes (or 40 with the options): the total length is below the header
    # length or runs past the frame.
    assert_invalid(eth(ipv4(udp(), opts=opts, tot=tot)), R_IPLEN)


def test_ipv4_total_length_checked_under_raw_and_nflog():
    assert_invalid(ipv4(udp(), tot=37), R_IPLEN, LT_RAW)
    # Under NFLOG the payload TLV ends the packet, even though TLV padding follows it: a 37-byte
    # packet is padded with 3 bytes, and a total length of 38 runs past the TLV.
    ip = ipv4(udp(data=b"q" * 9), tot=38)
    assert len(ip) == 37
    assert_invalid(nflog(ip, 2), R_IPLEN, LT_NFLOG)
    assert_tracked_udp4(nflog(ipv4(udp(data=b"q" * 9)), 2), LT_NFLOG, iplen=37)


def test_ethernet_padding_is_not_counted():
    # A 28-byte UDP/IPv4 packet (no data) is padded to the 60-byte Ethernet minimum.
    ip = ipv4(udp(data=b""))
    frame = eth(ip) + b"\0" * (60 - 14 - len(ip))
    assert len(frame) == 60
    assert_tracked_udp4(frame, iplen=28)
    ip6p = ipv6(udp(data=b""))
    frame6 = eth(ip6p, 0x86DD) + b"\xee" * 20
    assert_tracked_udp6(frame6, iplen=48)


def test_raw_ip_trailing_bytes_not_counted():
    assert_tracked_udp4(U4 + b"\0" * 9, LT_RAW)


@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x00B9, 0x2000 | 0x0010, 0x4000 | 0x0001,
                                  0x1FFF],
                         ids=["MF", "offset1", "offset185", "MF+offset", "DF+offset", "max-offset"])
def test_ipv4_fragments(frag):
    # Held for reassembly (tests/test_fragments.py has the rest; IPv4 finds a datagram too long
    # only when it is complete).
    assert_fragment(eth(ipv4(udp(), frag=frag)))


def assert_fragment(frame, linktype=LT_ETH, dropped=False):
    t = Tracker(max_conns=64, seed=3)
    res = t.process(Batch.from_frames([frame], ts=[0.0], linktype=linktype))
    s = t.stats()
    assert len(t) == 0 and s["invalid"] == 0
    if dropped:
        assert int(res.ct_state[0]) == INV | TRK and not res.held[0]
        assert s["frag_dropped"] == 1 and s["reasons"] == {R_FRAG_BAD: 1}
    else:
        assert int(res.ct_state[0]) == 0 and res.held[0]
        assert s["frag_held"] == 1 and s["reasons"] == {}


def test_ipv4_non_first_fragment_without_transport_header_is_a_fragment():
    assert_fragment(eth(ipv4(b"zz", frag=0x0040)))


def test_ipv4_dont_fragment_is_not_a_fragment():
    assert_tracked_udp4(eth(ipv4(udp(), frag=0x4000)))


def test_ipv4_reserved_flag_is_not_a_fragment():
    # Bit 0x8000 (the "evil bit") is neither MF nor part of the offset.
    assert_tracked_udp4(eth(ipv4(udp(), frag=0x8000)))


# ---- IPv6 ------------------------------------------------------------------------------------
def _chain(transport, proto):
    """hop-by-hop (8) -> routing (24) -> destination options (16) -> AH (24) -> transport."""
    return hbh(43) + routing(60) + hbh(51, units=1) + ah(proto) + transport


def test_ipv6_extension_chain_udp():
    payload = _chain(udp(7000, 8000), P_UDP)
    assert len(payload) == 8 + 24 + 16 + 24 + 16
    t = assert_tracked_udp6(eth(ipv6(payload, nh=0), 0x86DD), iplen=40 + len(payload),
                            sport=7000, dport=8000)
    assert t.entries()["proto"][0] == P_UDP


def test_ipv6_extension_chain_tcp():
    payload = _chain(tcp(40000, 443, SYN, opts=SYN_OPTS), P_TCP)
    t, st = one(eth(ipv6(payload, nh=0), 0x86DD))
    assert st == TRK | NEW
    rec = t.lookup(A6, B6, "tcp", 40000, 443)
    assert rec["state_name"] == "SYN_SENT"
    assert rec["bytes"] == [40 + 72 + 32, 0]


@pytest.mark.parametrize("order", [[0], [43], [60], [51], [0, 60], [60, 43, 60], [51, 51]])
def test_ipv6_extension_headers_each(order):
    builders = {0: lambda nh: hbh(nh), 43: routing, 60: lambda nh: hbh(nh, units=2), 51: ah}
    payload = udp()
    nh = P_UDP
    for h in reversed(order):
        payload = builders[h](nh) + payload
        nh = h
    assert_tracked_udp6(ipv6(payload, nh=nh), LT_IPV6, iplen=40 + len(payload))


@pytest.mark.parametrize("payload,nh", [
    (b"", 0),                                          # next header says hop-by-hop, nothing there
    (hbh(P_UDP)[:6], 0),                               # fewer than 8 bytes left
    (hbh(P_UDP, units=1)[:8], 0),                      # header says 16 bytes, packet holds 8
    (hbh(60) + hbh(P_UDP, units=3)[:24], 0),           # second header says 32, 24 left
    (ah(P_UDP)[:16], 51),                              # AH says 24 bytes, packet holds 16
    (hbh(44), 0),                                      # fragment header missing
], ids=["empty", "6-bytes", "len-past-end", "second-past-end", "ah-past-end", "no-frag-hdr"])
def test_ipv6_extension_header_truncated(payload, nh):
    assert_invalid(ipv6(payload, nh=nh), R_EXT, LT_IPV6)


def test_ipv6_extension_header_cut_by_capture():
    # The packet is whole on the wire, but the capture ends inside the hop-by-hop header.
    frame = eth(ipv6(hbh(P_UDP, units=1) + udp(), nh=0), 0x86DD)
    assert_invalid(frame[:14 + 40 + 6], R_EXT, wirelen=len(frame))


def test_ipv6_atomic_fragment_is_a_whole_datagram():
    # Offset 0 and M = 0: netfilter's defrag queues it like any fragment and it completes at once;
    # the reassembled packet has no Fragment header, so the 8 bytes are not counted.
    payload = frag6(P_UDP, 0, 0) + udp()
    assert_tracked_udp6(ipv6(payload, nh=44), LT_IPV6, iplen=40 + 16)
    # Reserved bits set: still offset 0 and M = 0 (RFC 8200: reserved fields are ignored).
    payload = frag6(P_UDP, 0, 0, res=3) + udp()
    assert_tracked_udp6(ipv6(payload, nh=44), LT_IPV6, iplen=40 + 16)
    # After other extension headers too.
    payload = hbh(44) + frag6(60) + hbh(P_UDP) + udp()
    assert_tracked_udp6(ipv6(payload, nh=0), LT_IPV6, iplen=40 + len(payload) - 8)


@pytest.mark.parametrize("offset,more", [(0, 1), (1, 0), (1, 1), (8191, 0)])
def test_ipv6_fragments(offset, more):
    dropped = offset == 8191 or (more and len(udp()) % 8 != 0)
    assert_fragment(ipv6(frag6(P_UDP, offset, more) + udp(), nh=44), LT_IPV6, dropped)
    assert_fragment(eth(ipv6(hbh(44) + frag6(P_UDP, offset, more) + udp(), nh=0), 0x86DD),
                    dropped=dropped)


def test_ipv6_payload_length_past_the_frame():
    assert_invalid(ipv6(udp(), plen=17), R_IPLEN, LT_IPV6)


def test_ipv6_no_next_header_is_invalid():
    # Next header 59 ("no next header") ends the chain without a transport protocol.  The kernel's
    # ipv6_skip_exthdr() treats 59 as an extension header and returns -1 for it, so
    # nf_conntrack_in() finds no protocol, counts the packet invalid and attaches no conntrack
    # (Open vSwitch then reports inv+trk).  Such a packet must not create a connection.
    t, st = one(ipv6(b"", nh=59), LT_IPV6)
    assert st == INV | TRK
    assert t.stats()["invalid"] == 1
    assert len(t) == 0
    t, st = one(ipv6(hbh(59), nh=0), LT_IPV6)
    assert st == INV | TRK
    assert len(t) == 0


# ---- transport headers -----------------------------------------------------------------------
@pytest.mark.parametrize("ip_builder", ["v4", "v6"])
@pytest.mark.parametrize("seg,reason", [
    (tcp()[:19], R_L4),
    (b"", R_L4),
    (tcp(doff=4), R_DOFF),
    (tcp(doff=0), R_DOFF),
    (tcp(doff=6), R_DOFF),                    # 24 bytes claimed, 20 in the packet
    (tcp(doff=15, opts=b"\x01" * 36), R_DOFF),  # 60 claimed, 56 present
], ids=["19-bytes", "empty", "doff4", "doff0", "doff6-past", "doff15-past"])
def test_tcp_header_errors(ip_builder, seg, reason):
    if ip_builder == "v4":
        assert_invalid(eth(ipv4(seg, P_TCP)), reason)
    else:
        assert_invalid(eth(ipv6(seg, P_TCP), 0x86DD), reason)


def test_tcp_data_offset_exactly_the_packet():
    t, st = one(eth(ipv4(tcp(doff=15, opts=b"\x01" * 40), P_TCP)))
    assert st == TRK | NEW
    assert t.lookup(A4, B4, "tcp", 40000, 80)["bytes"] == [80, 0]


@pytest.mark.parametrize("ulen", [0, 7, 17, 100])
def test_udp_length_field_bad(ulen):
    assert_invalid(eth(ipv4(udp(ulen=ulen))), R_UDPLEN)                  # payload is 16 bytes
    assert_invalid(eth(ipv6(udp(ulen=ulen)), 0x86DD), R_UDPLEN)


def test_udp_length_shorter_than_ip_payload_is_fine():
    # ulen 8 inside a 16-byte IP payload: the kernel only refuses ulen < 8 or > the payload.
    assert_tracked_udp4(eth(ipv4(udp(ulen=8))), iplen=36)
    assert_tracked_udp4(eth(ipv4(udp(ulen=16))), iplen=36)


@pytest.mark.parametrize("n", [0, 7])
def test_udp_header_truncated(n):
    assert_invalid(eth(ipv4(udp()[:n])), R_L4)


@pytest.mark.parametrize("cov", [0, 8, 12, 16])
def test_udplite_coverage_ok(cov):
    # (The checksum is not checked by default, but UDP-Lite must carry one.)
    t, st = one(eth(ipv4(udp(ulen=cov, csum=0x1234), P_UDPLITE)))
    assert st == TRK | NEW
    rec = t.lookup(A4, B4, "udplite", 5000, 53)
    assert rec["proto"] == P_UDPLITE and rec["bytes"] == [36, 0]
    assert t.lookup(A4, B4, "udp", 5000, 53) is None


@pytest.mark.parametrize("cov", [1, 7, 17])
def test_udplite_coverage_bad(cov):
    assert_invalid(eth(ipv4(udp(ulen=cov), P_UDPLITE)), R_UDPLEN)


def test_udplite_checksum_missing():
    # Kernel udplite_error: "checksum missing", whatever nf_conntrack_checksum says.
    assert_invalid(eth(ipv4(udp(ulen=0, csum=0), P_UDPLITE)), "UDP-Lite checksum missing")


def test_udplite_header_truncated():
    assert_invalid(eth(ipv4(udp()[:6], P_UDPLITE)), R_L4)


@pytest.mark.parametrize("n", [0, 4, 7])
def test_icmp_truncated(n):
    # The kernel's ICMP error handler refuses a short header first ("short packet"): `error`.
    assert_invalid(eth(ipv4(icmp(8)[:n], P_ICMP)), R_L4, stat="error")
    assert_invalid(eth(ipv6(icmp(128)[:n], P_ICMP6), 0x86DD), R_L4, stat="error")


def test_icmp_echo_tracked_by_id():
    t, st = one(eth(ipv4(icmp(8, ident=0x77, data=b""), P_ICMP)))
    assert st == TRK | NEW
    rec = t.lookup(A4, B4, "icmp", 0x77)
    assert rec is not None and rec["bytes"] == [28, 0]
    t, st = one(eth(ipv6(icmp(128, ident=0x78, data=b""), P_ICMP6), 0x86DD))
    assert st == TRK | NEW
    assert t.lookup(A6, B6, "icmpv6", 0x78)["bytes"] == [48, 0]


@pytest.mark.parametrize("n", [0, 8, 11])
def test_sctp_truncated(n):
    sctp = struct.pack("!HHII", 3868, 3868, 0, 0)
    assert_invalid(eth(ipv4(sctp[:n], P_SCTP)), R_L4)


def test_sctp_common_header_alone_is_invalid():
    # The kernel's SCTP tracker refuses a packet without chunks.
    sctp = struct.pack("!HHII", 2905, 3868, 0xABCD, 0)
    t, st = one(eth(ipv4(sctp, P_SCTP)))
    assert st == INV | TRK and len(t) == 0


def test_sctp_heartbeat_is_tracked_by_ports():
    sctp = struct.pack("!HHII", 2905, 3868, 0xABCD, 0) + b"\x04\x00\x00\x04"   # HEARTBEAT
    t, st = one(eth(ipv4(sctp, P_SCTP)))
    assert st == TRK | NEW
    rec = t.lookup(A4, B4, "sctp", 2905, 3868)
    assert rec["proto"] == P_SCTP and rec["sport"] == 2905 and rec["bytes"] == [36, 0]
    assert rec["state_name"] == "HEARTBEAT_SENT"


GRE = struct.pack("!HH", 0, 0x0800) + ipv4(udp(), src="192.0.2.1", dst="192.0.2.2")
DCCP = struct.pack("!HHBBHBBH", 5001, 5002, 4, 0, 0, 0x03, 0, 0) + b"\0" * 4    # 16-byte header


@pytest.mark.parametrize("proto,payload", [(P_GRE, GRE), (P_DCCP, DCCP), (253, b"exp"), (253, b"")],
                         ids=["gre", "dccp", "253", "253-empty"])
@pytest.mark.parametrize("family", [4, 6])
def test_generic_protocols(proto, payload, family):
    if family == 4:
        frame, src, dst, l3, iplen = eth(ipv4(payload, proto)), A4, B4, 2, 20 + len(payload)
    else:
        frame, src, dst, l3, iplen = eth(ipv6(payload, proto), 0x86DD), A6, B6, 10, 40 + len(payload)
    t, st = one(frame)
    assert st == TRK | NEW
    rec = t.lookup(src, dst, proto)
    assert rec is not None
    assert rec["proto"] == proto and rec["l3"] == l3
    assert rec["sport"] == 0 and rec["dport"] == 0
    assert rec["bytes"] == [iplen, 0]
    assert t.lookup(dst, src, proto)["direction"] == "reply"


@pytest.mark.parametrize("n", [0, 2, 3])
def test_gre_shorter_than_its_base_header_is_still_generic(n):
    # The kernel's gre_pkt_to_tuple(): when the 4-byte base header cannot be read (or the version is
    # not 1) it "behaves like nf_conntrack_proto_generic" (ports 0) and returns true; no GRE error
    # hook refuses short packets.  So a truncated GRE packet is tracked like any generic one.
    t, st = one(eth(ipv4(GRE[:n], P_GRE)))
    assert st == TRK | NEW
    assert t.lookup(A4, B4, P_GRE)["bytes"] == [20 + n, 0]


def test_dccp_ports_not_in_the_key():
    # Two DCCP packets with different ports between the same hosts: one generic connection.
    other = struct.pack("!HHBBHBBH", 6001, 6002, 4, 0, 0, 0x03, 0, 0) + b"\0" * 4
    t, st = run([eth(ipv4(DCCP, P_DCCP)), eth(ipv4(other, P_DCCP))])
    assert st == [TRK | NEW, TRK | NEW]
    assert len(t) == 1
    assert t.lookup(A4, B4, P_DCCP)["packets"] == [2, 0]


@pytest.mark.parametrize("itype", [130, 131, 132, 133, 134, 135, 136, 143])
def test_icmpv6_nd_and_mld_untracked(itype):
    t, st = one(eth(ipv6(icmp(itype, ident=0, data=b"\0" * 16), P_ICMP6), 0x86DD))
    assert st == 0
    s = t.stats()
    assert s["untracked"] == 1
    assert s["invalid"] == 0 and s["non_ip"] == 0 and len(t) == 0


def test_icmpv6_nd_behind_hop_by_hop_untracked():
    # MLDv2 reports carry a hop-by-hop router alert option.
    payload = hbh(P_ICMP6) + icmp(143, ident=0, data=b"\0" * 8)
    t, st = one(ipv6(payload, nh=0), LT_IPV6)
    assert st == 0 and t.stats()["untracked"] == 1


@pytest.mark.parametrize("itype,code", [(3, 1), (3, 3), (11, 0), (4, 0), (5, 1), (12, 0)])
def test_icmp_errors(itype, code):
    inner = ipv4(udp(), src=B4, dst=A4)[:28]
    frame = eth(ipv4(struct.pack("!BBHI", itype, code, 0, 0) + inner, P_ICMP))
    assert_invalid(frame, R_ICMPERR, stat="error")


@pytest.mark.parametrize("itype", [1, 2, 3, 4])
def test_icmpv6_errors(itype):
    inner = ipv6(udp(), src=B6, dst=A6)[:48]
    frame = eth(ipv6(struct.pack("!BBHI", itype, 0, 0, 1280 if itype == 2 else 0) + inner, P_ICMP6),
                0x86DD)
    assert_invalid(frame, R_ICMPERR, stat="error")


# ---- snapshot-truncated frames ---------------------------------------------------------------
def test_snaplen_transport_header_captured():
    big = eth(ipv4(udp(data=b"d" * 1000)))          # IP total length 1028
    cap = 14 + 20 + 8                              # headers only
    assert_tracked_udp4(big[:cap], wirelen=len(big), iplen=1028)
    big6 = eth(ipv6(hbh(P_UDP) + udp(data=b"d" * 500), nh=0), 0x86DD)
    cap6 = 14 + 40 + 8 + 8
    assert_tracked_udp6(big6[:cap6], wirelen=len(big6), iplen=40 + 8 + 508)


def test_snaplen_tcp_options_partly_captured():
    # The TCP data offset (32) is checked against the packet, not the capture: 20 captured bytes
    # of a 32-byte header still give a usable segment.
    f = eth(ipv4(tcp(opts=SYN_OPTS, data=b"x" * 100), P_TCP))
    t, st = one(f[:14 + 20 + 22], wirelen=len(f))
    assert st == TRK | NEW
    assert t.lookup(A4, B4, "tcp", 40000, 80)["bytes"] == [20 + 32 + 100, 0]


@pytest.mark.parametrize("cut", [0, 10, 19])
def test_snaplen_transport_header_cut(cut):
    f = eth(ipv4(tcp(data=b"x" * 100), P_TCP))
    assert_invalid(f[:14 + 20 + cut], R_L4, wirelen=len(f))
    u = eth(ipv4(udp(data=b"x" * 100)))
    assert_invalid(u[:14 + 20 + min(cut, 7)], R_L4, wirelen=len(u))
    f6 = eth(ipv6(tcp(data=b"x" * 100), P_TCP), 0x86DD)
    assert_invalid(f6[:14 + 40 + cut], R_L4, wirelen=len(f6))


def test_snaplen_ipv4_options_cut():
    # IHL 15: the 60-byte header is cut at 40 bytes by the capture.
    f = eth(ipv4(udp(), opts=b"\x01" * 40))
    assert_invalid(f[:14 + 40], R_IPTRUNC, wirelen=len(f))


def test_snaplen_wire_length_below_capture_trusts_capture():
    assert_tracked_udp4(eth(U4), wirelen=0)


def test_fcs_is_not_part_of_the_packet():
    ok = eth(U4) + b"\xde\xad\xbe\xef"
    # Total length 40 runs into the 4 FCS bytes: past the frame once the FCS is removed.
    bad = eth(ipv4(udp(), tot=40)) + b"\xde\xad\xbe\xef"
    frames = [ok, bad]
    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    b = Batch(np.frombuffer(b"".join(frames), dtype=np.uint8),
              np.array([0, len(ok)], dtype=np.int64), lens, lens.copy(),
              np.array([0, 1000], dtype=np.int64), np.zeros(2, dtype=np.uint16),
              np.array([LT_ETH], dtype=np.uint32), np.array([4], dtype=np.uint32))
    t = Tracker(max_conns=64, seed=3)
    assert list(t.process(b).ct_state) == [TRK | NEW, INV | TRK]
    assert t.lookup(A4, B4, "udp", 5000, 53)["bytes"] == [36, 0]
    assert t.stats()["reasons"] == {R_IPLEN: 1}


# ---- robustness ------------------------------------------------------------------------------
TCP_OPTS_FRAME = eth(ipv4(tcp(opts=SYN_OPTS), P_TCP, opts=bytes([0x94, 4, 0, 0])))     # 14+24+32
IPV6_EXT_FRAME = eth(ipv6(hbh(60) + hbh(P_UDP, units=1) + udp(), nh=0), 0x86DD)       # 14+40+8+16+16
VLAN_FRAME = eth(U4, tags=[(0x88A8, 100), (0x8100, 200)])                            # 22+36
assert (len(TCP_OPTS_FRAME), len(IPV6_EXT_FRAME), len(VLAN_FRAME)) == (70, 94, 58)


def _expect_tcp_opts(n, snap):
    if n < 14:
        return R_L2
    if n < 34:
        return R_IPTRUNC
    if not snap:
        return R_IPLEN if n < 70 else None      # total length 56 runs past a shorter packet
    if n < 38:
        return R_IPTRUNC                        # the 24-byte IPv4 header is cut
    if n < 58:
        return R_L4                             # fewer than 20 TCP bytes captured
    return None


def _expect_ipv6_ext(n, snap):
    if n < 14:
        return R_L2
    if n < 54:
        return R_IPTRUNC
    if not snap:
        return R_IPLEN if n < 94 else None
    if n < 62 + 8:                              # either 8-byte start of the two headers is cut
        return R_EXT
    if n < 86:
        return R_L4                             # UDP header (at 78) not wholly captured
    return None


def _expect_vlan(n, snap):
    if n < 14:
        return R_L2
    if n < 22:
        return R_VLAN
    if n < 42:
        return R_IPTRUNC
    if not snap:
        return R_IPLEN if n < 58 else None
    if n < 50:
        return R_L4
    return None


@pytest.mark.parametrize("snap", [False, True], ids=["short-packet", "snapshot"])
@pytest.mark.parametrize("frame,expect,iplen", [
    (TCP_OPTS_FRAME, _expect_tcp_opts, 56), (IPV6_EXT_FRAME, _expect_ipv6_ext, 80),
    (VLAN_FRAME, _expect_vlan, 36)], ids=["tcp-opts", "ipv6-ext", "vlan"])
def test_every_prefix(frame, expect, iplen, snap):
    """Each prefix as its own packet (its own tracker): either the whole packet on the wire was
    that short, or a capture cut it (wire length = the full frame)."""
    for n in range(len(frame) + 1):
        t, st = one(frame[:n], wirelen=len(frame) if snap else n)
        reason = expect(n, snap)
        if reason is None:
            assert st == TRK | NEW, n
            e = t.entries()
            assert len(e) == 1 and int(t.counters()["bytes"][0][0]) == iplen, n
        else:
            assert st == INV | TRK, n
            assert t.stats()["reasons"] == {reason: 1}, n
            assert len(t) == 0


@pytest.mark.parametrize("frame", [TCP_OPTS_FRAME, IPV6_EXT_FRAME, VLAN_FRAME])
def test_every_prefix_in_one_batch(frame):
    frames = [frame[:n] for n in range(len(frame) + 1)]
    t = Tracker(max_conns=64, seed=3)
    res = t.process(Batch.from_frames(frames, ts=[0.0] * len(frames)))
    assert set(res.ct_state.tolist()) <= ALLOWED
    assert res.ct_state[-1] == TRK | NEW
    assert len(t) == 1


def test_read_only_buffer():
    frames = [eth(U4), eth(U4R), eth(U6, 0x86DD)]
    raw = b"".join(frames)
    buf = np.frombuffer(raw, dtype=np.uint8)
    assert not buf.flags.writeable
    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    offsets = np.array([0, len(frames[0]), len(frames[0]) + len(frames[1])], dtype=np.int64)
    b = Batch(buf, offsets, lens, lens.copy(), np.array([0, 10, 20], dtype=np.int64) * 1_000_000,
              np.zeros(3, dtype=np.uint16), np.array([LT_ETH], dtype=np.uint32),
              np.zeros(1, dtype=np.uint32))
    t = Tracker(max_conns=64, seed=3)
    assert list(t.process(b).ct_state) == [TRK | NEW, TRK | EST | RPL, TRK | NEW]
    assert t.lookup(A4, B4, "udp", 5000, 53)["packets"] == [1, 1]
    assert bytes(buf) == raw


def _check_invariants(t, res, n):
    states = res.ct_state
    assert set(states.tolist()) <= ALLOWED
    s = t.stats()
    assert s["packets"] == n
    assert int((states == 0).sum()) == s["non_ip"] + s["untracked"] + s["linktype_skipped"] + \
        s["frag_held"] == s["non_ip"] + s["untracked"] + s["linktype_skipped"] + int(res.held.sum())
    inv = int(((states & INV) != 0).sum())
    assert inv == s["invalid"] + s["error"] + s["frag_dropped"] == sum(s["reasons"].values())
    tracked = ((states & TRK) != 0) & ((states & INV) == 0)
    assert np.all(res.entry[~tracked] == -1)
    assert np.all(res.entry[tracked] >= 0)
    ents = t.entries()
    assert len(t) == len(ents)
    keys = set()
    for e in ents:
        key = (bytes(e["src"]), bytes(e["dst"]), int(e["sport"]), int(e["dport"]), int(e["zone"]),
               int(e["l3"]), int(e["proto"]))
        keys.add(key)
        if e["proto"] not in (P_ICMP, P_ICMP6):
            rev = (key[1], key[0], key[3], key[2]) + key[4:]
            assert rev == key or rev not in keys
    assert len(keys) == len(ents)
    assert int(t.counters()["packets"].sum()) <= int(tracked.sum())


@pytest.mark.parametrize("lt", HANDLED)
def test_random_bytes(lt):
    rng = np.random.default_rng(20240 + lt)
    n = 3000
    lens = rng.integers(0, 201, size=n)
    frames = [rng.integers(0, 256, size=int(k), dtype=np.uint8).tobytes() for k in lens]
    t = Tracker(max_conns=8192, seed=5)
    res = t.process(Batch.from_frames(frames, ts=[0.0] * n, linktype=lt))
    _check_invariants(t, res, n)


@pytest.mark.parametrize("lt", HANDLED)
def test_mutated_valid_frames(lt):
    """Valid frames with a few random bytes changed, cut at random lengths, and random wire lengths:
    these get past the first checks and exercise the deeper rules."""
    seeds = {
        LT_ETH: [TCP_OPTS_FRAME, IPV6_EXT_FRAME, VLAN_FRAME, eth(U4), eth(U6, 0x86DD)],
        LT_SLL: [sll(U4), sll(U6, 0x86DD)], LT_SLL2: [sll2(U4), sll2(U6, 0x86DD)],
        LT_RAW: [U4, U6, ipv6(_chain(udp(), P_UDP), nh=0)], LT_IPV4: [U4, ipv4(tcp(opts=SYN_OPTS), P_TCP)],
        LT_IPV6: [U6, ipv6(_chain(tcp(opts=SYN_OPTS), P_TCP), nh=0)],
        LT_NULL: [null(U4), null(U6, 28, ">")], LT_LOOP: [loop(U4), loop(U6, 30)],
        LT_NFLOG: [nflog(U4), nflog(U6, 10)],
    }[lt]
    rng = np.random.default_rng(777 + lt)
    n = 3000
    frames, wire = [], []
    for i in range(n):
        f = bytearray(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(0, 4))):
            f[int(rng.integers(0, len(f)))] = int(rng.integers(0, 256))
        cut = int(rng.integers(0, len(f) + 1)) if rng.random() < 0.5 else len(f)
        frames.append(bytes(f[:cut]))
        wire.append(cut + int(rng.integers(0, 3)) * int(rng.integers(0, 64)))
    t = Tracker(max_conns=8192, seed=5)
    res = t.process(Batch.from_frames(frames, ts=[0.0] * n, linktype=lt, wirelen=wire))
    _check_invariants(t, res, n)


def test_fast_tcp_path_agrees_with_the_general_parser():
    # Ethernet/IPv4/TCP frames take a straight-line parse (fastct/_parse.pxd parse_fast_tcp4); the
    # same IP packets as raw IP (link type 101) take the general one.  Mutated headers included, the
    # two must give the same verdicts, reasons, entries and counters.
    rng = np.random.default_rng(5)
    base = [ipv4(tcp(flags=f, seq=s, ack=a, data=b"d" * n, doff=d), P_TCP)
            for f in (ACK, ACK | 0x08, 0x01 | ACK, 0x04, 0x00, SYN | 0x01, ACK | 0x20)
            for s, a in ((1000, 0), (5, 9)) for n in (0, 7) for d in (None, 4, 15)]
    ips = []
    for ip in base * 3:
        b = bytearray(ip)
        k = int(rng.integers(0, 4))
        for _ in range(k):
            pos = int(rng.integers(0, len(b)))
            b[pos] = int(rng.integers(0, 256))
        ips.append(bytes(b))
    ts = [0.001 * i for i in range(len(ips))]
    results = []
    for frames, lt in (([eth(ip) for ip in ips], LT_ETH), (ips, LT_RAW)):
        t = Tracker(max_conns=4096, seed=9)
        res = t.process(Batch.from_frames(frames, ts=ts, linktype=lt))
        s = t.stats()
        ents = t.entries()
        results.append((res.ct_state.tolist(), res.direction.tolist(), s["invalid"], s["reasons"],
                        sorted(e.tobytes() for e in ents)))
    assert results[0] == results[1]
