"""`fastct track --iptables/--nft ... --iface ...` and `fastct rules`: the interface model on captures.

Input interfaces come from a pcapng file's interface names (if_name) or, for classic pcap,
--in-iface; output interfaces from the --iface prefixes, else --out-iface.  Expected tables are
worked out from the rules: which connections a rule matches, what masquerade and redirect map to.
"""
import struct

import pytest

from conftest import run_cli
from pkt import SYN
from test_capture import epb, idb, shb
from test_nat_cli import write_pcap
from test_nat_engine import tcp, udp

LINKTYPE_ETHERNET = 1
C1, SRV, PEER = "10.0.0.1", "93.184.216.34", "198.51.100.7"
IFACES = ["--iface", "lan=10.0.0.254/24", "--iface", "wan=203.0.113.5/24", "--out-iface", "wan"]

NAT_RULES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -i wan -p tcp -m tcp --dport 2222 -j DNAT --to-destination 10.0.0.9:22
-A PREROUTING -i lan -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 3128
-A POSTROUTING -o wan -j MASQUERADE
COMMIT
"""


def write_pcapng_ifaces(path, names, packets):
    """pcapng: one Ethernet IDB per name (if_name option), then (iface, frame) packets."""
    e = "<"
    data = shb(e) + b"".join(idb(e, LINKTYPE_ETHERNET, name=n) for n in names)
    for i, (iface, frame) in enumerate(packets):
        data += epb(e, iface, 1_000_000 + i, frame)
    path.write_bytes(data)
    return path


def table(out):
    return [line for line in out.splitlines() if line.startswith("ipv")]


@pytest.fixture
def rules_file(tmp_path):
    p = tmp_path / "nat.rules"
    p.write_text(NAT_RULES)
    return p


def test_pcapng_interface_names_drive_the_rules(tmp_path, rules_file):
    cap = write_pcapng_ifaces(tmp_path / "gw.pcapng", ["lan", "wan"], [
        (0, tcp(C1, SRV, 40000, 443, SYN)),       # lan -> default route wan: masqueraded
        (0, tcp(C1, SRV, 40001, 80, SYN)),        # lan, port 80: redirected to the lan address
        (1, tcp(PEER, "203.0.113.5", 50000, 2222, SYN)),   # wan, 2222: dnat to 10.0.0.9:22, out lan
        (1, tcp(PEER, SRV, 50001, 80, SYN)),      # wan, port 80: no redirect (that rule is lan's)
    ])
    rc, out, err = run_cli(["track", cap, "--iptables", rules_file, *IFACES])
    assert rc == 0, err
    lines = table(out)
    assert len(lines) == 4
    by_sport = {int(line.split("sport=")[1].split()[0]): line for line in lines}
    assert "src=93.184.216.34 dst=203.0.113.5 sport=443 dport=40000" in by_sport[40000]
    assert "src=10.0.0.254 dst=10.0.0.1 sport=3128 dport=40001" in by_sport[40001]
    assert "src=10.0.0.9 dst=198.51.100.7 sport=22 dport=50000" in by_sport[50000]
    # wan -> SRV is routed out of wan (default route): masqueraded too.
    assert "src=93.184.216.34 dst=203.0.113.5 sport=80 dport=50001" in by_sport[50001]


def test_classic_pcap_takes_in_iface(tmp_path, rules_file):
    cap = write_pcap(tmp_path / "lan.pcap", [tcp(C1, SRV, 40001, 80, SYN)])
    rc, out, err = run_cli(["track", cap, "--iptables", rules_file, *IFACES, "--in-iface", "lan"])
    assert rc == 0, err
    assert "src=10.0.0.254 dst=10.0.0.1 sport=3128 dport=40001" in table(out)[0]
    rc, out, err = run_cli(["track", cap, "--iptables", rules_file, *IFACES, "--in-iface", "wan"])
    assert rc == 0, err
    # In on wan: no redirect; out of wan (default route): masqueraded.
    assert "src=93.184.216.34 dst=203.0.113.5 sport=80 dport=40001" in table(out)[0]


def test_undeclared_interface_is_a_usage_error(tmp_path, rules_file):
    cap = write_pcap(tmp_path / "lan.pcap", [tcp(C1, SRV, 40001, 80, SYN)])
    rc, out, err = run_cli(["track", cap, "--iptables", rules_file, "--iface", "lan=10.0.0.254/24"])
    assert rc == 2 and out == ""
    assert f"fastct: error: {rules_file}:6:" in err and "interface 'wan' is not declared" in err


def test_pcapng_interface_name_declares_an_interface(tmp_path, rules_file):
    # wan is declared only by the capture: its rules compile; masquerade on wan has no address
    # (no --iface for it), so the kernel's behaviour applies: the packet is dropped.
    cap = write_pcapng_ifaces(tmp_path / "gw.pcapng", ["lan", "wan"], [(0, tcp(C1, SRV, 40000, 443, SYN))])
    rc, out, err = run_cli(["track", cap, "--iptables", rules_file, "--iface", "lan=10.0.0.254/24",
                            "--out-iface", "wan", "--stats"])
    assert rc == 0, err
    assert table(out) == []
    assert "redirect or masquerade with no address" in out


def test_show_rules_prints_counters(tmp_path):
    rules = tmp_path / "r.rules"
    rules.write_text("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                     "-A PREROUTING -p udp -m udp --dport 53 -j CT --notrack\nCOMMIT\n")
    frames = [udp(C1, SRV, 5000, 53), udp(C1, SRV, 5001, 53), tcp(C1, SRV, 40000, 80, SYN)]
    cap = write_pcap(tmp_path / "c.pcap", frames)
    rc, out, err = run_cli(["track", cap, "--iptables", rules, "--show-rules"])
    assert rc == 0, err
    assert len(table(out)) == 1
    # Every iptables rule counts what it matches: two DNS datagrams, IP length 33 each.
    assert "0: meta l4proto udp th dport 53 counter notrack    [packets 2 bytes 66]" in out


def test_rules_command(tmp_path, rules_file):
    rc, out, err = run_cli(["rules", "--iptables", rules_file, *IFACES])
    assert rc == 0, err
    assert "  0: lan 10.0.0.254/24" in out and "  1: wan 203.0.113.5/24 (default route)" in out
    assert 'chain ip nat PREROUTING (type nat hook prerouting priority -100; nat prerouting' in out
    assert '  0: iifname "wan" meta l4proto tcp th dport 2222 counter dnat ip to 10.0.0.9:22' in out
    assert '  1: iifname "lan" meta l4proto tcp th dport 80 counter redirect to :3128' in out
    assert '  2: oifname "wan" counter masquerade' in out
    rc, out, err = run_cli(["rules"])
    assert rc == 2 and "needs --nft FILE or --iptables FILE" in err
    rc, out, err = run_cli(["rules", "--iptables", tmp_path / "missing"])
    assert rc == 2 and "missing" in err


@pytest.mark.parametrize("args,message", [
    (["--iface", "lan"], "--iface takes NAME=ADDR[/PREFIX]"),
    (["--iface", "lan=10.0.0.300"], "is not an address"),
    (["--iface", "a very long name=10.0.0.1"], "is not an interface name"),
    (["--in-iface", "x/y"], "is not an interface name"),
    (["--snat", "1.2.3.4", "--iptables", "RULES"], "put the NAT rules in the ruleset"),
    (["--nft", "A", "--iptables", "B"], "give one ruleset"),
])
def test_option_errors(tmp_path, rules_file, args, message):
    cap = write_pcap(tmp_path / "c.pcap", [tcp(C1, SRV, 1, 2, SYN)])
    args = [str(rules_file) if a == "RULES" else a for a in args]
    rc, out, err = run_cli(["track", cap, *args])
    assert rc == 2 and message in err and "Traceback" not in err


NFT_RULES = """#!/usr/sbin/nft -f
table inet gw {
    ct helper ftp-standard {
        type "ftp" protocol tcp
    }
    chain raw {
        type filter hook prerouting priority raw; policy accept;
        udp dport 53 counter notrack
    }
    chain helpers {
        type filter hook prerouting priority filter; policy accept;
        ct state new tcp dport 21 counter ct helper set "ftp-standard"
    }
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" counter masquerade
    }
}
"""


def test_nft_file_with_helper_counters_and_warning(tmp_path):
    rules = tmp_path / "gw.nft"
    rules.write_text(NFT_RULES)
    frames = [tcp(C1, SRV, 40000, 21, SYN), udp(C1, SRV, 5000, 53), tcp(C1, SRV, 40001, 80, SYN)]
    cap = write_pcap(tmp_path / "c.pcap", frames)
    rc, out, err = run_cli(["track", cap, "--nft", rules, *IFACES, "--in-iface", "lan", "--show-rules"])
    assert rc == 0, err
    lines = table(out)
    assert len(lines) == 2                                   # the DNS datagram is not tracked
    ftp = [x for x in lines if "dport=21 " in x][0]
    assert ftp.endswith(" helper=ftp use=1") and "dst=203.0.113.5 sport=21 dport=40000" in ftp
    assert not [x for x in lines if "dport=80 " in x][0].count("helper=")
    assert f"fastct: warning: {rules}:3:5: ct helper 'ftp-standard' (type ftp)" in err
    assert "not modelled yet" in err
    # Counters: SYNs are 40 bytes of IP, the DNS datagram 33.
    assert "th dport 53 counter notrack    [packets 1 bytes 33]" in out
    assert 'ct helper set "ftp-standard"    [packets 1 bytes 40]' in out
    assert 'oifname "wan" counter masquerade    [packets 2 bytes 80]' in out


@pytest.mark.parametrize("text,where", [
    ("table inet t {\n  chain c {\n    type nat hook prerouting priority dstnat;\n    tcp dport 80 dnat to\n  }\n}\n",
     ":4:"),
    ("table inet t {\n  chain c {\n    type filter hook prerouting priority 0;\n    notrack\n  }\n}\n",
     ":4:5: notrack in chain inet t c: works only before conntrack"),
    ("table ip t {\n  chain c {\n    type nat hook postrouting priority 100;\n    oifname \"ppp0\" masquerade\n  }\n}\n",
     ":4:5: interface 'ppp0' is not declared"),
])
def test_nft_errors_name_file_line_and_column(tmp_path, text, where):
    rules = tmp_path / "bad.nft"
    rules.write_text(text)
    cap = write_pcap(tmp_path / "c.pcap", [tcp(C1, SRV, 1, 2, SYN)])
    for argv in (["track", cap, "--nft", rules, *IFACES], ["rules", "--nft", rules, *IFACES]):
        rc, out, err = run_cli(argv)
        assert rc == 2 and out == "" and "Traceback" not in err
        assert f"fastct: error: {rules}{where}" in err, err


def test_capture_interface_names_are_taken_as_they_are(tmp_path, rules_file):
    """A Windows capture's interface name is no Linux name; the capture still runs, the interface
    is simply one no rule names (it comes in on it, and leaves by the default route)."""
    name = "\\Device\\NPF_{F26A4083-C693-4956-B92E-F2DCB44767B8}"
    cap = write_pcapng_ifaces(tmp_path / "win.pcapng", [name], [(0, tcp(C1, SRV, 40001, 80, SYN))])
    rc, out, err = run_cli(["track", cap, "--iptables", rules_file, *IFACES])
    assert rc == 0, err
    # Not in on lan, so no redirect; out of wan: masqueraded.
    assert "src=93.184.216.34 dst=203.0.113.5 sport=80 dport=40001" in table(out)[0]


def test_interface_named_only_by_the_capture(tmp_path):
    """eth9 is declared by nothing but the pcapng file: rules may name it, and a wildcard matching
    it gives no 'matches no interface' warning."""
    rules = tmp_path / "a.nft"
    rules.write_text('table ip t {\n chain pre {\n  type nat hook prerouting priority dstnat; policy accept;\n'
                     '  iifname "eth9" counter\n  iifname "eth*" counter\n  iifname "wan" counter\n }\n}\n')
    cap = write_pcapng_ifaces(tmp_path / "c.pcapng", ["eth9", "wan"],
                              [(0, tcp(C1, SRV, 40000, 80, SYN)), (1, tcp(SRV, C1, 80, 40001, SYN))])
    rc, out, err = run_cli(["track", cap, "--nft", rules, "--show-rules"])
    assert rc == 0, err
    assert "warning" not in err
    assert 'iifname "eth9" counter    [packets 1 bytes 40]' in out
    assert 'iifname "eth*" counter    [packets 1 bytes 40]' in out
    assert 'iifname "wan" counter    [packets 1 bytes 40]' in out


def test_no_route_is_reported(tmp_path, rules_file):
    cap = write_pcap(tmp_path / "lan.pcap", [tcp(C1, SRV, 40001, 443, SYN)])
    rc, out, err = run_cli(["track", cap, "--iptables", rules_file, "--iface", "lan=10.0.0.254/24",
                            "--iface", "wan=203.0.113.5/24", "--in-iface", "lan"])
    assert rc == 0, err
    assert table(out) == []
    assert "fastct: 1 packets had no route (no --iface prefix holds their destination and there is " \
           "no --out-iface): dropped, as the gateway would" in err


def test_show_rules_with_a_capture_that_cannot_be_read(tmp_path, rules_file):
    """The capture's header is damaged: exit 1 with the error, and the rules still shown (zero
    counts), never a traceback."""
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes.fromhex("d4c3b2a1") + b"\x09\x00\x04\x00" + bytes(16))    # major version 9
    rc, out, err = run_cli(["track", bad, "--iptables", rules_file, *IFACES, "--show-rules"])
    assert rc == 1 and "Traceback" not in err and "fastct: error:" in err
    assert 'oifname "wan" counter masquerade    [packets 0 bytes 0]' in out
