"""Process plumbing: what every run needs and no researcher edits to change the method.

- :mod:`plumbing.cli`: the command-line layer (parser with one-line errors, banner, ``run_cli``);
- :mod:`plumbing.errors`: ``UserError``, ``Stopped`` (a run a signal stopped) and the one error line;
- :mod:`plumbing.checkpoint`: run folders, atomic writes, strict loads, generator states;
- :mod:`plumbing.distributed`: torchrun set-up, rank helpers, the gather with gradients;
- :mod:`plumbing.preemption`: SIGTERM and Ctrl-C stop a run at a step boundary with last.pt saved;
- :mod:`plumbing.device`, :mod:`plumbing.speed`: ``--device``; precision, layout, compilation;
- :mod:`plumbing.memory_plan`: ``--patch_chunks``, the memory of a step measured before the first;
- :mod:`plumbing.host_sync`: what makes the host wait for a GPU, counted on the CPU;
- :mod:`plumbing.pictures`: TensorBoard pictures (patch grids, the embedding projector).

Nothing here imports the method (loss, model, data, engine); the method's modules may import it.
"""
