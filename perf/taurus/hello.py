"""Locustfile of the yardstick: GET / on the bare Falcon hello (perf/hello_app.py)."""

from eventpost_users import FastHttpUser, constant, task


class HelloUser(FastHttpUser):
    """Asks the hello for its one answer, as fast as it comes."""

    wait_time = constant(0)

    @task
    def hello(self) -> None:
        self.client.get("/", name="GET / (hello)")
