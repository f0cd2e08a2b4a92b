"""Text sets for the ``lm`` head (field ``txt``, one document per sample):

- ``text-fortunes``: the fortune cookies of Debian's ``fortunes`` package (fortune-mod data: quotes,
  jokes, poems, definitions; ``ascii-art`` left out), one fortune per document, terminal overstrike
  (``x BACKSPACE y``) undone, the few over ``MAX_DOC_BYTES`` left out. Duplicates (the same fortune in
  two files, up to whitespace) are kept once, then the split is by a stable hash of the text: one in
  twelve held out. Training stops at 2 MB.
- ``text-changelogs`` (a check, never tuned on): the Debian changelogs
  of the installed packages (``/usr/share/doc/*/changelog.Debian.gz``), one entry (a version's notes
  and its sign-off line) per document. Binary packages of one source ship the same changelog, so a
  changelog is kept once and split by its **source package** (a stable-hash tenth held out). What it
  holds depends on the packages installed, as the glyph sets depend on the fonts.
- ``text-python`` (a check, as ``text-changelogs``): the Python standard library's top-level modules
  of the interpreter running the build, cut at line ends into documents that fit; split by **module**
  (a stable-hash tenth held out). Source code, not English: a kind of text the recipe was not made for.
- ``text-python-all``: as ``text-python``, over every library module (packages' modules too; test
  suites left out), training capped at 16 MB instead of 2 (the library holds about 11 MB): a 9-minute
  run reads it about once, so that a comparison there is not decided by which model memorises later.
- ``text-manpages-de`` (a check, as ``text-changelogs``): the German manual pages installed under
  ``/usr/share/man/de`` (man-db's and the base system's translations), rendered to plain UTF-8 text
  by ``man``, cut at line ends into documents that fit; split by **page** (a stable-hash tenth held
  out). Not English: German prose with umlauts, ß and long compounds.
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

import gzip
import re
import subprocess
import sysconfig
from collections.abc import Iterable
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
HELD_OUT_BYTES = 250_000
"""The checks' held-out text is capped (a stable-hash selection) so that an evaluation costs about what
King James's held-out books do."""
DOC_ROOT = Path("/usr/share/doc")
GERMAN_MAN = Path("/usr/share/man/de")
CHANGELOG_ENTRY = re.compile(
    r"^(?P<source>[a-z0-9][a-z0-9+.-]*) \([^)]*\)[^;\n]*;[^\n]*urgency=", re.MULTILINE
)
"""An entry's heading line: ``source (version) distribution; urgency=...``."""
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


def key_of(name: str) -> str:
    """A WebDataset key from a package or module name: a dot would start the field's extension."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def fitted(doc: str, limit: int = MAX_DOC_BYTES) -> list[str]:
    """``doc`` cut at line ends into pieces of at most ``limit`` bytes (a longer line is cut too)."""
    pieces: list[str] = []
    current = ""
    for line in doc.splitlines(keepends=True):
        while len(line.encode()) > limit:
            head = line.encode()[:limit].decode("utf-8", errors="ignore")
            pieces += [current] if current else []
            pieces.append(head)
            current, line = "", line[len(head) :]
        if len((current + line).encode()) > limit:
            pieces.append(current)
            current = ""
        current += line
    return pieces + ([current] if current else [])


def changelog_entries(text: str) -> list[str]:
    """A Debian changelog's entries, each from its heading line (``source (version) dist; urgency=``)
    to the next; nothing before the first heading."""
    starts = [match.start() for match in CHANGELOG_ENTRY.finditer(text)]
    return [text[a:b].strip("\n") + "\n" for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def build_changelogs() -> BuiltSet:
    files = sorted(DOC_ROOT.glob("*/changelog.Debian.gz"))
    by_source: dict[str, str] = {}
    for path in files:
        text = decode(gzip.decompress(path.read_bytes()))
        heading = CHANGELOG_ENTRY.search(text)
        if heading:  # binary packages of one source ship its one changelog: kept once
            by_source.setdefault(heading["source"], text)
    if not by_source:
        raise MissingPrerequisiteError(f"no Debian changelogs under {DOC_ROOT}: a Debian system has them")
    train: list[Sample] = []
    held: list[Sample] = []
    for source, text in sorted(by_source.items()):
        side = held if stable_hash(source, "changelog") % 10 == 0 else train
        for index, entry in enumerate(changelog_entries(text)):
            for part, piece in enumerate(fitted(entry)):
                side.append(text_sample(f"{key_of(source)}-{index:05d}-{part}", piece))
    return finish(
        "text-changelogs",
        f"Debian changelogs of the installed packages: {len(by_source)} source packages "
        f"({len(files)} files), one entry per document",
        "by source package: a stable-hash tenth held out (capped at 250 KB); train capped at 2 MB",
        cap(train, TRAIN_BYTES),
        cap(held, HELD_OUT_BYTES),
        {"source_packages": len(by_source)},
    )


def held_out_tenth(documents: Iterable[tuple[str, str]], salt: str) -> tuple[list[Sample], list[Sample]]:
    """Training and held-out samples of ``(name, text)`` documents, each cut to fit (``fitted``) and
    keyed ``NAME-PART``; a document is held out where its name's stable hash (``salt``) ends in 0."""
    train: list[Sample] = []
    held: list[Sample] = []
    for name, text in documents:
        side = held if stable_hash(name, salt) % 10 == 0 else train
        for part, piece in enumerate(fitted(text)):
            side.append(text_sample(f"{key_of(name)}-{part:04d}", piece))
    return train, held


def build_python() -> BuiltSet:
    files = sorted(stdlib_root().glob("*.py"))
    return _python_set("text-python", "top-level modules", files, TRAIN_BYTES)


def build_python_all() -> BuiltSet:
    root = stdlib_root()
    files = sorted(f for f in root.rglob("*.py") if not NOT_LIBRARY & set(f.relative_to(root).parts[:-1]))
    return _python_set("text-python-all", "modules, packages' included", files, PYTHON_ALL_TRAIN_BYTES)


PYTHON_ALL_TRAIN_BYTES = 16_000_000
"""Above the library's 11 MB of code, which a 9-minute run reads about once (15 MB on an AMX CPU):
``text-python``'s 2 MB is read seven times in that run, and its held-out loss turns up within it."""
NOT_LIBRARY = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
"""Folders of the standard library's tree that are not its library code."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _python_set(name: str, what: str, files: list[Path], train_bytes: int) -> BuiltSet:
    root = stdlib_root()
    if not files:
        raise MissingPrerequisiteError(f"no Python modules in {root}")
    names = (path.relative_to(root).with_suffix("").as_posix() for path in files)  # top level: the stem
    modules = ((name, decode(path.read_bytes())) for name, path in zip(names, files, strict=True))
    train, held = held_out_tenth(modules, "python")
    return finish(
        name,
        f"the Python {sysconfig.get_python_version()} standard library's {len(files)} {what}, "
        f"cut at line ends into documents of up to {MAX_DOC_BYTES} bytes",
        "by module: a stable-hash tenth held out (capped at 250 KB); "
        f"train capped at {train_bytes // 10**6} MB",
        cap(train, train_bytes),
        cap(held, HELD_OUT_BYTES),
        {"modules": len(files)},
    )


def rendered_page(path: Path) -> str:
    """A manual page as ``man`` shows it, in plain UTF-8 text (no overstrike, no hyphenation)."""
    done = subprocess.run(
        ["man", "--nh", "--nj", "-l", str(path)],
        capture_output=True,
        env={"MANWIDTH": "80", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": "", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    return OVERSTRIKE.sub("", decode(done.stdout)) if done.returncode == 0 else ""


def build_manpages_de() -> BuiltSet:
    require_command("man", "man-db")
    pages = sorted(GERMAN_MAN.glob("man*/*.gz"))
    if not pages:
        raise MissingPrerequisiteError(f"no German manual pages in {GERMAN_MAN}: apt-get install manpages-de")
    named = ((path.name.removesuffix(".gz"), rendered_page(path)) for path in pages)
    train, held = held_out_tenth(named, "manpage-de")
    return finish(
        "text-manpages-de",
        f"the {len(pages)} German manual pages under {GERMAN_MAN}, rendered by man, cut at line ends "
        f"into documents of up to {MAX_DOC_BYTES} bytes",
        "by page: a stable-hash tenth held out (capped at 250 KB); train capped at 2 MB",
        cap(train, TRAIN_BYTES),
        cap(held, HELD_OUT_BYTES),
        {"pages": len(pages)},
    )
