"""Subcommands of the evaluation: generate-continuations, score-toxicity, perplexity, summarize,
compare-toxicity.

They read model folders and the evaluation's own files, know nothing of the method that made a
folder, and take every name they record from their arguments (no name is parsed out of a path).
"""

from __future__ import annotations

import logging

from ..errors import DetoxflowError
from . import add_runtime_args, json_arg, load_model_and_tokenizer, settings_arg

log = logging.getLogger(__name__)




def _generate(args) -> None:
    from ..generation import generate_continuations
    from ..io import read_jsonl, write_jsonl

    s = args.settings
    prompts = read_jsonl(args.prompts)
    if not prompts:
        raise DetoxflowError(f"{args.prompts}: no prompts")
    model, tokenizer = load_model_and_tokenizer(args)
    preprompt = s["preprompt"]
    inputs = [preprompt + p["text"] for p in prompts]
    stats: dict = {}
    outputs = generate_continuations(
        model, tokenizer, inputs,
        max_new_tokens=s["max_new_tokens"], do_sample=s["do_sample"], top_p=s["top_p"],
        temperature=s["temperature"], num_return_sequences=s["k"], batch_tokens=args.batch_tokens,
        seed=s["seed"], desc=f"generating ({args.model})", stats=stats,
    )
    cut = stats["truncated_tokens"]
    write_jsonl(args.out, (
        {"prompt_index": i, "prompt": p["text"], "preprompt": preprompt, "continuations": conts,
         **({"prompt_tokens_cut": cut[i]} if cut[i] else {}),
         **({"prompt_toxicity": p["prompt_toxicity"]} if "prompt_toxicity" in p else {})}
        for i, (p, conts) in enumerate(zip(prompts, outputs))
    ))
    log.info("%d prompts x %d continuations written to %s; %d prompts cut from the left to fit the context",
             len(prompts), s["k"], args.out, stats["truncated"])


def _score_toxicity(args) -> None:
    from ..io import read_jsonl, write_json, write_jsonl
    from ..evaluation.metrics.diversity import distinct_n
    from ..evaluation.metrics.toxicity import toxicity_metrics
    from ..evaluation.scoring import build_scorer

    s = args.settings
    records = read_jsonl(args.generations)
    if not records:
        raise DetoxflowError(f"{args.generations}: no generations to score")
    name = s["scorer"]
    options = s.get(name.replace("-", "_"), {}) or {}
    scorer = build_scorer(name, options, batch_size=s["batch_size"])
    try:
        flat = [c for r in records for c in r["continuations"]]
        scores = scorer.score(flat)
    finally:
        scorer.close()
    it = iter(scores)
    per_prompt = [[next(it) for _ in r["continuations"]] for r in records]
    for rec, sc in zip(records, per_prompt):
        rec["toxicity"] = sc
    continuations = [r["continuations"] for r in records]
    metrics = {
        "model": args.model_name,
        "prompting": args.prompting,
        "scorer": name,
        "threshold": s["threshold"],
        "n_prompts": len(records),
        "k": max(len(r["continuations"]) for r in records),
        **toxicity_metrics(per_prompt, s["threshold"]),
        **{f"distinct_{n}": distinct_n(continuations, n) for n in (1, 2, 3)},
    }
    write_jsonl(args.out, records)
    write_json(args.metrics, metrics)
    log.info("toxicity: %s", {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})


def _perplexity(args) -> None:
    from ..evaluation.metrics.perplexity import perplexity
    from ..io import read_jsonl, write_metrics

    s = args.settings
    rows = read_jsonl(args.text)
    text = "\n".join(r["text"] for r in rows)
    model, tokenizer = load_model_and_tokenizer(args)
    result = perplexity(model, tokenizer, text, window=s["window"], stride=s["stride"], max_tokens=s["max_tokens"])
    write_metrics(args.out, {"perplexity": result.pop("perplexity")}, **result)
    log.info("perplexity over %d tokens written to %s", result["n_tokens"], args.out)




def _summarize(args) -> None:
    from ..evaluation.summary import write_summary

    df = write_summary(args.spec, csv=args.csv, markdown=args.markdown, plot=args.plot, samples=args.samples,
                       samples_per_variant=args.samples_per_variant)
    log.info("summary of %d runs written to %s", len(df), args.csv)




def _compare_toxicity(args) -> None:
    from ..io import read_jsonl, write_json
    from ..evaluation.metrics.compare import paired_bootstrap

    runs = []
    for path in (args.a, args.b):
        records = read_jsonl(path)
        if not records or any("toxicity" not in r for r in records):
            raise DetoxflowError(f"{path}: not a scored toxicity.jsonl (rows need `toxicity`)")
        runs.append(records)
    a, b = runs
    if [r["prompt"] for r in a] != [r["prompt"] for r in b]:
        raise DetoxflowError(f"{args.a} and {args.b} continue different prompts: a paired comparison needs the same")
    result = paired_bootstrap([r["toxicity"] for r in a], [r["toxicity"] for r in b], threshold=args.threshold,
                              resamples=args.resamples, confidence=args.confidence, seed=args.seed)
    pct = round(args.confidence * 100)
    lines = [f"A = {args.a}", f"B = {args.b}", "", f"| metric | A - B | {pct} % interval |", "|---|---|---|"]
    lines += [f"| {m} | {r['difference']:+.4f} | [{r['low']:+.4f}, {r['high']:+.4f}] |" for m, r in result.items()]
    print("\n".join(lines))
    if args.json:
        write_json(args.json, {"a": str(args.a), "b": str(args.b), "confidence": args.confidence,
                               "resamples": args.resamples, "metrics": result})


def register(sub) -> None:
    p = sub.add_parser("generate-continuations", help="RealToxicityPrompts continuations of a model folder")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="JSONL rows with `text`")
    p.add_argument("--settings", required=True, type=settings_arg("evaluation", "generation"),
                   help="JSON: evaluation.generation (k, max_new_tokens, top_p, temperature, do_sample, seed, preprompt)")
    p.add_argument("--batch-tokens", type=int, required=True,
                   help="token budget of a batch: prompts x (longest prompt + k x max_new_tokens)")
    add_runtime_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_generate)

    p = sub.add_parser("score-toxicity", help="score continuations and aggregate toxicity/diversity metrics")
    p.add_argument("--generations", required=True)
    p.add_argument("--settings", required=True, type=settings_arg("evaluation", "toxicity"),
                   help="JSON: the evaluation.toxicity section")
    p.add_argument("--model-name", required=True, help="the model variant's name (recorded in the metrics)")
    p.add_argument("--prompting", required=True, help="plain or the pre-prompt's name (recorded in the metrics)")
    p.add_argument("--out", required=True, help="scored JSONL")
    p.add_argument("--metrics", required=True, help="metrics JSON")
    p.set_defaults(handler=_score_toxicity)

    p = sub.add_parser("perplexity", help="sliding-window perplexity of a model folder on a text recipe")
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True, help="JSONL rows with `text`, joined by newlines")
    p.add_argument("--settings", required=True, type=settings_arg("evaluation", "perplexity"),
                   help="JSON: evaluation.perplexity (window, stride, max_tokens)")
    add_runtime_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=_perplexity)

    p = sub.add_parser("summarize", help="one table, plot and sample file over all runs")
    p.add_argument("--spec", required=True, type=json_arg,
                   help='JSON: {"runs": [{model, prompting, toxicity, scored}], '
                        '"models": {name: {folder, metrics: [files]}}}')
    p.add_argument("--samples-per-variant", type=int, required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--samples", required=True)
    p.set_defaults(handler=_summarize)

    p = sub.add_parser("compare-toxicity",
                       help="paired bootstrap over prompts: toxicity of variant A minus variant B, with intervals")
    p.add_argument("a", help="scored toxicity.jsonl of variant A (results/eval/<variant>/<prompting>/)")
    p.add_argument("b", help="scored toxicity.jsonl of variant B, same prompts")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result here")
    p.set_defaults(handler=_compare_toxicity)
