"""The rulesets issue's acceptance test: one rules file loaded into the kernel and into fastct.

Each scenario builds the client — gateway — server lab (tests/netns_lab.py), loads a ruleset into
the gateway (`nft -f FILE`, or `iptables-restore` for the iptables-save form), sends real traffic
through it, and hands fastct the very same text (Tracker.load_nft / load_iptables) with the lab's
interface model: the gateway's two interfaces and their prefixes (`--iface gw-cli=10.231.1.1/24
...`), each arriving packet on the gateway interface it came in on (as a pcapng capture names them).
The comparison is tests/test_kernel_nat.py's: the connection tables (tuples, states, flags,
counters, translated replies, and now mark, zone and helper), every packet on the wire byte for
byte, and every packet's ct_state against the kernel's verdict.

Scenarios (the issue's list): masquerade (IPv4 and IPv6; also as an ip6tables-save file);
`meta l4proto { tcp, udp } snat to ADDR:61000-61009` followed by a plain `snat to ADDR` (ports
checked for range, uniqueness and consistency); `iifname
... ip daddr ... tcp dport 8080 dnat to ADDR:PORT` with `ct mark set` (visible in `-L` as mark=);
a `notrack` rule in a raw prerouting chain (those packets get no entry and no trk bit; their
replies, which the rule does not match, are tracked as connections of their own, as the kernel
does).  Each as an nftables file and as the equivalent iptables-save file.

Needs root, `ip netns`, nft, iptables-restore (iptables' nf_tables backend), conntrack and tcpdump.
"""
from __future__ import annotations

import re
import shutil

import pytest

from netns_lab import NetnsLab
from test_kernel_nat import (C4, C4B, GW4_C, GW4_S, GW6_S, S4, S6, C6, SNAT4, TCP_PORT, UDP_PORT,
                             UDP_PORT2, CLOSED_PORT, assert_same, check, kernel_by_source, lab_check,
                             observe, serve, tdict)
from test_kernel_nat import lab  # noqa: F401 (the NAT test's lab fixture: whole checksums from the hosts)

pytestmark = pytest.mark.kernel

IFACES = ["gw-cli", "gw-srv"]
SNAT_PORTS = (61000, 61009)
TABLE = "fastct_rules"




def interfaces():
    from fastct.interfaces import Interfaces
    return Interfaces.from_cli([f"gw-cli={GW4_C}/24", f"gw-cli={NetnsLab.GW6_C}/64",
                                f"gw-srv={GW4_S}/24", f"gw-srv={GW6_S}/64"])


def load_nft(text):
    return lambda tracker: tracker.load_nft(text, interfaces(), source="lab.nft")


def load_iptables(text, family=None):
    return lambda tracker: tracker.load_iptables(text, interfaces(), family=family, source="lab.rules")


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def iptables_restore(lab, text: str, v6: bool = False):
    lab.exec(lab.gateway, [_tool("ip6tables-restore" if v6 else "iptables-restore")], input=text)


def observe_rules(lab, tmp_path, form: str, nft_text: str, ipt_text: str, traffic):
    """Load the ruleset in `form` ('nft', 'iptables' or 'ip6tables') into the gateway and run the
    traffic; the run gets the kernel's rule counters ({(table, chain, rule number): (packets,
    bytes)})."""
    if form == "nft":
        run, rules = observe(lab, tmp_path, nft_text, traffic), load_nft(nft_text)
        run.kernel_counters = nft_counters(lab.exec(lab.gateway, ["nft", "list", "table", *TABLE_OF[nft_text]])
                                           .stdout, TABLE_OF[nft_text][1])
    else:
        v6 = form == "ip6tables"
        iptables_restore(lab, ipt_text, v6)
        run, rules = observe(lab, tmp_path, "", traffic), load_iptables(ipt_text, 6 if v6 else None)
        save = _tool("ip6tables-save" if v6 else "iptables-save")
        run.kernel_counters = iptables_counters(lab.exec(lab.gateway, [save, "-c"]).stdout)
    return run, rules


class _TableOf(dict):
    """nft text -> (family, table name) of its table (the scenarios have one)."""
    def __missing__(self, text):
        fam, name = re.search(r"^table (\S+) (\S+) \{", text, re.M).groups()
        return fam, name


TABLE_OF = _TableOf()


def nft_counters(listing: str, table: str) -> dict:
    """`nft list table` output -> {(table, chain, rule number): (packets, bytes)} for the rules
    with a counter."""
    out, chain, n = {}, None, 0
    for line in listing.splitlines():
        text = line.strip()
        m = re.match(r"chain (\S+) \{", text)
        if m:
            chain, n = m.group(1), 0
            continue
        if chain is None or not text or text == "}" or text.startswith(("type ", "policy ")):
            continue
        c = re.search(r"counter packets (\d+) bytes (\d+)", text)
        if c:
            out[(table, chain, n)] = (int(c.group(1)), int(c.group(2)))
        n += 1
    return out


def iptables_counters(saved: str) -> dict:
    """`iptables-save -c` output -> {(table, chain, rule number): (packets, bytes)}."""
    out, table, numbers = {}, None, {}
    for line in saved.splitlines():
        if line.startswith("*"):
            table, numbers = line[1:], {}
        m = re.match(r"\[(\d+):(\d+)\] -A (\S+)", line)
        if m:
            chain = m.group(3)
            k = numbers.get(chain, 0)
            numbers[chain] = k + 1
            out[(table, chain, k)] = (int(m.group(1)), int(m.group(2)))
    return out


def compare_counters(run) -> list[str]:
    """fastct's rule counters against the kernel's, rule by rule (rules with a counter)."""
    lab_check(run, any(p for p, _ in run.kernel_counters.values()),
              f"the kernel's rule counters were read and counted packets: {run.kernel_counters}")
    prog = run.tracker.program
    counters = run.tracker.rule_counters()
    problems, numbers = [], {}
    for i, (chain, rule) in enumerate(prog.rule_info):
        k = numbers.get((chain.table, chain.name), 0)
        numbers[(chain.table, chain.name)] = k + 1
        if not rule.counter:
            continue
        kernel = run.kernel_counters.get((chain.table, chain.name, k))
        mine = tuple(int(x) for x in counters[i])
        if kernel != mine:
            problems.append(f"counter of {chain.id} rule {k} ({rule.text}): kernel {kernel}, "
                            f"fastct {mine}")
    return problems


FORMS = ["nft", "iptables"]


@pytest.fixture(autouse=True)
def _need_iptables(request):
    if "form" in request.fixturenames and request.getfixturevalue("form") in ("iptables", "ip6tables") \
            and not (shutil.which("iptables-restore") or shutil.which("iptables-restore",
                                                                      path="/usr/sbin:/sbin")):
        import os
        if os.environ.get("CI"):
            pytest.fail("iptables-restore is missing (CI installs the iptables package)")
        pytest.skip("iptables-restore is not installed")


# ---- masquerade --------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS + ["ip6tables"])
def test_masquerade(lab, tmp_path, form):
    nft = f"""
table inet {TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "gw-srv" counter masquerade
    }}
}}
"""
    ipt = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o gw-srv -j MASQUERADE
COMMIT
"""
    steps = [("tcp", C4, 0, S4, TCP_PORT), ("udp", C4, 0, S4, UDP_PORT), ("ping", C4, S4, 0x4242),
             ("refused", C4, 0, S4, CLOSED_PORT)]
    v6_steps = [("tcp", C6, 0, S6, TCP_PORT), ("udp", C6, 0, S6, UDP_PORT), ("ping", C6, S6, 0x4343),
                ("refused", C6, 0, S6, CLOSED_PORT)]
    if form == "nft":
        steps += v6_steps                  # (inet: one table for both families)
    elif form == "ip6tables":
        steps = v6_steps                   # (the same file, as ip6tables-save writes it)
    run, rules = observe_rules(lab, tmp_path, form, nft, ipt, lambda: serve_both(lab, steps))
    problems = check(run, rules, iface_names=IFACES) + compare_counters(run)
    masq = {GW4_S, GW6_S}
    lab_check(run, len(run.kernel) == len([s for s in steps]) and
              all(tdict(r["reply"])["dst"] in masq for r in run.kernel),
              "every connection masqueraded to the gateway's server-side address")
    assert_same(run, problems)


def serve_both(lab, steps):
    """serve() for steps that may mix IPv4 and IPv6 servers (one echo server per family)."""
    v4 = [s for s in steps if ":" not in s[1]]
    v6 = [s for s in steps if ":" in s[1]]
    if v4:
        serve(lab, S4, v4)
    if v6:
        serve(lab, S6, v6)


# ---- snat to a port range, then to the address; notrack; ct mark in a filter chain ----------------------
@pytest.mark.parametrize("form", FORMS)
def test_snat_range_notrack_and_mark(lab, tmp_path, form):
    lab.add_address(lab.client, "cli0", f"{C4B}/24")
    lab.add_address(lab.gateway, "gw-srv", f"{SNAT4}/24")
    lo, hi = SNAT_PORTS
    nft = f"""
table ip {TABLE} {{
    chain raw {{
        type filter hook prerouting priority raw; policy accept;
        udp dport {UDP_PORT2} counter notrack
    }}
    chain marks {{
        type filter hook prerouting priority filter; policy accept;
        ct state new tcp dport {TCP_PORT} counter ct mark set 0x2a
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "gw-srv" meta l4proto {{ tcp, udp }} counter snat to {SNAT4}:{lo}-{hi}
        oifname "gw-srv" counter snat to {SNAT4}
    }}
}}
"""
    ipt = f"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp -m udp --dport {UDP_PORT2} -j CT --notrack
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport {TCP_PORT} -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x2a/0xffffffff
-A POSTROUTING -o gw-srv -p tcp -j SNAT --to-source {SNAT4}:{lo}-{hi}
-A POSTROUTING -o gw-srv -p udp -j SNAT --to-source {SNAT4}:{lo}-{hi}
-A POSTROUTING -o gw-srv -j SNAT --to-source {SNAT4}
COMMIT
"""
    steps = [
        ("tcp", C4, 61003, S4, TCP_PORT),          # in range, free: kept
        ("tcp", C4B, 61003, S4, TCP_PORT),         # the same port from another address: moved
        ("udp", C4, 0, S4, UDP_PORT),              # ephemeral: into the range
        ("udp", C4B, 40000, S4, UDP_PORT2),        # notrack: untouched, untracked; its reply is
                                                   # tracked as a connection from the server
        ("ping", C4, S4, 0x4545),                  # the plain snat: address only
        ("refused", C4, 61005, S4, CLOSED_PORT),   # kept port; the ICMP error translated back
    ]
    run, rules = observe_rules(lab, tmp_path, form, nft, ipt, lambda: serve(lab, S4, steps))
    problems = check(run, rules, port_ranges={6: SNAT_PORTS, 17: SNAT_PORTS}, iface_names=IFACES) \
        + compare_counters(run)
    kernel = kernel_by_source(run)
    lab_check(run, (6, C4, "61003", str(TCP_PORT)) in kernel and
              kernel[(6, C4, "61003", str(TCP_PORT))]["dport"] == "61003", "the free port was kept")
    lab_check(run, not any(k[0] == 17 and k[1] == C4B and k[3] == str(UDP_PORT2) for k in kernel),
              "the notrack'd datagram has no entry")
    lab_check(run, any(k[0] == 17 and k[1] == S4 and k[2] == str(UDP_PORT2) for k in kernel),
              "the server's answer to it is a connection of its own")
    marks = {r["extras"].get("mark") for r in run.kernel if r["proto"] == 6}
    lab_check(run, marks == {"42"}, f"the TCP connections carry mark=42 (kernel: {marks})")
    assert_same(run, problems)


# ---- dnat by input interface, with a mark ----------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_dnat_by_input_interface_with_mark(lab, tmp_path, form):
    nft = f"""
table ip {TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "gw-srv" tcp dport 8080 dnat to {C4}:9
        iifname "gw-cli" ip daddr {GW4_C} tcp dport 8080 counter ct mark set 0x7 dnat to {S4}:{TCP_PORT}
        iifname "gw-cli" ip daddr {GW4_C} udp dport 8053 counter dnat to {S4}:{UDP_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
    }}
}}
"""
    ipt = f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i gw-srv -p tcp -m tcp --dport 8080 -j DNAT --to-destination {C4}:9
-A PREROUTING -d {GW4_C}/32 -i gw-cli -p tcp -m tcp --dport 8080 -j CONNMARK --set-xmark 0x7/0xffffffff
-A PREROUTING -d {GW4_C}/32 -i gw-cli -p tcp -m tcp --dport 8080 -j DNAT --to-destination {S4}:{TCP_PORT}
-A PREROUTING -d {GW4_C}/32 -i gw-cli -p udp -m udp --dport 8053 -j DNAT --to-destination {S4}:{UDP_PORT}
COMMIT
"""
    steps = [("tcp", C4, 0, GW4_C, 8080), ("udp", C4, 0, GW4_C, 8053), ("tcp", C4, 0, GW4_C, 8080)]
    run, rules = observe_rules(lab, tmp_path, form, nft, ipt, lambda: serve(lab, S4, steps))
    problems = check(run, rules, iface_names=IFACES) + compare_counters(run)
    lab_check(run, len(run.kernel) == 3 and all(tdict(r["reply"])["src"] == S4 for r in run.kernel),
              f"three connections, each translated to {S4}")
    marks = sorted(r["extras"].get("mark") for r in run.kernel)
    lab_check(run, marks == ["0", "7", "7"], f"the TCP connections carry mark=7 (kernel: {marks})")
    assert not run.substituted
    assert_same(run, problems)
