# cython: language_level=3
"""Stage 4b: walk a compiled ruleset (nftables / iptables chains) for one packet.

The ruleset arrives compiled (fastct/rules_compile.py): chains of rules, rules of matches, and per
hook point (HP_*) the base chains that run there, in priority order.  A walk evaluates one base
chain as the kernel's nf_tables does: rules in order; a rule whose matches all hold runs its
statements (counter, ct mark set, meta mark set, ct zone set, notrack, ct helper set), then its
verdict: continue with the next rule, accept (this chain is done: the next base chain runs), drop,
return (back to the rule after the jump), jump (remember where we were), goto (no way back), or a
NAT target (ends the chain; at a NAT hook point the remaining nat chains are skipped, as nf_nat
stops at the first chain that set a binding).  The compiler refuses loops, so a walk is bounded:
at most RS_MAX_DEPTH nested jumps, each rule visited at most once per jump level.

A walk only reads the packet through rs_ctx, so the same code serves the raw chains (before the
lookup: no connection), the per-packet chains after it, and a new connection's NAT chains (the tuple
as the earlier manipulations left it).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcmp
from fastct._types cimport *

cdef enum:
    RS_MAX_DEPTH = 16       # nested jumps (the kernel's NFT_JUMP_STACK_SIZE)

# nft's ct state bits (NF_CT_STATE_BIT of the packet's ctinfo, and the untracked bit).
cdef enum:
    CTS_INVALID = 1
    CTS_ESTABLISHED = 2
    CTS_RELATED = 4
    CTS_NEW = 8
    CTS_UNTRACKED = 64

# What a walk sees of the packet and its connection, and what the statements it ran left.
cdef struct rs_ctx:
    const uint64_t *k       # the tuple as the chain sees the packet (ct_entry's key layout)
    int32_t iif             # gateway interface numbers, -1 unknown
    int32_t oif
    uint32_t ct_state       # CTS_* bit
    uint32_t ct_mark
    uint32_t meta_mark
    uint32_t iplen          # what a counter adds to its bytes
    uint8_t has_ct          # 0 before conntrack: ct matches (direction, zone, mark) fail
    uint8_t ct_dir          # DIR_*
    # set by statements:
    uint8_t notrack
    uint8_t mark_set        # ct mark set ran (ct_mark holds the value)
    uint8_t zone_set        # ct zone set ran (zone holds the value)
    uint8_t helper          # ct helper set: helper number + 1 (0: none)
    uint16_t zone
    int32_t nat             # RV_NAT: the nat_target the walk ended on


cdef inline bint _has_ports(uint8_t proto) noexcept nogil:
    return proto == IP_PROTO_TCP or proto == IP_PROTO_UDP or proto == IP_PROTO_UDPLITE or \
        proto == IP_PROTO_SCTP or proto == IP_PROTO_DCCP

cdef inline bint _in_iranges(const ct_table *t, const rs_match *mt, uint32_t v) noexcept nogil:
    cdef uint32_t i
    cdef const rs_irange *r = t.iranges + mt.first
    for i in range(mt.count):
        if r[i].lo <= v <= r[i].hi:
            return True
    return False

cdef inline bint _in_aranges(const ct_table *t, const rs_match *mt, const uint8_t *a) noexcept nogil:
    cdef uint32_t i
    cdef const rs_arange *r = t.aranges + mt.first
    for i in range(mt.count):
        if memcmp(a, r[i].lo, 16) >= 0 and memcmp(a, r[i].hi, 16) <= 0:
            return True
    return False

cdef inline bint rs_match_holds(const ct_table *t, const rs_match *mt, const rs_ctx *c) noexcept nogil:
    """Whether one match holds.  A key the packet does not have (an address of the other family,
    ports of a protocol without them, a connection before conntrack) fails the match whether or not
    it is negated, as the kernel's expression breaks off the rule."""
    cdef uint64_t k4 = c.k[4]
    cdef uint8_t l3 = <uint8_t>(k4 >> 48)
    cdef uint8_t proto = <uint8_t>(k4 >> 56)
    cdef uint32_t v
    cdef uint8_t key = mt.key
    if key == MK_SADDR or key == MK_DADDR:
        if l3 != mt.l3:
            return False
        return _in_aranges(t, mt, <const uint8_t *>&c.k[0 if key == MK_SADDR else 2]) != mt.neg
    if key == MK_CT_STATE:
        return ((c.ct_state & mt.mask) != 0) != mt.neg
    if key == MK_IIF:
        v = <uint32_t>c.iif
    elif key == MK_OIF:
        v = <uint32_t>c.oif
    elif key == MK_NFPROTO:
        v = 4 if l3 == L3_IPV4 else 6
    elif key == MK_L4PROTO:
        v = proto
    elif key == MK_SPORT or key == MK_DPORT:
        if not _has_ports(proto):
            return False
        v = <uint32_t>((k4 >> (0 if key == MK_SPORT else 16)) & 0xFFFF)
    elif key == MK_META_MARK:
        v = c.meta_mark & mt.mask
    else:
        if not c.has_ct:
            return False
        if key == MK_CT_DIR:
            v = c.ct_dir
        elif key == MK_CT_ZONE:
            v = <uint32_t>((k4 >> 32) & 0xFFFF)
        else:
            v = c.ct_mark & mt.mask
    return _in_iranges(t, mt, v) != mt.neg

cdef inline bint _rule_holds(const ct_table *t, const rs_rule *r, const rs_ctx *c) noexcept nogil:
    cdef uint32_t i
    for i in range(r.m_count):
        if not rs_match_holds(t, &t.matches[r.m_first + i], c):
            return False
    return True

cdef inline void _statements(ct_table *t, const rs_rule *r, uint32_t ri, rs_ctx *c) noexcept nogil:
    cdef uint16_t s = r.stmts
    if s & RS_COUNTER:
        t.rule_counters[2 * ri] += 1
        t.rule_counters[2 * ri + 1] += c.iplen
    if s & RS_CT_MARK:
        c.ct_mark = r.ct_mark
        c.mark_set = 1
    if s & RS_META_MARK:
        c.meta_mark = r.meta_mark
    if s & RS_CT_ZONE:
        c.zone = r.zone
        c.zone_set = 1
    if s & RS_NOTRACK:
        c.notrack = 1
        c.ct_state = CTS_UNTRACKED       # (later rules see it untracked, as the kernel's notrack)
    if (s & RS_HELPER) and t.helper_proto[r.helper] == <uint8_t>(c.k[4] >> 56):
        c.helper = r.helper + 1     # (a helper of another protocol is not attached, as the kernel)

cdef inline uint8_t rs_run_chain(ct_table *t, uint32_t chain, rs_ctx *c) noexcept nogil:
    """Walk base chain `chain`: RV_ACCEPT, RV_DROP or RV_NAT (c.nat set)."""
    cdef uint32_t stack_pos[RS_MAX_DEPTH]
    cdef uint32_t stack_end[RS_MAX_DEPTH]
    cdef int depth = 0
    cdef uint32_t pos = t.chains[chain].first
    cdef uint32_t end = pos + t.chains[chain].count
    cdef const rs_rule *r
    cdef uint8_t v
    if t.chains[chain].l3 and t.chains[chain].l3 != <uint8_t>(c.k[4] >> 48):
        return RV_ACCEPT                     # (the hook runs only its own family's tables)
    while True:
        if pos >= end:
            if depth == 0:
                return t.chains[chain].policy
            depth -= 1                       # the end of a jumped-to chain: back after the jump
            pos = stack_pos[depth]
            end = stack_end[depth]
            continue
        r = &t.rules[pos]
        if not _rule_holds(t, r, c):
            pos += 1
            continue
        _statements(t, r, pos, c)
        pos += 1
        v = r.verdict
        if v == RV_CONTINUE:
            continue
        if v == RV_ACCEPT or v == RV_DROP:
            return v
        if v == RV_NAT:
            c.nat = r.target
            return RV_NAT
        if v == RV_RETURN:
            if depth == 0:
                return t.chains[chain].policy
            depth -= 1
            pos = stack_pos[depth]
            end = stack_end[depth]
            continue
        if v == RV_JUMP:
            if depth >= RS_MAX_DEPTH:          # (the compiler refuses deeper rulesets)
                return RV_ACCEPT
            stack_pos[depth] = pos
            stack_end[depth] = end
            depth += 1
        # RV_JUMP and RV_GOTO: into the target chain
        pos = t.chains[r.target].first
        end = pos + t.chains[r.target].count

cdef inline uint8_t rs_hook(ct_table *t, uint32_t hp, rs_ctx *c) noexcept nogil:
    """Run the base chains of hook point hp in priority order: RV_DROP as soon as one drops,
    RV_NAT as soon as one sets a binding (c.nat), else RV_ACCEPT."""
    cdef uint32_t i
    cdef uint8_t v
    for i in range(t.hp_first[hp], t.hp_first[hp + 1]):
        v = rs_run_chain(t, t.base[i], c)
        if v != RV_ACCEPT:
            return v
    return RV_ACCEPT

cdef inline bint rs_has(const ct_table *t, uint32_t hp) noexcept nogil:
    return t.chains != NULL and t.hp_first[hp] < t.hp_first[hp + 1]

cdef inline int32_t rs_iif(const ct_table *t, uint16_t capture_iface) noexcept nogil:
    """The gateway interface a packet came in on (the capture interface it was seen on)."""
    if t.iif_map == NULL:
        return capture_iface
    if capture_iface < t.n_iif_map:
        return t.iif_map[capture_iface]
    return -1

cdef inline int32_t rs_out_iface(const ct_table *t, const uint64_t *k) noexcept nogil:
    """The interface a packet to tuple k's destination leaves by: the longest matching route of the
    interface model, else the default (-1 when there is none)."""
    cdef uint32_t i, whole, rest
    cdef const rs_route *r
    cdef const uint8_t *a = <const uint8_t *>&k[2]
    cdef uint8_t l3 = <uint8_t>(k[4] >> 48)
    for i in range(t.n_routes):
        r = &t.routes[i]
        if r.l3 != l3:
            continue
        whole = r.plen >> 3
        rest = r.plen & 7
        if whole and memcmp(a, r.prefix, whole) != 0:
            continue
        if rest and ((a[whole] ^ r.prefix[whole]) & <uint8_t>(0xFF << (8 - rest))) != 0:
            continue
        return r.oif
    return t.default_oif
