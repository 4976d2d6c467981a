"""Worker for test_ddp_loss (a plain module so spawned processes can import it)."""
import os

import torch
import torch.distributed as dist

from training.loss import clip_loss
from training.model import CLIP, get_config


def features():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=-1)
    return img, txt


def model_and_batch():
    """A float64 micro CLIP and a batch of 8, identical in every process (fixed seeds)."""
    torch.manual_seed(0)
    model = CLIP(get_config("micro", vocab_size=50)).double().train()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 50, (8, 16), generator=g)
    eot = torch.randint(1, 16, (8,), generator=g)
    return model, images, tokens, eot


def model_grads(model, images, tokens, eot, world: int) -> dict[str, list]:
    """The train loop's backward: ``loss * world`` (DDP then averages over ranks)."""
    img, txt, scale = model(images, tokens, eot)
    (clip_loss(img, txt, scale) * world).backward()
    inner = getattr(model, "module", model)
    return {name: p.grad.tolist() for name, p in inner.named_parameters()}


def worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    img, txt = features()
    half = len(img) // world
    local_img = img[rank * half:(rank + 1) * half].clone().requires_grad_()
    local_txt = txt[rank * half:(rank + 1) * half].clone().requires_grad_()
    loss = clip_loss(local_img, local_txt, torch.tensor(10.0, dtype=torch.float64))
    (loss * world).backward()
    # the whole model under DistributedDataParallel, each rank on its half of the batch
    model, images, tokens, eot = model_and_batch()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    part = slice(rank * half, (rank + 1) * half)
    grads = model_grads(ddp, images[part], tokens[part], eot[part], world)
    queue.put((rank, loss.item(), local_img.grad.tolist(), local_txt.grad.tolist(), grads))
    dist.barrier()
    dist.destroy_process_group()
