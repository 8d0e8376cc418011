"""`mess-edge run` end to end on small real engines: video, image folder, streams, faults, Ctrl-C, no torch."""

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from _fixtures import make_onnx_dir, write_split_instance
from mess_edge.errors import MessError
from mess_edge.build.builder import build_engines
from mess_edge.run.overlay import Overlay, bgr_palette, overlay_reference
from mess_edge.run.preprocess import Preprocessor, preprocess_reference
from mess_edge.run.capture import Capture, Source, fourcc_text, valid_frame
from mess_edge.run.chain import FrameResult, ReferenceChain
from mess_edge.build.engine_set import load_engines
from mess_edge.run.present import Presenter
from mess_edge.run.loop import RunConfig, _camera_line, parse_size, run_stream
from mess_edge.run.threads import loop_has_time, presents, run_threads, side_work
from mess_edge.runtime.device import physical_cores
from mess_edge.run.stats import LatencyHistogram

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E0, E1 = "head_e0_c1b1r0h0", "head_e1_c1b1r0h0"
NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": "RGB", "scale": 255.0}


def scene(i, hw=(40, 48)):
    """A BGR frame: a moving disc and bar on a gradient (deterministic)."""
    h, w = hw
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = np.linspace(30, 200, w, dtype=np.uint8)[None, :, None]
    cv2.circle(img, (6 + 3 * i % (w - 12), h // 2), 7, (40, 220, 90), -1)
    cv2.rectangle(img, (w // 2, 2 + i % (h - 10)), (w // 2 + 10, 8 + i % (h - 10)), (200, 30, 160), -1)
    return img


def write_video(path, n, fps=25.0):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (48, 40))
    for i in range(n):
        writer.write(scene(i))
    writer.release()
    return path


def decode(path):
    cap, frames = cv2.VideoCapture(path), []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def fed(frame):
    """What `mess-edge run` feeds the 32x32 network for a frame (letterboxed, its default)."""
    return preprocess_reference(frame, (32, 32), NORM, fit="letterbox")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(engines, video with 12 frames, instance.json whose first threshold splits those frames)."""
    base = tmp_path_factory.mktemp("run")
    make_onnx_dir(str(base / "onnx"), widths=(8, 16, 16), num_classes=5)
    engines = load_engines(build_engines(str(base / "onnx"), "ort", out_dir=str(base / "eng")))
    video = write_video(str(base / "clip.mp4"), 12)
    path = str(base / "instance.json")
    inst = write_split_instance(engines, [fed(f) for f in decode(video)], path, (E0, E1))  # about half leave at E0
    return engines, video, path, inst


def cli(*args, timeout=60):
    """`mess-edge ARGS` in a subprocess where torch cannot be imported; asserts it never was."""
    code = ("import sys; sys.modules['torch'] = None\nfrom mess_edge.cli import main\nmain({!r})\n"
            "assert sys.modules.get('torch') is None\n").format([str(a) for a in args])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_preprocessor_matches_reference():
    rng = np.random.default_rng(0)
    for hw, norm in (((40, 48), NORM), ((32, 32), NORM), ((90, 60), dict(NORM, order="BGR", scale=1.0))):
        pre = Preprocessor((32, 32), norm)
        for _ in range(2):
            frame = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
            out = pre(frame)
            assert out.shape == (1, 3, 32, 32) and out.dtype == np.float32
            np.testing.assert_allclose(out, preprocess_reference(frame, (32, 32), norm), rtol=1e-5, atol=2e-5)
        assert pre(frame) is out  # the buffer is allocated once
        given = pre.new_buffer()
        assert pre(frame, given) is given and given is not out  # or the caller's (the capture thread's pool)
        np.testing.assert_array_equal(given, out)


def test_latency_histogram_matches_numpy_percentiles():
    samples = np.random.default_rng(1).lognormal(0.5, 1.2, 5000)
    hist = LatencyHistogram()
    for s in samples:
        hist.add(s)
    for q in (50, 90, 99):
        want = np.percentile(samples, q, method="inverted_cdf")
        assert abs(hist.percentile(q) - want) <= 0.005 * want
    s = hist.summary()
    assert s["n"] == 5000 and s["mean"] == pytest.approx(samples.mean()) and s["max"] == samples.max()


def test_overlay_blends_class_colours_and_keeps_background():
    frame = np.full((20, 40, 3), 100, np.uint8)
    labels = np.zeros((32, 32), np.int32)
    labels[:, 16:] = 2
    out = Overlay(min_width=320)(frame, labels)
    assert out.shape == (160, 320, 3)
    assert (out[:, :150] == 100).all()  # background: the frame as it was
    want = np.round(0.5 * 100 + 0.5 * bgr_palette()[2].astype(float))
    np.testing.assert_allclose(out[:, 170:].reshape(-1, 3), np.broadcast_to(want, (160 * 150, 3)), atol=1)


def test_overlay_matches_reference_and_reuses_its_buffers():
    rng = np.random.default_rng(2)
    overlay = Overlay()
    for hw, lab_hw in (((40, 48), (32, 32)), ((40, 48), (32, 32)), ((128, 128), (128, 128)), ((60, 400), (32, 32))):
        frame = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
        labels = rng.integers(0, 5, lab_hw).astype(np.int32)
        labels[:8] = 0
        out = overlay(frame, labels)
        want = overlay_reference(frame, labels)
        assert out.shape == want.shape and np.abs(out.astype(int) - want).max() <= 1
        assert overlay(frame, labels) is out  # allocated once per frame size
        assert overlay(frame, labels, ["exit final", "infer 1.0 ms"]) is out and (out != want).any()  # text drawn


class SlowSink(object):
    """A FrameSink stand-in that takes ``delay_s`` per frame and keeps copies; ``fail_at``: raise then."""

    def __init__(self, delay_s=0.0, fail_at=None):
        self.delay_s, self.fail_at, self.frames, self.written, self.closed = delay_s, fail_at, [], 0, False

    def write(self, image):
        if self.written == self.fail_at:
            raise MessError("disk full")
        time.sleep(self.delay_s)
        self.frames.append(image.copy())
        self.written += 1

    def close(self):
        self.closed = True


def _submit_all(presenter, n, every_s=0.0):
    frame = np.full((8, 8, 3), 50, np.uint8)
    for i in range(n):
        result = FrameResult(np.full((4, 4), i % 3, np.int32), "final", "final", None, {"total": 1.0})
        presenter.submit(i, frame, result, 100.0, time.perf_counter())
        time.sleep(every_s)


def test_presenter_newest_wins_skips_and_counts():
    shown = []
    sink = SlowSink(delay_s=0.02)
    p = Presenter(sink, False, True, {}, threading.Event(), on_output=lambda i, ms: shown.append((i, ms)))
    p.start()
    _submit_all(p, 30, every_s=0.002)  # 30 results in ~60 ms, each taking the presenter 20 ms
    p.close()
    assert p.error is None and sink.closed
    assert p.submitted == 30 and p.presented + p.skipped == 30 and 2 <= p.presented <= 15 and p.skipped >= 15
    assert sink.written == p.presented == len(shown) == p.latency["end_to_end"].n
    got = [i for i, _ in shown]
    assert got == sorted(got) and got[0] == 0 and got[-1] == 29  # the last result is presented at close
    assert all(ms >= 20 for _, ms in shown)  # capture to output includes the write
    # the stages add up: end_to_end covers present_wait + overlay + output (the slot holds one result, so the
    # wait is at most one write, never a queue of them)
    lat = {k: h.summary() for k, h in p.latency.items()}
    assert lat["present_wait"]["n"] == lat["end_to_end"]["n"] == p.presented
    assert lat["present_wait"]["max"] < 0.02 * 1e3 * 2.5
    assert lat["end_to_end"]["mean"] >= lat["present_wait"]["mean"] + lat["overlay"]["mean"] + lat["output"]["mean"] - 0.5


def test_presenter_without_newest_wins_presents_every_result_in_order():
    shown = []
    sink = SlowSink(delay_s=0.005)
    p = Presenter(sink, False, False, {}, threading.Event(), on_output=lambda i, ms: shown.append(i))
    p.start()
    _submit_all(p, 12)
    p.close()
    assert (p.presented, p.skipped, sink.written, shown) == (12, 0, 12, list(range(12)))
    assert sink.frames[0].shape == (320, 320, 3)  # 8x8 enlarged 40x for the text
    want = np.round(0.5 * 50 + 0.5 * bgr_palette()[1].astype(float))  # frame 1: all label 1, blended
    assert (sink.frames[0][-1, -1] == 50).all() and np.abs(sink.frames[1][-1, -1] - want).max() <= 1


def test_presenter_error_stops_it_and_every_result_is_still_counted():
    for newest_wins in (True, False):
        sink = SlowSink(delay_s=0.002, fail_at=3)
        p = Presenter(sink, False, newest_wins, {}, threading.Event())
        p.start()
        t0 = time.perf_counter()
        _submit_all(p, 10, every_s=0.02)
        p.close()
        assert time.perf_counter() - t0 < 5  # a dead presenter never blocks the loop
        assert isinstance(p.error, MessError) and str(p.error) == "disk full" and sink.closed
        assert p.presented == 3 and p.presented + p.skipped == p.submitted == 10


def test_video_end_to_end_matches_reference_without_torch(setup, tmp_path):
    engines, video, inst_path, inst = setup
    out, stats_path = str(tmp_path / "overlay.mp4"), str(tmp_path / "stats.json")
    r = cli("run", inst_path, "--engines", engines.dir, "--source", video, "--output", out, "--no-display",
            "--stats", stats_path, "--threads", 1)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.load(open(stats_path))
    assert (s["frames_in"], s["frames"], s["frames_written"], s["dropped"], s["corrupt"]) == (12, 12, 12, 0, 0)
    assert (s["frames_presented"], s["not_presented"], s["format"]) == (12, 0, "mess-edge-run-stats/2")
    assert s["frames_in"] == s["frames_written"] + s["dropped"] + s["corrupt"]
    assert s["end_reason"] == "end of source" and s["setting"] == "input-dependent"
    with ReferenceChain(engines, inst) as ref:
        want = collections.Counter(ref.run(fed(f)).graph for f in decode(video))
    assert s["exit_histogram"] == dict(want) and 0 < want[E0] < 12  # some frames leave early, some do not
    for stage in ("preprocess", "inference", "to_result", "overlay", "output", "end_to_end", "segment_0", E0,
                  "upsample_16x16"):
        row = s["latency_ms"][stage]
        assert 0 < row["p50"] <= row["p90"] <= row["p99"] <= row["max"] and row["n"] >= 6
    assert s["latency_ms"]["inference"]["n"] == 12 and s["mean_inference_ms"] == s["latency_ms"]["inference"]["mean"]
    fo = s["final_only"]
    assert fo["frames"] == 2 and s["speedup_vs_final_only"] == pytest.approx(  # frames 5 and 10
        fo["mean_ms"] / (s["mean_inference_ms"] * fo["conditions_factor"])) and fo["conditions_factor"] > 0
    assert s["speedup_vs_final_only_paired"] == pytest.approx(s["final_only"]["mean_ms"] /
                                                              s["final_only"]["instance_mean_ms"])
    assert s["fps"] > 0 and s["inference_fps"] == pytest.approx(1e3 / s["mean_inference_ms"])
    frames = decode(out)
    assert len(frames) == 12 and frames[0].shape == (280, 336, 3)  # 40x48 enlarged 7x for the text
    assert "frames 12 processed of 12 read (0 dropped, 0 corrupt" in r.stdout and "speedup" in r.stdout
    assert "presented 12 of 12, written 12" in r.stdout and "(0 not presented" not in r.stdout


def test_realtime_run_whose_presenter_falls_behind_skips_and_accounts_for_every_frame(setup, tmp_path):
    engines, _, inst_path, _ = setup
    video = tmp_path / "fast.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 400.0, (48, 40))
    for i in range(120):
        writer.write(scene(i))
    writer.release()
    out, stats_path, outputs, results = str(tmp_path / "o.mp4"), str(tmp_path / "s.json"), [], []

    def on_output(index, ms):  # on the presenter's thread: a presenter slower than the loop
        outputs.append((index, ms))
        time.sleep(0.01)

    s = run_stream(RunConfig(inst_path, engines.dir, source=str(video), realtime=True, output=out, display=False,
                             stats=stats_path, final_only_frames=0),
                   on_frame=lambda index, result, ms: results.append(index), on_output=on_output)
    assert s["end_reason"] == "end of source" and json.load(open(stats_path))["not_presented"] == s["not_presented"]
    assert s["frames_in"] == 120 == s["frames"] + s["dropped"] + s["corrupt"]
    assert s["frames"] == len(results) == s["frames_presented"] + s["not_presented"] and s["not_presented"] > 0
    assert s["frames_written"] == s["frames_presented"] == len(outputs) == len(decode(out))
    assert s["latency_ms"]["end_to_end"]["n"] == len(outputs) and s["latency_ms"]["to_result"]["n"] == s["frames"]
    shown = [i for i, _ in outputs]
    assert shown == sorted(shown) and set(shown) <= set(results) and shown[-1] == results[-1]


def test_image_folder_skips_and_counts_a_corrupt_file(setup, tmp_path):
    engines, _, inst_path, _ = setup
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / "{:03d}.png".format(i)), scene(i))
    (folder / "002b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = str(tmp_path / "pngs") + "/"  # a folder: the path ends in a slash (or names an existing folder)
    s = run_stream(RunConfig(inst_path, engines.dir, source=str(folder), output=out, display=False))
    assert (s["frames_in"], s["frames"], s["corrupt"], s["dropped"], s["frames_written"]) == (6, 5, 1, 0, 5)
    assert sorted(os.listdir(out)) == ["{:06d}.png".format(i) for i in range(5)]
    s = run_stream(RunConfig(inst_path, engines.dir, source=str(folder / "00[0-2].png"), display=False,
                             final_only_frames=0, max_frames=2))
    assert (s["frames_in"], s["frames"], s["frames_written"], s["speedup_vs_final_only"]) == (2, 2, 0, None)


def test_camera_mode_parsing_and_report():
    assert parse_size("1280x720") == (1280, 720) and parse_size("640X480") == (640, 480)
    for bad in ("1280", "1280x", "x720", "0x720", "-1x5", "1280x720x3", "axb"):
        with pytest.raises(MessError, match="got --camera-size .*; expected WIDTHxHEIGHT in pixels, like 1280x720"):
            parse_size(bad)
    assert fourcc_text(cv2.VideoWriter_fourcc(*"MJPG")) == "MJPG" and fourcc_text(0) == "" and fourcc_text(None) == ""
    got = {"size": (640, 480), "fps": 30.0, "fourcc": "YUYV"}
    assert _camera_line(0, got, {}) == "camera 0 delivers 640x480 at 30 fps (YUYV)"
    assert _camera_line(0, got, {"size": (640, 480), "fps": 30.2}) == "camera 0 delivers 640x480 at 30 fps (YUYV)"
    assert _camera_line(2, got, {"size": (1280, 720), "fourcc": "MJPG"}) == (
        "camera 2 delivers 640x480 at 30 fps (YUYV); asked 1280x720 (MJPG)")
    assert _camera_line(0, {"size": (0, 0), "fps": None, "fourcc": ""}, {"fps": 60.0}).endswith("; asked at 60 fps")


def test_camera_size_on_the_command_line_is_one_clear_line(setup):
    engines, _, inst_path, _ = setup
    r = cli("run", inst_path, "--engines", engines.dir, "--camera", 0, "--camera-size", "640")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("error: got --camera-size 640; expected WIDTHxHEIGHT in pixels, "
                                                 "like 1280x720")


def test_frames_that_are_not_hxwx3_uint8_are_corrupt():
    good = np.zeros((4, 5, 3), np.uint8)
    assert valid_frame(good)
    for bad in (None, good[:, :, 0], good.astype(np.float32), good[:0], np.zeros((4, 5, 4), np.uint8)):
        assert not valid_frame(bad)


def test_newest_frame_wins_and_realtime_pacing(tmp_path):
    for i in range(10):
        cv2.imwrite(str(tmp_path / "{:02d}.png".format(i)), scene(i))
    cap = Capture(Source(str(tmp_path)), queue_size=1, newest_wins=True, pace_fps=100.0)
    t0 = time.perf_counter()
    cap.start()
    got = []
    while True:
        item = cap.queue.get(timeout=5)
        if item is None:
            break
        got.append(item[0])
        time.sleep(0.035)  # a consumer slower than the source
    cap.stop()
    assert time.perf_counter() - t0 >= 0.09  # 10 frames at 100 fps
    assert cap.frames_in == 10 and cap.dropped > 0 and len(got) + cap.dropped + cap.unprocessed == 10
    assert got == sorted(got) and got[-1] == 9  # in order, and the newest frame is never the one dropped


@pytest.mark.parametrize("newest_wins", [True, False])
def test_capture_thread_prepares_frames_into_a_pool_of_buffers(tmp_path, newest_wins):
    for i in range(12):
        cv2.imwrite(str(tmp_path / "{:02d}.png".format(i)), scene(i))
    cap = Capture(Source(str(tmp_path)), queue_size=2, newest_wins=newest_wins, pace_fps=200.0,
                  prepare=Preprocessor((32, 32), NORM))
    cap.start()
    seen, buffers = [], set()
    while True:
        item = cap.queue.get(timeout=5)
        if item is None:
            break
        want = preprocess_reference(cv2.imread(str(tmp_path / "{:02d}.png".format(item.index))), (32, 32), NORM)
        np.testing.assert_allclose(item.input, want, rtol=1e-5, atol=2e-5)  # not overwritten while held
        assert item.prepare_ms > 0 and np.array_equal(item.image, cv2.imread(str(tmp_path / "{:02d}.png".format(
            item.index))))
        seen.append(item.index)
        buffers.add(id(item.input))
        time.sleep(0.012)  # a consumer slower than the source
        cap.release(item)
    cap.stop()
    assert len(buffers) <= 4  # queue_size + 2, allocated once and reused
    assert cap.frames_in == 12 and len(seen) + cap.dropped + cap.unprocessed == 12
    assert (cap.dropped > 0) == newest_wins and seen == sorted(seen) and seen[-1] == 11


@pytest.mark.parametrize("cfg, message", [
    (dict(camera=99), "cannot open camera 99; expected a connected camera"),
    (dict(source="rtsp://127.0.0.1:9/x", timeout_s=1.0), "cannot open stream rtsp://127.0.0.1:9/x within 1 s"),
    (dict(source="/no/such/clip.mp4"), "got --source /no/such/clip.mp4; no such file or folder"),
    (dict(), "neither --camera nor --source"),
    (dict(camera=0, source="x.mp4"), "both --camera and --source"),
    (dict(source="x.mp4", deadline_ms=5.0), "got --deadline-ms with a input-dependent instance"),
    (dict(source="x.mp4", camera_size=(640, 480)), "got --camera-size with --source; expected --camera N"),
    (dict(camera=0, camera_fps=0.0), "got --camera-fps 0; expected a rate > 0"),
    (dict(camera=0, camera_fourcc="MJPEG"), "got --camera-fourcc 'MJPEG'; expected a 4-character pixel format"),
    (dict(camera=0, camera_size=(640, 0)), "got --camera-size 640x0; expected WIDTHxHEIGHT"),
    (dict(camera=99, camera_size=(640, 480), camera_fps=60.0, camera_fourcc="MJPG"), "cannot open camera 99"),
])
def test_source_faults_are_clear_errors(setup, tmp_path, cfg, message):
    engines, video, inst_path, _ = setup
    if cfg.get("source") == "x.mp4" and "camera" not in cfg:
        cfg["source"] = video
    t0 = time.perf_counter()
    with pytest.raises(MessError, match=message.replace("(", "\\(")):
        run_stream(RunConfig(inst_path, engines.dir, display=False, **cfg))
    assert time.perf_counter() - t0 < 5


def _mjpeg_server(batches):
    """An HTTP MJPEG server on 127.0.0.1: one connection per batch of frames, then it goes away for good."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)

    def serve():
        k = 0
        for n in batches:
            conn, _ = sock.accept()
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n")
            for _ in range(n):
                jpg = cv2.imencode(".jpg", scene(k))[1].tobytes()
                k += 1
                conn.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg) +
                             jpg + b"\r\n")
                time.sleep(0.01)
            conn.close()
        sock.close()

    threading.Thread(target=serve, daemon=True).start()
    return "http://127.0.0.1:{}/stream.mjpg".format(sock.getsockname()[1])


def test_stream_that_drops_reconnects_then_ends_cleanly(setup, tmp_path):
    engines, _, inst_path, _ = setup
    url = _mjpeg_server([6, 4])
    stats = str(tmp_path / "stats.json")
    s = run_stream(RunConfig(inst_path, engines.dir, source=url, display=False, stats=stats, timeout_s=2.0,
                             reconnect_delays_s=(0.05, 0.1, 0.2)))
    assert s["end_reason"] == "stream lost after 3 reconnect attempts"
    assert s["reconnects"] == 4  # one that worked, three that did not
    assert s["frames_in"] == 10 and s["frames_in"] == s["frames"] + s["dropped"] + s["corrupt"] and s["frames"] >= 2
    assert json.load(open(stats))["reconnects"] == 4


def test_a_presenter_that_fails_stops_the_run_with_its_error_and_exact_counts(setup, tmp_path):
    engines, video, inst_path, _ = setup
    stats = str(tmp_path / "s.json")

    def on_output(index, ms):
        if index == 2:
            raise MessError("presenter broke")

    with pytest.raises(MessError, match="presenter broke"):
        run_stream(RunConfig(inst_path, engines.dir, source=video, output=str(tmp_path / "o.mp4"), display=False,
                             stats=stats, final_only_frames=0), on_output=on_output)
    s = json.load(open(stats))
    assert s["end_reason"] == "error: presenter broke" and s["frames_presented"] == 2
    assert s["frames"] == s["frames_presented"] + s["not_presented"] and s["frames"] >= 3
    assert s["frames_in"] == s["frames"] + s["dropped"] + s["corrupt"]
    assert len(decode(str(tmp_path / "o.mp4"))) == s["frames_written"] == 3  # written before the callback raised


@pytest.mark.parametrize("realtime", [False, True])
def test_ctrl_c_stops_cleanly_with_stats_and_a_playable_video(setup, tmp_path, realtime):
    engines, video, inst_path, _ = setup
    out, stats = str(tmp_path / "live.mp4"), str(tmp_path / "stats.json")
    code = ("import sys; sys.modules['torch'] = None\nfrom mess_edge.cli import main\n"
            "main({!r})\n").format(["run", inst_path, "--engines", engines.dir, "--source", video, "--loop",
                                    "--output", out, "--stats", stats, "--no-display"] + ["--realtime"] * realtime)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    partial = str(tmp_path / ".live.partial.mp4")
    deadline = time.time() + 30
    while not os.path.exists(partial) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5 if not realtime else 0.8)  # realtime: the 25 fps clip plays past its end
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 130, stderr[-2000:]  # everything written, and the caller told it was interrupted
    assert "end: interrupted" in stdout
    s = json.load(open(stats))
    assert s["end_reason"] == "interrupted" and s["frames"] > 12  # looped past the clip's end
    assert len(decode(out)) == s["frames_written"] == s["frames_presented"] and not os.path.exists(partial)
    assert s["frames"] == s["frames_presented"] + s["not_presented"]
    assert s["frames_in"] == s["frames"] + s["dropped"] + s["corrupt"]
    if not realtime:  # a file read without drops presents every frame
        assert s["frames_written"] == s["frames"] and s["dropped_by_capture"] == 0  # dropped: the queue at stop


def test_no_window_is_said_a_bad_output_is_an_error_and_the_fit_is_recorded(setup, tmp_path, monkeypatch):
    engines, video, inst_path, _ = setup
    monkeypatch.delenv("DISPLAY", raising=False)
    lines = []
    s = run_stream(RunConfig(inst_path, engines.dir, source=video, max_frames=2, final_only_frames=0),
                   log=lines.append)
    assert [ln for ln in lines if ln.startswith("no window: DISPLAY is not set")] and s["display"] is False
    assert s["fit"] == "letterbox" and s["fit_geometry"] == {  # 40x48 frames: 27x32 between 2-row bars
        "frame_hw": [40, 48], "input_hw": [32, 32], "content": [2, 0, 27, 32], "source": [0, 0, 40, 48]}
    quiet = []
    run_stream(RunConfig(inst_path, engines.dir, source=video, max_frames=1, display=False), log=quiet.append)
    assert not [ln for ln in quiet if "no window" in ln]  # --no-display: the user knows
    r = cli("run", inst_path, "--engines", engines.dir, "--source", video, "--output", str(tmp_path / "out2.mp"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not os.path.exists(str(tmp_path / "out2.mp"))
    assert r.stderr.strip().splitlines()[-1].startswith("error: got --output {}; expected a video path".format(
        tmp_path / "out2.mp"))


def test_a_run_that_decodes_or_draws_without_idle_time_leaves_a_core_to_that_work(setup, tmp_path, monkeypatch):
    decoding, drawing = "decoding the source", "drawing and writing the output"
    assert run_threads(None, [], 2) == (None, None)  # nothing else to do: ORT's default, all the cores
    assert run_threads(3, [drawing], 2) == (3, None) and run_threads(None, [drawing], 1) == (None, None)
    assert run_threads(None, [drawing], 2, spare_time=True) == (None, None)  # the loop waits for frames anyway
    assert run_threads(None, [decoding, drawing], 8) == (7, "ONNX Runtime engines: 7 of 8 cores infer, one is "
                                                         "left to decoding the source and drawing and writing the "
                                                         "output; --threads 8 uses all of them")
    assert not loop_has_time(None, 2.0)  # a file read as fast as it decodes
    assert loop_has_time(1000 / 60.0, 2.0) and not loop_has_time(1000 / 600.0, 1.4)  # a camera's rate, a fast one
    assert not loop_has_time(1000 / 60.0, 8.5) and loop_has_time(1000 / 60.0, None)  # no estimate: <= 60 fps
    assert not loop_has_time(1000 / 61.0, None)
    monkeypatch.delenv("DISPLAY", raising=False)
    assert side_work(RunConfig("i", "e", source="v", output="o.mp4")) == [decoding, drawing]
    assert side_work(RunConfig("i", "e", camera=0)) == [] and not presents(RunConfig("i", "e", camera=0))
    monkeypatch.setenv("DISPLAY", ":0")
    assert side_work(RunConfig("i", "e", camera=0)) == [drawing]
    assert side_work(RunConfig("i", "e", camera=0, display=False)) == []
    engines, video, inst_path, _ = setup  # a 25 fps clip; an instance without a latency estimate
    cores = physical_cores()
    for realtime, want in ((False, max(1, cores - 1)), (True, cores)):  # every frame as fast as it decodes; paced
        stats = str(tmp_path / "s{}.json".format(realtime))
        r = cli("run", inst_path, "--engines", engines.dir, "--source", video, "--no-display", "--max-frames", 2,
                "--stats", stats, "--output", str(tmp_path / "o{}.mp4".format(realtime)),
                *(["--realtime"] if realtime else []))
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.load(open(stats))["ort_threads"] == want
        said = "{} of {} cores infer, one is left to decoding the source and drawing".format(cores - 1, cores)
        assert (said in r.stderr) == (want < cores)
    r = cli("run", inst_path, "--engines", engines.dir, "--source", video, "--no-display", "--threads", 0)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Invalid value for '--threads': 0 is not in the range x>=1" in r.stderr
