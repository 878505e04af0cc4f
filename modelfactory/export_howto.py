"""The "how to use this" text of an export: commands for Python (transformers), llama.cpp and Ollama, the same on
the export's page and in the HOW_TO_USE.md inside a zip. Plain data (title, intro, code) so both render it."""

from __future__ import annotations

from dataclasses import dataclass

from modelfactory.models import ModelExport

# Where people can get a registered base model themselves (the adapter needs it); others are named by their folder.
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class Step:
    tool: str  # "Python (transformers)", "llama.cpp", "Ollama"
    intro: str
    code: str


def base_reference(export: ModelExport) -> str:
    base = export.version.model.base_model
    return HUB_IDS.get(base.slug, f"path/to/{base.slug}")


def steps(export: ModelExport) -> list[Step]:
    name = export.filename
    slug = export.version.model.slug
    folder = name.removesuffix(".zip")
    question = '[{"role": "user", "content": "Hello! What can you do?"}]'
    generate = (
        f"messages = {question}\n"
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",'
        " return_dict=True)\n"
        "output = model.generate(**inputs, max_new_tokens=128, do_sample=False)\n"
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))'
    )
    if export.format == ModelExport.Format.ADAPTER:
        base = base_reference(export)
        return [
            Step("Python (transformers)", f"Unzip {name}, then load the base model and put the adapter on it:",
                 f"pip install torch transformers peft\nunzip {name} -d {folder}\n\n"
                 "from transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\n"
                 f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n'
                 f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{folder}")\n'
                 + generate),
            Step("llama.cpp", "Convert the adapter to a GGUF LoRA with llama.cpp's script and run it on the base "
                 "model's GGUF file:",
                 f"python convert_lora_to_gguf.py {folder} --base-model-id {base} --outfile {slug}-lora.gguf\n"
                 f"llama-cli -m base-model.gguf --lora {slug}-lora.gguf -cnv"),
            Step("Ollama", "Ollama can put a safetensors adapter on its own copy of the base model; simpler: export "
                 "the GGUF file from this model's page. With the adapter, write a Modelfile:",
                 f"FROM {base}\nADAPTER ./{folder}\n\nollama create {slug} -f Modelfile\nollama run {slug}"),
        ]  # fmt: skip
    if export.format == ModelExport.Format.MERGED:
        return [
            Step("Python (transformers)", f"Unzip {name}: the folder is a complete model (base and your training "
                 "merged), loaded as any Hugging Face model:",
                 f"pip install torch transformers\nunzip {name} -d {folder}\n\n"
                 "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                 f'tokenizer = AutoTokenizer.from_pretrained("{folder}")\n'
                 f'model = AutoModelForCausalLM.from_pretrained("{folder}")\n' + generate),
            Step("llama.cpp", "Convert the folder to GGUF with llama.cpp's script (or export GGUF here directly):",
                 f"python convert_hf_to_gguf.py {folder} --outtype f16 --outfile {slug}.gguf\n"
                 f"llama-cli -m {slug}.gguf -cnv"),
            Step("Ollama", "Ollama imports the safetensors folder itself:",
                 f"echo 'FROM ./{folder}' > Modelfile\nollama create {slug} -f Modelfile\nollama run {slug}"),
        ]  # fmt: skip
    return [
        Step("llama.cpp", "Chat with the file in a terminal, or serve it with an OpenAI-compatible API:",
             f"llama-cli -m {name} -cnv\nllama-server -m {name} --port 8080"),
        Step("Ollama", f"Save the Modelfile (link below) next to {name}, then:",
             f"ollama create {slug} -f Modelfile\nollama run {slug}"),
        Step("Python (transformers)", "transformers reads GGUF files too (it turns them back into float weights):",
             "pip install torch transformers gguf\n\n"
             "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
             f'tokenizer = AutoTokenizer.from_pretrained(".", gguf_file="{name}")\n'
             f'model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{name}")\n' + generate),
    ]  # fmt: skip


def markdown(export: ModelExport) -> str:
    """HOW_TO_USE.md inside a zip (the page shows the same steps and the file's SHA-256)."""
    model = export.version.model
    lines = [f"# {model.name}, version {export.version.number}: {export.get_format_display()}", ""]
    for step in steps(export):
        lines += [f"## {step.tool}", "", step.intro, "", "```", step.code, "```", ""]
    lines += ["Check the download: `sha256sum <file>` must print the SHA-256 shown on the model's page.", ""]
    return "\n".join(lines)
