"""CaptureWriter: a capture read with CaptureReader(writable=True), written back out.

Every input is a list of pieces (file header, records, blocks) built by hand with the struct writers
of test_capture.py around frames made with dpkt, or written by dpkt's own pcap and pcapng writers and
cut into pieces here; what the output must be (the same file, the file less some records, a prefix
of whole records, a byte flipped where it was flipped) is put together from those pieces, never
taken from the writer.  Re-reading an output (with dpkt and with CaptureReader) must give the packets
kept, with their timestamps.  The real captures of ../shared/pcaps must come out as they went in.
"""
from __future__ import annotations

import errno
import io
import os
import struct

import dpkt
import numpy as np
import pytest

from conftest import SHARED, shared_dir
from fastct.batch import Batch
from fastct.capture.reader import CaptureBatch, CaptureError, CaptureReader
from fastct.capture.writer import CaptureWriter
from test_capture import (CONV, CONV_TS, LINKTYPE_ETHERNET, LINKTYPE_RAW, NS, T, custom, epb, idb, isb,
                          multi_section_blocks, ng_block, nrb, pcap_header, pcap_record, shb)

# ---------------------------------------------------------------------------------------------
# inputs: lists of (bytes, where the packet data starts in them, or None for a non-packet piece)

PCAP_REC, EPB_HDR, SPB_HDR = 16, 28, 12
PACKET_TYPES = {struct.pack(e + "I", t): t for e in "<>" for t in (2, 3, 6)}   # OPB, SPB, EPB


def ng_pieces(blocks):
    """pcapng blocks as pieces: packet blocks (either byte order) have their data after the header."""
    return [(b, None if b[:4] not in PACKET_TYPES else SPB_HDR if PACKET_TYPES[b[:4]] == 3 else EPB_HDR)
            for b in blocks]


def pcap_pieces(e, nsec):
    # nanosecond files get sub-microsecond times, so that a lost digit would show
    pkts = [(ts + (7 * i if nsec else 0), f) for i, (ts, f) in enumerate(CONV)]
    return [(pcap_header(e, nsec), None)] + [(pcap_record(ts, f, e, nsec), PCAP_REC) for ts, f in pkts]


def blocks_between_and_after():
    """One little-endian section, two Ethernet interfaces (microseconds), an NRB, ISB, unknown
    custom block and decryption secrets block between packets, statistics and custom blocks after
    the last packet (they must come out too)."""
    e = "<"
    us = [ts // 1000 for ts in CONV_TS]
    ethf = [f for _, f in CONV]
    blocks = [shb(e), idb(e, LINKTYPE_ETHERNET, name="eth0"), idb(e, LINKTYPE_ETHERNET, name="eth1")]
    for i in range(len(CONV)):
        blocks.append(epb(e, i % 2, us[i], ethf[i]))
        if i == 2:
            blocks += [nrb(e), isb(e, 0, us[i])]
        if i == 5:
            blocks += custom(e)
    return blocks + [isb(e, 1, us[-1]), custom(e)[0]]


def dpkt_pcap(nsec):
    out = io.BytesIO()
    w = dpkt.pcap.Writer(out, nano=nsec)
    for ts, f in CONV:
        w.writepkt(f, ts / NS)
    data = out.getvalue()
    pieces, pos = [(data[:24], None)], 24
    while pos < len(data):
        end = pos + PCAP_REC + struct.unpack_from("<I", data, pos + 8)[0]
        pieces.append((data[pos:end], PCAP_REC))
        pos = end
    return pieces


def dpkt_pcapng():
    out = io.BytesIO()
    w = dpkt.pcapng.Writer(out)
    for ts, f in CONV:
        w.writepkt(f, ts / NS)
    data = out.getvalue()
    blocks, pos = [], 0
    while pos < len(data):
        end = pos + struct.unpack_from("<I", data, pos + 4)[0]
        blocks.append(data[pos:end])
        pos = end
    return ng_pieces(blocks)


# name -> (pieces, how dpkt reads it: "pcap", "pcapng" or None when dpkt cannot)
INPUTS = {
    "pcap-le-us": (pcap_pieces("<", False), "pcap"),
    "pcap-be-us": (pcap_pieces(">", False), "pcap"),
    "pcap-le-ns": (pcap_pieces("<", True), "pcap"),
    "pcap-be-ns": (pcap_pieces(">", True), "pcap"),
    # two sections (LE then BE), six interfaces, EPB, SPB and the obsolete packet block, NRB, ISB,
    # custom and decryption secrets blocks between packets
    "pcapng-two-sections": (ng_pieces(multi_section_blocks()[0]), None),
    "pcapng-blocks-between-and-after": (ng_pieces(blocks_between_and_after()), "pcapng"),
    "dpkt-pcap-us": (dpkt_pcap(False), "pcap"),
    "dpkt-pcap-ns": (dpkt_pcap(True), "pcap"),
    "dpkt-pcapng": (dpkt_pcapng(), "pcapng"),
}
EMPTY_INPUTS = {
    "pcap-no-packets": [(pcap_header(">", True), None)],
    "pcapng-no-packets": ng_pieces([shb(), idb("<", LINKTYPE_RAW), isb("<", 0, 5)]),
}


def joined(pieces, drop=()):
    """The file made of `pieces`, less the packet records whose index (among packets) is in `drop`."""
    out, k = [], 0
    for data, at in pieces:
        if at is not None:
            k += 1
            if k - 1 in drop:
                continue
        out.append(data)
    return b"".join(out)


def packet_starts(pieces):
    """Where each packet's data starts in the joined file."""
    starts, pos = [], 0
    for data, at in pieces:
        if at is not None:
            starts.append(pos + at)
        pos += len(data)
    return starts


def count_packets(pieces):
    return sum(at is not None for _, at in pieces)


def through_packet(pieces, n):
    """The pieces up to and including the n-th packet record (the non-packet ones before it too);
    for n = 0, those before the first packet."""
    k = 0
    for i, (_, at) in enumerate(pieces):
        if at is not None:
            if k == n:
                return pieces[:i]
            k += 1
    return pieces


# ---------------------------------------------------------------------------------------------
# running reader and writer


def copy_capture(src, dst, batch_size=4096, keep=None, patch=None):
    """Read src (writable) and write dst; keep(first_index, n) -> bools, patch(batch, first_index)
    rewrites the batch in place.  Returns the reader (closed) and the writer (closed)."""
    with CaptureReader(src, batch_size=batch_size, writable=True) as reader, \
            CaptureWriter(dst, reader) as writer:
        first = 0
        for batch in reader:
            if patch:
                patch(batch, first)
            writer.write(batch, None if keep is None else keep(first, len(batch)))
            first += len(batch)
    return reader, writer


def read_packets(path):
    """(ts, iface, frame) of every packet CaptureReader gives, and its error (None when clean)."""
    with CaptureReader(path) as r:
        pkts = [(int(t), int(i), bytes(b.buf[o:o + c]))
                for b in r for t, i, o, c in zip(b.ts, b.iface, b.offsets, b.caplen)]
        return pkts, r.error


def dpkt_packets(path, kind):
    """(ts in ns, frame) as dpkt reads them."""
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f) if kind == "pcap" else dpkt.pcapng.Reader(f)
        return [(round(ts * NS), bytes(buf)) for ts, buf in reader]


def put(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------------------------------------
# the reader's writable batches


def test_writable_batches_own_their_records(tmp_path):
    pieces, _ = INPUTS["pcapng-two-sections"]
    src = put(tmp_path, "in.pcapng", joined(pieces))
    # where each packet block starts and ends, from the pieces
    bounds, pos = [], 0
    for data, at in pieces:
        if at is not None:
            bounds.append((pos, pos + len(data)))
        pos += len(data)
    with CaptureReader(src, batch_size=4) as plain, CaptureReader(src, batch_size=4, writable=True) as wr:
        plain_batches, copies = list(plain), list(wr)
        assert [type(b) for b in plain_batches] == [Batch] * 3       # the default: unchanged, no copy
        assert all(b.buf is plain.data for b in plain_batches)
        assert [type(b) for b in copies] == [CaptureBatch] * 3
        got_bounds = []
        for p, c in zip(plain_batches, copies):
            assert c.buf.flags.writeable and not np.shares_memory(c.buf, wr.data)
            for name in ("caplen", "wirelen", "ts", "iface", "if_linktype", "if_fcslen"):
                assert np.array_equal(getattr(p, name), getattr(c, name)), name
            assert np.array_equal(c.offsets + c.file_offset, p.offsets)
            # one contiguous copy, from the batch's first record to the end of its last
            assert c.rec_start[0] == 0 and c.rec_end[-1] == len(c.buf)
            assert bytes(c.buf) == src.read_bytes()[c.file_offset:c.file_offset + len(c.buf)]
            got_bounds += zip((c.rec_start + c.file_offset).tolist(), (c.rec_end + c.file_offset).tolist())
            c.buf[c.offsets] ^= 0xFF                                   # the file does not change
        assert got_bounds == bounds
        assert src.read_bytes() == joined(pieces) and bytes(wr.data) == joined(pieces)
        assert wr.finished and wr.position == len(joined(pieces))


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("batch_size", [1, 2, 4096])
@pytest.mark.parametrize("name", list(INPUTS) + list(EMPTY_INPUTS))
def test_unchanged_round_trip_is_identical(tmp_path, name, batch_size):
    pieces = INPUTS[name][0] if name in INPUTS else EMPTY_INPUTS[name]
    data = joined(pieces)
    _, writer = copy_capture(put(tmp_path, "in", data), tmp_path / "out", batch_size)
    assert (tmp_path / "out").read_bytes() == data
    assert writer.written == len(data) and writer.packets == count_packets(pieces)


@pytest.mark.parametrize("name", list(INPUTS))
def test_patched_bytes_land_in_their_packets(tmp_path, name):
    """Packet i gets byte (3 i) % 16 of its data flipped in the batch buffer: the output is the
    input with exactly those bytes flipped."""
    pieces = INPUTS[name][0]
    expected = bytearray(joined(pieces))
    for i, start in enumerate(packet_starts(pieces)):
        expected[start + (3 * i) % 16] ^= 0xFF

    def patch(batch, first):
        for k, off in enumerate(batch.offsets.tolist()):
            batch.buf[off + (3 * (first + k)) % 16] ^= 0xFF

    copy_capture(put(tmp_path, "in", joined(pieces)), tmp_path / "out", batch_size=4, patch=patch)
    assert (tmp_path / "out").read_bytes() == bytes(expected)


DROPS = {
    "none": set(), "first": {0}, "last": {8}, "odd": {1, 3, 5, 7}, "even": {0, 2, 4, 6, 8},
    "a run across batches": {2, 3, 4, 5}, "all": set(range(9)),
}


@pytest.mark.parametrize("batch_size", [1, 4096])
@pytest.mark.parametrize("drop", list(DROPS))
@pytest.mark.parametrize("name", list(INPUTS))
def test_dropped_records_are_gone(tmp_path, name, drop, batch_size):
    pieces, dpkt_kind = INPUTS[name]
    drop = DROPS[drop]
    src = put(tmp_path, "in", joined(pieces))
    _, writer = copy_capture(src, tmp_path / "out", batch_size,
                             keep=lambda first, n: [first + k not in drop for k in range(n)])
    out = tmp_path / "out"
    assert out.read_bytes() == joined(pieces, drop)
    assert writer.packets == 9 - len(drop) and writer.written == out.stat().st_size
    before, _ = read_packets(src)
    after, error = read_packets(out)
    assert error is None
    kept = [p for i, p in enumerate(before) if i not in drop]
    assert [(i, f) for _, i, f in after] == [(i, f) for _, i, f in kept]
    # A simple packet block has no time of its own: re-read, it takes that of the packet now before
    # it (0 at the start of the file).  Every other packet keeps its own.
    is_spb = [at == SPB_HDR for _, at in pieces if at is not None]
    expect_ts, last = [], 0
    for i, (ts, _, _) in enumerate(before):
        if i not in drop:
            last = last if is_spb[i] else ts
            expect_ts.append(last)
    assert [ts for ts, _, _ in after] == expect_ts
    if dpkt_kind:
        assert dpkt_packets(out, dpkt_kind) == [p for i, p in enumerate(dpkt_packets(src, dpkt_kind))
                                                if i not in drop]


def test_write_checks_its_arguments(tmp_path):
    src = put(tmp_path, "in.pcap", joined(INPUTS["pcap-le-us"][0]))
    with CaptureReader(src, batch_size=4, writable=True) as reader, \
            CaptureWriter(tmp_path / "o", reader) as w:
        batch = next(iter(reader))
        with pytest.raises(ValueError, match="one flag per packet"):
            w.write(batch, [True] * 3)
        w.write(batch, np.array([1, 0, 1, 0]))
        with pytest.raises(ValueError, match="once, in the order"):
            w.write(batch)
        with pytest.raises(TypeError):
            w.write(batch.slice(0, 2))
    with pytest.raises(ValueError, match="closed"):
        w.write(batch)
    assert (tmp_path / "o").read_bytes() == joined(INPUTS["pcap-le-us"][0][:5], drop={1, 3})


def test_writer_needs_a_fresh_writable_reader_and_another_file(tmp_path):
    data = joined(INPUTS["pcap-le-us"][0])
    src = put(tmp_path, "in.pcap", data)
    with CaptureReader(src) as reader, pytest.raises(ValueError, match="writable=True"):
        CaptureWriter(tmp_path / "o", reader)
    with CaptureReader(src, writable=True) as reader:
        with pytest.raises(ValueError, match="is the capture being read"):
            CaptureWriter(tmp_path / "." / "in.pcap", reader)
        next(iter(reader))
        with pytest.raises(ValueError, match="before reading"):
            CaptureWriter(tmp_path / "o", reader)
    assert src.read_bytes() == data


# ---------------------------------------------------------------------------------------------
# stopping early: damage, truncation, the caller


def boundaries(pieces):
    """Offsets where a piece ends (0 included): the places a file of whole records may end."""
    ends = [0]
    for data, _ in pieces:
        ends.append(ends[-1] + len(data))
    return ends


def cuts(ends, size):
    """Where to cut a file whose pieces end at `ends`: on each boundary, around it, in the record
    and block header fields after it, and halfway to the next one."""
    near = {e + d for e in ends for d in (-1, 0, 1, 4, 6, 8, 12, 16, 20, 27)}
    halfway = {(a + b) // 2 for a, b in zip(ends, ends[1:])}
    return sorted(c for c in near | halfway if 0 <= c < size)


@pytest.mark.parametrize("name", ["pcap-be-ns", "pcapng-two-sections", "pcapng-blocks-between-and-after"])
def test_truncated_input_gives_whole_records(tmp_path, name):
    pieces = INPUTS[name][0]
    data = joined(pieces)
    ends = boundaries(pieces)
    header = 24 if name.startswith("pcap-") else 4          # shorter: not a capture at all
    for cut in cuts(ends, len(data)):
        src, dst = put(tmp_path, f"cut{cut}", data[:cut]), tmp_path / f"out{cut}"
        if cut < header:
            with pytest.raises(CaptureError):
                CaptureReader(src, writable=True)
            continue
        reader, _ = copy_capture(src, dst, batch_size=2)
        whole = max(e for e in ends if e <= cut)
        out = dst.read_bytes()
        assert out == data[:whole], cut
        assert (reader.error is None) == (whole == cut), cut
        if out:
            pkts, error = read_packets(dst)
            assert error is None and len(pkts) == reader.packets, cut


def damaged_files():
    """(name, good pieces, damaged tail, how much of the tail is whole)."""
    f = CONV[3][1]
    t = T * NS + NS
    pcap = INPUTS["pcap-le-us"][0][:4]
    ng = ng_pieces([shb(), idb("<", LINKTYPE_ETHERNET)] +
                   [epb("<", 0, ts // 1000, frame) for ts, frame in CONV[:3]])
    return [
        ("pcap caplen over the maximum", pcap, pcap_record(t, b"\0" * 262145), 0),
        ("pcap microsecond fraction 10^6", pcap, pcap_record(t, f, frac=1_000_000), 0),
        ("pcapng EPB names an interface not described", ng, epb("<", 1, 5, f), 0),
        ("pcapng trailer differs", ng, epb("<", 0, 5, f)[:-4] + struct.pack("<I", 4), 0),
        ("pcapng block length not a multiple of 4", ng, struct.pack("<II", 6, 34) + b"\0" * 26, 0),
        ("pcapng IDB option past its block", ng, nrb("<") + ng_block(
            "<", 1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HH", 2, 64) + b"eth9") + epb("<", 0, 5, f),
         len(nrb("<"))),
        ("pcapng next section has a bad version", ng, shb(major=3) + idb("<", 1), 0),
        ("pcapng next section's IDB cut short", ng, shb(">") + idb(">", 1)[:6], len(shb(">"))),
    ]


@pytest.mark.parametrize("batch_size", [2, 4096])
@pytest.mark.parametrize("name,good,tail,whole", damaged_files(), ids=[d[0] for d in damaged_files()])
def test_damaged_input_gives_whole_records_before_the_damage(tmp_path, name, good, tail, whole, batch_size):
    head = joined(good)
    reader, writer = copy_capture(put(tmp_path, "in", head + tail), tmp_path / "out", batch_size)
    assert isinstance(reader.error, CaptureError)
    assert (tmp_path / "out").read_bytes() == head + tail[:whole]
    assert writer.packets == count_packets(good)
    pkts, error = read_packets(tmp_path / "out")
    assert error is None and len(pkts) == count_packets(good)


def test_caller_stopping_early_gets_the_records_written(tmp_path):
    """Closed before the reader reached the end: what was written, nothing more (not the blocks
    after the last batch: the reader has not said the rest is whole)."""
    pieces = INPUTS["pcapng-blocks-between-and-after"][0]
    src = put(tmp_path, "in", joined(pieces))
    with CaptureReader(src, batch_size=4, writable=True) as reader, \
            CaptureWriter(tmp_path / "o", reader) as w:
        w.write(next(iter(reader)))
    assert (tmp_path / "o").read_bytes() == joined(through_packet(pieces, 4))
    # a pcap file's header is written at once: nothing read, an empty capture
    src = put(tmp_path, "in.pcap", joined(INPUTS["pcap-be-ns"][0]))
    with CaptureReader(src, writable=True) as reader, CaptureWriter(tmp_path / "o", reader):
        pass
    assert (tmp_path / "o").read_bytes() == INPUTS["pcap-be-ns"][0][0][0]


def test_reader_closed_before_writer(tmp_path):
    pieces = INPUTS["pcapng-blocks-between-and-after"][0]
    src = put(tmp_path, "in", joined(pieces))
    reader = CaptureReader(src, writable=True)
    writer = CaptureWriter(tmp_path / "o", reader)
    for batch in reader:
        writer.write(batch)
    reader.close()
    writer.close()
    writer.close()
    assert (tmp_path / "o").read_bytes() == joined(pieces)


# ---------------------------------------------------------------------------------------------
# interrupted writes


def pwrite_failing_on(monkeypatch, call, exc):
    """os.pwrite, but call number `call` writes half of its bytes and then raises `exc`.  Returns
    the list of sizes asked for, one per call."""
    real = os.pwrite
    sizes = []

    def pwrite(fd, data, offset):
        sizes.append(len(data))
        if len(sizes) == call:
            real(fd, bytes(data[:len(data) // 2]), offset)
            raise exc
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return sizes


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")],
                         ids=["ctrl-c", "disk-full"])
@pytest.mark.parametrize("call", [1, 2, 3, 5, 6])
def test_interrupted_write_leaves_whole_records(tmp_path, monkeypatch, call, exc):
    """pcap, batches of 2 packets: write call 1 is the file header, call k the packets 2k-4 and
    2k-3.  Interrupted in call k, the file holds the header and the 2 (k - 2) packets before."""
    pieces = INPUTS["pcap-le-ns"][0]
    src = put(tmp_path, "in.pcap", joined(pieces))
    sizes = pwrite_failing_on(monkeypatch, call, exc)
    with pytest.raises(type(exc)):
        copy_capture(src, tmp_path / "out", batch_size=2)
    monkeypatch.undo()
    assert len(sizes) == call
    whole = max(0, 2 * (call - 2))
    expected = b"" if call == 1 else joined(through_packet(pieces, whole))
    assert (tmp_path / "out").read_bytes() == expected
    if expected:
        pkts, error = read_packets(tmp_path / "out")
        assert error is None and len(pkts) == whole


def test_interrupted_while_closing(tmp_path, monkeypatch):
    """The blocks after the last packet go out in close(): interrupted there, the file ends with
    the last packet."""
    pieces = INPUTS["pcapng-blocks-between-and-after"][0]
    src = put(tmp_path, "in", joined(pieces))
    sizes = pwrite_failing_on(monkeypatch, 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        copy_capture(src, tmp_path / "out")
    assert sizes == [len(joined(pieces[:-2])), len(joined(pieces[-2:]))]
    assert (tmp_path / "out").read_bytes() == joined(pieces[:-2])


def recording_pwrite(monkeypatch, most=None):
    """os.pwrite, taking at most `most` bytes per call (all when None).  Returns the list of sizes
    asked for, one per call."""
    real = os.pwrite
    sizes = []

    def pwrite(fd, data, offset):
        sizes.append(len(data))
        return real(fd, data[:most], offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return sizes


def test_one_write_per_batch(tmp_path, monkeypatch):
    """Each batch goes out in one write: its records less the dropped ones, with the blocks before
    them (here the section and interface headers before the first packet)."""
    pieces = INPUTS["pcapng-two-sections"][0]
    sizes = recording_pwrite(monkeypatch)
    copy_capture(put(tmp_path, "in", joined(pieces)), tmp_path / "out", batch_size=4,
                 keep=lambda first, n: [(first + k) % 2 == 0 for k in range(n)])
    out = joined(pieces, drop={1, 3, 5, 7})
    assert (tmp_path / "out").read_bytes() == out
    assert len(sizes) == 3 and sum(sizes) == len(out)     # 9 packets in 3 batches, nothing after them


def test_short_writes_are_completed(tmp_path, monkeypatch):
    """When the kernel takes only part of a write, the rest follows."""
    pieces = INPUTS["pcapng-two-sections"][0]
    sizes = recording_pwrite(monkeypatch, most=7)
    copy_capture(put(tmp_path, "in", joined(pieces)), tmp_path / "out", batch_size=4)
    assert (tmp_path / "out").read_bytes() == joined(pieces)
    assert len(sizes) > 3


# ---------------------------------------------------------------------------------------------
# real captures

CAPTURES = sorted(p.name for p in (SHARED / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng")) \
    if (SHARED / "pcaps").is_dir() else ["(absent)"]


@pytest.mark.parametrize("name", CAPTURES)
def test_real_capture_round_trip(tmp_path, name):
    """Every capture of ../shared/pcaps comes out identical up to where the reader stops (all of it
    unless it is damaged), and the copy reads back cleanly with the same packets."""
    src = shared_dir("pcaps") / name
    data = src.read_bytes()
    try:
        reader, writer = copy_capture(src, tmp_path / "out", batch_size=1000)
    except CaptureError as exc:
        # a pcap file header the reader refuses at once: no writer, so no output file either
        assert exc.offset < 24 and not (tmp_path / "out").exists()
        return
    out = (tmp_path / "out").read_bytes()
    assert out == data[:reader.position]
    if reader.error is None:
        assert reader.position == len(data)
    else:                            # the damaged record or block, or a field inside it
        assert reader.position <= reader.error.offset
    if out:
        pkts, error = read_packets(tmp_path / "out")
        assert error is None and len(pkts) == reader.packets == writer.packets
