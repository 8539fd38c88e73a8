"""Costs and divergences against float64 brute force, chunked equals unchunked."""

import math

import pytest
import torch
from conftest import ragged_mask

from cdistill.objectives import (
    COSTS,
    ScoringSpec,
    entropy_from_logits,
    generalized_jsd,
    kl_estimate,
    logratio_cost,
    teacher_nll_cost,
    token_jsd_cost,
    token_kl_cost,
)
from cdistill.objectives.chunking import positionwise


def brute_kl(hs, ws, ht, wt, mask, temperature=1.0):
    b, t, _ = hs.shape
    out = torch.zeros(b, t, dtype=torch.float64)
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                continue
            zs = [float(hs[i, j].double() @ ws[v].double()) / temperature for v in range(ws.shape[0])]
            zt = [float(ht[i, j].double() @ wt[v].double()) for v in range(wt.shape[0])]
            ls = [z - math.log(sum(math.exp(y) for y in zs)) for z in zs]
            lt = [z - math.log(sum(math.exp(y) for y in zt)) for z in zt]
            out[i, j] = sum(math.exp(a) * (a - c) for a, c in zip(ls, lt, strict=True))
    return out


def test_logratio_and_teacher_nll_are_masked_differences():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    mask = ragged_mask([5, 2, 0], 5)
    c = logratio_cost(s, t, mask)
    assert torch.equal(c[0], s[0] - t[0])
    assert torch.equal(c[1, :2], s[1, :2] - t[1, :2]) and c[1, 2:].abs().sum() == 0
    assert c[2].abs().sum() == 0
    n = teacher_nll_cost(t, mask)
    assert torch.equal(n[0], -t[0]) and n[2].abs().sum() == 0


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_kl_matches_brute_force_for_any_chunk(chunk, temperature):
    b, t, h, v = 3, 6, 4, 7
    hs, ht = torch.randn(b, t, h), torch.randn(b, t, h)
    ws, wt = torch.randn(v, h), torch.randn(v, h)
    mask = ragged_mask([6, 3, 0], t)
    got = token_kl_cost(hs, ws, ht, wt, mask, chunk=chunk, student_temperature=temperature)
    ref = brute_kl(hs, ws, ht, wt, mask, temperature)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    assert (got[~mask] == 0).all()


def test_token_kl_cuts_padded_vocabulary_rows():
    b, t, h, v = 2, 3, 4, 5
    hs, ht = torch.randn(b, t, h), torch.randn(b, t, h)
    ws, wt = torch.randn(v, h), torch.randn(v, h)
    mask = ragged_mask([3, 2], t)
    padded_t = torch.cat([wt, 100 * torch.randn(3, h)])  # teacher embedding padded to 8 rows
    got = token_kl_cost(hs, ws, ht, padded_t, mask, vocab_size=v)
    torch.testing.assert_close(got, token_kl_cost(hs, ws, ht, wt, mask))


def test_token_kl_gradient_equals_unchunked_gradient():
    b, t, h, v = 2, 5, 4, 6
    hs = torch.randn(b, t, h, requires_grad=True)
    ws = torch.randn(v, h, requires_grad=True)
    ht, wt = torch.randn(b, t, h), torch.randn(v, h)
    mask = ragged_mask([5, 2], t)
    token_kl_cost(hs, ws, ht, wt, mask, chunk=2).sum().backward()
    g_hs, g_ws = hs.grad.clone(), ws.grad.clone()
    hs.grad = ws.grad = None
    ls = torch.log_softmax(hs @ ws.t(), -1)
    lt = torch.log_softmax(ht @ wt.t(), -1)
    ((ls.exp() * (ls - lt)).sum(-1) * mask).sum().backward()
    torch.testing.assert_close(g_hs, hs.grad)
    torch.testing.assert_close(g_ws, ws.grad)


def test_positionwise_never_calls_fn_on_more_than_chunk_rows_nor_on_masked_rows():
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return x.sum(-1)

    x = torch.randn(4, 10, 3)
    mask = ragged_mask([10, 7, 1, 0], 10)
    out = positionwise(fn, mask, [x], chunk=4)
    assert max(seen) <= 4 and sum(seen) == int(mask.sum())
    torch.testing.assert_close(out, x.sum(-1) * mask)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_match_their_formulas(kind):
    logp, ref = torch.randn(2, 4).double(), torch.randn(2, 4).double()
    mask = ragged_mask([4, 1], 4)
    got = kl_estimate(logp, ref, mask, kind)
    for i in range(2):
        for j in range(4):
            r = float(ref[i, j] - logp[i, j])
            want = {"k1": -r, "k2": 0.5 * r * r, "k3": math.exp(r) - 1 - r}[kind] if mask[i, j] else 0.0
            assert got[i, j].item() == pytest.approx(want, abs=1e-12)


def test_k1_and_k3_are_unbiased_estimates_of_kl():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    lp, lq = p.log(), q.log()
    one = torch.ones(1, 3, dtype=torch.bool)
    for kind in ("k1", "k3"):
        expectation = float((p * kl_estimate(lp[None], lq[None], one, kind)[0]).sum())
        assert expectation == pytest.approx(exact, abs=1e-12)


def brute_jsd(zs, zt, beta):
    ps = torch.softmax(zs.double(), -1)
    pt = torch.softmax(zt.double(), -1)
    if beta == 0:
        return sum(float(pt[a] * math.log(pt[a] / ps[a])) for a in range(len(ps)))
    if beta == 1:
        return sum(float(ps[a] * math.log(ps[a] / pt[a])) for a in range(len(ps)))
    m = [beta * float(pt[a]) + (1 - beta) * float(ps[a]) for a in range(len(ps))]
    kl_t = sum(float(pt[a]) * math.log(float(pt[a]) / m[a]) for a in range(len(ps)))
    kl_s = sum(float(ps[a]) * math.log(float(ps[a]) / m[a]) for a in range(len(ps)))
    return beta * kl_t + (1 - beta) * kl_s


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_matches_brute_force(beta):
    zs, zt = torch.randn(4, 6), torch.randn(4, 6)
    got = generalized_jsd(zs, zt, beta)
    for i in range(4):
        assert got[i].item() == pytest.approx(brute_jsd(zs[i], zt[i], beta), abs=1e-5)


def test_generalized_jsd_is_zero_for_equal_distributions_and_rejects_bad_beta():
    z = torch.randn(3, 5)
    torch.testing.assert_close(generalized_jsd(z, z, 0.5), torch.zeros(3), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        generalized_jsd(z, z, 1.5)


def test_entropy_matches_brute_force():
    z = torch.randn(3, 5)
    for i in range(3):
        p = torch.softmax(z[i].double(), -1)
        want = -sum(float(p[a] * math.log(p[a])) for a in range(5))
        assert entropy_from_logits(z)[i].item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(("beta", "chunk"), [(0.0, 3), (0.5, 1), (1.0, 100)])
def test_token_jsd_matches_brute_force_per_position_and_is_differentiable_in_the_student_only(beta, chunk):
    mask = ragged_mask([4, 2, 0], 4)
    hs, ht = torch.randn(3, 4, 5, requires_grad=True), torch.randn(3, 4, 5)
    ws, wt = torch.randn(9, 5), torch.randn(9, 5, requires_grad=True)
    got = token_jsd_cost(hs, ws, ht, wt, mask, beta, chunk, vocab_size=7, student_temperature=0.7)
    for b in range(3):
        for t in range(4):
            want = brute_jsd((hs[b, t] @ ws[:7].t()) / 0.7, ht[b, t] @ wt[:7].t(), beta) if mask[b, t] else 0.0
            assert got[b, t].item() == pytest.approx(want, abs=1e-5)
    got.sum().backward()
    assert hs.grad.abs().sum() > 0 and (wt.grad is None or wt.grad.abs().sum() == 0)


@pytest.mark.parametrize("name", sorted(COSTS))
def test_each_registered_cost_gives_the_same_c_t_one_token_at_a_time_as_over_whole_completions(name):
    # the budget-tracking sampler (at_step) and scoring (per_token) must budget the same quantity
    torch.manual_seed(3)
    b, t, h, v, temperature = 2, 4, 5, 7, 0.8
    hs, ht = torch.randn(b, t, h), torch.randn(b, t, h)
    ws, wt = torch.randn(v, h), torch.randn(v, h)
    tokens = torch.randint(0, v, (b, t))
    mask = torch.ones(b, t, dtype=torch.bool)
    s_all = torch.log_softmax(hs @ ws.T / temperature, -1)
    t_all = torch.log_softmax(ht @ wt.T, -1)
    s_logp, t_logp = s_all.gather(-1, tokens[..., None])[..., 0], t_all.gather(-1, tokens[..., None])[..., 0]
    whole = COSTS[name].per_token(student_logp=s_logp, teacher_logp=t_logp, mask=mask, student_hidden=hs,
                                  student_weight=ws, teacher_hidden=ht, teacher_weight=wt,
                                  spec=ScoringSpec(temperature=temperature, chunk=3, vocab=v))
    stepwise = torch.stack([COSTS[name].at_step(s_all[:, j], t_all[:, j], tokens[:, j]) for j in range(t)], dim=1)
    torch.testing.assert_close(stepwise, whole, rtol=1e-5, atol=1e-5)


def test_the_registry_says_which_costs_depend_on_the_student_and_which_need_hidden_states():
    assert {n for n, c in COSTS.items() if c.depends_on_student} == {"logratio", "token_kl"}
    assert {n for n, c in COSTS.items() if c.needs_hidden} == {"token_kl"}
