"""Writing artifacts safely and identifying them by checksum (device side: no torch).

One output discipline for every command (``check_outputs``): before any work, every output path is resolved and
compared with every input path and with the other outputs, and its folder is proved writable; then every write
goes through ``atomic_path`` / ``atomic_file``, which write a temporary file beside the exact final name, fsync
it, and rename it over the final name (the folder is fsynced too). A crash, Ctrl-C or SIGTERM leaves the old file
(or nothing), never a half-written one, and never an orphaned temporary file.
"""

import collections
import contextlib
import hashlib
import json
import os
import shutil
import tempfile


def _process_umask():
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status).

    ``os.umask`` can only be read by setting it, and the setting is process-wide: threads (capture, presenter)
    creating files at that moment would get mode 0666. It is read once, here at import, before those threads.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# An artifact gets the ordinary permissions of a new file (mkstemp would leave it 0600).
FILE_MODE = 0o666 & ~_process_umask()
DIR_MODE = 0o777 & ~_process_umask()


def sha256_file(path, chunk_bytes=1 << 20):
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_path(path, directory=False):
    """fsync a file (or a folder's entry table) by path; folders that cannot be opened are skipped (not Linux)."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems refuse fsync on a folder; the data itself must reach the disk
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; fsync it and rename it onto ``path`` only if the block succeeds.

    A crash or Ctrl-C inside the block leaves the old file (or nothing) in place, never a half-written one.
    The temporary name ends in the final suffix so writers that choose a format by it (cv2, matplotlib) behave;
    writers that append a suffix of their own (np.savez) must write to an open file instead: ``atomic_file``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, suffix = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix="." + stem + ".", suffix=".tmp" + suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise OSError("the writer of {} left no file at its temporary name {}".format(path, tmp))
        _fsync_path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_path(folder, directory=True)


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """Yield an open file whose contents appear at exactly ``path`` only if the block succeeds (see atomic_path)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()


def make_temp_dir(parent, prefix, suffix=""):
    """A new empty folder in ``parent`` (a temporary name to rename into place) with the permissions of an
    ordinary new folder (0777 & ~umask): mkdtemp makes it 0700, which would survive the rename."""
    tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
    os.chmod(tmp, DIR_MODE)
    return tmp


def write_bytes_atomic(path, data):
    with atomic_file(path) as f:
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


Output = collections.namedtuple("Output", ["flag", "path", "folder", "replaces"])
Output.__new__.__defaults__ = (False, False)
Output.__doc__ = """An output a command will write: ``flag`` as the user typed it (--out), ``path``; ``folder``: a
folder of files (not one file); ``replaces``: the folder is swapped in whole (export, data), so anything inside it
now is lost."""


def _real(path):
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _inside(path, folder):
    """Whether resolved ``path`` lies strictly inside resolved ``folder``."""
    return path != folder and path.startswith(folder.rstrip(os.sep) + os.sep)


def check_outputs(outputs, inputs=()):
    """Refuse, before any work, outputs that would destroy an input or each other, or cannot be written.

    ``outputs``: Output tuples (or (flag, path) pairs; a None path is skipped). ``inputs``: (label, path) pairs;
    a folder input stands for every file inside it. Paths are compared resolved (symlinks, ``..``). Raises
    MessError naming the user's paths: an output equal to an input, an existing file inside an input folder,
    an output folder that is or (when it ``replaces``) holds an input, two outputs on one path, a folder where a
    file is expected, or a destination folder where this process cannot create a file.
    """
    from mess_edge.errors import MessError

    outs = [o if isinstance(o, Output) else Output(*o) for o in outputs if o is not None and o[1] is not None]
    ins = [(label, os.fspath(p), _real(p)) for label, p in inputs if p is not None]
    seen = {}
    for o in outs:
        r = _real(o.path)
        for label, given, ri in ins:
            clash = r == ri or (os.path.isdir(ri) and _inside(r, ri) and os.path.isfile(r)) or (
                o.folder and o.replaces and _inside(ri, r))
            if clash:
                raise MessError("got {} {}, which would overwrite the input {} {}; expected a new path; try "
                                "another {}".format(o.flag, o.path, label, given, o.flag))
        if r in seen:
            raise MessError("got {} and {} both {}; expected a different path for each".format(
                seen[r], o.flag, o.path))
        seen[r] = o.flag
        check_writable(o)


def check_writable(output):
    """MessError unless this process can create ``output`` (a file, or a folder when ``output.folder``)."""
    from mess_edge.errors import MessError

    o = output if isinstance(output, Output) else Output(*output)
    path = os.path.abspath(os.fspath(o.path))
    if os.path.isdir(path) and not o.folder:
        raise MessError("got {} {}, which is a folder; expected a file path; try {}".format(
            o.flag, o.path, os.path.join(o.path, "out" + (os.path.splitext(o.path)[1] or ".json"))))
    if os.path.exists(path) and o.folder and not os.path.isdir(path):
        raise MessError("got {} {}, which is a file; expected a folder path".format(o.flag, o.path))
    folder = path if o.folder and not o.replaces else os.path.dirname(path)  # replaced: built beside it
    while not os.path.exists(folder):  # the nearest folder that exists: the rest will be created in it
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise MessError("got {} {}, but {} is a file; expected a path inside a folder".format(o.flag, o.path, folder))
    try:
        fd, probe = tempfile.mkstemp(prefix=".mess-edge-probe.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise MessError("cannot write {} {}: {} in {}; expected a folder this user can write; try another "
                        "{}".format(o.flag, o.path, e.strerror or e, folder, o.flag))


def folder_files(folder, names):
    """(label, path) inputs for the files ``names`` inside ``folder`` (e.g. an engine folder's sidecar and graphs)."""
    return [(os.path.join(folder, n), os.path.join(folder, n)) for n in names]


@contextlib.contextmanager
def folder_lock(folder, what):
    """Hold an exclusive lock on ``folder`` while the block runs; MessError at once if another process holds it.

    The lock is flock(2) on the folder itself: no lock file to leave behind, released by the kernel when the
    process dies (even by SIGKILL). Where fcntl does not exist (not POSIX) the block runs unlocked.
    """
    from mess_edge.errors import MessError

    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MessError("got {} while another process is writing there (locked); expected one {} per folder "
                            "at a time; try again when it has finished".format(folder, what))
        yield
    finally:
        os.close(fd)


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
