"""What each bench scene's masks carry in 3D (eval/mask_reference.py), cached per scene and recomputed
when the scene's masks or GT mesh change."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from app.bench.records import json_clean
from app.bench.suites import Suite, suite_cells
from eval.mask_reference import mask_reference
from recon.core.io import atomic_write_text
from recon.data.scene import load_scene


def scene_fingerprint(scene_dir: Path) -> str:
    """A hash of the names, sizes and modification times of a scene's masks/ and gt/mesh.ply: what the
    mask reference reads (besides poses and depth, which a scene does not change without its masks)."""
    h = hashlib.sha256()
    scene_dir = Path(scene_dir)
    files = sorted(p for p in (scene_dir / "masks").rglob("*") if p.is_file()) + \
        [p for p in [scene_dir / "gt" / "mesh.ply"] if p.is_file()]
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(scene_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def ensure_references(suite: Suite, out: Path, log=print) -> dict[str, dict]:
    """The mask references (eval/mask_reference.py) of the suite's scenes that exist under `out` (or as
    scene folders), computed once into DIR/references/<scene_key>.json and recomputed when the scene's
    masks or GT mesh change: {scene key: {"semantic_3d_miou", "instance_3d_mcov", "instance_3d_per_instance"
    (where the scene has thing instances)}}. Scenes without masks,
    a GT mesh or GT labels are left out; a scene whose reference fails is logged and left out."""
    refs: dict[str, dict] = {}
    seen = set()
    for cell in suite_cells(suite):
        key = cell.scene_key
        if key in seen:
            continue
        seen.add(key)
        scene_dir = Path(cell.scene.path) if cell.scene.path is not None else out / "scenes" / key
        if not (scene_dir / "classes.json").is_file() or not (scene_dir / "masks").is_dir() \
                or not (scene_dir / "gt" / "mesh.ply").is_file():
            continue
        path = out / "references" / f"{key}.json"
        stamp = scene_fingerprint(scene_dir)
        doc = json.loads(path.read_text()) if path.is_file() else None
        if doc is None or doc.get("fingerprint") != stamp:
            try:
                ref = mask_reference(load_scene(scene_dir, check_images=False))
            except Exception as exc:   # noqa: BLE001 - a reference is optional; the cells are what matter
                log(f"mask reference of {key} failed: {type(exc).__name__}: {exc}")
                continue
            doc = {"fingerprint": stamp, "reference": ref}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(json_clean(doc), indent=1) + "\n")
            log(f"mask reference of {key}: semantic_3d {ref['semantic_3d']['miou']:.1f}"
                + (f", instance_3d {ref['instance_3d']['mcov']:.1f}" if "instance_3d" in ref else ""))
        ref = doc["reference"]
        refs[key] = {"semantic_3d_miou": ref["semantic_3d"]["miou"],
                     "instance_3d_mcov": ref.get("instance_3d", {}).get("mcov")}
        if ref.get("instance_3d", {}).get("per_instance"):
            refs[key]["instance_3d_per_instance"] = ref["instance_3d"]["per_instance"]
    return json_clean(refs)
