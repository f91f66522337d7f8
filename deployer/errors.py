"""The error every pydeploy step raises when it fails (exit status 1)."""


class DeployError(Exception):
    """A step failed; the message is the explanation the user gets (host, step, cause, what to check)."""
