"""Frames in for ``mess-edge run``: the source and the capture thread.

A source is a camera index, a video file, an image folder or glob, an RTSP/HTTP URL or a GStreamer pipeline
(OpenCV). The capture thread reads it into a bounded queue: live sources (cameras, streams, ``realtime`` files)
let the newest frame win and count the frames they drop; files without ``realtime`` hand over every frame, so
a run is reproducible. A live source that stops delivering gets a few reconnect attempts with backoff.
Unreadable frames (None, not HxWx3 uint8, an image file that does not decode) are skipped and counted. cv2 is
imported inside the functions that need it.
"""

import collections
import glob
import os
import queue
import threading
import time

import numpy as np

from mess_edge.errors import MessError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
END = None  # queue sentinel: the source is finished

# A captured frame: index in the source, BGR image, perf_counter time of capture, and, when the capture thread
# prepares frames, the network input (a pool buffer: hand it back with Capture.release) and its time in ms.
Frame = collections.namedtuple("Frame", "index image t_cap input prepare_ms")


def valid_frame(frame):
    """True for an HxWx3 uint8 image (what cv2 hands over for a good frame)."""
    return (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
            and frame.shape[0] > 0 and frame.shape[1] > 0)


def fourcc_text(code):
    """cv2's CAP_PROP_FOURCC value (a float holding 4 bytes) -> "MJPG"; "" when the backend reports none."""
    code = int(code or 0)
    text = "".join(chr((code >> 8 * i) & 0xFF) for i in range(4))
    return text if code and text.isprintable() else ""


class Source(object):
    """One OpenCV source. ``read()`` -> ("ok", frame) | ("corrupt", None) | ("end", None) | ("lost", None) |
    ("truncated", n_missing) (a video file that ends before the frame count its container announces).

    ``camera_settings`` (cameras only): {"size": (width, height), "fps": float, "fourcc": "MJPG"}, any subset,
    asked of the driver at every open (V4L2 order: pixel format, then size, then rate). Drivers fall back
    silently to what they support, so ``delivers`` records what the camera reports back after opening."""

    def __init__(self, spec, camera=False, timeout_s=5.0, loop=False, camera_settings=None):
        self.spec, self.timeout_s, self.loop = spec, float(timeout_s), loop
        self.cap, self.paths, self.next, self.fps = None, None, 0, None
        self.announced, self.read_in_pass = None, 0  # video files: frames the container announces / read so far
        self.camera_settings, self.delivers = dict(camera_settings or {}), None
        spec = str(spec)
        if camera:
            self.kind = "camera"
        elif "://" in spec:
            self.kind = "stream"
        elif " ! " in spec:
            self.kind = "gstreamer"
        elif os.path.isdir(spec):
            self.kind, self.paths = "images", sorted(os.path.join(spec, n) for n in os.listdir(spec)
                                                     if os.path.splitext(n)[1].lower() in IMAGE_EXTS)
        elif any(c in spec for c in "*?["):
            self.kind, self.paths = "images", sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        elif os.path.isfile(spec):
            image = os.path.splitext(spec)[1].lower() in IMAGE_EXTS
            self.kind, self.paths = ("images", [spec]) if image else ("video", None)
        else:
            raise MessError("got --source {}; no such file or folder; expected a video file, an image folder or "
                            "glob, or a rtsp:// / http:// URL; try --camera 0 for a camera".format(spec))
        if self.kind == "images" and not self.paths:
            raise MessError("got --source {} with no images ({}); expected image files; try a folder of .jpg/"
                            ".png files".format(spec, "/".join(IMAGE_EXTS)))
        self.live = self.kind in ("camera", "stream", "gstreamer")

    def open(self):
        """Open the source or raise MessError saying what was tried."""
        if self.kind == "images":
            return self
        if not self._open():
            if self.kind == "camera":
                raise MessError("cannot open camera {}; expected a connected camera (/dev/video{}); try another "
                                "--camera index (ls /dev/video*), or --source FILE".format(self.spec, self.spec))
            if self.kind == "video":
                raise MessError("cannot read video {}; expected a file OpenCV can decode (mp4, avi, mkv); try "
                                "converting it with ffmpeg -i IN -c:v libx264 OUT.mp4".format(self.spec))
            raise MessError("cannot open stream {} within {:g} s; expected a reachable {} source; check the "
                            "address, the network and that the stream is up".format(
                                self.spec, self.timeout_s, self.kind))
        import cv2

        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        if self.kind == "video":
            count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.announced = int(count) if count and 0 < count < 1e9 else None
        if self.kind == "camera":
            self.delivers = {"size": (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                                      int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))),
                             "fps": self.fps, "fourcc": fourcc_text(self.cap.get(cv2.CAP_PROP_FOURCC))}
        return self

    def _open(self):
        import cv2

        self.close()
        # OpenCV logs every backend it tries; a failure is reported once, by the MessError of open()
        log = getattr(getattr(cv2, "utils", None), "logging", None)
        previous = log.setLogLevel(log.LOG_LEVEL_SILENT) if log is not None else None
        try:
            return self._open_cv2(cv2)
        finally:
            if log is not None:
                log.setLogLevel(previous)

    def _open_cv2(self, cv2):
        if self.kind == "camera":
            self.cap = cv2.VideoCapture(int(self.spec))
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's own queue would add frames of latency
            want = self.camera_settings
            if want.get("fourcc"):  # first: the sizes and rates a camera offers depend on the pixel format
                self.cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*want["fourcc"]))
            if want.get("size"):
                self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(want["size"][0]))
                self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(want["size"][1]))
            if want.get("fps"):
                self.cap.set(cv2.CAP_PROP_FPS, float(want["fps"]))
        elif self.kind == "gstreamer":
            self.cap = cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        elif self.kind == "stream":
            ms = int(self.timeout_s * 1000)
            try:  # open/read timeouts (OpenCV >= 4.5.2); without them an unreachable host blocks ~30 s
                self.cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
            except (TypeError, AttributeError, cv2.error):
                self.cap = cv2.VideoCapture(self.spec)
        else:
            self.cap = cv2.VideoCapture(self.spec)
        return self.cap.isOpened()

    def reopen(self):
        """Try once to reopen a live source; True when it opened (whether it delivers, read() tells)."""
        try:
            return self._open()
        except Exception:  # cv2 raises on some backends instead of returning closed
            self.cap = None
            return False

    def read(self):
        if self.kind == "images":
            if self.next >= len(self.paths):
                if not self.loop:
                    return "end", None
                self.next = 0
            import cv2
            frame = cv2.imread(self.paths[self.next], cv2.IMREAD_COLOR)
            self.next += 1
            return ("ok", frame) if valid_frame(frame) else ("corrupt", None)
        ok, frame = self.cap.read() if self.cap is not None else (False, None)
        if not ok and self.kind == "video" and not self.loop and self.announced and self.read_in_pass < self.announced:
            missing, self.read_in_pass = self.announced - self.read_in_pass, self.announced
            return "truncated", missing  # a cut file: its index promises frames its data no longer holds
        if not ok and self.loop and not self.live and self._open():  # rewind by reopening: seeking is codec-bound
            self.read_in_pass = 0
            ok, frame = self.cap.read()
        if not ok:
            return ("lost" if self.live else "end"), None
        self.read_in_pass += 1
        return ("ok", frame) if valid_frame(frame) else ("corrupt", None)

    def close(self):
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class Capture(threading.Thread):
    """Reads a Source into a bounded queue on its own thread.

    ``newest_wins``: a full queue drops its oldest frame (counted in ``dropped``) rather than waiting.
    ``pace_fps``: read no faster than this (a file played in real time). ``max_frames``: stop after reading
    that many. ``reconnect_delays_s``: the waits before each reconnect attempt of a lost live source.
    ``prepare``: a camera.Preprocessor (or any ``f(frame, out) -> out`` with ``f.new_buffer()``) run on this
    thread, so the next frame is prepared while the current one is inferred (the GPU's idle CPU on a Jetson;
    cv2 releases the GIL). Its outputs live in a pool of queue_size + 2 buffers allocated once: one being
    filled, the queued ones, and the one the consumer holds until ``release(item)``.
    Items are ``Frame`` tuples; END closes the queue.
    Counters (read them after ``stop``): frames_in, dropped, corrupt, reconnects, unprocessed (queued when
    the consumer stopped); ``end_reason``; ``error`` (an exception the thread died of, for the consumer).
    """

    def __init__(self, source, queue_size=2, newest_wins=True, pace_fps=None, max_frames=None,
                 reconnect_delays_s=(0.5, 1.0, 2.0), prepare=None):
        super(Capture, self).__init__(name="mess-edge-capture", daemon=True)
        self.source, self.newest_wins, self.pace_fps, self.max_frames = source, newest_wins, pace_fps, max_frames
        self.reconnect_delays_s = tuple(reconnect_delays_s)
        self.queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self.prepare, self.free = prepare, queue.Queue()
        if prepare is not None:
            for _ in range(self.queue.maxsize + 2):
                self.free.put(prepare.new_buffer())
        self.stop_event = threading.Event()
        self.frames_in = self.dropped = self.corrupt = self.reconnects = self.unprocessed = 0
        self._read_at_stop = 0  # read but never queued because the consumer stopped (the capture thread's count)
        self.end_reason, self.error, self._failed = None, None, 0

    def release(self, item):
        """The consumer is done with ``item``'s input buffer: back to the pool."""
        if item is not END and item.input is not None:
            self.free.put(item.input)

    def run(self):
        try:
            self.end_reason = self._loop()
        except BaseException as e:  # surfaced by the main loop; the thread must still close the queue
            self.error, self.end_reason = e, "capture error"
        finally:
            self._put(END)

    def _loop(self):
        t_start = time.perf_counter()
        while not self.stop_event.is_set():
            if self.max_frames is not None and self.frames_in >= self.max_frames:
                return "max frames"
            status, frame = self.source.read()
            now = time.perf_counter()
            if status == "lost":
                # attempts count since the last good frame, so a source that reopens but never delivers ends too
                if self._failed >= len(self.reconnect_delays_s):
                    return "stream lost after {} reconnect attempts".format(len(self.reconnect_delays_s))
                if self.stop_event.wait(self.reconnect_delays_s[self._failed]):
                    return "stopped"
                self._failed += 1
                self.reconnects += 1
                self.source.reopen()
                continue
            if status == "end":
                return "end of source"
            if status == "truncated":  # every frame the file announced is accounted for: the missing as corrupt
                self.frames_in += frame
                self.corrupt += frame
                return "end of source: truncated, {} of the {} frames the file announces are missing".format(
                    frame, self.source.announced)
            self._failed = 0
            self.frames_in += 1
            if status == "corrupt":
                self.corrupt += 1
                continue
            if self.pace_fps:
                wait = t_start + self.frames_in / self.pace_fps - time.perf_counter()
                if wait > 0:
                    self.stop_event.wait(wait)
                now = time.perf_counter()
            x, prepare_ms = None, None
            if self.prepare is not None:
                x = self._buffer()
                if x is None:  # stopped before a buffer came free
                    self._read_at_stop += 1
                    return "stopped"
                t0 = time.perf_counter()
                self.prepare(frame, x)
                prepare_ms = (time.perf_counter() - t0) * 1e3
            self._put(Frame(self.frames_in - 1, frame, now, x, prepare_ms))
        return "stopped"

    def _buffer(self):
        """A free input buffer; None when stopped first. Never waits long: the pool holds one more buffer than
        the queue and the consumer can hold together."""
        while not self.stop_event.is_set():
            try:
                return self.free.get(timeout=0.05)
            except queue.Empty:
                pass
        return None

    def _put(self, item):
        """A frame of a newest-wins capture never waits: a full queue loses its oldest frame. Anything else
        waits for room, until the consumer stops."""
        while True:
            try:
                if self.newest_wins and item is not END:
                    self.queue.put_nowait(item)
                else:
                    self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.stop_event.is_set():
                    self._read_at_stop += item is not END
                    self.release(item)
                    return
                if self.newest_wins and item is not END:
                    try:
                        self.release(self.queue.get_nowait())  # END is put last, so this is a frame
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def stop(self):
        """Stop reading, wait for the thread; frames still queued, or read and not yet queued, are counted in
        ``unprocessed``."""
        self.stop_event.set()
        while self.is_alive():
            self._drain()
            self.join(0.05)
        self._drain()
        self.unprocessed += self._read_at_stop  # the thread has ended: its count is final
        self._read_at_stop = 0
        self.source.close()

    def _drain(self):
        while True:
            try:
                item = self.queue.get_nowait()
                if item is not END:
                    self.release(item)
                    self.unprocessed += 1  # a counter of its own: ``dropped`` belongs to the capture thread
            except queue.Empty:
                return
