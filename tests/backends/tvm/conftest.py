"""The tiny BERT the TVM tests share (hidden 64, 2 layers, 4 heads, FFN 128, vocab 100; seeded):
the model, a [2, 16] batch and 4 calibration batches, drawn in that order after seed 0."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, vocab_size=100)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    calib = [{"input_ids": torch.randint(0, 100, (2, 16)), "attention_mask": torch.ones_like(ids)}
             for _ in range(4)]
    return model, inputs, calib


@pytest.fixture(scope="session")
def agrees_with_onnxruntime():
    """``check(path, mod, feeds, atol)``: every output of the compiled ``mod`` equals
    onnxruntime's on the same ONNX file, feed by feed, within ``atol`` (rtol 0; output names
    equal too)."""
    from lowbit.backends.onnxruntime import OrtRunner
    from lowbit.testing import compare

    def check(path, mod, feeds, atol: float) -> None:
        ort = OrtRunner(path)
        assert mod.output_names == ort.output_names
        for i, feed in enumerate(feeds):
            for name, want, got in zip(ort.output_names, ort(**feed), mod(**feed)):
                stats = compare(want, got, rtol=0, atol=atol, name=name, input_set=i)
                assert stats.passed, str(stats)
    return check
