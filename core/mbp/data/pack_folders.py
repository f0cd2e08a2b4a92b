"""``mbp shards pack --by-folder``: a folder of class folders (``cats/0001.jpg``, ``dogs/0002.jpg``)
packed into ``train-*.tar`` and ``eval-*.tar``. Each sample holds its file in one field named by its
kind (``image``, ``audio`` or ``text``) and its class folder's name in ``label``.

The held-out side is drawn per class with a fixed seed, so every class with two or more different
files has one on each side where the fraction allows; files with the same content (sha256) are one
unit of the split, since a copy on both sides would be scored on what it trained on."""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from mbp.data.write_shards import Sample, drop_stale, pack, refuse_existing
from mbp.errors import DataError, warn

KINDS = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"), "image"),
    **dict.fromkeys((".wav", ".flac", ".ogg"), "audio"),
    ".txt": "text",
}
"""File suffix (any case) -> the field a sample holds the file in."""
LABEL = "label"
SKIPPED = {
    "hidden": "skipped {n} hidden file(s) or folder(s), e.g. {example}",
    "beside": "skipped {n} file(s) beside the class folders, e.g. {example} (a class is a folder of files)",
    "unknown": "skipped {n} file(s) of unknown kind, e.g. {example} (known: " + " ".join(sorted(KINDS)) + ")",
}


@dataclass(frozen=True)
class FolderPack:
    """What ``--by-folder`` packs: ``src`` (one folder a class) into ``out`` (a folder)."""

    src: Path
    out: Path
    eval_fraction: float = 0.1
    seed: int = 0
    maxcount: int = 1000
    force: bool = False


class PackReport(TypedDict):
    """What ``--by-folder --json`` prints: shard paths, samples a side, samples a class a side, files
    that repeat another's content, the field the files are in, and entries skipped."""

    train: list[str]
    eval: list[str]
    samples: dict[str, int]
    classes: dict[str, dict[str, int]]
    duplicates: int
    kind: str
    skipped: int


@dataclass(frozen=True)
class ClassFile:
    label: str
    path: Path
    name: str
    """The path under the source folder, as messages show it."""
    kind: str
    digest: str


def pack_by_folder(request: FolderPack) -> PackReport:
    """Write the shards; the report ``--json`` prints. Warnings (skipped files, empty classes,
    copies) go to stderr, one line each."""
    if not request.src.is_dir():
        raise DataError(f"{request.src}: not a folder")
    patterns = [str(request.out / f"{side}-%06d.tar") for side in ("train", "eval")]
    existing = refuse_existing(patterns, request.force)
    files, skipped = scan(request.src, request.out)
    field = _one_kind(request.src, files)
    copies = _report_copies(files)
    train, held = split(files, request.eval_fraction, request.seed)
    keys = sample_keys(files)
    written = {}
    for side, chosen, pattern in (("train", train, patterns[0]), ("eval", held, patterns[1])):
        written[side] = pack(_samples(chosen, keys, field), pattern, request.maxcount)[0]
    drop_stale(existing, written["train"] + written["eval"])
    classes: dict[str, dict[str, int]] = {}
    for side, chosen in (("train", train), ("eval", held)):
        for file in chosen:
            classes.setdefault(file.label, {"train": 0, "eval": 0})[side] += 1
    return {
        "train": written["train"],
        "eval": written["eval"],
        "samples": {"train": len(train), "eval": len(held)},
        "classes": dict(sorted(classes.items())),
        "duplicates": copies,
        "kind": field,
        "skipped": skipped,
    }


def scan(src: Path, out: Path) -> tuple[list[ClassFile], int]:
    """The files of known kinds in each class folder (and its sub-folders), in name order, and how many
    entries were skipped: hidden files, files of other kinds, files beside the class folders (each
    reason reported in one line) and ``out`` where it lies inside ``src``. An empty class is reported
    in one line of its own."""
    skipped: dict[str, list[str]] = defaultdict(list)
    files: list[ClassFile] = []
    for folder in sorted(src.iterdir()):
        if folder.name.startswith("."):
            skipped["hidden"].append(folder.name)
        elif not folder.is_dir():
            skipped["beside"].append(folder.name)
        elif folder.resolve() != out.resolve():
            found = _class_files(src, folder, skipped)
            if not found:
                warn(f"class folder {folder.name!r} holds no image, audio or text file: skipped")
            files += found
    for reason, names in skipped.items():
        warn(SKIPPED[reason].format(n=len(names), example=names[0]))
    if not files:
        raise DataError(
            f"{src}: no class folder holds an image, audio or text file "
            f"(expected {src}/CLASS/FILE, e.g. {src}/cats/0001.jpg)"
        )
    labels = {file.label for file in files}
    if len(labels) == 1:
        warn(f"{src}: one class only ({next(iter(labels))!r}): a classifier needs two or more")
    return files, sum(len(names) for names in skipped.values())


def _class_files(src: Path, folder: Path, skipped: dict[str, list[str]]) -> list[ClassFile]:
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{folder}: a class folder's name must be UTF-8 (it becomes the label)") from None
    found = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(src).as_posix()
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            skipped["hidden"].append(name)
        elif not path.is_file():
            continue
        elif path.suffix.lower() not in KINDS:
            skipped["unknown"].append(name)
        else:
            found.append(ClassFile(folder.name, path, name, KINDS[path.suffix.lower()], _digest(path)))
    return found


def _digest(path: Path) -> str:
    try:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None


def _one_kind(src: Path, files: list[ClassFile]) -> str:
    """The field every sample holds its file in: a pipeline reads one, so a mix is refused."""
    kinds = Counter(file.kind for file in files)
    if len(kinds) == 1:
        return next(iter(kinds))
    examples = {file.kind: file.name for file in reversed(files)}
    mix = ", ".join(f"{count} {kind} (e.g. {examples[kind]})" for kind, count in kinds.most_common())
    raise DataError(f"{src}: the classes mix kinds of file: {mix}; pack one kind (move the others out)")


def _report_copies(files: list[ClassFile]) -> int:
    """Files whose content an earlier file already has; one line names their count and one pair."""
    first: dict[str, ClassFile] = {}
    pairs = []
    for file in files:
        if file.digest in first:
            pairs.append((first[file.digest], file))
        else:
            first[file.digest] = file
    if pairs:
        one, two = pairs[0]
        warn(
            f"{len(pairs)} file(s) repeat another file's content (sha256), e.g. {one.name} = {two.name}; "
            "the copies of a file are kept on one side of the split"
        )
    return len(pairs)


def split(files: list[ClassFile], fraction: float, seed: int) -> tuple[list[ClassFile], list[ClassFile]]:
    """(train, eval), each in a seeded shuffled order (a shard mixes the classes). Each class holds out
    ``round(fraction * n)`` of its ``n`` distinct contents, at least one and at most ``n - 1`` where
    ``fraction > 0`` and ``n >= 2``; a content found in several classes belongs to its first."""
    owner: dict[str, str] = {}
    contents: dict[str, list[str]] = defaultdict(list)
    for file in files:
        if file.digest not in owner:
            owner[file.digest] = file.label
            contents[file.label].append(file.digest)
    held: set[str] = set()
    for label, digests in contents.items():
        order = list(digests)
        random.Random(f"{seed}:{label}").shuffle(order)
        held.update(order[: held_out(len(order), fraction)])
    train = [file for file in files if file.digest not in held]
    evals = [file for file in files if file.digest in held]
    random.Random(f"{seed}:train").shuffle(train)
    random.Random(f"{seed}:eval").shuffle(evals)
    return train, evals


def held_out(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(max(round(n * fraction), 1), n - 1)


def sample_keys(files: list[ClassFile]) -> dict[str, str]:
    """Path under the source -> sample key: the path without its suffix, each part reduced to letters,
    digits, ``_`` and ``-`` (a ``.`` would end the key when the shard is read); a key taken already
    gets ``-2``, ``-3``... in name order, so the keys are unique and the same on every pack."""
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for file in files:
        parts = Path(file.name).with_suffix("").parts
        key = "/".join(re.sub(r"[^\w-]", "_", part) for part in parts)
        unique, number = key, 1
        while unique in taken:
            number += 1
            unique = f"{key}-{number}"
        taken.add(unique)
        keys[file.name] = unique
    return keys


def _samples(files: list[ClassFile], keys: dict[str, str], field: str) -> Iterator[Sample]:
    for file in files:
        try:
            data = file.path.read_bytes()
        except OSError as error:
            raise DataError(f"{file.path}: cannot read: {error.strerror or error}") from None
        yield {"__key__": keys[file.name], field: data, LABEL: file.label.encode("utf-8")}
