"""The web viewer (app/viewer.py, `run.py view`): its camera maths on hand cases, the Gaussian render from a
viser camera (the OpenCV convention checked on a hand-placed Gaussian), the command line (bad input, serving
until Ctrl-C), and the viewer in a real browser: headless Chromium through selenium
(scripts/viewer_screenshot.py holds the browser machinery), WebGL on the CPU (SwiftShader).

The run folder is the tiny labelled run of the export tests (tests/recon/export/test_export.py make_run: a
box room, a closed box = instance 1, a table = instance 2, an unlisted instance 7), plus three frames of a
scene folder written here and a one-Gaussian gaussians.ply; nothing is fitted.

The browser test skips with the install command when chromium, chromedriver or selenium is missing; with
RECON_REQUIRE_BROWSER=1 (CI) it fails instead.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from app.viewer import (RunViewer, appearance_status, c2w_to_viser, filter_instances, fov_y_from_K, framing_pose,
                        instance_rows, legend_html, matrix_to_quat_wxyz, pinhole_from_fov, quat_wxyz_to_matrix,
                        render_size, srgb_to_linear_u8, subsample_indices, viser_camera_to_c2w)
from fields.gaussians import SH_C0
from recon.data.ply import write_gaussians_ply
from recon.data.scene import FrameRecord, write_scene
from scripts.viewer_screenshot import canvas_pixels, find_browser, open_viewer, wait_until
from tests.recon.export.test_export import make_run

ROOT = Path(__file__).resolve().parents[2]
BLOB_M = np.array([3.0, 1.5, 1.5])   # the one Gaussian of the tiny run's gaussians.ply (red, 0.1 m)


# ------------------------------------------------------------------------------------------------
# the tiny run folder
# ------------------------------------------------------------------------------------------------
def look_at_c2w(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """c2w [4, 4] in OpenCV axes (x right, y down, z forward) of a camera at eye looking at target."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], 1)
    c2w[:3, 3] = eye
    return c2w


def tiny_frames_scene(out: Path) -> Path:
    """Three 32x24 frames looking into the tiny room (flat colour per frame, a bright square marking the top)."""
    K = np.array([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])
    frames = []
    for k, (eye, col) in enumerate([((0.5, 0.5, 1.5), (200, 60, 60)), ((3.5, 0.5, 1.5), (60, 200, 60)),
                                    ((2.0, 2.7, 1.8), (60, 60, 200))]):
        img = np.zeros((24, 32, 3), np.uint8) + np.array(col, np.uint8)
        img[2:8, 13:19] = 255
        frames.append(FrameRecord(color=img, c2w=look_at_c2w(eye, (2.0, 1.5, 0.5)),
                                  depth_m=np.full((24, 32), 2.0, np.float32)))
    return write_scene(out, K=K, frames=frames, classes=[], meta={"name": "tiny room", "up_axis": "+z",
                                                                 "generator": {"floor_z": 0.0}})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("viewer")
    run = make_run(root)
    scene = tiny_frames_scene(root / "frames")
    (run / "scene.txt").write_text(f"{scene}\n")
    (run / "config.yaml").write_text("appearance:\n  backend: torch\n")
    write_gaussians_ply(run / "gaussians.ply", {
        "means": BLOB_M[None], "quats": np.array([[1.0, 0, 0, 0]]), "log_scales": np.full((1, 3), np.log(0.1)),
        "opacity_logits": np.array([6.0]), "sh_dc": ((np.array([[0.9, 0.1, 0.1]]) - 0.5) / SH_C0),
        "sh_rest": np.zeros((1, 0, 3))})
    return run


# ------------------------------------------------------------------------------------------------
# pure maths, hand cases
# ------------------------------------------------------------------------------------------------
def test_quaternion_and_c2w_hand_cases():
    s = math.sqrt(0.5)
    Rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])            # 90 degrees about +z
    assert np.allclose(quat_wxyz_to_matrix((s, 0, 0, s)), Rz90)
    assert np.allclose(quat_wxyz_to_matrix((2 * s, 0, 0, 2 * s)), Rz90)   # normalised first
    assert np.allclose(quat_wxyz_to_matrix((1, 0, 0, 0)), np.eye(3))
    q = matrix_to_quat_wxyz(Rz90)
    assert np.allclose(q, (s, 0, 0, s)) or np.allclose(q, (-s, 0, 0, -s))
    c2w = viser_camera_to_c2w((s, 0, 0, s), (1.0, 2.0, 3.0))
    assert np.allclose(c2w, [[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    # a camera looking along world +x with z up: OpenCV x (right) = -y, y (down) = -z, z (forward) = +x
    R = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    wxyz, pos = c2w_to_viser(np.block([[R, np.array([[4.0], [5], [6]])], [np.zeros((1, 3)), np.ones((1, 1))]]))
    assert np.allclose(pos, (4, 5, 6))
    assert np.allclose(viser_camera_to_c2w(wxyz, pos)[:3, :3], R)
    with pytest.raises(ValueError, match="no direction"):
        quat_wxyz_to_matrix((0, 0, 0, 0))


def test_pinhole_from_fov_hand_cases():
    K = pinhole_from_fov(math.pi / 2, 64, 48)            # f = (48 / 2) / tan(45 deg) = 24
    assert np.allclose(K, [[24, 0, 31.5], [0, 24, 23.5], [0, 0, 1]])
    assert math.isclose(fov_y_from_K(K, 48), math.pi / 2)
    K = pinhole_from_fov(math.radians(60), 100, 100)     # f = 50 / tan(30 deg) = 86.6025
    assert math.isclose(K[0, 0], 86.60254037844386) and K[0, 0] == K[1, 1]
    with pytest.raises(ValueError, match="field of view"):
        pinhole_from_fov(0.0, 10, 10)


def test_render_size_and_subsample():
    assert render_size(1.5, 240) == (240, 160)
    assert render_size(0.5, 240) == (120, 240)
    assert render_size(100.0, 240) == (240, 8)           # never below 8 pixels
    with pytest.raises(ValueError):
        render_size(0.0, 240)
    assert subsample_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert subsample_indices(3, 5).tolist() == [0, 1, 2]
    assert subsample_indices(100, 1).tolist() == [0]
    assert subsample_indices(0, 5).tolist() == []
    idx = subsample_indices(1000, 60)
    assert len(idx) == 60 and idx[0] == 0 and idx[-1] == 999


def test_framing_pose_hand_cases():
    up = (0.0, 0.0, 1.0)
    # fov 90 deg, square: distance = r / sin(45 deg) = sqrt(2); level view along +x
    pos, look = framing_pose((0, 0, 0), 1.0, math.pi / 2, 1.0, (1, 0, 0), up, elevation_deg=0, margin=1.0)
    assert np.allclose(pos, (-math.sqrt(2), 0, 0)) and np.allclose(look, 0)
    # 30 deg down: position = -sqrt(2) (cos 30, 0, -sin 30)
    pos, _ = framing_pose((0, 0, 0), 1.0, math.pi / 2, 1.0, (1, 0, -5), up, elevation_deg=30, margin=1.0)
    assert np.allclose(pos, (-math.sqrt(2) * math.cos(math.pi / 6), 0, math.sqrt(2) * 0.5))
    # portrait (aspect 0.5): the horizontal fov 2 atan(0.5) is the narrower: distance = r / sin(atan 0.5) = sqrt 5
    pos, _ = framing_pose((1, 2, 3), 1.0, math.pi / 2, 0.5, (0, 1, 0), up, elevation_deg=0, margin=1.0)
    assert np.allclose(pos, (1, 2 - math.sqrt(5), 3))
    # looking straight down: some heading, still at the distance and above the centre
    pos, _ = framing_pose((0, 0, 0), 1.0, math.pi / 2, 1.0, (0, 0, -1), up, elevation_deg=30, margin=1.0)
    assert math.isclose(np.linalg.norm(pos), math.sqrt(2)) and pos[2] > 0


def test_srgb_to_linear_hand_cases():
    # 0 and 255 are fixed; 128/255 = 0.50196 -> ((0.50196 + 0.055) / 1.055)^2.4 = 0.21586 -> 55;
    # 10/255 = 0.0392 (linear segment) -> 0.0392 / 12.92 = 0.003035 -> 1
    assert srgb_to_linear_u8(np.array([[0, 255, 128], [10, 10, 10]], np.uint8)).tolist() == [[0, 255, 55], [1, 1, 1]]


def test_filter_instances():
    names = {1: "cardboard box", 2: "table", 3: "Chair"}
    assert filter_instances(names, "") == [1, 2, 3]
    assert filter_instances(names, "  ") == [1, 2, 3]
    assert filter_instances(names, "CHA") == [3]
    assert filter_instances(names, "box, table") == [1, 2]
    assert filter_instances(names, "sofa") == []


def test_instance_rows_legend_and_appearance_status(tiny_run, tmp_path):
    from recon.export.run_data import load_run
    mesh = load_run(tiny_run, log=lambda m: None)
    rows = instance_rows(mesh)
    assert [r.id for r in rows] == [1, 2]                     # instance 7 is not in instances.json
    box = rows[0]
    assert np.allclose(box.bbox_min, (1.0, 1.0, 0.0)) and np.allclose(box.bbox_max, (1.5, 1.4, 0.3))
    assert box.label == "#1 cardboard box · 0.90 · 0.50×0.40×0.30 m"
    html = legend_html(mesh.legend, {0, 1, 10})
    assert "cardboard box" in html and "rgb(40,200,60)" in html and "table" not in html
    assert html.index("wall") < html.index("unlabelled")      # unlabelled last

    ok, why = appearance_status(tiny_run)
    assert ok, why
    bare = tmp_path / "bare"
    bare.mkdir()
    ok, why = appearance_status(bare)
    assert not ok and "config.yaml" in why
    (bare / "config.yaml").write_text("appearance:\n  backend: torch\n")
    (bare / "checkpoints").mkdir()
    (bare / "checkpoints" / "last.pt").write_bytes(b"")
    ok, why = appearance_status(bare)
    assert not ok and "gaussians.ply" in why and "run.py render" in why


# ------------------------------------------------------------------------------------------------
# the viewer object: loading, selection, and the Gaussian render from a viser camera
# ------------------------------------------------------------------------------------------------
def test_viewer_loads_and_renders_from_a_viser_camera(tiny_run):
    viewer = RunViewer(tiny_run, port=0, log=lambda m: None)
    try:
        assert viewer.port > 0 and viewer.url.startswith("http://127.0.0.1:")
        assert np.allclose(viewer.up, (0, 0, 1))
        assert viewer.camera_index.tolist() == [0, 1, 2] and len(viewer._frustums) == 3
        assert viewer.can_render
        # camera at (1, 1.5, 1.2) looking along +x (OpenCV: x right = -y, y down = -z, z forward = +x)
        R = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
        eye = np.array([1.0, 1.5, 1.2])
        wxyz = matrix_to_quat_wxyz(R)
        img = viewer.render_view(wxyz, eye, math.pi / 2, 1.5, max_side=60)    # 60 x 40, f = 20
        assert img.shape == (40, 60, 3) and img.dtype == np.uint8
        # the blob is 2 m ahead and 0.3 m up: pixel (u, v) = (29.5, 19.5 - 20 * 0.3 / 2) = (29.5, 16.5)
        centre = img[16:18, 29:31].reshape(-1, 3).mean(0)
        assert centre[0] > 150 and centre[0] > centre[1] + 80, centre          # red
        assert img[21:24, 29:31].max() < img[16:18, 29:31].max()             # below it: fainter (y is down)
        assert img[:4, :4].max() < 10 and img[-4:, -4:].max() < 10            # corners: empty
        back = viewer.render_view(matrix_to_quat_wxyz(R @ np.diag([-1.0, 1, -1])), eye, math.pi / 2, 1.5, 60)
        assert back.max() < 10                                                 # looking away: nothing

        viewer.select_instance(2, move_camera=False)
        assert viewer.selected == 2 and len(viewer._selection_nodes) == 2
        assert viewer.apply_filter("box") == [1] and not viewer.instance_buttons[2].visible
        assert viewer.apply_filter("") == [1, 2] and viewer.instance_buttons[2].visible
        viewer.clear_selection()
        assert viewer.selected is None and not viewer._selection_nodes
        with pytest.raises(KeyError, match="instance 7"):
            viewer.select_instance(7)
        # a click on the mesh (viser gives the click's world ray) selects the instance under the pointer
        viewer._on_mesh_click(SimpleNamespace(ray_origin=(1.25, 1.2, 2.0), ray_direction=(0, 0, -1), client=None))
        assert viewer.selected == 1                                            # the box's top at z = 0.3
        viewer._on_mesh_click(SimpleNamespace(ray_origin=(0.5, 0.5, 2.0), ray_direction=(0, 0, -1), client=None))
        assert viewer.selected == 1                                            # the floor: no instance, kept
        viewer.show_frame(2)
        assert viewer.shown_frame == 2 and viewer.frame_image.image.shape == (240, 320, 3)   # 32x24 x 10
    finally:
        viewer.stop()


def test_viewer_refuses_bad_input(tmp_path, capsys):
    import run as cli
    assert cli.main(["view", "--run", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    assert cli.main(["view", "--run", str(tmp_path / "r")]) == 2
    assert "mesh.ply: missing" in capsys.readouterr().err
    assert cli.main(["view", "--run", str(tmp_path / "r"), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err


def test_cli_serves_until_ctrl_c(tiny_run):
    """`run.py view` prints the URL, serves the page, and exits 0 on Ctrl-C (SIGINT)."""
    # a shell starts the command with SIGINT at its default; a child inherits an *ignored* SIGINT from its parent
    # (and Python then installs no KeyboardInterrupt handler), so reset it in case something in this test process
    # (an earlier test's library) ignores it
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "view", "--run", str(tiny_run), "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines, url = [], None
        t_end = time.monotonic() + 60
        while url is None and time.monotonic() < t_end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if " at http://127.0.0.1:" in line:
                url = line.split(" at ", 1)[1].split()[0]
        assert url, "".join(lines)
        lines.append(proc.stdout.readline())                 # the ssh port-forwarding hint follows the URL
        assert "ssh -N -L" in lines[-1], "".join(lines)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read(2000).lower()
        proc.send_signal(signal.SIGINT)
        # the SIGINT is acted on once the render in flight (the first view of the Gaussians) is done: in the
        # full suite on 2 busy cores that took over 20 s once, so allow a minute
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + out
        assert "view: stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------------------------------------
# in a real browser
# ------------------------------------------------------------------------------------------------
def need_browser() -> None:
    _, _, why = find_browser()
    if why is None:
        return
    if os.environ.get("RECON_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RECON_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(f"no headless browser: {why}")


def _buttons(driver, text: str):
    """The displayed <button>s whose text contains `text` (viser removes hidden GUI elements from the page)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    out = []
    for b in driver.find_elements(By.XPATH, f"//button[contains(normalize-space(.), '{text}')]"):
        try:
            if b.is_displayed():
                out.append(b)
        except StaleElementReferenceException:     # re-rendered between the search and the check
            pass
    return out


def test_viewer_in_browser(tiny_run):
    """Headless Chromium: the 3D canvas draws the scene, the instance list is in the page, typing a filter
    hides instances, clicking one highlights it and moves that browser's camera to it, the colour dropdown
    changes the picture, and 'Render this view' renders the Gaussians from the browser's camera."""
    need_browser()
    from selenium.webdriver.common.by import By

    viewer = RunViewer(tiny_run, port=0, log=lambda m: None)
    driver = None
    try:
        driver = open_viewer(viewer, 1000, 700, timeout_s=40)          # waits for the connection and a drawing
        # (a) the canvas is not blank
        px = canvas_pixels(driver, exclude_right_px=420)
        assert px.std() > 8 and len(np.unique(px.reshape(-1, 3), axis=0)) > 64
        # (b) the run's instances are listed in the page, and only those
        for r in viewer.rows:
            wait_until(lambda: _buttons(driver, r.label), 10, f"the button of instance {r.id} ({r.label})")
        assert not _buttons(driver, "#7 ")
        assert "cardboard box" in driver.find_element(By.TAG_NAME, "body").text   # legend and list

        # the class filter, typed into the page
        assert _buttons(driver, "#1 cardboard box")
        field = driver.find_element(By.XPATH, "//*[normalize-space(text())='Filter class']/following::input[1]")
        field.send_keys("tab")
        wait_until(lambda: viewer.filter_text.value == "tab", 10, "the filter text to reach the server")
        wait_until(lambda: not _buttons(driver, "#1 cardboard box"), 10, "the box's button to hide")
        assert _buttons(driver, "#2 table")

        # clicking an instance highlights it and frames it in this browser's camera
        client = next(iter(viewer.server.get_clients().values()))
        _buttons(driver, "#2 table")[0].click()
        wait_until(lambda: viewer.selected == 2, 10, "the click to select instance 2")
        table_centre = (viewer._rows_by_id[2].bbox_min + viewer._rows_by_id[2].bbox_max) / 2
        wait_until(lambda: np.linalg.norm(client.camera.look_at - table_centre) < 0.05, 10,
                   "the browser camera to look at the table")
        assert np.linalg.norm(client.camera.position - table_centre) < 3.0

        # the colour dropdown, used in the page, changes the picture
        before = canvas_pixels(driver, exclude_right_px=420).astype(np.int16)
        driver.find_element(By.XPATH, "//*[normalize-space(text())='Colour by']/following::input[1]").click()
        wait_until(lambda: [o for o in driver.find_elements(By.XPATH, "//*[@role='option']") if o.text == "class"],
                   10, "the dropdown's options")[0].click()
        wait_until(lambda: viewer.color_dropdown.value == "class", 10, "the dropdown value to reach the server")
        wait_until(lambda: np.abs(canvas_pixels(driver, exclude_right_px=420).astype(np.int16) - before).mean() > 2,
                   20, "the mesh to be redrawn in class colours")

        # the Gaussians, rendered from this browser's camera
        _buttons(driver, "Render this view")[0].click()
        wait_until(lambda: viewer.last_render is not None, 30, "the Gaussian render")
        img = viewer.last_render
        assert img.ndim == 3 and max(img.shape[:2]) == 240
        wait_until(lambda: "px in" in driver.find_element(By.TAG_NAME, "body").text, 10, "the render's note")
    finally:
        if driver is not None:
            driver.quit()
        viewer.stop()
