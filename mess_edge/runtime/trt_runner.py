"""TensorRT backend: ``TrtRunner`` (tensorrt + pycuda), the INT8 calibrator, and their shared helpers.

One code path for TensorRT 8.5 (JetPack 5, Python 3.8), 8.6 (JetPack 6.0, GTX 1080 Ti), 10.x (JetPack
6.1+) and 11.x (desktops: strongly typed builds only): the name-based I/O API and ``execute_async_v3``, which
all of them have (TENSORRT.md sec. 3.1, 1.4). Where the releases differ the code branches on
``trt_major(trt)``, and tests/runtime/test_trt_backend.py checks every tensorrt attribute used here against
the API lists of those releases (tests/fixtures/trt_api.json). A major above NEWEST_MAJOR is refused.

CUDA: pycuda on the device's *primary* context (what pycuda.autoprimaryctx retains), pushed around each
block of work and popped after, so TensorRT, pycuda and any other runtime-API user share one context and
any thread may drive a runner (TENSORRT.md sec. 4.3). tensorrt and pycuda are imported inside functions.
"""

import collections
import contextlib
import os

import numpy as np

from mess_edge.artifacts import write_bytes_atomic
from mess_edge.errors import MessError
from mess_edge.runtime.runner import Runner, TensorMeta

DeviceTensor = collections.namedtuple("DeviceTensor", ["name", "shape", "dtype", "ptr", "nbytes"])
DeviceTensor.__doc__ = """A tensor in GPU memory: ``ptr`` the device address (int), ``nbytes`` its size."""


NEWEST_MAJOR = 11  # the newest TensorRT major whose Python API this code is checked against (trt_api.json)


def check_trt_version(version):
    """MessError unless ``version`` ("8.5.2.2", "11.4.0") is a TensorRT release this code supports."""
    try:
        major, minor = (int(v) for v in str(version).split(".")[:2])
    except ValueError:
        raise MessError("got TensorRT version {!r}; expected MAJOR.MINOR...; try reinstalling TensorRT".format(version))
    if (major, minor) < (8, 5):
        raise MessError("got TensorRT {}; expected >= 8.5 (the name-based I/O API); try JetPack 5 or newer, "
                        "or --backend ort".format(version))
    if major > NEWEST_MAJOR:
        raise MessError("got TensorRT {}; expected 8.5 to {}.x, the releases whose API this code is checked "
                        "against; try `pip install 'tensorrt<{}'` on a desktop, or --backend ort".format(
                            version, NEWEST_MAJOR, NEWEST_MAJOR + 1))


def import_trt():
    """The tensorrt module, or a MessError saying how to get it; refuses releases before 8.5 and after 11.x."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MessError("got --backend trt but the tensorrt Python package is not importable; expected "
                        "TensorRT >= 8.5 (JetPack: apt python3-libnvinfer, and a venv made with "
                        "--system-site-packages); try --backend ort")
    check_trt_version(trt.__version__)
    return trt


def import_cuda():
    """pycuda.driver, or a MessError saying how to get it."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise MessError("got --backend trt but pycuda is not importable; expected pycuda >= 2021.1; try "
                        "`pip install pycuda` with /usr/local/cuda/bin on PATH")
    return cuda


def trt_major(trt):
    """TensorRT's major version: the version guard that tests/test_trt_backend.py recognises."""
    return int(trt.__version__.split(".")[0])


_LOGGER = []


def trt_logger(trt):
    """The process's one TensorRT logger (warnings and errors go to stderr)."""
    if not _LOGGER:
        _LOGGER.append(trt.Logger(trt.Logger.WARNING))
    return _LOGGER[0]


def np_dtype(trt, dt):
    """numpy dtype of a trt.DataType. Written out rather than trt.nptype: 8.x has no INT64 (int64 ONNX
    tensors become INT32 there, TENSORRT.md sec. 3.1), 10.x has."""
    table = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT8: np.int8,
             trt.DataType.INT32: np.int32, trt.DataType.BOOL: np.bool_, trt.DataType.UINT8: np.uint8}
    if trt_major(trt) >= 10:
        table[trt.DataType.INT64] = np.int64
    if dt not in table:
        raise MessError("got a TensorRT I/O tensor of type {}; expected one of {}; try exporting that tensor "
                        "as float32 or int32".format(dt, sorted(str(k) for k in table)))
    return np.dtype(table[dt])


_PRIMARY = {}


@contextlib.contextmanager
def cuda_context(device_index=0):
    """Make the device's primary context current for the block (push), then pop it; yields pycuda.driver."""
    cuda = import_cuda()
    ctx = _PRIMARY.get(device_index)
    if ctx is None:
        cuda.init()
        ctx = _PRIMARY[device_index] = cuda.Device(device_index).retain_primary_context()
    ctx.push()
    try:
        yield cuda
    finally:
        cuda.Context.pop()


class TrtRunner(Runner):
    """Runs one serialized TensorRT plan.

    ``plan``: path or bytes. ``dla_core``: the DLA core a DLA plan runs on (set before deserialising).
    ``host_outputs``: outputs ``infer`` copies back (default all; a head may need only "confidence").
    ``stream``: a pycuda Stream to share with other runners (default: a new non-default stream).

    Device buffers are allocated once on activation. ``use_device_input(name, other.device_tensor(out))``
    makes an input read another runner's output buffer, so features never visit the host; such inputs
    drop out of the feed. Runners wired so must share a stream (or be synchronised between runs). Every
    unwired input must be in the first ``enqueue``'s feed (later ones may omit it: its device buffer keeps the
    last value); an input fed from ``pinned_input(name)``'s buffer is copied to the GPU from it directly.
    Each ``enqueue`` records CUDA events around the engine: ``gpu_ms()`` reads that time once the stream passed it.
    """

    def __init__(self, plan, name=None, device_index=0, dla_core=None, host_outputs=None, stream=None):
        if name is None:
            name = plan if isinstance(plan, str) else "<plan bytes>"
        super(TrtRunner, self).__init__(name)
        self.plan, self.device_index, self.dla_core = plan, device_index, dla_core
        self.host_outputs, self.stream = host_outputs, stream
        self._own_stream = stream is None
        self._own, self._host, self._tensors, self._pinned = {}, {}, {}, {}
        self._context = self._engine = self._runtime = self._events = None
        self._fed = set()

    def _activate(self):
        try:
            self._load()
        except BaseException:
            self._deactivate()  # frees whatever was allocated before the failure
            raise

    def _load(self):
        trt = import_trt()
        data = self.plan
        if isinstance(data, str):
            with open(data, "rb") as f:
                data = f.read()
        with cuda_context(self.device_index) as cuda:
            self._runtime = trt.Runtime(trt_logger(trt))
            if self.dla_core is not None:
                self._runtime.DLA_core = int(self.dla_core)  # must precede deserialisation
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise MessError("TensorRT could not deserialize {}; expected a plan built by TensorRT {} on "
                                "this GPU; try rebuilding it with mess-edge build".format(self.name, trt.__version__))
            self._context = self._engine.create_execution_context()
            if self.stream is None:
                self.stream = cuda.Stream()  # non-default: the default stream adds device-wide syncs
            self._wired, self._meta = set(), ([], [])
            for i in range(self._engine.num_io_tensors):
                name = self._engine.get_tensor_name(i)
                dims = self._engine.get_tensor_shape(name)
                shape = tuple(int(dims[k]) for k in range(len(dims)))
                if any(d < 0 for d in shape):
                    raise MessError("got dynamic shape {} for '{}' in {}; expected static shapes; try "
                                    "re-exporting with fixed input sizes".format(shape, name, self.name))
                dtype = np_dtype(trt, self._engine.get_tensor_dtype(name))
                nbytes = int(np.prod(shape)) * dtype.itemsize
                alloc = self._own[name] = cuda.mem_alloc(max(nbytes, 1))
                self._tensors[name] = DeviceTensor(name, shape, dtype, int(alloc), nbytes)
                self._context.set_tensor_address(name, int(alloc))
                is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                self._meta[0 if is_input else 1].append(TensorMeta(name, shape, dtype))
                if is_input or self.host_outputs is None or name in self.host_outputs:
                    self._host[name] = cuda.pagelocked_empty(shape, dtype)
            self._copy_back = [m.name for m in self._meta[1] if m.name in self._host]

    def _io_metadata(self):
        return self._meta

    def _feed_names(self):
        return [n for n in self._inputs if n not in self._wired]

    def device_tensor(self, name):
        """The DeviceTensor behind I/O tensor ``name`` (valid while this runner is active)."""
        self._require_active("device_tensor()")
        if name not in self._tensors:
            raise MessError("runner '{}' has no tensor '{}'; expected one of {}".format(
                self.name, name, sorted(self._tensors)))
        return self._tensors[name]

    def use_device_input(self, name, source):
        """Wire input ``name`` to ``source`` (a DeviceTensor, typically another runner's output)."""
        self._require_active("use_device_input()")
        meta = self._inputs.get(name)
        if meta is None or tuple(source.shape) != meta.shape or np.dtype(source.dtype) != meta.dtype:
            raise MessError("runner '{}' cannot read its input '{}' from '{}' {} {}; expected an input of that "
                            "name with shape {} and dtype {}".format(
                                self.name, name, source.name, source.shape, source.dtype,
                                meta.shape if meta else None, meta.dtype if meta else None))
        with cuda_context(self.device_index):
            self._context.set_tensor_address(name, int(source.ptr))
            own = self._own.pop(name, None)
            if own is not None:
                own.free()
        self._tensors[name] = source
        self._wired.add(name)

    def pinned_input(self, name):
        """A new page-locked host array for input ``name`` (its shape and dtype): fill it (the capture pool's
        Preprocessor writes into it) and pass it in the feed; it is copied to the GPU without a host copy. It
        stays valid while this runner is active; refill it only after the stream passed the copy (a host
        sync, e.g. reading an exit's confidence)."""
        self._require_active("pinned_input()")
        meta = self._inputs.get(name)
        if meta is None or name in self._wired:
            raise MessError("runner '{}' has no host-fed input '{}'; expected one of {}".format(
                self.name, name, self._feed_names()))
        with cuda_context(self.device_index) as cuda:
            buf = cuda.pagelocked_empty(meta.shape, meta.dtype)
        self._pinned[buf.__array_interface__["data"][0]] = buf
        return buf

    def _source(self, name, value):
        """The pinned host array the copy of input ``name`` reads: ``value`` itself when it is one of
        pinned_input's buffers, else the runner's own buffer after one host copy."""
        ptr = getattr(value, "__array_interface__", {}).get("data", (None,))[0]
        own = self._pinned.get(ptr)
        if own is not None and value.shape == own.shape and value.dtype == own.dtype:
            return value
        np.copyto(self._host[name], value, casting="no")
        return self._host[name]

    def enqueue(self, feed=None, host_outputs=None, check_inputs=True):
        """Queue host->device copies of ``feed``, the engine between two CUDA events, and device->host copies
        of ``host_outputs`` (default: this runner's host outputs) on the stream; returns without waiting.

        Every unwired input must have been fed once: the first enqueue without one is refused (uninitialised
        device memory would run silently)."""
        self._require_active("enqueue()")
        feed = {} if feed is None else feed
        if check_inputs:
            self.check_feed(feed, required=[n for n in self._feed_names() if n in feed] if feed else [])
        if len(self._fed) < len(self._feed_names()):
            missing = [n for n in self._feed_names() if n not in feed and n not in self._fed]
            if missing:
                raise MessError("runner '{}' got no value for input(s) {} on its first run; expected every input "
                                "that is not wired to another engine in the feed; try feeding {}".format(
                                    self.name, missing, missing))
            self._fed.update(n for n in feed if n in self._inputs)
        with cuda_context(self.device_index) as cuda:
            if self._events is None:
                self._events = (cuda.Event(), cuda.Event())
            for name, value in feed.items():
                cuda.memcpy_htod_async(self._tensors[name].ptr, self._source(name, value), self.stream)
            self._events[0].record(self.stream)
            if not self._context.execute_async_v3(self.stream.handle):
                raise MessError("TensorRT failed to run {}; see the TensorRT log above".format(self.name))
            self._events[1].record(self.stream)
            for name in (self._copy_back if host_outputs is None else host_outputs):
                cuda.memcpy_dtoh_async(self._host[name], self._tensors[name].ptr, self.stream)

    def gpu_ms(self):
        """GPU time (ms, CUDA events) of the engine in the last enqueue; waits for that event only."""
        self._require_active("gpu_ms()")
        with cuda_context(self.device_index):
            self._events[1].synchronize()
            return self._events[1].time_since(self._events[0])

    def synchronize(self):
        """Wait for everything queued on this runner's stream."""
        with cuda_context(self.device_index):
            self.stream.synchronize()

    def time_gpu_ms(self):
        """Run the engine once on its current device buffers (no host copies) between two CUDA events on
        the stream; wait, and return the GPU time in ms (trtexec's "GPU Compute Time")."""
        self.enqueue(host_outputs=(), check_inputs=False)
        return self.gpu_ms()

    def host_output(self, name):
        """The pinned host buffer of output ``name`` (valid after synchronize; overwritten by the next run)."""
        return self._host[name]

    def _infer(self, feed):
        self.enqueue(feed, check_inputs=False)
        self.synchronize()
        return {name: np.array(self._host[name]) for name in self._copy_back}

    def _deactivate(self):
        with cuda_context(self.device_index):
            for alloc in self._own.values():
                alloc.free()
            for arr in list(self._host.values()) + list(self._pinned.values()):
                free = getattr(arr.base, "free", None)
                if free is not None:
                    free()
            self._own, self._host, self._tensors, self._events, self._pinned = {}, {}, {}, None, {}
            self._fed = set()
            # the context before the engine, the engine before the runtime
            self._context = None
            self._engine = None
            self._runtime = None
            if self._own_stream:
                self.stream = None


def make_entropy_calibrator(trt, feeds, cache_path):
    """A trt.IInt8EntropyCalibrator2 over ``feeds`` (an iterable of {input name: array of batch 1}, read lazily:
    runtime/calib_data.py computes each image's features only when TensorRT asks for that batch).

    The calibration cache is read from / written to ``cache_path``, so a rebuild skips calibration (and, the
    feeds being lazy, the feature pass). Only 8.x / 10.x have the implicit calibrator; 11.x builds strongly
    typed graphs (Q/DQ from ``mess-edge quantize``). Call inside ``cuda_context``: batches are copied to device
    buffers allocated on the first batch.
    """
    cuda = import_cuda()
    if trt_major(trt) >= 11:
        raise MessError("got an implicit INT8 calibration on TensorRT {}; expected Q/DQ graphs (11.x has no "
                        "IInt8EntropyCalibrator2); try mess-edge quantize ONNX_DIR --precision int8 --calib-data "
                        "DATA --out Q_DIR".format(trt.__version__))
    else:
        class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                trt.IInt8EntropyCalibrator2.__init__(self)  # the binding needs the base __init__ called
                self.feeds, self.batches, self.buffers = feeds, None, {}

            def get_batch_size(self):
                return 1

            def get_batch(self, names):
                if self.batches is None:
                    self.batches = iter(self.feeds)
                feed = next(self.batches, None)
                if feed is None:
                    return None  # calibration set exhausted
                pointers = []
                for name in names:
                    host = np.ascontiguousarray(feed[name])
                    if name not in self.buffers:
                        self.buffers[name] = cuda.mem_alloc(host.nbytes)
                    cuda.memcpy_htod(self.buffers[name], host)
                    pointers.append(int(self.buffers[name]))
                return pointers

            def read_calibration_cache(self):
                if os.path.isfile(cache_path):
                    with open(cache_path, "rb") as f:
                        return f.read()
                return None

            def write_calibration_cache(self, cache):
                write_bytes_atomic(cache_path, memoryview(cache).tobytes())

        calibrator = EntropyCalibrator()
    return calibrator
