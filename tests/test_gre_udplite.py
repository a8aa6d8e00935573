"""GRE and UDP-Lite as the kernel tracks them (nf_conntrack_proto_gre.c, nf_conntrack_proto_udp.c).

GRE: version 0 keyed by the address pair (keys 0); version 1 (PPTP) must carry PPP (0x880B) and is
keyed by its call id as the destination key (the source key would come from the PPTP helper's
keymap, which is not there: 0).  30 s until a reply was seen by an earlier packet, then 180 s and
[ASSURED].  UDP-Lite: like UDP without the 2 s rule.
"""
import struct

import pytest

from fastct import Batch, Tracker
from fastct.conntrack_fmt import format_table
from fastct.tracker import CT_STATE_BITS as B

from pkt import ip4

TRK, NEW, EST, RPL, INV = B["trk"], B["new"], B["est"], B["rpl"], B["inv"]
NS = 10**9
A, S = "10.1.1.11", "10.1.1.10"


def ipv4(src, dst, proto, payload):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, ip4(src), ip4(dst))
    # (Ethernet header by hand: dpkt re-encodes what it parses, and its GRE loses a byte.)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + hdr + payload


def gre0(src, dst):
    return ipv4(src, dst, 47, struct.pack("!HH", 0, 0x0800) + b"\x45" + b"\0" * 19)


def gre1(src, dst, call_id, proto=0x880B):
    # Enhanced GRE (RFC 2637): K and S bits, version 1, payload length, call id, sequence.
    return ipv4(src, dst, 47, struct.pack("!HHHHI", 0x3001, proto, 4, call_id, 7) + b"\xff\x03\xc0\x21")


def run(t, frames, ts):
    return [int(x) for x in t.process(Batch.from_frames(frames, ts=ts)).ct_state]


def test_gre_v0_stream():
    t = Tracker(max_conns=64)
    st = run(t, [gre0(A, S), gre0(S, A), gre0(A, S)], ts=[0.0, 0.5, 1.0])
    assert st == [TRK | NEW, TRK | EST | RPL, TRK | EST]
    rec = t.lookup(A, S, "gre")
    # The first reply still gets 30 s (SEEN_REPLY is set after the tracker ran); the next packet
    # makes it a stream.
    assert rec["expires"] == 1 * NS + 180 * NS
    assert "ASSURED" in rec["status_names"] and rec["packets"] == [2, 1]


def test_gre_v0_reply_timeout_is_unreplied():
    t = Tracker(max_conns=64)
    run(t, [gre0(A, S), gre0(S, A)], ts=[0.0, 0.5])
    rec = t.lookup(A, S, "gre")
    assert rec["expires"] == int(30.5 * NS) and "ASSURED" not in rec["status_names"]


def test_gre_v1_keyed_by_call_id():
    t = Tracker(max_conns=64)
    st = run(t, [gre1(A, S, 0x0000), gre1(A, S, 0x1234), gre1(S, A, 0x8000)], ts=[0.0, 0.1, 0.2])
    # Three call ids, three connections: without the PPTP helper the peer's packets (other call id,
    # source key 0) never match the reverse of the first.
    assert st == [TRK | NEW] * 3
    assert len(t) == 3
    lines = format_table(t.entries(), t.replies(), t.cold(), t.now)
    assert any("srckey=0x0 dstkey=0x1234 packets=1 bytes=36 [UNREPLIED] src=10.1.1.10 dst=10.1.1.11 "
               "srckey=0x1234 dstkey=0x0 packets=0 bytes=0" in line for line in lines), lines
    # 30 s from 0.0 and 0.1 seen at 0.2: 29 whole seconds left; from 0.2: 30.
    assert sorted(line[:26] for line in lines) == ["ipv4     2 gre      47 29 "] * 2 + \
        ["ipv4     2 gre      47 30 "], lines


def test_gre_v1_not_ppp_is_invalid():
    t = Tracker(max_conns=64)
    assert run(t, [gre1(A, S, 1, proto=0x0800)], ts=[0.0]) == [TRK | INV]
    assert t.stats()["reasons"] == {"GRE version 1 (PPTP) header not carrying PPP": 1}


def udplite(src, dst, sport, dport):
    return ipv4(src, dst, 136, struct.pack("!HHHH", sport, dport, 0, 0x1111) + b"abcd")


def test_udplite_has_no_two_second_rule():
    t = Tracker(max_conns=64)
    st = run(t, [udplite(A, S, 5, 6), udplite(S, A, 6, 5), udplite(A, S, 5, 6)], ts=[0.0, 0.1, 0.2])
    assert st == [TRK | NEW, TRK | EST | RPL, TRK | EST]
    rec = t.lookup(A, S, "udplite", 5, 6)
    assert rec["expires"] == int(0.2 * NS) + 120 * NS and "ASSURED" in rec["status_names"]


def test_udp_keeps_its_two_second_rule():
    def udp(src, dst, sport, dport):
        return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 12, 0) + b"abcd")
    t = Tracker(max_conns=64)
    run(t, [udp(A, S, 5, 6), udp(S, A, 6, 5), udp(A, S, 5, 6)], ts=[0.0, 0.1, 0.2])
    rec = t.lookup(A, S, "udp", 5, 6)
    assert rec["expires"] == int(0.2 * NS) + 30 * NS and "ASSURED" not in rec["status_names"]
