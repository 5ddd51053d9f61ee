"""Object queries on a finished run: `python run.py query --run RUN "chair" [--near X,Y,Z] [--json]`.

Reads only the run folder: RUN/instances.json (one entry per object: id, class, score, bounding box,
centroid, mesh file), RUN/legend.json and, where `run.py embed` has been run, RUN/language.npz
(recon/postfit/language.py). No checkpoint and no scene are needed for a class query.

How a text matches an instance, in this order:

1. **Class name.** The text, lower-cased with runs of blanks, '_' and '-' made single spaces and a
   plural's last word made singular ('Office_Chairs' -> 'office chair'), equals the instance's class
   name normalised the same way.
2. **Prompt synonyms.** The text is one of the keywords of a prompt table (by default every table in
   configs/prompts/; `--prompts FILE` adds the one the scene's masks were made with), and that keyword's
   class name is the instance's class: 'couch' finds the sofas, 'desk' the tables (a class's own
   name wins: where the run has a class 'desk', 'desk' finds only those).
3. **Language features** (only with RUN/language.npz and the CLIP checkpoint it was made with): every
   instance is ranked by the cosine similarity between its CLIP image embedding (the mean of its
   best-seen crops) and the text's CLIP embedding. Where steps 1-2 found classes, the CLIP score only
   orders those instances (and is reported); otherwise the query is free text and the `top` instances
   by similarity are returned (`--top`, default 5). Without language features the vocabulary is the
   run's class names plus the prompt tables' keywords, and a text outside it is an error that lists them.

Each hit has the instance's id, class, score, centroid, bounding box (min, max, size in metres, axis
aligned in the scene frame), its distance to `--near` (from the point to the box, 0 inside it), the
absolute path of its mesh file, how it matched, and the CLIP similarity where computed. With `--near`
hits are sorted by distance, otherwise by match quality then score.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recon.core.config import ConfigError
from recon.data.prompts import load_prompt_table

MATCH_ORDER = ("class", "synonym", "clip")
DEFAULT_TOP = 5


class QueryError(Exception):
    """A query that cannot be answered (no such run file, an unknown word); the message says why."""


@dataclass
class InstanceRecord:
    id: int
    class_name: str
    score: float
    centroid: list[float]          # [3] metres, scene frame
    bbox_min: list[float]          # [3]
    bbox_max: list[float]          # [3]
    file: str                      # absolute path of the instance's mesh


@dataclass
class QueryHit:
    id: int
    class_name: str
    score: float
    centroid: list[float]
    bbox_min: list[float]
    bbox_max: list[float]
    size_m: list[float]            # [3] bbox_max - bbox_min
    distance_m: float | None       # from --near to the box (0 inside); None without --near
    file: str
    match: str                     # class | synonym | clip
    similarity: float | None       # CLIP cosine similarity, where language features were used

    def to_dict(self) -> dict:
        return {("class" if k == "class_name" else k): v for k, v in asdict(self).items()}


# ------------------------------------------------------------------------------------------------
# text matching (pure)
# ------------------------------------------------------------------------------------------------
def singular(word: str) -> str:
    """English singular of one lower-case word by the regular rules; words that are not plurals stay.

    'chairs' -> 'chair', 'shelves' -> 'shelf', 'boxes' -> 'box', 'benches' -> 'bench', 'lamps' -> 'lamp',
    'bookcases' -> 'bookcase', 'glass' / 'series' / 'bus' stay as they are."""
    if len(word) <= 3 or word.endswith(("ss", "us", "is", "series", "species")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("ves") and word not in ("curves", "valves", "grooves", "sleeves", "stoves"):
        return word[:-3] + "f"
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def normalise_text(text: str) -> str:
    """'  Office_Chairs ' -> 'office chair': lower case, '_' / '-' / runs of blanks -> one space, the last
    word made singular."""
    words = re.sub(r"[\s_\-]+", " ", text.strip().lower()).split()
    if not words:
        return ""
    words[-1] = singular(words[-1])
    return " ".join(words)


def synonym_table(tables: list[list[tuple[str, list[str]]]]) -> dict[str, set[str]]:
    """Keyword -> normalised class names over prompt tables given as [(class name, [keywords])].

    A keyword that means different classes in different tables maps to all of them; each class name is
    also a keyword of itself."""
    out: dict[str, set[str]] = {}
    for table in tables:
        for name, keywords in table:
            cname = normalise_text(name)
            for kw in [name, *keywords]:
                out.setdefault(normalise_text(kw), set()).add(cname)
    return out


def match_classes(text: str, class_names: list[str], synonyms: dict[str, set[str]]) -> dict[str, str]:
    """The run's class names that `text` names, each with how: 'class' (its own name; then only that one) or
    else 'synonym' (every class that a prompt table gives this keyword)."""
    q = normalise_text(text)
    by_norm = {normalise_text(n): n for n in class_names}
    if q in by_norm:
        return {by_norm[q]: "class"}
    return {by_norm[c]: "synonym" for c in sorted(synonyms.get(q, ())) if c in by_norm}


def box_distance(point: np.ndarray, bbox_min: np.ndarray, bbox_max: np.ndarray) -> float:
    """Euclidean distance from `point` [3] to the axis-aligned box [bbox_min, bbox_max]; 0 inside it."""
    point, lo, hi = (np.asarray(a, np.float64).reshape(3) for a in (point, bbox_min, bbox_max))
    gap = np.maximum(np.maximum(lo - point, point - hi), 0.0)    # [3] per-axis distance outside the box
    return float(np.linalg.norm(gap))


# ------------------------------------------------------------------------------------------------
# run files
# ------------------------------------------------------------------------------------------------
def read_instances(run: Path) -> list[InstanceRecord]:
    """RUN/instances.json as records (mesh paths made absolute); QueryError naming the file if unreadable."""
    path = Path(run) / "instances.json"
    if not path.is_file():
        raise QueryError(f"{path}: missing (is {run} a finished run folder? `run.py fit` writes it)")
    try:
        raw = json.loads(path.read_text())
        recs = []
        for e in raw["instances"]:
            recs.append(InstanceRecord(id=int(e["id"]), class_name=str(e["class"]), score=float(e["score"]),
                                       centroid=[float(x) for x in e["centroid"]],
                                       bbox_min=[float(x) for x in e["bbox_min"]],
                                       bbox_max=[float(x) for x in e["bbox_max"]],
                                       file=str((Path(run) / e["file"]).resolve()) if e.get("file") else ""))
    except (ValueError, KeyError, TypeError) as exc:
        raise QueryError(f"{path}: not a valid instances file ({type(exc).__name__}: {exc})") from None
    return recs


def prompt_tables(paths: list[Path]) -> list[list[tuple[str, list[str]]]]:
    """[(class name, keywords)] of each prompt table file in `paths`; a broken file is an error naming it."""
    tables = []
    for p in paths:
        try:
            t = load_prompt_table(p)
        except ConfigError as exc:
            raise QueryError(str(exc)) from None
        kw: dict[int, list[str]] = {}
        for k, cid in zip(t.keywords, t.keyword_class):
            kw.setdefault(cid, []).append(k)
        tables.append([(c.name, kw.get(c.id, [])) for c in t.classes])
    return tables


# ------------------------------------------------------------------------------------------------
# the query
# ------------------------------------------------------------------------------------------------
def query_instances(instances: list[InstanceRecord], text: str, synonyms: dict[str, set[str]],
                    near: np.ndarray | None = None, similarity: dict[int, float] | None = None,
                    top: int = DEFAULT_TOP) -> list[QueryHit]:
    """The instances `text` names (module docstring); `similarity` maps instance id -> CLIP cosine
    similarity to the text (language features), or None without them."""
    if not text.strip():
        raise QueryError("the query text is empty")
    names = sorted({r.class_name for r in instances})
    classes = match_classes(text, names, synonyms)
    if classes:
        chosen = [(r, classes[r.class_name]) for r in instances if r.class_name in classes]
    elif similarity is not None:
        ranked = sorted(instances, key=lambda r: -similarity.get(r.id, -np.inf))
        chosen = [(r, "clip") for r in ranked[:max(int(top), 1)]]
    else:
        vocab = sorted(set(names) | {k for k, v in synonyms.items() if v & {normalise_text(n) for n in names}})
        raise QueryError(f"no class of this run is called {text!r} (nor is it a prompt synonym of one); this run's "
                         f"vocabulary: {', '.join(vocab)}. For free text, run `run.py embed --run RUN "
                         "--clip-checkpoint FILE` first (language features)")
    hits = []
    for r, how in chosen:
        lo, hi = np.asarray(r.bbox_min), np.asarray(r.bbox_max)
        hits.append(QueryHit(id=r.id, class_name=r.class_name, score=r.score, centroid=r.centroid,
                             bbox_min=r.bbox_min, bbox_max=r.bbox_max,
                             size_m=[round(float(x), 4) for x in hi - lo],
                             distance_m=None if near is None else round(box_distance(near, lo, hi), 4),
                             file=r.file, match=how,
                             similarity=None if similarity is None else round(float(similarity.get(r.id, np.nan)), 4)))
    if near is not None:
        hits.sort(key=lambda h: (h.distance_m, h.id))
    else:
        hits.sort(key=lambda h: (MATCH_ORDER.index(h.match), -(h.similarity if h.similarity is not None
                                                                and np.isfinite(h.similarity) else 0.0),
                                 -h.score, h.id))
    return hits


def parse_point(text: str) -> np.ndarray:
    """'1.5,2,0.8' -> [3] float64; QueryError on anything else."""
    try:
        p = np.array([float(x) for x in text.split(",")], np.float64)
    except ValueError:
        p = np.zeros(0)
    if p.shape != (3,) or not np.isfinite(p).all():
        raise QueryError(f"--near must be three comma-separated numbers in metres like 1.5,2,0.8; got {text!r}")
    return p


def format_hits(hits: list[QueryHit], text: str) -> str:
    """A table for the terminal."""
    if not hits:
        return f"no instance matches {text!r}"
    rows = [f"{len(hits)} instance(s) for {text!r}:",
            f"{'id':>4}  {'class':<16} {'score':>5}  {'centroid (m)':<22} {'size (m)':<20} "
            f"{'dist':>6}  {'match':<7} {'clip':>6}  file"]
    for h in hits:
        c = ",".join(f"{x:.2f}" for x in h.centroid)
        s = "x".join(f"{x:.2f}" for x in h.size_m)
        d = "" if h.distance_m is None else f"{h.distance_m:.2f}"
        sim = "" if h.similarity is None else f"{h.similarity:.3f}"
        rows.append(f"{h.id:>4}  {h.class_name:<16} {h.score:>5.2f}  {c:<22} {s:<20} {d:>6}  {h.match:<7} {sim:>6}  "
                    f"{h.file}")
    return "\n".join(rows)
