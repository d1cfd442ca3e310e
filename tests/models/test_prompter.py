import pytest
import torch

from wsseg_fast.models.prompter import QueryPrompter

SMALL = dict(embed_size=16, d_model=32, nhead=4, dim_feedforward=64, num_encoder_layers=1, num_decoder_layers=1)


def test_shapes_and_config_roundtrip():
    torch.manual_seed(0)
    m = QueryPrompter(5, num_queries=7, **SMALL)
    out = m(torch.randn(3, 256, 16, 16))
    assert out["pred_logits"].shape == (3, 7, 6)
    assert out["pred_prompts"].shape == (3, 7, 2, 256)
    rebuilt = QueryPrompter(**m.config())
    rebuilt.load_state_dict(m.state_dict())
    m.eval(), rebuilt.eval()
    x = torch.randn(2, 256, 16, 16)
    assert torch.equal(m(x)["pred_prompts"], rebuilt(x)["pred_prompts"])


def test_paper_defaults():
    m = QueryPrompter(11)
    cfg = m.config()
    assert (cfg["d_model"], cfg["nhead"], cfg["dim_feedforward"]) == (256, 8, 1024)
    assert (cfg["num_encoder_layers"], cfg["num_decoder_layers"], cfg["num_queries"]) == (6, 6, 25)
    assert m.pos_embed.shape == (1, 16 * 16, 256)  # 64x64 embedding after two stride-2 convs
    tiny = QueryPrompter(11, embed_size=16, stride=1, **{k: v for k, v in SMALL.items() if k != "embed_size"})
    assert tiny.pos_embed.shape == (1, 16 * 16, 32)  # stride 1: tiny's 16x16 grid kept, as the paper's token grid
    assert tiny(torch.randn(1, 256, 16, 16))["pred_logits"].shape == (1, 25, 12)
    assert QueryPrompter(**tiny.config()).pos_embed.shape == tiny.pos_embed.shape


@pytest.mark.parametrize("shape", [(2, 256, 64, 64), (2, 128, 16, 16), (256, 16, 16)])
def test_wrong_embedding_shape_is_one_clear_error(shape):
    m = QueryPrompter(3, **SMALL)
    with pytest.raises(ValueError, match=r"embeddings must be \[B, 256, 16, 16\]"):
        m(torch.randn(*shape))


def test_bad_sizes():
    with pytest.raises(ValueError, match="num_classes"):
        QueryPrompter(0, **SMALL)
    with pytest.raises(ValueError, match="divisible"):
        QueryPrompter(3, embed_size=16, d_model=30, nhead=4)


def test_prompt_stats_standardise_the_head_and_travel_with_the_weights():
    torch.manual_seed(0)
    m = QueryPrompter(3, num_queries=4, **SMALL).eval()
    x = torch.randn(2, 256, 16, 16)
    raw = m(x)["pred_prompts"]  # identity statistics by default
    tokens = torch.randn(10, 2, 256) * 3 + 5
    m.set_prompt_stats(tokens)
    torch.testing.assert_close(m(x)["pred_prompts"], raw * tokens.std(0) + tokens.mean(0))
    rebuilt = QueryPrompter(**m.config()).eval()
    rebuilt.load_state_dict(m.state_dict())  # the statistics are buffers of the checkpoint
    assert torch.equal(rebuilt(x)["pred_prompts"], m(x)["pred_prompts"])
    with pytest.raises(ValueError, match=r"tokens must be \[N >= 2, 2, 256\]"):
        m.set_prompt_stats(torch.randn(10, 3, 256))
