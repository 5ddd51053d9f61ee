"""Labels where the masks are silent (ours, not in the paper; `panoptic.split_untokened`,
`panoptic.fill_unmasked`, both on by default; docs/method.md 12.5).

The semantic and instance fields are trained only where a training frame's mask labels a pixel. Elsewhere
(a chair leg or a lamp pole eroded out of every mask at 160x120, the underside of a table, the back of an
object against a wall) their labels are whatever the hash grid extrapolates, often the wall or floor behind.
Two rules on the labelled mesh:

1. **Split untokened regions.** With the panoptic head a thing class that no token carries keeps the
   semantic field's class but the instance of the token that covers it (recon/model/inference.py): bottles
   on a table carry the table's id. A connected region of the mesh (same class, same id) whose class no
   instance carries (an instance's class is the majority class of its vertices) gets an id of its own, if
   it has at least `min_vertices` vertices and the masks call it that class in at least `min_mask_share` of
   the times they label its vertices (so a patch of wall that noisy masks call a bottle now and then stays).
2. **Fill the unconfirmed.** A vertex whose class no training mask confirms (no frame where it is seen, its
   depth within `depth_tol_m` of the frame's observed depth, has a mask of that class at its pixel) takes the
   class and id of the nearest vertex (Euclidean) whose class a mask does confirm. A vertex no mask labels at
   all is filled like this, as the masks' reference (eval/mask_reference.py) fills the GT vertices the masks
   leave unlabelled; so is one the masks label only with other classes (the foot of a box, labelled floor by
   every mask but box by the fields).

Only labels change, never the mesh. Label images come from the fields; `correct_label_image` puts the
changed vertices' labels into them (pixels whose back-projected depth lands on a changed vertex), so an id
means the same object in the mesh and in every image. The changed vertices are stored in RUN/relabel.npz.

Measured by relabelling finished fits (docs/method.md 12.5): walk realistic-video seeds 0 / 1 instance_3d
54.9 -> 65.6 and 67.5 -> 72.0, semantic_3d 73.7 -> 76.5 and 81.7 -> 86.2; room, clutter and apartment
semantic_3d +1.0 to +1.7, instance_3d within one point.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.core.io import atomic_write_bytes
from recon.postfit.mask_merge import seen_pixels

RELABEL_FILE = "relabel.npz"


@dataclass
class RelabelParams:
    depth_tol_m: float = 0.03      # a vertex is seen in a frame if within this of the observed depth
    min_vertices: int = 30         # a split region needs at least this many vertices
    min_mask_share: float = 0.5    # ... and the masks' votes on it this share for its class


def relabel_params(s) -> RelabelParams:
    """The rules' parameters from fit settings `s` (panoptic.relabel_depth_tol_m, split_min_mask_share,
    min_instance_vertices)."""
    p = s.panoptic
    return RelabelParams(depth_tol_m=float(p.relabel_depth_tol_m), min_vertices=int(p.min_instance_vertices),
                         min_mask_share=float(p.split_min_mask_share))


def mask_class_votes(verts: np.ndarray, scene, frame_index: list[int], depth_tol_m: float,
                     progress: bool = False) -> np.ndarray:
    """votes [V, C] (uint16; int32 past 65,534 frames): in how many of the frames `frame_index` the mask labels
    vertex v (world m, verts [V, 3]) with class c > 0, where the frame sees it (mask_merge.seen_pixels). Column 0
    stays 0."""
    from tqdm import tqdm

    assert verts.ndim == 2 and verts.shape[1] == 3, f"verts must be [V, 3], got {verts.shape}"
    n_cls = max([c.id for c in scene.classes], default=0) + 1
    dtype = np.uint16 if len(frame_index) < np.iinfo(np.uint16).max else np.int32      # a vertex votes once a frame
    votes = np.zeros((len(verts), n_cls), dtype)
    for i in tqdm(frame_index, desc="mask support", disable=not progress, leave=False):
        idx, v, u = seen_pixels(verts, scene.K, scene.c2w[i], scene.load_depth_m(i), depth_tol_m)
        _, m_sem, _ = scene.load_masks(i)
        lab = m_sem[v, u].astype(np.int64)                                          # [M]
        if lab.size and int(lab.max()) >= n_cls:
            raise ValueError(f"{scene.root / 'masks' / 'semantic' / (scene.frame_ids[i] + '.png')}: class id "
                             f"{int(lab.max())} is not in classes.json")
        keep = lab > 0
        np.add.at(votes, (idx[keep], lab[keep]), 1)
    return votes


def instance_classes(sem: np.ndarray, inst: np.ndarray) -> dict[int, int]:
    """{instance id > 0: the majority class of its vertices} (ties: the lower class id)."""
    return {int(i): int(np.bincount(sem[inst == i]).argmax()) for i in np.unique(inst[inst > 0])}


def _components(faces: np.ndarray, n: int, keep_edge) -> np.ndarray:
    """Connected component label [n] of the mesh graph restricted to the edges keep_edge(a, b) accepts."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]) if len(faces) else np.zeros((0, 2), int)
    e = e[keep_edge(e[:, 0], e[:, 1])]
    g = coo_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def untokened_regions(faces: np.ndarray, sem: np.ndarray, inst: np.ndarray, votes: np.ndarray, thing_ids: list[int],
                      min_vertices: int, min_mask_share: float) -> list[np.ndarray]:
    """Rule 1 of the module docstring: the vertex index arrays of the regions that get ids of their own.
    faces [F, 3]; sem, inst [V] (inst 0 = none); votes [V, C] (mask_class_votes)."""
    sem, inst = np.asarray(sem, np.int64), np.asarray(inst, np.int64)
    assert sem.shape == inst.shape == votes.shape[:1], (sem.shape, inst.shape, votes.shape)
    carried = set(instance_classes(sem, inst).values())
    lost = [c for c in thing_ids if c not in carried]
    if not lost or len(sem) == 0:
        return []
    cand = np.isin(sem, lost)                                                   # [V] a thing class no id carries
    if not cand.any():
        return []
    comp = _components(faces, len(sem), lambda a, b: cand[a] & cand[b] & (sem[a] == sem[b]) & (inst[a] == inst[b]))
    out = []
    for c in np.unique(comp[cand]):
        members = np.flatnonzero(cand & (comp == c))
        if len(members) < min_vertices:
            continue
        cls = int(sem[members[0]])
        tot = votes[members].sum(0)                                             # [C] the masks' votes on it
        if tot.sum() > 0 and tot[cls] >= min_mask_share * tot.sum():
            out.append(members)
    return out


def fill_unmasked(verts: np.ndarray, sem: np.ndarray, inst: np.ndarray, supported: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rule 2 of the module docstring: (sem [V], inst [V], filled [V] bool: the labels changed). Vertices not
    `supported` [V] (confirmed) take the labels of their nearest supported vertex; nothing changes when no vertex
    (or every vertex) is."""
    from scipy.spatial import cKDTree

    sem, inst = np.array(sem, np.int64), np.array(inst, np.int64)
    supported = np.asarray(supported, bool)
    assert verts.shape == (len(sem), 3) and inst.shape == sem.shape == supported.shape
    filled = np.zeros(len(sem), bool)
    if supported.all() or not supported.any():
        return sem, inst, filled
    src_pool = np.flatnonzero(supported)
    _, nn = cKDTree(verts[supported]).query(verts[~supported], k=1)
    tgt, src = np.flatnonzero(~supported), src_pool[nn]
    filled[tgt] = (sem[tgt] != sem[src]) | (inst[tgt] != inst[src])
    sem[tgt], inst[tgt] = sem[src], inst[src]
    return sem, inst, filled


def relabel_mesh(verts: np.ndarray, faces: np.ndarray, sem: np.ndarray, inst: np.ndarray, scene,
                 frame_index: list[int], split: bool, fill: bool, params: RelabelParams = RelabelParams(),
                 log=print, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both rules (rule 1 only with `split`, rule 2 only with `fill`) on a labelled mesh, with the masks of the
    scene's frames `frame_index` (the training frames): (sem [V], inst [V], changed [V] bool). New ids follow
    the largest id in use."""
    sem, inst = np.array(sem, np.int64), np.array(inst, np.int64)
    changed = np.zeros(len(sem), bool)
    if not (split or fill) or not scene.has_masks or len(verts) == 0:
        return sem, inst, changed
    votes = mask_class_votes(verts, scene, frame_index, params.depth_tol_m, progress=progress)
    if split:
        regions = untokened_regions(faces, sem, inst, votes, scene.thing_ids(), params.min_vertices,
                                    params.min_mask_share)
        nxt = int(inst.max(initial=0)) + 1
        names = {c.id: c.name for c in scene.classes}
        for k, members in enumerate(regions):
            cls = int(sem[members[0]])
            log(f"untokened split: {len(members)} {names.get(cls, cls)} vertices of instance {int(inst[members[0]])} "
                f"-> instance {nxt + k}")
            inst[members] = nxt + k
            changed[members] = True
        if not regions:
            log("untokened split: none")
    if fill:
        confirmed = votes[np.arange(len(sem)), np.clip(sem, 0, votes.shape[1] - 1)] > 0      # [V]
        confirmed &= (sem > 0) & (sem < votes.shape[1])
        sem, inst, filled = fill_unmasked(verts, sem, inst, confirmed)
        changed |= filled
        log(f"unmasked fill: {int((~confirmed).sum())} of {len(sem)} vertices have a class no mask confirms "
            f"({(~confirmed).mean():.1%}; {int((votes.sum(1) == 0).sum())} no mask labels at all); "
            f"{int(filled.sum())} took other labels from the nearest confirmed vertex")
    return sem, inst, changed


def write_relabel(run: Path, changed: np.ndarray, sem_before: np.ndarray | None = None,
                  inst_before: np.ndarray | None = None) -> None:
    """RUN/relabel.npz: the indices of the mesh vertices the rules changed (read by the label-image step) and,
    given the labels before the rules (sem_before, inst_before [V]), those vertices' earlier labels
    (`labels_before_relabel` puts them back, to see what the rules did)."""
    import io

    idx = np.flatnonzero(changed).astype(np.int64)
    arrays = {"changed": idx}
    if sem_before is not None and inst_before is not None:
        assert len(sem_before) == len(inst_before) == len(changed)
        arrays.update(semantic_before=np.asarray(sem_before, np.int64)[idx],
                      instance_before=np.asarray(inst_before, np.int64)[idx])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(Path(run) / RELABEL_FILE, buf.getvalue())


def _read_relabel_arrays(run: Path, n_vertices: int) -> dict | None:
    path = Path(run) / RELABEL_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        out = {k: z[k].astype(np.int64) for k in z.files}
    idx = out["changed"]
    if idx.size and (idx.min() < 0 or idx.max() >= n_vertices):
        raise ValueError(f"{path}: vertex indices outside the mesh's {n_vertices} vertices (the mesh was rewritten "
                         f"after it; rerun the relabelling)")
    return out


def read_relabel(run: Path, n_vertices: int) -> np.ndarray | None:
    """changed [V] bool from RUN/relabel.npz, or None without the file (a run fitted before the rules, or with
    them off). ValueError naming the file when its indices do not fit the mesh."""
    arrays = _read_relabel_arrays(run, n_vertices)
    if arrays is None:
        return None
    out = np.zeros(n_vertices, bool)
    out[arrays["changed"]] = True
    return out


def labels_before_relabel(run: Path, sem: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The mesh's labels before the rules (sem, inst [V]: RUN/mesh.ply's, with the changed vertices' earlier
    labels from RUN/relabel.npz put back), or None where the file is missing or holds no earlier labels."""
    arrays = _read_relabel_arrays(run, len(sem))
    if arrays is None or "semantic_before" not in arrays:
        return None
    sem, inst = np.array(sem, np.int64), np.array(inst, np.int64)
    sem[arrays["changed"]], inst[arrays["changed"]] = arrays["semantic_before"], arrays["instance_before"]
    return sem, inst


def cull_relabel(run: Path, keep_vertices: np.ndarray) -> None:
    """Carry RUN/relabel.npz over to a mesh culled to the vertices keep_vertices [V_old] bool selects (their order
    kept); nothing without the file."""
    arrays = _read_relabel_arrays(run, len(keep_vertices))
    if arrays is None:
        return
    keep = keep_vertices[arrays["changed"]]                                       # [M] changed vertices kept
    moved = (np.cumsum(keep_vertices) - 1)[arrays["changed"][keep]]               # [M'] their new indices
    changed = np.zeros(int(keep_vertices.sum()), bool)
    changed[moved] = True
    if "semantic_before" not in arrays:
        write_relabel(run, changed)
        return
    sem_b, inst_b = np.zeros(len(changed), np.int64), np.zeros(len(changed), np.int64)
    sem_b[moved], inst_b[moved] = arrays["semantic_before"][keep], arrays["instance_before"][keep]
    write_relabel(run, changed, sem_b, inst_b)


class LabelImageCorrector:
    """Puts the relabelled mesh vertices' labels into label images rendered from the fields: a pixel whose
    back-projected depth (the frame's own, z in metres) lands on the changed part of the mesh takes the class
    and id of its nearest mesh vertex, when that vertex is a changed one. "Lands on" = within tol_m (depth
    tolerance) + the farthest a surface point can be from its nearest vertex, about half a voxel diagonal
    (sqrt(3)/2 x voxel_m, the meshing voxel). verts [V, 3]; sem, inst [V]; changed [V] bool."""

    def __init__(self, verts: np.ndarray, sem: np.ndarray, inst: np.ndarray, changed: np.ndarray, tol_m: float,
                 voxel_m: float = 0.0):
        from scipy.spatial import cKDTree

        assert verts.shape == (len(sem), 3) and sem.shape == inst.shape == changed.shape
        assert tol_m >= 0 and voxel_m >= 0
        self.sem, self.inst, self.changed = np.asarray(sem), np.asarray(inst), changed
        self.max_dist_m = tol_m + 0.5 * np.sqrt(3.0) * voxel_m   # bound on the nearest-vertex distance, metres
        self.tree = cKDTree(verts) if changed.any() else None

    def correct(self, K: np.ndarray, c2w: np.ndarray, depth_z_m: np.ndarray, sem_img: np.ndarray,
                inst_img: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(sem [H, W], inst [H, W], pixels changed) for one frame: K [3, 3], c2w [4, 4] (OpenCV), depth_z_m
        [H, W] (0 = invalid), the fields' label images [H, W]."""
        sem_img, inst_img = np.array(sem_img), np.array(inst_img)
        assert sem_img.shape == inst_img.shape == depth_z_m.shape, (sem_img.shape, inst_img.shape, depth_z_m.shape)
        if self.tree is None:
            return sem_img, inst_img, 0
        H, W = depth_z_m.shape
        v, u = np.nonzero(depth_z_m > 0)
        z = depth_z_m[v, u]
        x_cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)   # [P, 3]
        x_w = x_cam @ np.asarray(c2w)[:3, :3].T + np.asarray(c2w)[:3, 3]
        d, nn = self.tree.query(x_w, k=1, distance_upper_bound=self.max_dist_m)
        hit = np.isfinite(d)
        hit[hit] = self.changed[nn[hit]]
        sem_img[v[hit], u[hit]] = self.sem[nn[hit]]
        inst_img[v[hit], u[hit]] = self.inst[nn[hit]]
        return sem_img, inst_img, int(hit.sum())


def relabel_corrector(run: Path, tol_m: float, voxel_m: float = 0.0) -> LabelImageCorrector | None:
    """The corrector of RUN's label images from RUN/mesh.ply and RUN/relabel.npz (tol_m, voxel_m as
    LabelImageCorrector); None without relabel.npz or when it changed no vertex."""
    from recon.data.ply import read_ply

    run = Path(run)
    if not (run / RELABEL_FILE).is_file() or not (run / "mesh.ply").is_file():
        return None
    verts, _, _, props = read_ply(run / "mesh.ply")
    changed = read_relabel(run, len(verts))
    if changed is None or not changed.any():
        return None
    if "semantic" not in props or "instance" not in props:
        raise ValueError(f"{run / 'mesh.ply'} has no 'semantic' / 'instance' vertex properties")
    return LabelImageCorrector(verts, props["semantic"].astype(np.int64), props["instance"].astype(np.int64),
                               changed, tol_m, voxel_m)
