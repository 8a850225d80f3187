"""The one exception type that the CLI turns into a single line on stderr and exit status 2."""


class InputError(Exception):
    """Bad user input: a file, an option, a model id. The message is one line saying what and where.

    Raise it with ``where`` (e.g. ``"data.jsonl:12"``) when the problem has a location; the CLI
    prints ``error: <where>: <message>``.
    """

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        self.message = " ".join(str(message).split())  # always one line
        super().__init__(f"{where}: {self.message}" if where else self.message)
