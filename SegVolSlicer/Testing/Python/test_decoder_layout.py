"""The decoder's fast paths against the official layout: the token-major upscaling and the cached dense PE.

The mask decoder runs output_upscaling as two matrix products per token (a stride-2, kernel-2 transposed
convolution is one) and never lays out the (B,96,32,64,64) feature volume; the prompt encoder keeps its dense
PE until its Gaussian matrix changes. Both are checked here against the official modules' own computation.
"""

import pytest
import torch

from SegVolSlicerLib.model.image_encoder import EMBEDDING_GRID
from SegVolSlicerLib.model.mask_decoder import MaskDecoder3D
from SegVolSlicerLib.model.prompt_encoder import PromptEncoder3D


def official_upscaled_logits(decoder: MaskDecoder3D, src: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """ConvTranspose3d -> LayerNorm -> GELU -> ConvTranspose3d -> GELU on the (B,768,8,16,16) grid, then each
    direction's dot product with every voxel's 96 features, summed (official mask_decoder.py)."""
    b, _, c = src.shape
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, *EMBEDDING_GRID)).flatten(2)
    masks = sum(directions[:, :, n].unsqueeze(1) @ upscaled for n in range(directions.shape[2]))
    return masks.reshape(b, 1, *(4 * n for n in EMBEDDING_GRID))


def randomised(decoder: MaskDecoder3D, seed: int) -> MaskDecoder3D:
    """Every upscaling tensor random (the LayerNorm's per-voxel affine included, which init leaves flat)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in decoder.output_upscaling.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05 + (parameter.ndim == 4))
    return decoder


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return randomised(MaskDecoder3D().eval(), seed=1)


@pytest.mark.parametrize("batch, directions", [(1, 1), (1, 2), (2, 2)])
def test_token_major_upscaling_is_the_official_layout(decoder, batch, directions):
    """Mistake: a sub-voxel offset or the channel order permuted in the token-major layout (the logits land on
    the wrong voxels: differences of the logits' own size, not float noise)."""
    generator = torch.Generator().manual_seed(batch + directions)
    src = torch.randn(batch, 2048, 768, generator=generator)
    direction = torch.randn(batch, 96, directions, generator=generator)
    with torch.no_grad():
        expected = official_upscaled_logits(decoder, src, direction)
        actual = decoder.project_upscaled(src, direction)
    assert actual.shape == expected.shape == (batch, 1, 32, 64, 64)
    assert expected.abs().max() > 1
    torch.testing.assert_close(actual, expected, atol=2e-4, rtol=1e-5)


def test_layout_weights_follow_a_weight_load(decoder):
    """Mistake: the token-major weights kept from before load_state_dict (the old model's answers)."""
    src = torch.randn(1, 2048, 768, generator=torch.Generator().manual_seed(5))
    direction = torch.randn(1, 96, 1, generator=torch.Generator().manual_seed(6))
    other = randomised(MaskDecoder3D().eval(), seed=2)
    with torch.no_grad():
        before = decoder.project_upscaled(src, direction)
        decoder.load_state_dict(other.state_dict())
        after = decoder.project_upscaled(src, direction)
        expected = official_upscaled_logits(other, src, direction)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=2e-4, rtol=1e-5)


def test_dense_pe_follows_the_gaussian_matrix():
    """Mistake: the cached dense PE kept after the checkpoint's Gaussian matrix was loaded (the model would run
    with the randomly drawn matrix of its construction)."""
    encoder = PromptEncoder3D()
    first = encoder.get_dense_pe()
    assert encoder.get_dense_pe() is first  # computed once
    state = encoder.state_dict()
    state["pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(3, 384)
    encoder.load_state_dict(state)
    assert torch.equal(encoder.get_dense_pe(), encoder.pe_layer.dense())
    assert not torch.equal(encoder.get_dense_pe(), first)
