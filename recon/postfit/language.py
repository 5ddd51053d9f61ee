"""Language features of a run's instances: CLIP embeddings of each object's best-seen crops.

`python run.py embed --run RUN --clip-checkpoint FILE [--clip-model ViT-B-32] [--crops 3]` writes
RUN/language.npz, which `run.py query` then uses to rank instances by a free-text query
(recon/postfit/query.py). Without it the query's vocabulary is the run's class names and the prompt
tables' keywords.

How the embedding of an instance is made:
1. its pixels in every training frame come from the run's instance label images (RUN/labels/instance/,
   written by `fit`; the same ids as the mesh and instances.json);
2. its views are ranked: views whose box does not touch the image border (the whole object is in the
   picture) first, then by visible pixel count; views under `min_pixels` are skipped;
3. from the best `crops` views, the box grown by `margin` (fraction of its larger side, for context) and
   made square is cropped from the colour image;
4. each crop goes through CLIP's image encoder with the model's own preprocessing; the embeddings are
   L2-normalised, averaged, and normalised again.
A text query is embedded as "a photo of a {text}." by the text encoder and scored by cosine similarity.

CLIP is `open-clip-torch` with a checkpoint from a path the user gives (nothing is downloaded): e.g.
the OpenAI ViT-B-32 weights, `--clip-model ViT-B-32 --clip-checkpoint ViT-B-32.pt`, or an
open_clip_pytorch_model.bin of a LAION model with its open_clip model name. language.json records
the model name, the checkpoint's path and size, and, per instance, the frames its crops came from.
Only models whose tokenizer ships inside open_clip (the CLIP BPE tokenizer: the ViT-*, RN*,
convnext* CLIP families) work offline; SigLIP-style models would fetch a tokenizer and are refused.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recon.core.io import atomic_file, atomic_write_text
from recon.data.run_files import label_path, read_label_images
from recon.data.scene import load_scene

TEMPLATE = "a photo of a {}."
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_CROPS = 3
MIN_PIXELS = 20
MARGIN = 0.1


class LanguageError(Exception):
    """Language features cannot be made or used (no checkpoint, wrong model, no label images); says why."""


# ------------------------------------------------------------------------------------------------
# crops (pure)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    frame: int                      # index into the scene's frames
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the instance's pixels
    pixels: int
    whole: bool                     # the box does not touch the image border


def instance_views(inst: np.ndarray, frame: int) -> dict[int, View]:
    """Per instance id > 0 in the label image `inst` [H, W]: its pixel box, count and whether it is whole."""
    assert inst.ndim == 2, f"instance image must be [H, W], got {inst.shape}"
    H, W = inst.shape
    out = {}
    for iid in np.unique(inst):
        if iid <= 0:
            continue
        ys, xs = np.nonzero(inst == iid)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        whole = x0 > 0 and y0 > 0 and x1 < W and y1 < H
        out[int(iid)] = View(frame, (x0, y0, x1, y1), int(len(xs)), whole)
    return out


def best_views(views: list[View], k: int, min_pixels: int = MIN_PIXELS) -> list[View]:
    """The `k` best views of one instance: whole views first, then by pixel count (ties: earlier frame)."""
    good = [v for v in views if v.pixels >= min_pixels]
    return sorted(good, key=lambda v: (not v.whole, -v.pixels, v.frame))[:k]


def crop_box(box: tuple[int, int, int, int], size_wh: tuple[int, int], margin: float = MARGIN
             ) -> tuple[int, int, int, int]:
    """The square crop around `box` (x0, y0, x1, y1 exclusive): side = larger box side x (1 + 2 margin),
    centred on the box, shifted (not shrunk) to stay inside the W x H image, and cut only where the image is
    smaller than the side."""
    W, H = size_wh
    x0, y0, x1, y1 = box
    side = max(1, int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin))))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0

    def span(c: float, n: int) -> tuple[int, int]:
        s = min(side, n)
        a = int(round(c - s / 2.0))
        a = min(max(a, 0), n - s)
        return a, a + s
    ax, bx = span(cx, W)
    ay, by = span(cy, H)
    return ax, ay, bx, by


# ------------------------------------------------------------------------------------------------
# CLIP
# ------------------------------------------------------------------------------------------------
def load_clip(model_name: str, checkpoint: str | Path, device: str = "cpu"):
    """(model, preprocess, tokenizer) of open_clip's `model_name` with the weights in `checkpoint`."""
    import open_clip
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise LanguageError(f"{checkpoint}: no such CLIP checkpoint file (give the path of the weights, e.g. "
                            "ViT-B-32.pt for --clip-model ViT-B-32)")
    if model_name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if model_name.lower().split("-")[0] in m.lower()][:8]
        raise LanguageError(f"unknown CLIP model {model_name!r} (open_clip's names, e.g. "
                            f"{', '.join(close or open_clip.list_models()[:8])})")
    cfg = open_clip.get_model_config(model_name) or {}
    if cfg.get("text_cfg", {}).get("hf_tokenizer_name"):
        raise LanguageError(f"CLIP model {model_name} needs a Hugging Face tokenizer that would be downloaded; "
                            "use a CLIP-BPE model (ViT-B-32, ViT-L-14, RN50, ...)")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint),
                                                                     device=device)
    except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise LanguageError(f"{checkpoint}: cannot load it as CLIP model {model_name} ({first})") from None
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def encode_images(model, preprocess, images: list[np.ndarray], device: str = "cpu", batch: int = 16) -> np.ndarray:
    """L2-normalised CLIP image embeddings [N, D] of RGB uint8 images [h, w, 3]."""
    import torch
    from PIL import Image
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.stack([preprocess(Image.fromarray(im)) for im in images[s:s + batch]]).to(device)
            out.append(model.encode_image(x).float().cpu().numpy())
    return _normalise(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


def encode_texts(model, tokenizer, texts: list[str], device: str = "cpu") -> np.ndarray:
    """L2-normalised CLIP text embeddings [N, D] of TEMPLATE filled with each text."""
    import torch
    with torch.no_grad():
        e = model.encode_text(tokenizer([TEMPLATE.format(t.strip()) for t in texts]).to(device))
    return _normalise(e.float().cpu().numpy())


# ------------------------------------------------------------------------------------------------
# the run's language features
# ------------------------------------------------------------------------------------------------
def language_paths(run: Path) -> tuple[Path, Path]:
    return Path(run) / "language.npz", Path(run) / "language.json"


def embed_run(run: str | Path, checkpoint: str | Path, model_name: str = DEFAULT_MODEL, crops: int = DEFAULT_CROPS,
              device: str = "cpu", log=print, progress: bool = True) -> Path:
    """Write RUN/language.npz (ids [N] int64, embeddings [N, D] float32) and RUN/language.json; returns the npz."""
    run = Path(run)
    inst_file = run / "instances.json"
    if not inst_file.is_file():
        raise LanguageError(f"{inst_file}: missing (is {run} a finished run folder?)")
    ids = [int(e["id"]) for e in json.loads(inst_file.read_text())["instances"]]
    if not ids:
        raise LanguageError(f"{inst_file}: the run has no instances to embed")
    scene_txt = run / "scene.txt"
    if not scene_txt.is_file():
        raise LanguageError(f"{scene_txt}: missing; the run does not say which scene it was fitted on")
    scene = load_scene(Path(scene_txt.read_text().strip()), check_images=False)
    frames = scene.split_indices("train")
    missing = [scene.frame_ids[i] for i in frames if not label_path(run, "instance", scene.frame_ids[i]).is_file()]
    if missing:
        raise LanguageError(f"{label_path(run, 'instance', missing[0])}: missing ({len(missing)} training frame(s) "
                            "lack instance label images; `fit` writes them)")
    if crops < 1:
        raise LanguageError(f"--crops must be at least 1, got {crops}")
    model, preprocess, _ = load_clip(model_name, checkpoint, device)   # checks the checkpoint before the long part

    views: dict[int, list[View]] = {i: [] for i in ids}
    for i in tqdm(frames, desc="views", dynamic_ncols=True, disable=not progress, mininterval=1.0):
        _, inst = read_label_images(run, scene.frame_ids[i], (scene.width, scene.height))
        for iid, v in instance_views(inst, i).items():
            if iid in views:
                views[iid].append(v)
    chosen = {iid: best_views(v, crops) for iid, v in views.items()}
    emb, kept, record = [], [], {}
    colours: dict[int, np.ndarray] = {}
    for iid in tqdm(ids, desc="embed", dynamic_ncols=True, disable=not progress, mininterval=1.0):
        if not chosen[iid]:
            record[str(iid)] = {"frames": [], "note": f"no view with at least {MIN_PIXELS} pixels"}
            continue
        images = []
        for v in chosen[iid]:
            if v.frame not in colours:
                colours[v.frame] = scene.load_color(v.frame)
            x0, y0, x1, y1 = crop_box(v.box, (scene.width, scene.height))
            images.append(colours[v.frame][y0:y1, x0:x1])
        e = encode_images(model, preprocess, images, device)             # [k, D]
        emb.append(_normalise(e.mean(0)))
        kept.append(iid)
        record[str(iid)] = {"frames": [scene.frame_ids[v.frame] for v in chosen[iid]],
                            "pixels": [v.pixels for v in chosen[iid]], "whole": [v.whole for v in chosen[iid]]}
    if not kept:
        raise LanguageError(f"{run}: no instance is visible in the label images with at least {MIN_PIXELS} pixels")
    npz, meta = language_paths(run)
    with atomic_file(npz) as fh:
        np.savez(fh, ids=np.asarray(kept, np.int64), embeddings=np.stack(emb).astype(np.float32))
    ck = Path(checkpoint).resolve()
    atomic_write_text(meta, json.dumps({"model": model_name, "checkpoint": str(ck), "checkpoint_bytes": ck.stat().st_size,
                                        "template": TEMPLATE, "crops": crops, "instances": record}, indent=1) + "\n")
    log(f"wrote {npz}: CLIP ({model_name}) embeddings of {len(kept)} of {len(ids)} instance(s)")
    return npz


def read_language(run: Path) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(ids [N], embeddings [N, D], language.json) of a run, or None where `embed` has not been run."""
    npz, meta = language_paths(run)
    if not npz.is_file():
        return None
    if not meta.is_file():
        raise LanguageError(f"{meta}: missing beside {npz} (run `run.py embed` again)")
    try:
        with np.load(npz) as z:
            ids, emb = z["ids"].astype(np.int64), z["embeddings"].astype(np.float32)
        info = json.loads(meta.read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise LanguageError(f"{npz}: unreadable ({exc}); run `run.py embed` again") from None
    if emb.ndim != 2 or len(ids) != len(emb):
        raise LanguageError(f"{npz}: {len(ids)} ids but embeddings of shape {emb.shape}; run `run.py embed` again")
    return ids, emb, info


def text_similarity(run: Path, text: str, checkpoint: str | Path | None = None, device: str = "cpu"
                    ) -> dict[int, float] | None:
    """Instance id -> cosine similarity of its embedding to `text`, or None without language features.
    The CLIP model is the one language.json names; its checkpoint is `checkpoint` or the recorded path."""
    lang = read_language(Path(run))
    if lang is None:
        return None
    ids, emb, info = lang
    ck = Path(checkpoint) if checkpoint is not None else Path(info["checkpoint"])
    if not ck.is_file():
        raise LanguageError(f"{ck}: the CLIP checkpoint of this run's language features is gone; pass "
                            "--clip-checkpoint FILE (the same weights that `embed` used)")
    model, _, tokenizer = load_clip(info["model"], ck, device)
    t = encode_texts(model, tokenizer, [text], device)                  # [1, D]
    if t.shape[1] != emb.shape[1]:
        raise LanguageError(f"{ck}: text embeddings of size {t.shape[1]} but {language_paths(run)[0]} holds size "
                            f"{emb.shape[1]}; pass the checkpoint that `embed` used")
    sims = emb @ t[0]                                                   # [N]
    return {int(i): float(s) for i, s in zip(ids, sims)}
