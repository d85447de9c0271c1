"""Training entry points: every config parses, fit runs, resume is exact, bad input fails before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules.synthetic import generate
from instructseg.lit_module import InstructSegModule, NonFiniteLossError
from instructseg.losses import InstructSegCriterion
from instructseg.train_cli import main

pytestmark = pytest.mark.slow  # trains, launches processes or a browser: the full suite only

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, train=40, val=8, seed=0, size=64, records_per_shard=10)
    return out


def tiny_args(tiny_root: Path, synthetic_dir: Path, run_dir: Path, *extra: str, config: str | None = None) -> list[str]:
    """CLI args for a tiny CPU run on the synthetic shards; ``config`` is composed after the base configs."""
    configs = ["model/tiny.yaml", "data/synthetic.yaml", "trainer/cpu.yaml"] + ([config] if config else [])
    return [
        *(arg for name in configs for arg in ("--config", str(CONFIGS / name))),
        "--model.pretrained_root",
        str(tiny_root),
        "--data.init_args.train",
        json.dumps([{"name": "syn", "urls": f"{synthetic_dir}/train/*.tar"}]),
        "--data.init_args.val",
        json.dumps([{"name": "syn", "urls": f"{synthetic_dir}/val/*.tar"}]),
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.epoch_length",
        "6",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.val_check_interval",
        "null",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.callbacks",
        json.dumps(
            [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run_dir / "ckpt"),
                        "save_last": True,
                        "save_top_k": -1,
                        "every_n_train_steps": 0,
                        "every_n_epochs": 1,
                    },
                }
            ]
        ),
        "--seed_everything",
        "0",
        *extra,
    ]


def trainable_state(module: InstructSegModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.trainable_parameters().items()}


@pytest.mark.parametrize("config", sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")))
def test_every_config_parses_and_instantiates(config, tiny_root, synthetic_dir, tmp_path):
    """Each YAML composes with the tiny model on CPU (GPU-only trainer settings are overridden, not dropped)."""
    args = tiny_args(tiny_root, synthetic_dir, tmp_path, config=config)
    if config == "model/instructseg-phi2.yaml":  # its real values are checked by the test below
        args += [
            "--config",
            str(CONFIGS / "model/tiny.yaml"),
            "--model.frozen_dtype",
            "null",
            "--model.pretrained_root",
            str(tiny_root),
        ]
    if config.startswith("trainer/"):
        args += [
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.precision",
            "32-true",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
        if config in ("trainer/fsdp.yaml", "trainer/deepspeed.yaml", "trainer/ddp.yaml"):
            args += ["--trainer.strategy", "auto"]  # GPU strategies: parsed above, instantiated on the GPU machine
    cli = main(args, run=False)
    assert isinstance(cli.model, InstructSegModule)
    assert type(cli.datamodule).__name__ == "InstructSegDataModule"
    model_config, data = cli.model.model_config, cli.datamodule  # linked from the model, never set twice
    assert (data.mask_size, data.clip_size, data.num_ref_frames) == (
        model_config.mask.image_size,
        model_config.vision.image_size,
        model_config.num_reference_frames,
    )
    assert data.tokenizer is cli.model.tokenizer
    assert data.max_text_tokens == cli.model.model.text_token_budget() > 0


def test_paper_model_config_holds_the_paper_values(tiny_root, synthetic_dir, tmp_path, capsys):
    """The phi2 YAML parsed for real (printed, not instantiated): paper sizes, hub ids, linked data sizes."""
    import yaml

    args = tiny_args(tiny_root, synthetic_dir, tmp_path, config="model/instructseg-phi2.yaml")
    args = [a for a in args if a not in ("--model.pretrained_root", str(tiny_root))]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    config = printed["model"]["config"]
    assert config["name"] == "instructseg-phi2" and config["llm"]["path"] == "microsoft/phi-2"
    assert (
        config["vision"]["siglip_path"] == "google/siglip-so400m-patch14-384" and config["vision"]["image_size"] == 384
    )
    assert config["perceiver"]["num_latents"] == 128 and config["decoder"]["num_queries"] == 100
    assert config["llm"]["gradient_checkpointing"] is True and printed["model"]["frozen_dtype"] == "bfloat16"


def test_print_config_shows_every_model_field(tiny_root, synthetic_dir, tmp_path, capsys):
    import dataclasses

    import yaml

    from instructseg.config import InstructSegConfig

    with pytest.raises(SystemExit):
        main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)["model"]["config"]

    def fields(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield from fields(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]

    for dotted in fields(InstructSegConfig.from_name("tiny")):
        node = config
        for part in dotted.split("."):
            node = node[part]
    assert config["mask"]["image_size"] == 64 and config["name"] == "tiny"


def test_a_data_tokenizer_other_than_the_models_is_an_error(tiny_root, synthetic_dir, tmp_path):
    from instructseg.tiny import build_tiny_tokenizer

    other = tmp_path / "other-tokenizer"
    build_tiny_tokenizer(vocab_size=600).save_pretrained(other)
    cli = main(tiny_args(tiny_root, synthetic_dir, tmp_path / "run", "--trainer.max_steps", "1"), run=False)
    cli.datamodule.tokenizer, cli.datamodule.tokenizer_path = None, str(other)
    with pytest.raises(ValueError, match="differs from the model") as err:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert str(other) in str(err.value) and str(tiny_root / "llm") in str(err.value)
    assert cli.trainer.global_step == 0


def test_fit_smoke_and_exact_resume(tiny_root, synthetic_dir, tmp_path):
    full = main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path / "a", "--trainer.max_steps", "6")])
    assert full.trainer.global_step == 6
    reference = trainable_state(full.model)
    ckpt = tmp_path / "a/ckpt/epoch=0-step=3.ckpt"
    assert ckpt.is_file()

    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert set(stored["state_dict"]) == {f"model.{k}" for k in full.model.model.trainable_parameters()}
    assert stored["model_config"]["name"] == "tiny"

    resumed = main(
        [
            "fit",
            *tiny_args(tiny_root, synthetic_dir, tmp_path / "b", "--trainer.max_steps", "6", "--ckpt_path", str(ckpt)),
        ]
    )
    assert resumed.trainer.global_step == 6
    for name, value in trainable_state(resumed.model).items():
        torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpoint_from_another_preset_is_rejected(tiny_root, synthetic_dir, tmp_path):
    """Loading a checkpoint into a model of another shape fails before any step (the CLI's `--ckpt_path` instead
    rebuilds the model from the checkpoint's own hyper-parameters)."""
    main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path / "a", "--trainer.max_steps", "3")])
    ckpt = tmp_path / "a/ckpt/epoch=0-step=3.ckpt"
    other = main(
        tiny_args(
            tiny_root,
            synthetic_dir,
            tmp_path / "b",
            "--trainer.max_steps",
            "4",
            "--model.config.decoder.num_queries",
            "4",
        ),
        run=False,
    )
    before = trainable_state(other.model)
    with pytest.raises(ValueError, match="another configuration"):
        other.trainer.fit(other.model, datamodule=other.datamodule, ckpt_path=str(ckpt))
    assert other.trainer.global_step == 0
    for name, value in trainable_state(other.model).items():
        assert torch.equal(value, before[name]), name


def test_bad_config_fails_before_training(tiny_root, synthetic_dir, tmp_path):
    with pytest.raises(SystemExit):  # unknown key: jsonargparse error
        main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path, "--model.no_such_key", "1")])
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        main(
            [
                "fit",
                *tiny_args(
                    tiny_root,
                    synthetic_dir,
                    tmp_path,
                    "--data.init_args.train",
                    json.dumps([{"name": "x", "urls": str(tmp_path / "nothing_here/*.tar")}]),
                ),
            ]
        )
    with pytest.raises(FileNotFoundError, match="missing_weights"):
        main(
            [
                "fit",
                *tiny_args(
                    tiny_root, synthetic_dir, tmp_path, "--model.pretrained_root", str(tmp_path / "missing_weights")
                ),
            ]
        )
    cli = main(tiny_args(tiny_root, synthetic_dir, tmp_path), run=False)  # the CLI links sizes; Python users may not
    cli.datamodule.mask_size = 128
    with pytest.raises(ValueError, match="mask_size"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_non_finite_loss_stops_with_context_and_keeps_last_checkpoint(tiny_root, synthetic_dir, tmp_path, monkeypatch):
    main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path, "--trainer.max_steps", "6")])
    last = tmp_path / "ckpt/last.ckpt"
    before = torch.load(last, map_location="cpu", weights_only=True)
    original = InstructSegCriterion.forward

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(InstructSegCriterion, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"global step 6.*batch keys.*loss_class"):
        main(
            [
                "fit",
                *tiny_args(tiny_root, synthetic_dir, tmp_path, "--trainer.max_steps", "12", "--ckpt_path", str(last)),
            ]
        )
    after = torch.load(last, map_location="cpu", weights_only=True)  # still loads: not corrupted
    assert after["global_step"] == before["global_step"] == 6
    for key, value in before["state_dict"].items():
        assert torch.isfinite(after["state_dict"][key]).all() and torch.equal(after["state_dict"][key], value), key


@pytest.mark.slow
def test_ddp_two_processes_see_different_data_and_end_identical(tiny_root, synthetic_dir, tmp_path):
    """`fit` with 2 CPU processes (DDP, gloo): disjoint batches per rank, identical weights at the end."""
    env = dict(
        os.environ,
        PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        DDP_PROBE_DIR=str(tmp_path),
    )
    args = tiny_args(
        tiny_root,
        synthetic_dir,
        tmp_path / "run",
        "--trainer.max_steps",
        "3",
        "--trainer.strategy",
        "ddp_find_unused_parameters_true",
        "--trainer.devices",
        "2",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.callbacks+=ddp_probe.DDPProbe",
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "fit", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"probe-{rank}.json").read_text()) for rank in (0, 1)]
    keys0, keys1 = set(ranks[0]["keys"]), set(ranks[1]["keys"])
    assert keys0 and keys1 and keys0 != keys1
    assert ranks[0]["weights"] == ranks[1]["weights"]


def test_eval_end_to_end_on_a_tiny_checkpoint(tiny_root, synthetic_dir, tmp_path, capsys):
    import csv

    from instructseg.cli import main as cli_main

    main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path / "run", "--trainer.max_steps", "3")])
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(
        json.dumps({"data": {"init_args": {"val": [{"name": "s", "urls": f"{synthetic_dir}/val/*.tar"}]}}})
    )
    out = tmp_path / "eval"
    code = cli_main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "run/ckpt/last.ckpt"),
            "--data",
            str(data_yaml),
            "--out",
            str(out),
            "--overlays",
            "3",
            "--submission",
            "true",
        ]
    )
    assert code == 0
    results = json.loads((out / "metrics.json").read_text())
    assert {"s/res", "s/reasonseg", "s/rvos", "s/reasonvos"} <= set(results)  # one row per dataset and task
    assert 0.0 <= results["s/res"]["cIoU"] <= 1.0 and 0.0 <= results["s/rvos"]["J&F"] <= 1.0
    assert "R" in results["s/reasonvos"]  # no-target queries are scored for robustness
    assert results["s/res"]["queries"] == sum(
        1 for r in csv.DictReader(open(out / "metrics.csv")) if r["task"] == "res"
    )
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == sum(1 for r in rows if r["task"]) and len(rows) >= 8
    video_rows = [r for r in rows if r["task"] in ("rvos", "reasonvos")]
    assert video_rows and all(r["J&F"] != "" for r in video_rows)  # per-expression scores joined to their query
    assert all(r["IoU"] != "" for r in rows if r["task"] in ("res", "reasonseg"))
    assert len(list((out / "overlays").iterdir())) == 3
    pngs = list((out / "submission/Annotations").rglob("*.png"))
    assert pngs and all(p.parent.parent.parent.name == "Annotations" for p in pngs)
    printed = capsys.readouterr().out
    assert (
        "| dataset/task | queries | cIoU | gIoU |" in printed and "| dataset/task | queries | J | F | J&F |" in printed
    )
    assert cli_main(["evaluate", "--model", str(tmp_path / "missing.ckpt"), "--data", str(data_yaml)]) == 2


def test_query_diagnosis_of_a_tiny_checkpoint(tiny_root, synthetic_dir, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_quality import DIAGNOSIS, PROBES, diagnose

    main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path / "run", "--trainer.max_steps", "3")])
    found = diagnose(tmp_path / "run/ckpt/last.ckpt", f"{synthetic_dir}/val/*.tar", batches=2)
    assert set(found) == {*DIAGNOSIS, *PROBES}
    oracle = found["best query (oracle)"]
    assert 0.0 <= found["selected"] <= oracle <= 1.0 and found["top raw score"] <= oracle
    assert all(value <= 1.0 or value != value for value in (found[p] for p in PROBES))  # R² (or nan: few rows)


def test_names_from_data_never_leave_the_output_folder():
    from instructseg.evaluation import safe_name

    for name in ("../../etc/passwd", "/abs/path", "..", "a/../../b", "\\..\\win", ".hidden"):
        cleaned = safe_name(name)
        assert "/" not in cleaned and "\\" not in cleaned and not cleaned.startswith(".") and cleaned not in ("", "..")
    assert safe_name("video_01") == "video_01" and safe_name("") == "_"


@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint_is_exact(tiny_root, synthetic_dir, tmp_path):
    """A run killed after a mid-epoch checkpoint and resumed ends with the weights of an uninterrupted run."""
    every_2_steps = json.dumps(
        [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(tmp_path / "ckpt"),
                    "save_top_k": -1,
                    "every_n_train_steps": 2,
                    "every_n_epochs": 0,
                },
            }
        ]
    )
    long_epoch = [
        "--data.init_args.epoch_length",
        "40",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.callbacks",
        every_2_steps,
        "--trainer.max_steps",
        "7",
    ]
    full = main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path / "a", *long_epoch)])
    assert full.trainer.global_step == 7
    reference = trainable_state(full.model)
    ckpt = tmp_path / "ckpt/epoch=0-step=4.ckpt"  # 20 batches per epoch: step 4 is mid-epoch
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["epoch"] == 0 and stored["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches": 4}
    ]
    resumed = main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path / "b", *long_epoch, "--ckpt_path", str(ckpt))])
    assert resumed.trainer.global_step == 7
    for name, value in trainable_state(resumed.model).items():
        torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=1e-5, msg=name)


def test_every_ablation_variant_is_a_valid_fit_command(tiny_root, synthetic_dir, tmp_path, capsys):
    """benchmarks/binding_ablations.py: each variant's arguments parse on top of the main job's and change what they
    say (a typo in a variant would otherwise fail only after the other runs)."""
    import yaml

    sys.path.insert(0, str(REPO / "benchmarks"))
    from binding_ablations import FIT_CONFIGS, VARIANTS, fit_command

    command = fit_command("v", VARIANTS["main-job"], tiny_root, 7, tmp_path)
    assert command[:2] == ["instructseg", "fit"] and [c for c in command if c.endswith(".yaml")] == [
        f"configs/{name}.yaml" for name in FIT_CONFIGS
    ]
    for name, variant in VARIANTS.items():
        with pytest.raises(SystemExit):
            main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path), *variant.fit_args, "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        for flag, value in zip(variant.fit_args[::2], variant.fit_args[1::2]):
            node = printed
            for part in flag.removeprefix("--").split("."):
                node = node[part]
            expected = yaml.safe_load(value)
            same = node == expected or (isinstance(expected, (int, float)) and float(node) == float(expected))
            assert same and not isinstance(expected, str), (name, flag, node, expected)


@pytest.mark.slow
def test_score_ceiling_of_a_tiny_checkpoint(tiny_root, synthetic_dir, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from score_ceiling import QUERY_FEATURES, TEXT_FEATURES
    from score_ceiling import main as score_ceiling

    main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path / "run", "--trainer.max_steps", "3")])
    glob = f"{synthetic_dir}/%s/*.tar"
    args = ["--checkpoint", str(tmp_path / "run/ckpt/last.ckpt"), "--train-glob", glob % "train"]
    score_ceiling([*args, "--val-glob", glob % "val", "--sizes", "16,32", "--steps", "5"])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| scorer"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[header + 2 :] if line.startswith("|")]
    assert [r[0] for r in rows[:3]] == ["the model's own pick", "a random query", "the best query (oracle)"]
    pairs = [f"{q} x {t}" for q in QUERY_FEATURES for t in TEXT_FEATURES]
    assert [(r[0], r[1]) for r in rows[3:]] == [(p, n) for n in ("16", "32") for p in pairs]
    oracle = float(rows[2][2])
    assert all(float(r[2]) <= oracle + 1e-6 for r in rows)  # nothing picks better than the best query
    with pytest.raises(SystemExit, match="fewer than"):
        score_ceiling([*args, "--val-glob", glob % "val", "--sizes", "100000", "--steps", "1"])
