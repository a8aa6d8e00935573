"""NAT rules: validated in Python, run by the batch loop as a ruleset (fastct.ruleset).

The engine applies the compiled rules (fastct/_nat.pxd) and rewrites packets (fastct/_rewrite.pxd);
`fastct track --snat/--dnat/--masquerade` builds them with NatRules.from_cli.  A rule says which
new connections it applies to (zone, interfaces, networks, protocol, ports) and what to do with
them (snat, dnat, masquerade, redirect, notrack, accept).  `NatRules.to_ruleset()` turns them into
chains (fastct/rules_compile.py compiles those for the engine); action and flag
numbers come from include/ct_defs.h through `fastct._engine.names()`, never restated here.
The engine runs them as a ruleset (`NatRules.to_ruleset()`, fastct/rules_compile.py).

Semantics the rules follow (the kernel's NAT, as iptables' nat table and nftables' nat chains use it):

- Only a connection's first packet walks the rules; its translation is then stored with the
  connection and applied to every later packet in both directions.
- Two stages: prerouting rewrites destinations (dnat, redirect; notrack, which the kernel does in the
  raw table before conntrack, is kept here too) and postrouting rewrites sources (snat, masquerade).
- Within a stage the first rule that matches wins, as a NAT target ends its chain.  `accept` ends
  it without translation: the kernel then gives the connection a null binding at that hook.

The command-line target syntax (`parse_spec`, `parse_masquerade`) is iptables' --to-source /
--to-destination argument with nftables' flag list appended:

    ADDR[-ADDR][:PORT[-PORT]][,FLAG[,FLAG]...]      FLAG: persistent | random | fully-random

IPv6 addresses take brackets when a port follows: `[ADDR]:PORT`, a range as `[ADDR]-[ADDR]:PORT`
(nftables' form, tests/py/ip6/snat.t) or `[ADDR-ADDR]:PORT` (iptables' form, parse_to in
extensions/libxt_NAT.c).  Without brackets a target with more than one colon is all address, so a
bare IPv6 address or range has no port (iptables' rule: one colon is a port, more are IPv6).

Decisions where the syntax or the tools differ (sources in brackets):

- Flags combine freely and in any order; each at most once.  nftables' grammar takes any comma list
  of random, fully-random and persistent (src/parser_bison.y, nf_nat_flags); iptables' SNAT offers
  --random, --random-fully and --persistent together (libxt_NAT.c sets each bit independently).  The
  kernel ORs the two random bits into NF_NAT_RANGE_PROTO_RANDOM_ALL and treats them alike
  (net/netfilter/nf_nat_core.c: the port search then starts at a random offset and the original
  port is not kept even when free).  iptables' DNAT has no --random-fully, but nftables' dnat
  accepts fully-random and the kernel honours it, so dnat takes it too.
- iptables' name --random-fully is nftables' fully-random; only the latter is accepted (the error
  says so).
- Ports are decimal 1-65535 without leading zeros: iptables reads ports with strtoul base 0 (so 0x50
  is 80 and 010 is 8) and newer iptables accepts port 0; fastct refuses both rather than guess, and 0
  is the struct's "keep the port".  Service names (iptables takes `http`) and shifted port maps
  (`PORT-PORT/BASE`, DNAT revision 2) are not supported.
- An address is required: iptables' DNAT accepts a port alone (`:8080`, translate only the port),
  but a NAT target (`nat_target`, fastct/_types.pxd) has no way to say "keep the address".
- Masquerade takes the address of the output interface (fastct sees captures, not interfaces): one
  address, optionally ports and random/fully-random, as iptables' MASQUERADE (--to-ports, --random,
  --random-fully; it has no --persistent, which with one address would do nothing).
- IPv4-mapped IPv6 addresses (::ffff:a.b.c.d), scoped addresses (fe80::1%eth0), brackets around an
  IPv4 address (iptables refuses them too) and ranges mixing families are errors.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from fastct import _engine
from fastct.tracker import AF_INET, AF_INET6, PORT_PROTOCOLS, PROTOCOLS

_NAMES = _engine.names()
NAT_ACTIONS: dict[str, int] = dict(_NAMES["nat_actions"])
NAT_FLAGS: dict[str, int] = dict(_NAMES["nat_flags"])

# The two NAT stages (the nat chains' hooks).
STAGES: dict[str, int] = {"prerouting": 0, "postrouting": 1}

# Where each action may run: iptables' DNAT/REDIRECT are valid in PREROUTING (and OUTPUT), SNAT and
# MASQUERADE in POSTROUTING (and INPUT); NOTRACK runs before conntrack (raw PREROUTING/OUTPUT); an
# accept verdict can end either nat chain.  fastct has no locally generated traffic, so no OUTPUT/INPUT.
_ACTION_STAGES: dict[str, tuple[str, ...]] = {
    "dnat": ("prerouting",), "redirect": ("prerouting",), "notrack": ("prerouting",),
    "snat": ("postrouting",), "masquerade": ("postrouting",),
    "accept": ("prerouting", "postrouting"),
}
_NEEDS_TO_ADDR = {"snat", "dnat", "masquerade"}        # must say where to map
_TAKES_TO_PORTS = {"snat", "dnat", "masquerade", "redirect"}
_TAKES_FLAGS = {"snat": set(NAT_FLAGS), "dnat": set(NAT_FLAGS),
                "masquerade": set(NAT_FLAGS) - {"persistent"},
                "redirect": set(NAT_FLAGS) - {"persistent"}}

# Port matches: the protocols whose headers carry ports: TCP, UDP,
# UDP-Lite, SCTP, DCCP.  A translated port range also applies to ICMP/ICMPv6 echo ids, which the
# kernel's NAT rewrites like ports (and iptables accepts with -p icmp).
MATCH_PORT_PROTOCOLS = frozenset(PORT_PROTOCOLS | {PROTOCOLS["dccp"]})
TO_PORT_PROTOCOLS = MATCH_PORT_PROTOCOLS | {PROTOCOLS["icmp"], PROTOCOLS["icmpv6"]}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FAMILY_NAMES = {0: "any", AF_INET: "IPv4", AF_INET6: "IPv6"}


def _a(action: str) -> str:
    """'a snat rule', 'an accept rule'."""
    return f"{'an' if action[0] in 'aeiou' else 'a'} {action} rule"


def _proto_names(protos) -> str:
    names = {v: k for k, v in PROTOCOLS.items()}
    return ", ".join(names.get(p, str(p)) for p in sorted(protos))


# ---- field checks (NatRule) -------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _optional_int(name: str, value, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not lo <= value <= hi:
        raise ValueError(f"NatRule.{name}: must be an integer {lo}..{hi} or None (any), not {value!r}")
    return int(value)


def _address(name: str, value) -> Address:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr = value
    elif isinstance(value, str):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"NatRule.{name}: {value!r} is not an IP address") from None
    else:
        raise ValueError(f"NatRule.{name}: an IP address or its text, not {value!r}")
    problem = _address_problem(addr, value if isinstance(value, str) else str(addr))
    if problem:
        raise ValueError(f"NatRule.{name}: {problem}")
    return addr


def _address_problem(addr: Address, text: str) -> str | None:
    """Why fastct refuses this address (written as `text`), or None."""
    if addr.version == 6:
        if addr.scope_id:
            return f"{text!r} has a scope (%{addr.scope_id}); NAT addresses have none"
        if addr.ipv4_mapped is not None:
            return (f"{text!r} is an IPv4-mapped IPv6 address; write the IPv4 address "
                    f"{addr.ipv4_mapped} (fastct keeps IPv4 connections as IPv4)")
    return None


def _network(name: str, value) -> Network | None:
    if value is None:
        return None
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        net = value
    elif isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        try:
            net = ipaddress.ip_network(value)
        except ValueError as exc:
            raise ValueError(f"NatRule.{name}: {value!r} is not a network ({exc})") from None
    else:
        raise ValueError(f"NatRule.{name}: a network such as '10.0.0.0/8', or None (any), not {value!r}")
    problem = _address_problem(net.network_address, value if isinstance(value, str) else str(net))
    if problem:
        raise ValueError(f"NatRule.{name}: {problem}")
    return net


def _port_range(name: str, value, lo: int) -> tuple[int, int] | None:
    """None, a port, or an inclusive (first, last) pair -> (first, last) or None."""
    if value is None:
        return None
    if _is_int(value):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pair = tuple(value)
    else:
        raise ValueError(f"NatRule.{name}: a port or a (first, last) pair, not {value!r}")
    first, last = int(pair[0]), int(pair[1])
    for port in (first, last):
        if not lo <= port <= 65535:
            raise ValueError(f"NatRule.{name}: port {port} out of range {lo}-65535")
    if first > last:
        raise ValueError(f"NatRule.{name}: ({first}, {last}): first port after last")
    return first, last


def proto_number(proto) -> int:
    """A protocol name of fastct.tracker.PROTOCOLS (any case) or a number 0..255 -> its number;
    None or 0 is any protocol."""
    if proto is None:
        return 0
    if isinstance(proto, str):
        key = proto.lower()
        if key not in PROTOCOLS:
            raise ValueError(f"NatRule.proto: unknown protocol {proto!r}; use a number 0..255 or one of "
                             f"{', '.join(sorted(PROTOCOLS))}")
        return PROTOCOLS[key]
    if not _is_int(proto) or not 0 <= proto <= 255:
        raise ValueError(f"NatRule.proto: a protocol name or number 0..255, not {proto!r}")
    return int(proto)


def _l3_value(value) -> int:
    if value is None or (_is_int(value) and value == 0):
        return 0
    if _is_int(value) and value in (4, AF_INET):
        return AF_INET
    if _is_int(value) and value in (6, AF_INET6):
        return AF_INET6
    raise ValueError(f"NatRule.l3: 4 or {AF_INET} (IPv4), 6 or {AF_INET6} (IPv6), or 0/None (any), "
                     f"not {value!r}")


def _family(addr: Address | Network) -> int:
    return AF_INET if addr.version == 4 else AF_INET6


def _flag_set(value) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise ValueError(f"NatRule.flags: flag names ({', '.join(NAT_FLAGS)}), not {value!r}") from None
    for item in items:
        if item not in NAT_FLAGS:
            raise ValueError(f"NatRule.flags: unknown flag {item!r}; known: {', '.join(NAT_FLAGS)}")
    return frozenset(items)


@dataclass(frozen=True, kw_only=True)
class NatRule:
    """One NAT rule: which new connections it matches, and what it does to them.

    Match fields (None or 0: any): `zone` (conntrack zone 0..65535), `in_if` / `out_if` (the capture
    interface number 0..32767), `src` / `dst` (networks; a str such as '10.0.0.0/8' is converted, host
    bits must be clear), `l3` (stored as 0, AF_INET or AF_INET6; 4 and 6 are accepted; derived from
    the rule's addresses when not given), `proto` (a name of fastct.tracker.PROTOCOLS or a number),
    `sport` / `dport` (a port or an inclusive (first, last) pair; only with tcp, udp, udplite, sctp
    or dccp, as iptables requires -p for --sport/--dport).

    Action fields: `action` (a name of names()["nat_actions"]), `stage` ('prerouting' or
    'postrouting'; derived from the action, and required for accept), `to_min` / `to_max` (the address
    range to map to, inclusive; to_max defaults to to_min), `to_ports` (the port range to map to,
    1-65535; None keeps the port where the kernel would), `flags` (names of names()["nat_flags"]).

    What each action does, as the kernel does it:

    - snat (postrouting): the source becomes an address of the range; the kernel picks it by a hash
      of the source address and, unless `persistent`, the destination, so a client keeps its
      address.  Without `to_ports` the source port is kept when the new tuple is unique, otherwise
      one of its class is chosen (1-511 for ports below 512, 600-1023 for 512-1023, else
      1024-65535).  With `to_ports` the port is kept only when it is inside the range and free.
      With random or fully-random the port is never kept: the search starts at a random offset.
    - dnat (prerouting): the destination becomes an address of the range; without `to_ports` the
      destination port never changes.
    - masquerade (postrouting): snat to the output interface's address, which fastct cannot see, so
      the rule carries it (to_min == to_max).  No `persistent` (iptables' MASQUERADE has none).
    - redirect (prerouting): dnat to the input interface's own address, optionally to `to_ports`
      (iptables' REDIRECT --to-ports); the rule names no address.
    - notrack: matching packets are not tracked at all (iptables' raw-table NOTRACK / nft's
      notrack): like the raw table, notrack rules are checked for every packet, before tracking and
      apart from the other rules (the first matching notrack rule applies); ct_state 0, no entry.
    - accept: stops the stage's rules for this connection without translating it.

    A `to_ports` range applies to connections whose protocol has ports or ICMP echo ids; with `proto`
    any it is recorded and the engine applies it where it can, with `proto` set the protocol must
    have ports or ids (iptables likewise refuses a --to port unless -p names tcp, udp, sctp, dccp or
    icmp).
    Errors are ValueErrors naming the field (e.g. "NatRule.zone: ...").
    """
    action: str
    stage: str | None = None
    zone: int | None = None
    in_if: int | None = None
    out_if: int | None = None
    src: Network | str | None = None
    dst: Network | str | None = None
    l3: int | None = None
    proto: int | str | None = None
    sport: tuple[int, int] | int | None = None
    dport: tuple[int, int] | int | None = None
    to_min: Address | str | None = None
    to_max: Address | str | None = None
    to_ports: tuple[int, int] | int | None = None
    flags: frozenset[str] = frozenset()

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        action = self.action
        if not isinstance(action, str) or action not in NAT_ACTIONS:
            raise ValueError(f"NatRule.action: unknown action {action!r}; known: {', '.join(NAT_ACTIONS)}")
        if action not in _ACTION_STAGES:
            raise ValueError(f"NatRule.action: fastct.nat does not handle {action!r} yet")

        # -- stage
        allowed = _ACTION_STAGES[action]
        stage = self.stage
        if stage is None:
            if len(allowed) > 1:
                raise ValueError(f"NatRule.stage: {_a(action)} needs a stage: "
                                 f"{' or '.join(map(repr, allowed))}")
            stage = allowed[0]
        elif stage not in STAGES:
            raise ValueError(f"NatRule.stage: {stage!r} is not one of {', '.join(map(repr, STAGES))}")
        elif stage not in allowed:
            raise ValueError(f"NatRule.stage: {_a(action)} runs in {allowed[0]}, not {stage} "
                             f"(iptables' {action.upper()} is valid only there)")
        set_("stage", stage)

        # -- simple matches
        set_("zone", _optional_int("zone", self.zone, 0, 65535))
        set_("in_if", _optional_int("in_if", self.in_if, 0, 32767))
        set_("out_if", _optional_int("out_if", self.out_if, 0, 32767))
        if self.in_if is not None and stage == "postrouting":
            raise ValueError("NatRule.in_if: not a postrouting match (iptables refuses -i in POSTROUTING); "
                             "match the input interface in prerouting")
        if self.out_if is not None and stage == "prerouting":
            raise ValueError("NatRule.out_if: no output interface is known in prerouting (routing has "
                             "not run yet; iptables refuses -o in PREROUTING)")
        set_("src", _network("src", self.src))
        set_("dst", _network("dst", self.dst))

        # -- what to map to
        if self.to_min is None:
            if self.to_max is not None:
                raise ValueError("NatRule.to_max: given without to_min")
            if action in _NEEDS_TO_ADDR:
                raise ValueError(f"NatRule.to_min: {_a(action)} needs the address to map to")
        else:
            if action not in _NEEDS_TO_ADDR:
                raise ValueError(f"NatRule.to_min: {_a(action)} maps to no address"
                                 + (" (redirect uses the input interface's own)" if action == "redirect"
                                    else ""))
            to_min = _address("to_min", self.to_min)
            to_max = to_min if self.to_max is None else _address("to_max", self.to_max)
            if to_min.version != to_max.version:
                raise ValueError(f"NatRule.to_max: '{to_max}' is not of to_min's family ('{to_min}')")
            if int(to_max) < int(to_min):
                raise ValueError(f"NatRule.to_max: '{to_min}'-'{to_max}': first address after last")
            if action == "masquerade" and to_min != to_max:
                raise ValueError(f"NatRule.to_max: masquerade maps to the output interface's one "
                                 f"address, not a range ('{to_min}'-'{to_max}')")
            set_("to_min", to_min)
            set_("to_max", to_max)

        # -- one address family per rule
        families = [(name, _family(getattr(self, name))) for name in ("src", "dst", "to_min")
                    if getattr(self, name) is not None]
        for name, fam in families[1:]:
            if fam != families[0][1]:
                raise ValueError(f"NatRule.{name}: {_FAMILY_NAMES[fam]}, but {families[0][0]} is "
                                 f"{_FAMILY_NAMES[families[0][1]]}; a rule's addresses are one family")
        l3 = _l3_value(self.l3)
        if families:
            name, fam = families[0]
            if l3 and l3 != fam:
                raise ValueError(f"NatRule.l3: {_FAMILY_NAMES[l3]}, but {name} is {_FAMILY_NAMES[fam]}")
            l3 = fam
        set_("l3", l3)

        # -- protocol and ports
        proto = proto_number(self.proto)
        if proto == PROTOCOLS["icmp"] and l3 == AF_INET6:
            raise ValueError("NatRule.proto: icmp is IPv4's; an IPv6 rule uses icmpv6")
        if proto == PROTOCOLS["icmpv6"] and l3 == AF_INET:
            raise ValueError("NatRule.proto: icmpv6 is IPv6's; an IPv4 rule uses icmp")
        set_("proto", proto)
        for name in ("sport", "dport"):
            ports = _port_range(name, getattr(self, name), 0)
            if ports == (0, 65535):
                ports = None
            if ports is not None and proto not in MATCH_PORT_PROTOCOLS:
                raise ValueError(f"NatRule.{name}: a port match needs proto "
                                 f"{_proto_names(MATCH_PORT_PROTOCOLS)}, not "
                                 f"{_proto_names([proto]) if proto else 'any'}")
            set_(name, ports)
        to_ports = _port_range("to_ports", self.to_ports, 1)
        if to_ports is not None:
            if action not in _TAKES_TO_PORTS:
                raise ValueError(f"NatRule.to_ports: {_a(action)} maps no ports")
            if proto and proto not in TO_PORT_PROTOCOLS:
                raise ValueError(f"NatRule.to_ports: proto {_proto_names([proto])} has no ports to map "
                                 f"(ports: {_proto_names(TO_PORT_PROTOCOLS)})")
        set_("to_ports", to_ports)

        # -- flags
        flags = _flag_set(self.flags)
        refused = flags - _TAKES_FLAGS.get(action, set())
        if refused:
            raise ValueError(f"NatRule.flags: {', '.join(sorted(refused))} not for {_a(action)}"
                             + (f" (it takes {', '.join(sorted(_TAKES_FLAGS[action]))})"
                                if _TAKES_FLAGS.get(action) else ""))
        set_("flags", flags)

    @property
    def matches_everything(self) -> bool:
        """True when the rule applies to every new connection of its family (no match field set)."""
        return (self.zone is None and self.in_if is None and self.out_if is None and self.src is None
                and self.dst is None and not self.proto and self.sport is None and self.dport is None)


# ---- the command-line target syntax -----------------------------------------------------------
def _parse_target(text, option: str):
    """ADDR[-ADDR][:PORT[-PORT]][,FLAG...] -> (addresses, port range or None, flags, fail)."""
    if not isinstance(text, str):
        raise ValueError(f"{option} takes a string, not {text!r}")

    def fail(problem: str) -> ValueError:
        return ValueError(f"{option} {text!r}: {problem}")

    if not text:
        raise fail("empty")
    if any(ch.isspace() for ch in text):
        raise fail("whitespace is not allowed")
    target, *flag_texts = text.split(",")
    flags: list[str] = []
    for flag in flag_texts:
        if not flag:
            raise fail("empty flag (a stray ',')")
        if flag not in NAT_FLAGS:
            hint = (" (iptables' --random-fully is 'fully-random')"
                    if flag.lstrip("-") == "random-fully" else "")
            raise fail(f"unknown flag {flag!r}; known: {', '.join(NAT_FLAGS)}{hint}")
        if flag in flags:
            raise fail(f"flag {flag!r} given twice")
        flags.append(flag)
    if not target:
        raise fail("no address")

    ports_text = None
    if target.startswith("["):
        first, closed, rest = target[1:].partition("]")
        if not closed:
            raise fail("'[' without ']'")
        if rest.startswith("-["):                          # nftables: [ADDR]-[ADDR]
            if "-" in first:
                raise fail(f"'[{first}]': a range is either [ADDR-ADDR] or [ADDR]-[ADDR]")
            second, closed, rest = rest[2:].partition("]")
            if not closed:
                raise fail("'[' without ']'")
            addr_texts = [first, second]
        else:                                              # iptables: [ADDR] or [ADDR-ADDR]
            addr_texts = first.split("-")
        if rest.startswith(":"):
            ports_text = rest[1:]
        elif rest:
            raise fail(f"unexpected {rest!r} after ']' (expected ':PORT' or nothing)")
        bracketed = True
    else:
        if target.count(":") == 1:                         # one colon: ADDR:PORT (IPv4)
            target, _, ports_text = target.partition(":")
        addr_texts = target.split("-")
        bracketed = False

    if len(addr_texts) > 2:
        raise fail("more than two addresses (one '-' makes a range)")
    if any(not a for a in addr_texts):
        raise fail("empty address" + (" in a range" if len(addr_texts) == 2 else ""))
    addrs: list[Address] = []
    for a in addr_texts:
        try:
            addr = ipaddress.ip_address(a)
        except ValueError:
            raise fail(f"{a!r} is not an IP address") from None
        problem = _address_problem(addr, a)
        if problem:
            raise fail(problem)
        if bracketed and addr.version == 4:
            raise fail(f"brackets are for IPv6 addresses only, not '{addr}'")
        addrs.append(addr)
    if len(addrs) == 2:
        lo, hi = addrs
        if lo.version != hi.version:
            raise fail(f"'{lo}' and '{hi}' are of different address families")
        if int(hi) < int(lo):
            raise fail("first address after last")
    ports = None if ports_text is None else _parse_ports(ports_text, fail)
    return addrs, ports, flags, fail


def _parse_ports(text: str, fail) -> tuple[int, int]:
    if "/" in text:
        raise fail("shifted port maps (PORT-PORT/BASE) are not supported")
    first_text, dash, last_text = text.partition("-")
    if not first_text:
        raise fail("empty port")
    if dash and not last_text:
        raise fail("empty port after '-'")
    first = _port_number(first_text, fail)
    last = _port_number(last_text, fail) if dash else first
    if first > last:
        raise fail(f"port range '{text}': first port after last")
    return first, last


def _port_number(text: str, fail) -> int:
    if not (text.isascii() and text.isdigit()):
        raise fail(f"port {text!r} is not a decimal number")
    if len(text) > 1 and text[0] == "0":
        raise fail(f"port {text!r} has a leading zero (iptables would read it as octal)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise fail(f"port {port} out of range 1-65535")
    return port


def _rule(fail, **fields) -> NatRule:
    try:
        return NatRule(**fields)
    except ValueError as exc:          # only reachable if NatRule is stricter than the parser
        raise fail(str(exc)) from None


def parse_spec(text: str, kind: str) -> NatRule:
    """A --snat / --dnat target (`kind` 'snat' or 'dnat') -> a NatRule that matches every new
    connection of the address's family, in postrouting (snat) or prerouting (dnat).

    >>> parse_spec("172.93.74.5-172.93.74.15:5000-50000,persistent", "snat")
    >>> parse_spec("[2001:db8::1]-[2001:db8::9]:80", "dnat")

    Errors are ValueErrors naming the option and the text, e.g.
    "--snat '10.0.0.9-10.0.0.1': first address after last"."""
    if kind not in ("snat", "dnat"):
        raise ValueError(f"parse_spec: kind must be 'snat' or 'dnat', not {kind!r}")
    addrs, ports, flags, fail = _parse_target(text, f"--{kind}")
    return _rule(fail, action=kind, to_min=addrs[0], to_max=addrs[-1], to_ports=ports,
                 flags=frozenset(flags))


def parse_masquerade(text: str) -> NatRule:
    """A --masquerade target: the address the output interface has, optionally `:PORT[-PORT]` (as
    iptables' MASQUERADE --to-ports) and `,random` / `,fully-random` -> a masquerade NatRule in
    postrouting matching every new connection of that family."""
    addrs, ports, flags, fail = _parse_target(text, "--masquerade")
    if len(addrs) == 2:
        raise fail("an address range; masquerade maps to the output interface's one address")
    if "persistent" in flags:
        raise fail("'persistent' does not apply: masquerade has one address (iptables' MASQUERADE "
                   "has no --persistent)")
    return _rule(fail, action="masquerade", to_min=addrs[0], to_ports=ports, flags=frozenset(flags))


# ---- the rule set -----------------------------------------------------------------------------
def _addr16(addr: Address | None) -> np.ndarray:
    """16 bytes in network order, IPv4 in bytes 0-3 (as ct_entry's addresses)."""
    raw = b"" if addr is None else addr.packed
    return np.frombuffer(raw + bytes(16 - len(raw)), dtype=np.uint8)


class NatRules:
    """NAT rules in order.  Per stage the first rule that matches a new connection wins, as in a
    kernel nat chain; prerouting runs before postrouting, so a connection can get both a dnat and
    an snat.

    >>> rules = NatRules.from_cli(snat=["203.0.113.1"], dnat=["10.0.0.5:8080"])
    >>> rules.add(NatRule(action="accept", stage="postrouting", dst="10.0.0.0/8"))
    >>> ruleset = rules.to_ruleset()     # the chains the engine runs
    """

    def __init__(self, rules: Iterable[NatRule] = ()):
        self._rules: list[NatRule] = []
        for rule in rules:
            self.add(rule)

    def add(self, rule: NatRule) -> NatRule:
        """Append a rule (after the existing rules of its stage)."""
        if not isinstance(rule, NatRule):
            raise TypeError(f"NatRules.add takes a NatRule, not {type(rule).__name__}")
        self._rules.append(rule)
        return rule

    @property
    def rules(self) -> tuple[NatRule, ...]:
        """All rules in insertion order."""
        return tuple(self._rules)

    def stage(self, name: str) -> tuple[NatRule, ...]:
        """The rules of one stage, in the order they are tried."""
        if name not in STAGES:
            raise ValueError(f"stage {name!r} is not one of {', '.join(map(repr, STAGES))}")
        return tuple(r for r in self._rules if r.stage == name)

    def ordered(self) -> list[NatRule]:
        """The rules in the order they are tried: prerouting, then postrouting, each in insertion order."""
        return sorted(self._rules, key=lambda r: STAGES[r.stage])     # stable

    def __iter__(self) -> Iterator[NatRule]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"NatRules({self._rules!r})"

    def to_ruleset(self):
        """These rules as a fastct.ruleset.Ruleset (what the engine runs): table inet fastct with a
        raw prerouting chain (notrack rules), a nat prerouting chain (dnat, redirect, accept) and a
        nat postrouting chain (snat, masquerade, accept), each rule in insertion order.  Both nat
        chains exist even when empty, so that every new connection gets its bindings (at least the
        null binding), as in the kernel once NAT is in use."""
        from fastct.ruleset import Chain, Match, NatTarget, Rule, Ruleset
        raw = Chain("inet", "fastct", "raw", type="filter", hook="prerouting", priority=-300)
        pre = Chain("inet", "fastct", "prerouting", type="nat", hook="prerouting", priority=-100)
        post = Chain("inet", "fastct", "postrouting", type="nat", hook="postrouting", priority=100)
        for r in self._rules:
            m: list = []
            if r.zone is not None:
                m.append(Match("ct zone", ((r.zone, r.zone),)))
            if r.in_if is not None:
                m.append(Match("iif", (r.in_if,)))
            if r.out_if is not None:
                m.append(Match("oif", (r.out_if,)))
            if r.l3 and r.src is None and r.dst is None:
                m.append(Match("nfproto", (4 if r.l3 == AF_INET else 6,)))
            for key, net in (("saddr", r.src), ("daddr", r.dst)):
                if net is not None:
                    m.append(Match(key, ((net.network_address, net.broadcast_address),)))
            if r.proto:
                m.append(Match("l4proto", ((r.proto, r.proto),)))
            for key, ports in (("sport", r.sport), ("dport", r.dport)):
                if ports is not None:
                    m.append(Match(key, (ports,)))
            rule = Rule(matches=tuple(m))
            if r.action == "notrack":
                rule.notrack = True
                raw.rules.append(rule)
                continue
            if r.action == "accept":
                rule.verdict = "accept"
            else:
                fam = r.to_min.version if r.to_min is not None else \
                    {AF_INET: 4, AF_INET6: 6}.get(r.l3)
                rule.nat = NatTarget(r.action, r.to_min, r.to_max, r.to_ports, r.flags, fam)
            (pre if r.stage == "prerouting" else post).rules.append(rule)
        chains = ([raw] if raw.rules else []) + [pre, post]
        return Ruleset(chains=chains, source="NatRules")

    @classmethod
    def from_cli(cls, snat: Iterable[str] = (), dnat: Iterable[str] = (),
                 masquerade: Iterable[str] = ()) -> NatRules:
        """The command line's rules: each --dnat applies to every new connection of its address's
        family in prerouting, each --snat and --masquerade to every new connection of its family in
        postrouting.  As the first match wins, a second target for the same stage and family could
        never be used: that is an error naming both."""
        rules = cls()
        seen: dict[tuple[str, int], str] = {}
        groups = (("--dnat", dnat, lambda t: parse_spec(t, "dnat")),
                  ("--snat", snat, lambda t: parse_spec(t, "snat")),
                  ("--masquerade", masquerade, parse_masquerade))
        for option, texts, parse in groups:
            if isinstance(texts, str):
                texts = [texts]
            for text in texts:
                rule = parse(text)
                key = (rule.stage, rule.l3)
                if key in seen:
                    raise ValueError(f"{option} {text!r}: never used: {seen[key]} already applies to "
                                     f"every new {_FAMILY_NAMES[rule.l3]} connection in {rule.stage} "
                                     f"(the first matching rule wins)")
                seen[key] = f"{option} {text!r}"
                rules.add(rule)
        return rules
