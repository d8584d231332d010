"""The method room: what trains (full, freeze, lora...), one module per method."""

from finekit.methods import bitfit as _bitfit  # noqa: F401,E402
from finekit.methods import freeze as _freeze  # noqa: F401,E402
from finekit.methods import full as _full  # noqa: F401,E402
from finekit.methods import gradual as _gradual  # noqa: F401,E402
from finekit.methods import ia3 as _ia3  # noqa: F401,E402
from finekit.methods import linear_probe as _linear_probe  # noqa: F401,E402
from finekit.methods import lora as _lora  # noqa: F401,E402
from finekit.methods import prompt_tuning as _prompt_tuning  # noqa: F401,E402
from finekit.methods.base import (
    METHODS,
    Method,
    MethodContext,
    build_method,
    count_parameters,
    register_method,
)

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "build_method",
    "count_parameters",
    "register_method",
]
