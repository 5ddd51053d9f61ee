"""Label images of a trained run: RUN/labels/semantic|instance/<frame id>.png for every frame.

Rendered from the fields (recon/model/inference.py, the same label rule as the mesh) with each
frame's own depth guiding the samples; instance ids go through the mesh's token -> id map
(RUN/instances.json), so they match the mesh. Where the mesh's labels were changed after the fields
(recon/postfit/mask_relabel.py, RUN/relabel.npz), pixels on those vertices take the mesh's labels. With
panoptic.consistent_ids, a thing pixel whose id is no instance of instances.json of its class loses the id
(recon/postfit/panoptic_consistency.py).
uint16 PNG, 0 = unlabelled / no instance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from recon.core.faults import fault_point
from recon.data.run_files import write_label_images
from recon.model.inference import frame_labels
from recon.model.instance_branch import InstanceBranch
from recon.postfit.labelled_mesh import apply_ids, read_token_ids
from recon.postfit.mask_relabel import relabel_corrector
from recon.postfit.panoptic_consistency import consistent_ids, instances_json_classes


def write_run_labels(run: Path, model, branch: InstanceBranch | None, scene, s, frames: list[int] | None = None,
                     log=print, progress: bool = True) -> Path:
    """Render and write RUN/labels/{semantic,instance}/<frame>.png for `frames` (default: every frame),
    instance ids through the mesh's token -> id map (RUN/instances.json)."""
    run = Path(run)
    idx = list(range(len(scene))) if frames is None else list(frames)
    token_ids = read_token_ids(run, branch.tokens.n) if branch is not None else np.zeros(0, np.int64)
    for sub in ("semantic", "instance"):
        (run / "labels" / sub).mkdir(parents=True, exist_ok=True)
    corrector = relabel_corrector(run, s.panoptic.relabel_depth_tol_m, s.mesh.voxel_size_m)
    n_fixed = 0
    id_class = instances_json_classes(run) if branch is not None and s.panoptic.consistent_ids else None
    things = scene.thing_ids()
    model.eval()
    for i in tqdm(idx, desc="labels", dynamic_ncols=True, disable=not progress, mininterval=1.0):
        sem, tok = frame_labels(model, branch, scene, s, i)
        inst = apply_ids(tok, token_ids)
        if corrector is not None:
            sem, inst, n = corrector.correct(scene.K, scene.c2w[i], scene.load_depth_m(i), sem, inst)
            n_fixed += n
        if id_class is not None:
            inst = consistent_ids(sem, inst, id_class, things)
        write_label_images(run, [scene.frame_ids[i]], [sem], [inst])
        fault_point("labels")
    log(f"wrote label images of {len(idx)} frames to {run / 'labels'}"
        + (f" ({n_fixed} pixels on relabelled mesh vertices took the mesh's labels)" if corrector is not None else ""))
    return run / "labels"
