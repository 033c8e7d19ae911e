"""A run's bookkeeping: its folder and the locks that keep one writer in it (:mod:`.folder`), the facts it records
(:mod:`.info`), atomic checkpoint files (:mod:`.checkpoints`) and whether the process that owns a lock or a
temporary file still runs (:mod:`.processes`)."""
