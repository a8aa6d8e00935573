#!/usr/bin/env python3
"""Deterministic generator for the small capture files used by fastct's tests.

Usage:
    python3 pcaps/make_pcaps.py                 # write captures next to this script
    python3 pcaps/make_pcaps.py --out DIR       # write captures into DIR
    python3 pcaps/make_pcaps.py --readme        # also (re)write DIR/README.md

Every file is written and then read back and checked (packet count, exact
bytes, timestamps, checksums, IP total lengths, TCP seq/ack/flags) before the
script exits; any mismatch raises an AssertionError.

Only the standard library and dpkt (1.9.8) are used.  No clock, no randomness:
running the script twice gives byte-identical files.

How the files are produced (and why dpkt's writers are not used)
----------------------------------------------------------------
* Packets are built by hand with ``struct`` (Ethernet, 802.1Q/802.1ad tags,
  IPv4, IPv6 + extension headers, TCP, UDP, ICMP, ICMPv6, ARP, LLDP), with
  all checksums computed here.  dpkt is used only to *read back and check*
  what was written, so the builder and the checker are independent code.
* Capture containers (pcap and pcapng) are written with ``struct`` too,
  because dpkt 1.9.8's writers cannot produce what is needed here:
    - ``dpkt.pcap.Writer`` writes in the *host's* byte order
      (``Writer.__le = sys.byteorder == 'little'``), so a big-endian pcap
      cannot be requested through its API, and the output would differ
      between hosts;
    - both dpkt writers take timestamps as float seconds.  At 1.7e9 s a
      float64 only resolves ~0.24 us, so nanosecond timestamps cannot be
      carried exactly (and rounding could move a microsecond);
    - ``dpkt.pcapng.Writer`` always converts timestamps to microseconds
      (``intround(ts * 1e6)``) whatever ``if_tsresol`` the IDB declares,
      cannot write Simple Packet Blocks, and ``writepkt(bytes)`` cannot pick
      an interface id.
  Timestamps are therefore kept as integer nanoseconds throughout.
* dpkt's readers are used for checking where they can be: ``dpkt.pcap.Reader``
  reads all three pcap variants; ``dpkt.pcapng.Reader`` reads the single-IDB
  pcapng file.  For multi_iface.pcapng it is only partly usable (it applies
  the first IDB's timestamp resolution to every EPB and silently skips SPBs),
  so that file is checked with the small struct reader below
  (``read_capture``), which is also run on every other file.

Conventions (see README.md for the packet-by-packet tables)
----------------------------------------------------------
* Timestamps start at 1700000000.000000 and advance 0.010 s per packet
  unless a file says otherwise.
* MAC 02:00:00:00:00:01 is the "inside" side (192.168.0.x, 2001:db8::1),
  MAC 02:00:00:00:00:02 the "outside" side (10.0.0.x, 8.8.x.x, 2001:db8::2).
* IPv4: IHL 5 (no options), TOS 0, flags DF, fragment offset 0, TTL 64,
  id = 0x1000 + (1-based number of the packet in the file that defines it);
  packets copied into another file keep their IP bytes (and so their id).
* IPv6: traffic class 0, flow label 0, hop limit 64.
* Frames are NOT padded to the 60-byte Ethernet minimum, so for untagged
  frames frame length = 14 + IP total length (+4 per VLAN tag).
* pcap: version 2.4, thiszone 0, sigfigs 0, snaplen 65535, linktype 1.
"""

import argparse
import hashlib
import io
import os
import struct
import sys

import dpkt

# ---------------------------------------------------------------------------
# constants

T0_NS = 1_700_000_000 * 1_000_000_000
STEP_NS = 10_000_000          # 0.010 s
MS = 1_000_000                # 1 ms in ns

MAC_IN = bytes.fromhex("020000000001")
MAC_OUT = bytes.fromhex("020000000002")
MAC_BCAST = b"\xff" * 6
MAC_LLDP = bytes.fromhex("0180c200000e")

ETH_IP4, ETH_IP6, ETH_ARP = 0x0800, 0x86DD, 0x0806
ETH_8021Q, ETH_8021AD, ETH_LLDP = 0x8100, 0x88A8, 0x88CC
LINKTYPE_ETHERNET, LINKTYPE_RAW = 1, 101
SNAPLEN = 65535

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
FLAG_NAMES = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "A"))

# TCP options used on the SYN / SYN-ACK of tcp_data_transfer: MSS 1460, NOP, WS 7
OPTS_MSS_WS7 = struct.pack("!BBH", 2, 4, 1460) + b"\x01" + struct.pack("!BBB", 3, 3, 7)


# ---------------------------------------------------------------------------
# checksums and headers


def ones_sum(data):
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data):
    return (~ones_sum(data)) & 0xFFFF


def ip4(s):
    return bytes(int(x) for x in s.split("."))


def ip6(s):
    import ipaddress
    return ipaddress.IPv6Address(s).packed


def pseudo_header(fam, src, dst, proto, length):
    if fam == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def build_ipv4(src, dst, proto, payload, ident):
    total = 20 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, 64, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def build_ipv6(src, dst, next_header, payload):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, src, dst) + payload


def build_tcp(fam, src, dst, sport, dport, seq, ack, flags, win, opts=b"", payload=b""):
    assert len(opts) % 4 == 0
    off = (20 + len(opts)) // 4
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, win, 0, 0) + opts + payload
    c = checksum(pseudo_header(fam, src, dst, 6, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def build_udp(fam, src, dst, sport, dport, payload):
    length = 8 + len(payload)
    dg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    c = checksum(pseudo_header(fam, src, dst, 17, length) + dg) or 0xFFFF
    return dg[:6] + struct.pack("!H", c) + dg[8:]


def build_icmp_echo(icmp_type, ident, seqno, data):
    msg = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seqno) + data
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def build_icmp6_echo(src, dst, icmp_type, ident, seqno, data):
    msg = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seqno) + data
    c = checksum(pseudo_header(6, src, dst, 58, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", c) + msg[4:]


def build_ether(dst, src, ethertype, payload, tags=()):
    """tags: sequence of (tpid, vid), outermost first."""
    out = dst + src
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid & 0x0FFF)   # PCP 0, DEI 0
    return out + struct.pack("!H", ethertype) + payload


def fill(tag, n):
    """Deterministic payload of n bytes: tag repeated."""
    return (tag * (n // len(tag) + 1))[:n]


PING_DATA = bytes(range(0x10, 0x10 + 56))   # 56 bytes, like ping's default size


# ---------------------------------------------------------------------------
# packet record


class Pkt:
    """One captured frame plus what the README/checker needs to know about it."""

    def __init__(self, frame, info, ts_ns=None, linktype=LINKTYPE_ETHERNET):
        self.frame = frame          # bytes as stored in the capture
        self.info = info            # dict, see the flow helpers below
        self.ts_ns = ts_ns          # absolute timestamp in ns (None for SPB)
        self.linktype = linktype

    def at(self, ts_ns):
        return Pkt(self.frame, dict(self.info), ts_ns, self.linktype)

    def retagged(self, frame, linktype, extra=None):
        info = dict(self.info)
        if extra:
            info.update(extra)
        return Pkt(frame, info, self.ts_ns, linktype)


class Flow:
    """Both endpoints of a flow; 'a' is the originator (first packet's sender)."""

    def __init__(self, fam, proto, a_ip, a_port, b_ip, b_port):
        self.fam, self.proto = fam, proto
        self.a_ip, self.a_port, self.b_ip, self.b_port = a_ip, a_port, b_ip, b_port
        pack = ip4 if fam == 4 else ip6
        self.a, self.b = pack(a_ip), pack(b_ip)

    def ends(self, direction):
        if direction == "orig":
            return (self.a, self.b, self.a_port, self.b_port, MAC_IN, MAC_OUT,
                    self.a_ip, self.b_ip)
        return (self.b, self.a, self.b_port, self.a_port, MAC_OUT, MAC_IN,
                self.b_ip, self.a_ip)

    def name(self):
        pname = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}[self.proto]
        if self.proto in (1, 58):
            return "%s %s <-> %s id=0x%04x" % (pname, self.a_ip, self.b_ip, self.a_port)
        fmt = "%s %s:%d <-> %s:%d" if self.fam == 4 else "%s [%s]:%d <-> [%s]:%d"
        return fmt % (pname, self.a_ip, self.a_port, self.b_ip, self.b_port)


def ep_str(fam, ip, port):
    return ("%s:%d" if fam == 4 else "[%s]:%d") % (ip, port)


def flag_str(flags):
    return "[" + "".join(n for bit, n in FLAG_NAMES if flags & bit) + "]"


def l3_wrap(flow, direction, l4, ident, ext=b"", first_nh=None):
    src, dst, _, _, smac, dmac, _, _ = flow.ends(direction)
    if flow.fam == 4:
        ip = build_ipv4(src, dst, flow.proto, l4, ident)
        return build_ether(dmac, smac, ETH_IP4, ip), ip
    ip = build_ipv6(src, dst, first_nh if ext else flow.proto, ext + l4)
    return build_ether(dmac, smac, ETH_IP6, ip), ip


def tcp_pkt(flow, direction, flags, seq, ack, ident=0, win=65535, opts=b"", payload=b""):
    src, dst, sport, dport, _, _, sip, dip = flow.ends(direction)
    seg = build_tcp(flow.fam, src, dst, sport, dport, seq, ack, flags, win, opts, payload)
    frame, ip = l3_wrap(flow, direction, seg, ident)
    summary = "%s > %s TCP %s seq=%d ack=%d win=%d%s len=%d" % (
        ep_str(flow.fam, sip, sport), ep_str(flow.fam, dip, dport), flag_str(flags), seq, ack,
        win, " opts=MSS1460,NOP,WS7" if opts == OPTS_MSS_WS7 else (" opts=%d B" % len(opts) if opts else ""),
        len(payload))
    return Pkt(frame, dict(flow=flow.name(), dir=direction, ip_len=len(ip), ip_id=ident if flow.fam == 4 else None,
                           l3=flow.fam, l4=6, tcp=(flags, seq, ack, win, len(payload)), summary=summary))


def udp_pkt(flow, direction, payload, ident=0, ext=b"", first_nh=None, ext_desc=""):
    if flow.b_port == 53 and len(payload) >= 12:
        qid, fl, qd, an = struct.unpack("!HHHH", payload[:8])
        note = " (DNS %s id=%d%s)" % ("response" if fl & 0x8000 else "query", qid,
                                     ", %d answer" % an if an else (", no question" if not qd else ""))
    else:
        note = ""
    src, dst, sport, dport, _, _, sip, dip = flow.ends(direction)
    dg = build_udp(flow.fam, src, dst, sport, dport, payload)
    frame, ip = l3_wrap(flow, direction, dg, ident, ext, first_nh)
    summary = "%s > %s %sUDP len=%d%s" % (ep_str(flow.fam, sip, sport), ep_str(flow.fam, dip, dport),
                                           ext_desc, len(payload), note)
    return Pkt(frame, dict(flow=flow.name(), dir=direction, ip_len=len(ip), ip_id=ident if flow.fam == 4 else None,
                           l3=flow.fam, l4=17, udp=(sport, dport, len(payload)), summary=summary))


def echo_pkt(flow, direction, is_request, seqno, data=PING_DATA, ident=0, note=""):
    src, dst, _, _, _, _, sip, dip = flow.ends(direction)
    if flow.fam == 4:
        msg = build_icmp_echo(8 if is_request else 0, flow.a_port, seqno, data)
        kind = "ICMP"
    else:
        msg = build_icmp6_echo(src, dst, 128 if is_request else 129, flow.a_port, seqno, data)
        kind = "ICMPv6"
    frame, ip = l3_wrap(flow, direction, msg, ident)
    summary = "%s > %s %s echo-%s id=0x%04x seq=%d data=%d%s" % (
        sip, dip, kind, "request" if is_request else "reply", flow.a_port, seqno, len(data), note)
    return Pkt(frame, dict(flow=flow.name(), dir=direction, ip_len=len(ip), ip_id=ident if flow.fam == 4 else None,
                           l3=flow.fam, l4=flow.proto, icmp=(is_request, flow.a_port, seqno), summary=summary))


def stamp(pkts, start_ns=T0_NS, step_ns=STEP_NS):
    return [p.at(start_ns + i * step_ns) for i, p in enumerate(pkts)]


# ---------------------------------------------------------------------------
# the captures' contents


def tcp_basic(flow, syn_seq=100, srv_seq=200, ident_base=0x1000):
    """File 1 (and the TCP part of file 6): the OVS conntrack tutorial handshake
    plus a FIN/ACK, FIN/ACK, ACK teardown; window 65535, no options, no data."""
    c, s = syn_seq, srv_seq
    spec = [
        ("orig", SYN, c, 0),
        ("reply", SYN | ACK, s, c + 1),
        ("orig", ACK, c + 1, s + 1),
        ("orig", FIN | ACK, c + 1, s + 1),
        ("reply", FIN | ACK, s + 1, c + 2),
        ("orig", ACK, c + 2, s + 2),
    ]
    return [tcp_pkt(flow, d, f, sq, ak, ident=(ident_base + i + 1) if flow.fam == 4 else 0)
            for i, (d, f, sq, ak) in enumerate(spec)]


FLOW1 = Flow(4, 6, "192.168.0.2", 1024, "10.0.0.2", 2048)


def file1():
    return stamp(tcp_basic(FLOW1))


def file2():
    # The handshake of file 1, then the server's FIN/ACK acking 102 before the client's FIN was
    # seen: the client has sent nothing past seq 101, so the Linux kernel finds the ACK "over the
    # upper bound" (ACKed data not seen yet) and marks the packet invalid, where Open vSwitch's
    # userspace conntrack accepts it.
    pkts = tcp_basic(FLOW1)[:3]
    pkts.append(tcp_pkt(FLOW1, "reply", FIN | ACK, 201, 102, ident=0x2004))
    return stamp(pkts)


FLOW3 = Flow(4, 6, "192.168.0.2", 40000, "10.0.0.2", 80)


def file3():
    c, s = 1000, 5000        # ISNs
    req, resp = fill(b"GET-fastct-request;", 100), fill(b"fastct-response-body;", 1000)
    spec = [  # dir, flags, seq, ack, win, opts, payload
        ("orig", SYN, c, 0, 64240, OPTS_MSS_WS7, b""),
        ("reply", SYN | ACK, s, c + 1, 65160, OPTS_MSS_WS7, b""),
        ("orig", ACK, c + 1, s + 1, 502, b"", b""),
        ("orig", PSH | ACK, c + 1, s + 1, 502, b"", req),
        ("reply", ACK, s + 1, c + 101, 509, b"", b""),
        ("reply", PSH | ACK, s + 1, c + 101, 509, b"", resp),
        ("orig", ACK, c + 101, s + 1001, 494, b"", b""),
        ("orig", FIN | ACK, c + 101, s + 1001, 494, b"", b""),
        ("reply", FIN | ACK, s + 1001, c + 102, 509, b"", b""),
        ("orig", ACK, c + 102, s + 1002, 494, b"", b""),
    ]
    return stamp([tcp_pkt(FLOW3, d, f, sq, ak, ident=0x1000 + i + 1, win=w, opts=o, payload=p)
                  for i, (d, f, sq, ak, w, o, p) in enumerate(spec)])


FLOW4 = Flow(4, 17, "192.168.0.2", 5353, "10.0.0.2", 53)
FLOW4B = Flow(4, 17, "192.168.0.2", 6000, "10.0.0.3", 7000)
UDP_ONEWAY = fill(b"oneway", 10)

# The port-53 payloads are well-formed DNS messages (so Wireshark & co. do not
# flag them as malformed) of exactly the sizes the tests rely on:
#   query  (20 B) = 12 B header + QNAME "ct" (4 B) + QTYPE TXT + QCLASS IN
#   answer (40 B) = query + RR: ptr c00c, TXT, IN, TTL 60, RDLEN 8, "\x07fastct!"
_DNS_QUESTION = b"\x02ct\x00" + struct.pack("!HH", 16, 1)


def dns_query(qid):
    msg = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _DNS_QUESTION
    assert len(msg) == 20
    return msg


def dns_answer(qid):
    rr = struct.pack("!HHHIH", 0xC00C, 16, 1, 60, 8) + b"\x07fastct!"
    msg = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + _DNS_QUESTION + rr
    assert len(msg) == 40
    return msg


def file4():
    return [
        udp_pkt(FLOW4, "orig", dns_query(1), ident=0x1001).at(T0_NS),
        udp_pkt(FLOW4, "reply", dns_answer(1), ident=0x1002).at(T0_NS + 500 * MS),
        udp_pkt(FLOW4B, "orig", UDP_ONEWAY, ident=0x1003).at(T0_NS + 1000 * MS),
        udp_pkt(FLOW4, "orig", dns_query(2), ident=0x1004).at(T0_NS + 3000 * MS),
        udp_pkt(FLOW4, "reply", dns_answer(2), ident=0x1005).at(T0_NS + 3100 * MS),
    ]


FLOW5 = Flow(4, 1, "192.168.0.2", 0x1234, "8.8.8.8", 0x1234)
FLOW5B = Flow(4, 1, "8.8.4.4", 0x9999, "192.168.0.2", 0x9999)


def file5():
    orphan = echo_pkt(FLOW5B, "orig", False, 1, ident=0x1005, note=" (no request)")
    # 8.8.4.4 is on the "outside": fix the MACs of this one frame.
    orphan.frame = MAC_IN + MAC_OUT + orphan.frame[12:]
    return stamp([
        echo_pkt(FLOW5, "orig", True, 1, ident=0x1001),
        echo_pkt(FLOW5, "reply", False, 1, ident=0x1002),
        echo_pkt(FLOW5, "orig", True, 2, ident=0x1003),
        echo_pkt(FLOW5, "reply", False, 2, ident=0x1004),
        orphan,
    ])


FLOW6T = Flow(6, 6, "2001:db8::1", 1024, "2001:db8::2", 80)
FLOW6U = Flow(6, 17, "2001:db8::1", 5000, "2001:db8::2", 53)
FLOW6I = Flow(6, 58, "2001:db8::1", 7, "2001:db8::2", 7)
FLOW6X = Flow(6, 17, "2001:db8::1", 5001, "2001:db8::2", 53)

# Hop-by-Hop (next header 60 = Destination Options), Hdr Ext Len 0 (= 8 bytes),
# one PadN option (type 1, length 4, 4 zero bytes).
EXT_HBH = struct.pack("!BBBB4x", 60, 0, 1, 4)
# Destination Options (next header 17 = UDP), 8 bytes, one PadN option.
EXT_DST = struct.pack("!BBBB4x", 17, 0, 1, 4)


def file6():
    pkts = tcp_basic(FLOW6T)
    pkts += [udp_pkt(FLOW6U, "orig", dns_query(4)), udp_pkt(FLOW6U, "reply", dns_answer(4))]
    pkts += [echo_pkt(FLOW6I, "orig", True, 1), echo_pkt(FLOW6I, "reply", False, 1)]
    # payload: a bare 12-byte DNS header (id 5, RD, all counts 0)
    empty_dns = struct.pack("!HHHHHH", 5, 0x0100, 0, 0, 0, 0)
    pkts.append(udp_pkt(FLOW6X, "orig", empty_dns, ext=EXT_HBH + EXT_DST, first_nh=0,
                        ext_desc="HBH(8,PadN) DST(8,PadN) "))
    return stamp(pkts)


FLOW7Q = Flow(4, 17, "192.168.0.2", 5354, "10.0.0.2", 53)


def arp_request():
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IP4, 6, 4, 1, MAC_IN, ip4("192.168.0.2"),
                      b"\x00" * 6, ip4("192.168.0.1"))
    return Pkt(build_ether(MAC_BCAST, MAC_IN, ETH_ARP, arp),
               dict(flow=None, dir="-", ip_len=None, ip_id=None, l3=None,
                    summary="ARP request who-has 192.168.0.1 tell 192.168.0.2 (28 B, not IP)"))


def lldp_frame():
    def tlv(t, value):
        return struct.pack("!H", (t << 9) | len(value)) + value
    body = (tlv(1, b"\x04" + MAC_OUT)           # Chassis ID, subtype 4 = MAC address
            + tlv(2, b"\x07" + b"eth0")          # Port ID, subtype 7 = locally assigned
            + tlv(3, struct.pack("!H", 120))     # TTL 120 s
            + tlv(0, b""))                       # End of LLDPDU
    return Pkt(build_ether(MAC_LLDP, MAC_OUT, ETH_LLDP, body),
               dict(flow=None, dir="-", ip_len=None, ip_id=None, l3=None,
                    summary="LLDP chassis=MAC 02:00:00:00:00:02 port=eth0 ttl=120 (%d B, not IP)" % len(body)))


def vlanize(pkt, tags, label):
    f = pkt.frame
    assert f[12:14] == struct.pack("!H", ETH_IP4)
    new = build_ether(f[0:6], f[6:12], ETH_IP4, f[14:], tags)
    info = dict(pkt.info)
    info["summary"] = label + " " + info["summary"]
    info["tags"] = tags
    return Pkt(new, info, pkt.ts_ns, pkt.linktype)


def file7():
    f4 = file4()
    pkts = [
        vlanize(f4[0], [(ETH_8021Q, 100)], "802.1Q vid=100"),
        vlanize(f4[1], [(ETH_8021Q, 100)], "802.1Q vid=100"),
        vlanize(udp_pkt(FLOW7Q, "orig", dns_query(3), ident=0x1003), [(ETH_8021AD, 200), (ETH_8021Q, 300)],
                "802.1ad vid=200 / 802.1Q vid=300"),
        vlanize(udp_pkt(FLOW7Q, "reply", dns_answer(3), ident=0x1004), [(ETH_8021AD, 200), (ETH_8021Q, 300)],
                "802.1ad vid=200 / 802.1Q vid=300"),
        arp_request(),
        lldp_frame(),
    ]
    return stamp(pkts)


SCAN_FLOWS = [Flow(4, 6, "192.168.0.9", 50000 + k, "10.0.0.9", 443) for k in (1, 2, 3)]

# start offsets (ns after T0) of each source capture inside mixed_demo.pcap;
# each source keeps its own internal timing (so file 4's 0.5/1.0/3.0/3.1 s
# spacing -- and hence the >2 s UDP "stream" rule -- is preserved).
MIXED_OFFSETS = [("f1", file1, 0), ("f4", file4, 5 * MS), ("f5", file5, 25 * MS),
                 ("f3", file3, 103 * MS), ("f6", file6, 207 * MS)]
SCAN_TIMES = [157 * MS, 167 * MS, 177 * MS]


def file8():
    merged = []
    order = 0
    for label, fn, off in MIXED_OFFSETS:
        for i, p in enumerate(fn()):
            q = p.at(p.ts_ns + off)
            q.info["src"] = "%s#%d" % (label, i + 1)
            merged.append((q.ts_ns, order, q))
            order += 1
    for k, (flow, t) in enumerate(zip(SCAN_FLOWS, SCAN_TIMES)):
        q = tcp_pkt(flow, "orig", SYN, 7001 + k, 0, ident=0x5001 + k).at(T0_NS + t)
        q.info["src"] = "scan#%d" % (k + 1)
        merged.append((q.ts_ns, order, q))
        order += 1
    merged.sort(key=lambda x: (x[0], x[1]))
    stamps = [m[0] for m in merged]
    assert len(set(stamps)) == len(stamps), "mixed_demo timestamps must be unique"
    return [m[2] for m in merged]


def multi_iface():
    """file 4 with requests on interface 0 (Ethernet, us) and replies on
    interface 1 (raw IPv4, ns), then an SPB with file 5's first echo request."""
    out = []
    for p in file4():
        if p.info["dir"] == "orig":
            out.append(p.retagged(p.frame, LINKTYPE_ETHERNET, {"iface": 0}))
        else:
            out.append(p.retagged(p.frame[14:], LINKTYPE_RAW, {"iface": 1}))
    spb = file5()[0]
    out.append(Pkt(spb.frame, dict(spb.info, iface=0, spb=True), None, LINKTYPE_ETHERNET))
    return out


# ---------------------------------------------------------------------------
# container writers (struct; see module docstring for why not dpkt's writers)


def pcap_bytes(pkts, endian="<", nano=False, linktype=LINKTYPE_ETHERNET):
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    div = 1 if nano else 1000
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, SNAPLEN, linktype)]
    for p in pkts:
        assert p.linktype == linktype
        sec, frac = divmod(p.ts_ns, 1_000_000_000)
        assert frac % div == 0, "timestamp not representable"
        n = len(p.frame)
        out.append(struct.pack(endian + "IIII", sec, frac // div, n, n) + p.frame)
    return b"".join(out)


def _pad4(b):
    return b + b"\x00" * (-len(b) % 4)


def ng_options(opts):
    """opts: list of (code, bytes). Terminated with opt_endofopt."""
    if not opts:
        return b""
    out = b"".join(struct.pack("<HH", c, len(v)) + _pad4(v) for c, v in opts)
    return out + struct.pack("<HH", 0, 0)


def ng_block(btype, body):
    total = 12 + len(body)
    assert total % 4 == 0
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def ng_shb():
    body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
    body += ng_options([(4, b"fastct pcaps/make_pcaps.py")])       # shb_userappl
    return ng_block(0x0A0D0D0A, body)


def ng_idb(linktype, name, tsresol=None):
    opts = [(2, name.encode())]                                     # if_name
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))                          # if_tsresol
    return ng_block(1, struct.pack("<HHI", linktype, 0, SNAPLEN) + ng_options(opts))


def ng_epb(iface, ts_units, data):
    body = struct.pack("<IIIII", iface, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
    return ng_block(6, body + _pad4(data))


def ng_spb(data):
    return ng_block(3, struct.pack("<I", len(data)) + _pad4(data))


def pcapng_single(pkts):
    out = [ng_shb(), ng_idb(LINKTYPE_ETHERNET, "eth0", tsresol=9)]
    out += [ng_epb(0, p.ts_ns, p.frame) for p in pkts]
    return b"".join(out)


def pcapng_multi(pkts):
    out = [ng_shb(), ng_idb(LINKTYPE_ETHERNET, "eth0"), ng_idb(LINKTYPE_RAW, "tun0", tsresol=9)]
    for p in pkts:
        if p.info.get("spb"):
            out.append(ng_spb(p.frame))
        elif p.info["iface"] == 0:
            assert p.ts_ns % 1000 == 0
            out.append(ng_epb(0, p.ts_ns // 1000, p.frame))     # default resolution: us
        else:
            out.append(ng_epb(1, p.ts_ns, p.frame))             # if_tsresol=9: ns
    return b"".join(out)


# ---------------------------------------------------------------------------
# independent struct reader (used for verification)


def read_capture(data):
    """Return list of (ts_ns or None, linktype, iface, frame)."""
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        return _read_pcapng(data)
    magic_le = struct.unpack("<I", data[:4])[0]
    if magic_le in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    elif struct.unpack(">I", data[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D):
        e = ">"
    else:
        raise ValueError("unknown magic")
    magic, vmaj, vmin, _, _, snaplen, linktype = struct.unpack(e + "IHHiIII", data[:24])
    assert (vmaj, vmin) == (2, 4)
    mult = 1 if magic == 0xA1B23C4D else 1000
    out, off = [], 24
    while off < len(data):
        sec, frac, caplen, wirelen = struct.unpack(e + "IIII", data[off:off + 16])
        assert caplen == wirelen and frac < 1_000_000_000 // mult
        out.append((sec * 1_000_000_000 + frac * mult, linktype, 0, data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    assert off == len(data)
    return out


def _parse_opts(buf):
    opts, off = {}, 0
    while off + 4 <= len(buf):
        code, ln = struct.unpack("<HH", buf[off:off + 4])
        if code == 0:
            break
        opts[code] = buf[off + 4:off + 4 + ln]
        off += 4 + ln + (-ln % 4)
    return opts


def _read_pcapng(data):
    out, ifaces, off = [], [], 0
    while off < len(data):
        btype, blen = struct.unpack("<II", data[off:off + 8])
        assert blen % 4 == 0 and struct.unpack("<I", data[off + blen - 4:off + blen])[0] == blen
        body = data[off + 8:off + blen - 4]
        if btype == 0x0A0D0D0A:
            assert struct.unpack("<IHH", body[:8]) == (0x1A2B3C4D, 1, 0)
        elif btype == 1:
            linktype, _, snaplen = struct.unpack("<HHI", body[:8])
            opts = _parse_opts(body[8:])
            res = opts.get(9, b"\x06")[0]
            assert res & 0x80 == 0
            ifaces.append((linktype, snaplen, 10 ** (9 - res), opts))
        elif btype == 6:
            iface, hi, lo, caplen, origlen = struct.unpack("<IIIII", body[:20])
            assert caplen == origlen
            out.append((((hi << 32) | lo) * ifaces[iface][2], ifaces[iface][0], iface, body[20:20 + caplen]))
        elif btype == 3:
            origlen = struct.unpack("<I", body[:4])[0]
            caplen = min(origlen, ifaces[0][1] or origlen)
            out.append((None, ifaces[0][0], 0, body[4:4 + caplen]))
        else:
            raise AssertionError("unexpected block type %#x" % btype)
        off += blen
    return out


# ---------------------------------------------------------------------------
# verification with dpkt


def _cksum_ok(data):
    return dpkt.dpkt.in_cksum(data) == 0


def check_l3(p, frame, linktype):
    """Parse with dpkt and check lengths, checksums and TCP/UDP/ICMP fields."""
    info = p.info
    if linktype == LINKTYPE_RAW:
        raw = frame
        ip = dpkt.ip.IP(raw) if raw[0] >> 4 == 4 else dpkt.ip6.IP6(raw)
    else:
        eth = dpkt.ethernet.Ethernet(frame)
        if info.get("l3") is None:
            assert eth.type in (ETH_ARP, ETH_LLDP), eth.type
            if eth.type == ETH_ARP:
                assert isinstance(eth.data, dpkt.arp.ARP) and eth.data.op == 1
            return
        tags = info.get("tags", [])
        if tags:
            # VIDs as dpkt decodes them; TPIDs straight from the bytes
            # (dpkt keeps each tag's *following* ethertype in .type)
            assert [t.id for t in eth.vlan_tags] == [vid for _, vid in tags]
            for k, (tpid, vid) in enumerate(tags):
                assert struct.unpack("!HH", frame[12 + 4 * k:16 + 4 * k]) == (tpid, vid)
            assert struct.unpack("!H", frame[12 + 4 * len(tags):14 + 4 * len(tags)])[0] == ETH_IP4
        ip = eth.data
        hdr_len = 14 + 4 * len(tags)
        raw = frame[hdr_len:]
        assert len(raw) == info["ip_len"]
    if info["l3"] == 4:
        assert isinstance(ip, dpkt.ip.IP)
        assert ip.len == info["ip_len"] == len(raw) and ip.ttl == 64 and ip.id == info["ip_id"]
        assert ip.df == 1 and ip.mf == 0 and ip.offset == 0 and ip.hl == 5
        assert _cksum_ok(raw[:20]), "IPv4 header checksum"
        pseudo = raw[12:20] + struct.pack("!BBH", 0, ip.p, len(raw) - 20)
        l4raw = raw[20:]
    else:
        assert isinstance(ip, dpkt.ip6.IP6)
        assert 40 + ip.plen == info["ip_len"] == len(raw) and ip.hlim == 64
        l4raw = bytes(ip.data)
        pseudo = raw[8:40] + struct.pack("!I3xB", len(l4raw), ip.p)
        if info.get("udp") and info["udp"][0] == 5001:
            assert ip.nxt == 0 and ip.p == 17
            assert ip.extension_hdrs[dpkt.ip.IP_PROTO_HOPOPTS] is not None
            assert ip.extension_hdrs[dpkt.ip.IP_PROTO_DSTOPTS] is not None
            assert len(raw) - len(l4raw) == 40 + 16
    assert ip.p == info["l4"], (ip.p, info)
    l4 = ip.data
    if ip.p in (6, 17) or (ip.p == 58):
        assert _cksum_ok(pseudo + l4raw), "L4 checksum (%s)" % info["summary"]
    else:
        assert _cksum_ok(l4raw), "ICMP checksum"
    if ip.p == 6:
        flags, seq, ack, win, plen = info["tcp"]
        assert (l4.flags, l4.seq, l4.ack, l4.win, len(l4.data)) == (flags, seq, ack, win, plen), info["summary"]
    elif ip.p == 17:
        sport, dport, plen = info["udp"]
        assert (l4.sport, l4.dport, l4.ulen, len(l4.data)) == (sport, dport, 8 + plen, plen)
    else:
        is_req, ident, seqno = info["icmp"]
        want_type = (8 if is_req else 0) if ip.p == 1 else (128 if is_req else 129)
        assert l4.type == want_type
        echo = l4.data
        assert (echo.id, echo.seq) == (ident, seqno)
    # independent re-serialisation by dpkt with the checksums zeroed must
    # reproduce the same bytes (dpkt recomputes them).
    if info["l3"] == 4 and ip.p in (6, 17, 1):
        ip2 = dpkt.ip.IP(raw)
        ip2.sum = 0
        ip2.data.sum = 0
        assert bytes(ip2) == raw, "dpkt recomputed checksums differ: %s" % info["summary"]


def verify(path, pkts, kind):
    with open(path, "rb") as fh:
        data = fh.read()
    recs = read_capture(data)
    assert len(recs) == len(pkts), (path, len(recs), len(pkts))
    for (ts, lt, iface, frame), p in zip(recs, pkts):
        assert frame == p.frame and lt == p.linktype
        assert ts == p.ts_ns, (path, ts, p.ts_ns)
        assert iface == p.info.get("iface", 0)
        check_l3(p, frame, lt)
    # dpkt's own readers
    if kind == "pcap":
        rd = dpkt.pcap.Reader(io.BytesIO(data))
        got = list(rd)
        assert rd.datalink() == LINKTYPE_ETHERNET and len(got) == len(pkts)
        for (ts, buf), p in zip(got, pkts):
            assert buf == p.frame
            assert abs(float(ts) - p.ts_ns / 1e9) < 1e-6
    elif kind == "pcapng":
        rd = dpkt.pcapng.Reader(io.BytesIO(data))
        got = list(rd)
        assert len(got) == len(pkts)
        assert rd.idb.linktype == LINKTYPE_ETHERNET
        for (ts, buf), p in zip(got, pkts):
            assert buf == p.frame and abs(ts - p.ts_ns / 1e9) < 1e-6
    elif kind == "pcapng-multi":
        # dpkt skips the SPB and applies IDB 0's resolution (us) to every EPB,
        # so only the EPB count and bytes can be compared.
        got = list(dpkt.pcapng.Reader(io.BytesIO(data)))
        epbs = [p for p in pkts if not p.info.get("spb")]
        assert len(got) == len(epbs)
        assert [b for _, b in got] == [p.frame for p in epbs]
    return len(recs)


# ---------------------------------------------------------------------------
# README tables


def md_table(pkts, show_src=False, show_iface=False):
    t0 = T0_NS
    head = ["#", "t offset (s)"] + (["from"] if show_src else []) + (["if"] if show_iface else []) + \
        ["dir", "summary", "IP len", "IP id", "frame len"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for i, p in enumerate(pkts):
        inf = p.info
        ts = "n/a (SPB)" if p.ts_ns is None else "%.6f" % ((p.ts_ns - t0) / 1e9)
        row = [str(i + 1), ts]
        if show_src:
            row.append(inf.get("src", ""))
        if show_iface:
            row.append(str(inf.get("iface", 0)))
        row += [inf["dir"], inf["summary"],
                "-" if inf["ip_len"] is None else str(inf["ip_len"]),
                "-" if inf["ip_id"] is None else "0x%04x" % inf["ip_id"],
                str(len(p.frame))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def flow_totals(pkts):
    flows = {}
    for p in pkts:
        inf = p.info
        if inf.get("flow") is None:
            continue
        f = flows.setdefault(inf["flow"], {"orig": [0, 0], "reply": [0, 0]})
        f[inf["dir"]][0] += 1
        f[inf["dir"]][1] += inf["ip_len"]
    lines = ["| flow (originator first) | orig pkts | orig bytes | reply pkts | reply bytes |",
             "|---|---|---|---|---|"]
    for name, f in flows.items():
        lines.append("| %s | %d | %d | %d | %d |" % (name, f["orig"][0], f["orig"][1], f["reply"][0], f["reply"][1]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def build_all():
    """Return [(filename, bytes, pkts, kind)] in a fixed order."""
    f1 = file1()
    mi = multi_iface()
    return [
        ("tcp_handshake_teardown.pcap", pcap_bytes(f1), f1, "pcap"),
        ("tcp_ovs_variant_ack102.pcap", None, file2(), "pcap"),
        ("tcp_data_transfer.pcap", None, file3(), "pcap"),
        ("udp_exchange.pcap", None, file4(), "pcap"),
        ("icmp_echo.pcap", None, file5(), "pcap"),
        ("ipv6_mixed.pcap", None, file6(), "pcap"),
        ("vlan_qinq.pcap", None, file7(), "pcap"),
        ("mixed_demo.pcap", None, file8(), "pcap"),
        ("tcp_handshake_teardown.nsec.pcap", pcap_bytes(f1, nano=True), f1, "pcap"),
        ("tcp_handshake_teardown.be.pcap", pcap_bytes(f1, endian=">"), f1, "pcap"),
        ("tcp_handshake_teardown.pcapng", pcapng_single(f1), f1, "pcapng"),
        ("multi_iface.pcapng", pcapng_multi(mi), mi, "pcapng-multi"),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                    help="output directory (default: the script's directory)")
    ap.add_argument("--readme", action="store_true", help="also write OUT/README.md")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    results = []
    for name, data, pkts, kind in build_all():
        if data is None:
            data = pcap_bytes(pkts)
        path = os.path.join(args.out, name)
        with open(path, "wb") as fh:
            fh.write(data)
        n = verify(path, pkts, kind)
        results.append((name, n, len(data), hashlib.sha256(data).hexdigest(), pkts))
        print("%-36s %3d packets %6d bytes sha256=%s" % (name, n, len(data), results[-1][3][:16]))
    total = sum(r[2] for r in results)
    assert total < 200 * 1024, total
    print("total %d bytes" % total)
    if args.readme:
        with open(os.path.join(args.out, "README.md"), "w") as fh:
            fh.write(render_readme(results))
        print("wrote README.md")
    return 0


# ---------------------------------------------------------------------------
# README text

README_HEAD = """\
# Test captures (`pcaps/`)

Generated by `make_pcaps.py` (python3 + dpkt 1.9.8, deterministic: running it
twice gives byte-identical files).  Regenerate with

    python3 pcaps/make_pcaps.py --readme        # captures + this README
    python3 pcaps/make_pcaps.py --out /tmp/x    # captures only, elsewhere

The script reads every file back (its own struct reader plus dpkt's readers),
checks packet counts, timestamps, bytes, checksums, IP lengths and TCP fields,
and fails loudly on any mismatch.  **Do not edit this README's tables by
hand; they are generated from the same data as the captures.**

## Conventions

* Base time `t0` = 1700000000.000000 (2023-11-14 22:13:20 UTC).  "t offset" is
  seconds after t0.  Unless a file says otherwise packets are 0.010 s apart.
* "IP len" is what the kernel counts as bytes: IPv4 total length, IPv6
  40 + payload length (extension headers included).  Per-flow byte counters
  are sums of this column.  "frame len" is the captured frame length
  (14-byte Ethernet header + 4 per VLAN tag + IP len; raw-IP records in
  `multi_iface.pcapng` have frame len = IP len).  Frames are **not** padded
  to the 60-byte Ethernet minimum and carry no FCS.
* "dir": `orig` = sent by the flow's originator (first packet of the flow),
  `reply` = the other way; `-` = not IP.
* MACs: 02:00:00:00:00:01 on the inside (192.168.0.x, 2001:db8::1),
  02:00:00:00:00:02 on the outside (10.0.0.x, 8.8.x.x, 2001:db8::2).
* IPv4: IHL 5, TOS 0, DF set, fragment offset 0, TTL 64, correct header
  checksum; IP id = 0x1000 + packet number in the file that defines the
  packet (packets copied into another file keep their bytes and id).
  IPv6: traffic class 0, flow label 0, hop limit 64.
* TCP/UDP/ICMP/ICMPv6 checksums are correct.  TCP summaries: `[S]` SYN,
  `[F]` FIN, `[R]` RST, `[P]` PSH, `[A]` ACK; `len` = TCP payload bytes.
  UDP `len` = UDP payload bytes; ICMP `data` = bytes after the 8-byte echo
  header.
* Payloads: UDP to/from port 53 carries well-formed DNS (20-byte query for
  `ct` TXT, 40-byte response with one TXT answer; the IPv6 ext-header packet
  carries a bare 12-byte DNS header); the 6000->7000 datagram carries
  `onewayonew`; ICMP/ICMPv6 echo data is the 56 bytes 0x10..0x47; file 3's
  TCP data is `GET-fastct-request;` / `fastct-response-body;` repeated.
* pcap files: version 2.4, thiszone 0, sigfigs 0, snaplen 65535, linktype 1
  (Ethernet).  Little-endian microsecond (magic a1b2c3d4 stored as
  `d4 c3 b2 a1`) unless the file name says otherwise.
* Flow totals are what is on the wire; whether an engine creates an entry
  (e.g. the kernel does not for an unsolicited ICMP echo reply or for
  ARP/LLDP) is for the tests to decide.
"""


FILE_NOTES = {
    "tcp_handshake_teardown.pcap":
        "File 1.  IPv4 TCP 192.168.0.2:1024 -> 10.0.0.2:2048 (the Open vSwitch "
        "conntrack tutorial connection), window 65535, no options, no payload: "
        "3-way handshake (ISNs 100 / 200), then client FIN/ACK, server FIN/ACK, "
        "client ACK.  All packets have IP len 40; orig 4 pkts / 160 bytes, "
        "reply 2 pkts / 80 bytes.",
    "tcp_ovs_variant_ack102.pcap":
        "File 2.  The handshake of file 1 (SYN, SYN/ACK, ACK), then the server's "
        "FIN/ACK with seq 201 and **ack 102** before the client's FIN was seen.  "
        "The client has sent nothing past seq 101 (its td_end is 101), so the "
        "Linux kernel's window check finds the ACK over the upper bound "
        "(ack >= td_end + 1 = 102: ACKed data not seen yet) and marks the packet "
        "invalid; Open vSwitch's userspace conntrack accepts it.",
    "tcp_data_transfer.pcap":
        "File 3.  IPv4 TCP 192.168.0.2:40000 -> 10.0.0.2:80.  SYN and SYN/ACK "
        "carry options MSS 1460, NOP, WS 7 (8 bytes, TCP header 28 bytes); "
        "client ISN 1000, server ISN 5000; after the handshake both sides "
        "scale windows by 2^7 (e.g. 502 * 128 = 64256).  100 bytes "
        "client->server, 1000 bytes server->client, then FIN/ACK, FIN/ACK, ACK.",
    "udp_exchange.pcap":
        "File 4.  Explicit timing (not 0.010 s steps).  UDP 192.168.0.2:5353 <-> "
        "10.0.0.2:53: request (20 B payload) at t0, reply (40 B) at t0+0.5, "
        "request at t0+3.0, reply at t0+3.1 -- the second exchange comes more "
        "than 2 s after the first packet, so the kernel's UDP \"stream\" rule "
        "applies.  Plus a one-way flow 192.168.0.2:6000 -> 10.0.0.3:7000 "
        "(10 B payload) at t0+1.0.",
    "icmp_echo.pcap":
        "File 5.  ICMP echo id 0x1234 192.168.0.2 <-> 8.8.8.8, seq 1 request/reply "
        "and seq 2 request/reply (56 data bytes each, ICMP length 64), then an "
        "unsolicited echo reply id 0x9999 seq 1 from 8.8.4.4 to 192.168.0.2 "
        "(no matching request; the kernel would mark it invalid and create no "
        "entry).",
    "ipv6_mixed.pcap":
        "File 6.  IPv6.  TCP [2001:db8::1]:1024 -> [2001:db8::2]:80 with the same "
        "6-packet handshake/teardown as file 1 (ISNs 100 / 200, IP len 60 each); "
        "UDP [2001:db8::1]:5000 <-> [2001:db8::2]:53 (20 B request, 40 B reply); "
        "ICMPv6 echo request/reply id 7 seq 1 (56 data bytes); and one UDP "
        "datagram [2001:db8::1]:5001 -> [2001:db8::2]:53 (12 B payload) whose "
        "IPv6 header has Next Header 0 -> Hop-by-Hop Options (8 B: NH 60, len 0, "
        "PadN 4) -> Destination Options (8 B: NH 17, len 0, PadN 4) -> UDP.  "
        "Its payload length is 16 + 8 + 12 = 36, so IP len = 76.",
    "vlan_qinq.pcap":
        "File 7.  Packets 1-2 of file 4 (same IP bytes, ids 0x1001/0x1002) inside "
        "an 802.1Q tag (TPID 0x8100, VID 100, PCP 0); then the same exchange with "
        "client port 5354 inside QinQ: outer 802.1ad tag (TPID 0x88a8, VID 200) "
        "then inner 802.1Q tag (TPID 0x8100, VID 300); then an ARP request "
        "(broadcast, 42-byte frame) and an LLDP frame (dst 01:80:c2:00:00:0e, "
        "ethertype 0x88cc, TLVs chassis-id/port-id/TTL/end).  Timing is the "
        "default 0.010 s steps (the 0.5 s gap of file 4 is not kept here).",
    "mixed_demo.pcap":
        "File 8, the main demo capture.  Files 1, 4, 5, 3 and 6 merged in time "
        "order, each shifted by a start offset and keeping its own internal "
        "timing (file 1 +0.000 s, file 4 +0.005 s, file 5 +0.025 s, file 3 "
        "+0.103 s, file 6 +0.207 s), plus three unanswered SYNs "
        "192.168.0.9:50001..50003 -> 10.0.0.9:443 (seq 7001..7003, window "
        "65535, no options) at +0.157, +0.167, +0.177 s.  Packets keep their "
        "bytes from the source file; \"from\" gives the source file and packet "
        "number (`f4#2` = file 4 packet 2).  All timestamps are distinct.",
    "tcp_handshake_teardown.nsec.pcap":
        "Same 6 packets and timestamps as file 1, nanosecond-resolution pcap "
        "(magic a1b23c4d, stored little-endian as `4d 3c b2 a1`; the record "
        "field holds nanoseconds, e.g. 10000000 for packet 2).",
    "tcp_handshake_teardown.be.pcap":
        "Same 6 packets and timestamps as file 1, big-endian microsecond pcap "
        "(magic stored as `a1 b2 c3 d4`; all header fields big-endian).",
    "tcp_handshake_teardown.pcapng":
        "Same 6 packets and timestamps as file 1 as pcapng (little-endian): one "
        "SHB (version 1.0, section length -1, option shb_userappl), one IDB "
        "(linktype 1, snaplen 65535, options if_name \"eth0\", if_tsresol 9 = "
        "nanoseconds), six EPBs (interface 0, 64-bit timestamp in ns, e.g. "
        "1700000000010000000 for packet 2, caplen = origlen, no EPB options).",
    "multi_iface.pcapng":
        "pcapng (little-endian) with one SHB and two IDBs: interface 0 = "
        "Ethernet (linktype 1, if_name \"eth0\", no if_tsresol -> default "
        "microseconds), interface 1 = raw IP (linktype 101, if_name \"tun0\", "
        "if_tsresol 9 -> nanoseconds).  File 4's five packets as EPBs with "
        "file 4's timestamps: the packets sent by 192.168.0.2 (requests and "
        "the one-way packet) on interface 0 as Ethernet frames (timestamp "
        "units us, e.g. 1700000000000000), the replies on interface 1 as "
        "bare IPv4 packets (units ns, e.g. 1700000000500000000).  Then one "
        "Simple Packet Block (implicitly interface 0, no timestamp, original "
        "length 98) holding the Ethernet frame of file 5's first echo request.  "
        "Caution: dpkt 1.9.8's pcapng reader skips the SPB and applies "
        "interface 0's resolution to every EPB; libpcap (tcpdump) refuses the "
        "file (\"an interface has a type 101 different from the type of the "
        "first interface\"); Wireshark/tshark read it correctly.",
}


def render_readme(results):
    out = [README_HEAD, "## Files\n",
           "| file | packets | size (bytes) | sha256 |", "|---|---|---|---|"]
    for name, n, size, digest, _ in results:
        out.append("| `%s` | %d | %d | `%s` |" % (name, n, size, digest))
    out.append("")
    same_as_f1 = ("tcp_handshake_teardown.nsec.pcap", "tcp_handshake_teardown.be.pcap",
                  "tcp_handshake_teardown.pcapng")
    for name, n, size, digest, pkts in results:
        out.append("## `%s` (%d packets)\n" % (name, n))
        out.append(FILE_NOTES[name] + "\n")
        if name in same_as_f1:
            out.append("Packet table: identical to `tcp_handshake_teardown.pcap`.\n")
            continue
        out.append(md_table(pkts, show_src=(name == "mixed_demo.pcap"),
                            show_iface=(name == "multi_iface.pcapng")) + "\n")
        out.append("Flow totals (IP-length bytes):\n")
        out.append(flow_totals(pkts) + "\n")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
