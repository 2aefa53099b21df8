"""Pre-training: typed recipes (``configs/*.yaml``), the training loop, checkpoints and torchrun data parallelism.

- ``load_config(path, overrides)`` -> ``RunConfig`` (validated); ``train(config, resume=...)`` -> ``TrainResult``.
- ``dla.train.checkpoint``: atomic, keep-last-N checkpoints with RNG states: one file from one process, a
  sharded ``torch.distributed.checkpoint`` directory from several (resumable on any number of processes).
- ``dla.train.distributed``: torchrun process groups, DDP and FSDP2 wrapping.
- ``dla.train.quickstart``: tiny DLA models and baselines trained and compared on CPU in minutes.
- ``dla.train.cli``: the ``dla train`` and ``dla quickstart`` subcommands.

Run as ``python -m dla.train CONFIG [section.field=value ...]`` (or under ``torchrun``). The names below are
imported on first use, so that building the command line stays fast.

Example:
    >>> from dla.train import load_config, train
    >>> result = train(load_config("tiny", ["train.max_steps=20"]))
"""

import importlib

_EXPORTS = {
    "dla.train.config": ("RunConfig", "ModelSpec", "DataSection", "MQARSection", "TrainSection", "CheckpointSection",
                         "LogSection", "load_config", "config_from_dict", "apply_overrides", "dump_config"),
    "dla.train.loop": ("train", "TrainResult", "evaluate", "check_fit"),
    "dla.train.recipes": ("list_recipes", "resolve_recipe"),
    "dla.train.quickstart": ("run_quickstart",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'dla.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
