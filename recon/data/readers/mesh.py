"""Ground-truth meshes for gt/mesh.ply: copy a world-frame mesh, or write one with per-vertex labels."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from recon.data.readers.common import ReaderError
from recon.data.ply import read_ply, write_ply


def read_mesh(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """(vertices [V, 3] m, faces [F, 3], colours [V, 3] uint8 or None, other vertex properties)."""
    if not Path(path).is_file():
        raise ReaderError(f"{path}: missing (ground-truth mesh)")
    try:
        v, f, c, props = read_ply(path)
    except Exception as exc:  # plyfile raises several types for malformed files
        raise ReaderError(f"{path}: not a readable PLY mesh ({type(exc).__name__}: {exc})") from None
    if len(v) == 0 or len(f) == 0:
        raise ReaderError(f"{path}: mesh has {len(v)} vertices and {len(f)} faces; a GT mesh needs both")
    return v, f, c, props


def labelled_mesh_writer(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None,
                         semantic: np.ndarray | None, instance: np.ndarray | None) -> Callable[[Path], None]:
    """A gt_mesh_writer for write_scene: PLY with optional int32 `semantic` / `instance` per vertex."""
    props = {}
    if semantic is not None:
        assert semantic.shape == (len(vertices),), semantic.shape
        props["semantic"] = np.asarray(semantic, np.int32)
    if instance is not None:
        assert instance.shape == (len(vertices),), instance.shape
        props["instance"] = np.asarray(instance, np.int32)

    def write(path: Path) -> None:
        write_ply(path, vertices, faces, vertex_props=props, colors=colors)
    return write


def copy_mesh_writer(path: Path, keep_labels: bool = True) -> tuple[Callable[[Path], None], set[int]]:
    """Check `path` now (before any frame is converted); return (a writer that copies it as gt/mesh.ply,
    the semantic ids its vertices use). Integer `semantic` / `instance` vertex properties are kept
    as they are when `keep_labels` (they must already be in the scene's id space), else dropped."""
    v, f, c, props = read_mesh(Path(path))
    keep = {k: props[k] for k in ("semantic", "instance") if k in props} if keep_labels else {}
    for k, arr in keep.items():
        if not np.issubdtype(arr.dtype, np.integer):
            raise ReaderError(f"{path}: vertex property '{k}' must be integer, found {arr.dtype}")
    used = set(np.unique(keep["semantic"]).tolist()) - {0} if "semantic" in keep else set()
    return labelled_mesh_writer(v, f, c, keep.get("semantic"), keep.get("instance")), used
