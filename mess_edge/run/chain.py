"""The early-exit chain (paper secs. 5.1-5.2 on the device): an instance.json run over an engine folder.

    with Chain(load_engines(dir), load_instance(path)) as chain:
        result = chain.run(image)            # image float32 [1, 3, H, W], preprocessed
        result.labels, result.exit, result.confidence, result.times_ms

Segments run in order and their features stay where the backend keeps them: ONNX Runtime OrtValues bound
with IOBinding (on the GPU with the CUDA/TensorRT providers), TensorRT device buffers wired from one engine's
output to the next engine's input. Per early exit only the image confidence (one float) comes to the host,
and the label map only for the exit taken: its upsample graph runs once, after the decision. The final
graph (last segment, final head and upsample in one, docs/artifacts.md) hands over its label map directly.
The two backends live in chain_backends; this module holds the decisions.

Settings (instance "setting"): final-only (segments, final); budgeted (segments to the one exit, its head,
its upsample); anytime (exits in order while the next output is predicted to land before ``deadline_ms``, then
the final exit; the newest output wins); input-dependent (the first exit whose confidence >= its th_img,
else the final exit). ``ReferenceChain`` is the plain version the tests hold ``Chain`` to: numpy in and out,
every graph run on every frame, the decision made afterwards.
"""

import collections
import time

import numpy as np

from mess_edge.artifacts import read_json
from mess_edge.confidence import DEFAULT_TH_PIX
from mess_edge.errors import MessError
from mess_edge.run.chain_backends import make_backend
from mess_edge.schema import check_instance

INSTANCE_FORMAT = "mess-edge-instance/1"
SETTINGS = ("final-only", "budgeted", "anytime", "input-dependent")

FrameResult = collections.namedtuple("FrameResult", ["labels", "exit", "graph", "confidence", "times_ms", "declined"],
                                     defaults=(None,))
FrameResult.__doc__ = """One frame through the chain: ``labels`` int32 [H, W] (the manifest's input_hw), ``exit``
the exit point index taken (int) or "final", ``graph`` the head graph taken (or "final"), ``confidence`` its
image confidence (float in [0, 1]; None for the final exit, whose graph computes none), ``times_ms``
OrderedDict graph name -> ms, in run order, plus "total"; ``declined`` (input-dependent frames that went on to
the final exit): (exit, confidence) of the last early exit, whose confidence fell short of its threshold, else
None."""

Exit = collections.namedtuple("Exit", ["exit", "graph", "th_img"])


def load_instance(path):
    """instance.json -> dict, refusing other formats and malformed fields (schema.check_instance)."""
    inst = read_json(path, "instance")
    if not isinstance(inst, dict) or inst.get("format") != INSTANCE_FORMAT:
        raise MessError("got {} with format {!r}; expected {!r}; try mess-edge search ... --out {}".format(
            path, inst.get("format") if isinstance(inst, dict) else None, INSTANCE_FORMAT, path))
    return check_instance(inst, path, SETTINGS)


class Plan(object):
    """An instance checked against an EngineSet: which graphs run, in what order, wired how."""

    def __init__(self, engines, instance):
        if instance.get("format") != INSTANCE_FORMAT:
            raise MessError("got an instance of format {!r}; expected {!r}; try mess-edge search".format(
                instance.get("format"), INSTANCE_FORMAT))
        setting = instance.get("setting")
        if setting not in SETTINGS:
            raise MessError("got instance setting {!r}; expected one of {}".format(setting, ", ".join(SETTINGS)))
        _check_provenance(engines, instance)
        self.setting, self.final = setting, bool(instance.get("final", True))
        self.expected_ms = expected_ms(instance)
        th_pix = instance.get("th_pix")
        self.th_pix = DEFAULT_TH_PIX if th_pix is None else float(th_pix)
        self.segments = [g["name"] for g in engines.by_role("segment")]
        heads = {g["name"]: g for g in engines.by_role("head")}
        self.exits = []
        for e in instance.get("exits", []):
            g = heads.get(e.get("graph"))
            if g is None or g["exit"] != e["exit"] or g["exit"] >= len(self.segments):
                raise MessError("got instance exit {} (graph {!r}) absent from the engines in {}; expected one of "
                                "{}; try an instance searched on this export's manifest".format(
                                    e.get("exit"), e.get("graph"), engines.dir, sorted(heads)))
            th_img = e.get("th_img")
            self.exits.append(Exit(int(e["exit"]), g["name"], None if th_img is None else float(th_img)))
        if [x.exit for x in self.exits] != sorted(x.exit for x in self.exits):
            raise MessError("got instance exits at points {}; expected backbone order".format(
                [x.exit for x in self.exits]))
        if setting == "input-dependent" and instance.get("policy", "edge") != "edge":
            raise MessError("got an input-dependent instance searched with policy {!r}; the exported heads compute "
                            "the edge-enhanced confidence (eqs. 7-9); try mess-edge search --policy edge".format(
                                instance.get("policy")))
        if setting == "input-dependent" and any(x.th_img is None for x in self.exits):
            raise MessError("got an input-dependent instance with an exit lacking th_img; expected a threshold "
                            "per exit; try re-running mess-edge search")
        if not self.final and len(self.exits) != 1:
            raise MessError("got an instance without the final exit and {} early exits; expected exactly one "
                            "(budgeted)".format(len(self.exits)))
        if setting == "budgeted" and self.final:
            self.exits = []  # a budgeted instance that keeps the final exit is the final-only network
        if setting == "final-only":
            self.exits, self.final = [], True
        finals = engines.by_role("final")
        if not finals or [o["name"] for o in finals[0]["outputs"]] != ["labels"]:
            raise MessError("engines in {} have no 'final' graph ending in 'labels'; expected the current export "
                            "(final = last segment + final head + upsample); try mess-edge export, then mess-edge "
                            "build".format(engines.dir))
        self.upsample = {x.graph: _upsample_for(engines, x.graph) for x in self.exits}

    def graphs(self):
        """Every graph name the chain runs (each once), upsample graphs last."""
        names = self.segments + [x.graph for x in self.exits] + ["final"]
        return names + sorted(set(self.upsample.values()))


def expected_ms(instance):
    """The search's estimate of an instance's latency per frame (ms), or None when it was priced in MACs."""
    cost = instance.get("expected_cost")
    return float(cost) if instance.get("cost_unit") == "ms" and isinstance(cost, (int, float)) else None


def _check_provenance(engines, instance):
    """The instance must come from the export the engines were built from (manifest and checkpoint sha)."""
    pairs = (("manifest_sha256", engines.sidecar.get("manifest_sha256"), "manifest"),
             ("checkpoint_sha256", engines.manifest.get("checkpoint_sha256"), "checkpoint"))
    for key, have, what in pairs:
        want = instance.get(key)
        if want and have and want != have:
            raise MessError("got an instance searched for {} {} but engines in {} built from {} {}; expected the "
                            "same export; try mess-edge search --manifest {}/manifest.json, or rebuild the engines "
                            "from the instance's export".format(what, want[:12], engines.dir, what, have[:12],
                                                                engines.dir))


def _upsample_for(engines, producer):
    shape = [o for o in engines.graph(producer)["outputs"] if o["name"] == "logits"][0]["shape"]
    for g in engines.by_role("upsample"):
        if g["inputs"][0]["shape"] == shape:
            return g["name"]
    raise MessError("engines in {} have no upsample graph for {}'s logits {}; expected upsample_{}x{}; try "
                    "re-exporting".format(engines.dir, producer, shape, shape[-2], shape[-1]))


class Chain(object):
    """The early-exit executor over an EngineSet (ORT or TensorRT); a context manager like a Runner.

    ``deadline_ms`` (anytime only; None: no deadline): an exit is attempted only when the time so far plus its
    stages' running mean times (and the upsample's) fits; the first exit always runs.
    """

    def __init__(self, engines, instance, deadline_ms=None):
        self.engines, self.plan, self.deadline_ms = engines, Plan(engines, instance), deadline_ms
        self.backend = make_backend(engines, self.plan)
        self._mean_ms = {}  # graph -> running mean time, for the anytime deadline

    def __enter__(self):
        self.backend.activate()
        return self

    def __exit__(self, *exc):
        self.backend.deactivate()

    def run(self, image):
        """FrameResult of one preprocessed image (float32 [1, 3, H, W]) under the instance's setting."""
        plan, times = self.plan, collections.OrderedDict()
        t0 = time.perf_counter()
        done, taken = 0, None
        for j, x in enumerate(plan.exits):
            done = self._segments(image, done, x.exit + 1, times)
            taken = (x.exit, x.graph, self._stage(x.graph, times))
            if plan.setting == "input-dependent" and taken[2] >= x.th_img:
                break
            if plan.setting == "anytime" and not self._fits(t0, j + 1, done):
                break
        else:
            if plan.final:
                declined = taken[::2] if taken is not None and plan.setting == "input-dependent" else None
                return self._final(image, done, times, t0, declined)
        labels = self._timed(plan.upsample[taken[1]], times, lambda: self.backend.labels(taken[1]))
        times["total"] = (time.perf_counter() - t0) * 1e3
        return FrameResult(labels, taken[0], taken[1], taken[2], self._device_times(times))

    def run_final_only(self, image):
        """FrameResult of the final-only path (all segments, then final): the baseline."""
        return self._final(image, 0, collections.OrderedDict(), time.perf_counter())

    def _final(self, image, done, times, t0, declined=None):
        self._segments(image, done, len(self.plan.segments), times)
        labels = self._stage("final", times)
        times["total"] = (time.perf_counter() - t0) * 1e3
        return FrameResult(labels, "final", "final", None, self._device_times(times), declined)

    def _device_times(self, times):
        """Stage times as the device measured them where the backend can (TensorRT: CUDA events; stages are
        queued without waiting, so host time around one is meaningless); "total" stays host wall clock."""
        gpu = getattr(self.backend, "gpu_times", None)
        if gpu is not None:
            times.update(gpu())
        return times

    def warm_up(self, image, passes=2):
        """Run every graph of the plan ``passes`` times (first-run allocations, caches); the last pass seeds
        the stage times the anytime deadline predicts with."""
        for i in range(passes):
            if i == passes - 1:
                self._mean_ms.clear()
            times = collections.OrderedDict()
            self._segments(image, 0, len(self.plan.segments), times)
            for x in self.plan.exits:
                self._stage(x.graph, times)
                self._timed(self.plan.upsample[x.graph], times, lambda: self.backend.labels(x.graph))
            self._stage("final", times)

    def _segments(self, image, start, stop, times):
        for k in range(start, stop):
            self._stage(self.plan.segments[k], times, image if k == 0 else None)
        return max(start, stop)

    def _stage(self, name, times, image=None):
        return self._timed(name, times, lambda: self.backend.run(name, image))

    def _timed(self, name, times, fn):
        t = time.perf_counter()
        out = fn()
        ms = times[name] = (time.perf_counter() - t) * 1e3
        mean = self._mean_ms.get(name)
        self._mean_ms[name] = ms if mean is None else 0.9 * mean + 0.1 * ms
        return out

    def _fits(self, t0, j, done):
        """Anytime: does the output after exit j-1 (exit j, or the final one) fit before the deadline?"""
        if self.deadline_ms is None:
            return True
        plan = self.plan
        stop, head = ((plan.exits[j].exit + 1, plan.exits[j].graph) if j < len(plan.exits)
                      else (len(plan.segments), "final"))
        if head == "final" and not plan.final:
            return False
        ahead = [plan.segments[k] for k in range(done, stop)] + [head, plan.upsample.get(head)]
        predicted = sum(self._mean_ms.get(n, 0.0) for n in ahead)
        return (time.perf_counter() - t0) * 1e3 + predicted <= self.deadline_ms


class ReferenceChain(object):
    """The plain chain: numpy in and out (Runner.infer), every graph of the instance on every frame, every
    output upsampled, the exit chosen afterwards. Slow and obvious; Chain must give the same outputs."""

    def __init__(self, engines, instance):
        self.plan = Plan(engines, instance)
        self.runners = collections.OrderedDict((n, engines.runner(n)) for n in self.plan.graphs())

    def __enter__(self):
        for r in self.runners.values():
            r.activate()
        return self

    def __exit__(self, *exc):
        for r in self.runners.values():
            if r.is_active:
                r.deactivate()

    def outputs(self, image):
        """[(exit, graph, confidence, labels int32 [H, W])] for every exit of the plan in order, then the final
        exit (confidence None)."""
        plan, th = self.plan, np.array([self.plan.th_pix], np.float32)
        feats, x = [], image
        for k, name in enumerate(plan.segments):
            x = self.runners[name].infer({"image" if k == 0 else "feat_in": x})["feat"]
            feats.append(x)
        outs = []
        for x in plan.exits:
            o = self.runners[x.graph].infer({"feat": feats[x.exit], "th_pix": th})
            labels = self.runners[plan.upsample[x.graph]].infer({"logits": o["logits"]})["labels"][0]
            outs.append((x.exit, x.graph, float(o["confidence"][0]), labels))
        outs.append(("final", "final", None, self.runners["final"].infer({"feat": feats[-1]})["labels"][0]))
        return outs

    def run(self, image, anytime_outputs=None):
        """FrameResult chosen after the fact (times_ms empty). ``anytime_outputs``: how many outputs the
        deadline allowed (anytime; default all)."""
        plan, outs = self.plan, self.outputs(image)
        if not plan.final:
            outs = outs[:-1]
        pick = outs[-1]
        if plan.setting == "input-dependent":
            pick = next((o for o, x in zip(outs, plan.exits) if o[2] >= x.th_img), outs[-1])
        elif plan.setting == "anytime" and anytime_outputs is not None:
            pick = outs[min(max(1, anytime_outputs), len(outs)) - 1]
        return FrameResult(pick[3], pick[0], pick[1], pick[2], collections.OrderedDict())
