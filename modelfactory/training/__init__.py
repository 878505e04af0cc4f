"""Fine-tuning core: plain Python over plain data and tensors, no Django. Import from the submodules (this package
imports nothing, so Django can import `model_files` without loading torch).

Rows are plain dicts, as a datanet version holds them:
    {"id": int, "kind": "instruction" | "chat" | "text", "content": {...}}
    instruction: {"instruction", "input"?, "output"}; chat: {"messages": [{"role", "content"}]}; text: {"text"}

Wizard (steps 3-5)
    presets.PRESETS: {"quick" | "balanced" | "thorough": Preset(name, label, why, values)}
    presets.HYPERPARAMETERS: {field: Param(type, default, help, label, min, max, choices)}; Param.as_dict() for JSON.
        Fields: rank, alpha, dropout, target_modules ("attention" | "all_linear" | [layer names]), learning_rate,
        epochs, batch_size, grad_accum, max_length, scheduler (cosine|linear|constant), warmup_ratio, seed,
        eval_split, quantization ("none" | "4bit": CUDA only).
    presets.preset_values(name) -> dict                      every field, preset applied
    presets.validate_hyperparameters(values, *, preset="balanced") -> (clean: dict, errors: {field: message})
        e.g. {"rank": "must be between 1 and 256"}; unknown fields are errors; missing fields take the preset's value.
    data.preview_rows(tokenizer, rows, *, max_length, limit=3) -> [{"row_id", "segments": [{"text", "trained",
        "tokens"}], "tokens", "trained_tokens", "too_long", "error"}]     (highlight segments with trained=True)
    data.build_examples(tokenizer, rows, *, max_length) -> (list[Example], BuildReport)
        Example(row_id, input_ids, labels; n_tokens, n_answer_tokens); BuildReport(rows_total, rows_used,
        too_long: [row ids], no_answer: [row ids], invalid: {row id: why}, tokens, answer_tokens; .as_dict())
    estimate.estimate_run(token_counts, hp, *, device_type, parameters, model_config, answer_tokens=None,
        tokens_per_s=None, devices=1) -> Estimate(steps, tokens, seconds, peak_memory_bytes, tokens_per_s, method,
        devices)      (time divided among data-parallel devices, memory per device)
    estimate.measure_tokens_per_s(model, *, device, seq_len, batch_size, repeats=2) -> float  (calibration on the
        actual model, e.g. loaded with loop.load_model_for_training; pass the result as tokens_per_s)
    The tokenizer comes from model_files.load_causal_lm(folder) or transformers.AutoTokenizer.from_pretrained.

Hardware (devices.py, pure decisions on a Capabilities value; detect_capabilities() reads the machine)
    Capabilities(cuda, device_count, bf16, bitsandbytes, device_names)
    choose_precision(caps, device_type) -> "bf16" | "fp32"; quantization_problem(caps, "4bit") -> message | None;
    offered_quantizations(caps) -> ("none",) or ("none", "4bit");
    plan_hardware(caps, *, preference="auto", quantization="none", processes=0) -> HardwarePlan(device_type,
        device_index, world_size, precision, quantization)   (HardwareError with a message for the user)
    describe_hardware(plan, caps) -> "2 GPUs (NVIDIA H100, bf16)" | "this server's CPU"
    CI tests CUDA/bf16/bitsandbytes on fakes; bench/gpu_check.py runs them on a real GPU (done once, on one H100).

Celery task (gpu queue)
    finetune.run_finetune(spec: FinetuneSpec, *, workdir: Path, on_event=None, control=None, resume=False,
        capabilities=None) -> FinetuneResult
    FinetuneSpec(base_model_dir, rows, hyperparameters={}, preset="balanced", base_model_name="base-model",
        model_name="Fine-tuned model", datanet_versions=[{"name", "version", "manifest_hash"}], contributors=0,
        max_answers=64, max_new_tokens=96, device="auto", checkpoint_every=50, processes=0)
        processes: 0 = one process per CUDA GPU the worker sees (1 on a CPU); N > 1 runs data-parallel in N
        processes (distributed.py: same steps and results as one device, up to rounding, with dropout 0), e.g.
        2 gloo CPU processes in tests. on_event / control are called in the caller's process either way.
    FinetuneResult(adapter_dir, zip_path, artifact_hash, metrics, samples, hyperparameters, rows_used,
        rows_dropped, train_row_ids, eval_row_ids, report, stopped_early, model_card)
        metrics: {base_eval_loss, eval_loss, base_perplexity, perplexity, eval_tokens, answers_scored,
        base_exact_match, exact_match, base_token_f1, token_f1, train_loss, tokens, steps, total_steps,
        steps_per_epoch, passes, train_seconds, evaluation_seconds, seconds, verdict: {level, headline, advice}};
        samples: [{row_id, prompt, reference, base, tuned, base_exact, tuned_exact, base_f1, tuned_f1}] (every
        held-out row answered, up to max_answers; verdict.py scores and judges them)
    on_event(dict), called in the worker's thread:
        {"type": "phase", "phase": "loading" | "training" | "evaluating" | "saving", ...}
        {"type": "train", "step", "total_steps", "epoch", "loss", "lr", "tokens_per_s", "eta_s", "memory_bytes"}
        {"type": "eval", "step", "epoch", "eval_loss"}
      Raising from on_event aborts the run as it is (checkpoints stay, for a later resume=True).
    control() -> None | "stop" | "cancel", polled before every optimizer step: "stop" keeps the adapter trained so
        far and finishes normally (evaluation, artifacts; result.stopped_early is True); "cancel" raises
        loop.Cancelled after deleting the workdir's checkpoints and adapter.
    Errors: loop.TrainingError, its message written for the user as it is (bad settings, no usable rows, missing
        model files, out of memory with what to lower, NaN/inf loss). A worker that died: call again with the
        same workdir and resume=True to continue from the last checkpoint (workdir/checkpoints/).

Artifacts: artifacts.artifact_hash(folder) -> hex SHA-256 over artifacts.ADAPTER_FILES in order;
    artifacts.build_zip(folder, zip_path); artifacts.model_card(...) -> markdown. Lower-level pieces (train loop,
    evaluation) are in loop.py and evaluate.py.
"""
