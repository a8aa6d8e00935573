"""The handshake-and-teardown walk-through between 192.168.0.2:1024 and 10.0.0.2:2048.

Expected ct_state values are worked out from Open vSwitch's ct_state rules and the Linux TCP state
table: the first packet is new, the SYN/ACK travels in the reply direction of an entry that now has
seen a reply (est+rpl), and every later packet is est (+rpl from the server).
"""
import pytest

from fastct import CT_STATE_BITS as B, Tracker
from pkt import ACK, FIN, SYN, batch, tcp4

C, S = ("192.168.0.2", 1024), ("10.0.0.2", 2048)
TRK, NEW, EST, RPL, INV = B["trk"], B["new"], B["est"], B["rpl"], B["inv"]


def c2s(flags, seq, ack=0):
    return tcp4(C[0], S[0], C[1], S[1], flags, seq, ack)


def s2c(flags, seq, ack=0):
    return tcp4(S[0], C[0], S[1], C[1], flags, seq, ack)


WALK = [c2s(SYN, 100), s2c(SYN | ACK, 200, 101), c2s(ACK, 101, 201),
        c2s(FIN | ACK, 101, 201), s2c(FIN | ACK, 201, 102), c2s(ACK, 102, 202)]
EXPECTED = [TRK | NEW, TRK | EST | RPL, TRK | EST, TRK | EST, TRK | EST | RPL, TRK | EST]


@pytest.mark.parametrize("batch_size", [1, 2, 6])
def test_walkthrough_states(batch_size):
    t = Tracker(seed=7)
    b = batch(WALK, ts=[0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    states = []
    for i in range(0, len(WALK), batch_size):
        states += list(t.process(b.slice(i, i + batch_size)).ct_state)
    assert states == EXPECTED
    rec = t.lookup("192.168.0.2", "10.0.0.2", "tcp", 1024, 2048)
    assert rec["state_name"] == "TIME_WAIT"
    assert rec["status_names"] == ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
    assert rec["packets"] == [4, 2]
    assert rec["bytes"] == [160, 80]          # IP total length: 40 bytes per bare TCP/IPv4 segment
    assert rec["timeout"] == 120              # TIME_WAIT, counted from the last packet
    # The same entry from the reply direction.
    assert t.lookup("10.0.0.2", "192.168.0.2", "tcp", 2048, 1024)["direction"] == "reply"


def test_states_after_each_packet():
    t = Tracker(seed=7)
    names = []
    for i, f in enumerate(WALK):
        t.process(batch([f], ts=[i * 0.01]))
        names.append(t.lookup("192.168.0.2", "10.0.0.2", "tcp", 1024, 2048)["state_name"])
    assert names == ["SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "LAST_ACK", "TIME_WAIT"]


def test_ovs_variant_ack_over_upper_bound_is_invalid():
    # The server's FIN/ACK acks 102 before the client's FIN (seq 101) was seen: the client has sent
    # nothing past 101, so the kernel says "ACK is over the upper bound" and the packet is invalid.
    # (Open vSwitch's userspace conntrack accepts it; fastct follows the kernel.)
    t = Tracker(seed=7)
    pkts = WALK[:3] + [s2c(FIN | ACK, 201, 102)]
    res = t.process(batch(pkts, ts=[0, 0.01, 0.02, 0.03]))
    assert list(res.ct_state) == [TRK | NEW, TRK | EST | RPL, TRK | EST, TRK | INV]
    st = t.stats()
    assert st["invalid"] == 1
    assert st["reasons"] == {"TCP ACK is over the upper bound": 1}
    rec = t.lookup("192.168.0.2", "10.0.0.2", "tcp", 1024, 2048)
    assert rec["state_name"] == "ESTABLISHED" and rec["packets"] == [2, 1]


def test_expiry_time_wait():
    t = Tracker(seed=7)
    t.process(batch(WALK, ts=[0, 0.01, 0.02, 0.03, 0.04, 0.05]))
    assert len(t) == 1
    # A packet of another flow 120 s after the last one: TIME_WAIT (120 s) has run out exactly then.
    t.process(batch([tcp4("1.1.1.1", "2.2.2.2", 1, 2, SYN, 5)], ts=[120.05]))
    assert t.lookup("192.168.0.2", "10.0.0.2", "tcp", 1024, 2048) is None
    assert len(t) == 1
