"""A deterministic, realistic-looking mixed capture for benchmarks (numpy, no per-packet Python).

    python benchmarks/gen_mixed_pcap.py OUT.pcap [--packets 1000000] [--flows 20000] [--seed 1]

Classic pcap (microseconds, Ethernet). Per flow, by default: 70 % TCP, 25 % UDP, 5 % ICMP echo;
20 % of the flows over IPv6 (ICMPv6 echo for ICMP). Packets per flow are log-normal (mice and a
few elephants) and add up to exactly `packets`.
- TCP: SYN, SYN/ACK, ACK, then data in one of three patterns (request + 3 response segments +
  ACK; request/response; upload of 2 segments + ACK) with exact sequence and acknowledgement
  numbers (no window scaling, at most 4.3 kB in flight), then FIN/ACK, FIN/ACK, ACK (85 %), one
  RST/ACK (7 %) or nothing (8 %: still open at the end of the capture).
- UDP: request/response (DNS, QUIC, NTP ports) or one-way (10 %).
- ICMP: echo request/reply pairs; each ICMP flow has its own pair of hosts (flow meters that key
  ICMP by addresses only, such as NFStream, then see the same flows as conntrack).
All flows start in the first half of `span` seconds (default 8) and end within it, so no
conntrack timeout (the shortest is 10 s, TCP CLOSE after an RST) expires before the capture ends.
Checksums (IPv4 header, TCP, UDP, ICMP, ICMPv6) are correct; payload bytes are zero.

`generate()` returns the per-flow truth (canonical key, packets and IP bytes in each direction)
that the trackers must find.
"""
from __future__ import annotations

import argparse
import ipaddress
import struct
import sys
import time
from dataclasses import dataclass

import numpy as np

TCP, UDP, ICMP = 6, 17, 1
ICMPV6 = 58
T0_S = 1_700_000_000

# TCP data-phase kinds: (direction 0 = client to server, payload rule)
K_REQ, K_DATA, K_ACKC, K_CDATA, K_ACKS = 0, 1, 2, 3, 4
_PATTERNS = [[K_REQ, K_DATA, K_DATA, K_DATA, K_ACKC],      # web: request, response, ack
             [K_REQ, K_DATA],                              # interactive
             [K_CDATA, K_CDATA, K_ACKS]]                   # upload
_PATTERN_P = [0.6, 0.3, 0.1]
CLOSE_FIN, CLOSE_RST, CLOSE_NONE = 0, 1, 2
_CLOSE_LEN = np.array([3, 1, 0])
_CLOSE_P = [0.85, 0.07, 0.08]


@dataclass
class Truth:
    """Per flow: proto (6/17/1/58), client/server address (16 bytes, IPv4 in the first 4),
    ports (0 for ICMP), packets and IP bytes per direction (0: client to server)."""
    proto: np.ndarray
    ipv6: np.ndarray
    client: np.ndarray
    server: np.ndarray
    cport: np.ndarray
    sport: np.ndarray
    packets: np.ndarray    # (n_flows, 2)
    bytes: np.ndarray      # (n_flows, 2)

    def __len__(self):
        return len(self.proto)

    def table(self) -> dict:
        """{canonical key: (packets orig, packets reply, bytes orig, bytes reply)}, see canonical_key."""
        out = {}
        for i in range(len(self)):
            fam = 6 if self.ipv6[i] else 4
            a = addr_str(self.client[i].tobytes(), fam)
            b = addr_str(self.server[i].tobytes(), fam)
            pk, by = self.packets[i], self.bytes[i]
            out[canonical_key(int(self.proto[i]), a, int(self.cport[i]), b, int(self.sport[i]))] = (
                int(pk[0]), int(pk[1]), int(by[0]), int(by[1]))
        return out


def addr_str(raw: bytes, family: int) -> str:
    return str(ipaddress.IPv4Address(raw[:4])) if family == 4 else str(ipaddress.IPv6Address(raw[:16]))


def canonical_key(proto: int, a: str, aport: int, b: str, bport: int) -> str:
    """A direction-free flow name all the benchmark's trackers can produce: 'proto lo lport hi hport'
    with the (address, port) ends sorted; ICMP/ICMPv6 ports are 0 (flow meters do not key echo ids)."""
    if proto in (ICMP, ICMPV6):
        aport = bport = 0
    ka = (ipaddress.ip_address(a).packed, aport)
    kb = (ipaddress.ip_address(b).packed, bport)
    if kb < ka:
        a, aport, b, bport = b, bport, a, aport
    return f"{proto} {a} {aport} {b} {bport}"


def _put16(hdr, col, v):
    v = np.asarray(v).astype(np.uint32)
    hdr[:, col] = (v >> 8) & 0xFF
    hdr[:, col + 1] = v & 0xFF


def _put32(hdr, col, v):
    v = np.asarray(v).astype(np.uint64)
    for k in range(4):
        hdr[:, col + k] = (v >> np.uint64(24 - 8 * k)) & np.uint64(0xFF)


def _words_sum(hdr, lo, hi):
    """Sum of the big-endian 16-bit words of columns lo..hi-1 (hi - lo even), as int64."""
    w = hdr[:, lo:hi].astype(np.int64)
    return (w[:, 0::2] * 256 + w[:, 1::2]).sum(axis=1)


def _fold(s):
    s = np.asarray(s, dtype=np.int64)
    for _ in range(3):
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def generate(n_packets=1_000_000, n_flows=20_000, seed=1, span=8.0, ipv6_frac=0.2,
             mix=(0.70, 0.25, 0.05)):
    """Returns (records, truth): records is the whole pcap file as a numpy uint8 array."""
    rng = np.random.default_rng(seed)
    F = int(n_flows)
    if F < 1:
        raise ValueError("need at least one flow")
    proto = rng.choice(np.array([TCP, UDP, ICMP]), size=F, p=list(mix))
    ipv6 = rng.random(F) < ipv6_frac
    is_tcp, is_udp, is_icmp = proto == TCP, proto == UDP, proto == ICMP
    close = np.where(is_tcp, rng.choice(3, size=F, p=_CLOSE_P), CLOSE_NONE)
    pattern = rng.choice(len(_PATTERNS), size=F, p=_PATTERN_P)
    oneway = is_udp & (rng.random(F) < 0.1)

    # Packets per flow: a minimum per kind, the rest shared by log-normal weights.
    minimum = np.where(is_tcp, 3 + 1 + _CLOSE_LEN[close], 2)
    spare = int(n_packets) - int(minimum.sum())
    if spare < 0:
        raise ValueError(f"{n_packets} packets are too few for {F} flows (need {int(minimum.sum())})")
    weights = rng.lognormal(0.0, 1.5, F)
    count = minimum + rng.multinomial(spare, weights / weights.sum())
    N = int(count.sum())

    # Addresses: clients share hosts (10/8, fd00::/64), servers fewer (198.18/15, 2001:db8::/64);
    # ICMP flows get a host pair of their own (100.64/10 client side).
    n_clients = max(1, F // 10)
    n_servers = max(1, F // 40)
    fidx = np.arange(F)
    chost = fidx % n_clients
    shost = rng.integers(0, n_servers, F)
    port_base = rng.integers(0, 28232, n_clients)
    cport = (32768 + (port_base[chost] + fidx // n_clients) % 28232).astype(np.uint32)
    sport = np.where(is_tcp, rng.choice([443, 80, 22, 8080], size=F, p=[0.7, 0.2, 0.05, 0.05]),
                     rng.choice([53, 443, 123], size=F, p=[0.6, 0.3, 0.1])).astype(np.uint32)
    cport = np.where(is_icmp, 0, cport)
    sport = np.where(is_icmp, 0, sport)
    icmp_id = rng.integers(1, 65536, F).astype(np.uint32)
    client = np.zeros((F, 16), dtype=np.uint8)
    server = np.zeros((F, 16), dtype=np.uint8)
    c4 = np.where(is_icmp, 0x64400000 + fidx % (1 << 22), 0x0A000001 + chost).astype(">u4")
    s4 = np.where(is_icmp, 0xC6130000 + fidx % 65536, 0xC6120001 + shost).astype(">u4")
    client[:, :4] = c4.view(np.uint8).reshape(F, 4)
    server[:, :4] = s4.view(np.uint8).reshape(F, 4)
    c6 = np.zeros((F, 16), dtype=np.uint8)
    c6[:, 0] = 0xFD
    c6[:, 7] = np.where(is_icmp, 1, 0)
    c6[:, 8:16] = np.where(is_icmp, fidx, chost + 1).astype(">u8").view(np.uint8).reshape(F, 8)
    s6 = np.zeros((F, 16), dtype=np.uint8)
    s6[:, 0:4] = [0x20, 0x01, 0x0D, 0xB8]
    s6[:, 7] = np.where(is_icmp, 1, 0)
    s6[:, 8:16] = np.where(is_icmp, fidx, shost + 1).astype(">u8").view(np.uint8).reshape(F, 8)
    client = np.where(ipv6[:, None], c6, client)
    server = np.where(ipv6[:, None], s6, server)
    isn_c = rng.integers(0, 1 << 32, F, dtype=np.uint64)
    isn_s = rng.integers(0, 1 << 32, F, dtype=np.uint64)

    # ---- per packet, in flow order -------------------------------------------------------------
    f = np.repeat(fidx, count)
    start = np.zeros(F, dtype=np.int64)
    start[1:] = np.cumsum(count)[:-1]
    j = np.arange(N, dtype=np.int64) - start[f]
    p_tcp, p_udp, p_icmp = is_tcp[f], is_udp[f], is_icmp[f]
    n_close = _CLOSE_LEN[close][f]
    n_data = count[f] - 3 - n_close
    hs = p_tcp & (j < 3)
    data = p_tcp & (j >= 3) & (j < 3 + n_data)
    cl = p_tcp & (j >= 3 + n_data)
    ci = j - 3 - n_data                                   # index within the close phase

    pat = np.zeros((len(_PATTERNS), max(map(len, _PATTERNS))), dtype=np.int64)
    pat_len = np.array([len(p) for p in _PATTERNS])
    for i, p in enumerate(_PATTERNS):
        pat[i, :len(p)] = p
    kind = pat[pattern[f], np.maximum(j - 3, 0) % pat_len[pattern[f]]]
    direction = np.zeros(N, dtype=np.int64)
    direction[hs] = (j[hs] == 1)
    direction[data] = np.isin(kind[data], [K_DATA, K_ACKS])
    direction[cl] = (ci[cl] == 1)                          # FIN/ACK from the server
    direction[p_udp] = np.where(oneway[f][p_udp], 0, j[p_udp] % 2)
    direction[p_icmp] = j[p_icmp] % 2

    plen = np.zeros(N, dtype=np.int64)
    seg = np.where(rng.random(N) < 0.6, 1448, rng.integers(1, 1449, N))
    plen[data] = np.select([kind[data] == K_REQ, np.isin(kind[data], [K_DATA, K_CDATA])],
                           [rng.integers(60, 601, N)[data], seg[data]], 0)
    plen[p_udp] = np.where(direction[p_udp] == 0, rng.integers(20, 301, N)[p_udp],
                           rng.integers(40, 1201, N)[p_udp])
    plen[p_icmp] = 56

    # Sequence numbers: bytes each side sent before this packet, within the flow.
    def before(mask):
        b = np.where(mask, plen, 0)
        c = np.cumsum(b) - b
        return c - c[start[f]]
    cb = before(direction == 0).astype(np.uint64)
    sb = before(direction == 1).astype(np.uint64)
    ic, is_ = isn_c[f], isn_s[f]
    one = np.uint64(1)
    seq_c, seq_s = ic + one + cb, is_ + one + sb
    seq = np.where(direction == 0, seq_c, seq_s)
    ack = np.where(direction == 0, seq_s, seq_c)
    flags = np.where(plen > 0, 0x18, 0x10)
    # handshake
    h0, h1 = hs & (j == 0), hs & (j == 1)      # j == 2, the ACK, is as data
    seq[h0], ack[h0], flags[h0] = ic[h0], 0, 0x02
    seq[h1], ack[h1], flags[h1] = is_[h1], ic[h1] + one, 0x12
    # close: FIN/ACK (client), FIN/ACK (server, acking the client's FIN), ACK (client); or RST/ACK
    fin = close[f] == CLOSE_FIN
    c0, c1, c2 = cl & (ci == 0), cl & (ci == 1), cl & (ci == 2)
    flags[c0] = np.where(fin[c0], 0x11, 0x14)
    flags[c1] = 0x11
    ack[c1] = seq_c[c1] + one
    flags[c2] = 0x10
    seq[c2], ack[c2] = seq_c[c2] + one, seq_s[c2] + one
    seq &= np.uint64(0xFFFFFFFF)
    ack &= np.uint64(0xFFFFFFFF)

    # Times: each flow lives in [start, start + duration] within the first `span` seconds.
    f_start = rng.random(F) * span * 0.5
    f_dur = (span - f_start) * rng.uniform(0.02, 0.95, F)
    gaps = rng.exponential(1.0, N)
    cg = np.cumsum(gaps)
    first = cg[start[f]] - gaps[start[f]]
    tot = (cg[start + count - 1] - (cg[start] - gaps[start]))[f]
    t_us = ((f_start[f] + (cg - first) / tot * f_dur[f]) * 1e6).astype(np.int64)
    # Capture order: by time; a flow's packets keep their order (its times never decrease, ties
    # break on the index within the flow).
    order = np.lexsort((j, f, t_us))
    t_us = t_us + T0_S * 1_000_000

    ip6 = ipv6[f]
    l4_hdr = np.where(p_tcp, 20, 8)
    ip_hdr = np.where(ip6, 40, 20)
    ip_len = ip_hdr + l4_hdr + plen
    frame_len = 14 + ip_len
    l4proto = np.where(p_icmp, np.where(ip6, ICMPV6, ICMP), proto[f])

    # Truth
    pk = np.zeros((F, 2), dtype=np.int64)
    by = np.zeros((F, 2), dtype=np.int64)
    np.add.at(pk, (f, direction), 1)
    np.add.at(by, (f, direction), ip_len)
    truth = Truth(np.where(is_icmp, np.where(ipv6, ICMPV6, ICMP), proto), ipv6, client, server,
                  cport, sport, pk, by)

    # ---- bytes ------------------------------------------------------------------------------
    o_frame = frame_len[order]
    rec_off = np.zeros(N, dtype=np.int64)
    rec_off[1:] = np.cumsum(16 + o_frame)[:-1]
    rec_off += 24
    total = 24 + int((16 + o_frame).sum())
    buf = np.zeros(total, dtype=np.uint8)
    buf[:24] = np.frombuffer(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1), dtype=np.uint8)
    pos = np.empty(N, dtype=np.int64)        # record offset by packet (flow order)
    pos[order] = rec_off
    rh = np.zeros(N, dtype=[("s", "<u4"), ("us", "<u4"), ("cap", "<u4"), ("wire", "<u4")])
    rh["s"], rh["us"] = t_us // 1_000_000, t_us % 1_000_000
    rh["cap"] = rh["wire"] = frame_len
    _scatter(buf, pos, rh.view(np.uint8).reshape(N, 16))

    mac_c = np.zeros((F, 6), dtype=np.uint8)
    mac_c[:, 0] = 0x02
    mac_c[:, 2:6] = (chost + 1).astype(">u4").view(np.uint8).reshape(F, 4)
    mac_r = np.array([0x02, 0x00, 0x5E, 0x00, 0x00, 0x01], dtype=np.uint8)
    csrc = np.where(direction == 0, 0, 1)     # 0: client is the source
    for v6 in (False, True):
        for kind_l4 in ("tcp", "udp", "icmp"):
            sel = (ip6 == v6) & {"tcp": p_tcp, "udp": p_udp, "icmp": p_icmp}[kind_l4]
            idx = np.nonzero(sel)[0]
            if not len(idx):
                continue
            for lo in range(0, len(idx), 1 << 16):
                k = idx[lo:lo + (1 << 16)]
                hdr = _headers(k, v6, kind_l4, f, csrc, client, server, mac_c, mac_r, cport, sport,
                               ip_len, plen, seq, ack, flags, j, icmp_id, l4proto)
                _scatter(buf, pos[k] + 16, hdr)
    return buf, truth


def _headers(k, v6, kind_l4, f, csrc, client, server, mac_c, mac_r, cport, sport, ip_len, plen,
             seq, ack, flags, j, icmp_id, l4proto):
    n = len(k)
    ff = f[k]
    from_c = csrc[k] == 0
    iph = 40 if v6 else 20
    l4h = 20 if kind_l4 == "tcp" else 8
    H = 14 + iph + l4h
    hdr = np.zeros((n, H), dtype=np.uint8)
    mc = mac_c[ff]
    hdr[:, 0:6] = np.where(from_c[:, None], mac_r, mc)
    hdr[:, 6:12] = np.where(from_c[:, None], mc, mac_r)
    src = np.where(from_c[:, None], client[ff], server[ff])
    dst = np.where(from_c[:, None], server[ff], client[ff])
    L = ip_len[k]
    proto = l4proto[k]
    if v6:
        _put16(hdr, 12, 0x86DD)
        hdr[:, 14] = 0x60
        _put16(hdr, 18, L - 40)
        hdr[:, 20] = proto
        hdr[:, 21] = np.where(from_c, 64, 57)
        hdr[:, 22:38] = src
        hdr[:, 38:54] = dst
        pseudo = _words_sum(hdr, 22, 54)
    else:
        _put16(hdr, 12, 0x0800)
        hdr[:, 14] = 0x45
        _put16(hdr, 16, L)
        _put16(hdr, 18, (ff * 7919 + j[k]) & 0xFFFF)
        _put16(hdr, 20, 0x4000)
        hdr[:, 22] = np.where(from_c, 64, 57)
        hdr[:, 23] = proto
        hdr[:, 26:30] = src[:, :4]
        hdr[:, 30:34] = dst[:, :4]
        _put16(hdr, 24, _fold(_words_sum(hdr, 14, 34)))
        pseudo = _words_sum(hdr, 26, 34)
    o = 14 + iph
    l4len = L - iph
    if kind_l4 in ("tcp", "udp"):
        cp, sp = cport[ff], sport[ff]
        _put16(hdr, o, np.where(from_c, cp, sp))
        _put16(hdr, o + 2, np.where(from_c, sp, cp))
        if kind_l4 == "tcp":
            _put32(hdr, o + 4, seq[k])
            _put32(hdr, o + 8, ack[k])
            hdr[:, o + 12] = 0x50
            hdr[:, o + 13] = flags[k]
            _put16(hdr, o + 14, 64240)
            csum_at = o + 16
        else:
            _put16(hdr, o + 4, l4len)
            csum_at = o + 6
        s = _fold(pseudo + proto + l4len + _words_sum(hdr, o, o + l4h))
        if kind_l4 == "udp":
            s = np.where(s == 0, 0xFFFF, s)
        _put16(hdr, csum_at, s)
    else:
        reply = ~from_c
        hdr[:, o] = np.where(reply, 129, 128) if v6 else np.where(reply, 0, 8)
        _put16(hdr, o + 4, icmp_id[ff])
        _put16(hdr, o + 6, j[k] // 2 + 1)
        s = _words_sum(hdr, o, o + 8)
        if v6:
            s = s + pseudo + proto + l4len
        _put16(hdr, o + 2, _fold(s))
    return hdr


def _scatter(buf, pos, rows):
    """buf[pos[i] : pos[i] + width] = rows[i] for every i."""
    width = rows.shape[1]
    buf[(pos[:, None] + np.arange(width)).reshape(-1)] = rows.reshape(-1)


def write(path, n_packets=1_000_000, n_flows=20_000, seed=1, **kw) -> Truth:
    buf, truth = generate(n_packets, n_flows, seed, **kw)
    with open(path, "wb") as fh:
        fh.write(memoryview(buf))
    return truth


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    truth = write(args.out, args.packets, args.flows, args.seed)
    print(f"{args.out}: {args.packets} packets, {len(truth)} flows "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
