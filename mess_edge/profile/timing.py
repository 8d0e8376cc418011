"""Honest latency measurement: warm up, synchronise, perf_counter, repeat, summarise.

Like trtexec (TENSORRT.md sec. 7.1), a measurement runs at least ``min_iters`` iterations AND at least
``min_seconds``, after ``warmup_s`` seconds of untimed runs. ``sync`` is called inside the timed region
after every call: a GPU backend passes its stream's synchronize so the time covers the work, not the
enqueue. All times are milliseconds.
"""

import collections
import time

import numpy as np

TimingStats = collections.namedtuple("TimingStats", ["median_ms", "mean_ms", "p90_ms", "p99_ms", "std_ms",
                                                     "min_ms", "max_ms", "n"])


def summarize(samples_ms):
    """TimingStats of a sequence of per-call times in ms (percentiles: numpy's linear interpolation)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples to summarise")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return TimingStats(float(p50), float(x.mean()), float(p90), float(p99), float(x.std()),
                       float(x.min()), float(x.max()), int(x.size))


def stats_dict(stats):
    """TimingStats -> the LUT's dict: median_ms, mean_ms, p90_ms, p99_ms, std_ms, min_ms, max_ms, n."""
    return dict(stats._asdict())


def warm_up(fn, seconds, sync=None, min_calls=2):
    """Call ``fn`` (then ``sync``) for ``seconds`` and at least ``min_calls`` times, untimed."""
    end = time.perf_counter() + seconds
    calls = 0
    while calls < min_calls or time.perf_counter() < end:
        fn()
        if sync is not None:
            sync()
        calls += 1
    return calls


def time_fn(fn, min_iters=50, min_seconds=1.0, warmup_s=0.5, sync=None, max_iters=1000000):
    """Time ``fn()``: warm-up, then >= min_iters calls and >= min_seconds (capped at max_iters).

    Returns TimingStats in ms; each sample is perf_counter around one call plus ``sync``.
    """
    warm_up(fn, warmup_s, sync)
    samples = []
    clock = time.perf_counter
    end = clock() + min_seconds
    while len(samples) < max_iters and (len(samples) < min_iters or clock() < end):
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        samples.append((clock() - t0) * 1e3)
    return summarize(samples)


PairedStats = collections.namedtuple("PairedStats", ["a", "b", "ratio_median", "ratio_p10", "ratio_p90",
                                                     "n_pairs"])


def time_paired(fn_a, fn_b, pairs=100, warmup_s=0.5, sync=None):
    """Interleave ``fn_a`` and ``fn_b`` (ABBA order, so drift and cache effects hit both alike).

    Returns PairedStats: each side's TimingStats and the median (p10, p90) of the per-pair ratios
    time_b / time_a; the median of ratios is robust to a slow moment hitting one pair.
    """
    warm_up(fn_a, warmup_s / 2, sync)
    warm_up(fn_b, warmup_s / 2, sync)
    clock = time.perf_counter
    ta, tb = [], []

    def one(fn, out):
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        out.append((clock() - t0) * 1e3)

    for i in range(pairs):
        if i % 2 == 0:
            one(fn_a, ta)
            one(fn_b, tb)
        else:
            one(fn_b, tb)
            one(fn_a, ta)
    ratios = np.asarray(tb) / np.asarray(ta)
    r50, r10, r90 = np.percentile(ratios, [50, 10, 90])
    return PairedStats(summarize(ta), summarize(tb), float(r50), float(r10), float(r90), int(pairs))
