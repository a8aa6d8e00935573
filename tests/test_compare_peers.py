"""benchmarks/compare_peers.py on a tiny generated capture: fastct, the dpkt dict tracker and NFStream
find the same flows with the same packets and IP bytes per direction (what all three compute), the
TCP states agree where the dict tracker's flag-only state machine can say, and --json carries its
documented fields.  The NFStream parts skip when nfstream is not installed (`pip install nfstream`)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
PACKETS, FLOWS = 3000, 80

pytest.importorskip("dpkt")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_peers_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cp = _load("compare_peers")
gen = _load("gen_mixed_pcap")
pdt = _load("peer_dict_tracker")


def _nfstream_or_skip():
    if importlib.util.find_spec("nfstream") is None:
        pytest.skip("nfstream is not installed (pip install nfstream): the NFStream comparison is skipped")


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("peers") / "tiny.pcap"
    truth = gen.write(path, PACKETS, FLOWS, seed=3)
    return path, truth


def test_generated_capture_is_what_it_says(capture):
    path, truth = capture
    assert len(truth) == FLOWS and int(truth.packets.sum()) == PACKETS
    protos = set(truth.proto.tolist())
    assert {6, 17}.issubset(protos) and protos & {1, 58}
    assert truth.ipv6.any() and not truth.ipv6.all()
    # Deterministic: the same seed gives the same bytes.
    again = gen.generate(PACKETS, FLOWS, seed=3)[0]
    assert again.tobytes() == path.read_bytes()


def test_fastct_and_dict_tracker_agree_flow_by_flow(capture):
    path, truth = capture
    expected = truth.table()
    _, fastct_table, extra, keep = cp.run_fastct(path, 4096)
    assert extra["invalid"] == 0 and extra["insert"] == FLOWS   # the generated TCP is kernel-valid
    assert fastct_table() == expected
    _, dict_table, extra, _ = cp.run_dict(path)
    assert extra["skipped"] == 0
    assert dict_table() == expected


def test_tcp_states_agree(capture):
    path, _ = capture
    from fastct import CaptureReader, Tracker
    from fastct.tracker import TCP_STATES
    t = Tracker(seed=1)
    with CaptureReader(path) as reader:
        for batch in reader:
            t.process(batch)
        tcp = t.entries()["proto"] == 6
        ents = t.entries()[tcp]
        table = cp.table_fastct(ents, t.counters()[tcp])
        fastct_state = dict(zip(table, (TCP_STATES[s] for s in ents["state"])))
    flows, _ = pdt.track(path)
    dict_state = {gen.canonical_key(r[0], r[1], r[2], r[3], r[4]): r[9] for r in pdt.rows(flows) if r[0] == 6}
    assert dict_state == fastct_state
    assert {"TIME_WAIT", "ESTABLISHED"} <= set(dict_state.values())


def test_nfstream_agrees_flow_by_flow(capture, tmp_path):
    _nfstream_or_skip()
    path, truth = capture
    dump = tmp_path / "nfstream.json"
    rec = cp.run_tool("nfstream", path, dump=dump)
    assert rec["available"], rec
    got = {k: tuple(v) for k, v in json.loads(dump.read_text()).items()}
    assert got == truth.table()


def _run(*args):
    proc = subprocess.run([sys.executable, str(BENCH / "compare_peers.py"), *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


TOOL_FIELDS = {"available", "work_s", "work_s_all", "work_cpu_s", "work_cpu_s_all", "process_s",
               "process_s_all", "pps", "flows", "flow_packets", "peak_rss_mb", "child_peak_rss_mb",
               "rss_anon_end_mb", "agree", "digest"}


def test_runner_json_has_documented_fields():
    rep = json.loads(_run("--packets", str(PACKETS), "--flows", str(FLOWS), "--repeats", "1", "--json"))
    assert {"capture", "repeats", "wall_over_cpu", "machine", "versions", "tools", "fastct_hot", "ratios",
            "agree"} <= set(rep)
    assert rep["capture"]["generated"] and rep["capture"]["packets"] == PACKETS
    assert rep["capture"]["flows"] == FLOWS
    tools = rep["tools"]
    for name in ("fastct", "dict"):
        assert TOOL_FIELDS <= set(tools[name]), name
        assert tools[name]["flows"] == FLOWS and tools[name]["flow_packets"] == PACKETS
        assert tools[name]["agree"] is True
    assert tools["fastct_cli"]["flows"] == FLOWS
    assert rep["fastct_hot"]["pps"] > 0
    assert set(rep["ratios"]) == {"fastct/dict", "fastct/nfstream", "fastct/dict_process",
                                  "fastct/nfstream_process", "fastct/dict_cpu", "fastct/nfstream_cpu"}
    assert rep["ratios"]["fastct/dict"] > 0
    if tools["nfstream"]["available"]:
        assert TOOL_FIELDS <= set(tools["nfstream"])
        assert tools["nfstream"]["flows"] == FLOWS and tools["nfstream"]["agree"] is True
        assert rep["ratios"]["fastct/nfstream"] > 0
    else:
        assert "nfstream" in tools["nfstream"]["reason"]
        assert rep["ratios"]["fastct/nfstream"] is None
    assert rep["agree"] is True


def test_runner_on_a_given_capture(capture):
    path, _ = capture
    rep = json.loads(_run("--pcap", str(path), "--repeats", "1", "--tools", "fastct,dict", "--json"))
    assert rep["capture"]["generated"] is False and rep["capture"]["packets"] == PACKETS
    assert rep["tools"]["dict"]["agree"] is True      # with --pcap: compared with fastct's table
    assert "nfstream" not in rep["tools"] and rep["ratios"]["fastct/nfstream"] is None
    text = _run("--pcap", str(path), "--repeats", "1", "--tools", "fastct,dict")
    assert "fastct is faster than dpkt+dict by" in text and "WARNING" not in text
