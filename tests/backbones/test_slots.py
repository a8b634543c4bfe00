"""The insertion points: input tokens, residual-space and head-space key/values, masks, causality."""

import math

import torch
import torch.nn.functional as F

from petlbench.backbones.attention import prompt_aware_causal_mask, slot_attention
from petlbench.backbones.clip import build_tiny_clip
from petlbench.backbones.slots import InputTokens, LayerSlots, MaskedKV, MaskedTokens
from petlbench.backbones.vit import build_tiny_vit


def _naive_attention(x, w, b, wo, bo, heads, extra_k=None, extra_v=None, causal=False):
    """Reference attention written out by hand (softmax of scaled scores)."""
    bsz, n, d = x.shape
    hd = d // heads
    q, k, v = F.linear(x, w, b).view(bsz, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    if extra_k is not None:
        k = torch.cat([extra_k.expand(bsz, -1, -1, -1), k], 2)
        v = torch.cat([extra_v.expand(bsz, -1, -1, -1), v], 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if causal:
        n_extra = k.shape[2] - n
        allowed = torch.ones(n, n).tril().bool()
        allowed = torch.cat([torch.ones(n, n_extra, dtype=torch.bool), allowed], 1)
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bsz, n, d)
    return F.linear(out, wo, bo)


def _weights(d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(3 * d, d, generator=g) / 4,
        torch.randn(3 * d, generator=g) / 4,
        torch.randn(d, d, generator=g) / 4,
        torch.randn(d, generator=g) / 4,
    )


def test_head_space_kv_matches_naive_attention_with_causal_extension():
    w, b, wo, bo = _weights()
    x = torch.randn(2, 5, 16)
    pk, pv = torch.randn(4, 3, 4), torch.randn(4, 3, 4)
    slots = LayerSlots(kv_heads=MaskedKV(pk, pv))
    for causal in (False, True):
        got = slot_attention(x, w, b, wo, bo, 4, slots=slots, causal=causal)
        want = _naive_attention(x, w, b, wo, bo, 4, pk.unsqueeze(0), pv.unsqueeze(0), causal=causal)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_residual_kv_tokens_go_through_frozen_norm_and_kv_projection():
    w, b, wo, bo = _weights()
    ln = torch.nn.LayerNorm(16)
    x = torch.randn(2, 5, 16)
    tokens = torch.randn(3, 16)
    got = slot_attention(x, w, b, wo, bo, 4, slots=LayerSlots(kv_residual=MaskedTokens(tokens)), norm=ln)
    kv = F.linear(ln(tokens), w[16:], b[16:]).view(3, 2, 4, 4).permute(1, 2, 0, 3)
    want = _naive_attention(x, w, b, wo, bo, 4, kv[0].unsqueeze(0), kv[1].unsqueeze(0))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.shape == x.shape  # queries unchanged: the stream does not grow


def test_masked_tokens_leave_the_computation():
    """A masked token is dropped, not zeroed: same result as never having it (a zero key would not be)."""
    w, b, wo, bo = _weights()
    x = torch.randn(2, 5, 16)
    pk, pv = torch.randn(4, 3, 4), torch.randn(4, 3, 4)
    mask = torch.tensor([True, False, True])
    masked = slot_attention(x, w, b, wo, bo, 4, slots=LayerSlots(kv_heads=MaskedKV(pk, pv, mask)))
    kept = slot_attention(
        x, w, b, wo, bo, 4, slots=LayerSlots(kv_heads=MaskedKV(pk[:, [0, 2]], pv[:, [0, 2]]))
    )
    torch.testing.assert_close(masked, kept)
    none = slot_attention(
        x, w, b, wo, bo, 4, slots=LayerSlots(kv_heads=MaskedKV(pk, pv, torch.zeros(3, dtype=bool)))
    )
    torch.testing.assert_close(none, slot_attention(x, w, b, wo, bo, 4))


def test_causal_mask_with_prompts_keeps_causality_and_shows_prompts_to_all():
    mask = prompt_aware_causal_mask(3, 2, torch.device("cpu"))
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]
    b = build_tiny_clip("t", seed=0)
    tower = b.tower("text")
    ids = b.tokenize(["a red circle", "a red circle and more words"])
    x = tower.embed(ids[:, :8])
    base, _ = tower.run_blocks(x)
    tower.slots[0].kv_heads = MaskedKV(torch.randn(2, 3, 32), torch.randn(2, 3, 32))
    prompted, _ = tower.run_blocks(x)
    # the first token's output changes: prompt keys are visible to every query ...
    assert not torch.allclose(prompted[:, 0], base[:, 0], atol=1e-4)
    # ... and causality holds: changing a later token does not change earlier positions
    x2 = x.clone()
    x2[:, 5] += 1.0
    prompted2, _ = tower.run_blocks(x2)
    torch.testing.assert_close(prompted2[:, :5], prompted[:, :5])


def _kmnp_deep_vpt(vit, prompts, pixels):
    """Deep VPT as KMnP/vpt writes it, on the raw timm modules."""
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(pixels)))
    p = prompts[0].shape[0]
    x = torch.cat([x[:, :1], prompts[0].expand(x.shape[0], -1, -1), x[:, 1:]], 1)
    for i, blk in enumerate(vit.blocks):
        if i > 0:
            x = torch.cat([x[:, :1], prompts[i].expand(x.shape[0], -1, -1), x[:, 1 + p :]], 1)
        x = blk(x)
    return vit.norm(x)[:, 0]


def test_deep_input_tokens_replace_previous_prompts_like_the_reference():
    b = build_tiny_vit("v", seed=0)
    tower = b.tower("image")
    prompts = [torch.randn(3, 64) for _ in range(tower.depth)]
    for layer, p in enumerate(prompts):
        tower.slots[layer].input_tokens = InputTokens(p, mode="replace")
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        b.encode_image(pixels), _kmnp_deep_vpt(tower.vit, prompts, pixels), atol=1e-5, rtol=0
    )


def test_per_layer_lengths_may_differ_and_keep_mode_accumulates():
    b = build_tiny_vit("v", seed=0)
    tower = b.tower("image")
    tower.slots[0].input_tokens = InputTokens(torch.randn(2, 64), mode="keep")
    tower.slots[1].input_tokens = InputTokens(torch.randn(5, 64), mode="keep")
    tower.slots[0].kv_residual = MaskedTokens(torch.randn(7, 64))
    tower.slots[1].kv_residual = MaskedTokens(torch.randn(1, 64))
    x = tower.vit.norm_pre(tower.vit._pos_embed(tower.vit.patch_embed(torch.randn(2, 3, 32, 32))))
    out, inserted = tower.run_blocks(x)
    assert inserted.after_first == 7 and out.shape == (2, 17 + 7, 64)


def test_end_position_is_refused_on_causal_towers():
    import pytest

    b = build_tiny_clip("t", seed=0)
    tower = b.tower("text")
    tower.slots[0].input_tokens = InputTokens(torch.randn(2, 64), position="end")
    with pytest.raises(ValueError, match="causal"):
        b.encode_text(b.tokenize(["a"]))


def test_additive_bias_padding_scale_and_head_transform_with_prompt_keys():
    """Swin/OFA-style attention: a per-head bias and key padding over the sequence keys only; prompt
    keys get zero bias and stay visible; a custom scale and a per-head output transform apply."""
    w, b, wo, bo = _weights()
    bsz, n, heads, hd = 2, 5, 4, 4
    x = torch.randn(bsz, n, 16)
    pk, pv = torch.randn(heads, 3, hd), torch.randn(heads, 3, hd)
    bias = torch.randn(1, heads, n, n)
    padding = torch.zeros(bsz, n, dtype=torch.bool)
    padding[1, -2:] = True
    head_scale = torch.tensor([0.5, 1.0, 2.0, -1.0]).view(1, heads, 1, 1)
    for causal in (False, True):
        got = slot_attention(
            x,
            w,
            b,
            wo,
            bo,
            heads,
            slots=LayerSlots(kv_heads=MaskedKV(pk, pv)),
            causal=causal,
            attn_bias=bias,
            key_padding_mask=padding,
            scale=0.3,
            head_transform=lambda o: o * head_scale,
        )
        q, k, v = F.linear(x, w, b).view(bsz, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        k = torch.cat([pk.expand(bsz, -1, -1, -1), k], 2)
        v = torch.cat([pv.expand(bsz, -1, -1, -1), v], 2)
        seq = bias.expand(bsz, -1, -1, -1).clone()
        if causal:
            seq = seq.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        seq = seq.masked_fill(padding[:, None, None, :], float("-inf"))
        scores = q @ k.transpose(-1, -2) * 0.3 + torch.cat([torch.zeros(bsz, heads, n, 3), seq], -1)
        out = (scores.softmax(-1) @ v) * head_scale
        want = F.linear(out.transpose(1, 2).reshape(bsz, n, 16), wo, bo)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # The padded keys carry no weight: changing them changes nothing for batch row 1.
        x2 = x.clone()
        x2[1, -2:] += 5.0
        again = slot_attention(
            x2,
            w,
            b,
            wo,
            bo,
            heads,
            slots=LayerSlots(kv_heads=MaskedKV(pk, pv)),
            causal=causal,
            attn_bias=bias,
            key_padding_mask=padding,
            scale=0.3,
            head_transform=lambda o: o * head_scale,
        )
        torch.testing.assert_close(again[1, :3], got[1, :3], atol=1e-5, rtol=1e-5)


def test_per_example_input_tokens_equal_running_each_example_alone():
    """(B, n, d) tokens: example b sees its own set, as if it ran alone with (n, d) tokens[b]."""
    import pytest

    b = build_tiny_vit("v", seed=0)
    tower = b.tower("image")
    pixels = torch.randn(3, 3, 32, 32)
    per_example = torch.randn(3, 4, 64)
    mask = torch.tensor([True, False, True, True])
    tower.slots[0].input_tokens = InputTokens(per_example, mask=mask)
    tower.slots[1].input_tokens = InputTokens(torch.randn(3, 2, 64))
    batched = b.encode_image(pixels)
    deep = tower.slots[1].input_tokens.tokens
    for i in range(3):
        tower.slots[0].input_tokens = InputTokens(per_example[i], mask=mask)
        tower.slots[1].input_tokens = InputTokens(deep[i])
        torch.testing.assert_close(b.encode_image(pixels[i : i + 1])[0], batched[i], atol=1e-5, rtol=1e-5)
    tower.slots[0].input_tokens = InputTokens(per_example)
    with pytest.raises(ValueError, match="3 examples, batch of 2"):
        b.encode_image(pixels[:2])


def test_shared_tokens_are_expanded_as_a_view_unless_dropout_draws_per_example():
    tokens = torch.randn(4, 8)
    for dropout in (None, torch.nn.Dropout(0.0), torch.nn.Dropout(0.5).eval()):
        out = InputTokens(tokens, dropout=dropout).for_batch(5)
        assert out.shape == (5, 4, 8) and out.stride(0) == 0 and torch.equal(out[3], tokens)
    torch.manual_seed(0)
    per_example = InputTokens(tokens, dropout=torch.nn.Dropout(0.5)).for_batch(5)
    assert not torch.equal(per_example[0] == 0, per_example[1] == 0)
    shared = InputTokens(tokens, dropout=torch.nn.Dropout(0.5), per_example_dropout=False).for_batch(5)
    assert shared.stride(0) == 0 and torch.equal(shared[0], shared[4])
    assert InputTokens(tokens, dropout=torch.nn.Dropout(0.5)).active().shape == (4, 8)  # legacy shape


def test_before_norm_tokens_only_at_layer_0_of_the_clip_image_tower():
    import pytest

    clip = build_tiny_clip("t", seed=0)
    image = clip.tower("image")
    pixels = torch.randn(2, 3, 32, 32)
    p = torch.randn(3, 64)
    image.slots[0].input_tokens = InputTokens(p, position="end", before_norm=True)
    got = clip.encode_image(pixels)
    # the same as appending ln_pre(p) after ln_pre: LayerNorm acts per token
    image.slots[0].input_tokens = InputTokens(image.visual.ln_pre(p).detach(), position="end")
    torch.testing.assert_close(clip.encode_image(pixels), got, atol=1e-5, rtol=1e-5)
    image.slots[0].input_tokens = InputTokens(p, position="end", before_norm=True)
    with pytest.raises(ValueError, match="embedding"):
        image.run_blocks(image.embed(pixels))  # the tokens would be lost
    image.clear_slots()
    image.slots[1].input_tokens = InputTokens(p, position="end", before_norm=True)
    with pytest.raises(ValueError, match="layer 1"):
        clip.encode_image(pixels)
    vit = build_tiny_vit("v", seed=0)
    vit.tower("image").slots[0].input_tokens = InputTokens(p, before_norm=True)
    with pytest.raises(ValueError, match="before_norm"):
        vit.encode_image(pixels)
