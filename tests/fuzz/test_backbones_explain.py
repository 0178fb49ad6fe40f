"""Bad model specs and bad ``explain`` input (issue 12): one line, exit 2, every file that was
there before left as it was, and no pickled code ever run, whichever route a file comes by."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.backbones.builders import CodeRunningPayload, compact_json, write_hf_config
from tests.fuzz.harness import assert_refused, run_cli
from tests.resume import file_bytes
from traitlens.backbones.spec import registered_providers
from traitlens.output_folder import OWNER_FILE

FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TINY_VIT = "timm:vit_tiny_patch16_224?img_size=32&depth=2&embed_dim=32&num_heads=2&num_classes=3"
# a spec per provider, to hang generated options on (none of them is ever built: parsing refuses)
SPECS = {"timm": "timm:vit_tiny_patch16_224", "open_clip": "open_clip:ViT-B-32", "hf": "hf:facebook/dinov2-small",
         "torchvision": "torchvision:resnet18", "traitlens": "traitlens:specimens-vit"}
# options whose values are counts or sizes, with their spec
NUMERIC_OPTIONS = [("timm", "depth"), ("timm", "num_classes"), ("open_clip", "embed_dim"), ("hf", "num_hidden_layers"),
                   ("torchvision", "num_classes")]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two small images, one of them wide."""
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (48, 32), (200, 30, 30)).save(root / "wide.png")
    Image.new("RGB", (32, 32), (30, 200, 30)).save(root / "square.png")
    return root


def _explain(images: Path, out: Path, *extra: str, model: str = TINY_VIT, random_init: bool = True) -> list[str]:
    return ["explain", "--model", model, *(["--random-init"] if random_init else []), "--data", str(images),
            "--method", "grad-cam", "--out", str(out), *extra]


# --- model specs ---------------------------------------------------------------------------------

_KEYS = st.from_regex(r"[a-z][a-z_]{0,24}", fullmatch=True)


@FUZZ
@given(provider=st.sampled_from(sorted(SPECS)), key=_KEYS)
def test_options_outside_a_providers_allow_list_are_refused(provider: str, key: str, tmp_path: Path) -> None:
    if key in registered_providers()[provider].options:
        key = f"{key}_x"  # a near miss of an allowed name
    assert_refused(["layers", "--model", f"{SPECS[provider]}?{key}=1"], tmp_path, says=f"take no option '{key}'")


_NOT_A_COUNT = st.one_of(
    st.integers(max_value=-1), st.integers(min_value=2**20 + 1), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda value: not float(value).is_integer()),
    st.text(max_size=10), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@FUZZ
@given(option=st.sampled_from(NUMERIC_OPTIONS), value=_NOT_A_COUNT)
def test_counts_and_sizes_of_the_wrong_type_are_refused(option: tuple[str, str], value: Any, tmp_path: Path) -> None:
    provider, key = option
    text = json.dumps(value, separators=(",", ":"))
    assert_refused(["layers", "--model", f"{SPECS[provider]}?{key}={text}"], tmp_path)


@FUZZ
@given(provider=st.text(st.characters(blacklist_characters="\x00:", blacklist_categories=("Cs",)), min_size=1, max_size=12),
       rest=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30))
def test_unknown_providers_and_malformed_specs_are_refused(provider: str, rest: str, tmp_path: Path) -> None:
    if provider in registered_providers():
        provider += "x"
    for spec in (f"{provider}:{rest}", provider, f":{rest}"):
        assert_refused(["layers", "--model", spec], tmp_path, says="model")


@FUZZ
@given(field=st.sampled_from(["hf_model_name", "hf_tokenizer_name", "tokenizer_kwargs", "timm_model_pretrained"]),
       value=st.sampled_from(['"/tmp/x"', "true", "{}"]))
def test_open_clip_tower_fields_that_fetch_weights_or_code_are_refused(field: str, value: str, tmp_path: Path) -> None:
    cfg = "text_cfg" if field.startswith(("hf_", "tokenizer")) else "vision_cfg"
    assert_refused(["layers", "--model", f'open_clip:ViT-B-32?{cfg}={{"{field}":{value}}}'], tmp_path,
                   says=f"has no field '{field}'")


# --- malicious pickles: every route a file can come by ----------------------------------------------


@pytest.fixture
def payload(tmp_path: Path) -> Callable[[Path], Path]:
    """Writes, at a given path, a torch file whose unpickling creates ``tmp_path / "code-ran"``."""

    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": torch.zeros(2), "payload": CodeRunningPayload(tmp_path / "code-ran")}, path)
        return path

    return write


def _open_clip_dir(directory: Path) -> Path:
    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                 "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 1, "layers": 1}}
    directory.mkdir(parents=True)
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return directory


def _custom_code_dir(directory: Path, marker: Path) -> Path:
    """A transformers directory whose config names its own Python code (``auto_map``)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (directory / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return directory


def _traitlens_dir(directory: Path) -> Path:
    shutil.copytree(Path(str(resources.files("traitlens") / "specimens/default_model")), directory)
    return directory


@pytest.mark.parametrize(
    ("route", "says"),
    [
        ("weights file", "cannot read weights file"),
        ("open_clip tag path", "no pretrained tag"),
        ("open_clip tag path, weights_only=false", "no option 'weights_only'"),
        ("timm checkpoint_path", "no option 'checkpoint_path'"),
        ("timm pretrained_cfg_overlay", "no option 'pretrained_cfg_overlay'"),
        ("timm local-dir", "timm has no model"),
        ("open_clip local-dir", "could not load pretrained weights"),
        ("hf directory", "could not load pretrained weights"),
        ("hf custom code", "could not load"),
        ("traitlens directory", "cannot read weights file"),
        ("torchvision cache", "is not torchvision's"),
    ],
)
def test_a_pickle_that_runs_code_is_never_unpickled(route: str, says: str, payload: Callable[[Path], Path], images: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker, evil = tmp_path / "code-ran", tmp_path / "evil.pt"
    payload(evil)
    model, random_init, extra = TINY_VIT, False, []
    if route == "weights file":
        extra = ["--weights", str(evil)]
    elif route.startswith("open_clip tag path"):
        model = f"open_clip:ViT-B-32/{evil}" + ("?weights_only=false" if "weights_only" in route else "")
    elif route == "timm checkpoint_path":
        model = f"{TINY_VIT}&checkpoint_path={evil}"
    elif route == "timm pretrained_cfg_overlay":
        model = f"{TINY_VIT}&pretrained_cfg_overlay={compact_json({'file': str(evil)})}"
    elif route == "timm local-dir":
        model = f"timm:local-dir:{payload(tmp_path / 'timm' / 'pytorch_model.bin').parent}"
    elif route == "open_clip local-dir":
        directory = _open_clip_dir(tmp_path / "clip")
        model = f"open_clip:local-dir:{payload(directory / 'open_clip_pytorch_model.bin').parent}"
    elif route == "hf directory":
        directory = write_hf_config(tmp_path / "hf", "vit_classifier")
        model = f"hf:{payload(directory / 'pytorch_model.bin').parent}"
    elif route == "hf custom code":
        model = f"hf:{_custom_code_dir(tmp_path / 'custom', marker)}"
    elif route == "traitlens directory":
        directory = _traitlens_dir(tmp_path / "model")
        model = f"traitlens:{payload(directory / 'model.safetensors').parent}"
    else:  # a file where torchvision's cache keeps the MobileNetV2 weights, under their name
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setattr(torch.hub, "_hub_dir", None)
        payload(tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
        model = "torchvision:mobilenet_v2"

    assert_refused(_explain(images, tmp_path / "out", *extra, model=model, random_init=random_init),
                   images, *(path for path in tmp_path.iterdir() if path.name != "out"), says=says)
    assert not marker.exists()


def test_layers_builds_the_architecture_only(payload: Callable[[Path], Path], tmp_path: Path) -> None:
    """Listing layers needs no weights: a pretrained tag works offline, and --weights is never read."""
    evil = payload(tmp_path / "evil.pt")

    code, out, err = run_cli(["layers", "--model", "timm:vit_tiny_patch16_224.augreg_in21k?depth=2", "--weights", str(evil)])

    assert code == 0, err
    assert "2 layers" in out and "blocks.1" in out
    assert not (tmp_path / "code-ran").exists()


# --- explain flags -----------------------------------------------------------------------------------

_NOT_FINITE_NON_NEGATIVE = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "", "abc", "1e400", "0x10", "--1"]),
    st.floats(max_value=-1e-12, allow_infinity=True).map(repr),
)
_NOT_POSITIVE_INT = st.one_of(
    st.integers(max_value=0).map(str), st.sampled_from(["1.5", "", "one", "nan", "2e3", "1_0x"]),
    st.floats(allow_nan=True).filter(lambda value: not float(value).is_integer()).map(repr),
)


@FUZZ
@given(flag=st.sampled_from(["--gamma"]), value=_NOT_FINITE_NON_NEGATIVE)
def test_gamma_must_be_finite_and_not_negative(flag: str, value: str, images: Path, tmp_path: Path) -> None:
    assert_refused(_explain(images, tmp_path / "out", "--refs", "auto", f"{flag}={value}"), images, tmp_path, says="--gamma")


@FUZZ
@given(flag=st.sampled_from(["--n-refs", "--batch-size"]), value=_NOT_POSITIVE_INT)
def test_counts_must_be_positive_integers(flag: str, value: str, images: Path, tmp_path: Path) -> None:
    assert_refused(_explain(images, tmp_path / "out", "--refs", "auto", f"{flag}={value}"), images, tmp_path, says=flag)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--fit", "stretch"], "--fit"),
        (["--refs", "auto", "--n-refs", "100"], "100 reference classes asked for, but the head has only 2"),
        (["--n-refs", "2"], "applies only to automatic references"),
        (["--refs", "0", "--n-refs", "1"], "applies only to automatic references"),
    ],
)
def test_flags_that_cannot_be_met_are_refused(extra: list[str], says: str, images: Path, tmp_path: Path) -> None:
    assert_refused(_explain(images, tmp_path / "out", *extra), images, says=says)


# --- explain output folders --------------------------------------------------------------------------


def test_an_unrelated_folder_is_never_touched(images: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text('{"my": "own summary"}')
    (mine / "notes.txt").write_text("keep me")

    assert_refused(_explain(images, mine), mine, says="is not empty and holds no traitlens output")
    assert_refused(_explain(images, mine, "--overwrite"), mine, says="is not empty and holds no traitlens output")


def test_another_commands_output_is_never_touched(images: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / OWNER_FILE).write_text(json.dumps({"format": "traitlens-output", "command": "extract"}))
    (store / "manifest.json").write_text("{}")

    assert_refused(_explain(images, store, "--overwrite"), store, says="holds the output of traitlens extract")


def test_an_earlier_explain_result_is_kept_and_another_job_needs_overwrite(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    code, _, err = run_cli(_explain(images, out))
    assert code == 0, err
    finished = file_bytes(out)
    code, _, err = run_cli(_explain(images, out))  # the same command: the finished maps are kept
    assert code == 0 and file_bytes(out) == finished, err

    assert_refused(_explain(images, out, "--fit", "pad"), out,
                   says="another job (different fit); choose another --out, or pass --overwrite")
    code, _, err = run_cli(_explain(images, out, "--overwrite", "--fit", "pad"))
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["config"]["fit"] == "pad"


@pytest.mark.parametrize("where", ["the file", "inside the file"])
def test_an_out_that_is_or_sits_in_a_file_is_refused(where: str, images: Path, tmp_path: Path) -> None:
    file = tmp_path / "results.txt"
    file.write_text("not a folder")
    out = file if where == "the file" else file / "maps"

    assert_refused(_explain(images, out), tmp_path, says=str(file))
