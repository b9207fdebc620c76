"""What an agent keeps on disk: its wallet (:mod:`.identity`) and its SQLite database (:mod:`.sqlite`)."""
