"""A small progress bar for long loops (no dependency; device side too).

Writes one carriage-returned line to stderr at most every ``min_interval_s`` and a final newline; silent
when ``enabled`` is False (non-zero ranks, tests).
"""

import sys
import time


class Progress:
    def __init__(self, total, desc="", enabled=True, min_interval_s=0.5, stream=None):
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.stream = stream or sys.stderr
        self.n = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self.postfix = ""

    def update(self, n=1, postfix=None):
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.min_interval_s or self.n >= (self.total or 0)):
            self._last = now
            self._draw(now)

    def _draw(self, now):
        elapsed = now - self.start
        if self.total:
            frac = min(self.n / float(self.total), 1.0)
            bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            line = "{} [{}] {}/{} {:.0f}s<{:.0f}s {}".format(self.desc, bar, self.n, self.total, elapsed, eta,
                                                           self.postfix)
        else:
            line = "{} {} {:.0f}s {}".format(self.desc, self.n, elapsed, self.postfix)
        self.stream.write("\r" + line[:160].ljust(80))
        self.stream.flush()

    def close(self):
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
