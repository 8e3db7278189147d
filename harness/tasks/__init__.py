"""Tasks: where a task's data is read. ``load_task`` turns a ``conf/task`` entry into an mteb task, either a
registered mteb task or a local BEIR-layout folder wrapped as one, so that the score always comes from mteb."""
