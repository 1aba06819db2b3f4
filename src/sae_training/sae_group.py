"""`SAEGroup`: the SAEs of one original run (iterate, index, `.cfg`, `.eval()`)."""

from saekit.compat.session import SAEGroup

__all__ = ["SAEGroup"]
