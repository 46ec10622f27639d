"""LoRA on a pruned model: settings, run_clm-style training blocks, a plain training loop, and a merge that keeps the mask.

Used by lora_ft/finetune_lm.py and lora_ft/evaluate_ppl.py; importable on its own:
    peft_model = attach_lora(model, LoraSettings())
    losses = train_lora(peft_model, texts_to_blocks(texts, tokenizer, 128, 64), TrainSettings(max_steps=20))
    merged, report = merge_lora(peft_model, masked=True)
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from tqdm import tqdm

from lib.checks import NonFiniteError
from lib.config import ConfigError, Settings, setting
from lib.data import token_ids, with_bos
from lib.models import input_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSettings(Settings):
    """The adapter. Defaults are Wanda's lora_ft (r=8, alpha=16, dropout 0.05 on q_proj and v_proj); the flags
    of lora_ft/finetune_lm.py are built from these fields."""

    group: ClassVar[str] = "LoRA adapter"
    r: int = setting(8, "adapter rank (at most the narrowest target linear's width)", bounds="positive",
                     flags=("--lora_r",), note="Wanda uses 8")
    alpha: int = setting(16, "adapter scale numerator (the update is scaled by alpha / r)", bounds="positive",
                         flags=("--lora_alpha",), note="Wanda uses 16")
    dropout: float = setting(0.05, "dropout on the adapter's input", bounds="[0, 1)", flags=("--lora_dropout",))
    target_modules: tuple[str, ...] = setting(("q_proj", "v_proj"), "names of the linears that get an adapter",
                                              flags=("--lora_target_modules",))

    def check(self) -> None:
        if not self.target_modules:
            raise ConfigError("lora_target_modules is empty; name at least one linear, e.g. q_proj,v_proj")

    def to_peft(self):
        """The equivalent peft.LoraConfig for a causal LM."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM")


@dataclass(frozen=True)
class TrainSettings(Settings):
    """The optimisation. Defaults are Wanda's (lr 1e-4, one epoch, batch 1); max_steps overrides epochs. The
    flags of lora_ft/finetune_lm.py are built from these fields."""

    group: ClassVar[str] = "training"
    # AdamW steps move each weight by about the learning rate: above 1 the adapter can only diverge.
    learning_rate: float = setting(1e-4, "AdamW learning rate", bounds="(0, 1]", note="Wanda uses 1e-4")
    num_train_epochs: float = setting(1.0, "passes over the training blocks", bounds="(0, 1000]",
                                      note="Wanda uses 1")
    max_steps: int | None = setting(None, "optimizer steps; overrides --num_train_epochs", bounds="positive")
    batch_size: int = setting(1, "training blocks per forward", bounds="positive",
                              flags=("--per_device_train_batch_size",))
    gradient_accumulation_steps: int = setting(1, "forwards per optimizer step", bounds="positive")
    weight_decay: float = setting(0.0, "AdamW weight decay", bounds="[0, 1]")
    seed: int = setting(0, "adapter initialisation and data order seed", bounds=">= 0")
    logging_steps: int = setting(10, "log the loss every N optimizer steps", bounds=">= 0", note="0 = no loss logging")

    def total_steps(self, nblocks: int) -> int:
        """Optimizer steps: max_steps, else ceil(epochs * blocks per epoch / (batch * accumulation))."""
        if self.max_steps is not None:
            return self.max_steps
        per_epoch = math.ceil(nblocks / self.batch_size)
        return max(1, math.ceil(self.num_train_epochs * per_epoch / self.gradient_accumulation_steps))


@dataclass
class MergeReport:
    """What a merge did to the zeros of the adapted linears (the only weights a LoRA merge touches)."""

    masked: bool
    zeros_before: int
    zeros_after: int
    numel: int
    per_module_filled: dict[str, int] = field(default_factory=dict)

    @property
    def zeros_kept(self) -> bool:
        return self.zeros_after >= self.zeros_before


def texts_to_blocks(texts: list[str], tokenizer, block_size: int, max_blocks: int | None = None,
                    bos_id: int | None = None) -> torch.Tensor:
    """Documents -> training blocks [n, block_size], as HF run_clm: tokenise each, concatenate, cut, drop the tail.

    max_blocks plays run_clm's max_train_samples (it selects blocks after grouping); documents are only
    tokenised until there are enough tokens. bos_id: every block is bos_id + block_size - 1 text tokens, the text
    tokenised without special tokens (main.py's windows for --bos always, the ones the model is evaluated on).
    """
    if block_size < 2:
        raise ConfigError(f"block_size {block_size} must be at least 2 tokens")
    width = block_size - (bos_id is not None)
    needed = None if max_blocks is None else max_blocks * width
    stream: list[int] = []
    for text in texts:
        if not text.strip():
            continue
        stream.extend(token_ids(text, tokenizer, bos=bos_id is not None).tolist())
        if needed is not None and len(stream) >= needed:
            break
    nblocks = len(stream) // width
    if max_blocks is not None:
        nblocks = min(nblocks, max_blocks)
    if nblocks == 0:
        raise ConfigError(f"the training text has {len(stream)} tokens, fewer than one block of {width}"
                          + (" after the BOS" if bos_id is not None else ""))
    return with_bos(torch.tensor(stream[: nblocks * width], dtype=torch.long).reshape(nblocks, width), bos_id)


def attach_lora(model: nn.Module, settings: LoraSettings):
    """Wrap the model's target linears with trainable LoRA adapters (base weights frozen) -> peft.PeftModel."""
    from peft import get_peft_model

    leaf_names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in settings.target_modules if t not in leaf_names]
    if missing:
        raise ConfigError(f"lora_target_modules {missing} are not linears of {type(model).__name__}; "
                         f"choose from {sorted(leaf_names)}")
    return get_peft_model(model, settings.to_peft())


@torch.no_grad()
def mean_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token loss over blocks [n, block_size] in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        batch = blocks[start:start + batch_size].to(input_device(model))
        total += model(input_ids=batch, labels=batch).loss.item() * batch.shape[0]
        count += batch.shape[0]
    model.train(was_training)
    return total / count


def train_lora(peft_model: nn.Module, blocks: torch.Tensor, settings: TrainSettings) -> list[float]:
    """AdamW on the adapter only, linear decay to 0 (HF Trainer's default schedule) -> loss per optimizer step."""
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters; attach_lora first")
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)  # LoRA dropout
    steps = settings.total_steps(blocks.shape[0])
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))
    device = input_device(peft_model)

    def batches():
        while True:  # reshuffle every epoch, as the Trainer's sampler does
            order = torch.randperm(blocks.shape[0], generator=generator)
            for start in range(0, len(order), settings.batch_size):
                yield blocks[order[start:start + settings.batch_size]]

    stream = batches()
    losses: list[float] = []
    peft_model.train()
    progress = tqdm(range(steps), desc=f"lora (0/{steps})")
    for step in progress:
        step_loss = 0.0
        for _ in range(settings.gradient_accumulation_steps):
            batch = next(stream).to(device)
            loss = peft_model(input_ids=batch, labels=batch).loss / settings.gradient_accumulation_steps
            loss.backward()
            step_loss += loss.item()
        if not math.isfinite(step_loss):
            # A NaN/inf loss poisons the adapter on the next step; stop before anything is saved.
            raise NonFiniteError(f"training loss is {step_loss} at step {step + 1}/{steps}; lower --learning_rate "
                                 f"(now {settings.learning_rate:g}) or check the base model's weights")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        progress.set_description(f"lora ({step + 1}/{steps}) loss {step_loss:.3f}")
        if settings.logging_steps and (step + 1) % settings.logging_steps == 0:
            recent = losses[-settings.logging_steps:]
            logger.info("step %d/%d: loss %.4f (mean of last %d)", step + 1, steps, sum(recent) / len(recent),
                        len(recent))
    peft_model.eval()
    for name, param in peft_model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise NonFiniteError(f"adapter weight '{name}' became non-finite in training; lower --learning_rate "
                                 f"(now {settings.learning_rate:g})")
    return losses


def lora_zero_masks(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """Qualified name (in the unwrapped model) -> bool [out, in], True where the adapted base weight is zero."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return {name: module.get_base_layer().weight.detach() == 0
            for name, module in base.named_modules() if isinstance(module, LoraLayer)}


@torch.no_grad()
def merge_lora(peft_model: nn.Module, masked: bool) -> tuple[nn.Module, MergeReport]:
    """Fold the adapter into the base weights -> (plain model, report). masked=True re-zeros every pruned weight.

    W + B A is dense, so an unmasked merge fills the pruned positions of every adapted linear and the
    model is no longer sparse; the masked merge is the projection back onto the pruning mask.
    """
    masks = lora_zero_masks(peft_model)
    merged = peft_model.merge_and_unload()
    modules = dict(merged.named_modules())
    report = MergeReport(masked=masked, zeros_before=0, zeros_after=0, numel=0)
    for name, mask in masks.items():
        weight = modules[name].weight
        if masked:
            weight.masked_fill_(mask.to(weight.device), 0.0)
        report.zeros_before += int(mask.sum())
        report.zeros_after += int((weight == 0).sum())
        report.numel += mask.numel()
        report.per_module_filled[name] = int((mask.to(weight.device) & (weight != 0)).sum())
    before, after = report.zeros_before / max(report.numel, 1), report.zeros_after / max(report.numel, 1)
    if masked:
        logger.info("masked merge: adapted linears keep their zeros (%.4f -> %.4f sparsity)", before, after)
    elif report.zeros_after < report.zeros_before:
        logger.warning("unmasked merge destroys sparsity: the dense LoRA update filled %d of %d pruned weights in "
                       "the adapted linears (sparsity %.4f -> %.4f); use --merge_masked to keep the mask",
                       report.zeros_before - report.zeros_after, report.zeros_before, before, after)
    return merged, report
