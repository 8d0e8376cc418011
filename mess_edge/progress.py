"""Progress of long loops: tqdm's bar on a terminal, one plain line every few percent in a log.

``progress(total, desc)`` returns an object with tqdm's interface (``update(n)``, ``set_postfix_str(s)``,
``close()``, a context manager):

- stderr is a terminal and tqdm is installed (the host's ``train`` extra): a ``tqdm.tqdm`` bar itself.
- otherwise (a log file, a pipe, ``make demo | tee``, a device without tqdm): ``LineProgress``, one
  newline-terminated line each ``step_percent`` of the total, so a log holds at most 100 / step_percent + 1
  lines per loop and no carriage return.

Why this module stays beside tqdm: tqdm redraws with "\\r" whatever its output is (measured with tqdm 4.70.1:
1,000 updates into a StringIO gave one 53,870-character line holding 1,002 "\\r"; with ``miniters=100`` still
12 "\\r" and one newline), which is what turned the demo log into one 10,206-character line. And the device
side (profile, bench) must run where tqdm is not installed. Device-side: Python 3.8, no third-party imports
at module level.
"""

import sys
import time

STEP_PERCENT = 10  # a log line every 10 % of a loop


def progress(total, desc, enabled=True, stream=None, unit="it", step_percent=STEP_PERCENT):
    """A progress object over ``total`` units for a loop called ``desc``; silent when not ``enabled``
    (ranks > 0, tests). ``stream`` defaults to sys.stderr, looked up at call time."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Silent()
    if _is_terminal(stream):
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            # Not dynamic_ncols: on a terminal reporting 0 columns (a pty nobody sized, e.g. `docker run -t`)
            # it draws an empty bar; the default takes the width once and has no limit when it is unknown.
            return tqdm(total=total, desc=desc, file=stream, unit=unit, leave=True)
    return LineProgress(total, desc, stream, unit, step_percent)


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class LineProgress(object):
    """tqdm's update / set_postfix_str / close, written as one full line per ``step_percent`` of ``total``:

        desc: 40% 50/125 batches, 12 s, ~18 s left, loss 0.512

    A line each time the percentage crosses a multiple of ``step_percent`` (at most 100 / step_percent lines,
    100 % included), and one at ``close`` when the loop stopped short of its total: at most
    100 / step_percent + 1 lines in all.
    """

    def __init__(self, total, desc, stream, unit="it", step_percent=STEP_PERCENT):
        self.total, self.desc, self.stream, self.unit = int(total or 0), desc, stream, unit
        self.step = float(step_percent)
        self.n, self.postfix, self.start = 0, "", time.perf_counter()
        self._written = 0     # how many multiples of step_percent have had their line
        self._last_n = None   # n at the last line written
        self._closed = False

    def set_postfix_str(self, s="", refresh=True):
        self.postfix = str(s)

    def update(self, n=1):
        self.n += n
        crossed = int(self._percent() // self.step) if self.total else 0
        if crossed > self._written:
            self._written = crossed
            self._write()

    def close(self):
        """The last state, when no line has shown it yet (a loop that stopped short of its total)."""
        if not self._closed and self.n and self.n != self._last_n:
            self._write()
        self._closed = True

    def _percent(self):
        return 100.0 * min(self.n, self.total) / self.total if self.total else 0.0

    def _write(self):
        self._last_n = self.n
        elapsed = time.perf_counter() - self.start
        parts = ["{}: {:.0f}% {}/{} {}".format(self.desc, self._percent(), self.n, self.total, self.unit),
                 "{:.0f} s".format(elapsed)]
        if 0 < self.n < self.total:
            parts.append("~{:.0f} s left".format(elapsed * (self.total - self.n) / self.n))
        if self.postfix:
            parts.append(self.postfix)
        self.stream.write(", ".join(parts) + "\n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Silent(object):
    """The interface, doing nothing."""

    def set_postfix_str(self, s="", refresh=True):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
