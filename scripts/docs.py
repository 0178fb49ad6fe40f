"""Regenerate every number and command output that README.md and docs/ show, from the code.

    scripts/docs.py --write     run the commands, rewrite what the docs show (``make docs``)
    scripts/docs.py --check     list every block or value a fresh run would change; exit 1 if any
    scripts/docs.py --list      every marker and where its content comes from
    --fast                      only the cheap part (CI runs ``--check --fast`` in tests/test_docs.py)
    --only TEXT                 only the markers whose spec contains TEXT, or is NAME for ``=NAME`` (one
                                section after a change; repeat it for several, which then share one run's
                                results)

``--check`` also parses every ``traitlens`` command line the docs show (fenced shell blocks, inline
code, the markers below) with the real argument parser, so a renamed flag fails it; a line with
``...``, ``[optional]``, ``a|b`` or an UPPERCASE placeholder is a synopsis: its command and option
names must exist. That part is always run (it is fast).

Markers, HTML comments that GitHub does not render:

``<!-- generated: traitlens layers --model traitlens:specimens-vit -->`` ... ``<!-- /generated -->``
    a fenced block of what the command prints on stdout (progress bars go to stderr). A command
    that reads what another command shown in the docs writes (under its ``--out``) runs after it.
    ``<!-- generated (fast): ... -->`` puts the block in the fast part.
``<!-- generated: NAME -->`` ... ``<!-- /generated -->``
    a block that one of the RECIPES below renders (a command built from another result, a table
    joined from several runs).
``<!-- value: SOURCE/KEY/... :FORMAT -->0.57<!-- /value -->``
    a number in prose: one of the SOURCES below, a path into it (``key=value`` picks the row of a
    list whose ``key`` is ``value``) and a Python format spec (``.2f``, ``.1%``, ``,``). A value
    is fast when its source runs no command.
``<!-- measured: COMMAND -->`` ... ``<!-- /measured -->``
    a timing: it changes with the machine and the run, so it is never compared; the marker names
    the command that measures it (which must exist and parse).

Commands run in a fresh temporary folder (nothing is written in the repository) with
``HF_HUB_OFFLINE=1``, each command line once per run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlens.atomic import atomic_write_bytes
from traitlens.cli import build_parser
from traitlens.cli_args import join_negative_values
from traitlens.demo import DEMO_MODEL, DemoConfig
from traitlens.explain.config import DEFAULT_GAMMA
from traitlens.specimens.catalog import LOOKALIKES, SPECIES, TRAITS
from traitlens.specimens.provider import model_directory

REPO = Path(__file__).resolve().parents[1]
TRAITLENS = Path(sys.executable).with_name("traitlens")
# a fixed width: argparse wraps --help to the terminal's, and the docs must not depend on it
ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
SHELL_FENCES = {"bash", "sh", "shell", "console"}

Command = tuple[str, ...]
"""A command line's arguments after ``traitlens``."""

MARKER = re.compile(
    r"<!-- (?P<kind>generated|value|measured)(?P<fast> \(fast\))?: (?P<spec>.+?) -->(?P<body>.*?)<!-- /(?P=kind) -->",
    re.DOTALL)
FENCE = re.compile(r"^```(?P<lang>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"(?<!`)`(?P<code>(?:[^`\n]|\n(?!\n))+)`(?!`)")
SYNOPSIS_TOKEN = re.compile(r"^(\.\.\.|.*[|\[\]].*|[A-Z][A-Z0-9_]*)$")


class DocsError(Exception):
    """Something the docs show that the code does not produce (or cannot run)."""


class SlowWork(Exception):
    """Raised in ``--fast`` mode instead of running a command that is not marked fast."""


def default_docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def where(doc: Path, text: str, offset: int) -> str:
    name = doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc
    line = text.count("\n", 0, offset) + 1
    return f"{name}:{line}"


# --- command lines -------------------------------------------------------------------------------

def display(command: Command) -> str:
    return shlex.join(("traitlens", *command))


def traitlens_args(line: str) -> Command | None:
    """The arguments of a ``traitlens`` (or ``.venv/bin/traitlens``, ``-m traitlens``) command line."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # an output line with an apostrophe, say
        return None
    if tokens and Path(tokens[0]).name == "traitlens":
        return tuple(tokens[1:])
    if tokens and Path(tokens[0]).name in {"torchrun", "python", "python3"} and "traitlens" in tokens:
        start = tokens.index("traitlens")
        if tokens[start - 1] == "-m":
            return tuple(tokens[start + 1:])
    return None


@dataclass(frozen=True)
class CommandLine:
    where: str
    args: Command


def _shell_lines(body: str, offset: int) -> Iterator[tuple[int, str]]:
    """The lines of a shell block with their offsets, ``\\``-continued lines joined."""
    start, pending = offset, ""
    for physical in body.split("\n"):
        start = start if pending else offset
        offset += len(physical) + 1
        if physical.endswith("\\"):
            pending += physical[:-1] + " "
            continue
        yield start, pending + physical
        pending = ""


def command_lines(doc: Path, text: str) -> Iterator[CommandLine]:
    """Every ``traitlens`` command line shown in ``text``: shell fences, inline code, markers."""
    for fence in FENCE.finditer(text):
        if fence.group("lang").strip() in SHELL_FENCES:
            for offset, line in _shell_lines(fence.group("body"), fence.start("body")):
                args = traitlens_args(line)
                if args is not None:
                    yield CommandLine(where(doc, text, offset), args)
    prose = FENCE.sub(lambda fence: "\n" * fence.group(0).count("\n"), text)  # keeps line numbers
    for span in INLINE_CODE.finditer(prose):
        tokens = span.group("code").split()
        if tokens and tokens[0] in {"traitlens", ".venv/bin/traitlens"}:
            yield CommandLine(where(doc, prose, span.start()), tuple(tokens[1:]))
    for marker in MARKER.finditer(text):
        args = traitlens_args(marker.group("spec")) if marker.group("kind") != "value" else None
        if args is not None:
            yield CommandLine(where(doc, text, marker.start()), args)


@functools.cache
def _parser() -> argparse.ArgumentParser:
    return build_parser()


def parse(command: Command) -> argparse.Namespace | None:
    """The namespace the real parser makes of ``command`` (None for ``--help``, ``--version``)."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return _parser().parse_args(join_negative_values(command))
    except SystemExit as exit_:
        if exit_.code == 0:
            return None
        raise DocsError(f"`{display(command)}` does not parse: {errors.getvalue().strip()}") from None


def _subcommand(command: Command) -> tuple[argparse.ArgumentParser, Command]:
    """The (sub)parser ``command`` names, and the arguments left for it."""
    parser = _parser()
    for position, token in enumerate(command):
        choices = next((action.choices for action in parser._actions
                        if isinstance(action, argparse._SubParsersAction)), None)
        if choices is None or token.startswith("-") or SYNOPSIS_TOKEN.match(token):
            return parser, command[position:]
        if token not in choices:
            raise DocsError(f"`{display(command)}`: traitlens has no command {' '.join(command[:position + 1])!r}")
        parser = choices[token]
    return parser, ()


def check_command(command: Command) -> None:
    """Raise :class:`DocsError` unless ``command`` parses (a synopsis: its command and options exist)."""
    parser, rest = _subcommand(command)
    options = [token.strip("[]").split("=")[0] for token in join_negative_values(rest) if token.strip("[]").startswith("-")]
    if options and not any(SYNOPSIS_TOKEN.match(token) for token in command):
        parse(command)
        return
    unknown = [option for option in options if option not in parser._option_string_actions]
    if unknown:
        raise DocsError(f"`{display(command)}`: no option {', '.join(unknown)}")


def _out_and_inputs(command: Command) -> tuple[Path | None, list[Path]]:
    namespace = parse(command)
    values = vars(namespace) if namespace is not None else {}
    out = values.get("out")
    inputs = [path for name, value in values.items() if name != "out"
              for path in (value if isinstance(value, list) else [value]) if isinstance(path, Path)]
    return (out if isinstance(out, Path) else None), inputs


def writers(lines: list[CommandLine]) -> dict[Path, set[Command]]:
    """The ``--out`` of every complete command line in the docs, and who writes it."""
    found: dict[Path, set[Command]] = {}
    for line in lines:
        with contextlib.suppress(DocsError):
            out, _ = _out_and_inputs(line.args)
            if out is not None:
                found.setdefault(out, set()).add(line.args)
    return found


def _distinct(commands: set[Command]) -> list[Command]:
    """One of each command that ``commands`` spell more than one way (``demo`` and ``demo --out
    runs/demo`` are one job): the same subcommand parsed to the same options."""
    kept: dict[str, Command] = {}
    for command in sorted(commands, key=len, reverse=True):  # the most explicit spelling runs
        namespace = parse(command)
        kept.setdefault(repr(sorted(vars(namespace).items())) if namespace else repr(command), command)
    return list(kept.values())


# --- running commands ----------------------------------------------------------------------------

class Workspace:
    """A scratch folder where commands run once each, prerequisites first."""

    def __init__(self, root: Path, writers: dict[Path, set[Command]], allow_slow: bool) -> None:
        self.root = root
        self.writers = writers
        self.allow_slow = allow_slow
        self._outputs: dict[Command, str | DocsError] = {}
        self.seconds: dict[Command, float] = {}
        """How long each command took, for the ``measured`` markers."""
        self._sources: dict[str, Any] = {}
        self._running: set[Command] = set()

    def run(self, line: str | Command, fast: bool = False) -> str:
        """What ``line`` prints on stdout, running the commands whose output it reads first."""
        command = traitlens_args(line) if isinstance(line, str) else line
        if command is None:
            raise DocsError(f"not a traitlens command: {line}")
        if command not in self._outputs:
            if not (fast or self.allow_slow):
                raise SlowWork(display(command))
            if command in self._running:
                raise DocsError(f"`{display(command)}` needs its own output")
            self._running.add(command)
            try:
                for needed in self._prerequisites(command):
                    self.run(needed, fast)
                self._outputs[command] = self._execute(command)
            except DocsError as error:
                self._outputs[command] = error
            finally:
                self._running.discard(command)
        output = self._outputs[command]
        if isinstance(output, DocsError):
            raise output
        return output

    def _prerequisites(self, command: Command) -> list[Command]:
        _, inputs = _out_and_inputs(command)
        needed: list[Command] = []
        for path in inputs:
            candidates = [out for out in self.writers if out == path or out in path.parents]
            if not candidates:
                continue
            out = max(candidates, key=lambda candidate: len(candidate.parts))
            commands = _distinct(self.writers[out] - {command})
            if len(commands) > 1:
                raise DocsError(f"{out} is written by several commands in the docs: "
                                + "; ".join(sorted(display(other) for other in commands)))
            needed.extend(commands)
        return needed

    def _execute(self, command: Command) -> str:
        print(f"running {display(command)}", file=sys.stderr, flush=True)
        start = time.monotonic()
        done = subprocess.run([str(TRAITLENS), *command], cwd=self.root, env=ENVIRONMENT,
                              capture_output=True, text=True, check=False)
        self.seconds[command] = time.monotonic() - start
        print(f"  {self.seconds[command]:.0f} s", file=sys.stderr, flush=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
            raise DocsError(f"`{display(command)}` failed (exit {done.returncode}): {last}")
        return done.stdout.rstrip("\n")

    def json(self, relative: str) -> Any:
        """A JSON file a command wrote here."""
        try:
            return json.loads((self.root / relative).read_text())
        except (OSError, ValueError) as error:
            raise DocsError(f"cannot read {relative} after its command ran: {error}") from None

    def source(self, name: str) -> Any:
        if name not in SOURCES:
            raise DocsError(f"no source {name!r} (sources: {', '.join(SOURCES)})")
        if name not in self._sources:
            self._sources[name] = SOURCES[name](self)
        return self._sources[name]


# --- sources of values ---------------------------------------------------------------------------

EMBEDDED_MODEL = "traitlens:specimens-vit"
EMBEDDED_DIRECTORY = model_directory("specimens-vit")
EMBEDDED_FACTS = json.loads((EMBEDDED_DIRECTORY / "model.json").read_text())
DEMO_DIRECTORY = model_directory(DEMO_MODEL.removeprefix("traitlens:"))
DEMO_LAYERS = tuple(f"blocks.{index}" for index in range(json.loads((DEMO_DIRECTORY / "model.json").read_text())["shape"]["depth"]))
DEMO_LAYER = DemoConfig().layer
FEATURE_SETS = ("sae", "neurons", "pca", "kmeans")


def _spoken(traits: list[str]) -> str:
    names = [trait.replace("_", " ") for trait in traits]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _code(_: Workspace) -> dict[str, Any]:
    """Constants of the code the prose quotes."""
    return {"traits": len(TRAITS), "species": len(SPECIES), "lookalike_pairs": len(LOOKALIKES),
            "gamma": DEFAULT_GAMMA, "demo": dataclasses.asdict(DemoConfig()), "report_seed": REPORT_SEED}


def _model(_: Workspace) -> dict[str, Any]:
    """The embedded model's ``model.json``, with its training set size, minutes and weights size."""
    metrics = EMBEDDED_FACTS["metrics"]
    return {**EMBEDDED_FACTS, "n_images": metrics["n_train"] + metrics["n_val"],
            "train_minutes": round(metrics["train_seconds_this_run"] / 60),
            "weights_mb": (EMBEDDED_DIRECTORY / "model.safetensors").stat().st_size / 1e6}


def demo_out(layer: str) -> str:
    return "runs/demo" if layer == DEMO_LAYER else f"runs/demo-{layer}"


def demo_command(layer: str) -> str:
    """``make demo`` itself on its own layer, ``--layer`` on the others (docs/results.md)."""
    return f"traitlens demo --out {demo_out(layer)}" + ("" if layer == DEMO_LAYER else f" --layer {layer}")


DEMO = demo_command(DEMO_LAYER)


def demo_source(layer: str) -> str:
    return "demo" if layer == DEMO_LAYER else f"demo-{layer}"


def _demo(layer: str) -> Callable[[Workspace], dict[str, Any]]:
    """``scores/demo.json`` of the demo on ``layer``, with which traits the SAE wins and which flip."""

    def load(workspace: Workspace) -> dict[str, Any]:
        workspace.run(demo_command(layer))
        results = workspace.json(f"{demo_out(layer)}/scores/demo.json")
        rows = results["discovery"]["rows"]
        won = [row["trait"] for row in rows if row["sae"] >= max(row[kind] for kind in FEATURE_SETS)]
        pairs = [row for row in results["suppression"] if row["trait"]]
        return {**results, "sae_wins": len(won), "sae_won_traits": _spoken(won),
                "sae_lost_traits": _spoken([row["trait"] for row in rows if row["trait"] not in won]),
                "unflipped_traits": _spoken([row["trait"] for row in pairs if row["flip_rate"] == 0]),
                "patching_min": min(row["flip_rate"] for row in results["patching"] if row["trait"]),
                "attribution_top": len(results["attribution"][0]["top_latents"])}

    return load


def _demo_sae(workspace: Workspace) -> Any:
    workspace.run(DEMO)
    return workspace.json("runs/demo/sae/config.json")


def specimens_command(folder: str, n: int, seed: int) -> str:
    return f"traitlens specimens generate --out {folder} --n-images {n} --seed {seed}"


def _accuracy(seed: int) -> Callable[[Workspace], Any]:
    """The embedded model's accuracy on the 1,600 images of ``seed`` that the docs show."""

    def load(workspace: Workspace) -> Any:
        workspace.run(specimens_command(f"specimens/s{seed}", 1600, seed))
        workspace.run(f"traitlens specimens accuracy --model {EMBEDDED_MODEL} --data specimens/s{seed}/images "
                      f"--out accuracy-s{seed}")
        return workspace.json(f"accuracy-s{seed}/accuracy.json")

    return load


LOCALIZATION_METHODS = {"grad-cam": "Grad-CAM", "layercam": "LayerCAM"}
LOCALIZATION_GRID = "x".join([str(EMBEDDED_FACTS["shape"]["img_size"] // EMBEDDED_FACTS["shape"]["patch_size"])] * 2)
"""The embedded model's patch grid (it sees the whole image: squashed, not cropped)."""


def _localization(method: str, finer: bool) -> Callable[[Workspace], Any]:
    """``localization.json`` of ``method`` (or its Finer-CAM) on the 320 images of seed 7 (docs/results.md)."""

    def load(workspace: Workspace) -> Any:
        workspace.run(specimens_command("loc/s7", 320, 7))
        name = f"finer-{method}" if finer else method
        refs = " --refs auto --n-refs 1" if finer else ""
        workspace.run(f"traitlens explain --model {EMBEDDED_MODEL} --data loc/s7/images --method {method}{refs} --out loc/{name}")
        workspace.run(f"traitlens specimens score localization --heatmaps loc/{name} --data loc/s7 --out loc/scores-{name} "
                      f"--grid {LOCALIZATION_GRID}")
        return workspace.json(f"loc/scores-{name}/localization.json")

    return load


ZOO = {"vit": "specimens-vit", "vit-mean": "specimens-vit-mean", "cnn": "specimens-cnn"}
"""The embedded model zoo by the short name its report folder takes."""
REPORT_SEED = 4242
RELIED = 0.5
"""A trait "the model relies on": twin reliance of at least one half (fixed before any report ran)."""


def report_command(short: str) -> str:
    return f"traitlens specimens report --model traitlens:{ZOO[short]} --out reports/{short} --seed {REPORT_SEED}"


def _model_facts(directory: Path) -> Callable[[Workspace], dict[str, Any]]:
    """An embedded model's ``model.json`` with its weights size and parameter count."""

    def load(_: Workspace) -> dict[str, Any]:
        facts = json.loads((directory / "model.json").read_text())
        from safetensors.numpy import load_file

        # parameters and buffers alike (batch-norm statistics count: they are part of the weights)
        n_parameters = sum(array.size for array in load_file(str(directory / "model.safetensors")).values())
        return {**facts, "weights_mb": (directory / "model.safetensors").stat().st_size / 1e6, "n_parameters": n_parameters,
                "train_minutes": round(facts["metrics"]["train_seconds_this_run"] / 60)}

    return load


def _report(short: str) -> Callable[[Workspace], dict[str, Any]]:
    """``report.json`` of a zoo model on seed 4242, with the numbers the issue's goals name."""

    def load(workspace: Workspace) -> dict[str, Any]:
        workspace.run(report_command(short))
        report = workspace.json(f"reports/{short}/report.json")
        reliance = {row["trait"]: row["reliance"] for row in report["reliance"]["pairs"] if row["trait"]}
        rows = report["discovery"]["rows"]
        won = [row["trait"] for row in rows if row["sae"] > max(row[kind] for kind in FEATURE_SETS[1:])]
        relied = [row for row in rows if (reliance.get(row["trait"]) or 0) >= RELIED]
        spearman = {row["method"]: row["oracle_spearman"] for row in report["localization"]["rows"]}
        suppression = lookup(report, "suppression/rows/pair=all")
        return {**report, "sae_wins": len(won), "sae_won_traits": _spoken(won) if won else "none",
                "relied_traits": len(relied), "relied_min_ap": min((row["sae"] for row in relied), default=None),
                "relied_mean_ap": sum(row["sae"] for row in relied) / len(relied) if relied else None,
                "finer_gain": {method: spearman[f"Finer-CAM ({method}, γ={DEFAULT_GAMMA:g}, ref: look-alike)"] - spearman[method]
                               for method in LOCALIZATION_METHODS.values()},
                "suppression_share": {kind: (suppression[f"flip_{kind}"] or 0) / suppression["reliance"]
                                      if suppression["reliance"] else None for kind in ("mask_ap", "twin", "patch")}}

    return load


SAE_TRAIN_SEED, SAE_SCORE_SEED = 7, 8
SAE_TRAIN_IMAGES = 4096
SAE_BUDGETS = (0.25, 1.0, 4.0)
"""SAE training tokens as multiples of what a report trains on (its 1,024 images x 20 epochs)."""


def sae_budget_commands(short: str, layer: str, tokens: int) -> list[str]:
    """Train one report-recipe SAE on the seed-7 store, then score it on the held-out seed-8 one."""
    name = f"sae/{short}-{tokens}"
    return [f"traitlens train --acts acts/{short}-s{SAE_TRAIN_SEED} --layer {layer} --arch topk --k 16 --expansion 8 --normalize none "
            f"--batch-size 1024 --lr 1e-3 --warmup-steps 20 --n-tokens {tokens} --out {name}",
            f"traitlens evaluate --sae {name} --acts acts/{short}-s{SAE_SCORE_SEED} --out {name}-eval",
            f"traitlens specimens score discovery --acts acts/{short}-s{SAE_SCORE_SEED} --data sae/s{SAE_SCORE_SEED} "
            f"--sae {name} --out {name}-discovery"]


def sae_store_command(short: str, layer: str, seed: int) -> str:
    return (f"traitlens extract --model traitlens:{ZOO[short]} --data sae/s{seed} --layers {layer} --tokens all "
            f"--out acts/{short}-s{seed}")


def _sae_convergence(short: str) -> Callable[[Workspace], list[dict[str, Any]]]:
    """Held-out fit and discovery of the report's SAE recipe at several token budgets (docs/results.md)."""

    def load(workspace: Workspace) -> list[dict[str, Any]]:
        report = workspace.source(f"report-{short}")
        layer, budget = report["sae"]["layer"], report["sae"]["n_tokens"] * report["sae"]["epochs"]
        workspace.run(f"{specimens_command(f'sae/s{SAE_TRAIN_SEED}', SAE_TRAIN_IMAGES, SAE_TRAIN_SEED)} --twins")
        workspace.run(f"{specimens_command(f'sae/s{SAE_SCORE_SEED}', 1024, SAE_SCORE_SEED)} --twins")
        for seed in (SAE_TRAIN_SEED, SAE_SCORE_SEED):
            workspace.run(sae_store_command(short, layer, seed))
        rows = []
        for multiple in SAE_BUDGETS:
            tokens = round(multiple * budget)
            commands = sae_budget_commands(short, layer, tokens)
            for command in commands:
                workspace.run(command)
            fit = workspace.json(f"sae/{short}-{tokens}-eval/metrics.json")["reconstruction"]
            discovery = workspace.json(f"sae/{short}-{tokens}-discovery/discovery.json")["rows"]
            won = [row for row in discovery if row["sae"] > max(row[kind] for kind in FEATURE_SETS[1:])]
            rows.append({"multiple": multiple, "tokens": tokens, "layer": layer, "commands": commands,
                         "explained_variance": fit["explained_variance"], "l0": fit["l0"],
                         "dead_latents": fit["dead_latents"], "sae_wins": len(won),
                         "mean_best_ap": sum(row["sae"] for row in discovery) / len(discovery)})
        return rows

    return load


SUPPRESSION_COUNTS = (10, 30, 100)
"""Latents zeroed per pair: a report's ten, and more."""


def suppression_command(short: str, n_latents: int) -> str:
    """Suppression on a report's own benchmark, store and SAE, with ``n_latents`` mask-AP latents per pair."""
    folder = f"reports/{short}"
    return (f"traitlens specimens score suppression --model traitlens:{ZOO[short]} --sae {folder}/sae --acts {folder}/acts "
            f"--data {folder}/specimens --out suppression/{short}-{n_latents} --n-latents {n_latents}")


def _suppression_counts(short: str) -> Callable[[Workspace], list[dict[str, Any]]]:
    """Pooled look-alike flips of a zoo model's report SAE as more latents are zeroed (docs/results.md)."""

    def load(workspace: Workspace) -> list[dict[str, Any]]:
        reliance = lookup(workspace.source(f"report-{short}"), "reliance/pairs/pair=all/reliance")
        rows = []
        for n_latents in SUPPRESSION_COUNTS:
            workspace.run(suppression_command(short, n_latents))
            pooled = lookup(workspace.json(f"suppression/{short}-{n_latents}/suppression.json"), "rows/pair=all")
            rows.append({**pooled, "n_latents": n_latents, "reliance": reliance})
        return rows

    return load


HEADS_SCORE = ("traitlens specimens score heads --model traitlens:specimens-vit --head heads/vit-linear "
               "--head heads/vit-prompt-cam --head heads/vit-intr --data specimens/h12 --out scores/heads-vit")
"""The trained heads of the README side by side on unseen twins (docs/results.md)."""


def _short_method(method: str) -> str:
    """A row of ``score heads`` by a key a value marker can name: grad-cam, finer-cam, own, own-top."""
    if method.startswith("Finer-CAM"):
        return "finer-cam"
    if method.startswith("Grad-CAM"):
        return "grad-cam"
    if method.endswith("(top-ranked head)"):
        return "own-top"
    return method if method in ("chance", "oracle (ceiling)") else "own"


def _heads_vit(workspace: Workspace) -> dict[str, Any]:
    """``score heads`` of the README's heads, by head: accuracy, and per map localization and faithfulness."""
    workspace.run(HEADS_SCORE)
    scores = workspace.json("scores/heads-vit/heads.json")
    maps: dict[str, dict[str, dict[str, Any]]] = {}
    for part in ("localization", "faithfulness"):
        for row in scores[part]:
            maps.setdefault(row["head"], {}).setdefault(_short_method(row["method"]), {})[part] = row
    return {"accuracy": {row["head"]: row for row in scores["accuracy"]}, "maps": maps}


FINETUNE_SCORE = ("traitlens specimens score finetune --model traitlens:specimens-vit --data specimens/p41/images "
                  "--test-data specimens/p42/images --classes sp00,sp01,sp02,sp03,sp04,sp05,sp06,sp07 "
                  "--methods linear,full,bitfit,vpt-shallow,vpt-deep,lora,adapter --out scores/finetune-vit")
"""Every fine-tuning method at 4, 16 and 64 images per class, with calibration (docs/results.md)."""


def _finetune_vit(workspace: Workspace) -> dict[str, Any]:
    """``score finetune`` of the README's protocol, by method and images per class (``lora-16``)."""
    workspace.run(FINETUNE_SCORE)
    return {f"{row['method']}-{row['n_per_class']}": row for row in workspace.json("scores/finetune-vit/finetune.json")["rows"]}


SEGMENTERS = {"vit": ZOO["vit"], "vit-mean": ZOO["vit-mean"], "cnn": ZOO["cnn"], "mobilenet": "mobilenet_v2"}
"""The backbones one-shot segmentation is scored on: the zoo (every layer) and the pretrained ImageNet
MobileNetV2 (its default layer), by the short name of their score folder."""


def segmentation_command(short: str) -> str:
    model = f"torchvision:{SEGMENTERS[short]}" if short == "mobilenet" else f"traitlens:{SEGMENTERS[short]}"
    layers = "" if short == "mobilenet" else " --layers all"
    return (f"traitlens specimens score segmentation --model {model} --support-data specimens/g71 --data specimens/g72"
            f"{layers} --out scores/segmentation-{short}")


def _segmentation(short: str) -> Callable[[Workspace], Any]:
    """``score segmentation`` of one backbone: its runs by ``layer-n_support`` (``default-1``: the
    segment default layer with one labelled specimen per species)."""
    def load(workspace: Workspace) -> dict[str, Any]:
        workspace.run(segmentation_command(short))
        runs = workspace.json(f"scores/segmentation-{short}/segmentation.json")["runs"]
        by_setting = {f"{run['layer']}-{run['n_support']}": run for run in runs}
        return {**by_setting, **{f"default-{run['n_support']}": run for run in runs if run["layer"] == _default_layer(short)}}

    return load


@functools.cache
def _default_layer(short: str) -> str:
    from traitlens.backbones import load_backbone
    from traitlens.segment.backends.features import default_segment_layer

    model = f"torchvision:{SEGMENTERS[short]}" if short == "mobilenet" else f"traitlens:{SEGMENTERS[short]}"
    return default_segment_layer(load_backbone(model))


SOURCES: dict[str, Callable[[Workspace], Any]] = {
    **{f"segmentation-{short}": _segmentation(short) for short in SEGMENTERS},
    **{f"zoo-{short}": _model_facts(model_directory(name)) for short, name in ZOO.items()},
    **{f"report-{short}": _report(short) for short in ZOO},
    **{f"sae-convergence-{short}": _sae_convergence(short) for short in ZOO},
    **{f"suppression-{short}": _suppression_counts(short) for short in ZOO},
    "code": _code,
    "model": _model,
    **{demo_source(layer): _demo(layer) for layer in DEMO_LAYERS},
    "demo-model": _model_facts(DEMO_DIRECTORY),
    "demo-sae": _demo_sae,
    "heads-vit": _heads_vit,
    "finetune-vit": _finetune_vit,
    "accuracy-s2026": _accuracy(2026),
    "accuracy-s4242": _accuracy(4242),
    **{f"loc-{prefix}{method}": _localization(method, finer)
       for method in LOCALIZATION_METHODS for finer, prefix in ((False, ""), (True, "finer-"))},
}


def lookup(data: Any, path: str) -> Any:
    """``data`` at ``a/b/key=value/c``: dict keys, list indices, or the one row whose ``key`` is ``value``."""
    for step in path.split("/") if path else ():
        if isinstance(data, dict) and step in data:
            data = data[step]
        elif isinstance(data, list) and step.isdigit() and int(step) < len(data):
            data = data[int(step)]
        elif isinstance(data, list) and "=" in step:
            key, wanted = step.split("=", 1)
            rows = [row for row in data if isinstance(row, dict) and str(row.get(key)) == wanted]
            if len(rows) != 1:
                raise DocsError(f"{len(rows)} rows have {step!r} (in {path!r})")
            data = rows[0]
        else:
            raise DocsError(f"nothing at {step!r} (in {path!r})")
    return data


def value_text(spec: str, workspace: Workspace) -> str:
    path, _, form = spec.partition(" :")
    source, _, inside = path.partition("/")
    try:
        return format(lookup(workspace.source(source), inside), form)
    except (TypeError, ValueError) as error:
        raise DocsError(f"cannot format {spec!r}: {error}") from None


# --- recipes: blocks more than one command's stdout ----------------------------------------------

def fence(text: str, language: str = "") -> str:
    return f"```{language}\n{text}\n```"


def _steer_crest(workspace: Workspace) -> str:
    """README: zero the demo SAE's crest latents on the crested species, command and output."""
    latents = workspace.source("demo")["trait_latents"]["crest"]
    options = [("--model", DEMO_MODEL), ("--sae", "runs/demo/sae"), ("--data", "runs/demo/specimens/images/sp01"),
               ("--target", "sp00"), ("--out", "steer/crest"), *(("--edit", f"{latent}=zero") for latent in latents)]
    printed = workspace.run(("steer", *(token for option in options for token in option)))
    shown = [f"{name} {value}" for name, value in options]
    lines = [" ".join(shown[start:end]) for start, end in ((0, 2), (2, 5), *((at, at + 5) for at in range(5, len(shown), 5)))]
    command = " \\\n    ".join(lines)
    return fence(f"# zero the {len(latents)} crest latents of the demo SAE on the crested species sp01\n"
                 f".venv/bin/traitlens steer {command}\n{printed}", "bash")


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = "|---|" + "---:|" * (len(header) - 1)
    return "\n".join(["| " + " | ".join(header) + " |", align, *("| " + " | ".join(cells) + " |" for cells in rows)])


def _demo_layers(workspace: Workspace) -> str:
    """docs/results.md: the demo's causal test and discovery on every block."""
    rows = []
    for layer in DEMO_LAYERS:
        results = workspace.source(demo_source(layer))
        pooled, patched = lookup(results, "suppression/pair=all"), lookup(results, "patching/pair=all")
        label = f"{layer} (the demo)" if layer == DEMO_LAYER else layer
        rows.append([label, *(f"{pooled[key]:.3f}" for key in ("flip_rate", "flip_rate_top_latent", "flip_rate_random")),
                     f"{patched['flip_rate']:.3f}", f"{patched['flip_rate_random']:.3f}", str(results["sae_wins"])])
    header = ["SAE layer", "flips, trait latents zeroed", "flips, best latent alone", "flips, matched random latents",
              "flips, twin latents patched from the twin", "flips, matched random latents patched",
              f"best-AP traits won by the SAE (of {len(TRAITS)})"]
    return _table(header, rows)


def _localization_s7(workspace: Workspace) -> str:
    """docs/results.md: each method and its Finer-CAM on seed 7, pooled over look-alike images."""
    rows = []
    for method, label in LOCALIZATION_METHODS.items():
        for prefix, shown in (("", label), ("finer-", f"Finer-CAM ({label})")):
            pooled = lookup(workspace.source(f"loc-{prefix}{method}"), "rows/trait=all")
            rows.append([shown, *(f"{pooled[key]:.3f}" for key in ("mass_inside", "pointing_game", "chance", "patch_mass",
                                                                     "patch_ap", "patch_pointing", "patch_pointing_chance")),
                         str(pooled["n_images"])])
    return _table(["method", "mass inside", "pointing game", "chance (mask area)", "patch mass", "patch AP",
                   "patch pointing (±1 patch)", "chance (patch pointing)", "images"], rows)


def _heads_goals(workspace: Workspace) -> str:
    """docs/results.md: issue 16's goals for Prompt-CAM, measured against Finer-CAM and the linear probe."""
    heads = workspace.source("heads-vit")

    def pointing(head: str, method: str) -> float:
        return float(heads["maps"][head][method]["localization"]["patch_pointing"])

    accuracy = {head: row["accuracy"] for head, row in heads["accuracy"].items()}
    top = pointing("vit-prompt-cam", "own-top")
    finer_probe, finer_own = pointing("vit-linear", "finer-cam"), pointing("vit-prompt-cam", "finer-cam")
    gap = 100 * (accuracy["vit-prompt-cam"] - accuracy["vit-linear"])
    return _table(["goal", "measured", "met"], [
        ["Prompt-CAM's top-ranked head points at the distinguishing trait (±1 patch) at least as often as Finer-CAM",
         f"{top:.3f} vs {finer_probe:.3f} (Finer-CAM of the linear probe) and {finer_own:.3f} (of Prompt-CAM's own logits)",
         f"{'yes' if top >= finer_probe else 'no'} / {'yes' if top >= finer_own else 'no'}"],
        ["Prompt-CAM's accuracy within 5 points of the linear probe",
         f"{accuracy['vit-prompt-cam']:.1%} vs {accuracy['vit-linear']:.1%} ({gap:+.1f} points)", "yes" if gap >= -5 else "no"]])


def _finetune_goals(workspace: Workspace) -> str:
    """docs/results.md: issue 17's goals, on every fine-tuning run that lost absent-class accuracy."""
    rows = list(workspace.source("finetune-vit").values())

    def recovery(method: str, after: str, finetuned: str, recovered: str) -> list[str]:
        scored = [row for row in rows if row[after] is not None]
        losing = [row for row in scored if row["absent_after"] < row["absent_base"]]
        kept = [row for row in losing if row[recovered] >= 0.5 and row["finetuned_after"] - row[finetuned] <= 0.02]
        shares = sorted(row[recovered] for row in losing)
        spread = f" (recovered: median {shares[len(shares) // 2]:.0%}, range {shares[0]:.0%} to {shares[-1]:.0%})" if shares else ""
        return [f"calibration by {method} recovers at least half of the absent-class accuracy fine-tuning lost, losing at most "
                "2 points on the fine-tuned classes",
                f"{len(losing)} of {len(scored)} runs lost absent-class accuracy; {len(kept)} of them met both{spread}",
                "n/a" if not losing else ("yes" if len(kept) == len(losing) else "no")]

    slowest = max(row["train_seconds"] for row in rows if row["n_per_class"] == 16)
    return _table(["goal", "measured", "met"], [
        recovery("the average logit gap", "absent_calibrated", "finetuned_calibrated", "recovered"),
        recovery("pseudo cross-validation (16 images per class)", "absent_pcv", "finetuned_pcv", "recovered_pcv"),
        # a timing changes from run to run: said coarsely, so the table stays the same
        ["every method fine-tunes the embedded ViT in at most 10 minutes at 16 images per class",
         "each under a minute" if slowest < 60 else f"the slowest in {slowest / 60:.0f} min", "yes" if slowest <= 600 else "no"]])


def _segmentation_goals(workspace: Workspace) -> str:
    """docs/results.md: issue 18's accuracy goal per backbone, at the default layer with one
    labelled specimen per species, and the best layer beside it."""
    rows = []
    for short in SEGMENTERS:
        runs = workspace.source(f"segmentation-{short}")
        default = runs["default-1"]
        best = max((run for key, run in runs.items() if key.endswith("-1") and not key.startswith("default")
                    and run["mean_iou_large_traits"] is not None), key=lambda run: run["mean_iou_large_traits"], default=None)
        measured = default["mean_iou_large_traits"]
        large = ", ".join(default["large_traits"]) or "none"
        rows.append([f"{default['model']} at {default['layer']}", large, _number(measured),
                     "n/a" if best is None else f"{_number(best['mean_iou_large_traits'])} ({best['layer']})",
                     "n/a (no trait that large)" if measured is None else ("yes" if measured >= 0.6 else "no")])
    return _table(["model, default layer", "traits at least 2 patches large", "mean IoU on them, 1 specimen per species",
                   "best layer", "≥ 0.6"], rows)


def _number(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _zoo(workspace: Workspace) -> str:
    """docs/results.md: the zoo, what each model is and how accurate and reliant it is."""
    rows = []
    for short, name in ZOO.items():
        facts, report = workspace.source(f"zoo-{short}"), workspace.source(f"report-{short}")
        grid = "x".join(str(side) for side in report["localization"]["grid_hw"])
        rows.append([f"`traitlens:{name}`", facts["architecture"].removeprefix("timm:"), grid,
                     f"{facts['n_parameters'] / 1e6:.2f} M / {facts['weights_mb']:.1f} MB",
                     f"{facts['metrics']['val_accuracy']:.1%}", f"{report['accuracy']['accuracy']:.1%}",
                     _number(lookup(report, "reliance/pairs/pair=all/reliance"))])
    return _table(["model", "timm architecture", "grid (CAM layer)", "parameters / weights", "validation accuracy",
                   f"accuracy, twin-safe seed {REPORT_SEED}", "twin reliance"], rows)


def _goals(workspace: Workspace) -> str:
    """docs/results.md: the issue's three goals, measured on each model of the zoo."""
    rows = []
    for short, name in ZOO.items():
        report = workspace.source(f"report-{short}")
        pooled = lookup(report, "suppression/rows/pair=all")
        rows.append([f"`{name}`", f"{report['sae_wins']} of {len(TRAITS)}",
                     f"{_number(report['relied_min_ap'])} / {_number(report['relied_mean_ap'])} ({report['relied_traits']} traits)",
                     *(f"{report['finer_gain'][method]:+.3f}" for method in LOCALIZATION_METHODS.values()),
                     f"{_number(report['suppression_share']['mask_ap'], '.0%')} / {_number(report['suppression_share']['twin'], '.0%')}",
                     f"{_number(pooled['random_mask_ap'], '.1%')} / {_number(pooled['random_twin'], '.1%')}",
                     f"{_number(report['suppression_share']['patch'], '.0%')}", f"{_number(pooled['random_patch'], '.1%')}"])
    return _table(["model", "traits where the best SAE latent beats neuron, PCA and k-means",
                   f"best-latent patch AP on relied traits (reliance ≥ {RELIED}), min / mean",
                   "Finer-CAM − Grad-CAM, Spearman with oracle", "Finer-CAM − LayerCAM, Spearman with oracle",
                   "suppression flips / reliance: mask-AP / twin latents", "matched random flips: mask-AP / twin",
                   "twin latents patched from the twin: flips / reliance", "matched random latents patched: flips"], rows)


def _sae_convergence_table(workspace: Workspace) -> str:
    """docs/results.md: does the report's SAE recipe need more tokens? Held-out fit and discovery per budget."""
    rows = []
    for short, name in ZOO.items():
        for row in workspace.source(f"sae-convergence-{short}"):
            rows.append([f"`{name}`", row["layer"], f"{row['multiple']:g}x ({row['tokens']:,})",
                         f"{row['explained_variance']:.3f}", f"{row['l0']:.1f}", str(row["dead_latents"]),
                         f"{row['sae_wins']} of {len(TRAITS)}", f"{row['mean_best_ap']:.3f}"])
    return _table(["model", "layer", "training tokens (x a report's)", "explained variance, held out", "L0",
                   "dead latents", "traits the SAE wins", "mean best-latent AP"], rows)


def _sae_convergence_commands(workspace: Workspace) -> str:
    """docs/results.md: the commands behind the convergence table, for one model (the others differ by name)."""
    rows = workspace.source("sae-convergence-cnn")
    stores = [sae_store_command("cnn", rows[0]["layer"], seed) for seed in (SAE_TRAIN_SEED, SAE_SCORE_SEED)]
    lines = [*stores, *(command for row in rows for command in row["commands"])]
    return fence("\n".join(f".venv/bin/{line}" for line in lines), "bash")


def _suppression_table(workspace: Workspace) -> str:
    """docs/results.md: flips as a report's edit zeroes more mask-AP latents, beside the twin reliance."""
    rows = []
    for short, name in ZOO.items():
        for row in workspace.source(f"suppression-{short}"):
            rows.append([f"`{name}`", str(row["n_latents"]), str(row["n_eligible"]), f"{row['flip_rate']:.3f}",
                         f"{row['flip_rate_random']:.3f}", f"{row['change_rate']:.3f}", _number(row["reliance"])])
    return _table(["model", "latents zeroed per pair", "images", "look-alike flips", "matched random latents",
                   "any prediction change", "twin reliance"], rows)


def _cli_options(_: Workspace) -> str:
    """docs/cli.md: every command's options, from the parser itself, so the page cannot drift."""
    from traitlens.cli import build_parser
    from traitlens.cli_args import iter_commands, options_of

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    sections = []
    for command, parser in iter_commands(build_parser()):
        rows = []
        for action in options_of(parser):
            if action.nargs == 0:
                takes = ""
            elif action.choices:
                takes = " " + "|".join(str(choice) for choice in action.choices)
            else:
                takes = f" {action.metavar or action.dest.upper()}"
            default = action.default
            if isinstance(default, tuple):
                default = ",".join(str(value) for value in default)
            shown = "" if default is None or default is False or default == "" or action.required else f"`{default}`"
            rows.append([cell(f"`{action.option_strings[0]}{takes}`"), "yes" if action.required else "", shown,
                         cell(action.help or "")])
        renamed = "; ".join(f"`{old}` is now `{new}`" for old, new in getattr(parser, "old_spellings", {}).items())
        lines = [f"### {command}", ""] + ([f"Old spellings still read in this release: {renamed}.", ""] if renamed else [])
        lines += ["| option | required | default | meaning |", "|---|---|---|---|", *("| " + " | ".join(row) + " |" for row in rows)]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


RECIPES: dict[str, Callable[[Workspace], str]] = {
    "cli-options": _cli_options,
    "zoo": _zoo,
    "goals": _goals,
    "sae-convergence": _sae_convergence_table,
    "sae-convergence-commands": _sae_convergence_commands,
    "suppression-counts": _suppression_table,
    "steer-crest": _steer_crest,
    "demo-layers": _demo_layers,
    "localization-s7": _localization_s7,
    "heads-goals": _heads_goals,
    "finetune-goals": _finetune_goals,
    "segmentation-goals": _segmentation_goals,
}


# --- the docs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Marker:
    where: str
    kind: str
    fast: bool
    spec: str
    body: str
    start: int
    end: int
    """The body's span in the document's text."""
    opens_line: bool
    """Only blanks before it on its line."""


def markers(doc: Path, text: str) -> list[Marker]:
    return [Marker(where(doc, text, match.start()), match.group("kind"), bool(match.group("fast")),
                   match.group("spec"), match.group("body"), match.start("body"), match.end("body"),
                   not text[text.rfind("\n", 0, match.start()) + 1:match.start()].strip())
            for match in MARKER.finditer(text)]


def render(marker: Marker, workspace: Workspace) -> str:
    """The marker's body as the code makes it now."""
    if marker.kind == "value":
        if marker.opens_line:
            raise DocsError("a value that starts a line opens an HTML block in Markdown: move it inside the line")
        return value_text(marker.spec, workspace)
    if marker.kind == "measured":
        command = traitlens_args(marker.spec)
        scripts = [token for token in shlex.split(marker.spec) if token.endswith(".py")]
        if command is not None:
            workspace.run(command)  # its time is reported beside the docs' words
        elif not (scripts and all((REPO / script).is_file() for script in scripts)):
            raise DocsError(f"measured by what? {marker.spec!r} is neither a traitlens command nor an existing script")
        return marker.body
    if marker.spec in RECIPES:
        return f"\n{RECIPES[marker.spec](workspace)}\n"
    if traitlens_args(marker.spec) is None:
        raise DocsError(f"{marker.spec!r} is neither a traitlens command nor a recipe ({', '.join(RECIPES)})")
    return f"\n{fence(workspace.run(marker.spec, marker.fast))}\n"


@dataclass
class Outcome:
    problems: list[str] = dataclasses.field(default_factory=list)
    """What --write cannot mend: command lines that do not parse, commands that fail, bad markers."""
    stale: list[str] = dataclasses.field(default_factory=list)
    """Markers whose content differs from what the code gives now."""
    changed: dict[Path, str] = dataclasses.field(default_factory=dict)
    """New text of every document whose markers now render differently."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """Timings of this run beside the ``measured`` words of the docs, for a person to judge."""
    checked: int = 0
    skipped: int = 0


def regenerate(docs: list[Path], fast: bool, only: Sequence[str] | None = None) -> Outcome:
    """Render every marker of ``docs`` (those whose spec contains one of ``only``, when given) and
    check every command line they show."""
    outcome = Outcome()
    texts = {doc: doc.read_text() for doc in docs}
    lines = [line for doc, text in texts.items() for line in command_lines(doc, text)]
    for line in lines:
        try:
            check_command(line.args)
        except DocsError as error:
            outcome.problems.append(f"{line.where}: {error}")
    every_line = [line for doc in {*default_docs(), *docs} for line in command_lines(doc, doc.read_text())]
    with tempfile.TemporaryDirectory(prefix="traitlens-docs-") as scratch:
        workspace = Workspace(Path(scratch), writers(every_line), allow_slow=not fast)
        for doc, text in texts.items():
            pieces, last = [], 0
            for marker in markers(doc, text):
                try:
                    if only is not None and not any(_selects(text, marker.spec) for text in only):
                        raise SlowWork(marker.spec)
                    body = render(marker, workspace)
                    outcome.checked += 1
                    command = traitlens_args(marker.spec) if marker.kind == "measured" else None
                    if command in workspace.seconds:
                        outcome.notes.append(f"{marker.where}: `{display(command)}` took {workspace.seconds[command]:.0f} s "
                                             f"in this run; the docs say {marker.body!r}")
                except SlowWork:
                    body = marker.body
                    outcome.skipped += 1
                except DocsError as error:
                    body = marker.body
                    outcome.problems.append(f"{marker.where}: {error}")
                except (LookupError, TypeError) as error:  # a result file of another shape than the recipe expects
                    body = marker.body
                    outcome.problems.append(f"{marker.where}: {marker.kind} {marker.spec!r}: unexpected results ({error!r})")
                if body != marker.body:
                    outcome.stale.append(f"{marker.where}: {marker.kind} {marker.spec!r} is stale"
                                            + _difference(marker.body, body))
                pieces += [text[last:marker.start], body]
                last = marker.end
            new_text = "".join([*pieces, text[last:]])
            if new_text != text:
                outcome.changed[doc] = new_text
    return outcome


def _selects(text: str, spec: str) -> bool:
    """``--only TEXT``: a spec containing TEXT, or exactly NAME for ``=NAME`` (the recipe ``goals``,
    not every ``*-goals``)."""
    return spec == text[1:] if text.startswith("=") else text in spec


def _difference(old: str, new: str) -> str:
    if "\n" not in old + new:
        return f": the docs say {old!r}, the code gives {new!r}"
    lines = list(difflib.unified_diff(old.strip("\n").splitlines(), new.strip("\n").splitlines(), "docs", "code", n=0, lineterm=""))
    return "\n    " + "\n    ".join(lines[2:42] + (["..."] if len(lines) > 42 else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 listing what a fresh run would change")
    action.add_argument("--write", action="store_true", help="rewrite the docs with what the code gives")
    action.add_argument("--list", action="store_true", help="every marker and where its content comes from")
    parser.add_argument("--fast", action="store_true", help="only the cheap part (what CI runs)")
    parser.add_argument("--only", metavar="TEXT", action="append",
                        help="only the markers whose command, recipe or source contains TEXT (=NAME: is NAME); repeat for several")
    parser.add_argument("docs", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    docs = [doc.resolve() for doc in args.docs] or default_docs()
    if args.list:
        for doc in docs:
            for marker in markers(doc, doc.read_text()):
                print(f"{marker.where}: {marker.kind}{' (fast)' if marker.fast else ''}: {marker.spec}")
        return 0
    outcome = regenerate(docs, args.fast, args.only)
    if args.write:
        for doc, text in outcome.changed.items():
            atomic_write_bytes(doc, text.encode())
    failures = outcome.problems + ([] if args.write else outcome.stale)
    for line in [*(f"updated {stale}" for stale in outcome.stale if args.write), *outcome.notes, *failures]:
        print(line)
    skipped = (f", {outcome.skipped} skipped (slow ones with --fast, the others with --only)"
               if outcome.skipped else "")
    print(f"{outcome.checked} markers regenerated{skipped}, {len(outcome.stale)} stale; {len(outcome.problems)} problems",
          file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
