"""The CUDA path (bench/gpu_check.sh runs these on a GPU machine; skipped without one): the torch
selection on the GPU selects what the CPU kernel selects on the same alpha, and the float16 forward
stays close to the float32 one."""
from __future__ import annotations

import pytest
import torch

from tests.test_twin_kernels import make_alpha
from tests.twin_factory import serve_batch_from, tiny_model, train_batch
from twin.kernels.cpu_gsu import select_cpu
from twin.kernels.torch_gsu import select_torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("kind", ["continuous", "ties", "heavy_ties"])
def test_gpu_selection_equals_the_cpu_kernel(kind):
    alpha = make_alpha(kind, 2, 4, 8, 10_000, seed=5)
    alpha[1, ..., 6_000:] = float("-inf")
    lengths = torch.tensor([10_000, 6_000])
    want = select_cpu(alpha, lengths, 100, True)
    got = select_torch(alpha.cuda(), 100, True)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
    torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-5, atol=1e-5)


def test_float16_forward_on_the_gpu_stays_close_to_float32_on_the_cpu():
    model = tiny_model()
    b = serve_batch_from(model, train_batch(B=4), torch.float16)
    with torch.inference_mode():
        ref = model.score(b).scores
        gpu = model.cuda()
        bg = type(b)(**{k: v.cuda() for k, v in b.__dict__.items()})
        with torch.autocast("cuda", dtype=torch.float16):
            got = gpu.score(bg).scores.float().cpu()
    assert (got - ref).abs().max() < 1e-2
