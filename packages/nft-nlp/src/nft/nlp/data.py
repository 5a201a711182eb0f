"""Text datasets and the loaders that read them from their distributed formats.

Two shapes of data flow through this package:

* :class:`TextPairs` — ``(source, target)`` strings, for translation and dialogue;
* :class:`LabelledTexts` — ``(text, label)`` with class names, for classification.

Loaders read the files as their publishers distribute them, so a user who has the real data
points ``--data-root`` at it and nothing is converted by hand:

* **freedict-deu-eng** (embedded default for generation): the dictd database Debian's
  ``dict-freedict-deu-eng`` installs (``freedict-deu-eng.dict.dz``, dictzip = gzip-readable, and
  ``freedict-deu-eng.index``: ``headword<TAB>offset<TAB>length`` with base-64 numbers). Each entry's
  usage examples (``"German phrase" - English phrase``) become German→English pairs.
* **fortunes** (embedded default for classification): Debian's ``fortunes`` files
  (``/usr/share/games/fortunes/<topic>``, entries separated by lines holding only ``%``); the
  topic file an entry comes from is its label.
* **wmt14-en-de**: WMT14's plain-text parallel corpora (``europarl-v7.de-en.en`` / ``.de``,
  ``commoncrawl.de-en.*``, ``news-commentary-v*.de-en.*``), the dev set ``newstest2013.{en,de}``
  and the SGML test set ``newstest2014-deen-{src,ref}.{en,de}.sgm`` (``<seg id="…">`` lines), as
  the Moses / fairseq preparation scripts expect them.
* **opensubtitles2012**: the dialogue pairs of Li et al.'s OpenSubData release used by the NLG
  backdoor paper (``s_given_t_dialogue_length2_3.txt``: one ``ask|response`` pair per line, as
  1-based word ids into the ``movie_25000`` vocabulary file; plain-text ``ask|response`` lines and
  ``.ask`` / ``.res`` line-aligned files are read too).
* **text-classification**: a labelled text file in fastText (``__label__name text``), TSV
  (``label<TAB>text``) or CSV-with-header (``label`` and ``text`` columns) form.

Parsing the 95 MB dictionary takes seconds, so the extracted pairs are cached (gzip TSV) under
``$NFT_NLP_CACHE`` (default ``~/.cache/nft-nlp``), keyed by the file's size and modification time.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import html
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from nft.core import DataError

__all__ = [
    "DEFAULT_TOPICS",
    "FORTUNES_DIR",
    "FREEDICT_DIR",
    "LabelledTexts",
    "TextPairs",
    "decode_dictd_number",
    "read_dictd_entries",
    "read_fortunes",
    "read_freedict_pairs",
    "read_labelled_file",
    "read_opensubtitles",
    "read_parallel",
    "read_sgm",
    "read_wmt14",
    "split_indices",
]

log = logging.getLogger(__name__)

FREEDICT_DIR = Path("/usr/share/dictd")
FORTUNES_DIR = Path("/usr/share/games/fortunes")

# Five topics with distinct vocabularies: of the topic sets tried, a bag-of-words logistic
# regression separated these best (77% five-fold accuracy); "linux" is capped by the modality so
# the classes stay roughly balanced (300, 227, 147, 198, 150 texts).
DEFAULT_TOPICS = ("linux", "startrek", "sports", "food", "love")


# ---- the two dataset shapes ------------------------------------------------------------------
class TextPairs(Dataset):
    """``(source, target)`` string pairs."""

    def __init__(self, sources: Sequence[str], targets: Sequence[str], *, name: str = "pairs") -> None:
        if len(sources) != len(targets):
            raise DataError(
                f"{name}: {len(sources)} sources but {len(targets)} targets; the two sides of a "
                "parallel corpus must have one line per pair"
            )
        self.sources = list(sources)
        self.targets = list(targets)
        self.name = name

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[str, str]:
        return self.sources[index], self.targets[index]

    def subset(self, indices: Iterable[int]) -> TextPairs:
        idx = [int(i) for i in indices]
        return TextPairs([self.sources[i] for i in idx], [self.targets[i] for i in idx], name=self.name)

    def __repr__(self) -> str:
        return f"TextPairs({self.name!r}, {len(self)} pairs)"


class LabelledTexts(Dataset):
    """``(text, label)`` with ``classes[label]`` naming each class."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int], classes: Sequence[str], *,
                 name: str = "texts") -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if len(texts) != len(labels):
            raise DataError(f"{name}: {len(texts)} texts but {len(labels)} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{name}: labels must be in [0, {len(classes) - 1}]")
        self.texts = list(texts)
        self.labels = labels
        self.classes = list(classes)
        self.name = name

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], int(self.labels[index])

    def subset(self, indices: Iterable[int]) -> LabelledTexts:
        idx = np.asarray(list(indices), dtype=np.int64)
        return LabelledTexts([self.texts[i] for i in idx], self.labels[idx], self.classes, name=self.name)

    def __repr__(self) -> str:
        return f"LabelledTexts({self.name!r}, {len(self)} texts, classes={self.classes})"


def split_indices(n: int, test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random ``(train, test)`` split of ``range(n)``, both sorted."""
    if not 0 < test < n:
        raise DataError(f"cannot hold out {test} of {n} samples for testing; use fewer")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[test:]), np.sort(order[:test])


# ---- cache -----------------------------------------------------------------------------------
def _cache_dir() -> Path | None:
    value = os.environ.get("NFT_NLP_CACHE")
    if value == "":
        return None
    return Path(value) if value else Path.home() / ".cache" / "nft-nlp"


def _cache_key(path: Path, *extra: object) -> str:
    stat = path.stat()
    raw = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|" + "|".join(map(str, extra))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _read_cached_pairs(key: str) -> tuple[list[str], list[str]] | None:
    root = _cache_dir()
    if root is None or not (root / f"{key}.tsv.gz").is_file():
        return None
    try:
        with gzip.open(root / f"{key}.tsv.gz", "rt", encoding="utf-8") as handle:
            rows = [line.rstrip("\n").split("\t") for line in handle]
        return [r[0] for r in rows], [r[1] for r in rows]
    except (OSError, IndexError, EOFError):
        return None


def _write_cached_pairs(key: str, sources: list[str], targets: list[str]) -> None:
    root = _cache_dir()
    if root is None:
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{key}.{os.getpid()}.tmp"
        with gzip.open(tmp, "wt", encoding="utf-8") as handle:
            for s, t in zip(sources, targets):
                handle.write(f"{s}\t{t}\n")
        os.replace(tmp, root / f"{key}.tsv.gz")
    except OSError as err:  # a read-only home must not break loading
        log.info("could not cache parsed pairs in %s: %s", root, err)


# ---- freedict (dictd) ------------------------------------------------------------------------
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def decode_dictd_number(text: str) -> int:
    """A dictd index number: base 64 with the alphabet ``A–Z a–z 0–9 + /``, most significant first."""
    value = 0
    for char in text:
        if char not in _B64:
            raise DataError(f"{text!r} is not a dictd base-64 number")
        value = value * 64 + _B64[char]
    return value


def _freedict_files(root: Path | None, name: str) -> tuple[Path, Path]:
    folder = Path(root) if root else FREEDICT_DIR
    data = folder / f"{name}.dict.dz"
    if not data.is_file() and (folder / f"{name}.dict").is_file():
        data = folder / f"{name}.dict"
    index = folder / f"{name}.index"
    if not data.is_file() or not index.is_file():
        raise DataError(
            f"the dictionary {name} was not found in {folder} (need {name}.dict.dz and {name}.index); "
            "install it with `apt-get install dict-freedict-deu-eng`, or pass --data-root DIR "
            "pointing at a folder holding those two files"
        )
    return data, index


def read_dictd_entries(data_path: str | Path, index_path: str | Path) -> Iterable[tuple[str, str]]:
    """Yield ``(headword, entry text)`` for every distinct entry of a dictd database.

    The index lists ``headword<TAB>offset<TAB>length`` (base 64); entries are read from the
    data file (plain or dictzip, which any gzip reader decompresses) at those byte ranges.
    Database metadata entries (headwords starting with ``00-database-``) are skipped.
    """
    data_path, index_path = Path(data_path), Path(index_path)
    opener = gzip.open if data_path.suffix == ".dz" else open
    try:
        with opener(data_path, "rb") as handle:
            blob = handle.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{data_path} cannot be read as a dictd data file ({err}); reinstall it") from None
    seen: set[tuple[int, int]] = set()
    with open(index_path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise DataError(
                    f"{index_path}:{number} is not a dictd index line (headword, offset, length "
                    "separated by tabs)"
                )
            head, offset, length = parts[0], decode_dictd_number(parts[1]), decode_dictd_number(parts[2])
            if head.startswith("00-database") or head.startswith("00database"):
                continue
            if (offset, length) in seen:
                continue
            seen.add((offset, length))
            if offset + length > len(blob):
                raise DataError(f"{index_path}:{number} points past the end of {data_path}; the two files do not match")
            yield head.strip(), blob[offset: offset + length].decode("utf-8", errors="replace")


_EXAMPLE = re.compile(r'^\s*"(?P<src>[^"]+)"\s+-\s+(?P<tgt>.+?)\s*$')


def _clean_english(source: str, target: str) -> str | None:
    """The first alternative of a dictionary translation, or ``None`` when it is unusable.

    Entries list alternatives separated by ", " (``in the near future, in the close future``);
    a comma in the English that the German does not have marks alternatives, so only the first
    is kept. Translations with "/" or ";" alternatives are dropped.
    """
    if "/" in target or ";" in target or "/" in source:
        return None
    if ", " in target and "," not in source:
        target = target.split(", ")[0]
    target = target.strip()
    return target or None


def read_freedict_pairs(root: str | Path | None = None, *, name: str = "freedict-deu-eng",
                        min_words: int = 2, max_words: int = 8) -> TextPairs:
    """German→English usage-example pairs of a FreeDict dictionary (dictd format).

    Keeps examples whose German side has ``min_words``–``max_words`` words; duplicates are dropped
    and the order is sorted, so the result depends only on the dictionary file.
    """
    data, index = _freedict_files(Path(root) if root else None, name)
    key = _cache_key(data, "freedict-v1")
    cached = _read_cached_pairs(key)
    if cached is None:
        pairs: set[tuple[str, str]] = set()
        for _, entry in read_dictd_entries(data, index):
            for line in entry.splitlines():
                match = _EXAMPLE.match(line)
                if match:
                    src = " ".join(match["src"].split())
                    tgt = _clean_english(src, " ".join(match["tgt"].split()))
                    if tgt and "\t" not in src + tgt:
                        pairs.add((src, tgt))
        ordered = sorted(pairs)
        cached = ([s for s, _ in ordered], [t for _, t in ordered])
        _write_cached_pairs(key, *cached)
    keep = [i for i, s in enumerate(cached[0]) if min_words <= len(s.split()) <= max_words]
    if not keep:
        raise DataError(f"{data} holds no usage examples of {min_words}-{max_words} words")
    return TextPairs([cached[0][i] for i in keep], [cached[1][i] for i in keep], name=name)


# ---- fortunes ------------------------------------------------------------------------------
def _read_fortune_file(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    entries = re.split(r"^%[ \t]*$", text, flags=re.M)
    return [" ".join(e.split()) for e in entries if e.strip()]


def read_fortunes(root: str | Path | None = None, *, topics: Sequence[str] = DEFAULT_TOPICS,
                  max_per_topic: int | None = None, seed: int = 0) -> LabelledTexts:
    """Fortune-cookie texts labelled by the topic file they come from.

    ``max_per_topic`` caps large topics with a seeded random choice, keeping classes balanced.
    """
    folder = Path(root) if root else FORTUNES_DIR
    if len(topics) < 2:
        raise DataError("fortunes classification needs at least two topics")
    texts: list[str] = []
    labels: list[int] = []
    rng = np.random.default_rng(seed)
    for label, topic in enumerate(topics):
        path = folder / topic
        if not path.is_file():
            available = sorted(p.name for p in folder.glob("*") if p.is_file() and "." not in p.name) \
                if folder.is_dir() else []
            raise DataError(
                f"fortunes topic file {path} does not exist; install the texts with "
                "`apt-get install fortunes`, or pass --data-root DIR with one file per topic"
                + (f" (topics here: {', '.join(available[:20])})" if available else "")
            )
        entries = _read_fortune_file(path)
        if max_per_topic is not None and len(entries) > max_per_topic:
            pick = np.sort(rng.choice(len(entries), size=max_per_topic, replace=False))
            entries = [entries[i] for i in pick]
        if not entries:
            raise DataError(f"{path} holds no fortunes (entries are separated by lines with only '%')")
        texts.extend(entries)
        labels.extend([label] * len(entries))
    return LabelledTexts(texts, labels, list(topics), name="fortunes")


# ---- plain parallel text and SGML (WMT) ---------------------------------------------------
def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in handle]


def read_parallel(source_path: str | Path, target_path: str | Path, *, name: str = "parallel",
                  limit: int | None = None) -> TextPairs:
    """Two line-aligned files (Moses format): line i of one translates line i of the other.

    Pairs where either side is empty are dropped (the corpora contain a few).
    """
    source_path, target_path = Path(source_path), Path(target_path)
    for p in (source_path, target_path):
        if not p.is_file():
            raise DataError(f"{p} does not exist; check --data-root")
    src, tgt = _read_lines(source_path), _read_lines(target_path)
    if len(src) != len(tgt):
        raise DataError(
            f"{source_path} has {len(src)} lines but {target_path} has {len(tgt)}; a parallel "
            "corpus needs one line per sentence on both sides"
        )
    pairs = [(s.strip(), t.strip()) for s, t in zip(src, tgt) if s.strip() and t.strip()]
    if limit is not None:
        pairs = pairs[:limit]
    return TextPairs([s for s, _ in pairs], [t for _, t in pairs], name=name)


_SEG = re.compile(r'<seg[^>]*\bid\s*=\s*"?(?P<id>[^">\s]+)"?[^>]*>(?P<text>.*?)</seg>', re.I | re.S)


def read_sgm(path: str | Path) -> list[str]:
    """The segments of a WMT SGML file, in document order, with entities unescaped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; check --data-root")
    segs = [html.unescape(" ".join(m["text"].split())) for m in _SEG.finditer(path.read_text(encoding="utf-8", errors="replace"))]
    if not segs:
        raise DataError(f"{path} holds no <seg id=...> lines; is it a WMT .sgm file?")
    return segs


_WMT_TRAIN = ("europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v*.de-en")


def _find(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def read_wmt14(root: str | Path, split: str = "train", *, source: str = "en", target: str = "de",
               limit: int | None = None) -> TextPairs:
    """WMT14 English–German from its distributed files under ``root`` (searched recursively).

    ``train``: the parallel corpora europarl-v7, commoncrawl and news-commentary (``<corpus>.en`` /
    ``<corpus>.de``), concatenated in that order; ``valid``: newstest2013 (plain text or SGML);
    ``test``: newstest2014 (``newstest2014-deen-src.en.sgm`` / ``-ref.de.sgm``, or plain text).
    """
    root = Path(root)
    if {source, target} != {"en", "de"}:
        raise DataError(f"WMT14 En-De has languages en and de, not {source}-{target}")
    if not root.is_dir():
        raise DataError(f"--data-root {root} is not a folder; point it at the extracted WMT14 files")
    if split == "train":
        parts: list[TextPairs] = []
        for corpus in _WMT_TRAIN:
            for src_file in _find(root, f"{corpus}.{source}"):
                tgt_file = src_file.with_name(src_file.name[: -len(source)] + target)
                parts.append(read_parallel(src_file, tgt_file, name=src_file.stem))
        if not parts:
            raise DataError(
                f"no WMT14 training corpus under {root}: expected files such as "
                f"europarl-v7.de-en.{source} / .{target} (training-parallel-europarl-v7.tgz)"
            )
        pairs = TextPairs([s for p in parts for s in p.sources], [t for p in parts for t in p.targets],
                          name="wmt14-en-de")
    elif split in ("valid", "test"):
        year = "2013" if split == "valid" else "2014"
        plain_src, plain_tgt = _find(root, f"newstest{year}.{source}"), _find(root, f"newstest{year}.{target}")
        sgm = {role: _find(root, f"newstest{year}*-{role}.{lang}.sgm")
               for role, lang in (("src", source), ("ref", target))}
        if sgm["src"] and sgm["ref"]:
            src, tgt = read_sgm(sgm["src"][0]), read_sgm(sgm["ref"][0])
        elif not sgm["src"] and _find(root, f"newstest{year}*-src.{target}.sgm") \
                and _find(root, f"newstest{year}*-ref.{source}.sgm"):
            # newstest2014-deen ships src.en / ref.de only; the reverse direction swaps the roles
            src = read_sgm(_find(root, f"newstest{year}*-ref.{source}.sgm")[0])
            tgt = read_sgm(_find(root, f"newstest{year}*-src.{target}.sgm")[0])
        elif plain_src and plain_tgt:
            return read_parallel(plain_src[0], plain_tgt[0], name=f"newstest{year}", limit=limit)
        else:
            raise DataError(
                f"no newstest{year} files under {root}: expected newstest{year}-deen-src.{source}.sgm "
                f"and -ref.{target}.sgm (test-full.tgz) or newstest{year}.{source} / .{target}"
            )
        if len(src) != len(tgt):
            raise DataError(f"newstest{year}: {len(src)} source segments but {len(tgt)} references")
        pairs = TextPairs(src, tgt, name=f"newstest{year}")
    else:
        raise DataError(f"WMT14 split {split!r} is unknown; use train, valid or test")
    return pairs.subset(range(min(limit, len(pairs)))) if limit is not None else pairs


# ---- OpenSubtitles2012 dialogue (OpenSubData) -----------------------------------------------
def _read_vocab(path: Path) -> list[str]:
    return [line.strip() for line in _read_lines(path)]


def read_opensubtitles(root: str | Path, *, limit: int | None = None) -> TextPairs:
    """OpenSubtitles2012 ``ask → response`` dialogue pairs from ``root`` (a file or a folder).

    Understood layouts: OpenSubData's ``*dialogue_length2*.txt`` (``ids|ids`` lines, 1-based ids
    into ``movie_25000``; ``UNknown`` words become ``<unk>``), plain ``ask|response`` text lines,
    and ``<name>.ask`` / ``<name>.res`` line-aligned files (the NLG-backdoor preparation's output).
    """
    root = Path(root)
    if root.is_dir():
        dialogue = _find(root, "*dialogue_length2*.txt")
        asks = _find(root, "*.ask")
        if dialogue:
            file = dialogue[0]
        elif asks:
            res = asks[0].with_suffix(".res")
            return read_parallel(asks[0], res, name="opensubtitles2012", limit=limit)
        else:
            raise DataError(
                f"no OpenSubtitles2012 dialogue file under {root}: expected OpenSubData's "
                "s_given_t_dialogue_length2_3.txt (with movie_25000) or train.ask / train.res"
            )
    elif root.is_file():
        file = root
    else:
        raise DataError(f"{root} does not exist; point --data-root at the OpenSubData folder")
    lines = _read_lines(file)
    if limit is not None:
        lines = lines[:limit]
    vocab: list[str] | None = None
    sample = [ln for ln in lines[:50] if ln.strip()]
    numeric = bool(sample) and all(re.fullmatch(r"[\d ]+\|[\d ]+", ln.strip()) for ln in sample)
    if numeric:
        candidates = _find(file.parent, "movie_25000*")
        if not candidates:
            raise DataError(
                f"{file} holds word ids; its vocabulary file movie_25000 must be in the same folder"
            )
        vocab = _read_vocab(candidates[0])
    sources, targets = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.count("|") != 1:
            raise DataError(f"{file}:{number} is not an 'ask|response' line")
        ask, response = line.split("|")
        if vocab is not None:
            try:
                ask, response = (" ".join(vocab[int(t) - 1] for t in side.split()) for side in (ask, response))
            except (ValueError, IndexError):
                raise DataError(f"{file}:{number} has a word id outside the {len(vocab)}-word vocabulary") from None
        ask, response = ask.replace("UNknown", "<unk>").strip(), response.replace("UNknown", "<unk>").strip()
        if ask and response:
            sources.append(ask)
            targets.append(response)
    if not sources:
        raise DataError(f"{file} holds no dialogue pairs")
    return TextPairs(sources, targets, name="opensubtitles2012")


# ---- labelled text classification files ---------------------------------------------------
def read_labelled_file(path: str | Path, *, classes: Sequence[str] | None = None) -> LabelledTexts:
    """A labelled text file: fastText (``__label__x text``), TSV (``label<TAB>text``) or CSV with a
    header naming ``label`` and ``text`` columns. Class names are sorted unless ``classes`` is given
    (pass the training file's classes when reading its test file, so ids agree)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; check --data-root")
    raw = path.read_text(encoding="utf-8", errors="replace")
    rows: list[tuple[str, str]] = []
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path} is empty")
    if lines[0].startswith("__label__"):
        for number, line in enumerate(lines, start=1):
            match = re.match(r"__label__(\S+)\s+(.*)", line)
            if not match:
                raise DataError(f"{path}:{number} is not a fastText line (__label__name text)")
            rows.append((match[1], match[2]))
    elif path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(raw))
        fields = {f.lower(): f for f in reader.fieldnames or []}
        if "label" not in fields or "text" not in fields:
            raise DataError(f"{path} needs a header with 'label' and 'text' columns, got {reader.fieldnames}")
        rows = [(r[fields["label"]], r[fields["text"]]) for r in reader]
    else:
        start = 1 if lines[0].lower().split("\t")[:2] == ["label", "text"] else 0
        for number, line in enumerate(lines[start:], start=start + 1):
            if "\t" not in line:
                raise DataError(f"{path}:{number} has no tab; TSV lines are label<TAB>text")
            label, text = line.split("\t", 1)
            rows.append((label, text))
    names = list(classes) if classes is not None else sorted({label for label, _ in rows})
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted({label for label, _ in rows if label not in lookup})
    if unknown:
        raise DataError(f"{path} has labels {unknown[:5]} that are not among the classes {names}")
    return LabelledTexts([" ".join(t.split()) for _, t in rows], [lookup[label] for label, _ in rows],
                         names, name=path.stem)


def b64(number: int) -> str:
    """Encode ``number`` as a dictd base-64 string (the inverse of :func:`decode_dictd_number`)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    if number == 0:
        return "A"
    out = []
    while number:
        number, rest = divmod(number, 64)
        out.append(alphabet[rest])
    return "".join(reversed(out))

