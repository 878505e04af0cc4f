from django.core.management.base import BaseCommand, CommandError

from modelfactory.services import base_model_ensure_default, base_model_register
from modelfactory.training.model_files import ModelFilesError


class Command(BaseCommand):
    help = (
        "Register a base model for fine-tuning. Without a path: convert (once) and register the bundled "
        "SmolLM2-135M-Instruct. With a path: register that local Hugging Face model folder."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", help="Local model folder (config.json, safetensors, tokenizer).")
        parser.add_argument("--name", default="")
        parser.add_argument("--slug", default="")
        parser.add_argument("--licence", default="")
        parser.add_argument("--default", action="store_true", help="Make it the wizard's default choice.")

    def handle(self, *args, path=None, name="", slug="", licence="", default=False, **options):
        try:
            if path is None:
                model = base_model_ensure_default(progress=self.stdout.write)
            else:
                model = base_model_register(
                    path=path, name=name, slug=slug, licence=licence, make_default=default, check=True
                )
        except ModelFilesError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Registered {model.name} ({model.slug}): {model.parameters_label} parameters, "
                f"context {model.context_length} tokens, at {model.path}"
            )
        )
