"""Runs cut short at a known point, to test resuming."""


def interrupt_after_first_checkpoint(monkeypatch):
    """Make the loop die (like Ctrl-C) right after its first epoch has been committed."""
    import bnnkit.training.loop as loop

    real = loop.save_state

    def save_then_die(path, state):
        real(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_state", save_then_die)
