"""``gperceiver seq``: DNA sequence language models."""

from __future__ import annotations

from .options import add_device_option, file_params


def cmd_seq_pretrain(args) -> None:
    from ..seq.fasta import read_sequence_files
    from ..seq.lm import pretrain

    params = file_params(args)
    files = read_sequence_files(args.fasta)
    if args.kind == "memory":
        from ..seq.memory_lm import pretrain_memory

        params = {**params, "device": str(args.device)}
        s = pretrain_memory(files, args.out, params)
        print(
            f"wrote the memory model to {args.out} ({s['training_bases']} bases, "
            f"{s['memory_ram_mb_per_mb']} MB RAM per Mb, validation "
            f"bits_per_base={s['val_bits_per_base']:.4f}, {s['seconds']} s)"
        )
        return
    summary = pretrain(
        files, args.out, params, resume=not args.restart, device=args.device
    )
    print(
        f"wrote the sequence model to {args.out} ({summary['steps']} steps, "
        f"validation bits_per_base={summary['best_val_bits_per_base']:.4f})"
    )


def cmd_seq_evaluate(args) -> None:
    from ..seq.fasta import read_sequence_files
    from ..seq.loading import bits_per_base

    files = read_sequence_files([args.fasta])
    bits, count = bits_per_base(args.model, files, args.overlap, args.device)
    print(f"scored_bases={count}")
    print(f"bits_per_base={bits:.6f}")


def cmd_seq_embed(args) -> None:
    from ..seq import SeqLM
    from ..seq.fasta import read_sequence_files
    from ..seq.lm import embed_records, write_embeddings

    model = SeqLM.from_pretrained(args.model, args.device)
    records = read_sequence_files([args.fasta])[0].records
    embeddings = embed_records(model, records)
    write_embeddings(args.out, [r.name for r in records], embeddings, args.model)
    print(f"wrote {len(records)} record embeddings of width {embeddings.shape[1]}")


def cmd_seq_score(args) -> None:
    from ..seq.loading import load_scorer
    from ..seq.variants import (
        read_variants,
        reference_digits,
        score_variants,
        write_scores,
    )

    reference = reference_digits(args.reference)
    variants = read_variants(args.vcf)
    model = load_scorer(args.model, args.device)
    table = score_variants(reference, variants, model, args.flank, args.vcf)
    write_scores(table, args.out)
    print(f"wrote {len(table)} variant scores to {args.out}")


def add_seq_commands(sub) -> None:
    """``gperceiver seq pretrain|evaluate|embed|score``."""
    seq = sub.add_parser("seq", help="DNA sequence language models (FASTA)")
    commands = seq.add_subparsers(dest="seq_command", required=True, metavar="ACTION")
    p = commands.add_parser("pretrain", help="causal LM pretraining on FASTA files")
    p.add_argument("fasta", nargs="+", help="FASTA files (plain, .gz or .xz)")
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--params", help="JSON object of model/training settings")
    p.add_argument("--restart", action="store_true", help="ignore checkpoints in --out")
    p.add_argument(
        "--kind",
        choices=["transformer", "memory"],
        default="transformer",
        help="memory: exact k-mer memory of the files + a learned mixer (see README)",
    )
    add_device_option(p)  # --kind memory: the mixer's (its experts run on the CPU)
    p.set_defaults(func=cmd_seq_pretrain)
    p = commands.add_parser("evaluate", help="bits per base of a FASTA file")
    p.add_argument("fasta")
    p.add_argument("--model", required=True, help="directory from seq pretrain")
    p.add_argument(
        "--overlap",
        type=int,
        help="context positions re-read by each sliding window (default context/4)",
    )
    add_device_option(p)
    p.set_defaults(func=cmd_seq_evaluate)
    p = commands.add_parser("embed", help="mean hidden state of every record")
    p.add_argument("fasta")
    p.add_argument("--model", required=True, help="directory from seq pretrain")
    p.add_argument("--out", required=True, help="output .safetensors file")
    add_device_option(p)
    p.set_defaults(func=cmd_seq_embed)
    p = commands.add_parser("score", help="zero-shot log-likelihood ratio of variants")
    p.add_argument("reference", help="reference FASTA the VCF was called on")
    p.add_argument("vcf", help="VCF of SNVs / indels (plain or .gz)")
    p.add_argument("--model", required=True, help="directory from seq pretrain")
    p.add_argument("--out", required=True, help="output TSV")
    p.add_argument("--flank", type=int, default=128, help="bases on each side")
    add_device_option(p)
    p.set_defaults(func=cmd_seq_score)
