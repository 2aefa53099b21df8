"""Run by ``torchrun --nproc_per_node 2`` from test_distributed.py: train a config (JSON file), optionally resuming
(third argument ``resume``), and save every rank's full model weights to ``<prefix>_rank<r>.pt``."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from dla.train import config_from_dict, train


def main(config_path: str, prefix: str, resume: bool) -> None:
    dist.init_process_group("gloo")  # created here, so train() leaves it alive for the gather below
    result = train(config_from_dict(json.loads(open(config_path).read())), resume=resume or None)
    state = get_model_state_dict(result.model, options=StateDictOptions(full_state_dict=True))
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, f"{prefix}_rank{dist.get_rank()}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] == ["resume"])
