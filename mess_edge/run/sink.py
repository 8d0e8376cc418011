"""Where ``mess-edge run`` writes overlaid frames: a video file or a folder of PNG frames.

cv2 is imported inside the functions that need it.
"""

import os

from mess_edge.errors import MessError

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")


def output_kind(path):
    """"video" for a path with a video extension, "folder" (PNG frames) for an existing folder or a path ending
    in a slash; anything else (``out.xyz``, the typo ``out.mp``, a bare ``out``) is a MessError, never a folder
    made by surprise."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        return "folder"
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTS:
        return "video"
    raise MessError("got --output {}; expected a video path ({}) or a folder for PNG frames (an existing one, or "
                    "a path ending in /); try --output {}.mp4 or --output {}/".format(
                        path, ", ".join(VIDEO_EXTS), os.path.splitext(path)[0], os.path.splitext(path)[0]))


class FrameSink(object):
    """Writes overlaid frames: a video path (VIDEO_EXTS) (cv2.VideoWriter, 'mp4v'; MJPG for .avi) or a
    folder of PNG frames (000000.png, ...; see output_kind). The video is written beside its path and moved there by
    ``close()``, which the run calls in ``finally``: an interrupted run still leaves a playable file."""

    def __init__(self, path, fps=30.0):
        self.path, self.fps, self.written, self.writer, self.size = path, float(fps or 30.0), 0, None, None
        self.video = output_kind(path) == "video"
        if self.video:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            stem, ext = os.path.splitext(os.path.basename(path))
            self.tmp = os.path.join(folder, ".{}.partial{}".format(stem, ext))
        else:
            os.makedirs(path, exist_ok=True)

    def write(self, image):
        import cv2

        if self.video:
            if self.writer is None:
                self.size = (image.shape[1], image.shape[0])
                fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.lower().endswith(".avi") else "mp4v"))
                self.writer = cv2.VideoWriter(self.tmp, fourcc, self.fps, self.size)
                if not self.writer.isOpened():
                    raise MessError("cannot open a video writer for {}; expected OpenCV with mp4v; try --output "
                                    "a folder (PNG frames) or a .avi path".format(self.path))
            if (image.shape[1], image.shape[0]) != self.size:  # sources whose frame size changes mid-run
                image = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
            self.writer.write(image)
        elif not cv2.imwrite(os.path.join(self.path, "{:06d}.png".format(self.written)), image):
            raise MessError("cannot write PNG frames to {}; expected a writable folder".format(self.path))
        self.written += 1

    def close(self):
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            os.replace(self.tmp, self.path)
