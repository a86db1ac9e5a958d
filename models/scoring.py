"""Each client's scores from the chosen models: BG/NBD or the learned model for buyers, the
conversion model for prospects (clients who never bought).

Buyers: p_alive from BG/NBD; under the learned champion, purchases and spend over the window
h come from the learned model and are carried to the CLTV horizon along the client's own
BG/NBD time curve (its expected purchases over the horizon, and discounted, per expected
purchase in the window). Prospects: p_alive is null (no first purchase, nothing to be alive
for); p_purchase is the conversion model's; their CLTV is p_purchase times what a client who
converts halfway through the window is worth (first purchase plus the repeat purchases BG/NBD
expects of a new client, at the population's mean spend), discounted like everyone's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.cltv import CltvModel
from models.learned import ConversionModel, PurchaseModel, shift_to_level
from models.selection import CHAMPIONS

__all__ = ["SCORED_COLUMNS", "SCORE_SOURCES", "level_prospects", "score_clients"]

SCORE_SOURCES = ("btyd", "learned", "prospect")
SCORED_COLUMNS = (
    "p_alive",
    "p_purchase",
    "expected_purchases",
    "expected_avg_value",
    "predicted_cltv",
    "cltv_model",
)


def score_clients(
    btyd_model: CltvModel,
    btyd: pd.DataFrame,
    inputs: pd.DataFrame | None,
    is_buyer: np.ndarray,
    window_days: float,
    champion: str = "btyd",
    purchase_model: PurchaseModel | None = None,
    conversion_model: ConversionModel | None = None,
) -> pd.DataFrame:
    """Scores of every client over the model's horizon; p_purchase over `window_days`.

    Parameters
    ----------
    btyd_model : CltvModel
        Fitted on the history up to tonight.
    btyd : pandas.DataFrame
        `BTYD_COLUMNS` of every client (index client_id).
    inputs : pandas.DataFrame or None
        `models.learned.model_inputs` of the same clients with the BG/NBD signals over
        `window_days`; needed for the learned and conversion models only.
    is_buyer : ndarray of bool
        Per row of `btyd`: bought at least once.
    window_days : float
        The window the learned models were trained on (`cltv.holdout_days`).
    champion : {"btyd", "learned"}
        Which model scores the buyers; "learned" needs `purchase_model`.
    purchase_model, conversion_model : fitted models or None
        Without a conversion model prospects get null p_purchase, purchases and CLTV.

    Returns
    -------
    pandas.DataFrame
        Index of `btyd`; columns `SCORED_COLUMNS` (cltv_model one of `SCORE_SOURCES`).
    """
    is_buyer = np.asarray(is_buyer, dtype=bool)
    if len(is_buyer) != len(btyd):
        raise ValueError("is_buyer must have one value per client")
    if champion not in CHAMPIONS:
        raise ValueError(f"champion must be one of {CHAMPIONS}, got {champion!r}")
    if champion == "learned" and purchase_model is None:
        raise ValueError("the learned champion needs its purchase model")
    if inputs is None and (champion == "learned" or conversion_model is not None):
        raise ValueError("the learned and conversion models need their inputs")
    out = pd.DataFrame(index=btyd.index, columns=list(SCORED_COLUMNS), dtype="float64")
    out["cltv_model"] = "prospect"
    buyers = btyd.index[is_buyer]
    if len(buyers):
        scored = _buyers(
            btyd_model, btyd.loc[buyers], inputs, window_days, champion, purchase_model
        )
        out.loc[buyers, list(scored.columns)] = scored
        out.loc[buyers, "cltv_model"] = champion
    prospects = btyd.index[~is_buyer]
    if len(prospects) and conversion_model is not None and inputs is not None:
        out.loc[prospects, list(SCORED_COLUMNS[:-1])] = _prospects(
            btyd_model, inputs.loc[prospects], window_days, conversion_model
        )
    return out


def _buyers(
    model: CltvModel,
    btyd: pd.DataFrame,
    inputs: pd.DataFrame | None,
    window_days: float,
    champion: str,
    purchase_model: PurchaseModel | None,
) -> pd.DataFrame:
    base = model.predict(btyd)
    if champion == "btyd" or purchase_model is None or inputs is None:
        base["p_purchase"] = model.p_purchase(btyd, window_days)
        return base
    rows = inputs.loc[btyd.index]
    learned = purchase_model.predict(rows)
    in_window = rows["bg_expected_purchases"].to_numpy(float)  # the BG/NBD signal over the window
    discounted = base["predicted_cltv"] / base["expected_avg_value"]
    fallback = model.horizon_days / window_days
    ok = in_window > 1e-12
    to_horizon = np.where(ok, base["expected_purchases"] / np.where(ok, in_window, 1), fallback)
    to_discounted = np.where(ok, discounted / np.where(ok, in_window, 1), fallback)
    n, spend = learned["purchases"].to_numpy(float), learned["spend"].to_numpy(float)
    per_purchase = np.where(n > 1e-9, spend / np.maximum(n, 1e-9), base["expected_avg_value"])
    return pd.DataFrame(
        {
            "p_alive": base["p_alive"],
            "p_purchase": learned["p_purchase"].to_numpy(float),
            "expected_purchases": n * to_horizon,
            "expected_avg_value": per_purchase,
            "predicted_cltv": spend * to_discounted,
        },
        index=btyd.index,
    )


def level_prospects(
    scores: pd.DataFrame,
    btyd_model: CltvModel,
    window_days: float,
    conversion_model: ConversionModel | None,
) -> pd.DataFrame:
    """`score_clients` rows of every client tonight with the prospects' forecasts at the
    conversion model's `level_` (when set): their log-odds shifted by one constant so that
    the mean p_purchase over all prospects is `level_`, their expected purchases and CLTV
    following p_purchase (`models.learned.shift_to_level`). It needs every prospect at once,
    so it runs on the whole population, after scoring in one batch or in shards."""
    level = getattr(conversion_model, "level_", None)
    prospect = (scores["cltv_model"] == "prospect").to_numpy()
    if level is None or not prospect.any():
        return scores
    p = shift_to_level(scores.loc[prospect, "p_purchase"].to_numpy(dtype=float), level)
    purchases, discounted, value = btyd_model.new_client_outlook(window_days / 2)
    out = scores.copy()
    out.loc[prospect, "p_purchase"] = p
    out.loc[prospect, "expected_purchases"] = p * purchases
    out.loc[prospect, "predicted_cltv"] = p * value * discounted
    return out


def _prospects(
    model: CltvModel, inputs: pd.DataFrame, window_days: float, conversion: ConversionModel
) -> pd.DataFrame:
    p = conversion.predict_proba(inputs)
    purchases, discounted, value = model.new_client_outlook(window_days / 2)
    return pd.DataFrame(
        {
            "p_alive": np.nan,
            "p_purchase": p,
            "expected_purchases": p * purchases,
            "expected_avg_value": value,
            "predicted_cltv": p * value * discounted,
        },
        index=inputs.index,
    )
