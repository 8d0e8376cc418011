"""Artifacts: folders made under a temporary name get the user's umask (read once at import: reading it means
setting it, a race with the capture and presenter threads), not mkdtemp's 0700."""

import os
import stat

from mess_edge.artifacts import DIR_MODE, FILE_MODE, _process_umask, atomic_file, make_temp_dir


def test_temp_dirs_get_an_ordinary_folders_permissions(tmp_path):
    umask = _process_umask()
    assert DIR_MODE == 0o777 & ~umask and FILE_MODE == 0o666 & ~umask
    d = make_temp_dir(str(tmp_path), ".b-", ".tmp")
    assert stat.S_IMODE(os.stat(d).st_mode) == DIR_MODE and d.endswith(".tmp")
    assert os.path.dirname(d) == str(tmp_path) and not os.listdir(d)


def test_atomic_files_get_an_ordinary_files_permissions(tmp_path):
    path = str(tmp_path / "x.bin")
    with atomic_file(path) as f:
        f.write(b"abc")
    assert stat.S_IMODE(os.stat(path).st_mode) == FILE_MODE and open(path, "rb").read() == b"abc"
    assert os.listdir(str(tmp_path)) == ["x.bin"]
