# cython: language_level=3
"""Verdicts of the protocol trackers, and `refresh`: the one place where timers and counters move."""
from libc.stdint cimport uint8_t, uint32_t, int64_t
from fastct._types cimport *

# Verdicts of *_packet.
cdef enum:
    V_ACCEPT = 0    # part of the connection (the tracker refreshed and counted it, or chose not to)
    V_INVALID = 1   # refused: ct_state inv, the entry is untouched (m.reason says why)
    V_REOPEN = 2    # TCP: a new SYN on a closed connection; the old entry is replaced by a new one

cdef inline void _carry(ct_table *t, ct_entry *e, uint8_t d, bint packets, bint bytes) noexcept nogil:
    # A low counter word wrapped: one more in its high word, in the cold record.  (Never for an
    # entry built outside the table: its first packet starts every counter from zero.)
    cdef size_t i = <size_t>(e - t.e)
    if e < t.e or i >= t.cap:
        return
    if packets:
        t.cold[i].packets_hi[d] += 1
    if bytes:
        t.cold[i].bytes_hi[d] += 1

cdef inline void refresh(ct_table *t, ct_entry *e, const pkt_meta *m, int64_t timeout) noexcept nogil:
    """Set the timer to now + timeout and account the packet (kernel nf_ct_refresh_acct)."""
    cdef uint8_t d = m.dir
    cdef uint32_t b = e.bytes_lo[d] + m.iplen
    e.expires = m.now + timeout
    e.packets_lo[d] += 1
    if FASTCT_UNLIKELY(e.packets_lo[d] == 0 or b < m.iplen):
        _carry(t, e, d, e.packets_lo[d] == 0, b < m.iplen)
    e.bytes_lo[d] = b
    e.last_seen = m.now
