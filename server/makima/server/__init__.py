"""makima history & resume service: gRPC API over SQLModel storage and dulwich worktrees."""
