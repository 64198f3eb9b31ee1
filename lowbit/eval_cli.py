"""``lowbit eval``: a float model and its quantized twin scored on one task, side by side.

MODEL is a Hugging Face folder: the float (FP32) side, run eagerly by torch, and the tokenizer.
The quantized side is MODEL quantized here with ``--recipe`` (default W8A8, calibrated as
``lowbit quantize`` does: ``--calibration``, ``--num-calibration``) and run as the quantized
FX graph, or ``--quantized PATH``: a QDQ ONNX file (run by onnxruntime) or a module folder
``lowbit compile`` wrote (run by TVM, each batch fitted to its compiled shape).

Tasks (``--task``; by default sst2, or wikitext2 for a causal LM):

    sst2       accuracy on SST-2 dev (``$LOWBIT_DATA`` or ../shared/data); ``--tsv PATH``
               scores a file of your own instead (``text<TAB>label`` under a header)
    wikitext2  perplexity on WikiText-2 test: ``--n`` windows of ``--seq`` tokens every
               ``--stride`` tokens, each token scored once (lowbit.eval.perplexity)

A model with a sequence-classification head predicts with its head. An encoder without one
(all-MiniLM-L6-v2) gets a logistic-regression probe fitted on its FP32 sentence embeddings
of ``--n-train`` labelled training sentences (``--train-tsv``, default SST-2 train), applied
unchanged to the FP32 and to the quantized embeddings: the quantized model is scored on how
well it keeps the float embedding space. Both sides see the same batches; accuracy comes with
the predictions that flipped, McNemar's exact p and a 95% interval of the difference
(lowbit.eval.stats). The table is printed and the report written as JSON (``-o``; default
``lowbit-out/<model>-<recipe>/eval.json``), atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError
from lowbit.model_files import OUT_ROOT, check_positive, kind_of, model_name, out_dir

__all__ = ["EXAMPLES", "add_arguments", "run"]

EXAMPLES = """examples:
  lowbit eval ./minilm                          # SST-2 dev, FP32 vs W8A8 quantized here
  lowbit eval ./minilm --quantized lowbit-out/minilm-W8A8/model.qdq.onnx   # onnxruntime
  lowbit eval ./minilm --quantized lowbit-out/minilm-W8A8/tvm-cpu --n 200  # TVM module
  lowbit eval ./minilm --tsv reviews.tsv --recipe W8A8_DYNAMIC  # your text<TAB>label file
  lowbit eval ./gpt2 --task wikitext2 --n 16 --seq 256          # perplexity
"""
TASKS = ("sst2", "wikitext2")
DEFAULT_N_TRAIN = 8000
DEFAULT_WINDOWS = 32
DEFAULT_BATCH = {"sentences": 32, "windows": 4}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lowbit.quantize_cli import add_calibration_arguments

    p.add_argument("model", type=Path, metavar="MODEL",
                   help="Hugging Face model folder: the FP32 side and the tokenizer")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="sst2 (accuracy) or wikitext2 (perplexity); default sst2, or "
                        "wikitext2 for a causal LM")
    p.add_argument("--tsv", type=Path, default=None, metavar="PATH",
                   help="score your own text<TAB>label file (with a header, as SST-2's) "
                        "instead of SST-2 dev")
    p.add_argument("--quantized", type=Path, default=None, metavar="PATH",
                   help="the quantized side as a file: a QDQ .onnx (onnxruntime) or a module "
                        "folder from lowbit compile (TVM); default: quantize MODEL here with "
                        "--recipe")
    add_calibration_arguments(p, recipe_default=None)
    p.add_argument("--n", type=int, default=None,
                   help=f"examples scored: sentences (default all) or windows (default "
                        f"{DEFAULT_WINDOWS})")
    p.add_argument("--seq", type=int, default=None,
                   help="tokens per sentence (truncation) or per window (default 128, or "
                        "the model's maximum or the quantized file's fixed length if smaller)")
    p.add_argument("--stride", type=int, default=None,
                   help="wikitext2: tokens between window starts (default --seq / 2)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"sentences ({DEFAULT_BATCH['sentences']}) or windows "
                        f"({DEFAULT_BATCH['windows']}) per batch")
    p.add_argument("--n-train", type=int, default=None,
                   help=f"probe training sentences, for an encoder without a classification "
                        f"head (default {DEFAULT_N_TRAIN})")
    p.add_argument("--train-tsv", type=Path, default=None, metavar="PATH",
                   help="the probe's labelled training text (default SST-2 train)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every runtime (default: the cores this process may use)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="PATH",
                   help="the JSON report: a .json file or a folder (default "
                        "lowbit-out/<model>-<recipe>/eval.json)")


# ---- what MODEL is and what the task needs --------------------------------------------------
def _architecture(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"MODEL {folder}: config.json is not readable JSON ({e})") from e
    return ((config.get("architectures") or ["AutoModel"])[0]) or "AutoModel"


def _model_kind(architecture: str) -> str:
    if architecture.endswith("ForSequenceClassification"):
        return "classifier"
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal"
    if architecture.endswith("Model"):
        return "encoder"
    return "other"


def _task(args: argparse.Namespace, architecture: str, kind: str) -> str:
    if args.tsv is not None and args.task == "wikitext2":
        raise ConfigError("--tsv scores labelled sentences; --task wikitext2 is perplexity: "
                          "give one of them")
    task = args.task or ("wikitext2" if kind == "causal" and args.tsv is None else "sst2")
    if task == "wikitext2" and kind != "causal":
        raise ConfigError(f"--task wikitext2: MODEL {args.model} is a {architecture}, not a "
                          f"causal LM; perplexity needs one (--task sst2 scores encoders)")
    if task == "sst2" and kind not in ("classifier", "encoder"):
        what = "a causal LM: score it with --task wikitext2" if kind == "causal" else \
            "neither an encoder nor a sequence classifier (give the base model's folder)"
        raise ConfigError(f"MODEL {args.model} is a {architecture}, {what}")
    for flag, value, wants in (("--stride", args.stride, "wikitext2"),
                               ("--n-train", args.n_train, "sst2"),
                               ("--train-tsv", args.train_tsv, "sst2")):
        if value is not None and task != wants:
            where = "--task wikitext2" if wants == "wikitext2" else "sentence tasks (sst2, --tsv)"
            raise ConfigError(f"{flag} applies to {where}, not to {task}")
    if kind == "classifier" and (args.n_train is not None or args.train_tsv is not None):
        raise ConfigError(f"--n-train / --train-tsv fit a probe; MODEL {args.model} has a "
                          f"classification head ({architecture}) and predicts with it")
    return task


def _data_file(name: str) -> Path:
    from lowbit.data import shared_data_dir

    path = shared_data_dir() / name
    if not path.is_file():
        raise ConfigError(f"{name} not found in {path.parent} (set LOWBIT_DATA to the folder "
                          f"holding it)")
    return path


# ---- the two sides --------------------------------------------------------------------------
@dataclasses.dataclass
class _Sides:
    """The FP32 and quantized engines, with what the report says about them."""

    fp: Any                     # lowbit.eval.engines.Engine
    quantized: Any
    info: dict                  # the report's "quantized" entry
    recipe: str                 # for the table and the folder name
    fixed_seq: int | None       # the quantized file's fixed sequence length
    config: Any                 # MODEL's transformers config


def _on_the_fly(args: argparse.Namespace, seq: int | None) -> _Sides:
    from lowbit import recipes
    from lowbit.eval.engines import torch_engine
    from lowbit.quantize_cli import quantize_hf

    recipe = recipes.get(args.recipe or "W8A8")
    t = time.perf_counter()
    model, qgm, _ = quantize_hf(args.model, recipe, args, batch=2, seq=seq)
    calibration = {"text": args.calibration, "texts": args.num_calibration}
    info = {"kind": "quantized here", "recipe": recipe.name, "engine": "lowbit FX",
            "calibration": calibration, "seconds": time.perf_counter() - t}
    return _Sides(torch_engine(model), torch_engine(qgm, "lowbit FX"), info, recipe.name, None,
                  model.config)


def _check_file(args: argparse.Namespace) -> str:
    """The kind of ``--quantized`` ("onnx" or "module"), or the one line refusing it."""
    if args.recipe is not None:
        raise ConfigError(f"--recipe {args.recipe} quantizes MODEL here; --quantized "
                          f"{args.quantized} is quantized already: give one of them")
    for flag, value, default in (("--calibration", args.calibration, "pydoc"),
                                 ("--num-calibration", args.num_calibration, 128)):
        if value != default:
            raise ConfigError(f"{flag} {value} calibrates MODEL quantized here; --quantized "
                              f"{args.quantized} was calibrated when it was made: drop {flag}")
    kind = kind_of(args.quantized, what="--quantized")
    if kind not in ("onnx", "module"):
        raise ConfigError(f"--quantized {args.quantized}: give a QDQ .onnx file or a module "
                          f"folder lowbit compile wrote (a {kind} model is not run here)")
    return kind


def _from_file(args: argparse.Namespace, threads: int, pad_id: int) -> _Sides:
    from lowbit.eval.engines import module_engine, onnx_engine, torch_engine
    from lowbit.hf import load_hf_model
    from lowbit.model_files import onnx_summary

    kind = _check_file(args)
    if kind == "onnx":
        summary = onnx_summary(args.quantized)
        if not summary.quantized:
            print(f"[lowbit] warning: --quantized {args.quantized} holds no quantization (no "
                  f"Q/DQ nodes): both sides are float", file=sys.stderr)
        recipe, source = summary.recipe or ("qdq" if summary.quantized else "fp32"), \
            summary.source
        engine = onnx_engine(args.quantized, threads=threads, pad_id=pad_id)
    else:
        engine = module_engine(args.quantized, pad_id=pad_id)
        meta_source = json.loads((args.quantized / "meta.json").read_text()).get("source", {})
        recipe, source = meta_source.get("recipe", "qdq"), meta_source.get("torch")
    if source and Path(source).resolve() != args.model.resolve():
        print(f"[lowbit] warning: {args.quantized} records {source} as its source, not MODEL "
              f"{args.model}", file=sys.stderr)
    model, config = load_hf_model(args.model)
    info = {"kind": "file", "path": str(args.quantized), "recipe": recipe,
            "engine": engine.name, "fixed_shape": [engine.batch, engine.seq]}
    return _Sides(torch_engine(model), engine, info, recipe, engine.seq, config)


# ---- the tasks ------------------------------------------------------------------------------
def _labelled(args: argparse.Namespace, kind: str) -> dict:
    """The sentences to score (and, for an encoder, the probe's), read before any model is
    loaded so that a bad file is refused at once."""
    from lowbit.eval.tsv import read_labelled

    path = args.tsv or _data_file("sst2_dev.tsv")
    texts, labels = read_labelled(path, args.n, what="--tsv" if args.tsv else "SST-2 dev")
    if args.n is not None and len(texts) < args.n:
        print(f"[lowbit] --n {args.n}: {path} holds {len(texts)} example(s); scoring all",
              file=sys.stderr)
    data = {"path": path, "texts": texts, "labels": labels, "train": None}
    if kind == "encoder":
        data["train_path"] = args.train_tsv or _data_file("sst2_train.tsv")
        data["train"] = read_labelled(data["train_path"], args.n_train or DEFAULT_N_TRAIN,
                                      what="--train-tsv" if args.train_tsv else "SST-2 train")
    return data


def _sentences(args: argparse.Namespace, sides: _Sides, tok: Any, kind: str, seq: int,
               names: tuple[str, str], data: dict) -> dict:
    from lowbit.eval.classify import classify

    result = classify(sides.fp, sides.quantized, tok, data["texts"], data["labels"],
                      num_labels=sides.config.num_labels if kind == "classifier" else None,
                      train=data["train"], seq=seq,
                      batch_size=args.batch_size or DEFAULT_BATCH["sentences"], names=names)
    result["data"] = {"path": str(data["path"]), "name": "SST-2 dev" if args.tsv is None
                      else data["path"].name, "sentences": result["n"],
                      "tokens": result["tokens"]}
    if data["train"] is not None:
        result["method"]["train_path"] = str(data["train_path"])
    return result


def _wikitext(args: argparse.Namespace, sides: _Sides, tok: Any, seq: int,
              names: tuple[str, str], path: Path) -> dict:
    import torch

    from lowbit.eval.perplexity import perplexity, token_stream, tokens_for, windows

    stride = args.stride or max(1, seq // 2)
    if stride > seq or seq < 2:
        raise ConfigError(f"--stride {stride}: at most --seq ({seq}), and --seq at least 2")
    n = args.n or DEFAULT_WINDOWS
    ids = token_stream(tok, path.read_text(encoding="utf-8"), tokens_for(n, seq, stride))
    if len(ids) < seq:
        raise ConfigError(f"--seq {seq}: {path.name} holds only {len(ids)} token(s)")
    wins = windows(ids, seq, stride, n)
    if len(wins.ids) < n:
        print(f"[lowbit] --n {n}: {path.name} holds {len(wins.ids)} window(s) of {seq} "
              f"tokens every {stride}; scoring all", file=sys.stderr)
    batch = args.batch_size or DEFAULT_BATCH["windows"]
    result: dict = {"n": len(wins.ids), "tokens": wins.tokens, "seconds": {}}
    for engine, name, key in zip((sides.fp, sides.quantized), names, ("fp", "quantized")):
        t = time.perf_counter()
        result[key] = perplexity(
            lambda w, e=engine: e({"input_ids": w, "attention_mask": torch.ones_like(w)},
                                  "logits"),
            wins, batch_size=batch, desc=f"{name} perplexity")
        result["seconds"][name] = time.perf_counter() - t
    result["data"] = {"path": str(path), "name": "WikiText-2 test", "windows": len(wins.ids),
                      "seq": seq, "stride": stride, "tokens_scored": wins.tokens}
    return result


# ---- the report -----------------------------------------------------------------------------
def _rows(task: str, result: dict) -> list[dict]:
    if task == "wikitext2":
        fp, q, n = result["fp"], result["quantized"], result["tokens"]
        return [{"metric": "perplexity", "fp": fp["ppl"], "quantized": q["ppl"],
                 "diff": q["ppl"] - fp["ppl"], "n": n},
                {"metric": "NLL (nats/token)", "fp": fp["nll"], "quantized": q["nll"],
                 "diff": q["nll"] - fp["nll"], "n": n}]
    a = result["accuracy"]
    return [{"metric": "accuracy %", "fp": a["acc_ref"], "quantized": a["acc"],
             "diff": a["diff"], "n": a["n"]}]


def _table(rows: list[dict], names: tuple[str, str]) -> list[str]:
    width = max(len(names[0]), len(names[1]), 9)
    lines = [(f"  {'metric':18s} {names[0]:>{width}s} {names[1]:>{width}s} "
              f"{'diff':>{width}s} {'n':>7s}")]
    for r in rows:
        digits = 4 if r["metric"].startswith("NLL") else 2
        lines.append(f"  {r['metric']:18s} {r['fp']:>{width}.{digits}f} "
                     f"{r['quantized']:>{width}.{digits}f} {r['diff']:>+{width}.{digits}f} "
                     f"{r['n']:>7d}")
    return lines


def _describe(task: str, report: dict, names: tuple[str, str]) -> list[str]:
    r, q = report["result"], report["quantized"]
    how = (f"quantized here, calibrated on {q['calibration']['texts']} "
           f"{q['calibration']['text']} text(s)" if q["kind"] == "quantized here"
           else f"from {q['path']}")
    lines = [(f"{r['data']['name']}: {report['model']} {names[0]} (torch eager) vs "
              f"{names[1]} ({q['engine']}, {how})")]
    if task == "wikitext2":
        d = r["data"]
        lines.append(f"{d['windows']} window(s) of {d['seq']} tokens every {d['stride']}, "
                     f"{d['tokens_scored']} tokens scored once each")
        return lines
    m = r["method"]
    lines.append(f"{r['data']['sentences']} sentences ({r['data']['tokens']} tokens, "
                 f"truncated at {report['seq']})")
    if m["kind"] == "probe":
        lines.append(f"{report['model_class']} has no classification head: a logistic-"
                     f"regression probe was fitted on its {names[0]} sentence embeddings of "
                     f"{m['train_sentences']} labelled sentences "
                     f"({Path(m['train_path']).name}; train accuracy "
                     f"{m['train_accuracy']:.2f}%) and applied unchanged to both sides")
    else:
        lines.append(f"predictions: argmax of the {report['model_class']} head's "
                     f"{m['num_labels']} logits")
    return lines


def _details(task: str, report: dict, names: tuple[str, str]) -> list[str]:
    r = report["result"]
    secs = ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items())
    if task == "wikitext2":
        ratio = r["quantized"]["ppl"] / r["fp"]["ppl"]
        return [f"  perplexity ratio {ratio:.4f} ({100 * (ratio - 1):+.2f}%)",
                f"  seconds: {secs}"]
    a = r["accuracy"]
    lines = [(f"  flips: {a['flips']} of {a['n']} predictions changed ({a['broke']} right "
              f"-> wrong, {a['fixed']} wrong -> right); McNemar p = {a['mcnemar_p']:.3g}; "
              f"difference 95% CI [{a['ci95'][0]:+.2f}, {a['ci95'][1]:+.2f}] points")]
    if "embedding_cosine" in r:
        c = r["embedding_cosine"]
        lines.append(f"  embedding cosine {names[0]} vs {names[1]}: mean {c['mean']:.5f}, min "
                     f"{c['min']:.4f}")
    if r["method"]["kind"] == "probe":
        secs = f"probe {r['method']['seconds']:.1f}, " + secs
    return lines + [f"  seconds: {secs}"]


def _report_path(args: argparse.Namespace, recipe: str) -> Path:
    if args.output is not None:
        return args.output if args.output.suffix == ".json" else args.output / "eval.json"
    q = args.quantized
    if q is not None and q.is_dir() and q.resolve().parent.parent.name == OUT_ROOT.name:
        return q.parent / "eval.json"
    if q is not None and q.is_file():
        return out_dir(q, recipe) / "eval.json"
    return out_dir(args.model, recipe) / "eval.json"


def run(args: argparse.Namespace) -> int:
    import torch

    import lowbit
    from lowbit.io import write_text_atomic
    from lowbit.quantize_cli import hf_seq, tokenizer
    from lowbit.timing import available_cores

    t0 = time.perf_counter()
    check_positive(n=args.n, seq=args.seq, stride=args.stride, batch_size=args.batch_size,
                   n_train=args.n_train, threads=args.threads)
    if kind_of(args.model) != "hf":
        raise ConfigError(f"MODEL {args.model}: lowbit eval takes the float model as a Hugging "
                          f"Face folder (its FP32 side and tokenizer); give a quantized file "
                          f"with --quantized")
    if args.output is not None and args.output.suffix not in ("", ".json"):
        raise ConfigError(f"--output {args.output}: give a .json file or a folder")
    if args.quantized is not None:
        _check_file(args)
    if args.stride is not None and args.seq is not None and args.stride > args.seq:
        raise ConfigError(f"--stride {args.stride}: at most --seq ({args.seq})")
    architecture = _architecture(args.model)
    kind = _model_kind(architecture)
    task = _task(args, architecture, kind)
    data = _labelled(args, kind) if task == "sst2" else _data_file("wikitext2_test_raw.txt")
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    os.environ["TVM_NUM_THREADS"] = str(threads)   # read when TVM's thread pool starts
    tok = tokenizer(args.tokenizer or args.model, why="lowbit eval tokenizes text")
    if args.quantized is None:
        sides = _on_the_fly(args, args.seq)
    else:
        sides = _from_file(args, threads, tok.pad_token_id or 0)
    seq = hf_seq(sides.config, args.seq if args.seq is not None else sides.fixed_seq,
                 args.model)
    if sides.fixed_seq is not None and seq > sides.fixed_seq:
        raise ConfigError(f"--seq {seq}: {args.quantized} runs at most {sides.fixed_seq} "
                          f"tokens (its fixed sequence length); give --seq {sides.fixed_seq} "
                          f"or less")
    names = ("FP32", sides.recipe)
    if task == "wikitext2":
        result = _wikitext(args, sides, tok, seq, names, data)
    else:
        result = _sentences(args, sides, tok, kind, seq, names, data)
    rows = _rows(task, result)
    report = {"task": "tsv" if args.tsv else task, "model": model_name(args.model),
              "model_path": str(args.model.resolve()), "model_class": architecture,
              "fp": {"name": names[0], "engine": sides.fp.name}, "quantized": sides.info,
              "seq": seq, "threads": threads, "metrics": rows, "result": result,
              "seconds": time.perf_counter() - t0, "lowbit_version": lowbit.__version__}
    for line in _describe(task, report, names):
        print(line)
    print()
    for line in _table(rows, names) + _details(task, report, names):
        print(line)
    path = write_text_atomic(_report_path(args, sides.recipe),
                             json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return 0
