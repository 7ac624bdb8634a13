"""A 2-rank sweep (torchrun, gloo, CPU) gives the one-process card over the union of the data.

Both sides sum the same float64 products in different orders (per rank, then all-reduce),
so columns agree to ~cond·1e-14; 1e-9 relative is allowed. Split halves are per rank
(alternate local batches), so resnorm_a/b and τ are not compared.
"""
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import torch

import layerprof as lp
from conftest import make_batches, make_model

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_card_equals_one_process_card(tmp_path):
    out = tmp_path / "card.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(HERE / "dist_worker.py"), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    cards = [lp.LayerCard.from_dict(json.loads(Path(f"{out}.rank{r}").read_text())) for r in (0, 1)]
    assert cards[0].modules == cards[1].modules and cards[0].layers == cards[1].layers  # every rank, same card
    # The coupling matrix too (corrections from the global sums, K summed over the ranks' rows), and so the plan.
    assert cards[0].meta["coupling"]["K"] == cards[1].meta["coupling"]["K"]
    assert cards[0].place(layers=2, coupled=True).layers == cards[1].place(layers=2, coupled=True).layers
    with_budget = [lp.LayerCard.from_dict(json.loads(Path(f"{out}.budget{r}").read_text())) for r in (0, 1)]
    assert with_budget[0].layers == with_budget[1].layers and with_budget[0].modules == with_budget[1].modules
    assert all(l.sim_gain is not None and l.lca_gain is not None for l in with_budget[0].layers)
    assert Path(f"{out}.saved0").exists() and not Path(f"{out}.saved1").exists()  # only rank 0 writes
    for r in (0, 1):  # a second card() does not all-reduce the sums again
        first, second = (lp.LayerCard.from_dict(d) for d in json.loads(Path(f"{out}.twice{r}").read_text()))
        assert first.modules == second.modules and first.meta["data"] == second.meta["data"]
        assert first.meta["data"]["rows"] == cards[0].meta["data"]["rows"]
    ref = lp.profile(make_model("llama").double(), make_batches(n=4), rank=4, dtype=torch.float64, progress=False,
                     score="resnorm2")
    card = cards[0]
    assert card.meta["data"]["rows"] == ref.meta["data"]["rows"] and card.meta["data"]["batches"] == 4
    assert card.meta["data"]["world_size"] == 2
    for a, b in zip(ref.modules, card.modules):
        assert a.name == b.name and a.rows == b.rows and a.calls == b.calls
        for col in ("resnorm", "resnorm_rank", "energy", "cond", "erank", "noise_amp", "grad_norm", "act_norm",
                    "nfn", "resid_explained"):
            assert math.isclose(getattr(a, col), getattr(b, col), rel_tol=1e-9), (a.name, col)
    assert card.ranking() == ref.ranking()
