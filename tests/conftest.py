import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)  # the CLI's default config path is relative to the repository root

# A finetune that takes seconds on 2 CPU cores: frozen backbone, 32 px, one short epoch.
TINY_FINETUNE = [
    "finetune.backbone=efficientnet_lite0", "finetune.input_size=32", "finetune.crop_pct=1.0",
    "finetune.strategy=linear_probe", "finetune.drop_rate=0.0", "finetune.train.epochs=2",
    "finetune.train.batch_size=32", "finetune.train.lr=0.01", "finetune.train.warmup_epochs=0",
    "finetune.train.augment.random_resized_crop=null", "run.threads=1",
]


@pytest.fixture
def restore_logging():
    """Undo what `pipeline.logs.configure` (or a CLI `main()` call) did to the logging tree."""
    import logging
    from pipeline import logs
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    named = {n: logging.getLogger(n).level for n in (*logs.PROJECT, *logs.NOISY)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in named.items():
        logging.getLogger(name).setLevel(lvl)


@pytest.fixture
def stderr_logs(restore_logging):
    """The CLI's logging setup (INFO lines on stderr), undone afterwards, for tests that read a
    library's log lines from captured stderr as a user would see them."""
    from pipeline import logs
    logs.configure(0)


@pytest.fixture
def cli():
    """Build an `edgeship` command line run with this interpreter."""
    return lambda *args: [sys.executable, "-m", "pipeline", *args]


@pytest.fixture
def tiny_args(tmp_path):
    """CLI arguments for a fast finetune into a fresh store."""
    args = []
    for item in TINY_FINETUNE + [f"run.store={tmp_path / 'runs'}"]:
        args += ["--set", item]
    return args
