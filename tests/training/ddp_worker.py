"""Worker for test_ddp_loss (a plain module so spawned processes can import it)."""
import os

import torch
import torch.distributed as dist

from training.loss import clip_loss


def features():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=-1)
    return img, txt


def worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    img, txt = features()
    half = len(img) // world
    local_img = img[rank * half:(rank + 1) * half].clone().requires_grad_()
    local_txt = txt[rank * half:(rank + 1) * half].clone().requires_grad_()
    loss = clip_loss(local_img, local_txt, torch.tensor(10.0, dtype=torch.float64))
    (loss * world).backward()
    queue.put((rank, loss.item(), local_img.grad.tolist(), local_txt.grad.tolist()))
    dist.barrier()
    dist.destroy_process_group()
