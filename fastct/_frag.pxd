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
protocol for IPv4, zone); a fragment wholly inside a run of data already received is a duplicate,
dropped, and the queue kept; an overlapping one, a last fragment that disagrees with the known end, data past a known end, an empty fragment,
or a datagram longer than 65535 bytes drops the whole datagram (IPv6 drops just the fragment on
length errors); an incomplete datagram expires 30 s (IPv4, net.ipv4.ipfrag_time) or 60 s (IPv6,
nf_conntrack_frag6_timeout) after its first fragment.  Bounded memory: FRAG_SLOTS queues of at most
FRAG_MAX_RUNS runs each (the kernel bounds memory in bytes instead); a new datagram with no room is
dropped, as the kernel drops fragments above its memory threshold.  Checksums of reassembled
datagrams are not checked.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from fastct._types cimport *
from fastct._parse cimport parse_l4

cdef enum:
    FRAG_SLOTS = 1024         # datagrams being reassembled at once (a power of two)
    FRAG_WINDOW = 16          # slots looked at from a datagram's home slot
    FRAG_MAX_RUNS = 128       # runs of contiguous fragments kept per datagram
    FRAG_L4_SAVE = 192        # bytes of the datagram's data kept (its transport header)

# Results of frag_insert (kernel inet_frag_queue_insert).
cdef enum:
    FI_OK = 0
    FI_DUP = 1                # inside a run already received: this fragment is dropped
    FI_OVERLAP = 2            # overlaps partly: the whole datagram is dropped
    FI_FULL = 3               # too many runs (fastct's bound)

cdef struct frag_q:
    uint64_t k[4]             # source and destination as in pkt_meta.k
    int64_t expires           # 0: slot free
    uint32_t id
    uint32_t len              # highest end seen (kernel q.len); the total once the last arrived
    uint32_t meat             # data bytes received (runs never overlap)
    uint16_t zone
    uint8_t l3
    uint8_t proto             # IPv4: protocol field (part of the key); IPv6: from the first fragment
    uint8_t have_last
    uint8_t have_first
    uint8_t hoplimit
    uint8_t nruns
    uint8_t tail              # the run the last appended fragment belongs to (kernel fragments_tail)
    uint8_t _pad
    uint16_t unfrag           # from the first fragment: bytes before the data
    uint16_t l4off            # from the first fragment: transport header offset in the data
    uint16_t short_at         # data bytes below this were all captured (of the first FRAG_L4_SAVE)
    uint32_t run_start[FRAG_MAX_RUNS]
    uint32_t run_end[FRAG_MAX_RUNS]
    uint8_t data[FRAG_L4_SAVE]

cdef inline uint64_t _frag_hash(const pkt_meta *m, uint8_t l3, uint16_t zone, const uint64_t *seed) noexcept nogil:
    # The key is (source, destination, id, zone) and for IPv4 the protocol, which is matched but not
    # hashed (an IPv6 first fragment knows its transport protocol, the others do not).
    return fastct_hash5(m.k[0], m.k[1], m.k[2], m.k[3],
                        <uint64_t>m.frag_id << 32 | <uint64_t>zone << 16 | l3, seed)

cdef inline bint _frag_match(const frag_q *q, const pkt_meta *m, uint16_t zone, uint8_t l3) noexcept nogil:
    return q.expires != 0 and q.id == m.frag_id and q.zone == zone and q.l3 == l3 and \
        q.k[0] == m.k[0] and q.k[1] == m.k[1] and q.k[2] == m.k[2] and q.k[3] == m.k[3] and \
        (l3 == L3_IPV6 or q.proto == m.proto)

cdef inline void _frag_drop(pkt_meta *m, uint8_t reason) noexcept nogil:
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

cdef inline uint32_t _ipv6_first_needs(uint8_t proto) noexcept nogil:
    if proto == IP_PROTO_TCP:
        return 20
    if proto == IP_PROTO_UDP or proto == IP_PROTO_ICMP6:
        return 8
    return 1

cdef inline void _pass_through(pkt_meta *m) noexcept nogil:
    """An IPv6 first fragment the kernel lets through unreassembled: tracked on its own header,
    counted at its own length (Fragment header included)."""
    m.kind = PK_TRACK
    parse_l4(m.l4, 0, m.l4len, m.l4cap, m.proto, L3_IPV6, m)
    m.k[4] |= <uint64_t>L3_IPV6 << 48

cdef inline int frag_insert(frag_q *q, uint32_t start, uint32_t stop) noexcept nogil:
    """Record data [start, stop) as the kernel's inet_frag_queue_insert does: fragments appended at
    the end of the last run extend it; a fragment wholly inside a run is a duplicate; any other
    overlap condemns the datagram."""
    cdef uint32_t k, tail_end
    if q.nruns > 0:
        tail_end = q.run_end[q.tail]
        if tail_end < stop:
            if start < tail_end:
                return FI_OVERLAP
            if start == tail_end:
                q.run_end[q.tail] = stop
                return FI_OK
        else:
            for k in range(q.nruns):
                if stop <= q.run_start[k] or start >= q.run_end[k]:
                    continue
                if start >= q.run_start[k] and stop <= q.run_end[k]:
                    return FI_DUP
                return FI_OVERLAP
    if q.nruns >= FRAG_MAX_RUNS:
        return FI_FULL
    q.run_start[q.nruns] = start
    q.run_end[q.nruns] = stop
    if q.nruns == 0 or stop > q.run_end[q.tail]:
        q.tail = q.nruns
    q.nruns += 1
    return FI_OK

cdef inline void frag_handle(ct_table *t, frag_q *qs, pkt_meta *m, uint16_t zone,
                             uint8_t *scratch) noexcept nogil:
    """Take one fragment (m.kind == PK_FRAG).  Leaves m as PK_HELD (kept for later), PK_INVALID
    with PF_FRAG_DROP (dropped), or the whole datagram ready to track (PK_TRACK, its first bytes
    copied into `scratch`, which must hold FRAG_L4_SAVE bytes)."""
    cdef uint8_t l3 = <uint8_t>(m.k[4] >> 48)
    cdef uint64_t h = _frag_hash(m, l3, zone, t.seed)
    cdef uint32_t i, k, home = <uint32_t>(h & (FRAG_SLOTS - 1))
    cdef frag_q *q = NULL
    cdef frag_q *free_q = NULL
    cdef uint32_t start = m.frag_off, stop = m.frag_off + m.frag_len
    cdef bint last = not (m.pflags & PF_FRAG_MORE)
    cdef const int64_t *to = t.timeouts
    cdef const uint8_t *data
    cdef uint32_t captured, lim, l4len, l4cap, iplen, unfrag
    cdef uint64_t k0, k1, k2, k3
    cdef uint8_t proto, hoplimit, pol
    cdef int ins
    if t.zone_policy != NULL:
        pol = t.zone_policy[zone]
        if pol:
            to = t.policies + (pol - 1) * TO_N
    if l3 == L3_IPV6 and stop > 65535:
        _frag_drop(m, R_FRAG_BAD); return          # kernel: -EINVAL, the queue is kept
    if l3 == L3_IPV6 and start == 0 and m.l4len < _ipv6_first_needs(m.proto):
        # RFC 8200 4.5 (kernel ipv6frag_thdr_truncated): a first fragment without the whole
        # transport header is not queued but passed on as it is; the tracker then finds the
        # header short.
        _pass_through(m)
        return
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
            _frag_drop(m, R_FRAG_NO_ROOM); return
        q = free_q
        memset(q, 0, sizeof(frag_q) - sizeof(q.run_start) - sizeof(q.run_end) - sizeof(q.data))
        q.k[0] = m.k[0]; q.k[1] = m.k[1]; q.k[2] = m.k[2]; q.k[3] = m.k[3]
        q.id = m.frag_id
        q.zone = zone
        q.l3 = l3
        q.proto = m.proto
        q.short_at = FRAG_L4_SAVE
        q.expires = m.now + (to[TO_FRAG4] if l3 == L3_IPV4 else to[TO_FRAG6])
    # Where this fragment fits (kernel ip_frag_queue / nf_ct_frag6_queue).  IPv4 drops the whole
    # datagram on any inconsistency; IPv6 drops the fragment and keeps the queue.
    if last:
        if stop < q.len or (q.have_last and stop != q.len):
            if l3 == L3_IPV4:
                _frag_free(q)
            _frag_drop(m, R_FRAG_BAD); return
        q.have_last = 1
        q.len = stop
    else:
        if stop & 7:
            if l3 == L3_IPV6:
                # Not a multiple of 8 bytes: the kernel forgets the datagram and lets this
                # fragment through as it is; the first one is tracked on its own header.
                _frag_free(q)
                if start != 0:
                    m.kind = PK_INVALID
                    m.reason = R_FRAG_UNALIGNED
                    return
                _pass_through(m)
                return
            stop &= ~7U                            # IPv4 trims it
        if stop > q.len:
            if q.have_last:
                if l3 == L3_IPV4:
                    _frag_free(q)
                _frag_drop(m, R_FRAG_BAD); return
            q.len = stop
    if stop <= start:
        if l3 == L3_IPV4:
            _frag_free(q)
        _frag_drop(m, R_FRAG_BAD); return
    ins = frag_insert(q, start, stop)
    if ins == FI_DUP:
        _frag_drop(m, R_FRAG_DUP); return
    if ins != FI_OK:
        _frag_free(q)
        _frag_drop(m, R_FRAG_OVERLAP if ins == FI_OVERLAP else R_FRAG_TOO_MANY); return
    q.meat += stop - start
    # Keep the datagram's first bytes (its transport header), from whichever fragment has them.
    data = m.l4 - m.frag_l4off
    captured = m.l4cap + m.frag_l4off
    if start < FRAG_L4_SAVE:
        lim = stop if stop < FRAG_L4_SAVE else FRAG_L4_SAVE
        if start + captured < lim:
            if start + captured < q.short_at:
                q.short_at = <uint16_t>(start + captured)
            lim = start + captured
        if lim > start:
            memcpy(q.data + start, data, lim - start)
    if start == 0:
        q.have_first = 1
        q.unfrag = m.frag_unfrag
        q.l4off = m.frag_l4off
        q.proto = m.proto
        q.hoplimit = m.hoplimit
    if not (q.have_last and q.have_first and q.meat == q.len):
        m.kind = PK_HELD
        return
    # Complete: the datagram, tracked as one packet of its whole length.
    unfrag = q.unfrag
    iplen = unfrag + q.len
    k0 = q.k[0]; k1 = q.k[1]; k2 = q.k[2]; k3 = q.k[3]
    proto = q.proto
    hoplimit = q.hoplimit
    l4len = q.len - q.l4off if q.len > q.l4off else 0
    lim = q.short_at if q.short_at < q.len else q.len
    l4cap = lim - q.l4off if lim > q.l4off else 0
    if l4cap > l4len:
        l4cap = l4len
    if l4cap:
        memcpy(scratch, q.data + q.l4off, l4cap)
    _frag_free(q)
    if l3 == L3_IPV4 and iplen > 65535:
        _frag_drop(m, R_FRAG_BAD); return           # kernel ip_frag_reasm: oversized
    t.stats[ST_FRAG_REASSEMBLED] += 1
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
    parse_l4(scratch, 0, l4len, l4cap, proto, l3, m)
    m.k[4] |= <uint64_t>l3 << 48
