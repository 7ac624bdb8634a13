"""Worker for tests/test_distributed.py, launched by torchrun: profile this rank's shard."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_batches, make_model  # noqa: E402

import layerprof as lp  # noqa: E402


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    model = make_model("llama").double()
    batches = make_batches(n=4)
    # ρ² as the score: the cross-half split differs by design under torch.distributed (each rank halves
    # its own shard), so the one-process card's default ranking is not the reference here.
    card = lp.profile(model, batches[rank::size], rank=4, dtype=torch.float64, progress=False, score="resnorm2",
                      coupling=True)
    card.save(f"{out}.saved{rank}")  # only rank 0 may write
    Path(f"{out}.rank{rank}").write_text(json.dumps(card.to_dict()))
    # With a budget: the simulation runs on the reduced statistics, κ and the warm-up's LCA are
    # averaged over ranks, so every rank still holds the same card.
    budget = {"steps": 4, "lr": 1e-2, "r": 2, "lora_alpha": 4}
    card = lp.profile(model, make_batches(n=8)[rank::size], rank=4, dtype=torch.float64, progress=False,
                      budget=budget)
    Path(f"{out}.budget{rank}").write_text(json.dumps(card.to_dict()))
    # card() twice on one Profiler: the statistics are all-reduced once, so both cards agree.
    with lp.Profiler(model, rank=4, dtype=torch.float64) as prof:
        for b in make_batches(n=4)[rank::size]:
            model(**b).loss.backward()
    model.zero_grad(set_to_none=True)
    first, second = prof.card(), prof.card()
    Path(f"{out}.twice{rank}").write_text(json.dumps([first.to_dict(), second.to_dict()]))
    dist.barrier()  # no rank tears gloo down while another is still finishing its last collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
