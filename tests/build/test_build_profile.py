"""Build (ORT) + sidecar + refusals, profile (LUT), bench and the timing helpers, on real ONNX graphs."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest

from _fixtures import make_onnx_dir
from mess_edge.errors import MessError
from mess_edge.profile import timing
from mess_edge.profile.bench import BenchConfig, bench_engines, format_bench
from mess_edge.build.builder import build_engines
from mess_edge.runtime.device import describe_device, slug
from mess_edge.build.engine_set import load_engines
from mess_edge.profile.latency_table import ProfileConfig, profile_engines

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ProfileConfig(min_iters=7, min_seconds=0.005, warmup_s=0.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("build")
    onnx_dir, eng = str(base / "onnx"), str(base / "engines")
    make_onnx_dir(onnx_dir)
    lines = []
    assert build_engines(onnx_dir, "ort", out_dir=eng, log=lines.append) == eng
    assert len(lines) == 10 and lines[0].startswith("[  1/10] segment_0")
    return onnx_dir, eng


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sidecar_records_the_build(built):
    onnx_dir, eng = built
    side = json.load(open(os.path.join(eng, "engine.json")))
    manifest = json.load(open(os.path.join(onnx_dir, "manifest.json")))
    assert side["format"] == "mess-edge-engines/1"
    assert (side["backend"], side["precision"], side["providers"]) == ("ort", "fp32", ["cpu"])
    assert side["device"]["id"] == describe_device("ort")["id"]
    assert side["device"]["id"].startswith("cpu-") and side["device"]["id"].endswith("-ort")
    assert side["versions"]["onnxruntime"] == ort.__version__
    assert side["input_hw"] == [32, 32]
    assert side["rebuild_command"] == "mess-edge build {} --backend ort --precision fp32 --out {}".format(onnx_dir, eng)
    assert [g["name"] for g in side["graphs"]] == [g["name"] for g in manifest["graphs"]]
    for g, m in zip(side["graphs"], manifest["graphs"]):
        assert g["onnx_sha256"] == m["sha256"] and g["inputs"] == m["inputs"] and g["file"] == m["name"] + ".onnx"
        assert os.path.isfile(os.path.join(eng, g["file"]))
    assert open(os.path.join(eng, "manifest.json"), "rb").read() == open(os.path.join(onnx_dir, "manifest.json"),
                                                                          "rb").read()


def test_built_graphs_compute_what_the_onnx_graphs_compute(built):
    onnx_dir, eng = built
    engines = load_engines(eng)
    rng = np.random.default_rng(3)
    for name in ("segment_0", "head_e1_c1b1r0h0", "final", "monolithic"):
        g = engines.graph(name)
        feed = {i["name"]: (np.array([0.55], np.float32) if i["name"] == "th_pix" else
                            rng.standard_normal(i["shape"]).astype(np.float32)) for i in g["inputs"]}
        want = ort.InferenceSession(os.path.join(onnx_dir, g["file"]), providers=["CPUExecutionProvider"]).run(None, feed)
        with engines.runner(name) as r:
            got = r.infer(feed)
        for o, w in zip(g["outputs"], want):
            np.testing.assert_allclose(got[o["name"]], w, rtol=1e-4, atol=1e-5)


def test_refuses_another_device_or_version(built, tmp_path):
    eng = _copy(built[1], str(tmp_path / "e"))
    path = os.path.join(eng, "engine.json")
    side = json.load(open(path))
    rebuild = side["rebuild_command"]
    side["device"]["id"] = "xavier-sm72-trt8.5"
    json.dump(side, open(path, "w"))
    with pytest.raises(MessError) as e:
        load_engines(eng)
    assert "built for device 'xavier-sm72-trt8.5'; got this device '{}'".format(describe_device("ort")["id"]) in str(e.value)
    assert str(e.value).endswith("rebuild here: " + rebuild)
    side["device"]["id"] = describe_device("ort")["id"]
    side["versions"]["onnxruntime"] = "1.14.1"
    json.dump(side, open(path, "w"))
    with pytest.raises(MessError, match=r"built with onnxruntime 1.14.1; got onnxruntime {}.*rebuild here: mess-edge "
                                        r"build".format(ort.__version__)):
        load_engines(eng)


def test_refuses_changed_engine_file_and_missing_sidecar(built, tmp_path):
    eng = _copy(built[1], str(tmp_path / "e"))
    with open(os.path.join(eng, "final.onnx"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(MessError, match=r"engine file .*final.onnx is missing or changed since the build; rebuild"):
        load_engines(eng)
    os.remove(os.path.join(eng, "engine.json"))
    with pytest.raises(MessError, match=r"engine sidecar not found: .*engine.json"):
        load_engines(eng)


@pytest.mark.parametrize("option, value, message", [
    ("--workspace-mib", "0", "Error: Invalid value for '--workspace-mib': 0 is not in the range 1<=x<=1048576."),
    ("--calib-images", "0", "Error: Invalid value for '--calib-images': 0 is not in the range x>=1.")])
def test_build_option_ranges(built, tmp_path, capsys, option, value, message):
    from mess_edge.cli import main

    out = str(tmp_path / "e")
    with pytest.raises(SystemExit) as e:
        main(["build", built[0], "--backend", "ort", "--out", out, option, value])
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not os.path.exists(out)  # refused before anything was built


def _malformed(side, case):
    """Edit a sidecar dict in place into one of the malformed cases; return the field the error must name."""
    if case == "missing":
        del side["graphs"][1]["file"]
        return "graphs[1].file got nothing (missing); expected a string"
    if case == "type":
        side["device"] = "cpu"
        return "device got 'cpu'; expected an object"
    if case == "graphs":
        side["graphs"] = {"segment_0": {}}
        return "graphs got {'segment_0': {}}; expected a list"
    if case == "no-id":
        del side["device"]["id"]
        return "device.id got nothing (missing); expected the device id"
    if case == "short":
        name = side["graphs"].pop()["name"]
        return "has no engine for graph(s) {} of".format(name)
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "type", "graphs", "no-id", "short"])
def test_malformed_sidecar_is_one_line_naming_file_and_field(built, tmp_path, case):
    eng = _copy(built[1], str(tmp_path / "e"))
    path = os.path.join(eng, "engine.json")
    side = json.load(open(path))
    field = _malformed(side, case)
    json.dump(side, open(path, "w"))
    with pytest.raises(MessError) as e:
        load_engines(eng)
    text = str(e.value)
    assert "\n" not in text and path in text and field in text, text
    if case == "missing":
        r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "profile", eng], capture_output=True, text=True,
                           cwd=ROOT)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: " + text]


def test_manifest_sha_mismatch(built, tmp_path):
    onnx_dir = _copy(built[0], str(tmp_path / "onnx"))
    with open(os.path.join(onnx_dir, "segment_1.onnx"), "ab") as f:
        f.write(b"\0")  # still loadable, but not what was exported
    with pytest.raises(MessError, match=r"segment_1.onnx changed after export: got sha256 [0-9a-f]{16}; expected "
                                        r"[0-9a-f]{16} \(manifest\); try re-exporting"):
        build_engines(onnx_dir, "ort", out_dir=str(tmp_path / "e"))


def test_corrupt_and_missing_onnx(built, tmp_path):
    onnx_dir = _copy(built[0], str(tmp_path / "onnx"))
    bad = os.path.join(onnx_dir, "head_e0_c0b0r0h0.onnx")
    with open(bad, "wb") as f:
        f.write(b"\x08\x07garbage")
    manifest_path = os.path.join(onnx_dir, "manifest.json")
    manifest = json.load(open(manifest_path))
    from mess_edge.artifacts import sha256_file
    manifest["graphs"][2]["sha256"] = sha256_file(bad)  # the checksum agrees: the file itself is broken
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(MessError, match=r"head_e0_c0b0r0h0.onnx is not a loadable ONNX graph"):
        build_engines(onnx_dir, "ort", out_dir=str(tmp_path / "e"))
    os.remove(bad)
    with pytest.raises(MessError, match=r"graph 'head_e0_c0b0r0h0' is missing: got no file .*head_e0_c0b0r0h0.onnx"):
        build_engines(onnx_dir, "ort", out_dir=str(tmp_path / "e"))


def test_precision_and_option_errors(built, tmp_path):
    onnx_dir = built[0]
    with pytest.raises(MessError, match=r"got --precision fp16 with --backend ort; expected fp32"):
        build_engines(onnx_dir, "ort", "fp16", out_dir=str(tmp_path / "e"))
    with pytest.raises(MessError, match="got --dla with --backend ort"):
        build_engines(onnx_dir, "ort", dla_core=0, out_dir=str(tmp_path / "e"))
    with pytest.raises(MessError, match="got --precision int8 without --calib-data"):
        build_engines(onnx_dir, "trt", "int8", out_dir=str(tmp_path / "e"))
    with pytest.raises(MessError, match=r"manifest not found: .*nowhere.manifest.json"):
        build_engines(str(tmp_path / "nowhere"), "ort")


def test_profile_writes_the_lut(built, tmp_path):
    eng = built[1]
    out = str(tmp_path / "lut.json")
    seen = []
    lut = profile_engines(eng, out, FAST, progress=lambda i, n, name, s: seen.append((i, n, name)))
    assert json.load(open(out)) == lut
    assert seen[0] == (1, 13, "segment_0") and seen[9] == (10, 13, "monolithic")
    assert [name for _, _, name in seen[10:]] == ["segment_0+segment_1", "segment_0+segment_1+final",
                                                  "segment_1+final"]
    stat_keys = {"median_ms", "mean_ms", "p90_ms", "p99_ms", "std_ms", "min_ms", "max_ms", "n", "name"}
    assert lut["format"] == "mess-edge-lut/1" and lut["backend"] == "ort" and lut["precision"] == "fp32"
    assert lut["input_size"] == [32, 32] and lut["device"]["id"] == describe_device("ort")["id"]
    assert lut["manifest_sha256"] == json.load(open(os.path.join(eng, "engine.json")))["manifest_sha256"]
    assert [(s["index"], s["name"]) for s in lut["segments"]] == [(0, "segment_0"), (1, "segment_1")]
    assert [(h["exit"], h["arch"]) for h in lut["heads"]] == [
        (e, {"crm": c, "blocks": b, "rdi": 0, "head": 0}) for e in (0, 1) for c, b in ((0, 0), (1, 1))]
    assert lut["final"]["name"] == "final" and lut["monolithic"]["name"] == "monolithic"
    assert lut["upsample"]["name"] == "upsample_16x16"  # the early heads' resolution (the final has its own)
    assert [u["name"] for u in lut["upsamples"]] == ["upsample_16x16", "upsample_8x8"]
    # Every stretch of >= 2 backbone graphs (segment k = graph k, final = graph 2) a chain may run fused.
    assert [(s["from"], s["to"], s["graphs"]) for s in lut["stretches"]] == [
        (0, 1, ["segment_0", "segment_1"]), (0, 2, ["segment_0", "segment_1", "final"]), (1, 2, ["segment_1", "final"])]
    for row in lut["stretches"]:
        assert stat_keys - {"name"} <= set(row) and row["n"] >= 7 and 0 < row["min_ms"] <= row["median_ms"]
    for row in lut["segments"] + lut["heads"] + lut["upsamples"] + [lut["final"], lut["monolithic"]]:
        assert stat_keys <= set(row) and row["n"] >= 7
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    cond = lut["conditions"]
    assert cond["min_iters"] == 7 and cond["th_pix"] == 0.5 and cond["versions"]["onnxruntime"] == ort.__version__
    assert cond["threads"]["session"].startswith("own pool (")
    assert {"date", "cpu_governor", "jetson_power_mode", "gpu_clocks", "physical_cores"} <= set(cond)


def test_profile_alone_times_stretches_alone_and_can_skip_them(built, tmp_path):
    alone = profile_engines(built[1], str(tmp_path / "a.json"), ProfileConfig(min_iters=3, min_seconds=0.001,
                                                                              warmup_s=0.0, in_chain=False))
    assert [(s["from"], s["to"]) for s in alone["stretches"]] == [(0, 1), (0, 2), (1, 2)]
    assert min(s["n"] for s in alone["stretches"]) >= 3 and alone["conditions"]["timing"].endswith("timed alone")
    plain = profile_engines(built[1], str(tmp_path / "p.json"), ProfileConfig(min_iters=3, min_seconds=0.001,
                                                                              warmup_s=0.0, stretches=False))
    assert "stretches" not in plain and min(r["n"] for r in plain["segments"] + plain["heads"]) >= 3


def test_profile_interrupted_leaves_no_file(built, tmp_path):
    out = str(tmp_path / "lut.json")

    def stop(i, n, name, s):
        if i == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile_engines(built[1], out, FAST, progress=stop)
    assert os.listdir(str(tmp_path)) == []


def _cli(*args):
    """mess-edge in a child process: the profile and bench commands set up ORT's global thread pool,
    which would refuse every plain InferenceSession made later in this pytest process."""
    return subprocess.run([sys.executable, "-m", "mess_edge.cli"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)


def test_profile_and_build_cli(built, tmp_path):
    onnx_dir = built[0]
    eng = str(tmp_path / "e")
    out = _cli("build", onnx_dir, "--backend", "ort", "--out", eng)
    assert out.returncode == 0 and out.stdout.decode().endswith("engines written to {}\n".format(eng))
    out = _cli("profile", eng, "--min-iters", "5", "--min-seconds", "0.001", "--warmup-s", "0", "--threads", "1")
    assert out.returncode == 0, out.stderr.decode()
    assert "latency table written to" in out.stdout.decode()
    lut = json.load(open(os.path.join(eng, "lut.json")))
    assert min(r["n"] for r in lut["segments"] + lut["heads"]) >= 5
    assert lut["conditions"]["timing"].endswith("timed inside chained frames (every set of read exit points)")
    assert [(s["from"], s["to"]) for s in lut["stretches"]] == [(0, 1), (0, 2), (1, 2)]
    from onnxruntime.capi import _pybind_state

    if hasattr(_pybind_state, "set_global_thread_pool_sizes"):
        assert lut["conditions"]["threads"] == {"process_pool": {"mode": "global", "intra_threads": 1,
                                                                 "inter_threads": 1, "note": ""},
                                                "session": "global pool (1 intra)"}
    else:  # older onnxruntime (e.g. 1.19 on Python 3.8): per-session pools, spinning off
        assert lut["conditions"]["threads"]["process_pool"]["mode"] == "per-session"
    out = _cli("build", onnx_dir, "--backend", "ort", "--precision", "int8", "--out", eng)
    err = out.stderr.decode()
    assert out.returncode == 2 and err.startswith("error: got --precision int8 with --backend ort")
    assert err.count("\n") == 1


def test_bench_runs(built):
    result = bench_engines(built[1], BenchConfig(min_iters=5, min_seconds=0.005, warmup_s=0.0, pilot_s=0.02,
                                                 pairs=20))
    assert [r["name"] for r in result["rows"]][:2] == ["segment_0", "segment_1"] and len(result["rows"]) == 10
    for r in result["rows"]:
        gmacs_per_s = r["gmacs"] / (r["median_ms"] / 1e3) if r["gmacs"] else None
        assert r["gmacs_per_s"] == gmacs_per_s
    assert result["labels_agreement"] == 1.0  # chain and monolithic share weights: same labels
    assert result["pairs"] == 20 and result["paired_ratio_p10"] <= result["paired_ratio_median"] <= result["paired_ratio_p90"]
    settings = result["monolithic_settings"]
    assert sum(s["paired"] for s in settings) == 1 and settings[-1]["setting"].endswith("separate process")
    assert settings[-1]["median_ms"] is not None, settings[-1]["error"]
    assert "chained final-only vs best monolithic" in format_bench(result)


def test_timing_summary_matches_reference():
    samples = [3.0, 1.0, 2.0, 4.0, 100.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    s = timing.summarize(samples)
    x = sorted(samples)
    assert s.median_ms == (x[4] + x[5]) / 2 and s.n == 10 and s.min_ms == 1.0 and s.max_ms == 100.0
    assert s.mean_ms == pytest.approx(sum(x) / 10)
    assert s.p90_ms == pytest.approx(x[8] + 0.1 * (x[9] - x[8]))  # linear interpolation at rank 8.1
    assert s.std_ms == pytest.approx(float(np.std(x)))


def test_time_fn_runs_at_least_iters_and_seconds():
    calls = []
    t0 = time.perf_counter()
    s = timing.time_fn(lambda: calls.append(1), min_iters=25, min_seconds=0.05, warmup_s=0.0)
    assert time.perf_counter() - t0 >= 0.05 and s.n >= 25 and len(calls) == s.n + 2  # 2 warm-up calls
    s = timing.time_fn(lambda: time.sleep(0.002), min_iters=3, min_seconds=0.0, warmup_s=0.0)
    assert s.n == 3 and s.min_ms >= 2.0
    p = timing.time_paired(lambda: time.sleep(0.001), lambda: time.sleep(0.003), pairs=10, warmup_s=0.0)
    assert p.n_pairs == 10 and p.a.n == p.b.n == 10 and 1.5 < p.ratio_median < 4.0


def test_slug():
    assert slug("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz") == "intel-core-i7-8700"
    assert slug("NVIDIA GeForce GTX 1080 Ti") == "geforce-gtx-1080-ti"
    assert slug("Xavier") == "xavier"


def test_device_side_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import mess_edge.build.builder, mess_edge.profile.latency_table, mess_edge.runtime.ort_runner\n"
            "import mess_edge.runtime.trt_runner, mess_edge.profile.commands, mess_edge.runtime.device\n"
            "from mess_edge.cli import main\n"
            "main(['build', '--help'])\n")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert out.returncode == 0, out.stdout.decode()
    assert "--backend [ort|trt]" in out.stdout.decode()
