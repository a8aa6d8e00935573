# cython: language_level=3
"""Verdicts of the protocol trackers, and `refresh`: the one place where timers and counters move."""
from libc.stdint cimport int64_t
from fastct._types cimport *

# Verdicts of *_packet.
cdef enum:
    V_ACCEPT = 0    # part of the connection (the tracker refreshed and counted it, or chose not to)
    V_INVALID = 1   # refused: ct_state inv, the entry is untouched (m.reason says why)
    V_REOPEN = 2    # TCP: a new SYN on a closed connection; the old entry is replaced by a new one

cdef inline void refresh(ct_table *t, ct_entry *e, const pkt_meta *m, int64_t timeout) noexcept nogil:
    """Set the timer to now + timeout and account the packet (kernel nf_ct_refresh_acct)."""
    e.expires = m.now + timeout
    e.packets[m.dir] += 1
    e.bytes[m.dir] += m.iplen
    e.last_seen = m.now

