"""PyTorch FSDP2 (fully_shard) reference for scripts/bench-zero.sh: the same GPT shape as ours
(pre-LN blocks, no biases, tied embedding/head, character vocabulary of 65), random tokens, AdamW,
one thread per rank, gloo on CPU. Each block is one fully_shard unit and the root holds the
embeddings, as our ZeRO-3 units. Prints one line on rank 0:
  fsdp2 tokens/s T peak_rss_mib [r0, r1, ...]
or the reason it cannot run. Launch with torchrun --nproc-per-node N fsdp_gpt.py ARGS."""
import argparse, math, os, resource, sys, time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)


class Block(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(c, bias=False)
        self.c_attn = nn.Linear(c, 3 * c, bias=False)
        self.attn_proj = nn.Linear(c, c, bias=False)
        self.ln_2 = nn.LayerNorm(c, bias=False)
        self.c_fc = nn.Linear(c, 4 * c, bias=False)
        self.mlp_proj = nn.Linear(4 * c, c, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, block, layers, heads, c):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(block, c)
        self.blocks = nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embd", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=6, help="sequences per rank per step")
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    model = GPT(65, args.block, args.layers, args.heads, args.embd)
    # GPT-2's initialization, as ours: N(0, 0.02), residual projections scaled by 1/sqrt(2 layers).
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * args.layers) if name.endswith("proj.weight") else 0.02
            torch.nn.init.normal_(p, 0.0, std)
    try:
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh("cpu", (world,))
        for b in model.blocks:
            fully_shard(b, mesh=mesh)
        fully_shard(model, mesh=mesh)
    except Exception as e:  # an old torch, or no CPU support
        if rank == 0:
            print(f"fsdp2 unavailable: {type(e).__name__}: {e}", flush=True)
        return
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    warm = 3
    try:
        for it in range(warm + args.iters):
            if it == warm:
                dist.barrier()
                start = time.perf_counter()
            x = torch.randint(0, 65, (args.batch, args.block), generator=g)
            y = torch.randint(0, 65, (args.batch, args.block), generator=g)
            loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        dist.barrier()
        seconds = time.perf_counter() - start
    except Exception as e:
        if rank == 0:
            print(f"fsdp2 failed on CPU: {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
        return
    rss = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0])
    all_rss = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(all_rss, rss)
    if rank == 0:
        tokens = args.iters * args.batch * args.block * world
        print(f"fsdp2 tokens/s {tokens / seconds:.0f} peak_rss_mib {[round(float(r)) for r in all_rss]} loss {loss.item():.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
