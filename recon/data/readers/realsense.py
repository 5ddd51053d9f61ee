"""Intel RealSense recordings played back with pyrealsense2: .bag (ROS1, the RealSense Viewer's format) or
.db3 (ROS2; pyrealsense2 2.59's `rs.recorder` writes only this, and refuses a .bag name).

SRC = the recording file. It must hold a depth stream (Z16) and a colour stream (RGB8, BGR8, RGBA8 or
BGRA8); other streams (IR, IMU) are ignored. Tested end to end with .db3 files written by
pyrealsense2's software device and recorder (tests/recon/data/test_own_captures.py); a real camera's
.bag could not be tested here (no camera, no sample file), only that pyrealsense2 opens .bag files
with its ROS1 reader (a broken one fails in "ros reader: Error reading version line").

- Playback: `rs.config.enable_device_from_file(SRC, repeat_playback=False)` with real time off (set
  on the resolved playback device before the pipeline starts), so frames are not dropped for speed;
  every frameset that has both depth and colour is one frame, numbered in playback order (frame ids
  000000, 000001, ...; scene.json keeps each one's device frame numbers and timestamp).
- librealsense's syncer does not always start a playback cleanly. Measured on a 10-frame test
  recording played 120 times by three processes at once: 4 playbacks began by pairing the last
  depth frame with every colour frame, and 1 lost the first frameset. So a frameset whose depth and
  colour timestamps are more than half a frame period apart is never used (before the first good
  one the playback is restarted, up to 3 times), and a lost first frameset is just not converted.
- Registration: depth is aligned to the colour camera with `rs.align(rs.stream.color)` (librealsense
  re-projects each depth pixel with the recorded extrinsics), so the output K is the colour
  stream's intrinsics (fx, fy, ppx, ppy; librealsense's pixel centres are integer coordinates, as
  here). A colour distortion model with non-zero coefficients is noted and ignored (D400 colour
  streams report zero coefficients).
- Depth units: the depth sensor's `depth_scale` (metres per unit, 0.001 on most models) from the
  recording; 0 = no measurement.
- Poses: a recording has none, so they are estimated with RGB-D odometry
  (recon/data/readers/odometry.py: Open3D's hybrid colour + depth odometry, chained frame to
  keyframe; its measured accuracy is there). The first frame's camera is the world frame. This is
  the geometry-only path: the trajectory drifts (no loop closure), fine for a room corner, not for a
  whole floor. Frames the odometry cannot register are an error naming them (--skip-bad-frames
  drops them with a warning; the next frame is registered to the last good one).
- --stride N keeps every Nth frameset before the odometry (larger steps are harder to track);
  --max-frames N stops after N tracked frames.
- The file is played twice: once for the odometry (frames are not kept in memory), once to write;
  the second pass finds each frame by its device frame numbers.

No labels: empty classes.json, no gt/, no masks/.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recon.data.readers.common import ConvertPlan, K_from_values, ReaderError, check_K, depth_raw_to_mm
from recon.data.readers.odometry import OdometrySettings, RGBDOdometry
from recon.data.scene import FrameRecord

KIND = "realsense"
OPTIONS = ()
SUFFIXES = (".bag", ".db3")
WAIT_MS = 500               # a playback that delivers nothing for this long and reports "stopped" has ended


def _rs():
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        raise ReaderError(f"--from realsense needs pyrealsense2 ({exc}); install it with "
                          "`.venv/bin/pip install pyrealsense2`") from None
    return rs


@dataclass
class _Info:
    K: np.ndarray
    size: tuple[int, int]
    depth_scale: float
    color_format: str
    distortion: str


class _Playback:
    """One pass over a recording: yields (position, depth frame number, colour frame number, timestamp ms,
    colour [H, W, 3] uint8 RGB, raw depth [H, W] uint16 aligned to colour)."""

    def __init__(self, src: Path):
        rs = self.rs = _rs()
        self.src = src
        self.unpaired = 0                   # framesets skipped because depth and colour are far apart in time
        self.restarts = 0
        self._start()
        try:
            streams = {s.stream_type(): s for s in self.profile.get_streams()}
            if rs.stream.depth not in streams:
                raise ReaderError(f"{src}: no depth stream (the recording needs depth and colour)")
            if rs.stream.color not in streams:
                raise ReaderError(f"{src}: no colour stream (the recording needs depth and colour)")
            cprof = streams[rs.stream.color].as_video_stream_profile()
            fmt = cprof.format()
            names = {rs.format.rgb8: "rgb8", rs.format.bgr8: "bgr8", rs.format.rgba8: "rgba8", rs.format.bgra8: "bgra8"}
            if fmt not in names:
                raise ReaderError(f"{src}: colour stream format {fmt} is not supported (rgb8, bgr8, rgba8, bgra8)")
            intr = cprof.get_intrinsics()
            K = K_from_values(intr.fx, intr.fy, intr.ppx, intr.ppy)
            check_K(K, f"{src} (colour intrinsics)")
            coeffs = [float(c) for c in intr.coeffs]
            self.info = _Info(K=K, size=(intr.width, intr.height),
                              depth_scale=float(self.profile.get_device().first_depth_sensor().get_depth_scale()),
                              color_format=names[fmt],
                              distortion=f"{intr.model} {coeffs}" if any(abs(c) > 1e-9 for c in coeffs) else "none")
            if not self.info.depth_scale > 0:
                raise ReaderError(f"{src}: depth scale {self.info.depth_scale} is not positive")
            fps = min(streams[rs.stream.depth].fps(), streams[rs.stream.color].fps()) or 30
            self.pair_tolerance_ms = 0.5 * 1000.0 / fps + 1.0
            self.align = rs.align(rs.stream.color)
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        rs = self.rs
        cfg = rs.config()
        try:
            cfg.enable_device_from_file(str(self.src), repeat_playback=False)
            self.pipe = rs.pipeline()
            # real time off *before* the pipeline starts playing (the resolved playback device is the one
            # start() uses): switched off after start, the first frames can be dropped
            cfg.resolve(self.pipe).get_device().as_playback().set_real_time(False)
            self.profile = self.pipe.start(cfg)
        except RuntimeError as exc:
            raise ReaderError(f"{self.src}: cannot be played back as a RealSense recording ({exc})") from None
        self.playback = self.profile.get_device().as_playback()
        if self.playback.is_real_time():
            self.close()
            raise ReaderError(f"{self.src}: playback could not be switched to non-real-time (frames would be dropped)")

    def frames(self):
        """The framesets in playback order (see the module docstring on the syncer): a frameset whose depth and
        colour timestamps differ by more than half a frame period is never used, and when that happens
        before the first good one the playback is restarted (up to 3 times)."""
        rs = self.rs
        pos = 0
        while True:
            ok, fs = self.pipe.try_wait_for_frames(WAIT_MS)
            if not ok:
                if self.playback.current_status() == rs.playback_status.stopped:
                    return
                continue
            d, c = fs.get_depth_frame(), fs.get_color_frame()
            if not d or not c:
                continue
            if abs(d.get_timestamp() - c.get_timestamp()) > self.pair_tolerance_ms:
                if pos == 0 and self.restarts < 3:
                    self.close()
                    self.restarts += 1
                    self._start()
                    continue
                self.unpaired += 1
                continue
            fs = self.align.process(fs)
            d, c = fs.get_depth_frame(), fs.get_color_frame()
            color = np.asanyarray(c.get_data())
            if self.info.color_format in ("bgr8", "bgra8"):
                color = color[..., 2::-1]
            color = np.ascontiguousarray(color[..., :3], dtype=np.uint8)
            depth = np.asanyarray(d.get_data()).astype(np.uint16, copy=True)
            W, H = self.info.size
            if color.shape[:2] != (H, W) or depth.shape != (H, W):
                raise ReaderError(f"{self.src}: frameset {pos}: colour {color.shape[1]}x{color.shape[0]}, aligned "
                                  f"depth {depth.shape[1]}x{depth.shape[0]}, expected {W}x{H}")
            yield pos, int(d.get_frame_number()), int(c.get_frame_number()), float(c.get_timestamp()), color, depth
            pos += 1

    def close(self) -> None:
        try:
            self.pipe.stop()
        except RuntimeError:
            pass


def read(src: Path, *, stride: int = 1, max_frames: int | None = None, skip_bad_frames: bool = False,
         odometry: OdometrySettings | None = None) -> ConvertPlan:
    src = Path(src)
    if not src.is_file():
        raise ReaderError(f"{src}: no such file (a RealSense recording, {' or '.join(SUFFIXES)})")
    if src.suffix.lower() not in SUFFIXES:
        raise ReaderError(f"{src}: expected a RealSense recording ({' or '.join(SUFFIXES)})")
    pb = _Playback(src)
    info = pb.info
    odo = RGBDOdometry(info.K, info.size, odometry)
    picked: list[tuple[int, int, int, float]] = []        # (position, depth #, colour #, t ms) of tracked frames
    bad: list[str] = []
    try:
        bar = tqdm(desc="odometry", unit=" frames", dynamic_ncols=True, mininterval=1.0)
        for pos, dnum, cnum, t, color, raw in pb.frames():
            if pos % stride:
                continue
            if max_frames is not None and len(picked) >= max_frames:
                break
            bar.update(1)
            depth_mm = depth_raw_to_mm(raw, info.depth_scale)
            where = f"{src}: frameset {pos} (depth #{dnum}, t = {t:.1f} ms)"
            if not depth_mm.any():
                msg = f"{where}: no valid depth"
            elif not odo.add(pos, color, depth_mm.astype(np.float32) / 1000.0):
                msg = f"{where}: RGB-D odometry could not register it to the previous frames"
            else:
                picked.append((pos, dnum, cnum, t))
                continue
            bad.append(msg)
            if skip_bad_frames:
                warnings.warn(f"skipping frame: {msg}")
        bar.close()
    finally:
        pb.close()
    if bad and not skip_bad_frames:
        shown = "\n".join(f"  - {m}" for m in bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise ReaderError(f"{len(bad)} bad frame(s) (pass --skip-bad-frames to drop them with a warning; a smaller "
                          f"--stride makes tracking easier):\n{shown}")
    if not picked:
        raise ReaderError(f"{src}: no usable frames (no frameset with depth and colour"
                          + (f"; {len(bad)} bad" if bad else "") + ")")
    if max(p[0] for p in picked) > 999999:
        raise ReaderError(f"{src}: more than 1000000 framesets; use --stride or --max-frames")
    res = odo.result()
    c2w = np.stack([res.c2w[res.kept.index(p[0])] for p in picked])
    state: dict = {"gen": None, "pb": None, "t": None}      # the second pass: playback, frames, last timestamp

    def restart() -> None:
        if state["pb"] is not None:
            state["pb"].close()
        state["pb"] = _Playback(src)
        state["gen"], state["t"] = state["pb"].frames(), None

    def load(i: int) -> FrameRecord:
        """Frame i of the second pass, found by its device frame numbers. The pipeline's syncer can lose the
        first frameset of a playback (depth and colour started apart), so a frame that does not come back
        is looked for again in a fresh playback (up to 3 times)."""
        pos, dnum, cnum, t = picked[i]
        for _attempt in range(3):
            if state["gen"] is None or (state["t"] is not None and state["t"] >= t):
                restart()
            for _p, d, c, tc, color, raw in state["gen"]:
                state["t"] = tc
                if (d, c) == (dnum, cnum):
                    if i == len(picked) - 1:
                        state["pb"].close()
                    return FrameRecord(color=color, c2w=c2w[i], depth_mm=depth_raw_to_mm(raw, info.depth_scale))
                if tc >= t:
                    break                   # passed it: lost this time
            state["gen"] = None
        state["pb"].close()
        raise ReaderError(f"{src}: frameset {pos} (depth #{dnum}, colour #{cnum}) did not come back when the "
                          "recording was played again")

    notes = [f"poses from RGB-D odometry ({len(res.keyframes)} keyframes); the first frame's camera is the world"]
    if info.distortion != "none":
        notes.append(f"colour stream distortion {info.distortion} ignored (K is used as a pinhole)")
    meta = {"depth_scale_m": info.depth_scale, "color_format": info.color_format, "aligned_to": "color",
            "pose_source": "RGB-D odometry (recon/data/readers/odometry.py)",
            "odometry": vars(odometry or OdometrySettings()), "keyframes": [f"{k:06d}" for k in res.keyframes],
            "color_distortion": info.distortion}
    return ConvertPlan(kind=KIND, K=info.K, size=info.size, frame_ids=[f"{p[0]:06d}" for p in picked],
                       source_names=[f"frameset {p[0]} (depth #{p[1]}, colour #{p[2]}, {p[3]:.1f} ms)" for p in picked],
                       c2w=c2w, load=load, classes=[], meta=meta, skipped=bad if skip_bad_frames else [],
                       notes=notes)
