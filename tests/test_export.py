"""Export (merged LoRA, atomic write, strict reload) and loading of training checkpoints."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from instructseg.checkpoint import load_trainable_weights, load_training_checkpoint
from instructseg.io import ExportFormatError, WeightsMismatchError, safetensors_state
from instructseg.modeling.instructseg import InstructSeg
from instructseg.predictor import InstructSegPredictor


@pytest.fixture(scope="module")
def trained_model(tiny_config) -> InstructSeg:
    """A tiny model whose LoRA B matrices are non-zero, so merging LoRA changes the base weights."""
    torch.manual_seed(0)
    model = InstructSeg.from_config(tiny_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    return model


@pytest.fixture(scope="module")
def export_dir(trained_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "tiny"
    return trained_model.save_pretrained(out, metrics={"cIoU": 0.5, "steps": 10}, training_config={"lr": 4e-5})


def _outputs(model: InstructSeg, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        prediction = model(batch).prediction
    return prediction.mask_logits[-1], prediction.scores[-1]


def _write_ckpt(model: InstructSeg, path, config=None, drop: str | None = None):
    state = {"model." + k: v.detach().clone() for k, v in model.trainable_parameters().items() if k != drop}
    config = config or model.config.to_dict()
    torch.save({"state_dict": state, "model_config": config, "hyper_parameters": {"lr": 4e-5}}, path)
    return path


def test_export_directory_layout(export_dir, trained_model):
    config = json.loads((export_dir / "config.json").read_text())
    assert config["format_version"] == 1 and config["merged_lora"] is True
    assert (config["vision"]["siglip_path"], config["llm"]["path"], config["mask"]["mask2former_path"]) == (
        "siglip",
        "llm",
        "mask2former",
    )
    for name in ("siglip/config.json", "llm/config.json", "llm/tokenizer.json", "mask2former/config.json"):
        assert (export_dir / name).is_file(), name
    weights = load_file(str(export_dir / "model.safetensors"))
    assert any(k.startswith("siglip.tower.") for k in weights) and any(k.startswith("swin.tower.") for k in weights)
    assert not any("lora" in k for k in weights)
    card = (export_dir / "README.md").read_text()
    assert "| cIoU | 0.5000 |" in card and "- lr: `4e-05`" in card and "from_pretrained" in card
    assert not list(export_dir.parent.glob(".*tmp-*"))
    assert any("lora_B" in k for k in trained_model.state_dict()), "the caller's model must keep its LoRA"


def test_reload_matches_the_unmerged_model(export_dir, trained_model, batch_factory):
    batch = batch_factory(trained_model, ["the red square", "the circle moving up"], ["res", "rvos"], [1, 3])
    reloaded = InstructSeg.from_pretrained(export_dir)
    for expected, got in zip(_outputs(trained_model, batch), _outputs(reloaded, batch)):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with trained_model.llm.lm.disable_adapter():  # the test can fail: LoRA changes the outputs
        assert not torch.allclose(_outputs(trained_model, batch)[1], _outputs(reloaded, batch)[1], atol=1e-3)


def test_predictor_from_export_matches_the_model(export_dir, trained_model):
    video = [np.random.default_rng(i).integers(0, 256, (30, 44, 3), dtype=np.uint8) for i in range(4)]
    expected = InstructSegPredictor(trained_model).predict_video(video, "the red square", threshold=0.0)
    got = InstructSegPredictor.from_pretrained(export_dir).predict_video(video, "the red square", threshold=0.0)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
    assert (got.masks != expected.masks).mean() < 1e-3


def test_tampered_weights_list_missing_and_unexpected_keys(export_dir, tmp_path):
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for item in export_dir.iterdir():
        (tampered / item.name).symlink_to(item)
    weights = load_file(str(export_dir / "model.safetensors"))
    weights["extra.weight"] = weights.pop("llm.mask_queries")
    (tampered / "model.safetensors").unlink()
    save_file(weights, str(tampered / "model.safetensors"))
    with pytest.raises(WeightsMismatchError, match="missing") as err:
        InstructSeg.from_pretrained(tampered)
    assert "llm.mask_queries" in str(err.value) and "extra.weight" in str(err.value)


def test_interrupted_export_leaves_nothing_that_loads(trained_model, tmp_path, monkeypatch, export_dir):
    import safetensors.torch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        trained_model.save_pretrained(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    # A crash that skips the clean-up leaves a temp dir without config.json (written last): it never loads.
    partial = tmp_path / "new.tmp-1"
    partial.mkdir()
    (partial / "model.safetensors").symlink_to(export_dir / "model.safetensors")
    with pytest.raises(ExportFormatError, match="not a complete"):
        InstructSeg.from_pretrained(partial)


def test_failed_re_export_keeps_the_previous_export(trained_model, tmp_path, monkeypatch):
    out = trained_model.save_pretrained(tmp_path / "model")
    trained_model.save_pretrained(out, overwrite=True)  # replacing an existing export works
    monkeypatch.setattr("instructseg.modeling.instructseg.model_card", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        trained_model.save_pretrained(out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    InstructSeg.from_pretrained(out)


def test_other_format_version_is_rejected(export_dir, tmp_path):
    other = tmp_path / "v2"
    other.mkdir()
    for item in export_dir.iterdir():
        (other / item.name).symlink_to(item)
    config = json.loads((export_dir / "config.json").read_text())
    (other / "config.json").unlink()
    (other / "config.json").write_text(json.dumps({**config, "format_version": 2}))
    with pytest.raises(ExportFormatError, match="format_version 2"):
        InstructSeg.from_pretrained(other)


def test_training_checkpoint_loads_trainable_weights(trained_model, tmp_path):
    path = _write_ckpt(trained_model, tmp_path / "last.ckpt")
    loaded = load_training_checkpoint(path)
    for name, param in loaded.trainable_parameters().items():
        torch.testing.assert_close(param, trained_model.trainable_parameters()[name], atol=0, rtol=0)
    image = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    got = InstructSegPredictor.from_pretrained(path).predict_image(image, "the red square", threshold=0.0)
    expected = InstructSegPredictor(trained_model).predict_image(image, "the red square", threshold=0.0)
    assert got.score == pytest.approx(expected.score, abs=1e-6) and np.array_equal(got.mask, expected.mask)


def test_lightning_checkpoint_of_the_training_module_loads(tiny_root, tmp_path):
    import lightning as L

    from instructseg.config import InstructSegConfig
    from instructseg.lit_module import InstructSegModule

    torch.manual_seed(0)
    module = InstructSegModule(InstructSegConfig.from_name("tiny"), pretrained_root=str(tiny_root))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = load_training_checkpoint(tmp_path / "last.ckpt")
    for name, param in loaded.trainable_parameters().items():
        torch.testing.assert_close(param, module.model.trainable_parameters()[name], atol=0, rtol=0)


def test_training_checkpoint_mismatches_are_clear(trained_model, tmp_path):
    with pytest.raises(WeightsMismatchError, match="model.llm.mask_queries"):
        load_training_checkpoint(_write_ckpt(trained_model, tmp_path / "a.ckpt", drop="llm.mask_queries"))
    path = _write_ckpt(trained_model, tmp_path / "b.ckpt")
    with pytest.raises(WeightsMismatchError, match="another configuration") as err:
        load_training_checkpoint(path, config_overrides={"decoder": {"num_queries": 4}})
    assert "llm.mask_queries: stored (8, 64) vs model (4, 64)" in str(err.value)
    state = torch.load(path, weights_only=True)["state_dict"]
    other = {**trained_model.config.to_dict(), "name": "instructseg-phi2"}
    with pytest.raises(WeightsMismatchError, match="checkpoint from a different preset"):
        load_trainable_weights(trained_model, state, other)
    (tmp_path / "d.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable training checkpoint") as err:
        load_training_checkpoint(tmp_path / "d.ckpt")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_tied_weights_are_saved_as_separate_tensors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight
    state = safetensors_state(model)
    save_file(state, str(tmp_path / "tied.safetensors"))
    loaded = load_file(str(tmp_path / "tied.safetensors"))
    torch.testing.assert_close(loaded["1.weight"], model[0].weight.detach())


def test_export_never_replaces_a_user_folder_and_needs_overwrite(trained_model, tmp_path):
    user = tmp_path / "my-folder"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an instructseg export"):
        trained_model.save_pretrained(user)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    out = trained_model.save_pretrained(tmp_path / "export")
    with pytest.raises(FileExistsError, match="--overwrite"):
        trained_model.save_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "my-folder"]  # no temporary folder left


def test_export_files_have_normal_permissions(export_dir):
    assert export_dir.stat().st_mode & 0o777 == 0o755
    assert (export_dir / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (export_dir / "llm" / "config.json").stat().st_mode & 0o777 == 0o644


def test_non_finite_weights_are_an_error(export_dir, tmp_path):
    bad = tmp_path / "nan"
    bad.mkdir()
    for item in export_dir.iterdir():
        if item.name != "model.safetensors":
            (bad / item.name).symlink_to(item)
    state = load_file(str(export_dir / "model.safetensors"))
    name = next(k for k in state if k.startswith("mask_decoder"))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(WeightsMismatchError, match="NaN or inf") as err:
        InstructSeg.from_pretrained(bad)
    assert name in str(err.value)


def test_model_card_has_front_matter_and_flat_metrics(trained_model, tmp_path):
    import yaml

    metrics = {"res": {"cIoU": 0.71, "gIoU": 0.75}, "rvos": {"J&F": 0.6}}
    out = trained_model.save_pretrained(tmp_path / "card", metrics=metrics, training_config={"max_steps": 10})
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["library_name"] == "instructseg"
    values = {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert values == {"res/cIoU": 0.71, "res/gIoU": 0.75, "rvos/J&F": 0.6}
    assert "| res/cIoU | 0.7100 |" in card and "{" not in card.split("## Model configuration")[0]
    assert "synthetic shapes" not in card or "synthetic" in front["tags"]
    assert "Intended use and limitations" in card and "- max_steps: `10`" in card
