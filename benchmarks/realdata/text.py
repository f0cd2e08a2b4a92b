"""English text sets for the ``lm`` head (field ``txt``, one document per sample):

- ``text-fortunes``: the fortune cookies of Debian's ``fortunes`` package (fortune-mod data: quotes,
  jokes, poems, definitions; ``ascii-art`` left out), one fortune per document, terminal overstrike
  (``x BACKSPACE y``) undone, the few over ``MAX_DOC_BYTES`` left out. Duplicates (the same fortune in
  two files, up to whitespace) are kept once, then the split is by a stable hash of the text: one in
  twelve held out. Training stops at 2 MB.
- ``text-kjv``: the King James Bible of Debian's ``bible-kjv-text`` (dumped by the ``bible`` program of
  ``bible-kjv``), one passage per document: a chapter cut at verse boundaries into the fewest pieces
  of about equal size that keep each under ``MAX_DOC_BYTES``, each headed ``Book C:V-V``. Split by
  **book**: the books in ``KJV_HELD_OUT`` (none with a parallel book elsewhere, as Kings has
  Chronicles or Mark the other gospels) are held out; training
  takes a stable-hash selection of the other books' passages up to 2 MB.

Documents stay under ``MAX_DOC_BYTES`` so that each fits the pipelines' ``seq_len: 2048`` whole (a
longer one would be skipped, not cut).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from benchmarks.realdata.shards import (
    BuiltSet,
    MissingPrerequisiteError,
    Sample,
    require_command,
    stable_hash,
)

FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_SKIP = frozenset({"ascii-art"})
TRAIN_BYTES = 2_000_000
MAX_DOC_BYTES = 2000
KJV_HELD_OUT = ("Ruth", "Esther", "Ecclesiastes", "Lamentations", "Jonah", "Galatians", "James", "1 John")
CHAPTER = re.compile(r"^(?P<book>\S.*?) (?P<chapter>\d+)$")
OVERSTRIKE = re.compile(r".\x08")


def text_sample(key: str, text: str) -> Sample:
    return Sample(key, {"txt": text.encode("utf-8")})


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def cap(samples: list[Sample], limit: int) -> list[Sample]:
    """Documents in stable-hash order until ``limit`` bytes: a reproducible sample of the whole."""
    kept: list[Sample] = []
    total = 0
    for sample in sorted(samples, key=lambda s: stable_hash(s.key, "cap")):
        size = len(sample.fields["txt"])
        if total + size > limit:
            continue
        kept.append(sample)
        total += size
    return sorted(kept, key=lambda s: s.key)


def finish(
    name: str, source: str, rule: str, train: list[Sample], held: list[Sample], extra: dict[str, object]
) -> BuiltSet:
    return BuiltSet(
        name=name,
        task="text",
        source=source,
        split_rule=rule,
        train=train,
        held_out=held,
        text_held_out=b"".join(s.fields["txt"] for s in held),
        extra=extra,
    )


def build_fortunes() -> BuiltSet:
    if not FORTUNE_DIR.is_dir():
        raise MissingPrerequisiteError(f"{FORTUNE_DIR} not found: apt-get install fortunes")
    files = sorted(
        p
        for p in FORTUNE_DIR.iterdir()
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in (".dat", ".u8")
        and p.name not in FORTUNE_SKIP
    )
    if not files:
        raise MissingPrerequisiteError(f"no fortune files in {FORTUNE_DIR}: apt-get install fortunes")
    seen: set[str] = set()
    train: list[Sample] = []
    held: list[Sample] = []
    for path in files:
        text = OVERSTRIKE.sub("", decode(path.read_bytes()).replace("\r\n", "\n"))
        for index, chunk in enumerate(re.split(r"^%\n", text, flags=re.MULTILINE)):
            doc = chunk.strip("\n")
            norm = " ".join(doc.split())
            if not norm or norm in seen or len(doc.encode()) + 1 > MAX_DOC_BYTES:
                continue
            seen.add(norm)
            sample = text_sample(f"{path.name}-{index:05d}", doc + "\n")
            (held if stable_hash(norm, "fortune") % 12 == 0 else train).append(sample)
    return finish(
        "text-fortunes",
        f"Debian fortunes: {len(files)} fortune files, one fortune per document",
        "deduplicated, then by stable hash of the text: 1 in 12 held out; train capped at 2 MB",
        cap(train, TRAIN_BYTES),
        held,
        {"files": [p.name for p in files]},
    )


def passages(book: str, chapter: int, verses: list[str]) -> list[str]:
    """The chapter's verses (``N text``) in the fewest runs of about equal size that each fit in
    MAX_DOC_BYTES, each headed ``Book C:V-V``."""

    def render(run: list[str]) -> str:
        first, last = run[0].split(" ", 1)[0], run[-1].split(" ", 1)[0]
        return f"{book} {chapter}:{first}-{last}\n\n" + "\n".join(run) + "\n"

    total = sum(len(v.encode()) + 1 for v in verses)
    for parts in range(1, len(verses) + 1):
        target = total / parts
        runs: list[list[str]] = [[]]
        size = 0
        for verse in verses:
            if runs[-1] and size + len(verse.encode()) / 2 > target * len(runs):
                runs.append([])
            runs[-1].append(verse)
            size += len(verse.encode()) + 1
        docs = [render(run) for run in runs]
        if all(len(doc.encode()) <= MAX_DOC_BYTES for doc in docs):
            return docs
    return [render([verse]) for verse in verses]


def kjv_chapters() -> list[tuple[str, int, list[str]]]:
    exe = require_command("bible", "bible-kjv bible-kjv-text")
    dump = subprocess.run(
        [exe, "-l10000", "gen1:1-rev22:21"], capture_output=True, check=True, stdin=subprocess.DEVNULL
    ).stdout.decode("utf-8", errors="replace")
    chapters: list[tuple[str, int, list[str]]] = []
    for line in dump.splitlines():
        match = CHAPTER.match(line)
        if match:
            chapters.append((match["book"], int(match["chapter"]), []))
        elif line.strip() and chapters:
            chapters[-1][2].append(line.strip())
    if len(chapters) != 1189:
        raise MissingPrerequisiteError(
            f"the bible program gave {len(chapters)} chapters, not 1189: "
            "apt-get install --reinstall bible-kjv bible-kjv-text"
        )
    return chapters


def build_kjv() -> BuiltSet:
    train: list[Sample] = []
    held: list[Sample] = []
    books: list[str] = []
    for book, number, verses in kjv_chapters():
        if book not in books:
            books.append(book)
        for part, passage in enumerate(passages(book, number, verses)):
            sample = text_sample(f"{len(books):02d}-{book.replace(' ', '')}-{number:03d}-{part:02d}", passage)
            (held if book in KJV_HELD_OUT else train).append(sample)
    missing = set(KJV_HELD_OUT) - set(books)
    if missing:
        raise MissingPrerequisiteError(
            f"book names differ from the expected ones (missing {sorted(missing)})"
        )
    return finish(
        "text-kjv",
        f"King James Bible (Debian bible-kjv-text), passages of whole verses up to {MAX_DOC_BYTES} bytes",
        "by book: " + ", ".join(KJV_HELD_OUT) + " held out; other books' passages train, capped at 2 MB",
        cap(train, TRAIN_BYTES),
        held,
        {"books": len(books)},
    )
