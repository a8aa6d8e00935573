"""pytest-benchmark versions of `fastct bench`'s scenarios, on the same generated traffic (fixed
seeds, fastct.bench) and trackers built the same way (fastct.bench.make_tracker):

    pytest benchmarks --benchmark-enable                 # small sizes, a few minutes
    pytest benchmarks --benchmark-enable -m slow         # 1M and 10M connections (long, ~2 GB per 10M table)

established (1k/100k; slow: 1M/10M; uniform and Zipf(1) popularity), new (SYN storm, prefaulted),
growth, synflood (10 x max_conns), mixed (slow: 1M flows; 10M flows only through `fastct bench`,
which builds it segment by segment), each at batch sizes 1, 32, 256, 4096 (small batches time
fewer packets: at most CALLS process() calls a round), and a capture end to end.  Each round is one
timed pass of process() calls; extra_info carries packets, Mpps, ns/packet (from the median round),
bytes per connection and the process's peak RSS.
"""
import functools
import resource
from dataclasses import replace

import numpy as np
import pytest

from fastct import CaptureReader
from fastct.bench import (T0, BenchOptions, _reply_side, _time_process, established_traffic, handshake, make_tracker,
                          mixed_segments, open_connections, parse_popularity, syn_storm, synflood_part)

OPTS = BenchOptions(seed=1)
BATCHES = [1, 32, 256, 4096]
PACKETS = 500_000       # established: packets per round
CALLS = 20_000          # at most this many process() calls per round (batch sizes 1 and 32)


def sizes(quick, slow):
    return [*quick, *(pytest.param(n, marks=pytest.mark.slow) for n in slow)]


def timed(n, batch):
    return min(n, batch * CALLS)


def _record(benchmark, packets, conns, batch, tracker, **extra):
    benchmark.extra_info.update(packets=packets, conns=conns, batch_size=batch,
                                bytes_per_conn=tracker.memory_bytes() / conns,
                                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra)
    med = benchmark.stats.stats.median if benchmark.stats else None
    if med:
        benchmark.extra_info["mpps"] = packets / med / 1e6
        benchmark.extra_info["ns_per_packet"] = med / packets * 1e9


@functools.lru_cache(maxsize=1)
def _established_table(conns):
    """A table with `conns` open connections (the parametrisation keeps one size at a time)."""
    rng = np.random.default_rng(OPTS.seed)
    tracker = make_tracker(OPTS, max(conns, 1024))
    endpoints, t_next = open_connections(tracker, conns, rng, T0)
    return {"tracker": tracker, "conns": endpoints, "t": t_next, "rng": rng}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("popularity", ["uniform", "zipf:1"])
@pytest.mark.parametrize("conns", sizes([1_000, 100_000], [1_000_000, 10_000_000]))
@pytest.mark.benchmark(group="established")
def test_established(benchmark, conns, popularity, batch):
    table = _established_table(conns)
    n = timed(PACKETS, batch)
    traffic = established_traffic(table["conns"], n, table["rng"], table["t"], parse_popularity(popularity))

    def setup():                         # every round later in time than the last
        traffic.ts += table["t"] - int(traffic.ts[0])
        table["t"] = int(traffic.ts[-1]) + 1
        return (table["tracker"], traffic, batch), {}

    benchmark.pedantic(_time_process, setup=setup, rounds=5, iterations=1)
    _record(benchmark, n, conns, batch, table["tracker"], popularity=popularity)


@pytest.mark.parametrize("nat", ["off", "dnat", "rules"])
@pytest.mark.parametrize("conns", sizes([100_000], [1_000_000]))
@pytest.mark.benchmark(group="nat")
def test_established_nat(benchmark, conns, nat):
    """NAT on and off: every connection DNAT'd to one backend (fastct.bench.make_tracker), its
    packets rewritten; "rules": the same from an nftables ruleset with a raw and a filter chain
    every packet walks.  The frames are restored before each round (untimed)."""
    opts = replace(OPTS, nat=nat)
    rng = np.random.default_rng(opts.seed)
    tracker = make_tracker(opts, max(conns, 1024))
    endpoints, t_next = open_connections(tracker, conns, rng, T0, reply_from=_reply_side(opts))
    traffic = established_traffic(endpoints, PACKETS, rng, t_next, None, _reply_side(opts))
    pristine = traffic.buf.copy()
    clock = {"t": t_next}

    def setup():
        traffic.buf[:] = pristine
        traffic.ts += clock["t"] - int(traffic.ts[0])
        clock["t"] = int(traffic.ts[-1]) + 1
        return (tracker, traffic, 4096), {}

    benchmark.pedantic(_time_process, setup=setup, rounds=5, iterations=1)
    _record(benchmark, PACKETS, conns, 4096, tracker, nat=nat)


@functools.lru_cache(maxsize=1)
def _storm(conns):
    return syn_storm(conns, np.random.default_rng(OPTS.seed))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("conns", sizes([10_000, 100_000], [1_000_000, 10_000_000]))
@pytest.mark.benchmark(group="new")
def test_new_connections(benchmark, conns, batch):
    syns = _storm(conns).slice(0, timed(conns, batch))
    made = []

    def fresh():
        made.clear()                     # the previous table goes first
        made.append(make_tracker(OPTS, max(conns, 1024), prefault=True))
        return (made[0], syns, batch), {}

    benchmark.pedantic(_time_process, setup=fresh, rounds=5, iterations=1)
    _record(benchmark, len(syns), conns, batch, made[0])


@pytest.mark.parametrize("batch", [256, 4096])
@pytest.mark.parametrize("conns", sizes([100_000], [1_000_000]))
@pytest.mark.benchmark(group="growth")
def test_growth(benchmark, conns, batch):
    syns = _storm(conns)
    made = []

    def fresh():
        made.clear()
        made.append(make_tracker(OPTS, max(conns, 1024)))        # starts small and grows
        return (made[0], syns, batch), {}

    benchmark.pedantic(_time_process, setup=fresh, rounds=3, iterations=1)
    _record(benchmark, conns, conns, batch, made[0], grows=made[0].stats()["grows"])


@functools.lru_cache(maxsize=1)
def _synflood_input(conns, factor=10):
    rng = np.random.default_rng(OPTS.seed)
    hs, endpoints = handshake(conns // 2, rng, T0)
    return hs, synflood_part(endpoints, factor * conns, rng, int(hs.ts[-1]) + 1)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("conns", sizes([10_000], [100_000, 1_000_000]))
@pytest.mark.benchmark(group="synflood")
def test_synflood(benchmark, conns, batch):
    hs, flood = _synflood_input(conns)
    flood = flood.slice(0, timed(len(flood), batch))
    made = []

    def fresh():
        made.clear()
        made.append(make_tracker(OPTS, conns, prefault=True))
        _time_process(made[0], hs, 4096)                            # conns / 2 ASSURED, untimed
        return (made[0], flood, batch), {}

    benchmark.pedantic(_time_process, setup=fresh, rounds=3, iterations=1)
    st = made[0].stats()
    _record(benchmark, len(flood), conns, batch, made[0], early_drop=st["early_drop"], drop=st["drop"])


@functools.lru_cache(maxsize=1)
def _mixed(flows):
    (trace,) = mixed_segments(flows, OPTS.seed)        # up to 1M flows: one segment
    return trace


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("flows", sizes([10_000, 100_000], [1_000_000]))
@pytest.mark.benchmark(group="mixed")
def test_mixed(benchmark, flows, batch):
    trace = _mixed(flows)
    packets = trace.batch.slice(0, timed(len(trace.batch), batch))
    made = []

    def fresh():
        made.clear()
        made.append(make_tracker(OPTS, max(flows, 1024), prefault=True))
        return (made[0], packets, batch), {}

    benchmark.pedantic(_time_process, setup=fresh, rounds=5, iterations=1)
    mix = trace.summary()
    _record(benchmark, len(packets), flows, batch, made[0], invalid=made[0].stats()["invalid"],
            trace_packets=mix["packets"], mix={k: mix[k] for k in ("tcp", "udp", "icmp", "ipv6")})


@pytest.mark.benchmark(group="pcap")
def test_pcap_end_to_end(benchmark, tmp_path):
    # A capture written to disk (page cache) and read back through CaptureReader + process().
    rng = np.random.default_rng(1)
    hs, cs = handshake(10_000, rng, T0)
    traffic = established_traffic(cs, 1_000_000, rng, int(hs.ts[-1]) + 1)
    path = tmp_path / "bench.pcap"
    _write_pcap(path, [hs, traffic])
    made = []

    def run():
        made[:] = [make_tracker(OPTS, 262_144)]
        for b in CaptureReader(path):
            made[0].process(b)

    benchmark.pedantic(run, rounds=3, iterations=1)
    _record(benchmark, len(hs) + len(traffic), 10_000, 4096, made[0])


def _write_pcap(path, batches):
    """A classic pcap (nanosecond) of fixed-length frames."""
    import struct
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for b in batches:
            n = len(b)
            hdr = np.zeros(n, dtype=[("sec", "<u4"), ("nsec", "<u4"), ("cap", "<u4"), ("wire", "<u4")])
            hdr["sec"] = b.ts // 10**9
            hdr["nsec"] = b.ts % 10**9
            hdr["cap"] = b.caplen
            hdr["wire"] = b.wirelen
            frames = b.buf.reshape(n, -1)
            rec = np.concatenate([hdr.view(np.uint8).reshape(n, 16), frames], axis=1)
            f.write(rec.tobytes())
