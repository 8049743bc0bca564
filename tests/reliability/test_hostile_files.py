"""Hostile files are refused without executing anything: a generated corpus, counted.

Every case is a file an attacker could hand a user: pickles whose payload would create a sentinel
file if it ran, ``.cuttree`` files (with a valid checksum: an attacker can compute one) whose
architecture path escapes the trusted modules or asks to download weights, whose plan or sparse
header was altered. Each must be refused with a one-line ``FileFormatError`` (exit status 4 on
the command line) and leave no sentinel, or load a model identical to the original (an edit that
changes nothing, such as the plan's recorded criterion). ``CUTTREE_FUZZ=2`` doubles the generated
plan and header edits. Counts are printed with ``-s``; the truncations and bit flips are in
``test_corrupt_files.py``, the Keras files in ``test_hostile_keras.py``.
"""

from __future__ import annotations

import builtins
import copy
import io
import json
import os
import pickle
import random
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import cuttree
from cuttree.errors import FileFormatError
from cuttree.files.cuttree_file import checksum, load_weights
from cuttree.models import resnet20

SCALE = int(os.environ.get("CUTTREE_FUZZ", "1"))
COUNTS: Counter[str] = Counter()
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class Payload:
    """Pickles as ``call(*args)``: what a hostile checkpoint runs on an unguarded ``pickle.load``."""

    def __init__(self, call: Any, *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call, self.args


def _payloads(sentinel: Path) -> list[Payload]:
    s = str(sentinel)
    return [
        Payload(os.system, f"touch {s}"),
        Payload(builtins.exec, f"open({s!r}, 'w').close()"),
        Payload(builtins.eval, f"open({s!r}, 'w')"),
        Payload(subprocess.call, ["touch", s]),
        Payload(builtins.open, s, "w"),
        Payload(shutil.copyfile, __file__, s),
    ]


def _refused(e: BaseException, where: str) -> None:
    msg = str(e)
    assert isinstance(e, FileFormatError), f"{where}: {type(e).__name__}: {msg}"
    assert msg and "\n" not in msg, f"{where}: {msg!r}"


def test_pickles_with_a_code_payload_are_refused_without_running(tmp_path: Path) -> None:
    sentinel = tmp_path / "PWNED"
    model = resnet20()
    for i, payload in enumerate(_payloads(sentinel)):
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            for wrap in ("pickle", "torch zip", "torch legacy"):
                obj = {"conv1.weight": payload, "nested": [{"x": payload}]}
                buf = io.BytesIO()
                if wrap == "pickle":
                    pickle.dump(obj, buf, protocol=proto)
                else:
                    torch.save(
                        obj, buf, pickle_protocol=max(proto, 2), _use_new_zipfile_serialization=wrap == "torch zip"
                    )
                for suffix in (".pt", ".pth", ".bin", ".cuttree"):
                    f = tmp_path / f"evil{i}_{proto}{suffix}"
                    f.write_bytes(buf.getvalue())
                    COUNTS["pickle with a payload"] += 1
                    with pytest.raises(FileFormatError) as e:
                        load_weights(model, f) if suffix != ".cuttree" else cuttree.load(f)
                    _refused(e.value, f.name)
                    assert not sentinel.exists(), f"{f.name}: the payload ran"


def _real_file(tmp: Path, sparse: bool = False) -> tuple[Path, dict[str, str], dict[str, torch.Tensor]]:
    model = resnet20()
    if sparse:
        model = cuttree.strip(cuttree.sparsify(model, cuttree.Config(method="unstructured", ratio=0.8)).model)
    r = cuttree.prune(model, (X[:1],), cuttree.Config(ratio=0.0 if sparse else 0.3, latency_runs=0))
    path = cuttree.save(r, tmp / ("sparse.cuttree" if sparse else "dense.cuttree"), arch="cuttree.models:resnet20")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    return path, meta, load_file(str(path))


def _forge(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> Path:
    meta = {**meta, "checksum": checksum(tensors, meta)}  # a hostile file can carry a valid checksum
    save_file(tensors, str(path), metadata=meta)
    return path


def _hubconf(folder: Path, sentinel: Path) -> Path:
    folder.mkdir()
    (folder / "hubconf.py").write_text(f"open({str(sentinel)!r}, 'w').close()\ndef m(**kw):\n    return None\n")
    return folder


def _escapes(tmp: Path, sentinel: Path) -> list[tuple[str, dict[str, Any]]]:
    hub = {"repo_or_dir": str(_hubconf(tmp / "hub", sentinel)), "model": "m", "source": "local", "trust_repo": True}
    touch = f"touch {sentinel}"
    return [
        ("os:system", {"command": touch}),
        ("subprocess:Popen", {"args": touch, "shell": True}),
        ("subprocess:run", {"args": touch, "shell": True}),
        ("torch.hub:load", hub),
        ("torchvision.models.resnet:torch.hub.load", hub),
        ("torchvision.models:resnet.torch.hub.load", hub),
        ("cuttree.models:torch.hub.load", hub),
        ("cuttree.models.resnet:torch.hub.load", hub),
        ("torchvision.models._api:importlib.import_module", {"name": "os"}),
        ("cuttree.models:__builtins__.exec", {}),
        ("torchvision.models:resnet18", {"weights": "DEFAULT"}),
        ("torchvision.models:get_model", {"name": "resnet18", "weights": "DEFAULT"}),
        ("torchvision.models:resnet18", {"pretrained": True}),
        ("cuttree.models:resnet20", {"no_such_argument": 1}),
        ("cuttree.models:resnet20", {"num_classes": -5}),
        ("cuttree.models:no_such_model", {}),
        ("not an import path", {}),
        ("torchvision.models:list_models", {}),
    ]


def test_architecture_paths_that_escape_or_download_are_refused(tmp_path: Path) -> None:
    from cuttree.cli.main import main

    sentinel = tmp_path / "PWNED"
    _, meta, tensors = _real_file(tmp_path)
    for i, (arch, kwargs) in enumerate(_escapes(tmp_path, sentinel)):
        hostile = _forge(
            tmp_path / f"arch{i}.cuttree", {**meta, "arch": arch, "arch_kwargs": json.dumps(kwargs)}, tensors
        )
        for how in ("api", "cli eval", "cli export"):
            COUNTS["escaping or downloading architecture"] += 1
            if how == "api":
                with pytest.raises(FileFormatError) as e:
                    cuttree.load(hostile)
                _refused(e.value, arch)
            else:
                argv = (
                    ["eval", str(hostile), "--data", "digits"]
                    if how == "cli eval"
                    else ["export", str(hostile), "--onnx", str(tmp_path / "x.onnx"), "--input-shape", "1,3,32,32"]
                )
                assert main([*argv, "--quiet"] if how == "cli export" else argv) == 4, (how, arch)
                assert not (tmp_path / "x.onnx").exists()
            assert not sentinel.exists(), f"{arch}: code ran"
    # the user, not the file, extends the trust: a model of the user's own module loads with --trust
    mine = _forge(tmp_path / "mine.cuttree", {**meta, "arch": "tiny_resnet:resnet20"}, tensors)
    (tmp_path / "tiny_resnet.py").write_text(
        "from cuttree.models import resnet20 as _r\n\ndef resnet20():\n    return _r()\n"
    )
    with pytest.raises(FileFormatError, match="--trust tiny_resnet"):
        cuttree.load(mine)
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["eval", str(mine), "--data", "digits", "--quiet"]) == 4
        assert main(["eval", str(mine), "--data", "digits", "--quiet", "--trust", "tiny_resnet"]) == 0
        assert isinstance(cuttree.load(mine, trusted=["tiny_resnet"]), torch.nn.Module)
    finally:
        sys.path.remove(str(tmp_path))


def test_a_plan_or_weights_for_another_architecture_is_refused(tmp_path: Path) -> None:
    _, meta, tensors = _real_file(tmp_path)
    other = cuttree.prune(resnet20(), (X[:1],), cuttree.Config(ratio=0.6, latency_runs=0))
    archs = ["cuttree.models:resnet32", "cuttree.models:resnet56", "cuttree.models:enet", "torchvision.models:resnet18"]
    cases = [{**meta, "arch": a} for a in archs] + [{**meta, "plan": json.dumps(other.plan.to_dict())}]
    cases.append({**meta, "arch_kwargs": json.dumps({"num_classes": 100})})
    for i, edited in enumerate(cases):
        COUNTS["plan or weights for another architecture"] += 1
        with pytest.raises(FileFormatError) as e:
            cuttree.load(_forge(tmp_path / f"other{i}.cuttree", edited, tensors))
        _refused(e.value, f"case {i}")


def test_saving_drops_download_arguments(tmp_path: Path) -> None:
    r = cuttree.prune(resnet20(), (X[:1],), cuttree.Config(ratio=0.3, latency_runs=0))
    p = cuttree.save(r, tmp_path / "m.cuttree", arch="cuttree.models:resnet20", arch_kwargs={"weights": "DEFAULT"})
    assert cuttree.read_metadata(p)["arch_kwargs"] == {}  # the file carries its own weights
    assert isinstance(cuttree.load(p), torch.nn.Module)


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(obj, dict):
        return [path] + [p for k, v in obj.items() for p in _leaves(v, (*path, k))]
    if isinstance(obj, list):
        return [path] + [p for i, v in enumerate(obj) for p in _leaves(v, (*path, i))]
    return [path]


def _junk(rng: random.Random, like: Any, names: list[str]) -> Any:
    return rng.choice([
        None, True, -1, 0, 1, 2**40, -(2**40), 3.5, float("nan"), "", "x", rng.choice(names), [], [0, 0], [-1],
        {}, {"a": 1}, list(range(70)), (like + rng.choice([-1, 1])) if isinstance(like, int) and not isinstance(like, bool) else like,
    ])  # fmt: skip


def _edit(rng: random.Random, doc: Any, names: list[str]) -> Any:
    """One to three random edits of a JSON document: replace, delete, or duplicate a node."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_leaves(doc)[1:])
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = rng.random()
        if op < 0.6:
            parent[key] = _junk(rng, parent[key], names)
        elif op < 0.8:
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        else:
            parent[key + "_"] = copy.deepcopy(parent[key])
    return doc


def _load_or_refuse(path: Path, want: dict[str, torch.Tensor], out: torch.Tensor, what: str) -> str:
    try:
        model = cuttree.load(path)
    except FileFormatError as e:
        _refused(e, what)
        return "refused"
    got = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), f"{what}: changed weights"
    with torch.no_grad():
        assert torch.equal(model(X), out), f"{what}: same weights, different outputs"
    return "harmless"


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_edited_plans_and_sparse_headers_are_refused_or_harmless(tmp_path: Path, sparse: bool) -> None:
    path, meta, tensors = _real_file(tmp_path, sparse)
    original = cuttree.load(path)
    want = original.state_dict()
    with torch.no_grad():
        out = original(X)
    names = list(want)
    rng = random.Random(int(sparse))
    keys = ["plan", "sparse"] if sparse else ["plan", "plan", "shapes"]
    for i in range(100 * SCALE):
        key = rng.choice(keys)
        doc = json.loads(meta["plan"])
        if key == "shapes":
            doc["shapes"] = _edit(rng, doc["shapes"], names)
            edited = {**meta, "plan": json.dumps(doc)}
        else:
            edited = {**meta, key: json.dumps(_edit(rng, json.loads(meta[key]), names))}
        hostile = _forge(tmp_path / "edited.cuttree", edited, tensors)
        COUNTS[f"edited {key} ({'sparse' if sparse else 'dense'} file)"] += 1
        COUNTS[_load_or_refuse(hostile, want, out, f"edit {i} of {key}")] += 1


def test_zz_print_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = {k: COUNTS.pop(k, 0) for k in ("refused", "harmless")}
    total = sum(COUNTS.values())
    with capsys.disabled():
        print(f"\nhostile files: {total} tried ({dict(COUNTS)}); {outcomes} of the edited ones; 0 payloads ran")
    assert total >= 432 + 54 + 6 + 200 * SCALE
