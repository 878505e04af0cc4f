"""Wizard forms (field ranges and help text come from the training core's hyperparameter spec), and the admin's
base-model registration."""

from __future__ import annotations

from django import forms

from ledger.forms import CreditsFormField
from modelfactory.models import BaseModel
from modelfactory.services import base_model_check, base_model_names
from modelfactory.training.model_files import ModelFilesError
from modelfactory.training.presets import HYPERPARAMETERS, PRESETS, TARGET_GROUPS


def _field_for(name: str, param) -> forms.Field:
    common = {"label": param.label, "help_text": param.help, "required": False}
    if param.type == "int":
        return forms.IntegerField(min_value=param.min, max_value=param.max, **common)
    if param.type == "float":
        return forms.FloatField(min_value=param.min, max_value=param.max, **common)
    if param.type == "choice":
        return forms.ChoiceField(choices=[(c, c) for c in param.choices], **common)
    choices = [(group, f"{group.replace('_', ' ')}: {', '.join(TARGET_GROUPS[group])}") for group in TARGET_GROUPS]
    return forms.ChoiceField(choices=choices, **common)


class PresetForm(forms.Form):
    """Step 4: a preset, and the Advanced panel (blank = the preset's value)."""

    preset = forms.ChoiceField(
        choices=[(key, preset.label) for key, preset in PRESETS.items()], widget=forms.RadioSelect, initial="balanced"
    )
    name = forms.CharField(
        max_length=200, required=False, label="Model name", help_text="Leave empty for a name made from your choices."
    )

    def __init__(self, *args, capabilities=None, **kwargs):
        """`capabilities` (training.devices.Capabilities): the training hardware; 4-bit (QLoRA) is offered only
        where it can run, and refused with the reason if posted anyway. None: offer everything (no check)."""
        super().__init__(*args, **kwargs)
        self.capabilities = capabilities
        for name, param in HYPERPARAMETERS.items():
            self.fields[f"hp_{name}"] = _field_for(name, param)
        if capabilities is not None:
            from modelfactory.training.devices import offered_quantizations

            field = self.fields["hp_quantization"]
            offered = offered_quantizations(capabilities)
            field.widget.choices = [(c, c) for c in offered]
            if "4bit" not in offered:
                field.help_text += " Not offered here: the training worker has no CUDA GPU it can use for it."

    def clean_hp_quantization(self):
        value = self.cleaned_data.get("hp_quantization")
        if self.capabilities is not None and value:
            from modelfactory.selectors import quantization_problem

            problem = quantization_problem(value, caps=self.capabilities)
            if problem:
                raise forms.ValidationError(problem)
        return value

    def hyperparameters(self) -> dict:
        return {
            name: self.cleaned_data[f"hp_{name}"]
            for name in HYPERPARAMETERS
            if self.cleaned_data.get(f"hp_{name}") not in (None, "")
        }

    def advanced_fields(self):
        return [self[f"hp_{name}"] for name in HYPERPARAMETERS]


class PublishForm(forms.Form):
    price = CreditsFormField(
        label="Price per 1,000 tokens (credits)",
        initial="0.002",
        help_text="Callers pay this for every 1,000 tokens of question and answer.",
    )
    visibility = forms.ChoiceField(
        choices=[("public", "Public (anyone can use it)"), ("private", "Private (only you)")], initial="public"
    )
    allow_exports = forms.BooleanField(
        required=False, label="Let others download the model's files (adapter, merged model, GGUF) while it is public"
    )
    retrieval_enabled = forms.BooleanField(required=False)
    retrieval_top_k = forms.IntegerField(required=False, min_value=1, max_value=10, initial=4)
    retrieval_live = forms.BooleanField(required=False)
    retrieval_versions = forms.TypedMultipleChoiceField(coerce=int, required=False, choices=())

    def __init__(self, *args, version_ids=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["retrieval_versions"].choices = [(v, v) for v in version_ids]

    def retrieval(self) -> dict:
        """The publish service's `retrieval` setting from the page's fields."""
        data = self.cleaned_data
        return {
            "enabled": data["retrieval_enabled"],
            "top_k": data["retrieval_top_k"] or 4,
            "live": data["retrieval_live"],
            "datanet_versions": data["retrieval_versions"] or None,
        }


class BaseModelRegisterForm(forms.ModelForm):
    """The admin's "add base model": a local folder, checked (base_model_check) before anything is written."""

    path = forms.CharField(
        label="Model folder",
        max_length=1000,
        widget=forms.TextInput(attrs={"size": 80}),
        help_text="A folder on this machine with config.json, the weights (*.safetensors) and the tokenizer files. "
        "Hugging Face Hub ids are not downloaded here: download the model first.",
    )

    class Meta:
        model = BaseModel
        fields = ["path", "name", "slug", "licence", "is_default"]
        help_texts = {
            "name": "Shown in the wizard; the folder's name when left empty.",
            "slug": "Made from the name when left empty.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["name"].required = False
        self.fields["slug"].required = False
        self.check_result = None

    def clean(self):
        cleaned = super().clean()
        path = (cleaned.get("path") or "").strip()
        if not path:
            return cleaned
        try:
            result = base_model_check(path=path)
        except ModelFilesError as exc:
            raise forms.ValidationError({"path": str(exc)}) from None
        if result.problems:
            raise forms.ValidationError({"path": result.problems})
        name, slug = base_model_names(
            folder=result.folder, name=cleaned.get("name") or "", slug=cleaned.get("slug") or ""
        )
        if BaseModel.objects.filter(slug=slug).exists():
            raise forms.ValidationError(
                {"slug": f"A base model called “{slug}” is registered already: choose another slug, or edit that one."}
            )
        cleaned["name"], cleaned["slug"], cleaned["path"] = name, slug, str(result.folder)
        self.check_result = result
        return cleaned
