"""The subjects of the synthetic photos: one drawing family per species group, one trait per species.

Groups differ in overall form (radial flower, symmetric butterfly, legged beetle, fern frond, mushroom,
snail), so the parent model has an easy task. Species of a group share that form and overlapping colour
ranges and differ in one subtle trait (petal count, wing pattern, body proportions, leaflet shape...),
so a child model has to learn shape, not colour. Coordinates are normalised to [-1, 1] on a square canvas.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageOps

Drawer = Callable[[Image.Image, int, np.random.Generator, int], None]


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    """8-bit RGB from hue (wraps around), saturation and value (clipped): colours are designed in HSV."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _px(points: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Normalised [-1, 1] points -> pixel coordinates on an n x n canvas."""
    return [(float(x), float(y)) for x, y in (np.asarray(points) + 1.0) * (n / 2)]


def _box(cx: float, cy: float, rx: float, ry: float, n: int) -> list[float]:
    return [(cx - rx + 1) * n / 2, (cy - ry + 1) * n / 2, (cx + rx + 1) * n / 2, (cy + ry + 1) * n / 2]


def _blade(length: float, width: float, angle: float, q: float, p: float, start: np.ndarray) -> np.ndarray:
    """A petal/leaflet outline: width profile sin(pi t^q)^p along its axis, turned by `angle`."""
    t = np.linspace(0.0, 1.0, 14)
    half = width * np.sin(np.pi * t**q) ** p
    local = np.concatenate([np.stack([t * length, half], 1), np.stack([t * length, -half], 1)[::-1]])
    c, s = np.cos(angle), np.sin(angle)
    return local @ np.array([[c, -s], [s, c]]) + start  # axis along (cos, -sin): y points down


def _flower(canvas: Image.Image, n: int, rng: np.random.Generator, variant: int) -> None:
    """Radial petals around a disc; species: 5 round / 6 pointed / 8 narrow petals / 5 with a dark eye."""
    d = ImageDraw.Draw(canvas, "RGBA")
    count, width, q, p, disc = [
        (5, 0.34, 1.0, 0.5, 0.15),
        (6, 0.26, 0.6, 1.1, 0.2),
        (8, 0.15, 0.8, 0.7, 0.3),
        (5, 0.34, 1.0, 0.5, 0.16),
    ][variant]
    hue = rng.uniform(0.75, 1.08) + (0.0, 0.06, -0.06, 0.03)[variant]  # violet..orange, shifted a little per species
    sat = rng.uniform(0.0, 0.12) if rng.random() < 0.15 else rng.uniform(0.45, 0.95)  # some white flowers
    val = rng.uniform(0.7, 1.0)
    if rng.random() < 0.5:  # leaves peeking out behind the flower
        for angle in rng.uniform(0, 2 * np.pi, 2):
            leaf = _blade(0.95, 0.2, angle, 1.0, 0.8, np.zeros(2))
            d.polygon(_px(leaf, n), fill=hsv(rng.uniform(0.22, 0.36), 0.6, rng.uniform(0.3, 0.55)))
    start = rng.uniform(0, 2 * np.pi)
    for k in range(count):
        angle = start + 2 * np.pi * k / count + rng.normal(0, 0.06)
        length = 0.85 * rng.uniform(0.88, 1.05)
        origin = np.array([np.cos(angle), -np.sin(angle)]) * 0.04
        d.polygon(_px(_blade(length, width, angle, q, p, origin), n), fill=hsv(hue, sat, val * rng.uniform(0.9, 1)))
        inner = (0.5, sat * 0.7, min(1.0, val * 1.15)) if variant != 3 else (0.6, sat + 0.3, val * 0.3)
        shade = _blade(length * inner[0], width * inner[0], angle, q, p, origin)
        d.polygon(_px(shade, n), fill=hsv(hue + 0.02, inner[1], inner[2]))
    disc_hue = rng.uniform(0.07, 0.16)
    d.ellipse(_box(0, 0, disc, disc, n), fill=hsv(disc_hue, 0.85, rng.uniform(0.45, 0.95)))
    for x, y in rng.uniform(-disc * 0.6, disc * 0.6, (12, 2)):
        d.ellipse(_box(x, y, 0.02, 0.02, n), fill=hsv(disc_hue - 0.03, 0.9, 0.35))


FORE = np.array([(0.04, -0.1), (0.22, -0.6), (0.55, -0.86), (0.9, -0.8), (0.88, -0.5), (0.5, -0.1), (0.06, 0.02)])
HIND = np.array([(0.05, 0.0), (0.48, -0.04), (0.76, 0.2), (0.72, 0.58), (0.42, 0.8), (0.16, 0.62), (0.04, 0.22)])


def _smooth(polygon: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Chaikin corner cutting: a hand-placed polygon becomes a rounded outline."""
    for _ in range(rounds):
        following = np.roll(polygon, -1, axis=0)
        polygon = np.stack([0.75 * polygon + 0.25 * following, 0.25 * polygon + 0.75 * following], 1).reshape(-1, 2)
    return polygon


def _butterfly(canvas: Image.Image, n: int, rng: np.random.Generator, variant: int) -> None:
    """Mirrored wings on a body; species: plain / white spots / dark bands / eyespots."""
    hue = rng.uniform(0.0, 0.6) + 0.07 * variant
    base = hsv(hue, rng.uniform(0.0, 0.25) if rng.random() < 0.15 else rng.uniform(0.5, 0.95), rng.uniform(0.7, 1))
    dark = hsv(rng.uniform(0.0, 0.1), 0.6, rng.uniform(0.08, 0.2))
    wings = [_px(_smooth(w + rng.normal(0, 0.025, w.shape)), n) for w in (FORE, HIND)]
    half = Image.new("RGB", (n, n), base)
    hd = ImageDraw.Draw(half)
    for vein_end in ((0.8, -0.7), (0.85, -0.45), (0.7, 0.45), (0.45, 0.7)):
        hd.line(_px(np.array([(0.05, 0.0), vein_end]), n), fill=dark, width=max(1, n // 160))
    for wing in wings:  # dark border, clipped to the wing by the mask below
        hd.polygon(wing, outline=dark, width=max(2, n // 30))
    if variant == 1:
        spots = [(0.8, -0.74), (0.86, -0.58), (0.66, -0.78), (0.62, 0.55), tuple(rng.uniform(0.3, 0.6, 2) * (1, -1))]
        for x, y in spots:
            r = rng.uniform(0.06, 0.09)
            hd.ellipse(_box(x, y, r, r, n), fill=hsv(0.14, 0.1, 0.97))
    elif variant == 2:
        for band in (((0.2, -0.55), (0.85, -0.3)), ((0.15, 0.15), (0.7, 0.5))):
            hd.line(_px(np.array(band), n), fill=dark, width=max(2, int(n * rng.uniform(0.07, 0.1))))
    elif variant == 3:
        for (x, y), r in (((0.6, -0.52), 0.12), ((0.46, 0.4), 0.18)):
            for scale, colour in ((1.0, hsv(0.13, 0.8, 0.95)), (0.72, dark), (0.3, hsv(0.6, 0.5, 0.9))):
                hd.ellipse(_box(x, y, r * scale, r * scale, n), fill=colour)
    mask = Image.new("L", (n, n), 0)
    for wing in wings:
        ImageDraw.Draw(mask).polygon(wing, fill=255)
    canvas.paste(half, (0, 0), mask)
    canvas.paste(ImageOps.mirror(canvas), (0, 0), ImageOps.mirror(mask))
    d = ImageDraw.Draw(canvas, "RGBA")
    d.ellipse(_box(0, 0.12, 0.055, 0.45, n), fill=dark)
    d.ellipse(_box(0, -0.36, 0.07, 0.07, n), fill=dark)
    for side in (-1, 1):
        tip = (side * rng.uniform(0.2, 0.32), -0.9)
        d.line(_px(np.array([(0, -0.4), tip]), n), fill=dark, width=max(1, n // 120))
        d.ellipse(_box(*tip, 0.025, 0.025, n), fill=dark)
    seen_from_side = canvas.resize((max(1, int(n * rng.uniform(0.55, 1.0))), n), Image.BILINEAR)
    canvas.paste((0, 0, 0, 0), (0, 0, n, n))  # wings tilted away from the camera look narrower
    canvas.paste(seen_from_side, ((n - seen_from_side.width) // 2, 0))


def _beetle(canvas: Image.Image, n: int, rng: np.random.Generator, variant: int) -> None:
    """Head, pronotum and elytra on six legs; species: round+spots / long+stripes / plain / bands."""
    d = ImageDraw.Draw(canvas, "RGBA")
    aspect = [1.0, 2.0, 1.45, 1.3][variant] * rng.uniform(0.93, 1.07)
    eh = 0.46
    ew = eh / aspect * 1.15
    shell = hsv(rng.uniform(-0.05, 0.45) + 0.07 * variant, rng.uniform(0.55, 0.95), rng.uniform(0.35, 0.9))
    dark = hsv(rng.uniform(0.0, 0.1), 0.5, rng.uniform(0.05, 0.16))
    leg_w = max(1, n // 70)
    for side in (-1, 1):
        for y in (-0.22, 0.0, 0.2):
            knee = (side * (ew + 0.16), y + rng.uniform(-0.12, 0.05))
            foot = (side * (ew + 0.28), y + rng.uniform(-0.25, 0.25))
            d.line(_px(np.array([(side * ew * 0.5, y), knee, foot]), n), fill=dark, width=leg_w, joint="curve")
        antenna = np.array([(0.05, -0.55), (0.22, -0.8), (0.3, -0.95)]) * (side, 1)
        d.line(_px(antenna, n), fill=dark, width=leg_w)
    d.ellipse(_box(0, -0.53, ew * 0.4, 0.09, n), fill=dark)
    d.ellipse(_box(0, -0.34, ew * 0.78, 0.15, n), fill=dark)
    d.ellipse(_box(0, 0.22, ew, eh, n), fill=shell, outline=dark, width=max(1, n // 90))
    pattern = hsv(rng.uniform(0.0, 0.1), 0.5, rng.uniform(0.05, 0.2))
    if variant == 0:
        for x, y in [(0.45, 0.0), (0.5, 0.35), (0.25, 0.55), (0.2, -0.12)]:
            for side in (-1, 1):
                r = ew * rng.uniform(0.12, 0.17)
                d.ellipse(_box(side * x * ew * 1.2, 0.22 + y * eh * 0.8, r, r, n), fill=pattern)
    elif variant == 1:
        for x in (-0.55, -0.28, 0.28, 0.55):
            stripe = np.array([(x * ew, -0.12), (x * ew * 0.9, 0.55)])
            d.line(_px(stripe, n), fill=pattern, width=max(1, int(n * ew * 0.1)))
    elif variant == 3:
        for y in (0.02, 0.38):
            band = np.array([(x, y + 0.05 * np.sin(8 * x)) for x in np.linspace(-ew * 0.9, ew * 0.9, 9)])
            d.line(_px(band, n), fill=pattern, width=max(2, int(n * 0.07)))
    d.line(_px(np.array([(0, -0.22), (0, 0.67)]), n), fill=dark, width=max(1, n // 110))
    d.ellipse(_box(-ew * 0.4, 0.0, ew * 0.18, eh * 0.3, n), fill=(255, 255, 255, 70))


def _fern(canvas: Image.Image, n: int, rng: np.random.Generator, variant: int) -> None:
    """Leaflets along a curved stem; species: narrow opposite / round alternate / lobed / triangular frond."""
    d = ImageDraw.Draw(canvas, "RGBA")
    pairs, longest, width, q, p, alternate, taper, frond = [
        (16, 0.48, 0.1, 0.8, 0.8, False, 0.45, 1.0),
        (7, 0.42, 0.5, 1.0, 0.5, True, 0.45, 0.75),
        (8, 0.5, 0.22, 1.0, 0.6, False, 0.45, 0.95),
        (12, 0.65, 0.13, 0.8, 0.8, False, 1.0, 0.95),
    ][variant]
    green = rng.uniform(0.18, 0.36) + 0.025 * variant
    sat, val = rng.uniform(0.4, 0.85), rng.uniform(0.3, 0.75) + (0.0, 0.12, -0.08, 0.05)[variant]
    s = np.linspace(0, 1, 41)
    stem = np.stack([rng.uniform(-0.35, 0.35) * 4 * s * (1 - s), 0.95 - 1.9 * frond * s], 1)
    stem_colour = hsv(0.05, 0.5, 0.12) if variant == 1 else hsv(green - 0.08, sat * 0.6, val * 0.6)  # black stipe
    d.line(_px(stem, n), fill=stem_colour, width=max(1, n // (55 if variant == 1 else 80)))
    for i in range(pairs):
        for side in (-1, 1):
            t = 0.14 + 0.84 * i / pairs + (0.42 / pairs if alternate and side > 0 else 0.0)
            j = min(39, int(t * 40))
            tangent = np.arctan2(stem[j, 1] - stem[j + 1, 1], stem[j + 1, 0] - stem[j, 0])
            length = longest * (1 - taper * t - (1 - taper) * t**4) * rng.uniform(0.9, 1.1) + 0.04
            angle = tangent + side * rng.uniform(1.1, 1.35)
            colour = hsv(green + rng.normal(0, 0.01), sat, val * rng.uniform(0.85, 1.1))
            if variant == 2:  # lobed: a row of shrinking lobes instead of one blade
                for k in range(3):
                    r = length * width * (1 - k * 0.25)
                    c = stem[j] + (k + 0.6) * length / 3.2 * np.array([np.cos(angle), -np.sin(angle)])
                    d.ellipse(_box(*c, r, r, n), fill=colour)
            else:
                d.polygon(_px(_blade(length, length * width, angle, q, p, stem[j]), n), fill=colour)


def _mushroom(canvas: Image.Image, n: int, rng: np.random.Generator, variant: int) -> None:
    """Cap on a stem, upright; species: spotted dome / flat with gills / tall cone / scaly dome with ring."""
    d = ImageDraw.Draw(canvas, "RGBA")
    cap_w, cap_h, stem_h = [(0.75, 0.5, 0.55), (0.9, 0.22, 0.5), (0.42, 0.7, 0.8), (0.7, 0.45, 0.6)][variant]
    cap_w, stem_h = cap_w * rng.uniform(0.85, 1.1), stem_h * rng.uniform(0.85, 1.15)
    top = 0.95 - stem_h
    stem_colour = hsv(rng.uniform(0.08, 0.13), rng.uniform(0.05, 0.3), rng.uniform(0.75, 0.95))
    sw = 0.09 + 0.04 * (variant != 2)
    d.polygon(_px(np.array([(-sw, top), (sw, top), (sw * 1.3, 0.95), (-sw * 1.3, 0.95)]), n), fill=stem_colour)
    cap = hsv(rng.uniform(-0.04, 0.1) + 0.015 * variant, rng.uniform(0.45, 0.9), rng.uniform(0.4, 0.9))
    if variant == 1:
        d.ellipse(_box(0, top, cap_w, 0.08, n), fill=hsv(0.1, 0.15, 0.8))
        for x in np.linspace(-cap_w * 0.9, cap_w * 0.9, 15):
            d.line(_px(np.array([(0, top), (x, top + 0.05)]), n), fill=hsv(0.08, 0.3, 0.5), width=1)
    x = np.linspace(-1, 1, 30)
    profile = (1 - np.abs(x) ** 2) ** 0.5 if variant != 2 else (1 - np.abs(x)) ** 0.8
    outline = np.stack([x * cap_w, top - cap_h * profile], 1)
    d.polygon(_px(outline, n), fill=cap)
    for cx, cy in rng.uniform(-1, 1, (9 if variant == 0 else 16, 2)) * (cap_w * 0.75, 0.5):
        ty = top - cap_h * (1 - min(abs(cx / cap_w), 1) ** 2) ** 0.5 * (0.3 + 0.6 * (cy + 0.5))
        if variant == 0:
            d.ellipse(_box(cx, ty, 0.05, 0.04, n), fill=hsv(0.12, 0.08, 0.95))
        elif variant == 3:
            scale = np.array([(0, 0), (0.04, 0.025), (-0.03, 0.03)]) + np.array([cx, ty])
            d.polygon(_px(scale, n), fill=hsv(0.06, 0.5, 0.25))
    if variant == 3:
        ring = np.array([(-1.1, 0.12), (1.1, 0.12), (1.8, 0.22), (-1.8, 0.22)]) * (sw, 1) + (0, top)
        d.polygon(_px(ring, n), fill=stem_colour)


def _snail(canvas: Image.Image, n: int, rng: np.random.Generator, variant: int) -> None:
    """Spiral shell on a foot; species: banded / plain / tall spire / rayed (zebra) shell."""
    d = ImageDraw.Draw(canvas, "RGBA")
    body = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.15, 0.4), rng.uniform(0.35, 0.7))
    d.ellipse(_box(-0.1, 0.55, 0.85, 0.14, n), fill=body)
    for tip in ((-0.95, 0.05), (-0.75, 0.0)):
        d.line(_px(np.array([(-0.8, 0.5), tip]), n), fill=body, width=max(2, n // 50))
        d.ellipse(_box(*tip, 0.03, 0.03, n), fill=hsv(0.05, 0.4, 0.2))
    hue = rng.uniform(0.03, 0.15) + 0.01 * variant
    shell, edge = hsv(hue, rng.uniform(0.3, 0.8), rng.uniform(0.5, 0.95)), hsv(hue, 0.7, 0.25)
    turns, decay, lift = [(3.0, 0.16, 0.0), (3.0, 0.16, 0.0), (4.0, 0.1, 0.12), (3.0, 0.16, 0.0)][variant]
    theta = np.linspace(0, turns * 2 * np.pi, 50)
    scale = np.exp(-decay * theta)
    direction = np.stack([np.cos(theta), -np.sin(theta)], 1)
    centres = np.array([0.1, 0.05]) + 0.25 * scale[:, None] * direction + lift * theta[:, None] * [0.12, -0.22]
    for k, ((cx, cy), s) in enumerate(zip(centres, scale, strict=True)):  # whorls, outermost first
        zebra = variant == 3 and (k // 3) % 2 == 1
        d.ellipse(
            _box(cx, cy, 0.45 * s, 0.45 * s, n), fill=edge if zebra else shell, outline=edge, width=max(1, n // 150)
        )
    if variant == 0:  # one dark band winding along the middle of the whorls
        band = centres + 0.22 * scale[:, None] * direction
        for k in range(len(band) - 1):
            d.line(_px(band[k : k + 2], n), fill=edge, width=max(1, int(n * 0.045 * scale[k])))


@dataclass(frozen=True)
class Family:
    """How one species group is drawn; its species differ only in the variant passed to `draw`."""

    draw: Drawer
    max_tilt: float  # degrees the subject may be turned: mushrooms and snails stand upright
    species: tuple[tuple[str, str], ...]  # (slug, common name), index = variant


FAMILIES: dict[str, Family] = {
    "flowers": Family(
        _flower,
        180,
        (
            ("rosa-pentapetala", "Five-petal rose"),
            ("lilium-hexastella", "Star lily"),
            ("aster-octoradiata", "Eight-ray aster"),
            ("malva-oculata", "Eyed mallow"),
        ),
    ),
    "butterflies": Family(
        _butterfly,
        180,
        (
            ("pieris-simplex", "Plain white"),
            ("lycaena-punctata", "Spotted copper"),
            ("heliconius-fasciata", "Banded longwing"),
            ("junonia-ocellata", "Eyed buckeye"),
        ),
    ),
    "beetles": Family(
        _beetle,
        180,
        (
            ("coccinella-rotunda", "Round lady beetle"),
            ("carabus-lineatus", "Striped ground beetle"),
            ("chrysolina-nitida", "Glossy leaf beetle"),
            ("trichodes-cinctus", "Banded checkered beetle"),
        ),
    ),
    "ferns": Family(
        _fern,
        180,
        (
            ("polypodium-angustum", "Narrow polypody"),
            ("adiantum-rotundum", "Round maidenhair"),
            ("dryopteris-lobata", "Lobed wood fern"),
            ("blechnum-deltoideum", "Triangle hard fern"),
        ),
    ),
    "mushrooms": Family(
        _mushroom,
        20,
        (
            ("amanita-guttata", "Spotted amanita"),
            ("agaricus-planus", "Flat field mushroom"),
            ("mycena-conica", "Conical bonnet"),
            ("lepiota-annulata", "Ringed parasol"),
        ),
    ),
    "snails": Family(
        _snail,
        30,
        (
            ("cepaea-fasciata", "Banded snail"),
            ("helix-simplex", "Plain garden snail"),
            ("cochlicella-turrita", "Tower snail"),
            ("zonites-radiatus", "Rayed glass snail"),
        ),
    ),
}


def lookup(species: str) -> tuple[Family, int]:
    """The family drawing `species` and the species' variant (its trait) inside it."""
    for family in FAMILIES.values():
        for variant, (slug, _) in enumerate(family.species):
            if slug == species:
                return family, variant
    raise KeyError(f"unknown synthetic species {species!r}")


def draw_subject(species: str, rng: np.random.Generator, side: int) -> Image.Image:
    """The subject alone on a transparent side x side canvas, ready to be turned and placed."""
    family, variant = lookup(species)
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    family.draw(canvas, side, rng, variant)
    return canvas
