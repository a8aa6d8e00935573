"""Read pcap and pcapng files into Batches, through mmap, in bounded memory.

The per-record work is done by the scanners in _reader.pyx; this module reads the file and
interface headers (once per section or interface) and turns scanner stops into CaptureError with
the byte offset and what was wrong.  A reader opened writable=True yields CaptureBatches, which own
a copy of their records (to be rewritten in place) and say where each record lies, so that
fastct.capture.writer can write the capture back out.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from fastct.batch import Batch
from fastct.capture import _reader

PCAP_MAGICS = {
    0xA1B2C3D4: (False, False), 0xD4C3B2A1: (True, False),   # microsecond
    0xA1B23C4D: (False, True), 0x4D3CB2A1: (True, True),     # nanosecond
}
PCAPNG_SHB = 0x0A0D0D0A
MAX_CAPLEN = 262144          # libpcap's largest snapshot length for any link type


class CaptureError(Exception):
    """A capture file that cannot be read (further): `offset` is the byte where the damage starts."""

    def __init__(self, path, offset, message):
        self.path = path
        self.offset = offset
        self.message = message
        super().__init__(f"{path}: at byte offset {offset}: {message}")


@dataclass
class CaptureBatch(Batch):
    """A Batch from CaptureReader(writable=True).  `buf` is a private, writable copy of the file from
    the batch's first record to the end of its last (records whole, with any non-packet blocks
    between them); offsets, rec_start and rec_end index into it, and buf[0] is file byte
    `file_offset`."""
    file_offset: int
    rec_start: np.ndarray    # int64, where each packet's record (its header) starts in buf
    rec_end: np.ndarray      # int64, where it ends (after padding, options, trailer)


@dataclass
class Interface:
    linktype: int
    fcslen: int = 0
    name: str = ""
    snaplen: int = 0
    ts_mul: int = 1000       # ticks * ts_mul // ts_div = nanoseconds
    ts_div: int = 1
    ts_off: int = 0          # ns added (pcapng if_tsoffset)


class CaptureReader:
    """Iterate over a capture as Batches of up to `batch_size` packets.

    Packet bytes are views of the memory-mapped file: a Batch is valid while the reader is open.
    With writable=True each batch is a CaptureBatch instead, with its own copy of its records: one
    copy per batch, so that packets can be rewritten in place and written out (CaptureWriter).
    After iteration, `error` holds the CaptureError that stopped it early (None for a clean end);
    every packet before the damage has been yielded.
    """

    def __init__(self, path, batch_size: int = 4096, writable: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.path = os.fspath(path)
        self.batch_size = batch_size
        self.writable = writable
        # True once iteration has ended by itself (end of file, or damage), not when the caller
        # stopped early: then `position` is where reading stopped.
        self.finished = False
        self.interfaces: list[Interface] = []
        self.error: CaptureError | None = None
        self.format = ""
        self.packets = 0
        self._pending = None
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise CaptureError(self.path, 0, f"cannot open: {exc.strerror}") from None
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            self._file.close()
            raise CaptureError(self.path, 0, "empty file: not a pcap or pcapng capture")
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.data = np.frombuffer(self._mmap, dtype=np.uint8)
        self.size = size
        self._start()

    @property
    def position(self) -> int:
        """Bytes of the file read so far; every record and block before this offset is whole.  Once
        `finished`, the file size after a clean end, else where the unreadable record or block starts."""
        return self._pos

    # ---- headers ----------------------------------------------------------------------------
    def _fail(self, offset, message):
        raise CaptureError(self.path, offset, message)

    def _start(self):
        if self.size < 4:
            self._fail(0, f"file too short ({self.size} bytes) for a capture header")
        magic_le = struct.unpack_from("<I", self._mmap, 0)[0]
        if magic_le in PCAP_MAGICS:
            self.format = "pcap"
            self._pcap_header(magic_le)
        elif magic_le == PCAPNG_SHB:
            self.format = "pcapng"
            self._pos = 0
            self._if_base = 0
            self._if_count = 0
            self._swapped = False
        else:
            self._fail(0, f"not a pcap or pcapng file (magic 0x{magic_le:08x})")

    def _pcap_header(self, magic):
        swapped, nsec = PCAP_MAGICS[magic]
        if self.size < 24:
            self._fail(0, f"pcap file header truncated ({self.size} of 24 bytes)")
        e = ">" if swapped else "<"
        major, minor, _zone, _sigfigs, snaplen, ltfield = struct.unpack_from(e + "HHiIII", self._mmap, 4)
        if major != 2:
            self._fail(4, f"unsupported pcap version {major}.{minor} (only 2.x exists)")
        if ltfield & 0x03FF0000:
            self._fail(20, f"pcap link-type field 0x{ltfield:08x} has reserved bits (16-25) set")
        fcslen = 0
        if ltfield & 0x04000000:
            # The F bit says the upper 4 bits give the FCS length in 16-bit words.
            fcslen = ((ltfield >> 28) & 0xF) * 2
        self._swapped, self._nsec = swapped, nsec
        self._max_caplen = max(MAX_CAPLEN, min(snaplen, 1 << 24))
        self.interfaces.append(Interface(linktype=ltfield & 0xFFFF, fcslen=fcslen, snaplen=snaplen))
        self._pos = 24

    def _options(self, start, end, e, block_off):
        """pcapng options between start and end: list of (code, bytes)."""
        opts = []
        pos = start
        while pos + 4 <= end:
            code, length = struct.unpack_from(e + "HH", self._mmap, pos)
            if code == 0:
                break
            if pos + 4 + length > end:
                self._fail(pos, f"pcapng option {code} of length {length} runs past its block "
                                f"(block at {block_off})")
            opts.append((code, bytes(self._mmap[pos + 4:pos + 4 + length])))
            pos += 4 + ((length + 3) & ~3)
        return opts

    def _pcapng_block(self):
        """Read the section header or interface description block at self._pos."""
        pos = self._pos
        btype = struct.unpack_from("<I", self._mmap, pos)[0]
        if btype == PCAPNG_SHB:
            if pos + 28 > self.size:
                self._fail(pos, "pcapng section header block truncated")
            bom = struct.unpack_from("<I", self._mmap, pos + 8)[0]
            if bom == 0x1A2B3C4D:
                e = "<"
            elif bom == 0x4D3C2B1A:
                e = ">"
            else:
                self._fail(pos + 8, f"pcapng section header has a bad byte-order magic 0x{bom:08x}")
            blen = struct.unpack_from(e + "I", self._mmap, pos + 4)[0]
            major, minor = struct.unpack_from(e + "HH", self._mmap, pos + 12)
            if blen < 28 or blen % 4 or pos + blen > self.size:
                self._fail(pos, f"pcapng section header block length {blen} is invalid")
            if major != 1:
                self._fail(pos + 12, f"unsupported pcapng version {major}.{minor}")
            if struct.unpack_from(e + "I", self._mmap, pos + blen - 4)[0] != blen:
                self._fail(pos + blen - 4, "pcapng block trailer length differs from its header")
            self._options(pos + 24, pos + blen - 4, e, pos)
            self._swapped = e == ">"
            self._if_base = len(self.interfaces)
            self._if_count = 0
            self._pos = pos + blen
            return
        e = ">" if self._swapped else "<"
        if pos + 8 > self.size:
            self._fail(pos, "file ends inside a pcapng block header (file cut short)")
        blen = struct.unpack_from(e + "I", self._mmap, pos + 4)[0]
        if blen < 20 or blen % 4 or pos + blen > self.size:
            self._fail(pos, f"pcapng interface description block length {blen} is invalid")
        if struct.unpack_from(e + "I", self._mmap, pos + blen - 4)[0] != blen:
            self._fail(pos + blen - 4, "pcapng block trailer length differs from its header")
        linktype, _res, snaplen = struct.unpack_from(e + "HHI", self._mmap, pos + 8)
        iface = Interface(linktype=linktype, snaplen=snaplen, ts_mul=1000, ts_div=1)
        for code, val in self._options(pos + 16, pos + blen - 4, e, pos):
            if code == 2:
                iface.name = val.rstrip(b"\0").decode("utf-8", "replace")
            elif code == 9 and len(val) >= 1:
                r = val[0]
                if r & 0x80:
                    p = r & 0x7F
                    if p > 40:
                        self._fail(pos, f"pcapng if_tsresol 2^-{p} is not supported")
                    iface.ts_mul, iface.ts_div = 1_000_000_000, 1 << p
                elif r <= 9:
                    iface.ts_mul, iface.ts_div = 10 ** (9 - r), 1
                elif r <= 18:
                    iface.ts_mul, iface.ts_div = 1, 10 ** (r - 9)
                else:
                    self._fail(pos, f"pcapng if_tsresol 10^-{r} is not supported")
            elif code == 13 and len(val) >= 1:
                iface.fcslen = val[0]
            elif code == 14 and len(val) >= 8:
                off = struct.unpack(e + "q", val[:8])[0]
                if abs(off) > 1 << 32:
                    self._fail(pos, f"pcapng if_tsoffset {off} s is out of range")
                iface.ts_off = off * 1_000_000_000
        if iface.ts_mul == 1_000_000_000 and iface.ts_div > (1 << 30):
            self._fail(pos, "pcapng if_tsresol finer than 2^-30 s is not supported")
        self.interfaces.append(iface)
        self._if_count += 1
        self._pos = pos + blen

    # ---- records ----------------------------------------------------------------------------
    def _if_arrays(self):
        ifs = self.interfaces
        return (np.array([i.linktype for i in ifs], dtype=np.uint32),
                np.array([i.fcslen for i in ifs], dtype=np.uint32))

    def __iter__(self):
        yield from self._batches()
        self.finished = True

    def _batches(self):
        n = self.batch_size
        last_ts = 0
        errors = {
            _reader.SCAN_ERR_TRUNC_HDR: "file ends inside a record header (file cut short)",
            _reader.SCAN_ERR_TRUNC_DATA: "file ends inside a record's packet data (file cut short); "
                                         "record length {bad}",
            _reader.SCAN_ERR_CAPLEN: "record captured length {bad} is larger than the maximum {max}",
            _reader.SCAN_ERR_TSFRAC: "record timestamp fraction {bad} is out of range (must be below "
                                     "{lim})",
            _reader.SCAN_ERR_BLOCKLEN: "pcapng block length {bad} is invalid",
            _reader.SCAN_ERR_IFACE: "pcapng packet names interface {bad}, which its section does not "
                                    "describe",
        }
        while True:
            offsets = np.empty(n, dtype=np.int64)
            caplen = np.empty(n, dtype=np.uint32)
            wirelen = np.empty(n, dtype=np.uint32)
            ts = np.empty(n, dtype=np.int64)
            iface = np.zeros(n, dtype=np.uint16)
            # Where each record starts and ends, for CaptureWriter: only asked of the scanners when
            # the batches are to be copied, so plain reading stores nothing more.
            bounds = (np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)) if self.writable else ()
            try:
                if self.format == "pcap":
                    cnt, pos, status, bad = _reader.scan_pcap(
                        self.data, self._pos, self._swapped, self._nsec, self._max_caplen,
                        offsets, caplen, wirelen, ts, n, *bounds)
                else:
                    cnt, pos, status, bad = self._scan_pcapng(offsets, caplen, wirelen, ts, iface, n,
                                                              last_ts, bounds)
            except CaptureError as exc:
                self.error = exc
                return
            stop_at = pos
            self._pos = pos
            if cnt:
                last_ts = int(ts[cnt - 1])
                self.packets += cnt
                lt, fcs = self._if_arrays()
                columns = (offsets[:cnt], caplen[:cnt], wirelen[:cnt], ts[:cnt], iface[:cnt], lt, fcs)
                if bounds:
                    yield self._private_batch(columns, *(b[:cnt] for b in bounds))
                else:
                    yield Batch(self.data, *columns)
            if status == _reader.SCAN_FULL:
                continue
            if status == _reader.SCAN_EOF:
                return
            lim = 1_000_000_000 if getattr(self, "_nsec", False) else 1_000_000
            msg = errors[status].format(bad=bad, max=getattr(self, "_max_caplen", MAX_CAPLEN), lim=lim)
            self.error = CaptureError(self.path, stop_at, msg)
            return

    def _private_batch(self, columns, rec_start, rec_end):
        """A CaptureBatch owning a copy of the file from its first record to the end of its last
        (one contiguous copy), with every position rebased to that copy."""
        base = int(rec_start[0])
        buf = self.data[base:int(rec_end[-1])].copy()
        for positions in (columns[0], rec_start, rec_end):    # offsets; all fresh for this batch
            positions -= base
        return CaptureBatch(buf, *columns, file_offset=base, rec_start=rec_start, rec_end=rec_end)

    def _scan_pcapng(self, offsets, caplen, wirelen, ts, iface, n, last_ts, bounds):
        total = 0
        if self._pending is not None:
            raise self._pending
        while True:
            if self._pos + 4 <= self.size and \
                    struct.unpack_from(">I" if self._swapped else "<I", self._mmap, self._pos)[0] in (PCAPNG_SHB, 1):
                try:
                    self._pcapng_block()
                except CaptureError as exc:
                    if not total:
                        raise
                    self._pending = exc     # hand out the packets before it first
                    return total, self._pos, _reader.SCAN_FULL, 0
                continue
            ifs = self.interfaces
            mul = np.array([i.ts_mul for i in ifs] or [1], dtype=np.int64)
            div = np.array([i.ts_div for i in ifs] or [1], dtype=np.int64)
            off = np.array([i.ts_off for i in ifs] or [0], dtype=np.int64)
            snap = np.array([i.snaplen for i in ifs] or [0], dtype=np.uint32)
            cnt, pos, status, bad = _reader.scan_pcapng(
                self.data, self._pos, self._swapped, 1 << 24, mul, div, off, snap, self._if_base,
                self._if_count, offsets[total:], caplen[total:], wirelen[total:], ts[total:],
                iface[total:], n - total, int(ts[total - 1]) if total else last_ts,
                *(b[total:] for b in bounds))
            total += cnt
            self._pos = pos
            if status == _reader.SCAN_BLOCK:
                if total == n:
                    return total, pos, _reader.SCAN_FULL, 0
                continue
            return total, pos, status, bad

    def close(self):
        try:
            self.data = None
            self._mmap.close()
        except BufferError:
            pass    # a Batch still views the map; it closes when the last view goes
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
