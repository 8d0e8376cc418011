"""OrtRunner on real ONNX graphs: state and input checks, outputs against onnxruntime's plain session,
OrtValue chaining against the monolithic graph, and the once-per-process global thread pool."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

from _fixtures import make_onnx_dir
from mess_edge.errors import MessError
from mess_edge.runtime.ort_runner import OrtRunner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from onnxruntime.capi import _pybind_state as _ort_state  # noqa: E402

GLOBAL_POOL = hasattr(_ort_state, "set_global_thread_pool_sizes")


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("onnx"))
    make_onnx_dir(d)
    return d


def _plain(path, feed):
    """The reference: onnxruntime's InferenceSession with default options."""
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))


def _feed(rng, with_th=False, shape=(1, 8, 16, 16), name="feat"):
    feed = {name: rng.standard_normal(shape).astype(np.float32)}
    if with_th:
        feed["th_pix"] = np.array([rng.uniform(0.3, 0.9)], np.float32)
    return feed


@pytest.mark.parametrize("graph,inp,shape,with_th", [
    ("segment_0", "image", (1, 3, 32, 32), False),
    ("segment_1", "feat_in", (1, 8, 16, 16), False),
    ("head_e0_c1b1r0h0", "feat", (1, 8, 16, 16), True),
    ("final", "feat", (1, 16, 8, 8), False),
    ("upsample_8x8", "logits", (1, 4, 8, 8), False),
])
def test_outputs_equal_plain_session(onnx_dir, graph, inp, shape, with_th):
    path = os.path.join(onnx_dir, graph + ".onnx")
    rng = np.random.default_rng(hash(graph) % 1000)
    with OrtRunner(path) as r:
        for _ in range(3):  # fresh random inputs each time; the IOBinding buffers are reused across calls
            feed = _feed(rng, with_th, shape, inp)
            want = _plain(path, feed)
            got = r.infer(feed)
            got_ov = {k: r.to_numpy(v) for k, v in r.infer_ortvalues(feed).items()}
            assert list(got) == list(want) == list(got_ov)
            for k in want:
                assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(got_ov[k], want[k], rtol=1e-5, atol=1e-6)


def test_metadata(onnx_dir):
    with OrtRunner(os.path.join(onnx_dir, "head_e0_c0b0r0h0.onnx"), name="head") as r:
        assert [(m.name, m.shape, str(m.dtype)) for m in r.input_metadata.values()] == [
            ("feat", (1, 8, 16, 16), "float32"), ("th_pix", (1,), "float32")]
        assert [(m.name, m.shape) for m in r.output_metadata.values()] == [("logits", (1, 4, 16, 16)),
                                                                          ("confidence", (1,))]


def test_state_errors(onnx_dir):
    r = OrtRunner(os.path.join(onnx_dir, "segment_0.onnx"), name="seg0")
    feed = {"image": np.zeros((1, 3, 32, 32), np.float32)}
    with pytest.raises(MessError, match=r"runner 'seg0' is not active; got infer\(\) before activate\(\)"):
        r.infer(feed)
    with pytest.raises(MessError, match="not active; got input_metadata before activate"):
        r.input_metadata
    with pytest.raises(MessError, match=r"got deactivate\(\) before activate\(\)"):
        r.deactivate()
    with r:
        with pytest.raises(MessError, match=r"runner 'seg0' is already active; got a second activate\(\)"):
            r.activate()
        assert r.infer(feed)["feat"].shape == (1, 8, 16, 16)
    assert not r.is_active
    with pytest.raises(MessError, match="not active"):
        r.infer_ortvalues(feed)


def test_input_errors(onnx_dir):
    with OrtRunner(os.path.join(onnx_dir, "head_e0_c0b0r0h0.onnx"), name="head") as r:
        feat, th = np.zeros((1, 8, 16, 16), np.float32), np.array([0.5], np.float32)
        with pytest.raises(MessError) as e:
            r.infer({"feat": feat})
        assert str(e.value) == ("runner 'head' got inputs ['feat']; expected ['feat', 'th_pix'] (missing "
                                "['th_pix'], unexpected []); try a feed with exactly the expected names")
        with pytest.raises(MessError, match=r"missing \[\], unexpected \['extra'\]"):
            r.infer({"feat": feat, "th_pix": th, "extra": th})
        with pytest.raises(MessError) as e:
            r.infer({"feat": np.zeros((1, 8, 16, 15), np.float32), "th_pix": th})
        assert str(e.value) == ("runner 'head' got shape (1, 8, 16, 15) for input 'feat'; expected "
                                "(1, 8, 16, 16); try resizing or reshaping the input")
        with pytest.raises(MessError) as e:
            r.infer({"feat": feat.astype(np.float64), "th_pix": th})
        assert str(e.value) == ("runner 'head' got dtype float64 for input 'feat'; expected float32; "
                                "try x.astype(numpy.float32)")
        with pytest.raises(MessError, match="got shape \\(1, 8, 16\\) for input 'feat'"):  # OrtValue checked too
            r.infer_ortvalues({"feat": r.ortvalue(np.zeros((1, 8, 16), np.float32)), "th_pix": th})
        with pytest.raises(MessError, match="got a feed of type list; expected a dict"):
            r.infer([feat, th])
        with pytest.raises(MessError, match="got a list for input 'feat'; expected an array of shape"):
            r.infer({"feat": [0.0], "th_pix": th})


def test_ortvalue_chain_equals_monolithic_and_numpy_chain(onnx_dir):
    """Features passed between sessions as OrtValues give the monolithic graph's labels and the same
    labels as the obvious numpy round-trip chain."""
    p = lambda n: os.path.join(onnx_dir, n + ".onnx")
    rng = np.random.default_rng(7)
    runners = [OrtRunner(p(n)).activate() for n in ("segment_0", "segment_1", "final")]
    try:
        for _ in range(3):
            x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
            v = runners[0].infer_ortvalues({"image": runners[0].ortvalue(x)})["feat"]
            v = runners[1].infer_ortvalues({"feat_in": v})["feat"]
            labels = runners[2].to_numpy(runners[2].infer_ortvalues({"feat": v})["labels"])
            f = _plain(p("segment_1"), {"feat_in": _plain(p("segment_0"), {"image": x})["feat"]})["feat"]
            ref = _plain(p("final"), {"feat": f})
            np.testing.assert_array_equal(labels, ref["labels"])
            assert labels.dtype == np.int32
            np.testing.assert_array_equal(labels, _plain(p("monolithic"), {"image": x})["labels"])
    finally:
        for r in runners:
            r.deactivate()


def test_missing_provider_and_bad_file(onnx_dir, tmp_path):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(MessError, match=r"got provider 'cuda' but this onnxruntime build has only"):
            OrtRunner(os.path.join(onnx_dir, "segment_0.onnx"), providers=("cuda",)).activate()
    with pytest.raises(MessError, match="got provider 'gpu'; expected one of"):
        OrtRunner(os.path.join(onnx_dir, "segment_0.onnx"), providers=("gpu",)).activate()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(MessError, match="onnxruntime could not load .*bad.onnx"):
        OrtRunner(str(bad)).activate()


def _python(code):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env, timeout=120)
    assert out.returncode == 0, out.stdout.decode()
    return out.stdout.decode().strip().splitlines()


@pytest.mark.skipif(not GLOBAL_POOL, reason="this onnxruntime has no set_global_thread_pool_sizes (older releases)")
def test_global_pool_set_once_per_process(onnx_dir):
    lines = _python("""
        import numpy as np
        from mess_edge.errors import MessError
        from mess_edge.runtime.ort_runner import OrtRunner, configure_ort_threads
        first = configure_ort_threads(2, 1)
        print(first.mode, first.intra_threads, configure_ort_threads(1, 1) is first)
        runners = [OrtRunner("{d}/segment_0.onnx").activate(), OrtRunner("{d}/segment_0.onnx", threads=2).activate()]
        print(runners[0].threading, "|", runners[1].threading)
        print(runners[0].session.get_session_options().use_per_session_threads)
        try:
            OrtRunner("{d}/segment_0.onnx", threads=1).activate()
        except MessError as e:
            print("refused:", e)
    """.format(d=onnx_dir))
    assert lines[0] == "global 2 True"
    assert lines[1] == "global pool (2 intra) | global pool (2 intra)"
    assert lines[2] == "False"
    assert lines[3].startswith("refused: got threads=1 for an ONNX Runtime session; this process runs one "
                               "global pool of 2 threads and ORT refuses other pools")


def test_fallback_without_global_pool(onnx_dir):
    """An ORT without the private setter: sessions get their own pools with spinning off, still correct."""
    lines = _python("""
        import numpy as np, onnxruntime as ort
        from onnxruntime.capi import _pybind_state
        if hasattr(_pybind_state, "set_global_thread_pool_sizes"):
            del _pybind_state.set_global_thread_pool_sizes
        from mess_edge.runtime.ort_runner import OrtRunner, configure_ort_threads
        t = configure_ort_threads(2)
        print(t.mode, t.note)
        x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        with OrtRunner("{d}/segment_0.onnx") as r:
            print(r.threading)
            print(r.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning"))
            ref = ort.InferenceSession("{d}/segment_0.onnx", providers=["CPUExecutionProvider"]).run(None, {{"image": x}})[0]
            print(np.abs(r.infer({{"image": x}})["feat"] - ref).max() < 1e-5)
    """.format(d=onnx_dir))
    assert lines[0].startswith("per-session global pool unavailable (AttributeError")
    assert lines[1:] == ["own pool (2 intra, spinning off)", "0", "True"]


def test_unconfigured_process_keeps_plain_sessions_working(onnx_dir):
    """Runners never set up the global pool on their own: ORT would then refuse every plain session."""
    from mess_edge.runtime.ort_runner import ort_threading

    assert ort_threading() is None  # nothing in this pytest process configured it
    path = os.path.join(onnx_dir, "segment_0.onnx")
    with OrtRunner(path) as r:
        assert r.threading.startswith("own pool (") and r.threading.endswith("spinning off)")
        x = np.ones((1, 3, 32, 32), np.float32)
        np.testing.assert_allclose(r.infer({"image": x})["feat"], _plain(path, {"image": x})["feat"], rtol=1e-5)


def test_non_contiguous_numpy_inputs(onnx_dir):
    path = os.path.join(onnx_dir, "segment_1.onnx")
    x = np.random.default_rng(5).standard_normal((1, 8, 16, 32)).astype(np.float32)[..., ::2]  # a strided view
    assert not x.flags["C_CONTIGUOUS"]
    with OrtRunner(path) as r:
        want = _plain(path, {"feat_in": np.ascontiguousarray(x)})["feat"]
        np.testing.assert_allclose(r.infer({"feat_in": x})["feat"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.infer_ortvalues({"feat_in": x})["feat"].numpy(), want, rtol=1e-5, atol=1e-6)
