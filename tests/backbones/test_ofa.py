"""OFA backbone: sizes, checkpoint layout, equivalence with a plain reference forward, decoding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbones.ofa import (
    build_ofa_backbone,
    load_ofa_checkpoint,
    size_config,
    synthetic_released_state,
)
from petlbench.backbones.ofa.checkpoint import map_released_state
from petlbench.backbones.ofa.config import PUBLISHED_PARAMETERS
from petlbench.backbones.ofa.decoding import DecodeConfig, Trie, beam_search, greedy, score_candidates
from petlbench.backbones.ofa.generator import OFAGenerator
from petlbench.backbones.ofa.layers import ResNetStem
from petlbench.backbones.ofa.positions import image_buckets, image_position_ids, text_buckets
from petlbench.backbones.slots import MaskedKV
from petlbench.errors import UserError

VOCAB = 300


@pytest.fixture(scope="module")
def released():
    """A synthetic released-layout checkpoint of the test size with non-trivial values everywhere
    (position tables and head scales included, which a fresh init would leave at 0 / 1)."""
    cfg = size_config("test", vocab_size=VOCAB)
    state = synthetic_released_state(cfg, seed=3)
    gen = torch.Generator().manual_seed(4)
    for key, value in state.items():
        if "rel_pos_table" in key or key.endswith("c_attn"):
            state[key] = value + torch.randn(value.shape, generator=gen) * (0.5 if "c_attn" in key else 0.2)
        elif key.endswith(("layer_norm.weight", "_ln.weight", "layernorm_embedding.weight")):
            state[key] = 1.0 + value
    return cfg, state


@pytest.fixture(scope="module")
def loaded(released):
    cfg, state = released
    backbone = build_ofa_backbone("ofa-test", pretrained=False, vocab_size=VOCAB)
    report = load_ofa_checkpoint(backbone, state)
    return backbone, report


def _inputs(seed: int = 0, batch: int = 2, src_len: int = 7, tgt_len: int = 5):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (batch, src_len), generator=gen)
    src[:, 0] = 0
    src[0, -1] = 2
    src[1, src_len - 3] = 2
    src[1, src_len - 2 :] = 1  # right padding
    pixels = torch.randn(batch, 3, 64, 64, generator=gen)
    prev = torch.randint(4, VOCAB, (batch, tgt_len), generator=gen)
    prev[:, 0] = 0
    return src, pixels, prev


# ----- a straightforward reference forward over the released key layout -------------------------


def _lin(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], 1e-5)


def _attention(x_q, x_kv, sd, name, heads, bias, mask, prefix=None):
    """OFAAttention as released: separate projections, q scaled by (d_head * 2) ** -0.5, additive
    bias and mask, softmax, per-head scale c_attn, output projection. ``prefix`` = (K, V) in front."""
    b, lq, d = x_q.shape
    hd = d // heads
    q = (_lin(x_q, sd, f"{name}.q_proj") * (hd * 2) ** -0.5).view(b, lq, heads, hd).transpose(1, 2)
    k = _lin(x_kv, sd, f"{name}.k_proj").view(b, -1, heads, hd).transpose(1, 2)
    v = _lin(x_kv, sd, f"{name}.v_proj").view(b, -1, heads, hd).transpose(1, 2)
    w = q @ k.transpose(-1, -2) + bias + mask
    if prefix is not None:
        pk, pv = (t.unsqueeze(0).expand(b, -1, -1, -1) for t in prefix)
        w = torch.cat([q @ pk.transpose(-1, -2), w], dim=-1)
        v = torch.cat([pv, v], dim=2)
    out = torch.softmax(w, dim=-1) @ v  # (b, h, lq, hd)
    out = out * sd[f"{name}.c_attn"].view(1, -1, 1, 1)
    return _lin(out.transpose(1, 2).reshape(b, lq, d), sd, f"{name}.out_proj")


def _ffn(x, sd, p):
    return _lin(_ln(F.gelu(_lin(x, sd, f"{p}.fc1")), sd, f"{p}.ffn_layer_norm"), sd, f"{p}.fc2")


def _abs(sd, qn, kn, qpos, kpos, heads):
    d = qpos.shape[-1]
    hd = d // heads
    q = _lin(qpos, sd, qn).view(1, -1, heads, hd).transpose(1, 2) * (hd * 2) ** -0.5
    k = _lin(kpos, sd, kn).view(1, -1, heads, hd).transpose(1, 2)
    return q @ k.transpose(-1, -2)


def reference_forward(sd, cfg, src, pixels, prev, prefixes=None):
    heads, neg = cfg.attention_heads, float("-inf")
    stem = ResNetStem(cfg.resnet_layers, cfg.resnet_width)
    stem.load_state_dict({k[len("encoder.embed_images.") :]: v for k, v in sd.items() if "embed_images" in k})
    stem.eval()
    feats = stem(pixels)
    h, w = feats.shape[-2:]
    img = _lin(feats.flatten(2).transpose(1, 2), sd, "encoder.image_proj")
    emb = sd["encoder.embed_tokens.weight"]
    txt = _ln(emb[src] + sd["encoder.type_embedding.weight"][0], sd, "encoder.layernorm_embedding")
    img = _ln(img + sd["encoder.type_embedding.weight"][1], sd, "encoder.patch_layernorm_embedding")
    x = torch.cat([img, txt], 1)
    n_img, n_txt = img.shape[1], txt.shape[1]
    pad = torch.cat([torch.zeros(src.shape[0], n_img, dtype=torch.bool), src.eq(1)], 1)
    x = x * (~pad).unsqueeze(-1)
    ids = torch.tensor([r * 42 + c + 1 for r in range(h) for c in range(w)])
    pos = torch.cat(
        [
            _ln(sd["encoder.embed_image_positions.weight"][ids], sd, "encoder.image_pos_ln"),
            _ln(sd["encoder.embed_positions.weight"][:n_txt], sd, "encoder.pos_ln"),
        ]
    ).unsqueeze(0)
    abs_bias = _abs(sd, "encoder.pos_q_linear", "encoder.pos_k_linear", pos, pos, heads)
    mask = torch.zeros(pad.shape[0], 1, 1, pad.shape[1]).masked_fill(pad[:, None, None], neg)
    tb = sd["encoder.token_rp_bucket"][:n_txt, :n_txt]
    ib = sd["encoder.image_rp_bucket"][ids][:, ids]
    for i in range(cfg.encoder_layers):
        p = f"encoder.layers.{i}"
        bias = abs_bias.clone()
        bias[:, :, n_img:, n_img:] += sd[f"encoder.token_rel_pos_table_list.{i}.weight"][tb].permute(2, 0, 1)
        bias[:, :, :n_img, :n_img] += sd[f"encoder.image_rel_pos_table_list.{i}.weight"][ib].permute(2, 0, 1)
        pre = prefixes["encoder"][i] if prefixes else None
        hx = _ln(x, sd, f"{p}.self_attn_layer_norm")
        x = x + _ln(
            _attention(hx, hx, sd, f"{p}.self_attn", heads, bias, mask, pre),
            sd,
            f"{p}.self_attn_mid_layer_norm",
        )
        x = x + _ffn(_ln(x, sd, f"{p}.final_layer_norm"), sd, p)
    memory = _ln(x, sd, "encoder.layer_norm")

    t = prev.shape[1]
    y = _ln(emb[prev], sd, "decoder.layernorm_embedding")
    tpos = _ln(sd["decoder.embed_positions.weight"][:t], sd, "decoder.pos_ln").unsqueeze(0)
    self_abs = _abs(sd, "decoder.self_pos_q_linear", "decoder.self_pos_k_linear", tpos, tpos, heads)
    cross = _abs(sd, "decoder.cross_pos_q_linear", "decoder.cross_pos_k_linear", tpos, pos, heads)
    causal = torch.full((t, t), neg).triu(1)
    db = sd["decoder.token_rp_bucket"][:t, :t]
    for i in range(cfg.decoder_layers):
        p = f"decoder.layers.{i}"
        bias = self_abs + sd[f"decoder.token_rel_pos_table_list.{i}.weight"][db].permute(2, 0, 1)
        pre = prefixes["decoder"][i] if prefixes else None
        hy = _ln(y, sd, f"{p}.self_attn_layer_norm")
        y = y + _ln(
            _attention(hy, hy, sd, f"{p}.self_attn", heads, bias, causal, pre),
            sd,
            f"{p}.self_attn_mid_layer_norm",
        )
        hy = _ln(y, sd, f"{p}.cross_attn_layer_norm")
        y = y + _ln(
            _attention(hy, memory, sd, f"{p}.cross_attn", heads, cross, mask),
            sd,
            f"{p}.cross_attn_mid_layer_norm",
        )
        y = y + _ffn(_ln(y, sd, f"{p}.final_layer_norm"), sd, p)
    return _ln(y, sd, "decoder.layer_norm") @ sd["decoder.output_projection.weight"].T


# ----- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "medium", "base", "large", "huge"])
def test_parameter_counts_match_published_sizes(size):
    backbone = build_ofa_backbone(f"ofa-{size}", pretrained=False, device="meta")
    n = backbone.num_parameters()
    assert abs(n / PUBLISHED_PARAMETERS[size] - 1) < 0.05, (size, n)
    assert backbone.kind == "ofa" and backbone.tower_names == ("encoder", "decoder")
    assert not any(p.requires_grad for p in backbone.parameters())


def test_exact_parameter_counts_of_the_paper_sizes():
    base = build_ofa_backbone("ofa-base", pretrained=False, device="meta")
    large = build_ofa_backbone("ofa-large", pretrained=False, device="meta")
    assert base.num_parameters() == 182_238_536
    assert large.num_parameters() == 472_977_152
    # the shared embedding is counted once, though both towers and the output projection use it
    assert base.encoder.embed_tokens is base.decoder.embed_tokens
    assert base.embed_tokens.weight.shape == (59_457, 768)


# ----- checkpoint layout ---------------------------------------------------------------------------


def test_synthetic_released_state_loads_with_no_missing_or_unexpected_keys(released, loaded):
    cfg, state = released
    backbone, report = loaded
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert report.loaded == len(backbone.state_dict())
    # q/k/v go into the fused projection in that order
    fused = backbone.encoder.layers[1].self_attn.in_proj_weight
    d = cfg.d_model
    assert torch.equal(fused[d : 2 * d], state["encoder.layers.1.self_attn.k_proj.weight"])
    assert torch.equal(backbone.embed_tokens.weight, state["decoder.output_projection.weight"])


@pytest.mark.parametrize("size", ["base", "large"])
def test_released_layout_of_real_sizes_maps_onto_ours_exactly(size):
    cfg = size_config(size)
    state = synthetic_released_state(cfg, device="meta")
    own = build_ofa_backbone(f"ofa-{size}", pretrained=False, device="meta").state_dict()
    mapped, report = map_released_state(state, own, cfg)
    assert report.ok, report.summary()
    assert set(mapped) == set(own)
    assert "encoder.layers.0.self_attn.q_proj.weight" in state and "decoder.image_position_idx" in state


def test_strict_loading_names_missing_and_unexpected_keys(released):
    cfg, state = released
    broken = dict(state)
    del broken["decoder.layers.0.fc1.bias"]
    broken["encoder.surprise"] = torch.zeros(1)
    backbone = build_ofa_backbone("ofa-test", pretrained=False, vocab_size=VOCAB)
    with pytest.raises(
        UserError, match=r"missing.*decoder\.layers\.0\.fc1\.bias.*unexpected.*encoder\.surprise"
    ):
        load_ofa_checkpoint(backbone, broken)


def test_pretrained_offline_without_checkpoint_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PETLBENCH_OFA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match=r"OFA-Sys/ofa-base.*not available offline"):
        build_ofa_backbone("ofa-base", pretrained=True)


# ----- equivalence ------------------------------------------------------------------------------


def test_towers_equal_the_reference_forward(released, loaded):
    cfg, state = released
    backbone, _ = loaded
    src, pixels, prev = _inputs()
    with torch.no_grad():
        ours = backbone(src, pixels, prev)
        ref = reference_forward(state, cfg, src, pixels, prev)
    assert ours.shape == (2, prev.shape[1], VOCAB)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_empty_and_zero_length_slots_leave_outputs_unchanged(loaded):
    backbone, _ = loaded
    src, pixels, prev = _inputs(1)
    with torch.no_grad():
        clean = backbone(src, pixels, prev)
        h = backbone.ofa_config.attention_heads
        for tower in (backbone.encoder, backbone.decoder):
            for s in tower.slots:
                s.kv_heads = MaskedKV(torch.zeros(h, 0, tower.head_dim), torch.zeros(h, 0, tower.head_dim))
        prompted = backbone(src, pixels, prev)
    for tower in (backbone.encoder, backbone.decoder):
        tower.clear_slots()
    torch.testing.assert_close(prompted, clean, atol=1e-5, rtol=1e-5)


def test_prefixes_act_as_in_ofa_prompt_tuning(released, loaded):
    """Keys/values in front of every self-attention (encoder and decoder), none in cross-attention,
    no position bias on them: matches the reference with the same prefixes."""
    cfg, state = released
    backbone, _ = loaded
    src, pixels, prev = _inputs(2)
    gen = torch.Generator().manual_seed(9)
    h, hd = cfg.attention_heads, cfg.head_dim
    prefixes = {
        t: [(torch.randn(h, 3, hd, generator=gen), torch.randn(h, 3, hd, generator=gen)) for _ in range(2)]
        for t in ("encoder", "decoder")
    }
    for name, tower in backbone.towers.items():
        for s, (k, v) in zip(tower.slots, prefixes[name], strict=True):
            s.kv_heads = MaskedKV(k, v)
    try:
        with torch.no_grad():
            ours = backbone(src, pixels, prev)
    finally:
        for tower in backbone.towers.values():
            tower.clear_slots()
    ref = reference_forward(state, cfg, src, pixels, prev, prefixes)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_text_buckets_are_ofa_log_buckets():
    b = text_buckets(1024, 256, 1024)
    assert b.shape == (1024, 1024) and int(b.min()) == 0 and int(b.max()) == 510
    assert int(b[5, 5]) == 255 and int(b[5, 3]) == 257 and int(b[3, 5]) == 253
    assert int(b[300, 0]) == int(b[301, 0]) - 1 or int(b[300, 0]) == int(b[301, 0])  # log region merges


def test_image_buckets_are_2d_offsets():
    ids = image_position_ids(3, 4, 42)
    assert ids.tolist()[:5] == [1, 2, 3, 4, 43]
    b = image_buckets(3, 4, 42)
    span = 83
    assert int(b[0, 0]) == 41 * span + 41
    assert int(b[5, 0]) == (1 + 41) * span + (1 + 41)  # cell (1, 1) vs (0, 0)


# ----- decoding -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator(loaded):
    backbone, _ = loaded
    return OFAGenerator(backbone).eval()


def test_beam_size_one_equals_greedy(generator):
    src, pixels, _ = _inputs(3, batch=3)
    pixels = pixels.sigmoid()
    with torch.no_grad():
        memory = generator.encode(src, pixels)
    vocab = generator.vocab
    for cfg in (
        DecodeConfig(beam=1, max_len=6, min_len=2),
        DecodeConfig(beam=1, max_len=5, no_repeat_ngram_size=2),
    ):
        g = greedy(generator.logits, memory, 3, vocab, cfg)
        b = beam_search(generator.logits, memory, 3, vocab, cfg)
        assert g == b
        assert all(cfg.min_len <= len(s) <= cfg.max_len for s in g)


def test_beam_search_respects_lengths_and_ngram_blocking(generator):
    src, pixels, _ = _inputs(4, batch=2)
    with torch.no_grad():
        memory = generator.encode(src, pixels.sigmoid())
    out = beam_search(
        generator.logits,
        memory,
        2,
        generator.vocab,
        DecodeConfig(beam=4, max_len=8, min_len=3, no_repeat_ngram_size=2),
    )
    for seq in out:
        assert 3 <= len(seq) <= 8
        pairs = list(zip(seq, seq[1:], strict=False))
        assert len(pairs) == len(set(pairs))
        assert generator.vocab.pad not in seq and generator.vocab.bos not in seq


def test_constrained_decoding_only_emits_candidates(generator):
    candidates = [[10, 11], [10, 12, 13], [14], [15, 16, 17, 18]]
    trie = Trie(candidates, eos=generator.vocab.eos)
    for seed in range(3):
        src, pixels, _ = _inputs(10 + seed, batch=4)
        with torch.no_grad():
            memory = generator.encode(src, pixels.sigmoid())
        for beam in (1, 3):
            out = generator.generate(memory, DecodeConfig(beam=beam, max_len=2, min_len=1), trie=trie)
            assert all(seq in candidates for seq in out), out


def test_allcand_scores_are_candidate_log_likelihoods(generator):
    candidates = [[10, 11], [10, 12, 13], [14]]
    src, pixels, _ = _inputs(5, batch=2)
    with torch.no_grad():
        memory = generator.encode(src, pixels.sigmoid())
        scores = score_candidates(generator.logits, memory, candidates, generator.vocab)
        eos = generator.vocab.eos
        for b in range(2):
            for c, cand in enumerate(candidates):
                prev = torch.tensor([[0, *cand]])
                lp = generator.logits(prev, memory.select(torch.tensor([b]))).log_softmax(-1)[0]
                expected = sum(float(lp[t, tok]) for t, tok in enumerate([*cand, eos]))
                assert math.isclose(float(scores[b, c]), expected, abs_tol=1e-4)
        trie_scores = score_candidates(
            generator.logits, memory, candidates, generator.vocab, trie=Trie(candidates, eos)
        )
    # renormalised over the allowed tokens: the candidates' probabilities sum to one
    torch.testing.assert_close(trie_scores.exp().sum(dim=1), torch.ones(2), atol=1e-5, rtol=0)


def test_pretrained_loading_from_a_released_folder(monkeypatch, tmp_path, released):
    """The offline path end to end (config.json check, pytorch_model.bin, meta build + assign),
    on a tiny stand-in for ofa-tiny so the test stays fast."""
    import json

    from petlbench.backbones.ofa import config as ofa_config

    cfg, state = released
    monkeypatch.setitem(ofa_config.SIZES, "tiny", cfg)
    released_cfg = {
        "d_model": cfg.d_model,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "vocab_size": VOCAB,
        "encoder_attention_heads": 4,
        "encoder_ffn_dim": 256,
        "resnet_type": cfg.resnet_type,
    }
    (tmp_path / "config.json").write_text(json.dumps(released_cfg))
    torch.save(state, tmp_path / "pytorch_model.bin")
    monkeypatch.setenv("PETLBENCH_OFA_DIR", str(tmp_path))
    backbone = build_ofa_backbone("ofa-tiny", pretrained=True)
    assert backbone.config["checkpoint_dir"] == str(tmp_path)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.encoder.embed_tokens is backbone.decoder.embed_tokens
    src, pixels, prev = _inputs(6)
    with torch.no_grad():
        torch.testing.assert_close(
            backbone(src, pixels, prev),
            reference_forward(state, cfg, src, pixels, prev),
            atol=1e-5,
            rtol=1e-5,
        )
    released_cfg["d_model"] = 32
    (tmp_path / "config.json").write_text(json.dumps(released_cfg))
    with pytest.raises(UserError, match="describes another architecture: d_model=32"):
        build_ofa_backbone("ofa-tiny", pretrained=True)
