"""nftables ruleset text -> `fastct.ruleset.Ruleset`.

`parse_nft(text, source)` reads a ruleset as `nft list ruleset` prints it or as people write it for
`nft -f` (a `#!` line, `#` comments, `flush ruleset`, `define NAME = VALUE` and `$NAME`, lines joined
by a trailing backslash, statements separated by newlines or `;`), plus the command forms
`add table`, `add chain`, `add set` and `add rule`.  `load_nft_file(path)` reads a file first.

The subset is what the engine can do (the contract is fastct/ruleset.py).  Anything outside it is a
`RulesetError` naming file, line, column and token; nothing is skipped silently, because a rule
that is dropped or half-read would make fastct disagree with the kernel without saying so.

Supported:

- tables of family ip, ip6, inet (omitted: ip); a table may be declared several times, its contents
  merge (as nft does);
- base chains `type nat|filter hook prerouting|input|forward|output|postrouting priority P;
  policy accept|drop;` and regular chains; P is a number, a name of PRIORITY_NAMES, or NAME +/- N;
- `ct helper NAME { type "ftp" protocol tcp; l3proto ip; }`;
- named sets of type ipv4_addr, ipv6_addr, inet_service, inet_proto, ifname, mark (or the `typeof`
  of a supported match), `flags interval|constant`, `elements = { ... }`, referenced as `@NAME`
  (also before their declaration, anywhere in the same table);
- matches: iifname / oifname (also `meta`), ip / ip6 saddr / daddr, meta l4proto, ip protocol,
  ip6 nexthdr, meta nfproto, tcp / udp / udplite / sctp / dccp / th sport / dport, ct state,
  ct direction, ct zone, ct mark, meta mark / mark (with `and MASK`), with `==` (or nothing, or
  `eq`) and `!=` (`ne`), single values, ranges, prefixes, anonymous sets, named sets, defines;
- statements: counter, ct mark set, meta mark set, ct zone set, ct helper set, notrack;
- terminals: snat, dnat, masquerade, redirect, and the verdicts accept, drop, return, continue,
  jump, goto, reject (its `with ...` is read and dropped: to fastct a reject is a drop).

Decisions where nft's language is wider or differs (nft 1.0.6 is the reference):

- Statements must come after all matches: the Rule form is "matches, then statements", so
  `counter ip saddr 10.0.0.1` (which counts packets the match then drops) is refused rather than
  reordered.  A statement after a terminal is refused, as nft refuses it.
- Only constants are accepted in `ct mark set` / `meta mark set` / `ct zone set`; no expressions
  (`ct mark set meta mark`, `... or 0x1`).
- A prefix with host bits set (`10.0.0.1/8`) is refused; nft 1.0.6 masks it silently, which hides
  typos.  Host names are not resolved (nft would ask DNS at load time).
- A port mapping in a NAT statement needs a (non-negated) l4proto match earlier in the rule, as
  nft requires ("transport protocol mapping is only valid after transport protocol match");
  `th dport` does not count, as in nft.
- snat / dnat need an address (`snat to :80`, which nft takes, is refused: fastct's NAT binding
  always has an address); `masquerade persistent` is refused (one address: it would do nothing,
  and fastct.nat refuses it too); a NAT statement must sit in a nat chain whose hook can do it
  (snat, masquerade: postrouting or input; dnat, redirect: prerouting or output), checked for
  regular chains through the base chains that jump or go to them, as the kernel checks on load.
- In an inet table snat / dnat with an address need `ip` or `ip6` (`dnat ip to ADDR`), as nft
  requires; in ip / ip6 tables the family comes from the address.
- `dstnat` names a priority only in prerouting and `srcnat` only in postrouting, as in nft.
- Table, chain and set names are bare identifiers that are not keywords (nft 1.0.6 refuses quoted
  names and keywords there); an unquoted interface name must look like one (`eth0`, `eth*`).
- Jumps must not loop and must not target a base chain, as the kernel refuses both.
- The last rule of a block may end at `}` without a newline or `;` (nft 1.0.6 insists on one),
  and anonymous sets in rules may span lines freely (nft takes one newline after a comma).
- `define` is global to the file (nft scopes a define inside a table block to that block); an
  expanded `$NAME` reports errors at the place it is used.
- Rule and chain `comment "..."`, `counter packets N bytes M`, set `size`, `policy` and
  `auto-merge` are read and ignored; interface names are kept as written (`"eth*"` is a prefix).
- Not supported (an error says so): families arp, bridge, netdev, `device`, maps and verdict maps,
  `iif`/`oif` (interface numbers; use iifname/oifname), other meta/ct/ip keys, log, limit, queue,
  quota, concatenations, set element options, `include`, `delete`, `insert`, other flush forms.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field

from fastct import nat as _nat
from fastct.ruleset import (CT_STATE_BITS, FAMILIES, PRIORITY_NAMES, Chain, Helper, Loc, Match,
                            NatTarget, Rule, Ruleset, RulesetError)

__all__ = ["parse_nft", "load_nft_file"]


# ---- tokens -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str        # "word", "string", "var", "punct", "nl", "eof"
    text: str        # a string's contents without its quotes; a var's name without '$'
    raw: str         # as written, for error messages
    line: int
    col: int
    start: int       # offsets into the source text, for Rule.text
    end: int


# Characters a bare word may contain: names, numbers, addresses (IPv6 with brackets for NAT
# targets), prefixes, ranges, wildcards and set references.  '-' inside a word belongs to it
# (`1000-2000`, `fully-random`, `ipv6-icmp`); standing alone it is an operator (`dstnat - 10`).
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "_.:/-*[]%@")
_WORD_START = _WORD_CHARS - frozenset("-")
_TWO_CHAR_PUNCT = ("==", "!=", "<=", ">=", "<<", ">>")
_ONE_CHAR_PUNCT = "{};,=!<>&|^()+-"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _tokenize(text: str, source: str) -> list[Token]:
    tokens: list[Token] = []
    i, line, line_start, n = 0, 1, 0, len(text)

    def tok(kind: str, value: str, start: int, end: int) -> Token:
        return Token(kind, value, text[start:end], line, start - line_start + 1, start, end)

    while i < n:
        ch = text[i]
        if ch in " \t\r":
            i += 1
        elif ch == "\\" and text.startswith("\n", i + 1):       # line continuation
            i += 2
            line, line_start = line + 1, i
        elif ch == "\\" and text.startswith("\r\n", i + 1):
            i += 3
            line, line_start = line + 1, i
        elif ch == "\n":
            tokens.append(tok("nl", "\n", i, i + 1))
            i += 1
            line, line_start = line + 1, i
        elif ch == "#":                                          # comment to the end of the line
            while i < n and text[i] != "\n":
                i += 1
        elif ch == '"':
            close = text.find('"', i + 1)
            newline = text.find("\n", i + 1)
            if close < 0 or (0 <= newline < close):
                raise RulesetError(Loc(source, line, i - line_start + 1),
                                   "unterminated string (no closing '\"' on this line)", '"')
            tokens.append(tok("string", text[i + 1:close], i, close + 1))
            i = close + 1
        elif ch == "$":
            m = _IDENT.match(text, i + 1)
            if not m:
                raise RulesetError(Loc(source, line, i - line_start + 1),
                                   "expected a variable name after '$'", text[i:i + 2].strip() or "$")
            tokens.append(tok("var", m.group(), i, m.end()))
            i = m.end()
        elif ch in _WORD_START or (ch == "-" and i + 1 < n and text[i + 1].isdigit()):
            j = i + 1
            while j < n and text[j] in _WORD_CHARS:
                j += 1
            tokens.append(tok("word", text[i:j], i, j))
            i = j
        elif text.startswith(_TWO_CHAR_PUNCT, i):
            tokens.append(tok("punct", text[i:i + 2], i, i + 2))
            i += 2
        elif ch in _ONE_CHAR_PUNCT:
            tokens.append(tok("punct", ch, i, i + 1))
            i += 1
        else:
            raise RulesetError(Loc(source, line, i - line_start + 1), "unexpected character", ch)
    tokens.append(tok("eof", "", n, n))
    return tokens


# ---- value kinds ---------------------------------------------------------------------------------
# Set types (nft's names) and `typeof` expressions -> the value kind of this module.
_SET_TYPES = {"ipv4_addr": "addr4", "ipv6_addr": "addr6", "inet_service": "port",
              "inet_proto": "proto", "ifname": "ifname", "mark": "mark"}
_TYPEOF = {("ip", "saddr"): "addr4", ("ip", "daddr"): "addr4", ("ip6", "saddr"): "addr6",
           ("ip6", "daddr"): "addr6", ("meta", "l4proto"): "proto", ("ip", "protocol"): "proto",
           ("ip6", "nexthdr"): "proto", ("iifname",): "ifname", ("oifname",): "ifname",
           ("meta", "iifname"): "ifname", ("meta", "oifname"): "ifname", ("meta", "mark"): "mark",
           ("mark",): "mark", ("ct", "mark"): "mark"}
_KIND_NAMES = {"addr4": "ipv4_addr", "addr6": "ipv6_addr", "port": "inet_service",
               "proto": "inet_proto", "ifname": "ifname", "mark": "mark"}
_PORT_PROTOCOLS = {"tcp": 6, "udp": 17, "udplite": 136, "sctp": 132, "dccp": 33}
# Protocol names nft knows as keywords; other names are looked up in /etc/protocols.
_PROTO_KEYWORDS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "dccp": 33, "gre": 47, "esp": 50,
                   "ah": 51, "icmpv6": 58, "ipv6-icmp": 58, "comp": 108, "sctp": 132, "udplite": 136}
_NFPROTO = {"ipv4": 4, "ipv6": 6}
_ALL_FAMILIES = FAMILIES + ("arp", "bridge", "netdev")
_NAT_FLAGS = ("persistent", "random", "fully-random")
# Where the kernel lets each NAT statement run (nf_nat's hook masks for the nat expressions).
_NAT_HOOKS = {"snat": ("postrouting", "input"), "masquerade": ("postrouting", "input"),
              "dnat": ("prerouting", "output"), "redirect": ("prerouting", "output")}
_NAT_CHAIN_HOOKS = ("prerouting", "input", "output", "postrouting")
_PRIORITY_HOOKS = {"dstnat": "prerouting", "srcnat": "postrouting"}
# `reject with icmp|icmpv6|icmpx CODE`: the names nft knows (nft(8), REJECT STATEMENT).
_REJECT_CODES = {
    "icmp": ("net-unreachable", "host-unreachable", "prot-unreachable", "port-unreachable",
             "net-prohibited", "host-prohibited", "admin-prohibited"),
    "icmpv6": ("no-route", "admin-prohibited", "addr-unreachable", "port-unreachable",
               "policy-fail", "reject-route"),
    "icmpx": ("port-unreachable", "admin-prohibited", "no-route", "host-unreachable"),
}
# Words nft reads as keywords, so not as an unquoted interface name.
_KEYWORDS = frozenset({
    "accept", "drop", "return", "continue", "jump", "goto", "reject", "queue", "counter",
    "notrack", "snat", "dnat", "masquerade", "redirect", "log", "limit", "comment", "ct", "meta",
    "mark", "ip", "ip6", "inet", "tcp", "udp", "udplite", "sctp", "dccp", "th", "iifname",
    "oifname", "iif", "oif", "map", "vmap", "set", "to", "and", "or", "eq", "ne"})
# ... and those it does not take as a table, chain, set or helper name either.
_NAME_KEYWORDS = frozenset({"table", "chain", "type", "hook", "priority", "policy", "flags",
                            "elements", "typeof", "define", "add", "flush"})


# ---- the parser's own records --------------------------------------------------------------------
@dataclass
class _Set:
    name: str
    kind: str | None = None
    interval: bool = False
    values: tuple = ()
    loc: Loc | None = None


@dataclass
class _Table:
    family: str
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[str, _Set] = field(default_factory=dict)
    helpers: dict[str, Helper] = field(default_factory=dict)

    def describe(self) -> str:
        return f"table {self.family} {self.name}"


@dataclass
class _SetRef:
    """A `@NAME` whose values are filled in at the end (the set may be declared later)."""
    table: _Table
    rule: Rule
    index: int
    kind: str
    token: Token
    loc: Loc


@dataclass
class _RuleState:
    rule: Rule
    matches: list[Match] = field(default_factory=list)
    statement: Token | None = None      # the first statement seen (matches may not follow)
    terminal: Token | None = None       # the NAT or verdict token (nothing may follow)


class _Parser:
    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        self.tokens = _tokenize(text, source)
        self.pos = 0
        self.last: Token | None = None        # the last token consumed
        self.defines: dict[str, list[Token]] = {}
        self.tables: dict[tuple[str, str], _Table] = {}
        self.ruleset = Ruleset(source=source)
        self.set_refs: list[_SetRef] = []
        self.jumps: list[tuple[_Table, Chain, Rule, Token]] = []
        self.helper_refs: list[tuple[_Table, Rule, str, Token]] = []
        self.nat_in_regular: list[tuple[_Table, Chain, str, Token]] = []

    # -- cursor --
    def loc(self, tok: Token) -> Loc:
        return Loc(self.source, tok.line, tok.col)

    def error(self, tok: Token, message: str) -> RulesetError:
        if tok.kind == "eof":
            return RulesetError(self.loc(tok), f"{message}: unexpected end of input", None)
        if tok.kind == "nl":
            return RulesetError(self.loc(tok), f"{message}: unexpected end of line", "\\n")
        return RulesetError(self.loc(tok), message, tok.raw)

    def peek(self, ahead: int = 0) -> Token:
        # `$NAME` is replaced by the define's tokens when first looked at, so every part of the
        # parser sees values, not variables.  The copies carry the use's place: errors then point
        # at the rule that used the value, and Rule.text keeps `$NAME` as written.
        while True:
            for k in range(ahead + 1):
                tok = self.tokens[self.pos + k]
                if tok.kind == "var":
                    self._expand(self.pos + k)
                    break
            else:
                return self.tokens[self.pos + ahead]

    def _expand(self, index: int) -> None:
        use = self.tokens[index]
        if use.text not in self.defines:
            raise RulesetError(self.loc(use), f"undefined variable '${use.text}'", use.raw)
        copies = [dataclasses.replace(t, line=use.line, col=use.col, start=use.start, end=use.end)
                  for t in self.defines[use.text]]
        self.tokens[index:index + 1] = copies

    def next(self) -> Token:
        tok = self.peek()
        if tok.kind != "eof":
            self.pos += 1
        self.last = tok
        return tok

    def at(self, *texts: str) -> bool:
        tok = self.peek()
        return tok.kind in ("word", "punct") and tok.text in texts

    def at_end(self) -> bool:
        """At the end of a statement: newline, ';', '}' or the end of input."""
        tok = self.peek()
        return tok.kind in ("nl", "eof") or (tok.kind == "punct" and tok.text in (";", "}"))

    def accept(self, text: str) -> Token | None:
        if self.at(text):
            return self.next()
        return None

    def expect(self, text: str, what: str | None = None) -> Token:
        tok = self.peek()
        if tok.kind in ("word", "punct") and tok.text == text:
            return self.next()
        raise self.error(tok, f"expected {what or repr(text)}")

    def expect_word(self, what: str) -> Token:
        tok = self.peek()
        if tok.kind != "word":
            raise self.error(tok, f"expected {what}")
        return self.next()

    def expect_name(self, what: str) -> Token:
        """A table, chain, set or helper name: a bare identifier (nft 1.0.6 refuses quoted names)."""
        tok = self.peek()
        if tok.kind == "word" and _IDENT.fullmatch(tok.text.replace("-", "_")):
            if tok.text in _KEYWORDS or tok.text in _NAME_KEYWORDS:
                raise self.error(tok, f"expected {what} ('{tok.text}' is a keyword: quote it)")
            return self.next()
        raise self.error(tok, f"expected {what}")

    def skip_separators(self) -> None:
        while self.peek().kind == "nl" or self.at(";"):
            self.next()

    def skip_newlines(self) -> None:
        while self.peek().kind == "nl":
            self.next()

    def end_statement(self) -> None:
        """A statement ends at a newline, ';', or a '}' that closes its block (left in place)."""
        if not self.at_end():
            raise self.error(self.peek(), "expected a newline or ';'")

    def open_block(self) -> Token:
        return self.expect("{")

    def close_block(self, opening: Token) -> bool:
        """Consumes '}' if it comes next; at the end of input the block is unterminated."""
        tok = self.peek()
        if tok.kind == "eof":
            raise RulesetError(self.loc(opening), "unterminated block: no closing '}'", "{")
        if tok.kind == "punct" and tok.text == "}":
            self.next()
            return True
        return False

    # -- top level --
    def parse(self) -> Ruleset:
        while True:
            self.skip_separators()
            tok = self.peek()
            if tok.kind == "eof":
                break
            self.top_statement(tok)
            self.end_statement()
        self.finish()
        return self.ruleset

    def top_statement(self, tok: Token) -> None:
        word = tok.text if tok.kind == "word" else None
        if word == "table":
            self.next()
            self.table_declaration()
        elif word == "define":
            self.next()
            self.define()
        elif word == "flush":
            self.next()
            # Parsing starts from an empty ruleset, so `flush ruleset` has nothing to remove.
            self.expect("ruleset", "'ruleset' (only `flush ruleset` is supported)")
        elif word == "add":
            self.next()
            self.add_command()
        elif word in ("include", "delete", "insert", "replace", "create", "destroy", "reset",
                      "list", "redefine", "undefine"):
            raise self.error(tok, f"'{word}' is not supported")
        else:
            raise self.error(tok, "expected 'table', 'define', 'flush ruleset' or 'add'")

    def define(self) -> None:
        name = self.expect_word("a variable name")
        if not _IDENT.fullmatch(name.text):
            raise self.error(name, "expected a variable name")
        if name.text in self.defines:
            raise self.error(name, f"variable '{name.text}' is already defined")
        self.expect("=")
        value: list[Token] = []
        depth = 0
        opening = None
        while True:
            tok = self.peek()
            if tok.kind == "eof" and depth:
                raise RulesetError(self.loc(opening), "unterminated block: no closing '}'", "{")
            if depth == 0 and (tok.kind in ("nl", "eof") or (tok.kind == "punct" and tok.text in (";", "}"))):
                break
            self.next()
            if tok.kind == "punct" and tok.text == "{":
                opening = opening if depth else tok
                depth += 1
            elif tok.kind == "punct" and tok.text == "}":
                depth -= 1
            value.append(tok)
        if not value or (value[0].kind == "punct" and value[0].text != "{"):
            raise self.error(value[0] if value else self.peek(), "expected a value")
        self.defines[name.text] = value

    def family_and_name(self, what: str) -> tuple[str, Token]:
        """[FAMILY] NAME: nft reads a family keyword here as the family, never as a name."""
        first = self.peek()
        if first.kind == "word" and first.text in _ALL_FAMILIES:
            self.next()
            if first.text not in FAMILIES:
                raise self.error(first, f"family '{first.text}' is not supported (only ip, ip6, inet)")
            return first.text, self.expect_name(what)
        return "ip", self.expect_name(what)

    def table(self, family: str, name: Token) -> _Table:
        key = (family, name.text)
        if key not in self.tables:
            self.tables[key] = _Table(family, name.text)
        return self.tables[key]

    def existing_table(self, family: str, name: Token) -> _Table:
        table = self.tables.get((family, name.text))
        if table is None:
            raise self.error(name, f"table {family} {name.text} is not defined")
        return table

    def table_declaration(self) -> None:
        family, name = self.family_and_name("a table name")
        table = self.table(family, name)
        if self.at("{"):
            self.table_body(table)

    def table_body(self, table: _Table) -> None:
        opening = self.open_block()
        while True:
            self.skip_separators()
            if self.close_block(opening):
                return
            self.table_item(table)
            self.end_statement()

    def table_item(self, table: _Table) -> None:
        tok = self.next()
        word = tok.text if tok.kind == "word" else None
        if word == "chain":
            self.chain_declaration(table, tok, self.expect_name("a chain name"))
        elif word == "set":
            self.set_declaration(table, self.expect_name("a set name"))
        elif word == "ct":
            kind = self.expect_word("'helper'")
            if kind.text != "helper":
                raise self.error(kind, f"ct {kind.text} objects are not supported (only ct helper)")
            self.helper_declaration(table, tok)
        elif word == "comment":
            self.string("a comment string")
        elif word == "define":
            self.define()
        elif word in ("map", "vmap"):
            raise self.error(tok, "maps are not supported")
        elif word in ("flags", "counter", "quota", "limit", "flowtable", "synproxy", "secmark"):
            raise self.error(tok, f"table '{word}' declarations are not supported")
        else:
            raise self.error(tok, "expected 'chain', 'set', 'ct helper' or 'comment' in a table")

    def string(self, what: str) -> Token:
        tok = self.peek()
        if tok.kind != "string":
            raise self.error(tok, f"expected {what} (in double quotes)")
        return self.next()

    # -- add commands --
    def add_command(self) -> None:
        what = self.expect_word("'table', 'chain', 'set' or 'rule'")
        if what.text == "table":
            self.table_declaration()
        elif what.text in ("chain", "set", "rule"):
            family, table_name = self.family_and_name("a table name")
            table = self.existing_table(family, table_name)
            name = self.expect_name(f"a {what.text} name")
            if what.text == "chain":
                self.chain_declaration(table, what, name, optional_body=True)
            elif what.text == "set":
                self.set_declaration(table, name)
            else:
                chain = table.chains.get(name.text)
                if chain is None:
                    raise self.error(name, f"chain '{name.text}' is not defined in {table.describe()}")
                chain.rules.append(self.rule(table, chain))
        else:
            raise self.error(what, "expected 'table', 'chain', 'set' or 'rule' (other add commands "
                                   "are not supported)")

    # -- chains --
    def chain_declaration(self, table: _Table, keyword: Token, name: Token,
                          optional_body: bool = False) -> None:
        chain = table.chains.get(name.text)
        if chain is None:
            chain = Chain(table.family, table.name, name.text, loc=self.loc(keyword))
            table.chains[name.text] = chain
            self.ruleset.chains.append(chain)
        if optional_body and not self.at("{"):
            return
        opening = self.open_block()
        header_seen = False
        while True:
            self.skip_separators()
            if self.close_block(opening):
                return
            tok = self.peek()
            if tok.kind == "word" and tok.text == "type":
                self.chain_header(chain, header_seen)
                header_seen = True
            elif tok.kind == "word" and tok.text == "policy":
                self.chain_policy(chain)
            elif tok.kind == "word" and tok.text == "comment":
                self.next()
                self.string("a comment string")
            elif tok.kind == "word" and tok.text == "device":
                raise self.error(tok, "'device' is for netdev chains, which are not supported")
            else:
                chain.rules.append(self.rule(table, chain))
            self.end_statement()

    def chain_header(self, chain: Chain, header_seen: bool) -> None:
        start = self.next()
        if header_seen:
            raise self.error(start, "the chain's type is given twice")
        ctype = self.expect_word("a chain type (filter or nat)")
        if ctype.text not in ("filter", "nat"):
            raise self.error(ctype, "expected a chain type: filter or nat")
        self.expect("hook")
        hook = self.expect_word("a hook")
        allowed = _NAT_CHAIN_HOOKS if ctype.text == "nat" else \
            ("prerouting", "input", "forward", "output", "postrouting")
        if hook.text not in allowed:
            raise self.error(hook, f"expected a hook for a {ctype.text} chain: {', '.join(allowed)}")
        if self.at("device"):
            raise self.error(self.peek(), "'device' is for netdev chains, which are not supported")
        self.expect("priority", "'priority' (a base chain needs one)")
        priority = self.priority(hook.text)
        if chain.hook is not None and (chain.type, chain.hook, chain.priority) != \
                (ctype.text, hook.text, priority):
            raise self.error(start, f"chain '{chain.name}' was declared with another type, hook "
                                    "or priority")
        if chain.hook is None and chain.rules:
            raise self.error(start, f"chain '{chain.name}' was declared as a regular chain")
        chain.type, chain.hook, chain.priority = ctype.text, hook.text, priority

    def priority(self, hook: str) -> int:
        tok = self.expect_word("a priority (a number or a name)")
        if tok.text in PRIORITY_NAMES:
            needed = _PRIORITY_HOOKS.get(tok.text)
            if needed is not None and hook != needed:
                raise self.error(tok, f"priority '{tok.text}' is only valid in {needed} chains")
            base = PRIORITY_NAMES[tok.text]
            if self.at("+", "-"):
                sign = 1 if self.next().text == "+" else -1
                return base + sign * self.integer(self.expect_word("a number"), 0, 2**31 - 1)
            nxt = self.peek()
            if nxt.kind == "word" and nxt.text.startswith("-"):      # `dstnat -10`
                return base - self.integer(self.next(), 0, 2**31 - 1, nxt.text[1:])
            return base
        if re.fullmatch(r"-?[0-9]+", tok.text):
            return self.integer(tok, -2**31, 2**31 - 1)
        raise self.error(tok, f"expected a priority: a number or one of {', '.join(PRIORITY_NAMES)}")

    def chain_policy(self, chain: Chain) -> None:
        tok = self.next()
        if chain.hook is None:
            raise self.error(tok, "a policy is only for base chains (give type, hook and priority "
                                  "first)")
        value = self.expect_word("accept or drop")
        if value.text not in ("accept", "drop"):
            raise self.error(value, "expected a policy: accept or drop")
        chain.policy = value.text

    # -- sets and helpers --
    def set_declaration(self, table: _Table, name: Token) -> None:
        opening = self.open_block()
        s = table.sets.get(name.text) or _Set(name.text, loc=self.loc(name))
        table.sets[name.text] = s
        pending: list[tuple[Token, list]] = []
        while True:
            self.skip_separators()
            if self.close_block(opening):
                break
            tok = self.next()
            if tok.text == "type" and tok.kind == "word":
                kind_tok = self.expect_word("a set type")
                if self.at("."):
                    raise self.error(self.peek(), "concatenated set types are not supported")
                kind = _SET_TYPES.get(kind_tok.text)
                if kind is None:
                    raise self.error(kind_tok, "expected a set type: " + ", ".join(_SET_TYPES))
                self.set_kind(s, kind, kind_tok)
            elif tok.text == "typeof" and tok.kind == "word":
                self.set_kind(s, self.typeof(), tok)
            elif tok.text == "flags" and tok.kind == "word":
                self.set_flags(s)
            elif tok.text == "elements" and tok.kind == "word":
                if s.kind is None:
                    raise self.error(tok, "the set's type must come before its elements")
                self.expect("=")
                pending.append((tok, self.set_elements(s)))
            elif tok.text in ("size", "policy") and tok.kind == "word":
                self.expect_word(f"a {tok.text}")
            elif tok.text == "auto-merge" and tok.kind == "word":
                pass             # (it only changes how nft stores adjacent elements, not matching)
            elif tok.text == "comment" and tok.kind == "word":
                self.string("a comment string")
            else:
                raise self.error(tok, "expected 'type', 'typeof', 'flags', 'elements' or 'comment' "
                                      "in a set")
            self.end_statement()
        if s.kind is None:
            raise self.error(name, f"set '{name.text}' has no type")
        values = list(s.values)
        for tok, items in pending:
            values.extend(items)
        s.values = tuple(values)

    def set_kind(self, s: _Set, kind: str, tok: Token) -> None:
        if s.kind is not None and s.kind != kind:
            raise self.error(tok, f"set '{s.name}' was declared with type {_KIND_NAMES[s.kind]}")
        s.kind = kind

    def typeof(self) -> str:
        first = self.expect_word("a match expression")
        words = [first.text]
        if first.text in ("ip", "ip6", "meta", "ct"):
            words.append(self.expect_word("a match key").text)
        kind = _TYPEOF.get(tuple(words))
        if kind is None:
            raise self.error(first, "this typeof expression is not supported (use ip/ip6 saddr/daddr, "
                                    "meta l4proto, iifname, oifname, meta mark or ct mark)")
        return kind

    def set_flags(self, s: _Set) -> None:
        while True:
            flag = self.expect_word("a set flag")
            if flag.text == "interval":
                s.interval = True
            elif flag.text != "constant":
                raise self.error(flag, "expected a set flag: interval or constant (dynamic and "
                                       "timeout sets are not supported)")
            if not self.accept(","):
                return

    def set_elements(self, s: _Set) -> list:
        opening = self.expect("{", "'{'")
        items: list = []
        for tok, value in self.element_list(opening, s.kind):
            if isinstance(value, tuple) and value[0] != value[1] and s.kind != "ifname" and \
                    not s.interval:
                raise self.error(tok, f"a range or prefix in set '{s.name}' needs 'flags interval'")
            items.append(value)
        return items

    def helper_declaration(self, table: _Table, keyword: Token) -> None:
        name = self.expect_name("a helper name")
        opening = self.open_block()
        htype = proto = None
        while True:
            self.skip_separators()
            if self.close_block(opening):
                break
            tok = self.next()
            if tok.kind == "word" and tok.text == "type":
                htype = self.string("a helper type such as \"ftp\"").text
                self.expect("protocol")
                proto_tok = self.expect_word("tcp or udp")
                if proto_tok.text not in ("tcp", "udp"):
                    raise self.error(proto_tok, "expected a helper protocol: tcp or udp")
                proto = proto_tok.text
            elif tok.kind == "word" and tok.text == "l3proto":
                # The helper's layer 3 family: fastct's helpers are the same for both.
                fam = self.expect_word("ip, ip6 or inet")
                if fam.text not in FAMILIES:
                    raise self.error(fam, "expected ip, ip6 or inet")
            elif tok.kind == "word" and tok.text == "comment":
                self.string("a comment string")
            else:
                raise self.error(tok, "expected 'type' or 'l3proto' in a ct helper")
            self.end_statement()
        if htype is None:
            raise self.error(name, f"ct helper '{name.text}' has no type")
        if name.text in table.helpers:
            raise self.error(name, f"ct helper '{name.text}' is already defined in {table.describe()}")
        helper = Helper(table.family, table.name, name.text, htype, proto, self.loc(keyword))
        table.helpers[name.text] = helper
        self.ruleset.helpers.append(helper)

    # -- rules --
    def rule(self, table: _Table, chain: Chain) -> Rule:
        first = self.peek()
        st = _RuleState(Rule(loc=self.loc(first)))
        if self.at_end():
            raise self.error(first, "expected a rule")
        while not self.at_end():
            tok = self.peek()
            if st.terminal is not None and not (tok.kind == "word" and tok.text == "comment"):
                raise self.error(tok, "a statement after a terminal statement (it would have no "
                                      "effect)")
            if tok.kind != "word":
                raise self.error(tok, "expected a match or a statement")
            self.rule_item(table, chain, st, tok)
        st.rule.matches = tuple(st.matches)
        raw = self.text[first.start:self.last.end]
        st.rule.text = re.sub(r"[ \t]*\\\r?\n\s*", " ", raw).strip()
        return st.rule

    def rule_item(self, table: _Table, chain: Chain, st: _RuleState, tok: Token) -> None:
        word = tok.text
        if word == "comment":
            self.next()
            self.string("a comment string")
            if not self.at_end():
                raise self.error(self.peek(), "expected the end of the rule after its comment")
        elif word in ("ct", "meta", "mark") and self.is_set_statement(word):
            self.statement(st, tok)
            self.set_statement(table, st)
        elif word in ("counter", "notrack"):
            self.statement(st, tok)
            self.next()
            if word == "counter":
                self.counter(st)
            else:
                self.flag_once(st, tok, "notrack")
        elif word in ("snat", "dnat", "masquerade", "redirect"):
            self.terminal(st, tok)
            st.rule.nat = self.nat(table, chain, st)
        elif word in ("accept", "drop", "return", "continue", "jump", "goto", "reject"):
            self.terminal(st, tok)
            self.verdict(table, chain, st)
        elif word in ("log", "limit", "queue", "quota", "meter", "dup", "fwd", "tproxy", "synproxy",
                      "set", "update", "add", "delete", "flow", "xt"):
            raise self.error(tok, f"the '{word}' statement is not supported")
        else:
            if st.statement is not None:
                raise self.error(tok, "a match after a statement is not supported (fastct's rules "
                                      "are matches, then statements)")
            self.match(table, st)

    def is_set_statement(self, word: str) -> bool:
        ahead = 2 if word in ("ct", "meta") else 1
        tok = self.peek(ahead)
        return tok.kind == "word" and tok.text == "set"

    def statement(self, st: _RuleState, tok: Token) -> None:
        if st.statement is None:
            st.statement = tok

    def terminal(self, st: _RuleState, tok: Token) -> None:
        self.statement(st, tok)
        st.terminal = tok

    def flag_once(self, st: _RuleState, tok: Token, name: str) -> None:
        if getattr(st.rule, name):
            raise self.error(tok, f"'{name}' given twice in one rule")
        setattr(st.rule, name, True)

    def counter(self, st: _RuleState) -> None:
        self.flag_once(st, self.last, "counter")
        if self.accept("packets"):           # nft's listing: counter packets N bytes M (ignored)
            self.integer(self.expect_word("a packet count"), 0, 2**64 - 1)
            self.expect("bytes")
            self.integer(self.expect_word("a byte count"), 0, 2**64 - 1)
        elif self.at("name"):
            raise self.error(self.peek(), "named counters are not supported")

    def set_statement(self, table: _Table, st: _RuleState) -> None:
        first = self.next()
        key = first.text if first.text == "mark" else f"{first.text} {self.expect_word('a key').text}"
        self.expect("set")
        if key == "ct helper":
            name = self.peek()
            if name.kind not in ("string", "word"):
                raise self.error(name, "expected a ct helper name")
            self.next()
            self.set_field(st, first, "ct_helper_set", name.text)
            self.helper_refs.append((table, st.rule, name.text, first))
        elif key in ("ct mark", "meta mark", "mark", "ct zone"):
            bits = 16 if key == "ct zone" else 32
            value_tok = self.peek()
            if value_tok.kind != "word" or not re.fullmatch(r"(0x[0-9a-fA-F]+|[0-9]+)", value_tok.text):
                raise self.error(value_tok, f"expected a constant value for {key} set (expressions "
                                            "are not supported)")
            value = self.integer(self.next(), 0, 2**bits - 1)
            if self.at("and", "or", "xor", "&", "|", "^", "<<", ">>"):
                raise self.error(self.peek(), f"only a constant value can be set ({key} set)")
            name = {"ct mark": "ct_mark_set", "ct zone": "ct_zone_set"}.get(key, "meta_mark_set")
            self.set_field(st, first, name, value)
        else:
            raise self.error(first, f"'{key} set' is not supported (only ct mark, meta mark, "
                                    "ct zone and ct helper can be set)")

    def set_field(self, st: _RuleState, tok: Token, name: str, value) -> None:
        if getattr(st.rule, name) is not None:
            raise self.error(tok, "the same value is set twice in one rule")
        setattr(st.rule, name, value)

    def verdict(self, table: _Table, chain: Chain, st: _RuleState) -> None:
        tok = self.next()
        st.rule.verdict = tok.text
        if tok.text in ("jump", "goto"):
            target = self.expect_name("a chain name")
            st.rule.target = target.text
            self.jumps.append((table, chain, st.rule, tok))
        elif tok.text == "reject" and self.accept("with"):
            # The ICMP type or TCP reset sent back does not matter to fastct: the packet is dropped.
            how = self.expect_word("icmp, icmpv6, icmpx or tcp")
            if how.text == "tcp":
                self.expect("reset")
            elif how.text in ("icmp", "icmpv6", "icmpx"):
                if self.at("type", "code"):
                    self.next()
                code = self.expect_word("an ICMP code")
                if code.text not in _REJECT_CODES[how.text] and not code.text.isdigit():
                    raise self.error(code, f"expected an {how.text} code: "
                                           + ", ".join(_REJECT_CODES[how.text]))
            else:
                raise self.error(how, "expected icmp, icmpv6, icmpx or tcp after 'reject with'")

    # -- matches --
    def match(self, table: _Table, st: _RuleState) -> None:
        tok = self.next()
        word, loc = tok.text, self.loc(tok)
        if word in ("iifname", "oifname"):
            self.add_match(table, st, loc, word, "ifname")
        elif word in ("iif", "oif"):
            raise self.error(tok, f"'{word}' matches interface numbers; use '{word}name'")
        elif word == "mark":
            self.mark_match(table, st, loc, "meta mark")
        elif word == "meta":
            self.meta_match(table, st, loc)
        elif word in ("ip", "ip6"):
            self.ip_match(table, st, loc, tok)
        elif word in _PORT_PROTOCOLS or word == "th":
            self.port_match(table, st, loc, tok)
        elif word == "ct":
            self.ct_match(table, st, loc)
        else:
            raise self.error(tok, "unknown statement")

    def meta_match(self, table: _Table, st: _RuleState, loc: Loc) -> None:
        key = self.expect_word("a meta key")
        if key.text in ("iifname", "oifname"):
            self.add_match(table, st, loc, key.text, "ifname")
        elif key.text in ("iif", "oif"):
            raise self.error(key, f"'meta {key.text}' matches interface numbers; use '{key.text}name'")
        elif key.text == "l4proto":
            self.add_match(table, st, loc, "l4proto", "proto")
        elif key.text == "nfproto":
            self.add_match(table, st, loc, "nfproto", "nfproto")
        elif key.text == "mark":
            self.mark_match(table, st, loc, "meta mark")
        else:
            raise self.error(key, "unsupported meta key (iifname, oifname, l4proto, nfproto, mark)")

    def ct_match(self, table: _Table, st: _RuleState, loc: Loc) -> None:
        key = self.expect_word("a ct key")
        if key.text == "state":
            self.add_match(table, st, loc, "ct state", "ctstate")
        elif key.text == "direction":
            self.add_match(table, st, loc, "ct direction", "direction")
        elif key.text == "zone":
            self.add_match(table, st, loc, "ct zone", "zone")
        elif key.text == "mark":
            self.mark_match(table, st, loc, "ct mark")
        else:
            raise self.error(key, "unsupported ct key (state, direction, zone, mark)")

    def ip_match(self, table: _Table, st: _RuleState, loc: Loc, tok: Token) -> None:
        version = 4 if tok.text == "ip" else 6
        if table.family != "inet" and table.family != tok.text:
            raise self.error(tok, f"'{tok.text}' matches {'IPv4' if version == 4 else 'IPv6'} "
                                  f"packets, which a table of family {table.family} never sees")
        key = self.expect_word("saddr, daddr or " + ("protocol" if version == 4 else "nexthdr"))
        if key.text in ("saddr", "daddr"):
            self.add_match(table, st, loc, key.text, f"addr{version}")
        elif key.text == ("protocol" if version == 4 else "nexthdr"):
            # The protocol field only exists in that IP version: in an inet table the match also
            # tests the version (nft adds the same dependency).
            if table.family == "inet":
                st.matches.append(Match("nfproto", (version,), loc=loc))
            self.add_match(table, st, loc, "l4proto", "proto")
        else:
            raise self.error(key, f"unsupported {tok.text} key (saddr, daddr, "
                                  f"{'protocol' if version == 4 else 'nexthdr'})")

    def port_match(self, table: _Table, st: _RuleState, loc: Loc, tok: Token) -> None:
        key = self.expect_word("sport or dport")
        if key.text not in ("sport", "dport"):
            raise self.error(key, f"unsupported {tok.text} key (sport, dport)")
        if tok.text != "th":         # `th` is any transport header: no protocol implied
            number = _PORT_PROTOCOLS[tok.text]
            st.matches.append(Match("l4proto", ((number, number),), loc=loc))
        self.add_match(table, st, loc, key.text, "port")

    def mark_match(self, table: _Table, st: _RuleState, loc: Loc, key: str) -> None:
        mask = None
        if self.at("and", "&"):
            self.next()
            mask = self.integer(self.expect_word("a mask"), 0, 2**32 - 1)
        self.add_match(table, st, loc, key, "mark", mask)

    def add_match(self, table: _Table, st: _RuleState, loc: Loc, key: str, kind: str,
                  mask: int | None = None) -> None:
        negate = self.relation()
        tok = self.peek()
        if tok.kind == "word" and tok.text.startswith("@"):
            self.next()
            st.matches.append(Match(key, (), negate, mask, loc))
            self.set_refs.append(_SetRef(table, st.rule, len(st.matches) - 1, kind, tok, loc))
            return
        if tok.kind == "word" and tok.text in ("map", "vmap"):
            raise self.error(tok, "maps and verdict maps are not supported")
        values = self.values(kind)
        if kind in ("addr4", "addr6", "nfproto"):
            self.check_family(table, kind, tok, values)
        st.matches.append(Match(key, values, negate, mask, loc))

    def relation(self) -> bool:
        """An optional relational operator; True for `!=`."""
        tok = self.peek()
        if tok.kind in ("punct", "word") and tok.text in ("==", "eq"):
            self.next()
            return False
        if tok.kind in ("punct", "word") and tok.text in ("!=", "ne"):
            self.next()
            return True
        if tok.kind in ("punct", "word") and tok.text in ("<", ">", "<=", ">=", "lt", "gt", "le",
                                                          "ge", "!"):
            raise self.error(tok, "only == and != are supported (write a range instead)")
        return False

    def check_family(self, table: _Table, kind: str, tok: Token, values: tuple) -> None:
        if kind == "nfproto" and table.family != "inet":
            wrong = 6 if table.family == "ip" else 4
            if wrong in values:
                raise self.error(tok, f"a table of family {table.family} never sees "
                                      f"IPv{wrong} packets")

    # -- values --
    def values(self, kind: str) -> tuple:
        """One value, a comma list (ct state), or an anonymous set `{ a, b-c, ... }`."""
        if self.at("{"):
            opening = self.next()
            return tuple(_dedup(v for _, v in self.element_list(opening, kind)))
        out = [self.element(kind)[1]]
        while kind == "ctstate" and self.accept(","):
            out.append(self.element(kind)[1])
        return tuple(_dedup(out))

    def element_list(self, opening: Token, kind: str) -> list[tuple[Token, object]]:
        """The elements up to the '}' matching `opening` (already consumed); nested anonymous sets
        (from a `$define` of a set) are flattened, as nft does."""
        items: list[tuple[Token, object]] = []
        while True:
            self.skip_newlines()
            if self.close_block(opening):
                return items
            if self.at("{"):
                inner = self.next()
                items.extend(self.element_list(inner, kind))
            else:
                items.append(self.element(kind))
            self.skip_newlines()
            if self.accept(","):
                continue
            if self.close_block(opening):
                return items
            raise self.error(self.peek(), "expected ',' or '}' in a set")

    def element(self, kind: str) -> tuple[Token, object]:
        tok = self.peek()
        if tok.kind == "string" and kind == "ifname":
            self.next()
            return tok, tok.text
        if tok.kind != "word" or tok.text.startswith("@"):
            raise self.error(tok, f"expected {_KIND_WHAT[kind]}")
        self.next()
        if kind == "ifname":
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*\*?", tok.text) or tok.text in _KEYWORDS:
                raise self.error(tok, 'expected an interface name (write it in quotes: "NAME")')
            return tok, tok.text
        if kind in ("ctstate", "direction", "nfproto"):
            return tok, self.name_value(tok, kind)
        if self.at("-"):                     # `a - b`: a range written with spaces
            self.next()
            last = self.expect_word(_KIND_WHAT[kind])
            lo, hi = self.scalar(kind, tok), self.scalar(kind, last)
            return tok, self.ordered(tok, lo[0], hi[1])
        return tok, self.scalar(kind, tok)

    def name_value(self, tok: Token, kind: str):
        if kind == "ctstate":
            if tok.text not in CT_STATE_BITS:
                raise self.error(tok, "expected a ct state: " + ", ".join(CT_STATE_BITS))
            return tok.text
        if kind == "direction":
            if tok.text not in ("original", "reply"):
                raise self.error(tok, "expected a ct direction: original or reply")
            return tok.text
        if tok.text not in _NFPROTO:
            raise self.error(tok, "expected ipv4 or ipv6")
        return _NFPROTO[tok.text]

    def ordered(self, tok: Token, lo, hi) -> tuple:
        if lo > hi:
            raise self.error(tok, "a range whose first value is after its last")
        return lo, hi

    def scalar(self, kind: str, tok: Token) -> tuple:
        """A value, range `a-b` or (addresses) prefix `a/n` written as one word -> (first, last)."""
        if kind in ("addr4", "addr6"):
            return self.address_range(kind, tok)
        if kind in ("port", "proto"):
            single = self.named_number(kind, tok, tok.text, quiet=True)
            if single is not None:
                return single, single
        first, dash, last = tok.text.partition("-")
        if dash:
            return self.ordered(tok, self.number(kind, tok, first), self.number(kind, tok, last))
        value = self.number(kind, tok, tok.text)
        return value, value

    def number(self, kind: str, tok: Token, text: str) -> int:
        if kind in ("port", "proto"):
            return self.named_number(kind, tok, text)
        bits = 16 if kind == "zone" else 32
        return self.integer(tok, 0, 2**bits - 1, text)

    def named_number(self, kind: str, tok: Token, text: str, quiet: bool = False) -> int | None:
        hi = 65535 if kind == "port" else 255
        if re.fullmatch(r"[0-9]+", text):
            return self.integer(tok, 0, hi, text)
        value = _service(text) if kind == "port" else _protocol(text)
        if value is None and not quiet:
            raise self.error(tok, f"expected {_KIND_WHAT[kind]}")
        return value

    def integer(self, tok: Token, lo: int, hi: int, text: str | None = None) -> int:
        text = tok.text if text is None else text
        if lo >= 0 and text.startswith("-"):
            raise self.error(tok, f"expected a number {lo}-{hi}")
        try:
            value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise self.error(tok, "expected a number") from None
        if not lo <= value <= hi:
            raise self.error(tok, f"number out of range {lo}-{hi}")
        return value

    def address_range(self, kind: str, tok: Token) -> tuple:
        version = 4 if kind == "addr4" else 6
        text = tok.text
        if "/" in text:
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise self.error(tok, f"expected an address prefix ({exc})") from None
            self.check_version(tok, net.network_address, version)
            return net.network_address, net.broadcast_address
        parts = text.split("-")
        if len(parts) > 2:
            raise self.error(tok, "expected an address or a range ADDR-ADDR")
        addrs = [self.address(tok, p, version) for p in parts]
        return self.ordered(tok, addrs[0], addrs[-1])

    def address(self, tok: Token, text: str, version: int):
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise self.error(tok, f"expected an IPv{version} address (host names are not "
                                  "resolved)") from None
        self.check_version(tok, addr, version)
        return addr

    def check_version(self, tok: Token, addr, version: int) -> None:
        if addr.version != version:
            raise self.error(tok, f"expected an IPv{version} address, not IPv{addr.version}")

    # -- NAT --
    def nat(self, table: _Table, chain: Chain, st: _RuleState) -> NatTarget:
        tok = self.next()
        action = tok.text
        self.check_nat_chain(table, chain, tok)
        family = None
        if action in ("snat", "dnat") and self.at("ip", "ip6"):
            fam_tok = self.next()
            family = 4 if fam_tok.text == "ip" else 6
            self.check_nat_family(table, fam_tok, family)
        if action in ("snat", "dnat"):
            if family is not None:
                self.expect("to", f"'to' after '{action} {'ip' if family == 4 else 'ip6'}'")
            else:
                self.accept("to")
            target = self.nat_word()
            if target is None or target[1].startswith(":"):
                raise self.error(target[0] if target else self.peek(),
                                 f"{action} needs an address to map to (ADDR[-ADDR][:PORT[-PORT]])")
            addrs, ports = self.nat_target(target)
            if family is not None and addrs[0].version != family:
                raise self.error(target[0], f"expected an IPv{family} address after '{action} "
                                            f"{'ip' if family == 4 else 'ip6'}'")
            if family is None and table.family == "inet":
                # nft: "ip or ip6 must be specified with address for inet tables".
                raise self.error(tok, f"in an inet table write '{action} ip to' or '{action} ip6 to' "
                                      "before an address")
            family = addrs[0].version
            self.check_nat_family(table, target[0], family)
            to_min, to_max = addrs[0], addrs[-1]
        else:
            to_min = to_max = ports = None
            if self.accept("to"):
                ports = self.nat_ports(action)
        if ports is not None and not any(m.key == "l4proto" and not m.negate for m in st.matches):
            raise self.error(tok, "a port mapping needs a transport protocol match earlier in the "
                                  "rule (e.g. tcp dport or meta l4proto tcp)")
        flags = self.nat_flags(action)
        return NatTarget(action, to_min, to_max, ports, flags, family)

    def nat_word(self) -> tuple[Token, str] | None:
        """The target as one text: tokens written without space between them (`$HOST:80`)."""
        first = self.peek()
        if first.kind != "word":
            return None
        parts = [self.next().text]
        while True:
            tok = self.peek()
            if tok.kind != "word" or tok.start != self.last.end or tok.start == tok.end:
                return first, "".join(parts)
            parts.append(self.next().text)

    def nat_target(self, target: tuple[Token, str]):
        tok, text = target
        try:
            addrs, ports, flags, _ = _nat._parse_target(text, "to")
        except ValueError as exc:
            raise self.error(tok, _problem(exc)) from None
        if flags:          # unreachable: ',' is not part of a word, but keep the contract
            raise self.error(tok, "flags follow the target after a space")
        return addrs, ports

    def nat_ports(self, action: str) -> tuple[int, int]:
        target = self.nat_word()
        if target is None:
            raise self.error(self.peek(), f"expected ':PORT[-PORT]' after '{action} to'")
        tok, text = target
        text = text[1:] if text.startswith(":") else text

        def fail(problem: str) -> ValueError:
            return ValueError(problem)
        try:
            return _nat._parse_ports(text, fail)
        except ValueError as exc:
            raise self.error(tok, f"{action} takes only ports (':PORT[-PORT]'): {exc}") from None

    def nat_flags(self, action: str) -> frozenset[str]:
        flags: list[str] = []
        while True:
            tok = self.peek()
            if tok.kind == "word" and tok.text in _NAT_FLAGS:
                self.next()
                if tok.text in flags:
                    raise self.error(tok, f"flag '{tok.text}' given twice")
                if tok.text == "persistent" and action in ("masquerade", "redirect"):
                    raise self.error(tok, f"'persistent' does not apply to {action} (one address)")
                flags.append(tok.text)
            elif flags and self.at(","):
                self.next()
                if not (self.peek().kind == "word" and self.peek().text in _NAT_FLAGS):
                    raise self.error(self.peek(), "expected a NAT flag: " + ", ".join(_NAT_FLAGS))
            else:
                return frozenset(flags)

    def check_nat_family(self, table: _Table, tok: Token, family: int) -> None:
        if table.family != "inet" and table.family != ("ip" if family == 4 else "ip6"):
            raise self.error(tok, f"an IPv{family} NAT target in a table of family {table.family}")

    def check_nat_chain(self, table: _Table, chain: Chain, tok: Token) -> None:
        if chain.hook is None:          # a regular chain: checked through its callers at the end
            self.nat_in_regular.append((table, chain, tok.text, tok))
            return
        problem = _nat_chain_problem(chain, tok.text)
        if problem:
            raise self.error(tok, problem)

    # -- checks once everything is read --
    def finish(self) -> None:
        for ref in self.set_refs:
            self.resolve_set(ref)
        for table, chain, rule, tok in self.jumps:
            target = table.chains.get(rule.target)
            if target is None:
                raise self.error(tok, f"chain '{rule.target}' is not defined in {table.describe()}")
            if target.is_base:
                raise self.error(tok, f"cannot {rule.verdict} to base chain '{rule.target}'")
        for table, rule, name, tok in self.helper_refs:
            if name not in table.helpers:
                raise self.error(tok, f"ct helper '{name}' is not defined in {table.describe()}")
        self.check_loops()
        for table, chain, action, tok in self.nat_in_regular:
            for base in self.callers(table, chain):
                problem = _nat_chain_problem(base, action)
                if problem:
                    raise self.error(tok, f"{problem} (chain '{chain.name}' is reached from "
                                          f"'{base.name}')")

    def resolve_set(self, ref: _SetRef) -> None:
        name = ref.token.text[1:]
        s = ref.table.sets.get(name)
        if s is None:
            raise self.error(ref.token, f"set '{name}' is not defined in {ref.table.describe()}")
        if s.kind != ref.kind:
            raise self.error(ref.token, f"set '{name}' has type {_KIND_NAMES[s.kind]}, this match "
                                        f"needs {_KIND_NAMES.get(ref.kind, 'another type')}")
        matches = list(ref.rule.matches)
        matches[ref.index] = dataclasses.replace(matches[ref.index], values=s.values)
        ref.rule.matches = tuple(matches)

    def edges(self, table: _Table, chain: Chain) -> list[tuple[Chain, Token]]:
        return [(table.chains[r.target], tok) for t, c, r, tok in self.jumps
                if t is table and c is chain]

    def check_loops(self) -> None:
        # The kernel refuses a ruleset where jumps lead back to a chain on the way (ELOOP).
        done: set[int] = set()
        for table in self.tables.values():
            for chain in table.chains.values():
                self.visit(table, chain, [], done)

    def visit(self, table: _Table, chain: Chain, path: list[int], done: set[int]) -> None:
        if id(chain) in done:
            return
        path.append(id(chain))
        for target, tok in self.edges(table, chain):
            if id(target) in path:
                raise self.error(tok, f"jumping to chain '{target.name}' makes a loop")
            self.visit(table, target, path, done)
        path.pop()
        done.add(id(chain))

    def callers(self, table: _Table, chain: Chain) -> list[Chain]:
        """The base chains from which `chain` is reached by jump / goto."""
        found: list[Chain] = []
        seen: set[int] = set()
        todo = [chain]
        while todo:
            current = todo.pop()
            for t, c, r, _ in self.jumps:
                if t is table and r.target == current.name and id(c) not in seen:
                    seen.add(id(c))
                    (found if c.is_base else todo).append(c)
        return found


_KIND_WHAT = {"addr4": "an IPv4 address", "addr6": "an IPv6 address", "port": "a port or service name",
              "proto": "a protocol name or number", "mark": "a mark value", "zone": "a zone number",
              "ifname": "an interface name", "ctstate": "a ct state", "direction": "a ct direction",
              "nfproto": "ipv4 or ipv6"}


def _nat_chain_problem(chain: Chain, action: str) -> str | None:
    if chain.type != "nat":
        return f"{action} is only valid in a chain of type nat (chain '{chain.name}' is " \
               f"{'of type ' + chain.type if chain.type else 'a regular chain'})"
    if chain.hook not in _NAT_HOOKS[action]:
        return f"{action} is only valid in {' or '.join(_NAT_HOOKS[action])} chains, not " \
               f"{chain.hook}"
    return None


def _problem(exc: ValueError) -> str:
    """fastct.nat's message without its `to '...': ` prefix (the token is reported separately)."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("to ") and ": " in text else text


def _dedup(values) -> list:
    out: list = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _service(name: str) -> int | None:
    try:
        return socket.getservbyname(name)
    except OSError:
        for proto in ("tcp", "udp", "sctp", "dccp"):
            try:
                return socket.getservbyname(name, proto)
            except OSError:
                pass
    return None


def _protocol(name: str) -> int | None:
    if name in _PROTO_KEYWORDS:
        return _PROTO_KEYWORDS[name]
    try:
        return socket.getprotobyname(name)
    except OSError:
        return None


# ---- public API -----------------------------------------------------------------------------------
def parse_nft(text: str, source: str = "<nft>") -> Ruleset:
    """nftables ruleset text -> Ruleset; errors are RulesetError with file, line and column."""
    return _Parser(text, source).parse()


def load_nft_file(path) -> Ruleset:
    """Reads and parses an nft file (UTF-8)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RulesetError(None, f"cannot read {name}: {exc.strerror or exc}", name) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RulesetError(Loc(name, line, col), "the file is not UTF-8 text", None) from None
    return parse_nft(text, source=name)
