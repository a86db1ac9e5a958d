"""CltvModel and the BTYD fits on the scikit-learn estimator contract: get_params,
set_params, clone, NotFittedError before fit, parameters from the config by name."""

from pathlib import Path

import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from configs import CltvConfig
from configs.schema import InvalidParameterError
from models.btyd import BetaGeoModel, GammaGammaModel
from models.cltv import CltvModel, ConvergenceError

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def frame():
    d = pd.read_csv(DATA / "cdnow_customers_summary_with_transactions.csv")
    return pd.DataFrame(
        {
            "frequency": d["x"],
            "recency": d["t_x"] * 7,
            "T": d["T"] * 7,
            "monetary_value": d["zbar"],
        }
    )


@pytest.fixture(scope="module")
def fitted(frame):
    return CltvModel(horizon_days=180, annual_discount_rate=0.05).fit(frame)


def test_from_config_passes_the_model_keys_by_name():
    config = CltvConfig(horizon_days=200, annual_discount_rate=0.2, penalizer=0.01, holdout_days=30)
    model = CltvModel.from_config(config)
    assert model.get_params() == {
        "horizon_days": 200,
        "annual_discount_rate": 0.2,
        "penalizer": 0.01,
    }
    # holdout_days is the backtest's, not a parameter of the model
    assert not hasattr(model, "holdout_days")
    assert CltvModel.from_config(CltvConfig()).get_params() == CltvModel().get_params()


def test_keyword_and_positional_construction():
    assert CltvModel(horizon_days=90, annual_discount_rate=0.0, penalizer=0.1).get_params() == (
        CltvModel(90, 0.0, 0.1).get_params()
    )


def test_get_params_set_params_and_clone(frame, fitted):
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params()
    assert not hasattr(twin, "bgnbd_")
    with pytest.raises(NotFittedError):
        twin.predict(frame)
    assert twin.fit(frame) is twin
    pd.testing.assert_frame_equal(twin.predict(frame), fitted.predict(frame))
    assert twin.set_params(horizon_days=30) is twin and fitted.horizon_days == 180
    assert "horizon_days=180" in repr(fitted)
    for part in (fitted.bgnbd_, fitted.gamma_gamma_):
        assert clone(part).get_params() == part.get_params()


def test_parameters_are_checked_at_fit_and_predict(frame, fitted):
    with pytest.raises(InvalidParameterError, match="CltvModel parameter 'penalizer'"):
        CltvModel(penalizer=-1.0).fit(frame)
    with pytest.raises(InvalidParameterError, match="'horizon_days': Input should be a valid int"):
        CltvModel(horizon_days=182.5).fit(frame)
    # predictions use the horizon and the discount rate: set after fit, they are checked too
    changed = clone(fitted).fit(frame).set_params(annual_discount_rate=1.5)
    with pytest.raises(InvalidParameterError, match="'annual_discount_rate'"):
        changed.predict(frame)


def test_unfitted_use_raises_not_fitted_error(frame):
    model = CltvModel()
    for call in (
        lambda: model.predict(frame),
        lambda: model.expected_purchases(frame, 30),
        lambda: model.expected_avg_value(frame),
        model.summary,
        lambda: BetaGeoModel().p_alive([1], [1], [2]),
        lambda: BetaGeoModel().conditional_expected_purchases(10, [1], [1], [2]),
        lambda: BetaGeoModel().expected_purchases(10),
        lambda: GammaGammaModel().conditional_expected_average_value([1], [10.0]),
        lambda: GammaGammaModel().population_mean_,
    ):
        with pytest.raises(NotFittedError, match="is not fitted yet"):
            call()


def test_a_failed_refit_leaves_the_previous_fit_whole(frame, fitted):
    model = clone(fitted).fit(frame)
    before = model.predict(frame)
    bgnbd, gamma_gamma = model.bgnbd_, model.gamma_gamma_
    # BG/NBD cannot fit (no repeat purchase at all): neither fit replaces the previous one
    with pytest.raises(ConvergenceError, match="BG/NBD"):
        model.fit(frame.assign(frequency=0.0, recency=0.0, monetary_value=0.0))
    assert model.bgnbd_ is bgnbd and model.gamma_gamma_ is gamma_gamma
    pd.testing.assert_frame_equal(model.predict(frame), before)


def test_without_spend_the_value_is_unknown_and_alive_ness_is_still_scored(frame, fitted):
    from models.btyd import MeanSpendModel

    model = clone(fitted).fit(frame.assign(monetary_value=0.0))
    assert isinstance(model.gamma_gamma_, MeanSpendModel)
    predicted = model.predict(frame)
    assert predicted["p_alive"].between(0, 1).all()
    assert (predicted["expected_purchases"] >= 0).all()
    assert predicted["predicted_cltv"].isna().all()
