"""The demo report's one speedup sentence: measured, predicted, and the machine's drift taken out."""

from mess_edge.demo import speed_sentence


def _bench(inst_ms, final_ms, mono_ms, predicted=None):
    configs = {"instance": {"mean_ms": inst_ms}, "final-only": {"mean_ms": final_ms},
               "monolithic": {"mean_ms": mono_ms}}
    base = min(("final-only", "monolithic"), key=lambda k: configs[k]["mean_ms"])
    return {"configs": configs, "baseline": base, "speedup": configs[base]["mean_ms"] / inst_ms,
            "speedup_vs_final_only": final_ms / inst_ms, "predicted_speedup": predicted, "frames": 200, "reps": 3}


def test_sentence_says_faster_with_prediction_and_drift():
    b = _bench(4.616, 4.889, 4.806, predicted=4.438 / 4.199)
    b["predicted_ms"] = {"instance": 4.199, "final-only": 4.438}
    text = speed_sentence(b)
    assert text.startswith("early exit is faster than the plain model on this machine: measured 4.616 vs 4.806 ms "
                           "(monolithic), speedup 1.04x")
    assert "the search predicted 1.06x from the latency table over the chained final-only path, where bench " \
        "measured 1.06x (" in text  # 4.889 / 4.616
    assert "final-only 4.438 ms vs measured 4.889 ms (+10.2%)" in text
    assert "instance 4.199 ms vs measured 4.616 ms (+9.9%)" in text
    # 4.616 / 4.199 = 1.0993 against the final-only path's 1.1016: -0.2% once the drift is taken out
    assert "final-only path +10.2% against the latency table's conditions" in text
    assert "instance's prediction is off by -0.2%." in text


def test_sentence_within_band_and_without_prediction():
    text = speed_sentence(_bench(2.00, 2.02, 2.03))
    assert "neither faster nor slower than the plain model on this machine (within 2%)" in text
    assert "predicted" not in text and text.endswith("(mess-edge bench --instance).")
    assert "slower than the plain model" in speed_sentence(_bench(2.2, 2.0, 2.1)).split(":")[0]
