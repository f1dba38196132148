# The base model, materialised once as a plain safetensors Hugging Face folder.


rule materialise_base_model:
    output:
        directory(f"{MODELS}/base"),
    params:
        spec=config["model"]["base"],
        revision=f"--revision {config['model']['revision']}" if config["model"]["revision"] else "",
        dtype=config["model"]["dtype"],
        trust="--trust-remote-code" if config["model"]["trust_remote_code"] else "",
    log:
        f"{LOGS}/models/materialise_base_model.log",
    benchmark:
        f"{BENCH}/materialise_base_model.tsv"
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        ENV
    shell:
        "detoxflow materialise --spec {params.spec:q} {params.revision} "
        "--dtype {params.dtype} {params.trust} --out {output} > {log} 2>&1"
