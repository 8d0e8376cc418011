"""Artifacts: folders made under a temporary name get the user's umask, not mkdtemp's 0700."""

import os
import stat

from mess_edge.artifacts import make_temp_dir


def test_temp_dirs_get_an_ordinary_folders_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        shared = make_temp_dir(str(tmp_path), ".a-")
        os.umask(0o027)
        group = make_temp_dir(str(tmp_path), ".b-", ".tmp")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(group).st_mode) == 0o750 and group.endswith(".tmp")
    assert os.path.dirname(shared) == str(tmp_path) and not os.listdir(shared)
