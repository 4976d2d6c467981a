"""Two gloo ranks: the gathered loss equals the single-process global-batch loss, and each rank's
own features get exactly the global-batch gradient (the train loop backpropagates ``loss * world``
so that after DDP's averaging over ranks the parameter gradients equal a single-process run) —
checked on hand-made features and on the whole model wrapped in DistributedDataParallel."""
import socket

import pytest
import torch
import torch.multiprocessing as mp
from ddp_worker import features, model_and_batch, model_grads, worker

from training.loss import clip_loss


@pytest.mark.slow  # spawns two processes that import torch (~20 s on 2 loaded cores)
def test_gathered_loss_and_gradients_equal_single_process():
    img, txt = features()
    img.requires_grad_()
    txt.requires_grad_()
    full = clip_loss(img, txt, torch.tensor(10.0, dtype=torch.float64))
    full.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    model, images, tokens, eot = model_and_batch()
    single = model_grads(model, images, tokens, eot, world=1)
    for rank, loss, g_img, g_txt, grads in results:
        assert grads.keys() == single.keys()
        for name, expected in single.items():  # DDP-averaged grads on every rank == the full-batch grads
            got = torch.tensor(grads[name], dtype=torch.float64)
            assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12), name
        assert abs(loss - full.item()) < 1e-12
        assert torch.allclose(torch.tensor(g_img, dtype=torch.float64) / 2, img.grad[rank * 4:(rank + 1) * 4], atol=1e-12)
        assert torch.allclose(torch.tensor(g_txt, dtype=torch.float64) / 2, txt.grad[rank * 4:(rank + 1) * 4], atol=1e-12)
