"""wordcount@1 — a Sluice action written in Python.

Counts the lines and words of every text file in its input artifact and writes a report into its
output artifact. Build it (componentize-py 0.25.1, from PyPI) from the repository root with:

    componentize-py -d wit -w sluice:action/action@0.1.0 componentize app \
        -p examples/plugins/python-wordcount -o wordcount.wasm
"""
import os

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, types


def info(message: str) -> None:
    log.log(log.Level.INFO, message, [])


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Description:
        return types.Description(
            name="wordcount",
            version="1.0.0",
            category=types.Category.TEST,
            summary="Counts lines and words of the text files in its input artifact",
            config=[
                types.ConfigKey("extension", False, "only count files with this extension", ".txt"),
                types.ConfigKey("max_words", False, "fail when there are more words than this", None),
            ],
            capabilities=[],
            side_effects=False,
        )

    def run(self, ctx: types.Context, config) -> types.Outcome:
        settings = dict(config)
        if len(ctx.inputs) != 1 or len(ctx.outputs) != 1:
            raise Err(types.ActionError_Config("wordcount needs exactly one input and one output artifact"))
        extension = settings.get("extension", ".txt")
        source = os.path.join("/in", ctx.inputs[0])
        files = lines = words = 0
        report = []
        for directory, _, names in sorted(os.walk(source)):
            for name in sorted(names):
                if not name.endswith(extension):
                    continue
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                files += 1
                lines += text.count("\n")
                count = len(text.split())
                words += count
                report.append(f"{os.path.relpath(path, source)}\t{count}")
        with open(os.path.join("/out", ctx.outputs[0], "wordcount.tsv"), "w") as out:
            out.write("\n".join(report) + "\n")
        info(f"{files} files, {lines} lines, {words} words")
        limit = settings.get("max_words")
        if limit is not None and words > int(limit):
            raise Err(types.ActionError_Failed(f"{words} words is more than the limit of {limit}"))
        return types.Outcome_Succeeded(
            types.Success(
                variables=[("Files", str(files)), ("Lines", str(lines)), ("Words", str(words))],
                summary=f"{words} words in {files} files",
            )
        )
