"""Language modelling on plain text: `causal_lm` (next token, continued pre-training) and
`masked_lm` (BERT-style masked tokens). Blocks, packing and perplexity are shared
functions of `causal.py`."""

from finekit.core.contracts import register_task
from finekit.tasks.lm.causal import CausalLMConfig, CausalLMTask
from finekit.tasks.lm.masked import MaskedLMConfig, MaskedLMTask

register_task("causal_lm", CausalLMConfig, CausalLMTask)
register_task("masked_lm", MaskedLMConfig, MaskedLMTask)

__all__ = ["CausalLMConfig", "CausalLMTask", "MaskedLMConfig", "MaskedLMTask"]
