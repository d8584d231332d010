"""HF transformers family: any model `AutoModelFor<Head>.from_pretrained` loads.

Local folders and hub ids alike; remote code only when the recipe says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finekit.core.contracts import HeadSpec
from finekit.errors import ModelError, RecipeError
from finekit.models.base import LayerGroups, LoadedModel, register_family
from finekit.models.dropout import dropout_updates
from finekit.models.resolve import resolve_model_path
from finekit.recipe import ModelSpec

log = logging.getLogger(__name__)

# head kind -> (transformers auto-model class name, processor kind)
HEADS = {
    "sequence-classification": ("AutoModelForSequenceClassification", "tokenizer"),
    "causal-lm": ("AutoModelForCausalLM", "tokenizer"),
    "masked-lm": ("AutoModelForMaskedLM", "tokenizer"),
    "image-classification": ("AutoModelForImageClassification", "image"),
    "audio-classification": ("AutoModelForAudioClassification", "audio"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFFamily:
    name = "hf"

    def can_load(self, path: str) -> bool:
        p = Path(path)
        if p.exists():  # a finekit-carried family's export is not an HF model
            cfg = p / "config.json"
            return cfg.is_file() and '"finekit_family"' not in cfg.read_text(errors="replace")
        return "/" in path or path.isidentifier()  # a hub id: let from_pretrained decide

    def _auto(self, head: HeadSpec) -> Any:
        import transformers

        if head.kind not in HEADS:
            raise ModelError(f"the hf family has no head {head.kind!r}; known: {list(HEADS)}")
        return getattr(transformers, HEADS[head.kind][0])

    def _head_kwargs(self, head: HeadSpec) -> dict[str, Any]:
        if head.num_labels is None:
            return {}
        id2label = head.id2label or {i: str(i) for i in range(head.num_labels)}
        return {
            "num_labels": head.num_labels,
            "id2label": {int(k): v for k, v in id2label.items()},
            "label2id": {v: int(k) for k, v in id2label.items()},
            **({"problem_type": head.problem_type} if head.problem_type else {}),
        }

    def load(
        self, spec: ModelSpec, head: HeadSpec, pretrained: bool = True, exact: bool = False
    ) -> LoadedModel:
        from transformers import AutoConfig

        path = resolve_model_path(spec.path)
        p = Path(path)
        if p.exists() and not (p / "config.json").is_file():
            raise ModelError(
                f"model.path {spec.path!r} is not a model: {path} has no config.json "
                "(expected an HF model folder saved with save_pretrained)"
            )
        common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
        auto = self._auto(head)
        import transformers

        verbosity = transformers.logging.get_verbosity()
        # The "newly initialised head" load report is expected here; we log our own line.
        transformers.logging.set_verbosity_error()
        try:
            processor = self._processor(path, head, common)
            config = None
            if not pretrained or any(v is not None for v in spec.dropout.model_dump().values()):
                config = AutoConfig.from_pretrained(path, **self._head_kwargs(head), **common)
                # model.dropout: set on the config, before the dropout modules are built.
                model_type = getattr(config, "model_type", type(config).__name__)
                for name, rate in dropout_updates(spec.dropout, config, model_type, None).items():
                    setattr(config, name, rate)
            info: dict[str, Any] = {}
            if pretrained:
                model, info = auto.from_pretrained(
                    path,
                    dtype=DTYPES[spec.dtype],
                    ignore_mismatched_sizes=not exact,
                    output_loading_info=True,
                    **({"config": config} if config is not None else self._head_kwargs(head)),
                    **common,
                )
            else:
                model = auto.from_config(config, trust_remote_code=spec.trust_remote_code)
                model.to(DTYPES[spec.dtype])
        except RecipeError:
            raise  # a dropout override the architecture has no field for
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(
                f"model.path {spec.path!r} could not be loaded as {HEADS[head.kind][0]}: "
                f"{str(e).splitlines()[0]}"
                + (
                    " (offline? set HF_HUB_OFFLINE=0 or use a local folder)"
                    if not p.exists()
                    else ""
                )
            ) from None
        finally:
            transformers.logging.set_verbosity(verbosity)
        self._ensure_pad(model, processor)
        reinit, dropped = load_report(model, info, spec.path)
        return LoadedModel(
            model=model,
            processor=processor,
            family=self.name,
            source=path,
            reinitialised=reinit,
            dropped=dropped,
        )

    def _processor(self, path: str, head: HeadSpec, common: dict[str, Any]) -> Any:
        kind = HEADS[head.kind][1]
        if kind == "tokenizer":
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path, **common)
        if kind == "image":
            from transformers import AutoImageProcessor

            return AutoImageProcessor.from_pretrained(path, **common)
        from transformers import AutoFeatureExtractor

        return AutoFeatureExtractor.from_pretrained(path, **common)

    @staticmethod
    def _ensure_pad(model: nn.Module, processor: Any) -> None:
        """Decoder-only tokenizers often lack a pad token; batching needs one."""
        if getattr(processor, "pad_token", "x") is None and processor.eos_token is not None:
            processor.pad_token = processor.eos_token
        cfg = getattr(model, "config", None)
        if (
            cfg is not None
            and getattr(cfg, "pad_token_id", 0) is None
            and hasattr(processor, "pad_token_id")
        ):
            cfg.pad_token_id = processor.pad_token_id

    def save(self, model: nn.Module, processor: Any, out_dir: Path, head: HeadSpec) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)  # type: ignore[operator]  # safetensors
        if processor is not None:
            processor.save_pretrained(out_dir)

    def layer_groups(self, model: nn.Module) -> LayerGroups:
        prefix = getattr(model, "base_model_prefix", "")
        base = getattr(model, prefix, None) if prefix else None
        if base is None:
            base, prefix = model, ""
        dot = f"{prefix}." if prefix else ""
        groups = LayerGroups()
        # The block stack: the longest ModuleList of same-type children (encoder.layer...).
        best: tuple[str, nn.ModuleList] | None = None
        for name, mod in base.named_modules():
            if (
                isinstance(mod, nn.ModuleList)
                and len(mod) > 0
                and (best is None or len(mod) > len(best[1]))
                and len({type(m) for m in mod}) == 1
            ):
                best = (name, mod)
        if best is not None:
            groups.layers = [f"{dot}{best[0]}.{i}" for i in range(len(best[1]))]
        for name, _ in base.named_children():
            if "embed" in name:
                groups.embeddings.append(f"{dot}{name}")
        if not groups.embeddings:
            emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None  # type: ignore[operator]
            for name, mod in model.named_modules():
                if emb is not None and mod is emb:
                    groups.embeddings.append(name)
        if prefix:
            groups.head = [
                n
                for n, m in model.named_children()
                if n != prefix and any(True for _ in m.parameters())
            ]
        return groups


register_family(HFFamily())


# A share of the model's weights above this left at random means the body did not load
# (another architecture's checkpoint, renamed keys): a new head is a few tensors at most.
BODY_MISSING_SHARE = 0.5


def load_report(model: nn.Module, info: dict[str, Any], given: str) -> tuple[list[str], list[str]]:
    """Names of the weights transformers re-initialised (missing, or of another shape) and
    dropped (in the checkpoint, not in the model), each logged by name; a ModelError when
    most of the model did not load."""
    missing = [str(k) for k in info.get("missing_keys") or ()]
    mismatched = [
        str(k[0] if isinstance(k, tuple | list) else k) for k in info.get("mismatched_keys") or ()
    ]
    reinit = sorted({*missing, *mismatched})
    dropped = sorted(str(k) for k in info.get("unexpected_keys") or ())
    total = len(model.state_dict())
    if total and len(reinit) > BODY_MISSING_SHARE * total:
        raise ModelError(
            f"model.path {given!r}: {len(reinit)} of {total} weights were not in the "
            f"checkpoint or had another shape (e.g. {', '.join(reinit[:3])}): the body did "
            "not load; check that the folder holds this architecture's weights"
        )
    if reinit:
        log.info(
            "initialised at random (not in the checkpoint or another shape): %d weights: %s",
            len(reinit),
            ", ".join(reinit[:8]) + (", ..." if len(reinit) > 8 else ""),
        )
    if dropped:
        log.warning(
            "checkpoint weights the model has no place for (dropped): %d: %s",
            len(dropped),
            ", ".join(dropped[:8]) + (", ..." if len(dropped) > 8 else ""),
        )
    return reinit, dropped
