"""The two executors behind chain.Chain: graphs run by name, features kept where the backend keeps them.

A backend is built from (EngineSet, chain.Plan) and offers activate() / deactivate(), ``run(name, image=None)``
(a segment returns None, a head its image confidence as a float, the final graph its label map int32 [H, W])
and ``labels(producer)`` (the upsampled label map of an exit head's logits, int32 [H, W]). The image (float32
[1, 3, H, W]) is passed only to the first segment; every other input is wired to its producer's output.
TensorRT's backend also offers ``gpu_times()`` (per-stage CUDA-event times of the frame, which Chain reports
instead of host times) and ``input_buffer()`` (pinned memory the capture pool preprocesses into).
"""

import collections

import numpy as np

from mess_edge.errors import MessError


def make_backend(engines, plan):
    """The backend of ``engines`` (OrtBackend or TrtBackend), inactive, for ``plan``."""
    return (OrtBackend if engines.backend == "ort" else TrtBackend)(engines, plan)


def _fused_stretches(engines, plan):
    """{graph that runs a stretch: (fused model bytes, its feature input, producer or None, folded segments)}.

    Segments are cut only after an exit point some selected exit reads; the stretch after the last such
    point is folded into the final graph. A stretch of one graph is left as it is.
    """
    from mess_edge.runtime.fuse import backbone_stretches, fuse_graphs

    names = plan.segments + ["final"]
    out = {}
    for first, last in backbone_stretches(len(plan.segments), [x.exit for x in plan.exits]):
        if first == last:
            continue
        try:
            model, first_input = fuse_graphs(engines, names[first:last + 1])
        except MessError:
            continue  # Fusing is an optimisation: run this stretch unfused, where a broken engine fails by name.
        out[names[last]] = (model, first_input, None if first == 0 else names[first - 1], names[first:last])
    return out


def _engine_failed(name, e):
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return MessError("engine '{}' failed ({}: {}); expected it to run on the frame; try mess-edge build again, "
                     "or mess-edge profile to test the engine alone".format(name, type(e).__name__, first))


class OrtBackend(object):
    """ONNX Runtime: each graph's outputs stay in OrtValues (IOBinding) that feed the next graph.

    With ``fuse`` (the default) every stretch of segments between selected exits runs as one fused graph
    (mess_edge.runtime.fuse): a segment whose feature no exit reads does nothing when run, and the next
    segment's (or the final graph's) fused graph starts from the last feature that was read.
    """

    def __init__(self, engines, plan, fuse=True):
        self.plan = plan
        self.inputs = {}  # graph -> {input name: producer graph} for features
        for k, name in enumerate(plan.segments[1:]):
            self.inputs[name] = {"feat_in": plan.segments[k]}
        for x in plan.exits:
            self.inputs[x.graph] = {"feat": plan.segments[x.exit]}
        self.inputs["final"] = {"feat": plan.segments[-1]}
        self.skip = set()  # segments folded into the next fused graph
        self.runners = collections.OrderedDict()
        fused = _fused_stretches(engines, plan) if fuse else {}
        for _, _, _, folded in fused.values():
            self.skip.update(folded)
        for n in plan.graphs():
            if n in self.skip:
                continue
            if n in fused:
                model, first_input, source, folded = fused[n]
                from mess_edge.runtime.ort_runner import OrtRunner

                self.runners[n] = OrtRunner(model, providers=engines.sidecar["providers"], name=n + " (fused)")
                self.inputs[n] = {} if source is None else {first_input: source}
            else:
                self.runners[n] = engines.runner(n)

    def activate(self):
        try:
            for r in self.runners.values():
                r.activate()
        except BaseException:
            self.deactivate()
            raise
        th = np.array([self.plan.th_pix], np.float32)
        self.th = {x.graph: self.runners[x.graph].ortvalue(th) for x in self.plan.exits}
        self.out, self.checked, self.image = {}, set(), None

    def deactivate(self):
        for r in reversed(list(self.runners.values())):
            if r.is_active:
                r.deactivate()

    def _call(self, name, feed):
        runner = self.runners[name]
        try:
            self.out[name] = runner.infer_ortvalues(feed, check_inputs=name not in self.checked)
        except MessError:
            raise
        except Exception as e:  # onnxruntime's own error types
            raise _engine_failed(name, e)
        self.checked.add(name)  # the first call checks the feed; later ones reuse the same buffers
        return self.out[name]

    def run(self, name, image=None):
        """Run graph ``name``; return what comes to the host: a head's confidence (one float), the final
        graph's label map (int32 [H, W]), nothing for a segment."""
        if image is not None:
            self.image = image  # read by the first graph that runs: segment_0, or the fused stretch it starts
        if name in self.skip:
            return None
        sources = self.inputs.get(name)
        if sources:
            feed = {inp: self.out[src]["feat"] for inp, src in sources.items()}
        else:
            feed = {"image": self.image}
        if name in self.th:
            feed["th_pix"] = self.th[name]
        out = self._call(name, feed)
        if "labels" in out:
            return np.array(out["labels"].numpy()[0])  # a copy: numpy() views the buffer the next frame reuses
        return float(out["confidence"].numpy()[0]) if "confidence" in out else None

    def labels(self, producer):
        up = self._call(self.plan.upsample[producer], {"logits": self.out[producer]["logits"]})
        return np.array(up["labels"].numpy()[0])


def wire_trt(engines, segments, heads=(), final=True, upsample=None, stream=None):
    """Activated TrtRunners of a chain on one stream, each input reading its producer's device buffer: the one
    wiring ``run`` (TrtBackend), ``bench`` and ``profile`` execute, so the table times what the chain runs.

    ``segments``: segment graph names in order; ``heads``: {head graph: its exit point index}; ``final``: add the
    final graph (reads the last segment); ``upsample``: {producer head: upsample graph}, each loaded once per
    producer and wired to its logits (TensorRT addresses are fixed per context). Host copies back: a head's
    confidence, the final / upsample labels, nothing for segments. Returns (OrderedDict key -> runner, stream);
    keys are graph names, "up:<producer>" for upsamples. On failure every runner started is deactivated.
    """
    from mess_edge.runtime.trt_runner import cuda_context

    if stream is None:
        with cuda_context(engines.device_index) as cuda:
            stream = cuda.Stream()  # non-default: the default stream adds device-wide syncs
    runners = collections.OrderedDict()
    try:
        def add(key, graph, host_outputs):
            runners[key] = engines.runner(graph, host_outputs=host_outputs, stream=stream).activate()

        for name in segments:
            add(name, name, ())
        for name in heads:
            add(name, name, ("confidence",))
        if final:
            add("final", "final", ("labels",))
        for producer, up in (upsample or {}).items():
            add("up:" + producer, up, ("labels",))
        wires = [(s, "feat_in", p, "feat") for p, s in zip(segments, segments[1:])]
        wires += [(h, "feat", segments[k], "feat") for h, k in heads.items()]
        wires += [("final", "feat", segments[-1], "feat")] if final else []
        wires += [("up:" + p, "logits", p, "logits") for p in (upsample or {})]
        for dst, inp, src, out in wires:
            runners[dst].use_device_input(inp, runners[src].device_tensor(out))
    except BaseException:
        for r in reversed(list(runners.values())):
            r.deactivate()
        raise
    return runners, stream


class TrtBackend(object):
    """TensorRT: one stream, every stage enqueued back to back; the host waits only where it reads (an exit's
    confidence, the label map of the exit taken or of the final graph). Stage times come from CUDA events around
    each engine (``gpu_times``), since host time around an enqueue measures nothing."""

    def __init__(self, engines, plan):
        self.engines, self.plan, self.runners = engines, plan, collections.OrderedDict()

    def activate(self):
        plan = self.plan
        self.runners, self.stream = wire_trt(self.engines, plan.segments, {x.graph: x.exit for x in plan.exits},
                                             True, plan.upsample)
        self.th = np.array([plan.th_pix], np.float32)
        self.ran = []  # stage keys enqueued in the current frame, for gpu_times
        self.th_fed = set()

    def input_buffer(self):
        """A pinned host buffer for the image (float32 [1, 3, H, W]) that run() copies to the GPU as it is."""
        return self.runners[self.plan.segments[0]].pinned_input("image")

    def deactivate(self):
        for r in reversed(list(self.runners.values())):
            if r.is_active:
                r.deactivate()
        self.runners = collections.OrderedDict()

    def _enqueue(self, key, feed, wait):
        runner = self.runners[key]
        try:
            runner.enqueue(feed, check_inputs=False)
            if wait:
                runner.synchronize()  # the host reads this stage's output now
        except MessError:
            raise
        except Exception as e:  # pycuda's LogicError / MemoryError ...
            raise _engine_failed(runner.name, e)
        self.ran.append(key)
        return runner

    def run(self, name, image=None):
        if image is not None:
            self.ran = []  # a new frame starts at the first segment
            self._enqueue(name, {"image": image}, wait=False)
            return None
        if name in self.plan.segments:
            self._enqueue(name, {}, wait=False)  # queued behind the previous stage: no host sync
            return None
        if name == "final":
            return np.array(self._enqueue(name, {}, wait=True).host_output("labels")[0])
        # th_pix is constant: copied on a head's first run only, its device buffer keeps it
        feed = {} if name in self.th_fed else {"th_pix": self.th}
        self.th_fed.add(name)
        return float(self._enqueue(name, feed, wait=True).host_output("confidence")[0])

    def labels(self, producer):
        return np.array(self._enqueue("up:" + producer, {}, wait=True).host_output("labels")[0])

    def gpu_times(self):
        """{stage graph name: GPU ms from its CUDA events} of the stages of the current frame."""
        names = {"up:" + p: up for p, up in self.plan.upsample.items()}
        return collections.OrderedDict((names.get(k, k), self.runners[k].gpu_ms()) for k in self.ran)
