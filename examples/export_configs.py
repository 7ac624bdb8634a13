"""Export a placement to PEFT, Axolotl and LLaMA-Factory, and load each back.

    python examples/export_configs.py --out example_out/exports
"""
import argparse
from pathlib import Path

import yaml
from peft import LoraConfig

import layerprof as lp
from layerprof.model.bundled import calibration_batches, load_default_model
from layerprof.output.export import export, llamafactory_args

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="example_out/exports")
args = parser.parse_args()
out = Path(args.out)

card = lp.profile(load_default_model(), calibration_batches(n_batches=8), rank=8, progress=False)
plan = card.place(layers=2)  # two layers: the best by the card's score in each half of the stack
print(f"layers {plan.layers}: {plan.predicted_gain_fraction:.0%} of the gain at {plan.cost:.0%} of the cost")

peft_file = export(plan, "peft", out / "adapter", r=8, lora_alpha=16)
print("PEFT:", peft_file, "->", sorted(LoraConfig.from_pretrained(str(peft_file.parent)).target_modules)[:2], "...")
axolotl_file = export(plan, "axolotl", out / "axolotl.yml", r=8, lora_alpha=16)
print("Axolotl:", axolotl_file, "->", sorted(yaml.safe_load(axolotl_file.read_text())))
lf_file = export(plan, "llamafactory", out / "llamafactory.yaml", r=8, lora_alpha=16)
print("LLaMA-Factory:", lf_file, "->", sorted(yaml.safe_load(lf_file.read_text())))
print("LLaMA-Factory command line: llamafactory-cli train your.yaml", " ".join(llamafactory_args(plan, r=8,
                                                                                           lora_alpha=16)[:4]), "...")
