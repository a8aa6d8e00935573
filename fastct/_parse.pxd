# cython: language_level=3
"""Stage 1: a raw frame -> pkt_meta (the tuple as seen, lengths, TCP fields, or why it is unusable).

Every read is preceded by a check against the captured length `cap`; lengths taken from headers
are checked against the frame's wire length (what the kernel would have received), so nothing here
reads past the captured bytes whatever the input.  Inline, so it compiles into the engine's loop.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from fastct._types cimport *

# Link types (LINKTYPE_* values as stored in pcap/pcapng files).
cdef enum:
    LT_NULL = 0
    LT_ETHERNET = 1
    LT_RAW = 101
    LT_LOOP = 108
    LT_LINUX_SLL = 113
    LT_IPV4 = 228
    LT_IPV6 = 229
    LT_NFLOG = 239
    LT_LINUX_SLL2 = 276

# Ethertypes.
cdef enum:
    ETH_TYPE_IP = 0x0800
    ETH_TYPE_IP6 = 0x86DD
    ETH_TYPE_8021Q = 0x8100
    ETH_TYPE_8021AD = 0x88A8
    ETH_TYPE_QINQ_OLD = 0x9100

# TCP flags (BSD names).
cdef enum:
    TH_FIN = 0x01
    TH_SYN = 0x02
    TH_RST = 0x04
    TH_PUSH = 0x08
    TH_ACK = 0x10
    TH_URG = 0x20

cdef inline bint link_type_handled(uint32_t lt) noexcept nogil:
    return lt == LT_NULL or lt == LT_ETHERNET or lt == LT_RAW or lt == LT_LOOP or \
        lt == LT_LINUX_SLL or lt == LT_IPV4 or lt == LT_IPV6 or lt == LT_NFLOG or lt == LT_LINUX_SLL2

cdef inline void _bad(pkt_meta *m, uint8_t reason) noexcept nogil:
    m.kind = PK_INVALID
    m.reason = reason

# ICMP type inversion and the reversed key word: C (include/compat.h), forced inline on the hot path.
cdef extern from "compat.h" nogil:
    uint8_t icmp_inverse_type "fastct_icmp_inverse_type"(uint8_t proto, uint8_t t)
    uint64_t tuple_reverse_k4 "fastct_reverse_k4"(uint64_t k4)

cdef inline bint proto_has_ports(uint8_t proto) noexcept nogil:
    # DCCP is tracked as generic (no ports in the key) by the 6.18 kernel, which has no DCCP tracker.
    return proto == IP_PROTO_TCP or proto == IP_PROTO_UDP or proto == IP_PROTO_UDPLITE or \
        proto == IP_PROTO_SCTP

cdef inline void _bad_error(pkt_meta *m, uint8_t reason) noexcept nogil:
    """Refused by the kernel's ICMP error handler: ct_state inv, counted in `error`."""
    m.kind = PK_INVALID
    m.reason = reason
    m.pflags |= PF_ERROR_STAT

cdef inline bint inner_l4_key(const uint8_t *q, uint32_t cap, uint8_t proto, pkt_meta *m) noexcept nogil:
    """The transport part of a quoted packet's tuple (kernel nf_ct_get_tuple on the embedded
    header): ports need 4 bytes, ICMP 8; anything else keys as generic.  False if unusable."""
    cdef uint16_t sport = 0, dport = 0
    cdef uint8_t t
    if proto == IP_PROTO_TCP or proto == IP_PROTO_UDP or proto == IP_PROTO_UDPLITE or \
            proto == IP_PROTO_SCTP:
        if cap < 4:
            return False
        sport = fastct_be16(q)
        dport = fastct_be16(q + 2)
    elif proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6:
        if cap < 8:
            return False
        t = q[0]
        # An error quoting an error, or a type with no reply type, has no tuple to invert.
        if icmp_inverse_type(proto, t) == 0xFF:
            return False
        sport = fastct_be16(q + 4)
        dport = <uint16_t>(t << 8 | q[1])
    elif proto == IP_PROTO_GRE:
        if cap >= 8 and (q[1] & 0x07) == 1:
            if fastct_be16(q + 2) != 0x880B:
                return False
            dport = fastct_be16(q + 6)
    elif proto == IP_PROTO_DCCP:
        # Generic (no ports) unless the dccp tracker is on; the engine then adds the ports kept
        # here (m.seq is free in an ICMP error).
        m.seq = <uint32_t>fastct_be16(q) | <uint32_t>fastct_be16(q + 2) << 16 if cap >= 4 else 0
    m.proto = proto
    m.k[4] = <uint64_t>sport | (<uint64_t>dport << 16) | (<uint64_t>proto << 56)
    return True

cdef inline void parse_icmp_error(const uint8_t *q, uint32_t cap, uint8_t l3, pkt_meta *m) noexcept nogil:
    """An ICMP/ICMPv6 error: `q` is the quoted packet (`cap` bytes captured).  Its tuple goes into
    m.k and the engine looks it up (kernel nf_conntrack_inet_error).  The error must travel to the
    quoted packet's source: the kernel compares the outer destination with the connection's."""
    cdef uint32_t ihl, pos, hlen, n
    cdef uint8_t nh
    cdef uint64_t odst0 = m.k[2], odst1 = m.k[3]
    if l3 == L3_IPV4:
        if cap < 20 or (q[0] >> 4) != 4:
            _bad_error(m, R_ICMP_ERROR_BAD); return
        ihl = (q[0] & 0x0F) * 4
        if ihl < 20 or ihl > cap or (fastct_be16(q + 6) & 0x1FFF):
            _bad_error(m, R_ICMP_ERROR_BAD); return
        m.k[0] = fastct_load32(q + 12)
        m.k[1] = 0
        m.k[2] = fastct_load32(q + 16)
        m.k[3] = 0
        if not inner_l4_key(q + ihl, cap - ihl, q[9], m):
            _bad_error(m, R_ICMP_ERROR_BAD); return
        m.inner_l4 = q + ihl
    else:
        if cap < 40 or (q[0] >> 4) != 6:
            _bad_error(m, R_ICMP_ERROR_BAD); return
        m.k[0] = fastct_load64(q + 8)
        m.k[1] = fastct_load64(q + 16)
        m.k[2] = fastct_load64(q + 24)
        m.k[3] = fastct_load64(q + 32)
        nh = q[6]
        pos = 40
        n = 0
        while nh == 0 or nh == 43 or nh == 44 or nh == 60 or nh == 51:
            n += 1
            if n > 64 or pos + 8 > cap:
                _bad_error(m, R_ICMP_ERROR_BAD); return
            if nh == 44:
                if fastct_be16(q + pos + 2) & 0xFFF8:      # not the first fragment: no ports
                    _bad_error(m, R_ICMP_ERROR_BAD); return
                hlen = 8
            elif nh == 51:
                hlen = (q[pos + 1] + 2) * 4
            else:
                hlen = (q[pos + 1] + 1) * 8
            nh = q[pos]
            pos += hlen
        if nh == 59 or pos > cap or not inner_l4_key(q + pos, cap - pos, nh, m):
            _bad_error(m, R_ICMP_ERROR_BAD); return
        m.inner_l4 = q + pos
    if m.k[0] != odst0 or m.k[1] != odst1:
        _bad_error(m, R_ICMP_ERROR_DADDR); return
    m.inner_l3 = q
    m.pflags |= PF_RELATED

cdef inline bint parse_icmp6_redirect(const uint8_t *p, uint32_t l4, uint32_t cap, pkt_meta *m) noexcept nogil:
    """ICMPv6 redirect (code 0), kernel nf_conntrack_icmpv6_redirect: only from a link-local
    router with hop limit 255; related to the connection its Redirected Header option quotes.
    False when it is to be tracked as an ordinary ICMPv6 packet."""
    cdef uint32_t o = 40                      # ICMPv6 header, target, destination
    if m.hoplimit != 255 or (m.k[0] & 0xC0FF) != 0x80FE:
        _bad_error(m, R_ICMP_ERROR_BAD); return True
    if cap < o + 8:
        _bad_error(m, R_ICMP_ERROR_BAD); return True
    if p[l4 + o] != 4:
        # The first option is not a Redirected Header: tracked like any ICMPv6 packet (type 137
        # has no reply type, so that is `invalid`).
        return False
    if p[l4 + o + 1] == 0:
        _bad_error(m, R_ICMP_ERROR_BAD); return True
    parse_icmp_error(p + l4 + o + 8, cap - o - 8, L3_IPV6, m)
    return True

cdef inline void tcp_options(const uint8_t *th, uint32_t doff, uint32_t l4cap, pkt_meta *m) noexcept nogil:
    """The TCP options fastct reads, in one walk over the header at th (`doff` bytes, `l4cap` of them
    captured; never past either): on a SYN, window scale and SACK-permitted (kernel tcp_options); on
    any segment, the highest right edge of the first well-formed SACK option, when above m.sack (which
    starts as the ack; kernel tcp_sack; whether it counts is tcp_in_window's to say).  Both kernel
    walks stop alike (EOL, an option too short or running past the end), so one walk serves both."""
    cdef uint32_t end = doff if doff < l4cap else l4cap
    cdef uint32_t o = 20, i, edge
    cdef uint8_t kind, olen
    cdef bint syn = (m.tcpflags & TH_SYN) != 0, sack_seen = False
    if not syn and doff == 32 and end == 32 and fastct_be32(th + 20) == 0x0101080A:
        return          # the usual NOP, NOP, timestamps: nothing to read (the kernel's shortcut too)
    while o < end:
        kind = th[o]
        if kind == 0:
            return
        if kind == 1:
            o += 1
            continue
        if o + 1 >= end:
            return
        olen = th[o + 1]
        if olen < 2 or o + olen > end:
            return
        if syn and kind == 3 and olen == 3:
            m.wscale = th[o + 2] if th[o + 2] <= 14 else 14
        elif syn and kind == 4 and olen == 2:
            m.sackperm = 1
        elif kind == 5 and not sack_seen and olen >= 10 and (olen - 2) % 8 == 0:
            sack_seen = True
            i = o + 2
            while i < o + olen:
                edge = fastct_be32(th + i + 4)
                if <int32_t>(m.sack - edge) < 0:
                    m.sack = edge
                i += 8
            if not syn:
                return
        o += olen

cdef inline void parse_l4(const uint8_t *p, uint32_t l4, uint32_t l4len, uint32_t l4cap,
                          uint8_t proto, uint8_t l3, pkt_meta *m) noexcept nogil:
    """Transport header at p[l4]: `l4len` bytes by the IP header, `l4cap` of them captured."""
    cdef uint32_t doff, ulen
    cdef uint16_t sport = 0, dport = 0
    cdef uint8_t t
    m.proto = proto
    if proto == IP_PROTO_TCP:
        if l4len < 20 or l4cap < 20:
            _bad(m, R_L4_TRUNCATED); return
        doff = (p[l4 + 12] >> 4) * 4
        if doff < 20 or doff > l4len:
            _bad(m, R_TCP_BAD_DOFF); return
        sport = fastct_be16(p + l4)
        dport = fastct_be16(p + l4 + 2)
        m.seq = fastct_be32(p + l4 + 4)
        m.ack = fastct_be32(p + l4 + 8)
        m.sack = m.ack
        m.tcpflags = p[l4 + 13]
        m.win = fastct_be16(p + l4 + 14)
        m.datalen = l4len - doff
        if doff > 20:
            tcp_options(p + l4, doff, l4cap, m)
    elif proto == IP_PROTO_UDP or proto == IP_PROTO_UDPLITE:
        if l4len < 8 or l4cap < 8:
            _bad(m, R_L4_TRUNCATED); return
        sport = fastct_be16(p + l4)
        dport = fastct_be16(p + l4 + 2)
        ulen = fastct_be16(p + l4 + 4)
        if proto == IP_PROTO_UDP:
            if ulen < 8 or ulen > l4len:
                _bad(m, R_UDP_BAD_LEN); return
        elif ulen != 0 and (ulen < 8 or ulen > l4len):
            # UDP-Lite: the field is the checksum coverage; 0 means the whole packet.
            _bad(m, R_UDP_BAD_LEN); return
        elif fastct_be16(p + l4 + 6) == 0:
            # UDP-Lite mandates a checksum; the kernel refuses a zero one whatever the sysctl.
            _bad(m, R_UDPLITE_NO_CSUM); return
    elif proto == IP_PROTO_SCTP:
        if l4len < 12 or l4cap < 12:
            _bad(m, R_L4_TRUNCATED); return
        sport = fastct_be16(p + l4)
        dport = fastct_be16(p + l4 + 2)
    elif (proto == IP_PROTO_ICMP and l3 == L3_IPV6) or (proto == IP_PROTO_ICMP6 and l3 == L3_IPV4):
        # The kernel runs no error handler for these, and its ICMP trackers refuse the other family.
        _bad(m, R_ICMP_WRONG_FAMILY); return
    elif proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6:
        # The kernel's ICMP error handler runs first; what it refuses counts in `error`, not
        # `invalid` (nf_conntrack_handle_icmp).
        m.l4 = p + l4
        m.l4len = l4len
        m.l4cap = l4cap if l4cap < l4len else l4len
        if l4len < 8 or l4cap < 8:
            _bad_error(m, R_L4_TRUNCATED); return
        t = p[l4]
        if proto == IP_PROTO_ICMP:
            if t > 18:
                _bad_error(m, R_ICMP_UNKNOWN_TYPE); return
            if t == 3 or t == 4 or t == 5 or t == 11 or t == 12:
                parse_icmp_error(p + l4 + 8, l4cap - 8, L3_IPV4, m); return
        else:
            if t < 128:
                parse_icmp_error(p + l4 + 8, l4cap - 8, L3_IPV6, m); return
            if (t >= 130 and t <= 136) or t == 143 or t == 151 or t == 152:
                # Neighbour discovery, MLD and multicast router discovery: untracked (kernel
                # noct_valid_new).
                m.kind = PK_UNTRACKED
                return
            if t == 137 and p[l4 + 1] == 0 and parse_icmp6_redirect(p, l4, l4cap, m):
                return
        sport = fastct_be16(p + l4 + 4)          # echo id
        dport = <uint16_t>(t << 8 | p[l4 + 1])  # type << 8 | code
    elif proto == IP_PROTO_GRE:
        # Kernel gre_pkt_to_tuple: version 0 (or a header too short to read) has keys 0, like
        # generic; version 1 (PPTP) must carry PPP and is keyed by its call id as the destination
        # key.  The source key comes from the PPTP helper's keymap, which fastct does not have: 0.
        if l4cap >= 8 and l4len >= 8 and (p[l4 + 1] & 0x07) == 1:
            if fastct_be16(p + l4 + 2) != 0x880B:
                _bad(m, R_GRE_BAD); return
            dport = fastct_be16(p + l4 + 6)
    # DCCP (no tracker in the 6.18 kernel: generic unless the dccp option keys it, see _dccp.pxd)
    # and every other protocol: generic, no transport header read.
    m.l4 = p + l4
    m.l4len = l4len
    m.l4cap = l4cap if l4cap < l4len else l4len
    m.k[4] = <uint64_t>sport | (<uint64_t>dport << 16) | (<uint64_t>proto << 56)

cdef inline void parse_ipv4(const uint8_t *p, uint32_t off, uint32_t cap, uint32_t wire,
                            pkt_meta *m) noexcept nogil:
    cdef uint32_t ihl, tot, l4, capend, frag
    if off + 20 > cap:
        _bad(m, R_IP_TRUNCATED); return
    if (p[off] >> 4) != 4:
        _bad(m, R_IP_BAD_VERSION); return
    ihl = (p[off] & 0x0F) * 4
    if ihl < 20:
        _bad(m, R_IP_BAD_HLEN); return
    tot = fastct_be16(p + off + 2)
    if tot < ihl or off + tot > wire:
        _bad(m, R_IP_BAD_LEN); return
    if off + ihl > cap:
        _bad(m, R_IP_TRUNCATED); return
    m.k[0] = fastct_load32(p + off + 12)
    m.k[1] = 0
    m.k[2] = fastct_load32(p + off + 16)
    m.k[3] = 0
    m.iplen = tot
    m.l3 = p + off
    l4 = off + ihl
    capend = off + tot if off + tot < cap else cap
    frag = fastct_be16(p + off + 6)
    if frag & 0x3FFF:
        # A fragment (MF set or an offset): reassembled before tracking, as nf_defrag does.
        m.kind = PK_FRAG
        m.proto = p[off + 9]
        m.k[4] = <uint64_t>m.proto << 56 | <uint64_t>L3_IPV4 << 48
        m.frag_id = fastct_be16(p + off + 4)
        m.frag_off = (frag & 0x1FFF) * 8
        m.frag_len = tot - ihl
        m.frag_unfrag = <uint16_t>ihl
        m.frag_l4off = 0
        if frag & 0x2000:
            m.pflags |= PF_FRAG_MORE
        m.l4 = p + l4
        m.l4cap = capend - l4 if capend > l4 else 0
        m.l4len = tot - ihl
        return
    parse_l4(p, l4, tot - ihl, capend - l4, p[off + 9], L3_IPV4, m)
    m.k[4] |= <uint64_t>L3_IPV4 << 48

cdef inline void parse_ipv6(const uint8_t *p, uint32_t off, uint32_t cap, uint32_t wire,
                            pkt_meta *m) noexcept nogil:
    cdef uint32_t plen, pos, end, capend, hlen, n, fragstart
    cdef uint16_t fo
    cdef uint8_t nh
    if off + 40 > cap:
        _bad(m, R_IP_TRUNCATED); return
    if (p[off] >> 4) != 6:
        _bad(m, R_IP_BAD_VERSION); return
    plen = fastct_be16(p + off + 4)
    if off + 40 + plen > wire:
        _bad(m, R_IP_BAD_LEN); return
    m.k[0] = fastct_load64(p + off + 8)
    m.k[1] = fastct_load64(p + off + 16)
    m.k[2] = fastct_load64(p + off + 24)
    m.k[3] = fastct_load64(p + off + 32)
    m.iplen = 40 + plen
    m.l3 = p + off
    m.hoplimit = p[off + 7]
    nh = p[off + 6]
    pos = off + 40
    end = pos + plen
    capend = end if end < cap else cap
    # Walk the extension headers the kernel skips to find the transport protocol (hop-by-hop,
    # routing, fragment, destination options, AH); any other next header is the protocol.
    # Each header is at least 8 bytes, so the walk ends within the packet.
    n = 0
    fragstart = 0
    while nh == 0 or nh == 43 or nh == 44 or nh == 60 or nh == 51:
        n += 1
        if n > 64:
            _bad(m, R_IP6_EXT_TOO_MANY); return
        if pos + 8 > end or pos + 8 > capend:
            _bad(m, R_IP6_EXT_TRUNCATED); return
        if nh == 44:
            fo = fastct_be16(p + pos + 2)
            if fragstart == 0:
                # A fragment (an "atomic" one too, offset 0 and no M: netfilter's defrag queues and
                # "reassembles" it like any other): reassembled before tracking.  The first one's
                # later extension headers are walked to find the transport header; a later one's
                # data is opaque.
                m.kind = PK_FRAG
                m.frag_id = fastct_be32(p + pos + 4)
                m.frag_off = fo & 0xFFF8
                m.frag_len = end - (pos + 8)
                m.frag_unfrag = <uint16_t>(pos - off)
                if fo & 1:
                    m.pflags |= PF_FRAG_MORE
                fragstart = pos + 8
                if m.frag_off != 0:
                    m.proto = p[pos]
                    m.k[4] = <uint64_t>L3_IPV6 << 48
                    m.frag_l4off = 0        # (its data is opaque: no transport header in it)
                    m.l4 = p + fragstart
                    m.l4cap = capend - fragstart if capend > fragstart else 0
                    m.l4len = m.frag_len
                    return
            hlen = 8
        elif nh == 51:
            hlen = (p[pos + 1] + 2) * 4
        else:
            hlen = (p[pos + 1] + 1) * 8
        nh = p[pos]
        pos += hlen
        if pos > end:
            _bad(m, R_IP6_EXT_TRUNCATED); return
    if fragstart:
        # The first fragment: what the transport header needs is kept until the datagram is whole.
        if pos > capend:
            _bad(m, R_L4_TRUNCATED); return
        m.proto = nh
        m.k[4] = <uint64_t>nh << 56 | <uint64_t>L3_IPV6 << 48
        m.frag_l4off = <uint16_t>(pos - fragstart)
        m.l4 = p + pos
        m.l4cap = capend - pos
        m.l4len = end - pos
        return
    if nh == 59:
        # The kernel finds no transport protocol (ipv6_skip_exthdr fails): invalid, not tracked.
        _bad(m, R_IP6_NO_NEXT); return
    if pos > capend:
        _bad(m, R_L4_TRUNCATED); return
    parse_l4(p, pos, end - pos, capend - pos, nh, L3_IPV6, m)
    m.k[4] |= <uint64_t>L3_IPV6 << 48

cdef inline void parse_ip_ethertype(const uint8_t *p, uint32_t off, uint32_t cap, uint32_t wire,
                                    uint16_t et, pkt_meta *m) noexcept nogil:
    cdef uint32_t n = 0
    # 802.1Q / 802.1ad / old QinQ tags, any depth; the outermost VLAN id is kept for --zone-from vlan.
    while et == ETH_TYPE_8021Q or et == ETH_TYPE_8021AD or et == ETH_TYPE_QINQ_OLD:
        if off + 4 > cap:
            _bad(m, R_VLAN_TRUNCATED); return
        if n == 0:
            m.vlan = fastct_be16(p + off) & 0x0FFF
        n += 1
        et = fastct_be16(p + off + 2)
        off += 4
    if et == ETH_TYPE_IP:
        parse_ipv4(p, off, cap, wire, m)
    elif et == ETH_TYPE_IP6:
        parse_ipv6(p, off, cap, wire, m)
    else:
        m.kind = PK_NON_IP

cdef inline void parse_ip_by_version(const uint8_t *p, uint32_t off, uint32_t cap, uint32_t wire,
                                     pkt_meta *m) noexcept nogil:
    if off >= cap:
        _bad(m, R_IP_TRUNCATED); return
    if (p[off] >> 4) == 4:
        parse_ipv4(p, off, cap, wire, m)
    elif (p[off] >> 4) == 6:
        parse_ipv6(p, off, cap, wire, m)
    else:
        _bad(m, R_IP_BAD_VERSION)

cdef inline void parse_nflog(const uint8_t *p, uint32_t cap, uint32_t wire, pkt_meta *m) noexcept nogil:
    # NFLOG: family, version, resource id, then TLVs whose length and type are in the capturing
    # host's byte order (little-endian in practice); the payload TLV (type 9) holds the IP packet.
    cdef uint32_t off = 4, tlen, ttype
    cdef uint8_t family
    if cap < 4:
        _bad(m, R_L2_TRUNCATED); return
    family = p[0]
    while off + 4 <= cap:
        tlen = fastct_le16(p + off)
        ttype = fastct_le16(p + off + 2) & 0x7FFF
        if tlen < 4:
            _bad(m, R_L2_TRUNCATED); return
        if ttype == 9:
            if off + tlen > wire:
                _bad(m, R_L2_TRUNCATED); return
            if family == 2:
                parse_ipv4(p, off + 4, cap, off + tlen, m)
            elif family == 10:
                parse_ipv6(p, off + 4, cap, off + tlen, m)
            else:
                m.kind = PK_NON_IP
            return
        off += (tlen + 3) & ~3U
    m.kind = PK_NON_IP

cdef inline bint parse_fast_tcp4(const uint8_t *p, uint32_t cap, uint32_t wire, pkt_meta *m) noexcept nogil:
    """The common case in one straight line: Ethernet, IPv4 without options or fragmentation, a
    TCP segment, headers captured.  Exactly what the general path below makes of such a frame;
    False (nothing written that matters) for anything else."""
    cdef uint32_t tot, doff, capend
    if cap < 54 or p[12] != 0x08 or p[13] != 0x00 or p[14] != 0x45 or p[23] != IP_PROTO_TCP:
        return False
    tot = fastct_be16(p + 16)
    doff = (p[46] >> 4) * 4
    if (fastct_be16(p + 20) & 0x3FFF) or tot < 40 or 14 + tot > wire or doff < 20 or \
            doff > tot - 20:
        return False
    capend = 14 + tot if 14 + tot < cap else cap
    m.kind = PK_TRACK
    m.reason = R_VALID
    m.vlan = 0
    m.wscale = 0xFF
    m.sackperm = 0
    m.pflags = 0
    m.hoplimit = 0
    m.proto = IP_PROTO_TCP
    m.linktype = LT_ETHERNET
    m.iplen = tot
    m.l3 = p + 14
    m.l4 = p + 34
    m.l4len = tot - 20
    m.l4cap = capend - 34
    m.k[0] = fastct_load32(p + 26)
    m.k[1] = 0
    m.k[2] = fastct_load32(p + 30)
    m.k[3] = 0
    m.k[4] = <uint64_t>fastct_be16(p + 34) | (<uint64_t>fastct_be16(p + 36) << 16) | \
        (<uint64_t>IP_PROTO_TCP << 56) | (<uint64_t>L3_IPV4 << 48)
    m.seq = fastct_be32(p + 38)
    m.ack = fastct_be32(p + 42)
    m.sack = m.ack
    m.tcpflags = p[47]
    m.win = fastct_be16(p + 48)
    m.datalen = tot - 20 - doff
    if doff > 20:
        tcp_options(p + 34, doff, capend - 34, m)
    return True

cdef inline void parse_frame(const uint8_t *p, uint32_t cap, uint32_t wire, uint32_t linktype,
                             uint32_t fcslen, pkt_meta *m) noexcept nogil:
    """Fill `m` from one frame; `cap` bytes of it were captured, `wire` were on the wire."""
    if linktype == LT_ETHERNET and fcslen == 0 and \
            parse_fast_tcp4(p, cap, wire if wire > cap else cap, m):
        return
    parse_frame_general(p, cap, wire, linktype, fcslen, m)

cdef inline void parse_frame_general(const uint8_t *p, uint32_t cap, uint32_t wire, uint32_t linktype,
                                     uint32_t fcslen, pkt_meta *m) noexcept nogil:
    """parse_frame without trying the straight line first (for a caller that already did)."""
    cdef uint32_t af
    m.kind = PK_TRACK
    m.reason = R_VALID
    m.vlan = 0
    m.tcpflags = 0
    m.wscale = 0xFF
    m.sackperm = 0
    m.datalen = 0
    m.iplen = 0
    m.proto = 0
    m.linktype = <uint16_t>linktype
    m.pflags = 0
    m.hoplimit = 0
    m.l3 = NULL
    m.l4 = NULL
    m.l4cap = 0
    m.l4len = 0
    m.k[4] = 0
    if wire < cap:
        wire = cap    # a record whose wire length is below its captured length: trust the capture
    if fcslen:
        # The frame check sequence ends the frame: it is not part of the IP packet.
        wire = wire - fcslen if wire > fcslen else 0
        if cap > wire:
            cap = wire
    if linktype == LT_ETHERNET:
        if cap < 14:
            _bad(m, R_L2_TRUNCATED); return
        parse_ip_ethertype(p, 14, cap, wire, fastct_be16(p + 12), m)
    elif linktype == LT_LINUX_SLL:
        if cap < 16:
            _bad(m, R_L2_TRUNCATED); return
        parse_ip_ethertype(p, 16, cap, wire, fastct_be16(p + 14), m)
    elif linktype == LT_LINUX_SLL2:
        if cap < 20:
            _bad(m, R_L2_TRUNCATED); return
        parse_ip_ethertype(p, 20, cap, wire, fastct_be16(p), m)
    elif linktype == LT_RAW:
        parse_ip_by_version(p, 0, cap, wire, m)
    elif linktype == LT_IPV4:
        parse_ipv4(p, 0, cap, wire, m)
    elif linktype == LT_IPV6:
        parse_ipv6(p, 0, cap, wire, m)
    elif linktype == LT_NULL or linktype == LT_LOOP:
        if cap < 4:
            _bad(m, R_L2_TRUNCATED); return
        # LOOP is in network order; NULL in the capturing host's order, which we detect.
        if linktype == LT_LOOP:
            af = fastct_be32(p)
        else:
            af = fastct_le32(p)
            if af > 0xFFFF:
                af = fastct_bswap32(af)
        if af == 2:
            parse_ipv4(p, 4, cap, wire, m)
        elif af == 10 or af == 24 or af == 28 or af == 30:
            parse_ipv6(p, 4, cap, wire, m)
        else:
            m.kind = PK_NON_IP
    elif linktype == LT_NFLOG:
        parse_nflog(p, cap, wire, m)
    else:
        m.kind = PK_SKIP
