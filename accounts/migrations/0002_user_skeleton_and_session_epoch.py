"""Each user's name skeleton (common.confusables), unique, so a look-alike name cannot sign up; and the session epoch
that "sign out everywhere" raises. Existing users get their skeleton in join order; a later name that already looked
like an earlier one keeps a null skeleton (it stays usable, and nobody else can take its look-alike either way)."""

from django.db import migrations, models

from common.confusables import username_skeleton


def fill_skeletons(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    seen = set()
    for user in User.objects.order_by("pk").only("pk", "username").iterator():
        skeleton = username_skeleton(user.username)
        if skeleton not in seen:
            seen.add(skeleton)
            User.objects.filter(pk=user.pk).update(username_skeleton=skeleton)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="session_epoch",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="user",
            name="username_skeleton",
            field=models.TextField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(fill_skeletons, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.UniqueConstraint(fields=("username_skeleton",), name="accounts_user_skeleton_unique"),
        ),
    ]
