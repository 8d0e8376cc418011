"""Progress: tqdm's bar on a terminal, bounded newline-terminated lines in a log, no tqdm needed on a device."""

import io
import os
import subprocess
import sys

import pytest

from mess_edge.progress import LineProgress, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_log_gets_a_line_every_ten_percent_and_no_carriage_return():
    log = io.StringIO()
    with progress(1000, "calibrate cal", stream=log, unit="images") as bar:
        assert isinstance(bar, LineProgress)  # a StringIO is no terminal
        for i in range(1000):
            bar.set_postfix_str("loss {:.2f}".format(1.0 / (i + 1)))
            bar.update(1)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert len(lines) == 10
    assert [line.split(":")[1].split("%")[0].strip() for line in lines] == [str(p) for p in range(10, 101, 10)]
    assert lines[0].startswith("calibrate cal: 10% 100/1000 images, ") and "s left, loss 0.01" in lines[0]
    assert lines[-1].startswith("calibrate cal: 100% 1000/1000 images, ") and lines[-1].endswith(", loss 0.00")
    assert "left" not in lines[-1]


def test_a_loop_stopped_short_gets_its_last_line_and_updates_may_jump():
    log = io.StringIO()
    with progress(100, "epoch 1/2", stream=log) as bar:
        for _ in range(37):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch 1/2: 10% 10/100 it", "epoch 1/2: 20% 20/100 it",
                                                     "epoch 1/2: 30% 30/100 it", "epoch 1/2: 37% 37/100 it"]
    log = io.StringIO()
    with progress(7, "eval test", stream=log, step_percent=5) as bar:  # 16-image batches over 100 images
        for _ in range(7):
            bar.update(1)
    assert len(log.getvalue().splitlines()) == 7  # one per update when each update crosses a step
    silent = io.StringIO()
    with progress(10, "rank 1", enabled=False, stream=silent) as bar:
        bar.update(10)
    assert silent.getvalue() == ""


def test_terminal_gets_tqdm_and_no_tqdm_falls_back_to_lines(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            bar = progress(5, "train", stream=tty)
            assert isinstance(bar, tqdm.tqdm)
            bar.update(5)
            bar.close()
            drawn = _read_all(master)
            assert "train: 100%" in drawn and "5/5" in drawn  # tqdm's bar (redrawn in place on a terminal)
            monkeypatch.setitem(sys.modules, "tqdm", None)  # a device install: no tqdm
            assert isinstance(progress(5, "bench", stream=tty), LineProgress)
    finally:
        os.close(master)
        os.close(slave)


def _read_all(fd):
    import select

    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode()


def test_eval_in_a_log_has_bounded_lines_without_carriage_returns(tiny_ckpts, scenes):
    r = subprocess.run([sys.executable, "-m", "mess_edge.cli", "eval", tiny_ckpts[1], "--data", scenes, "--json"],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    assert "\r" not in r.stderr
    lines = r.stderr.splitlines()
    assert 1 <= len(lines) <= 11 and lines[-1].startswith("eval test: 100% 16/16 images, ")


def test_train_epochs_log_progress_lines(scenes, tmp_path, capsys):
    from mess_edge.train.trainer import TrainConfig, train

    train(TrainConfig(data=scenes, out=str(tmp_path / "s1.pt"), preset="tiny", epochs=2, batch_size=8, val_images=0),
          log=lambda *a: None)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    # 32 images / batch 8 = 4 batches per epoch: one line per batch (each crosses 10 %), 2 epochs.
    assert [line.split(",")[0] for line in lines] == ["epoch {}/2: {}% {}/4 batches".format(e, 25 * b, b)
                                                      for e in (1, 2) for b in (1, 2, 3, 4)]
    assert all(" img/s" in line and "loss " in line for line in lines)
