"""MP4 output of `run.py render --video`: one H.264 file per rendered branch and a captioned side-by-side.

Videos are written through imageio-ffmpeg (the ffmpeg binary ships in the imageio-ffmpeg wheel)
into a temporary file beside the target, renamed onto it only when the last frame is in (the project's
atomic-write rule). Frames are padded to even sizes (yuv420p needs them) by repeating the last row/column.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def even_pad(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> the same image padded to even H and W by repeating its last row / column."""
    h, w = img.shape[:2]
    ph, pw = h % 2, w % 2
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge") if (ph or pw) else img


class Mp4Writer:
    """Frames [H, W, 3] uint8 (all the same size) -> `path`, replaced atomically when close() succeeds;
    abort() drops the temporary file and leaves `path` as it was."""

    def __init__(self, path: Path, fps: float):
        self.path = Path(path)
        self.fps = float(fps)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.{os.getpid()}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.n_frames = 0
        self.size: tuple[int, int] | None = None      # (H, W) of the first frame, after padding
        self._gen = None

    def _start(self, height: int, width: int) -> None:
        import imageio_ffmpeg

        # the temporary name does not end in .mp4: name the container; quality 8 of 10 keeps label edges crisp
        self._gen = imageio_ffmpeg.write_frames(str(self.tmp), (width, height), fps=self.fps, codec="libx264",
                                                quality=8, macro_block_size=1, ffmpeg_log_level="error",
                                                output_params=["-f", "mp4"])
        self._gen.send(None)

    def append(self, frame: np.ndarray) -> None:
        assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8, (frame.shape, frame.dtype)
        frame = even_pad(frame)
        if self.size is None:
            self.size = frame.shape[:2]
            self._start(*self.size)
        assert frame.shape[:2] == self.size, f"{self.path.name}: frame size {frame.shape[:2]} != {self.size}"
        self._gen.send(np.ascontiguousarray(frame))
        self.n_frames += 1

    def close(self) -> Path:
        if self._gen is None:
            raise ValueError(f"{self.path}: no frames to write")
        self._gen.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            if self._gen is not None:
                self._gen.close()
        except Exception:   # noqa: BLE001 - the writer may be broken already; the temporary file goes regardless
            pass
        self.tmp.unlink(missing_ok=True)


def _font(size_px: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size_px)       # Pillow's bundled scalable font (FreeType builds)
    except (TypeError, OSError):
        return ImageFont.load_default()


def caption_bar_height(image_height: int) -> int:
    return max(12, image_height // 8)


def captioned(img: np.ndarray, text: str) -> np.ndarray:
    """[H, W, 3] uint8 -> [H + bar, W, 3]: a black bar above the image with `text` centred in white."""
    h, w = img.shape[:2]
    bar = caption_bar_height(h)
    canvas = Image.new("RGB", (w, h + bar), (0, 0, 0))
    canvas.paste(Image.fromarray(img), (0, bar))
    draw = ImageDraw.Draw(canvas)
    font = _font(max(8, int(bar * 0.75)))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((w - (right - left)) / 2 - left, (bar - (bottom - top)) / 2 - top), text, fill=(255, 255, 255),
              font=font)
    return np.asarray(canvas)


def side_by_side(panels: list[np.ndarray], captions: list[str]) -> np.ndarray:
    """Panels [H, W, 3] uint8 (one size), each under its caption, left to right."""
    assert panels and len(panels) == len(captions)
    return np.concatenate([captioned(p, c) for p, c in zip(panels, captions)], axis=1)


def count_frames(path: Path) -> int:
    """Frames in a video file, decoded by ffmpeg (for checks)."""
    import imageio.v2 as iio

    reader = iio.get_reader(Path(path), format="FFMPEG")
    try:
        return int(reader.count_frames())
    finally:
        reader.close()
