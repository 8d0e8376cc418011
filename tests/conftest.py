"""Shared fixtures: a small DigitScenes folder and tiny trained checkpoints (built once per session)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests live in one folder per stage (tests/run/, tests/build/, ...); their shared helpers (_fixtures.py) here.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """DigitScenes at 64x64: 32 train, 16 cal, 16 test images."""
    from mess_edge.data.digitscenes import generate_digitscenes

    out = tmp_path_factory.mktemp("scenes") / "ds"
    generate_digitscenes(str(out), size=64, n_train=32, n_cal=16, n_test=16, seed=3)
    return str(out)


TINY_SPACE = "c0b0r0h0,c1b1r1h1"


@pytest.fixture(scope="session")
def tiny_ckpts(scenes, tmp_path_factory):
    """(stage-1, stage-2) checkpoints of the `tiny` preset: a few steps each, 2 architectures per exit."""
    from mess_edge.train.trainer import TrainConfig, train

    d = tmp_path_factory.mktemp("ckpt")
    s1, s2 = str(d / "s1.pt"), str(d / "s2.pt")
    train(TrainConfig(data=scenes, out=s1, stage=1, preset="tiny", epochs=1, batch_size=8, val_images=0),
          log=lambda *a: None)
    train(TrainConfig(data=scenes, out=s2, stage=2, init=s1, space=TINY_SPACE, epochs=1, batch_size=8,
                      max_steps=2, val_images=0), log=lambda *a: None)
    return s1, s2
