# cython: language_level=3
"""SCTP as the kernel tracks it (nf_conntrack_proto_sctp.c).  PLACEHOLDER: generic behaviour until
the state machine lands."""
from libc.stdint cimport uint8_t
from fastct._types cimport *
from fastct._verdict cimport *

cdef inline uint8_t sctp_new(ct_table *t, ct_entry *e, ct_cold *c, const pkt_meta *m) noexcept nogil:
    return R_VALID

cdef inline int sctp_packet(ct_table *t, ct_entry *e, ct_cold *c, pkt_meta *m) noexcept nogil:
    refresh(t, e, m, t.timeouts[TO_GENERIC])
    return V_ACCEPT
