"""A new user's mistakes, one table row each: every command refuses with exit status 2, one clear message
naming the file or setting, no traceback, its inputs untouched and no partial output left behind.

Each row is run in this process through `run.main` (an unexpected exception fails the test with its
traceback). The inputs are copies of a tiny scene and a tiny finished run, made once per module.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import run as run_py
from recon.core.config import load_config
from recon.core.runfolder import RunLock
from recon.core.settings import FitSettings, SynthSettings
from recon.data.make_synth import make_synth_scene
from tests.tiny_settings import TINY_FIELDS

TINY = TINY_FIELDS + ["train.iters=6", "train.geometry_only_iters=2", "train.pan_start_iters=3",
                      "train.dice_off_iters=5", "train.threads=1", "mesh.voxel_size_m=0.12"]


@dataclass
class Env:
    """Paths of one case: fresh copies of the tiny scene and run, and an empty scratch folder."""
    scene: Path
    run: Path
    tmp: Path
    lock: RunLock | None = None                                # held by the `busy` setup, released after the case


@dataclass
class Case:
    name: str
    argv: Callable[[Env], list[str]]
    expect: str                                               # a piece of the one-line message (stderr)
    setup: Callable[[Env], None] | None = None
    untouched: Callable[[Env], list[Path]] = field(default=lambda e: [e.scene, e.run])
    absent: Callable[[Env], list[Path]] = field(default=lambda e: [])   # no partial output here afterwards
    rc: int = 2


def tree_digest(root: Path) -> str:
    """Names and contents of every file under root (a folder's state)."""
    h = hashlib.sha256()
    if root.is_file():
        h.update(root.read_bytes())
        return h.hexdigest()
    for p in sorted(root.rglob("*")):
        if p.name == ".lock":                                  # a refused writer may leave the (empty) lock file
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- setups (mutations of the copies)

def depth_in_metres(e: Env) -> None:
    for p in sorted((e.scene / "depth").glob("*.png")):
        mm = np.asarray(Image.open(p)).astype(np.float64)
        Image.fromarray(np.round(mm / 1000.0).astype(np.uint16)).save(p)


def drop(rel: str) -> Callable[[Env], None]:
    def f(e: Env) -> None:
        p = e.scene / rel if not rel.startswith("RUN/") else e.run / rel[4:]
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return f


def write(rel: str, text: str) -> Callable[[Env], None]:
    def f(e: Env) -> None:
        p = e.scene / rel if not rel.startswith("RUN/") else e.run / rel[4:]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return f


def first_scores(mutate: Callable[[dict], None]) -> Callable[[Env], None]:
    def f(e: Env) -> None:
        p = sorted((e.scene / "masks" / "scores").glob("*.json"))[0]
        doc = json.loads(p.read_text())
        mutate(doc)
        p.write_text(json.dumps(doc))
    return f


def set_first_score(v) -> Callable[[dict], None]:
    def m(doc: dict) -> None:
        doc[next(iter(doc))]["score"] = v
    return m


def busy(e: Env) -> None:
    """Another writer holds the run (released by the fixture after the case)."""
    e.lock = RunLock(e.run, "fit --resume into RUN (another terminal)").acquire()


def unrelated_folder(e: Env) -> None:
    (e.tmp / "thesis").mkdir()
    (e.tmp / "thesis" / "chapter1.tex").write_text("\\section{Intro}\n")


def a_file(e: Env) -> None:
    (e.tmp / "notes.txt").write_text("my notes\n")


def empty_mesh(e: Env) -> None:
    from recon.data.ply import read_ply, write_ply
    v, f, c, props = read_ply(e.run / "mesh.ply")
    write_ply(e.run / "mesh.ply", v, np.zeros((0, 3), np.int64), vertex_props=props, colors=c)


def damage(rel: str) -> Callable[[Env], None]:
    def f(e: Env) -> None:
        p = e.run / rel
        p.write_bytes(p.read_bytes()[:100])
    return f


def fake_dataset(kind: str) -> Callable[[Env], None]:
    def f(e: Env) -> None:
        src = e.tmp / "src"
        src.mkdir()
        if kind == "replica":
            (src / "results").mkdir()
            (src / "traj.txt").write_text("not a pose\n")
    return f


S = ["--scene"]
FIT = lambda e, *extra: ["fit", "--scene", str(e.scene), "--out", str(e.tmp / "new_run"), *TINY, *extra]  # noqa: E731


CASES = [
    # --------------------------------------------------------------- fit: where it writes
    Case("fit --out is the scene, --force", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.scene),
                                                        "--force", *TINY], "is the input"),
    Case("fit --out holds the scene, --force", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.scene.parent),
                                                           "--force", *TINY], "holds the input"),
    Case("fit --out an unrelated folder, --force", lambda e: ["fit", "--scene", str(e.scene), "--out",
                                                               str(e.tmp / "thesis"), "--force", *TINY],
         "not a run folder written by this tool", setup=unrelated_folder,
         untouched=lambda e: [e.scene, e.tmp / "thesis"]),
    Case("fit --out a file", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.tmp / "notes.txt"), *TINY],
         "is a file", setup=a_file, untouched=lambda e: [e.scene, e.tmp / "notes.txt"]),
    Case("fit --out unwritable", lambda e: ["fit", "--scene", str(e.scene), "--out", "/proc/recon-run", *TINY],
         "/proc/recon-run"),
    Case("fit --resume while another process writes", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.run),
                                                                  "--resume", *TINY],
         "is being written by another process (pid", setup=busy),
    Case("fit --resume of nothing", lambda e: FIT(e, "--resume"), "holds no run to resume",
         absent=lambda e: [e.tmp / "new_run"]),
    Case("fit --resume with other settings", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.run),
                                                         "--resume", *TINY, "render.xi=50"], "different settings"),
    Case("fit without --force into a finished run", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.run),
                                                                *TINY], "--resume to continue it or --force"),
    # --------------------------------------------------------------- fit: settings
    Case("train.iters=0", lambda e: FIT(e, "train.iters=0"), "'train.iters' must be >=1, got 0",
         absent=lambda e: [e.tmp / "new_run"]),
    Case("train.iters=-5", lambda e: FIT(e, "train.iters=-5"), "'train.iters' must be >=1, got -5"),
    Case("mesh.voxel_size_m<0", lambda e: FIT(e, "mesh.voxel_size_m=-0.08"), "'mesh.voxel_size_m' must be >0"),
    Case("mesh.voxel_size_m far too small", lambda e: FIT(e, "mesh.voxel_size_m=0.0001"), "use a larger mesh.voxel_size_m",
         absent=lambda e: [e.tmp / "new_run"]),
    Case("a typo in a key", lambda e: FIT(e, "train.iter=3"), "unknown config key 'train.iter'. Did you mean: iters?"),
    Case("a value of the wrong type", lambda e: FIT(e, "train.iters=many"), "'train.iters' must be an integer"),
    Case("NaN learning rate", lambda e: FIT(e, "train.lr_grid=.nan"), "'train.lr_grid' must be a finite number"),
    Case("a share above 1", lambda e: FIT(e, "loss.eik_fraction=2"), "'loss.eik_fraction' must be in [0, 1]"),
    Case("no samples per ray", lambda e: FIT(e, "render.n_stratified=0", "render.n_surface=0"),
         "n_stratified + n_surface must be at least 1"),
    Case("an unknown grid backend", lambda e: FIT(e, "model.sdf_grid.backend=cudnn"), "must be one of ['auto', 'torch'"),
    Case("an unknown device name", lambda e: FIT(e, "train.device=gpu"), "device must be auto, cpu, cuda or cuda:N"),
    Case("a CUDA device on a CPU machine", lambda e: FIT(e, "train.device=cuda:0"), "PyTorch sees no CUDA device"),
    Case("an unknown split", lambda e: FIT(e, "data.split=validation"), "data.split 'validation'",
         absent=lambda e: [e.tmp / "new_run"]),
    Case("a token threshold above 1", lambda e: FIT(e, "tokens.adjust_rules.iom_threshold=1.5"),
         "'tokens.adjust_rules.iom_threshold' must be in [0, 1]"),
    Case("hash tables beyond the memory", lambda e: FIT(e, "model.sdf_grid.log2_hashmap_size=32"), "GiB",
         absent=lambda e: [e.tmp / "new_run"]),
    Case("a missing config file", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.tmp / "r"), "--config",
                                             str(e.tmp / "nope.yaml")], "nope.yaml does not exist"),
    Case("a broken config file", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.tmp / "r"), "--config",
                                            str(e.tmp / "bad.yaml")], "bad.yaml",
         setup=lambda e: (e.tmp / "bad.yaml").write_text("train: {iters: [\n")),
    Case("a config file with a typo", lambda e: ["fit", "--scene", str(e.scene), "--out", str(e.tmp / "r"),
                                                 "--config", str(e.tmp / "typo.yaml")],
         "typo.yaml: unknown config key 'train.iterz'", setup=lambda e: (e.tmp / "typo.yaml").write_text("train: {iterz: 3}\n")),
    # --------------------------------------------------------------- fit: the scene
    Case("no such scene", lambda e: ["fit", "--scene", str(e.tmp / "nowhere"), "--out", str(e.tmp / "r"), *TINY],
         "not a folder", absent=lambda e: [e.tmp / "r"]),
    Case("depth in metres stored as uint16", lambda e: FIT(e), "depth_unit_m", setup=depth_in_metres,
         absent=lambda e: [e.tmp / "new_run"]),
    Case("a bad depth_unit_m", lambda e: FIT(e), "depth_unit_m must be a positive number",
         setup=write("scene.json", json.dumps({"depth_unit_m": -1}))),
    Case("masks/scores/ missing", lambda e: FIT(e), "masks/scores: missing folder", setup=drop("masks/scores")),
    Case("classes.json broken", lambda e: FIT(e), "classes.json: not valid JSON", setup=write("classes.json", "[{")),
    Case("a mask score above 1", lambda e: FIT(e), "scores are confidences in [0, 1]",
         setup=first_scores(set_first_score(1.5))),
    Case("a NaN mask score", lambda e: FIT(e), "scores are confidences in [0, 1]",
         setup=first_scores(set_first_score(float("nan")))),
    Case("a score entry without a class", lambda e: FIT(e), "must be {\"class\": int, \"score\": float}",
         setup=first_scores(lambda d: d[next(iter(d))].pop("class"))),
    Case("a pose that is not rigid", lambda e: FIT(e), "pose is not a rigid transform",
         setup=write("pose/000001.txt", "2 0 0 0\n0 2 0 0\n0 0 2 0\n0 0 0 1\n")),
    Case("a pose file that is not a matrix", lambda e: FIT(e), "pose/000002.txt", setup=write("pose/000002.txt", "hello\n")),
    Case("an intrinsics file that is not pinhole", lambda e: FIT(e), "intrinsics.txt: not a pinhole matrix",
         setup=write("intrinsics.txt", "1 0 0\n0 1 0\n0 0 0\n")),
    Case("splits.json naming unknown frames", lambda e: FIT(e), "names frames that do not exist",
         setup=write("splits.json", json.dumps({"train": ["999999"], "eval": []}))),
    Case("a colour image missing", lambda e: FIT(e), "missing frame(s) 000003", setup=drop("color/000003.png")),
    Case("a depth image of the wrong size", lambda e: FIT(e), "depth size",
         setup=lambda e: Image.fromarray(np.full((5, 5), 1000, np.uint16)).save(e.scene / "depth" / "000000.png")),
    Case("a depth image that is 8-bit", lambda e: FIT(e), "expected uint16 millimetres",
         setup=lambda e: Image.fromarray(np.full((30, 40), 10, np.uint8)).save(e.scene / "depth" / "000000.png")),
    # --------------------------------------------------------------- eval
    Case("eval of no run", lambda e: ["eval", "--run", str(e.tmp / "none")], "no such run folder"),
    Case("eval of a scene folder", lambda e: ["eval", "--run", str(e.scene)], "mesh.ply missing"),
    Case("eval of a mesh without faces", lambda e: ["eval", "--run", str(e.run), "--no-baseline"], "has no faces",
         setup=empty_mesh, untouched=lambda e: [e.scene]),
    Case("eval while another process writes", lambda e: ["eval", "--run", str(e.run)], "is being written", setup=busy),
    Case("eval with label images missing", lambda e: ["eval", "--run", str(e.run), "--no-baseline"], "--resume",
         setup=lambda e: sorted((e.run / "labels" / "instance").glob("*.png"))[0].unlink(),
         untouched=lambda e: [e.scene]),
    Case("eval with the scene moved away", lambda e: ["eval", "--run", str(e.run)], "scene.txt",
         setup=lambda e: (e.run / "scene.txt").write_text(str(e.tmp / "gone") + "\n"), untouched=lambda e: [e.scene]),
    Case("eval with every checkpoint damaged", lambda e: ["eval", "--run", str(e.run), "--no-baseline"],
         "no readable checkpoint", setup=lambda e: [p.write_bytes(b"junk") for p in (e.run / "checkpoints").glob("*.pt")],
         untouched=lambda e: [e.scene]),
    # --------------------------------------------------------------- export
    Case("export into an unrelated folder", lambda e: ["export", "--run", str(e.run), "--format", "ply", "--out",
                                                        str(e.tmp / "thesis")], "holds no previous export",
         setup=unrelated_folder, untouched=lambda e: [e.run, e.tmp / "thesis"]),
    Case("export onto a file", lambda e: ["export", "--run", str(e.run), "--format", "obj", "--out",
                                          str(e.tmp / "notes.txt")], "is not a folder", setup=a_file),
    Case("export to an unwritable place", lambda e: ["export", "--run", str(e.run), "--format", "obj", "--out",
                                                      "/proc/recon-export"], "/proc"),
    Case("export with too few collision faces", lambda e: ["export", "--run", str(e.run), "--format", "gazebo",
                                                            "--collision-faces", "3"], "--collision-faces must be at least"),
    Case("export of no run", lambda e: ["export", "--run", str(e.tmp / "none"), "--format", "ply"], "none"),
    Case("export of a damaged mesh", lambda e: ["export", "--run", str(e.run), "--format", "ply"],
         "cannot be read as PLY", setup=damage("mesh.ply"), untouched=lambda e: [e.scene]),
    Case("export without legend.json", lambda e: ["export", "--run", str(e.run), "--format", "ply"], "legend.json",
         setup=drop("RUN/legend.json"), untouched=lambda e: [e.scene]),
    Case("export with instances.json broken", lambda e: ["export", "--run", str(e.run), "--format", "glb"],
         "instances.json", setup=write("RUN/instances.json", "{"), untouched=lambda e: [e.scene]),
    Case("export while another process writes", lambda e: ["export", "--run", str(e.run), "--format", "ply"],
         "is being written", setup=busy),
    # --------------------------------------------------------------- convert
    Case("convert of a missing folder", lambda e: ["convert", "--from", "7scenes", str(e.tmp / "nope"), "--out",
                                                   str(e.tmp / "s")], "no such folder"),
    Case("convert --out is the source, --force", lambda e: ["convert", "--from", "replica-nice-slam", str(e.scene),
                                                             "--out", str(e.scene), "--force"], "is the input"),
    Case("convert --out holds the source, --force", lambda e: ["convert", "--from", "7scenes", str(e.scene), "--out",
                                                                str(e.scene.parent), "--force"], "holds the input"),
    Case("convert --out an unrelated folder, --force", lambda e: ["convert", "--from", "7scenes", str(e.scene),
                                                                   "--out", str(e.tmp / "thesis"), "--force"],
         "not a scene folder written by this tool", setup=unrelated_folder,
         untouched=lambda e: [e.scene, e.tmp / "thesis"]),
    Case("convert a folder of another kind", lambda e: ["convert", "--from", "7scenes", str(e.scene), "--out",
                                                        str(e.tmp / "s")], "frame-", absent=lambda e: [e.tmp / "s"]),
    Case("convert a Replica folder without images", lambda e: ["convert", "--from", "replica-nice-slam",
                                                                        str(e.tmp / "src"), "--out", str(e.tmp / "s")],
         "no frameNNNNNN.jpg colour images", setup=fake_dataset("replica"), absent=lambda e: [e.tmp / "s"]),
    Case("convert with --stride 0", lambda e: ["convert", "--from", "7scenes", str(e.scene), "--out", str(e.tmp / "s"),
                                               "--stride", "0"], "--stride"),
    Case("convert with --max-frames 0", lambda e: ["convert", "--from", "7scenes", str(e.scene), "--out",
                                                   str(e.tmp / "s"), "--max-frames", "0"], "--max-frames"),
    Case("convert with --holdout-every 1", lambda e: ["convert", "--from", "7scenes", str(e.scene), "--out",
                                                      str(e.tmp / "s"), "--holdout-every", "1"], "--holdout-every"),
    Case("convert with an option of another reader", lambda e: ["convert", "--from", "7scenes", str(e.scene), "--out",
                                                                str(e.tmp / "s"), "--label-map", str(e.scene / "classes.json")],
         "--label-map"),
    # --------------------------------------------------------------- synth
    Case("synth --force over an unrelated folder", lambda e: ["synth", "--out", str(e.tmp / "thesis"), "--force"],
         "not a scene folder written by this tool", setup=unrelated_folder, untouched=lambda e: [e.tmp / "thesis"]),
    Case("synth without --force over a scene", lambda e: ["synth", "--out", str(e.scene)], "already exists"),
    Case("synth onto a file", lambda e: ["synth", "--out", str(e.tmp / "notes.txt")], "is a file", setup=a_file,
         untouched=lambda e: [e.tmp / "notes.txt"]),
    Case("synth far too large", lambda e: ["synth", "--out", str(e.tmp / "big"), "--size", "4000x3000", "--frames", "400"],
         "GiB", absent=lambda e: [e.tmp / "big"]),
    Case("synth beyond the largest size", lambda e: ["synth", "--out", str(e.tmp / "big"), "--size", "100000x100000"],
         "'size[0]' must be in [8, 16384]"),
    Case("synth with an unknown preset", lambda e: ["synth", "--out", str(e.tmp / "s"), "--preset", "house"],
         "must be one of ['room', 'apartment', 'clutter', 'walk']"),
    Case("synth with an unknown noise level", lambda e: ["synth", "--out", str(e.tmp / "s"), "--noise", "loud"],
         "must be one of ['clean', 'realistic', 'hard', 'realistic-video', 'hard-video']"),
    Case("synth with one frame", lambda e: ["synth", "--out", str(e.tmp / "s"), "--frames", "1"], "'frames' must be >=2"),
    Case("synth with a miss rate above 1", lambda e: ["synth", "--out", str(e.tmp / "s"), "masks.p_miss=2"],
         "p_miss must be a probability in [0, 1]", absent=lambda e: [e.tmp / "s"]),
    Case("synth with an unknown mask rate", lambda e: ["synth", "--out", str(e.tmp / "s"), "masks.p_mis=0.1"],
         "unknown MaskNoiseConfig field(s) ['p_mis']"),
    # --------------------------------------------------------------- segment, post-processes, render, config
    Case("segment a missing scene", lambda e: ["segment", "--scene", str(e.tmp / "nope"), "--backend", "sim"],
         "not a folder"),
    Case("segment without model files", lambda e: ["segment", "--scene", str(e.scene), "--prompts",
                                                   "configs/prompts/indoor.yaml"], "--dino-config"),
    Case("segment over existing masks", lambda e: ["segment", "--scene", str(e.scene), "--backend", "sim"],
         "masks already exists"),
    Case("merge-fragments of no run", lambda e: ["merge-fragments", "--run", str(e.tmp / "none")], "none"),
    Case("merge-fragments without instances", lambda e: ["merge-fragments", "--run", str(e.run)], "instances.json",
         setup=drop("RUN/instances.json"), untouched=lambda e: [e.scene]),
    Case("merge-by-masks without scene.txt", lambda e: ["merge-by-masks", "--run", str(e.run)], "scene.txt",
         setup=drop("RUN/scene.txt"), untouched=lambda e: [e.scene]),
    Case("merge-by-masks with a share above 1", lambda e: ["merge-by-masks", "--run", str(e.run), "--min-share", "2"],
         "--min-share in [0, 1]"),
    Case("relabel without scene.txt", lambda e: ["relabel", "--run", str(e.run)], "scene.txt",
         setup=drop("RUN/scene.txt"), untouched=lambda e: [e.scene]),
    Case("relabel of no run", lambda e: ["relabel", "--run", str(e.tmp / "none")], "none"),
    Case("reclass without scene.txt", lambda e: ["reclass", "--run", str(e.run)], "scene.txt",
         setup=drop("RUN/scene.txt"), untouched=lambda e: [e.scene]),
    Case("reclass of no run", lambda e: ["reclass", "--run", str(e.tmp / "none")], "none"),
    Case("consistency without scene.txt", lambda e: ["consistency", "--run", str(e.run)], "scene.txt",
         setup=drop("RUN/scene.txt"), untouched=lambda e: [e.scene]),
    Case("consistency without instances", lambda e: ["consistency", "--run", str(e.run)], "instances.json",
         setup=drop("RUN/instances.json"), untouched=lambda e: [e.scene]),
    Case("consistency of no run", lambda e: ["consistency", "--run", str(e.tmp / "none")], "none"),
    Case("cull-mesh without scene.txt", lambda e: ["cull-mesh", "--run", str(e.run)], "scene.txt",
         setup=drop("RUN/scene.txt"), untouched=lambda e: [e.scene]),
    Case("cull-mesh with a negative margin", lambda e: ["cull-mesh", "--run", str(e.run), "--front-margin", "-1"],
         "must be >=0"),
    Case("merge-fragments with a share above 1", lambda e: ["merge-fragments", "--run", str(e.run), "--max-fraction",
                                                             "3"], "--max-fraction must be in [0, 1]"),
    Case("render an unknown frame", lambda e: ["render", "--run", str(e.run), "--frames", "777777"],
         "frames ['777777'] are not in", absent=lambda e: [e.run / "renders"]),
    Case("render a run without checkpoints", lambda e: ["render", "--run", str(e.run)], "no checkpoint",
         setup=drop("RUN/checkpoints"), untouched=lambda e: [e.scene]),
    Case("config with a typo", lambda e: ["config", "mesh.voxelsize_m=1"], "Did you mean: voxel_size_m"),
]


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny scene and a tiny finished run of it (with checkpoints, labels and depth)."""
    from app.pipeline import fit_scene
    base = tmp_path_factory.mktemp("mistakes")
    scene = base / "scene" / "room"
    make_synth_scene(SynthSettings(size=(40, 30), frames=6, holdout_every=3), scene, log=lambda *_: None)
    run = base / "run"
    fit_scene(scene, run, load_config(FitSettings, None, TINY), progress=False)
    return scene, run


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_mistake_is_refused_cleanly(case: Case, originals, tmp_path, capsys):
    scene0, run0 = originals
    env = Env(scene=tmp_path / "data" / "room", run=tmp_path / "run", tmp=tmp_path / "work")
    shutil.copytree(scene0, env.scene)
    shutil.copytree(run0, env.run)
    (env.run / "scene.txt").write_text(str(env.scene) + "\n")
    env.tmp.mkdir()
    if case.setup is not None:
        case.setup(env)
    watched = case.untouched(env)
    before = {p: tree_digest(p) for p in watched}
    try:
        rc = run_py.main(case.argv(env))
    except SystemExit as exc:                    # argparse refusals exit 2 with usage on stderr
        rc = exc.code
    finally:
        if env.lock is not None:
            env.lock.release()
    err = capsys.readouterr().err
    assert rc == case.rc, err
    assert "Traceback" not in err
    assert case.expect in err, err
    for p in watched:
        assert tree_digest(p) == before[p], f"{p} changed"
    for p in case.absent(env):
        assert not p.exists(), f"{p} was left behind"
    leftovers = [p for p in env.tmp.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name]
    assert leftovers == []


def test_the_catalogue_is_large():
    assert len(CASES) >= 60
