"""PyTorch gloo reference for allreduce-bench (allreduce, and --collective pingpong, sendrecv, alltoall): same patterns,
timing rule and columns as ours (see mpi_messages.c). One process per rank on loopback, spawned here.
usage: python gloo_messages.py N PATTERN SIZE..."""
import os, statistics, sys, time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run(rank, n, pattern, sizes, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    right, left = (rank + 1) % n, (rank - 1) % n
    if rank == 0:
        print(f"# {pattern}, {n} ranks, gloo\n#{'size(B)':>12} {'count':>12} {'time(us)':>12} {'algbw':>8} {'busbw':>8}", flush=True)
    for size in sizes:
        count = size // 4
        if pattern == "alltoall":
            count = count // n * n
        if count == 0:
            continue
        out, into = torch.ones(count), torch.zeros(count)

        def once():
            if pattern == "pingpong":
                if rank == 0:
                    dist.send(out, 1, tag=2); dist.recv(into, 1, tag=3)
                elif rank == 1:
                    dist.recv(into, 0, tag=2); dist.send(into, 0, tag=3)
            elif pattern == "sendrecv":
                ops = [dist.P2POp(dist.isend, out, right, tag=1), dist.P2POp(dist.irecv, into, left, tag=1)]
                for request in dist.batch_isend_irecv(ops):
                    request.wait()
            elif pattern == "allreduce":
                dist.all_reduce(into)
            else:
                dist.all_to_all_single(into, out)

        per = max(3, min(int(os.environ.get("ITERS", "100")), int(100 * 2**20 / size)) // 5)
        trials = []
        for t in range(-1, 5):
            calls = 5 if t < 0 else per
            dist.barrier()
            start = time.perf_counter()
            for _ in range(calls):
                once()
            mine = (time.perf_counter() - start) / calls / (2 if pattern == "pingpong" else 1)
            slowest = torch.tensor([mine], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            if t >= 0:
                trials.append(slowest.item())
        seconds = statistics.median(trials)
        algbw = count * 4 / seconds / 1e9
        busbw = algbw * (n - 1) / n if pattern == "alltoall" else algbw * 2 * (n - 1) / n if pattern == "allreduce" else algbw
        if rank == 0:
            print(f" {count * 4:12d} {count:12d} {seconds * 1e6:12.1f} {algbw:8.2f} {busbw:8.2f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    n, pattern, sizes = int(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3:]]
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    mp.spawn(run, args=(n, pattern, sizes, port), nprocs=n)
