"""Tests of the CLTV model choice: the learned model must beat BG/NBD on held-out clients."""

import numpy as np
import pandas as pd
import pytest

from configs import CltvConfig
from models.learned import shift_to_level
from models.selection import Window, calibration_table, decile_lift, select_cltv_model


def _clients(n: int, signal: float, seed: int = 0):
    """Buyers whose next-window purchases follow a latent rate; BG/NBD's guess sees it through
    noise, and the `intent` feature sees it with `signal` (0: not at all); 20% prospects."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(1.5, 1.0, n)
    guess = rate * rng.gamma(3.0, 1 / 3.0, n)  # BG/NBD's noisy view of the rate
    intent = signal * rate + (1 - signal) * rng.gamma(1.5, 1.0, n)
    purchases = rng.poisson(rate).astype(float)
    spend = purchases * 40.0
    inputs = pd.DataFrame(
        {
            "intent": intent,
            "bg_expected_purchases": guess,
            "bg_p_purchase": 1 - np.exp(-guess),
            "bg_p_alive": 1.0,
            "bg_expected_avg_value": 40.0,
        },
        index=pd.Index([f"c{i}" for i in range(n)], name="client_id"),
    )
    is_buyer = rng.random(n) > 0.2
    labels = pd.DataFrame({"purchases": purchases, "spend": spend}, index=inputs.index)
    return Window(inputs, is_buyer, labels)


def _windows(n: int, signal: float, seed: int = 0) -> tuple[Window, Window]:
    """The earlier and the latest window of the same kind of clients."""
    return _clients(n, signal, seed), _clients(n, signal, seed + 100)


CONFIG = CltvConfig(min_training_purchasers=20)


def test_the_learned_model_wins_where_behavior_carries_the_signal():
    earlier, latest = _windows(3000, signal=1.0)
    choice = select_cltv_model(earlier, latest, CONFIG, seed=1)
    m = choice.metrics
    assert choice.champion == "learned", choice.reason
    assert m["learned.purchases_rmse"] < 0.85 * m["btyd.purchases_rmse"]
    assert m["learned.spend_rmse"] < 0.85 * m["btyd.spend_rmse"]
    assert m["learned_is_champion"] == 1.0
    assert m["prospect.auc"] > 0.75
    assert "lower holdout error" in choice.reason
    assert choice.purchase_model is not None and choice.conversion_model is not None
    # The serving models are refit on both windows, stacked.
    assert choice.purchase_model.n_train_ == int(earlier.is_buyer.sum() + latest.is_buyer.sum())
    assert choice.conversion_model.n_train_ == int(
        (~earlier.is_buyer).sum() + (~latest.is_buyer).sum()
    )


def test_stacked_serving_rows_are_sampled_to_max_rows_in_proportion():
    earlier, latest = _windows(3000, signal=1.0)
    config = CltvConfig(min_training_purchasers=20, max_training_clients=1000)
    choice = select_cltv_model(earlier, latest, config, seed=1)
    assert choice.purchase_model is not None and choice.purchase_model.n_train_ == 1000
    assert choice.conversion_model is not None and choice.conversion_model.n_train_ == 1000


def test_bgnbd_stays_champion_when_behavior_adds_nothing():
    earlier, latest = _windows(3000, signal=0.0)
    for k, window in enumerate((earlier, latest)):
        rng = np.random.default_rng(5 + k)
        rate = rng.gamma(1.5, 1.0, len(window.inputs))
        window.inputs["bg_expected_purchases"] = rate  # BG/NBD knows the rate exactly here
        window.labels["purchases"] = rng.poisson(rate).astype(float)
        window.labels["spend"] = window.labels["purchases"] * 40.0
    choice = select_cltv_model(earlier, latest, CONFIG, seed=1)
    assert choice.champion == "btyd", choice.reason
    assert "not beaten" in choice.reason


def test_too_few_purchasers_fall_back_to_bgnbd_with_the_reason():
    earlier, latest = _windows(400, signal=1.0)
    earlier.labels.loc[:, :] = 0.0
    earlier.labels.iloc[:10] = [1.0, 40.0]
    choice = select_cltv_model(earlier, latest, CltvConfig(), seed=1)
    assert choice.champion == "btyd" and choice.purchase_model is None
    assert "min_training_purchasers" in choice.reason
    assert "btyd.purchases_rmse" in choice.metrics  # BG/NBD's own figures are still there


def test_a_single_window_of_history_serves_bgnbd_and_an_unjudged_prospect_model():
    latest = _clients(600, signal=1.0)
    choice = select_cltv_model(None, latest, CONFIG, seed=1)
    assert choice.champion == "btyd" and "two windows" in choice.reason
    assert choice.conversion_model is not None
    assert "prospect.auc" not in choice.metrics


def test_switched_off_learned_model_keeps_bgnbd_and_the_prospect_model():
    earlier, latest = _windows(1000, signal=1.0)
    config = CltvConfig(min_training_purchasers=20, learned_model=False)
    choice = select_cltv_model(earlier, latest, config, seed=1)
    assert choice.champion == "btyd" and choice.purchase_model is None
    assert "switched off" in choice.reason
    assert choice.conversion_model is not None


def test_the_selection_is_deterministic():
    earlier, latest = _windows(1000, signal=0.7)
    a = select_cltv_model(earlier, latest, CONFIG, seed=3)
    b = select_cltv_model(earlier, latest, CONFIG, seed=3)
    assert a.metrics == b.metrics and a.champion == b.champion
    pd.testing.assert_frame_equal(a.lift, b.lift)


def _drifted(window: Window, factor: float) -> Window:
    """The same clients with the behavioral feature's level scaled (calendar drift: more
    traffic, the same buyers)."""
    inputs = window.inputs.assign(intent=window.inputs["intent"] * factor)
    return Window(inputs, window.is_buyer, window.labels)


def test_prospects_take_the_latest_rate_when_the_classifier_level_drifts():
    earlier, latest = _windows(3000, signal=1.0)
    choice = select_cltv_model(earlier, _drifted(latest, 3.0), CONFIG, seed=1)
    m = choice.metrics
    assert m["prospect.level_corrected"] == 1.0
    # The classifier alone over-forecasts the drifted window; the leveled forecast is close.
    assert m["prospect.model_converters_bias"] > 0.15
    assert abs(m["prospect.converters_bias"]) < abs(m["prospect.model_converters_bias"])
    assert m["prospect.auc"] > 0.7  # the classifier's ranking (saturated beyond its range)
    conv = choice.conversion_model
    latest_rate = float((latest.labels["purchases"].to_numpy()[~latest.is_buyer] > 0).mean())
    assert conv is not None and conv.level_ == pytest.approx(latest_rate)
    raw = conv.predict_proba(_drifted(latest, 3.0).inputs[~latest.is_buyer])
    # over the population of prospects (models.scoring.level_prospects) the mean is the level
    assert shift_to_level(raw, conv.level_).mean() == pytest.approx(latest_rate, abs=1e-6)


def test_prospects_keep_the_classifier_level_when_it_forecasts_better():
    earlier, latest = _windows(3000, signal=1.0)
    # Twice the conversion in the latest window, announced by the feature: the level of the
    # earlier window's rate would miss it, the classifier's does not.
    hot = latest.labels.assign(
        purchases=latest.labels["purchases"] * 0 + (latest.inputs["intent"] > 0.6)
    )
    hot_latest = Window(latest.inputs, latest.is_buyer, hot)
    choice = select_cltv_model(earlier, hot_latest, CONFIG, seed=1)
    assert choice.metrics["prospect.level_corrected"] == 0.0
    assert choice.conversion_model is not None and choice.conversion_model.level_ is None


def test_decile_lift_by_hand():
    predicted = pd.DataFrame({"purchases": np.arange(20.0), "spend": np.arange(20.0) * 2})
    actual = pd.DataFrame({"purchases": np.ones(20), "spend": np.arange(20.0)})
    lift = decile_lift(predicted, actual)
    assert list(lift["decile"]) == list(range(1, 11)) and (lift["clients"] == 2).all()
    top = lift.iloc[0]  # the two highest predictions: rows 19 and 18
    assert top["predicted_spend"] == pytest.approx(37.0)
    assert top["actual_spend"] == pytest.approx(18.5)


def test_calibration_table_by_hand():
    p = np.array([0.05, 0.05, 0.55, 0.95, 1.0])
    happened = np.array([0, 1, 1, 1, 1])
    table = calibration_table(p, happened)
    assert list(table["clients"]) == [2, 1, 2]
    assert list(table["actual_rate"]) == [0.5, 1.0, 1.0]
    assert table["bin_low"].tolist() == [0.0, 0.5, 0.9]
