# cython: language_level=3
"""Stage 4: per-protocol state.  Dispatch on the protocol number (a C switch), generic as the default.

Every tracker has the kernel's shape: `*_new` says whether a packet may create a connection (and
initialises its private state), `*_packet` runs for every packet of a connection, the first one
included, and returns a verdict.  Timers are refreshed only through `refresh`, which is also the only
place the counters move: the kernel accounts a packet in __nf_ct_refresh_acct, so a packet that does
not refresh the timer is not counted either (a retransmitted SYN, an ignored TCP packet).
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from fastct._types cimport *
from fastct._verdict cimport *
from fastct._tcp cimport tcp_new, tcp_packet
from fastct._sctp cimport sctp_new, sctp_packet
from fastct._dccp cimport dccp_new, dccp_packet

cdef inline uint8_t proto_new(ct_table *t, ct_entry *e, ct_cold *c, const pkt_meta *m) noexcept nogil:
    """May this packet start a connection?  R_VALID after initialising e's private state, else a reason."""
    cdef uint8_t proto = m.proto
    cdef uint8_t itype
    e.state = 0
    e.retrans = 0
    e.td_end[0] = e.td_end[1] = 0
    e.td_maxend[0] = e.td_maxend[1] = 0
    e.td_maxwin[0] = e.td_maxwin[1] = 0
    e.td_scale[0] = e.td_scale[1] = 0
    e.td_flags[0] = e.td_flags[1] = 0
    e.td_maxack[0] = e.td_maxack[1] = 0
    e.last_seq = e.last_ack = e.last_end = 0
    e.last_win = 0
    e.last_flags = e.last_diw = 0
    if proto == IP_PROTO_TCP:
        return tcp_new(t, e, c, m)
    if proto == IP_PROTO_SCTP:
        return sctp_new(t, e, c, m)
    if proto == IP_PROTO_DCCP and t.dccp_tracker:
        return dccp_new(t, e, c, m)
    if proto == IP_PROTO_ICMP or proto == IP_PROTO_ICMP6:
        # Only requests start a connection (kernel valid_new): echo, timestamp, info, address mask;
        # for ICMPv6 echo and node information queries.
        itype = <uint8_t>(m.k[4] >> 24)
        if proto == IP_PROTO_ICMP:
            if itype == 8 or itype == 13 or itype == 15 or itype == 17:
                return R_VALID
        elif itype == 128 or itype == 139:
            return R_VALID
        return R_ICMP_NO_NEW
    return R_VALID

cdef inline int udp_packet(ct_table *t, ct_entry *e, ct_cold *c, const pkt_meta *m) noexcept nogil:
    # Unreplied: 30 s.  Once a reply was seen, traffic more than 2 s after the first packet makes it
    # a stream: [ASSURED] and 120 s (kernel udp_packet; SEEN_REPLY is set after this runs, so the
    # first reply itself still gets the unreplied timeout).
    if e.status & IPS_SEEN_REPLY:
        if (e.status & IPS_ASSURED) or m.now > c.start + 2000000000:
            refresh(t, e, m, m.to[TO_UDP_STREAM])
            e.status |= IPS_ASSURED
        else:
            refresh(t, e, m, m.to[TO_UDP])
    else:
        refresh(t, e, m, m.to[TO_UDP])
    return V_ACCEPT

cdef inline int stream_once_replied(ct_table *t, ct_entry *e, const pkt_meta *m, int64_t unreplied,
                                    int64_t stream) noexcept nogil:
    # Kernel udplite_packet and gre_packet: once a reply was seen (by an earlier packet: SEEN_REPLY
    # is set after this runs), a stream with the longer timeout and [ASSURED]; before that the
    # shorter one.  (UDP-Lite has no 2 s rule, unlike UDP.)
    if e.status & IPS_SEEN_REPLY:
        refresh(t, e, m, stream)
        e.status |= IPS_ASSURED
    else:
        refresh(t, e, m, unreplied)
    return V_ACCEPT

cdef inline int proto_packet(ct_table *t, ct_entry *e, ct_cold *c, pkt_meta *m) noexcept nogil:
    cdef uint8_t proto = m.proto
    if proto == IP_PROTO_TCP:
        return tcp_packet(t, e, c, m)
    if proto == IP_PROTO_UDP:
        return udp_packet(t, e, c, m)
    if proto == IP_PROTO_UDPLITE:
        return stream_once_replied(t, e, m, m.to[TO_UDP], m.to[TO_UDP_STREAM])
    if proto == IP_PROTO_ICMP:
        refresh(t, e, m, m.to[TO_ICMP])
        return V_ACCEPT
    if proto == IP_PROTO_ICMP6:
        refresh(t, e, m, m.to[TO_ICMPV6])
        return V_ACCEPT
    if proto == IP_PROTO_SCTP:
        return sctp_packet(t, e, c, m)
    if proto == IP_PROTO_GRE:
        return stream_once_replied(t, e, m, m.to[TO_GRE], m.to[TO_GRE_STREAM])
    if proto == IP_PROTO_DCCP and t.dccp_tracker:
        return dccp_packet(t, e, c, m)
    refresh(t, e, m, m.to[TO_GENERIC])
    return V_ACCEPT
