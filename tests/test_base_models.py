import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import override_settings

from modelfactory.models import BaseModel
from modelfactory.services import base_model_ensure_default, base_model_register
from modelfactory.training import model_files
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
