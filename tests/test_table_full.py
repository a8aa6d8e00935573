"""A full table (nf_conntrack_max) and zone limits.

Kernel (__nf_conntrack_alloc / early_drop): a new connection into a full table first tries to evict
an entry that is not ASSURED among those hashed near it (counted in early_drop); if none may go, the
packet is dropped (drop).  ASSURED connections are never early-dropped.  Dead entries are collected
first (the kernel's garbage collector would have removed them).
Open vSwitch zone limits: a new connection in a zone at its limit is not committed (dropped).
"""
import subprocess
import sys

import numpy as np
import pytest

from fastct import Batch, Tracker
from fastct.tracker import CT_STATE_BITS as B
from fastct.tracker import STATUS_BITS

from pkt import ACK, SYN, tcp4, udp4

TRK, NEW, EST, RPL, INV = B["trk"], B["new"], B["est"], B["rpl"], B["inv"]
ASSURED = STATUS_BITS["ASSURED"]
CAP = 2000          # index of 4096 slots at capacity: the eviction window sees ~16 entries


def host(i):
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def udp_flows(start, n):
    return [udp4(host(start + i), "192.0.2.1", 1024 + (i % 50000), 53) for i in range(n)]


def assured_tcp(start, n):
    frames = []
    for i in range(n):
        c = host(start + i)
        frames += [tcp4(c, "192.0.2.2", 40000, 80, SYN, seq=100),
                   tcp4("192.0.2.2", c, 80, 40000, SYN | ACK, seq=900, ack=101),
                   tcp4(c, "192.0.2.2", 40000, 80, ACK, seq=101, ack=901)]
    return frames


def run(t, frames, t0=0.0, zone=0):
    ts = [t0 + 1e-6 * i for i in range(len(frames))]
    return t.process(Batch.from_frames(frames, ts=ts), zone=zone).ct_state


def n_assured(t):
    return int(np.count_nonzero(t.entries()["status"] & ASSURED))


def test_unassured_entries_make_room():
    t = Tracker(max_conns=CAP, seed=1)
    assert (run(t, udp_flows(0, CAP)) == TRK | NEW).all()
    st = run(t, udp_flows(100_000, 100), t0=1.0)
    assert (st == TRK | NEW).all()
    s = t.stats()
    assert s["early_drop"] == 100 and s["drop"] == 0 and len(t) == CAP
    # 100 entries were evicted, each for a new one (a new one, unassured too, may itself have been
    # evicted by a later one, as in the kernel).
    new = sum(t.lookup(host(100_000 + i), "192.0.2.1", "udp", 1024 + i, 53) is not None
              for i in range(100))
    old = sum(t.lookup(host(i), "192.0.2.1", "udp", 1024 + i, 53) is not None for i in range(CAP))
    assert new + old == CAP and new >= 90
    assert t._engine.check_invariants() == []


def test_assured_connections_are_never_dropped():
    t = Tracker(max_conns=CAP, seed=2)
    run(t, assured_tcp(0, CAP))
    assert n_assured(t) == CAP
    st = run(t, [tcp4(host(50_000 + i), "192.0.2.2", 40000, 80, SYN, seq=1) for i in range(100)], t0=1.0)
    assert (st == TRK | INV).all()
    s = t.stats()
    assert s["drop"] == 100 and s["early_drop"] == 0
    assert s["reasons"] == {"table full, packet dropped": 100}
    assert n_assured(t) == CAP and len(t) == CAP


def test_flood_evicts_only_unassured():
    t = Tracker(max_conns=CAP, seed=3)
    run(t, assured_tcp(0, CAP // 2))
    run(t, udp_flows(10_000, CAP // 2), t0=1.0)
    assert len(t) == CAP
    syns = [tcp4(host(200_000 + i), "192.0.2.2", 1000 + i, 80, SYN, seq=1) for i in range(5 * CAP)]
    st = run(t, syns, t0=2.0)
    s = t.stats()
    assert n_assured(t) == CAP // 2                  # every ASSURED connection survived
    assert s["early_drop"] + s["drop"] == 5 * CAP
    assert int(np.count_nonzero(st == TRK | NEW)) == s["early_drop"]
    assert s["early_drop"] > 4 * CAP                 # nearly every SYN found an unassured victim
    assert t._engine.check_invariants() == []


def test_dead_entries_go_before_live_ones():
    t = Tracker(max_conns=CAP, seed=4)
    run(t, udp_flows(0, CAP))
    run(t, udp_flows(100_000, 50), t0=31.0)       # all 2000 are dead by now (30 s)
    s = t.stats()
    assert s["early_drop"] == 0 and s["drop"] == 0


def test_without_early_drop_a_full_table_drops():
    # Open vSwitch's userspace conntrack: no eviction, the new connection is refused.
    t = Tracker(max_conns=CAP, seed=1, early_drop=False)
    run(t, udp_flows(0, CAP))
    assert (run(t, udp_flows(100_000, 10), t0=1.0) == TRK | INV).all()
    s = t.stats()
    assert s["early_drop"] == 0 and s["drop"] == 10
    assert (run(t, udp_flows(200_000, 10), t0=31.0) == TRK | NEW).all()    # dead ones make room


def test_tiny_table_behaves_like_the_kernel_with_a_sparse_hash():
    # 4 entries in 1024 slots: rarely anything near a new connection's hash (the kernel's 8 buckets
    # out of 262144 find nothing either): the packet is dropped.  Either way nothing breaks.
    t = Tracker(max_conns=4, seed=5)
    run(t, udp_flows(0, 4))
    st = run(t, udp_flows(1000, 20), t0=1.0)
    s = t.stats()
    assert s["drop"] + s["early_drop"] == 20 and len(t) == 4
    assert int(np.count_nonzero(st == TRK | NEW)) == s["early_drop"]


# ---- zone limits ------------------------------------------------------------------------------
def test_zone_limit_drops_new_connections_of_that_zone_only():
    t = Tracker(max_conns=64, zone_limits={1: 3})
    st1 = run(t, udp_flows(0, 5), zone=1)
    st0 = run(t, udp_flows(0, 5), zone=0)
    assert list(st1) == [TRK | NEW] * 3 + [TRK | INV] * 2
    assert (st0 == TRK | NEW).all()
    s = t.stats()
    assert s["drop"] == 2 and s["reasons"] == {"zone at its connection limit, packet dropped": 2}
    # Existing connections of the zone still pass.
    assert list(run(t, udp_flows(0, 3), t0=0.5, zone=1)) == [TRK | NEW] * 3
    assert t.lookup(host(0), "192.0.2.1", "udp", 1024, 53, zone=1)["packets"] == [2, 0]


def test_zone_limit_default_and_override():
    t = Tracker(max_conns=64, zone_limits={"default": 2, 7: 4})
    assert int(np.count_nonzero(run(t, udp_flows(0, 6), zone=3) == TRK | NEW)) == 2
    assert int(np.count_nonzero(run(t, udp_flows(0, 6), zone=7) == TRK | NEW)) == 4
    t.set_zone_limits({"default": 0})
    assert int(np.count_nonzero(run(t, udp_flows(100, 6), t0=0.1, zone=3) == TRK | NEW)) == 6


def test_zone_limit_room_after_expiry():
    t = Tracker(max_conns=64, zone_limits={2: 3})
    run(t, udp_flows(0, 3), zone=2)
    assert list(run(t, udp_flows(10, 3), t0=31.0, zone=2)) == [TRK | NEW] * 3
    assert t.stats()["drop"] == 0


def test_zone_limit_set_later_counts_existing_entries():
    t = Tracker(max_conns=64)
    run(t, udp_flows(0, 4), zone=9)
    t.set_zone_limits({9: 4})
    assert list(run(t, udp_flows(10, 1), t0=0.1, zone=9)) == [TRK | INV]
    assert list(t._engine.zone_counts()[[0, 9]]) == [0, 4]


@pytest.mark.parametrize("limits,message", [({70000: 1}, "zone must be 0..65535"),
                                            ({1: -1}, "must be 0..4294967295"),
                                            ({"x": 1}, "zone must be")])
def test_bad_zone_limits(limits, message):
    with pytest.raises(ValueError, match=message):
        Tracker(max_conns=8, zone_limits=limits)


def test_cli_zone_limit():
    bad = subprocess.run([sys.executable, "-m", "fastct.cli", "track", "--zone-limit", "3", "pcaps/udp_exchange.pcap"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--zone-limit takes ZONE=N" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "fastct.cli", "track", "--zone", "3", "--zone-limit", "3=1",
                         "--stats", "pcaps/mixed_demo.pcap"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    assert len([line for line in ok.stdout.splitlines() if line.startswith("ipv")]) == 1


# ---- what the kernel allocates before the protocol looks at a packet ---------------------------
FIN = 0x01


def test_refused_packet_in_a_full_table_still_makes_room():
    # init_conntrack allocates (early drop when full) before tcp_error/tcp_new refuse a lone FIN:
    # an unassured entry is evicted, then the packet is invalid and nothing is added.
    t = Tracker(max_conns=CAP, seed=6)
    run(t, udp_flows(0, CAP))
    fins = [tcp4(host(300_000 + i), "192.0.2.2", 1000 + i, 80, FIN | ACK, seq=1, ack=1) for i in range(50)]
    st = run(t, fins, t0=1.0)
    s = t.stats()
    # Only the first finds the table full: the room it made stays free for the others.
    assert s["early_drop"] == 1 and s["drop"] == 0
    assert s["invalid"] == 50 and int(np.count_nonzero(st == TRK | INV)) == 50
    assert len(t) == CAP - 1
    assert t._engine.check_invariants() == []


def test_refused_packet_in_a_table_of_assured_connections_is_a_drop():
    t = Tracker(max_conns=CAP, seed=7)
    run(t, assured_tcp(0, CAP))
    st = run(t, [tcp4(host(300_000), "192.0.2.2", 1000, 80, FIN | ACK, seq=1, ack=1)], t0=1.0)
    s = t.stats()
    assert list(st) == [TRK | INV] and s["drop"] == 1 and s["invalid"] == 0 and len(t) == CAP


def test_icmp_without_reply_type_never_allocates():
    import dpkt
    from pkt import ip4
    t = Tracker(max_conns=CAP, seed=8)
    run(t, udp_flows(0, CAP))
    ra = dpkt.icmp.ICMP(type=9, code=0, data=b"\0" * 8)      # router advertisement: no reply type
    ip = dpkt.ip.IP(src=ip4("10.9.9.9"), dst=ip4("192.0.2.1"), p=1, ttl=64, data=ra)
    frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + bytes(ip)
    assert list(run(t, [frame], t0=1.0)) == [TRK | INV]
    s = t.stats()
    assert s["invalid"] == 1 and s["early_drop"] == 0 and s["drop"] == 0 and len(t) == CAP


def test_uncommitted_verdict_in_a_full_table():
    # Kernel (and OVS's kernel datapath): ct() without commit still allocates, so it makes room.
    # Open vSwitch's userspace conntrack (early_drop=False) allocates nothing for it.
    for early, expect_room in ((True, True), (False, False)):
        t = Tracker(max_conns=CAP, seed=9, early_drop=early)
        run(t, udp_flows(0, CAP))
        res = t.process(Batch.from_frames(udp_flows(500_000, 10), ts=[1.0] * 10), commit=False)
        assert (res.ct_state == TRK | NEW).all()
        s = t.stats()
        # (Only the first finds the table full.)
        assert s["early_drop"] == (1 if expect_room else 0) and s["drop"] == 0
        assert len(t) == (CAP - 1 if expect_room else CAP)


@pytest.mark.parametrize("random_tuples", [False, True], ids=["synflood", "randflood"])
def test_bench_synflood_keeps_assured_connections(random_tuples):
    # `fastct bench --scenario synflood` (randflood: to random addresses and ports) at a small size:
    # 10 x max_conns spoofed SYNs into a table half full of ASSURED connections that keep talking.
    from fastct.bench import scenario_synflood
    n, tenths, tracker, before, after, bad = scenario_synflood(4000, 256, seed=3, random_tuples=random_tuples)
    s = tracker.stats()
    assert before == after == 2000
    assert bad == 0                                   # every established packet stayed est
    assert n == 40_000 + 40_000 // 16
    assert s["early_drop"] + s["drop"] == 40_000 - 2000   # all but the first 2000 SYNs found it full
    assert s["early_drop"] > 0.99 * (40_000 - 2000)
    assert len(tracker) == 4000
