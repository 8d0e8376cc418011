"""The two executors behind chain.Chain: graphs run by name, features kept where the backend keeps them.

A backend is built from (EngineSet, chain.Plan) and offers activate() / deactivate(), ``run(name, image=None)``
(a segment returns None, a head its image confidence as a float, the final graph its label map int32 [H, W])
and ``labels(producer)`` (the upsampled label map of an exit head's logits, int32 [H, W]). The image (float32
[1, 3, H, W]) is passed only to the first segment; every other input is wired to its producer's output.
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


class TrtBackend(object):
    """TensorRT: one stream; each input reads its producer's device buffer; each upsample engine is loaded
    once per producer, wired to that producer's logits (TensorRT addresses are fixed per context)."""

    def __init__(self, engines, plan):
        self.engines, self.plan, self.runners = engines, plan, collections.OrderedDict()

    def activate(self):
        from mess_edge.runtime.trt_runner import cuda_context

        plan = self.plan
        with cuda_context(0) as cuda:
            self.stream = cuda.Stream()
        try:
            for name in plan.segments:
                self._add(name, name, ())
            for x in plan.exits:
                self._add(x.graph, x.graph, ("confidence",))
            self._add("final", "final", ("labels",))
            for producer, up in plan.upsample.items():
                self._add("up:" + producer, up, ("labels",))
            wires = [(s, "feat_in", p) for p, s in zip(plan.segments, plan.segments[1:])]
            wires += [(x.graph, "feat", plan.segments[x.exit]) for x in plan.exits]
            wires += [("final", "feat", plan.segments[-1])]
            wires += [("up:" + p, "logits", p) for p in plan.upsample]
            for dst, inp, src in wires:
                out = "logits" if dst.startswith("up:") else "feat"
                self.runners[dst].use_device_input(inp, self.runners[src].device_tensor(out))
        except BaseException:
            self.deactivate()
            raise
        self.th = np.array([plan.th_pix], np.float32)

    def _add(self, key, graph, host_outputs):
        r = self.engines.runner(graph, host_outputs=host_outputs, stream=self.stream)
        self.runners[key] = r.activate()

    def deactivate(self):
        for r in reversed(list(self.runners.values())):
            if r.is_active:
                r.deactivate()
        self.runners = collections.OrderedDict()

    def _call(self, key, feed):
        runner = self.runners[key]
        try:
            runner.enqueue(feed)
            runner.synchronize()  # per stage: the stage times are the GPU's, and the confidence is needed now
        except MessError:
            raise
        except Exception as e:  # pycuda's LogicError / MemoryError ...
            raise _engine_failed(runner.name, e)
        return runner

    def run(self, name, image=None):
        if image is not None:
            self._call(name, {"image": image})
            return None
        if name in self.plan.segments:
            self._call(name, {})
            return None
        if name == "final":
            return np.array(self._call(name, {}).host_output("labels")[0])
        return float(self._call(name, {"th_pix": self.th}).host_output("confidence")[0])

    def labels(self, producer):
        return np.array(self._call("up:" + producer, {}).host_output("labels")[0])
