"""A packet vector: one buffer plus per-packet offsets, lengths, timestamps and interface ids.

This is what the engine consumes.  Captures are read into batches without copying the packet bytes
(fastct.capture); a datapath builds them from its own buffers; tests build them from bytes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LINKTYPE_ETHERNET = 1


@dataclass
class Batch:
    buf: np.ndarray          # uint8, the packet bytes (may be read-only)
    offsets: np.ndarray      # int64, where each packet starts in buf
    caplen: np.ndarray       # uint32, bytes captured
    wirelen: np.ndarray      # uint32, bytes on the wire
    ts: np.ndarray           # int64, nanoseconds since the epoch
    iface: np.ndarray        # uint16, index into if_linktype / if_fcslen
    if_linktype: np.ndarray  # uint32 per interface: LINKTYPE_* value
    if_fcslen: np.ndarray    # uint32 per interface: FCS bytes at the end of each frame

    def __post_init__(self):
        # Checked and converted once here, so the per-batch call into the engine does no work on them.
        for name, dtype in _FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, np.ndarray) and value.dtype == dtype and value.ndim == 1
                    and value.flags.c_contiguous):
                value = np.ascontiguousarray(value, dtype=dtype).reshape(-1)
                object.__setattr__(self, name, value)
        n = len(self.offsets)
        for name in ("caplen", "wirelen", "ts", "iface"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Batch.{name} has {len(getattr(self, name))} items, offsets has {n}")
        if len(self.if_fcslen) != len(self.if_linktype):
            raise ValueError("Batch.if_fcslen and if_linktype must have one item per interface")

    def __len__(self) -> int:
        return len(self.offsets)

    @classmethod
    def from_frames(cls, frames, ts=None, linktype: int = LINKTYPE_ETHERNET, wirelen=None,
                    iface=None, if_linktypes=None) -> "Batch":
        """Build a batch from a list of bytes objects.  `ts` in seconds (floats) or None (0, 1, 2 s...).
        Several link types: pass `if_linktypes` (one per interface) and `iface` (one per frame)."""
        frames = [bytes(f) for f in frames]
        n = len(frames)
        lens = np.fromiter((len(f) for f in frames), dtype=np.uint32, count=n)
        offsets = np.zeros(n, dtype=np.int64)
        if n:
            offsets[1:] = np.cumsum(lens[:-1], dtype=np.int64)
        # (writable: NAT rewrites packets in place)
        buf = np.frombuffer(bytearray(b"".join(frames)), dtype=np.uint8) if n else np.zeros(1, dtype=np.uint8)
        if ts is None:
            ts_ns = np.arange(n, dtype=np.int64) * 1_000_000_000
        else:
            ts_ns = np.round(np.asarray(ts, dtype=np.float64) * 1e9).astype(np.int64)
            if ts_ns.shape != (n,):
                raise ValueError("ts must have one timestamp per frame")
        wl = lens.copy() if wirelen is None else np.asarray(wirelen, dtype=np.uint32)
        if if_linktypes is None:
            if_linktypes = [linktype]
        ifc = np.zeros(n, dtype=np.uint16) if iface is None else np.asarray(iface, dtype=np.uint16)
        lt = np.asarray(if_linktypes, dtype=np.uint32)
        return cls(buf, offsets, lens, wl, ts_ns, ifc, lt, np.zeros(len(lt), dtype=np.uint32))

    def slice(self, start: int, stop: int) -> "Batch":
        """Packets start..stop-1 (views, no copy, no re-validation)."""
        b = object.__new__(Batch)
        b.__dict__.update(buf=self.buf, offsets=self.offsets[start:stop], caplen=self.caplen[start:stop],
                          wirelen=self.wirelen[start:stop], ts=self.ts[start:stop],
                          iface=self.iface[start:stop], if_linktype=self.if_linktype,
                          if_fcslen=self.if_fcslen)
        return b


_FIELDS = (("buf", np.uint8), ("offsets", np.int64), ("caplen", np.uint32), ("wirelen", np.uint32),
           ("ts", np.int64), ("iface", np.uint16), ("if_linktype", np.uint32), ("if_fcslen", np.uint32))
