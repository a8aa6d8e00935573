"""Floods against the index: an attacker who knows the hash seed aims SYNs at one probe chain.

The bound on probe length (an insert never lands more than MAX_PROBE slots from its home) must hold
whatever arrives, the table must stay sound and established connections unharmed; with another seed
the same tuples are spread over the index like any others.
"""
import numpy as np

from fastct import CT_STATE_BITS as B, Tracker
from pkt import ACK, SYN, batch, ip4, tcp4

MAX_PROBE = 512                 # fastct/_engine.pyx: the insert bound
SERVER = "192.0.2.80"
TRK, NEW, EST, INV = B["trk"], B["new"], B["est"], B["inv"]


def keys_for(src: np.ndarray, sport: np.ndarray, dst: str, dport: int) -> np.ndarray:
    """Tuples of SYNs src:sport -> dst:dport in the entry key layout (fastct/_types.pxd)."""
    n = len(src)
    k = np.zeros((n, 5), dtype=np.uint64)
    # Addresses are the network-order bytes, read as little-endian words.
    k[:, 0] = src.astype(">u4").view(np.uint8).reshape(n, 4).copy().view("<u4").reshape(n)
    k[:, 2] = np.frombuffer(ip4(dst), dtype="<u4")[0]
    k[:, 4] = (sport.astype(np.uint64) | np.uint64(dport) << np.uint64(16)
               | np.uint64(2) << np.uint64(48) | np.uint64(6) << np.uint64(56))
    return k


def crafted(tracker: Tracker, home: int, want: int, seed=7):
    """`want` spoofed (source, port) pairs whose SYN to SERVER:80 hashes to index slot `home`."""
    rng = np.random.default_rng(seed)
    mask = np.uint64(tracker._engine.n_slots - 1)
    found_src, found_port = [], []
    total = 0
    while total < want:
        src = rng.integers(0x0B000000, 0x0BFFFFFF, 1 << 20, dtype=np.uint32)
        sport = rng.integers(1024, 65536, 1 << 20, dtype=np.uint32)
        h = tracker._engine.hash_tuples(keys_for(src, sport, SERVER, 80))
        hit = ((h >> np.uint64(32)) & mask) == home
        found_src.append(src[hit])
        found_port.append(sport[hit])
        total += int(hit.sum())
    return np.concatenate(found_src)[:want], np.concatenate(found_port)[:want]


def syns(src, sport, t0):
    frames = [tcp4(".".join(str(b) for b in int(s).to_bytes(4, "big")), SERVER, int(p), 80, SYN, seq=1)
              for s, p in zip(src, sport)]
    return batch(frames, ts=[t0 + i * 1e-6 for i in range(len(frames))])


def established(n):
    frames = []
    for i in range(n):
        c = f"10.1.{i // 250}.{i % 250 + 1}"
        frames += [tcp4(c, SERVER, 40000, 443, SYN, 100), tcp4(SERVER, c, 443, 40000, SYN | ACK, 500, 101),
                   tcp4(c, SERVER, 40000, 443, ACK, 101, 501)]
    return frames


def test_crafted_collision_flood_is_bounded_and_harmless():
    t = Tracker(max_conns=8192, seed=11, prefault=True)       # index fixed at 16384 slots
    assert t._engine.n_slots == 16384
    legit = established(500)
    t.process(batch(legit, ts=[i * 1e-3 for i in range(len(legit))]))
    assert len(t.entries(status="ASSURED")) == 500
    home = 1234
    src, sport = crafted(t, home, 700)
    r = t.process(syns(src, sport, 10.0))
    s = t.stats()
    assert s["probe_max"] <= MAX_PROBE
    # Every slot from home to home + MAX_PROBE holds a flood entry or a legitimate one; the rest of
    # the flood is dropped and counted, never placed further away.
    dropped = int((r.ct_state == TRK | INV).sum())
    assert dropped == s["chaintoolong"] == s["insert_failed"] > 0
    assert dropped + int((r.ct_state == TRK | NEW).sum()) == 700
    assert t._engine.check_invariants() == []
    # The established connections are unharmed: found, est.
    again = [f for i, f in enumerate(legit) if i % 3 == 2]
    r2 = t.process(batch(again, ts=[20.0 + i * 1e-3 for i in range(len(again))]))
    assert (r2.ct_state == TRK | EST).all()


def test_the_same_tuples_under_another_seed_are_spread():
    aim = Tracker(max_conns=8192, seed=11, prefault=True)
    src, sport = crafted(aim, 1234, 700)
    t = Tracker(max_conns=8192, seed=12, prefault=True)
    r = t.process(syns(src, sport, 10.0))
    assert (r.ct_state == TRK | NEW).all()
    s = t.stats()
    assert s["chaintoolong"] == 0
    assert s["probe_max"] < 16            # load ~4 %: chains stay short
