"""The docs check (scripts/docs.py), fast part: every command line the docs show parses, the cheap
generated blocks and values are what the code gives now, and the mechanism finds what is stale,
what fails and what is misplaced. ``make docs`` regenerates the rest (the demo and its results)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from traitlens.specimens.provider import model_directory

REPO = Path(__file__).resolve().parents[1]


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("traitlens_docs_script", REPO / "scripts" / "docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


docs = _load_script()


def _lines(problems: list[str]) -> list[int]:
    """The line numbers of ``path:line: message`` problems."""
    return [int(problem.split(": ")[0].rsplit(":", 1)[1]) for problem in problems]


def test_the_docs_command_lines_parse_and_their_fast_blocks_and_values_are_current() -> None:
    outcome = docs.regenerate(docs.default_docs(), fast=True)
    assert outcome.problems == []
    assert outcome.stale == [], "run `make docs` (or scripts/docs.py --write --fast) and review the diff"
    assert outcome.checked >= 3 and outcome.skipped > 0


def test_command_lines_that_do_not_parse_are_listed_with_their_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        ".venv/bin/traitlens layers --modell traitlens:specimens-vit\n"
        ".venv/bin/traitlens specimens generate --out s --n many --seed 1\n"
        ".venv/bin/traitlens train ... --bogus 3\n"
        "torchrun --nproc_per_node 2 -m traitlens extract ...   # a synopsis: fine\n"
        ".venv/bin/traitlens specimens generate --out s \\\n"
        "    --n-images 16 --seed 1\n"
        ".venv/bin/traitlens specimens generate --out s \\\n"
        "    --n-images 16 --sed 1\n"
        "```\n"
        "Prose: `traitlens nosuch`, `traitlens specimens score flips`, `traitlens probe --acts DIR [--layer L]`,\n"
        "`traitlens probe --acts DIR [--layr L]`.\n"
    )
    outcome = docs.regenerate([page], fast=True)
    assert _lines(outcome.problems) == [2, 3, 4, 8, 11, 12]
    assert "--modell" in outcome.problems[0] and "--bogus" in outcome.problems[2] and "--layr" in outcome.problems[5]


def test_a_stale_value_is_found_then_rewritten_from_its_source(tmp_path: Path) -> None:
    metrics = json.loads((model_directory("specimens-vit") / "model.json").read_text())["metrics"]
    page = tmp_path / "page.md"
    text = ("Validation accuracy <!-- value: model/metrics/val_accuracy :.1% -->{}<!-- /value --> on\n"
            "the held-out <!-- value: model/metrics/n_val :, -->{}<!-- /value --> images.\n")
    page.write_text(text.format("99.9%", "1"))
    assert docs.main(["--check", str(page)]) == 1
    assert docs.main(["--write", str(page)]) == 0
    assert page.read_text() == text.format(f"{metrics['val_accuracy']:.1%}", f"{metrics['n_val']:,}")
    assert docs.main(["--check", str(page)]) == 0


def test_only_may_be_repeated_and_leaves_every_other_marker_as_it_is(tmp_path: Path) -> None:
    metrics = json.loads((model_directory("specimens-vit") / "model.json").read_text())["metrics"]
    page = tmp_path / "page.md"
    text = ("Accuracy <!-- value: model/metrics/val_accuracy :.1% -->{}<!-- /value -->, <!-- value: model/metrics/n_val :, -->{}"
            "<!-- /value --> images, <!-- value: model/metrics/n_train :, -->{}<!-- /value --> to train.\n")
    page.write_text(text.format("99.9%", "1", "2"))
    assert docs.main(["--write", "--only", "val_accuracy", "--only", "=model/metrics/n_train :,", "--only", "=n_val", str(page)]) == 0
    assert page.read_text() == text.format(f"{metrics['val_accuracy']:.1%}", "1", f"{metrics['n_train']:,}")


def test_lookup_picks_a_row_by_key_and_refuses_what_is_not_one_value() -> None:
    data = {"rows": [{"trait": "crest", "ap": 0.5}, {"trait": "tail", "ap": 0.25}, {"trait": "tail", "ap": 0.1}]}
    assert docs.lookup(data, "rows/trait=crest/ap") == 0.5
    assert docs.lookup(data, "rows/1/ap") == 0.25
    for path in ("rows/trait=tail/ap", "rows/trait=wing/ap", "rows/3", "rows/crest", "nothing"):
        with pytest.raises(docs.DocsError):
            docs.lookup(data, path)


def test_blocks_run_what_their_input_needs_first_and_failures_are_reported(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n.venv/bin/traitlens specimens generate --out tiny --n-images 16 --seed 3\n```\n\n"
        "<!-- generated (fast): traitlens specimens accuracy --model traitlens:specimens-vit --data tiny/images -->\n"
        "```\n```\n<!-- /generated -->\n\n"
        "<!-- generated (fast): traitlens layers --model nosuch:model -->\n```\n```\n<!-- /generated -->\n\n"
        "<!-- generated: traitlens demo --out runs/demo -->\n```\n```\n<!-- /generated -->\n\n"
        "<!-- value: model/metrics/n_val -->0<!-- /value --> opens a line.\n\n"
        # the same job spelled another way is one writer of tiny/, not two
        "Or `traitlens specimens generate --seed 3 --n-images 16 --out tiny`.\n"
    )
    outcome = docs.regenerate([page], fast=True)
    assert outcome.skipped == 1  # the demo is not in the fast part
    assert "on tiny/images: accuracy" in outcome.changed[page] and "over 16 images" in outcome.changed[page]
    assert _lines(outcome.problems) == [10, 20]
    assert "failed (exit 2)" in outcome.problems[0] and "start" in outcome.problems[1]
    assert [path.name for path in tmp_path.iterdir()] == ["page.md"]  # the commands ran in a scratch folder
