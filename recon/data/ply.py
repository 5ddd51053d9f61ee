"""Binary PLY reading and writing: meshes with vertex colours and integer label properties.

Used for every mesh the project reads or writes (scene GT meshes, run meshes, baselines). Writes are
atomic (temporary file in the same folder, then rename).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from recon.core.io import atomic_file

_PLY_OK = {np.dtype(t) for t in ("i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8")}


def _ply_dtype(arr: np.ndarray) -> np.dtype:
    """A PLY-representable dtype for a vertex property (int64 -> int32 if it fits, bool -> uint8)."""
    dt = arr.dtype
    if dt == np.bool_:
        return np.dtype("u1")
    if dt in _PLY_OK:
        return dt
    if np.issubdtype(dt, np.integer):
        if arr.size == 0 or (arr.min() >= np.iinfo(np.int32).min and arr.max() <= np.iinfo(np.int32).max):
            return np.dtype("i4")
        raise ValueError(f"integer property out of int32 range ({dt})")
    if np.issubdtype(dt, np.floating):
        return np.dtype("f4") if dt.itemsize <= 4 else np.dtype("f8")
    raise TypeError(f"unsupported vertex property dtype {dt}")


def write_ply(
    path: str | os.PathLike,
    vertices: np.ndarray,
    faces: np.ndarray,
    vertex_props: dict[str, np.ndarray] | None = None,
    colors: np.ndarray | None = None,
) -> None:
    """Binary little-endian PLY, written atomically (temp file in the same folder, then os.replace).

    vertices [V, 3] (stored float32), faces [F, 3] (stored int32 list 'vertex_indices'), colors [V, 3]
    uint8 as red/green/blue, vertex_props: name -> [V] arrays (integers as their type, int64 -> int32).
    """
    from plyfile import PlyData, PlyElement

    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    assert vertices.ndim == 2 and vertices.shape[1] == 3, vertices.shape
    assert faces.ndim == 2 and faces.shape[1] == 3, faces.shape
    n_v = len(vertices)
    vertex_props = dict(vertex_props or {})
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if colors is not None:
        colors = np.asarray(colors)
        assert colors.shape == (n_v, 3) and colors.dtype == np.uint8, "colors must be [V, 3] uint8"
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    reserved = {"x", "y", "z", "red", "green", "blue"}
    for name, arr in vertex_props.items():
        arr = np.asarray(arr)
        assert name not in reserved, f"vertex property name {name!r} is reserved"
        assert arr.shape == (n_v,), f"property {name!r} must be [V], got {arr.shape}"
        fields.append((name, _ply_dtype(arr)))
    vert = np.empty(n_v, dtype=fields)
    vert["x"], vert["y"], vert["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if colors is not None:
        vert["red"], vert["green"], vert["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    for name, arr in vertex_props.items():
        vert[name] = np.asarray(arr).astype(vert.dtype[name])
    face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    if len(faces):
        assert faces.min() >= 0 and faces.max() < n_v, "face index out of range"
    face["vertex_indices"] = faces
    ply = PlyData(
        [
            PlyElement.describe(vert, "vertex"),
            PlyElement.describe(face, "face", len_types={"vertex_indices": "u1"}, val_types={"vertex_indices": "i4"}),
        ],
        text=False,
        byte_order="<",
    )
    with atomic_file(Path(path)) as fh:
        ply.write(fh)


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """(vertices [V, 3] float64, faces [F, 3] int64 (polygons fan-triangulated; [0, 3] if none),
    colors [V, 3] uint8 or None, props: every other vertex property by name)."""
    from plyfile import PlyData

    path = os.fspath(path)
    try:
        ply = PlyData.read(path, known_list_len={"face": {"vertex_indices": 3}})
    except Exception:  # other list name, non-triangles, ...: generic (slower) read
        ply = PlyData.read(path)
    v = ply["vertex"].data
    names = v.dtype.names
    vertices = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)
    colors = None
    if all(c in names for c in ("red", "green", "blue")):
        colors = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
    props = {n: np.asarray(v[n]) for n in names if n not in ("x", "y", "z", "red", "green", "blue")}
    faces = np.zeros((0, 3), np.int64)
    if "face" in ply:
        fdata = ply["face"].data
        fname = "vertex_indices" if "vertex_indices" in fdata.dtype.names else fdata.dtype.names[0]
        col = fdata[fname]
        if col.dtype != object and col.ndim == 2:
            faces = col.astype(np.int64).reshape(-1, 3)
        else:
            tris = []
            for poly in col:
                poly = np.asarray(poly, np.int64)
                for k in range(1, len(poly) - 1):
                    tris.append((poly[0], poly[k], poly[k + 1]))
            faces = np.asarray(tris, np.int64).reshape(-1, 3)
    return vertices, faces, colors, props


GAUSSIAN_KEYS = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")


def write_gaussians_ply(path: str | os.PathLike, params: dict[str, np.ndarray]) -> None:
    """3D Gaussians in the PLY layout of the 3DGS reference code, which splat viewers read: x y z, nx ny nz
    (zero), f_dc_0..2, f_rest_* (channel-major: all coefficients of red, then green, then blue), opacity
    (logit), scale_0..2 (log), rot_0..3 (w x y z). params: GAUSSIAN_KEYS -> means [N, 3], quats [N, 4],
    log_scales [N, 3], opacity_logits [N], sh_dc [N, 3], sh_rest [N, K-1, 3]. Written atomically."""
    from plyfile import PlyData, PlyElement

    p = {k: np.asarray(params[k], np.float32) for k in GAUSSIAN_KEYS}
    n = len(p["means"])
    k1 = p["sh_rest"].shape[1]
    assert p["means"].shape == (n, 3) and p["quats"].shape == (n, 4) and p["log_scales"].shape == (n, 3)
    assert p["opacity_logits"].shape == (n,) and p["sh_dc"].shape == (n, 3) and p["sh_rest"].shape == (n, k1, 3)
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(3 * k1)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    cols = np.concatenate([p["means"], np.zeros((n, 3), np.float32), p["sh_dc"],
                           p["sh_rest"].transpose(0, 2, 1).reshape(n, 3 * k1), p["opacity_logits"][:, None],
                           p["log_scales"], p["quats"]], axis=1)
    vert = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vert[name] = cols[:, i]
    with atomic_file(Path(path)) as fh:
        PlyData([PlyElement.describe(vert, "vertex")], text=False, byte_order="<").write(fh)


def read_gaussians_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The parameters written by write_gaussians_ply (or by the 3DGS reference code), by GAUSSIAN_KEYS.
    Raises ValueError naming the file and the missing properties when it is not a Gaussian PLY."""
    from plyfile import PlyData

    v = PlyData.read(os.fspath(path))["vertex"].data
    names = set(v.dtype.names)
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in need if k not in names]
    if missing:
        raise ValueError(f"{path} is not a 3D Gaussian PLY (missing {', '.join(missing)})")
    n_rest = len([k for k in names if k.startswith("f_rest_")])
    if n_rest % 3:
        raise ValueError(f"{path}: {n_rest} f_rest_* properties is not a multiple of 3")
    k1 = n_rest // 3

    def col(*keys: str) -> np.ndarray:
        return np.stack([np.asarray(v[k], np.float32) for k in keys], axis=1)

    rest = col(*[f"f_rest_{i}" for i in range(n_rest)]) if n_rest else np.zeros((len(v), 0), np.float32)
    return {"means": col("x", "y", "z"), "quats": col("rot_0", "rot_1", "rot_2", "rot_3"),
            "log_scales": col("scale_0", "scale_1", "scale_2"), "opacity_logits": np.asarray(v["opacity"], np.float32),
            "sh_dc": col("f_dc_0", "f_dc_1", "f_dc_2"), "sh_rest": rest.reshape(len(v), 3, k1).transpose(0, 2, 1)}
