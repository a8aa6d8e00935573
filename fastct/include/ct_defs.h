/* The one place where fastct's enumerations and their names are defined.
 *
 * Each list is an X-macro: the C enum, the name table the Python layer reads, and (for TCP states and
 * timeouts) the defaults are all generated from the same line, so they cannot drift apart.  Values
 * follow the systems named in each comment.  Python gets these through fastct._engine (never
 * restated in Python). */
#ifndef FASTCT_CT_DEFS_H
#define FASTCT_CT_DEFS_H
#include <stdint.h>

/* Open vSwitch ct_state bits (OVS_CS_F_*), as printed by ovs-ofctl: X(enum, value, name). */
#define FASTCT_CT_STATE_BITS(X) \
    X(CS_NEW, 0x01, "new") \
    X(CS_EST, 0x02, "est") \
    X(CS_REL, 0x04, "rel") \
    X(CS_RPL, 0x08, "rpl") \
    X(CS_INV, 0x10, "inv") \
    X(CS_TRK, 0x20, "trk") \
    X(CS_SNAT, 0x40, "snat") \
    X(CS_DNAT, 0x80, "dnat")

/* Linux conntrack status bits (enum ip_conntrack_status, IPS_*_BIT) that fastct uses. */
#define FASTCT_STATUS_BITS(X) \
    X(IPS_EXPECTED, 0x0001, "EXPECTED") \
    X(IPS_SEEN_REPLY, 0x0002, "SEEN_REPLY") \
    X(IPS_ASSURED, 0x0004, "ASSURED") \
    X(IPS_CONFIRMED, 0x0008, "CONFIRMED") \
    X(IPS_SRC_NAT, 0x0010, "SRC_NAT") \
    X(IPS_DST_NAT, 0x0020, "DST_NAT") \
    X(IPS_SEQ_ADJUST, 0x0040, "SEQ_ADJUST") \
    X(IPS_SRC_NAT_DONE, 0x0080, "SRC_NAT_DONE") \
    X(IPS_DST_NAT_DONE, 0x0100, "DST_NAT_DONE") \
    X(IPS_DYING, 0x0200, "DYING") \
    X(IPS_FIXED_TIMEOUT, 0x0400, "FIXED_TIMEOUT") \
    X(IPS_TEMPLATE, 0x0800, "TEMPLATE") \
    X(IPS_UNTRACKED, 0x1000, "UNTRACKED") \
    X(IPS_HELPER, 0x2000, "HELPER") \
    X(IPS_OFFLOAD, 0x4000, "OFFLOAD") \
    X(IPS_HW_OFFLOAD, 0x8000, "HW_OFFLOAD")

/* TCP conntrack states in the kernel's order (enum tcp_conntrack) and the names conntrack prints.
 * SYN_SENT2 is the kernel's TCP_CONNTRACK_LISTEN slot, used for simultaneous open. */
#define FASTCT_TCP_STATES(X) \
    X(TCP_NONE, "NONE") \
    X(TCP_SYN_SENT, "SYN_SENT") \
    X(TCP_SYN_RECV, "SYN_RECV") \
    X(TCP_ESTABLISHED, "ESTABLISHED") \
    X(TCP_FIN_WAIT, "FIN_WAIT") \
    X(TCP_CLOSE_WAIT, "CLOSE_WAIT") \
    X(TCP_LAST_ACK, "LAST_ACK") \
    X(TCP_TIME_WAIT, "TIME_WAIT") \
    X(TCP_CLOSE, "CLOSE") \
    X(TCP_SYN_SENT2, "SYN_SENT2")

/* SCTP conntrack states (kernel enum sctp_conntrack, 6.x: HEARTBEAT_ACKED is gone) and the names
 * conntrack prints. */
#define FASTCT_SCTP_STATES(X) \
    X(SCTP_NONE, "NONE") \
    X(SCTP_CLOSED, "CLOSED") \
    X(SCTP_COOKIE_WAIT, "COOKIE_WAIT") \
    X(SCTP_COOKIE_ECHOED, "COOKIE_ECHOED") \
    X(SCTP_ESTABLISHED, "ESTABLISHED") \
    X(SCTP_SHUTDOWN_SENT, "SHUTDOWN_SENT") \
    X(SCTP_SHUTDOWN_RECD, "SHUTDOWN_RECD") \
    X(SCTP_SHUTDOWN_ACK_SENT, "SHUTDOWN_ACK_SENT") \
    X(SCTP_HEARTBEAT_SENT, "HEARTBEAT_SENT")

/* DCCP conntrack states of the kernels that had a DCCP tracker (enum ct_dccp_states, up to 6.15);
 * used only with the dccp option, since 6.16+ tracks DCCP as generic. */
#define FASTCT_DCCP_STATES(X) \
    X(DCCP_NONE, "NONE") \
    X(DCCP_REQUEST, "REQUEST") \
    X(DCCP_RESPOND, "RESPOND") \
    X(DCCP_PARTOPEN, "PARTOPEN") \
    X(DCCP_OPEN, "OPEN") \
    X(DCCP_CLOSEREQ, "CLOSEREQ") \
    X(DCCP_CLOSING, "CLOSING") \
    X(DCCP_TIMEWAIT, "TIMEWAIT") \
    X(DCCP_IGNORE, "IGNORE") \
    X(DCCP_INVALID, "INVALID")

/* Timeouts, named as the kernel's sysctls without the "nf_conntrack_" prefix, with the Linux
 * defaults in seconds.  The TCP, SCTP and DCCP ones are in state order so that TO_TCP_NONE + state
 * (TO_SCTP_NONE + state, TO_DCCP_NONE + state) indexes them. */
#define FASTCT_TIMEOUTS(X) \
    X(TO_TCP_NONE, "tcp_timeout_none", 0) \
    X(TO_TCP_SYN_SENT, "tcp_timeout_syn_sent", 120) \
    X(TO_TCP_SYN_RECV, "tcp_timeout_syn_recv", 60) \
    X(TO_TCP_ESTABLISHED, "tcp_timeout_established", 432000) \
    X(TO_TCP_FIN_WAIT, "tcp_timeout_fin_wait", 120) \
    X(TO_TCP_CLOSE_WAIT, "tcp_timeout_close_wait", 60) \
    X(TO_TCP_LAST_ACK, "tcp_timeout_last_ack", 30) \
    X(TO_TCP_TIME_WAIT, "tcp_timeout_time_wait", 120) \
    X(TO_TCP_CLOSE, "tcp_timeout_close", 10) \
    X(TO_TCP_SYN_SENT2, "tcp_timeout_syn_sent2", 120) \
    X(TO_TCP_MAX_RETRANS, "tcp_timeout_max_retrans", 300) \
    X(TO_TCP_UNACK, "tcp_timeout_unacknowledged", 300) \
    X(TO_UDP, "udp_timeout", 30) \
    X(TO_UDP_STREAM, "udp_timeout_stream", 120) \
    X(TO_ICMP, "icmp_timeout", 30) \
    X(TO_ICMPV6, "icmpv6_timeout", 30) \
    X(TO_GENERIC, "generic_timeout", 600) \
    X(TO_FRAG4, "ipfrag_time", 30) \
    X(TO_FRAG6, "frag6_timeout", 60) \
    X(TO_GRE, "gre_timeout", 30) \
    X(TO_GRE_STREAM, "gre_timeout_stream", 180) \
    X(TO_SCTP_NONE, "sctp_timeout_none", 0) \
    X(TO_SCTP_CLOSED, "sctp_timeout_closed", 10) \
    X(TO_SCTP_COOKIE_WAIT, "sctp_timeout_cookie_wait", 3) \
    X(TO_SCTP_COOKIE_ECHOED, "sctp_timeout_cookie_echoed", 3) \
    X(TO_SCTP_ESTABLISHED, "sctp_timeout_established", 210) \
    X(TO_SCTP_SHUTDOWN_SENT, "sctp_timeout_shutdown_sent", 3) \
    X(TO_SCTP_SHUTDOWN_RECD, "sctp_timeout_shutdown_recd", 3) \
    X(TO_SCTP_SHUTDOWN_ACK_SENT, "sctp_timeout_shutdown_ack_sent", 3) \
    X(TO_SCTP_HEARTBEAT_SENT, "sctp_timeout_heartbeat_sent", 30) \
    X(TO_DCCP_NONE, "dccp_timeout_none", 0) \
    X(TO_DCCP_REQUEST, "dccp_timeout_request", 240) \
    X(TO_DCCP_RESPOND, "dccp_timeout_respond", 480) \
    X(TO_DCCP_PARTOPEN, "dccp_timeout_partopen", 480) \
    X(TO_DCCP_OPEN, "dccp_timeout_open", 43200) \
    X(TO_DCCP_CLOSEREQ, "dccp_timeout_closereq", 64) \
    X(TO_DCCP_CLOSING, "dccp_timeout_closing", 64) \
    X(TO_DCCP_TIMEWAIT, "dccp_timeout_timewait", 240)

/* A connection whose reply tuple NAT changed has either bit (and a stored reply tuple). */
#define IPS_NAT_MASK (IPS_SRC_NAT | IPS_DST_NAT)

/* NAT rule actions (iptables/nftables targets) and flags (NF_NAT_RANGE_*): X(enum, value, name). */
#define FASTCT_NAT_ACTIONS(X) \
    X(NAT_ACCEPT, 0, "accept") \
    X(NAT_SNAT, 1, "snat") \
    X(NAT_DNAT, 2, "dnat") \
    X(NAT_MASQUERADE, 3, "masquerade") \
    X(NAT_REDIRECT, 4, "redirect") \
    X(NAT_NOTRACK, 5, "notrack")

#define FASTCT_NAT_FLAGS(X) \
    X(NAT_F_PERSISTENT, 0x01, "persistent") \
    X(NAT_F_RANDOM, 0x02, "random") \
    X(NAT_F_FULLY_RANDOM, 0x04, "fully-random")

/* Masquerade without an address: the output interface's address of the connection's family (a
   ruleset's `masquerade`); not a user flag, so not in the list above. */
#define NAT_F_IFADDR 0x80

/* Rulesets (fastct/_rules.pxd walks them; fastct/rules_compile.py builds them): X(enum, value, name).
   Hook points: where base chains run on a forwarded packet, in the kernel's priority order. */
#define FASTCT_RS_HOOKS(X) \
    X(HP_RAW, 0, "prerouting, before conntrack") \
    X(HP_PRE, 1, "prerouting, after conntrack, before dnat") \
    X(HP_DNAT, 2, "nat prerouting") \
    X(HP_LATE, 3, "prerouting, after dnat") \
    X(HP_SNAT, 4, "nat postrouting")
#define FASTCT_RS_N_HOOKS 5

/* What a match tests. */
#define FASTCT_RS_KEYS(X) \
    X(MK_IIF, 0, "iif") \
    X(MK_OIF, 1, "oif") \
    X(MK_SADDR, 2, "saddr") \
    X(MK_DADDR, 3, "daddr") \
    X(MK_NFPROTO, 4, "nfproto") \
    X(MK_L4PROTO, 5, "l4proto") \
    X(MK_SPORT, 6, "sport") \
    X(MK_DPORT, 7, "dport") \
    X(MK_CT_STATE, 8, "ct state") \
    X(MK_CT_DIR, 9, "ct direction") \
    X(MK_CT_ZONE, 10, "ct zone") \
    X(MK_CT_MARK, 11, "ct mark") \
    X(MK_META_MARK, 12, "meta mark")
#define FASTCT_RS_N_KEYS 13

/* How a rule ends (RV_CONTINUE: on to the next rule; RV_NAT: the NAT target rs_rule.target). */
#define FASTCT_RS_VERDICTS(X) \
    X(RV_CONTINUE, 0, "continue") \
    X(RV_ACCEPT, 1, "accept") \
    X(RV_DROP, 2, "drop") \
    X(RV_RETURN, 3, "return") \
    X(RV_JUMP, 4, "jump") \
    X(RV_GOTO, 5, "goto") \
    X(RV_NAT, 6, "nat")
#define FASTCT_RS_N_VERDICTS 7

/* Statements of a rule (bits of rs_rule.stmts), run in this order when its matches hold. */
#define FASTCT_RS_STMTS(X) \
    X(RS_COUNTER, 0x01, "counter") \
    X(RS_CT_MARK, 0x02, "ct mark set") \
    X(RS_META_MARK, 0x04, "meta mark set") \
    X(RS_CT_ZONE, 0x08, "ct zone set") \
    X(RS_NOTRACK, 0x10, "notrack") \
    X(RS_HELPER, 0x20, "ct helper set")
#define FASTCT_RS_N_STMTS 6

/* Why a packet got ct_state inv (or was not tracked): one counter each, reported by `--stats`. */
#define FASTCT_REASONS(X) \
    X(R_VALID, "ok") \
    X(R_L2_TRUNCATED, "link header truncated") \
    X(R_VLAN_TRUNCATED, "VLAN tag truncated") \
    X(R_IP_TRUNCATED, "IP header truncated") \
    X(R_IP_BAD_VERSION, "IP version does not match the link type") \
    X(R_IP_BAD_HLEN, "IPv4 header length < 20") \
    X(R_IP_BAD_LEN, "IP total length shorter than its header or longer than the frame") \
    X(R_IP6_EXT_TRUNCATED, "IPv6 extension header truncated") \
    X(R_IP6_EXT_TOO_MANY, "IPv6 extension header chain too long") \
    X(R_IP6_NO_NEXT, "IPv6 no next header (59): no transport protocol") \
    X(R_L4_TRUNCATED, "transport header truncated") \
    X(R_UDP_BAD_LEN, "UDP length field shorter than its header or past the packet") \
    X(R_TCP_BAD_DOFF, "TCP data offset < 5 or past the packet") \
    X(R_TCP_BAD_FLAGS, "TCP flag combination invalid") \
    X(R_TCP_INVALID_STATE, "TCP packet invalid in this state") \
    X(R_TCP_SEQ_OVER, "TCP SEQ is over the upper bound") \
    X(R_TCP_SEQ_UNDER, "TCP SEQ is under the lower bound") \
    X(R_TCP_ACK_OVER, "TCP ACK is over the upper bound") \
    X(R_TCP_ACK_UNDER, "TCP ACK is under the lower bound") \
    X(R_TCP_RST_INVALID, "TCP RST below what the peer acknowledged (invalid rst)") \
    X(R_TCP_NO_NEW, "TCP packet cannot start a connection") \
    X(R_ICMP_NO_NEW, "ICMP type cannot start a connection") \
    X(R_ICMP_ERROR, "ICMP error quoting no known connection") \
    X(R_ICMP_ERROR_BAD, "ICMP error with a truncated or unusable quoted packet") \
    X(R_ICMP_ERROR_DADDR, "ICMP error whose outer destination is not the quoted packet's source") \
    X(R_ICMP_UNKNOWN_TYPE, "ICMP type with no reply type and not an error") \
    X(R_CHECKSUM, "checksum wrong (nf_conntrack_checksum=1)") \
    X(R_IP_CHECKSUM, "IPv4 header checksum wrong (nf_conntrack_checksum=1; the kernel drops it before conntrack)") \
    X(R_UDPLITE_NO_CSUM, "UDP-Lite checksum missing") \
    X(R_SCTP_INVALID, "SCTP chunk invalid in this state or bad verification tag") \
    X(R_SCTP_NO_NEW, "SCTP packet cannot start an association") \
    X(R_DCCP_INVALID, "DCCP packet invalid in this state") \
    X(R_DCCP_NO_NEW, "DCCP packet cannot start a connection") \
    X(R_GRE_BAD, "GRE version 1 (PPTP) header not carrying PPP") \
    X(R_FRAG_NO_ROOM, "fragment of a new datagram with no room to reassemble it: dropped") \
    X(R_FRAG_BAD, "fragment inconsistent (empty, past the end, or datagram over 65535 bytes): dropped") \
    X(R_FRAG_DUP, "fragment duplicate: dropped") \
    X(R_FRAG_OVERLAP, "fragment overlaps another: datagram dropped") \
    X(R_FRAG_TOO_MANY, "fragment beyond the 128 runs kept per datagram: datagram dropped") \
    X(R_FRAG_UNALIGNED, "IPv6 fragment not a multiple of 8 bytes and not the first: not tracked") \
    X(R_ICMP_WRONG_FAMILY, "ICMP in IPv6 or ICMPv6 in IPv4") \
    X(R_TABLE_FULL, "table full, packet dropped") \
    X(R_ZONE_LIMIT, "zone at its connection limit, packet dropped") \
    X(R_CHAIN_TOO_LONG, "probe chain too long, packet dropped") \
    X(R_NAT_NO_TUPLE, "NAT: no free tuple left in the range, packet dropped") \
    X(R_NAT_NO_ADDR, "NAT: redirect or masquerade with no address of the family on the interface, packet dropped") \
    X(R_RULESET_DROP, "ruleset: a drop verdict, packet dropped") \
    X(R_NO_ROUTE, "no route: no --iface prefix holds the destination and no --out-iface, packet dropped")

/* The kernel's `conntrack -S` counters first (same names, same order), then fastct's own. */
#define FASTCT_STATS(X) \
    X(ST_FOUND, "found") \
    X(ST_INVALID, "invalid") \
    X(ST_INSERT, "insert") \
    X(ST_INSERT_FAILED, "insert_failed") \
    X(ST_DROP, "drop") \
    X(ST_EARLY_DROP, "early_drop") \
    X(ST_ERROR, "error") \
    X(ST_SEARCH_RESTART, "search_restart") \
    X(ST_CLASH_RESOLVE, "clash_resolve") \
    X(ST_CHAINTOOLONG, "chaintoolong") \
    X(ST_PACKETS, "packets") \
    X(ST_UNTRACKED, "untracked") \
    X(ST_NON_IP, "non_ip") \
    X(ST_LINKTYPE_SKIPPED, "linktype_skipped") \
    X(ST_TIME_BACKWARDS, "time_backwards") \
    X(ST_EXPIRED, "expired") \
    X(ST_PROBES, "probes") \
    X(ST_PROBE_MAX, "probe_max") \
    X(ST_GROWS, "grows") \
    X(ST_FRAG_HELD, "frag_held") \
    X(ST_FRAG_REASSEMBLED, "frag_reassembled") \
    X(ST_FRAG_TIMEOUT, "frag_timeout") \
    X(ST_FRAG_DROPPED, "frag_dropped") \
    X(ST_NAT_REWRITTEN, "nat_rewritten") \
    X(ST_NAT_NOT_REWRITTEN, "nat_not_rewritten")

#define FASTCT_ENUM_VAL(name, value, str) name = value,
#define FASTCT_ENUM_SEQ(name, ...) name,
enum fastct_ct_state_bit { FASTCT_CT_STATE_BITS(FASTCT_ENUM_VAL) };
enum fastct_status_bit { FASTCT_STATUS_BITS(FASTCT_ENUM_VAL) };
enum fastct_nat_action { FASTCT_NAT_ACTIONS(FASTCT_ENUM_VAL) };
enum fastct_nat_flag { FASTCT_NAT_FLAGS(FASTCT_ENUM_VAL) };
enum fastct_rs_hook { FASTCT_RS_HOOKS(FASTCT_ENUM_VAL) };
enum fastct_rs_key { FASTCT_RS_KEYS(FASTCT_ENUM_VAL) };
enum fastct_rs_verdict { FASTCT_RS_VERDICTS(FASTCT_ENUM_VAL) };
enum fastct_rs_stmt { FASTCT_RS_STMTS(FASTCT_ENUM_VAL) };
enum fastct_tcp_state { FASTCT_TCP_STATES(FASTCT_ENUM_SEQ) TCP_N_STATES };
enum fastct_sctp_state { FASTCT_SCTP_STATES(FASTCT_ENUM_SEQ) SCTP_N_STATES };
enum fastct_dccp_state { FASTCT_DCCP_STATES(FASTCT_ENUM_SEQ) DCCP_N_STATES };
enum fastct_timeout { FASTCT_TIMEOUTS(FASTCT_ENUM_SEQ) TO_N };
enum fastct_reason { FASTCT_REASONS(FASTCT_ENUM_SEQ) R_N };
enum fastct_stat { FASTCT_STATS(FASTCT_ENUM_SEQ) ST_N };

#define FASTCT_NAME_2(name, str) str,
#define FASTCT_NAME_3(name, value, str) str,
#define FASTCT_VALUE_3(name, value, str) value,
static const char *const fastct_ct_state_names[] = { FASTCT_CT_STATE_BITS(FASTCT_NAME_3) };
static const int fastct_ct_state_values[] = { FASTCT_CT_STATE_BITS(FASTCT_VALUE_3) };
static const char *const fastct_status_names[] = { FASTCT_STATUS_BITS(FASTCT_NAME_3) };
static const int fastct_status_values[] = { FASTCT_STATUS_BITS(FASTCT_VALUE_3) };
static const char *const fastct_tcp_state_names[] = { FASTCT_TCP_STATES(FASTCT_NAME_2) };
static const char *const fastct_nat_action_names[] = { FASTCT_NAT_ACTIONS(FASTCT_NAME_3) };
static const int fastct_nat_action_values[] = { FASTCT_NAT_ACTIONS(FASTCT_VALUE_3) };
static const char *const fastct_nat_flag_names[] = { FASTCT_NAT_FLAGS(FASTCT_NAME_3) };
static const int fastct_nat_flag_values[] = { FASTCT_NAT_FLAGS(FASTCT_VALUE_3) };
#define FASTCT_N_NAT_ACTIONS 6
#define FASTCT_N_NAT_FLAGS 3
static const char *const fastct_rs_hook_names[] = { FASTCT_RS_HOOKS(FASTCT_NAME_3) };
static const int fastct_rs_hook_values[] = { FASTCT_RS_HOOKS(FASTCT_VALUE_3) };
static const char *const fastct_rs_key_names[] = { FASTCT_RS_KEYS(FASTCT_NAME_3) };
static const int fastct_rs_key_values[] = { FASTCT_RS_KEYS(FASTCT_VALUE_3) };
static const char *const fastct_rs_verdict_names[] = { FASTCT_RS_VERDICTS(FASTCT_NAME_3) };
static const int fastct_rs_verdict_values[] = { FASTCT_RS_VERDICTS(FASTCT_VALUE_3) };
static const char *const fastct_rs_stmt_names[] = { FASTCT_RS_STMTS(FASTCT_NAME_3) };
static const int fastct_rs_stmt_values[] = { FASTCT_RS_STMTS(FASTCT_VALUE_3) };
static const char *const fastct_sctp_state_names[] = { FASTCT_SCTP_STATES(FASTCT_NAME_2) };
static const char *const fastct_dccp_state_names[] = { FASTCT_DCCP_STATES(FASTCT_NAME_2) };
#define FASTCT_TO_NAME(name, str, secs) str,
#define FASTCT_TO_SECS(name, str, secs) secs,
static const char *const fastct_timeout_names[] = { FASTCT_TIMEOUTS(FASTCT_TO_NAME) };
static const int64_t fastct_timeout_defaults[] = { FASTCT_TIMEOUTS(FASTCT_TO_SECS) };
#define FASTCT_NAME_REASON(name, str) str,
static const char *const fastct_reason_names[] = { FASTCT_REASONS(FASTCT_NAME_REASON) };
static const char *const fastct_stat_names[] = { FASTCT_STATS(FASTCT_NAME_2) };
#define FASTCT_N_CT_STATE_BITS 8
#define FASTCT_N_STATUS_BITS 16
#endif
