from django.db import models


class BaseModel(models.Model):
    """A base language model the wizard can fine-tune: a local Hugging Face folder (safetensors + tokenizer)."""

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=1000, help_text="Local folder with config.json, weights and tokenizer.")
    parameters = models.BigIntegerField(help_text="Number of parameters.")
    context_length = models.PositiveIntegerField(help_text="Longest input in tokens.")
    architecture = models.CharField(max_length=100, blank=True)
    licence = models.CharField(max_length=100, blank=True)
    source = models.CharField(
        max_length=1000, blank=True, help_text="Where the files came from (GGUF, folder, hub id)."
    )
    is_default = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True, help_text="Offered in the fine-tuning wizard.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-is_default", "parameters", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_base_model"
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def parameters_label(self) -> str:
        if self.parameters >= 1_000_000_000:
            return f"{self.parameters / 1e9:.1f}B"
        return f"{self.parameters / 1e6:.0f}M"
