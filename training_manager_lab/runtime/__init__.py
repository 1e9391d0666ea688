"""What runs inside a job: the supervisor process, the ranks, and their Lightning hooks."""
