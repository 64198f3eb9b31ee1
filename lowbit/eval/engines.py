"""The runtimes an evaluation feeds, behind one call: ``engine(batch, output)`` -> a tensor.

    torch_engine(model)      an eager Hugging Face model or a (quantized) FX GraphModule,
                             fed by keyword; any batch and sequence length
    onnx_engine(path)        a (QDQ) ONNX file in onnxruntime (CPU)
    module_engine(folder)    a module folder ``lowbit compile`` wrote (TVM runtime)

``output`` names the output wanted ("last_hidden_state", "logits"); a runtime whose outputs
carry other names (an exporter's ``layer_norm_12``) gives its first output, as ``lowbit
verify`` matches them. A model with fixed input dimensions (a module is compiled for one
[batch, seq]; an ONNX file may fix either) gets each batch fitted to them: rows beyond the
fixed batch run in further calls, missing rows repeat the first row, missing positions are
padding (``pad_id``, attention mask 0, token type 0); the padded rows and positions are cut
from the output. Inputs the model takes and the batch lacks: ``token_type_ids`` (zeros); any
other is refused, naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import ConfigError

__all__ = ["Engine", "module_engine", "onnx_engine", "torch_engine"]


@dataclasses.dataclass
class Engine:
    """``run(feed) -> {output name: tensor}`` with the fixed dimensions of its inputs."""

    name: str                                   # "torch (eager)", "onnxruntime", ...
    run: Callable[[dict], dict[str, torch.Tensor]]
    inputs: tuple[str, ...] | None = None       # None: takes the batch as it comes
    batch: int | None = None                    # fixed batch size
    seq: int | None = None                      # fixed sequence length
    pad_id: int = 0

    def __call__(self, batch: dict, output: str) -> torch.Tensor:
        feed = self._complete(batch)
        b, s = feed["input_ids"].shape
        if self.seq is not None and s > self.seq:
            raise ConfigError(f"{self.name}: a batch of {s} tokens for a model fixed at "
                              f"{self.seq}; give --seq {self.seq} or less")
        step = self.batch or b
        parts = []
        for i in range(0, b, step):
            chunk = {k: v[i:i + step] for k, v in feed.items()}
            parts.append(self._pick(self.run(self._fit(chunk)), output)[:min(step, b - i)])
        out = torch.cat(parts)
        return out[:, :s] if self.seq is not None and out.dim() >= 3 else out

    def _complete(self, batch: dict) -> dict:
        if self.inputs is None:
            return batch
        feed = {}
        for name in self.inputs:
            if name in batch:
                feed[name] = batch[name]
            elif name == "token_type_ids" and "input_ids" in batch:
                feed[name] = torch.zeros_like(batch["input_ids"])
            else:
                raise ConfigError(f"{self.name} takes an input {name!r} that text does not "
                                  f"give (it gives {', '.join(batch)})")
        return feed

    def _fit(self, chunk: dict) -> dict:
        out = {}
        for name, t in chunk.items():
            if self.seq is not None and t.dim() >= 2 and t.shape[1] < self.seq:
                fill = self.pad_id if name == "input_ids" else 0
                t = torch.nn.functional.pad(t, (0, self.seq - t.shape[1]), value=fill)
            if self.batch is not None and t.shape[0] < self.batch:
                t = torch.cat([t, t[:1].expand(self.batch - t.shape[0], *t.shape[1:])])
            out[name] = t
        return out

    @staticmethod
    def _pick(outputs: dict[str, torch.Tensor], output: str) -> torch.Tensor:
        return outputs[output] if output in outputs else next(iter(outputs.values()))


def torch_engine(model: Any, name: str = "torch (eager)") -> Engine:
    def run(feed: dict) -> dict[str, torch.Tensor]:
        out = model(**feed)
        if hasattr(out, "keys"):                     # a ModelOutput
            return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {f"output{i}": v for i, v in enumerate(out)}
    return Engine(name, run)


def onnx_engine(path: Path, *, threads: int | None, pad_id: int = 0) -> Engine:
    from lowbit.backends.onnxruntime import OrtRunner
    from lowbit.model_files import fixed_dim, onnx_summary

    specs = onnx_summary(path).specs
    runner = OrtRunner(path, threads=threads)

    def run(feed: dict) -> dict[str, torch.Tensor]:
        outs = runner.run({k: v.numpy() for k, v in feed.items()})
        return {n: torch.from_numpy(o) for n, o in zip(runner.output_names, outs)}
    batch, seq = (fixed_dim(specs, axis) for axis in (0, 1))
    return Engine("onnxruntime", run, tuple(runner.input_names), batch and batch[0],
                  seq and seq[0], pad_id)


def module_engine(folder: Path, *, pad_id: int = 0) -> Engine:
    import lowbit

    module = lowbit.load(folder)
    if module.target_kind != "llvm":
        raise ConfigError(f"{folder} was compiled for {module.target_kind}; lowbit eval runs "
                          f"CPU modules")
    shape = next((i["shape"] for i in module.meta["inputs"] if len(i["shape"]) >= 2), None)

    def run(feed: dict) -> dict[str, torch.Tensor]:
        outs = module(**{k: v.numpy() for k, v in feed.items()})
        outs = outs if isinstance(outs, tuple) else (outs,)
        return {n: torch.from_numpy(o) for n, o in zip(module.output_names, outs)}
    return Engine("lowbit TVM", run, tuple(module.input_names),
                  shape[0] if shape else None, shape[1] if shape else None, pad_id)
