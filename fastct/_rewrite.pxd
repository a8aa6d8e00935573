# cython: language_level=3
"""Stage 5b: rewrite a packet of a NAT'd connection in place, as it leaves the gateway.

A packet arriving in direction d carries tuple T_in (the original tuple, or the stored reply tuple)
and leaves with T_out (the reverse of the other direction's tuple).  Only the fields that differ
are written: IPv4 addresses and the header checksum, ports (ICMP: the echo id), and the transport
checksum updated incrementally (RFC 1624: ~(~old_sum + ~old_word + new_word)), its pseudo-header
included, so the checksum stays exactly as right or wrong as it arrived (the kernel updates them the
same way).  A zero UDP checksum over IPv4 means "none" and stays zero; a UDP sum that comes out zero
is sent as 0xFFFF.  SCTP's CRC32c is recomputed over the packet (as the kernel does).
An ICMP error quoting a packet of a NAT'd connection is rewritten as the kernel does
(nf_nat_icmp_reply_translation): the outer header like a packet of the error's direction, the quoted
packet translated back to what its sender saw (addresses, ports, its IP and transport checksums when
quoted), the ICMP checksum updated by everything that changed.
What cannot be rewritten whole is counted (nat_not_rewritten): a datagram reassembled from fragments
(its fragments went out as they came), a transport header cut short by the capture, an SCTP packet
not captured whole (its CRC cannot be computed).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy
from fastct._types cimport *
from fastct._sctp cimport sctp_crc
from fastct._nat cimport tuple_reverse, nat_has_ports

cdef inline uint64_t _replace(uint8_t *p, const uint8_t *new, uint32_t n) noexcept nogil:
    """Write n bytes (n even) at p; the checksum delta: the sum of ~old and new 16-bit words."""
    cdef uint64_t acc = 0
    cdef uint32_t i = 0
    while i < n:
        acc += (~(<uint32_t>p[i] << 8 | p[i + 1]) & 0xFFFF) + (<uint32_t>new[i] << 8 | new[i + 1])
        i += 2
    memcpy(p, new, n)
    return acc

cdef inline uint64_t _replace16(uint8_t *p, uint16_t v) noexcept nogil:
    cdef uint8_t b[2]
    b[0] = <uint8_t>(v >> 8)
    b[1] = <uint8_t>v
    return _replace(p, b, 2)

cdef inline uint64_t csum_update(uint8_t *field, uint64_t acc) noexcept nogil:
    """Apply a delta to the checksum at `field`; returns the delta the field's own change makes
    (for a checksum that covers this one, as ICMP's covers the quoted headers)."""
    cdef uint64_t s = (~(<uint32_t>field[0] << 8 | field[1]) & 0xFFFF) + acc
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return _replace16(field, <uint16_t>(~s & 0xFFFF))

cdef inline void nat_tuples(const ct_table *t, uint32_t idx, uint8_t dir, uint64_t *tin,
                            uint64_t *tout) noexcept nogil:
    """The tuple a packet of entry idx's direction `dir` arrives with and the one it leaves with."""
    cdef uint64_t o[5]
    memcpy(o, <const void *>&t.e[idx], 40)
    if dir == DIR_ORIGINAL:
        memcpy(tin, o, 40)
        tuple_reverse(t.nat[idx].r, tout)
    else:
        memcpy(tin, t.nat[idx].r, 40)
        tuple_reverse(o, tout)

cdef inline uint8_t nat_state_bits(const ct_entry *e, uint8_t dir) noexcept nogil:
    """ct_state snat/dnat of a packet of a NAT'd connection: what its translation changes (the
    reply of a source-NAT'd connection has its destination rewritten, so it is dnat)."""
    cdef uint8_t bits = 0
    if e.status & IPS_SRC_NAT:
        bits |= CS_SNAT if dir == DIR_ORIGINAL else CS_DNAT
    if e.status & IPS_DST_NAT:
        bits |= CS_DNAT if dir == DIR_ORIGINAL else CS_SNAT
    return bits

cdef inline uint64_t _addresses(uint8_t *l3, const uint64_t *src, const uint64_t *dst, bint v4,
                                bint set_src, bint set_dst, uint64_t *hsum=NULL) noexcept nogil:
    """Write the addresses of an IP header (IPv4: and its checksum, whose own delta goes to
    hsum[0] when given); returns the addresses' delta (what a pseudo-header sum changes by)."""
    cdef uint64_t acc = 0, h
    if v4:
        if set_src:
            acc += _replace(l3 + 12, <const uint8_t *>src, 4)
        if set_dst:
            acc += _replace(l3 + 16, <const uint8_t *>dst, 4)
        if acc:
            h = csum_update(l3 + 10, acc)
            if hsum != NULL:
                hsum[0] += h
    else:
        if set_src:
            acc += _replace(l3 + 8, <const uint8_t *>src, 16)
        if set_dst:
            acc += _replace(l3 + 24, <const uint8_t *>dst, 16)
    return acc

cdef inline int _csum_offset(uint8_t proto) noexcept nogil:
    """Where the transport checksum lies (-1 none, or one fastct does not update)."""
    if proto == IP_PROTO_TCP:
        return 16
    if proto == IP_PROTO_UDP or proto == IP_PROTO_UDPLITE or proto == IP_PROTO_DCCP:
        return 6
    if proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6:
        return 2
    return -1

cdef inline uint32_t _header_len(uint8_t proto) noexcept nogil:
    """The transport header a checksum update needs in the packet; with less (an ICMP error quotes
    at least 8 bytes) only the ports are written, as the kernel does."""
    if proto == IP_PROTO_TCP:
        return 20
    if proto == IP_PROTO_SCTP:
        return 12
    return 8

cdef inline bint _transport(const ct_table *t, uint8_t *l4, uint32_t cap, uint32_t len, uint8_t proto,
                            uint64_t acc, uint16_t sport, uint16_t dport, bint set_sport,
                            bint set_dport, uint64_t *covering) noexcept nogil:
    """Ports (ICMP: the id, passed as sport) and checksum of a transport header with `len` bytes in
    the packet, `cap` of them captured; acc is the pseudo-header delta.  Adds the delta of every
    byte changed here to covering[0].  False when something could not be written (not captured)."""
    cdef bint icmp = proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6
    cdef int co = _csum_offset(proto)
    cdef uint64_t d = 0
    cdef uint32_t crc
    cdef uint8_t crc_le[4]
    cdef bint ok = True
    if proto == IP_PROTO_ICMP:
        acc = 0                         # no pseudo-header
    if icmp:
        if set_sport:
            if cap < 6:
                return False
            d += _replace16(l4 + 4, sport)
    elif nat_has_ports(t, proto):
        if cap < 4:
            return False
        if set_sport:
            d += _replace16(l4, sport)
        if set_dport:
            d += _replace16(l4 + 2, dport)
    if (co >= 0 or proto == IP_PROTO_SCTP) and (acc + d) != 0 and len >= _header_len(proto):
        if cap < (len if proto == IP_PROTO_SCTP else _header_len(proto)):
            ok = False                  # the sum lies (SCTP: is taken over bytes) not captured
        elif proto == IP_PROTO_SCTP:
            crc = sctp_crc(l4, len)
            crc_le[0] = <uint8_t>crc; crc_le[1] = <uint8_t>(crc >> 8)
            crc_le[2] = <uint8_t>(crc >> 16); crc_le[3] = <uint8_t>(crc >> 24)
            d += _replace(l4 + 8, crc_le, 4)
        elif (proto == IP_PROTO_UDP) and l4[co] == 0 and l4[co + 1] == 0:
            pass                        # UDP without a checksum: stays without
        else:
            d += csum_update(l4 + co, acc + d)
            if (proto == IP_PROTO_UDP or proto == IP_PROTO_UDPLITE) and l4[co] == 0 and l4[co + 1] == 0:
                d += _replace16(l4 + co, 0xFFFF)     # a zero sum would read as "none"
    covering[0] += d
    return ok

cdef inline bint nat_rewrite(const ct_table *t, uint32_t idx, const pkt_meta *m,
                             uint8_t dir) noexcept nogil:
    """Rewrite the packet (found in direction `dir` of NAT'd entry idx) in place.  False when it
    could not be rewritten whole (the caller counts it)."""
    cdef const ct_entry *e = &t.e[idx]
    cdef uint64_t tin[5]
    cdef uint64_t tout[5]
    cdef uint64_t acc, covering = 0
    cdef uint8_t *l3 = <uint8_t *>m.l3
    cdef bint v4 = e.l3 == L3_IPV4
    cdef bint set_src, set_dst, icmp
    cdef uint16_t sport, dport
    if l3 == NULL or m.l4 == NULL:
        return False                    # a datagram reassembled from fragments already sent
    nat_tuples(t, idx, dir, tin, tout)
    if m.pflags & PF_RELATED:
        return _icmp_error(t, m, tin, tout, v4)
    set_src = tin[0] != tout[0] or tin[1] != tout[1]
    set_dst = tin[2] != tout[2] or tin[3] != tout[3]
    acc = _addresses(l3, &tout[0], &tout[2], v4, set_src, set_dst)
    sport = <uint16_t>(tout[4] & 0xFFFF)
    dport = <uint16_t>((tout[4] >> 16) & 0xFFFF)
    icmp = m.proto == IP_PROTO_ICMP or m.proto == IP_PROTO_ICMP6
    return _transport(t, <uint8_t *>m.l4, m.l4cap, m.l4len, m.proto, acc, sport, dport,
                      sport != <uint16_t>(tin[4] & 0xFFFF),
                      not icmp and dport != <uint16_t>((tin[4] >> 16) & 0xFFFF), &covering)

cdef inline bint _icmp_error(const ct_table *t, const pkt_meta *m, const uint64_t *tin,
                             const uint64_t *tout, bint v4) noexcept nogil:
    """An ICMP error travelling in the direction tin -> tout describe, quoting a packet of the
    other direction (in its translated form, the reverse of tin): the outer addresses are
    translated like this direction's packets, the quoted packet back to the reverse of tout."""
    cdef uint8_t *icmp = <uint8_t *>m.l4
    cdef uint8_t *il3 = <uint8_t *>m.inner_l3
    cdef uint8_t *il4 = <uint8_t *>m.inner_l4
    cdef uint8_t proto = m.proto        # the quoted packet's protocol
    cdef bint set_src = tin[0] != tout[0] or tin[1] != tout[1]
    cdef bint set_dst = tin[2] != tout[2] or tin[3] != tout[3]
    cdef bint quoted_icmp = proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6
    cdef uint64_t outer, inner, covering = 0
    cdef uint32_t present, icap
    cdef uint16_t out_sport = <uint16_t>(tout[4] & 0xFFFF), out_dport = <uint16_t>((tout[4] >> 16) & 0xFFFF)
    cdef bint sport_changed = out_sport != <uint16_t>(tin[4] & 0xFFFF)
    cdef bint dport_changed = out_dport != <uint16_t>((tin[4] >> 16) & 0xFFFF)
    cdef bint whole
    if m.l4cap < 4:
        return False
    outer = _addresses(<uint8_t *>m.l3, &tout[0], &tout[2], v4, set_src, set_dst)
    # The quoted packet's source is this direction's destination, and the other way round.
    inner = _addresses(il3, &tout[2], &tout[0], v4, set_dst, set_src, &covering)
    covering += inner
    present = <uint32_t>((m.l4 + m.l4len) - il4) if m.l4 + m.l4len > il4 else 0
    icap = <uint32_t>((m.l4 + m.l4cap) - il4) if m.l4 + m.l4cap > il4 else 0
    if quoted_icmp:
        whole = _transport(t, il4, icap, present, proto, inner, out_sport, 0, sport_changed, False,
                           &covering)
    else:
        whole = _transport(t, il4, icap, present, proto, inner, out_dport, out_sport, dport_changed,
                           sport_changed, &covering)
    # The error's own checksum covers all of it (ICMPv6: and the outer pseudo-header).
    csum_update(icmp + 2, covering + (0 if v4 else outer))
    return whole
