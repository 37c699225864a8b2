"""Launch-latency reference: init_process_group (gloo, from torchrun's environment), a barrier, then
rank 0 prints "ready". Timed from torchrun's start by scripts/bench-launch.sh."""
import torch.distributed as dist

dist.init_process_group("gloo")
dist.barrier()
if dist.get_rank() == 0:
    print("ready", flush=True)
dist.destroy_process_group()
