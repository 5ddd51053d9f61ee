"""Prompt tables for the Grounded-SAM front-end (configs/prompts/*.yaml).

A prompt table lists the classes of one scene type. Each class has a name, a
thing/stuff flag and one or more text keywords; GroundingDINO is prompted with
all keywords of all classes, and a box found for a keyword gets that keyword's
class. The table also holds the detection thresholds:

    box_threshold: 0.25     # a box is kept if its best caption-token probability exceeds this
    text_threshold: 0.25    # ... and its best keyword's probability exceeds this
    nms_iou: 0.5            # same-class boxes overlapping more than this (IoU) are suppressed
    max_box_frac: 0.7       # thing boxes wider AND taller than this fraction of the image are skipped
    min_area_px: 0          # masks with fewer visible pixels than this are dropped
    classes:
      - {name: wall, thing: false, prompts: [wall]}
      - {id: 5, name: chair, thing: true, prompts: [chair, armchair]}

Class ids are optional: classes without one get the smallest unused positive id,
in table order. Keywords are matched case-insensitively and must be unique across
the table (each keyword maps to exactly one class).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from recon.core.config import ConfigError, load_config
from recon.data.scene import ClassInfo

CAPTION_SEP = " . "  # GroundingDINO's phrase separator; the caption ends with " ."


@dataclass
class PromptClass:
    name: str
    thing: bool
    prompts: list[str] = field(default_factory=list)
    id: int | None = None


@dataclass
class PromptTableFile:
    """The YAML file as written (ids optional)."""
    classes: list[PromptClass] = field(default_factory=list)
    box_threshold: float = 0.25
    text_threshold: float = 0.25
    nms_iou: float = 0.5
    max_box_frac: float = 0.7
    min_area_px: int = 0


@dataclass(frozen=True)
class PromptTable:
    """A validated prompt table: classes with ids, keyword -> class id, thresholds."""
    classes: tuple[ClassInfo, ...]
    keywords: tuple[str, ...]          # [K] normalised keywords, table order
    keyword_class: tuple[int, ...]     # [K] class id of each keyword
    box_threshold: float = 0.25
    text_threshold: float = 0.25
    nms_iou: float = 0.5
    max_box_frac: float = 0.7
    min_area_px: int = 0
    source: str = ""

    def thing_ids(self) -> set[int]:
        return {c.id for c in self.classes if c.thing}

    def to_dict(self) -> dict:
        """Everything that determines the masks (for resume fingerprints)."""
        return {"classes": [dataclasses.asdict(c) | {"prompts": list(c.prompts)} for c in self.classes],
                "box_threshold": self.box_threshold, "text_threshold": self.text_threshold,
                "nms_iou": self.nms_iou, "max_box_frac": self.max_box_frac, "min_area_px": self.min_area_px}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def normalise_keyword(text: str) -> str:
    """Lower case, single spaces, no surrounding blanks: '  Office   Chair ' -> 'office chair'."""
    return re.sub(r"\s+", " ", text.strip().lower())


def build_prompt_table(raw: PromptTableFile, where: str = "prompt table") -> PromptTable:
    """Validate `raw` and assign ids; ConfigError naming `where` and the class on any problem."""
    problems: list[str] = []
    for key in ("box_threshold", "text_threshold", "nms_iou", "max_box_frac"):
        v = getattr(raw, key)
        if not 0.0 <= v <= 1.0:
            problems.append(f"{key} must lie in [0, 1], got {v}")
    if raw.min_area_px < 0:
        problems.append(f"min_area_px must be >= 0, got {raw.min_area_px}")
    if not raw.classes:
        problems.append("no classes: 'classes' must list at least one {name, thing, prompts}")
    taken = {c.id for c in raw.classes if c.id is not None}
    names: set[str] = set()
    ids: set[int] = set()
    owner: dict[str, str] = {}
    classes: list[ClassInfo] = []
    keywords: list[str] = []
    keyword_class: list[int] = []
    next_id = 1
    for n, c in enumerate(raw.classes):
        label = f"class {n} ({c.name!r})"
        if not c.name.strip():
            problems.append(f"class {n}: empty name")
            continue
        if c.name in names:
            problems.append(f"{label}: name appears twice")
            continue
        names.add(c.name)
        cid = c.id
        if cid is None:
            while next_id in taken or next_id in ids:
                next_id += 1
            cid = next_id
        if not 0 < cid <= 65535:
            problems.append(f"{label}: id {cid} must be in 1..65535 (0 is 'unlabelled')")
            continue
        if cid in ids:
            problems.append(f"{label}: id {cid} is used twice")
            continue
        ids.add(cid)
        prompts = [normalise_keyword(p) for p in (c.prompts or [c.name])]
        for p in prompts:
            if not p:
                problems.append(f"{label}: empty keyword")
            elif "." in p or "?" in p:
                problems.append(f"{label}: keyword {p!r} contains '.' or '?', which GroundingDINO reads as "
                                "a phrase separator")
            elif p in owner:
                problems.append(f"{label}: keyword {p!r} already belongs to class {owner[p]!r}; each keyword "
                                "maps to one class")
            else:
                owner[p] = c.name
                keywords.append(p)
                keyword_class.append(cid)
        classes.append(ClassInfo(cid, c.name, c.thing, tuple(dict.fromkeys(prompts))))
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    return PromptTable(classes=tuple(sorted(classes, key=lambda c: c.id)), keywords=tuple(keywords),
                       keyword_class=tuple(keyword_class), box_threshold=raw.box_threshold,
                       text_threshold=raw.text_threshold, nms_iou=raw.nms_iou, max_box_frac=raw.max_box_frac,
                       min_area_px=raw.min_area_px, source=where)


def load_prompt_table(path: str | Path) -> PromptTable:
    """Read and validate a prompt table YAML file; ConfigError naming the file on any problem."""
    path = Path(path)
    raw = load_config(PromptTableFile, path)
    return build_prompt_table(raw, where=str(path))


def build_caption(keywords: list[str] | tuple[str, ...]) -> tuple[str, list[tuple[int, int]]]:
    """GroundingDINO caption 'kw1 . kw2 . kw3 .' and each keyword's [start, end) character span."""
    assert len(keywords) > 0, "a caption needs at least one keyword"
    spans, parts, pos = [], [], 0
    for n, kw in enumerate(keywords):
        if n:
            parts.append(CAPTION_SEP)
            pos += len(CAPTION_SEP)
        spans.append((pos, pos + len(kw)))
        parts.append(kw)
        pos += len(kw)
    return "".join(parts) + " .", spans


def token_spans(offsets: list[tuple[int, int]], char_spans: list[tuple[int, int]]) -> list[list[int]]:
    """Token indices covering each character span.

    `offsets` [T] are the tokenizer's (start, end) character offsets per token, with
    (0, 0) for special tokens ([CLS], [SEP], padding). A token belongs to a span when
    their character ranges overlap.
    """
    out = []
    for s, e in char_spans:
        idx = [t for t, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
        out.append(idx)
    return out


def split_keywords(n_tokens_of, keywords: tuple[str, ...] | list[str], max_tokens: int) -> list[list[int]]:
    """Split keyword indices into consecutive chunks whose caption fits in `max_tokens` tokens.

    `n_tokens_of(caption)` counts the tokens of a caption including special tokens.
    Raises ConfigError if a single keyword does not fit.
    """
    chunks: list[list[int]] = []
    cur: list[int] = []
    for k, kw in enumerate(keywords):
        trial = cur + [k]
        if n_tokens_of(build_caption([keywords[i] for i in trial])[0]) <= max_tokens:
            cur = trial
            continue
        if not cur:
            raise ConfigError(f"keyword {kw!r} alone is longer than the text encoder's {max_tokens} tokens")
        chunks.append(cur)
        cur = [k]
        if n_tokens_of(build_caption([kw])[0]) > max_tokens:
            raise ConfigError(f"keyword {kw!r} alone is longer than the text encoder's {max_tokens} tokens")
    if cur:
        chunks.append(cur)
    return chunks


def resolve_classes(table: PromptTable, scene_classes: list[ClassInfo], has_gt: bool,
                    scene_dir: Path) -> tuple[list[ClassInfo], dict[int, int]]:
    """The classes.json to write with the masks, and table class id -> written class id.

    Without ground truth in the scene the table's classes are written as they are.
    With ground truth (gt/ images or mesh), the scene's class ids must stay: a table
    class whose name matches a scene class (case-insensitively) takes that class's id
    (and must agree on thing/stuff), the other table classes get ids the scene does
    not use, and scene classes absent from the table are kept (gt/ may use them).
    Matched classes take the table's prompts.
    """
    if not has_gt or not scene_classes:
        return list(table.classes), {c.id: c.id for c in table.classes}
    by_name = {normalise_keyword(c.name): c for c in scene_classes}
    used = {c.id for c in scene_classes}
    id_map: dict[int, int] = {}
    problems = []
    matched: dict[int, ClassInfo] = {}
    for t in table.classes:
        s = by_name.get(normalise_keyword(t.name))
        if s is None:
            continue
        if s.thing != t.thing:
            problems.append(f"{t.name!r} is {'a thing' if t.thing else 'stuff'} in the table but "
                            f"{'a thing' if s.thing else 'stuff'} in the scene")
            continue
        id_map[t.id] = s.id
        matched[s.id] = ClassInfo(s.id, s.name, s.thing, t.prompts)
    if problems:
        raise ConfigError(f"prompt table {table.source} disagrees with {scene_dir / 'classes.json'} (which the "
                          "scene's ground truth uses): " + "; ".join(problems))
    out = [matched.get(c.id, c) for c in scene_classes]
    next_id = 1
    for t in table.classes:
        if t.id in id_map:
            continue
        cid = t.id
        if cid in used:
            while next_id in used:
                next_id += 1
            cid = next_id
        used.add(cid)
        id_map[t.id] = cid
        out.append(ClassInfo(cid, t.name, t.thing, t.prompts))
    return sorted(out, key=lambda c: c.id), id_map
