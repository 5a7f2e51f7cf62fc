"""dlfast.sklearn: scikit-learn's estimator checks on both backends (the checks that cannot apply
declared, with the reason), and the estimators in use: targets of every kind, pipelines, searches,
cross-validation, DataFrames, pickle and clone, partial_fit, warm_start, early stopping, sample
weights, every technique's hyperparameters, bad input; scikit-learn stays an optional extra."""
import pickle
import warnings

import numpy as np
import pytest

import dlfast
from process_helpers import fresh_json

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import (GridSearchCV, RandomizedSearchCV,  # noqa: E402
                                     cross_val_score)
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from dlfast.sklearn import EXPECTED_FAILED_CHECKS, MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
BACKENDS = [b for b in ("numpy", "cython") if b in dlfast.available_backends()]


def _checked():
    return [cls(max_iter=100, backend=b, random_state=0)
            for b in BACKENDS for cls in (MLPClassifier, MLPRegressor)]


@parametrize_with_checks(_checked(), expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_expected_failures_are_declared_in_the_tags():
    """Each declared check names a reason; scikit-learn < 1.6 reads them from _more_tags."""
    assert EXPECTED_FAILED_CHECKS and all(len(r) > 40 for r in EXPECTED_FAILED_CHECKS.values())
    for est in (MLPClassifier(), MLPRegressor()):
        assert est._more_tags()["_xfail_checks"] == EXPECTED_FAILED_CHECKS
        tags = est.__sklearn_tags__()
        assert tags.target_tags.multi_output and not tags.input_tags.allow_nan
    assert MLPClassifier().__sklearn_tags__().classifier_tags.multi_label


def _clf_data(n=300, classes=3, seed=0):
    return make_classification(n, 10, n_informative=6, n_classes=classes, random_state=seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_of_every_kind(backend):
    X, y = _clf_data()
    c = MLPClassifier((32,), max_iter=80, random_state=0, backend=backend,
                      learning_rate_init=0.01).fit(X, y)
    assert c.score(X, y) > 0.9 and c.predict_proba(X).shape == (300, 3)
    np.testing.assert_allclose(c.predict_proba(X).sum(1), 1.0)
    np.testing.assert_allclose(np.exp(c.predict_log_proba(X)), c.predict_proba(X), rtol=1e-9)
    assert c.model_.loss_layer.KIND == "softmax_xent" and c.model_.output_size == 3
    Xb, yb = _clf_data(classes=2)
    labels = np.where(yb == 1, "yes", "no")
    c = MLPClassifier((32,), max_iter=80, random_state=0, backend=backend,
                      learning_rate_init=0.01).fit(Xb, labels)
    assert list(c.classes_) == ["no", "yes"] and c.model_.output_size == 1
    assert c.model_.loss_layer.KIND == "sigmoid_bce"
    p = c.predict_proba(Xb)
    assert p.shape == (300, 2)
    np.testing.assert_array_equal(c.predict(Xb), c.classes_[np.argmax(p, axis=1)])
    assert c.score(Xb, labels) > 0.9
    Y = np.stack([yb, Xb[:, 0] > 0, Xb[:, 1] + Xb[:, 2] > 0], 1).astype(int)
    c = MLPClassifier((32,), max_iter=100, random_state=0, backend=backend,
                      learning_rate_init=0.01).fit(Xb, Y)
    assert c.predict(Xb).shape == (300, 3) and set(np.unique(c.predict(Xb))) <= {0, 1}
    assert c.predict_proba(Xb).shape == (300, 3) and c.score(Xb, Y) > 0.7
    Xr, yr = make_regression(300, 8, n_targets=3, noise=0.5, random_state=0)
    r = MLPRegressor((32,), max_iter=150, random_state=0, backend=backend,
                     learning_rate_init=0.01).fit(Xr / 2, yr / 100)
    assert r.predict(Xr / 2).shape == (300, 3) and r.score(Xr / 2, yr / 100) > 0.9
    r1 = MLPRegressor((16,), max_iter=5, random_state=0, backend=backend).fit(Xr, yr[:, 0])
    assert r1.predict(Xr).shape == (300,)
    for loss in ("mae", "huber"):
        r = MLPRegressor((16,), loss=loss, max_iter=40, random_state=0, backend=backend,
                         learning_rate_init=0.01).fit(Xr / 2, yr[:, :2] / 100)
        assert r.model_.loss_layer.KIND == loss and r.score(Xr / 2, yr[:, :2] / 100) > 0.5


def test_pipeline_searches_cross_validation_and_dataframes():
    pd = pytest.importorskip("pandas")
    X, y = _clf_data(200)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(10)])
    pipe = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=30, batch_size=20,
                                                         random_state=0))
    pipe.fit(df, y)
    assert list(pipe.feature_names_in_) == list(df.columns) and pipe[-1].n_features_in_ == 10
    assert pipe.score(df, y) > 0.5
    est = MLPClassifier((16,), max_iter=15, random_state=0).fit(df, pd.Series(y))
    assert list(est.feature_names_in_) == list(df.columns)
    with pytest.warns(UserWarning, match="feature names"):
        est.predict(X)                               # fitted with names, given none
    scores = cross_val_score(MLPClassifier((8,), max_iter=10, random_state=0), X, y, cv=3)
    assert scores.shape == (3,)
    g = GridSearchCV(MLPClassifier(max_iter=10, random_state=0),
                     {"hidden_layer_sizes": [(8,), (16,)], "alpha": [0.0, 1e-3]}, cv=2).fit(X, y)
    assert g.best_params_["hidden_layer_sizes"] in [(8,), (16,)]
    rs = RandomizedSearchCV(MLPRegressor(max_iter=10, random_state=0),
                            {"learning_rate_init": [1e-3, 1e-2], "batchnorm": [True, False],
                             "dropout": [0.0, 0.2]}, n_iter=3, cv=2, random_state=0)
    Xr, yr = make_regression(120, 5, random_state=0)
    rs.fit(pd.DataFrame(Xr), yr / 100)
    assert np.isfinite(rs.best_score_)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickle_and_clone_round_trips(backend, tmp_path):
    X, y = _clf_data(120)
    for est in (MLPClassifier((8,), max_iter=5, random_state=1, backend=backend, batchnorm=True,
                              dropout=0.1),
                MLPRegressor((8,), max_iter=5, random_state=1, backend=backend, dtype="float64")):
        est.fit(X, y)
        back = pickle.loads(pickle.dumps(est))
        np.testing.assert_array_equal(back.predict(X), est.predict(X))
        back.set_params(warm_start=True).fit(X, y)       # training continues after a reload
        assert back.n_iter_ == 10
        c = clone(est)
        assert "model_" not in c.__dict__ and c.get_params() == est.get_params()
        assert np.array_equal(c.fit(X, y).predict(X), est.predict(X))   # same random_state


def test_partial_fit_warm_start_and_early_stopping():
    X, y = _clf_data(200)
    c = MLPClassifier((16,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        c.partial_fit(X, y)
    for _ in range(3):
        c.partial_fit(X, y, classes=[0, 1, 2, 3])      # a class y never holds
    assert c.n_iter_ == 3 and len(c.loss_curve_) == 3 and list(c.classes_) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"labels \[7\] outside classes"):
        c.partial_fit(X, np.full(200, 7))
    with pytest.raises(ValueError, match="features"):
        c.partial_fit(X[:, :5], y)
    w = MLPClassifier((16,), max_iter=5, random_state=0, warm_start=True)
    w.fit(X, y)
    first = w.loss_curve_[-1]
    w.fit(X, y)
    assert w.n_iter_ == 10 and len(w.loss_curve_) == 10 and w.loss_curve_[-1] < first
    w.set_params(warm_start=False).fit(X, y)
    assert w.n_iter_ == 5
    e = MLPClassifier((16,), max_iter=200, early_stopping=True, n_iter_no_change=3,
                      validation_fraction=0.2, random_state=0).fit(X, y)
    assert len(e.validation_scores_) == e.n_iter_ < 200
    assert e.best_validation_score_ == max(e.validation_scores_)
    r = MLPRegressor((16,), max_iter=200, early_stopping=True, n_iter_no_change=2,
                     random_state=0, learning_rate_init=0.05)
    Xr, yr = make_regression(200, 5, random_state=0)
    r.fit(Xr, yr / 100)
    assert len(r.validation_scores_) == r.n_iter_ and r.validation_scores_[0] <= 1.0
    assert MLPRegressor(max_iter=2).fit(Xr, yr).validation_scores_ is None
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        MLPRegressor(max_iter=2, tol=0.0).fit(Xr, yr)


def test_sample_weight():
    X, y = _clf_data(200, classes=2)
    a = MLPClassifier((8,), max_iter=10, random_state=0).fit(X, y)
    b = MLPClassifier((8,), max_iter=10, random_state=0).fit(X, y, sample_weight=np.ones(200))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    w = np.where(y == 1, 5.0, 0.2)
    c = MLPClassifier((8,), max_iter=10, random_state=0).fit(X, y, sample_weight=w)
    assert c.predict(X).mean() > a.predict(X).mean()
    with pytest.raises(ValueError, match="sample_weight must be finite and >= 0"):
        MLPClassifier(max_iter=2).fit(X, y, sample_weight=-np.ones(200))
    with pytest.raises(ValueError, match=r"\bclass\b"):
        MLPClassifier(max_iter=2).fit(X, y, sample_weight=(y == 1).astype(float))


@pytest.mark.parametrize("kw", [
    dict(batchnorm=True, dropout=0.2), dict(l1=1e-4), dict(l1=1e-4, alpha=1e-3),
    dict(max_norm=2.0), dict(schedule="step", schedule_params={"step_size": 2, "gamma": 0.5}),
    dict(schedule="exp"), dict(schedule="inverse", schedule_params={"k": 0.1}),
    dict(schedule="plateau", early_stopping=True), dict(clip_norm=1.0), dict(clip_value=0.5),
    dict(solver="sgd", learning_rate_init=0.05), dict(solver="momentum", momentum=0.8),
    dict(solver="nesterov"), dict(solver="adagrad"), dict(solver="rmsprop"),
    dict(solver="adamw"), dict(activation="logistic"), dict(activation="tanh"),
    dict(activation="prelu"), dict(weight_init="xavier"), dict(dtype="float64"),
    dict(n_threads=1), dict(batch_size=7, shuffle=False)], ids=lambda kw: ",".join(kw))
def test_every_technique_trains(kw):
    X, y = _clf_data(150)
    kw = {"learning_rate_init": 0.01, "batch_size": 32, **kw}
    c = MLPClassifier((16, 8), max_iter=15, random_state=0, **kw).fit(X, y)
    assert np.all(np.isfinite(c.loss_curve_)) and c.loss_curve_[-1] < c.loss_curve_[0]
    assert c.score(X, y) > 0.5


def test_bad_input_and_settings():
    X, y = _clf_data(60)
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MLPClassifier(max_iter=2).fit(bad, y)
    c = MLPClassifier(max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        c.predict(X[:, :4])
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier(max_iter=2).fit(X, X[:, 0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLPClassifier(max_iter=2).fit(X, np.zeros(60))
    for kw, msg in ((dict(solver="lbfgs"), "solver"), (dict(schedule="cosine"), "schedule"),
                    (dict(max_iter=0), "max_iter"), (dict(hidden_layer_sizes=(0,)), "hidden"),
                    (dict(validation_fraction=1.0), "validation_fraction"),
                    (dict(backend="gpu"), "backend"), (dict(dtype="float16"), "dtype"),
                    (dict(batch_size=0), "batch_size")):
        with pytest.raises((ValueError, TypeError), match=msg):
            MLPClassifier(**kw).fit(X, y)
    with pytest.raises(ValueError, match="loss must be"):
        MLPRegressor(loss="poisson").fit(X, y)
    with pytest.raises(ValueError, match=r"activation: unknown activation 'foo'.*'maxout'.*"
                                         r"'logistic'"):
        MLPClassifier(activation="foo").fit(X, y)
    # finite float64 beyond float32's range: named, not reported as NaN
    with pytest.raises(ValueError, match="X has values beyond float32's range.*dtype='float64'"):
        MLPClassifier(max_iter=2).fit(X * 1e39, y)
    with pytest.raises(ValueError, match="y has values beyond float32's range"):
        MLPRegressor(max_iter=2).fit(X, X[:, 0] * 1e39)
    MLPRegressor(max_iter=2, dtype="float64").fit(X, X[:, 0] * 1e39)
    # warm_start and partial_fit continue the fitted model: its dtype cannot change
    for est in (MLPClassifier(max_iter=2, warm_start=True).fit(X, y),
                MLPClassifier().partial_fit(X, y, classes=np.unique(y))):
        est.set_params(dtype="float64")
        with pytest.raises(ValueError, match="dtype='float64' differs from the fitted model's "
                                             "float32"):
            est.partial_fit(X, y) if est.warm_start is False else est.fit(X, y)


def test_import_dlfast_does_not_import_sklearn_and_its_absence_is_named():
    got = fresh_json("import sys, json, dlfast, dlfast.net, dlfast.train\n"
                     "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == "
                     "'sklearn')))")
    assert got == []
    got = fresh_json("import sys, json\n"
                     "sys.modules['sklearn'] = None\n"
                     "import dlfast\n"
                     "names = dir(dlfast)\n"
                     "try:\n"
                     "    dlfast.sklearn\n"
                     "    msg = None\n"
                     "except ImportError as exc:\n"
                     "    msg = str(exc)\n"
                     "print(json.dumps([msg, 'sklearn' in names, dlfast.net.MLP.__name__]))")
    assert "pip install dlfast[sklearn]" in got[0] and got[1:] == [True, "MLP"]


def test_schedules_continue_over_warm_start_and_partial_fit():
    X, y = _clf_data(100)
    kw = dict(schedule="step", schedule_params={"step_size": 2, "gamma": 0.5},
              learning_rate_init=0.1, random_state=0)
    a = MLPClassifier((8,), max_iter=4, **kw).fit(X, y)
    b = MLPClassifier((8,), max_iter=2, warm_start=True, **kw)
    b.fit(X, y)
    b.fit(X, y)
    c = MLPClassifier((8,), **kw)
    for _ in range(4):
        c.partial_fit(X, y, classes=[0, 1, 2])
    for est in (a, b, c):
        assert est.n_iter_ == 4 and est.t_ == 4
        assert est._optimizer.lr == pytest.approx(0.1 * 0.5 ** 1)     # lr of epoch 4 (t = 3)
