"""When a bench cell is the same cell: the config hash that decides resume, and what a finished fit
can be reused for (evaluated as is, post-processed without its model, or refitted)."""
from __future__ import annotations

import hashlib
import json


def config_hash(obj) -> str:
    """sha256 (16 hex digits) of the canonical JSON of obj."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

# where a fit runs does not make it another cell (cells computed before the key existed keep their hash)
UNHASHED_TRAIN_KEYS = ("device",)

# the fragment-merging post-process, added after cells were computed: switched off it changes nothing
# (and its parameters are unused), so such a cell keeps its identity and its finished fit stays reusable
FRAGMENT_KEYS = ("merge_fragments", "fragment_max_fraction", "fragment_min_shared_edges")

# the mask-evidence merge (recon/postfit/mask_merge.py), added later and off by default: while off its keys change
# nothing, so cells keep their identity
MASK_MERGE_KEYS = ("merge_by_masks", "mask_merge_min_frames", "mask_merge_min_share")

# the relabelling where the masks are silent (recon/postfit/mask_relabel.py), added later and on by default; with both
# rules off its keys change nothing, so cells keep their identity
RELABEL_SWITCHES = ("split_untokened", "fill_unmasked")
RELABEL_KEYS = RELABEL_SWITCHES + ("relabel_depth_tol_m", "split_min_mask_share")

# the instance class from its masks (recon/postfit/mask_reclass.py), added later and on by default; while off its keys
# change nothing, so cells keep their identity
RECLASS_KEYS = ("reclass_by_masks", "reclass_min_frames", "reclass_min_share")

# the panoptic consistency step (recon/postfit/panoptic_consistency.py), added later and on by default; with both
# switches off its keys change nothing, so cells keep their identity
CONSISTENCY_SWITCHES = ("dissolve_on_stuff", "consistent_ids")
CONSISTENCY_KEYS = CONSISTENCY_SWITCHES + ("dissolve_min_votes", "dissolve_min_share")

# panoptic settings that only act through the panoptic head: with panoptic.head off they change nothing
HEAD_ONLY_KEYS = ("keep_untokened_classes",)

# the blind split rule (tokens/adjust.py), added later and off by default: while off (blind_max_overlap 0)
# its keys change nothing, so cells keep their identity
BLIND_KEYS = ("blind_max_overlap", "blind_min_events", "blind_min_distance_m")


# settings added later whose default is "off" (today's behaviour): while a key has its off value it changes nothing,
# and neither do the keys that only qualify it, so old cells keep their identity.
# (section, key): (off value, keys of the same section that only matter when it is on)
OFF_KEYS = {
    ("tokens", "formulation"): ("tokens", ("n_slots",)),            # the Panoptic Lifting baseline (tokens/slots.py)
    ("tokens", "segment_consistency"): (0.0, ()),
    ("loss", "noise_power"): (0.0, ("noise_ref_m",)),              # real-depth options (configs/real.yaml)
    ("loss", "edge_rel_jump"): (0.0, ()),
    ("render", "surface_step_m"): (0.0, ()),                        # held-out depth read-out options
    ("render", "surface_min_solid_m"): (0.0, ()),
    ("render", "surface_observed_m"): (0.0, ("surface_free_ratio",)),
}


def _strip_off_keys(cfg: dict) -> dict:
    out = dict(cfg)
    for (sec, key), (off, qualifiers) in OFF_KEYS.items():
        part = out.get(sec)
        if isinstance(part, dict) and key in part and part[key] == off:
            out[sec] = {k: v for k, v in part.items() if k != key and k not in qualifiers}
    return out


def comparable_config(cfg: dict | None) -> dict | None:
    """A resolved fit config without the settings that do not change the result (UNHASHED_TRAIN_KEYS; the
    FRAGMENT_KEYS while panoptic.merge_fragments is off; the MASK_MERGE_KEYS while panoptic.merge_by_masks is off;
    the RELABEL_KEYS while both relabelling rules are off; the CONSISTENCY_KEYS while both consistency rules are off;
    the HEAD_ONLY_KEYS without the panoptic head; the
    BLIND_KEYS while the blind split is off; the OFF_KEYS at their off values): what the cell hash and fit reuse
    compare."""
    if not isinstance(cfg, dict):
        return cfg
    out = _strip_off_keys(cfg)
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in UNHASHED_TRAIN_KEYS}
    pan = out.get("panoptic")
    if isinstance(pan, dict) and not pan.get("merge_fragments", False):
        out["panoptic"] = pan = {k: v for k, v in pan.items() if k not in FRAGMENT_KEYS}
    if isinstance(pan, dict) and not pan.get("merge_by_masks", False):
        out["panoptic"] = pan = {k: v for k, v in pan.items() if k not in MASK_MERGE_KEYS}
    if isinstance(pan, dict) and not any(pan.get(k, False) for k in RELABEL_SWITCHES):
        out["panoptic"] = pan = {k: v for k, v in pan.items() if k not in RELABEL_KEYS}
    if isinstance(pan, dict) and not pan.get("reclass_by_masks", False):
        out["panoptic"] = pan = {k: v for k, v in pan.items() if k not in RECLASS_KEYS}
    if isinstance(pan, dict) and not any(pan.get(k, False) for k in CONSISTENCY_SWITCHES):
        out["panoptic"] = pan = {k: v for k, v in pan.items() if k not in CONSISTENCY_KEYS}
    if isinstance(pan, dict) and pan.get("head") is False:          # a rule of the head's labels: no head, no effect
        out["panoptic"] = {k: v for k, v in pan.items() if k not in HEAD_ONLY_KEYS}
    tok = out.get("tokens")
    rules = tok.get("adjust_rules") if isinstance(tok, dict) else None
    if isinstance(rules, dict) and not rules.get("blind_max_overlap", 0.0):
        out["tokens"] = {**tok, "adjust_rules": {k: v for k, v in rules.items() if k not in BLIND_KEYS}}
    return out

# post-processes a finished fit can take without its model: the mesh's near-surface cull (recon/postfit/post_process.py
# cull_run_mesh; a run fitted before the key existed was culled with no front margin) and fragment merging
CULL_KEY = "cull_front_margin_m"


def post_steps(old_cfg: dict, new_cfg: dict) -> list[str] | None:
    """The post-processes ("cull", then "merge", then "maskmerge", then "relabel", then "reclass", then
    "consistency") that turn a
    finished fit with settings old_cfg into one with new_cfg, [] if none is needed, or None if no post-process can
    (other settings differ, a looser cull, other fragment-merging settings on a run merged already, relabelling
    rules switched off on a relabelled run, the reclass on a reclassed one, or the consistency rules changed on a run
    made consistent): then the cell is refitted."""
    old_c, new_c = comparable_config(old_cfg), comparable_config(new_cfg)

    def without_post(c: dict) -> dict:
        return {**c, "panoptic": {k: v for k, v in (c.get("panoptic") or {}).items()
                                  if k not in FRAGMENT_KEYS + MASK_MERGE_KEYS + RELABEL_KEYS + RECLASS_KEYS
                                  + CONSISTENCY_KEYS},
                "mesh": {k: v for k, v in (c.get("mesh") or {}).items() if k != CULL_KEY}}
    if without_post(old_c) != without_post(new_c):
        return None
    steps = []
    inf = float("inf")
    old_front, new_front = (c.get("mesh", {}).get(CULL_KEY) for c in (old_c, new_c))
    old_front, new_front = (inf if f is None else float(f) for f in (old_front, new_front))
    if new_front != old_front:
        if new_front > old_front:                   # faces culled already cannot come back
            return None
        steps.append("cull")
    for step, keys, switch in (("merge", FRAGMENT_KEYS, "merge_fragments"),
                               ("maskmerge", MASK_MERGE_KEYS, "merge_by_masks")):
        old_p, new_p = ({k: v for k, v in (c.get("panoptic") or {}).items() if k in keys} for c in (old_c, new_c))
        if old_p != new_p:
            if not new_p.get(switch) or old_p.get(switch):
                return None                         # merged ids cannot be split again
            steps.append(step)
    old_p, new_p = ({k: v for k, v in (c.get("panoptic") or {}).items() if k in RELABEL_KEYS} for c in (old_c, new_c))
    if old_p != new_p:
        if any(old_p.get(k, False) for k in RELABEL_SWITCHES):
            return None                                 # relabelled vertices cannot be put back
        if any(new_p.get(k, False) for k in RELABEL_SWITCHES):
            steps.append("relabel")
    old_p, new_p = ({k: v for k, v in (c.get("panoptic") or {}).items() if k in RECLASS_KEYS} for c in (old_c, new_c))
    if old_p != new_p:
        if old_p.get("reclass_by_masks") or not new_p.get("reclass_by_masks"):
            return None                                 # reclassed vertices cannot be put back
        steps.append("reclass")
    old_p, new_p = ({k: v for k, v in (c.get("panoptic") or {}).items() if k in CONSISTENCY_KEYS}
                    for c in (old_c, new_c))
    if old_p != new_p:
        if any(old_p.get(k, False) for k in CONSISTENCY_SWITCHES):
            return None                                 # dissolved instances and dropped ids cannot be put back
        steps.append("consistency")
    return steps


def fit_reuse(old_cfg: dict | None, new_cfg: dict) -> str:
    """What a cell does with a finished fit whose RUN/config.yaml is old_cfg, for settings new_cfg:
    "evaluate" (same result settings), "postprocess" (only post-process settings differ, and post_steps can
    apply them to the finished run: then evaluate) or "refit"."""
    if old_cfg is None:
        return "refit"
    if comparable_config(old_cfg) == comparable_config(new_cfg):
        return "evaluate"
    return "postprocess" if post_steps(old_cfg, new_cfg) else "refit"


def hashed_spec(spec: dict) -> dict:
    """The part of a cell spec that decides resume: all but the scene folder's path, with the config
    reduced by comparable_config."""
    out = {k: v for k, v in spec.items() if k != "scene_dir"}
    if isinstance(out.get("config"), dict):
        out["config"] = comparable_config(out["config"])
    return out
