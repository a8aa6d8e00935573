"""`fastct bench`: reproducible throughput scenarios on generated traffic (fixed seeds).

Frames are built with numpy, a whole array at a time (no Python loop per packet or per connection;
large inputs are built and processed in chunks of about a million connections, so 10M connections
fit in memory):
- established: N connections are opened (SYN, SYN/ACK, ACK each, not timed), then 54-byte
  Ethernet/IPv4/TCP ACKs of those connections (both directions; uniform or bounded-Zipf
  popularity, `--popularity`) are timed;
- new: a storm of SYNs, each one a new connection, into an empty (prefaulted) table;
- growth: the same storm into a table that starts small and grows: per-batch times, worst included;
- synflood: 10 x max_conns spoofed SYNs into a table holding max_conns / 2 ASSURED connections that
  keep talking (one packet per 16 of the flood): every ASSURED connection must survive (early drop
  evicts only unassured entries) and the cost per packet must stay flat;
- mixed: a realistic mix (see mixed_trace): TCP with handshakes, data both ways, FIN or RST closes,
  UDP request/response, one-way and long bidirectional, ICMP echo; 20 % of flows IPv6; short and
  long flows interleaved in time.  N is the number of flows (connections) the trace opens; the
  figure is over the whole mix, into a fresh prefaulted table of N per repeat and batch size.

Every batch size of `--batch-size 1,32,256,4096` is measured in the same run on the same packets,
alternating the order from repeat to repeat (ratios within one run are what a noisy machine gives
reliably).  With small batches at most MAX_CALLS process() calls are timed per repeat (the result's
`packets` says how many packets that was).

Each result: Mpps (median over repeats of packets / wall time of the process() calls, min and max),
ns/packet (1000 / median Mpps), bytes per connection (Tracker.memory_bytes(): entry and cold memory
reserved for max_conns plus the index as grown, divided by the scenario's connections: N, or for
synflood the table size), and the process's peak RSS so far (getrusage ru_maxrss: the largest of
everything the process ran, including earlier scenarios and the generated packets, not this
scenario alone; run one scenario and size per process to attribute it).  `--json` prints the same
as one JSON object per line, with the scenario, conns, batch_size, packets (timed per repeat),
repeats, seconds_median/min/max, seed, version and each scenario's own fields; setup_seconds is the
untimed preparation (generating traffic, opening the connections).

Every scenario builds its Tracker through make_tracker(options, ...), the one place where tracker
configuration (seed, later NAT) comes from the command line.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from fastct import _engine
from fastct._version import __version__
from fastct.batch import Batch
from fastct.tracker import Tracker

FRAME = 54
T0 = 1_700_000_000 * 10**9
MAX_CALLS = 100_000           # process() calls timed per repeat at most (matters for batch sizes < 20)
CHUNK_CONNS = 1 << 20         # connections whose frames are built at once (memory: ~250 B each)
_TEMPLATE = bytes.fromhex(
    "020000000002" "020000000001" "0800"                      # Ethernet
    "45000028" "00004000" "40060000" "0a000001" "0a000002"    # IPv4, 40 bytes, TCP
    "04000800" "00000000" "00000000" "5010ffff" "00000000"    # TCP
)


# ---- options and the tracker ----------------------------------------------------------------
@dataclass(frozen=True)
class BenchOptions:
    """What every scenario is run with (from the command line, or built directly in Python)."""
    seed: int = 1
    packets: int = 2_000_000                 # timed packets per repeat (established)
    batch_sizes: tuple[int, ...] = (256,)
    repeats: int = 5
    popularity: tuple[str, ...] = ("uniform",)   # established: "uniform" or "zipf:S"
    nat: str = "off"                         # established, new: "off" or "dnat" (see NAT_MODES)
    stages: bool = False                     # established, new: time the batch loop's stages too


def make_tracker(opts: BenchOptions, max_conns: int, prefault: bool = False) -> Tracker:
    """The one place scenarios (and benchmarks/bench_engine.py) build a Tracker.  The table size and
    prefault are the scenario's; everything else comes from `opts`.  NAT plugs in here: a `nat`
    field in BenchOptions (set from a `--nat` option in options_from_args) configures the tracker
    below, and every scenario then runs with NAT on or off alike."""
    nat = None
    if opts.nat == "dnat":
        from fastct.nat import NatRule, NatRules
        nat = NatRules([NatRule(action="dnat", proto="tcp", to_min=_ip_text(NAT_BACKEND[0]),
                                to_ports=int(NAT_BACKEND[1]))])
    tracker = Tracker(max_conns=max_conns, seed=opts.seed, prefault=prefault, nat=nat)
    if opts.stages:
        tracker._engine.set_options(stage_clock=True)
    if opts.nat == "rules":
        tracker.load_nft(RULES_NFT.format(backend=_ip_text(NAT_BACKEND[0]), port=NAT_BACKEND[1]),
                         source="bench")
    return tracker


# NAT on: every TCP connection is DNAT'd to one backend (a load balancer's VIP traffic), so each gets
# a translated reply tuple, a second index slot and rewritten packets in both directions; the
# backend answers from its own address and port, as it would behind the gateway.
# "rules": the same DNAT from an nftables ruleset, with the chains a gateway typically has around it
# and that every packet walks: a raw chain (a notrack rule that matches nothing here) and a filter
# chain counting established packets; so it measures what a ruleset costs per packet.
NAT_MODES = ("off", "dnat", "rules")
NAT_BACKEND = (0x0AFF0001, 8443)          # 10.255.0.1:8443
RULES_NFT = """table ip bench {{
    chain raw {{
        type filter hook prerouting priority raw; policy accept;
        udp dport 53 notrack
    }}
    chain filter {{
        type filter hook prerouting priority filter; policy accept;
        ct state established counter
    }}
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport 1-65535 dnat to {backend}:{port}
    }}
}}
"""


def _ip_text(value: int) -> str:
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


def _reply_side(opts: BenchOptions | None):
    """Where reply-direction frames come from under this NAT mode (None: the server itself)."""
    return NAT_BACKEND if opts is not None and opts.nat in ("dnat", "rules") else None


def parse_popularity(text: str) -> float:
    """'uniform' -> 0.0, 'zipf' -> 1.0, 'zipf:S' -> S (S >= 0; 0 is uniform)."""
    text = text.strip().lower()
    if text == "uniform":
        return 0.0
    m = re.fullmatch(r"zipf(?::([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?))?", text)
    if not m:
        raise ValueError(f"popularity must be uniform, zipf or zipf:S, not {text!r}")
    return float(m.group(1)) if m.group(1) else 1.0


def popularity_label(s: float) -> str:
    return "uniform" if not s else f"zipf:{s:g}"


# ---- TCP frames for the established / new / growth / synflood scenarios ------------------------
def make_frames(client_ip, server_ip, sport, dport, from_client, flags, seq, ack, ts_ns, reply_from=None):
    """Build a Batch of TCP frames from per-packet arrays (all vectorised).  `reply_from` (ip, port):
    the server side of reply-direction frames, when NAT put the server elsewhere."""
    n = len(client_ip)
    frames = np.tile(np.frombuffer(_TEMPLATE, dtype=np.uint8), (n, 1))
    reply_ip, reply_port = reply_from if reply_from is not None else (server_ip, dport)
    src = np.where(from_client, client_ip, reply_ip).astype(">u4")
    dst = np.where(from_client, server_ip, client_ip).astype(">u4")
    sp = np.where(from_client, sport, reply_port).astype(">u2")
    dp = np.where(from_client, dport, sport).astype(">u2")
    frames[:, 26:30] = src.view(np.uint8).reshape(n, 4)
    frames[:, 30:34] = dst.view(np.uint8).reshape(n, 4)
    frames[:, 34:36] = sp.view(np.uint8).reshape(n, 2)
    frames[:, 36:38] = dp.view(np.uint8).reshape(n, 2)
    frames[:, 38:42] = np.asarray(seq, dtype=">u4").view(np.uint8).reshape(n, 4)
    frames[:, 42:46] = np.asarray(ack, dtype=">u4").view(np.uint8).reshape(n, 4)
    frames[:, 47] = flags
    offsets = np.arange(n, dtype=np.int64) * FRAME
    lens = np.full(n, FRAME, dtype=np.uint32)
    return Batch(frames.reshape(-1), offsets, lens, lens.copy(), np.asarray(ts_ns, dtype=np.int64),
                 np.zeros(n, dtype=np.uint16), np.array([1], dtype=np.uint32), np.zeros(1, dtype=np.uint32))


def conn_endpoints(n_conns, rng):
    idx = np.arange(n_conns, dtype=np.int64)
    client = (0x0A000000 + (idx // 60000) * 256 + 1).astype(np.uint32)     # 10.x.y.1
    server = (0xC0A80000 + rng.integers(1, 250, n_conns)).astype(np.uint32)
    sport = (1024 + idx % 60000).astype(np.uint32)
    dport = np.full(n_conns, 443, dtype=np.uint32)
    return client, server, sport, dport


def _handshake_frames(conns, t0, reply_from=None):
    c, s, sp, dp = conns
    n_conns = len(c)
    rep = lambda a: np.repeat(a, 3)
    from_client = np.tile(np.array([True, False, True]), n_conns)
    flags = np.tile(np.array([0x02, 0x12, 0x10], dtype=np.uint8), n_conns)
    seq = np.tile(np.array([1000, 5000, 1001], dtype=np.uint32), n_conns)
    ack = np.tile(np.array([0, 1001, 5001], dtype=np.uint32), n_conns)
    ts = t0 + np.arange(3 * n_conns, dtype=np.int64)
    return make_frames(rep(c), rep(s), rep(sp), rep(dp), from_client, flags, seq, ack, ts, reply_from)


def handshake(n_conns, rng, t0):
    """SYN, SYN/ACK, ACK for each connection, in that order per connection, all conns interleaved."""
    conns = conn_endpoints(n_conns, rng)
    return _handshake_frames(conns, t0), conns


def open_connections(tracker, n_conns, rng, t0, chunk=CHUNK_CONNS, reply_from=None):
    """Open n_conns connections in `tracker` by their handshakes: the frames handshake() would
    build, made and processed `chunk` connections at a time so memory stays bounded.
    Returns (endpoints, the time just after the last handshake packet)."""
    conns = conn_endpoints(n_conns, rng)
    for lo in range(0, n_conns, chunk):
        hi = min(n_conns, lo + chunk)
        _time_process(tracker, _handshake_frames(tuple(a[lo:hi] for a in conns), t0 + 3 * lo, reply_from),
                      4096)
    return conns, int(t0 + 3 * n_conns)


@lru_cache(maxsize=2)
def _zipf_cdf(n_items: int, s: float) -> np.ndarray:
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


def zipf_ranks(n_items, s, n_samples, rng):
    """`n_samples` ranks in 0..n_items-1 with P(rank k) proportional to (k + 1) ** -s: the bounded
    Zipf distribution (any s >= 0; s = 0 is uniform), by inverse CDF (vectorised)."""
    ranks = np.searchsorted(_zipf_cdf(int(n_items), float(s)), rng.random(n_samples), side="right")
    return np.minimum(ranks, n_items - 1)


def established_traffic(conns, n_packets, rng, t0, zipf=None, reply_from=None):
    """ACKs of the open connections `conns`, either direction with equal chance.  Which connection
    each packet belongs to: uniform, or bounded Zipf with exponent `zipf` (ranks mapped to
    connections by a random permutation, so the popular ones are spread over the table)."""
    c, s, sp, dp = conns
    n_conns = len(c)
    if zipf:
        pick = zipf_ranks(n_conns, zipf, n_packets, rng)
        pick = rng.permutation(n_conns)[pick]
    else:
        pick = rng.integers(0, n_conns, n_packets)
    from_client = rng.random(n_packets) < 0.5
    seq = np.where(from_client, 1001, 5001).astype(np.uint32)
    ack = np.where(from_client, 5001, 1001).astype(np.uint32)
    flags = np.full(n_packets, 0x10, dtype=np.uint8)
    ts = t0 + np.arange(n_packets, dtype=np.int64)
    return make_frames(c[pick], s[pick], sp[pick], dp[pick], from_client, flags, seq, ack, ts, reply_from)


def syn_storm(n_conns, rng, t0=T0):
    """One SYN per connection, each a new connection."""
    c, s, sp, dp = conn_endpoints(n_conns, rng)
    return make_frames(c, s, sp, dp, np.ones(n_conns, dtype=bool), np.full(n_conns, 2, dtype=np.uint8),
                       np.full(n_conns, 1000, dtype=np.uint32), np.zeros(n_conns, dtype=np.uint32),
                       t0 + np.arange(n_conns, dtype=np.int64))


def synflood_part(conns, n_flood, rng, t0, first=0, random_tuples=False):
    """Flood packets first..first+n_flood-1 of a SYN flood: spoofed SYNs (100.x.y.z to
    192.168.0.1:80; with random_tuples, to random addresses 172.16-31.x.y and ports too), with one
    established packet of `conns` after every 16th flood packet (counted from the flood's start, so
    the parts of a flood built in pieces add up to the whole); established packets are marked by
    wirelen FRAME + 1."""
    src = (0x64000000 + rng.integers(0, 1 << 24, n_flood)).astype(np.uint32)    # 100.x.y.z
    if random_tuples:
        dst = (0xAC100000 + rng.integers(0, 1 << 20, n_flood)).astype(np.uint32)  # 172.16-31.x.y
        dport = rng.integers(1, 65536, n_flood).astype(np.uint32)
    else:
        dst = np.full(n_flood, 0xC0A80001, dtype=np.uint32)
        dport = np.full(n_flood, 80, dtype=np.uint32)
    sport = rng.integers(1024, 65535, n_flood).astype(np.uint32)
    flood = make_frames(src, dst, sport, dport, np.ones(n_flood, dtype=bool),
                        np.full(n_flood, 2, dtype=np.uint8), rng.integers(0, 1 << 32, n_flood, dtype=np.uint64),
                        np.zeros(n_flood, dtype=np.uint32), t0 + np.arange(n_flood, dtype=np.int64))
    i0, i1 = first // 16, (first + n_flood) // 16
    after = np.arange(i0, i1, dtype=np.int64) * 16 + 15 - first      # the flood packet each one follows
    est = established_traffic(conns, i1 - i0, rng, 0)
    return _interleave(flood, est, after)


def _interleave(a, b, after):
    """One Batch with b's packets among a's, b's i-th just after a's packet after[i] (at its time);
    b's packets are marked by wirelen FRAME + 1 (the engine counts IP lengths, so the mark changes
    nothing it measures)."""
    order = np.argsort(np.concatenate([np.arange(len(a), dtype=np.float64), after + 0.5]), kind="stable")
    buf = np.concatenate([a.buf, b.buf])
    offsets = np.concatenate([a.offsets, b.offsets + len(a.buf)])[order]
    caplen = np.concatenate([a.caplen, b.caplen])[order]
    wirelen = np.concatenate([a.wirelen, b.wirelen + 1])[order]
    ts = np.concatenate([a.ts, a.ts[after]])[order]
    return Batch(buf, offsets, caplen, wirelen, ts, np.zeros(len(order), dtype=np.uint16), a.if_linktype,
                 a.if_fcslen)


# ---- the mixed profile ------------------------------------------------------------------------
MIX_KINDS = ("tcp_short", "tcp_rst", "tcp_long", "udp_reqresp", "udp_oneway", "udp_long", "icmp_echo")
K_TCP_SHORT, K_TCP_RST, K_TCP_LONG, K_UDP_RR, K_UDP_ONEWAY, K_UDP_LONG, K_ICMP = range(7)
# Share of flows of each kind: most flows are short (web requests, DNS), most packets are in the
# few long ones.
MIX_SHARES = (0.40, 0.05, 0.05, 0.30, 0.08, 0.04, 0.08)
# Mean gap between a flow's consecutive packets (exponential), ns.
MIX_GAP_NS = (5e6, 5e6, 2e6, 5e6, 20e6, 30e6, 250e6)
IPV6_SHARE = 0.20
FLOW_RATE = 100_000           # new flows per second of trace time
N_SERVERS = 250
CLOSE_FIN, CLOSE_RST_SERVER, CLOSE_RST_CLIENT, CLOSE_NONE = range(4)
MIX_STRIDE = 88               # the largest frame slot (headers only, as captured with a short snaplen)
MIX_CHUNK_FLOWS = 1 << 14     # flows whose packets are computed at once (temporaries of ~2 MB,
MIX_CHUNK_PACKETS = 1 << 16   # which malloc reuses: fresh memory costs ~2-3 ms per MB here)
_MIX_PACKET = np.dtype([("flow", "<i4"), ("seq", "<u4"), ("ack", "<u4"), ("paylen", "<u2"), ("flags", "u1"),
                        ("from_client", "?")])
_SYN_OPTIONS = bytes.fromhex("020405b4" "0402" "0101")      # MSS 1460, SACK permitted, NOP NOP


@dataclass
class MixedTrace:
    """A generated mix: the packets in time order, and for each packet its flow and direction."""
    batch: Batch
    flow: np.ndarray         # int32 per packet: flow number within this trace
    from_client: np.ndarray  # bool per packet: sent by the flow's initiator
    kind: np.ndarray         # uint8 per flow: index into MIX_KINDS
    ipv6: np.ndarray         # bool per flow
    close: np.ndarray        # uint8 per flow: CLOSE_* (TCP only)
    _summary: dict | None = field(default=None, repr=False)

    def summary(self) -> dict:
        """Flows, packets, packets per flow, and the share of packets that are TCP, UDP, ICMP, IPv6."""
        if self._summary is not None:
            return self._summary
        k = self.kind[self.flow]
        n = max(len(self.flow), 1)
        self._summary = {"flows": int(len(self.kind)), "packets": int(len(self.flow)),
                "packets_per_flow": len(self.flow) / max(len(self.kind), 1),
                "tcp": float(np.count_nonzero(k <= K_TCP_LONG) / n),
                "udp": float(np.count_nonzero((k >= K_UDP_RR) & (k <= K_UDP_LONG)) / n),
                "icmp": float(np.count_nonzero(k == K_ICMP) / n),
                "ipv6": float(np.count_nonzero(self.ipv6[self.flow]) / n)}
        return self._summary


def mixed_trace(n_flows, rng, t0=T0, first_flow=0) -> MixedTrace:
    """n_flows flows of the mixed profile, starting uniformly over n_flows / FLOW_RATE seconds from
    t0, all packets in time order.  Flow kinds (MIX_KINDS, shares MIX_SHARES):
    - tcp_short: SYN (MSS, SACK-permitted), SYN/ACK, ACK; 1-3 rounds of client data then server
      data (each acking the other's); FIN/ACK from the client, FIN/ACK from the server, last ACK;
    - tcp_rst: handshake, one round, then RST/ACK from the server or a RST from the client;
    - tcp_long: handshake, 10-200 rounds (log-uniform); 70 % FIN-closed, 30 % still open at the end;
    - udp_reqresp: a DNS-like query and its answer;
    - udp_oneway: 1-20 datagrams one way (syslog-like), never answered;
    - udp_long: 10-100 datagrams (log-uniform), the first from the client, then either way;
    - icmp_echo: 1-4 echo requests, each answered.
    IPv4 or (IPV6_SHARE of the flows) IPv6.  Sequence numbers, acks and lengths are consistent
    (in window).  Frames hold the headers only (caplen 42-82), with the wire length and IP length
    of the full packet, as a capture with a short snaplen; frames follow one another in memory
    in time order, each at an 8-byte aligned offset.
    Servers: N_SERVERS addresses (192.168.0.x / 2001:db8:ffff::x) on port 443, 80, 53 or 514.

    Built with numpy over MIX_CHUNK_FLOWS flows (then packets) at a time, so the temporaries stay
    small and are reused: the output arrays are all that grows with n_flows."""
    F = int(n_flows)
    kind = rng.choice(len(MIX_KINDS), size=F, p=np.array(MIX_SHARES) / sum(MIX_SHARES)).astype(np.uint8)
    ipv6 = rng.random(F) < IPV6_SHARE
    start = t0 + (rng.random(F) * (F / FLOW_RATE * 1e9)).astype(np.int64)
    server = rng.integers(0, N_SERVERS, F)
    u = rng.random(F)
    log_uniform = lambda lo, hi: np.exp(rng.uniform(np.log(lo), np.log(hi + 1), F)).astype(np.int64)
    rounds = np.where(kind == K_TCP_SHORT, rng.integers(1, 4, F), 1)
    rounds = np.where(kind == K_TCP_LONG, log_uniform(10, 200), rounds)
    close = np.full(F, CLOSE_FIN, dtype=np.uint8)
    close[kind == K_TCP_RST] = np.where(u[kind == K_TCP_RST] < 0.5, CLOSE_RST_SERVER, CLOSE_RST_CLIENT)
    close[(kind == K_TCP_LONG) & (u < 0.3)] = CLOSE_NONE
    count = np.select([kind == K_UDP_ONEWAY, kind == K_UDP_LONG, kind == K_ICMP],
                      [rng.integers(1, 21, F), log_uniform(10, 100), rng.integers(1, 5, F)], 0)
    close_len = np.choose(close, [3, 1, 1, 0])
    npk = np.select([kind <= K_TCP_LONG, kind == K_UDP_RR, kind == K_ICMP],
                    [3 + 2 * rounds + close_len, 2, 2 * count], count).astype(np.int64)
    clen = np.select([kind <= K_TCP_LONG, kind == K_UDP_RR, kind == K_UDP_ONEWAY, kind == K_UDP_LONG],
                     [rng.integers(40, 600, F), rng.integers(30, 80, F), rng.integers(50, 300, F),
                      rng.integers(100, 1200, F)], 56).astype(np.uint32)
    slen = np.select([kind <= K_TCP_LONG, kind == K_UDP_RR, kind == K_UDP_LONG],
                     [rng.integers(100, 1449, F), rng.integers(60, 500, F), rng.integers(100, 1200, F)],
                     56).astype(np.uint32)
    isn_c = rng.integers(0, 1 << 32, F, dtype=np.uint64).astype(np.uint32)
    isn_s = rng.integers(0, 1 << 32, F, dtype=np.uint64).astype(np.uint32)
    dirbits = rng.integers(0, 1 << 63, F, dtype=np.int64)          # udp_long: who sends packet s
    gap_mean = np.asarray(MIX_GAP_NS)[kind]
    https = rng.random(F) < 0.8
    dport = np.select([kind <= K_TCP_LONG, kind == K_UDP_RR, kind == K_UDP_ONEWAY, kind == K_UDP_LONG],
                      [np.where(https, 443, 80), 53, 514, 443], 0).astype(np.uint32)
    del u, https, count, close_len

    # Packets in flow order: direction, TCP fields, length, time.
    P = int(npk.sum())
    first = np.cumsum(npk) - npk
    pk = np.empty(P, dtype=_MIX_PACKET)     # one record per packet: one gather into time order
    ts_f = np.empty(P, dtype=np.int64)
    close_flags = np.array([0x11, 0x11, 0x10, 0x14, 0x14, 0x14, 0x04, 0x04, 0x04, 0, 0, 0], dtype=np.uint8)
    for a in range(0, F, MIX_CHUNK_FLOWS):
        b = min(F, a + MIX_CHUNK_FLOWS)
        n = npk[a:b]
        lo, hi = int(first[a]), int(first[a] + n.sum())
        rep = lambda x: np.repeat(x[a:b], n)
        flow = np.repeat(np.arange(a, b, dtype=np.int32), n)
        step = (np.arange(lo, hi, dtype=np.int64) - rep(first)).astype(np.int32)
        k = rep(kind)
        gaps = (1 + rng.exponential(1.0, hi - lo) * rep(gap_mean)).astype(np.int64)
        ts = np.cumsum(gaps)
        ts += np.repeat(start[a:b] - ts[first[a:b] - lo], n)     # each flow's first packet at its start
        ts_f[lo:hi] = ts
        out = pk[lo:hi]
        out["flow"] = flow
        # TCP: step 0 SYN, 1 SYN/ACK, 2 ACK, then d = step - 3 < 2r alternating client data (even d)
        # and server data (odd d), then the close: FIN/ACK, FIN/ACK, ACK, or one RST.  Each side's
        # sequence number counts its SYN, its data segments so far and its FIN; the ack is the
        # other side's.
        r = rep(rounds).astype(np.int32)
        cl = rep(close)
        lc, ls = rep(clen), rep(slen)
        d = np.minimum(np.maximum(step - 3, 0), 2 * r)
        cseg, sseg = ((d + 1) // 2).astype(np.uint32), (d // 2).astype(np.uint32)
        kc = step - 3 - 2 * r
        in_close = kc >= 0
        fin = cl == CLOSE_FIN
        cfin, sfin = fin & (kc >= 1), fin & (kc >= 2)
        fc = np.where(step < 3, step != 1,
                      np.where(in_close, np.where(fin, kc != 1, cl == CLOSE_RST_CLIENT), (step - 3) % 2 == 0))
        c0, s0 = rep(isn_c), rep(isn_s)
        with np.errstate(over="ignore"):        # sequence numbers wrap modulo 2**32
            cpos = c0 + cseg * lc + cfin        # client's SYN not yet counted
            spos = s0 + sseg * ls + sfin
            seq = np.where(fc, cpos + (step > 0), spos + (step > 1))
            ack = np.where(fc, spos + 1, cpos + 1)
        flags = np.where(step == 0, 0x02, np.where(step == 1, 0x12, np.where(
            in_close, close_flags[cl.astype(np.intp) * 3 + np.minimum(np.maximum(kc, 0), 2)],
            np.where(step == 2, 0x10, 0x18)))).astype(np.uint8)
        ack[(flags & 0x10) == 0] = 0
        paylen = np.where(in_close | (step < 3), 0, np.where(fc, lc, ls))
        # UDP and ICMP.
        udp_long = k == K_UDP_LONG
        fc = np.where(k == K_UDP_RR, step == 0, fc)
        fc = np.where(k == K_UDP_ONEWAY, True, fc)
        fc = np.where(udp_long, (step == 0) | ((rep(dirbits) >> (step % 63)) & 1).astype(bool), fc)
        fc = np.where(k == K_ICMP, step % 2 == 0, fc)
        tcp = k <= K_TCP_LONG
        paylen = np.where(tcp, paylen, np.where(fc, lc, ls))
        seq = np.where(k == K_ICMP, step // 2 + 1, seq)             # ICMP: the echo sequence number
        out["from_client"] = fc
        out["seq"] = seq
        out["ack"] = np.where(tcp, ack, 0)
        out["flags"] = np.where(tcp, flags, 0)
        out["paylen"] = paylen
    del start, gap_mean, rounds, isn_c, isn_s, dirbits

    # Addresses and ports: flow g has client host g % 16384 (10.a.b.1 / 2001:db8::a.b:0:1) and port
    # 1024 + (g // 16384) * 97 % 64000, a pair no other flow of the first 16384 * 64000 has.
    gid = first_flow + np.arange(F, dtype=np.int64)
    host = gid % 16384
    c_port = (1024 + (gid // 16384) * 97 % 64000).astype(np.uint32)
    c4 = (0x0A000000 + (host << 8) + 1).astype(np.uint32)
    s4 = (0xC0A80001 + server).astype(np.uint32)
    c6lo = ((host << 32) + 1).astype(np.uint64)
    s6lo = (server + 1).astype(np.uint64)
    del gid, host, server

    # Time order (a stable sort by time), then the frames, a chunk of packets at a time.
    order, ts = _stable_order(ts_f)
    # Frames one after the other, each in a slot of its header length rounded up to 8 bytes (the
    # buffer is sized for the largest; pages never written are never touched).
    buf = np.zeros(P * MIX_STRIDE, dtype=np.uint8)
    words = buf.view(np.uint64)
    offsets = np.empty(P, dtype=np.int64)
    end = 0
    caplen = np.empty(P, dtype=np.uint32)
    wirelen = np.empty(P, dtype=np.uint32)
    flow_t = np.empty(P, dtype=np.int32)
    fc_t = np.empty(P, dtype=bool)
    for lo in range(0, P, MIX_CHUNK_PACKETS):
        hi = min(P, lo + MIX_CHUNK_PACKETS)
        rec = pk[order[lo:hi]]
        f, fc = rec["flow"], rec["from_client"]
        seq, ack, flags, paylen = rec["seq"], rec["ack"], rec["flags"], rec["paylen"]
        flow_t[lo:hi], fc_t[lo:hi] = f, fc
        k, v6p = kind[f], ipv6[f]
        tcp, icmp = k <= K_TCP_LONG, k == K_ICMP
        syn_opt = (flags & 0x02) != 0
        cap = 14 + np.where(v6p, 40, 20) + np.where(tcp, np.where(syn_opt, 28, 20), 8)
        slot = (cap + 7) & ~7
        offsets[lo:hi] = end + np.cumsum(slot) - slot
        end += int(slot.sum())
        for is6 in (False, True):
            for mask, proto, l4hdr in ((tcp & ~syn_opt, 6, 20), (syn_opt, 6, 28), (~tcp & ~icmp, 17, 8),
                                       (icmp, 1, 8)):
                rows = np.flatnonzero(mask & (v6p == is6))
                if len(rows) == 0:
                    continue
                g, gc = f[rows], fc[rows]
                cport, sport = c_port[g], dport[g]
                rec = _mixed_template(is6, proto, l4hdr, len(rows))
                h = rec.view(_mixed_dtype(is6, proto))
                l4len = l4hdr + paylen[rows].astype(np.uint32)
                if is6:
                    h["plen"] = l4len
                    h["src_hi"] = np.where(gc, _C6_HI, _S6_HI)
                    h["dst_hi"] = np.where(gc, _S6_HI, _C6_HI)
                    h["src_lo"] = np.where(gc, c6lo[g], s6lo[g])
                    h["dst_lo"] = np.where(gc, s6lo[g], c6lo[g])
                else:
                    h["totlen"] = 20 + l4len
                    h["src"] = np.where(gc, c4[g], s4[g])
                    h["dst"] = np.where(gc, s4[g], c4[g])
                if proto == 1:
                    h["type"] = np.where(gc, 128, 129) if is6 else np.where(gc, 8, 0)
                    h["id"] = cport
                    h["seq"] = seq[rows]
                else:
                    h["sport"] = np.where(gc, cport, sport)
                    h["dport"] = np.where(gc, sport, cport)
                    if proto == 6:
                        h["seq"] = seq[rows]
                        h["ack"] = ack[rows]
                        h["flags"] = flags[rows]
                    else:
                        h["len"] = l4len
                hl = 14 + (40 if is6 else 20) + l4hdr
                w = (hl + 7) // 8
                at = (offsets[lo + rows] // 8)[:, None] + np.arange(w)
                words[at] = rec.view(np.uint64).reshape(len(rows), MIX_STRIDE // 8)[:, :w]
                caplen[lo + rows] = hl
                wirelen[lo + rows] = 14 + (40 if is6 else 20) + l4len
    del order, pk
    batch = Batch(buf[:max(end, 1)], offsets, caplen, wirelen, ts, np.zeros(P, dtype=np.uint16),
                  np.array([1], dtype=np.uint32), np.zeros(1, dtype=np.uint32))
    return MixedTrace(batch, flow_t, fc_t, kind, ipv6, close)


_C6_HI = np.uint64(0x20010DB800000000)      # 2001:db8::/64, clients
_S6_HI = np.uint64(0x20010DB8FFFF0000)      # 2001:db8:ffff::/64, servers


def _stable_order(ts):
    """(np.argsort(ts, kind="stable"), ts sorted), through a plain sort of (ts - min) * 2**b + index
    when that fits in 63 bits (several times faster on tens of millions of packets; the same
    order).  `ts` is overwritten."""
    n = len(ts)
    t_min = int(ts.min()) if n else 0
    span = int(ts.max()) - t_min if n else 0
    b = max(1, (n - 1).bit_length())
    if span.bit_length() + b > 63:
        order = np.argsort(ts, kind="stable")
        return order, ts[order]
    ts -= t_min
    ts <<= b
    ts |= np.arange(n, dtype=np.int64)
    ts.sort()
    order = ts & ((1 << b) - 1)
    ts >>= b
    ts += t_min
    return order, ts


@lru_cache(maxsize=None)
def _mixed_dtype(is6, proto):
    """The per-packet fields of one header layout, as a structured dtype over a MIX_STRIDE slot."""
    l3 = 40 if is6 else 20
    o = 14 + l3
    fields = ({"plen": (">u2", 18), "src_hi": (">u8", 22), "src_lo": (">u8", 30), "dst_hi": (">u8", 38),
               "dst_lo": (">u8", 46)} if is6 else {"totlen": (">u2", 16), "src": (">u4", 26), "dst": (">u4", 30)})
    if proto == 6:
        fields.update(sport=(">u2", o), dport=(">u2", o + 2), seq=(">u4", o + 4), ack=(">u4", o + 8),
                      flags=("u1", o + 13))
    elif proto == 17:
        fields.update(sport=(">u2", o), dport=(">u2", o + 2), len=(">u2", o + 4))
    else:
        fields.update(type=("u1", o), id=(">u2", o + 4), seq=(">u2", o + 6))
    return np.dtype({"names": list(fields), "formats": [f for f, _ in fields.values()],
                     "offsets": [off for _, off in fields.values()], "itemsize": MIX_STRIDE})


@lru_cache(maxsize=None)
def _mixed_header_bytes(is6, proto, l4hdr):
    """The constant bytes of one header layout (MACs, IP version, TTL, protocol, TCP header length,
    window 65535 without scaling, SYN options), padded to MIX_STRIDE."""
    h = bytearray(MIX_STRIDE)
    h[0:12] = bytes.fromhex("020000000002" "020000000001")
    if is6:
        h[12:14], h[14], h[20], h[21] = b"\x86\xdd", 0x60, 58 if proto == 1 else proto, 64
    else:
        h[12:14], h[14], h[20], h[22], h[23] = b"\x08\x00", 0x45, 0x40, 64, proto      # DF, TTL 64
    o = 14 + (40 if is6 else 20)
    if proto == 6:
        h[o + 12] = (l4hdr // 4) << 4
        h[o + 14:o + 16] = b"\xff\xff"
        h[o + 20:o + l4hdr] = _SYN_OPTIONS[:l4hdr - 20]
    return bytes(h)


def _mixed_template(is6, proto, l4hdr, n):
    row = np.frombuffer(_mixed_header_bytes(is6, proto, l4hdr), dtype=np.uint8)
    return np.tile(row, (n, 1)).view(np.dtype((np.void, MIX_STRIDE))).reshape(n)


def mixed_segments(n_flows, seed=1, segment_flows=CHUNK_CONNS):
    """The mixed trace of n_flows flows as consecutive segments of at most `segment_flows` flows
    (each from its own generator, seeded by (seed, segment number)); each segment starts just
    after the previous one's last packet, so the whole is in time order.  Yields MixedTrace."""
    n_seg = max(1, -(-int(n_flows) // segment_flows))
    t0, done = T0, 0
    for k in range(n_seg):
        n = n_flows * (k + 1) // n_seg - done
        trace = mixed_trace(n, np.random.default_rng([seed, 0x6D6978, k]), t0, first_flow=done)
        done += n
        t0 = int(trace.batch.ts[-1]) + 1000
        yield trace
        del trace           # before the next segment is built


# ---- timing ---------------------------------------------------------------------------------
def _time_process(tracker, batch, batch_size, stages=None):
    """Seconds to process `batch` in calls of batch_size packets.  With a list `stages` (and the
    tracker's stage clock on), appends the nanoseconds per packet each stage of the batch loop
    took: the clock's ticks are converted by its rate over this same interval."""
    n = len(batch)
    if stages is not None:
        k0, c0 = tracker._engine.stage_ticks(), _engine.clock()
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        tracker.process(batch.slice(start, min(n, start + batch_size)))
    dt = time.perf_counter() - t0
    if stages is not None:
        k1, c1 = tracker._engine.stage_ticks(), _engine.clock()
        ticks_per_ns = (c1 - c0) / (dt * 1e9)
        stages.append([(b - a) / ticks_per_ns / n for a, b in zip(k0, k1)])
    return dt


STAGE_NAMES = ("parse", "index", "update")     # the batch loop's stages 1-3 (fastct/_engine.pyx)


def _stage_fields(stages) -> dict:
    """The median over repeats of each stage's ns per packet, for a result; {} when not timed."""
    if not stages:
        return {}
    return {"stage_ns": {name: float(np.median([s[i] for s in stages])) for i, name in enumerate(STAGE_NAMES)}}


def timed_packets(n_packets, batch_size):
    """How many packets a repeat times: all, or MAX_CALLS batches' worth for small batches."""
    return min(n_packets, batch_size * MAX_CALLS)


def _rotated(seq, r):
    r %= len(seq)
    return list(seq[r:]) + list(seq[:r])


def scenario_established(n_conns, opts: BenchOptions):
    """Returns [(popularity, batch size, packets, times, extra)] and the tracker.  The same table
    (opened untimed) serves every popularity and batch size; each repeat draws new traffic per
    popularity and times it at every batch size (shifted in time), in a rotating order."""
    t_setup = time.perf_counter()
    rng = np.random.default_rng(opts.seed)
    tracker = make_tracker(opts, max(n_conns, 1024))
    conns, t_next = open_connections(tracker, n_conns, rng, T0, reply_from=_reply_side(opts))
    setup = time.perf_counter() - t_setup
    pops = [parse_popularity(p) for p in opts.popularity]
    times = {(p, b): [] for p in pops for b in opts.batch_sizes}
    stages = {(p, b): ([] if opts.stages else None) for p in pops for b in opts.batch_sizes}
    for rep in range(opts.repeats):
        for p in pops:
            traffic = established_traffic(conns, opts.packets, rng, t_next, p, _reply_side(opts))
            # NAT rewrites the frames in place: each pass gets them as they arrived (untimed copy).
            pristine = traffic.buf.copy() if opts.nat != "off" else None
            for b in _rotated(opts.batch_sizes, rep):
                n = timed_packets(opts.packets, b)
                if pristine is not None:
                    traffic.buf[:] = pristine
                traffic.ts += t_next - int(traffic.ts[0])
                times[(p, b)].append(_time_process(tracker, traffic.slice(0, n), b, stages[(p, b)]))
                t_next = int(traffic.ts[n - 1]) + 1
            del traffic
    out = [(p, b, timed_packets(opts.packets, b), times[(p, b)],
            {"setup_seconds": setup, "nat": opts.nat, **_stage_fields(stages[(p, b)])})
           for p in pops for b in opts.batch_sizes]
    return out, tracker


def scenario_new(n_conns, opts: BenchOptions):
    """A SYN storm into a fresh prefaulted table per repeat and batch size.  Returns
    [(batch size, packets, times, table bytes)]."""
    batch = syn_storm(n_conns, np.random.default_rng(opts.seed))
    pristine = batch.buf.copy() if opts.nat != "off" else None      # (NAT rewrites the SYNs)
    times = {b: [] for b in opts.batch_sizes}
    stages = {b: ([] if opts.stages else None) for b in opts.batch_sizes}
    table = {}
    for rep in range(opts.repeats):
        for b in _rotated(opts.batch_sizes, rep):
            if pristine is not None:
                batch.buf[:] = pristine
            tracker = None          # the previous table goes before the next is allocated
            # Entry memory is touched before timing (prefault): the storm measures tracking, not the
            # kernel zeroing fresh pages (~250 ns per connection on this kind of machine).
            tracker = make_tracker(opts, max(n_conns, 1024), prefault=True)
            times[b].append(_time_process(tracker, batch.slice(0, timed_packets(n_conns, b)), b, stages[b]))
            table[b] = tracker.memory_bytes()
    return [(b, timed_packets(n_conns, b), times[b], table[b], _stage_fields(stages[b])) for b in opts.batch_sizes]


def scenario_growth(n_conns, batch_size, seed=1, opts: BenchOptions | None = None):
    """New connections into an empty table that grows to n_conns: per-batch times, worst included."""
    opts = opts or BenchOptions(seed=seed)
    batch = syn_storm(n_conns, np.random.default_rng(opts.seed))
    tracker = make_tracker(opts, max(n_conns, 1024))
    times = []
    for start in range(0, n_conns, batch_size):
        t0 = time.perf_counter()
        tracker.process(batch.slice(start, min(n_conns, start + batch_size)))
        times.append(time.perf_counter() - t0)
    return np.array(times), tracker


def scenario_synflood(n_conns, batch_size, seed=1, factor=10, opts: BenchOptions | None = None,
                      random_tuples=False):
    """A SYN flood of factor x n_conns spoofed sources into a table of n_conns (nf_conntrack_max)
    already holding n_conns / 2 ASSURED connections, which keep talking through it.  The flood is
    built and timed a tenth at a time (memory stays at a tenth of it).

    Returns (flood packets, per-tenth wall times, tracker, assured before, assured after,
    established packets that were not est) -- early drop must keep every ASSURED connection and the
    per-packet cost must not grow as the flood goes on."""
    opts = opts or BenchOptions(seed=seed)
    rng = np.random.default_rng(opts.seed)
    tracker = make_tracker(opts, n_conns, prefault=True)
    conns, t_next = open_connections(tracker, n_conns // 2, rng, T0)
    status = tracker.entries()["status"]
    assured_before = int(np.count_nonzero(status & 4))
    n_flood = factor * n_conns
    tenths = []
    bad = 0
    n = 0
    for part in range(10):
        lo, hi = n_flood * part // 10, n_flood * (part + 1) // 10
        merged = synflood_part(conns, hi - lo, rng, t_next, first=lo, random_tuples=random_tuples)
        t_next = int(merged.ts[-1]) + 1
        m = len(merged)
        states = np.empty(m, dtype=np.uint8)
        t_start = time.perf_counter()
        for start in range(0, m, batch_size):
            stop = min(m, start + batch_size)
            states[start:stop] = tracker.process(merged.slice(start, stop)).ct_state
        tenths.append(time.perf_counter() - t_start)
        bad += int(np.count_nonzero((states[merged.wirelen == FRAME + 1] & 0x02) == 0))
        n += m
        del merged, states
    status = tracker._engine.entries_view()["status"]
    assured_after = int(np.count_nonzero(status & 4))
    return n, tenths, tracker, assured_before, assured_after, bad


def scenario_mixed(n_flows, opts: BenchOptions):
    """The mixed profile (mixed_trace) of n_flows flows, each repeat into fresh prefaulted tables of
    n_flows, one per batch size (alive together, fed each segment in turn, in a rotating order);
    the time is that of all process() calls.  Up to CHUNK_CONNS flows the trace is built once;
    above, segment by segment in every repeat (untimed; tables of 10M take ~1.8 GB each).
    Returns [(batch size, packets, times, extra)]."""
    max_conns = max(n_flows, 1024)
    t_setup = time.perf_counter()
    cached = list(mixed_segments(n_flows, opts.seed)) if n_flows <= CHUNK_CONNS else None
    setup = time.perf_counter() - t_setup if cached is not None else 0.0
    times = {b: [] for b in opts.batch_sizes}
    extra = {}
    for rep in range(opts.repeats):
        trackers = {b: make_tracker(opts, max_conns, prefault=True) for b in opts.batch_sizes}
        elapsed = dict.fromkeys(opts.batch_sizes, 0.0)
        done = dict.fromkeys(opts.batch_sizes, 0)
        summaries = []
        segments = iter(cached) if cached is not None else mixed_segments(n_flows, opts.seed)
        while True:
            t_gen = time.perf_counter()
            trace = next(segments, None)
            if cached is None and rep == 0:
                setup += time.perf_counter() - t_gen
            if trace is None:
                break
            summaries.append(trace.summary())
            for b in _rotated(opts.batch_sizes, rep):
                n = min(len(trace.batch), b * MAX_CALLS - done[b])
                if n > 0:
                    elapsed[b] += _time_process(trackers[b], trace.batch.slice(0, n), b)
                    done[b] += n
            del trace
        total = sum(s["packets"] for s in summaries)
        flows = sum(s["flows"] for s in summaries)
        mix = {key: round(sum(s[key] * s["packets"] for s in summaries) / max(total, 1), 4)
               for key in ("tcp", "udp", "icmp", "ipv6")}
        for b, tracker in trackers.items():
            times[b].append(elapsed[b])
            st = tracker.stats()
            extra[b] = {"packets": done[b], "setup_seconds": setup, "table_bytes": tracker.memory_bytes(),
                        "flows": flows, "trace_packets": total, "packets_per_flow": total / max(flows, 1),
                        "mix": mix, "invalid": st["invalid"], "drop": st["drop"],
                        "early_drop": st["early_drop"], "entries": len(tracker)}
        del trackers
    return [(b, extra[b]["packets"], times[b], extra[b]) for b in opts.batch_sizes]


# ---- command line ---------------------------------------------------------------------------
SIZES = {"1k": 1_000, "100k": 100_000, "1M": 1_000_000, "10M": 10_000_000}
SCENARIOS = ("established", "new", "growth", "synflood", "randflood", "mixed")


def _size(text: str) -> int:
    text = text.strip()
    if text in SIZES:
        return SIZES[text]
    m = re.fullmatch(r"([0-9]+)([kM]?)", text)
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"unknown size {text!r}; use {','.join(SIZES)} or a number (with k or M)")
    return int(m.group(1)) * {"": 1, "k": 1_000, "M": 1_000_000}[m.group(2)]


def _comma_list(parse, what):
    def convert(text):
        try:
            items = [parse(t) for t in text.split(",")]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{what}: {exc}") from None
        return items
    return convert


def _batch_size(text):
    v = int(text)
    if not 1 <= v <= 1 << 20:
        raise ValueError(f"batch sizes must be between 1 and {1 << 20}, not {v}")
    return v


def _scenario(text):
    text = text.strip()
    if text != "all" and text not in SCENARIOS:
        raise ValueError(f"unknown scenario {text!r}; use {','.join(SCENARIOS)} or all")
    return text


def _positive(text):
    v = int(text)
    if v < 1:
        raise ValueError(f"must be at least 1, not {v}")
    return v


def _seed(text):
    v = int(text)
    if v < 0:
        raise ValueError(f"must be a non-negative integer, not {v}")
    return v


def _nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--zipf takes a number, not {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"--zipf must be >= 0, not {text}")
    return v


def _single(parse, what):
    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{what}: {exc}") from None
    return convert


def add_arguments(p):
    p.add_argument("--scenario", type=_comma_list(_scenario, "--scenario"), default="all", metavar="LIST",
                   help="comma list of " + ", ".join(SCENARIOS) + ", or all (default)")
    p.add_argument("--conns", type=_comma_list(_size, "--conns"), default="1k,100k,1M", metavar="LIST",
                   help="comma list of connections: 1k,100k,1M,10M or numbers (with k or M); for "
                        "mixed the flows the trace opens, for synflood the table size (default 1k,100k,1M)")
    p.add_argument("--packets", type=_single(_positive, "--packets"), default=2_000_000, metavar="N",
                   help="established: timed packets per repeat (default 2000000)")
    p.add_argument("--batch-size", type=_comma_list(_batch_size, "--batch-size"), default="256", metavar="LIST",
                   help="comma list of batch sizes (e.g. 1,32,256,4096), all measured in the same run "
                        f"(default 256); at most {MAX_CALLS} process() calls are timed per repeat")
    p.add_argument("--repeats", type=_single(_positive, "--repeats"), default=5, metavar="N",
                   help="timed repeats; the median is quoted (default 5; growth and synflood run once)")
    p.add_argument("--popularity", type=_comma_list(lambda t: popularity_label(parse_popularity(t)),
                                                    "--popularity"), default=None, metavar="LIST",
                   help="established: comma list of uniform, zipf (exponent 1) or zipf:S "
                        "(bounded Zipf over the connections), each measured on the same table "
                        "(default uniform)")
    p.add_argument("--zipf", type=_nonneg_float, default=None, metavar="S",
                   help="the same as --popularity zipf:S")
    p.add_argument("--seed", type=_single(_seed, "--seed"), default=1, metavar="N",
                   help="seed of the traffic generators and the tracker's hash (default 1)")
    p.add_argument("--nat", type=_comma_list(_nat_mode, "--nat"), default="off", metavar="LIST",
                   help="established and new: comma list of off, dnat (every connection DNAT'd "
                        "to one backend: translated reply tuples, rewritten packets) and rules (the "
                        "same DNAT from an nftables ruleset with a raw and a filter chain every "
                        "packet walks), each measured in the same run (default off)")
    p.add_argument("--stages", action="store_true",
                   help="established and new: also time the batch loop's three stages (parse and "
                        "hash; index slots and entry prefetches; protocol state and outputs) and "
                        "print each one's ns per packet (the rest is the Python call around them)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per result and line: the text's figures (peak RSS is the "
                        "process's so far) plus scenario, conns, batch_size, packets, repeats, "
                        "seconds_median, seed, version and the scenario's own fields")


def _nat_mode(text: str) -> str:
    if text not in NAT_MODES:
        raise ValueError(f"NAT mode must be one of {', '.join(NAT_MODES)}, not {text!r}")
    return text


def options_from_args(args) -> BenchOptions:
    if args.zipf is not None and args.popularity is not None:
        raise ValueError("give --zipf S or --popularity, not both")
    popularity = ([popularity_label(args.zipf)] if args.zipf is not None else args.popularity) or ["uniform"]
    return BenchOptions(seed=args.seed, packets=args.packets, batch_sizes=tuple(args.batch_size),
                        repeats=args.repeats, popularity=tuple(popularity), stages=args.stages)


def run(args) -> int:
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        print(f"fastct: error: {exc}", file=sys.stderr)
        return 2
    scenarios = SCENARIOS if "all" in args.scenario else [s for s in SCENARIOS if s in args.scenario]
    emit = (lambda r: print(json.dumps(r), flush=True)) if args.json else (lambda r: print(_text(r), flush=True))
    for n in args.conns:
        # NAT on and off measured in the same run, so their ratio is what counts.
        if "established" in scenarios:
            for mode in args.nat:
                measured, tr = scenario_established(n, replace(opts, nat=mode))
                for p, b, pk, times, extra in measured:
                    emit(_result("established", n, b, pk, times, tr.memory_bytes(), opts, popularity=p,
                                 **extra))
                del tr
        if "new" in scenarios:
            for mode in args.nat:
                for b, pk, times, table, extra in scenario_new(n, replace(opts, nat=mode)):
                    emit(_result("new", n, b, pk, times, table, opts, nat=mode, **extra))
        if "growth" in scenarios:
            for b in opts.batch_sizes:
                times, tr = scenario_growth(n, b, opts=opts)
                emit(_result("growth", n, b, n, [times.sum()], tr.memory_bytes(), opts,
                             batch_ms_median=float(np.median(times) * 1e3),
                             batch_ms_worst=float(times.max() * 1e3), grows=tr.stats()["grows"]))
                del tr
        for flood in ("synflood", "randflood"):
            # randflood: the same, the spoofed SYNs going to random addresses and ports.
            if flood not in scenarios:
                continue
            for b in opts.batch_sizes:
                pk, tenths, tr, before, after, bad = scenario_synflood(
                    n, b, opts=opts, random_tuples=flood == "randflood")
                st = tr.stats()
                emit(_result(flood, n, b, pk, [sum(tenths)], tr.memory_bytes(), opts,
                             ns_per_packet_by_tenth=[round(t / (pk / 10) * 1e9, 1) for t in tenths],
                             assured_before=before, assured_after=after, established_not_est=bad,
                             early_drop=st["early_drop"], drop=st["drop"]))
                del tr
        if "mixed" in scenarios:
            for b, pk, times, extra in scenario_mixed(n, opts):
                table = extra.pop("table_bytes")
                extra.pop("packets")
                emit(_result("mixed", n, b, pk, times, table, opts, **extra))
    return 0


def _result(name, n, batch_size, packets, times, table_bytes, opts, popularity=None, **extra):
    """One result: the fields every scenario reports, then the scenario's own."""
    rates = sorted(packets / t / 1e6 for t in times)
    med = float(np.median(rates))
    r = {"scenario": name, "conns": n, "batch_size": batch_size, "batch": batch_size, "packets": packets,
         "repeats": len(times), "seconds_median": float(np.median(times)), "seconds_min": float(min(times)),
         "seconds_max": float(max(times)), "mpps_median": med, "mpps_min": rates[0], "mpps_max": rates[-1],
         "ns_per_packet": 1e3 / med, "bytes_per_conn": table_bytes / max(n, 1), "table_bytes": int(table_bytes),
         "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
         "seed": opts.seed, "version": __version__}
    if popularity is not None:
        r["popularity"] = popularity_label(popularity)
        r["zipf"] = popularity or None
    r.update(extra)
    return r


def _text(r) -> str:
    name = r["scenario"] + (f" {r['popularity']}" if r.get("popularity", "uniform") != "uniform" else "") \
        + (f" nat={r['nat']}" if r.get("nat", "off") != "off" else "")
    line = (f"{name:<12} conns={r['conns']:>9} batch={r['batch_size']:>5}  "
            f"{r['mpps_median']:7.2f} Mpps (min {r['mpps_min']:.2f}, max {r['mpps_max']:.2f})  "
            f"{r['ns_per_packet']:6.1f} ns/pkt  {r['bytes_per_conn']:.0f} B/conn  "
            f"peak RSS {r['peak_rss_mb']:.0f} MB")
    if "grows" in r:
        line += (f"  batch median {r['batch_ms_median']:.2f} ms, worst {r['batch_ms_worst']:.2f} ms "
                 f"({r['grows']} grows)")
    if "setup_seconds" in r:
        line += f"  setup {r['setup_seconds']:.1f} s"
    if "stage_ns" in r:
        st = r["stage_ns"]
        line += (f"\n{'':12} stages, ns/pkt: parse {st['parse']:.1f}, index {st['index']:.1f}, "
                 f"update {st['update']:.1f} (the rest of {r['ns_per_packet']:.1f}: the calls around them)")
    if r["scenario"] in ("synflood", "randflood"):
        line += (f"\n{'':12} ASSURED {r['assured_before']} -> {r['assured_after']}, "
                 f"established packets not est: {r['established_not_est']}, early_drop "
                 f"{r['early_drop']}, drop {r['drop']}; ns/pkt by tenth of the flood: "
                 f"{' '.join(f'{x:.0f}' for x in r['ns_per_packet_by_tenth'])}")
    if r["scenario"] == "mixed":
        m = r["mix"]
        line += (f"\n{'':12} {r['packets']} of {r['trace_packets']} packets of {r['flows']} flows timed "
                 f"({r['packets_per_flow']:.1f} per flow): TCP {m['tcp']:.0%}, UDP {m['udp']:.0%}, "
                 f"ICMP {m['icmp']:.0%}, IPv6 {m['ipv6']:.0%}; invalid {r['invalid']}, drop {r['drop']}, "
                 f"live entries {r['entries']}")
    return line
