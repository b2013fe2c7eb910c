"""Unit tests of the job's pure helpers (no Spark): ROC/AUC against a brute-force pair count,
thresholds, model parsing, topic names and the spec.model patch."""

import itertools
import math
import os
import random
import sys

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "analysis"))
import sensorflow_analysis as sa  # noqa: E402


def pairwise_auc(scores, labels):
    """P(score of a random positive > score of a random negative), ties count half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def counts_of(scores, labels):
    c = {}
    for s, y in zip(scores, labels):
        p, n = c.get(s, (0, 0))
        c[s] = (p + (1 if y else 0), n + (0 if y else 1))
    return [(s, p, n) for s, (p, n) in c.items()]


@pytest.mark.parametrize("seed", range(30))
def test_auc_equals_pairwise_probability_with_ties(seed):
    rnd = random.Random(seed)
    n = rnd.randint(2, 60)
    scores = [rnd.choice([0.1, 0.2, 0.3, 0.5, 0.7, 0.9]) if rnd.random() < 0.5 else rnd.random() for _ in range(n)]
    labels = [rnd.random() < 0.4 for _ in range(n)]
    labels[0], labels[1] = True, False
    points, auc = sa.roc_from_counts(counts_of(scores, labels))
    assert auc == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)
    assert points[0][:2] == (0.0, 0.0) and points[-1][:2] == (1.0, 1.0)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(points, points[1:]))


def test_auc_undefined_with_one_class():
    assert sa.roc_from_counts([(0.3, 2, 0), (0.9, 1, 0)])[1] is None


def test_confusion_and_metrics_at_threshold():
    counts = [(0.9, 3, 1), (0.5, 1, 1), (0.2, 1, 5)]
    assert sa.confusion_at(counts, 0.5) == (4, 2, 1, 5)
    m = sa.metrics_at(counts, 0.5)
    assert m["precision"] == pytest.approx(4 / 6) and m["recall"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))


@pytest.mark.parametrize("seed", range(20))
def test_best_f1_threshold_beats_every_other_score(seed):
    rnd = random.Random(seed)
    scores = [round(rnd.random(), 2) for _ in range(40)]
    labels = [rnd.random() < s for s in scores]
    labels[0] = True
    counts = counts_of(scores, labels)
    best = sa.best_f1_threshold(counts)
    f1 = lambda t: sa.metrics_at(counts, t)["f1"]  # noqa: E731
    assert best in scores
    assert all(f1(best) >= f1(s) - 1e-12 for s in scores)


def test_floor_to_never_rounds_up():
    assert sa.floor_to(0.4782539, 6) == 0.478253
    assert sa.floor_to(0.5, 6) == 0.5


def test_parse_model_version_is_what_join_predict_writes():
    # processors/core/src/model.rs: format!("w={}", weights ++ [bias] joined by ",") with Rust's
    # f64 Display (1.0 prints as "1", -6.0 as "-6").
    assert sa.parse_model_version("w=0.01,0.01,1,0.3,0.2,-6") == ((0.01, 0.01, 1.0, 0.3, 0.2), -6.0)
    assert sa.parse_model_version("random-seed=42") is None
    assert sa.parse_model_version("w=1,2,3") is None
    assert sa.parse_model_version("w=1,2,3,4,5,inf") is None


def test_model_from_spec_takes_the_processor_defaults_for_unset_fields():
    m = sa.model_from_spec({"kind": "logistic", "threshold": 0.7}, "t")
    assert m.weights == sa.DEFAULT_WEIGHTS and m.bias == sa.DEFAULT_BIAS and m.threshold == 0.7
    m = sa.model_from_spec(None, "t")
    assert (m.weights, m.bias, m.threshold) == (sa.DEFAULT_WEIGHTS, sa.DEFAULT_BIAS, 0.5)
    with pytest.raises(ValueError):
        sa.model_from_spec({"kind": "random"}, "t")


def test_example_manifest_model_is_read():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "sensorpipeline.yaml")
    with open(path) as f:
        doc = yaml.safe_load(f)
    m = sa.model_from_spec(doc["spec"]["model"], path)
    assert len(m.weights) == 5 and 0 <= m.threshold <= 1


def test_default_model_probability_matches_the_formula():
    m = sa.Model(sa.DEFAULT_WEIGHTS, sa.DEFAULT_BIAS, 0.5)
    x = (3, 0, 9, 9, 5)
    z = 0.03 + 9 + 2.7 + 1.0 - 6
    assert m.probability(x) == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-15)
    assert sa.sigmoid(-800) == 0.0 and sa.sigmoid(800) == 1.0


def test_topic_names():
    assert sa.topic_names(None, [])["SZ"] == "SZ"
    names = sa.topic_names("demo", ["predictions=archive.preds"])
    assert names["SZ"] == "demo.sz" and names["dead-letter"] == "demo.dead-letter"
    assert names["predictions"] == "archive.preds"
    with pytest.raises(ValueError):
        sa.topic_names(None, ["nope=x"])


def test_patch_yaml_is_a_sensorpipeline_model_patch():
    m = sa.Model((0.1, -0.2, 1.5, 0.25, 3.0), -7.25, 0.4125)
    doc = yaml.safe_load(sa.model_patch_yaml("demo", m, ["a comment"]))
    assert doc == {
        "apiVersion": "sensorflow.io/v1alpha1",
        "kind": "SensorPipeline",
        "metadata": {"name": "demo"},
        "spec": {"model": {"kind": "logistic", "weights": [0.1, -0.2, 1.5, 0.25, 3.0], "bias": -7.25, "threshold": 0.4125}},
    }


def test_patch_yaml_keeps_every_bit_of_the_weights():
    w = (0.1 + 0.2, 1 / 3, -2e-17, 12345.678901234567, 0.0)
    doc = yaml.safe_load(sa.model_patch_yaml("x", sa.Model(w, -1 / 7, 0.5)))
    assert tuple(doc["spec"]["model"]["weights"]) == w and doc["spec"]["model"]["bias"] == -1 / 7
