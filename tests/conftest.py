import os


# Nothing in the test suite may reach the Hub: fail fast if something tries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch


torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def tiny_tok():
    from hf_plugins.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def calib():
    """Tokenised arithmetic calibration windows (8 x 32) for the pruning and sparse-tuner tests."""
    from hf_plugins.pruning import arithmetic_texts, calibration_windows
    from hf_plugins.testing import tiny_tokenizer

    return calibration_windows(tiny_tokenizer(), arithmetic_texts(100), nsamples=8, seqlen=32, seed=0)


@pytest.fixture(scope="module")
def pruned_llama(calib):
    """A tiny Llama pruned to 50% with Wanda on `calib` (tests copy it before changing it)."""
    from hf_plugins.pruning import prune_model
    from hf_plugins.testing import tiny_model

    model = tiny_model("llama")
    prune_model(model, "wanda", 0.5, calibration=calib)
    return model


@pytest.fixture
def one_thread():
    """The models are tiny: intra-op threads only add synchronisation (30x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
