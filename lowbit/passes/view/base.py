"""GraphView: the small IR-neutral interface a technique is written against once.

A view wraps one graph (a torch.fx GraphModule or an onnx_ir Graph) and speaks two kinds of
object, each the IR's own, compared by identity and used as dict keys:

    node   an op: an ``fx.Node`` / an ``ir.Node``
    value  what an op produces and others read: an ``fx.Node`` (on FX a node *is* its value) /
           an ``ir.Value``; ``out(node)`` and ``producer(value)`` go between the two

On top of navigation (``producer``, ``users``, ``back`` through transparent ops, graph
``order``) sit *recognisers*: each reads one node's neighbourhood in its IR's ops and answers
in IR-free terms (a ``LinearRef``, a ``NormRef``, a canonical op name, a kind string) or None.
Transformer spotting (``lowbit.passes.spot``) is written once over them. A recogniser that
refuses an op that looks like its pattern says why with ``Refused(reason)``.

Parameters are named by the IR's own parameter names (FX: dotted ``get_attr`` targets; ONNX:
initializer names). ``param`` / ``set_param`` read and write them in the IR's array type
(``torch.Tensor`` on FX, ``numpy.ndarray`` on ONNX): the numerics of ``lowbit.quant`` take
either, so scale folding (``W' = W diag(a)``), SmoothQuant placement and PEG permutation
(``W' = W[p, :]``) can be written once over ``param`` / ``set_param`` / ``param_readers`` /
``aliases`` / ``shape`` / ``users``. Inserting new ops (fake-quant vs QDQ, scale pairs) stays
IR-specific, as loading and export do.

A view is a snapshot: recognisers remember the parameters they read (``unrecognised_params``
lists the others) and ``order`` is numbered when the view is made. Make a new view after a
pass rewrites the graph.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

from lowbit.passes.patterns import EmbeddingRef, LinearRef, NormRef

__all__ = ["OPS", "Fused", "GraphView", "Refused"]

# The canonical op vocabulary of ``GraphView.op`` (anything else is None).
OPS = ("matmul", "softmax", "add", "sub", "mul", "div", "where", "masked_fill", "reshape")

Node = Any    # fx.Node | ir.Node
Value = Any   # fx.Node | ir.Value


@dataclasses.dataclass(frozen=True)
class Refused:
    """A recogniser's refusal of an op that has its pattern's shape, with the reason (spotting
    lists it in ``TransformerMap.unclassified``)."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Fused:
    """A fused attention op: its kind ("sdpa" | "mha"), q / k / v inputs and output value."""

    kind: str
    q: Value
    k: Value
    v: Value
    out: Value


class GraphView(abc.ABC):
    """One graph seen through the operations every technique needs (module docstring)."""

    ir: str            # "fx" | "onnx": ``TransformerMap.ir``
    graph: Any         # the wrapped GraphModule / ir.Graph

    # ---- navigation --------------------------------------------------------------------------
    @abc.abstractmethod
    def nodes(self) -> Iterable[Node]:
        """Every node, in graph (topological) order."""

    @abc.abstractmethod
    def order(self, node: Node) -> int:
        """``node``'s position in ``nodes()`` (-1 for None)."""

    @abc.abstractmethod
    def name(self, node: Node) -> str:
        """The node's name in the graph (what ``unclassified`` reports)."""

    @abc.abstractmethod
    def op(self, node: Node | None) -> str | None:
        """The node's op in the canonical vocabulary ``OPS``; None for any other op."""

    @abc.abstractmethod
    def producer(self, value: Value | None) -> Node | None:
        """The node computing ``value`` (FX: the value itself; None for non-values, ONNX
        graph inputs and initializers)."""

    @abc.abstractmethod
    def out(self, node: Node) -> Value:
        """The (first) value ``node`` produces."""

    @abc.abstractmethod
    def inputs(self, node: Node) -> list[Value]:
        """The values ``node`` reads, in operand order (Python numbers and absent optional
        inputs left out)."""

    @abc.abstractmethod
    def users(self, value: Value) -> list[Node]:
        """The nodes that read ``value``'s data (not shape / dtype-only reads, not the graph
        output)."""

    @abc.abstractmethod
    def consumers(self, value: Value) -> list[Node]:
        """The first non-transparent data users of ``value``, in graph order."""

    @abc.abstractmethod
    def descendants(self, value: Value) -> list[Node]:
        """Every node that reads ``value``'s data, directly or not, in graph order."""

    @abc.abstractmethod
    def ancestors(self, value: Value, floor: Value, stop: Iterable[Node]) -> tuple[list, list]:
        """Walk back from ``value`` over computing nodes after ``floor``'s producer; returns
        (the ``stop`` nodes reached, the nodes passed on the way), each in graph order."""

    @abc.abstractmethod
    def back(self, value: Value, *, scales: bool = False) -> Value:
        """Follow ``value`` back through transparent ops (and, with ``scales``, multiplications
        by a scalar) to the value a computing op produced."""

    @abc.abstractmethod
    def is_transparent(self, node: Node | None) -> bool:
        """``node`` moves or re-types data (views, transposes, casts, dropout, quantizers)."""

    @abc.abstractmethod
    def is_scalar_scale(self, node: Node | None) -> bool:
        """``x * c`` or ``x / c`` with a one-element constant ``c``."""

    @abc.abstractmethod
    def data_input(self, node: Node) -> Value:
        """The input whose data a transparent op or a scalar scale passes on."""

    @abc.abstractmethod
    def shape(self, value: Value | None) -> tuple | None:
        """Dims (ints, or strings / symbols where dynamic), None when unknown."""

    @abc.abstractmethod
    def is_graph_output(self, value: Value) -> bool:
        """The graph returns ``value`` itself."""

    # ---- recognisers -------------------------------------------------------------------------
    @abc.abstractmethod
    def linear(self, node: Node) -> LinearRef | Refused | None:
        """``node`` as a matmul against a 2-D weight parameter (bias included where the IR
        fuses or follows it), Refused when it has a weight-like operand that cannot be one."""

    @abc.abstractmethod
    def linear_input(self, ref: LinearRef) -> Value:
        """The activation a linear reads."""

    @abc.abstractmethod
    def linear_out(self, ref: LinearRef) -> Value:
        """The linear's output value (ONNX: after its bias ``Add``)."""

    @abc.abstractmethod
    def norm(self, node: Node) -> tuple[NormRef, Value] | None:
        """(the norm, its input) for a fused norm op, or for the decomposed norm found around
        ``node`` (then ``NormRef.node`` is its last node, not ``node``)."""

    def norms(self) -> Iterator[tuple[NormRef, Value]]:
        """Every norm of the graph, fused or decomposed, in graph order of discovery."""
        for node in self.nodes():
            if (found := self.norm(node)) is not None:
                yield found

    @abc.abstractmethod
    def fused_attention(self, node: Node) -> Fused | None:
        """A fused attention op (FX ``scaled_dot_product_attention``; ONNX ``Attention``,
        ``com.microsoft.MultiHeadAttention``)."""

    @abc.abstractmethod
    def embedding(self, node: Node) -> EmbeddingRef | None:
        """A row lookup in a 2-D table parameter. ``role`` is the index kind: "input" (a graph
        input indexes it: the caller tells word / position / token type apart),
        "embedding.position" (arange, cumsum, a constant of distinct positions) or
        "embedding.token_type"."""

    @abc.abstractmethod
    def index_input(self, ref: EmbeddingRef) -> str:
        """The name of the graph input indexing an embedding of role "input"."""

    @abc.abstractmethod
    def split_source(self, node: Node | None) -> Value | None:
        """The value a split / slice / select takes a part of; None when ``node`` is none."""

    @abc.abstractmethod
    def part_width(self, ref: LinearRef, split: Node, part: Value) -> int | None:
        """Features per token of the part ``part`` (taken by ``split``) of ``ref``'s output."""

    @abc.abstractmethod
    def head_dim(self, core: Node, q: Value, width: int | None,
                 reshape: Node | None) -> int | None:
        """The attention head size at ``core`` (q's last dim; ONNX without shapes: the fused
        op's head count over ``width`` or the last entry of the ``reshape`` that split heads)."""

    @abc.abstractmethod
    def rope_source(self, value: Value) -> Value | None:
        """x for ``x * cos + rotate_half(x) * sin`` (also the partial form) producing ``value``."""

    @abc.abstractmethod
    def is_residual_add(self, node: Node) -> bool:
        """``a + b`` of two activations of the output's shape (a residual stream join)."""

    @abc.abstractmethod
    def act_kind(self, nodes: list[Node]) -> str:
        """Name the activation computed by ``nodes`` ("gelu", "gelu_tanh", "silu", ...)."""

    @abc.abstractmethod
    def unrecognised_params(self) -> list[tuple[str, str]]:
        """(name, reason) for every parameter read by an op no recogniser has claimed."""

    def finish(self) -> None:
        """Called once when a spotting run ends (ONNX logs the names it derived)."""

    # ---- parameters (for the passes that rewrite them) ---------------------------------------
    @abc.abstractmethod
    def param(self, name: str) -> Any:
        """The parameter ``name`` (FX: the live torch tensor; ONNX: a numpy array)."""

    @abc.abstractmethod
    def set_param(self, name: str, array: Any) -> None:
        """Overwrite the parameter ``name`` with ``array`` (same shape; stored in the
        parameter's dtype; FX copies in place so every alias of a tied tensor sees it)."""

    @abc.abstractmethod
    def param_of(self, value: Value | None) -> str | None:
        """The name of the parameter ``value`` is (through dtype casts), else None."""

    @abc.abstractmethod
    def param_readers(self, name: str) -> list[Node]:
        """The ops reading parameter ``name`` (through casts, transposes, weight quantizers):
        a rewrite for some of them changes the others."""

    @abc.abstractmethod
    def aliases(self, name: str) -> list[str]:
        """Every name the graph holds parameter ``name``'s tensor under (tied weights)."""

    def tied_params(self, name: str) -> dict[str, bool]:
        """``aliases(name)`` and, where an exporter stored a tied weight twice, every other
        parameter holding the same values or (2-D) their transpose: name -> transposed."""
        return dict.fromkeys(self.aliases(name), False)

    # ---- small rewrites ----------------------------------------------------------------------
    @abc.abstractmethod
    def replace_uses(self, old: Value, new: Value, readers: Iterable[Node] | None = None) -> None:
        """Make ``readers`` (default: every reader, the graph output included) read ``new``."""

    @abc.abstractmethod
    def remove(self, node: Node) -> None:
        """Remove ``node``, which nothing reads any more."""

    # ---- channel scales (FoldChannelScales, SmoothQuantScales) -------------------------------
    @abc.abstractmethod
    def describe(self, node: Node) -> str:
        """``name (op)`` for messages: the node's name and its IR op (FX target, ONNX type)."""

    @abc.abstractmethod
    def value_name(self, value: Value) -> str:
        """The name of ``value`` in the graph (FX: its node's name)."""

    @abc.abstractmethod
    def is_fake_quant(self, node: Node | None) -> bool:
        """An activation quantizer of a prepared graph (FX ``FakeQuantize`` calls; ONNX has
        no prepared stage: always False)."""

    @abc.abstractmethod
    def keeps_last_axis(self, node: Node | None) -> Value | None:
        """The input whose data ``node`` moves or re-types with its last axis unchanged
        (checked on the shapes), else None."""

    @abc.abstractmethod
    def linear_operands(self, node: Node) -> tuple[Value, str, str] | str:
        """(activation, weight parameter name, layout "out_in" | "in_out") of a linear whose
        weight is a float parameter that may be rewritten, or why ``node`` is not one."""

    @abc.abstractmethod
    def linear_at(self, node: Node | None) -> LinearRef | None:
        """The linear whose output (bias included) ``node`` produces, when its weight and
        bias are parameters that may be rewritten (``linear_operands``)."""

    @abc.abstractmethod
    def param_pinned(self, name: str) -> bool:
        """Parameter ``name`` is also a graph input or output (a rewrite would show)."""

    # ---- channel families (PEG permutation: ``lowbit.passes.peg_family``) --------------------
    @abc.abstractmethod
    def channel_inputs(self, node: Node, c: int) -> list[Value] | None:
        """The inputs of ``node`` carrying the C channels of its output's last axis (parameters
        included), when ``node`` acts on that axis channel by channel (elementwise maps,
        binary ops with a broadcast operand, norms over it, casts, moves and picks keeping
        it, quantizers, an embedding lookup: its table); None for any other op."""

    @abc.abstractmethod
    def order_free(self, value: Value, node: Node) -> bool:
        """``node`` reads ``value`` without depending on the order of its last axis (a
        reduction over it, a dtype-only read)."""

    @abc.abstractmethod
    def linear_bias(self, node: Node) -> list[Value]:
        """The bias a linear op adds itself (FX ``linear`` / ``addmm``, ONNX ``Gemm``)."""

    @abc.abstractmethod
    def is_graph_input(self, value: Value) -> bool:
        """``value`` is an input of the graph (FX placeholder)."""

    def broadcast_operands(self, operands: list[Value], c: int) -> list[Value] | None:
        """The operands of an elementwise op that carry C channels last, when every other one
        broadcasts on that axis (last dim 1, or a scalar); None when one does not or its
        shape is unknown."""
        out = []
        for a in operands:
            shape = self.shape(a)
            if shape is None or (shape and shape[-1] not in (c, 1)):
                return None
            if shape and shape[-1] == c:
                out.append(a)
        return out
