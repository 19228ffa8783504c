"""What a malicious checkpoint would carry: unpickling a ``Payload`` calls a function (shared by the tests
that check our loaders refuse such files without running them)."""


class Payload:
    ran = False

    def __reduce__(self):
        return (Payload.mark, ())

    @staticmethod
    def mark():
        Payload.ran = True
