"""IP fragments: reassembled before tracking, as the kernel does.

The kernel reassembles fragments before conntrack sees them: nf_defrag_ipv4 calls ip_defrag
(net/ipv4/ip_fragment.c, queues timed by net.ipv4.ipfrag_time, 30 s) and nf_defrag_ipv6 calls
nf_ct_frag6_gather (net/ipv6/netfilter/nf_conntrack_reasm.c, net.netfilter.nf_conntrack_frag6_timeout,
60 s); both place fragments with inet_frag_queue_insert (net/ipv4/inet_fragment.c).  So a fragmented
datagram is tracked once, when it is complete, as one packet of the reassembled length:

- IPv4: the IP header of the offset-0 fragment + all payload bytes (ip_frag_reasm: tot_len =
  ihl + q.len; the head's headers are the first fragment's).
- IPv6: the unfragmentable part (40-byte header + extension headers before the Fragment header) +
  the fragmentable part; the 8-byte Fragment header is removed (nf_ct_frag6_reasm).

Kernel rules used below (every expectation is derived from them, never from fastct's output):

- queue key: IPv4 (saddr, daddr, id, protocol, defrag user = zone); IPv6 (saddr, daddr, 32-bit id, user).
- the timer is armed once, when the queue is created (inet_frag_create), never refreshed by later
  fragments; a queue that expired is gone, so a later fragment of the same id starts a new one.
- a completed queue is killed (removed from the hash) too: a late copy of one of its fragments
  starts a new queue.
- inet_frag_queue_insert: a fragment lying entirely within an existing run of contiguous fragments
  (an exact duplicate, in particular) is IPFRAG_DUP: dropped, queue kept; any other overlap is
  IPFRAG_OVERLAP: the whole queue is killed (RFC 5722).
- IPv4: a non-last fragment whose length is not a multiple of 8 is trimmed (end &= ~7); the
  reassembled datagram must fit ihl + q.len <= 65535 (ip_frag_reasm, -E2BIG, queue killed).
  IPv6: a fragment ending past 65535 bytes of fragmentable part is dropped (IPV6_MAXPLEN).

fastct's contract on top: the fragment that completes a datagram carries its verdict; fragments held
before it get ct_state 0, entry -1, held=True; dropped fragments get trk|inv, are counted in
stats()["frag_dropped"] and under a reason, never in "invalid".  Results must not depend on where
batch boundaries fall.
"""
import itertools
import struct

import numpy as np
import pytest

from fastct import Batch, Tracker
from fastct.tracker import CT_STATE_BITS as B

from pkt import ACK, SYN, icmp4, ip4, ip6, tcp4, udp4

TRK, NEW, EST, REL, RPL, INV = B["trk"], B["new"], B["est"], B["rel"], B["rpl"], B["inv"]
T_NEW, T_EST, T_RPL, T_INV = TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | INV
HELD = 0

C, S = "192.168.0.2", "10.0.0.2"
C2, S2 = "192.168.0.3", "10.0.0.3"
C6, S6 = "2001:db8::2", "2001:db8:1::1"
C6b = "2001:db8::3"
CP, SP = 40000, 53

ETH4 = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
ETH6 = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
FRAG_STATS = ("frag_held", "frag_reassembled", "frag_timeout", "frag_dropped")
CHUNKS = [1, 2, 3, None]          # batch sizes; None: the whole sequence in one batch


# ---- packet building -------------------------------------------------------------------------

def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _pseudo(src, dst, proto, length, v6):
    if v6:
        return ip6(src) + ip6(dst) + struct.pack("!I3xB", length, proto)
    return ip4(src) + ip4(dst) + struct.pack("!BBH", 0, proto, length)


def udp_seg(src, dst, sport, dport, data, v6=False):
    """A whole UDP datagram (header + data) with a correct checksum."""
    u = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    ck = csum(_pseudo(src, dst, 17, len(u), v6) + u) or 0xFFFF
    return u[:6] + struct.pack("!H", ck) + u[8:]


def tcp_seg(src, dst, sport, dport, flags, seq, ack=0, win=65535, opts=b"", data=b"", v6=False):
    assert len(opts) % 4 == 0
    t = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, flags, win, 0, 0)
    t += opts + data
    ck = csum(_pseudo(src, dst, 6, len(t), v6) + t)
    return t[:16] + struct.pack("!H", ck) + t[18:]


def echo(type_, id_, seq, data):
    """ICMP echo request (8) or reply (0)."""
    body = struct.pack("!BBHHH", type_, 0, 0, id_, seq) + data
    return body[:2] + struct.pack("!H", csum(body)) + body[4:]


def frag4(src, dst, proto, ident, offset, data, mf, opts=b"", df=False):
    """One IPv4 fragment (Ethernet frame built by hand: no re-encoding)."""
    assert offset % 8 == 0 and len(opts) % 4 == 0
    ihl = 5 + len(opts) // 4
    fo = (offset >> 3) | (0x2000 if mf else 0) | (0x4000 if df else 0)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(data), ident, fo, 64, proto, 0,
                      ip4(src), ip4(dst)) + opts
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return ETH4 + hdr + data


def split4(src, dst, proto, ident, payload, sizes, opts_first=b""):
    """`payload` (the whole datagram's IP payload) cut into fragments of `sizes` bytes, the rest
    in the last fragment; returned in offset order."""
    frames, off = [], 0
    for size in sizes:
        frames.append(frag4(src, dst, proto, ident, off, payload[off:off + size], True,
                            opts=opts_first if off == 0 else b""))
        off += size
    frames.append(frag4(src, dst, proto, ident, off, payload[off:], False))
    return frames


HBH = struct.pack("!BB", 44, 0) + b"\x01\x04\x00\x00\x00\x00"   # hop-by-hop, PadN: 8 bytes, next = 44


def frag6(src, dst, nh, ident, offset, data, mf, hbh=False):
    """One IPv6 fragment: [hop-by-hop] + Fragment header (next header nh) + data."""
    assert offset % 8 == 0
    fh = struct.pack("!BBHI", nh, 0, offset | (1 if mf else 0), ident)
    payload = (HBH if hbh else b"") + fh + data
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(payload), 0 if hbh else 44, 64, ip6(src), ip6(dst))
    return ETH6 + hdr + payload


def split6(src, dst, nh, ident, payload, sizes, hbh=False):
    frames, off = [], 0
    for size in sizes:
        frames.append(frag6(src, dst, nh, ident, off, payload[off:off + size], True, hbh=hbh))
        off += size
    frames.append(frag6(src, dst, nh, ident, off, payload[off:], False, hbh=hbh))
    return frames


def plain6(src, dst, nh, payload):
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, ip6(src), ip6(dst))
    return ETH6 + hdr + payload


def plain4(src, dst, proto, payload, df=False):
    return frag4(src, dst, proto, 0x1234, 0, payload, False, df=df)


# ---- running -------------------------------------------------------------------------------------

class Out:
    """Per-packet results over several process() calls."""

    def __init__(self):
        self.state, self.entry, self.direction, self.held = [], [], [], []


def run(t, frames, ts=None, chunk=None, zone=0):
    """Process `frames` in batches of `chunk` packets (None: one batch).  `ts` in seconds
    (default 1 ms apart, starting at 0)."""
    n = len(frames)
    if ts is None:
        ts = [0.001 * i for i in range(n)]
    size = chunk or n
    out = Out()
    for i in range(0, n, size):
        res = t.process(Batch.from_frames(frames[i:i + size], ts=ts[i:i + size]), zone=zone)
        m = len(frames[i:i + size])
        held = np.asarray(res.held)
        assert held.dtype == np.bool_ and held.shape == (m,)
        out.state += [int(x) for x in res.ct_state]
        out.entry += [int(x) for x in res.entry]
        out.direction += [int(x) for x in res.direction]
        out.held += [bool(x) for x in held]
    return out


def fstats(t):
    s = t.stats()
    return {k: s[k] for k in FRAG_STATS}


def reasons_with(t, *words):
    """Sum of the reason counters whose name contains one of `words` (case-insensitive)."""
    return sum(v for k, v in t.stats()["reasons"].items() if any(w in k.lower() for w in words))


def new_tracker(**kw):
    kw.setdefault("max_conns", 4096)
    kw.setdefault("seed", 5)
    return Tracker(**kw)


def assert_held(out, idx):
    for i in idx:
        assert out.state[i] == HELD and out.entry[i] == -1 and out.held[i], \
            f"packet {i}: state {out.state[i]:#x} entry {out.entry[i]} held {out.held[i]}"


def assert_dropped(out, idx):
    for i in idx:
        assert out.state[i] == T_INV and out.entry[i] == -1 and not out.held[i], \
            f"packet {i}: state {out.state[i]:#x} entry {out.entry[i]} held {out.held[i]}"


# ---- datagrams used by several tests -------------------------------------------------------------

UDP_DATA = bytes(range(40))                                   # UDP datagram of 48 bytes
UDP_PAYLOAD = udp_seg(C, S, CP, SP, UDP_DATA)
UDP_FRAGS = split4(C, S, 17, 0x0101, UDP_PAYLOAD, [16, 16])   # [0,16) [16,32) [32,48)
UDP_BYTES = 20 + len(UDP_PAYLOAD)                             # 68


# ---- basic reassembly --------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", CHUNKS)
def test_udp4_three_fragments_last_first(chunk):
    t = new_tracker()
    frames = [UDP_FRAGS[2], UDP_FRAGS[0], UDP_FRAGS[1]]
    out = run(t, frames, chunk=chunk)
    assert out.state == [HELD, HELD, T_NEW]
    assert out.held == [True, True, False]
    assert_held(out, [0, 1])
    assert out.entry[2] >= 0 and out.direction[2] == 0
    rec = t.lookup(C, S, "udp", CP, SP)
    assert rec is not None
    assert rec["index"] == out.entry[2]
    assert rec["packets"] == [1, 0] and rec["bytes"] == [UDP_BYTES, 0]
    assert len(t) == 1
    assert fstats(t) == {"frag_held": 2, "frag_reassembled": 1, "frag_timeout": 0, "frag_dropped": 0}
    assert t.stats()["invalid"] == 0
    # The reply (not fragmented) belongs to the reassembled datagram's connection.
    out2 = run(t, [udp4(S, C, SP, CP)], ts=[0.5])
    assert out2.state == [T_RPL] and out2.held == [False] and out2.direction == [1]
    rec = t.lookup(C, S, "udp", CP, SP)
    assert rec["packets"] == [1, 1] and rec["bytes"] == [UDP_BYTES, 36]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("chunk", [1, None])
def test_udp4_any_order_completes_on_the_last_arrival(order, chunk):
    t = new_tracker()
    out = run(t, [UDP_FRAGS[i] for i in order], chunk=chunk)
    assert out.state == [HELD, HELD, T_NEW]
    assert out.held == [True, True, False]
    rec = t.lookup(C, S, "udp", CP, SP)
    assert rec["packets"] == [1, 0] and rec["bytes"] == [UDP_BYTES, 0]
    assert fstats(t)["frag_reassembled"] == 1 and fstats(t)["frag_held"] == 2


@pytest.mark.parametrize("chunk", CHUNKS)
def test_two_datagrams_interleaved(chunk):
    """Two datagrams of two hosts pairs, fragments interleaved with each other and with a plain packet."""
    pay2 = udp_seg(C2, S2, 5000, 5001, b"k" * 100)
    other = split4(C2, S2, 17, 0x0202, pay2, [56])
    frames = [UDP_FRAGS[1], other[1], udp4(C, S, 7, 9), UDP_FRAGS[0], other[0], UDP_FRAGS[2]]
    t = new_tracker()
    out = run(t, frames, chunk=chunk)
    assert out.state == [HELD, HELD, T_NEW, HELD, T_NEW, T_NEW]
    assert out.held == [True, True, False, True, False, False]
    assert t.lookup(C2, S2, "udp", 5000, 5001)["bytes"] == [20 + len(pay2), 0]
    assert t.lookup(C, S, "udp", CP, SP)["bytes"] == [UDP_BYTES, 0]
    assert t.lookup(C, S, "udp", 7, 9)["packets"] == [1, 0]
    assert fstats(t) == {"frag_held": 3, "frag_reassembled": 2, "frag_timeout": 0, "frag_dropped": 0}


@pytest.mark.parametrize("chunk", CHUNKS)
def test_reply_datagram_fragmented_is_est_rpl(chunk):
    t = new_tracker()
    assert run(t, [udp4(C, S, CP, SP)]).state == [T_NEW]
    rpay = udp_seg(S, C, SP, CP, b"r" * 200)
    frames = split4(S, C, 17, 0x7777, rpay, [64, 64])
    out = run(t, frames, ts=[1.0, 1.1, 1.2], chunk=chunk)
    assert out.state == [HELD, HELD, T_RPL]
    assert out.direction[2] == 1
    rec = t.lookup(C, S, "udp", CP, SP)
    assert rec["packets"] == [1, 1] and rec["bytes"] == [36, 20 + len(rpay)]


def test_non_fragments_are_not_held():
    """DF with offset 0 and MF clear is no fragment (ip_is_fragment is false): tracked at once."""
    t = new_tracker()
    frames = [plain4(C, S, 17, udp_seg(C, S, 1, 2, b"a" * 8), df=True),
              plain4(C, S, 17, udp_seg(C, S, 3, 4, b"a" * 8)), udp4(C, S, 5, 6)]
    out = run(t, frames)
    assert out.state == [T_NEW] * 3 and out.held == [False] * 3
    assert fstats(t) == dict.fromkeys(FRAG_STATS, 0)


def test_ipv4_header_options_of_the_first_fragment_count():
    """The reassembled IPv4 header is the offset-0 fragment's (here 24 bytes, with a Router Alert
    option), whichever fragment completes the datagram."""
    ra = b"\x94\x04\x00\x00"
    frames = split4(C, S, 17, 0x0303, UDP_PAYLOAD, [16, 16], opts_first=ra)
    t = new_tracker()
    out = run(t, [frames[0], frames[2], frames[1]])
    assert out.state == [HELD, HELD, T_NEW]
    assert t.lookup(C, S, "udp", CP, SP)["bytes"] == [24 + len(UDP_PAYLOAD), 0]


# ---- TCP -------------------------------------------------------------------------------------------

SYN_OPTS = (b"\x02\x04\x05\xb4" + b"\x04\x02" + b"\x08\x0a" + struct.pack("!II", 1, 0)
            + b"\x01" + b"\x03\x03\x07")                        # MSS, SACK-perm, TS, NOP, WS 7: 20 bytes
WS7 = b"\x01\x03\x03\x07"


def _syn_frames(first, ident=0x0404):
    seg = tcp_seg(C, S, CP, SP, SYN, 100, opts=SYN_OPTS)           # 40 bytes: header with options
    assert len(seg) == 40
    return split4(C, S, 6, ident, seg, [first])


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("first", [24, 16], ids=["ports+flags-in-first", "flags-in-second"])
def test_tcp_syn_in_two_fragments(first, chunk):
    """With first=16 the first fragment holds only ports, sequence and ack numbers: the flags and
    options are in the second.  The kernel tracks the reassembled segment, so it is the same SYN."""
    t = new_tracker()
    out = run(t, _syn_frames(first), chunk=chunk)
    assert out.state == [HELD, T_NEW] and out.held == [True, False]
    rec = t.lookup(C, S, "tcp", CP, SP)
    assert rec["state_name"] == "SYN_SENT"
    assert rec["packets"] == [1, 0] and rec["bytes"] == [60, 0]
    assert len(t) == 1
    out = run(t, [tcp4(S, C, SP, CP, SYN | ACK, 200, 101, opts=WS7),
                  tcp4(C, S, CP, SP, ACK, 101, 201)], ts=[0.1, 0.2])
    assert out.state == [T_RPL, T_EST]
    rec = t.lookup(C, S, "tcp", CP, SP)
    assert rec["state_name"] == "ESTABLISHED"
    assert rec["packets"] == [2, 1] and rec["bytes"] == [100, 44]


@pytest.mark.parametrize("first", [24, 16], ids=["ws-in-second", "flags-in-second"])
def test_tcp_syn_options_in_second_fragment_are_used(first):
    """The window-scale option of the fragmented SYN lies in its second fragment.  The kernel sees
    the reassembled SYN, so scaling is on (both sides sent WS 7) and the server's window of 100 means
    12800 bytes: data at seq 5101 is inside it.  Without the option the window would be 100 bytes and
    that segment over the upper bound (invalid)."""
    t = new_tracker()
    assert run(t, _syn_frames(first)).state == [HELD, T_NEW]
    out = run(t, [tcp4(S, C, SP, CP, SYN | ACK, 200, 101, win=100, opts=WS7),
                  tcp4(C, S, CP, SP, ACK, 101, 201),
                  tcp4(S, C, SP, CP, ACK, 201, 101, win=100),
                  tcp4(C, S, CP, SP, ACK, 101, 201, data=b"d" * 5000),
                  tcp4(C, S, CP, SP, ACK, 5101, 201, data=b"e" * 1000)],
              ts=[0.1, 0.2, 0.3, 0.4, 0.5])
    assert out.state == [T_RPL, T_EST, T_RPL, T_EST, T_EST]


# ---- ICMP ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", CHUNKS)
def test_icmp_echo_request_fragmented_reply_matches(chunk):
    req = echo(8, 0x4242, 1, bytes(i & 0xFF for i in range(2000)))          # 2008 bytes
    frames = split4(C, S, 1, 0x0505, req, [1480])
    t = new_tracker()
    out = run(t, frames + [icmp4(S, C, 0, 0x4242, seq=1)], chunk=chunk)
    assert out.state == [HELD, T_NEW, T_RPL]
    assert out.held == [True, False, False]
    rec = t.lookup(C, S, "icmp", 0x4242)
    assert rec["packets"] == [1, 1] and rec["bytes"] == [20 + 2008, 84]


# ---- IPv6 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hbh", [False, True], ids=["plain", "hop-by-hop"])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_udp6_fragmented(hbh, chunk):
    pay = udp_seg(C6, S6, CP, SP, bytes(range(256)) * 8, v6=True)            # 2056 bytes
    frames = split6(C6, S6, 17, 0xDEADBEEF, pay, [1232], hbh=hbh)
    t = new_tracker()
    reply = plain6(S6, C6, 17, udp_seg(S6, C6, SP, CP, b"r" * 8, v6=True))
    out = run(t, [frames[1], frames[0], reply], chunk=chunk)
    assert out.state == [HELD, T_NEW, T_RPL]
    assert out.held == [True, False, False]
    rec = t.lookup(C6, S6, "udp", CP, SP)
    unfrag = 40 + (8 if hbh else 0)                     # the Fragment header itself is not counted
    assert rec["packets"] == [1, 1] and rec["bytes"] == [unfrag + len(pay), 56]
    assert fstats(t) == {"frag_held": 1, "frag_reassembled": 1, "frag_timeout": 0, "frag_dropped": 0}


def test_icmpv6_echo_fragmented():
    body = struct.pack("!BBHHH", 128, 0, 0, 7, 1) + b"p" * 1600
    ck = csum(_pseudo(C6, S6, 58, len(body), True) + body)
    body = body[:2] + struct.pack("!H", ck) + body[4:]
    frames = split6(C6, S6, 58, 99, body, [1200])
    rep = struct.pack("!BBHHH", 129, 0, 0, 7, 1) + b"p" * 8
    ck = csum(_pseudo(S6, C6, 58, len(rep), True) + rep)
    rep = rep[:2] + struct.pack("!H", ck) + rep[4:]
    t = new_tracker()
    out = run(t, frames + [plain6(S6, C6, 58, rep)])
    assert out.state == [HELD, T_NEW, T_RPL]
    assert t.lookup(C6, S6, "icmpv6", 7)["bytes"] == [40 + len(body), 40 + len(rep)]


@pytest.mark.parametrize("nh", [17, 6])
def test_ipv6_atomic_fragment_is_a_complete_datagram(nh):
    """Offset 0 and M clear: the queue is complete with its first fragment; it is reassembled at
    once (the Fragment header removed) and tracked with it, nothing held."""
    seg = (udp_seg(C6, S6, CP, SP, b"a" * 20, v6=True) if nh == 17
           else tcp_seg(C6, S6, CP, SP, SYN, 100, v6=True))
    t = new_tracker()
    out = run(t, [frag6(C6, S6, nh, 12345, 0, seg, False)])
    assert out.state == [T_NEW] and out.held == [False] and out.entry[0] >= 0
    rec = t.lookup(C6, S6, "udp" if nh == 17 else "tcp", CP, SP)
    assert rec["packets"] == [1, 0] and rec["bytes"] == [40 + len(seg), 0]
    assert t.stats()["frag_held"] == 0


def test_ipv6_fragment_id_is_32_bits():
    """Ids that differ only in their upper 16 bits are different datagrams."""
    pay = udp_seg(C6, S6, CP, SP, b"x" * 40, v6=True)
    a = split6(C6, S6, 17, 0x00010005, pay, [16])
    b = split6(C6, S6, 17, 0x00020005, pay, [16])
    t = new_tracker()
    out = run(t, [a[0], b[1]])
    assert out.state == [HELD, HELD]
    assert t.lookup(C6, S6, "udp", CP, SP) is None
    out = run(t, [a[1], b[0]], ts=[0.1, 0.2])
    assert out.state == [T_NEW, T_NEW]          # no reply yet: both datagrams are "new"
    assert t.lookup(C6, S6, "udp", CP, SP)["packets"] == [2, 0]


# ---- keys: hosts, protocol, zone -----------------------------------------------------------------

def test_same_id_between_other_hosts_is_another_datagram():
    pay2 = udp_seg(C2, S, CP, SP, UDP_DATA)
    other = split4(C2, S, 17, 0x0101, pay2, [16, 16])               # same id as UDP_FRAGS
    t = new_tracker()
    out = run(t, [UDP_FRAGS[0], UDP_FRAGS[1], other[2]])
    assert out.state == [HELD, HELD, HELD]
    assert len(t) == 0
    out = run(t, [other[0], other[1], UDP_FRAGS[2]], ts=[0.1, 0.2, 0.3])
    assert out.state == [HELD, T_NEW, T_NEW]
    assert t.lookup(C, S, "udp", CP, SP)["bytes"] == [UDP_BYTES, 0]
    assert t.lookup(C2, S, "udp", CP, SP)["bytes"] == [UDP_BYTES, 0]
    # The same id from S to C (the other direction) is yet another datagram.
    rpay = udp_seg(S, C, SP, CP, UDP_DATA)
    rev = split4(S, C, 17, 0x0101, rpay, [16, 16])
    out = run(t, [rev[0], rev[2]], ts=[0.4, 0.5])
    assert out.state == [HELD, HELD]


def test_same_id_other_protocol_is_another_datagram():
    """The IPv4 key includes the protocol: a TCP fragment with the UDP datagram's id does not
    complete (nor overlap) it."""
    seg = tcp_seg(C, S, CP, SP, SYN, 100, opts=SYN_OPTS)
    tcpf = split4(C, S, 6, 0x0101, seg, [24])
    t = new_tracker()
    out = run(t, [UDP_FRAGS[0], UDP_FRAGS[1], tcpf[1], tcpf[0], UDP_FRAGS[2]])
    assert out.state == [HELD, HELD, HELD, T_NEW, T_NEW]
    assert t.lookup(C, S, "tcp", CP, SP)["bytes"] == [60, 0]
    assert t.lookup(C, S, "udp", CP, SP)["bytes"] == [UDP_BYTES, 0]
    assert t.stats()["frag_dropped"] == 0


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_zones_separate_datagrams(v6):
    if v6:
        frames = split6(C6, S6, 17, 77, udp_seg(C6, S6, CP, SP, UDP_DATA, v6=True), [16, 16])
        src, dst = C6, S6
    else:
        frames, src, dst = UDP_FRAGS, C, S
    t = new_tracker()
    assert run(t, frames[:2], zone=1).state == [HELD, HELD]
    assert run(t, [frames[2]], ts=[0.1], zone=2).state == [HELD]
    assert t.lookup(src, dst, "udp", CP, SP, zone=1) is None
    assert run(t, [frames[2]], ts=[0.2], zone=1).state == [T_NEW]
    assert t.lookup(src, dst, "udp", CP, SP, zone=1)["packets"] == [1, 0]
    assert t.lookup(src, dst, "udp", CP, SP, zone=2) is None
    assert run(t, frames[:2], ts=[0.3, 0.4], zone=2).state == [HELD, T_NEW]
    assert t.lookup(src, dst, "udp", CP, SP, zone=2)["packets"] == [1, 0]
    assert fstats(t)["frag_reassembled"] == 2


# ---- duplicates and overlaps ------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("seq,expected", [
    ([2, 2, 0, 1], [HELD, T_INV, HELD, T_NEW]),          # copy of the last fragment
    ([2, 0, 0, 1], [HELD, HELD, T_INV, T_NEW]),          # copy of the first fragment
    ([0, 1, 1, 2], [HELD, HELD, T_INV, T_NEW]),          # copy of a middle one, in order
], ids=["last", "first", "middle"])
def test_exact_duplicate_dropped_datagram_still_completes(seq, expected, chunk):
    """IPFRAG_DUP: a copy arriving before completion is dropped and the queue kept; the datagram
    completes when its last missing fragment arrives."""
    t = new_tracker()
    out = run(t, [UDP_FRAGS[i] for i in seq], chunk=chunk)
    assert out.state == expected
    assert_dropped(out, [expected.index(T_INV)])
    assert out.held == [s == HELD for s in expected]
    rec = t.lookup(C, S, "udp", CP, SP)
    assert rec["packets"] == [1, 0] and rec["bytes"] == [UDP_BYTES, 0]
    assert fstats(t) == {"frag_held": 2, "frag_reassembled": 1, "frag_timeout": 0, "frag_dropped": 1}
    assert reasons_with(t, "dup") == 1
    assert t.stats()["invalid"] == 0


def test_ipv6_exact_duplicate_dropped_datagram_still_completes():
    frames = split6(C6, S6, 17, 5, udp_seg(C6, S6, CP, SP, UDP_DATA, v6=True), [16, 16])
    t = new_tracker()
    out = run(t, [frames[0], frames[0], frames[2], frames[2], frames[1]])
    assert out.state == [HELD, T_INV, HELD, T_INV, T_NEW]
    assert_dropped(out, [1, 3])
    assert t.lookup(C6, S6, "udp", CP, SP)["packets"] == [1, 0]
    assert fstats(t) == {"frag_held": 2, "frag_reassembled": 1, "frag_timeout": 0, "frag_dropped": 2}


def test_copy_after_completion_starts_a_new_datagram():
    """Reassembly kills the queue; a late copy of one of its fragments finds none and starts a new
    (never completed) one: held, and it expires 30 s later."""
    t = new_tracker()
    out = run(t, UDP_FRAGS + [UDP_FRAGS[1]])
    assert out.state == [HELD, HELD, T_NEW, HELD]
    assert t.lookup(C, S, "udp", CP, SP)["packets"] == [1, 0]
    run(t, [udp4(C2, S2, 1, 2)], ts=[31.0])
    t.expire()
    assert fstats(t) == {"frag_held": 3, "frag_reassembled": 1, "frag_timeout": 1, "frag_dropped": 0}


@pytest.mark.parametrize("chunk", CHUNKS)
def test_overlap_kills_the_datagram(chunk):
    """[0,16) then [8,24): IPFRAG_OVERLAP, the queue (with [0,16)) is killed.  The rest of the
    datagram then starts a new queue that never gets its first fragment: no connection."""
    bad = frag4(C, S, 17, 0x0101, 8, UDP_PAYLOAD[8:24], True)
    t = new_tracker()
    out = run(t, [UDP_FRAGS[0], bad, UDP_FRAGS[1], UDP_FRAGS[2]], chunk=chunk)
    assert out.state == [HELD, T_INV, HELD, HELD]
    assert_dropped(out, [1])
    assert t.lookup(C, S, "udp", CP, SP) is None and len(t) == 0
    assert fstats(t) == {"frag_held": 3, "frag_reassembled": 0, "frag_timeout": 0, "frag_dropped": 1}
    assert reasons_with(t, "overlap") == 1
    assert t.stats()["invalid"] == 0
    # The first fragment sent again completes the new queue.
    out = run(t, [UDP_FRAGS[0]], ts=[1.0])
    assert out.state == [T_NEW]
    assert t.lookup(C, S, "udp", CP, SP)["bytes"] == [UDP_BYTES, 0]
    assert fstats(t)["frag_reassembled"] == 1


def test_overlap_with_the_last_fragment_kills_the_datagram():
    """Last fragment [32,48) held; then [24,40) (MF): overlaps it → queue killed."""
    bad = frag4(C, S, 17, 0x0101, 24, UDP_PAYLOAD[24:40], True)
    t = new_tracker()
    out = run(t, [UDP_FRAGS[2], UDP_FRAGS[0], bad, UDP_FRAGS[1]])
    assert out.state == [HELD, HELD, T_INV, HELD]
    assert t.lookup(C, S, "udp", CP, SP) is None
    assert fstats(t)["frag_dropped"] == 1 and fstats(t)["frag_reassembled"] == 0


def test_ipv6_overlap_kills_the_datagram():
    pay = udp_seg(C6, S6, CP, SP, UDP_DATA, v6=True)
    frames = split6(C6, S6, 17, 9, pay, [16, 16])
    bad = frag6(C6, S6, 17, 9, 8, pay[8:24], True)
    t = new_tracker()
    out = run(t, [frames[0], bad, frames[1], frames[2]])
    assert out.state == [HELD, T_INV, HELD, HELD]
    assert t.lookup(C6, S6, "udp", CP, SP) is None and len(t) == 0
    assert fstats(t)["frag_dropped"] == 1 and reasons_with(t, "overlap") == 1


@pytest.mark.parametrize("in_order", [True, False], ids=["inside-a-run:dup", "across-runs:overlap"])
def test_fragment_inside_received_run(in_order):
    """Kernel detail of inet_frag_queue_insert: fragments received in order at the tail are merged
    into one run, and a fragment lying within a run is IPFRAG_DUP (dropped, queue kept), even if it
    is not an exact copy.  [0,16) then [16,32) form the run [0,32): [8,24) is a duplicate and the
    datagram still completes.  Received the other way round ([16,32) then [0,16)) they are two runs
    and [8,24) straddles them: IPFRAG_OVERLAP, queue killed."""
    mid = frag4(C, S, 17, 0x0101, 8, UDP_PAYLOAD[8:24], True)
    first_two = [UDP_FRAGS[0], UDP_FRAGS[1]] if in_order else [UDP_FRAGS[1], UDP_FRAGS[0]]
    t = new_tracker()
    out = run(t, first_two + [mid, UDP_FRAGS[2]])
    if in_order:
        assert out.state == [HELD, HELD, T_INV, T_NEW]
        assert t.lookup(C, S, "udp", CP, SP)["bytes"] == [UDP_BYTES, 0]
        assert fstats(t) == {"frag_held": 2, "frag_reassembled": 1, "frag_timeout": 0, "frag_dropped": 1}
    else:
        assert out.state == [HELD, HELD, T_INV, HELD]
        assert t.lookup(C, S, "udp", CP, SP) is None
        assert fstats(t) == {"frag_held": 3, "frag_reassembled": 0, "frag_timeout": 0, "frag_dropped": 1}


def test_ipv4_non_last_fragment_not_multiple_of_8_is_trimmed():
    """ip_frag_queue: a fragment with MF whose end is not a multiple of 8 is cut to it (end &= ~7):
    [0,20) counts as [0,16), so [16,48) completes the datagram (no overlap)."""
    first = frag4(C, S, 17, 0x0606, 0, UDP_PAYLOAD[:20], True)
    last = frag4(C, S, 17, 0x0606, 16, UDP_PAYLOAD[16:], False)
    t = new_tracker()
    out = run(t, [first, last])
    assert out.state == [HELD, T_NEW]
    assert t.lookup(C, S, "udp", CP, SP)["bytes"] == [UDP_BYTES, 0]
    assert t.stats()["frag_dropped"] == 0


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("case", ["second-last-shorter", "past-known-end"])
def test_inconsistent_fragment(case, v6):
    """A fragment that disagrees with the datagram's known end (a second last fragment ending
    elsewhere, or data past the end set by the last fragment).  IPv4 (ip_frag_queue): goto
    discard_qp, the whole queue is killed.  IPv6 (nf_ct_frag6_queue): goto err, only that fragment
    is dropped and the queue kept, so the missing fragment still completes the datagram."""
    if v6:
        pay = udp_seg(C6, S6, CP, SP, UDP_DATA, v6=True)
        frames = split6(C6, S6, 17, 0x0B0B, pay, [16, 16])
        mk = lambda off, data, mf: frag6(C6, S6, 17, 0x0B0B, off, data, mf)
        src, dst = C6, S6
    else:
        frames = UDP_FRAGS
        mk = lambda off, data, mf: frag4(C, S, 17, 0x0101, off, data, mf)
        src, dst = C, S
    bad = mk(16, b"b" * 24, False) if case == "second-last-shorter" else mk(40, b"b" * 16, True)
    t = new_tracker()
    out = run(t, [frames[0], frames[2], bad, frames[1]])
    if v6:
        assert out.state == [HELD, HELD, T_INV, T_NEW]
        assert t.lookup(src, dst, "udp", CP, SP)["packets"] == [1, 0]
    else:
        assert out.state == [HELD, HELD, T_INV, HELD]
        assert t.lookup(src, dst, "udp", CP, SP) is None
    assert_dropped(out, [2])
    assert fstats(t)["frag_dropped"] == 1


def test_ipv6_fragment_past_65535_keeps_the_queue():
    """nf_ct_frag6_queue returns -EINVAL for a fragment ending past IPV6_MAXPLEN before touching
    the queue (no inet_frag_kill): the datagram's real last fragment still completes it."""
    pay = udp_seg(C6, S6, CP, SP, b"q" * 1400, v6=True)          # 1408 bytes
    first = frag6(C6, S6, 17, 4343, 0, pay[:1400], True)
    huge = frag6(C6, S6, 17, 4343, 65528, b"z" * 16, False)
    last = frag6(C6, S6, 17, 4343, 1400, pay[1400:], False)
    t = new_tracker()
    out = run(t, [first, huge, last])
    assert out.state == [HELD, T_INV, T_NEW]
    assert t.lookup(C6, S6, "udp", CP, SP)["bytes"] == [40 + len(pay), 0]


def test_ipv6_first_fragment_without_whole_tcp_header_is_not_reassembled():
    """nf_ct_frag6_gather (RFC 8200 4.5, ipv6frag_thdr_truncated): a first fragment that does not
    hold the whole transport header (20 bytes for TCP) is not queued but passed on as it is, and
    conntrack finds the TCP header short: invalid, no connection.  The second fragment is queued
    (held) and never completes.  (IPv4 has no such rule: see test_tcp_syn_in_two_fragments.)"""
    seg = tcp_seg(C6, S6, CP, SP, SYN, 100, opts=SYN_OPTS, v6=True)
    frames = split6(C6, S6, 6, 0x0C0C, seg, [16])
    t = new_tracker()
    out = run(t, frames)
    assert out.state == [T_INV, HELD]
    assert out.held == [False, True]
    assert len(t) == 0
    assert t.stats()["invalid"] == 1
    assert fstats(t)["frag_reassembled"] == 0


def test_ipv6_unaligned_first_fragment_is_tracked_as_it_is():
    """nf_ct_frag6_queue: a fragment with M set whose end is not a multiple of 8 kills the queue and
    returns -EPROTO, which nf_ct_frag6_gather turns into "accept as it is": conntrack tracks the
    first fragment on its own (a complete TCP SYN header), counting the packet's own length, the
    Fragment header included."""
    seg = tcp_seg(C6, S6, CP, SP, SYN, 100, v6=True)                     # 20 bytes: end 20
    t = new_tracker()
    out = run(t, [frag6(C6, S6, 6, 0x0D0D, 0, seg, True)])
    assert out.state == [T_NEW] and out.held == [False]
    rec = t.lookup(C6, S6, "tcp", CP, SP)
    assert rec["state_name"] == "SYN_SENT"
    assert rec["packets"] == [1, 0] and rec["bytes"] == [40 + 8 + 20, 0]


def test_ipv6_unaligned_later_fragment_kills_the_datagram():
    """The same for a later fragment: the queue is killed and the fragment passed on, where
    conntrack finds no transport header in a non-first fragment: invalid (counted), no connection.
    The datagram's remaining fragments start a new queue that never gets its first fragment."""
    pay = udp_seg(C6, S6, CP, SP, UDP_DATA, v6=True)
    frames = split6(C6, S6, 17, 0x0E0E, pay, [16, 16])
    bad = frag6(C6, S6, 17, 0x0E0E, 16, pay[16:36], True)               # end 36
    t = new_tracker()
    out = run(t, [frames[0], bad, frames[1], frames[2]])
    assert out.state == [HELD, T_INV, HELD, HELD]
    assert out.held == [True, False, True, True]
    assert len(t) == 0
    assert t.stats()["invalid"] == 1


# ---- size limit ------------------------------------------------------------------------------------

def _big4(total_payload, ident=0x0808):
    """A UDP datagram of `total_payload` bytes of IP payload in 1480-byte fragments (offsets are
    exact; the UDP length field is capped at 65535, which does not matter to reassembly)."""
    data = bytes(i & 0xFF for i in range(total_payload - 8))
    u = struct.pack("!HHHH", CP, SP, min(total_payload, 0xFFFF), 0) + data
    n_full = (total_payload - 1) // 1480
    return split4(C, S, 17, ident, u, [1480] * n_full)


def test_ipv4_largest_datagram_completes():
    """20 + 65515 = 65535 bytes: the largest IPv4 datagram reassembles."""
    frames = _big4(65515)
    assert len(frames) == 45
    t = new_tracker()
    out = run(t, frames)
    assert out.state == [HELD] * 44 + [T_NEW]
    assert t.lookup(C, S, "udp", CP, SP)["bytes"] == [65535, 0]


@pytest.mark.parametrize("chunk", [1, None])
def test_ipv4_datagram_past_65535_dropped(chunk):
    """Last fragment at offset 65528 (the largest), 16 bytes: the datagram would end at 65544. In
    order, it is the completing fragment: ip_frag_reasm fails (-E2BIG), the queue is killed and the
    fragment dropped; nothing is tracked."""
    data = bytes(65544)
    frames = split4(C, S, 17, 0x0909, struct.pack("!HHHH", CP, SP, 0xFFFF, 0) + data[8:],
                    [1480] * 44 + [408])
    assert len(frames) == 46 and frames[-1][14 + 6:14 + 8] == struct.pack("!H", 8191)
    t = new_tracker()
    out = run(t, frames, chunk=chunk)
    assert out.state == [HELD] * 45 + [T_INV]
    assert_dropped(out, [45])
    assert len(t) == 0
    assert fstats(t) == {"frag_held": 45, "frag_reassembled": 0, "frag_timeout": 0, "frag_dropped": 1}
    assert reasons_with(t, "65535") == 1
    assert t.stats()["invalid"] == 0


def test_ipv4_datagram_with_header_past_65535_dropped():
    """Kernel: the limit is on the whole datagram, ihl + payload <= 65535 (tot_len is 16 bits).
    65520 bytes of payload (+ 20 of header = 65540) do not reassemble: the completing fragment is
    dropped and nothing is tracked."""
    frames = _big4(65520)
    t = new_tracker()
    out = run(t, frames)
    assert out.state == [HELD] * 44 + [T_INV]
    assert len(t) == 0
    assert fstats(t)["frag_reassembled"] == 0 and fstats(t)["frag_dropped"] == 1


def test_ipv4_oversized_last_fragment_first_never_tracked():
    """The oversized last fragment first, then the others: whichever fragment fastct drops (the
    kernel queues the last fragment and fails at reassembly), no connection may result."""
    data = bytes(65544)
    frames = split4(C, S, 17, 0x0A0A, struct.pack("!HHHH", CP, SP, 0xFFFF, 0) + data[8:],
                    [1480] * 44 + [408])
    t = new_tracker()
    out = run(t, [frames[-1]] + frames[:-1])
    assert len(t) == 0
    assert T_INV in out.state and all(s in (HELD, T_INV) for s in out.state)
    s = fstats(t)
    assert s["frag_reassembled"] == 0 and s["frag_dropped"] >= 1
    assert s["frag_held"] + s["frag_dropped"] == len(frames)


def test_ipv6_fragment_past_65535_dropped():
    """nf_ct_frag6_queue: offset + fragment length > IPV6_MAXPLEN → the fragment is dropped."""
    pay = udp_seg(C6, S6, CP, SP, b"q" * 1400, v6=True)
    first = frag6(C6, S6, 17, 4242, 0, pay[:1400], True)
    huge = frag6(C6, S6, 17, 4242, 65528, b"z" * 16, False)
    t = new_tracker()
    out = run(t, [first, huge])
    assert out.state == [HELD, T_INV]
    assert_dropped(out, [1])
    assert len(t) == 0
    assert fstats(t)["frag_dropped"] == 1 and fstats(t)["frag_reassembled"] == 0
    assert reasons_with(t, "65535") == 1


# ---- timeouts --------------------------------------------------------------------------------------

def test_ipv4_datagram_completes_within_30s():
    t = new_tracker()
    out = run(t, [UDP_FRAGS[0], UDP_FRAGS[1], UDP_FRAGS[2]], ts=[0.0, 10.0, 29.5])
    assert out.state == [HELD, HELD, T_NEW]
    assert fstats(t)["frag_timeout"] == 0


@pytest.mark.parametrize("chunk", [1, None])
def test_ipv4_datagram_expires_30s_after_its_first_fragment(chunk):
    """The timer is not refreshed by the fragment at 20 s: at 30.5 s the queue is gone and the last
    fragment starts a new one."""
    t = new_tracker()
    out = run(t, [UDP_FRAGS[0], UDP_FRAGS[1], UDP_FRAGS[2]], ts=[0.0, 20.0, 30.5], chunk=chunk)
    assert out.state == [HELD, HELD, HELD]
    assert len(t) == 0
    t.expire()
    assert fstats(t) == {"frag_held": 3, "frag_reassembled": 0, "frag_timeout": 1, "frag_dropped": 0}
    # The new queue (from 30.5 s) completes with the two others sent again.
    out = run(t, [UDP_FRAGS[0], UDP_FRAGS[1]], ts=[31.0, 32.0])
    assert out.state == [HELD, T_NEW]
    assert t.lookup(C, S, "udp", CP, SP)["packets"] == [1, 0]


def test_ipv4_expiry_counted_after_expire_call():
    t = new_tracker()
    run(t, [UDP_FRAGS[0]])
    run(t, [udp4(C2, S2, 1, 2)], ts=[31.0])         # another flow moves the clock past 30 s
    t.expire()
    assert fstats(t)["frag_timeout"] == 1
    assert fstats(t)["frag_held"] == 1


def test_ipv6_datagram_lives_60s():
    pay = udp_seg(C6, S6, CP, SP, UDP_DATA, v6=True)
    a = split6(C6, S6, 17, 1, pay, [16])
    b = split6(C6, S6, 17, 2, pay, [16])
    t = new_tracker()
    out = run(t, [a[0], b[0], a[1], b[1]], ts=[0.0, 1.0, 59.5, 61.5])
    assert out.state == [HELD, HELD, T_NEW, HELD]      # b expired at 61 s
    t.expire()
    s = fstats(t)
    assert s["frag_timeout"] == 1 and s["frag_reassembled"] == 1 and s["frag_held"] == 3


@pytest.mark.parametrize("name", ["net.ipv4.ipfrag_time"])
def test_ipfrag_time_sysctl(name):
    t = new_tracker(sysctl={name: 5})
    out = run(t, [UDP_FRAGS[0], UDP_FRAGS[2], UDP_FRAGS[1]], ts=[0.0, 4.5, 5.5])
    assert out.state == [HELD, HELD, HELD]
    t.expire()
    assert fstats(t)["frag_timeout"] == 1
    t = new_tracker(sysctl={name: 5})
    out = run(t, [UDP_FRAGS[0], UDP_FRAGS[2], UDP_FRAGS[1]], ts=[0.0, 4.0, 4.9])
    assert out.state == [HELD, HELD, T_NEW]


@pytest.mark.parametrize("name", ["nf_conntrack_frag6_timeout", "net.netfilter.nf_conntrack_frag6_timeout"])
def test_frag6_timeout_sysctl(name):
    pay = udp_seg(C6, S6, CP, SP, UDP_DATA, v6=True)
    fr = split6(C6, S6, 17, 3, pay, [16])
    t = new_tracker(sysctl={name: 7})
    out = run(t, fr, ts=[0.0, 7.5])
    assert out.state == [HELD, HELD]
    t.expire()
    assert fstats(t)["frag_timeout"] == 1
    t = new_tracker(sysctl={name: 7})
    assert run(t, fr, ts=[0.0, 6.5]).state == [HELD, T_NEW]
    # IPv4 keeps its own 30 s.
    assert run(t, [UDP_FRAGS[0], UDP_FRAGS[2], UDP_FRAGS[1]], ts=[7.0, 20.0, 30.0]).state == \
        [HELD, HELD, T_NEW]


# ---- bounded memory ------------------------------------------------------------------------------

@pytest.mark.parametrize("max_conns", [4096, 262144])
def test_many_incomplete_datagrams_bounded(max_conns):
    n = 5000
    pays = [udp_seg(C, S, 1024 + (i % 30000), SP, b"m" * 24) for i in range(n)]
    firsts = [frag4(C, S, 17, i, 0, p[:16], True) for i, p in enumerate(pays)]
    lasts = [frag4(C, S, 17, i, 16, p[16:], False) for i, p in enumerate(pays)]
    t = new_tracker(max_conns=max_conns)
    out1 = run(t, firsts, ts=[1e-5 * i for i in range(n)])
    assert all(s in (HELD, T_INV) for s in out1.state)
    assert [s == HELD for s in out1.state] == out1.held
    s = fstats(t)
    assert s["frag_held"] == out1.state.count(HELD)
    assert s["frag_dropped"] == out1.state.count(T_INV)
    assert s["frag_held"] + s["frag_dropped"] == n and s["frag_reassembled"] == 0
    # fastct keeps at most 1024 datagrams in reassembly (fastct/_frag.pxd FRAG_SLOTS): the bound
    # holds, and it is nearly reached before new datagrams are refused.
    assert 900 < s["frag_held"] <= 1024 and s["frag_dropped"] >= n - 1024
    out2 = run(t, lasts, ts=[0.1 + 1e-5 * i for i in range(n)])
    done = out2.state.count(T_NEW)
    assert all(st in (HELD, T_INV, T_NEW) for st in out2.state)
    for i in range(n):
        if out2.state[i] == T_NEW:        # only datagrams whose first fragment was kept can complete
            assert out1.state[i] == HELD
    s = fstats(t)
    assert s["frag_reassembled"] == done
    assert done == out1.state.count(HELD)        # every kept datagram completed
    assert s["frag_held"] + s["frag_dropped"] + done == 2 * n
    assert s["frag_held"] == out1.state.count(HELD) + out2.state.count(HELD)
    assert len(t) == done
    assert t.stats()["invalid"] == 0
