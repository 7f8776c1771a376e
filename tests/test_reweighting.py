"""Criterion reweighting: the "pow3r" method against a plain reference, both methods' invariants, option forms."""

import random

import pytest

from trl_rubric.reweighting import (
    CriterionReweighter,
    ReweightingConfig,
    pow3r_weights,
    reweight,
    reweighting_factors,
    reweighting_from,
)


def pow3r_reference(weights, categories, contrasts, hi, weight_floor):
    """Plain reference: per category, q_k = max(floor h_k, lam h_k r_k) with lam found by bisection so sum q = 1."""
    out = list(weights)
    for cat in set(categories):
        idx = [i for i, c in enumerate(categories) if c == cat]
        total = sum(abs(weights[i]) for i in idx)
        h = {i: abs(weights[i]) / total for i in idx}
        known = [i for i in idx if contrasts[i] is not None]
        mass = sum(h[i] for i in known)
        mean = sum(h[i] * contrasts[i] for i in known) / mass if mass else 0.0
        if mean <= 0:
            continue
        raw = {i: h[i] * (1.0 if contrasts[i] is None else min(hi, contrasts[i] / mean)) for i in idx}
        lo_lam, hi_lam = 0.0, 1e6
        for _ in range(200):
            lam = (lo_lam + hi_lam) / 2
            if sum(max(weight_floor * h[i], lam * raw[i]) for i in idx) > 1:
                hi_lam = lam
            else:
                lo_lam = lam
        for i in idx:
            q = max(weight_floor * h[i], lo_lam * raw[i])
            out[i] = total * q * (1 if weights[i] > 0 else -1)
    return out


def category_totals(weights, categories):
    totals = {}
    for w, c in zip(weights, categories, strict=True):
        totals[c] = totals.get(c, 0.0) + abs(w)
    return totals


@pytest.mark.parametrize("seed", range(20))
def test_pow3r_matches_the_bisection_reference_and_keeps_signs_and_category_totals(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    weights = [rng.choice([-3.0, -1.0, 1.0, 2.0, 5.0]) for _ in range(n)]
    categories = [rng.choice(["essential", "pitfall", None]) for _ in range(n)]
    contrasts = [rng.choice([None, 0.0, 0.0, 0.1, 0.3, 0.5]) for _ in range(n)]
    floor = rng.choice([0.0, 0.1, 0.5, 1.0])
    got = pow3r_weights(weights, categories, contrasts, hi=4.0, weight_floor=floor)
    assert got == pytest.approx(pow3r_reference(weights, categories, contrasts, 4.0, floor), abs=1e-7)
    assert all(g * w >= 0 for g, w in zip(got, weights, strict=True)), "no sign flips (0 only with a 0 floor)"
    assert category_totals(got, categories) == pytest.approx(category_totals(weights, categories))
    assert all(abs(g) >= floor * abs(w) - 1e-9 for g, w in zip(got, weights, strict=True))


def test_pow3r_puts_saturated_criteria_at_the_floor_and_differs_from_ours():
    weights, categories, contrasts = [3.0, 1.0], ["essential"] * 2, [0.0, 0.5]
    # Human shares 0.75 / 0.25; category mean contrast 0.125; ratios 0 and 4 (the cap): the saturated criterion keeps
    # 10% of its weight (0.3), the contrasting one takes the rest of the category's 4 points.
    assert pow3r_weights(weights, categories, contrasts, hi=4.0, weight_floor=0.1) == pytest.approx([0.3, 3.7])
    ours = reweight(weights, categories, reweighting_factors(contrasts, lo=0.25, hi=4.0, floor=0.05))
    assert ours == pytest.approx([0.75 * 4 / 2.75, 2.0 * 4 / 2.75])


def test_pow3r_keeps_human_weights_where_nothing_contrasts_or_all_contrast_alike():
    assert pow3r_weights([3.0, 1.0, -2.0], ["a", "a", "b"], [0.0, 0.0, 0.5], 4.0, 0.1) == [3.0, 1.0, -2.0]
    assert pow3r_weights([3.0, 1.0], ["a", "a"], [0.4, 0.4], 4.0, 0.1) == pytest.approx([3.0, 1.0])
    # An unknown contrast counts as the category's mean (ratio 1).
    assert pow3r_weights([1.0, 1.0], [None, None], [None, 0.3], 4.0, 0.1) == pytest.approx([1.0, 1.0])


def test_reweighter_smooths_each_prompts_spreads_over_visits():
    r = CriterionReweighter(ReweightingConfig(method="pow3r", ema_decay=0.5))
    texts, weights, cats = ["a", "b"], [1.0, 1.0], [None, None]
    contrasting = [[True, True], [True, False]]  # a saturated, b split
    first = r.group_weights("p", texts, weights, cats, contrasting)
    assert first == pytest.approx([0.1, 1.9])
    # Next visit b is saturated too; its smoothed spread is 0.25, still the only contrast: same weights.
    again = r.group_weights("p", texts, weights, cats, [[True, True], [True, True]])
    assert again == pytest.approx([0.1, 1.9])
    assert r.group_weights("other prompt", texts, weights, cats, [[True, True], [True, True]]) == [1.0, 1.0]


def test_reweighting_option_forms_stay_backward_compatible():
    assert reweighting_from(None) is None and reweighting_from(False) is None and reweighting_from("none") is None
    assert reweighting_from(True).method == "ours" and reweighting_from("ours").method == "ours"
    assert reweighting_from("True").method == "ours"
    assert reweighting_from("POW3R").method == "pow3r"
    with pytest.raises(ValueError, match="reweighting method is 'powr'"):
        reweighting_from("powr")
    with pytest.raises(ValueError, match="weight_floor is 1.5"):
        ReweightingConfig(method="pow3r", weight_floor=1.5)


def test_rubric_reward_with_pow3r_scores_each_group_with_the_pow3r_weights():
    import asyncio

    from trl_rubric.judges import RuleJudge
    from trl_rubric.rewards import RubricReward
    from trl_rubric.rubric import Rubric

    rules = {"mentions fever": "fever", "mentions dose": "dose"}
    rubric = [{"text": "mentions fever", "weight": 3.0}, {"text": "mentions dose", "weight": 1.0}]
    completions = ["fever dose", "fever", "fever dose", "fever"]
    reward = RubricReward(RuleJudge(rules), reweighting="pow3r", num_generations=4)
    got = asyncio.run(reward(prompts=["q"] * 4, completions=completions, rubric=[rubric] * 4))
    # Fever saturated (contrast 0), dose split (0.5): pow3r weights 0.3 and 3.7 (see the hand example above).
    weights = pow3r_weights([3.0, 1.0], [None, None], [0.0, 0.5], hi=4.0, weight_floor=0.1)
    expected = Rubric.from_any([{**c, "weight": w} for c, w in zip(rubric, weights, strict=True)])
    assert got == pytest.approx([expected.score([True, True]), expected.score([True, False])] * 2)
    assert got[1] == pytest.approx(0.3 / 4.0)
