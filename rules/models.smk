# The base model, materialised once as a plain safetensors Hugging Face folder that every
# method and the evaluation load.


rule materialise:
    output:
        directory(model_folder("base")),
    log:
        f"{LOGS}/models/materialise.log",
    benchmark:
        f"{BENCH}/models/materialise.tsv"
    conda:
        ENV
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        spec=config["model"]["base"],
        revision=(f"--revision {config['model']['revision']}" if config["model"]["revision"] else ""),
        dtype=config["model"]["dtype"],
        trust="--trust-remote-code" if config["model"]["trust_remote_code"] else "",
    shell:
        "detoxflow materialise --spec {params.spec:q} {params.revision} "
        "--dtype {params.dtype} {params.trust} --out {output} > {log} 2>&1"
