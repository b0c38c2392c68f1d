"""Synthetic street scenes written as a small Cityscapes data set (leftImg8bit + gtFine), reproducible from a seed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image, ImageDraw

CITIES = {"train": ("northdale", "southport"), "val": ("westbrook",)}
# Evaluated classes every image contains; the other 12 never appear, so the official script gives them nan
PRESENT_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "person", "car")

_FACADES = ((128, 120, 112), (150, 140, 128), (102, 98, 96), (160, 122, 100), (140, 134, 120), (118, 104, 96))
_CAR_BODIES = (
    (170, 30, 30),
    (30, 50, 150),
    (220, 220, 225),
    (25, 25, 30),
    (160, 160, 170),
    (30, 90, 60),
    (200, 170, 40),
)
_PANTS = ((30, 40, 80), (30, 30, 35), (80, 70, 60), (60, 60, 70))
_SKIN = ((230, 190, 160), (200, 150, 110), (140, 100, 70))
# Per-class pixel noise (standard deviation, grey levels): textures that are not flat but stay learnable
_NOISE = {
    "sky": 3,
    "building": 7,
    "road": 6,
    "sidewalk": 6,
    "vegetation": 22,
    "car": 6,
    "person": 8,
    "ego vehicle": 4,
    "static": 6,
}


def write_streets_cityscapes(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_train: int = 300,
    num_val: int = 60,
    size: tuple[int, int] = (128, 256),
    max_cars: int = 4,
    max_persons: int = 3,
) -> dict[str, Any]:
    """Write street scenes as `leftImg8bit/` and `gtFine/` (labelIds, instanceIds, color, polygons).

    Returns a summary: root, size, num_images per split, the evaluated classes present, seed."""
    root = Path(out_dir)
    counts = {"train": num_train, "val": num_val}
    for scene in street_scenes(seed, counts, size, max_cars, max_persons):
        gt_dir = root / "gtFine" / scene.split / scene.city
        image_dir = root / "leftImg8bit" / scene.split / scene.city
        gt_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        (gt_dir / f"{scene.stem}_gtFine_polygons.json").write_text(scene.polygons)
        instance_ids = np.asarray(createInstanceImage(scene.annotation, "ids")).astype(np.uint16)
        # compression level 1: PNG encoding dominated the generation time at the default level
        Image.fromarray(scene.label_ids).save(gt_dir / f"{scene.stem}_gtFine_labelIds.png", compress_level=1)
        Image.fromarray(instance_ids).save(gt_dir / f"{scene.stem}_gtFine_instanceIds.png", compress_level=1)
        createLabelImage(scene.annotation, "color").save(gt_dir / f"{scene.stem}_gtFine_color.png", compress_level=1)
        Image.fromarray(scene.photo).save(image_dir / f"{scene.stem}_leftImg8bit.png", compress_level=1)
    return {
        "root": str(root),
        "size": tuple(size),
        "num_images": dict(counts),
        "classes": list(PRESENT_CLASSES),
        "seed": seed,
    }


@dataclass(frozen=True)
class StreetScene:
    """One scene: its split, city and file stem, its polygons (cityscapesscripts' JSON text and Annotation), its label
    ids (HxW uint8, cityscapesscripts' own rasterisation, so they agree with the polygons exactly) and its photo."""

    split: str
    city: str
    stem: str
    polygons: str
    annotation: Annotation
    label_ids: np.ndarray
    photo: np.ndarray


def street_scenes(
    seed: int, counts: dict[str, int], size: tuple[int, int], max_cars: int, max_persons: int
) -> Iterator[StreetScene]:
    """The scenes of each split ({"train": N, "val": M}), each from a generator of its own: a scene does not depend on
    how many others are drawn."""
    height, width = size
    for split_index, split in enumerate(("train", "val")):
        cities = CITIES[split]
        for index in range(counts[split]):
            rng = np.random.default_rng([seed, split_index, index])
            objects = _street_scene(rng, height, width, max_cars, max_persons)
            polygons = json.dumps(
                {  # no indent: the C encoder, several times faster
                    "imgHeight": height,
                    "imgWidth": width,
                    "objects": [{"label": obj["label"], "polygon": obj["polygon"]} for obj in objects],
                }
            )
            annotation = Annotation()
            annotation.fromJsonText(polygons)
            label_ids = np.asarray(createLabelImage(annotation, "ids"))
            city = cities[index % len(cities)]
            yield StreetScene(
                split,
                city,
                f"{city}_{index:06d}_000019",
                polygons,
                annotation,
                label_ids,
                _render(objects, label_ids, rng, height, width),
            )


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _poly(points: list[tuple[float, float]]) -> list[list[int]]:
    return np.rint(np.asarray(points, dtype=np.float64)).astype(int).tolist()


def _box(x0: float, y0: float, x1: float, y1: float) -> list[list[int]]:
    return _poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _object(label: str, polygon: list[list[int]], colour: tuple | None, details: list | None = None) -> dict:
    """A labelled polygon, its flat colour in the photo, and (polygon, colour) details drawn on the photo only."""
    return {"label": label, "polygon": polygon, "colour": colour, "details": details or []}


def _street_scene(rng: np.random.Generator, h: int, w: int, max_cars: int, max_persons: int) -> list[dict]:
    """Objects in drawing order (later ones cover earlier ones)."""
    objects = [_object("sky", _box(0, 0, w, h), None)]
    horizon = h * rng.uniform(0.42, 0.5)
    vanish = w * rng.uniform(0.4, 0.6)

    # buildings: a skyline of blocks reaching the bottom; road and sidewalks are drawn over their lower part
    x = -w * rng.uniform(0, 0.1)
    while x < w:
        block = w * rng.uniform(0.12, 0.3)
        if rng.random() < 0.2:
            x += w * rng.uniform(0.04, 0.1)  # a gap that shows sky down to the roofs behind
        top = h * rng.uniform(0.03, 0.3)
        facade = _jitter(rng, _FACADES[rng.integers(len(_FACADES))], 10)
        window = tuple(int(c * 0.45) + 20 for c in facade)
        step_x, step_y = max(4.0, w * rng.uniform(0.03, 0.045)), max(4.0, h * rng.uniform(0.06, 0.09))
        windows = [
            (_box(wx, wy, wx + step_x * 0.55, wy + step_y * 0.55), window)
            for wy in np.arange(top + step_y * 0.5, horizon - step_y * 0.8, step_y)
            for wx in np.arange(x + step_x * 0.4, x + block - step_x * 0.8, step_x)
        ]
        objects.append(_object("building", _box(x, top, x + block, h), facade, windows))
        x += block

    if rng.random() < 0.35:  # a park on one side: vegetation down to the bottom
        left = rng.random() < 0.5
        edge = w * rng.uniform(0.2, 0.4)
        xs = np.linspace(0, edge, 9)
        tops = horizon - h * rng.uniform(0.05, 0.2, size=xs.size)
        if not left:
            xs = w - xs
        points = [*zip(xs, tops, strict=True), (xs[-1], h), (xs[0], h)]
        objects.append(_object("vegetation", _poly(points), _jitter(rng, (70, 120, 40), 15)))

    # road and sidewalks converge on the vanishing point; x along an edge at height y by `along`
    half_top = w * 0.02
    road_bottom = (w * rng.uniform(-0.15, 0.12), w * rng.uniform(0.88, 1.15))
    walk_bottom = (road_bottom[0] - w * rng.uniform(0.2, 0.4), road_bottom[1] + w * rng.uniform(0.2, 0.4))
    walk_top = (vanish - half_top - w * rng.uniform(0.03, 0.08), vanish + half_top + w * rng.uniform(0.03, 0.08))
    road_top = (vanish - half_top, vanish + half_top)

    def along(x_top: float, x_bottom: float, y: float) -> float:
        return x_top + (x_bottom - x_top) * (y - horizon) / (h - horizon)

    def depth(t: float) -> float:  # 0 at the horizon, 1 at the bottom edge
        return horizon + t * (h - horizon)

    def on_sidewalk(y: float, left: bool) -> tuple[float, float]:
        if left:
            return along(walk_top[0], walk_bottom[0], y), along(road_top[0], road_bottom[0], y)
        return along(road_top[1], road_bottom[1], y), along(walk_top[1], walk_bottom[1], y)

    walk_colour = _jitter(rng, (168, 150, 158), 10)
    left_walk = [(walk_top[0], horizon), (road_top[0], horizon), (road_bottom[0], h), (walk_bottom[0], h)]
    right_walk = [(road_top[1], horizon), (walk_top[1], horizon), (walk_bottom[1], h), (road_bottom[1], h)]
    objects += [_object("sidewalk", _poly(left_walk), walk_colour), _object("sidewalk", _poly(right_walk), walk_colour)]
    centre_bottom = (road_bottom[0] + road_bottom[1]) / 2
    dashes = []
    for t in np.arange(0.08, 1.0, 0.14):
        y0, y1 = depth(t), depth(t + 0.06)
        half0, half1 = max(0.5, w * 0.006 * t), max(0.5, w * 0.006 * (t + 0.06))
        c0, c1 = along(vanish, centre_bottom, y0), along(vanish, centre_bottom, y1)
        dashes.append(
            (_poly([(c0 - half0, y0), (c0 + half0, y0), (c1 + half1, y1), (c1 - half1, y1)]), (215, 215, 210))
        )
    road = [(road_top[0], horizon), (road_top[1], horizon), (road_bottom[1], h), (road_bottom[0], h)]
    objects.append(_object("road", _poly(road), _jitter(rng, (88, 84, 92), 8), dashes))

    # trees stand on the sidewalks, behind the cars and people
    for _ in range(rng.integers(1, 4)):
        side = rng.integers(2)
        t = rng.uniform(0.1, 0.6)
        foot_y = depth(t)
        trunk_x = rng.uniform(*on_sidewalk(foot_y, side == 0))
        radius = h * (0.08 + 0.2 * t) * rng.uniform(0.8, 1.2)
        crown_y = foot_y - radius * rng.uniform(1.6, 2.2)
        trunk = max(1.5, radius * 0.12)
        angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        radii = radius * rng.uniform(0.8, 1.15, size=angles.size)
        crown = zip(trunk_x + radii * np.cos(angles) * 1.1, crown_y + radii * np.sin(angles), strict=True)
        objects.append(_object("vegetation", _box(trunk_x - trunk, crown_y, trunk_x + trunk, foot_y), (90, 70, 50)))
        objects.append(_object("vegetation", _poly(list(crown)), _jitter(rng, (70, 120, 40), 15)))

    # cars on the road and people on the sidewalks, drawn far to near
    things = []
    for _ in range(rng.integers(1, max_cars + 1)):
        t = rng.uniform(0.25, 0.95)
        y = depth(t)
        car_w = t * w * rng.uniform(0.22, 0.32)
        lo = along(road_top[0], road_bottom[0], y) + car_w / 2
        hi = along(road_top[1], road_bottom[1], y) - car_w / 2
        things.append((y, "car", rng.uniform(min(lo, hi), max(lo, hi)), car_w))
    for _ in range(rng.integers(1, max_persons + 1)):
        t = rng.uniform(0.3, 0.95)
        y = depth(t)
        lo, hi = on_sidewalk(y, rng.random() < 0.5)
        things.append((y, "person", rng.uniform(lo, hi), t * h * rng.uniform(0.55, 0.75)))
    if rng.random() < 0.5:  # a litter bin: 'static', a void class
        t = rng.uniform(0.3, 0.9)
        y = depth(t)
        outer, inner = on_sidewalk(y, left=True)
        things.append((y, "static", outer * 0.3 + inner * 0.7, t * h * 0.15))
    for y, label, x, extent in sorted(things, key=lambda thing: thing[0]):
        if label == "car":
            objects.append(_car(rng, x, y, extent))
        elif label == "person":
            objects.append(_person(rng, x, y, extent))
        else:
            objects.append(_bin(x, y, extent))

    # the ego vehicle's bonnet along the bottom edge (void)
    bonnet = h * rng.uniform(0.05, 0.1)
    xs = np.linspace(0, w, 17)
    edge = h - bonnet * (1 - 0.5 * ((xs - w / 2) / (w / 2)) ** 2)
    objects.append(_object("ego vehicle", _poly([*zip(xs, edge, strict=True), (w, h), (0, h)]), (30, 32, 38)))
    return objects


def _car(rng: np.random.Generator, xc: float, yb: float, cw: float) -> dict:
    """Seen from behind: body, rear window, lights, bumper and tyres."""
    ch = cw * rng.uniform(0.55, 0.7)
    x0, x1, yt = xc - cw / 2, xc + cw / 2, yb - ch
    body = _jitter(rng, _CAR_BODIES[rng.integers(len(_CAR_BODIES))], 12)
    outline = [
        (x0 + 0.05 * cw, yb),
        (x1 - 0.05 * cw, yb),
        (x1, yb - 0.15 * ch),
        (x1, yb - 0.55 * ch),
        (x1 - 0.15 * cw, yt),
        (x0 + 0.15 * cw, yt),
        (x0, yb - 0.55 * ch),
        (x0, yb - 0.15 * ch),
    ]
    rear_window = [
        (x0 + 0.2 * cw, yt + 0.1 * ch),
        (x1 - 0.2 * cw, yt + 0.1 * ch),
        (x1 - 0.1 * cw, yb - 0.58 * ch),
        (x0 + 0.1 * cw, yb - 0.58 * ch),
    ]
    details = [
        (_poly(rear_window), (40, 48, 60)),
        (_box(x0 + 0.05 * cw, yb - 0.45 * ch, x0 + 0.2 * cw, yb - 0.35 * ch), (210, 40, 30)),
        (_box(x1 - 0.2 * cw, yb - 0.45 * ch, x1 - 0.05 * cw, yb - 0.35 * ch), (210, 40, 30)),
        (_box(x0 + 0.05 * cw, yb - 0.15 * ch, x1 - 0.05 * cw, yb), (22, 22, 24)),
    ]
    return _object("car", _poly(outline), body, details)


def _person(rng: np.random.Generator, xc: float, yb: float, ph: float) -> dict:
    """A standing silhouette: head, shirt, trousers with a gap between the legs."""
    yt, pw = yb - ph, ph * 0.32
    head_r, head_y = 0.09 * ph, yt + 0.09 * ph
    arc = np.linspace(np.pi * 1.15, -np.pi * 0.15, 9)  # over the top of the head, left to right
    head = [(xc + head_r * np.cos(a), head_y - head_r * np.sin(a)) for a in arc]
    shoulders, hips = yt + 0.22 * ph, yt + 0.56 * ph
    body = [
        (xc + pw / 2, shoulders),
        (xc + pw / 2, hips),
        (xc + 0.35 * pw, hips),
        (xc + 0.35 * pw, yb),
        (xc + 0.05 * pw, yb),
        (xc, yt + 0.62 * ph),
        (xc - 0.05 * pw, yb),
        (xc - 0.35 * pw, yb),
        (xc - 0.35 * pw, hips),
        (xc - pw / 2, hips),
        (xc - pw / 2, shoulders),
    ]
    shirt = tuple(int(c) for c in rng.integers(40, 256, size=3))
    details = [
        (_box(xc - pw / 2, shoulders, xc + pw / 2, hips), shirt),
        (_poly([*head, (xc, head_y + head_r)]), _SKIN[rng.integers(len(_SKIN))]),
    ]
    return _object("person", _poly(head + body), _PANTS[rng.integers(len(_PANTS))], details)


def _bin(xc: float, yb: float, size: float) -> dict:
    half = size * 0.35
    return _object("static", _box(xc - half, yb - size, xc + half, yb), (70, 90, 70))


def _render(objects: list[dict], label_ids: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The photo: flat-shaded polygons, sky gradient and clouds, then per-class noise and a global colour cast."""
    top, bottom = np.array(_jitter(rng, (70, 120, 200), 15), float), np.array(_jitter(rng, (190, 210, 235), 10), float)
    ramp = np.linspace(0, 1, h)[:, None, None]
    sky = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (h, w, 3))
    canvas = Image.fromarray(np.ascontiguousarray(sky).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 4)):
        cx, cy, rx, ry = (
            rng.uniform(0, w),
            rng.uniform(0, h * 0.3),
            w * rng.uniform(0.05, 0.15),
            h * rng.uniform(0.03, 0.06),
        )
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=(228, 232, 240))
    for obj in objects[1:]:
        draw.polygon([tuple(p) for p in obj["polygon"]], fill=obj["colour"])
        for polygon, colour in obj["details"]:
            draw.polygon([tuple(p) for p in polygon], fill=colour)
    image = np.asarray(canvas).astype(np.float32)

    amplitude = np.zeros(256, np.float32)
    for name, sigma in _NOISE.items():
        amplitude[name2label[name].id] = sigma
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) + 0.4 * rng.standard_normal((h, w, 3), dtype=np.float32)
    image += noise * amplitude[label_ids][..., None]
    # leaves: blotchy light and shade on vegetation, at a scale of a few pixels
    blotches = np.asarray(
        Image.fromarray(rng.uniform(0.7, 1.25, (h // 4 + 1, w // 4 + 1)).astype(np.float32)).resize(
            (w, h), Image.BILINEAR
        )
    )
    vegetation = label_ids == name2label["vegetation"].id
    image[vegetation] *= blotches[vegetation][:, None]
    # paving slabs: darker joints on the sidewalk
    joints = (np.arange(h)[:, None] % 6 == 0) | (np.arange(w)[None, :] % 11 == 0)
    image[(label_ids == name2label["sidewalk"].id) & joints] *= 0.82
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-10, 10, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)
