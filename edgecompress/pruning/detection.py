"""Detector structure for pruning: C2f blocks rewritten so Torch-Pruning can trace them, and the
head layers whose outputs must keep their sizes.

Torch-Pruning 1.6 cannot build a dependency graph through C2f's `split` feeding a `cat` together
with the tensors computed from its second half (IndexError in its concat index mapping; the
split's sizes are read for a concat input that is not one of the split's outputs). Its own YOLOv8
example replaces C2f by "C2f_v2": the 1x1 conv whose output is split becomes two 1x1 convs, one
per half (Torch-Pruning issue #147). `unsplit_c2f` does that rewrite in place with the weights
copied, so the outputs are unchanged (tested) and every channel group in the model is traceable.
Any module shaped like Ultralytics' C2f (`cv1` a Conv-BN-act with 2*c outputs, `cv2`, `m`, `c`)
is rewritten, ours and Ultralytics' alike.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class C2fUnsplit(nn.Module):
    """C2f with `cv1` as two convs (`cv1a` -> first half, `cv1b` -> second half): same function."""

    def __init__(self, c2f: nn.Module) -> None:
        super().__init__()
        self.c = c = c2f.c
        self.cv1a, self.cv1b = _half(c2f.cv1, slice(0, c)), _half(c2f.cv1, slice(c, 2 * c))
        self.cv2, self.m = c2f.cv2, c2f.m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1a(x), self.cv1b(x)]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class C2fJoined(nn.Module):
    """A C2fUnsplit with its two halves one conv again, split into the halves' widths (unequal
    when pruning left them so): one conv and one split, as C2f is written, so an engine of a
    pruned detector has no layer the rewrite added. Measured by the jetson-orin estimate on the
    zoo detector (5 C2f): every table entry in unsplit form timed 7-12 % over the original, the
    five extra 1x1 convs, and no removal looked as if it saved time."""

    def __init__(self, block: C2fUnsplit) -> None:
        super().__init__()
        self.sizes = [block.cv1a.conv.out_channels, block.cv1b.conv.out_channels]
        self.cv1 = _joined(block.cv1a, block.cv1b)
        self.cv2, self.m = block.cv2, block.m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split(self.sizes, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


def joined(model: nn.Module) -> nn.Module:
    """`model` with every C2fUnsplit as a C2fJoined (a copy; the model itself when it has none):
    the form engines are exported in (pipeline/builder.export_onnx). Same outputs."""
    if not any(isinstance(m, C2fUnsplit) for m in model.modules()):
        return model
    out = copy.deepcopy(model)
    for name in [n for n, m in out.named_modules() if isinstance(m, C2fUnsplit)]:
        out.set_submodule(name, C2fJoined(out.get_submodule(name)))
    return out


def _joined(a: nn.Module, b: nn.Module) -> nn.Module:
    """One Conv-BN-act block with `a`'s outputs then `b`'s (copies of one block, narrowed apart)."""
    one = copy.deepcopy(a)
    conv, bn = one.conv, one.bn
    conv.weight = nn.Parameter(torch.cat([a.conv.weight.data, b.conv.weight.data]))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.cat([a.conv.bias.data, b.conv.bias.data]))
    conv.out_channels = conv.weight.shape[0]
    bn.weight = nn.Parameter(torch.cat([a.bn.weight.data, b.bn.weight.data]))
    bn.bias = nn.Parameter(torch.cat([a.bn.bias.data, b.bn.bias.data]))
    bn.running_mean = torch.cat([a.bn.running_mean, b.bn.running_mean])
    bn.running_var = torch.cat([a.bn.running_var, b.bn.running_var])
    bn.num_features = conv.out_channels
    return one


def _half(conv_bn_act: nn.Module, channels: slice) -> nn.Module:
    """A copy of a Conv-BN-act block keeping only `channels` of its outputs."""
    half = copy.deepcopy(conv_bn_act)
    conv, bn = half.conv, half.bn
    conv.weight = nn.Parameter(conv.weight.data[channels].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[channels].clone())
    conv.out_channels = conv.weight.shape[0]
    bn.weight = nn.Parameter(bn.weight.data[channels].clone())
    bn.bias = nn.Parameter(bn.bias.data[channels].clone())
    bn.running_mean, bn.running_var = bn.running_mean[channels].clone(), bn.running_var[channels].clone()
    bn.num_features = conv.out_channels
    return half


def is_c2f(module: nn.Module) -> bool:
    cv1 = getattr(module, "cv1", None)
    return (isinstance(getattr(module, "c", None), int) and isinstance(getattr(module, "m", None), nn.ModuleList)
            and hasattr(module, "cv2") and isinstance(getattr(cv1, "conv", None), nn.Conv2d)
            and isinstance(getattr(cv1, "bn", None), nn.BatchNorm2d) and cv1.conv.out_channels == 2 * module.c
            and cv1.conv.groups == 1)


def unsplit_c2f(model: nn.Module) -> list[str]:
    """Replace every C2f-shaped block of `model` in place; returns the names replaced."""
    names = [name for name, m in model.named_modules() if name and is_c2f(m)]
    for name in names:
        model.set_submodule(name, C2fUnsplit(model.get_submodule(name)))
    return names


def fold_removed_bottlenecks(model: nn.Module) -> list[str]:
    """After depth pruning (pruning/depth.remove_blocks puts nn.Identity in place of a C2f
    bottleneck), the identity's output is its input, so cv2 reads the same tensor twice through the
    concat. A conv is linear in its input, W_a·y + W_b·y = (W_a + W_b)·y: the duplicate's weight
    slice is added to the original's and the duplicate leaves the concat, so cv2 loses that many
    input channels and the result is exact. Offsets are the concat inputs' actual widths, so a
    block whose halves width pruning left unequal folds too. Returns the names of the blocks folded."""
    folded = []
    for name, block in model.named_modules():
        if not isinstance(block, C2fUnsplit):
            continue
        while any(isinstance(m, nn.Identity) for m in block.m):
            i = next(i for i, m in enumerate(block.m) if isinstance(m, nn.Identity))
            widths = _concat_widths(block)
            src = i + 2          # y[i+2] = m[i](y[i+1]) = y[i+1]
            _merge_input_slices(block.cv2.conv, start=sum(widths[:src]), width=widths[src],
                                into=sum(widths[:src - 1]))
            del block.m[i]
            folded.append(f"{name}.m.{i}")
    return folded


def _concat_widths(block: C2fUnsplit) -> list[int]:
    """Channels of each tensor the block concatenates: cv1a's, cv1b's, then each bottleneck's
    (a residual one or an identity keeps its input's width)."""
    widths = [block.cv1a.conv.out_channels, block.cv1b.conv.out_channels]
    for m in block.m:
        residual = isinstance(m, nn.Identity) or getattr(m, "add", False)
        # a C3k (YOLO11's C3k2 blocks) ends in cv3, a bottleneck in cv2
        last = getattr(m, "cv3", None) or getattr(m, "cv2", None)
        widths.append(widths[-1] if residual else last.conv.out_channels)
    return widths


def _merge_input_slices(conv: nn.Conv2d, *, start: int, width: int, into: int) -> None:
    w = conv.weight.data
    w[:, into:into + width] += w[:, start:start + width]
    conv.weight = nn.Parameter(torch.cat([w[:, :start], w[:, start + width:]], 1).contiguous())
    conv.in_channels = conv.weight.shape[1]


def prunable_form(model: nn.Module) -> tuple[nn.Module, list[nn.Module], list[str]]:
    """(the model pruning works on, layers whose output channels stay, C2f blocks rewritten): the
    model itself when Torch-Pruning can trace it as written; a copy with its C2f blocks unsplit
    (same outputs) when it has some. A detector's head output convs are never pruned."""
    if not any(is_c2f(m) for m in model.modules()):
        return model, head_output_layers(model), []
    work = copy.deepcopy(model)
    names = unsplit_c2f(work)
    return work, head_output_layers(work), names


def head_output_layers(model: nn.Module) -> list[nn.Module]:
    """The convs that produce the raw head outputs (box and class per stride): never pruned, their
    output sizes are the output format. A model that names them (`output_layers()`, as
    inputs/ultralytics.UltralyticsDetector does) is asked; else the zoo head's `box_out` / `cls_out`."""
    named = getattr(model, "output_layers", None)
    if callable(named):
        return list(named())
    head = getattr(model, "head", None)
    return [*getattr(head, "box_out", ()), *getattr(head, "cls_out", ())]
