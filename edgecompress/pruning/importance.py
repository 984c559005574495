"""Weight-permutation channel importance, exactly and in one pass (DESIGN.md, "Importance").

The seed scores output channel i of a layer by replacing its kernel k_i (shuffle, zero or
re-initialise) and measuring D_i = sum((Y - Y')^2) / samples at the layer output. A convolution
is linear in its weights, so a replacement k_i -> k_i + d_i changes only channel i, by
conv(X, d_i): every channel's change fits in ONE convolution with the stacked delta kernels
(modes "shuffle", "zero", "reinit"). The expectation over all permutations has a closed form
built from four statistics gathered by forward hooks (mode "expected"):

    T = sum_p |x_p|^2,   U = sum_p (1.x_p)^2,   V_i = sum_p (1.x_p)(k_i.x_p),   |Y_i|^2
    E[D_i] = a_i T + b_i (U - T) - 2 m_i V_i + |Y_i|^2

with n = c_in/groups * prod(kernel), S = sum k_i, Q = sum k_i^2, a = Q/n, b = (S^2-Q)/(n(n-1)),
m = S/n; T, U (and the V they pair with) are per convolution group; the bias is excluded.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.errors import UserError

MODES = ("expected", "shuffle", "zero", "reinit")
SITES = ("conv", "bn")
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def is_scorable(module: nn.Module) -> bool:
    """Layers whose output channels we score: convolutions (not transposed) and Linear."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def scorable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv / Linear by qualified name, in `named_modules` order (the seeding order)."""
    return {name: m for name, m in model.named_modules() if is_scorable(m)}


def iter_inputs(batches: Iterable) -> Iterator[torch.Tensor]:
    """Inputs of `batches`: tensors, or (inputs, labels, ...) pairs of which the first is taken."""
    for item in batches:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise UserError(f"a calibration batch is a {type(x).__name__}, not a tensor",
                            "give tensors or (inputs, labels) pairs, e.g. a DataLoader")
        yield x


def run_model(model: nn.Module, batches: Iterable, *, on_batch: Callable | None = None) -> int:
    """One no-grad pass in eval mode; returns the number of samples seen. Shape errors -> UserError."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training, samples = model.training, 0
    model.eval()
    try:
        with torch.no_grad():
            for i, x in enumerate(iter_inputs(batches)):
                _forward_checked(model, x.to(device), i)
                samples += x.shape[0]
                if on_batch is not None:
                    on_batch(i)
    finally:
        model.train(was_training)
    if samples == 0:
        raise UserError("the calibration batches are empty", "give at least one non-empty batch of inputs")
    return samples


def _forward_checked(model: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
    try:
        return model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the model rejected calibration batch {index} of shape {tuple(x.shape)}: {first}",
                        "give batches shaped like the model's input (N, C, H, W) from the same data") from exc


def classifier_attribute(model: nn.Module) -> str | None:
    """Name of the model's `fc` attribute when it is a conv / Linear (the zoo's convention)."""
    fc = getattr(model, "fc", None)
    names = {m: n for n, m in scorable_layers(model).items()}
    return names.get(fc) if isinstance(fc, nn.Module) else None


def final_layer(model: nn.Module, example_input: torch.Tensor) -> str | None:
    """The classifier whose outputs are the model's outputs: attribute `fc`, else the last conv /
    Linear executed in a forward pass."""
    fc = classifier_attribute(model)
    if fc is not None:
        return fc
    order: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
               for n, m in scorable_layers(model).items()]
    try:
        run_model(model, [example_input])
    finally:
        for h in handles:
            h.remove()
    return order[-1] if order else None


# ---------------------------------------------------------------------------------------------
# expected mode: four statistics per layer, one pass


def _explicit_padding(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> tuple[torch.Tensor, object]:
    """Apply string ('same') or non-zero-mode padding to `x` explicitly, as Conv._conv_forward
    does for padding modes, so every statistic below sees exactly the layer's padded input."""
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return x, conv.padding
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, conv._reversed_padding_repeated_twice, mode=mode), 0


def _sq_norm(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    # reducing the contiguous last dim first: vector_norm over (0, 2, 3) at once is ~7x slower
    return torch.linalg.vector_norm(z, dim=dim) ** 2


def _ones_conv(conv: nn.modules.conv._ConvNd, z: torch.Tensor, padding) -> torch.Tensor:
    """conv(z, all-ones kernel) per group, with the layer's stride / dilation. `z` holds per-group
    channel sums (N, groups, *spatial): summing channels first and then convolving with a
    (groups, 1, *k) kernel equals the all-ones kernel on all channels at 1/c_in of the cost."""
    if all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride) and not any(_flat(padding)):
        return z   # 1x1, stride 1, unpadded: the ones kernel is the identity
    if conv.groups == 1 and len(conv.kernel_size) == 2 and not isinstance(padding, str):
        return _box_sum_2d(z, conv.kernel_size, conv.stride, _pair(padding), conv.dilation)
    ones = torch.ones((conv.groups, 1, *conv.kernel_size), dtype=z.dtype, device=z.device)
    return _CONV_FN[len(conv.kernel_size)](z, ones, None, conv.stride, padding, conv.dilation, conv.groups)


def _pair(padding) -> tuple[int, int]:
    flat = _flat(padding)
    return (flat[0], flat[0]) if len(flat) == 1 else (flat[0], flat[1])


def _box_sum_2d(z: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """conv2d(z, ones kernel) per channel as kh + kw strided slice sums (rows, then columns):
    the same numbers as the convolution. For the one channel of a groups=1 layer it is faster
    than oneDNN's convolution (median 64 vs 98 us on (32, 1, 28, 28); ResNet-56's importance
    pass went from 1.75x to 1.37x its forward pass); for many channels (depthwise) oneDNN's
    depthwise kernel is faster (485 vs 1,232 us on (32, 144, 14, 14)), so it is used there."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    z = F.pad(z, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else z
    ho = (z.shape[-2] - dh * (kh - 1) - 1) // sh + 1
    wo = (z.shape[-1] - dw * (kw - 1) - 1) // sw + 1
    rows = sum(z[..., i * dh: i * dh + sh * (ho - 1) + 1: sh, :] for i in range(kh))
    return sum(rows[..., j * dw: j * dw + sw * (wo - 1) + 1: sw] for j in range(kw))


def _flat(padding) -> tuple:
    return tuple(padding) if isinstance(padding, (tuple, list)) else (padding,)


def _coverage(conv: nn.modules.conv._ConvNd, spatial: tuple, padding, device) -> torch.Tensor:
    """How many output positions' patches contain each input position: the gradient of
    sum(conv(input, ones)) with respect to the input. T = sum(x^2 * coverage), no convolution."""
    with torch.enable_grad():
        probe = torch.ones((1, 1, *spatial), device=device, requires_grad=True)
        ones = torch.ones((1, 1, *conv.kernel_size), device=device)
        out = _CONV_FN[len(conv.kernel_size)](probe, ones, None, conv.stride, padding, conv.dilation)
        (grad,) = torch.autograd.grad(out.sum(), probe)
    return grad[0, 0]


class _Coverage:
    """T = sum_p |x_p|^2 = sum over input positions of x^2 * coverage, per group.

    Coverage is constant (prod(kernel)) except near padded borders for stride-1 layers, so
    T = c_max |x|^2 - sum over the few border positions of x^2 (c_max - coverage): a norm and a
    small gather instead of squaring the whole input (the square was 10 % of the pass)."""

    def __init__(self, cov: torch.Tensor) -> None:
        self.cov = cov
        self.cmax = float(cov.max())
        deficit = self.cmax - cov
        self.idx = torch.nonzero(deficit).flatten()
        self.deficit = deficit[self.idx]
        self.sparse = len(self.idx) <= len(cov) // 4

    def weighted_sq(self, xs: torch.Tensor) -> torch.Tensor:
        """xs: (N, groups, channels per group, positions) -> (groups,)"""
        if not self.sparse:   # strided layers: coverage alternates, weight every position
            return torch.matmul(xs * xs, self.cov).sum((0, 2))
        total = self.cmax * _sq_norm(xs).sum((0, 2))
        if len(self.idx):
            border = xs.index_select(3, self.idx)
            total = total - torch.matmul(border * border, self.deficit).sum((0, 2))
        return total


class _ExpectedStats:
    """T, U (per group), V and |Y|^2 (per channel) for one layer: per-batch sums in float32 with
    vectorised norms / matmuls (the hooks must cost little next to the forward pass), accumulated
    across batches in float64."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        groups = getattr(module, "groups", 1)
        out = module.weight.shape[0]
        dev = module.weight.device
        self.t = torch.zeros(groups, dtype=torch.float64, device=dev)
        self.u = torch.zeros(groups, dtype=torch.float64, device=dev)
        self.v = torch.zeros(out, dtype=torch.float64, device=dev)
        self.yy = torch.zeros(out, dtype=torch.float64, device=dev)
        self._cov: dict[tuple, torch.Tensor] = {}

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        y = output if module.bias is None else output - _channel_view(module.bias, output, module)
        if isinstance(module, nn.Linear):
            self._linear(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
        else:
            self._conv(x, y)

    def _linear(self, x: torch.Tensor, y: torch.Tensor) -> None:
        s1 = x.sum(1)
        self.t += _sq_norm(x).sum().double()
        self.u += _sq_norm(s1, dim=0).double()
        self.v += (s1 @ y).double()
        self.yy += _sq_norm(y.t()).double()

    def _conv(self, x: torch.Tensor, y: torch.Tensor) -> None:
        conv, g = self.module, self.module.groups
        x, padding = _explicit_padding(conv, x)
        n, c = x.shape[:2]
        xs = x.reshape(n, g, c // g, -1)
        key = tuple(x.shape[2:])
        if key not in self._cov:
            self._cov[key] = _Coverage(_coverage(conv, key, padding, x.device).reshape(-1))
        self.t += self._cov[key].weighted_sq(xs).double()
        s1 = xs if c == g else torch.matmul(torch.ones(1, c // g, dtype=x.dtype, device=x.device), xs)
        o1 = _ones_conv(conv, s1.reshape(n, g, *key), padding).reshape(n, g, 1, -1)   # 1.x_p
        self.u += _sq_norm(o1).sum((0, 2)).double()
        yg = y.reshape(n, g, y.shape[1] // g, -1)
        if yg.shape[2] == 1:   # depthwise: n*g one-row matmuls would be slower than a product
            self.v += (yg * o1).sum(3).sum(0).reshape(-1).double()
        else:
            self.v += torch.matmul(yg, o1.transpose(2, 3)).sum(0).reshape(-1).double()
        self.yy += _sq_norm(yg).sum(0).reshape(-1).double()

    def scores(self, samples: int) -> torch.Tensor:
        w = self.module.weight.detach().to(torch.float64)
        out = w.shape[0]
        k = w.reshape(out, -1)
        n = k.shape[1]
        s, q = k.sum(1), (k * k).sum(1)
        a, m = q / n, s / n
        b = (s * s - q) / (n * (n - 1)) if n > 1 else torch.zeros_like(s)
        per = out // self.t.numel()   # channels per convolution group
        t, u = self.t.repeat_interleave(per), self.u.repeat_interleave(per)
        d = a * t + b * (u - t) - 2 * m * self.v + self.yy
        return d.clamp_min(0) / samples   # cancellation can leave -1e-12 for near-constant kernels


def _channel_view(vec: torch.Tensor, like: torch.Tensor, module: nn.Module) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return vec
    return vec.reshape(1, -1, *([1] * (like.dim() - 2)))


# ---------------------------------------------------------------------------------------------
# literal modes: one batched delta convolution per draw


def layer_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of layer number `index` (in `scorable_layers` order): draws do not
    depend on which other layers are scored or on the batches."""
    return torch.Generator().manual_seed(int(seed) * 100_003 + index)


def delta_kernels(weight: torch.Tensor, *, mode: str, draws: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The replacement minus the weight, every output channel at once, one tensor per draw."""
    w = weight.detach().cpu()
    if mode == "zero":
        return [(-w).to(weight.device)]   # deterministic: one draw is the exact value
    deltas = []
    for _ in range(draws):
        if mode == "shuffle":
            flat = w.reshape(w.shape[0], -1)
            perm = torch.argsort(torch.rand(flat.shape, generator=generator), dim=1)
            new = torch.gather(flat, 1, perm).reshape(w.shape)
        elif mode == "reinit":
            # nn.Conv2d / nn.Linear reset_parameters: kaiming_uniform_(a=sqrt(5))
            new = nn.init.kaiming_uniform_(torch.empty_like(w), a=math.sqrt(5), generator=generator)
        else:
            raise UserError(f"unknown importance mode {mode!r}", f"valid: {', '.join(MODES)}")
        deltas.append((new - w).to(weight.device))
    return deltas


def delta_output(module: nn.Module, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """conv(X, delta) (or linear): every channel's output change at once, bias excluded."""
    if isinstance(module, nn.Linear):
        return F.linear(x, delta)
    return module._conv_forward(x, delta, None)  # honours padding_mode, stride, dilation, groups


class _LiteralStats:
    """Accumulates sum(conv(X, delta_d)^2) per channel over draws, in float64.

    Draws are stacked into the output dimension too (within each convolution group, so grouped
    layers keep their layout): one convolution covers a chunk of draws, bounded in memory."""

    MAX_ELEMENTS = 1 << 24   # of the stacked output per chunk (64 MiB in float32)

    def __init__(self, module: nn.Module, deltas: list[torch.Tensor]) -> None:
        self.module, self.deltas = module, deltas
        self.groups = getattr(module, "groups", 1)
        self.dd = torch.zeros(module.weight.shape[0], dtype=torch.float64, device=module.weight.device)
        self._chunks: list[torch.Tensor] | None = None

    def _stack(self, per_draw_elements: int) -> list[torch.Tensor]:
        size = max(1, self.MAX_ELEMENTS // max(per_draw_elements, 1))
        out, g = self.deltas[0].shape[0], self.groups
        chunks = []
        for i in range(0, len(self.deltas), size):
            part = torch.stack(self.deltas[i:i + size], 0)                 # (D, out, ...)
            part = part.reshape(len(part), g, out // g, *part.shape[2:]).transpose(0, 1)
            chunks.append(part.reshape(-1, *self.deltas[0].shape[1:]))     # (g * D * out/g, ...)
        return chunks

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self._chunks is None:
            self._chunks = self._stack(output.numel())
        out, g = self.dd.numel(), self.groups
        for stacked in self._chunks:
            dy = delta_output(module, inputs[0], stacked)
            if isinstance(module, nn.Linear):
                dy = dy.reshape(-1, dy.shape[-1]).t()                    # (D * out, rows)
            else:
                dy = dy.reshape(dy.shape[0], dy.shape[1], -1).transpose(0, 1)   # (g*D*out/g, n, P)
            per = _sq_norm(dy.reshape(dy.shape[0], -1))                  # one value per stacked channel
            draws = per.numel() // out
            per = per.reshape(g, draws, out // g) if g > 1 else per.reshape(1, draws, out)
            self.dd += per.sum(1).reshape(-1).double()

    def scores(self, samples: int) -> torch.Tensor:
        return self.dd / (samples * len(self.deltas))


# ---------------------------------------------------------------------------------------------
# deviation after the following BatchNorm


class _BatchNormFinder:
    """Pairs each layer with the BatchNorm that consumes its output tensor directly (identity of
    the tensor, so it works for Sequential and hand-written forwards alike)."""

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module]) -> None:
        self.outputs: dict[int, tuple[str, torch.Tensor]] = {}
        self.pairs: dict[str, nn.Module] = {}
        self.handles = [m.register_forward_hook(self._seen(n)) for n, m in layers.items()]
        self.handles += [m.register_forward_pre_hook(self._bn(m)) for m in model.modules()
                         if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _seen(self, name: str) -> Callable:
        def hook(module, inputs, output):
            self.outputs[id(output)] = (name, output)   # keep the tensor: its id stays unique
        return hook

    def _bn(self, bn: nn.Module) -> Callable:
        def hook(module, inputs):
            hit = self.outputs.get(id(inputs[0]))
            if hit is not None and hit[1] is inputs[0]:
                self.pairs.setdefault(hit[0], bn)
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.outputs = [], {}


def bn_scale(bn: nn.Module) -> torch.Tensor:
    """(gamma / sigma)^2 per channel: how an eval-mode BatchNorm scales a deviation squared."""
    if bn.running_var is None:
        inv = torch.ones(bn.num_features, dtype=torch.float64)
    else:
        inv = 1.0 / (bn.running_var.detach().double().cpu() + bn.eps)
    gamma = bn.weight.detach().double().cpu() if bn.weight is not None else torch.ones_like(inv)
    return gamma * gamma * inv


# ---------------------------------------------------------------------------------------------
# public entry points


def _check_options(mode: str, at: str, draws: int) -> None:
    if mode not in MODES:
        raise UserError(f"unknown importance mode {mode!r}", f"valid: {', '.join(MODES)}")
    if at not in SITES:
        raise UserError(f"unknown deviation site at={at!r}", f"valid: {', '.join(SITES)}")
    if not isinstance(draws, int) or draws < 1:
        raise UserError(f"draws must be a positive integer, got {draws!r}", "use draws=8 (the default)")


def _layers_to_score(model: nn.Module, exclude: Iterable[str]) -> dict[str, nn.Module]:
    layers = scorable_layers(model)
    for name in exclude:
        layers.pop(name, None)
    if not layers:
        raise UserError("the model has nothing prunable (no Conv or Linear layer besides the classifier)",
                        "prune a model with convolution or Linear layers")
    return layers


def _make_collector(name: str, module: nn.Module, *, mode: str, draws: int, seed: int, index: int):
    if mode == "expected":
        return _ExpectedStats(module)
    deltas = delta_kernels(module.weight, mode=mode, draws=draws, generator=layer_generator(seed, index))
    return _LiteralStats(module, deltas)


def channel_importance(model: nn.Module, batches: Iterable, *, mode: str = "expected", at: str = "conv",
                       draws: int = 8, seed: int = 0, exclude: Iterable[str] | None = None,
                       ) -> dict[str, torch.Tensor]:
    """Per-output-channel importance of every Conv / Linear layer, from ONE pass over `batches`.

    `exclude`: layer names not to score; by default the final classifier (see `final_layer`).
    `at="bn"` multiplies by (gamma/sigma)^2 of the BatchNorm that directly follows the layer (no
    scaling where none follows). The default "conv" is measured, not assumed: on the shipped
    ResNet-20 and MobileNetV2 at equal MACs it kept 0.3-36 points more accuracy than "bn" in all
    10 settings (benchmarks/deviation_site.py, docs/benchmarks.md "Where the deviation is taken").
    Returns float64 CPU tensors; the model is not modified.
    """
    _check_options(mode, at, draws)
    batches = batches if isinstance(batches, (list, tuple)) else list(batches)
    if next(iter_inputs(batches), None) is None:
        raise UserError("no calibration batches were given", "give at least one batch of inputs")
    fc = classifier_attribute(model) if exclude is None else None
    find_last = exclude is None and fc is None     # the classifier is then the last layer called
    exclude = list(exclude) if exclude is not None else [n for n in [fc] if n]
    index = {n: i for i, n in enumerate(scorable_layers(model))}
    layers = _layers_to_score(model, exclude)
    stats = {n: _make_collector(n, m, mode=mode, draws=draws, seed=seed, index=index[n]) for n, m in layers.items()}
    order: list[str] = []
    handles = [m.register_forward_hook(stats[n]) for n, m in layers.items()]
    handles += [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n)) for n, m in layers.items()]
    finder = _BatchNormFinder(model, layers) if at == "bn" else None
    stop_finding = (lambda i: finder.close()) if finder else None   # pairing needs the first batch only
    try:
        samples = run_model(model, batches, on_batch=stop_finding)
    finally:
        for h in handles:
            h.remove()
        if finder:
            finder.close()
    if find_last and order:
        stats.pop(order[-1])
        _layers_to_score(model, [*exclude, order[-1]])   # raises when the classifier was all there was
    scores = {n: s.scores(samples).cpu() for n, s in stats.items()}
    if finder:
        scores = {n: v * bn_scale(finder.pairs[n]) if n in finder.pairs else v for n, v in scores.items()}
    return scores


def per_channel_loop(model: nn.Module, batches: Iterable, *, layers: Iterable[str] | None = None,
                     mode: str = "shuffle", draws: int = 1, seed: int = 0, max_channels: int | None = None,
                     ) -> dict[str, torch.Tensor]:
    """The seed's literal procedure, for fidelity checks and cost benchmarks: for each channel and
    draw, replace that channel's kernel in a copy of the weights and run the WHOLE model over all
    batches, measuring sum((Y - Y')^2) / samples at the layer output. Uses the same seeded draws
    as `channel_importance`, so the two agree to float precision. Slow on purpose.
    `max_channels`: score only the first N channels of each layer (cost benchmarks extrapolate);
    the others are NaN."""
    _check_options(mode, "conv", draws)
    batches = batches if isinstance(batches, (list, tuple)) else list(batches)
    all_layers = scorable_layers(model)
    names = list(layers) if layers is not None else list(all_layers)
    index = {n: i for i, n in enumerate(all_layers)}
    return {n: _loop_layer(model, batches, all_layers[n], mode=mode, draws=draws, max_channels=max_channels,
                           generator=layer_generator(seed, index[n])) for n in names}


def _loop_layer(model: nn.Module, batches: list, module: nn.Module, *, mode: str, draws: int,
                generator: torch.Generator, max_channels: int | None = None) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    original = module.weight.detach().clone()
    try:
        samples = run_model(model, batches)
        reference, captured[:] = list(captured), []
        deltas = delta_kernels(module.weight, mode=mode, draws=draws, generator=generator)
        out = torch.full((module.weight.shape[0],), float("nan"), dtype=torch.float64)
        for i in range(min(out.numel(), max_channels or out.numel())):
            out[i] = 0.0
            for delta in deltas:
                with torch.no_grad():
                    module.weight[i] += delta[i]
                run_model(model, batches)
                out[i] += sum(((y - r).double() ** 2).sum() for y, r in zip(captured, reference)).item()
                captured[:] = []
                with torch.no_grad():
                    module.weight.copy_(original)
    finally:
        handle.remove()
        with torch.no_grad():
            module.weight.copy_(original)   # the caller's model leaves as it came, even on error
    return out / (samples * len(deltas))
