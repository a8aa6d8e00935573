# cython: language_level=3
"""IP fragments: virtual reassembly before tracking, as nf_defrag does in the kernel.

The kernel reassembles fragments before conntrack sees them (nf_defrag_ipv4 through ip_defrag,
nf_defrag_ipv6 through nf_conntrack_reasm), so a fragmented datagram is tracked once, as one packet
of its full length, when its last missing piece arrives.  fastct does the same without copying
data: a queue per datagram records which byte ranges arrived, the datagram's total length, and the
first fragment's transport header (all the tracker reads).  When the ranges cover the datagram, the
completing fragment's meta is rebuilt as the whole datagram's and tracked; the fragments before it
were "held" (ct_state 0).

Kernel rules followed (ip_fragment.c / inet_fragment.c): the key is (source, destination, id,
protocol for IPv4, zone); an exact duplicate fragment is dropped and the queue kept; an overlapping
one, a last fragment that disagrees with the known end, data past a known end, an empty fragment,
or a datagram longer than 65535 bytes drops the whole datagram; an incomplete datagram expires
30 s (IPv4, net.ipv4.ipfrag_time) or 60 s (IPv6, nf_conntrack_frag6_timeout) after its first
fragment.  Bounded memory: FRAG_SLOTS queues of at most FRAG_MAX_PIECES fragments each (the kernel
bounds memory in bytes instead); a new datagram with no room is dropped, as the kernel drops
fragments above its memory threshold.  Checksums of reassembled datagrams are not checked.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from fastct._types cimport *
from fastct._parse cimport parse_l4

cdef enum:
    FRAG_SLOTS = 1024         # datagrams being reassembled at once (a power of two)
    FRAG_WINDOW = 16          # slots looked at from a datagram's home slot
    FRAG_MAX_PIECES = 64      # fragments kept per datagram
    FRAG_L4_SAVE = 192        # bytes of the first fragment's transport header kept

cdef struct frag_q:
    uint64_t k[4]             # source and destination as in pkt_meta.k
    int64_t expires           # 0: slot free
    uint32_t id
    uint32_t total            # datagram data length, once the last fragment arrived
    uint32_t received         # data bytes received (fragments never overlap)
    uint16_t zone
    uint8_t l3
    uint8_t proto             # IPv4 protocol field (part of the key); IPv6: from the first fragment
    uint8_t have_last
    uint8_t have_first
    uint8_t hoplimit
    uint8_t npieces
    uint16_t unfrag           # from the first fragment: bytes before the data
    uint16_t l4off            # from the first fragment: transport header offset in the data
    uint16_t l4saved          # bytes of it kept in l4
    uint16_t _pad
    uint32_t piece_start[FRAG_MAX_PIECES]
    uint32_t piece_end[FRAG_MAX_PIECES]
    uint8_t l4[FRAG_L4_SAVE]

cdef inline uint64_t _frag_hash(const pkt_meta *m, uint16_t zone, const uint64_t *seed) noexcept nogil:
    return fastct_hash5(m.k[0], m.k[1], m.k[2], m.k[3],
                        <uint64_t>m.frag_id << 32 | <uint64_t>zone << 16 | <uint64_t>(m.k[4] >> 48),
                        seed)

cdef inline bint _frag_match(const frag_q *q, const pkt_meta *m, uint16_t zone, uint8_t l3) noexcept nogil:
    return q.expires != 0 and q.id == m.frag_id and q.zone == zone and q.l3 == l3 and \
        q.k[0] == m.k[0] and q.k[1] == m.k[1] and q.k[2] == m.k[2] and q.k[3] == m.k[3] and \
        (l3 == L3_IPV6 or q.proto == m.proto)

cdef inline void _frag_drop(ct_table *t, pkt_meta *m, uint8_t reason) noexcept nogil:
    m.kind = PK_INVALID
    m.reason = reason
    m.pflags |= PF_FRAG_DROP

cdef inline void _frag_free(frag_q *q) noexcept nogil:
    q.expires = 0

cdef inline uint32_t frag_sweep(ct_table *t, frag_q *qs, int64_t now, uint32_t budget) noexcept nogil:
    """Free incomplete datagrams whose time is up (they are never tracked), budget slots a call."""
    cdef uint32_t freed = 0
    while budget > 0:
        budget -= 1
        t.frag_sweep_pos = (t.frag_sweep_pos + 1) & (FRAG_SLOTS - 1)
        if qs[t.frag_sweep_pos].expires != 0 and qs[t.frag_sweep_pos].expires <= now:
            _frag_free(&qs[t.frag_sweep_pos])
            t.stats[ST_FRAG_TIMEOUT] += 1
            freed += 1
    return freed

cdef inline void frag_handle(ct_table *t, frag_q *qs, pkt_meta *m, uint16_t zone,
                             uint8_t *scratch) noexcept nogil:
    """Take one fragment (m.kind == PK_FRAG).  Leaves m as PK_HELD (kept for later), PK_INVALID
    with PF_FRAG_DROP (dropped), or the whole datagram ready to track (PK_TRACK, its transport
    header copied into `scratch`, which must hold FRAG_L4_SAVE bytes)."""
    cdef uint8_t l3 = <uint8_t>(m.k[4] >> 48)
    cdef uint64_t h = _frag_hash(m, zone, t.seed)
    cdef uint32_t i, k, home = <uint32_t>(h & (FRAG_SLOTS - 1))
    cdef frag_q *q = NULL
    cdef frag_q *free_q = NULL
    cdef uint32_t start = m.frag_off, stop = m.frag_off + m.frag_len
    cdef bint last = not (m.pflags & PF_FRAG_MORE)
    cdef int64_t timeout = t.timeouts[TO_FRAG4] if l3 == L3_IPV4 else t.timeouts[TO_FRAG6]
    cdef uint32_t l4len, iplen
    cdef uint64_t k0, k1, k2, k3
    cdef uint8_t proto, hoplimit
    for k in range(FRAG_WINDOW):
        i = (home + k) & (FRAG_SLOTS - 1)
        if qs[i].expires != 0 and qs[i].expires <= m.now:
            _frag_free(&qs[i])                     # timed out, never completed
            t.stats[ST_FRAG_TIMEOUT] += 1
        if _frag_match(&qs[i], m, zone, l3):
            q = &qs[i]
            break
        if free_q == NULL and qs[i].expires == 0:
            free_q = &qs[i]
    if q == NULL:
        if free_q == NULL:
            _frag_drop(t, m, R_FRAG_NO_ROOM); return
        q = free_q
        memset(q, 0, sizeof(frag_q) - sizeof(q.piece_start) - sizeof(q.piece_end) - sizeof(q.l4))
        q.k[0] = m.k[0]; q.k[1] = m.k[1]; q.k[2] = m.k[2]; q.k[3] = m.k[3]
        q.id = m.frag_id
        q.zone = zone
        q.l3 = l3
        q.proto = m.proto
        q.expires = m.now + timeout
    # Consistency with what arrived before (kernel ip_frag_queue): any disagreement drops it all.
    if m.frag_len == 0 or (<uint64_t>m.frag_unfrag + stop > 65535 and l3 == L3_IPV4) or \
            (stop > 65535 and l3 == L3_IPV6):
        _frag_free(q)
        _frag_drop(t, m, R_FRAG_BAD); return
    if last:
        if stop < q.received or (q.have_last and stop != q.total):
            _frag_free(q)
            _frag_drop(t, m, R_FRAG_BAD); return
    else:
        if stop & 7:
            # Not a multiple of 8 bytes: IPv4 trims it (ip_frag_queue), IPv6 drops the datagram.
            if l3 == L3_IPV6:
                _frag_free(q)
                _frag_drop(t, m, R_FRAG_BAD); return
            stop &= ~7U
            if stop <= start:
                _frag_free(q)
                _frag_drop(t, m, R_FRAG_BAD); return
        if q.have_last and stop > q.total:
            _frag_free(q)
            _frag_drop(t, m, R_FRAG_BAD); return
    for k in range(q.npieces):
        if q.piece_start[k] == start and q.piece_end[k] == stop:
            _frag_drop(t, m, R_FRAG_DUP); return   # an exact duplicate: dropped, queue kept
        if start < q.piece_end[k] and q.piece_start[k] < stop:
            _frag_free(q)
            _frag_drop(t, m, R_FRAG_OVERLAP); return
    if q.npieces >= FRAG_MAX_PIECES:
        _frag_free(q)
        _frag_drop(t, m, R_FRAG_TOO_MANY); return
    q.piece_start[q.npieces] = start
    q.piece_end[q.npieces] = stop
    q.npieces += 1
    q.received += stop - start
    if last:
        q.have_last = 1
        q.total = stop
    if start == 0:
        q.have_first = 1
        q.unfrag = m.frag_unfrag
        q.l4off = m.frag_l4off
        q.proto = m.proto
        q.hoplimit = m.hoplimit
        q.l4saved = <uint16_t>(m.l4cap if m.l4cap < FRAG_L4_SAVE else FRAG_L4_SAVE)
        if q.l4saved:
            memcpy(q.l4, m.l4, q.l4saved)
    if not (q.have_last and q.have_first and q.received == q.total):
        m.kind = PK_HELD
        return
    # Complete: the datagram, tracked as one packet of its whole length.
    t.stats[ST_FRAG_REASSEMBLED] += 1
    k0 = q.k[0]; k1 = q.k[1]; k2 = q.k[2]; k3 = q.k[3]
    proto = q.proto
    hoplimit = q.hoplimit
    iplen = q.unfrag + q.total
    l4len = q.total - q.l4off if q.total > q.l4off else 0
    memcpy(scratch, q.l4, q.l4saved)
    k = q.l4saved if q.l4saved < l4len else l4len
    _frag_free(q)
    m.kind = PK_TRACK
    m.reason = R_VALID
    m.pflags = 0
    m.k[0] = k0; m.k[1] = k1; m.k[2] = k2; m.k[3] = k3
    m.k[4] = 0
    m.iplen = iplen
    m.hoplimit = hoplimit
    m.l3 = NULL                     # (no IP header to check sums against)
    if l3 == L3_IPV6 and proto == 59:
        m.kind = PK_INVALID
        m.reason = R_IP6_NO_NEXT
        return
    parse_l4(scratch, 0, l4len, k, proto, m)
    m.k[4] |= <uint64_t>l3 << 48
