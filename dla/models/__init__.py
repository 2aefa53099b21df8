"""DLA language models for transformers: importing this package registers model type ``dla`` with
``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from dla.models.configuration_dla import MIXER_NAMES, DLAConfig
from dla.models.modeling_dla import MIXERS, DLACache, DLAForCausalLM, DLAModel, DLAPreTrainedModel

AutoConfig.register(DLAConfig.model_type, DLAConfig, exist_ok=True)
AutoModel.register(DLAConfig, DLAModel, exist_ok=True)
AutoModelForCausalLM.register(DLAConfig, DLAForCausalLM, exist_ok=True)

__all__ = ["DLAConfig", "DLAModel", "DLAForCausalLM", "DLAPreTrainedModel", "DLACache", "MIXERS", "MIXER_NAMES"]
