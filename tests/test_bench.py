"""`fastct bench`: its options and JSON fields, the traffic generators (determinism, the Zipf shape,
the mixed profile), and the verdicts the mixed profile must get, worked out here from what TCP, UDP
and ICMP do -- not from fastct's output."""
import ipaddress
import json
import struct
from collections import Counter, defaultdict

import numpy as np
import pytest

import fastct
from fastct import bench
from fastct.cli import main

NEW, EST, RPL, INV, TRK, REL = 0x01, 0x02, 0x08, 0x10, 0x20, 0x04
FIELDS = {"scenario", "conns", "batch_size", "packets", "repeats", "seconds_median", "mpps_median",
          "mpps_min", "mpps_max", "ns_per_packet", "bytes_per_conn", "peak_rss_mb", "seed", "version"}


def run_json(capsys, *argv):
    assert main(["bench", *argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def batch_bytes(b):
    return (b.buf.tobytes(), b.offsets.tobytes(), b.caplen.tobytes(), b.wirelen.tobytes(), b.ts.tobytes())


# ---- command line -----------------------------------------------------------------------------
def test_json_fields_and_one_result_per_batch_size(capsys):
    rows = run_json(capsys, "--scenario", "established", "--conns", "1k", "--packets", "3000",
                    "--repeats", "2", "--batch-size", "1,32,256", "--seed", "7")
    assert [r["batch_size"] for r in rows] == [1, 32, 256]
    for r in rows:
        assert FIELDS <= set(r)
        assert r["scenario"] == "established" and r["conns"] == 1000 and r["packets"] == 3000
        assert r["repeats"] == 2 and r["seed"] == 7 and r["version"] == fastct.__version__
        assert r["popularity"] == "uniform" and r["zipf"] is None
        assert r["mpps_min"] <= r["mpps_median"] <= r["mpps_max"]
        assert r["ns_per_packet"] == pytest.approx(1e3 / r["mpps_median"])
        assert r["seconds_min"] <= r["seconds_median"] <= r["seconds_max"]
        assert r["bytes_per_conn"] == pytest.approx(r["table_bytes"] / 1000)
        assert 100 < r["bytes_per_conn"] < 1000 and r["peak_rss_mb"] > 10
        assert r["batch"] == r["batch_size"]           # the older name is kept


def test_text_output(capsys):
    assert main(["bench", "--scenario", "established,new", "--conns", "1k", "--packets", "2000",
                 "--repeats", "1", "--batch-size", "64,512"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["established", "established", "new", "new"]
    for ln in lines:
        for word in ("Mpps", "ns/pkt", "B/conn", "peak RSS"):
            assert word in ln


def test_stage_timing(capsys):
    # Each stage's time is a part of the timed interval (one repeat: no medians to mix), measured
    # with a clock calibrated over that same interval, so each is positive and they sum to less.
    rows = run_json(capsys, "--scenario", "established,new", "--conns", "1k", "--packets", "20000",
                    "--repeats", "1", "--batch-size", "4096", "--stages")
    assert [r["scenario"] for r in rows] == ["established", "new"]
    for r in rows:
        st = r["stage_ns"]
        assert set(st) == {"parse", "index", "update"}
        assert all(v > 0 for v in st.values())
        assert sum(st.values()) < r["ns_per_packet"]
    assert main(["bench", "--scenario", "established", "--conns", "1k", "--packets", "2000",
                 "--repeats", "1", "--stages"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == ["stages,", "ns/pkt:"]
    # Without --stages the clock stays off: no stage fields.
    assert all("stage_ns" not in r for r in run_json(capsys, "--scenario", "established", "--conns", "1k",
                                                      "--packets", "2000", "--repeats", "1"))


def test_stage_clock_counts_only_when_on():
    from fastct.bench import established_traffic, handshake, _time_process
    t = fastct.Tracker(max_conns=1024, seed=1)
    hs, conns = handshake(100, np.random.default_rng(1), bench.T0)
    _time_process(t, hs, 64)
    assert t._engine.stage_ticks() == (0, 0, 0)
    t._engine.set_options(stage_clock=True)
    _time_process(t, established_traffic(conns, 1000, np.random.default_rng(2), bench.T0 + 10**9), 64)
    ticks = t._engine.stage_ticks()
    assert all(k > 0 for k in ticks)
    t._engine.set_options(stage_clock=False)
    _time_process(t, established_traffic(conns, 1000, np.random.default_rng(3), bench.T0 + 2 * 10**9), 64)
    assert t._engine.stage_ticks() == ticks


def test_every_scenario_small(capsys):
    rows = run_json(capsys, "--scenario", "all", "--conns", "1000", "--packets", "2000", "--repeats", "1",
                    "--batch-size", "256,4096")
    got = Counter(r["scenario"] for r in rows)
    assert got == {s: 2 for s in bench.SCENARIOS}
    for r in rows:
        assert FIELDS <= set(r)
        if r["scenario"] in ("synflood", "randflood"):
            assert r["packets"] == 10_000 + 10_000 // 16
            assert r["assured_after"] == r["assured_before"] == 500 and r["established_not_est"] == 0
            assert len(r["ns_per_packet_by_tenth"]) == 10
        if r["scenario"] == "mixed":
            assert r["flows"] == 1000 and r["packets"] == r["trace_packets"] > 5000
            assert r["invalid"] == 0 and r["drop"] == 0 and r["entries"] == 1000
            assert set(r["mix"]) == {"tcp", "udp", "icmp", "ipv6"}
        if r["scenario"] == "growth":
            assert r["grows"] >= 0 and r["batch_ms_worst"] >= r["batch_ms_median"]


def test_popularity_options(capsys):
    rows = run_json(capsys, "--scenario", "established", "--conns", "1k", "--packets", "2000", "--repeats", "1",
                    "--batch-size", "128", "--popularity", "uniform,zipf,zipf:1.5")
    assert [r["popularity"] for r in rows] == ["uniform", "zipf:1", "zipf:1.5"]
    assert [r["zipf"] for r in rows] == [None, 1.0, 1.5]
    rows = run_json(capsys, "--scenario", "established", "--conns", "1k", "--packets", "2000", "--repeats", "1",
                    "--zipf", "0.9")
    assert [r["popularity"] for r in rows] == ["zipf:0.9"]
    assert main(["bench", "--zipf", "1", "--popularity", "uniform"]) == 2


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--batch-size", "32,x"], ["--conns", "3x"],
                                  ["--popularity", "pareto"], ["--scenario", "foo"], ["--zipf", "-1"],
                                  ["--repeats", "0"], ["--seed", "-1"]])
def test_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2


def test_small_batches_time_at_most_max_calls(capsys, monkeypatch):
    monkeypatch.setattr(bench, "MAX_CALLS", 50)
    rows = run_json(capsys, "--scenario", "established,new,mixed", "--conns", "1k", "--packets", "5000",
                    "--repeats", "1", "--batch-size", "1,32,4096")
    packets = {(r["scenario"], r["batch_size"]): r["packets"] for r in rows}
    assert packets[("established", 1)] == 50 and packets[("established", 32)] == 1600
    assert packets[("established", 4096)] == 5000
    assert packets[("new", 1)] == 50 and packets[("new", 4096)] == 1000
    assert packets[("mixed", 1)] == 50 and packets[("mixed", 32)] == 1600


def test_every_scenario_builds_its_tracker_through_make_tracker(capsys, monkeypatch):
    # The one place a --nat option will configure the tracker.
    calls = []
    original = bench.make_tracker

    def spy(opts, max_conns, prefault=False):
        assert isinstance(opts, bench.BenchOptions) and opts.seed == 3
        calls.append(max_conns)
        return original(opts, max_conns, prefault)

    monkeypatch.setattr(bench, "make_tracker", spy)
    for scenario in bench.SCENARIOS:
        calls.clear()
        run_json(capsys, "--scenario", scenario, "--conns", "1000", "--packets", "1000", "--repeats", "1",
                 "--seed", "3")
        assert calls, scenario


# ---- generators -------------------------------------------------------------------------------
def test_generators_are_deterministic():
    def make(seed):
        rng = np.random.default_rng(seed)
        hs, conns = bench.handshake(500, rng, bench.T0)
        out = [hs, bench.established_traffic(conns, 3000, rng, bench.T0, None),
               bench.established_traffic(conns, 3000, rng, bench.T0, 1.0),
               bench.syn_storm(700, rng), bench.synflood_part(conns, 1600, rng, bench.T0),
               bench.mixed_trace(300, rng).batch]
        out += [t.batch for t in bench.mixed_segments(250, seed, segment_flows=100)]
        return [batch_bytes(b) for b in out]

    a, b, c = make(5), make(5), make(6)
    assert a == b
    for x, y in zip(a, c):
        assert x[0] != y[0]


def test_open_connections_in_chunks_is_the_handshake():
    one, chunked = fastct.Tracker(max_conns=2000, seed=1), fastct.Tracker(max_conns=2000, seed=1)
    hs, conns = bench.handshake(1500, np.random.default_rng(2), bench.T0)
    one.process(hs)
    conns2, t_end = bench.open_connections(chunked, 1500, np.random.default_rng(2), bench.T0, chunk=128)
    assert all(np.array_equal(x, y) for x, y in zip(conns, conns2))
    assert t_end == int(hs.ts[-1]) + 1
    assert one.entries().tobytes() == chunked.entries().tobytes()
    assert len(chunked) == 1500 and len(chunked.entries(state="ESTABLISHED", status="ASSURED")) == 1500


def harmonic(n, s):
    return sum(k ** -s for k in range(1, n + 1))


@pytest.mark.parametrize("s", [0.8, 1.0, 1.5])
def test_zipf_shape(s):
    n, samples = 1000, 400_000
    ranks = bench.zipf_ranks(n, s, samples, np.random.default_rng(1))
    assert ranks.min() >= 0 and ranks.max() < n
    counts = np.bincount(ranks, minlength=n)
    top = 1 / harmonic(n, s)                     # P(rank 1) of the bounded Zipf distribution
    assert counts[0] / samples == pytest.approx(top, rel=0.03)
    assert counts[1] / counts[0] == pytest.approx(2 ** -s, rel=0.05)
    assert counts[9] / counts[0] == pytest.approx(10 ** -s, rel=0.15)
    assert counts[:10].sum() / samples == pytest.approx(harmonic(10, s) * top, rel=0.02)


def test_zipf_popularity_of_established_traffic():
    # The most popular connection's share of the packets, counted from the frames themselves.
    rng = np.random.default_rng(4)
    _, conns = bench.handshake(1000, rng, bench.T0)

    def top_share(zipf):
        t = bench.established_traffic(conns, 200_000, rng, bench.T0, zipf)
        frames = t.buf.reshape(len(t), bench.FRAME)
        from_client = frames[:, 26] == 10                          # 10.x.y.z sends from the client port
        ports = np.where(from_client, frames[:, 34].astype(int) * 256 + frames[:, 35],
                         frames[:, 36].astype(int) * 256 + frames[:, 37])
        return np.bincount(ports).max() / len(t)

    assert top_share(1.0) == pytest.approx(1 / harmonic(1000, 1.0), rel=0.05)     # ~0.134
    assert top_share(None) < 0.002                                                # 1/1000 + noise
    assert top_share(0) < 0.002


# ---- the mixed profile and its verdicts ---------------------------------------------------------
def parse(frame):
    """(proto, src, dst, sport, dport, tcp flags, icmp type) of an Ethernet frame, read here
    independently of fastct (ports are the echo id for ICMP)."""
    if frame[12:14] == b"\x08\x00":
        ihl = (frame[14] & 15) * 4
        proto, src, dst, l4 = frame[23], frame[26:30], frame[30:34], 14 + ihl
    else:
        assert frame[12:14] == b"\x86\xdd"
        proto, src, dst, l4 = frame[20], frame[22:38], frame[38:54], 54
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if proto in (6, 17):
        sport, dport = struct.unpack(">HH", frame[l4:l4 + 4])
        return proto, src, dst, sport, dport, frame[l4 + 13] if proto == 6 else 0, None
    assert proto in (1, 58)
    ident, = struct.unpack(">H", frame[l4 + 4:l4 + 6])
    return proto, src, dst, ident, ident, 0, frame[l4]


SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
ECHO_REQUEST, ECHO_REPLY = {1: 8, 58: 128}, {1: 0, 58: 129}


def test_mixed_profile_verdicts_follow_the_protocols():
    trace = bench.mixed_trace(2000, np.random.default_rng(11))
    b = trace.batch
    assert np.all(np.diff(b.ts) >= 0)
    packets = [parse(b.buf[o:o + c].tobytes()) for o, c in zip(b.offsets, b.caplen)]
    tracker = fastct.Tracker(max_conns=4096, seed=1)
    got = np.concatenate([tracker.process(b.slice(i, min(len(b), i + 256))).ct_state
                          for i in range(0, len(b), 256)])

    # Expected: every packet tracked; `rpl` when sent by the side that did not start the connection;
    # `new` until the connection has carried a packet in the reply direction, `est` from that
    # packet on.  TCP: SYN new, SYN/ACK est+rpl, the handshake's ACK est; UDP: a datagram never
    # answered stays new; ICMP: the echo request starts it, the echo reply answers it.
    conns = {}
    for i, (proto, src, dst, sport, dport, flags, itype) in enumerate(packets):
        key = (proto, frozenset([(src, sport), (dst, dport)]))
        c = conns.get(key)
        if c is None:
            c = conns[key] = {"proto": proto, "client": (src, sport), "server": (dst, dport), "packets": [],
                              "replied": False, "ts": []}
            if proto == 6:
                assert flags == SYN
            if proto in (1, 58):
                assert itype == ECHO_REQUEST[proto]
        reply = (src, sport) != c["client"]
        if proto in (1, 58):
            assert itype == (ECHO_REPLY if reply else ECHO_REQUEST)[proto]
        c["replied"] |= reply
        c["packets"].append((i, reply, flags))
        c["ts"].append(int(b.ts[i]))
        want = TRK | (RPL if reply else 0) | (EST if c["replied"] else NEW)
        assert got[i] == want, (i, packets[i], got[i], want, len(c["packets"]))
        # from_client in the generator's own bookkeeping agrees with the frames
        assert trace.from_client[i] == (not reply)

    assert len(conns) == 2000 == len(tracker)
    tcp = [c for c in conns.values() if c["proto"] == 6]
    for c in tcp:
        (i0, r0, f0), (i1, r1, f1), (i2, r2, f2) = c["packets"][:3]
        assert (f0, r0, got[i0]) == (SYN, False, NEW | TRK)
        assert (f1, r1, got[i1]) == (SYN | ACK, True, EST | RPL | TRK)
        assert (f2 & (SYN | FIN | RST), r2, got[i2]) == (0, False, EST | TRK)
    assert not np.any(got & (INV | REL))

    # The profile has what it promises.
    flags_seen = Counter()
    for c in tcp:
        last = c["packets"][-1][2]
        flags_seen["rst" if last & RST else "fin" if any(f & FIN for _, _, f in c["packets"]) else "open"] += 1
    assert flags_seen["fin"] > 500 and flags_seen["rst"] > 30 and flags_seen["open"] > 5
    sizes = [len(c["packets"]) for c in conns.values()]
    assert min(sizes) == 1 and max(sizes) > 100 and np.median(sizes) <= 10
    protos = Counter(c["proto"] for c in conns.values())
    assert set(protos) == {1, 6, 17, 58}
    v6 = sum(isinstance(c["client"][0], ipaddress.IPv6Address) for c in conns.values())
    assert 0.15 < v6 / len(conns) < 0.25
    assert any(c["proto"] == 17 and not c["replied"] and len(c["packets"]) > 1 for c in conns.values())
    assert any(c["proto"] == 17 and len(c["packets"]) > 20 and sum(r for _, r, _ in c["packets"]) > 5
               for c in conns.values())
    # Flows overlap in time: at the middle of the trace many are under way.
    mid = int(np.median(b.ts))
    assert sum(c["ts"][0] < mid < c["ts"][-1] for c in conns.values()) > 50

    # The table at the end (everything is younger than the shortest timeout that applies, 10 s).
    assert b.ts[-1] - b.ts[0] < 10e9
    for c in conns.values():
        (csrc, cport), (ssrc, sport) = c["client"], c["server"]
        proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}[c["proto"]]
        rec = tracker.lookup(str(csrc), str(ssrc), proto, cport, 0 if c["proto"] in (1, 58) else sport)
        assert rec is not None and rec["direction"] == "original"
        status = set(rec["status_names"])
        assert ("SEEN_REPLY" in status) == c["replied"]
        if c["proto"] == 6:
            last = c["packets"][-1][2]
            fin = any(f & FIN for _, _, f in c["packets"])
            want = "CLOSE" if last & RST else "TIME_WAIT" if fin else "ESTABLISHED"
            assert rec["state_name"] == want and "ASSURED" in status
        elif c["proto"] == 17:
            # A UDP stream is ASSURED once, after the first reply, a packet comes more than 2 s after
            # the connection's first packet (kernel udp_packet); skip the ones too close to call.
            first_reply = next(k for k, (_, r, _) in enumerate(c["packets"]) if r) if c["replied"] else None
            later = c["ts"][first_reply + 1:] if first_reply is not None else []
            span = max(later, default=c["ts"][0]) - c["ts"][0]
            if abs(span - 2e9) > 20e6:
                assert ("ASSURED" in status) == (span > 2e9), (c, status)
        else:
            assert "ASSURED" not in status


def test_mixed_segments_continue_in_time_and_never_reuse_a_tuple():
    segments = list(bench.mixed_segments(2500, seed=3, segment_flows=1000))
    sizes = [len(s.kind) for s in segments]
    assert len(sizes) == 3 and sum(sizes) == 2500 and max(sizes) <= 1000
    tracker = fastct.Tracker(max_conns=4096, seed=1)
    for prev, nxt in zip(segments, segments[1:]):
        assert nxt.batch.ts[0] > prev.batch.ts[-1]
    invalid = 0
    for s in segments:
        res = tracker.process(s.batch)
        invalid += int(np.count_nonzero(res.ct_state & INV))
    assert invalid == 0
    assert len(tracker) == 2500          # one connection per flow, none shared


def test_mixed_summary():
    trace = bench.mixed_trace(5000, np.random.default_rng(2))
    s = trace.summary()
    assert s["flows"] == 5000 and s["packets"] == len(trace.batch)
    assert s["tcp"] + s["udp"] + s["icmp"] == pytest.approx(1)
    assert 0.6 < s["tcp"] < 0.9 and 0.1 < s["udp"] < 0.35 and 0.01 < s["icmp"] < 0.06
    assert 0.15 < s["ipv6"] < 0.25 and 8 < s["packets_per_flow"] < 25
    kinds = np.bincount(trace.kind, minlength=len(bench.MIX_KINDS)) / 5000
    assert kinds == pytest.approx(np.array(bench.MIX_SHARES) / sum(bench.MIX_SHARES), abs=0.02)
