"""The TF-IDF text baseline: TF-IDF over word (1-2) and character (2-5, within word boundaries) n-grams + logistic regression.

The tf-idf transform is done here (sublinear tf, idf weights, row L2 norm, as scikit-learn's
`TfidfTransformer`) on counts from a `CountVectorizer` with a fixed vocabulary, so a saved model is
just vocabularies (JSON) and arrays (safetensors), and training and loading share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self, Sequence

import numpy as np
import torch

from assay.metrics import auroc
from assay.probes.base import Probe, as_labels

ANALYZERS = {"word": dict(analyzer="word", ngram_range=(1, 2)), "char": dict(analyzer="char_wb", ngram_range=(2, 5))}


def _counter(name: str, vocabulary: dict[str, int] | None = None, **kw: Any):
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(lowercase=True, vocabulary=vocabulary, dtype=np.float64, **ANALYZERS[name], **kw)


def select_C(fit_score, Cs: Sequence[float], y_val) -> tuple[float, list[dict]]:
    """The C whose validation AUROC is best (ties: the smaller C, i.e. more regularised).
    `fit_score(C)` fits at C and returns validation scores."""
    table = [{"C": float(C), "val_auroc": auroc(fit_score(C), y_val)} for C in sorted(Cs)]
    best = max(table, key=lambda r: (round(r["val_auroc"], 6), -r["C"]))
    return best["C"], table


@dataclass(frozen=True)
class TfidfConfig:
    Cs: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    min_df: int = 2
    max_features: int = 50_000


class TfidfProbe(Probe):
    """Reads raw texts (a list or an object array of str)."""

    Config = TfidfConfig

    def _transform(self, texts: Sequence[str]):
        from scipy.sparse import csr_matrix, hstack

        blocks = []
        for name in ANALYZERS:
            counts = _counter(name, self.vocab[name]).transform(texts)
            counts.data = 1.0 + np.log(counts.data)  # sublinear tf
            blocks.append(counts.multiply(self.idf[name][None, :]).tocsr())
        X = csr_matrix(hstack(blocks))
        norms = np.sqrt(np.asarray(X.multiply(X).sum(1))).ravel()
        return csr_matrix(X.multiply(1.0 / np.where(norms > 0, norms, 1.0)[:, None]))

    def fit(self, texts, y, texts_val=None, y_val=None, *, mask=None, mask_val=None) -> Self:
        from sklearn.feature_extraction.text import TfidfTransformer
        from sklearn.linear_model import LogisticRegression

        y = as_labels(y)
        self.vocab, self.idf = {}, {}
        for name in ANALYZERS:
            cv = _counter(name, None, min_df=self.config.min_df, max_features=self.config.max_features)
            try:
                counts = cv.fit_transform(texts)
            except ValueError as err:  # sklearn: "empty vocabulary" (only stop words or punctuation)
                from assay.errors import InputError

                raise InputError(f"TF-IDF ({name}): the training texts yield no terms ({err}); they hold only "
                                 "punctuation, stop words or too few rows for min_df") from None
            self.vocab[name] = {t: int(i) for t, i in cv.vocabulary_.items()}
            self.idf[name] = TfidfTransformer(smooth_idf=True).fit(counts).idf_
        X = self._transform(texts)

        def fit_at(C: float):
            return LogisticRegression(C=C, solver="liblinear", max_iter=1000).fit(X, y)

        if texts_val is not None and len(self.config.Cs) > 1:
            Xv = self._transform(texts_val)
            C, table = select_C(lambda C: fit_at(C).decision_function(Xv), self.config.Cs, as_labels(y_val))
        else:
            C, table = self.config.Cs[0], []
        clf = fit_at(C)
        self.coef, self.intercept = clf.coef_.ravel().astype(np.float64), float(clf.intercept_[0])
        self.meta = {"C": C, "selection": table, "n_features": int(len(self.coef))}
        return self

    def score(self, texts, mask=None) -> np.ndarray:
        return np.asarray(self._transform(texts) @ self.coef).ravel() + self.intercept

    def top_ngrams(self, n: int = 20) -> list[tuple[str, float]]:
        """The n-grams with the largest positive (harmful) weights, for sanity checks."""
        names = [t for name in ANALYZERS for t, _ in sorted(self.vocab[name].items(), key=lambda kv: kv[1])]
        return [(names[i], float(self.coef[i])) for i in np.argsort(-self.coef)[:n]]

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {"coef": torch.from_numpy(self.coef), "intercept": torch.tensor([self.intercept], dtype=torch.float64)}
        return tensors | {f"idf.{name}": torch.from_numpy(np.asarray(v, dtype=np.float64)) for name, v in self.idf.items()}

    def json_state(self) -> dict[str, Any]:
        return {"vocabulary": self.vocab}

    def set_json_state(self, state: dict[str, Any]) -> None:
        self.vocab = {name: {t: int(i) for t, i in v.items()} for name, v in state["vocabulary"].items()}

    def set_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.idf = {name: tensors[f"idf.{name}"].numpy() for name in ANALYZERS}
        self.coef, self.intercept = tensors["coef"].numpy(), float(tensors["intercept"][0])
