"""Segmentation mode: class maps (and auxiliary heads) are never pruned; mIoU is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cuttree
from cuttree.frontends.torch.measure import evaluate


class TinyUNet(nn.Module):
    """Encoder–decoder with a skip concat, a transposed conv, a class map and an auxiliary head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.classifier = nn.Conv2d(16, classes, 1)
        self.aux = nn.Conv2d(32, classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d = self.dec(torch.cat([self.up(e2), e1], 1))
        aux = nn.functional.interpolate(self.aux(e2), size=x.shape[2:])
        return {"out": self.classifier(d), "aux": aux}


X = (torch.randn(2, 3, 16, 16),)


@pytest.mark.parametrize("cfg", [
    {"ratio": 0.9}, {"ratio": 0.5, "scope": "global"}, {"threshold": 0.99}, {"macs_target": 0.2},
    {"ratio": 0.5, "criterion": "l2", "min_channels": 1},
])  # fmt: skip
def test_class_maps_never_lose_channels(cfg: dict[str, object]) -> None:
    r = cuttree.prune(TinyUNet(), X, cuttree.Config(mode="segmentation", latency_runs=0, **cfg))  # type: ignore[arg-type]
    assert r.model.classifier.out_channels == 3 and r.model.aux.out_channels == 3
    with torch.no_grad():
        out = r.model.eval()(*X)
    assert out["out"].shape == (2, 3, 16, 16) and out["aux"].shape == (2, 3, 16, 16)
    assert r.after.params < r.before.params


@pytest.mark.parametrize("layer", ["classifier", "aux"])
def test_asking_to_prune_a_class_map_is_an_error(layer: str) -> None:
    cfg = cuttree.Config(mode="segmentation", ratio=0.5, layers={layer: {"ratio": 0.5}}, latency_runs=0)
    with pytest.raises(
        cuttree.PlanError, match=f"'{layer}' produces a model output, which mode=segmentation never prunes"
    ):
        cuttree.prune(TinyUNet(), X, cfg)


def test_miou_exact() -> None:
    class Fixed(nn.Module):
        def __init__(self, pred: torch.Tensor) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))
            self.pred = pred

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.one_hot(self.pred, 3).permute(0, 3, 1, 2).float() + self.w

    pred = torch.tensor([[[0, 0], [1, 2]]])
    target = torch.tensor([[0, 1], [1, 255]])
    m = evaluate(Fixed(pred), [(torch.zeros(1), target)], mode="segmentation")
    # class 0: 1 ∩ / 2 ∪ = 50%; class 1: 1 ∩ / 2 ∪ = 50%; class 2 absent from the labels; pixel 255 ignored
    assert m["miou"] == pytest.approx(50.0) and m["pixel_acc"] == pytest.approx(200 / 3)


def test_enet_matches_checkpoint_and_prunes(data_dir) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    from cuttree.datasets.segmentation import camvid
    from cuttree.models import enet

    m = enet()
    state = load_file(str(data_dir / "weights" / "camvid_enet.safetensors"))
    assert set(state) == set(m.state_dict())
    cuttree.load_weights(m, data_dir / "weights" / "camvid_enet.safetensors")
    test = camvid("test", limit=2)
    x, y = test[0]
    assert x.shape == (3, 360, 480) and y.shape == (360, 480) and int(y.max()) <= 11
    r = cuttree.prune(m, (x[None],), cuttree.Config(mode="segmentation", macs_target=0.5, latency_runs=0))
    assert r.after.macs <= r.before.macs // 2
    assert r.model.fullconv.out_channels == 12
    with torch.no_grad():
        assert r.model.eval()(x[None]).shape == (1, 12, 360, 480)


def test_cli_eval_segmentation_per_class(data_dir, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from cuttree.cli.main import main
    from cuttree.models import enet

    m = enet()
    cuttree.load_weights(m, data_dir / "weights" / "camvid_enet.safetensors")
    cfg = cuttree.Config(mode="segmentation", ratio=0.3, latency_runs=0, finetune={"ignore_index": 11})
    r = cuttree.prune(m, (torch.randn(1, 3, 96, 128),), cfg)
    path = cuttree.save(r, tmp_path / "e.cuttree", arch="cuttree.models:enet")
    assert main(["eval", str(path), "--data", "camvid", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("miou ") and "IoU Sky:" in out and "IoU Bicyclist:" in out
