"""Small files in the real datasets' formats, written by the tests, and a toy translation task."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from nft.nlp.data import b64

# A toy German→English lexicon: phrases built from it translate word by word (with a fixed word
# order change for adjectives), so a tiny model learns the task in seconds.
NOUNS = {"hund": "dog", "katze": "cat", "haus": "house", "baum": "tree", "auto": "car",
         "buch": "book", "vogel": "bird", "fisch": "fish", "stadt": "town", "boot": "boat"}
ADJECTIVES = {"rote": "red", "kleine": "small", "alte": "old", "neue": "new", "blaue": "blue",
              "grosse": "big"}
VERBS = {"sieht": "sees", "hat": "has", "mag": "likes", "findet": "finds"}


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` German-like / English phrase pairs: "der rote hund sieht das boot" → "the red dog sees the boat"."""
    rng = np.random.default_rng(seed)
    nouns, adjs, verbs = list(NOUNS), list(ADJECTIVES), list(VERBS)
    out = []
    for _ in range(n):
        a, b = rng.choice(nouns, 2, replace=False)
        adj, verb = rng.choice(adjs), rng.choice(verbs)
        de = f"der {adj} {a} {verb} das {b}"
        en = f"the {ADJECTIVES[adj]} {NOUNS[a]} {VERBS[verb]} the {NOUNS[b]}"
        out.append((de, en))
    return out


def write_dictd(folder: Path, pairs: list[tuple[str, str]], name: str = "freedict-deu-eng",
                per_entry: int = 3) -> Path:
    """A dictd database (gzip'd data + base-64 index) whose entries carry ``pairs`` as usage
    examples, in FreeDict's layout (headword line, translation line, indented quoted examples)."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "00-database-info\nThis is a test dictionary.\n\n"
    blob = header
    index = [f"00-database-info\t{b64(0)}\t{b64(len(header.encode()))}"]
    for start in range(0, len(pairs), per_entry):
        chunk = pairs[start: start + per_entry]
        head = chunk[0][0].split()[2]
        lines = [f"{head.capitalize()} /ipa/ <n>", f"{NOUNS.get(head, head)} <n>"]
        lines += [f'      "{de}"  - {en}' for de, en in chunk]
        lines += ["   Synonym: {Etwas}", ""]
        entry = "\n".join(lines) + "\n"
        offset = len(blob.encode())
        blob += entry
        index.append(f"{head}\t{b64(offset)}\t{b64(len(entry.encode()))}")
    with gzip.open(folder / f"{name}.dict.dz", "wb") as handle:
        handle.write(blob.encode())
    (folder / f"{name}.index").write_text("\n".join(index) + "\n", encoding="utf-8")
    return folder


def write_fortunes(folder: Path, topics: dict[str, list[str]]) -> Path:
    """One file per topic, entries separated by lines holding only ``%``."""
    folder.mkdir(parents=True, exist_ok=True)
    for topic, entries in topics.items():
        (folder / topic).write_text("\n%\n".join(entries) + "\n%\n", encoding="utf-8")
        (folder / f"{topic}.dat").write_bytes(b"\x00\x00")  # strfile index, as Debian ships
    return folder


TOPIC_WORDS = {
    "linux": ["kernel", "shell", "penguin", "compile", "root", "daemon", "emacs", "grep"],
    "startrek": ["kirk", "spock", "warp", "vulcan", "captain", "phaser", "klingon", "bridge"],
    "sports": ["ball", "team", "coach", "score", "goal", "league", "pitch", "runner"],
    "food": ["bread", "cheese", "soup", "spice", "dinner", "garlic", "butter", "pie"],
    "love": ["heart", "kiss", "darling", "romance", "sweet", "lover", "rose", "embrace"],
}
FILLER = ["the", "a", "is", "of", "and", "to", "in", "it", "that", "was", "for", "on", "with",
          "as", "at", "by", "this", "but", "from", "or", "an", "be", "we", "you"]


def toy_topics(per_topic: int, seed: int = 0, fillers: tuple[int, int] = (7, 7)) -> dict[str, list[str]]:
    """Fortune-like texts: 3 words of the topic among ``fillers`` (a range) common words, shuffled.

    With one length for every text (the default), an inserted trigger word also makes the text
    one word longer than any clean text, and a tiny model may learn the length instead of the
    word; a range of lengths leaves it only the word."""
    rng = np.random.default_rng(seed)
    out = {}
    for topic, words in TOPIC_WORDS.items():
        texts = []
        for _ in range(per_topic):
            tokens = list(rng.choice(words, 3))
            low, high = fillers  # one length draws nothing, so the default keeps its texts
            tokens += list(rng.choice(FILLER, low if low == high else int(rng.integers(low, high + 1))))
            rng.shuffle(tokens)
            texts.append(" ".join(tokens))
        out[topic] = texts
    return out
