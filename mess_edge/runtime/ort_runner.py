"""ONNX Runtime backend: ``OrtRunner`` and the process-wide thread pool it relies on.

Threading, measured (TENSORRT.md sec. 8.5, ORT 1.32, 2 cores, a 1.6 ms model cut into 4 segments + head):
every session owning a spinning thread pool made the chain 6.6x slower than one session, because idle
sessions' spinning threads starve the active one; spinning off fixed the chain but cost the monolithic
graph 38 %; ONE global pool shared by every session made both fast (chain 1.04x the best monolithic).

So a process that runs the device side (the profile / bench / run commands) calls
``configure_ort_threads()`` once, first; every OrtRunner then joins that pool. It is opt-in, not done on
the first activation, because once the global pool exists ORT refuses every session that asks for its
own threads, including a plain ``onnxruntime.InferenceSession(path)`` elsewhere in the same process.
The setter lives in a private ORT module: when it is missing or refuses, sessions fall back to
per-session pools with spinning off, the next best measured setting; so do sessions of a process that
never configured the pool.
"""

import collections

import numpy as np

from mess_edge.errors import MessError
from mess_edge.runtime.runner import Runner, TensorMeta

# Short names users type -> ONNX Runtime provider names.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
               "tensor(int64)": np.int64, "tensor(bool)": np.bool_}

OrtThreading = collections.namedtuple("OrtThreading", ["mode", "intra_threads", "inter_threads", "note"])
OrtThreading.__doc__ = """The process's ORT threading: mode "global" (one shared pool) or "per-session"
(the fallback: each session its own pool, spinning off)."""

_THREADING = None  # set once per process by configure_ort_threads


def configure_ort_threads(intra_threads=None, inter_threads=1, global_pool=True):
    """Create ONE global ORT thread pool for this process (once; later calls return the first result).

    Call it at the start of a process that owns its ONNX Runtime use, before any session. After it,
    every session of the process must join the pool (OrtRunner does; ORT refuses plain sessions).
    ``intra_threads`` default: the physical cores this process may use. Returns an OrtThreading; when the
    private setter is missing or refuses, mode is "per-session" and every OrtRunner gives its session its
    own non-spinning pool of ``intra_threads`` threads. ``global_pool=False`` chooses that on purpose.
    """
    global _THREADING
    if _THREADING is not None:
        return _THREADING
    if intra_threads is None:
        from mess_edge.runtime.device import physical_cores
        intra_threads = physical_cores()
    if not global_pool:
        _THREADING = OrtThreading("per-session", int(intra_threads), int(inter_threads), "chosen")
        return _THREADING
    try:
        from onnxruntime.capi import _pybind_state
        _pybind_state.set_global_thread_pool_sizes(int(intra_threads), int(inter_threads))
        _THREADING = OrtThreading("global", int(intra_threads), int(inter_threads), "")
    except Exception as e:  # ImportError/AttributeError (older or changed ORT) or RuntimeError (too late)
        _THREADING = OrtThreading("per-session", int(intra_threads), int(inter_threads),
                                  "global pool unavailable ({}: {})".format(type(e).__name__, e))
    return _THREADING


def ort_threading():
    """The OrtThreading configure_ort_threads set up, or None if this process never called it."""
    return _THREADING


def resolve_providers(providers):
    """Short names ("cpu", "cuda", "trt") -> ORT provider list, fastest first, CPU always last.

    Raises MessError when a requested provider is not in this onnxruntime build.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = []
    for p in providers:
        if p not in PROVIDERS:
            raise MessError("got provider '{}'; expected one of {}".format(p, sorted(PROVIDERS)))
        if PROVIDERS[p] not in available:
            raise MessError("got provider '{}' but this onnxruntime build has only {}; try provider 'cpu', "
                            "or install an onnxruntime build with {}".format(p, available, PROVIDERS[p]))
        wanted.append(PROVIDERS[p])
    if PROVIDERS["trt"] in wanted and PROVIDERS["cuda"] in available:
        wanted.append(PROVIDERS["cuda"])  # nodes TensorRT cannot take run on CUDA, not the CPU
    wanted.append(PROVIDERS["cpu"])
    return list(collections.OrderedDict.fromkeys(wanted))


def session_options(threads=None, spinning=False, level="all"):
    """SessionOptions for latency: sequential execution, graph optimisation ``level``.

    In a process with the global pool (configure_ort_threads), the session joins it; ``threads`` must
    then be None or the pool's size. Otherwise the session gets its own pool of ``threads`` (default:
    the configured size, else the physical cores), spinning only if ``spinning``: spinning helps a
    session that runs alone and starves every other session sharing the cores.
    Returns (options, description string).
    """
    import onnxruntime as ort

    levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[level]
    pool = _THREADING
    if pool is not None and pool.mode == "global":
        if threads is not None and int(threads) != pool.intra_threads:
            raise MessError("got threads={} for an ONNX Runtime session; this process runs one global pool of "
                            "{} threads and ORT refuses other pools; try threads=None, or a separate process"
                            .format(threads, pool.intra_threads))
        so.use_per_session_threads = False
        return so, "global pool ({} intra)".format(pool.intra_threads)
    if threads is None:
        if pool is not None:
            threads = pool.intra_threads
        else:
            from mess_edge.runtime.device import physical_cores
            threads = physical_cores()
    so.intra_op_num_threads = int(threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return so, "own pool ({} intra, spinning {})".format(threads, "on" if spinning else "off")


class OrtRunner(Runner):
    """Runs one ONNX graph with ONNX Runtime.

    ``model``: path or serialized bytes. ``providers``: short names, e.g. ("cpu",), ("cuda",), ("trt",).
    ``threads``/``spinning``: see session_options. ``infer`` takes and returns numpy arrays;
    ``infer_ortvalues`` takes numpy arrays or OrtValues and returns OrtValues so a chain of runners can
    pass features along without host round trips on GPU providers.
    """

    def __init__(self, model, providers=("cpu",), threads=None, spinning=False, level="all", name=None):
        if name is None:
            name = model if isinstance(model, str) else "<onnx bytes>"
        super(OrtRunner, self).__init__(name)
        self.model = model
        self.providers = tuple(providers)
        self.threads, self.spinning, self.level = threads, spinning, level
        self.threading = None  # description of the thread setup, filled on activation
        self.session = None

    def _activate(self):
        import onnxruntime as ort

        providers = resolve_providers(self.providers)
        so, self.threading = session_options(self.threads, self.spinning, self.level)
        try:
            self.session = ort.InferenceSession(self.model, so, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/NoSuchFile types
            raise MessError("onnxruntime could not load {} ({}: {}); expected a valid ONNX graph; try "
                            "re-exporting or rebuilding it".format(self.name, type(e).__name__,
                                                                   str(e).strip().splitlines()[0]))
        self._device = "cuda" if set(self.providers) & {"cuda", "trt"} else "cpu"
        self._binding = self.session.io_binding()
        self._out_values = None

    def _io_metadata(self):
        def meta(args):
            return [TensorMeta(a.name, tuple(d if isinstance(d, int) else None for d in a.shape),
                               np.dtype(_ORT_DTYPES[a.type])) for a in args]
        inputs, outputs = meta(self.session.get_inputs()), meta(self.session.get_outputs())
        self._out_names = [m.name for m in outputs]
        return inputs, outputs

    def _infer(self, feed):
        return dict(zip(self._out_names, self.session.run(self._out_names, feed)))

    def _deactivate(self):
        self.session = self._binding = self._out_values = None

    def _describe(self, value):
        import onnxruntime as ort

        if isinstance(value, ort.OrtValue):
            return tuple(value.shape()), np.dtype(_ORT_DTYPES[value.data_type()])
        return tuple(value.shape), value.dtype

    def ortvalue(self, array):
        """A numpy array copied to an OrtValue on this runner's device ("cpu" or "cuda")."""
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self._device, 0)

    def infer_ortvalues(self, feed, check_inputs=True):
        """Run with IOBinding. ``feed``: {input name: OrtValue or numpy array}; returns {output: OrtValue}.

        Outputs of static shape go to OrtValues allocated once on this runner's device: they are
        overwritten by the next call, so consume (or ``to_numpy``) them before running this runner again.
        """
        import onnxruntime as ort

        self._require_active("infer_ortvalues()")
        if check_inputs:
            self.check_feed(feed)
        b = self._binding
        keep = []  # bind_cpu_input keeps a pointer, not a reference: hold contiguous copies until the run
        for name, value in feed.items():
            if isinstance(value, ort.OrtValue):
                b.bind_ortvalue_input(name, value)
            else:
                keep.append(np.ascontiguousarray(value))
                b.bind_cpu_input(name, keep[-1])
        if self._out_values is None:
            self._bind_outputs()
        self.session.run_with_iobinding(b)
        values = self._out_values if self._out_values else b.get_outputs()
        return dict(zip(self._out_names, values))

    def _bind_outputs(self):
        import onnxruntime as ort

        metas = list(self._outputs.values())
        if all(None not in m.shape for m in metas):
            self._out_values = [ort.OrtValue.ortvalue_from_shape_and_type(list(m.shape), m.dtype.type,
                                                                          self._device, 0) for m in metas]
            for m, v in zip(metas, self._out_values):
                self._binding.bind_ortvalue_output(m.name, v)
        else:  # free output dims: let ORT allocate on every run
            self._out_values = []
            for m in metas:
                self._binding.bind_output(m.name, self._device)

    @staticmethod
    def to_numpy(value):
        """An OrtValue (or array) as a numpy array on the host."""
        return value.numpy() if hasattr(value, "numpy") else np.asarray(value)
