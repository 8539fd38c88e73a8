"""``python -m cdistill.cli`` under accelerate's FSDP2 on CPU processes (gloo), for tests.

accelerate selects FSDP only for GPU launches (``accelerate launch --config_file conf/accelerate/fsdp.yaml``);
on CPU processes it falls back to plain data parallelism. This shim sets, right after ``Accelerator`` is made,
the state that config sets on GPUs (FSDP2, one unit per decoder layer, full state dict), then runs the command
line unchanged: everything after that, sharding included, is accelerate's and torch's own code.
With ``CDISTILL_FAKE_VLLM=1``, ``rollout.backend=vllm`` samples with ``fake_engine.FakeEngine`` (float32).
"""

import sys

import accelerate
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = accelerate.Accelerator.__init__


def _fsdp_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.state.distributed_type = DistributedType.FSDP
    self.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False)


accelerate.Accelerator.__init__ = _fsdp_init

if __name__ == "__main__":
    import os

    from cdistill.cli import main

    if os.environ.get("CDISTILL_FAKE_VLLM") == "1":
        import torch
        from fake_engine import install

        install(torch.float32)

    main(sys.argv[1:])
