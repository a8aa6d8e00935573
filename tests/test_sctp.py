"""SCTP tracking, packet by packet, against the Linux kernel's nf_conntrack_proto_sctp.c (6.x).

Every expectation is worked out from the kernel's code: do_basic_checks (chunk rules), sctp_new (which
packets may start an association), the verification-tag rules of nf_conntrack_sctp_packet, the
sctp_conntracks[dir][chunk][state] table and sctp_timeouts (CLOSED 10 s, COOKIE_WAIT 3, COOKIE_ECHOED
3, ESTABLISHED 210, SHUTDOWN_SENT/RECD/ACK_SENT 3, HEARTBEAT_SENT 30) -- never from fastct's output.

Tags: the client's INIT carries its initiate tag A, so the server's packets carry vtag A; the
server's INIT_ACK carries B, so the client's packets carry vtag B.  fastct keeps the tags a
direction must carry in td_end[direction] (see fastct/_sctp.pxd), so after a handshake td_end is
[B, A].  Timeouts are whole seconds left at the newest packet time.
"""
import struct

import numpy as np
import pytest
from dpkt import crc32c

from fastct import CT_STATE_BITS as B, Batch, Tracker
from fastct.tracker import REASONS
from pkt import ip4, ip6

TRK, NEW, EST, RPL, INV = B["trk"], B["new"], B["est"], B["rpl"], B["inv"]
T_NEW, T_EST, T_RPL, T_INV = TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | INV

C, S = "192.168.7.1", "10.7.0.2"
C6, S6 = "2001:db8::7:1", "2001:db8::7:2"
CP, SP = 40000, 3868
A, B_ = 0x0A0A0A0A, 0x0B0B0B0B            # the client's and the server's initiate tags

R_INVALID = "SCTP chunk invalid in this state or bad verification tag"
R_NO_NEW = "SCTP packet cannot start an association"
R_TRUNC = "transport header truncated"
R_CSUM = "checksum wrong (nf_conntrack_checksum=1)"
assert {R_INVALID, R_NO_NEW, R_TRUNC, R_CSUM} <= set(REASONS)

CLOSED, ESTABLISHED = 10, 210          # kernel sctp_timeouts, seconds
SHORT = 3                              # COOKIE_WAIT, COOKIE_ECHOED, SHUTDOWN_*
HEARTBEAT_SENT = 30


# ---- packets ---------------------------------------------------------------------------------------

def _csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(payload, etype):
    # By hand: dpkt would parse the SCTP inside and rewrite malformed chunks when serialising.
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + payload


def ip4_frame(src, dst, proto, payload):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0, ip4(src), ip4(dst))
    hdr = hdr[:10] + struct.pack("!H", _csum16(hdr)) + hdr[12:]
    return eth(hdr + payload, 0x0800)


def ip6_frame(src, dst, nh, payload):
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, ip6(src), ip6(dst))
    return eth(hdr + payload, 0x86DD)


def chunk(ctype, value=b"", flags=0, length=None):
    """A chunk, padded to 4 bytes; `length` overrides the length field."""
    raw = struct.pack("!BBH", ctype, flags, 4 + len(value) if length is None else length) + value
    return raw + b"\0" * (-len(raw) % 4)


def _init_body(tag):
    return struct.pack("!IIHHI", tag, 65536, 10, 10, 1)     # tag, a_rwnd, streams out/in, TSN


def INIT(tag):
    return chunk(1, _init_body(tag))


def INIT_ACK(tag):
    return chunk(2, _init_body(tag) + struct.pack("!HH", 7, 12) + b"cookie!!")   # + State Cookie


def SACK(tsn=1):
    return chunk(3, struct.pack("!IIHH", tsn, 65536, 0, 0))


def DATA(tsn=1, payload=b"hello"):
    return chunk(0, struct.pack("!IHHI", tsn, 0, 0, 0) + payload, flags=3)


def HEARTBEAT():
    return chunk(4, struct.pack("!HH", 1, 12) + b"hb-info!")


def HEARTBEAT_ACK():
    return chunk(5, struct.pack("!HH", 1, 12) + b"hb-info!")


def ABORT(t=False):
    return chunk(6, flags=1 if t else 0)


def SHUTDOWN(tsn=1):
    return chunk(7, struct.pack("!I", tsn))


def SHUTDOWN_ACK():
    return chunk(8)


def ERROR():
    return chunk(9, struct.pack("!HH", 3, 12) + b"\0\0\0\x10")     # Stale Cookie Error cause


def COOKIE_ECHO():
    return chunk(10, b"cookie!!")


def COOKIE_ACK():
    return chunk(11)


def SHUTDOWN_COMPLETE(t=False):
    return chunk(14, flags=1 if t else 0)


def sctp_bytes(sport, dport, vtag, chunks, bad_crc=False):
    body = struct.pack("!HHII", sport, dport, vtag, 0) + b"".join(chunks)
    crc = ~crc32c.add(0xFFFFFFFF, body) & 0xFFFFFFFF
    if bad_crc:
        crc ^= 1
    return body[:8] + struct.pack("<I", crc) + body[12:]     # CRC32c, least significant byte first


def c2s(vtag, *chunks, **kw):
    return ip4_frame(C, S, 132, sctp_bytes(CP, SP, vtag, chunks, **kw))


def s2c(vtag, *chunks, **kw):
    return ip4_frame(S, C, 132, sctp_bytes(SP, CP, vtag, chunks, **kw))


def iplen(frame):
    return len(frame) - 14


class Flow:
    """A tracker fed one packet at a time, 10 ms apart unless told otherwise."""

    def __init__(self, **kw):
        self.t = Tracker(seed=7, **kw)
        self.now = 0.0

    def send(self, frame, dt=0.01, **kw):
        self.now += dt
        res = self.t.process(Batch.from_frames([frame], ts=[self.now], **kw))
        return int(res.ct_state[0])

    def rec(self, src=C, dst=S, sport=CP, dport=SP):
        return self.t.lookup(src, dst, "sctp", sport, dport)

    def check(self, state, timeout, packets=None, assured=None):
        r = self.rec()
        assert r is not None
        assert r["state_name"] == state
        assert r["timeout"] == timeout
        if packets is not None:
            assert r["packets"] == packets
        if assured is not None:
            assert ("ASSURED" in r["status_names"]) == assured
        return r

    def invalid(self):
        s = self.t.stats()
        return s["invalid"], s["reasons"]


def establish(f):
    """The four-way handshake; returns the frames."""
    frames = [c2s(0, INIT(A)), s2c(A, INIT_ACK(B_)), c2s(B_, COOKIE_ECHO()), s2c(A, COOKIE_ACK())]
    assert [f.send(x) for x in frames] == [T_NEW, T_RPL, T_EST, T_RPL]
    return frames


# ---- association life ------------------------------------------------------------------------------

def test_handshake_state_by_state():
    f = Flow()
    init, init_ack = c2s(0, INIT(A)), s2c(A, INIT_ACK(B_))
    echo, ack = c2s(B_, COOKIE_ECHO()), s2c(A, COOKIE_ACK())
    # INIT: a new entry in CLOSED (ORIGINAL init from NONE), the INIT's tag is the reply's vtag.
    assert f.send(init) == T_NEW
    r = f.check("CLOSED", CLOSED, [1, 0], assured=False)
    assert r["status_names"] == ["CONFIRMED"] and r["bytes"] == [iplen(init), 0]
    assert r["td_end"] == [0, A]
    # INIT_ACK (reply): CLOSED -> COOKIE_WAIT; its tag is what the client's packets carry.
    assert f.send(init_ack) == T_RPL
    r = f.check("COOKIE_WAIT", SHORT, [1, 1], assured=False)
    assert r["status_names"] == ["SEEN_REPLY", "CONFIRMED"] and r["td_end"] == [B_, A]
    # COOKIE_ECHO (original): COOKIE_WAIT -> COOKIE_ECHOED.
    assert f.send(echo) == T_EST
    f.check("COOKIE_ECHOED", SHORT, [2, 1], assured=False)
    # COOKIE_ACK (reply): COOKIE_ECHOED -> ESTABLISHED, and entering ESTABLISHED assures it.
    assert f.send(ack) == T_RPL
    r = f.check("ESTABLISHED", ESTABLISHED, [2, 2], assured=True)
    assert r["status_names"] == ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
    assert r["bytes"] == [iplen(init) + iplen(echo), iplen(init_ack) + iplen(ack)]
    assert r["td_flags"] == [0, 0]          # COOKIE_ACK forgets the INITs seen


def test_data_keeps_established_and_refreshes():
    f = Flow()
    establish(f)
    assert f.send(c2s(B_, DATA(1)), dt=100) == T_EST
    f.check("ESTABLISHED", ESTABLISHED, [3, 2])
    assert f.send(s2c(A, SACK(1), DATA(7)), dt=1) == T_RPL
    f.check("ESTABLISHED", ESTABLISHED, [3, 3])
    # Unknown chunk types (here I-DATA, 64) leave the state alone too.
    assert f.send(c2s(B_, chunk(64, b"\0" * 16))) == T_EST
    f.check("ESTABLISHED", ESTABLISHED, [4, 3])


def test_bundled_handshake_chunks():
    # COOKIE_ECHO and COOKIE_ACK must come first, but may carry more chunks behind them.
    f = Flow()
    assert f.send(c2s(0, INIT(A))) == T_NEW
    assert f.send(s2c(A, INIT_ACK(B_))) == T_RPL
    assert f.send(c2s(B_, COOKIE_ECHO(), DATA(1))) == T_EST
    f.check("COOKIE_ECHOED", SHORT, [2, 1])
    assert f.send(s2c(A, COOKIE_ACK(), SACK(1))) == T_RPL
    f.check("ESTABLISHED", ESTABLISHED, [2, 2], assured=True)


def test_shutdown_from_the_client():
    f = Flow()
    establish(f)
    assert f.send(c2s(B_, SHUTDOWN())) == T_EST                  # ESTABLISHED -> SHUTDOWN_SENT
    f.check("SHUTDOWN_SENT", SHORT, [3, 2], assured=True)
    assert f.send(s2c(A, SHUTDOWN_ACK())) == T_RPL               # SHUTDOWN_SENT -> SHUTDOWN_ACK_SENT
    f.check("SHUTDOWN_ACK_SENT", SHORT, [3, 3])
    assert f.send(c2s(B_, SHUTDOWN_COMPLETE())) == T_EST         # SHUTDOWN_ACK_SENT -> CLOSED
    f.check("CLOSED", CLOSED, [4, 3], assured=True)
    # An INIT (a new association on the same ports) while CLOSED: CLOSED -> CLOSED, accepted, but
    # neither counted nor refreshed, so retransmitted INITs cannot keep the entry alive.
    assert f.send(c2s(0, INIT(0x0C0C0C0C)), dt=4) == T_EST
    f.check("CLOSED", CLOSED - 4, [4, 3])
    assert f.rec()["td_end"] == [B_, 0x0C0C0C0C]     # ... though its tag was taken
    assert f.invalid()[0] == 0


def test_shutdown_from_the_server():
    f = Flow()
    establish(f)
    assert f.send(s2c(A, SHUTDOWN())) == T_RPL                   # REPLY shutdown: -> SHUTDOWN_RECD
    f.check("SHUTDOWN_RECD", SHORT, [2, 3])
    assert f.send(c2s(B_, SHUTDOWN_ACK())) == T_EST              # SHUTDOWN_RECD -> SHUTDOWN_ACK_SENT
    f.check("SHUTDOWN_ACK_SENT", SHORT, [3, 3])
    assert f.send(s2c(A, SHUTDOWN_COMPLETE())) == T_RPL          # -> CLOSED
    f.check("CLOSED", CLOSED, [3, 4], assured=True)


def test_shutdown_complete_with_t_bit_carries_the_peers_tag():
    f = Flow()
    establish(f)
    f.send(c2s(B_, SHUTDOWN()))
    f.send(s2c(A, SHUTDOWN_ACK()))
    # T set: the vtag must be the other direction's (A), not the sender's own (B).
    assert f.send(c2s(B_, SHUTDOWN_COMPLETE(t=True)), dt=0) == T_INV
    f.check("SHUTDOWN_ACK_SENT", SHORT, [3, 3])
    assert f.send(c2s(A, SHUTDOWN_COMPLETE(t=True))) == T_EST
    f.check("CLOSED", CLOSED, [4, 3])


@pytest.mark.parametrize("sender", ["client", "server"])
def test_abort_closes(sender):
    f = Flow()
    establish(f)
    if sender == "client":
        assert f.send(c2s(B_, ABORT())) == T_EST
        f.check("CLOSED", CLOSED, [3, 2], assured=True)
    else:
        assert f.send(s2c(A, ABORT())) == T_RPL
        f.check("CLOSED", CLOSED, [2, 3], assured=True)


def test_abort_tag_rules():
    f = Flow()
    establish(f)
    # Without T the sender's own tag (B from the client); with T the peer's (A).
    assert f.send(c2s(A, ABORT()), dt=0) == T_INV
    assert f.send(c2s(B_, ABORT(t=True)), dt=0) == T_INV
    assert f.send(c2s(0x12345678, ABORT()), dt=0) == T_INV
    f.check("ESTABLISHED", ESTABLISHED, [2, 2])
    assert f.send(c2s(A, ABORT(t=True))) == T_EST
    f.check("CLOSED", CLOSED, [3, 2])
    assert f.invalid() == (3, {R_INVALID: 3})


def test_wrong_vtag_is_invalid_and_changes_nothing():
    f = Flow()
    establish(f)
    before = f.rec()
    assert f.send(c2s(A, DATA()), dt=5) == T_INV          # the server's tag from the client
    assert f.send(s2c(B_, SACK())) == T_INV               # and the other way round
    assert f.send(c2s(0, DATA())) == T_INV
    after = f.rec()
    assert after["packets"] == before["packets"] and after["bytes"] == before["bytes"]
    assert after["expires"] == before["expires"] and after["state_name"] == "ESTABLISHED"
    assert f.invalid() == (3, {R_INVALID: 3})


def test_cookie_echo_needs_the_init_ack_tag():
    f = Flow()
    f.send(c2s(0, INIT(A)))
    f.send(s2c(A, INIT_ACK(B_)))
    assert f.send(c2s(A, COOKIE_ECHO()), dt=0) == T_INV
    assert f.send(c2s(0, COOKIE_ECHO()), dt=0) == T_INV
    f.check("COOKIE_WAIT", SHORT, [1, 1])


def test_init_must_carry_vtag_zero():
    f = Flow()
    assert f.send(c2s(1, INIT(A))) == T_INV
    assert f.rec() is None
    establish(f)
    assert f.send(c2s(5, INIT(0x0D0D0D0D)), dt=0) == T_INV
    f.check("ESTABLISHED", ESTABLISHED, [2, 2])
    assert f.invalid() == (2, {R_INVALID: 2})


def test_error_in_cookie_echoed_closes():
    # REPLY error from COOKIE_ECHOED goes to CLOSED (a Stale Cookie error); ORIGINAL stays.
    f = Flow()
    f.send(c2s(0, INIT(A)))
    f.send(s2c(A, INIT_ACK(B_)))
    f.send(c2s(B_, COOKIE_ECHO()))
    assert f.send(c2s(B_, ERROR())) == T_EST
    f.check("COOKIE_ECHOED", SHORT, [3, 1])
    assert f.send(s2c(A, ERROR())) == T_RPL
    f.check("CLOSED", CLOSED, [3, 2], assured=False)


def test_timeouts_follow_the_sysctls():
    f = Flow(timeouts={"sctp_timeout_established": 1000, "sctp_timeout_closed": 7})
    f.send(c2s(0, INIT(A)))
    f.check("CLOSED", 7)
    f.send(s2c(A, INIT_ACK(B_)))
    f.send(c2s(B_, COOKIE_ECHO()))
    f.send(s2c(A, COOKIE_ACK()))
    f.check("ESTABLISHED", 1000)


def test_association_expires():
    f = Flow()
    f.send(c2s(0, INIT(A)))
    f.send(s2c(A, INIT_ACK(B_)))                     # COOKIE_WAIT: 3 s
    # 3.5 s later the entry is dead.  A COOKIE_ECHO may start an entry (ORIGINAL cookie_echo from
    # NONE is CLOSED), but its tag is checked against the new entry's, 0: refused, nothing created.
    assert f.send(c2s(B_, COOKIE_ECHO()), dt=3.5) == T_INV
    assert f.rec() is None
    assert f.invalid() == (1, {R_INVALID: 1})


def test_ipv6_association():
    f = Flow()
    frames = [ip6_frame(C6, S6, 132, sctp_bytes(CP, SP, 0, [INIT(A)])),
              ip6_frame(S6, C6, 132, sctp_bytes(SP, CP, A, [INIT_ACK(B_)])),
              ip6_frame(C6, S6, 132, sctp_bytes(CP, SP, B_, [COOKIE_ECHO()])),
              ip6_frame(S6, C6, 132, sctp_bytes(SP, CP, A, [COOKIE_ACK()]))]
    assert [f.send(x) for x in frames] == [T_NEW, T_RPL, T_EST, T_RPL]
    r = f.rec(C6, S6)
    assert r["state_name"] == "ESTABLISHED" and r["timeout"] == ESTABLISHED and r["l3"] == 10
    assert r["bytes"] == [iplen(frames[0]) + iplen(frames[2]), iplen(frames[1]) + iplen(frames[3])]


# ---- which packets may start an association ----------------------------------------------------------

@pytest.mark.parametrize("first", [
    pytest.param(lambda: c2s(5, DATA()), id="data"),
    pytest.param(lambda: c2s(5, SACK()), id="sack"),
    pytest.param(lambda: c2s(5, chunk(64, b"\0" * 8)), id="unknown-chunk"),
    pytest.param(lambda: c2s(5, HEARTBEAT(), DATA()), id="heartbeat+data"),
    pytest.param(lambda: c2s(5, ABORT()), id="abort"),
    pytest.param(lambda: c2s(5, ABORT(t=True)), id="abort-t"),
    pytest.param(lambda: c2s(5, SHUTDOWN_COMPLETE()), id="shutdown-complete"),
    pytest.param(lambda: c2s(5, COOKIE_ACK()), id="cookie-ack"),
])
def test_cannot_start_an_association(first):
    f = Flow()
    assert f.send(first()) == T_INV
    assert f.rec() is None and len(f.t) == 0
    s = f.t.stats()
    assert s["invalid"] == 1 and s["insert"] == 0 and s["reasons"] == {R_NO_NEW: 1}


@pytest.mark.parametrize("chunks,vtag,state,timeout,td_end", [
    # ORIGINAL row from NONE: INIT_ACK, SHUTDOWN, ERROR, COOKIE_ECHO, HEARTBEAT_ACK -> CLOSED;
    # SHUTDOWN_ACK -> SHUTDOWN_ACK_SENT (its vtag is what the answer must carry); HEARTBEAT -> HS.
    ([INIT_ACK(B_)], 0, "CLOSED", CLOSED, [0, B_]),
    ([SHUTDOWN()], 0, "CLOSED", CLOSED, [0, 0]),
    ([ERROR()], 0, "CLOSED", CLOSED, [0, 0]),
    ([COOKIE_ECHO()], 0, "CLOSED", CLOSED, [0, 0]),
    ([HEARTBEAT_ACK()], 0x55, "CLOSED", CLOSED, [0x55, 0]),
    ([SHUTDOWN_ACK()], 0x66, "SHUTDOWN_ACK_SENT", SHORT, [0, 0x66]),
    ([HEARTBEAT()], 0x77, "HEARTBEAT_SENT", HEARTBEAT_SENT, [0x77, 0]),
])
def test_other_first_chunks(chunks, vtag, state, timeout, td_end):
    f = Flow()
    assert f.send(c2s(vtag, *chunks)) == T_NEW
    r = f.check(state, timeout, [1, 0], assured=False)
    assert r["td_end"] == td_end


@pytest.mark.parametrize("chunks", [[INIT_ACK(B_)], [SHUTDOWN()], [ERROR()], [COOKIE_ECHO()]])
def test_first_packet_without_own_tag_check_needs_vtag_zero(chunks):
    # The whole-packet tag check runs on the first packet too, against a tag of 0 (nothing learnt),
    # and COOKIE_ECHO's own check is the same.
    f = Flow()
    assert f.send(c2s(0x99, *chunks)) == T_INV
    assert f.rec() is None
    assert f.invalid() == (1, {R_INVALID: 1})


def test_ootb_shutdown_ack_answered():
    # An out-of-the-blue SHUTDOWN_ACK records its vtag for the reply.  The kernel checks a
    # SHUTDOWN_COMPLETE with T against the other direction's tag (here none was learnt: 0), so the
    # T-bit answer RFC 4960 8.4(5) describes is refused, and one without T, carrying the tag, passes.
    f = Flow()
    assert f.send(c2s(0x66, SHUTDOWN_ACK())) == T_NEW
    assert f.send(s2c(0x66, SHUTDOWN_COMPLETE(t=True)), dt=0) == T_INV
    f.check("SHUTDOWN_ACK_SENT", SHORT, [1, 0])
    assert f.send(s2c(0x66, SHUTDOWN_COMPLETE())) == T_RPL
    f.check("CLOSED", CLOSED, [1, 1])


# ---- HEARTBEAT pick-up and tag resync --------------------------------------------------------------

def test_heartbeat_picks_up_an_association():
    # As in bigendian-pcap_sctp_association: a HEARTBEAT starts an entry in HEARTBEAT_SENT (30 s),
    # the HEARTBEAT_ACK in the reply direction makes it ESTABLISHED and ASSURED.
    f = Flow()
    hb, hb_ack = c2s(0x0E50, HEARTBEAT()), s2c(0x0D53E6FE, HEARTBEAT_ACK())
    assert f.send(hb) == T_NEW
    r = f.check("HEARTBEAT_SENT", HEARTBEAT_SENT, [1, 0], assured=False)
    assert r["td_end"] == [0x0E50, 0]
    assert f.send(hb_ack) == T_RPL
    r = f.check("ESTABLISHED", ESTABLISHED, [1, 1], assured=True)
    assert r["td_end"] == [0x0E50, 0x0D53E6FE]
    # Now the learnt tags are enforced.
    assert f.send(c2s(0x0E50, DATA())) == T_EST
    assert f.send(s2c(0x0E50, SACK()), dt=0) == T_INV
    f.check("ESTABLISHED", ESTABLISHED, [2, 1])


def test_heartbeat_sent_cells():
    f = Flow()
    f.send(c2s(0x0E50, HEARTBEAT()))
    # REPLY heartbeat in HEARTBEAT_SENT stays (and learns the reply tag); ORIGINAL heartbeat_ack too.
    assert f.send(s2c(0x22, HEARTBEAT())) == T_RPL
    r = f.check("HEARTBEAT_SENT", HEARTBEAT_SENT, [1, 1], assured=False)
    assert r["td_end"] == [0x0E50, 0x22]
    assert f.send(c2s(0x0E50, HEARTBEAT_ACK())) == T_EST
    f.check("HEARTBEAT_SENT", HEARTBEAT_SENT, [2, 1], assured=False)
    # REPLY data in HEARTBEAT_SENT: no transition, the tag matches: refreshed.
    assert f.send(s2c(0x22, DATA())) == T_RPL
    f.check("HEARTBEAT_SENT", HEARTBEAT_SENT, [2, 2])
    # The reply direction cannot send what the table has no REPLY cell for in HEARTBEAT_SENT.
    assert f.send(s2c(0x22, SHUTDOWN())) == T_INV
    assert f.send(s2c(0x22, ABORT())) == T_INV
    # An ORIGINAL INIT in HEARTBEAT_SENT starts over: COOKIE_WAIT.
    assert f.send(c2s(0, INIT(A))) == T_EST
    r = f.check("COOKIE_WAIT", SHORT, [3, 2], assured=False)
    assert r["td_end"] == [0x0E50, A]


def test_heartbeat_with_unknown_tag_then_its_ack_resyncs():
    f = Flow()
    establish(f)
    # A HEARTBEAT with a tag we do not know (the association was restarted unseen): let through,
    # not counted, not refreshed; remembered.
    assert f.send(c2s(0x0F0F0F0F, HEARTBEAT()), dt=50) == T_EST
    r = f.check("ESTABLISHED", ESTABLISHED - 50, [2, 2])
    assert r["td_scale"] == [1, 0]                   # HEARTBEAT_VTAG_FAILED, from the original side
    # Its answer from the other side with a new tag: that tag is adopted and the other side's
    # forgotten (it will be learnt again), the packet counts.
    assert f.send(s2c(0x0E0E0E0E, HEARTBEAT_ACK())) == T_RPL
    r = f.check("ESTABLISHED", ESTABLISHED, [2, 3])
    assert r["td_end"] == [0, 0x0E0E0E0E] and r["td_scale"][0] == 0
    # The forgotten tag: DATA is checked against 0 ...
    assert f.send(c2s(0x0F0F0F0F, DATA())) == T_INV
    # ... until a HEARTBEAT teaches it.
    assert f.send(c2s(0x0F0F0F0F, HEARTBEAT())) == T_EST
    assert f.send(c2s(0x0F0F0F0F, DATA())) == T_EST
    f.check("ESTABLISHED", ESTABLISHED, [4, 3])


def test_heartbeat_tag_failures():
    f = Flow()
    establish(f)
    # A HEARTBEAT_ACK with a wrong tag and no failed HEARTBEAT before it: invalid.
    assert f.send(s2c(0x1234, HEARTBEAT_ACK()), dt=0) == T_INV
    # A wrong-tag HEARTBEAT bundled with DATA: invalid.
    assert f.send(c2s(0x1234, HEARTBEAT(), DATA()), dt=0) == T_INV
    # The failed HEARTBEAT's ACK must come from the other side: from the same side it is invalid.
    assert f.send(c2s(0x1234, HEARTBEAT()), dt=0) == T_EST
    assert f.send(c2s(0x4321, HEARTBEAT_ACK()), dt=0) == T_INV
    f.check("ESTABLISHED", ESTABLISHED, [2, 2])
    assert f.rec()["td_end"] == [B_, A]
    assert f.invalid() == (3, {R_INVALID: 3})


# ---- INIT collision and restart ------------------------------------------------------------------------

def test_init_collision():
    # Both ends send INIT.  The second INIT (reply direction, CLOSED -> CLOSED) is accepted
    # without a refresh; the INIT_ACKs must repeat their own INIT's tag; then the usual handshake.
    f = Flow()
    assert f.send(c2s(0, INIT(A))) == T_NEW
    assert f.send(s2c(0, INIT(B_)), dt=0) == T_RPL
    r = f.check("CLOSED", CLOSED, [1, 0])
    assert r["td_end"] == [B_, A] and r["td_flags"] == [1, 1]
    # The client's INIT_ACK with a tag other than its INIT's: invalid in a collision.
    assert f.send(c2s(B_, INIT_ACK(0x0A0A0A0B))) == T_INV
    assert f.send(c2s(B_, INIT_ACK(A))) == T_EST                 # ORIGINAL init_ack: CLOSED stays
    f.check("CLOSED", CLOSED, [2, 0])
    assert f.send(s2c(A, INIT_ACK(B_))) == T_RPL                 # REPLY init_ack: -> COOKIE_WAIT
    f.check("COOKIE_WAIT", SHORT, [2, 1])
    assert f.send(c2s(B_, COOKIE_ECHO())) == T_EST
    assert f.send(s2c(A, COOKIE_ACK())) == T_RPL
    r = f.check("ESTABLISHED", ESTABLISHED, [3, 2], assured=True)
    assert r["td_end"] == [B_, A] and r["td_flags"] == [0, 0]


def test_init_ack_must_match_the_init_it_answers():
    # After the client's INIT (tag A) the client itself sends an INIT_ACK with another tag: the
    # INIT_ACK would set the tag of packets to the client, already known as A: invalid.
    f = Flow()
    f.send(c2s(0, INIT(A)))
    assert f.send(c2s(0, INIT_ACK(0x0A0A0A0B)), dt=0) == T_INV
    f.check("CLOSED", CLOSED, [1, 0])
    assert f.invalid() == (1, {R_INVALID: 1})


def test_init_retransmitted_during_setup():
    f = Flow()
    f.send(c2s(0, INIT(A)))
    f.send(s2c(A, INIT_ACK(B_)))
    # The same INIT again in COOKIE_WAIT: ORIGINAL init stays COOKIE_WAIT, refreshed (3 s).
    assert f.send(c2s(0, INIT(A)), dt=2) == T_EST
    r = f.check("COOKIE_WAIT", SHORT, [2, 1])
    assert r["td_end"] == [B_, A] and r["td_flags"] == [1, 0]


def test_restart_of_an_established_association():
    f = Flow()
    establish(f)
    A2, B2 = 0x1A1A1A1A, 0x1B1B1B1B
    # A new INIT from the client (a restart): ESTABLISHED stays, refreshed, new tag for the reply.
    assert f.send(c2s(0, INIT(A2)), dt=100) == T_EST
    r = f.check("ESTABLISHED", ESTABLISHED, [3, 2], assured=True)
    assert r["td_end"] == [B_, A2]
    assert f.send(s2c(A2, INIT_ACK(B2))) == T_RPL
    assert f.rec()["td_end"] == [B2, A2]
    assert f.send(c2s(B2, COOKIE_ECHO())) == T_EST
    assert f.send(s2c(A2, COOKIE_ACK())) == T_RPL
    f.check("ESTABLISHED", ESTABLISHED, [4, 4], assured=True)
    assert f.send(c2s(B_, DATA())) == T_INV          # the old tag
    assert f.send(c2s(B2, DATA())) == T_EST


def test_state_change_before_a_refused_chunk_stays():
    # The kernel moves the state chunk by chunk: SHUTDOWN takes ESTABLISHED to SHUTDOWN_SENT, then
    # the ABORT with T (which wants the peer's tag A, the packet has B) is refused.  The packet is
    # invalid -- not counted, not refreshed -- yet the state stays SHUTDOWN_SENT.
    f = Flow()
    establish(f)
    assert f.send(c2s(B_, SHUTDOWN(), ABORT(t=True)), dt=20) == T_INV
    r = f.check("SHUTDOWN_SENT", ESTABLISHED - 20, [2, 2])
    assert f.invalid() == (1, {R_INVALID: 1})


# ---- malformed packets -------------------------------------------------------------------------------

def _raw(vtag, payload: bytes, sport=CP, dport=SP, src=C, dst=S):
    body = struct.pack("!HHII", sport, dport, vtag, 0) + payload
    return ip4_frame(src, dst, 132, body)


@pytest.mark.parametrize("payload,reason", [
    (b"", R_INVALID),                                            # no chunk at all
    (b"\x01\x02\x03", R_INVALID),                                # less than a chunk header
    (struct.pack("!BBH", 1, 0, 0) + b"\0" * 16, R_INVALID),      # zero chunk length
    (INIT(A) + DATA(), R_INVALID),                               # INIT not alone
    (INIT(A)[:8], R_INVALID),                                    # INIT header not in the packet
    (chunk(1, b"\0" * 4, length=20), R_INVALID),                 # INIT longer than the packet
    (HEARTBEAT() + INIT(A), R_INVALID),                          # INIT not first
    (HEARTBEAT() + COOKIE_ECHO(), R_INVALID),                    # COOKIE_ECHO not first
    (HEARTBEAT() + SHUTDOWN_COMPLETE(), R_INVALID),              # SHUTDOWN_COMPLETE not alone
    (HEARTBEAT() + struct.pack("!BBH", 0, 0, 0), R_INVALID),     # a later chunk of length 0
])
def test_malformed_first_packets(payload, reason):
    f = Flow()
    assert f.send(_raw(0, payload)) == T_INV
    assert f.rec() is None
    assert f.invalid() == (1, {reason: 1})


@pytest.mark.parametrize("payload", [
    struct.pack("!BBH", 0, 3, 0) + b"\0" * 12,                  # DATA of length 0
    DATA() + COOKIE_ACK(),                                       # COOKIE_ACK not first
    SACK() + INIT_ACK(A),                                        # INIT_ACK not alone
    b"",
])
def test_malformed_packets_on_an_association(payload):
    f = Flow()
    establish(f)
    assert f.send(_raw(B_, payload), dt=0) == T_INV
    f.check("ESTABLISHED", ESTABLISHED, [2, 2])


def test_chunk_lengths_are_not_checked_against_the_packet():
    # The kernel walks while a chunk header fits and only refuses length 0: a chunk claiming more
    # bytes than the packet has, one claiming 1..3 bytes, or 1..3 stray bytes at the end are fine.
    f = Flow()
    establish(f)
    assert f.send(_raw(B_, struct.pack("!BBH", 0, 3, 1000) + b"\0" * 12)) == T_EST
    assert f.send(_raw(B_, struct.pack("!BBH", 3, 0, 1) + SACK())) == T_EST
    assert f.send(_raw(B_, SACK() + b"\x07\x00")) == T_EST
    f.check("ESTABLISHED", ESTABLISHED, [5, 2])
    # A SHUTDOWN hidden behind a chunk of length 2 (padded to 4): still walked.
    assert f.send(_raw(B_, struct.pack("!BBH", 3, 0, 2) + SHUTDOWN())) == T_EST
    f.check("SHUTDOWN_SENT", SHORT, [6, 2])


def test_truncated_capture():
    f = Flow()
    init = c2s(0, INIT(A))
    # Cut inside the common header: the parser refuses it.
    assert f.send(init[:14 + 20 + 10], wirelen=[len(init)]) == T_INV
    # Common header complete, first chunk header cut: nothing can be walked.
    assert f.send(init[:14 + 20 + 14], wirelen=[len(init)]) == T_INV
    assert f.invalid() == (2, {R_TRUNC: 2})
    # The INIT's tag captured, the rest of its header not: enough.
    assert f.send(init[:14 + 20 + 20], wirelen=[len(init)]) == T_NEW
    r = f.check("CLOSED", CLOSED, [1, 0])
    assert r["bytes"] == [iplen(init), 0] and r["td_end"] == [0, A]
    # A DATA packet whose second chunk lies beyond the capture: the captured part is walked.
    f.send(s2c(A, INIT_ACK(B_)))
    f.send(c2s(B_, COOKIE_ECHO()))
    f.send(s2c(A, COOKIE_ACK()))
    pkt = c2s(B_, DATA(1, b"x" * 100), SHUTDOWN())
    assert f.send(pkt[:14 + 20 + 40], wirelen=[len(pkt)]) == T_EST
    f.check("ESTABLISHED", ESTABLISHED, [3, 2])


def test_random_garbage_never_crashes():
    rng = np.random.default_rng(20240601)
    t = Tracker(seed=3, max_conns=4096)
    frames, ts = [], []
    for i in range(3000):
        n = int(rng.integers(0, 80))
        payload = bytes(rng.integers(0, 256, n, dtype=np.uint8))
        if i % 3 == 0 and n >= 4:
            # Plausible chunk types and small lengths, to reach deeper into the checks.
            payload = bytes([int(rng.integers(0, 16)), int(rng.integers(0, 2)), 0,
                             int(rng.integers(0, 40))]) + payload[4:]
        vtag = int(rng.choice([0, A, B_, int(rng.integers(0, 2**32))]))
        forward = bool(rng.integers(0, 2))
        sport, dport = (CP, SP) if forward else (SP, CP)
        frames.append(_raw(vtag, payload, sport, dport, *((C, S) if forward else (S, C))))
        ts.append(i * 0.001)
    res = t.process(Batch.from_frames(frames, ts=ts))
    assert set(np.unique(res.ct_state)) <= {T_NEW, T_EST, T_RPL, T_INV}
    assert t._engine.check_invariants() == []


# ---- checksum ------------------------------------------------------------------------------------

def test_crc32c_checked_with_nf_conntrack_checksum():
    f = Flow(sysctl={"nf_conntrack_checksum": 1})
    assert f.send(c2s(0, INIT(A), bad_crc=True)) == T_INV
    assert f.invalid() == (1, {R_CSUM: 1})
    assert f.send(c2s(0, INIT(A))) == T_NEW
    assert f.send(s2c(A, INIT_ACK(B_), bad_crc=True)) == T_INV
    assert f.send(s2c(A, INIT_ACK(B_))) == T_RPL
    f.check("COOKIE_WAIT", SHORT, [1, 1])
    # A packet not captured whole cannot be summed: it passes.
    echo = c2s(B_, COOKIE_ECHO(), DATA(1, b"y" * 64), bad_crc=True)
    assert f.send(echo[:-8], wirelen=[len(echo)]) == T_EST
    f.check("COOKIE_ECHOED", SHORT, [2, 1])


def test_crc32c_ignored_by_default():
    f = Flow()
    assert f.send(c2s(0, INIT(A), bad_crc=True)) == T_NEW
