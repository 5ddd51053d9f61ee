"""A tiny scene for the mask rules' tests: n frames of one camera at the origin looking down +z at a wall 2 m
ahead (20 x 20 pixels, focal 20 px, so the wall's x in [-0.5, 0.5] m spans the image), with fixed masks."""
import numpy as np


class Named:
    def __init__(self, i: int, name: str, thing: bool = True):
        self.id, self.name, self.thing = i, name, thing


class WallScene:
    def __init__(self, mask_inst: np.ndarray, mask_sem: np.ndarray, thing_ids, classes=(), n_frames: int = 3):
        assert mask_inst.shape == mask_sem.shape == (20, 20)
        self.K = np.array([[20.0, 0.0, 9.5], [0.0, 20.0, 9.5], [0.0, 0.0, 1.0]])
        self.c2w = np.stack([np.eye(4)] * n_frames)
        self.has_masks = True
        self.classes = list(classes)
        self._things = list(thing_ids)
        self._masks = (mask_inst.astype(np.uint16), mask_sem.astype(np.uint16), {})

    def thing_ids(self):
        return self._things

    def load_depth_m(self, i):
        return np.full((20, 20), 2.0, np.float32)

    def load_masks(self, i):
        return self._masks


def wall_vertices() -> np.ndarray:
    """[900, 3] vertices on a 30 x 30 grid over x, y in [-0.45, 0.45] m of the wall (z = 2 m)."""
    x, y = np.meshgrid(np.linspace(-0.45, 0.45, 30), np.linspace(-0.45, 0.45, 30))
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, 2.0)], 1)
