"""`classify`: one label per example, from text (`text.py`) or images (`image.py`); the
recipe's `task.modality` (resolved from the data) picks the part."""

from finekit.core.contracts import register_task
from finekit.tasks.classify.config import ClassifyConfig
from finekit.tasks.classify.image import ImageClassifyTask
from finekit.tasks.classify.text import AugmentedTexts, ClassifyTask


def make_classify(config: ClassifyConfig) -> ClassifyTask | ImageClassifyTask:
    """Text or image classification by `config.modality` (resolved by the recipe)."""
    if config.modality == "image":
        return ImageClassifyTask(config)
    return ClassifyTask(config)


register_task("classify", ClassifyConfig, make_classify)

__all__ = ["AugmentedTexts", "ClassifyConfig", "ClassifyTask", "ImageClassifyTask", "make_classify"]
