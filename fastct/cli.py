"""The `fastct` command: `fastct track FILE` prints the table conntrack would list; `fastct bench`."""
from __future__ import annotations

import os

# numpy's OpenBLAS threads spin on the other core after any BLAS call; fastct needs none of them
# and they skew the benchmarks on a 2-core machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import ipaddress
import signal
import sys

from fastct._version import __version__

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LINKTYPE_NAMES = {0: "NULL", 1: "EN10MB", 9: "PPP", 101: "RAW", 104: "C_HDLC", 108: "LOOP", 113: "LINUX_SLL",
                  192: "PPI", 226: "IPNET", 228: "IPV4", 229: "IPV6", 239: "NFLOG", 258: "PKTAP",
                  276: "LINUX_SLL2", 284: "DSA_TAG_DSA"}


class UsageError(Exception):
    """A bad argument found after parsing (exit status 2)."""


def _int_arg(lo, hi, what):
    def parse(text):
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be between {lo} and {hi}, not {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastct", description="Fast connection tracking (conntrack) in user space.")
    p.add_argument("--version", action="version", version=f"fastct {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("track", help="track a pcap/pcapng capture and print the connection table",
                       description="Track every packet of a pcap or pcapng capture as the Linux kernel's "
                                   "conntrack would, then print the table like `conntrack -L -o extended`.")
    t.add_argument("file", help="pcap or pcapng capture")
    t.add_argument("--stats", action="store_true", help="print conntrack -S counters after the table")
    t.add_argument("--zone", type=_int_arg(0, 65535, "--zone"), default=0, help="put all traffic in zone N")
    t.add_argument("--zone-from", choices=["vlan"], help="take the zone from the outer VLAN id")
    t.add_argument("--max-conns", type=_int_arg(1, 2**30 - 2, "--max-conns"), default=None,
                   help="table size (nf_conntrack_max; default 262144)")
    t.add_argument("--sysctl", action="append", default=[], metavar="NAME=VALUE",
                   help="a kernel setting by its name, e.g. net.netfilter.nf_conntrack_tcp_loose=0 "
                        "or nf_conntrack_udp_timeout=60 (repeatable); nf_conntrack_checksum defaults "
                        "to 0 here (captures carry offloaded checksums)")
    t.add_argument("--timeout-policy", action="append", default=[], metavar="ZONE:NAME=SECONDS",
                   help="a timeout for connections of one zone, e.g. 5:udp_timeout=10 (repeatable)")
    t.add_argument("--zone-limit", action="append", default=[], metavar="ZONE=N",
                   help="at most N connections in a zone (ZONE may be 'default'), as Open vSwitch's "
                        "ct limits (repeatable)")
    t.add_argument("--dccp-tracker", action="store_true",
                   help="track DCCP with the state machine of kernels before 6.16 (default: as "
                        "generic, as this kernel does)")
    nat = t.add_argument_group(
        "NAT", "translate new connections as a gateway would: SPEC is ADDR[-ADDR][:PORT[-PORT]] "
               "(IPv6 as [ADDR]:PORT), optionally followed by ,persistent ,random ,fully-random")
    nat.add_argument("--snat", action="append", default=[], metavar="SPEC",
                     help="source NAT for every new connection of SPEC's address family (postrouting)")
    nat.add_argument("--dnat", action="append", default=[], metavar="SPEC",
                     help="destination NAT for every new connection of SPEC's family (prerouting)")
    nat.add_argument("--masquerade", action="append", default=[], metavar="ADDR[:PORTS]",
                     help="source NAT to the output interface's address ADDR (postrouting)")
    nat.add_argument("-w", "--write", metavar="FILE",
                     help="write every packet, translated as it would leave the gateway, to FILE "
                          "in the input's format (pcap or pcapng); invalid packets unchanged")
    nat.add_argument("--drop-invalid", action="store_true",
                     help="with -w: leave packets with an inv verdict out of FILE")
    nat.add_argument("--src-nat", nargs="?", const=True, default=None, metavar="ADDR",
                     help="list only connections whose source NAT changed them (to ADDR), as "
                          "conntrack -L --src-nat")
    nat.add_argument("--dst-nat", nargs="?", const=True, default=None, metavar="ADDR",
                     help="list only connections whose destination NAT changed them (to ADDR)")
    _ruleset_arguments(t)
    t.add_argument("--show-rules", action="store_true",
                   help="after the table, print the compiled rules with each rule's packet and byte "
                        "counters (as `fastct rules`)")
    t.add_argument("--batch-size", type=_int_arg(1, 1 << 20, "--batch-size"), default=4096,
                   help="packets per batch (results do not depend on it)")
    t.add_argument("--seed", type=_int_arg(0, 2**63 - 1, "--seed"), default=None,
                   help="hash seed (default random)")
    r = sub.add_parser("rules", help="parse a ruleset and print the rules as fastct compiled them",
                       description="Read an nftables or iptables-save ruleset, check it against the "
                                   "interface model, and print the compiled chains: hook, priority, "
                                   "and each rule's matches, statements and verdict.")
    _ruleset_arguments(r)
    b = sub.add_parser("bench", help="run the benchmark scenarios")
    from fastct.bench import add_arguments
    add_arguments(b)
    return p


def _ruleset_arguments(p) -> None:
    g = p.add_argument_group(
        "rulesets and interfaces",
        "NAT, notrack, marks and helpers as the gateway's ruleset says (see the README's interface "
        "model): a packet comes in on its pcapng interface (by name) or --in-iface, and leaves by "
        "the --iface whose prefix holds its destination, else --out-iface")
    g.add_argument("--nft", metavar="FILE", help="an nftables ruleset (`nft list ruleset` output or "
                                                 "a file for `nft -f`)")
    g.add_argument("--iptables", metavar="FILE", help="iptables-save or ip6tables-save output "
                                                      "(its nat and raw tables)")
    g.add_argument("--ip6tables", action="store_true",
                   help="with --iptables: the file is ip6tables-save output (default: guessed from "
                        "its addresses)")
    g.add_argument("--iface", action="append", default=[], metavar="NAME=ADDR[/PREFIX]",
                   help="a gateway interface, its address and connected prefix (repeatable; IPv4 "
                        "and IPv6)")
    g.add_argument("--in-iface", metavar="NAME",
                   help="the interface a classic pcap's packets came in on")
    g.add_argument("--out-iface", metavar="NAME",
                   help="the interface of the default route (destinations no --iface prefix holds)")


def _load_ruleset(args):
    """(ruleset or None, interface model or None) from the ruleset options; UsageError on bad
    input."""
    from fastct.interfaces import Interfaces
    from fastct.ruleset import RulesetError
    if args.nft and args.iptables:
        raise UsageError("--nft and --iptables: give one ruleset")
    if args.ip6tables and not args.iptables:
        raise UsageError("--ip6tables needs --iptables FILE")
    try:
        model = Interfaces.from_cli(args.iface, args.in_iface, args.out_iface)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ruleset = None
    try:
        if args.nft:
            from fastct.nft import load_nft_file
            ruleset = load_nft_file(args.nft)
        elif args.iptables:
            from fastct.iptables import load_iptables_file
            ruleset = load_iptables_file(args.iptables, 6 if args.ip6tables else None)
    except RulesetError as exc:
        raise UsageError(str(exc)) from None
    has_model = bool(args.iface or args.in_iface or args.out_iface)
    return ruleset, (model if ruleset is not None or has_model else None)


def _ruleset_warnings(ruleset, prog, err) -> None:
    for line in list(ruleset.warnings) + list(prog.warnings):
        err.write(f"fastct: warning: {line}\n")
    for h in ruleset.helpers:
        used = any(r.ct_helper_set == h.name for c in ruleset.chains if (c.family, c.table) ==
                   (h.family, h.table) for r in c.rules)
        if used:
            err.write(f"fastct: warning: {h.loc or ruleset.source}: ct helper {h.name!r} (type "
                      f"{h.type}): its connections show helper={h.type}, but what the {h.type} "
                      f"helper does to related connections is not modelled yet\n")


def cmd_rules(args) -> int:
    from fastct.rules_compile import compile_ruleset, describe
    from fastct.ruleset import RulesetError
    ruleset, model = _load_ruleset(args)
    if ruleset is None:
        raise UsageError("fastct rules needs --nft FILE or --iptables FILE")
    try:
        prog = compile_ruleset(ruleset, model)
    except RulesetError as exc:
        raise UsageError(str(exc)) from None
    _ruleset_warnings(ruleset, prog, sys.stderr)
    out = sys.stdout
    out.write(f"# {ruleset.source}: {len(prog.chain_list)} chains, {len(prog.rule_info)} rules\n")
    if model is not None and model.names:
        out.write("interfaces:\n" + "\n".join(model.describe()) + "\n")
    out.write("\n".join(describe(prog)) + "\n")
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "track":
            return cmd_track(args)
        if args.command == "rules":
            return cmd_rules(args)
        if args.command == "bench":
            from fastct.bench import run
            return run(args)
    except BrokenPipeError:
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("fastct: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"fastct: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


def _zone_limit(text: str):
    zone, sep, n = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return (zone if zone == "default" else int(zone, 10)), int(n, 10)
    except ValueError:
        raise ValueError(f"--zone-limit takes ZONE=N (ZONE a number or 'default'), not {text!r}") from None


def cmd_track(args) -> int:
    from fastct.capture.reader import CaptureError, CaptureReader
    import numpy as np

    from fastct.conntrack_fmt import format_fastct_stats, format_stats, format_table, nat_filter
    from fastct.capture.writer import CaptureWriter
    from fastct.nat import NatRules
    from fastct.tracker import CT_STATE_BITS
    from fastct.tracker import Tracker

    from fastct.sysctl import parse_assignment, parse_timeout_policy

    try:
        sysctl = dict(parse_assignment(a) for a in args.sysctl)
        policies: dict[int, dict[str, int]] = {}
        for text in args.timeout_policy:
            zone, name, seconds = parse_timeout_policy(text)
            policies.setdefault(zone, {})[name] = seconds
        limits = dict(_zone_limit(text) for text in args.zone_limit)
        rules = NatRules.from_cli(snat=args.snat, dnat=args.dnat, masquerade=args.masquerade)
        ruleset, model = _load_ruleset(args)
        if ruleset is not None and len(rules):
            raise ValueError("--snat/--dnat/--masquerade and a ruleset file: put the NAT rules in "
                             "the ruleset")
        if args.show_rules and ruleset is None and not len(rules):
            raise ValueError("--show-rules needs a ruleset (--nft, --iptables) or NAT options")
        if ruleset is None and len(rules):
            ruleset = rules.to_ruleset()
        for option, value in (("--src-nat", args.src_nat), ("--dst-nat", args.dst_nat)):
            if isinstance(value, str):
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise ValueError(f"{option} takes an IP address, not {value!r}") from None
        if args.drop_invalid and not args.write:
            raise ValueError("--drop-invalid needs -w FILE (it leaves packets out of that file)")
        tracker = Tracker(max_conns=args.max_conns, seed=args.seed, sysctl=sysctl,
                          timeout_policies=policies, dccp_tracker=args.dccp_tracker,
                          zone_limits=limits)
        if ruleset is not None and model is None:
            tracker.set_ruleset(ruleset, None)     # (no interface names: nothing from the capture)
    except ValueError as exc:          # (RulesetError is one)
        raise UsageError(str(exc)) from None
    error = None
    interrupted = False
    reader = None
    writer = None
    inv = CT_STATE_BITS["inv"]
    try:
        reader = CaptureReader(args.file, batch_size=args.batch_size, writable=bool(args.write))
        known = None
        if model is not None:
            # The capture's interface names declare interfaces too: the ruleset is compiled once
            # they are known (a pcapng file's interfaces before its first packet).
            known = _compile_with_capture(tracker, ruleset, model, args.file, reader)
        if ruleset is not None and ruleset.source != "NatRules":
            _ruleset_warnings(ruleset, tracker.program, sys.stderr)
        if args.write:
            try:
                writer = CaptureWriter(args.write, reader)
            except (OSError, ValueError) as exc:
                raise UsageError(f"-w {args.write}: {getattr(exc, 'strerror', None) or exc}") from None
        for batch in reader:
            if model is not None and len(reader.interfaces) != known:
                # An interface first described after the first packet (pcapng): its name joins
                # the model; rules were checked against the names known at the start.
                known = len(reader.interfaces)
                _set_capture_interfaces(tracker, reader.interfaces, reader.format)
            r = tracker.process(batch, zone=args.zone, zone_from_vlan=args.zone_from == "vlan",
                                rewrite=writer is not None)
            if writer is not None:
                writer.write(batch, (r.ct_state & inv) == 0 if args.drop_invalid else None)
        error = reader.error
    except CaptureError as exc:
        error = exc
    except KeyboardInterrupt:
        interrupted = True
    except OSError as exc:
        if writer is None:
            raise
        error = f"-w {args.write}: {exc.strerror or exc}: it holds the packets written before"
    # Ctrl-C from here on would cut the table (or the output file's last blocks) short: finish first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if ruleset is not None and tracker.program is None:
        # The capture could not be opened, so the ruleset was not compiled with its interface
        # names: compile it without them, for --show-rules (nothing was tracked).
        try:
            tracker.set_ruleset(ruleset, model)
        except ValueError:
            pass        # (it names an interface only the unreadable capture could declare)
    if writer is not None:
        writer.close()
    stats = tracker.stats()
    entries = tracker.entries()
    replies = tracker.replies()
    cold = tracker.cold()
    keep = np.ones(len(entries), dtype=bool)
    for kind, value in (("src", args.src_nat), ("dst", args.dst_nat)):
        if value is not None:
            keep &= nat_filter(entries, replies, kind, None if value is True else value)
    lines = format_table(entries[keep], replies[keep], cold[keep], tracker.now,
                         tracker.helper_names())
    out = sys.stdout
    if lines:
        out.write("\n".join(lines) + "\n")
    if args.stats:
        out.write(format_stats(stats) + "\n" + format_fastct_stats(stats) + "\n")
    if args.show_rules and tracker.program is not None:
        from fastct.rules_compile import describe
        out.write("\n".join(describe(tracker.program, counters=True)) + "\n")
    out.flush()
    err = sys.stderr
    err.write(f"fastct {__version__}: {len(lines)} flow entries have been shown.\n")
    handled = stats["packets"] - stats["linktype_skipped"]
    for lt, count in sorted(stats["linktypes_skipped"].items()):
        name = LINKTYPE_NAMES.get(lt, "")
        err.write(f"fastct: skipped {count} frames of link type {lt}{' (' + name + ')' if name else ''}: "
                  f"not handled\n")
    if stats["non_ip"]:
        err.write(f"fastct: {stats['non_ip']} frames carried no IP (ARP, LLDP...): not tracked\n")
    no_route = sum(n for why, n in stats["reasons"].items() if why.startswith("no route"))
    if no_route:
        err.write(f"fastct: {no_route} packets had no route (no --iface prefix holds their "
                  f"destination and there is no --out-iface): dropped, as the gateway would\n")
    status = EXIT_OK
    if error is not None:
        err.write(f"fastct: error: {error}\n")
        status = EXIT_INPUT
    elif stats["packets"] and not handled:
        err.write("fastct: error: no packet of a link type fastct handles\n")
        status = EXIT_INPUT
    if writer is not None:
        err.write(f"fastct: wrote {writer.packets} packets to {args.write}"
                  f"{' (whole records only: interrupted)' if interrupted else ''}\n")
    if interrupted:
        err.write("fastct: interrupted: the table above holds the packets processed so far\n")
        status = EXIT_INTERRUPTED
    if reader is not None:
        reader.close()
    return status


def _set_capture_interfaces(tracker, interfaces, fmt) -> None:
    from fastct.ruleset import RulesetError
    try:
        tracker.set_capture_interfaces(interfaces, classic=fmt == "pcap")
    except (RulesetError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _compile_with_capture(tracker, ruleset, model, path, reader) -> int:
    """Compile the ruleset (or the command line's NAT rules) with the interface model and the
    capture's interface names: a pcapng file's interfaces described before its first packet (read
    by a second, throwaway reader), a classic pcap's one interface.  Returns how many capture
    interfaces that was."""
    from fastct.capture.reader import CaptureError, CaptureReader
    interfaces = list(reader.interfaces)
    if reader.format == "pcapng":
        try:
            with CaptureReader(path, batch_size=1) as peek:
                for _ in peek:
                    break
                interfaces = list(peek.interfaces)
        except CaptureError:
            pass                       # (the main reader reports the damage)
    try:
        tracker.set_ruleset(ruleset, model.with_capture(interfaces, classic=reader.format == "pcap"))
    except ValueError as exc:          # (RulesetError is one)
        raise UsageError(str(exc)) from None
    return len(interfaces)


if __name__ == "__main__":
    sys.exit(main())
