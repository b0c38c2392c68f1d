"""Embedded image-level data sets drawn with PIL: CelebA-format faces, LFW-format identities, shape classes.

Everything is reproducible from the seed and sized to train a small MobileNet on CPUs within minutes:
the attributes in VISIBLE_ATTRIBUTES really show in the image (the other CelebA attributes are random
labels), each LFW identity has its own face geometry and colours, and shape classes differ in outline.
"""

from __future__ import annotations

import colorsys
import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mbtasks.errors import MbtasksError

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()

# The attributes write_celeba_faces draws; the rest are coin flips no model can learn.
VISIBLE_ATTRIBUTES = (
    "Bald Bangs Black_Hair Blond_Hair Brown_Hair Eyeglasses Goatee Gray_Hair Mouth_Slightly_Open Mustache "
    "No_Beard Pale_Skin Rosy_Cheeks Smiling Wearing_Hat Wearing_Lipstick Wearing_Necktie"
).split()

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "frame", "hexagon", "arrow")

RGB = tuple[int, int, int]

# CelebA's hair colours (and one that is none of them); the probabilities of the synthetic faces.
HAIR_COLOURS: dict[str, RGB] = {
    "Black_Hair": (28, 24, 24),
    "Brown_Hair": (110, 66, 34),
    "Blond_Hair": (226, 192, 104),
    "Gray_Hair": (178, 178, 182),
    "other": (168, 58, 30),  # auburn: labelled with no hair colour
}
HAIR_PROBABILITIES = (0.3, 0.25, 0.2, 0.15, 0.1)
PALE_SKIN: RGB = (246, 228, 220)
SKIN_RAMP: tuple[RGB, ...] = ((92, 58, 40), (150, 100, 68), (205, 152, 112), (236, 196, 160))
INVISIBLE_PROBABILITY = 0.3


@dataclass(frozen=True)
class Face:
    """Everything that defines how a face is drawn; lengths are in face units (head half-width ~0.55)."""

    skin: RGB
    face_w: float
    face_h: float
    hair: RGB | None  # None: bald
    long_hair: bool
    bangs: bool
    hat: RGB | None
    eye_dx: float
    eye_y: float
    eye_rx: float
    eye_ry: float
    iris: RGB
    brow_gap: float
    brow_thickness: float
    brow_slope: float
    brow: RGB
    glasses: RGB | None
    round_glasses: bool
    nose_length: float
    nose_width: float
    mouth_w: float
    mouth_y: float
    lips: RGB
    smiling: bool
    mouth_open: bool
    goatee: bool
    mustache: bool
    beard: RGB
    rosy_cheeks: bool
    ear: float


@dataclass(frozen=True)
class Shot:
    """How one photo of a face is taken: framing, light, noise, and what is around the face."""

    dx: float
    dy: float
    angle: float
    zoom: float
    brightness: float
    cast: tuple[float, float, float]
    noise: float
    background: RGB
    shirt: RGB
    tie: RGB | None


def write_celeba_faces(
    out_dir: str | Path, seed: int = 0, num_images: int = 2000, size: tuple[int, int] = (218, 178)
) -> Path:
    """CelebA layout under out_dir: img_align_celeba/*.jpg (size = (height, width)), attribute and partition lists.

    Splits are the first 80% / next 10% / last 10% of the images, as CelebA's are contiguous ranges.
    """
    if num_images < 10:
        raise MbtasksError(f"need at least 10 images for three splits, got {num_images}", out_dir)
    out_dir = Path(out_dir)
    image_dir = out_dir / "img_align_celeba"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = _noise_bank(rng, size)
    rows, partition = [], []
    for index in range(num_images):
        face, labels = _sample_celeba_face(rng)
        shot = _sample_shot(rng, shift=0.05, angle=6, zoom=0.06, light=0.1, tie=labels["Wearing_Necktie"])
        name = f"{index + 1:06d}.jpg"
        _render(face, shot, size, rng, noise, frame=1.15, centre_y=0.44).save(image_dir / name, quality=92)
        rows.append(f"{name} " + " ".join(f"{1 if labels[a] else -1:2d}" for a in CELEBA_ATTRIBUTES))
        split = 0 if index < 0.8 * num_images else 1 if index < 0.9 * num_images else 2
        partition.append(f"{name} {split}")
    header = [str(num_images), " ".join(CELEBA_ATTRIBUTES)]
    (out_dir / "list_attr_celeba.txt").write_text("\n".join(header + rows) + "\n")
    (out_dir / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return out_dir


def write_lfw_identities(
    out_dir: str | Path,
    seed: int = 0,
    num_identities: int = 200,
    images_per_identity: int = 10,
    num_pair_identities: int = 100,
    pair_images_per_identity: int = 6,
    matched_per_fold: int = 100,
    size: tuple[int, int] = (128, 128),
) -> Path:
    """Identity training folders out_dir/train/<name>/*.jpg, and an LFW set out_dir/lfw + out_dir/pairs.txt.

    The LFW people are other people than the training ones; as in LFW the 10 folds share no person.
    Each fold has `matched_per_fold` matched and as many mismatched pairs, all distinct.
    """
    folds = 10
    if num_pair_identities < 2 * folds or pair_images_per_identity < 2 or images_per_identity < 1:
        raise MbtasksError(
            "need at least 20 LFW identities with at least 2 images each, and 1 image per training identity",
            out_dir,
        )
    people_per_fold = num_pair_identities // folds
    available = min(
        people_per_fold * math.comb(pair_images_per_identity, 2),
        math.comb(people_per_fold, 2) * pair_images_per_identity**2,
    )
    if matched_per_fold > available:
        raise MbtasksError(f"{matched_per_fold} pairs of each kind per fold asked, {available} possible", out_dir)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    noise = _noise_bank(rng, size)
    train_names = [f"Train_Person_{k:04d}" for k in range(1, num_identities + 1)]
    test_names = [f"Test_Person_{k:04d}" for k in range(1, num_pair_identities + 1)]
    for folder, names, count in (
        (out_dir / "train", train_names, images_per_identity),
        (out_dir / "lfw", test_names, pair_images_per_identity),
    ):
        for name in names:
            face = _sample_identity(rng)
            (folder / name).mkdir(parents=True, exist_ok=True)
            for number in range(1, count + 1):
                shot = _sample_shot(rng, shift=0.08, angle=10, zoom=0.1, light=0.2, tie=rng.random() < 0.15)
                image = _render(face, shot, size, rng, noise, frame=0.8, centre_y=0.47)
                image.save(folder / name / f"{name}_{number:04d}.jpg", quality=92)
    lines = [f"{folds} {matched_per_fold}"]
    images = range(1, pair_images_per_identity + 1)
    for fold in range(folds):
        people = test_names[fold * people_per_fold : (fold + 1) * people_per_fold]
        matched = [(p, i, j) for p in people for i, j in itertools.combinations(images, 2)]
        chosen = sorted(matched[k] for k in rng.choice(len(matched), matched_per_fold, replace=False))
        lines += [f"{p}\t{i}\t{j}" for p, i, j in chosen]
        mismatched: set[tuple[str, int, str, int]] = set()
        while len(mismatched) < matched_per_fold:
            a, b = sorted(rng.choice(len(people), 2, replace=False))
            mismatched.add((people[a], int(rng.choice(images)), people[b], int(rng.choice(images))))
        lines += [f"{p}\t{i}\t{q}\t{j}" for p, i, q, j in sorted(mismatched)]
    (out_dir / "pairs.txt").write_text("\n".join(lines) + "\n")
    return out_dir


def write_shape_imagefolder(
    out_dir: str | Path,
    seed: int = 0,
    num_classes: int = 8,
    train_per_class: int = 150,
    val_per_class: int = 50,
    size: int = 64,
) -> Path:
    """ImageFolder layout out_dir/{train,val}/<shape>/*.png: one class per outline in SHAPE_CLASSES[:num_classes]."""
    if not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise MbtasksError(f"num_classes must lie in [2, {len(SHAPE_CLASSES)}], got {num_classes}", out_dir)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    noise = _noise_bank(rng, (size, size))
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for shape in SHAPE_CLASSES[:num_classes]:
            folder = out_dir / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                _draw_shape(shape, size, rng, noise).save(folder / f"{shape}_{index:04d}.png")
    return out_dir


# --- sampling -----------------------------------------------------------------------------------------


def _sample_celeba_face(rng: np.random.Generator) -> tuple[Face, dict[str, bool]]:
    labels = {name: bool(rng.random() < INVISIBLE_PROBABILITY) for name in CELEBA_ATTRIBUTES}
    hat = rng.random() < 0.18
    bald = not hat and rng.random() < 0.12
    hair_name = list(HAIR_COLOURS)[rng.choice(len(HAIR_COLOURS), p=HAIR_PROBABILITIES)]
    for name in HAIR_COLOURS:
        if name != "other":
            labels[name] = not bald and name == hair_name
    beard = rng.choice(4, p=(0.55, 0.15, 0.15, 0.15))  # none, goatee, mustache, both
    pale = rng.random() < 0.25
    labels.update(
        Bald=bald,
        Wearing_Hat=hat,
        Bangs=not bald and not hat and rng.random() < 0.35,
        Eyeglasses=rng.random() < 0.3,
        Smiling=rng.random() < 0.5,
        Mouth_Slightly_Open=rng.random() < 0.45,
        Goatee=beard in (1, 3),
        Mustache=beard in (2, 3),
        No_Beard=beard == 0,
        Pale_Skin=pale,
        Rosy_Cheeks=rng.random() < 0.25,
        Wearing_Lipstick=rng.random() < 0.35,
        Wearing_Necktie=rng.random() < 0.25,
    )
    # Non-pale tones stop short of the ramp's lightest end so that "pale" stays a clear step.
    skin = _jitter(PALE_SKIN, rng, 6) if pale else _skin_tone(rng, high=0.8)
    face = _sample_identity(rng)
    hair = None if bald else _jitter(HAIR_COLOURS[hair_name], rng, 10)
    face = replace(
        face,
        skin=skin,
        hair=hair,
        bangs=labels["Bangs"],
        hat=_vivid(rng) if hat else None,
        long_hair=face.long_hair or hat,  # under a hat only long hair shows its colour
        brow=_brow_colour(hair, rng),
        glasses=_jitter((20, 20, 24), rng, 10) if labels["Eyeglasses"] else None,
        lips=_lips(skin, labels["Wearing_Lipstick"], rng),
        smiling=labels["Smiling"],
        mouth_open=labels["Mouth_Slightly_Open"],
        goatee=labels["Goatee"],
        mustache=labels["Mustache"],
        beard=_beard_colour(hair, skin, rng),
        rosy_cheeks=labels["Rosy_Cheeks"],
    )
    return face, labels


def _sample_identity(rng: np.random.Generator) -> Face:
    """A person: geometry and colours drawn from wide ranges so that two people rarely look alike."""
    bald = rng.random() < 0.12
    hair = None if bald else _jitter(list(HAIR_COLOURS.values())[rng.choice(len(HAIR_COLOURS))], rng, 18)
    skin = _jitter(PALE_SKIN, rng, 6) if rng.random() < 0.15 else _skin_tone(rng, high=1.0)
    beard = rng.choice(4, p=(0.55, 0.15, 0.15, 0.15))
    lipstick = rng.random() < 0.2
    irises = ((70, 40, 20), (25, 20, 20), (60, 110, 190), (60, 130, 70), (120, 120, 130))
    return Face(
        skin=skin,
        face_w=rng.uniform(0.46, 0.62),
        face_h=rng.uniform(0.64, 0.8),
        hair=hair,
        long_hair=rng.random() < 0.4,
        bangs=not bald and rng.random() < 0.3,
        hat=None,
        eye_dx=rng.uniform(0.16, 0.24),
        eye_y=rng.uniform(-0.12, -0.03),
        eye_rx=rng.uniform(0.07, 0.1),
        eye_ry=rng.uniform(0.04, 0.065),
        iris=_jitter(irises[rng.choice(len(irises))], rng, 15),
        brow_gap=rng.uniform(0.11, 0.16),
        brow_thickness=rng.uniform(0.025, 0.065),
        brow_slope=rng.uniform(-0.04, 0.06),
        brow=_brow_colour(hair, rng),
        glasses=_jitter(((20, 20, 24), (120, 70, 30), (200, 170, 60), (170, 30, 40))[rng.choice(4)], rng, 10)
        if rng.random() < 0.25
        else None,
        round_glasses=rng.random() < 0.5,
        nose_length=rng.uniform(0.12, 0.26),
        nose_width=rng.uniform(0.04, 0.1),
        mouth_w=rng.uniform(0.4, 0.54),
        mouth_y=rng.uniform(0.36, 0.46),
        lips=_lips(skin, lipstick, rng),
        smiling=rng.random() < 0.4,
        mouth_open=rng.random() < 0.3,
        goatee=beard in (1, 3),
        mustache=beard in (2, 3),
        beard=_beard_colour(hair, skin, rng),
        rosy_cheeks=rng.random() < 0.15,
        ear=rng.uniform(0.07, 0.11),
    )


def _sample_shot(rng: np.random.Generator, shift: float, angle: float, zoom: float, light: float, tie: bool) -> Shot:
    hue = rng.uniform(0.45, 0.85)  # blue-green-violet backdrops, away from hair and skin hues
    background = _hsv(hue, rng.uniform(0.25, 0.6), rng.uniform(0.45, 0.9))
    return Shot(
        dx=rng.uniform(-shift, shift),
        dy=rng.uniform(-shift, shift),
        angle=rng.uniform(-angle, angle),
        zoom=1 + rng.uniform(-zoom, zoom),
        brightness=1 + rng.uniform(-light, light),
        cast=tuple(1 + rng.uniform(-light / 3, light / 3, 3)),
        noise=rng.uniform(1.5, 3 + 20 * light),
        background=background,
        shirt=_hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.25, 0.8)),
        tie=_vivid(rng) if tie else None,
    )


def _skin_tone(rng: np.random.Generator, high: float) -> RGB:
    position = rng.uniform(0, high) * (len(SKIN_RAMP) - 1)
    low = min(int(position), len(SKIN_RAMP) - 2)
    t = position - low
    mixed = (1 - t) * np.array(SKIN_RAMP[low]) + t * np.array(SKIN_RAMP[low + 1])
    return _jitter(tuple(int(c) for c in mixed), rng, 8)


def _lips(skin: RGB, lipstick: bool, rng: np.random.Generator) -> RGB:
    if lipstick:
        return _jitter((205, 22, 48), rng, 12)
    return _clip((skin[0] * 0.72 + 10, skin[1] * 0.55, skin[2] * 0.55))


def _brow_colour(hair: RGB | None, rng: np.random.Generator) -> RGB:
    return _clip(np.array(hair) * 0.55) if hair is not None else _jitter((50, 35, 25), rng, 15)


def _beard_colour(hair: RGB | None, skin: RGB, rng: np.random.Generator) -> RGB:
    # Darker than both hair and skin, so that a beard shows on any face.
    base = np.array(hair) * 0.6 if hair is not None else np.array(_jitter((55, 40, 30), rng, 15))
    return _clip(np.minimum(base, np.array(skin) * 0.5))


def _vivid(rng: np.random.Generator) -> RGB:
    return _hsv(rng.random(), rng.uniform(0.8, 1.0), rng.uniform(0.75, 1.0))


def _hsv(h: float, s: float, v: float) -> RGB:
    return _clip(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)


def _jitter(colour: RGB, rng: np.random.Generator, amount: float) -> RGB:
    return _clip(np.array(colour) + rng.uniform(-amount, amount, 3))


def _clip(values) -> RGB:
    return tuple(int(round(min(max(float(c), 0), 255))) for c in values)


# --- drawing ------------------------------------------------------------------------------------------


class _Canvas:
    """ImageDraw in face units: (0, 0) is the face centre, 1 unit is `unit` pixels, y points down."""

    def __init__(self, image: Image.Image, cx: float, cy: float, unit: float):
        self.draw = ImageDraw.Draw(image)
        self.cx, self.cy, self.unit = cx, cy, unit

    def point(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.unit, self.cy + y * self.unit

    def box(self, x: float, y: float, rx: float, ry: float) -> list[float]:
        return [*self.point(x - rx, y - ry), *self.point(x + rx, y + ry)]

    def width(self, w: float) -> int:
        return max(1, round(w * self.unit))

    def ellipse(
        self,
        x: float,
        y: float,
        rx: float,
        ry: float,
        fill: RGB | None = None,
        outline: RGB | None = None,
        width: float = 0.0,
    ) -> None:
        self.draw.ellipse(self.box(x, y, rx, ry), fill=fill, outline=outline, width=self.width(width) if outline else 0)

    def polygon(self, points: list[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon([self.point(x, y) for x, y in points], fill=fill)

    def line(self, points: list[tuple[float, float]], fill: RGB, width: float) -> None:
        self.draw.line([self.point(x, y) for x, y in points], fill=fill, width=self.width(width), joint="curve")


def _noise_bank(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Unit Gaussian noise twice the image size; random windows of it are much cheaper than fresh noise."""
    return rng.standard_normal((2 * size[0], 2 * size[1], 3), dtype=np.float32)


def _render(
    face: Face,
    shot: Shot,
    size: tuple[int, int],
    rng: np.random.Generator,
    noise: np.ndarray,
    frame: float,
    centre_y: float = 0.46,
) -> Image.Image:
    """One photo: the face drawn upright, then rotated, lit and made noisy."""
    height, width = size
    image = Image.new("RGB", (width, height), shot.background)
    unit = frame * shot.zoom * min(width, height) / 2
    cx, cy = width / 2 + shot.dx * unit, height * centre_y + shot.dy * unit
    canvas = _Canvas(image, cx, cy, unit)
    if face.hair is not None:  # the hair behind the head, which the shoulders hide
        long = 1.0 if face.long_hair else 0.0
        canvas.ellipse(0, -0.1 + 0.12 * long, face.face_w + 0.13, face.face_h + 0.1 + 0.14 * long, fill=face.hair)
    _draw_body(canvas, face, shot)
    _draw_head(canvas, face)
    image = image.rotate(shot.angle, resample=Image.BILINEAR, center=(cx, cy), fillcolor=shot.background)
    pixels = np.asarray(image, dtype=np.float32) * (shot.brightness * np.array(shot.cast, dtype=np.float32))
    top, left = rng.integers(0, height + 1), rng.integers(0, width + 1)
    pixels += noise[top : top + height, left : left + width] * np.float32(shot.noise)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_body(c: _Canvas, f: Face, s: Shot) -> None:
    c.ellipse(0, 1.38, 1.15, 0.7, fill=s.shirt)
    c.polygon([(-0.17, 0.3), (0.17, 0.3), (0.19, 0.78), (-0.19, 0.78)], fill=_clip(np.array(f.skin) * 0.88))
    if s.tie is not None:
        c.polygon([(-0.24, 0.67), (0.24, 0.67), (0, 0.9)], fill=(238, 238, 238))  # collar
        c.polygon([(-0.1, 0.7), (0.1, 0.7), (0.07, 0.83), (-0.07, 0.83)], fill=s.tie)
        c.polygon([(-0.07, 0.81), (0.07, 0.81), (0.2, 1.33), (0, 1.48), (-0.2, 1.33)], fill=s.tie)


def _draw_head(c: _Canvas, f: Face) -> None:
    fw, fh = f.face_w, f.face_h
    if not f.long_hair or f.hair is None:
        for side in (-1, 1):
            c.ellipse(side * fw, 0.0, f.ear, f.ear * 1.6, fill=f.skin)
    c.ellipse(0, 0, fw, fh, fill=f.skin)
    if f.hair is not None and f.hat is None:
        # The hair cap: the top of a slightly larger ellipse, cut at the hairline.
        c.draw.chord(c.box(0, -0.02, fw + 0.03, fh + 0.06), 212, 328, fill=f.hair)
        if f.bangs:
            teeth = 7
            xs = np.linspace(-0.88 * fw, 0.88 * fw, 2 * teeth + 1)
            zigzag = [(x, -0.25 if k % 2 else -0.31) for k, x in enumerate(xs)]
            c.polygon([(-0.88 * fw, -0.55), *zigzag, (0.88 * fw, -0.55)], fill=f.hair)
    if f.hat is not None:
        band = _clip(np.array(f.hat) * 0.6)
        c.ellipse(0, -0.85, fw + 0.04, 0.42, fill=f.hat)
        c.polygon([(-fw - 0.04, -0.85), (fw + 0.04, -0.85), (fw + 0.04, -0.5), (-fw - 0.04, -0.5)], fill=f.hat)
        c.polygon([(-fw - 0.04, -0.66), (fw + 0.04, -0.66), (fw + 0.04, -0.56), (-fw - 0.04, -0.56)], fill=band)
        c.ellipse(0, -0.5, fw + 0.3, 0.08, fill=f.hat)
    _draw_eyes(c, f)
    shade = _clip(np.array(f.skin) * 0.78)
    c.polygon([(0, -0.02), (-f.nose_width, f.nose_length), (f.nose_width, f.nose_length)], fill=shade)
    if f.rosy_cheeks:
        for side in (-1, 1):
            c.ellipse(side * (f.eye_dx + 0.07), 0.19, 0.1, 0.075, fill=(240, 88, 118))
    if f.goatee:
        c.ellipse(0, min(f.mouth_y + 0.21, fh - 0.1), 0.15, 0.12, fill=f.beard)
    if f.mustache:
        half = f.mouth_w * 0.55
        c.polygon(
            [
                (-half, f.mouth_y + 0.01),
                (-half * 0.7, f.mouth_y - 0.13),
                (half * 0.7, f.mouth_y - 0.13),
                (half, f.mouth_y + 0.01),
                (0, f.mouth_y - 0.05),
            ],
            fill=f.beard,
        )
    _draw_mouth(c, f)


def _draw_eyes(c: _Canvas, f: Face) -> None:
    rx, ry, frame = f.eye_rx + 0.06, f.eye_ry + 0.06, 0.065

    def lens(x: float, **style) -> None:
        if f.round_glasses:
            c.draw.ellipse(c.box(x, f.eye_y, rx, ry), **style)
        else:
            c.draw.rounded_rectangle(c.box(x, f.eye_y, rx, ry), radius=c.width(0.04), **style)

    tint = _clip(np.array(f.skin) * 0.45 + np.array((150, 190, 235)) * 0.55)
    for side in (-1, 1):
        x = side * f.eye_dx
        brow_y = f.eye_y - f.brow_gap
        c.line(
            [(x - 0.1, brow_y + side * f.brow_slope / 2), (x + 0.1, brow_y - side * f.brow_slope / 2)],
            fill=f.brow,
            width=f.brow_thickness,
        )
        if f.glasses is not None:  # tinted lenses make glasses show at low resolution
            lens(x, fill=tint)
        c.ellipse(x, f.eye_y, f.eye_rx, f.eye_ry, fill=(245, 245, 245))
        c.ellipse(x, f.eye_y, f.eye_ry * 0.85, f.eye_ry * 0.85, fill=f.iris)
        c.ellipse(x, f.eye_y, f.eye_ry * 0.35, f.eye_ry * 0.35, fill=(10, 10, 10))
    if f.glasses is not None:
        for side in (-1, 1):
            lens(side * f.eye_dx, outline=f.glasses, width=c.width(frame))
            c.line(
                [(side * (f.eye_dx + rx), f.eye_y), (side * f.face_w, f.eye_y - 0.03)],
                fill=f.glasses,
                width=frame * 0.7,
            )
        c.line([(-f.eye_dx + rx, f.eye_y), (f.eye_dx - rx, f.eye_y)], fill=f.glasses, width=frame * 0.8)


def _draw_mouth(c: _Canvas, f: Face) -> None:
    """Filled lips, so that lipstick covers many pixels; a smile shows white teeth, an open mouth a dark inside."""
    half, y, lip = f.mouth_w / 2, f.mouth_y, 0.07
    inside, teeth = (45, 12, 16), (242, 242, 236)
    if f.smiling:
        # A "D" on its back: flat upper lip, round lower one.
        c.draw.chord(c.box(0, y - 0.06, half, 0.22), 0, 180, fill=f.lips)
        c.draw.chord(c.box(0, y - 0.06, half - lip, 0.22 - lip), 0, 180, fill=inside if f.mouth_open else teeth)
        if f.mouth_open:
            c.polygon(
                [(-half * 0.75, y - 0.06), (half * 0.75, y - 0.06), (half * 0.65, y), (-half * 0.65, y)], fill=teeth
            )
    elif f.mouth_open:
        c.ellipse(0, y, half * 0.65, 0.13, fill=inside, outline=f.lips, width=lip)
    else:
        c.ellipse(0, y, half, 0.07, fill=f.lips)
        c.line([(-half * 0.9, y), (half * 0.9, y)], fill=_clip(np.array(f.lips) * 0.6), width=0.015)


def _draw_shape(shape: str, size: int, rng: np.random.Generator, noise: np.ndarray) -> Image.Image:
    """One shape of random size, place, rotation and colours on a plain background, drawn at 2x and reduced."""
    scale = 2
    while True:  # colours far enough apart in brightness to keep the outline visible
        background, colour = tuple(rng.integers(0, 256, 3)), tuple(rng.integers(0, 256, 3))
        if abs(_luma(background) - _luma(colour)) > 60:
            break
    background, colour = _clip(background), _clip(colour)
    big = size * scale
    image = Image.new("RGB", (big, big), background)
    radius = rng.uniform(0.5, 0.8) * big / 2
    cx, cy = big / 2 + rng.uniform(-1, 1, 2) * (big / 2 - radius) * 0.8
    angle = rng.uniform(0, 2 * math.pi)
    canvas = _Canvas(image, cx, cy, radius)

    def turned(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        cos, sin = math.cos(angle), math.sin(angle)
        return [(x * cos - y * sin, x * sin + y * cos) for x, y in points]

    def regular(corners: int, r: float = 1.0, offset: float = 0.0) -> list[tuple[float, float]]:
        return [
            (r * math.cos(2 * math.pi * (k + offset) / corners), r * math.sin(2 * math.pi * (k + offset) / corners))
            for k in range(corners)
        ]

    square = regular(4, 1.0, 0.5)
    if shape == "circle":
        canvas.ellipse(0, 0, 0.9, 0.9, fill=colour)
    elif shape == "ring":
        canvas.ellipse(0, 0, 0.95, 0.95, fill=colour)
        canvas.ellipse(0, 0, 0.55, 0.55, fill=background)
    elif shape == "crescent":
        canvas.ellipse(0, 0, 0.95, 0.95, fill=colour)
        dx, dy = turned([(0.45, 0.0)])[0]
        canvas.ellipse(dx, dy, 0.8, 0.8, fill=background)
    elif shape == "square":
        canvas.polygon(turned([(x * 0.9, y * 0.9) for x, y in square]), fill=colour)
    elif shape == "frame":
        canvas.polygon(turned([(x * 0.95, y * 0.95) for x, y in square]), fill=colour)
        canvas.polygon(turned([(x * 0.55, y * 0.55) for x, y in square]), fill=background)
    elif shape == "triangle":
        canvas.polygon(turned(regular(3)), fill=colour)
    elif shape == "hexagon":
        canvas.polygon(turned(regular(6, 0.95)), fill=colour)
    elif shape == "star":
        outer, inner = regular(5, 1.0), regular(5, 0.42, 0.5)
        canvas.polygon(turned([p for pair in zip(outer, inner) for p in pair]), fill=colour)
    elif shape == "cross":
        a, b = 0.3, 0.95
        canvas.polygon(
            turned(
                [
                    (-a, -b),
                    (a, -b),
                    (a, -a),
                    (b, -a),
                    (b, a),
                    (a, a),
                    (a, b),
                    (-a, b),
                    (-a, a),
                    (-b, a),
                    (-b, -a),
                    (-a, -a),
                ]
            ),
            fill=colour,
        )
    elif shape == "arrow":
        canvas.polygon(
            turned([(-0.95, -0.22), (0.15, -0.22), (0.15, -0.6), (0.95, 0), (0.15, 0.6), (0.15, 0.22), (-0.95, 0.22)]),
            fill=colour,
        )
    image = image.reduce(scale)  # box-filter anti-aliasing
    pixels = np.asarray(image, dtype=np.float32)
    top, left = rng.integers(0, size + 1, 2)
    pixels += noise[top : top + size, left : left + size] * np.float32(rng.uniform(0, 8))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _luma(colour) -> float:
    r, g, b = (float(v) for v in colour)
    return 0.299 * r + 0.587 * g + 0.114 * b
