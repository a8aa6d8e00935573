"""The Python face of the engine: configuration, the batch call, and state queries.

Nothing here loops over packets: `process` hands the whole batch to the nogil loop in _engine.
"""
from __future__ import annotations

import ipaddress
import os
import weakref
from collections.abc import MutableMapping
from dataclasses import dataclass

import numpy as np

from fastct import _engine
from fastct import sysctl as sysctl_mod
from fastct.batch import Batch

_NAMES = _engine.names()
CT_STATE_BITS: dict[str, int] = dict(_NAMES["ct_state"])
STATUS_BITS: dict[str, int] = dict(_NAMES["status"])
TCP_STATES: list[str] = _NAMES["tcp_states"]
SCTP_STATES: list[str] = _NAMES["sctp_states"]
DCCP_STATES: list[str] = _NAMES["dccp_states"]
TIMEOUT_DEFAULTS: dict[str, int] = dict(_NAMES["timeouts"])
REASONS: list[str] = _NAMES["reasons"]
STAT_NAMES: list[str] = _NAMES["stats"]
ENTRY_DTYPE = _engine.ENTRY_DTYPE
COLD_DTYPE = _engine.COLD_DTYPE
COUNTERS_DTYPE = np.dtype([("packets", np.uint64, (2,)), ("bytes", np.uint64, (2,))])
# A tuple: the first 40 bytes of an entry (the key), also the layout of a stored NAT reply tuple.
TUPLE_DTYPE = np.dtype({"names": [n for n in ENTRY_DTYPE.names if ENTRY_DTYPE.fields[n][1] < 40],
                        "formats": [ENTRY_DTYPE.fields[n][0] for n in ENTRY_DTYPE.names
                                    if ENTRY_DTYPE.fields[n][1] < 40],
                        "offsets": [ENTRY_DTYPE.fields[n][1] for n in ENTRY_DTYPE.names
                                    if ENTRY_DTYPE.fields[n][1] < 40],
                        "itemsize": 40})

AF_INET, AF_INET6 = 2, 10
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "dccp": 33, "gre": 47, "icmpv6": 58, "sctp": 132,
             "udplite": 136}
PORT_PROTOCOLS = {6, 17, 132, 136}
ICMP_PROTOCOLS = {1, 58}
DEFAULT_MAX_CONNS = 262144     # nf_conntrack_max on this kernel (64-bit, > 4 GiB)
MAX_MAX_CONNS = _engine.MAX_CONNS_LIMIT


def ct_state_names(value: int) -> list[str]:
    """OVS-style names of the bits set in a ct_state value, e.g. ['new', 'trk']."""
    return [name for name, bit in CT_STATE_BITS.items() if value & bit]


def state_name(proto: int, state: int) -> str | None:
    """The protocol state's name as conntrack prints it (None for protocols without states)."""
    if proto == 6:
        return TCP_STATES[state]
    if proto == 132:
        return SCTP_STATES[state]
    if proto == 33 and state:
        return DCCP_STATES[state]
    return None


def status_names(value: int) -> list[str]:
    return [name for name, bit in STATUS_BITS.items() if value & bit]


@dataclass
class Result:
    """Per-packet outputs of one batch."""
    ct_state: np.ndarray     # uint8, OVS ct_state bits (0: untracked / not IP / link type skipped)
    entry: np.ndarray        # int32, entry index (valid until the next mutating call), -1 none
    direction: np.ndarray    # uint8, 0 original, 1 reply
    held: np.ndarray         # bool, a fragment held until its datagram is complete (ct_state 0)


class Timeouts(MutableMapping):
    """The kernel's timeout sysctls by name (with or without the nf_conntrack_ prefix), in seconds."""

    def __init__(self, engine, on_change=None):
        self._engine = engine
        self._index = {name: i for i, name in enumerate(TIMEOUT_DEFAULTS)}
        # A weak reference: a Tracker <-> Timeouts cycle would keep a dropped table's memory (often
        # hundreds of MB) until the cycle collector happened to run.
        self._on_change = weakref.WeakMethod(on_change) if on_change is not None else None

    def _key(self, name):
        key = sysctl_mod.short_name(name)
        if key not in self._index:
            raise KeyError(f"unknown timeout {name!r}; known: {', '.join(self._index)}")
        return key

    def __getitem__(self, name):
        return self._engine.get_timeout(self._index[self._key(name)]) / 1e9

    def __setitem__(self, name, seconds):
        key = self._key(name)
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise ValueError(f"timeout {name!r} must be a number of seconds, not {seconds!r}") from None
        if not 0 <= value <= sysctl_mod.TIMEOUT_MAX_SECONDS:
            raise ValueError(f"timeout {name!r} must be between 0 and {sysctl_mod.TIMEOUT_MAX_SECONDS} "
                             f"seconds, not {seconds!r}")
        self._engine.set_timeout(self._index[key], int(round(value * 1e9)))
        callback = self._on_change() if self._on_change is not None else None
        if callback is not None:
            callback()

    def __delitem__(self, name):
        raise TypeError("timeouts cannot be deleted; set them instead")

    def __iter__(self):
        return iter(self._index)

    def __len__(self):
        return len(self._index)

    def __repr__(self):
        return "Timeouts({" + ", ".join(f"{k!r}: {self[k]:g}" for k in self) + "})"


def _addr_words(addr: str):
    """(family, k0, k1) for an address string in the entry layout (IPv4 in bytes 0-3)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"not an IP address: {addr!r}") from None
    raw = ip.packed + bytes(16 - len(ip.packed))
    return (AF_INET if ip.version == 4 else AF_INET6,
            int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little"))


def _proto_number(proto) -> int:
    if isinstance(proto, str):
        if proto.lower() not in PROTOCOLS:
            raise ValueError(f"unknown protocol {proto!r}; use a number or one of {sorted(PROTOCOLS)}")
        return PROTOCOLS[proto.lower()]
    if not 0 <= int(proto) <= 255:
        raise ValueError(f"protocol number must be 0..255, not {proto}")
    return int(proto)


def format_addr(raw: np.ndarray, l3: int) -> str:
    b = bytes(raw)
    return str(ipaddress.IPv4Address(b[:4])) if l3 == AF_INET else str(ipaddress.IPv6Address(b))


class Tracker:
    """A connection table.

    >>> t = Tracker(max_conns=1_000_000, seed=1)
    >>> res = t.process(batch)                 # ct_state per packet
    >>> t.lookup("192.168.0.2", "10.0.0.2", "tcp", 1024, 2048)
    """

    def __init__(self, max_conns: int | None = None, seed: int | None = None,
                 timeouts: dict | None = None, tcp_loose: bool = True, tcp_be_liberal: bool = False,
                 tcp_max_retrans: int = 3, prefault: bool = False, sysctl: dict | None = None,
                 timeout_policies: dict | None = None, dccp_tracker: bool = False,
                 zone_limits: dict | None = None, early_drop: bool = True, nat=None,
                 interfaces: dict | None = None):
        """`sysctl` takes the kernel's net.netfilter.nf_conntrack_* names (fastct.sysctl); it is
        applied after the keyword arguments, and nf_conntrack_max there is the table size.
        `timeout_policies` is {zone: {timeout name: seconds}} (OVS-style per-zone timeouts).
        `zone_limits` is {zone or "default": most connections} (Open vSwitch's ct limits).
        `early_drop`: when the table is full, evict an entry that is not ASSURED near the new
        connection's hash, as the kernel does (True), or just drop the new connection, as Open
        vSwitch's userspace conntrack does (False).
        `dccp_tracker` tracks DCCP with the state machine of kernels before 6.16 (default: as
        generic, as this kernel does).
        `nat`: NAT rules (a fastct.nat.NatRules, or an iterable of NatRule), see set_nat.
        `interfaces`: {interface number: address or list of addresses} (see set_interface_addresses)."""
        settings = sysctl_mod.normalise(sysctl)
        if sysctl_mod.MAX_NAME in settings:
            if max_conns is not None and max_conns != settings[sysctl_mod.MAX_NAME]:
                raise ValueError(f"max_conns={max_conns} and nf_conntrack_max="
                                 f"{settings[sysctl_mod.MAX_NAME]} disagree")
            max_conns = settings[sysctl_mod.MAX_NAME]
        if max_conns is None:
            max_conns = DEFAULT_MAX_CONNS
        if isinstance(max_conns, bool) or not isinstance(max_conns, (int, np.integer)):
            raise ValueError(f"max_conns must be an integer, not {max_conns!r}")
        if not 1 <= max_conns <= MAX_MAX_CONNS:
            raise ValueError(f"max_conns must be between 1 and {MAX_MAX_CONNS}, not {max_conns}")
        need = int(max_conns) * (ENTRY_DTYPE.itemsize + COLD_DTYPE.itemsize)
        mem = _physical_memory()
        if mem and need > mem:
            raise ValueError(f"max_conns={max_conns} needs {need / 2**30:.1f} GiB for its entries, "
                             f"more than this machine's {mem / 2**30:.1f} GiB of memory")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, not {seed!r}")
        try:
            # Prefaulted tables also get their final index now: no growth later.
            # (A NAT'd connection takes up to three index slots.)
            per = 3 if nat is not None else 1
            slots = 1 << max(10, int(np.ceil(np.log2(max_conns * per * 8 / 5)))) if prefault else 1024
            self._engine = _engine.Engine(int(max_conns), seed, slots)
        except MemoryError:
            raise ValueError(f"cannot allocate a table for max_conns={max_conns}") from None
        self._engine.set_tcp(loose=tcp_loose, be_liberal=tcp_be_liberal, max_retrans=tcp_max_retrans)
        self._dccp_tracker = bool(dccp_tracker)
        self._engine.set_options(checksum=False, dccp_tracker=bool(dccp_tracker),
                                 early_drop=bool(early_drop))
        self._policies: dict[int, dict[str, int]] = {}
        self.timeouts = Timeouts(self._engine, on_change=self._apply_policies)
        for name, value in (timeouts or {}).items():
            self.timeouts[name] = value
        self.set_sysctl(settings)
        for zone, entries in (timeout_policies or {}).items():
            self.timeout_policy(zone, entries)
        self._zone_limits: dict = {}
        if zone_limits:
            self.set_zone_limits(zone_limits)
        self.linktype_skipped = np.zeros(65536, dtype=np.uint64)
        self._nat = None
        self._program = None
        self._ruleset = None
        self._iface_model = None
        if nat is not None:
            self.set_nat(nat)
        self._interfaces: dict[int, list] = {}
        if interfaces:
            self.set_interface_addresses(interfaces)
        if prefault:
            # Pay the kernel's first-touch cost for every entry now rather than per new connection.
            self._engine.prefault()

    # ---- kernel settings ------------------------------------------------------------------
    def set_sysctl(self, sysctl: dict) -> None:
        """Apply kernel settings by name (see fastct.sysctl); nf_conntrack_max only at creation."""
        settings = sysctl_mod.normalise(sysctl)
        for key, value in settings.items():
            if key == sysctl_mod.MAX_NAME:
                if value != self._engine.max_conns:
                    raise ValueError("nf_conntrack_max can only be set when the Tracker is created")
            elif key == "tcp_loose":
                self._engine.set_tcp(loose=value)
            elif key == "tcp_be_liberal":
                self._engine.set_tcp(be_liberal=value)
            elif key == "tcp_max_retrans":
                self._engine.set_tcp(max_retrans=value)
            elif key == "tcp_ignore_invalid_rst":
                self._engine.set_options(tcp_ignore_invalid_rst=value)
            elif key == "checksum":
                self._engine.set_options(checksum=value)
            elif key in sysctl_mod.TIMEOUT_NAMES:
                self.timeouts[key] = value

    @property
    def sysctl(self) -> dict[str, int]:
        """The current settings under the kernel's full names."""
        eng = self._engine
        out = {"nf_conntrack_max": int(eng.max_conns)}
        out.update({"nf_conntrack_" + k: int(v) for k, v in eng.options().items()})
        out.update({sysctl_mod.full_name(k): int(self.timeouts[k]) for k in self.timeouts})
        return out

    def timeout_policy(self, zone: int, timeouts: dict) -> None:
        """Give connections of `zone` their own timeouts (the others keep the table's): the
        per-zone timeout policies of Open vSwitch.  An empty dict removes the zone's policy."""
        entries = dict(sysctl_mod.validate_policy_entry(zone, name, value)
                       for name, value in timeouts.items())
        policies = dict(self._policies)
        if entries:
            policies[zone] = {**policies.get(zone, {}), **entries}
        else:
            policies.pop(zone, None)
        if len(policies) > 255:
            raise ValueError("at most 255 zones can have their own timeout policy")
        self._policies = policies
        self._apply_policies()

    def set_zone_limits(self, limits: dict) -> None:
        """Most connections per zone, as Open vSwitch's `dpctl/ct-set-limits`: {zone: n} and
        optionally {"default": n} for every other zone; 0 removes a limit.  A new connection in a
        zone at its limit is dropped (counted in `drop`) unless a dead entry of that zone makes room."""
        merged = dict(self._zone_limits)
        for zone, n in limits.items():
            if zone != "default" and (isinstance(zone, bool) or not isinstance(zone, int)
                                      or not 0 <= zone <= 65535):
                raise ValueError(f"zone limit: zone must be 0..65535 or 'default', not {zone!r}")
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 2**32 - 1:
                raise ValueError(f"zone limit for zone {zone}: must be 0..{2**32 - 1}, not {n!r}")
            merged[zone] = n
        merged = {z: n for z, n in merged.items() if n}
        self._zone_limits = merged
        if not merged:
            self._engine.set_zone_limits(None)
            return
        arr = np.full(65536, merged.get("default", 0), dtype=np.uint32)
        for zone, n in merged.items():
            if zone != "default":
                arr[zone] = n
        self._engine.set_zone_limits(arr)

    @property
    def zone_limits(self) -> dict:
        return dict(self._zone_limits)

    def zone_count(self, zone: int) -> int:
        """Live connections in a zone."""
        ents = self.entries(zone=zone)
        return int(len(ents))

    @property
    def timeout_policies(self) -> dict[int, dict[str, int]]:
        return {z: dict(p) for z, p in self._policies.items()}

    def _apply_policies(self) -> None:
        if not getattr(self, "_policies", None):
            self._engine.set_zone_policies(None, None)
            return
        if len(self._policies) > 255:
            raise ValueError("at most 255 zones can have their own timeout policy")
        names = list(TIMEOUT_DEFAULTS)
        base = np.array([self._engine.get_timeout(i) for i in range(len(names))], dtype=np.int64)
        zone_map = np.zeros(65536, dtype=np.uint8)
        rows = []
        for k, (zone, entries) in enumerate(sorted(self._policies.items()), start=1):
            row = base.copy()
            for key, seconds in entries.items():
                row[names.index(key)] = seconds * 1_000_000_000
            rows.append(row)
            zone_map[zone] = k
        self._engine.set_zone_policies(zone_map, np.array(rows, dtype=np.int64))

    # ---- NAT ------------------------------------------------------------------------------
    def set_nat(self, rules) -> None:
        """NAT rules for new connections (fastct.nat.NatRules, an iterable of NatRule, or None
        for none).  Connections already in the table keep the bindings they got.  This replaces
        any ruleset set before (set_ruleset)."""
        from fastct.nat import NatRules
        if rules is None:
            self._nat = None
            self.set_ruleset(None)
            return
        if not isinstance(rules, NatRules):
            rules = NatRules(rules)
        self.set_ruleset(rules.to_ruleset())
        self._nat = rules

    @property
    def nat(self):
        """The NAT rules in use (a NatRules), or None."""
        return self._nat

    def set_ruleset(self, ruleset, interfaces=None) -> None:
        """A ruleset (fastct.ruleset.Ruleset, as fastct.nft / fastct.iptables parse them, or None
        for none) and the interface model its interface names refer to (fastct.interfaces.
        Interfaces; None: interfaces are the batch's iface numbers).  Raises
        fastct.ruleset.RulesetError when the ruleset cannot run.  Rule counters start at zero."""
        from fastct.rules_compile import compile_ruleset
        self._nat = None
        if ruleset is None:
            self._program = None
            self._ruleset = None
            self._engine.set_ruleset(None)
            return
        prog = compile_ruleset(ruleset, interfaces)
        self._engine.set_ruleset(prog)
        if prog.addresses is not None:
            self._engine.set_interface_addresses(*prog.addresses)
        self._program = prog
        self._ruleset = ruleset
        self._iface_model = interfaces

    def load_nft(self, text: str, interfaces=None, source: str = "<nft>") -> None:
        """An nftables ruleset, as `nft list ruleset` prints it or as written by hand (fastct.nft)."""
        from fastct.nft import parse_nft
        self.set_ruleset(parse_nft(text, source), interfaces)

    def load_iptables(self, text: str, interfaces=None, family: int | None = None,
                      source: str = "<iptables>") -> None:
        """The nat and raw tables of iptables-save / ip6tables-save output (fastct.iptables)."""
        from fastct.iptables import parse_iptables
        self.set_ruleset(parse_iptables(text, source, family), interfaces)

    def set_capture_interfaces(self, interfaces, classic: bool) -> None:
        """The capture's interfaces (CaptureReader.interfaces) for the interface model: recompiles
        the ruleset with their names, keeping its counters."""
        if self._program is None or self._iface_model is None:
            return
        from fastct.rules_compile import compile_ruleset
        counters = self._program.counters
        prog = compile_ruleset(self._ruleset, self._iface_model.with_capture(interfaces, classic))
        prog.counters = counters
        self._engine.set_ruleset(prog)
        if prog.addresses is not None:
            self._engine.set_interface_addresses(*prog.addresses)
        self._program = prog

    @property
    def program(self):
        """The compiled ruleset in use (fastct.rules_compile.Program: its rules, counters and
        warnings), or None."""
        return self._program

    def rule_counters(self) -> np.ndarray:
        """Per compiled rule: packets and bytes its `counter` statement counted (uint64[rules, 2])."""
        if self._program is None:
            return np.zeros((0, 2), dtype=np.uint64)
        return self._program.counters.copy()

    def helper_names(self) -> list[str]:
        """Helper number (an entry's `aux`, 0xFFFFFFFF none) -> the helper's type, e.g. 'ftp'."""
        return [] if self._program is None else list(self._program.helpers)

    def set_interface_addresses(self, interfaces: dict) -> None:
        """The gateway's own addresses per interface number (the batch's iface): {number: address
        or list of addresses}; the first IPv4 and the first IPv6 address of each count.
        Redirect maps a connection to its input interface's address of its family."""
        n = max((int(k) for k in interfaces), default=-1) + 1
        addr = np.zeros((max(n, 1), 32), dtype=np.uint8)
        has = np.zeros(max(n, 1), dtype=np.uint8)
        for number, values in interfaces.items():
            if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or \
                    not 0 <= number <= 0xFFFF:
                raise ValueError(f"interface number must be in 0..65535, not {number!r}")
            for value in ([values] if isinstance(values, str) else values):
                try:
                    ip = ipaddress.ip_address(value)
                except ValueError:
                    raise ValueError(f"interface {number}: {value!r} is not an IP address") from None
                bit = 1 if ip.version == 4 else 2
                if not has[number] & bit:
                    off = 0 if ip.version == 4 else 16
                    addr[number, off:off + len(ip.packed)] = np.frombuffer(ip.packed, dtype=np.uint8)
                    has[number] |= bit
        self._engine.set_interface_addresses(addr, has)
        self._interfaces = {int(k): v for k, v in interfaces.items()}

    # ---- the batch ------------------------------------------------------------------------
    def process(self, batch: Batch, zone: int = 0, commit: bool = True, zone_from_vlan: bool = False,
                out: Result | None = None, rewrite: bool | None = None, out_iface=None) -> Result:
        """Track every packet of `batch`; returns (or fills `out` with) ct_state, entry, direction.
        With NAT rules set, packets of translated connections are rewritten in batch.buf (which
        must then be writable) unless rewrite=False (verdicts only).  `out_iface`: each packet's
        output interface, for rules that match one."""
        if not isinstance(batch, Batch):
            raise TypeError("process() takes a fastct.Batch")
        if rewrite is None:
            rewrite = self._program is not None and self._program.nat_on
        if rewrite and not batch.buf.flags.writeable:
            raise ValueError("NAT rewrites packets in place, but this batch's buffer is read-only "
                             "(read the capture with writable=True, or pass rewrite=False for "
                             "verdicts only)")
        if out_iface is not None:
            out_iface = np.ascontiguousarray(out_iface, dtype=np.uint16)
        n = len(batch)
        if out is None:
            out = Result(np.empty(n, dtype=np.uint8), np.empty(n, dtype=np.int32),
                         np.empty(n, dtype=np.uint8), np.empty(n, dtype=np.bool_))
        self._engine.process(
            batch.buf, batch.offsets, batch.caplen, batch.wirelen, batch.ts, batch.iface,
            batch.if_linktype, batch.if_fcslen, out.ct_state, out.entry, out.direction,
            out.held.view(np.uint8), self.linktype_skipped,
            zone=zone, zone_from_vlan=zone_from_vlan, commit=commit, rewrite=bool(rewrite),
            out_iface=out_iface)
        return out

    # ---- queries --------------------------------------------------------------------------
    @property
    def now(self) -> int:
        """Newest packet time seen, ns."""
        return self._engine.now

    def expire(self, now: int | None = None) -> int:
        """Delete the entries dead at `now` (default: the newest packet time); returns how many."""
        return self._engine.expire(self._engine.now if now is None else int(now))

    def __len__(self) -> int:
        self.expire()
        return self._engine.count

    def entries(self, proto=None, state=None, status=None, zone=None, src=None, dst=None,
                sport=None, dport=None, addr=None, port=None) -> np.ndarray:
        """Live entries as a structured array (ENTRY_DTYPE).  Unfiltered, a zero-copy view valid
        until the next call that changes the table; filters (all must hold) return a copy.
        `state` is a TCP state name, `status` a status bit name or value that must be set,
        `addr`/`port` match either end of the original tuple."""
        self.expire()
        view = self._engine.entries_view()
        if all(v is None for v in (proto, state, status, zone, src, dst, sport, dport, addr, port)):
            return view
        mask = np.ones(len(view), dtype=bool)
        if proto is not None:
            mask &= view["proto"] == _proto_number(proto)
        if state is not None:
            if state not in TCP_STATES:
                raise ValueError(f"unknown state {state!r}; known: {TCP_STATES}")
            mask &= (view["proto"] == 6) & (view["state"] == TCP_STATES.index(state))
        if status is not None:
            bit = STATUS_BITS[status] if isinstance(status, str) else int(status)
            mask &= (view["status"] & bit) == bit
        if zone is not None:
            mask &= view["zone"] == zone
        for field, value in (("src", src), ("dst", dst)):
            if value is not None:
                mask &= _addr_mask(view, field, value)
        if addr is not None:
            mask &= _addr_mask(view, "src", addr) | _addr_mask(view, "dst", addr)
        # Ports exist only for TCP, UDP, UDP-Lite, SCTP, and DCCP with the dccp tracker (ICMP keeps
        # its id and type there).
        has_ports = np.isin(view["proto"], list(self._port_protocols()))
        if sport is not None:
            mask &= has_ports & (view["sport"] == sport)
        if dport is not None:
            mask &= has_ports & (view["dport"] == dport)
        if port is not None:
            mask &= has_ports & ((view["sport"] == port) | (view["dport"] == port))
        return view[mask]

    def replies(self) -> np.ndarray:
        """The reply tuple of each live entry (TUPLE_DTYPE, parallel to entries()): the original
        tuple reversed, or for a connection NAT changed, the translated tuple stored with it (what
        `conntrack -L` prints second)."""
        entries = self.entries()
        out = np.zeros(len(entries), dtype=TUPLE_DTYPE)
        out["src"], out["dst"] = entries["dst"], entries["src"]
        out["zone"], out["l3"], out["proto"] = entries["zone"], entries["l3"], entries["proto"]
        out["sport"], out["dport"] = entries["dport"], entries["sport"]
        icmp = np.isin(entries["proto"], list(ICMP_PROTOCOLS))
        if icmp.any():
            # ICMP: the id stays, the type becomes the reply type (as the kernel inverts it).
            out["sport"][icmp] = entries["sport"][icmp]
            out["dport"][icmp] = _icmp_reply_word(entries["proto"][icmp], entries["dport"][icmp])
        nat = (entries["status"] & NAT_MASK) != 0
        records = self._engine.nat_view()
        if nat.any() and records is not None:
            raw = np.ascontiguousarray(records.view(np.uint8).reshape(len(records), -1)[:, :40])
            out[nat] = raw.view(TUPLE_DTYPE).reshape(-1)[nat]
        return out

    def _port_protocols(self) -> set[int]:
        return PORT_PROTOCOLS | {33} if self._dccp_tracker else PORT_PROTOCOLS

    def cold(self) -> np.ndarray:
        """Cold per-entry data (COLD_DTYPE: start time, the counters' high words, mark, helper),
        parallel to entries()."""
        self.expire()
        return self._engine.cold_view()

    def counters(self) -> np.ndarray:
        """Each live entry's whole counters, parallel to entries(): COUNTERS_DTYPE, `packets` and
        `bytes` as uint64[2] (original, reply direction).  The entry holds their low 32 bits
        (packets_lo, bytes_lo), the cold record the high ones."""
        self.expire()
        return full_counters(self._engine.entries_view(), self._engine.cold_view())

    def lookup(self, src, dst, proto, sport: int = 0, dport: int = 0, zone: int = 0,
               icmp_type: int | None = None, icmp_code: int = 0) -> dict | None:
        """The connection with this tuple, looked up from either direction, or None.
        For ICMP/ICMPv6 `sport` is the echo id and `icmp_type` defaults to echo request."""
        p = _proto_number(proto)
        fam, s0, s1 = _addr_words(src)
        fam2, d0, d1 = _addr_words(dst)
        if fam != fam2:
            raise ValueError("src and dst must be of the same address family")
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF and 0 <= zone <= 0xFFFF):
            raise ValueError("ports and zone must be in 0..65535")
        if p in ICMP_PROTOCOLS:
            t = icmp_type if icmp_type is not None else (8 if p == 1 else 128)
            dport = (t << 8) | icmp_code
        elif p not in self._port_protocols():
            sport = dport = 0
        k4 = sport | (dport << 16) | (zone << 32) | (fam << 48) | (p << 56)
        idx, direction = self._engine.lookup_key(s0, s1, d0, d1, k4)
        if idx < 0:
            return None
        return self.record(idx, direction)

    def record(self, idx: int, direction: int = 0) -> dict:
        """One entry as a dict: its fields plus decoded names."""
        e = self._engine.entries_view()[idx]
        c = self._engine.cold_view()[idx]
        rec = {name: (e[name].tolist() if e[name].ndim else e[name].item()) for name in ENTRY_DTYPE.names}
        rec["src"] = format_addr(e["src"], int(e["l3"]))
        rec["dst"] = format_addr(e["dst"], int(e["l3"]))
        rec["index"] = int(idx)
        rec["direction"] = "reply" if direction else "original"
        rec["start"] = int(c["start"])
        rec["packets"] = [(int(c["packets_hi"][d]) << 32) | int(e["packets_lo"][d]) for d in (0, 1)]
        rec["bytes"] = [(int(c["bytes_hi"][d]) << 32) | int(e["bytes_lo"][d]) for d in (0, 1)]
        rec["mark"] = int(c["mark"])
        rec["aux"] = int(c["aux"])
        rec["state_name"] = state_name(int(e["proto"]), int(e["state"]))
        rec["status_names"] = status_names(int(e["status"]))
        rec["timeout"] = max(0, (int(e["expires"]) - self.now) // 1_000_000_000)
        return rec

    def stats(self) -> dict:
        """The kernel's conntrack -S counters and fastct's own, plus per-reason invalid counts."""
        values = self._engine.stats_array()
        out = {name: int(v) for name, v in zip(STAT_NAMES, values)}
        out["entries"] = self._engine.count
        reasons = self._engine.reasons_array()
        out["reasons"] = {REASONS[i]: int(v) for i, v in enumerate(reasons) if v and i}
        out["linktypes_skipped"] = {int(i): int(self.linktype_skipped[i])
                                    for i in np.nonzero(self.linktype_skipped)[0]}
        return out

    def memory_bytes(self) -> int:
        return self._engine.memory_bytes()


def full_counters(entries: np.ndarray, cold: np.ndarray) -> np.ndarray:
    """COUNTERS_DTYPE for parallel entry and cold records: low words joined with high words."""
    out = np.empty(len(entries), dtype=COUNTERS_DTYPE)
    for name in ("packets", "bytes"):
        out[name] = (cold[name + "_hi"].astype(np.uint64) << np.uint64(32)) | entries[name + "_lo"]
    return out


NAT_MASK = STATUS_BITS["SRC_NAT"] | STATUS_BITS["DST_NAT"]
_ICMP_REPLY_TYPE: dict[int, dict[int, int]] = _NAMES["icmp_inverse"]   # the engine's own table


def _icmp_reply_word(protos: np.ndarray, words: np.ndarray) -> np.ndarray:
    """type << 8 | code of the reply to each ICMP tuple (the type kept where it has no reply)."""
    out = words.copy()
    for proto, table in _ICMP_REPLY_TYPE.items():
        for t, r in table.items():
            sel = (protos == proto) & ((words >> 8) == t)
            out[sel] = (r << 8) | (words[sel] & 0xFF)
    return out


def _addr_mask(view, field, value):
    net = ipaddress.ip_network(value, strict=False)
    raw = np.frombuffer(net.network_address.packed + bytes(16 - len(net.network_address.packed)),
                        dtype=np.uint8)
    fam = AF_INET if net.version == 4 else AF_INET6
    nbits = net.prefixlen
    full, rest = divmod(nbits, 8)
    col = view[field]
    mask = view["l3"] == fam
    if full:
        mask &= np.all(col[:, :full] == raw[:full], axis=1)
    if rest:
        m = (0xFF << (8 - rest)) & 0xFF
        mask &= (col[:, full] & m) == (raw[full] & m)
    return mask


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
