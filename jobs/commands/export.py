"""Export a trained checkpoint for open_clip: model config, weights and tokenizer in open_clip's layout.

Example:
  metacurate export --open-clip runs/my-train runs/my-oc
then, in Python with open_clip installed (its Hugging Face tokenizer path needs `transformers`):
  import open_clip
  open_clip.add_model_config("runs/my-oc/my-oc.json")
  model, _, preprocess = open_clip.create_model_and_transforms(
      "my-oc", pretrained="runs/my-oc/open_clip_pytorch_model.bin")
  tokenizer = open_clip.get_tokenizer("my-oc")
or, without registering a name (and wherever the folder is moved to):
  model, _, preprocess = open_clip.create_model_and_transforms("local-dir:runs/my-oc")
  tokenizer = open_clip.get_tokenizer("local-dir:runs/my-oc")

OUT holds NAME.json (the model config; its tokenizer path is OUT's absolute path, so move the
folder only with the local-dir form), open_clip_config.json (config + preprocessing, for
local-dir), open_clip_pytorch_model.bin (the weights), tokenizer.json / tokenizer_config.json /
special_tokens_map.json (the tokenizer for open_clip's HFTokenizer) and metacurate_tokenizer.json
(`metacurate eval --checkpoint OUT` reads the folder back). The model is open_clip's plain CLIP
(ViT image tower, text transformer pooled at the end-of-text token): open_clip computes the same
embeddings for the same images and texts.

CHECKPOINT is a .pt file or a training output folder (its newest checkpoint); both may be
object-store URLs (the S3 endpoint and keys come from the `storage:` section of --config).
"""
from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--open-clip", dest="checkpoint", metavar="CHECKPOINT", required=True,
                        help="the checkpoint to export for open_clip: a .pt file or a training output folder")
    parser.add_argument("out", metavar="OUT", help="folder to write, local or s3://... (open_clip reads local "
                        "folders: copy an s3 export down before loading it)")
    parser.add_argument("--name", help="the model name open_clip will know it by (default: OUT's folder name)")
    parser.add_argument("--config", metavar="FILE",
                        help="run config YAML; only its `storage:` section is used (S3 endpoint and keys)")


def run(args: argparse.Namespace) -> int:
    from jobs.config import storage_for
    from training.export import export_open_clip  # torch from here on

    written = export_open_clip(args.checkpoint, args.out, name=args.name, storage=storage_for(args.config))
    print(json.dumps(written, indent=2))
    name, out = written["name"], written["out"]
    print(f"\nopen_clip.add_model_config({written['config']!r})\n"
          f"model, _, preprocess = open_clip.create_model_and_transforms({name!r}, pretrained={written['weights']!r})\n"
          f"tokenizer = open_clip.get_tokenizer({name!r})\n"
          f"# or: open_clip.create_model_and_transforms('local-dir:{out}'), open_clip.get_tokenizer('local-dir:{out}')")
    return 0
