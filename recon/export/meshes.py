"""Mesh files for export: vertex colouring, vertex colours baked into a texture, OBJ+MTL+PNG, PLY and GLB.

Colours (`color_by`): 'rgb' the reconstruction's appearance colour; 'semantic' the class colour of
legend.json; 'instance' a distinct colour per thing instance, stuff and unassigned vertices in their class
colour (a panoptic view).

Texture bake (for renderers that ignore vertex colours, e.g. Gazebo's OBJ/Collada materials): every face
owns a CELL x CELL texel cell. For CELL = 4 the middle 2x2 texels hold a = c0, b = c1, c = c2 and
d = clip(c1 + c2 - c0) and the border replicates them (so the first mip level stays inside the cell);
the face's corners map to the centres of texels a, b, c. Bilinear filtering inside the triangle then
gives a + s (b - a) + t (c - a) + s t (a - b - c + d) = a + s (b - a) + t (c - a): exactly the linear
(Gouraud) interpolation of the three vertex colours (where d is not clipped). Above MAX_FACES_CELL4 faces
CELL = 2 (no border) keeps the texture within 8192 px.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from recon.core.io import atomic_write_bytes, atomic_write_text

COLOR_MODES = ("rgb", "semantic", "instance")
MAX_FACES_CELL4 = 1 << 20        # 1M faces -> at most 4096 x 4096 texels with 4x4 cells
MAX_TEXTURE_SIDE = 8192


def instance_colors(ids: np.ndarray) -> np.ndarray:
    """Deterministic distinct colours [N, 3] uint8 for instance ids [N] (hue by the golden ratio, fixed
    saturation 0.65 and value 0.95; id 0 -> black, unused)."""
    ids = np.asarray(ids, np.int64)
    h = (ids * 0.618033988749895 + 0.13) % 1.0  # [N] hue in [0, 1)
    s, v = 0.65, 0.95
    k = np.array([5.0, 3.0, 1.0])  # HSV -> RGB: c_k = v - v s clip(min(x, 4 - x), 0, 1), x = (k + 6h) mod 6
    x = (k[None, :] + h[:, None] * 6.0) % 6.0
    rgb = v - v * s * np.clip(np.minimum(x, 4.0 - x), 0.0, 1.0)
    out = np.round(rgb * 255).astype(np.uint8)
    out[ids == 0] = 0
    return out


def vertex_colors(rgb: np.ndarray, semantic: np.ndarray, instance: np.ndarray, class_colors: dict[int, tuple],
                  mode: str) -> np.ndarray:
    """[V, 3] uint8 colours by `mode` (see the module docstring). class_colors: class id -> (r, g, b)."""
    if mode not in COLOR_MODES:
        raise ValueError(f"color_by must be one of {COLOR_MODES}, got {mode!r}")
    if mode == "rgb":
        return np.asarray(rgb, np.uint8)
    table = np.zeros((max(max(class_colors, default=0), int(semantic.max(initial=0))) + 1, 3), np.uint8)
    for cid, col in class_colors.items():
        table[cid] = col
    out = table[semantic]
    if mode == "instance":
        thing = instance > 0
        out[thing] = instance_colors(instance[thing])
    return out


def bake_vertex_colors(face_colors: np.ndarray, cell: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Texture holding per-face colour cells. face_colors [F, 3, 3] uint8 (corner, rgb).

    Returns (image [H, W, 3] uint8, row 0 at the top; uv [F, 3, 2] float64 per face corner, OBJ/OpenGL
    convention: u right, v up from the bottom edge).
    """
    fc = np.asarray(face_colors, np.uint8)
    assert fc.ndim == 3 and fc.shape[1:] == (3, 3), fc.shape
    F = len(fc)
    cell = cell or (4 if F <= MAX_FACES_CELL4 else 2)
    assert cell in (2, 4)
    per_row = max(1, int(np.ceil(np.sqrt(F))))
    rows = max(1, int(np.ceil(F / per_row)))
    W, H = per_row * cell, rows * cell
    if max(W, H) > MAX_TEXTURE_SIDE:
        from recon.export.run_data import ExportError
        raise ExportError(f"{F} faces need a {W}x{H} colour texture (over {MAX_TEXTURE_SIDE} px); mesh the run "
                          "with a coarser mesh.voxel_size_m")
    a, b, c = (fc[:, k].astype(np.int32) for k in range(3))
    d = np.clip(b + c - a, 0, 255)
    block = np.stack([np.stack([a, b], 1), np.stack([c, d], 1)], 1).astype(np.uint8)  # [F, 2(y), 2(x), 3]
    pick = np.array([0, 0, 1, 1]) if cell == 4 else np.array([0, 1])
    cells = block[:, pick][:, :, pick]  # [F, cell, cell, 3]
    full = np.zeros((rows * per_row, cell, cell, 3), np.uint8)
    full[:F] = cells
    image = full.reshape(rows, per_row, cell, cell, 3).transpose(0, 2, 1, 3, 4).reshape(H, W, 3)
    i = np.arange(F)
    x0 = (i % per_row) * cell + (1 if cell == 4 else 0)  # [F] pixel column of texel a
    y0 = (i // per_row) * cell + (1 if cell == 4 else 0)
    px = np.stack([x0 + 0.5, x0 + 1.5, x0 + 0.5], 1)  # [F, 3] texel centres of a, b, c
    py = np.stack([y0 + 0.5, y0 + 0.5, y0 + 1.5], 1)
    uv = np.stack([px / W, 1.0 - py / H], -1)
    return image, uv


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3] (right-hand winding); isolated vertices get +z."""
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # [F, 3], length = 2 * area
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(norm > 1e-20, n / np.where(norm > 1e-20, norm, 1.0), np.array([0.0, 0.0, 1.0]))


def _rows(prefix: str, arr: np.ndarray, fmt: str, chunk: int = 1 << 17) -> str:
    """'prefix <fmt % row>' lines for the rows of arr [N, k] (one %-format per chunk: ~4x faster than savetxt)."""
    line = f"{prefix} {fmt}\n"
    return "".join((line * len(block)) % tuple(block.ravel().tolist())
                   for block in (arr[s:s + chunk] for s in range(0, len(arr), chunk)))


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None,
              texture: bool = False, normals: bool = True) -> list[Path]:
    """Wavefront OBJ of vertices [V, 3] (metres, written to 1 um) and faces [F, 3].

    colors [V, 3] uint8: written as the common 'v x y z r g b' extension (trimesh, Open3D, MeshLab, Assimp
    read it) and, with texture=True, also baked into PATH.png referenced by PATH.mtl (map_Kd), which every
    OBJ consumer including Gazebo renders. Returns the files written.
    """
    path = Path(path)
    v, f = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    assert v.ndim == 2 and v.shape[1] == 3 and f.ndim == 2 and f.shape[1] == 3, (v.shape, f.shape)
    written = [path]
    head = ["# panoptic-recon export", f"# {len(v)} vertices, {len(f)} faces, metres"]
    body = []
    if colors is not None:
        col = np.asarray(colors, np.uint8)
        assert col.shape == v.shape, (col.shape, v.shape)
        body.append(_rows("v", np.hstack([v, col / 255.0]), "%.6f %.6f %.6f %.4f %.4f %.4f"))
    else:
        body.append(_rows("v", v, "%.6f %.6f %.6f"))
    idx = f + 1  # OBJ is 1-based
    parts = [idx[:, :, None]]
    if texture:
        assert colors is not None, "a texture needs vertex colours"
        image, uv = bake_vertex_colors(np.asarray(colors, np.uint8)[f])
        mtl, png = path.with_suffix(".mtl"), path.with_suffix(".png")
        head += [f"mtllib {mtl.name}"]
        body.append(_rows("vt", uv.reshape(-1, 2), "%.7f %.7f"))
        parts.append((np.arange(3 * len(f)).reshape(-1, 3) + 1)[:, :, None])
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=6)
        atomic_write_bytes(png, buf.getvalue())
        atomic_write_text(mtl, "# panoptic-recon export: vertex colours baked into a texture\n"
                               "newmtl vertex_colours\nKa 1.000 1.000 1.000\nKd 1.000 1.000 1.000\n"
                               f"Ks 0.000 0.000 0.000\nd 1.000\nillum 1\nmap_Kd {png.name}\n")
        written += [mtl, png]
    if normals:
        body.append(_rows("vn", vertex_normals(v, f), "%.5f %.5f %.5f"))
        parts.append(idx[:, :, None])
    if texture:
        body.append("usemtl vertex_colours\n")
    corner = np.concatenate(parts, axis=2)  # [F, 3, k] indices per corner
    if len(parts) == 1:
        fmt = "%d %d %d"
    elif len(parts) == 2:
        fmt = "%d/%d %d/%d %d/%d" if texture else "%d//%d %d//%d %d//%d"
    else:
        fmt = "%d/%d/%d %d/%d/%d %d/%d/%d"
    body.append(_rows("f", corner.reshape(len(f), -1), fmt))
    atomic_write_text(path, "\n".join(head) + "\n" + "".join(body))
    return written


def glb_bytes(named_meshes: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> bytes:
    """A binary glTF 2.0 scene with one node per entry (name, vertices [V, 3] node-local, faces [F, 3],
    colours [V, 3] uint8 as COLOR_0, node transform [4, 4])."""
    import trimesh
    scene = trimesh.Scene()
    for name, v, f, col, M in named_meshes:
        rgba = np.concatenate([np.asarray(col, np.uint8), np.full((len(v), 1), 255, np.uint8)], axis=1)
        mesh = trimesh.Trimesh(vertices=np.asarray(v, np.float64), faces=np.asarray(f, np.int64),
                               vertex_colors=rgba, process=False)
        scene.add_geometry(mesh, node_name=name, geom_name=name, transform=np.asarray(M, np.float64))
    return scene.export(file_type="glb")
