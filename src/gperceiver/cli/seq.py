"""``gperceiver seq``: DNA sequence language models."""

from __future__ import annotations

from .options import file_params


def cmd_seq_pretrain(args) -> None:
    from ..seq.lm import pretrain

    params = file_params(args)
    summary = pretrain(args.fasta, args.out, params, resume=not args.restart)
    print(
        f"wrote the sequence model to {args.out} ({summary['steps']} steps, "
        f"validation bits_per_base={summary['best_val_bits_per_base']:.4f})"
    )


def cmd_seq_evaluate(args) -> None:
    from ..seq import SeqLM
    from ..seq.lm import bits_per_base, read_records

    model = SeqLM.from_pretrained(args.model)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bits, count = bits_per_base(model, read_records([args.fasta]), args.overlap)
    print(f"scored_bases={count}")
    print(f"bits_per_base={bits:.6f}")


def cmd_seq_embed(args) -> None:
    from ..seq import SeqLM
    from ..seq.lm import embed_records, read_records, write_embeddings

    model = SeqLM.from_pretrained(args.model)
    records = read_records([args.fasta])
    embeddings = embed_records(model, records)
    write_embeddings(args.out, [r.name for r in records], embeddings, args.model)
    print(f"wrote {len(records)} record embeddings of width {embeddings.shape[1]}")


def add_seq_commands(sub) -> None:
    """``gperceiver seq pretrain|evaluate|embed``."""
    seq = sub.add_parser("seq", help="DNA sequence language models (FASTA)")
    commands = seq.add_subparsers(dest="seq_command", required=True, metavar="ACTION")
    p = commands.add_parser("pretrain", help="causal LM pretraining on FASTA files")
    p.add_argument("fasta", nargs="+", help="FASTA files (plain, .gz or .xz)")
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--params", help="JSON object of model/training settings")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")
    p.set_defaults(func=cmd_seq_pretrain)
    p = commands.add_parser("evaluate", help="bits per base of a FASTA file")
    p.add_argument("fasta")
    p.add_argument("--model", required=True, help="directory from seq pretrain")
    p.add_argument(
        "--overlap",
        type=int,
        help="context positions re-read by each sliding window (default context/4)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_seq_evaluate)
    p = commands.add_parser("embed", help="mean hidden state of every record")
    p.add_argument("fasta")
    p.add_argument("--model", required=True, help="directory from seq pretrain")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=cmd_seq_embed)
