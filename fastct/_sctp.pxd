# cython: language_level=3
"""SCTP tracking as the Linux kernel does it (net/netfilter/nf_conntrack_proto_sctp.c, 6.x): every
chunk of a packet walked and checked, the verification tags of both directions learnt from INIT,
INIT_ACK, HEARTBEAT and HEARTBEAT_ACK and checked per chunk type, and one state transition per
chunk from the kernel's table.  Facts were read from the kernel source and re-expressed here; the
kernel remains the reference.

Private state, in the TCP fields of ct_entry (free for SCTP entries; proto_new zeroes them):
    e.state         SCTP_* state
    e.td_end[d]     verification tag that packets sent in direction d must carry (kernel vtag[d]),
                    the wire's big-endian value read as a number: it is only compared and tested for 0
    e.td_flags[d]   1 when an INIT was seen from direction d since the last COOKIE_ACK (kernel init[d])
    e.td_scale[0]   SF_HB_VTAG_FAILED: a HEARTBEAT carried an unknown verification tag
    e.td_scale[1]   the direction of that HEARTBEAT (kernel last_dir)

The kernel's packet path, as followed here:
1. sctp_error: a 12-byte common header (checked by the parser) and, with nf_conntrack_checksum, the
   CRC32c (only when the whole packet was captured: fastct cannot sum bytes it does not have).
2. do_basic_checks: walk the chunks (while a 4-byte chunk header fits in the packet, each padded to 4
   bytes): a zero chunk length, COOKIE_ECHO or COOKIE_ACK that is not the first chunk, or INIT,
   INIT_ACK or SHUTDOWN_COMPLETE that is not the only one make the packet invalid, as does a packet
   with no chunk.  Chunk lengths are not checked against the packet: a chunk that runs past its end
   just ends the walk.  Chunk headers past the captured bytes end the walk too (they are unknown).
3. A new association (sctp_new here): no ABORT, SHUTDOWN_COMPLETE or COOKIE_ACK chunk (RFC 4960 8.4),
   every chunk must move the state out of NONE in the original direction (so DATA, SACK and other
   chunks the table does not know cannot start one), an INIT must carry vtag 0 and a readable INIT
   header whose initiate tag becomes the reply direction's tag; a HEARTBEAT's vtag becomes the
   original direction's tag, a SHUTDOWN_ACK's the reply direction's.
4. The verification tag must match the direction's unless the packet holds INIT, SHUTDOWN_COMPLETE,
   COOKIE_ECHO, ABORT, SHUTDOWN_ACK, HEARTBEAT or HEARTBEAT_ACK, which are checked per chunk (RFC 4960
   8.5.1): INIT vtag 0; ABORT and SHUTDOWN_COMPLETE the own tag, or the peer's with the T bit;
   COOKIE_ECHO the own tag; HEARTBEAT / HEARTBEAT_ACK learn an unknown tag, and a HEARTBEAT with a
   wrong one is let through unrefreshed and remembered, so that the HEARTBEAT_ACK answering it from
   the other side re-learns both tags (an association restarted behind our back).
5. Per chunk, the table below; a refused chunk makes the packet invalid, but what the chunks before it
   changed stays (the kernel updates the entry chunk by chunk).  Entering ESTABLISHED sets [ASSURED].
   An INIT (either direction) of an entry already CLOSED is accepted but renews nothing, so
   retransmitted INITs cannot keep a closed entry alive.  Otherwise the timer is set from the state
   the last chunk left.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t
from fastct._types cimport *
from fastct._verdict cimport *

# Chunk types (RFC 4960 / RFC 9260; kernel SCTP_CID_*).
cdef enum:
    CID_DATA = 0
    CID_INIT = 1
    CID_INIT_ACK = 2
    CID_SACK = 3
    CID_HEARTBEAT = 4
    CID_HEARTBEAT_ACK = 5
    CID_ABORT = 6
    CID_SHUTDOWN = 7
    CID_SHUTDOWN_ACK = 8
    CID_ERROR = 9
    CID_COOKIE_ECHO = 10
    CID_COOKIE_ACK = 11
    CID_SHUTDOWN_COMPLETE = 14

cdef enum:
    SCTP_HDR_LEN = 12           # ports, verification tag, checksum
    SCTP_CHUNK_HDR_LEN = 4      # type, flags, length
    SCTP_INIT_HDR_LEN = 16      # initiate tag, a_rwnd, stream counts, initial TSN
    SCTP_FLAG_T = 0x01          # ABORT / SHUTDOWN_COMPLETE: the sender had no TCB, used the peer's tag
    SF_HB_VTAG_FAILED = 0x01    # e.td_scale[0]
    sctp_sIV = SCTP_N_STATES    # table cell: invalid

# Chunk types whose packets skip the whole-packet verification tag check (bits of the chunk map).
cdef enum:
    SCTP_VTAG_OWN_CHECK = ((1 << CID_INIT) | (1 << CID_SHUTDOWN_COMPLETE) | (1 << CID_COOKIE_ECHO) |
                           (1 << CID_ABORT) | (1 << CID_SHUTDOWN_ACK) | (1 << CID_HEARTBEAT) |
                           (1 << CID_HEARTBEAT_ACK))
    SCTP_OOTB_NO_NEW = (1 << CID_ABORT) | (1 << CID_SHUTDOWN_COMPLETE) | (1 << CID_COOKIE_ACK)

# fastct_sctp_next[dir][row][old state] -> new state, rows in the kernel's order: INIT, INIT_ACK,
# ABORT, SHUTDOWN, SHUTDOWN_ACK, ERROR, COOKIE_ECHO, COOKIE_ACK, SHUTDOWN_COMPLETE, HEARTBEAT,
# HEARTBEAT_ACK.  Columns: NONE CLOSED COOKIE_WAIT COOKIE_ECHOED ESTABLISHED SHUTDOWN_SENT
# SHUTDOWN_RECD SHUTDOWN_ACK_SENT HEARTBEAT_SENT; 9 is invalid (kernel sctp_conntracks, 6.x).
# The CRC32c table is the reflected Castagnoli polynomial 0x82F63B78, one byte at a time.
cdef extern from *:
    """
    static const unsigned char fastct_sctp_next[2][11][9] = {
      { /* ORIGINAL */
        /* init          */ { 1, 1, 2, 3, 4, 1, 1, 7, 2 },
        /* init_ack      */ { 1, 1, 2, 3, 4, 5, 6, 7, 1 },
        /* abort         */ { 1, 1, 1, 1, 1, 1, 1, 1, 1 },
        /* shutdown      */ { 1, 1, 2, 3, 5, 5, 6, 7, 1 },
        /* shutdown_ack  */ { 7, 1, 2, 3, 4, 7, 7, 7, 7 },
        /* error         */ { 1, 1, 2, 3, 4, 5, 6, 7, 1 },
        /* cookie_echo   */ { 1, 1, 3, 3, 4, 5, 6, 7, 1 },
        /* cookie_ack    */ { 1, 1, 2, 4, 4, 5, 6, 7, 1 },
        /* shutdown_comp */ { 1, 1, 2, 3, 4, 5, 6, 1, 1 },
        /* heartbeat     */ { 8, 1, 2, 3, 4, 5, 6, 7, 8 },
        /* heartbeat_ack */ { 1, 1, 2, 3, 4, 5, 6, 7, 8 },
      },
      { /* REPLY */
        /* init          */ { 9, 1, 2, 3, 4, 5, 6, 7, 9 },
        /* init_ack      */ { 9, 2, 2, 3, 4, 5, 6, 7, 9 },
        /* abort         */ { 9, 1, 1, 1, 1, 1, 1, 1, 9 },
        /* shutdown      */ { 9, 1, 2, 3, 6, 5, 6, 7, 9 },
        /* shutdown_ack  */ { 9, 1, 2, 3, 4, 7, 7, 7, 9 },
        /* error         */ { 9, 1, 2, 1, 4, 5, 6, 7, 9 },
        /* cookie_echo   */ { 9, 1, 3, 3, 4, 5, 6, 7, 9 },
        /* cookie_ack    */ { 9, 1, 2, 4, 4, 5, 6, 7, 9 },
        /* shutdown_comp */ { 9, 1, 2, 3, 4, 5, 6, 1, 9 },
        /* heartbeat     */ { 9, 1, 2, 3, 4, 5, 6, 7, 8 },
        /* heartbeat_ack */ { 9, 1, 2, 3, 4, 5, 6, 7, 4 },
      },
    };
    /* Chunk type -> table row, -1 for chunks that leave the state as it is (DATA, SACK, ...). */
    static const signed char fastct_sctp_row[16] = {
      -1, 0, 1, -1, 9, 10, 2, 3, 4, 5, 6, 7, -1, -1, 8, -1,
    };
    static const unsigned int fastct_crc32c_table[256] = {
      0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c, 0x26a1e7e8, 0xd4ca64eb,
      0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b, 0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24,
      0x105ec76f, 0xe235446c, 0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
      0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc, 0xbc267848, 0x4e4dfb4b,
      0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a, 0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35,
      0xaa64d611, 0x580f5512, 0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
      0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad, 0x1642ae59, 0xe4292d5a,
      0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a, 0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595,
      0x417b1dbc, 0xb3109ebf, 0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
      0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f, 0xed03a29b, 0x1f682198,
      0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927, 0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38,
      0xdbfc821c, 0x2997011f, 0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
      0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e, 0x4767748a, 0xb50cf789,
      0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859, 0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46,
      0x7198540d, 0x83f3d70e, 0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
      0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de, 0xdde0eb2a, 0x2f8b6829,
      0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c, 0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93,
      0x082f63b7, 0xfa44e0b4, 0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
      0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b, 0xb4091bff, 0x466298fc,
      0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c, 0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033,
      0xa24bb5a6, 0x502036a5, 0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
      0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975, 0x0e330a81, 0xfc588982,
      0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d, 0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622,
      0x38cc2a06, 0xcaa7a905, 0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
      0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8, 0xe52cc12c, 0x1747422f,
      0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff, 0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0,
      0xd3d3e1ab, 0x21b862a8, 0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
      0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78, 0x7fab5e8c, 0x8dc0dd8f,
      0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee, 0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1,
      0x69e9f0d5, 0x9b8273d6, 0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
      0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69, 0xd5cf889d, 0x27a40b9e,
      0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e, 0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
    };
    """
    const unsigned char fastct_sctp_next[2][11][9]
    const signed char fastct_sctp_row[16]
    const unsigned int fastct_crc32c_table[256]

cdef inline uint8_t sctp_next_state(uint8_t d, uint8_t old_state, uint8_t ctype) noexcept nogil:
    """The state after a chunk of type `ctype` sent in direction d (kernel sctp_new_state)."""
    cdef int row = fastct_sctp_row[ctype] if ctype < 16 else -1
    if row < 0:
        return old_state
    return fastct_sctp_next[d][row][old_state]

cdef inline bint sctp_chunk_at(const pkt_meta *m, uint32_t off) noexcept nogil:
    """Is there a chunk header at `off` to read?  The kernel walks while a 4-byte header fits in the
    packet; past the captured bytes fastct cannot read it, and stops there too."""
    return off + SCTP_CHUNK_HDR_LEN <= m.l4len and off + SCTP_CHUNK_HDR_LEN <= m.l4cap

cdef inline uint32_t sctp_chunk_next(const pkt_meta *m, uint32_t off) noexcept nogil:
    # Chunks are padded to 4 bytes; the length is not checked against the packet (nor is a length
    # below 4: only 0 is refused, by sctp_basic_checks).
    return off + ((<uint32_t>fastct_be16(m.l4 + off + 2) + 3) & ~(<uint32_t>3))

cdef inline uint8_t sctp_basic_checks(const pkt_meta *m, uint32_t *chunk_map) noexcept nogil:
    """Kernel do_basic_checks: R_VALID and the set of chunk types below 32 (bit per type), else why not."""
    cdef uint32_t off = SCTP_HDR_LEN
    cdef uint32_t count = 0
    cdef uint8_t ctype
    cdef bint alone = False
    chunk_map[0] = 0
    while sctp_chunk_at(m, off):
        ctype = m.l4[off]
        if ctype == CID_INIT or ctype == CID_INIT_ACK or ctype == CID_SHUTDOWN_COMPLETE:
            alone = True      # this chunk, and any after it, break the "only chunk" rule
        if fastct_be16(m.l4 + off + 2) == 0:
            return R_SCTP_INVALID
        if count != 0 and (alone or ctype == CID_COOKIE_ECHO or ctype == CID_COOKIE_ACK):
            return R_SCTP_INVALID
        if ctype < 32:
            chunk_map[0] |= (<uint32_t>1) << ctype
        count += 1
        off = sctp_chunk_next(m, off)
    if count == 0:
        # No chunk: invalid, unless the capture cut off a chunk the packet has.
        if SCTP_HDR_LEN + SCTP_CHUNK_HDR_LEN <= m.l4len:
            return R_L4_TRUNCATED
        return R_SCTP_INVALID
    return R_VALID

cdef inline uint32_t sctp_crc(const uint8_t *p, uint32_t n) noexcept nogil:
    """CRC32c of an SCTP packet of n bytes, its checksum field (bytes 8-11) taken as zero."""
    cdef uint32_t crc = 0xFFFFFFFF
    cdef uint32_t i
    cdef uint8_t b
    for i in range(n):
        b = 0 if (i >= 8 and i < 12) else p[i]
        crc = fastct_crc32c_table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return ~crc

cdef inline bint sctp_crc_ok(const pkt_meta *m) noexcept nogil:
    """CRC32c of the packet against the field, stored least significant byte first.  A packet not
    captured whole cannot be summed and passes."""
    if m.l4cap < m.l4len:
        return True
    return sctp_crc(m.l4, m.l4len) == fastct_le32(m.l4 + 8)

cdef inline uint8_t sctp_init_tag(const pkt_meta *m, uint32_t off, uint32_t *tag) noexcept nogil:
    """The initiate tag of the INIT / INIT_ACK chunk at `off`: its whole fixed header must be in the
    packet (kernel), and the tag captured (fastct)."""
    if off + SCTP_CHUNK_HDR_LEN + SCTP_INIT_HDR_LEN > m.l4len:
        return R_SCTP_INVALID
    if off + SCTP_CHUNK_HDR_LEN + 4 > m.l4cap:
        return R_L4_TRUNCATED
    tag[0] = fastct_be32(m.l4 + off + SCTP_CHUNK_HDR_LEN)
    return R_VALID

cdef inline uint8_t sctp_track(ct_table *t, ct_entry *e, const pkt_meta *m, uint32_t chunk_map,
                               bint confirmed) noexcept nogil:
    """Steps 4 and 5 of the module docstring for one packet of entry e: the tag checks and a
    transition per chunk, then the timer.  R_VALID (accepted: refreshed, or ignored) or a reason."""
    cdef uint8_t d = m.dir
    cdef uint8_t r = 1 - d
    cdef uint32_t vtag = fastct_be32(m.l4 + 4)
    cdef uint32_t off = SCTP_HDR_LEN
    cdef uint32_t tag, peer
    cdef uint8_t ctype, cflags, old_state = SCTP_NONE, new_state = SCTP_NONE, reason
    cdef bint ignore = False
    cdef int64_t timeout
    if not (chunk_map & SCTP_VTAG_OWN_CHECK) and vtag != e.td_end[d]:
        return R_SCTP_INVALID
    while sctp_chunk_at(m, off):
        ctype = m.l4[off]
        cflags = m.l4[off + 1]
        if ctype == CID_INIT:
            if vtag != 0:
                return R_SCTP_INVALID
        elif ctype == CID_ABORT or ctype == CID_SHUTDOWN_COMPLETE:
            if vtag != e.td_end[r if cflags & SCTP_FLAG_T else d]:
                return R_SCTP_INVALID
        elif ctype == CID_COOKIE_ECHO:
            if vtag != e.td_end[d]:
                return R_SCTP_INVALID
        elif ctype == CID_COOKIE_ACK:
            e.td_flags[0] = 0
            e.td_flags[1] = 0
        elif ctype == CID_HEARTBEAT:
            if e.td_end[d] == 0:
                e.td_end[d] = vtag
            elif vtag != e.td_end[d]:
                if (chunk_map & (1 << CID_DATA)) or ignore:
                    return R_SCTP_INVALID
                # Maybe a restart we did not see: let it through unrefreshed; its answer decides.
                e.td_scale[0] |= SF_HB_VTAG_FAILED
                e.td_scale[1] = d
                ignore = True
                off = sctp_chunk_next(m, off)
                continue
            else:
                e.td_scale[0] &= ~SF_HB_VTAG_FAILED
        elif ctype == CID_HEARTBEAT_ACK:
            if e.td_end[d] == 0:
                e.td_end[d] = vtag
            elif vtag != e.td_end[d]:
                if (chunk_map & (1 << CID_DATA)) or ignore:
                    return R_SCTP_INVALID
                if not (e.td_scale[0] & SF_HB_VTAG_FAILED) or e.td_scale[1] == d:
                    return R_SCTP_INVALID
                # The answer to that HEARTBEAT: adopt the new tag, relearn the other side's.
                e.td_scale[0] &= ~SF_HB_VTAG_FAILED
                e.td_end[d] = vtag
                e.td_end[r] = 0
            else:
                e.td_scale[0] &= ~SF_HB_VTAG_FAILED
        old_state = e.state
        new_state = sctp_next_state(d, old_state, ctype)
        if new_state == sctp_sIV:
            return R_SCTP_INVALID
        if ctype == CID_INIT:
            reason = sctp_init_tag(m, off, &tag)
            if reason != R_VALID:
                return reason
            # An INIT repeating the tag already recorded (stale or retransmitted) is not a new one.
            if old_state == SCTP_NONE or e.td_end[r] != tag:
                if e.td_flags[d] and e.td_flags[r]:
                    e.td_flags[r] = 0
                e.td_flags[d] = 1
            e.td_end[r] = tag
            if new_state == SCTP_CLOSED and old_state == SCTP_CLOSED and confirmed:
                ignore = True
        elif ctype == CID_INIT_ACK:
            reason = sctp_init_tag(m, off, &tag)
            if reason != R_VALID:
                return reason
            peer = e.td_end[r]
            if not e.td_flags[r] and peer != 0 and peer != tag:
                return R_SCTP_INVALID
            if e.td_flags[d] and e.td_flags[r] and peer != tag:
                return R_SCTP_INVALID      # INIT collision: the INIT_ACK must repeat its INIT's tag
            e.td_end[r] = tag
        e.state = new_state
        if old_state != new_state and new_state == SCTP_ESTABLISHED:
            e.status |= IPS_ASSURED
        off = sctp_chunk_next(m, off)
    if ignore:
        return R_VALID
    # (The kernel's timeout for NONE is CLOSED's; no packet accepted leaves an entry in NONE.)
    timeout = m.to[TO_SCTP_NONE + new_state] if new_state != SCTP_NONE else m.to[TO_SCTP_CLOSED]
    refresh(t, e, m, timeout)
    return R_VALID

cdef inline uint8_t sctp_new(ct_table *t, ct_entry *e, ct_cold *c, const pkt_meta *m) noexcept nogil:
    """May this packet start an association (kernel sctp_error, do_basic_checks, sctp_new)?  On
    R_VALID e holds the tags the kernel's sctp_new sets, state NONE; sctp_packet then runs the packet
    through the table as the kernel does for an unconfirmed entry.  That run is made here first on a
    copy, so a packet it would refuse creates no entry."""
    cdef uint32_t chunk_map, off = SCTP_HDR_LEN, tag
    cdef uint8_t reason, ctype, st
    cdef ct_entry trial
    if t.checksum and not sctp_crc_ok(m):
        return R_CHECKSUM
    reason = sctp_basic_checks(m, &chunk_map)
    if reason != R_VALID:
        return reason
    if chunk_map & SCTP_OOTB_NO_NEW:
        return R_SCTP_NO_NEW
    e.state = SCTP_NONE
    e.td_end[0] = e.td_end[1] = 0
    e.td_flags[0] = e.td_flags[1] = 0
    e.td_scale[0] = e.td_scale[1] = 0
    while sctp_chunk_at(m, off):
        ctype = m.l4[off]
        st = sctp_next_state(DIR_ORIGINAL, SCTP_NONE, ctype)
        if st == SCTP_NONE or st == sctp_sIV:
            return R_SCTP_NO_NEW
        if ctype == CID_INIT:
            if fastct_be32(m.l4 + 4) != 0:
                return R_SCTP_INVALID
            reason = sctp_init_tag(m, off, &tag)
            if reason != R_VALID:
                return reason
            e.td_end[DIR_REPLY] = tag
        elif ctype == CID_HEARTBEAT:
            e.td_end[DIR_ORIGINAL] = fastct_be32(m.l4 + 4)
        elif ctype == CID_SHUTDOWN_ACK:
            # Out of the blue: the answer is a SHUTDOWN_COMPLETE (or ABORT) with the T bit and this tag.
            e.td_end[DIR_REPLY] = fastct_be32(m.l4 + 4)
        off = sctp_chunk_next(m, off)
    trial = e[0]
    trial.status = 0
    return sctp_track(t, &trial, m, chunk_map, False)

cdef inline int sctp_packet(ct_table *t, ct_entry *e, ct_cold *c, pkt_meta *m) noexcept nogil:
    """One packet of an association, the first included (kernel nf_conntrack_sctp_packet)."""
    cdef uint32_t chunk_map
    cdef uint8_t reason
    cdef bint first = e.state == SCTP_NONE     # sctp_new has just checked and set it up
    if m.pflags & PF_RELATED:
        return V_ACCEPT      # an ICMP error quoting the association: the kernel runs no SCTP code for it
    if t.checksum and not first and not sctp_crc_ok(m):
        m.reason = R_CHECKSUM
        return V_INVALID
    reason = sctp_basic_checks(m, &chunk_map)
    if reason == R_VALID:
        reason = sctp_track(t, e, m, chunk_map, not first)
    if reason != R_VALID:
        m.reason = reason
        return V_INVALID
    return V_ACCEPT
