"""The straight-line fast paths (the Ethernet/IPv4/TCP parser, an established ACK and a first SYN
in _tcp.pxd, the batch loop's stage 1 and 3 shortcuts) must do exactly what the general paths do.
Every input is run twice, fast paths on and off, and everything is compared: each packet's
ct_state, entry and direction, every table byte (entries and cold records), the counters.

Inputs: random TCP traffic aimed at the window edges (seq, ack and windows just inside and outside
every bound, zero windows, retransmissions, the odd FIN/RST/SYN), and every real capture in
../shared/pcaps."""
import struct

import dpkt
import numpy as np
import pytest

from conftest import SHARED, shared_dir
from fastct import Tracker
from fastct.capture.reader import CaptureError, CaptureReader
from pkt import ACK, FIN, PSH, RST, SYN, batch, tcp4


def _pair():
    fast, slow = Tracker(max_conns=4096, seed=7), Tracker(max_conns=4096, seed=7)
    slow._engine.set_options(fast_paths=False)
    return fast, slow


def _same(fast, slow, b, where):
    r1 = fast.process(b)
    r2 = slow.process(b)
    np.testing.assert_array_equal(r1.ct_state, r2.ct_state, err_msg=where)
    np.testing.assert_array_equal(r1.entry, r2.entry, err_msg=where)
    np.testing.assert_array_equal(r1.direction, r2.direction, err_msg=where)
    return r1


def _same_tables(fast, slow, where):
    assert len(fast) == len(slow), where
    n = len(fast)
    assert fast._engine.entries_view()[:n].tobytes() == slow._engine.entries_view()[:n].tobytes(), where
    assert fast._engine.cold_view()[:n].tobytes() == slow._engine.cold_view()[:n].tobytes(), where
    assert fast.stats() == slow.stats(), where
    np.testing.assert_array_equal(fast._engine.reasons_array(), slow._engine.reasons_array(), where)


def _edge_traffic(rng, n_conns=24, n_packets=12000):
    """Handshakes, then segments whose seq / ack / window sit near the bounds tcp_in_window checks."""
    frames = []
    conns = []
    for i in range(n_conns):
        c, s = f"10.1.{i // 200}.{i % 200 + 1}", "10.2.0.1"
        sp, dp = 20000 + i, 80
        cs, ss = int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))
        wc, ws = int(rng.choice([0, 512, 65535])), int(rng.choice([1, 8192, 65535]))
        frames.append(tcp4(c, s, sp, dp, SYN, seq=cs, win=wc))
        frames.append(tcp4(s, c, dp, sp, SYN | ACK, seq=ss, ack=(cs + 1) % 2**32, win=ws))
        frames.append(tcp4(c, s, sp, dp, ACK, seq=(cs + 1) % 2**32, ack=(ss + 1) % 2**32, win=wc))
        conns.append([c, s, sp, dp, (cs + 1) % 2**32, (ss + 1) % 2**32, wc, ws])
    deltas = np.array([0, 0, 0, 1, -1, 2, 100, -100, 65535, 65536, 65537, -65535, -65536, -66000,
                       -66001, 131072, -131072, 2**31, 2**31 - 1])
    last = None
    for _ in range(n_packets):
        k = int(rng.integers(0, n_conns))
        c, s, sp, dp, cseq, sseq, wc, ws = conns[k]
        reply = bool(rng.integers(0, 2))
        r = rng.random()
        if r < 0.04 and last is not None:
            frames.append(last)          # an exact retransmission
            continue
        if r < 0.06:
            flags = int(rng.choice([FIN | ACK, RST, RST | ACK, SYN, SYN | ACK, 0, FIN, PSH | ACK | FIN]))
        else:
            flags = int(rng.choice([ACK, ACK, PSH | ACK, ACK | 0x20]))
        size = int(rng.choice([0, 0, 1, 100, 1448]))
        seq, ack = (sseq, cseq) if reply else (cseq, sseq)
        if rng.random() < 0.3:
            seq = (seq + int(rng.choice(deltas))) % 2**32
        if rng.random() < 0.3:
            ack = (ack + int(rng.choice(deltas))) % 2**32
        win = int(rng.choice([0, 1, 100, 65535, (ws if reply else wc)]))
        if reply:
            f = tcp4(s, c, dp, sp, flags, seq=seq, ack=ack, win=win, data=b"d" * size)
        else:
            f = tcp4(c, s, sp, dp, flags, seq=seq, ack=ack, win=win, data=b"d" * size)
        frames.append(f)
        last = f
        if rng.random() < 0.7:           # the sender moves on (the next segment follows this one)
            if reply:
                conns[k][5] = (seq + size) % 2**32
            else:
                conns[k][4] = (seq + size) % 2**32
    return frames


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("bs", [7, 4096])
def test_fast_tcp_path_matches_general_on_window_edges(seed, bs):
    rng = np.random.default_rng(seed)
    frames = _edge_traffic(rng)
    ts = 1.7e9 + np.arange(len(frames)) * 0.001
    fast, slow = _pair()
    states = []
    for i in range(0, len(frames), bs):
        states.append(_same(fast, slow, batch(frames[i:i + bs], ts=ts[i:i + bs]), f"batch at {i}").ct_state)
        _same_tables(fast, slow, f"after batch at {i}")
    st = np.concatenate(states)
    # The traffic reaches every verdict (else it would not test the paths' edges).
    assert (st == 0x22).sum() > 1000 and (st == 0x2A).sum() > 1000 and (st == 0x30).sum() > 100


CAPTURES = sorted(p.name for p in (SHARED / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng")) \
    if (SHARED / "pcaps").is_dir() else ["(absent)"]


@pytest.mark.parametrize("name", CAPTURES)
def test_fast_paths_match_general_on_real_captures(name):
    path = shared_dir("pcaps") / name
    fast, slow = _pair()
    try:
        with CaptureReader(path, batch_size=4096) as reader:
            for b in reader:
                _same(fast, slow, b, name)
    except CaptureError:
        pass                             # a damaged capture: what came before the damage is compared
    _same_tables(fast, slow, name)


@pytest.mark.parametrize("seed", [4, 5])
def test_straight_line_parser_matches_the_general_one(seed):
    # The straight-line parser only takes Ethernet frames; the same IP packets as raw IP (link type
    # 101) go through the general parser.  Everything downstream is the same code, so every verdict
    # and table byte must agree.  The frames carry SYN options, SACK blocks and timestamps, and
    # some are cut short (caplen below the wire length).
    rng = np.random.default_rng(seed)
    frames = _edge_traffic(rng, n_packets=4000)
    opts = [b"", b"\x01\x01\x08\x0a" + bytes(8),
            b"\x01\x01\x05\x0a" + struct.pack("!II", 5, 99999),
            b"\x01\x01\x05\x12" + struct.pack("!IIII", 1, 2, 3, 2**31 + 7),
            b"\x02\x04\x05\xb4\x01\x03\x03\x07\x04\x02\x01\x01", b"\x05\x03\x00\x00"]
    eth = []
    for f in frames:
        ip = dpkt.ethernet.Ethernet(f).data
        tcp = ip.data
        tcp.opts = opts[int(rng.integers(0, len(opts)))]
        tcp.off = 5 + len(tcp.opts) // 4
        ip.len = 20 + len(bytes(tcp))
        raw = bytes(ip)
        eth.append(f[:14] + raw)
    cut = [int(rng.integers(34, len(f) + 1)) if rng.random() < 0.1 else len(f) for f in eth]
    ts = 1.7e9 + np.arange(len(eth)) * 0.001
    a, b = Tracker(max_conns=4096, seed=7), Tracker(max_conns=4096, seed=7)
    ra = a.process(batch([f[:c] for f, c in zip(eth, cut)], ts=ts, wirelen=[len(f) for f in eth]))
    rb = b.process(batch([f[14:c] for f, c in zip(eth, cut)], ts=ts, linktype=101,
                         wirelen=[len(f) - 14 for f in eth]))
    np.testing.assert_array_equal(ra.ct_state, rb.ct_state)
    np.testing.assert_array_equal(ra.entry, rb.entry)
    np.testing.assert_array_equal(ra.direction, rb.direction)
    _same_tables(a, b, f"seed {seed}")
    # (Most are invalid: SACK blocks past what the peer sent are "ACK over the upper bound".)
    assert (ra.ct_state == 0x30).sum() > 1000 and (ra.ct_state == 0x22).sum() > 300 and \
        (ra.ct_state == 0x2A).sum() > 300
