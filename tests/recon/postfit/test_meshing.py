"""Chunked marching cubes (exactness, accuracy, orientation, culling, bounded chunks) and PLY I/O."""
import os

import numpy as np
import pytest

from recon.data.ply import read_ply, write_ply
from recon.postfit.meshing import extract_mesh, grid_shape




C_A, R_A = np.array([0.1, 0.0, 0.05]), 0.3
C_B, R_B = np.array([-0.35, 0.2, -0.1]), 0.22
BMIN, BMAX = np.array([-0.7, -0.5, -0.5]), np.array([0.55, 0.6, 0.5])


def two_spheres(p):
    return np.minimum(np.linalg.norm(p - C_A, axis=1) - R_A, np.linalg.norm(p - C_B, axis=1) - R_B)


def signed_volume(v, f):
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0


def edge_use_counts(f):
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    return np.unique(np.unique(e, axis=0, return_counts=True)[1])


def test_grid_shape():
    # extent (1.25, 1.1, 1.0) / 0.02 = (62.5, 55, 50) -> ceil -> (63, 55, 50) cells
    assert grid_shape(BMIN, BMAX, 0.02).tolist() == [63, 55, 50]


@pytest.mark.parametrize("chunk,voxel", [(1, 0.1), (7, 0.02), (16, 0.02)])
def test_chunked_equals_whole_volume(chunk, voxel):
    v1, f1 = extract_mesh(two_spheres, BMIN, BMAX, voxel, chunk_voxels=1000)
    v2, f2 = extract_mesh(two_spheres, BMIN, BMAX, voxel, chunk_voxels=chunk)
    assert len(v1) > 50
    assert np.array_equal(v1, v2) and np.array_equal(f1, f2)


def test_plane_through_samples_chunked_equals_whole():
    # the zero level passes exactly through a layer of samples (z = 0): on-sample vertices get merged
    plane = lambda p: p[:, 2] - 0.0  # noqa: E731
    lo, hi = np.array([-0.3, -0.2, -0.25]), np.array([0.3, 0.2, 0.25])
    v1, f1 = extract_mesh(plane, lo, hi, 0.05, chunk_voxels=1000)
    v2, f2 = extract_mesh(plane, lo, hi, 0.05, chunk_voxels=3)
    assert len(f1) > 0 and np.array_equal(v1, v2) and np.array_equal(f1, f2)
    assert np.allclose(v1[:, 2], 0.0, atol=1e-12)


def test_sphere_accuracy_watertight_orientation():
    r, vox = 0.5, 0.02
    v, f = extract_mesh(lambda p: np.linalg.norm(p, axis=1) - r, -0.6 * np.ones(3), 0.6 * np.ones(3), vox, chunk_voxels=16)
    assert np.abs(np.linalg.norm(v, axis=1) - r).max() < vox / 10
    assert edge_use_counts(f).tolist() == [2]  # closed manifold: every edge shared by exactly two faces
    vol = signed_volume(v, f)
    assert vol > 0 and vol == pytest.approx(4 / 3 * np.pi * r**3, rel=0.01)  # normals point to +SDF
    # inside-out (room-like) SDF: same surface, normals point inwards (towards the free space)
    v2, f2 = extract_mesh(lambda p: r - np.linalg.norm(p, axis=1), -0.6 * np.ones(3), 0.6 * np.ones(3), vox)
    assert signed_volume(v2, f2) < 0


def test_memory_bounded_by_chunk():
    seen = []

    def sdf(p):
        seen.append(len(p))
        return two_spheres(p)

    extract_mesh(sdf, BMIN, BMAX, 0.02, chunk_voxels=10)
    assert max(seen) <= 11**3 and len(seen) == 7 * 6 * 5  # ceil(63/10) * ceil(55/10) * ceil(50/10) chunks


def test_culling_all_and_any():
    v, f = extract_mesh(two_spheres, BMIN, BMAX, 0.02)
    keep = lambda p: p[:, 0] > 0.1  # noqa: E731
    va, fa = extract_mesh(two_spheres, BMIN, BMAX, 0.02, keep_fn=keep, keep_mode="all")
    vn, fn = extract_mesh(two_spheres, BMIN, BMAX, 0.02, keep_fn=keep, keep_mode="any")
    assert np.all(va[:, 0] > 0.1)  # every kept face has all vertices passing, unused vertices removed
    assert 0 < len(fa) < len(fn) < len(f)
    assert np.any(vn[:, 0] <= 0.1) and np.all(vn[fn].max(axis=1)[:, 0] > 0.1)
    assert fa.max() < len(va) and fn.max() < len(vn)
    # nothing passes -> empty mesh
    ve, fe = extract_mesh(two_spheres, BMIN, BMAX, 0.05, keep_fn=lambda p: np.zeros(len(p), bool))
    assert ve.shape == (0, 3) and fe.shape == (0, 3)


def test_no_surface_gives_empty_mesh():
    v, f = extract_mesh(lambda p: np.ones(len(p)), BMIN, BMAX, 0.1)
    assert v.shape == (0, 3) and f.shape == (0, 3)


def test_ply_round_trip(tmp_path):
    v, f = extract_mesh(two_spheres, BMIN, BMAX, 0.05)
    n = len(v)
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    semantic = rng.integers(0, 40, n).astype(np.int64)  # int64 is stored as int32
    instance = rng.integers(-1, 20, n).astype(np.int32)
    path = tmp_path / "mesh.ply"
    write_ply(path, v, f, {"semantic": semantic, "instance": instance}, colors)
    assert sorted(os.listdir(tmp_path)) == ["mesh.ply"]  # no temp file left behind
    v2, f2, c2, props = read_ply(path)
    assert np.allclose(v2, v, atol=1e-6)  # float32 storage
    assert np.array_equal(f2, f) and np.array_equal(c2, colors)
    assert set(props) == {"semantic", "instance"}
    assert np.array_equal(props["semantic"], semantic) and props["semantic"].dtype == np.int32
    assert np.array_equal(props["instance"], instance)
    # overwrite atomically, without colours or properties
    write_ply(path, v[:3], np.array([[0, 1, 2]]))
    v3, f3, c3, p3 = read_ply(path)
    assert len(v3) == 3 and f3.tolist() == [[0, 1, 2]] and c3 is None and p3 == {}
    with pytest.raises(AssertionError):
        write_ply(path, v, f, {"semantic": semantic[:-1]})
