"""Verification pairs from your own photos: a pairs file, or a folder with one sub-folder per person.

Photos are aligned with the builder's MTCNN aligner (``data.align.FaceAligner``, the same
``ARCFACE_TEMPLATE``) unless they are already 112x112 aligned crops (``aligned=True``). Each distinct
file is read and aligned once even when many pairs use it; pairs whose photo shows no face are left
out and reported, never silently counted.
"""
import itertools
from pathlib import Path
from typing import List, NamedTuple, Sequence, Tuple, Union

import numpy as np

from mobilefacenet_k210.errors import Mfk210Error
from mobilefacenet_k210.fileinfo import IMAGE_SUFFIXES, is_image_file
from mobilefacenet_k210.preprocessing import INPUT_SIZE

Pair = Tuple[Path, Path, bool]


class PairsError(Mfk210Error, ValueError):
    """A pairs file or photo folder that cannot give verification pairs."""


class PairSet(NamedTuple):
    """Crops (2N, 112, 112, 3) uint8 RGB, labels (N,), the pairs left out with the reason, the
    distinct crops (U, 112, 112, 3) with ``images == unique[index]`` (embed each photo only once),
    and the photos that could not be read at all (path, why, how many pairs that left out)."""

    images: np.ndarray
    issame: np.ndarray
    dropped: List[Tuple[Pair, str]]
    unique: np.ndarray
    index: np.ndarray
    unreadable: Sequence[Tuple[Path, str, int]] = ()


def read_pairs_file(pairs_path: Union[str, Path], root: Union[str, Path, None] = None) -> List[Pair]:
    """Parse lines ``a.jpg b.jpg 1|0`` (paths relative to ``root``, default the file's folder).

    Blank lines and lines starting with ``#`` are skipped; every named file must exist.
    """
    pairs_path = Path(pairs_path)
    if not pairs_path.is_file():
        raise PairsError(f"{pairs_path}: no such pairs file")
    root = Path(root) if root is not None else pairs_path.parent
    try:
        text = pairs_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PairsError(f"{pairs_path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the pairs file "
                         "as UTF-8 with lines 'IMAGE_A IMAGE_B 1|0'") from None
    pairs, missing = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise PairsError(f"{pairs_path}:{lineno}: expected 'IMAGE_A IMAGE_B 1|0', got {line!r}")
        a, b = root / fields[0], root / fields[1]
        missing += [str(p) for p in (a, b) if not p.is_file()]
        pairs.append((a, b, fields[2] == "1"))
    if missing:
        shown = ", ".join(sorted(set(missing))[:5])
        raise PairsError(f"{pairs_path}: {len(set(missing))} image(s) named in the file do not exist under "
                         f"{root}: {shown}{' ...' if len(set(missing)) > 5 else ''}")
    if not pairs:
        raise PairsError(f"{pairs_path}: no pairs in the file")
    return pairs


def identity_images(root: Union[str, Path]) -> List[Tuple[str, List[Path]]]:
    """``(identity, sorted image paths)`` for every sub-folder of ``root`` holding images."""
    root = Path(root)
    if not root.is_dir():
        raise PairsError(f"{root}: no such folder")
    identities = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.iterdir() if is_image_file(p))
        if files:
            identities.append((sub.name, files))
    if not identities:
        raise PairsError(f"{root}: no identity sub-folders with images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return identities


def folder_pairs(root: Union[str, Path], max_positive: int = 3000, seed: int = 0) -> List[Pair]:
    """Pairs from an identity-per-folder tree: all same-person pairs (a random ``max_positive`` if
    there are more) and as many different-person pairs, drawn with ``seed`` and shuffled together so
    that every fold mixes both."""
    identities = identity_images(root)
    if len(identities) < 2:
        raise PairsError(f"{root}: only one identity folder ({identities[0][0]}); different-person pairs "
                         "need at least two")
    rng = np.random.default_rng(seed)
    positives = [(a, b, True) for _, files in identities for a, b in itertools.combinations(files, 2)]
    if not positives:
        raise PairsError(f"{root}: every identity folder holds a single image; same-person pairs need two")
    if len(positives) > max_positive:
        keep = np.sort(rng.choice(len(positives), size=max_positive, replace=False))
        positives = [positives[i] for i in keep]

    files = [f for _, fs in identities for f in fs]
    owner = np.concatenate([np.full(len(fs), i) for i, (_, fs) in enumerate(identities)])
    sizes = np.array([len(fs) for _, fs in identities])
    total_negative = int((sizes.sum() ** 2 - (sizes ** 2).sum()) // 2)
    wanted = min(len(positives), total_negative)
    if wanted * 2 > total_negative:  # small tree: enumerate all and pick, rejection would crawl
        every = [(i, j) for i, j in itertools.combinations(range(len(files)), 2) if owner[i] != owner[j]]
        chosen = [every[k] for k in np.sort(rng.choice(len(every), size=wanted, replace=False))]
    else:
        seen, chosen = set(), []
        while len(chosen) < wanted:
            i, j = sorted(int(v) for v in rng.integers(0, len(files), size=2))
            if owner[i] != owner[j] and (i, j) not in seen:
                seen.add((i, j))
                chosen.append((i, j))
    negatives = [(files[i], files[j], False) for i, j in chosen]
    pairs = positives + negatives
    return [pairs[k] for k in rng.permutation(len(pairs))]


def wrong_size(path: Path, image: np.ndarray) -> PairsError:
    """The error for a photo given as aligned that is not an aligned crop (for `data.crops.read_crops`)."""
    return PairsError(f"{path}: {image.shape[1]}x{image.shape[0]} is not an aligned {INPUT_SIZE}x{INPUT_SIZE} "
                      "crop (leave out --aligned to align photos)")


def load_pair_images(pairs: Sequence[Pair], aligned: bool = False, aligner=None, batch_size: int = 32,
                     progress: bool = True) -> PairSet:
    """Read (and unless ``aligned``, align) every distinct photo once; build the (2N, ...) crop array.

    Pairs with a photo where no face is found, or whose file does not decode, are dropped and listed
    in ``PairSet.dropped``; the undecodable files are also listed in ``PairSet.unreadable``.
    """
    if not pairs:
        raise PairsError("no pairs to load")
    unique = sorted({p for a, b, _ in pairs for p in (a, b)})
    from mobilefacenet_k210.data.crops import Unreadable, read_crops

    crops = dict(zip(unique, read_crops(unique, aligned, wrong_size, aligner, batch_size, skip_unreadable=True,
                                        progress=progress)))
    bad = {p: c.reason for p, c in crops.items() if isinstance(c, Unreadable)}
    kept, dropped = [], []
    lost = {p: 0 for p in bad}
    for pair in pairs:
        unreadable = [p for p in pair[:2] if p in bad]
        faceless = [str(p) for p in pair[:2] if crops[p] is None]
        for p in set(unreadable):
            lost[p] += 1
        if unreadable:
            dropped.append((pair, f"unreadable photo {', '.join(str(p) for p in unreadable)}"))
        elif faceless:
            dropped.append((pair, f"no face found in {', '.join(faceless)}"))
        else:
            kept.append(pair)
    unreadable_list = [(p, bad[p], lost[p]) for p in sorted(bad)]
    if not kept:
        why = f" ({len(bad)} unreadable, e.g. {min(bad)}: {bad[min(bad)]})" if bad else ""
        raise PairsError(f"no face found in the photos of any of the {len(pairs)} pairs{why}")
    used = sorted({p for a, b, _ in kept for p in (a, b)})
    position = {p: i for i, p in enumerate(used)}
    unique = np.stack([crops[p] for p in used]).astype(np.uint8)
    index = np.array([position[p] for a, b, _ in kept for p in (a, b)], dtype=np.int64)
    return PairSet(unique[index], np.array([s for _, _, s in kept], dtype=bool), dropped, unique, index,
                   unreadable_list)
