"""Caches beside the store entries (teacher logits, calibration tensors, TensorRT engines and
timing caches) are checked against their hash records and rebuilt with a warning."""
import logging
from pathlib import Path

import numpy as np
import pytest

from calibration import hash_record
from calibration.cache import load_or_build
from exporters.tensorrt_export import materialize_engine, trusted_timing_cache
from pipeline import cli
from pipeline.train.teacher_cache import TeacherLogitCache
from store_damage import cfg, flip_byte  # noqa: F401 (cfg: a fixture)


def _teacher(tmp: Path, computed: list) -> np.ndarray:
    from calibration.preprocess import Preprocessing
    pre = Preprocessing(input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, labels=("a", "b"))
    cache = TeacherLogitCache(tmp, log=lambda m: None)

    def compute():
        computed.append(1)
        return np.arange(12, dtype=np.float32).reshape(6, 2)
    return cache.get_or_compute("sha", "data", pre, compute, expected_rows=6)


def _calibration(tmp: Path, computed: list) -> np.ndarray:
    def build():
        computed.append(1)
        return np.ones((2, 3, 4, 4), np.float32)
    return load_or_build(tmp / "calibration", "ab" * 32, build)[0]


def _engine(tmp: Path, computed: list) -> bytes:
    def build(path):
        computed.append(1)
        path.write_bytes(b"serialized-engine" * 10)
    materialize_engine(tmp / "model.engine", tmp / "engines", "k" * 64, build, info={"gpu": "Orin"})
    return (tmp / "model.engine").read_bytes()


def _timing(tmp: Path, computed: list) -> bytes:
    path = tmp / "tensorrt" / "timing.cache"
    if not path.is_file():           # what a build leaves: the serialized cache, recorded
        computed.append(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "t.tmp").write_bytes(b"timings" * 10)
        hash_record.publish(tmp / "t.tmp", path)
    return trusted_timing_cache(path)


CACHE_CASES = [  # id, use the cache (counting builds), its file, the logger that warns, the warning
    ("teacher-logits", _teacher, "cache/teacher-logits/*.npy", "pipeline.train.teacher_cache", "recomputing"),
    ("calibration-tensors", _calibration, "calibration/*.npy", "calibration.cache", "rebuilding it"),
    ("tensorrt-engine", _engine, "engines/*.engine", "runtimes.tensorrt_build", "rebuilding the engine"),
    ("tensorrt-timing-cache", _timing, "tensorrt/timing.cache", "runtimes.tensorrt_build", "starting a new one"),
]


@pytest.mark.parametrize("damage", ["byte-flip", "record-flip", "record-garbled"])
@pytest.mark.parametrize("case", CACHE_CASES, ids=lambda c: c[0])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, case, damage, caplog):
    _, use, pattern, logger_name, words = case
    built: list = []
    first = use(tmp_path, built)
    [path] = tmp_path.glob(pattern)
    assert hash_record.problem(path) is None and len(built) == 1
    assert np.array_equal(use(tmp_path, built), first) and len(built) == 1        # a verified hit
    if damage == "record-garbled":
        hash_record.record_path(path).write_text("{not json")
    else:       # a flip in the record lands in its hex digest
        flip_byte(path if damage == "byte-flip" else hash_record.record_path(path), 0.3)
    with caplog.at_level(logging.WARNING, logger=logger_name):
        again = use(tmp_path, built)
    if case[0] == "tensorrt-timing-cache":             # a damaged timing cache: start afresh
        assert again == b"" and not path.exists()
    else:
        assert len(built) == 2 and np.array_equal(again, first) and hash_record.problem(path) is None
    reason = f"its hash record {path.name}.sha256 is unreadable (damaged)" if damage == "record-garbled" \
        else "sha256 differs from its record (damaged)"
    assert [r.getMessage() for r in caplog.records if r.name == logger_name] == \
        [f"{caplog.records[-1].getMessage().split(': ')[0]}: {reason}; {words}"]
    assert str(path) in caplog.records[-1].getMessage()


def test_verify_reports_damaged_cache_files(cfg, capsys, restore_logging):
    folder = Path(cfg.run.store) / "cache" / "calibration"
    load_or_build(folder, "cd" * 32, lambda: np.zeros((1, 3, 2, 2), np.float32))
    [npy] = folder.glob("*.npy")
    assert cli.main(["verify", "--store", cfg.run.store]) == 0
    flip_byte(npy)
    assert cli.main(["verify", "--store", cfg.run.store]) == 4
    out = capsys.readouterr().out
    assert f"{npy}: sha256 differs from its record (damaged)" in out
    assert "3 entries and 1 cache files checked, 1 damaged" in out


