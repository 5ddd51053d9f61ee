"""Mask sources for `run.py segment`: one interface, one resumable writer.

A `MaskSource` turns frames of a scene into 2D masks (instance, semantic, scores;
see SCENE_FORMAT.md, masks/). Two implement it: `SimMaskSource` (the simulator,
from the scene's gt/ images) and `recon.data.grounded_sam.GroundedSamSource`
(GroundingDINO boxes + SAM masks from the colour images). `run_mask_source`
drives either one the same way:

1. validate the scene and let the source check it (before any slow work);
2. per-frame results go to `<scene>/.segment-work/` as they are made (each file
   written atomically; the scores JSON last, so it marks a finished frame), with
   `state.json` recording the source's settings;
3. a re-run with the same settings skips finished frames (resume); `force`
   discards them; different settings without `force` are refused;
4. when every frame is done, masks/ (and classes.json, if the source defines the
   classes) are swapped in atomically by `scene.replace_masks`, which validates
   the scene first; then the work folder is removed.

`merge_masks` is the per-pixel "most confident mask wins" rule shared by sources.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from recon.core.config import ConfigError
from recon.core.io import atomic_write_bytes, atomic_write_text
from recon.data.mask_sim import FrameMasks
from recon.data.run_files import png16_bytes
from recon.data.scene import ClassInfo, Scene, load_scene, replace_masks

WORK_DIR = ".segment-work"
STATE_VERSION = 1


# ----------------------------------------------------------------------------- merging

def merge_masks(masks: np.ndarray, scores: np.ndarray, classes: np.ndarray, is_thing: np.ndarray,
                min_area_px: int = 0) -> FrameMasks:
    """Resolve overlapping candidate masks per pixel by the highest score.

    masks [M, H, W] bool, scores [M] float, classes [M] int (class ids > 0),
    is_thing [M] bool. Each pixel takes the class of the highest-scored mask that
    covers it (ties: the lower index). Masks whose visible (winning) area is below
    `min_area_px` are dropped and the winners recomputed until none is.
    Surviving thing masks become instances 1..K, numbered by descending score (ties:
    lower index); stuff masks label only the semantic image (instance 0).
    Returns FrameMasks(instance [H, W] uint16, semantic [H, W] uint16, scores).
    """
    masks = np.asarray(masks, dtype=bool)
    assert masks.ndim == 3, f"masks must be [M, H, W], got {masks.shape}"
    m, h, w = masks.shape
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    is_thing = np.asarray(is_thing, dtype=bool).reshape(-1)
    assert scores.shape == classes.shape == is_thing.shape == (m,), (scores.shape, classes.shape, is_thing.shape, m)
    assert m == 0 or (classes.min() > 0 and classes.max() <= 65535), "class ids must be in 1..65535"
    active = np.ones(m, dtype=bool)
    dropped: list[int] = []
    while True:
        best = np.full((h, w), -np.inf)          # [H, W] winning score so far
        winner = np.full((h, w), -1, np.int64)   # [H, W] winning mask index, -1 = none
        for k in np.flatnonzero(active):
            upd = masks[k] & (scores[k] > best)
            best[upd] = scores[k]
            winner[upd] = k
        area = np.bincount(winner[winner >= 0], minlength=m)  # [M] visible pixels
        small = active & (area < min_area_px) & (area > 0)
        if not small.any():
            break
        dropped.extend(int(k) for k in np.flatnonzero(small))
        active &= ~small
    visible_things = [k for k in range(m) if is_thing[k] and area[k] > 0]
    visible_things.sort(key=lambda k: (-scores[k], k))
    lut_inst = np.zeros(m + 1, np.uint16)   # index winner + 1 -> instance id
    lut_sem = np.zeros(m + 1, np.uint16)    # index winner + 1 -> class id
    lut_sem[1:] = classes
    out_scores: dict[int, dict] = {}
    for iid, k in enumerate(visible_things, start=1):
        lut_inst[k + 1] = iid
        out_scores[iid] = {"class": int(classes[k]), "score": float(scores[k])}
    instance = lut_inst[winner + 1]
    semantic = lut_sem[winner + 1]
    log = {"candidates": m, "dropped_small": sorted(dropped),
           "instance_of_candidate": {int(k): i for i, k in enumerate(visible_things, start=1)}}
    return FrameMasks(instance=instance, semantic=semantic, scores=out_scores, log=log)


def frame_masks_problems(fm: FrameMasks, shape: tuple[int, int], class_ids: set[int],
                         thing_ids: set[int]) -> list[str]:
    """What is wrong with one frame's masks (empty list = valid), checked before writing."""
    out = []
    for name in ("instance", "semantic"):
        arr = getattr(fm, name)
        if arr.shape != shape or arr.dtype != np.uint16:
            out.append(f"{name} image is {arr.shape} {arr.dtype}, expected {shape} uint16")
    if out:
        return out
    unknown = sorted(set(np.unique(fm.semantic).tolist()) - class_ids - {0})
    if unknown:
        out.append(f"semantic class id(s) {unknown[:8]} are not in the class list")
    on = fm.instance > 0
    if np.any(on & ~np.isin(fm.semantic, sorted(thing_ids))):
        out.append("instance pixels carry a class that is not a thing class")
    ids = set(np.unique(fm.instance[on]).tolist())
    if ids != set(fm.scores):
        out.append(f"instance ids {sorted(ids)[:8]} and score entries {sorted(fm.scores)[:8]} differ")
    for k, v in fm.scores.items():
        if int(v["class"]) not in thing_ids:
            out.append(f"instance {k} has class {v['class']}, not a thing class")
    return out


# ----------------------------------------------------------------------------- the interface

class MaskSource(Protocol):
    """Something that makes per-frame masks for a scene (see module docstring)."""

    name: str         # "sim" | "grounded-sam"; recorded in the work folder's state
    batch_size: int   # frames per `masks` call

    def fingerprint(self) -> dict:
        """JSON-able settings that determine the output (a resume needs the same)."""

    def output_classes(self) -> list[ClassInfo] | None:
        """The classes.json to write with the masks, or None to keep the scene's."""

    def check_scene(self, scene: Scene) -> None:
        """Raise ConfigError if this source cannot segment `scene` (called before any slow work)."""

    def prepare(self) -> None:
        """Load models etc.; called once, only when frames remain to be done."""

    def masks(self, scene: Scene, indices: list[int]) -> list[FrameMasks]:
        """Masks for the frames `indices` of `scene` ([H, W] uint16 images), in order."""


class SimMaskSource:
    """The mask simulator (recon.data.mask_sim) as a MaskSource: masks from the gt/ images.

    Frame i uses the i-th stream spawned from `seed`, so the result equals
    `simulate_scene_masks` on the whole scene whatever the batching or resuming.
    """

    name = "sim"
    batch_size = 8

    def __init__(self, noise: str, seed: int):
        from recon.data.mask_sim import NOISE_LEVELS, noise_config
        if noise not in NOISE_LEVELS:
            raise ConfigError(f"unknown noise level '{noise}'; choose one of {', '.join(NOISE_LEVELS)}")
        self.noise, self.seed = noise, int(seed)
        self.cfg = noise_config(noise)
        self._streams: list[np.random.SeedSequence] = []
        self._confusable: dict[int, list[int]] = {}

    def fingerprint(self) -> dict:
        return {"noise": self.noise, "seed": self.seed, "config": dataclasses.asdict(self.cfg)}

    def output_classes(self) -> None:
        return None

    def check_scene(self, scene: Scene) -> None:
        from recon.data.make_synth import confusable_ids
        if not scene.has_gt_images:
            raise ConfigError(f"{scene.root}: the simulator needs gt/semantic and gt/instance images")
        self._streams = np.random.SeedSequence(self.seed).spawn(len(scene))
        self._confusable = confusable_ids({c.name: c.id for c in scene.classes})

    def prepare(self) -> None:
        pass

    def masks(self, scene: Scene, indices: list[int]) -> list[FrameMasks]:
        from recon.data.mask_sim import frame_object_states, simulate_frame_masks
        out = []
        for i in indices:
            gt_sem, gt_inst = scene.load_gt(i)
            out.append(simulate_frame_masks(gt_sem, gt_inst, set(scene.thing_ids()), self._confusable, self.cfg,
                                            np.random.default_rng(self._streams[i]),
                                            states=frame_object_states(self.cfg, self.seed, gt_inst, i)))
        return out


# ----------------------------------------------------------------------------- the resumable writer

def _frame_done(work: Path, fid: str) -> bool:
    return all((work / sub / f"{fid}{ext}").is_file()
               for sub, ext in (("instance", ".png"), ("semantic", ".png"), ("scores", ".json")))


def _write_work_frame(work: Path, fid: str, fm: FrameMasks) -> None:
    """Instance and semantic PNGs first, the scores JSON last: its presence marks the frame done."""
    atomic_write_bytes(work / "instance" / f"{fid}.png", png16_bytes(fm.instance))
    atomic_write_bytes(work / "semantic" / f"{fid}.png", png16_bytes(fm.semantic))
    scores = {str(int(k)): {"class": int(v["class"]), "score": float(v["score"])}
              for k, v in sorted(fm.scores.items())}
    atomic_write_text(work / "scores" / f"{fid}.json", json.dumps(scores) + "\n")


def _read_work_frame(work: Path, fid: str) -> tuple[str, np.ndarray, np.ndarray, dict]:
    inst = np.asarray(Image.open(work / "instance" / f"{fid}.png")).astype(np.uint16)
    sem = np.asarray(Image.open(work / "semantic" / f"{fid}.png")).astype(np.uint16)
    scores = {int(k): v for k, v in json.loads((work / "scores" / f"{fid}.json").read_text()).items()}
    return fid, inst, sem, scores


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_mask_source(scene_dir: str | Path, source: MaskSource, force: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """Make masks/ for the scene at `scene_dir` with `source` (see the module docstring).

    Returns {"frames": n, "resumed": frames already done, "computed": frames made now}.
    """
    scene_dir = Path(scene_dir)
    scene = load_scene(scene_dir)
    source.check_scene(scene)
    work = scene_dir / WORK_DIR
    state = {"version": STATE_VERSION, "source": source.name, "settings": source.fingerprint(),
             "frames": list(scene.frame_ids), "size": [scene.width, scene.height]}
    state = json.loads(json.dumps(state))  # normalise (tuples -> lists) so it compares with the file
    if work.exists():
        old = _read_state(work / "state.json")
        if force:
            shutil.rmtree(work)
        elif old != state:
            what = f"a partial '{old.get('source')}' run" if isinstance(old, dict) else "an unreadable partial run"
            raise FileExistsError(f"{work} holds {what} with different settings (source, settings or frames); "
                                  "pass --force to discard it and start over")
    elif scene.has_masks and not force:
        raise FileExistsError(f"{scene_dir / 'masks'} already exists; pass --force to replace it")
    for sub in ("instance", "semantic", "scores"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "state.json", json.dumps(state, indent=1, sort_keys=True) + "\n")

    todo = [i for i, fid in enumerate(scene.frame_ids) if not _frame_done(work, fid)]
    n_done = len(scene) - len(todo)
    if n_done:
        log(f"resuming: {n_done} of {len(scene)} frames already done in {work} (--force starts over)")
    classes = source.output_classes()
    classes_now = list(classes) if classes is not None else scene.classes
    class_ids = {c.id for c in classes_now}
    thing_ids = {c.id for c in classes_now if c.thing}
    if todo:
        source.prepare()
        step = max(1, int(source.batch_size))
        with tqdm(total=len(todo), desc=f"segment ({source.name})", unit="frame", dynamic_ncols=True) as bar:
            for b in range(0, len(todo), step):
                batch = todo[b:b + step]
                results = source.masks(scene, batch)
                assert len(results) == len(batch), f"{source.name} returned {len(results)} frames for {len(batch)}"
                for i, fm in zip(batch, results):
                    fid = scene.frame_ids[i]
                    problems = frame_masks_problems(fm, (scene.height, scene.width), class_ids, thing_ids)
                    if problems:
                        raise ValueError(f"{source.name} made invalid masks for frame {fid}: " + "; ".join(problems))
                    _write_work_frame(work, fid, fm)
                bar.update(len(batch))
    replace_masks(scene_dir, (_read_work_frame(work, fid) for fid in scene.frame_ids), classes=classes)
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote masks/ for {len(scene)} frames of {scene_dir} ({source.name}; {len(todo)} computed, "
        f"{n_done} resumed)")
    return {"frames": len(scene), "resumed": n_done, "computed": len(todo)}
