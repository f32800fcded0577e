"""factory_boy factories for the kernel's models."""

from __future__ import annotations

import factory

from converzia.models import MembershipStatus, Tenant, TenantMember, TenantRole, TenantStatus, User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("email",)

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    full_name = factory.Faker("name")
    password = factory.django.Password("pass-word-123")
    is_staff = False


class StaffUserFactory(UserFactory):
    email = factory.Sequence(lambda n: f"staff{n}@converzia.test")
    is_staff = True


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")
    status = TenantStatus.ACTIVE


class TenantMemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TenantMember

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = TenantRole.OWNER
    status = MembershipStatus.ACTIVE
