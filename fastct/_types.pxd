# cython: language_level=3
"""The shared C vocabulary of fastct: every struct and enum the stages pass between them.

The numpy dtype of a table entry is derived from `ct_entry` (fastct/_engine.pyx, ENTRY_DTYPE), never
restated, and tests/test_layout.py checks every field offset against the C compiler's.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, int32_t, int16_t

cdef extern from "compat.h" nogil:
    bint FASTCT_LIKELY(bint)
    bint FASTCT_UNLIKELY(bint)
    uint64_t clock_ticks "fastct_ticks"()
    void FASTCT_PREFETCH_R(const void *)
    void FASTCT_PREFETCH_L2(const void *)
    void FASTCT_PREFETCH_W(const void *)
    uint16_t fastct_be16(const uint8_t *)
    uint32_t fastct_be32(const uint8_t *)
    uint16_t fastct_le16(const uint8_t *)
    uint32_t fastct_le32(const uint8_t *)
    uint64_t fastct_load64(const void *)
    uint32_t fastct_load32(const void *)
    uint32_t fastct_bswap32(uint32_t)
    uint16_t fastct_bswap16(uint16_t)
    uint64_t fastct_hash5(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, const uint64_t *)

cdef extern from "ct_defs.h" nogil:
    enum:
        CS_NEW, CS_EST, CS_REL, CS_RPL, CS_INV, CS_TRK, CS_SNAT, CS_DNAT
    enum:
        IPS_EXPECTED, IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED, IPS_SRC_NAT, IPS_DST_NAT
        IPS_SRC_NAT_DONE, IPS_DST_NAT_DONE, IPS_DYING, IPS_UNTRACKED
    int IPS_NAT_MASK
    enum:
        TCP_NONE, TCP_SYN_SENT, TCP_SYN_RECV, TCP_ESTABLISHED, TCP_FIN_WAIT, TCP_CLOSE_WAIT
        TCP_LAST_ACK, TCP_TIME_WAIT, TCP_CLOSE, TCP_SYN_SENT2, TCP_N_STATES
    enum:
        SCTP_NONE, SCTP_CLOSED, SCTP_COOKIE_WAIT, SCTP_COOKIE_ECHOED, SCTP_ESTABLISHED
        SCTP_SHUTDOWN_SENT, SCTP_SHUTDOWN_RECD, SCTP_SHUTDOWN_ACK_SENT, SCTP_HEARTBEAT_SENT
        SCTP_N_STATES
    enum:
        DCCP_NONE, DCCP_REQUEST, DCCP_RESPOND, DCCP_PARTOPEN, DCCP_OPEN, DCCP_CLOSEREQ
        DCCP_CLOSING, DCCP_TIMEWAIT, DCCP_IGNORE, DCCP_INVALID, DCCP_N_STATES
    enum:
        TO_TCP_NONE, TO_TCP_SYN_SENT, TO_TCP_SYN_RECV, TO_TCP_ESTABLISHED, TO_TCP_FIN_WAIT
        TO_TCP_CLOSE_WAIT, TO_TCP_LAST_ACK, TO_TCP_TIME_WAIT, TO_TCP_CLOSE, TO_TCP_SYN_SENT2
        TO_TCP_MAX_RETRANS, TO_TCP_UNACK, TO_UDP, TO_UDP_STREAM, TO_ICMP, TO_ICMPV6, TO_GENERIC
        TO_FRAG4, TO_FRAG6, TO_GRE, TO_GRE_STREAM, TO_SCTP_NONE, TO_SCTP_CLOSED, TO_SCTP_COOKIE_WAIT
        TO_SCTP_COOKIE_ECHOED, TO_SCTP_ESTABLISHED, TO_SCTP_SHUTDOWN_SENT, TO_SCTP_SHUTDOWN_RECD
        TO_SCTP_SHUTDOWN_ACK_SENT, TO_SCTP_HEARTBEAT_SENT, TO_DCCP_NONE, TO_DCCP_REQUEST
        TO_DCCP_RESPOND, TO_DCCP_PARTOPEN, TO_DCCP_OPEN, TO_DCCP_CLOSEREQ, TO_DCCP_CLOSING
        TO_DCCP_TIMEWAIT, TO_N
    enum:
        R_VALID, R_L2_TRUNCATED, R_VLAN_TRUNCATED, R_IP_TRUNCATED, R_IP_BAD_VERSION, R_IP_BAD_HLEN
        R_IP_BAD_LEN, R_IP6_EXT_TRUNCATED, R_IP6_EXT_TOO_MANY, R_IP6_NO_NEXT, R_L4_TRUNCATED, R_UDP_BAD_LEN, R_TCP_BAD_DOFF
        R_TCP_BAD_FLAGS, R_TCP_INVALID_STATE, R_TCP_SEQ_OVER, R_TCP_SEQ_UNDER, R_TCP_ACK_OVER
        R_TCP_ACK_UNDER, R_TCP_RST_INVALID, R_TCP_NO_NEW, R_ICMP_NO_NEW, R_ICMP_ERROR, R_ICMP_ERROR_BAD
        R_ICMP_ERROR_DADDR, R_ICMP_UNKNOWN_TYPE, R_CHECKSUM, R_IP_CHECKSUM, R_UDPLITE_NO_CSUM, R_SCTP_INVALID, R_SCTP_NO_NEW
        R_DCCP_INVALID, R_DCCP_NO_NEW, R_GRE_BAD, R_FRAG_NO_ROOM, R_FRAG_BAD, R_FRAG_DUP, R_FRAG_OVERLAP
        R_FRAG_TOO_MANY, R_FRAG_UNALIGNED, R_ICMP_WRONG_FAMILY, R_TABLE_FULL, R_ZONE_LIMIT
        R_CHAIN_TOO_LONG, R_NAT_NO_TUPLE, R_NAT_NO_ADDR, R_RULESET_DROP, R_NO_ROUTE, R_N
    enum:
        ST_FOUND, ST_INVALID, ST_INSERT, ST_INSERT_FAILED, ST_DROP, ST_EARLY_DROP, ST_ERROR
        ST_SEARCH_RESTART, ST_CLASH_RESOLVE, ST_CHAINTOOLONG, ST_PACKETS, ST_UNTRACKED, ST_NON_IP
        ST_LINKTYPE_SKIPPED, ST_TIME_BACKWARDS, ST_EXPIRED, ST_PROBES, ST_PROBE_MAX, ST_GROWS, ST_FRAG_HELD
        ST_FRAG_REASSEMBLED, ST_FRAG_TIMEOUT, ST_FRAG_DROPPED, ST_NAT_REWRITTEN,
        ST_NAT_NOT_REWRITTEN, ST_N
    const char *fastct_ct_state_names[]
    const int fastct_ct_state_values[]
    const char *fastct_status_names[]
    const int fastct_status_values[]
    enum:
        NAT_ACCEPT, NAT_SNAT, NAT_DNAT, NAT_MASQUERADE, NAT_REDIRECT, NAT_NOTRACK
    enum:
        NAT_F_PERSISTENT, NAT_F_RANDOM, NAT_F_FULLY_RANDOM
    const char *fastct_nat_action_names[]
    const int fastct_nat_action_values[]
    const char *fastct_nat_flag_names[]
    const int fastct_nat_flag_values[]
    int FASTCT_N_NAT_ACTIONS
    int FASTCT_N_NAT_FLAGS
    int NAT_F_IFADDR
    enum:
        HP_RAW, HP_PRE, HP_DNAT, HP_LATE, HP_SNAT
    enum:
        MK_IIF, MK_OIF, MK_SADDR, MK_DADDR, MK_NFPROTO, MK_L4PROTO, MK_SPORT, MK_DPORT, MK_CT_STATE
        MK_CT_DIR, MK_CT_ZONE, MK_CT_MARK, MK_META_MARK
    enum:
        RV_CONTINUE, RV_ACCEPT, RV_DROP, RV_RETURN, RV_JUMP, RV_GOTO, RV_NAT
    enum:
        RS_COUNTER, RS_CT_MARK, RS_META_MARK, RS_CT_ZONE, RS_NOTRACK, RS_HELPER
    int FASTCT_RS_N_HOOKS
    int FASTCT_RS_N_KEYS
    int FASTCT_RS_N_VERDICTS
    int FASTCT_RS_N_STMTS
    const char *fastct_rs_hook_names[]
    const int fastct_rs_hook_values[]
    const char *fastct_rs_key_names[]
    const int fastct_rs_key_values[]
    const char *fastct_rs_verdict_names[]
    const int fastct_rs_verdict_values[]
    const char *fastct_rs_stmt_names[]
    const int fastct_rs_stmt_values[]
    const char *fastct_tcp_state_names[]
    const char *fastct_sctp_state_names[]
    const char *fastct_dccp_state_names[]
    const char *fastct_timeout_names[]
    const int64_t fastct_timeout_defaults[]
    const char *fastct_reason_names[]
    const char *fastct_stat_names[]
    int FASTCT_N_CT_STATE_BITS
    int FASTCT_N_STATUS_BITS

# Address families as conntrack prints them ("ipv4 2", "ipv6 10").
cdef enum:
    L3_IPV4 = 2
    L3_IPV6 = 10

# IP protocol numbers (dpkt/BSD names).
cdef enum:
    IP_PROTO_ICMP = 1
    IP_PROTO_TCP = 6
    IP_PROTO_UDP = 17
    IP_PROTO_DCCP = 33
    IP_PROTO_GRE = 47
    IP_PROTO_ICMP6 = 58
    IP_PROTO_SCTP = 132
    IP_PROTO_UDPLITE = 136

# Directions (kernel IP_CT_DIR_*).
cdef enum:
    DIR_ORIGINAL = 0
    DIR_REPLY = 1

# What the parser made of a frame.
cdef enum:
    PK_TRACK = 0      # an IP packet with a usable transport header: tracked
    PK_INVALID = 1    # damaged or unusable header: ct_state inv+trk, reason counted
    PK_NON_IP = 2     # a frame of a handled link type that carries no IP (ARP, LLDP...): ct_state 0
    PK_SKIP = 3       # a link type fastct does not handle: counted per link type, ct_state 0
    PK_UNTRACKED = 4  # IP but never tracked, as in the kernel (IPv6 neighbour discovery, MLD)
    PK_FRAG = 5       # an IP fragment: goes to reassembly (_frag.pxd) before tracking
    PK_HELD = 6       # a fragment held until its datagram is complete: ct_state 0, `held`

# A table entry: 128 bytes, two cache lines, holding everything an established packet reads or
# writes (the TCP retransmission bookkeeping included), so such a packet touches its index slot and
# these two lines and nothing else: each further random line costs ~6.5 ns per packet at 1M
# connections on this kind of machine (the cold record, when it held td_maxack and last_*, cost 13).
# Line 0 holds the original tuple (the lookup key), the expiry, status, state and sequence ends;
# line 1 the counters and the rest of the TCP window state.  Fields are ordered so that natural
# alignment leaves no padding, so the C layout and the numpy dtype derived from it agree byte for byte.
#
# Tuple layout, shared by IPv4 and IPv6: addresses are 16 bytes in network order; an IPv4 address
# takes bytes 0-3 and bytes 4-15 are zero.  Ports are in host order; for ICMP/ICMPv6 `sport` holds
# the echo id and `dport` is type << 8 | code, as the kernel's tuple keeps them.  The reply tuple is
# the reverse of this one (ports swapped, ICMP type inverted) and is not stored; only NAT stores a
# translated reply tuple, out of line (ct_nat).  Bytes 32-39 read as one little-endian uint64 are
# sport | dport << 16 | zone << 32 | l3 << 48 | proto << 56 (the key word `k4`).
#
# Counters: the low 32 bits of each per-direction packet and byte counter live here, the high 32
# bits in the cold record, carried there when the low word wraps (once per 4 GiB of a direction's
# bytes).  That is what makes the TCP state fit; Tracker.counters() and Tracker.record() give the
# whole 64-bit values.
cdef struct ct_entry:
    uint8_t src[16]         # 0   original source address
    uint8_t dst[16]         # 16  original destination address
    uint16_t sport          # 32  original source port / ICMP id
    uint16_t dport          # 34  original destination port / ICMP type << 8 | code
    uint16_t zone           # 36  conntrack zone
    uint8_t l3              # 38  L3_IPV4 (2) or L3_IPV6 (10)
    uint8_t proto           # 39  IP protocol number
    int64_t expires         # 40  ns; the entry is dead once the time reaches this
    uint16_t status         # 48  IPS_* bits (kernel values)
    uint8_t state           # 50  protocol state (TCP_* for TCP)
    uint8_t retrans         # 51  TCP retransmission count (kernel ct->proto.tcp.retrans)
    uint32_t td_end[2]      # 52  TCP per direction: highest seq + len sent
    uint32_t last_seq       # 60  TCP: the last packet's seq (kernel ct->proto.tcp.last_seq)
    uint32_t packets_lo[2]  # 64  per direction (original, reply): low 32 bits (high: ct_cold)
    uint32_t bytes_lo[2]    # 72  per direction, IP total length as the kernel counts: low 32 bits
    int64_t last_seen       # 80  ns, last packet that refreshed the entry
    uint32_t td_maxend[2]   # 88  TCP per direction: highest ack + window the peer allowed
    uint32_t td_maxwin[2]   # 96  TCP per direction: largest window advertised
    uint32_t td_maxack[2]   # 104 TCP per direction: highest ack sent
    uint32_t last_ack       # 112 TCP: the last packet's ack, end and raw window
    uint32_t last_end       # 116
    uint16_t last_win       # 120
    uint8_t td_scale[2]     # 122 TCP window scale per direction
    uint8_t td_flags[2]     # 124 TCP per-direction flags (kernel IP_CT_TCP_FLAG_*)
    uint8_t last_flags      # 126 TCP: options of an ignored SYN, simultaneous open, challenge ACK
    uint8_t last_diw        # 127 TCP: last_index (bits 0-2), last_dir (bit 3), last_wscale (bits 4-7)

# Cold per-entry data, in a parallel array of 32-byte records (never straddling a cache line): what
# no established packet reads.  The counters' high words change once per 4 GiB (bytes) or 4 G
# packets of a direction; mark and helper are read by rulesets and output.
cdef struct ct_cold:
    int64_t start           # 0  ns, time of the first packet (conntrack's start timestamp)
    uint32_t packets_hi[2]  # 8  high 32 bits of ct_entry.packets_lo
    uint32_t bytes_hi[2]    # 16 high 32 bits of ct_entry.bytes_lo
    uint32_t mark           # 24 ct mark
    uint32_t aux            # 28 helper number (ct helper set); 0xFFFFFFFF none

# What the parser hands the later stages for one packet (per-batch scratch, never stored).
cdef struct pkt_meta:
    uint64_t k[5]           # the tuple as seen, in ct_entry's byte layout (k[4] is the key word)
    uint64_t rk4            # key word of the reversed tuple (ports swapped, ICMP type inverted)
    uint64_t hash           # keyed symmetric hash: equal for a tuple and its reverse
    int64_t now             # packet time, ns, never older than the newest seen before it
    uint32_t iplen          # IP total length: what the counters add
    uint32_t seq            # TCP
    uint32_t ack            # TCP
    uint32_t datalen        # TCP payload length
    uint32_t win            # TCP window field (unscaled)
    uint32_t sack           # TCP: highest SACK right edge above ack (ack when none)
    int32_t idx             # entry found, -1 none
    uint16_t vlan           # outermost VLAN id (0 none), for --zone-from vlan
    uint8_t tcpflags        # TCP flags byte (FIN 0x01 ... CWR 0x80)
    uint8_t wscale          # TCP window scale option value, 0xFF when absent
    uint8_t sackperm        # TCP SACK-permitted option present
    uint8_t reason          # R_*: why the packet is invalid (R_VALID otherwise)
    uint8_t kind            # PK_*
    uint8_t dir             # DIR_* relative to the entry found
    uint8_t ct_state        # output
    uint8_t proto           # IP protocol (duplicated from k[4] for quick dispatch)
    uint16_t linktype       # the frame's link type (for the skipped-link-type counter)
    uint8_t pflags          # PF_* bits below
    uint8_t hoplimit        # IPv6 hop limit (redirects must carry 255)
    uint8_t cand_reply      # stage 2's candidate came from a NAT reply-tuple slot
    uint8_t helper          # a raw chain's template helper for a new connection (number + 1; 0 none)
    const uint8_t *l3       # the IP header in the batch buffer (valid during the batch)
    const uint8_t *l4       # the transport header in the batch buffer (valid during the batch)
    const int64_t *to       # the timeouts for this packet's zone (ct_table.timeouts or a policy)
    const uint8_t *inner_l3 # ICMP errors: the quoted packet's IP header (NAT translates it back)
    const uint8_t *inner_l4 # ICMP errors: the quoted packet's transport header
    uint32_t l4cap          # bytes of it captured (never read past this)
    uint32_t l4len          # its length by the IP header
    uint32_t frag_id        # fragments: IPv4 identification or IPv6 fragment id
    uint32_t frag_off       # fragments: byte offset of this fragment's data in the datagram
    uint32_t frag_len       # fragments: data bytes this fragment carries (by the IP header)
    uint16_t frag_unfrag    # fragments: bytes before the fragmentable part (IPv4 header, IPv6
                            # header + extension headers before the Fragment header)
    uint16_t frag_l4off     # first fragments: where the transport header starts in the data
    uint32_t meta_mark      # the packet mark (skb->mark): 0, or what a ruleset's raw chain set

# One NAT rule, compiled from fastct.nat's Python rules into a flat array the batch loop scans
# (first match wins per stage).  Addresses in network order, IPv4 in bytes 0-3 (as ct_entry); port
# ranges inclusive, in host order.  The numpy dtype is derived from this struct (NAT_RULE_DTYPE).
cdef struct nat_target:
    uint8_t to_min[16]      # 0  first address of the range (masquerade with NAT_F_IFADDR, redirect:
                            #    unused, the output / input interface's address is taken)
    uint8_t to_max[16]      # 16 last address of the range
    uint16_t to_port_lo     # 32 port range (0, 0: keep the port when it is free)
    uint16_t to_port_hi     # 34
    uint8_t action          # 36 NAT_SNAT, NAT_DNAT, NAT_MASQUERADE, NAT_REDIRECT (include/ct_defs.h)
    uint8_t flags           # 37 NAT_F_* bits; hash-based port choice when neither random flag
    uint8_t l3              # 38 the family its addresses are (0 any): on a packet of the other
                            #    family the rule does not match (nft's `snat ip to` in an inet table)
    uint8_t _pad            # 39 (to 40 bytes)

# A ruleset compiled for the batch loop (fastct/rules_compile.py builds it, fastct/_rules.pxd walks
# it): chains of rules, rules of matches.  Every array is a numpy array the engine keeps.
cdef struct rs_match:
    uint8_t key             # 0  MK_* (include/ct_defs.h): what is tested
    uint8_t neg             # 1  1: the value must lie in none of the ranges
    uint8_t l3              # 2  address keys: the family of the ranges (packets of the other never match)
    uint8_t _pad            # 3
    uint32_t mask           # 4  the value is ANDed with this first (marks); MK_CT_STATE: the bits wanted
    uint32_t first          # 8  first range: rs_arange for address keys, rs_irange for the others
    uint32_t count          # 12 ranges (0 for MK_CT_STATE, a bit test)

cdef struct rs_irange:
    uint32_t lo             # 0 inclusive
    uint32_t hi             # 4

cdef struct rs_arange:
    uint8_t lo[16]          # 0  inclusive, ct_entry's address layout (big-endian, IPv4 in bytes 0-3)
    uint8_t hi[16]          # 16

cdef struct rs_rule:
    uint32_t m_first        # 0  matches[m_first : m_first + m_count], all must hold
    uint16_t m_count        # 4
    uint16_t stmts          # 6  RS_* bits: statements run when the matches hold
    uint32_t ct_mark        # 8  ct mark set
    uint32_t meta_mark      # 12 meta mark set
    int32_t target          # 16 RV_JUMP / RV_GOTO: chain; RV_NAT: nat_target
    uint16_t zone           # 20 ct zone set
    uint8_t verdict         # 22 RV_*
    uint8_t helper          # 23 ct helper set: helper number
    uint32_t _pad[2]        # 24 (to 32 bytes)

cdef struct rs_chain:
    uint32_t first          # 0 rules[first : first + count]
    uint32_t count          # 4
    uint8_t policy          # 8 RV_ACCEPT or RV_DROP: a base chain's verdict when no rule decides
    uint8_t l3              # 9 its table's family (L3_IPV4 / L3_IPV6; 0 inet): a base chain passes
                            #   packets of another family by (a table ip's chains never see IPv6)
    uint8_t _pad[2]         # 10 (to 12 bytes)

# A route of the interface model: destinations in prefix/plen leave by interface `oif` (longest
# prefix first in the array, so the first match wins).
cdef struct rs_route:
    uint8_t prefix[16]      # 0
    uint8_t l3              # 16 L3_IPV4 / L3_IPV6
    uint8_t plen            # 17
    int16_t oif             # 18 gateway interface number

# The NAT side record of a connection whose reply tuple NAT changed, in an array parallel to the
# entries (allocated with the first NAT rules; pages of connections without NAT are never touched).
# Only such a connection has a stored reply tuple and a second index slot.  One cache line each, so
# the batch loop prefetches it with the entry.
cdef struct ct_nat:
    uint64_t r[5]           # 0  the reply tuple, in ct_entry's key layout (r[4] is its key word)
    uint64_t rhash          # 40 its keyed hash: where its index slot lives
    uint64_t _reserved[2]   # 48 (to 64 bytes)

# pkt_meta.pflags
cdef enum:
    PF_RELATED = 0x01       # an ICMP/ICMPv6 error: k[] is the quoted packet's tuple
    PF_ERROR_STAT = 0x02    # refused by the ICMP error handler: counted in `error`, not `invalid`
    PF_FRAG_MORE = 0x04     # a fragment with more fragments after it (IPv4 MF, IPv6 M)
    PF_FRAG_DROP = 0x08     # a fragment reassembly dropped: counted in frag_dropped, not `invalid`

# The table: entries, cold data and the open-addressing index, plus counters.  The arrays are numpy
# arrays owned by the engine object; this struct holds raw pointers so the batch loop needs no GIL.
cdef struct ct_table:
    ct_entry *e             # entries[0:n] are live (kept dense: deletion moves the last one down)
    ct_cold *cold           # parallel to e
    uint64_t *slots         # index: tag << 32 | (entry + 1); 0 is empty
    uint64_t mask           # number of slots - 1 (a power of two minus one)
    uint64_t *oslots        # while growing: the previous index, emptied a little per batch (else NULL)
    uint64_t omask          # its number of slots - 1
    uint64_t ocount         # slots still in it
    uint64_t opos           # migration cursor in it
    uint32_t n              # entries in use
    uint32_t cap            # max_conns: entries allocated
    uint32_t grow_at        # slots in use at which the index doubles (load factor 5/8)
    uint32_t sweep_pos      # incremental expiry sweep cursor
    uint32_t frag_sweep_pos # fragment queue expiry cursor
    uint32_t max_probe      # insert bound: a slot is never placed further than this from its home
    uint32_t tcp_loose      # nf_conntrack_tcp_loose
    uint32_t tcp_be_liberal # nf_conntrack_tcp_be_liberal
    uint32_t tcp_max_retrans
    uint32_t checksum       # nf_conntrack_checksum (fastct's default 0: captures carry offloaded sums)
    uint32_t dccp_tracker   # track DCCP with the pre-6.16 kernel's state machine (default: generic)
    uint32_t tcp_ignore_invalid_rst
    uint32_t early_drop     # table full: evict a non-ASSURED entry (kernel) or just drop (OVS userspace)
    uint32_t tcp_fast       # take _tcp's straight-line path for in-window established ACKs (tests turn
                            # it off to check it against the general path)
    const uint8_t *zone_policy   # per zone: 0 the table's timeouts, k >= 1 policies[k - 1] (NULL: none)
    const int64_t *policies      # timeout policies, TO_N values each (ns)
    uint32_t *zone_count    # per zone: entries in entries[0:n] (NULL while no zone limit is set)
    const uint32_t *zone_limit   # per zone: most entries allowed, 0 no limit (NULL: no limits)
    ct_nat *nat             # NAT side records parallel to e (NULL until NAT rules are set)
    uint32_t nat_live       # index slots NAT'd connections hold besides their own (reply tuple;
                            # by source, for source NAT)
    uint32_t nat_on         # a nat chain exists: every new connection gets its bindings (at
                            # least the null binding), as once the kernel's NAT hooks are in
    uint32_t rs_on          # a ruleset is set: new connections walk its chains
    const rs_chain *chains  # the ruleset (NULL: none); see rs_rule
    const rs_rule *rules
    const rs_match *matches
    const rs_irange *iranges
    const rs_arange *aranges
    const nat_target *targets
    const uint32_t *base    # base chains, grouped by hook point, each group in priority order
    uint32_t hp_first[6]    # base[hp_first[h] : hp_first[h + 1]] run at hook point h (HP_*)
    uint64_t *rule_counters # per rule: packets, bytes (its `counter` statement)
    const uint8_t *helper_proto  # per helper (ct helper set): the protocol it is for (others ignore it)
    const int16_t *iif_map  # capture interface -> gateway interface (NULL: the same number)
    uint32_t n_iif_map
    const rs_route *routes  # the output interface of a destination (interface model)
    uint32_t n_routes
    int32_t default_oif     # where destinations no route holds leave (-1: unknown)
    uint32_t route_drop     # an interface model is set: a new connection no route holds (and no
                            # default) is dropped (R_NO_ROUTE), as the gateway would
    const uint8_t *if_addr  # per gateway interface: IPv4 then IPv6 address (32 bytes), for
                            # redirect (input interface) and masquerade (output interface)
    const uint8_t *if_has   # per interface: bit 0 an IPv4 address is set, bit 1 an IPv6 one
    uint32_t n_if_addr
    uint64_t rng            # xorshift64 state for random and fully-random port searches
    uint64_t seed[4]        # hash key
    int64_t now             # newest packet time seen, ns
    int64_t timeouts[TO_N]  # ns
    uint64_t stats[ST_N]
    uint64_t stage_ticks[3] # with stage_clock: fastct_ticks() spent in stages 1, 2 and 3
    uint8_t stage_clock     # time the batch loop's stages (Engine.set_options(stage_clock=True))
    uint64_t fresh[8]       # a 512-bit Bloom filter of the hashes indexed since the batch loop's
                            # stage 2 last read the index (table_fresh): a packet whose probe found
                            # nothing then, and whose hash is not in it, needs no second probe
    uint64_t reasons[R_N]
