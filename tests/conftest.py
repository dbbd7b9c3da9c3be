import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_restore_rng():
    state = torch.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.set_rng_state(state)


@pytest.fixture
def built(monkeypatch):
    """Every certified model a removal experiment builds, in order (the fitted one first)."""
    from fastunlearn.certified import experiment

    models = []
    make_model = experiment._make_model

    def capture(config):
        model = make_model(config)
        models.append(model)
        return model

    monkeypatch.setattr(experiment, "_make_model", capture)
    return models


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one thread (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Its problems are tiny, so one thread is fastest, and the 2-core test machine is shared
    (OpenMP workers fighting over it make small kernels 10-40x slower); forked children
    (crash tests) inherit it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
