"""transformers integration: config validation, Auto* registration, save/load, pipeline, init."""

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedTokenizerFast, pipeline)

from dla.models import MIXER_NAMES, MIXERS, DLACache, DLAConfig, DLAForCausalLM, DLAModel

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song", "we read the book",
             "she saw the cat and the dog"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def test_registry_covers_every_mixer_name():
    assert set(MIXERS) == set(MIXER_NAMES)


def test_auto_classes_resolve_the_dla_model_type(make_config):
    kwargs = {k: v for k, v in make_config("gdn-dla").to_diff_dict().items() if k != "model_type"}
    config = AutoConfig.for_model("dla", **kwargs)
    assert isinstance(config, DLAConfig) and config.capacity == 4
    assert type(AutoModel.from_config(config)) is DLAModel
    assert type(AutoModelForCausalLM.from_config(config)) is DLAForCausalLM


@pytest.mark.parametrize("case", ["mamba2-fenwick", "gdn-dla", "hybrid"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_save_and_load_round_trip_gives_identical_logits(make_model, case, tied, tmp_path):
    model = make_model(case, torch.float32, tie_word_embeddings=tied)
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is DLAForCausalLM and loaded.config.policy == model.config.policy
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name


def test_config_round_trips_through_json(make_config, tmp_path):
    config = make_config("hybrid", score="write", capacity=7)
    config.save_pretrained(tmp_path)
    loaded = DLAConfig.from_pretrained(tmp_path)
    fields = ("mixer", "attention_layers", "policy", "capacity", "tau", "score", "num_heads", "head_k_dim",
              "max_position_embeddings", "tie_word_embeddings")
    assert {f: getattr(loaded, f) for f in fields} == {f: getattr(config, f) for f in fields}
    assert loaded.layer_mixers == ["gdn", "attention"]


@pytest.mark.parametrize("overrides,field", [
    (dict(capacity=0), "capacity"),
    (dict(mixer="rwkv"), "mixer"),
    (dict(policy="lru"), "policy"),
    (dict(score="cosine"), "score"),
    (dict(tau=-0.1), "tau"),
    (dict(tau=float("nan")), "tau"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(mixer="mamba2", num_heads=3), "num_heads"),
    (dict(num_qk_heads=3), "num_qk_heads"),
    (dict(expand_v=1.3), "expand_v"),
    (dict(mixer="attention", num_attention_heads=5), "num_attention_heads"),
    (dict(mixer="attention", num_key_value_heads=3), "num_key_value_heads"),
    (dict(attention_layers=[2]), "attention_layers"),
    (dict(attention_layers=[1, 1]), "attention_layers"),
    (dict(vocab_size=64.0), "vocab_size"),
    (dict(tie_word_embeddings=1), "tie_word_embeddings"),
])
def test_bad_configs_raise_naming_the_field(make_config, overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make_config("gdn-dla", **overrides)


def test_sizes_derived_from_the_config(make_config):
    config = make_config("mamba2-dla", expand=2, hidden_size=32, num_heads=4)
    assert config.value_dim("mamba2") == 16 and config.qk_heads("mamba2") == 1
    config = make_config("gdn-dla", head_k_dim=8, expand_v=1.5)
    assert config.value_dim("gdn") == 12 and config.qk_heads("gdn") == 2
    assert config.mlp_size == 96  # 8/3 * 32 rounded up to a multiple of 32
    model = DLAForCausalLM(make_config("mamba2-fenwick", max_position_embeddings=1000))
    assert model.model.layers[0].mixer.lam_scale.shape == (2, 11)


def test_model_init_applies_the_mixer_inits(make_model):
    model = make_model("mamba2-dla", torch.float32)
    mixer = model.model.layers[0].mixer
    A = torch.exp(mixer.A_log.detach())
    assert float(A.min()) >= 1.0 and float(A.max()) <= 16.0
    dt = torch.nn.functional.softplus(mixer.dt_bias.detach())
    assert float(dt.min()) >= 1e-3 * (1 - 1e-5) and float(dt.max()) <= 0.1 * (1 + 1e-5)
    assert torch.equal(mixer.lam_scale.detach(), torch.ones_like(mixer.lam_scale))
    assert torch.equal(mixer.D.detach(), torch.ones_like(mixer.D))
    assert float(mixer.conv.weight.detach().abs().max()) <= 1 / math.sqrt(mixer.conv.kernel_size)
    assert torch.equal(model.model.norm.weight.detach(), torch.ones(32))
    assert abs(float(model.lm_head.weight.detach().std()) - 0.02) < 0.005


def test_text_generation_pipeline_runs(make_model):
    tok = word_tokenizer()
    model = make_model("hybrid", torch.float32, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id)
    generate = pipeline("text-generation", model=model, tokenizer=tok)
    prompts = ["the cat sat", "a dog ran in the"]
    full = generate(prompts, max_new_tokens=4, do_sample=False)
    assert [o[0]["generated_text"][:len(p)] for o, p in zip(full, prompts)] == prompts
    new = generate(prompts, max_new_tokens=4, do_sample=False, return_full_text=False)
    for o, f, p in zip(new, full, prompts):
        words = o[0]["generated_text"].split()
        assert 1 <= len(words) <= 4 and all(w in tok.get_vocab() for w in words)
        assert f[0]["generated_text"][len(p):].replace(" ", "") == o[0]["generated_text"].replace(" ", "")


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attn_implementation_sdpa_and_eager_are_accepted_and_run_the_same_attention(make_config, implementation,
                                                                                       tmp_path):
    torch.manual_seed(0)
    reference = DLAForCausalLM(make_config("hybrid")).eval()
    assert reference.config._attn_implementation == "sdpa"  # the default
    reference.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=implementation).eval()
    assert model.config._attn_implementation == implementation
    ids = torch.randint(1, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    with pytest.raises(ValueError, match="Flash Attention"):
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_unknown_config_keys_warn_by_name(make_config, tmp_path, recwarn):
    with pytest.warns(UserWarning, match=r"'capcity' is not a field \(did you mean 'capacity'\?\)"):
        config = make_config("gdn-dla", capcity=8)
    assert config.capacity == 4  # the typo changed nothing
    recwarn.clear()
    DLAForCausalLM(make_config("hybrid", use_qk_l2norm=False)).save_pretrained(tmp_path)
    DLAForCausalLM.from_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).use_qk_l2norm is False
    assert not [w for w in recwarn if "is not a field" in str(w.message)]  # transformers' own keys are no typo


def test_use_qk_l2norm_reaches_the_gdn_layers(make_config):
    model = DLAForCausalLM(make_config("hybrid", use_qk_l2norm=False))
    assert model.model.layers[0].mixer.use_qk_l2norm is False
    assert DLAForCausalLM(make_config("hybrid")).model.layers[0].mixer.use_qk_l2norm is True
    with pytest.raises(ValueError, match="^use_qk_l2norm:"):
        make_config("gdn-dla", use_qk_l2norm="yes")


@pytest.mark.parametrize("cut", ["half", "header"])
def test_truncated_safetensors_raise_naming_the_file(make_model, tmp_path, cut):
    make_model("gdn-dla", torch.float32).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2 if cut == "half" else 5)
    for load in (DLAForCausalLM.from_pretrained, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(ValueError, match=rf"^pretrained_model_name_or_path: '{weights}' is truncated"):
            load(tmp_path)


def test_empty_input_raises_naming_it(make_model):
    model = make_model("gdn-dla")
    with pytest.raises(ValueError, match=r"^input_ids: .*T >= 1"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^inputs_embeds: .*T >= 1"):
        model(inputs_embeds=torch.zeros(2, 0, 32, dtype=torch.float64))


def test_use_cache_defaults_and_unknown_arguments(make_model):
    model, ids = make_model("gdn-dla"), torch.randint(1, 64, (1, 5))
    assert isinstance(model(ids).past_key_values, DLACache)
    assert model(ids, use_cache=False).past_key_values is None
    model.train()
    assert model(ids).past_key_values is None
    with pytest.raises(ValueError, match="^foo:"):
        model(ids, foo=1)
    with pytest.raises(ValueError, match="^input_ids, inputs_embeds:"):
        model()
    with pytest.raises(ValueError, match="^past_key_values:"):
        model(ids, past_key_values=object())
    assert isinstance(model(ids, return_dict=False), tuple)


def test_logits_to_keep_takes_the_last_positions_an_index_or_a_mask(make_model):
    model = make_model("gdn").eval()
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        same = lambda a, b: a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-14)  # noqa: E731
        assert same(model(input_ids=ids, logits_to_keep=3).logits, full[:, -3:])
        index = torch.tensor([0, 5, 11])
        assert same(model(input_ids=ids, logits_to_keep=index).logits, full[:, index])
        mask = torch.rand(2, 12, generator=torch.Generator().manual_seed(4)) < 0.4
        assert same(model(input_ids=ids, logits_to_keep=mask).logits, full[mask])
        with pytest.raises(ValueError, match=r"logits_to_keep: a bool mask must be \[B, T\]"):
            model(input_ids=ids, logits_to_keep=mask[:, :5])
        with pytest.raises(ValueError, match=r"logits_to_keep: a bool mask must be \[B, T\]"):
            model(input_ids=ids, logits_to_keep=mask.T)
        with pytest.raises(ValueError, match="labels:"):
            model(input_ids=ids, labels=ids, logits_to_keep=mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_host_mask_selects_the_same_logits_on_the_gpu(make_model):
    """The trainer passes its scored-position mask on the host (the model finds the rows there, with no device
    sync); a mask on the device selects the same rows."""
    model = make_model("gdn").eval().cuda()
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(3)).cuda()
    mask = torch.rand(2, 12, generator=torch.Generator().manual_seed(4)) < 0.4
    with torch.no_grad():
        full = model(input_ids=ids).logits
        host = model(input_ids=ids, logits_to_keep=mask).logits
        device = model(input_ids=ids, logits_to_keep=mask.cuda()).logits
    assert host.device == full.device and torch.equal(host, device) and torch.equal(host, full[mask.cuda()])
