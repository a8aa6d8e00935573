# cython: language_level=3
"""Stage 3: the open-addressing index over the dense entry array.

Slots are uint64: the upper 32 bits of the entry's hash (the tag) and entry number + 1 (0 = empty).
The home slot is tag & mask, so a slot alone says where it belongs: deletion shifts the following
slots back (no tombstones) and growth re-places slots without touching entries.  Linear probing;
an insert never places a slot more than max_probe past its home, so lookups stop there too.
Entries stay dense (entries[0:n] are all in use): deleting one moves the last entry into its place,
which is what makes `entries()` a zero-copy view.
"""
from libc.stdint cimport uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy
from fastct._types cimport *
from fastct._flowkey cimport key_eq_orig, key_eq_reply, entry_hash

cdef inline int32_t table_find(ct_table *t, pkt_meta *m) noexcept nogil:
    """Entry of the packet's connection (either direction, sets m.dir) or -1."""
    cdef uint64_t tag = m.hash >> 32
    cdef uint64_t i = tag & t.mask
    cdef uint64_t s
    cdef uint32_t n = 0
    cdef ct_entry *e
    while True:
        s = t.slots[i]
        if s == 0:
            break
        if (s >> 32) == tag:
            e = &t.e[(s & 0xFFFFFFFFULL) - 1]
            if key_eq_orig(e, m):
                m.dir = DIR_ORIGINAL
                t.stats[ST_PROBES] += n + 1
                return <int32_t>((s & 0xFFFFFFFFULL) - 1)
            if key_eq_reply(e, m):
                m.dir = DIR_REPLY
                t.stats[ST_PROBES] += n + 1
                return <int32_t>((s & 0xFFFFFFFFULL) - 1)
        n += 1
        if n > t.max_probe:
            break
        i = (i + 1) & t.mask
    t.stats[ST_PROBES] += n + 1
    return -1

cdef inline int32_t table_candidate(const ct_table *t, uint64_t hash) noexcept nogil:
    """The entry of the first slot whose tag matches (the likely hit), or -1; reads slots only."""
    cdef uint64_t tag = hash >> 32
    cdef uint64_t i = tag & t.mask
    cdef uint64_t s
    cdef uint32_t n = 0
    while n <= t.max_probe:
        s = t.slots[i]
        if s == 0:
            return -1
        if (s >> 32) == tag:
            return <int32_t>((s & 0xFFFFFFFFULL) - 1)
        n += 1
        i = (i + 1) & t.mask
    return -1

cdef inline int slot_insert(ct_table *t, uint64_t hash, uint32_t idx) noexcept nogil:
    """Place entry idx in the index; -1 when the chain from its home is already max_probe long."""
    cdef uint64_t tag = hash >> 32
    cdef uint64_t i = tag & t.mask
    cdef uint32_t d = 0
    while t.slots[i] != 0:
        d += 1
        if d > t.max_probe:
            return -1
        i = (i + 1) & t.mask
    t.slots[i] = (tag << 32) | (<uint64_t>idx + 1)
    if d > t.stats[ST_PROBE_MAX]:
        t.stats[ST_PROBE_MAX] = d
    return 0

cdef inline uint64_t slot_of(ct_table *t, uint64_t hash, uint32_t idx) noexcept nogil:
    """Position of the slot that holds entry idx (which must be indexed)."""
    cdef uint64_t i = (hash >> 32) & t.mask
    while (t.slots[i] & 0xFFFFFFFFULL) != <uint64_t>idx + 1:
        i = (i + 1) & t.mask
    return i

cdef inline void slot_delete_at(ct_table *t, uint64_t i) noexcept nogil:
    """Empty slot i and shift later members of the cluster back so every lookup still reaches them."""
    cdef uint64_t j = i, home, s
    while True:
        j = (j + 1) & t.mask
        s = t.slots[j]
        if s == 0:
            break
        home = (s >> 32) & t.mask
        # s may move into the hole at i if i lies cyclically between its home and j.
        if ((j - home) & t.mask) >= ((j - i) & t.mask):
            t.slots[i] = s
            i = j
    t.slots[i] = 0

cdef inline void entry_forget(ct_table *t, uint32_t idx) noexcept nogil:
    """Drop entry idx, which is not in the index, moving the last entry into its place."""
    cdef uint32_t last = t.n - 1
    cdef uint64_t pos
    if idx != last:
        pos = slot_of(t, entry_hash(&t.e[last], t.seed), last)
        memcpy(&t.e[idx], &t.e[last], sizeof(ct_entry))
        memcpy(&t.cold[idx], &t.cold[last], sizeof(ct_cold))
        t.slots[pos] = (t.slots[pos] & 0xFFFFFFFF00000000ULL) | (<uint64_t>idx + 1)
    t.n = last

cdef inline void entry_remove(ct_table *t, uint32_t idx) noexcept nogil:
    """Delete entry idx from the index and the array, moving the last entry into its place."""
    slot_delete_at(t, slot_of(t, entry_hash(&t.e[idx], t.seed), idx))
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
        if t.e[t.sweep_pos].expires <= now:
            entry_remove(t, t.sweep_pos)    # the moved-in entry is looked at next
            removed += 1
        else:
            t.sweep_pos += 1
    t.stats[ST_EXPIRED] += removed
    return removed

cdef inline int32_t reclaim_dead(ct_table *t, int64_t now, uint32_t budget) noexcept nogil:
    """Find a dead entry (looking at up to `budget` from the sweep cursor), take it out of the index
    and return its number for reuse in place; -1 if none was found."""
    cdef uint32_t k
    if budget > t.n:
        budget = t.n
    for k in range(budget):
        if t.sweep_pos >= t.n:
            t.sweep_pos = 0
        if t.e[t.sweep_pos].expires <= now:
            slot_delete_at(t, slot_of(t, entry_hash(&t.e[t.sweep_pos], t.seed), t.sweep_pos))
            t.stats[ST_EXPIRED] += 1
            return <int32_t>t.sweep_pos
        t.sweep_pos += 1
    return -1

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

cdef inline void slots_rehash(const uint64_t *old, uint64_t old_n, uint64_t *new, uint64_t new_mask) noexcept nogil:
    """Re-place every slot of `old` into the empty `new` by its tag (entries are not read)."""
    cdef uint64_t i, j, s
    for i in range(old_n):
        s = old[i]
        if s != 0:
            j = (s >> 32) & new_mask
            while new[j] != 0:
                j = (j + 1) & new_mask
            new[j] = s
