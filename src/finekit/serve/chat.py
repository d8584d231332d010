"""Talk to a finished `chat` run: batch replies for a file, or an interactive loop.

Both use the run's own chat template and system prompt (saved with the run), greedy
decoding and `task.max_new_tokens`, exactly as evaluation did.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from finekit.core.contracts import Generates, capabilities
from finekit.errors import RecipeError
from finekit.serve.predict import LoadedRun

EXIT_WORDS = ("exit", "quit")


def _chat_task(loaded: LoadedRun) -> Generates:
    task = capabilities(loaded.task).generate
    if task is None:
        raise RecipeError(
            f"{loaded.run_dir} is a {loaded.recipe.task.name!r} run; chat needs a run of a "
            "task that generates replies (task chat)"
        )
    return task


def generate_file(loaded: LoadedRun, input_path: str, output_path: str) -> pd.DataFrame:
    """Replies for every row of a file (`messages` histories or `prompt` texts), written
    beside the input columns as `reply` (jsonl/csv/tsv/parquet by the output suffix)."""
    _chat_task(loaded)
    df = loaded.read(input_path)
    replies = [p["text"] for p in loaded.predict(df)]
    out = df.assign(reply=replies)
    suffix = Path(output_path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        out.to_json(output_path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".parquet":
        out.to_parquet(output_path, index=False)
    else:
        out.to_csv(output_path, sep="\t" if suffix == ".tsv" else ",", index=False)
    return out


def chat_loop(
    loaded: LoadedRun,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    stream: bool = True,
) -> list[dict[str, str]]:
    """Read user turns until `exit`/`quit`/EOF, answer each with the whole history as
    context (tokens streamed with TextStreamer), and return the conversation."""
    from transformers import TextStreamer

    task = _chat_task(loaded)
    history: list[dict[str, str]] = []
    sp = task.system_prompt
    if sp:
        history.append({"role": "system", "content": sp})
    streamer = (
        TextStreamer(loaded.processor, skip_prompt=True, skip_special_tokens=True)
        if stream
        else None
    )
    while True:
        try:
            line = read("you> ")
        except EOFError:
            break
        if line.strip().lower() in EXIT_WORDS:
            break
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.strip()})
        if streamer is None:
            write("bot> ")
        replies, _ = task.generate(loaded.model, loaded.processor, [history], 1, streamer=streamer)
        if streamer is None:
            write(replies[0])
        history.append({"role": "assistant", "content": replies[0]})
    return history
