"""What a sharded (FSDP2) launch refuses before any model is built, and what it accepts."""

import pytest
from helpers import tiny_cfg

from cdistill.config import ConfigError, validate_launch
from cdistill.methods import build_method


def launch(tmp_path, sharded, *overrides):
    cfg = tiny_cfg(tmp_path, *overrides)
    validate_launch(cfg, build_method(cfg.method, cfg.constraint, cfg.optim), sharded)


@pytest.mark.parametrize(("overrides", "message"), [
    (["method=seqkd"], "seqkd generates each rank's missing teacher solutions once"),
    (["method=saute"], "under FSDP the student is trained whole"),
    (["model.student.lora={r: 4, alpha: 8, target_modules: [q_proj]}"], "under FSDP the student is trained whole"),
])
def test_a_sharded_launch_refuses_what_it_cannot_run(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        launch(tmp_path, True, *overrides)
    launch(tmp_path, False, *overrides)  # the same config on one process, or under DDP, is fine


@pytest.mark.parametrize("overrides", [["method=cmdp"], ["method=gkd"], ["method=seqkd", "model.teacher.shard=false"]])
def test_a_sharded_launch_accepts_the_rest(tmp_path, overrides):
    launch(tmp_path, True, *overrides)
