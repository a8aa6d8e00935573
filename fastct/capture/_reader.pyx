# cython: language_level=3
"""Record scanners for classic pcap and pcapng, over a memory-mapped file.

They fill a batch's offsets / lengths / timestamps / interface arrays for up to `maxn` packets
with no Python per packet; the packet bytes stay where they are in the map (zero copy).  A scanner
stops at the first damaged record and says where and why; blocks that describe the capture rather
than carry packets (pcapng section and interface headers) are handed back to Python, which parses
them (they are rare) and resumes the scan.

Given `rec_start` and `rec_end` arrays, a scanner also notes where each packet's whole record
(header, data, padding, options, trailer) starts and ends: a capture writer copies records by these.
Only a reader that will be written out asks for them, so plain reading does no extra stores.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from "compat.h" nogil:
    uint16_t fastct_be16(const uint8_t *)
    uint32_t fastct_be32(const uint8_t *)
    uint16_t fastct_le16(const uint8_t *)
    uint32_t fastct_le32(const uint8_t *)

# Why a scan stopped.
cdef enum:
    S_FULL = 0            # the batch arrays are full
    S_EOF = 1             # clean end of file
    S_BLOCK = 2           # pcapng: a section or interface block for Python to read (at `pos`)
    S_TRUNC_HDR = 3       # the file ends inside a record header
    S_TRUNC_DATA = 4      # the file ends inside a record's data
    S_CAPLEN = 5          # a record's captured length is larger than allowed
    S_TSFRAC = 6          # pcap: the fractional part of a timestamp is out of range
    S_BLOCKLEN = 7        # pcapng: block length invalid (not a multiple of 4, too small, trailer differs)
    S_IFACE = 8           # pcapng: packet names an interface not described in its section

SCAN_FULL = S_FULL
SCAN_EOF = S_EOF
SCAN_BLOCK = S_BLOCK
SCAN_ERR_TRUNC_HDR = S_TRUNC_HDR
SCAN_ERR_TRUNC_DATA = S_TRUNC_DATA
SCAN_ERR_CAPLEN = S_CAPLEN
SCAN_ERR_TSFRAC = S_TSFRAC
SCAN_ERR_BLOCKLEN = S_BLOCKLEN
SCAN_ERR_IFACE = S_IFACE

cdef inline uint32_t rd32(const uint8_t *p, bint swapped) noexcept nogil:
    # Files are little- or big-endian; this host is little-endian (x86-64, aarch64).
    return fastct_be32(p) if swapped else fastct_le32(p)

cdef inline uint16_t rd16(const uint8_t *p, bint swapped) noexcept nogil:
    return fastct_be16(p) if swapped else fastct_le16(p)


def scan_pcap(const uint8_t[::1] data, Py_ssize_t pos, bint swapped, bint nsec, uint32_t max_caplen,
              int64_t[::1] offsets, uint32_t[::1] caplen, uint32_t[::1] wirelen, int64_t[::1] ts,
              Py_ssize_t maxn, int64_t[::1] rec_start=None, int64_t[::1] rec_end=None):
    """Classic pcap records from `pos`.  Returns (count, new_pos, status, bad_value)."""
    cdef Py_ssize_t size = data.shape[0]
    cdef Py_ssize_t n = 0
    cdef const uint8_t *b = &data[0]
    cdef uint32_t sec, frac, cl, wl
    cdef int status = S_FULL
    cdef int64_t bad = 0
    cdef uint32_t frac_limit = 1000000000 if nsec else 1000000
    cdef int64_t mult = 1 if nsec else 1000
    cdef bint bounds = rec_start is not None and rec_end is not None
    if maxn > offsets.shape[0]:
        maxn = offsets.shape[0]
    if bounds and maxn > min(rec_start.shape[0], rec_end.shape[0]):
        maxn = min(rec_start.shape[0], rec_end.shape[0])
    with nogil:
        while n < maxn:
            if pos == size:
                status = S_EOF
                break
            if pos + 16 > size:
                status = S_TRUNC_HDR
                break
            sec = rd32(b + pos, swapped)
            frac = rd32(b + pos + 4, swapped)
            cl = rd32(b + pos + 8, swapped)
            wl = rd32(b + pos + 12, swapped)
            if frac >= frac_limit:
                status = S_TSFRAC
                bad = frac
                break
            if cl > max_caplen:
                status = S_CAPLEN
                bad = cl
                break
            if pos + 16 + cl > size:
                status = S_TRUNC_DATA
                bad = cl
                break
            offsets[n] = pos + 16
            caplen[n] = cl
            wirelen[n] = wl
            ts[n] = <int64_t>sec * 1000000000 + <int64_t>frac * mult
            if bounds:
                rec_start[n] = pos
                rec_end[n] = pos + 16 + cl
            n += 1
            pos += 16 + cl
    return n, pos, status, bad


def scan_pcapng(const uint8_t[::1] data, Py_ssize_t pos, bint swapped, uint32_t max_caplen,
                const int64_t[::1] if_ts_mul, const int64_t[::1] if_ts_div, const int64_t[::1] if_ts_off,
                const uint32_t[::1] if_snaplen, Py_ssize_t if_base, Py_ssize_t if_count,
                int64_t[::1] offsets, uint32_t[::1] caplen, uint32_t[::1] wirelen, int64_t[::1] ts,
                uint16_t[::1] iface, Py_ssize_t maxn, int64_t last_ts, int64_t[::1] rec_start=None,
                int64_t[::1] rec_end=None):
    """pcapng blocks from `pos` within one section whose interfaces are global ids
    if_base .. if_base + if_count - 1.  Timestamps: ticks * mul // div + offset (ns).
    Returns (count, new_pos, status, bad_value)."""
    cdef Py_ssize_t size = data.shape[0]
    cdef Py_ssize_t n = 0
    cdef const uint8_t *b = &data[0]
    cdef uint32_t btype, blen, cl, wl, lid
    cdef uint64_t ticks
    cdef Py_ssize_t g
    cdef int status = S_FULL
    cdef int64_t bad = 0
    cdef bint bounds = rec_start is not None and rec_end is not None
    if maxn > offsets.shape[0]:
        maxn = offsets.shape[0]
    if bounds and maxn > min(rec_start.shape[0], rec_end.shape[0]):
        maxn = min(rec_start.shape[0], rec_end.shape[0])
    with nogil:
        while n < maxn:
            if pos == size:
                status = S_EOF
                break
            if pos + 12 > size:
                status = S_TRUNC_HDR
                break
            btype = rd32(b + pos, swapped)
            if btype == 0x0A0D0D0A or btype == 1:
                status = S_BLOCK
                break
            blen = rd32(b + pos + 4, swapped)
            if blen < 12 or (blen & 3):
                status = S_BLOCKLEN
                bad = blen
                break
            if pos + blen > size:
                status = S_TRUNC_DATA
                bad = blen
                break
            if rd32(b + pos + blen - 4, swapped) != blen:
                status = S_BLOCKLEN
                bad = blen
                break
            if btype == 6 or btype == 2:
                # Enhanced (6) and obsolete (2) packet blocks: interface, timestamp, lengths, data.
                if blen < 32:
                    status = S_BLOCKLEN
                    bad = blen
                    break
                lid = rd32(b + pos + 8, swapped) if btype == 6 else rd16(b + pos + 8, swapped)
                ticks = (<uint64_t>rd32(b + pos + 12, swapped) << 32) | rd32(b + pos + 16, swapped)
                cl = rd32(b + pos + 20, swapped)
                wl = rd32(b + pos + 24, swapped)
                if lid >= if_count:
                    status = S_IFACE
                    bad = lid
                    break
                if cl > max_caplen:
                    status = S_CAPLEN
                    bad = cl
                    break
                if 28 + <uint64_t>cl + 4 > blen:
                    status = S_BLOCKLEN
                    bad = blen
                    break
                g = if_base + lid
                offsets[n] = pos + 28
                caplen[n] = cl
                wirelen[n] = wl
                ts[n] = <int64_t>(ticks // <uint64_t>if_ts_div[g]) * if_ts_mul[g] + \
                    <int64_t>((ticks % <uint64_t>if_ts_div[g]) * <uint64_t>if_ts_mul[g] // <uint64_t>if_ts_div[g]) + \
                    if_ts_off[g]
                iface[n] = <uint16_t>g
                if bounds:
                    rec_start[n] = pos
                    rec_end[n] = pos + blen
                n += 1
            elif btype == 3:
                # Simple packet block: interface 0, no timestamp (it gets the previous packet's time).
                if blen < 16:
                    status = S_BLOCKLEN
                    bad = blen
                    break
                if if_count < 1:
                    status = S_IFACE
                    bad = 0
                    break
                wl = rd32(b + pos + 8, swapped)
                cl = blen - 16
                if cl > wl:
                    cl = wl
                if if_snaplen[if_base] and cl > if_snaplen[if_base]:
                    cl = if_snaplen[if_base]
                if cl > max_caplen:
                    status = S_CAPLEN
                    bad = cl
                    break
                offsets[n] = pos + 12
                caplen[n] = cl
                wirelen[n] = wl
                ts[n] = ts[n - 1] if n > 0 else last_ts
                iface[n] = <uint16_t>if_base
                if bounds:
                    rec_start[n] = pos
                    rec_end[n] = pos + blen
                n += 1
            pos += blen
    return n, pos, status, bad
