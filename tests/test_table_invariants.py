"""The table's structure under random and adversarial workloads (hypothesis + deterministic stress).

After every `process()` call the index must be sound (`Engine.check_invariants()` returns []), the
table must never hold more than max_conns entries, and the number of live entries must be what a
small Python model of conntrack says.  The model is exact for UDP, ICMP/ICMPv6 echo and the generic
protocols (timeouts, SEEN_REPLY/ASSURED, per-direction packet counts, ct_state, inserts, table-full
drops); TCP's state machine is not re-implemented: the model learns a TCP connection's expiry by
looking it up after the packets that touched it (so a TCP packet can be followed exactly only in
runs of one packet per call, which is how the model-checked reference run is made).  Every other
split of the same packets into batches must then give the same per-packet ct_state and direction
and the same final table.
"""
from __future__ import annotations

import heapq
import ipaddress
import re
import re
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastct import CT_STATE_BITS as B, Batch, Tracker
from fastct.tracker import COLD_DTYPE, ENTRY_DTYPE

TRK, NEW, EST, RPL, INV = B["trk"], B["new"], B["est"], B["rpl"], B["inv"]
T_NEW, T_EST, T_RPL, T_INV = TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | INV
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08

LINKTYPE_RAW = 101
SEC = 1_000_000_000
MS = 1_000_000
T0 = 1_000 * SEC               # first packet time (ns)
# The model refuses a new connection when the table is full of live entries (Open vSwitch's
# userspace rule, Tracker(early_drop=False)); which entry the kernel's early drop evicts depends on
# the hash, so that policy has its own tests (tests/test_table_full.py).
GEN_PROTOS = (253, 47)         # no ports (GRE version 0 has keys 0): keyed by addresses only
TIMEOUT = {17: 30 * SEC, 136: 30 * SEC, 1: 30 * SEC, 58: 30 * SEC, 47: 30 * SEC}
GRE_STREAM = 180 * SEC
UDP_STREAM = 120 * SEC
GENERIC = 600 * SEC

HOSTS4 = [ipaddress.ip_address(f"10.0.0.{i}").packed for i in (1, 2, 3)]
HOSTS6 = [ipaddress.ip_address(f"2001:db8::{i}").packed for i in (1, 2, 3)]


# ---- packets ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pkt:
    fam: int            # 4 or 6
    proto: int
    src: bytes
    dst: bytes
    sport: int          # ICMP: echo id
    dport: int          # ICMP: type << 8 | code (as the entry keeps it)
    ts: int             # ns
    frame: bytes
    commit: bool = True

    @property
    def iplen(self) -> int:
        return len(self.frame)


def _ip(fam, proto, src, dst, l4):
    if fam == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst) + l4
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, src, dst) + l4


def tcp_pkt(fam, src, dst, sport, dport, flags, seq, ack, ts, data=b"", commit=True):
    l4 = struct.pack("!HHIIHHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                     (5 << 12) | flags, 65535, 0, 0) + data
    return Pkt(fam, 6, src, dst, sport, dport, ts, _ip(fam, 6, src, dst, l4), commit)


def udp_pkt(fam, src, dst, sport, dport, ts, commit=True):
    l4 = struct.pack("!HHHH", sport, dport, 16, 0) + b"u" * 8
    return Pkt(fam, 17, src, dst, sport, dport, ts, _ip(fam, 17, src, dst, l4), commit)


def icmp_pkt(fam, src, dst, request, ident, ts, commit=True):
    proto = 1 if fam == 4 else 58
    itype = (8 if request else 0) if fam == 4 else (128 if request else 129)
    l4 = struct.pack("!BBHHH", itype, 0, 0, ident, 1) + b"i" * 8
    return Pkt(fam, proto, src, dst, ident, itype << 8, ts, _ip(fam, proto, src, dst, l4), commit)


def udplite_pkt(fam, src, dst, sport, dport, ts, commit=True):
    # Coverage 0 (the whole packet) and a checksum (UDP-Lite must carry one; not verified).
    l4 = struct.pack("!HHHH", sport, dport, 0, 0xBEEF) + b"l" * 4
    return Pkt(fam, 136, src, dst, sport, dport, ts, _ip(fam, 136, src, dst, l4), commit)


def gen_pkt(fam, proto, src, dst, ts, commit=True):
    return Pkt(fam, proto, src, dst, 0, 0, ts, _ip(fam, proto, src, dst, b"g" * 8), commit)


def make_batch(pkts) -> Batch:
    frames = [p.frame for p in pkts]
    lens = np.array([len(f) for f in frames], dtype=np.uint32)
    offsets = np.zeros(len(frames), dtype=np.int64)
    if len(frames):
        offsets[1:] = np.cumsum(lens[:-1], dtype=np.int64)
    buf = np.frombuffer(b"".join(frames) or b"\0", dtype=np.uint8)
    ts = np.array([p.ts for p in pkts], dtype=np.int64)
    return Batch(buf, offsets, lens, lens.copy(), ts, np.zeros(len(frames), dtype=np.uint16),
                 np.array([LINKTYPE_RAW], dtype=np.uint32), np.zeros(1, dtype=np.uint32))


def addr_str(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def tcp_key(p: Pkt):
    a, b = (p.src, p.sport), (p.dst, p.dport)
    return (p.fam, 6) + (a + b if a <= b else b + a)


# ---- the model -------------------------------------------------------------------------------------

@dataclass
class Conn:
    orig: tuple          # (src, dst, sport, dport) of the original direction
    start: int
    expires: int
    seen_reply: bool = False
    assured: bool = False
    packets: list = field(default_factory=lambda: [0, 0])


class Model:
    """Conntrack for UDP, ICMP echo and generic protocols; TCP expiry learnt from the engine."""

    def __init__(self, max_conns: int):
        self.max_conns = max_conns
        self.conns: dict[tuple, Conn] = {}
        self.tcp: dict[tuple, int] = {}        # key -> expires (ns), as looked up
        self.now = -(1 << 62)
        self.inserts = 0
        self.drops = 0
        # The live count kept up to date as time passes (a scan per new connection of a full table
        # made the 200k-flow runs quadratic): a heap of when each connection may end, each record
        # (expires, n, kind 0 conns / 1 tcp, key) stale once that connection's expiry moved on.
        self._heap: list = []
        self._n = 0
        self._live = 0
        self._at = -(1 << 62)      # the time _live counts at

    def _expiry(self, kind: int, key, expires: int):
        self._n += 1
        heapq.heappush(self._heap, (expires, self._n, kind, key))

    def _advance(self, now: int):
        heap = self._heap
        while heap and heap[0][0] <= now:
            exp, _, kind, key = heapq.heappop(heap)
            cur = self.conns[key].expires if kind == 0 else self.tcp.get(key)
            if cur == exp and exp > self._at:
                self._live -= 1
        self._at = max(self._at, now)

    def live(self, now=None) -> int:
        now = self.now if now is None else now
        if now >= self._at:
            self._advance(now)
            return self._live
        return (sum(1 for c in self.conns.values() if c.expires > now)
                + sum(1 for e in self.tcp.values() if e > now))

    @staticmethod
    def key(p: Pkt):
        """(key, this packet's tuple) for a non-TCP packet; key None for an ICMP reply's key lookup."""
        tup = (p.src, p.dst, p.sport, p.dport)
        if p.proto in (1, 58):
            itype = p.dport >> 8
            if itype in (8, 128):
                return (p.fam, p.proto, p.src, p.dst, p.sport), tup
            return (p.fam, p.proto, p.dst, p.src, p.sport), tup
        rev = (p.dst, p.src, p.dport, p.sport)
        return (p.fam, p.proto) + min(tup, rev), tup

    def packet(self, p: Pkt):
        """Expected (ct_state, direction) for a non-TCP packet; updates the model."""
        self.now = max(self.now, p.ts)
        now = self.now
        self._advance(now)
        key, tup = self.key(p)
        c = self.conns.get(key)
        if c is not None and c.expires > now:
            before = c.expires
            d = 0 if tup == c.orig else 1
            if p.proto == 17:
                if c.seen_reply and (c.assured or now > c.start + 2 * SEC):
                    c.expires, c.assured = now + UDP_STREAM, True
                else:
                    c.expires = now + TIMEOUT[17]
            elif p.proto == 136:
                # UDP-Lite has no 2 s rule: a stream as soon as an earlier packet was a reply.
                if c.seen_reply:
                    c.expires, c.assured = now + UDP_STREAM, True
                else:
                    c.expires = now + TIMEOUT[136]
            elif p.proto == 47:
                # GRE: 30 s, or a stream (180 s, ASSURED) once an earlier packet was a reply.
                if c.seen_reply:
                    c.expires, c.assured = now + GRE_STREAM, True
                else:
                    c.expires = now + TIMEOUT[47]
            else:
                c.expires = now + TIMEOUT.get(p.proto, GENERIC)
            if c.expires != before:
                self._expiry(0, key, c.expires)
            c.packets[d] += 1
            if d:
                c.seen_reply = True
                return T_RPL, 1
            return (T_EST if c.seen_reply else T_NEW), 0
        # A new connection.
        if p.proto in (1, 58) and (p.dport >> 8) not in (8, 128):
            return T_INV, 0                       # an echo reply cannot start one
        if not p.commit:
            return T_NEW, 0
        if len(self.conns) + len(self.tcp) >= self.max_conns and self.live(now) >= self.max_conns:
            self.drops += 1
            return T_INV, 0
        ttl = TIMEOUT.get(p.proto, GENERIC) if p.proto != 17 else TIMEOUT[17]
        self.conns[key] = Conn(orig=tup, start=now, expires=now + ttl, packets=[1, 0])
        self._expiry(0, key, now + ttl)
        self._live += 1
        self.inserts += 1
        return T_NEW, 0

    def learn_tcp(self, t: Tracker, p: Pkt):
        self.now = max(self.now, p.ts)
        self._advance(self.now)
        rec = t.lookup(addr_str(p.src), addr_str(p.dst), "tcp", p.sport, p.dport)
        key = tcp_key(p)
        old, new = self.tcp.get(key), -(1 << 62) if rec is None else rec["expires"]
        self.tcp[key] = new
        self._live += (new > self.now) - (old is not None and old > self.now)
        if new != old and new > self.now:
            self._expiry(1, key, new)

    def check_entries(self, t: Tracker):
        """Every live non-TCP connection of the model is in the table, as the model has it."""
        for key, c in self.conns.items():
            if c.expires <= self.now:
                continue
            src, dst, sport, dport = c.orig
            proto = key[1]
            if proto in (1, 58):
                rec = t.lookup(addr_str(src), addr_str(dst), proto, sport, icmp_type=dport >> 8)
            else:
                rec = t.lookup(addr_str(src), addr_str(dst), proto, sport, dport)
            assert rec is not None, (key, c)
            assert rec["direction"] == "original", (key, c, rec)
            assert rec["expires"] == c.expires, (key, c, rec)
            assert rec["packets"] == c.packets, (key, c, rec)
            assert ("SEEN_REPLY" in rec["status_names"]) == c.seen_reply, (key, c, rec)
            assert ("ASSURED" in rec["status_names"]) == c.assured, (key, c, rec)
            assert rec["start"] == c.start, (key, c, rec)


# ---- checks ---------------------------------------------------------------------------------------

def live_entries(t: Tracker) -> int:
    """Live entries without sweeping (len() sweeps, which changes what later calls do)."""
    return int(np.count_nonzero(t._engine.entries_view()["expires"] > t.now))


SELF_REPLY = re.compile(r"entry (\d+) not found from its reply direction \((\d+)\)")


def is_own_reverse(e) -> bool:
    """A tuple equal to its own reverse (same address and port at both ends, ICMP excepted)."""
    return (int(e["proto"]) not in (1, 58) and bytes(e["src"]) == bytes(e["dst"])
            and int(e["sport"]) == int(e["dport"]))


def check_table(t: Tracker, max_conns: int, lookups: bool = False):
    problems = t._engine.check_invariants()
    if problems:
        # check_invariants() wants the reply-direction lookup to say "reply"; for a tuple that is its
        # own reverse (10.0.0.1:1000 -> 10.0.0.1:1000) the lookup rightly finds the same entry as
        # original (the kernel's too: the original tuple is hashed first).  Not a table problem.
        ents = t._engine.entries_view()
        problems = [p for p in problems
                    if not ((m := SELF_REPLY.fullmatch(p)) and m[1] == m[2]
                            and is_own_reverse(ents[int(m[1])]))]
    assert problems == [], problems[:10]
    assert t._engine.count <= max_conns
    if lookups:
        # The public lookup, from both directions, finds each live entry at its own index.
        ents = t._engine.entries_view().copy()
        for i in range(len(ents)):
            e = ents[i]
            if e["expires"] <= t.now:
                continue
            l3, proto = int(e["l3"]), int(e["proto"])
            n = 4 if l3 == 2 else 16
            src, dst = addr_str(bytes(e["src"][:n])), addr_str(bytes(e["dst"][:n]))
            sport, dport = int(e["sport"]), int(e["dport"])
            if proto in (1, 58):
                itype = dport >> 8
                rtype = {8: 0, 128: 129}[itype]
                fwd = t.lookup(src, dst, proto, sport, icmp_type=itype)
                rev = t.lookup(dst, src, proto, sport, icmp_type=rtype)
            else:
                fwd = t.lookup(src, dst, proto, sport, dport)
                rev = t.lookup(dst, src, proto, dport, sport)
            assert fwd is not None and rev is not None, (i, src, dst, proto, sport, dport)
            assert fwd["index"] == i == rev["index"], (i, fwd["index"], rev["index"])
            assert fwd["direction"] == "original"
            assert rev["direction"] == ("original" if is_own_reverse(e) else "reply")


def table_rows(t: Tracker) -> list[bytes]:
    """The final table (after a full sweep), order-free: each entry's bytes and its cold record."""
    t.expire()
    ents = t._engine.entries_view().copy()
    cold = t._engine.cold_view().copy()
    assert ents.dtype == ENTRY_DTYPE and cold.dtype == COLD_DTYPE
    # The cold record's TCP bookkeeping is never written for other protocols (left as the memory
    # was); only its start time means something there.
    return sorted(ents[i].tobytes() + (cold[i].tobytes() if ents[i]["proto"] == 6
                                       else cold[i]["start"].tobytes())
                  for i in range(len(ents)))


STABLE_STATS = ("insert", "drop", "invalid", "found", "packets", "insert_failed", "chaintoolong")


def run(pkts, max_conns, sizes=(1,), model: Model | None = None, expire_every=0, lookups=False):
    """Process `pkts` in batches of sizes[k % len(sizes)] (never mixing commit=True and False in a
    call), checking the table after every call.  With a model, its predictions are checked too:
    per packet for non-TCP packets, and the live count after every call."""
    t = Tracker(max_conns=max_conns, seed=11, early_drop=False)
    n = len(pkts)
    batch = make_batch(pkts)
    states = np.zeros(n, dtype=np.uint8)
    dirs = np.zeros(n, dtype=np.uint8)
    has_tcp = any(p.proto == 6 for p in pkts)
    i = k = calls = 0
    while i < n:
        j = min(n, i + sizes[k % len(sizes)])
        k += 1
        commit = pkts[i].commit
        for x in range(i + 1, j):
            if pkts[x].commit != commit:
                j = x
                break
        res = t.process(batch.slice(i, j), commit=commit)
        calls += 1
        states[i:j] = res.ct_state
        dirs[i:j] = res.direction
        check_table(t, max_conns, lookups=lookups)
        if model is not None:
            for x in range(i, j):
                p = pkts[x]
                if p.proto == 6:
                    model.learn_tcp(t, p)
                    continue
                want = model.packet(p)
                got = (int(res.ct_state[x - i]), int(res.direction[x - i]))
                assert got == want, (x, p, got, want)
            assert t.now == model.now
            assert live_entries(t) == model.live()
            after = t.stats()
            if not has_tcp:
                assert after["insert"] == model.inserts
                assert after["drop"] == model.drops
            assert after["chaintoolong"] == 0
        if expire_every and calls % expire_every == 0:
            got = len(t)
            assert got <= max_conns
            if model is not None:
                assert got == model.live()
                model.check_entries(t)
        i = j
    if model is not None:
        assert len(t) == model.live()
        model.check_entries(t)
    return t, states, dirs


# ---- random workloads ------------------------------------------------------------------------------

# A small pool of flows, so that packets of one flow repeat (both ways) and flows share addresses
# and ports across protocols and families: (family, protocol, host a, host b, port a, port b).
FLOWS = (
    (4, "tcp", 0, 1, 1000, 80), (4, "tcp", 0, 1, 2000, 80), (6, "tcp", 0, 2, 1000, 80),
    (4, "tcp", 2, 2, 1000, 2000), (4, "tcp", 1, 2, 80, 80),
    (4, "udp", 0, 1, 1000, 80), (6, "udp", 0, 1, 1000, 80), (4, "udp", 2, 2, 53, 53),
    (4, "udp", 1, 2, 2000, 53),
    (4, "icmp", 0, 1, 1000, 0), (6, "icmp", 0, 1, 7, 0), (4, "icmp", 1, 0, 1000, 0),
    (4, "gen", 0, 1, 0, 0), (6, "gen", 1, 2, 0, 0), (4, "gen", 2, 2, 0, 0),
    (4, "udplite", 0, 1, 1000, 80),
)
NO_TCP = tuple(i for i, f in enumerate(FLOWS) if f[1] != "tcp")
SMALL_DT = [0, 0, 0, 1, 5, 100, 700, 1500, 2001, 2500]
JUMP_DT = [10_000, 10_001, 29_999, 30_000, 30_001, 60_000, 120_000, 120_001, 300_001, 600_001, -3000]
DT_MS = st.sampled_from(SMALL_DT * 6 + JUMP_DT)     # ms; about one packet in seven jumps


def op_strategy(flows=tuple(range(len(FLOWS)))):
    return st.tuples(
        st.sampled_from(flows),
        st.booleans(),                              # reversed (sent by host b)
        st.sampled_from((0, 1, 2, 2, 3, 4, 4, 5, 6, 7, 8)),   # TCP segment / ICMP req or reply / proto
        DT_MS,
        st.integers(0, 2**32 - 1),                  # a fresh ISN, for SYNs
        st.sampled_from((True,) * 6 + (False,)),    # commit
    )


OP = op_strategy()
OP_NO_TCP = op_strategy(NO_TCP)


def build(ops, no_commit_false=False) -> list[Pkt]:
    """Packets from ops.  TCP segments carry plausible seq/ack: each flow remembers the ISN and next
    sequence number of both ends (kind 8 sends arbitrary numbers)."""
    pkts = []
    ts = T0
    seqs: dict[tuple, list] = {}
    for flow, rev, kind, dt, isn, commit in ops:
        fam, proto, a, b, sp, dp = FLOWS[flow]
        if rev:
            a, b, sp, dp = b, a, dp, sp
        ts = max(T0, ts + dt * MS)
        hosts = HOSTS4 if fam == 4 else HOSTS6
        src, dst = hosts[a], hosts[b]
        commit = commit or no_commit_false
        if proto == "udp":
            pkts.append(udp_pkt(fam, src, dst, sp, dp, ts, commit))
        elif proto == "udplite":
            pkts.append(udplite_pkt(fam, src, dst, sp, dp, ts, commit))
        elif proto == "gen":
            pkts.append(gen_pkt(fam, GEN_PROTOS[kind % 2], src, dst, ts, commit))
        elif proto == "icmp":
            ident = sp or dp
            pkts.append(icmp_pkt(fam, src, dst, kind % 3 != 2, ident, ts, commit))
        else:
            fk = tcp_key(tcp_pkt(fam, src, dst, sp, dp, 0, 0, 0, 0))
            side = 0 if (src, sp) <= (dst, dp) else 1
            nxt = seqs.setdefault(fk, [isn, (isn * 7 + 12345) & 0xFFFFFFFF])
            me, peer = nxt[side], nxt[1 - side]
            data = b""
            if kind == 0:                              # SYN
                flags, seq, ack = SYN, isn, 0
                nxt[side] = isn + 1
            elif kind == 1:                            # SYN/ACK
                flags, seq, ack = SYN | ACK, isn, peer
                nxt[side] = isn + 1
            elif kind in (2, 3):                       # ACK
                flags, seq, ack = ACK, me, peer
            elif kind == 4:                            # data
                flags, seq, ack, data = PSH | ACK, me, peer, b"d" * 10
                nxt[side] = me + 10
            elif kind == 5:                            # FIN
                flags, seq, ack = FIN | ACK, me, peer
                nxt[side] = me + 1
            elif kind == 6:                            # RST
                flags, seq, ack = RST, me, 0
            elif kind == 7:                            # RST/ACK
                flags, seq, ack = RST | ACK, me, peer
            else:                                      # implausible numbers
                flags, seq, ack = ACK, isn, isn ^ 0x5A5A5A5A
            nxt[side] &= 0xFFFFFFFF
            pkts.append(tcp_pkt(fam, src, dst, sp, dp, flags, seq, ack, ts, data, commit))
    return pkts


def reference_and_split(pkts, max_conns, sizes, expire_every):
    """The model-checked run of one packet per call, then the same packets split by `sizes`:
    same ct_state and direction for every packet, same final table, same split-free counters."""
    ref, s1, d1 = run(pkts, max_conns, (1,), Model(max_conns), expire_every=1,
                      lookups=max_conns <= 64)
    # Model-checked batches too when the table cannot fill (no capacity decision depends on TCP
    # entries the model only learns about after the call).
    pool = len({Model.key(p)[0] if p.proto != 6 else tcp_key(p) for p in pkts})
    model = Model(max_conns) if max_conns > pool or all(p.proto != 6 for p in pkts) else None
    other, s2, d2 = run(pkts, max_conns, sizes, model, expire_every=expire_every)
    mism = np.nonzero((s1 != s2) | (d1 != d2))[0]
    assert len(mism) == 0, [(int(x), pkts[x], int(s1[x]), int(s2[x]), int(d1[x]), int(d2[x]))
                            for x in mism[:5]]
    a, b = ref.stats(), other.stats()
    assert {k: a[k] for k in STABLE_STATS} == {k: b[k] for k in STABLE_STATS}
    assert a["reasons"] == b["reasons"]
    assert table_rows(ref) == table_rows(other)
    return ref


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                database=None)


@settings(max_examples=100, **SETTINGS)
@given(ops=st.lists(OP, min_size=1, max_size=300) |
       st.lists(OP, min_size=40, max_size=300),
       max_conns=st.one_of(st.integers(1, 64), st.sampled_from([100, 1000, 200_000])),
       sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
       expire_every=st.sampled_from([0, 0, 1, 3]))
def test_random_mixed_workload(ops, max_conns, sizes, expire_every):
    reference_and_split(build(ops), max_conns, sizes, expire_every)


@settings(max_examples=60, **SETTINGS)
@given(ops=st.lists(OP_NO_TCP, min_size=1, max_size=300) | st.lists(OP_NO_TCP, min_size=40, max_size=300),
       max_conns=st.integers(1, 64),
       sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8),
       expire_every=st.sampled_from([0, 1, 2]))
def test_random_without_tcp_small_table(ops, max_conns, sizes, expire_every):
    """Without TCP the model decides every packet, table-full drops included, at any batch size."""
    reference_and_split(build(ops), max_conns, sizes, expire_every)


@pytest.mark.slow
@settings(max_examples=600, **SETTINGS)
@given(ops=st.lists(OP, min_size=1, max_size=100) | st.lists(OP, min_size=100, max_size=800),
       max_conns=st.one_of(st.integers(1, 64), st.sampled_from([100, 1000, 200_000])),
       sizes=st.lists(st.integers(1, 300), min_size=1, max_size=12),
       expire_every=st.sampled_from([0, 0, 1, 3]))
def test_random_mixed_workload_long(ops, max_conns, sizes, expire_every):
    reference_and_split(build(ops), max_conns, sizes, expire_every)


# ---- growth: many flows, few calls -----------------------------------------------------------------

def flow_hosts(i: int, fam: int):
    """A distinct (src, dst) pair for flow i."""
    if fam == 4:
        return struct.pack("!I", 0x0A000000 + 2 * i), struct.pack("!I", 0x0B000000 + 2 * i + 1)
    return (b"\x20\x01\x0d\xb8" + bytes(8) + struct.pack("!I", 2 * i),
            b"\x20\x01\x0d\xb9" + bytes(8) + struct.pack("!I", 2 * i + 1))


def many_flows(first: int, count: int, ts: int, reply_every: int = 0, step_ns: int = 0):
    """`count` distinct flows (UDP v4/v6, ICMP echo v4, SCTP v6, generic v4), one packet each, and
    (reply_every) a reply to every reply_every-th flow right after it."""
    out = []
    for i in range(first, first + count):
        fam = 6 if i % 3 == 1 else 4
        src, dst = flow_hosts(i, fam)
        kind = i % 7
        t = ts + (i - first) * step_ns
        if kind in (0, 1, 2, 3):
            p = udp_pkt(fam, src, dst, 1024 + i % 50000, 53, t)
            r = udp_pkt(fam, dst, src, 53, 1024 + i % 50000, t)
        elif kind == 4:
            p = icmp_pkt(fam, src, dst, True, i & 0xFFFF, t)
            r = icmp_pkt(fam, dst, src, False, i & 0xFFFF, t)
        elif kind == 5:
            p = udplite_pkt(fam, src, dst, 5000, 6000, t)
            r = udplite_pkt(fam, dst, src, 6000, 5000, t)
        else:
            p = gen_pkt(fam, 253, src, dst, t)
            r = gen_pkt(fam, 253, dst, src, t)
        out.append(p)
        if reply_every and i % reply_every == 0:
            out.append(r)
    return out


def process_checked(t, model, pkts, max_conns, commit=True):
    res = t.process(make_batch(pkts), commit=commit)
    check_table(t, max_conns)
    for x, p in enumerate(pkts):
        assert (int(res.ct_state[x]), int(res.direction[x])) == model.packet(p), (x, p)
    assert live_entries(t) == model.live()
    return res


def test_one_call_crosses_several_growths():
    """4000 new flows (and replies to some, found while their slots are still in the old index) in
    one call: the index grows 1024 -> 8192 inside it, migrating incrementally."""
    t, model = Tracker(max_conns=100_000, seed=3, early_drop=False), Model(100_000)
    slots0 = t._engine.n_slots
    pkts = many_flows(0, 4000, T0, reply_every=3)
    process_checked(t, model, pkts, 100_000)
    assert t.stats()["grows"] >= 2 and t._engine.n_slots >= 4 * slots0
    assert len(t) == 4000 == model.live()
    model.check_entries(t)
    check_table(t, 100_000, lookups=True)
    # Every flow again, both directions, in one call: all found, nothing inserted.
    again = many_flows(0, 4000, T0 + SEC, reply_every=1)
    process_checked(t, model, again, 100_000)
    assert t.stats()["insert"] == 4000 and len(t) == 4000
    model.check_entries(t)


@pytest.mark.parametrize("step", [pytest.param(1, marks=pytest.mark.slow),
                                  pytest.param(7, marks=pytest.mark.slow), 64, 65, 500])
def test_growth_checked_between_small_calls(step):
    """Calls small enough that a migration is still running when the next grow is due, and when
    the table is checked (both indexes in use)."""
    t, model = Tracker(max_conns=50_000, seed=5, early_drop=False), Model(50_000)
    pkts = many_flows(0, 6000, T0, reply_every=5)
    mid_migration = 0
    for i in range(0, len(pkts), step):
        process_checked(t, model, pkts[i:i + step], 50_000)
        per_entry = ENTRY_DTYPE.itemsize + COLD_DTYPE.itemsize
        mid_migration += t._engine.memory_bytes() > 50_000 * per_entry + t._engine.n_slots * 8
    assert len(t) == 6000 and t.stats()["grows"] >= 3
    if step <= 65:
        assert mid_migration > 0
    model.check_entries(t)


@pytest.mark.parametrize("split", [pytest.param(1, marks=pytest.mark.slow), 64, 1000, 10**9])
def test_growth_while_many_entries_expire(split):
    """Waves of flows: each wave arrives as the one before it expires, so the incremental sweep
    deletes from the old and new indexes while they migrate; some old flows are refreshed just in
    time, some reopened (same tuple, reversed) right after they die."""
    cap = 40_000
    t, model = Tracker(max_conns=cap, seed=8, early_drop=False), Model(cap)
    ts = T0
    first = 0
    for wave, count in enumerate((700, 1400, 2900, 6000, 3000)):
        pkts = many_flows(first, count, ts, reply_every=0, step_ns=MS)
        if wave:
            # Refresh a few of the previous wave just before they die (1 ms before 30 s after them).
            prev = many_flows(first - prev_count, prev_count, ts - MS, step_ns=0)
            pkts = prev[::97] + pkts
            # The same tuple reversed, as the previous wave's entries die (UDP: a new connection).
            rev = [udp_pkt(p.fam, p.dst, p.src, p.dport, p.sport, p.ts) for p in prev[1::13]
                   if p.proto == 17]
            pkts = pkts + [Pkt(**{**p.__dict__, "ts": ts + count * MS}) for p in rev]
        for i in range(0, len(pkts), split):
            process_checked(t, model, pkts[i:i + split], cap)
        assert len(t) == model.live()
        model.check_entries(t)
        first += count
        prev_count = count
        # The next wave starts when half of this one is dead; the rest dies while it arrives.
        ts += 30 * SEC + count * MS // 2
    assert t.stats()["grows"] >= 3 and t.stats()["expired"] > 0


@pytest.mark.parametrize("cap", [1, 2, 3, 17, 64])
def test_full_table_reclaims_and_drops(cap):
    """A tiny table: new flows are dropped while it is full of live entries, and take the place of
    dead ones once they expire, including in the same call that expires them."""
    t, model = Tracker(max_conns=cap, seed=2, early_drop=False), Model(cap)
    ts = T0
    for rnd in range(6):
        pkts = many_flows(rnd * 5, 3 * cap, ts, reply_every=2, step_ns=MS)
        for split in (1, 5, 1000):
            part = pkts[:split]
            pkts = pkts[split:]
            if part:
                process_checked(t, model, part, cap)
        if pkts:
            process_checked(t, model, pkts, cap)
        assert len(t) <= cap
        ts += (31 if rnd % 2 else 10) * SEC
    st_ = t.stats()
    assert st_["drop"] == model.drops > 0 and st_["insert"] == model.inserts


def test_commit_false_never_stores_and_keeps_dead_entries_dead():
    t, model = Tracker(max_conns=64, seed=4, early_drop=False), Model(64)
    a, b = HOSTS4[0], HOSTS4[1]
    seq = [udp_pkt(4, a, b, 1, 2, T0), udp_pkt(4, b, a, 2, 1, T0 + SEC)]
    process_checked(t, model, seq, 64)
    # Dead (not swept): a commit=False packet of the same tuple reversed gives new, stores nothing.
    later = [udp_pkt(4, b, a, 2, 1, T0 + 40 * SEC, commit=False),
             udp_pkt(4, a, b, 1, 3, T0 + 40 * SEC, commit=False)]
    process_checked(t, model, later, 64, commit=False)
    assert len(t) == 0 == model.live()
    again = [udp_pkt(4, b, a, 2, 1, T0 + 41 * SEC)]
    process_checked(t, model, again, 64)
    rec = t.lookup(addr_str(b), addr_str(a), "udp", 2, 1)
    assert rec["direction"] == "original" and rec["packets"] == [1, 0]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [4096, 65536])
def test_200k_flows_growth_and_expiry_waves(batch_size):
    cap = 200_000
    t, model = Tracker(max_conns=cap, seed=6, early_drop=False), Model(cap)
    ts = T0
    first = 0
    for count in (150_000, 120_000, 200_000):
        pkts = many_flows(first, count, ts, reply_every=11, step_ns=100_000)
        for i in range(0, len(pkts), batch_size):
            process_checked(t, model, pkts[i:i + batch_size], cap)
        model.check_entries(t)
        first += count
        ts = pkts[-1].ts + 25 * SEC
    assert len(t) == model.live() <= cap
    assert t.stats()["grows"] >= 8
