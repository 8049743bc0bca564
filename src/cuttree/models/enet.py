"""ENet (Paszke et al., 2016) for CamVid: 11 classes + void, keys matching ``camvid_enet.safetensors``.

Written from the description in ``../shared/data/README.md``. Input: RGB, float 0–255, not
normalised; output: 12 class maps at the input resolution (index 11 is void).
"""

from __future__ import annotations

import torch
from torch import nn


class Initial(nn.Module):
    """3×3 stride-2 conv (13 maps) beside a 2×2 max pool of the input (3 maps), then PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 13, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(13)
        self.pool = nn.MaxPool2d(2)
        self.activation = nn.PReLU(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(torch.cat([self.norm(self.conv(x)), self.pool(x)], 1))


class _Shared(nn.Module):
    """One PReLU used for all of a bottleneck's activations, stored under four names."""

    def share_activation(self) -> None:
        self.activation = nn.PReLU()
        self.activation1 = self.activation2 = self.activation3 = self.activation


class Bottleneck(_Shared):
    """Regular, dilated or downsampling bottleneck."""

    def __init__(self, cin: int, cout: int, dilation: int = 1, down: bool = False, p: float = 0.1) -> None:
        super().__init__()
        mid = (cin if down else cout) // 4
        self.down = down
        self.share_activation()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=2 if down else 1, padding=dilation, dilation=dilation)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.norm3 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout2d(p)
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        ext = self.activation1(self.norm1(self.conv1(x)))
        ext = self.activation2(self.norm2(self.conv2(ext)))
        ext = self.drop(self.norm3(self.conv3(ext)))
        idx = None
        main = x
        if self.down:
            main, idx = self.pool(x)
        if ext.shape[1] > main.shape[1]:
            # zero channels appended after the input's, as many as the side branch has more
            n, c, h, w = main.shape
            main = torch.cat([main, main.new_zeros(n, ext.shape[1] - c, h, w)], 1)
        return self.activation3(main + ext), idx


class Asymmetric(_Shared):
    """Bottleneck with a 1×5 then 5×1 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        mid = c // 4
        self.share_activation()
        self.conv1 = nn.Conv2d(c, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.conv21 = nn.Conv2d(mid, mid, (1, 5), padding=(0, 2), bias=False)
        self.conv22 = nn.Conv2d(mid, mid, (5, 1), padding=(2, 0), bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c, 1, bias=False)
        self.drop = nn.Dropout2d(0.1)
        self.norm3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        ext = self.activation1(self.norm1(self.conv1(x)))
        ext = self.activation2(self.norm2(self.conv22(self.conv21(ext))))
        ext = self.norm3(self.drop(self.conv3(ext)))
        return self.activation3(x + ext), None


class Upsampling(_Shared):
    """Transposed-conv side branch; main branch 1×1 conv then max-unpooling with stored indices."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin // 4
        self.share_activation()
        self.convt1 = nn.ConvTranspose2d(cin, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid)
        self.convt2 = nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.convt3 = nn.ConvTranspose2d(mid, cout, 1, bias=False)
        self.norm3 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout2d(0.1)
        self.main_conv = nn.Conv2d(cin, cout, 1)
        self.unpool = nn.MaxUnpool2d(2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        ext = self.activation1(self.norm1(self.convt1(x)))
        ext = self.activation2(self.norm2(self.convt2(ext)))
        ext = self.drop(self.norm3(self.convt3(ext)))
        main = self.unpool(self.main_conv(x), indices, output_size=ext.shape[2:])
        return self.activation3(main + ext)


class ENet(nn.Module):
    """ENet; ``forward`` returns the class maps (N, classes, H, W)."""

    def __init__(self, num_classes: int = 12) -> None:
        super().__init__()
        self.initial = Initial()
        self.b10 = Bottleneck(16, 64, down=True, p=0.01)
        for i in range(1, 5):
            setattr(self, f"b1{i}", Bottleneck(64, 64, p=0.01))
        self.b20 = Bottleneck(64, 128, down=True)
        for stage in (2, 3):
            for i, d in zip((1, 2, 4, 5, 6, 8), (1, 2, 4, 1, 8, 16), strict=True):
                setattr(self, f"b{stage}{i}", Bottleneck(128, 128, dilation=d))
            setattr(self, f"b{stage}3", Asymmetric(128))
            setattr(self, f"b{stage}7", Asymmetric(128))
        self.b40 = Upsampling(128, 64)
        self.b41, self.b42 = Bottleneck(64, 64), Bottleneck(64, 64)
        self.b50 = Upsampling(64, 16)
        self.b51 = Bottleneck(16, 16)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1, output_padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial(x)
        x, i1 = self.b10(x)
        for i in range(1, 5):
            x, _ = getattr(self, f"b1{i}")(x)
        x, i2 = self.b20(x)
        for stage in (2, 3):
            for i in range(1, 9):
                x, _ = getattr(self, f"b{stage}{i}")(x)
        assert i1 is not None and i2 is not None
        x = self.b40(x, i2)
        x, _ = self.b41(x)
        x, _ = self.b42(x)
        x = self.b50(x, i1)
        x, _ = self.b51(x)
        return self.fullconv(x)


def enet(num_classes: int = 12) -> ENet:
    """ENet for CamVid (0.35 M parameters with 12 classes)."""
    return ENet(num_classes)
