"""The core: contracts (the Task Protocol and its optional capabilities) and registries.

Everything else in finekit depends on this package; it depends on nothing of finekit's
but the errors module (the recipe schema and data types appear in annotations only).
"""
