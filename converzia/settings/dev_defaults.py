"""Development-only Meta credentials, shared by `converzia.settings.local` and `make run`'s banner.

Public on purpose: they sign test leads on a laptop (`make test-lead`). Production settings refuse to
start without real ones, and this module imports nothing so the devstack can read it before Django.
"""

DEV_META_APP_SECRET = "converzia-dev-app-secret"
DEV_META_WEBHOOK_VERIFY_TOKEN = "converzia-dev-verify-token"
