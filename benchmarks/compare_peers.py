"""fastct against what a user would otherwise pick, on the same capture, in one run.

    python benchmarks/compare_peers.py [--packets N] [--flows N] [--repeats R] [--json] [--pcap PATH]
                                       [--tools fastct,dict,nfstream] [--seed S]

Peers (both from PyPI: `pip install dpkt nfstream`; NFStream's wheel bundles libpcap and nDPI):
- dict: benchmarks/peer_dict_tracker.py, the tracker a Python user writes by hand (dpkt parses,
  a dict keyed by the direction-normalised 5-tuple holds packets/bytes per direction, TCP state
  from the flags, first/last seen);
- nfstream: NFStream's NFStreamer(source=pcap) in its leanest setting (n_dissections=0, no
  statistics, no SPLT, decode_tunnels=False, one meter process -- the most it allows on 2 CPUs --,
  idle and active timeouts of 10^7 s so that every flow is emitted once, at the end;
  accounting_mode=1 counts IP bytes, as conntrack does). Packets are parsed in C (libpcap and its
  engine); the flow cache is a Python OrderedDict, updated once per packet through cffi.
What each computes that the others do not: fastct runs the kernel's conntrack (TCP window and
sequence tracking with invalid packets refused, per-protocol states and timeouts, ICMP errors as
related, fragment reassembly, zones, table limits and early drop) and a ct_state per packet;
NFStream gives, in this setting, 28 fields per flow (MACs and OUIs, VLAN, first/last seen and
duration per direction in ms, packets and bytes per direction; with statistical_analysis=True 76,
adding packet-size and inter-arrival statistics and TCP flag counts; SPLT, nDPI application labels
and tunnel decoding with other settings) but keys ICMP by addresses only, has no TCP state and
ends flows by timeouts only; the dict tracker counts and keeps a flag-only TCP state.
Without --pcap a capture is generated (benchmarks/gen_mixed_pcap.py: TCP/UDP/ICMP echo, IPv4 and
IPv6, default 1M packets over 20k flows, fixed seed) into a temporary directory, removed after.

Each tool runs in a fresh interpreter per repeat (tools rotated between repeats), after the
capture was read once into the page cache. `work` is the tool's own time from opening the capture
to its finished flow table in memory (file reading and parsing included; interpreter start-up and
imports excluded); `process` runs from launching the interpreter to the finished table (start-up
and imports included; the checks done afterwards are not); `CPU` is the work's user + system
time (NFStream's meter process included). Figures are medians over the repeats. fastct also runs
`fastct track FILE` (the CLI, whole process, table printed to /dev/null) and a hot in-process
loop (imports done, file in the page cache) for its throughput. Peak RSS is each worker's VmHWM
(NFStream: plus its meter process, ru_maxrss of the children); fastct's includes the capture's
pages it memory-maps (file-backed, shared with the page cache), so the private memory at the end
(RssAnon) is reported too. `wall_over_cpu` (median work wall / CPU time of the single-process
tools' runs longer than 0.2 s) shows contention: near 1.0 the machine was otherwise idle; above
1.15 a note says so.

The flow tables are compared on what all three compute: per flow (proto, both addresses and ports;
ICMP without echo id, as NFStream keys it) the packets and IP bytes in each direction, the
original direction being the first packet's. `agree` says a tool's table equals the generator's
truth (with --pcap: fastct's table).

--json prints one object: {"capture": {path, generated, packets, flows, bytes, seed, gen_s},
"repeats", "wall_over_cpu", "machine": {cpus, python, platform, loadavg_start, loadavg_end},
"versions": {fastct, dpkt, nfstream}, "tools": {fastct|dict|nfstream|fastct_cli: {available,
reason, work_s, work_s_all, work_cpu_s, work_cpu_s_all, process_s, process_s_all, pps, flows,
flow_packets, peak_rss_mb, child_peak_rss_mb, rss_anon_end_mb, agree, digest}},
"fastct_hot": {pps, work_s, work_s_all}, "ratios": {"fastct/dict", "fastct/nfstream",
"fastct/dict_process", "fastct/nfstream_process", "fastct/dict_cpu", "fastct/nfstream_cpu"},
"agree"}. A tool that is not installed has
{available: false, reason}; fastct_cli has only process_s and flows. Ratios are how many times
faster fastct is (the peer's median time / fastct's: work, process or CPU), null when a tool did
not run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))     # sibling modules, also under PYTHONSAFEPATH

TOOLS = ("fastct", "dict", "nfstream")
BIG_TIMEOUT_S = 10**7             # NFStream idle/active timeouts: nothing expires during a capture
NFSTREAM_SETTINGS = dict(decode_tunnels=False, n_dissections=0, statistical_analysis=False, splt_analysis=0,
                         idle_timeout=BIG_TIMEOUT_S, active_timeout=BIG_TIMEOUT_S, accounting_mode=1,
                         n_meters=1)
ICMP_PROTOS = (1, 58)


# ---- the tools, as a user would run them (each returns its table builder) ------------------------

def run_fastct(path, max_conns):
    from fastct import CaptureReader, Tracker
    t0 = time.perf_counter()
    tracker = Tracker(max_conns=max_conns, seed=1)
    reader = CaptureReader(path)
    for batch in reader:
        tracker.process(batch)
    if reader.error is not None:
        raise reader.error
    entries, counters = tracker.entries(), tracker.counters()
    dt = time.perf_counter() - t0
    stats = tracker.stats()
    extra = {"packets": stats["packets"], "insert": stats["insert"], "invalid": stats["invalid"]}
    return dt, lambda: table_fastct(entries, counters), extra, (reader, tracker)


def run_dict(path, max_conns=None):
    import peer_dict_tracker
    t0 = time.perf_counter()
    flows, stats = peer_dict_tracker.track(path)
    dt = time.perf_counter() - t0
    return dt, lambda: table_dict(flows), {"packets": stats["packets"], "skipped": stats["skipped"]}, None


def run_nfstream(path, max_conns=None):
    from nfstream import NFStreamer
    t0 = time.perf_counter()
    flows = list(NFStreamer(source=str(path), **NFSTREAM_SETTINGS))
    dt = time.perf_counter() - t0
    return dt, lambda: table_nfstream(flows), {}, None


RUNNERS = {"fastct": run_fastct, "dict": run_dict, "nfstream": run_nfstream}


# ---- flow tables in one form: {canonical key: (packets orig, reply, bytes orig, reply)} -------------

def _key(proto, a, ap, b, bp):
    from gen_mixed_pcap import canonical_key
    return canonical_key(proto, a, ap, b, bp)


def table_fastct(entries, counters):
    import ipaddress
    out = {}
    for e, cnt in zip(entries, counters):
        proto, l3 = int(e["proto"]), int(e["l3"])
        raw_s, raw_d = e["src"].tobytes(), e["dst"].tobytes()
        a = ipaddress.IPv4Address(raw_s[:4]) if l3 == 2 else ipaddress.IPv6Address(raw_s)
        b = ipaddress.IPv4Address(raw_d[:4]) if l3 == 2 else ipaddress.IPv6Address(raw_d)
        ports = (0, 0) if proto in ICMP_PROTOS else (int(e["sport"]), int(e["dport"]))
        p, by = cnt["packets"], cnt["bytes"]
        out[_key(proto, str(a), ports[0], str(b), ports[1])] = (int(p[0]), int(p[1]), int(by[0]), int(by[1]))
    return out


def table_dict(flows):
    import peer_dict_tracker
    out = {}
    for r in peer_dict_tracker.rows(flows):
        proto, a, ap, b, bp = r[:5]
        if proto in ICMP_PROTOS:
            ap = bp = 0
        out[_key(proto, a, ap, b, bp)] = tuple(r[5:9])
    return out


def table_nfstream(flows):
    out = {}
    for f in flows:
        out[_key(f.protocol, f.src_ip, f.src_port, f.dst_ip, f.dst_port)] = (
            f.src2dst_packets, f.dst2src_packets, f.src2dst_bytes, f.dst2src_bytes)
    return out


def digest(table) -> str:
    lines = sorted(f"{k} {' '.join(map(str, v))}" for k, v in table.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _status_kb(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _cpu_s(who):
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def worker(tool, path, max_conns, dump=None):
    """Run one tool once in this (fresh) process; print one JSON line."""
    try:
        __import__({"fastct": "fastct", "dict": "peer_dict_tracker", "nfstream": "nfstream"}[tool])
    except ImportError as exc:
        reason = f"{exc} (pip install {exc.name or tool})"
        print(json.dumps({"tool": tool, "available": False, "reason": reason}))
        return 0
    cpu0 = _cpu_s(resource.RUSAGE_SELF)
    dt, make_table, extra, keep = RUNNERS[tool](path, max_conns)
    end_wall = time.time()
    # CPU seconds of the work (imports done before), helper processes (NFStream's meter) included
    cpu = _cpu_s(resource.RUSAGE_SELF) - cpu0 + _cpu_s(resource.RUSAGE_CHILDREN)
    anon = _status_kb("RssAnon")
    peak = _status_kb("VmHWM")       # not ru_maxrss: Linux carries the parent's peak across exec
    table = make_table()
    del keep
    out = {"tool": tool, "available": True, "work_s": dt, "flows": len(table),
           "flow_packets": sum(v[0] + v[1] for v in table.values()), "digest": digest(table),
           "end_wall": end_wall, "work_cpu_s": cpu, "peak_rss_kb": peak,
           "child_peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
           "rss_anon_end_kb": anon, **extra}
    if dump:
        with open(dump, "w") as fh:
            json.dump(table, fh)
    print(json.dumps(out))
    return 0


def worker_hot(path, max_conns, repeats):
    """fastct in one process, imports done and file in the page cache: median of repeats."""
    times = []
    for i in range(repeats + 1):
        dt, _, extra, (reader, _tracker) = run_fastct(path, max_conns)
        reader.close()
        if i:
            times.append(dt)
    print(json.dumps({"work_s_all": times, "packets": extra["packets"]}))
    return 0


# ---- the runner ---------------------------------------------------------------------------------

def _env():
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")     # as the fastct CLI does
    return env


def _spawn(args, timeout=3600):
    """Run a worker; returns its JSON record and the wall-clock time it was launched at."""
    start_wall = time.time()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True,
                          text=True, env=_env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), start_wall


def run_tool(tool, path, max_conns=1 << 20, dump=None):
    """One run of `tool` in a fresh interpreter: its worker record plus process_s."""
    args = ["--worker", tool, str(path), "--max-conns", str(max_conns)]
    if dump:
        args += ["--dump", str(dump)]
    rec, start_wall = _spawn(args)
    if rec.get("available"):
        # launch to finished table: start-up, imports and the work, not the checks after it
        rec["process_s"] = rec["end_wall"] - start_wall
    return rec


def run_cli(path):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fastct.cli", "track", "--seed", "1", str(path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fastct track failed: {proc.stderr}")
    shown = [ln for ln in proc.stderr.splitlines() if "flow entries have been shown" in ln]
    flows = int(shown[0].split(":")[1].split()[0]) if shown else None
    return {"tool": "fastct_cli", "available": True, "process_s": wall, "flows": flows}


def _versions():
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("fastct", "dpkt", "nfstream"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _summarise(runs, packets, reference):
    ok = [r for r in runs if r.get("available")]
    if not ok:
        return {"available": False, "reason": runs[0].get("reason") if runs else "not run"}
    s = {"available": True}
    for field in ("work_s", "work_cpu_s", "process_s"):
        vals = [r[field] for r in ok if field in r]
        if vals:
            s[field] = statistics.median(vals)
            s[field + "_all"] = [round(v, 4) for v in vals]
    if "work_s" in s:
        s["pps"] = packets / s["work_s"] if packets else None
    last = ok[-1]
    for field in ("flows", "flow_packets", "digest", "insert", "invalid", "skipped"):
        if field in last:
            s[field] = last[field]
    mb = lambda kb: round(kb / 1024, 1) if kb is not None else None      # noqa: E731
    peak = lambda field: max((r[field] for r in ok if r.get(field) is not None), default=None)  # noqa: E731
    if "peak_rss_kb" in last:
        s["peak_rss_mb"] = mb(peak("peak_rss_kb"))
        s["child_peak_rss_mb"] = mb(peak("child_peak_rss_kb"))
        s["rss_anon_end_mb"] = mb(peak("rss_anon_end_kb"))
    if "digest" in last:
        s["agree"] = reference is not None and all(r["digest"] == reference for r in ok)
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="fastct vs. a dpkt dict tracker and NFStream, same capture")
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets to generate (default 1M)")
    ap.add_argument("--flows", type=int, default=20_000, help="flows to generate (default 20k)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per tool; medians are reported")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    ap.add_argument("--pcap", help="use this capture instead of generating one")
    ap.add_argument("--seed", type=int, default=1, help="generator seed")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma list of fastct,dict,nfstream")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--hot", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--max-conns", type=int, default=1 << 20, help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    ap.add_argument("worker_path", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        if args.worker == "fastct-hot":
            return worker_hot(args.worker_path, args.max_conns, args.hot or 5)
        return worker(args.worker, args.worker_path, args.max_conns, args.dump)
    tools = [t for t in args.tools.split(",") if t]
    bad = [t for t in tools if t not in TOOLS]
    if bad or args.repeats < 1:
        ap.error(f"unknown tool(s) {bad}; use {','.join(TOOLS)}" if bad else "--repeats must be >= 1")
    with tempfile.TemporaryDirectory(prefix="fastct-peers-") as tmp:
        return _run(args, tools, tmp)


def _run(args, tools, tmp) -> int:
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    load_start = os.getloadavg()[0]
    capture = {"generated": args.pcap is None, "seed": None, "gen_s": None}
    truth_digest = None
    if args.pcap:
        path = Path(args.pcap)
        packets = flows = None
        max_conns = 1 << 20
    else:
        import gen_mixed_pcap
        path = Path(tmp) / f"mixed_{args.packets}_{args.flows}_{args.seed}.pcap"
        log(f"generating {args.packets} packets over {args.flows} flows (seed {args.seed}) ...")
        t0 = time.perf_counter()
        truth = gen_mixed_pcap.write(path, args.packets, args.flows, args.seed)
        capture.update(seed=args.seed, gen_s=round(time.perf_counter() - t0, 2))
        truth_digest = digest(truth.table())
        packets, flows = args.packets, len(truth)
        max_conns = max(262144, 2 * args.flows)
    with open(path, "rb") as fh:                       # into the page cache
        while fh.read(1 << 24):
            pass
    capture.update(path=str(path), packets=packets, flows=flows, bytes=path.stat().st_size)

    runs = {t: [] for t in tools}
    cli_runs = []
    for r in range(args.repeats):
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for tool in order:
            rec = run_tool(tool, path, max_conns)
            runs[tool].append(rec)
            if rec.get("available"):
                log(f"  repeat {r + 1}/{args.repeats} {tool:<9} work {rec['work_s']:7.3f} s, "
                    f"process {rec['process_s']:7.3f} s, {rec['flows']} flows")
            else:
                log(f"  {tool}: not available: {rec.get('reason')}")
        if "fastct" in tools:
            cli_runs.append(run_cli(path))
    if packets is None:
        seen = [r["packets"] for r in runs.get("fastct", []) + runs.get("dict", []) if "packets" in r]
        packets = seen[0] if seen else None
        capture["packets"] = packets
    reference = truth_digest
    if reference is None and runs.get("fastct") and runs["fastct"][0].get("available"):
        reference = runs["fastct"][0]["digest"]
    results = {t: _summarise(runs[t], packets, reference) for t in tools}
    hot = None
    if "fastct" in tools:
        results["fastct_cli"] = _summarise(cli_runs, packets, None)
        results["fastct_cli"]["flows"] = cli_runs[-1]["flows"]
        rec, _ = _spawn(["--worker", "fastct-hot", str(path), "--max-conns", str(max_conns),
                         "--hot", str(max(args.repeats, 5))])
        med = statistics.median(rec["work_s_all"])
        hot = {"work_s": med, "work_s_all": [round(v, 4) for v in rec["work_s_all"]],
               "pps": rec["packets"] / med}

    def ratio(peer, field="work_s"):
        a, b = results.get("fastct", {}), results.get(peer, {})
        if a.get(field) and b.get(field):
            return b[field] / a[field]
        return None
    ratios = {"fastct/dict": ratio("dict"), "fastct/nfstream": ratio("nfstream"),
              "fastct/dict_process": ratio("dict", "process_s"),
              "fastct/nfstream_process": ratio("nfstream", "process_s"),
              "fastct/dict_cpu": ratio("dict", "work_cpu_s"),
              "fastct/nfstream_cpu": ratio("nfstream", "work_cpu_s")}
    # Contention check: a single-process tool alone on a CPU has wall time ~= CPU time.
    single = [r["work_s"] / r["work_cpu_s"] for t in ("dict", "fastct") for r in runs.get(t, [])
              if r.get("available") and r.get("work_cpu_s") and r["work_s"] > 0.2]
    report = {"capture": capture, "repeats": args.repeats,
              "wall_over_cpu": round(statistics.median(single), 3) if single else None,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "loadavg_start": round(load_start, 2),
                          "loadavg_end": round(os.getloadavg()[0], 2)},
              "versions": _versions(), "tools": results, "fastct_hot": hot, "ratios": ratios,
              "agree": all(v.get("agree", True) for v in results.values() if v.get("available"))}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0


def print_report(rep):
    c = rep["capture"]
    src = f"generated, seed {c['seed']}, {c['gen_s']} s" if c["generated"] else c["path"]
    print(f"capture: {c['packets']} packets, {c['flows'] if c['flows'] is not None else '?'} flows, "
          f"{c['bytes'] / 1e6:.0f} MB ({src}); "
          + (f"medians of {rep['repeats']} runs" if rep["repeats"] > 1 else "1 run")
          + ", file in the page cache")
    print(f"{'tool':<20} {'work s':>8} {'Mpps':>7} {'CPU s':>7} {'process s':>10} {'flows':>8} "
          f"{'pkts in flows':>14} "
          f"{'peak RSS MB':>12} {'RssAnon MB':>11}  agree")
    names = {"fastct": "fastct (Tracker)", "fastct_cli": "fastct track (CLI)", "dict": "dpkt + dict",
             "nfstream": "NFStream"}
    for tool in ("fastct", "fastct_cli", "dict", "nfstream"):
        s = rep["tools"].get(tool)
        if s is None:
            continue
        if not s.get("available"):
            print(f"{names[tool]:<20} not available: {s.get('reason')}")
            continue
        w = s.get("work_s")
        rss = s.get("peak_rss_mb")
        child = s.get("child_peak_rss_mb") or 0
        rss_txt = "" if rss is None else (f"{rss:.0f}" + (f" +{child:.0f}" if child > 1 else ""))
        anon = s.get("rss_anon_end_mb")
        w_txt = "-" if w is None else f"{w:.3f}"
        pps_txt = f"{s['pps'] / 1e6:.2f}" if s.get("pps") else "-"
        cpu_txt = f"{s['work_cpu_s']:.3f}" if s.get("work_cpu_s") is not None else "-"
        print(f"{names[tool]:<20} {w_txt:>8} {pps_txt:>7} {cpu_txt:>7} {s['process_s']:10.3f} "
              f"{s.get('flows') if s.get('flows') is not None else '':>8} {s.get('flow_packets', ''):>14} "
              f"{rss_txt:>12} {'' if anon is None else f'{anon:.0f}':>11}  "
              f"{'' if 'agree' not in s else ('yes' if s['agree'] else 'NO')}")
    if rep["fastct_hot"]:
        h = rep["fastct_hot"]
        print(f"fastct in-process, hot (imports done, file in page cache): {h['work_s']:.3f} s, "
              f"{h['pps'] / 1e6:.2f} Mpps")
    r = rep["ratios"]
    fmt = lambda x: f"{x:.1f}x" if x else "n/a"          # noqa: E731
    print(f"fastct is faster than dpkt+dict by {fmt(r['fastct/dict'])} (CPU time "
          f"{fmt(r['fastct/dict_cpu'])}, whole process {fmt(r['fastct/dict_process'])}), than NFStream by "
          f"{fmt(r['fastct/nfstream'])} (CPU time {fmt(r['fastct/nfstream_cpu'])}, whole process "
          f"{fmt(r['fastct/nfstream_process'])})")
    if rep["wall_over_cpu"] and rep["wall_over_cpu"] > 1.15:
        m = rep["machine"]
        print(f"NOTE: the single-process tools took {rep['wall_over_cpu']:.2f}x their CPU time in wall "
              f"time (load average {m['loadavg_start']} at the start, {m['loadavg_end']} at the end): other "
              f"processes competed for the CPUs, so wall times are inflated; compare CPU s")
    if not rep["agree"]:
        print("WARNING: the flow tables differ (see 'agree'); the tools did not do the same job")


if __name__ == "__main__":
    sys.exit(main())
