"""`fastct bench`: reproducible throughput scenarios on generated traffic (fixed seeds).

Frames are built with numpy (no per-packet Python) as Ethernet/IPv4/TCP, 54 bytes each:
- established: N connections are opened (SYN, SYN/ACK, ACK each, not timed), then packets of
  those connections (uniform or Zipf popularity, both directions) are timed;
- new: a storm of SYNs, each one a new connection, into an empty table;
- synflood: 10 x max_conns spoofed SYNs into a table holding max_conns / 2 ASSURED connections that
  keep talking (one packet per 16 of the flood): every ASSURED connection must survive (early drop
  evicts only unassured entries) and the cost per packet must stay flat.
The figure quoted is the median over repeats of packets / wall time of the process() calls.
"""
from __future__ import annotations

import json
import resource
import time

import numpy as np

from fastct.batch import Batch
from fastct.tracker import Tracker

FRAME = 54
_TEMPLATE = bytes.fromhex(
    "020000000002" "020000000001" "0800"                      # Ethernet
    "45000028" "00004000" "40060000" "0a000001" "0a000002"    # IPv4, 40 bytes, TCP
    "04000800" "00000000" "00000000" "5010ffff" "00000000"    # TCP
)


def make_frames(client_ip, server_ip, sport, dport, from_client, flags, seq, ack, ts_ns):
    """Build a Batch of TCP frames from per-packet arrays (all vectorised)."""
    n = len(client_ip)
    frames = np.tile(np.frombuffer(_TEMPLATE, dtype=np.uint8), (n, 1))
    src = np.where(from_client, client_ip, server_ip).astype(">u4")
    dst = np.where(from_client, server_ip, client_ip).astype(">u4")
    sp = np.where(from_client, sport, dport).astype(">u2")
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


def handshake(n_conns, rng, t0):
    """SYN, SYN/ACK, ACK for each connection, in that order per connection, all conns interleaved."""
    c, s, sp, dp = conn_endpoints(n_conns, rng)
    rep = lambda a: np.repeat(a, 3)
    from_client = np.tile(np.array([True, False, True]), n_conns)
    flags = np.tile(np.array([0x02, 0x12, 0x10], dtype=np.uint8), n_conns)
    seq = np.tile(np.array([1000, 5000, 1001], dtype=np.uint32), n_conns)
    ack = np.tile(np.array([0, 1001, 5001], dtype=np.uint32), n_conns)
    ts = t0 + np.arange(3 * n_conns, dtype=np.int64)
    return make_frames(rep(c), rep(s), rep(sp), rep(dp), from_client, flags, seq, ack, ts), (c, s, sp, dp)


def established_traffic(conns, n_packets, rng, t0, zipf=None):
    c, s, sp, dp = conns
    n_conns = len(c)
    if zipf:
        pick = (rng.zipf(zipf, n_packets) - 1) % n_conns
        pick = rng.permutation(n_conns)[pick]
    else:
        pick = rng.integers(0, n_conns, n_packets)
    from_client = rng.random(n_packets) < 0.5
    seq = np.where(from_client, 1001, 5001).astype(np.uint32)
    ack = np.where(from_client, 5001, 1001).astype(np.uint32)
    flags = np.full(n_packets, 0x10, dtype=np.uint8)
    ts = t0 + np.arange(n_packets, dtype=np.int64)
    return make_frames(c[pick], s[pick], sp[pick], dp[pick], from_client, flags, seq, ack, ts)


def _time_process(tracker, batch, batch_size):
    n = len(batch)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        tracker.process(batch.slice(start, min(n, start + batch_size)))
    return time.perf_counter() - t0


def scenario_established(n_conns, n_packets, batch_size, repeats, zipf=None, seed=1):
    rng = np.random.default_rng(seed)
    tracker = Tracker(max_conns=max(n_conns, 1024), seed=seed)
    hs, conns = handshake(n_conns, rng, 1_700_000_000 * 10**9)
    _time_process(tracker, hs, 4096)
    times = []
    t_next = hs.ts[-1] + 1
    for _ in range(repeats):
        traffic = established_traffic(conns, n_packets, rng, t_next, zipf)
        t_next = traffic.ts[-1] + 1
        times.append(_time_process(tracker, traffic, batch_size))
    return n_packets, times, tracker


def scenario_new(n_conns, batch_size, repeats, seed=1):
    times = []
    tracker = None
    for r in range(repeats):
        rng = np.random.default_rng(seed)
        c, s, sp, dp = conn_endpoints(n_conns, rng)
        batch = make_frames(c, s, sp, dp, np.ones(n_conns, dtype=bool), np.full(n_conns, 2, dtype=np.uint8),
                            np.full(n_conns, 1000, dtype=np.uint32), np.zeros(n_conns, dtype=np.uint32),
                            1_700_000_000 * 10**9 + np.arange(n_conns, dtype=np.int64))
        # Entry memory is touched before timing (prefault): the storm measures tracking, not the
        # kernel zeroing fresh pages (~250 ns per connection on this kind of machine).
        tracker = Tracker(max_conns=max(n_conns, 1024), seed=seed, prefault=True)
        times.append(_time_process(tracker, batch, batch_size))
    return n_conns, times, tracker


def scenario_growth(n_conns, batch_size, seed=1):
    """New connections into an empty table that grows to n_conns: per-batch times, worst included."""
    rng = np.random.default_rng(seed)
    c, s, sp, dp = conn_endpoints(n_conns, rng)
    batch = make_frames(c, s, sp, dp, np.ones(n_conns, dtype=bool), np.full(n_conns, 2, dtype=np.uint8),
                        np.full(n_conns, 1000, dtype=np.uint32), np.zeros(n_conns, dtype=np.uint32),
                        1_700_000_000 * 10**9 + np.arange(n_conns, dtype=np.int64))
    tracker = Tracker(max_conns=max(n_conns, 1024), seed=seed)
    times = []
    for start in range(0, n_conns, batch_size):
        t0 = time.perf_counter()
        tracker.process(batch.slice(start, min(n_conns, start + batch_size)))
        times.append(time.perf_counter() - t0)
    return np.array(times), tracker


def scenario_synflood(n_conns, batch_size, seed=1, factor=10):
    """A SYN flood of factor x n_conns spoofed sources into a table of n_conns (nf_conntrack_max)
    already holding n_conns / 2 ASSURED connections, which keep talking through it.

    Returns (flood packets, per-tenth wall times, tracker, assured before, assured after,
    established packets that were not est) -- early drop must keep every ASSURED connection and the
    per-packet cost must not grow as the flood goes on."""
    rng = np.random.default_rng(seed)
    tracker = Tracker(max_conns=n_conns, seed=seed, prefault=True)
    n_live = n_conns // 2
    t0 = 1_700_000_000 * 10**9
    hs, conns = handshake(n_live, rng, t0)
    _time_process(tracker, hs, 4096)
    status = tracker.entries()["status"]
    assured_before = int(np.count_nonzero(status & 4))
    n_flood = factor * n_conns
    src = (0x64000000 + rng.integers(0, 1 << 24, n_flood)).astype(np.uint32)    # 100.x.y.z
    dst = np.full(n_flood, 0xC0A80001, dtype=np.uint32)
    sport = rng.integers(1024, 65535, n_flood).astype(np.uint32)
    flood = make_frames(src, dst, sport, np.full(n_flood, 80, dtype=np.uint32), np.ones(n_flood, dtype=bool),
                        np.full(n_flood, 2, dtype=np.uint8), rng.integers(0, 1 << 32, n_flood, dtype=np.uint64),
                        np.zeros(n_flood, dtype=np.uint32), hs.ts[-1] + 1 + np.arange(n_flood, dtype=np.int64))
    # One established packet of the live connections after every 16 flood packets.
    n_est = n_flood // 16
    est = established_traffic(conns, n_est, rng, 0)
    order = np.concatenate([np.arange(n_flood), np.arange(n_est) * 16 + 15.5])
    merged = _interleave(flood, est, np.argsort(order, kind="stable"))
    tenths = []
    bad = 0
    n = len(merged)
    step = max(1, n // 10)
    for part in range(10):
        lo, hi = part * step, (n if part == 9 else (part + 1) * step)
        t_start = time.perf_counter()
        for start in range(lo, hi, batch_size):
            res = tracker.process(merged.slice(start, min(hi, start + batch_size)))
            is_est = merged.wirelen[start:min(hi, start + batch_size)] == FRAME + 1
            bad += int(np.count_nonzero((res.ct_state[is_est] & 0x02) == 0))
        tenths.append(time.perf_counter() - t_start)
    status = tracker._engine.entries_view()["status"]
    assured_after = int(np.count_nonzero(status & 4))
    return n, tenths, tracker, assured_before, assured_after, bad


def _interleave(a, b, order):
    """One Batch with a's packets then b's, in `order`; b's packets are marked by wirelen FRAME + 1
    (the engine counts IP lengths, so the mark changes nothing it measures)."""
    buf = np.concatenate([a.buf, b.buf])
    offsets = np.concatenate([a.offsets, b.offsets + len(a.buf)])[order]
    caplen = np.concatenate([a.caplen, b.caplen])[order]
    wirelen = np.concatenate([a.wirelen, b.wirelen + 1])[order]
    ts = np.sort(np.concatenate([a.ts, a.ts[np.minimum(np.arange(len(b.ts)) * 16 + 15, len(a.ts) - 1)]]))
    return Batch(buf, offsets, caplen, wirelen, ts, np.zeros(len(order), dtype=np.uint16), a.if_linktype,
                 a.if_fcslen)


SIZES = {"1k": 1_000, "100k": 100_000, "1M": 1_000_000, "10M": 10_000_000}


def add_arguments(p):
    p.add_argument("--scenario", choices=["established", "new", "growth", "synflood", "all"], default="all")
    p.add_argument("--conns", default="1k,100k,1M", help="comma list of 1k,100k,1M,10M")
    p.add_argument("--packets", type=int, default=2_000_000, help="timed packets per repeat")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--zipf", type=float, default=None, help="Zipf exponent for popularity (default uniform)")
    p.add_argument("--json", action="store_true", help="one JSON object per result")


def run(args) -> int:
    sizes = []
    for s in args.conns.split(","):
        if s not in SIZES:
            print(f"fastct: error: unknown size {s!r}; use {','.join(SIZES)}")
            return 2
        sizes.append(SIZES[s])
    results = []
    for n in sizes:
        if args.scenario in ("established", "all"):
            pk, times, tr = scenario_established(n, args.packets, args.batch_size, args.repeats, args.zipf)
            results.append(_result("established", n, pk, times, tr, args))
        if args.scenario in ("new", "all"):
            pk, times, tr = scenario_new(n, args.batch_size, args.repeats)
            results.append(_result("new", n, pk, times, tr, args))
        if args.scenario in ("growth", "all"):
            times, tr = scenario_growth(n, args.batch_size)
            r = _result("growth", n, n, [times.sum()], tr, args)
            r.update(batch_ms_median=float(np.median(times) * 1e3), batch_ms_worst=float(times.max() * 1e3),
                     grows=tr.stats()["grows"])
            results.append(r)
        if args.scenario in ("synflood", "all"):
            pk, tenths, tr, before, after, bad = scenario_synflood(n, args.batch_size)
            r = _result("synflood", n, pk, [sum(tenths)], tr, args)
            per_tenth = [t / (pk / 10) * 1e9 for t in tenths]
            st = tr.stats()
            r.update(ns_per_packet_by_tenth=[round(x, 1) for x in per_tenth], assured_before=before,
                     assured_after=after, established_not_est=bad, early_drop=st["early_drop"],
                     drop=st["drop"])
            results.append(r)
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['scenario']:<12} conns={r['conns']:>9} batch={r['batch']:>5}  "
                  f"{r['mpps_median']:7.2f} Mpps (min {r['mpps_min']:.2f}, max {r['mpps_max']:.2f})  "
                  f"{r['ns_per_packet']:6.1f} ns/pkt  {r['bytes_per_conn']:.0f} B/conn  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB"
                  + (f"  batch median {r['batch_ms_median']:.2f} ms, worst {r['batch_ms_worst']:.2f} ms "
                     f"({r['grows']} grows)" if "grows" in r else "")
                  + (f"\n{'':12} ASSURED {r['assured_before']} -> {r['assured_after']}, "
                     f"established packets not est: {r['established_not_est']}, early_drop "
                     f"{r['early_drop']}, drop {r['drop']}; ns/pkt by tenth of the flood: "
                     f"{' '.join(f'{x:.0f}' for x in r['ns_per_packet_by_tenth'])}"
                     if r["scenario"] == "synflood" else ""))
    return 0


def _result(name, n, packets, times, tracker, args):
    rates = sorted(packets / t / 1e6 for t in times)
    med = float(np.median(rates))
    return {"scenario": name, "conns": n, "batch": args.batch_size, "packets": packets,
            "zipf": args.zipf, "mpps_median": med, "mpps_min": rates[0], "mpps_max": rates[-1],
            "ns_per_packet": 1e3 / med, "bytes_per_conn": tracker.memory_bytes() / max(n, 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
