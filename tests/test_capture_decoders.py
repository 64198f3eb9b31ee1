"""capture() takes Hugging Face decoders as they come: default configs (``use_cache=True``,
so eager forward returns a KV cache torch.export cannot hold) capture without the cache, the
graph computes the eager logits, and the user's model and config are left exactly as they
were. Every decoder family the spotter knows, tiny sizes, everything else the default."""

import copy

import pytest
import torch

from lowbit import find_transformer
from lowbit.capture import capture
from lowbit.errors import CaptureError

transformers = pytest.importorskip("transformers")

VOCAB, LAYERS = 96, 2
TINY = {"hidden_size": 32, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": VOCAB}
DECODERS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=LAYERS, n_head=2, vocab_size=VOCAB)),
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)),
    "gemma3": lambda: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **TINY, head_dim=16)),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **TINY, pad_token_id=0)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY)),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**TINY)),
}


def _inputs():
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("family", DECODERS)
def test_default_config_decoder_captures(family):
    torch.manual_seed(0)
    model = DECODERS[family]().eval()
    assert model.config.use_cache  # as they come
    config_before = copy.deepcopy(vars(model.config))
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = _inputs()

    gm = capture(model, inputs)

    assert vars(model.config) == config_before          # the config exactly as it was
    assert model.config.use_cache is True
    assert all(torch.equal(state_before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        eager = model(**inputs)                          # the user's model still caches
        assert eager.past_key_values is not None
        got = gm(**inputs)
    torch.testing.assert_close(got.logits, eager.logits, rtol=1e-5, atol=1e-5)
    assert len(find_transformer(gm).blocks) == LAYERS


def test_config_restored_when_capture_fails():
    """The cache switch is undone even when torch.export fails for another reason."""
    model = DECODERS["llama"]().eval()
    before = copy.deepcopy(vars(model.config))
    with pytest.raises(CaptureError):
        capture(model, {"input_ids": torch.zeros(2, 8)})   # float ids: embedding refuses
    assert vars(model.config) == before


def test_explicit_use_cache_is_respected():
    """A caller who asks for the cache gets torch's refusal, with what to try."""
    model = DECODERS["gpt2"]().eval()
    with pytest.raises(CaptureError, match="pass use_cache=False"):
        capture(model, {**_inputs(), "use_cache": True})


def test_nested_text_config_switched_and_restored():
    """A multimodal config keeps use_cache in its text_config: switched off there too, and
    put back (without creating attributes that were not there)."""
    from lowbit.capture import _without_kv_cache

    holder = torch.nn.Module()
    holder.config = transformers.Gemma3Config()
    top, text = holder.config, holder.config.text_config
    before = copy.deepcopy(vars(top)), copy.deepcopy(vars(text))
    with _without_kv_cache(holder, {}):
        assert text.use_cache is False
    assert text.use_cache is True and "use_cache" not in vars(top)
    assert (vars(top), vars(text)) == before
