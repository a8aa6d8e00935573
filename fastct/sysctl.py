"""Kernel settings by their own names: `net.netfilter.nf_conntrack_*`.

Users know these from `sysctl -a`; fastct takes the same names and the same defaults
(`Tracker(sysctl={...})`, `fastct track --sysctl NAME=VALUE`).  The timeout names and defaults come
from include/ct_defs.h (through fastct._engine.names()), never restated here.

fastct's one deliberate default difference: nf_conntrack_checksum is 0, not the kernel's 1, since
captures are usually taken before the NIC filled in checksums (offload).  Set it to 1 to check them
as the kernel does.
"""
from __future__ import annotations

from fastct import _engine

_NAMES = _engine.names()
TIMEOUT_NAMES: list[str] = [name for name, _ in _NAMES["timeouts"]]

# Switches and small integers: name -> (minimum, maximum, fastct default, kernel default).
SETTINGS: dict[str, tuple[int, int, int, int]] = {
    "tcp_loose": (0, 1, 1, 1),
    "tcp_be_liberal": (0, 1, 0, 0),
    "tcp_ignore_invalid_rst": (0, 1, 0, 0),
    "tcp_max_retrans": (0, 255, 3, 3),
    "checksum": (0, 1, 0, 1),
}
MAX_NAME = "max"
# Kernel settings whose behaviour fastct has built in: accepted at the value it implements.
FIXED = {"acct": 1, "timestamp": 1}
# Kernel settings that exist but that fastct does not model (a clear error, not "unknown").
NOT_MODELLED = {"log_invalid", "helper", "buckets", "expect_max", "events", "frag6_low_thresh",
                "frag6_high_thresh", "count"}
# net.ipv4.ipfrag_time (IPv4 reassembly, which nf_defrag_ipv4 shares with the stack) is accepted
# under its own name too; nf_conntrack_frag6_timeout is netfilter's IPv6 one.
PREFIXES = ("net.netfilter.", "net/netfilter/", "net.ipv4.", "net/ipv4/")
TIMEOUT_MAX_SECONDS = 2**31 - 1


def short_name(name: str) -> str:
    """'net.netfilter.nf_conntrack_tcp_loose' -> 'tcp_loose' (any of the usual spellings)."""
    if not isinstance(name, str):
        raise ValueError(f"sysctl name must be a string, not {name!r}")
    key = name.strip()
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key.startswith("nf_conntrack_"):
        key = key[len("nf_conntrack_"):]
    return key


def full_name(key: str) -> str:
    return "net.ipv4." + key if key == "ipfrag_time" else "nf_conntrack_" + key


def known_names() -> list[str]:
    return [full_name(n) for n in [MAX_NAME, *SETTINGS, *FIXED, *TIMEOUT_NAMES]]


def _int_value(name: str, value) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 10)
        except ValueError:
            pass
    raise ValueError(f"sysctl {name}: value must be an integer, not {value!r}")


def normalise(sysctl: dict | None) -> dict[str, int]:
    """Validate {name: value} and return {short name: int}.  Raises ValueError naming the setting."""
    out: dict[str, int] = {}
    for name, value in (sysctl or {}).items():
        key = short_name(name)
        v = _int_value(name, value)
        if key == MAX_NAME:
            if not 1 <= v <= 2**31 - 1:
                raise ValueError(f"sysctl {name}: must be between 1 and {2**31 - 1} (fastct needs a "
                                 f"bound: 0, 'no limit' in the kernel, is not accepted), not {v}")
        elif key in SETTINGS:
            lo, hi, _, _ = SETTINGS[key]
            if not lo <= v <= hi:
                raise ValueError(f"sysctl {name}: must be between {lo} and {hi}, not {v}")
        elif key in TIMEOUT_NAMES:
            if not 0 <= v <= TIMEOUT_MAX_SECONDS:
                raise ValueError(f"sysctl {name}: a timeout in seconds between 0 and "
                                 f"{TIMEOUT_MAX_SECONDS}, not {v}")
        elif key in FIXED:
            if v != FIXED[key]:
                raise ValueError(f"sysctl {name}: fastct always behaves as {name}={FIXED[key]}")
        elif key in NOT_MODELLED:
            raise ValueError(f"sysctl {name}: a kernel setting fastct does not model")
        else:
            raise ValueError(f"unknown sysctl {name!r}; fastct knows: {', '.join(known_names())}")
        if key in out and out[key] != v:
            raise ValueError(f"sysctl {name} given twice with different values")
        out[key] = v
    return out


def parse_assignment(text: str) -> tuple[str, str]:
    """'NAME=VALUE' (as on the command line) -> (NAME, VALUE)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"--sysctl takes NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


def parse_timeout_policy(text: str) -> tuple[int, str, int]:
    """'ZONE:NAME=SECONDS' -> (zone, timeout short name, seconds)."""
    zone_text, sep, rest = text.partition(":")
    name, sep2, value = rest.partition("=")
    if not sep or not sep2:
        raise ValueError(f"--timeout-policy takes ZONE:NAME=SECONDS, not {text!r}")
    try:
        zone = int(zone_text, 10)
    except ValueError:
        raise ValueError(f"--timeout-policy {text!r}: zone must be an integer") from None
    key, seconds = validate_policy_entry(zone, name, value)
    return zone, key, seconds


def validate_policy_entry(zone, name, value) -> tuple[str, int]:
    if isinstance(zone, bool) or not isinstance(zone, int) or not 0 <= zone <= 65535:
        raise ValueError(f"timeout policy: zone must be 0..65535, not {zone!r}")
    key = short_name(name)
    if key not in TIMEOUT_NAMES:
        raise ValueError(f"timeout policy for zone {zone}: unknown timeout {name!r}; known: "
                         f"{', '.join(TIMEOUT_NAMES)}")
    seconds = _int_value(name, value)
    if not 0 <= seconds <= TIMEOUT_MAX_SECONDS:
        raise ValueError(f"timeout policy for zone {zone}: {name} must be 0..{TIMEOUT_MAX_SECONDS} "
                         f"seconds, not {seconds}")
    return key, seconds
