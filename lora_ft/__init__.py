"""LoRA fine-tuning of pruned models (peft, CPU-friendly): finetune_lm.py trains an adapter, evaluate_ppl.py scores it."""
