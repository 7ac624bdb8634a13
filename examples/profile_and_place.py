"""Profile a model, read its Layer Card, place LoRA on the best layers, and train with PEFT.

Runs offline in under a minute on a laptop CPU: the bundled Shakespeare GPT-2 is
profiled on Python-documentation text (a domain shift, the situation a fine-tune is for).

    python examples/profile_and_place.py --out example_out
"""
import argparse
from pathlib import Path

import torch
from peft import get_peft_model

import layerprof as lp
from layerprof.model.bundled import calibration_batches, load_default_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="example_out")
parser.add_argument("--batches", type=int, default=16)
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# 1. One frozen forward/backward sweep over calibration batches -> a Layer Card.
model = load_default_model()
batches = calibration_batches(n_batches=args.batches)
card = lp.profile(model, batches, rank=8, progress=False)
card.save(out / "card.json")
card.to_html(out / "card.html")  # open it in a browser: plots of where the gain is and what it costs
print(card)
print("layer ranking, best first:", card.ranking())

# 2. Placement: k layers (the best of each of k depth bins), or the cheapest placement reaching 90% of the
#    predicted gain.
top = card.place(layers=2)
cheap = card.place(objective="cost", target_gain=0.9)
print(f"top-2 layers {top.layers}: {top.predicted_gain_fraction:.0%} of the gain at {top.cost:.0%} of the cost")
print(f"cheapest 90%: layers {cheap.layers} at {cheap.cost:.0%} of full-LoRA cost")

# 3. The plan as a PEFT config: get_peft_model adapts exactly the plan's modules.
peft_model = get_peft_model(load_default_model(), top.lora_config(r=8, lora_alpha=16))
peft_model.print_trainable_parameters()
adapted = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n})
print("adapted modules:", len(adapted))

# 4. A few LoRA steps on the same text to show it trains.
opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-3)
peft_model.train()
for step, batch in enumerate(batches[:4]):
    loss = peft_model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    print(f"step {step}: loss {loss.item():.3f}")
print(f"wrote {out / 'card.json'} and {out / 'card.html'}")
