"""Load scenario for `make load`: liveness-probe traffic against a running server.

make load                                   # against the running `make run`, 30 s, reports/
LOAD_HOST=http://127.0.0.1:8000 make load   # against any server
"""

from locust import HttpUser, between, task

LIVENESS_PATH = "/api/health/live"


class LivenessProbeUser(HttpUser):
    """A monitoring client: checks liveness about once a second and insists on a 200."""

    wait_time = between(0.5, 1.5)

    @task
    def liveness(self) -> None:
        with self.client.get(LIVENESS_PATH, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"expected 200, got {response.status_code}")
