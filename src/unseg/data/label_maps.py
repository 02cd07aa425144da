"""The benchmarks' class tables: names, and the maps from the ids stored in their label PNGs to evaluated classes.

Every map is a (256,) uint8 lookup table: ``table[stored_id]`` is the evaluated class id, 255 (void, ignored) for
an id the benchmark does not evaluate. Sources:

* PASCAL VOC 2012: the 20 classes of the devkit, background 0, 255 void.
* COCO-Stuff (stuffthingmaps PNGs, 0-indexed: id = COCO category id − 1, things 0-90 with 11 unused ids, stuff
  91-181, 255 unlabeled). 171 classes: the used ids renumbered in order; 27 classes: the 12 thing and 15 stuff
  super-categories of the COCO-Stuff label hierarchy, in the order of PiCIE / STEGO / TransFGU
  (``dataloaders/coco_id_idx_map.py`` of damo-cv/TransFGU, ``coco_stuff_id_idx_map_coarse``); 80 classes (TransFGU's
  COCO-80): the things renumbered 1..80, every stuff id background 0.
* Cityscapes: the 34 ``labelIds`` of cityscapesScripts' ``labels.py``; 27 classes = ids 7..33 (the void category's
  ids 0-6 removed; STEGO's ``first_nonvoid = 7``, TransFGU's ``cityscapes_trainid_map.py``).
* LIP: 19 parts, background 0 (the dataset's README); the 16- and 5-class merges are TransFGU's
  (``dataloaders/lip_id_idx_map.py``), since the paper's supplement that defines them is not at hand. The 16
  classes merge left and right arm, leg and shoe; the 5 groups' names are ours, read off which parts each holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from unseg.core.io import IGNORE_LABEL

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# COCO-Stuff's 182 ids (stuffthingmaps value = COCO category id − 1); None marks the 11 thing ids COCO never used.
COCO_THING_NAMES: tuple[str | None, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", None, "backpack", "umbrella", None, None, "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", None, "dining table", None, None, "toilet", None, "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", None, "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", None,
)
COCO_STUFF_NAMES: tuple[str, ...] = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCO_STUFF_27_NAMES: tuple[str, ...] = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor", "person",
    "sports", "vehicle", "ceiling", "floor", "food-stuff", "furniture-stuff", "raw-material", "textile", "wall",
    "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)
# Fine id ranges -> coarse class (TransFGU's coco_stuff_id_idx_map_coarse, written as runs of equal values).
_COCO_THING_COARSE_RUNS: tuple[tuple[int, int, int], ...] = (  # (first fine id, last fine id, coarse class)
    (0, 0, 9), (1, 8, 11), (9, 14, 8), (15, 24, 7), (25, 32, 6), (33, 42, 10), (43, 50, 5), (51, 60, 2),
    (61, 70, 3), (71, 76, 0), (77, 82, 1), (83, 90, 4),
)
_COCO_STUFF_COARSE: tuple[int, ...] = (  # coarse class of stuff ids 91..181, in order
    17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22,
    26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25, 21,
    26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18,
    18, 18, 26, 26, 19, 19, 24,
)

CITYSCAPES_LABEL_NAMES: tuple[str, ...] = (  # labelIds 0..33 (cityscapesScripts labels.py)
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground", "road",
    "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel", "pole",
    "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)
CITYSCAPES_FIRST_NON_VOID = 7

LIP_CLASSES: tuple[str, ...] = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants",
    "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe", "right-shoe",
)
_LIP_16_MERGE: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 14, 15, 15, 16, 16)
LIP_16_CLASSES: tuple[str, ...] = (*LIP_CLASSES[:14], "arm", "leg", "shoe")
_LIP_5_MERGE: tuple[int, ...] = (0, 1, 1, 3, 1, 2, 2, 2, 5, 4, 2, 2, 2, 1, 3, 3, 4, 4, 5, 5)
LIP_5_CLASSES: tuple[str, ...] = ("background", "head", "torso-clothes", "arms-hands", "legs", "feet")


def lookup_table(mapping: Mapping[int, int] | Sequence[int]) -> np.ndarray:
    """A (256,) uint8 table from ``{stored id: class id}`` (or a sequence indexed by stored id); every other stored
    id, and 255, map to 255 (void)."""
    table = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    items = mapping.items() if isinstance(mapping, Mapping) else enumerate(mapping)
    for stored, evaluated in items:
        if not 0 <= int(evaluated) <= 255 or not 0 <= int(stored) <= 255:
            raise ValueError(f"label map entry {stored} -> {evaluated} is outside 0..255")
        table[int(stored)] = int(evaluated)
    return table


def coco_stuff_table(classes: int) -> tuple[np.ndarray, tuple[str, ...], bool]:
    """COCO-Stuff's table for ``classes`` in {27, 171, 80}: (lookup table, class names by evaluated id, whether
    class 0 is a background)."""
    used_things = [fine for fine, name in enumerate(COCO_THING_NAMES) if name is not None]
    stuff_ids = range(len(COCO_THING_NAMES), len(COCO_THING_NAMES) + len(COCO_STUFF_NAMES))
    if classes == 171:
        fine_ids = [*used_things, *stuff_ids]
        names = (*(COCO_THING_NAMES[i] for i in used_things), *COCO_STUFF_NAMES)
        return lookup_table({fine: index for index, fine in enumerate(fine_ids)}), names, False
    if classes == 27:
        coarse = {fine: value for first, last, value in _COCO_THING_COARSE_RUNS for fine in range(first, last + 1)}
        coarse.update(zip(stuff_ids, _COCO_STUFF_COARSE))
        return lookup_table(coarse), COCO_STUFF_27_NAMES, False
    if classes == 80:
        mapping = {fine: index + 1 for index, fine in enumerate(used_things)}
        mapping.update({fine: 0 for fine in stuff_ids})
        return lookup_table(mapping), ("background", *(COCO_THING_NAMES[i] for i in used_things)), True
    raise ValueError(f"COCO-Stuff has 27, 171 or 80 classes, not {classes}")


def cityscapes_table() -> tuple[np.ndarray, tuple[str, ...], bool]:
    """Cityscapes' 27 classes: labelIds 7..33 → 0..26, the void ids 0-6 (and -1, stored as 255) → 255."""
    first = CITYSCAPES_FIRST_NON_VOID
    mapping = {label: label - first for label in range(first, len(CITYSCAPES_LABEL_NAMES))}
    return lookup_table(mapping), CITYSCAPES_LABEL_NAMES[first:], False


def lip_table(classes: int) -> tuple[np.ndarray, tuple[str, ...], bool]:
    """LIP's table for ``classes`` in {19, 16, 5} parts (background 0 besides)."""
    if classes == 19:
        return lookup_table(range(len(LIP_CLASSES))), LIP_CLASSES, True
    if classes == 16:
        return lookup_table(_LIP_16_MERGE), LIP_16_CLASSES, True
    if classes == 5:
        return lookup_table(_LIP_5_MERGE), LIP_5_CLASSES, True
    raise ValueError(f"LIP has 19, 16 or 5 part classes, not {classes}")
