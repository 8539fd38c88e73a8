"""Where training completions come from: the prompt stream and batch sources (``sources``), the rollout type every
sampler returns (``types``), sampling with Hugging Face ``generate`` (``sampling``), the saute student's
budget-tracking sampler (``budget_sampler``) and other engines (``engines``: vLLM)."""
