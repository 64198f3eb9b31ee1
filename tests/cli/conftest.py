"""The command line as a person runs it: ``python -m lowbit VERB ...`` in a subprocess, in a
work folder of its own, on tiny models saved the way users get them (``save_pretrained``
folders with a tokenizer, an ONNX export, a ``.pt2``).

Session fixtures build each model once and run the verbs whose results later tests read
(``lowbit quantize`` of the tiny BERT, ``lowbit compile`` of its QDQ file); each test then
checks exit codes, what was printed and what was written.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB_WORDS = 120
SEQ = 16                       # every model takes 32 positions; the verbs run at 16


DATA_FILES = ("sst2_dev.tsv", "sst2_train.tsv", "wikitext2_test_raw.txt")


def _env(cache: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", LOWBIT_CACHE=str(cache), PYTHONWARNINGS="ignore")
    env.pop("TVM_NUM_THREADS", None)
    return env


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The SST-2 / WikiText-2 folder the verbs read (``$LOWBIT_DATA`` of the subprocesses, and
    of each test here through ``_data_env``; never set for the rest of the suite):
    ``../shared/data`` where the clone has it, else a stand-in of the same format written from
    real English of the Python docs (``pydoc_data``), labels alternating, so the verbs' plumbing
    is tested on any machine (the figures in docs/ use the real sets)."""
    from lowbit.data import pydoc_sentences, shared_data_dir

    real = shared_data_dir()
    if all((real / f).is_file() for f in DATA_FILES):
        folder = real
    else:
        folder = tmp_path_factory.mktemp("data")
        rows = "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(pydoc_sentences(96, words=12)))
        for split in ("dev", "train"):
            (folder / f"sst2_{split}.tsv").write_text("text\tlabel\n" + rows)
        (folder / "wikitext2_test_raw.txt").write_text(
            "\n = Python = \n\n" + "\n".join(pydoc_sentences(200, words=60)) + "\n")
    return folder


@pytest.fixture(autouse=True)
def _data_env(monkeypatch, data_dir):
    """In-process verbs of this folder's tests read the same data as the subprocesses."""
    monkeypatch.setenv("LOWBIT_DATA", str(data_dir))


@pytest.fixture(scope="session")
def lowbit(tmp_path_factory, data_dir):
    """``lowbit(*args, cwd=...)`` -> CompletedProcess of ``python -m lowbit *args``."""
    env = dict(_env(tmp_path_factory.mktemp("cache")), LOWBIT_DATA=str(data_dir))

    def run(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lowbit", *map(str, args)], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    run.env = env
    return run


def _tokenizer():
    """A word-level tokenizer over the most common words of the calibration text."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lowbit.data import pydoc_sentences

    counts = collections.Counter(" ".join(pydoc_sentences(200)).split())
    words = ["[PAD]", "[UNK]"] + [w for w, _ in counts.most_common(VOCAB_WORDS - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                pad_token="[PAD]")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny models as files: ``bert/`` and ``gpt2/`` (Hugging Face folders with a tokenizer,
    default configs otherwise: GPT-2 with use_cache on), ``nan_bert/`` (one NaN weight),
    ``fixed.onnx`` (float BERT exported at a fixed [2, 16]) and ``bert.pt2``."""
    root = tmp_path_factory.mktemp("models")
    tok = _tokenizer()
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=VOCAB_WORDS, max_position_embeddings=32)).eval()
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=VOCAB_WORDS, n_positions=32,
        bos_token_id=0, eos_token_id=0)).eval()
    for name, model in (("bert", bert), ("gpt2", gpt2)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    ids = torch.randint(2, VOCAB_WORDS, (2, SEQ), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    torch.onnx.export(bert, (ids, mask), root / "fixed.onnx", dynamo=True, verbose=False,
                      input_names=["input_ids", "attention_mask"])
    torch.export.save(torch.export.export(bert, (ids, mask)), root / "bert.pt2")
    with torch.no_grad():
        bert.encoder.layer[1].output.dense.weight[3, 5] = float("nan")
    bert.save_pretrained(root / "nan_bert")
    tok.save_pretrained(root / "nan_bert")
    return root


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """The folder the session's verbs run in (their lowbit-out/ lands here)."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def quantized(lowbit, models, work):
    """``lowbit quantize bert`` with the defaults but a short calibration."""
    done = lowbit("quantize", models / "bert", "--num-calibration", "16", "--seq", SEQ,
                  cwd=work)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="session")
def compiled(lowbit, work, quantized):
    """``lowbit compile`` of that QDQ file at batch 1, sequence 16 (default schedules)."""
    done = lowbit("compile", "lowbit-out/bert-W8A8/model.qdq.onnx", "--seq", SEQ, cwd=work)
    assert done.returncode == 0, done.stderr
    return done
