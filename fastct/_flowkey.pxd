# cython: language_level=3
"""Stage 2: the tuple as seen -> the keyed, direction-independent hash; comparing a packet with an entry.

One index slot serves both directions of a connection: the hash is taken over the tuple put in a
fixed order (the lower address first, with the matching ports or ICMP type form), so a packet and
its reply hash alike, and the probe then compares the entry's original tuple against the packet's
tuple (original direction) or its reverse (reply direction).
Any change to the key layout in _types.ct_entry must be reflected in key_hash and key_eq_* here.
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy
from fastct._types cimport *
from fastct._parse cimport tuple_reverse_k4

cdef extern from "compat.h" nogil:
    # The fixed-order keyed hash (include/compat.h, forced inline).
    uint64_t key_hash "fastct_key_hash"(uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3, uint64_t k4,
                                        uint64_t rk4, const uint64_t *seed)
    # 0 original, 1 reply, -1 neither (branch-free; include/compat.h).
    int match_dir "fastct_match_dir"(const void *e, const uint64_t *k, uint64_t rk4, int nat)

cdef inline uint64_t meta_hash(const pkt_meta *m, const uint64_t *seed) noexcept nogil:
    return key_hash(m.k[0], m.k[1], m.k[2], m.k[3], m.k[4], m.rk4, seed)

cdef inline uint64_t entry_hash(const ct_entry *e, const uint64_t *seed) noexcept nogil:
    cdef const uint8_t *b = <const uint8_t *>e
    cdef uint64_t k4 = fastct_load64(b + 32)
    return key_hash(fastct_load64(b), fastct_load64(b + 8), fastct_load64(b + 16),
                    fastct_load64(b + 24), k4, tuple_reverse_k4(k4), seed)

cdef inline bint key_eq_orig(const ct_entry *e, const pkt_meta *m) noexcept nogil:
    cdef const uint8_t *b = <const uint8_t *>e
    return fastct_load64(b + 32) == m.k[4] and fastct_load64(b) == m.k[0] and \
        fastct_load64(b + 8) == m.k[1] and fastct_load64(b + 16) == m.k[2] and \
        fastct_load64(b + 24) == m.k[3]

cdef inline bint key_eq_reply(const ct_entry *e, const pkt_meta *m) noexcept nogil:
    cdef const uint8_t *b = <const uint8_t *>e
    return fastct_load64(b + 32) == m.rk4 and fastct_load64(b) == m.k[2] and \
        fastct_load64(b + 8) == m.k[3] and fastct_load64(b + 16) == m.k[0] and \
        fastct_load64(b + 24) == m.k[1]

cdef inline bint key_eq_tuple(const uint64_t *r, const pkt_meta *m) noexcept nogil:
    """The packet's tuple equals tuple r (a stored NAT reply tuple, in ct_entry's key layout)."""
    return r[4] == m.k[4] and r[0] == m.k[0] and r[1] == m.k[1] and r[2] == m.k[2] and r[3] == m.k[3]

cdef inline void key_store(ct_entry *e, const pkt_meta *m) noexcept nogil:
    memcpy(<void *>e, <const void *>m.k, 40)
