"""The early-exit chain against the plain reference chain, on small real engines (tests/_fixtures.py, ORT)."""

import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from _fixtures import make_onnx_dir
from mess_edge.errors import MessError
from mess_edge.build.builder import build_engines
from mess_edge.run.chain import Chain, ReferenceChain
from mess_edge.build.engine_set import load_engines

E0, E0B, E1 = "head_e0_c0b0r0h0", "head_e0_c1b1r0h0", "head_e1_c1b1r0h0"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """3 segments (exit points at strides 2, 4, 8), 2 heads per point, final after segment 2; 32x32 input."""
    base = tmp_path_factory.mktemp("chain")
    make_onnx_dir(str(base / "onnx"), widths=(8, 16, 16), num_classes=5)
    return load_engines(build_engines(str(base / "onnx"), "ort", out_dir=str(base / "eng")))


def instance(setting, exits, final=True, th_pix=0.5, **extra):
    inst = {"format": "mess-edge-instance/1", "setting": setting, "final": final, "th_pix": th_pix, "policy": "edge",
            "exits": [{"exit": int(g[6]), "arch": {}, "graph": g, "th_img": t} for g, t in exits]}
    inst.update(extra)
    return inst


def images(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(n)]


def compare(engines, inst, xs, deadline_ms=None, anytime_outputs=None):
    """Run Chain and ReferenceChain on ``xs``; assert equal outputs; return the chain's results."""
    results = []
    with Chain(engines, inst, deadline_ms) as chain, ReferenceChain(engines, inst) as ref:
        for x in xs:
            got, want = chain.run(x), ref.run(x, anytime_outputs)
            assert (got.exit, got.graph) == (want.exit, want.graph)
            assert got.labels.dtype == np.int32 and got.labels.shape == (32, 32)
            np.testing.assert_array_equal(got.labels, want.labels)
            if want.exit == "final":
                assert got.confidence is None and want.confidence is None  # the final graph computes none
            else:
                assert got.confidence == pytest.approx(want.confidence, abs=1e-6)
            results.append(got)
    return results


@pytest.mark.parametrize("th, taken", [((0.0, 0.0), (0, E0)), ((1.01, 0.0), (1, E1)),
                                       ((1.01, 1.01), ("final", "final"))])
def test_input_dependent_forced_exits_match_reference(engines, th, taken):
    results = compare(engines, instance("input-dependent", [(E0, th[0]), (E1, th[1])]), images(3, 1))
    assert {(r.exit, r.graph) for r in results} == {taken}


def test_input_dependent_mixed_decisions_match_reference(engines):
    xs = images(12, 2)
    probe = instance("input-dependent", [(E0B, 1.01), (E1, 1.01)], th_pix=0.6)
    with ReferenceChain(engines, probe) as ref:
        conf = [ref.outputs(x)[0][2] for x in xs]
    th = float(np.median(conf))  # about half the images leave at the first exit
    results = compare(engines, instance("input-dependent", [(E0B, th), (E1, 1.01)], th_pix=0.6), xs)
    exits = [r.exit for r in results]
    assert exits == [0 if c >= th else "final" for c in conf] and 0 < exits.count(0) < len(xs)


def test_budgeted_runs_to_its_one_exit(engines):
    for graph, point in ((E0B, 0), (E1, 1)):
        results = compare(engines, instance("budgeted", [(graph, None)], final=False), images(2, 3))
        assert [(r.exit, r.graph) for r in results] == [(point, graph)] * 2
        assert list(results[0].times_ms) == ["segment_0", "segment_1"][:point + 1] + [
            graph, "upsample_{0}x{0}".format(16 >> point), "total"]


def test_anytime_deadline(engines):
    inst = instance("anytime", [(E0, None), (E1, None)])
    assert [r.exit for r in compare(engines, inst, images(2, 4), deadline_ms=0.0, anytime_outputs=1)] == [0, 0]
    assert [r.exit for r in compare(engines, inst, images(2, 4))] == ["final", "final"]
    assert [r.exit for r in compare(engines, inst, images(2, 4), deadline_ms=1e6)] == ["final", "final"]


def test_only_the_exit_taken_is_upsampled_and_features_stay_ortvalues(engines):
    inst = instance("input-dependent", [(E0, 1.01), (E1, 1.01)])
    with Chain(engines, inst) as chain:
        r = chain.run(images(1, 5)[0])
        assert list(r.times_ms) == ["segment_0", E0, "segment_1", E1, "segment_2", "final", "total"]
        assert r.times_ms["total"] >= sum(v for k, v in r.times_ms.items() if k != "total")
        assert all(isinstance(v, ort.OrtValue) for out in chain.backend.out.values() for v in out.values())


def test_final_only_path_equals_the_monolithic_graph(engines):
    xs = images(3, 6)
    mono = ort.InferenceSession(engines.path("monolithic"), providers=["CPUExecutionProvider"])
    with Chain(engines, instance("input-dependent", [(E0, 0.0)])) as chain:
        for x in xs:
            r = chain.run_final_only(x)
            np.testing.assert_array_equal(r.labels, mono.run(None, {"image": x})[0][0])
            assert r.exit == "final" and list(r.times_ms) == ["segment_0", "segment_1", "segment_2", "final", "total"]
    results = compare(engines, instance("final-only", []), xs)
    for r, x in zip(results, xs):
        np.testing.assert_array_equal(r.labels, mono.run(None, {"image": x})[0][0])


def test_warm_up_runs_every_graph_and_keeps_results_equal(engines):
    inst = instance("input-dependent", [(E0, 0.5), (E1, 0.5)])
    with Chain(engines, inst) as chain:
        chain.warm_up(images(1, 7)[0])
        assert set(chain._mean_ms) == {"segment_0", "segment_1", "segment_2", E0, E1, "final", "upsample_16x16",
                                       "upsample_8x8"}
    compare(engines, inst, images(4, 7))


@pytest.mark.parametrize("key, what", [("manifest_sha256", "manifest"), ("checkpoint_sha256", "checkpoint")])
def test_instance_of_another_export_is_refused(engines, key, what):
    inst = instance("input-dependent", [(E0, 0.5)], **{key: "ab" * 32})
    with pytest.raises(MessError, match="got an instance searched for {} abababababab but engines in .* built from {} "
                                        .format(what, what)):
        Chain(engines, inst)
    ok = instance("input-dependent", [(E0, 0.5)], manifest_sha256=engines.sidecar["manifest_sha256"],
                  checkpoint_sha256=engines.manifest["checkpoint_sha256"])
    Chain(engines, ok)


def test_bad_instances_are_refused(engines):
    with pytest.raises(MessError, match="got instance exit 0 \\(graph 'head_e0_c3b0r0h0'\\) absent from the engines"):
        Chain(engines, instance("input-dependent", [("head_e0_c3b0r0h0", 0.5)]))
    with pytest.raises(MessError, match="got instance setting 'fastest'"):
        Chain(engines, instance("fastest", []))
    with pytest.raises(MessError, match="policy 'raw'.*try mess-edge search --policy edge"):
        Chain(engines, instance("input-dependent", [(E0, 0.5)], policy="raw"))
    with pytest.raises(MessError, match="expected exactly one \\(budgeted\\)"):
        Chain(engines, instance("budgeted", [(E0, None), (E1, None)], final=False))
    with pytest.raises(MessError, match="expected backbone order"):
        Chain(engines, instance("anytime", [(E1, None), (E0, None)]))


def _failing_final(path, feat_shape, hw):
    """A graph with the final exit's I/O (feat -> labels) that fails at run time: a Reshape whose target
    shape is computed from the data, so only running it finds that 7 does not divide the feature."""
    T = TensorProto
    nodes = [helper.make_node("ReduceMax", ["feat"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["m0"]), helper.make_node("Add", ["m0", "seven"], ["s"]),
             helper.make_node("Cast", ["s"], ["si"], to=T.INT64),
             helper.make_node("Reshape", ["si", "one"], ["shape"]),
             helper.make_node("Reshape", ["feat", "shape"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["mean"], keepdims=0),
             helper.make_node("Expand", ["mean", "out_shape"], ["e"]),
             helper.make_node("Cast", ["e"], ["labels"], to=T.INT32)]
    inits = [helper.make_tensor("zero", T.FLOAT, [], [0.0]), helper.make_tensor("seven", T.FLOAT, [], [7.0]),
             helper.make_tensor("one", T.INT64, [1], [1]),
             helper.make_tensor("out_shape", T.INT64, [3], [1] + list(hw))]
    g = helper.make_graph(nodes, "final", [helper.make_tensor_value_info("feat", T.FLOAT, feat_shape)],
                          [helper.make_tensor_value_info("labels", T.INT32, [1] + list(hw))], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_engine_failure_names_the_engine(engines, tmp_path):
    eng = str(tmp_path / "eng")
    shutil.copytree(engines.dir, eng)
    _failing_final(os.path.join(eng, "final.onnx"), [1, 16, 4, 4], (32, 32))
    broken = load_engines(eng, verify_files=False)
    with Chain(broken, instance("input-dependent", [(E0, 1.01)])) as chain:
        with pytest.raises(MessError, match="^engine 'final' failed \\("):
            chain.run(images(1, 8)[0])
    with open(os.path.join(eng, "segment_1.onnx"), "wb") as f:
        f.write(b"not an onnx graph")
    with pytest.raises(MessError, match="onnxruntime could not load segment_1"):
        with Chain(load_engines(eng, verify_files=False), instance("final-only", [])):
            pass


@pytest.mark.gpu
def test_tensorrt_chain_matches_its_reference_and_onnxruntime(engines, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU tests run on a target)")
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (GPU tests run on a target)")
    try:
        cuda.init()
        assert cuda.Device.count() > 0
    except Exception as e:
        pytest.skip("no usable CUDA device: {}".format(e))
    onnx_dir = os.path.join(os.path.dirname(engines.dir), "onnx")
    trt_engines = load_engines(build_engines(onnx_dir, "trt", "fp32", out_dir=str(tmp_path / "trt")))
    xs = images(3, 9)
    for th, taken in (((0.0, 0.0), 0), ((1.01, 0.0), 1), ((1.01, 1.01), "final")):
        inst = instance("input-dependent", [(E0, th[0]), (E1, th[1])])
        results = compare(trt_engines, inst, xs)
        assert [r.exit for r in results] == [taken] * 3
        with Chain(engines, inst) as ort_chain:  # the same graphs on ONNX Runtime (fp32; TF32 may differ a little)
            for r, x in zip(results, xs):
                assert np.mean(r.labels == ort_chain.run(x).labels) > 0.99


def test_backbone_stretches_cut_after_each_read_point():
    """Backbone graphs 0..N (N = final) in the stretches the chain runs, which the profile times (lut "stretches")."""
    from mess_edge.runtime.fuse import backbone_stretches

    assert backbone_stretches(3, []) == [(0, 3)]
    assert backbone_stretches(3, [1]) == [(0, 1), (2, 3)]
    assert backbone_stretches(3, [2, 0, 2]) == [(0, 0), (1, 2), (3, 3)]
    assert backbone_stretches(3, [0, 1, 2]) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_fused_stretches_equal_unfused_graphs(engines):
    """The ORT backend fuses the segments no selected exit reads (runtime/fuse.py): same labels, fewer graphs."""
    from mess_edge.run.chain import Plan
    from mess_edge.run.chain_backends import OrtBackend

    inst = instance("input-dependent", [(E1, 1.01)])  # exit 1 selected (never taken), the final takes all
    plan = Plan(engines, inst)
    fused, plain = OrtBackend(engines, plan), OrtBackend(engines, plan, fuse=False)
    assert fused.skip == {"segment_0", "segment_2"} and plain.skip == set()  # [0, 1] | head | [2, final]
    assert list(fused.runners) == ["segment_1", plan.exits[0].graph, "final"] + sorted(set(plan.upsample.values()))
    final_only = OrtBackend(engines, Plan(engines, instance("final-only", [])))
    assert list(final_only.runners) == ["final"]  # the whole network as one graph, like the monolithic one
    for backend in (fused, plain, final_only):
        backend.activate()
    try:
        for x in images(3, 11):
            outs = []
            for backend in (fused, plain, final_only):
                for k, seg in enumerate(backend.plan.segments):
                    backend.run(seg, x if k == 0 else None)
                    if backend is not final_only and k == 1:
                        backend.run(backend.plan.exits[0].graph)
                outs.append(backend.run("final"))
            np.testing.assert_array_equal(outs[0], outs[1])
            np.testing.assert_array_equal(outs[0], outs[2])
    finally:
        for backend in (fused, plain, final_only):
            backend.deactivate()
