"""Compile a Ruleset (fastct.ruleset) against the interface model into the arrays the batch loop
walks (fastct/_rules.pxd, structs in fastct/_types.pxd), and describe the result for `fastct rules`.

Where each base chain runs, as on a gateway that forwards every packet of the capture (the kernel's
prerouting priorities; conntrack is at -200, destination NAT at -100):

    hook point  chains                                     sees
    ----------  -----------------------------------------  -------------------------------------
    HP_RAW      prerouting, priority < -200 (raw)          every packet, before tracking
    HP_PRE      prerouting filter, -200 <= priority < -100 every packet, its connection
    HP_DNAT     nat prerouting                             a new connection's first packet
    HP_LATE     prerouting filter, priority >= -100        every packet, after destination NAT
    HP_SNAT     nat postrouting                            a new connection's first packet, with
                                                           its output interface

Chains on the input and output hooks are compiled (so `fastct rules` shows them) but never run:
offline, no packet is addressed to or sent by the gateway itself; they may name any interface.
Filter chains on forward and postrouting are a firewall's: read, shown and not run, with a warning
(an error if they would change a connection: ct mark set, helpers, NAT).  Drop / reject in a chain
that runs is refused with an error naming it (fastct models conntrack and NAT, not the firewall's
verdicts).  Base chains of equal priority run the later one first, as in the kernel.

Statements that only work at some hook points are refused elsewhere rather than silently doing
nothing, as the kernel would: `notrack` and `ct zone set` need a chain before conntrack; `ct mark set`
and `ct helper set` one after it; NAT targets a nat chain of the right hook; `oifname` a chain after
routing (nat postrouting).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastct import _engine
from fastct.interfaces import Interfaces
from fastct.ruleset import (CONNTRACK_PRIORITY, CT_DIRECTIONS, CT_STATE_BITS, PRIORITY_NAMES, Chain, Loc,
                            Match, NatTarget, Rule, Ruleset, RulesetError)

_NAMES = _engine.names()
HOOK_POINTS = dict(_NAMES["rs_hooks"])          # name -> HP_* value
_HP = {"raw": 0, "pre": 1, "dnat": 2, "late": 3, "snat": 4}
assert [v for _, v in _NAMES["rs_hooks"]] == list(_HP.values())
KEYS = dict(_NAMES["rs_keys"])
VERDICTS = dict(_NAMES["rs_verdicts"])
STMTS = dict(_NAMES["rs_stmts"])
NAT_ACTIONS = dict(_NAMES["nat_actions"])
NAT_FLAGS = dict(_NAMES["nat_flags"])
NAT_F_IFADDR = _NAMES["nat_flag_ifaddr"]
MAX_DEPTH = 16                                   # RS_MAX_DEPTH in fastct/_rules.pxd
L3 = {4: 2, 6: 10}
_KEY_OF = {"iifname": "iif", "oifname": "oif"}  # names compile to interface numbers


@dataclass
class Program:
    """A compiled ruleset: the arrays Engine.set_ruleset takes, and what `fastct rules` prints."""
    chains: np.ndarray
    rules: np.ndarray
    matches: np.ndarray
    iranges: np.ndarray
    aranges: np.ndarray
    targets: np.ndarray
    routes: np.ndarray
    base: np.ndarray
    hp_first: list[int]
    counters: np.ndarray                          # uint64[rules, 2]: packets, bytes
    iif_map: np.ndarray | None
    default_oif: int
    nat_on: bool
    addresses: tuple[np.ndarray, np.ndarray] | None
    helpers: list[str]                            # helper number -> its type ("ftp")
    helper_protos: list[int]                      # helper number -> its protocol (6 tcp, 17 udp)
    rule_info: list[tuple[Chain, Rule]] = field(default_factory=list)
    chain_list: list[Chain] = field(default_factory=list)
    chain_hook_point: dict[int, int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _err(obj, message: str, token: str | None = None) -> RulesetError:
    return RulesetError(getattr(obj, "loc", None), message, token)


def _hook_point(chain: Chain) -> int | None:
    """Where a base chain runs (HP_*), None for never (input and output: no packet is for or from
    the gateway; filter chains on forward and postrouting: not modelled, see _skipped)."""
    if chain.hook in ("input", "output"):
        return None
    prio = chain.priority
    if chain.type == "nat":
        if chain.hook == "prerouting":
            if prio <= CONNTRACK_PRIORITY:
                raise _err(chain, f"chain {chain.id}: a nat chain needs a priority above conntrack's "
                                  f"({CONNTRACK_PRIORITY}), not {prio}")
            return _HP["dnat"]
        if chain.hook == "postrouting":
            return _HP["snat"]
        raise _err(chain, f"chain {chain.id}: nat chains hook prerouting, postrouting, input or output, "
                          f"not {chain.hook}")
    if chain.hook == "prerouting":
        if prio < CONNTRACK_PRIORITY:
            return _HP["raw"]
        return _HP["pre"] if prio < PRIORITY_NAMES["dstnat"] else _HP["late"]
    return None


def _skipped(chain: Chain) -> bool:
    """A filter chain on forward or postrouting: a firewall's chain, whose accept/drop verdicts
    fastct does not model.  It is read and shown but not run, with a warning; one that would change
    conntrack (marks, helpers, NAT) is an error instead."""
    return chain.is_base and chain.type == "filter" and chain.hook in ("forward", "postrouting")


_CONNTRACK_STATEMENTS = (("ct_mark_set", "ct mark set"), ("ct_helper_set", "ct helper set"),
                         ("ct_zone_set", "ct zone set"), ("nat", "NAT"))


class _Compiler:
    def __init__(self, ruleset: Ruleset, interfaces: Interfaces):
        self.rs = ruleset
        self.ifs = interfaces
        self.chain_index = {(c.family, c.table, c.name): i for i, c in enumerate(ruleset.chains)}
        self.helpers: list[str] = []
        self.helper_protos: list[int] = []
        self.helper_index: dict[tuple, int] = {}
        self.matches: list[tuple] = []
        self.iranges: list[tuple[int, int]] = []
        self.aranges: list[tuple[bytes, bytes]] = []
        self.targets: list[NatTarget] = []
        self.warnings: list[str] = []

    # ---- reachability and placement ------------------------------------------------------
    def _targets_of(self, chain: Chain):
        for rule in chain.rules:
            if rule.verdict in ("jump", "goto"):
                key = (chain.family, chain.table, rule.target)
                if key not in self.chain_index:
                    raise _err(rule, f"{rule.verdict} to chain {rule.target!r}, which table "
                                     f"{chain.family} {chain.table} does not have", rule.target)
                yield rule, self.chain_index[key]

    def reach(self) -> dict[int, set[int]]:
        """chain number -> the hook points it runs at (directly, or through jump/goto); refuses
        loops and jumps nested deeper than the kernel allows."""
        chains = self.rs.chains
        where: dict[int, set[int]] = {i: set() for i in range(len(chains))}

        def visit(i: int, hp: int, path: list[int], depth: int):
            if i in path:
                cycle = " -> ".join(chains[j].name for j in path[path.index(i):] + [i])
                raise _err(chains[i], f"chains jump in a loop: {cycle}")
            if depth > MAX_DEPTH:
                raise _err(chains[i], f"jumps nested more than {MAX_DEPTH} deep")
            where[i].add(hp)
            for rule, j in self._targets_of(chains[i]):
                visit(j, hp, path + [i], depth + (1 if rule.verdict == "jump" else 0))

        for i, c in enumerate(chains):
            if c.is_base:
                hp = _hook_point(c)
                if hp is not None:
                    visit(i, hp, [], 0)
                elif _skipped(c):
                    self._skip(i, [])
            else:
                list(self._targets_of(c))            # (its jump targets must exist even if it never runs)
        return where

    def _skip(self, i: int, path: list[int]):
        """A forward / postrouting filter chain (and what it jumps to): not run; refused if it
        would change conntrack."""
        chains = self.rs.chains
        if i in path or len(path) > MAX_DEPTH:
            return                          # (loops there are harmless: it never runs)
        chain = chains[i]
        for rule in chain.rules:
            for attr, what in _CONNTRACK_STATEMENTS:
                if getattr(rule, attr) is not None:
                    raise _err(rule, f"{what} in chain {chain.id}: filter chains on the "
                                     f"{chains[path[0]].hook if path else chain.hook} hook are not run "
                                     f"by fastct yet, and this statement would change the connection",
                               what)
        if not path:
            self.warnings.append(f"{chain.loc or self.rs.source}: chain {chain.id} (filter, hook "
                                 f"{chain.hook}) is not run: fastct models conntrack and NAT, not a "
                                 f"firewall's verdicts")
        for _, j in self._targets_of(chain):
            self._skip(j, path + [i])

    # ---- one rule --------------------------------------------------------------------------
    def _check_rule(self, chain: Chain, rule: Rule, hps: set[int]):
        before_ct = _HP["raw"] in hps
        after_ct = bool(hps - {_HP["raw"]})
        where = f"in chain {chain.id}"
        if rule.verdict in ("drop", "reject") and hps:
            raise _err(rule, f"{rule.verdict} {where}: drop verdicts are not supported yet (fastct "
                             f"models conntrack and NAT, not the firewall's verdicts)", rule.verdict)
        if (rule.notrack or rule.ct_zone_set is not None) and after_ct:
            what = "notrack" if rule.notrack else "ct zone set"
            raise _err(rule, f"{what} {where}: works only before conntrack (a prerouting chain with "
                             f"priority below {CONNTRACK_PRIORITY}, e.g. raw)", what)
        if (rule.ct_mark_set is not None or (rule.ct_helper_set is not None and not rule.template)) \
                and before_ct:
            what = "ct mark set" if rule.ct_mark_set is not None else "ct helper set"
            raise _err(rule, f"{what} {where}: before conntrack there is no connection to set it on "
                             f"(use a chain with priority {CONNTRACK_PRIORITY} or above)", what)
        if rule.nat is not None and hps:
            want = _HP["dnat"] if rule.nat.action in ("dnat", "redirect") else _HP["snat"]
            if hps != {want}:
                hook = "prerouting" if want == _HP["dnat"] else "postrouting"
                raise _err(rule, f"{rule.nat.action} {where}: runs only in a nat {hook} chain "
                                 f"(and chains only it jumps to)", rule.nat.action)
        for m in rule.matches:
            if m.key in ("oifname", "oif") and hps - {_HP["snat"]}:
                raise _err(m, f"{m.key} {where}: the output interface is not known before routing "
                              f"(only nat postrouting chains can match it)", m.key)
            if m.key.startswith("ct ") and before_ct and m.key != "ct state":
                raise _err(m, f"{m.key} {where}: before conntrack there is no connection "
                              f"(it never matches)", m.key)

    @staticmethod
    def _ranges_int(pairs) -> tuple:
        """Integer ranges, allocated in iranges when the rule is emitted (see _emit)."""
        return ("i", tuple((int(lo), int(hi)) for lo, hi in pairs))

    def _match(self, m: Match, chain: Chain, runs: bool = True) -> list[tuple]:
        """A Match -> specs (key, neg, l3, mask, (range kind 'i' or 'a', ranges)), see _emit."""
        neg = 1 if m.negate else 0
        key = m.key
        if key in ("iifname", "oifname"):
            numbers = []
            for name in m.values:
                found = self.ifs.matching(name)
                if not found and not runs:
                    continue                 # (a chain that never runs may name any interface)
                if not found and not name.endswith("*"):
                    raise _err(m, f"interface {name!r} is not declared: name it with --iface "
                                  f"NAME=ADDR, --in-iface, --out-iface, or capture on it (pcapng)", name)
                if not found:
                    self.warnings.append(f"{m.loc}: interface pattern {name!r} matches no declared "
                                         f"interface" if m.loc else f"{name!r} matches no interface")
                numbers += found
            return [(KEYS[_KEY_OF[key]], neg, 0, 0xFFFFFFFF,
                     self._ranges_int([(n, n) for n in sorted(set(numbers))]))]
        if key in ("iif", "oif"):
            return [(KEYS[key], neg, 0, 0xFFFFFFFF, self._ranges_int([(n, n) for n in m.values]))]
        if key in ("saddr", "daddr"):
            if not m.values:
                # An empty set (a named set filled at run time): no address is in it.  (nfproto
                # with no ranges: never in them, so `!=` holds for every packet.)
                return [(KEYS["nfproto"], neg, 0, 0xFFFFFFFF, ("i", ()))]
            fam = {a.version for pair in m.values for a in pair}
            if len(fam) != 1:
                raise _err(m, f"{key}: addresses of one family only")
            pairs = tuple((lo.packed.ljust(16, b"\0"), hi.packed.ljust(16, b"\0")) for lo, hi in m.values)
            return [(KEYS[key], neg, L3[fam.pop()], 0xFFFFFFFF, ("a", pairs))]
        if key == "nfproto":
            return [(KEYS[key], neg, 0, 0xFFFFFFFF, self._ranges_int([(v, v) for v in m.values]))]
        if key == "ct state":
            bits = 0
            for name in m.values:
                if name not in CT_STATE_BITS:
                    raise _err(m, f"unknown ct state {name!r}", name)
                bits |= CT_STATE_BITS[name]
            return [(KEYS[key], neg, 0, bits, ("i", ()))]
        if key == "ct direction":
            return [(KEYS[key], neg, 0, 0xFFFFFFFF,
                     self._ranges_int([(CT_DIRECTIONS.index(v),) * 2 for v in m.values]))]
        if key in ("l4proto", "sport", "dport", "ct zone", "ct mark", "meta mark"):
            mask = 0xFFFFFFFF if m.mask is None else m.mask
            return [(KEYS[key], neg, 0, mask, self._ranges_int(m.values))]
        raise _err(m, f"unknown match key {key!r}", key)

    def _emit(self, specs: list[tuple]) -> list[tuple]:
        """A rule's match rows, their ranges allocated, without repeats: `meta l4proto tcp tcp
        dport 80` (or iptables' `-p tcp -m tcp --dport 80`) tests the protocol once, so a ruleset
        and its equivalent in the other syntax compile to the same arrays."""
        out, seen = [], set()
        for spec in specs:
            if spec in seen:
                continue
            seen.add(spec)
            key, neg, l3, mask, (kind, values) = spec
            table = self.aranges if kind == "a" else self.iranges
            out.append((key, neg, l3, mask, len(table), len(values)))
            table.extend(values)
        return out

    def _family_rows(self, family: int) -> list[tuple]:
        return [(KEYS["nfproto"], 0, 0, 0xFFFFFFFF, self._ranges_int([(family, family)]))]

    def _target(self, rule: Rule) -> int:
        self.targets.append(rule.nat)
        return len(self.targets) - 1

    def _helper(self, chain: Chain, rule: Rule) -> int:
        key = (chain.family, chain.table, rule.ct_helper_set)
        if key not in self.helper_index:
            h = self.rs.helper(*key)
            if h is None:
                raise _err(rule, f"ct helper {rule.ct_helper_set!r} is not defined in table "
                                 f"{chain.family} {chain.table}", rule.ct_helper_set)
            if h.protocol not in ("tcp", "udp"):
                raise _err(h, f"ct helper {h.name!r}: protocol {h.protocol!r} (tcp or udp)", h.protocol)
            self.helper_index[key] = len(self.helpers)
            self.helpers.append(h.type)
            self.helper_protos.append(6 if h.protocol == "tcp" else 17)
        return self.helper_index[key]

    # ---- everything ------------------------------------------------------------------------
    def compile(self) -> Program:
        where = self.reach()
        chains = self.rs.chains
        chain_arr = np.zeros(len(chains), dtype=_engine.RS_CHAIN_DTYPE)
        rule_rows = []
        rule_info = []
        for ci, chain in enumerate(chains):
            hps = where[ci]
            if chain.is_base and hps and chain.policy != "accept":
                raise _err(chain, f"chain {chain.id}: policy {chain.policy} is not supported yet "
                                  f"(fastct models conntrack and NAT, not the firewall's verdicts)")
            table_family = {"ip": 4, "ip6": 6}.get(chain.family)
            # The table's family is checked once per chain (rs_chain.l3), not per rule.
            chain_arr[ci] = (len(rule_rows), len(chain.rules), VERDICTS["accept"],
                             L3.get(table_family, 0), 0)
            for rule in chain.rules:
                self._check_rule(chain, rule, hps)
                rows = []
                if rule.nat is not None and rule.nat.family is not None and rule.nat.family != table_family:
                    rows += self._family_rows(rule.nat.family)
                for m in rule.matches:
                    rows += self._match(m, chain, runs=bool(hps))
                rows = self._emit(rows)
                stmts = 0
                if rule.counter:
                    stmts |= STMTS["counter"]
                if rule.ct_mark_set is not None:
                    stmts |= STMTS["ct mark set"]
                if rule.meta_mark_set is not None:
                    stmts |= STMTS["meta mark set"]
                if rule.ct_zone_set is not None:
                    stmts |= STMTS["ct zone set"]
                if rule.notrack:
                    stmts |= STMTS["notrack"]
                helper = 0
                if rule.ct_helper_set is not None:
                    stmts |= STMTS["ct helper set"]
                    helper = self._helper(chain, rule)
                if rule.nat is not None:
                    verdict, target = VERDICTS["nat"], self._target(rule)
                elif rule.verdict in ("jump", "goto"):
                    verdict = VERDICTS[rule.verdict]
                    target = self.chain_index[(chain.family, chain.table, rule.target)]
                elif rule.verdict == "reject":
                    verdict, target = VERDICTS["drop"], -1
                elif rule.verdict is None:
                    verdict, target = VERDICTS["continue"], -1
                else:
                    verdict, target = VERDICTS[rule.verdict], -1
                m_first = len(self.matches)
                self.matches += rows
                rule_rows.append((m_first, len(rows), stmts, rule.ct_mark_set or 0,
                                  rule.meta_mark_set or 0, target, rule.ct_zone_set or 0, verdict, helper))
                rule_info.append((chain, rule))
        rules = np.zeros(len(rule_rows), dtype=_engine.RS_RULE_DTYPE)
        for i, row in enumerate(rule_rows):
            for name, value in zip(("m_first", "m_count", "stmts", "ct_mark", "meta_mark", "target",
                                    "zone", "verdict", "helper"), row):
                rules[name][i] = value
        matches = np.zeros(len(self.matches), dtype=_engine.RS_MATCH_DTYPE)
        for i, (key, neg, l3, mask, first, count) in enumerate(self.matches):
            matches[i] = (key, neg, l3, 0, mask, first, count)
        iranges = np.array(self.iranges, dtype=_engine.RS_IRANGE_DTYPE) if self.iranges else \
            np.zeros(0, dtype=_engine.RS_IRANGE_DTYPE)
        aranges = np.zeros(len(self.aranges), dtype=_engine.RS_ARANGE_DTYPE)
        for i, (lo, hi) in enumerate(self.aranges):
            aranges["lo"][i] = np.frombuffer(lo, dtype=np.uint8)
            aranges["hi"][i] = np.frombuffer(hi, dtype=np.uint8)
        targets = _targets_array(self.targets)
        # Base chains per hook point, by priority (ties: in the order the file gives them).
        groups: list[list[int]] = [[] for _ in _HP]
        hook_point: dict[int, int | None] = {}
        for ci, chain in enumerate(chains):
            if chain.is_base:
                hp = _hook_point(chain)
                hook_point[ci] = hp
                if hp is not None:
                    groups[hp].append(ci)
        base, hp_first = [], [0]
        for g in groups:
            # Equal priorities: the chain registered later runs first, as the kernel inserts a new
            # hook before those of its priority (nf_hook_entries_grow); an nft file registers its
            # chains in the order it gives them.
            base += sorted(g, key=lambda ci: (chains[ci].priority, -ci))
            hp_first.append(len(base))
        nat_on = any(c.type == "nat" and c.hook in ("prerouting", "postrouting") for c in chains)
        uses_ifaces = bool(self.ifs.names)
        return Program(
            chains=chain_arr, rules=rules, matches=matches, iranges=iranges, aranges=aranges,
            targets=targets, routes=self.ifs.routes(), base=np.array(base, dtype=np.uint32),
            hp_first=hp_first, counters=np.zeros((len(rules), 2), dtype=np.uint64),
            iif_map=self.ifs.iif_map() if self.ifs.capture or self.ifs.in_iface else None,
            default_oif=self.ifs.default_oif(), nat_on=nat_on,
            addresses=self.ifs.addresses() if uses_ifaces else None, helpers=self.helpers,
            helper_protos=self.helper_protos,
            rule_info=rule_info, chain_list=list(chains), chain_hook_point=hook_point,
            warnings=self.warnings)


def _targets_array(targets: list[NatTarget]) -> np.ndarray:
    out = np.zeros(len(targets), dtype=_engine.NAT_TARGET_DTYPE)
    for i, t in enumerate(targets):
        for name, addr in (("to_min", t.to_min), ("to_max", t.to_max if t.to_max is not None else t.to_min)):
            if addr is not None:
                raw = addr.packed
                out[name][i, :len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        out["to_port_lo"][i], out["to_port_hi"][i] = t.to_ports or (0, 0)
        out["action"][i] = NAT_ACTIONS[t.action]
        flags = 0
        for f in t.flags:
            flags |= NAT_FLAGS[f]
        if t.action == "masquerade" and t.to_min is None:
            flags |= NAT_F_IFADDR
        out["flags"][i] = flags
        fam = t.family or (t.to_min.version if t.to_min is not None else None)
        out["l3"][i] = L3.get(fam, 0)
    return out


def compile_ruleset(ruleset: Ruleset, interfaces: Interfaces | None = None) -> Program:
    """Check `ruleset` against the interface model and compile it (RulesetError when it cannot)."""
    return _Compiler(ruleset, interfaces or Interfaces()).compile()


# ---- display ------------------------------------------------------------------------------
_HP_NAMES = {v: k for k, v in _HP.items()}
_HP_TITLES = {_HP["raw"]: "prerouting, before conntrack", _HP["pre"]: "prerouting, after conntrack",
              _HP["dnat"]: "nat prerouting (new connections)", _HP["late"]: "prerouting, after dnat",
              _HP["snat"]: "nat postrouting (new connections)"}


def describe(prog: Program, counters: bool = False) -> list[str]:
    """The compiled rules, chain by chain in the order packets meet them: hook, priority, each
    rule as understood (and its counters when asked)."""
    lines = []
    order = [ci for g in range(len(_HP)) for ci in prog.base[prog.hp_first[g]:prog.hp_first[g + 1]]]
    shown = set()
    by_chain: dict[int, list[int]] = {}
    for ri, (chain, _) in enumerate(prog.rule_info):
        by_chain.setdefault(prog.chain_list.index(chain), []).append(ri)

    def show(ci: int, title: str):
        shown.add(ci)
        chain = prog.chain_list[ci]
        head = f"chain {chain.id}"
        if chain.is_base:
            head += f" (type {chain.type} hook {chain.hook} priority {chain.priority}; {title})"
        else:
            head += f" ({title})"
        lines.append(head)
        for ri in by_chain.get(ci, []):
            _, rule = prog.rule_info[ri]
            text = rule_text(prog, ri)
            if counters and rule.counter:
                p, b = (int(x) for x in prog.counters[ri])
                text += f"    [packets {p} bytes {b}]"
            if rule.loc is not None:
                text += f"    # {rule.loc.file}:{rule.loc.line}"      # where it was written
            lines.append(f"  {ri}: {text}")

    for ci in order:
        show(int(ci), _HP_TITLES[prog.chain_hook_point[int(ci)]])
    for ci, chain in enumerate(prog.chain_list):
        if ci in shown:
            continue
        if _skipped(chain):
            show(ci, "not run: a firewall's chain; fastct models conntrack and NAT")
        elif chain.is_base:
            show(ci, "never reached offline: no packet is for or from the gateway itself")
        else:
            show(ci, "regular chain, reached by jump/goto" if _is_target(prog, chain)
                 else "regular chain, never jumped to")
    return lines


def _is_target(prog: Program, chain: Chain) -> bool:
    return any(r.verdict in ("jump", "goto") and r.target == chain.name and c.table == chain.table
               and c.family == chain.family for c, r in prog.rule_info)


def rule_text(prog: Program, ri: int) -> str:
    """One rule as fastct understood it: matches, statements, verdict, in nft's words."""
    _, rule = prog.rule_info[ri]
    parts = []
    for m in rule.matches:             # (a repeated test is compiled once, see _emit)
        text = _match_text(m)
        if text not in parts:
            parts.append(text)
    if rule.counter:
        parts.append("counter")
    if rule.ct_zone_set is not None:
        parts.append(f"ct zone set {rule.ct_zone_set}")
    if rule.notrack:
        parts.append("notrack")
    if rule.meta_mark_set is not None:
        parts.append(f"meta mark set 0x{rule.meta_mark_set:08x}")
    if rule.ct_mark_set is not None:
        parts.append(f"ct mark set 0x{rule.ct_mark_set:08x}")
    if rule.ct_helper_set is not None:
        parts.append(f'ct helper set "{rule.ct_helper_set}"')
    if rule.nat is not None:
        parts.append(_nat_text(rule.nat))
    elif rule.verdict in ("jump", "goto"):
        parts.append(f"{rule.verdict} {rule.target}")
    elif rule.verdict is not None:
        parts.append(rule.verdict)
    return " ".join(parts) if parts else "(no match, no statement)"


def _pair_text(lo, hi) -> str:
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _set_text(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _match_text(m: Match) -> str:
    op = "!= " if m.negate else ""
    key = m.key
    if key in ("iifname", "oifname"):
        return f"{key} {op}" + _set_text([f'"{v}"' for v in m.values])
    if key in ("iif", "oif"):
        return f"{key} {op}" + _set_text([str(v) for v in m.values])
    if key in ("saddr", "daddr"):
        fam = "ip" if m.values[0][0].version == 4 else "ip6"
        return f"{fam} {key} {op}" + _set_text([_addr_pair_text(lo, hi) for lo, hi in m.values])
    if key == "nfproto":
        return f"meta nfproto {op}" + _set_text([f"ipv{v}" for v in m.values])
    if key == "l4proto":
        return f"meta l4proto {op}" + _set_text([_proto_text(lo, hi) for lo, hi in m.values])
    if key in ("ct state", "ct direction"):
        return f"{key} {op}" + ",".join(m.values)
    vals = _set_text([_pair_text(lo, hi) if key in ("sport", "dport", "ct zone")
                      else _pair_text(f"0x{lo:08x}", f"0x{hi:08x}") for lo, hi in m.values])
    if key in ("sport", "dport"):
        return f"th {key} {op}{vals}"
    if m.mask is not None and m.mask != 0xFFFFFFFF:
        return f"{key} and 0x{m.mask:08x} {'!=' if m.negate else '=='} {vals}"
    return f"{key} {op}{vals}"


def _addr_pair_text(lo, hi) -> str:
    if lo == hi:
        return str(lo)
    import ipaddress
    nets = list(ipaddress.summarize_address_range(lo, hi))
    return str(nets[0]) if len(nets) == 1 else f"{lo}-{hi}"


def _proto_text(lo: int, hi: int) -> str:
    from fastct.tracker import PROTOCOLS
    names = {v: k for k, v in PROTOCOLS.items()}
    if lo == hi:
        return names.get(lo, str(lo))
    return f"{lo}-{hi}"


def _nat_text(t: NatTarget) -> str:
    text = t.action
    if t.to_min is not None:
        fam = "ip" if t.to_min.version == 4 else "ip6"
        hi = t.to_max if t.to_max is not None else t.to_min
        addr = _pair_text(t.to_min, hi) if fam == "ip" else (
            f"[{t.to_min}]" if hi == t.to_min else f"[{t.to_min}]-[{hi}]")
        ports = f":{_pair_text(*t.to_ports)}" if t.to_ports else ""
        text += f" {fam} to {addr}{ports}"
    elif t.to_ports:
        text += f" to :{_pair_text(*t.to_ports)}"
    if t.flags:
        text += " " + ",".join(sorted(t.flags))
    return text
