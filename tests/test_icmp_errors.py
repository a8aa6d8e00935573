"""ICMP and ICMPv6 errors as the kernel tracks them (nf_conntrack_inet_error).

The error quotes a packet; the kernel inverts the quoted tuple, looks it up, and if a live
connection has it (and the error travels to the quoted packet's source) the error is RELATED to that
connection, with IS_REPLY when it travels in the connection's reply direction.  The connection is
not refreshed or counted, and SEEN_REPLY is not set.  Anything the error handler refuses counts in
the `error` statistic (not `invalid`) and the packet has no connection: ct_state inv.
"""
import struct

import dpkt
import pytest

from fastct import Batch, Tracker
from fastct.tracker import CT_STATE_BITS as B

from pkt import ip4, ip6, eth

TRK, NEW, EST, REL, RPL, INV = B["trk"], B["new"], B["est"], B["rel"], B["rpl"], B["inv"]
A, S, R = "10.0.0.1", "10.0.0.2", "10.9.9.9"          # client, server, a router on the path
A6, S6 = "2001:db8::1", "2001:db8::2"
LL6 = "fe80::1"


def ip4pkt(src, dst, proto, payload, ttl=64):
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=proto, ttl=ttl, data=payload)
    ip.len = 20 + len(bytes(payload))
    return bytes(ip)


def ip6pkt(src, dst, nh, payload, hlim=64):
    ip = dpkt.ip6.IP6(src=ip6(src), dst=ip6(dst), nxt=nh, hlim=hlim, data=payload)
    ip.plen = len(bytes(payload))
    return bytes(ip)


def udp(sport, dport, data=b"q" * 12):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport, dport, flags, seq=0, ack=0):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)


def icmp(type_, code, rest, body):
    return struct.pack("!BBH", type_, code, 0) + rest + body


def err4(src, dst, type_, code, quoted, n=None):
    """An ICMP error from src to dst quoting `quoted` (its first n bytes: default header + 8)."""
    if n is None:
        n = 28 if quoted[0] == 0x45 else len(quoted)
    return eth(ip4pkt(src, dst, 1, icmp(type_, code, b"\0" * 4, quoted[:n])), 0x0800)


def err6(src, dst, type_, code, quoted, hlim=64):
    rest = struct.pack("!I", 1280) if type_ == 2 else b"\0" * 4
    return eth(ip6pkt(src, dst, 58, icmp(type_, code, rest, quoted), hlim=hlim), 0x86DD)


def run(frames, t=None, zone=0, gap=0.001):
    t = t if t is not None else Tracker(max_conns=256, seed=7)
    b = Batch.from_frames(frames, ts=[gap * i for i in range(len(frames))])
    res = t.process(b, zone=zone)
    return t, [int(x) for x in res.ct_state], res


UDP_REQ = ip4pkt(A, S, 17, udp(40000, 53))
UDP_REP = ip4pkt(S, A, 17, udp(53, 40000))


def test_port_unreachable_is_related_reply_and_not_counted():
    t, st, res = run([eth(UDP_REQ, 0x0800), err4(S, A, 3, 3, UDP_REQ)])
    assert st == [TRK | NEW, TRK | REL | RPL]
    assert res.entry[1] == res.entry[0] and res.direction[1] == 1
    rec = t.lookup(A, S, "udp", 40000, 53)
    # Not counted, SEEN_REPLY untouched, timer not refreshed (30 s from the request at t=0).
    assert rec["packets"] == [1, 0] and rec["bytes"] == [40, 0]
    assert "SEEN_REPLY" not in rec["status_names"]
    assert rec["expires"] == 30 * 10**9
    s = t.stats()
    assert s["error"] == 0 and s["invalid"] == 0


def test_time_exceeded_from_a_router_is_related():
    # A router on the path sends the error to the client: outer source is neither endpoint.
    t, st, _ = run([eth(UDP_REQ, 0x0800), err4(R, A, 11, 0, UDP_REQ)])
    assert st == [TRK | NEW, TRK | REL | RPL]


def test_error_in_the_original_direction():
    # After the exchange, the client reports a reply packet as unreachable to the server.
    frames = [eth(UDP_REQ, 0x0800), eth(UDP_REP, 0x0800), err4(A, S, 3, 3, UDP_REP)]
    t, st, res = run(frames)
    assert st == [TRK | NEW, TRK | EST | RPL, TRK | REL]
    assert res.direction[2] == 0
    assert t.lookup(A, S, "udp", 40000, 53)["packets"] == [1, 1]


def test_error_quoting_no_connection_counts_in_error():
    t, st, _ = run([err4(S, A, 3, 3, UDP_REQ)])
    assert st == [TRK | INV]
    s = t.stats()
    assert s["error"] == 1 and s["invalid"] == 0
    assert s["reasons"] == {"ICMP error quoting no known connection": 1}
    assert len(t) == 0


def test_error_to_the_wrong_host_counts_in_error():
    # The quoted packet came from A, but the error is addressed to R: the kernel refuses it.
    t, st, _ = run([eth(UDP_REQ, 0x0800), err4(S, R, 3, 3, UDP_REQ)])
    assert st == [TRK | NEW, TRK | INV]
    s = t.stats()
    assert s["error"] == 1 and s["invalid"] == 0
    assert s["reasons"] == {"ICMP error whose outer destination is not the quoted packet's source": 1}


def test_error_for_an_expired_connection():
    t, st, _ = run([eth(UDP_REQ, 0x0800)])
    b = Batch.from_frames([err4(S, A, 3, 3, UDP_REQ)], ts=[31.0])
    assert int(t.process(b).ct_state[0]) == TRK | INV
    assert t.stats()["error"] == 1


def test_frag_needed_for_tcp_in_both_directions():
    syn = ip4pkt(A, S, 6, tcp(40001, 80, 0x02, seq=1000))
    synack = ip4pkt(S, A, 6, tcp(80, 40001, 0x12, seq=5000, ack=1001))
    frames = [eth(syn, 0x0800), eth(synack, 0x0800),
              err4(R, A, 3, 4, syn), err4(R, S, 3, 4, synack)]
    t, st, _ = run(frames)
    assert st == [TRK | NEW, TRK | EST | RPL, TRK | REL | RPL, TRK | REL]
    rec = t.lookup(A, S, "tcp", 40001, 80)
    assert rec["state_name"] == "SYN_RECV" and rec["packets"] == [1, 1]


def test_error_quoting_an_echo_request():
    echo = ip4pkt(A, S, 1, icmp(8, 0, struct.pack("!HH", 0x1234, 1), b"x" * 8))
    t, st, _ = run([eth(echo, 0x0800), err4(R, A, 11, 0, echo)])
    assert st == [TRK | NEW, TRK | REL | RPL]


def test_error_quoting_an_error_has_no_tuple():
    inner_err = ip4pkt(S, A, 1, icmp(3, 3, b"\0" * 4, UDP_REQ[:28]))
    t, st, _ = run([eth(UDP_REQ, 0x0800), err4(A, S, 3, 1, inner_err, n=len(inner_err))])
    assert st == [TRK | NEW, TRK | INV]
    assert t.stats()["reasons"] == {"ICMP error with a truncated or unusable quoted packet": 1}


@pytest.mark.parametrize("n", [0, 19, 20, 23])
def test_quote_too_short_for_ports(n):
    # Ports need 4 bytes after the quoted IP header (kernel nf_ct_get_tuple_ports).
    t, st, _ = run([eth(UDP_REQ, 0x0800), err4(S, A, 3, 3, UDP_REQ, n=n)])
    assert st == [TRK | NEW, TRK | INV]
    assert t.stats()["error"] == 1


def test_quote_with_just_the_ports_is_enough():
    t, st, _ = run([eth(UDP_REQ, 0x0800), err4(S, A, 3, 3, UDP_REQ, n=24)])
    assert st == [TRK | NEW, TRK | REL | RPL]


def test_quoted_non_first_fragment_has_no_ports():
    frag = bytearray(UDP_REQ)
    frag[6:8] = struct.pack("!H", 0x0010)       # fragment offset 16 * 8
    t, st, _ = run([eth(UDP_REQ, 0x0800), err4(S, A, 11, 1, bytes(frag))])
    assert st == [TRK | NEW, TRK | INV]


@pytest.mark.parametrize("itype", [19, 40, 255])
def test_icmp_type_beyond_18_counts_in_error(itype):
    frame = eth(ip4pkt(A, S, 1, icmp(itype, 0, b"\0" * 4, b"")), 0x0800)
    t, st, _ = run([frame])
    assert st == [TRK | INV]
    assert t.stats()["error"] == 1 and t.stats()["invalid"] == 0


def test_echo_reply_without_request_is_invalid_not_error():
    reply = ip4pkt(S, A, 1, icmp(0, 0, struct.pack("!HH", 7, 1), b""))
    t, st, _ = run([eth(reply, 0x0800)])
    assert st == [TRK | INV]
    s = t.stats()
    assert s["invalid"] == 1 and s["error"] == 0 and len(t) == 0


def test_zones_keep_errors_apart():
    t, st, _ = run([eth(UDP_REQ, 0x0800)], zone=5)
    b = Batch.from_frames([err4(S, A, 3, 3, UDP_REQ)] * 2, ts=[0.01, 0.02])
    assert int(t.process(b.slice(0, 1), zone=0).ct_state[0]) == TRK | INV
    assert int(t.process(b.slice(1, 2), zone=5).ct_state[0]) == TRK | REL | RPL


# ---- ICMPv6 ----------------------------------------------------------------------------------
TCP6_SYN = ip6pkt(A6, S6, 6, tcp(40002, 443, 0x02, seq=7))


@pytest.mark.parametrize("itype", [1, 2, 3, 4])
def test_icmpv6_errors_related(itype):
    t, st, _ = run([eth(TCP6_SYN, 0x86DD), err6(S6, A6, itype, 0, TCP6_SYN)])
    assert st == [TRK | NEW, TRK | REL | RPL]
    rec = t.lookup(A6, S6, "tcp", 40002, 443)
    assert rec["packets"] == [1, 0] and rec["state_name"] == "SYN_SENT"


def test_icmpv6_error_quoting_unknown():
    t, st, _ = run([err6(S6, A6, 1, 4, TCP6_SYN)])
    assert st == [TRK | INV] and t.stats()["error"] == 1


def test_icmpv6_error_quote_behind_extension_header():
    hbh = bytes([6, 0]) + b"\x01\x04\0\0\0\0"       # hop-by-hop, PadN, then TCP
    quoted = ip6pkt(A6, S6, 0, hbh + tcp(40002, 443, 0x02, seq=7))
    t, st, _ = run([eth(TCP6_SYN, 0x86DD), err6(S6, A6, 1, 4, quoted)])
    assert st == [TRK | NEW, TRK | REL | RPL]


def _redirect(hlim, src=LL6, opt_type=4):
    body = ip6(S6) + ip6(S6)                     # target, destination
    opt = bytes([opt_type, 1 + len(TCP6_SYN[:48]) // 8]) + b"\0" * 6 + TCP6_SYN[:48]
    return eth(ip6pkt(src, A6, 58, icmp(137, 0, b"\0" * 4, body + opt), hlim=hlim), 0x86DD)


def test_icmpv6_redirect_related():
    t, st, _ = run([eth(TCP6_SYN, 0x86DD), _redirect(255)])
    assert st == [TRK | NEW, TRK | REL | RPL]


@pytest.mark.parametrize("hlim,src", [(64, LL6), (255, S6)], ids=["hop-limit", "not-link-local"])
def test_icmpv6_redirect_refused(hlim, src):
    t, st, _ = run([eth(TCP6_SYN, 0x86DD), _redirect(hlim, src)])
    assert st == [TRK | NEW, TRK | INV]
    assert t.stats()["error"] == 1


def test_icmpv6_redirect_without_redirected_header_first_is_ordinary_icmpv6():
    # Kernel nf_conntrack_icmpv6_redirect: a first option other than the Redirected Header leaves
    # the packet to normal tracking, where type 137 (no reply type) is invalid.
    t, st, _ = run([eth(TCP6_SYN, 0x86DD), _redirect(255, LL6, opt_type=2)])
    assert st == [TRK | NEW, TRK | INV]
    s = t.stats()
    assert s["error"] == 0 and s["invalid"] == 1


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_of_the_other_family_is_invalid(family):
    # ICMP in IPv6 / ICMPv6 in IPv4: no error handler runs and the trackers refuse the family.
    if family == 4:
        frames = [eth(ip4pkt(A, S, 58, icmp(128, 0, struct.pack("!HH", 1, 1), b"")), 0x0800),
                  eth(ip4pkt(A, S, 58, icmp(1, 4, b"\0" * 4, UDP_REQ[:28])), 0x0800)]
    else:
        frames = [eth(ip6pkt(A6, S6, 1, icmp(8, 0, struct.pack("!HH", 1, 1), b"")), 0x86DD),
                  eth(ip6pkt(A6, S6, 1, icmp(3, 3, b"\0" * 4, UDP_REQ[:28])), 0x86DD)]
    t, st, _ = run(frames)
    assert st == [TRK | INV, TRK | INV]
    s = t.stats()
    assert s["invalid"] == 2 and s["error"] == 0 and len(t) == 0
    assert s["reasons"] == {"ICMP in IPv6 or ICMPv6 in IPv4": 2}


@pytest.mark.parametrize("itype", [151, 152])
def test_icmpv6_multicast_router_discovery_untracked(itype):
    t, st, _ = run([eth(ip6pkt(LL6, "ff02::6a", 58, icmp(itype, 0, b"\0" * 4, b"")), 0x86DD)])
    assert st == [0] and t.stats()["untracked"] == 1


@pytest.mark.parametrize("dccp_tracker", [False, True])
def test_error_quoting_dccp(dccp_tracker):
    # DCCP Request (48-bit sequence numbers): generic by default (no ports), keyed by ports with the
    # dccp tracker; the error finds the connection either way, from the quoted ports in the latter.
    # Generic header with 48-bit sequence number (RFC 4340 5.1): ports, data offset 5 words,
    # CCVal/CsCov, checksum, type 0 (Request) with X=1, reserved, sequence; then the service code.
    req = struct.pack("!HHBBHBBHI", 5000, 6000, 5, 0, 0, 0 << 1 | 1, 0, 0, 1) + struct.pack("!I", 7)
    pkt = ip4pkt(A, S, 33, req)
    t = Tracker(max_conns=64, seed=3, dccp_tracker=dccp_tracker)
    t, st, _ = run([eth(pkt, 0x0800), err4(S, A, 3, 3, pkt, n=len(pkt))], t=t)
    assert st == [TRK | NEW, TRK | REL | RPL]
    rec = t.lookup(A, S, "dccp", 5000, 6000)
    assert rec is not None and rec["packets"] == [1, 0]
    assert (rec["sport"], rec["dport"]) == ((5000, 6000) if dccp_tracker else (0, 0))
