"""Rulesets: chains of rules as nftables and iptables-save write them, in one form both parsers produce.

`fastct.nft` (nft's language) and `fastct.iptables` (iptables-save's) parse text into a `Ruleset`;
`fastct.rules_compile` checks it against the interface model and compiles it to the arrays the batch
loop walks (fastct/_rules.pxd).  The NAT rules of the command line (fastct.nat.NatRules) become a
Ruleset too (`Ruleset.from_nat_rules`), so there is one path from rule to engine.

The form is nftables' model, which iptables' maps onto directly:

- a `Chain` belongs to a table (family ip, ip6 or inet, and a name); a base chain has a type (nat or
  filter), a hook and a priority, a regular chain only rules and is reached by jump/goto;
- a `Rule` is matches (all must hold) then statements (counter, ct mark set, meta mark set, ct zone
  set, ct helper set, notrack) then at most one terminal: a NAT target or a verdict (accept, drop,
  return, jump, goto);
- a `Match` tests one key of the packet or its connection against a set of values (ranges), perhaps
  negated.

Every object keeps where it came from (`Loc`), so errors found later (an undeclared interface, a
statement in a chain where it cannot work) still name the file, line and column.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Named priorities (nft's names; the kernel's NF_IP_PRI_* values).  `conntrack` is where the
# kernel's connection tracking runs in prerouting: chains below it see packets before tracking.
PRIORITY_NAMES: dict[str, int] = {
    "raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100,
}
CONNTRACK_PRIORITY = -200
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
FAMILIES = ("ip", "ip6", "inet")
CHAIN_TYPES = ("filter", "nat")
VERDICTS = ("accept", "drop", "return", "jump", "goto", "continue", "reject")
NAT_ACTIONS = ("snat", "dnat", "masquerade", "redirect")

# Match keys and the form of their values:
#   "iifname", "oifname": interface names (str); a trailing '*' matches any name with that prefix
#   "iif", "oif":         interface numbers (int; the Python API's NatRule.in_if / out_if)
#   "saddr", "daddr":     (first, last) address pairs of one family; only packets of that family match
#   "nfproto":            4 or 6 (the packet's IP version)
#   "l4proto":            (first, last) IP protocol number pairs
#   "sport", "dport":     (first, last) port pairs; a parser also emits the l4proto match that
#                         `tcp dport` / `-p tcp --dport` imply
#   "ct state":           names of CT_STATE_NAMES (any of them)
#   "ct direction":       ("original",) or ("reply",)
#   "ct zone":            (first, last) pairs
#   "ct mark", "meta mark": (first, last) pairs, compared with (value & mask) when mask is set
MATCH_KEYS = ("iifname", "oifname", "iif", "oif", "saddr", "daddr", "nfproto", "l4proto",
              "sport", "dport", "ct state", "ct direction", "ct zone", "ct mark", "meta mark")
# nft's ct state bits (include/uapi/linux/netfilter/nf_conntrack_common.h: NF_CT_STATE_BIT of
# ctinfo, and NF_CT_STATE_UNTRACKED_BIT).
CT_STATE_BITS: dict[str, int] = {"invalid": 1, "established": 2, "related": 4, "new": 8,
                                 "untracked": 64}
CT_DIRECTIONS = ("original", "reply")


@dataclass(frozen=True)
class Loc:
    """Where something was written: file name, 1-based line and column."""
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class RulesetError(ValueError):
    """A ruleset that cannot be read or compiled: `FILE:LINE:COL: what (at 'TOKEN')`."""

    def __init__(self, loc: Loc | None, message: str, token: str | None = None):
        self.loc = loc
        self.message = message
        self.token = token
        where = f"{loc}: " if loc is not None else ""
        at = f" (at {token!r})" if token is not None else ""
        super().__init__(f"{where}{message}{at}")


@dataclass(frozen=True)
class Match:
    key: str                       # one of MATCH_KEYS
    values: tuple                  # see MATCH_KEYS' comment
    negate: bool = False           # `!=`, `! -s`: the key's value is in none of the values
    mask: int | None = None        # ct mark / meta mark: `and MASK == V` compares value & MASK
    loc: Loc | None = None


@dataclass(frozen=True)
class NatTarget:
    """A NAT statement: snat / dnat to an address range and optional port range, masquerade (the
    output interface's address), redirect (the input interface's address).  `family` is 4 or 6 when
    the statement names one (`snat ip to`, or from its address); a rule whose target is of another
    family than the packet does not match (the kernel's inet nat does the same)."""
    action: str                    # one of NAT_ACTIONS
    to_min: Address | None = None
    to_max: Address | None = None
    to_ports: tuple[int, int] | None = None
    flags: frozenset[str] = frozenset()     # persistent, random, fully-random
    family: int | None = None


@dataclass
class Rule:
    matches: tuple[Match, ...] = ()
    counter: bool = False
    ct_mark_set: int | None = None
    meta_mark_set: int | None = None
    ct_zone_set: int | None = None
    ct_helper_set: str | None = None          # a ct helper object of the rule's table, by name
    template: bool = False                    # iptables' CT target: its helper / zone go on a
                                              # template the packet's new connection is made from,
                                              # so they work before conntrack (raw)
    notrack: bool = False
    nat: NatTarget | None = None              # terminal: the connection gets this binding
    verdict: str | None = None                # one of VERDICTS, or None (go on with the next rule)
    target: str | None = None                 # chain name (same table) for jump / goto
    text: str = ""                            # as written, for `fastct rules` and errors
    loc: Loc | None = None


@dataclass
class Chain:
    family: str                               # table family: ip, ip6, inet
    table: str
    name: str
    type: str | None = None                   # "nat" / "filter" for a base chain, None for a regular one
    hook: str | None = None
    priority: int | None = None
    policy: str = "accept"
    rules: list[Rule] = field(default_factory=list)
    loc: Loc | None = None

    @property
    def is_base(self) -> bool:
        return self.hook is not None

    @property
    def id(self) -> str:
        """How `fastct rules` and errors name it: 'inet nat prerouting'."""
        return f"{self.family} {self.table} {self.name}"


@dataclass
class Helper:
    """A `ct helper NAME { type "ftp" protocol tcp; }` object."""
    family: str
    table: str
    name: str
    type: str                                 # "ftp", "tftp", ...
    protocol: str                             # "tcp" or "udp"
    loc: Loc | None = None


@dataclass
class Ruleset:
    chains: list[Chain] = field(default_factory=list)
    helpers: list[Helper] = field(default_factory=list)
    source: str = ""                          # the file name errors use
    warnings: list[str] = field(default_factory=list)   # printed by the CLI, one line each

    def chain(self, family: str, table: str, name: str) -> Chain | None:
        for c in self.chains:
            if (c.family, c.table, c.name) == (family, table, name):
                return c
        return None

    def helper(self, family: str, table: str, name: str) -> Helper | None:
        for h in self.helpers:
            if (h.family, h.table, h.name) == (family, table, name):
                return h
        return None
