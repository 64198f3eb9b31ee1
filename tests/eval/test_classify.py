"""Accuracy side by side: the probe is fitted once, on the float model's embeddings of the
training text, and the same probe scores both sides; head models predict with their head.
Each prediction is checked against the model run on that sentence alone (no batching, no
sorting)."""

import pytest
import torch

from lowbit.eval.classify import classify
from lowbit.eval.engines import torch_engine
from lowbit.eval.probe import Probe
from lowbit.models.minilm import mean_pool

transformers = pytest.importorskip("transformers")

WORDS = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull", "the", "a", "film",
         "plot", "is", "was", "very"]
CONFIG = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 64, "vocab_size": len(WORDS) + 2, "max_position_embeddings": 32}


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]",
                                                pad_token="[PAD]")


def _sentences(n, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(2, 9, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,),
                                                                   generator=g)))
    labels = [int(any(w in s.split() for w in ("good", "great", "nice", "fine"))) for s in out]
    return out, labels


def _noisy_copy(model, scale):
    q = type(model)(model.config).eval()
    q.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in q.parameters():
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    return q


def test_probe_fitted_once_on_fp_and_used_for_both(tok, monkeypatch):
    torch.manual_seed(0)
    fp = transformers.BertModel(transformers.BertConfig(**CONFIG)).eval()
    q = _noisy_copy(fp, 0.05)
    fits = []
    fit = Probe.fit

    def counted(self, x, y, c=1.0):
        fits.append((self, x.clone()))
        return fit(self, x, y, c)
    monkeypatch.setattr(Probe, "fit", counted)
    train, dev = _sentences(40, 1), _sentences(15, 2)
    out = classify(torch_engine(fp), torch_engine(q), tok, *dev, num_labels=None, train=train,
                   seq=16, batch_size=4, show=False)
    assert len(fits) == 1
    probe, x_train = fits[0]

    def alone(model, text):
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return mean_pool(h.last_hidden_state, enc["attention_mask"])[0]
    ref_train = torch.stack([alone(fp, s) for s in train[0]])
    torch.testing.assert_close(x_train, ref_train, rtol=1e-5, atol=1e-5)   # FP embeddings
    labels = torch.tensor(dev[1])
    for model, key in ((fp, "acc_ref"), (q, "acc")):
        pred = probe.predict(torch.stack([alone(model, s) for s in dev[0]]))
        assert out["accuracy"][key] == pytest.approx(100 * float((pred == labels).double()
                                                                 .mean()))
    assert out["method"]["kind"] == "probe" and out["method"]["train_sentences"] == 40
    assert out["n"] == 15 and 0 < out["embedding_cosine"]["mean"] <= 1


def test_head_predicts_with_its_logits(tok):
    torch.manual_seed(0)
    fp = transformers.BertForSequenceClassification(transformers.BertConfig(
        **CONFIG, num_labels=3)).eval()
    q = _noisy_copy(fp, 0.2)
    texts = _sentences(17, 4)[0]
    labels = [i % 3 for i in range(17)]
    out = classify(torch_engine(fp), torch_engine(q), tok, texts, labels, num_labels=3,
                   train=None, seq=16, batch_size=5, show=False)
    preds = []
    for model in (fp, q):
        with torch.no_grad():
            preds.append(torch.tensor([int(model(**tok([t], return_tensors="pt"))
                                           .logits.argmax()) for t in texts]))
    y = torch.tensor(labels)
    assert out["accuracy"]["acc_ref"] == pytest.approx(100 * float((preds[0] == y)
                                                                   .double().mean()))
    assert out["accuracy"]["acc"] == pytest.approx(100 * float((preds[1] == y).double().mean()))
    assert out["accuracy"]["flips"] == int((preds[0] != preds[1]).sum())
    assert out["method"] == {"kind": "head", "num_labels": 3}


def test_labels_outside_the_head_refused(tok):
    from lowbit.errors import ConfigError

    fp = transformers.BertForSequenceClassification(transformers.BertConfig(**CONFIG)).eval()
    with pytest.raises(ConfigError, match=r"label\(s\) \[5\] are not classes"):
        classify(torch_engine(fp), torch_engine(fp), tok, ["good film"], [5], num_labels=2,
                 train=None, seq=8, batch_size=2, show=False)
