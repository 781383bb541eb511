"""data.engine = "beam": the DirectRunner with two worker processes writes the same shards, sidecars
and manifest as the local pool, resumes as it does, and says in one line how to install Beam when it
is missing."""

import dataclasses
import importlib.util
import json
import logging
import pathlib
import shutil
import subprocess
import sys
import types

import pytest
from support.configs import REPO, load_config, preprocessing_only, shrink, tiny_config
from support.hest import sample

from sigmma_jax import config_check
from sigmma_jax.data import shards
from sigmma_jax.errors import ConfigError, InputError

needs_beam = pytest.mark.skipif(
    importlib.util.find_spec("apache_beam") is None, reason="needs pip install 'sigmma_jax[beam]'"
)
# Two worker processes, as the brief's cohort runs would have many (multi_threading would share
# one interpreter and hide anything that does not pickle).
DIRECT = (
    "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing "
    "--default_sdk_harness_log_level=WARNING"
)


def _records(directory, manifest) -> list[list[bytes]]:
    """Every record of every shard, in the manifest's order, as bytes."""
    from array_record.python.array_record_module import ArrayRecordReader

    out = []
    for shard in manifest["shards"]:
        reader = ArrayRecordReader(str(directory / shard))
        out.append(reader.read_all())
        reader.close()
    return out


def _sidecars(directory) -> dict:
    return {
        p.name: json.loads(p.read_text())
        for p in directory.glob("*.json")
        if p.name != shards.MANIFEST
    }


def _beam(config, shard_dir):
    c = config.copy_and_resolve_references()
    c.data.update(engine="beam", beam_options=DIRECT, shard_dir=str(shard_dir))
    return c


def _assert_same_shards(local_dir, local, beam_dir, beam) -> None:
    assert beam == dict(local, report=dict(local["report"], seconds=beam["report"]["seconds"]))
    assert _sidecars(beam_dir) == _sidecars(local_dir)
    records = _records(beam_dir, beam)
    assert records == _records(local_dir, local)
    assert sum(map(len, records)) == len(shards.items(beam)) > 0
    assert not (beam_dir / ".beam").exists()  # the staged chunks are gone


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """configs/demo.py's synthetic slide at 1 mm (4 chunks), preprocessed by the local engine:
    (config, workdir, manifest)."""
    root = tmp_path_factory.mktemp("beam_demo")
    c = preprocessing_only(shrink(load_config("demo")))
    c.data.synthetic.update(size_um=1024.0, n_genes=40, dir=str(root / "slide"))
    c.data.split.block_tiles = 2
    c.data.shard_dir = str(root / "local")
    return c, root, shards.preprocess(c, root)


@needs_beam
def test_beam_writes_the_demo_slides_shards_as_the_local_pool_does(demo):
    config, root, local = demo
    assert len(local["shards"]) == 4
    beam = shards.preprocess(_beam(config, root / "beam"), root)
    _assert_same_shards(root / "local", local, root / "beam", beam)


@needs_beam
def test_beam_writes_two_hest_samples_shards_as_the_local_pool_does(tmp_path):
    sample(tmp_path, "TENX1", seed=1, n_genes=12)
    sample(tmp_path, "TENX2", seed=2, n_genes=10)
    c = preprocessing_only(tiny_config(tmp_path / "local"))
    c.data.update(source="hest", hest_dir=str(tmp_path / "hest"), sample_ids=("TENX1", "TENX2"))
    local = shards.preprocess(c, tmp_path)
    beam = shards.preprocess(_beam(c, tmp_path / "beam"), tmp_path)
    assert {t["slide"] for t in beam["tiles"]} == {"TENX1", "TENX2"}
    _assert_same_shards(tmp_path / "local", local, tmp_path / "beam", beam)


@needs_beam
def test_a_resumed_beam_run_skips_finished_chunks(demo, tmp_path, caplog):
    config, root, local = demo
    resumed = tmp_path / "shards"
    shutil.copytree(root / "local", resumed)  # a run stopped after chunks 0 and 2
    names = sorted(p.stem for p in resumed.glob("*.json") if p.name != shards.MANIFEST)
    for gone in (names[1], names[3], "manifest"):
        (resumed / f"{gone}.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in resumed.glob("[!.]*")}
    caplog.set_level(logging.INFO)
    beam = shards.preprocess(_beam(config, resumed), root)
    assert "preprocessing 2 chunks on Beam" in caplog.text
    after = {p.name: p.stat().st_mtime_ns for p in resumed.glob("[!.]*")}
    for n in (names[0], names[2]):
        assert after[f"{n}.json"] == before[f"{n}.json"]  # untouched
        assert after[f"{n}.array_record"] == before[f"{n}.array_record"]
    for n in (names[1], names[3]):  # written again
        assert f"{n}.json" in after and after[f"{n}.array_record"] != before[f"{n}.array_record"]
    _assert_same_shards(root / "local", local, resumed, beam)


@dataclasses.dataclass
class _Chunk:
    wsi_path: pathlib.Path
    out_dir: pathlib.Path


def _writes_nothing(chunk: _Chunk) -> dict:
    return dict(tiles=[], report={})  # as a worker writing to its own disk would look from here


@needs_beam
def test_workers_that_write_elsewhere_are_named(tmp_path):
    from sigmma_jax.data import beam_pipeline

    kind = types.SimpleNamespace(run_chunk=_writes_nothing, unit="tiles")
    todo = [("a-0000", lambda: _Chunk(tmp_path / "he.tif", tmp_path))]
    with pytest.raises(InputError, match="1 of 1 chunks have no sidecar .* every worker mounts"):
        beam_pipeline.run_chunks(
            todo, kind, tmp_path, "--direct_running_mode=in_memory", 1, lambda side: None
        )


def test_beam_missing_is_one_line_before_any_work(demo, tmp_path, monkeypatch):
    config, root, _ = demo
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` fails
    monkeypatch.delitem(sys.modules, "sigmma_jax.data.beam_pipeline", raising=False)
    with pytest.raises(InputError, match=r"pip install 'sigmma_jax\[beam\]'") as e:
        shards.preprocess(_beam(config, tmp_path / "shards"), root)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "shards").exists()


def test_importing_sigmma_jax_does_not_import_beam():
    code = (
        "import sys, sigmma_jax, sigmma_jax.config_base, sigmma_jax.config_check\n"
        "from sigmma_jax.data import shards, sources, spot_shards\n"
        "assert 'apache_beam' not in sys.modules, 'apache_beam imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize(
    "data,pattern",
    [
        (dict(engine="spark"), r"config.data.engine = 'spark': expected one of 'local', 'beam'"),
        (dict(engine="beam", beam_options="--runner='Direct"), r"must split like shell words"),
        (dict(engine="beam", beam_options="DataflowRunner"), r"must be pipeline options"),
    ],
)
def test_bad_engine_settings_are_refused(data, pattern):
    c = tiny_config()
    c.data.update(data)
    with pytest.raises(ConfigError, match=pattern):
        config_check.validate(c)
