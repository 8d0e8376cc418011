"""Writing artifacts safely and identifying them by checksum (device side: no torch)."""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile


def sha256_file(path, chunk_bytes=1 << 20):
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or Ctrl-C inside the block leaves the old file (or nothing) in place, never a half-written one.
    The temporary name keeps the final suffix so writers that look at it (np.savez, cv2) behave.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    stem, suffix = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix="." + stem + ".", suffix=".tmp" + suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; an artifact gets the ordinary permissions of a new file (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes_atomic(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_json_atomic(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path, what="file"):
    """Read a JSON artifact, turning a missing or corrupt file into a MessError naming it."""
    from mess_edge.errors import MessError

    if not os.path.isfile(path):
        raise MessError("{} not found: {}".format(what, path))
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise MessError("{} {} is not valid JSON ({}); regenerate it".format(what, path, e))


def check_output_folder(out_dir, marker="manifest.json"):
    """MessError unless ``out_dir`` is absent, empty, or a folder this tool wrote before (holds ``marker``)."""
    from mess_edge.errors import MessError

    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or (
            os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, marker)))):
        raise MessError("{} exists and is not an export folder (no {}); choose another --out".format(out_dir, marker))


def replace_folder(tmp, out_dir, marker="manifest.json"):
    """Swap the finished folder ``tmp`` in: the old one (if any) is removed only after the new one is complete."""
    if os.path.exists(out_dir):
        check_output_folder(out_dir, marker)
        old = out_dir.rstrip("/") + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
