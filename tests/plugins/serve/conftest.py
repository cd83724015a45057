"""Apps over the hand-made tiny bundles of the runtime's tests, run in-process."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from fastapi.testclient import TestClient  # noqa: E402

from lmforge.plugins.runtime.bundle import load_bundle  # noqa: E402
from lmforge.plugins.serve.app import ServeSettings, create_app  # noqa: E402

from ..runtime.tiny_bundles import classifier_bundle, lm_bundle  # noqa: E402

KEY = "s3cret-key"


@pytest.fixture
def lm_folder(tmp_path, registry):
    return lm_bundle(tmp_path / "lm", registry)


@pytest.fixture
def classifier_folder(tmp_path, registry):
    return classifier_bundle(tmp_path / "c", registry, preprocess=[("normalize",
                                                                     {"lowercase": True})])


def client_for(folder, **settings):
    return TestClient(create_app(load_bundle(folder), ServeSettings(**settings)))


@pytest.fixture
def lm(lm_folder):
    with client_for(lm_folder) as client:
        yield client


@pytest.fixture
def classifier(classifier_folder):
    with client_for(classifier_folder) as client:
        yield client
