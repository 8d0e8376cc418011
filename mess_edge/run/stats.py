"""Statistics of one ``mess-edge run``: per-stage latency histograms in bounded memory, the exit histogram,
the final-only comparison, and the summary dict (format mess-edge-run-stats/2) with its printable lines.
"""

import collections
import math

from mess_edge.naming import histogram_text

STATS_FORMAT = "mess-edge-run-stats/2"


class LatencyHistogram(object):
    """A latency distribution in bounded memory (a camera may run for days): log-spaced bins from 1 us to
    100 s, each 0.5 % wide, plus exact n, mean, min and max. ``percentile(q)`` is the bin midpoint of the
    sample numpy's "inverted_cdf" percentile picks, clipped to [min, max]: within 0.5 % of it."""

    LO_MS, HI_MS, RATIO = 1e-3, 1e5, 1.005

    def __init__(self):
        self._log_ratio = math.log(self.RATIO)
        # a list, not a numpy array: add() runs on the loop's thread for every stage of every frame, and a
        # Python int increment is far cheaper than a numpy scalar one (add(): 1.0 -> 0.4 us)
        self.counts = [0] * (int(math.ceil(math.log(self.HI_MS / self.LO_MS) / self._log_ratio)) + 1)
        self.n, self.total, self.min, self.max = 0, 0.0, float("inf"), 0.0

    def add(self, ms):
        ms = float(ms)
        i = int(math.log(ms / self.LO_MS) / self._log_ratio) if ms > self.LO_MS else 0
        self.counts[i if i < len(self.counts) else -1] += 1
        self.n += 1
        self.total += ms
        if ms < self.min:
            self.min = ms
        if ms > self.max:
            self.max = ms

    def percentile(self, q):
        import numpy as np

        rank = max(1, int(math.ceil(q / 100.0 * self.n)))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        mid = self.LO_MS * self.RATIO ** (i + 0.5)
        return min(max(mid, self.min), self.max)

    def summary(self):
        if not self.n:
            return None
        return {"p50": self.percentile(50), "p90": self.percentile(90), "p99": self.percentile(99),
                "mean": self.total / self.n, "min": self.min, "max": self.max, "n": self.n}


class RunStats(object):
    """Per-stage latency histograms, the exit histogram and the final-only comparison of one run."""

    def __init__(self):
        self.latency = collections.OrderedDict()
        self.exits = collections.Counter()
        # final-only comparison, every K-th frame: the final-only path, the instance run again beside it (same
        # conditions), and the instance's own run of those frames (same content, normal conditions)
        self.frames, self.final_only_ms, self.paired_ms, self.sampled_ms = 0, [], [], []

    def add(self, stage, ms):
        if stage not in self.latency:
            self.latency[stage] = LatencyHistogram()
        self.latency[stage].add(ms)

    def frame(self, result, stage_ms):
        self.frames += 1
        self.exits[result.graph] += 1
        for name, ms in result.times_ms.items():
            self.add("inference" if name == "total" else name, ms)
        for name, ms in stage_ms.items():
            self.add(name, ms)

    def summary(self, capture, wall_s, presenter=None):
        """The summary dict; ``capture`` a capture.Capture, stopped; ``presenter`` a present.Presenter, closed,
        or None when nothing was presented (no output, no window)."""
        lat = collections.OrderedDict((k, h.summary()) for k, h in self.latency.items())
        if presenter is not None:
            lat.update((k, h.summary()) for k, h in presenter.latency.items() if h.n)
        mean_inf = lat["inference"]["mean"] if "inference" in lat else None
        fo = sum(self.final_only_ms) / len(self.final_only_ms) if self.final_only_ms else None
        paired = sum(self.paired_ms) / len(self.paired_ms) if self.paired_ms else None
        # How much slower the comparison's conditions are than the loop's (same frames, same content): the
        # final-only mean is rescaled by it so it can be set against the instance's mean over ALL frames. A
        # 20-frame paired ratio alone measures those frames' exits, not the instance's.
        cond = paired / (sum(self.sampled_ms) / len(self.sampled_ms)) if self.sampled_ms else None
        fo_p50 = sorted(self.final_only_ms)[len(self.final_only_ms) // 2] if self.final_only_ms else None
        inf_p50 = lat["inference"]["p50"] if "inference" in lat else None
        return {"format": STATS_FORMAT, "frames_in": capture.frames_in, "frames": self.frames,
                # frames_in == frames + dropped + corrupt; frames == presented + not_presented when presenting
                "frames_written": presenter.sink.written if presenter is not None and presenter.sink else 0,
                "frames_presented": presenter.presented if presenter is not None else 0,
                "not_presented": presenter.skipped if presenter is not None else 0,
                "dropped": capture.dropped + capture.unprocessed,
                "dropped_by_capture": capture.dropped, "unprocessed_at_stop": capture.unprocessed,
                "corrupt": capture.corrupt, "reconnects": capture.reconnects, "end_reason": capture.end_reason,
                "exit_histogram": dict(self.exits),
                "exit_fractions": {k: v / float(self.frames) for k, v in self.exits.items()},
                "latency_ms": lat, "mean_inference_ms": mean_inf, "wall_s": wall_s,
                "fps": self.frames / wall_s if wall_s > 0 else None,
                "inference_fps": 1e3 / mean_inf if mean_inf else None,
                "final_only": {"frames": len(self.final_only_ms), "mean_ms": fo, "instance_mean_ms": paired,
                               "conditions_factor": cond},
                "speedup_vs_final_only": fo / (mean_inf * cond) if fo and mean_inf and cond else None,
                "speedup_vs_final_only_paired": fo / paired if fo and paired else None,
                # medians: on a shared machine a few preempted frames (10+ ms) can swamp 20-frame means
                "speedup_vs_final_only_median": fo_p50 / inf_p50 if fo_p50 and inf_p50 else None}


MIN_ESTIMATE_FRAMES = 20  # final-only frames below which the in-loop speedup is not shown: a few frames' noise


def speedup_estimate(s):
    """(speedup, None) when the in-loop estimate means something, else (None, why not). It is shown only from
    MIN_ESTIMATE_FRAMES paired frames on, and only when the exit histogram allows it: frames that went on to the
    final exit cost at least the final-only path, so with a fraction f of them no instance can be faster than
    1 / f (an estimate of 1.20x with 249 of 250 frames at the final exit is noise)."""
    est, n = s.get("speedup_vs_final_only"), s["final_only"]["frames"]
    if not est:
        return None, "off" if not n else "not measured"
    if n < MIN_ESTIMATE_FRAMES:
        return None, "only {} paired frames, fewer than {}".format(n, MIN_ESTIMATE_FRAMES)
    final = s["exit_histogram"].get("final", 0) / float(s["frames"] or 1)
    if final > 0 and est > 1.0 / final:
        return None, "{:.2f}x is more than the exits taken allow (at most {:.2f}x with {:.0%} of the frames at the " \
                     "final exit): noise".format(est, 1.0 / final, final)
    return est, None


def _fit_text(fit, g):
    """"fit: letterbox (640x272 frames into the 128x128 input, the image 128x54 between bars)"."""
    (fh, fw), (ih, iw) = g["frame_hw"], g["input_hw"]
    text = "fit: {} ({}x{} frames into the {}x{} input".format(fit, fw, fh, iw, ih)
    if fit == "letterbox" and list(g["content"][2:]) != [ih, iw]:
        text += ", the image {}x{} between bars".format(g["content"][3], g["content"][2])
    if fit == "crop" and list(g["source"][2:]) != [fh, fw]:
        text += ", the centre {}x{} of the frame".format(g["source"][3], g["source"][2])
    return text + ")"


def format_stats(s):
    """The statistics as a few printable lines."""
    lines = ["frames {frames} processed of {frames_in} read ({dropped} dropped, {corrupt} corrupt, {reconnects} "
             "reconnects); end: {end_reason}".format(**s),
             "presented {frames_presented} of {frames}{why}, written {frames_written}".format(
                 why=" ({} not presented: the overlay and writer could not keep up; a live source's newest result "
                     "wins)".format(s["not_presented"]) if s["not_presented"] else "", **s),
             "exits: " + histogram_text(s["exit_histogram"])]
    if s.get("fit_geometry"):
        lines.append(_fit_text(s["fit"], s["fit_geometry"]))
    for name, row in s["latency_ms"].items():
        if row:
            lines.append("  {:<24} p50 {:8.3f}  p90 {:8.3f}  p99 {:8.3f}  mean {:8.3f} ms  n {}".format(
                name, row["p50"], row["p90"], row["p99"], row["mean"], row["n"]))
    if s["fps"] is not None and s["inference_fps"] is not None:
        lines.append("loop {:.1f} fps vs 1 / mean inference latency {:.1f} fps ({:.3f} ms)".format(
            s["fps"], s["inference_fps"], s["mean_inference_ms"]))
    est, why = speedup_estimate(s)
    if est is not None:
        lines.append("in-loop speedup estimate {:.2f}x over final-only ({} paired frames; an estimate: mess-edge "
                     "bench --instance measures it)".format(est, s["final_only"]["frames"]))
    elif why != "off":
        lines.append("in-loop speedup estimate not shown ({}); mess-edge bench --instance measures it".format(why))
    return "\n".join(lines)
