import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the demo user on first run (idempotent) and print how to log in."

    def handle(self, *args, **options):
        username = os.environ.get("MF_DEMO_USERNAME", "demo")
        password = os.environ.get("MF_DEMO_PASSWORD", "demo-password-123")
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
        if created:
            user.set_password(password)
            user.is_staff = True
            user.is_superuser = True
            user.save()
            self.stdout.write(self.style.SUCCESS("Created the demo user."))
        from datanets.services import demo_datanet_seed

        if demo_datanet_seed(owner=user) is not None:
            self.stdout.write(self.style.SUCCESS("Created the demo datanet “Home gardening” (version 1)."))
        self.stdout.write(
            "Log in at http://127.0.0.1:8000/accounts/login/ as "
            f"user '{username}' with password '{password}'" + ("" if created else " (unless you changed it)")
        )
