"""Writing artifacts safely and identifying them by checksum (device side: no torch)."""

import contextlib
import hashlib
import json
import os
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
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask():
    """The process's umask (reading it means setting it: set it straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def make_temp_dir(parent, prefix, suffix=""):
    """A new empty folder in ``parent`` (a temporary name to rename into place) with the permissions of an
    ordinary new folder (0777 & ~umask): mkdtemp makes it 0700, which would survive the rename."""
    tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


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
