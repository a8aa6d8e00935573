# cython: language_level=3
"""Stage 5a: a new connection's ruleset walk and NAT bindings (which translation, a unique reply tuple).

A connection's first packet walks the ruleset's chains (fastct/_rules.pxd): the nat prerouting
chains may rewrite the destination (dnat, redirect), then the nat postrouting chains the source
(snat, masquerade); the filter chains between them may set its mark or helper.  As in the kernel (nf_nat_core.c, get_unique_tuple),
a translation keeps the packet's address or port where the range allows and the resulting tuple is
unused, else picks an address by hash and walks the port range from a hashed (or random) start.
Where no postrouting rule applies, the source still gets the kernel's null binding: kept, unless
the reply tuple is already taken (a clash NAT made), then its port moves.  A tuple is "taken" when
its reverse is a tuple of another connection (either direction).  When every attempt is taken, the
connection cannot be made unique and its packet is dropped (R_NAT_NO_TUPLE): never a duplicate.

Tuples here are five words in ct_entry's key layout (src 0-1, dst 2-3, the key word 4).
Differences from the kernel, and why:
- the start of a port walk is a keyed hash of the tuple (reproducible for a given seed) unless the
  rule says random or fully-random; the kernel draws it at random;
- the address of a range is picked with fastct's keyed hash, not the kernel's jhash, so a client
  keeps its address (persistent) for a given seed, but not the kernel's exact choice;
- an expired connection not yet swept still holds its tuples (the kernel collects it on the spot);
- a port held by a closing (TIME_WAIT) source-NAT'd connection is not taken over when a range is
  nearly exhausted (the kernel's nf_nat_used_tuple_harder).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcmp, memcpy
from fastct._types cimport *
from fastct._parse cimport tuple_reverse_k4
from fastct._flowkey cimport key_hash
from fastct._table cimport slot_matches, slot_entry, bysrc_hash, SLOT_BYSRC
from fastct._rules cimport rs_ctx, rs_hook, rs_out_iface

cdef enum:
    MANIP_SRC = 0
    MANIP_DST = 1
    NAT_MAX_ATTEMPTS = 128      # ports tried per round (the kernel's bound, NF_NAT_MAX_ATTEMPTS)

# The outcome for a new connection: its reply tuple and the status bits NAT adds.
cdef struct nat_choice:
    uint64_t r[5]           # the reply tuple (the reverse of the translated tuple)
    uint16_t status         # IPS_SRC_NAT / IPS_DST_NAT (tuple changed) and the _DONE bits
    uint8_t reason          # R_VALID, or why the packet is dropped


cdef inline uint64_t xorshift(ct_table *t) noexcept nogil:
    t.rng ^= t.rng << 13
    t.rng ^= t.rng >> 7
    t.rng ^= t.rng << 17
    return t.rng

cdef inline void tuple_reverse(const uint64_t *k, uint64_t *out) noexcept nogil:
    out[0] = k[2]; out[1] = k[3]; out[2] = k[0]; out[3] = k[1]
    out[4] = tuple_reverse_k4(k[4])

cdef inline bint tuple_eq(const uint64_t *a, const uint64_t *b) noexcept nogil:
    return a[0] == b[0] and a[1] == b[1] and a[2] == b[2] and a[3] == b[3] and a[4] == b[4]

cdef inline bint _taken_in(ct_table *t, const uint64_t *slots, uint64_t mask, pkt_meta *q,
                           int32_t exclude) noexcept nogil:
    cdef uint64_t tag = q.hash >> 32
    cdef uint64_t i = tag & mask
    cdef uint64_t s
    cdef uint8_t dir
    cdef uint64_t n = 0
    while True:
        s = slots[i]
        if s == 0 or n > mask:
            return False
        n += 1
        if (s >> 32) == tag and <int32_t>slot_entry(s) != exclude and slot_matches(t, s, q, &dir):
            return True
        i = (i + 1) & mask

cdef inline bint tuple_taken(ct_table *t, const uint64_t *k, int32_t exclude) noexcept nogil:
    """Whether a connection other than `exclude` would clash with a new one whose original
    direction has tuple k: its reply tuple, k reversed, is already a tuple of another connection
    (kernel nf_nat_used_tuple)."""
    cdef pkt_meta q
    tuple_reverse(k, q.k)
    q.rk4 = k[4]
    q.hash = key_hash(q.k[0], q.k[1], q.k[2], q.k[3], q.k[4], q.rk4, t.seed)
    if _taken_in(t, t.slots, t.mask, &q, exclude):
        return True
    return t.oslots != NULL and _taken_in(t, t.oslots, t.omask, &q, exclude)

cdef inline bint nat_has_ports(const ct_table *t, uint8_t proto) noexcept nogil:
    """Protocols whose tuple carries ports NAT may translate (DCCP's only with its own tracker:
    tracked as generic its tuple has none)."""
    return proto == IP_PROTO_TCP or proto == IP_PROTO_UDP or proto == IP_PROTO_UDPLITE or \
        proto == IP_PROTO_SCTP or (proto == IP_PROTO_DCCP and t.dccp_tracker)

# ---- one manipulation (get_unique_tuple) -----------------------------------------------------

# The range one manipulation maps into: addresses [amin, amax] (map_ips) and ports [pmin, pmax]
# (ports: 0 when the rule gives none).
cdef struct nat_range:
    uint8_t amin[16]
    uint8_t amax[16]
    uint16_t pmin
    uint16_t pmax
    uint8_t map_ips
    uint8_t flags

cdef inline uint16_t _key_port(const uint64_t *k, uint8_t manip) noexcept nogil:
    """The port (ICMP: the id, whichever the manipulation) a manipulation changes."""
    cdef uint8_t proto = <uint8_t>(k[4] >> 56)
    if manip == MANIP_SRC or proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6:
        return <uint16_t>(k[4] & 0xFFFF)
    return <uint16_t>((k[4] >> 16) & 0xFFFF)

cdef inline void _set_key_port(uint64_t *k, uint8_t manip, uint16_t port) noexcept nogil:
    cdef uint8_t proto = <uint8_t>(k[4] >> 56)
    if manip == MANIP_SRC or proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6:
        k[4] = (k[4] & ~<uint64_t>0xFFFF) | port
    else:
        k[4] = (k[4] & ~(<uint64_t>0xFFFF << 16)) | (<uint64_t>port << 16)

cdef inline bint _addr_in_range(const uint64_t *k, uint8_t manip, const nat_range *rg) noexcept nogil:
    cdef const uint8_t *a = <const uint8_t *>&k[0 if manip == MANIP_SRC else 2]
    return not rg.map_ips or (memcmp(a, rg.amin, 16) >= 0 and memcmp(a, rg.amax, 16) <= 0)

cdef inline bint _port_in_range(const ct_table *t, const uint64_t *k, uint8_t manip,
                                const nat_range *rg) noexcept nogil:
    cdef uint8_t proto = <uint8_t>(k[4] >> 56)
    cdef uint16_t p
    if rg.pmin == 0 or not (nat_has_ports(t, proto) or proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6):
        return True
    p = _key_port(k, manip)
    return rg.pmin <= p <= rg.pmax

cdef inline uint64_t _be64(const uint8_t *p) noexcept nogil:
    return <uint64_t>fastct_be32(p) << 32 | fastct_be32(p + 4)

cdef inline void _put_be64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (56 - 8 * i))

cdef inline void _pick_address(ct_table *t, uint64_t *k, uint8_t manip, const nat_range *rg) noexcept nogil:
    """An address of the range for this connection: by a keyed hash of the source address and,
    unless persistent, the destination, so a client keeps its address (kernel find_best_ips_proto)."""
    cdef uint8_t *a = <uint8_t *>&k[0 if manip == MANIP_SRC else 2]
    cdef uint64_t h, v, lo_min, hi_min, lo_d, hi_d, off
    cdef uint64_t zone = (k[4] >> 32) & 0xFFFF
    if not rg.map_ips:
        return
    if memcmp(rg.amin, rg.amax, 16) == 0:
        memcpy(a, rg.amin, 16)
        return
    if rg.flags & NAT_F_PERSISTENT:
        h = fastct_hash5(k[0], k[1], 0, 0, zone, t.seed)
    else:
        h = fastct_hash5(k[0], k[1], k[2], k[3], zone, t.seed)
    if <uint8_t>(k[4] >> 48) == L3_IPV4:
        # min + a 32-bit hash scaled into the range size (addresses in bytes 0-3).
        v = fastct_be32(rg.amin)
        v += ((h >> 32) * (<uint64_t>fastct_be32(rg.amax) - v + 1)) >> 32
        a[0] = <uint8_t>(v >> 24); a[1] = <uint8_t>(v >> 16); a[2] = <uint8_t>(v >> 8); a[3] = <uint8_t>v
        return
    # IPv6: min + (h mod size), in 128-bit arithmetic on big-endian halves.
    hi_min = _be64(rg.amin)
    lo_min = _be64(rg.amin + 8)
    lo_d = _be64(rg.amax + 8) - lo_min
    hi_d = _be64(rg.amax) - hi_min - (1 if _be64(rg.amax + 8) < lo_min else 0)
    lo_d += 1                                  # size = max - min + 1
    if lo_d == 0:
        hi_d += 1
    off = h if hi_d != 0 or lo_d == 0 else h % lo_d     # h < 2^64 <= size, or reduce
    v = lo_min + off
    _put_be64(a + 8, v)
    _put_be64(a, hi_min + (1 if v < lo_min else 0))

cdef inline bint _unique_port(ct_table *t, uint64_t *k, uint8_t manip, const nat_range *rg,
                              int32_t exclude) noexcept nogil:
    """Walk the port (ICMP id) range for a tuple not taken (kernel nf_nat_l4proto_unique_tuple):
    up to 128 tries from a hashed or random start, then rounds of half as many from new starts
    while more than 16.  True when k (changed in place) is unique."""
    cdef uint8_t proto = <uint8_t>(k[4] >> 56)
    cdef bint icmp = proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6
    cdef uint32_t lo, size, attempts, i, rounds = 0
    cdef uint16_t port = _key_port(k, manip)
    cdef uint16_t off
    if icmp:
        if rg.pmin:
            lo = rg.pmin; size = <uint32_t>rg.pmax - rg.pmin + 1
        else:
            lo = 0; size = 65536
    elif nat_has_ports(t, proto):
        if rg.pmin:
            lo = rg.pmin; size = <uint32_t>rg.pmax - rg.pmin + 1
        elif manip == MANIP_DST:
            return not tuple_taken(t, k, exclude)      # a destination port never moves by itself
        elif port < 512:
            lo = 1; size = 511
        elif port < 1024:
            lo = 600; size = 424
        else:
            lo = 1024; size = 64512
    else:
        return not tuple_taken(t, k, exclude)          # no ports: the addresses decide
    attempts = size if size < NAT_MAX_ATTEMPTS else NAT_MAX_ATTEMPTS
    while True:
        if rg.flags & (NAT_F_RANDOM | NAT_F_FULLY_RANDOM):
            off = <uint16_t>(xorshift(t) >> 17)
        elif manip == MANIP_DST and rounds == 0:
            off = 0
        else:
            off = <uint16_t>(fastct_hash5(k[0], k[1], k[2], k[3], k[4] ^ rounds, t.seed) >> 48)
        for i in range(attempts):
            _set_key_port(k, manip, <uint16_t>(lo + off % size))
            off += 1
            if not tuple_taken(t, k, exclude):
                return True
        if attempts >= size or attempts < 16:
            return False
        attempts //= 2
        rounds += 1

cdef inline bint _bysrc_in(ct_table *t, const uint64_t *slots, uint64_t mask, uint64_t h,
                           const uint64_t *k, const nat_range *rg, int32_t exclude,
                           uint64_t *out) noexcept nogil:
    cdef uint64_t tag = h >> 32
    cdef uint64_t i = tag & mask
    cdef uint64_t s, n = 0
    cdef uint32_t x
    cdef const uint64_t *o
    cdef const uint64_t *r
    cdef uint8_t proto = <uint8_t>(k[4] >> 56)
    while n <= mask:
        s = slots[i]
        if s == 0:
            return False
        x = slot_entry(s)
        if (s & SLOT_BYSRC) and (s >> 32) == tag and <int32_t>x != exclude:
            o = <const uint64_t *>&t.e[x]
            if o[0] == k[0] and o[1] == k[1] and \
                    (o[4] & 0xFFFFFFFF0000FFFFULL) == (k[4] & 0xFFFFFFFF0000FFFFULL):
                # Its mapped source is its reply tuple's destination (ICMP: the id stays in sport).
                r = t.nat[x].r
                out[0] = r[2]
                out[1] = r[3]
                out[2] = k[2]
                out[3] = k[3]
                if proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6:
                    out[4] = (k[4] & ~<uint64_t>0xFFFF) | (r[4] & 0xFFFF)
                else:
                    out[4] = (k[4] & ~<uint64_t>0xFFFF) | ((r[4] >> 16) & 0xFFFF)
                if _addr_in_range(out, MANIP_SRC, rg) and _port_in_range(t, out, MANIP_SRC, rg):
                    return True
        i = (i + 1) & mask
        n += 1
    return False

cdef inline bint _appropriate_src(ct_table *t, const uint64_t *k, const nat_range *rg, int32_t exclude,
                                  uint64_t *out) noexcept nogil:
    """The mapping a connection from the same source (zone, protocol, address, port) already got,
    towards this connection's destination: the first of the bysource chain that lies in the range
    (kernel find_appropriate_src).  Endpoint-independent mapping: one source, one mapping."""
    cdef uint64_t h = bysrc_hash(k, t.seed)
    if _bysrc_in(t, t.slots, t.mask, h, k, rg, exclude, out):
        return True
    return t.oslots != NULL and _bysrc_in(t, t.oslots, t.omask, h, k, rg, exclude, out)

cdef inline bint unique_tuple(ct_table *t, uint64_t *k, uint8_t manip, const nat_range *rg,
                              int32_t exclude) noexcept nogil:
    """Map tuple k (in place) into the range so that it is unique (kernel get_unique_tuple):
    keep it when it is in range and free, else an address by hash and a free port.  True when
    the result is unique."""
    cdef bint random_all = (rg.flags & (NAT_F_RANDOM | NAT_F_FULLY_RANDOM)) != 0
    cdef uint64_t mapped[5]
    if manip == MANIP_SRC and not random_all:
        if _addr_in_range(k, manip, rg) and _port_in_range(t, k, manip, rg):
            if not tuple_taken(t, k, exclude):
                return True
        elif _appropriate_src(t, k, rg, exclude, mapped) and not tuple_taken(t, mapped, exclude):
            memcpy(k, mapped, 40)        # the source keeps the mapping it already has
            return True
    _pick_address(t, k, manip, rg)
    if not random_all and _port_in_range(t, k, manip, rg):
        if rg.pmin != 0 and rg.pmin == rg.pmax:
            return not tuple_taken(t, k, exclude)    # one port: nothing else to try
        if not tuple_taken(t, k, exclude):
            return True
    return _unique_port(t, k, manip, rg, exclude)

cdef inline bint _if_address(const ct_table *t, int32_t ifn, uint8_t l3, nat_range *rg) noexcept nogil:
    """The range of one address: interface ifn's address of family l3; False when it has none."""
    cdef uint32_t fam = 0 if l3 == L3_IPV4 else 1
    if ifn < 0 or <uint32_t>ifn >= t.n_if_addr or not (t.if_has[ifn] & (1 << fam)):
        return False
    memcpy(rg.amin, t.if_addr + ifn * 32 + fam * 16, 16)
    memcpy(rg.amax, rg.amin, 16)
    return True

cdef inline bint _target_range(const ct_table *t, const nat_target *r, uint8_t l3, int32_t iif,
                               int32_t oif, nat_range *rg) noexcept nogil:
    """The range target r maps into; False when it has none (redirect or masquerade on an interface
    without an address of the connection's family: the kernel drops the packet)."""
    rg.pmin = r.to_port_lo
    rg.pmax = r.to_port_hi
    rg.flags = r.flags
    rg.map_ips = 1
    if r.action == NAT_REDIRECT:
        return _if_address(t, iif, l3, rg)
    if r.action == NAT_MASQUERADE and (r.flags & NAT_F_IFADDR):
        return _if_address(t, oif, l3, rg)
    memcpy(rg.amin, r.to_min, 16)
    memcpy(rg.amax, r.to_max, 16)
    return True

cdef inline int _nat_hook(ct_table *t, uint8_t hp, int manip, rs_ctx *c, uint8_t l3, int32_t oif,
                          uint64_t *k, int32_t exclude, bint *unique, nat_choice *out) noexcept nogil:
    """Run the nat chains of hook point hp (HP_DNAT or HP_SNAT) and apply the target they chose to
    tuple k (manip: which end).  1 translated, 0 no NAT statement, -1 dropped (out.reason says
    why: a drop verdict, or a target with no address of the family)."""
    cdef nat_range rg
    cdef uint8_t v = rs_hook(t, hp, c)
    if v == RV_DROP:
        out.reason = R_RULESET_DROP
        return -1
    if v != RV_NAT:
        return 0
    if not _target_range(t, &t.targets[c.nat], l3, c.iif, oif, &rg):
        out.reason = R_NAT_NO_ADDR
        return -1
    unique[0] = unique_tuple(t, k, manip, &rg, exclude)
    return 1

cdef inline void nat_setup(ct_table *t, const uint64_t *orig, rs_ctx *c, int32_t out_if,
                           int32_t exclude, nat_choice *out) noexcept nogil:
    """A new connection whose original tuple is `orig` walks the ruleset in the kernel's order:
    prerouting chains after conntrack, nat prerouting (dnat, redirect), prerouting chains after it
    (they see the new destination), routing (the output interface: `out_if` when the caller knows
    it, else the interface model's route), nat postrouting (snat, masquerade, else the null
    binding).  `c` carries the packet (iif, meta mark, iplen) and collects what statements set
    (ct mark, helper); `exclude` is the entry being rebuilt in place (its own tuples do not count as
    taken), or -1.  out.reason is R_VALID, or why the packet is dropped."""
    cdef uint64_t k[5]
    cdef uint64_t after_dst[5]
    cdef nat_range rg
    cdef bint unique = True
    cdef bint snat = False
    cdef int v
    cdef uint8_t l3 = <uint8_t>(orig[4] >> 48)
    memcpy(k, orig, 40)
    out.reason = R_VALID
    out.status = IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE if t.nat_on else 0
    c.k = k
    # (Called with a ruleset set; a hook point without chains accepts at once.)
    if rs_hook(t, HP_PRE, c) == RV_DROP:
        out.reason = R_RULESET_DROP
        return
    v = _nat_hook(t, HP_DNAT, MANIP_DST, c, l3, -1, k, exclude, &unique, out)
    if v < 0:
        return
    if not tuple_eq(k, orig):
        out.status |= IPS_DST_NAT
    memcpy(after_dst, k, 40)
    # Later chains and postrouting see the packet as prerouting left it (its new destination).
    if rs_hook(t, HP_LATE, c) == RV_DROP:
        out.reason = R_RULESET_DROP
        return
    c.oif = out_if if out_if >= 0 else rs_out_iface(t, k)
    if c.oif < 0 and t.route_drop:
        out.reason = R_NO_ROUTE             # the gateway has no route for it: never forwarded
        return
    v = _nat_hook(t, HP_SNAT, MANIP_SRC, c, l3, c.oif, k, exclude, &unique, out)
    if v < 0:
        return
    snat = v > 0
    if t.nat_on and not snat and (not unique or tuple_taken(t, k, exclude)):
        # Null binding: the source kept (its address is the whole range), its port moved only if
        # the tuple clashes.
        rg.map_ips = 1
        memcpy(rg.amin, &k[0], 16)
        memcpy(rg.amax, &k[0], 16)
        rg.pmin = rg.pmax = 0
        rg.flags = 0
        unique = unique_tuple(t, k, MANIP_SRC, &rg, exclude)
    if not tuple_eq(k, after_dst):
        out.status |= IPS_SRC_NAT
    if not unique:
        out.reason = R_NAT_NO_TUPLE
        return
    tuple_reverse(k, out.r)
