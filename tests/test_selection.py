"""The declared selection rule: the sweeper's score orders trials exactly as the selection does, the fallback is
the trial closest to the target, and a trial read on the test split is never selected from."""

import itertools
import random

import pytest

from cdistill.selection import Rule, SelectionError, Trial, feasible, objective, select


def trial(n, acc, rate, split="validation", **more):
    summary = {"accuracy_sampled": acc, "never_exceeded_rate": rate, "satisfaction_rate": rate,
               "accuracy_greedy": acc, "split": split, **more}
    return Trial(n, (f"optim.lr={n}",), summary)


def brute_select(trials, rule):
    """The rule as its text says it, by enumeration: the feasible trials' best metric, else the best rate."""
    ok = [t for t in trials if t.summary[rule.constraint_metric] >= rule.target]
    pool, key = (ok, lambda t: t.summary[rule.metric]) if ok else (
        trials, lambda t: (t.summary[rule.constraint_metric], t.summary[rule.metric]))
    best = max(key(t) for t in pool)
    return min(t.number for t in pool if key(t) == best), bool(ok)


def test_select_follows_the_rule_and_the_sweepers_score_orders_trials_the_same_way():
    rng = random.Random(0)
    rule = Rule(target=0.6)
    for _ in range(300):
        # values on a coarse grid, so that ties (broken by the earlier trial) happen
        trials = [trial(i, rng.choice([0.2, 0.3, 0.35, 0.4]), rng.choice([0.4, 0.55, 0.6, 0.7]))
                  for i in range(rng.randint(1, 7))]
        chosen, met = select(trials, rule)
        assert (chosen.number, met) == brute_select(trials, rule)
        best_score = max(objective(t.summary, rule) for t in trials)
        assert objective(chosen.summary, rule) == best_score  # the sweeper's best is the selected trial
        for a, b in itertools.product(trials, repeat=2):  # every feasible trial scores above every infeasible one
            if feasible(a.summary, rule) and not feasible(b.summary, rule):
                assert objective(a.summary, rule) > objective(b.summary, rule)


def test_without_a_feasible_trial_the_closest_to_the_target_is_selected_and_said_so():
    rule = Rule(target=0.9)
    chosen, met = select([trial(0, 0.5, 0.6), trial(1, 0.3, 0.8), trial(2, 0.4, 0.8)], rule)
    assert (chosen.number, met) == (2, False)
    assert -2 <= objective(chosen.summary, rule) < -1


def test_a_trial_evaluated_on_the_test_split_is_refused_not_selected_from():
    trials = [trial(0, 0.5, 0.9), trial(1, 0.9, 0.9, split="test")]
    with pytest.raises(SelectionError, match="trial 1 .* test split"):
        select(trials, Rule())
    old_style = Trial(2, (), {"accuracy_sampled": 0.9, "never_exceeded_rate": 0.9})  # no split: a test read
    with pytest.raises(SelectionError, match="test split"):
        select([old_style], Rule())


def test_a_summary_without_the_declared_metric_is_refused_in_one_line():
    with pytest.raises(SelectionError, match="'success_rate'"):
        objective({"accuracy_sampled": 0.5, "never_exceeded_rate": 0.5}, Rule(metric="success_rate"))
    with pytest.raises(SelectionError, match="no finished trial"):
        select([], Rule())


def test_the_rule_reads_as_declared():
    text = Rule("accuracy_sampled", "never_exceeded_rate", 0.6).describe()
    assert "highest validation accuracy_sampled" in text and "at least 0.6" in text
