import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

PASSWORD = "correct-horse-battery-9"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True  # `permissions` below writes its own rows

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password(PASSWORD)

    @factory.post_generation
    def permissions(self, create, extracted, **kwargs):
        """UserFactory(..., permissions=["ledger.grant_credit"]) gives those permissions ("app_label.codename")."""
        for name in extracted or ():
            app_label, codename = name.split(".")
            self.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
