"""Pre-training: typed recipes (``configs/*.yaml``), the training loop, checkpoints and torchrun data parallelism.

- ``load_config(path, overrides)`` -> ``RunConfig`` (validated); ``train(config, resume=...)`` -> ``TrainResult``.
- ``dla.train.checkpoint``: atomic, keep-last-N checkpoint files with RNG states.
- ``dla.train.distributed``: torchrun process groups, DDP and FSDP2 wrapping.
- ``dla.train.quickstart``: tiny DLA models and baselines trained and compared on CPU in minutes.
- ``dla.train.cli``: the ``dla train`` and ``dla quickstart`` subcommands.

Run as ``python -m dla.train CONFIG [section.field=value ...]`` (or under ``torchrun``).
"""

from dla.train.config import (CheckpointSection, DataSection, LogSection, ModelSpec, MQARSection, RunConfig,
                              TrainSection, apply_overrides, config_from_dict, dump_config, load_config)
from dla.train.loop import TrainResult, check_fit, evaluate, train
from dla.train.recipes import list_recipes, resolve_recipe

__all__ = ["RunConfig", "ModelSpec", "DataSection", "MQARSection", "TrainSection", "CheckpointSection", "LogSection",
           "load_config", "config_from_dict", "apply_overrides", "dump_config", "train", "TrainResult", "evaluate",
           "check_fit", "list_recipes", "resolve_recipe"]
