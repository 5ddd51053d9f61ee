"""Fixed class list of the synthetic generator (ids stable across presets)."""
from __future__ import annotations

# ids 1..C, 0 is reserved for "nothing / unlabelled". Order is the id order.
CLASSES: tuple[dict, ...] = (
    {"id": 1, "name": "wall", "thing": False, "prompts": ["wall"]},
    {"id": 2, "name": "floor", "thing": False, "prompts": ["floor"]},
    {"id": 3, "name": "ceiling", "thing": False, "prompts": ["ceiling"]},
    {"id": 4, "name": "table", "thing": True, "prompts": ["table", "desk"]},
    {"id": 5, "name": "chair", "thing": True, "prompts": ["chair", "armchair"]},
    {"id": 6, "name": "sofa", "thing": True, "prompts": ["sofa", "couch"]},
    {"id": 7, "name": "shelf", "thing": True, "prompts": ["shelf", "bookshelf"]},
    {"id": 8, "name": "cabinet", "thing": True, "prompts": ["cabinet", "cupboard", "dresser"]},
    {"id": 9, "name": "lamp", "thing": True, "prompts": ["lamp", "floor lamp"]},
    {"id": 10, "name": "box", "thing": True, "prompts": ["box", "cardboard box"]},
    {"id": 11, "name": "bottle", "thing": True, "prompts": ["bottle", "vase"]},
    {"id": 12, "name": "book", "thing": True, "prompts": ["book"]},
)

CLASS_ID: dict[str, int] = {c["name"]: c["id"] for c in CLASSES}
THING_IDS: frozenset[int] = frozenset(c["id"] for c in CLASSES if c["thing"])

# Similar-class pairs that a simulated open-vocabulary segmenter confuses (by name).
CONFUSABLE: dict[str, list[str]] = {
    "chair": ["sofa"],
    "sofa": ["chair"],
    "table": ["cabinet"],
    "cabinet": ["table"],
}


def class_list() -> list[dict]:
    """Fresh copy of the class list (safe to mutate)."""
    return [{**c, "prompts": list(c["prompts"])} for c in CLASSES]
