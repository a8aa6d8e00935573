"""NAT in the engine: bindings, unique tuples, ct_state bits, reply tuples and in-place rewrite.

Expected values are worked out from the kernel's NAT semantics (nf_nat_core.c, nf_nat_proto.c):
SNAT changes the source of original-direction packets and the destination of replies, DNAT the
reverse; ports are kept when free; checksums are recomputed from scratch here with dpkt and must
equal what the rewrite left in the packet.
"""
import random
import socket

import struct

import dpkt
from dpkt import crc32c
import numpy as np
import pytest

from fastct import Tracker
from fastct.conntrack_fmt import format_table
from fastct.nat import NatRule, NatRules
from pkt import ACK, SYN, batch, eth, ip4, ip6

GW = "203.0.113.5"                   # the gateway's outside address
C1, C2 = "10.0.0.1", "10.0.0.2"      # inside clients
SRV = "93.184.216.34"                # an outside server
NEW, EST, REL, RPL, INV, TRK, SNAT, DNAT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


# ---- packets ----------------------------------------------------------------------------------

def tcp(src, dst, sport, dport, flags, seq=1000, ack=0):
    v6 = ":" in src
    t = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=64240, data=b"")
    if v6:
        ip = dpkt.ip6.IP6(src=ip6(src), dst=ip6(dst), nxt=6, hlim=64, data=t, plen=len(bytes(t)))
        return eth(bytes(ip), 0x86DD)
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=6, ttl=64, data=t)
    return eth(bytes(ip), 0x0800)


def udp(src, dst, sport, dport, data=b"query", zero_sum=False):
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    u.ulen = 8 + len(data)
    if ":" in src:
        ip = dpkt.ip6.IP6(src=ip6(src), dst=ip6(dst), nxt=17, hlim=64, data=u, plen=u.ulen)
        return eth(bytes(ip), 0x86DD)
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=17, ttl=64, data=u)
    raw = bytearray(bytes(ip))
    if zero_sum:
        raw[26:28] = b"\0\0"          # IPv4 UDP without a checksum
    return eth(bytes(raw), 0x0800)


def echo(src, dst, type_, id_, seq=1):
    v6 = ":" in src
    e = dpkt.icmp.ICMP.Echo(id=id_, seq=seq, data=b"ping" * 8)
    if v6:
        ic = dpkt.icmp6.ICMP6(type=type_, code=0, data=e)
        ip = dpkt.ip6.IP6(src=ip6(src), dst=ip6(dst), nxt=58, hlim=64, data=ic, plen=len(bytes(ic)))
        return eth(bytes(ip), 0x86DD)
    ic = dpkt.icmp.ICMP(type=type_, code=0, data=e)
    return eth(bytes(dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=1, ttl=64, data=ic)), 0x0800)


def icmp_error(src, dst, quoted_ip: bytes, type_=3, code=3):
    """An ICMP error from src to dst quoting the IP packet `quoted_ip` (its header and 8+ bytes)."""
    body = dpkt.icmp.ICMP.Unreach(data=quoted_ip)
    ic = dpkt.icmp.ICMP(type=type_, code=code, data=body)
    return eth(bytes(dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=1, ttl=64, data=ic)), 0x0800)


def sctp_init(src, dst, sport, dport, extra=b""):
    init = struct.pack("!IIHHI", 0x11223344, 65536, 10, 10, 1) + extra
    chunk = struct.pack("!BBH", 1, 0, 4 + len(init)) + init
    body = struct.pack("!HHII", sport, dport, 0, 0) + chunk
    crc = ~crc32c.add(0xFFFFFFFF, body) & 0xFFFFFFFF
    body = body[:8] + struct.pack("<I", crc) + body[12:]
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=132, ttl=64, data=body)
    return eth(bytes(ip), 0x0800)


# ---- helpers ----------------------------------------------------------------------------------

def run(t, frames, ts=None, **kw):
    """Process frames (one batch); returns the result and each frame as it leaves the engine."""
    b = batch(frames, ts=ts if ts is not None else [float(i) for i in range(len(frames))])
    r = t.process(b, **kw)
    out = [bytes(b.buf[o:o + c]) for o, c in zip(b.offsets, b.caplen)]
    return r, out


def tracker(snat=(), dnat=(), masquerade=(), rules=None, **kw):
    nat = NatRules(rules) if rules is not None else NatRules.from_cli(snat=snat, dnat=dnat,
                                                                       masquerade=masquerade)
    return Tracker(seed=1, nat=nat, **kw)


def l3(frame):
    e = dpkt.ethernet.Ethernet(frame)
    return e.data


def addrs(frame):
    ip = l3(frame)
    fam = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
    return socket.inet_ntop(fam, ip.src), socket.inet_ntop(fam, ip.dst)


def ports(frame):
    d = l3(frame).data
    return d.sport, d.dport


def inet_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def assert_checksums(frame):
    """Every checksum in the frame, recomputed from scratch, equals the one it carries."""
    raw = frame[14:]
    v6 = raw[0] >> 4 == 6
    if not v6:
        hl = (raw[0] & 15) * 4
        assert inet_sum(raw[:hl]) == 0xFFFF, "IPv4 header checksum"
        proto, l4 = raw[9], raw[hl:int.from_bytes(raw[2:4], "big")]
        pseudo = raw[12:20] + bytes([0, proto]) + len(l4).to_bytes(2, "big")
    else:
        proto, l4 = raw[6], raw[40:40 + int.from_bytes(raw[4:6], "big")]
        pseudo = raw[8:40] + len(l4).to_bytes(4, "big") + bytes([0, 0, 0, proto])
    if proto == 6:
        assert inet_sum(pseudo + l4) == 0xFFFF, "TCP checksum"
    elif proto == 17:
        if l4[6:8] != b"\0\0":
            assert inet_sum(pseudo + l4) == 0xFFFF, "UDP checksum"
    elif proto == 1:
        assert inet_sum(l4) == 0xFFFF, "ICMP checksum"
        if l4[0] in (3, 11, 12):
            quoted = l4[8:]
            qhl = (quoted[0] & 15) * 4
            assert inet_sum(quoted[:qhl]) == 0xFFFF, "quoted IPv4 header checksum"
    elif proto == 58:
        assert inet_sum(pseudo + l4) == 0xFFFF, "ICMPv6 checksum"
    elif proto == 132:
        body = bytes(l4[:8]) + b"\0\0\0\0" + bytes(l4[12:])
        assert ~crc32c.add(0xFFFFFFFF, body) & 0xFFFFFFFF == int.from_bytes(l4[8:12], "little"), "SCTP CRC32c"


def reply(t, idx=0):
    r = t.replies()[idx]
    fmt = lambda a: socket.inet_ntop(socket.AF_INET if r["l3"] == 2 else socket.AF_INET6,
                                     bytes(a[:4] if r["l3"] == 2 else a))
    return fmt(r["src"]), fmt(r["dst"]), int(r["sport"]), int(r["dport"])


def status_names(t, idx=0):
    return set(t.record(idx)["status_names"])


# ---- SNAT ---------------------------------------------------------------------------------------

def test_snat_tcp_handshake_rewrites_both_directions():
    t = tracker(snat=[GW])
    r, out = run(t, [tcp(C1, SRV, 40000, 80, SYN), tcp(SRV, GW, 80, 40000, SYN | ACK, 5000, 1001),
                     tcp(C1, SRV, 40000, 80, ACK, 1001, 5001)])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | EST | RPL | DNAT, TRK | EST | SNAT]
    assert r.entry.tolist() == [0, 0, 0] and r.direction.tolist() == [0, 1, 0]
    assert addrs(out[0]) == (GW, SRV) and ports(out[0]) == (40000, 80)     # the port was free
    assert addrs(out[1]) == (SRV, C1) and ports(out[1]) == (80, 40000)
    assert addrs(out[2]) == (GW, SRV)
    for f in out:
        assert_checksums(f)
    assert reply(t) == (SRV, GW, 80, 40000)
    assert {"SRC_NAT", "SRC_NAT_DONE", "DST_NAT_DONE", "SEEN_REPLY"} <= status_names(t)
    assert "DST_NAT" not in status_names(t)
    line = format_table(t.entries(), t.replies(), t.cold(), t.now)[0]
    assert f"src={C1} dst={SRV} sport=40000 dport=80 " in line
    assert f"src={SRV} dst={GW} sport=80 dport=40000 " in line
    assert t.stats()["nat_rewritten"] == 3
    assert t._engine.check_invariants() == []


def test_rewrite_false_gives_verdicts_only():
    t = tracker(snat=[GW])
    frames = [tcp(C1, SRV, 40000, 80, SYN), tcp(SRV, GW, 80, 40000, SYN | ACK, 5000, 1001)]
    r, out = run(t, frames, rewrite=False)
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | EST | RPL | DNAT]
    assert out == frames
    assert t.stats()["nat_rewritten"] == 0


def test_read_only_buffer_with_nat_is_a_clear_error():
    t = tracker(snat=[GW])
    b = batch([tcp(C1, SRV, 40000, 80, SYN)])
    b.buf.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        t.process(b)
    assert t.process(b, rewrite=False).ct_state.tolist() == [TRK | NEW | SNAT]


def test_source_port_clash_moves_the_second_connection():
    t = tracker(snat=[GW])
    r, out = run(t, [tcp(C1, SRV, 40000, 80, SYN), tcp(C2, SRV, 40000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT] * 2
    p1, p2 = ports(out[0])[0], ports(out[1])[0]
    assert p1 == 40000 and p2 != 40000 and 1024 <= p2 <= 65535    # the class of ports >= 1024
    assert reply(t, 1) == (SRV, GW, 80, p2)
    # The server's answer to the moved port reaches the second client.
    r2, out2 = run(t, [tcp(SRV, GW, 80, p2, SYN | ACK, 7000, 1001)], ts=[2.0])
    assert r2.entry.tolist() == [1] and r2.ct_state.tolist() == [TRK | EST | RPL | DNAT]
    assert addrs(out2[0]) == (SRV, C2) and ports(out2[0]) == (80, 40000)
    for f in out + out2:
        assert_checksums(f)
    assert t._engine.check_invariants() == []


@pytest.mark.parametrize("port,lo,hi", [(80, 1, 511), (700, 600, 1023), (50000, 1024, 65535)])
def test_clash_keeps_the_port_class(port, lo, hi):
    t = tracker(snat=[GW])
    r, out = run(t, [tcp(C1, SRV, port, 80, SYN), tcp(C2, SRV, port, 80, SYN)])
    assert ports(out[0])[0] == port
    assert lo <= ports(out[1])[0] <= hi and ports(out[1])[0] != port


def test_port_range_exhaustion_drops_and_counts():
    t = tracker(snat=[f"{GW}:5000-5001"])
    frames = [tcp(f"10.0.0.{i}", SRV, 40000, 80, SYN) for i in (1, 2, 3)]
    r, out = run(t, frames)
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | NEW | SNAT, TRK | INV]
    assert sorted(ports(f)[0] for f in out[:2]) == [5000, 5001]
    assert out[2] == frames[2]                       # a dropped packet is not rewritten
    s = t.stats()
    assert s["drop"] == 1 and s["insert_failed"] == 1 and len(t) == 2
    assert s["reasons"] == {"NAT: no free tuple left in the range, packet dropped": 1}
    # Another server: the same two ports are free towards it.
    r2, _ = run(t, [tcp(C1, "93.184.216.35", 40000, 80, SYN)], ts=[5.0])
    assert r2.ct_state.tolist() == [TRK | NEW | SNAT]


def test_single_port_range_taken_is_dropped():
    t = tracker(snat=[f"{GW}:6000"])
    r, out = run(t, [tcp(C1, SRV, 40000, 80, SYN), tcp(C2, SRV, 40001, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | INV]
    assert ports(out[0])[0] == 6000


def test_port_in_range_and_free_is_kept():
    t = tracker(snat=[f"{GW}:5000-6000"])
    _, out = run(t, [tcp(C1, SRV, 5500, 80, SYN), tcp(C2, SRV, 7000, 80, SYN)])
    assert ports(out[0])[0] == 5500
    assert 5000 <= ports(out[1])[0] <= 6000


def test_address_range_and_persistent():
    servers = [f"198.51.100.{i}" for i in range(1, 41)]
    t = tracker(snat=["203.0.113.1-203.0.113.10,persistent"])
    _, out = run(t, [tcp(C1, s, 40000 + i, 80, SYN) for i, s in enumerate(servers)])
    chosen = {addrs(f)[0] for f in out}
    assert len(chosen) == 1                      # one client, one address, whatever the server
    t2 = tracker(snat=["203.0.113.1-203.0.113.10"])
    _, out2 = run(t2, [tcp(C1, s, 40000 + i, 80, SYN) for i, s in enumerate(servers)])
    chosen2 = {addrs(f)[0] for f in out2}
    assert len(chosen2) > 1                      # spread by source and destination
    inside = {f"203.0.113.{i}" for i in range(1, 11)}
    assert chosen <= inside and chosen2 <= inside
    # The same client and server always get the same address (hash, not chance).
    t3 = tracker(snat=["203.0.113.1-203.0.113.10"])
    _, out3 = run(t3, [tcp(C1, s, 40000 + i, 80, SYN) for i, s in enumerate(servers)])
    assert [addrs(f)[0] for f in out3] == [addrs(f)[0] for f in out2]


def test_one_source_keeps_its_mapping_towards_every_destination():
    # The kernel's find_appropriate_src: a source (address, port) already mapped gets the same
    # mapping again for a new destination, even where the hash would pick another address, and
    # even when its own port had to move the first time.
    t = tracker(snat=["203.0.113.1-203.0.113.10"])
    servers = [f"198.51.100.{i}" for i in range(1, 21)]
    _, out = run(t, [udp(C1, s, 5353, 53) for s in servers])
    assert len({(addrs(f)[0], ports(f)[0]) for f in out}) == 1
    t = tracker(snat=[GW])
    _, out = run(t, [udp(C2, SRV, 5353, 53), udp(C1, SRV, 5353, 53), udp(C1, "198.51.100.9", 5353, 53),
                     udp(C1, "198.51.100.10", 5353, 53)])
    moved = ports(out[1])[0]
    assert moved != 5353 and [ports(f)[0] for f in out[2:]] == [moved, moved]
    assert t._engine.check_invariants() == []
    # Random flags skip the reuse (as in the kernel): each connection draws its own port.
    t = tracker(snat=[f"{GW}:20000-29999,random"])
    _, out = run(t, [udp(C1, s, 5353, 53) for s in servers])
    assert len({ports(f)[0] for f in out}) > 1


def test_random_flags_still_unique():
    t = tracker(snat=[f"{GW}:20000-20049,random"])
    frames = [tcp(f"10.0.{i // 250}.{i % 250 + 1}", SRV, 40000, 80, SYN) for i in range(50)]
    r, out = run(t, frames)
    assert (r.ct_state == TRK | NEW | SNAT).all()
    got = sorted(ports(f)[0] for f in out)
    assert got == list(range(20000, 20050))      # all 50 ports used once, none twice
    assert t._engine.check_invariants() == []


# ---- DNAT, full NAT, redirect -------------------------------------------------------------------

def test_dnat_rewrites_destination_and_reply_source():
    client = "198.51.100.7"
    t = tracker(dnat=["10.0.0.9:8080"])
    r, out = run(t, [tcp(client, GW, 5555, 80, SYN), tcp("10.0.0.9", client, 8080, 5555, SYN | ACK, 9, 1001)])
    assert r.ct_state.tolist() == [TRK | NEW | DNAT, TRK | EST | RPL | SNAT]
    assert addrs(out[0]) == (client, "10.0.0.9") and ports(out[0]) == (5555, 8080)
    assert addrs(out[1]) == (GW, client) and ports(out[1]) == (80, 5555)
    assert reply(t) == ("10.0.0.9", client, 8080, 5555)
    assert {"DST_NAT", "DST_NAT_DONE", "SRC_NAT_DONE"} <= status_names(t)
    assert "SRC_NAT" not in status_names(t)
    for f in out:
        assert_checksums(f)


def test_dnat_without_port_keeps_the_port():
    t = tracker(dnat=["10.0.0.9"])
    _, out = run(t, [tcp("198.51.100.7", GW, 5555, 443, SYN)])
    assert addrs(out[0])[1] == "10.0.0.9" and ports(out[0]) == (5555, 443)


def test_full_nat():
    client = "198.51.100.7"
    t = tracker(dnat=["10.0.0.9:8080"], snat=["10.0.0.254"])
    r, out = run(t, [tcp(client, GW, 5555, 80, SYN),
                     tcp("10.0.0.9", "10.0.0.254", 8080, 5555, SYN | ACK, 9, 1001)])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT | DNAT, TRK | EST | RPL | SNAT | DNAT]
    assert addrs(out[0]) == ("10.0.0.254", "10.0.0.9") and ports(out[0]) == (5555, 8080)
    assert addrs(out[1]) == (GW, client) and ports(out[1]) == (80, 5555)
    assert reply(t) == ("10.0.0.9", "10.0.0.254", 8080, 5555)
    assert {"SRC_NAT", "DST_NAT"} <= status_names(t)
    for f in out:
        assert_checksums(f)


def test_two_addresses_dnat_to_one_backend_clash_moves_source_port():
    # The kernel's null binding: the second connection's reply tuple would equal the first's, so
    # its source port moves (1000 is in the 600-1023 class) although no SNAT rule exists.
    rules = [NatRule(action="dnat", dst="198.51.100.1/32", to_min="10.0.0.9"),
             NatRule(action="dnat", dst="198.51.100.2/32", to_min="10.0.0.9")]
    t = tracker(rules=rules)
    r, out = run(t, [tcp("192.0.2.7", "198.51.100.1", 1000, 80, SYN),
                     tcp("192.0.2.7", "198.51.100.2", 1000, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW | DNAT, TRK | NEW | DNAT | SNAT]
    assert ports(out[0]) == (1000, 80)
    assert 600 <= ports(out[1])[0] <= 1023 and addrs(out[1]) == ("192.0.2.7", "10.0.0.9")
    assert {"SRC_NAT", "DST_NAT"} <= status_names(t, 1)
    assert t._engine.check_invariants() == []


def test_redirect_to_the_input_interface_address():
    rules = [NatRule(action="redirect", proto="tcp", dport=80, to_ports=3128)]
    t = tracker(rules=rules, interfaces={0: ["192.168.1.1", "fd00::1"]})
    r, out = run(t, [tcp(C1, SRV, 1234, 80, SYN), tcp(C1, SRV, 1234, 443, SYN)])
    assert r.ct_state.tolist() == [TRK | NEW | DNAT, TRK | NEW]
    assert addrs(out[0]) == (C1, "192.168.1.1") and ports(out[0]) == (1234, 3128)
    assert_checksums(out[0])


def test_redirect_without_an_address_drops():
    t = tracker(rules=[NatRule(action="redirect", proto="tcp")])
    r, _ = run(t, [tcp(C1, SRV, 1234, 80, SYN)])
    assert r.ct_state.tolist() == [TRK | INV]
    assert t.stats()["reasons"] == {
        "NAT: redirect or masquerade with no address of the family on the interface, packet "
        "dropped": 1}


def test_rule_matches_select_connections():
    rules = [NatRule(action="accept", stage="postrouting", dst="10.0.0.0/8"),
             NatRule(action="snat", src="10.0.0.0/24", proto="udp", to_min=GW)]
    t = tracker(rules=rules)
    r, out = run(t, [udp(C1, SRV, 5000, 53), udp(C1, "10.9.9.9", 5000, 53),
                     tcp(C1, SRV, 5000, 80, SYN), udp("10.0.1.1", SRV, 5000, 53)])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | NEW, TRK | NEW, TRK | NEW]
    assert addrs(out[0])[0] == GW and addrs(out[1])[0] == C1


# ---- protocols ----------------------------------------------------------------------------------

def test_udp_zero_checksum_stays_zero_and_nonzero_is_updated():
    t = tracker(snat=[GW])
    _, out = run(t, [udp(C1, SRV, 5353, 53, zero_sum=True), udp(C2, SRV, 5354, 53)])
    assert out[0][14 + 26:14 + 28] == b"\0\0" and addrs(out[0])[0] == GW
    assert out[1][14 + 26:14 + 28] != b"\0\0"
    for f in out:
        assert_checksums(f)


def test_icmp_echo_ids_translated_like_ports():
    t = tracker(snat=[GW])
    r, out = run(t, [echo(C1, SRV, 8, 77), echo(C2, SRV, 8, 77)])
    id1, id2 = l3(out[0]).data.data.id, l3(out[1]).data.data.id
    assert id1 == 77 and id2 != 77
    r2, out2 = run(t, [echo(SRV, GW, 0, id2), echo(SRV, GW, 0, 77)], ts=[3.0, 3.1])
    assert r2.entry.tolist() == [1, 0]
    assert r2.ct_state.tolist() == [TRK | EST | RPL | DNAT] * 2
    assert addrs(out2[0]) == (SRV, C2) and l3(out2[0]).data.data.id == 77
    assert addrs(out2[1]) == (SRV, C1)
    for f in out + out2:
        assert_checksums(f)


def test_icmp_error_quoting_a_translated_packet():
    t = tracker(snat=[GW])
    # C2 first takes port 5353 so that C1's query is moved: the quote must be translated back.
    _, out = run(t, [udp(C2, SRV, 5353, 53), udp(C1, SRV, 5353, 53)])
    moved = ports(out[1])[0]
    assert moved != 5353
    quoted = bytes(out[1][14:])                   # the query as it left the gateway, quoted whole
    r, out2 = run(t, [icmp_error(SRV, GW, quoted)], ts=[2.0])
    assert r.ct_state.tolist() == [TRK | REL | RPL | DNAT] and r.entry.tolist() == [1]
    err = l3(out2[0])
    assert socket.inet_ntop(socket.AF_INET, err.dst) == C1
    inner = dpkt.ip.IP(bytes(err.data.data.data))
    assert socket.inet_ntop(socket.AF_INET, inner.src) == C1
    assert socket.inet_ntop(socket.AF_INET, inner.dst) == SRV
    assert (inner.data.sport, inner.data.dport) == (5353, 53)
    assert_checksums(out2[0])
    # The quoted UDP checksum was updated too: the quote is the query C1 sent, byte for byte.
    assert bytes(err.data.data.data) == udp(C1, SRV, 5353, 53)[14:]


def test_icmp_error_quoting_only_eight_bytes_of_tcp():
    t = tracker(snat=[GW])
    _, out = run(t, [tcp(C2, SRV, 4000, 80, SYN), tcp(C1, SRV, 4000, 80, SYN)])
    moved = ports(out[1])[0]
    quoted = bytes(out[1][14:14 + 28])             # IP header + 8 bytes of TCP
    r, out2 = run(t, [icmp_error("192.0.2.1", GW, quoted, type_=11, code=0)], ts=[2.0])
    assert r.ct_state.tolist() == [TRK | REL | RPL | DNAT]
    err = l3(out2[0])
    q = bytes(err.data.data.data)
    assert q[12:16] == ip4(C1) and int.from_bytes(q[20:22], "big") == 4000
    assert moved != 4000
    assert_checksums(out2[0])


def test_ipv6_snat_tcp():
    t = tracker(snat=["2001:db8:ff::5"])
    r, out = run(t, [tcp("2001:db8::1", "2001:db8:1::80", 40000, 80, SYN),
                     tcp("2001:db8:1::80", "2001:db8:ff::5", 80, 40000, SYN | ACK, 5, 1001)])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | EST | RPL | DNAT]
    assert addrs(out[0]) == ("2001:db8:ff::5", "2001:db8:1::80")
    assert addrs(out[1]) == ("2001:db8:1::80", "2001:db8::1")
    for f in out:
        assert_checksums(f)
    assert reply(t) == ("2001:db8:1::80", "2001:db8:ff::5", 80, 40000)


def test_ipv6_icmp_echo_pseudo_header_updated():
    t = tracker(snat=["2001:db8:ff::5"])
    _, out = run(t, [echo("2001:db8::1", "2001:db8:1::80", 128, 9)])
    assert addrs(out[0])[0] == "2001:db8:ff::5"
    assert_checksums(out[0])


def test_sctp_ports_and_crc():
    t = tracker(snat=[GW])
    _, out = run(t, [sctp_init(C2, SRV, 3868, 3868), sctp_init(C1, SRV, 3868, 3868)])
    assert ports(out[0]) == (3868, 3868)
    assert ports(out[1])[0] != 3868 and addrs(out[1])[0] == GW
    for f in out:
        assert_checksums(f)


def test_truncated_capture_counts_not_rewritten():
    # The second association's port moves, so its CRC32c must be recomputed over the whole
    # packet, which was not captured: addresses and ports are rewritten, the packet counted.
    t = tracker(snat=[GW])
    whole = sctp_init(C1, SRV, 3868, 3868, extra=b"\0\x05\0\x08" + bytes(4))
    cut = 14 + 20 + 12 + 20
    b = batch([sctp_init(C2, SRV, 3868, 3868), whole[:cut]])
    b.wirelen[1] = len(whole)
    r = t.process(b)
    assert r.ct_state.tolist() == [TRK | NEW | SNAT] * 2
    s = t.stats()
    assert s["nat_rewritten"] == 1 and s["nat_not_rewritten"] == 1
    second = bytes(b.buf[b.offsets[1]:b.offsets[1] + cut])
    assert second[14 + 12:14 + 16] == ip4(GW) and int.from_bytes(second[34:36], "big") != 3868


# ---- notrack ------------------------------------------------------------------------------------

def test_notrack_rule_leaves_packets_untracked():
    # As in the raw table, the rules see each packet as it is: the answer needs its own rule.
    rules = [NatRule(action="notrack", proto="udp", dport=53),
             NatRule(action="notrack", proto="udp", sport=53)]
    t = tracker(rules=rules)
    r, _ = run(t, [udp(C1, SRV, 5000, 53), udp(SRV, C1, 53, 5000), udp(C1, SRV, 5000, 54)])
    assert r.ct_state.tolist() == [0, 0, TRK | NEW]
    assert r.entry.tolist() == [-1, -1, 0]
    assert len(t) == 1 and t.stats()["untracked"] == 2


def test_notrack_one_direction_only():
    t = tracker(rules=[NatRule(action="notrack", proto="udp", dport=53)])
    r, _ = run(t, [udp(C1, SRV, 5000, 53), udp(SRV, C1, 53, 5000)])
    assert r.ct_state.tolist() == [0, TRK | NEW]      # the answer starts a connection of its own


# ---- table life -------------------------------------------------------------------------------

def test_expired_nat_connections_free_their_records():
    t = tracker(snat=[GW])
    run(t, [udp(f"10.0.0.{i}", SRV, 5000, 53) for i in range(1, 21)])
    assert len(t) == 20 and len(t._engine.nat_view()) == 20
    assert t.expire(100 * 10**9) == 20
    # The freed records are used again: no new one is handed out.
    run(t, [udp(f"10.0.1.{i}", SRV, 5000, 53) for i in range(1, 21)], ts=[100.0 + i for i in range(20)])
    assert len(t) == 20 and len(t._engine.nat_view()) == 20
    assert t._engine.check_invariants() == []


def test_tcp_reopen_of_a_nat_connection():
    t = tracker(snat=[GW])
    frames = [tcp(C1, SRV, 40000, 80, SYN), tcp(SRV, GW, 80, 40000, SYN | ACK, 5000, 1001),
              tcp(C1, SRV, 40000, 80, ACK, 1001, 5001),
              tcp(C1, SRV, 40000, 80, 0x11, 1001, 5001), tcp(SRV, GW, 80, 40000, 0x11, 5001, 1002),
              tcp(C1, SRV, 40000, 80, ACK, 1002, 5002)]
    run(t, frames)
    assert t.record(0)["state_name"] == "TIME_WAIT"
    r, out = run(t, [tcp(C1, SRV, 40000, 80, SYN, seq=90000)], ts=[20.0])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT]
    assert t.record(0)["state_name"] == "SYN_SENT" and len(t) == 1
    assert addrs(out[0])[0] == GW
    assert t._engine.check_invariants() == []


def test_full_table_with_nat_keeps_invariants():
    t = tracker(snat=[f"{GW}:1024-1100"], max_conns=64)
    rng = random.Random(5)
    for round_ in range(20):
        frames = []
        for _ in range(64):
            c = f"10.0.{rng.randrange(4)}.{rng.randrange(1, 30)}"
            s = f"93.184.216.{rng.randrange(1, 4)}"
            sp = rng.randrange(1024, 1100)
            kind = rng.randrange(3)
            if kind == 0:
                frames.append(tcp(c, s, sp, 80, SYN))
            elif kind == 1:
                frames.append(udp(c, s, sp, 53))
            else:
                frames.append(tcp(s, GW, 80, rng.randrange(1024, 1101), SYN | ACK, 1, 1))
        run(t, frames, ts=[round_ * 7.0 + i * 0.01 for i in range(64)])
        assert t._engine.check_invariants() == [], round_
    assert len(t) <= 64


def test_index_grows_with_reply_slots():
    # Every connection DNAT'd: two index slots each.  The index must grow for both (it once
    # filled up at 1024 slots and lookups spun).
    t = tracker(dnat=["10.0.0.9:8080"])
    frames = [tcp(f"198.51.{i // 250}.{i % 250 + 1}", GW, 40000, 80, SYN) for i in range(3000)]
    r, _ = run(t, frames, ts=[i * 1e-3 for i in range(3000)])
    assert (r.ct_state == TRK | NEW | DNAT).all()
    assert t._engine.n_slots >= 8192 and t._engine.check_invariants() == []


def test_outputs_follow_entries_moved_within_a_batch():
    # A full table: a refused packet still makes room (the kernel allocates first), and giving the
    # room back moves the last entry.  Every output entry must still name its packet's connection.
    for sport in range(1, 400):
        t = Tracker(max_conns=3, seed=1)
        frames = [udp(f"10.0.0.{i}", SRV, 5000, 53) for i in (1, 2, 3)] + \
            [tcp("10.9.9.9", SRV, sport, 80, SYN | 0x01)]        # SYN+FIN: refused
        b = batch(frames)
        r = t.process(b)
        if t.stats()["early_drop"] and r.entry[0] == -1:
            break       # the first connection was evicted, and the last moved into its place
    else:
        pytest.fail("no early drop happened (precondition)")
    ents = t.entries()
    assert len(ents) == 2 and r.ct_state[3] == TRK | INV
    assert r.entry.tolist() == [-1, 1, 0, -1]
    for i in range(3):
        if r.entry[i] >= 0:
            assert bytes(ents[r.entry[i]]["src"][:4]) == ip4(f"10.0.0.{i + 1}")


def test_replacing_a_dead_nat_connection_by_a_refused_packet():
    # Two connections between the same endpoints, one each way, both source-NAT'd (the fuzzer's
    # find).  When the second has died and a refused packet of its tuple arrives, the dead entry
    # must not stay without its NAT: its reverse tuple is the first connection's.  (One batch, so
    # that no sweep collects the dead entry first.)
    t = tracker(snat=[GW])
    t.timeouts["tcp_timeout_syn_sent"] = 1
    r, _ = run(t, [tcp(C1, SRV, 4000, 80, SYN), tcp(SRV, GW, 80, 4000, SYN | ACK, 5000, 1001),
                   tcp(C1, SRV, 4000, 80, ACK, 1001, 5001), tcp(SRV, C1, 80, 4000, SYN, 7000),
                   tcp(SRV, C1, 80, 4000, SYN | 0x01, 7000)], ts=[0, 0.1, 0.2, 0.3, 10.0])
    assert r.ct_state.tolist() == [TRK | NEW | SNAT, TRK | EST | RPL | DNAT, TRK | EST | SNAT,
                                   TRK | NEW | SNAT, TRK | INV]        # SYN+FIN: refused
    assert t._engine.check_invariants() == []
    r, out = run(t, [tcp(C1, SRV, 4000, 80, ACK, 1001, 5001)], ts=[11.0])
    assert r.ct_state.tolist() == [TRK | EST | SNAT] and addrs(out[0])[0] == GW
