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
