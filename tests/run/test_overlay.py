"""What `mess-edge run` shows a person: fit into the network, the overlay against its reference, the text, the
output path rules, the statistics' lines and the one exit numbering."""

import collections
import os

import cv2
import numpy as np
import pytest

from mess_edge.errors import MessError
from mess_edge.naming import exit_label, histogram_text
from mess_edge.run.chain import FrameResult
from mess_edge.run.overlay import FONT_SCALE_MIN, Overlay, TextStyle, bgr_palette, overlay_reference
from mess_edge.run.preprocess import (NO_LABEL, Preprocessor, fit_geometry, labels_to_frame_reference,
                                      preprocess_reference)
from mess_edge.run.present import status_lines
from mess_edge.run.sink import output_kind
from mess_edge.run.stats import MIN_ESTIMATE_FRAMES, format_stats, speedup_estimate

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": "RGB", "scale": 255.0}


def test_fit_geometry_of_a_wide_frame():
    g = fit_geometry((272, 640), (128, 128), "letterbox")  # bikes.mp4's 2.35:1 into a square input
    assert g.content == (37, 0, 54, 128) and g.source == (0, 0, 272, 640)
    g = fit_geometry((272, 640), (128, 128), "crop")
    assert g.content == (0, 0, 128, 128) and g.source == (0, 184, 272, 272)
    g = fit_geometry((272, 640), (128, 128), "stretch")
    assert g.content == (0, 0, 128, 128) and g.source == (0, 0, 272, 640)
    with pytest.raises(MessError, match="got --fit squash; expected one of letterbox, crop, stretch"):
        fit_geometry((2, 2), (2, 2), "squash")


@pytest.mark.parametrize("fit", ["letterbox", "crop", "stretch"])
def test_preprocessor_fits_frames_like_the_reference(fit):
    rng = np.random.default_rng(5)
    pre = Preprocessor((32, 48), NORM, fit=fit)
    for hw in ((60, 200), (90, 30), (32, 48), (61, 47), (60, 200)):
        frame = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
        np.testing.assert_allclose(pre(frame), preprocess_reference(frame, (32, 48), NORM, fit), rtol=1e-5,
                                   atol=2e-5)
        assert pre.current == fit_geometry(hw, (32, 48), fit)
    if fit == "letterbox":  # the bars hold the mean colour: 0 after normalisation, no signal
        pre(rng.integers(0, 256, (10, 80, 3), dtype=np.uint8))
        assert np.abs(pre.out[0, :, :10]).max() < 0.01 and np.abs(pre.out[0, :, -10:]).max() < 0.01


def test_the_label_map_maps_back_onto_a_non_square_frame_and_the_bars_are_not_coloured():
    frame = np.full((120, 320, 3), 120, np.uint8)
    labels = np.zeros((64, 64), np.int32)
    g = fit_geometry(frame.shape[:2], labels.shape, "letterbox")
    y, x, h, w = g.content
    assert (y, h, x, w) == (20, 24, 0, 64)  # 120x320 -> 24x64 between bars of 20 rows
    labels[:y] = labels[y + h:] = 3                  # the network's answer on the bars
    labels[y:y + h, w // 2:] = 2                     # the right half of the frame
    back = labels_to_frame_reference(labels, g)
    assert back.shape == (120, 320) and set(np.unique(back[:, :160])) == {0} and set(np.unique(back[:, 160:])) == {2}
    out = Overlay(fit="letterbox")(frame, labels)
    assert out.shape == (120, 320, 3) and (out[:, :160] == 120).all()  # bars' class 3 never reaches the frame
    want = np.round(0.5 * 120 + 0.5 * bgr_palette()[2].astype(float))
    assert np.abs(out[:, 160:].reshape(-1, 3) - want).max() <= 1
    g = fit_geometry(frame.shape[:2], labels.shape, "crop")  # the centre 120x120 went in; the rest is unseen
    back = labels_to_frame_reference(np.full((64, 64), 4), g)
    assert (back[:, 100:220] == 4).all() and (back[:, :100] == NO_LABEL).all() and (back[:, 220:] == NO_LABEL).all()
    out = Overlay(fit="crop")(frame, np.full((64, 64), 4, np.int32))
    assert (out[:, :100] == 120).all() and (out[:, 220:] == 120).all() and (out[:, 100:220] != 120).all()


def test_overlay_matches_the_reference_on_random_frames_fits_and_sizes():
    rng = np.random.default_rng(7)
    row_copies = set()  # both ways of copying rows: runs of one map row (enlarging), np.take (shrinking)
    for trial in range(24):
        hw = tuple(int(v) for v in rng.integers(5, 260, 2))
        lab_hw = tuple(int(v) for v in rng.integers(4, 70, 2))
        fit, width = ("letterbox", "crop", "stretch")[trial % 3], (None, int(rng.integers(40, 400)))[trial % 2]
        frame = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
        labels = rng.integers(0, 6, lab_hw).astype(np.int32)
        overlay = Overlay(fit=fit, width=width)
        out = overlay(frame, labels)
        want = overlay_reference(frame, labels, fit=fit, width=width)
        assert out.shape == want.shape and np.abs(out.astype(int) - want).max() <= 1, (hw, lab_hw, fit, width)
        assert overlay(frame, labels) is out  # buffers allocated once per frame size
        row_copies.add(overlay.runs is None)
    assert row_copies == {True, False}
    assert Overlay(width=960)(np.zeros((1080, 1920, 3), np.uint8), np.zeros((8, 8), np.int32)).shape == (540, 960, 3)


def test_text_scales_with_the_frame_and_the_legend_names_the_classes():
    scales = [TextStyle(hw).scale for hw in ((240, 320), (480, 640), (720, 1280), (1080, 1920))]
    assert scales[0] == FONT_SCALE_MIN and scales == sorted(scales) and scales[-1] > 1.5 * scales[1]
    classes = ["background", "zero", "one", "two"]
    frame = np.full((720, 1280, 3), 255, np.uint8)  # a bright frame: where the old outline ghosted
    out = Overlay(classes=classes)(frame, np.zeros((32, 32), np.int32), ["exit e1 c0b0r0h0  conf 0.93"]).copy()
    panel = out[:40, :300]
    assert (panel <= 255 // 4 + 1).any() and (panel == 255).any()  # darkened panel, white text on it
    legend = out[-120:, :200]
    for k in (1, 2, 3):  # a swatch of each class colour
        assert (legend == bgr_palette()[k]).all(axis=2).sum() > 50
    assert not (legend == bgr_palette()[0]).all(axis=2).any()  # background is not in the legend
    plain = Overlay()(frame, np.zeros((32, 32), np.int32))
    assert (plain == 255).all()  # no classes, no lines: nothing drawn


def test_status_lines_say_the_exit_and_its_confidence_on_every_frame():
    times = collections.OrderedDict([("segment_0", 1.0), ("head_e1_c0b0r0h0", 0.25), ("total", 1.5)])
    roles = {"segment_0": "segment", "head_e1_c0b0r0h0": "head"}
    early = FrameResult(None, 1, "head_e1_c0b0r0h0", 0.934, times)
    assert status_lines(early, roles, None) == ["exit e1 c0b0r0h0  conf 0.93", "seg 1.0  head 0.2 ms",
                                                "infer 1.5 ms"]  # no fps before the first second
    final = FrameResult(None, "final", "final", None, times, (1, 0.62))
    assert status_lines(final, roles, 41.26)[::2] == ["exit final  (e1 conf 0.62: too low)", "infer 1.5 ms  41.3 fps"]
    assert status_lines(FrameResult(None, "final", "final", None, times), roles, 9.0)[0] == (
        "exit final  (no early exit tried)")


def test_one_exit_numbering_and_no_reprs():
    assert (exit_label(0), exit_label("head_e2_c1b0r0h1"), exit_label("final")) == ("e0", "e2 c1b0r0h1", "final")
    text = histogram_text({"final": 319, "head_e1_c0b0r0h0": 181})
    assert text == "e1 c0b0r0h0 181 (36.2%), final 319 (63.8%)" and "{" not in text and "'" not in text


def test_output_is_a_video_or_a_folder_never_a_surprise(tmp_path):
    assert output_kind("out.mp4") == "video" and output_kind("OUT.AVI") == "video"
    assert output_kind(str(tmp_path)) == "folder" and output_kind("frames/") == "folder"
    for bad in ("out.xyz", "out2.mp", "frames"):
        with pytest.raises(MessError, match=r"got --output {}; expected a video path \(.mp4, .avi".format(bad)):
            output_kind(bad)
    assert not os.path.exists("frames")


def _stats(frames, exits, fo_frames, speedup):
    return {"frames": frames, "frames_in": frames, "dropped": 0, "corrupt": 0, "reconnects": 0, "end_reason": "x",
            "frames_presented": 0, "not_presented": 0, "frames_written": 0, "exit_histogram": exits,
            "latency_ms": {}, "fps": None, "inference_fps": None, "final_only": {"frames": fo_frames},
            "speedup_vs_final_only": speedup, "fit": "letterbox",
            "fit_geometry": {"frame_hw": [272, 640], "input_hw": [128, 128], "content": [37, 0, 54, 128],
                             "source": [0, 0, 272, 640]}}


def test_the_in_loop_speedup_is_shown_only_when_it_means_something():
    s = _stats(250, {"final": 249, "head_e1_c0b0r0h0": 1}, 20, 1.20)  # bikes.mp4: 249 of 250 at the final exit
    assert speedup_estimate(s)[0] is None and "more than the exits taken allow" in speedup_estimate(s)[1]
    text = format_stats(s)
    assert "1.20x is more than the exits taken allow (at most 1.00x" in text and "exits: e1 c0b0r0h0 1 (0.4%)" in text
    assert "fit: letterbox (640x272 frames into the 128x128 input, the image 128x54 between bars)" in text
    s = _stats(5, {"final": 3, "head_e1_c0b0r0h0": 2}, 1, 1.89)  # one paired frame
    assert "not shown (only 1 paired frames, fewer than {})".format(MIN_ESTIMATE_FRAMES) in format_stats(s)
    s = _stats(500, {"final": 300, "head_e1_c0b0r0h0": 200}, 20, 1.05)
    assert speedup_estimate(s) == (1.05, None)
    assert "in-loop speedup estimate 1.05x over final-only (20 paired frames; an estimate" in format_stats(s)
    assert "speedup" not in format_stats(_stats(5, {"final": 5}, 0, None))  # --final-only-frames 0: not a word


def test_a_window_sized_overlay_keeps_the_frames_aspect():
    frame = cv2.resize(np.arange(48, dtype=np.uint8).reshape(6, 8), (640, 480), interpolation=cv2.INTER_NEAREST)
    frame = np.dstack([frame] * 3)
    out = Overlay(width=320)(frame, np.zeros((16, 16), np.int32))
    assert out.shape == (240, 320, 3) and np.abs(out.astype(int) - frame[::2, ::2]).max() <= 1


def test_the_presented_line_explains_only_frames_not_presented():
    s = dict(_stats(10, {"final": 10}, 0, None), frames_presented=10, frames_written=10)
    assert "presented 10 of 10, written 10" in format_stats(s)
    s.update(frames_presented=7, not_presented=3, frames_written=7)
    assert ("presented 7 of 10 (3 not presented: the overlay and writer could not keep up; a live source's newest "
            "result wins), written 7") in format_stats(s)
