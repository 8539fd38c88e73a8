"""A teacher that tokenises text otherwise than the student: its log-probs of the *text*, spread onto the student's
tokens by character boundaries.

The sampled-token costs (``logratio``, ``teacher_nll``) need only the teacher's log-prob of each sampled token, and
their sum over a completion is a property of its text: the teacher scores the prompt and completion text in its own
tokenisation, and each of its log-probs goes to the first student token whose text ends where the teacher token
ends or later. Every prefix that ends on a character boundary shared by both tokenisations then keeps its exact
total; in particular the completion's total is the teacher's log-likelihood of the completion text given the prompt
text whenever the prompt/completion boundary is a boundary of the teacher's tokenisation too. A teacher token that
straddles that boundary counts, whole, for the completion (its first student token). A completion that ends with the
student's EOS gets the teacher's log-prob of its own EOS after the text, on that EOS.

Both llama.cpp's text-only server (``cdistill.models.served``, another tokenisation by the same vocabulary) and
``CrossTokenizerTeacher`` (another vocabulary, its model in process or behind a server) spread through ``spread``.

When the task renders prompts with a chat template, the teacher scores instead its *own* rendering of the same
problem (``own_prompts``: its tokenizer's template, as it is prompted when evaluated), tokenised alone, followed by
the completion text tokenised alone; only the completion's log-probs are spread, and its total is the teacher's
log-likelihood of the completion text given its own prompt.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import torch

from cdistill.models.forward import AT_TEMPERATURE_ONE, CompletionForward, Sequences, completion_forward


def token_ends(tok, ids: list[int], start: int = 0) -> list[int]:
    """Characters of ``ids``' text up to the end of each token from ``start`` on (a token ending inside a character,
    as byte-level pieces can, counts that character). Decoding every prefix needs nothing of a tokenizer beyond
    ``decode``: no offset mapping, which slow and server-side tokenizers lack.

    A SentencePiece byte-fallback decoder writes one U+FFFD per byte of an unfinished character, so a prefix can
    decode longer than the next one ('x��' before 'x中'): each end is the least of its own and every later one's,
    which puts such pieces at the end of their character, as byte-level BPE's decoder does by itself."""
    ends = [len(tok.decode(ids[: k + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
            for k in range(start, len(ids))]
    for k in range(len(ends) - 2, -1, -1):
        ends[k] = min(ends[k], ends[k + 1])
    return ends


def spread(my_ends: list[int], their_ends: list[int], their_logp: list[float],
           pair_ties: bool = False) -> list[float]:
    """``their_logp`` (one per token of another tokenisation of the same text, ending at ``their_ends``) put on the
    tokens ending at ``my_ends``: each goes to the first of mine that ends where it ends or later (the last of mine
    when none does), so a token can get 0 or several log-probs' sum, and the total up to any shared boundary is
    kept exactly.

    ``pair_ties``: where as many of theirs as of mine end at the same character (byte-level pieces of one
    character: their decoded ends coincide), the r-th of theirs goes to the r-th of mine, so that identical
    tokenisations get every token's own log-prob; totals at character boundaries are the same either way."""
    out, j = [0.0] * len(my_ends), 0
    mine_run, theirs_run = _runs(my_ends), _runs(their_ends)
    for i, (end, lp) in enumerate(zip(their_ends, their_logp, strict=True)):
        while j < len(my_ends) - 1 and my_ends[j] < end:
            j += 1
        rank, size = theirs_run[i]
        paired = pair_ties and size > 1 and my_ends[j] == end and mine_run[j] == (0, size)
        out[j + rank if paired else j] += lp
    return out


def _runs(ends: list[int]) -> list[tuple[int, int]]:
    """(rank within, length of) the run of equal consecutive values that each entry belongs to."""
    out, start = [], 0
    for k in range(len(ends) + 1):
        if k == len(ends) or ends[k] != ends[start]:
            out += [(r, k - start) for r in range(k - start)]
            start = k
    return out


def spread_over_tokens(tok, ids: list[int], canon: list[int], canon_logp: list[float]) -> list[float]:
    """Log-probs of ``canon`` (the tokenisation of ``ids``' text that a text-only server scores, by the same
    tokenizer) put on the positions of ``ids``. Where the two agree, each token gets its own (so that tokens inside
    one character, whose decoded ends coincide, keep theirs); past the first difference, ``spread``."""
    a = next((k for k, (x, y) in enumerate(zip(ids, canon, strict=False)) if x != y), min(len(ids), len(canon)))
    out = list(canon_logp[:a]) + [0.0] * (len(ids) - a)
    if a == len(ids) == len(canon):
        return out
    out[a:] = spread(token_ends(tok, ids, a), token_ends(tok, canon, a), canon_logp[a:])
    return out


def completion_part(tok, ids: list[int], p: int) -> tuple[str, list[int]]:
    """The text of ``ids[p:]`` as decoded after ``ids[:p]`` (a SentencePiece decoder drops a leading space of a
    text's first piece, so the completion is not decoded alone), and the ends of its tokens within that text."""
    start = len(tok.decode(ids[:p], skip_special_tokens=False, clean_up_tokenization_spaces=False))
    text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text[start:], [max(e - start, 0) for e in token_ends(tok, ids, p)] if p < len(ids) else []


def teacher_task(task, teacher_tok):
    """A copy of ``task`` whose prompts are the teacher's own: its chat template where the task asks for one and
    the teacher's tokenizer has one (a teacher without a template gets the plain prompt, even under
    ``task.use_chat_template=true``, which is said of the student's tokenizer)."""
    task = copy.copy(task)
    task.chat_tokenizer, task.add_special_tokens = None, True
    task.use_chat_template = "auto" if task.use_chat_template else False
    task.bind_tokenizer(teacher_tok)
    return task


def own_prompts(task, student_tok, teacher_tok) -> dict[tuple[int, ...], list[int]] | None:
    """For a task that renders prompts with a chat template (the student's or the teacher's): each problem's
    student prompt tokens, as the rollout tokenises them, → the teacher's own prompt tokens for the same problem.
    None when neither tokenizer renders a template: both then see the same prompt text."""
    theirs = teacher_task(task, teacher_tok)
    if task.chat_tokenizer is None and theirs.chat_tokenizer is None:
        return None
    problems = [p for split in (task.train, task.validation, task.test) for p in split]
    mine = student_tok([task.prompt(p) for p in problems], add_special_tokens=task.add_special_tokens).input_ids
    own = teacher_tok([theirs.prompt(p) for p in problems], add_special_tokens=theirs.add_special_tokens).input_ids
    return {tuple(m): o for m, o in zip(mine, own, strict=True)}


def different_vocabularies(student_tok, teacher_tok) -> bool:
    return student_tok.get_vocab() != teacher_tok.get_vocab()


def refusal(cfg) -> str | None:
    """Why a teacher with another tokenizer cannot serve this config (one line), or None. Only the sampled tokens'
    log-probs cross tokenizers exactly; whatever needs the teacher's distribution over the student's vocabulary, the
    teacher token by token beside the student's sampling, or the teacher's own samples, cannot. Read from the config
    alone (models sit below methods); tests/test_cross_tokenizer.py checks it against every method's flags
    (``conditions_on_budget``, ``needs_teacher_hidden``, ``uses_cached_teacher_solutions``)."""
    if cfg.constraint.cost == "token_kl":
        return "constraint.cost=token_kl compares the two distributions over one vocabulary, and the teacher's " \
               "tokenizer differs from the student's: use constraint.cost=logratio or teacher_nll, or a teacher " \
               "that shares the student's tokenizer"
    name = cfg.method.name
    needs = [what for what, needed in (
        (f"method {name} runs the teacher beside the student at every sampled token", name == "saute"),
        ("weakest_link's exact term reads the teacher's NLL of every candidate token", name == "weakest_link"),
        ("opd's full estimator reads the teacher's whole distribution",
         name == "opd" and cfg.method.get("estimator") == "full"),
        ("gkd's JSD reads the teacher's whole distribution", name == "gkd"),
        (f"method {name} learns from the teacher's own samples", name == "seqkd")) if needed]
    if needs:
        return f"{needs[0]}, in the student's vocabulary, and the teacher's tokenizer differs from the student's: " \
               "use a teacher that shares the student's tokenizer"
    if cfg.model.teacher.get("backend", "local") == "server" and cfg.model.teacher.server.top_k:
        return f"model.teacher.server.top_k={cfg.model.teacher.server.top_k} asks for the teacher's top tokens in " \
               "its own vocabulary, and its tokenizer differs from the student's: set model.teacher.server.top_k=0"
    return None


class CrossTokenizerTeacher:
    """A teacher model with its own tokenizer, as the rest of cdistill uses a teacher: ``completion_forward`` on
    the student's sequences gives the teacher's log-probs of their text spread onto the student's completion
    tokens (entropies unknown: nan; no hidden states, which live in the teacher's vocabulary).

    ``model``: the teacher in process, or a ``served.ServedTeacher`` that holds the teacher's own tokenizer (its
    ``score`` gives the same log-probs over HTTP). ``prompts``: ``own_prompts``, or None to score the student's
    prompt text."""

    cross_tokenizer = True  # no output embedding in the student's vocabulary (forward.output_weight)

    def __init__(self, model, tokenizer, student_tokenizer, vocab: int,
                 prompts: dict[tuple[int, ...], list[int]] | None = None):
        self.model, self.tokenizer, self.student_tokenizer, self.vocab = model, tokenizer, student_tokenizer, vocab
        self.prompts = prompts
        # not ``served``: that says a model samples over HTTP (rollout.sampling), which this wrapper does not
        self.over_http = getattr(model, "served", False)
        # checked before the run in the student's tokens; the teacher's own may be more (cdistill.models.loading)
        self.context = model.max_model_len if self.over_http else \
            getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.name_or_path = getattr(model, "name_or_path", "teacher")
        probe = tokenizer("a").input_ids
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and probe[:1] == [
            tokenizer.bos_token_id] else []  # the teacher's own BOS, as its tokenizer adds it to a text

    def parameters(self):
        return iter(()) if self.over_http else self.model.parameters()

    def texts(self, ids: list[int], n: int) -> tuple[str, list[int], bool]:
        """The text the teacher scores for prompt + completion ``ids`` (completion: the last ``n``): as the student
        decodes it, without a leading student BOS (the teacher puts its own) or a final EOS (scored as the
        teacher's EOS). Returns the text, the student ids it spans and whether an EOS ends the completion."""
        s = self.student_tokenizer
        eos = n > 0 and ids[-1] == s.eos_token_id
        body = ids[: len(ids) - eos]
        if body and s.bos_token_id is not None and body[0] == s.bos_token_id:
            body = body[1:]
        return s.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False), body, eos

    def teacher_ids(self, text: str, eos: bool) -> list[int]:
        t = self.tokenizer
        return self.bos + t(text, add_special_tokens=False).input_ids + ([t.eos_token_id] if eos else [])

    @torch.no_grad()
    def completion_forward(self, seq: Sequences, spec=None) -> CompletionForward:
        rows = []
        for i in range(seq.input_ids.shape[0]):
            p = seq.prompt_len
            prompt = seq.input_ids[i, :p][seq.attention_mask[i, :p].bool()].tolist()
            n = int(seq.completion_mask[i].sum())
            rows.append((prompt, seq.completion_ids[i, :n].tolist()))
        scored = [i for i, (_, c) in enumerate(rows) if c]  # an empty completion has nothing to score
        plans = [self.plan(*rows[i]) for i in scored]
        logps = self.score([ids for ids, _ in plans], spec) if scored else []
        b, t = seq.completion_ids.shape
        logp = torch.zeros(b, t)
        for i, (_, onto), lp in zip(scored, plans, logps, strict=True):
            values = onto(lp)
            if any(x != x for x in values):  # nan: a position the server returned nothing for
                raise ValueError("the teacher's server left out log-probs inside a completion (llama.cpp's leaves "
                                 "out every BOS token's): use a vLLM server")
            logp[i, : len(values)] = torch.tensor(values, dtype=torch.float32)
        d = seq.completion_ids.device
        return CompletionForward(logp.to(d) * seq.completion_mask, torch.full((b, t), float("nan"), device=d), None)

    def plan(self, prompt: list[int], completion: list[int]):
        """(the teacher's tokens to score for this student prompt and completion, a function of their log-probs
        that gives the completion's, one per student token)."""
        if self.prompts is None:
            n = len(completion)
            text, body, eos = self.texts(prompt + completion, n)
            ids = self.teacher_ids(text, eos)
            return ids, functools.partial(self.onto_student, body, eos, n, ids)
        own = self.prompts.get(tuple(prompt))
        if own is None:
            raise ValueError("a prompt that is none of the task's problems reached a teacher that scores its own "
                             "chat template's prompt for each problem (cross_tokenizer.own_prompts)")
        s, t = self.student_tokenizer, self.tokenizer
        eos = completion[-1] == s.eos_token_id
        text, mine = completion_part(s, prompt + completion[: len(completion) - eos], len(prompt))
        # tokenised apart from the prompt, as the teacher's own samples follow its prompt's last token
        body = t(text, add_special_tokens=False).input_ids
        ids = own + body + ([t.eos_token_id] if eos else [])
        return ids, functools.partial(self.onto_completion, mine, len(own), len(body), eos, ids)

    def onto_completion(self, mine: list[int], p: int, m: int, eos: bool, ids: list[int],
                        lp: list[float]) -> list[float]:
        """The completion's per-student-token log-probs from the teacher's ``lp`` (``lp[j]``: of ``ids[j + 1]``) on
        its own prompt (``p`` tokens), the completion text (``m`` tokens, ending at ``mine``'s text) and its EOS."""
        theirs = completion_part(self.tokenizer, ids[: p + m], p)[1]
        out = spread(mine, theirs, lp[p - 1 : p - 1 + m], pair_ties=True) if mine else []
        return out + ([lp[p + m - 1]] if eos else [])

    def onto_student(self, body: list[int], eos: bool, n: int, ids: list[int], lp: list[float]) -> list[float]:
        """The completion's ``n`` per-token log-probs from the teacher's ``lp`` (``lp[j]``: of ``ids[j + 1]``) on its
        tokens ``ids`` (its BOS if it has one, the text's tokens, its EOS when ``eos``)."""
        nb, k, c = len(self.bos), len(ids) - eos, n - eos  # c: the completion's tokens before its EOS
        ends = token_ends(self.tokenizer, ids[nb:k])
        mine = token_ends(self.student_tokenizer, body)
        if not nb and ends and (c >= len(mine) or ends[0] > mine[len(mine) - c - 1]):
            # without BOS the teacher's first token has no context, hence no log-prob: it must lie in the prompt
            raise ValueError("the teacher's first token, which it scores without context, reaches into the "
                             "completion: a teacher tokenizer without BOS needs a prompt longer than that token")
        # lp[: k - 1] are the log-probs of ids[1:k]: every text token but an unscored first one
        out = spread(mine, ends[1 - nb :], lp[: k - 1], pair_ties=True) if mine else []
        return (out[len(out) - c :] if c else []) + ([lp[k - 1]] if eos else [])

    def score(self, seqs: list[list[int]], spec) -> list[list[float]]:
        """The teacher's log-prob of every token after the first of each sequence, in its own vocabulary."""
        if min(map(len, seqs)) < 2:
            raise ValueError("a sequence of one teacher token has nothing to score (a teacher tokenizer without BOS "
                             "and an empty prompt)")
        width = max(len(s) for s in seqs)
        if self.context is not None and width > self.context:
            raise ValueError(f"a prompt and completion are {width} tokens in the teacher's own tokenizer, more than "
                             f"its context ({self.context}): lower rollout.max_new_tokens")
        if self.over_http:
            return self.model.score(seqs, spec)
        dev = next(self.model.parameters()).device
        first = torch.tensor([[s[0]] for s in seqs], device=dev)
        rest = torch.full((len(seqs), width - 1), self.tokenizer.pad_token_id, device=dev)
        mask = torch.zeros_like(rest, dtype=torch.bool)
        for i, s in enumerate(seqs):
            rest[i, : len(s) - 1] = torch.tensor(s[1:])
            mask[i, : len(s) - 1] = True
        tseq = Sequences.build(first, torch.ones_like(first), rest, mask)
        # the teacher's own vocabulary, and no prompt shared: each sequence starts its own text
        out = completion_forward(self.model, tseq, (spec or AT_TEMPERATURE_ONE).replace(vocab=self.vocab, group_size=1))
        return [out.logp[i, : len(s) - 1].tolist() for i, s in enumerate(seqs)]

    def as_policy(self, parts):
        """``parts`` for evaluating the teacher as the policy: its own tokenizer samples it, the task's prompts
        are built for that tokenizer, and it is its own reference (divergence 0)."""
        # further budgets' teachers score the run's tokens, not this one's: not measured here (teachers=None)
        return dataclasses.replace(parts, task=teacher_task(parts.task, self.tokenizer), tokenizer=self.tokenizer,
                                   student=self.model, teacher=self.model, vocab=self.vocab, teachers=None)


def cross_teacher(teacher, teacher_tok, student_tok, vocab: int, task) -> CrossTokenizerTeacher:
    """``teacher`` (in process or served) wrapped for the student's tokens; ``task`` bound to the student's
    tokenizer (its prompts are what the rollouts hold)."""
    return CrossTokenizerTeacher(teacher, teacher_tok, student_tok, vocab, own_prompts(task, student_tok, teacher_tok))
