# cython: language_level=3
"""Stage 3: the open-addressing index over the dense entry array.

Slots are uint64: the upper 32 bits of the entry's hash (the tag) and entry number + 1 (0 = empty).
A connection has one slot; one whose reply tuple NAT changed has a second, at the hash of that reply
tuple, marked with SLOT_REPLY (bit 31 of the entry part), and one whose source NAT changed a third, at
the hash of its original source (zone, protocol, address, port), marked SLOT_BYSRC (bit 30): the
kernel's bysource table, to give a source already mapped the same mapping again.  So max_conns stays
below 2^30 - 1.
The home slot is tag & mask, so a slot alone says where it belongs: deletion shifts the following
slots back (no tombstones) and growth re-places slots without touching entries.  Linear probing;
an insert never places a slot more than max_probe past its home (a longer chain means a dropped
packet, counted), so a crafted flood cannot build long chains even without the hash seed.

Growth is incremental: the index doubles into a new array and the old one is emptied a few slots
per batch (migrate_step), so no batch pays for re-placing millions of slots.  While both exist,
inserts go to the new one and lookups try the new one, then the old.
Entries stay dense (entries[0:n] are all in use): deleting one moves the last entry into its place,
which is what makes `entries()` a zero-copy view.
"""
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy
from fastct._types cimport *
from fastct._flowkey cimport key_eq_orig, key_eq_reply, entry_hash, key_eq_tuple

cdef enum:
    SLOT_REPLY = 0x80000000     # the slot indexes a NAT'd connection's reply tuple
    SLOT_BYSRC = 0x40000000     # the slot indexes a source-NAT'd connection by its original source
    SLOT_ENTRY = 0x3FFFFFFF     # entry number + 1

cdef inline uint64_t bysrc_hash(const uint64_t *k, const uint64_t *seed) noexcept nogil:
    """Keyed hash of a tuple's source: zone, family, protocol, address, port (ICMP: the id)."""
    return fastct_hash5(k[0], k[1], 0x62797372, 0, k[4] & 0xFFFFFFFF0000FFFFULL, seed)

cdef inline uint32_t slot_entry(uint64_t s) noexcept nogil:
    """The entry a (non-empty) slot points to."""
    return <uint32_t>(s & SLOT_ENTRY) - 1

cdef inline bint slot_matches(ct_table *t, uint64_t s, const pkt_meta *m, uint8_t *dir) noexcept nogil:
    """Whether the packet's tuple is a tuple of the connection of slot s (whose tag matched), and
    in which direction.  A plain slot stands for the entry's original tuple and, unless NAT changed
    it, its reverse (the reply tuple); a SLOT_REPLY slot for the stored reply tuple only."""
    cdef ct_entry *e = &t.e[slot_entry(s)]
    if s & SLOT_BYSRC:
        return False            # (found only by the NAT's source lookup)
    if s & SLOT_REPLY:
        if key_eq_tuple(t.nat[slot_entry(s)].r, m):
            dir[0] = DIR_REPLY
            return True
        return False
    if key_eq_orig(e, m):
        dir[0] = DIR_ORIGINAL
        return True
    if not (e.status & IPS_NAT_MASK) and key_eq_reply(e, m):
        dir[0] = DIR_REPLY
        return True
    return False

cdef inline int32_t _find_in(ct_table *t, const uint64_t *slots, uint64_t mask, pkt_meta *m) noexcept nogil:
    cdef uint64_t tag = m.hash >> 32
    cdef uint64_t i = tag & mask
    cdef uint64_t s
    cdef uint32_t n = 1
    while True:
        s = slots[i]
        if s == 0 or n > mask:          # (an index is never full; the bound is a safety net)
            t.stats[ST_PROBES] += n
            return -1
        if (s >> 32) == tag and slot_matches(t, s, m, &m.dir):
            t.stats[ST_PROBES] += n
            return <int32_t>slot_entry(s)
        n += 1
        i = (i + 1) & mask

cdef inline int32_t table_find(ct_table *t, pkt_meta *m) noexcept nogil:
    """Entry of the packet's connection (either direction, sets m.dir) or -1."""
    cdef int32_t idx = _find_in(t, t.slots, t.mask, m)
    if idx < 0 and t.oslots != NULL:
        idx = _find_in(t, t.oslots, t.omask, m)
    return idx

cdef inline uint32_t _candidate_in(const uint64_t *slots, uint64_t mask, uint64_t hash) noexcept nogil:
    cdef uint64_t tag = hash >> 32
    cdef uint64_t i = tag & mask
    cdef uint64_t s, n = 0
    while True:
        s = slots[i]
        if s == 0 or n > mask:
            return 0
        if (s >> 32) == tag and not (s & SLOT_BYSRC):
            return <uint32_t>s
        i = (i + 1) & mask
        n += 1

cdef inline uint32_t table_candidate(const ct_table *t, uint64_t hash) noexcept nogil:
    """The entry part of the first slot whose tag matches (the likely hit: SLOT_REPLY and entry
    number + 1), or 0; reads slots only."""
    cdef uint32_t c = _candidate_in(t.slots, t.mask, hash)
    if c == 0 and t.oslots != NULL:
        c = _candidate_in(t.oslots, t.omask, hash)
    return c

cdef inline int _place(uint64_t *slots, uint64_t mask, uint64_t s, uint32_t bound) noexcept nogil:
    """Put slot value s at the first empty place from its home; -1 if that is beyond `bound`."""
    cdef uint64_t i = (s >> 32) & mask
    cdef uint32_t d = 0
    while slots[i] != 0:
        d += 1
        if d > bound:
            return -1
        i = (i + 1) & mask
    slots[i] = s
    return <int>d

cdef inline bint table_fresh(const ct_table *t, uint64_t hash) noexcept nogil:
    """Whether a slot at `hash` may have been indexed since t.fresh was last cleared (false
    positives possible, no false negatives): slots are only ever added by slot_insert, and moving
    or removing slots never makes an absent tuple findable."""
    return (t.fresh[(hash >> 6) & 7] >> (hash & 63)) & 1

cdef inline int slot_insert(ct_table *t, uint64_t hash, uint32_t idx, uint32_t kind=0) noexcept nogil:
    """Index entry idx at `hash` (kind: 0, or SLOT_REPLY for a NAT reply tuple); -1 when the chain
    from its home is already max_probe long."""
    cdef int d = _place(t.slots, t.mask, ((hash >> 32) << 32) | (<uint64_t>idx + 1) | kind, t.max_probe)
    t.fresh[(hash >> 6) & 7] |= <uint64_t>1 << (hash & 63)
    if d > <int>t.stats[ST_PROBE_MAX]:
        t.stats[ST_PROBE_MAX] = d
    return d if d < 0 else 0

cdef inline uint64_t *slot_of(ct_table *t, uint64_t hash, uint32_t idx, uint32_t kind=0) noexcept nogil:
    """The slot that holds entry idx (which must be indexed there) at `hash`, in whichever array
    holds it; kind as for slot_insert."""
    cdef uint64_t want = (<uint64_t>idx + 1) | kind
    cdef uint64_t i = (hash >> 32) & t.mask
    cdef uint64_t s
    while True:
        s = t.slots[i]
        if s == 0:
            break
        if (s & 0xFFFFFFFFULL) == want:
            return &t.slots[i]
        i = (i + 1) & t.mask
    # Not in the new array: it is still in the old one.
    i = (hash >> 32) & t.omask
    while (t.oslots[i] & 0xFFFFFFFFULL) != want:
        i = (i + 1) & t.omask
    return &t.oslots[i]

cdef inline void _delete_at(uint64_t *slots, uint64_t mask, uint64_t i) noexcept nogil:
    """Empty slot i and shift later members of its cluster back so every lookup still reaches them."""
    cdef uint64_t j = i, home, s
    while True:
        j = (j + 1) & mask
        s = slots[j]
        if s == 0:
            break
        home = (s >> 32) & mask
        # s may move into the hole at i if i lies cyclically between its home and j.
        if ((j - home) & mask) >= ((j - i) & mask):
            slots[i] = s
            i = j
    slots[i] = 0

cdef inline void slot_delete(ct_table *t, uint64_t *slot) noexcept nogil:
    if t.oslots != NULL and slot >= t.oslots and slot <= t.oslots + t.omask:
        _delete_at(t.oslots, t.omask, <uint64_t>(slot - t.oslots))
        t.ocount -= 1
    else:
        _delete_at(t.slots, t.mask, <uint64_t>(slot - t.slots))

cdef inline void zone_count_add(ct_table *t, uint16_t zone, int delta) noexcept nogil:
    """Per-zone entry counts (kept only while zone limits are set): they count entries[0:n]."""
    if t.zone_count != NULL:
        t.zone_count[zone] += <uint32_t>delta

cdef inline void nat_release(ct_table *t, uint32_t idx) noexcept nogil:
    """Forget entry idx's NAT: its reply-tuple slot and its SRC_NAT/DST_NAT bits (the _DONE bits
    stay: they say the bindings were made).  Nothing to do for other entries."""
    cdef ct_entry *e = &t.e[idx]
    if not (e.status & IPS_NAT_MASK):
        return
    slot_delete(t, slot_of(t, t.nat[idx].rhash, idx, SLOT_REPLY))
    t.nat_live -= 1
    if e.status & IPS_SRC_NAT:
        slot_delete(t, slot_of(t, bysrc_hash(<const uint64_t *>e, t.seed), idx, SLOT_BYSRC))
        t.nat_live -= 1
    e.status &= ~IPS_NAT_MASK

cdef inline void entry_unindex(ct_table *t, uint32_t idx) noexcept nogil:
    """Take entry idx out of the index (both slots of a NAT'd connection); it stays in the array."""
    nat_release(t, idx)
    slot_delete(t, slot_of(t, entry_hash(&t.e[idx], t.seed), idx))

cdef inline void _repoint(ct_table *t, uint64_t *slot, uint32_t idx) noexcept nogil:
    slot[0] = (slot[0] & 0xFFFFFFFFC0000000ULL) | (<uint64_t>idx + 1)

cdef inline void entry_forget(ct_table *t, uint32_t idx) noexcept nogil:
    """Drop entry idx, which is not in the index, moving the last entry into its place."""
    cdef uint32_t last = t.n - 1
    cdef ct_entry *l
    zone_count_add(t, t.e[idx].zone, -1)
    if idx != last:
        l = &t.e[last]
        _repoint(t, slot_of(t, entry_hash(l, t.seed), last), idx)
        if l.status & IPS_NAT_MASK:
            _repoint(t, slot_of(t, t.nat[last].rhash, last, SLOT_REPLY), idx)
            if l.status & IPS_SRC_NAT:
                _repoint(t, slot_of(t, bysrc_hash(<const uint64_t *>l, t.seed), last, SLOT_BYSRC), idx)
            memcpy(&t.nat[idx], &t.nat[last], sizeof(ct_nat))
        memcpy(&t.e[idx], l, sizeof(ct_entry))
        memcpy(&t.cold[idx], &t.cold[last], sizeof(ct_cold))
    t.n = last

cdef inline void entry_remove(ct_table *t, uint32_t idx) noexcept nogil:
    """Delete entry idx from the index and the array, moving the last entry into its place."""
    entry_unindex(t, idx)
    entry_forget(t, idx)

cdef inline uint32_t sweep_expired(ct_table *t, int64_t now, uint32_t budget) noexcept nogil:
    """Incremental expiry: look at up to `budget` entries from the cursor, deleting dead ones."""
    cdef uint32_t removed = 0
    if budget > t.n:
        budget = t.n        # one pass over a small table is enough
    while budget > 0 and t.n > 0:
        budget -= 1
        if t.sweep_pos >= t.n:
            t.sweep_pos = 0
        if t.sweep_pos + 8 < t.n:
            FASTCT_PREFETCH_R(&t.e[t.sweep_pos + 8].expires)
        if t.e[t.sweep_pos].expires <= now:
            entry_remove(t, t.sweep_pos)    # the moved-in entry is looked at next
            removed += 1
        else:
            t.sweep_pos += 1
    t.stats[ST_EXPIRED] += removed
    return removed

cdef inline int32_t reclaim_dead(ct_table *t, int64_t now, uint32_t budget, int32_t zone) noexcept nogil:
    """Find a dead entry (of `zone` unless it is -1) looking at up to `budget` from the sweep
    cursor, take it out of the index and return its number for reuse in place; -1 if none."""
    cdef uint32_t k
    if budget > t.n:
        budget = t.n
    for k in range(budget):
        if t.sweep_pos >= t.n:
            t.sweep_pos = 0
        if t.e[t.sweep_pos].expires <= now and (zone < 0 or t.e[t.sweep_pos].zone == zone):
            entry_unindex(t, t.sweep_pos)
            t.stats[ST_EXPIRED] += 1
            return <int32_t>t.sweep_pos
        t.sweep_pos += 1
    return -1

cdef enum:
    EVICTION_RANGE = 32     # index slots looked at from a new connection's home slot when full

cdef inline void prefetch_eviction(const ct_table *t, uint64_t hash) noexcept nogil:
    """Prefetch the first entries early_drop will look at (their line 0: expiry and status)."""
    cdef uint64_t i = (hash >> 32) & t.mask
    cdef uint64_t s
    cdef uint32_t k, seen = 0
    for k in range(8):
        s = t.slots[i]
        if s != 0:
            # Line 0 says whether it may go; the victim's line 1 and cold record are rewritten.
            FASTCT_PREFETCH_W(&t.e[slot_entry(s)])
            FASTCT_PREFETCH_W(<const char *>&t.e[slot_entry(s)] + 64)
            FASTCT_PREFETCH_W(&t.cold[slot_entry(s)])
            seen += 1
            if seen == 2:
                return
        i = (i + 1) & t.mask

cdef inline void _evict_at(ct_table *t, uint64_t i, int32_t idx) noexcept nogil:
    """Unindex entry idx, one of whose slots is slots[i] (the common case: its only slot)."""
    if t.e[idx].status & IPS_NAT_MASK:
        entry_unindex(t, <uint32_t>idx)
    else:
        _delete_at(t.slots, t.mask, i)

cdef inline int32_t early_drop(ct_table *t, uint64_t hash, int64_t now) noexcept nogil:
    """Table full (kernel early_drop): look at the entries indexed near the new connection's home
    slot, in order, at most EVICTION_RANGE slots (the kernel looks at 8 hash buckets in order).
    The first that is dead is taken, or else the first that is not ASSURED is evicted (counted in
    early_drop); failing both, a dead entry from the sweep cursor (bounded search).  The entry is
    taken out of the index and its number returned for reuse in place; -1 if none may go.
    The kernel deletes every non-ASSURED entry of the first bucket holding one; fastct evicts one,
    which is all a new connection needs, and stops looking there: a flood into a full table costs
    a few entry reads per packet."""
    cdef uint64_t i = (hash >> 32) & t.mask
    cdef uint64_t s
    cdef uint32_t k
    cdef int32_t idx
    for k in range(EVICTION_RANGE):
        s = t.slots[i]
        if s != 0:
            idx = <int32_t>slot_entry(s)
            if t.e[idx].expires <= now:
                _evict_at(t, i, idx)
                t.stats[ST_EXPIRED] += 1
                return idx
            if not (t.e[idx].status & IPS_ASSURED):
                _evict_at(t, i, idx)
                t.stats[ST_EARLY_DROP] += 1
                return idx
        i = (i + 1) & t.mask
    return reclaim_dead(t, now, 64, -1)

cdef inline uint32_t sweep_all(ct_table *t, int64_t now) noexcept nogil:
    """Delete every entry dead at `now`."""
    cdef uint32_t i = 0, removed = 0
    while i < t.n:
        if t.e[i].expires <= now:
            entry_remove(t, i)
            removed += 1
        else:
            i += 1
    t.sweep_pos = 0
    t.stats[ST_EXPIRED] += removed
    return removed

cdef inline bint migrate_step(ct_table *t, uint64_t budget) noexcept nogil:
    """Move slots from the old index to the new one, looking at up to `budget` old slots.
    Returns True when the old index is empty (and detached).  Deleting with backward shift only
    moves slots to positions at or after the cursor, so one pass from 0 empties the array."""
    cdef uint64_t s
    while t.oslots != NULL and budget > 0:
        budget -= 1
        if t.ocount == 0:
            t.oslots = NULL
            break
        if t.opos > t.omask:
            t.opos = 0          # cannot happen (see above), but never detach a non-empty index
        s = t.oslots[t.opos]
        if s == 0:
            t.opos += 1
            continue
        _place(t.slots, t.mask, s, 0xFFFFFFFFU)
        _delete_at(t.oslots, t.omask, t.opos)
        t.ocount -= 1           # the cursor stays: a later slot may have shifted into it
    if t.oslots != NULL and t.ocount == 0:
        t.oslots = NULL
    return t.oslots == NULL
