"""open_clip interoperability: our weights, model config and tokenizer in open_clip's layout, and back.

Our model is open_clip's plain ``CLIP`` (a ``VisionTransformer`` image tower, the built-in text
transformer at the top level) with these settings, so the weights map one to one:

* vision: ``conv1`` without bias, class token, learned positions, ``ln_pre``, pre-LN blocks,
  ``ln_post`` on the class token (``pool_type="tok"``), ``proj`` (``x @ proj``);
* blocks: ``nn.MultiheadAttention``'s ``in_proj`` holds q, k, v stacked exactly like our fused
  ``qkv`` (heads contiguous inside each), exact GELU (``quick_gelu=False``), LayerNorm eps 1e-5,
  ``mlp_width = int(width * mlp_ratio)``;
* text: token embedding + learned positions over the full context, causal mask, ``ln_final``,
  pooled at the first ``<eot>`` (``pool_type="eos"`` with ``eos_id`` = our ``<eot>`` id; open_clip's
  default ``argmax`` pooling assumes the end token has the largest id, which ours has not),
  ``text_projection`` (``x @ text_projection``);
* our linear projections store ``[out, in]``; open_clip's ``proj`` / ``text_projection`` are
  ``[in, out]``, so those two are transposed.

The tokenizer goes over as a Hugging Face ``tokenizer.json`` (our BPE itself, or for the byte
tokenizer an equivalent byte-level BPE without merges) whose post-processor adds ``<sot>``/``<eot>``;
open_clip's ``HFTokenizer`` then pads and truncates exactly like we do. open_clip always cleans a
text first (ftfy, HTML unescape, whitespace); tokenizers made with ``clean="whitespace"`` do the
same, so the token ids are identical for every text (older tokenizers: only for texts the
cleaning leaves unchanged).
"""
from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import torch

from curation.errors import InputError
from curation.storage import Storage, join
from training.configs import ModelConfig
from training.tokenizer import EOT, PAD, SOT, BPETokenizer, ByteTokenizer

log = logging.getLogger(__name__)

#: Files of an exported folder (open_clip's ``local-dir:`` layout plus our own tokenizer).
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
OUR_TOKENIZER_FILE = "metacurate_tokenizer.json"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

_BLOCK = {  # our block's parameter -> open_clip's ResidualAttentionBlock parameter
    "ln_1": "ln_1", "qkv": "attn.in_proj", "out": "attn.out_proj", "ln_2": "ln_2", "fc": "mlp.c_fc",
    "proj": "mlp.c_proj",
}
_BLOCK_BACK = {v: k for k, v in _BLOCK.items()}
_FIXED = {  # our name -> (open_clip name, transposed)
    "visual.patchify.weight": ("visual.conv1.weight", False),
    "visual.class_token": ("visual.class_embedding", False),
    "visual.positions": ("visual.positional_embedding", False),
    "visual.ln_pre.weight": ("visual.ln_pre.weight", False),
    "visual.ln_pre.bias": ("visual.ln_pre.bias", False),
    "visual.ln_post.weight": ("visual.ln_post.weight", False),
    "visual.ln_post.bias": ("visual.ln_post.bias", False),
    "image_projection.weight": ("visual.proj", True),
    "text.token_embedding.weight": ("token_embedding.weight", False),
    "text.positions": ("positional_embedding", False),
    "text.ln_final.weight": ("ln_final.weight", False),
    "text.ln_final.bias": ("ln_final.bias", False),
    "text_projection.weight": ("text_projection", True),
    "logit_scale": ("logit_scale", False),
}
_FIXED_BACK = {oc: (ours, t) for ours, (oc, t) in _FIXED.items()}
_OUR_BLOCK_KEY = re.compile(r"^(visual|text)\.blocks\.(\d+)\.(ln_1|qkv|out|ln_2|fc|proj)\.(weight|bias)$")
_OC_BLOCK_KEY = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(ln_1|attn\.in_proj|attn\.out_proj|ln_2|"
                           r"mlp\.c_fc|mlp\.c_proj)[._](weight|bias)$")
#: CustomTextCLIP keeps the text tower under ``text.``; plain CLIP (what we export) at the top.
_CUSTOM_TEXT = ("text.token_embedding.", "text.positional_embedding", "text.transformer.", "text.ln_final.",
                "text.text_projection")


def _to_openclip_key(key: str) -> tuple[str, bool]:
    if key in _FIXED:
        return _FIXED[key]
    m = _OUR_BLOCK_KEY.match(key)
    if not m:
        raise KeyError(key)
    tower, index, part, kind = m.groups()
    prefix = "visual.transformer" if tower == "visual" else "transformer"
    name = _BLOCK[part]
    # nn.MultiheadAttention names its fused input projection in_proj_weight / in_proj_bias
    suffix = f"{name}_{kind}" if name == "attn.in_proj" else f"{name}.{kind}"
    return f"{prefix}.resblocks.{index}.{suffix}", False


def to_openclip(state: Mapping[str, torch.Tensor], contiguous: bool = False) -> dict[str, torch.Tensor]:
    """Our state dict in open_clip ``CLIP``'s names and shapes. Without ``contiguous`` the
    transposed projections are views, so a checkpoint holding both layouts stores each tensor once."""
    out = {}
    for key, value in state.items():
        name, transposed = _to_openclip_key(key)
        value = value.t() if transposed else value
        out[name] = value.contiguous() if contiguous else value
    return out


def is_openclip_layout(state: Mapping[str, Any]) -> bool:
    keys = [k[7:] if k.startswith("module.") else k for k in state]
    return any(k.startswith(("visual.conv1.", "visual.transformer.", "transformer.", "text.transformer."))
               for k in keys)


def from_openclip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights in open_clip's layout (``module.`` prefix of DDP and ``CustomTextCLIP``'s ``text.``
    tower accepted) or already in ours, as our state dict; weights of parts our model does not
    have are an ``InputError`` naming them."""
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    if not is_openclip_layout(state):
        return dict(state)
    if any(k.startswith("text.transformer.") for k in state):
        state = {k[5:] if k.startswith(_CUSTOM_TEXT) else k: v for k, v in state.items()}
    out, foreign = {}, []
    for key, value in state.items():
        if key in _FIXED_BACK:
            name, transposed = _FIXED_BACK[key]
            out[name] = value.t() if transposed else value
            continue
        m = _OC_BLOCK_KEY.match(key)
        if not m:
            foreign.append(key)
            continue
        visual, index, part, kind = m.groups()
        out[f"{'visual' if visual else 'text'}.blocks.{index}.{_BLOCK_BACK[part]}.{kind}"] = value
    if foreign:
        raise InputError(f"open_clip weights for parts the metacurate model does not have: {foreign[:8]}"
                         f"{' ...' if len(foreign) > 8 else ''} (only plain ViT + text-transformer CLIPs "
                         "map onto it)")
    return out


# --------------------------------------------------------------------------- model config
def openclip_model_config(cfg: ModelConfig, eot_id: int, pad_id: int, tokenizer_source: str) -> dict[str, Any]:
    """open_clip's model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) of our model;
    ``tokenizer_source`` is the folder with the Hugging Face tokenizer files."""
    return {
        "embed_dim": cfg.embed_dim,
        "quick_gelu": False,
        "vision_cfg": {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "width": cfg.vision_width,
                       "layers": cfg.vision_layers, "head_width": cfg.vision_width // cfg.vision_heads,
                       "mlp_ratio": cfg.mlp_ratio},
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers, "mlp_ratio": cfg.mlp_ratio,
                     "pool_type": "eos", "eos_id": eot_id, "pad_id": pad_id,
                     "hf_tokenizer_name": tokenizer_source, "tokenizer_kwargs": {"clean": "whitespace"}},
    }


#: open_clip settings our model has no counterpart for, with the only value it can take.
_VISION_FIXED = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
                 "final_ln_after_pool": False, "pool_type": "tok", "timm_model_name": None, "act_kwargs": None,
                 "norm_kwargs": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
                 "scale_attn_inner": False, "scale_attn": False, "scale_fc": False}
_TEXT_FIXED = {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
               "pool_type": "eos", "proj_bias": False, "proj_type": "linear", "hf_model_name": None,
               "act_kwargs": None, "norm_kwargs": None, "qk_norm": False, "scaled_cosine_attn": False,
               "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False}


def model_config_from_openclip(model_cfg: Mapping[str, Any], source: str = "open_clip config") -> ModelConfig:
    """Our ``ModelConfig`` of an open_clip model config; settings our model cannot represent are
    an ``InputError`` naming them."""
    try:
        vision, text = dict(model_cfg["vision_cfg"]), dict(model_cfg["text_cfg"])
        problems = [f"quick_gelu={model_cfg['quick_gelu']}"] if model_cfg.get("quick_gelu") else []
        problems += [f"vision_cfg.{k}={vision[k]!r}" for k, want in _VISION_FIXED.items()
                     if k in vision and vision[k] != want]
        problems += [f"text_cfg.{k}={text[k]!r}" for k, want in _TEXT_FIXED.items() if k in text and text[k] != want]
        if text.get("pool_type", "argmax") != "eos":
            problems.append(f"text_cfg.pool_type={text.get('pool_type', 'argmax')!r}")
        mlp = float(vision.get("mlp_ratio", 4.0))
        if float(text.get("mlp_ratio", 4.0)) != mlp:
            problems.append("different mlp_ratio in the two towers")
        if not isinstance(vision.get("layers", 12), int) or not isinstance(vision.get("image_size", 224), int):
            problems.append("a ResNet tower or a non-square image size")
        if problems:
            raise InputError(f"{source}: the metacurate model has no counterpart for {', '.join(problems)}")
        width = int(vision.get("width", 768))
        head_width = int(vision.get("head_width", 64))
        if width % head_width:
            raise InputError(f"{source}: vision width {width} is not a multiple of head_width {head_width}")
        return ModelConfig(embed_dim=int(model_cfg["embed_dim"]), image_size=int(vision.get("image_size", 224)),
                           patch_size=int(vision.get("patch_size", 16)), vision_width=width,
                           vision_layers=int(vision.get("layers", 12)), vision_heads=width // head_width,
                           context_length=int(text.get("context_length", 77)),
                           vocab_size=int(text.get("vocab_size", 49408)), text_width=int(text.get("width", 512)),
                           text_layers=int(text.get("layers", 12)), text_heads=int(text.get("heads", 8)),
                           mlp_ratio=mlp)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: not an open_clip model config ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------- tokenizer
def _byte_alphabet() -> list[str]:
    """The printable character that byte-level BPE (GPT-2's scheme, which HF ``tokenizers``'
    ByteLevel uses) stands in for each byte 0..255: printable Latin-1 bytes stand for
    themselves, the others for code points from 256 upwards, in byte order."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    out, extra = [], 0
    for byte in range(256):
        if byte in keep:
            out.append(chr(byte))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def hf_tokenizer(tokenizer):
    """A HF ``tokenizers.Tokenizer`` giving our content ids, with a post-processor that adds
    ``<sot>``/``<eot>`` (open_clip's HFTokenizer pads and truncates around it as we do)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    if isinstance(tokenizer, BPETokenizer):
        tok = Tokenizer.from_str(tokenizer.hf_json())
    elif isinstance(tokenizer, ByteTokenizer):
        # one pre-token per text (no regex split), each byte its own symbol, no merges: id = byte value
        vocab = {char: byte for byte, char in enumerate(_byte_alphabet())}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([PAD, SOT, EOT])
    else:
        raise InputError(f"cannot export a {type(tokenizer).__name__} tokenizer to open_clip")
    ids = {name: tok.token_to_id(name) for name in (PAD, SOT, EOT)}
    if ids != {PAD: tokenizer.pad_id, SOT: tokenizer.sot_id, EOT: tokenizer.eot_id}:
        raise AssertionError(f"special token ids differ after conversion: {ids}")
    tok.post_processor = TemplateProcessing(single=f"{SOT} $A {EOT}", pair=f"{SOT} $A {EOT} $B {EOT}",
                                            special_tokens=[(SOT, tokenizer.sot_id), (EOT, tokenizer.eot_id)])
    tok.no_padding()
    tok.no_truncation()
    return tok


def hf_tokenizer_files(tokenizer, context_length: int) -> dict[str, bytes]:
    """``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``: what
    ``transformers.AutoTokenizer.from_pretrained(folder)`` (inside open_clip's HFTokenizer) reads."""
    special = {"bos_token": SOT, "eos_token": EOT, "pad_token": PAD}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": context_length,
              "clean_up_tokenization_spaces": False,
              # our byte tokenizer reads a literal "<eot>" in a text as five bytes, and the HF one must
              # too; our BPE (the same HF tokenizer) maps it to the special id on both sides
              "split_special_tokens": isinstance(tokenizer, ByteTokenizer)}
    return {"tokenizer.json": hf_tokenizer(tokenizer).to_str().encode("utf-8"),
            "tokenizer_config.json": json.dumps(config, indent=2).encode(),
            "special_tokens_map.json": json.dumps(special, indent=2).encode()}


# --------------------------------------------------------------------------- reading an export back
def load_export(folder: str, storage: Storage) -> dict[str, Any]:
    """An exported folder (or any open_clip ``local-dir`` folder with our tokenizer file) as a
    checkpoint state of ours: ``model_config``, ``model``, ``tokenizer``."""
    config = storage.read_json(join(folder, CONFIG_FILE))
    if not isinstance(config, dict):
        raise InputError(f"{join(folder, CONFIG_FILE)} is not an open_clip config")
    model_cfg = model_config_from_openclip(config.get("model_cfg", config), source=join(folder, CONFIG_FILE))
    tok_url = join(folder, OUR_TOKENIZER_FILE)
    if not storage.isfile(tok_url):
        raise InputError(f"{folder} has no {OUR_TOKENIZER_FILE}: metacurate can read open_clip folders written by "
                         "`metacurate export --open-clip` (it cannot rebuild another tokenizer)")
    weights_url = join(folder, WEIGHTS_FILE)
    try:
        weights = torch.load(io.BytesIO(storage.read_bytes(weights_url)), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{folder} has no {WEIGHTS_FILE}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged or unsafe files
        raise InputError(f"{weights_url} cannot be read with weights_only=True: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]
    if not isinstance(weights, dict):
        raise InputError(f"{weights_url} does not hold a state dict")
    return {"model_config": model_cfg.to_dict(), "model": from_openclip(weights),
            "tokenizer": storage.read_bytes(tok_url).decode("utf-8")}
