"""WPS-SAM prompter command: ``train-prompter`` (inference: ``pseudo-label --method prompter
--prompter PROMPTER.pt``)."""

from __future__ import annotations

from wsseg_fast.cli.common import UsageError, add_config, save_config
from wsseg_fast.data import DataError
from wsseg_fast.models.prompter import PROMPT_HEADS
from wsseg_fast.pipelines.prompter import PrompterConfig, PrompterError, train_prompter
from wsseg_fast.sam import CheckpointError
from wsseg_fast.sam.model import MODEL_CONFIGS


def add_train_prompter(sub) -> None:
    p = sub.add_parser("train-prompter", help="train WPS-SAM's query prompter on cached SAM embeddings and weak boxes")
    p.add_argument("--coco", required=True, help="COCO JSON with the weak annotations (boxes)")
    p.add_argument("--images", help="image directory (default: images/ beside the JSON)")
    p.add_argument("--model", default="tiny", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--checkpoint", help="SAM checkpoint (none: seeded random weights)")
    p.add_argument("--cache", help="embedding cache directory, shared with pseudo-label and finetune")
    p.add_argument("--out", required=True, help="output directory (prompter.pt, last.pt, log.jsonl); re-running resumes")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--no-object-weight", type=float, default=0.1,
                   help="CE weight of the no-object class (DETR's eos_coef; the paper's loss: 1)")
    p.add_argument("--raw-prompts", action="store_true",
                   help="regress SAM's tokens directly (default: standardised by the teacher tokens' mean and std)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queries", type=int, default=25)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--encoder-layers", type=int, default=6)
    p.add_argument("--decoder-layers", type=int, default=6)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--stride", type=int, default=2, help="of the 2 downsampling convs (1 keeps tiny's 16x16 grid)")
    p.add_argument("--prompt-head", choices=PROMPT_HEADS, default="tokens",
                   help="tokens: the MLP gives SAM's prompt tokens (the paper's); box: it gives a box, "
                        "encoded into tokens as SAM does")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    add_config(p)
    p.set_defaults(func=run_train_prompter)


def run_train_prompter(args) -> int:
    cfg = PrompterConfig(coco=args.coco, out=args.out, images=args.images, model=args.model, checkpoint=args.checkpoint,
                         cache=args.cache, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         no_object_weight=args.no_object_weight, normalize_prompts=not args.raw_prompts,
                         num_queries=args.queries, d_model=args.d_model, nhead=args.heads, dim_feedforward=args.ffn,
                         num_encoder_layers=args.encoder_layers, num_decoder_layers=args.decoder_layers,
                         dropout=args.dropout, stride=args.stride, prompt_head=args.prompt_head, device=args.device, threads=args.threads)
    save_config(args, args.out)
    try:
        path = train_prompter(cfg, progress=not args.quiet)
    except (DataError, PrompterError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    print(f"prompter: {path} (use: wsseg-fast pseudo-label --method prompter --prompter {path} ...)")
    return 0


def register(sub) -> None:
    add_train_prompter(sub)
