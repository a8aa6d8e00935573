"""Differential tests of fastct's NAT against the running kernel's (the NAT issue's kernel test).

Each scenario builds a fresh client — gateway — server lab of network namespaces (tests/netns_lab.py),
loads NAT rules into the gateway with `nft -f`, sends real traffic (sockets in the client and server
namespaces) through it, and records at the gateway:

- every packet as it arrives on either gateway interface (`tcpdump -i any -Q in`: before netfilter,
  so before NAT), in arrival order: fastct's input, link type LINUX_SLL2 as captured;
- every packet as it leaves the gateway (`tcpdump -i any -Q out`: after the postrouting hook, so
  after NAT and after forwarding decremented the TTL): what the kernel put on the wire;
- the kernel's conntrack verdict for every packet (NFLOG right after conntrack, NetnsLab.capture);
- `conntrack -L -o extended` in the gateway once the traffic is over.

fastct tracks the arriving packets with the equivalent NAT rules and rewrite=True, and then:

(a) table: for every kernel entry fastct has one with the same original tuple, the same TCP state,
    flags ([ASSURED]/[UNREPLIED]) and counters, and the same reply tuple -- exactly, except a NAT
    port (source port, or ICMP echo id) that the kernel chose from a range or moved on a clash: there
    both must have moved the port (or both kept it), both ports must be in the rule's range (the
    port's class when the rule has no range), and each side's reply tuples must be unique;
(b) wire: each packet the kernel sent is paired with the arriving packet it came from (by the
    fields NAT and forwarding leave alone), and equals fastct's rewrite of that packet byte for
    byte, whole packet (IP header, transport header, checksums, payload; ICMP errors including the
    quoted packet), once two things are accounted for:
    - forwarding: the gateway decrements the IPv4 TTL / IPv6 hop limit and patches the IPv4 header
      checksum incrementally (ip_decrease_ttl: +0x0100 with end-around carry); fastct models
      neither, so the expected packet is fastct's with exactly that applied (no other
      normalisation: every checksum must be bit-identical);
    - chosen ports: where fastct chose another port than the kernel (legitimately, see (a)),
      fastct's port in its original-direction output is replaced by the kernel's (RFC 1624
      incremental checksum update), and arriving reply-direction packets, which the server
      addressed to the kernel's port, get fastct's port before fastct sees them (so fastct is then
      fed packet by packet; without substitutions the whole capture is one batch, and a run in
      batches of one must give the same result);
(c) ct_state: fastct's bits for each arriving packet are the kernel's verdict (NFLOG) plus snat
    where the kernel changed the packet's source (address, port, or echo request id) and dnat where
    it changed the destination (address, port, or echo reply id).

Scenarios: masquerade on the outside interface (TCP, UDP, ICMP echo, ICMP error for UDP to a
closed port; IPv4 and IPv6), snat to an address and a 10-port range (in-range ports kept, clashes
between two client addresses on one source port, ephemeral ports mapped into the range, echo ids
clashing, an ICMP error), dnat to a server's port (TCP, UDP, ICMP error quoting the translated
packet), and a second connection from an already mapped source address and port, which gets the
same mapping (the kernel's find_appropriate_src; test_snat_same_source_reuses_mapping).

Needs root, `ip netns`, nft, conntrack and tcpdump; skipped without them (failed instead when CI is
set and a tool is missing).
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import textwrap
from dataclasses import dataclass, field

import numpy as np
import pytest

from conntrack_lines import parse_table
from netns_lab import NetnsLab, lab_for_test, lab_unicast, read_ingress, read_nflog

pytestmark = pytest.mark.kernel

TRK, NEW, EST, REL, RPL, INV, SNAT, DNAT = 0x20, 0x01, 0x02, 0x04, 0x08, 0x10, 0x40, 0x80
VERDICT_BITS = {
    "new": TRK | NEW, "est": TRK | EST, "est,rpl": TRK | EST | RPL,
    "rel": TRK | REL, "rel,rpl": TRK | REL | RPL, "inv": TRK | INV, "untracked": 0,
}
TIME_SLACK = 2
# tcpdump's snapshot length: above any packet here (MTU 1500), and small enough that libpcap's
# 4 MiB capture ring has room for a burst (its slots are sized for whole snapshots).
SNAPLEN = 2048
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276

C4, C4B, S4 = NetnsLab.CLIENT4, "10.231.1.3", NetnsLab.SERVER4
GW4_C, GW4_S, SNAT4 = NetnsLab.GW4_C, NetnsLab.GW4_S, "10.231.2.100"
C6, S6, GW6_S = NetnsLab.CLIENT6, NetnsLab.SERVER6, NetnsLab.GW6_S
TCP_PORT, UDP_PORT, UDP_PORT2, CLOSED_PORT = 6001, 6000, 6002, 5999
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
ICMP_ERRORS = {4: (3, 4, 5, 11, 12), 6: (1, 2, 3, 4)}


@pytest.fixture
def lab():
    with lab_for_test("the kernel NAT differential tests") as the_lab:
        # Complete transport checksums in every packet the end hosts send (not the partial sums of
        # checksum offload, which the kernel's NAT patches differently): both sides then see and
        # write ordinary checksums.
        the_lab.set_tx_checksum(the_lab.client, "cli0", False)
        the_lab.set_tx_checksum(the_lab.server, "srv0", False)
        yield the_lab


# ---- packets (IP bytes) ----------------------------------------------------------------------------
@dataclass
class Pkt:
    """The fields of an IP packet this test looks at (no IPv6 extension headers: the lab sends none)."""
    raw: bytes
    v: int
    proto: int
    src: str
    dst: str
    l4: int                     # offset of the transport header
    sport: int | None = None    # TCP/UDP
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    echo_id: int | None = None  # echo request/reply
    inner: "Pkt | None" = None  # the packet an ICMP error quotes

    @property
    def is_error(self):
        return self.icmp_type is not None and self.icmp_type in ICMP_ERRORS[self.v]

    @property
    def csum_at(self) -> int | None:
        """Offset of the transport checksum (None: no checksum this test patches)."""
        if self.proto == 6:
            return self.l4 + 16
        if self.proto == 17:
            return self.l4 + 6
        if self.proto in (1, 58):
            return self.l4 + 2
        return None


def parse(raw: bytes, quoted: bool = False) -> Pkt:
    v = raw[0] >> 4
    if v == 4:
        hl, proto, af = (raw[0] & 15) * 4, raw[9], socket.AF_INET
        src, dst = raw[12:16], raw[16:20]
    else:
        hl, proto, af = 40, raw[6], socket.AF_INET6
        src, dst = raw[8:24], raw[24:40]
    p = Pkt(bytes(raw), v, proto, socket.inet_ntop(af, src), socket.inet_ntop(af, dst), hl)
    body = raw[hl:]
    if proto in (6, 17) and len(body) >= 4:
        p.sport, p.dport = struct.unpack_from("!HH", body)
    elif proto in (1, 58) and len(body) >= 8:
        p.icmp_type, p.icmp_code = body[0], body[1]
        if p.icmp_type in (ECHO_REQUEST[v], ECHO_REPLY[v]):
            p.echo_id = struct.unpack_from("!H", body, 4)[0]
        elif p.icmp_type in ICMP_ERRORS[v] and not quoted and len(body) >= 8 + 20:
            p.inner = parse(body[8:], quoted=True)
    return p


def csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def patch16(raw: bytearray, at: int, value: int, p: Pkt):
    """Write a 16-bit field of packet `p` and update its transport checksum incrementally
    (RFC 1624, eq. 3); a UDP checksum of 0 ("none") stays 0."""
    old = struct.unpack_from("!H", raw, at)[0]
    struct.pack_into("!H", raw, at, value)
    at_sum = p.csum_at
    if at_sum is None:
        return
    hc = struct.unpack_from("!H", raw, at_sum)[0]
    if p.proto == 17 and hc == 0:
        return
    s = (~hc & 0xFFFF) + (~old & 0xFFFF) + value
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", raw, at_sum, ~s & 0xFFFF)


def forwarded(raw: bytes) -> bytes:
    """What forwarding does to a packet that fastct does not model: the IPv4 TTL decrement with
    its incremental header checksum update (ip_decrease_ttl in include/net/ip.h: check +=
    htons(0x0100), end-around carry), or the IPv6 hop limit decrement."""
    out = bytearray(raw)
    if out[0] >> 4 == 4:
        out[8] = (out[8] - 1) & 0xFF
        check = struct.unpack_from("!H", out, 10)[0] + 0x0100
        check = (check + (check >= 0xFFFF)) & 0xFFFF
        struct.pack_into("!H", out, 10, check)
    else:
        out[7] = (out[7] - 1) & 0xFF
    return bytes(out)


def invariant(raw: bytes):
    """What NAT and forwarding leave alone: pairs an arriving packet with the one that left."""
    p = parse(raw)
    body = bytearray(raw[p.l4:])
    if p.proto == 6:
        body[0:4] = bytes(4)
        body[16:18] = bytes(2)
    elif p.proto == 17:
        body[0:4] = bytes(4)
        body[6:8] = bytes(2)
    elif p.proto in (1, 58):
        body[2:4] = bytes(2)
        if p.echo_id is not None:
            body[4:6] = bytes(2)
        elif p.inner is not None:
            body = body[:8] + invariant_inner(p.inner)
    ident = raw[4:6] if p.v == 4 else raw[1:4]      # IPv4 id, IPv6 flow label
    return p.v, p.proto, len(raw), bytes(ident), bytes(body)


def invariant_inner(q: Pkt) -> bytes:
    raw = bytearray(q.raw)
    if q.v == 4:
        raw[8:20] = bytes(12)          # TTL, checksum, addresses
    else:
        raw[7:40] = bytes(33)
    if q.proto in (6, 17) and len(raw) >= q.l4 + 4:
        raw[q.l4:q.l4 + 4] = bytes(4)
    if q.csum_at is not None and len(raw) >= q.csum_at + 2:
        raw[q.csum_at:q.csum_at + 2] = bytes(2)
    return bytes(raw)


def describe(raw: bytes) -> str:
    p = parse(raw)
    head = f"IPv{p.v} len={len(raw)}"
    if p.sport is not None:
        name = "TCP" if p.proto == 6 else "UDP"
        extra = ""
        if p.proto == 6:
            flags = raw[p.l4 + 13]
            extra = " [" + ("".join(c for bit, c in ((2, "S"), (1, "F"), (4, "R"), (8, "P"), (16, "."))
                                    if flags & bit) or "none") + "]"
        return f"{head} {name} {p.src}:{p.sport} > {p.dst}:{p.dport}{extra}"
    if p.icmp_type is not None:
        name = "ICMP" if p.v == 4 else "ICMPv6"
        extra = f" id={p.echo_id}" if p.echo_id is not None else ""
        if p.inner is not None:
            q = p.inner
            ports = f":{q.sport} > {q.dst}:{q.dport}" if q.sport is not None else f" > {q.dst}"
            extra = f" quoting [proto {q.proto} {q.src}{ports}]"
        return f"{head} {name} {p.src} > {p.dst} type={p.icmp_type} code={p.icmp_code}{extra}"
    return f"{head} proto={p.proto} {p.src} > {p.dst}"


# ---- connections (conntrack -L tuples) ---------------------------------------------------------------
def tdict(t) -> dict:
    return dict(kv.split("=", 1) for kv in t)


def conn_key(rec):
    return rec["l3"], rec["proto"], rec["orig"]


def orig_match(p: Pkt, o: dict) -> bool:
    """The packet travels in the original direction of the connection with original tuple `o`."""
    if (p.src, p.dst) != (o["src"], o["dst"]):
        return False
    if "sport" in o:
        return (p.sport, p.dport) == (int(o["sport"]), int(o["dport"]))
    return p.echo_id == int(o["id"]) and p.icmp_type == int(o["type"])


def reply_match(p: Pkt, r: dict) -> bool:
    """The packet travels in the reply direction of a connection with reply tuple `r`."""
    if (p.src, p.dst) != (r["src"], r["dst"]):
        return False
    if "sport" in r:
        return (p.sport, p.dport) == (int(r["sport"]), int(r["dport"]))
    return p.echo_id == int(r["id"]) and p.icmp_type == int(r["type"])


def quotes_orig(p: Pkt, r: dict) -> bool:
    """An ICMP error quoting a packet of the connection as it left the gateway towards the
    replying side (so the error travels in the reply direction: the inner tuple is `r` inverted)."""
    q = p.inner
    if q is None or (q.src, q.dst) != (r["dst"], r["src"]):
        return False
    if "sport" in r:
        return (q.sport, q.dport) == (int(r["dport"]), int(r["sport"]))
    return True


def nat_port_field(rec) -> str | None:
    """The reply-tuple field holding the port a source NAT chose: `dport` (TCP/UDP), `id`
    (ICMP echo); None when the entry has no source NAT."""
    o, r = tdict(rec["orig"]), tdict(rec["reply"])
    if r["dst"] == o["src"] and r.get("dport", r.get("id")) == o.get("sport", o.get("id")):
        return None
    return "dport" if "dport" in r else "id"


def port_class(port: int) -> tuple[int, int]:
    """The kernel's source-port classes for a NAT without a port range (nf_nat_l4proto_unique_tuple)."""
    if port < 512:
        return 1, 511
    if port < 1024:
        return 600, 1023
    return 1024, 65535


# ---- observing the kernel and running fastct ----------------------------------------------------------
@dataclass
class NatRun:
    ingress: list            # IngressPacket: packets as they arrived at the gateway (fastct's input)
    egress: list             # IngressPacket: packets as they left the gateway (the kernel's output)
    records: list            # NFLOG records (ts, family, prefix, ip bytes): the kernel's verdicts
    kernel_text: str         # conntrack -L -o extended in the gateway
    pcap: object = None      # the ingress capture file
    fastct_text: str = ""
    out: list = field(default_factory=list)        # fastct's rewrite of each ingress packet
    states: list = field(default_factory=list)     # fastct's ct_state per ingress packet
    fed: list = field(default_factory=list)        # each ingress packet as fastct got it
    substituted: dict = field(default_factory=dict)   # ingress index -> note on the port substitution
    verdicts: list = field(default_factory=list)   # the kernel's verdict per ingress packet (or None)
    pairs: dict = field(default_factory=dict)      # ingress index -> egress index
    tracker: object = None                         # fastct's tracker after the packet-by-packet run
    kernel_counters: dict = field(default_factory=dict)   # rule counters in the gateway, if read

    @property
    def kernel(self):
        return [r for r in parse_table(self.kernel_text)
                if all(lab_unicast(_addr_packet(tdict(r["orig"])[k])) for k in ("src", "dst"))]

    @property
    def fastct(self):
        return parse_table(self.fastct_text)


def _addr_packet(addr: str) -> bytes:
    """A minimal IP header with `addr` at both ends (to reuse lab_unicast's prefix test)."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return bytes([0x45]) + bytes(11) + ip.packed * 2
    return bytes([0x60]) + bytes(7) + ip.packed * 2


def observe(lab, tmp_path, nft_script: str, traffic) -> NatRun:
    """Load the gateway's NAT rules, run `traffic()` while the three captures run, take the kernel's
    table."""
    lab.nft(lab.gateway, nft_script)
    p_in, p_out, p_log = (tmp_path / "gw_ingress.pcap", tmp_path / "gw_egress.pcap",
                          tmp_path / "gw_nflog.pcap")
    with lab.ingress_capture(p_in, snaplen=SNAPLEN) as icap, \
            lab.egress_capture(p_out, snaplen=SNAPLEN) as ecap:
        with lab.capture(p_log) as cap:
            traffic()
            cap.settle()
        icap.settle()
        ecap.settle()
        kernel_text = lab.conntrack_table()
    ingress = read_ingress(p_in, icap.interfaces)
    egress = read_ingress(p_out, ecap.interfaces)
    records = [r for r in read_nflog(p_log) if r[3] and lab_unicast(r[3])]
    assert [p.ts for p in ingress] == sorted(p.ts for p in ingress), "lab check: ingress order"
    for name, packets in (("ingress", ingress), ("egress", egress)):
        cut = [describe(p.packet) for p in packets if ip_length(p.packet) != len(p.packet)]
        assert not cut, f"lab check: {name} packets captured short (or padded): {cut}"
    return NatRun(ingress, egress, records, kernel_text, p_in)


def ip_length(raw: bytes) -> int:
    """The packet's length by its IP header."""
    if raw[0] >> 4 == 4:
        return struct.unpack_from("!H", raw, 2)[0]
    return 40 + struct.unpack_from("!H", raw, 4)[0]


def _ip_offset(linktype: int) -> int:
    if linktype == LINKTYPE_LINUX_SLL2:
        return 20
    if linktype == LINKTYPE_LINUX_SLL:
        return 16
    raise AssertionError(f"unexpected link type {linktype} in the ingress capture")


def fastct_table_by_orig(tracker) -> dict:
    from fastct.conntrack_fmt import format_table
    lines = format_table(tracker.entries(), tracker.replies(), tracker.cold(), tracker.now)
    return {conn_key(r): r for r in parse_table("\n".join(lines))}


def _tracker(rules, iface_names):
    """A Tracker with `rules`: NatRules, or a function that configures the tracker (loads a
    ruleset); with `iface_names`, the gateway interfaces packets arrive on (capture interfaces by
    name, as a pcapng file's)."""
    from fastct import Tracker
    from fastct.capture.reader import Interface
    if callable(rules):
        tracker = Tracker(seed=1)
        rules(tracker)
    else:
        tracker = Tracker(seed=1, nat=rules)
    if iface_names:
        tracker.set_capture_interfaces([Interface(linktype=0, name=n) for n in iface_names], classic=False)
    return tracker


def _set_interfaces(batch, run: NatRun, first: int, iface_names):
    """Each packet of `batch` (ingress packets first, first+1, ...) on the capture interface named
    as the gateway interface it arrived on."""
    if not iface_names:
        return
    lt = int(batch.if_linktype[0])
    batch.if_linktype = np.full(len(iface_names), lt, dtype=np.uint32)
    batch.if_fcslen = np.zeros(len(iface_names), dtype=np.uint32)
    for k in range(len(batch)):
        batch.iface[k] = iface_names.index(run.ingress[first + k].interface)


def run_fastct(run: NatRun, rules, iface_names=None):
    """fastct on the ingress capture with `rules` and rewrite=True.  Reply-direction packets that
    the server addressed to a port the kernel chose get fastct's port for that connection first
    (see the module docstring), so fastct is fed one packet at a time; when no packet needed that,
    the whole capture is also processed as one batch and must give the same packets and states."""
    from fastct import CaptureReader
    from fastct.conntrack_fmt import format_table

    kernel = run.kernel
    tracker = _tracker(rules, iface_names)
    reader = CaptureReader(run.pcap, batch_size=1, writable=True)
    try:
        for i, batch in enumerate(reader):
            _set_interfaces(batch, run, i, iface_names)
            start = int(batch.offsets[0]) + _ip_offset(int(batch.if_linktype[int(batch.iface[0])]))
            end = int(batch.offsets[0]) + int(batch.caplen[0])
            raw = bytes(batch.buf[start:end])
            new = substitute_reply(raw, kernel, fastct_table_by_orig(tracker), run.substituted, i)
            if new != raw:
                batch.buf[start:end] = np.frombuffer(new, dtype=np.uint8)
            run.fed.append(new)
            res = tracker.process(batch, rewrite=True)
            run.states.append(int(res.ct_state[0]))
            run.out.append(bytes(batch.buf[start:end]))
        assert reader.error is None, reader.error
    finally:
        reader.close()
    assert len(run.out) == len(run.ingress), \
        f"fastct read {len(run.out)} packets, the capture has {len(run.ingress)}"
    lines = format_table(tracker.entries(), tracker.replies(), tracker.cold(), tracker.now,
                         tracker.helper_names())
    run.fastct_text = "\n".join(lines) + ("\n" if lines else "")
    run.tracker = tracker
    assert tracker._engine.check_invariants() == []
    if not run.substituted:
        # No substitution: the capture as one batch, as `fastct track` would read it.
        one = _tracker(rules, iface_names)
        reader = CaptureReader(run.pcap, batch_size=1 << 16, writable=True)
        try:
            batches = list(reader)
            assert len(batches) == 1
            b = batches[0]
            _set_interfaces(b, run, 0, iface_names)
            res = one.process(b, rewrite=True)
            outs = []
            for k in range(len(b)):
                s = int(b.offsets[k]) + _ip_offset(int(b.if_linktype[int(b.iface[k])]))
                outs.append(bytes(b.buf[s:int(b.offsets[k]) + int(b.caplen[k])]))
        finally:
            reader.close()
        assert [int(s) for s in res.ct_state] == run.states, "one batch and batches of one give other states"
        assert outs == run.out, "one batch and batches of one rewrite the packets differently"


def substitute_reply(raw: bytes, kernel, ours: dict, notes: dict, index: int) -> bytes:
    """A reply-direction packet addressed to the kernel's chosen port (or echo id) of a connection
    for which fastct chose another: the same packet addressed to fastct's."""
    def port_only(mine, rec) -> bool:
        """fastct's reply tuple differs from the kernel's in the chosen port (or id) alone."""
        f, r = tdict(mine["reply"]), tdict(rec["reply"])
        return f != r and all(f.get(k) == v for k, v in r.items() if k not in ("dport", "id"))

    p = parse(raw)
    for rec in kernel:
        r = tdict(rec["reply"])
        if not reply_match(p, r):
            continue
        mine = ours.get(conn_key(rec))
        if mine is None or not port_only(mine, rec):
            return raw           # the same, or more differs: compared (and reported) later
        f = tdict(mine["reply"])
        out = bytearray(raw)
        if "dport" in r:
            patch16(out, p.l4 + 2, int(f["dport"]), p)
            notes[index] = f"dport {r['dport']} (kernel) -> {f['dport']} (fastct) before fastct"
        else:
            patch16(out, p.l4 + 4, int(f["id"]), p)
            notes[index] = f"echo id {r['id']} (kernel) -> {f['id']} (fastct) before fastct"
        return bytes(out)
    if p.inner is not None:
        for rec in kernel:
            mine = ours.get(conn_key(rec))
            if quotes_orig(p, tdict(rec["reply"])) and mine is not None and port_only(mine, rec):
                raise AssertionError(f"packet #{index + 1} {describe(raw)}: an ICMP error for a connection "
                                     f"whose port fastct chose differently; this test cannot substitute "
                                     f"inside the quote (build the scenario so that its port is kept)")
    return raw


def kernel_view_of_fastct(p_out: bytes, kernel, ours: dict) -> bytes:
    """fastct's rewrite of an original-direction packet with fastct's chosen port replaced by the
    kernel's (incremental checksum update), so that it can be compared with the kernel's packet."""
    p = parse(p_out)
    for rec in kernel:
        mine = ours.get(conn_key(rec))
        if mine is None or mine["reply"] == rec["reply"]:
            continue
        f, r = tdict(mine["reply"]), tdict(rec["reply"])
        # fastct's output in the original direction is its reply tuple inverted.
        if (p.src, p.dst) != (f["dst"], f["src"]):
            continue
        out = bytearray(p_out)
        if "dport" in f and (p.sport, p.dport) == (int(f["dport"]), int(f["sport"])):
            patch16(out, p.l4, int(r["dport"]), p)
            return bytes(out)
        if "id" in f and p.echo_id == int(f["id"]) and p.icmp_type == ECHO_REQUEST[p.v]:
            patch16(out, p.l4 + 4, int(r["id"]), p)
            return bytes(out)
    return p_out


def pair_packets(run: NatRun):
    """Each packet that left the gateway with the arriving packet it came from (the earliest unpaired
    one with the same invariant fields), and each arriving packet with its NFLOG verdict (the record
    with the same bytes)."""
    pending: dict = {}
    for i, p in enumerate(run.ingress):
        pending.setdefault(invariant(p.packet), []).append(i)
    for j, e in enumerate(run.egress):
        cands = pending.get(invariant(e.packet), [])
        if cands and run.ingress[cands[0]].ts <= e.ts + 0.001:
            run.pairs[cands.pop(0)] = j
    logs: dict = {}
    for k, r in enumerate(run.records):
        logs.setdefault(r[3], []).append(k)
    for p in run.ingress:
        ks = logs.get(p.packet, [])
        run.verdicts.append(run.records[ks.pop(0)][2] if ks else None)


def nat_bits(before: bytes, after: bytes) -> int:
    """snat/dnat where the kernel changed the packet's source / destination."""
    a, b = parse(before), parse(after)
    bits = 0
    if a.src != b.src or a.sport != b.sport or (a.icmp_type == ECHO_REQUEST[a.v] and a.echo_id != b.echo_id):
        bits |= SNAT
    if a.dst != b.dst or a.dport != b.dport or (a.icmp_type == ECHO_REPLY[a.v] and a.echo_id != b.echo_id):
        bits |= DNAT
    return bits


def compare(run: NatRun, port_ranges: dict) -> list[str]:
    """Every difference between the kernel and fastct (a list of lines; empty: they agree).
    `port_ranges`: {proto: (lo, hi)} of the scenario's source NAT rules with a port range; other
    protocols' moved ports must stay in their class (1-511, 600-1023, 1024-65535; echo ids: any)."""
    problems = []
    kernel = run.kernel
    ours = {conn_key(r): r for r in run.fastct}

    # (a) the table
    for side, table in (("kernel", kernel), ("fastct", list(ours.values()))):
        seen = {}
        for rec in table:
            key = (rec["l3"], rec["proto"], rec["reply"])
            if key in seen:
                problems.append(f"table ({side}): two connections share the reply tuple "
                                f"{' '.join(rec['reply'])}")
            seen[key] = rec
    for rec in kernel:
        key = conn_key(rec)
        where = f"table {' '.join(rec['orig'])} (proto {rec['proto']})"
        mine = ours.pop(key, None)
        if mine is None:
            problems.append(f"{where}: fastct has no entry")
            continue
        for fld in ("state", "counters", "flags"):
            if mine[fld] != rec[fld]:
                problems.append(f"{where}: {fld} kernel {rec[fld]}, fastct {mine[fld]}")
        for fld in ("mark", "zone", "helper"):
            if mine["extras"].get(fld) != rec["extras"].get(fld):
                problems.append(f"{where}: {fld} kernel {rec['extras'].get(fld)}, fastct "
                                f"{mine['extras'].get(fld)}")
        if abs(mine["timeout"] - rec["timeout"]) > TIME_SLACK:
            problems.append(f"{where}: timeout kernel {rec['timeout']}, fastct {mine['timeout']}")
        if mine["reply"] == rec["reply"]:
            continue
        k, f, o = tdict(rec["reply"]), tdict(mine["reply"]), tdict(rec["orig"])
        fld = nat_port_field(rec)
        others = [n for n in k if n != fld]
        if fld is None or fld not in f or any(k[n] != f.get(n) for n in others):
            problems.append(f"{where}: reply kernel {' '.join(rec['reply'])}, "
                            f"fastct {' '.join(mine['reply'])}")
            continue
        orig_port = int(o["sport"] if fld == "dport" else o["id"])
        kport, fport = int(k[fld]), int(f[fld])
        if (kport == orig_port) != (fport == orig_port):
            problems.append(f"{where}: the kernel {'kept' if kport == orig_port else 'moved'} the source "
                            f"{'port' if fld == 'dport' else 'echo id'} {orig_port} ({kport}), fastct "
                            f"{'kept' if fport == orig_port else 'moved'} it ({fport})")
        lo, hi = port_ranges.get(rec["proto"], (0, 65535) if fld == "id" else port_class(orig_port))
        for side, port in (("kernel", kport), ("fastct", fport)):
            if not lo <= port <= hi:
                problems.append(f"{where}: {side} chose {fld} {port}, outside {lo}-{hi}")
    for key in ours:
        problems.append(f"table: fastct has an entry the kernel has not: {' '.join(key[2])} (proto {key[1]})")

    # (b) the wire and (c) ct_state
    fastct_by_key = {conn_key(r): r for r in run.fastct}
    paired_out = set(run.pairs.values())
    for j, e in enumerate(run.egress):
        if j not in paired_out:
            problems.append(f"wire: the gateway sent {describe(e.packet)} on {e.interface}, which no "
                            f"arriving packet explains")
    for i, p in enumerate(run.ingress):
        here = f"packet #{i + 1} {describe(p.packet)} (in on {p.interface})"
        j = run.pairs.get(i)
        verdict = run.verdicts[i]
        if verdict is None:
            problems.append(f"{here}: no NFLOG verdict for it (lab)")
        if j is None:
            problems.append(f"{here}: the gateway did not send it on (fastct state 0x{run.states[i]:02x})")
            continue
        sent = run.egress[j].packet
        expected = forwarded(kernel_view_of_fastct(run.out[i], kernel, fastct_by_key))
        if expected != sent:
            problems.append(f"{here}: on the wire the kernel sent {describe(sent)}\n      {sent.hex()}\n"
                            f"    fastct's rewrite (forwarded, kernel's port) {describe(expected)}\n      "
                            f"{expected.hex()}\n    differing bytes at {diff_offsets(sent, expected)}")
        if verdict is not None:
            want = VERDICT_BITS[verdict] | nat_bits(p.packet, sent)
            if run.states[i] != want:
                problems.append(f"{here}: ct_state kernel 0x{want:02x} ({verdict}, translated "
                                f"{bit_names(nat_bits(p.packet, sent))}), fastct 0x{run.states[i]:02x}")
        # Consistency: each packet of a connection carries that connection's chosen port.
        pk = parse(sent)
        for rec in kernel:
            o, r = tdict(rec["orig"]), tdict(rec["reply"])
            mine = fastct_by_key.get(conn_key(rec))
            if orig_match(parse(p.packet), o):
                if not reply_match(_inverse(pk), r):
                    problems.append(f"{here}: the kernel sent it as {describe(sent)}, not with the "
                                    f"connection's reply tuple {' '.join(rec['reply'])} inverted")
                if mine is not None and not reply_match(_inverse(parse(run.out[i])), tdict(mine["reply"])):
                    problems.append(f"{here}: fastct rewrote it to {describe(run.out[i])}, not to its "
                                    f"reply tuple {' '.join(mine['reply'])} inverted")
    return problems


@dataclass
class _Inv:
    v: int
    src: str
    dst: str
    sport: int | None
    dport: int | None
    echo_id: int | None
    icmp_type: int | None


def _inverse(p: Pkt) -> _Inv:
    """The packet's tuple seen from the other end (an echo request becomes its reply)."""
    t = p.icmp_type
    if t is not None and t == ECHO_REQUEST[p.v]:
        t = ECHO_REPLY[p.v]
    return _Inv(p.v, p.dst, p.src, p.dport, p.sport, p.echo_id, t)


def diff_offsets(a: bytes, b: bytes) -> list[int]:
    return [k for k in range(max(len(a), len(b))) if a[k:k + 1] != b[k:k + 1]]


def bit_names(bits: int) -> str:
    return "+".join(n for n, b in (("snat", SNAT), ("dnat", DNAT)) if bits & b) or "nothing"


def report(run: NatRun, problems) -> str:
    t0 = run.ingress[0].ts if run.ingress else 0.0
    lines = []
    for i, p in enumerate(run.ingress):
        j = run.pairs.get(i)
        lines.append(f"  #{i + 1:<3} +{p.ts - t0:7.3f} s in {p.interface:<7} "
                     f"kernel {run.verdicts[i] or '-':<8} fastct 0x{run.states[i]:02x}  {describe(p.packet)}")
        if i in run.substituted:
            lines.append(f"         substituted: {run.substituted[i]}")
        lines.append(f"         fastct -> {describe(run.out[i])}")
        sent = (f"{describe(run.egress[j].packet)} (out on {run.egress[j].interface})" if j is not None
                else "(not sent)")
        lines.append(f"         kernel -> {sent}")
    return ("fastct's NAT differs from the kernel's:\n  " + "\n  ".join(problems)
            + "\n\npackets as they arrived at the gateway, fastct's rewrite and what the kernel sent:\n"
            + "\n".join(lines)
            + "\n\nkernel (conntrack -L -o extended):\n" + run.kernel_text + "fastct:\n" + run.fastct_text)


def check(run: NatRun, rules, port_ranges=None, iface_names=None) -> list[str]:
    run_fastct(run, rules, iface_names)
    pair_packets(run)
    return compare(run, port_ranges or {})


def assert_same(run: NatRun, problems):
    assert not problems, report(run, problems)


def lab_check(run: NatRun, condition: bool, what: str):
    """The kernel did what the scenario is built to make it do (a failure points at the lab)."""
    assert condition, f"lab check: {what}\n" + report(run, ["(lab check)"])


# ---- traffic ------------------------------------------------------------------------------------------
def py(code: str) -> str:
    return textwrap.dedent(code)


def echo_server(lab, addr, tcp_conns: int, udp_datagrams: int):
    """A server in the server namespace answering on TCP_PORT (echoes each read with a b'R' prefix,
    closes when the client does) and UDP_PORT and UDP_PORT2 (the same per datagram), until it has served
    `tcp_conns` connections and `udp_datagrams` datagrams (10 s at most)."""
    family = "AF_INET6" if ":" in addr else "AF_INET"
    proc = lab.spawn_python(lab.server, py(f"""
        import selectors, socket, time
        sel = selectors.DefaultSelector()
        t = socket.socket(socket.{family}, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(({addr!r}, {TCP_PORT})); t.listen(16); t.setblocking(False)
        sel.register(t, selectors.EVENT_READ, "accept")
        for port in ({UDP_PORT}, {UDP_PORT2}):
            u = socket.socket(socket.{family}, socket.SOCK_DGRAM); u.bind(({addr!r}, port))
            sel.register(u, selectors.EVENT_READ, "udp")
        print("ready", flush=True)
        closed = datagrams = 0
        deadline = time.monotonic() + 10
        while (closed < {tcp_conns} or datagrams < {udp_datagrams}) and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                if key.data == "accept":
                    c, _ = t.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ, "conn")
                elif key.data == "udp":
                    data, peer = key.fileobj.recvfrom(2048); key.fileobj.sendto(b"R" + data, peer)
                    datagrams += 1
                else:
                    data = key.fileobj.recv(65536)
                    if data:
                        key.fileobj.sendall(b"R" + data)
                    else:
                        sel.unregister(key.fileobj); key.fileobj.close(); closed += 1
        print("served", closed, datagrams, flush=True)
    """), what="echo server")
    proc.expect("ready")
    return proc


def client(lab, steps) -> str:
    """Run `steps` in the client namespace, in order, each once the previous one was answered:
    ("tcp", src, sport, dst, dport)      connect (from sport, 0: ephemeral), send, read the answer,
                                         keep the connection open until all steps are done;
    ("udp", src, sport, dst, dport)      send a datagram, read the answer;
    ("refused", src, sport, dst, dport)  send a datagram to a closed port, expect ICMP unreachable;
    ("ping", src, dst, ident)            an echo request with this id, wait for the reply.
    Then close the TCP connections (orderly, each to EOF).  Prints one line per step."""
    return lab.run_python(lab.client, py(f"""
        import socket, struct, time
        def fam(a):
            return socket.AF_INET6 if ":" in a else socket.AF_INET
        def csum(b):
            b += b"\\0" * (len(b) % 2)
            s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
            s = (s >> 16) + (s & 0xFFFF); s += s >> 16
            return ~s & 0xFFFF
        held = []
        for n, step in enumerate({steps!r}):
            kind = step[0]
            if kind == "ping":
                _, src, dst, ident = step
                v6 = ":" in src
                s = socket.socket(fam(src), socket.SOCK_RAW,
                                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
                s.bind((src, 0)); s.settimeout(5)
                body = struct.pack("!HH", ident, n) + bytes(range(32))
                req = struct.pack("!BBH", 128 if v6 else 8, 0, 0) + body
                if not v6:
                    req = req[:2] + struct.pack("!H", csum(req)) + req[4:]
                s.sendto(req, (dst, 0))
                deadline = time.monotonic() + 5
                while True:
                    data, peer = s.recvfrom(2048)
                    icmp = data if v6 else data[(data[0] & 15) * 4:]
                    if icmp[0] == (129 if v6 else 0) and icmp[4:8] == body[:4]:
                        print("pong", n, flush=True); break
                s.close()
                continue
            _, src, sport, dst, dport = step
            if kind == "tcp":
                s = socket.socket(fam(src), socket.SOCK_STREAM); s.settimeout(5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((src, sport)); s.connect((dst, dport))
                s.sendall(b"hello %d" % n)
                assert s.recv(100) == b"Rhello %d" % n
                held.append(s)
                print("tcp", n, s.getsockname()[1], flush=True)
            else:
                s = socket.socket(fam(src), socket.SOCK_DGRAM); s.settimeout(5)
                s.bind((src, sport)); s.connect((dst, dport))
                s.send(b"datagram %d" % n)
                if kind == "udp":
                    assert s.recv(100) == b"Rdatagram %d" % n
                    print("udp", n, s.getsockname()[1], flush=True)
                else:
                    try:
                        s.recv(100)
                        print("answered?!", n, flush=True)
                    except ConnectionRefusedError:
                        print("refused", n, flush=True)
                s.close()
        for s in held:
            s.shutdown(socket.SHUT_WR)
            while s.recv(100):
                pass
            s.close()
        print("closed", len(held), flush=True)
    """), timeout=30)


def serve(lab, addr, steps):
    """The echo server for `steps`, the client's steps, and the server's exit."""
    tcp = sum(1 for s in steps if s[0] == "tcp")
    udp = sum(1 for s in steps if s[0] == "udp")
    srv = echo_server(lab, addr, tcp, udp)
    out = client(lab, steps)
    code, rest, err = srv.finish(timeout=15)
    assert code == 0 and f"served {tcp} {udp}" in rest, f"echo server: {code} {rest} {err}"
    assert "answered?!" not in out and f"closed {tcp}" in out, out
    return out


NAT_TABLE = "fastct_nat"


# ---- scenarios ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_masquerade(lab, tmp_path, family):
    """`oifname "gw-srv" masquerade`: TCP (ephemeral port), UDP, two ICMP echoes and UDP to a
    closed port (the server's port unreachable comes back translated, quote included).  No clash:
    every port and id is kept, so both must agree exactly, and fastct gets one batch too."""
    from fastct.nat import NatRules
    v6 = family == "ipv6"
    c, s, gw = (C6, S6, GW6_S) if v6 else (C4, S4, GW4_S)
    steps = [("tcp", c, 0, s, TCP_PORT), ("udp", c, 0, s, UDP_PORT), ("ping", c, s, 0x4242),
             ("ping", c, s, 0x4242), ("refused", c, 0, s, CLOSED_PORT)]
    run = observe(lab, tmp_path, f"""
table inet {NAT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "gw-srv" masquerade
    }}
}}
""", lambda: serve(lab, s, steps))
    problems = check(run, NatRules.from_cli(masquerade=[gw]))
    replies = [tdict(r["reply"]) for r in run.kernel]
    lab_check(run, len(replies) == 4 and all(r["dst"] == gw for r in replies),
              f"four connections, each masqueraded to {gw}")
    lab_check(run, any(parse(p.packet).is_error for p in run.ingress), "the server's ICMP error arrived")
    assert not run.substituted
    assert_same(run, problems)


SNAT_RANGE = (20000, 20009)


def snat_range(lab):
    """The snat scenarios' gateway rules (nft script) and fastct's equivalent, with a second client
    address (C4B) and the snat address on the gateway's server-side interface."""
    from fastct.nat import NatRule, NatRules
    lab.add_address(lab.client, "cli0", f"{C4B}/24")
    lab.add_address(lab.gateway, "gw-srv", f"{SNAT4}/24")
    lo, hi = SNAT_RANGE
    script = f"""
table ip {NAT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "gw-srv" meta l4proto {{ tcp, udp }} snat to {SNAT4}:{lo}-{hi}
        oifname "gw-srv" meta l4proto icmp snat to {SNAT4}
    }}
}}
"""
    rules = NatRules([NatRule(action="snat", proto="tcp", to_min=SNAT4, to_ports=SNAT_RANGE),
                      NatRule(action="snat", proto="udp", to_min=SNAT4, to_ports=SNAT_RANGE),
                      NatRule(action="snat", proto="icmp", to_min=SNAT4)])
    return script, rules, {6: SNAT_RANGE, 17: SNAT_RANGE}


def kernel_by_source(run: NatRun) -> dict:
    """{(proto, orig src, orig sport or 'echo', orig dport or 'echo'): kernel reply tuple (dict)}"""
    out = {}
    for r in run.kernel:
        o = tdict(r["orig"])
        out[(r["proto"], o["src"], o.get("sport", "echo"), o.get("dport", "echo"))] = tdict(r["reply"])
    return out


def test_snat_port_range(lab, tmp_path):
    """`snat to 10.231.2.100:20000-20009` for TCP and UDP (and to the address for ICMP), with two
    client addresses: in-range source ports are kept while free; the same source port from the
    second address clashes and must move to another port of the range; ephemeral source ports
    (outside the range) are mapped into it; two echo requests with one id from the two addresses
    clash on the id; an ICMP error for a kept port comes back translated.  Where a port was chosen
    from the range or moved, only the rules are checked (in range, unique, used by every packet
    of the connection), not the number."""
    script, rules, ranges = snat_range(lab)
    steps = [
        ("tcp", C4, 20003, S4, TCP_PORT),          # kept: 20003
        ("udp", C4, 20005, S4, UDP_PORT),          # kept: 20005
        ("refused", C4, 20007, S4, CLOSED_PORT),   # kept: 20007; its ICMP error is translated back
        ("ping", C4, S4, 0x4343),                  # kept id
        ("tcp", C4B, 20003, S4, TCP_PORT),         # clash with the first: another port of the range
        ("udp", C4B, 20005, S4, UDP_PORT),         # clash with the second
        ("ping", C4B, S4, 0x4343),                 # clash on the echo id
        ("tcp", C4, 0, S4, TCP_PORT),              # ephemeral port: mapped into the range
        ("udp", C4B, 0, S4, UDP_PORT),
    ]
    run = observe(lab, tmp_path, script, lambda: serve(lab, S4, steps))
    problems = check(run, rules, port_ranges=ranges)
    kernel = kernel_by_source(run)
    lab_check(run, len(run.kernel) == 9 and all(r["dst"] == SNAT4 for r in kernel.values()),
              f"nine connections, each translated to {SNAT4}")
    lab_check(run, [kernel[(6, C4, "20003", str(TCP_PORT))]["dport"],
                    kernel[(17, C4, "20005", str(UDP_PORT))]["dport"],
                    kernel[(17, C4, "20007", str(CLOSED_PORT))]["dport"]] == ["20003", "20005", "20007"],
              "the kernel kept the free in-range ports")
    lab_check(run, kernel[(6, C4B, "20003", str(TCP_PORT))]["dport"] != "20003"
              and kernel[(17, C4B, "20005", str(UDP_PORT))]["dport"] != "20005",
              "the kernel moved the clashing ports")
    assert_same(run, problems)


class FastctDiffers(AssertionError):
    """fastct does not do what the kernel does (a lab check failing is a plain AssertionError)."""


def test_snat_same_source_reuses_mapping(lab, tmp_path):
    """Two UDP flows from one source address and port outside the range (10.231.1.3:40000) to two
    server ports.  The kernel maps the first to a port of the range (chosen at random), and the
    second, whose source it finds in its bysource table, to the same port: curr is not in range (the
    address differs), so get_unique_tuple tries find_appropriate_src before the port walk, and the
    first connection's mapped address and port towards the new destination is free.  Everything
    else is checked as in test_snat_port_range."""
    script, rules, ranges = snat_range(lab)
    steps = [("udp", C4B, 40000, S4, UDP_PORT), ("udp", C4B, 40000, S4, UDP_PORT2)]
    run = observe(lab, tmp_path, script, lambda: serve(lab, S4, steps))
    problems = check(run, rules, port_ranges=ranges)
    assert_same(run, problems)
    kernel = kernel_by_source(run)
    k1 = kernel[(17, C4B, "40000", str(UDP_PORT))]["dport"]
    k2 = kernel[(17, C4B, "40000", str(UDP_PORT2))]["dport"]
    lab_check(run, k1 == k2, f"the kernel reused the first mapping (ports {k1} and {k2})")
    ours = {conn_key(r): tdict(r["reply"]) for r in run.fastct}
    f1, f2 = (ours[("ipv4", 17, (f"src={C4B}", f"dst={S4}", "sport=40000", f"dport={port}"))]["dport"]
              for port in (UDP_PORT, UDP_PORT2))
    if f1 != f2:
        raise FastctDiffers(f"source {C4B}:40000: the kernel mapped both flows to {SNAT4}:{k1}; fastct "
                            f"mapped the first to {f1} and the second to {f2}\n"
                            + report(run, ["(the mapping of one source)"]))


def test_dnat_to_server_port(lab, tmp_path):
    """`dnat to 10.231.2.2:PORT` of TCP and UDP services on the gateway's client-side address
    (10.231.1.1:8080 -> server:6001, :8053 -> :6000), and of a port whose server side is closed
    (:8054 -> :5999): the server's port unreachable must come back from the gateway's address and
    port, quote included."""
    from fastct.nat import NatRule, NatRules
    steps = [("tcp", C4, 0, GW4_C, 8080), ("udp", C4, 0, GW4_C, 8053), ("refused", C4, 0, GW4_C, 8054),
             ("tcp", C4, 0, GW4_C, 8080)]
    run = observe(lab, tmp_path, f"""
table ip {NAT_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {GW4_C} tcp dport 8080 dnat to {S4}:{TCP_PORT}
        ip daddr {GW4_C} udp dport 8053 dnat to {S4}:{UDP_PORT}
        ip daddr {GW4_C} udp dport 8054 dnat to {S4}:{CLOSED_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
    }}
}}
""", lambda: serve(lab, S4, steps))
    gw = f"{GW4_C}/32"
    rules = NatRules([
        NatRule(action="dnat", dst=gw, proto="tcp", dport=8080, to_min=S4, to_ports=TCP_PORT),
        NatRule(action="dnat", dst=gw, proto="udp", dport=8053, to_min=S4, to_ports=UDP_PORT),
        NatRule(action="dnat", dst=gw, proto="udp", dport=8054, to_min=S4, to_ports=CLOSED_PORT)])
    problems = check(run, rules)
    lab_check(run, len(run.kernel) == 4 and all(tdict(r["reply"])["src"] == S4 for r in run.kernel),
              f"four connections, each translated to {S4}")
    assert not run.substituted
    assert_same(run, problems)
