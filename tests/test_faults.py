"""Fault injection through the real CLI (issue 16): nothing a user types destroys their files, and every
malformed artifact gets one line.

A small finished pipeline (DigitScenes -> tiny stage 1/2 -> memo -> ONNX -> ORT engines -> lut -> instance ->
video) is built once per session in ``pipe`` and never changed: each probe runs ``mess-edge`` (``main()``
in-process, or a subprocess where a signal is sent) on it or on broken copies in its own folder, and asserts
the exit code, the one-line message (no traceback), that every file of the pipeline and of the probe's folder
is byte-identical afterwards (outputs excepted), and that no temporary file is left behind.

`python benchmarks/faults.py` runs this module and reports `probes passed / probes run`.
"""

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from mess_edge.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def pipe(scenes, tiny_ckpts, tmp_path_factory):
    """{name: path} of a finished pipeline, made through the library (the CLI's own calls) once."""
    from mess_edge.build.builder import build_engines
    from mess_edge.calibrate.memoise import memoise
    from mess_edge.data.digitscenes import write_split_video
    from mess_edge.export.exporter import export_checkpoint
    from mess_edge.profile.latency_table import ProfileConfig, profile_engines
    from mess_edge.search.driver import SearchOptions, run_search
    from mess_edge.search.memo import save_memo

    a = str(tmp_path_factory.mktemp("pipeline"))
    p = {"ds": scenes, "s1": os.path.join(a, "s1.pt"), "s2": os.path.join(a, "s2.pt"),
         "memo": os.path.join(a, "memo.npz"), "onnx": os.path.join(a, "onnx"), "eng": os.path.join(a, "eng"),
         "inst": os.path.join(a, "instance.json"), "video": os.path.join(a, "test.mp4"), "dir": a}
    shutil.copy(tiny_ckpts[0], p["s1"])
    shutil.copy(tiny_ckpts[1], p["s2"])
    save_memo(p["memo"], memoise(p["s2"], scenes, "cal", progress=False))
    export_checkpoint(p["s2"], p["onnx"], log=lambda *x: None)
    build_engines(p["onnx"], "ort", out_dir=p["eng"])
    profile_engines(p["eng"], None, ProfileConfig(min_iters=3, min_seconds=0.0, warmup_s=0.0, in_chain=False))
    p["lut"] = os.path.join(p["eng"], "lut.json")
    p["manifest"] = os.path.join(p["onnx"], "manifest.json")
    run_search(SearchOptions(memo_path=p["memo"], manifest_path=p["manifest"], out_path=p["inst"],
                             setting="input-dependent", lut_path=p["lut"], max_drop_pp=5.0))
    with open(p["inst"]) as f:
        inst = json.load(f)
    if not inst["exits"]:  # a tiny model's search may keep none: the probes need one exit to break
        with open(p["manifest"]) as f:
            head = next(g for g in json.load(f)["graphs"] if g["role"] == "head")
        inst.update(th_pix=0.5, exits=[{"exit": head["exit"], "arch": head["arch"], "graph": head["name"],
                                        "th_img": 0.5}])
        with open(p["inst"], "w") as f:
            json.dump(inst, f)
    write_split_video(scenes, "test", p["video"], fps=10)
    return p


def _snapshot(*folders):
    """{path: sha256} of every file under ``folders``."""
    out = {}
    for folder in folders:
        for d, _, files in os.walk(folder):
            for n in files:
                path = os.path.join(d, n)
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


class Probe(object):
    """Runs the CLI and checks the aftermath: ``run(args) -> (rc, stderr)``, then ``check()``."""

    def __init__(self, pipe, folder):
        self.pipe, self.folder = pipe, str(folder)
        self.before = _snapshot(pipe["dir"], pipe["ds"], self.folder)

    def path(self, name):
        return os.path.join(self.folder, name)

    def copy(self, key, name=None):
        """A copy of a pipeline file or folder in the probe's folder (to break it)."""
        src, dst = self.pipe[key], self.path(name or os.path.basename(self.pipe[key]))
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
        self.before = _snapshot(self.pipe["dir"], self.pipe["ds"], self.folder)
        return dst

    def broken(self, key, change, inner=None):
        """A copy of pipeline file (or folder) ``key`` whose JSON (``inner``: a file in the folder) ``change``
        edits in place; the snapshot then counts the broken copy among the inputs."""
        path = self.copy(key)
        _edit_json(os.path.join(path, inner) if inner else path, change)
        self.before = _snapshot(self.pipe["dir"], self.pipe["ds"], self.folder)
        return path

    def cli(self, *args):
        """``mess-edge ARGS`` in this process: (exit status, stderr)."""
        import io
        from contextlib import redirect_stderr, redirect_stdout

        err, previous = io.StringIO(), signal.getsignal(signal.SIGTERM)
        rc = 0
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            try:
                main([str(a) for a in args])
            except SystemExit as e:
                rc = e.code or 0
            finally:
                signal.signal(signal.SIGTERM, previous)
        return rc, err.getvalue()

    def refused(self, args, message, rc=2, outputs=()):
        """The command exits ``rc`` with one line matching ``message``, and writes nothing."""
        got, err = self.cli(*args)
        assert got == rc, err[-3000:]
        one_line(err, message)
        self.check(outputs=())
        for o in outputs:
            assert not os.path.exists(o) or self.before.get(o) is not None, o
        return err

    def check(self, outputs=()):
        """Every file there before is byte-identical (except ``outputs``); no new file but ``outputs``; no
        temporary file anywhere."""
        after = _snapshot(self.pipe["dir"], self.pipe["ds"], self.folder)
        keep = {os.path.abspath(o) for o in outputs}
        changed = [p for p, h in self.before.items() if p not in keep and after.get(p) != h]
        assert not changed, "inputs changed: {}".format(changed)
        new = [p for p in after if p not in self.before and os.path.abspath(p) not in keep and
               not any(os.path.abspath(p).startswith(k + os.sep) for k in keep)]
        assert not new, "unexpected files: {}".format(new)
        temps = [p for p in after if ".tmp" in os.path.basename(p) or ".partial" in os.path.basename(p) or
                 os.path.basename(p).startswith(".mess-edge-probe")]
        assert not temps, "temporary files left: {}".format(temps)


def one_line(err, message):
    """stderr is one line, matches ``message``, and holds no traceback."""
    import re

    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    assert re.search(message, lines[0]), lines[0]


@pytest.fixture
def probe(pipe, tmp_path):
    return Probe(pipe, tmp_path)


def _edit_json(path, change):
    with open(path) as f:
        d = json.load(f)
    change(d)
    with open(path, "w") as f:
        json.dump(d, f)


# ---------------------------------------------------------------- outputs that would destroy inputs


def test_calibrate_out_without_npz_suffix_writes_exactly_that_file(probe):
    from mess_edge.search.memo import load_memo

    out = probe.path("memo_out")
    rc, err = probe.cli("calibrate", probe.pipe["s2"], "--data", probe.pipe["ds"], "--out", out)
    assert rc == 0, err
    probe.check(outputs=[out])
    assert load_memo(out).n_images == 16 and not os.path.exists(out + ".npz")


def _run_args(p, *extra):
    return ["run", p["inst"], "--engines", p["eng"], "--source", p["video"], "--no-display"] + list(extra)


def _search_args(p, *extra):
    return ["search", "--memo", p["memo"], "--manifest", p["manifest"], "--lut", p["lut"], "--setting",
            "input-dependent", "--max-drop", "5"] + list(extra)


OVERWRITES = {
    "calibrate --out CKPT": lambda p: ["calibrate", p["s2"], "--data", p["ds"], "--out", p["s2"]],
    "search --out memo": lambda p: _search_args(p, "--out", p["memo"]),
    "search --out lut": lambda p: _search_args(p, "--out", p["lut"]),
    "search --pareto = --out": lambda p: _search_args(p, "--out", p["dir"] + "/new.json", "--pareto",
                                                      p["dir"] + "/new.json"),
    "run --output source": lambda p: _run_args(p, "--output", p["video"]),
    "run --stats instance": lambda p: _run_args(p, "--stats", p["inst"]),
    "run --stats engine sidecar": lambda p: _run_args(p, "--stats", p["eng"] + "/engine.json"),
    "profile --out sidecar": lambda p: ["profile", p["eng"], "--out", p["eng"] + "/engine.json"],
    "build --out ONNX_DIR": lambda p: ["build", p["onnx"], "--backend", "ort", "--out", p["onnx"]],
    "train --out --init": lambda p: ["train", "--stage", "2", "--init", p["s1"], "--data", p["ds"], "--out", p["s1"]],
    "export --out holding CKPT": lambda p: ["export", p["s2"], "--out", p["dir"]],
    "bench --json sidecar": lambda p: ["bench", p["eng"], "--json", p["eng"] + "/engine.json"],
    "data video --out inside --data": lambda p: ["data", "video", "--data", p["ds"], "--out",
                                                 p["ds"] + "/classes.txt"],
}


@pytest.mark.parametrize("name", sorted(OVERWRITES))
def test_an_output_that_would_overwrite_an_input_is_refused_before_any_work(probe, name):
    err = probe.refused(OVERWRITES[name](probe.pipe), r"^error: got (--\w+.*which would overwrite the input|"
                                                     r"--out and --pareto both)")
    assert "--" in err


UNWRITABLE = {
    "run --output /proc": lambda p: _run_args(p, "--output", "/proc/o.mp4"),
    "run --stats /proc": lambda p: _run_args(p, "--stats", "/proc/s.json"),
    "profile --out /proc": lambda p: ["profile", p["eng"], "--out", "/proc/lut.json"],
    "search --pareto /proc": lambda p: _search_args(p, "--out", "NEW/instance.json", "--pareto", "/proc/p.csv"),
    "calibrate --out /proc": lambda p: ["calibrate", p["s2"], "--data", p["ds"], "--out", "/proc/m.npz"],
    "build --out /proc": lambda p: ["build", p["onnx"], "--backend", "ort", "--out", "/proc/eng"],
    "export --out /proc": lambda p: ["export", p["s2"], "--out", "/proc/onnx"],
    "train --out /proc": lambda p: ["train", "--preset", "tiny", "--data", p["ds"], "--out", "/proc/c.pt"],
}


@pytest.mark.parametrize("name", sorted(UNWRITABLE))
def test_an_unwritable_destination_is_one_line_naming_the_users_path_before_the_work(probe, name):
    args = [a.replace("NEW", probe.folder) for a in UNWRITABLE[name](probe.pipe)]
    t0 = time.perf_counter()
    err = probe.refused(args, r"^error: cannot write --\w+ /proc/")
    assert ".tmp" not in err and time.perf_counter() - t0 < 20
    assert not os.path.exists(probe.path("instance.json"))  # search: nothing written when one output cannot be


def test_an_output_that_is_a_folder_is_refused(probe):
    os.makedirs(probe.path("dir.json"))
    probe.refused(["profile", probe.pipe["eng"], "--out", probe.path("dir.json")], r"which is a folder; expected a file")


# ---------------------------------------------------------------- instance.json

INSTANCE_FAULTS = {
    "exit missing": (lambda d: d["exits"][0].pop("exit"), r"exits\[0\]\.exit got nothing"),
    "exits 5": (lambda d: d.update(exits=5), r"exits got 5"),
    "exits [null]": (lambda d: d.update(exits=[None]), r"exits\[0\] got None"),
    "th_img 'high'": (lambda d: d["exits"][0].update(th_img="high"), r"exits\[0\]\.th_img got 'high'"),
    "th_img 5.0": (lambda d: d["exits"][0].update(th_img=5.0), r"exits\[0\]\.th_img got 5\.0; expected a number in"),
    "th_img -1": (lambda d: d["exits"][0].update(th_img=-1.0), r"exits\[0\]\.th_img got -1\.0"),
    "th_pix [1]": (lambda d: d.update(th_pix=[1]), r"th_pix got \[1\]"),
    "th_pix 5.0": (lambda d: d.update(th_pix=5.0), r"th_pix got 5\.0"),
    "final missing": (lambda d: d.pop("final"), r"final got nothing"),
    "manifest_sha256 missing": (lambda d: d.pop("manifest_sha256"), r"manifest_sha256 got nothing"),
    "setting 3": (lambda d: d.update(setting=3), r"setting got 3"),
    "a list": (lambda d: (d.clear(), d.update(format=None)), r"format"),
}


@pytest.mark.parametrize("name", sorted(INSTANCE_FAULTS))
def test_malformed_instance_is_one_line_naming_the_file_and_field_in_run(probe, name):
    change, message = INSTANCE_FAULTS[name]
    inst = probe.broken("inst", change)
    args = ["run", inst, "--engines", probe.pipe["eng"], "--source", probe.pipe["video"], "--no-display"]
    err = probe.refused(args, message)
    assert inst in err


@pytest.mark.parametrize("command", ["eval", "bench"])
@pytest.mark.parametrize("name", ["exit missing", "th_img 'high'", "exits [null]"])
def test_malformed_instance_is_one_line_in_eval_and_bench(probe, command, name):
    change, message = INSTANCE_FAULTS[name]
    inst = probe.broken("inst", change)
    if command == "eval":
        args = ["eval", probe.pipe["s2"], "--data", probe.pipe["ds"], "--instance", inst]
    else:
        args = ["bench", probe.pipe["eng"], "--instance", inst, "--data", probe.pipe["ds"], "--images", "2"]
    probe.refused(args, message)


# ---------------------------------------------------------------- memo, lut, manifest, sidecar


def _truncate(path, keep=0.5):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def _flip_middle(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(64)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(x ^ 0xFF for x in b))


@pytest.mark.parametrize("fault", ["truncated", "flipped", "empty"])
def test_broken_memo_is_one_line_exit_2(probe, fault):
    memo = probe.copy("memo")
    {"truncated": _truncate, "flipped": _flip_middle, "empty": lambda p: _truncate(p, 0)}[fault](memo)
    probe.before = _snapshot(probe.pipe["dir"], probe.pipe["ds"], probe.folder)
    args = ["search", "--memo", memo, "--manifest", probe.pipe["manifest"], "--setting", "input-dependent",
            "--max-drop", "5", "--out", probe.path("i.json")]
    probe.refused(args, r"^error: memo .*memo\.npz (is not a readable npz.*truncated or corrupt|lacks|: )")


LUT_FAULTS = {
    # the search prices expected costs with means (search/costs.py): the probes corrupt mean_ms
    "negative cost": (lambda d: d["segments"][0].update(mean_ms=-1.0), r"mean_ms -1\.0 for graph segment_0"),
    "NaN cost": (lambda d: d["heads"][0].update(mean_ms=float("nan")), r"mean_ms nan for graph head_e"),
    "string cost": (lambda d: d["final"].update(mean_ms="fast"), r"mean_ms 'fast' for graph final"),
    "no mean (old table)": (lambda d: d["final"].pop("mean_ms"),
                            r"without mean_ms \(graph final\).*try re-running mess-edge profile"),
    "bad overhead": (lambda d: d.update(frame_overhead_ms={"final": -0.1, "exits": {}}), r"frame_overhead_ms"),
    "no manifest_sha256": (lambda d: d.pop("manifest_sha256"), r"manifest_sha256 None"),
}


@pytest.mark.parametrize("name", sorted(LUT_FAULTS))
def test_bad_costs_in_a_table_name_the_file_and_the_graph(probe, name):
    change, message = LUT_FAULTS[name]
    lut = probe.broken("lut", change)
    args = ["search", "--memo", probe.pipe["memo"], "--manifest", probe.pipe["manifest"], "--lut", lut, "--setting",
            "input-dependent", "--max-drop", "5", "--out", probe.path("i.json")]
    err = probe.refused(args, message)
    assert lut in err


def test_truncated_lut_is_one_line(probe):
    lut = probe.copy("lut")
    _truncate(lut)
    probe.before = _snapshot(probe.pipe["dir"], probe.pipe["ds"], probe.folder)
    probe.refused(_search_args(dict(probe.pipe, lut=lut), "--out", probe.path("i.json")), r"is not valid JSON")


@pytest.mark.parametrize("value", ["nan", "inf", "-3"])
def test_budget_must_be_a_finite_number(probe, value):
    probe.refused(["search", "--memo", probe.pipe["memo"], "--manifest", probe.pipe["manifest"], "--lut",
                   probe.pipe["lut"], "--setting", "budgeted", "--budget-ms", value, "--out", probe.path("i.json")],
                  r"got --budget-ms {}.*; expected a finite number >= 0".format(value.replace("nan", "nan")))


MANIFEST_FAULTS = {
    "gmacs negative": (lambda d: d["graphs"][0].update(gmacs=-2.0), r"graphs\[0\]\.gmacs got -2\.0"),
    "graphs [null]": (lambda d: d.update(graphs=[None]), r"graphs\[0\] got None"),
    "no checkpoint_sha256": (lambda d: d.pop("checkpoint_sha256"), r"checkpoint_sha256 got nothing"),
    "input_hw text": (lambda d: d.update(input_hw="64x64"), r"input_hw got '64x64'"),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_FAULTS))
def test_malformed_manifest_is_one_line_in_search_and_build(probe, name):
    change, message = MANIFEST_FAULTS[name]
    onnx = probe.broken("onnx", change, "manifest.json")
    probe.refused(["search", "--memo", probe.pipe["memo"], "--manifest", os.path.join(onnx, "manifest.json"),
                   "--setting", "input-dependent", "--max-drop", "5", "--out", probe.path("i.json")], message)
    probe.refused(["build", onnx, "--backend", "ort", "--out", probe.path("eng")], message)


SIDECAR_FAULTS = {
    "backend missing": (lambda d: d.pop("backend"), r"backend got nothing"),
    "device missing": (lambda d: d.pop("device"), r"device got nothing"),
    "versions a list": (lambda d: d.update(versions=[]), r"versions got \[\]"),
    "graphs [null]": (lambda d: d.update(graphs=[None]), r"graphs\[0\] got None"),
    "a graph missing": (lambda d: d.update(graphs=d["graphs"][1:]), r"graphs lacks|has no engine for graph"),
    "another device": (lambda d: d["device"].update(id="orin-sm87-ort-cuda"),
                       r"built for device 'orin-sm87-ort-cuda'; got this device 'cpu-"),
    "a GPU provider from another device": (
        lambda d: (d.update(providers=["cuda"]), d["device"].update(id="orin-sm87-ort-cuda")),
        r"built for device 'orin-sm87-ort-cuda'; got this device 'cpu-"),
}


@pytest.mark.parametrize("name", sorted(SIDECAR_FAULTS))
def test_malformed_or_foreign_sidecar_is_one_line(probe, name):
    change, message = SIDECAR_FAULTS[name]
    eng = probe.broken("eng", change, "engine.json")
    probe.refused(["run", probe.pipe["inst"], "--engines", eng, "--source", probe.pipe["video"], "--no-display"],
                  message)


def test_a_changed_engine_file_is_refused(probe):
    eng = probe.copy("eng")
    _truncate(os.path.join(eng, "segment_0.onnx"))
    probe.before = _snapshot(probe.pipe["dir"], probe.pipe["ds"], probe.folder)
    probe.refused(_run_args(dict(probe.pipe, eng=eng)), r"segment_0\.onnx is missing or changed since the build")


# ---------------------------------------------------------------- checkpoints


def _flip_tensor_bytes(path):
    """Flip bytes in the middle of the largest tensor record of a torch zip (its CRC is not checked by torch)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        n, m = np.frombuffer(f.read(4), "<u2")
        start = info.header_offset + 30 + int(n) + int(m)
        f.seek(start + info.file_size // 2)
        b = f.read(8)
        f.seek(start + info.file_size // 2)
        f.write(bytes(x ^ 0x40 for x in b))


@pytest.mark.parametrize("command", ["eval", "export", "calibrate"])
def test_flipped_bits_in_a_checkpoints_tensors_are_caught_by_every_reader(probe, command):
    ck = probe.copy("s2", "s2.pt")
    _flip_tensor_bytes(ck)
    probe.before = _snapshot(probe.pipe["dir"], probe.pipe["ds"], probe.folder)
    args = {"eval": ["eval", ck, "--data", probe.pipe["ds"]], "export": ["export", ck, "--out", probe.path("onnx")],
            "calibrate": ["calibrate", ck, "--data", probe.pipe["ds"], "--out", probe.path("m.npz")]}[command]
    probe.refused(args, r"checkpoint .*s2\.pt is corrupt: its tensors hash to")


@pytest.mark.parametrize("fault", ["truncated", "foreign pickle", "no hash"])
def test_other_broken_checkpoints_are_one_line(probe, fault):
    ck = probe.path("c.pt")
    if fault == "truncated":
        shutil.copy(probe.pipe["s2"], ck)
        _truncate(ck)
        message = r"cannot read checkpoint .*truncated or not a mess-edge checkpoint"
    elif fault == "foreign pickle":
        import pickle

        with open(ck, "wb") as f:
            pickle.dump({"x": 1}, f)
        message = r"cannot read checkpoint|is not a mess-edge checkpoint"
    else:
        c = torch.load(probe.pipe["s2"], weights_only=True)
        c.pop("tensors_sha256")
        torch.save(c, ck)
        message = r"has no tensors_sha256 .*python -m mess_edge\.train\.checkpoint"
    probe.before = _snapshot(probe.pipe["dir"], probe.pipe["ds"], probe.folder)
    probe.refused(["eval", ck, "--data", probe.pipe["ds"]], message)


def test_the_shipped_checkpoint_without_a_hash_still_loads():
    from mess_edge.demo import SHIPPED_STAGE1
    from mess_edge.train.checkpoint import load_checkpoint

    assert "tensors_sha256" not in torch.load(SHIPPED_STAGE1, weights_only=True)
    assert load_checkpoint(SHIPPED_STAGE1)["stage"] == 1


@pytest.mark.parametrize("model", ["cpu-effl0", "cpu-mbv2"])
def test_each_demo_models_shipped_checkpoint_is_the_one_its_record_describes(model):
    from mess_edge.artifacts import sha256_file
    from mess_edge.demo import DEMO_MODELS
    from mess_edge.train.checkpoint import load_checkpoint

    path, recipe, _ = DEMO_MODELS[model]
    with open(path + ".json") as f:
        record = json.load(f)
    assert sha256_file(path) == record["sha256"]
    assert record["command"] == "mess-edge train --data <data> " + " ".join(recipe) + " --out <out>"
    ck = load_checkpoint(path)  # the tensors hash verifies where there is one
    assert ck["stage"] == 1 and ck["model_args"]["preset"] == model and ck["optimizer"] is None
    assert os.path.getsize(path) < 10e6


def test_export_parity_is_enforced_at_the_manifests_tolerance():
    from mess_edge.errors import MessError
    from mess_edge.export.exporter import PARITY_TOLERANCE, check_parity

    chain = {"final_max_abs_logit_diff": 1e-6, "heads_max_abs_logit_diff": 1e-6, "final_label_agreement": 1.0,
             "monolithic_label_agreement": 1.0}
    good = {"parity": {"per_graph_max_abs_diff": 1e-6, "chain": chain, "tolerance": dict(PARITY_TOLERANCE)}}
    check_parity(good, "c.pt")
    for key, bad in (("final_max_abs_logit_diff", 9.5e30), ("heads_max_abs_logit_diff", float("nan")),
                     ("final_label_agreement", 0.9)):
        m = json.loads(json.dumps(good))
        m["parity"]["chain"][key] = bad
        with pytest.raises(MessError, match="export parity check failed for c.pt: got .*expected"):
            check_parity(m, "c.pt")


# ---------------------------------------------------------------- training


def test_a_diverging_training_stops_with_exit_2_and_keeps_the_checkpoint(probe):
    out = probe.copy("s1", "c.pt")  # the last good checkpoint of an earlier run, at --out
    rc, err = probe.cli("train", "--preset", "tiny", "--data", probe.pipe["ds"], "--epochs", "2", "--batch-size", "8",
                        "--val-images", "0", "--lr", "1e30", "--out", out)
    assert rc == 2, err[-2000:]
    assert "training diverged: got loss" in err and "is kept" in err and "Traceback" not in err
    probe.check()


def test_pfd_loss_on_a_batch_the_final_exit_gets_all_wrong_is_finite():
    from mess_edge.train import losses

    logits, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    labels = (teacher.argmax(1) + 1) % 3  # the final exit is wrong on every pixel: pfd's CE has nothing to learn
    loss = losses.exit_loss("pfd", logits, teacher, labels)
    assert torch.isfinite(loss)
    kl = losses.kl_to_teacher(logits, teacher, labels)
    assert torch.allclose(loss, 0.5 * kl)


# ---------------------------------------------------------------- data, cameras, sources


def test_duplicate_ids_in_a_split_fail_data_check(probe):
    ds = probe.copy("ds", "ds")
    split = os.path.join(ds, "ImageSets", "Segmentation", "test.txt")
    with open(split) as f:
        ids = f.read().split()
    with open(split, "w") as f:
        f.write("\n".join(ids + [ids[3]]) + "\n")
    probe.before = _snapshot(probe.pipe["dir"], probe.pipe["ds"], probe.folder)
    probe.refused(["data", "check", "--data", ds, "--split", "test"],
                  r"lists '{}' twice \(ids 4 and 17\)".format(ids[3]))


def test_a_missing_split_is_one_line(probe):
    probe.refused(["data", "check", "--data", probe.pipe["ds"], "--split", "nope"], r"split 'nope' not found")


@pytest.mark.parametrize("index", ["-1", "-7", "100000"])
def test_camera_index_is_checked_before_opencv(probe, index):
    probe.refused(["run", probe.pipe["inst"], "--engines", probe.pipe["eng"], "--camera", index, "--no-display"],
                  r"got --camera {}; expected a camera index >= 0".format(index))


def test_a_missing_source_is_one_line(probe):
    probe.refused(_run_args(dict(probe.pipe, video=probe.path("none.mp4"))), r"no such file or folder")


def test_a_clean_run_writes_its_outputs_and_nothing_else(probe):
    out, stats = probe.path("o.mp4"), probe.path("s.json")
    rc, err = probe.cli(*_run_args(probe.pipe, "--output", out, "--stats", stats, "--final-only-frames", "0"))
    assert rc == 0, err[-2000:]
    probe.check(outputs=[out, stats])
    s = json.load(open(stats))
    assert s["end_reason"] == "end of source" and s["frames_in"] == 16 and s["signal"] is None


# ---------------------------------------------------------------- signals


def _spawn(args, cwd=ROOT):
    code = "import sys; sys.modules['torch'] = None\nfrom mess_edge.cli import main\nmain({!r})\n".format(
        [str(a) for a in args])
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(path, p, timeout=60):
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(path), p.communicate()[1][-2000:]


@pytest.mark.parametrize("sig,rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_run_with_a_playable_video_complete_stats_and_128_plus_the_signal(probe, sig, rc):
    out, stats = probe.path("live.mp4"), probe.path("stats.json")
    p = _spawn(_run_args(probe.pipe, "--loop", "--output", out, "--stats", stats))
    _wait_for(probe.path(".live.partial.mp4"), p)
    time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == rc, err[-2000:]
    s = json.load(open(stats))
    assert s["end_reason"] == "interrupted" and s["signal"] == sig.name and s["frames"] > 0
    assert s["frames_in"] == s["frames"] + s["dropped"] + s["corrupt"]
    cap = cv2.VideoCapture(out)
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == s["frames_written"] > 0
    probe.check(outputs=[out, stats])


def test_sigterm_in_train_leaves_the_last_checkpoint_resumable_and_nothing_half_written(probe):
    from mess_edge.train.checkpoint import load_checkpoint

    out = probe.path("c.pt")
    code = "from mess_edge.cli import main\nmain({!r})\n".format(
        ["train", "--preset", "tiny", "--data", probe.pipe["ds"], "--epochs", "200", "--batch-size", "8",
         "--val-images", "0", "--out", out])
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    _wait_for(out + ".json", p, timeout=120)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM)" and "Traceback" not in err
    ck = load_checkpoint(out)
    assert ck["step"] >= 4 and ck["step"] % 4 == 0  # a finished epoch (4 steps of 8 of 32 images)
    probe.check(outputs=[out, out + ".json"])


def test_two_profiles_of_one_folder_do_not_race(probe):
    eng = probe.copy("eng")
    probe.before = _snapshot(probe.pipe["dir"], probe.pipe["ds"], probe.folder)
    fd = os.open(eng, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running profile holds
        probe.refused(["profile", eng, "--min-iters", "1", "--min-seconds", "0", "--warmup-s", "0"],
                      r"another process is writing there \(locked\)")
    finally:
        os.close(fd)


def test_a_truncated_video_accounts_for_every_frame_its_container_announces(probe):
    src = probe.path("cut.avi")
    w = cv2.VideoWriter(src, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    rng = np.random.default_rng(0)
    for _ in range(20):
        w.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    w.release()
    _truncate(src)  # the header still announces 20 frames; the data holds about half
    probe.before = _snapshot(probe.pipe["dir"], probe.pipe["ds"], probe.folder)
    stats = probe.path("s.json")
    rc, err = probe.cli(*_run_args(dict(probe.pipe, video=src), "--stats", stats, "--final-only-frames", "0"))
    assert rc == 0, err[-2000:]
    s = json.load(open(stats))
    missing = 20 - s["frames"]
    assert 0 < s["frames"] < 20 and s["frames_in"] == 20 and s["corrupt"] == missing and s["dropped"] == 0
    assert s["end_reason"] == "end of source: truncated, {} of the 20 frames the file announces are missing".format(
        missing)
    probe.check(outputs=[stats])


def test_atomic_writes_give_the_exact_name_the_umask_mode_and_leave_nothing_on_failure(tmp_path):
    from mess_edge.artifacts import FILE_MODE, atomic_file

    mask = os.umask(0o022)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask
    with atomic_file(str(tmp_path / "memo_out")) as f:
        np.savez(f, a=np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["memo_out"]
    assert os.stat(tmp_path / "memo_out").st_mode & 0o777 == FILE_MODE
    with pytest.raises(RuntimeError):
        with atomic_file(str(tmp_path / "memo_out")) as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert sorted(os.listdir(tmp_path)) == ["memo_out"] and np.load(tmp_path / "memo_out")["a"].tolist() == [0, 1, 2]


def test_outputs_are_compared_with_inputs_through_symlinks_and_dot_dots(tmp_path):
    from mess_edge.artifacts import Output, check_outputs
    from mess_edge.errors import MessError

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "memo.npz").write_bytes(b"x")
    os.symlink(str(tmp_path / "in"), str(tmp_path / "link"))
    for out in ("link/memo.npz", "in/../in/memo.npz"):
        with pytest.raises(MessError, match="which would overwrite the input --memo"):
            check_outputs([("--out", str(tmp_path / out))], [("--memo", str(tmp_path / "in" / "memo.npz"))])
    with pytest.raises(MessError, match="which would overwrite the input CKPT"):
        check_outputs([Output("--out", str(tmp_path), folder=True, replaces=True)],
                      [("CKPT", str(tmp_path / "in" / "memo.npz"))])
    check_outputs([("--out", str(tmp_path / "in" / "new.npz"))], [("--memo", str(tmp_path / "in" / "memo.npz"))])
    assert sorted(os.listdir(tmp_path / "in")) == ["memo.npz"]  # the writability probe leaves nothing
