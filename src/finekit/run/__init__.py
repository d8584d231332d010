"""One run: `finetune(recipe)` (check -> setup -> baselines -> fit -> export -> evaluate ->
record), its stages and run.json's typed records."""

from finekit.run.finetune import FinetuneResult, finetune, make_recipe

__all__ = ["FinetuneResult", "finetune", "make_recipe"]
