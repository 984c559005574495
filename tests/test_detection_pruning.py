"""Detector pruning groundwork: C2f rewritten for Torch-Pruning, every group prunable, head kept."""
from __future__ import annotations

import pytest
import torch

from edgecompress.errors import UserError
from edgecompress.pruning.detection import C2fUnsplit, head_output_layers, unsplit_c2f
from edgecompress.pruning.groups import build_graph, find_groups, prune_copy
from edgecompress.zoo.detector import create_detector


def trained_like(name: str = "tiny-yolo-test", seed: int = 0) -> torch.nn.Module:
    """A detector with non-trivial BatchNorm statistics (as after training), in eval mode."""
    torch.manual_seed(seed)
    model = create_detector(name, num_classes=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_torch_pruning_cannot_trace_c2f_split_as_written():
    # If this starts passing, Torch-Pruning learnt the split -> concat pattern and the rewrite
    # below may be dropped.
    with pytest.raises(UserError, match="could not trace"):
        build_graph(trained_like(), torch.rand(1, 3, 64, 64))


def test_unsplit_c2f_keeps_the_outputs():
    model, x = trained_like(), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        names = unsplit_c2f(model)
        after = model(x)
    assert names and all(isinstance(model.get_submodule(n), C2fUnsplit) for n in names)
    assert torch.allclose(before, after, atol=1e-5)
    assert unsplit_c2f(model) == []        # the rewritten block is not C2f-shaped any more


@pytest.mark.slow   # one graph trace per group
def test_every_group_prunes_to_half_and_the_head_outputs_keep_their_size():
    model, x = trained_like(), torch.rand(1, 3, 64, 64)
    unsplit_c2f(model)
    head = head_output_layers(model)
    groups = find_groups(model, x, ignored=head)
    assert len(groups) > 10
    members = {m for g in groups for m in g.members}
    assert not members & {n for n, m in model.named_modules() if m in head}
    # the halves of a C2f are prunable on their own: the second is tied to its bottlenecks' residual adds
    owner = {m: g.key for g in groups for m in g.members}
    assert owner["stage1.1.cv1a.conv"] != owner["stage1.1.cv1b.conv"]
    assert owner["stage1.1.cv1b.conv"] == owner["stage1.1.m.0.cv2.conv"]
    for g in groups:
        pruned = prune_copy(model, x, {g.key: list(range(0, g.width, 2))})
        with torch.no_grad():
            assert pruned(x).shape == model(x).shape, g.key
    everything = prune_copy(model, x, {g.key: list(range(0, g.width, 2)) for g in groups})
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert everything(x).shape == model(x).shape and params(everything) < 0.5 * params(model)


def test_c2f_bottlenecks_are_removable_depth_and_fold_exactly():
    from edgecompress.pruning.depth import remove_blocks, removable_blocks
    from edgecompress.pruning.detection import fold_removed_bottlenecks
    model, x = trained_like(), torch.rand(2, 3, 64, 64)
    unsplit_c2f(model)
    blocks = removable_blocks(model)
    assert blocks == ["stage1.1.m.0", "stage2.1.m.0", "stage3.1.m.0"]   # the neck's C2f have no shortcut
    shallow = remove_blocks(model, blocks[1:])
    with torch.no_grad():
        want = shallow(x)
        width = shallow.stage2[1].cv2.conv.in_channels
        assert fold_removed_bottlenecks(shallow) == ["stage2.1.m.0", "stage3.1.m.0"]
        got = shallow(x)
    assert torch.allclose(got, want, atol=1e-5)
    assert shallow.stage2[1].cv2.conv.in_channels == width - shallow.stage2[1].c
    assert len(shallow.stage2[1].m) == 0 and len(shallow.stage1[1].m) == 1
    assert find_groups(shallow, x[:1], ignored=head_output_layers(shallow))   # still traceable


def test_engines_are_exported_with_each_c2f_one_conv_again_whatever_pruning_left(tmp_path):
    """The unsplit form adds a 1x1 conv per C2f (7-12 % of the jetson-orin estimate of the zoo
    detector): the export joins the halves again, unequal widths included, with the same outputs."""
    import onnx

    from edgecompress.pipeline.builder import export_onnx
    from edgecompress.pruning.detection import C2fJoined, joined
    model, x = trained_like(), torch.rand(2, 3, 64, 64)
    unsplit_c2f(model)
    groups = {g.key: g for g in find_groups(model, x[:1], ignored=head_output_layers(model))}
    key = next(k for k in groups if "stage1.1.cv1a" in k)
    pruned = prune_copy(model, x[:1], {key: list(range(0, groups[key].width, 2))})
    one = joined(pruned)
    block = one.stage1[1]
    assert isinstance(block, C2fJoined) and block.sizes[0] < block.sizes[1]
    assert isinstance(pruned.stage1[1], C2fUnsplit)                          # a copy: the model is as it was
    with torch.no_grad():
        assert torch.allclose(one(x), pruned(x), atol=1e-5)
    convs = {name: sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node) for name, path in
             [("exported", export_onnx(pruned, tmp_path / "a.onnx", input_shape=(3, 64, 64), batch=1)),
              ("original", export_onnx(trained_like(), tmp_path / "b.onnx", input_shape=(3, 64, 64), batch=1))]}
    assert convs["exported"] == convs["original"]
