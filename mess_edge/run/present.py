"""Presentation for ``mess-edge run`` on its own thread: overlay, window and video / PNG writer.

The loop hands each result over and goes back to inference. The hand-over is a one-slot queue: while the
presenter is busy, a live run (a camera, a stream, a ``realtime`` file) lets the newest result replace the
one waiting, counted in ``skipped`` (apart from the capture's drops), so a slow writer costs written frames and
never queues them (see NICE for its priority); a file read without drops waits for the
slot instead, so every frame is written and a run is reproducible. Every processed frame is either presented or skipped:
``presented + skipped == submitted`` once ``close`` has returned. cv2 is imported inside the thread.
"""

import collections
import os
import threading
import time

from mess_edge.naming import exit_label
from mess_edge.run.stats import LatencyHistogram

_SHORT = {"segment": "seg", "upsample": "up"}


def status_lines(result, roles, fps):
    """The overlay's text: the exit taken and the confidence that decided it, the time per role, inference time
    and the loop's fps (None: not yet measured, left out)."""
    by_role = collections.OrderedDict()
    for name, ms in result.times_ms.items():
        role = roles.get(name)
        if role:
            by_role[role] = by_role.get(role, 0.0) + ms
    if result.exit != "final":
        head = "exit {}  conf {:.2f}".format(exit_label(result.graph), result.confidence)
    elif result.declined is not None:  # the final graph computes no confidence: the last early exit's decided
        head = "exit final  ({} conf {:.2f}: too low)".format(exit_label(result.declined[0]), result.declined[1])
    else:
        head = "exit final  (no early exit tried)"
    infer = "infer {:.1f} ms".format(result.times_ms["total"])
    return [head, "  ".join("{} {:.1f}".format(_SHORT.get(r, r), ms) for r, ms in by_role.items()) + " ms",
            infer if fps is None else "{}  {:.1f} fps".format(infer, fps)]


# The presenter's nice increment in newest-wins runs. It was +10 (issue 15): on 2 cores inference takes both
# (ORT's pool), and at +10 the presenter got so little CPU that its 1.7 ms overlay took 15-170 ms and its
# 1280x720 mp4 write 40-260 ms: end-to-end (capture to written) p50 11-25x the mean inference latency, ~1 frame
# in 20 written. The hand-over holds one result (present_wait p50 7-15 ms), so the latency was that starved
# work, not a queue. At 0 (equal priority), same machine and load: end-to-end 3.2-3.9x, half the frames
# written, loop fps / (1 / mean inference) unchanged (0.98); the absolute loop rate is lower, since the writer's
# CPU is no longer all the loop's (benchmarks/results/camera_resolution.md). With cores to spare (a Jetson,
# GPU inference) it changes nothing. Kept as a knob: raise it to favour the loop's rate over what is written.
NICE = 0


def _lower_priority(increment):
    """Lower the calling thread's scheduling priority (Linux: nice is per thread); elsewhere a no-op."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except (AttributeError, OSError):  # no native thread id or setpriority (not Linux), or refused
        pass


class Presenter(threading.Thread):
    """Overlays and writes / shows results on its own thread.

    ``sink``: a camera.FrameSink or None; ``show``: a cv2 window (every HighGUI call stays on this thread);
    ``newest_wins``: replace a waiting result instead of waiting for the slot; ``roles``: graph name -> role,
    for the text; ``stop``: a threading.Event set when the window's user presses q or Esc; ``on_output(index,
    end_to_end_ms)``: called on this thread after each presented frame; ``overlay``: an overlay.Overlay (its
    fit, size and legend; default: a plain one). Latency histograms (ms) in
    ``latency``: present_wait (hand-over to the presenter starting on it), overlay, output (write and show),
    end_to_end (the frame's capture time, taken as the source handed it over, to its overlay written / shown:
    what a user feels; end_to_end = to_result + present_wait + overlay + output). ``error``: the
    exception the thread died of; the loop raises it.
    """

    def __init__(self, sink, show, newest_wins, roles, stop, on_output=None, overlay=None):
        super(Presenter, self).__init__(name="mess-edge-present", daemon=True)
        from mess_edge.run.overlay import Overlay

        self.sink, self.show, self.newest_wins, self.roles = sink, show, newest_wins, roles
        self.stop_event, self.on_output, self.overlay = stop, on_output, overlay or Overlay()
        self.latency = collections.OrderedDict((k, LatencyHistogram()) for k in ("present_wait", "overlay", "output",
                                                                                 "end_to_end"))
        self.submitted = self.presented = self.skipped = 0
        self.error, self._pending, self._closing = None, None, False
        self._slot = threading.Condition()

    def submit(self, index, frame, result, fps, t_capture):
        """Hand over one processed frame (``frame`` BGR uint8, not modified afterwards; ``fps`` the loop's rate
        or None; ``t_capture`` its perf_counter capture time). Newest-wins: never waits. Otherwise waits for the
        slot."""
        item = (index, frame, result, fps, t_capture, time.perf_counter())
        with self._slot:
            self.submitted += 1
            while self._pending is not None and not self.newest_wins and self.error is None:
                self._slot.wait(0.1)  # woken when the slot empties; the timeout looks at error again
            if self.error is not None:  # the thread is gone: the loop raises its error next
                self.skipped += 1
                return
            self.skipped += self._pending is not None  # newest wins: the waiting one is never presented
            self._pending = item
            self._slot.notify_all()

    def run(self):
        if self.newest_wins and NICE:  # a run that waits for every frame gains nothing from a slow presenter
            _lower_priority(NICE)
        item = None
        try:
            while True:
                with self._slot:
                    while self._pending is None and not self._closing:
                        self._slot.wait()
                    item, self._pending = self._pending, None
                    self._slot.notify_all()
                if item is None:  # closing, nothing left
                    return
                self._present(*item)
                item = None
        except BaseException as e:  # the loop raises it; the frame in hand and the one waiting count as skipped
            with self._slot:
                self.error = e
                self.skipped += (item is not None) + (self._pending is not None)
                self._pending = None
                self._slot.notify_all()
        finally:
            self._finish()

    def _present(self, index, frame, result, fps, t_capture, t_submit):
        t0 = time.perf_counter()
        image = self.overlay(frame, result.labels, status_lines(result, self.roles, fps))
        t1 = time.perf_counter()
        if self.sink is not None:
            self.sink.write(image)
        if self.show:
            import cv2
            cv2.imshow("mess-edge", image)
            if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                self.stop_event.set()
        t2 = time.perf_counter()
        for name, ms in (("present_wait", t0 - t_submit), ("overlay", t1 - t0), ("output", t2 - t1),
                         ("end_to_end", t2 - t_capture)):
            self.latency[name].add(ms * 1e3)
        if self.on_output is not None:
            self.on_output(index, (t2 - t_capture) * 1e3)
        self.presented += 1  # last: a frame whose presentation raised counts as skipped

    def _finish(self):
        """Close the video (moved into place: playable) and the window, on this thread."""
        try:
            if self.sink is not None:
                self.sink.close()
        finally:
            if self.show:
                import cv2
                cv2.destroyAllWindows()

    def close(self):
        """Present the waiting result, if any, then stop the thread and close the sink and window."""
        with self._slot:
            self._closing = True
            self._slot.notify_all()
        if self.is_alive():
            self.join()
        elif self.ident is None:  # never started
            self._finish()
        assert self.presented + self.skipped == self.submitted, (self.presented, self.skipped, self.submitted)
