"""The local engine's pure parts: families, native sizes, checkpoints on disk, seeds, preview steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagegate.core.request import EditRequest, Size
from imagegate.engines.local.checkpoints import CheckpointError, locate, read
from imagegate.engines.local.engine import preview_steps, seed_of
from imagegate.engines.local.families import FAMILIES, family_of, native_size, reference_size
from imagegate.errors import BadRequest


@pytest.mark.parametrize(
    ("want", "name", "pixels", "grid", "native"),
    [
        (Size(1024, 1024), "stable-diffusion", 512 * 512, 64, Size(512, 512)),
        (Size(1536, 1024), "stable-diffusion", 512 * 512, 64, Size(640, 448)),
        (Size(256, 256), "stable-diffusion-xl", 1024 * 1024, 64, Size(1024, 1024)),
        (Size(256, 256), "flux-kontext", 1024 * 1024, 16, Size(512, 512)),
        (Size(3840, 2160), "flux-kontext", 1024 * 1024, 16, Size(1360, 768)),
        (Size(4000, 500), "qwen-image-edit-plus", 1024 * 1024, 32, Size(2048, 512)),
    ],
)
def test_the_native_size_keeps_the_aspect_ratio_within_the_models_budget_and_grid(
    want: Size, name: str, pixels: int, grid: int, native: Size
) -> None:
    found = native_size(want, next(f for f in FAMILIES if f.name == name), pixels, grid)
    assert found == native
    assert found.width % grid == 0 and found.height % grid == 0


def test_references_shrink_to_the_budget_and_grow_to_the_smallest_side_a_model_takes() -> None:
    from PIL import Image

    assert reference_size(Image.new("RGB", (4000, 3000)), 1024 * 1024, 16, 0) == Size(1184, 896)
    assert reference_size(Image.new("RGB", (40, 30)), 1024 * 1024, 16, 64) == Size(64, 64)
    assert reference_size(Image.new("RGB", (100, 50)), 1024 * 1024, 16, 0) == Size(112, 64)


def test_every_family_is_found_by_its_pipeline_class() -> None:
    for known in FAMILIES:
        for cls in known.classes:
            assert family_of(cls) is known
    assert family_of("WanPipeline") is None


@pytest.mark.parametrize(
    ("steps", "partials", "after"), [(8, 1, [3]), (8, 3, [1, 3, 5]), (2, 3, [0]), (1, 2, []), (8, 0, [])]
)
def test_previews_are_taken_at_evenly_spaced_steps_before_the_last(steps: int, partials: int, after: list[int]) -> None:
    assert preview_steps(steps, partials) == after


@pytest.mark.parametrize(("raw", "seed"), [(None, None), ("", None), ("42", 42), (7, 7), (3.0, 3), ("0", 0)])
def test_a_seed_is_a_whole_number_from_any_dialect(raw: object, seed: int | None) -> None:
    extra = {} if raw is None else {"seed": raw}
    assert seed_of(EditRequest(prompt="x", extra=extra)) == seed


@pytest.mark.parametrize("raw", ["abc", "-1", 2.5, True, str(2**63), [1]])
def test_a_bad_seed_is_a_400_naming_the_field(raw: object) -> None:
    with pytest.raises(BadRequest) as bad:
        seed_of(EditRequest(prompt="x", extra={"seed": raw}))
    assert bad.value.param == "seed" and "whole number" in bad.value.message


def write_pipeline(root: Path, class_name: str, components: dict[str, dict[str, object]]) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for name, config in components.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    return root


def test_a_checkpoint_is_read_from_its_configs_without_loading_weights(tmp_path: Path) -> None:
    vae = {"block_out_channels": [128, 256, 512, 512], "sample_size": 512}
    unet = {"block_out_channels": [320, 640, 1280, 1280], "sample_size": 64}
    sd = read(write_pipeline(tmp_path / "sd", "StableDiffusionPipeline", {"vae": vae, "unet": unet}))
    assert (sd.family.name, sd.pixels, sd.grid) == ("stable-diffusion", 512 * 512, 64)
    assert "generate" in sd.describe() and "edit" not in sd.describe()
    qwen = read(
        write_pipeline(tmp_path / "q", "QwenImageEditPlusPipeline", {"vae": {"temperal_downsample": [0, 1, 1]}})
    )
    assert (qwen.pixels, qwen.grid) == (1024 * 1024, 32)
    assert qwen.describe().startswith("qwen-image-edit-plus: edit (3 references)")


def test_a_pipeline_the_engine_does_not_run_is_refused_with_the_list_it_runs(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as refused:
        read(write_pipeline(tmp_path / "wan", "WanPipeline", {}))
    assert "WanPipeline" in str(refused.value) and "FluxKontextPipeline" in str(refused.value)


def test_a_model_not_on_disk_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub", reason="the local extra is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as missing:
        locate("someone/no-such-model")
    assert "imagegate models pull someone/no-such-model" in str(missing.value)
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        locate(str(tmp_path))
    with pytest.raises(CheckpointError, match="not a directory"):
        locate(str(tmp_path / "nowhere" / "deep"))
