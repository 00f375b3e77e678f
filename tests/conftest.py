import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# Tiny models on a 2-core machine: one intra-op thread per test process. Oversubscribed threads
# (two xdist workers x torch's default) spin instead of working, ~50x slower here.
torch.set_num_threads(1)

from tests import tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model("sd15")`` -> folder of a tiny pipeline of that family, built once per session."""
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = tiny.build(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
        return cache[kind]

    return get


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield



@pytest.fixture(scope="session")
def tiny_shapes_sd(tmp_path_factory):
    """Folder of a tiny ``shapes-sd`` model (two pretraining steps: random-looking samples), built once per session."""
    from diffalign.shapes import pretrain

    out = tmp_path_factory.mktemp("shapes-sd")
    args = ["--tiny", "--dataset-size", "32", "--batch-size", "4", "--autoencoder-steps", "2", "--steps", "2"]
    assert pretrain.main([*args, "--model", "sd", "--out", str(out)]) == 0
    return out / "shapes-sd"


@pytest.fixture(scope="session")
def shapes_rise(tmp_path_factory):
    """The ShapesWorld rise tests' shared pieces (``tests/shapes_rise.py``), computed once per session."""
    from tests.shapes_rise import ShapesRise

    base = tmp_path_factory.getbasetemp()
    # xdist workers' temp folders sit in the session's folder: share that one between them
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shapes-rise"
    shared.mkdir(exist_ok=True)
    return ShapesRise(shared)


@pytest.fixture(scope="session")
def tiny_shapes_models(tmp_path_factory):
    """Folder with tiny ShapesWorld models (``shapes-sd``, ``shapes-flow``) built by the real pretraining code."""
    from diffalign.shapes import pretrain

    out = tmp_path_factory.mktemp("shapes-models")
    args = ["--tiny", "--dataset-size", "32", "--batch-size", "4", "--autoencoder-steps", "2", "--steps", "2", "--flow-steps", "2"]
    assert pretrain.main([*args, "--model", "all", "--out", str(out)]) == 0
    return out
