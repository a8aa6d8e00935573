"""The numpy dtype of an entry is derived from the C struct; check they agree byte for byte."""
import numpy as np
import pytest

from fastct import _engine
from fastct.tracker import ENTRY_DTYPE, COLD_DTYPE


def test_entry_dtype_matches_c_struct():
    layout = _engine.entry_layout()
    assert ENTRY_DTYPE.itemsize == layout.pop("__size__") == 128
    for name, offset in layout.items():
        assert ENTRY_DTYPE.fields[name][1] == offset, name
    assert set(ENTRY_DTYPE.names) == set(layout)


def test_cold_dtype_matches_c_struct():
    layout = _engine.cold_layout()
    assert COLD_DTYPE.itemsize == layout.pop("__size__") == 32
    for name, offset in layout.items():
        assert COLD_DTYPE.fields[name][1] == offset, name


def test_hot_fields_in_first_cache_line():
    # Key, expiry, status, state and the TCP sequence ends are what every packet touches first.
    for name in ("src", "dst", "sport", "dport", "zone", "l3", "proto", "expires", "status", "state",
                 "td_end"):
        off = ENTRY_DTYPE.fields[name][1]
        assert off + ENTRY_DTYPE.fields[name][0].itemsize <= 64, name


def test_key_word_layout():
    # Bytes 32..39 read as a little-endian uint64: sport | dport<<16 | zone<<32 | l3<<48 | proto<<56.
    e = np.zeros(1, dtype=ENTRY_DTYPE)
    e["sport"], e["dport"], e["zone"], e["l3"], e["proto"] = 0x1234, 0x5678, 7, 2, 6
    word = int.from_bytes(e.tobytes()[32:40], "little")
    assert word == 0x1234 | 0x5678 << 16 | 7 << 32 | 2 << 48 | 6 << 56


def test_memory_per_connection_within_target():
    from fastct import Tracker
    t = Tracker(max_conns=1_000_000, seed=1)
    # Entries + cold data for max_conns, plus the index once grown to hold them at load <= 0.7.
    slots = 1 << (int(np.ceil(np.log2(1_000_000 / 0.7))))
    per_conn = ENTRY_DTYPE.itemsize + COLD_DTYPE.itemsize + slots * 8 / 1_000_000
    assert per_conn <= 192
    assert t.memory_bytes() <= 1_000_000 * (ENTRY_DTYPE.itemsize + COLD_DTYPE.itemsize) + slots * 8


@pytest.mark.parametrize("struct,dtype_name,size", [
    ("nat_target", "NAT_TARGET_DTYPE", 40), ("rs_match", "RS_MATCH_DTYPE", 16),
    ("rs_irange", "RS_IRANGE_DTYPE", 8), ("rs_arange", "RS_ARANGE_DTYPE", 32),
    ("rs_rule", "RS_RULE_DTYPE", 32), ("rs_chain", "RS_CHAIN_DTYPE", 12),
    ("rs_route", "RS_ROUTE_DTYPE", 20)])
def test_ruleset_dtypes_match_c_structs(struct, dtype_name, size):
    layout = dict(_engine.ruleset_layouts()[struct])
    dtype = getattr(_engine, dtype_name)
    assert dtype.itemsize == layout.pop("__size__") == size
    assert set(layout) == set(dtype.names)
    for name, offset in layout.items():
        assert dtype.fields[name][1] == offset, name
