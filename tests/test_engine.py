"""Engine behaviour, packet by packet, against the Linux kernel's conntrack (6.x) and OVS ct_state.

Every expectation here is derived from the kernel's code paths as summarised in the kernel fact
digest (nf_conntrack_proto_{tcp,udp,icmp,icmpv6,generic}.c, nf_conntrack_core.c) and from the
Open vSwitch ct_state rules (new until a reply was seen, then est; rpl for reply-direction packets;
inv always with trk) -- never from fastct's own output.

Conventions: `t.lookup(...)['timeout']` is whole seconds left at the newest packet time; packet and
byte counters are per direction [original, reply] and bytes are IP total lengths.
"""
import socket
import struct

import numpy as np
import pytest

from fastct import CT_STATE_BITS as B, Batch, CaptureReader, Tracker
from fastct.tracker import format_addr
from pkt import ACK, FIN, PSH, RST, SYN, batch, eth, icmp4, ip4, ip6, tcp4, udp4

from conftest import PCAPS

TRK, NEW, EST, REL, RPL, INV = B["trk"], B["new"], B["est"], B["rel"], B["rpl"], B["inv"]
T_NEW, T_EST, T_RPL, T_INV = TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | INV

C, S = "192.168.0.2", "10.0.0.2"
CP, SP = 1024, 2048

UDP_LEN = 20 + 8 + 8          # IPv4 + UDP header + the 8-byte default payload of pkt.udp4
TCP_LEN = 40                  # bare TCP/IPv4 segment
ICMP_LEN = 20 + 8 + 56        # IPv4 + echo header + 56 bytes of data
WS7 = b"\x01\x03\x03\x07"     # NOP, window scale 7


# ---- local packet helpers ------------------------------------------------------------------------

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv6(src, dst, nh, payload, hlim=64):
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, hlim, ip6(src), ip6(dst))
    return eth(hdr + payload, 0x86DD)


def icmp6(src, dst, type_, id_, seq=1, code=0, data=b"x" * 56):
    body = struct.pack("!BBHHH", type_, code, 0, id_, seq) + data
    pseudo = ip6(src) + ip6(dst) + struct.pack("!I3xB", len(body), 58)
    ck = _csum(pseudo + body)
    body = body[:2] + struct.pack("!H", ck) + body[4:]
    return ipv6(src, dst, 58, body)


def udp6(src, dst, sport, dport, data=b"y" * 8):
    u = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    pseudo = ip6(src) + ip6(dst) + struct.pack("!I3xB", len(u), 17)
    ck = _csum(pseudo + u) or 0xFFFF
    u = u[:6] + struct.pack("!H", ck) + u[8:]
    return ipv6(src, dst, 17, u)


def raw4(src, dst, proto, payload=b"generic-payload!"):
    """An IPv4 packet of any protocol number (correct header checksum)."""
    tot = 20 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, 1, 0x4000, 64, proto, 0, ip4(src), ip4(dst))
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return eth(hdr + payload, 0x0800)


def vlan_frame(frame, *vids, outer_tpid=0x8100):
    """Insert VLAN tags (outermost first) after the Ethernet addresses of an untagged frame."""
    tags = b""
    for i, vid in enumerate(vids):
        tpid = outer_tpid if i == 0 else 0x8100
        tags += struct.pack("!HH", tpid, vid)
    return frame[:12] + tags + frame[12:]


_ETH_HDR = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"


def fast_udp4(src_int, dst_int, sport, dport):
    """A UDP/IPv4 frame from integer addresses, for building many flows quickly (checksums 0:
    the IPv4 header checksum is not what this test is about, and a UDP checksum of 0 is valid)."""
    payload = b"z" * 8
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 36, 0, 0, 64, 17, 0, src_int, dst_int)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return _ETH_HDR + ip + struct.pack("!HHHH", sport, dport, 16, 0) + payload


def c2s(flags, seq, ack=0, **kw):
    return tcp4(C, S, CP, SP, flags, seq, ack, **kw)


def s2c(flags, seq, ack=0, **kw):
    return tcp4(S, C, SP, CP, flags, seq, ack, **kw)


def run(t, frames, ts, **kw):
    """Process frames one batch; returns the ct_state list."""
    return [int(x) for x in t.process(batch(frames, ts=ts), **kw).ct_state]


def one(t, frame, ts, **kw):
    return run(t, [frame], [ts], **kw)[0]


def tcp_rec(t):
    return t.lookup(C, S, "tcp", CP, SP)


def handshake(t, t0=0.0, copts=b"", sopts=b"", cwin=65535, swin=65535, awin=65535):
    """Client ISN 100, server ISN 200: after it the client has sent up to 101, the server 201."""
    states = run(t, [c2s(SYN, 100, win=cwin, opts=copts), s2c(SYN | ACK, 200, 101, win=swin, opts=sopts),
                     c2s(ACK, 101, 201, win=awin)], [t0, t0 + 0.01, t0 + 0.02])
    assert states == [T_NEW, T_RPL, T_EST]
    return states


# ---- UDP -------------------------------------------------------------------------------------------

def test_udp_unreplied_then_reply_then_stream():
    t = Tracker(seed=1)
    a, r = udp4(C, S, 5000, 53), udp4(S, C, 53, 5000)
    assert one(t, a, 0.0) == T_NEW
    rec = t.lookup(C, S, "udp", 5000, 53)
    assert rec["timeout"] == 30 and rec["status_names"] == ["CONFIRMED"]
    assert rec["packets"] == [1, 0] and rec["bytes"] == [UDP_LEN, 0]
    assert rec["direction"] == "original" and rec["state_name"] is None
    # The first reply still gets the unreplied timeout: SEEN_REPLY is set after the handler ran.
    assert one(t, r, 0.5) == T_RPL
    rec = t.lookup(C, S, "udp", 5000, 53)
    assert rec["timeout"] == 30 and rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert rec["packets"] == [1, 1] and rec["bytes"] == [UDP_LEN, UDP_LEN]
    # Exactly 2 s after the first packet is not "after" the stream time: still 30 s, not ASSURED.
    assert one(t, a, 2.0) == T_EST
    rec = t.lookup(C, S, "udp", 5000, 53)
    assert rec["timeout"] == 30 and "ASSURED" not in rec["status_names"]
    # Later than 2 s: a stream.
    assert one(t, r, 2.001) == T_RPL
    rec = t.lookup(S, C, "udp", 53, 5000)
    assert rec["direction"] == "reply"
    assert rec["timeout"] == 120 and rec["status_names"] == ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
    assert rec["packets"] == [2, 2] and rec["bytes"] == [2 * UDP_LEN, 2 * UDP_LEN]
    # Once assured it stays at the stream timeout.
    assert one(t, a, 10.0) == T_EST
    assert t.lookup(C, S, "udp", 5000, 53)["timeout"] == 120


def test_udp_first_reply_after_2s_is_not_yet_assured():
    t = Tracker(seed=1)
    a, r = udp4(C, S, 5001, 53), udp4(S, C, 53, 5001)
    assert run(t, [a, r], [0.0, 5.0]) == [T_NEW, T_RPL]
    rec = t.lookup(C, S, "udp", 5001, 53)
    # status was not SEEN_REPLY when the reply's handler ran: the unreplied branch, 30 s.
    assert rec["timeout"] == 30 and rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert one(t, a, 5.5) == T_EST
    rec = t.lookup(C, S, "udp", 5001, 53)
    assert rec["timeout"] == 120 and "ASSURED" in rec["status_names"]


def test_udp_one_way_traffic_never_assured():
    t = Tracker(seed=1)
    a = udp4(C, S, 5002, 9999)
    assert run(t, [a] * 4, [0, 3, 6, 9]) == [T_NEW] * 4
    rec = t.lookup(C, S, "udp", 5002, 9999)
    assert rec["status_names"] == ["CONFIRMED"] and rec["timeout"] == 30
    assert rec["packets"] == [4, 0] and rec["bytes"] == [4 * UDP_LEN, 0]


def test_udp_ipv6():
    t = Tracker(seed=1)
    a, b = "2001:db8::1", "2001:db8::2"
    assert run(t, [udp6(a, b, 4000, 53), udp6(b, a, 53, 4000)], [0, 0.1]) == [T_NEW, T_RPL]
    rec = t.lookup(a, b, "udp", 4000, 53)
    assert rec["src"] == a and rec["dst"] == b and rec["l3"] == 10
    assert rec["packets"] == [1, 1] and rec["bytes"] == [40 + 16, 40 + 16]
    assert t.lookup(b, a, "udp", 53, 4000)["direction"] == "reply"


# ---- ICMP / ICMPv6 ---------------------------------------------------------------------------------

def test_icmp_echo_request_reply():
    t = Tracker(seed=1)
    req, rep = icmp4(C, S, 8, 77, seq=1), icmp4(S, C, 0, 77, seq=1)
    assert run(t, [req, rep], [0.0, 0.1]) == [T_NEW, T_RPL]
    rec = t.lookup(C, S, "icmp", 77)
    assert rec["timeout"] == 30 and rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert rec["packets"] == [1, 1] and rec["bytes"] == [ICMP_LEN, ICMP_LEN]
    # The original tuple: type 8 code 0 id 77 (sport carries the id, dport type<<8|code).
    assert rec["sport"] == 77 and rec["dport"] == (8 << 8)
    # The reply tuple has the type inverted (0) and the same id.
    back = t.lookup(S, C, "icmp", 77, icmp_type=0)
    assert back is not None and back["direction"] == "reply" and back["index"] == rec["index"]
    assert t.lookup(S, C, "icmp", 77, icmp_type=8) is None   # not a request from the server
    assert t.lookup(C, S, "icmp", 78) is None                # another id
    # More echoes, well over 2 s later: ICMP never becomes ASSURED, timeout stays 30 s.
    assert run(t, [req, rep], [5.0, 5.1]) == [T_EST, T_RPL]
    rec = t.lookup(C, S, "icmp", 77)
    assert rec["timeout"] == 30 and rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert rec["packets"] == [2, 2]


def test_icmp_echo_reply_without_request_is_invalid():
    t = Tracker(seed=1)
    assert one(t, icmp4(S, C, 0, 5), 0.0) == T_INV
    assert len(t) == 0
    assert t.lookup(S, C, "icmp", 5, icmp_type=0) is None
    assert t.lookup(C, S, "icmp", 5) is None
    st = t.stats()
    assert st["invalid"] == 1 and sum(st["reasons"].values()) == 1


def test_icmpv6_echo():
    t = Tracker(seed=1)
    a, b = "2001:db8::1", "2001:db8::2"
    req, rep = icmp6(a, b, 128, 9), icmp6(b, a, 129, 9)
    assert run(t, [req, rep, req], [0, 0.1, 4.0]) == [T_NEW, T_RPL, T_EST]
    rec = t.lookup(a, b, "icmpv6", 9)
    assert rec["dport"] == (128 << 8) and rec["sport"] == 9
    assert rec["timeout"] == 30 and rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert rec["packets"] == [2, 1] and rec["bytes"] == [2 * (40 + 64), 40 + 64]
    back = t.lookup(b, a, "icmpv6", 9, icmp_type=129)
    assert back["direction"] == "reply" and back["index"] == rec["index"]


def test_icmpv6_echo_reply_without_request_is_invalid():
    t = Tracker(seed=1)
    assert one(t, icmp6("2001:db8::2", "2001:db8::1", 129, 3), 0.0) == T_INV
    assert len(t) == 0 and t.stats()["invalid"] == 1


def test_icmpv6_neighbour_discovery_untracked():
    t = Tracker(seed=1)
    ns = icmp6("fe80::1", "ff02::1:ff00:2", 135, 0, data=b"\0" * 20)
    assert one(t, ns, 0.0) == 0
    assert len(t) == 0 and t.stats()["invalid"] == 0


# ---- generic ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", [253, 50])
def test_generic_protocol_600s(proto):
    t = Tracker(seed=1)
    out, back = raw4(C, S, proto), raw4(S, C, proto)
    assert run(t, [out, back, out], [0, 1, 10]) == [T_NEW, T_RPL, T_EST]
    rec = t.lookup(C, S, proto)
    assert rec["proto"] == proto and rec["sport"] == 0 and rec["dport"] == 0
    assert rec["timeout"] == 600
    # Generic never sets ASSURED.
    assert rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert rec["packets"] == [2, 1] and rec["bytes"] == [2 * 36, 36]
    assert t.lookup(S, C, proto)["direction"] == "reply"


# ---- TCP -------------------------------------------------------------------------------------------

def test_tcp_syn_retransmits_neither_count_nor_refresh():
    t = Tracker(seed=1)
    syn = c2s(SYN, 100)
    assert run(t, [syn, syn, syn], [0.0, 3.0, 9.0]) == [T_NEW, T_NEW, T_NEW]
    assert len(t) == 1
    rec = tcp_rec(t)
    assert rec["state_name"] == "SYN_SENT" and rec["status_names"] == ["CONFIRMED"]
    assert rec["packets"] == [1, 0] and rec["bytes"] == [TCP_LEN, 0]
    assert rec["timeout"] == 120 - 9     # the timer still runs from the first SYN
    # ... so the entry dies 120 s after the first SYN even though SYNs came later.
    assert one(t, udp4("1.1.1.1", "2.2.2.2", 1, 2), 120.0) == T_NEW
    assert tcp_rec(t) is None


def test_tcp_handshake_states_and_timeouts():
    t = Tracker(seed=1)
    assert one(t, c2s(SYN, 100), 0.0) == T_NEW
    rec = tcp_rec(t)
    assert (rec["state_name"], rec["timeout"], rec["status_names"]) == ("SYN_SENT", 120, ["CONFIRMED"])
    assert one(t, s2c(SYN | ACK, 200, 101), 0.01) == T_RPL
    rec = tcp_rec(t)
    assert (rec["state_name"], rec["timeout"]) == ("SYN_RECV", 60)
    assert rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert one(t, c2s(ACK, 101, 201), 0.02) == T_EST
    rec = tcp_rec(t)
    assert (rec["state_name"], rec["timeout"]) == ("ESTABLISHED", 432000)
    assert rec["status_names"] == ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
    assert rec["packets"] == [2, 1] and rec["bytes"] == [2 * TCP_LEN, TCP_LEN]
    assert len(t.entries(state="ESTABLISHED")) == 1


def test_tcp_loose_pickup():
    t = Tracker(seed=1)
    assert one(t, c2s(ACK, 1000, 2000), 0.0) == T_NEW
    rec = tcp_rec(t)
    assert rec["state_name"] == "ESTABLISHED"
    assert rec["status_names"] == ["CONFIRMED"]          # [UNREPLIED]: no SEEN_REPLY
    assert rec["timeout"] == 300                         # unreplied ESTABLISHED is capped at UNACK
    assert rec["packets"] == [1, 0] and rec["bytes"] == [TCP_LEN, 0]


def test_tcp_no_loose_pickup():
    t = Tracker(seed=1, tcp_loose=False)
    assert one(t, c2s(ACK, 1000, 2000), 0.0) == T_INV
    assert len(t) == 0 and tcp_rec(t) is None
    assert t.stats()["invalid"] == 1
    # A SYN still opens a connection.
    assert one(t, c2s(SYN, 100), 1.0) == T_NEW and len(t) == 1


def test_tcp_rst_answering_syn_deletes_entry():
    # The server refuses: RST/ACK, seq 0, ack ISN+1.  The entry exists (SYN_SENT) and has seen no
    # reply; the kernel accepts the RST (window checks pass), nf_ct_kill_acct counts it and deletes
    # the entry.  The packet itself was matched through the reply tuple of an existing conntrack
    # (ctinfo ESTABLISHED_REPLY), which OVS reports as trk+est+rpl.
    t = Tracker(seed=1)
    states = run(t, [c2s(SYN, 100), s2c(RST | ACK, 0, 101)], [0.0, 0.01])
    assert states == [T_NEW, T_RPL]
    assert tcp_rec(t) is None
    assert len(t) == 0
    assert t.stats()["invalid"] == 0
    # The client may try again at once: a fresh connection.
    assert one(t, c2s(SYN, 100), 0.02) == T_NEW
    rec = tcp_rec(t)
    assert rec["packets"] == [1, 0] and rec["state_name"] == "SYN_SENT"


def test_tcp_rst_after_establishment_close_10s():
    t = Tracker(seed=1)
    handshake(t)
    assert one(t, c2s(RST | ACK, 101, 201), 1.0) == T_EST
    rec = tcp_rec(t)
    assert rec["state_name"] == "CLOSE" and rec["timeout"] == 10
    assert rec["status_names"] == ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
    assert rec["packets"] == [3, 1] and rec["bytes"] == [3 * TCP_LEN, TCP_LEN]
    # Gone 10 s later.
    one(t, udp4("1.1.1.1", "2.2.2.2", 1, 2), 11.0)
    assert tcp_rec(t) is None


def test_tcp_fin_handshake_time_wait():
    t = Tracker(seed=1)
    handshake(t)
    steps = [(c2s(FIN | ACK, 101, 201), 1.0, T_EST, "FIN_WAIT", 120),
             (s2c(ACK, 201, 102), 1.1, T_RPL, "CLOSE_WAIT", 60),
             (s2c(FIN | ACK, 201, 102), 1.2, T_RPL, "LAST_ACK", 30),
             (c2s(ACK, 102, 202), 1.3, T_EST, "TIME_WAIT", 120)]
    for frame, ts, want_state, want_name, want_timeout in steps:
        assert one(t, frame, ts) == want_state
        rec = tcp_rec(t)
        assert (rec["state_name"], rec["timeout"]) == (want_name, want_timeout)
    assert rec["packets"] == [4, 3] and rec["bytes"] == [4 * TCP_LEN, 3 * TCP_LEN]
    assert rec["status_names"] == ["SEEN_REPLY", "ASSURED", "CONFIRMED"]


def _closed_by_fin(t):
    handshake(t)
    run(t, [c2s(FIN | ACK, 101, 201), s2c(FIN | ACK, 201, 102), c2s(ACK, 102, 202)], [1.0, 1.1, 1.2])
    assert tcp_rec(t)["state_name"] == "TIME_WAIT"


def test_tcp_syn_reopens_time_wait():
    t = Tracker(seed=1)
    _closed_by_fin(t)
    assert one(t, c2s(SYN, 90000), 5.0) == T_NEW
    assert len(t) == 1
    rec = tcp_rec(t)
    assert rec["state_name"] == "SYN_SENT" and rec["direction"] == "original"
    assert rec["status_names"] == ["CONFIRMED"]
    assert rec["packets"] == [1, 0] and rec["bytes"] == [TCP_LEN, 0]
    assert rec["timeout"] == 120
    assert rec["start"] == 5_000_000_000
    # And the new connection completes normally.
    assert run(t, [s2c(SYN | ACK, 7000, 90001), c2s(ACK, 90001, 7001)], [5.1, 5.2]) == [T_RPL, T_EST]
    assert tcp_rec(t)["state_name"] == "ESTABLISHED"


def test_tcp_reply_syn_in_time_wait_reopens_with_roles_switched():
    # REPLY syn in TIME_WAIT -> SYN_SENT (6.x table, "server may have switched role"); the
    # connection was closed by FIN, so the old entry is killed and the SYN starts a new one whose
    # original direction is the former server's.
    t = Tracker(seed=1)
    _closed_by_fin(t)
    assert one(t, s2c(SYN, 50000), 5.0) == T_NEW
    assert len(t) == 1
    rec = t.lookup(S, C, "tcp", SP, CP)
    assert rec["direction"] == "original" and rec["src"] == S and rec["sport"] == SP
    assert rec["state_name"] == "SYN_SENT" and rec["packets"] == [1, 0]


@pytest.mark.parametrize("flags", [SYN | FIN, SYN | RST, 0, FIN, SYN | ACK | RST, FIN | RST, PSH])
def test_tcp_invalid_flag_combinations(flags):
    t = Tracker(seed=1)
    # As a first packet: invalid, nothing created.
    assert one(t, c2s(flags, 100), 0.0) == T_INV
    assert len(t) == 0
    assert t.stats()["reasons"] == {"TCP flag combination invalid": 1}
    # On an established connection: invalid, the entry untouched.
    handshake(t, t0=1.0)
    before = tcp_rec(t)
    assert one(t, c2s(flags, 101, 201), 2.0) == T_INV
    after = tcp_rec(t)
    assert after["packets"] == before["packets"] and after["state_name"] == "ESTABLISHED"
    assert t.stats()["reasons"] == {"TCP flag combination invalid": 2}


@pytest.mark.parametrize("flags", [FIN | ACK, SYN | ACK, RST, RST | ACK])
def test_tcp_packet_that_cannot_start_a_connection(flags):
    t = Tracker(seed=1)
    assert one(t, c2s(flags, 100, 200), 0.0) == T_INV
    assert len(t) == 0 and tcp_rec(t) is None
    st = t.stats()
    assert st["invalid"] == 1 and st["reasons"] == {"TCP packet cannot start a connection": 1}


def test_tcp_simultaneous_open():
    t = Tracker(seed=1)
    seq = [
        # frame, ts, ct_state, state after, timeout after
        (c2s(SYN, 100), 0.0, T_NEW, "SYN_SENT", 120),
        # REPLY syn in SYN_SENT -> SYN_SENT2; it is a SYN in SYN_SENT before any reply: not counted,
        # timer not renewed (still 120 s from the first SYN).
        (s2c(SYN, 300), 1.0, T_RPL, "SYN_SENT2", 119),
        # ORIGINAL syn/ack in SYN_SENT2 -> SYN_RECV.
        (c2s(SYN | ACK, 100, 301), 2.0, T_EST, "SYN_RECV", 60),
        # REPLY syn/ack in SYN_RECV -> ignored: state kept, not counted, timer not renewed.
        (s2c(SYN | ACK, 300, 101), 3.0, T_RPL, "SYN_RECV", 59),
        # REPLY ack in SYN_RECV with SIMULTANEOUS_OPEN -> ESTABLISHED (and ASSURED: seen reply,
        # SYN_RECV -> ESTABLISHED).
        (s2c(ACK, 301, 101), 4.0, T_RPL, "ESTABLISHED", 432000),
    ]
    for frame, ts, want, name, timeout in seq:
        assert one(t, frame, ts) == want
        rec = tcp_rec(t)
        assert (rec["state_name"], rec["timeout"]) == (name, timeout), ts
    assert rec["packets"] == [2, 1]
    assert rec["status_names"] == ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
    assert len(t) == 1


def test_tcp_window_scaling_accepts_data_within_scaled_window():
    t = Tracker(seed=1)
    # Both sides announce wscale 7; the client's ACK window 1024 means 1024 << 7 = 131072 bytes.
    handshake(t, copts=WS7, sopts=WS7, awin=1024)
    rec = tcp_rec(t)
    assert rec["td_scale"] == [7, 7]
    assert rec["bytes"] == [44 + TCP_LEN, 44]
    # Client data, then the server acks it with a small raw (scaled) window.
    assert one(t, c2s(ACK | PSH, 101, 201, win=1024, data=b"a" * 1400), 1.0) == T_EST
    assert one(t, s2c(ACK, 201, 1501, win=512), 1.1) == T_RPL
    # The server sends 100000 bytes past what the client acked: beyond 65535, within 131072.
    assert one(t, s2c(ACK | PSH, 201 + 100000, 1501, win=512, data=b"b" * 1000), 1.2) == T_RPL
    rec = tcp_rec(t)
    assert rec["packets"] == [3, 3]
    assert rec["bytes"] == [44 + TCP_LEN + TCP_LEN + 1400, 44 + TCP_LEN + TCP_LEN + 1000]
    assert t.stats()["invalid"] == 0


def test_tcp_without_window_scaling_same_segment_is_over_upper_bound():
    t = Tracker(seed=1)
    handshake(t, awin=1024)          # no scaling: the client's window is 1024 bytes
    assert one(t, s2c(ACK | PSH, 201 + 100000, 101, win=512, data=b"b" * 1000), 1.0) == T_INV
    st = t.stats()
    assert st["reasons"] == {"TCP SEQ is over the upper bound": 1}
    assert tcp_rec(t)["packets"] == [2, 1]


def test_tcp_segment_far_beyond_window_invalid_unless_liberal():
    far = c2s(ACK | PSH, 101 + 10_000_000, 201, data=b"q" * 100)
    t = Tracker(seed=1)
    handshake(t)
    assert one(t, far, 1.0) == T_INV
    rec = tcp_rec(t)
    assert rec["packets"] == [2, 1] and rec["state_name"] == "ESTABLISHED"
    assert t.stats()["reasons"] == {"TCP SEQ is over the upper bound": 1}
    # With tcp_be_liberal the window checks accept it, and it is counted.
    t = Tracker(seed=1, tcp_be_liberal=True)
    handshake(t)
    assert one(t, far, 1.0) == T_EST
    rec = tcp_rec(t)
    assert rec["packets"] == [3, 1] and rec["bytes"][0] == 2 * TCP_LEN + TCP_LEN + 100
    assert t.stats()["invalid"] == 0


# ---- engine: batch boundaries ----------------------------------------------------------------------

def _table_rows(t):
    """The live table as a sorted list of field tuples (independent of entry order)."""
    ents = t.entries()
    cold = t.cold()
    rows = []
    for i in range(len(ents)):
        e = ents[i]
        row = tuple((name, e[name].tolist()) for name in ents.dtype.names)
        row += (("start", int(cold[i]["start"])),)
        rows.append(row)
    return sorted(rows, key=repr)


def _run_sliced(big, size, seed=3):
    t = Tracker(seed=seed)
    states, dirs = [], []
    for i in range(0, len(big), size):
        res = t.process(big.slice(i, i + size))
        states += res.ct_state.tolist()
        dirs += res.direction.tolist()
    return t, states, dirs


def _assert_batch_independent(big):
    # The reference is one packet per call: nothing of a later packet can be computed early there.
    ref_t, ref_states, ref_dirs = _run_sliced(big, 1)
    ref_rows = _table_rows(ref_t)
    ref_stats = {k: v for k, v in ref_t.stats().items()
                 if k not in ("probes", "probe_max", "grows", "expired", "entries")}
    for size in (7, 64, 4096, len(big)):
        t, states, dirs = _run_sliced(big, size)
        assert states == ref_states, size
        assert dirs == ref_dirs, size
        assert _table_rows(t) == ref_rows, size
        st = {k: v for k, v in t.stats().items()
              if k not in ("probes", "probe_max", "grows", "expired", "entries")}
        assert st == ref_stats, size
    return ref_states


def test_batch_boundaries_mixed_demo_pcap():
    reader = CaptureReader(PCAPS / "mixed_demo.pcap", batch_size=1_000_000)
    (big,) = list(reader)
    assert reader.error is None
    states = _assert_batch_independent(big)
    assert any(s & INV for s in states) or any(s & RPL for s in states)


def _synthetic_workload(seed=11, n_tcp=120, n_udp=80, n_icmp=40):
    rng = np.random.default_rng(seed)
    flows = []
    for k in range(n_tcp):
        c, s = f"10.1.{k // 200}.{k % 200 + 1}", f"10.2.0.{k % 50 + 1}"
        cp, sp = 20000 + k, 80 + (k % 3)
        ci, si = int(rng.integers(1, 2**31)), int(rng.integers(1, 2**31))
        f = [tcp4(c, s, cp, sp, SYN, ci)]
        if k % 7 == 0:
            f.append(tcp4(c, s, cp, sp, SYN, ci))                        # retransmitted SYN
        if k % 11 == 0:
            f.append(tcp4(s, c, sp, cp, RST | ACK, 0, ci + 1))           # refused
            f.append(tcp4(c, s, cp, sp, SYN, ci))                         # and again
        f += [tcp4(s, c, sp, cp, SYN | ACK, si, ci + 1), tcp4(c, s, cp, sp, ACK, ci + 1, si + 1)]
        f.append(tcp4(c, s, cp, sp, ACK | PSH, ci + 1, si + 1, data=b"r" * 100))
        f.append(tcp4(s, c, sp, cp, ACK | PSH, si + 1, ci + 101, data=b"s" * 300))
        if k % 5 == 0:
            f.append(tcp4(c, s, cp, sp, ACK | PSH, ci + 1 + 10**7, si + 301, data=b"x"))  # over
        if k % 3 == 0:
            f += [tcp4(c, s, cp, sp, FIN | ACK, ci + 101, si + 301),
                  tcp4(s, c, sp, cp, FIN | ACK, si + 301, ci + 102),
                  tcp4(c, s, cp, sp, ACK, ci + 102, si + 302)]
            if k % 6 == 0:
                f.append(tcp4(c, s, cp, sp, SYN, ci + 5000))             # reopen
        elif k % 3 == 1:
            f.append(tcp4(c, s, cp, sp, RST | ACK, ci + 101, si + 301))
        flows.append(f)
    for k in range(n_udp):
        c, s = f"172.16.{k // 100}.{k % 100 + 1}", "8.8.8.8"
        f = [udp4(c, s, 30000 + k, 53)]
        if k % 2 == 0:
            f.append(udp4(s, c, 53, 30000 + k))
        f += [udp4(c, s, 30000 + k, 53)] * int(rng.integers(0, 4))
        flows.append(f)
    for k in range(n_icmp):
        c, s = f"192.168.5.{k + 1}", "1.1.1.1"
        f = []
        for q in range(int(rng.integers(1, 4))):
            f.append(icmp4(c, s, 8, 1000 + k, seq=q))
            if k % 4:
                f.append(icmp4(s, c, 0, 1000 + k, seq=q))
        flows.append(f)
    flows.append([icmp4("9.9.9.9", "8.8.4.4", 0, 1)])                      # invalid: lone reply
    flows.append([raw4("10.9.9.9", "10.8.8.8", 253), raw4("10.8.8.8", "10.9.9.9", 253)])
    # Interleave the flows (each flow's order kept), with time gaps big enough to expire UDP/ICMP.
    pos = [0] * len(flows)
    frames, ts = [], []
    now = 0.0
    while True:
        live = [i for i in range(len(flows)) if pos[i] < len(flows[i])]
        if not live:
            break
        i = live[int(rng.integers(0, len(live)))]
        frames.append(flows[i][pos[i]])
        pos[i] += 1
        r = rng.random()
        now += 31.0 if r < 0.004 else (2.5 if r < 0.02 else float(rng.random() * 0.05))
        ts.append(now)
    # A few timestamps going backwards.
    for j in rng.choice(np.arange(10, len(ts)), size=5, replace=False):
        ts[j] = ts[j] - 1.0
    return frames, ts


def test_batch_boundaries_synthetic_interleaved():
    frames, ts = _synthetic_workload()
    big = batch(frames, ts=ts)
    assert len(big) > 1000
    states = _assert_batch_independent(big)
    assert states.count(T_NEW) > 100 and states.count(T_INV) > 10 and states.count(T_RPL) > 100


def test_dead_entry_rebuilt_reversed_then_same_batch_packet():
    # A (C->S) at 0; B (S->C) at 40 finds A dead and starts a connection whose original direction
    # is S->C; C at 80 finds that one dead and starts a connection whose original is C->S again;
    # D (C->S) at 81 is the original direction of the connection C created: trk+new (no reply seen)
    # and counted as an original packet.  The kernel processes packet by packet, so the result
    # cannot depend on C and D arriving in one batch.
    a = udp4(C, S, 30022, 53)
    b = udp4(S, C, 53, 30022)
    for split in (False, True):
        t = Tracker(seed=1)
        assert run(t, [a, b], [0.0, 40.0]) == [T_NEW, T_NEW]
        if split:
            states = [one(t, a, 80.0), one(t, a, 81.0)]
        else:
            states = run(t, [a, a], [80.0, 81.0])
        assert states == [T_NEW, T_NEW], split
        rec = t.lookup(C, S, "udp", 30022, 53)
        assert rec["direction"] == "original" and rec["packets"] == [2, 0], split
        assert rec["status_names"] == ["CONFIRMED"], split


def test_tcp_reopen_with_roles_switched_then_reply_in_same_batch():
    # As test_tcp_reply_syn_in_time_wait_reopens_with_roles_switched, with the new connection's
    # SYN/ACK (from the former client, now the reply direction) in the same batch as the SYN.
    for split in (False, True):
        t = Tracker(seed=1)
        _closed_by_fin(t)
        frames, ts = [s2c(SYN, 50000), c2s(SYN | ACK, 70000, 50001)], [5.0, 5.1]
        states = [one(t, f, x) for f, x in zip(frames, ts)] if split else run(t, frames, ts)
        assert states == [T_NEW, T_RPL], split
        rec = t.lookup(S, C, "tcp", SP, CP)
        assert rec["direction"] == "original" and rec["state_name"] == "SYN_RECV", split
        assert rec["packets"] == [1, 1], split


def test_flow_new_twice_in_one_batch_inserted_once():
    t = Tracker(seed=1)
    syn = c2s(SYN, 100)
    res = t.process(batch([syn, syn], ts=[0.0, 0.5]))
    assert res.ct_state.tolist() == [T_NEW, T_NEW]
    assert res.entry[0] == res.entry[1] >= 0
    assert len(t) == 1 and t.stats()["insert"] == 1
    assert tcp_rec(t)["packets"] == [1, 0]
    # Same for UDP (both packets are counted on the one entry).
    u = udp4(C, S, 7, 8)
    res = t.process(batch([u, u, u], ts=[1.0, 1.0, 1.0]))
    assert res.ct_state.tolist() == [T_NEW] * 3
    assert len(t) == 2 and t.stats()["insert"] == 2
    assert t.lookup(C, S, "udp", 7, 8)["packets"] == [3, 0]


def test_growth_50000_udp_flows():
    t = Tracker(max_conns=100_000, seed=5)
    n = 50_000
    frames = [fast_udp4(0x0A000000 + i, 0x0B000000 + (i % 97), 1024 + (i % 50000), 53) for i in range(n)]
    res = t.process(batch(frames, ts=np.linspace(0, 10, n)))
    assert (res.ct_state == T_NEW).all()
    assert len(t) == n
    st = t.stats()
    assert st["grows"] > 0 and st["insert"] == n
    assert st["chaintoolong"] == 0
    assert 0 < st["probe_max"] < 128        # below the probe bound (MAX_PROBE) with room to spare
    for i in range(n):
        src = socket.inet_ntoa(struct.pack("!I", 0x0A000000 + i))
        dst = socket.inet_ntoa(struct.pack("!I", 0x0B000000 + (i % 97)))
        sport = 1024 + (i % 50000)
        fwd = t.lookup(src, dst, "udp", sport, 53)
        rev = t.lookup(dst, src, "udp", 53, sport)
        assert fwd is not None and rev is not None, i
        assert fwd["direction"] == "original" and rev["direction"] == "reply"
        assert fwd["index"] == rev["index"]


def test_table_full():
    # Without early drop (Open vSwitch's userspace rule; the kernel's is in test_table_full.py).
    t = Tracker(max_conns=10, seed=1, early_drop=False)
    frames = [udp4(C, S, 6000 + i, 53) for i in range(20)]
    res = t.process(batch(frames, ts=[i * 0.001 for i in range(20)]))
    assert res.ct_state.tolist() == [T_NEW] * 10 + [T_INV] * 10
    assert (res.entry[10:] == -1).all()
    assert len(t) == 10
    assert t.stats()["drop"] == 10
    for i in range(10):
        assert t.lookup(C, S, "udp", 6000 + i, 53) is not None
    for i in range(10, 20):
        assert t.lookup(C, S, "udp", 6000 + i, 53) is None
    # Existing connections still work when full.
    assert one(t, udp4(S, C, 53, 6000), 0.5) == T_RPL
    assert t.lookup(C, S, "udp", 6000, 53)["packets"] == [1, 1]


@pytest.mark.parametrize("split", [0, 1, 2])
def test_table_full_of_dead_entries_accepts_new_flows(split):
    # Ten UDP entries created at 0 s are all dead at 40 s (30 s timeout): the table holds no live
    # connection, so new flows at 40 s must be tracked -- whether or not an earlier call already
    # carried the clock past their expiry (the kernel works packet by packet; batching must not
    # change a verdict).
    t = Tracker(max_conns=10, seed=1)
    run(t, [udp4(C, S, 6000 + i, 53) for i in range(10)], [0.0] * 10)
    frames = [udp4("1.1.1.1", "2.2.2.2", 1, 1), udp4(C, S, 7000, 53)]
    ts = [40.0, 40.1]
    if split == 0:
        states = run(t, frames, ts)
    elif split == 1:
        states = [one(t, frames[0], ts[0]), one(t, frames[1], ts[1])]
    else:
        states = run(t, frames[1:], ts[1:]) + run(t, frames[:1], [40.2])
    assert states == [T_NEW, T_NEW]
    assert len(t) == 2
    assert t.stats()["drop"] == 0


def test_no_probe_chain_drops_while_the_table_has_room():
    # 600,000 flows into a table sized for 1,200,000: the index grows at load 0.7, so every flow
    # has room and none may be dropped ("probe chain too long" is fastct's stand-in for the
    # kernel's chaintoolong, which needs a hash chain of 50+ entries and does not happen at a
    # sane load).
    n = 600_000
    frames = [fast_udp4(0x0A000000 + i, 0x0B000000 + (i % 97), 1024 + (i % 50000), 53) for i in range(n)]
    t = Tracker(max_conns=2 * n, seed=3)
    res = t.process(batch(frames, ts=np.linspace(0, 10, n)))
    st = t.stats()
    assert st["chaintoolong"] == 0 and st["drop"] == 0
    assert np.flatnonzero(res.ct_state != T_NEW).tolist() == []
    assert len(t) == n


def test_table_full_stats_follow_kernel():
    # Kernel nf_conntrack_in: when resolve_normal_ct fails (table full, -ENOMEM) it does drop++
    # and NF_DROP, and never invalid++ (invalid is for packets without a ct or refused by the L4
    # handler).  So `conntrack -S` shows drop=10 invalid=0 after 10 table-full packets.
    t = Tracker(max_conns=10, seed=1, early_drop=False)
    t.process(batch([udp4(C, S, 6000 + i, 53) for i in range(20)], ts=[0.0] * 20))
    st = t.stats()
    assert st["drop"] == 10
    assert st["invalid"] == 0
    # With early drop, a packet either evicted an unassured entry or was dropped; never invalid.
    t = Tracker(max_conns=10, seed=1)
    t.process(batch([udp4(C, S, 6000 + i, 53) for i in range(20)], ts=[0.0] * 20))
    st = t.stats()
    assert st["drop"] + st["early_drop"] == 10 and st["invalid"] == 0


# ---- engine: expiry --------------------------------------------------------------------------------

def test_expiry_exactly_at_timeout():
    t = Tracker(seed=1)
    a = udp4(C, S, 5555, 53)
    assert one(t, a, 0.0) == T_NEW
    # Just before 30 s the entry is still there (0 whole seconds left).
    assert one(t, udp4("1.1.1.1", "2.2.2.2", 1, 2), 29.999) == T_NEW
    rec = t.lookup(C, S, "udp", 5555, 53)
    assert rec is not None and rec["timeout"] == 0
    # At exactly 30 s it has expired: the same tuple starts a new connection.
    assert one(t, a, 29.999 + 0.001) == T_NEW
    rec = t.lookup(C, S, "udp", 5555, 53)
    assert rec["packets"] == [1, 0] and rec["start"] == 30_000_000_000 and rec["timeout"] == 30


def test_expiry_reply_direction_after_timeout_starts_new_connection():
    t = Tracker(seed=1)
    assert one(t, udp4(C, S, 5556, 53), 0.0) == T_NEW
    # The "reply" 30 s later finds no live entry: it is the original direction of a new one.
    assert one(t, udp4(S, C, 53, 5556), 30.0) == T_NEW
    rec = t.lookup(S, C, "udp", 53, 5556)
    assert rec["direction"] == "original" and rec["src"] == S and rec["packets"] == [1, 0]
    assert len(t) == 1


def test_len_and_entries_exclude_dead_entries():
    t = Tracker(seed=1)
    run(t, [udp4(C, S, 1, 2), raw4(C, S, 253), icmp4(C, S, 8, 1)], [0.0, 0.0, 0.0])
    assert len(t) == 3
    # A packet at 30 s: the UDP and ICMP entries (30 s) are dead, the generic one (600 s) lives.
    t.process(batch([udp4("5.5.5.5", "6.6.6.6", 3, 4)], ts=[30.0]))
    assert len(t) == 2
    assert t.lookup(C, S, "udp", 1, 2) is None and t.lookup(C, S, "icmp", 1) is None
    assert t.lookup(C, S, 253)["timeout"] == 570
    ents = t.entries()
    assert sorted(int(p) for p in ents["proto"]) == [17, 253]
    assert (ents["expires"] > t.now).all()


def test_dead_entry_is_not_found_before_it_is_swept():
    t = Tracker(seed=1)
    u = udp4(C, S, 4444, 53)
    # Both in one call: the sweep at the start of the call cannot have removed the first entry.
    res = t.process(batch([u, udp4("7.7.7.7", "8.8.8.8", 1, 1)], ts=[0.0, 30.0]))
    assert res.ct_state.tolist() == [T_NEW, T_NEW]
    assert t.lookup(C, S, "udp", 4444, 53) is None


# ---- engine: commit, zones, time -------------------------------------------------------------------

def test_commit_false():
    t = Tracker(seed=1)
    res = t.process(batch([c2s(SYN, 100), udp4(C, S, 1, 2)], ts=[0.0, 0.0]), commit=False)
    assert res.ct_state.tolist() == [T_NEW, T_NEW]
    assert res.entry.tolist() == [-1, -1]
    assert len(t) == 0 and t.stats()["insert"] == 0
    # Invalid packets are still invalid without commit.
    assert one(t, c2s(SYN | FIN, 100), 0.1, commit=False) == T_INV
    # Commit one connection, then more of its packets without commit still update it.
    handshake(t, t0=1.0)
    assert one(t, c2s(ACK | PSH, 101, 201, data=b"d" * 10), 2.0, commit=False) == T_EST
    assert one(t, s2c(ACK, 201, 111), 2.1, commit=False) == T_RPL
    rec = tcp_rec(t)
    assert rec["packets"] == [3, 2] and rec["bytes"] == [3 * TCP_LEN + 10, 2 * TCP_LEN]
    assert len(t) == 1
    # A UDP flow committed, then its reply uncommitted: SEEN_REPLY set, counted.
    one(t, udp4(C, S, 9, 9), 3.0)
    assert one(t, udp4(S, C, 9, 9), 3.1, commit=False) == T_RPL
    rec = t.lookup(C, S, "udp", 9, 9)
    assert rec["packets"] == [1, 1] and "SEEN_REPLY" in rec["status_names"]


def test_zones_separate_connections():
    t = Tracker(seed=1)
    u = udp4(C, S, 100, 200)
    assert one(t, u, 0.0, zone=1) == T_NEW
    assert one(t, u, 0.1, zone=2) == T_NEW
    assert one(t, udp4(S, C, 200, 100), 0.2, zone=2) == T_RPL
    assert len(t) == 2
    z1 = t.lookup(C, S, "udp", 100, 200, zone=1)
    z2 = t.lookup(C, S, "udp", 100, 200, zone=2)
    assert z1["index"] != z2["index"]
    assert z1["zone"] == 1 and z2["zone"] == 2
    assert z1["packets"] == [1, 0] and z2["packets"] == [1, 1]
    assert t.lookup(C, S, "udp", 100, 200) is None
    assert len(t.entries(zone=2)) == 1 and len(t.entries(zone=0)) == 0


def test_zone_from_vlan_uses_outer_vlan():
    t = Tracker(seed=1)
    u = udp4(C, S, 100, 200)
    frames = [vlan_frame(u, 100), vlan_frame(u, 200, 300, outer_tpid=0x88A8), u,
              vlan_frame(udp4(S, C, 200, 100), 100)]
    res = t.process(batch(frames, ts=[0, 0.1, 0.2, 0.3]), zone_from_vlan=True, zone=9)
    assert res.ct_state.tolist() == [T_NEW, T_NEW, T_NEW, T_RPL]
    assert len(t) == 3
    assert t.lookup(C, S, "udp", 100, 200, zone=100)["packets"] == [1, 1]
    assert t.lookup(C, S, "udp", 100, 200, zone=200)["packets"] == [1, 0]
    assert t.lookup(C, S, "udp", 100, 200, zone=300) is None
    assert t.lookup(C, S, "udp", 100, 200, zone=0)["packets"] == [1, 0]   # untagged: zone 0
    # Bytes are IP lengths: the tags do not count.
    assert t.lookup(C, S, "udp", 100, 200, zone=100)["bytes"] == [UDP_LEN, UDP_LEN]


def test_time_going_backwards():
    t = Tracker(seed=1)
    res = t.process(batch([udp4(C, S, 1, 1), udp4(C, S, 2, 2)], ts=[10.0, 5.0]))
    assert res.ct_state.tolist() == [T_NEW, T_NEW]
    assert t.stats()["time_backwards"] == 1
    assert t.now == 10_000_000_000
    rec = t.lookup(C, S, "udp", 2, 2)
    assert rec["start"] == 10_000_000_000 and rec["timeout"] == 30
    # Also across calls.
    one(t, udp4(C, S, 3, 3), 7.0)
    assert t.stats()["time_backwards"] == 2
    assert t.lookup(C, S, "udp", 3, 3)["start"] == 10_000_000_000


# ---- entries() filters -----------------------------------------------------------------------------

def _mixed_table():
    t = Tracker(seed=1)
    clock = [0.0]

    def add(fs, zone=0):
        ts = [clock[0] + i * 0.001 for i in range(len(fs))]
        clock[0] += 0.01
        t.process(batch(fs, ts=ts), zone=zone)

    # A: TCP established, assured.  10.0.0.1:1000 -> 10.1.0.1:80
    add([tcp4("10.0.0.1", "10.1.0.1", 1000, 80, SYN, 1), tcp4("10.1.0.1", "10.0.0.1", 80, 1000, SYN | ACK, 9, 2),
         tcp4("10.0.0.1", "10.1.0.1", 1000, 80, ACK, 2, 10)])
    # B: TCP SYN_SENT.  10.0.0.2:1001 -> 192.168.1.1:443
    add([tcp4("10.0.0.2", "192.168.1.1", 1001, 443, SYN, 1)])
    # C: UDP replied.  10.0.1.3:53000 -> 8.8.8.8:53
    add([udp4("10.0.1.3", "8.8.8.8", 53000, 53), udp4("8.8.8.8", "10.0.1.3", 53, 53000)])
    # D: UDP in zone 5.  10.0.0.4:80 -> 10.1.0.1:5000
    add([udp4("10.0.0.4", "10.1.0.1", 80, 5000)], zone=5)
    # E: ICMP echo.  10.0.0.1 -> 1.1.1.1 id 80
    add([icmp4("10.0.0.1", "1.1.1.1", 8, 80)])
    # F: IPv6 UDP.  2001:db8::1:443 -> 2001:db8:1::2:1000
    add([udp6("2001:db8::1", "2001:db8:1::2", 443, 1000)])
    # G: generic 253.  172.16.0.1 -> 10.0.0.1
    add([raw4("172.16.0.1", "10.0.0.1", 253)])
    return t


def _names(ents):
    key = {("10.0.0.1", "10.1.0.1", 6): "A", ("10.0.0.2", "192.168.1.1", 6): "B",
           ("10.0.1.3", "8.8.8.8", 17): "C", ("10.0.0.4", "10.1.0.1", 17): "D",
           ("10.0.0.1", "1.1.1.1", 1): "E", ("2001:db8::1", "2001:db8:1::2", 17): "F",
           ("172.16.0.1", "10.0.0.1", 253): "G"}
    return sorted(key[(format_addr(e["src"], int(e["l3"])), format_addr(e["dst"], int(e["l3"])),
                       int(e["proto"]))] for e in ents)


@pytest.mark.parametrize("kw, want", [
    ({}, "ABCDEFG"),
    ({"proto": "tcp"}, "AB"),
    ({"proto": 6}, "AB"),
    ({"proto": "udp"}, "CDF"),
    ({"proto": "icmp"}, "E"),
    ({"proto": 253}, "G"),
    ({"state": "ESTABLISHED"}, "A"),
    ({"state": "SYN_SENT"}, "B"),
    ({"state": "TIME_WAIT"}, ""),
    ({"status": "ASSURED"}, "A"),
    ({"status": "SEEN_REPLY"}, "AC"),
    ({"status": 0x2 | 0x4}, "A"),
    ({"zone": 5}, "D"),
    ({"zone": 0}, "ABCEFG"),
    ({"src": "10.0.0.1"}, "AE"),
    ({"src": "10.0.0.0/24"}, "ABDE"),
    ({"src": "10.0.0.0/23"}, "ABCDE"),
    ({"src": "10.0.0.0/8"}, "ABCDE"),
    ({"src": "0.0.0.0/0"}, "ABCDEG"),
    ({"src": "2001:db8::/32"}, "F"),
    ({"dst": "10.1.0.1"}, "AD"),
    ({"dst": "2001:db8:1::/48"}, "F"),
    ({"dst": "2001:db8::/48"}, ""),
    ({"dst": "10.0.0.0/8"}, "ADG"),
    ({"sport": 1000}, "A"),
    ({"dport": 53}, "C"),
    ({"dport": 1000}, "F"),
    ({"addr": "10.0.0.1"}, "AEG"),
    ({"addr": "10.1.0.0/16"}, "AD"),
    ({"port": 80}, "AD"),
    ({"port": 1000}, "AF"),
    ({"dport": 8 << 8}, ""),                 # not a port of ICMP entry E (its type 8, code 0)
    ({"proto": "udp", "port": 80}, "D"),
    ({"proto": "tcp", "addr": "192.168.0.0/16"}, "B"),
    ({"src": "10.0.0.0/8", "dst": "10.0.0.0/8", "zone": 0}, "A"),
])
def test_entries_filters(kw, want):
    t = _mixed_table()
    assert _names(t.entries(**kw)) == list(want)


def test_entries_bad_filter_values():
    t = _mixed_table()
    with pytest.raises(ValueError):
        t.entries(state="NOT_A_STATE")
    with pytest.raises(ValueError):
        t.entries(proto="nosuchproto")
    with pytest.raises(ValueError):
        t.entries(src="not-an-address")


# ---- timeouts --------------------------------------------------------------------------------------

def test_timeouts_by_name():
    t = Tracker(seed=1)
    assert t.timeouts["udp_timeout"] == 30 and t.timeouts["nf_conntrack_udp_timeout"] == 30
    assert t.timeouts["tcp_timeout_established"] == 432000
    one(t, udp4(C, S, 1, 1), 0.0)
    t.timeouts["udp_timeout"] = 50
    assert t.timeouts["nf_conntrack_udp_timeout"] == 50
    # The existing entry keeps its timer until its next packet.
    assert t.lookup(C, S, "udp", 1, 1)["timeout"] == 30
    one(t, udp4(C, S, 2, 2), 1.0)
    assert t.lookup(C, S, "udp", 2, 2)["timeout"] == 50
    one(t, udp4(C, S, 1, 1), 2.0)
    assert t.lookup(C, S, "udp", 1, 1)["timeout"] == 50
    # With the prefix; and the stream timeout.
    t.timeouts["nf_conntrack_udp_timeout_stream"] = 200
    assert t.timeouts["udp_timeout_stream"] == 200
    run(t, [udp4(S, C, 1, 1), udp4(C, S, 1, 1)], [2.5, 3.0])
    assert t.lookup(C, S, "udp", 1, 1)["timeout"] == 200
    t.timeouts["tcp_timeout_established"] = 3600
    handshake(t, t0=5.0)
    assert tcp_rec(t)["timeout"] == 3600


def test_timeouts_in_constructor():
    t = Tracker(seed=1, timeouts={"nf_conntrack_icmp_timeout": 5, "generic_timeout": 7})
    run(t, [icmp4(C, S, 8, 1), raw4(C, S, 253)], [0, 0])
    assert t.lookup(C, S, "icmp", 1)["timeout"] == 5
    assert t.lookup(C, S, 253)["timeout"] == 7


@pytest.mark.parametrize("name", ["udp_timeout_x", "nf_conntrack_bogus", "nf_conntrack_", ""])
def test_timeouts_bad_name(name):
    t = Tracker(seed=1)
    with pytest.raises(KeyError):
        t.timeouts[name] = 5
    with pytest.raises(KeyError):
        t.timeouts[name]
    with pytest.raises(KeyError):
        Tracker(timeouts={name: 5})


@pytest.mark.parametrize("value", ["abc", -1, None, 2**40, float("nan")])
def test_timeouts_bad_value(value):
    t = Tracker(seed=1)
    with pytest.raises(ValueError):
        t.timeouts["udp_timeout"] = value
    assert t.timeouts["udp_timeout"] == 30


# ---- Tracker arguments, buffers --------------------------------------------------------------------

@pytest.mark.parametrize("kw, word", [
    ({"max_conns": 0}, "max_conns"),
    ({"max_conns": -1}, "max_conns"),
    ({"max_conns": "x"}, "max_conns"),
    ({"max_conns": 2**40}, "max_conns"),
    ({"max_conns": 1.5}, "max_conns"),
    ({"max_conns": True}, "max_conns"),
    ({"seed": -1}, "seed"),
    ({"seed": "x"}, "seed"),
])
def test_tracker_argument_validation(kw, word):
    with pytest.raises(ValueError, match=word):
        Tracker(**kw)


def test_read_only_input_buffers():
    frames = [c2s(SYN, 100), s2c(SYN | ACK, 200, 101), c2s(ACK, 101, 201)]
    b = batch(frames, ts=[0, 0.01, 0.02])
    ro = Batch(*(np.array(getattr(b, f)) for f in
                 ("buf", "offsets", "caplen", "wirelen", "ts", "iface", "if_linktype", "if_fcslen")))
    for f in ("buf", "offsets", "caplen", "wirelen", "ts", "iface", "if_linktype", "if_fcslen"):
        getattr(ro, f).setflags(write=False)
    t = Tracker(seed=1)
    assert t.process(ro).ct_state.tolist() == [T_NEW, T_RPL, T_EST]
    assert tcp_rec(t)["state_name"] == "ESTABLISHED"
    # A bytes-backed buffer (np.frombuffer of bytes is read-only) as well.
    b1 = batch([udp4(C, S, 1, 1)], ts=[1.0])
    b2 = Batch(np.frombuffer(b1.buf.tobytes(), dtype=np.uint8), b1.offsets, b1.caplen, b1.wirelen,
               b1.ts, b1.iface, b1.if_linktype, b1.if_fcslen)
    assert not b2.buf.flags.writeable
    assert t.process(b2).ct_state.tolist() == [T_NEW]


# ---- invariants under a random workload ------------------------------------------------------------

INV_ICMP = {8: 0, 13: 14, 15: 16, 17: 18, 128: 129, 139: 140}


def _check_invariants(t):
    ents = t.entries().copy()
    assert len(t) == len(ents)
    assert (ents["expires"] > t.now).all()
    seen = set()
    for i in range(len(ents)):
        e = ents[i]
        l3, proto = int(e["l3"]), int(e["proto"])
        src, dst = format_addr(e["src"], l3), format_addr(e["dst"], l3)
        sport, dport, zone = int(e["sport"]), int(e["dport"]), int(e["zone"])
        key = (src, dst, proto, sport, dport, zone)
        assert key not in seen
        seen.add(key)
        if proto in (1, 58):
            itype, code = dport >> 8, dport & 0xFF
            fwd = t.lookup(src, dst, proto, sport, zone=zone, icmp_type=itype, icmp_code=code)
            rev = t.lookup(dst, src, proto, sport, zone=zone, icmp_type=INV_ICMP[itype], icmp_code=code)
        else:
            fwd = t.lookup(src, dst, proto, sport, dport, zone=zone)
            rev = t.lookup(dst, src, proto, dport, sport, zone=zone)
        assert fwd is not None and fwd["index"] == i and fwd["direction"] == "original", key
        assert rev is not None and rev["index"] == i and rev["direction"] == "reply", key


def test_invariants_random_workload():
    rng = np.random.default_rng(2024)
    t = Tracker(max_conns=3000, seed=9)
    hosts = [f"10.{a}.0.{b}" for a in range(3) for b in range(1, 12)]
    flag_choices = [SYN, SYN | ACK, ACK, FIN | ACK, RST, RST | ACK, ACK | PSH, SYN | FIN, 0]
    now = 0.0
    for _round in range(30):
        n = int(rng.integers(1, 400))
        frames, ts = [], []
        for _ in range(n):
            a, b = rng.choice(len(hosts), size=2, replace=False)
            src, dst = hosts[a], hosts[b]
            kind = rng.random()
            sp, dp = int(rng.integers(1, 40)), int(rng.integers(1, 6))
            if kind < 0.45:
                fl = flag_choices[int(rng.integers(0, len(flag_choices)))]
                seq, ack = int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))
                frames.append(tcp4(src, dst, sp, dp, fl, seq, ack))
            elif kind < 0.8:
                frames.append(udp4(src, dst, sp, dp))
            elif kind < 0.9:
                frames.append(icmp4(src, dst, int(rng.choice([8, 0, 13])), sp))
            else:
                frames.append(raw4(src, dst, int(rng.choice([253, 50]))))
            r = rng.random()
            now += 40.0 if r < 0.002 else float(rng.random() * 0.2)
            ts.append(now if rng.random() > 0.01 else now - 3.0)
        t.process(batch(frames, ts=ts), zone=int(rng.integers(0, 3)))
        _check_invariants(t)
    st = t.stats()
    assert st["packets"] > 1000 and st["entries"] == len(t)


def test_prefault_sizes_the_index_for_max_conns():
    # prefault=True touches the entry memory and sizes the index so it never grows: 5000
    # connections need 5000 / (5/8) = 8000 slots, so 8192.
    from fastct.bench import conn_endpoints, make_frames
    n = 5000
    c, s, sp, dp = conn_endpoints(n, np.random.default_rng(0))
    syns = make_frames(c, s, sp, dp, np.ones(n, dtype=bool), np.full(n, 2, dtype=np.uint8),
                       np.full(n, 1000, dtype=np.uint32), np.zeros(n, dtype=np.uint32),
                       np.arange(n, dtype=np.int64))
    t = Tracker(max_conns=n, seed=1, prefault=True)
    assert t._engine.n_slots == 8192
    res = t.process(syns)
    assert (res.ct_state == (B["trk"] | B["new"])).all()
    assert t.stats()["grows"] == 0 and len(t) == n
    assert t._engine.check_invariants() == []


def test_counters_carry_past_32_bits():
    # The entry keeps each counter's low 32 bits, the cold record the high ones (so the TCP state
    # fits two cache lines).  A wrap of the low word must carry: set the low words just below 2^32
    # and send two more packets each way, then read the whole values every way they are shown.
    t = Tracker(seed=1)
    run(t, [udp4(C, S, 7000, 53), udp4(S, C, 53, 7000)], [1.0, 1.1])
    view = t._engine.entries_view()
    view["packets_lo"][0] = [0xFFFFFFFF, 0xFFFFFFFE]
    view["bytes_lo"][0] = [0xFFFFFFFF - UDP_LEN + 1, 0xFFFFFFF0]
    run(t, [udp4(C, S, 7000, 53), udp4(S, C, 53, 7000), udp4(S, C, 53, 7000)], [2.0, 2.1, 2.2])
    want_p = [0xFFFFFFFF + 1, 0xFFFFFFFE + 2]
    want_b = [0xFFFFFFFF + 1, 0xFFFFFFF0 + 2 * UDP_LEN]
    rec = t.lookup(C, S, "udp", 7000, 53)
    assert rec["packets"] == want_p and rec["bytes"] == want_b
    assert t.cold()["packets_hi"][0].tolist() == [1, 1] and t.cold()["bytes_hi"][0].tolist() == [1, 1]
    assert t.entries()["packets_lo"][0].tolist() == [0, 0]
    assert t.counters()["packets"][0].tolist() == want_p and t.counters()["bytes"][0].tolist() == want_b
    from fastct.conntrack_fmt import format_table
    line = format_table(t.entries(), t.replies(), t.cold(), t.now)[0]
    assert f"packets={want_p[0]} bytes={want_b[0]} " in line
    assert f"packets={want_p[1]} bytes={want_b[1]} " in line


def test_sack_blocks_count_as_acknowledged_when_sack_permitted():
    # Kernel tcp_sack: with the receiver SACK-permitted, the highest SACK right edge is the highest
    # byte acknowledged, so it must not pass what the receiver sent (the server, up to 301 here).
    sackperm, nop2 = b"\x04\x02\x01\x01", b"\x01\x01"

    def sack(left, right):
        return nop2 + b"\x05\x0a" + struct.pack("!II", left, right)

    t = Tracker(seed=1)
    handshake(t, copts=sackperm, sopts=sackperm)
    assert run(t, [s2c(PSH | ACK, 201, 101, data=b"d" * 100)], [1.0]) == [T_RPL]
    assert run(t, [c2s(ACK, 101, 201, opts=sack(251, 301))], [1.1]) == [T_EST]
    assert run(t, [c2s(ACK, 101, 201, opts=sack(301, 401))], [1.2]) == [T_INV]
    assert t.stats()["reasons"] == {"TCP ACK is over the upper bound": 1}
    # A second block beyond, in the same option, counts as well (the highest edge of all).
    assert run(t, [c2s(ACK, 101, 201, opts=nop2 + b"\x05\x12" + struct.pack("!IIII", 251, 301, 351, 401))],
               [1.3]) == [T_INV]
    # Without SACK-permitted on the receiver's side, the blocks are not looked at.
    t2 = Tracker(seed=1)
    handshake(t2, copts=sackperm)
    assert run(t2, [s2c(PSH | ACK, 201, 101, data=b"d" * 100)], [1.0]) == [T_RPL]
    assert run(t2, [c2s(ACK, 101, 201, opts=sack(301, 401))], [1.2]) == [T_EST]


def test_retransmission_count_wraps_as_the_kernels_u8():
    # Kernel ct->proto.tcp.retrans is a u8 incremented without a cap: the 256th repeat of the same
    # ACK wraps it to 0, and the timeout goes back from 300 s (retrans >= 3) to ESTABLISHED's.
    t = Tracker(seed=1)
    handshake(t)
    dup = c2s(ACK, 101, 201, win=1000)          # (another window than the handshake's ACK)
    run(t, [dup] * 4, [1.0 + i * 0.001 for i in range(4)])
    assert tcp_rec(t)["retrans"] == 3 and tcp_rec(t)["timeout"] == 300
    run(t, [dup] * 252, [2.0 + i * 0.001 for i in range(252)])
    assert tcp_rec(t)["retrans"] == 255 and tcp_rec(t)["timeout"] == 300
    run(t, [dup], [3.0])
    assert tcp_rec(t)["retrans"] == 0 and tcp_rec(t)["timeout"] == 432000
