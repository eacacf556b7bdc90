import numpy as np
import pytest

from gssl_fast.model.metrics import accuracy_report


def test_accuracy_report_top1_top5_per_class_and_shots():
    labels = np.array([0, 0, 1, 1, 2, 2])
    top = np.array([[0, 1], [1, 0], [1, 2], [1, 0], [0, 1], [1, 0]])
    r = accuracy_report(top, labels, 3, train_counts=[500, 50, 5])
    assert r["val_acc1"] == pytest.approx(100 * 3 / 6)
    assert r["val_acc5"] == pytest.approx(100 * 4 / 6)
    assert r["val_per_class"] == [50.0, 100.0, 0.0]
    assert (r["val_many_shot"], r["val_medium_shot"], r["val_few_shot"]) == (50.0, 100.0, 0.0)
