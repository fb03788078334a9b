"""The emperor: one vassal (a binserve master with its workers) per ini file in a directory.

Each step compares the desired state (the ``*.ini`` files: name, content digest, owner) with
the actual one (the vassals running) in ``plan``, a pure function, and carries out what it
returns. uWSGI's semantics: a new file spawns a vassal, a changed file
reloads it gracefully, a removed file stops it, a vassal that dies is respawned; one that
died without ever serving a request waits first, 1 s, 2 s, 4 s ... up to a cap. A file has
changed when its mtime moved forward (``touch`` reloads, as uWSGI users expect) or when its
content differs, which uWSGI misses when a deploy tool keeps an older mtime.

Vassal files are their users' input. The scan reads them bounded and non-blocking; the emperor
executes one (its includes, ``@(file)``, ``%(math)``, to learn its stats address) only in a
forked child bounded in time and memory. A tyrant refuses links that could make it run another
user's file as that user, gives vassals a minimal environment, and keeps its state file out of
the directory its users write.

The modules, in the order a reader needs them: ``plan`` (the decisions, pure), ``watch`` (the
vassal files as the directories hold them), ``spawn`` (starting and ending a vassal, as whom),
``probe`` (reading a vassal's stats address), ``status`` (the state file, the stats document,
``--emperor-status``) and ``run`` (the loop: wait, plan, act).
"""

from .run import Emperor
from .status import print_status

__all__ = ["Emperor", "print_status"]
