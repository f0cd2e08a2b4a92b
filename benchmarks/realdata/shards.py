"""Shared pieces of the real-data builders: what a built set looks like, the tar writer, the
prerequisite checks and the deterministic split hash."""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PER_SHARD = 1000


class MissingPrerequisiteError(RuntimeError):
    """A Debian or PyPI package the suite needs is not installed; the message names it."""


@dataclass
class Sample:
    """One shard sample: ``fields`` maps a file name suffix (``image.png``) to its bytes."""

    key: str
    fields: dict[str, bytes]


@dataclass
class BuiltSet:
    """A data set as written: its samples per split, plus what the baseline needs."""

    name: str
    task: str
    source: str
    split_rule: str
    train: list[Sample]
    held_out: list[Sample]
    features_train: np.ndarray | None = None
    features_held_out: np.ndarray | None = None
    labels_train: list[str] = field(default_factory=list)
    labels_held_out: list[str] = field(default_factory=list)
    text_held_out: bytes = b""
    extra: dict[str, object] = field(default_factory=dict)


def stable_hash(text: str, salt: str = "") -> int:
    """A hash that, unlike ``hash()``, is the same in every process and Python version."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{text}".encode()).digest()[:8], "big")


def require_command(name: str, debian_package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingPrerequisiteError(f"command `{name}` not found: apt-get install {debian_package}")
    return path


def require_path(path: Path, debian_package: str) -> Path:
    if not path.exists():
        raise MissingPrerequisiteError(f"{path} not found: apt-get install {debian_package}")
    return path


def write_split(out: Path, split: str, samples: Sequence[Sample], per_shard: int = PER_SHARD) -> list[Path]:
    """Plain USTAR tars (as examples/make_bundled_data.py writes them), mtime 0 and sorted members, so
    the same samples give byte-identical shards."""
    paths: list[Path] = []
    for shard in range(max(1, (len(samples) + per_shard - 1) // per_shard)):
        path = out / f"{split}-{shard:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples[shard * per_shard : (shard + 1) * per_shard]:
                for suffix, data in sorted(sample.fields.items()):
                    info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o444
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def write_set(root: Path, built: BuiltSet) -> Path:
    """Write ``root/NAME/{train,eval}-NNNNNN.tar``, replacing what an earlier build left there. Training
    samples go in a seeded shuffled order, so a shard or a shuffle buffer mixes classes and sources."""
    out = root / built.name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    train = list(built.train)
    random.Random(built.name).shuffle(train)
    write_split(out, "train", train)
    write_split(out, "eval", built.held_out)
    return out


def classification_sample(key: str, field_name: str, data: bytes, question: str, answer: str) -> Sample:
    return Sample(key, {field_name: data, "question.txt": question.encode(), "answer.txt": answer.encode()})
