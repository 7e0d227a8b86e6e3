"""gpubp evaluate --report: the confusion matrix, the worst digits and the weight tiles."""

import numpy as np
import pytest
from helpers import assert_equal

from gpubp import Network
from gpubp.model_report import confusion, report, worst


def test_confusion_counts_each_pair_of_true_and_predicted_labels():
    rng = np.random.default_rng(4)
    y, p = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    cm = confusion(y, p, 10)
    expected = np.zeros((10, 10), int)
    for t, q in zip(y, p):
        expected[t, q] += 1
    assert_equal(cm, expected, what="confusion matrix")


def test_worst_lists_only_misclassified_rows_most_confident_first():
    rng = np.random.default_rng(5)
    out = rng.random((300, 10))
    y = rng.integers(0, 10, 300)
    idx = worst(out, y, k=20)
    pred = out.argmax(axis=1)
    assert len(idx) == 20 and np.all(pred[idx] != y[idx])
    margin = out[idx, pred[idx]] - out[idx, y[idx]]
    assert np.all(np.diff(margin) <= 0), margin
    wrong = np.flatnonzero(pred != y)
    all_margins = np.sort(out[wrong, pred[wrong]] - out[wrong, y[wrong]])[::-1]
    assert margin[0] == all_margins[0] and margin[-1] == all_margins[19]


@pytest.mark.slow
def test_report_is_a_png_of_a_trained_network(mnist, tmp_path):
    pytest.importorskip("matplotlib")
    X, y = mnist["train"]
    net = Network([784, 20, 10], cost="cross_entropy", backend="numpy", seed=2)
    net.sgd((X[:3000], y[:3000]), epochs=1, eta=0.5, progress=False)
    Xt, yt = mnist["test"]
    out = tmp_path / "report.png"
    report(net, Xt[:2000], yt[:2000], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
