"""Grounded-SAM front-end: GroundingDINO boxes from text prompts, one SAM mask per box.

Per frame (frames are processed in batches):
1. GroundingDINO reads the colour image (short side resized to `short_side`, as the
   official pipeline does) and a caption made of every keyword of the prompt table
   ("chair . armchair . wall ."); long tables are split into several captions that
   each fit the text encoder. It gives per query a box and a probability per caption
   token.
2. Each keyword's probability is the mean over its tokens. A query becomes a
   detection when its best keyword-token probability exceeds `box_threshold` and its
   best keyword's probability exceeds `text_threshold`; the detection takes that
   keyword's class and that probability as its confidence. Thing boxes covering more
   than `max_box_frac` of both the width and the height are skipped; same-class
   boxes are suppressed by NMS at `nms_iou`.
3. SAM predicts one mask per box; overlapping masks are resolved per pixel by the
   highest confidence (`mask_source.merge_masks`): thing masks become per-frame
   instances, stuff masks label the semantic image only.

Models come from the files the user names (official checkpoints:
groundingdino_swint_ogc.pth with GroundingDINO_SwinT_OGC.py, sam_vit_h_4b8939.pth,
sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth); nothing is downloaded except, if the
GroundingDINO config names a Hugging Face model ("bert-base-uncased") and no local
folder is given with --text-encoder, that text encoder through the Hugging Face cache.

The pure parts (resizing, box conversion, detection selection) need only numpy, NMS torchvision;
the model parts import torch, torchvision, segment_anything and groundingdino lazily.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recon.core.config import ConfigError
from recon.data.mask_sim import FrameMasks
from recon.data.mask_source import merge_masks
from recon.data.prompts import (PromptTable, build_caption, load_prompt_table, resolve_classes,
                                split_keywords, token_spans)
from recon.data.scene import ClassInfo, Scene

DINO_MEAN = (0.485, 0.456, 0.406)  # ImageNet RGB mean / std of GroundingDINO's input normalisation
DINO_STD = (0.229, 0.224, 0.225)
SAM_BOXES_PER_CALL = 32            # SAM mask-decoder calls take at most this many boxes (bounds memory)


class GsamUnavailable(ImportError):
    """A package the Grounded-SAM backend needs is not installed."""


# ----------------------------------------------------------------------------- pure functions

def dino_resize_hw(h: int, w: int, short_side: int = 800, max_side: int = 1333) -> tuple[int, int]:
    """GroundingDINO input size (h, w): short side -> `short_side`, long side capped at `max_side`.

    Same rule as the official transform (RandomResize([800], max_size=1333)): the
    target short side shrinks so the long side stays within `max_side`; the long
    side is then int(short * long / short_original).
    """
    assert h > 0 and w > 0 and short_side > 0
    size = short_side
    lo, hi = float(min(h, w)), float(max(h, w))
    if hi / lo * size > max_side:
        size = int(round(max_side * lo / hi))
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def boxes_cxcywh_to_xyxy_px(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """[N, 4] normalised (cx, cy, w, h) in [0, 1] -> [N, 4] pixel (x0, y0, x1, y1), clipped to the image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx, cy, bw, bh = boxes.T
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    xyxy *= np.array([width, height, width, height], dtype=np.float64)
    xyxy[:, 0::2] = np.clip(xyxy[:, 0::2], 0.0, width)
    xyxy[:, 1::2] = np.clip(xyxy[:, 1::2], 0.0, height)
    return xyxy


def nms_per_class(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thr: float) -> np.ndarray:
    """Indices kept by greedy NMS within each class (torchvision.ops.batched_nms), by descending score
    (ties: lower index). A box is suppressed when its IoU with a kept box of the same class exceeds `iou_thr`."""
    import torch
    from torchvision.ops import batched_nms
    scores = np.asarray(scores, np.float64).reshape(-1)
    keep = batched_nms(torch.as_tensor(np.asarray(boxes, np.float64).reshape(-1, 4)), torch.as_tensor(scores),
                       torch.as_tensor(np.asarray(classes, np.int64).reshape(-1)), float(iou_thr)).numpy()
    return np.array(sorted(keep.tolist(), key=lambda k: (-scores[k], k)), dtype=np.int64)


@dataclass
class Detections:
    """Boxes of one frame: boxes_px [N, 4] xyxy pixels, classes [N] class ids, scores [N] confidences."""
    boxes_px: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def concat(parts: list["Detections"]) -> "Detections":
        if not parts:
            return Detections()
        return Detections(np.concatenate([p.boxes_px for p in parts]), np.concatenate([p.classes for p in parts]),
                          np.concatenate([p.scores for p in parts]))

    def take(self, idx: np.ndarray) -> "Detections":
        return Detections(self.boxes_px[idx], self.classes[idx], self.scores[idx])


def select_detections(token_probs: np.ndarray, boxes_norm: np.ndarray, spans: list[list[int]],
                      keyword_class: list[int] | tuple[int, ...], thing_ids: set[int], table: PromptTable,
                      width: int, height: int) -> Detections:
    """Detections of one image and one caption, before NMS.

    token_probs [Q, T]: sigmoid of GroundingDINO's logits (query x caption token);
    boxes_norm [Q, 4]: normalised (cx, cy, w, h); spans[k]: token indices of keyword k;
    keyword_class[k]: its class id. See the module docstring for the rule.
    """
    token_probs = np.asarray(token_probs, np.float64)
    q = token_probs.shape[0]
    assert token_probs.ndim == 2 and np.asarray(boxes_norm).shape == (q, 4), (token_probs.shape, np.shape(boxes_norm))
    assert len(spans) == len(keyword_class) > 0 and all(len(s) > 0 for s in spans), "every keyword needs tokens"
    kw_probs = np.stack([token_probs[:, s].mean(axis=1) for s in spans], axis=1)     # [Q, K]
    all_tokens = sorted({t for s in spans for t in s})
    box_prob = token_probs[:, all_tokens].max(axis=1)                                  # [Q]
    best = kw_probs.argmax(axis=1)                                                     # [Q]
    score = kw_probs[np.arange(q), best]                                               # [Q]
    cls = np.asarray(keyword_class, np.int64)[best]                                    # [Q]
    xyxy = boxes_cxcywh_to_xyxy_px(boxes_norm, width, height)                          # [Q, 4] px
    bw, bh = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    is_thing = np.isin(cls, sorted(thing_ids))
    too_big = is_thing & (bw > table.max_box_frac * width) & (bh > table.max_box_frac * height)
    keep = (box_prob > table.box_threshold) & (score > table.text_threshold) & ~too_big & (bw >= 1) & (bh >= 1)
    idx = np.flatnonzero(keep)
    return Detections(xyxy[idx], cls[idx], score[idx])


# ----------------------------------------------------------------------------- checkpoints and models

def require_packages() -> None:
    """Import the backend's packages, or raise GsamUnavailable saying what to install."""
    missing = []
    for mod, pkg in (("torchvision", "torchvision==0.29.1 (with torch==2.14.1)"),
                     ("transformers", "transformers==4.57.6 (GroundingDINO needs transformers < 5)"),
                     ("segment_anything", "segment-anything==1.0"),
                     ("groundingdino", "rf-groundingdino==0.3.0 (install with --no-deps)")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                __import__(mod)
        except Exception as exc:  # a broken install raises more than ImportError (e.g. torchvision's ops)
            missing.append(f"{pkg} [{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]")
    if missing:
        raise GsamUnavailable("the Grounded-SAM backend needs packages that are missing or broken: "
                              + "; ".join(missing) + ". See the README (Grounded-SAM) for the install command; "
                              "'--backend sim' needs none of them.")


def check_checkpoint_file(path: Path | None, flag: str) -> Path:
    """Cheap check that `path` (given with `flag`) is a readable PyTorch checkpoint file."""
    if path is None:
        raise ConfigError(f"the Grounded-SAM backend needs {flag} FILE")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    if path.stat().st_size == 0:
        raise ConfigError(f"{flag} {path}: the file is empty")
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise ConfigError(f"{flag} {path}: not a PyTorch checkpoint (neither a torch zip archive nor a pickle); "
                          "is the download complete?")
    return path


def load_state_dict_file(path: Path, what: str) -> dict:
    """torch.load a checkpoint on the CPU; ConfigError naming the file if it cannot be read.

    Tries the safe loader (tensors only) first; a checkpoint that pickles other Python
    objects is loaded in full with a warning (only use checkpoints you trust).
    """
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        warnings.warn(f"{path}: holds Python objects besides tensors; loading it in full (only use checkpoints "
                      "you trust)")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ConfigError(f"{what} {path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # truncated zip, wrong format, ...
        raise ConfigError(f"{what} {path}: cannot be read ({type(exc).__name__}: {exc}); is the file complete?") \
            from exc
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} {path}: expected a dict of weights, found {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class SamSpec:
    """SAM architecture (segment_anything's build_sam hyper-parameters)."""
    embed_dim: int                          # image-encoder ViT width
    depth: int                              # ViT blocks
    num_heads: int
    global_attn_indexes: tuple[int, ...]    # blocks with global (not windowed) attention
    img_size: int = 1024                    # encoder input side, px
    patch_size: int = 16
    window_size: int = 14
    prompt_dim: int = 256                   # prompt / mask-decoder width (= encoder output channels)
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden: int = 256
    mask_in_chans: int = 16


SAM_SPECS: dict[str, SamSpec] = {
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
}


def build_sam(spec: SamSpec):
    """An untrained SAM of architecture `spec`, from segment_anything's modules."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    emb = spec.img_size // spec.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.depth, embed_dim=spec.embed_dim, img_size=spec.img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=spec.num_heads, patch_size=spec.patch_size,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(spec.global_attn_indexes),
            window_size=spec.window_size, out_chans=spec.prompt_dim),
        prompt_encoder=PromptEncoder(embed_dim=spec.prompt_dim, image_embedding_size=(emb, emb),
                                     input_image_size=(spec.img_size, spec.img_size),
                                     mask_in_chans=spec.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=spec.prompt_dim, mlp_dim=spec.decoder_mlp_dim,
                                          num_heads=spec.decoder_heads),
            transformer_dim=spec.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=spec.iou_head_hidden),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def sam_type_of(state: dict, specs: dict[str, SamSpec]) -> str | None:
    """The name in `specs` whose encoder width and depth match the state dict, or None."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    blocks = {k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}
    for name, s in specs.items():
        if w.shape[0] == s.embed_dim and len(blocks) == s.depth:
            return name
    return None


def load_sam(path: Path, sam_type: str, specs: dict[str, SamSpec] = SAM_SPECS):
    """SAM of type `sam_type` with the weights in `path` (eval mode, CPU)."""
    if sam_type not in specs:
        raise ConfigError(f"unknown --sam-type {sam_type!r}; choose one of {', '.join(specs)}")
    state = load_state_dict_file(path, "--sam-checkpoint")
    found = sam_type_of(state, specs)
    if found is None:
        raise ConfigError(f"--sam-checkpoint {path}: not a SAM checkpoint of a known type ({', '.join(specs)})")
    if found != sam_type:
        raise ConfigError(f"--sam-checkpoint {path} holds a SAM {found} model but --sam-type is {sam_type}; "
                          f"pass --sam-type {found}")
    model = build_sam(specs[sam_type])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ConfigError(f"--sam-checkpoint {path}: weights do not fit SAM {sam_type} "
                          f"({' '.join(lines[1:2])[:300]})") from exc
    return model.eval()


def load_dino(config: Path, checkpoint: Path, text_encoder: str | None = None, log=print):
    """(GroundingDINO model in eval mode on the CPU, its tokenizer) from the user's files."""
    with warnings.catch_warnings():   # timm's and torch's deprecation notes about groundingdino's imports
        warnings.simplefilter("ignore")
        from groundingdino.models import build_model
        from groundingdino.util.slconfig import SLConfig
    try:
        args = SLConfig.fromfile(str(config))
    except Exception as exc:
        raise ConfigError(f"--dino-config {config}: cannot be read as a GroundingDINO config "
                          f"({type(exc).__name__}: {exc})") from exc
    missing = [k for k in ("modelname", "text_encoder_type", "max_text_len") if k not in args]
    if missing:
        raise ConfigError(f"--dino-config {config}: not a GroundingDINO config (no {', '.join(missing)})")
    if text_encoder:
        args.text_encoder_type = str(text_encoder)
    args.device = "cpu"
    name = str(args.text_encoder_type)
    if not Path(name).is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
        except Exception:  # an unusual name or hub version: let transformers decide
            cached = True
        if not cached:
            log(f"GroundingDINO's text encoder '{name}' is not in the Hugging Face cache: downloading it "
                "(--text-encoder DIR uses a local copy instead)")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(args)
    except OSError as exc:
        raise ConfigError(
            f"GroundingDINO's text encoder {name!r} (named in {config}) could not be loaded: "
            f"{str(exc).splitlines()[0].rstrip('.')}. Download it once where there is network (it is then read "
            "from the Hugging Face cache), or pass --text-encoder DIR, a folder holding its config.json, "
            "vocab.txt and weights") from exc
    state = load_state_dict_file(checkpoint, "--dino-checkpoint")
    state = state.get("model", state)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ConfigError(f"--dino-checkpoint {checkpoint}: weights do not fit the model of {config} "
                          f"({len(lines) - 1} problem(s), e.g. {' '.join(lines[1:2])[:300]})") from exc
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise ConfigError(f"--dino-checkpoint {checkpoint}: {len(missing)} weights of the model of {config} are "
                          f"missing (e.g. {', '.join(missing[:3])}); is it a GroundingDINO checkpoint for this "
                          "config?")
    if len(result.unexpected_keys) > 0:
        warnings.warn(f"--dino-checkpoint {checkpoint}: {len(result.unexpected_keys)} weights unused by the "
                      f"model (e.g. {', '.join(result.unexpected_keys[:3])})")
    return model.eval(), model.tokenizer


def pick_device(requested: str = "auto") -> str:
    """'auto' -> 'cuda' when CUDA is available, else 'cpu'; 'cuda' without CUDA is an error."""
    import torch
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: CUDA is not available here (torch {torch.__version__}); "
                          "use --device cpu or auto")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {requested!r}")
    return requested


def _file_id(path: Path) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size}


# ----------------------------------------------------------------------------- the mask source

class GroundedSamSource:
    """Grounded-SAM as a MaskSource (see recon.data.mask_source).

    Construction checks the prompt table and the files (fast); `prepare` loads the
    models. `sam_specs` maps --sam-type names to architectures (tests add a tiny one).
    """

    name = "grounded-sam"

    def __init__(self, prompts: Path | None, dino_config: Path | None, dino_checkpoint: Path | None,
                 sam_checkpoint: Path | None, sam_type: str = "vit_h", text_encoder: str | None = None,
                 device: str = "auto", batch_size: int = 2, short_side: int = 800, max_side: int = 1333,
                 sam_specs: dict[str, SamSpec] = SAM_SPECS):
        if prompts is None:
            raise ConfigError("the Grounded-SAM backend needs --prompts FILE (e.g. configs/prompts/indoor.yaml)")
        self.table = load_prompt_table(prompts)
        if dino_config is None:
            raise ConfigError("the Grounded-SAM backend needs --dino-config FILE (GroundingDINO_SwinT_OGC.py)")
        self.dino_config = Path(dino_config)
        if not self.dino_config.is_file():
            raise FileNotFoundError(f"--dino-config {self.dino_config}: no such file")
        self.dino_checkpoint = check_checkpoint_file(dino_checkpoint, "--dino-checkpoint")
        self.sam_checkpoint = check_checkpoint_file(sam_checkpoint, "--sam-checkpoint")
        if sam_type not in sam_specs:
            raise ConfigError(f"unknown --sam-type {sam_type!r}; choose one of {', '.join(sam_specs)}")
        if text_encoder is not None and not Path(text_encoder).is_dir():
            raise FileNotFoundError(f"--text-encoder {text_encoder}: no such folder")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
        self.sam_type, self.sam_specs = sam_type, sam_specs
        self.text_encoder = text_encoder
        self.batch_size = int(batch_size)
        self.short_side, self.max_side = int(short_side), int(max_side)
        require_packages()
        self.device = pick_device(device)
        self.dino = self.tokenizer = self.sam = None
        self.classes_out, self.id_map = list(self.table.classes), {c.id: c.id for c in self.table.classes}
        self.thing_ids = self.table.thing_ids()
        self._chunks: list[tuple[str, list[list[int]], list[int]]] = []  # (caption, token spans, class ids)

    def fingerprint(self) -> dict:
        return {"prompts": self.table.to_dict(),
                "dino_config_sha256": hashlib.sha256(self.dino_config.read_bytes()).hexdigest(),
                "dino_checkpoint": _file_id(self.dino_checkpoint), "sam_checkpoint": _file_id(self.sam_checkpoint),
                "sam_type": self.sam_type, "text_encoder": str(self.text_encoder or ""),
                "short_side": self.short_side, "max_side": self.max_side,
                "classes_written": [[c.id, c.name, c.thing] for c in self.classes_out]}

    def output_classes(self) -> list[ClassInfo]:
        return list(self.classes_out)

    def check_scene(self, scene: Scene) -> None:
        """Resolve the classes to write against the scene's (its ids stay when it has ground truth)."""
        has_gt = scene.has_gt_images or scene.gt_mesh_path is not None
        self.classes_out, self.id_map = resolve_classes(self.table, scene.classes, has_gt, scene.root)
        self.thing_ids = {c.id for c in self.classes_out if c.thing}

    def prepare(self) -> None:
        """Load both models (errors name the file) and tokenise the captions."""
        self.dino, self.tokenizer = load_dino(self.dino_config, self.dino_checkpoint, self.text_encoder)
        self.sam = load_sam(self.sam_checkpoint, self.sam_type, self.sam_specs)
        self.dino.to(self.device)
        self.sam.to(self.device)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(f"the text encoder's tokenizer ({type(self.tokenizer).__name__}) gives no character "
                              "offsets; a 'fast' tokenizer (tokenizer.json or vocab.txt) is needed")
        max_tokens = int(getattr(self.dino, "max_text_len", 256))
        n_tokens = lambda caption: len(self.tokenizer(caption)["input_ids"])  # noqa: E731
        self._chunks = []
        for chunk in split_keywords(n_tokens, self.table.keywords, max_tokens):
            words = [self.table.keywords[k] for k in chunk]
            caption, char_spans = build_caption(words)
            offsets = self.tokenizer(caption, return_offsets_mapping=True)["offset_mapping"]
            spans = token_spans([tuple(o) for o in offsets], char_spans)
            empty = [w for w, s in zip(words, spans) if not s]
            if empty:
                raise ConfigError(f"{self.table.source}: keyword(s) {empty} give no tokens")
            self._chunks.append((caption, spans, [self.id_map[self.table.keyword_class[k]] for k in chunk]))

    # -- inference

    def _dino_batch(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections (after per-class NMS) of a batch of same-size [H, W, 3] uint8 images."""
        import torch
        import torch.nn.functional as F
        h, w = images[0].shape[:2]
        oh, ow = dino_resize_hw(h, w, self.short_side, self.max_side)
        x = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
        x = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(DINO_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(DINO_STD, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        per_image: list[list[Detections]] = [[] for _ in images]
        thing_ids = self.thing_ids
        for caption, spans, classes in self._chunks:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self.dino(x, captions=[caption] * len(images))
            probs = out["pred_logits"].sigmoid().float().cpu().numpy()   # [B, Q, max_text_len]
            boxes = out["pred_boxes"].float().cpu().numpy()              # [B, Q, 4] normalised cxcywh
            for b in range(len(images)):
                per_image[b].append(select_detections(probs[b], boxes[b], spans, classes, thing_ids, self.table,
                                                      w, h))
        result = []
        for parts in per_image:
            det = Detections.concat(parts)
            result.append(det.take(nms_per_class(det.boxes_px, det.scores, det.classes, self.table.nms_iou)))
        return result

    def _sam_masks(self, images: list[np.ndarray], dets: list[Detections]) -> list[np.ndarray]:
        """[N_b, H, W] bool masks, one per detection box, for each image of the batch."""
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide
        h, w = images[0].shape[:2]
        out = [np.zeros((len(d), h, w), bool) for d in dets]
        todo = [b for b, d in enumerate(dets) if len(d)]
        if not todo:
            return out
        sam = self.sam
        resize = ResizeLongestSide(sam.image_encoder.img_size)
        with torch.no_grad():
            inputs = [torch.as_tensor(resize.apply_image(images[b]), device=self.device).permute(2, 0, 1).contiguous()
                      for b in todo]
            input_hw = tuple(inputs[0].shape[-2:])
            emb = sam.image_encoder(torch.stack([sam.preprocess(t) for t in inputs]))   # [B', C, h', w']
            pe = sam.prompt_encoder.get_dense_pe()
            for j, b in enumerate(todo):
                boxes = torch.as_tensor(dets[b].boxes_px, dtype=torch.float32, device=self.device)
                boxes = resize.apply_boxes_torch(boxes, (h, w))
                for s in range(0, len(boxes), SAM_BOXES_PER_CALL):
                    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes[s:s + SAM_BOXES_PER_CALL], masks=None)
                    low_res, _iou = sam.mask_decoder(image_embeddings=emb[j:j + 1], image_pe=pe,
                                                     sparse_prompt_embeddings=sparse,
                                                     dense_prompt_embeddings=dense, multimask_output=False)
                    masks = sam.postprocess_masks(low_res, input_size=input_hw, original_size=(h, w))
                    out[b][s:s + SAM_BOXES_PER_CALL] = (masks[:, 0] > sam.mask_threshold).cpu().numpy()
        return out

    def masks(self, scene: Scene, indices: list[int]) -> list[FrameMasks]:
        assert self.dino is not None and self.sam is not None, "prepare() first"
        images = [scene.load_color(i) for i in indices]            # [H, W, 3] uint8 each
        dets = self._dino_batch(images)
        sam_masks = self._sam_masks(images, dets)
        thing_ids = self.thing_ids
        out = []
        for d, m in zip(dets, sam_masks):
            is_thing = np.isin(d.classes, sorted(thing_ids))
            fm = merge_masks(m, d.scores, d.classes, is_thing, self.table.min_area_px)
            fm.log["boxes_px"] = d.boxes_px.round(1).tolist()
            out.append(fm)
        return out
