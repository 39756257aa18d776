"""`palign compare`: P-ALIGN and its baselines on shared stages, then one Table-1 report.

- `run`: the methods' configs, the shared stage directories and running every method's pipeline;
- `stats`: pure statistics (per-problem pass@k, stratified bootstrap CIs, paired sign-flip and sign tests);
- `table`: Table 1's numbers from each finished evaluation's samples (scores, paired differences, subsets);
- `groups`: the built-in held-out problems by template and the novel-answer subset;
- `facts`: per-method SFT set, prefix ratio, training, tokens and wall times from the stage manifests;
- `samples`: samples.parquet, every sample behind Table 1;
- `markdown`, `plots`: report.md, the console's headline lines and the PNGs;
- `report`: collects all of it into `<run_dir>/compare/` (compare.json, samples.parquet, report.md, PNGs).
"""
