"""Save a compiled W8A8 tiny BERT and load it in a fresh process with the TVM runtime only
(``TVM_USE_RUNTIME_LIB=1``: no compiler library, ``tvm.relax`` not importable); the loaded
module must give bit-identical outputs (same kernels, same inputs)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import tvm
from transformers import BertConfig, BertModel

from lowbit import recipes
from lowbit.backends.tvm.runtime import load
from lowbit.capture import capture
from lowbit.compiler import compile
from lowbit.errors import LowbitError
from lowbit.quantize import quantize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=128, vocab_size=100)
    ids = torch.randint(0, 100, (1, 8))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    gm = capture(BertModel(cfg).eval(), inputs)
    q = quantize(gm, recipes.W8A8, calibration=[inputs], progress=False)
    return compile(q, progress=False), inputs


@pytest.fixture(scope="module")
def saved(compiled, tmp_path_factory):
    mod, inputs = compiled
    ids = inputs["input_ids"]
    folder = mod.save(tmp_path_factory.mktemp("compiled") / "tiny_bert")
    mod.save(folder)                 # saving over a saved module replaces it
    want = mod(**inputs)
    np.savez(folder.parent / "io.npz", ids=ids.numpy(), mask=inputs["attention_mask"].numpy(),
             out0=want[0].numpy(), out1=want[1].numpy())
    return folder


def test_saved_files(saved):
    assert sorted(os.listdir(saved)) == ["meta.json", "model.so", "params.bin"]
    meta = json.loads((saved / "meta.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    # weights live in params.bin, not in the library
    assert os.path.getsize(saved / "params.bin") > 40_000


def test_save_is_atomic_and_refuses_foreign_folders(compiled, tmp_path, monkeypatch):
    """A save that fails half-way leaves nothing behind (no temporary folder, no partial
    module); a folder that is not a saved module is never overwritten."""
    mod = compiled[0]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(LowbitError, match="not a saved lowbit module"):
        mod.save(other)
    assert (other / "notes.txt").read_text() == "keep me"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tvm.runtime, "save_param_dict_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        mod.save(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_load_in_process(saved):
    z = np.load(saved.parent / "io.npz")
    out = load(saved)(z["ids"], z["mask"])
    np.testing.assert_array_equal(out[0], z["out0"])


def test_load_with_runtime_only_in_subprocess(saved):
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from lowbit.backends.tvm.runtime import load
        m = load({str(saved)!r})
        z = np.load({str(saved.parent / "io.npz")!r})
        out = m(input_ids=z["ids"], attention_mask=z["mask"])
        assert np.array_equal(out.last_hidden_state, z["out0"]), "outputs differ"
        assert np.array_equal(out.pooler_output, z["out1"]), "outputs differ"
        assert "tvm.relax" not in sys.modules
        print("OK")
    """)
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-3000:]
