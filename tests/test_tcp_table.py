"""The Linux 6.x TCP state table (`tcp_conntracks[dir][index][old_state]`), one test per cell.

Every expectation is worked out from the kernel fact digest (/work/notes/kernel_facts.md §1 and §2:
nf_conntrack_proto_tcp.c, and §4.1 for the core), never from fastct's own output:

* `KERNEL_TABLE` below is the digest's §1.2 table, copied cell for cell.
* `SPECIAL` lists the cells whose outcome is not simply "the table's value": the special cases of
  tcp_new (§1.4), of nf_conntrack_tcp_packet (§1.5: reopen in TIME_WAIT/CLOSE, SYN retransmit with
  no reply, RST before any reply) and tcp_error (§1.3: the `none` row is never reached).
* `NOTES` records the cells where a §1.5 special case is *checked* but does not change the result.

Every cell drives a fresh Tracker to the old state with a realistic, in-window packet sequence
between the client 192.0.2.1:40000 (original direction) and the server 198.51.100.1:80 (client ISN
1000, server ISN 5000, windows 65535, no options so no window scaling), then sends one packet of the
cell's flag class with seq/ack chosen inside the window (worked out by hand from §2.3 for each
cell), so the state table alone decides.

Outcome kinds (OVS ct_state bits: trk 0x20, new 0x01, est 0x02, rpl 0x08, inv 0x10):

* a state S     -- accepted: ct_state new (original dir, no reply yet), est (original dir, a reply
                   was seen) or est|rpl (reply dir); the entry is in S, the packet was counted in its
                   direction (packets +1, bytes + IP length) and the timer is timeouts[S] (§1.1, §1.7).
* IG            -- accepted, state unchanged, not counted, timer untouched (§1.5 step 3 IGNORE);
                   a reply-direction packet still sets SEEN_REPLY (§4.1: the handler returned ACCEPT).
* IV            -- ct_state trk|inv (0x30); state, counters, status and timer unchanged.

The NONE column: there is no entry before the packet, so the packet is the first one and runs
tcp_new (§1.4), which always looks up tcp_conntracks[ORIGINAL][index][NONE] -- the conntrack core
makes the first packet's direction ORIGINAL whichever host sends it.  So a "reply/*/NONE" cell is a
packet from the server with no entry: it either creates a new entry whose ORIGINAL direction is
server -> client (SYN -> SYN_SENT, ACK -> loose pick-up ESTABLISHED) or is invalid ("invalid new");
the REPLY table's NONE column (all sIV) is unreachable in the kernel.
"""
import pytest

from fastct import CT_STATE_BITS as B, Tracker
from pkt import ACK, FIN, PSH, RST, SYN, batch, tcp4, udp4

URG, ECE, CWR = 0x20, 0x40, 0x80
TRK, NEW, EST, RPL, INV = B["trk"], B["new"], B["est"], B["rpl"], B["inv"]
T_NEW, T_EST, T_RPL, T_INV = TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | INV

C, S = "192.0.2.1", "198.51.100.1"
CP, SP = 40000, 80
CI, SI = 1000, 5000            # client / server initial sequence numbers
SEC = 1_000_000_000
IPLEN = 40                     # a bare TCP/IPv4 segment: what the kernel's byte counter adds

# fastct's per-reason invalid counter names (tracker.stats()["reasons"]).
R_FLAGS = "TCP flag combination invalid"           # tcp_error "invalid tcp flag combination"
R_STATE = "TCP packet invalid in this state"       # sIV: "packet (index %d) in dir %d invalid"
R_NO_NEW = "TCP packet cannot start a connection"  # tcp_new "invalid new"
R_SEQ_OVER = "TCP SEQ is over the upper bound"
R_ACK_OVER = "TCP ACK is over the upper bound"

STATES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
          "TIME_WAIT", "CLOSE", "SYN_SENT2"]
ABBR = {"NO": "NONE", "SS": "SYN_SENT", "SR": "SYN_RECV", "ES": "ESTABLISHED", "FW": "FIN_WAIT",
        "CW": "CLOSE_WAIT", "LA": "LAST_ACK", "TW": "TIME_WAIT", "CL": "CLOSE", "S2": "SYN_SENT2"}
CLASSES = ["syn", "synack", "fin", "ack", "rst", "none"]
DIRS = ["orig", "reply"]

# Kernel default timeouts in seconds (§1.1).
TIMEOUT = {"SYN_SENT": 120, "SYN_RECV": 60, "ESTABLISHED": 432000, "FIN_WAIT": 120,
           "CLOSE_WAIT": 60, "LAST_ACK": 30, "TIME_WAIT": 120, "CLOSE": 10, "SYN_SENT2": 120}
UNACK = 300

# §1.2, verbatim.  Columns: NO SS SR ES FW CW LA TW CL S2.
KERNEL_TABLE = {
    "orig": {
        "syn":    "SS SS IG IG IG IG IG SS SS S2",
        "synack": "IV IV SR IV IV IV IV IV IV SR",
        "fin":    "IV IV FW FW LA LA LA TW CL IV",
        "ack":    "ES IV ES ES CW CW TW TW CL IV",
        "rst":    "IV CL CL CL CL CL CL CL CL CL",
        "none":   "IV IV IV IV IV IV IV IV IV IV",
    },
    "reply": {
        "syn":    "IV S2 IV IV IV IV IV SS IV S2",
        "synack": "IV SR IG IG IG IG IG IG IG SR",
        "fin":    "IV IV FW FW LA LA LA TW CL IV",
        "ack":    "IV IG SR ES CW CW TW TW CL IG",
        "rst":    "IV CL CL CL CL CL CL CL CL CL",
        "none":   "IV IV IV IV IV IV IV IV IV IV",
    },
}


def table_cell(d, cls, old):
    return KERNEL_TABLE[d][cls].split()[STATES.index(old)]


# ---- packets ---------------------------------------------------------------------------------------

def c2s(flags, seq, ack=0, **kw):
    return tcp4(C, S, CP, SP, flags, seq, ack, **kw)


def s2c(flags, seq, ack=0, **kw):
    return tcp4(S, C, SP, CP, flags, seq, ack, **kw)


# How each old state is reached: (packet, state after it).  One packet per process() call.
_SS = [(c2s(SYN, CI), "SYN_SENT")]
_SR = _SS + [(s2c(SYN | ACK, SI, CI + 1), "SYN_RECV")]
_ES = _SR + [(c2s(ACK, CI + 1, SI + 1), "ESTABLISHED")]
_FW = _ES + [(c2s(FIN | ACK, CI + 1, SI + 1), "FIN_WAIT")]        # the client closes first
_CW = _FW + [(s2c(ACK, SI + 1, CI + 2), "CLOSE_WAIT")]            # the server acks the FIN
_LA = _CW + [(s2c(FIN | ACK, SI + 1, CI + 2), "LAST_ACK")]        # the server closes
_TW = _LA + [(c2s(ACK, CI + 2, SI + 2), "TIME_WAIT")]             # the client acks the last FIN
_CL = _ES + [(c2s(RST | ACK, CI + 1, SI + 1), "CLOSE")]           # the client aborts (in window)
_S2 = _SS + [(s2c(SYN, SI), "SYN_SENT2")]                         # simultaneous open
SETUP = {"NONE": [], "SYN_SENT": _SS, "SYN_RECV": _SR, "ESTABLISHED": _ES, "FIN_WAIT": _FW,
         "CLOSE_WAIT": _CW, "LAST_ACK": _LA, "TIME_WAIT": _TW, "CLOSE": _CL, "SYN_SENT2": _S2}

# Per-direction packet counts and status after each setup, from §1.5: every setup packet is counted
# except the reply SYN of SYN_SENT2 (step 7: SYN while SYN_SENT and no reply yet); SEEN_REPLY comes
# with the first accepted reply packet, ASSURED with SYN_RECV -> ESTABLISHED after a reply (step 8).
SR_A = ["SEEN_REPLY", "ASSURED", "CONFIRMED"]
SETUP_AFTER = {
    "SYN_SENT": ([1, 0], ["CONFIRMED"]),
    "SYN_RECV": ([1, 1], ["SEEN_REPLY", "CONFIRMED"]),
    "ESTABLISHED": ([2, 1], SR_A),
    "FIN_WAIT": ([3, 1], SR_A),
    "CLOSE_WAIT": ([3, 2], SR_A),
    "LAST_ACK": ([3, 3], SR_A),
    "TIME_WAIT": ([4, 3], SR_A),
    "CLOSE": ([3, 1], SR_A),
    "SYN_SENT2": ([1, 0], ["SEEN_REPLY", "CONFIRMED"]),
}

# Next sequence number of (client, server) in each old state; FINs take one.  Probe packets use them
# as seq (own side) and ack (other side), so they sit exactly at the edge both ends agree on.
NEXT = {"NONE": (CI + 1, SI + 1), "SYN_SENT": (CI + 1, SI + 1), "SYN_RECV": (CI + 1, SI + 1),
        "ESTABLISHED": (CI + 1, SI + 1), "FIN_WAIT": (CI + 2, SI + 1),
        "CLOSE_WAIT": (CI + 2, SI + 1), "LAST_ACK": (CI + 2, SI + 2),
        "TIME_WAIT": (CI + 2, SI + 2), "CLOSE": (CI + 1, SI + 1), "SYN_SENT2": (CI + 1, SI + 1)}
NEW_ISN = 100_000              # added to the ISN of a SYN that reopens a closed connection


def probe(d, cls, old):
    """The packet of flag class `cls` sent in direction `d` when the connection is in `old`."""
    cn, sn = NEXT[old]
    orig = d == "orig"
    send, seq_own, ack_peer, isn = (c2s, cn, sn, CI) if orig else (s2c, sn, cn, SI)
    if cls == "syn":
        # A retransmitted SYN (same ISN), or in TIME_WAIT/CLOSE a new connection attempt (new ISN).
        return send(SYN, isn + (NEW_ISN if old in ("TIME_WAIT", "CLOSE") else 0))
    if cls == "synack":
        return send(SYN | ACK, isn, ack_peer)
    if cls == "fin":
        # This side's FIN is always at ISN+1: a first FIN, or a retransmission of an earlier one.
        return send(FIN | ACK, isn + 1, ack_peer)
    if cls == "ack":
        return send(ACK, seq_own, ack_peer)
    if cls == "rst":
        if old == "SYN_SENT":
            # The client abandons its connect (bare RST at ISN+1); the server refuses it (RST/ACK,
            # seq 0, ack ISN+1 -- §2.3 step 5 then uses td_end as seq).
            return c2s(RST, CI + 1) if orig else s2c(RST | ACK, 0, CI + 1)
        return send(RST | ACK, seq_own, ack_peer)
    assert cls == "none"
    return send(0, seq_own)


# ---- expected outcome per cell -----------------------------------------------------------------

# Cells whose outcome is not "the table value, counted" (or plain IG / IV).  (kind, argument, why)
SPECIAL = {
    ("orig", "syn", "SYN_SENT"): (
        "NOACCT", "SYN_SENT",
        "table SS->SS; §1.5 step 7: no SEEN_REPLY, index SYN, old SYN_SENT -> NF_ACCEPT before "
        "nf_ct_refresh_acct: a SYN retransmit is neither counted nor renews the timer"),
    ("reply", "syn", "SYN_SENT"): (
        "NOACCT", "SYN_SENT2",
        "table S2 (simultaneous open, sets SIMULTANEOUS_OPEN); §1.5 step 7 (no SEEN_REPLY yet, index "
        "SYN, old SYN_SENT) returns before acct/refresh; the core then sets SEEN_REPLY (§4.1)"),
    ("orig", "rst", "SYN_SENT"): (
        "KILL", None,
        "table CL; window passes; §1.5 step 7: RST with no SEEN_REPLY -> nf_ct_kill_acct: counted "
        "and the entry deleted at once"),
    ("reply", "rst", "SYN_SENT"): (
        "KILL", None,
        "table CL (RST/ACK refusing the SYN, seq 0 -> td_end by §2.3 step 5); §1.5 step 7: no "
        "SEEN_REPLY -> nf_ct_kill_acct, entry deleted; matched via the reply tuple -> est|rpl"),
    ("orig", "syn", "TIME_WAIT"): (
        "REOPEN", "orig",
        "table SS with old TW: reopen attempt; CLOSE_INIT is set (the client's FIN made FIN_WAIT) "
        "-> nf_ct_kill, -NF_REPEAT, a fresh conntrack from this SYN (§1.5 step 3)"),
    ("orig", "syn", "CLOSE"): (
        "REOPEN", "orig",
        "table SS with old CL: reopen attempt; last_dir == dir and last_index == RST (the client's "
        "own RST closed it) -> nf_ct_kill, -NF_REPEAT, a fresh conntrack from this SYN"),
    ("reply", "syn", "TIME_WAIT"): (
        "REOPEN", "reply",
        "REPLY syn in TW = SS ('server may have switched role', 6.x); CLOSE_INIT set -> kill, the "
        "fresh conntrack's ORIGINAL direction is server -> client"),
}

NOTES = {
    ("reply", "ack", "SYN_RECV"): "SYN_RECV case: no SIMULTANEOUS_OPEN flag, so it stays SYN_RECV",
    ("orig", "ack", "LAST_ACK"): "TIME_WAIT case: last_index is FIN, not SYN: no challenge-ACK ignore",
    ("reply", "ack", "LAST_ACK"): "TIME_WAIT case: last_dir == dir: no challenge-ACK ignore",
    ("orig", "syn", "SYN_SENT2"): "SYN_SENT2 case sets SIMULTANEOUS_OPEN; SEEN_REPLY set: counted",
    ("reply", "syn", "SYN_SENT2"): "SEEN_REPLY already set, so step 7 does not apply: counted",
    ("orig", "rst", "SYN_RECV"): "CLOSE case: seq == peer's td_maxack, not established: break",
    ("orig", "rst", "ESTABLISHED"): "CLOSE case: established and seq == peer's td_maxack: break",
    ("reply", "rst", "ESTABLISHED"): "CLOSE case: established and seq == peer's td_maxack: break",
    ("reply", "rst", "SYN_RECV"): "CLOSE case: client has no MAXACK_SET yet: window check only",
    ("orig", "rst", "SYN_SENT2"): "CLOSE case: server sent no ACK (no MAXACK_SET): window check",
    ("reply", "rst", "SYN_SENT2"): "CLOSE case: ack != last_end: window check only",
}
for _d in DIRS:
    for _old in ("FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE"):
        NOTES[(_d, "rst", _old)] = "CLOSE case: tcp_can_early_drop (FW/CW/LA/TW/CL) skips the window"


def expectation(d, cls, old):
    """(kind, argument, why) for one cell, from the kernel table and the special cases."""
    cell = table_cell(d, cls, old)
    where = f"tcp_conntracks[{d}][{cls}][{old}] = {cell}"
    if cls == "none" and old == "NONE":
        return ("IVNEW", R_FLAGS, f"{where}, never reached: first packet with none of SYN/ACK/FIN/RST "
                                  "fails tcp_error's flag check (§1.3) before tcp_new: no entry")
    if cls == "none":
        return ("IV", R_FLAGS, f"{where}, never reached: tcp_error rejects a packet with none of "
                               "SYN/ACK/FIN/RST (§1.3), so the 'none' row is inv by the flag check")
    if old == "NONE":
        first = table_cell("orig", cls, "NONE")
        why = (f"no entry: the packet is the first one; tcp_new uses tcp_conntracks[orig][{cls}][NONE]"
               f" = {first} (§1.4); the {'client' if d == 'orig' else 'server'} becomes ORIGINAL")
        if first == "SS":
            return ("NEW", "SYN_SENT", why)
        if first == "ES":
            return ("NEW", "ESTABLISHED", why + "; loose pick-up, capped at UNACK 300 s (step 7)")
        return ("IVNEW", R_NO_NEW, why + ": 'invalid new', no entry")
    if (d, cls, old) in SPECIAL:
        return SPECIAL[(d, cls, old)]
    why = where + (f"; {NOTES[(d, cls, old)]}" if (d, cls, old) in NOTES else "")
    if cell == "IV":
        return ("IV", R_STATE, why)
    if cell == "IG":
        return ("IG", None, why + "; ignored: NF_ACCEPT, no refresh, no acct")
    return ("STATE", ABBR[cell], why)


CELLS = [pytest.param(d, cls, old, *expectation(d, cls, old), id=f"{d}-{cls}-{old}")
         for d in DIRS for cls in CLASSES for old in STATES]


# ---- driving a tracker -----------------------------------------------------------------------------

def one(t, frame, ts):
    return int(t.process(batch([frame], ts=[ts])).ct_state[0])


def rec_c(t):
    """The client-originated connection (looked up by its original tuple), or None."""
    return t.lookup(C, S, "tcp", CP, SP)


def rec_s(t):
    """The connection the server originated (after a role switch or a server-first packet)."""
    return t.lookup(S, C, "tcp", SP, CP)


def drive(t, old, t0=0.0):
    """Bring a fresh tracker to `old`; returns the time of the last setup packet."""
    ts = t0
    for i, (frame, name) in enumerate(SETUP[old]):
        ts = t0 + i * 0.01
        st = one(t, frame, ts)
        assert st & INV == 0, f"setup packet {i} for {old} was invalid"
        assert rec_c(t)["state_name"] == name, f"setup packet {i} for {old}"
    if old != "NONE":
        rec = rec_c(t)
        packets, status = SETUP_AFTER[old]
        assert (rec["packets"], rec["status_names"]) == (packets, status), f"setup of {old}"
    assert t.stats()["invalid"] == 0
    return ts


def strip(rec):
    """A record without its time-dependent display field (the timer itself is `expires`)."""
    return {k: v for k, v in rec.items() if k != "timeout"} if rec else rec


def accepted_ct_state(d, status_before):
    if d == "reply":
        return T_RPL
    return T_EST if "SEEN_REPLY" in status_before else T_NEW


PROBE_T = 1.0


@pytest.mark.parametrize("d, cls, old, kind, arg, why", CELLS)
def test_state_table_cell(d, cls, old, kind, arg, why):
    t = Tracker(seed=1)
    drive(t, old)
    before = rec_c(t)
    frame = probe(d, cls, old)
    iplen = len(frame) - 14
    assert iplen == IPLEN
    st = one(t, frame, PROBE_T)
    after = rec_c(t)
    stats = t.stats()

    if kind == "IVNEW":                     # first packet refused by tcp_error / tcp_new
        assert st == T_INV, why
        assert after is None and rec_s(t) is None and len(t) == 0, why
        assert stats["invalid"] == 1 and stats["reasons"] == {arg: 1}, why
        return
    if kind == "IV":
        assert st == T_INV, why
        assert strip(after) == strip(before), why          # nothing moved, not even the timer
        assert stats["invalid"] == 1 and stats["reasons"] == {arg: 1}, why
        return

    assert stats["invalid"] == 0, (why, stats["reasons"])
    if kind in ("NEW", "REOPEN"):
        # A fresh conntrack from this packet: ORIGINAL direction is its sender, no reply yet.
        state = arg if kind == "NEW" else "SYN_SENT"
        sender_is_client = (d == "orig")
        assert st == T_NEW, why
        rec = rec_c(t) if sender_is_client else rec_s(t)
        assert rec is not None, why
        assert rec["direction"] == "original", why
        assert rec["state_name"] == state, why
        assert rec["packets"] == [1, 0] and rec["bytes"] == [IPLEN, 0], why
        assert rec["status_names"] == ["CONFIRMED"], why            # [UNREPLIED]
        assert rec["start"] == int(PROBE_T * SEC), why
        expect_timeout = TIMEOUT[state] if state != "ESTABLISHED" else UNACK
        assert rec["timeout"] == expect_timeout, why
        if state == "ESTABLISHED":
            # Loose pick-up: both directions BE_LIBERAL (§1.4 step 4).
            assert rec["td_flags"][0] & 0x08 and rec["td_flags"][1] & 0x08, why
        assert len(t) == 1, why
        return

    status_before = before["status_names"]
    assert st == accepted_ct_state(d, status_before), why
    if kind == "KILL":
        assert after is None and rec_s(t) is None and len(t) == 0, why
        return

    assert after is not None, why
    dix = 0 if d == "orig" else 1
    seen_reply_after = "SEEN_REPLY" in status_before or d == "reply"
    if kind == "IG" or kind == "NOACCT":
        state = old if kind == "IG" else arg
        assert after["state_name"] == state, why
        assert after["packets"] == before["packets"] and after["bytes"] == before["bytes"], why
        assert after["expires"] == before["expires"], why           # timer not refreshed
        assert after["last_seen"] == before["last_seen"], why
        assert ("SEEN_REPLY" in after["status_names"]) == seen_reply_after, why
        assert ("ASSURED" in after["status_names"]) == ("ASSURED" in status_before), why
        return

    assert kind == "STATE"
    new = arg
    assert after["state_name"] == new, why
    packets, nbytes = list(before["packets"]), list(before["bytes"])
    packets[dix] += 1
    nbytes[dix] += IPLEN
    assert after["packets"] == packets and after["bytes"] == nbytes, why
    assert after["timeout"] == TIMEOUT[new], why
    # Status (§1.5 step 8, §4.1): ASSURED when a reply was already seen and SYN_RECV/ESTABLISHED
    # -> ESTABLISHED; SEEN_REPLY set by an accepted reply-direction packet.
    assured = "ASSURED" in status_before or (
        "SEEN_REPLY" in status_before and old in ("SYN_RECV", "ESTABLISHED") and new == "ESTABLISHED")
    want = (["SEEN_REPLY"] if seen_reply_after else []) + (["ASSURED"] if assured else []) + ["CONFIRMED"]
    assert after["status_names"] == want, why
    if new == "FIN_WAIT" and old != "FIN_WAIT":
        assert after["td_flags"][dix] & 0x04, why + " (CLOSE_INIT on the closing side, §1.5 step 5)"


def test_the_table_has_120_cells():
    assert len(CELLS) == 2 * 6 * 10
    assert len({p.id for p in CELLS}) == 120


# ---- further special cases of §1.5 ---------------------------------------------------------------

def test_simultaneous_open_syn_recv_to_established_on_reply_ack():
    # SYN; reply SYN (SS -> S2, not counted, SIMULTANEOUS_OPEN); original SYN/ACK (S2 -> SR, counted);
    # reply ACK in SR: table says SR, but SIMULTANEOUS_OPEN makes it ESTABLISHED (§1.5 step 3),
    # and ASSURED (step 8: a reply was seen, SYN_RECV -> ESTABLISHED).
    t = Tracker(seed=1)
    steps = [
        (c2s(SYN, CI), 0.0, T_NEW, "SYN_SENT", [1, 0], 120),
        (s2c(SYN, SI), 1.0, T_RPL, "SYN_SENT2", [1, 0], 119),
        (c2s(SYN | ACK, CI, SI + 1), 2.0, T_EST, "SYN_RECV", [2, 0], 60),
        (s2c(ACK, SI + 1, CI + 1), 3.0, T_RPL, "ESTABLISHED", [2, 1], 432000),
    ]
    for frame, ts, want, name, packets, timeout in steps:
        assert one(t, frame, ts) == want, ts
        rec = rec_c(t)
        assert (rec["state_name"], rec["packets"], rec["timeout"]) == (name, packets, timeout), ts
    assert rec["status_names"] == SR_A


def test_syn_in_close_after_server_rst_is_ignored_then_synack_resyncs():
    # The server reset the connection (reply RST in ES -> CLOSE): no CLOSE_INIT, and the last RST came
    # from the other direction, so a new client SYN in CLOSE is NOT a reopen: it falls into IGNORE
    # (§1.5 step 3), which records last_index SYN / last_end = ISN+1.  The server's SYN/ACK acking
    # exactly last_end is case (b): resync, old_state SYN_SENT -> SYN_RECV, window re-initialised,
    # counted.  The client's ACK then makes it ESTABLISHED.
    t = Tracker(seed=1)
    drive(t, "ESTABLISHED")
    assert one(t, s2c(RST | ACK, SI + 1, CI + 1), 0.5) == T_RPL
    rec = rec_c(t)
    assert rec["state_name"] == "CLOSE" and rec["packets"] == [2, 2] and rec["timeout"] == 10
    nc, ns = CI + NEW_ISN, SI + 7 * NEW_ISN
    assert one(t, c2s(SYN, nc), 1.0) == T_EST          # ignored (a reply was seen: est)
    after = rec_c(t)
    assert after["state_name"] == "CLOSE" and after["packets"] == [2, 2]
    assert after["expires"] == rec["expires"]
    assert one(t, s2c(SYN | ACK, ns, nc + 1), 1.1) == T_RPL
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"], rec["timeout"]) == ("SYN_RECV", [2, 3], 60)
    assert rec["td_end"] == [nc + 1, ns + 1]
    assert one(t, c2s(ACK, nc + 1, ns + 1), 1.2) == T_EST
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"], rec["timeout"]) == ("ESTABLISHED", [3, 3], 432000)
    assert t.stats()["invalid"] == 0 and len(t) == 1


def test_challenge_ack_in_last_ack_is_ignored_then_rst_and_reopen():
    # LAST_ACK; a new client SYN is ignored (orig syn in LA = IG) and, old state LAST_ACK, sets
    # EXP_CHALLENGE_ACK.  The server's ACK (reply ack in LA = TW) is then the RFC 5961 challenge ACK:
    # the TIME_WAIT case returns NF_ACCEPT with the state kept, not counted, timer untouched.
    # The client's RST at the challenge ACK's ack closes (LA is an early-drop state), counted; the SYN
    # after it reopens (CLOSE_INIT from the client's FIN).
    t = Tracker(seed=1)
    drive(t, "LAST_ACK")
    rec0 = rec_c(t)
    assert one(t, c2s(SYN, CI + NEW_ISN), 1.0) == T_EST
    assert one(t, s2c(ACK, SI + 2, CI + 2), 1.1) == T_RPL
    rec = rec_c(t)
    assert rec["state_name"] == "LAST_ACK" and rec["packets"] == [3, 3]
    assert rec["expires"] == rec0["expires"]
    assert one(t, c2s(RST, CI + 2), 1.2) == T_EST
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"], rec["timeout"]) == ("CLOSE", [4, 3], 10)
    assert one(t, c2s(SYN, CI + NEW_ISN), 1.3) == T_NEW
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"], rec["status_names"]) == ("SYN_SENT", [1, 0], ["CONFIRMED"])
    assert t.stats()["invalid"] == 0


def test_three_syns_count_once_and_keep_the_first_timer():
    t = Tracker(seed=1)
    syn = c2s(SYN, CI)
    assert [one(t, syn, x) for x in (0.0, 3.0, 9.0)] == [T_NEW] * 3
    rec = rec_c(t)
    assert rec["packets"] == [1, 0] and rec["expires"] == 120 * SEC
    # ... and it dies 120 s after the first SYN.
    one(t, udp4("203.0.113.1", "203.0.113.2", 1, 2), 120.0)
    assert rec_c(t) is None


# ---- tcp_error: flag validity (§1.3) -------------------------------------------------------------

# The nine valid combinations (and PSH/ECE/CWR ignored), each on an ESTABLISHED connection from the
# side where the table accepts it: (flags, direction, state after or "IG").
VALID_ON_ESTABLISHED = [
    (SYN, "orig", "IG"),                      # orig syn ES = IG
    (SYN | URG, "orig", "IG"),
    (SYN | ACK, "reply", "IG"),               # reply synack ES = IG (orig synack ES would be IV)
    (RST, "orig", "CLOSE"),
    (RST | ACK, "orig", "CLOSE"),
    (FIN | ACK, "orig", "FIN_WAIT"),
    (FIN | ACK | URG, "orig", "FIN_WAIT"),
    (ACK, "orig", "ESTABLISHED"),
    (ACK | URG, "orig", "ESTABLISHED"),
    (ACK | PSH | ECE | CWR, "orig", "ESTABLISHED"),
    (FIN | ACK | PSH, "reply", "FIN_WAIT"),
]


@pytest.mark.parametrize("flags, d, want", VALID_ON_ESTABLISHED,
                         ids=[f"0x{f:02x}-{d}" for f, d, _ in VALID_ON_ESTABLISHED])
def test_valid_flags_accepted_on_established(flags, d, want):
    t = Tracker(seed=1)
    drive(t, "ESTABLISHED")
    before = rec_c(t)
    if d == "orig":
        frame = c2s(flags, CI if flags & SYN else CI + 1, SI + 1 if flags & ACK else 0)
    else:
        frame = s2c(flags, SI if flags & SYN else SI + 1, CI + 1 if flags & ACK else 0)
    assert one(t, frame, 1.0) == (T_EST if d == "orig" else T_RPL)
    rec = rec_c(t)
    assert t.stats()["invalid"] == 0
    if want == "IG":
        assert rec["state_name"] == "ESTABLISHED" and rec["packets"] == before["packets"]
    else:
        assert rec["state_name"] == want
        assert rec["packets"][0 if d == "orig" else 1] == before["packets"][0 if d == "orig" else 1] + 1


# As a first packet: SYN-class creates SYN_SENT, ACK-class a loose pick-up; the other valid ones
# pass tcp_error but tcp_new refuses them ("invalid new"), a different reason than the flag check.
FIRST = [(SYN, "SYN_SENT"), (SYN | URG, "SYN_SENT"), (SYN | ECE | CWR, "SYN_SENT"),
         (ACK, "ESTABLISHED"), (ACK | URG, "ESTABLISHED"), (ACK | PSH, "ESTABLISHED"),
         (SYN | ACK, None), (RST, None), (RST | ACK, None), (FIN | ACK, None), (FIN | ACK | URG, None)]


@pytest.mark.parametrize("flags, want", FIRST, ids=[f"0x{f:02x}" for f, _ in FIRST])
def test_valid_flags_as_first_packet(flags, want):
    t = Tracker(seed=1)
    st = one(t, c2s(flags, CI, SI + 1 if flags & ACK else 0), 0.0)
    if want is None:
        assert st == T_INV and len(t) == 0
        assert t.stats()["reasons"] == {R_NO_NEW: 1}
    else:
        assert st == T_NEW and rec_c(t)["state_name"] == want
        assert t.stats()["invalid"] == 0


INVALID_FLAGS = [SYN | FIN, SYN | RST, 0, FIN, FIN | PSH | URG, SYN | ACK | URG, SYN | FIN | ACK,
                 SYN | RST | ACK, FIN | RST, RST | ACK | URG, URG, PSH, FIN | PSH]


@pytest.mark.parametrize("flags", INVALID_FLAGS, ids=[f"0x{f:02x}" for f in INVALID_FLAGS])
def test_invalid_flag_combinations(flags):
    t = Tracker(seed=1)
    # As a first packet: tcp_error says invalid before tcp_new; nothing created.
    assert one(t, c2s(flags, CI, SI + 1), 0.0) == T_INV
    assert len(t) == 0 and t.stats()["reasons"] == {R_FLAGS: 1}
    # On an established connection, both directions: invalid, the entry untouched.
    t = Tracker(seed=1)
    drive(t, "ESTABLISHED")
    before = strip(rec_c(t))
    assert one(t, c2s(flags, CI + 1, SI + 1), 1.0) == T_INV
    assert one(t, s2c(flags, SI + 1, CI + 1), 1.1) == T_INV
    assert strip(rec_c(t)) == before
    assert t.stats()["reasons"] == {R_FLAGS: 2}


# ---- tcp_in_window (§2.3) --------------------------------------------------------------------------

def test_seq_over_upper_bound_is_invalid():
    # ESTABLISHED: the client may send up to td_maxend = 1001 + 65535.  A segment starting 10^7
    # further fails check I, and overshoots the receiver's window: INVALID, "SEQ is over upper bound".
    t = Tracker(seed=1)
    drive(t, "ESTABLISHED")
    before = strip(rec_c(t))
    far = c2s(ACK | PSH, CI + 1 + 10_000_000, SI + 1, data=b"q" * 100)
    assert one(t, far, 1.0) == T_INV
    assert strip(rec_c(t)) == before
    assert t.stats()["reasons"] == {R_SEQ_OVER: 1}


def test_seq_just_over_upper_bound_is_ignored_bytes_more_than_expected():
    # Check I fails (seq = td_maxend + 1) but the overshoot (102 bytes) fits the receiver's window,
    # the ack is fine: "%u bytes more than expected" -> IGNORE: accepted, not counted, no refresh,
    # and the sender's td_end moves to the segment's end.
    t = Tracker(seed=1)
    drive(t, "ESTABLISHED")
    before = rec_c(t)
    maxend = before["td_maxend"][0]
    assert maxend == CI + 1 + 65535
    seg = c2s(ACK | PSH, maxend + 1, SI + 1, data=b"o" * 100)
    assert one(t, seg, 1.0) == T_EST
    rec = rec_c(t)
    assert rec["packets"] == before["packets"] and rec["expires"] == before["expires"]
    assert rec["td_end"][0] == maxend + 1 + 100
    assert t.stats()["invalid"] == 0


def test_ack_over_upper_bound_is_invalid():
    # An ACK for data the server never sent fails check III: INVALID, "ACK is over upper bound".
    t = Tracker(seed=1)
    drive(t, "ESTABLISHED")
    before = strip(rec_c(t))
    assert one(t, c2s(ACK, CI + 1, SI + 1 + 100_000), 1.0) == T_INV
    assert one(t, s2c(ACK, SI + 1, CI + 1 + 100_000), 1.1) == T_INV
    assert strip(rec_c(t)) == before
    assert t.stats()["reasons"] == {R_ACK_OVER: 2}


def test_synack_acking_unsent_data_is_invalid_then_the_right_one_works():
    # In SYN_SENT the client has sent up to ISN+1; a SYN/ACK acking far beyond fails check III.
    # Nothing is counted, SEEN_REPLY is not set (the handler failed).  The correct SYN/ACK then works.
    t = Tracker(seed=1)
    drive(t, "SYN_SENT")
    assert one(t, s2c(SYN | ACK, SI, CI + 1 + 100_000), 1.0) == T_INV
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"], rec["status_names"]) == ("SYN_SENT", [1, 0], ["CONFIRMED"])
    assert t.stats()["reasons"] == {R_ACK_OVER: 1}
    assert one(t, s2c(SYN | ACK, SI, CI + 1), 1.1) == T_RPL
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"], rec["timeout"]) == ("SYN_RECV", [1, 1], 60)


def test_synack_with_ack_far_below_is_ignored():
    # ack = ISN+1 - 100000: checks I-III pass, check IV (ack under lower bound, more than
    # MAXACKWINDOW = 66000 behind) fails -> IGNORE: accepted (est|rpl), state kept, not counted, and
    # the core sets SEEN_REPLY because the handler returned NF_ACCEPT (§4.1).
    t = Tracker(seed=1)
    drive(t, "SYN_SENT")
    before = rec_c(t)
    assert one(t, s2c(SYN | ACK, SI, (CI + 1 - 100_000) % 2**32), 1.0) == T_RPL
    rec = rec_c(t)
    assert rec["state_name"] == "SYN_SENT" and rec["packets"] == [1, 0]
    assert rec["expires"] == before["expires"]
    assert rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert t.stats()["invalid"] == 0
    # The right SYN/ACK (same ISN: no re-init) is then accepted and counted.
    assert one(t, s2c(SYN | ACK, SI, CI + 1), 1.1) == T_RPL
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"]) == ("SYN_RECV", [1, 1])


def test_client_data_before_the_handshake_is_invalid():
    # orig ack in SYN_SENT = sIV: data from the client before any SYN/ACK.
    t = Tracker(seed=1)
    drive(t, "SYN_SENT")
    before = strip(rec_c(t))
    assert one(t, c2s(ACK | PSH, CI + 1, 0, data=b"d" * 100), 1.0) == T_INV
    assert strip(rec_c(t)) == before
    assert t.stats()["reasons"] == {R_STATE: 1}


def test_server_data_before_its_synack_is_ignored():
    # reply ack in SYN_SENT = sIG: accepted, not counted, state kept; SEEN_REPLY set by the core.
    t = Tracker(seed=1)
    drive(t, "SYN_SENT")
    before = rec_c(t)
    assert one(t, s2c(ACK | PSH, SI + 1, CI + 1, data=b"e" * 100), 1.0) == T_RPL
    rec = rec_c(t)
    assert rec["state_name"] == "SYN_SENT" and rec["packets"] == [1, 0]
    assert rec["expires"] == before["expires"]
    assert rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    # The SYN/ACK still opens it, and the client's packets are est from now on.
    assert one(t, s2c(SYN | ACK, SI, CI + 1), 1.1) == T_RPL
    assert one(t, c2s(ACK, CI + 1, SI + 1), 1.2) == T_EST
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"]) == ("ESTABLISHED", [2, 1])
    assert t.stats()["invalid"] == 0


def test_server_data_in_syn_recv_then_client_ack():
    # reply ack in SYN_RECV = SR (no SIMULTANEOUS_OPEN): server data before the client's ACK is
    # accepted and counted (seq 5001 <= td_maxend 5001: only the start is checked).  The client's
    # ACK of it then makes ESTABLISHED + ASSURED; all data acked -> the full 432000 s.
    t = Tracker(seed=1)
    drive(t, "SYN_RECV")
    assert one(t, s2c(ACK | PSH, SI + 1, CI + 1, data=b"f" * 100), 1.0) == T_RPL
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"], rec["timeout"]) == ("SYN_RECV", [1, 2], 60)
    assert one(t, c2s(ACK, CI + 1, SI + 101), 1.1) == T_EST
    rec = rec_c(t)
    assert (rec["state_name"], rec["packets"], rec["timeout"]) == ("ESTABLISHED", [2, 2], 432000)
    assert rec["status_names"] == SR_A


def test_unacknowledged_data_timeout_300s():
    # §1.7 rule 3: data not yet acked (DATA_UNACKNOWLEDGED) caps ESTABLISHED at UNACK = 300 s.
    t = Tracker(seed=1)
    drive(t, "ESTABLISHED")
    assert one(t, c2s(ACK | PSH, CI + 1, SI + 1, data=b"g" * 100), 1.0) == T_EST
    rec = rec_c(t)
    assert (rec["state_name"], rec["timeout"]) == ("ESTABLISHED", UNACK)
    assert rec["td_flags"][0] & 0x10                    # DATA_UNACKNOWLEDGED on the client side
    # Once the server acks everything the flag clears: back to 5 days.
    assert one(t, s2c(ACK, SI + 1, CI + 101), 2.0) == T_RPL
    rec = rec_c(t)
    assert rec["timeout"] == 432000 and not rec["td_flags"][0] & 0x10


def test_unacknowledged_data_entry_dies_after_300s():
    t = Tracker(seed=1)
    drive(t, "ESTABLISHED")
    one(t, c2s(ACK | PSH, CI + 1, SI + 1, data=b"h" * 100), 1.0)
    one(t, udp4("203.0.113.1", "203.0.113.2", 1, 2), 300.999)
    assert rec_c(t) is not None
    one(t, udp4("203.0.113.1", "203.0.113.2", 1, 2), 301.0)
    assert rec_c(t) is None


def test_loose_pickup_unreplied_300s_then_assured():
    # A lone ACK (tcp_loose = 1): ESTABLISHED [UNREPLIED], capped at UNACK 300 s (§1.5 step 7),
    # BE_LIBERAL both ways (§1.4).  The server's answer is counted but SEEN_REPLY is set only after
    # its handler ran, so it is still capped and not ASSURED; the client's next ACK assures it.
    t = Tracker(seed=1)
    assert one(t, c2s(ACK, 1000, 2000), 0.0) == T_NEW
    rec = rec_c(t)
    assert (rec["state_name"], rec["timeout"], rec["status_names"]) == ("ESTABLISHED", 300, ["CONFIRMED"])
    assert rec["packets"] == [1, 0]
    assert rec["td_flags"][0] & 0x08 and rec["td_flags"][1] & 0x08
    assert one(t, s2c(ACK, 2000, 1000), 1.0) == T_RPL
    rec = rec_c(t)
    assert (rec["state_name"], rec["timeout"], rec["packets"]) == ("ESTABLISHED", 300, [1, 1])
    assert rec["status_names"] == ["SEEN_REPLY", "CONFIRMED"]
    assert one(t, c2s(ACK, 1000, 2000), 2.0) == T_EST
    rec = rec_c(t)
    assert (rec["timeout"], rec["packets"], rec["status_names"]) == (432000, [2, 1], SR_A)
    assert t.stats()["invalid"] == 0


def test_loose_pickup_is_liberal_forever():
    # BE_LIBERAL (set by the pick-up) turns every window failure into ACCEPT (§2.3 step 10).
    t = Tracker(seed=1)
    one(t, c2s(ACK, 1000, 2000), 0.0)
    assert one(t, c2s(ACK | PSH, 1000 + 10_000_000, 2000, data=b"i" * 10), 1.0) == T_NEW
    assert rec_c(t)["packets"] == [2, 0]
    assert t.stats()["invalid"] == 0


def test_no_loose_pickup():
    t = Tracker(seed=1, tcp_loose=False)
    assert one(t, c2s(ACK, 1000, 2000), 0.0) == T_INV
    assert len(t) == 0 and t.stats()["reasons"] == {R_NO_NEW: 1}
    assert one(t, c2s(SYN, CI), 1.0) == T_NEW and rec_c(t)["state_name"] == "SYN_SENT"


def test_be_liberal_accepts_out_of_window_but_not_table_or_flag_errors():
    t = Tracker(seed=1, tcp_be_liberal=True)
    drive(t, "ESTABLISHED")
    # SEQ over the upper bound and ACK over the upper bound: accepted and counted.
    assert one(t, c2s(ACK | PSH, CI + 1 + 10_000_000, SI + 1, data=b"j" * 10), 1.0) == T_EST
    assert one(t, s2c(ACK, SI + 1, CI + 1 + 100_000_000), 1.1) == T_RPL
    rec = rec_c(t)
    assert rec["state_name"] == "ESTABLISHED" and rec["packets"] == [3, 2]
    assert t.stats()["invalid"] == 0
    # be_liberal only concerns the window: sIV cells and bad flags stay invalid.
    assert one(t, c2s(SYN | ACK, CI, SI + 1), 1.2) == T_INV        # orig synack ES = IV
    assert one(t, c2s(SYN | FIN, CI + 1), 1.3) == T_INV
    assert t.stats()["reasons"] == {R_STATE: 1, R_FLAGS: 1}
    assert rec_c(t)["packets"] == [3, 2]
