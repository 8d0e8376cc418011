"""TensorRT backend. Without a GPU: every tensorrt attribute the code uses is checked against the API of
TensorRT 8.5, 8.6, 10.3 and 11.4 (tests/fixtures/trt_api.json: 8.5 read from the pybind11 sources, 8.6.1,
10.3.0 and 11.4.0 from NVIDIA's bindings wheels; a copy of ../shared/trt_api.json),
and the modules are checked to be valid Python 3.8. With TensorRT + pycuda + a GPU (marked gpu): build
the fixture's graphs and compare the engines with onnxruntime.

How the AST check works
-----------------------
* The tensorrt module is always called ``trt`` in these modules (``import tensorrt as trt`` or
  ``trt = import_trt()``, or a parameter named ``trt``); the test asserts no other alias exists.
* Types are inferred per module, flow-insensitively: ``trt.Builder(...)`` is a Builder,
  ``builder.create_network(...)`` an INetworkDefinition, and so on (RETURNS below); a name or
  ``self.attr`` assigned such an expression has that type; a parameter named ``builder`` is a Builder.
* Every attribute read or written on ``trt.X``, ``trt.X.Y`` or a typed expression must be in that class's
  "all" list, unless it sits in a version-guarded branch: an ``if`` (or ``x if ... else y``) whose test
  is ``trt_major(trt) <op> <int>``. Inside it the attribute must exist in every release for which the
  test is true (the else branch: false); releases are 8.5, 8.6, 10.3, 11.4. Guards nest.
* Methods defined on a subclass of a trt class (the INT8 calibrator) must exist on that class.
"""

import ast
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API = json.load(open(os.path.join(ROOT, "tests", "fixtures", "trt_api.json")))
RELEASES = {"release/8.5": 8, "release/8.6": 8, "release/10.3": 10, "release/11.4": 11}  # -> major version
RELEASES_BEFORE_11 = {r: m for r, m in RELEASES.items() if m < 11}  # what the fixture held before 11.4
FILES = ["mess_edge/runtime/trt_runner.py", "mess_edge/build/builder.py"]

RETURNS = {("Builder", "create_network"): "INetworkDefinition",
           ("Builder", "create_builder_config"): "IBuilderConfig",
           ("Builder", "create_optimization_profile"): "IOptimizationProfile",
           ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
           ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
           ("OnnxParser", "get_error"): "ParserError",
           ("INetworkDefinition", "get_input"): "ITensor", ("INetworkDefinition", "get_output"): "ITensor",
           ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",
           ("ICudaEngine", "create_execution_context"): "IExecutionContext",
           ("ICudaEngine", "create_engine_inspector"): "EngineInspector"}
PARAMETER_TYPES = {"builder": "Builder"}
# Names the binding lists do not hold, each with the reason it exists in every release:
EXTRA = {("<module>", "__version__"): "set by tensorrt/__init__.py in every release",
         ("Logger", "WARNING"): "ILogger.Severity values are exported onto Logger (TENSORRT.md sec. 2.1); "
                                "trt_api.json omits nested enums",
         ("*", "__init__"): "calling a base class constructor (required for calibrators, TENSORRT.md sec. 5)"}


def allowed(cls, releases):
    """Names of ``cls`` present in every release of ``releases``."""
    entry = API[cls]
    names = None
    for r in releases:
        have = set(entry.get("all", [])) | set(entry.get(r, []))
        names = have if names is None else names & have
    return names


def _guard(test, known=RELEASES):
    """Releases for which an ``if`` test ``trt_major(trt) <op> N`` is true, or None if not a guard."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.left, ast.Call)
            and getattr(test.left.func, "id", None) == "trt_major"
            and isinstance(test.comparators[0], ast.Constant)):
        return None
    n, op = test.comparators[0].value, type(test.ops[0])
    ops = {ast.GtE: lambda m: m >= n, ast.Gt: lambda m: m > n, ast.Lt: lambda m: m < n,
           ast.LtE: lambda m: m <= n, ast.Eq: lambda m: m == n, ast.NotEq: lambda m: m != n}
    return {r for r, major in known.items() if ops[op](major)}


def _key(node):
    """"name" or "self.attr" for a Name / Attribute chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _key(node.value)
        return base + "." + node.attr if base else None
    return None


class Checker(object):
    """Collects (line, class, attribute, releases) of every tensorrt attribute use in a module."""

    def __init__(self, tree, known=RELEASES):
        self.tree, self.types, self.uses, self.aliases, self.known = tree, {}, [], set(), known
        for node in ast.walk(tree):  # pass 1: aliases, parameter types, assigned types (to a fixpoint)
            if isinstance(node, ast.Import):
                self.aliases |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
            if isinstance(node, ast.arg) and node.arg in PARAMETER_TYPES:
                self.types[node.arg] = PARAMETER_TYPES[node.arg]
        for _ in range(5):
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    t, k = self.type_of(node.value), _key(node.targets[0])
                    if t and k:
                        self.types[k] = t
                    if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "import_trt":
                        self.aliases.add(k)
        self.visit(tree, set(known))

    def type_of(self, node):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):
                if _key(f.value) == "trt" and f.attr in API:
                    return f.attr  # trt.Builder(...), trt.Runtime(...), trt.OnnxParser(...)
                return RETURNS.get((self.type_of(f.value), f.attr))
            return None
        k = _key(node)
        return self.types.get(k) if k else None

    def visit(self, node, releases):
        if isinstance(node, (ast.If, ast.IfExp)):
            guarded = _guard(node.test, self.known)
            if guarded is not None:
                self.visit(node.test, releases)
                body = node.body if isinstance(node.body, list) else [node.body]
                orelse = node.orelse if isinstance(node.orelse, list) else [node.orelse]
                for child in body:
                    self.visit(child, releases & guarded)
                for child in orelse:
                    self.visit(child, releases - guarded)
                return
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if isinstance(base, ast.Attribute) and _key(base.value) == "trt":
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                            self.uses.append((item.lineno, base.attr, item.name, releases))
        if isinstance(node, ast.Attribute):
            if _key(node.value) == "trt":
                if node.attr not in API or not API[node.attr].get("all"):
                    # a module function, or a class with no common names (it may exist in one release only)
                    self.uses.append((node.lineno, "<module>", node.attr, releases))
            elif isinstance(node.value, ast.Attribute) and _key(node.value.value) == "trt" and node.value.attr in API:
                self.uses.append((node.lineno, node.value.attr, node.attr, releases))
            else:
                t = self.type_of(node.value)
                if t:
                    self.uses.append((node.lineno, t, node.attr, releases))
        for child in ast.iter_child_nodes(node):
            self.visit(child, releases)

    def violations(self):
        bad = []
        for line, cls, attr, releases in self.uses:
            if (cls, attr) in EXTRA or ("*", attr) in EXTRA:
                continue
            if cls == "<module>" and attr in API and API[attr].get("all") == []:
                # no release keys: a class everywhere
                present = ((set(API[attr]) - {"all"}) & set(self.known)) or set(self.known)
                if not releases <= present:
                    bad.append("line {}: trt.{} (class only in {})".format(line, attr, sorted(present)))
                continue
            if not releases:
                bad.append("line {}: {}.{} (in a branch no known release takes)".format(line, cls, attr))
            elif attr not in allowed(cls, releases):
                bad.append("line {}: {}.{} (not in {})".format(line, cls, attr, sorted(releases)))
        return bad


def _check(source, known=RELEASES):
    return Checker(ast.parse(source), known)


@pytest.mark.parametrize("path", FILES)
def test_tensorrt_attributes_exist_in_85_86_and_103(path):
    c = _check(open(os.path.join(ROOT, path)).read())
    assert c.violations() == []
    assert c.aliases <= {"trt"}, "the tensorrt module must be called trt for this check to see it"


def test_the_check_sees_the_api_the_backend_relies_on():
    uses = set()
    for path in FILES:
        uses |= {(cls, attr) for _, cls, attr, _ in _check(open(os.path.join(ROOT, path)).read()).uses}
    expected = {("ICudaEngine", "num_io_tensors"), ("ICudaEngine", "get_tensor_name"),
                ("ICudaEngine", "get_tensor_mode"), ("ICudaEngine", "get_tensor_shape"),
                ("ICudaEngine", "get_tensor_dtype"), ("IExecutionContext", "set_tensor_address"),
                ("IExecutionContext", "execute_async_v3"), ("Runtime", "deserialize_cuda_engine"),
                ("Runtime", "DLA_core"), ("Builder", "create_network"), ("Builder", "build_serialized_network"),
                ("Builder", "platform_has_fast_fp16"), ("Builder", "platform_has_fast_int8"),
                ("IBuilderConfig", "set_memory_pool_limit"), ("IBuilderConfig", "set_flag"),
                ("IBuilderConfig", "int8_calibrator"), ("IBuilderConfig", "default_device_type"),
                ("IBuilderConfig", "DLA_core"), ("IBuilderConfig", "set_timing_cache"),
                ("ITimingCache", "serialize"), ("OnnxParser", "parse_from_file"), ("ParserError", "desc"),
                ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"), ("DataType", "INT64"),
                ("IInt8EntropyCalibrator2", "get_batch"), ("IInt8EntropyCalibrator2", "write_calibration_cache"),
                ("TensorIOMode", "INPUT"), ("MemoryPoolType", "WORKSPACE"), ("BuilderFlag", "GPU_FALLBACK")}
    assert expected <= uses, sorted(expected - uses)


def test_the_check_catches_release_specific_names():
    """The checker itself: removed / new names fail unguarded and pass under the right guard."""
    bad = _check("def f(trt, engine, config, builder):\n"
                 "    engine = trt.Runtime(None).deserialize_cuda_engine(b'')\n"
                 "    n = engine.num_bindings\n"                       # gone in 10.x
                 "    config = builder.create_builder_config()\n"
                 "    config.max_workspace_size = 1\n"                 # gone in 10.x
                 "    t = trt.DataType.INT64\n"                        # new in 10.x
                 "    trt.Builder(None).build_engine(None, None)\n")   # gone in 10.x
    assert [v.split(" (")[0] for v in bad.violations()] == [
        "line 3: ICudaEngine.num_bindings", "line 5: IBuilderConfig.max_workspace_size",
        "line 6: DataType.INT64", "line 7: Builder.build_engine"]
    good = _check("def f(trt):\n"
                  "    engine = trt.Runtime(None).deserialize_cuda_engine(b'')\n"
                  "    if trt_major(trt) < 10:\n"
                  "        n = engine.num_bindings\n"
                  "    else:\n"
                  "        t = trt.DataType.INT64\n"
                  "    x = trt.DataType.INT64 if trt_major(trt) >= 10 else trt.DataType.INT32\n")
    assert good.violations() == [] and len(good.uses) == 5
    new_class = _check("def f(trt):\n    s = trt.ExecutionContextAllocationStrategy\n"
                       "    if trt_major(trt) >= 10:\n        s = trt.ExecutionContextAllocationStrategy\n",
                       RELEASES_BEFORE_11)
    assert new_class.violations() == ["line 2: trt.ExecutionContextAllocationStrategy (class only in "
                                      "['release/10.3'])"]
    wrong_guard = _check("def f(trt):\n    if trt_major(trt) >= 8:\n        t = trt.DataType.INT64\n",
                         RELEASES_BEFORE_11)
    assert wrong_guard.violations() == ["line 3: DataType.INT64 (not in ['release/10.3', 'release/8.5', "
                                        "'release/8.6'])"]


def test_runtime_modules_are_python_38():
    vermin = os.path.join(ROOT, ".venv", "bin", "vermin")
    if not os.path.exists(vermin):
        vermin = "vermin"
    out = subprocess.run([vermin, "--target=3.8-", "--no-tips", "--violations", "mess_edge/runtime"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    text = out.stdout.decode()
    assert out.returncode == 0, text
    assert "Minimum required versions: 3." in text


def test_int8_calibration_inputs_follow_the_chain(tmp_path):
    """The INT8 calibrator's inputs (no GPU needed to compute them): images preprocessed as the manifest
    says, and every graph's feeds equal the features the plain ONNX chain computes."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image
    from _fixtures import make_onnx_dir
    from mess_edge.build.int8 import _graphs_in_build_order, calibration_images

    onnx_dir, calib = str(tmp_path / "onnx"), tmp_path / "calib"
    manifest = make_onnx_dir(onnx_dir)
    calib.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(str(calib / "a.png"))
    pre = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    np.save(str(calib / "b.npy"), pre)
    (calib / "notes.txt").write_text("ignored")
    images = calibration_images(str(calib), manifest, 8)
    norm = manifest["normalization"]
    want = ((rgb / 255.0 - np.array(norm["mean"])) / np.array(norm["std"])).transpose(2, 0, 1)[None]
    assert len(images) == 2 and images[0].dtype == np.float32 and images[0].shape == (1, 3, 32, 32)
    np.testing.assert_allclose(images[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(images[1], pre[None])

    graphs = [dict(g, _path=os.path.join(onnx_dir, g["file"])) for g in manifest["graphs"]]
    order = list(_graphs_in_build_order(dict(manifest, graphs=graphs), images))
    assert [g["name"] for g, _ in order] == ["segment_0", "head_e0_c0b0r0h0", "head_e0_c1b1r0h0", "segment_1",
                                             "head_e1_c0b0r0h0", "head_e1_c1b1r0h0", "final", "upsample_16x16",
                                             "upsample_8x8", "monolithic"]
    feeds = {g["name"]: f for g, f in order}
    run = lambda n, feed: ort.InferenceSession(os.path.join(onnx_dir, n + ".onnx"),
                                               providers=["CPUExecutionProvider"]).run(None, feed)[0]
    for k, x in enumerate(images):
        f0 = run("segment_0", {"image": x})
        f1 = run("segment_1", {"feat_in": f0})
        assert feeds["segment_0"][k]["image"] is x and feeds["monolithic"][k]["image"] is x
        np.testing.assert_allclose(feeds["segment_1"][k]["feat_in"], f0, rtol=1e-6)
        np.testing.assert_allclose(feeds["head_e0_c1b1r0h0"][k]["feat"], f0, rtol=1e-6)
        np.testing.assert_allclose(feeds["final"][k]["feat"], f1, rtol=1e-6)
        assert list(feeds["final"][k]) == ["feat"]  # the final graph ends in labels: no threshold input
    assert feeds["upsample_8x8"] is None  # no weights: built at fp16/fp32, not calibrated
    assert [n for n, f in feeds.items() if f is None] == ["upsample_16x16", "upsample_8x8"]


# -- on a GPU with TensorRT -------------------------------------------------------------------------------

def _gpu():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU tests run on a target)")
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (GPU tests run on a target)")
    pytest.importorskip("onnx", reason="the fixture graphs need the onnx package")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            pytest.skip("no CUDA device")
    except Exception as e:
        pytest.skip("no usable CUDA driver / device: {}".format(e))
    return trt


@pytest.fixture(scope="module")
def trt_engines(tmp_path_factory):
    _gpu()
    from _fixtures import make_onnx_dir
    from mess_edge.build.builder import build_engines
    base = tmp_path_factory.mktemp("trt")
    onnx_dir = str(base / "onnx")
    make_onnx_dir(onnx_dir)
    return onnx_dir, build_engines(onnx_dir, "trt", "fp32", out_dir=str(base / "engines"))


def _reference(onnx_dir, name, feed):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference")
    s = ort.InferenceSession(os.path.join(onnx_dir, name + ".onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))


@pytest.mark.gpu
def test_trt_graphs_match_onnxruntime(trt_engines):
    import numpy as np
    from mess_edge.build.engine_set import load_engines
    onnx_dir, eng = trt_engines
    engines = load_engines(eng)
    assert engines.sidecar["device"]["gpu"]["compute_capability"]
    assert os.path.isfile(os.path.join(eng, "timing.cache"))
    rng = np.random.default_rng(0)
    for g in engines.graphs:
        feed = {i["name"]: (np.array([0.5], np.float32) if i["name"] == "th_pix"
                            else rng.standard_normal(i["shape"]).astype(np.float32)) for i in g["inputs"]}
        with engines.runner(g["name"]) as r:
            got = r.infer(feed)
        want = _reference(onnx_dir, g["name"], feed)
        for k, w in want.items():
            if w.dtype == np.int32:
                assert np.mean(got[k] == w) > 0.99, g["name"]
            else:
                np.testing.assert_allclose(got[k], w, rtol=1e-2, atol=1e-2, err_msg=g["name"])


@pytest.mark.gpu
def test_trt_chain_shares_device_buffers(trt_engines):
    import numpy as np
    from mess_edge.errors import MessError
    from mess_edge.build.engine_set import load_engines
    onnx_dir, eng = trt_engines
    engines = load_engines(eng)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    a = engines.runner("segment_0").activate()
    b = engines.runner("segment_1", stream=a.stream, host_outputs=["feat"]).activate()
    try:
        with pytest.raises(MessError, match="cannot read its input 'feat_in'"):
            b.use_device_input("feat_in", a.device_tensor("image"))
        b.use_device_input("feat_in", a.device_tensor("feat"))
        assert b.input_metadata and b._feed_names() == []
        a.enqueue({"image": x}, host_outputs=())
        out = b.infer({})
        f = _reference(onnx_dir, "segment_1", {"feat_in": _reference(onnx_dir, "segment_0", {"image": x})["feat"]})
        np.testing.assert_allclose(out["feat"], f["feat"], rtol=1e-2, atol=1e-2)
    finally:
        b.deactivate()
        a.deactivate()


@pytest.mark.gpu
def test_trt_sidecar_refusal(trt_engines, tmp_path):
    import shutil
    from mess_edge.errors import MessError
    from mess_edge.build.engine_set import load_engines
    eng = shutil.copytree(trt_engines[1], str(tmp_path / "e"))
    side = json.load(open(os.path.join(eng, "engine.json")))
    side["versions"]["tensorrt"] = "8.0.1"
    json.dump(side, open(os.path.join(eng, "engine.json"), "w"))
    with pytest.raises(MessError, match="built with tensorrt 8.0.1; .*rebuild here: mess-edge build"):
        load_engines(eng)


@pytest.mark.gpu
def test_trt_builds_graph_precision_folders(trt_engines, tmp_path):
    """Q/DQ INT8 and FP16 folders from mess-edge quantize build as explicit precision (8.x flags, 10+/11 strongly
    typed) and agree with onnxruntime running the same graphs on most label pixels."""
    import numpy as np
    import cv2
    from mess_edge.build.builder import build_engines
    from mess_edge.build.engine_set import load_engines
    from mess_edge.quantize.quantizer import quantize_folder
    onnx_dir = trt_engines[0]
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        cv2.imwrite(str(calib / "{}.png".format(i)), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for p in ("int8", "fp16"):
        q = str(tmp_path / ("onnx-" + p))
        quantize_folder(onnx_dir, p, q, str(calib) if p == "int8" else None)
        engines = load_engines(build_engines(q, "trt", out_dir=str(tmp_path / ("e-" + p))))
        assert engines.precision == p
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        with engines.runner("monolithic") as r:
            got = r.infer({"image": x})["labels"]
        want = _reference(q, "monolithic", {"image": x})["labels"]
        assert np.mean(got == want) > 0.9, p


@pytest.mark.gpu
def test_trt_chain_syncs_only_where_the_host_reads(trt_engines, tmp_path):
    """The TensorRT chain (one stream, no per-segment sync, pinned image buffer) gives the reference chain's
    outputs, reports CUDA-event stage times, and refuses a first run with an unwired input missing."""
    import numpy as np
    from _fixtures import write_split_instance
    from mess_edge.build.engine_set import load_engines
    from mess_edge.errors import MessError
    from mess_edge.run.chain import Chain, ReferenceChain, load_instance
    engines = load_engines(trt_engines[1])
    rng = np.random.default_rng(2)
    frames = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(6)]
    path = str(tmp_path / "inst.json")
    write_split_instance(engines, frames, path)
    inst = load_instance(path)
    with ReferenceChain(engines, inst) as ref, Chain(engines, inst) as chain:
        buf = chain.backend.input_buffer()
        for x in frames:
            np.copyto(buf, x)
            got, want = chain.run(buf), ref.run(x)
            assert got.exit == want.exit and np.mean(got.labels == want.labels) > 0.99
            assert set(chain.backend.gpu_times()) <= set(got.times) and all(v >= 0 for v in got.times.values())
    with engines.runner("head_e0_c1b1r0h0") as head:
        with pytest.raises(MessError, match=r"got no value for input\(s\) \['feat', 'th_pix'\] on its first run"):
            head.enqueue({})
