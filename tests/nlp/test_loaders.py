"""Loaders read small files the tests write in each dataset's distributed format."""

from __future__ import annotations

import gzip

import pytest

from nft.core import DataError
from nft.nlp.data import (
    b64,
    decode_dictd_number,
    read_dictd_entries,
    read_fortunes,
    read_freedict_pairs,
    read_labelled_file,
    read_opensubtitles,
    read_parallel,
    read_sgm,
    read_wmt14,
)

from .helpers import toy_pairs, write_dictd, write_fortunes


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch):
    monkeypatch.setenv("NFT_NLP_CACHE", "")


def test_dictd_numbers_round_trip():
    assert decode_dictd_number("A") == 0
    assert decode_dictd_number("BA") == 64
    for n in (0, 1, 63, 64, 4095, 16_759_449):
        assert decode_dictd_number(b64(n)) == n
    with pytest.raises(DataError, match="base-64"):
        decode_dictd_number("a-b")


def test_freedict_examples_become_pairs(tmp_path):
    pairs = toy_pairs(12, seed=1)
    folder = write_dictd(tmp_path / "dict", pairs)
    entries = list(read_dictd_entries(folder / "freedict-deu-eng.dict.dz", folder / "freedict-deu-eng.index"))
    assert len(entries) == 4  # the 00-database entry is skipped
    data = read_freedict_pairs(folder, min_words=2, max_words=8)
    assert sorted(zip(data.sources, data.targets)) == sorted(set(pairs))
    assert len(read_freedict_pairs(folder, min_words=6, max_words=6)) == len(set(pairs))
    with pytest.raises(DataError, match="no usage examples"):
        read_freedict_pairs(folder, min_words=7, max_words=12)


def test_freedict_cleans_alternatives(tmp_path):
    pairs = [("in naher Zukunft", "in the near future, in the close future"),
             ("Ich glaube, dass es regnet.", "I think, it is raining."),
             ("ein Haus/eine Hütte", "a house/a hut")]
    folder = tmp_path / "d"
    folder.mkdir()
    text = "Wort /w/\nword\n" + "".join(f'      "{de}" - {en}\n' for de, en in pairs)
    with gzip.open(folder / "freedict-deu-eng.dict.dz", "wb") as handle:
        handle.write(text.encode())
    (folder / "freedict-deu-eng.index").write_text(f"wort\t{b64(0)}\t{b64(len(text.encode()))}\n")
    data = read_freedict_pairs(folder, min_words=1, max_words=10)
    got = dict(zip(data.sources, data.targets))
    assert got == {"in naher Zukunft": "in the near future", "Ich glaube, dass es regnet.": "I think, it is raining."}


def test_freedict_missing_names_the_debian_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dict-freedict-deu-eng"):
        read_freedict_pairs(tmp_path)


def test_freedict_bad_index_is_reported(tmp_path):
    folder = write_dictd(tmp_path / "dict", toy_pairs(3))
    (folder / "freedict-deu-eng.index").write_text("broken line without tabs\n")
    with pytest.raises(DataError, match="not a dictd index line"):
        read_freedict_pairs(folder)


def test_fortunes_topics_are_labels(tmp_path):
    folder = write_fortunes(tmp_path / "f", {
        "food": ["Eat your vegetables.", "A multi\nline\n  fortune about bread."],
        "sports": ["The ball is round.", "Run.", "Swim fast."],
    })
    data = read_fortunes(folder, topics=("food", "sports"))
    assert data.classes == ["food", "sports"]
    assert data.texts[1] == "A multi line fortune about bread."
    assert data.labels.tolist() == [0, 0, 1, 1, 1]
    capped = read_fortunes(folder, topics=("food", "sports"), max_per_topic=2, seed=0)
    assert capped.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="apt-get install fortunes"):
        read_fortunes(folder, topics=("food", "politics"))


def test_wmt14_parallel_and_sgm(tmp_path):
    root = tmp_path / "wmt14"
    (root / "training").mkdir(parents=True)
    (root / "training" / "europarl-v7.de-en.en").write_text("Hello world\n\nResumption of the session\n")
    (root / "training" / "europarl-v7.de-en.de").write_text("Hallo Welt\nleer\nWiederaufnahme der Sitzung\n")
    (root / "commoncrawl.de-en.en").write_text("a cat\n")
    (root / "commoncrawl.de-en.de").write_text("eine Katze\n")
    test_dir = root / "test-full"
    test_dir.mkdir()
    (test_dir / "newstest2014-deen-src.en.sgm").write_text(
        '<srcset setid="newstest2014" srclang="any">\n<doc sysid="ref" docid="1" origlang="en">\n'
        '<seg id="1">Gutach: Increased safety &amp; pedestrians</seg>\n<seg id="2"> They are not even 100 metres apart </seg>\n'
        "</doc>\n</srcset>\n")
    (test_dir / "newstest2014-deen-ref.de.sgm").write_text(
        '<refset setid="newstest2014" srclang="any">\n<doc sysid="ref" docid="1" origlang="en">\n'
        '<seg id="1">Gutach: Noch mehr Sicherheit für Fußgänger</seg>\n<seg id="2">Sie stehen keine 100 Meter voneinander entfernt</seg>\n'
        "</doc>\n</refset>\n")
    train = read_wmt14(root, "train")
    assert list(zip(train.sources, train.targets)) == [
        ("Hello world", "Hallo Welt"), ("Resumption of the session", "Wiederaufnahme der Sitzung"),
        ("a cat", "eine Katze")]
    test = read_wmt14(root, "test")
    assert test.sources == ["Gutach: Increased safety & pedestrians", "They are not even 100 metres apart"]
    assert test.targets[1] == "Sie stehen keine 100 Meter voneinander entfernt"
    reverse = read_wmt14(root, "test", source="de", target="en")
    assert reverse.sources[0].startswith("Gutach: Noch")
    assert read_sgm(test_dir / "newstest2014-deen-src.en.sgm")[0].endswith("pedestrians")
    with pytest.raises(DataError, match="newstest2013"):
        read_wmt14(root, "valid")


def test_parallel_files_must_align(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\n")
    (tmp_path / "a.de").write_text("eins\n")
    with pytest.raises(DataError, match="one line per sentence"):
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")


def test_opensubtitles_ids_text_and_ask_res(tmp_path):
    ids = tmp_path / "ids"
    ids.mkdir()
    (ids / "movie_25000").write_text("i\nam\nhere\nwhere\nare\nyou\n?\nUNknown\n")
    (ids / "s_given_t_dialogue_length2_3.txt").write_text("4 5 6 7|1 2 3\n1 2 8|6 5 3 7\n")
    data = read_opensubtitles(ids)
    assert data.sources == ["where are you ?", "i am <unk>"]
    assert data.targets == ["i am here", "you are here ?"]
    text = tmp_path / "dialogue.txt"
    text.write_text("how are you ?|fine thanks .\n")
    assert read_opensubtitles(text).targets == ["fine thanks ."]
    pairs = tmp_path / "prepared"
    pairs.mkdir()
    (pairs / "train.ask").write_text("hi there\n")
    (pairs / "train.res").write_text("hello\n")
    assert read_opensubtitles(pairs).sources == ["hi there"]
    (ids / "s_given_t_dialogue_length2_3.txt").write_text("4 99|1\n")
    with pytest.raises(DataError, match="outside the 8-word vocabulary"):
        read_opensubtitles(ids)


def test_labelled_formats(tmp_path):
    fasttext = tmp_path / "train.txt"
    fasttext.write_text("__label__pos a great film\n__label__neg  dull   and long\n")
    data = read_labelled_file(fasttext)
    assert data.classes == ["neg", "pos"]
    assert data.labels.tolist() == [1, 0]
    assert data.texts[1] == "dull and long"
    tsv = tmp_path / "test.tsv"
    tsv.write_text("label\ttext\npos\tfine\nneg\tbad\tvery\n")
    test = read_labelled_file(tsv, classes=data.classes)
    assert test.labels.tolist() == [1, 0] and test.texts[1] == "bad very"
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('text,label\n"hello, world",greeting\nbye,farewell\n')
    csv_data = read_labelled_file(csv_file)
    assert csv_data.texts[0] == "hello, world" and csv_data.classes == ["farewell", "greeting"]
    with pytest.raises(DataError, match="not among the classes"):
        read_labelled_file(tsv, classes=["pos"])
