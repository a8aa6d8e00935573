"""End-to-end rate of `fastct track`-style processing from a pcap in the page cache, as a marginal
figure: two captures with the same 10,000 connections, one with 1M and one with 5M more established
packets; (time(big) - time(small)) / (packets(big) - packets(small)) cancels start-up and output.

    python benchmarks/pcap_marginal.py [--repeats 5]
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import T0, _write_pcap  # noqa: E402

from fastct.bench import established_traffic, handshake  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for n in (1_000_000, 5_000_000):
            rng = np.random.default_rng(1)
            hs, cs = handshake(10_000, rng, T0)
            tr = established_traffic(cs, n, rng, int(hs.ts[-1]) + 1)
            path = Path(d) / f"m{n}.pcap"
            _write_pcap(path, [hs, tr])
            files[n] = (path, len(hs) + n)
            path.read_bytes()         # into the page cache
        times = {n: [] for n in files}
        for _ in range(args.repeats):
            for n, (path, _) in files.items():
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "fastct.cli", "track", str(path)], check=True, capture_output=True)
                times[n].append(time.perf_counter() - t0)
        small, big = sorted(files)
        dt = statistics.median(times[big]) - statistics.median(times[small])
        dp = files[big][1] - files[small][1]
        print(f"marginal end to end: {dp / dt / 1e6:.2f} Mpps ({dt / dp * 1e9:.1f} ns/packet); "
              f"medians {statistics.median(times[small]):.2f} s / {statistics.median(times[big]):.2f} s "
              f"for {files[small][1]} / {files[big][1]} packets")


if __name__ == "__main__":
    main()
