# cython: language_level=3
"""Checksum checks for nf_conntrack_checksum=1 (off by default: captures usually carry checksums
the NIC had not filled in yet).  Run in stage 1 on parsed packets only when the option is on.

What the kernel checks, and where a failure goes:
- IPv4 header: ip_rcv drops a bad header before conntrack ever sees it; fastct gives it inv and
  counts it in `invalid` with its own reason (the kernel counts it in no conntrack statistic).
- TCP, UDP (a zero UDP checksum means "none" and passes), UDP-Lite (over its coverage): the
  trackers' error hooks, counted in `invalid`.
- ICMP, ICMPv6: the ICMP error hook, counted in `error`.
A transport segment not captured whole cannot be checked and passes: the kernel had all of it.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastct._types cimport *

cdef inline uint64_t ones_sum(const uint8_t *p, uint32_t n, uint64_t acc) noexcept nogil:
    """Add the 16-bit big-endian words of p[0:n] (an odd last byte padded with 0) to acc."""
    cdef uint32_t i = 0
    while i + 1 < n:
        acc += <uint64_t>(p[i]) << 8 | p[i + 1]
        i += 2
    if i < n:
        acc += <uint64_t>(p[i]) << 8
    return acc

cdef inline uint16_t ones_fold(uint64_t acc) noexcept nogil:
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return <uint16_t>acc

cdef inline uint64_t pseudo_sum(const uint8_t *l3, uint32_t l4len, uint8_t proto) noexcept nogil:
    """The pseudo-header's words: addresses, protocol, transport length (IPv4 and IPv6 alike)."""
    if (l3[0] >> 4) == 4:
        return ones_sum(l3 + 12, 8, 0) + proto + l4len
    return ones_sum(l3 + 8, 32, 0) + proto + (l4len >> 16) + (l4len & 0xFFFF)

cdef inline bint l4_sum_ok(const pkt_meta *m, uint8_t proto, uint32_t covered) noexcept nogil:
    cdef uint64_t acc
    if proto == IP_PROTO_ICMP:
        acc = 0                   # ICMP over IPv4 has no pseudo-header
    else:
        acc = pseudo_sum(m.l3, m.l4len, proto)
    return ones_fold(ones_sum(m.l4, covered, acc)) == 0xFFFF

cdef inline bint ipv4_header_ok(const pkt_meta *m) noexcept nogil:
    return m.l3 == NULL or (m.l3[0] >> 4) != 4 or \
        ones_fold(ones_sum(m.l3, (m.l3[0] & 0x0F) * 4, 0)) == 0xFFFF

cdef inline void check_sums(pkt_meta *m) noexcept nogil:
    """Mark a parsed, tracked packet invalid if a checksum the kernel would check is wrong."""
    cdef uint8_t proto
    cdef uint32_t cov
    if m.l3 == NULL:
        return
    if (m.l3[0] >> 4) == 4 and ones_fold(ones_sum(m.l3, (m.l3[0] & 0x0F) * 4, 0)) != 0xFFFF:
        m.kind = PK_INVALID
        m.reason = R_IP_CHECKSUM
        return
    if m.l4 == NULL or m.l4cap < m.l4len:
        return
    proto = m.proto
    if m.pflags & PF_RELATED:
        # An ICMP error: m.proto is the quoted packet's; the checksum is the error's own.
        proto = IP_PROTO_ICMP if (m.l3[0] >> 4) == 4 else IP_PROTO_ICMP6
    if proto == IP_PROTO_TCP:
        if not l4_sum_ok(m, proto, m.l4len):
            m.kind = PK_INVALID
            m.reason = R_CHECKSUM
    elif proto == IP_PROTO_UDP:
        if (m.l4[6] or m.l4[7]) and not l4_sum_ok(m, proto, m.l4len):
            m.kind = PK_INVALID
            m.reason = R_CHECKSUM
    elif proto == IP_PROTO_UDPLITE:
        cov = fastct_be16(m.l4 + 4)
        if cov == 0:
            cov = m.l4len
        if not l4_sum_ok(m, proto, cov):
            m.kind = PK_INVALID
            m.reason = R_CHECKSUM
    elif proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6:
        if not l4_sum_ok(m, proto, m.l4len):
            m.kind = PK_INVALID
            m.reason = R_CHECKSUM
            m.pflags |= PF_ERROR_STAT
