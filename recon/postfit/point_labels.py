"""Labels of a finished run queried from its trained fields at arbitrary world points."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.model.inference import vertex_attributes
from recon.postfit.labelled_mesh import apply_ids, read_token_ids
from recon.postfit.panoptic_consistency import consistent_ids, instances_json_classes
from recon.train.checkpoint import has_checkpoint
from recon.train.runs import load_run_full


def run_point_labels(run: Path, points: np.ndarray, device: str | None = "cpu"
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """(class id [N], instance id [N]) queried from a run's trained fields at world points [N, 3]
    (e.g. the GT mesh's vertices), the way the mesh's vertices are labelled: l_P (or, without the
    panoptic head, the semantic field and the tokens) `mesh.label_offset_m` inside the surface along
    the SDF gradient, instance ids through the run's token -> id map (so fragment merges apply) and, with
    panoptic.consistent_ids, kept only where they name an instance of instances.json of the point's class.
    None when the run has no checkpoint to query."""
    run = Path(run)
    points = np.asarray(points, np.float32)
    assert points.ndim == 2 and points.shape[1] == 3, f"points must be [N, 3], got {points.shape}"
    if not has_checkpoint(run):
        return None
    s, model, branch, scene = load_run_full(run, device)
    attrs = vertex_attributes(model, points, s.mesh.label_offset_m, branch=branch, head=bool(s.panoptic.head))
    sem = attrs["semantic"].astype(np.int64) if scene.has_masks else np.zeros(len(points), np.int64)
    if branch is None:
        return sem, np.zeros(len(points), np.int64)
    inst = apply_ids(attrs["token"].astype(np.int64), read_token_ids(run, branch.tokens.n))
    id_class = instances_json_classes(run) if s.panoptic.consistent_ids else None
    if id_class is not None:                              # as the mesh and the label images (panoptic consistency)
        inst = consistent_ids(sem, inst, id_class, scene.thing_ids())
    return sem, inst
