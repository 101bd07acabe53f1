"""Supervised warm start of the embedded tiny model on the synthetic arithmetic task, and its SFT batches.

Runs in whichever process builds the tiny model (``rlvr-temp make-tiny-model``, or the driver on first use:
rlvr_temp.data.tiny_model). Method: next-token cross-entropy on the response tokens only (prompt and padding are
labelled -100), AdamW with decoupled weight decay on matrices only, a linear warm-up then a half cosine down to 0.1
of the peak, gradient-norm clipping at 1.0, a fixed number of steps over deterministic, reshuffled-every-epoch,
right-padded batches. :func:`collate_sft` is shared with the TGR supervised recipe (rlvr_temp.learner.tgr).

Left out: evaluation during training, early stopping, mixed precision (the tiny model is fp32 on CPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rlvr_temp.data import synthetic
from rlvr_temp.utils import lr_factor


def encode_examples(rows: Sequence[dict], tokenizer: Any) -> list[tuple[list[int], int]]:
    """(token ids of prompt + response + EOS, prompt length) per synthetic row."""
    prompts = tokenizer([synthetic.prompt_of(r) for r in rows], add_special_tokens=False)["input_ids"]
    targets = tokenizer([synthetic.target_of(r) for r in rows], add_special_tokens=False)["input_ids"]
    return [(p + t + [tokenizer.eos_token_id], len(p)) for p, t in zip(prompts, targets, strict=True)]


def collate_sft(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (torch tensors) of ``(ids, prompt length)``
    examples: labels hold the response tokens only, -100 on prompt and padding positions (whatever the pad id is
    -- it may equal EOS)."""

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sft_batches(
    examples: Sequence[tuple[list[int], int]], batch_size: int, seed: int, pad_id: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless (input_ids, attention_mask, labels) batches: deterministic from ``seed``, reshuffled every epoch,
    right-padded; an epoch's last partial batch is dropped."""

    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = collate_sft([examples[i] for i in order[start : start + batch_size]], pad_id)
            yield batch["input_ids"], batch["attention_mask"], batch["labels"]


def train_sft(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    seed: int,
    log_every: int = 0,
) -> list[float]:
    """Supervised warm start of ``model`` on synthetic ``rows`` (response tokens only), ``steps`` AdamW steps over
    batches shuffled from ``seed``; returns the loss of every step and leaves the model in eval mode."""

    batches = sft_batches(encode_examples(rows, tokenizer), batch_size, seed, tokenizer.pad_token_id)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )
    # linear warm-up, then a half cosine down to 0.1 of the peak at `steps`
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup_steps, steps, "cosine", floor=0.1))
    model.train()
    losses: list[float] = []
    for step in range(steps):
        ids, mask, labels = next(batches)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            mean = sum(losses[-log_every:]) / log_every
            print(f"step {step + 1}/{steps} loss {mean:.4f}", flush=True)
    model.eval()
    return losses
