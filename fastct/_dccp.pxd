# cython: language_level=3
"""DCCP tracking as the kernels that had a DCCP tracker did it (net/netfilter/nf_conntrack_proto_dccp.c,
last in 6.15; 6.16 removed it and tracks DCCP as generic, which is fastct's default).  Used only with
the dccp option (ct_table.dccp_tracker).  Facts were read from the kernel source and re-expressed
here; the kernel remains the reference.

With the option a DCCP connection is keyed by its ports like the old kernel's tuple: `dccp_key`, called
by the engine's first stage, checks the header and puts the ports in the key.

Private state, in the TCP fields of ct_entry (free for DCCP entries; proto_new zeroes them):
    e.state         DCCP_* state
    e.td_scale[d]   role of the end that sends in direction d: DR_CLIENT or DR_SERVER (kernel role[d])
    e.td_flags[0]   type of the last packet that moved the state or was ignored (kernel last_pkt)
    e.td_flags[1]   its direction (kernel last_dir)
    e.td_end[0]     the server's Response sequence number, bits 0-31 (kernel handshake_seq)
    e.td_end[1]     its bits 32-47

The kernel's packet path, as followed here:
1. dccp_error (dccp_header_check): a 12-byte generic header; data offset at least 12 bytes and within
   the packet; checksum coverage (CsCov - 1) * 4 within the packet; with nf_conntrack_checksum the
   Internet checksum over the pseudo-header and the covered bytes; type below 10 (Request .. SyncAck);
   the types that must use 48-bit sequence numbers (all but Data, Ack, DataAck) have X set; and the
   whole header the type implies (generic, extended sequence number, acknowledgement / service code /
   reset code) in the packet.
2. A new connection (dccp_new) only from a Request (the client's row of the table from NONE).  The
   original direction is the client.
3. A Reset while no reply was seen kills the connection at once (counted, not refreshed).
4. The table: role of the sender x packet type x state.  IGNORE lets the packet through without
   renewing the timer, remembering it, unless it is the server's Response to a Request ignored just
   before from the other side: then the roles are taken from those two packets and the state is
   RESPOND.  INVALID refuses it.  Otherwise the state moves and the timer is set from it.  A server's
   Request in TIMEWAIT reopens with the roles swapped.  The Response's sequence number is kept, and
   an Ack from the client acknowledging exactly it (RESPOND -> PARTOPEN) sets [ASSURED]: the only way
   a DCCP connection becomes assured.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from fastct._types cimport *
from fastct._verdict cimport *

# Packet types (RFC 4340 5.1; kernel DCCP_PKT_*).
cdef enum:
    DCCP_PKT_REQUEST = 0
    DCCP_PKT_RESPONSE = 1
    DCCP_PKT_DATA = 2
    DCCP_PKT_ACK = 3
    DCCP_PKT_DATAACK = 4
    DCCP_PKT_CLOSEREQ = 5
    DCCP_PKT_CLOSE = 6
    DCCP_PKT_RESET = 7
    DCCP_PKT_SYNC = 8
    DCCP_PKT_SYNCACK = 9
    DCCP_PKT_INVALID = 10

# Roles (kernel CT_DCCP_ROLE_*).
cdef enum:
    DR_CLIENT = 0
    DR_SERVER = 1

cdef enum:
    DCCP_HDR_LEN = 12           # ports, data offset, CCVal/CsCov, checksum, type/X, sequence number
    DCCP_HDR_EXT_LEN = 4        # the low 32 bits of a 48-bit sequence number (X = 1)
    DCCP_ACK_BITS_LEN = 8       # reserved, acknowledgement number (high 16, low 32 bits)
    # Types that must carry 48-bit sequence numbers (everything but Data, Ack and DataAck).
    DCCP_SEQ48_TYPES = ((1 << DCCP_PKT_REQUEST) | (1 << DCCP_PKT_RESPONSE) | (1 << DCCP_PKT_CLOSEREQ) |
                        (1 << DCCP_PKT_CLOSE) | (1 << DCCP_PKT_RESET) | (1 << DCCP_PKT_SYNC) |
                        (1 << DCCP_PKT_SYNCACK))

# fastct_dccp_next[role][type][old state] -> new state.  Columns: NONE REQUEST RESPOND PARTOPEN OPEN
# CLOSEREQ CLOSING TIMEWAIT; 8 is ignore, 9 invalid (kernel dccp_state_table, last version).  Two
# cells differ from the comments beside the kernel's table, and the values are what it ran: a
# client's Close in CLOSING is invalid, and a server's Reset in TIMEWAIT stays in TIMEWAIT and renews
# the timer (that row has nine values; the one meant for TIMEWAIT fell into the unused IGNORE column).
cdef extern from *:
    """
    static const unsigned char fastct_dccp_next[2][10][8] = {
      { /* CLIENT */
        /* request  */ { 1, 1, 2, 8, 8, 8, 8, 1 },
        /* response */ { 9, 8, 8, 8, 8, 8, 8, 9 },
        /* data     */ { 9, 9, 9, 9, 4, 5, 6, 9 },
        /* ack      */ { 9, 9, 3, 3, 4, 5, 6, 9 },
        /* dataack  */ { 9, 9, 3, 3, 4, 5, 6, 9 },
        /* closereq */ { 9, 9, 9, 9, 9, 9, 9, 9 },
        /* close    */ { 9, 9, 9, 6, 6, 6, 9, 9 },
        /* reset    */ { 9, 7, 7, 7, 7, 7, 7, 8 },
        /* sync     */ { 9, 8, 8, 8, 8, 8, 8, 8 },
        /* syncack  */ { 9, 8, 8, 8, 8, 8, 8, 8 },
      },
      { /* SERVER */
        /* request  */ { 9, 8, 8, 8, 8, 8, 8, 1 },
        /* response */ { 9, 2, 2, 8, 8, 8, 8, 9 },
        /* data     */ { 9, 9, 9, 4, 4, 9, 6, 9 },
        /* ack      */ { 9, 9, 9, 4, 4, 9, 6, 9 },
        /* dataack  */ { 9, 9, 9, 4, 4, 9, 6, 9 },
        /* closereq */ { 9, 9, 9, 5, 5, 5, 5, 9 },
        /* close    */ { 9, 9, 9, 6, 6, 9, 6, 9 },
        /* reset    */ { 9, 7, 7, 7, 7, 7, 7, 7 },
        /* sync     */ { 9, 8, 8, 8, 8, 8, 8, 8 },
        /* syncack  */ { 9, 8, 8, 8, 8, 8, 8, 8 },
      },
    };
    """
    const unsigned char fastct_dccp_next[2][10][8]

cdef inline uint8_t dccp_type(const uint8_t *h) noexcept nogil:
    return (h[8] >> 1) & 0x0F

cdef inline bint dccp_x(const uint8_t *h) noexcept nogil:
    return (h[8] & 0x01) != 0

cdef inline uint32_t dccp_basic_len(const uint8_t *h) noexcept nogil:
    return DCCP_HDR_LEN + (DCCP_HDR_EXT_LEN if dccp_x(h) else 0)

cdef inline uint32_t dccp_type_hdr_len(uint8_t ptype) noexcept nogil:
    """Bytes after the generic header that the type implies (kernel dccp_packet_hdr_len)."""
    if ptype == DCCP_PKT_DATA:
        return 0
    if ptype == DCCP_PKT_REQUEST:
        return 4                        # service code
    if ptype == DCCP_PKT_RESPONSE or ptype == DCCP_PKT_RESET:
        return DCCP_ACK_BITS_LEN + 4    # + service code / reset code and data
    return DCCP_ACK_BITS_LEN

cdef inline uint8_t dccp_header_check(const pkt_meta *m) noexcept nogil:
    """The kernel's dccp_error and header reads, except the checksum: R_VALID or why not.  A header
    that is in the packet but not all captured is R_L4_TRUNCATED (fastct cannot read it)."""
    cdef const uint8_t *h = m.l4
    cdef uint32_t doff, cscov, hlen
    cdef uint8_t ptype
    if m.l4len < DCCP_HDR_LEN:
        return R_L4_TRUNCATED
    if m.l4cap < DCCP_HDR_LEN:
        return R_L4_TRUNCATED
    doff = <uint32_t>h[4] * 4
    if doff < DCCP_HDR_LEN or doff > m.l4len:
        return R_DCCP_INVALID
    cscov = h[5] & 0x0F
    if cscov and (cscov - 1) * 4 > m.l4len:
        return R_DCCP_INVALID
    ptype = dccp_type(h)
    if ptype >= DCCP_PKT_INVALID:
        return R_DCCP_INVALID
    if ((DCCP_SEQ48_TYPES >> ptype) & 1) and not dccp_x(h):
        return R_DCCP_INVALID
    hlen = dccp_basic_len(h) + dccp_type_hdr_len(ptype)
    if hlen > m.l4len:
        return R_DCCP_INVALID
    if hlen > m.l4cap:
        return R_L4_TRUNCATED
    return R_VALID

cdef inline bint dccp_csum_ok(const pkt_meta *m) noexcept nogil:
    """Internet checksum over the pseudo-header (with the whole DCCP length) and the bytes CsCov
    covers (all when 0).  Covered bytes not all captured cannot be summed: they pass."""
    cdef const uint8_t *a = <const uint8_t *>m.k     # source address at 0, destination at 16
    cdef const uint8_t *h = m.l4
    cdef uint32_t cover = m.l4len, i, alen
    cdef uint64_t s = 0
    if h[5] & 0x0F:
        cover = ((h[5] & 0x0F) - 1) * 4
    if cover > m.l4cap:
        return True
    alen = 4 if ((m.k[4] >> 48) & 0xFF) == L3_IPV4 else 16
    for i in range(0, alen, 2):
        s += (<uint32_t>a[i] << 8 | a[i + 1]) + (<uint32_t>a[16 + i] << 8 | a[16 + i + 1])
    s += (m.l4len >> 16) + (m.l4len & 0xFFFF) + IP_PROTO_DCCP
    i = 0
    while i + 1 < cover:
        s += <uint32_t>h[i] << 8 | h[i + 1]
        i += 2
    if i < cover:
        s += <uint32_t>h[i] << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF

cdef inline void dccp_key(pkt_meta *m) noexcept nogil:
    """For the engine's first stage, with the dccp option only: check a tracked DCCP packet's header
    (dccp_header_check; on failure the packet is invalid) and put its ports in the key as the old
    kernel's tuple had them (sport | dport << 16 in the key word, host order)."""
    cdef uint8_t reason
    if m.kind != PK_TRACK or m.proto != IP_PROTO_DCCP or (m.pflags & PF_RELATED):
        return
    reason = dccp_header_check(m)
    if reason != R_VALID:
        m.kind = PK_INVALID
        m.reason = reason
        return
    m.k[4] = (m.k[4] & 0xFFFFFFFF00000000ULL) | <uint64_t>fastct_be16(m.l4) | \
        (<uint64_t>fastct_be16(m.l4 + 2) << 16)

cdef inline uint64_t dccp_seq(const uint8_t *h) noexcept nogil:
    """The packet's sequence number: 48 bits with X, else 24 (kernel dccp_hdr_seq)."""
    if dccp_x(h):
        return (<uint64_t>fastct_be16(h + 10) << 32) | fastct_be32(h + 12)
    return (<uint64_t>h[9] << 16) | fastct_be16(h + 10)

cdef inline uint64_t dccp_ack_seq(const uint8_t *h) noexcept nogil:
    """The acknowledgement number, read as the 48-bit form whatever X says (as the kernel reads it)."""
    cdef const uint8_t *ab = h + dccp_basic_len(h)
    return (<uint64_t>fastct_be16(ab + 2) << 32) | fastct_be32(ab + 4)

cdef inline uint8_t dccp_new(ct_table *t, ct_entry *e, ct_cold *c, const pkt_meta *m) noexcept nogil:
    """May this packet start a connection (kernel dccp_error + dccp_new)?  Only a Request can: the
    client's row from NONE is invalid for every other type (so nf_conntrack_dccp_loose, whose
    default 1 would let the others pick a connection up, never comes into play)."""
    cdef uint8_t reason = dccp_header_check(m)
    if reason != R_VALID:
        return reason
    if t.checksum and not dccp_csum_ok(m):
        return R_CHECKSUM
    if fastct_dccp_next[DR_CLIENT][dccp_type(m.l4)][DCCP_NONE] == DCCP_INVALID:
        return R_DCCP_NO_NEW
    e.state = DCCP_NONE
    e.td_scale[DIR_ORIGINAL] = DR_CLIENT
    e.td_scale[DIR_REPLY] = DR_SERVER
    e.td_flags[0] = DCCP_PKT_REQUEST
    e.td_flags[1] = DIR_ORIGINAL
    e.td_end[0] = e.td_end[1] = 0
    return R_VALID

cdef inline void dccp_set_handshake(ct_entry *e, uint64_t seq) noexcept nogil:
    e.td_end[0] = <uint32_t>seq
    e.td_end[1] = <uint32_t>(seq >> 32)

cdef inline uint64_t dccp_handshake(const ct_entry *e) noexcept nogil:
    return (<uint64_t>e.td_end[1] << 32) | e.td_end[0]

cdef inline int dccp_packet(ct_table *t, ct_entry *e, ct_cold *c, pkt_meta *m) noexcept nogil:
    """One packet of a DCCP connection, the first included (kernel nf_conntrack_dccp_packet)."""
    cdef const uint8_t *h = m.l4
    cdef uint8_t d = m.dir
    cdef uint8_t r = 1 - d
    cdef uint8_t ptype, role, old_state, new_state, reason
    if m.pflags & PF_RELATED:
        return V_ACCEPT      # an ICMP error quoting the connection: the kernel runs no DCCP code for it
    reason = dccp_header_check(m)
    if reason == R_VALID and t.checksum and e.state != DCCP_NONE and not dccp_csum_ok(m):
        reason = R_CHECKSUM     # (the first packet was summed by dccp_new)
    if reason != R_VALID:
        m.reason = reason
        return V_INVALID
    ptype = dccp_type(h)
    if ptype == DCCP_PKT_RESET and not (e.status & IPS_SEEN_REPLY):
        # Nothing but a Reset came back (or went out) before any reply: the connection dies now.
        refresh(t, e, m, 0)
        e.status |= IPS_DYING
        return V_ACCEPT
    role = e.td_scale[d]
    old_state = e.state
    new_state = fastct_dccp_next[role][ptype][old_state]
    if new_state == DCCP_REQUEST:
        if old_state == DCCP_TIMEWAIT and role == DR_SERVER:
            # Reincarnation from the other end: it is the client now.
            e.td_scale[d] = DR_CLIENT
            e.td_scale[r] = DR_SERVER
    elif new_state == DCCP_RESPOND:
        if old_state == DCCP_REQUEST:
            dccp_set_handshake(e, dccp_seq(h))
    elif new_state == DCCP_PARTOPEN:
        if old_state == DCCP_RESPOND and ptype == DCCP_PKT_ACK and dccp_ack_seq(h) == dccp_handshake(e):
            e.status |= IPS_ASSURED
    elif new_state == DCCP_IGNORE:
        if e.td_flags[1] == r and e.td_flags[0] == DCCP_PKT_REQUEST and ptype == DCCP_PKT_RESPONSE:
            # The Response to a Request we ignored: the connection restarted; follow it.
            e.td_scale[r] = DR_CLIENT
            e.td_scale[d] = DR_SERVER
            dccp_set_handshake(e, dccp_seq(h))
            new_state = DCCP_RESPOND
        else:
            e.td_flags[1] = d
            e.td_flags[0] = ptype
            return V_ACCEPT      # ignored: accepted, neither counted nor refreshed
    elif new_state == DCCP_INVALID:
        m.reason = R_DCCP_INVALID
        return V_INVALID
    e.td_flags[1] = d
    e.td_flags[0] = ptype
    e.state = new_state
    refresh(t, e, m, m.to[TO_DCCP_NONE + new_state])
    return V_ACCEPT
