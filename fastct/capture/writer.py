"""Write a capture back out as it was read: packets as rewritten in place, some records left out.

    with CaptureReader(src, writable=True) as reader, CaptureWriter(dst, reader) as writer:
        for batch in reader:
            ...                                  # rewrite packets in batch.buf, decide `keep`
            writer.write(batch, keep)

The output is the input file byte for byte, except that each packet record comes from its batch's
buffer (so in-place rewrites show) and records whose keep flag is False are left out.  Everything
else (the pcap file header; pcapng section, interface, name-resolution, statistics, decryption-secret,
custom and unknown blocks) is copied from the input in its place, so format, byte order, timestamp
precision and link types are the input's.  When the reader stopped at damage, the output ends where
the damage starts: whole records only.

The file on disk always ends at a record or block boundary: each batch goes out in one write, and
if that write is interrupted (Ctrl-C, a full disk) the file is cut back to the last whole record
before the exception goes on.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from fastct.capture.reader import CaptureBatch, CaptureReader


class _Progress(NamedTuple):
    written: int      # bytes on disk, all of them whole records or blocks
    copied: int       # input bytes dealt with: written out, or left out as dropped records
    packets: int      # packet records written


class CaptureWriter:
    """Write `reader`'s capture to `path` (created or truncated), batch by batch.

    `reader` must be a CaptureReader opened with writable=True that has not yielded a batch yet.
    Pass write() every batch it yields, in order; then close() (or leave the `with` block), which
    adds whatever the reader read after the last packet if it read to the end (or to damage).
    A batch never passed to write() is copied unchanged, as the input between written records is.
    """

    def __init__(self, path, reader: CaptureReader):
        if not reader.writable:
            raise ValueError("CaptureWriter needs a CaptureReader opened with writable=True")
        if reader.packets:
            raise ValueError("create the CaptureWriter before reading from its CaptureReader")
        self.path = os.fspath(path)
        if os.path.exists(self.path) and os.path.samefile(self.path, reader.path):
            # Truncating the file under the reader's map would crash it (SIGBUS).
            raise ValueError(f"{self.path}: is the capture being read; write to another file")
        self._reader = reader
        self._input = reader.data     # ours: the map stays open until we close, whoever closes first
        self._progress = _Progress(0, 0, 0)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            # What the reader has already checked (pcap: the file header): a valid empty capture.
            self._copy_input(reader.position)
        except BaseException:
            self._close_file()
            raise

    @property
    def written(self) -> int:
        """Bytes in the output file: whole records and blocks only."""
        return self._progress.written

    @property
    def packets(self) -> int:
        """Packet records written."""
        return self._progress.packets

    def write(self, batch: CaptureBatch, keep=None):
        """Append the input up to and including the batch's last record: the blocks before its first
        record as they are in the input, then its records from batch.buf, less those whose `keep`
        (one bool per packet; None keeps all) is False.  One write call."""
        if not isinstance(batch, CaptureBatch):
            raise TypeError("CaptureWriter.write() takes the batches of a CaptureReader(writable=True)")
        if self._fd < 0:
            raise ValueError("write to a closed CaptureWriter")
        keep = _keep_flags(keep, len(batch))
        first = batch.file_offset + int(batch.rec_start[0])
        if first < self._progress.copied:
            raise ValueError("each batch must be written once, in the order the reader yields them")
        before = self._input[self._progress.copied:first]
        self._append([before, *_kept_pieces(batch, keep)],
                     copied=batch.file_offset + int(batch.rec_end[-1]),
                     packets=int(np.count_nonzero(keep)))

    def close(self):
        """Add what the reader read after the last batch, if it read to the end of the file or to
        the damage that stopped it (not when the caller stopped early), and close the file."""
        if self._fd < 0:
            return
        try:
            if self._reader.finished:
                self._copy_input(self._reader.position)
        finally:
            self._close_file()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _copy_input(self, end: int):
        """Append the input from where it was dealt with up to `end` (a record or block boundary)."""
        if end > self._progress.copied:
            self._append([self._input[self._progress.copied:end]], copied=end, packets=0)

    def _append(self, pieces, copied: int, packets: int):
        """Write `pieces` (whole records and blocks, in order) at the end of the output in one write
        call (more only if the kernel takes part of it), then note the progress.  Anything raised
        in between (KeyboardInterrupt, OSError) first cuts the file back to its last whole record."""
        pieces = [p for p in pieces if len(p)]
        data = memoryview(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        start = self._progress.written
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], start + done)
            # One assignment, so that an interrupt sees either the old progress or the new one.
            self._progress = _Progress(start + done, copied, self._progress.packets + packets)
        except BaseException:
            os.ftruncate(self._fd, self._progress.written)
            raise

    def _close_file(self):
        os.close(self._fd)
        self._fd = -1
        self._input = None
        self._reader = None


def _keep_flags(keep, n: int) -> np.ndarray:
    """`keep` as n bools (all True for None)."""
    if keep is None:
        return np.ones(n, dtype=bool)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (n,):
        raise ValueError(f"keep must have one flag per packet of the batch ({n}), not shape {keep.shape}")
    return keep


def _kept_pieces(batch: CaptureBatch, keep: np.ndarray) -> list:
    """The batch's buffer from its first record to the end of its last, less the records not kept:
    views of batch.buf, one per stretch between dropped records (one in all when none is)."""
    dropped = ~keep
    starts = np.concatenate(([batch.rec_start[0]], batch.rec_end[dropped]))
    ends = np.concatenate((batch.rec_start[dropped], [batch.rec_end[-1]]))
    return [batch.buf[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
