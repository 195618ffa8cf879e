"""Model-level behaviour that needs no golden: prompt validation, text handling, stage equivalence."""

import pytest
import torch

from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.model.prompt_encoder import PromptEncoder3D
from SegVolSlicerLib.model.text_encoder import PROMPT_TEMPLATE, load_tokenizer


def test_tokenizer_gives_the_official_ids():
    tokens = load_tokenizer()([PROMPT_TEMPLATE.format("liver")])["input_ids"][0]
    assert tokens == [49406, 320, 11639, 704, 7690, 999, 22399, 539, 320, 12639, 269, 49407]


def test_text_longer_than_clip_positions_is_a_clear_error(synthetic_model):
    with pytest.raises(InputError, match="too long"):
        synthetic_model.encode_text(["left kidney " * 40])


def test_text_embeddings_are_cached_per_string(synthetic_model):
    first = synthetic_model.encode_text(["spleen", "liver"])
    again = synthetic_model.encode_text("liver")
    assert first.shape == (2, 768)
    assert torch.equal(first[1], again[0])
    assert "spleen" in synthetic_model.text_encoder._cache


def test_no_prompt_is_a_clear_error(synthetic_model):
    with pytest.raises(InputError, match="at least one"):
        synthetic_model(torch.zeros(1, 1, 32, 256, 256))
    with pytest.raises(InputError, match="at least one"):
        synthetic_model.decode(torch.zeros(1, 768, 8, 16, 16))


def test_wrong_input_shapes_are_clear_errors(synthetic_model):
    with pytest.raises(InputError, match=r"\(B,1,32,256,256\)"):
        synthetic_model.encode_image(torch.zeros(1, 1, 32, 128, 128))
    embedding = torch.zeros(1, 768, 8, 16, 16)
    with pytest.raises(InputError, match="boxes must be"):
        synthetic_model.decode(embedding, boxes=torch.zeros(1, 4))
    with pytest.raises(InputError, match="points must be"):
        synthetic_model.decode(embedding, points=(torch.zeros(1, 2, 2), torch.ones(1, 2)))


def test_prompt_token_layout():
    encoder = PromptEncoder3D()
    coords, labels = torch.tensor([[[3.0, 40, 50], [5, 60, 70]]]), torch.tensor([[1, 0]])
    box, text = torch.tensor([[[1.0, 2, 3, 10, 20, 30]]]), torch.randn(1, 768)
    sparse, dense = encoder((coords, labels), None, text)
    assert sparse.shape == (1, 4, 768)  # 2 points + padding point + text
    assert torch.equal(sparse[0, 2], encoder.not_a_point_embed.weight[0])  # padding: PE zeroed
    assert torch.equal(sparse[0, 3], text[0])
    sparse, _ = encoder((coords, labels), box, None)
    assert sparse.shape == (1, 4, 768)  # no padding point when a box is given
    assert dense.shape == (1, 768, 8, 16, 16)
    # Integer and float labels give the same tokens; -1 ignores the point whatever its coordinates.
    assert torch.equal(encoder((coords, labels.float()), box, None)[0], sparse)
    ignored = encoder((coords, torch.tensor([[-1, -1]])), None, None)[0]
    assert torch.equal(ignored[0, 0], ignored[0, 1])


def test_point_normalisation_quirk():
    """(d,h,w) is divided by (256, 32, 256): the official SAM (x,y) leftover, kept for the trained weights."""
    pe = PromptEncoder3D().pe_layer
    point = torch.tensor([[[16.0, 128.0, 64.0]]])
    expected = pe._encode(torch.tensor([[[16 / 256, 128 / 32, 64 / 256]]]))
    assert torch.equal(pe.at_voxels(point), expected)
    # Dense PE feeds (H, D, W) cell-centre positions.
    dense = pe.dense()
    cell = pe._encode(torch.tensor([(3 + 0.5) / 16, (2 + 0.5) / 8, (5 + 0.5) / 16]))
    assert torch.allclose(dense[0, :, 2, 3, 5], cell, atol=1e-6)


def test_staged_calls_equal_the_official_call(synthetic_model):
    """forward = encode_image + encode_text + decode; one image embedding serves several prompt sets."""
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(1, 1, 32, 256, 256, generator=generator)
    boxes = torch.tensor([[4.0, 60, 70, 20, 150, 160]])
    full = synthetic_model(image, text=["liver"], boxes=boxes)
    embedding = synthetic_model.encode_image(image)
    staged = synthetic_model.decode(embedding, synthetic_model.encode_text(["liver"]), boxes)
    assert torch.equal(full, staged)
    low_res = synthetic_model.decode(embedding, boxes=torch.cat([boxes, boxes + 2]), upsample=False)
    assert low_res.shape == (2, 1, 32, 64, 64)
    single = synthetic_model.decode(embedding, boxes=boxes + 2, upsample=False)
    assert torch.allclose(low_res[1:], single, atol=1e-4)
