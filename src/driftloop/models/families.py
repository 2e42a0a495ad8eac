"""The TF-IDF family (the fast default) and the family registry that ``model.family`` names.

The interfaces (:class:`TextClassifier`, :class:`ModelFamily`) and temperature scaling live in
:mod:`driftloop.models.base` and are re-exported here. The registry names the transformer family
(:mod:`driftloop.models.transformer`, which imports torch only when it trains or predicts) and the
ensemble (:mod:`driftloop.models.ensemble`); neither imports this module.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.core.types import Prediction
from driftloop.data.dataset import LABEL, TEXT
from driftloop.models.base import ModelFamily, TextClassifier, fit_temperature, softmax
from driftloop.models.ensemble import EnsembleFamily
from driftloop.models.transformer import TransformerFamily

__all__ = [
    "ModelFamily",
    "TextClassifier",
    "TfidfFamily",
    "TfidfIntentModel",
    "fit_temperature",
    "get_family",
    "register_family",
]

_WORD = re.compile(r"(?u)\b\w+\b")


@dataclass
class _Block:
    analyzer: Callable[[str], list[str]]
    vocabulary: dict[str, int]
    idf: np.ndarray
    offset: int


class TfidfIntentModel:
    """Word + character TF-IDF into a linear SVM, with temperature-scaled softmax confidences.

    Scoring one text through scikit-learn's ``transform`` costs about 2 ms here, mostly input
    validation and sparse-matrix assembly; :meth:`scores` computes the same numbers (to float
    rounding) straight from the vocabularies in about 0.3 ms, which is what lets one serving
    worker answer several hundred requests a second.
    """

    family = "tfidf"

    def __init__(
        self, vectorizers: list[Any], coef: np.ndarray, intercept: np.ndarray, labels: Sequence[str], temperature: float
    ):
        self.vectorizers = vectorizers
        self.coef = np.ascontiguousarray(coef.T.astype(np.float32))  # (features, labels)
        self.intercept = intercept.astype(np.float32)
        self.labels = tuple(labels)
        self.temperature = float(temperature)
        self._blocks: list[_Block] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_blocks"] = None  # analyzers are closures; rebuilt on first use
        return state

    def _compiled(self) -> list[_Block]:
        if self._blocks is None:
            blocks, offset = [], 0
            for vec in self.vectorizers:
                blocks.append(_Block(vec.build_analyzer(), vec.vocabulary_, vec.idf_.astype(np.float32), offset))
                offset += len(vec.vocabulary_)
            self._blocks = blocks
        return self._blocks

    def _score_one(self, text: str, out: np.ndarray) -> None:
        out[:] = self.intercept
        for block in self._compiled():
            vocab = block.vocabulary
            counts = Counter(t for t in block.analyzer(text) if t in vocab)
            if not counts:
                continue
            idx = np.fromiter((vocab[t] for t in counts), np.int64, len(counts))
            tf = 1.0 + np.log(np.fromiter(counts.values(), np.float32, len(counts)))
            val = tf * block.idf[idx]
            val /= np.linalg.norm(val)
            out += val @ self.coef[idx + block.offset]

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """The SVM's decision scores, shape (len(texts), len(labels)), before the softmax."""
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for i, text in enumerate(texts):
            self._score_one(text, out[i])
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Temperature-scaled softmax probabilities, shape (len(texts), len(labels))."""
        return softmax(self.scores(texts).astype(np.float64), self.temperature)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The most likely label of each text, with its probability."""
        proba = self.predict_proba(texts)
        best = proba.argmax(axis=1)
        return [Prediction(self.labels[j], float(proba[i, j])) for i, j in enumerate(best)]

    def count_tokens(self, text: str) -> int:
        """Words in the text (runs of word characters), as the word n-grams see them."""
        return len(_WORD.findall(text))


class TfidfFamily:
    """The fast default: 91% test accuracy on BANKING77 in a few seconds on two cores."""

    name = "tfidf"

    def fit(
        self,
        train: pd.DataFrame,
        params: dict[str, Any],
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
        checkpoint_root: Path | None = None,
    ) -> TfidfIntentModel:
        """Fit on ``train`` (``word_ngrams``, ``char_ngrams``, ``C`` and ``char_min_df`` from
        ``params``), the temperature calibrated on a seeded 10% hold-out first."""
        # checkpoint_root is unused: a fit takes seconds, there is nothing worth resuming.
        import scipy.sparse as sp
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.svm import LinearSVC

        say = progress or (lambda _msg: None)
        word = tuple(params.get("word_ngrams", (1, 2)))
        char = tuple(params.get("char_ngrams", (2, 5)))
        c_value = float(params.get("C", 0.5))
        char_min_df = int(params.get("char_min_df", 2))

        def make() -> list[Any]:
            return [
                TfidfVectorizer(ngram_range=word, sublinear_tf=True, dtype=np.float32),
                TfidfVectorizer(
                    analyzer="char_wb", ngram_range=char, sublinear_tf=True, min_df=char_min_df, dtype=np.float32
                ),
            ]

        def fit_on(frame: pd.DataFrame) -> tuple[list[Any], Any]:
            vecs = make()
            x = sp.hstack([v.fit_transform(frame[TEXT]) for v in vecs]).tocsr()
            for v in vecs:
                # scikit-learn caches id(stop_words), a memory address: without it the same data
                # and seed give a byte-identical model file (DVC's lock, MLflow artifacts).
                vars(v).pop("_stop_words_id", None)
            clf = LinearSVC(C=c_value, random_state=seed).fit(x, frame[LABEL])
            return vecs, clf

        labels = sorted(train[LABEL].unique())
        if len(labels) < 2:
            raise ValueError(f"training needs at least 2 labels, got {labels}")
        started = time.perf_counter()
        # Temperature from a 10% hold-out, then the final model on everything.
        rng = np.random.default_rng(seed)
        held = rng.random(len(train)) < 0.1
        temperature = 1.0
        if held.sum() >= len(labels) and (~held).sum() > 0 and train[~held][LABEL].nunique() == len(labels):
            vecs, clf = fit_on(train[~held])
            probe = TfidfIntentModel(vecs, clf.coef_, clf.intercept_, clf.classes_, 1.0)
            scores = probe.scores(list(train[held][TEXT])).astype(np.float64)
            y = np.searchsorted(np.array(clf.classes_), train[held][LABEL].to_numpy())
            temperature = fit_temperature(scores, y)
            say(f"calibrated temperature {temperature:.3f} on {int(held.sum())} held-out rows")
        vecs, clf = fit_on(train)
        say(f"fitted {len(labels)} intents on {len(train)} rows in {time.perf_counter() - started:.1f}s")
        return TfidfIntentModel(vecs, clf.coef_, clf.intercept_, clf.classes_, temperature)


def _ensemble() -> ModelFamily:
    return EnsembleFamily(get_family)


_FAMILIES: dict[str, Callable[[], ModelFamily]] = {
    "tfidf": TfidfFamily,
    "transformer": TransformerFamily,
    "ensemble": _ensemble,
}


def register_family(name: str, factory: Callable[[], ModelFamily]) -> None:
    """Make ``model.family: <name>`` build its family with ``factory`` (replacing any before)."""
    _FAMILIES[name] = factory


def get_family(name: str) -> ModelFamily:
    """A new instance of the family ``model.family`` names; :class:`ValueError` for an unknown name."""
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise ValueError(f"model.family: unknown family '{name}' (known: {sorted(_FAMILIES)})") from None
