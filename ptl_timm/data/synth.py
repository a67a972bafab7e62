"""A synthetic person re-identification generator with real domain shift, written in the real layouts.

Real ReID datasets cannot be downloaded everywhere (licences, retractions such as DukeMTMC), so demos,
tests and benchmarks run on this generator instead. What makes it a ReID problem rather than an
image-classification toy:

* **Identities** have a persistent appearance drawn once per person: clothing colours and patterns
  (stripes, checks, a chest logo only visible from the front), sleeve and trouser length, body
  proportions, hair, and accessories (hat, backpack, handbag) that look different from the front, the
  back and the side. Recognising a person means matching these cues across views.
* **Cameras** of a domain each have their own background scene, light level and direction, colour cast,
  blur and preferred viewpoints, so the same person looks different in each camera and the
  same-camera images are the easy matches (they are removed at evaluation, as in Market-1501).
* **Domains** (:data:`SYNTH_DOMAINS`: ``street``, ``mall``, ``night``, ``campus``, ``station``) differ in
  everything a real dataset differs in: illumination, colour cast, noise, blur and resolution, person
  scale, occlusion and clothing palette, and they have different people. A model trained on one loses
  accuracy on another (measured in ``benchmarks/domain_shift.py``), so multi-step transfer between
  "datasets" can be simulated.

Images are painted with numpy masks on a coordinate grid (one vectorised expression per body part),
then blurred and JPEG/PNG-encoded with PIL at a fixed quality, so a run is byte-identical for a given
seed. :func:`generate_synthetic` writes Market-1501, DukeMTMC-reID, MSMT17 (with list files), CUHK03-NP
(detected and labeled) or ``folder`` layouts, read back by the real parsers of
:mod:`ptl_timm.data.datasets`.
"""
import colorsys
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from ptl_timm.errors import InputError, reading
from ptl_timm.utils import PathLike, atomic_folder, atomic_save_json, recover_folder

__all__ = [
    'SynthDomain', 'DOMAIN_STYLES', 'SYNTH_DOMAINS', 'LAYOUTS', 'MANIFEST', 'generate_synthetic', 'synth_params',
    'render_person',
]

JPEG_QUALITY = 90
MANIFEST = 'synth.json'
GENERATOR_VERSION = 3  # bump when the images change, so cached folders are regenerated


@dataclass(frozen=True)
class SynthDomain:
    """The imaging conditions and the population of one synthetic "dataset"."""
    wall: Tuple[float, float, float]  # base scene colours (RGB in [0, 1]); each camera varies them
    floor: Tuple[float, float, float]
    gain: float  # overall light level
    cast: Tuple[float, float, float]  # RGB multipliers of the light colour
    gamma: float
    saturation: float  # 1 keeps colours, < 1 washes them out
    noise: float  # sensor noise std (in [0, 1] units)
    blur: float  # Gaussian blur radius in pixels at 128 px height
    downscale: float  # resolution loss: render, shrink by this factor, enlarge back
    scale: Tuple[float, float]  # person height as a fraction of the image height
    occlusion: float  # probability of an occluder in front of the person
    clothing_saturation: Tuple[float, float]
    clothing_value: Tuple[float, float]


DOMAIN_STYLES: Dict[str, SynthDomain] = {
    'street': SynthDomain(
        wall=(0.72, 0.66, 0.58), floor=(0.52, 0.52, 0.54), gain=1.05, cast=(1.05, 1.0, 0.92), gamma=0.95,
        saturation=1.1, noise=0.015, blur=0.4, downscale=1.0, scale=(0.82, 0.96), occlusion=0.08,
        clothing_saturation=(0.35, 1.0), clothing_value=(0.4, 1.0)),
    'mall': SynthDomain(
        wall=(0.85, 0.85, 0.8), floor=(0.75, 0.72, 0.68), gain=0.95, cast=(0.92, 1.05, 1.0), gamma=1.0,
        saturation=0.95, noise=0.02, blur=0.7, downscale=1.0, scale=(0.75, 0.92), occlusion=0.2,
        clothing_saturation=(0.2, 0.9), clothing_value=(0.3, 0.95)),
    'night': SynthDomain(
        wall=(0.25, 0.27, 0.35), floor=(0.18, 0.18, 0.22), gain=0.65, cast=(0.85, 0.95, 1.2), gamma=1.15,
        saturation=0.55, noise=0.045, blur=1.1, downscale=2.0, scale=(0.8, 0.95), occlusion=0.1,
        clothing_saturation=(0.1, 0.6), clothing_value=(0.2, 0.75)),
    'campus': SynthDomain(
        wall=(0.45, 0.6, 0.4), floor=(0.6, 0.55, 0.45), gain=1.0, cast=(0.98, 1.02, 0.98), gamma=0.9,
        saturation=0.85, noise=0.02, blur=0.5, downscale=1.3, scale=(0.65, 0.95), occlusion=0.15,
        clothing_saturation=(0.3, 0.9), clothing_value=(0.45, 1.0)),
    'station': SynthDomain(
        wall=(0.55, 0.45, 0.38), floor=(0.4, 0.36, 0.33), gain=0.85, cast=(1.2, 0.98, 0.72), gamma=1.1,
        saturation=0.8, noise=0.035, blur=0.8, downscale=1.5, scale=(0.7, 0.9), occlusion=0.4,
        clothing_saturation=(0.1, 0.7), clothing_value=(0.15, 0.8)),
}
SYNTH_DOMAINS: Tuple[str, ...] = tuple(DOMAIN_STYLES)
LAYOUTS = ('market1501', 'dukemtmc', 'msmt17', 'cuhk03_np', 'folder')
VIEWS = ('front', 'back', 'side')


def _key(text: str) -> int:
    """A stable integer for a name (Python's ``hash`` changes between runs)."""
    return zlib.crc32(text.encode())


class Camera(NamedTuple):
    wall: np.ndarray
    floor: np.ndarray
    horizon: float  # fraction of the height where the floor starts
    panel: float  # wall texture period in pixels
    clutter: np.ndarray  # (n, 7): x0, x1, y0, y1 as fractions, then RGB
    gain: float
    cast: np.ndarray
    light_slope: float  # left-to-right illumination gradient
    blur: float
    view_probs: np.ndarray


def _camera(domain: str, cam: int) -> Camera:
    """Camera ``cam`` of ``domain``: a property of the domain, the same for every seed."""
    style = DOMAIN_STYLES[domain]
    rng = np.random.default_rng([_key(domain), 1, cam])
    clutter = np.concatenate([rng.uniform(0, 1, (3, 2)), rng.uniform(0, 0.6, (3, 2)), rng.uniform(0.1, 0.9, (3, 3))], 1)
    clutter[:, :2].sort(1)
    clutter[:, 2:4].sort(1)
    return Camera(
        wall=np.clip(np.array(style.wall) + rng.normal(0, 0.12, 3), 0, 1),
        floor=np.clip(np.array(style.floor) + rng.normal(0, 0.08, 3), 0, 1),
        horizon=rng.uniform(0.45, 0.75), panel=rng.uniform(6, 20), clutter=clutter,
        gain=rng.uniform(0.8, 1.2), cast=np.clip(1 + rng.normal(0, 0.07, 3), 0.7, 1.3),
        light_slope=rng.uniform(-0.35, 0.35), blur=rng.uniform(0.6, 1.5), view_probs=rng.dirichlet((2, 2, 2)))


def _colour(rng: np.random.Generator, saturation: Tuple[float, float], value: Tuple[float, float]) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)))


class Identity(NamedTuple):
    height: float
    shoulder: float  # half-widths and lengths are fractions of the person's height
    waist: float
    leg: float
    top: np.ndarray
    pattern_colour: np.ndarray
    pattern: int  # 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 chest logo (front only)
    stripe_period: float
    long_sleeves: bool
    bottom: np.ndarray
    shorts: bool
    shoes: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    hat: np.ndarray  # alpha 0 when absent (4th value)
    backpack: np.ndarray
    handbag: np.ndarray


def _identity(domain: str, seed: int, person: int) -> Identity:
    """The persistent appearance of person ``person`` of ``domain``."""
    style = DOMAIN_STYLES[domain]
    rng = np.random.default_rng([seed, _key(domain), 2, person])

    def cloth() -> np.ndarray:
        return _colour(rng, style.clothing_saturation, style.clothing_value)

    def accessory(probability: float) -> np.ndarray:
        return np.append(cloth(), float(rng.uniform() < probability))
    return Identity(
        height=rng.uniform(0.88, 1.0), shoulder=rng.uniform(0.1, 0.15), waist=rng.uniform(0.5, 0.58),
        leg=rng.uniform(0.04, 0.06), top=cloth(), pattern_colour=cloth(), pattern=int(rng.integers(5)),
        stripe_period=rng.uniform(0.04, 0.09), long_sleeves=bool(rng.uniform() < 0.6), bottom=cloth(),
        shorts=bool(rng.uniform() < 0.25), shoes=_colour(rng, (0, 0.5), (0.05, 0.9)),
        skin=_colour(rng, (0.25, 0.6), (0.35, 0.95)) * np.array([1, 0.85, 0.7]) + np.array([0.1, 0.05, 0]),
        hair=_colour(rng, (0.2, 0.8), (0.05, 0.6)), long_hair=bool(rng.uniform() < 0.35), hat=accessory(0.2),
        backpack=accessory(0.35), handbag=accessory(0.25))


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)


def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    image[mask] = colour


def render_person(
        identity: Identity,
        camera: Camera,
        style: SynthDomain,
        img_size: Tuple[int, int],
        rng: np.random.Generator,
        crop_jitter: float = 0.0,
) -> Image.Image:
    """One image of ``identity`` seen by ``camera``; ``rng`` draws the pose, view, placement and noise.
    ``crop_jitter`` widens the placement noise (a detector's loose boxes, CUHK03 'detected')."""
    height, width = img_size
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xs = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    floor = ys >= camera.horizon
    image = np.where(floor[..., None], camera.floor, camera.wall).astype(np.float32)
    image = image * np.ones((1, width, 1), np.float32)  # rows decide wall or floor; widen to every column
    panels = (((xs * width + rng.uniform(0, camera.panel)) / camera.panel) % 1 < 0.15) & ~floor
    image[panels] *= 0.8
    for x0, x1, y0, y1, *rgb in camera.clutter:
        _paint(image, (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1), np.array(rgb))

    # person box: u (horizontal) and v (vertical, 0 = top of head) in units of the person's height
    person_h = rng.uniform(*style.scale) * identity.height * (1 - rng.uniform(0, crop_jitter))
    top = (1 - person_h) * rng.uniform(0.25, 0.75) + rng.normal(0, crop_jitter * 0.5)
    centre = 0.5 + rng.normal(0, 0.04 + crop_jitter)
    u = (xs - centre) * width / (person_h * height)
    v = (ys - top) / person_h
    view = VIEWS[rng.choice(3, p=camera.view_probs)]
    facing = 1.0 if rng.uniform() < 0.5 else -1.0  # side views face left or right
    shoulder = identity.shoulder * (0.62 if view == 'side' else 1.0)
    waist, leg = identity.waist, identity.leg
    stride = rng.uniform(0, 0.07) * (1.6 if view == 'side' else 1.0)

    # legs: centres spread towards the feet with the stride; trousers, or shorts above bare legs
    spread = leg * 0.9 + stride * np.clip((v - waist) / (1 - waist), 0, 1)
    legs = ((np.abs(u - spread) < leg) | (np.abs(u + spread) < leg)) & (v >= waist) & (v < 0.95)
    _paint(image, legs, identity.bottom)
    if identity.shorts:
        _paint(image, legs & (v >= waist + 0.15), identity.skin)
    _paint(image, ((np.abs(u - spread) < leg * 1.1) | (np.abs(u + spread) < leg * 1.1)) & (v >= 0.95) & (v < 1.0),
           identity.shoes)

    torso = (np.abs(u) < shoulder) & (v >= 0.15) & (v < waist)
    pattern = identity.pattern
    if pattern == 1:
        marks = (v % identity.stripe_period) < identity.stripe_period / 2
    elif pattern == 2:
        marks = (u % identity.stripe_period) < identity.stripe_period / 2
    elif pattern == 3:
        marks = ((u // identity.stripe_period + v // identity.stripe_period) % 2) == 0
    elif pattern == 4 and view == 'front':
        marks = _box(u, v, -0.05, 0.05, 0.22, 0.32)
    else:
        marks = np.zeros_like(torso)
    _paint(image, torso, identity.top)
    _paint(image, torso & marks, identity.pattern_colour)

    # arms beside the torso (one arm in front of it in a side view), sleeves then hands
    if view == 'side':
        arms = (np.abs(u - facing * 0.02) < 0.045) & (v >= 0.16) & (v < 0.52)
    else:
        arms = (np.abs(u) >= shoulder) & (np.abs(u) < shoulder + 0.045) & (v >= 0.16) & (v < 0.52)
    _paint(image, arms, identity.top)
    _paint(image, arms & (v >= (0.45 if identity.long_sleeves else 0.26)), identity.skin)

    # head: face towards the camera in front (and half of a side) view, hair elsewhere
    head = ((u / 0.065) ** 2 + ((v - 0.075) / 0.075) ** 2) < 1
    _paint(image, head, identity.hair)
    face = head & (v >= 0.04) & ((view == 'front') | ((view == 'side') & (u * facing > -0.01)))
    _paint(image, face, identity.skin)
    if identity.long_hair and view != 'front':
        _paint(image, (np.abs(u) < 0.06) & (v >= 0.07) & (v < 0.25), identity.hair)
    if identity.hat[3]:
        _paint(image, (np.abs(u) < 0.075) & (v >= -0.01) & (v < 0.04), identity.hat[:3])

    backpack = identity.backpack
    if backpack[3] and view == 'back':
        _paint(image, _box(u, v, -0.09, 0.09, 0.18, 0.44), backpack[:3])
    elif backpack[3] and view == 'side':
        side_u = -facing * u
        _paint(image, (side_u >= shoulder * 0.8) & (side_u < shoulder + 0.08) & (v >= 0.18) & (v < 0.44), backpack[:3])
    elif backpack[3]:
        _paint(image, (np.abs(np.abs(u) - 0.06) < 0.012) & (v >= 0.15) & (v < 0.32), backpack[:3])
    if identity.handbag[3]:
        bag_u = u * (facing if view == 'side' else 1.0)
        _paint(image, _box(bag_u, v, shoulder + 0.02, shoulder + 0.1, 0.45, 0.6), identity.handbag[:3])

    if rng.uniform() < style.occlusion:  # a bench, a car or a passer-by cutting into the box
        kind = rng.integers(2)
        x0 = rng.uniform(-0.1, 0.7)
        region = (ys >= rng.uniform(0.55, 0.8)) if kind == 0 else ((xs >= x0) & (xs < x0 + rng.uniform(0.15, 0.35)))
        _paint(image, region & np.ones_like(torso), _colour(rng, (0, 0.8), (0.1, 0.8)))

    light = style.gain * camera.gain * rng.uniform(0.85, 1.15) * (1 + camera.light_slope * (xs - 0.5))
    image = image * (np.array(style.cast) * camera.cast * light[..., None]).astype(np.float32)
    grey = image.mean(2, keepdims=True)
    image = grey + style.saturation * (image - grey)
    image = np.clip(image, 0, 1) ** style.gamma + rng.normal(0, style.noise, image.shape).astype(np.float32)
    picture = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    if style.downscale > 1:
        small = (max(1, round(width / style.downscale)), max(1, round(height / style.downscale)))
        picture = picture.resize(small, Image.BILINEAR).resize((width, height), Image.BILINEAR)
    radius = style.blur * camera.blur * height / 128
    return picture.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.2 else picture


class Shot(NamedTuple):
    """One image to write: its split, whose it is, which camera, and its index among the person's images."""
    split: str  # 'train', 'val' (MSMT17 only), 'query' or 'gallery'
    person: int
    pid: int  # the identity number written into the layout
    cam: int  # from 1, as in the file names
    index: int


def _plan(domain: str, layout: str, num_ids: int, images_per_id: int, num_cams: int, seed: int) -> List[Shot]:
    """Who appears where: alternate identities train and test (as in Market-1501's 751/750 split), each
    seen by 2+ cameras; per test identity one query per camera that has a second image of it (else one
    query), so every query keeps a cross-camera match in the gallery."""
    rng = np.random.default_rng([seed, _key(domain), 3])
    # sparse original ids so relabelling is not the identity; MSMT17 numbers train and test ids from 0
    raw_ids = np.sort(rng.choice(np.arange(1, 10 * num_ids + 1), num_ids, replace=False))
    shots: List[Shot] = []
    for person in range(num_ids):
        is_train = person % 2 == 0
        pid = person // 2 if layout == 'msmt17' else int(raw_ids[person])
        num_seen = int(rng.integers(2, min(num_cams, images_per_id) + 1))
        cameras = rng.choice(num_cams, num_seen, replace=False) + 1
        cam_of = rng.permutation(cameras[np.arange(images_per_id) % num_seen])
        if is_train:
            held_out = layout == 'msmt17' and images_per_id >= 3
            splits = ['train'] * (images_per_id - held_out) + ['val'] * held_out
        else:
            splits = ['gallery'] * images_per_id
            repeated = [c for c in np.unique(cam_of) if (cam_of == c).sum() >= 2]
            for cam in repeated or [cam_of[0]]:
                splits[int(np.flatnonzero(cam_of == cam)[0])] = 'query'
        shots += [Shot(split, person, pid, int(cam), index) for index, (split, cam) in enumerate(zip(splits, cam_of))]
    return shots


MARKET_FOLDERS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}


def _file_names(layout: str, shot: Shot) -> List[Tuple[str, float]]:
    """The file(s) of ``shot`` relative to the dataset root, each with its crop jitter."""
    frame = 25 * (shot.index + 1) + 1000 * shot.cam
    if layout == 'market1501':
        return [(f'{MARKET_FOLDERS[shot.split]}/{shot.pid:04d}_c{shot.cam}s1_{frame:06d}_01.jpg', 0.0)]
    if layout == 'dukemtmc':
        return [(f'{MARKET_FOLDERS[shot.split]}/{shot.pid:04d}_c{shot.cam}_f{frame:07d}.jpg', 0.0)]
    if layout == 'cuhk03_np':  # the same person boxes, hand-labelled (tight) and detected (loose)
        name = f'{MARKET_FOLDERS[shot.split]}/{shot.pid:04d}_c{shot.cam}_{shot.index}.png'
        return [(f'labeled/{name}', 0.0), (f'detected/{name}', 0.08)]
    if layout == 'msmt17':
        folder = 'train' if shot.split in ('train', 'val') else 'test'
        name = f'{shot.pid:04d}_{shot.index:03d}_{shot.cam:02d}_0303morning_{frame:04d}_0.jpg'
        return [(f'{folder}/{shot.pid:04d}/{name}', 0.0)]
    return [(f'{shot.split}/person{shot.pid:04d}/cam{shot.cam}/{shot.index:04d}.jpg', 0.0)]


def _write_msmt_lists(folder: Path, shots: Sequence[Shot]) -> None:
    lines: Dict[str, List[str]] = {split: [] for split in ('train', 'val', 'query', 'gallery')}
    for shot in shots:
        relative = _file_names('msmt17', shot)[0][0].split('/', 1)[1]
        lines[shot.split].append(f'{relative} {shot.pid}\n')
    for split, split_lines in lines.items():
        (folder / f'list_{split}.txt').write_text(''.join(split_lines))


def _save(picture: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == '.png':
        picture.save(path, format='PNG', compress_level=1)  # fast; the pixels are what matter
    else:
        picture.save(path, format='JPEG', quality=JPEG_QUALITY)


def synth_params(folder: PathLike) -> Optional[Dict[str, Any]]:
    """The generation recorded in ``folder/synth.json`` (domain, layout, sizes, seed), or None for a
    folder the generator did not write: how labels and model cards tell synthetic data from real."""
    manifest = Path(folder).expanduser() / MANIFEST
    if not manifest.is_file():
        return None
    with reading(manifest, 'synthetic dataset marker', f'delete the folder {manifest.parent} and regenerate it'):
        return json.loads(manifest.read_text())


def generate_synthetic(
        root: PathLike,
        domain: str,
        layout: str = 'market1501',
        num_ids: int = 100,
        images_per_id: int = 8,
        num_cams: int = 4,
        img_size: Sequence[int] = (128, 64),
        seed: int = 0,
        progress: bool = False,
        name: Optional[str] = None,
) -> Path:
    """Write a synthetic dataset of ``domain`` in ``layout`` to ``root/<name>`` (``name`` defaults to the
    domain) and return that folder (pass it to ``build_dataset(layout, folder)``).

    Args:
        root: parent folder; several domains can share it.
        domain: one of :data:`SYNTH_DOMAINS`.
        layout: one of :data:`LAYOUTS` (dataset names of :func:`ptl_timm.data.build_dataset`).
        num_ids: identities in all; alternate ones go to training and to test (query/gallery).
        images_per_id: images of each identity, spread over 2..num_cams cameras.
        num_cams: cameras of the domain.
        img_size: (height, width) of the images.
        seed: the people and their images; the cameras are a fixed property of the domain.
        progress: show a progress bar.
        name: the dataset folder's name under ``root`` (``ptl-timm synth --data-root`` names the folder itself).

    The folder is written under a hidden name, its marker ``synth.json`` last, and swapped into place
    whole (:func:`ptl_timm.utils.atomic_folder`): a regeneration killed at any point leaves the old
    dataset or the new one, never a partial folder with a marker. A folder already holding the same
    generation (same arguments, recorded in ``synth.json``) is returned as is.
    """
    if domain not in DOMAIN_STYLES:
        raise InputError(f'unknown synthetic domain {domain!r}; choose one of {", ".join(SYNTH_DOMAINS)}')
    if layout not in LAYOUTS:
        raise InputError(f'unknown layout {layout!r}; choose one of {", ".join(LAYOUTS)}')
    if num_ids < 2 or images_per_id < 2 or num_cams < 2:
        raise InputError(
            f'need num_ids >= 2 (train and test identities), images_per_id >= 2 and num_cams >= 2 (cross-camera '
            f'matches), got {num_ids}, {images_per_id}, {num_cams}')
    height, width = (int(s) for s in img_size)
    params = dict(generator=GENERATOR_VERSION, domain=domain, layout=layout, num_ids=num_ids,
                  images_per_id=images_per_id, num_cams=num_cams, img_size=[height, width], seed=seed)
    target = recover_folder(Path(root).expanduser() / (name or domain))
    existing = synth_params(target)
    if existing == params:
        return target
    if existing is None and target.exists():
        raise InputError(f'{target} exists and was not written by the synthetic generator; choose another folder')

    style = DOMAIN_STYLES[domain]
    cameras = {cam: _camera(domain, cam) for cam in range(1, num_cams + 1)}
    identities: Dict[int, Identity] = {}
    shots = _plan(domain, layout, num_ids, images_per_id, num_cams, seed)
    with atomic_folder(target) as staging:
        for shot in tqdm(shots, desc=f'synth {domain} ({layout})', unit='img', disable=not progress):
            identity = identities.setdefault(shot.person, _identity(domain, seed, shot.person))
            for file_name, jitter in _file_names(layout, shot):
                rng = np.random.default_rng([seed, _key(domain), 4, shot.person, shot.index])
                picture = render_person(identity, cameras[shot.cam], style, (height, width), rng, jitter)
                _save(picture, staging / file_name)
        if layout == 'msmt17':
            _write_msmt_lists(staging, shots)
        atomic_save_json(params, staging / MANIFEST)  # last: the marker of a complete folder
    return target
