"""Profile inside a transformers Trainer: LayerCardCallback writes the card and placement before step 1.

A tiny Llama built from a config (no download) trains for a few steps on random tokens;
the callback profiles the first training batches and writes OUTPUT_DIR/layerprof/.

    python examples/trainer_callback.py --out example_out/trainer
"""
import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from layerprof.callback import LayerCardCallback

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="example_out/trainer")
args = parser.parse_args()

torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
ids = torch.randint(0, 128, (32, 32))
dataset = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in ids]

callback = LayerCardCallback(batches=4, layers=1, rank=8, exports=("peft", "axolotl", "llamafactory"))
trainer = Trainer(model=model, train_dataset=dataset, callbacks=[callback],
                  args=TrainingArguments(output_dir=args.out, max_steps=3, per_device_train_batch_size=4,
                                         report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True))
trainer.train()
print("card:", callback.card)
print("placement:", callback.plan.layers, f"{callback.plan.predicted_gain_fraction:.0%} of the predicted gain")
for path in sorted(Path(args.out, "layerprof").rglob("*")):
    if path.is_file():
        print("wrote", path)
