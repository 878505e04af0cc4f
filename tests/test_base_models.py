import json

import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import override_settings

from modelfactory.models import BaseModel
from modelfactory.services import base_model_check, base_model_ensure_default, base_model_register
from modelfactory.training import model_files
from modelfactory.training.families import FAMILIES
from tests.tiny import build_tiny_model_dir

pytestmark = pytest.mark.django_db


@pytest.fixture
def tiny_dir(tmp_path):
    return build_tiny_model_dir(tmp_path / "tiny-llama")


def test_register_a_local_folder(tiny_dir, capsys):
    from transformers import AutoModelForCausalLM

    expected = AutoModelForCausalLM.from_pretrained(tiny_dir).num_parameters()
    call_command("register_base_model", str(tiny_dir), "--name", "Tiny Llama", "--licence", "MIT")
    model = BaseModel.objects.get()
    assert (model.slug, model.name, model.licence) == ("tiny-llama", "Tiny Llama", "MIT")
    assert model.parameters == expected
    assert model.context_length == 256
    assert model.architecture == "LlamaForCausalLM"
    assert model.path == str(tiny_dir.resolve())
    assert "Registered Tiny Llama (tiny-llama)" in capsys.readouterr().out


def test_registering_again_updates_the_same_row(tiny_dir):
    base_model_register(path=tiny_dir, name="Tiny", slug="tiny")
    base_model_register(path=tiny_dir, name="Tiny v2", slug="tiny", make_default=True)
    assert list(BaseModel.objects.values_list("slug", "name", "is_default")) == [("tiny", "Tiny v2", True)]


def test_only_one_default(tiny_dir):
    base_model_register(path=tiny_dir, slug="a", make_default=True)
    base_model_register(path=tiny_dir, slug="b", make_default=True)
    assert list(BaseModel.objects.filter(is_default=True).values_list("slug", flat=True)) == ["b"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "has no config.json: it is not a Hugging Face model folder."),
        (lambda d: (d / "model.safetensors").unlink(), "has no weights (*.safetensors or pytorch_model*.bin)."),
        (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer files"),
        (lambda d: (d / "config.json").write_text("{oops"), "config.json is not valid JSON"),
    ],
)
def test_broken_folders_are_refused_and_nothing_is_registered(tiny_dir, damage, message):
    damage(tiny_dir)
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        call_command("register_base_model", str(tiny_dir))
    assert BaseModel.objects.count() == 0


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(CommandError, match="Model folder not found"):
        call_command("register_base_model", str(tmp_path / "nowhere"))
    assert BaseModel.objects.count() == 0


def test_load_registered_tiny_model(tiny_dir):
    model, tokenizer = model_files.load_causal_lm(tiny_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    out = model(torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), len(tokenizer))


def test_default_gguf_is_found():
    path = model_files.find_default_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


@pytest.mark.slow
def test_default_model_converts_once_and_answers(tmp_path):
    messages = []
    with override_settings(MF_BASE_MODEL_DIR=tmp_path):
        model = base_model_ensure_default(progress=messages.append)
        assert messages[0].startswith("Converting SmolLM2-135M-Instruct.Q4_1.gguf to safetensors")
        assert (model.slug, model.parameters, model.context_length) == ("smollm2-135m-instruct", 134515008, 8192)
        assert model.is_default
        weights = tmp_path / "smollm2-135m-instruct" / "model.safetensors"
        mtime = weights.stat().st_mtime_ns

        messages.clear()
        again = base_model_ensure_default(progress=messages.append)
        assert again.pk == model.pk
        assert messages == []
        assert weights.stat().st_mtime_ns == mtime
        assert not (tmp_path / "smollm2-135m-instruct.converting").exists()

    lm, tokenizer = model_files.load_causal_lm(model.path)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    out = lm.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids.shape[1] :])


# ---------------------------------------------------------------- registration from the admin, with its check

ADD_URL = "/admin/modelfactory/basemodel/add/"


def _add(client, cast, **fields):
    client.force_login(cast.staff)
    return client.post(ADD_URL, {"path": "", "name": "", "slug": "", "licence": "", **fields})


def _path_errors(response) -> list[str]:
    return list(response.context["adminform"].form.errors.get("path", []))


def test_admin_registers_a_checked_local_folder(client, cast, tiny_dir):
    client.force_login(cast.staff)
    form = client.get(ADD_URL)
    assert form.status_code == 200 and 'name="path"' in form.content.decode()
    response = _add(client, cast, path=str(tiny_dir), name="Tiny Llama", licence="MIT")
    assert response.status_code == 302
    model = BaseModel.objects.get()
    assert (model.slug, model.name, model.licence, model.architecture) == (
        "tiny-llama", "Tiny Llama", "MIT", "LlamaForCausalLM",
    )  # fmt: skip
    assert model.path == str(tiny_dir.resolve()) and model.parameters == 105088 and model.context_length == 256
    assert response["Location"] == "/admin/modelfactory/basemodel/"


def test_admin_refuses_an_unknown_architecture_and_writes_nothing(client, cast, tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    (tiny_dir / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    response = _add(client, cast, path=str(tiny_dir))
    assert response.status_code == 200
    assert _path_errors(response) == [
        "Its architecture, GPT2LMHeadModel, is not one known to work here (training, serving and attribution are "
        "tested for: Llama (LlamaForCausalLM), Qwen2 (Qwen2ForCausalLM), Mistral (MistralForCausalLM), Gemma "
        "(GemmaForCausalLM), Gemma 2 (Gemma2ForCausalLM), Phi-3 (Phi3ForCausalLM))."
    ]
    assert BaseModel.objects.count() == 0


def test_admin_refuses_a_model_without_chat_template(client, cast, tiny_dir):
    (tiny_dir / "chat_template.jinja").unlink()
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert "chat_template" not in config  # transformers 5 keeps it only in chat_template.jinja
    response = _add(client, cast, path=str(tiny_dir))
    assert _path_errors(response) == [
        "It has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json): the wizard and the "
        "playground need one to turn rows and questions into the model's prompts. Use the instruct (chat) version "
        "of the model."
    ]
    assert BaseModel.objects.count() == 0


def test_a_chat_template_inside_tokenizer_config_is_enough(client, cast, tiny_dir):
    template = (tiny_dir / "chat_template.jinja").read_text()
    (tiny_dir / "chat_template.jinja").unlink()
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    (tiny_dir / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    assert _add(client, cast, path=str(tiny_dir)).status_code == 302
    assert BaseModel.objects.count() == 1


@override_settings(MF_MEMORY_LIMIT_MB=1, MF_TRAINING_DEVICE="cpu")
def test_admin_refuses_a_model_too_big_for_this_machine(client, cast, tiny_dir):
    check = base_model_check(path=tiny_dir)
    assert check.memory_bytes == 2**20
    response = _add(client, cast, path=str(tiny_dir))
    needed = check.training_memory_bytes / 1e9
    assert needed > 0.001
    assert _path_errors(response) == [
        f"It is too big to train here: its 0.1 million parameters need about {needed:.1f} GB of memory to train "
        "with the Quick preset, and this machine has 0.0 GB."
    ]
    assert BaseModel.objects.count() == 0


def test_admin_refuses_a_hub_id_plainly(client, cast):
    response = _add(client, cast, path="HuggingFaceTB/SmolLM2-360M-Instruct")
    assert _path_errors(response) == [
        "“HuggingFaceTB/SmolLM2-360M-Instruct” looks like a Hugging Face Hub id. This deployment registers local "
        "folders only: it does not download models. Download the model to a folder on this machine (config.json, "
        "*.safetensors, the tokenizer files) and give that folder's path."
    ]
    assert BaseModel.objects.count() == 0


def test_admin_refuses_a_missing_folder_and_a_taken_slug(client, cast, tiny_dir, tmp_path):
    response = _add(client, cast, path=str(tmp_path / "nowhere"))
    assert _path_errors(response) == [f"Model folder not found: {tmp_path / 'nowhere'}"]
    base_model_register(path=tiny_dir, slug="tiny-llama")
    response = _add(client, cast, path=str(tiny_dir), name="Tiny Llama")
    assert response.context["adminform"].form.errors["slug"] == [
        "A base model called “tiny-llama” is registered already: choose another slug, or edit that one."
    ]
    assert list(BaseModel.objects.values_list("slug", flat=True)) == ["tiny-llama"]


def test_the_command_checks_too(tiny_dir):
    (tiny_dir / "chat_template.jinja").unlink()
    with pytest.raises(CommandError, match="cannot be registered. It has no chat template"):
        call_command("register_base_model", str(tiny_dir))
    assert BaseModel.objects.count() == 0


def test_every_known_family_passes_the_check(tmp_path):
    for family in FAMILIES:
        folder = build_tiny_model_dir(tmp_path / family.model_type, family=family.model_type)
        check = base_model_check(path=folder)
        assert (check.problems, check.family) == ([], family)
