# cython: language_level=3
"""The hot extension: one nogil loop per batch chaining parse -> key -> index -> protocol -> outputs.

Stage by stage over sub-batches of SUB packets (measured faster than a rolling pipeline on this
kind of machine, ../shared/PERFORMANCE.md): parse and hash every packet (prefetching headers ahead),
prefetch their index slots, probe and prefetch the entries, then run the protocol updates in
packet order.  The table is only mutated in the last stage, so a flow that is new twice in one
sub-batch is found by a re-probe after the first insert and inserted once.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memset, memcpy
import numpy as np
cimport numpy as cnp

from fastct._types cimport *
from fastct._parse cimport (parse_frame, parse_frame_general, parse_fast_tcp4, tuple_reverse_k4, link_type_handled,
                            icmp_inverse_type, LT_ETHERNET)
from fastct._flowkey cimport meta_hash, key_store, entry_hash, key_eq_orig, key_eq_reply, key_eq_tuple
from fastct._table cimport (table_find, table_fresh, table_candidate, slot_insert, sweep_expired, sweep_all,
                            reclaim_dead, early_drop, entry_forget, entry_unindex, migrate_step,
                            zone_count_add, prefetch_eviction, slot_delete, slot_of, slot_entry,
                            nat_release, SLOT_REPLY, SLOT_BYSRC, SLOT_ENTRY, bysrc_hash)
from fastct._flowkey cimport key_hash, match_dir
from fastct._nat cimport nat_choice, nat_setup
from fastct._rules cimport rs_ctx, rs_has, rs_hook, rs_iif, CTS_NEW, CTS_ESTABLISHED, CTS_RELATED, CTS_INVALID, CTS_UNTRACKED
from fastct._rewrite cimport nat_rewrite, nat_state_bits
from fastct._verdict cimport V_ACCEPT, V_INVALID, V_REOPEN
from fastct._proto cimport proto_new, proto_packet
from fastct._tcp cimport tcp_established_ack
from fastct._checksum cimport check_sums, ipv4_header_ok
from fastct._dccp cimport dccp_key
from fastct._frag cimport frag_q, frag_handle, frag_sweep, FRAG_SLOTS, FRAG_L4_SAVE

cnp.import_array()

cdef enum:
    SUB = 64                  # packets per stage pass
    # How far ahead packet headers are prefetched: into L2 far ahead, into L1 just before.  With
    # one prefetch 16 packets ahead, the parse stage waited for headers once the table no longer fit
    # in L2 (100k connections: 19 -> 14.5 ns per packet with the two, 1M: 21 -> 17.5 ns).
    HDR_PREFETCH_L2 = 128
    HDR_PREFETCH = 8
    # An entry's second line is prefetched by stage 3 this many packets ahead (stage 2 fetches it
    # only for the first ones): the misses of stage 2, which computes little, then stall it less,
    # and stage 3 has them in time (1M connections: ~2 % more packets per second).
    LINE1_AHEAD = 24
    MAX_PROBE = 512           # probe length bound (an insert that would go further is dropped)
    MIN_SLOTS = 1024

cdef ct_entry _entry_proto
cdef ct_cold _cold_proto
ENTRY_DTYPE = np.asarray(<ct_entry[:1]>(&_entry_proto)).dtype
COLD_DTYPE = np.asarray(<ct_cold[:1]>(&_cold_proto)).dtype
cdef nat_target _nat_target_proto
NAT_TARGET_DTYPE = np.asarray(<nat_target[:1]>(&_nat_target_proto)).dtype
cdef rs_match _rs_match_proto
RS_MATCH_DTYPE = np.asarray(<rs_match[:1]>(&_rs_match_proto)).dtype
cdef rs_irange _rs_irange_proto
RS_IRANGE_DTYPE = np.asarray(<rs_irange[:1]>(&_rs_irange_proto)).dtype
cdef rs_arange _rs_arange_proto
RS_ARANGE_DTYPE = np.asarray(<rs_arange[:1]>(&_rs_arange_proto)).dtype
cdef rs_rule _rs_rule_proto
RS_RULE_DTYPE = np.asarray(<rs_rule[:1]>(&_rs_rule_proto)).dtype
cdef rs_chain _rs_chain_proto
RS_CHAIN_DTYPE = np.asarray(<rs_chain[:1]>(&_rs_chain_proto)).dtype
cdef rs_route _rs_route_proto
RS_ROUTE_DTYPE = np.asarray(<rs_route[:1]>(&_rs_route_proto)).dtype
cdef ct_nat _nat_proto
NAT_DTYPE = np.asarray(<ct_nat[:1]>(&_nat_proto)).dtype
MAX_CONNS_LIMIT = 0x3FFFFFFE          # entry numbers + 1 must fit the index slot's 30 bits
ENTRY_SIZE = sizeof(ct_entry)
COLD_SIZE = sizeof(ct_cold)


def entry_layout():
    """Field offsets of ct_entry as the C compiler laid it out (tests compare them with ENTRY_DTYPE)."""
    cdef ct_entry e
    cdef char *b = <char *>&e
    return {
        "src": <char *>&e.src - b, "dst": <char *>&e.dst - b, "sport": <char *>&e.sport - b,
        "dport": <char *>&e.dport - b, "zone": <char *>&e.zone - b, "l3": <char *>&e.l3 - b,
        "proto": <char *>&e.proto - b, "expires": <char *>&e.expires - b,
        "status": <char *>&e.status - b, "state": <char *>&e.state - b,
        "retrans": <char *>&e.retrans - b, "td_end": <char *>&e.td_end - b,
        "last_seq": <char *>&e.last_seq - b, "packets_lo": <char *>&e.packets_lo - b,
        "bytes_lo": <char *>&e.bytes_lo - b, "last_seen": <char *>&e.last_seen - b,
        "td_maxend": <char *>&e.td_maxend - b, "td_maxwin": <char *>&e.td_maxwin - b,
        "td_maxack": <char *>&e.td_maxack - b, "last_ack": <char *>&e.last_ack - b,
        "last_end": <char *>&e.last_end - b, "last_win": <char *>&e.last_win - b,
        "td_scale": <char *>&e.td_scale - b, "td_flags": <char *>&e.td_flags - b,
        "last_flags": <char *>&e.last_flags - b, "last_diw": <char *>&e.last_diw - b,
        "__size__": sizeof(ct_entry),
    }


def cold_layout():
    cdef ct_cold c
    cdef char *b = <char *>&c
    return {
        "start": <char *>&c.start - b, "packets_hi": <char *>&c.packets_hi - b,
        "bytes_hi": <char *>&c.bytes_hi - b, "mark": <char *>&c.mark - b, "aux": <char *>&c.aux - b,
        "__size__": sizeof(ct_cold),
    }


def ruleset_layouts():
    """Field offsets of the ruleset structs as the C compiler laid them out (tests compare them with
    the dtypes derived from them: NAT_TARGET_DTYPE, RS_*_DTYPE)."""
    cdef nat_target n
    cdef rs_match mt
    cdef rs_irange ir
    cdef rs_arange ar
    cdef rs_rule r
    cdef rs_chain c
    cdef rs_route rt
    return {
        "nat_target": {"to_min": <char *>&n.to_min - <char *>&n, "to_max": <char *>&n.to_max - <char *>&n,
                       "to_port_lo": <char *>&n.to_port_lo - <char *>&n,
                       "to_port_hi": <char *>&n.to_port_hi - <char *>&n,
                       "action": <char *>&n.action - <char *>&n, "flags": <char *>&n.flags - <char *>&n,
                       "l3": <char *>&n.l3 - <char *>&n, "_pad": <char *>&n._pad - <char *>&n,
                       "__size__": sizeof(nat_target)},
        "rs_match": {"key": <char *>&mt.key - <char *>&mt, "neg": <char *>&mt.neg - <char *>&mt,
                     "l3": <char *>&mt.l3 - <char *>&mt, "_pad": <char *>&mt._pad - <char *>&mt,
                     "mask": <char *>&mt.mask - <char *>&mt, "first": <char *>&mt.first - <char *>&mt,
                     "count": <char *>&mt.count - <char *>&mt, "__size__": sizeof(rs_match)},
        "rs_irange": {"lo": <char *>&ir.lo - <char *>&ir, "hi": <char *>&ir.hi - <char *>&ir,
                      "__size__": sizeof(rs_irange)},
        "rs_arange": {"lo": <char *>&ar.lo - <char *>&ar, "hi": <char *>&ar.hi - <char *>&ar,
                      "__size__": sizeof(rs_arange)},
        "rs_rule": {"m_first": <char *>&r.m_first - <char *>&r, "m_count": <char *>&r.m_count - <char *>&r,
                    "stmts": <char *>&r.stmts - <char *>&r, "ct_mark": <char *>&r.ct_mark - <char *>&r,
                    "meta_mark": <char *>&r.meta_mark - <char *>&r, "target": <char *>&r.target - <char *>&r,
                    "zone": <char *>&r.zone - <char *>&r, "verdict": <char *>&r.verdict - <char *>&r,
                    "helper": <char *>&r.helper - <char *>&r, "_pad": <char *>&r._pad - <char *>&r,
                    "__size__": sizeof(rs_rule)},
        "rs_chain": {"first": <char *>&c.first - <char *>&c, "count": <char *>&c.count - <char *>&c,
                     "policy": <char *>&c.policy - <char *>&c, "l3": <char *>&c.l3 - <char *>&c,
                     "_pad": <char *>&c._pad - <char *>&c,
                     "__size__": sizeof(rs_chain)},
        "rs_route": {"prefix": <char *>&rt.prefix - <char *>&rt, "l3": <char *>&rt.l3 - <char *>&rt,
                     "plen": <char *>&rt.plen - <char *>&rt, "oif": <char *>&rt.oif - <char *>&rt,
                     "__size__": sizeof(rs_route)},
    }


def names():
    """The enumerations of include/ct_defs.h, for the Python layer (the one source of these names)."""
    cdef int i
    return {
        "ct_state": [(fastct_ct_state_names[i].decode(), fastct_ct_state_values[i])
                     for i in range(FASTCT_N_CT_STATE_BITS)],
        "status": [(fastct_status_names[i].decode(), fastct_status_values[i])
                   for i in range(FASTCT_N_STATUS_BITS)],
        "tcp_states": [fastct_tcp_state_names[i].decode() for i in range(TCP_N_STATES)],
        "sctp_states": [fastct_sctp_state_names[i].decode() for i in range(SCTP_N_STATES)],
        "dccp_states": [fastct_dccp_state_names[i].decode() for i in range(DCCP_N_STATES)],
        "timeouts": [(fastct_timeout_names[i].decode(), fastct_timeout_defaults[i]) for i in range(TO_N)],
        "reasons": [fastct_reason_names[i].decode() for i in range(R_N)],
        "stats": [fastct_stat_names[i].decode() for i in range(ST_N)],
        "nat_actions": [(fastct_nat_action_names[i].decode(), fastct_nat_action_values[i])
                        for i in range(FASTCT_N_NAT_ACTIONS)],
        "nat_flags": [(fastct_nat_flag_names[i].decode(), fastct_nat_flag_values[i])
                      for i in range(FASTCT_N_NAT_FLAGS)],
        "nat_flag_ifaddr": NAT_F_IFADDR,
        "rs_hooks": [(fastct_rs_hook_names[i].decode(), fastct_rs_hook_values[i])
                     for i in range(FASTCT_RS_N_HOOKS)],
        "rs_keys": [(fastct_rs_key_names[i].decode(), fastct_rs_key_values[i])
                    for i in range(FASTCT_RS_N_KEYS)],
        "rs_verdicts": [(fastct_rs_verdict_names[i].decode(), fastct_rs_verdict_values[i])
                        for i in range(FASTCT_RS_N_VERDICTS)],
        "rs_stmts": [(fastct_rs_stmt_names[i].decode(), fastct_rs_stmt_values[i])
                     for i in range(FASTCT_RS_N_STMTS)],
        "icmp_inverse": {p: {t: icmp_inverse_type(p, t) for t in range(256)
                             if icmp_inverse_type(p, t) != 0xFF}
                         for p in (IP_PROTO_ICMP, IP_PROTO_ICMP6)},
    }


cdef object _aligned_empty(Py_ssize_t nbytes, Py_ssize_t align):
    """A zeroed-on-demand uint8 buffer whose data starts on an `align` boundary.  Large buffers come
    from mmap, so pages nobody touched cost no memory: max_conns can be sized generously."""
    cdef object raw = np.empty(nbytes + align, dtype=np.uint8)
    cdef Py_ssize_t addr = raw.ctypes.data
    cdef Py_ssize_t off = (align - addr % align) % align   # (cdivision: keep operands positive)
    return raw[off:off + nbytes]


cdef inline int32_t _make_room(ct_table *t, const pkt_meta *m) noexcept nogil:
    """An unindexed entry for a new connection in a full table, or -1."""
    if t.early_drop:
        return early_drop(t, m.hash, m.now)
    return reclaim_dead(t, m.now, 64, -1)

cdef inline void _stamp(ct_table *t, int64_t ts, pkt_meta *m) noexcept nogil:
    """A packet's time: its timestamp, but never older than the newest seen before it (such a
    packet is counted).  No entry found, no direction yet."""
    if ts >= t.now:
        t.now = ts
    else:
        t.stats[ST_TIME_BACKWARDS] += 1
    m.now = t.now
    m.idx = -1
    m.dir = 0

def clock():
    """The batch loop's stage clock now (ticks: the x86 time-stamp counter, the arm64 virtual
    counter, else nanoseconds); calibrate against time.perf_counter()."""
    return clock_ticks()


cdef inline bint _has_reply_tuple(const pkt_meta *m) noexcept nogil:
    """False for ICMP types without a reply type: the kernel cannot invert their tuple, so it never
    allocates a connection for them (and never makes room)."""
    if m.proto == IP_PROTO_ICMP or m.proto == IP_PROTO_ICMP6:
        return icmp_inverse_type(m.proto, <uint8_t>(m.k[4] >> 24)) != 0xFF
    return True

cdef inline void _drop(ct_table *t, uint8_t *o_state, int32_t *o_entry, uint8_t *o_dir, uint32_t i,
                       uint8_t reason) noexcept nogil:
    """A packet the table has no room for: dropped (kernel drop++), ct_state inv."""
    o_state[i] = CS_INV | CS_TRK
    o_entry[i] = -1
    o_dir[i] = 0
    t.stats[ST_DROP] += 1
    t.reasons[reason] += 1

cdef inline bint _index_nat(ct_table *t, uint32_t idx) noexcept nogil:
    """The NAT slots of new connection idx (its status says which): its reply tuple's and, for
    source NAT, its source's.  All or none: False (nothing indexed, NAT bits cleared) when a chain
    is too long."""
    cdef ct_entry *e = &t.e[idx]
    if slot_insert(t, t.nat[idx].rhash, idx, SLOT_REPLY) < 0:
        e.status &= ~IPS_NAT_MASK
        return False
    t.nat_live += 1
    if e.status & IPS_SRC_NAT:
        if slot_insert(t, bysrc_hash(<const uint64_t *>e, t.seed), idx, SLOT_BYSRC) < 0:
            slot_delete(t, slot_of(t, t.nat[idx].rhash, idx, SLOT_REPLY))
            t.nat_live -= 1
            e.status &= ~IPS_NAT_MASK
            return False
        t.nat_live += 1
    return True

cdef inline void _outer_key(const pkt_meta *m, uint64_t *k) noexcept nogil:
    """The tuple of an ICMP error's outer header (addresses, ICMP, zone): what a notrack rule,
    which sees the packet before conntrack does, matches it by."""
    cdef const uint8_t *l3 = m.l3
    cdef uint8_t v = (m.k[4] >> 48) & 0xFF
    if v == L3_IPV4:
        k[0] = fastct_load32(l3 + 12); k[1] = 0
        k[2] = fastct_load32(l3 + 16); k[3] = 0
        k[4] = (m.k[4] & 0x00FFFFFF00000000ULL) | (<uint64_t>IP_PROTO_ICMP << 56)
    else:
        k[0] = fastct_load64(l3 + 8); k[1] = fastct_load64(l3 + 16)
        k[2] = fastct_load64(l3 + 24); k[3] = fastct_load64(l3 + 32)
        k[4] = (m.k[4] & 0x00FFFFFF00000000ULL) | (<uint64_t>IP_PROTO_ICMP6 << 56)

cdef inline void _ctx_init(rs_ctx *c, const ct_table *t, const pkt_meta *m, uint16_t iface,
                           uint32_t cts, bint has_ct) noexcept nogil:
    """A ruleset walk's view of packet m (its tuple is set by the caller)."""
    c.iif = rs_iif(t, iface)
    c.oif = -1                  # (prerouting: routing has not happened yet)
    c.ct_state = cts
    c.ct_mark = 0
    c.meta_mark = m.meta_mark
    c.iplen = m.iplen
    c.has_ct = has_ct
    c.ct_dir = m.dir
    c.notrack = 0
    c.mark_set = 0
    c.zone_set = 0
    c.helper = 0
    c.zone = 0
    c.nat = -1

cdef inline void _packet_chains(ct_table *t, const pkt_meta *m, uint16_t iface, int32_t idx,
                                uint32_t cts, const uint64_t *k) noexcept nogil:
    """The per-packet chains after conntrack for a packet that started no connection: those before
    dnat see tuple k as it came, those after it the destination prerouting's NAT gave it (for a
    translated connection, the other direction's source).  idx: its connection, or -1 (invalid,
    untracked).  A `ct mark set` there marks the connection."""
    cdef rs_ctx c
    cdef uint64_t view[5]
    cdef ct_entry *e
    cdef const uint64_t *other
    cdef uint8_t proto
    _ctx_init(&c, t, m, iface, cts, idx >= 0)
    if idx >= 0:
        c.ct_mark = t.cold[idx].mark
    c.k = k
    rs_hook(t, HP_PRE, &c)
    if rs_has(t, HP_LATE):
        if idx >= 0 and (t.e[idx].status & IPS_NAT_MASK) and not (m.pflags & PF_RELATED):
            memcpy(view, k, 40)
            e = &t.e[idx]
            if m.dir == DIR_ORIGINAL:
                other = &t.nat[idx].r[0]
            else:
                other = <const uint64_t *>e
            view[2] = other[0]
            view[3] = other[1]
            proto = <uint8_t>(k[4] >> 56)
            if proto != IP_PROTO_ICMP and proto != IP_PROTO_ICMP6:
                view[4] = (view[4] & ~(<uint64_t>0xFFFF << 16)) | ((other[4] & 0xFFFF) << 16)
            c.k = view
        rs_hook(t, HP_LATE, &c)
    if c.mark_set and idx >= 0:
        t.cold[idx].mark = c.ct_mark

cdef inline void _rewrite(ct_table *t, uint32_t idx, const pkt_meta *m, uint8_t dir) noexcept nogil:
    if nat_rewrite(t, idx, m, dir):
        t.stats[ST_NAT_REWRITTEN] += 1
    else:
        t.stats[ST_NAT_NOT_REWRITTEN] += 1


cdef class Engine:
    """The connection table and the batch loop.  Configuration and queries live in fastct.tracker."""
    cdef ct_table t
    cdef object _entries_raw
    cdef object _cold_raw
    cdef object _slots
    cdef object _old_slots            # the index being emptied into _slots while growing
    cdef object _next_slots           # the next index, zeroed a little per batch before it is needed
    cdef Py_ssize_t _next_zeroed
    cdef pkt_meta _meta[SUB]
    cdef uint8_t _scratch[SUB][FRAG_L4_SAVE]   # transport headers of datagrams reassembled this pass
    cdef frag_q *_fq                  # datagrams being reassembled (FRAG_SLOTS queues)
    cdef object _frag_raw
    cdef ct_entry _spare_e           # a new connection is built here while the table is full
    cdef ct_cold _spare_c
    cdef uint32_t _last_swept         # entries the last incremental sweep removed
    cdef readonly uint32_t max_conns
    cdef readonly object seed
    cdef readonly int64_t worst_grow_ns
    cdef object _zone_limits          # keeps the arrays t.zone_limit / t.zone_count point into
    cdef object _zone_counts
    cdef object _zone_map             # keeps the arrays t.zone_policy / t.policies point into
    cdef object _policies
    cdef object _nat_raw              # NAT side records (allocated with the first rules)
    cdef object _prog                 # keeps the ruleset arrays t.chains ... point into
    cdef object _if_addr              # keeps the arrays t.if_addr / t.if_has point into
    cdef object _if_has
    # Entries a call evicted or moved, so that its earlier outputs can be fixed at its end (see
    # _fix_outputs): notes of (entry, entry moved into it or -1, packet position).
    cdef object _ev_raw
    cdef int64_t *_ev
    cdef Py_ssize_t _ev_cap
    cdef Py_ssize_t _ev_n
    cdef object _hm_raw               # _fix_outputs' map: entry -> where it ended (open addressing)
    cdef int32_t *_hm                 # pairs (key, value); key -1 empty; all empty between calls
    cdef Py_ssize_t _hm_cap           # pairs

    def __cinit__(self, uint32_t max_conns, object seed, uint32_t initial_slots=MIN_SLOTS):
        cdef int i
        if max_conns < 1:
            raise ValueError("max_conns must be at least 1")
        if max_conns > MAX_CONNS_LIMIT:
            raise ValueError(f"max_conns must be at most {MAX_CONNS_LIMIT}")
        self.max_conns = max_conns
        memset(&self.t, 0, sizeof(ct_table))
        self._entries_raw = _aligned_empty(<Py_ssize_t>max_conns * sizeof(ct_entry), 128)
        self._cold_raw = _aligned_empty(<Py_ssize_t>max_conns * sizeof(ct_cold), 64)
        self.t.e = <ct_entry *><size_t>self._entries_raw.ctypes.data
        self.t.cold = <ct_cold *><size_t>self._cold_raw.ctypes.data
        self.t.cap = max_conns
        self._frag_raw = np.zeros(FRAG_SLOTS * sizeof(frag_q), dtype=np.uint8)
        self._fq = <frag_q *><size_t>self._frag_raw.ctypes.data
        self.t.max_probe = MAX_PROBE
        self.t.tcp_loose = 1
        self.t.tcp_be_liberal = 0
        self.t.tcp_max_retrans = 3
        self.t.early_drop = 1
        self.t.tcp_fast = 1
        rng = np.random.default_rng(seed)
        self.seed = seed
        words = rng.integers(0, 2**63, size=4, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
        for i in range(4):
            self.t.seed[i] = <uint64_t>int(words[i])
        self.t.rng = self.t.seed[0] ^ self.t.seed[2]      # odd, so never zero
        for i in range(TO_N):
            self.t.timeouts[i] = fastct_timeout_defaults[i] * 1000000000LL
        self.t.now = -(1LL << 62)
        n = MIN_SLOTS
        while n < initial_slots:
            n *= 2
        self._set_slots(np.zeros(n, dtype=np.uint64))

    cdef _set_slots(self, object slots):
        self._slots = slots
        self.t.slots = <uint64_t *><size_t>slots.ctypes.data
        self.t.mask = len(slots) - 1
        # Grow at load 5/8: linear probing's longest chains stay far below MAX_PROBE there (at 0.7
        # they reached 125 with 600k flows).  A table already holding max_conns never grows.
        self.t.grow_at = <uint32_t>min(<uint64_t>(len(slots) * 5 // 8), <uint64_t>0xFFFFFFFF)

    cdef int _grow(self) except -1:
        """Double the index.  Its slots move to the new array a few per batch (migrate_step), so
        no batch pays for all of them; a migration still running is finished first."""
        cdef object new
        if self.t.oslots != NULL:
            with nogil:
                migrate_step(&self.t, <uint64_t>-1)
        self._old_slots = None
        new = self._next_slots
        if new is None or len(new) != len(self._slots) * 2:
            new = np.zeros(len(self._slots) * 2, dtype=np.uint64)
        else:
            self._prepare_next(<Py_ssize_t>new.nbytes)     # finish zeroing it, if not done yet
        self._next_slots = None
        self._next_zeroed = 0
        self._old_slots = self._slots
        self.t.oslots = self.t.slots
        self.t.omask = self.t.mask
        self.t.ocount = self.t.n + self.t.nat_live     # one slot per entry, and NAT's
        self.t.opos = 0
        self._set_slots(new)
        if self.t.ocount == 0:
            self.t.oslots = NULL
            self._old_slots = None
        self.t.stats[ST_GROWS] += 1
        return 0

    cdef void _prepare_next(self, Py_ssize_t nbytes):
        """Zero the next (doubled) index `nbytes` at a time, ahead of the grow: first-touch page
        faults cost ~1.6 ms per MB on this kind of machine, so a 128 MB index zeroed at once would
        stall one batch for 200 ms.  Spread over the batches before the grow, nobody notices."""
        cdef char *p
        cdef Py_ssize_t total, step
        if self._next_slots is None:
            self._next_slots = np.empty(len(self._slots) * 2, dtype=np.uint64)
            self._next_zeroed = 0
        total = self._next_slots.nbytes
        step = min(nbytes, total - self._next_zeroed)
        if step > 0:
            p = <char *><size_t>self._next_slots.ctypes.data
            with nogil:
                memset(p + self._next_zeroed, 0, step)
            self._next_zeroed += step

    # ---- outputs of a call that evicted or moved entries ----------------------------------------
    cdef inline void _note(self, int32_t victim, int32_t moved, Py_ssize_t pos) noexcept nogil:
        cdef int64_t *ev = self._ev + 3 * self._ev_n
        ev[0] = victim
        ev[1] = moved
        ev[2] = pos
        self._ev_n += 1

    cdef inline void _forget(self, uint32_t idx, Py_ssize_t pos) noexcept nogil:
        """entry_forget, noting that entry idx is gone and the last entry moved into its place."""
        cdef uint32_t last = self.t.n - 1
        self._note(<int32_t>idx, <int32_t>last if last != idx else -1, pos)
        entry_forget(&self.t, idx)

    cdef inline int32_t *_hm_slot(self, int32_t x, uint32_t mask) noexcept nogil:
        """The pair of key x in the map (its own, or the empty one where it would go)."""
        cdef uint32_t h = (<uint32_t>x * 2654435761U) & mask
        while self._hm[2 * h] != -1 and self._hm[2 * h] != x:
            h = (h + 1) & mask
        return &self._hm[2 * h]

    cdef void _fix_outputs(self, int32_t *o, Py_ssize_t n) noexcept nogil:
        """Make each packet's output entry where its connection is at the end of the call, or -1
        if a later packet of the call evicted it (a full table makes room; a refused packet's room
        is given back by moving the last entry into it).  Walks the packets backwards, composing
        the notes made after each one into a small map (entry -> final place, -1 gone; absent:
        unchanged): O(packets + notes), the map sized to the notes so it stays in cache."""
        cdef Py_ssize_t j, k = self._ev_n - 1, nt = 0
        cdef int64_t *touched = self._ev + 3 * self._ev_n      # (room for 2 per note, see process)
        cdef int64_t *ev
        cdef int32_t *p
        cdef int32_t *q
        cdef int32_t mx
        cdef uint32_t mask = 16
        while mask < 4 * <uint32_t>self._ev_n:
            mask *= 2
        mask -= 1
        j = n - 1
        while j >= 0:
            while k >= 0 and self._ev[3 * k + 2] > j:
                ev = self._ev + 3 * k
                # Before this note, entry ev[0] ends where it ended after it, which is nowhere
                # (evicted); the entry moved into it (ev[1]) ends where ev[0] did.
                p = self._hm_slot(<int32_t>ev[0], mask)
                if p[0] == -1:
                    mx = <int32_t>ev[0]
                    p[0] = <int32_t>ev[0]
                    touched[nt] = p - self._hm
                    nt += 1
                else:
                    mx = p[1]
                p[1] = -1
                if ev[1] >= 0:
                    q = self._hm_slot(<int32_t>ev[1], mask)
                    if q[0] == -1:
                        q[0] = <int32_t>ev[1]
                        touched[nt] = q - self._hm
                        nt += 1
                    q[1] = mx
                k -= 1
            if o[j] >= 0 and nt:
                p = self._hm_slot(o[j], mask)
                if p[0] != -1:
                    o[j] = p[1]
            j -= 1
        for j in range(nt):
            self._hm[touched[j]] = -1
        self._ev_n = 0

    cdef inline void _migrate(self, uint64_t budget) noexcept nogil:
        if self.t.oslots != NULL:
            migrate_step(&self.t, budget)

    cdef inline bint _needs_grow(self, uint32_t incoming) noexcept nogil:
        # Slots in use: one per entry, up to three for a NAT'd one (reply tuple, source); the index
        # stops growing once it can hold max_conns entries' slots (three times as many once NAT is
        # on) at load 5/8.
        cdef uint64_t per = 3 if self.t.nat_on else 1
        return <uint64_t>self.t.n + self.t.nat_live + incoming * per > self.t.grow_at and \
            self.t.grow_at < self._slot_cap()

    cdef inline uint64_t _slot_cap(self) noexcept nogil:
        return <uint64_t>self.t.cap * (3 if self.t.nat != NULL else 1)

    def prefault(self):
        """Touch all entry memory for max_conns now, so new connections never wait for the kernel
        to zero a fresh page (on this kind of machine ~1.6 ms per MB, ~250 ns per connection)."""
        cdef char *p = <char *><size_t>self._entries_raw.ctypes.data
        cdef char *q = <char *><size_t>self._cold_raw.ctypes.data
        cdef size_t ne = <size_t>self.t.cap * sizeof(ct_entry)
        cdef size_t nc = <size_t>self.t.cap * sizeof(ct_cold)
        cdef size_t used_e = <size_t>self.t.n * sizeof(ct_entry)
        cdef size_t used_c = <size_t>self.t.n * sizeof(ct_cold)
        with nogil:
            memset(p + used_e, 0, ne - used_e)
            memset(q + used_c, 0, nc - used_c)

    # ---- configuration -------------------------------------------------------------------
    def set_timeout(self, int index, int64_t ns):
        if not 0 <= index < TO_N:
            raise IndexError(index)
        self.t.timeouts[index] = ns

    def get_timeout(self, int index):
        if not 0 <= index < TO_N:
            raise IndexError(index)
        return self.t.timeouts[index]

    def set_zone_policies(self, object zone_map, object policies):
        """Per-zone timeouts: zone_map uint8[65536] (0: the table's own; k: policies[k - 1]) and
        policies int64[n, TO_N] in ns; None, None removes them."""
        if zone_map is None:
            self.t.zone_policy = NULL
            self.t.policies = NULL
            self._zone_map = None
            self._policies = None
            return
        zone_map = np.ascontiguousarray(zone_map, dtype=np.uint8)
        policies = np.ascontiguousarray(policies, dtype=np.int64)
        if zone_map.shape != (65536,) or policies.ndim != 2 or policies.shape[1] != TO_N or \
                int(zone_map.max()) > policies.shape[0] or policies.shape[0] < 1:
            raise ValueError("zone_map must be uint8[65536] indexing 1..n rows of policies[n, TO_N]")
        self._zone_map = zone_map
        self._policies = policies
        self.t.policies = <const int64_t *><size_t>policies.ctypes.data
        self.t.zone_policy = <const uint8_t *><size_t>zone_map.ctypes.data

    def set_zone_limits(self, object limits):
        """Per-zone connection limits: uint32[65536] (0: no limit), or None for none.  The per-zone
        counts are taken from the entries now and kept up to date while limits are set."""
        if limits is None:
            self.t.zone_limit = NULL
            self.t.zone_count = NULL
            self._zone_limits = None
            self._zone_counts = None
            return
        limits = np.ascontiguousarray(limits, dtype=np.uint32)
        if limits.shape != (65536,):
            raise ValueError("zone limits must be uint32[65536]")
        counts = np.bincount(self.entries_view()["zone"], minlength=65536).astype(np.uint32)
        self._zone_limits = limits
        self._zone_counts = counts
        self.t.zone_count = <uint32_t *><size_t>counts.ctypes.data
        self.t.zone_limit = <const uint32_t *><size_t>limits.ctypes.data

    def set_ruleset(self, object prog):
        """A compiled ruleset (fastct.rules_compile.Program), or None for none.  Connections
        already made keep the bindings, marks and helpers they got."""
        cdef uint32_t h
        self.t.chains = NULL
        self.t.rs_on = 0
        self.t.nat_on = 0
        self._prog = None
        if prog is None:
            return
        arrays = {
            "chains": RS_CHAIN_DTYPE, "rules": RS_RULE_DTYPE, "matches": RS_MATCH_DTYPE,
            "iranges": RS_IRANGE_DTYPE, "aranges": RS_ARANGE_DTYPE, "targets": NAT_TARGET_DTYPE,
            "routes": RS_ROUTE_DTYPE}
        for name, dtype in arrays.items():
            a = getattr(prog, name)
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 1 or \
                    not a.flags.c_contiguous:
                raise ValueError(f"ruleset: {name} must be a contiguous 1-d array of its dtype")
        base = np.ascontiguousarray(prog.base, dtype=np.uint32)
        hp_first = np.asarray(prog.hp_first, dtype=np.int64)
        counters = prog.counters
        helper_proto = np.ascontiguousarray(prog.helper_protos, dtype=np.uint8)
        if len(helper_proto) == 0:
            helper_proto = np.zeros(1, dtype=np.uint8)
        iif_map = None if prog.iif_map is None else np.ascontiguousarray(prog.iif_map, dtype=np.int16)
        if hp_first.shape != (FASTCT_RS_N_HOOKS + 1,) or hp_first[0] != 0 or \
                np.any(np.diff(hp_first) < 0) or hp_first[-1] != len(base):
            raise ValueError("ruleset: hp_first must be offsets into base, one group per hook point")
        n_chains, n_rules = len(prog.chains), len(prog.rules)
        if len(base) and int(base.max()) >= n_chains:
            raise ValueError("ruleset: a base chain number is out of range")
        ch = prog.chains
        if n_chains and int((ch["first"].astype(np.int64) + ch["count"]).max()) > n_rules:
            raise ValueError("ruleset: a chain's rules are out of range")
        r = prog.rules
        if n_rules:
            if int((r["m_first"].astype(np.int64) + r["m_count"]).max()) > len(prog.matches):
                raise ValueError("ruleset: a rule's matches are out of range")
            jumps = (r["verdict"] == RV_JUMP) | (r["verdict"] == RV_GOTO)
            if np.any(jumps & ((r["target"] < 0) | (r["target"] >= n_chains))):
                raise ValueError("ruleset: a jump or goto target is out of range")
            nat = r["verdict"] == RV_NAT
            if np.any(nat & ((r["target"] < 0) | (r["target"] >= len(prog.targets)))):
                raise ValueError("ruleset: a NAT target is out of range")
            if np.any(r["verdict"] >= FASTCT_RS_N_VERDICTS):
                raise ValueError("ruleset: an unknown verdict")
            if np.any(((r["stmts"] & RS_HELPER) != 0) & (r["helper"] >= len(prog.helper_protos))):
                raise ValueError("ruleset: a helper number is out of range")
        mt = prog.matches
        if len(mt):
            addr = (mt["key"] == MK_SADDR) | (mt["key"] == MK_DADDR)
            ends = mt["first"].astype(np.int64) + mt["count"]
            if np.any(addr & (ends > len(prog.aranges))) or np.any(~addr & (ends > len(prog.iranges))):
                raise ValueError("ruleset: a match's ranges are out of range")
            if np.any(mt["key"] >= FASTCT_RS_N_KEYS):
                raise ValueError("ruleset: an unknown match key")
        if not isinstance(counters, np.ndarray) or counters.dtype != np.uint64 or \
                counters.shape != (n_rules, 2) or not counters.flags.c_contiguous or \
                not counters.flags.writeable:
            raise ValueError("ruleset: counters must be a writable uint64[rules, 2] array")
        if prog.nat_on and self._nat_raw is None:
            # One record per possible entry, so allocation never fails; pages nobody uses cost
            # nothing (see _aligned_empty).
            self._nat_raw = _aligned_empty(<Py_ssize_t>self.t.cap * sizeof(ct_nat), 64)
            self.t.nat = <ct_nat *><size_t>self._nat_raw.ctypes.data
        self._prog = (prog, base, counters, iif_map, helper_proto)
        self.t.helper_proto = <const uint8_t *><size_t>helper_proto.ctypes.data
        self.t.chains = <const rs_chain *><size_t>ch.ctypes.data
        self.t.rules = <const rs_rule *><size_t>r.ctypes.data
        self.t.matches = <const rs_match *><size_t>mt.ctypes.data
        self.t.iranges = <const rs_irange *><size_t>prog.iranges.ctypes.data
        self.t.aranges = <const rs_arange *><size_t>prog.aranges.ctypes.data
        self.t.targets = <const nat_target *><size_t>prog.targets.ctypes.data
        self.t.base = <const uint32_t *><size_t>base.ctypes.data
        for h in range(FASTCT_RS_N_HOOKS + 1):
            self.t.hp_first[h] = <uint32_t>hp_first[h]
        self.t.rule_counters = <uint64_t *><size_t>counters.ctypes.data
        if iif_map is None:
            self.t.iif_map = NULL
            self.t.n_iif_map = 0
        else:
            self._prog = self._prog + (iif_map,)
            self.t.iif_map = <const int16_t *><size_t>iif_map.ctypes.data
            self.t.n_iif_map = <uint32_t>len(iif_map)
        self.t.routes = <const rs_route *><size_t>prog.routes.ctypes.data
        self.t.n_routes = <uint32_t>len(prog.routes)
        self.t.default_oif = <int32_t>prog.default_oif
        self.t.route_drop = 1 if len(prog.routes) else 0
        self.t.nat_on = 1 if prog.nat_on else 0
        self.t.rs_on = 1

    def set_interface_addresses(self, object addr, object has):
        """Per gateway interface: addr uint8[n, 32] (IPv4 in bytes 0-3, IPv6 in 16-31) and has
        uint8[n] (bit 0: an IPv4 address, bit 1: an IPv6 one).  Redirect maps to the input
        interface's address, masquerade (without one of its own) to the output interface's."""
        addr = np.ascontiguousarray(addr, dtype=np.uint8)
        has = np.ascontiguousarray(has, dtype=np.uint8)
        if addr.ndim != 2 or addr.shape[1] != 32 or has.shape != (addr.shape[0],):
            raise ValueError("interface addresses must be uint8[n, 32] with has uint8[n]")
        self._if_addr = addr
        self._if_has = has
        self.t.if_addr = <const uint8_t *><size_t>addr.ctypes.data
        self.t.if_has = <const uint8_t *><size_t>has.ctypes.data
        self.t.n_if_addr = <uint32_t>addr.shape[0]

    def nat_view(self):
        """The NAT side records parallel to entries_view() (NAT_DTYPE: the reply tuple `r` in the
        entry key layout), meaningful for entries with SRC_NAT or DST_NAT status.  None before any
        NAT rules were set.  Zero-copy, valid until the next mutating call."""
        if self._nat_raw is None:
            return None
        return self._nat_raw[:self.t.n * sizeof(ct_nat)].view(NAT_DTYPE)

    def zone_counts(self):
        """Entries per zone (dead ones not yet swept included), or None without zone limits."""
        return None if self._zone_counts is None else self._zone_counts.copy()

    def options(self):
        return {"tcp_loose": self.t.tcp_loose, "tcp_be_liberal": self.t.tcp_be_liberal,
                "tcp_ignore_invalid_rst": self.t.tcp_ignore_invalid_rst,
                "tcp_max_retrans": self.t.tcp_max_retrans, "checksum": self.t.checksum}

    def set_options(self, checksum=None, dccp_tracker=None, tcp_ignore_invalid_rst=None, early_drop=None,
                    fast_paths=None, stage_clock=None):
        if stage_clock is not None:
            # Time the batch loop's three stages (stage_ticks()); off by default.
            self.t.stage_clock = 1 if stage_clock else 0
        if fast_paths is not None:
            # (Only for tests that check the straight-line paths against the general ones.)
            self.t.tcp_fast = 1 if fast_paths else 0
        if early_drop is not None:
            self.t.early_drop = 1 if early_drop else 0
        if tcp_ignore_invalid_rst is not None:
            self.t.tcp_ignore_invalid_rst = 1 if tcp_ignore_invalid_rst else 0
        if checksum is not None:
            self.t.checksum = 1 if checksum else 0
        if dccp_tracker is not None:
            self.t.dccp_tracker = 1 if dccp_tracker else 0

    def set_tcp(self, loose=None, be_liberal=None, max_retrans=None):
        if loose is not None:
            self.t.tcp_loose = 1 if loose else 0
        if be_liberal is not None:
            self.t.tcp_be_liberal = 1 if be_liberal else 0
        if max_retrans is not None:
            self.t.tcp_max_retrans = max_retrans

    def stage_ticks(self):
        """Clock ticks (fastct._engine.clock()) spent so far in the batch loop's stages while
        stage_clock was on: (parse and hash, index slots and entry prefetches, protocol work and
        outputs)."""
        return (self.t.stage_ticks[0], self.t.stage_ticks[1], self.t.stage_ticks[2])

    # ---- queries -------------------------------------------------------------------------
    @property
    def count(self):
        return self.t.n

    @property
    def now(self):
        return self.t.now

    @property
    def n_slots(self):
        return self.t.mask + 1

    def entries_view(self):
        """Zero-copy structured view of entries[0:n] (valid until the next mutating call)."""
        return self._entries_raw[:self.t.n * sizeof(ct_entry)].view(ENTRY_DTYPE)

    def cold_view(self):
        return self._cold_raw[:self.t.n * sizeof(ct_cold)].view(COLD_DTYPE)

    def stats_array(self):
        return np.array([self.t.stats[i] for i in range(ST_N)], dtype=np.uint64)

    def reasons_array(self):
        return np.array([self.t.reasons[i] for i in range(R_N)], dtype=np.uint64)

    def expire(self, int64_t now):
        """Delete every entry dead at time `now` (a full sweep)."""
        cdef uint32_t removed
        with nogil:
            removed = sweep_all(&self.t, now)
            frag_sweep(&self.t, self._fq, now, FRAG_SLOTS)
        return removed

    def memory_bytes(self):
        """Bytes the table can occupy: entries and cold data for max_conns, plus the index now."""
        return (self.t.cap * (sizeof(ct_entry) + sizeof(ct_cold))) + (self.t.mask + 1) * 8 + \
            ((self.t.omask + 1) * 8 if self.t.oslots != NULL else 0) + \
            (self.t.cap * sizeof(ct_nat) if self._nat_raw is not None else 0)

    def check_invariants(self):
        """Problems with the table's structure (an empty list when it is sound): every entry
        indexed exactly once and found by lookup from both directions, no slot pointing past the
        entries, no empty-slot gap between a slot and its home.  For tests and fuzzing (O(n))."""
        problems = []
        cdef uint64_t i, s, home, k
        cdef uint32_t idx
        cdef pkt_meta m
        cdef int32_t found
        cdef ct_entry *e
        cdef uint64_t rtag
        seen = np.zeros(self.t.n, dtype=np.uint8)
        seen_reply = np.zeros(self.t.n, dtype=np.uint8)
        seen_bysrc = np.zeros(self.t.n, dtype=np.uint8)
        arrays = [(self._slots, self.t.mask)]
        if self.t.oslots != NULL:
            arrays.append((self._old_slots, self.t.omask))
        total = 0
        for arr, mask in arrays:
            for i in np.nonzero(arr)[0]:
                s = arr[i]
                idx = slot_entry(s)
                total += 1
                if idx >= self.t.n:
                    problems.append(f"slot {i} points to entry {idx} >= n={self.t.n}")
                    continue
                if s & SLOT_BYSRC:
                    seen_bysrc[idx] += 1
                    if not (self.t.e[idx].status & IPS_SRC_NAT):
                        problems.append(f"slot {i}: a source slot for entry {idx}, which has no source NAT")
                        continue
                    rtag = bysrc_hash(<const uint64_t *>&self.t.e[idx], self.t.seed) >> 32
                elif s & SLOT_REPLY:
                    seen_reply[idx] += 1
                    if not (self.t.e[idx].status & IPS_NAT_MASK):
                        problems.append(f"slot {i}: a reply slot for entry {idx}, which has no NAT")
                        continue
                    rtag = self.t.nat[idx].rhash >> 32
                else:
                    seen[idx] += 1
                    rtag = entry_hash(&self.t.e[idx], self.t.seed) >> 32
                home = (s >> 32) & mask
                k = home
                while k != i:
                    if arr[k] == 0:
                        problems.append(f"slot {i} (entry {idx}) is cut off from its home {home}")
                        break
                    k = (k + 1) & mask
                if rtag != (s >> 32):
                    problems.append(f"slot {i}: tag does not match entry {idx}'s hash")
        if self.t.oslots != NULL and total - np.count_nonzero(self._slots) != self.t.ocount:
            problems.append("old index count is wrong")
        for idx in range(self.t.n):
            if seen[idx] != 1:
                problems.append(f"entry {idx} is indexed {seen[idx]} times")
                continue
            e = &self.t.e[idx]
            if seen_reply[idx] != (1 if e.status & IPS_NAT_MASK else 0):
                problems.append(f"entry {idx} has {seen_reply[idx]} reply slots")
                continue
            if seen_bysrc[idx] != (1 if e.status & IPS_SRC_NAT else 0):
                problems.append(f"entry {idx} has {seen_bysrc[idx]} source slots")
                continue
            if e.status & IPS_NAT_MASK:
                memcpy(m.k, self.t.nat[idx].r, 40)
                m.rk4 = tuple_reverse_k4(m.k[4])
                m.hash = meta_hash(&m, self.t.seed)
                if m.hash != self.t.nat[idx].rhash:
                    problems.append(f"entry {idx}: NAT record's hash is stale")
                found = table_find(&self.t, &m)
                if found != <int32_t>idx or m.dir != 1:
                    problems.append(f"entry {idx} not found from its NAT reply tuple ({found})")
            memcpy(m.k, <void *>e, 40)
            m.rk4 = tuple_reverse_k4(m.k[4])
            m.hash = meta_hash(&m, self.t.seed)
            found = table_find(&self.t, &m)
            if found != <int32_t>idx or m.dir != 0:
                problems.append(f"entry {idx} not found from its original direction ({found})")
            if e.status & IPS_NAT_MASK:
                continue        # its reply tuple was looked up above
            m.k[0], m.k[1], m.k[2], m.k[3] = m.k[2], m.k[3], m.k[0], m.k[1]
            m.k[4], m.rk4 = m.rk4, m.k[4]
            found = table_find(&self.t, &m)
            # A tuple that is its own reverse (a host to itself, same ports) is found as original.
            if found != <int32_t>idx or (m.dir != 1 and (m.k[0] != m.k[2] or m.k[1] != m.k[3]
                                                         or m.k[4] != m.rk4)):
                problems.append(f"entry {idx} not found from its reply direction ({found})")
        return problems

    def hash_tuples(self, const uint64_t[:, ::1] keys):
        """The table's keyed hash of each tuple (rows of five words in the entry key layout): the
        index slot a connection's home is (hash >> 32) & (n_slots - 1).  For tests and tools that
        play the attacker who knows the seed."""
        cdef Py_ssize_t i, n = keys.shape[0]
        if keys.shape[1] != 5:
            raise ValueError("keys must be n rows of 5 uint64 words")
        out = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] o = out
        with nogil:
            for i in range(n):
                o[i] = key_hash(keys[i, 0], keys[i, 1], keys[i, 2], keys[i, 3], keys[i, 4],
                                tuple_reverse_k4(keys[i, 4]), self.t.seed)
        return out

    def lookup_key(self, uint64_t k0, uint64_t k1, uint64_t k2, uint64_t k3, uint64_t k4):
        """(entry index, direction) of the connection with this tuple, either direction, or (-1, 0).
        Expired entries are not found."""
        cdef pkt_meta m
        cdef int32_t idx
        m.k[0] = k0; m.k[1] = k1; m.k[2] = k2; m.k[3] = k3; m.k[4] = k4
        m.rk4 = tuple_reverse_k4(k4)
        m.hash = meta_hash(&m, self.t.seed)
        m.dir = 0
        idx = table_find(&self.t, &m)
        if idx >= 0 and self.t.e[idx].expires <= self.t.now:
            return -1, 0
        return idx, m.dir

    # ---- the batch -----------------------------------------------------------------------
    def process(self, object buffer, const int64_t[::1] offsets, const uint32_t[::1] caplen,
                const uint32_t[::1] wirelen, const int64_t[::1] ts, const uint16_t[::1] iface,
                const uint32_t[::1] if_linktype, const uint32_t[::1] if_fcslen,
                uint8_t[::1] out_state, int32_t[::1] out_entry, uint8_t[::1] out_dir,
                uint8_t[::1] out_held, uint64_t[::1] linktype_skipped, int zone=0,
                bint zone_from_vlan=False, bint commit=True, bint rewrite=False,
                const uint16_t[::1] out_iface=None):
        """Track n packets; fills out_state/out_entry/out_dir/out_held.  Returns the number processed.
        With `rewrite`, packets of NAT'd connections are rewritten in `buffer` (which must be a
        writable uint8 array).  `out_iface`: each packet's output interface for NAT rules that
        match one (None: unknown, such rules do not match)."""
        cdef const uint8_t[::1] buf = buffer
        cdef Py_ssize_t n = offsets.shape[0]
        cdef Py_ssize_t nbuf = buf.shape[0]
        cdef Py_ssize_t n_if = if_linktype.shape[0]
        cdef Py_ssize_t base, i, cnt
        if caplen.shape[0] != n or wirelen.shape[0] != n or ts.shape[0] != n or iface.shape[0] != n:
            raise ValueError("offsets, caplen, wirelen, ts and iface must have the same length")
        if out_state.shape[0] < n or out_entry.shape[0] < n or out_dir.shape[0] < n or \
                out_held.shape[0] < n:
            raise ValueError("output arrays are shorter than the batch")
        if if_fcslen.shape[0] != n_if:
            raise ValueError("if_linktype and if_fcslen must have the same length")
        if linktype_skipped.shape[0] < 65536:
            raise ValueError("linktype_skipped must have 65536 counters")
        if not 0 <= zone <= 0xFFFF:
            raise ValueError("zone must be in 0..65535")
        if rewrite and not (isinstance(buffer, np.ndarray) and buffer.flags.writeable):
            raise ValueError("rewrite needs the packets in a writable numpy buffer "
                             "(pass rewrite=False for verdicts only)")
        if out_iface is not None and out_iface.shape[0] != n:
            raise ValueError("out_iface must have one item per packet")
        if n == 0:
            return 0
        if 10 * n + 16 > self._ev_cap:
            # At most two notes (3 words each) per packet (room made, then given back), and two
            # touched map pairs per note; the map has room for four keys per note at most.
            self._ev_cap = 10 * n + 16
            self._ev_raw = np.empty(self._ev_cap, dtype=np.int64)
            self._ev = <int64_t *><size_t>self._ev_raw.ctypes.data
            self._hm_cap = 16
            while self._hm_cap < 8 * n + 8:
                self._hm_cap *= 2
            self._hm_raw = np.full(2 * self._hm_cap, -1, dtype=np.int32)
            self._hm = <int32_t *><size_t>self._hm_raw.ctypes.data
        self._ev_n = 0
        # Bounds of the packet vector are checked once here, so the loop can trust them.
        with nogil:
            for i in range(n):
                if offsets[i] < 0 or offsets[i] + <int64_t>caplen[i] > nbuf or iface[i] >= n_if:
                    with gil:
                        raise ValueError(f"packet {i}: offset/caplen outside the buffer or unknown interface")
        # Incremental expiry, bounded work, before any output index is handed out.  The batch's first
        # packet already sets the time: what is dead then is dead for every packet of the batch.
        cdef int64_t start_now = self.t.now if self.t.now > ts[0] else ts[0]
        # One entry looked at per 16 packets: each look is a cache line of its own (at 1M
        # connections one per 4 packets cost 17 % of the time).  Dead entries are harmless until
        # then: lookups skip them, a new connection reuses its dead entry in place, and a full table
        # reclaims dead entries on demand.  Near capacity, while the sweep keeps finding dead
        # entries, it works harder so they make room in time.
        cdef uint32_t budget = <uint32_t>(n // 16 + 16)
        if self.t.n > self.t.cap - self.t.cap // 4 and self._last_swept:
            budget = <uint32_t>(2 * n + 64)
        with nogil:
            self._last_swept = sweep_expired(&self.t, start_now, budget)
            frag_sweep(&self.t, self._fq, start_now, 16)
        cdef const uint16_t *oif_all = &out_iface[0] if out_iface is not None else NULL
        base = 0
        with nogil:
            # One GIL release for the whole batch (taken back only to allocate a bigger index).
            while base < n:
                cnt = n - base if n - base < SUB else SUB
                self._index_room(<uint32_t>cnt, commit)
                self._run(&buf[0], &offsets[base], &caplen[base], &wirelen[base], &ts[base], &iface[base],
                          oif_all + base if oif_all != NULL else NULL, &if_linktype[0], &if_fcslen[0],
                          <uint32_t>cnt, n - base, &out_state[base], &out_entry[base], &out_dir[base],
                          &out_held[base], &linktype_skipped[0], <uint16_t>zone, zone_from_vlan, commit,
                          rewrite, base)
                base += cnt
        if self._ev_n:
            with nogil:
                self._fix_outputs(&out_entry[0], n)
        return n

    cdef int _index_room(self, uint32_t cnt, bint commit) except -1 nogil:
        """Before a sub-batch of cnt packets: the index grown if they could fill it, the next index
        zeroed a little when a grow nears, an index being emptied moved on a little."""
        if commit and self._needs_grow(cnt):
            with gil:
                self._grow()
        elif self.t.n + self.t.nat_live >= self.t.grow_at // 2 and self.t.grow_at < self._slot_cap() and \
                self.t.oslots == NULL:
            # Halfway to the next grow: zero its index 128 bytes per packet (it needs ~51 per
            # inserted connection to be ready in time).
            with gil:
                self._prepare_next(<Py_ssize_t>(128 * cnt))
        if self.t.oslots != NULL:
            # 4 old slots per packet: done long before the new index needs to grow again (that
            # takes 5/8 of the old size in new entries, at most one per packet).
            self._migrate(<uint64_t>(4 * cnt + 64))
            if self.t.oslots == NULL:
                with gil:
                    self._old_slots = None
        return 0

    cdef void _run(self, const uint8_t *buf, const int64_t *off, const uint32_t *cap, const uint32_t *wire,
                   const int64_t *ts, const uint16_t *iface, const uint16_t *oif, const uint32_t *if_lt,
                   const uint32_t *if_fcs, uint32_t cnt, Py_ssize_t left, uint8_t *o_state, int32_t *o_entry,
                   uint8_t *o_dir, uint8_t *o_held, uint64_t *lt_skipped, uint16_t zone, bint zone_from_vlan,
                   bint commit, bint rewrite, Py_ssize_t pos0) noexcept nogil:
        cdef ct_table *t = &self.t
        cdef pkt_meta *m
        cdef uint32_t i, j, found = 0
        cdef int32_t cand
        cdef uint64_t zbits
        cdef int32_t idx
        cdef ct_entry *e
        cdef ct_cold *c
        cdef int v
        cdef int32_t reused
        cdef bint full
        cdef uint8_t reason, st, pol
        cdef uint16_t zn
        cdef uint64_t okey[5]
        cdef rs_ctx rc
        cdef bint walk = t.rs_on and (rs_has(t, HP_PRE) or rs_has(t, HP_LATE))
        cdef nat_choice nat
        cdef uint32_t low
        cdef uint64_t home
        cdef int dres
        cdef uint64_t tk0 = clock_ticks() if t.stage_clock else 0, tk1 = 0, tk2 = 0
        # Stage 1: parse, key, hash.  Headers are prefetched ahead (HDR_PREFETCH_L2, HDR_PREFETCH).
        # The common packet (Ethernet, IPv4, TCP without SYN) when nothing in this batch needs more
        # of it (checksums, raw chains, VLAN zones): what the general path below makes of it, minus
        # the checks that cannot apply.  tests/test_fastpath.py compares the two.
        cdef bint fast1 = t.tcp_fast and not t.checksum and not zone_from_vlan and \
            not (t.rs_on and rs_has(t, HP_RAW))
        cdef uint64_t zone_bits = <uint64_t>zone << 32
        cdef uint64_t k4
        for i in range(cnt):
            if i + HDR_PREFETCH_L2 < left:
                FASTCT_PREFETCH_L2(buf + off[i + HDR_PREFETCH_L2])
            if i + HDR_PREFETCH < left:
                FASTCT_PREFETCH_R(buf + off[i + HDR_PREFETCH])
            m = &self._meta[i]
            if fast1 and if_lt[iface[i]] == LT_ETHERNET and if_fcs[iface[i]] == 0 and \
                    parse_fast_tcp4(buf + off[i], cap[i], wire[i] if wire[i] > cap[i] else cap[i], m):
                _stamp(t, ts[i], m)
                k4 = m.k[4] | zone_bits
                m.k[4] = k4
                m.meta_mark = 0
                m.helper = 0
                # (tuple_reverse_k4 for TCP: the ports swapped)
                m.rk4 = (k4 & <uint64_t>0xFFFFFFFF00000000) | ((k4 & 0xFFFF) << 16) | ((k4 >> 16) & 0xFFFF)
                m.hash = key_hash(m.k[0], 0, m.k[2], 0, k4, m.rk4, t.seed)
                FASTCT_PREFETCH_R(&t.slots[(m.hash >> 32) & t.mask])
                continue
            if fast1:
                parse_frame_general(buf + off[i], cap[i], wire[i], if_lt[iface[i]], if_fcs[iface[i]], m)
            else:
                parse_frame(buf + off[i], cap[i], wire[i], if_lt[iface[i]], if_fcs[iface[i]], m)
            _stamp(t, ts[i], m)
            if m.kind == PK_FRAG:
                if t.checksum and not ipv4_header_ok(m):
                    m.kind = PK_INVALID          # (ip_rcv drops it before defragmentation)
                    m.reason = R_IP_CHECKSUM
                else:
                    frag_handle(t, self._fq, m, m.vlan if zone_from_vlan else zone, &self._scratch[i][0])
            elif t.checksum and (m.kind == PK_TRACK or m.kind == PK_UNTRACKED):
                # (The kernel checks ICMPv6 sums before it leaves neighbour discovery untracked.)
                check_sums(m)
            if t.dccp_tracker and m.proto == IP_PROTO_DCCP and m.kind == PK_TRACK:
                # DCCP's own tracker (option): its header checked and its ports in the key; for an
                # ICMP error, the quoted packet's ports (kept aside by the parser).
                if m.pflags & PF_RELATED:
                    m.k[4] |= <uint64_t>m.seq
                else:
                    dccp_key(m)
            if m.kind == PK_TRACK:
                zbits = <uint64_t>(m.vlan if zone_from_vlan else zone) << 32
                m.k[4] |= zbits
                m.meta_mark = 0
                m.helper = 0
                if t.rs_on and rs_has(t, HP_RAW) and m.l3 != NULL:
                    # The raw chains (priority below conntrack's): every packet, before tracking,
                    # by its outer header for an ICMP error; no connection yet (ct state reads
                    # invalid, as the kernel's does).
                    _ctx_init(&rc, t, m, iface[i], CTS_INVALID, False)
                    if m.pflags & PF_RELATED:
                        _outer_key(m, okey)
                        rc.k = okey
                    else:
                        rc.k = m.k
                    rs_hook(t, HP_RAW, &rc)
                    m.meta_mark = rc.meta_mark
                    m.helper = rc.helper         # (iptables' CT --helper: a template)
                    if rc.notrack:
                        m.kind = PK_UNTRACKED
                        continue
                    if rc.zone_set:
                        m.k[4] = (m.k[4] & ~(<uint64_t>0xFFFF << 32)) | (<uint64_t>rc.zone << 32)
                m.rk4 = tuple_reverse_k4(m.k[4])
                if m.pflags & PF_RELATED:
                    # Looked up as the kernel does (nf_conntrack_inet_error): the quoted packet's
                    # tuple inverted, so the direction found is the error's own.
                    m.k[0], m.k[1], m.k[2], m.k[3] = m.k[2], m.k[3], m.k[0], m.k[1]
                    m.k[4], m.rk4 = m.rk4, m.k[4]
                m.hash = key_hash(m.k[0], m.k[1], m.k[2], m.k[3], m.k[4], m.rk4, t.seed)
                FASTCT_PREFETCH_R(&t.slots[(m.hash >> 32) & t.mask])
        if t.stage_clock:
            tk1 = clock_ticks()
            t.stage_ticks[0] += tk1 - tk0
        # Stage 2: read the (prefetched) index slots and prefetch the entry each one points to (its
        # second line too for the first LINE1_AHEAD packets; stage 3 fetches it for the others),
        # and the cold record when per-packet chains will read the ct mark.  Keys are compared in
        # stage 3, once they have arrived.
        for i in range(cnt):
            m = &self._meta[i]
            if m.kind == PK_TRACK:
                home = t.slots[(m.hash >> 32) & t.mask]
                if (home >> 32) == (m.hash >> 32) and not (home & SLOT_BYSRC):
                    low = <uint32_t>home        # (the usual case: what table_candidate finds first)
                else:
                    low = table_candidate(t, m.hash)
                cand = <int32_t>(low & SLOT_ENTRY) - 1
                m.idx = cand
                m.cand_reply = (low & SLOT_REPLY) != 0
                if cand >= 0:
                    FASTCT_PREFETCH_W(&t.e[cand])
                    if i < LINE1_AHEAD:
                        FASTCT_PREFETCH_W(<char *>&t.e[cand] + 64)
                    if t.nat_live:
                        FASTCT_PREFETCH_R(&t.nat[cand])     # (a packet of a NAT'd connection needs it)
                    if walk:
                        FASTCT_PREFETCH_W(&t.cold[cand])    # (the chains read and set the ct mark)
                elif t.n >= t.cap:
                    # A new connection into a full table: early drop reads the entries indexed
                    # from its home slot on (a flood's cost is these misses).
                    prefetch_eviction(t, m.hash)
        if t.stage_clock:
            tk2 = clock_ticks()
            t.stage_ticks[1] += tk2 - tk1
        # Stage 3: protocol state and outputs, in packet order.
        memset(t.fresh, 0, sizeof(t.fresh))     # (stage 2 has just read the index)
        t.stats[ST_PACKETS] += cnt
        # An established TCP ACK of a connection without NAT, found where stage 2 said, when nothing
        # in this batch looks at packets (no per-packet chains, no zone timeout policies): what the
        # general path below does with it, in a straight line.  tests/test_fastpath.py compares.
        cdef bint fast3 = t.tcp_fast and not walk and t.zone_policy == NULL
        for i in range(cnt):
            m = &self._meta[i]
            if i + LINE1_AHEAD < cnt and self._meta[i + LINE1_AHEAD].idx >= 0:
                FASTCT_PREFETCH_W(<char *>&t.e[self._meta[i + LINE1_AHEAD].idx] + 64)
            o_held[i] = 0
            if fast3 and m.kind == PK_TRACK and m.proto == IP_PROTO_TCP and m.pflags == 0 and \
                    not m.cand_reply and <uint32_t>m.idx < t.n and (m.tcpflags & 0x17) == 0x10:
                e = &t.e[m.idx]
                dres = match_dir(e, m.k, m.rk4, (e.status & IPS_NAT_MASK) != 0)
                if dres >= 0 and e.expires > m.now and e.state == TCP_ESTABLISHED and \
                        not (e.status & IPS_NAT_MASK):
                    m.dir = <uint8_t>dres
                    m.to = t.timeouts
                    if tcp_established_ack(t, e, m) == V_ACCEPT:
                        found += 1
                        e.status |= <uint16_t>(m.dir * IPS_SEEN_REPLY)
                        o_state[i] = CS_TRK | (CS_EST if e.status & IPS_SEEN_REPLY else CS_NEW) | \
                            (m.dir * CS_RPL)
                        o_entry[i] = m.idx
                        o_dir[i] = m.dir
                        continue
            if m.kind != PK_TRACK:
                o_state[i] = 0
                o_entry[i] = -1
                o_dir[i] = 0
                if m.kind == PK_INVALID:
                    o_state[i] = CS_INV | CS_TRK
                    if m.pflags & PF_FRAG_DROP:
                        t.stats[ST_FRAG_DROPPED] += 1
                    else:
                        t.stats[ST_ERROR if m.pflags & PF_ERROR_STAT else ST_INVALID] += 1
                    t.reasons[m.reason] += 1
                elif m.kind == PK_HELD:
                    o_held[i] = 1
                    t.stats[ST_FRAG_HELD] += 1
                elif m.kind == PK_NON_IP:
                    t.stats[ST_NON_IP] += 1
                elif m.kind == PK_UNTRACKED:
                    t.stats[ST_UNTRACKED] += 1
                    if walk and m.l3 != NULL:
                        if m.pflags & PF_RELATED:
                            _outer_key(m, okey)
                            _packet_chains(t, m, iface[i], -1, CTS_UNTRACKED, okey)
                        else:
                            _packet_chains(t, m, iface[i], -1, CTS_UNTRACKED, m.k)
                else:
                    t.stats[ST_LINKTYPE_SKIPPED] += 1
                    lt_skipped[m.linktype] += 1
                continue
            # Probed here, in packet order, so a connection an earlier packet of this batch created
            # or rebuilt (possibly reversed) is found as it is now.
            # The candidate stage 2 saw is checked first: almost always it is the connection.  Any
            # entry of entries[0:n] holding this tuple is its connection (tuples are unique there),
            # so a candidate that moved or was replaced meanwhile just falls back to the probe.
            idx = m.idx
            if m.cand_reply:
                # The candidate is a NAT'd connection's reply tuple.
                if <uint32_t>idx < t.n and (t.e[idx].status & IPS_NAT_MASK) and \
                        key_eq_tuple(t.nat[idx].r, m):
                    m.dir = DIR_REPLY
                else:
                    idx = table_find(t, m)
            elif <uint32_t>idx < t.n:
                dres = match_dir(&t.e[idx], m.k, m.rk4, (t.e[idx].status & IPS_NAT_MASK) != 0)
                if dres >= 0:
                    m.dir = <uint8_t>dres
                else:
                    idx = table_find(t, m)
            elif idx < 0 and not table_fresh(t, m.hash):
                # Stage 2 met no slot with its tag, and no slot was indexed at its hash since: a
                # new connection (the case of every SYN of a storm), no second probe needed.
                idx = -1
            else:
                idx = table_find(t, m)
            m.to = t.timeouts
            if t.zone_policy != NULL:
                pol = t.zone_policy[(m.k[4] >> 32) & 0xFFFF]
                if pol:
                    m.to = t.policies + (pol - 1) * TO_N
            if m.pflags & PF_RELATED:
                # An ICMP error quoting a packet of a connection: related to it, in the direction
                # opposite to the quoted packet's.  Not counted, no refresh, SEEN_REPLY untouched
                # (kernel nf_conntrack_inet_error); quoting no live connection counts in `error`.
                if idx >= 0 and t.e[idx].expires > m.now:
                    found += 1
                    o_dir[i] = m.dir
                    o_state[i] = CS_TRK | CS_REL | (CS_RPL if m.dir == DIR_REPLY else 0)
                    o_entry[i] = idx
                    if walk:
                        _outer_key(m, okey)
                        _packet_chains(t, m, iface[i], idx, CTS_RELATED, okey)
                    if t.e[idx].status & IPS_NAT_MASK:
                        o_state[i] |= nat_state_bits(&t.e[idx], m.dir)
                        if rewrite:
                            _rewrite(t, <uint32_t>idx, m, m.dir)
                else:
                    o_state[i] = CS_INV | CS_TRK
                    o_entry[i] = -1
                    o_dir[i] = 0
                    t.stats[ST_ERROR] += 1
                    t.reasons[R_ICMP_ERROR] += 1
                continue
            if idx >= 0 and t.e[idx].expires <= m.now:
                # Dead but not yet swept: the kernel would not find it.  Its slot is reused below if
                # this packet starts a new connection (same tuple, same hash, same slot).
                v = V_REOPEN
            elif idx >= 0:
                e = &t.e[idx]
                c = &t.cold[idx]
                found += 1
                v = proto_packet(t, e, c, m)
                if v == V_ACCEPT:
                    # (Arithmetic, not branches: the direction is a coin toss to the predictor.)
                    e.status |= <uint16_t>(m.dir * IPS_SEEN_REPLY)
                    st = CS_TRK | (CS_EST if e.status & IPS_SEEN_REPLY else CS_NEW) | (m.dir * CS_RPL)
                    if walk:
                        _packet_chains(t, m, iface[i], idx,
                                       CTS_NEW if st & CS_NEW else CTS_ESTABLISHED, m.k)
                    if e.status & IPS_NAT_MASK:
                        st |= nat_state_bits(e, m.dir)
                        if rewrite:
                            _rewrite(t, <uint32_t>idx, m, m.dir)
                    o_state[i] = st
                    o_entry[i] = idx
                    o_dir[i] = m.dir
                    continue
                if v == V_INVALID:
                    if walk:
                        _packet_chains(t, m, iface[i], -1, CTS_INVALID, m.k)
                    o_state[i] = CS_INV | CS_TRK
                    o_entry[i] = -1
                    o_dir[i] = m.dir
                    t.stats[ST_INVALID] += 1
                    t.reasons[m.reason] += 1
                    continue
                # V_REOPEN: the old connection is replaced by a new one from this packet.
            else:
                v = V_ACCEPT
            # A new connection.
            m.dir = DIR_ORIGINAL
            reused = -1
            zn = <uint16_t>((m.k[4] >> 32) & 0xFFFF)
            if idx >= 0 and (t.e[idx].status & IPS_NAT_MASK):
                # A NAT'd connection being replaced: its tuples go with it (the new one gets its
                # own bindings, and may hash elsewhere), so it is unindexed and its place used as
                # room made for the new one.  Should the new one not be made, it is forgotten: a
                # dead entry left without its NAT would claim its reverse tuple.
                entry_unindex(t, <uint32_t>idx)
                reused = idx
                idx = -1
            full = idx < 0 and reused < 0 and t.n >= t.cap
            if idx >= 0:
                # A dead entry, or one a TCP reopen replaces: rebuilt in place (same tuple hash).
                e = &t.e[idx]
                c = &t.cold[idx]
            elif full or reused >= 0:
                e = &self._spare_e     # built aside; it takes the place made for it below
                c = &self._spare_c
            else:
                e = &t.e[t.n]          # built in the next free entry; it only counts once indexed
                c = &t.cold[t.n]
            reason = proto_new(t, e, c, m)
            if reason == R_VALID:
                key_store(e, m)
            elif full and not _has_reply_tuple(m):
                full = False           # no tuple to invert: the kernel allocates nothing
            if full and t.early_drop and (reason != R_VALID or not commit):
                # The kernel allocates the connection, making room if the table is full, before
                # the protocol looks at the packet; a refused packet (or a verdict without commit)
                # frees it again, but the room made stays made.  (Open vSwitch's userspace
                # conntrack, early_drop=False, allocates only what it commits.)
                reused = _make_room(t, m)
                if reused < 0:
                    _drop(t, o_state, o_entry, o_dir, i, R_TABLE_FULL)
                    continue
                self._note(reused, -1, pos0 + i)
                self._forget(<uint32_t>reused, pos0 + i)
                reused = -1
            if reason != R_VALID:
                o_state[i] = CS_INV | CS_TRK
                o_entry[i] = -1
                o_dir[i] = 0
                t.stats[ST_INVALID] += 1
                t.reasons[reason] += 1
                if idx >= 0:
                    e.expires = m.now    # the dead entry stays dead (proto_new cleared its state)
                if reused >= 0:
                    self._forget(<uint32_t>reused, pos0 + i)
                continue
            if not commit:
                # OVS ct() without commit: the verdict of a new connection, nothing stored.
                o_state[i] = CS_TRK | CS_NEW
                o_entry[i] = -1
                o_dir[i] = 0
                if idx >= 0:
                    e.expires = m.now
                if reused >= 0:
                    self._forget(<uint32_t>reused, pos0 + i)
                continue
            if idx < 0 and reused < 0 and t.zone_limit != NULL and t.zone_limit[zn] and \
                    t.zone_count[zn] >= t.zone_limit[zn]:
                # The zone is at its limit (OVS ct limits): a dead entry of the zone may make room
                # (dead entries count until they are collected), else the connection is dropped.
                reused = reclaim_dead(t, m.now, 4096, zn)
                if reused < 0:
                    _drop(t, o_state, o_entry, o_dir, i, R_ZONE_LIMIT)
                    continue
                self._note(reused, -1, pos0 + i)
            if full and reused < 0:
                # Table full (nf_conntrack_max): early drop or a dead entry makes room, else the
                # packet is dropped, as the kernel does.  Bounded work: floods stay cheap.
                reused = _make_room(t, m)
                if reused < 0:
                    _drop(t, o_state, o_entry, o_dir, i, R_TABLE_FULL)
                    continue
                self._note(reused, -1, pos0 + i)
            if t.rs_on:
                # The ruleset's chains and NAT bindings (prerouting, then postrouting), before the
                # connection is indexed so that its own tuples are not in the way of the
                # uniqueness checks.
                _ctx_init(&rc, t, m, iface[i], CTS_NEW, True)
                rc.helper = m.helper
                nat_setup(t, m.k, &rc, oif[i] if oif != NULL else -1, idx, &nat)
                if nat.reason != R_VALID:
                    if reused >= 0:
                        self._forget(<uint32_t>reused, pos0 + i)
                    if idx >= 0:
                        e.expires = m.now
                    _drop(t, o_state, o_entry, o_dir, i, nat.reason)
                    if nat.reason != R_RULESET_DROP and nat.reason != R_NO_ROUTE:
                        t.stats[ST_INSERT_FAILED] += 1
                    continue
            if reused >= 0:
                # Rebuilt where the room was made (an unindexed entry), so no other entry moves.
                zone_count_add(t, t.e[reused].zone, -1)
                zone_count_add(t, zn, 1)
                memcpy(&t.e[reused], e, sizeof(ct_entry))
                memcpy(&t.cold[reused], c, sizeof(ct_cold))
                e = &t.e[reused]
                c = &t.cold[reused]
            if idx < 0:
                if slot_insert(t, m.hash, <uint32_t>(reused if reused >= 0 else t.n)) < 0:
                    if reused >= 0:
                        self._forget(<uint32_t>reused, pos0 + i)   # never leave an unindexed entry behind
                    _drop(t, o_state, o_entry, o_dir, i, R_CHAIN_TOO_LONG)
                    t.stats[ST_CHAINTOOLONG] += 1
                    t.stats[ST_INSERT_FAILED] += 1
                    continue
                if reused >= 0:
                    idx = reused
                else:
                    idx = <int32_t>t.n
                    t.n += 1
                    zone_count_add(t, zn, 1)
            e.status = IPS_CONFIRMED
            memset(c, 0, sizeof(ct_cold))
            c.aux = 0xFFFFFFFF
            if t.rs_on:
                if rc.mark_set:
                    c.mark = rc.ct_mark
                if rc.helper:
                    c.aux = rc.helper - 1
                e.status |= nat.status
                if nat.status & IPS_NAT_MASK:
                    memcpy(t.nat[idx].r, nat.r, 40)
                    t.nat[idx].rhash = key_hash(nat.r[0], nat.r[1], nat.r[2], nat.r[3], nat.r[4],
                                                tuple_reverse_k4(nat.r[4]), t.seed)
                    if not _index_nat(t, <uint32_t>idx):
                        # Its reply tuple (or source) could not be indexed: the connection is not
                        # made after all.
                        entry_unindex(t, <uint32_t>idx)
                        self._forget(<uint32_t>idx, pos0 + i)
                        _drop(t, o_state, o_entry, o_dir, i, R_CHAIN_TOO_LONG)
                        t.stats[ST_CHAINTOOLONG] += 1
                        t.stats[ST_INSERT_FAILED] += 1
                        continue
            e.packets_lo[0] = e.packets_lo[1] = 0
            e.bytes_lo[0] = e.bytes_lo[1] = 0
            e.expires = m.now
            e.last_seen = m.now
            c.start = m.now
            t.stats[ST_INSERT] += 1
            v = proto_packet(t, e, c, m)
            if v != V_ACCEPT:
                # The first packet refused after all (cannot happen for a packet proto_new accepted,
                # but never leave a half-made entry alive).
                e.expires = m.now
                o_state[i] = CS_INV | CS_TRK
                o_entry[i] = -1
                o_dir[i] = 0
                t.stats[ST_INVALID] += 1
                t.reasons[m.reason] += 1
                continue
            if e.status & IPS_DYING:
                e.expires = m.now
            st = CS_TRK | CS_NEW
            if e.status & IPS_NAT_MASK:
                st |= nat_state_bits(e, DIR_ORIGINAL)
                if rewrite:
                    _rewrite(t, <uint32_t>idx, m, DIR_ORIGINAL)
            o_state[i] = st
            o_entry[i] = idx
            o_dir[i] = 0
        t.stats[ST_FOUND] += found
        if t.stage_clock:
            t.stage_ticks[2] += clock_ticks() - tk2
