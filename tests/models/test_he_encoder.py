import jax
import jax.numpy as jnp
import numpy as np

from sigmma_jax.models import he_encoder


def test_multi_crop_geometry():
    img = jnp.arange(2 * 256 * 256 * 3, dtype=jnp.float32).reshape(2, 256, 256, 3)
    crops = he_encoder.multi_crop(img, 64)
    assert crops.shape == (2, 21, 64, 64, 3)
    # Micro crop 5 is grid row 1, column 1; at native size it is the image region itself.
    np.testing.assert_allclose(crops[:, 5], img[:, 64:128, 64:128], rtol=1e-6)
    np.testing.assert_allclose(
        crops[:, 20], jax.image.resize(img, (2, 64, 64, 3), "linear"), rtol=1e-5
    )
    # Meso crop 3 (bottom right), downsampled 2x: on this linear ramp the anti-aliasing filter
    # gives the 2x2 pixel means (away from the border, where the filter is truncated).
    ref = img[:, 128:, 128:].reshape(2, 64, 2, 64, 2, 3).mean((2, 4))
    np.testing.assert_allclose(crops[:, 19, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], rtol=1e-5)
