import os

import pytest

os.environ.setdefault("WORKSHOP_MODE", "quick")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common.offline import block_network  # noqa: E402

# Any test that reaches for the network fails: the course is offline-first.
block_network()


@pytest.fixture(scope="session")
def tiny():
    from common.models import load_model
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def embedded():
    from common.models import load_model
    return load_model("embedded", device="cpu", dtype="float32")


@pytest.fixture
def reports_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_REPORTS", str(tmp_path / "reports"))
    return tmp_path / "reports"
