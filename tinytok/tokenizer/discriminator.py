"""The patch discriminator: VQGAN's adversary, a small network that scores every patch of a
picture, high for a real one and low for a reconstruction.

    picture (N, 3, 32, 32) --conv 4x4/2, leaky ReLU--> (N, C, 16, 16)
                           --conv 4x4/2, leaky ReLU--> (N, 2C, 8, 8)
                           --conv 3x3--------------->  scores (N, 1, 8, 8)

Each score sees a patch of about 18x18 pixels, so it judges texture and edges (what mean
squared error lets blur away), not the layout of the whole picture. There is no
normalization layer: a batch norm would make a picture's score depend on the others in its
batch (and on how the batch is cut into parts), and the hinge loss keeps the scores in range
without one.

It is a model pair like the tokenizer's blocks: parameters in the same flat dict under the
prefix "disc.", discriminator_forward(x, params, config) -> (scores, cache) and
discriminator_backward(dscores, cache, grads, image_grad, dfeatures) -> dx, adding each
parameter's gradient into grads. The cache keeps the two hidden activations (its
features): a loss on them (the tokenizer's feature matching) sends its gradients in
through dfeatures.
"""
from dataclasses import dataclass
from typing import NamedTuple

from tinytok.backend import rng as host_rng, to_device
from tinytok.errors import ConfigError
from tinytok.ops import leaky_relu_backward, leaky_relu_forward
from tinytok.ops.checks import is_finite_number, require_positive_int
from tinytok.tokenizer.vqvae import conv_backward, conv_forward, conv_params

PREFIX = "disc."   # every discriminator parameter's name starts with it


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Sizes of the patch discriminator."""
    channels: int = 64      # C: the first convolution's; the second has 2C
    slope: float = 0.2      # leaky ReLU's slope for negative inputs

    def __post_init__(self):
        require_positive_int("discriminator channels", self.channels)
        if not is_finite_number(self.slope) or not 0 <= self.slope < 1:
            raise ConfigError(f"discriminator slope must be a number in [0, 1), got "
                              f"{self.slope!r}")


def init_discriminator_params(config, seed=0, dtype="float32"):
    """A fresh {"disc.conv1.w": ..., ...} on the active backend (PyTorch's default init)."""
    rng, c = host_rng(seed), config.channels
    p = {}
    p.update(conv_params(rng, PREFIX + "conv1", 3, c, 4))
    p.update(conv_params(rng, PREFIX + "conv2", c, 2 * c, 4))
    p.update(conv_params(rng, PREFIX + "out", 2 * c, 1, 3))
    return {k: to_device(v, dtype=dtype) for k, v in p.items()}


def is_discriminator_param(name):
    return name.startswith(PREFIX)


class DiscriminatorCache(NamedTuple):
    conv1: tuple
    act1: tuple
    conv2: tuple
    act2: tuple
    out: tuple
    features: tuple   # the two hidden activations, (N, C, S/2, S/2) and (N, 2C, S/4, S/4)


def discriminator_forward(x, params, config):
    """x (N, 3, S, S) pictures -> scores (N, 1, S/4, S/4), one per patch. The cache's
    features are what D sees on the way: a learned description of the picture's texture."""
    h1, c_conv1 = conv_forward(x, params, PREFIX + "conv1", stride=2, padding=1)
    h1, c_act1 = leaky_relu_forward(h1, config.slope)
    h2, c_conv2 = conv_forward(h1, params, PREFIX + "conv2", stride=2, padding=1)
    h2, c_act2 = leaky_relu_forward(h2, config.slope)
    scores, c_out = conv_forward(h2, params, PREFIX + "out", padding=1)
    return scores, DiscriminatorCache(c_conv1, c_act1, c_conv2, c_act2, c_out, (h1, h2))


def discriminator_backward(dscores, cache, grads, image_grad=True, dfeatures=None):
    """dscores (N, 1, S/4, S/4) -> dx (N, 3, S, S), or None with image_grad=False; the
    parameters' gradients added into grads.

    Training the discriminator needs only its parameters' gradients; the tokenizer needs
    only the picture's (what D's score says about each pixel), which is the image_grad.
    dfeatures: gradients of a loss on the two features (None, or a pair of arrays or Nones),
    added where the backward passes them; dscores may then be None (a loss on the features
    alone), and the layers above the lowest gradient get none from it."""
    d1, d2 = dfeatures or (None, None)
    if dscores is None and d1 is None and d2 is None:
        raise ConfigError("discriminator_backward needs a gradient: dscores, or dfeatures "
                          "with at least one array")
    dh = None if dscores is None else conv_backward(dscores, cache.out, grads, PREFIX + "out")
    dh = _plus(dh, d2)
    if dh is not None:   # nothing reaches the second feature when only the first has a loss
        dh = leaky_relu_backward(dh, cache.act2)
        dh = conv_backward(dh, cache.conv2, grads, PREFIX + "conv2")
    dh = leaky_relu_backward(_plus(dh, d1), cache.act1)
    return conv_backward(dh, cache.conv1, grads, PREFIX + "conv1", need_dx=image_grad)


def _plus(a, b):
    """a + b where either may be None (no gradient from that side)."""
    return b if a is None else a if b is None else a + b
