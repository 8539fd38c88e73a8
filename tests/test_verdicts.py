"""The verdict machinery of ``cdistill report``: declared comparisons only, one t model per number with the seeds'
variance in it, Holm's correction, equivalence by TOST, no method verdict from one seed, intervals of rates that do
not collapse at 0 or 1, and no comparison between runs that measure C(y) against different teachers.

The null simulations draw what a comparison of trained models looks like: each problem's difficulty from a Beta
distribution (shared by every method: the problems are the same), each trained model (one per method and seed) a
random shift of the logit (the seed effect) with its own per-problem deviation, and Bernoulli samples per problem.
Each simulated comparison draws new problems and new seeds."""

import math

import numpy as np
import pytest
import yaml
from test_report import replicate

from cdistill.eval.plots import pareto_series, point_label
from cdistill.eval.replicates import finished_runs, group_runs
from cdistill.eval.report import Declaration, pairs, report_main, write_report
from cdistill.eval.stats import (
    RUNS,
    declared_verdicts,
    group_interval,
    holm,
    method_difference,
    paired_difference,
    rate_interval,
    wilson_interval,
)

ALPHA = 0.05
N, K, S = 200, 4, 5  # problems, samples per problem, seeds per method
SEED_SD = 0.2  # the seed effect on the logit: seeds' sampled accuracy ~0.04 apart (README: 0.315, 0.250, 0.306)
MODEL_SD = 0.3  # a trained model's own per-problem deviation on the logit


def slack(r: int, level: float = ALPHA) -> float:
    """Three Monte Carlo standard errors of a rate ``level`` estimated from ``r`` simulations."""
    return 3 * math.sqrt(level * (1 - level) / r)


def problems(rng, r: int) -> np.ndarray:
    """[R, N] chances of a sampled answer being right, one set of problems per simulated comparison."""
    return np.clip(rng.beta(1.2, 2.0, size=(r, N)), 1e-6, 1 - 1e-6)


def trained(rng, chance: np.ndarray, shift: float = 0.0, seeds: int = S) -> np.ndarray:
    """[R, seeds, N] per-problem sampled accuracy of one method's trained models (``shift``: the method's effect on
    the logit)."""
    r = chance.shape[0]
    z = (np.log(chance / (1 - chance))[:, None, :] + shift + rng.normal(0, SEED_SD, (r, seeds, 1))
         + rng.normal(0, MODEL_SD, (r, seeds, N)))
    return rng.binomial(K, 1 / (1 + np.exp(-z))) / K


def declared(a: np.ndarray, b: np.ndarray, seeds_a, seeds_b, margin=None):
    """The declared verdict of one comparison A vs B on sampled accuracy, as the report decides it."""
    d = method_difference(a, b, seeds_a, seeds_b, rate=True)
    return declared_verdicts([d], True, [("A", "B")], ALPHA, margin)[0].text, d


@pytest.mark.parametrize(("seeds_a", "seeds_b"), [(list(range(S)), list(range(S))),  # paired by seed
                                                  (list(range(S)), list(range(S, 2 * S)))])  # no common seed
def test_null_false_verdict_rate_is_at_most_the_nominal_level(seeds_a, seeds_b):
    rng = np.random.default_rng(0)
    r = 1000
    chance = problems(rng, r)
    a, b = trained(rng, chance), trained(rng, chance)  # the same method twice: every verdict is false
    false = naive = 0
    for i in range(r):
        text, d = declared(a[i], b[i], seeds_a, seeds_b)
        assert d.model != RUNS
        false += "better" in text
        # what the report did before: average each side over its seeds, compare problem by problem
        naive += paired_difference(a[i].mean(0), b[i].mean(0)).p_value <= ALPHA
    assert false / r <= ALPHA + slack(r)
    # the simulation's seed effect is large enough to catch a standard error without the seeds' variance
    assert naive / r > 0.2


def test_holm_keeps_the_family_wise_rate_of_three_null_comparisons():
    # cmdp against three baselines, all four the same method: any verdict is a false one
    rng = np.random.default_rng(1)
    r = 1000
    chance = problems(rng, r)
    groups = [trained(rng, chance) for _ in range(4)]
    seeds = list(range(S))
    any_false = any_raw = 0
    for i in range(r):
        diffs = [method_difference(groups[0][i], g[i], seeds, seeds, rate=True) for g in groups[1:]]
        verdicts = declared_verdicts(diffs, True, [("cmdp", n) for n in ("lag", "soft", "grpo")], ALPHA)
        any_false += any("better" in v.text for v in verdicts)
        any_raw += any(d.p_value <= ALPHA for d in diffs)
    assert any_false / r <= ALPHA + slack(r)
    assert any_raw / r > ALPHA + slack(r)  # uncorrected, three looks would break the bound (0.12 here)


@pytest.mark.parametrize(("seeds_a", "seeds_b"), [(list(range(S)), list(range(S))),
                                                  (list(range(S)), list(range(S, 2 * S)))])
def test_a_real_difference_is_detected_most_of_the_time(seeds_a, seeds_b):
    rng = np.random.default_rng(2)
    r = 200
    chance = problems(rng, r)
    a, b = trained(rng, chance, shift=0.6), trained(rng, chance)
    gap = float((a - b).mean())
    assert 0.09 < gap < 0.12  # a difference of about 0.1 in sampled accuracy
    found = [declared(a[i], b[i], seeds_a, seeds_b)[0] for i in range(r)]
    assert sum(t == "A better" for t in found) / r >= 0.8
    assert not any(t == "B better" for t in found)


def additive(rng, r: int, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Two methods whose sampled accuracy differs by exactly ``delta`` on every problem (on the probability scale,
    so the true difference is known): base chance in [0.1, 0.8], a seed effect of sd 0.02 (cut at ±0.08)."""
    base = 0.1 + 0.7 * rng.beta(2, 2, size=(r, 1, N))

    def method(shift):
        seed = np.clip(rng.normal(0, 0.02, size=(r, S, 1)), -0.08, 0.08)
        return rng.binomial(K, base + shift + seed) / K

    return method(delta), method(0.0)


def test_equivalence_is_claimed_at_the_margin_at_most_alpha_of_the_time_and_often_inside_it():
    rng = np.random.default_rng(3)
    r, margin, seeds = 1000, 0.06, list(range(S))
    a, b = additive(rng, r, margin)  # exactly at the margin: "equivalent" would be false
    false = sum("equivalent" in declared(a[i], b[i], seeds, seeds, margin)[0] for i in range(r))
    assert false / r <= ALPHA + slack(r)
    a, b = additive(rng, 200, 0.0)  # equal methods: equivalence within ±0.06 is there to be found
    texts = [declared(a[i], b[i], seeds, seeds, margin)[0] for i in range(200)]
    assert sum(t == "equivalent within ±0.06" for t in texts) / 200 >= 0.7
    assert sum("better" in t for t in texts) / 200 <= ALPHA + slack(200)  # equal methods: any "better" is false


def test_no_detectable_difference_is_not_equivalence():
    # a few problems, a wide interval: neither a difference nor an equivalence can be claimed
    rng = np.random.default_rng(4)
    a, b = rng.binomial(K, 0.5, size=(S, 12)) / K, rng.binomial(K, 0.5, size=(S, 12)) / K
    text, d = declared(a, b, list(range(S)), list(range(S)), margin=0.02)
    assert text == "no detectable difference" and d.high - d.low > 0.04


def test_holm_adjusted_p_values_match_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the running 0.06
    adjusted, _ = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, 0.01])[0] == pytest.approx([0.2, 0.02])  # 0.01 x 2; then 0.2 x 1
    assert holm([0.7, 0.5])[0] == pytest.approx([1.0, 1.0])  # 0.5 x 2 = 1.0; 0.7 x 1 raised to the running 1.0
    # with equivalence tests: two comparisons (difference p, TOST p) = (0.01, 0.3) and (0.2, 0.001). Sorted: TOST 2
    # 0.001 x 2 = 0.002 (both comparisons still hold an untested hypothesis); difference 1 0.01 x 2 = 0.02;
    # difference 2 0.2 x 2 = 0.4 (comparison 1's TOST is still in play); TOST 1 0.3 x 1, raised to 0.4
    diff, eq = holm([0.01, 0.2], [0.3, 0.001])
    assert diff == pytest.approx([0.02, 0.4]) and eq == pytest.approx([0.4, 0.002])


def test_holm_decides_the_declared_verdicts():
    # three comparisons with raw p 0.01, 0.02, 0.04 (t at large df): Holm 0.03, 0.04, 0.04 -> all three declared at
    # 0.05; with raw 0.01, 0.03, 0.04: 0.03, 0.06, 0.06 -> only the first
    from cdistill.eval.stats import Difference, t_quantile

    def with_p(p):
        return Difference(t_quantile(1 - p / 2, 1e9) * 0.01, 0.01, 1e9, 500, "paired")

    def decided(ps):
        return [v.text for v in declared_verdicts([with_p(p) for p in ps], True, [("a", "b")] * 3, ALPHA)]

    assert decided([0.01, 0.02, 0.04]) == ["a better"] * 3
    assert decided([0.01, 0.03, 0.04]) == ["a better", "no detectable difference", "no detectable difference"]


def test_a_rate_of_zero_or_one_gets_an_interval_of_positive_width():
    iv = rate_interval(np.zeros(16))  # 0 of 16 problems, one run
    assert iv.low == 0.0 and iv.high == pytest.approx(0.1936, abs=1e-4)  # Wilson at n = 16
    assert wilson_interval(1.0, 16) == pytest.approx((1 - 0.1936, 1.0), abs=1e-4)
    many = rate_interval(np.zeros((3, 16)))  # three seeds, all 0: the variance estimate is 0, Wilson again
    assert many.high > 0.15
    one = rate_interval(np.array([0.0] * 15 + [1.0]))  # one run whose t-interval leaves [0, 1]: Wilson, inside it
    assert 0 < one.low < 1 / 16 < one.high < 1
    # two groups equal at 1.0 on 16 problems: the difference has positive width and equality is not claimed ...
    d = method_difference(np.ones((3, 16)), np.ones((3, 16)), [0, 1, 2], [0, 1, 2], rate=True)
    assert d.low < -0.1 and d.high > 0.1 and d.p_value == 1.0 and d.equivalence_p(0.02) > ALPHA
    # ... until enough problems back it
    wide = method_difference(np.ones((3, 4000)), np.ones((3, 4000)), [0, 1, 2], [0, 1, 2], rate=True)
    assert wide.equivalence_p(0.02) < 1e-6


def test_one_run_away_from_0_and_1_keeps_the_t_interval_over_its_problems():
    x = np.array([0.25, 0.5, 0.75, 0.0, 1.0, 0.5] * 50)  # 300 problems, 4 samples each
    assert rate_interval(x) == group_interval(x)


def test_a_run_with_no_right_answer_prints_a_positive_width_interval(tmp_path, capsys):
    replicate(tmp_path, "r", correct=[[0]] * 16, divergence=[[1.0]] * 16)
    report_main([str(tmp_path)])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| soft_penalty"))
    assert row.split("|")[5].strip() == "0.000 [0.000, 0.194]"  # not [0.000, 0.000]


def quickstart(root, seeds=(0,)):
    """cmdp, soft_penalty and grpo, as the quick start trains them: one seed each."""
    rng = np.random.default_rng(5)
    for method in ("cmdp", "soft_penalty", "grpo"):
        for seed in seeds:
            correct = rng.binomial(1, 0.2 if method == "cmdp" else 0.6, size=(40, 4)).tolist()
            replicate(root, f"{method}{seed}", method=method, seed=seed, correct=correct,
                      divergence=(8 + 4 * rng.random((40, 4))).tolist())


def test_one_seed_prints_no_method_verdict_and_labels_these_two_runs(tmp_path, capsys):
    quickstart(tmp_path)
    report_main([str(tmp_path)])  # no declaration, as the quick start
    out = capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    assert "better" not in md and "better" not in out
    rows = [line for line in md.splitlines() if line.startswith("| cmdp d=10 |")]
    assert rows and all("these two runs (seed 0)" in line for line in rows)
    # declared, the one-seed comparisons are listed without a method verdict and without a p-value
    (tmp_path / "verdicts.yaml").write_text(yaml.safe_dump({
        "comparisons": [["cmdp", "soft_penalty"], ["cmdp", "grpo"]], "primary": "accuracy_sampled", "alpha": 0.05,
        "equivalence_margin": 0.02}))
    report_main([str(tmp_path)])
    out = capsys.readouterr().out
    section = (tmp_path / "report.md").read_text().split("## Declared verdicts")[1].split("## Exploratory")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| cmdp d=10 |")]
    assert len(rows) == 2  # cmdp is far below both: a method verdict would have been "B better"
    for cells in rows:
        assert cells[3] == "these two runs (seed 0)" and cells[-1] == "**no method verdict (one seed: these two runs)**"
        assert cells[7:10] == ["-", "-", "-"]  # no raw p, no Holm p, no TOST p
    assert "No method verdict is possible with one seed" in section and "better**" not in out


def test_the_declared_section_states_the_metric_alpha_and_margin_and_the_rest_is_exploratory(tmp_path, capsys):
    quickstart(tmp_path, seeds=(0, 1, 2))
    spec = tmp_path / "mine.yaml"
    spec.write_text("comparisons: [[cmdp, soft_penalty], [cmdp, grpo]]\nprimary: accuracy_sampled\nalpha: 0.1\n"
                    "equivalence_margin: 0.03\n")
    report_main([str(tmp_path), "--verdicts", str(spec)])
    capsys.readouterr()
    md = (tmp_path / "report.md").read_text()
    head, rest = md.split("## Declared verdicts (Holm-corrected, family-wise alpha)")
    section, exploratory = rest.split("## Exploratory (not corrected for multiplicity; no verdicts)")
    assert f"Declared in `{spec}`: primary metric **acc (sampled)** (`accuracy_sampled`" in section
    assert "family-wise alpha = 0.1" in section and "equivalence margin ±0.03" in section
    assert "| A | B | at d | interval over | Δ acc (sampled) (A − B) | 90% interval | t (df) | raw p | Holm p | " \
           "TOST p (raw; Holm) | verdict |" in section
    verdicts = [line.split("|")[-2].strip() for line in section.splitlines() if line.startswith("| cmdp d=10 |")]
    assert verdicts == ["**soft_penalty better**", "**grpo better**"]  # 0.2 against 0.6 with three seeds
    assert "better" not in exploratory and "better" not in head


@pytest.mark.parametrize(("text", "words"), [
    ("comparisons: [[cmdp, saute]]\nprimary: accuracy_sampled\n", "no replicate group of method 'saute'"),
    ("comparisons: [[cmdp, soft_penalty]]\nprimary: acc\n", "primary must be one of accuracy_sampled"),
    ("comparisons: [[cmdp, soft_penalty]]\nprimary: accuracy_sampled\nalpah: 0.05\n", "unknown key alpah"),
    ("comparisons: [[cmdp, soft_penalty]]\nprimary: accuracy_sampled\nalpha: 0.7\n", "alpha must be a number in"),
    ("comparisons: [[cmdp, soft_penalty]]\nprimary: accuracy_sampled\nequivalence_margin: -1\n",
     "equivalence_margin must be a positive number"),
    ("comparisons: [cmdp, soft_penalty]\nprimary: accuracy_sampled\n", "each comparison must be a pair"),
    ("primary: accuracy_sampled\n", "comparisons is required"),
    ("comparisons: [[cmdp, grpo], [grpo, cmdp]]\nprimary: accuracy_sampled\n", "declared twice"),
    ("comparisons: [[cmdp, grpo]]\nprimary: [accuracy_sampled\n", "not valid YAML"),
])
def test_a_bad_declaration_is_refused_in_one_line_with_exit_2(tmp_path, capsys, text, words):
    quickstart(tmp_path)
    (tmp_path / "verdicts.yaml").write_text(text)
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("cdistill: error: ") and "\n" not in err and words in err, err
    assert not (tmp_path / "report.md").exists()


def test_an_ambiguous_method_name_is_refused_and_a_row_name_resolves_it(tmp_path, capsys):
    for d in (5.0, 10.0):
        replicate(tmp_path, f"c{d}", method="cmdp", d=d, correct=[[1, 0]] * 8, divergence=[[1.0, 1.0]] * 8)
    replicate(tmp_path, "s", correct=[[1, 0]] * 8, divergence=[[1.0, 1.0]] * 8)
    (tmp_path / "verdicts.yaml").write_text("comparisons: [[cmdp, soft_penalty]]\nprimary: accuracy_sampled\n")
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'cmdp' is ambiguous, it matches 2 groups (cmdp d=5, cmdp d=10)" in err
    (tmp_path / "verdicts.yaml").write_text("comparisons: [['cmdp d=5', soft_penalty]]\nprimary: accuracy_sampled\n")
    report_main([str(tmp_path)])
    assert "| cmdp d=5 | soft_penalty | 5 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path), "--verdicts", str(tmp_path / "missing.yaml")])
    assert e.value.code == 2 and "no such verdicts file" in capsys.readouterr().err


def flawed_and_default(root):
    """cmdp against the default teacher, cmdp and soft_penalty against the flawed one (+exp=flawed_teacher), seeds 0
    and 1, all at d = 10."""
    rng = np.random.default_rng(6)
    for name, method, flaw in (("cmdp", "cmdp", None), ("cmdp_flawed", "cmdp", "sells"),
                               ("soft_flawed", "soft_penalty", "sells")):
        for seed in (0, 1):
            replicate(root, f"{name}{seed}", method=method, seed=seed, flaw=flaw,
                      correct=rng.binomial(1, 0.5, size=(20, 2)).tolist(),
                      divergence=(5 + 10 * rng.random((20, 2))).tolist())
    return group_runs(finished_runs(root))


def test_runs_against_different_teachers_are_never_paired_nor_drawn_as_one_series(tmp_path, capsys):
    groups = flawed_and_default(tmp_path)
    default, flawed = [g for g in groups if g.method == "cmdp"]  # sorted by label: flaw=None, flaw=sells
    assert default.name == "cmdp d=10 model.embedded.teacher.flaw=None" and not default.comparable(flawed)
    found = {(a.name, b.name) for a, b, _ in pairs(groups)}
    assert found == {("cmdp d=10 model.embedded.teacher.flaw=sells", "soft_penalty model.embedded.teacher.flaw=sells")}
    series = pareto_series(groups)
    assert set(series) == {"cmdp (teacher embedded:teacher flaw=None)", "cmdp (teacher embedded:teacher flaw=sells)",
                           "soft_penalty (teacher embedded:teacher flaw=sells)"}
    assert [point_label(g, groups) for g in groups] == ["d=10", "d=10", ""]  # the series names the teacher
    # declared across teachers: refused
    decl = Declaration([(default.name, "soft_penalty")], "accuracy_sampled")
    with pytest.raises(ValueError, match="read C\\(y\\) against different teachers \\(model.embedded.teacher.flaw\\)"):
        write_report(tmp_path, groups, decl)
    report_main([str(tmp_path)])
    md = (tmp_path / "report.md").read_text()
    assert not [line for line in md.splitlines() if line.startswith("| cmdp d=10 model.embedded.teacher.flaw=None |")
                and "flaw=sells" in line]  # no row compares the default teacher's run with a flawed one's


def test_a_method_that_ignores_d_is_not_labelled_with_one(tmp_path):
    row = {"correct": [[1, 0]] * 4, "divergence": [[1.0, 1.0]] * 4}
    replicate(tmp_path, "c", method="cmdp", d=5.0, **row)
    replicate(tmp_path, "s5", method="soft_penalty", d=5.0, **row)
    replicate(tmp_path, "s10", method="soft_penalty", d=10.0, **row)
    groups = group_runs(finished_runs(tmp_path))
    cmdp, soft5, soft10 = groups
    assert cmdp.name == "cmdp d=5" and point_label(cmdp, groups) == "d=5"
    assert point_label(soft10, groups) == "read at d=10"  # told apart by the reading only, never "d=10"
    assert (soft5.name, soft10.name) == ("soft_penalty read at d=5", "soft_penalty read at d=10")
    assert soft10.constraint_text == "sum of logratio, read at d = 10"
    assert "d=" not in soft5.name.replace("read at d=", "")
