from django import forms
from django.core.files.uploadedfile import SimpleUploadedFile

from datanets.ingest.screen import ACTIONS, FLAG_KINDS
from datanets.ingest.validate import FIELDS, REQUIRED
from datanets.models import Datanet


def split_list(value: str) -> list[str]:
    return [v.strip() for v in (value or "").replace("\n", ",").split(",") if v.strip()]


class DatanetForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(
        max_length=100, required=False, help_text="The web address; leave empty to make one from the name."
    )
    kind = forms.ChoiceField(choices=Datanet.Kind.choices, help_text="The shape every row must have.")
    summary = forms.CharField(max_length=300, help_text="One sentence shown in the list.")
    description = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}), required=False, help_text="Markdown: what belongs here, and how."
    )
    tags = forms.CharField(max_length=300, required=False, help_text="Comma-separated, e.g. gardening, vegetables")
    licence = forms.CharField(max_length=100, initial="CC-BY-4.0")
    visibility = forms.ChoiceField(choices=Datanet.Visibility.choices)
    policy = forms.ChoiceField(choices=Datanet.Policy.choices, label="Contributions")


class DatanetSettingsForm(forms.Form):
    name = forms.CharField(max_length=200)
    summary = forms.CharField(max_length=300)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False)
    tags = forms.CharField(max_length=300, required=False)
    licence = forms.CharField(max_length=100)
    visibility = forms.ChoiceField(choices=Datanet.Visibility.choices)
    policy = forms.ChoiceField(choices=Datanet.Policy.choices, label="Contributions")
    curators = forms.CharField(
        max_length=1000, required=False, help_text="User names, comma-separated (only the owner can change this)."
    )
    holding_days = forms.IntegerField(
        min_value=0,
        max_value=365,
        required=False,
        label="Days earnings stay under review",
        help_text="What contributors earn from this datanet waits this long before they can withdraw it, so you can "
        "still find a contribution harmful; 0: available at once.",
    )
    bond_credits = forms.DecimalField(
        min_value=0,
        max_digits=14,
        decimal_places=6,
        required=False,
        label="Bond per upload (credits)",
        help_text="Taken from the contributor's wallet at upload, given back when the upload is accepted or you "
        "reject it as not a fit, kept in the datanet's pool when you reject it as spam or find it harmful; 0: no bond.",
    )

    def money_terms(self) -> dict:
        """holding_days and bond_micro as the service takes them (a field left empty is left unchanged)."""
        terms = {}
        if self.cleaned_data.get("holding_days") is not None:
            terms["holding_days"] = self.cleaned_data["holding_days"]
        if self.cleaned_data.get("bond_credits") is not None:
            terms["bond_micro"] = int(self.cleaned_data["bond_credits"] * 1_000_000)
        return terms

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for kind, (label, redactable) in FLAG_KINDS.items():
            choices = [(a, a.capitalize()) for a in ACTIONS if redactable or a != "redact"]
            self.fields[f"flag_{kind}"] = forms.ChoiceField(choices=choices, label=_rows_label(label))

    def flag_actions(self) -> dict:
        return {k: self.cleaned_data[f"flag_{k}"] for k in FLAG_KINDS}


def _rows_label(label: str) -> str:
    """A flag's label as a setting: "Rows with an e-mail address", "Rows that are very short"."""
    with_ = label.startswith(("a ", "an ", "repeated")) and not label.startswith("a copy")
    return f"Rows with {label}" if with_ else f"Rows that are {label}"


class UploadForm(forms.Form):
    """A file, or rows pasted as text (JSON Lines for instruction and chat datanets, plain text for text ones)."""

    file = forms.FileField(
        required=False,
        help_text="JSONL, JSON, CSV, TSV, Parquet, or a document (TXT, Markdown, PDF, DOCX) for text datanets. "
        "Images, spreadsheets (save them as CSV) and archives are refused.",
        widget=forms.ClearableFileInput(
            attrs={"accept": ".jsonl,.ndjson,.json,.csv,.tsv,.tab,.parquet,.txt,.text,.md,.markdown,.pdf,.docx"}
        ),
    )
    pasted = forms.CharField(
        required=False,
        strip=False,
        label="Or paste rows",
        widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
    )

    def __init__(self, *args, kind: str = "instruction", **kwargs):
        super().__init__(*args, **kwargs)
        self.kind = kind
        self.fields["pasted"].help_text = (
            "Plain text: it is split into rows by headings and paragraphs, like a document."
            if kind == "text"
            else "One row per line, each a JSON object like the lines of the example file."
        )

    def clean(self):
        data = super().clean()
        has_file, has_text = bool(data.get("file")), bool((data.get("pasted") or "").strip())
        if has_file and has_text:
            raise forms.ValidationError("Choose a file or paste rows, not both.")
        if not has_file and not has_text:
            raise forms.ValidationError("Choose a file to upload, or paste rows into the box.")
        return data

    def upload(self):
        """The file to store: the chosen one, or the pasted rows as pasted.jsonl / pasted.txt."""
        if self.cleaned_data.get("file"):
            return self.cleaned_data["file"]
        name = "pasted.txt" if self.kind == "text" else "pasted.jsonl"
        return SimpleUploadedFile(name, self.cleaned_data["pasted"].encode("utf-8"), content_type="text/plain")


class ColumnMappingForm(forms.Form):
    def __init__(self, *args, kind: str, columns: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        choices = [("", "(none)")] + [(c, c) for c in columns]
        for field in FIELDS[kind]:
            self.fields[field] = forms.ChoiceField(
                choices=choices, required=field in REQUIRED[kind], label=f"Column for “{field}”"
            )


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=1000, widget=forms.Textarea(attrs={"rows": 2}))


class PublishForm(forms.Form):
    notes = forms.CharField(
        max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text="What changed."
    )
