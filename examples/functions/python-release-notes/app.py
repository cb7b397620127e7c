"""release-notes, the example function for `invoke@1`, written in Python.

Same behaviour as the Rust example: `steps=N` in the parameters makes it continue later N
times, `fail` makes it fail, else it writes NOTES.md into its output artifact. Build it
(componentize-py 0.25.1, from PyPI) from the repository root with:

    componentize-py -d wit -w sluice:action/function@0.1.0 componentize app \
        -p examples/functions/python-release-notes -o release-notes.wasm
"""
import wit_world
from wit_world.imports import function_types as ft
from wit_world.imports import log


def param(params: str, key: str):
    for word in params.split():
        if word.startswith(key + "="):
            return word[len(key) + 1:]
    return None


class WitWorld(wit_world.WitWorld):
    def handle(self, job: ft.Job) -> ft.Reply:
        if "fail" in job.parameters.split():
            return ft.Reply_Failure(f"asked to fail by its parameters ({job.parameters})")
        steps = int(param(job.parameters, "steps") or 0)
        done = int(job.continuation[len("step-"):]) if job.continuation else 0
        if done < steps:
            log.log(log.Level.INFO, f"step {done + 1} of {steps}", [])
            return ft.Reply_ContinueLater(ft.Later(f"step-{done + 1}", 50, f"step {done + 1} of {steps}"))
        version = param(job.parameters, "version") or "unversioned"
        notes = f"Release {version} of {job.pipeline} (execution {job.execution_id}) [python]\n"
        if job.outputs:
            with open(f"/out/{job.outputs[0]}/NOTES.md", "w") as f:
                f.write(notes)
        return ft.Reply_Success([("Notes", notes.strip()), ("Calls", str(done + 1))])
