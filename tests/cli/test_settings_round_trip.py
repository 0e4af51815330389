"""Each stage's settings render the command line that parses back to the same settings.

The sweep prints, the SLURM scripts run and every table records `StageSettings.command()`; parsing that
text with the sub-command's own parser must give back exactly the settings it came from.
"""

import shlex
from pathlib import Path

import pytest
import typer

from mitosis_cli.cli.app import app
from mitosis_cli.cli.clones import clone_settings
from mitosis_cli.cli.ensemble import ensemble_settings
from mitosis_cli.cli.extract import extract_settings
from mitosis_cli.cli.importing import import_settings
from mitosis_cli.cli.report import report_settings
from mitosis_cli.cli.train import train_settings
from mitosis_cli.stages.clones import CloneSettings
from mitosis_cli.stages.ensemble import EnsembleSettings
from mitosis_cli.stages.extract import ExtractSettings
from mitosis_cli.stages.importing import ImportSettings
from mitosis_cli.stages.report import ReportSettings
from mitosis_cli.stages.train import TrainSettings
from mitosis_cli.training.config import TrainConfig

ODD = Path("-dir with 'quotes' and $(touch pwned)")
BUILDERS = {"train": train_settings, "clones": clone_settings, "ensemble": ensemble_settings, "report": report_settings,
            "extract": extract_settings, "import": import_settings}

CASES = [
    TrainSettings(),
    TrainSettings(config=TrainConfig(dataset="cifar10", arch="wrn", width=64, depth=16, ending="relu", epochs=3, batch_size=64,
                                     optimizer="adam", lr=0.01, momentum=0.5, weight_decay=0.0, schedule="constant",
                                     lr_min=1e-4, label_smoothing=0.1, augment=False, seed=7, until_zero_error=True,
                                     max_epochs=9, save_epochs=[0, 2, 3], train_size=100),
                  out=ODD / "run", acts=ODD / "a.h5", data_dir=ODD, download=True, resume=True, force=True, device="cpu",
                  threads=2),
    TrainSettings(config=TrainConfig(augment=True)),
    TrainSettings(config=TrainConfig(width=16, epochs=3), seeds=(0, 1, 2, 3, 7, 9, 10), out=ODD / "w16-s{seed}",
                  acts=ODD / "a.h5"),
    CloneSettings(),
    CloneSettings(inputs=(ODD / "a.h5", Path("b.h5")), out=ODD, sizes=(1, 3, 8), repeats=3, acc_repeats=4, seed=5, rescale=True,
                  r2_threshold=0.95, ii_points=0, ii_k=2, error_inf=0.125, force=True, device="cpu", threads=1),
    CloneSettings(inputs=(Path("a.h5"),), ensemble=ODD / "e.parquet"),
    EnsembleSettings(inputs=(Path("a.h5"), ODD / "b.h5"), out=ODD / "e.parquet", members=(1, 2, 5), repeats=2, seed=3,
                     combine="probs", chunk_sizes=(4, 8), params_per_width=10.5, force=True),
    ReportSettings(tables=(ODD / "t.parquet",), out=ODD / "report", title="A 'quoted' title", force=True),
    ExtractSettings(source=ODD / "run"),
    ExtractSettings(source=Path("run"), out=ODD / "a.h5", epoch=3, splits=("test",), untrained=True, noise_inputs=True,
                    shard=(1, 4), data_dir=ODD, device="cpu", threads=2, force=True),
    ExtractSettings(model="torchvision:resnet50", weights=ODD / "w.pth", images=ODD / "imgs", out=Path("a.h5"), num_classes=10,
                    strict=False, layer="layer4.1", image_size=160, resize=180, mean=(0.5, 0.25, 0.125), std=(0.2, 0.3, 0.1),
                    seed=4, batch_size=16, workers=3, shard=(0, 2), splits=("train",)),
    ExtractSettings(model="module:my.nets:build", weights=Path("w.safetensors"), dataset="cifar10", data_dir=ODD,
                    out=Path("a.h5")),
    ImportSettings(source=ODD / "f.npz"),
    ImportSettings(source=Path("f.pt"), out=ODD / "a.h5", arch="resnet 50", dataset="imagenet-val", seed=0, num_classes=1000,
                   force=True),
]


@pytest.mark.parametrize("settings", CASES, ids=lambda s: f"{s.stage}-{len(s.to_argv())}")
def test_command_parses_back_to_the_same_settings(settings) -> None:
    words = shlex.split(settings.command())
    assert words[:2] == ["mitosis", settings.stage]
    group = typer.main.get_command(app)
    parsed = group.get_command(None, settings.stage).make_context(settings.stage, words[2:])
    assert BUILDERS[settings.stage](parsed.params) == settings
