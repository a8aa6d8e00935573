"""DCCP tracking with the dccp option, against the kernels that had a DCCP tracker
(nf_conntrack_proto_dccp.c as last shipped, before 6.16 removed it), and DCCP as generic without it.

Every expectation is worked out from the kernel's code: dccp_error (header checks), dccp_new (only
a Request starts a connection), nf_conntrack_dccp_packet (Reset before any reply kills; IGNORE and
the Response resync; the role swap on a server's Request in TIMEWAIT; [ASSURED] only from an Ack
acknowledging the Response) and dccp_state_table[role][type][state] -- never from fastct's output.
Kernel timeouts (DCCP_MSL = 120 s): REQUEST 240, RESPOND 480, PARTOPEN 480, OPEN 43200, CLOSEREQ 64,
CLOSING 64, TIMEWAIT 240.

fastct/_dccp.pxd keeps the roles in td_scale[direction] (0 client, 1 server), the last packet's
type and direction in td_flags, and the Response's sequence number in td_end (low 32, high 16 bits).

With the option the ports are part of the key (the old kernel's tuple): the engine's first stage
calls _dccp.dccp_key.
"""
import struct

import numpy as np
import pytest

from fastct import CT_STATE_BITS as B, Batch, Tracker
from fastct.tracker import REASONS, full_counters
from pkt import ip4, ip6

TRK, NEW, EST, RPL, INV = B["trk"], B["new"], B["est"], B["rpl"], B["inv"]
T_NEW, T_EST, T_RPL, T_INV = TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | INV

C, S = "192.168.9.1", "10.9.0.2"
C6, S6 = "2001:db8::9:1", "2001:db8::9:2"
CP, SP = 45000, 5001

REQUEST, RESPONSE, DATA, ACK, DATAACK, CLOSEREQ, CLOSE, RESET, SYNC, SYNCACK = range(10)
CLIENT, SERVER = 0, 1

# Kernel defaults (nf_conntrack_dccp_init_net).
TO = {"REQUEST": 240, "RESPOND": 480, "PARTOPEN": 480, "OPEN": 43200, "CLOSEREQ": 64, "CLOSING": 64,
      "TIMEWAIT": 240}

R_INVALID = "DCCP packet invalid in this state"
R_NO_NEW = "DCCP packet cannot start a connection"
R_TRUNC = "transport header truncated"
R_CSUM = "checksum wrong (nf_conntrack_checksum=1)"
assert {R_INVALID, R_NO_NEW, R_TRUNC, R_CSUM} <= set(REASONS)

C_ISS, S_ISS = 100, 0x1234000001F4          # the server's is a full 48-bit number


# ---- packets ---------------------------------------------------------------------------------------

def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def eth(payload, etype):
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + payload


def ip4_frame(src, dst, proto, payload):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0, ip4(src), ip4(dst))
    hdr = hdr[:10] + struct.pack("!H", ~_sum16(hdr) & 0xFFFF) + hdr[12:]
    return eth(hdr + payload, 0x0800)


def ip6_frame(src, dst, nh, payload):
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, ip6(src), ip6(dst))
    return eth(hdr + payload, 0x86DD)


def dccp_bytes(ptype, seq, ack=0, x=True, sport=CP, dport=SP, src=C, dst=S, payload=b"", doff=None,
               cscov=0, csum="good", service=42, code=2, v6=False):
    """A DCCP packet (RFC 4340 5): generic header, then what the type carries, then `payload`.
    The checksum covers what the old kernel's conntrack summed: the pseudo-header with the whole
    length, and all bytes (CsCov 0) or the first (CsCov - 1) * 4."""
    if x:
        gen_tail = struct.pack("!BHI", 0, (seq >> 32) & 0xFFFF, seq & 0xFFFFFFFF)
        ack_bits = struct.pack("!HHI", 0, (ack >> 32) & 0xFFFF, ack & 0xFFFFFFFF)
    else:
        gen_tail = struct.pack("!BH", (seq >> 16) & 0xFF, seq & 0xFFFF)
        ack_bits = struct.pack("!I", ack & 0xFFFFFF)            # RFC's short form: 4 bytes
    if ptype == REQUEST:
        extra = struct.pack("!I", service)
    elif ptype == RESPONSE:
        extra = ack_bits + struct.pack("!I", service)
    elif ptype == RESET:
        extra = ack_bits + struct.pack("!BBBB", code, 0, 0, 0)
    elif ptype == DATA:
        extra = b""
    else:
        extra = ack_bits
    hlen = 9 + len(gen_tail) + len(extra)
    if doff is None:
        doff = hlen // 4
    body = struct.pack("!HHBBHB", sport, dport, doff, cscov, 0, (ptype << 1) | (1 if x else 0)) + \
        gen_tail + extra + payload
    cover = len(body) if cscov == 0 else (cscov - 1) * 4
    if v6:
        pseudo = ip6(src) + ip6(dst) + struct.pack("!I3xB", len(body), 33)
    else:
        pseudo = ip4(src) + ip4(dst) + struct.pack("!BBH", 0, 33, len(body))
    ck = ~_sum16(pseudo + body[:cover]) & 0xFFFF
    if csum == "bad":
        ck ^= 0x0100
    return body[:6] + struct.pack("!H", ck) + body[8:]


def c2s(ptype, seq, ack=0, **kw):
    return ip4_frame(C, S, 33, dccp_bytes(ptype, seq, ack, **kw))


def s2c(ptype, seq, ack=0, **kw):
    return ip4_frame(S, C, 33, dccp_bytes(ptype, seq, ack, sport=SP, dport=CP, src=S, dst=C, **kw))


def iplen(frame):
    return len(frame) - 14




def _words(addr_packed: bytes):
    raw = addr_packed + bytes(16 - len(addr_packed))
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


class Flow:
    """A tracker with the dccp option fed one packet at a time, 10 ms apart unless told otherwise."""

    def __init__(self, **kw):
        kw.setdefault("dccp_tracker", True)
        self.t = Tracker(seed=7, **kw)
        self.now = 0.0

    def send(self, frame, dt=0.01, **kw):
        self.now += dt
        return int(self.t.process(Batch.from_frames([frame], ts=[self.now], **kw)).ct_state[0])

    def rec(self, src=C, dst=S, sport=CP, dport=SP, v6=False):
        """The entry, looked up by its tuple (ports only when the key has them)."""
        s0, s1 = _words(ip6(src) if v6 else ip4(src))
        d0, d1 = _words(ip6(dst) if v6 else ip4(dst))
        k4 = sport | (dport << 16) | ((10 if v6 else 2) << 48) | (33 << 56)
        idx, direction = self.t._engine.lookup_key(s0, s1, d0, d1, k4)
        return None if idx < 0 else self.t.record(idx, direction)

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


def handshake(f, assure=True):
    """Request, Response, Ack (or DataAck, which does not assure), DataAck: OPEN."""
    frames = [c2s(REQUEST, C_ISS), s2c(RESPONSE, S_ISS, C_ISS),
              c2s(ACK if assure else DATAACK, C_ISS + 1, S_ISS), s2c(DATAACK, S_ISS + 1, C_ISS + 1)]
    assert [f.send(x) for x in frames] == [T_NEW, T_RPL, T_EST, T_RPL]
    f.check("OPEN", TO["OPEN"], [2, 2], assured=assure)
    return frames


# ---- connection life -----------------------------------------------------------------------------------

def test_handshake_state_by_state():
    f = Flow()
    req = c2s(REQUEST, C_ISS)
    assert f.send(req) == T_NEW                         # client row from NONE: REQUEST
    r = f.check("REQUEST", TO["REQUEST"], [1, 0], assured=False)
    assert r["status_names"] == ["CONFIRMED"] and r["bytes"] == [iplen(req), 0]
    assert r["td_scale"] == [CLIENT, SERVER] and r["td_flags"] == [REQUEST, 0]
    resp = s2c(RESPONSE, S_ISS, C_ISS)
    assert f.send(resp) == T_RPL                        # server: REQUEST -> RESPOND, seq kept
    r = f.check("RESPOND", TO["RESPOND"], [1, 1], assured=False)
    assert r["td_end"] == [S_ISS & 0xFFFFFFFF, S_ISS >> 32] and r["td_flags"] == [RESPONSE, 1]
    assert f.send(c2s(ACK, C_ISS + 1, S_ISS)) == T_EST   # client Ack of the Response: PARTOPEN, assured
    r = f.check("PARTOPEN", TO["PARTOPEN"], [2, 1], assured=True)
    assert r["status_names"] == ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
    assert f.send(s2c(DATAACK, S_ISS + 1, C_ISS + 1)) == T_RPL   # server: PARTOPEN -> OPEN
    f.check("OPEN", TO["OPEN"], [2, 2], assured=True)
    # Data both ways; Data and Ack may use 24-bit sequence numbers (X = 0).
    assert f.send(c2s(DATA, C_ISS + 2, x=False, payload=b"hello"), dt=60) == T_EST
    data_ack = s2c(ACK, S_ISS + 2, C_ISS + 2, x=False, payload=b"abcd")
    assert f.send(data_ack) == T_RPL
    r = f.check("OPEN", TO["OPEN"], [3, 3], assured=True)
    assert r["bytes"][1] == iplen(resp) + iplen(data_ack) + iplen(s2c(DATAACK, S_ISS + 1, C_ISS + 1))


def test_closereq_close_reset_timewait():
    f = Flow()
    handshake(f)
    assert f.send(s2c(CLOSEREQ, S_ISS + 2, C_ISS + 1)) == T_RPL     # server: OPEN -> CLOSEREQ
    f.check("CLOSEREQ", TO["CLOSEREQ"], [2, 3])
    assert f.send(c2s(DATA, C_ISS + 2, x=False, payload=b"late")) == T_EST    # client data MAY go on
    f.check("CLOSEREQ", TO["CLOSEREQ"], [3, 3])
    assert f.send(c2s(CLOSE, C_ISS + 3, S_ISS + 2)) == T_EST        # client: CLOSEREQ -> CLOSING
    f.check("CLOSING", TO["CLOSING"], [4, 3])
    assert f.send(s2c(RESET, S_ISS + 3, C_ISS + 3)) == T_RPL        # server: CLOSING -> TIMEWAIT
    f.check("TIMEWAIT", TO["TIMEWAIT"], [4, 4], assured=True)
    # The server's row keeps TIMEWAIT for a Reset and renews the timer (the kernel's row has a
    # ninth value: TIMEWAIT's cell is sTW, not the sIG its comment announces) ...
    assert f.send(s2c(RESET, S_ISS + 4, C_ISS + 3), dt=10) == T_RPL
    f.check("TIMEWAIT", TO["TIMEWAIT"], [4, 5])
    # ... while the client's Reset in TIMEWAIT is ignored: not counted, not renewed.
    assert f.send(c2s(RESET, C_ISS + 4, S_ISS + 4), dt=10) == T_EST
    r = f.check("TIMEWAIT", TO["TIMEWAIT"] - 10, [4, 5])
    assert r["td_flags"] == [RESET, 0]
    assert f.invalid()[0] == 0


def test_client_closes():
    f = Flow()
    handshake(f)
    assert f.send(c2s(CLOSE, C_ISS + 2, S_ISS + 1)) == T_EST        # client: OPEN -> CLOSING
    f.check("CLOSING", TO["CLOSING"], [3, 2])
    assert f.send(s2c(DATA, S_ISS + 2, x=False, payload=b"tail")) == T_RPL    # server data in CLOSING
    f.check("CLOSING", TO["CLOSING"], [3, 3])
    # A client Close in CLOSING: the kernel's cell is invalid (its comment says "Retransmit").
    assert f.send(c2s(CLOSE, C_ISS + 3, S_ISS + 2), dt=0) == T_INV
    f.check("CLOSING", TO["CLOSING"], [3, 3])
    assert f.send(s2c(RESET, S_ISS + 3, C_ISS + 2)) == T_RPL
    f.check("TIMEWAIT", TO["TIMEWAIT"], [3, 4])
    assert f.invalid() == (1, {R_INVALID: 1})


def test_server_closes():
    f = Flow()
    handshake(f)
    assert f.send(s2c(CLOSE, S_ISS + 2, C_ISS + 1)) == T_RPL        # server: OPEN -> CLOSING
    f.check("CLOSING", TO["CLOSING"], [2, 3])
    assert f.send(s2c(CLOSE, S_ISS + 3, C_ISS + 1)) == T_RPL        # server retransmit: CLOSING
    f.check("CLOSING", TO["CLOSING"], [2, 4])
    assert f.send(c2s(RESET, C_ISS + 2, S_ISS + 3)) == T_EST        # client: CLOSING -> TIMEWAIT
    f.check("TIMEWAIT", TO["TIMEWAIT"], [3, 4])


def test_partopen_rules():
    f = Flow()
    f.send(c2s(REQUEST, C_ISS))
    f.send(s2c(RESPONSE, S_ISS, C_ISS))
    f.send(c2s(ACK, C_ISS + 1, S_ISS))
    # In PARTOPEN the client MUST use DataAck: Data is invalid, DataAck keeps PARTOPEN.
    assert f.send(c2s(DATA, C_ISS + 2, x=False, payload=b"x"), dt=0) == T_INV
    f.check("PARTOPEN", TO["PARTOPEN"], [2, 1])
    assert f.send(c2s(DATAACK, C_ISS + 2, S_ISS)) == T_EST
    f.check("PARTOPEN", TO["PARTOPEN"], [3, 1])
    # The server's Ack opens.
    assert f.send(s2c(ACK, S_ISS + 1, C_ISS + 2)) == T_RPL
    f.check("OPEN", TO["OPEN"], [3, 2], assured=True)
    assert f.invalid() == (1, {R_INVALID: 1})


def test_ack_of_another_number_does_not_assure():
    f = Flow()
    f.send(c2s(REQUEST, C_ISS))
    f.send(s2c(RESPONSE, S_ISS, C_ISS))
    assert f.send(c2s(ACK, C_ISS + 1, S_ISS - 1)) == T_EST
    f.check("PARTOPEN", TO["PARTOPEN"], [2, 1], assured=False)
    f.send(s2c(DATAACK, S_ISS + 1, C_ISS + 1))
    f.send(c2s(ACK, C_ISS + 2, S_ISS + 1))
    f.check("OPEN", TO["OPEN"], [3, 2], assured=False)


def test_dataack_does_not_assure():
    # Only an Ack (type 3) acknowledging the Response assures; a DataAck doing the same does not.
    f = Flow()
    handshake(f, assure=False)
    f.send(c2s(ACK, C_ISS + 2, S_ISS + 1))
    f.check("OPEN", TO["OPEN"], [3, 2], assured=False)


def test_retransmitted_request_and_response():
    f = Flow()
    f.send(c2s(REQUEST, C_ISS))
    assert f.send(c2s(REQUEST, C_ISS), dt=1) == T_NEW        # client: REQUEST -> REQUEST, renewed
    f.check("REQUEST", TO["REQUEST"], [2, 0])
    f.send(s2c(RESPONSE, S_ISS, C_ISS))
    # A Request again after the Response was seen: RESPOND stays (the Response got lost).
    assert f.send(c2s(REQUEST, C_ISS)) == T_EST
    f.check("RESPOND", TO["RESPOND"], [3, 1])
    # A second Response (another sequence number) in RESPOND: RESPOND, but the number kept is
    # the first one's (it is taken only when coming from REQUEST).
    assert f.send(s2c(RESPONSE, S_ISS + 7, C_ISS)) == T_RPL
    r = f.check("RESPOND", TO["RESPOND"], [3, 2])
    assert r["td_end"] == [S_ISS & 0xFFFFFFFF, S_ISS >> 32]
    assert f.send(c2s(ACK, C_ISS + 1, S_ISS + 7)) == T_EST
    f.check("PARTOPEN", TO["PARTOPEN"], [4, 2], assured=False)


@pytest.mark.parametrize("ptype", [RESPONSE, DATA, ACK, DATAACK, CLOSEREQ, CLOSE, RESET, SYNC, SYNCACK])
def test_only_a_request_starts_a_connection(ptype):
    f = Flow()
    frame = c2s(ptype, 5, 6, payload=b"pay!")
    assert f.send(frame) == T_INV
    assert f.rec() is None and len(f.t) == 0
    s = f.t.stats()
    assert s["invalid"] == 1 and s["insert"] == 0 and s["reasons"] == {R_NO_NEW: 1}


def test_reset_before_any_reply_kills_the_connection():
    f = Flow()
    assert f.send(c2s(REQUEST, C_ISS)) == T_NEW
    # The client gives up with a Reset: counted, then the connection is gone.
    assert f.send(c2s(RESET, C_ISS + 1, 0)) == T_NEW
    dead = f.t._engine.entries_view()            # (still in the table until swept)
    assert len(dead) == 1 and list(full_counters(dead, f.t._engine.cold_view())[0]["packets"]) == [2, 0]
    assert f.rec() is None and len(f.t) == 0
    # The next Request starts afresh.
    assert f.send(c2s(REQUEST, C_ISS + 10)) == T_NEW
    f.check("REQUEST", TO["REQUEST"], [1, 0])
    # The server refuses with a Reset: the reply kills it too.
    assert f.send(s2c(RESET, S_ISS, C_ISS + 10)) == T_RPL
    assert f.rec() is None
    assert f.invalid()[0] == 0


# ---- ignored packets, resync, reincarnation --------------------------------------------------------

def test_sync_and_syncack_are_ignored():
    f = Flow()
    handshake(f)
    assert f.send(c2s(SYNC, C_ISS + 2, S_ISS + 1), dt=5) == T_EST
    assert f.send(s2c(SYNCACK, S_ISS + 2, C_ISS + 2), dt=5) == T_RPL
    r = f.check("OPEN", TO["OPEN"] - 10, [2, 2])
    assert r["td_flags"] == [SYNCACK, 1]


def test_request_in_open_is_ignored_and_its_response_resyncs():
    f = Flow()
    handshake(f)
    # A new Request from the client while OPEN: ignored (the connection may have restarted).
    assert f.send(c2s(REQUEST, 7000), dt=5) == T_EST
    r = f.check("OPEN", TO["OPEN"] - 5, [2, 2])
    assert r["td_flags"] == [REQUEST, 0]
    # The server's Response to it: the tracker follows the new handshake, RESPOND, counted.
    new_iss = 0x0000ABCDEF01
    assert f.send(s2c(RESPONSE, new_iss, 7000)) == T_RPL
    r = f.check("RESPOND", TO["RESPOND"], [2, 3])
    assert r["td_end"] == [new_iss & 0xFFFFFFFF, new_iss >> 32] and r["td_scale"] == [CLIENT, SERVER]
    assert f.send(c2s(ACK, 7001, new_iss)) == T_EST
    f.check("PARTOPEN", TO["PARTOPEN"], [3, 3])
    assert f.send(s2c(DATA, new_iss + 1, x=False, payload=b"go")) == T_RPL
    f.check("OPEN", TO["OPEN"], [3, 4])


def test_resync_with_the_roles_reversed():
    f = Flow()
    handshake(f, assure=False)
    # The server's end now opens a connection to the client's port: its Request is ignored ...
    assert f.send(s2c(REQUEST, 9000), dt=5) == T_RPL
    f.check("OPEN", TO["OPEN"] - 5, [2, 2])
    # ... and the client's Response to it makes the reply direction the client.
    assert f.send(c2s(RESPONSE, 3000, 9000)) == T_EST
    r = f.check("RESPOND", TO["RESPOND"], [3, 2], assured=False)
    assert r["td_scale"] == [SERVER, CLIENT] and r["td_end"] == [3000, 0]
    # The Ack from the (new) client acknowledging it: PARTOPEN and, now, assured.
    assert f.send(s2c(ACK, 9001, 3000)) == T_RPL
    f.check("PARTOPEN", TO["PARTOPEN"], [3, 3], assured=True)
    assert f.send(c2s(DATAACK, 3001, 9001)) == T_EST                # (new) server: OPEN
    f.check("OPEN", TO["OPEN"], [4, 3])


def test_crossed_requests_in_request():
    f = Flow()
    f.send(c2s(REQUEST, C_ISS))
    # A Response from the client side while REQUEST: ignored (nothing to resync with).
    assert f.send(c2s(RESPONSE, C_ISS, 1), dt=0) == T_NEW          # (no reply seen yet)
    r = f.check("REQUEST", TO["REQUEST"], [1, 0])
    assert r["td_flags"] == [RESPONSE, 0]
    # A Request from the server side: ignored too, and remembered ...
    assert f.send(s2c(REQUEST, 77), dt=0) == T_RPL
    f.check("REQUEST", TO["REQUEST"], [1, 0])
    # ... so the client side's Response to it resyncs, with the roles reversed.
    assert f.send(c2s(RESPONSE, C_ISS + 1, 77)) == T_EST
    r = f.check("RESPOND", TO["RESPOND"], [2, 0], assured=False)
    assert r["td_scale"] == [SERVER, CLIENT] and r["td_end"] == [C_ISS + 1, 0]
    assert f.invalid()[0] == 0


def test_invalid_transitions():
    f = Flow()
    f.send(c2s(REQUEST, C_ISS))
    assert f.send(s2c(DATA, 1, x=False, payload=b"no"), dt=0) == T_INV       # server data in REQUEST
    assert f.send(c2s(ACK, C_ISS + 1, 1), dt=0) == T_INV                     # client Ack in REQUEST
    f.check("REQUEST", TO["REQUEST"], [1, 0])
    f.send(s2c(RESPONSE, S_ISS, C_ISS))
    assert f.send(s2c(ACK, S_ISS + 1, C_ISS), dt=0) == T_INV                 # server Ack in RESPOND
    f.send(c2s(ACK, C_ISS + 1, S_ISS))
    f.send(s2c(DATAACK, S_ISS + 1, C_ISS + 1))
    assert f.send(c2s(CLOSEREQ, C_ISS + 2, S_ISS + 1), dt=0) == T_INV        # only servers send it
    f.send(s2c(CLOSEREQ, S_ISS + 2, C_ISS + 1))
    assert f.send(s2c(CLOSE, S_ISS + 3, C_ISS + 1), dt=0) == T_INV           # server Close in CLOSEREQ
    assert f.send(s2c(ACK, S_ISS + 3, C_ISS + 1), dt=0) == T_INV             # server Ack in CLOSEREQ
    f.check("CLOSEREQ", TO["CLOSEREQ"], [2, 3])
    f.send(c2s(CLOSE, C_ISS + 2, S_ISS + 2))
    f.send(s2c(RESET, S_ISS + 3, C_ISS + 2))
    assert f.send(c2s(DATA, C_ISS + 3, x=False, payload=b"no"), dt=0) == T_INV   # data in TIMEWAIT
    assert f.send(s2c(RESPONSE, S_ISS + 4, C_ISS), dt=0) == T_INV            # Response in TIMEWAIT
    f.check("TIMEWAIT", TO["TIMEWAIT"], [3, 4])
    assert f.invalid() == (8, {R_INVALID: 8})


def _to_timewait(f, assure=True):
    handshake(f, assure)
    f.send(c2s(CLOSE, C_ISS + 2, S_ISS + 1))
    f.send(s2c(RESET, S_ISS + 2, C_ISS + 2))
    f.check("TIMEWAIT", TO["TIMEWAIT"], [3, 3])


def test_reincarnation_after_timewait():
    f = Flow()
    _to_timewait(f)
    assert f.send(c2s(REQUEST, 20000)) == T_EST                       # client: TIMEWAIT -> REQUEST
    r = f.check("REQUEST", TO["REQUEST"], [4, 3])
    assert r["td_scale"] == [CLIENT, SERVER]
    assert f.send(s2c(RESPONSE, 30000, 20000)) == T_RPL
    r = f.check("RESPOND", TO["RESPOND"], [4, 4])
    assert r["td_end"] == [30000, 0]


def test_reincarnation_from_the_server_side_swaps_roles():
    f = Flow()
    _to_timewait(f, assure=False)
    assert f.send(s2c(REQUEST, 40000)) == T_RPL                       # server row: TIMEWAIT -> REQUEST
    r = f.check("REQUEST", TO["REQUEST"], [3, 4], assured=False)
    assert r["td_scale"] == [SERVER, CLIENT]
    assert f.send(c2s(RESPONSE, 50000, 40000)) == T_EST               # the original side answers now
    r = f.check("RESPOND", TO["RESPOND"], [4, 4])
    assert r["td_end"] == [50000, 0]
    assert f.send(s2c(ACK, 40001, 50000)) == T_RPL
    f.check("PARTOPEN", TO["PARTOPEN"], [4, 5], assured=True)


# ---- header checks (the old kernel's dccp_error) ----------------------------------------------------

def _frame(body):
    return ip4_frame(C, S, 33, body)


@pytest.mark.parametrize("body,reason", [
    pytest.param(dccp_bytes(REQUEST, 1)[:11], R_TRUNC, id="shorter-than-generic-header"),
    pytest.param(dccp_bytes(REQUEST, 1, doff=2), R_INVALID, id="doff-below-3"),
    pytest.param(dccp_bytes(REQUEST, 1, doff=6), R_INVALID, id="doff-past-the-packet"),
    pytest.param(dccp_bytes(REQUEST, 1, cscov=7), R_INVALID, id="cscov-past-the-packet"),
    pytest.param(dccp_bytes(REQUEST, 1)[:8] + bytes([(10 << 1) | 1]) + dccp_bytes(REQUEST, 1)[9:],
                 R_INVALID, id="type-10"),
    pytest.param(dccp_bytes(REQUEST, 1)[:8] + bytes([(15 << 1) | 1]) + dccp_bytes(REQUEST, 1)[9:],
                 R_INVALID, id="type-15"),
    pytest.param(dccp_bytes(REQUEST, 1, x=False), R_INVALID, id="request-without-48bit-seq"),
    pytest.param(dccp_bytes(RESET, 1, x=False), R_INVALID, id="reset-without-48bit-seq"),
    pytest.param(dccp_bytes(RESPONSE, 1, 1, doff=6)[:24], R_INVALID, id="response-without-service-code"),
])
def test_bad_headers(body, reason):
    f = Flow()
    assert f.send(_frame(body)) == T_INV
    assert len(f.t) == 0
    assert f.invalid() == (1, {reason: 1})


def test_cscov_within_the_packet_is_fine():
    f = Flow()
    # 20-byte Request: CsCov 6 covers (6 - 1) * 4 = 20 bytes: allowed.
    assert f.send(c2s(REQUEST, C_ISS, cscov=6)) == T_NEW


def test_short_form_ack_needs_the_kernels_eight_bytes():
    # The kernel reads an acknowledgement as 8 bytes whatever X says: an X = 0 Ack of 16 bytes (its
    # RFC short form, no payload) is refused; with 4 more bytes it passes.
    f = Flow()
    handshake(f)
    assert f.send(c2s(ACK, C_ISS + 2, S_ISS + 1, x=False), dt=0) == T_INV
    f.check("OPEN", TO["OPEN"], [2, 2])
    assert f.send(c2s(ACK, C_ISS + 2, S_ISS + 1, x=False, payload=b"four")) == T_EST
    f.check("OPEN", TO["OPEN"], [3, 2])
    assert f.invalid() == (1, {R_INVALID: 1})


def test_bad_header_on_a_connection_changes_nothing():
    f = Flow()
    handshake(f)
    before = f.rec()
    assert f.send(_frame(dccp_bytes(CLOSE, 5, 5, doff=1)), dt=3) == T_INV
    after = f.rec()
    assert after["packets"] == before["packets"] and after["expires"] == before["expires"]
    assert after["state_name"] == "OPEN"


def test_truncated_capture():
    f = Flow()
    req = c2s(REQUEST, C_ISS)
    assert f.send(req[:14 + 20 + 14], wirelen=[len(req)]) == T_INV    # the service code not captured
    assert f.invalid() == (1, {R_TRUNC: 1})
    req = c2s(REQUEST, C_ISS, payload=b"p" * 40)
    assert f.send(req[:14 + 20 + 20], wirelen=[len(req)]) == T_NEW     # headers captured, payload not
    r = f.check("REQUEST", TO["REQUEST"], [1, 0])
    assert r["bytes"] == [iplen(req), 0]


def test_checksum_with_nf_conntrack_checksum():
    f = Flow(sysctl={"nf_conntrack_checksum": 1})
    assert f.send(c2s(REQUEST, C_ISS, csum="bad")) == T_INV
    assert f.invalid() == (1, {R_CSUM: 1})
    assert f.send(c2s(REQUEST, C_ISS)) == T_NEW
    assert f.send(s2c(RESPONSE, S_ISS, C_ISS, csum="bad"), dt=0) == T_INV
    f.check("REQUEST", TO["REQUEST"], [1, 0])
    # Partial coverage: the old kernel summed the first (CsCov - 1) * 4 bytes of the DCCP packet.
    assert f.send(s2c(RESPONSE, S_ISS, C_ISS, cscov=4, payload=b"z" * 40)) == T_RPL
    f.check("RESPOND", TO["RESPOND"], [1, 1])
    # Covered bytes not all captured cannot be summed: they pass.
    ack = c2s(ACK, C_ISS + 1, S_ISS, payload=b"q" * 40, csum="bad")
    assert f.send(ack[:-8], wirelen=[len(ack)]) == T_EST
    f.check("PARTOPEN", TO["PARTOPEN"], [2, 1])
    assert f.invalid() == (2, {R_CSUM: 2})


def test_checksum_ignored_by_default():
    f = Flow()
    assert f.send(c2s(REQUEST, C_ISS, csum="bad")) == T_NEW


def test_ipv6():
    f = Flow(sysctl={"nf_conntrack_checksum": 1})
    frames = [ip6_frame(C6, S6, 33, dccp_bytes(REQUEST, C_ISS, src=C6, dst=S6, v6=True)),
              ip6_frame(S6, C6, 33, dccp_bytes(RESPONSE, S_ISS, C_ISS, sport=SP, dport=CP, src=S6,
                                               dst=C6, v6=True)),
              ip6_frame(C6, S6, 33, dccp_bytes(ACK, C_ISS + 1, S_ISS, src=C6, dst=S6, v6=True))]
    assert [f.send(x) for x in frames] == [T_NEW, T_RPL, T_EST]
    r = f.rec(C6, S6, v6=True)
    assert r["state_name"] == "PARTOPEN" and r["l3"] == 10 and "ASSURED" in r["status_names"]
    assert r["bytes"] == [iplen(frames[0]) + iplen(frames[2]), iplen(frames[1])]


# ---- the key ----------------------------------------------------------------------------------------

def test_ports_are_in_the_key():
    f = Flow()
    assert f.send(c2s(REQUEST, 1)) == T_NEW
    assert f.send(c2s(REQUEST, 1, sport=CP + 1)) == T_NEW
    assert len(f.t) == 2
    assert f.send(s2c(RESPONSE, 2, 1)) == T_RPL
    r = f.rec()
    assert (r["sport"], r["dport"]) == (CP, SP) and r["state_name"] == "RESPOND"
    other = f.rec(sport=CP + 1)
    assert other["state_name"] == "REQUEST" and other["packets"] == [1, 0]
    back = f.rec(S, C, SP, CP)
    assert back["direction"] == "reply" and back["index"] == r["index"]
    assert f.t._engine.check_invariants() == []


def test_bad_header_of_a_connections_packet():
    f = Flow()
    handshake(f)
    assert f.send(_frame(dccp_bytes(DATA, 1, x=False, doff=9)), dt=0) == T_INV
    f.check("OPEN", TO["OPEN"], [2, 2])


# ---- without the option: generic, as the 6.18 kernel -------------------------------------------------

def test_without_the_option_dccp_is_generic():
    t = Tracker(seed=7)
    frames = [c2s(REQUEST, 1), s2c(RESPONSE, 2, 1), c2s(REQUEST, 1, sport=CP + 1),
              _frame(dccp_bytes(DATA, 1, doff=0)), c2s(CLOSEREQ, 1, 1)]
    res = t.process(Batch.from_frames(frames, ts=[0, 0.1, 0.2, 0.3, 0.4]))
    assert [int(x) for x in res.ct_state] == [T_NEW, T_RPL, T_EST, T_EST, T_EST]
    assert len(t) == 1
    r = t.lookup(C, S, "dccp")
    assert (r["sport"], r["dport"]) == (0, 0) and r["state"] == 0 and r["state_name"] is None
    assert r["timeout"] == 600 and r["packets"] == [4, 1]
    assert r["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert t.stats()["invalid"] == 0


# ---- robustness and defaults ------------------------------------------------------------------------

def test_random_garbage_never_crashes():
    rng = np.random.default_rng(4340)
    t = Tracker(seed=3, max_conns=4096, dccp_tracker=True)
    frames, ts = [], []
    for i in range(3000):
        n = int(rng.integers(0, 60))
        body = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        if n >= 12 and i % 2:
            body[4] = int(rng.integers(0, 12))               # plausible data offsets
            body[8] = int(rng.integers(0, 32))               # types 0..15, X either way
        fwd = bool(rng.integers(0, 2))
        ports = struct.pack("!HH", *((CP, SP) if fwd else (SP, CP)))
        body = (ports + bytes(body[4:])) if n >= 4 else bytes(body)
        frames.append(ip4_frame(*((C, S) if fwd else (S, C)), 33, body))
        ts.append(i * 0.001)
    res = t.process(Batch.from_frames(frames, ts=ts))
    assert set(np.unique(res.ct_state)) <= {T_NEW, T_EST, T_RPL, T_INV}
    assert t._engine.check_invariants() == []


def test_default_timeouts_are_the_kernels():
    t = Tracker()
    got = {k: t.timeouts[f"dccp_timeout_{k.lower()}"] for k in TO}
    assert got == TO
