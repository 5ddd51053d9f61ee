#!/usr/bin/env python3
"""A screenshot of the web viewer (`run.py view`, app/viewer.py) in headless Chromium, and the browser
machinery that tests/app/test_viewer.py shares.

  python scripts/viewer_screenshot.py --run RUN --out docs/images/viewer.png
  python scripts/viewer_screenshot.py --run RUN --out shot.png --size 1200x800 --color-by instance \
      --select 8 --frame 0

It starts the viewer on a free port of 127.0.0.1, opens it in Chromium (selenium + chromedriver, WebGL on
the CPU through ANGLE's SwiftShader, so no GPU is needed), waits until the browser has connected and the
3D canvas shows the scene, optionally switches the colouring, highlights an instance (without moving the
camera) and shows a camera frame's image, saves the page as PNG and shuts everything down.

Needs Debian's chromium and chromium-driver (`apt-get install -y chromium chromium-driver`) and the
Python package selenium.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np

INSTALL_HINT = "apt-get install -y chromium chromium-driver && .venv/bin/pip install selenium==4.51.0"
# headless Chromium with WebGL rendered on the CPU (SwiftShader through ANGLE): no GPU, no display needed
BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-gl=angle",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                 "--hide-scrollbars", "--force-device-scale-factor=1", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking")


def find_browser() -> tuple[str | None, str | None, str | None]:
    """(chromium binary, chromedriver binary, None), or (None, None, why not + the command to fix it)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, None, f"the Python package selenium is not installed ({INSTALL_HINT})"
    chrome = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
                  None)
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", chrome), ("chromedriver", driver)) if p is None)
        return None, None, f"{missing} not found on PATH ({INSTALL_HINT})"
    return chrome, driver, None


def start_browser(width: int = 1200, height: int = 800):
    """A headless Chromium (selenium WebDriver) whose page viewport is exactly width x height CSS pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chrome, driver_path, why = find_browser()
    if why:
        raise RuntimeError(why)
    opts = Options()
    opts.binary_location = chrome
    for flag in BROWSER_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def wait_until(predicate, timeout_s: float, what: str, every_s: float = 0.2):
    """predicate()'s first truthy value within timeout_s, else TimeoutError naming `what`."""
    end = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def page_png_bytes(driver) -> bytes:
    """The page as PNG bytes, through the DevTools protocol (chromedriver's own screenshot command gives up
    after 10 s, which one frame of a large mesh in software WebGL on a busy CPU can take)."""
    return base64.b64decode(driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"])


def page_png(driver) -> np.ndarray:
    """The page as [H, W, 3] uint8."""
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(page_png_bytes(driver))).convert("RGB"))


def canvas_rect(driver) -> tuple[int, int, int, int]:
    """(x, y, width, height) in CSS pixels of the largest <canvas> on the page (viser's 3D view)."""
    r = driver.execute_script(
        "let best = null, area = 0;"
        "for (const c of document.querySelectorAll('canvas')) {"
        "  const b = c.getBoundingClientRect();"
        "  if (b.width * b.height > area) { area = b.width * b.height; best = b; } }"
        "return best ? [best.x, best.y, best.width, best.height] : null;")
    if not r:
        raise RuntimeError("the page has no <canvas>: the viewer's 3D view did not load")
    return tuple(int(round(x)) for x in r)


def canvas_pixels(driver, exclude_right_px: int = 0) -> np.ndarray:
    """[h, w, 3] uint8: the 3D canvas cut out of a page screenshot, without its `exclude_right_px` rightmost
    columns (where the control panel floats over it)."""
    x, y, w, h = canvas_rect(driver)
    img = page_png(driver)
    return img[max(y, 0):y + h, max(x, 0):x + w - exclude_right_px]


def scene_drawn(driver, min_std: float = 8.0, min_colours: int = 64, exclude_right_px: int = 420) -> bool:
    """Does the 3D canvas show something (pixel values spread, many distinct colours), not a blank page?"""
    px = canvas_pixels(driver, exclude_right_px)
    if px.size == 0:
        return False
    colours = len(np.unique(px.reshape(-1, 3)[::7], axis=0))
    return float(px.std()) >= min_std and colours >= min_colours


def dismiss_notifications(driver) -> None:
    """Close viser's toasts (e.g. 'Software WebGL rendering detected', which SwiftShader triggers)."""
    driver.execute_script(
        "for (const n of document.querySelectorAll('.mantine-Notification-root, [class*=Notification-root]'))"
        "  { const b = n.querySelector('button'); if (b) b.click(); else n.remove(); }")


def open_viewer(viewer, width: int = 1200, height: int = 800, timeout_s: float = 30.0):
    """A browser connected to `viewer` (app.viewer.RunViewer) whose 3D view has drawn the scene."""
    driver = start_browser(width, height)
    try:
        driver.get(f"http://127.0.0.1:{viewer.port}")
        wait_until(lambda: viewer.server.get_clients(), timeout_s, "the browser to connect to the viewer")
        wait_until(lambda: scene_drawn(driver), timeout_s, "the 3D canvas to show the scene")
    except BaseException:
        driver.quit()
        raise
    return driver


def main(argv: list[str] | None = None) -> int:
    from app.viewer import COLOR_MODES, RunViewer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="run folder")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--size", default="1200x800", help="page size WxH in pixels (default 1200x800)")
    p.add_argument("--color-by", choices=list(COLOR_MODES), default="class", help="mesh colouring (default class)")
    p.add_argument("--select", type=int, default=None, help="highlight this instance id (camera not moved)")
    p.add_argument("--frame", type=int, default=0, help="show the image of the k-th drawn camera (-1: none)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds to let the browser redraw before the shot")
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.size.lower().split("x"))
    _, _, why = find_browser()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    viewer = RunViewer(a.run, host="127.0.0.1", port=0)
    driver = None
    try:
        driver = open_viewer(viewer, w, h, timeout_s=120)
        viewer.set_color_mode(a.color_by)
        if a.select is not None:
            viewer.select_instance(a.select, move_camera=False)
        if a.frame >= 0 and len(viewer.camera_index):
            viewer.show_frame(a.frame)
        time.sleep(a.settle)
        dismiss_notifications(driver)
        time.sleep(1.0)
        wait_until(lambda: scene_drawn(driver), 60, "the 3D canvas to show the scene")
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_name(f".{a.out.name}.tmp")
        tmp.write_bytes(page_png_bytes(driver))
        os.replace(tmp, a.out)
        print(f"wrote {a.out} ({w}x{h}) in {time.perf_counter() - t0:.1f} s")
    finally:
        if driver is not None:
            driver.quit()
        viewer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
