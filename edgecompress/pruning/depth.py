"""Depth pruning: whole residual blocks whose branch is added to an identity shortcut.

Width alone cannot make a small or launch-bound model faster (per-layer dispatch dominates;
DESIGN.md "Depth"). A block `y = act(x + f(x))` with an identity shortcut becomes `y = x` when its
branch is replaced by zero (the seed's zero replacement) -- exact when `act` is the identity
(MobileNetV2's inverted residual) and when it is a ReLU fed by non-negative activations (every
ResNet block after the stem's ReLU). So a removable block is replaced by `nn.Identity`, which
keeps every shape, ONNX export and the other blocks' channel groups intact.

A block's score is the seed's zero replacement at block granularity (find_blocks: the deviation
it causes, taken at the network output); scores become contribution rates over all removable
blocks (`keep_blocks`: the fewest highest-rate blocks whose rates sum to >= a knob, the rule of
channels). The pipeline's search uses the score as a block's importance in the latency-priced
order (pruning/cost.py). Blocks are also grouped into stages (same output shape, consecutive)
for reports.
"""
from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from edgecompress.pruning.allocation import check_knob, contribution_rates, cr_count, order

_ADDS = {operator.add, operator.iadd, torch.add}
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Identity, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish)
_ACTIVATION_NAMES = {"relu", "relu_", "relu6", "leaky_relu", "silu", "gelu", "hardswish", "mish"}


@dataclass(frozen=True)
class Block:
    name: str                  # qualified module name
    stage: int                 # consecutive blocks of one output shape (for reports; rates are model-wide)
    score: float               # D_b: mean squared deviation of the block output with the branch zeroed


def identity_residual(module: nn.Module) -> bool:
    """Whether `module`'s forward adds its own input, unchanged, to something else (a residual
    branch with an identity shortcut). Read from a torch.fx trace of the module alone; a module
    fx cannot trace (data-dependent control flow) is not removable."""
    if not any(True for _ in module.children()):
        return False
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:   # noqa: BLE001 - any trace failure means "not provably removable"
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    gm_modules = dict(module.named_modules())

    def is_input(node) -> bool:   # the input itself, or through an nn.Identity / empty Sequential
        while isinstance(node, torch.fx.Node) and node.op == "call_module" and \
                isinstance(gm_modules.get(node.target), (nn.Identity, nn.Sequential)):
            node = node.args[0]
        return node is inputs[0]

    output = next(n for n in graph.nodes if n.op == "output")
    node = output.args[0]
    while isinstance(node, torch.fx.Node) and _is_activation(node, gm_modules):
        node = node.args[0]   # y = act(x + f(x)): the add is the last thing before the activation
    if not isinstance(node, torch.fx.Node):
        return False
    add = (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method" and node.target in ("add", "add_"))
    if not add or len(node.args) < 2 or not all(isinstance(a, torch.fx.Node) for a in node.args[:2]):
        return False
    return is_input(node.args[0]) != is_input(node.args[1])


def _is_activation(node, modules: dict) -> bool:
    """An element-wise activation between the residual add and the block's output."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _ACTIVATION_MODULES)
    if node.op == "call_function":
        return getattr(node.target, "__name__", "") in _ACTIVATION_NAMES
    return node.op == "call_method" and node.target in _ACTIVATION_NAMES


def removable_blocks(model: nn.Module, *, ignored: Iterable[str] = ()) -> list[str]:
    """Names of the identity-residual blocks of `model`, outermost first (a block inside a
    removable block is not listed: removing the outer one removes it too)."""
    skip, found = set(ignored), []
    for name, module in model.named_modules():
        if name and name not in skip and not any(name.startswith(c + ".") for c in found) and identity_residual(module):
            found.append(name)
    return found


@torch.no_grad()
def find_blocks(model: nn.Module, batches: Iterable[torch.Tensor], *, ignored: Iterable[str] = ()) -> list[Block]:
    """Removable blocks of `model` in execution order, grouped into stages and scored.

    The score is the seed's zero replacement at block granularity with the deviation taken at the
    network's output: D_b = E‖logits(branch of b zeroed) - logits‖² per image, one forward pass
    per block over `batches`. Measured, not assumed: the deviation at the block's own output
    ranked ResNet-20's layer3.1 as its least important block of the stage although removing it
    leaves 59 % accuracy (BN recalibrated), while the output deviation ranks it with the blocks
    that cost the most (docs/benchmarks.md "Depth")."""
    batches = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    names = removable_blocks(model, ignored=ignored)
    if not names or not batches:
        return []
    was_training = model.training
    model.eval()
    try:
        shapes, executed = _shapes_in_order(model, names, batches[0][:1])
        reference = [model(x) for x in batches]
        images = sum(len(x) for x in batches)
        blocks, stage, last = [], -1, None
        for name in executed:
            if shapes[name] != last:   # a new stage where the shape changes (a down-sampling block)
                stage, last = stage + 1, shapes[name]
            module = model.get_submodule(name)
            handle = module.register_forward_hook(lambda mod, args, out: args[0])   # branch zeroed: y = x
            try:
                dev = sum(float(((model(x) - ref).double() ** 2).sum()) for x, ref in zip(batches, reference))
            finally:
                handle.remove()
            blocks.append(Block(name=name, stage=stage, score=dev / max(images, 1)))
        return blocks
    finally:
        model.train(was_training)


def _shapes_in_order(model: nn.Module, names: list[str], example: torch.Tensor) -> tuple[dict, list[str]]:
    """Each block's output shape and the order blocks run in; shape-changing ones are dropped."""
    shapes: dict[str, tuple] = {}
    executed: list[str] = []

    def hook(name: str):
        def fn(mod, args, out) -> None:
            if torch.is_tensor(out) and torch.is_tensor(args[0]) and out.shape == args[0].shape and name not in shapes:
                shapes[name] = tuple(out.shape[1:])
                executed.append(name)
        return fn
    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    return shapes, executed


@torch.no_grad()
def safe_blocks(model: nn.Module, blocks: list[Block], example: torch.Tensor) -> tuple[list[Block], list[dict]]:
    """The blocks whose removal keeps the model running with the same output shape (all removed at
    once first: one trial when nothing fails), and the others as `{"layers", "reason"}` items."""
    was_training = model.training
    model.eval()
    try:
        want = model(example).shape

        def works(names: list[str]) -> str | None:
            try:
                got = remove_blocks(model, names).eval()(example).shape
            except Exception as exc:   # noqa: BLE001 - any failure keeps the block
                return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''}"
            return None if got == want else f"output shape {tuple(got)} instead of {tuple(want)}"
        if works([b.name for b in blocks]) is None:
            return blocks, []
        kept, failed = [], []
        for b in blocks:
            why = works([b.name])
            (failed.append({"layers": [b.name], "reason": f"removing the block fails: {why}"}) if why else kept.append(b))
        return kept, failed
    finally:
        model.train(was_training)


def keep_blocks(blocks: list[Block], knob: float) -> set[str]:
    """The fewest highest-rate blocks whose contribution rates sum to >= `knob`, rates taken over
    all the model's removable blocks (not per stage): the score is a deviation of the network's
    output, one unit for every block, and per-stage rates can never remove a stage's only
    removable block (ResNet-18: three of its five) nor prefer a cheap block of one stage over a
    costly one of another (ResNet-20's search removed layer3.2 at 94.68 -> 91.60 % while two
    blocks of stages 1-2 with a tenth of its output deviation stayed)."""
    knob = check_knob(knob)
    if not blocks:
        return set()
    scores = torch.tensor([b.score for b in blocks], dtype=torch.float64)
    return {blocks[i].name for i in order(scores)[:cr_count(scores, knob)].tolist()}


def remove_blocks(model: nn.Module, names: Iterable[str], *, copy_model: bool = True) -> nn.Module:
    """`model` (a copy by default) with each named block replaced by nn.Identity."""
    out = copy.deepcopy(model) if copy_model else model
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, nn.Identity())
    return out


def block_rates(blocks: list[Block]) -> dict[str, float]:
    """Each block's contribution rate among all removable blocks (for reports)."""
    rates = contribution_rates(torch.tensor([b.score for b in blocks], dtype=torch.float64))
    return {b.name: float(r) for b, r in zip(blocks, rates)}
