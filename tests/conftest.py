"""Shared fixtures: tiny random-weight models (CPU-sized; the real architectures live in benchmarks)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may touch the network
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Property tests: "ci" (the default) is reproducible and bounded: a seed derived from each test,
# a fixed example budget, no per-example deadline on a shared 2-core machine. "dev" tries 20 times
# more examples (tests/fuzzing.py scales each property's budget), randomly, for local runs:
# HYPOTHESIS_PROFILE=dev python -m pytest tests/test_fuzz_api.py
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=50, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", derandomize=False, deadline=None, max_examples=1000, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter):
    """Print how many examples each property tried (and write them to $MASKCLIP_FUZZ_REPORT)."""
    import fuzzing

    for line in fuzzing.summary_lines():
        terminalreporter.write_line(line)
    fuzzing.write_report()


def tiny_config(**vision):
    """A 2-layer ViT (patch 16, 64 px) + 2-layer text tower; ``vision`` overrides vision fields."""
    from maskclip import ModelConfig

    v = {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "heads": 2}
    v.update(vision)
    return ModelConfig.from_dict({
        "format_version": 1, "embed_dim": 32, "name": "tiny-test",
        "vision": v,
        "text": {"width": 64, "layers": 2, "heads": 4},
        "preprocess": {"image_size": v["image_size"]},
    })


def tiny_model(seed=0, **vision):
    from maskclip import MaskCLIP

    torch.manual_seed(seed)
    model = MaskCLIP(tiny_config(**vision)).eval()
    # Random non-trivial norms and biases, so tests cannot pass by accident of zero init.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def model():
    return tiny_model()


@pytest.fixture
def rgb_image():
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    arr = (torch.rand(48, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one intra-op thread for a module of tiny tensors (``pytestmark = usefixtures("one_thread")``):
    on a busy 2-core machine, more threads only add spin-waiting, which made each op ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
