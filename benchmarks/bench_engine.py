"""Engine throughput: established traffic over 1k/100k/1M connections, a new-connection storm, and
a capture end to end.  Inputs are generated with fixed seeds by fastct.bench (54-byte TCP frames)."""
import numpy as np
import pytest

from fastct import CaptureReader, Tracker
from fastct.bench import conn_endpoints, established_traffic, handshake, make_frames, _time_process

T0 = 1_700_000_000 * 10**9


def _record(benchmark, packets):
    med = benchmark.stats.stats.median if benchmark.stats else None
    if med:
        benchmark.extra_info["mpps"] = packets / med / 1e6
        benchmark.extra_info["ns_per_packet"] = med / packets * 1e9


@pytest.mark.parametrize("batch", [32, 256, 4096])
@pytest.mark.parametrize("conns", [1_000, 100_000, 1_000_000])
@pytest.mark.benchmark(group="established")
def test_established(benchmark, conns, batch):
    rng = np.random.default_rng(1)
    t = Tracker(max_conns=max(conns, 1024), seed=1)
    hs, cs = handshake(conns, rng, T0)
    _time_process(t, hs, 4096)
    traffic = established_traffic(cs, 1_000_000, rng, int(hs.ts[-1]) + 1)
    benchmark.pedantic(_time_process, args=(t, traffic, batch), rounds=5, iterations=1)
    _record(benchmark, len(traffic))


@pytest.mark.parametrize("conns", [100_000, 1_000_000])
@pytest.mark.benchmark(group="new")
def test_new_connections(benchmark, conns):
    rng = np.random.default_rng(1)
    c, s, sp, dp = conn_endpoints(conns, rng)
    syns = make_frames(c, s, sp, dp, np.ones(conns, dtype=bool), np.full(conns, 2, dtype=np.uint8),
                       np.full(conns, 1000, dtype=np.uint32), np.zeros(conns, dtype=np.uint32),
                       T0 + np.arange(conns, dtype=np.int64))

    def fresh():
        return (Tracker(max_conns=conns, seed=1), syns, 4096), {}

    benchmark.pedantic(_time_process, setup=fresh, rounds=5, iterations=1)
    _record(benchmark, conns)


@pytest.mark.benchmark(group="pcap")
def test_pcap_end_to_end(benchmark, tmp_path):
    # A capture written to disk (page cache) and read back through CaptureReader + process().
    rng = np.random.default_rng(1)
    hs, cs = handshake(10_000, rng, T0)
    traffic = established_traffic(cs, 1_000_000, rng, int(hs.ts[-1]) + 1)
    path = tmp_path / "bench.pcap"
    _write_pcap(path, [hs, traffic])

    def run():
        t = Tracker(seed=1)
        for b in CaptureReader(path):
            t.process(b)
        return t

    benchmark.pedantic(run, rounds=3, iterations=1)
    _record(benchmark, len(hs) + len(traffic))


def _write_pcap(path, batches):
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
