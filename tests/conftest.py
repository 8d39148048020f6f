import os
import subprocess
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
    "finetune.probe_l2=[0.01]",  # the strength the default grid picks for these features, in one fit
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


TINY_CONFIG = "tests/configs/tiny.yaml"

# Under pytest-xdist (`make test` runs two workers) each test file goes to one worker whole, so
# its module-scoped fixtures are built once, and the files sharing a session-wide store go to the
# same worker, so it is built once too.
SHARED_STORES = {"test_pipeline": "tiny_store", "test_targets": "tiny_store",
                 "test_benchmark": "bench_store", "test_check": "bench_store", "test_report": "bench_store"}


# The longest files first, so that no worker is left running one of them alone at the end.
LONGEST_FIRST = ("test_pipeline", "test_targets", "test_finetune", "test_bad_inputs", "test_transfer")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        module = item.module.__name__.rpartition(".")[2]
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)                        # stable: each file keeps its own order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedStoreScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
            return SHARED_STORES.get(module, module)

    config.option.loadscopereorder = False      # keep the order above: the longest files first
    return SharedStoreScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """One whole run of tests/configs/tiny.yaml (about three minutes on 2 cores), shared by every
    test that needs a finished pipeline: tests that change it work on a copy
    (shutil.copytree), and reuse its cached stages."""
    root = tmp_path_factory.mktemp("pipeline")
    store = root / "runs"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "-c", TINY_CONFIG, "--set", f"run.store={store}",
                           "--set", f"check.junit={root / 'junit.xml'}"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return store
