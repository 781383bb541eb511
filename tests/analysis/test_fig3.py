"""Fig. 3 from a run directory: the trained backbone's attention beside the base backbone's."""

import numpy as np
from support.cli import run as run_command

from sigmma_jax import attention_maps
from sigmma_jax.data import shards


def test_attention_maps_of_a_run_beside_its_base_backbone(tiny_embedding, tmp_path):
    run, _, out = tiny_embedding
    manifest = shards.read_manifest(out / "shards")
    t = max(manifest["tiles"], key=lambda t: t["n_kept"])
    name = f"{t['slide']}_{t['row']}_{t['col']}"
    argv = [f"--run={run}", f"--shards={out / 'shards'}", f"--tiles={name}", f"--out={tmp_path}"]
    assert run_command(attention_maps, argv) == 0
    assert (tmp_path / f"{name}_attention.png").stat().st_size > 10_000
    with np.load(tmp_path / f"{name}_attention.npz") as z:
        maps = {k: z[k] for k in z.files}
    assert set(maps) == {"base", "trained"}
    assert maps["trained"].shape == maps["base"].shape == (2, 2, 2)  # heads, 16 px / 8 px patches
    assert (maps["trained"].sum((1, 2)) <= 1 + 1e-5).all()  # the rest went to the class token
    assert not np.allclose(maps["trained"], maps["base"])  # training moved the backbone
