"""`metacurate export --open-clip` without open_clip installed: the weight mapping, the model config,
the Hugging Face tokenizer it packages (same ids as ours), open_clip's text cleaning in our
tokenizers, and reading an export folder back. tests/images/test_openclip_loader.py loads the
export in open_clip itself."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from curation.errors import InputError
from jobs.commands import export as export_command
from training.checkpoint import load_for_eval, save_checkpoint
from training.model import CLIP, get_config
from training.openclip import (
    from_openclip,
    hf_tokenizer,
    model_config_from_openclip,
    openclip_model_config,
    to_openclip,
)
from training.tokenizer import BPETokenizer, ByteTokenizer, clean_whitespace, tokenizer_from_json

TEXTS = ["a red circle", "Photo of a BLUE square!", "café ✓ naïve — 東京", "don’t   stop &amp; go  ",
         "x" * 60, "", "a <eot> inside"]


def _bpe() -> BPETokenizer:
    return BPETokenizer.train([f"a {c} {s}" for c in ("red", "blue", "café") for s in ("circle", "東京")] * 10,
                              vocab_size=300)


def test_weights_map_both_ways():
    cfg = get_config("micro", vocab_size=300)
    state = CLIP(cfg).state_dict()
    mapped = to_openclip(state)
    assert mapped["visual.proj"].shape == (cfg.vision_width, cfg.embed_dim)
    assert mapped["visual.transformer.resblocks.1.attn.in_proj_weight"] is not None
    assert mapped["transformer.resblocks.0.mlp.c_proj.bias"].shape == (cfg.text_width,)
    back = from_openclip({"module." + k: v for k, v in mapped.items()})
    assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())
    # CustomTextCLIP keeps the text tower under text.: the same weights
    custom = {("text." + k if not k.startswith(("visual.", "logit_scale")) else k): v for k, v in mapped.items()}
    assert all(torch.equal(from_openclip(custom)[k], v) for k, v in state.items())


def test_model_config_round_trip_and_refusals():
    cfg = get_config("small", vocab_size=777)
    oc = openclip_model_config(cfg, eot_id=2, pad_id=0, tokenizer_source="/x")
    assert oc["text_cfg"]["pool_type"] == "eos" and oc["text_cfg"]["eos_id"] == 2
    assert oc["vision_cfg"]["head_width"] * cfg.vision_heads == cfg.vision_width
    assert model_config_from_openclip(oc) == cfg
    for change, message in ((("quick_gelu", True), "quick_gelu=True"),
                            (("vision_cfg", {**oc["vision_cfg"], "attentional_pool": True}), "attentional_pool"),
                            (("text_cfg", {**oc["text_cfg"], "pool_type": "argmax"}), "pool_type='argmax'")):
        with pytest.raises(InputError, match=message):
            model_config_from_openclip({**oc, change[0]: change[1]})


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_the_packaged_tokenizer_gives_our_ids(kind):
    ours = _bpe() if kind == "bpe" else ByteTokenizer("whitespace")
    hf = hf_tokenizer(ours)
    if kind == "bytes":
        hf.encode_special_tokens = True  # what split_special_tokens in tokenizer_config.json asks for
    tokens, eot = ours(TEXTS, 16)
    for row, text in enumerate(TEXTS):
        hf.enable_truncation(16)
        ids = hf.encode(clean_whitespace(text)).ids  # open_clip cleans before it tokenizes
        assert ids == tokens[row, : len(ids)].tolist(), text
        assert (tokens[row, len(ids):] == ours.pad_id).all() and eot[row] == ids.index(ours.eot_id)


def test_tokenizers_clean_like_open_clip_and_old_ones_do_not():
    new, old = ByteTokenizer("whitespace"), ByteTokenizer()
    assert torch.equal(new(["don’t  stop &amp; go "], 24)[0], old(["don't stop & go"], 24)[0])
    assert not torch.equal(new(["a  b"], 8)[0], old(["a  b"], 8)[0])
    assert tokenizer_from_json('{"kind": "bytes"}').clean == "none"  # stored before cleaning existed
    assert json.loads(new.to_json()) == {"kind": "bytes", "clean": "whitespace"}
    assert old.to_json() == '{"kind": "bytes"}'
    bpe = _bpe()
    assert bpe.clean == "whitespace" and tokenizer_from_json(bpe.to_json()).clean == "whitespace"
    # the first <eot> is where the text tower reads (open_clip's eos pooling does the same)
    tokens, eot = bpe(["a <eot> b"], 12)
    assert tokens[0, eot[0]] == bpe.eot_id and eot[0] < (tokens[0] == bpe.eot_id).nonzero().max()


def _export(tmp_path, *extra: str) -> dict:
    tok = _bpe()
    cfg = get_config("micro", vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    save_checkpoint({"model_config": cfg.to_dict(), "model": CLIP(cfg).state_dict(), "tokenizer": tok.to_json()},
                    tmp_path / "train" / "checkpoints" / "step_2.pt")
    parser = argparse.ArgumentParser()
    export_command.add_arguments(parser)
    return parser.parse_args(["--open-clip", str(tmp_path / "train"), str(tmp_path / "oc model"), *extra])


def test_export_writes_open_clips_files_and_reads_back(tmp_path, capsys):
    assert export_command.run(_export(tmp_path)) == 0
    printed = capsys.readouterr().out
    folder = tmp_path / "oc model"
    assert sorted(p.name for p in folder.iterdir()) == [
        "metacurate_tokenizer.json", "oc-model.json", "open_clip_config.json", "open_clip_pytorch_model.bin",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert "open_clip.add_model_config(" in printed and "create_model_and_transforms('oc-model'" in printed
    config = json.loads((folder / "oc-model.json").read_text())
    assert set(config) == {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}  # nothing CLIP() would refuse
    assert config["text_cfg"]["hf_tokenizer_name"] == str(folder.resolve())
    local = json.loads((folder / "open_clip_config.json").read_text())
    assert local["model_cfg"] == config and local["preprocess_cfg"]["size"] == 32
    weights = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    assert "visual.conv1.weight" in weights and all(v.is_contiguous() for v in weights.values())
    ours, again = load_for_eval(tmp_path / "train"), load_for_eval(folder)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.encode_image(pixels), again.encode_image(pixels))
        assert torch.equal(ours.encode_text(TEXTS), again.encode_text(TEXTS))


def test_export_name_must_be_a_model_name(tmp_path):
    with pytest.raises(InputError, match="--name 'a/b'"):
        export_command.run(_export(tmp_path, "--name", "a/b"))
