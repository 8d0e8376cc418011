"""The ``Runner`` interface every backend implements (after Polygraphy's runners).

A runner owns one graph (an ONNX Runtime session or a TensorRT engine). ``activate`` loads it, ``infer``
runs it on a dict of named arrays, ``deactivate`` frees it; a runner is also a context manager. The base
class checks the runner's state and every input's name, shape and dtype, so the backends only fill in
``_activate``, ``_infer``, ``_deactivate`` and ``_io_metadata``.
"""

import collections
import collections.abc

from mess_edge.errors import MessError

TensorMeta = collections.namedtuple("TensorMeta", ["name", "shape", "dtype"])
TensorMeta.__doc__ = """One graph input or output: ``shape`` a tuple of ints (None for a free dimension),
``dtype`` a numpy dtype."""


def _fmt_shape(shape):
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class Runner(object):
    """Base class: state and input checks; subclasses implement the four underscore methods.

    Subclass contract:
      ``_activate()``             load the graph / allocate buffers.
      ``_io_metadata()``          -> (inputs, outputs): two lists of TensorMeta, in the graph's order.
      ``_infer(feed)``            run on a validated feed, return {output name: numpy array}.
      ``_deactivate()``           free what ``_activate`` took.
    """

    def __init__(self, name):
        self.name = name
        self.is_active = False
        self._inputs = None
        self._outputs = None

    # -- state ----------------------------------------------------------------------------------------
    def activate(self):
        if self.is_active:
            raise MessError("runner '{}' is already active; got a second activate(); expected one activate() "
                            "per deactivate(); try `with runner:` around the work".format(self.name))
        self._activate()
        try:
            inputs, outputs = self._io_metadata()
        except BaseException:
            self._deactivate()
            raise
        self._inputs = collections.OrderedDict((m.name, m) for m in inputs)
        self._outputs = collections.OrderedDict((m.name, m) for m in outputs)
        self.is_active = True
        return self

    def deactivate(self):
        if not self.is_active:
            raise MessError("runner '{}' is not active; got deactivate() before activate(); "
                            "try `with runner:`".format(self.name))
        self.is_active = False
        self._deactivate()

    def __enter__(self):
        return self.activate()

    def __exit__(self, exc_type, exc, tb):
        if self.is_active:
            self.deactivate()

    def _require_active(self, what):
        if not self.is_active:
            raise MessError("runner '{}' is not active; got {} before activate(); try `with runner:` "
                            "or runner.activate() first".format(self.name, what))

    # -- metadata -------------------------------------------------------------------------------------
    @property
    def input_metadata(self):
        """OrderedDict input name -> TensorMeta (graph order). Needs an active runner."""
        self._require_active("input_metadata")
        return self._inputs

    @property
    def output_metadata(self):
        """OrderedDict output name -> TensorMeta (graph order). Needs an active runner."""
        self._require_active("output_metadata")
        return self._outputs

    # -- running --------------------------------------------------------------------------------------
    def infer(self, feed, check_inputs=True):
        """Run the graph once. ``feed``: {input name: array of the declared shape and dtype}.

        Returns {output name: numpy array}. ``check_inputs=False`` skips the checks (hot loops that
        already validated their buffers).
        """
        self._require_active("infer()")
        if check_inputs:
            self.check_feed(feed)
        return self._infer(feed)

    def _describe(self, value):
        """(shape tuple, numpy dtype) of one fed value; backends override for their own value types."""
        return tuple(value.shape), value.dtype

    def _feed_names(self):
        """Inputs a feed must name; a backend whose inputs can be wired to device buffers returns fewer."""
        return list(self._inputs)

    def check_feed(self, feed, required=None):
        """Raise MessError unless ``feed`` names exactly the ``required`` inputs (default: all inputs not
        wired elsewhere) with the declared shapes and dtypes."""
        if not isinstance(feed, collections.abc.Mapping):
            raise MessError("runner '{}' got a feed of type {}; expected a dict of input name -> array"
                            .format(self.name, type(feed).__name__))
        expected = self._feed_names() if required is None else list(required)
        missing = [n for n in expected if n not in feed]
        extra = [n for n in feed if n not in expected]
        if missing or extra:
            raise MessError("runner '{}' got inputs {}; expected {} (missing {}, unexpected {}); "
                            "try a feed with exactly the expected names".format(
                                self.name, sorted(feed), expected, missing, extra))
        for name in expected:
            meta = self._inputs[name]
            try:
                shape, dtype = self._describe(feed[name])
            except AttributeError:
                raise MessError("runner '{}' got a {} for input '{}'; expected an array of shape {} and "
                                "dtype {}".format(self.name, type(feed[name]).__name__, name,
                                                 _fmt_shape(meta.shape), meta.dtype))
            fits = len(shape) == len(meta.shape) and all(
                want is None or want == got for want, got in zip(meta.shape, shape))
            if not fits:
                raise MessError("runner '{}' got shape {} for input '{}'; expected {}; try resizing or "
                                "reshaping the input".format(self.name, _fmt_shape(shape), name,
                                                            _fmt_shape(meta.shape)))
            if dtype != meta.dtype:
                raise MessError("runner '{}' got dtype {} for input '{}'; expected {}; try "
                                "x.astype(numpy.{})".format(self.name, dtype, name, meta.dtype, meta.dtype))

    # -- backend hooks --------------------------------------------------------------------------------
    def _activate(self):
        raise NotImplementedError

    def _io_metadata(self):
        raise NotImplementedError

    def _infer(self, feed):
        raise NotImplementedError

    def _deactivate(self):
        raise NotImplementedError
