"""The fine-tuning and serving app: base models, the wizard and fine-tune jobs, trained models, publishing and
inference (REST, OpenAI-style /v1, playground). Pure cores without Django: `training/` and `serving/`."""
