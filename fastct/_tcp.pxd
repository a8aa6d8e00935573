# cython: language_level=3
"""TCP tracking as the Linux kernel does it (nf_conntrack_proto_tcp.c, 6.x): the transition table,
window tracking (tcp_in_window), the ignore/resync bookkeeping and the timeout choice.

Facts were read from the kernel source and re-expressed here; the kernel remains the reference
(see docs in README "Semantics").  Sequence numbers compare modulo 2^32.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t
from fastct._types cimport *
from fastct._verdict cimport *

# Flag classes: the row of the transition table (kernel get_conntrack_index).
cdef enum:
    TI_SYN = 0
    TI_SYNACK = 1
    TI_FIN = 2
    TI_ACK = 3
    TI_RST = 4
    TI_NONE = 5

# Per-direction flags (kernel IP_CT_TCP_FLAG_*) kept in ct_entry.td_flags / ct_entry.last_flags.
cdef enum:
    TF_WINDOW_SCALE = 0x01
    TF_SACK_PERM = 0x02
    TF_CLOSE_INIT = 0x04
    TF_BE_LIBERAL = 0x08
    TF_DATA_UNACK = 0x10
    TF_MAXACK_SET = 0x20
    TF_EXP_CHALLENGE_ACK = 0x40
    TF_SIMULTANEOUS_OPEN = 0x80

# Table cells beyond the states.
cdef enum:
    sIV = 10     # invalid
    sIG = 11     # ignore

cdef enum:
    MAXACKWINCONST = 66000

# tcp_conntracks[dir][flag class][old state] -> new state.  Columns: NONE SYN_SENT SYN_RECV
# ESTABLISHED FIN_WAIT CLOSE_WAIT LAST_ACK TIME_WAIT CLOSE SYN_SENT2 (kernel 6.x values).
cdef extern from *:
    """
    static const unsigned char fastct_tcp_next[2][6][10] = {
      { /* ORIGINAL */
        /* syn    */ { 1, 1, 11, 11, 11, 11, 11, 1, 1, 9 },
        /* synack */ { 10, 10, 2, 10, 10, 10, 10, 10, 10, 2 },
        /* fin    */ { 10, 10, 4, 4, 6, 6, 6, 7, 8, 10 },
        /* ack    */ { 3, 10, 3, 3, 5, 5, 7, 7, 8, 10 },
        /* rst    */ { 10, 8, 8, 8, 8, 8, 8, 8, 8, 8 },
        /* none   */ { 10, 10, 10, 10, 10, 10, 10, 10, 10, 10 },
      },
      { /* REPLY */
        /* syn    */ { 10, 9, 10, 10, 10, 10, 10, 1, 10, 9 },
        /* synack */ { 10, 2, 11, 11, 11, 11, 11, 11, 11, 2 },
        /* fin    */ { 10, 10, 4, 4, 6, 6, 6, 7, 8, 10 },
        /* ack    */ { 10, 11, 2, 3, 5, 5, 7, 7, 8, 11 },
        /* rst    */ { 10, 8, 8, 8, 8, 8, 8, 8, 8, 8 },
        /* none   */ { 10, 10, 10, 10, 10, 10, 10, 10, 10, 10 },
      },
    };
    /* Valid flag combinations, indexed by flags & 0x37, i.e. without PSH, ECE and CWR (kernel tcp_valid_flags). */
    static const unsigned char fastct_tcp_valid_flags[64] = {
      [0x02] = 1, [0x22] = 1, [0x12] = 1, [0x04] = 1, [0x14] = 1,
      [0x11] = 1, [0x31] = 1, [0x10] = 1, [0x30] = 1,
    };
    """
    const unsigned char fastct_tcp_next[2][6][10]
    const unsigned char fastct_tcp_valid_flags[64]

cdef inline bint seq_before(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(a - b) < 0

cdef inline bint seq_after(uint32_t a, uint32_t b) noexcept nogil:
    return <int32_t>(b - a) < 0

cdef inline uint8_t tcp_index(uint8_t flags) noexcept nogil:
    if flags & 0x04:
        return TI_RST
    if flags & 0x02:
        return TI_SYNACK if flags & 0x10 else TI_SYN
    if flags & 0x01:
        return TI_FIN
    if flags & 0x10:
        return TI_ACK
    return TI_NONE

cdef inline uint32_t tcp_end(const pkt_meta *m) noexcept nogil:
    """seq + payload + SYN + FIN (kernel segment_seq_plus_len)."""
    return m.seq + m.datalen + (1 if m.tcpflags & 0x02 else 0) + (1 if m.tcpflags & 0x01 else 0)

# ct_entry.last_diw packs last_index (bits 0-2), last_dir (bit 3) and last_wscale (bits 4-7).
cdef inline uint8_t last_index(const ct_entry *e) noexcept nogil:
    return e.last_diw & 7

cdef inline uint8_t last_dir(const ct_entry *e) noexcept nogil:
    return (e.last_diw >> 3) & 1

cdef inline uint8_t last_wscale(const ct_entry *e) noexcept nogil:
    return e.last_diw >> 4

cdef inline void set_last(ct_entry *e, uint8_t index, uint8_t d) noexcept nogil:
    e.last_diw = (e.last_diw & 0xF0) | (index & 7) | ((d & 1) << 3)

cdef inline void set_last_wscale(ct_entry *e, uint8_t ws) noexcept nogil:
    e.last_diw = (e.last_diw & 0x0F) | ((ws & 0x0F) << 4)

cdef inline void tcp_options_into(ct_entry *e, uint8_t d, const pkt_meta *m) noexcept nogil:
    """Kernel tcp_options: scale and flags from a SYN's options (other flags cleared but BE_LIBERAL)."""
    e.td_scale[d] = 0
    e.td_flags[d] &= TF_BE_LIBERAL
    if m.sackperm:
        e.td_flags[d] |= TF_SACK_PERM
    if m.wscale != 0xFF:
        e.td_scale[d] = m.wscale
        e.td_flags[d] |= TF_WINDOW_SCALE

cdef inline void tcp_init_sender(ct_entry *e, uint8_t d, const pkt_meta *m, uint32_t end) noexcept nogil:
    e.td_end[d] = end
    e.td_maxend[d] = end
    e.td_maxwin[d] = m.win if m.win else 1
    tcp_options_into(e, d, m)
    if d == DIR_REPLY and not ((e.td_flags[0] & TF_WINDOW_SCALE) and (e.td_flags[1] & TF_WINDOW_SCALE)):
        e.td_scale[0] = 0
        e.td_scale[1] = 0

cdef inline uint8_t tcp_new(ct_table *t, ct_entry *e, ct_cold *c, const pkt_meta *m) noexcept nogil:
    """May this packet start a TCP connection (kernel tcp_error + tcp_new)?"""
    cdef uint8_t index, ns
    cdef uint32_t end
    if not fastct_tcp_valid_flags[m.tcpflags & 0x37]:
        return R_TCP_BAD_FLAGS
    index = tcp_index(m.tcpflags)
    ns = fastct_tcp_next[0][index][TCP_NONE]
    if ns >= sIV:
        return R_TCP_NO_NEW
    end = tcp_end(m)
    e.td_maxack[0] = e.td_maxack[1] = 0
    e.last_seq = e.last_ack = e.last_end = 0
    e.last_win = 0
    e.last_flags = 0
    e.last_diw = 0
    e.td_end[0] = end
    e.td_maxwin[0] = m.win if m.win else 1
    if ns == TCP_SYN_SENT:
        e.td_maxend[0] = end
        tcp_options_into(e, 0, m)
    else:
        if not t.tcp_loose:
            return R_TCP_NO_NEW
        # Picked up mid-stream: its history is lost, so window checks are liberal from now on.
        e.td_maxend[0] = end + e.td_maxwin[0]
        e.td_flags[0] = TF_SACK_PERM | TF_BE_LIBERAL
        e.td_flags[1] = TF_SACK_PERM | TF_BE_LIBERAL
    set_last(e, TI_NONE, 0)
    return R_VALID

cdef inline int tcp_window_fail(ct_table *t, ct_entry *e, uint8_t d, pkt_meta *m, int ret,
                                uint8_t reason) noexcept nogil:
    # Kernel nf_tcp_log_invalid: a liberal connection (or sysctl) accepts what the checks refuse,
    # without updating the window state.
    if (e.td_flags[d] & TF_BE_LIBERAL) or t.tcp_be_liberal:
        return 0
    m.reason = reason
    return ret

# tcp_in_window results.
cdef enum:
    TW_ACCEPT = 0
    TW_UPDATED = 3   # accepted and the window state updated (internal: same as accept for callers)
    TW_IGNORE = 1
    TW_INVALID = 2

cdef inline int tcp_in_window(ct_table *t, ct_entry *e, ct_cold *c, pkt_meta *m, uint8_t index) noexcept nogil:
    cdef uint8_t d = m.dir
    cdef uint8_t r = 1 - d
    cdef uint32_t seq = m.seq, ack = m.ack, sack = m.sack, end = tcp_end(m)
    cdef uint32_t win = m.win, swin, overshot, maxack_win
    cdef uint16_t win_raw = <uint16_t>m.win
    cdef bint syn = (m.tcpflags & 0x02) != 0
    cdef bint has_ack = (m.tcpflags & 0x10) != 0
    cdef bint in_recv_win, ack_ok
    if not (e.td_flags[r] & TF_SACK_PERM):
        sack = ack
    if e.td_maxwin[d] == 0:
        if syn:
            tcp_init_sender(e, d, m, end)
            if not has_ack:
                return TW_ACCEPT     # simultaneous open
        else:
            e.td_end[d] = end
            swin = win << e.td_scale[d]
            e.td_maxwin[d] = swin if swin else 1
            e.td_maxend[d] = end + e.td_maxwin[d]
            if e.td_maxwin[r] == 0:
                e.td_end[r] = sack
                e.td_maxend[r] = sack
            elif sack == e.td_end[r] + 1:
                e.td_end[r] += 1     # likely a reply to a keepalive
    elif syn and seq_after(end, e.td_end[d]) and (e.state == TCP_SYN_SENT or e.state == TCP_SYN_RECV):
        # A SYN or SYN/ACK re-sent with a new ISN or options: start this direction again.
        tcp_init_sender(e, d, m, end)
        if d == DIR_REPLY and not has_ack:
            return TW_ACCEPT
    if not has_ack:
        ack = sack = e.td_end[r]
    elif (m.tcpflags & 0x14) == 0x14 and ack == 0:
        ack = sack = e.td_end[r]    # broken stacks: RST+ACK with a zero ack
    if (m.tcpflags & 0x04) and seq == 0 and e.state == TCP_SYN_SENT:
        seq = end = e.td_end[d]     # RST answering a SYN
    maxack_win = e.td_maxwin[d] if e.td_maxwin[d] > MAXACKWINCONST else MAXACKWINCONST
    if not seq_before(seq, e.td_maxend[d] + 1):
        overshot = end - e.td_maxend[d] + 1
        ack_ok = seq_after(sack, e.td_end[r] - maxack_win - 1)
        in_recv_win = e.td_maxwin[r] != 0 and seq_after(end, e.td_end[d] - e.td_maxwin[r] - 1)
        if in_recv_win and ack_ok and overshot <= e.td_maxwin[r] and seq_before(sack, e.td_end[r] + 1):
            # More bytes than the receive window allowed: ignore (not invalid), remember the end.
            e.td_end[d] = end
            e.td_flags[d] |= TF_DATA_UNACK
            return tcp_window_fail(t, e, d, m, TW_IGNORE, R_TCP_SEQ_OVER)
        return tcp_window_fail(t, e, d, m, TW_INVALID, R_TCP_SEQ_OVER)
    if not seq_before(sack, e.td_end[r] + 1):
        return tcp_window_fail(t, e, d, m, TW_INVALID, R_TCP_ACK_OVER)
    in_recv_win = e.td_maxwin[r] == 0 or seq_after(end, e.td_end[d] - e.td_maxwin[r] - 1)
    if not in_recv_win:
        return tcp_window_fail(t, e, d, m, TW_IGNORE, R_TCP_SEQ_UNDER)
    if not seq_after(sack, e.td_end[r] - maxack_win - 1):
        return tcp_window_fail(t, e, d, m, TW_IGNORE, R_TCP_ACK_UNDER)
    if not syn:
        win <<= e.td_scale[d]
    # Sender.
    swin = win + (sack - ack)
    if e.td_maxwin[d] < swin:
        e.td_maxwin[d] = swin
    if seq_after(end, e.td_end[d]):
        e.td_end[d] = end
        e.td_flags[d] |= TF_DATA_UNACK
    if has_ack:
        if not (e.td_flags[d] & TF_MAXACK_SET):
            e.td_maxack[d] = ack
            e.td_flags[d] |= TF_MAXACK_SET
        elif seq_after(ack, e.td_maxack[d]):
            e.td_maxack[d] = ack
    # Receiver.
    if e.td_maxwin[r] != 0 and seq_after(end, e.td_maxend[d]):
        e.td_maxwin[r] += end - e.td_maxend[d]
    if seq_after(sack + win, e.td_maxend[r] - 1):
        e.td_maxend[r] = sack + win
        if win == 0:
            e.td_maxend[r] += 1
    if ack == e.td_end[r]:
        e.td_flags[r] &= ~TF_DATA_UNACK
    # Retransmissions of the same ACK-class segment.
    if index == TI_ACK:
        if last_dir(e) == d and e.last_seq == seq and e.last_ack == ack and e.last_end == end and \
                e.last_win == win_raw:
            e.retrans += 1       # (a u8 in the kernel too: the 256th repeat wraps it to 0)
        else:
            set_last(e, last_index(e), d)
            e.last_seq = seq
            e.last_ack = ack
            e.last_end = end
            e.last_win = win_raw
            e.retrans = 0
    return TW_ACCEPT

# What the sequence number of an RST on a connection with a known max ACK says (kernel CLOSE case).
cdef enum:
    RST_OK = 0           # close as the table says
    RST_INVALID = 1      # below what the peer already acknowledged
    RST_KEEP_STATE = 2   # not exactly at the peer's max ACK on an established connection

cdef inline int tcp_rst_seq_check(const ct_table *t, const ct_entry *e, const ct_cold *c,
                                  const pkt_meta *m, uint8_t old_state) noexcept nogil:
    cdef uint8_t r = 1 - m.dir
    cdef bint established = old_state == TCP_ESTABLISHED and (e.status & IPS_ASSURED) != 0
    if m.seq == 0 and not established:
        return RST_OK
    if seq_before(m.seq, e.td_maxack[r]) and not t.tcp_ignore_invalid_rst:
        return RST_INVALID
    if not established or m.seq == e.td_maxack[r]:
        return RST_OK
    if last_index(e) == TI_ACK and last_dir(e) == m.dir and m.seq == e.last_end:
        return RST_OK        # part of a train of RSTs following the last ACK
    return RST_KEEP_STATE

cdef inline int tcp_established_ack(ct_table *t, ct_entry *e, pkt_meta *m) noexcept nogil:
    """The packet almost every TCP packet is: ACK-class (no SYN, FIN or RST), on an ESTABLISHED
    connection whose sender side is known, inside both windows.  What tcp_packet and tcp_in_window
    do with it, in one straight line (no flag classes, no table, no state cases).  Returns V_ACCEPT
    when it handled the packet; -1, having changed nothing, for anything else (the general path
    then decides, from scratch).  tests/test_fastpath.py checks the two agree."""
    cdef uint8_t d = m.dir
    cdef uint8_t r = d ^ 1
    cdef uint32_t seq = m.seq, ack = m.ack, sack, end, win, swin, maxack_win
    cdef uint32_t end_r = e.td_end[r], maxwin_r = e.td_maxwin[r], maxend_d = e.td_maxend[d]
    cdef uint8_t fd
    cdef int same
    cdef int64_t timeout, t_est, t_ret, t_una
    cdef const int64_t *to = m.to
    if e.td_maxwin[d] == 0:
        return -1
    end = seq + m.datalen
    sack = m.sack if e.td_flags[r] & TF_SACK_PERM else ack
    maxack_win = e.td_maxwin[d] if e.td_maxwin[d] > MAXACKWINCONST else MAXACKWINCONST
    # tcp_in_window's four bounds, in its order; any failure is the general path's to judge.
    if not seq_before(seq, maxend_d + 1) or not seq_before(sack, end_r + 1) or \
            (maxwin_r != 0 and not seq_after(end, e.td_end[d] - maxwin_r - 1)) or \
            not seq_after(sack, end_r - maxack_win - 1):
        return -1
    # Sender.
    win = m.win << e.td_scale[d]
    swin = win + (sack - ack)
    if e.td_maxwin[d] < swin:
        e.td_maxwin[d] = swin
    fd = e.td_flags[d]
    if seq_after(end, e.td_end[d]):
        e.td_end[d] = end
        fd |= TF_DATA_UNACK
    if not (fd & TF_MAXACK_SET):
        e.td_maxack[d] = ack
        fd |= TF_MAXACK_SET
    elif seq_after(ack, e.td_maxack[d]):
        e.td_maxack[d] = ack
    e.td_flags[d] = fd
    # Receiver.
    if maxwin_r != 0 and seq_after(end, maxend_d):
        e.td_maxwin[r] = maxwin_r + (end - maxend_d)
    if seq_after(sack + win, e.td_maxend[r] - 1):
        e.td_maxend[r] = sack + win + (1 if win == 0 else 0)
    e.td_flags[r] &= ~(TF_DATA_UNACK * (ack == end_r))
    # Retransmission of the same ACK-class segment, and the last packet remembered.  Without
    # branches (whether the last packet went the same way is a coin toss to the predictor): a
    # retransmission stores what is already there.
    same = (last_dir(e) == d) & (e.last_seq == seq) & (e.last_ack == ack) & (e.last_end == end) & \
        (e.last_win == <uint16_t>m.win)
    e.retrans = <uint8_t>((e.retrans + 1) * same)   # (wraps as the kernel's u8 does)
    e.last_seq = seq
    e.last_ack = ack
    e.last_end = end
    e.last_win = <uint16_t>m.win
    set_last(e, TI_ACK, d)
    # tcp_packet's timeout choice for ESTABLISHED (last_win is this packet's window now).
    t_est = to[TO_TCP_ESTABLISHED]
    t_ret = to[TO_TCP_MAX_RETRANS]
    t_una = to[TO_TCP_UNACK]
    # The kernel's order of precedence (retransmissions, unacknowledged data, zero window), applied
    # last to first as selects, not branches: whether a packet repeats the last one is a coin toss
    # to the predictor.
    timeout = t_ret if (<uint16_t>m.win == 0) & (t_est > t_ret) else t_est
    timeout = t_una if (((e.td_flags[0] | e.td_flags[1]) & TF_DATA_UNACK) != 0) & (t_est > t_una) else timeout
    timeout = t_ret if (e.retrans >= t.tcp_max_retrans) & (t_est > t_ret) else timeout
    if not (e.status & IPS_SEEN_REPLY):
        if timeout > to[TO_TCP_UNACK]:
            timeout = to[TO_TCP_UNACK]
    elif not (e.status & IPS_ASSURED):
        e.status |= IPS_ASSURED
    refresh(t, e, m, timeout)
    return V_ACCEPT

cdef inline int tcp_first_syn(ct_table *t, ct_entry *e, pkt_meta *m) noexcept nogil:
    """A connection's first packet, a SYN (no ACK, FIN or RST), right after tcp_new set up its
    sender side: what tcp_packet does with it (NONE -> SYN_SENT through tcp_in_window), in a
    straight line.  V_ACCEPT, or -1 having changed nothing when the entry is not as tcp_new leaves
    it.  tests/test_fastpath.py checks it against the general path."""
    cdef uint32_t seq = m.seq, win = m.win
    cdef uint32_t end = seq + m.datalen + 1          # (the SYN counts one)
    cdef uint32_t ack = e.td_end[1]                  # no ACK: the receiver's end stands in
    cdef uint32_t maxack_win = e.td_maxwin[0] if e.td_maxwin[0] > MAXACKWINCONST else MAXACKWINCONST
    cdef int64_t timeout, t_syn
    cdef const int64_t *to = m.to
    if e.td_maxwin[0] == 0 or e.td_maxwin[1] != 0 or e.td_end[0] != end or \
            not seq_before(seq, e.td_maxend[0] + 1) or not seq_after(ack, ack - maxack_win - 1):
        return -1
    # tcp_in_window: the sender's window (a SYN's is not scaled), the receiver's max end.
    if e.td_maxwin[0] < win:
        e.td_maxwin[0] = win
    if seq_after(ack + win, e.td_maxend[1] - 1):
        e.td_maxend[1] = ack + win + (1 if win == 0 else 0)
    e.td_flags[1] &= ~TF_DATA_UNACK
    set_last(e, TI_SYN, 0)
    e.state = TCP_SYN_SENT
    # tcp_packet's timeout choice, for SYN_SENT.
    t_syn = to[TO_TCP_SYN_SENT]
    if e.retrans >= t.tcp_max_retrans and t_syn > to[TO_TCP_MAX_RETRANS]:
        timeout = to[TO_TCP_MAX_RETRANS]
    elif ((e.td_flags[0] | e.td_flags[1]) & TF_DATA_UNACK) and t_syn > to[TO_TCP_UNACK]:
        timeout = to[TO_TCP_UNACK]
    elif e.last_win == 0 and t_syn > to[TO_TCP_MAX_RETRANS]:
        timeout = to[TO_TCP_MAX_RETRANS]
    else:
        timeout = t_syn
    refresh(t, e, m, timeout)
    return V_ACCEPT

cdef inline int tcp_packet(ct_table *t, ct_entry *e, ct_cold *c, pkt_meta *m) noexcept nogil:
    """One packet of a TCP connection (the first included); kernel nf_conntrack_tcp_packet."""
    if (m.tcpflags & 0x17) == 0x10 and e.state == TCP_ESTABLISHED and t.tcp_fast and \
            tcp_established_ack(t, e, m) == V_ACCEPT:
        return V_ACCEPT
    if (m.tcpflags & 0x17) == 0x02 and e.state == TCP_NONE and m.dir == DIR_ORIGINAL and t.tcp_fast and \
            tcp_first_syn(t, e, m) == V_ACCEPT:
        return V_ACCEPT
    cdef uint8_t d = m.dir
    cdef uint8_t index, old_state, new_state, ld
    cdef int res, rst
    cdef bint skip_window = False
    cdef int64_t timeout
    cdef const int64_t *to = m.to
    if not fastct_tcp_valid_flags[m.tcpflags & 0x37]:
        m.reason = R_TCP_BAD_FLAGS
        return V_INVALID
    old_state = e.state
    index = tcp_index(m.tcpflags)
    new_state = fastct_tcp_next[d][index][old_state]
    if new_state == TCP_SYN_SENT and old_state >= TCP_TIME_WAIT:
        # A SYN on a closed connection: reopen it if we saw it closed by a FIN, or reset by this side.
        if ((e.td_flags[d] | e.td_flags[1 - d]) & TF_CLOSE_INIT) or \
                (last_dir(e) == d and last_index(e) == TI_RST):
            return V_REOPEN
        new_state = sIG
    if new_state == sIG:
        if index == TI_SYNACK and last_index(e) == TI_SYN and last_dir(e) != d and m.ack == e.last_end:
            # This SYN/ACK answers a SYN we ignored: both ends are in sync, get in sync with them.
            ld = last_dir(e)
            old_state = TCP_SYN_SENT
            new_state = TCP_SYN_RECV
            e.td_end[ld] = e.last_end
            e.td_maxend[ld] = e.last_end
            e.td_maxwin[ld] = e.last_win if e.last_win else 1
            e.td_scale[ld] = last_wscale(e)
            e.last_flags &= ~TF_EXP_CHALLENGE_ACK
            e.td_flags[ld] = e.last_flags
            e.td_end[d] = e.td_maxend[d] = e.td_maxwin[d] = 0
            e.td_maxack[d] = 0
            e.td_scale[d] = 0
            e.td_flags[d] &= TF_BE_LIBERAL
        else:
            set_last(e, index, d)
            e.last_seq = m.seq
            e.last_end = tcp_end(m)
            e.last_win = <uint16_t>m.win
            if index == TI_SYN and d == DIR_ORIGINAL:
                e.last_flags = 0
                set_last_wscale(e, 0)
                if m.wscale != 0xFF:
                    e.last_flags |= TF_WINDOW_SCALE
                    set_last_wscale(e, m.wscale)
                if m.sackperm:
                    e.last_flags |= TF_SACK_PERM
                if old_state == TCP_LAST_ACK:
                    e.last_flags |= TF_EXP_CHALLENGE_ACK
            if old_state == TCP_SYN_SENT and index == TI_ACK and d == DIR_REPLY:
                e.last_ack = m.ack
            return V_ACCEPT      # ignored: accepted, but neither counted nor refreshed
    elif new_state == sIV:
        m.reason = R_TCP_INVALID_STATE
        return V_INVALID
    elif new_state == TCP_TIME_WAIT:
        if old_state == TCP_LAST_ACK and index == TI_ACK and last_dir(e) != d and \
                last_index(e) == TI_SYN and (e.last_flags & TF_EXP_CHALLENGE_ACK):
            e.last_flags &= ~TF_EXP_CHALLENGE_ACK
            return V_ACCEPT      # an RFC 5961 challenge ACK, not the ACK of the last FIN
    elif new_state == TCP_SYN_SENT2:
        e.last_flags |= TF_SIMULTANEOUS_OPEN
    elif new_state == TCP_SYN_RECV:
        if d == DIR_REPLY and index == TI_ACK and (e.last_flags & TF_SIMULTANEOUS_OPEN):
            new_state = TCP_ESTABLISHED
    elif new_state == TCP_CLOSE and index == TI_RST:
        if old_state >= TCP_FIN_WAIT and old_state <= TCP_CLOSE:
            skip_window = True   # closing anyway (kernel tcp_can_early_drop)
        else:
            if (e.td_flags[1 - d] & TF_MAXACK_SET) and last_index(e) != TI_SYN:
                rst = tcp_rst_seq_check(t, e, c, m, old_state)
                if rst == RST_INVALID:
                    m.reason = R_TCP_RST_INVALID
                    return V_INVALID
                if rst == RST_KEEP_STATE:
                    new_state = old_state    # keep the state: a challenge ACK may follow
            if (((e.status & IPS_SEEN_REPLY) and last_index(e) == TI_SYN) or
                    (not (e.status & IPS_ASSURED) and last_index(e) == TI_ACK)) and m.ack == e.last_end:
                skip_window = True       # RST answering a SYN or ACK we let through unchecked
            elif old_state == TCP_SYN_SENT and last_index(e) == TI_ACK and last_dir(e) == DIR_REPLY and \
                    m.seq == e.last_ack:
                skip_window = True       # RST answering a challenge ACK
    if not skip_window:
        res = tcp_in_window(t, e, c, m, index)
        if res == TW_IGNORE:
            return V_ACCEPT
        if res == TW_INVALID:
            tcp_handle_invalid(t, e, c, m, index)
            return V_INVALID
    set_last(e, index, d)
    e.state = new_state
    if old_state != new_state and new_state == TCP_FIN_WAIT:
        e.td_flags[d] |= TF_CLOSE_INIT
    if e.retrans >= t.tcp_max_retrans and to[TO_TCP_NONE + new_state] > to[TO_TCP_MAX_RETRANS]:
        timeout = to[TO_TCP_MAX_RETRANS]
    elif index == TI_RST:
        timeout = to[TO_TCP_CLOSE]
    elif ((e.td_flags[0] | e.td_flags[1]) & TF_DATA_UNACK) and to[TO_TCP_NONE + new_state] > to[TO_TCP_UNACK]:
        timeout = to[TO_TCP_UNACK]
    elif e.last_win == 0 and to[TO_TCP_NONE + new_state] > to[TO_TCP_MAX_RETRANS]:
        timeout = to[TO_TCP_MAX_RETRANS]
    else:
        timeout = to[TO_TCP_NONE + new_state]
    if not (e.status & IPS_SEEN_REPLY):
        if m.tcpflags & 0x04:
            # Only a RST came back (or went out) before any reply: the kernel deletes the entry at once.
            refresh(t, e, m, 0)
            e.status |= IPS_DYING
            return V_ACCEPT
        if index == TI_SYN and old_state == TCP_SYN_SENT:
            return V_ACCEPT      # a retransmitted SYN neither counts nor renews the timer
        if new_state == TCP_ESTABLISHED and timeout > to[TO_TCP_UNACK]:
            timeout = to[TO_TCP_UNACK]
    elif not (e.status & IPS_ASSURED) and (old_state == TCP_SYN_RECV or old_state == TCP_ESTABLISHED) \
            and new_state == TCP_ESTABLISHED:
        e.status |= IPS_ASSURED
    refresh(t, e, m, timeout)
    return V_ACCEPT

cdef inline void tcp_handle_invalid(ct_table *t, ct_entry *e, ct_cold *c, pkt_meta *m, uint8_t index) noexcept nogil:
    # An out-of-window FIN or RST answered from the other side: do not leave an ASSURED connection
    # in ESTABLISHED for days; shrink its timer as for unacknowledged data (kernel nf_tcp_handle_invalid).
    cdef int64_t left
    if not (e.status & IPS_ASSURED):
        return
    if index != TI_RST and index != TI_FIN:
        return
    if last_dir(e) != m.dir and (last_index(e) == TI_FIN or last_index(e) == TI_RST):
        left = e.expires - m.now
        if left < 120 * 1000000000LL:
            return
        if left > m.to[TO_TCP_UNACK]:
            e.expires = m.now + m.to[TO_TCP_UNACK]
    else:
        set_last(e, index, m.dir)
