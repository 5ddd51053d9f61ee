"""A web viewer of a finished run folder (`python run.py view --run RUN`), built on viser.

What it shows, from the run folder alone (no checkpoint is loaded for any of it):
- the panoptic mesh (RUN/mesh.ply), coloured by appearance (RGB), class (legend.json colours) or instance
  (a distinct colour per listed thing instance, stuff in its class colour): the "Colour by" dropdown;
- the cameras of the scene's frames (RUN/scene.txt names the scene folder: pose/ c2w in OpenCV axes,
  intrinsics.txt), at most MAX_CAMERAS of them, evenly subsampled, each frustum carrying a thumbnail of
  its colour image. Clicking a frustum shows the frame's image in the "Camera frame" panel;
- the instances of instances.json as one button each (id, class, score, bounding-box size in metres): a click
  highlights the instance (its faces in yellow and its bounding box) and moves that browser's camera to
  frame it. The "Filter class" text box keeps the buttons whose class name contains the text (comma =
  or). Clicking the mesh selects the instance under the pointer. Buttons rather than a markdown table
  because viser's markdown is not clickable;
- the legend (class colours) as an HTML panel;
- where the appearance branch ran (RUN/gaussians.ply, RUN/config.yaml), "Render this view" renders the
  Gaussians from the browser's current camera at a small size (recon.postfit.views.load_view_renderer;
  the first render loads the Gaussians); without them the panel says why.

Camera conventions: viser's cameras (client.camera, frustums) follow OpenCV axes like the scene format:
`wxyz` is the rotation R of c2w = [R | position] (+z looks forward, +y down), `fov` is the vertical field
of view in radians (viser_camera_to_c2w, pinhole_from_fov).

The server listens on 127.0.0.1 by default (only this machine); on a remote machine forward the port with
`ssh -N -L 8080:127.0.0.1:8080 USER@HOST` and open http://localhost:8080, or pass --host 0.0.0.0 to listen
on every interface (anyone who can reach the port sees the run). A busy port is replaced by the next free
one; the URL printed is the one actually used.
"""
from __future__ import annotations

import html
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.data.run_files import face_labels
from recon.export.frames import find_up_frame, is_floor_name
from recon.export.meshes import vertex_colors, vertex_normals
from recon.export.run_data import RunMesh, load_run

MAX_CAMERAS = 30            # frustums drawn at most (evenly subsampled from the scene's frames)
THUMB_WIDTH_PX = 96         # width of the thumbnail on each frustum
FRAME_WIDTH_PX = 320        # width of the image in the "Camera frame" panel (about the panel's width)
RENDER_MAX_SIDE_PX = 240    # longer side of a Gaussian render from the viewer camera
HIGHLIGHT_RGB = (255, 214, 0)
HIGHLIGHT_OFFSET_M = 0.004  # the highlight overlay sits this far in front of the surface (no z-fighting)
COLOR_MODES = {"RGB": "rgb", "class": "semantic", "instance": "instance"}  # dropdown label -> export mode


class ViewerError(ValueError):
    """The viewer cannot start as asked (the message names the problem and the fix)."""


# ----------------------------------------------------------------------------------------------------------
# pure maths (unit-tested on hand cases in tests/app/test_viewer.py)
# ----------------------------------------------------------------------------------------------------------
def quat_wxyz_to_matrix(wxyz) -> np.ndarray:
    """Rotation matrix [3, 3] of a quaternion (w, x, y, z) (normalised first)."""
    import viser.transforms as vtf
    q = np.asarray(wxyz, np.float64).reshape(4)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} has no direction")
    return vtf.SO3(q / n).as_matrix()


def matrix_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) [4] of a rotation matrix R [3, 3]."""
    import viser.transforms as vtf
    return vtf.SO3.from_matrix(np.asarray(R, np.float64).reshape(3, 3)).wxyz


def viser_camera_to_c2w(wxyz, position) -> np.ndarray:
    """c2w [4, 4] (OpenCV axes, metres) of a viser camera: its wxyz is R of P_world = R p_camera + position,
    with viser's cameras already in OpenCV axes (+x right, +y down, +z forward)."""
    c2w = np.eye(4)
    c2w[:3, :3] = quat_wxyz_to_matrix(wxyz)
    c2w[:3, 3] = np.asarray(position, np.float64).reshape(3)
    return c2w


def c2w_to_viser(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz [4], position [3]) of a c2w [4, 4] in OpenCV axes, for viser frustums and cameras."""
    c2w = np.asarray(c2w, np.float64)
    return matrix_to_quat_wxyz(c2w[:3, :3]), c2w[:3, 3].copy()


def pinhole_from_fov(fov_y_rad: float, width: int, height: int) -> np.ndarray:
    """K [3, 3] of a square-pixel pinhole whose vertical field of view `fov_y_rad` spans the whole image
    height (pixel centres at integers, so the principal point is the image centre ((W - 1) / 2, (H - 1) / 2))."""
    if not (0 < fov_y_rad < np.pi):
        raise ValueError(f"vertical field of view must be in (0, pi) radians, got {fov_y_rad}")
    f = 0.5 * height / np.tan(0.5 * fov_y_rad)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def fov_y_from_K(K: np.ndarray, height: int) -> float:
    """Vertical field of view (radians) of a pinhole K [3, 3] over an image `height` pixels tall."""
    return float(2.0 * np.arctan2(0.5 * height, float(np.asarray(K)[1, 1])))


def render_size(aspect: float, max_side: int) -> tuple[int, int]:
    """(width, height) in pixels with width / height ~= aspect and the longer side = max_side (both >= 8)."""
    if not (np.isfinite(aspect) and aspect > 0):
        raise ValueError(f"aspect ratio must be positive, got {aspect}")
    if aspect >= 1:
        return int(max_side), max(8, int(round(max_side / aspect)))
    return max(8, int(round(max_side * aspect))), int(max_side)


def subsample_indices(n: int, max_n: int) -> np.ndarray:
    """At most max_n indices of range(n), evenly spread, the first and the last included ([k] int64)."""
    if n <= 0 or max_n <= 0:
        return np.zeros(0, np.int64)
    if n <= max_n:
        return np.arange(n, dtype=np.int64)
    if max_n == 1:
        return np.zeros(1, np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, max_n)).astype(np.int64))


def framing_pose(center, radius_m: float, fov_y_rad: float, aspect: float, view_dir, up,
                 elevation_deg: float = 30.0, margin: float = 1.15) -> tuple[np.ndarray, np.ndarray]:
    """(camera position [3], look-at point [3]) that frames a sphere (center [3], radius_m) for a camera with
    vertical fov `fov_y_rad` and width / height `aspect`: looking at the centre along the horizontal part of
    `view_dir` [3] (the current view, so the jump is small), tilted down by elevation_deg about `up` [3], at
    distance margin * radius / sin(fov / 2), fov the smaller of the vertical and horizontal fields of view."""
    c = np.asarray(center, np.float64).reshape(3)
    u = np.asarray(up, np.float64).reshape(3)
    u = u / np.linalg.norm(u)
    d = np.asarray(view_dir, np.float64).reshape(3)
    h = d - (d @ u) * u                                           # horizontal heading
    if np.linalg.norm(h) < 1e-6:                                  # looking straight up or down: any heading
        h = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
    h = h / np.linalg.norm(h)
    e = np.deg2rad(elevation_deg)
    look = np.cos(e) * h - np.sin(e) * u                          # unit, pointing down by the elevation
    fov_x = 2.0 * np.arctan(aspect * np.tan(0.5 * fov_y_rad))
    dist = margin * max(float(radius_m), 1e-3) / np.sin(0.5 * min(fov_y_rad, fov_x))
    return c - dist * look, c


def srgb_to_linear_u8(rgb: np.ndarray) -> np.ndarray:
    """sRGB colours [..., 3] uint8 -> linear-light uint8 (the IEC 61966-2-1 curve). glTF's COLOR_0 is linear,
    so vertex colours go through this to appear in the browser as they are in the files (legend colours)."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return np.round(lin * 255.0).astype(np.uint8)


def filter_instances(class_names: dict[int, str], query: str) -> list[int]:
    """Instance ids (in the given order) whose class name contains the query, case-insensitively; a comma
    separates alternatives ('chair, table'); an empty query keeps every instance. class_names: id -> class."""
    terms = [t.strip().lower() for t in str(query).split(",") if t.strip()]
    if not terms:
        return list(class_names)
    return [i for i, name in class_names.items() if any(t in name.lower() for t in terms)]


@dataclass(frozen=True)
class InstanceRow:
    """One line of the instance list: the instance as instances.json lists it, its box from the mesh."""
    id: int
    class_name: str
    score: float | None
    n_vertices: int
    bbox_min: np.ndarray   # [3] metres, scene frame (the mesh vertices carrying the id)
    bbox_max: np.ndarray   # [3]

    @property
    def size_m(self) -> np.ndarray:
        return self.bbox_max - self.bbox_min

    @property
    def label(self) -> str:
        """'#3 chair · 0.92 · 0.45×0.50×0.86 m' (score '–' where instances.json has none)."""
        score = "–" if self.score is None else f"{self.score:.2f}"
        size = "×".join(f"{s:.2f}" for s in self.size_m)
        return f"#{self.id} {self.class_name} · {score} · {size} m"


def instance_rows(mesh: RunMesh) -> list[InstanceRow]:
    """The listed instances (instances.json order) that own at least one vertex of the mesh, with their
    bounding boxes measured on the mesh."""
    inst = mesh.instance
    order = np.argsort(inst, kind="stable")
    ids, starts, counts = np.unique(inst[order], return_index=True, return_counts=True)
    where = {int(i): (int(s), int(n)) for i, s, n in zip(ids, starts, counts)}
    rows = []
    for e in mesh.instances:
        if e.id not in where:
            continue
        s, n = where[e.id]
        v = mesh.vertices[order[s:s + n]]
        rows.append(InstanceRow(e.id, e.class_name, e.score, n, v.min(0), v.max(0)))
    return rows


def legend_html(legend: dict, present: set[int]) -> str:
    """HTML of the legend: a colour swatch, the class name, 'thing' or 'stuff', for every class of the legend
    that the mesh uses (present: class ids), unlabelled (id 0) last."""
    rows = []
    for cid in sorted(present, key=lambda c: (c == 0, c)):
        if cid not in legend:
            continue
        e = legend[cid]
        r, g, b = e.color
        rows.append(f'<div style="display:flex;align-items:center;gap:5px">'
                    f'<span style="display:inline-block;width:14px;height:14px;border-radius:3px;'
                    f'background:rgb({r},{g},{b});border:1px solid #0003"></span>'
                    f'<span>{html.escape(e.name)}</span>'
                    f'<span style="color:#888;font-size:0.85em">{"thing" if e.thing else "stuff"}</span></div>')
    return ('<div style="display:grid;grid-template-columns:1fr 1fr;gap:2px 10px;font-size:0.85em">'
            + "".join(rows) + "</div>")


def appearance_status(run: Path) -> tuple[bool, str]:
    """(can the Gaussians be rendered, why not): needs RUN/gaussians.ply (written at the end of a fit whose
    appearance branch ran) and RUN/config.yaml."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        return False, f"{run / 'config.yaml'} is missing, so the run's render settings are unknown."
    if not (run / "gaussians.ply").is_file():
        ck = run / "checkpoints"
        why = ("the appearance branch did not run for this fit (`appearance.branch=colour_head`, or a run "
               "from before the branch), or the fit has not finished")
        extra = (" `python run.py render --run RUN` renders the fields from the checkpoint instead (slow on "
                 "a CPU)." if ck.is_dir() and any(ck.glob("*.pt")) else "")
        return False, f"This run has no `gaussians.ply`: {why}.{extra}"
    return True, "Renders the appearance Gaussians from this browser's camera."


# ----------------------------------------------------------------------------------------------------------
# the viewer
# ----------------------------------------------------------------------------------------------------------
def _resize_to_width(img: np.ndarray, width: int, enlarge: bool = False) -> np.ndarray:
    """[H, W, 3] uint8 scaled to `width` pixels wide (aspect kept): down with bilinear filtering; up (only
    with enlarge) with nearest neighbours, so that pixels stay visible as pixels."""
    from PIL import Image
    h, w = img.shape[:2]
    if w == width or (w < width and not enlarge):
        return img
    size = (width, max(1, round(h * width / w)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR if w > width else Image.NEAREST))


def _check_listen(host: str, port: int) -> None:
    if not (0 <= int(port) <= 65535):
        raise ViewerError(f"--port {port}: must be between 0 and 65535 (0 = any free port)")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.bind((infos[0][4][0], 0))
    except OSError as exc:
        raise ViewerError(f"--host {host}: cannot listen there ({exc}); use 127.0.0.1 (this machine only) or "
                          f"0.0.0.0 (every interface)") from None


class RunViewer:
    """A viser server showing one run folder. Everything is loaded and checked before the server starts;
    `stop()` shuts it down. Browser callbacks run on viser's worker threads (state guarded by a lock)."""

    def __init__(self, run: str | Path, host: str = "127.0.0.1", port: int = 8080, max_cameras: int = MAX_CAMERAS,
                 log=print):
        import viser

        self.run = Path(run)
        self._log = log
        self._lock = threading.RLock()
        if not self.run.is_dir():
            raise FileNotFoundError(f"{self.run}: no such run folder")
        _check_listen(host, port)
        self.mesh = load_run(self.run, log=lambda m: log(m.replace("export: ", "view: ", 1)))
        self.rows = instance_rows(self.mesh)
        self._rows_by_id = {r.id: r for r in self.rows}
        self._face_instance = face_labels(self.mesh.faces, self.mesh.instance)       # [F] listed ids, 0 = none
        lo, hi = self.mesh.vertices.min(0), self.mesh.vertices.max(0)
        self.center, self.radius_m = (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2)
        self.scene, self.camera_index, self._scene_note = self._load_scene(max_cameras)
        self.up = self._up_direction()
        self.can_render, self.render_note = appearance_status(self.run)
        self._renderer = None
        self._caster = None
        self.selected: int | None = None           # selected instance id
        self._selection_nodes: list = []           # its highlight (overlay mesh, bounding box)
        self.shown_frame: int | None = None        # scene frame index shown in the "Camera frame" panel
        self.last_render: np.ndarray | None = None  # [H, W, 3] uint8, the last Gaussian render

        self.server = viser.ViserServer(host=host, port=int(port), verbose=False)
        try:
            self.host, self.port = host, self.server.get_port()
            self._build_scene()
            self._build_gui()
        except BaseException:
            self.server.stop()
            raise

    # ------------------------------------------------------------------------------------------ loading
    def _load_scene(self, max_cameras: int):
        """(Scene or None, frame indices to draw [k], a note for the camera panel)."""
        from recon.data.scene import SceneError, load_scene
        if self.mesh.scene_dir is None:
            return None, np.zeros(0, np.int64), f"No cameras: {self.run / 'scene.txt'} names no scene folder here."
        try:
            scene = load_scene(self.mesh.scene_dir, skip_bad_frames=True, check_images=False)
        except SceneError as exc:
            return None, np.zeros(0, np.int64), f"No cameras: the scene folder {self.mesh.scene_dir} did not load " \
                                                f"({exc.problems[0] if exc.problems else exc})."
        idx = subsample_indices(len(scene), max_cameras)
        note = f"{len(idx)} of {len(scene)} frames drawn" + (" (evenly subsampled)" if len(idx) < len(scene) else "")
        return scene, idx, note + ". Click a camera to see its image."

    def _up_direction(self) -> np.ndarray:
        m = self.mesh
        floor = np.isin(m.semantic, [c for c, e in m.legend.items() if is_floor_name(e.name)])
        gen = m.scene_meta.get("generator") if isinstance(m.scene_meta.get("generator"), dict) else {}
        try:
            frame = find_up_frame(m.vertices, floor, self.scene.c2w if self.scene is not None else m.cam_c2w,
                                  m.scene_meta.get("up_axis"), gen.get("floor_z"))
        except ValueError as exc:   # a malformed up_axis: fall back to the mesh alone
            self._log(f"view: {exc}; the up direction is found without scene.json")
            frame = find_up_frame(m.vertices, floor, m.cam_c2w, None, None)
        return frame.up_scene

    # ------------------------------------------------------------------------------------------ the scene
    def _mesh_glb(self, mode: str) -> bytes:
        import trimesh
        m = self.mesh
        cols = vertex_colors(m.rgb, m.semantic, m.instance, {c: e.color for c, e in m.legend.items()}, mode)
        rgba = np.concatenate([srgb_to_linear_u8(cols), np.full((len(cols), 1), 255, np.uint8)], 1)
        tm = trimesh.Trimesh(m.vertices, m.faces, vertex_colors=rgba, process=False)
        return tm.export(file_type="glb", include_normals=True)

    def _build_scene(self) -> None:
        s = self.server.scene
        s.set_up_direction(tuple(float(x) for x in self.up))
        s.configure_default_lights(enabled=True, cast_shadow=False)   # shadows cost a second pass, show little
        self._mesh_nodes: dict[str, object] = {}
        self._show_mesh("rgb")
        # the initial view: from above one side, looking at the middle of the mesh
        heading = self.scene.c2w[self.camera_index[0], :3, 2] if len(self.camera_index) else np.array([1.0, 1, 0])
        pos, look = framing_pose(self.center, 0.9 * self.radius_m, np.deg2rad(75), 1.5, heading, self.up,
                                 elevation_deg=70, margin=1.0)
        self.server.initial_camera.position = tuple(pos)
        self.server.initial_camera.look_at = tuple(look)
        self._frustums = []
        if self.scene is None or not len(self.camera_index):
            return
        from tqdm import tqdm
        sc = self.scene
        fov, aspect = fov_y_from_K(sc.K, sc.height), sc.width / sc.height
        scale = float(np.clip(0.03 * self.radius_m, 0.02, 0.5))
        for k, i in enumerate(tqdm(self.camera_index, desc="view: camera thumbnails", unit="frame",
                                   disable=len(self.camera_index) < 20, file=sys.stderr)):
            wxyz, pos = c2w_to_viser(sc.c2w[i])
            try:
                thumb = _resize_to_width(sc.load_color(int(i)), THUMB_WIDTH_PX)
            except OSError as exc:
                self._log(f"view: frame {sc.frame_ids[i]}: colour image unreadable ({exc}); frustum without image")
                thumb = None
            h = s.add_camera_frustum(f"/cameras/{sc.frame_ids[i]}", fov=fov, aspect=aspect, scale=scale,
                                     thickness=0.01 * scale, color=(60, 60, 60), image=thumb, wxyz=wxyz,
                                     position=pos)
            h.on_click(lambda _, k=k: self.show_frame(k))
            self._frustums.append(h)

    def _show_mesh(self, mode: str) -> None:
        with self._lock:
            if mode not in self._mesh_nodes:
                node = self.server.scene.add_glb(f"/mesh/{mode}", self._mesh_glb(mode), cast_shadow=False,
                                                 receive_shadow=False)
                node.on_click(self._on_mesh_click)
                self._mesh_nodes[mode] = node
            for m, node in self._mesh_nodes.items():
                node.visible = m == mode

    # ------------------------------------------------------------------------------------------ the GUI
    def _build_gui(self) -> None:
        g = self.server.gui
        m = self.mesh
        g.configure_theme(control_width="large", dark_mode=False, show_logo=False, show_share_button=False)
        name = m.scene_meta.get("name") or (m.scene_dir.name if m.scene_dir else "")
        g.add_markdown(f"**{html.escape(self.run.name)}** {html.escape(str(name))}  \n"
                       f"{len(m.vertices):,} vertices, {len(m.faces):,} faces, {len(self.rows)} instances")
        self.color_dropdown = g.add_dropdown("Colour by", list(COLOR_MODES), initial_value="RGB")
        self.color_dropdown.on_update(lambda _: self._show_mesh(COLOR_MODES[self.color_dropdown.value]))
        self.cameras_checkbox = g.add_checkbox("Cameras", initial_value=True, disabled=not self._frustums)

        @self.cameras_checkbox.on_update
        def _(_):
            for h in self._frustums:
                h.visible = self.cameras_checkbox.value

        with g.add_folder("Instances"):
            self.filter_text = g.add_text("Filter class", "", hint="keep instances whose class contains this "
                                                                   "text; a comma separates alternatives")
            self.instance_count = g.add_markdown(self._count_text(len(self.rows)))
            self.instance_buttons: dict[int, object] = {}
            for r in self.rows:
                b = g.add_button(r.label, hint=f"{r.n_vertices} vertices; click to highlight and frame it")
                b.on_click(lambda event, iid=r.id: self.select_instance(iid, event.client))
                self.instance_buttons[r.id] = b
            self.clear_button = g.add_button("Clear selection", color="gray", disabled=True)
            self.clear_button.on_click(lambda _: self.clear_selection())
        self.filter_text.on_update(lambda _: self.apply_filter(self.filter_text.value))

        with g.add_folder("Legend", expand_by_default=True):
            present = set(np.unique(m.semantic).tolist())
            g.add_html(legend_html(m.legend, present))

        with g.add_folder("Camera frame"):
            self.frame_note = g.add_markdown(self._scene_note)
            self.frame_image = g.add_image(np.zeros((8, 8, 3), np.uint8), label="frame", visible=False)
            self.frame_goto = g.add_button("View from this camera", visible=False)
            self.frame_goto.on_click(lambda event: self.goto_frame(event.client))

        with g.add_folder("Gaussian render"):
            self.render_note_md = g.add_markdown(self.render_note)
            self.render_button = g.add_button("Render this view", disabled=not self.can_render)
            self.render_button.on_click(lambda event: self._on_render_click(event.client))
            self.render_image = g.add_image(np.zeros((8, 8, 3), np.uint8), label="Gaussians", visible=False)

    @staticmethod
    def _count_text(n_shown: int, total: int | None = None, query: str = "") -> str:
        if total is None or n_shown == total:
            return f"{n_shown} instance{'s' if n_shown != 1 else ''} (click one to highlight it)"
        return f"{n_shown} of {total} instances match '{html.escape(query)}'"

    # ------------------------------------------------------------------------------------------ actions
    def set_color_mode(self, label: str) -> None:
        """Colour the mesh by 'RGB', 'class' or 'instance' (as the dropdown does; every browser follows)."""
        if label not in COLOR_MODES:
            raise ValueError(f"colour mode must be one of {', '.join(COLOR_MODES)}, got {label!r}")
        self.color_dropdown.value = label        # runs the dropdown's callback (_show_mesh)

    def apply_filter(self, query: str) -> list[int]:
        """Show only the instance buttons whose class matches `query` (filter_instances); returns their ids."""
        keep = filter_instances({r.id: r.class_name for r in self.rows}, query)
        with self._lock:
            for iid, b in self.instance_buttons.items():
                b.visible = iid in keep
            self.instance_count.content = self._count_text(len(keep), len(self.rows), query)
        return keep

    def select_instance(self, iid: int, client=None, move_camera: bool = True) -> None:
        """Highlight instance `iid` (yellow overlay of its faces + bounding box) and, unless move_camera is
        False, move the camera of `client` (a viser ClientHandle; None = every connected browser) to frame it."""
        if iid not in self._rows_by_id:
            raise KeyError(f"instance {iid} is not in {self.run / 'instances.json'} (or owns no mesh vertex)")
        r = self._rows_by_id[iid]
        s = self.server.scene
        with self._lock:
            self.selected = iid
            faces = self.mesh.faces[self._face_instance == iid]                  # [Fi, 3]
            vidx, local = np.unique(faces.reshape(-1), return_inverse=True)
            local = local.reshape(-1, 3)
            v = self.mesh.vertices[vidx]                                           # [Vi, 3]
            v = v + HIGHLIGHT_OFFSET_M * vertex_normals(v, local)
            for h in self._selection_nodes:
                h.remove()
            self._selection_nodes = [
                s.add_mesh_simple("/selection/faces", v, local, color=HIGHLIGHT_RGB, side="double",
                                  cast_shadow=False, receive_shadow=False),
                s.add_box("/selection/box", color=HIGHLIGHT_RGB, dimensions=tuple(np.maximum(r.size_m, 1e-3)),
                          wireframe=True, position=tuple((r.bbox_min + r.bbox_max) / 2), cast_shadow=False,
                          receive_shadow=False)]
            self.clear_button.disabled = False
            for jid, b in self.instance_buttons.items():
                b.color = "yellow" if jid == iid else None
        if not move_camera:
            return
        clients = [client] if client is not None else list(self.server.get_clients().values())
        center, radius = (r.bbox_min + r.bbox_max) / 2, float(np.linalg.norm(r.size_m) / 2)
        for c in clients:
            cam = c.camera
            view_dir = quat_wxyz_to_matrix(cam.wxyz)[:, 2]
            pos, look = framing_pose(center, max(radius, 0.05), cam.fov, cam.aspect, view_dir, self.up)
            with c.atomic():
                cam.position = pos
                cam.look_at = look

    def clear_selection(self) -> None:
        with self._lock:
            self.selected = None
            for h in self._selection_nodes:
                h.remove()
            self._selection_nodes = []
            self.clear_button.disabled = True
            for b in self.instance_buttons.values():
                b.color = None

    def _on_mesh_click(self, event) -> None:
        """Select the instance under the pointer (ray cast of the click on the mesh)."""
        from recon.postfit.mesh_raycast import LabelledMeshCaster
        with self._lock:
            if self._caster is None:
                m = self.mesh
                self._caster = LabelledMeshCaster(m.vertices, m.faces, m.semantic, m.instance)
        o = np.asarray(event.ray_origin, np.float64)[None]
        d = np.asarray(event.ray_direction, np.float64)[None]
        _, hit, _, inst = self._caster.cast(o, d)
        if hit[0] and int(inst[0]) in self._rows_by_id:
            self.select_instance(int(inst[0]), event.client)

    def show_frame(self, k: int) -> None:
        """Show the colour image of the k-th drawn camera (self.camera_index[k]) in the "Camera frame" panel."""
        sc = self.scene
        i = int(self.camera_index[k])
        img = _resize_to_width(sc.load_color(i), FRAME_WIDTH_PX, enlarge=True)
        split = ("held out" if i in set(sc.heldout_indices()) else "train") if sc.splits else ""
        with self._lock:
            if self.shown_frame is not None and self.shown_frame in self.camera_index:
                self._frustums[int(np.searchsorted(self.camera_index, self.shown_frame))].color = (60, 60, 60)
            self._frustums[k].color = HIGHLIGHT_RGB
            self.shown_frame = i
            self.frame_image.image = img
            self.frame_image.label = f"frame {sc.frame_ids[i]}"
            self.frame_image.visible = True
            self.frame_goto.visible = True
            where = f"{i + 1} of {len(sc)}" + (f", {split}" if split else "")
            self.frame_note.content = f"Frame **{sc.frame_ids[i]}** ({where}), {sc.width}×{sc.height}"

    def goto_frame(self, client) -> None:
        """Put `client`'s camera at the shown frame's pose and field of view."""
        if self.shown_frame is None:
            return
        sc = self.scene
        wxyz, pos = c2w_to_viser(sc.c2w[self.shown_frame])
        look = pos + sc.c2w[self.shown_frame, :3, 2]
        with client.atomic():
            client.camera.fov = fov_y_from_K(sc.K, sc.height)
            client.camera.position = pos
            client.camera.look_at = look

    def render_view(self, wxyz, position, fov_y_rad: float, aspect: float,
                    max_side: int = RENDER_MAX_SIDE_PX) -> np.ndarray:
        """[H, W, 3] uint8: the Gaussians rendered from a viser camera pose (wxyz, position; OpenCV axes) with
        vertical fov `fov_y_rad` and width / height `aspect`, the longer side max_side pixels."""
        if not self.can_render:
            raise ViewerError(self.render_note)
        from recon.postfit.views import load_view_renderer
        with self._lock:
            if self._renderer is None:
                self._renderer = load_view_renderer(self.run, device="auto", log=self._log)
        w, h = render_size(aspect, max_side)
        K, c2w = pinhole_from_fov(fov_y_rad, w, h), viser_camera_to_c2w(wxyz, position)
        out = self._renderer.render(K, c2w, w, h)
        return np.round(np.clip(out["rgb"], 0, 1) * 255).astype(np.uint8)

    def _on_render_click(self, client) -> None:
        cam = client.camera
        self.render_button.disabled = True
        self.render_note_md.content = "Rendering…" if self._renderer is not None else \
            "Loading the Gaussians, then rendering…"
        try:
            t = time.perf_counter()
            img = self.render_view(cam.wxyz, cam.position, cam.fov, cam.aspect)
            self.last_render = img
            self.render_image.image = img
            self.render_image.visible = True
            self.render_note_md.content = (f"{img.shape[1]}×{img.shape[0]} px in {time.perf_counter() - t:.2f} s "
                                           f"({self._renderer.backend} rasteriser). Move the camera and render again.")
        except Exception as exc:   # shown in the panel: a failed render must not kill the viewer
            self.render_note_md.content = f"Render failed: {html.escape(str(exc))}"
            self._log(f"view: render failed: {exc!r}")
        finally:
            self.render_button.disabled = False

    # ------------------------------------------------------------------------------------------ lifetime
    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self.server.stop()


def _say(message: str) -> None:
    print(message, flush=True)


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8080, log=_say) -> int:
    """`run.py view`: start the viewer, print its URL, serve until Ctrl-C, then stop cleanly (exit status 0)."""
    viewer = RunViewer(run, host=host, port=port, log=log)
    try:
        if port and viewer.port != port:
            log(f"view: port {port} is busy; using {viewer.port}")
        log(f"view: {viewer.run} at {viewer.url}  (Ctrl-C to stop)")
        if host in ("127.0.0.1", "localhost", "::1"):
            log(f"view: from another machine: ssh -N -L {viewer.port}:127.0.0.1:{viewer.port} USER@THIS_HOST, "
                f"then open http://localhost:{viewer.port}")
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        log("view: stopped")
        return 0
    finally:
        viewer.stop()
