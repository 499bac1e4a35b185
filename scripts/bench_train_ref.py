#!/usr/bin/env python3
"""The PyTorch reference of one training step, for scripts/bench-train and scripts/gpu-check:
the same model (torchvision's ResNet, or EfficientNet-Lite0 as models/src/efficientnet.rs builds
it, both written out here so neither torchvision nor timm is needed), batch, loss and Adam as
`cls-train bench-step`. Two methods: CLS (method.md, Algorithm 1 steps 1-6: two peers' forward,
selection, loss, backward, Adam) and AN (one network, BCE over every entry summed / B).

Usage: bench_train_ref.py --backbone resnet50|...|efficientnet-lite0 --method cls|an --batch 32
                          --size 224x224 --classes 80 --steps 5 --warmup 2 --threads N
                          --device cpu|cuda [--amp bf16] [--channels-last] [--print-params]
Prints one JSON line like cls-train bench-step.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = None
        if stride != 1 or cin != c:
            self.downsample = nn.Sequential(nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.downsample = None
        if stride != 1 or cin != c * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, c * 4, 1, stride, bias=False), nn.BatchNorm2d(c * 4))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + idt)


LAYERS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
          "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3])}


class ResNet(nn.Module):
    def __init__(self, name, classes):
        super().__init__()
        block, counts = LAYERS[name]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for i, n in enumerate(counts):
            c = 64 * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(cin, classes)
        nn.init.constant_(self.fc.bias, math.log(0.01 / 0.99))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def same_pad(size, k, s):
    """TensorFlow "same" padding of one spatial dimension, (before, after): output ceil(size/s),
    the odd element at the end (efficientnet.rs's same_pad)."""
    out = (size + s - 1) // s
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """A bias-free convolution with "same" padding computed from the input size, as efficientnet.rs's
    SameConv: the symmetric part is the convolution's own padding, only an odd remainder (one row or
    column at the end) costs an explicit F.pad."""

    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)

    def forward(self, x):
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_pad(x.shape[-2], k, s)
        left, right = same_pad(x.shape[-1], k, s)
        if bottom != top or right != left:
            x = F.pad(x, (0, right - left, 0, bottom - top))
        return F.conv2d(x, self.weight, None, self.stride, (top, left), 1, self.groups)


def lite_bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


# EfficientNet-Lite0's stage table: (repeats, kernel, stride, expand ratio, in, out).
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


class MBConv(nn.Module):
    """Expand 1x1 + BN + ReLU6 (absent at expand ratio 1), depthwise kxk + BN + ReLU6, project 1x1
    + BN, identity skip at stride 1 with unchanged width. No SE, no drop-connect."""

    def __init__(self, k, stride, expand, cin, cout):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, mid, 1)
            self._bn0 = lite_bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid)
        self._bn1 = lite_bn(mid)
        self._project_conv = SameConv(mid, cout, 1)
        self._bn2 = lite_bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """models/src/efficientnet.rs: stem 3x3/2 (32) + BN + ReLU6, 16 MBConv blocks, head 1x1 (1280)
    + BN + ReLU6, global average pooling, Linear(1280, classes) with bias logit(0.01). No dropout."""

    def __init__(self, classes):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = lite_bn(32)
        blocks = []
        for repeats, k, stride, expand, cin, cout in LITE0_STAGES:
            blocks.append(MBConv(k, stride, expand, cin, cout))
            blocks += [MBConv(k, 1, expand, cout, cout) for _ in range(1, repeats)]
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SameConv(LITE0_STAGES[-1][5], 1280, 1)
        self._bn1 = lite_bn(1280)
        self._fc = nn.Linear(1280, classes)
        nn.init.constant_(self._fc.bias, math.log(0.01 / 0.99))

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = F.relu6(self._bn1(self._conv_head(self._blocks(x))))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(backbone, classes):
    if backbone == "efficientnet-lite0":
        return EfficientNetLite0(classes)
    if backbone in LAYERS:
        return ResNet(backbone, classes)
    raise SystemExit(f"bench_train_ref.py: unknown --backbone {backbone}")


def keep_mask(peer_loss, own_loss, unann, pos, r_h, r_l):
    """Eq. (1)-(6) over the flattened batch: the floor(R_h|N|) smallest peer losses, then the
    floor(R_l|N_f|) largest own losses among them, plus every observed positive."""
    idx = unann.flatten().nonzero().squeeze(1)
    k_h = math.floor(r_h * idx.numel())
    n_f = idx[torch.argsort(peer_loss[idx], stable=True)[:k_h]]
    k_l = math.floor(r_l * k_h)
    n_f2 = n_f[torch.argsort(own_loss[n_f], descending=True, stable=True)[:k_l]]
    keep = pos.flatten().clone()
    keep[n_f2] = True
    return keep.view_as(pos)


def cls_step(f, g, opt_f, opt_g, x, y, r_h, r_l, amp):
    b = x.shape[0]
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        lf, lg = f(x), g(x)
    lf, lg = lf.float(), lg.float()
    unann, pos = y == 0, y == 1
    with torch.no_grad():
        zf = F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf), reduction="none").flatten()
        zg = F.binary_cross_entropy_with_logits(lg, torch.zeros_like(lg), reduction="none").flatten()
        keep_f = keep_mask(zg, zf, unann, pos, r_h, r_l)
        keep_g = keep_mask(zf, zg, unann, pos, r_h, r_l)
    target = y.clamp(min=0)
    loss_f = (F.binary_cross_entropy_with_logits(lf, target, reduction="none") * keep_f).sum() / b
    loss_g = (F.binary_cross_entropy_with_logits(lg, target, reduction="none") * keep_g).sum() / b
    opt_f.zero_grad(set_to_none=True)
    opt_g.zero_grad(set_to_none=True)
    (loss_f + loss_g).backward()
    opt_f.step()
    opt_g.step()
    return loss_f.item() + loss_g.item()


def an_step(f, opt_f, x, y, amp):
    """AN: plain BCE with every unannotated entry a negative, (1/B) sum_ij l(y_ij, p_ij)."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        lf = f(x)
    lf = lf.float()
    loss = F.binary_cross_entropy_with_logits(lf, y.clamp(min=0), reduction="sum") / x.shape[0]
    opt_f.zero_grad(set_to_none=True)
    loss.backward()
    opt_f.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet50", choices=[*LAYERS, "efficientnet-lite0"])
    ap.add_argument("--method", default="cls", choices=["cls", "an"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", default="224x224")
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--print-params", action="store_true",
                    help="also print the network's trainable parameter count to stderr")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    h, w = (int(v) for v in a.size.lower().split("x"))
    dev = torch.device(a.device)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    nets = [build(a.backbone, a.classes).to(dev, memory_format=fmt) for _ in range(2 if a.method == "cls" else 1)]
    opts = [torch.optim.Adam(n.parameters(), lr=1e-4, weight_decay=1e-4) for n in nets]
    if a.print_params:
        n_params = sum(p.numel() for p in nets[0].parameters() if p.requires_grad)
        print(f"[bench_train_ref] {a.backbone}, {a.classes} classes: {n_params} trainable parameters",
              file=sys.stderr)
    torch.manual_seed(42)
    x = torch.randn(a.batch, 3, h, w, device=dev).contiguous(memory_format=fmt)
    y = (torch.rand(a.batch, a.classes, device=dev) < 0.05).float()
    # CLS at epoch 20 of the default schedule: R_h = 1 - 0.012, R_l = 1 - 0.06.
    r_h, r_l = 1 - 0.012, 1 - 0.06
    t0 = time.perf_counter()
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if a.method == "cls":
            cls_step(nets[0], nets[1], opts[0], opts[1], x, y, r_h, r_l, a.amp == "bf16")
        else:
            an_step(nets[0], opts[0], x, y, a.amp == "bf16")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    print(json.dumps({"backbone": a.backbone, "method": a.method, "batch": a.batch, "height": h, "width": w,
                      "classes": a.classes, "steps": a.steps, "ms_per_step": 1000 * secs / a.steps,
                      "images_per_s": a.batch * a.steps / secs, "device": a.device, "amp": a.amp,
                      "threads": torch.get_num_threads(), "impl": "pytorch"}))


if __name__ == "__main__":
    main()
