"""A stand-in for the colocated vLLM engine, for tests on CPU.

``FakeEngine`` does what vLLM does for cdistill: it keeps its own copy of the student's weights (random until
the first push; bfloat16 by default, as a GPU engine would run), samples in its own token loop (not HF
``generate``), and returns the log-prob of each sampled token. ``use_fake_engine`` makes
``rollout.backend=vllm`` build one.
"""

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from cdistill.rollout import engines
from cdistill.rollout.engines import Sample


class FakeEngine:
    def __init__(self, model_path, dtype=torch.bfloat16):
        torch.manual_seed(1234)  # its own random weights: sampling from them before a push would show
        self.model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path)).to(dtype).eval()
        self.pushes, self.at_generate, self.specs = 0, [], []

    def load_weights(self, weights):
        w = dict(weights)
        missing, unexpected = self.model.load_state_dict(w, strict=False)
        assert not unexpected, unexpected
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        assert set(missing) <= tied, missing
        self.pushes += 1

    def weights(self):
        return {k: v.float().clone() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def generate(self, prompts, spec):
        self.specs.append(spec)
        self.at_generate.append(self.weights())
        out = []
        for ids in prompts:
            samples = []
            for _ in range(spec.n):
                toks, lps = [], []
                for _ in range(spec.max_tokens):
                    logits = self.model(torch.tensor([ids + toks])).logits[0, -1].float()
                    logp = torch.log_softmax(logits / spec.temperature, -1)
                    t = int(logits.argmax()) if spec.greedy else int(torch.multinomial(logp.exp(), 1))
                    toks.append(t)
                    lps.append(float(logp[t]))
                    if t == spec.eos_token_id:
                        break
                samples.append(Sample(toks, lps))
            out.append(samples)
        return out



def install(dtype=torch.bfloat16) -> list:
    """Make ``rollout.backend=vllm`` build a ``FakeEngine`` in this process; returns the engines made."""
    made = []

    def make(model_path, options, seed):
        made.append(FakeEngine(model_path, dtype))
        return made[-1]

    engines.vllm_available = lambda: True
    engines.make_vllm_engine = make
    return made
