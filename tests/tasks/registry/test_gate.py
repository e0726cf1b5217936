import json
import math
import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from slmops.tasks.core.config import GateConfig, TokenGateConfig
from slmops.tasks.registry.gate import GateDecision, decide, mcnemar_test, paired_bootstrap_test

# Permissive everywhere except what a test sets, and no paired test unless asked.
BASE = {
    "min_macro_f1_gain": 0.0,
    "max_class_recall_drop": 0.10,
    "min_accuracy": 0.80,
    "min_macro_f1": 0.80,
    "significance": "none",
    "alpha": 0.05,
}


def rules(**overrides) -> GateConfig:
    return GateConfig(**{**BASE, **overrides})


def report(
    accuracy: float,
    macro_f1: float,
    recalls: dict[str, float] | None = None,
    support: dict[str, int] | None = None,
) -> dict:
    """A classification_report-shaped dict with the given headline and per-class recalls."""
    recalls = recalls or {"x": 0.9, "y": 0.9}
    support = support or {}
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "per_class": {
            c: {"precision": r, "recall": r, "f1": r, "support": support.get(c, 20)}
            for c, r in recalls.items()
        },
    }


def pairs(only_challenger: int, only_champion: int, both: int = 50, neither: int = 10):
    """Row-aligned correctness arrays with the given discordant counts."""
    champ = [False] * only_challenger + [True] * only_champion + [True] * both + [False] * neither
    chall = [True] * only_challenger + [False] * only_champion + [True] * both + [False] * neither
    return np.array(champ), np.array(chall)


def failed(decision: GateDecision) -> list[str]:
    return [c["rule"] for c in decision.checks if not c["passed"]]


# --- first model ----------------------------------------------------------------------------


def test_first_model_promoted_when_floors_pass():
    d = decide(report(0.90, 0.88), None, rules(significance="mcnemar"))
    assert d.promote and d.reasons == []
    assert d.summary.startswith("promote: first model: no champion to compare")
    assert [c["rule"] for c in d.checks] == ["min_accuracy", "min_macro_f1"]


def test_first_model_refused_below_a_floor():
    d = decide(report(0.812, 0.88), None, rules(min_accuracy=0.85))
    assert not d.promote
    assert d.reasons == ["accuracy 0.8120 below floor 0.8500"]
    assert d.summary.startswith("refuse: first model: no champion to compare")


# --- each rule refuses on its own -----------------------------------------------------------


def test_accuracy_floor_alone_refuses():
    d = decide(report(0.79, 0.90), report(0.78, 0.85), rules())
    assert not d.promote and failed(d) == ["min_accuracy"]
    assert "accuracy 0.7900 below floor 0.8000" in d.reasons[0]


def test_macro_f1_floor_alone_refuses():
    d = decide(report(0.90, 0.79), report(0.89, 0.78), rules())
    assert not d.promote and failed(d) == ["min_macro_f1"]
    assert "macro-F1 0.7900 below floor 0.8000" in d.summary


def test_gain_rule_alone_refuses():
    d = decide(report(0.90, 0.9012), report(0.90, 0.9000), rules(min_macro_f1_gain=0.005))
    assert not d.promote and failed(d) == ["min_macro_f1_gain"]
    assert d.reasons == ["macro-F1 gain +0.0012 below the required +0.0050 (0.9000 → 0.9012)"]
    check = next(c for c in d.checks if c["rule"] == "min_macro_f1_gain")
    assert check["value"] == pytest.approx(0.0012) and check["threshold"] == 0.005


def test_equal_macro_f1_meets_a_zero_gain_despite_float_noise():
    d = decide(report(0.9, 0.3), report(0.9, 0.1 + 0.2), rules(min_macro_f1=0.0))
    assert d.promote, d.reasons


def test_recall_drop_alone_refuses():
    challenger = report(0.90, 0.90, {"card_arrival": 0.75, "other": 1.0})
    champion = report(0.90, 0.90, {"card_arrival": 0.90, "other": 0.85})
    d = decide(challenger, champion, rules())
    assert not d.promote and failed(d) == ["max_class_recall_drop"]
    assert d.reasons == [
        "recall of class card_arrival fell 0.150 (0.900 → 0.750), more than 0.100 allowed"
    ]


def test_recall_drop_lists_several_classes_worst_first():
    challenger = report(0.9, 0.9, {"a": 0.5, "b": 0.6, "c": 0.9})
    champion = report(0.9, 0.9, {"a": 0.9, "b": 0.9, "c": 0.9})
    d = decide(challenger, champion, rules())
    assert d.reasons == [
        "recall fell more than 0.100 in 2 classes: a fell 0.400 (0.900 → 0.500), "
        "b fell 0.300 (0.900 → 0.600)"
    ]


def test_recall_drop_at_the_limit_passes_and_support_zero_is_skipped():
    # 0.9 → 0.8 is exactly the allowed 0.10 (in floats 0.09999999999999998 or so).
    challenger = report(0.9, 0.9, {"a": 0.8, "gone": 0.0}, support={"gone": 0})
    champion = report(0.9, 0.9, {"a": 0.9, "gone": 1.0}, support={"gone": 0})
    d = decide(challenger, champion, rules())
    assert d.promote, d.reasons
    check = next(c for c in d.checks if c["rule"] == "max_class_recall_drop")
    assert check["value"] == pytest.approx(0.1)
    assert "within 0.100" in check["detail"]


def test_new_class_without_champion_recall_is_skipped():
    challenger = report(0.9, 0.9, {"a": 0.9, "new": 0.1})
    d = decide(challenger, report(0.9, 0.9, {"a": 0.9}), rules())
    assert d.promote, d.reasons


def test_significance_alone_refuses():
    champ, chall = pairs(10, 8)  # better by 2 rows: not significant
    d = decide(
        report(0.9, 0.9),
        report(0.9, 0.9),
        rules(significance="mcnemar"),
        challenger_correct=chall,
        champion_correct=champ,
    )
    assert not d.promote and failed(d) == ["significance"]
    assert d.reasons[0].startswith(
        "McNemar p=0.815 ≥ alpha 0.05: the difference is not significant"
    )
    assert d.significance["method"] == "exact binomial"


def test_every_failure_is_reported_together():
    challenger = report(0.70, 0.70, {"a": 0.5})
    d = decide(challenger, report(0.9, 0.9, {"a": 0.9}), rules())
    assert failed(d) == [
        "min_accuracy",
        "min_macro_f1",
        "min_macro_f1_gain",
        "max_class_recall_drop",
    ]
    assert len(d.reasons) == 4 and d.summary == "refuse: " + "; ".join(d.reasons)


def test_all_rules_pass_promotes_with_a_one_line_summary():
    champ, chall = pairs(30, 5)
    d = decide(
        report(0.92, 0.91),
        report(0.90, 0.89),
        rules(significance="mcnemar"),
        challenger_correct=chall,
        champion_correct=champ,
    )
    assert d.promote and d.reasons == []
    assert [c["rule"] for c in d.checks] == [
        "min_accuracy",
        "min_macro_f1",
        "min_macro_f1_gain",
        "max_class_recall_drop",
        "significance",
    ]
    assert d.summary == "promote: macro-F1 0.9100 vs champion 0.8900 (+0.0200), all 5 checks passed"
    assert "\n" not in d.summary
    json.dumps(d.to_dict())  # ledger-ready
    assert d.to_dict()["significance"]["only_challenger_correct"] == 30


def test_significance_none_skips_the_test():
    champ, chall = pairs(10, 8)
    d = decide(
        report(0.9, 0.9),
        report(0.9, 0.9),
        rules(significance="none"),
        challenger_correct=chall,
        champion_correct=champ,
    )
    assert d.promote and d.significance is None
    check = d.checks[-1]
    assert check["rule"] == "significance" and check["passed"] and check["value"] is None
    assert "skipped" in check["detail"]


def test_significant_but_worse_challenger_is_refused():
    champ, chall = pairs(5, 30)
    d = decide(
        report(0.9, 0.9),
        report(0.9, 0.9),
        rules(significance="mcnemar"),
        challenger_correct=chall,
        champion_correct=champ,
    )
    assert not d.promote and "in the champion's favour" in d.reasons[0]


def test_mcnemar_from_predictions_when_no_correctness_given():
    y = np.array(["a", "b"] * 40)
    champion_pred = y.copy()
    champion_pred[:30] = np.where(y[:30] == "a", "b", "a")  # champion wrong on the first 30
    d = decide(
        report(0.9, 0.9),
        report(0.8, 0.8),
        rules(significance="mcnemar"),
        y_true=y,
        challenger_pred=y,
        champion_pred=champion_pred,
    )
    assert d.promote, d.reasons
    assert d.significance["only_challenger_correct"] == 30


def test_missing_per_row_data_is_an_error_not_a_refusal():
    with pytest.raises(ValueError, match=r"mcnemar.*needs"):
        decide(report(0.9, 0.9), report(0.8, 0.8), rules(significance="mcnemar"))
    with pytest.raises(ValueError, match=r"bootstrap.*needs"):
        decide(report(0.9, 0.9), report(0.8, 0.8), rules(significance="bootstrap"))
    with pytest.raises(ValueError, match="champion report has no 'macro_f1'"):
        decide(report(0.9, 0.9), {"accuracy": 0.9, "per_class": {}}, rules())


# --- McNemar --------------------------------------------------------------------------------


def test_mcnemar_30_vs_5_is_significant_chi_square():
    res = mcnemar_test(*pairs(30, 5))
    assert res["method"] == "chi-square (continuity-corrected)"
    assert (res["only_challenger_correct"], res["only_champion_correct"]) == (30, 5)
    assert res["discordant"] == 35 and res["n"] == 35 + 60
    # (|30 − 5| − 1)² / 35 = 576 / 35 = 16.457; 1-dof chi-square tail = erfc(√(x/2)) ≈ 5.0e-5
    assert res["statistic"] == pytest.approx(576 / 35, abs=1e-6)
    assert res["p_value"] == pytest.approx(math.erfc(math.sqrt(576 / 35 / 2)), rel=1e-9)
    assert res["p_value"] == pytest.approx(stats.chi2.sf(576 / 35, 1), rel=1e-9)
    assert res["p_value"] < 1e-4


def test_mcnemar_10_vs_8_is_not_significant_exact():
    res = mcnemar_test(*pairs(10, 8))
    assert res["method"] == "exact binomial"
    # Two-sided: 2 · P(X ≥ 10), X ~ Binomial(18, ½) = 2 · Σ_{k=10..18} C(18, k) / 2¹⁸ = 0.8145
    hand = 2 * sum(math.comb(18, k) for k in range(10, 19)) / 2**18
    assert res["p_value"] == pytest.approx(hand, rel=1e-9)
    assert res["p_value"] == pytest.approx(0.814529, abs=1e-6)


def test_mcnemar_switches_branch_at_25_discordant_pairs():
    assert mcnemar_test(*pairs(20, 4))["method"] == "exact binomial"
    res = mcnemar_test(*pairs(20, 5))
    assert res["method"] == "chi-square (continuity-corrected)"
    assert res["p_value"] == pytest.approx(stats.chi2.sf(14**2 / 25, 1), rel=1e-9)
    # Exact at 24: scipy's two-sided binomial test agrees.
    exact = mcnemar_test(*pairs(20, 4))["p_value"]
    assert exact == pytest.approx(stats.binomtest(20, 24, 0.5).pvalue, rel=1e-12)


def test_mcnemar_without_discordant_pairs_and_bad_input():
    same = np.array([True, False, True])
    assert mcnemar_test(same, same)["p_value"] == 1.0
    res = mcnemar_test(*pairs(15, 15, both=0))  # 30 discordant, balanced
    assert res["statistic"] == 0.0 and res["p_value"] == 1.0
    with pytest.raises(ValueError, match="same test rows"):
        mcnemar_test(np.ones(3, bool), np.ones(4, bool))


# --- paired bootstrap -----------------------------------------------------------------------

LABELS = ["a", "b", "c", "d"]


def predictions(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array(LABELS)[np.arange(n) % 4]
    wrong = rng.random(n) >= accuracy
    shifted = np.array(LABELS)[(np.arange(n) + 1 + rng.integers(0, 3, n)) % 4]
    return y, np.where(wrong, shifted, y)


def test_bootstrap_detects_a_clear_improvement():
    y, champion = predictions(400, 0.70, seed=1)
    _, challenger = predictions(400, 0.90, seed=2)
    res = paired_bootstrap_test(y, champion, challenger, LABELS, samples=300, seed=0)
    assert res["p_value"] < 0.01
    assert 0 < res["ci_low"] < res["gain"] < res["ci_high"]
    assert res["champion_macro_f1"] == pytest.approx(
        f1_score(y, champion, average="macro"), abs=1e-6
    )
    assert res["challenger_macro_f1"] == pytest.approx(
        f1_score(y, challenger, average="macro"), abs=1e-6
    )


def test_bootstrap_finds_no_improvement_between_equals():
    y, champion = predictions(400, 0.85, seed=1)
    _, challenger = predictions(400, 0.85, seed=2)
    res = paired_bootstrap_test(y, champion, challenger, LABELS, samples=300, seed=0)
    assert res["p_value"] > 0.05
    assert res["ci_low"] < 0 < res["ci_high"]
    # Seeded: the same call gives the same answer.
    assert paired_bootstrap_test(y, champion, challenger, LABELS, samples=300, seed=0) == res


def test_bootstrap_matches_sklearn_when_predictions_leave_the_label_set():
    y = np.array(["a", "a", "b", "b", "c"])
    champion = np.array(["a", "zzz", "b", "a", "c"])
    res = paired_bootstrap_test(y, champion, y, ["a", "b", "c"], samples=100)
    assert res["champion_macro_f1"] == pytest.approx(
        f1_score(y, champion, average="macro"), abs=1e-6
    )
    assert res["challenger_macro_f1"] == 1.0


def test_bootstrap_is_vectorised_enough_for_the_real_test_split():
    rng = np.random.default_rng(0)
    labels = [f"intent_{i}" for i in range(77)]
    y = np.array(labels)[rng.integers(0, 77, 3000)]
    noise = np.array(labels)[rng.integers(0, 77, 3000)]
    champion = np.where(rng.random(3000) < 0.90, y, noise)
    challenger = np.where(rng.random(3000) < 0.92, y, noise)
    start = time.perf_counter()
    paired_bootstrap_test(y, champion, challenger, labels, samples=2000)
    assert time.perf_counter() - start < 10  # about 0.3 s on 2 cores


def test_gate_with_bootstrap():
    y, champion = predictions(400, 0.70, seed=1)
    _, challenger = predictions(400, 0.90, seed=2)
    cfg = rules(
        significance="bootstrap",
        bootstrap_samples=200,
        min_accuracy=0.0,
        min_macro_f1=0.0,
        max_class_recall_drop=1.0,
    )
    d = decide(
        report(0.9, 0.9),
        report(0.7, 0.7),
        cfg,
        y_true=y,
        challenger_pred=challenger,
        champion_pred=champion,
    )
    assert d.promote, d.reasons
    assert d.significance["method"] == "paired bootstrap (macro-F1)"
    assert "paired bootstrap p=0 < alpha 0.05" in d.checks[-1]["detail"]
    # The same two models the other way round: refused by the test too.
    d = decide(
        report(0.9, 0.9),
        report(0.9, 0.9),
        cfg,
        y_true=y,
        challenger_pred=champion,
        champion_pred=challenger,
    )
    assert failed(d) == ["significance"]
    assert "is not significant" in d.reasons[0]


# --- token classification: entity-level metrics under their own names ------------------------

TOKEN_BASE = {
    "min_entity_f1_gain": 0.0,
    "max_type_recall_drop": 0.10,
    "min_entity_f1": 0.30,
    "min_exact_match": 0.20,
    "significance": "none",
}
# Words of the sequence gate that must not describe an entity-level comparison.
CLASSIFICATION_WORDS = ("macro-F1", "accuracy", "class ", "classes")


def token_rules(**overrides) -> TokenGateConfig:
    return TokenGateConfig(**{**TOKEN_BASE, **overrides})


def entity_report(f1: float, exact: float, macro_f1: float, recalls: dict | None = None) -> dict:
    """An entity report as the token evaluation writes it: micro `f1`, `macro_f1` over
    the types, `accuracy` = share of texts whose entities are exactly right."""
    recalls = recalls or {"person": 0.5, "location": 0.5}
    return {
        "precision": f1,
        "recall": f1,
        "f1": f1,
        "macro_f1": macro_f1,
        "accuracy": exact,
        "per_class": {
            t: {"precision": r, "recall": r, "f1": r, "support": 20, "predicted": 20}
            for t, r in recalls.items()
        },
    }


def words_of(d: GateDecision) -> str:
    return " ".join([d.summary, *d.reasons, *(c["detail"] for c in d.checks)])


def test_ner_first_model_names_entity_f1_and_exact_match():
    d = decide(entity_report(0.45, 0.56, 0.34), None, token_rules())
    assert d.promote, d.reasons
    assert [c["rule"] for c in d.checks] == ["min_entity_f1", "min_exact_match"]
    assert d.summary == (
        "promote: first model: no champion to compare; entity F1 0.4500 ≥ floor 0.3000; "
        "exact match 0.5600 ≥ floor 0.2000"
    )
    assert d.metrics == {
        "entity_f1": {"challenger": 0.45, "champion": None},
        "exact_match": {"challenger": 0.56, "champion": None},
    }
    assert not any(w in words_of(d) for w in CLASSIFICATION_WORDS), words_of(d)


def test_ner_floors_refuse_under_their_names():
    d = decide(entity_report(0.25, 0.10, 0.60), None, token_rules())
    assert not d.promote and failed(d) == ["min_entity_f1", "min_exact_match"]
    assert d.reasons == [
        "entity F1 0.2500 below floor 0.3000",
        "exact match 0.1000 below floor 0.2000",
    ]


def test_ner_gain_compares_entity_f1_not_the_mean_over_types():
    # Entity F1 up, macro-F1 over the types down: the entity F1 decides.
    up = decide(entity_report(0.46, 0.5, 0.30), entity_report(0.45, 0.5, 0.34), token_rules())
    assert up.promote, up.reasons
    assert [c["rule"] for c in up.checks] == [
        "min_entity_f1",
        "min_exact_match",
        "min_entity_f1_gain",
        "max_type_recall_drop",
        "significance",
    ]
    assert up.summary == (
        "promote: entity F1 0.4600 vs champion 0.4500 (+0.0100), all 5 checks passed"
    )
    assert up.metrics["entity_f1"] == {"challenger": 0.46, "champion": 0.45}
    assert up.metrics["exact_match"] == {"challenger": 0.5, "champion": 0.5}
    # Entity F1 down, macro-F1 up: refused, and said so in entity terms.
    down = decide(entity_report(0.44, 0.5, 0.40), entity_report(0.45, 0.5, 0.34), token_rules())
    assert failed(down) == ["min_entity_f1_gain"]
    assert down.reasons == ["entity F1 gain -0.0100 below the required +0.0000 (0.4500 → 0.4400)"]
    assert not any(w in words_of(down) for w in CLASSIFICATION_WORDS), words_of(down)


def test_ner_recall_rule_is_per_entity_type():
    d = decide(
        entity_report(0.45, 0.5, 0.34, {"person": 0.2, "location": 0.6}),
        entity_report(0.45, 0.5, 0.34, {"person": 0.5, "location": 0.5}),
        token_rules(),
    )
    assert failed(d) == ["max_type_recall_drop"]
    assert d.reasons == [
        "recall of entity type person fell 0.300 (0.500 → 0.200), more than 0.100 allowed"
    ]
    ok = decide(entity_report(0.45, 0.5, 0.34), entity_report(0.45, 0.5, 0.34), token_rules())
    assert "no entity type recall fell (2 entity types compared)" in words_of(ok)


def test_ner_mcnemar_counts_texts_exactly_right():
    champ, chall = pairs(30, 5)
    d = decide(
        entity_report(0.50, 0.6, 0.34),
        entity_report(0.45, 0.5, 0.34),
        token_rules(significance="mcnemar"),
        challenger_correct=chall,
        champion_correct=champ,
    )
    assert d.promote, d.reasons
    assert (
        "challenger alone exactly right on 30 texts, champion alone on 5" in d.checks[-1]["detail"]
    )
    json.dumps(d.to_dict())  # ledger-ready, metrics included


def test_the_sequence_gate_names_its_metrics_too():
    d = decide(report(0.90, 0.88), report(0.89, 0.87), rules())
    assert d.metrics == {
        "accuracy": {"challenger": 0.90, "champion": 0.89},
        "macro_f1": {"challenger": 0.88, "champion": 0.87},
    }
